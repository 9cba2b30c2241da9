//! Lanes give the rows of one lane: `replay --lanes 1`, `2` and `3` write
//! byte-identical `window_metrics` and alert transitions, on the drifting
//! fixture split into several files (tumbling and hopping windows) and on
//! generated streams (proptest: out-of-order events, late ones, segments,
//! classes and features each lane meets in its own order, duplicates,
//! type errors). Each lane decodes and aggregates its files with its own
//! dictionaries; the closer merges the partitions' window states in
//! partition order, so nothing depends on which lane read what.

use std::path::{Path, PathBuf};
use std::process::Command;

use proptest::prelude::*;

use crate::properties::{GeneratedEvent, generated_events};
use crate::support::repo;

/// The fixture's predictions dealt over `files` files (a file per
/// partition, out of step with each other in event time) and a label for
/// each, in `dir`.
fn split_fixture(dir: &Path, files: usize) -> (Vec<PathBuf>, PathBuf) {
    let text = std::fs::read_to_string(repo("tests/fixtures/replay_drift/live.ndjson")).unwrap();
    let mut parts = vec![String::new(); files];
    let mut labels = String::new();
    for (i, line) in text.lines().enumerate() {
        let mut event: serde_json::Value = serde_json::from_str(line).unwrap();
        if i % 3 == 0 {
            event["segment"] = serde_json::json!({"channel": if i % 2 == 0 { "web" } else { "mobile" }});
        }
        if i % 7 == 0 {
            event["model_version"] = serde_json::json!("v2");
        }
        // Most go to file 0; the others get every 5th and 7th event.
        let file = if i % 5 == 0 {
            1 % files
        } else if i % 7 == 0 {
            2 % files
        } else {
            0
        };
        parts[file].push_str(&event.to_string());
        parts[file].push('\n');
        let prediction = event["prediction"].as_i64().unwrap();
        let label = if i % 4 == 0 { 1 - prediction } else { prediction };
        labels.push_str(
            &serde_json::json!({"event_id": event["event_id"], "model": "shop", "timestamp": event["timestamp"], "label": label})
                .to_string(),
        );
        labels.push('\n');
    }
    let paths: Vec<PathBuf> = (0..files).map(|k| dir.join(format!("predictions-{k}.ndjson"))).collect();
    for (path, part) in paths.iter().zip(&parts) {
        std::fs::write(path, part).unwrap();
    }
    let label_path = dir.join("labels.ndjson");
    std::fs::write(&label_path, labels).unwrap();
    (paths, label_path)
}

/// `driftwatch replay --lanes <lanes>`: (window_metrics bytes, alerts bytes).
fn replay_cli(dir: &Path, config: &Path, predictions: &[PathBuf], labels: &Path, lanes: usize) -> (Vec<u8>, Vec<u8>) {
    let out = dir.join(format!("rows-{lanes}.ndjson"));
    let alerts = dir.join(format!("alerts-{lanes}.ndjson"));
    let output = Command::new(env!("CARGO_BIN_EXE_driftwatch"))
        .args(["replay", "--config", config.to_str().unwrap(), "--lanes", &lanes.to_string()])
        .arg("--predictions")
        .args(predictions)
        .args(["--labels", labels.to_str().unwrap()])
        .args(["--out", out.to_str().unwrap(), "--alerts", alerts.to_str().unwrap()])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(output.status.success(), "replay --lanes {lanes}: {}", String::from_utf8_lossy(&output.stderr));
    (std::fs::read(out).unwrap(), std::fs::read(alerts).unwrap())
}

#[test]
fn replay_writes_the_same_bytes_with_one_two_or_three_lanes_on_the_drifting_fixture() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let (predictions, labels) = split_fixture(dir, 3);
    std::fs::write(
        dir.join("rules.yaml"),
        "groups:\n  - name: shop\n    rules:\n      - alert: AmountDrift\n        expr: >-\n          \
         model = 'shop' AND segment = '' AND feature = 'amount' AND metric = 'psi' AND drifted\n      \
         - alert: AccuracyDrop\n        expr: model = 'shop' AND segment = '' AND metric = 'accuracy' AND value < 0.8\n",
    )
    .unwrap();
    for windows in [
        "{size: 5m, allowed_lateness: 30s, label_horizon: 10m}",
        "{size: 10m, slide: 5m, allowed_lateness: 30s, label_horizon: 10m}",
    ] {
        let config = dir.join("lanes.yaml");
        std::fs::write(
            &config,
            format!(
                "windows: {windows}\n\
                 pipeline: {{batch_size: 97}}\n\
                 models: [{{name: shop, baseline: {}}}]\n\
                 rules: [rules.yaml]\n",
                repo("tests/fixtures/replay_drift/baseline.json").display()
            ),
        )
        .unwrap();
        let (rows, alerts) = replay_cli(dir, &config, &predictions, &labels, 1);
        let text = String::from_utf8_lossy(&rows);
        assert!(text.lines().count() > 500, "{windows}: rows");
        assert!(text.contains("\"drifted\":true"), "{windows}: the fixture drifts");
        assert!(text.contains("\"segment\":\"channel=web\"") && text.contains("\"model_version\":\"v2\""));
        assert!(!alerts.is_empty(), "{windows}: the drift fires a rule");
        for lanes in [2, 3] {
            let (other_rows, other_alerts) = replay_cli(dir, &config, &predictions, &labels, lanes);
            assert!(other_rows == rows, "{windows}: --lanes {lanes} rows differ from --lanes 1");
            assert!(other_alerts == alerts, "{windows}: --lanes {lanes} alerts differ from --lanes 1");
        }
    }
}

