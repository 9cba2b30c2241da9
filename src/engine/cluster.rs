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
//! Not yet here: labels (the pairs a source forms are to travel in the
//! deltas of the prediction's partition).

use std::collections::BTreeMap;

use super::Engine;
use crate::cluster::record::{Delta, LateEvents, MergerMark, PartialsRecord, PartitionMark, RecordBody};
use crate::cluster::timeline::{Offered, Stretch, Timeline};
use crate::config::PipelineConfig;
use crate::evaluate::WindowState;
use crate::model::{ModelId, ModelRegistry, SeriesId};
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
    (InternedDelta { model, parts, late, clock_ms: delta.clock_ms }, errors)
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
        PartitionDelta { windows: partials, late, clock_ms }
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
        if let Some(clock) = delta.clock_ms {
            windows.observe_event_time(partition, clock);
        }
        self.close(state, model_index, false, out);
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
    /// Per (model, source partition): its stretches, each with the offset
    /// of its record.
    timelines: BTreeMap<(ModelId, i32), Timeline<(i64, Delta)>>,
    /// Per (model, source partition): the parts of a delta read so far
    /// (it is offered once all are in), with the offset of the first.
    assembling: BTreeMap<(ModelId, i32), (i64, Vec<Delta>)>,
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
            timelines: BTreeMap::new(),
            assembling: BTreeMap::new(),
            models: BTreeMap::new(),
            counters: MergerCounters::default(),
        }
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
        if topic != self.source_topic {
            return Err(MergeError::OtherTopic {
                model: model_name,
                topic: crate::text::shorten_long_tokens(&topic).into_owned(),
                expected: self.source_topic.clone(),
            });
        }
        if partition >= self.source_partitions {
            return Err(MergeError::PartitionOutOfRange {
                model: model_name,
                topic,
                partition,
                partitions: self.source_partitions,
            });
        }
        self.reach(model, offset);
        let released = match record.body {
            RecordBody::Delta(delta) => {
                let Some((offset, delta)) = self.assemble(model, partition, offset, delta) else { return Ok(()) };
                let timeline = self.timelines.entry((model, partition)).or_default();
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
            RecordBody::Commit(commit) => self.timelines.entry((model, partition)).or_default().commit(commit.next),
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
            let progress = self.models.entry(model).or_default();
            if let Some(mark) = &progress.resumed {
                // Released by a commit the old merger took in too (a
                // resumed merger is past its mark once a record reaches
                // the mark's `next_offset`): what it emitted or reported
                // is not again.
                let emitted = mark.closed_through_ms;
                interned.parts.retain(|((start, _), _)| emitted.is_none_or(|closed| start + size_ms > closed));
                interned.late.clear();
            }
            for ((start, _), _) in &interned.parts {
                let oldest = progress.open_windows.entry(*start).or_insert(record_offset);
                *oldest = (*oldest).min(record_offset);
            }
            self.engine.apply_stretch(&self.registry, partition, interned, released.clock_before_ms, out);
            if idle {
                self.engine.set_partition_idle(&self.registry, model, partition, out);
            }
        }
        self.forget_closed(model);
        failed.map_or(Ok(()), Err)
    }

    /// A delta whole, with the offset of its first part's record, once its
    /// last part is in. A first part starts over (the parts of a publish a
    /// crash cut short are dropped: the stretch is published again); a part
    /// that does not follow the one before breaks the sources' contract.
    fn assemble(&mut self, model: ModelId, partition: i32, offset: i64, delta: Delta) -> Option<(i64, Delta)> {
        if delta.parts <= 1 {
            self.assembling.remove(&(model, partition));
            return Some((offset, delta));
        }
        let key = (model, partition);
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
        self.timelines.retain(|(m, _), _| *m != id);
        self.assembling.retain(|(m, _), _| *m != id);
        self.models.remove(&id);
        let partitions: Vec<PartitionId> = (0..self.source_partitions).collect();
        self.engine.reset_model(id, &partitions);
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
                    .entry((model, partition.partition))
                    .or_default()
                    .raise(partition.committed, partition.clock_ms);
            }
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
        let provisional = self
            .timelines
            .range((id, i32::MIN)..=(id, i32::MAX))
            .flat_map(|(_, timeline)| timeline.provisional().iter().map(|stretch| stretch.payload.0))
            .chain(self.assembling.range((id, i32::MIN)..=(id, i32::MAX)).map(|(_, (first, _))| *first));
        let resume_offset =
            provisional.chain(progress.open_windows.values().copied()).min().unwrap_or(next_offset).min(next_offset);
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
        let partitions = windows
            .partitions
            .iter()
            .filter(|(_, clock)| clock.max_event_time_ms.is_some() || clock.idle)
            .map(|(partition, clock)| {
                let timeline = self.timelines.get(&(id, *partition));
                PartitionMark {
                    partition: *partition,
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
            let clock = windows.partitions.entry(partition.partition).or_default();
            clock.max_event_time_ms = clock.max_event_time_ms.max(partition.clock_ms);
            clock.idle = partition.idle;
            clock.touched = true;
        }
        windows.advance_frontiers();
        self.models.entry(model).or_default().resumed = Some(mark);
        Ok(())
    }
}

