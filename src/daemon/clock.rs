//! The wall clock as the daemon's loop gives it to the engine, which never
//! reads one itself: [`WallClock`] (idle partitions, quiet models, event
//! times capped at the host clock) and [`LabelActivity`] (whether each
//! model's labels still hold its performance rows). Both run on the
//! loop's tick, every [`super::TICK`].

use std::time::{Duration, Instant};

use crate::output::WindowSink;
use crate::pipeline::Pipeline;

/// Whether each model's labels are live: a model's labels hold its
/// performance rows and pending joins (see
/// [`crate::engine::Engine::set_labels_holding`]) until they have been
/// silent for `windows.idle_timeout` (counted from the start of the run
/// when none came yet; time paused by backpressure does not count). So
/// when this process reads predictions ahead of labels (its labels
/// partitions are still with a dead group member, or their backlog is read
/// later), no window's performance is finalised before its labels are
/// read; when a model's labels stop, its performance rows follow the
/// predictions' watermark again.
pub struct LabelActivity {
    idle_timeout: Duration,
    /// Per model: labels seen, and when that count last changed.
    last: Vec<(u64, Instant)>,
}

impl LabelActivity {
    pub fn new(idle_timeout: Duration, pipeline: &Pipeline) -> Self {
        let now = Instant::now();
        LabelActivity { idle_timeout, last: pipeline.labels_seen().iter().map(|&n| (n, now)).collect() }
    }

    /// Updates each model's hold from the labels seen since the last
    /// update; returns whether a hold was released (state changed). While
    /// consumption is `paused` (backpressure) nothing is read, which is not
    /// silence: no model's labels go idle then. (Consumer lag cannot tell
    /// either: one labels topic serves every model, and a busy one always
    /// has some, so a model without labels would never be released.)
    pub fn update(
        &mut self,
        pipeline: &mut Pipeline,
        sink: &mut dyn WindowSink,
        paused: bool,
    ) -> std::io::Result<bool> {
        let now = Instant::now();
        let mut released = false;
        for model in 0..self.last.len() {
            let seen = pipeline.labels_seen()[model];
            let (count, since) = &mut self.last[model];
            if seen != *count || paused {
                *count = seen;
                *since = now;
            }
            let hold = now.duration_since(*since) < self.idle_timeout;
            if hold != pipeline.engine.labels_holding(model) {
                if !hold {
                    tracing::debug!(model = %pipeline.registry.get(model as u32).name, "labels idle: performance follows the predictions' watermark");
                }
                pipeline.set_labels_holding(model, hold, sink)?;
                released |= !hold;
            }
        }
        Ok(released)
    }
}

/// Gives the engine the wall clock (see
/// [`crate::engine::Engine::advance_clock`]): partitions silent for
/// `windows.idle_timeout` stop holding the others' watermark, models whose
/// traffic stopped close their windows, and event times beyond the host
/// clock no longer move a watermark. Silence counts only while reading:
/// not while consumption is paused (backpressure), and only up to the
/// instant everything the source read is in the pipeline and a broker
/// answered (`read_until`, from the last batch: an outage is not silence,
/// and neither are events still on their way to the loop). The clock runs
/// `pipeline.clock_speedup` times faster from the start (the demo's).
pub struct WallClock {
    started: Instant,
    started_ms: i64,
    speedup: i64,
}

impl WallClock {
    pub fn new(speedup: u32) -> Self {
        WallClock {
            started: Instant::now(),
            started_ms: chrono::Utc::now().timestamp_millis(),
            speedup: i64::from(speedup.max(1)),
        }
    }

    /// The clock at `instant` (not before the start), in ms.
    pub fn at(&self, instant: Instant) -> i64 {
        let elapsed = i64::try_from(instant.saturating_duration_since(self.started).as_millis()).unwrap_or(i64::MAX);
        self.started_ms.saturating_add(elapsed.saturating_mul(self.speedup))
    }

    /// Gives the engine the clock now, silence counting up to `read_until`
    /// (`None`: paused, or nothing read yet); returns whether rows were
    /// written.
    pub fn tick(
        &self,
        pipeline: &mut Pipeline,
        sink: &mut dyn WindowSink,
        read_until: Option<Instant>,
    ) -> std::io::Result<bool> {
        let now_ms = self.at(Instant::now());
        let read_until_ms = read_until.map(|instant| self.at(instant));
        let written = pipeline.advance_clock(now_ms, read_until_ms, sink)?;
        Ok(written > 0)
    }
}
