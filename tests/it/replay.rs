//! The engine over files, checked against numpy/scipy values computed by
//! `tests/fixtures/stats/generate.py` on the same events.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use driftwatch::config::Config;
use driftwatch::drivers::replay::{ReplayOptions, replay, replay_with_options};
use driftwatch::output::{MemorySink, NdjsonSink};
use driftwatch::telemetry::Telemetry;
use driftwatch::timestamp::format_rfc3339_ms;
use driftwatch::window_metrics::WindowMetricRow;
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/stats").join(name)
}

type Key = (String, String, String, String, Option<String>, String);

fn replay_fixture(config: &str) -> (Vec<WindowMetricRow>, Arc<Telemetry>) {
    let config = Config::load(&fixture(config)).expect("fixture config loads");
    let telemetry = Arc::new(Telemetry::default());
    let mut sink = MemorySink::default();
    replay(&config, &[fixture("predictions.ndjson")], &[fixture("labels.ndjson")], &mut sink, telemetry.clone())
        .expect("replay succeeds");
    (sink.rows, telemetry)
}

fn index(rows: &[WindowMetricRow]) -> HashMap<Key, WindowMetricRow> {
    let mut map = HashMap::new();
    for row in rows {
        let key = (
            row.model.to_string(),
            row.model_version.to_string(),
            row.segment.to_string(),
            format_rfc3339_ms(row.window_start_ms),
            row.feature.as_deref().map(str::to_string),
            row.metric.to_string(),
        );
        assert!(map.insert(key.clone(), row.clone()).is_none(), "duplicate row {key:?}");
    }
    map
}

fn close(actual: f64, expected: f64, tolerance: f64, what: &str) {
    let scale = expected.abs().max(1.0);
    assert!(
        (actual - expected).abs() <= tolerance * scale,
        "{what}: driftwatch {actual} vs numpy {expected} (tolerance {tolerance})"
    );
}

struct Lookup<'a> {
    rows: &'a HashMap<Key, WindowMetricRow>,
    window: &'a Value,
}

impl Lookup<'_> {
    fn get(&self, feature: Option<&str>, metric: &str) -> &WindowMetricRow {
        let w = self.window;
        let key = (
            w["model"].as_str().unwrap().to_string(),
            w["model_version"].as_str().unwrap().to_string(),
            w["segment"].as_str().unwrap().to_string(),
            w["window_start"].as_str().unwrap().to_string(),
            feature.map(str::to_string),
            metric.to_string(),
        );
        self.rows.get(&key).unwrap_or_else(|| panic!("no row for {key:?}"))
    }
}

#[test]
fn tumbling_window_statistics_match_numpy() {
    let expected: Value = serde_json::from_str(&std::fs::read_to_string(fixture("expected.json")).unwrap()).unwrap();
    let (rows, telemetry) = replay_fixture("config.yaml");
    let rows = index(&rows);
    let windows = expected["windows"].as_array().unwrap();
    assert!(windows.len() >= 20);
    for window in windows {
        let at = Lookup { rows: &rows, window };
        let label = format!(
            "{} {} {:?} {}",
            window["model"], window["model_version"], window["segment"], window["window_start"]
        );
        let events = window["events"].as_f64().unwrap();
        let count = at.get(None, "count");
        assert_eq!(count.value, events, "{label} count");
        assert_eq!(count.sample_count as f64, events);
        assert_eq!(at.get(None, "events_late").value, 0.0, "{label}");
        for (feature, stats) in window["features"].as_object().unwrap() {
            let what = |m: &str| format!("{label} {feature} {m}");
            let f = Some(feature.as_str());
            close(
                at.get(f, "missing_rate").value,
                stats["missing_rate"].as_f64().unwrap(),
                1e-12,
                &what("missing_rate"),
            );
            assert_eq!(at.get(f, "count").value, stats["n"].as_f64().unwrap(), "{}", what("count"));
            if stats.get("frequencies").is_some() {
                continue;
            }
            let n = stats["n"].as_f64().unwrap();
            for (metric, key) in [("mean", "mean"), ("std", "std_sample"), ("min", "min"), ("max", "max")] {
                let row = at.get(f, metric);
                close(row.value, stats[key].as_f64().unwrap(), 1e-9, &what(metric));
                assert_eq!(row.sample_count as f64, n, "{}", what(metric));
            }
            // Windows of at most 1024 values have exact quantiles.
            for q in ["p50", "p95", "p99"] {
                close(at.get(f, q).value, stats[q].as_f64().unwrap(), 1e-9, &what(q));
            }
        }
        if let Some(labeled) = window.get("labeled").and_then(Value::as_f64) {
            assert_eq!(at.get(None, "labeled_count").value, labeled, "{label} labeled");
            close(at.get(None, "label_coverage").value, labeled / events, 1e-12, &format!("{label} coverage"));
        }
        for metric in
            ["accuracy", "precision", "recall", "f1", "mae", "rmse", "mape", "r2", "roc_auc", "log_loss", "brier"]
        {
            if let Some(value) = window.get(metric).and_then(Value::as_f64) {
                close(at.get(None, metric).value, value, 1e-9, &format!("{label} {metric}"));
            }
        }
        for metric in ["latency_p50", "latency_p95", "latency_p99"] {
            if let Some(value) = window.get(metric).and_then(Value::as_f64) {
                let row = at.get(None, metric);
                close(row.value, value, 1e-9, &format!("{label} {metric}"));
            }
        }
    }
    assert_eq!(
        telemetry.join_labels_unmatched.load(std::sync::atomic::Ordering::Relaxed),
        expected["unmatched_labels"].as_u64().unwrap()
    );
    assert_eq!(telemetry.invalid_total(), 0);
}

