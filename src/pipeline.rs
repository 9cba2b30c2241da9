//! The pipeline: one model registry, one decoder and one engine wired
//! together, fed raw payloads by a driver and flushed once per micro-batch.
//! Both drivers (Kafka `run`, file `replay`) use it, so they share every
//! behaviour but where the bytes come from.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::config::Config;
use crate::decode::{Decoder, Invalid, LabelBatch, PredictionBatch};
use crate::engine::Engine;
use crate::join::JoinCheckpoint;
use crate::model::ModelRegistry;
use crate::output::WindowSink;
use crate::telemetry::Telemetry;
use crate::window::PartitionId;
use crate::window_metrics::WindowMetricRow;

/// Topic names used for counting when events come from files.
pub const PREDICTIONS: &str = "predictions";
pub const LABELS: &str = "labels";

pub struct Pipeline {
    pub registry: ModelRegistry,
    pub decoder: Decoder,
    pub engine: Engine,
    pub telemetry: Arc<Telemetry>,
    /// `pipeline.max_future_skew`: the daemon's drivers bound event times by
    /// their clock plus this (see [`Decoder::accept_times_before`]).
    pub max_future_skew: std::time::Duration,
    predictions_topic: String,
    labels_topic: String,
    rows: Vec<WindowMetricRow>,
    /// Labels run through the engine per model (in this process).
    labels_seen: Vec<u64>,
    reported: crate::engine::EngineCounters,
    reported_join: crate::join::JoinCounters,
    reported_decode: crate::decode::DecodeCounters,
}

impl Pipeline {
    pub fn new(config: &Config, telemetry: Arc<Telemetry>) -> Result<Pipeline, String> {
        let mut registry = ModelRegistry::from_config(config);
        for (id, model) in config.models.iter().enumerate() {
            let Some(path) = &model.baseline else { continue };
            let baseline = crate::baseline::Baseline::load(path).map_err(|e| format!("models[{id}].baseline: {e}"))?;
            if baseline.model != model.name {
                tracing::warn!(model = %model.name, baseline_model = %baseline.model, "baseline was built for another model name");
            }
            registry.get_mut(id as u32).attach_reference(crate::model::reference::ModelReference::new(baseline));
        }
        let decoder = Decoder::new(&registry, &config.pipeline)?;
        let engine = Engine::new(config, &registry);
        let (predictions_topic, labels_topic) = match &config.kafka {
            Some(k) => (k.predictions_topic.clone(), k.labels_topic.clone()),
            None => (PREDICTIONS.to_string(), LABELS.to_string()),
        };
        Ok(Pipeline {
            registry,
            decoder,
            engine,
            telemetry,
            max_future_skew: config.pipeline.max_future_skew,
            predictions_topic,
            labels_topic,
            rows: Vec::new(),
            labels_seen: vec![0; config.models.len()],
            reported: Default::default(),
            reported_join: Default::default(),
            reported_decode: Default::default(),
        })
    }

    /// Decodes one prediction payload; an invalid one is counted and logged
    /// (rate-limited) and returned so the caller can dead-letter it.
    /// Encodes a checkpoint of the pipeline's state (dictionaries, windows,
    /// joins, counters) with the caller's offsets, alert state and output
    /// lengths. Call between micro-batches.
    pub fn encode_checkpoint(
        &self,
        offsets: &crate::checkpoint::Offsets,
        alerts: Option<&crate::rules::lifecycle::AlertSnapshot>,
        outputs: &std::collections::BTreeMap<String, crate::output::recovery::OutputPosition>,
        join_store: Option<&str>,
    ) -> Result<Vec<u8>, crate::checkpoint::CheckpointError> {
        let models = self
            .registry
            .models
            .iter()
            .enumerate()
            .map(|(id, model)| {
                let (windows, join) = self.engine.model_state(id);
                crate::checkpoint::ModelRef {
                    name: &model.name,
                    series_keys: &model.series_keys,
                    series: &model.series,
                    classes: &model.classes,
                    features: &model.features,
                    windows,
                    join,
                    disk_join: join.disk_state(),
                    stamp: crate::checkpoint::ModelStamp {
                        task: model.task,
                        baseline: model.reference.as_ref().map(|r| r.stamp.clone()),
                    },
                    shadow_joins: model
                        .config
                        .shadow_versions
                        .iter()
                        .zip(self.engine.shadow_joins(id))
                        .map(|(version, join)| crate::checkpoint::ShadowJoinRef {
                            model_version: version,
                            join,
                            disk_join: join.disk_state(),
                        })
                        .collect(),
                }
            })
            .collect();
        crate::checkpoint::encode(&crate::checkpoint::CheckpointRef {
            created_at_ms: chrono::Utc::now().timestamp_millis(),
            window_spec: *self.engine.spec(),
            counters: &self.engine.counters,
            models,
            offsets,
            alerts,
            outputs,
            join_store,
        })
    }

