//! A pipeline restored from a checkpoint continues exactly like one that
//! never stopped; damaged checkpoint files are detected and skipped.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::*;
use crate::config::Config;
use crate::output::{MemorySink, WindowMetricRow};
use crate::pipeline::Pipeline;
use crate::telemetry::Telemetry;

fn config() -> Config {
    let root = env!("CARGO_MANIFEST_DIR");
    Config::from_yaml_str(
        &format!(
            "windows: {{size: 5m, allowed_lateness: 30s, label_horizon: 10m}}\n\
             models: [{{name: shop, baseline: {root}/tests/fixtures/replay_drift/baseline.json}}]\n"
        ),
        "test.yaml",
    )
    .unwrap()
}

/// The fixture's predictions (with latency and a segment on some) and a
/// label for each, the labels a little behind.
fn events() -> (Vec<String>, Vec<String>) {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/replay_drift/live.ndjson"))
        .unwrap();
    let mut predictions = Vec::new();
    let mut labels = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let mut event: serde_json::Value = serde_json::from_str(line).unwrap();
        event["latency_ms"] = serde_json::json!(5.0 + (i % 17) as f64 * 1.3);
        if i % 5 == 0 {
            event["segment"] = serde_json::json!({"channel": "mobile"});
        }
        let label =
            if i % 4 == 0 { 1 - event["prediction"].as_i64().unwrap() } else { event["prediction"].as_i64().unwrap() };
        labels.push(
            serde_json::json!({"event_id": event["event_id"], "model": "shop", "timestamp": event["timestamp"], "label": label})
                .to_string(),
        );
        predictions.push(event.to_string());
    }
    (predictions, labels)
}

/// Feeds `predictions` and `labels` in batches of 97, labels trailing by
/// 150 events; with `stop_at`, checkpoints after that many batches, drops
/// the pipeline and continues in a new one restored from the bytes.
fn run(stop_at: Option<usize>) -> (Vec<WindowMetricRow>, usize) {
    let config = config();
    let (predictions, labels) = events();
    let mut pipeline = Pipeline::new(&config, Arc::new(Telemetry::default())).unwrap();
    let mut sink = MemorySink::default();
    let mut checkpoint_size = 0;
    let batch = 97;
    let batches = predictions.len().div_ceil(batch) + 2;
    for b in 0..batches {
        if Some(b) == stop_at {
            let bytes = pipeline.encode_checkpoint(&Offsets::new(), None, &BTreeMap::new()).unwrap();
            checkpoint_size = bytes.len();
            let checkpoint = decode(Path::new("test"), &bytes).unwrap();
            pipeline = Pipeline::new(&config, Arc::new(Telemetry::default())).unwrap();
            assert_eq!(pipeline.restore(checkpoint.models, checkpoint.window_spec, checkpoint.counters), 1);
        }
        for line in predictions.iter().skip(b * batch).take(batch) {
            pipeline.decode_prediction(line.as_bytes(), &"p").unwrap();
        }
        for line in labels.iter().skip((b * batch).saturating_sub(150)).take(if b == 0 { 0 } else { batch }) {
            pipeline.decode_label(line.as_bytes(), &"l").unwrap();
        }
        pipeline.process(&mut sink).unwrap();
    }
    pipeline.finish(&mut sink).unwrap();
    (sink.rows, checkpoint_size)
}

#[test]
fn a_restored_pipeline_emits_exactly_the_rows_of_an_uninterrupted_one() {
    let (uninterrupted, _) = run(None);
    assert!(uninterrupted.iter().any(|r| r.metric == "accuracy"), "labels joined");
    assert!(uninterrupted.iter().any(|r| &*r.segment == "channel=mobile"), "segments");
    for stop_at in [1, 5, 12, 20, 25] {
        let (restored, size) = run(Some(stop_at));
        assert!(size > 0);
        assert_eq!(restored.len(), uninterrupted.len(), "stopped after batch {stop_at}");
        for (a, b) in restored.iter().zip(&uninterrupted) {
            // Bit for bit, NaN included.
            let same = |x: f64, y: f64| x.to_bits() == y.to_bits();
            assert!(
                a.model == b.model
                    && a.segment == b.segment
                    && a.window_start_ms == b.window_start_ms
                    && a.feature == b.feature
                    && a.metric == b.metric
                    && same(a.value, b.value)
                    && a.sample_count == b.sample_count
                    && a.drifted == b.drifted,
                "stopped after batch {stop_at}:\n{a:?}\n{b:?}"
            );
        }
    }
}

fn sample_bytes() -> Vec<u8> {
    let pipeline = Pipeline::new(&config(), Arc::new(Telemetry::default())).unwrap();
    let mut offsets = Offsets::new();
    offsets.entry("predictions".to_string()).or_default().insert(0, 42);
    pipeline.encode_checkpoint(&offsets, None, &BTreeMap::new()).unwrap()
}

#[test]
fn damaged_files_are_detected() {
    let bytes = sample_bytes();
    let path = Path::new("c");
    assert_eq!(decode(path, &bytes).unwrap().offsets["predictions"][&0], 42);
    let truncated = decode(path, &bytes[..bytes.len() - 5]).err().unwrap().to_string();
    assert!(truncated.contains("truncated"), "{truncated}");
    let mut flipped = bytes.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x40;
    assert!(decode(path, &flipped).err().unwrap().to_string().contains("checksum mismatch"));
    assert!(decode(path, b"hello").err().unwrap().to_string().contains("not a checkpoint"));
    let mut newer = bytes.clone();
    newer[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
    assert!(matches!(decode(path, &newer), Err(CheckpointError::NewerFormat { .. })));
}

#[test]
fn the_store_keeps_the_newest_and_falls_back_past_a_truncated_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = CheckpointStore::open(dir.path()).unwrap();
    assert!(store.load_latest().unwrap().is_none());
    let bytes = sample_bytes();
    let mut paths = Vec::new();
    for _ in 0..5 {
        paths.push(store.write(&bytes).unwrap());
    }
    let names = |dir: &Path| {
        let mut names: Vec<String> =
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    };
    assert_eq!(names(dir.path()).len(), KEEP, "{:?}", names(dir.path()));
    // The newest is cut short (a crash mid-copy, a full disk): the one
    // before it is used, and the damaged one is kept aside.
    let newest = paths.last().unwrap();
    fs::write(newest, &bytes[..bytes.len() / 2]).unwrap();
    let mut reopened = CheckpointStore::open(dir.path()).unwrap();
    let loaded = reopened.load_latest().unwrap().unwrap();
    assert_eq!(loaded.path, paths[3]);
    assert_eq!(loaded.skipped.len(), 1);
    assert!(newest.with_extension("corrupt").exists());
    // Sequence numbers never go back, so the next file is newer than all.
    let next = reopened.write(&bytes).unwrap();
    assert!(next > paths[4].with_extension("ckpt"), "{next:?}");
}
