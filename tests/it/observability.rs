//! Observability proven end to end: the daemon consumes a drifting stream
//! from a real broker (Tansu) and fires a webhook; then a real Prometheus
//! (Debian's `prometheus`) scrapes `/metrics` and every PromQL expression
//! of every Grafana dashboard in `dashboards/` must return a series through
//! Prometheus' HTTP API; the status page must render in headless Chromium
//! (Debian's `chromium`) showing the model and its drifted feature, with a
//! screenshot kept under `target/tmp/artifacts/`. `./scripts/test.sh`
//! installs Prometheus and Chromium.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{
    Broker, Killed, flush, http, http_address, http_text, repo, send, wait_until, write_amount_drift_rule,
};

/// The datasource uid every dashboard panel must name.
const DATASOURCE_UID: &str = "driftwatch-prometheus";

fn installed(candidates: &[&str], what: &str) -> PathBuf {
    for candidate in candidates {
        if Path::new(candidate).exists() {
            return PathBuf::from(candidate);
        }
    }
    panic!("{what} is not installed: run ./scripts/test.sh, which installs it");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Percent-encodes a query parameter value.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every panel of a dashboard, nested row panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    let mut stack: Vec<&Value> = dashboard["panels"].as_array().map(|a| a.iter().collect()).unwrap_or_default();
    while let Some(panel) = stack.pop() {
        if let Some(nested) = panel["panels"].as_array() {
            stack.extend(nested.iter());
        }
        out.push(panel);
    }
    out
}

/// Loads `dashboards/*.json`, checks their uids, ids and datasource
/// references, and returns (dashboard uid, panel title, PromQL) for every
/// target, with Grafana's variables substituted as Grafana would for
/// "All": `$model` → `.*`, `$__rate_interval` → `1m`.
fn dashboard_queries() -> Vec<(String, String, String)> {
    let pinned = serde_json::json!({"type": "prometheus", "uid": DATASOURCE_UID});
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo("dashboards"))
        .expect("dashboards/")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "the overview, model and pipeline dashboards: {files:?}");
    let provisioning = std::fs::read_to_string(repo("dashboards/provisioning/datasources/driftwatch.yaml")).unwrap();
    assert!(provisioning.contains(&format!("uid: {DATASOURCE_UID}")), "{provisioning}");

    let mut uids = BTreeSet::new();
    let mut queries = Vec::new();
    for file in &files {
        let name = file.display().to_string();
        let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap())
            .unwrap_or_else(|e| panic!("{name} is not JSON: {e}"));
        let uid = dashboard["uid"].as_str().unwrap_or_else(|| panic!("{name} has no uid")).to_string();
        assert!(uids.insert(uid.clone()), "{name}: dashboard uid {uid} is not unique");
        assert!(dashboard["title"].is_string(), "{name} has no title");
        for variable in dashboard["templating"]["list"].as_array().into_iter().flatten() {
            if variable["type"] == "query" {
                assert_eq!(variable["datasource"], pinned, "{name}: variable {}", variable["name"]);
            }
        }
        let mut ids = BTreeSet::new();
        for panel in panels(&dashboard) {
            let title = panel["title"].as_str().unwrap_or("").to_string();
            let id = panel["id"].as_i64().unwrap_or_else(|| panic!("{name}: panel {title:?} has no id"));
            assert!(ids.insert(id), "{name}: panel id {id} is not unique");
            if panel["type"] == "row" {
                continue;
            }
            assert_eq!(panel["datasource"], pinned, "{name}: panel {title:?}");
            let targets =
                panel["targets"].as_array().unwrap_or_else(|| panic!("{name}: panel {title:?} has no targets"));
            assert!(!targets.is_empty(), "{name}: panel {title:?} has no targets");
            for target in targets {
                assert_eq!(target["datasource"], pinned, "{name}: panel {title:?} target {}", target["refId"]);
                let expr =
                    target["expr"].as_str().unwrap_or_else(|| panic!("{name}: {title:?} has a target without expr"));
                let expr = expr.replace("$__rate_interval", "1m").replace("${model}", ".*").replace("$model", ".*");
                assert!(!expr.contains('$'), "{name}: {title:?} uses a variable the test does not know: {expr}");
                queries.push((uid.clone(), title.clone(), expr));
            }
        }
    }
    queries
}

