//! The engine: decoded micro-batches in, `window_metrics` rows out.
//!
//! It routes each prediction batch through the window stage (grouping rows
//! by series and window, updating the windows' summaries), the join (pairing
//! predictions and labels and crediting performance to the prediction's
//! windows), and closes the windows the watermark has passed. Both drivers,
//! `run` (Kafka) and `replay` (files), feed the same engine, so their output
//! is the same for the same events in the same batches.
//!
//! Architecture invariant: no I/O and no wall clock; the engine is a pure
//! function of the batches it is given, which makes replay deterministic and
//! every behaviour testable with data alone.

use std::collections::HashMap;

use datafusion::arrow::array::{Array, Float64Array, UInt32Array};
use datafusion::arrow::compute::take;

use crate::config::Config;
use crate::decode::{FeatureArray, LabelBatch, PredictionArray, PredictionBatch};
use crate::evaluate::{self, GroupColumns, Outcome, WindowIdentity, WindowState};
use crate::join::{JoinCounters, ModelJoin, PendingLabel, PendingPrediction, Target, join_key};
use crate::model::{ModelRegistry, ModelState, SeriesId};
use crate::output::WindowMetricRow;
use crate::window::{AwaitingLabels, ModelWindows, WindowSpec};

/// Counters the engine keeps (exported as metrics by the drivers).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EngineCounters {
    pub predictions: u64,
    pub labels: u64,
    /// Events that missed at least one closed window.
    pub events_late: u64,
    pub windows_closed: u64,
    /// Labels that joined a prediction whose windows were already final.
    pub labels_late: u64,
}

/// A group of batch rows sharing a series and a set of windows.
struct Group {
    last_start: i64,
    series: SeriesId,
    rows: Vec<u32>,
}

/// The streaming engine for all models.
pub struct Engine {
    spec: WindowSpec,
    max_categories: usize,
    windows: Vec<ModelWindows>,
    joins: Vec<ModelJoin>,
    pub counters: EngineCounters,
    groups: Vec<Group>,
    group_index: HashMap<(i64, SeriesId), usize>,
}

fn take_f64(array: &Float64Array, indices: &UInt32Array) -> Float64Array {
    let taken = take(array, indices, None).expect("indices are in bounds");
    taken.as_any().downcast_ref::<Float64Array>().expect("same type").clone()
}

fn take_group(
    batch: &PredictionBatch,
    rows: &[u32],
) -> (Vec<FeatureArray>, PredictionArray, Float64Array, Float64Array) {
    let indices = UInt32Array::from(rows.to_vec());
    let features = batch
        .features
        .iter()
        .map(|f| match f {
            FeatureArray::Numeric(a) => FeatureArray::Numeric(take_f64(a, &indices)),
            FeatureArray::Categorical(a) => {
                let taken = take(a, &indices, None).expect("indices are in bounds");
                FeatureArray::Categorical(taken.as_any().downcast_ref().cloned().expect("same type"))
            }
        })
        .collect();
    let prediction = match &batch.prediction {
        PredictionArray::Class(a) => {
            let taken = take(a, &indices, None).expect("indices are in bounds");
            PredictionArray::Class(taken.as_any().downcast_ref().cloned().expect("same type"))
        }
        PredictionArray::Value(a) => PredictionArray::Value(take_f64(a, &indices)),
    };
    (features, prediction, take_f64(&batch.score, &indices), take_f64(&batch.latency_ms, &indices))
}

impl Engine {
    pub fn new(config: &Config, registry: &ModelRegistry) -> Self {
        let spec = WindowSpec::from_config(&config.windows);
        Engine {
            spec,
            max_categories: config.pipeline.max_categories_per_feature,
            windows: registry.models.iter().map(|_| ModelWindows::default()).collect(),
            joins: registry
                .models
                .iter()
                .map(|_| ModelJoin::new(spec.label_horizon_ms, config.pipeline.max_pending_joins))
                .collect(),
            counters: EngineCounters::default(),
            groups: Vec::new(),
            group_index: HashMap::new(),
        }
    }

    pub fn spec(&self) -> &WindowSpec {
        &self.spec
    }

    /// The watermark of a model, if it has seen events.
    pub fn watermark(&self, model: usize) -> Option<i64> {
        self.windows[model].watermark(&self.spec)
    }

