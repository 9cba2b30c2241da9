//! The engine: decoded micro-batches in, `window_metrics` rows out.
//!
//! It is split where partitions meet. The per-partition half ([`lane`])
//! judges each prediction against its partition's watermark, adds it to the
//! partition's panes and seals the partition's contribution to each window
//! its watermark passed. The closer ([`Engine`]) takes those outputs in:
//! it keeps every partition's clock and the model's watermark (the minimum
//! over them), runs the join (pairing predictions and labels and crediting
//! performance to the prediction's windows), and closes each window the
//! watermark has passed as the merge of its partitions' contributions in
//! partition order. [`Engine::push_predictions`] does both halves in-line
//! (one lane); `replay --lanes N` runs the lane half on N threads
//! ([`crate::drivers::lanes`]) with the same rows. Both drivers, `run`
//! (Kafka) and `replay` (files), feed the same engine, so their output is
//! the same for the same events.
//!
//! Architecture invariant: no I/O and no wall clock; the engine is a pure
//! function of the batches it is given, which makes replay deterministic and
//! every behaviour testable with data alone. The one exception is the join
//! store (joins on disk, [`crate::join::store`]), which holds what the
//! memory join would and gives the same answers.

pub mod cluster;
pub mod lane;

use datafusion::arrow::array::Array;

use crate::config::Config;
use crate::decode::{LabelBatch, PredictionArray, PredictionBatch};
use crate::evaluate::{self, Outcome, WindowIdentity};
use crate::join::{
    Join, JoinCheckpoint, JoinCounters, JoinKey, ModelJoin, PairOutcome, PendingLabel, PendingPrediction, Target,
    join_key,
};
use crate::model::{ModelRegistry, ModelState, SeriesId};
use crate::window::{AwaitingLabels, ModelWindows, PartitionId, PartitionPanes, WindowSpec};
use crate::window_metrics::WindowMetricRow;
use lane::{LaneAggregator, LaneOutput, PartitionProgress};

/// Most writes one disk join keeps in memory while its store fails (8
/// batches' worth, some 40 MB) before the daemon stops consuming.
pub const JOIN_WRITES_WAITING_LIMIT: usize = 8 * crate::join::disk::OVERLAY_ENTRIES;

/// Counters the engine keeps (exported as metrics by the drivers).
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EngineCounters {
    pub predictions: u64,
    pub labels: u64,
    /// Events that missed at least one closed window.
    pub events_late: u64,
    pub windows_closed: u64,
    /// Labels that joined a prediction whose windows were already final.
    pub labels_late: u64,
    /// Categorical values pooled into `__other__` by
    /// `pipeline.max_categories_per_feature` (once per window and series
    /// the value went into).
    #[serde(default)]
    pub categories_over_cap: u64,
}

/// The streaming engine for all models.
pub struct Engine {
    spec: WindowSpec,
    drift_alpha: f64,
    max_categories: usize,
    windows: Vec<ModelWindows>,
    /// Per model: the join of its serving versions (lane 0).
    joins: Vec<Join>,
    /// Per model: one join per shadow version (`models[].shadow_versions`;
    /// lane k at index k - 1). Every label is offered to each, so a shadow
    /// and its champion pair with the same labels. Empty without shadows.
    shadow_joins: Vec<Vec<Join>>,
    pub counters: EngineCounters,
    /// Aggregates prediction batches in-line (one lane).
    lane: LaneAggregator,
    /// Per model: whether its labels hold the performance watermark (set by
    /// the driver, which knows whether the labels input is live).
    labels_hold: Vec<bool>,
    /// The host clock as the driver last gave it ([`Self::advance_clock`];
    /// `run` only): event times beyond it do not move a partition's clock
    /// further.
    clock_limit_ms: Option<i64>,
    /// `windows.idle_timeout` in milliseconds (0: partitions never idle).
    idle_timeout_ms: i64,
    /// The store the joins live in, if on disk ([`Self::use_join_store`]).
    join_store: Option<std::sync::Arc<crate::join::store::JoinStore>>,
    /// The join keys of the labels batch being pushed (kept for its
    /// allocation).
    label_keys: Vec<JoinKey>,
    /// A source engine of a cluster: windows never close here
    /// ([`cluster`]).
    source_mode: bool,
    /// A source engine's late events per (model, partition) and (series,
    /// start of the window reporting them), until their delta is taken.
    source_late: std::collections::BTreeMap<(usize, PartitionId), std::collections::BTreeMap<(SeriesId, i64), u64>>,
    /// A source engine's join entries per (model, partition, whether a
    /// labels partition), in the order read, until their delta is taken:
    /// a cluster joins at the merger.
    source_joins: std::collections::BTreeMap<(usize, PartitionId, bool), cluster::SourceJoinEntries>,
    /// A resumed merger re-applying what its predecessor took in: pairs
    /// credit no window ending at or before this (their performance is in
    /// the mark), and pending entries do not expire.
    replaying_through_ms: Option<Option<i64>>,
}

impl Engine {
    pub fn new(config: &Config, registry: &ModelRegistry) -> Self {
        let spec = WindowSpec::from_config(&config.windows);
        Engine {
            spec,
            drift_alpha: config.drift.alpha,
            max_categories: config.pipeline.max_categories_per_feature,
            windows: registry.models.iter().map(|_| ModelWindows::default()).collect(),
            joins: registry
                .models
                .iter()
                .map(|_| Join::Memory(ModelJoin::new(spec.label_horizon_ms, config.pipeline.max_pending_joins)))
                .collect(),
            shadow_joins: registry
                .models
                .iter()
                .map(|model| {
                    model
                        .config
                        .shadow_versions
                        .iter()
                        .map(|_| Join::Memory(ModelJoin::new(spec.label_horizon_ms, config.pipeline.max_pending_joins)))
                        .collect()
                })
                .collect(),
            counters: EngineCounters::default(),
            lane: LaneAggregator::new(spec, config.pipeline.max_categories_per_feature),
            labels_hold: vec![false; registry.models.len()],
            clock_limit_ms: None,
            idle_timeout_ms: i64::try_from(config.windows.idle_timeout.as_millis()).unwrap_or(i64::MAX),
            join_store: None,
            label_keys: Vec::new(),
            source_mode: false,
            source_late: Default::default(),
            source_joins: Default::default(),
            replaying_through_ms: None,
        }
    }

    /// Moves every model's joins to `store` (before any event): their
    /// waiting entries live on disk from then on. Each join gets a key
    /// prefix of its own, fresh for this run.
    pub fn use_join_store(&mut self, store: &std::sync::Arc<crate::join::store::JoinStore>, max_pending: usize) {
        let horizon_ms = self.spec.label_horizon_ms;
        let run = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default();
        let mut next = 0u64;
        let mut disk = || {
            next += 1;
            let prefix = xxhash_rust::xxh3::xxh3_64_with_seed(&next.to_le_bytes(), run);
            Join::Disk(crate::join::disk::DiskJoin::new(std::sync::Arc::clone(store), prefix, horizon_ms, max_pending))
        };
        for join in self.joins.iter_mut().chain(self.shadow_joins.iter_mut().flatten()) {
            *join = disk();
        }
        self.join_store = Some(std::sync::Arc::clone(store));
    }

    /// Deletes from the join store the entries of the joins `prefixes` that
    /// no join of this engine uses (a checkpoint's joins that were not
    /// restored).
    pub fn delete_unused_joins(&self, prefixes: &[u64]) {
        let Some(store) = &self.join_store else { return };
        let in_use: Vec<u64> = self
            .joins
            .iter()
            .chain(self.shadow_joins.iter().flatten())
            .filter_map(|join| match join {
                Join::Disk(join) => Some(join.prefix()),
                Join::Memory(_) => None,
            })
            .collect();
        for prefix in prefixes.iter().filter(|p| !in_use.contains(p)) {
            tracing::info!(prefix, "deleting the join store entries of a checkpointed join that was not restored");
            store.delete_join(*prefix);
        }
    }

    /// The join store, when the joins live on disk.
    pub fn join_store(&self) -> Option<&std::sync::Arc<crate::join::store::JoinStore>> {
        self.join_store.as_ref()
    }

    /// While the join store fails: tries to recover it (when an attempt is
    /// due; see [`crate::join::store::JoinStore::recover`]) and, once it
    /// takes writes, writes what every join kept in memory meanwhile.
    pub fn retry_join_store(&mut self) {
        let Some(store) = &self.join_store else { return };
        if store.failure().is_none() || !store.recover() {
            return;
        }
        for join in self.joins.iter_mut().chain(self.shadow_joins.iter_mut().flatten()) {
            join.flush();
        }
    }

    /// Whether some join keeps more writes in memory than
    /// [`JOIN_WRITES_WAITING_LIMIT`] (its store fails): the daemon then
    /// stops consuming until the store takes them.
    pub fn join_store_backed_up(&self) -> bool {
        self.joins
            .iter()
            .chain(self.shadow_joins.iter().flatten())
            .any(|join| join.waiting_for_store() > JOIN_WRITES_WAITING_LIMIT)
    }