fn start_prometheus(dir: &Path, target: &str) -> (Killed, String) {
    let binary = installed(&["/usr/bin/prometheus", "/usr/local/bin/prometheus"], "Prometheus");
    let port = free_port();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             scrape_configs:\n  - job_name: driftwatch\n    static_configs: [{{targets: [\"{target}\"]}}]\n"
        ),
    )
    .unwrap();
    let child = Command::new(binary)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("prometheus-data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
        .spawn()
        .expect("starting prometheus");
    let address = format!("127.0.0.1:{port}");
    let process = Killed(child);
    wait_until(Duration::from_secs(60), "Prometheus to be ready", || {
        std::net::TcpStream::connect(&address).is_ok() && http_text(&address, "GET", "/-/ready", None).0 == 200
    });
    (process, address)
}

/// The series an instant query returns (empty on any error).
fn query(prometheus: &str, expr: &str) -> Vec<Value> {
    let (status, body) = http(prometheus, "GET", &format!("/api/v1/query?query={}", encode(expr)), None);
    if status != 200 {
        return Vec::new();
    }
    body["data"]["result"].as_array().cloned().unwrap_or_default()
}

/// Runs headless Chromium with `args` and the page at `url`; returns stdout.
fn chromium(profile: &Path, args: &[&str], url: &str) -> String {
    let binary = installed(&["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"], "Chromium");
    let output = Command::new(binary)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"])
        .args(["--disable-background-networking", "--disable-extensions", "--hide-scrollbars"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .expect("running chromium");
    assert!(output.status.success(), "chromium failed: {}\n{}", output.status, String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Starts `driftwatch run` in `dir` (log in `dir/daemon.log`) and waits
/// for its HTTP API; returns the process and the API's address.
fn start_daemon(dir: &Path, config: &Path) -> (Killed, String) {
    let log = dir.join("daemon.log");
    let daemon = Killed(
        Command::new(env!("CARGO_BIN_EXE_driftwatch"))
            .args(["run", "--config", config.to_str().unwrap()])
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_until(Duration::from_secs(60), "the HTTP API", || {
        std::fs::read_to_string(&log).unwrap().contains("HTTP API listening")
    });
    (daemon, http_address(&std::fs::read_to_string(&log).unwrap()))
}

#[test]
fn prometheus_sees_every_dashboard_query_and_chromium_renders_the_status_page() {
    let queries = dashboard_queries();
    let dir = tempfile::tempdir().unwrap();
    let receiver = crate::notify::Receiver::start(0);
    let collector = crate::notify::Receiver::start(0);
    let broker = Broker::start();
    broker.create_topic("predictions", 1);
    broker.create_topic("labels", 1);
    write_amount_drift_rule(dir.path(), "retrain");
    let config = dir.path().join("c.yaml");
    std::fs::write(
        &config,
        format!(
            "kafka: {{brokers: \"{}\", group_id: observability}}\n\
             windows: {{size: 5m, allowed_lateness: 0s, label_horizon: 10m}}\n\
             pipeline: {{batch_size: 256, linger: 20ms}}\n\
             models: [{{name: shop, task: binary_classification, baseline: {}}}]\n\
             rules: [rules.yaml]\n\
             notifiers: {{retrain: {{type: webhook, url: \"http://127.0.0.1:{}/retrain\"}}}}\n\
             http: {{listen: \"127.0.0.1:0\"}}\n\
             state: {{dir: state}}\n\
             otlp: {{endpoint: \"http://127.0.0.1:{}\", interval: 1s, traces: true, headers: {{x-tenant: shop-team}}}}\n",
            broker.bootstrap(),
            repo("tests/fixtures/replay_drift/baseline.json").display(),
            receiver.port,
            collector.port,
        ),
    )
    .unwrap();
    let (mut daemon, address) = start_daemon(dir.path(), &config);
    let timeout = Duration::from_secs(90);

    // Predictions with their serving latency, and a label for each (right
    // before the drift, often wrong after it); once every label is in, one
    // event past the last window's end and label horizon closes them all.
    let producer = broker.producer();
    let events = std::fs::read_to_string(repo("tests/fixtures/replay_drift/live.ndjson")).unwrap();
    let mut labels = 0;
    for (i, line) in events.lines().enumerate() {
        let mut event: Value = serde_json::from_str(line).unwrap();
        event["latency_ms"] = serde_json::json!(8.0 + (i % 40) as f64);
        send(&producer, "predictions", &i.to_string(), event.to_string().as_bytes());
        let prediction = event["prediction"].as_i64().unwrap();
        let drifted = event["timestamp"].as_str().unwrap() >= "2026-11-26T10:10";
        let label = if drifted && i % 3 == 0 { 1 - prediction } else { prediction };
        let label_event = serde_json::json!({
            "event_id": event["event_id"], "model": "shop", "timestamp": event["timestamp"], "label": label,
        });
        send(&producer, "labels", &i.to_string(), label_event.to_string().as_bytes());
        labels += 1;
    }
    flush(&producer);
    wait_until(timeout, "every label consumed", || {
        http_text(&address, "GET", "/metrics", None).1.lines().any(|l| {
            l.starts_with("driftwatch_events_total{")
                && l.contains("topic=\"labels\"")
                && l.ends_with(&format!(" {labels}"))
        })
    });
    let closer = r#"{"event_id":"closer","model":"shop","timestamp":"2026-11-26T10:30:30.000Z","prediction":0,"features":{"amount":20.0,"tenure":100,"country":"DE"}}"#;
    send(&producer, "predictions", "closer", closer.as_bytes());
    flush(&producer);
    wait_until(timeout, "the retraining webhook", || receiver.requests().iter().any(|r| r.status == 200));
    let deadline = Instant::now() + timeout;
    loop {
        let text = http_text(&address, "GET", "/metrics", None).1;
        if text.contains("metric=\"accuracy\"") && text.contains("outcome=\"delivered\"") {
            break;
        }
        assert!(Instant::now() < deadline, "no accuracy or delivered notification in /metrics:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, body) = http(&address, "GET", "/readyz", None);
    assert_eq!(status, 200, "{body}");
    // The caps' and the join's counters (README, Limits) are exported too.
    let text = http_text(&address, "GET", "/metrics", None).1;
    for name in [
        "driftwatch_features_over_cap_total 0",
        "driftwatch_segments_over_cap_total 0",
        "driftwatch_versions_over_cap_total 0",
        "driftwatch_join_evicted_total 0",
        "driftwatch_checkpoints_failed_total 0",
        "driftwatch_labels_unmatched_total ",
        "driftwatch_join_pending ",
    ] {
        assert!(text.lines().any(|l| l.starts_with(name)), "/metrics lacks {name:?}:\n{text}");
    }

    // OTLP/HTTP push: the same metrics, and spans of window close → rules →
    // notify, as protobuf (names appear verbatim in the bytes).
    let contains = |body: &[u8], needle: &str| body.windows(needle.len()).any(|w| w == needle.as_bytes());
    wait_until(timeout, "OTLP metrics and spans", || {
        let requests = collector.requests();
        let metrics = requests.iter().any(|r| {
            r.path == "/v1/metrics" && contains(&r.body, "driftwatch_feature_drifted") && contains(&r.body, "amount")
        });
        let spans = requests.iter().any(|r| r.path == "/v1/traces" && contains(&r.body, "window_close"))
            && requests.iter().any(|r| r.path == "/v1/traces" && contains(&r.body, "notify_deliver"));
        metrics && spans
    });
    for request in collector.requests() {
        assert_eq!(request.header("content-type"), Some("application/x-protobuf"), "{}", request.path);
        assert_eq!(request.header("x-tenant"), Some("shop-team"), "{}", request.path);
    }

    // The status page in a real browser: the model, the drifted feature
    // highlighted, performance against the baseline, the firing alert.
    let profile = dir.path().join("chromium-profile");
    let url = format!("http://{address}/");
    let dom = chromium(&profile, &["--dump-dom"], &url);
    assert!(dom.contains("<h2>shop</h2>"), "the model's heading:\n{dom}");
    assert!(dom.contains(r#"<tr class="drifted" data-feature="amount">"#), "amount highlighted as drifted:\n{dom}");
    assert!(!dom.contains(r#"<tr class="drifted" data-feature="tenure">"#), "tenure does not drift:\n{dom}");
    assert!(dom.contains(r#"<tr data-metric="accuracy">"#), "accuracy vs baseline:\n{dom}");
    assert!(dom.contains("<td>AmountDrift</td>"), "the firing alert:\n{dom}");
    assert!(dom.contains(r#"class="badge ok">ready<"#), "ready:\n{dom}");
    let artifacts = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let screenshot = artifacts.join("status-page.png");
    let _ = std::fs::remove_file(&screenshot);
    chromium(&profile, &[&format!("--screenshot={}", screenshot.display()), "--window-size=1280,1800"], &url);
    let png = std::fs::read(&screenshot).expect("the screenshot");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "a real screenshot: {} bytes", png.len());
    eprintln!("status page screenshot: {}", screenshot.display());

    // A real Prometheus scrapes the daemon; every dashboard query returns data.
    let (_prometheus, prometheus) = start_prometheus(dir.path(), &address);
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut empty: Vec<&(String, String, String)> = queries.iter().collect();
    while !empty.is_empty() {
        empty.retain(|(_, _, expr)| query(&prometheus, expr).is_empty());
        if empty.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dashboard queries without data after 90 s (Prometheus log: {}):\n{}",
            dir.path().join("prometheus.log").display(),
            empty.iter().map(|(d, t, e)| format!("  {d} / {t}: {e}")).collect::<Vec<_>>().join("\n")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!("{} dashboard queries returned data", queries.len());

    let pid = daemon.0.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    assert!(daemon.0.wait().unwrap().success());
}

/// Without a reachable broker the daemon is alive but not ready, and says
/// why on `/readyz`, in `driftwatch_ready` and on the status page.
#[test]
fn the_daemon_is_alive_but_not_ready_while_kafka_is_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.yaml");
    std::fs::write(
        &config,
        format!(
            "kafka: {{brokers: \"127.0.0.1:{}\", group_id: nobody}}\n\
             models: [{{name: shop}}]\n\
             http: {{listen: \"127.0.0.1:0\"}}\n\
             state: {{dir: state}}\n",
            free_port()
        ),
    )
    .unwrap();
    let (mut daemon, address) = start_daemon(dir.path(), &config);
    let log = dir.path().join("daemon.log");
    assert_eq!(http(&address, "GET", "/healthz", None).0, 200);
    // librdkafka has given up on the one broker by now.
    wait_until(Duration::from_secs(30), "the broker reported down", || {
        std::fs::read_to_string(&log).unwrap().contains("librdkafka error")
    });
    let (status, body) = http(&address, "GET", "/readyz", None);
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "not_ready");
    assert_eq!(body["error"]["details"], serde_json::json!(["kafka_reachable"]), "{body}");
    let metrics = http_text(&address, "GET", "/metrics", None).1;
    assert!(metrics.lines().any(|l| l == "driftwatch_ready 0"), "{metrics}");
    let page = http_text(&address, "GET", "/", None).1;
    assert!(page.contains("not ready: kafka_reachable"), "{page}");
    assert!(page.contains("No window has closed yet."), "{page}");

    let pid = daemon.0.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    assert!(daemon.0.wait().unwrap().success());
}