#[test]
fn hopping_window_statistics_match_numpy() {
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("hopping_expected.json")).unwrap()).unwrap();
    let (rows, _) = replay_fixture("hopping_config.yaml");
    let rows = index(&rows);
    let windows = expected["windows"].as_array().unwrap();
    assert!(!windows.is_empty());
    for window in windows {
        let at = Lookup { rows: &rows, window };
        let label = format!("{} {:?} {}", window["model"], window["segment"], window["window_start"]);
        assert_eq!(at.get(None, "count").value, window["events"].as_f64().unwrap(), "{label}");
        for (feature, stats) in window["features"].as_object().unwrap() {
            let f = Some(feature.as_str());
            assert_eq!(at.get(f, "count").value, stats["n"].as_f64().unwrap(), "{label} {feature}");
            for (metric, key) in [("mean", "mean"), ("std", "std_sample"), ("min", "min"), ("max", "max")] {
                close(
                    at.get(f, metric).value,
                    stats[key].as_f64().unwrap(),
                    1e-9,
                    &format!("{label} {feature} {metric}"),
                );
            }
        }
    }
}

#[test]
fn replay_is_deterministic_to_the_byte() {
    let config = Config::load(&fixture("config.yaml")).unwrap();
    let run = || {
        let mut sink = NdjsonSink::new(Vec::new());
        replay(
            &config,
            &[fixture("predictions.ndjson")],
            &[fixture("labels.ndjson")],
            &mut sink,
            Arc::new(Telemetry::default()),
        )
        .unwrap();
        sink.into_inner()
    };
    let first = run();
    assert!(first.len() > 10_000);
    assert_eq!(first, run());
    // Every line is a window_metrics row with the SPEC §4 keys, in order.
    let line = first.split(|&b| b == b'\n').next().unwrap();
    let row: serde_json::Map<String, Value> = serde_json::from_slice(line).unwrap();
    let keys: Vec<&str> = row.keys().map(String::as_str).collect();
    let mut expected = vec![
        "model",
        "model_version",
        "segment",
        "window_start",
        "window_end",
        "feature",
        "metric",
        "value",
        "baseline",
        "threshold",
        "p_value",
        "drifted",
        "sample_count",
    ];
    expected.sort();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(sorted, expected);
    assert!(row["window_start"].as_str().unwrap().ends_with(".000Z"));
}

