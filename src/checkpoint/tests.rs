//! A pipeline restored from a checkpoint continues exactly like one that
//! never stopped; damaged checkpoint files are detected and skipped.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::*;
use crate::config::Config;
use crate::output::MemorySink;
use crate::pipeline::Pipeline;
use crate::telemetry::Telemetry;
use crate::window_metrics::WindowMetricRow;

fn fixture_baseline() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/replay_drift/baseline.json"))
}

fn config() -> Config {
    config_with("5m", Some(&fixture_baseline()), "binary_classification")
}

/// The test config with windows of `size`, the model's baseline and task.
fn config_with(size: &str, baseline: Option<&Path>, task: &str) -> Config {
    let baseline = baseline.map(|b| format!(", baseline: {}", b.display())).unwrap_or_default();
    Config::from_yaml_str(
        &format!(
            "windows: {{size: {size}, allowed_lateness: 30s, label_horizon: 10m}}\n\
             models: [{{name: shop, task: {task}{baseline}}}]\n"
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
    let run = run_across(&config, stop_at, Some(&config), false);
    (run.rows, run.checkpoint_size)
}

struct Run {
    rows: Vec<WindowMetricRow>,
    /// Rows emitted before batch `stop_at`.
    split: usize,
    checkpoint_size: usize,
    /// The (restored) pipeline's.
    telemetry: Arc<Telemetry>,
}

/// [`run`] started with config `before`; at batch `stop_at`, restored
/// into a pipeline with config `after` (without one: only notes how many
/// rows came before). `unstamped`: as from a checkpoint written before
/// models were stamped with their task and baseline.
fn run_across(before: &Config, stop_at: Option<usize>, after: Option<&Config>, unstamped: bool) -> Run {
    run_events(before, stop_at, after, unstamped, events())
}

/// [`run_across`] with these events.
fn run_events(
    before: &Config,
    stop_at: Option<usize>,
    after: Option<&Config>,
    unstamped: bool,
    events: (Vec<String>, Vec<String>),
) -> Run {
    let unstamp = |checkpoint: &mut Checkpoint| {
        if unstamped {
            checkpoint.models.iter_mut().for_each(|m| m.stamp = None);
        }
    };
    run_events_with(before, stop_at, after, &unstamp, events)
}

/// [`run_events`], the checkpoint passed through `rewrite` before it is
/// restored.
fn run_events_with(
    before: &Config,
    stop_at: Option<usize>,
    after: Option<&Config>,
    rewrite: &dyn Fn(&mut Checkpoint),
    (predictions, labels): (Vec<String>, Vec<String>),
) -> Run {
    let telemetry = Arc::new(Telemetry::default());
    let mut pipeline = Pipeline::new(before, telemetry.clone()).unwrap();
    let mut sink = MemorySink::default();
    let mut checkpoint_size = 0;
    let mut split = 0;
    let batch = 97;
    let batches = predictions.len().div_ceil(batch) + 2;
    for b in 0..batches {
        if Some(b) == stop_at {
            split = sink.rows.len();
        }
        if let (Some(config), true) = (after, Some(b) == stop_at) {
            let bytes = pipeline.encode_checkpoint(&Offsets::new(), None, &BTreeMap::new(), None).unwrap();
            checkpoint_size = bytes.len();
            let mut checkpoint = decode(Path::new("test"), &bytes).unwrap();
            rewrite(&mut checkpoint);
            pipeline = Pipeline::new(config, telemetry.clone()).unwrap();
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
    Run { rows: sink.rows, split, checkpoint_size, telemetry }
}

/// `rows` are `expected`, row by row: the same window, series, feature,
/// metric, sample count and verdict, and values equal to the bit or (with
/// `relative` above 0) within `relative` of the larger, at least 1.
fn assert_rows_agree(rows: &[WindowMetricRow], expected: &[WindowMetricRow], relative: f64, what: &str) {
    assert_eq!(rows.len(), expected.len(), "{what}: row count");
    for (a, b) in rows.iter().zip(expected) {
        let close = a.value.to_bits() == b.value.to_bits()
            || (relative > 0.0 && (a.value - b.value).abs() <= relative * a.value.abs().max(b.value.abs()).max(1.0));
        assert!(
            a.model == b.model
                && a.segment == b.segment
                && a.window_start_ms == b.window_start_ms
                && a.feature == b.feature
                && a.metric == b.metric
                && close
                && a.sample_count == b.sample_count
                && a.drifted == b.drifted,
            "{what}:\n{a:?}\n{b:?}"
        );
    }
}

#[test]
fn a_restored_pipeline_emits_exactly_the_rows_of_an_uninterrupted_one() {
    let (uninterrupted, _) = run(None);
    assert!(uninterrupted.iter().any(|r| r.metric == "accuracy"), "labels joined");
    assert!(uninterrupted.iter().any(|r| &*r.segment == "channel=mobile"), "segments");
    for stop_at in [1, 5, 12, 20, 25] {
        let (restored, size) = run(Some(stop_at));
        assert!(size > 0);
        // Bit for bit, NaN included.
        assert_rows_agree(&restored, &uninterrupted, 0.0, &format!("stopped after batch {stop_at}"));
    }
}

fn sample_bytes() -> Vec<u8> {
    let pipeline = Pipeline::new(&config(), Arc::new(Telemetry::default())).unwrap();
    let mut offsets = Offsets::new();
    offsets.entry("predictions".to_string()).or_default().insert(0, 42);
    pipeline.encode_checkpoint(&offsets, None, &BTreeMap::new(), None).unwrap()
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
    assert_eq!(names(dir.path()).len(), KEEP + 1, "{:?}", names(dir.path()));
    assert!(names(dir.path()).contains(&NEWEST.to_string()));
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

/// Checkpoints deleted by hand (or lost with their directory's newest
/// entries) leave a run to fall back as past a damaged one: the group's
/// committed offsets may be the lost checkpoint's (docs/DURABILITY.md).
#[test]
fn a_newer_checkpoint_that_is_gone_counts_as_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = CheckpointStore::open(dir.path()).unwrap();
    let bytes = sample_bytes();
    let paths: Vec<PathBuf> = (0..3).map(|_| store.write(&bytes).unwrap()).collect();
    let loaded = CheckpointStore::open(dir.path()).unwrap().load_latest().unwrap().unwrap();
    assert_eq!((loaded.path.as_path(), loaded.skipped.len()), (paths[2].as_path(), 0));
    fs::remove_file(&paths[2]).unwrap();
    let loaded = CheckpointStore::open(dir.path()).unwrap().load_latest().unwrap().unwrap();
    assert_eq!(loaded.path, paths[1]);
    assert_eq!(loaded.skipped, ["checkpoint 3 was written and is gone"]);
}

/// The fixture's baseline rebuilt with other bins: `amount` and `score`
/// with every other bin edge (half as many bins), `tenure` unchanged.
fn rebinned_baseline(dir: &Path) -> PathBuf {
    let mut baseline: serde_json::Value = serde_json::from_slice(&fs::read(fixture_baseline()).unwrap()).unwrap();
    let merge = |profile: &mut serde_json::Value| {
        let edges: Vec<f64> = serde_json::from_value(profile["bin_edges"].clone()).unwrap();
        let proportions: Vec<f64> = serde_json::from_value(profile["bin_proportions"].clone()).unwrap();
        let kept: Vec<f64> = edges.iter().skip(1).step_by(2).copied().collect();
        let merged: Vec<f64> = proportions.chunks(2).map(|pair| pair.iter().sum()).collect();
        assert_eq!(merged.len(), kept.len() + 1);
        profile["bin_edges"] = serde_json::json!(kept);
        profile["bin_proportions"] = serde_json::json!(merged);
    };
    merge(&mut baseline["features"]["amount"]);
    merge(&mut baseline["score"]);
    let path = dir.join("rebinned.json");
    fs::write(&path, serde_json::to_vec(&baseline).unwrap()).unwrap();
    path
}

/// Row identity and every value, bit for bit.
fn row_key(r: &WindowMetricRow) -> String {
    let bits = |x: Option<f64>| x.map(f64::to_bits);
    format!(
        "{} {} {} {} {:?} {} {} {:?} {:?} {:?} {:?} {}",
        r.model,
        r.model_version,
        r.segment,
        r.window_start_ms,
        r.feature,
        r.metric,
        r.value.to_bits(),
        bits(r.baseline),
        bits(r.threshold),
        bits(r.p_value),
        r.drifted,
        r.sample_count
    )
}

fn assert_same_rows(restored: &[WindowMetricRow], expected: &[WindowMetricRow], what: &str) {
    assert_eq!(restored.len(), expected.len(), "{what}: row count");
    for (a, b) in restored.iter().zip(expected) {
        assert_eq!(row_key(a), row_key(b), "{what}");
    }
}

/// A baseline added, removed or rebuilt with other bins between runs:
/// the restored windows are re-attached to the new baseline and, as these
/// windows keep their values (fewer than 1024 each), re-counted into its
/// bins, so every row is the one a run with the new config from the start
/// makes. (Before re-attaching, the first event after restoring panicked
/// with an index out of bounds.)
#[test]
fn a_changed_baseline_reattaches_restored_windows() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = fixture_baseline();
    let rebinned = rebinned_baseline(dir.path());
    let with = |baseline: Option<&Path>| config_with("5m", baseline, "binary_classification");
    let cases = [
        ("baseline added", with(None), with(Some(&fixture))),
        ("baseline removed", with(Some(&fixture)), with(None)),
        ("rebuilt with other bins", with(Some(&fixture)), with(Some(&rebinned))),
        ("same baseline", with(Some(&fixture)), with(Some(&fixture))),
    ];
    for (what, before, after) in &cases {
        for stop_at in [5, 12, 20] {
            // What the new config makes from the start, after that batch.
            let expected = run_across(after, Some(stop_at), None, false);
            assert!(expected.rows[expected.split..].iter().any(|r| r.metric == "accuracy"), "{what}: labels joined");
            for unstamped in [false, true] {
                let restored = run_across(before, Some(stop_at), Some(after), unstamped);
                let what = format!("{what}, stopped after batch {stop_at}, unstamped {unstamped}");
                assert_same_rows(&restored.rows[restored.split..], &expected.rows[expected.split..], &what);
                let telemetry = &restored.telemetry;
                let reattached = telemetry.checkpoint_windows_reattached.load(Ordering::Relaxed);
                if before.models[0].baseline == after.models[0].baseline {
                    assert_eq!(reattached, 0, "{what}: nothing to re-attach");
                } else {
                    assert!(reattached > 0, "{what}: re-attached windows counted");
                }
                assert_eq!(telemetry.checkpoint_windows_dropped.load(Ordering::Relaxed), 0, "{what}");
            }
        }
    }
}

/// Windows too big to keep their values (10 minutes, ~1200 events; the
/// restore after 1,164) cannot
/// be re-counted into a rebuilt baseline's bins: they keep every row but
/// the binned drift rows of the columns whose bins changed (`amount`,
/// `score`); `tenure`, binned as before, keeps all of its rows.
#[test]
fn windows_that_cannot_be_recounted_leave_out_only_their_binned_rows() {
    let dir = tempfile::tempdir().unwrap();
    let before = config_with("10m", Some(&fixture_baseline()), "binary_classification");
    let after = config_with("10m", Some(&rebinned_baseline(dir.path())), "binary_classification");
    let expected = run_across(&after, Some(12), None, false);
    let restored = run_across(&before, Some(12), Some(&after), false);
    assert!(restored.telemetry.checkpoint_windows_reattached.load(Ordering::Relaxed) > 0);
    let (expected, restored) = (&expected.rows[expected.split..], &restored.rows[restored.split..]);
    let restored_keys: std::collections::HashSet<String> = restored.iter().map(row_key).collect();
    let expected_keys: std::collections::HashSet<String> = expected.iter().map(row_key).collect();
    assert!(restored_keys.is_subset(&expected_keys), "every row restored is the new config's row");
    let missing: Vec<&WindowMetricRow> = expected.iter().filter(|r| !restored_keys.contains(&row_key(r))).collect();
    assert!(!missing.is_empty(), "the re-attached big windows lack their binned rows");
    for row in &missing {
        let binned = matches!(row.metric, "psi" | "jensen_shannon" | "hellinger" | "out_of_range_rate")
            && row.feature.as_deref() == Some("amount")
            || row.metric == "score_psi" && row.feature.is_none();
        assert!(binned, "only binned rows of re-binned columns are left out: {row:?}");
    }
    assert!(missing.iter().any(|r| r.metric == "score_psi"));
    assert!(restored.iter().any(|r| r.metric == "psi" && r.feature.as_deref() == Some("tenure")));
}

/// A model's task changed between runs: its windows and joins cannot be
/// used and are dropped (counted), and it runs on.
#[test]
fn a_changed_task_drops_the_models_windows() {
    let before = config_with("5m", None, "binary_classification");
    let after = config_with("5m", None, "regression");
    for unstamped in [false, true] {
        let run = run_across(&before, Some(5), Some(&after), unstamped);
        assert!(run.telemetry.checkpoint_windows_dropped.load(Ordering::Relaxed) > 0, "unstamped {unstamped}");
        assert!(run.rows.iter().any(|r| r.metric == "mae"), "regression rows after the restore");
    }
}

/// A baseline that types a feature differently than the checkpoint (which
/// typed it from events) decides its type; its values so far in open
/// windows are dropped, the other features are untouched.
#[test]
fn a_baseline_retyping_a_feature_wins_over_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let mut baseline: serde_json::Value = serde_json::from_slice(&fs::read(fixture_baseline()).unwrap()).unwrap();
    baseline["features"]["tenure"] = serde_json::json!({
        "type": "categorical", "count": 10, "missing": 0, "missing_rate": 0.0,
        "frequencies": {"664": 0.5}, "other": 0.5, "distinct": 2,
    });
    let path = dir.path().join("retyped.json");
    fs::write(&path, serde_json::to_vec(&baseline).unwrap()).unwrap();
    let before = config_with("5m", None, "binary_classification");
    let after = config_with("5m", Some(&path), "binary_classification");
    let rows = run_across(&before, Some(5), Some(&after), false).rows;
    let expected = run_across(&after, Some(5), None, false).rows;
    let amount = |rows: &[WindowMetricRow]| {
        rows.iter().filter(|r| r.feature.as_deref() == Some("amount")).map(row_key).collect::<Vec<_>>()
    };
    assert_eq!(amount(&rows), amount(&expected), "amount is unaffected");
    assert!(rows.iter().any(|r| r.feature.as_deref() == Some("tenure") && r.metric == "unseen_rate"));
}

/// The fixture's events with a shadow version `s` scoring every event
/// under the same event id (wrong where the champion is right on every
/// third), the shadow's prediction right after the champion's.
fn shadowed_events() -> (Vec<String>, Vec<String>) {
    let (champion, labels) = events();
    let mut predictions = Vec::new();
    for (i, line) in champion.into_iter().enumerate() {
        let mut shadow: serde_json::Value = serde_json::from_str(&line).unwrap();
        shadow["model_version"] = serde_json::json!("s");
        if i % 3 == 0 {
            shadow["prediction"] = serde_json::json!(1 - shadow["prediction"].as_i64().unwrap());
        }
        predictions.push(line);
        predictions.push(shadow.to_string());
    }
    (predictions, labels)
}

/// Pending shadow joins go into the checkpoint by version name and come
/// back: a restored pipeline with a shadow emits the rows of one that never
/// stopped, the shadow's performance rows included.
#[test]
fn shadow_joins_round_trip_through_a_checkpoint() {
    let config = Config::from_yaml_str(
        "windows: {size: 5m, allowed_lateness: 30s, label_horizon: 10m}\n\
         models: [{name: shop, task: binary_classification, shadow_versions: [s]}]\n",
        "test.yaml",
    )
    .unwrap();
    let key = |r: &WindowMetricRow| {
        (r.window_start_ms, r.model_version.to_string(), r.segment.to_string(), r.feature.clone(), r.metric)
    };
    let expected = run_events(&config, None, None, false, shadowed_events()).rows;
    let shadow_labelled: f64 = expected
        .iter()
        .filter(|r| r.metric == "labeled_count" && &*r.model_version == "s" && r.segment.is_empty())
        .map(|r| r.value)
        .sum();
    assert!(shadow_labelled > 100.0, "the shadow's predictions joined labels: {shadow_labelled}");
    for stop_at in [3, 12, 25] {
        let restored = run_events(&config, Some(stop_at), Some(&config), false, shadowed_events()).rows;
        assert_eq!(restored.len(), expected.len(), "stopped after batch {stop_at}");
        for (a, b) in restored.iter().zip(&expected) {
            assert_eq!(key(a), key(b), "stopped after batch {stop_at}");
            assert_eq!(a.value.to_bits(), b.value.to_bits(), "stopped after batch {stop_at}: {a:?}");
        }
    }
    // A config without the shadow drops its pending joins, and nothing panics.
    let unshadowed = config_with("5m", None, "binary_classification");
    let run = run_events(&config, Some(12), Some(&unshadowed), false, shadowed_events());
    assert!(!run.rows.is_empty());
}

/// A prediction of model `shop` at `seconds` after 2026-11-26T10:00:00Z.
fn shop_prediction(id: usize, seconds: i64) -> String {
    format!(
        r#"{{"event_id":"w{id}","model":"shop","timestamp":{},"prediction":1,"score":0.5}}"#,
        1_795_687_200_000 + seconds * 1000
    )
}

/// Per-partition watermarks survive a checkpoint: partition 0 read ten
/// minutes ahead of partition 1 before the stop, partition 1's next events
/// are still not late after the restore. A checkpoint written before
/// per-partition watermarks (no partition clocks: its single watermark was
/// the largest event time seen) loads, and that watermark holds for every
/// partition: the same events are then late, as they were before.
#[test]
fn partition_watermarks_round_trip_through_a_checkpoint() {
    for legacy in [false, true] {
        let config = config_with("1m", None, "binary_classification");
        let telemetry = Arc::new(Telemetry::default());
        let mut pipeline = Pipeline::new(&config, telemetry.clone()).unwrap();
        let mut sink = MemorySink::default();
        let mut push = |pipeline: &mut Pipeline, partition: i32, ids: std::ops::Range<usize>, start: i64| {
            for (n, id) in ids.enumerate() {
                pipeline.decode_prediction(shop_prediction(id, start + n as i64).as_bytes(), &"p").unwrap();
            }
            pipeline.process_predictions(partition);
            pipeline.emit(&mut sink).unwrap();
        };
        push(&mut pipeline, 1, 0..10, 0);
        push(&mut pipeline, 0, 10..20, 600);
        let bytes = pipeline.encode_checkpoint(&Offsets::new(), None, &BTreeMap::new(), None).unwrap();
        let mut checkpoint = decode(Path::new("test"), &bytes).unwrap();
        let windows = &mut checkpoint.models[0].windows;
        assert_eq!(windows.partitions.len(), 2);
        if legacy {
            windows.partitions.clear();
            windows.label_partitions.clear();
            windows.max_event_time_ms = Some(1_795_687_200_000 + 609_000);
        }
        let mut pipeline = Pipeline::new(&config, telemetry.clone()).unwrap();
        assert_eq!(pipeline.restore(checkpoint.models, checkpoint.window_spec, checkpoint.counters), 1);
        push(&mut pipeline, 1, 20..30, 100);
        let late = pipeline.engine.counters.events_late;
        assert_eq!(late, if legacy { 10 } else { 0 }, "legacy: {legacy}");
    }
}

/// A model's windows as checkpoints before panes wrote them: whole open
/// windows (their performance inside) and late events per series.
#[derive(serde::Serialize)]
struct PrePaneWindows {
    max_event_time_ms: Option<i64>,
    max_label_time_ms: Option<i64>,
    partitions: BTreeMap<crate::window::PartitionId, crate::window::PartitionClock>,
    label_partitions: BTreeMap<crate::window::PartitionId, crate::window::PartitionClock>,
    open: BTreeMap<(i64, u32), crate::evaluate::WindowState>,
    awaiting_labels: BTreeMap<(i64, u32), crate::window::AwaitingLabels>,
    late_unreported: std::collections::HashMap<u32, u64>,
}

/// Rewrites a model's windows the way a checkpoint before panes held them.
fn to_pre_pane_format(windows: ModelWindows, spec: &WindowSpec) -> ModelWindows {
    let mut windows = windows;
    let mut open = BTreeMap::new();
    let copy: ModelWindows = rmp_serde::from_slice(&rmp_serde::to_vec_named(&windows).unwrap()).unwrap();
    let mut copy = copy;
    for (key, mut state) in copy.take_closable(spec, true, 10_000) {
        if let Some(performance) = windows.performance.remove(&key) {
            state.performance = performance;
        }
        open.insert(key, state);
    }
    let mut late_unreported = std::collections::HashMap::new();
    for ((series, _), late) in &windows.late_pending {
        *late_unreported.entry(*series).or_default() += late;
    }
    let old = PrePaneWindows {
        max_event_time_ms: windows.max_event_time_ms,
        max_label_time_ms: windows.max_label_time_ms,
        partitions: windows.partitions.clone(),
        label_partitions: windows.label_partitions.clone(),
        open,
        awaiting_labels: std::mem::take(&mut windows.awaiting_labels),
        late_unreported,
    };
    let restored: ModelWindows = rmp_serde::from_slice(&rmp_serde::to_vec_named(&old).unwrap()).unwrap();
    assert!(restored.panes.is_empty() && restored.open_len() == old.open.len());
    restored
}

/// Checkpoints written before windows were kept as panes (whole open
/// windows under `open`) still restore, for tumbling and for hopping
/// windows: the rows are those of a run that never stopped (values
/// within 1e-12: the restored part and the rest of a window are merged
/// rather than added in one pass).
#[test]
fn a_checkpoint_from_before_panes_restores_its_open_windows() {
    for size in ["5m", "{size: 10m, slide: 5m}"] {
        let windows = if size.starts_with('{') { size.to_string() } else { format!("{{size: {size}}}") };
        let yaml = |w: &str| {
            let w = w.trim_start_matches('{').trim_end_matches('}');
            Config::from_yaml_str(
                &format!(
                    "windows: {{{w}, allowed_lateness: 30s, label_horizon: 10m}}\n\
                     models: [{{name: shop, task: binary_classification, baseline: {}}}]\n",
                    fixture_baseline().display()
                ),
                "test.yaml",
            )
            .unwrap()
        };
        let config = yaml(&windows);
        let uninterrupted = run_events(&config, None, None, false, events()).rows;
        let to_pre_panes = |checkpoint: &mut Checkpoint| {
            for model in &mut checkpoint.models {
                let windows = std::mem::take(&mut model.windows);
                model.windows = to_pre_pane_format(windows, &checkpoint.window_spec);
            }
        };
        for stop_at in [5, 12] {
            let rows = run_events_with(&config, Some(stop_at), Some(&config), &to_pre_panes, events()).rows;
            let what = format!("windows {windows}, stopped after batch {stop_at}");
            assert_rows_agree(&rows, &uninterrupted, 1e-12, &what);
        }
    }
}

/// Joins on disk: the join store is checkpointed beside the file (its
/// memtables flushed, its files linked), the stopped pipeline's store goes
/// on taking writes after the checkpoint (as a crashed daemon's would have),
/// and the restored pipeline, over the store restored from the checkpoint,
/// emits exactly the rows of an uninterrupted run with the joins in memory.
/// A checkpoint file of a join on disk holds the join's counts, not its
/// entries.
#[test]
fn joins_on_disk_restore_from_the_store_checkpoint_to_the_same_rows() {
    use crate::join::store::JoinStore;
    let config = config();
    let (uninterrupted, _) = run(None);
    let (predictions, labels) = events();
    let batch = 97;
    let batches = predictions.len().div_ceil(batch) + 2;
    for stop_at in [3, 12, 25] {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("joins");
        let telemetry = Arc::new(Telemetry::default());
        let start = |telemetry: &Arc<Telemetry>, store: &Arc<JoinStore>| {
            let mut pipeline = Pipeline::new(&config, telemetry.clone()).unwrap();
            pipeline.engine.use_join_store(store, config.pipeline.max_pending_joins);
            pipeline
        };
        let mut pipeline = start(&telemetry, &JoinStore::open_empty(&live, 16 << 20).unwrap());
        let mut sink = MemorySink::default();
        let feed = |pipeline: &mut Pipeline, sink: &mut MemorySink, b: usize| {
            for line in predictions.iter().skip(b * batch).take(batch) {
                pipeline.decode_prediction(line.as_bytes(), &"p").unwrap();
            }
            for line in labels.iter().skip((b * batch).saturating_sub(150)).take(if b == 0 { 0 } else { batch }) {
                pipeline.decode_label(line.as_bytes(), &"l").unwrap();
            }
            pipeline.process(sink).unwrap();
        };
        for b in 0..batches {
            if b == stop_at {
                let name = join_store_name(7);
                pipeline.engine.checkpoint_join_store(&dir.path().join(&name)).unwrap();
                let bytes = pipeline.encode_checkpoint(&Offsets::new(), None, &BTreeMap::new(), Some(&name)).unwrap();
                let checkpoint = decode(Path::new("test"), &bytes).unwrap();
                assert_eq!(checkpoint.join_store.as_deref(), Some(name.as_str()));
                assert!(checkpoint.models[0].disk_join.is_some());
                assert_eq!(checkpoint.models[0].join.pending(), 0, "the entries are in the store");
                // The old pipeline reads on after its checkpoint, then stops.
                let mut lost = MemorySink::default();
                feed(&mut pipeline, &mut lost, b);
                feed(&mut pipeline, &mut lost, b + 1);
                // (Its recent entries reach the live store, which a
                // restart must not see.)
                pipeline.engine.checkpoint_join_store(&dir.path().join("later")).unwrap();
                drop(pipeline);
                let store = JoinStore::restore(&dir.path().join(&name), &live, 16 << 20).unwrap();
                pipeline = start(&telemetry, &store);
                assert_eq!(pipeline.restore(checkpoint.models, checkpoint.window_spec, checkpoint.counters), 1);
            }
            feed(&mut pipeline, &mut sink, b);
        }
        pipeline.finish(&mut sink).unwrap();
        assert_rows_agree(&sink.rows, &uninterrupted, 0.0, &format!("joins on disk, stopped after batch {stop_at}"));
    }
}
