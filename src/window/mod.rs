//! Window: event-time windows, watermarks and lateness.
//!
//! Windows are aligned to the Unix epoch: a window of `size` sliding by
//! `slide` (size a whole multiple of slide) covers `[start, start + size)`
//! for every `start` that is a multiple of `slide`. Tumbling windows are the
//! case `slide == size`. Every source partition (a Kafka partition; in
//! `replay`, an input file) keeps its own clock per model, the largest event
//! time it delivered; a model's *frontier* is the minimum over the
//! partitions that carry it and are not idle (never going back), and its
//! watermark is the frontier minus `allowed_lateness`. A window closes when
//! the watermark reaches its end, so a partition read ahead of the others
//! does not make their events late. An event whose window has already
//! closed is *late*: it is
//! counted (`events_late`, `driftwatch_events_late_total`) and not merged
//! into any closed window.
//!
//! Architecture invariant: pure; time only ever comes from event timestamps.

pub mod partial;

use std::collections::{BTreeMap, HashMap};

use crate::config::WindowsConfig;
use crate::evaluate::{PerformanceState, WindowState};
use crate::model::SeriesId;

/// A source partition: a Kafka partition number, or in `replay` the index
/// of an input file.
pub type PartitionId = i32;

/// One partition's clock for one model.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PartitionClock {
    /// Largest event time the partition delivered for the model (capped by
    /// the host clock in `run`); `None` for a partition declared but not
    /// read yet (a `replay` file still to come), which holds the model's
    /// frontier where it is.
    pub max_event_time_ms: Option<i64>,
    /// Idle partitions do not hold the others back: in the daemon, no event
    /// of the model for `windows.idle_timeout` of wall-clock time; in
    /// `replay`, the file has ended. An event makes it active again.
    pub idle: bool,
    /// Whether an event came since the driver's last clock tick.
    #[serde(skip)]
    pub touched: bool,
    /// The driver's wall clock when the partition was last seen active.
    #[serde(skip)]
    pub active_at_ms: Option<i64>,
}

impl PartitionClock {
    /// Whether the driver's tick with silence counted up to `read_until_ms`
    /// makes this partition idle: active, untouched since the last tick,
    /// and silent for `idle_ms` (0: never idle).
    pub fn goes_idle(&self, read_until_ms: Option<i64>, idle_ms: i64) -> bool {
        match (self.active_at_ms, read_until_ms) {
            (Some(active_at), Some(read_until)) => {
                !self.touched && !self.idle && idle_ms > 0 && read_until.saturating_sub(active_at) >= idle_ms
            }
            _ => false,
        }
    }
}

/// The smallest clock over the partitions that are not idle, leaving out
/// `except`: `i64::MAX` when there is none, `i64::MIN` when one of them has
/// no event yet (it holds the frontier).
pub fn min_active(clocks: &BTreeMap<PartitionId, PartitionClock>, except: Option<PartitionId>) -> i64 {
    clocks
        .iter()
        .filter(|(id, clock)| !clock.idle && Some(**id) != except)
        .map(|(_, clock)| clock.max_event_time_ms.unwrap_or(i64::MIN))
        .min()
        .unwrap_or(i64::MAX)
}

/// Moves `frontier` to the minimum over the active partitions, never back
/// (and not at all while a partition without events holds it, or when none
/// is active). Returns whether it moved.
fn advance_frontier(frontier: &mut Option<i64>, clocks: &BTreeMap<PartitionId, PartitionClock>) -> bool {
    let min = min_active(clocks, None);
    if min == i64::MAX || min == i64::MIN || frontier.is_some_and(|f| f >= min) {
        return false;
    }
    *frontier = Some(min);
    true
}

/// Records an event time on a partition's clock (making it active) and
/// advances the frontier.
fn observe(
    frontier: &mut Option<i64>,
    clocks: &mut BTreeMap<PartitionId, PartitionClock>,
    partition: PartitionId,
    time_ms: i64,
) {
    let clock = clocks.entry(partition).or_default();
    clock.idle = false;
    clock.touched = true;
    let before = clock.max_event_time_ms;
    clock.max_event_time_ms = Some(before.map_or(time_ms, |t| t.max(time_ms)));
    if before != clock.max_event_time_ms || frontier.is_none() {
        advance_frontier(frontier, clocks);
    }
}

