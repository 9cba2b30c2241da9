//! Notifications at real receivers: an SMTP server (aiosmtpd) receives the
//! alert email; a real Alertmanager (Debian's prometheus-alertmanager)
//! shows the alert, then drops it when it resolves. `./scripts/test.sh`
//! installs both.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::{
    Killed, expected_signature, http, http_address, http_text, outbox_entries, repo, wait_until,
    write_amount_drift_rule,
};

/// aiosmtpd on a free loopback port, writing messages to `dir`.
fn start_smtp(dir: &Path) -> (Killed, u16) {
    let mut child = Command::new("python3")
        .arg(repo("tests/support/smtp_sink.py"))
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 (with aiosmtpd: ./scripts/test.sh installs it)");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let port =
        line.trim().parse().unwrap_or_else(|_| panic!("smtp_sink.py did not start: {line:?} (is aiosmtpd installed?)"));
    (Killed(child), port)
}

fn alertmanager_binary() -> &'static str {
    for candidate in ["/usr/bin/prometheus-alertmanager", "/usr/local/bin/alertmanager"] {
        if Path::new(candidate).exists() {
            return candidate;
        }
    }
    panic!("Alertmanager is not installed: run ./scripts/test.sh (apt-get install prometheus-alertmanager)");
}

/// A real Alertmanager on a free loopback port.
fn start_alertmanager(dir: &Path) -> (Killed, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = dir.join("alertmanager.yml");
    std::fs::write(&config, "route: {receiver: blackhole}\nreceivers: [{name: blackhole}]\n").unwrap();
    let child = Command::new(alertmanager_binary())
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.path={}", dir.join("am-data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--cluster.listen-address=")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let address = format!("127.0.0.1:{port}");
    let child = Killed(child);
    wait_until(Duration::from_secs(60), "Alertmanager to be ready", || {
        std::net::TcpStream::connect(&address).is_ok() && http(&address, "GET", "/-/ready", None).0 == 200
    });
    (child, address)
}

/// A config and rules for the drifting fixture; the rule fires on the
/// amount feature's PSI (and, with `window_filter`, only in one window,
/// so it also resolves).
fn setup(dir: &Path, notifier: &str, window_filter: &str) -> PathBuf {
    crate::support::write_amount_drift_rule_with(dir, "n", window_filter, "");
    let config = dir.join("c.yaml");
    std::fs::write(
        &config,
        format!(
            "windows: {{size: 5m}}\nmodels: [{{name: shop, baseline: {}}}]\nrules: [rules.yaml]\n\
             notifiers:\n  n: {notifier}\n\
             delivery: {{retry_initial: 20ms, retry_max: 200ms, max_attempts: 20}}\n",
            repo("tests/fixtures/replay_drift/baseline.json").display()
        ),
    )
    .unwrap();
    config
}

