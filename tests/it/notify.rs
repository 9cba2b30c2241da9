//! Notifications end to end against a local HTTP receiver: every preset's
//! request (method, path, headers, body), retries of retriable failures
//! with one idempotency key, the HMAC signature, the audit trail, and the
//! outbox surviving a killed process.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::support::{expected_signature, outbox_entries, repo, wait_until};

/// A request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
    pub status: u16,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(&name.to_ascii_lowercase()).map(String::as_str)
    }
}

/// An HTTP/1.1 receiver on 127.0.0.1 that answers the first `failures`
/// requests with 503 (the first of them a 429 with `Retry-After: 0`) and the
/// rest with 200, recording everything.
pub struct Receiver {
    pub port: u16,
    pub received: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    pub fn start(failures: usize) -> Receiver {
        Receiver::serve(TcpListener::bind("127.0.0.1:0").unwrap(), failures)
    }

    /// A receiver on a given port that accepts everything.
    pub fn start_on(port: u16) -> Receiver {
        Receiver::serve(TcpListener::bind(("127.0.0.1", port)).unwrap(), 0)
    }

    fn serve(listener: TcpListener, failures: usize) -> Receiver {
        let port = listener.local_addr().unwrap().port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = received.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let Some(mut request) = read_request(&stream) else { continue };
                let seen = log.lock().unwrap().len();
                let (status, extra) = match seen {
                    0 if failures > 0 => (429, "Retry-After: 0\r\n"),
                    n if n < failures => (503, ""),
                    _ => (200, ""),
                };
                request.status = status;
                log.lock().unwrap().push(request);
                let reason = if status == 200 { "OK" } else { "Unavailable" };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} {reason}\r\n{extra}Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
                );
            }
        });
        Receiver { port, received }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn requests(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

/// Reads one HTTP/1.1 request (head and `Content-Length` body); `status`
/// is left 0 for the caller to fill in.
fn read_request(stream: &TcpStream) -> Option<Received> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() || line.is_empty() {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let mut headers = BTreeMap::new();
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((k, v)) = header.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let length: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(Received { method, path, headers, body, status: 0 })
}

/// A receiver on 127.0.0.1 whose `answer` writes each reply (one request
/// per connection) and returns its status; every request is recorded.
fn serve(mut answer: impl FnMut(&Received, &mut TcpStream) -> u16 + Send + 'static) -> Receiver {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let received = Arc::new(Mutex::new(Vec::new()));
    let log = received.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let Some(mut request) = read_request(&stream) else { continue };
            request.status = answer(&request, &mut stream);
            log.lock().unwrap().push(request);
        }
    });
    Receiver { port, received }
}

fn write_setup(dir: &Path, notifiers: &str, notify: &str) -> PathBuf {
    crate::support::write_amount_drift_rule_with(dir, notify, "", "for: 2\ncooldown: 12h");
    let config = dir.join("c.yaml");
    std::fs::write(
        &config,
        format!(
            "windows: {{size: 5m}}\n\
             models: [{{name: shop, baseline: {}}}]\n\
             rules: [rules.yaml]\n\
             notifiers:\n{notifiers}\
             state: {{dir: state}}\n\
             delivery: {{retry_initial: 20ms, retry_max: 200ms, max_attempts: 50}}\n",
            repo("tests/fixtures/replay_drift/baseline.json").display()
        ),
    )
    .unwrap();
    config
}

fn replay(config: &Path, predictions: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_driftwatch"))
        .args(["replay", "--config", config.to_str().unwrap(), "--predictions", predictions.to_str().unwrap()])
        .args(["--notify", "--out", "/dev/null"])
        .output()
        .unwrap()
}