    /// Puts back the state of a checkpoint's models, fitting it to the
    /// current config (which may have changed between runs; none of it
    /// panics, every loss is logged and counted):
    ///
    /// - changed `windows` settings: the checkpointed windows and joins
    ///   cannot be used and are dropped;
    /// - a model no longer configured: dropped; a new model starts empty;
    /// - a model whose `task` changed: its windows and joins are dropped;
    /// - a model whose baseline changed (added, removed, rebuilt): its open
    ///   windows are re-attached to the new one ([`WindowState::reattach`]);
    ///   windows awaiting labels and the join do not depend on it;
    /// - a version no longer in the model's `shadow_versions`: its pending
    ///   shadow joins are dropped (logged); a new shadow starts empty;
    /// - a feature the baseline now types differently: the baseline's type
    ///   wins, the feature's values so far in open windows are dropped.
    ///
    /// Returns the number of models restored.
    ///
    /// [`WindowState::reattach`]: crate::evaluate::WindowState::reattach
    pub fn restore(
        &mut self,
        models: Vec<crate::checkpoint::ModelCheckpoint>,
        spec: crate::window::WindowSpec,
        counters: crate::engine::EngineCounters,
    ) -> usize {
        self.engine.counters = counters.clone();
        self.reported = counters;
        // Joins of the checkpoint on disk: whichever is not restored below
        // (a dropped model or shadow, changed windows) is deleted from the
        // store afterwards.
        let checkpointed_prefixes: Vec<u64> = models
            .iter()
            .flat_map(|m| std::iter::once(&m.disk_join).chain(m.shadow_joins.iter().map(|s| &s.disk_join)))
            .filter_map(|state| state.as_ref().map(|state| state.store_prefix))
            .collect();
        let restored = self.restore_models(models, spec);
        self.engine.delete_unused_joins(&checkpointed_prefixes);
        restored
    }

    fn restore_models(
        &mut self,
        models: Vec<crate::checkpoint::ModelCheckpoint>,
        spec: crate::window::WindowSpec,
    ) -> usize {
        let windows_of =
            |m: &crate::checkpoint::ModelCheckpoint| (m.windows.open_len() + m.windows.awaiting_labels.len()) as u64;
        if spec != *self.engine.spec() {
            let dropped: u64 = models.iter().map(windows_of).sum();
            tracing::warn!(
                checkpoint = ?spec,
                config = ?self.engine.spec(),
                windows = dropped,
                "the windows settings changed since the checkpoint: its open windows and pending joins are dropped"
            );
            self.telemetry.checkpoint_windows_dropped.fetch_add(dropped, Ordering::Relaxed);
            return 0;
        }
        let mut restored = 0;
        for model in models {
            let Some(id) = self.registry.id(&model.name) else {
                let dropped = windows_of(&model);
                tracing::warn!(
                    model = %model.name,
                    windows = dropped,
                    "the checkpoint has a model that is no longer configured; its windows are dropped"
                );
                self.telemetry.checkpoint_windows_dropped.fetch_add(dropped, Ordering::Relaxed);
                continue;
            };
            let task = self.registry.get(id).task;
            let classification = self.registry.get(id).is_classification();
            let task_changed = match &model.stamp {
                Some(stamp) => stamp.task != task,
                // Older checkpoints: the prediction summaries tell.
                None => model
                    .windows
                    .open_states()
                    .any(|w| matches!(w.prediction, crate::evaluate::PredictionSummary::Classes(_)) != classification),
            };
            let dropped = windows_of(&model);
            let state = self.registry.get_mut(id);
            state.restore_dictionaries(model.series_keys, model.series, model.classes, model.features);
            restored += 1;
            if task_changed {
                tracing::warn!(
                    model = %model.name,
                    checkpoint_task = ?model.stamp.as_ref().map(|s| s.task),
                    task = ?task,
                    windows = dropped,
                    "the model's task changed since the checkpoint: its open windows, windows awaiting labels and pending joins are dropped"
                );
                self.telemetry.checkpoint_windows_dropped.fetch_add(dropped, Ordering::Relaxed);
                continue;
            }
            let mut windows = model.windows;
            windows.migrate_whole_windows(self.engine.spec());
            retype_features(state, &mut windows);
            let old = model.stamp.as_ref().map(|s| s.baseline.as_ref());
            reattach_windows(state, old, &mut windows, &self.telemetry);
            self.engine.restore_model(id as usize, windows, JoinCheckpoint::new(model.join, model.disk_join));
            for shadow in model.shadow_joins {
                let lane = self.registry.get(id).config.shadow_lane(&shadow.model_version);
                if !self.engine.restore_shadow_join(
                    id as usize,
                    lane,
                    JoinCheckpoint::new(shadow.join, shadow.disk_join),
                ) {
                    tracing::warn!(
                        model = %model.name,
                        model_version = %shadow.model_version,
                        "the checkpoint has pending joins of a version that is no longer a shadow; they are dropped"
                    );
                }
            }
        }
        self.reported_join = self.engine.join_counters();
        restored
    }

