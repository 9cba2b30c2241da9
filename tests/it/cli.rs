//! The `driftwatch` binary: exit codes and the commands' visible behaviour.

use std::path::Path;
use std::process::Command;

fn driftwatch() -> Command {
    Command::new(env!("CARGO_BIN_EXE_driftwatch"))
}

fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name).display().to_string()
}

#[test]
fn replay_writes_window_metrics_and_summary() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rows.ndjson");
    let output = driftwatch()
        .args([
            "replay",
            "--config",
            &fixture("stats/config.yaml"),
            "--predictions",
            &fixture("stats/predictions.ndjson"),
        ])
        .args(["--labels", &fixture("stats/labels.ndjson"), "--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("replayed 3158 predictions"), "{stderr}");
    let rows = std::fs::read_to_string(&out).unwrap();
    assert!(rows.lines().count() > 500);
    for line in rows.lines() {
        let row: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(row["metric"].is_string() && row["value"].is_number());
    }
}

#[test]
fn bad_config_exits_1_naming_the_problem_and_usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.yaml");
    std::fs::write(&config, "models:\n  - name: fraud\n    colour: blue\n").unwrap();
    let output = driftwatch().args(["config", "check", "--config", config.to_str().unwrap()]).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("colour") && stderr.contains("line 3"), "{stderr}");

    let output = driftwatch().args(["replay", "--no-such-flag"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn config_check_prints_the_resolved_config_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.yaml");
    std::fs::write(
        &config,
        "kafka:\n  brokers: localhost:9092\n  options: {sasl.password: \"${DW_TEST_SASL_SECRET}\"}\nmodels: [{name: fraud}]\n",
    )
    .unwrap();
    let output = driftwatch()
        .env("DW_TEST_SASL_SECRET", "hunter2-very-secret")
        .args(["config", "check", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!stdout.contains("hunter2"), "{stdout}");
    assert!(stdout.contains("label_horizon") && stdout.contains("fraud"), "{stdout}");
}

#[test]
fn simulate_to_files_then_replay_detects_nothing_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sim.ndjson");
    let status = driftwatch()
        .args(["simulate", "--out", out.to_str().unwrap(), "--rate", "200", "--duration", "5m", "--drift-at", "2m"])
        .status()
        .unwrap();
    assert!(status.success());
    let labels = dir.path().join("sim.labels.ndjson");
    assert!(labels.is_file());
    let config = dir.path().join("c.yaml");
    std::fs::write(&config, "windows: {size: 1m}\nmodels: [{name: fraud}]\n").unwrap();
    let output = driftwatch()
        .args(["replay", "--config", config.to_str().unwrap(), "--predictions", out.to_str().unwrap()])
        .args(["--labels", labels.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("replayed 60000 predictions") && stderr.contains("(0 invalid)"), "{stderr}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    // Accuracy falls after the drift injected at minute 2.
    let accuracy: Vec<(String, f64)> = stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["metric"] == "accuracy" && r["segment"] == "")
        .map(|r| (r["window_start"].as_str().unwrap().to_string(), r["value"].as_f64().unwrap()))
        .collect();
    assert_eq!(accuracy.len(), 5, "{accuracy:?}");
    assert!(accuracy[0].1 > 0.8 && accuracy[4].1 < 0.75, "{accuracy:?}");
}

/// One rule in one file is "1 rule in 1 file", one error "1 error".
#[test]
fn counts_of_one_are_singular() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yaml");
    let rule = "groups:\n  - name: g\n    rules:\n      - alert: Busy\n        expr: metric = 'count'\n";
    std::fs::write(&rules, rule).unwrap();
    let output = driftwatch().args(["rules", "check", rules.to_str().unwrap()]).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success() && stdout.contains("1 rule in 1 file: OK"), "{stdout}");
    std::fs::write(&rules, rule.replace("metric = 'count'", "nosuch > 1")).unwrap();
    let output = driftwatch().args(["rules", "check", rules.to_str().unwrap()]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.lines().last() == Some("1 error"), "{stderr}");
}

/// An invalid event's log line names the pointer the config maps the
/// field to (`/request_id`), not only the field; and a log written to a
/// file or pipe (not a terminal) has no ANSI colour codes, even without
/// `NO_COLOR`.
#[test]
fn invalid_events_name_the_configured_pointer_and_piped_logs_have_no_colours() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.yaml");
    std::fs::write(&config, "models: [{name: m, fields: {event_id: /request_id}}]\n").unwrap();
    let predictions = dir.path().join("p.ndjson");
    std::fs::write(
        &predictions,
        "{\"request_id\":\"r1\",\"model\":\"m\",\"timestamp\":1795687200000,\"prediction\":1}\n\
         {\"event_id\":\"e2\",\"model\":\"m\",\"timestamp\":1795687201000,\"prediction\":1}\n",
    )
    .unwrap();
    let output = driftwatch()
        .args(["replay", "--config", config.to_str().unwrap(), "--predictions", predictions.to_str().unwrap()])
        .env_remove("NO_COLOR")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("field `event_id` at `/request_id`: missing field"), "{stderr}");
    assert!(stderr.contains("replayed 1 prediction and 0 labels (1 invalid)"), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "no colour codes off a terminal: {stderr:?}");
}
