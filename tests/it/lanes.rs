//! Lanes give the rows of one lane: `replay --lanes 1`, `2` and `3` write
//! byte-identical `window_metrics` and alert transitions, on the drifting
//! fixture split into several files (tumbling and hopping windows) and on
//! generated streams (proptest: out-of-order events, late ones, segments,
//! classes and features each lane meets in its own order, duplicates,
//! type errors). Each lane decodes and aggregates its files with its own
//! dictionaries; the closer merges the partitions' window states in
//! partition order, so nothing depends on which lane read what. The
//! daemon's closer, with one lane or three, gives the rows of the engine
//! aggregating in-line.

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

/// The daemon's path: the fixture (segments, versions, labels, a few
/// invalid events) on three predictions partitions and a labels partition,
/// cut into micro-batches as a consumer hands them over, through the
/// loop's closer with one and with three lanes, gives the rows of the
/// engine aggregating in-line (the single-threaded daemon), to the last
/// bit, on hopping windows; and the same dead letters.
#[test]
fn the_daemons_closer_gives_the_in_line_rows_with_any_number_of_lanes() {
    use driftwatch::config::Config;
    use driftwatch::daemon::closer::{Closer, Finished};
    use driftwatch::daemon::lanes::Lanes;
    use driftwatch::output::MemorySink;
    use driftwatch::pipeline::Pipeline;
    use driftwatch::sources::kafka::{SourceBatch, Stream};
    use driftwatch::telemetry::Telemetry;
    use std::sync::Arc;
    use std::time::Instant;

    let dir = tempfile::tempdir().unwrap();
    let (files, labels) = split_fixture(dir.path(), 3);
    // (stream, partition, offset, payload), in the order a consumer reads
    // them: 40 messages of each partition a batch.
    let mut streams: Vec<(Stream, i32, Vec<Vec<u8>>)> = files
        .iter()
        .enumerate()
        .map(|(p, f)| {
            let mut lines: Vec<Vec<u8>> =
                std::fs::read(f).unwrap().split(|b| *b == b'\n').map(<[u8]>::to_vec).collect();
            lines.retain(|l| !l.is_empty());
            if p == 1 {
                lines.insert(3, b"{not json".to_vec());
                lines.insert(9, br#"{"event_id":"x","model":"shop"}"#.to_vec());
            }
            (Stream::Predictions, p as i32, lines)
        })
        .collect();
    let label_lines: Vec<Vec<u8>> =
        std::fs::read(&labels).unwrap().split(|b| *b == b'\n').filter(|l| !l.is_empty()).map(<[u8]>::to_vec).collect();
    streams.push((Stream::Labels, 0, label_lines));
    type Message = (Stream, i32, i64, Vec<u8>);
    let mut batches: Vec<Vec<Message>> = Vec::new();
    let mut taken = vec![0usize; streams.len()];
    while taken.iter().zip(&streams).any(|(t, s)| *t < s.2.len()) {
        let mut batch = Vec::new();
        for (k, (stream, partition, lines)) in streams.iter().enumerate() {
            let end = (taken[k] + 40).min(lines.len());
            for (offset, line) in lines.iter().enumerate().take(end).skip(taken[k]) {
                batch.push((*stream, *partition, offset as i64, line.clone()));
            }
            taken[k] = end;
        }
        batches.push(batch);
    }
    let config = Config::from_yaml_str(
        &format!(
            "windows: {{size: 5m, slide: 1m, allowed_lateness: 30s, label_horizon: 10m}}\n\
             pipeline: {{batch_size: 200}}\n\
             models: [{{name: shop, baseline: {}}}]\n",
            repo("tests/fixtures/replay_drift/baseline.json").display()
        ),
        "closer.yaml",
    )
    .unwrap();
    let source_batch = |batch: &[Message]| {
        SourceBatch::from_messages(0, Instant::now(), batch.iter().map(|(s, p, o, b)| (*s, *p, *o, b.as_slice())))
    };

    // In-line: what the single-threaded daemon did with each batch.
    let mut pipeline = Pipeline::new(&config, Arc::new(Telemetry::default())).unwrap();
    pipeline.engine.declare_partitions(&[0, 1, 2]);
    let mut in_line = MemorySink::default();
    let mut invalid_in_line = 0;
    for batch in &batches {
        let batch = source_batch(batch);
        for run in batch.partitions() {
            let (stream, partition) = (run[0].stream, run[0].partition);
            for message in run {
                let decoded = match stream {
                    Stream::Predictions => pipeline.decode_prediction(batch.payload(message), &"test"),
                    Stream::Labels => pipeline.decode_label(batch.payload(message), &"test"),
                };
                invalid_in_line += usize::from(decoded.is_err());
            }
            match stream {
                Stream::Predictions => pipeline.process_predictions(partition),
                Stream::Labels => pipeline.process_labels(partition),
            }
        }
        pipeline.emit(&mut in_line).unwrap();
    }
    pipeline.finish(&mut in_line).unwrap();
    assert_eq!(invalid_in_line, 2);
    assert!(in_line.rows.len() > 100, "{} rows", in_line.rows.len());

    for lanes in [1, 3] {
        let telemetry = Arc::new(Telemetry::default());
        let mut pipeline = Pipeline::new(&config, telemetry.clone()).unwrap();
        pipeline.engine.declare_partitions(&[0, 1, 2]);
        let mut sink = MemorySink::default();
        let mut letters = Vec::new();
        std::thread::scope(|scope| {
            let (spawned, threads) =
                Lanes::spawn(scope, &config, &pipeline.registry, lanes, telemetry, "predictions").unwrap();
            let mut closer = Closer::new(spawned, "predictions", "labels", true);
            let mut finished: Vec<Finished> = Vec::new();
            for (n, batch) in batches.iter().enumerate() {
                closer.dispatch(&mut pipeline, source_batch(batch), &mut finished).unwrap();
                // A snapshot now and then, as checkpoints take: it changes nothing.
                if n % 3 == 1 {
                    closer.snapshot(&mut pipeline, &mut finished).unwrap();
                }
                for batch in finished.drain(..) {
                    letters.extend(batch.letters);
                }
                pipeline.emit(&mut sink).unwrap();
            }
            closer.drain(&mut pipeline, &mut finished).unwrap();
            closer.hand_over(&mut pipeline, None, false, &mut finished).unwrap();
            for batch in finished.drain(..) {
                letters.extend(batch.letters);
            }
            pipeline.finish(&mut sink).unwrap();
            drop(closer);
            for thread in threads {
                thread.join().unwrap();
            }
        });
        assert_eq!(letters.len(), 2, "{lanes} lanes: the invalid events are dead letters");
        assert!(letters.iter().all(|l| l.source.starts_with("predictions/1@")), "{:?}", letters[0].source);
        let encode = |rows: &[driftwatch::window_metrics::WindowMetricRow]| -> Vec<String> {
            rows.iter().map(|r| format!("{r:?}")).collect()
        };
        assert_eq!(encode(&sink.rows), encode(&in_line.rows), "{lanes} lanes: the in-line rows");
    }
}