fn replay_notify(config: &Path) {
    let output = Command::new(env!("CARGO_BIN_EXE_driftwatch"))
        .args(["replay", "--config", config.to_str().unwrap(), "--notify", "--out", "/dev/null"])
        .args(["--predictions", repo("tests/fixtures/replay_drift/live.ndjson").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn the_alert_email_arrives_at_a_real_smtp_server() {
    let dir = tempfile::tempdir().unwrap();
    let mail = dir.path().join("mail");
    let (_smtp, port) = start_smtp(&mail);
    let config = setup(
        dir.path(),
        &format!(
            "{{type: email, smtp: \"smtp://127.0.0.1:{port}\", tls: none, from: driftwatch@example.com, \
             to: [oncall@example.com, ml-team@example.com]}}"
        ),
        "",
    );
    replay_notify(&config);
    wait_until(Duration::from_secs(30), "the message", || mail.join("1.eml").exists());
    let envelope: Value = serde_json::from_str(&std::fs::read_to_string(mail.join("1.json")).unwrap()).unwrap();
    assert_eq!(envelope["mail_from"], "driftwatch@example.com");
    assert_eq!(envelope["rcpt_tos"], serde_json::json!(["oncall@example.com", "ml-team@example.com"]));
    let message = std::fs::read_to_string(mail.join("1.eml")).unwrap();
    assert!(message.contains("Subject: [driftwatch] FIRING AmountDrift: shop"), "{message}");
    assert!(message.contains("To: oncall@example.com, ml-team@example.com"), "{message}");
    assert!(message.contains("@driftwatch>"), "Message-ID from the idempotency key: {message}");
    assert!(message.contains("text/plain") && message.contains("text/html"), "{message}");
    assert!(message.contains("amount drifted on shop"), "{message}");
    // One firing, one email (the drift does not resolve in this stream).
    assert!(!mail.join("2.eml").exists());
}

#[test]
fn the_alert_appears_in_a_real_alertmanager_and_goes_when_resolved() {
    let dir = tempfile::tempdir().unwrap();
    let (_alertmanager, address) = start_alertmanager(dir.path());
    let notifier = format!("{{type: alertmanager, url: \"http://{address}\"}}");
    let ours = |body: &Value| -> Vec<Value> {
        body.as_array()
            .map(|a| a.iter().filter(|x| x["labels"]["alertname"] == "AmountDrift").cloned().collect())
            .unwrap_or_default()
    };

    // Firing: the alert is active in Alertmanager with our labels.
    let firing = dir.path().join("firing");
    std::fs::create_dir_all(&firing).unwrap();
    replay_notify(&setup(&firing, &notifier, ""));
    wait_until(Duration::from_secs(30), "the alert in Alertmanager", || {
        !ours(&http(&address, "GET", "/api/v2/alerts", None).1).is_empty()
    });
    let alert = ours(&http(&address, "GET", "/api/v2/alerts", None).1).remove(0);
    assert_eq!(alert["status"]["state"], "active", "{alert}");
    assert_eq!(alert["labels"]["model"], "shop");
    assert_eq!(alert["labels"]["feature"], "amount");
    assert_eq!(alert["labels"]["severity"], "critical");
    assert_eq!(alert["annotations"]["summary"], "amount drifted on shop");

    // The same alert fires and resolves (the condition holds in one window
    // only): Alertmanager gets endsAt and no longer lists it.
    let resolving = dir.path().join("resolving");
    std::fs::create_dir_all(&resolving).unwrap();
    replay_notify(&setup(&resolving, &notifier, " AND window_start = '2026-11-26T10:10:00Z'"));
    wait_until(Duration::from_secs(30), "the alert to resolve in Alertmanager", || {
        ours(&http(&address, "GET", "/api/v2/alerts", None).1).is_empty()
    });
}

/// Two features drifting in one window: one email naming both arrives at
/// a real SMTP server, and a real Alertmanager accepts both alerts from one
/// request (its API takes a list) and shows them.
#[test]
fn features_drifting_together_reach_real_receivers_as_one_notification() {
    let dir = tempfile::tempdir().unwrap();
    let mail = dir.path().join("mail");
    let (_smtp, port) = start_smtp(&mail);
    let (_alertmanager, address) = start_alertmanager(dir.path());
    let config = dir.path().join("c.yaml");
    std::fs::write(
        &config,
        format!(
            "windows: {{size: 5m}}\nmodels: [{{name: shop, baseline: {}}}]\nrules: [rules.yaml]\n\
             notifiers:\n\
             \x20 mail: {{type: email, smtp: \"smtp://127.0.0.1:{port}\", tls: none, from: driftwatch@example.com, to: [oncall@example.com]}}\n\
             \x20 am: {{type: alertmanager, url: \"http://{address}\"}}\n\
             delivery: {{retry_initial: 20ms, retry_max: 200ms, max_attempts: 20}}\n",
            repo("tests/fixtures/replay_drift/baseline.json").display()
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("rules.yaml"),
        "groups:\n  - name: g\n    rules:\n      - alert: FeatureDrift\n        \
         expr: metric = 'psi' AND drifted AND segment = ''\n        cooldown: 12h\n        \
         labels: {severity: warning}\n        notify: [mail, am]\n",
    )
    .unwrap();
    replay_notify(&config);
    wait_until(Duration::from_secs(30), "the message", || mail.join("1.eml").exists());
    let message = std::fs::read_to_string(mail.join("1.eml")).unwrap();
    assert!(message.contains("Subject: [driftwatch] FIRING FeatureDrift: shop (2 alerts)"), "{message}");
    for feature in ["feature: amount", "feature: country"] {
        assert!(message.contains(feature), "{feature} in {message}");
    }
    assert!(!mail.join("2.eml").exists(), "one email for the group");
    let features = || -> Vec<String> {
        let mut features: Vec<String> = http(&address, "GET", "/api/v2/alerts", None)
            .1
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|x| x["labels"]["alertname"] == "FeatureDrift" && x["status"]["state"] == "active")
                    .map(|x| x["labels"]["feature"].as_str().unwrap_or("").to_string())
                    .collect()
            })
            .unwrap_or_default();
        features.sort();
        features
    };
    wait_until(Duration::from_secs(30), "both alerts in Alertmanager", || features() == ["amount", "country"]);
}

/// The daemon on a real broker: the drifting stream arrives over Kafka,
/// the email reaches the SMTP server and the alert Alertmanager, while the
/// retraining webhook's receiver is down. The daemon is killed with the
/// webhook still in its outbox; once the receiver is up, the restarted
/// daemon delivers it: every request carries the one idempotency key.
#[test]
fn the_daemon_on_kafka_delivers_email_alertmanager_and_a_webhook_that_survives_a_kill() {
    use crate::notify::Receiver;
    use crate::support::{Broker, flush, send};

    let dir = tempfile::tempdir().unwrap();
    let mail = dir.path().join("mail");
    let (_smtp, smtp_port) = start_smtp(&mail);
    let (_alertmanager, alertmanager) = start_alertmanager(dir.path());
    let hook_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let broker = Broker::start();
    broker.create_topic("predictions", 1);
    broker.create_topic("labels", 1);
    write_amount_drift_rule(dir.path(), "retrain, mail, am");
    let config = dir.path().join("c.yaml");
    std::fs::write(
        &config,
        format!(
            "kafka: {{brokers: \"{}\", group_id: notify}}\n\
             windows: {{size: 5m, allowed_lateness: 0s, label_horizon: 0s}}\n\
             pipeline: {{batch_size: 256, linger: 20ms}}\n\
             models: [{{name: shop, baseline: {}}}]\n\
             rules: [rules.yaml]\n\
             notifiers:\n\
             \x20 retrain: {{type: webhook, url: \"http://127.0.0.1:{hook_port}/retrain\", secret: \"${{HOOK_SECRET}}\"}}\n\
             \x20 mail: {{type: email, smtp: \"smtp://127.0.0.1:{smtp_port}\", tls: none, from: driftwatch@example.com, to: [oncall@example.com]}}\n\
             \x20 am: {{type: alertmanager, url: \"http://{alertmanager}\"}}\n\
             http: {{listen: \"127.0.0.1:0\"}}\n\
             state: {{dir: state}}\n\
             delivery: {{retry_initial: 50ms, retry_max: 500ms, max_attempts: 10000}}\n",
            broker.bootstrap(),
            repo("tests/fixtures/replay_drift/baseline.json").display()
        ),
    )
    .unwrap();
    let start_daemon = |log: &str| {
        Command::new(env!("CARGO_BIN_EXE_driftwatch"))
            .args(["run", "--config", config.to_str().unwrap()])
            .env("HOOK_SECRET", "hmac-s3cret")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join(log)).unwrap())
            .spawn()
            .unwrap()
    };
    let mut first = start_daemon("first.log");
    let producer = broker.producer();
    let events = std::fs::read_to_string(repo("tests/fixtures/replay_drift/live.ndjson")).unwrap();
    for (i, line) in events.lines().enumerate() {
        send(&producer, "predictions", &i.to_string(), line.as_bytes());
    }
    // One event past the last window's end closes it.
    let closer = r#"{"event_id":"closer","model":"shop","timestamp":"2026-11-26T10:20:30.000Z","prediction":0,"features":{"amount":20.0,"tenure":100,"country":"DE"}}"#;
    send(&producer, "predictions", "closer", closer.as_bytes());
    flush(&producer);

    let timeout = Duration::from_secs(90);
    wait_until(timeout, "the email", || mail.join("1.eml").exists());
    let message = std::fs::read_to_string(mail.join("1.eml")).unwrap();
    assert!(message.contains("Subject: [driftwatch] FIRING AmountDrift: shop"), "{message}");
    wait_until(timeout, "the alert in Alertmanager", || {
        http(&alertmanager, "GET", "/api/v2/alerts", None).1.as_array().is_some_and(|a| {
            a.iter().any(|x| x["labels"]["alertname"] == "AmountDrift" && x["labels"]["model"] == "shop")
        })
    });
    // /metrics carries every SPEC §8 name, with data from this stream.
    let address = http_address(&std::fs::read_to_string(dir.path().join("first.log")).unwrap());
    wait_until(timeout, "the metrics", || {
        let text = http_text(&address, "GET", "/metrics", None).1;
        text.contains("driftwatch_consumer_lag{") && text.contains("driftwatch_notifications_total{")
    });
    let text = http_text(&address, "GET", "/metrics", None).1;
    for name in [
        "driftwatch_events_total{",
        "driftwatch_events_invalid_total{",
        "driftwatch_events_late_total",
        "driftwatch_consumer_lag{",
        "driftwatch_windows_closed_total",
        "driftwatch_window_close_seconds_bucket{",
        "driftwatch_notifications_total{",
        "driftwatch_alerts_firing{",
        "driftwatch_feature_drift{",
        "driftwatch_model_performance{",
        "driftwatch_feature_drifted{",
    ] {
        assert!(text.contains(name), "/metrics lacks {name}:\n{text}");
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("driftwatch_events_total{") && l.contains("model=\"shop\"") && l.ends_with(" 2401")),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.starts_with("driftwatch_feature_drifted{")
            && l.contains("feature=\"amount\"")
            && l.ends_with(" 1")),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.starts_with("driftwatch_alerts_firing{")
            && l.contains("alert=\"AmountDrift\"")
            && l.ends_with(" 1")),
        "{text}"
    );

    // The API serves the models and recent windows, and validates queries.
    let (status, body) = http(&address, "GET", "/api/v1/models", None);
    assert_eq!(status, 200);
    assert_eq!(body["models"][0]["name"], "shop");
    assert_eq!(body["models"][0]["latest_window"]["window_start"], "2026-11-26T10:15:00.000Z", "{body}");
    let (status, body) = http(&address, "GET", "/api/v1/windows?model=shop&since=2026-11-26T10:10:00Z", None);
    assert_eq!(status, 200);
    let windows = body["windows"].as_array().unwrap();
    assert!(windows.iter().all(|r| r["window_start"].as_str().unwrap() >= "2026-11-26T10:10"), "{body}");
    assert!(windows.iter().any(|r| r["feature"] == "amount" && r["metric"] == "psi" && r["drifted"] == true));
    let (status, body) = http(&address, "GET", "/api/v1/windows?since=yesterday", None);
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("bad_since")));
    let (status, body) = http(&address, "GET", "/api/v1/windows?colour=red", None);
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("bad_query")));

    let outbox = dir.path().join("state/outbox");
    let queued = || outbox_entries(&outbox);
    wait_until(timeout, "the webhook waiting in the outbox", || queued() == 1);

    // Killed with the webhook pending; it stays in the outbox.
    first.kill().unwrap();
    first.wait().unwrap();
    assert_eq!(queued(), 1);

    let receiver = Receiver::start_on(hook_port);
    let mut second = start_daemon("second.log");
    wait_until(timeout, "the webhook", || receiver.requests().iter().any(|r| r.status == 200));
    wait_until(timeout, "the outbox to empty", || queued() == 0);
    let requests = receiver.requests();
    let keys: std::collections::BTreeSet<String> =
        requests.iter().map(|r| r.header("idempotency-key").unwrap().to_string()).collect();
    assert_eq!(keys.len(), 1, "one idempotency key for the one firing: {requests:#?}");
    let body = &requests[0].body;
    let expected = expected_signature(b"hmac-s3cret", body);
    assert_eq!(requests[0].header("x-driftwatch-signature"), Some(expected.as_str()));
    assert_eq!(requests[0].json()["transition"]["alert"], "AmountDrift");
    let pid = second.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    assert!(second.wait().unwrap().success());
    for log in ["first.log", "second.log"] {
        let text = std::fs::read_to_string(dir.path().join(log)).unwrap();
        assert!(!text.contains("hmac-s3cret"), "the HMAC secret leaked into {log}");
    }
}
