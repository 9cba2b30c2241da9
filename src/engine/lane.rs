//! Lane: the half of the engine that works per source partition, where the
//! events are (consume → decode → aggregate).
//!
//! A [`LaneAggregator`] judges each prediction of a batch against its
//! partition's own watermark (or the model's, when that is ahead), adds
//! the rows to their panes ([`PartitionPanes`]) and seals the partition's
//! contribution to every window its own watermark has passed. What it
//! hands the closer ([`LaneOutput`]: counters, which rows count, late rows,
//! sealed contributions) is all the closer needs besides the batch itself
//! to join, watermark and close. Nothing in here depends on other
//! partitions, so several lanes can aggregate their partitions in
//! parallel and give, merged in partition order, the rows one lane gives.
//!
//! Architecture invariant: pure; no I/O, no clock, no shared state.

use std::collections::HashMap;

use datafusion::arrow::array::{Array, Float64Array, UInt32Array};
use datafusion::arrow::compute::take;

use crate::decode::{FeatureArray, PredictionArray, PredictionBatch};
use crate::evaluate::{GroupColumns, WindowState};
use crate::join::{JoinKey, join_key};
use crate::model::{ModelId, ModelState, SeriesId};
use crate::window::{PartitionId, PartitionPanes, WindowSpec};

/// A group of batch rows sharing a series and a set of windows.
struct Group {
    last_start: i64,
    series: SeriesId,
    /// How many of the rows' windows (oldest first) had closed for them
    /// when they arrived (see [`LaneAggregator::judge_rows`]).
    closed: u32,
    rows: Vec<u32>,
}

/// What aggregating one batch of one partition gives the closer.
#[derive(Debug, Default)]
pub struct LaneOutput {
    pub model: ModelId,
    pub partition: PartitionId,
    pub predictions: u64,
    /// Rows that missed at least one window closed for them.
    pub events_late: u64,
    /// Categorical values pooled into `__other__` by the category cap.
    pub categories_over_cap: u64,
    /// Per row: whether it counted in at least one window (only those join).
    pub accepted: Vec<bool>,
    /// Per row: the join key of its event id (hashed here, in parallel,
    /// rather than by the closer).
    pub keys: Vec<JoinKey>,
    /// Late rows: (series, start of the first window still open for them
    /// when they arrived), once per series they count in.
    pub late: Vec<(SeriesId, i64)>,
    /// The partition's contributions to the windows its own watermark
    /// passed with this batch, by (start, series).
    pub contributions: Vec<((i64, SeriesId), WindowState)>,
    /// The partition's own clock after the batch.
    pub own_clock: Option<i64>,
}

/// Aggregates prediction batches into panes; reusable scratch space only.
pub struct LaneAggregator {
    spec: WindowSpec,
    max_categories: usize,
    groups: Vec<Group>,
    group_index: HashMap<(i64, SeriesId, u32), usize>,
    /// Per row of the batch being added: how many of its windows had
    /// closed for it when it arrived.
    closed_windows: Vec<u32>,
    /// Per row of the batch being added: the watermark it was judged
    /// against.
    arrival_watermark: Vec<i64>,
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

/// Where one partition stands when a batch of it arrives.
#[derive(Debug, Clone, Copy)]
pub struct PartitionProgress {
    /// The model's frontier (the minimum over its active partitions) as
    /// last known; `None` before the model's first event.
    pub model_frontier: Option<i64>,
    /// The partition's own clock: its largest event time so far.
    pub own_clock: Option<i64>,
    /// `run` only: the host clock, which event times cannot move a clock past.
    pub clock_limit: Option<i64>,
}

impl LaneAggregator {
    pub fn new(spec: WindowSpec, max_categories: usize) -> Self {
        LaneAggregator {
            spec,
            max_categories,
            groups: Vec::new(),
            group_index: HashMap::new(),
            closed_windows: Vec::new(),
            arrival_watermark: Vec::new(),
        }
    }

