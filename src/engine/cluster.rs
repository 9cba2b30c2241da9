//! Scale-out's two sides of the engine (docs/ARCHITECTURE.md, "Scale-out
//! over Kafka").
//!
//! A *source* engine ([`Engine::set_source_mode`]) aggregates the
//! partitions it reads as any engine does, judging lateness by each
//! partition's own clock, but never closes a window: [`Engine::take_delta`]
//! hands over what one partition added to one model's windows since its
//! last delta (its panes and sealed contributions, as named partial
//! windows), the late events it met and its clock, to be published.
//!
//! A *merger* engine takes the final stretches of every source partition
//! in ([`Engine::apply_stretch`], after [`intern_delta`]) as the closer
//! takes a lane's sealed contributions, and closes a window when the
//! watermark, the minimum over the source partitions' clocks, passes it.
//! Its rows are those of one engine reading every partition: every count
//! exact, every value within 1e-12 (parts merge rather than add in one
//! pass), whatever the stretches
//! (`a_merger_of_sources_gives_the_rows_of_one_engine`). [`Merger`] is
//! the merging side whole: the records of the partials topic in, a
//! timeline per source partition, a merger engine of its own.
//!
//! A partition's next reader (its new owner, or the same instance after a
//! crash) starts at the committed offset with the clock the partition had
//! there ([`Engine::restore_partition_clock`], from its last commit record),
//! so its events are judged late as the first reader would have judged
//! them; the merger still counts late any part of a window the partition's
//! clock had closed before the stretch (a reader that could not learn the
//! clock judged it on time).
//!
//! Labels join at the merger: a source engine does not join, it hands
//! each stretch's predictions (and a labels partition's stretch's labels)
//! over as join entries ([`JoinEntries`]), and the merger engine runs the
//! join on them as one engine would on the events, crediting pairs to the
//! prediction's windows. No partition's join state has to follow it to a
//! new owner.

use std::collections::{BTreeMap, HashMap};

use datafusion::arrow::array::Array;

use super::Engine;
use crate::cluster::record::{
    Delta, JoinEntries, LabelEntry, LateEvents, MergerMark, PartialsRecord, PartitionMark, PredictionEntry, RecordBody,
    key_from_halves, key_halves,
};
use crate::cluster::timeline::{Offered, Stretch, Timeline};
use crate::config::PipelineConfig;
use crate::decode::{LabelBatch, PredictionArray, PredictionBatch};
use crate::evaluate::WindowState;
use crate::join::{JoinKey, PendingLabel, PendingPrediction, Target};
use crate::model::{ModelId, ModelRegistry, ModelState, SeriesId};
use crate::window::partial::{PartialWindow, PartialWindowError};
use crate::window::{AwaitingLabels, PartitionId};
use crate::window_metrics::WindowMetricRow;

/// What a source partition added to a model's windows since its last
/// delta ([`Engine::take_delta`]).
#[derive(Debug)]
pub struct PartitionDelta {
    pub windows: Vec<PartialWindow>,
    pub late: Vec<LateEvents>,
    /// The model's clock in the partition: its largest event time.
    pub clock_ms: Option<i64>,
    /// The partition's predictions (or labels) since its last delta, for
    /// the merger's join.
    pub joins: JoinEntries,
}

impl PartitionDelta {
    /// The record of this delta: stretch `[start, end)` of `topic`'s
    /// `partition`, for `model`, in one part (see [`Delta::split`]).
    pub fn into_delta(self, model: &str, topic: &str, partition: i32, (start, end): (i64, i64), idle: bool) -> Delta {
        Delta {
            model: model.to_string(),
            topic: topic.to_string(),
            partition,
            start,
            end,
            clock_ms: self.clock_ms,
            idle,
            windows: self.windows,
            late: self.late,
            joins: self.joins,
            part: 0,
            parts: 1,
        }
    }
}

/// A delta's parts in a merger's own ids ([`intern_delta`]).
#[derive(Debug)]
pub struct InternedDelta {
    pub model: ModelId,
    pub parts: Vec<((i64, SeriesId), WindowState)>,
    pub late: Vec<((SeriesId, i64), u64)>,
    pub clock_ms: Option<i64>,
    pub entries: InternedEntries,
}

/// A stretch's join entries in a merger's own ids.
#[derive(Debug, Default)]
pub struct InternedEntries {
    pub predictions: Vec<(JoinKey, PendingPrediction)>,
    pub labels: Vec<(JoinKey, PendingLabel)>,
    /// Entries left out: a class the model cannot take (a binary model's
    /// third class, or one past the cap) or one the record does not name.
    pub refused: u64,
}

/// A source engine's join entries of one partition, in the order read.
#[derive(Debug, Default)]
pub struct SourceJoinEntries {
    predictions: Vec<(JoinKey, PendingPrediction)>,
    labels: Vec<(JoinKey, PendingLabel)>,
}

impl SourceJoinEntries {
    /// The entries as a record carries them, with `model`'s names.
    fn into_record(self, model: &ModelState) -> JoinEntries {
        let mut series_index: BTreeMap<SeriesId, u32> = BTreeMap::new();
        let mut class_index: BTreeMap<u32, u32> = BTreeMap::new();
        let mut entries = JoinEntries::default();
        let mut target = |target: Target, entries: &mut JoinEntries| match target {
            Target::Value(value) => value,
            Target::Class(class) => {
                let next = class_index.len() as u32;
                let index = *class_index.entry(class).or_insert_with(|| {
                    entries.classes.push(model.classes.name(class).to_string());
                    next
                });
                f64::from(index)
            }
        };
        for (key, prediction) in self.predictions {
            let next = series_index.len() as u32;
            let series = *series_index.entry(prediction.series).or_insert_with(|| {
                let named = &model.series[prediction.series as usize];
                entries.series.push((named.model_version.to_string(), named.segment.to_string()));
                next
            });
            let predicted = target(prediction.predicted, &mut entries);
            let (high, low) = key_halves(key);
            entries.predictions.push(PredictionEntry(
                high,
                low,
                series,
                prediction.event_time_ms,
                predicted,
                prediction.score,
            ));
        }
        for (key, label) in self.labels {
            let actual = target(label.actual, &mut entries);
            let (high, low) = key_halves(key);
            entries.labels.push(LabelEntry(high, low, label.label_time_ms, actual));
        }
        entries
    }
}

/// Interns a record's join entries into `model` (series as the decoder
/// would, within `limits`' caps; classes the model may take).
fn intern_entries(model: &mut ModelState, limits: &PipelineConfig, entries: JoinEntries) -> InternedEntries {
    let caps = (limits.max_segments_per_model, limits.max_versions_per_model);
    let series: Vec<SeriesId> =
        entries.series.iter().map(|(version, segment)| model.series_named(version, segment, caps)).collect();
    let classification = model.is_classification();
    let binary = (model.task == crate::config::Task::BinaryClassification).then(|| {
        let (positive, negative) = model.config.binary_classes();
        (positive.to_string(), negative.to_string())
    });
    let classes: Vec<Option<u32>> = entries
        .classes
        .iter()
        .map(|name| match model.classes.get(name) {
            Some(id) => Some(id),
            None if binary.as_ref().is_some_and(|(p, n)| name != p && name != n) => None,
            None => model.classes.intern(name, limits.max_categories_per_feature),
        })
        .collect();
    let target = |value: f64| -> Option<Target> {
        if !classification {
            return Some(Target::Value(value));
        }
        let index = value as usize;
        (value >= 0.0 && value.fract() == 0.0)
            .then_some(())
            .and(classes.get(index).copied().flatten())
            .map(Target::Class)
    };
    let mut interned = InternedEntries::default();
    for PredictionEntry(high, low, series_index, event_time_ms, predicted, score) in entries.predictions {
        let (Some(&series), Some(predicted)) = (series.get(series_index as usize), target(predicted)) else {
            interned.refused += 1;
            continue;
        };
        let prediction = PendingPrediction { series, event_time_ms, predicted, score };
        interned.predictions.push((key_from_halves(high, low), prediction));
    }
    for LabelEntry(high, low, label_time_ms, actual) in entries.labels {
        let Some(actual) = target(actual) else {
            interned.refused += 1;
            continue;
        };
        interned.labels.push((key_from_halves(high, low), PendingLabel { label_time_ms, actual }));
    }
    interned
}