/// A frontier followed event by event within one batch of one partition
/// (the other partitions' clocks stay as they are meanwhile): what
/// [`ModelWindows::observe_event_time`] per event would give, without a map
/// lookup per event.
#[derive(Debug, Clone, Copy)]
pub struct RunningFrontier {
    others: i64,
    own: Option<i64>,
    pub frontier: Option<i64>,
}

impl RunningFrontier {
    fn new(frontier: Option<i64>, clocks: &BTreeMap<PartitionId, PartitionClock>, partition: PartitionId) -> Self {
        RunningFrontier {
            others: min_active(clocks, Some(partition)),
            own: clocks.get(&partition).and_then(|c| c.max_event_time_ms),
            frontier,
        }
    }

    /// The partition delivered an event at `time_ms`: the frontier moves to
    /// the minimum over the active partitions, never back. Returns it.
    #[inline]
    pub fn observe(&mut self, time_ms: i64) -> Option<i64> {
        let own = self.own.map_or(time_ms, |m| m.max(time_ms));
        self.own = Some(own);
        let min = self.others.min(own);
        if min != i64::MIN && self.frontier.is_none_or(|f| f < min) {
            self.frontier = Some(min);
        }
        self.frontier
    }
}

/// Window geometry and time limits in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WindowSpec {
    pub size_ms: i64,
    pub slide_ms: i64,
    pub allowed_lateness_ms: i64,
    pub label_horizon_ms: i64,
}

impl WindowSpec {
    pub fn from_config(windows: &WindowsConfig) -> Self {
        WindowSpec {
            size_ms: windows.size.as_millis() as i64,
            slide_ms: windows.slide.as_millis() as i64,
            allowed_lateness_ms: windows.allowed_lateness.as_millis() as i64,
            label_horizon_ms: windows.label_horizon.as_millis() as i64,
        }
    }

    /// Windows an event belongs to (`size / slide` of them).
    pub fn windows_per_event(&self) -> i64 {
        (self.size_ms / self.slide_ms).max(1)
    }

    /// Start of the latest window that contains `time_ms`.
    #[inline]
    pub fn last_start(&self, time_ms: i64) -> i64 {
        time_ms.div_euclid(self.slide_ms) * self.slide_ms
    }

    /// Starts of all windows containing an event whose latest window starts
    /// at `last_start`, oldest first.
    pub fn starts_from_last(&self, last_start: i64) -> impl Iterator<Item = i64> + use<> {
        let slide = self.slide_ms;
        let count = self.windows_per_event();
        (0..count).rev().map(move |j| last_start - j * slide)
    }

    /// Whether the window starting at `start` ends after `before` and at or
    /// before `limit` (it closes when the watermark moves from one to the
    /// other).
    pub fn ends_within(&self, start: i64, before: i64, limit: i64) -> bool {
        let end = start.saturating_add(self.size_ms);
        end > before && end <= limit
    }

    /// Start of the oldest window that ends after `watermark_ms` (the
    /// first still open at that watermark).
    pub fn first_start_ending_after(&self, watermark_ms: i64) -> i64 {
        watermark_ms.saturating_sub(self.size_ms).div_euclid(self.slide_ms) * self.slide_ms + self.slide_ms
    }

    /// Starts of all windows containing `time_ms`, oldest first.
    pub fn starts_of(&self, time_ms: i64) -> impl Iterator<Item = i64> + use<> {
        self.starts_from_last(self.last_start(time_ms))
    }
}

/// A window whose data rows are out and which waits for labels until its
/// end plus `label_horizon` has passed the watermark.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct AwaitingLabels {
    pub events: u64,
    pub performance: PerformanceState,
}

/// A pane: the partial state of one slide-long stretch of one series, as
/// one source partition delivered it. Key within its partition's
/// [`PartitionPanes`]: (pane start, series, windows skipped). A window is
/// the merge of the panes it covers (one for tumbling windows): first each
/// partition's panes of the window in pane order (its *contribution*),
/// then the contributions in partition order, so its rows do not depend on
/// how the partitions' events interleaved, nor on which lane aggregated
/// which partition. Rows that arrived after some of their windows had
/// closed for them (late for the oldest `skipped` of the `size / slide`
/// windows they belong to) are kept apart, in a pane with that `skipped`,
/// which only the newer windows take.
pub type PaneKey = (i64, SeriesId, u32);