/// The generated stream dealt over `files` files by `assignment` (file of
/// each event), with a feature that only some events carry.
fn write_split(dir: &Path, events: &[GeneratedEvent], assignment: &[u8], files: usize) -> (Vec<PathBuf>, PathBuf) {
    let (predictions, labels) = crate::properties::write_stream(dir, events);
    let text = std::fs::read_to_string(&predictions).unwrap();
    let mut parts = vec![String::new(); files];
    for (n, line) in text.lines().enumerate() {
        let file = usize::from(assignment[n % assignment.len()]) % files;
        // Every 11th event carries a feature the others lack, so each lane
        // meets it at another point.
        let line = if n % 11 == 3 {
            line.replacen("\"features\":{", &format!("\"features\":{{\"extra\":{n},"), 1)
        } else {
            line.to_string()
        };
        parts[file].push_str(&line);
        parts[file].push('\n');
    }
    let paths: Vec<PathBuf> = (0..files).map(|k| dir.join(format!("p{k}.ndjson"))).collect();
    for (path, part) in paths.iter().zip(&parts) {
        std::fs::write(path, part).unwrap();
    }
    (paths, labels)
}

fn replay_rows(
    config: &driftwatch::config::Config,
    predictions: &[PathBuf],
    labels: &Path,
    lanes: usize,
) -> Vec<String> {
    let mut sink = driftwatch::output::MemorySink::default();
    let telemetry = std::sync::Arc::new(driftwatch::telemetry::Telemetry::default());
    driftwatch::drivers::replay::replay_with_lanes(
        config,
        predictions,
        &[labels.to_path_buf()],
        &mut sink,
        telemetry,
        lanes,
    )
    .expect("replay");
    sink.rows.iter().map(|r| format!("{r:?}")).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Generated streams over three files give the same rows, bit for bit
    /// and in the same order, with one, two or three lanes.
    #[test]
    fn generated_streams_give_the_same_rows_with_any_number_of_lanes(
        events in generated_events(),
        assignment in prop::collection::vec(0u8..3, 1..50),
        batch_size in 1usize..40,
        hopping in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (predictions, labels) = write_split(dir.path(), &events, &assignment, 3);
        let windows = if hopping { "{size: 2m, slide: 1m, allowed_lateness: 20s, label_horizon: 3m}" } else { "{size: 1m, allowed_lateness: 20s, label_horizon: 3m}" };
        let yaml = format!(
            "windows: {windows}\n\
             pipeline: {{batch_size: {batch_size}}}\n\
             models: [{{name: shop, baseline: {}}}]\n",
            repo("tests/fixtures/replay_drift/baseline.json").display()
        );
        let config = driftwatch::config::Config::from_yaml_str(&yaml, "lanes.yaml").unwrap();
        let one = replay_rows(&config, &predictions, &labels, 1);
        prop_assert!(!one.is_empty());
        for lanes in [2, 3] {
            let other = replay_rows(&config, &predictions, &labels, lanes);
            prop_assert_eq!(other.len(), one.len(), "--lanes {} row count", lanes);
            for (a, b) in other.iter().zip(&one) {
                prop_assert_eq!(a, b, "--lanes {}", lanes);
            }
        }
    }
}

/// The caps hold over what all lanes met: each lane caps the series it
/// sees, and the closer folds again, in the order one lane would have met
/// them, so the same segments fold into `__other__` and every window
/// counts the same events per series as with one lane (the folded parts
/// are merged rather than added in one pass: values may differ in the
/// last bits).
#[test]
fn the_segment_cap_holds_over_all_lanes_and_folds_what_one_lane_folds() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let text = std::fs::read_to_string(repo("tests/fixtures/replay_drift/live.ndjson")).unwrap();
    let mut parts = vec![String::new(); 3];
    for (i, line) in text.lines().enumerate() {
        let mut event: serde_json::Value = serde_json::from_str(line).unwrap();
        event["segment"] = serde_json::json!({"store": format!("s{}", (i * 7) % 13)});
        parts[i % 3].push_str(&event.to_string());
        parts[i % 3].push('\n');
    }
    let files: Vec<PathBuf> = (0..3).map(|k| dir.join(format!("p{k}.ndjson"))).collect();
    for (path, part) in files.iter().zip(&parts) {
        std::fs::write(path, part).unwrap();
    }
    let config = driftwatch::config::Config::from_yaml_str(
        "windows: {size: 5m}\npipeline: {batch_size: 50, max_segments_per_model: 6}\nmodels: [{name: shop}]\n",
        "caps.yaml",
    )
    .unwrap();
    let counts = |lanes: usize| {
        let mut sink = driftwatch::output::MemorySink::default();
        let telemetry = std::sync::Arc::new(driftwatch::telemetry::Telemetry::default());
        driftwatch::drivers::replay::replay_with_lanes(&config, &files, &[], &mut sink, telemetry, lanes).unwrap();
        sink.rows
            .iter()
            .filter(|r| r.metric == "count" && r.feature.is_none())
            .map(|r| format!("{} {} {}", r.window_start_ms, r.segment, r.value))
            .collect::<Vec<_>>()
    };
    let one = counts(1);
    let segments: std::collections::BTreeSet<&str> = one.iter().map(|r| r.split(' ').nth(1).unwrap()).collect();
    assert!(segments.contains("__other__"), "{segments:?}");
    assert!(segments.len() <= 7, "the cap of 6 and __other__: {segments:?}");
    assert_eq!(counts(3), one);
}
