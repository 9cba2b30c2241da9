//! The HTTP surface, every endpoint probed: without a token, with a wrong
//! one, with oversized and malformed input. Every error is JSON with a
//! code; nothing mutates without the bearer token.

use std::io::{Read, Write};
use std::net::TcpStream;

use driftwatch::http::{ApiState, MAX_BODY_BYTES, serve};
use driftwatch::window_metrics::WindowMetricRow;
use serde_json::Value;

/// Sends raw request bytes; returns the status and the body as JSON
/// (`Null` when it is not JSON).
fn raw(address: &str, request: &[u8]) -> (u16, Value) {
    let mut stream = TcpStream::connect(address).unwrap();
    let _ = stream.write_all(request);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response);
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn request(method: &str, path: &str, token: Option<&str>, body: &[u8]) -> Vec<u8> {
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let mut bytes = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<not a JSON error>")
}

#[test]
fn every_endpoint_rejects_what_it_should_with_a_json_error() {
    // No pipeline answers reloads here: the receiver is dropped.
    let (with_token, reloads) = ApiState::new(Some("s3cret-token".to_string()), None);
    drop(reloads);
    let server = serve("127.0.0.1:0", with_token).unwrap();
    let address = server.address.to_string();
    for path in ["/", "/healthz", "/metrics", "/api/v1/models", "/api/v1/windows", "/api/v1/alerts", "/api/v1/rules"] {
        assert_eq!(raw(&address, &request("GET", path, None, b"")).0, 200, "GET {path}");
    }
    // Outside a cluster, /api/v1/cluster says so.
    let (status, body) = raw(&address, &request("GET", "/api/v1/cluster", None, b""));
    assert_eq!((status, body["clustered"].clone()), (200, serde_json::json!(false)), "{body}");
    // Not ready without a pipeline, and saying why.
    let (status, body) = raw(&address, &request("GET", "/readyz", None, b""));
    assert_eq!((status, code(&body)), (503, "not_ready"));

    // Mutations need the token; wrong or missing ones are refused alike.
    for token in [None, Some(""), Some("s3cret-tokeN"), Some("s3cret-token-and-more"), Some("s")] {
        let (status, body) = raw(&address, &request("POST", "/-/reload", token, b""));
        assert_eq!((status, code(&body)), (401, "unauthorized"), "token {token:?}");
        assert!(!body.to_string().contains("s3cret"), "the token is never echoed: {body}");
    }
    let (status, body) = raw(&address, &request("POST", "/-/reload", Some("s3cret-token"), b""));
    assert_eq!((status, code(&body)), (503, "not_running"), "authorised, but nothing to reload here");

    // Oversized bodies, malformed queries, wrong methods, unknown paths.
    let big = vec![b'x'; MAX_BODY_BYTES + 1];
    let (status, _) = raw(&address, &request("POST", "/-/reload", Some("s3cret-token"), &big));
    assert!(status == 413 || status == 503, "an oversized body is refused or never read: {status}");
    for (path, expected) in [
        ("/api/v1/windows?since=yesterday", "bad_since"),
        ("/api/v1/windows?since=2026-13-45T99:00:00Z", "bad_since"),
        ("/api/v1/windows?model=a&model=b&colour=red", "bad_query"),
        ("/api/v1/windows?%ff%fe=1", "bad_query"),
        ("/api/v1/nothing", "not_found"),
        ("/../../etc/passwd", "not_found"),
    ] {
        let (status, body) = raw(&address, &request("GET", path, None, b""));
        assert!((400..=404).contains(&status), "{path}: {status}");
        assert_eq!(code(&body), expected, "{path}: {body}");
    }
    let (status, body) = raw(&address, &request("DELETE", "/api/v1/alerts", None, b""));
    assert_eq!((status, code(&body)), (405, "method_not_allowed"));
    let (status, body) = raw(&address, &request("GET", "/-/reload", None, b""));
    assert_eq!((status, code(&body)), (405, "method_not_allowed"));
    // Garbage instead of HTTP does not take the server down.
    let _ = raw(&address, b"\x00\x01\x02 not http at all\r\n\r\n");
    assert_eq!(raw(&address, &request("GET", "/healthz", None, b"")).0, 200);

    // Without a configured token, mutations are disabled outright.
    let (no_token, _reloads) = ApiState::new(None, None);
    let server = serve("127.0.0.1:0", no_token).unwrap();
    let (status, body) = raw(&server.address.to_string(), &request("POST", "/-/reload", Some("anything"), b""));
    assert_eq!((status, code(&body)), (403, "disabled"));
}

/// A `window_metrics` row of `model`, window `i` (one minute each).
fn row(model: &str, i: i64, segment: &str, feature: Option<&str>, metric: &'static str) -> WindowMetricRow {
    WindowMetricRow {
        model: model.into(),
        model_version: "v1".into(),
        segment: segment.into(),
        window_start_ms: i * 60_000,
        window_end_ms: (i + 1) * 60_000,
        feature: feature.map(Into::into),
        metric,
        value: i as f64,
        baseline: None,
        threshold: None,
        p_value: None,
        drifted: None,
        sample_count: 10,
    }
}