    /// Adds a batch of `partition` (of `model`, in the ids of `model`'s
    /// dictionaries) to the partition's panes, then seals the partition's
    /// contributions to the windows its own watermark has passed.
    pub fn aggregate(
        &mut self,
        model: &ModelState,
        batch: &PredictionBatch,
        partition: PartitionId,
        progress: PartitionProgress,
        panes: &mut PartitionPanes,
    ) -> LaneOutput {
        let mut output = LaneOutput {
            model: batch.model,
            partition,
            predictions: batch.len() as u64,
            accepted: vec![true; batch.len()],
            ..LaneOutput::default()
        };
        if batch.is_empty() {
            return output;
        }
        let own_after = self.judge_rows(batch, progress);
        output.keys = (0..batch.len()).map(|row| join_key(batch.event_id.value(row))).collect();
        // Whole-model series first (usually one group: no copying), then
        // the segments, which each event also counts in.
        self.group_rows(batch, model, true);
        self.update_groups(model, batch, true, panes, &mut output);
        self.group_rows(batch, model, false);
        self.update_groups(model, batch, false, panes, &mut output);
        // Type errors belong to the panes of their row.
        let count = self.spec.windows_per_event() as u32;
        for &(row, feature) in &batch.type_errors {
            let closed = self.closed_windows[row as usize];
            if closed >= count {
                continue;
            }
            let pane = self.spec.last_start(batch.event_time_ms.value(row as usize));
            let series = batch.series.value(row as usize);
            for s in [Some(series), model.series[series as usize].whole_model].into_iter().flatten() {
                if let Some(state) = panes.panes.get_mut(&(pane, s, closed)) {
                    state.add_type_errors(model, feature as usize, 1);
                }
            }
        }
        output.own_clock = own_after;
        if let Some(own) = own_after {
            let watermark = own.saturating_sub(self.spec.allowed_lateness_ms);
            output.contributions = self.seal(panes, watermark);
        }
        output
    }

    /// Seals `panes`' contributions to the windows ending at or before
    /// `watermark` (`i64::MAX`: all of them, the partition has ended) that
    /// it has not sealed yet (see [`PartitionPanes::seal_through`]).
    pub fn seal(&self, panes: &mut PartitionPanes, watermark: i64) -> Vec<((i64, SeriesId), WindowState)> {
        panes.seal_through(&self.spec, watermark, self.max_categories).into_iter().collect()
    }

    /// Hands over everything `panes` holds (see [`PartitionPanes::hand_over`]):
    /// what a lane does when its partition is revoked, or when a checkpoint
    /// wants the whole state in one place.
    pub fn hand_over(&self, panes: &mut PartitionPanes) -> Vec<((i64, SeriesId), WindowState)> {
        panes.hand_over(&self.spec, self.max_categories).into_iter().collect()
    }