    pub fn decode_prediction(&mut self, bytes: &[u8], location: &dyn std::fmt::Display) -> Result<(), Invalid> {
        self.decoder.push_prediction(&mut self.registry, bytes).inspect_err(|invalid| {
            self.telemetry.invalid_event(&self.predictions_topic, &location.to_string(), invalid)
        })
    }

    pub fn decode_label(&mut self, bytes: &[u8], location: &dyn std::fmt::Display) -> Result<(), Invalid> {
        self.decoder
            .push_label(&mut self.registry, bytes)
            .inspect_err(|invalid| self.telemetry.invalid_event(&self.labels_topic, &location.to_string(), invalid))
    }

    /// Runs the buffered predictions, read from predictions partition
    /// `partition`, through the engine.
    pub fn process_predictions(&mut self, partition: PartitionId) {
        let batches = self.decoder.finish_predictions();
        self.push_prediction_batches(&batches, partition);
    }

    /// Runs the buffered labels, read from labels partition `partition`,
    /// through the engine.
    pub fn process_labels(&mut self, partition: PartitionId) {
        let batches = self.decoder.finish_labels();
        self.push_label_batches(&batches, partition);
    }

    /// Runs decoded prediction batches of one partition through the engine.
    pub fn push_prediction_batches(&mut self, batches: &[PredictionBatch], partition: PartitionId) {
        for batch in batches {
            let model = &self.registry.get(batch.model).name;
            self.telemetry.add_events(&self.predictions_topic, model, batch.len() as u64);
            self.engine.push_predictions(&self.registry, batch, partition, &mut self.rows);
        }
    }

    /// Takes in a lane's aggregate of a batch of predictions (see
    /// [`Engine::apply_lane_output`]); `batch` in this pipeline's ids.
    pub fn apply_lane_output(&mut self, batch: Option<&PredictionBatch>, output: crate::engine::lane::LaneOutput) {
        if let Some(batch) = batch {
            let model = &self.registry.get(batch.model).name;
            self.telemetry.add_events(&self.predictions_topic, model, batch.len() as u64);
        }
        self.engine.apply_lane_output(&self.registry, batch, output, &mut self.rows);
    }

    /// The predictions topic's name as telemetry counts it.
    pub fn predictions_topic(&self) -> &str {
        &self.predictions_topic
    }

    /// Runs decoded label batches of one partition through the engine.
    pub fn push_label_batches(&mut self, batches: &[LabelBatch], partition: PartitionId) {
        for batch in batches {
            let model = &self.registry.get(batch.model).name;
            self.telemetry.add_events(&self.labels_topic, model, batch.len() as u64);
            self.labels_seen[batch.model as usize] += batch.len() as u64;
            self.engine.push_labels(&self.registry, batch, partition, &mut self.rows);
        }
    }

    /// The driver's wall clock tick (see [`Engine::advance_clock`]); rows of
    /// windows that close (idle partitions, quiet models) are written.
    pub fn advance_clock(
        &mut self,
        now_ms: i64,
        read_until_ms: Option<i64>,
        sink: &mut dyn WindowSink,
    ) -> io::Result<usize> {
        self.engine.advance_clock(&self.registry, now_ms, read_until_ms, &mut self.rows);
        self.emit(sink)
    }

    /// A partition has ended (see [`Engine::partition_idle`]); rows of
    /// windows that close are written.
    pub fn partition_ended(
        &mut self,
        partition: PartitionId,
        labels: bool,
        sink: &mut dyn WindowSink,
    ) -> io::Result<usize> {
        self.engine.partition_idle(&self.registry, partition, labels, &mut self.rows);
        self.emit(sink)
    }

    /// Labels run through the engine so far, per model (in this process).
    pub fn labels_seen(&self) -> &[u64] {
        &self.labels_seen
    }