/// Each closed window of `model` as the engine emits it: the model's own
/// `count`, then a feature's `count` and `psi`, then a segment's `count`.
fn window_rows(model: &str, i: i64) -> Vec<WindowMetricRow> {
    vec![
        row(model, i, "", None, "count"),
        row(model, i, "", Some("amount"), "count"),
        row(model, i, "", Some("amount"), "psi"),
        row(model, i, "region=eu", None, "count"),
    ]
}

/// `/api/v1/models` shows each model's own latest `count` row (not the
/// last feature's); `/api/v1/windows` filters by metric, feature (empty:
/// model-level rows) and segment, pages with `limit` and the `next`
/// cursor, and answers an unknown model with 404 naming the known ones.
#[test]
fn windows_filter_and_page_and_models_show_the_models_own_latest_window() {
    let (api, _reloads) = ApiState::new(None, None);
    api.models.set(vec![serde_json::json!({"name": "shop"}), serde_json::json!({"name": "fraud"})]);
    for i in 0..5 {
        api.push_rows(&window_rows("shop", i));
        api.push_rows(&window_rows("fraud", i));
    }
    let server = serve("127.0.0.1:0", api).unwrap();
    let address = server.address.to_string();
    let get = |path: &str| raw(&address, &request("GET", path, None, b""));

    let (status, body) = get("/api/v1/models");
    assert_eq!(status, 200, "{body}");
    for model in body["models"].as_array().unwrap() {
        let latest = &model["latest_window"];
        assert_eq!((latest["metric"].as_str(), latest["feature"].as_str()), (Some("count"), None), "{model}");
        assert_eq!((latest["segment"].as_str(), latest["value"].as_f64()), (Some(""), Some(4.0)), "{model}");
    }

    let (status, body) = get("/api/v1/windows?model=nosuch");
    assert_eq!((status, code(&body)), (404, "unknown_model"), "{body}");
    assert_eq!(body["error"]["details"], serde_json::json!(["shop", "fraud"]), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("shop, fraud"), "{body}");

    let values = |body: &Value| -> Vec<f64> {
        body["windows"].as_array().unwrap().iter().map(|r| r["value"].as_f64().unwrap()).collect()
    };
    let (status, body) = get("/api/v1/windows?model=shop&metric=psi&feature=amount");
    assert_eq!(status, 200, "{body}");
    assert_eq!(values(&body), [0.0, 1.0, 2.0, 3.0, 4.0]);
    assert!(body["windows"].as_array().unwrap().iter().all(|r| r["metric"] == "psi" && r["model"] == "shop"));
    let (_, body) = get("/api/v1/windows?model=fraud&metric=count&feature=&segment=");
    assert_eq!(values(&body), [0.0, 1.0, 2.0, 3.0, 4.0], "the model's own count rows: {body}");
    assert!(body["windows"].as_array().unwrap().iter().all(|r| r["feature"].is_null() && r["segment"] == ""));
    let (_, body) = get("/api/v1/windows?segment=region%3Deu");
    assert_eq!(body["windows"].as_array().unwrap().len(), 10, "{body}");

    // Pages of two: every matching row once, in order, then an empty page
    // whose cursor later returns rows closed since.
    let mut seen = Vec::new();
    let mut path = "/api/v1/windows?model=shop&metric=psi&limit=2".to_string();
    loop {
        let (status, body) = get(&path);
        assert_eq!(status, 200, "{body}");
        seen.extend(values(&body));
        assert!(seen.len() <= 5, "pages repeat rows: {seen:?}");
        let next = body["next"].as_str().unwrap().to_string();
        path = format!("/api/v1/windows?model=shop&metric=psi&limit=2&after={next}");
        if body["more"] == false {
            break;
        }
        assert_eq!(values(&body).len(), 2);
    }
    assert_eq!(seen, [0.0, 1.0, 2.0, 3.0, 4.0]);
    let (_, body) = get(&path);
    assert_eq!((values(&body), &body["more"]), (vec![], &Value::Bool(false)), "{body}");

    for (path, expected) in [
        ("/api/v1/windows?limit=0", "bad_limit"),
        ("/api/v1/windows?limit=100001", "bad_limit"),
        ("/api/v1/windows?limit=ten", "bad_limit"),
        ("/api/v1/windows?after=yesterday", "bad_after"),
        ("/api/v1/windows?after=1.5", "cursor_expired"),
    ] {
        let (status, body) = get(path);
        assert_eq!(code(&body), expected, "{path}: {status} {body}");
        assert!(status == 400 || status == 410, "{path}: {status}");
    }
}