/// Interns a delta of `model` (its windows and late events) into
/// `registry` (new series, features and classes as the decoder would,
/// within `limits`' caps). A window that cannot be taken in is left out,
/// with nothing of it interned, and its error returned beside the rest.
pub fn intern_delta(
    registry: &mut ModelRegistry,
    limits: &PipelineConfig,
    model: ModelId,
    delta: Delta,
) -> (InternedDelta, Vec<PartialWindowError>) {
    let mut parts = Vec::with_capacity(delta.windows.len());
    let mut errors = Vec::new();
    for window in delta.windows {
        let start = window.window_start_ms;
        match window.into_state(registry.get_mut(model), limits) {
            Ok((series, state)) => parts.push(((start, series), state)),
            Err(error) => errors.push(error),
        }
    }
    let caps = (limits.max_segments_per_model, limits.max_versions_per_model);
    let state = registry.get_mut(model);
    let late = delta
        .late
        .into_iter()
        .map(|late| ((state.series_named(&late.model_version, &late.segment, caps), late.window_start_ms), late.events))
        .collect();
    let entries = intern_entries(state, limits, delta.joins);
    (InternedDelta { model, parts, late, clock_ms: delta.clock_ms, entries }, errors)
}

impl Engine {
    /// Makes this a source engine: windows never close here (see the
    /// module doc).
    pub fn set_source_mode(&mut self) {
        self.source_mode = true;
    }

    /// Takes what `partition` added to `model`'s windows since its last
    /// delta: its open panes and its sealed contributions, named; the late
    /// events it met; and its clock. The partition keeps its clock (and so
    /// judges lateness on), and what it adds later goes into the next
    /// delta.
    pub fn take_delta(&mut self, registry: &ModelRegistry, model: ModelId, partition: PartitionId) -> PartitionDelta {
        let model_index = model as usize;
        let state = registry.get(model);
        let windows = &mut self.windows[model_index];
        if let Some(panes) = windows.panes.get_mut(&partition) {
            for (key, part) in self.lane.hand_over(panes) {
                let _ = windows.add_contribution(&self.spec, key, partition, part, self.max_categories);
            }
        }
        let mut parts = Vec::new();
        windows.contributions.retain(|key, by_partition| {
            if let Some(part) = by_partition.remove(&partition) {
                parts.push((*key, part));
            }
            !by_partition.is_empty()
        });
        let size_ms = self.spec.size_ms;
        let partials = parts
            .iter()
            .map(|((start, series), part)| PartialWindow::from_state(state, *series, *start, start + size_ms, part))
            .collect();
        let late = self
            .source_late
            .remove(&(model_index, partition))
            .unwrap_or_default()
            .into_iter()
            .map(|((series, start), events)| {
                let series = &state.series[series as usize];
                LateEvents {
                    model_version: series.model_version.to_string(),
                    segment: series.segment.to_string(),
                    window_start_ms: start,
                    events,
                }
            })
            .collect();
        let clock_ms = windows.partitions.get(&partition).and_then(|clock| clock.max_event_time_ms);
        let joins = self
            .source_joins
            .remove(&(model_index, partition, false))
            .map_or_else(JoinEntries::default, |entries| entries.into_record(state));
        PartitionDelta { windows: partials, late, clock_ms, joins }
    }

    /// Takes what labels partition `partition` read of `model` since its
    /// last delta: its labels, as join entries, and its clock.
    pub fn take_label_delta(
        &mut self,
        registry: &ModelRegistry,
        model: ModelId,
        partition: PartitionId,
    ) -> PartitionDelta {
        let model_index = model as usize;
        let clock_ms =
            self.windows[model_index].label_partitions.get(&partition).and_then(|clock| clock.max_event_time_ms);
        let joins = self
            .source_joins
            .remove(&(model_index, partition, true))
            .map_or_else(JoinEntries::default, |entries| entries.into_record(registry.get(model)));
        PartitionDelta { windows: Vec::new(), late: Vec::new(), clock_ms, joins }
    }

    /// A source engine keeps the accepted predictions of a batch of
    /// `partition` as join entries, in order.
    pub(super) fn note_source_predictions(
        &mut self,
        model: usize,
        partition: PartitionId,
        batch: &PredictionBatch,
        accepted: &[bool],
        keys: &[JoinKey],
    ) {
        let entries = self.source_joins.entry((model, partition, false)).or_default();
        let times = batch.event_time_ms.values();
        for (row, _) in accepted.iter().enumerate().filter(|(_, accepted)| **accepted) {
            let predicted = match &batch.prediction {
                PredictionArray::Class(a) => Target::Class(a.value(row)),
                PredictionArray::Value(a) => Target::Value(a.value(row)),
            };
            let score = if batch.score.is_null(row) { f64::NAN } else { batch.score.value(row) };
            let prediction =
                PendingPrediction { series: batch.series.value(row), event_time_ms: times[row], predicted, score };
            entries.predictions.push((keys[row], prediction));
        }
    }

    /// A source engine keeps a batch of labels of labels partition
    /// `partition` as join entries, in order.
    pub(super) fn note_source_labels(&mut self, model: usize, partition: PartitionId, batch: &LabelBatch) {
        let entries = self.source_joins.entry((model, partition, true)).or_default();
        for row in 0..batch.len() {
            let actual = match &batch.label {
                PredictionArray::Class(a) => Target::Class(a.value(row)),
                PredictionArray::Value(a) => Target::Value(a.value(row)),
            };
            let label = PendingLabel { label_time_ms: batch.event_time_ms.value(row), actual };
            entries.labels.push((crate::join::join_key(batch.event_id.value(row)), label));
        }
    }

    /// A source engine forgets what it read of labels partition
    /// `partition` since its last delta, and its clock (the partition was
    /// revoked).
    pub fn drop_label_partition(&mut self, partition: PartitionId) {
        self.source_joins.retain(|(_, p, labels), _| !(*labels && *p == partition));
        // Its clock too: what was read since the last publish is read
        // again, and a clock from it would run ahead of what was published.
        for windows in &mut self.windows {
            windows.label_partitions.remove(&partition);
        }
    }

    /// A source engine starts reading `partition` (of `model`) where
    /// another reader left it, with the clock it had there (the partition's
    /// last commit record): its events are judged late as that reader would
    /// have judged them. A clock never goes back.
    pub fn restore_partition_clock(&mut self, model: ModelId, partition: PartitionId, clock_ms: i64) {
        let clock = self.windows[model as usize].partitions.entry(partition).or_default();
        clock.max_event_time_ms = Some(clock.max_event_time_ms.map_or(clock_ms, |own| own.max(clock_ms)));
    }