    /// Sets whether a model's labels hold its performance rows (see
    /// [`Engine::set_labels_holding`]); rows a release closes are written.
    pub fn set_labels_holding(&mut self, model: usize, hold: bool, sink: &mut dyn WindowSink) -> io::Result<usize> {
        self.engine.set_labels_holding(&self.registry, model, hold, &mut self.rows);
        self.emit(sink)
    }

    /// Processes everything buffered, as read from partition 0 of each
    /// stream, and writes the rows of closed windows.
    pub fn process(&mut self, sink: &mut dyn WindowSink) -> io::Result<usize> {
        self.process_predictions(0);
        self.process_labels(0);
        self.emit(sink)
    }

    /// End of input: closes every window (anything still buffered counts
    /// as partition 0's).
    pub fn finish(&mut self, sink: &mut dyn WindowSink) -> io::Result<usize> {
        self.process_predictions(0);
        self.process_labels(0);
        self.engine.finish(&self.registry, &mut self.rows);
        self.emit(sink)
    }

    /// Writes pending rows to `sink` and publishes counters.
    pub fn emit(&mut self, sink: &mut dyn WindowSink) -> io::Result<usize> {
        let written = self.rows.len();
        if written > 0 {
            sink.write_rows(&self.rows)?;
            self.rows.clear();
        }
        self.publish_counters();
        Ok(written)
    }

    fn publish_counters(&mut self) {
        let t = &self.telemetry;
        let now = self.engine.counters.clone();
        t.events_late.fetch_add(now.events_late - self.reported.events_late, Ordering::Relaxed);
        t.windows_closed.fetch_add(now.windows_closed - self.reported.windows_closed, Ordering::Relaxed);
        t.labels_late.fetch_add(now.labels_late - self.reported.labels_late, Ordering::Relaxed);
        t.categories_over_cap.fetch_add(now.categories_over_cap - self.reported.categories_over_cap, Ordering::Relaxed);
        self.reported = now;
        let join = self.engine.join_counters();
        t.join_predictions_expired
            .fetch_add(join.predictions_expired - self.reported_join.predictions_expired, Ordering::Relaxed);
        t.join_labels_unmatched
            .fetch_add(join.labels_unmatched - self.reported_join.labels_unmatched, Ordering::Relaxed);
        t.join_evicted.fetch_add(join.evicted - self.reported_join.evicted, Ordering::Relaxed);
        t.duplicate_predictions
            .fetch_add(join.duplicate_predictions - self.reported_join.duplicate_predictions, Ordering::Relaxed);
        t.duplicate_labels.fetch_add(join.duplicate_labels - self.reported_join.duplicate_labels, Ordering::Relaxed);
        self.reported_join = join;
        t.join_pending.store(self.engine.pending_joins() as i64, Ordering::Relaxed);
        if let Some(store) = self.engine.join_store() {
            t.join_store_bytes.store(store.disk_bytes(), Ordering::Relaxed);
        }
        let mut watermarks = std::collections::BTreeMap::new();
        for (id, model) in self.registry.models.iter().enumerate() {
            for (partition, watermark) in self.engine.partition_watermarks(id) {
                watermarks.insert((model.name.to_string(), partition), watermark);
            }
        }
        t.set_watermarks(watermarks);
        let decode = self.decoder.counters.clone();
        t.features_over_cap
            .fetch_add(decode.features_over_cap - self.reported_decode.features_over_cap, Ordering::Relaxed);
        t.segments_over_cap
            .fetch_add(decode.segments_over_cap - self.reported_decode.segments_over_cap, Ordering::Relaxed);
        t.versions_over_cap
            .fetch_add(decode.versions_over_cap - self.reported_decode.versions_over_cap, Ordering::Relaxed);
        t.feature_type_errors.fetch_add(decode.type_errors - self.reported_decode.type_errors, Ordering::Relaxed);
        self.reported_decode = decode;
    }
}

/// A checkpoint's features keep their ids, but the configured baseline
/// decides their type (as it does without a checkpoint): a feature it
/// types differently takes the baseline's type, and its summaries in the
/// open windows, of the other type, are dropped (logged).
fn retype_features(model: &mut crate::model::ModelState, windows: &mut crate::window::ModelWindows) {
    let mut retyped = Vec::new();
    for (id, feature) in model.features.iter_mut().enumerate() {
        if let Some(reference) = model.feature_refs.get(id).and_then(Option::as_deref)
            && reference.kind() != feature.kind
        {
            feature.kind = reference.kind();
            retyped.push(id);
        }
    }
    if retyped.is_empty() {
        return;
    }
    for (_, window) in windows.open_states_mut() {
        for &id in &retyped {
            if let Some(state) = window.features.get_mut(id) {
                *state = None;
            }
        }
    }
    let names: Vec<&str> = retyped.iter().map(|&id| &*model.features[id].name).collect();
    tracing::warn!(
        model = %model.name,
        features = ?names,
        "the baseline types these features differently than the checkpoint did: the baseline's type is used and their values so far in open windows are dropped"
    );
}

