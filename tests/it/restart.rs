//! Restarts under a changed config, against a real broker (Tansu): the
//! daemon is stopped, its model's baseline added, rebuilt with other bins
//! and removed between runs, and it must resume from its checkpoint and
//! keep producing rows each time (it used to exit 101 on the first event
//! after gaining a baseline). And alert state that changes while no event
//! flows (a `query:` rule firing on silence) must reach a checkpoint.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::support::{Broker, Killed, flush, log_text, repo, send, start_daemon, wait_until};

const TIMEOUT: Duration = Duration::from_secs(90);

fn write_config(dir: &Path, broker: &str, baseline: Option<&Path>, extra: &str) -> PathBuf {
    let baseline = baseline.map(|b| format!(", baseline: {}", b.display())).unwrap_or_default();
    let path = dir.join("daemon.yaml");
    std::fs::write(
        &path,
        format!(
            "kafka: {{brokers: \"{broker}\", group_id: restart}}\n\
             state: {{dir: state, checkpoint_interval: 300ms}}\n\
             output: {{window_metrics: out.ndjson}}\n\
             http: {{listen: \"127.0.0.1:0\"}}\n\
             windows: {{size: 5m, allowed_lateness: 0s, label_horizon: 10m}}\n\
             pipeline: {{batch_size: 100, linger: 20ms}}\n\
             models: [{{name: shop{baseline}}}]\n\
             {extra}"
        ),
    )
    .unwrap();
    path
}

/// Panics with the daemon's log if it has exited.
fn assert_running(daemon: &mut Killed, dir: &Path, log: &str) {
    if let Some(status) = daemon.0.try_wait().unwrap() {
        panic!("the daemon exited ({status}):\n{}", log_text(dir, log));
    }
}

fn stop(mut daemon: Killed, dir: &Path, log: &str) {
    let pid = daemon.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    assert!(daemon.0.wait().unwrap().success(), "clean exit on SIGTERM:\n{}", log_text(dir, log));
}

/// The newest checkpoint, decoded.
fn newest_checkpoint(dir: &Path) -> Option<driftwatch::checkpoint::Checkpoint> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("state/checkpoints"))
        .ok()?
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "ckpt"))
        .collect();
    files.sort();
    let newest = files.pop()?;
    driftwatch::checkpoint::decode(&newest, &std::fs::read(&newest).ok()?).ok()
}

/// The next offset of `predictions` partition 0 the newest checkpoint covers.
fn checkpointed(dir: &Path) -> i64 {
    newest_checkpoint(dir).and_then(|c| c.offsets.get("predictions")?.get(&0).copied()).unwrap_or(0)
}