    /// Takes a final stretch of source partition `partition` in (interned
    /// by [`intern_delta`]): its parts of windows, as the closer takes a
    /// lane's sealed contributions, its late events (reported by the
    /// windows they name) and its clock; then closes what the watermark
    /// passed (rows to `out`). A part of a window already closed, or one
    /// the partition's clock before the stretch (`clock_before_ms`, from
    /// its timeline) had closed for it, counts late: a reader that started
    /// the partition without its clock judged it on time.
    pub fn apply_stretch(
        &mut self,
        registry: &ModelRegistry,
        partition: PartitionId,
        delta: InternedDelta,
        clock_before_ms: Option<i64>,
        out: &mut Vec<WindowMetricRow>,
    ) {
        let model_index = delta.model as usize;
        let state = registry.get(delta.model);
        let windows = &mut self.windows[model_index];
        let closed_for_partition = clock_before_ms.map(|clock| clock.saturating_sub(self.spec.allowed_lateness_ms));
        for (key, part) in delta.parts {
            let closed = closed_for_partition.is_some_and(|closed| key.0.saturating_add(self.spec.size_ms) <= closed);
            let dropped = if closed {
                Some(part)
            } else {
                windows.add_contribution(&self.spec, key, partition, part, self.max_categories)
            };
            if let Some(dropped) = dropped
                && state.series[key.1 as usize].whole_model.is_none()
            {
                self.counters.events_late += dropped.events;
            }
        }
        for (key, events) in delta.late {
            *windows.late_pending.entry(key).or_default() += events;
        }
        self.join_entries(state, model_index, delta.entries);
        if let Some(clock) = delta.clock_ms {
            self.windows[model_index].observe_event_time(partition, clock);
        }
        self.close(state, model_index, false, out);
    }

    /// Takes a final stretch of labels partition `partition` in: its
    /// labels meet the join (pairs credit their predictions' windows),
    /// then its clock moves the labels' frontier (an idle partition stops
    /// holding it); then closes what the watermarks passed.
    pub fn apply_label_stretch(
        &mut self,
        registry: &ModelRegistry,
        partition: PartitionId,
        delta: InternedDelta,
        idle: bool,
        out: &mut Vec<WindowMetricRow>,
    ) {
        let model_index = delta.model as usize;
        let state = registry.get(delta.model);
        self.join_entries(state, model_index, delta.entries);
        let windows = &mut self.windows[model_index];
        if let Some(clock) = delta.clock_ms {
            windows.observe_label_time(partition, clock);
        }
        if idle && let Some(clock) = windows.label_partitions.get_mut(&partition) {
            clock.idle = true;
            windows.advance_frontiers();
        }
        // Labels hold the performance watermark while a labels partition
        // is live, as the daemon's do while labels are read.
        self.labels_hold[model_index] = windows.label_partitions.values().any(|clock| !clock.idle);
        self.close(state, model_index, false, out);
    }

    /// A stretch's join entries meet the model's joins in order, as the
    /// events would in one engine: predictions (in their version's lane)
    /// pair with waiting labels or wait, labels pair with waiting
    /// predictions of every lane or wait; each pair credits its
    /// prediction's windows.
    fn join_entries(&mut self, model: &ModelState, model_index: usize, entries: InternedEntries) {
        for (key, prediction) in entries.predictions {
            self.expire_joins(model_index);
            let lane = model.series[prediction.series as usize].lane;
            if let Some(label) = self.join_of_lane(model_index, lane).on_prediction(key, prediction) {
                self.on_pair(model, model_index, (lane, key), &prediction, &label);
            }
        }
        for (key, label) in entries.labels {
            self.expire_joins(model_index);
            if let Some(prediction) = self.joins[model_index].on_label(key, label) {
                self.on_pair(model, model_index, (0, key), &prediction, &label);
            }
            for lane in 0..self.shadow_joins[model_index].len() {
                if let Some(prediction) = self.shadow_joins[model_index][lane].on_label(key, label) {
                    self.on_pair(model, model_index, (lane as u32 + 1, key), &prediction, &label);
                }
            }
        }
    }

    /// A merger engine's labels partitions: each holds every model's
    /// performance watermark until its first labels or until its source
    /// says it is idle.
    pub fn declare_label_partitions(&mut self, partitions: &[PartitionId]) {
        for (model, windows) in self.windows.iter_mut().enumerate() {
            for &partition in partitions {
                let clock = windows.label_partitions.entry(partition).or_default();
                clock.idle = false;
                clock.touched = true;
            }
            if !partitions.is_empty() {
                self.labels_hold[model] = true;
            }
        }
    }

    /// How many entries and remembered pairs the model's joins hold.
    fn held_joins(&self, model: usize) -> usize {
        self.joins[model].held() + self.shadow_joins[model].iter().map(crate::join::Join::held).sum::<usize>()
    }

    /// Whether one of the model's joins holds an entry of `key`.
    fn join_holds(&self, model: usize, key: JoinKey) -> bool {
        self.joins[model].holds(key) || self.shadow_joins[model].iter().any(|join| join.holds(key))
    }

    /// Whether labels partition `partition` is idle for `model`.
    pub fn label_partition_is_idle(&self, model: ModelId, partition: PartitionId) -> bool {
        self.windows[model as usize].label_partitions.get(&partition).is_some_and(|clock| clock.idle)
    }

    /// A source engine's late events, per model and partition, until
    /// their delta is taken.
    pub(super) fn note_source_late(&mut self, model: usize, partition: PartitionId, late: Vec<(SeriesId, i64)>) {
        let pending: &mut BTreeMap<(SeriesId, i64), u64> = self.source_late.entry((model, partition)).or_default();
        for key in late {
            *pending.entry(key).or_default() += 1;
        }
    }
}

/// Counts of what a [`Merger`] did with the records it was given.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MergerCounters {
    /// Stretches taken into windows (final).
    pub stretches: u64,
    /// Provisional stretches replaced by one published again.
    pub replaced: u64,
    /// Stretches refused: below the committed offset (a reader that lost
    /// its partition and did not know it yet).
    pub stale: u64,
    /// Stretches that broke the sources' contract (a gap or an overlap).
    pub broken: u64,
    /// Join entries left out (see [`InternedEntries::refused`]).
    pub entries_refused: u64,
}

/// Why a [`Merger`] did not take a record in. Each names the record.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MergeError {
    #[error("partials record of model {model}: no model of that name is configured")]
    UnknownModel { model: String },
    #[error("partials record of model {model}: source topic {topic}, but this merger merges {expected}")]
    OtherTopic { model: String, topic: String, expected: String },
    #[error("partials record of model {model}: source partition {partition}, but {topic} has {partitions}")]
    PartitionOutOfRange { model: String, topic: String, partition: i32, partitions: i32 },
    #[error("partials record of model {model}, partition {partition}: {source}")]
    Window { model: String, partition: i32, source: PartialWindowError },
}

/// A cluster's merger (docs/ARCHITECTURE.md, "Scale-out over Kafka"): the
/// records of the models it merges go in, in the order of their partials
/// partition, with their offsets there ([`Merger::apply`]); each source
/// partition's stretches wait in its [`Timeline`] until a commit makes them
/// final, and then go into a merger engine of its own (its own registry,
/// every source partition declared), which closes windows as one engine
/// reading every partition would. [`Merger::mark`] says where it stands
/// for a model, and a new merger [`Merger::resume`]s from such a mark:
/// reading the partition again from the mark's `resume_offset`, it emits
/// exactly the rows the old merger had not. Pure: no I/O.
pub struct Merger {
    pub registry: ModelRegistry,
    pub engine: Engine,
    limits: PipelineConfig,
    source_topic: String,
    source_partitions: i32,
    /// The labels topic and its partition count, if labels are merged.
    labels: Option<(String, i32)>,
    /// Per (model, source partition): its stretches, each with the offset
    /// of its record. A source partition is (whether of the labels topic,
    /// partition).
    timelines: BTreeMap<(ModelId, bool, i32), Timeline<(i64, Delta)>>,
    /// Per (model, source partition): the parts of a delta read so far
    /// (it is offered once all are in), with the offset of the first.
    assembling: BTreeMap<(ModelId, bool, i32), (i64, Vec<Delta>)>,
    /// Per model: the oldest record each join key held has an entry in
    /// (keys the joins no longer hold are pruned now and then), so a mark
    /// sends the next merger back far enough to rebuild the joins.
    origins: BTreeMap<ModelId, HashMap<JoinKey, i64>>,
    /// Per model: what a mark needs.
    models: BTreeMap<ModelId, ModelProgress>,
    pub counters: MergerCounters,
}