impl Engine {
    /// Starts `model`'s windows over, with `partitions` declared (a merger
    /// that forgets a model).
    pub fn reset_model(&mut self, model: ModelId, partitions: &[PartitionId]) {
        let windows = &mut self.windows[model as usize];
        *windows = crate::window::ModelWindows::default();
        for &partition in partitions {
            let clock = windows.partitions.entry(partition).or_default();
            clock.touched = true;
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
    }

    /// Per partition, its events in order: two versions, a numeric and a
    /// categorical feature, event times up to 20 s early or late (lateness
    /// allows 5 s, so some are late within their partition).
    fn partitions(rng: &mut Rng) -> Vec<Vec<String>> {
        let mut partitions = vec![Vec::new(); 3];
        for n in 0..1200u64 {
            let partition = (rng.next_u64() % 3) as usize;
            let second = (n / 3) as i64 + (rng.next_u64() % 40) as i64 - 20;
            let x = (rng.next_u64() % 10_000) as f64 / 7.0;
            let category = ["a", "b", "c", "d"][(rng.next_u64() % 4) as usize];
            let version = 1 + n % 2;
            partitions[partition].push(format!(
                r#"{{"event_id":"e{n}","model":"m","model_version":"{version}","timestamp":{},"prediction":{},"features":{{"x":{x},"c":"{category}"}}}}"#,
                T0 + second.max(0) * 1000,
                n % 2
            ));
        }
        partitions
    }

    /// Which source reads a partition: 0 and 1 on the first, 2 on the second.
    fn owner(partition: usize) -> usize {
        usize::from(partition == 2)
    }

    /// Two source engines (partitions 0 and 1; partition 2) publish deltas
    /// of random stretches through MessagePack to a merger's timelines,
    /// commit some of them, and crash at random moments: a fresh engine
    /// then reads the crashed one's partitions again from their committed
    /// offsets, with the clock of their last commit. The merger's rows are
    /// the rows of one engine reading each event once.
    #[test]
    fn a_merger_of_sources_gives_the_rows_of_one_engine() {
        let seed = std::env::var("DRIFTWATCH_CLUSTER_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0xc1u64);
        println!("seed {seed} (DRIFTWATCH_CLUSTER_SEED reruns it)");
        let mut rng = Rng::new(seed);
        let partitions = partitions(&mut rng);
        let sizes: Vec<i64> = partitions.iter().map(|p| p.len() as i64).collect();
        for windows in ["{size: 1m, allowed_lateness: 5s}", "{size: 2m, slide: 30s, allowed_lateness: 5s}"] {
            let source = |owned: &[PartitionId]| {
                let mut node = Node::new(windows, owned);
                node.engine.set_source_mode();
                node
            };
            let mut one = Node::new(windows, &[0, 1, 2]);
            let mut sources = [source(&[0, 1]), source(&[2])];
            // Every record the sources publish, in the order of the topic.
            let mut topic: Vec<PartialsRecord> = Vec::new();
            // Per partition: how far the reference read, how far its current
            // reader read and published, and what the group committed.
            let mut seen = [0i64; 3];
            let mut read = [0i64; 3];
            let mut published = [(0i64, None::<i64>); 3];
            let mut committed = [(0i64, None::<i64>); 3];
            let (mut crashes, mut split, mut cut) = (0, 0, 0);
            // Every record goes through MessagePack, as through the topic.
            let send = |topic: &mut Vec<PartialsRecord>, record: PartialsRecord| {
                topic.push(PartialsRecord::from_msgpack(&record.to_msgpack()).unwrap());
            };
            let publish = |source: &mut Node, partition: usize, from: i64, to: i64| {
                let taken = source.engine.take_delta(&source.registry, 0, partition as PartitionId);
                let clock_ms = taken.clock_ms;
                let delta = taken.into_delta("m", "predictions", partition as i32, (from, to), false);
                // Small records: most deltas go in several parts.
                let parts = delta.split(MAX_TEST_RECORD_BYTES);
                (clock_ms, parts.into_iter().map(|part| PartialsRecord::delta("source", part)).collect::<Vec<_>>())
            };
            let commit = |partition: usize, (next, clock_ms): (i64, Option<i64>)| {
                let commit = Commit {
                    model: "m".into(),
                    topic: "predictions".into(),
                    partition: partition as i32,
                    next,
                    clock_ms,
                };
                PartialsRecord::commit("source", commit)
            };
            let mut turn = 0u64;
            while (0..3).any(|p| committed[p].0 < sizes[p]) {
                turn += 1;
                let partition = [0, 1, 2, 2, 0][(rng.next_u64() % 5) as usize];
                let reader = &mut sources[owner(partition)];
                let end = (read[partition] + 1 + (rng.next_u64() % 25) as i64).min(sizes[partition]);
                let events = &partitions[partition][read[partition] as usize..end as usize];
                reader.push(partition as PartitionId, events);
                if end > seen[partition] {
                    one.push(partition as PartitionId, &partitions[partition][seen[partition] as usize..end as usize]);
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
                    // its partitions again from what the group committed.
                    crashes += 1;
                    let owned: Vec<PartitionId> =
                        (0..3).filter(|p| owner(*p) == owner(partition)).map(|p| p as PartitionId).collect();
                    let mut fresh = source(&owned);
                    for &p in &owned {
                        let p = p as usize;
                        if let Some(clock) = committed[p].1 {
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
            let mut merger = Merger::new(&one.config, "predictions", 3);
            let mut merged = Vec::new();
            merge(&mut merger, 0, topic.len(), &mut merged);
            merger.engine.finish(&merger.registry, &mut merged);
            // A merger that stops anywhere, and one that goes on from its
            // mark (read back from the topic), emit those rows between them.
            for _ in 0..16 {
                let stop = (rng.next_u64() % topic.len() as u64) as usize;
                let mut first = Merger::new(&one.config, "predictions", 3);
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
                });
                let record = PartialsRecord::from_msgpack(&PartialsRecord::mark("merger", mark).to_msgpack()).unwrap();
                let RecordBody::Mark(mark) = record.body else { unreachable!("a mark reads back as a mark") };
                let mut next = Merger::new(&one.config, "predictions", 3);
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
        assert_eq!(Delta::join(parts.clone()), delta);
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
