//! Alert rules end to end: the shipped rules pass `rules check` and their
//! unit tests; broken rules are reported with file and line; a drifting
//! replay writes the expected transitions and audit log; a running daemon
//! reloads its rules on SIGHUP.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::{Broker, flush, http, http_address, repo, send, wait_until};

fn driftwatch(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_driftwatch")).args(args).output().unwrap()
}

const NOTIFIERS: &str = "notifiers:
  retrain-ci: {type: webhook, url: \"http://127.0.0.1:9/retrain\"}
  rollback-ci: {type: webhook, url: \"http://127.0.0.1:9/rollback\"}
  oncall-email: {type: email, smtp: \"smtp://127.0.0.1:25\", from: a@example.com, to: [b@example.com]}
  alertmanager: {type: alertmanager, url: \"http://127.0.0.1:9093\"}
";

#[test]
fn shipped_rules_pass_check_and_their_unit_tests() {
    let config = repo("examples/driftwatch.yaml");
    let output = driftwatch(&["rules", "check", repo("rules").to_str().unwrap(), "--config", config.to_str().unwrap()]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains("13 rules in 4 files: OK"));
    let tests: Vec<PathBuf> = std::fs::read_dir(repo("rules/tests"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    assert_eq!(tests.len(), 4);
    let mut args = vec!["rules".to_string(), "test".to_string()];
    args.extend(tests.iter().map(|p| p.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = driftwatch(&args);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(!stdout.contains("FAIL"), "{stdout}");
}

#[test]
fn rules_check_reports_every_broken_rule_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.yaml");
    std::fs::write(&config, format!("models: [{{name: m}}]\n{NOTIFIERS}")).unwrap();
    let a = dir.path().join("a.yaml");
    std::fs::write(
        &a,
        "groups:
  - name: g
    rules:
      - alert: UnknownColumn
        expr: metric = 'psi' AND nosuch > 1
      - alert: NotBoolean
        expr: value + 1
      - alert: UnknownNotifier
        expr: drifted
        notify: [pager]
      - alert: BadTemplate
        expr: drifted
        annotations: {summary: \"{{ feature \"}
      - alert: Twice
        expr: drifted
      - alert: Twice
        expr: drifted
      - alert: BadQuery
        query: SELECT nosuch FROM window_metrics
",
    )
    .unwrap();
    let b = dir.path().join("b.yaml");
    // An unknown key in one rule does not hide the errors of the others.
    std::fs::write(
        &b,
        "groups:\n  - name: g\n    rules:\n      - alert: X\n        exprr: drifted\n      \
         - alert: Y\n        expr: nosuch > 1\n      - alert: Z\n        expr: drifted\n        notfy: [pager]\n",
    )
    .unwrap();
    let output =
        driftwatch(&["rules", "check", a.to_str().unwrap(), b.to_str().unwrap(), "--config", config.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let (a, b) = (a.display().to_string(), b.display().to_string());
    for expected in [
        format!("{a}:5: UnknownColumn: expr: Schema error: No field named nosuch"),
        format!("{a}:7: NotBoolean: expr: must be a boolean condition"),
        format!("{a}:10: UnknownNotifier: unknown notifier \"pager\""),
        format!("{a}:13: BadTemplate: annotations.summary: template error"),
        format!("{a}:16: duplicate alert name \"Twice\" (first defined at {a}:14)"),
        format!("{a}:19: BadQuery: query:"),
        format!("{b}:5: unknown key `exprr` in a rule; expected one of alert, expr, query"),
        format!("{b}:7: Y: expr: Schema error: No field named nosuch"),
        format!("{b}:10: unknown key `notfy` in a rule"),
    ] {
        assert!(stderr.contains(&expected), "missing {expected:?} in:\n{stderr}");
    }
    assert!(stderr.contains("9 errors"), "{stderr}");
}

/// What used to pass `rules check` and then never match, or render as
/// nothing, at run time: metric names no window produces, text in double
/// quotes (a column name in SQL), unknown template variables and filters.
#[test]
fn rules_check_catches_what_would_fail_at_run_time() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("r.yaml");
    std::fs::write(
        &rules,
        "groups:
  - name: g
    rules:
      - alert: Misspelt
        expr: metric = 'accuracyy' AND value < 0.9
      - alert: UpperCase
        expr: metric IN ('PSI', 'ks') AND drifted
      - alert: DoubleQuoted
        expr: metric = \"psi\" AND drifted
      - alert: Templates
        expr: metric = 'psi' AND drifted
        annotations: {summary: \"{{ featur }} on {{ model }}: {{ value | rnd(3) }}\"}
      - alert: QueryMetric
        query: SELECT model, max(value) AS worst FROM window_metrics WHERE metric = 'accurcy' GROUP BY model
        annotations: {summary: \"{{ model }} at {{ worst }} (feature {{ feature }})\"}
      - alert: Fine
        expr: metric = 'psi' AND drifted
        annotations: {summary: \"{{ feature | default('?') | upper }} {% for x in range(2) %}{{ loop.index }}{% endfor %}\"}
",
    )
    .unwrap();
    let output = driftwatch(&["rules", "check", rules.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let file = rules.display().to_string();
    for expected in [
        format!(
            "{file}:5: Misspelt: expr: no window produces the metric 'accuracyy', so this comparison never matches; did you mean 'accuracy'?"
        ),
        format!(
            "{file}:7: UpperCase: expr: no window produces the metric 'PSI' (metric names are lower case), so this comparison never matches; did you mean 'psi'?"
        ),
        format!(
            "{file}:9: DoubleQuoted: expr: \"psi\" is a column name in SQL (double quotes name columns); for the text, use single quotes: 'psi'"
        ),
        format!(
            "{file}:12: Templates: annotations.summary: unknown variable `featur`: it would render as nothing; did you mean `feature`?"
        ),
        format!("{file}:12: Templates: annotations.summary: unknown filter `rnd`; did you mean `round`?"),
        format!("{file}:14: QueryMetric: query: no window produces the metric 'accurcy'"),
        format!(
            "{file}:15: QueryMetric: annotations.summary: unknown variable `feature`: it would render as nothing (the variables are model, worst)"
        ),
    ] {
        assert!(stderr.contains(&expected), "missing {expected:?} in:\n{stderr}");
    }
    assert!(!stderr.contains("Fine"), "{stderr}");
    assert!(stderr.contains("7 errors"), "{stderr}");
}

#[test]
fn rules_test_shows_a_readable_diff_on_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("r.yaml"),
        "groups:\n  - name: g\n    rules:\n      - alert: Slow\n        expr: metric = 'latency_p95' AND value > 150\n        for: 2\n",
    )
    .unwrap();
    let test = dir.path().join("t.yaml");
    std::fs::write(
        &test,
        "rule_files: [r.yaml]
tests:
  - name: \"fires at once (wrong: it waits for two windows)\"
    input:
      - {model: m, metric: latency_p95, start: \"2026-11-26T10:00:00Z\", values: [200, 200]}
    expect:
      - {at: \"2026-11-26T10:05:00Z\", alert: Slow, state: firing}
",
    )
    .unwrap();
    let output = driftwatch(&["rules", "test", test.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    for expected in [
        "FAIL",
        "fires at once (wrong: it waits for two windows)",
        "expected:\n    at 2026-11-26T10:05:00Z Slow firing",
        "got:\n    at 2026-11-26T10:05:00.000Z Slow pending model=m\n    at 2026-11-26T10:10:00.000Z Slow firing model=m",
        "0 passed, 1 failed",
    ] {
        assert!(stdout.contains(expected), "missing {expected:?} in:\n{stdout}");
    }
    // A template that renders other than expected: the diff shows what it
    // rendered.
    std::fs::write(
        dir.path().join("r.yaml"),
        "groups:\n  - name: g\n    rules:\n      - alert: Slow\n        expr: metric = 'latency_p95' AND value > 150\n        \
         labels: {severity: page}\n        annotations: {summary: \"p95 {{ value | round(1) }} ms\"}\n",
    )
    .unwrap();
    std::fs::write(
        &test,
        "rule_files: [r.yaml]
tests:
  - name: the summary
    input:
      - {model: m, metric: latency_p95, start: \"2026-11-26T10:00:00Z\", values: [200]}
    expect:
      - {at: \"2026-11-26T10:05:00Z\", alert: Slow, state: firing, annotations: {summary: \"p95 200 ms\"}}
",
    )
    .unwrap();
    let output = driftwatch(&["rules", "test", test.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let expected = "got:\n    at 2026-11-26T10:05:00.000Z Slow firing model=m labels.severity=\"page\" annotations.summary=\"p95 200.0 ms\"";
    assert!(stdout.contains(expected), "missing {expected:?} in:\n{stdout}");
    // A broken rule file under test is reported with its file and line.
    std::fs::write(
        dir.path().join("r.yaml"),
        "groups:\n  - name: g\n    rules:\n      - alert: Slow\n        expr: latency > 1\n",
    )
    .unwrap();
    let output = driftwatch(&["rules", "test", test.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let expected =
        format!("{}:5: Slow: expr: Schema error: No field named latency", dir.path().join("r.yaml").display());
    assert!(stderr.contains(&expected), "missing {expected:?} in:\n{stderr}");
}

#[test]
fn a_drifting_replay_with_the_shipped_rules_writes_transitions_and_an_audit_trail() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = |name: &str| repo("tests/fixtures/replay_drift").join(name);
    let config = dir.path().join("c.yaml");
    let audit = dir.path().join("audit.ndjson");
    let alerts = dir.path().join("alerts.ndjson");
    std::fs::write(
        &config,
        format!(
            "windows: {{size: 5m}}\nmodels: [{{name: shop, baseline: {}}}]\nrules: [\"{}/*.yaml\"]\n{NOTIFIERS}alerting: {{audit_log: {}}}\n",
            fixture("baseline.json").display(),
            repo("rules").display(),
            audit.display()
        ),
    )
    .unwrap();
    let output = driftwatch(&[
        "replay",
        "--config",
        config.to_str().unwrap(),
        "--predictions",
        fixture("live.ndjson").to_str().unwrap(),
        "--out",
        dir.path().join("rows.ndjson").to_str().unwrap(),
        "--alerts",
        alerts.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let read = |path: &Path| -> Vec<Value> {
        std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let transitions = read(&alerts);
    let key = |t: &Value| {
        format!(
            "{} {} {} {}",
            t["evaluation_time"].as_str().unwrap(),
            t["alert"].as_str().unwrap(),
            t["state"].as_str().unwrap(),
            t["feature"].as_str().unwrap_or("-")
        )
    };
    let drift: Vec<String> = transitions.iter().filter(|t| t["alert"] != "LabelCoverageLow").map(key).collect();
    // The drift starts at 10:10: its first window ends at 10:15 (pending),
    // the second at 10:20 (firing, `for: 2`). Nothing drifts before.
    assert_eq!(
        drift,
        [
            "2026-11-26T10:15:00.000Z FeatureDrift pending amount",
            "2026-11-26T10:15:00.000Z FeatureDrift pending country",
            "2026-11-26T10:15:00.000Z UnseenValues pending country",
            "2026-11-26T10:20:00.000Z FeatureDrift firing amount",
            "2026-11-26T10:20:00.000Z FeatureDrift firing country",
            "2026-11-26T10:20:00.000Z UnseenValues pending amount",
            "2026-11-26T10:20:00.000Z UnseenValues firing country",
        ]
    );
    let firing = transitions.iter().find(|t| t["alert"] == "FeatureDrift" && t["state"] == "firing").unwrap();
    assert_eq!(firing["notify"], serde_json::json!(["oncall-email", "alertmanager"]));
    assert_eq!(firing["labels"]["severity"], "warning");
    assert!(
        firing["annotations"]["summary"].as_str().unwrap().starts_with("amount drifted on shop: PSI 0.49"),
        "{firing}"
    );
    // No labels were replayed, so coverage is 0: that alert is right too.
    assert!(transitions.iter().any(|t| t["alert"] == "LabelCoverageLow" && t["state"] == "firing"));

    // The audit log: one line per transition, with the rule's file, line
    // and hash, the evidence rows and the baseline's training data.
    let lines = read(&audit);
    assert_eq!(lines.len(), transitions.len());
    let expected_sha = {
        let baseline: Value =
            serde_json::from_str(&std::fs::read_to_string(fixture("baseline.json")).unwrap()).unwrap();
        baseline["source"]["files"][0]["sha256"].clone()
    };
    for (line, transition) in lines.iter().zip(&transitions) {
        assert_eq!(line["fingerprint"], transition["fingerprint"]);
        assert_eq!(line["state"], transition["state"]);
        let file = line["rule"]["file"].as_str().unwrap();
        assert!(file.starts_with(repo("rules").to_str().unwrap()), "{file}");
        assert!(line["rule"]["line"].as_u64().unwrap() > 0);
        assert_eq!(line["rule"]["sha256"].as_str().unwrap().len(), 64);
        assert!(!line["evidence"].as_array().unwrap().is_empty(), "{line}");
        assert_eq!(line["baseline"]["source"]["files"][0]["sha256"], expected_sha);
        assert_eq!(line["notifications"], transition["notify"]);
    }
    let evidence =
        &lines.iter().find(|l| l["alert"] == "FeatureDrift" && l["state"] == "firing").unwrap()["evidence"][0];
    assert_eq!((evidence["metric"].as_str(), evidence["drifted"].as_bool()), (Some("psi"), Some(true)));
}

/// A running daemon reloads its rules on SIGHUP: a valid new set takes
/// effect and the unchanged rule keeps its state; an invalid set is
/// rejected and the previous rules go on working.
#[test]
fn a_running_daemon_reloads_rules_on_sighup() {
    let broker = Broker::start();
    broker.create_topic("predictions", 1);
    broker.create_topic("labels", 1);
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yaml");
    let audit = dir.path().join("audit.ndjson");
    let busy = "      - alert: Busy\n        expr: metric = 'count' AND segment = '' AND value >= 2\n";
    std::fs::write(&rules, format!("groups:\n  - name: g\n    rules:\n{busy}")).unwrap();
    let config = dir.path().join("c.yaml");
    std::fs::write(
        &config,
        format!(
            "kafka: {{brokers: \"{}\", group_id: reload}}\n\
             windows: {{size: 10s, allowed_lateness: 0s, label_horizon: 0s}}\n\
             pipeline: {{batch_size: 64, linger: 20ms}}\n\
             models: [{{name: m}}]\n\
             rules: [rules.yaml]\n\
             http: {{listen: \"127.0.0.1:0\", token: \"${{RELOAD_TOKEN}}\"}}\n\
             alerting: {{audit_log: {}}}\n",
            broker.bootstrap(),
            audit.display()
        ),
    )
    .unwrap();
    let log = dir.path().join("daemon.log");
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_driftwatch"))
        .args(["run", "--config", config.to_str().unwrap()])
        .env("NO_COLOR", "1")
        .env("RELOAD_TOKEN", "s3cret")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let producer = broker.producer();
    let t0 = 1_795_687_200_000i64;
    let mut sent = 0;
    let mut produce = |offsets_s: &[i64]| {
        for offset in offsets_s {
            sent += 1;
            let event = format!(
                "{{\"event_id\":\"e{sent}\",\"model\":\"m\",\"timestamp\":{},\"prediction\":1}}",
                t0 + offset * 1000
            );
            send(&producer, "predictions", "k", event.as_bytes());
        }
        flush(&producer);
    };
    let audit_lines = || -> Vec<(String, String)> {
        std::fs::read_to_string(&audit)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                (v["alert"].as_str().unwrap().to_string(), v["state"].as_str().unwrap().to_string())
            })
            .collect()
    };
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    let timeout = Duration::from_secs(60);

    // Window [0s, 10s) with two events closes when the event at 11s arrives.
    produce(&[1, 2, 11]);
    wait_until(timeout, "Busy to fire", || audit_lines() == [("Busy".into(), "firing".into())]);

    // Reload with Busy unchanged and a new rule.
    let also = "      - alert: AlsoBusy\n        expr: metric = 'count' AND segment = '' AND value >= 2\n";
    std::fs::write(&rules, format!("groups:\n  - name: g\n    rules:\n{busy}{also}")).unwrap();
    let pid = daemon.id().to_string();
    assert!(Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    wait_until(timeout, "the reload", || log_text().contains("rules reloaded"));
    // Window [10s, 20s) gets two events: AlsoBusy fires; Busy, whose state
    // survived the reload, stays firing without a new transition.
    produce(&[12, 21]);
    wait_until(timeout, "AlsoBusy to fire", || audit_lines().len() >= 2);
    assert_eq!(audit_lines(), [("Busy".into(), "firing".into()), ("AlsoBusy".into(), "firing".into())]);

    // An invalid rule file is rejected; the previous rules stay in force.
    std::fs::write(&rules, "groups:\n  - name: g\n    rules:\n      - alert: Broken\n        expr: nosuch > 1\n")
        .unwrap();
    assert!(Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    wait_until(timeout, "the rejected reload", || log_text().contains("reload rejected: the new rules were rejected"));
    assert!(log_text().contains("No field named nosuch"), "{}", log_text());
    // Window [20s, 30s) has one event: both old rules resolve.
    produce(&[31]);
    wait_until(timeout, "both to resolve", || audit_lines().len() >= 4);
    let lines = audit_lines();
    assert_eq!(lines[2..].iter().filter(|(_, state)| state == "resolved").count(), 2, "{lines:?}");
    assert!(daemon.try_wait().unwrap().is_none(), "the daemon is still running");

    // The same over HTTP: POST /-/reload needs the bearer token; an invalid
    // set is refused with its errors (422), a valid one is loaded.
    let address = http_address(&log_text());
    let reload = |token: Option<&str>| http(&address, "POST", "/-/reload", token);
    assert_eq!(reload(None).0, 401);
    assert_eq!(reload(Some("wrong")).0, 401);
    let (status, body) = reload(Some("s3cret"));
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "invalid_rules");
    assert!(body["error"]["details"][0].as_str().unwrap().contains("No field named nosuch"), "{body}");
    std::fs::write(&rules, format!("groups:\n  - name: g\n    rules:\n{busy}")).unwrap();
    let (status, body) = reload(Some("s3cret"));
    assert_eq!((status, &body["rules"]), (200, &serde_json::json!(1)), "{body}");
    let (status, body) = http(&address, "GET", "/api/v1/rules", None);
    assert_eq!(status, 200);
    assert_eq!(body["rules"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body["rules"][0]["alert"], "Busy");
    // Window [30s, 40s) with two events: Busy fires again and is listed.
    produce(&[32, 33, 41]);
    wait_until(timeout, "Busy to fire again", || audit_lines().len() >= 5);
    wait_until(timeout, "the alert in /api/v1/alerts", || {
        let (_, body) = http(&address, "GET", "/api/v1/alerts", None);
        body["alerts"].as_array().is_some_and(|a| a.len() == 1 && a[0]["alert"] == "Busy" && a[0]["state"] == "firing")
    });
    assert_eq!(http(&address, "GET", "/readyz", None).0, 200);
    assert_eq!(http(&address, "GET", "/nope", None).0, 404);
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let status = daemon.wait().unwrap();
    assert!(status.success(), "{status:?}\n{}", log_text());
}