    /// Judges each row of the batch against the watermark as it stood when
    /// the row arrived: `closed_windows[row]` is how many of the row's
    /// windows, oldest first, had closed for it by then. A window has
    /// closed for a row once its partition's own watermark (the largest
    /// event time the partition delivered before it, minus
    /// `allowed_lateness`) or the model's (the minimum over the active
    /// partitions, as last known) has passed its end. Judged by its own
    /// partition's progress, whether an event is late depends neither on
    /// how the stream was cut into micro-batches (one batch of n events
    /// gives the rows that n batches of one event give) nor on how far
    /// other partitions were read meanwhile (so lanes reading partitions in
    /// parallel give the rows one lane gives); the model's watermark only
    /// matters for a partition that was idle while the windows closed.
    /// (A row judged late for a window is kept apart from it by its pane's
    /// `skipped`, see [`crate::window::PaneKey`].) Returns the partition's
    /// own clock after the batch.
    fn judge_rows(&mut self, batch: &PredictionBatch, progress: PartitionProgress) -> Option<i64> {
        let spec = self.spec;
        let count = spec.windows_per_event();
        let times = batch.event_time_ms.values();
        self.closed_windows.clear();
        self.closed_windows.reserve(batch.len());
        self.arrival_watermark.clear();
        self.arrival_watermark.reserve(batch.len());
        let mut own = progress.own_clock;
        for &time in times.iter() {
            let judged = progress.model_frontier.max(own);
            let watermark = judged.map_or(i64::MIN, |f| f.saturating_sub(spec.allowed_lateness_ms));
            self.arrival_watermark.push(watermark);
            let closed = match judged {
                None => 0,
                Some(_) => {
                    let last_start = spec.last_start(time);
                    // Window j (oldest first) starts at last_start - (count - 1 - j) * slide.
                    (0..count)
                        .take_while(|j| last_start - (count - 1 - j) * spec.slide_ms + spec.size_ms <= watermark)
                        .count() as u32
                }
            };
            self.closed_windows.push(closed);
            let clocked = progress.clock_limit.map_or(time, |limit| time.min(limit));
            own = Some(own.map_or(clocked, |o| o.max(clocked)));
        }
        own
    }

    /// Groups the batch's rows by (latest window start, target series,
    /// windows closed on arrival): the row's whole-model series when
    /// `whole_model`, else its own segment series (rows without a segment
    /// are skipped in that pass).
    fn group_rows(&mut self, batch: &PredictionBatch, model: &ModelState, whole_model: bool) {
        let mut used = 0usize;
        type GroupKey = (i64, SeriesId, u32);
        self.group_index.clear();
        let times = batch.event_time_ms.values();
        let series = batch.series.values();
        let mut previous: Option<(GroupKey, usize)> = None;
        for row in 0..batch.len() {
            let own = series[row];
            let parent = model.series[own as usize].whole_model;
            let target = match (whole_model, parent) {
                (true, Some(parent)) => parent,
                (true, None) => own,
                (false, Some(_)) => own,
                (false, None) => continue,
            };
            let key = (self.spec.last_start(times[row]), target, self.closed_windows[row]);
            let index = match previous {
                Some((k, i)) if k == key => i,
                _ => *self.group_index.entry(key).or_insert_with(|| {
                    if used == self.groups.len() {
                        self.groups.push(Group { last_start: 0, series: 0, closed: 0, rows: Vec::new() });
                    }
                    let g = &mut self.groups[used];
                    g.last_start = key.0;
                    g.series = key.1;
                    g.closed = key.2;
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

    /// Adds every group formed by [`Self::group_rows`] to its pane. Rows
    /// that fell only into closed windows are marked not `accepted`
    /// (whole-model pass).
    fn update_groups(
        &mut self,
        model: &ModelState,
        batch: &PredictionBatch,
        whole_model: bool,
        panes: &mut PartitionPanes,
        output: &mut LaneOutput,
    ) {
        let groups = std::mem::take(&mut self.groups);
        let covers_batch = groups.len() == 1 && groups[0].rows.len() == batch.len();
        let count = self.spec.windows_per_event() as u32;
        for group in &groups {
            if group.closed > 0 {
                // Each is reported by the first window of its series that
                // closes among those still open for it when it arrived.
                for &row in &group.rows {
                    let first_open = self.spec.first_start_ending_after(self.arrival_watermark[row as usize]);
                    output.late.push((group.series, first_open));
                }
                if whole_model {
                    output.events_late += group.rows.len() as u64;
                }
            }
            if group.closed >= count {
                if whole_model {
                    for &row in &group.rows {
                        output.accepted[row as usize] = false;
                    }
                }
                continue;
            }
            let taken;
            let columns = if covers_batch {
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
            let key = (group.last_start, group.series, group.closed);
            let state = panes.panes.entry(key).or_insert_with(|| WindowState::new(model));
            output.categories_over_cap += state.update(model, &columns, self.max_categories, whole_model);
        }
        self.groups = groups;
    }
}
