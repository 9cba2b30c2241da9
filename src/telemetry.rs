//! Telemetry: the daemon's own counters and gauges (names in docs/OBSERVABILITY.md), shared
//! between the pipeline thread and whoever exports them, plus typed internal
//! events that both log and count.
//!
//! Counters are plain atomics or small maps behind a mutex, updated once per
//! micro-batch, never per event.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::decode::{Invalid, InvalidReason};

/// All counters of one driftwatch process.
#[derive(Debug, Default)]
pub struct Telemetry {
    /// `driftwatch_events_total{topic,model}`.
    events: Mutex<BTreeMap<(String, String), u64>>,
    /// `driftwatch_events_invalid_total{reason}`, indexed by [`InvalidReason::index`].
    invalid: [AtomicU64; InvalidReason::ALL.len()],
    /// `driftwatch_events_late_total`.
    pub events_late: AtomicU64,
    /// `driftwatch_windows_closed_total`.
    pub windows_closed: AtomicU64,
    /// Predictions whose horizon passed without a label.
    pub join_predictions_expired: AtomicU64,
    /// Labels that never found their prediction.
    pub join_labels_unmatched: AtomicU64,
    /// Pending join entries evicted by the cap.
    pub join_evicted: AtomicU64,
    /// Labels that arrived after their windows were final.
    pub labels_late: AtomicU64,
    /// Pending join entries now.
    pub join_pending: AtomicI64,
    /// Bytes the join store's files take on disk (0: the joins are in memory).
    pub join_store_bytes: AtomicU64,
    /// Invalid events sent to the dead-letter topic.
    pub dead_lettered: AtomicU64,
    /// Dead letters the broker did not take (logged).
    pub dead_letters_failed: AtomicU64,
    /// Features not tracked because of the per-model cap.
    pub features_over_cap: AtomicU64,
    /// Categorical values pooled into `__other__` by the per-feature cap.
    pub categories_over_cap: AtomicU64,
    /// Predictions whose (model, event_id) was already seen within the
    /// label horizon (counted in windows, never paired twice).
    pub duplicate_predictions: AtomicU64,
    /// Labels whose (model, event_id) was already seen within the horizon.
    pub duplicate_labels: AtomicU64,
    /// Segments folded into `__other__` by the per-model cap.
    pub segments_over_cap: AtomicU64,
    /// Events filed under version `__other__` by the per-model cap.
    pub versions_over_cap: AtomicU64,
    /// Feature values whose JSON type did not match the feature.
    pub feature_type_errors: AtomicU64,
    /// Partitions currently assigned to this consumer.
    pub assigned_partitions: AtomicI64,
    /// `driftwatch_consumer_lag{topic,partition}`.
    consumer_lag: Mutex<BTreeMap<(String, i32), i64>>,
    /// `driftwatch_watermark_seconds{model,partition}`: per model and
    /// predictions partition, its watermark (ms since the epoch).
    watermarks: Mutex<BTreeMap<(String, i32), i64>>,
    /// `driftwatch_notifications_total{notifier,outcome}`.
    notifications: Mutex<BTreeMap<(String, String), u64>>,
    /// Last time each invalid reason was logged, and how many were not.
    invalid_log: Mutex<BTreeMap<InvalidReason, (Instant, u64)>>,
    /// What `/readyz` and `driftwatch_ready` report.
    pub readiness: Readiness,
    /// Checkpoints written, and attempts that failed.
    pub checkpoints_written: AtomicU64,
    pub checkpoints_failed: AtomicU64,
    /// Windows of the restored checkpoint that the config no longer fits
    /// (windows settings, task or model changed): dropped at start.
    pub checkpoint_windows_dropped: AtomicU64,
    /// Open windows of the restored checkpoint re-attached to a changed
    /// baseline.
    pub checkpoint_windows_reattached: AtomicU64,
    /// Size of the last checkpoint written.
    pub checkpoint_bytes: AtomicU64,
    /// `cluster:`: partials records published (and their bytes), and the
    /// merger's stretches merged, replaced by one published again, refused
    /// as stale, and breaking the sources' contract.
    pub partials_published: AtomicU64,
    pub partials_published_bytes: AtomicU64,
    pub partials_merged: AtomicU64,
    pub partials_replaced: AtomicU64,
    pub partials_stale: AtomicU64,
    pub partials_broken: AtomicU64,
    /// `cluster:`: how old (ms) the last partials record merged was when
    /// the merger took it in.
    pub merge_delay_ms: AtomicI64,
    /// `cluster:`: how many models this instance merges now.
    pub models_merged: AtomicI64,
    /// Where the HTTP API listens, once it does.
    pub http_address: Mutex<Option<String>>,
}