/// One source partition's open panes of one model.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct PartitionPanes {
    pub panes: BTreeMap<PaneKey, WindowState>,
    /// The partition has handed over its contributions to every window
    /// ending at or before this (see [`crate::engine::lane::LaneAggregator::seal`]).
    #[serde(default)]
    pub sealed_through_ms: Option<i64>,
}

impl PartitionPanes {
    /// Seals the partition's contributions to the windows ending after what
    /// it sealed before and at or before `watermark` (`i64::MAX`: all of
    /// them, the partition has ended), and notes how far it has sealed.
    pub fn seal_through(
        &mut self,
        spec: &WindowSpec,
        watermark: i64,
        max_categories: usize,
    ) -> BTreeMap<(i64, SeriesId), WindowState> {
        let before = self.sealed_through_ms.unwrap_or(i64::MIN);
        if watermark <= before {
            return BTreeMap::new();
        }
        self.sealed_through_ms = Some(watermark);
        self.take_contributions(spec, before, watermark, max_categories)
    }

    /// Hands over everything the partition holds: its contributions to
    /// every window it has not sealed yet (they merge with whatever it
    /// contributes later), leaving it empty but as far sealed as it was.
    pub fn hand_over(&mut self, spec: &WindowSpec, max_categories: usize) -> BTreeMap<(i64, SeriesId), WindowState> {
        let before = self.sealed_through_ms.unwrap_or(i64::MIN);
        self.take_contributions(spec, before, i64::MAX, max_categories)
    }

    /// The partition's contributions to the windows that close when the
    /// watermark moves from `before` to `limit` (`i64::MAX`: every
    /// window): per (start, series), the merge of its panes of the window
    /// in (pane, skipped) order, sorted by (start, series). Panes no
    /// window still open needs are dropped.
    pub fn take_contributions(
        &mut self,
        spec: &WindowSpec,
        before: i64,
        limit: i64,
        max_categories: usize,
    ) -> BTreeMap<(i64, SeriesId), WindowState> {
        let closes = |start: i64| spec.ends_within(start, before, limit);
        let mut contributions: BTreeMap<(i64, SeriesId), WindowState> = BTreeMap::new();
        let mut add =
            |key: (i64, SeriesId), state: WindowState| merge_into(&mut contributions, key, state, max_categories);
        let count = spec.windows_per_event();
        // The panes an ending window covers start before its end.
        let relevant: Vec<PaneKey> =
            self.panes.keys().take_while(|(pane, ..)| pane.saturating_add(spec.slide_ms) <= limit).copied().collect();
        for key in relevant {
            let (pane, series, skipped) = key;
            // The windows holding this pane, oldest first: window j starts
            // at pane - (count - 1 - j) * slide; the pane counts in j >= skipped.
            let starts: Vec<i64> = (skipped as i64..count)
                .map(|j| pane - (count - 1 - j) * spec.slide_ms)
                .filter(|s| closes(*s))
                .collect();
            if closes(pane) {
                // Its newest window closes: the pane's last use.
                let state = self.panes.remove(&key).expect("listed");
                let (last, rest) = starts.split_last().expect("the newest window closes");
                for &start in rest {
                    add((start, series), state.clone());
                }
                add((*last, series), state);
            } else {
                let state = &self.panes[&key];
                for &start in &starts {
                    add((start, series), state.clone());
                }
            }
        }
        contributions
    }
}