/// Where a merger stands for one model.
#[derive(Debug, Default)]
struct ModelProgress {
    /// The offset after the last record taken in.
    next_offset: Option<i64>,
    /// Per open window (start): the oldest record with a part of it.
    open_windows: BTreeMap<i64, i64>,
    /// Resumed from a mark and not past it yet: the stretches that commits
    /// before its `next_offset` release were taken in by the old merger, so
    /// their parts of windows it emitted and their late events (in the
    /// mark, if unreported) are skipped; reaching it, the timelines learn
    /// the commits and clocks it recorded.
    resumed: Option<MergerMark>,
}

impl Merger {
    /// A merger of `config`'s models over `source_partitions` partitions of
    /// `source_topic` (the predictions topic).
    pub fn new(config: &crate::config::Config, source_topic: &str, source_partitions: i32) -> Self {
        let registry = ModelRegistry::from_config(config);
        let mut engine = Engine::new(config, &registry);
        let partitions: Vec<PartitionId> = (0..source_partitions).collect();
        engine.declare_partitions(&partitions);
        Merger {
            registry,
            engine,
            limits: config.pipeline.clone(),
            source_topic: source_topic.to_string(),
            source_partitions,
            labels: None,
            timelines: BTreeMap::new(),
            assembling: BTreeMap::new(),
            origins: BTreeMap::new(),
            models: BTreeMap::new(),
            counters: MergerCounters::default(),
        }
    }

    /// This merger also merges `labels_topic`'s `partitions` (their
    /// labels join at the merger; they hold the performance watermark
    /// until their first labels or until they go idle).
    pub fn with_labels(mut self, labels_topic: &str, partitions: i32) -> Self {
        let declared: Vec<PartitionId> = (0..partitions).collect();
        self.engine.declare_label_partitions(&declared);
        self.labels = Some((labels_topic.to_string(), partitions));
        self
    }

    /// Takes a record at `offset` of its partials partition in: a delta
    /// waits in its partition's timeline (or replaces what it publishes
    /// again); a commit makes the stretches it covers final, and they go
    /// into windows, in offset order, closing what the watermark passes
    /// (rows to `out`). A stretch of an idle partition stops it holding the
    /// model's windows, until its next event. Marks are read by
    /// [`Merger::resume`], not here. A record that cannot be taken in is an
    /// error and changes nothing; one of a stretch's windows that cannot be
    /// interned is an error after the stretch's other windows went in.
    pub fn apply(
        &mut self,
        offset: i64,
        record: PartialsRecord,
        out: &mut Vec<WindowMetricRow>,
    ) -> Result<(), MergeError> {
        let (model_name, topic, partition) = match &record.body {
            RecordBody::Delta(d) => (d.model.clone(), d.topic.clone(), d.partition),
            RecordBody::Commit(c) => (c.model.clone(), c.topic.clone(), c.partition),
            RecordBody::Mark(_) => return Ok(()),
        };
        let Some(model) = self.registry.id(&model_name) else {
            return Err(MergeError::UnknownModel { model: crate::text::shorten_long_tokens(&model_name).into_owned() });
        };
        let (labels, partitions) = match &self.labels {
            _ if topic == self.source_topic => (false, self.source_partitions),
            Some((labels_topic, count)) if topic == *labels_topic => (true, *count),
            _ => {
                let mut expected = self.source_topic.clone();
                if let Some((labels_topic, _)) = &self.labels {
                    expected = format!("{expected} and {labels_topic}");
                }
                return Err(MergeError::OtherTopic {
                    model: model_name,
                    topic: crate::text::shorten_long_tokens(&topic).into_owned(),
                    expected,
                });
            }
        };
        if partition >= partitions {
            return Err(MergeError::PartitionOutOfRange { model: model_name, topic, partition, partitions });
        }
        self.reach(model, offset);
        let source = (model, labels, partition);
        let released = match record.body {
            RecordBody::Delta(delta) => {
                let Some((offset, delta)) = self.assemble(source, offset, delta) else { return Ok(()) };
                let timeline = self.timelines.entry(source).or_default();
                let stretch =
                    Stretch { start: delta.start, end: delta.end, clock_ms: delta.clock_ms, payload: (offset, delta) };
                match timeline.offer(stretch) {
                    Offered::Held => {}
                    Offered::Replaced(_) => self.counters.replaced += 1,
                    Offered::Stale => self.counters.stale += 1,
                    Offered::Gap { missing } => {
                        self.counters.broken += 1;
                        tracing::error!(model = %model_name, partition, missing, "partials: a stretch starts past the end of the ones held; offsets are missing");
                    }
                    Offered::Overlap { replaced } => {
                        self.counters.broken += 1;
                        tracing::error!(model = %model_name, partition, replaced, "partials: a stretch starts inside a provisional one");
                    }
                }
                return Ok(());
            }
            RecordBody::Commit(commit) => self.timelines.entry(source).or_default().commit(commit.next),
            RecordBody::Mark(_) => unreachable!("returned above"),
        };
        let size_ms = self.engine.spec.size_ms;
        let mut failed = None;
        for released in released {
            self.counters.stretches += 1;
            let (record_offset, delta) = released.stretch.payload;
            let idle = delta.idle;
            let (mut interned, errors) = intern_delta(&mut self.registry, &self.limits, model, delta);
            if let Some(source) = errors.into_iter().next() {
                failed.get_or_insert(MergeError::Window { model: model_name.clone(), partition, source });
            }
            self.counters.entries_refused += interned.entries.refused;
            let progress = self.models.entry(model).or_default();
            // Released by a commit the old merger took in too (a resumed
            // merger is past its mark once a record reaches the mark's
            // `next_offset`): what it emitted or reported is not again,
            // and its pairs credit no window it emitted (their performance
            // is in the mark); the joins take the entries in without
            // expiring any, to hold what the old merger's held.
            let replaying = progress.resumed.as_ref().map(|mark| mark.closed_through_ms);
            if let Some(emitted) = replaying {
                interned.parts.retain(|((start, _), _)| emitted.is_none_or(|closed| start + size_ms > closed));
                interned.late.clear();
            }
            for ((start, _), _) in &interned.parts {
                let oldest = progress.open_windows.entry(*start).or_insert(record_offset);
                *oldest = (*oldest).min(record_offset);
            }
            let origins = self.origins.entry(model).or_default();
            let keys = interned.entries.predictions.iter().map(|(key, _)| key);
            for key in keys.chain(interned.entries.labels.iter().map(|(key, _)| key)) {
                let origin = origins.entry(*key).or_insert(record_offset);
                *origin = (*origin).min(record_offset);
            }
            self.engine.replaying_through_ms = replaying;
            if labels {
                self.engine.apply_label_stretch(&self.registry, partition, interned, idle, out);
            } else {
                self.engine.apply_stretch(&self.registry, partition, interned, released.clock_before_ms, out);
                if idle {
                    self.engine.set_partition_idle(&self.registry, model, partition, out);
                }
            }
            self.engine.replaying_through_ms = None;
        }
        self.forget_closed(model);
        self.prune_origins(model);
        failed.map_or(Ok(()), Err)
    }