/// Parts of the daemon that write to disk; a failing one makes the daemon
/// not ready (`state_writable`) until its next write succeeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    Checkpoints = 1,
    Outbox = 2,
    AuditLog = 4,
    WindowMetricsOutput = 8,
    /// The join store (joins on disk).
    JoinStore = 16,
}

/// Which [`Storage`] parts are failing (a bit each). Process-wide: the
/// disk is.
static STORAGE_FAILING: AtomicU64 = AtomicU64::new(0);

/// Records whether `part` just failed or succeeded to write; logs the
/// change (a failure as an error, the recovery as info).
pub fn storage_status(part: Storage, failing: bool, detail: &dyn std::fmt::Display) {
    let bit = part as u64;
    let before = if failing {
        STORAGE_FAILING.fetch_or(bit, Ordering::SeqCst)
    } else {
        STORAGE_FAILING.fetch_and(!bit, Ordering::SeqCst)
    };
    let was_failing = before & bit != 0;
    if failing && !was_failing {
        tracing::error!(part = ?part, error = %detail, "writing to disk failed; running from memory and retrying");
    } else if !failing && was_failing {
        tracing::info!(part = ?part, "writing to disk works again");
    }
}

/// The storage parts failing now.
pub fn storage_failing() -> Vec<Storage> {
    let bits = STORAGE_FAILING.load(Ordering::SeqCst);
    [Storage::Checkpoints, Storage::Outbox, Storage::AuditLog, Storage::WindowMetricsOutput, Storage::JoinStore]
        .into_iter()
        .filter(|part| bits & *part as u64 != 0)
        .collect()
}

/// The conditions of readiness, each set by the part of the daemon that
/// knows it. Ready means all of them hold.
#[derive(Debug, Default)]
pub struct Readiness {
    /// Baselines and rules are loaded and the pipeline runs.
    pub pipeline_running: AtomicBool,
    /// A Kafka broker is reachable (librdkafka holds a connection that
    /// answered recently, or a message just arrived).
    pub kafka_reachable: AtomicBool,
}

impl Readiness {
    /// The names of the conditions that do not hold (empty when ready):
    /// `pipeline_running`, `kafka_reachable`, `state_writable` (every
    /// write to disk — checkpoints, outbox, audit log, output — works).
    pub fn unmet(&self) -> Vec<&'static str> {
        let mut unmet = Vec::new();
        if !self.pipeline_running.load(Ordering::Relaxed) {
            unmet.push("pipeline_running");
        }
        if !self.kafka_reachable.load(Ordering::Relaxed) {
            unmet.push("kafka_reachable");
        }
        if !storage_failing().is_empty() {
            unmet.push("state_writable");
        }
        unmet
    }

    pub fn is_ready(&self) -> bool {
        self.unmet().is_empty()
    }
}

/// How often one invalid-event reason may be logged.
pub const INVALID_LOG_INTERVAL: Duration = Duration::from_secs(10);