/// The windows of one model.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ModelWindows {
    /// The frontier: the largest minimum, over the partitions carrying the
    /// model that were not idle, of their largest event time (checkpoints
    /// written before per-partition watermarks hold the largest event time
    /// seen, which then serves as every partition's).
    pub max_event_time_ms: Option<i64>,
    /// The labels' frontier, likewise over the labels' partitions: while
    /// the model's labels hold (see
    /// [`crate::engine::Engine::set_labels_holding`]), the performance
    /// watermark does not pass it.
    #[serde(default)]
    pub max_label_time_ms: Option<i64>,
    /// Per predictions partition carrying the model: its clock.
    #[serde(default)]
    pub partitions: BTreeMap<PartitionId, PartitionClock>,
    /// Per labels partition carrying the model: its clock.
    #[serde(default)]
    pub label_partitions: BTreeMap<PartitionId, PartitionClock>,
    /// The open windows' data, as panes per source partition (see
    /// [`PaneKey`]).
    #[serde(default)]
    pub panes: BTreeMap<PartitionId, PartitionPanes>,
    /// Partitions' sealed contributions to windows still open, by (start,
    /// series) and partition: a window closes as their merge in partition
    /// order.
    #[serde(default)]
    pub contributions: BTreeMap<(i64, SeriesId), BTreeMap<PartitionId, WindowState>>,
    /// Open windows' performance (pairs joined while the window's data was
    /// still open), by (start, series).
    #[serde(default)]
    pub performance: BTreeMap<(i64, SeriesId), PerformanceState>,
    /// Windows ending at or before this have closed (the watermark of the
    /// last close; `None` before the first).
    #[serde(default)]
    pub closed_through_ms: Option<i64>,
    /// Whole open windows restored from a checkpoint written before panes
    /// (hopping windows only; tumbling ones become panes), by (start,
    /// series): each is merged, before its panes, into its window.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub whole_windows: BTreeMap<(i64, SeriesId), WindowState>,
    /// Checkpoints written before panes: their open windows (read only, and
    /// moved by [`ModelWindows::migrate_whole_windows`]).
    #[serde(default, rename = "open", skip_serializing)]
    pub legacy_open: BTreeMap<(i64, SeriesId), WindowState>,
    /// Closed windows waiting for labels, by (start, series).
    pub awaiting_labels: BTreeMap<(i64, SeriesId), AwaitingLabels>,
    /// Late events not yet reported in an `events_late` row, by (series,
    /// start of the first window still open for them when they arrived):
    /// the first window of the series to close from that start on reports
    /// them, so where a late event is reported depends only on its own
    /// partition's progress, not on when the other partitions let windows
    /// close.
    #[serde(default)]
    pub late_pending: BTreeMap<(SeriesId, i64), u64>,
    /// Checkpoints written before `late_pending`: late events per series,
    /// reported by the next window of the series to close (moved into
    /// `late_pending` by [`ModelWindows::migrate_whole_windows`]).
    #[serde(default, rename = "late_unreported", skip_serializing)]
    pub legacy_late_unreported: HashMap<SeriesId, u64>,
}

/// Where a partial state came from in a checkpoint written before panes:
/// it sorts before every source partition.
pub const RESTORED_PARTITION: PartitionId = PartitionId::MIN;

impl ModelWindows {
    /// The watermark, or `None` before the first event.
    pub fn watermark(&self, spec: &WindowSpec) -> Option<i64> {
        self.max_event_time_ms.map(|t| t.saturating_sub(spec.allowed_lateness_ms))
    }

    /// Whether the window starting at `start` has closed.
    pub fn is_closed(&self, spec: &WindowSpec, start: i64) -> bool {
        self.watermark(spec).is_some_and(|w| start + spec.size_ms <= w)
    }

    /// Records an event time of `partition`, moving the watermark forward
    /// when that partition held it (never back).
    pub fn observe_event_time(&mut self, partition: PartitionId, time_ms: i64) {
        observe(&mut self.max_event_time_ms, &mut self.partitions, partition, time_ms);
    }

    /// The events' frontier as a batch of `partition` moves it, event by
    /// event (see [`RunningFrontier`]).
    pub fn running_event_frontier(&self, partition: PartitionId) -> RunningFrontier {
        RunningFrontier::new(self.max_event_time_ms, &self.partitions, partition)
    }

    /// The labels' frontier as a batch of labels partition `partition`
    /// moves it, label by label.
    pub fn running_label_frontier(&self, partition: PartitionId) -> RunningFrontier {
        RunningFrontier::new(self.max_label_time_ms, &self.label_partitions, partition)
    }

    /// Re-reads the frontiers after partitions went idle; returns whether
    /// one moved.
    pub fn advance_frontiers(&mut self) -> bool {
        let events = advance_frontier(&mut self.max_event_time_ms, &self.partitions);
        let labels = advance_frontier(&mut self.max_label_time_ms, &self.label_partitions);
        events || labels
    }

