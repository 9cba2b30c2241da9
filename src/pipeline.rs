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
use crate::model::ModelRegistry;
use crate::output::{WindowMetricRow, WindowSink};
use crate::telemetry::Telemetry;

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
            registry.get_mut(id as u32).attach_reference(crate::evaluate::reference::ModelReference::new(baseline));
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
        })
    }

    /// Puts back the state of a checkpoint's models. Models no longer
    /// configured are dropped; with changed `windows` settings the
    /// checkpointed windows and joins cannot be used and are dropped too
    /// (logged). Returns the number of models restored.
    pub fn restore(
        &mut self,
        models: Vec<crate::checkpoint::ModelCheckpoint>,
        spec: crate::window::WindowSpec,
        counters: crate::engine::EngineCounters,
    ) -> usize {
        self.engine.counters = counters.clone();
        self.reported = counters;
        if spec != *self.engine.spec() {
            tracing::warn!(
                checkpoint = ?spec,
                config = ?self.engine.spec(),
                "the windows settings changed since the checkpoint: its open windows and pending joins are dropped"
            );
            return 0;
        }
        let mut restored = 0;
        for model in models {
            let Some(id) = self.registry.id(&model.name) else {
                tracing::warn!(model = %model.name, "the checkpoint has a model that is no longer configured; dropped");
                continue;
            };
            self.registry.get_mut(id).restore_dictionaries(
                model.series_keys,
                model.series,
                model.classes,
                model.features,
            );
            self.engine.restore_model(id as usize, model.windows, model.join);
            restored += 1;
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

    /// Runs the buffered predictions through the engine.
    pub fn process_predictions(&mut self) {
        let batches = self.decoder.finish_predictions();
        self.push_prediction_batches(&batches);
    }

    /// Runs the buffered labels through the engine.
    pub fn process_labels(&mut self) {
        let batches = self.decoder.finish_labels();
        self.push_label_batches(&batches);
    }

    /// Runs decoded prediction batches through the engine.
    pub fn push_prediction_batches(&mut self, batches: &[PredictionBatch]) {
        for batch in batches {
            let model = &self.registry.get(batch.model).name;
            self.telemetry.add_events(&self.predictions_topic, model, batch.len() as u64);
            self.engine.push_predictions(&self.registry, batch, &mut self.rows);
        }
    }

    /// Runs decoded label batches through the engine.
    pub fn push_label_batches(&mut self, batches: &[LabelBatch]) {
        for batch in batches {
            let model = &self.registry.get(batch.model).name;
            self.telemetry.add_events(&self.labels_topic, model, batch.len() as u64);
            self.engine.push_labels(&self.registry, batch, &mut self.rows);
        }
    }

    /// Processes everything buffered and writes the rows of closed windows.
    pub fn process(&mut self, sink: &mut dyn WindowSink) -> io::Result<usize> {
        self.process_predictions();
        self.process_labels();
        self.emit(sink)
    }

    /// End of input: closes every window.
    pub fn finish(&mut self, sink: &mut dyn WindowSink) -> io::Result<usize> {
        self.process_predictions();
        self.process_labels();
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