    /// Checkpoints the join store into `target` (a directory that must not
    /// exist), after writing every join's recent entries to it. Nothing to
    /// do when the joins are in memory (they go into the checkpoint file).
    pub fn checkpoint_join_store(
        &mut self,
        target: &std::path::Path,
    ) -> Result<(), crate::join::store::JoinStoreError> {
        let Some(store) = &self.join_store else { return Ok(()) };
        for join in self.joins.iter_mut().chain(self.shadow_joins.iter_mut().flatten()) {
            join.flush();
        }
        if let Some(failure) = store.failure() {
            return Err(crate::join::store::JoinStoreError::Failing {
                path: store.path().display().to_string(),
                failure,
            });
        }
        store.checkpoint(target)
    }

    /// Declares predictions partitions before their events are read
    /// (`replay`: every input file; `run`: the partitions assigned to the
    /// consumer): each holds every model's watermark until its first event
    /// (or, in `run`, until it has been idle for `windows.idle_timeout`),
    /// so events of a partition read later are not late because another
    /// moved the watermark. A declared partition that had gone idle holds
    /// again, from where its clock stood.
    pub fn declare_partitions(&mut self, partitions: &[PartitionId]) {
        for windows in &mut self.windows {
            for &partition in partitions {
                let clock = windows.partitions.entry(partition).or_default();
                clock.idle = false;
                clock.touched = true;
            }
        }
    }

    /// A predictions partition (`labels`: a labels partition) has ended
    /// (`replay`: its file is read): it stops holding every model's
    /// watermarks back. Rows of windows that close as a result go to `out`.
    pub fn partition_idle(
        &mut self,
        registry: &ModelRegistry,
        partition: PartitionId,
        labels: bool,
        out: &mut Vec<WindowMetricRow>,
    ) {
        for model in 0..self.windows.len() {
            let windows = &mut self.windows[model];
            let clocks = if labels { &mut windows.label_partitions } else { &mut windows.partitions };
            let Some(clock) = clocks.get_mut(&partition) else { continue };
            clock.idle = true;
            if windows.advance_frontiers() {
                self.close(registry.get(model as u32), model, false, out);
            }
        }
    }

    /// The driver's wall clock (`run` only; the engine itself never reads
    /// one), each tick:
    ///
    /// - events later than `now_ms` no longer move a partition's clock
    ///   past it (so the watermark stays at or below the host clock minus
    ///   `allowed_lateness`);
    /// - a model's partition (predictions or labels) with no event of the
    ///   model for `windows.idle_timeout` goes idle and stops holding the
    ///   others back, until its next event;
    /// - a model all of whose predictions partitions are idle closes its
    ///   windows once `now_ms` passes their end + `allowed_lateness` +
    ///   `idle_timeout`.
    ///
    /// Silence counts only up to `read_until_ms`, the time up to which the
    /// source is known to have been read (the driver's: when a broker last
    /// answered); `None` while consumption is paused (backpressure), when
    /// nothing goes idle and silence counts again from the resume: not
    /// reading is not silence. Rows of windows that close go to `out`.
    pub fn advance_clock(
        &mut self,
        registry: &ModelRegistry,
        now_ms: i64,
        read_until_ms: Option<i64>,
        out: &mut Vec<WindowMetricRow>,
    ) {
        self.clock_limit_ms = Some(now_ms);
        let idle_ms = self.idle_timeout_ms;
        for model in 0..self.windows.len() {
            let windows = &mut self.windows[model];
            let mut went_idle = false;
            for clock in windows.partitions.values_mut().chain(windows.label_partitions.values_mut()) {
                if clock.active_at_ms.is_none() || read_until_ms.is_none() || clock.touched {
                    clock.touched = false;
                    clock.active_at_ms = Some(now_ms);
                    continue;
                }
                if clock.goes_idle(read_until_ms, idle_ms) {
                    clock.idle = true;
                    went_idle = true;
                }
            }
            let mut moved = went_idle && windows.advance_frontiers();
            let quiet = !windows.partitions.is_empty() && windows.partitions.values().all(|c| c.idle);
            if quiet && windows.max_event_time_ms.is_some() {
                moved |= windows.raise_frontier(now_ms.saturating_sub(idle_ms));
            }
            if moved {
                self.close(registry.get(model as u32), model, false, out);
            }
        }
    }

    /// Per model, its frontier as it stands (the largest event time the
    /// watermark allows, before `allowed_lateness`): what lanes judge a
    /// partition that was idle by.
    pub fn model_frontiers(&self) -> Vec<Option<i64>> {
        // A source engine's partitions judge by their own clocks only.
        self.windows.iter().map(|w| if self.source_mode { None } else { w.max_event_time_ms }).collect()
    }

    /// The host clock event times are capped at (`run`; set each tick).
    pub fn clock_limit(&self) -> Option<i64> {
        self.clock_limit_ms
    }

    /// Per model, predictions partition `partition`'s own clock (its
    /// largest event time), where a lane taking it over starts.
    pub fn partition_clocks(&self, partition: PartitionId) -> Vec<Option<i64>> {
        self.windows.iter().map(|w| w.partitions.get(&partition).and_then(|c| c.max_event_time_ms)).collect()
    }

    /// Takes predictions partition `partition`'s panes out of the engine,
    /// per model (empty where it has none): what a lane taking the
    /// partition over goes on from.
    pub fn take_partition_panes(&mut self, partition: PartitionId) -> Vec<PartitionPanes> {
        self.windows.iter_mut().map(|w| w.panes.remove(&partition).unwrap_or_default()).collect()
    }

    /// Puts panes of predictions partition `partition` into the engine,
    /// per model (a lane's, for a checkpoint to keep).
    pub fn put_partition_panes(&mut self, partition: PartitionId, panes: Vec<PartitionPanes>) {
        for (windows, panes) in self.windows.iter_mut().zip(panes) {
            if !panes.panes.is_empty() || panes.sealed_through_ms.is_some() {
                windows.panes.insert(partition, panes);
            }
        }
    }

    /// The predictions partitions (of any model) that
    /// [`Self::advance_clock`] with this `read_until_ms` makes idle: a
    /// driver whose lanes hold panes has them handed over first.
    pub fn partitions_going_idle(&self, read_until_ms: Option<i64>) -> std::collections::BTreeSet<PartitionId> {
        self.windows
            .iter()
            .flat_map(|w| w.partitions.iter())
            .filter(|(_, clock)| clock.goes_idle(read_until_ms, self.idle_timeout_ms))
            .map(|(partition, _)| *partition)
            .collect()
    }