    /// Moves the frontier to at least `floor` (a model whose traffic
    /// stopped); returns whether it moved.
    pub fn raise_frontier(&mut self, floor: i64) -> bool {
        if self.max_event_time_ms.is_some_and(|f| f >= floor) {
            return false;
        }
        self.max_event_time_ms = Some(floor);
        true
    }

    /// Moves the open windows of a checkpoint written before panes into
    /// panes (tumbling windows: a window is its one pane) or whole windows
    /// (hopping), their performance into [`Self::performance`], and marks
    /// the windows the watermark had passed as closed.
    pub fn migrate_whole_windows(&mut self, spec: &WindowSpec) {
        if self.closed_through_ms.is_none() {
            self.closed_through_ms = self.watermark(spec);
        }
        for (series, late) in self.legacy_late_unreported.drain() {
            *self.late_pending.entry((series, i64::MIN)).or_default() += late;
        }
        for ((start, series), mut state) in std::mem::take(&mut self.legacy_open) {
            let performance = std::mem::take(&mut state.performance);
            if performance.labeled > 0 || performance.paired.events > 0 {
                self.performance.entry((start, series)).or_default().merge(&performance);
            }
            if spec.windows_per_event() == 1 {
                self.panes.entry(RESTORED_PARTITION).or_default().panes.insert((start, series, 0), state);
            } else {
                self.whole_windows.insert((start, series), state);
            }
        }
    }

    /// Takes a partition's sealed contribution to window (start, series) in,
    /// merged with what it contributed before (a part handed over earlier;
    /// two lane series folded into one). A contribution to a window that
    /// has closed already (its partition idle meanwhile) is left out, and
    /// given back.
    pub fn add_contribution(
        &mut self,
        spec: &WindowSpec,
        key: (i64, SeriesId),
        partition: PartitionId,
        state: WindowState,
        max_categories: usize,
    ) -> Option<WindowState> {
        if self.closed_through_ms.is_some_and(|closed| key.0.saturating_add(spec.size_ms) <= closed) {
            return Some(state);
        }
        merge_into(self.contributions.entry(key).or_default(), partition, state, max_categories);
        None
    }

    /// Where a pair joined for window (start, series) is credited: the
    /// open window's performance (created on first use), or that of the
    /// closed window still waiting for labels; `None` once the window's
    /// performance rows are out.
    pub fn performance_of(&mut self, spec: &WindowSpec, key: (i64, SeriesId)) -> Option<&mut PerformanceState> {
        let open = self.closed_through_ms.is_none_or(|closed| key.0.saturating_add(spec.size_ms) > closed);
        if open {
            return Some(self.performance.entry(key).or_default());
        }
        self.awaiting_labels.get_mut(&key).map(|awaiting| &mut awaiting.performance)
    }

    /// Removes and returns the late events the closing window (start,
    /// series) reports: those of the series first pending at or before
    /// `start`.
    pub fn take_late(&mut self, series: SeriesId, start: i64) -> u64 {
        let keys: Vec<(SeriesId, i64)> =
            self.late_pending.range((series, i64::MIN)..=(series, start)).map(|(k, _)| *k).collect();
        keys.iter().map(|key| self.late_pending.remove(key).unwrap_or(0)).sum()
    }

    /// Every open partial state with its series (panes and whole windows),
    /// for re-attaching them to a changed baseline.
    pub fn open_states_mut(&mut self) -> impl Iterator<Item = (SeriesId, &mut WindowState)> {
        let panes =
            self.panes.values_mut().flat_map(|p| p.panes.iter_mut()).map(|((_, series, _), state)| (*series, state));
        let sealed = self
            .contributions
            .iter_mut()
            .flat_map(|((_, series), by_partition)| by_partition.values_mut().map(|state| (*series, state)));
        panes.chain(sealed).chain(self.whole_windows.iter_mut().map(|((_, series), state)| (*series, state)))
    }

    /// Every open partial state (panes and whole windows).
    pub fn open_states(&self) -> impl Iterator<Item = &WindowState> {
        let panes = self.panes.values().flat_map(|p| p.panes.values());
        let sealed = self.contributions.values().flat_map(|by_partition| by_partition.values());
        panes.chain(sealed).chain(self.whole_windows.values()).chain(self.legacy_open.values())
    }