/// `window_metrics` rows of the window starting at `start` (RFC 3339).
fn rows_of_window(dir: &Path, start: &str) -> Vec<Value> {
    std::fs::read_to_string(dir.join("out.ndjson"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["window_start"] == start)
        .collect()
}

/// The fixture's baseline with every other bin edge of `amount` and
/// `score` (a rebuilt baseline with fewer bins).
fn rebinned_baseline(dir: &Path) -> PathBuf {
    let fixture = repo("tests/fixtures/replay_drift/baseline.json");
    let mut baseline: Value = serde_json::from_slice(&std::fs::read(fixture).unwrap()).unwrap();
    for pointer in ["/features/amount", "/score"] {
        let profile = baseline.pointer_mut(pointer).unwrap();
        let edges: Vec<f64> = serde_json::from_value(profile["bin_edges"].clone()).unwrap();
        let proportions: Vec<f64> = serde_json::from_value(profile["bin_proportions"].clone()).unwrap();
        profile["bin_edges"] = serde_json::json!(edges.iter().skip(1).step_by(2).collect::<Vec<_>>());
        profile["bin_proportions"] =
            serde_json::json!(proportions.chunks(2).map(|p| p.iter().sum::<f64>()).collect::<Vec<_>>());
    }
    let path = dir.join("rebinned.json");
    std::fs::write(&path, serde_json::to_vec(&baseline).unwrap()).unwrap();
    path
}

#[test]
fn a_daemon_restarted_with_a_changed_baseline_resumes_and_keeps_producing_rows() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let broker = Broker::start();
    broker.create_topic("predictions", 1);
    broker.create_topic("labels", 1);
    let producer = broker.producer();
    // The fixture: 2,400 predictions over 20 minutes from 10:00 (~600 per
    // five-minute window), each labelled.
    let events: Vec<Value> = std::fs::read_to_string(repo("tests/fixtures/replay_drift/live.ndjson"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let produce = |range: std::ops::Range<usize>| {
        for event in &events[range] {
            send(&producer, "predictions", "k", event.to_string().as_bytes());
            let label = serde_json::json!({
                "event_id": event["event_id"], "model": "shop", "timestamp": event["timestamp"],
                "label": event["prediction"],
            });
            send(&producer, "labels", "k", label.to_string().as_bytes());
        }
        flush(&producer);
    };
    let fixture = repo("tests/fixtures/replay_drift/baseline.json");
    let rebinned = rebinned_baseline(dir);
    // Each run: the baseline it starts with, the events it gets, and the
    // window those events close (its rows must come out).
    let runs: [(&str, Option<&Path>, std::ops::Range<usize>, &str); 4] = [
        ("no baseline", None, 0..300, ""),
        ("baseline added", Some(&fixture), 300..900, "2026-11-26T10:00:00.000Z"),
        ("rebuilt with other bins", Some(&rebinned), 900..1500, "2026-11-26T10:05:00.000Z"),
        ("baseline removed", None, 1500..2100, "2026-11-26T10:10:00.000Z"),
    ];
    for (i, (what, baseline, range, closed)) in runs.into_iter().enumerate() {
        let log = format!("run{i}.log");
        let config = write_config(dir, &broker.bootstrap(), baseline, "");
        let mut daemon = start_daemon(dir, &config, &log);
        let end = range.end as i64;
        produce(range);
        wait_until(TIMEOUT, &format!("{what}: the events processed and checkpointed"), || {
            assert_running(&mut daemon, dir, &log);
            checkpointed(dir) == end
        });
        if !closed.is_empty() {
            wait_until(TIMEOUT, &format!("{what}: the rows of the window from {closed}"), || {
                assert_running(&mut daemon, dir, &log);
                rows_of_window(dir, closed).iter().any(|r| r["metric"] == "count" && r["feature"].is_null())
            });
            let rows = rows_of_window(dir, closed);
            let psi = rows.iter().any(|r| r["metric"] == "psi" && r["feature"] == "amount" && r["segment"] == "");
            assert_eq!(psi, baseline.is_some(), "{what}: drift rows follow the configured baseline");
            let count = rows.iter().find(|r| r["metric"] == "count" && r["feature"].is_null()).unwrap();
            assert!(count["value"].as_f64().unwrap() >= 500.0, "{what}: the window kept its events: {count}");
        }
        if i > 0 {
            let text = log_text(dir, &log);
            assert!(text.contains("restored from checkpoint"), "{what}:\n{text}");
            assert!(text.contains("baseline changed since the checkpoint"), "{what}: logged:\n{text}");
        }
        stop(daemon, dir, &log);
    }
}

#[test]
fn a_query_rule_firing_while_no_event_flows_is_checkpointed() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let broker = Broker::start();
    broker.create_topic("predictions", 1);
    broker.create_topic("labels", 1);
    std::fs::write(
        dir.join("rules.yaml"),
        "groups:\n  - name: g\n    rules:\n      - alert: Silence\n        \
         query: SELECT 'shop' AS model FROM (SELECT count(*) AS n FROM window_metrics) AS t WHERE n = 0\n",
    )
    .unwrap();
    let config =
        write_config(dir, &broker.bootstrap(), None, "rules: [rules.yaml]\nalerting: {evaluation_interval: 200ms}\n");
    let log = "daemon.log";
    let mut daemon = start_daemon(dir, &config, log);
    wait_until(TIMEOUT, "the silence alert firing in the audit log", || {
        assert_running(&mut daemon, dir, log);
        std::fs::read_to_string(dir.join("state/audit.ndjson"))
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains("\"Silence\"") && l.contains("\"firing\""))
    });
    // No event arrived, yet the firing instance must be in a checkpoint
    // while the daemon runs: a crash now must not make it fire again.
    wait_until(Duration::from_secs(20), "a checkpoint holding the firing alert", || {
        assert_running(&mut daemon, dir, log);
        newest_checkpoint(dir).and_then(|c| c.alerts).is_some_and(|alerts| {
            alerts.instance_states().iter().any(|(rule, state)| *rule == "Silence" && *state == "firing")
        })
    });
    drop(daemon);
}