/// `--checkpoint-every`: checkpoints taken between a replay's batches
/// (joins on disk) change no row, and each reports its cost; the
/// checkpoints are gone after the replay.
#[test]
fn checkpoints_taken_during_a_replay_change_no_row_and_report_their_cost() {
    let dir = tempfile::tempdir().unwrap();
    let mut in_memory = Config::load(&fixture("config.yaml")).unwrap();
    in_memory.pipeline.batch_size = 200;
    let mut on_disk = in_memory.clone();
    on_disk.state.dir = Some(dir.path().to_path_buf());
    let run = |config: &Config, checkpoint_every| {
        let mut sink = NdjsonSink::new(Vec::new());
        let options = ReplayOptions { lanes: 1, checkpoint_every };
        let inputs = ([fixture("predictions.ndjson")], [fixture("labels.ndjson")]);
        let summary =
            replay_with_options(config, &inputs.0, &inputs.1, &mut sink, Arc::new(Telemetry::default()), &options)
                .unwrap();
        (sink.into_inner(), summary)
    };
    let (expected, plain) = run(&in_memory, None);
    assert!(plain.checkpoints.is_empty() && plain.checkpoint_report().is_none());
    let (rows, summary) = run(&on_disk, Some(500));
    assert!(rows == expected, "checkpoints changed the rows");
    // One checkpoint per 500 predictions, taken at the end of a batch of 200.
    let predictions = summary.predictions;
    assert_eq!(summary.checkpoints.len() as u64, predictions / 600, "{:?}", summary.checkpoints);
    for (taken, checkpoint) in summary.checkpoints.iter().enumerate() {
        assert_eq!(checkpoint.predictions, 600 * (taken as u64 + 1), "{checkpoint:?}");
        assert!(checkpoint.file_bytes > 0 && checkpoint.join_store_bytes > 0, "{checkpoint:?}");
        assert!(checkpoint.paused <= checkpoint.durable, "{checkpoint:?}");
    }
    assert!(summary.checkpoints.iter().any(|c| c.pending_joins > 0), "{:?}", summary.checkpoints);
    let report = summary.checkpoint_report().unwrap();
    assert!(report.starts_with(&format!("checkpoints: {} taken", summary.checkpoints.len())), "{report}");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    // Without a state dir, or in several lanes, there is nothing to measure.
    let options = ReplayOptions { lanes: 1, checkpoint_every: Some(500) };
    let mut sink = NdjsonSink::new(Vec::new());
    let error = replay_with_options(
        &in_memory,
        &[fixture("predictions.ndjson")],
        &[],
        &mut sink,
        Arc::new(Telemetry::default()),
        &options,
    )
    .unwrap_err();
    assert!(error.to_string().contains("needs state.dir"), "{error}");
    let options = ReplayOptions { lanes: 2, checkpoint_every: Some(500) };
    let two_files = [fixture("predictions.ndjson"), fixture("predictions.ndjson")];
    let error = replay_with_options(&on_disk, &two_files, &[], &mut sink, Arc::new(Telemetry::default()), &options)
        .unwrap_err();
    assert!(error.to_string().contains("in one lane"), "{error}");
}