    /// Open partial states (panes, whole windows), for counting.
    pub fn open_len(&self) -> usize {
        self.panes.values().map(|p| p.panes.len()).sum::<usize>()
            + self.contributions.values().map(BTreeMap::len).sum::<usize>()
            + self.whole_windows.len()
            + self.legacy_open.len()
    }

    /// Removes and returns the windows the watermark has closed since the
    /// last close (all of them when `everything`), each the merge of its
    /// partitions' contributions in partition order (see [`PaneKey`]), in
    /// (start, series) order. Panes no open window needs any more are
    /// dropped; `max_categories` caps each merged window's categories.
    pub fn take_closable(
        &mut self,
        spec: &WindowSpec,
        everything: bool,
        max_categories: usize,
    ) -> Vec<((i64, SeriesId), WindowState)> {
        let Some(limit) = (if everything { Some(i64::MAX) } else { self.watermark(spec) }) else {
            return Vec::new();
        };
        let before = self.closed_through_ms.unwrap_or(i64::MIN);
        if limit <= before {
            return Vec::new();
        }
        let closes = |start: i64| spec.ends_within(start, before, limit);
        let mut closing: BTreeMap<(i64, SeriesId), WindowState> = BTreeMap::new();
        let mut add = |key: (i64, SeriesId), state: WindowState| merge_into(&mut closing, key, state, max_categories);
        // Whole windows restored from an older checkpoint go first.
        let whole: Vec<(i64, SeriesId)> =
            self.whole_windows.keys().filter(|(start, _)| closes(*start)).copied().collect();
        for key in whole {
            let state = self.whole_windows.remove(&key).expect("listed");
            add(key, state);
        }
        // Partitions that have not sealed through the watermark yet (idle
        // ones; and every one when the engine aggregates in-line) seal now.
        let partitions: Vec<PartitionId> = self.panes.keys().copied().collect();
        for partition in partitions {
            let panes = self.panes.get_mut(&partition).expect("listed");
            for (key, state) in panes.seal_through(spec, limit, max_categories) {
                self.add_contribution(spec, key, partition, state, max_categories);
            }
        }
        // Then each partition's contribution, in partition order.
        let ending: Vec<(i64, SeriesId)> = self
            .contributions
            .keys()
            .take_while(|(start, _)| start.saturating_add(spec.size_ms) <= limit)
            .copied()
            .collect();
        for key in ending {
            let by_partition = self.contributions.remove(&key).expect("listed");
            for (_, state) in by_partition {
                add(key, state);
            }
        }
        if !everything {
            self.closed_through_ms = Some(limit);
        }
        closing.into_iter().collect()
    }

    /// Records a label time of labels partition `partition`, moving the
    /// label watermark forward when that partition held it (never back).
    pub fn observe_label_time(&mut self, partition: PartitionId, time_ms: i64) {
        observe(&mut self.max_label_time_ms, &mut self.label_partitions, partition, time_ms);
    }

    /// The watermark that closes performance and expires pending joins:
    /// the watermark, held back to the label watermark (minus
    /// `allowed_lateness`) when `labels_hold`, and `None` while labels hold
    /// but none was seen.
    pub fn performance_watermark(&self, spec: &WindowSpec, labels_hold: bool) -> Option<i64> {
        let watermark = self.watermark(spec)?;
        if !labels_hold {
            return Some(watermark);
        }
        let labels = self.max_label_time_ms?.saturating_sub(spec.allowed_lateness_ms);
        Some(watermark.min(labels))
    }

    /// Removes and returns the windows whose labels had their horizon by
    /// `limit` (all of them when `limit` is `i64::MAX`).
    pub fn take_labelled(&mut self, spec: &WindowSpec, limit: Option<i64>) -> Vec<((i64, SeriesId), AwaitingLabels)> {
        drain_ended(&mut self.awaiting_labels, limit, spec.size_ms.saturating_add(spec.label_horizon_ms))
    }
}

