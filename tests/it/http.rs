//! The HTTP surface, every endpoint probed: without a token, with a wrong
//! one, with oversized and malformed input. Every error is JSON with a
//! code; nothing mutates without the bearer token.

use std::io::{Read, Write};
use std::net::TcpStream;

use driftwatch::http::{ApiState, MAX_BODY_BYTES, serve};
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