impl Telemetry {
    pub fn add_events(&self, topic: &str, model: &str, count: u64) {
        let mut events = self.events.lock().expect("telemetry lock");
        match events.get_mut(&(topic.to_string(), model.to_string())) {
            Some(n) => *n += count,
            None => {
                events.insert((topic.to_string(), model.to_string()), count);
            }
        }
    }

    pub fn events(&self) -> BTreeMap<(String, String), u64> {
        self.events.lock().expect("telemetry lock").clone()
    }

    /// Total events counted for `topic` over all models.
    pub fn events_on(&self, topic: &str) -> u64 {
        self.events.lock().expect("telemetry lock").iter().filter(|((t, _), _)| t == topic).map(|(_, n)| n).sum()
    }

    /// Counts an invalid event and logs it, at most once per reason per
    /// [`INVALID_LOG_INTERVAL`] (with the number of suppressed ones).
    /// Adds a decoder's counters (a `replay` lane's, when it ends).
    pub fn add_decode_counters(&self, counters: &crate::decode::DecodeCounters) {
        self.features_over_cap.fetch_add(counters.features_over_cap, Ordering::Relaxed);
        self.segments_over_cap.fetch_add(counters.segments_over_cap, Ordering::Relaxed);
        self.versions_over_cap.fetch_add(counters.versions_over_cap, Ordering::Relaxed);
        self.feature_type_errors.fetch_add(counters.type_errors, Ordering::Relaxed);
    }

    pub fn invalid_event(&self, topic: &str, location: &str, invalid: &Invalid) {
        self.invalid[invalid.reason.index()].fetch_add(1, Ordering::Relaxed);
        let mut log = self.invalid_log.lock().expect("telemetry lock");
        let now = Instant::now();
        let entry = log.entry(invalid.reason).or_insert((now - INVALID_LOG_INTERVAL * 2, 0));
        if now.duration_since(entry.0) >= INVALID_LOG_INTERVAL {
            tracing::warn!(
                topic,
                location,
                reason = invalid.reason.label(),
                suppressed = entry.1,
                "invalid event skipped: {}",
                invalid.detail
            );
            *entry = (now, 0);
        } else {
            entry.1 += 1;
        }
    }

    pub fn invalid_count(&self, reason: InvalidReason) -> u64 {
        self.invalid[reason.index()].load(Ordering::Relaxed)
    }

    pub fn invalid_total(&self) -> u64 {
        self.invalid.iter().map(|n| n.load(Ordering::Relaxed)).sum()
    }

    /// Counts one notification outcome (`delivered`, `retried`, `failed`,
    /// `expired`, `dropped`, `skipped`).
    pub fn notification(&self, notifier: &str, outcome: &str) {
        let mut map = self.notifications.lock().expect("telemetry lock");
        *map.entry((notifier.to_string(), outcome.to_string())).or_default() += 1;
    }

    /// `driftwatch_notifications_total` by (notifier, outcome).
    pub fn notifications(&self) -> BTreeMap<(String, String), u64> {
        self.notifications.lock().expect("telemetry lock").clone()
    }

    pub fn set_consumer_lag(&self, topic: &str, partition: i32, lag: i64) {
        self.consumer_lag.lock().expect("telemetry lock").insert((topic.to_string(), partition), lag);
    }

    pub fn remove_consumer_lag(&self, topic: &str, partition: i32) {
        self.consumer_lag.lock().expect("telemetry lock").remove(&(topic.to_string(), partition));
    }

    pub fn set_watermarks(&self, watermarks: BTreeMap<(String, i32), i64>) {
        *self.watermarks.lock().expect("telemetry lock") = watermarks;
    }

    /// Per (model, predictions partition): its watermark in ms.
    pub fn watermarks(&self) -> BTreeMap<(String, i32), i64> {
        self.watermarks.lock().expect("telemetry lock").clone()
    }

    pub fn consumer_lag(&self) -> BTreeMap<(String, i32), i64> {
        self.consumer_lag.lock().expect("telemetry lock").clone()
    }
}