    /// Join counters summed over models.
    pub fn join_counters(&self) -> JoinCounters {
        let mut total = JoinCounters::default();
        for j in &self.joins {
            total.predictions_expired += j.counters.predictions_expired;
            total.labels_unmatched += j.counters.labels_unmatched;
            total.evicted += j.counters.evicted;
            total.duplicate_predictions += j.counters.duplicate_predictions;
            total.matched += j.counters.matched;
        }
        total
    }

    /// Entries waiting in the join, over all models.
    pub fn pending_joins(&self) -> usize {
        self.joins.iter().map(ModelJoin::pending).sum()
    }

    /// Open windows over all models.
    pub fn open_windows(&self) -> usize {
        self.windows.iter().map(|w| w.open.len()).sum()
    }

    fn group_rows(&mut self, batch: &PredictionBatch) {
        for group in &mut self.groups {
            group.rows.clear();
        }
        let mut used = 0usize;
        self.group_index.clear();
        let times = batch.event_time_ms.values();
        let series = batch.series.values();
        let mut previous: Option<((i64, SeriesId), usize)> = None;
        for row in 0..batch.len() {
            let key = (self.spec.last_start(times[row]), series[row]);
            let index = match previous {
                Some((k, i)) if k == key => i,
                _ => *self.group_index.entry(key).or_insert_with(|| {
                    if used == self.groups.len() {
                        self.groups.push(Group { last_start: 0, series: 0, rows: Vec::new() });
                    }
                    let g = &mut self.groups[used];
                    g.last_start = key.0;
                    g.series = key.1;
                    g.rows.clear();
                    used += 1;
                    used - 1
                }),
            };
            previous = Some((key, index));
            self.groups[index].rows.push(row as u32);
        }
        self.groups.truncate(used);
    }

    /// Adds a micro-batch of predictions; rows of windows that close as a
    /// result are appended to `out`.
    pub fn push_predictions(
        &mut self,
        registry: &ModelRegistry,
        batch: &PredictionBatch,
        out: &mut Vec<WindowMetricRow>,
    ) {
        if batch.is_empty() {
            return;
        }
        let model_index = batch.model as usize;
        let model = registry.get(batch.model);
        self.counters.predictions += batch.len() as u64;
        self.group_rows(batch);
        let whole_batch = self.groups.len() == 1;
        // Row → group, for type errors and the join.
        let mut accepted = vec![true; batch.len()];
        let groups = std::mem::take(&mut self.groups);
        for group in &groups {
            let taken;
            let columns = if whole_batch {
                GroupColumns {
                    len: batch.len(),
                    features: &batch.features,
                    prediction: &batch.prediction,
                    score: &batch.score,
                    latency_ms: &batch.latency_ms,
                }
            } else {
                taken = take_group(batch, &group.rows);
                GroupColumns {
                    len: group.rows.len(),
                    features: &taken.0,
                    prediction: &taken.1,
                    score: &taken.2,
                    latency_ms: &taken.3,
                }
            };
            let windows = &mut self.windows[model_index];
            let mut late = false;
            let mut any_open = false;
            for start in self.spec.starts_from_last(group.last_start) {
                if windows.is_closed(&self.spec, start) {
                    late = true;
                    continue;
                }
                any_open = true;
                let targets = [Some(group.series), model.series[group.series as usize].whole_model];
                for series in targets.into_iter().flatten() {
                    let state = windows.open.entry((start, series)).or_insert_with(|| WindowState::new(model));
                    state.update(model, &columns, self.max_categories);
                }
            }
            if late {
                let n = group.rows.len() as u64;
                self.counters.events_late += n;
                *windows.late_unreported.entry(group.series).or_default() += n;
                if let Some(whole) = model.series[group.series as usize].whole_model {
                    *windows.late_unreported.entry(whole).or_default() += n;
                }
            }
            if !any_open {
                for &row in &group.rows {
                    accepted[row as usize] = false;
                }
            }
        }
        // Type errors belong to the windows of their row.
        for &(row, feature) in &batch.type_errors {
            let time = batch.event_time_ms.value(row as usize);
            let series = batch.series.value(row as usize);
            let windows = &mut self.windows[model_index];
            for start in self.spec.starts_of(time) {
                for s in [Some(series), model.series[series as usize].whole_model].into_iter().flatten() {
                    if let Some(state) = windows.open.get_mut(&(start, s)) {
                        state.add_type_errors(model, feature as usize, 1);
                    }
                }
            }
        }
        self.groups = groups;
        // Join: predictions meet waiting labels or wait for theirs.
        for (row, _) in accepted.iter().enumerate().filter(|(_, accepted)| **accepted) {
            let predicted = match &batch.prediction {
                PredictionArray::Class(a) => Target::Class(a.value(row)),
                PredictionArray::Value(a) => Target::Value(a.value(row)),
            };
            let pending = PendingPrediction {
                series: batch.series.value(row),
                event_time_ms: batch.event_time_ms.value(row),
                predicted,
            };
            let key = join_key(batch.event_id.value(row));
            if let Some(label) = self.joins[model_index].on_prediction(key, pending) {
                self.credit(model, model_index, &pending, &label);
            }
        }
        let max_time = datafusion::arrow::compute::max(&batch.event_time_ms).expect("batch is not empty");
        self.windows[model_index].observe_event_time(max_time);
        self.close(model, model_index, false, out);
    }