    /// Forgets the origins of keys the model's joins no longer hold, once
    /// they outnumber the held ones twice over.
    fn prune_origins(&mut self, model: ModelId) {
        let Some(origins) = self.origins.get_mut(&model) else { return };
        let held = self.engine.held_joins(model as usize);
        if origins.len() <= 2 * held + 1024 {
            return;
        }
        origins.retain(|key, _| self.engine.join_holds(model as usize, *key));
    }

    /// A delta whole, with the offset of its first part's record, once its
    /// last part is in. A first part starts over (the parts of a publish a
    /// crash cut short are dropped: the stretch is published again); a part
    /// that does not follow the one before breaks the sources' contract.
    fn assemble(&mut self, key: (ModelId, bool, i32), offset: i64, delta: Delta) -> Option<(i64, Delta)> {
        let partition = key.2;
        if delta.parts <= 1 {
            self.assembling.remove(&key);
            return Some((offset, delta));
        }
        if delta.part == 0 {
            self.assembling.insert(key, (offset, vec![delta]));
            return None;
        }
        let follows = self.assembling.get(&key).and_then(|(_, parts)| parts.last()).is_some_and(|last| {
            last.part + 1 == delta.part
                && last.parts == delta.parts
                && (last.start, last.end) == (delta.start, delta.end)
        });
        if !follows {
            self.assembling.remove(&key);
            self.counters.broken += 1;
            tracing::error!(partition, part = delta.part, "partials: a delta's part does not follow the one before");
            return None;
        }
        let (first, parts) = self.assembling.get_mut(&key).expect("it follows a part");
        parts.push(delta);
        if parts.len() < parts[0].parts as usize {
            return None;
        }
        let first = *first;
        let (_, parts) = self.assembling.remove(&key).expect("assembling");
        Some((first, Delta::join(parts)))
    }

    /// Forgets everything of `model` (its merging moved to another
    /// instance, or a mark is about to be resumed from): timelines, parts
    /// being assembled, windows, as a merger that never saw it.
    pub fn forget(&mut self, model: &str) {
        let Some(id) = self.registry.id(model) else { return };
        self.timelines.retain(|(m, _, _), _| *m != id);
        self.assembling.retain(|(m, _, _), _| *m != id);
        self.models.remove(&id);
        self.origins.remove(&id);
        let partitions: Vec<PartitionId> = (0..self.source_partitions).collect();
        let label_partitions: Vec<PartitionId> = (0..self.labels.as_ref().map_or(0, |(_, count)| *count)).collect();
        self.engine.reset_model(id, &partitions, &label_partitions);
    }

    /// The model's records reached `offset`: a resumed merger that passes
    /// its mark's `next_offset` hands the mark's commits and clocks to the
    /// timelines.
    fn reach(&mut self, model: ModelId, offset: i64) {
        let progress = self.models.entry(model).or_default();
        progress.next_offset = Some(offset + 1);
        if let Some(mark) = progress.resumed.take_if(|mark| offset >= mark.next_offset) {
            for partition in &mark.partitions {
                self.timelines
                    .entry((model, partition.labels, partition.partition))
                    .or_default()
                    .raise(partition.committed, partition.clock_ms);
            }
            // Past the mark: the joins hold what the old merger's held,
            // and expire as its would.
            self.engine.expire_joins(model as usize);
        }
    }

    /// Drops the record offsets of the model's windows that closed.
    fn forget_closed(&mut self, model: ModelId) {
        let closed = self.engine.windows[model as usize].closed_through_ms;
        let size_ms = self.engine.spec.size_ms;
        if let (Some(progress), Some(closed)) = (self.models.get_mut(&model), closed) {
            progress.open_windows.retain(|start, _| start + size_ms > closed);
        }
    }

    /// Where this merger stands for `model`, for a merger that goes on from
    /// here ([`Merger::resume`]); `None` for a model it has taken no record
    /// of in.
    pub fn mark(&self, model: &str) -> Option<MergerMark> {
        let id = self.registry.id(model)?;
        let progress = self.models.get(&id)?;
        let next_offset = progress.next_offset?;
        let sources = (id, false, i32::MIN)..=(id, true, i32::MAX);
        let provisional = self
            .timelines
            .range(sources.clone())
            .flat_map(|(_, timeline)| timeline.provisional().iter().map(|stretch| stretch.payload.0))
            .chain(self.assembling.range(sources).map(|(_, (first, _))| *first));
        // The oldest record with an entry the joins still hold: the next
        // merger reads again from there to rebuild them.
        let joined = self.origins.get(&id).into_iter().flat_map(|origins| {
            origins.iter().filter(|(key, _)| self.engine.join_holds(id as usize, **key)).map(|(_, origin)| *origin)
        });
        let resume_offset = provisional
            .chain(progress.open_windows.values().copied())
            .chain(joined)
            .min()
            .unwrap_or(next_offset)
            .min(next_offset);
        let windows = &self.engine.windows[id as usize];
        let state = self.registry.get(id);
        let late = windows
            .late_pending
            .iter()
            .map(|((series, start), events)| {
                let series = &state.series[*series as usize];
                LateEvents {
                    model_version: series.model_version.to_string(),
                    segment: series.segment.to_string(),
                    window_start_ms: *start,
                    events: *events,
                }
            })
            .collect();
        let classification = state.is_classification();
        let awaiting = windows
            .awaiting_labels
            .iter()
            .map(|((start, series), awaiting)| {
                let mut window = WindowState::empty(classification);
                window.events = awaiting.events;
                window.performance = awaiting.performance.clone();
                PartialWindow::from_state(state, *series, *start, start + self.engine.spec.size_ms, &window)
            })
            .collect();
        let partitions = (windows.partitions.iter().map(|(p, clock)| (false, p, clock)))
            .chain(windows.label_partitions.iter().map(|(p, clock)| (true, p, clock)))
            .filter(|(_, _, clock)| clock.max_event_time_ms.is_some() || clock.idle)
            .map(|(labels, partition, clock)| {
                let timeline = self.timelines.get(&(id, labels, *partition));
                PartitionMark {
                    partition: *partition,
                    labels,
                    committed: timeline.and_then(Timeline::committed),
                    clock_ms: clock.max_event_time_ms,
                    idle: clock.idle,
                }
            })
            .collect();
        Some(MergerMark {
            model: model.to_string(),
            next_offset,
            resume_offset,
            closed_through_ms: windows.closed_through_ms,
            late,
            awaiting,
            partitions,
            alerts: None,
            alert_history: Default::default(),
        })
    }