/// Which binned columns of `windows` the model's current baseline counts
/// differently than the one they began under: by the stamps (`old`:
/// `None` for a checkpoint without one) and, whatever the stamps say, by
/// the shape of the counts.
fn rebin(
    model: &crate::model::ModelState,
    old: Option<Option<&crate::model::reference::BaselineStamp>>,
    windows: &crate::window::ModelWindows,
) -> crate::evaluate::Rebin {
    use crate::evaluate::{PredictionSummary, Rebin};
    use crate::model::reference::FeatureReference;
    let new = model.reference.as_ref().map(|r| &r.stamp);
    let changed = |column: &str| match old {
        Some(old) => old.and_then(|s| s.binning.get(column)) != new.and_then(|s| s.binning.get(column)),
        None => false,
    };
    let mut rebin = Rebin {
        features: model.features.iter().map(|f| changed(&format!("features.{}", f.name))).collect(),
        score: changed("score"),
        prediction: changed("prediction"),
    };
    let bins = |reference: Option<&FeatureReference>| match reference {
        Some(FeatureReference::Numeric(r)) => r.proportions.len(),
        _ => 0,
    };
    let reference = model.reference.as_deref();
    let score_bins = bins(reference.and_then(|r| r.score.as_ref()));
    let prediction_bins = bins(reference.and_then(|r| r.prediction.as_ref()));
    for window in windows.open_states() {
        for (id, state) in window.features.iter().enumerate() {
            if let Some(state) = state
                && !state.bins_lost
                && state.reference_bins.len() != bins(model.feature_refs.get(id).and_then(Option::as_deref))
                && let Some(flag) = rebin.features.get_mut(id)
            {
                *flag = true;
            }
        }
        rebin.score |= !window.score_bins_lost && window.score_bins.len() != score_bins;
        let expected = match window.prediction {
            PredictionSummary::Values(_) => prediction_bins,
            PredictionSummary::Classes(_) => 0,
        };
        rebin.prediction |= !window.prediction_bins_lost && window.prediction_bins.len() != expected;
    }
    rebin
}

/// Re-attaches a model's restored open windows to its current baseline
/// when that changed since the checkpoint (`old`: the checkpoint's
/// baseline stamp, `None` when the checkpoint has none), logged and
/// counted.
fn reattach_windows(
    model: &crate::model::ModelState,
    old: Option<Option<&crate::model::reference::BaselineStamp>>,
    windows: &mut crate::window::ModelWindows,
    telemetry: &Telemetry,
) {
    let new = model.reference.as_ref().map(|r| &r.stamp);
    let rebin = rebin(model, old, windows);
    let replaced = old.is_some_and(|old| old.map(|s| &s.sha256) != new.map(|s| &s.sha256));
    if !replaced && !rebin.any() {
        return;
    }
    let (mut recounted, mut unbinned) = (0u64, 0u64);
    for (series, window) in windows.open_states_mut() {
        let whole_model = model.series.get(series as usize).is_some_and(|s| s.whole_model.is_none());
        if window.reattach(model, &rebin, whole_model) {
            recounted += 1;
        } else {
            unbinned += 1;
        }
    }
    let name = |stamp: Option<&crate::model::reference::BaselineStamp>| {
        stamp.map_or_else(|| "none".to_string(), |s| s.short().to_string())
    };
    let checkpoint_baseline = match old {
        Some(old) => name(old),
        None => "unrecorded".to_string(),
    };
    telemetry.checkpoint_windows_reattached.fetch_add(recounted + unbinned, Ordering::Relaxed);
    tracing::warn!(
        model = %model.name,
        checkpoint_baseline = %checkpoint_baseline,
        baseline = %name(new),
        open_windows = recounted + unbinned,
        recounted,
        without_binned_rows = unbinned,
        "the model's baseline changed since the checkpoint: its open windows are re-attached to the configured one \
         (bins re-counted from the window's values where it kept them all; otherwise that window emits no psi, \
         jensen_shannon, hellinger, out_of_range_rate, score_psi or prediction_psi rows)"
    );
}