    /// Adds a micro-batch of labels.
    pub fn push_labels(&mut self, registry: &ModelRegistry, batch: &LabelBatch, out: &mut Vec<WindowMetricRow>) {
        let model_index = batch.model as usize;
        let model = registry.get(batch.model);
        self.counters.labels += batch.len() as u64;
        for row in 0..batch.len() {
            let actual = match &batch.label {
                PredictionArray::Class(a) => Target::Class(a.value(row)),
                PredictionArray::Value(a) => Target::Value(a.value(row)),
            };
            let label = PendingLabel { label_time_ms: batch.event_time_ms.value(row), actual };
            let key = join_key(batch.event_id.value(row));
            if let Some(prediction) = self.joins[model_index].on_label(key, label) {
                self.credit(model, model_index, &prediction, &label);
            }
        }
        self.close(model, model_index, false, out);
    }

    /// Credits a joined pair to every window of the prediction's event time.
    fn credit(&mut self, model: &ModelState, model_index: usize, prediction: &PendingPrediction, label: &PendingLabel) {
        let outcome = match (prediction.predicted, label.actual) {
            (Target::Class(predicted), Target::Class(actual)) => Outcome::Class { predicted, actual },
            (Target::Value(predicted), Target::Value(actual)) => Outcome::Value { predicted, actual },
            _ => return,
        };
        let windows = &mut self.windows[model_index];
        let series = prediction.series;
        let mut credited = false;
        for start in self.spec.starts_of(prediction.event_time_ms) {
            for s in [Some(series), model.series[series as usize].whole_model].into_iter().flatten() {
                if let Some(state) = windows.open.get_mut(&(start, s)) {
                    state.performance.add(outcome);
                    credited = true;
                } else if let Some(awaiting) = windows.awaiting_labels.get_mut(&(start, s)) {
                    awaiting.performance.add(outcome);
                    credited = true;
                }
            }
        }
        if !credited {
            self.counters.labels_late += 1;
        }
    }

    fn close(&mut self, model: &ModelState, model_index: usize, everything: bool, out: &mut Vec<WindowMetricRow>) {
        let windows = &mut self.windows[model_index];
        let closed = windows.take_closable(&self.spec, everything);
        for ((start, series), mut state) in closed {
            self.counters.windows_closed += 1;
            let late = windows.late_unreported.remove(&series).unwrap_or(0);
            let id = WindowIdentity { model, series, start_ms: start, end_ms: start + self.spec.size_ms };
            evaluate::data_rows(&mut state, &id, late, out);
            windows
                .awaiting_labels
                .insert((start, series), AwaitingLabels { events: state.events, performance: state.performance });
        }
        let watermark = if everything { Some(i64::MAX) } else { windows.watermark(&self.spec) };
        if let Some(watermark) = watermark {
            self.joins[model_index].expire(watermark);
        }
        for ((start, series), awaiting) in windows.take_labelled(&self.spec, everything) {
            let id = WindowIdentity { model, series, start_ms: start, end_ms: start + self.spec.size_ms };
            evaluate::performance_rows(&awaiting.performance, awaiting.events, &id, out);
        }
    }

    /// End of input: closes every window, emits every pending performance
    /// row and expires every pending join entry.
    pub fn finish(&mut self, registry: &ModelRegistry, out: &mut Vec<WindowMetricRow>) {
        for (index, model) in registry.models.iter().enumerate() {
            self.close(model, index, true, out);
        }
    }
}