    /// Goes on where another merger of the mark's model stood (before any
    /// record of the model): its windows up to `closed_through_ms` count as
    /// emitted, its unreported late events and its partitions' clocks are
    /// taken over, and the records from the mark's `resume_offset` on are
    /// to be applied next.
    pub fn resume(&mut self, mark: MergerMark) -> Result<(), MergeError> {
        let Some(model) = self.registry.id(&mark.model) else {
            return Err(MergeError::UnknownModel { model: crate::text::shorten_long_tokens(&mark.model).into_owned() });
        };
        let mut awaiting = Vec::with_capacity(mark.awaiting.len());
        for window in &mark.awaiting {
            let start = window.window_start_ms;
            let (series, state) = window
                .clone()
                .into_state(self.registry.get_mut(model), &self.limits)
                .map_err(|source| MergeError::Window { model: mark.model.clone(), partition: -1, source })?;
            awaiting.push(((start, series), AwaitingLabels { events: state.events, performance: state.performance }));
        }
        let caps = (self.limits.max_segments_per_model, self.limits.max_versions_per_model);
        let state = self.registry.get_mut(model);
        let windows = &mut self.engine.windows[model as usize];
        windows.closed_through_ms = mark.closed_through_ms;
        windows.awaiting_labels.extend(awaiting);
        for late in &mark.late {
            let series = state.series_named(&late.model_version, &late.segment, caps);
            *windows.late_pending.entry((series, late.window_start_ms)).or_default() += late.events;
        }
        for partition in &mark.partitions {
            let clocks = if partition.labels { &mut windows.label_partitions } else { &mut windows.partitions };
            let clock = clocks.entry(partition.partition).or_default();
            clock.max_event_time_ms = clock.max_event_time_ms.max(partition.clock_ms);
            clock.idle = partition.idle;
            clock.touched = true;
        }
        windows.advance_frontiers();
        if self.labels.is_some() {
            self.engine.labels_hold[model as usize] = windows.label_partitions.values().any(|clock| !clock.idle);
        }
        self.models.entry(model).or_default().resumed = Some(mark);
        Ok(())
    }
}

impl Engine {
    /// Starts `model`'s windows and joins over, with `partitions` and
    /// `label_partitions` declared (a merger that forgets a model).
    pub fn reset_model(&mut self, model: ModelId, partitions: &[PartitionId], label_partitions: &[PartitionId]) {
        let windows = &mut self.windows[model as usize];
        *windows = crate::window::ModelWindows::default();
        for &partition in partitions {
            let clock = windows.partitions.entry(partition).or_default();
            clock.touched = true;
        }
        for &partition in label_partitions {
            let clock = windows.label_partitions.entry(partition).or_default();
            clock.touched = true;
        }
        self.labels_hold[model as usize] = !label_partitions.is_empty();
        self.joins[model as usize].clear();
        for join in &mut self.shadow_joins[model as usize] {
            join.clear();
        }
    }

    /// Whether `partition` is idle for `model` (a source's delta says so).
    pub fn partition_is_idle(&self, model: ModelId, partition: PartitionId) -> bool {
        self.windows[model as usize].partitions.get(&partition).is_some_and(|clock| clock.idle)
    }

