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
    /// Open windows by (start, series).
    pub open: BTreeMap<(i64, SeriesId), WindowState>,
    /// Closed windows waiting for labels, by (start, series).
    pub awaiting_labels: BTreeMap<(i64, SeriesId), AwaitingLabels>,
    /// Late events per series not yet reported in an `events_late` row.
    pub late_unreported: HashMap<SeriesId, u64>,
}

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

    /// Removes and returns the open windows whose end the watermark has
    /// reached (all of them when `everything`), in (start, series) order.
    pub fn take_closable(&mut self, spec: &WindowSpec, everything: bool) -> Vec<((i64, SeriesId), WindowState)> {
        let limit = if everything { Some(i64::MAX) } else { self.watermark(spec) };
        drain_ended(&mut self.open, limit, spec.size_ms)
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