fn audit(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("state/audit.ndjson"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn every_preset_sends_its_documented_request() {
    let receiver = Receiver::start(0);
    let url = receiver.url();
    let dir = tempfile::tempdir().unwrap();
    let notifiers = format!(
        "  gh: {{type: github_dispatch, repo: acme/fraud, token: ghtoken, event_type: retrain, api_url: \"{url}\"}}\n\
         \x20 wf: {{type: github_workflow, repo: acme/fraud, workflow: retrain.yml, ref: main, token: ghtoken, api_url: \"{url}\", inputs: {{reason: \"{{{{ alert }}}}\"}}}}\n\
         \x20 gl: {{type: gitlab_trigger, project: acme/fraud, token: gltoken, ref: main, url: \"{url}\"}}\n\
         \x20 jk: {{type: jenkins, url: \"{url}\", job: retrain-fraud, user: bot, api_token: jktoken}}\n\
         \x20 af: {{type: airflow_dag, url: \"{url}\", dag_id: retrain_fraud, username: admin, password: afpass}}\n\
         \x20 ar: {{type: argo_workflow, url: \"{url}\", namespace: ml, workflow_template: retrain, token: artoken}}\n\
         \x20 kf: {{type: kubeflow_run, url: \"{url}\", pipeline_id: p-123, experiment_id: e-9, token: kftoken}}\n\
         \x20 sl: {{type: slack, webhook_url: \"{url}/services/T/B/X\"}}\n\
         \x20 am: {{type: alertmanager, url: \"{url}\"}}\n\
         \x20 wh: {{type: webhook, url: \"{url}/hook\", secret: hmackey, headers: {{X-Team: fraud}}}}\n"
    );
    let config = write_setup(dir.path(), &notifiers, "gh, wf, gl, jk, af, ar, kf, sl, am, wh");
    let output = replay(&config, &repo("tests/fixtures/replay_drift/live.ndjson"));
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let requests = receiver.requests();
    let by_path = |prefix: &str| -> Received {
        let matching: Vec<&Received> = requests.iter().filter(|r| r.path.starts_with(prefix)).collect();
        assert_eq!(matching.len(), 1, "one request to {prefix}: {requests:#?}");
        matching[0].clone()
    };
    // Every request carries an idempotency key, the same shape everywhere.
    assert_eq!(requests.len(), 10, "{requests:#?}");
    assert!(requests.iter().all(|r| r.method == "POST" && r.header("idempotency-key").is_some_and(|k| k.len() == 32)));

    let gh = by_path("/repos/acme/fraud/dispatches");
    assert_eq!(gh.header("authorization"), Some("Bearer ghtoken"));
    assert_eq!(gh.header("accept"), Some("application/vnd.github+json"));
    assert_eq!(gh.header("x-github-api-version"), Some("2022-11-28"));
    let body = gh.json();
    assert_eq!(body["event_type"], "retrain");
    assert_eq!(body["client_payload"]["alert"], "AmountDrift");
    assert_eq!(body["client_payload"]["model"], "shop");
    assert!(body["client_payload"].as_object().unwrap().len() <= 10, "GitHub allows 10 top-level keys");

    let wf = by_path("/repos/acme/fraud/actions/workflows/retrain.yml/dispatches");
    assert_eq!(wf.json()["ref"], "main");
    assert_eq!(wf.json()["inputs"]["reason"], "AmountDrift");

    let gl = by_path("/api/v4/projects/acme%2Ffraud/trigger/pipeline");
    assert_eq!((gl.json()["token"].as_str(), gl.json()["ref"].as_str()), (Some("gltoken"), Some("main")));
    assert_eq!(gl.json()["variables"]["DRIFTWATCH_MODEL"], "shop");

    let jk = by_path("/job/retrain-fraud/buildWithParameters");
    assert_eq!(jk.header("content-type"), Some("application/x-www-form-urlencoded"));
    assert_eq!(jk.header("authorization"), Some("Basic Ym90OmprdG9rZW4="));
    let form = String::from_utf8(jk.body.clone()).unwrap();
    assert!(form.contains("ALERT=AmountDrift") && form.contains("MODEL=shop"), "{form}");

    let af = by_path("/api/v1/dags/retrain_fraud/dagRuns");
    assert_eq!(af.header("authorization"), Some("Basic YWRtaW46YWZwYXNz"));
    assert!(af.json()["dag_run_id"].as_str().unwrap().starts_with("driftwatch-"));
    assert_eq!(af.json()["conf"]["model"], "shop");

    let ar = by_path("/api/v1/workflows/ml/submit");
    assert_eq!(ar.header("authorization"), Some("Bearer artoken"));
    assert_eq!(
        (ar.json()["resourceKind"].as_str(), ar.json()["resourceName"].as_str()),
        (Some("WorkflowTemplate"), Some("retrain"))
    );
    assert!(ar.json()["submitOptions"]["parameters"].as_array().unwrap().contains(&Value::from("model=shop")));

    let kf = by_path("/apis/v2beta1/runs");
    assert_eq!(kf.json()["pipeline_version_reference"]["pipeline_id"], "p-123");
    assert_eq!(kf.json()["experiment_id"], "e-9");
    assert_eq!(kf.json()["runtime_config"]["parameters"]["model"], "shop");

    let sl = by_path("/services/T/B/X");
    assert!(sl.json()["text"].as_str().unwrap().contains("amount drifted on shop"));

    let am = by_path("/api/v2/alerts");
    let alert = &am.json()[0];
    assert_eq!(alert["labels"]["alertname"], "AmountDrift");
    assert_eq!(alert["labels"]["feature"], "amount");
    assert_eq!(alert["labels"]["severity"], "critical");
    assert!(alert["startsAt"].is_string() && alert["endsAt"].is_null());

    let wh = by_path("/hook");
    assert_eq!(wh.header("x-team"), Some("fraud"));
    let expected = expected_signature(b"hmackey", &wh.body);
    assert_eq!(wh.header("x-driftwatch-signature"), Some(expected.as_str()));
    assert_eq!(wh.json()["transition"]["state"], "firing");
}

#[test]
fn retriable_failures_are_retried_and_the_webhook_arrives_once_per_idempotency_key() {
    let receiver = Receiver::start(3);
    let dir = tempfile::tempdir().unwrap();
    let notifiers = format!(
        "  retrain-ci: {{type: github_dispatch, repo: acme/fraud, token: \"${{GH_TOKEN}}\", event_type: retrain, api_url: \"{}\"}}\n",
        receiver.url()
    );
    let config = write_setup(dir.path(), &notifiers, "retrain-ci");
    let output = Command::new(env!("CARGO_BIN_EXE_driftwatch"))
        .args(["replay", "--config", config.to_str().unwrap(), "--notify", "--out", "/dev/null"])
        .args(["--predictions", repo("tests/fixtures/replay_drift/live.ndjson").to_str().unwrap()])
        .env("GH_TOKEN", "t0ps3cret")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(!stderr.contains("t0ps3cret"), "the token leaked into the log");
    let requests = receiver.requests();
    assert_eq!(requests.iter().map(|r| r.status).collect::<Vec<_>>(), [429, 503, 503, 200]);
    let keys: std::collections::BTreeSet<&str> =
        requests.iter().map(|r| r.header("idempotency-key").unwrap()).collect();
    assert_eq!(keys.len(), 1, "every attempt carries the same key");
    // The audit trail: the transition, then each attempt.
    let lines = audit(dir.path());
    let attempts: Vec<(&str, u64)> = lines
        .iter()
        .filter(|l| l["kind"] == "notification_attempt")
        .map(|l| (l["outcome"].as_str().unwrap(), l["attempt"].as_u64().unwrap()))
        .collect();
    assert_eq!(attempts, [("retried", 1), ("retried", 2), ("retried", 3), ("delivered", 4)]);
    assert!(!serde_json::to_string(&lines).unwrap().contains("t0ps3cret"));
    // Delivered: nothing left in the outbox, and the id remembered as done.
    assert_eq!(crate::support::outbox_entries(&dir.path().join("state/outbox")), 0);
    let done = std::fs::read_to_string(dir.path().join("state/outbox/done.log")).unwrap();
    assert_eq!(done.lines().count(), 1, "{done}");
}

#[test]
fn a_pending_notification_survives_a_killed_process() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on this port yet: deliveries fail and are retried.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let notifiers = format!("  hook: {{type: webhook, url: \"http://127.0.0.1:{port}/hook\"}}\n");
    let config = write_setup(dir.path(), &notifiers, "hook");
    let mut child = Command::new(env!("CARGO_BIN_EXE_driftwatch"))
        .args(["replay", "--config", config.to_str().unwrap(), "--notify", "--out", "/dev/null"])
        .args(["--predictions", repo("tests/fixtures/replay_drift/live.ndjson").to_str().unwrap()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let outbox = dir.path().join("state/outbox");
    let queued = || outbox_entries(&outbox);
    wait_until(Duration::from_secs(60), "a notification in the outbox", || queued() == 1);
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(queued(), 1, "still queued after the kill");

    // The receiver comes up; a restart (here a replay of no events)
    // delivers what the outbox holds.
    let receiver = Receiver::start_on(port);
    let empty = dir.path().join("empty.ndjson");
    std::fs::write(&empty, "").unwrap();
    let output = replay(&config, &empty);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let requests = receiver.requests();
    assert_eq!(requests.len(), 1, "{requests:#?}");
    assert_eq!(requests[0].path, "/hook");
    assert_eq!(requests[0].json()["transition"]["alert"], "AmountDrift");
    assert_eq!(queued(), 0);
}

/// The attempts the audit log records for `notifier`: (outcome, status).
fn attempts_of(lines: &[Value], notifier: &str) -> Vec<(String, Option<u64>)> {
    lines
        .iter()
        .filter(|l| l["kind"] == "notification_attempt" && l["notifier"] == notifier)
        .map(|l| (l["outcome"].as_str().unwrap().to_string(), l["status"].as_u64()))
        .collect()
}

/// Regression: the client followed up to three redirects anywhere, so a
/// receiver (or whoever controls its replies) could send the request — a
/// webhook's signature and custom credential headers, a Jenkins token in
/// the query, the body on 307/308 — to another host. Now only redirects on
/// the same scheme, host and port are followed.
#[test]
fn redirects_to_another_host_are_not_followed() {
    let elsewhere = Receiver::start(0);
    let target = format!("http://127.0.0.1:{}/stolen", elsewhere.port);
    let receiver = serve(move |request, stream| {
        let location = match request.path.as_str() {
            "/same" => "/final".to_string(),
            "/final" => {
                let _ = write!(stream, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                return 200;
            }
            _ => target.clone(),
        };
        let _ = write!(
            stream,
            "HTTP/1.1 307 Temporary Redirect\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        307
    });
    let url = receiver.url();
    let dir = tempfile::tempdir().unwrap();
    let notifiers = format!(
        "  cross: {{type: webhook, url: \"{url}/cross\", secret: hmackey, headers: {{Authorization: \"Bearer hooktoken\", PRIVATE-TOKEN: pt}}}}\n\
         \x20 crossgh: {{type: github_dispatch, repo: acme/fraud, token: ghtoken, event_type: retrain, api_url: \"{url}/gh\"}}\n\
         \x20 crossjk: {{type: jenkins, url: \"{url}/ci\", job: retrain, token: jktoken}}\n\
         \x20 same: {{type: webhook, url: \"{url}/same\", headers: {{Authorization: \"Bearer hooktoken\"}}}}\n"
    );
    let config = write_setup(dir.path(), &notifiers, "cross, crossgh, crossjk, same");
    let output = replay(&config, &repo("tests/fixtures/replay_drift/live.ndjson"));
    // Three notifications failed: the replay says so and fails.
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("3 notifications failed"), "{stderr}");

    // Nothing reached the other host: no request, so no credential, no body.
    assert!(elsewhere.requests().is_empty(), "{:#?}", elsewhere.requests());
    let lines = audit(dir.path());
    for notifier in ["cross", "crossgh", "crossjk"] {
        assert_eq!(attempts_of(&lines, notifier), [("failed".to_string(), Some(307))], "{notifier}");
    }
    // A redirect on the same origin is followed, credentials and body kept.
    assert_eq!(attempts_of(&lines, "same"), [("delivered".to_string(), Some(200))]);
    let requests = receiver.requests();
    let fin: Vec<&Received> = requests.iter().filter(|r| r.path == "/final").collect();
    assert_eq!(fin.len(), 1, "{requests:#?}");
    assert_eq!(fin[0].method, "POST");
    assert_eq!(fin[0].header("authorization"), Some("Bearer hooktoken"));
    assert_eq!(fin[0].json()["transition"]["alert"], "AmountDrift");
}

/// Regression: an error reply's body was read whole (`text()`), so a
/// receiver sending a huge or endless body held it all in memory until
/// the request timeout. Now at most 64 KiB is read and the rest never is.
#[test]
fn a_huge_reply_body_is_read_only_up_to_the_cap() {
    const ANNOUNCED: u64 = 128 << 20;
    let written = Arc::new(AtomicU64::new(0));
    let finished = Arc::new(AtomicBool::new(false));
    let (count, done) = (written.clone(), finished.clone());
    let receiver = serve(move |_, stream| {
        let _ = write!(
            stream,
            "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: {ANNOUNCED}\r\n\r\n"
        );
        let chunk = vec![b'x'; 64 * 1024];
        // Stops when the client closes the connection (or all is sent).
        while count.load(Ordering::SeqCst) < ANNOUNCED && stream.write_all(&chunk).is_ok() {
            count.fetch_add(chunk.len() as u64, Ordering::SeqCst);
        }
        done.store(true, Ordering::SeqCst);
        400
    });
    let dir = tempfile::tempdir().unwrap();
    let notifiers = format!("  hook: {{type: webhook, url: \"{}/hook\", timeout: 10m}}\n", receiver.url());
    let config = write_setup(dir.path(), &notifiers, "hook");
    let output = replay(&config, &repo("tests/fixtures/replay_drift/live.ndjson"));
    assert_eq!(output.status.code(), Some(1), "{}", String::from_utf8_lossy(&output.stderr));
    let lines = audit(dir.path());
    assert_eq!(attempts_of(&lines, "hook"), [("failed".to_string(), Some(400))]);
    let attempt = lines.iter().find(|l| l["kind"] == "notification_attempt" && l["notifier"] == "hook").unwrap();
    assert!(attempt["error"].as_str().unwrap().ends_with("(reply cut at 64 KiB)"), "{attempt}");
    // The process has exited, so the receiver's writes end; what it got
    // into the connection is the cap plus the kernel's socket buffers.
    wait_until(Duration::from_secs(60), "the receiver to stop writing", || finished.load(Ordering::SeqCst));
    let sent = written.load(Ordering::SeqCst);
    assert!(sent < 32 << 20, "the receiver wrote {sent} bytes of {ANNOUNCED}: the body was read on");
}

/// Regression: values from event data were put into a webhook URL as they
/// were, so a segment like `region=../../admin?x=#…` moved the request to
/// another path and query. Each value is now percent-encoded.
#[test]
fn event_values_in_a_webhook_url_cannot_change_its_path_or_query() {
    let receiver = Receiver::start(0);
    let dir = tempfile::tempdir().unwrap();
    let notifiers = format!(
        "  hook: {{type: webhook, url: \"{}/hooks/{{{{ model }}}}/{{{{ segment }}}}?feature={{{{ feature }}}}&alert={{{{ alert }}}}\"}}\n",
        receiver.url()
    );
    let config = write_setup(dir.path(), &notifiers, "hook");
    // The rule, for the hostile segment rather than the whole model.
    std::fs::write(
        dir.path().join("rules.yaml"),
        "groups:\n  - name: g\n    rules:\n      - alert: AmountDrift\n        \
         expr: metric = 'psi' AND drifted AND feature = 'amount' AND segment <> ''\n        \
         notify: [hook]\n",
    )
    .unwrap();
    let hostile = "../../admin?x=#a/b@c d";
    let events: String = std::fs::read_to_string(repo("tests/fixtures/replay_drift/live.ndjson"))
        .unwrap()
        .lines()
        .map(|line| {
            let mut event: Value = serde_json::from_str(line).unwrap();
            event["segment"] = serde_json::json!({"region": hostile});
            format!("{event}\n")
        })
        .collect();
    let predictions = dir.path().join("hostile.ndjson");
    std::fs::write(&predictions, events).unwrap();
    let output = replay(&config, &predictions);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let requests = receiver.requests();
    assert_eq!(requests.len(), 1, "{requests:#?}");
    assert_eq!(
        requests[0].path,
        "/hooks/shop/region%3D..%2F..%2Fadmin%3Fx%3D%23a%2Fb%40c%20d?feature=amount&alert=AmountDrift"
    );
    assert_eq!(requests[0].json()["transition"]["segment"], format!("region={hostile}"));
}

/// Regression: a webhook URL without a scheme passed `config check` and
/// failed at every delivery as "builder error"; a refused connection was
/// logged as "error sending request"; and `replay --notify` exited 0 when
/// no notification arrived.
#[test]
fn notifier_mistakes_are_found_at_config_time_and_explained_at_run_time() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_setup(dir.path(), "  hook: {type: webhook, url: \"hooks.example/retrain\"}\n", "hook");
    let output = Command::new(env!("CARGO_BIN_EXE_driftwatch"))
        .args(["config", "check", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("notifiers.hook.url: the URL has no scheme; write it as http://HOST"), "{stderr}");

    // Nothing listens on this port: every attempt is refused, and the
    // replay gives up after its retry budget (two attempts) and fails.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config =
        write_setup(dir.path(), &format!("  hook: {{type: webhook, url: \"http://127.0.0.1:{port}/hook\"}}\n"), "hook");
    let text = std::fs::read_to_string(&config).unwrap().replace("max_attempts: 50", "max_attempts: 2");
    std::fs::write(&config, text).unwrap();
    let output = replay(&config, &repo("tests/fixtures/replay_drift/live.ndjson"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("0 notifications delivered"), "{stderr}");
    assert!(stderr.contains("driftwatch replay: 1 notifications failed"), "{stderr}");
    let lines = audit(dir.path());
    let errors: Vec<(&str, &str)> = lines
        .iter()
        .filter(|l| l["kind"] == "notification_attempt")
        .map(|l| (l["outcome"].as_str().unwrap(), l["error"].as_str().unwrap()))
        .collect();
    assert_eq!(errors.iter().map(|(outcome, _)| *outcome).collect::<Vec<_>>(), ["retried", "expired"]);
    for (_, error) in errors {
        assert!(error.starts_with(&format!("could not connect to 127.0.0.1:{port}: ")), "{error}");
        assert!(error.contains("Connection refused"), "{error}");
    }
}

/// Regression: with a cooldown per rule and model, features drifting in
/// one window sent one webhook naming one arbitrary feature, the others
/// only `suppressed` in the audit log. Now they are one notification per
/// notifier listing them all (Alertmanager: one request, one alert each).
#[test]
fn features_drifting_in_one_window_make_one_notification_listing_them_all() {
    let receiver = Receiver::start(0);
    let url = receiver.url();
    let dir = tempfile::tempdir().unwrap();
    let notifiers = format!(
        "  hook: {{type: webhook, url: \"{url}/hook\"}}\n  am: {{type: alertmanager, url: \"{url}\", resend_interval: 1h}}\n"
    );
    let config = write_setup(dir.path(), &notifiers, "hook, am");
    std::fs::write(
        dir.path().join("rules.yaml"),
        "groups:\n  - name: g\n    rules:\n      - alert: FeatureDrift\n        \
         expr: metric = 'psi' AND drifted AND segment = ''\n        cooldown: 12h\n        \
         annotations: {summary: \"{{ feature }} drifted\"}\n        notify: [hook, am]\n",
    )
    .unwrap();
    let alerts = dir.path().join("alerts.ndjson");
    let output = Command::new(env!("CARGO_BIN_EXE_driftwatch"))
        .args(["replay", "--config", config.to_str().unwrap(), "--notify", "--out", "/dev/null"])
        .args(["--alerts", alerts.to_str().unwrap()])
        .args(["--predictions", repo("tests/fixtures/replay_drift/live.ndjson").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    // Two features fire in one window; neither is held back by the cooldown.
    let firing: Vec<Value> = std::fs::read_to_string(&alerts)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|t| t["state"] == "firing")
        .collect();
    let features: Vec<&str> = firing.iter().map(|t| t["feature"].as_str().unwrap()).collect();
    assert_eq!(features, ["amount", "country"]);
    assert!(firing.iter().all(|t| t["notify"] == serde_json::json!(["hook", "am"]) && t["suppressed"].is_null()));
    assert_eq!(firing[0]["window_end"], firing[1]["window_end"]);

    let requests = receiver.requests();
    let hooks: Vec<&Received> = requests.iter().filter(|r| r.path == "/hook").collect();
    assert_eq!(hooks.len(), 1, "one webhook for the group: {requests:#?}");
    let body = hooks[0].json();
    let members: Vec<(&str, &str)> = body["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["feature"].as_str().unwrap(), t["annotations"]["summary"].as_str().unwrap()))
        .collect();
    assert_eq!(members, [("amount", "amount drifted"), ("country", "country drifted")]);
    let posts: Vec<&Received> = requests.iter().filter(|r| r.path == "/api/v2/alerts").collect();
    assert_eq!(posts.len(), 1, "one Alertmanager request for the group: {requests:#?}");
    let alerts = posts[0].json();
    let labels: Vec<&str> =
        alerts.as_array().unwrap().iter().map(|a| a["labels"]["feature"].as_str().unwrap()).collect();
    assert_eq!(labels, ["amount", "country"]);
    // The audit log names every member of each attempt.
    let lines = audit(dir.path());
    let attempts: Vec<&Value> = lines.iter().filter(|l| l["kind"] == "notification_attempt").collect();
    assert_eq!(attempts.len(), 2, "{attempts:#?}");
    for attempt in attempts {
        let fingerprints = attempt["fingerprints"].as_array().unwrap();
        assert_eq!(fingerprints.len(), 2, "{attempt}");
        assert_eq!(fingerprints[0], firing[0]["fingerprint"]);
        assert_eq!(fingerprints[1], firing[1]["fingerprint"]);
    }
}