/// The identity of a served row (model, version, segment, window, feature, metric).
fn row_identity(row: &Value) -> String {
    ["model", "model_version", "segment", "window_start", "window_end", "feature", "metric"]
        .iter()
        .map(|k| row[k].to_string())
        .collect::<Vec<_>>()
        .join("|")
}

/// The rows `/api/v1/windows?since=` serves.
fn served_rows(address: &str) -> Vec<Value> {
    let (status, body) = crate::support::http(address, "GET", "/api/v1/windows?since=2026-11-26T00:00:00Z", None);
    assert_eq!(status, 200, "{body}");
    body["windows"].as_array().unwrap().clone()
}

fn api_address(daemon: &mut Killed, dir: &Path, log: &str) -> String {
    wait_until(TIMEOUT, "the HTTP API listening", || {
        assert_running(daemon, dir, log);
        log_text(dir, log).contains("HTTP API listening")
    });
    crate::support::http_address(&log_text(dir, log))
}

#[test]
fn a_restarted_daemon_serves_the_windows_closed_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let broker = Broker::start();
    broker.create_topic("predictions", 1);
    broker.create_topic("labels", 1);
    let producer = broker.producer();
    let events: Vec<String> = std::fs::read_to_string(repo("tests/fixtures/replay_drift/live.ndjson"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let produce = |range: std::ops::Range<usize>| {
        for event in &events[range] {
            send(&producer, "predictions", "k", event.as_bytes());
        }
        flush(&producer);
    };
    let fixture = repo("tests/fixtures/replay_drift/baseline.json");
    let config = write_config(dir, &broker.bootstrap(), Some(&fixture), "");
    let first_window = "2026-11-26T10:00:00.000Z";

    // First run: the window from 10:00 closes.
    let mut daemon = start_daemon(dir, &config, "run0.log");
    let address = api_address(&mut daemon, dir, "run0.log");
    produce(0..900);
    wait_until(TIMEOUT, "the events processed and checkpointed", || {
        assert_running(&mut daemon, dir, "run0.log");
        checkpointed(dir) == 900
    });
    wait_until(TIMEOUT, "the rows of the first window served", || {
        served_rows(&address).iter().any(|r| r["window_start"] == first_window && r["metric"] == "count")
    });
    let before = served_rows(&address);
    let (_, page_before) = crate::support::http_text(&address, "GET", "/", None);
    let shown = format!("Drift in the window {first_window}");
    assert!(page_before.contains(&shown), "{page_before}");
    stop(daemon, dir, "run0.log");

    // Second run: before any event arrives, the same rows are served and
    // the status page shows the window closed before the restart.
    let mut daemon = start_daemon(dir, &config, "run1.log");
    let address = api_address(&mut daemon, dir, "run1.log");
    assert_eq!(served_rows(&address), before, "the rows closed before the restart");
    let (status, page) = crate::support::http_text(&address, "GET", "/", None);
    assert_eq!(status, 200);
    assert!(page.contains(&shown), "{page}");
    assert!(!page.contains("No window has closed yet"), "{page}");

    // New windows add to them; none is served twice.
    produce(900..1500);
    let second_window = "2026-11-26T10:05:00.000Z";
    wait_until(TIMEOUT, "the rows of the second window served", || {
        assert_running(&mut daemon, dir, "run1.log");
        served_rows(&address).iter().any(|r| r["window_start"] == second_window && r["metric"] == "count")
    });
    let after = served_rows(&address);
    assert_eq!(after[..before.len()], before[..]);
    let mut identities: Vec<String> = after.iter().map(row_identity).collect();
    identities.sort();
    identities.dedup();
    assert_eq!(identities.len(), after.len(), "a row served twice");
    // The API serves exactly what the output holds.
    let output: Vec<Value> = std::fs::read_to_string(dir.join("out.ndjson"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(after.len(), output.len());
    stop(daemon, dir, "run1.log");
}