    /// Source partition `partition` went idle for `model` (its source says
    /// so): it stops holding the model's windows until its next event;
    /// rows of windows that close go to `out`.
    pub fn set_partition_idle(
        &mut self,
        registry: &ModelRegistry,
        model: ModelId,
        partition: PartitionId,
        out: &mut Vec<WindowMetricRow>,
    ) {
        let windows = &mut self.windows[model as usize];
        let Some(clock) = windows.partitions.get_mut(&partition) else { return };
        clock.idle = true;
        if windows.advance_frontiers() {
            self.close(registry.get(model), model as usize, false, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    use crate::cluster::record::Commit;
    use crate::config::Config;
    use crate::decode::Decoder;
    use crate::rng::Rng;

    const T0: i64 = 1_795_687_200_000; // 2026-11-26T10:00:00Z

    /// Records of at most about this many bytes: a delta of a few windows
    /// goes in several parts.
    const MAX_TEST_RECORD_BYTES: usize = 4 << 10;

    /// An engine with its registry and decoder, reading `partitions`.
    struct Node {
        registry: ModelRegistry,
        decoder: Decoder,
        engine: Engine,
        config: Config,
        rows: Vec<WindowMetricRow>,
    }

    impl Node {
        fn new(windows: &str, partitions: &[PartitionId]) -> Node {
            let yaml = format!("windows: {windows}\nmodels: [{{name: m, task: binary_classification}}]\n");
            let config = Config::from_yaml_str(&yaml, "t.yaml").unwrap();
            let registry = ModelRegistry::from_config(&config);
            let decoder = Decoder::new(&registry, &config.pipeline).unwrap();
            let mut engine = Engine::new(&config, &registry);
            engine.declare_partitions(partitions);
            Node { registry, decoder, engine, config, rows: Vec::new() }
        }

        fn push(&mut self, partition: PartitionId, events: &[String]) {
            for event in events {
                self.decoder.push_prediction(&mut self.registry, event.as_bytes()).unwrap();
            }
            for batch in self.decoder.finish_predictions() {
                self.engine.push_predictions(&self.registry, &batch, partition, &mut self.rows);
            }
        }

        fn push_labels(&mut self, partition: PartitionId, events: &[String]) {
            for event in events {
                self.decoder.push_label(&mut self.registry, event.as_bytes()).unwrap();
            }
            for batch in self.decoder.finish_labels() {
                self.engine.push_labels(&self.registry, &batch, partition, &mut self.rows);
            }
        }
    }

    /// Per stream, its events in order: predictions partitions 0 to 2 (two
    /// versions, a numeric and a categorical feature, a score, event times
    /// up to 20 s early or late: lateness allows 5 s, so some are late
    /// within their partition), then labels partitions 0 and 1 (two thirds
    /// of the predictions labelled, up to three minutes after them).
    fn partitions(rng: &mut Rng) -> Vec<Vec<String>> {
        let mut partitions = vec![Vec::new(); 5];
        for n in 0..1200u64 {
            let partition = (rng.next_u64() % 3) as usize;
            let second = (n / 3) as i64 + (rng.next_u64() % 40) as i64 - 20;
            let x = (rng.next_u64() % 10_000) as f64 / 7.0;
            let score = (rng.next_u64() % 1000) as f64 / 1000.0;
            let category = ["a", "b", "c", "d"][(rng.next_u64() % 4) as usize];
            let version = 1 + n % 2;
            let time = T0 + second.max(0) * 1000;
            partitions[partition].push(format!(
                r#"{{"event_id":"e{n}","model":"m","model_version":"{version}","timestamp":{time},"prediction":{},"score":{score},"features":{{"x":{x},"c":"{category}"}}}}"#,
                n % 2
            ));
            if !rng.next_u64().is_multiple_of(3) {
                let label_time = time + (rng.next_u64() % 180_000) as i64;
                let label = rng.next_u64() % 2;
                partitions[LABEL_STREAMS + (n % 2) as usize]
                    .push(format!(r#"{{"event_id":"e{n}","model":"m","timestamp":{label_time},"label":{label}}}"#));
            }
        }
        partitions
    }

    /// The first labels stream (the ones before are predictions partitions).
    const LABEL_STREAMS: usize = 3;

    /// Which source reads a stream: predictions partitions 0 and 1 and
    /// labels partition 0 on the first; the others on the second.
    fn owner(stream: usize) -> usize {
        usize::from(stream == 2 || stream == LABEL_STREAMS + 1)
    }

    /// A stream's topic and partition.
    fn stream_partition(stream: usize) -> (&'static str, PartitionId) {
        match stream.checked_sub(LABEL_STREAMS) {
            Some(label) => ("labels", label as PartitionId),
            None => ("predictions", stream as PartitionId),
        }
    }

    /// Two source engines (predictions partitions 0 and 1 and labels
    /// partition 0; the others) publish deltas of random stretches through
    /// MessagePack to a merger's timelines, commit some of them, and crash
    /// at random moments: a fresh engine then reads the crashed one's
    /// partitions again from their committed offsets, with the clock of
    /// their last commit. The merger joins the labels and its rows,
    /// performance too, are the rows of one engine reading each event
    /// once.
    #[test]
    fn a_merger_of_sources_gives_the_rows_of_one_engine() {
        let seed = std::env::var("DRIFTWATCH_CLUSTER_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0xc1u64);
        println!("seed {seed} (DRIFTWATCH_CLUSTER_SEED reruns it)");
        let mut rng = Rng::new(seed);
        let partitions = partitions(&mut rng);
        let sizes: Vec<i64> = partitions.iter().map(|p| p.len() as i64).collect();
        let streams = partitions.len();
        for windows in [
            "{size: 1m, allowed_lateness: 5s, label_horizon: 1h}",
            "{size: 2m, slide: 30s, allowed_lateness: 5s, label_horizon: 1h}",
        ] {
            let source = |owned: &[PartitionId]| {
                let mut node = Node::new(windows, owned);
                node.engine.set_source_mode();
                node
            };
            let mut one = Node::new(windows, &[0, 1, 2]);
            let mut sources = [source(&[0, 1]), source(&[2])];
            // Every record the sources publish, in the order of the topic.
            let mut topic: Vec<PartialsRecord> = Vec::new();
            // Per stream: how far the reference read, how far its current
            // reader read and published, and what the group committed.
            let mut seen = vec![0i64; streams];
            let mut read = vec![0i64; streams];
            let mut published = vec![(0i64, None::<i64>); streams];
            let mut committed = vec![(0i64, None::<i64>); streams];
            let (mut crashes, mut split, mut cut) = (0, 0, 0);
            // Every record goes through MessagePack, as through the topic.
            let send = |topic: &mut Vec<PartialsRecord>, record: PartialsRecord| {
                topic.push(PartialsRecord::from_msgpack(&record.to_msgpack()).unwrap());
            };
            let publish = |source: &mut Node, stream: usize, from: i64, to: i64| {
                let (topic, partition) = stream_partition(stream);
                let taken = if stream >= LABEL_STREAMS {
                    source.engine.take_label_delta(&source.registry, 0, partition)
                } else {
                    source.engine.take_delta(&source.registry, 0, partition)
                };
                let clock_ms = taken.clock_ms;
                let delta = taken.into_delta("m", topic, partition, (from, to), false);
                // Small records: most deltas go in several parts.
                let parts = delta.split(MAX_TEST_RECORD_BYTES);
                (clock_ms, parts.into_iter().map(|part| PartialsRecord::delta("source", part)).collect::<Vec<_>>())
            };
            let commit = |stream: usize, (next, clock_ms): (i64, Option<i64>)| {
                let (topic, partition) = stream_partition(stream);
                let commit = Commit { model: "m".into(), topic: topic.into(), partition, next, clock_ms };
                PartialsRecord::commit("source", commit)
            };
            let push = |node: &mut Node, stream: usize, events: &[String]| {
                let (_, partition) = stream_partition(stream);
                if stream >= LABEL_STREAMS {
                    node.push_labels(partition, events);
                } else {
                    node.push(partition, events);
                }
            };
            let mut turn = 0u64;
            while (0..streams).any(|p| committed[p].0 < sizes[p]) {
                turn += 1;
                let partition = [0, 1, 2, 2, 0, 3, 4][(rng.next_u64() % 7) as usize];
                let reader = &mut sources[owner(partition)];
                let end = (read[partition] + 1 + (rng.next_u64() % 25) as i64).min(sizes[partition]);
                let events = &partitions[partition][read[partition] as usize..end as usize];
                push(reader, partition, events);
                if end > seen[partition] {
                    push(&mut one, partition, &partitions[partition][seen[partition] as usize..end as usize]);
                    seen[partition] = end;
                }
                read[partition] = end;
                let from = published[partition].0;
                let mut cut_short = false;
                if from < end && (rng.next_u64().is_multiple_of(3) || end == sizes[partition]) {
                    let (clock, mut parts) = publish(reader, partition, from, end);
                    split += usize::from(parts.len() > 1);
                    // The reader crashes after sending some of the parts.
                    if parts.len() > 1 && rng.next_u64().is_multiple_of(8) {
                        parts.truncate(1 + (rng.next_u64() % (parts.len() as u64 - 1)) as usize);
                        cut_short = true;
                        cut += 1;
                    }
                    for part in parts {
                        send(&mut topic, part);
                    }
                    if !cut_short {
                        published[partition] = (end, clock);
                    }
                }
                if !cut_short && rng.next_u64().is_multiple_of(4) && published[partition].0 > committed[partition].0 {
                    committed[partition] = published[partition];
                    send(&mut topic, commit(partition, committed[partition]));
                }
                if cut_short || turn.is_multiple_of(37) || rng.next_u64().is_multiple_of(40) {
                    // The reader of `partition` crashes: a fresh one reads
                    // its streams again from what the group committed.
                    crashes += 1;
                    let owned: Vec<usize> = (0..streams).filter(|p| owner(*p) == owner(partition)).collect();
                    let predictions: Vec<PartitionId> =
                        owned.iter().filter(|p| **p < LABEL_STREAMS).map(|p| *p as PartitionId).collect();
                    let mut fresh = source(&predictions);
                    for &p in &owned {
                        if let (Some(clock), true) = (committed[p].1, p < LABEL_STREAMS) {
                            fresh.engine.restore_partition_clock(0, p as PartitionId, clock);
                        }
                        read[p] = committed[p].0;
                        published[p] = committed[p];
                    }
                    sources[owner(partition)] = fresh;
                }
            }
            one.engine.finish(&one.registry, &mut one.rows);
            let merge = |merger: &mut Merger, from: usize, until: usize, rows: &mut Vec<WindowMetricRow>| {
                for (offset, record) in topic.iter().enumerate().take(until).skip(from) {
                    merger.apply(offset as i64, record.clone(), rows).unwrap();
                }
            };
            let new_merger = || Merger::new(&one.config, "predictions", 3).with_labels("labels", 2);
            let mut merger = new_merger();
            let mut merged = Vec::new();
            merge(&mut merger, 0, topic.len(), &mut merged);
            merger.engine.finish(&merger.registry, &mut merged);
            // A merger that stops anywhere, and one that goes on from its
            // mark (read back from the topic), emit those rows between them.
            for _ in 0..16 {
                let stop = (rng.next_u64() % topic.len() as u64) as usize;
                let mut first = new_merger();
                let mut rows = Vec::new();
                merge(&mut first, 0, stop, &mut rows);
                let mark = first.mark("m").unwrap_or(MergerMark {
                    model: "m".into(),
                    next_offset: 0,
                    resume_offset: 0,
                    closed_through_ms: None,
                    late: Vec::new(),
                    awaiting: Vec::new(),
                    partitions: Vec::new(),
                    alerts: None,
                    alert_history: Default::default(),
                });
                let record = PartialsRecord::from_msgpack(&PartialsRecord::mark("merger", mark).to_msgpack()).unwrap();
                let RecordBody::Mark(mark) = record.body else { unreachable!("a mark reads back as a mark") };
                let mut next = new_merger();
                let resume_offset = mark.resume_offset as usize;
                next.resume(mark).unwrap();
                merge(&mut next, resume_offset, topic.len(), &mut rows);
                next.engine.finish(&next.registry, &mut rows);
                // What the first merger took in is not counted again.
                let counted = |c: &crate::engine::EngineCounters| (c.windows_closed, c.events_late);
                let (a, b) = (counted(&first.engine.counters), counted(&next.engine.counters));
                assert_eq!((a.0 + b.0, a.1 + b.1), counted(&merger.engine.counters), "{windows}, seed {seed}");
                let key =
                    |r: &WindowMetricRow| (r.window_start_ms, r.model_version.clone(), r.feature.clone(), r.metric);
                let (got, want): (BTreeSet<_>, BTreeSet<_>) =
                    (rows.iter().map(key).collect(), merged.iter().map(key).collect());
                assert_eq!(
                    rows.len(),
                    merged.len(),
                    "{windows}, seed {seed}: stopped at {stop}, resumed at {resume_offset}: missing {:?}, extra {:?}",
                    want.difference(&got).collect::<Vec<_>>(),
                    got.difference(&want).collect::<Vec<_>>()
                );
                for (a, b) in rows.iter().zip(&merged) {
                    assert!(
                        a == b,
                        "{windows}, seed {seed}: stopped at {stop}, resumed at {resume_offset}:\nresumed {a:?}\nwhole   {b:?}"
                    );
                }
            }
            let counters = &merger.counters;
            println!("{windows}: {crashes} crashes ({cut} mid-delta), {split} deltas in parts, {counters:?}");
            assert!(crashes >= 2 && split > 0, "{windows}, seed {seed}: {crashes} crashes, {split} split");
            assert_eq!((counters.stale, counters.broken), (0, 0), "{windows}, seed {seed}");
            assert!(one.engine.counters.events_late > 0, "{windows}: some events are late within their partition");
            assert_eq!(counters.entries_refused, 0, "{windows}, seed {seed}");
            let labelled: f64 = one
                .rows
                .iter()
                .filter(|r| r.metric == "labeled_count" && r.segment.is_empty() && &*r.model_version == "1")
                .map(|r| r.value)
                .sum();
            assert!(labelled > 100.0, "{windows}: pairs are credited ({labelled} labelled)");
            assert!(!one.rows.is_empty());
            assert_eq!(merged.len(), one.rows.len(), "{windows}, seed {seed}");
            for (a, b) in merged.iter().zip(&one.rows) {
                let close = (a.value - b.value).abs() <= 1e-12 * a.value.abs().max(b.value.abs()).max(1.0)
                    || a.value.to_bits() == b.value.to_bits();
                assert!(
                    a.metric == b.metric
                        && a.window_start_ms == b.window_start_ms
                        && a.model_version == b.model_version
                        && a.feature == b.feature
                        && a.sample_count == b.sample_count
                        && close,
                    "{windows}, seed {seed}:\nmerged {a:?}\none    {b:?}"
                );
            }
        }
    }

    /// A source engine that read `events` predictions, a second apart from
    /// T0, from partition 0, and the delta it took of them.
    fn one_source_read(events: i64) -> (Node, PartitionDelta) {
        let mut source = Node::new("{size: 1m, allowed_lateness: 5s}", &[0]);
        source.engine.set_source_mode();
        let events: Vec<String> = (0..events)
            .map(|n| {
                format!(
                    r#"{{"event_id":"e{n}","model":"m","timestamp":{},"prediction":1,"features":{{"x":{n}}}}}"#,
                    T0 + n * 1000
                )
            })
            .collect();
        source.push(0, &events);
        let taken = source.engine.take_delta(&source.registry, 0, 0);
        (source, taken)
    }

    /// A partition with no event of the model holds its windows at the
    /// merger until its source says it is idle; records of a model the
    /// merger does not know, of another source topic or of a partition the
    /// topic does not have are refused, naming what is wrong.
    #[test]
    fn an_idle_partition_stops_holding_the_merger_and_foreign_records_are_refused() {
        let (source, taken) = one_source_read(100);
        let delta = |partition: i32, end: i64, clock_ms, idle, windows| Delta {
            model: "m".into(),
            topic: "predictions".into(),
            partition,
            start: 0,
            end,
            clock_ms,
            idle,
            windows,
            late: Vec::new(),
            joins: Default::default(),
            part: 0,
            parts: 1,
        };
        let commit = |partition: i32, next: i64, clock_ms| {
            PartialsRecord::commit(
                "source",
                Commit { model: "m".into(), topic: "predictions".into(), partition, next, clock_ms },
            )
        };
        let mut merger = Merger::new(&source.config, "predictions", 2);
        let mut rows = Vec::new();
        let mut offset = 0;
        let mut apply = |merger: &mut Merger, record, rows: &mut Vec<WindowMetricRow>| {
            offset += 1;
            merger.apply(offset, record, rows)
        };
        let first = PartialsRecord::delta("source", delta(0, 100, taken.clock_ms, false, taken.windows));
        apply(&mut merger, first, &mut rows).unwrap();
        apply(&mut merger, commit(0, 100, taken.clock_ms), &mut rows).unwrap();
        assert!(rows.is_empty(), "partition 1 has not been heard from: it holds the windows");
        apply(&mut merger, PartialsRecord::delta("source", delta(1, 0, None, true, Vec::new())), &mut rows).unwrap();
        apply(&mut merger, commit(1, 0, None), &mut rows).unwrap();
        let counts: Vec<(i64, f64)> = rows
            .iter()
            .filter(|r| r.metric == "count" && r.feature.is_none())
            .map(|r| ((r.window_start_ms - T0) / 1000, r.value))
            .collect();
        assert_eq!(counts, [(0, 60.0)], "the first window closes once partition 1 is idle");

        let foreign = |model: &str, topic: &str, partition: i32| {
            let commit = Commit { model: model.into(), topic: topic.into(), partition, next: 200, clock_ms: None };
            PartialsRecord::commit("source", commit)
        };
        let before = rows.len();
        let errors: Vec<String> = [("nope", "predictions", 0), ("m", "labels", 0), ("m", "predictions", 5)]
            .into_iter()
            .map(|(model, topic, partition)| {
                apply(&mut merger, foreign(model, topic, partition), &mut rows).unwrap_err().to_string()
            })
            .collect();
        assert_eq!(
            errors,
            [
                "partials record of model nope: no model of that name is configured",
                "partials record of model m: source topic labels, but this merger merges predictions",
                "partials record of model m: source partition 5, but predictions has 2",
            ]
        );
        assert_eq!(rows.len(), before);
    }

    /// A mark taken while a delta's parts are coming in, or while it waits
    /// for its commit, sends the next merger back to its first part: one
    /// that started after it would drop the rest as not following.
    #[test]
    fn a_mark_between_the_parts_of_a_delta_resumes_at_its_first_part() {
        let (source, taken) = one_source_read(300);
        let clock_ms = taken.clock_ms;
        let delta = taken.into_delta("m", "predictions", 0, (0, 300), false);
        let parts = delta.clone().split(MAX_TEST_RECORD_BYTES);
        assert!(parts.len() > 2, "{} parts", parts.len());
        // (Compared encoded: a prediction without a score carries NaN.)
        let encoded = |delta: Delta| PartialsRecord::delta("source", delta).to_msgpack();
        assert_eq!(encoded(Delta::join(parts.clone())), encoded(delta));
        let mut merger = Merger::new(&source.config, "predictions", 1);
        let mut rows = Vec::new();
        let count = parts.len() as i64;
        for (offset, part) in (10..).zip(parts) {
            merger.apply(offset, PartialsRecord::delta("source", part), &mut rows).unwrap();
            let mark = merger.mark("m").unwrap();
            assert_eq!((mark.resume_offset, mark.next_offset), (10, offset + 1));
        }
        let commit = Commit { model: "m".into(), topic: "predictions".into(), partition: 0, next: 300, clock_ms };
        merger.apply(10 + count, PartialsRecord::commit("source", commit), &mut rows).unwrap();
        assert!(!rows.is_empty(), "the committed delta closed windows");
    }
}