    /// A model's watermark per predictions partition that carried it (its
    /// largest event time minus `allowed_lateness`), for
    /// `driftwatch_watermark_seconds{model,partition}`.
    pub fn partition_watermarks(&self, model: usize) -> impl Iterator<Item = (PartitionId, i64)> + '_ {
        let lateness = self.spec.allowed_lateness_ms;
        self.windows[model]
            .partitions
            .iter()
            .filter_map(move |(id, c)| c.max_event_time_ms.map(|t| (*id, t.saturating_sub(lateness))))
    }

    /// An event time as it may move a partition's clock.
    #[inline]
    fn clock_time(&self, time_ms: i64) -> i64 {
        self.clock_limit_ms.map_or(time_ms, |limit| time_ms.min(limit))
    }

    /// Whether a model's labels hold its performance rows and pending
    /// joins: while they do, a window's performance closes (and a pending
    /// entry expires) only once both the watermark and the labels' own
    /// watermark have passed its horizon, so predictions read ahead of
    /// their labels cannot finalise a window before its labels are read.
    /// The daemon holds while a model's labels are live (not silent for
    /// `windows.idle_timeout`); replay holds while its label files have
    /// events left. Releasing closes what the
    /// watermark alone has passed; rows go to `out`.
    pub fn set_labels_holding(
        &mut self,
        registry: &ModelRegistry,
        model: usize,
        hold: bool,
        out: &mut Vec<WindowMetricRow>,
    ) {
        let released = self.labels_hold[model] && !hold;
        self.labels_hold[model] = hold;
        if released {
            self.close(registry.get(model as u32), model, false, out);
        }
    }

    /// Whether a model's labels hold its performance watermark.
    pub fn labels_holding(&self, model: usize) -> bool {
        self.labels_hold[model]
    }

    pub fn spec(&self) -> &WindowSpec {
        &self.spec
    }

    /// A model's open windows, windows awaiting labels and pending joins
    /// (what a checkpoint keeps).
    pub fn model_state(&self, model: usize) -> (&ModelWindows, &Join) {
        (&self.windows[model], &self.joins[model])
    }

    /// A model's shadow joins, lane k at index k - 1 (what a checkpoint
    /// keeps beside [`Self::model_state`]).
    pub fn shadow_joins(&self, model: usize) -> &[Join] {
        &self.shadow_joins[model]
    }

    /// Puts back a model's checkpointed windows and joins; the join keeps
    /// the horizon and cap of the current config.
    pub fn restore_model(&mut self, model: usize, mut windows: ModelWindows, join: JoinCheckpoint) {
        windows.migrate_whole_windows(&self.spec);
        self.windows[model] = windows;
        self.joins[model].restore(join);
    }

    /// Puts back the checkpointed join of shadow lane `lane` (1-based, as
    /// in [`crate::model::Series::lane`]); returns false when the model has
    /// no such lane.
    pub fn restore_shadow_join(&mut self, model: usize, lane: u32, join: JoinCheckpoint) -> bool {
        let Some(target) = (lane as usize).checked_sub(1).and_then(|k| self.shadow_joins[model].get_mut(k)) else {
            return false;
        };
        target.restore(join);
        true
    }

    /// The join of a prediction's lane (a lane the engine does not know,
    /// which a consistent config never gives, falls back to the serving one).
    #[inline]
    fn join_of_lane(&mut self, model_index: usize, lane: u32) -> &mut Join {
        if lane > 0
            && let Some(join) = self.shadow_joins[model_index].get_mut(lane as usize - 1)
        {
            return join;
        }
        &mut self.joins[model_index]
    }

    /// The watermark of a model, if it has seen events.
    pub fn watermark(&self, model: usize) -> Option<i64> {
        self.windows[model].watermark(&self.spec)
    }

    /// Join counters summed over models. Shadow lanes add their pairs,
    /// expired and duplicate predictions and evictions; labels are counted
    /// by the serving lane alone (every label visits each lane, so a lane's
    /// unmatched or duplicate labels would count the same label again).
    pub fn join_counters(&self) -> JoinCounters {
        let mut total = JoinCounters::default();
        for j in self.joins.iter().map(Join::counters) {
            total.predictions_expired += j.predictions_expired;
            total.labels_unmatched += j.labels_unmatched;
            total.evicted += j.evicted;
            total.duplicate_predictions += j.duplicate_predictions;
            total.duplicate_labels += j.duplicate_labels;
            total.matched += j.matched;
        }
        for j in self.shadow_joins.iter().flatten().map(Join::counters) {
            total.predictions_expired += j.predictions_expired;
            total.evicted += j.evicted;
            total.duplicate_predictions += j.duplicate_predictions;
            total.matched += j.matched;
        }
        total
    }

    /// Entries waiting in the join, over all models and lanes.
    pub fn pending_joins(&self) -> usize {
        self.joins.iter().chain(self.shadow_joins.iter().flatten()).map(Join::pending).sum()
    }

    /// Open windows over all models.
    pub fn open_windows(&self) -> usize {
        self.windows.iter().map(|w| w.open_len()).sum()
    }

    /// Adds a micro-batch of predictions read from predictions partition
    /// `partition`; rows of windows that close as a result are appended to
    /// `out`. (Aggregates in-line, as one lane; see [`lane`].)
    pub fn push_predictions(
        &mut self,
        registry: &ModelRegistry,
        batch: &PredictionBatch,
        partition: PartitionId,
        out: &mut Vec<WindowMetricRow>,
    ) {
        if batch.is_empty() {
            return;
        }
        let model = registry.get(batch.model);
        let windows = &mut self.windows[batch.model as usize];
        let progress = PartitionProgress {
            // A source engine's frontier is over its own partitions only,
            // not the model's: its partitions judge by their own clocks, and
            // the merger by the model's ([`cluster`]).
            model_frontier: if self.source_mode { None } else { windows.max_event_time_ms },
            own_clock: windows.partitions.get(&partition).and_then(|c| c.max_event_time_ms),
            clock_limit: self.clock_limit_ms,
        };
        let panes = windows.panes.entry(partition).or_default();
        let output = self.lane.aggregate(model, batch, partition, progress, panes);
        self.apply_lane_output(registry, Some(batch), output, out);
    }

    /// Moves every partition's open panes into the closer's contributions
    /// (see [`LaneAggregator::hand_over`]): the rows stay those of an
    /// engine that never did (values may differ in the last bits, as parts
    /// merge rather than add in one pass).
    pub fn hand_over_panes(&mut self) {
        for windows in &mut self.windows {
            let partitions: Vec<PartitionId> = windows.panes.keys().copied().collect();
            for partition in partitions {
                let panes = windows.panes.get_mut(&partition).expect("listed");
                for (key, state) in self.lane.hand_over(panes) {
                    let _ = windows.add_contribution(&self.spec, key, partition, state, self.max_categories);
                }
            }
        }
    }

    /// Takes in what a lane made of a batch of predictions (`batch`, in
    /// this engine's ids; `None` for a partition's last contributions when
    /// it ended): counters, late rows, sealed contributions; joins the rows
    /// that counted, moves the partition's clock and closes what the
    /// watermark passed (rows to `out`).
    pub fn apply_lane_output(
        &mut self,
        registry: &ModelRegistry,
        batch: Option<&PredictionBatch>,
        output: LaneOutput,
        out: &mut Vec<WindowMetricRow>,
    ) {
        let model_index = output.model as usize;
        let model = registry.get(output.model);
        let partition = output.partition;
        self.counters.predictions += output.predictions;
        self.counters.events_late += output.events_late;
        self.counters.categories_over_cap += output.categories_over_cap;
        let spec = self.spec;
        if self.source_mode {
            self.note_source_late(model_index, partition, output.late);
        } else {
            let windows = &mut self.windows[model_index];
            for late in output.late {
                *windows.late_pending.entry(late).or_default() += 1;
            }
        }
        let windows = &mut self.windows[model_index];
        for (key, state) in output.contributions {
            // A lane judged lateness by the model's frontier as it last
            // knew it: the part of a partition that had been idle can come
            // after its window closed. Its events count late, as they would
            // have, judged here.
            if let Some(dropped) = windows.add_contribution(&spec, key, partition, state, self.max_categories)
                && model.series[key.1 as usize].whole_model.is_none()
            {
                self.counters.events_late += dropped.events;
                tracing::debug!(
                    partition,
                    window_start_ms = key.0,
                    events = dropped.events,
                    "part of a closed window: late"
                );
            }
        }
        let Some(batch) = batch.filter(|b| !b.is_empty()) else { return };
        if self.source_mode {
            self.note_source_predictions(model_index, partition, batch, &output.accepted, &output.keys);
            let max_time = datafusion::arrow::compute::max(&batch.event_time_ms).expect("batch is not empty");
            let clock = self.clock_time(max_time);
            self.windows[model_index].observe_event_time(partition, clock);
            return;
        }
        // Join: predictions meet waiting labels or wait for theirs. Each row
        // meets the join as the model's watermark stood when it arrived
        // (entries expire row by row, not once per batch), so what pairs
        // does not depend on how the stream was cut into micro-batches.
        self.prefetch_prediction_joins(model, model_index, batch, &output.accepted, &output.keys);
        let times = batch.event_time_ms.values();
        let mut running = self.windows[model_index].running_event_frontier(partition);
        for (row, accepted) in output.accepted.iter().enumerate() {
            let arrival = running.frontier;
            running.observe(self.clock_time(times[row]));
            if !accepted {
                continue;
            }
            self.windows[model_index].max_event_time_ms = arrival;
            self.expire_joins(model_index);
            let predicted = match &batch.prediction {
                PredictionArray::Class(a) => Target::Class(a.value(row)),
                PredictionArray::Value(a) => Target::Value(a.value(row)),
            };
            let pending = PendingPrediction {
                series: batch.series.value(row),
                event_time_ms: times[row],
                predicted,
                score: if batch.score.is_null(row) { f64::NAN } else { batch.score.value(row) },
            };
            let key = output.keys[row];
            let lane = model.series[pending.series as usize].lane;
            if let Some(label) = self.join_of_lane(model_index, lane).on_prediction(key, pending) {
                self.on_pair(model, model_index, (lane, key), &pending, &label);
            }
        }
        let max_time = datafusion::arrow::compute::max(&batch.event_time_ms).expect("batch is not empty");
        let clock = self.clock_time(max_time);
        self.windows[model_index].observe_event_time(partition, clock);
        self.close(model, model_index, false, out);
    }

    /// Reads ahead, for each of the model's joins, the entries the accepted
    /// rows of a micro-batch of predictions will meet (one batched lookup
    /// per join on disk).
    fn prefetch_prediction_joins(
        &mut self,
        model: &ModelState,
        model_index: usize,
        batch: &PredictionBatch,
        accepted: &[bool],
        keys: &[JoinKey],
    ) {
        let lanes = 1 + self.shadow_joins[model_index].len();
        for lane in 0..lanes {
            let lane_keys = accepted.iter().enumerate().filter_map(|(row, &accepted)| {
                let series_lane = model.series[batch.series.value(row) as usize].lane as usize;
                // A lane without a join of its own pairs in lane 0's.
                let join_lane = if series_lane < lanes { series_lane } else { 0 };
                (accepted && join_lane == lane).then(|| keys[row])
            });
            self.join_of_lane(model_index, lane as u32).prefetch(lane_keys);
        }
    }

    /// Adds a micro-batch of labels read from labels partition `partition`
    /// (the labels' watermark is the minimum over the labels partitions
    /// carrying the model, as for predictions).
    pub fn push_labels(
        &mut self,
        registry: &ModelRegistry,
        batch: &LabelBatch,
        partition: PartitionId,
        out: &mut Vec<WindowMetricRow>,
    ) {
        let model_index = batch.model as usize;
        let model = registry.get(batch.model);
        self.counters.labels += batch.len() as u64;
        if self.source_mode {
            self.note_source_labels(model_index, partition, batch);
            if let Some(max_time) = datafusion::arrow::compute::max(&batch.event_time_ms) {
                let clock = self.clock_time(max_time);
                self.windows[model_index].observe_label_time(partition, clock);
            }
            return;
        }
        let mut frontier = self.windows[model_index].running_label_frontier(partition);
        self.label_keys.clear();
        self.label_keys.extend((0..batch.len()).map(|row| join_key(batch.event_id.value(row))));
        self.joins[model_index].prefetch(self.label_keys.iter().copied());
        for join in &mut self.shadow_joins[model_index] {
            join.prefetch(self.label_keys.iter().copied());
        }
        for row in 0..batch.len() {
            let actual = match &batch.label {
                PredictionArray::Class(a) => Target::Class(a.value(row)),
                PredictionArray::Value(a) => Target::Value(a.value(row)),
            };
            let label = PendingLabel { label_time_ms: batch.event_time_ms.value(row), actual };
            // As for predictions: each label meets the join as the
            // watermarks stood when it arrived.
            self.expire_joins(model_index);
            let clock = self.clock_time(label.label_time_ms);
            self.windows[model_index].max_label_time_ms = frontier.observe(clock);
            let key = self.label_keys[row];
            if let Some(prediction) = self.joins[model_index].on_label(key, label) {
                self.on_pair(model, model_index, (0, key), &prediction, &label);
            }
            // Each shadow pairs with the same label, on its own lane.
            for lane in 0..self.shadow_joins[model_index].len() {
                if let Some(prediction) = self.shadow_joins[model_index][lane].on_label(key, label) {
                    self.on_pair(model, model_index, (lane as u32 + 1, key), &prediction, &label);
                }
            }
        }
        if let Some(max_time) = datafusion::arrow::compute::max(&batch.event_time_ms) {
            let clock = self.clock_time(max_time);
            self.windows[model_index].observe_label_time(partition, clock);
        }
        self.close(model, model_index, false, out);
    }

    /// Expires the model's pending join entries the performance watermark
    /// has passed (cheap when none has: a look at the queue's front).
    #[inline]
    fn expire_joins(&mut self, model_index: usize) {
        if self.replaying_through_ms.is_some() {
            return;
        }
        if let Some(watermark) =
            self.windows[model_index].performance_watermark(&self.spec, self.labels_hold[model_index])
        {
            self.joins[model_index].expire(watermark);
            for join in &mut self.shadow_joins[model_index] {
                join.expire(watermark);
            }
        }
    }

    /// A pair formed in `lane`: credited to its prediction's windows and,
    /// for a model with shadows, compared with the other lanes' pairs of the
    /// same event. Whichever of a shadow's and the champion's pairs forms
    /// second credits the comparison to the shadow's windows, so each is
    /// counted once, in whichever order the three events came.
    fn on_pair(
        &mut self,
        model: &ModelState,
        model_index: usize,
        (lane, key): (u32, JoinKey),
        prediction: &PendingPrediction,
        label: &PendingLabel,
    ) {
        self.credit(model, model_index, prediction, label);
        if self.shadow_joins[model_index].is_empty() {
            return;
        }
        let (Target::Class(predicted), Target::Class(actual)) = (prediction.predicted, label.actual) else { return };
        let outcome = PairOutcome {
            correct: predicted == actual,
            series: prediction.series,
            event_time_ms: prediction.event_time_ms,
        };
        self.join_of_lane(model_index, lane).record_outcome(key, outcome);
        if lane > 0 {
            if let Some(champion) = self.joins[model_index].outcome(key) {
                self.credit_paired(model, model_index, &outcome, champion.correct);
            }
            return;
        }
        for shadow_lane in 0..self.shadow_joins[model_index].len() {
            if let Some(shadow) = self.shadow_joins[model_index][shadow_lane].outcome(key) {
                self.credit_paired(model, model_index, &shadow, outcome.correct);
            }
        }
    }

    /// Credits a shadow's and its champion's outcomes on one event to the
    /// windows of the shadow's prediction.
    fn credit_paired(&mut self, model: &ModelState, model_index: usize, shadow: &PairOutcome, champion_correct: bool) {
        self.credit_windows(model, model_index, shadow.series, shadow.event_time_ms, |performance| {
            performance.paired.add(shadow.correct, champion_correct)
        });
    }

    /// Credits a joined pair to every window of the prediction's event time.
    fn credit(&mut self, model: &ModelState, model_index: usize, prediction: &PendingPrediction, label: &PendingLabel) {
        let outcome = match (prediction.predicted, label.actual) {
            (Target::Class(predicted), Target::Class(actual)) => {
                Outcome::Class { predicted, actual, score: prediction.score }
            }
            (Target::Value(predicted), Target::Value(actual)) => Outcome::Value { predicted, actual },
            _ => return,
        };
        let credited =
            self.credit_windows(model, model_index, prediction.series, prediction.event_time_ms, |p| p.add(outcome));
        if !credited {
            self.counters.labels_late += 1;
        }
    }

    /// Applies `credit` to the performance of every window (of `series` and
    /// of its whole-model series) holding `event_time_ms` whose performance
    /// rows are not out yet; returns whether there was one.
    fn credit_windows(
        &mut self,
        model: &ModelState,
        model_index: usize,
        series: SeriesId,
        event_time_ms: i64,
        mut credit: impl FnMut(&mut crate::evaluate::PerformanceState),
    ) -> bool {
        let spec = self.spec;
        let windows = &mut self.windows[model_index];
        let mut credited = false;
        let replayed = self.replaying_through_ms.flatten();
        for start in spec.starts_of(event_time_ms) {
            if replayed.is_some_and(|through| start.saturating_add(spec.size_ms) <= through) {
                // Credited by the merger that marked this window.
                credited = true;
                continue;
            }
            for s in [Some(series), model.series[series as usize].whole_model].into_iter().flatten() {
                if let Some(performance) = windows.performance_of(&spec, (start, s)) {
                    credit(performance);
                    credited = true;
                }
            }
        }
        credited
    }

    fn close(&mut self, model: &ModelState, model_index: usize, everything: bool, out: &mut Vec<WindowMetricRow>) {
        // A source engine's windows close at the merger.
        if self.source_mode {
            return;
        }
        let windows = &mut self.windows[model_index];
        let mut closed = windows.take_closable(&self.spec, everything, self.max_categories);
        // Pairs credited to windows that close with no data (all of their
        // events were late for them) have no window to go to.
        let closed_through = if everything { i64::MAX } else { windows.closed_through_ms.unwrap_or(i64::MIN) };
        let size_ms = self.spec.size_ms;
        while let Some(entry) = windows.performance.first_entry() {
            if entry.key().0.saturating_add(size_ms) > closed_through {
                break;
            }
            let key = *entry.key();
            let performance = entry.remove();
            match closed.binary_search_by(|(k, _)| k.cmp(&key)) {
                Err(_) => self.counters.labels_late += performance.labeled,
                Ok(index) => closed[index].1.performance = performance,
            }
        }
        // Rows come out by window, then version, then segment ("" first).
        let order = |start: i64, series: SeriesId| {
            let s = &model.series[series as usize];
            (start, s.model_version.clone(), s.segment.clone())
        };
        closed.sort_by_cached_key(|((start, series), _)| order(*start, *series));
        let drift_alpha = self.drift_alpha;
        let identity = |start: i64, series: SeriesId| WindowIdentity {
            model,
            series,
            start_ms: start,
            end_ms: start + size_ms,
            drift_alpha,
        };
        for ((start, series), mut state) in closed {
            self.counters.windows_closed += 1;
            let late = windows.take_late(series, start);
            evaluate::data_rows(&mut state, &identity(start, series), late, out);
            windows
                .awaiting_labels
                .insert((start, series), AwaitingLabels { events: state.events, performance: state.performance });
        }
        let watermark = if everything {
            Some(i64::MAX)
        } else {
            windows.performance_watermark(&self.spec, self.labels_hold[model_index])
        };
        if let Some(watermark) = watermark.filter(|_| self.replaying_through_ms.is_none()) {
            self.joins[model_index].expire(watermark);
            for join in &mut self.shadow_joins[model_index] {
                join.expire(watermark);
            }
        }
        let mut labelled = windows.take_labelled(&self.spec, watermark);
        labelled.sort_by_cached_key(|((start, series), _)| order(*start, *series));
        for ((start, series), awaiting) in labelled {
            evaluate::performance_rows(&awaiting.performance, awaiting.events, &identity(start, series), out);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::Decoder;

    const T0: i64 = 1_795_687_200_000; // 2026-11-26T10:00:00Z, a whole hour

    struct Harness {
        registry: ModelRegistry,
        decoder: Decoder,
        engine: Engine,
        rows: Vec<WindowMetricRow>,
    }

    impl Harness {
        fn new(windows: &str) -> Self {
            Self::with_model(windows, "{name: m, task: binary_classification}")
        }

        fn with_model(windows: &str, model: &str) -> Self {
            let yaml = format!("windows: {windows}\nmodels: [{model}]\n");
            let config = Config::from_yaml_str(&yaml, "t.yaml").unwrap();
            let registry = ModelRegistry::from_config(&config);
            let decoder = Decoder::new(&registry, &config.pipeline).unwrap();
            let engine = Engine::new(&config, &registry);
            Harness { registry, decoder, engine, rows: Vec::new() }
        }

        fn predict(&mut self, id: &str, seconds: i64, prediction: u8) {
            let event = format!(
                r#"{{"event_id":"{id}","model":"m","timestamp":{},"prediction":{prediction},"features":{{"x":{seconds}}}}}"#,
                T0 + seconds * 1000
            );
            self.decoder.push_prediction(&mut self.registry, event.as_bytes()).unwrap();
            for batch in self.decoder.finish_predictions() {
                self.engine.push_predictions(&self.registry, &batch, 0, &mut self.rows);
            }
        }

        /// A prediction read from predictions partition `partition`.
        fn predict_on(&mut self, partition: PartitionId, id: &str, seconds: i64) {
            let event = format!(
                r#"{{"event_id":"{id}","model":"m","timestamp":{},"prediction":1,"features":{{"x":{seconds}}}}}"#,
                T0 + seconds * 1000
            );
            self.decoder.push_prediction(&mut self.registry, event.as_bytes()).unwrap();
            for batch in self.decoder.finish_predictions() {
                self.engine.push_predictions(&self.registry, &batch, partition, &mut self.rows);
            }
        }

        /// The driver's wall clock at `seconds` after T0.
        fn tick(&mut self, seconds: i64, reading: bool) {
            let now = T0 + seconds * 1000;
            self.engine.advance_clock(&self.registry, now, reading.then_some(now), &mut self.rows);
        }

        fn predict_version(&mut self, id: &str, seconds: i64, prediction: u8, version: &str) {
            let event = format!(
                r#"{{"event_id":"{id}","model":"m","model_version":"{version}","timestamp":{},"prediction":{prediction}}}"#,
                T0 + seconds * 1000
            );
            self.raw(&event);
        }

        /// (window start in seconds after T0, value) of a version's
        /// whole-model rows.
        fn version_rows(&self, version: &str, metric: &str) -> Vec<(i64, f64)> {
            self.rows
                .iter()
                .filter(|r| r.metric == metric && r.feature.is_none() && &*r.model_version == version)
                .filter(|r| r.segment.is_empty())
                .map(|r| ((r.window_start_ms - T0) / 1000, r.value))
                .collect()
        }

        fn label(&mut self, id: &str, seconds: i64, label: u8) {
            let event =
                format!(r#"{{"event_id":"{id}","model":"m","timestamp":{},"label":{label}}}"#, T0 + seconds * 1000);
            self.decoder.push_label(&mut self.registry, event.as_bytes()).unwrap();
            for batch in self.decoder.finish_labels() {
                self.engine.push_labels(&self.registry, &batch, 0, &mut self.rows);
            }
        }

        fn raw(&mut self, event: &str) {
            self.decoder.push_prediction(&mut self.registry, event.as_bytes()).unwrap();
            for batch in self.decoder.finish_predictions() {
                self.engine.push_predictions(&self.registry, &batch, 0, &mut self.rows);
            }
        }

        fn finish(&mut self) {
            self.engine.finish(&self.registry, &mut self.rows);
        }

        /// (window start in seconds after T0, value) of model-level rows.
        fn model_rows(&self, metric: &str) -> Vec<(i64, f64)> {
            self.rows
                .iter()
                .filter(|r| r.metric == metric && r.feature.is_none())
                .map(|r| ((r.window_start_ms - T0) / 1000, r.value))
                .collect()
        }
    }

    #[test]
    fn labels_join_in_either_order_and_credit_the_prediction_window() {
        let mut h = Harness::new("{size: 1m, allowed_lateness: 0s, label_horizon: 10m}");
        h.label("early", 5, 1); // label before its prediction
        h.predict("early", 10, 1);
        h.predict("late-label", 20, 1);
        h.predict("wrong", 70, 1); // second window
        h.label("late-label", 100, 0); // label after the first window closed
        h.label("wrong", 110, 0);
        h.label("nobody", 120, 1);
        h.finish();
        assert_eq!(h.model_rows("count"), vec![(0, 2.0), (60, 1.0)]);
        assert_eq!(h.model_rows("labeled_count"), vec![(0, 2.0), (60, 1.0)]);
        assert_eq!(h.model_rows("accuracy"), vec![(0, 0.5), (60, 0.0)]);
        assert_eq!(h.model_rows("label_coverage"), vec![(0, 1.0), (60, 1.0)]);
        let join = h.engine.join_counters();
        assert_eq!((join.matched, join.labels_unmatched), (3, 1));
    }

    const SHADOWED: &str = "{name: m, task: binary_classification, shadow_versions: ['4']}";

    /// A shadow (version 4) scores the champion's (version 3) events under
    /// the same event ids: each label pairs with both predictions, in
    /// whichever order the three arrive, and each pair is credited to its
    /// own version's rows. Before shadows, the second prediction of an id
    /// was a duplicate and the shadow got no labelled row.
    #[test]
    fn a_shadow_and_its_champion_pair_with_the_same_labels() {
        let mut h = Harness::with_model("{size: 1m, allowed_lateness: 0s, label_horizon: 10m}", SHADOWED);
        // a: champion, shadow, label. b: label, champion, shadow.
        // c: champion, label, shadow. d: shadow only, then its label.
        h.predict_version("a", 1, 1, "3");
        h.predict_version("a", 1, 0, "4");
        h.label("b", 2, 1);
        h.predict_version("b", 2, 1, "3");
        h.predict_version("b", 2, 1, "4");
        h.predict_version("c", 3, 0, "3");
        h.label("a", 4, 1);
        h.label("c", 5, 0);
        h.predict_version("c", 6, 1, "4");
        h.predict_version("d", 7, 0, "4");
        h.label("d", 8, 0);
        h.finish();
        assert_eq!(h.version_rows("3", "labeled_count"), vec![(0, 3.0)]);
        assert_eq!(h.version_rows("3", "accuracy"), vec![(0, 1.0)]);
        assert_eq!(h.version_rows("4", "labeled_count"), vec![(0, 4.0)]);
        assert_eq!(h.version_rows("4", "accuracy"), vec![(0, 0.5)]);
        // Paired on a, b and c (d had no champion prediction): the champion
        // was right on all three, the shadow wrong on a and c.
        assert_eq!(h.version_rows("4", "accuracy_vs_champion"), vec![(0, -2.0 / 3.0)]);
        let paired = h.rows.iter().find(|r| r.metric == "accuracy_vs_champion").unwrap();
        assert_eq!((paired.sample_count, paired.baseline, paired.p_value), (3, Some(1.0), Some(0.25)));
        assert!(h.version_rows("3", "accuracy_vs_champion").is_empty(), "the champion compares with nobody");
        let join = h.engine.join_counters();
        assert_eq!(join.matched, 7);
        assert_eq!(join.duplicate_predictions, 0);
        // d's label found no champion prediction: counted once, by the
        // serving lane.
        assert_eq!((join.labels_unmatched, join.predictions_expired), (1, 0));
        assert_eq!(h.engine.pending_joins(), 0);
    }

    /// Without `shadow_versions` the same events behave as before: the
    /// second prediction of an id is a duplicate, the first one is kept.
    #[test]
    fn without_shadow_versions_a_second_version_of_an_id_is_a_duplicate() {
        let mut h = Harness::new("{size: 1m, allowed_lateness: 0s, label_horizon: 10m}");
        h.predict_version("a", 1, 1, "3");
        h.predict_version("a", 1, 0, "4");
        h.label("a", 4, 1);
        h.finish();
        assert_eq!(h.version_rows("3", "labeled_count"), vec![(0, 1.0)]);
        assert_eq!(h.version_rows("4", "labeled_count"), vec![(0, 0.0)]);
        assert_eq!(h.engine.join_counters().duplicate_predictions, 1);
    }

    /// Duplicates are still found per (lane, event id): a repeated shadow
    /// prediction and a repeated champion prediction are each counted and
    /// the first of each is kept; a repeated label pairs with neither.
    #[test]
    fn duplicates_are_counted_per_version_with_shadows() {
        let mut h = Harness::with_model("{size: 1m, allowed_lateness: 0s, label_horizon: 10m}", SHADOWED);
        h.predict_version("a", 1, 1, "3");
        h.predict_version("a", 1, 1, "4");
        h.predict_version("a", 2, 0, "4"); // duplicate of the shadow's
        h.predict_version("a", 2, 0, "3"); // duplicate of the champion's
        h.label("a", 3, 1);
        h.label("a", 4, 0); // duplicate label
        h.predict_version("a", 5, 0, "4"); // duplicate after the pair
        h.finish();
        assert_eq!(h.version_rows("3", "accuracy"), vec![(0, 1.0)]);
        assert_eq!(h.version_rows("4", "accuracy"), vec![(0, 1.0)]);
        assert_eq!(h.version_rows("4", "labeled_count"), vec![(0, 1.0)]);
        let join = h.engine.join_counters();
        assert_eq!((join.matched, join.duplicate_predictions, join.duplicate_labels), (2, 3, 1));
    }

    /// The shadow lane follows the join's rule by event times alone, like
    /// the serving lane: the same events give the same rows in
    /// micro-batches of any size.
    #[test]
    fn shadow_pairs_do_not_depend_on_batch_size() {
        let mut events: Vec<(bool, String)> = Vec::new();
        for i in 0..60i64 {
            let t = T0 + i * 7_000;
            for (version, prediction) in [("3", i % 2), ("4", i % 3 % 2)] {
                events.push((
                    true,
                    format!(
                        r#"{{"event_id":"e{i}","model":"m","model_version":"{version}","timestamp":{t},"prediction":{prediction}}}"#
                    ),
                ));
            }
            // Labels 30 s to 130 s after their prediction: some after the
            // 2 min horizon.
            let label_time = T0 + (i - 4) * 7_000 + 30_000 + (i % 5) * 25_000;
            if i >= 4 {
                let j = i - 4;
                events.push((
                    false,
                    format!(r#"{{"event_id":"e{j}","model":"m","timestamp":{label_time},"label":{}}}"#, j % 2),
                ));
            }
        }
        let run = |batch_size: usize| {
            let mut h = Harness::with_model("{size: 1m, allowed_lateness: 0s, label_horizon: 2m}", SHADOWED);
            let mut pending: (bool, usize) = (true, 0);
            let flush = |h: &mut Harness, predictions: bool| {
                if predictions {
                    for batch in h.decoder.finish_predictions() {
                        h.engine.push_predictions(&h.registry, &batch, 0, &mut h.rows);
                    }
                } else {
                    for batch in h.decoder.finish_labels() {
                        h.engine.push_labels(&h.registry, &batch, 0, &mut h.rows);
                    }
                }
            };
            for (prediction, event) in &events {
                if pending.1 > 0 && (pending.0 != *prediction || pending.1 == batch_size) {
                    flush(&mut h, pending.0);
                    pending.1 = 0;
                }
                pending.0 = *prediction;
                pending.1 += 1;
                if *prediction {
                    h.decoder.push_prediction(&mut h.registry, event.as_bytes()).unwrap();
                } else {
                    h.decoder.push_label(&mut h.registry, event.as_bytes()).unwrap();
                }
            }
            flush(&mut h, pending.0);
            h.finish();
            (h.rows, h.engine.join_counters())
        };
        let (expected, expected_join) = run(1);
        assert!(expected.iter().any(|r| r.metric == "accuracy_vs_champion" && r.sample_count > 0));
        assert!(expected.iter().any(|r| r.metric == "labeled_count" && &*r.model_version == "4" && r.value > 0.0));
        assert!(expected_join.labels_unmatched > 0, "some labels come after the horizon");
        for batch_size in [2, 3, 7, 1000] {
            let (rows, join) = run(batch_size);
            assert_eq!(join, expected_join, "batch size {batch_size}");
            assert_eq!(rows.len(), expected.len(), "batch size {batch_size}");
            for (a, b) in rows.iter().zip(&expected) {
                assert_eq!(
                    (a.window_start_ms, &a.model_version, a.metric, a.value.to_bits()),
                    (b.window_start_ms, &b.model_version, b.metric, b.value.to_bits()),
                    "batch size {batch_size}"
                );
            }
        }
    }

    #[test]
    fn performance_rows_wait_for_the_label_horizon() {
        let mut h = Harness::new("{size: 1m, allowed_lateness: 0s, label_horizon: 5m}");
        h.predict("a", 10, 1);
        h.predict("b", 70, 1); // closes [0, 1m): data rows now
        assert_eq!(h.model_rows("count"), vec![(0, 1.0)]);
        assert!(h.model_rows("labeled_count").is_empty());
        h.label("a", 200, 1);
        h.predict("c", 360, 0); // watermark 6m = end of [0,1m) + 5m: performance rows now
        assert_eq!(h.model_rows("labeled_count"), vec![(0, 1.0)]);
        assert_eq!(h.model_rows("accuracy"), vec![(0, 1.0)]);
        // A label without a prediction waits, then expires unmatched.
        h.label("a-again", 400, 1);
        h.predict("d", 1_000, 1);
        h.label("b", 1_001, 1); // b's horizon (70s + 5m) has passed: expired unlabelled
        h.finish();
        let join = h.engine.join_counters();
        // b and c expired unlabelled at the watermark, d at the end of input.
        assert_eq!((join.predictions_expired, join.labels_unmatched), (3, 2));
        assert_eq!(h.model_rows("accuracy"), vec![(0, 1.0)]);
    }

    /// Regression (the crash test, seed 1796067623321898777): a restarted
    /// daemon read a backlog of predictions past a window's label horizon
    /// before its labels partition was assigned; the window's performance
    /// was finalised with no label and every label then went unmatched.
    /// While labels hold, the labels' own watermark holds performance and
    /// join expiry back.
    #[test]
    fn predictions_read_ahead_of_labels_do_not_finalise_performance_while_labels_hold() {
        for hold in [false, true] {
            let mut h = Harness::new("{size: 1m, allowed_lateness: 0s, label_horizon: 5m}");
            h.engine.set_labels_holding(&h.registry, 0, hold, &mut h.rows);
            h.label("seen", 5, 1); // labels were flowing before
            h.predict("seen", 5, 1);
            h.predict("a", 10, 1);
            h.predict("b", 20, 0);
            // The prediction backlog runs 10 minutes ahead of the labels.
            for i in 0..10 {
                h.predict(&format!("later{i}"), 60 + i * 60, 1);
            }
            let closed_early = !h.model_rows("labeled_count").is_empty();
            h.label("a", 10, 1);
            h.label("b", 20, 1);
            h.engine.set_labels_holding(&h.registry, 0, false, &mut h.rows);
            h.finish();
            let first = |metric: &str| h.model_rows(metric).first().map(|r| r.1);
            if hold {
                assert!(!closed_early, "held: performance waits for the labels");
                assert_eq!(first("labeled_count"), Some(3.0));
                assert_eq!(first("accuracy"), Some(2.0 / 3.0));
                assert_eq!(h.engine.join_counters().labels_unmatched, 0);
            } else {
                // Without the hold (as before the fix): finalised without labels.
                assert!(closed_early);
                assert_eq!(first("labeled_count"), Some(1.0));
                assert_eq!(h.engine.join_counters().labels_unmatched, 2);
            }
        }
    }

    /// A model whose labels never come: holding keeps its performance rows
    /// back; releasing (the labels idle) closes what the watermark passed.
    #[test]
    fn releasing_the_labels_hold_closes_what_the_watermark_passed() {
        let mut h = Harness::new("{size: 1m, allowed_lateness: 0s, label_horizon: 1m}");
        h.engine.set_labels_holding(&h.registry, 0, true, &mut h.rows);
        h.predict("a", 10, 1);
        h.predict("b", 300, 1);
        assert_eq!(h.model_rows("count"), vec![(0, 1.0)], "data rows do not wait for labels");
        assert!(h.model_rows("label_coverage").is_empty());
        assert_eq!(h.engine.pending_joins(), 2);
        h.engine.set_labels_holding(&h.registry, 0, false, &mut h.rows);
        assert_eq!(h.model_rows("label_coverage"), vec![(0, 0.0)]);
        assert_eq!(h.engine.join_counters().predictions_expired, 1);
    }

    /// Ten minutes of events on three partitions, 80% on partition 0, read
    /// the way a consumer from the beginning reads a backlog: round-robin
    /// by count, so the sparse partitions run ahead in event time. The
    /// windows wait for the slowest partition: no event is late and the
    /// rows equal those of the same events in time order on one partition.
    /// (With one watermark for all partitions, as before, most are late.)
    #[test]
    fn a_partition_read_ahead_does_not_make_the_others_late() {
        let seed = std::env::var("DRIFTWATCH_ENGINE_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_u64);
        println!("seed {seed} (DRIFTWATCH_ENGINE_SEED reruns it)");
        let mut state = seed;
        let mut next = move || {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            state >> 33
        };
        // (partition, second) per event, each partition in time order.
        let mut partitions: Vec<Vec<i64>> = vec![Vec::new(); 3];
        for second in 0..600 {
            for _ in 0..2 {
                let partition = if next() % 10 < 8 { 0 } else { 1 + (next() % 2) as usize };
                partitions[partition].push(second);
            }
        }
        let run = |split: bool| {
            let mut h = Harness::new("{size: 1m, allowed_lateness: 5s, label_horizon: 0s}");
            let mut cursors = [0usize; 3];
            let mut n = 0;
            // Ten events of each partition in turn.
            while cursors.iter().zip(&partitions).any(|(c, p)| *c < p.len()) {
                for (partition, events) in partitions.iter().enumerate() {
                    for &second in events.iter().skip(cursors[partition]).take(10) {
                        let id = if split { partition as PartitionId } else { 0 };
                        h.predict_on(id, &format!("e{n}"), second);
                        n += 1;
                    }
                    cursors[partition] = (cursors[partition] + 10).min(events.len());
                }
            }
            h.finish();
            h
        };
        let per_partition = run(true);
        assert_eq!(per_partition.engine.counters.events_late, 0);
        let mut in_order = Harness::new("{size: 1m, allowed_lateness: 5s, label_horizon: 0s}");
        let mut all: Vec<i64> = partitions.concat();
        all.sort();
        for (n, second) in all.iter().enumerate() {
            in_order.predict_on(0, &format!("e{n}"), *second);
        }
        in_order.finish();
        assert_eq!(per_partition.model_rows("count"), in_order.model_rows("count"));
        assert_eq!(per_partition.model_rows("count").len(), 10);
        let one_watermark = run(false);
        assert!(one_watermark.engine.counters.events_late > 100, "{}", one_watermark.engine.counters.events_late);
    }

    /// The rows of per-partition streams do not depend on how the
    /// partitions interleaved (what lanes reading partitions in parallel
    /// change): three partitions, each a little out of order (some events
    /// later than `allowed_lateness` within their own partition), fed in
    /// two different interleavings, give byte-identical rows: every
    /// window is the merge of its partitions' panes in partition order,
    /// and an event is late by its own partition's progress.
    #[test]
    fn rows_do_not_depend_on_how_partitions_interleave() {
        let seed = std::env::var("DRIFTWATCH_ENGINE_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x1a7e_u64);
        println!("seed {seed} (DRIFTWATCH_ENGINE_SEED reruns it)");
        let mut state = seed;
        let mut next = move || {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            state >> 33
        };
        // Per partition: (id, second, x), in the partition's order.
        let mut partitions: Vec<Vec<(String, i64, f64)>> = vec![Vec::new(); 3];
        for n in 0..1500 {
            let partition = (next() % 3) as usize;
            let jitter = (next() % 40) as i64 - 20; // up to 20 s early or late; lateness allows 5 s
            let second = (n / 3) as i64 + jitter;
            let x = (next() % 10_000) as f64 / 7.0;
            partitions[partition].push((format!("e{n}"), second.max(0), x));
        }
        for windows in ["{size: 1m, allowed_lateness: 5s}", "{size: 2m, slide: 30s, allowed_lateness: 5s}"] {
            let run = |order: &[usize]| {
                let mut h = Harness::new(windows);
                let mut cursors = [0usize; 3];
                let mut turn = 0;
                while cursors.iter().zip(&partitions).any(|(c, p)| *c < p.len()) {
                    let partition = order[turn % order.len()];
                    turn += 1;
                    let take = 1 + (turn * 7) % 13;
                    for (id, second, x) in partitions[partition].iter().skip(cursors[partition]).take(take) {
                        let event = format!(
                            r#"{{"event_id":"{id}","model":"m","timestamp":{},"prediction":1,"features":{{"x":{x}}}}}"#,
                            T0 + second * 1000
                        );
                        h.decoder.push_prediction(&mut h.registry, event.as_bytes()).unwrap();
                    }
                    cursors[partition] = (cursors[partition] + take).min(partitions[partition].len());
                    for batch in h.decoder.finish_predictions() {
                        h.engine.push_predictions(&h.registry, &batch, partition as PartitionId, &mut h.rows);
                    }
                }
                h.finish();
                let mut bytes = Vec::new();
                h.rows.iter().for_each(|row| crate::output::encode_ndjson_row(row, &mut bytes));
                (bytes, h.engine.counters.events_late)
            };
            let (a, late_a) = run(&[0, 1, 2]);
            let (b, late_b) = run(&[2, 2, 1, 0, 0, 0, 1]);
            assert!(late_a > 0, "{windows}: some events are late within their partition");
            assert_eq!(late_a, late_b, "{windows}");
            if a != b {
                let (a, b) = (String::from_utf8_lossy(&a), String::from_utf8_lossy(&b));
                let diff: Vec<(&str, &str)> = a.lines().zip(b.lines()).filter(|(x, y)| x != y).take(3).collect();
                panic!("{windows}: rows differ between interleavings: {diff:#?}");
            }
        }
    }

    /// A partition's panes handed over to the closer mid-window (what a
    /// revoked partition or a checkpoint barrier does with lanes) merge
    /// with what the partition contributes later: every count is that of
    /// an engine that kept them, and every value within 1e-12.
    #[test]
    fn panes_handed_over_mid_window_merge_with_the_rest() {
        for windows in ["{size: 1m, allowed_lateness: 5s}", "{size: 2m, slide: 30s, allowed_lateness: 5s}"] {
            let run = |hand_over_every: Option<usize>| {
                let mut h = Harness::new(windows);
                for n in 0..900usize {
                    let partition = (n % 3) as PartitionId;
                    let second = (n / 3) as i64 + (n % 7) as i64 - 3;
                    h.predict_on(partition, &format!("e{n}"), second.max(0));
                    if hand_over_every.is_some_and(|every| n % every == every - 1) {
                        h.engine.hand_over_panes();
                    }
                }
                h.finish();
                h.rows
            };
            let kept = run(None);
            for every in [1, 17, 100] {
                let handed = run(Some(every));
                assert_eq!(handed.len(), kept.len(), "{windows}, every {every}");
                for (a, b) in handed.iter().zip(&kept) {
                    let close = (a.value - b.value).abs() <= 1e-12 * a.value.abs().max(b.value.abs()).max(1.0)
                        || a.value.to_bits() == b.value.to_bits();
                    assert!(
                        a.metric == b.metric
                            && a.window_start_ms == b.window_start_ms
                            && a.sample_count == b.sample_count
                            && close,
                        "{windows}, every {every}:\n{a:?}\n{b:?}"
                    );
                }
            }
        }
    }

    /// A lane judges lateness by the model's frontier as it last knew it,
    /// so the part of a partition that had been idle can reach the closer
    /// after its window closed: its events count late (as the closer would
    /// have judged them), once, by the whole-model series.
    #[test]
    fn a_lane_part_of_a_window_closed_meanwhile_counts_late() {
        let mut h = Harness::new("{size: 1m, allowed_lateness: 0s, label_horizon: 0s}");
        h.predict_on(0, "a", 10);
        h.predict_on(0, "b", 130);
        assert_eq!(h.model_rows("count"), vec![(0, 1.0)], "window [0, 60) closed");
        let late_before = h.engine.counters.events_late;
        let model = h.registry.get(0);
        let whole = (0..model.series.len() as SeriesId).find(|s| model.series[*s as usize].whole_model.is_none());
        let whole = whole.expect("a whole-model series");
        let mut part = crate::evaluate::WindowState::new(model);
        part.events = 3;
        let output =
            LaneOutput { model: 0, partition: 1, contributions: vec![((T0, whole), part)], ..LaneOutput::default() };
        h.engine.apply_lane_output(&h.registry, None, output, &mut h.rows);
        assert_eq!(h.engine.counters.events_late, late_before + 3);
        h.finish();
        assert_eq!(h.model_rows("count"), vec![(0, 1.0), (120, 1.0)], "the closed window is not written again");
    }

    /// Hopping windows by panes: an event late for the older of its two
    /// windows (closed) but not for the newer counts in the newer only,
    /// and every window holds exactly the events in it.
    #[test]
    fn an_event_late_for_one_hopping_window_counts_in_the_next() {
        let mut h = Harness::new("{size: 2m, slide: 1m, allowed_lateness: 0s}");
        h.predict("a", 30, 1); // windows [-60, 60) and [0, 120)
        h.predict("b", 70, 1); // windows [0, 120) and [60, 180)
        h.predict("c", 100, 1); // closes [-60, 60)
        h.predict("d", 50, 1); // late for [-60, 60), on time for [0, 120)
        h.finish();
        assert_eq!(h.model_rows("count"), vec![(-60, 1.0), (0, 4.0), (60, 2.0)]);
        assert_eq!(h.engine.counters.events_late, 1);
    }

    /// A partition silent for `idle_timeout` (wall clock) stops holding the
    /// others back; when it has events again it holds again (from the
    /// watermark reached meanwhile: its events behind it are late).
    #[test]
    fn an_idle_partition_stops_holding_the_others_back_and_rejoins() {
        let mut h = Harness::new("{size: 1m, allowed_lateness: 0s, label_horizon: 0s, idle_timeout: 30s}");
        // The wall clock runs an hour after the events' time (a backlog).
        h.tick(3_600, true);
        h.predict_on(0, "a", 10);
        h.predict_on(1, "b", 20);
        h.predict_on(0, "c", 200);
        assert!(h.model_rows("count").is_empty(), "partition 1 holds the watermark at 20 s");
        h.tick(3_610, true);
        h.predict_on(0, "d", 210);
        h.tick(3_639, true);
        assert!(h.model_rows("count").is_empty(), "29 s of silence is not idle yet");
        h.tick(3_640, true);
        assert_eq!(h.model_rows("count"), vec![(0, 2.0)], "partition 1 idle: partition 0's 210 s rules");
        assert_eq!(h.engine.watermark(0), Some(T0 + 210_000));
        h.predict_on(1, "e", 150); // behind the watermark: late
        h.predict_on(0, "f", 400);
        assert_eq!(h.engine.watermark(0), Some(T0 + 210_000), "partition 1 (at 150 s) holds again");
        h.predict_on(1, "g", 390);
        assert_eq!(h.engine.watermark(0), Some(T0 + 390_000));
        assert_eq!(h.engine.counters.events_late, 1);
    }

    /// Not reading (backpressure) is not silence: nothing goes idle.
    #[test]
    fn a_paused_consumer_does_not_make_partitions_idle() {
        let mut h = Harness::new("{size: 1m, allowed_lateness: 0s, label_horizon: 0s, idle_timeout: 30s}");
        h.tick(3_600, true);
        h.predict_on(0, "a", 10);
        h.predict_on(1, "b", 20);
        h.predict_on(0, "c", 200);
        for second in (3_600..=4_200).step_by(10) {
            h.tick(second, false);
        }
        assert!(h.model_rows("count").is_empty());
        h.tick(4_229, true);
        assert!(h.model_rows("count").is_empty(), "silence counts from the resume");
        h.tick(4_230, true);
        // Both partitions idle: the model is quiet, and its windows (long
        // past on this clock) close.
        assert_eq!(h.model_rows("count"), vec![(0, 2.0), (180, 1.0)]);
    }

    /// Silence counts only up to when the source was last read (the
    /// driver's: when a broker last answered), so an outage is not silence.
    #[test]
    fn silence_counts_only_up_to_when_the_source_was_last_read() {
        let mut h = Harness::new("{size: 1m, allowed_lateness: 0s, label_horizon: 0s, idle_timeout: 30s}");
        h.tick(3_600, true);
        h.predict_on(0, "a", 10);
        h.predict_on(1, "b", 20);
        h.predict_on(0, "c", 200);
        h.tick(3_610, true); // both last seen active at 3,610 s
        // The broker last answered at 3,620 s while the clock runs on.
        for now in [3_650, 3_700] {
            h.engine.advance_clock(&h.registry, T0 + now * 1000, Some(T0 + 3_620_000), &mut h.rows);
        }
        assert!(h.model_rows("count").is_empty(), "an outage is not silence");
        h.engine.advance_clock(&h.registry, T0 + 3_710_000, Some(T0 + 3_640_000), &mut h.rows);
        assert_eq!(h.model_rows("count"), vec![(0, 2.0), (180, 1.0)], "30 s of answered silence");
    }

    /// A model whose traffic stops closes its last window once the wall
    /// clock passes its end + allowed_lateness + idle_timeout (before, it
    /// stayed open until shutdown).
    #[test]
    fn a_quiet_model_closes_its_last_window_on_the_wall_clock() {
        let mut h = Harness::new("{size: 1m, allowed_lateness: 5s, label_horizon: 0s, idle_timeout: 30s}");
        h.predict_on(0, "a", 1);
        h.predict_on(1, "b", 2);
        h.predict_on(0, "c", 50);
        // Last seen active at the 60 s tick; idle from 90 s. The window
        // [0, 60 s) closes at 60 + 5 + 30 = 95 s.
        h.tick(60, true);
        h.tick(90, true);
        h.tick(94, true);
        assert!(h.model_rows("count").is_empty());
        h.tick(95, true);
        assert_eq!(h.model_rows("count"), vec![(0, 3.0)]);
        assert_eq!(h.engine.open_windows(), 0);
        h.predict_on(0, "late", 59);
        assert_eq!(h.engine.counters.events_late, 1, "the window is final");
    }

    /// In `run` an event from the future cannot carry the watermark past the
    /// host clock (minus allowed_lateness): the windows of events on time
    /// stay open.
    #[test]
    fn an_event_from_the_future_does_not_move_the_watermark_past_the_host_clock() {
        let mut h = Harness::new("{size: 1m, allowed_lateness: 5s, label_horizon: 0s}");
        h.tick(100, true);
        h.predict_on(0, "a", 90);
        h.predict_on(0, "future", 3_600);
        assert_eq!(h.engine.watermark(0), Some(T0 + 95_000));
        h.predict_on(0, "b", 96);
        h.finish();
        assert_eq!(h.model_rows("count"), vec![(60, 2.0), (3_600, 1.0)]);
        assert_eq!(h.engine.counters.events_late, 0);
    }

    /// Replay: declared partitions (files still to read) hold the watermark
    /// until their first event; an ended one stops holding.
    #[test]
    fn declared_partitions_hold_until_read_and_ended_ones_release() {
        let mut h = Harness::new("{size: 1m, allowed_lateness: 0s, label_horizon: 0s}");
        h.engine.declare_partitions(&[0, 1]);
        h.predict_on(0, "a", 10);
        h.predict_on(0, "b", 300);
        assert!(h.model_rows("count").is_empty(), "file 1 is not read yet");
        h.engine.partition_idle(&h.registry, 0, false, &mut h.rows);
        assert!(h.model_rows("count").is_empty(), "file 1 still holds");
        h.predict_on(1, "c", 20);
        h.predict_on(1, "d", 200);
        assert_eq!(h.model_rows("count"), vec![(0, 2.0)]);
        assert_eq!(h.engine.counters.events_late, 0);
        h.engine.partition_idle(&h.registry, 1, false, &mut h.rows);
        h.finish();
        assert_eq!(h.model_rows("count"), vec![(0, 2.0), (180, 1.0), (300, 1.0)]);
    }

    #[test]
    fn hopping_windows_count_every_event_in_each_window_it_falls_in() {
        let mut h = Harness::new("{size: 2m, slide: 1m, allowed_lateness: 0s, label_horizon: 0s}");
        for (i, s) in [10, 50, 70, 130, 170].iter().enumerate() {
            h.predict(&i.to_string(), *s, 1);
        }
        h.finish();
        assert_eq!(h.model_rows("count"), vec![(-60, 2.0), (0, 3.0), (60, 3.0), (120, 2.0)]);
        let means: Vec<(i64, f64)> = h
            .rows
            .iter()
            .filter(|r| r.metric == "mean" && r.feature.as_deref() == Some("x"))
            .map(|r| ((r.window_start_ms - T0) / 1000, r.value))
            .collect();
        let expected = [(-60, 30.0), (0, 130.0 / 3.0), (60, 370.0 / 3.0), (120, 150.0)];
        assert_eq!(means.len(), expected.len());
        for ((start, mean), (expected_start, expected_mean)) in means.iter().zip(expected) {
            assert_eq!(*start, expected_start);
            assert!((mean - expected_mean).abs() < 1e-9, "{start}: {mean} vs {expected_mean}");
        }
    }

    #[test]
    fn late_events_do_not_change_closed_windows_and_are_reported() {
        let mut h = Harness::new("{size: 1m, allowed_lateness: 10s}");
        h.predict("a", 0, 1);
        h.predict("b", 65, 1); // watermark 55s: [0,1m) still open
        h.predict("c", 30, 1); // within lateness: counted in [0,1m)
        h.predict("d", 75, 1); // watermark 65s: closes [0,1m)
        h.predict("e", 40, 1); // late
        h.finish();
        assert_eq!(h.model_rows("count"), vec![(0, 2.0), (60, 2.0)]);
        assert_eq!(h.model_rows("events_late"), vec![(0, 0.0), (60, 1.0)]);
        assert_eq!(h.engine.counters.events_late, 1);
    }

    #[test]
    fn type_errors_are_reported_per_feature() {
        let mut h = Harness::new("{size: 1m}");
        h.predict("a", 1, 1);
        h.raw(&format!(
            r#"{{"event_id":"b","model":"m","timestamp":{},"prediction":1,"features":{{"x":"twelve"}}}}"#,
            T0 + 2_000
        ));
        h.finish();
        let rows: Vec<(&str, f64)> = h
            .rows
            .iter()
            .filter(|r| r.feature.as_deref() == Some("x") && matches!(r.metric, "type_error_rate" | "missing_rate"))
            .map(|r| (r.metric, r.value))
            .collect();
        assert_eq!(rows, vec![("missing_rate", 0.5), ("type_error_rate", 0.5)]);
    }

    /// Regression (found by the hostile-input test): a model with many
    /// features and many segments made every window emit features ×
    /// segments rows (a million for 500 × 1,000), because every series
    /// got a state for every feature the model knew. A feature now gets
    /// rows only where a value of it arrived.
    #[test]
    fn segments_get_rows_only_for_the_features_they_carry() {
        let mut h = Harness::new("{size: 1m}");
        let features: Vec<String> = (0..50).map(|f| format!("\"f{f}\":1.5")).collect();
        h.raw(&format!(
            r#"{{"event_id":"a","model":"m","timestamp":{},"prediction":1,"features":{{{}}}}}"#,
            T0 + 1_000,
            features.join(",")
        ));
        for s in 0..20 {
            h.raw(&format!(
                r#"{{"event_id":"s{s}","model":"m","timestamp":{},"prediction":1,"segment":{{"user":"u{s}"}},"features":{{"f0":2.5}}}}"#,
                T0 + 2_000 + s
            ));
        }
        h.finish();
        let features_in = |segment: &str| {
            let mut names: Vec<&str> =
                h.rows.iter().filter(|r| &*r.segment == segment).filter_map(|r| r.feature.as_deref()).collect();
            names.dedup();
            names.len()
        };
        assert_eq!(features_in(""), 50, "the whole model has rows for every feature that arrived");
        for s in 0..20 {
            assert_eq!(features_in(&format!("user=u{s}")), 1, "segment u{s} carried only f0");
        }
        // f1 arrived in 1 of the whole model's 21 events: the others lacked it.
        let missing = h
            .rows
            .iter()
            .find(|r| r.segment.is_empty() && r.feature.as_deref() == Some("f1") && r.metric == "missing_rate");
        assert_eq!(missing.map(|r| r.value), Some(20.0 / 21.0));
    }
}