/// Puts `state` under `key`, merged into what is there already (a later
/// part of the same window: parts merge in the order they come).
pub fn merge_into<K: Ord>(map: &mut BTreeMap<K, WindowState>, key: K, state: WindowState, max_categories: usize) {
    match map.entry(key) {
        std::collections::btree_map::Entry::Vacant(slot) => {
            slot.insert(state);
        }
        std::collections::btree_map::Entry::Occupied(mut slot) => slot.get_mut().merge(state, max_categories),
    }
}

/// Removes the entries whose start plus `span` is at most `limit`.
fn drain_ended<V>(map: &mut BTreeMap<(i64, SeriesId), V>, limit: Option<i64>, span: i64) -> Vec<((i64, SeriesId), V)> {
    let Some(limit) = limit else { return Vec::new() };
    let mut ended = Vec::new();
    while let Some(entry) = map.first_entry() {
        if limit != i64::MAX && entry.key().0.saturating_add(span) > limit {
            break;
        }
        ended.push(entry.remove_entry());
    }
    ended
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(size: i64, slide: i64, lateness: i64) -> WindowSpec {
        WindowSpec { size_ms: size, slide_ms: slide, allowed_lateness_ms: lateness, label_horizon_ms: 0 }
    }

    #[test]
    fn tumbling_windows_hold_each_event_once() {
        let s = spec(60_000, 60_000, 0);
        assert_eq!(s.starts_of(0).collect::<Vec<_>>(), vec![0]);
        assert_eq!(s.starts_of(59_999).collect::<Vec<_>>(), vec![0]);
        assert_eq!(s.starts_of(60_000).collect::<Vec<_>>(), vec![60_000]);
        assert_eq!(s.starts_of(-1).collect::<Vec<_>>(), vec![-60_000]);
    }

    #[test]
    fn hopping_windows_hold_each_event_size_over_slide_times() {
        let s = spec(120_000, 60_000, 0);
        assert_eq!(s.starts_of(61_000).collect::<Vec<_>>(), vec![0, 60_000]);
        assert_eq!(s.starts_of(60_000).collect::<Vec<_>>(), vec![0, 60_000]);
        assert_eq!(s.starts_of(59_999).collect::<Vec<_>>(), vec![-60_000, 0]);
        for t in (0..600_000).step_by(7_777) {
            for start in s.starts_of(t) {
                assert!(start <= t && t < start + s.size_ms);
            }
        }
    }

    #[test]
    fn watermark_trails_max_event_time_by_lateness_and_never_goes_back() {
        let s = spec(60_000, 60_000, 10_000);
        let mut w = ModelWindows::default();
        assert_eq!(w.watermark(&s), None);
        w.observe_event_time(0, 100_000);
        w.observe_event_time(0, 50_000);
        assert_eq!(w.watermark(&s), Some(90_000));
        assert!(w.is_closed(&s, 0));
        assert!(!w.is_closed(&s, 60_000));
        w.observe_event_time(0, 130_000);
        assert!(w.is_closed(&s, 60_000));
    }

    /// The watermark is the minimum over the active partitions: one read
    /// ahead does not move it; an idle one stops holding; one rejoining
    /// below the watermark does not move it back.
    #[test]
    fn watermark_is_the_minimum_over_active_partitions_and_never_goes_back() {
        let s = spec(60_000, 60_000, 0);
        let mut w = ModelWindows::default();
        w.observe_event_time(0, 100_000);
        assert_eq!(w.watermark(&s), Some(100_000));
        w.observe_event_time(1, 40_000);
        assert_eq!(w.watermark(&s), Some(100_000), "a partition joining behind does not move it back");
        w.observe_event_time(0, 300_000);
        assert_eq!(w.watermark(&s), Some(100_000), "partition 1 holds it");
        w.observe_event_time(1, 200_000);
        assert_eq!(w.watermark(&s), Some(200_000));
        w.partitions.get_mut(&1).unwrap().idle = true;
        assert!(w.advance_frontiers());
        assert_eq!(w.watermark(&s), Some(300_000), "idle: partition 1 no longer holds");
        w.observe_event_time(1, 250_000);
        assert_eq!(w.watermark(&s), Some(300_000), "rejoining behind does not move it back");
        w.observe_event_time(0, 400_000);
        assert_eq!(w.watermark(&s), Some(300_000), "but it holds again");
    }
}