#[test]
fn late_events_are_counted_not_merged() {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("c.yaml");
    std::fs::write(
        &config_path,
        "windows: {size: 1m, allowed_lateness: 0s}\npipeline: {batch_size: 1}\nmodels: [{name: m}]\n",
    )
    .unwrap();
    let events = dir.path().join("p.ndjson");
    let lines = [
        (0, "a"),
        (30, "b"),
        (61, "c"),    // closes [0, 60)
        (10, "late"), // belongs to the closed window
        (70, "d"),
        (200, "e"),
    ];
    let body: String = lines
        .iter()
        .map(|(s, id)| {
            format!(
                "{{\"event_id\":\"{id}\",\"model\":\"m\",\"timestamp\":{},\"prediction\":1}}\n",
                1_795_687_200_000i64 + s * 1000
            )
        })
        .collect();
    std::fs::write(&events, body).unwrap();
    let config = Config::load(&config_path).unwrap();
    let mut sink = MemorySink::default();
    let telemetry = Arc::new(Telemetry::default());
    replay(&config, &[events], &[], &mut sink, telemetry.clone()).unwrap();
    let model_rows = |metric: &str| -> Vec<(i64, f64)> {
        sink.rows
            .iter()
            .filter(|r| r.metric == metric && r.feature.is_none())
            .map(|r| ((r.window_start_ms - 1_795_687_200_000) / 1000, r.value))
            .collect()
    };
    assert_eq!(model_rows("count"), vec![(0, 2.0), (60, 2.0), (180, 1.0)]);
    assert_eq!(model_rows("events_late"), vec![(0, 0.0), (60, 1.0), (180, 0.0)]);
    assert_eq!(telemetry.events_late.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[test]
fn every_label_is_read_even_when_labels_outlast_predictions() {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("c.yaml");
    std::fs::write(
        &config_path,
        "windows: {size: 1m, label_horizon: 1h}\npipeline: {batch_size: 10}\nmodels: [{name: m}]\n",
    )
    .unwrap();
    let t0 = 1_795_687_200_000i64;
    let predictions: String = (0..30)
        .map(|i| format!("{{\"event_id\":\"{i}\",\"model\":\"m\",\"timestamp\":{},\"prediction\":1}}\n", t0 + i * 1000))
        .collect();
    let labels: String = (0..30)
        .map(|i| {
            format!("{{\"event_id\":\"{i}\",\"model\":\"m\",\"timestamp\":{},\"label\":{}}}\n", t0 + 600_000 + i, i % 2)
        })
        .collect();
    std::fs::write(dir.path().join("p.ndjson"), predictions).unwrap();
    std::fs::write(dir.path().join("l.ndjson"), labels).unwrap();
    let config = Config::load(&config_path).unwrap();
    let mut sink = MemorySink::default();
    replay(
        &config,
        &[dir.path().join("p.ndjson")],
        &[dir.path().join("l.ndjson")],
        &mut sink,
        Arc::new(Telemetry::default()),
    )
    .unwrap();
    let labeled: f64 = sink.rows.iter().filter(|r| r.metric == "labeled_count").map(|r| r.value).sum();
    assert_eq!(labeled, 30.0);
    let accuracy = sink.rows.iter().find(|r| r.metric == "accuracy").unwrap();
    assert_eq!(accuracy.value, 0.5);
}

#[test]
fn parquet_input_gives_the_same_rows_as_ndjson() {
    use std::io::{BufReader, Cursor};

    use datafusion::arrow::json::ReaderBuilder;
    use datafusion::arrow::json::reader::infer_json_schema_from_seekable;
    use datafusion::parquet::arrow::ArrowWriter;
    use driftwatch::simulate::{Simulator, SimulatorOptions};

    let dir = tempfile::tempdir().unwrap();
    let mut simulator = Simulator::new(SimulatorOptions { rate: 20.0, ..Default::default() });
    let mut ndjson = Vec::new();
    for _ in 0..3_000 {
        let time = simulator.next_time_ms();
        simulator.write_prediction(time, &mut ndjson);
    }
    std::fs::write(dir.path().join("p.ndjson"), &ndjson).unwrap();
    let (schema, _) = infer_json_schema_from_seekable(&mut BufReader::new(Cursor::new(&ndjson)), None).unwrap();
    let schema = Arc::new(schema);
    let reader = ReaderBuilder::new(schema.clone()).build(Cursor::new(&ndjson)).unwrap();
    let file = std::fs::File::create(dir.path().join("p.parquet")).unwrap();
    let mut writer = ArrowWriter::try_new(file, schema, None).unwrap();
    for batch in reader {
        writer.write(&batch.unwrap()).unwrap();
    }
    writer.close().unwrap();

    let config = Config::from_yaml_str("windows: {size: 1m}\nmodels: [{name: fraud}]\n", "c.yaml").unwrap();
    let run = |file: &str| {
        let mut sink = NdjsonSink::new(Vec::new());
        let summary =
            replay(&config, &[dir.path().join(file)], &[], &mut sink, Arc::new(Telemetry::default())).unwrap();
        assert_eq!((summary.predictions, summary.invalid), (3_000, 0), "{file}");
        sink.into_inner()
    };
    let from_ndjson = run("p.ndjson");
    assert!(!from_ndjson.is_empty());
    assert_eq!(String::from_utf8(run("p.parquet")).unwrap(), String::from_utf8(from_ndjson).unwrap());
}

/// The peak resident memory (VmHWM, kB) of a running process, `None` once
/// it has exited (a zombie's status has no memory lines).
fn peak_rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Regression (issue 15): the quantile sketch kept every bucket between a
/// window's smallest and largest value, so 1,100 events whose 500 features
/// alternate between ±1e-300 and ±1e300 took a replay to about 1 GB of RSS
/// (2 MB per feature). At its bucket budget it holds at most 32 KiB per
/// feature; the replay (a debug build) must peak under 150 MB.
#[test]
fn values_spanning_the_double_range_keep_a_replay_small() {
    const BOUND_KB: u64 = 150 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let values = ["1e-300", "-1e300", "-1e-300", "1e300"];
    let mut events = String::new();
    for e in 0..1_100 {
        let features: Vec<String> = (0..500).map(|f| format!("\"f{f}\":{}", values[(e + f) % 4])).collect();
        events.push_str(&format!(
            "{{\"event_id\":\"e{e}\",\"model\":\"m\",\"timestamp\":\"2026-11-26T10:{:02}:{:02}Z\",\"prediction\":1,\"features\":{{{}}}}}\n",
            e / 60,
            e % 60,
            features.join(",")
        ));
    }
    std::fs::write(dir.path().join("e.ndjson"), events).unwrap();
    std::fs::write(dir.path().join("c.yaml"), "windows: {size: 1h}\nmodels: [{name: m}]\n").unwrap();
    let out = dir.path().join("rows.ndjson");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_driftwatch"))
        .args(["replay", "--config", "c.yaml", "--predictions", "e.ndjson"])
        .current_dir(dir.path())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap())
        .spawn()
        .unwrap();
    // VmHWM only grows: the last reading before the exit is the peak.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    let mut peak = 0;
    let status = loop {
        if let Some(kb) = peak_rss_kb(child.id()) {
            peak = peak.max(kb);
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("the replay did not finish in 300 s (peak RSS so far {} MB)", peak / 1024);
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    let stderr = std::fs::read_to_string(dir.path().join("stderr")).unwrap();
    assert!(status.success(), "{stderr}");
    println!("peak RSS of the replay: {} MB (bound {} MB)", peak / 1024, BOUND_KB / 1024);
    assert!(peak > 0 && peak < BOUND_KB, "peak RSS {peak} kB");
    // The window closed with its 500 features, their quantiles from the sketch.
    let rows: Vec<Value> =
        std::fs::read_to_string(&out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let p99: Vec<&Value> =
        rows.iter().filter(|r| r["segment"] == "" && r["feature"].is_string() && r["metric"] == "p99").collect();
    assert_eq!(p99.len(), 500);
    for row in p99 {
        let value = row["value"].as_f64().unwrap();
        assert!((value / 1e300 - 1.0).abs() <= 0.004, "{row}");
    }
}

/// A shadow version (`models[].shadow_versions`) scores the champion's
/// events under the same event ids, from a file of its own: replay pairs
/// every label with both predictions, credits each to its own version's
/// rows, and compares the two on the events both scored
/// (`accuracy_vs_champion`). Expected values are counted from the
/// generated events.
#[test]
fn a_shadow_is_paired_with_its_champion_on_the_same_event_ids() {
    let seed: u64 = 0x5eed_0017;
    println!("seed {seed}");
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) as f64 / (1u64 << 31) as f64
    };
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("c.yaml");
    std::fs::write(
        &config_path,
        "windows: {size: 1h, label_horizon: 1h}\npipeline: {batch_size: 64}\n\
         models: [{name: fraud, shadow_versions: ['4']}]\n",
    )
    .unwrap();
    let t0 = 1_795_687_200_000i64;
    let (mut champion, mut shadow, mut labels) = (String::new(), String::new(), String::new());
    let (mut champion_correct, mut shadow_correct, mut shadow_events) = (0u64, 0u64, 0u64);
    let (mut paired, mut paired_champion_correct, mut champion_only, mut shadow_only) = (0u64, 0u64, 0u64, 0u64);
    for i in 0..500i64 {
        let label = i64::from(next() < 0.4);
        let champion_right = next() < 0.9;
        let shadow_right = next() < 0.8;
        let shadow_scores = next() < 0.9;
        let time = t0 + i * 5_000;
        let predicted = |right: bool| if right { label } else { 1 - label };
        champion.push_str(&format!(
            "{{\"event_id\":\"e{i}\",\"model\":\"fraud\",\"model_version\":\"3\",\"timestamp\":{time},\"prediction\":{}}}\n",
            predicted(champion_right)
        ));
        if shadow_scores {
            shadow.push_str(&format!(
                "{{\"event_id\":\"e{i}\",\"model\":\"fraud\",\"model_version\":\"4\",\"timestamp\":{},\"prediction\":{}}}\n",
                time + 40,
                predicted(shadow_right)
            ));
            shadow_events += 1;
            shadow_correct += u64::from(shadow_right);
            paired += 1;
            paired_champion_correct += u64::from(champion_right);
            champion_only += u64::from(champion_right && !shadow_right);
            shadow_only += u64::from(shadow_right && !champion_right);
        }
        champion_correct += u64::from(champion_right);
        labels.push_str(&format!(
            "{{\"event_id\":\"e{i}\",\"model\":\"fraud\",\"timestamp\":{},\"label\":{label}}}\n",
            time + 60_000
        ));
    }
    for (name, text) in [("champion.ndjson", &champion), ("shadow.ndjson", &shadow), ("labels.ndjson", &labels)] {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let config = Config::load(&config_path).unwrap();
    let mut sink = MemorySink::default();
    let telemetry = Arc::new(Telemetry::default());
    replay(
        &config,
        &[dir.path().join("champion.ndjson"), dir.path().join("shadow.ndjson")],
        &[dir.path().join("labels.ndjson")],
        &mut sink,
        telemetry.clone(),
    )
    .unwrap();
    let sum = |version: &str, metric: &str| -> f64 {
        sink.rows.iter().filter(|r| &*r.model_version == version && r.metric == metric).map(|r| r.value).sum()
    };
    assert_eq!(sum("3", "labeled_count"), 500.0);
    assert_eq!(sum("4", "labeled_count"), shadow_events as f64);
    // Accuracy per version, over the windows' labelled counts.
    let accuracy = |version: &str| -> f64 {
        let windows: Vec<&WindowMetricRow> =
            sink.rows.iter().filter(|r| &*r.model_version == version && r.metric == "accuracy").collect();
        windows.iter().map(|r| r.value * r.sample_count as f64).sum::<f64>()
            / windows.iter().map(|r| r.sample_count as f64).sum::<f64>()
    };
    close(accuracy("3"), champion_correct as f64 / 500.0, 1e-12, "champion accuracy");
    close(accuracy("4"), shadow_correct as f64 / shadow_events as f64, 1e-12, "shadow accuracy");
    let comparisons: Vec<&WindowMetricRow> = sink.rows.iter().filter(|r| r.metric == "accuracy_vs_champion").collect();
    assert!(comparisons.iter().all(|r| &*r.model_version == "4"), "only the shadow compares with its champion");
    assert_eq!(comparisons.iter().map(|r| r.sample_count as u64).sum::<u64>(), paired);
    let difference: f64 = comparisons.iter().map(|r| r.value * r.sample_count as f64).sum();
    close(difference, shadow_only as f64 - champion_only as f64, 1e-9, "paired accuracy difference × n");
    let champion_on_paired: f64 = comparisons.iter().map(|r| r.baseline.unwrap() * r.sample_count as f64).sum();
    close(champion_on_paired, paired_champion_correct as f64, 1e-9, "champion accuracy on the paired events");
    assert!(comparisons.iter().all(|r| r.p_value.is_some_and(|p| (0.0..=1.0).contains(&p))));
    let join = telemetry.duplicate_predictions.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(join, 0, "a shadow's prediction is no duplicate of its champion's");
}

/// A baseline feature that no event carries gets its rows (`count` 0,
/// `missing_rate` 1) in every whole-model window. (Before, it got them
/// only in windows whose micro-batches had a column for it, which the
/// decoder adds only once it has met a feature with a higher id: here
/// never, so the feature silently had no rows.)
#[test]
fn a_baseline_feature_no_event_carries_is_missing_in_every_window() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(crate::support::repo("tests/fixtures/replay_drift/live.ndjson")).unwrap();
    let mut without_tenure = String::new();
    for line in text.lines() {
        let mut event: serde_json::Value = serde_json::from_str(line).unwrap();
        event["features"].as_object_mut().unwrap().remove("tenure");
        without_tenure.push_str(&event.to_string());
        without_tenure.push('\n');
    }
    let predictions = dir.path().join("predictions.ndjson");
    std::fs::write(&predictions, without_tenure).unwrap();
    let config = Config::from_yaml_str(
        &format!(
            "windows: {{size: 5m}}\npipeline: {{batch_size: 100}}\nmodels: [{{name: shop, baseline: {}}}]\n",
            crate::support::repo("tests/fixtures/replay_drift/baseline.json").display()
        ),
        "t.yaml",
    )
    .unwrap();
    let mut sink = MemorySink::default();
    replay(&config, &[predictions], &[], &mut sink, Arc::new(Telemetry::default())).unwrap();
    let windows: std::collections::BTreeSet<i64> =
        sink.rows.iter().filter(|r| r.metric == "count" && r.feature.is_none()).map(|r| r.window_start_ms).collect();
    assert!(windows.len() >= 4, "{} windows", windows.len());
    for window in &windows {
        let missing = sink.rows.iter().find(|r| {
            r.window_start_ms == *window && r.feature.as_deref() == Some("tenure") && r.metric == "missing_rate"
        });
        assert_eq!(missing.map(|r| r.value), Some(1.0), "window {window}: tenure's missing_rate");
    }
}
