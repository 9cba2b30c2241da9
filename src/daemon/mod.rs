//! The daemon's main loop (`driftwatch run`): one thread that owns the
//! pipeline (decoder and engine) and handles everything that can happen to
//! it, one [`LoopEvent`] at a time, in one `match` ([`MainLoop::run`]) — a
//! batch a consumer lane read, a rebalance, the wall clock's tick, a
//! reload, a checkpoint written, shutdown — in the manner of
//! rust-analyzer's main loop: [`MainLoop::next_event`] waits on every
//! source of events and returns the next one.
//!
//! Whatever blocks runs on a thread of its own, fed through a bounded
//! channel: the Kafka lane polls and only emits (`sources::kafka`), the
//! alerting stage writes rows and evaluates rules ([`stage`]), the
//! checkpoint writer writes and fsyncs ([`checkpointer`]), the dead-letter
//! stage waits for the broker (`sources::dead_letters`). The loop decides
//! everything: what a batch does to the engine, where offsets stand, when
//! to checkpoint, pause, commit or stop. docs/ARCHITECTURE.md, "Threads",
//! lists every thread with what it owns and how it ends.
//!
//! Checkpoints stay exact: the loop encodes one between two batches, after
//! a barrier through the dead-letter stage and one through the alerting
//! stage, which answers with its outputs' durable lengths and alert state
//! once it has handled exactly the rows sent before; the writer puts it on
//! disk, and only then does the loop have its offsets committed.
//!
//! Shutdown, in the mini-redis manner: the shutdown flag is the broadcast
//! (the lane watches it, sends its last batch and [`LaneEvent::Stopped`]);
//! the loop writes the final checkpoint (or closes every window) and has
//! the final commit made; then it drops its end of every channel, which
//! ends every thread, and joins them all (they are scoped threads). If the
//! loop ends early (an output error), a drop guard stops the lane the same
//! way.

pub mod checkpointer;
pub mod clock;
pub mod stage;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel, sync_channel};
use std::time::{Duration, Instant};

use crate::alerting::AlertingSink;
use crate::checkpoint::{CheckpointStore, Offsets};
use crate::config::{Config, KafkaConfig};
use crate::pipeline::Pipeline;
use crate::shutdown::Shutdown;
use crate::sources::dead_letters::{DeadLetter, DeadLetters};
use crate::sources::kafka::{
    FIRST_LANE, KafkaLane, KafkaSourceError, KafkaSummary, LaneEvent, LaneStart, Location, PartitionKey, Positions,
    RebalanceEvent, SourceBatch, SourceCommand, Stream,
};
use checkpointer::{CheckpointJob, CheckpointOutcome, CheckpointWriter};
use clock::{LabelActivity, WallClock};
use stage::AlertingStage;

/// How often the loop ticks: the engine's wall clock, labels activity,
/// backpressure and checkpoint checks.
pub const TICK: Duration = Duration::from_millis(100);

/// Lane events queued for the loop at most. Each may be a micro-batch, so
/// with the one a lane fills and the one the loop processes, at most this
/// many plus two micro-batches are in memory.
pub const LANE_EVENTS_IN_FLIGHT: usize = 2;

/// How often the loop logs a one-line summary of what it has done.
pub const STATS_LOG_INTERVAL: Duration = Duration::from_secs(30);

/// Everything that can happen to the daemon's pipeline.
pub enum LoopEvent {
    /// Messages a lane read (an empty batch tells how far it has read).
    Batch(SourceBatch),
    /// A lane's partitions changed; the lane waits for the reply the event
    /// carries, if any.
    Rebalance(RebalanceEvent),
    /// The wall clock, every [`TICK`].
    Tick,
    /// Reload the config: SIGHUP (`None`) or `POST /-/reload`.
    Reload(Option<crate::http::ReloadRequest>),
    /// The checkpoint writer finished a checkpoint, or failed to.
    CheckpointWritten(CheckpointOutcome),
    /// Every lane stopped reading (shutdown); all they read came before.
    Shutdown,
}

/// Durable mode: the pipeline's state is checkpointed into `state.dir`
/// every `interval`, with the offsets it covers; Kafka commits follow each
/// checkpoint (for lag tooling), and partitions are assigned at the
/// checkpoint's offsets, so a restart neither loses nor recounts events.
pub struct Durability {
    pub store: CheckpointStore,
    pub interval: Duration,
    /// Offsets the restored state covers (topic → partition → next).
    resume: Offsets,
    /// The state was restored from a checkpoint.
    restored: bool,
}

impl Durability {
    pub fn new(store: CheckpointStore, interval: Duration, resume: Offsets) -> Self {
        Durability { store, interval, resume, restored: false }
    }

    /// The state was restored from a checkpoint: partitions it has no
    /// offset for start at their beginning.
    pub fn restored(mut self) -> Self {
        self.restored = true;
        self
    }
}

/// Where reloads are asked for.
pub struct Reloads<'a> {
    /// Set by SIGHUP.
    pub signal: &'a AtomicBool,
    /// `POST /-/reload` requests from the HTTP API.
    pub http: Option<Receiver<crate::http::ReloadRequest>>,
}

/// Sets the lanes' stop flag when dropped: a loop that ends, however it
/// ends, stops the lanes.
struct StopLanes(Arc<AtomicBool>);

impl Drop for StopLanes {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Runs the daemon until `shutdown` is triggered: the Kafka lane, the
/// alerting stage (over `sink`), the dead-letter stage and, in durable mode
/// (`durability`), the checkpoint writer, each on a thread of its own
/// around the loop, which runs on the calling thread. Durable mode
/// checkpoints every interval and once more at shutdown, leaving open
/// windows open for the next run; otherwise shutdown closes every open
/// window and commits. Every thread has ended when this returns.
pub fn run(
    config: &Config,
    pipeline: &mut Pipeline,
    sink: AlertingSink<'_>,
    reloads: Reloads<'_>,
    shutdown: &Shutdown,
    durability: Option<Durability>,
) -> Result<KafkaSummary, KafkaSourceError> {
    let kafka = config.kafka.as_ref().ok_or(KafkaSourceError::NotConfigured)?;
    let resume: Positions = durability
        .as_ref()
        .map(|d| {
            d.resume
                .iter()
                .flat_map(|(topic, partitions)| partitions.iter().map(|(p, next)| ((topic.clone(), *p), *next)))
                .collect()
        })
        .unwrap_or_default();
    let start = LaneStart {
        durable: durability.is_some(),
        restored: durability.as_ref().is_some_and(|d| d.restored),
        checkpointed: resume.clone(),
    };
    let producer = crate::sources::dead_letters::create_producer(kafka)?;
    let thread = KafkaSourceError::Thread;
    std::thread::scope(|scope| {
        // Every channel end is a local of this closure: however it returns,
        // they are dropped, and so every thread ends, before the scope
        // joins them.
        let (lane_events, events) = sync_channel(LANE_EVENTS_IN_FLIGHT);
        let (lane_commands, commands) = channel();
        let stop = StopLanes(Arc::new(AtomicBool::new(false)));
        let lane = KafkaLane::new(
            config,
            FIRST_LANE,
            pipeline.telemetry.clone(),
            start,
            lane_events,
            commands,
            shutdown.clone(),
            stop.0.clone(),
        )?;
        let lane = std::thread::Builder::new()
            .name("driftwatch-consumer".into())
            .spawn_scoped(scope, move || lane.run())
            .map_err(thread)?;
        let (stage, stage_thread) = AlertingStage::spawn(scope, sink).map_err(thread)?;
        let (dead_letters, dead_letters_thread) = match (producer, &kafka.dead_letter_topic) {
            (Some(producer), Some(topic)) => {
                let (handle, joined) = DeadLetters::spawn(
                    scope,
                    producer,
                    topic.clone(),
                    pipeline.telemetry.clone(),
                    lane_commands.clone(),
                )
                .map_err(thread)?;
                (Some(handle), Some(joined))
            }
            _ => (None, None),
        };
        let (checkpoints, writer_thread) = match durability {
            Some(durability) => {
                let (writer, joined) = CheckpointWriter::spawn(scope, durability.store).map_err(thread)?;
                let checkpoints = Checkpoints {
                    writer,
                    interval: durability.interval,
                    last_attempt: Instant::now(),
                    dirty: false,
                    checkpointed: resume.clone(),
                };
                (Some(checkpoints), Some(joined))
            }
            None => (None, None),
        };
        let mut main_loop = MainLoop {
            kafka,
            clock: WallClock::new(config.pipeline.clock_speedup),
            label_activity: LabelActivity::new(config.windows.idle_timeout, pipeline),
            pipeline,
            events,
            lanes_running: 1,
            lane_commands,
            stage,
            dead_letters,
            checkpoints,
            reloads,
            next_tick: Instant::now(),
            read_until: None,
            declared: BTreeSet::new(),
            positions: resume,
            assigning: false,
            paused: false,
            last_log: Instant::now(),
            batches: 0,
            _stop_lanes: stop,
        };
        let outcome = main_loop.run();
        let batches = main_loop.batches;
        // Dropping the loop closes every channel end it holds: each thread
        // finishes what it was given and ends.
        drop(main_loop);
        let mut summary = join(lane);
        summary.batches = batches;
        if let Some(joined) = dead_letters_thread {
            summary.dead_lettered = join(joined);
        }
        if let Some(joined) = writer_thread {
            join(joined);
        }
        tracing::info!(messages = summary.messages, batches = summary.batches, "daemon loop stopped");
        match (outcome, join(stage_thread)) {
            // The stage's own error says why the loop could not go on.
            (_, Err(error)) => Err(KafkaSourceError::Output(error)),
            (Err(error), Ok(())) => Err(error),
            (Ok(()), Ok(())) => Ok(summary),
        }
    })
}

/// Joins a scoped thread, passing its panic on.
fn join<T>(handle: std::thread::ScopedJoinHandle<'_, T>) -> T {
    handle.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Durable mode's part of the loop.
struct Checkpoints {
    writer: CheckpointWriter,
    interval: Duration,
    last_attempt: Instant,
    /// Events processed, or alert state changed, since the last checkpoint
    /// began.
    dirty: bool,
    /// The offsets of the last checkpoint written (what a revocation
    /// commits).
    checkpointed: Positions,
}

/// The loop's state: see the module doc.
struct MainLoop<'a, 'env> {
    kafka: &'a KafkaConfig,
    pipeline: &'a mut Pipeline,
    events: Receiver<LaneEvent>,
    lanes_running: usize,
    lane_commands: Sender<SourceCommand>,
    stage: AlertingStage,
    dead_letters: Option<DeadLetters>,
    checkpoints: Option<Checkpoints>,
    reloads: Reloads<'env>,
    next_tick: Instant,
    clock: WallClock,
    label_activity: LabelActivity,
    /// Everything the lane read up to this instant is in the pipeline (the
    /// last batch's `read_until`); `None` before its first batch.
    read_until: Option<Instant>,
    /// The predictions partitions declared to the engine (the assignment).
    declared: BTreeSet<i32>,
    /// Per partition, the next offset the pipeline's state covers.
    positions: Positions,
    /// An assignment is under way: its starts may not have reached
    /// `positions` yet, so no checkpoint begins until the lane's `poll`
    /// has returned (`RebalanceEvent::Partitions`).
    assigning: bool,
    /// Consumption is paused (backpressure).
    paused: bool,
    last_log: Instant,
    batches: u64,
    _stop_lanes: StopLanes,
}

impl MainLoop<'_, '_> {
    /// Handles events until shutdown; returns once the final checkpoint is
    /// written (or every window closed) and the final commit asked for.
    fn run(&mut self) -> Result<(), KafkaSourceError> {
        loop {
            match self.next_event() {
                LoopEvent::Batch(batch) => self.process_batch(batch)?,
                LoopEvent::Rebalance(RebalanceEvent::Assigned { lane: _, partitions, reply }) => {
                    let _ = reply.send(self.assigned(&partitions));
                }
                LoopEvent::Rebalance(RebalanceEvent::Started { lane: _, starts }) => self.positions.extend(starts),
                LoopEvent::Rebalance(RebalanceEvent::Revoked { lane: _, partitions, reply }) => {
                    let _ = reply.send(self.revoked(&partitions));
                }
                LoopEvent::Rebalance(RebalanceEvent::Partitions { lane: _, predictions }) => {
                    self.partitions_changed(predictions)?;
                }
                LoopEvent::Tick => self.tick()?,
                LoopEvent::Reload(request) => self.stage.reload(request)?,
                LoopEvent::CheckpointWritten(outcome) => {
                    self.checkpoint_written(outcome);
                }
                LoopEvent::Shutdown => return self.shut_down(),
            }
        }
    }

    /// The next event: a reload asked for, a checkpoint written, the tick
    /// when due, else the lanes' next event (waiting at most until the
    /// tick).
    fn next_event(&mut self) -> LoopEvent {
        loop {
            if self.reloads.signal.swap(false, Ordering::SeqCst) {
                return LoopEvent::Reload(None);
            }
            if let Some(request) = self.reloads.http.as_ref().and_then(|http| http.try_recv().ok()) {
                return LoopEvent::Reload(Some(request));
            }
            if let Some(outcome) = self.checkpoints.as_mut().and_then(|c| c.writer.try_outcome()) {
                return LoopEvent::CheckpointWritten(outcome);
            }
            let now = Instant::now();
            if now >= self.next_tick {
                self.next_tick = now + TICK;
                return LoopEvent::Tick;
            }
            match self.events.recv_timeout(self.next_tick - now) {
                Ok(LaneEvent::Batch(batch)) => return LoopEvent::Batch(batch),
                Ok(LaneEvent::Rebalance(rebalance)) => return LoopEvent::Rebalance(rebalance),
                Ok(LaneEvent::Stopped { lane: _ }) => {
                    self.lanes_running -= 1;
                    if self.lanes_running == 0 {
                        return LoopEvent::Shutdown;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                // Every lane gone without a word (a panic, passed on when
                // it is joined).
                Err(RecvTimeoutError::Disconnected) => return LoopEvent::Shutdown,
            }
        }
    }

    /// Runs a batch through the pipeline, partition by partition, and hands
    /// its rows to the alerting stage and its invalid events to the
    /// dead-letter stage; then its offsets are the state's (stored for
    /// auto-commit without a state dir, once its dead letters are out).
    fn process_batch(&mut self, batch: SourceBatch) -> Result<(), KafkaSourceError> {
        self.read_until = Some(batch.read_until);
        if batch.is_empty() {
            return Ok(());
        }
        let pipeline = &mut *self.pipeline;
        let skew_ms = i64::try_from(pipeline.max_future_skew.as_millis()).unwrap_or(i64::MAX);
        pipeline.decoder.accept_times_before(chrono::Utc::now().timestamp_millis().saturating_add(skew_ms));
        let mut letters = Vec::new();
        let mut processed = Positions::new();
        for messages in batch.partitions() {
            let (stream, partition) = (messages[0].stream, messages[0].partition);
            let topic = stream.topic(self.kafka);
            for message in messages {
                let bytes = batch.payload(message);
                let location = Location { topic, partition, offset: message.offset };
                let decoded = match stream {
                    Stream::Predictions => pipeline.decode_prediction(bytes, &location),
                    Stream::Labels => pipeline.decode_label(bytes, &location),
                };
                if let (Err(invalid), Some(_)) = (decoded, &self.dead_letters) {
                    letters.push(DeadLetter {
                        payload: bytes.to_vec(),
                        reason: invalid.reason.label(),
                        detail: invalid.detail,
                        source: location.to_string(),
                    });
                }
            }
            // Each partition's messages go through the engine as a batch of
            // their own, so each keeps its own watermark.
            match stream {
                Stream::Predictions => pipeline.process_predictions(partition),
                Stream::Labels => pipeline.process_labels(partition),
            }
            let next = messages.last().map_or(0, |m| m.offset + 1);
            processed.insert((topic.to_string(), partition), next);
        }
        pipeline.emit(&mut self.stage)?;
        if let Some(dead_letters) = &mut self.dead_letters {
            dead_letters.send(letters);
        }
        self.positions.extend(processed.iter().map(|(key, next)| (key.clone(), *next)));
        match &mut self.checkpoints {
            Some(checkpoints) => checkpoints.dirty = true,
            None => match &mut self.dead_letters {
                Some(dead_letters) => {
                    dead_letters.store_after(processed);
                }
                None => {
                    let _ = self.lane_commands.send(SourceCommand::Store(processed));
                }
            },
        }
        self.batches += 1;
        Ok(())
    }

    /// Partitions being assigned: the reply is where the state ends for
    /// them. The starts the lane resolves for the others arrive before the
    /// `poll` returns; until then no checkpoint begins (each checkpoint
    /// from the assignment on has every assigned partition's start, as the
    /// single-threaded daemon's did).
    fn assigned(&mut self, partitions: &[PartitionKey]) -> Positions {
        self.assigning = true;
        partitions.iter().filter_map(|key| self.positions.get(key).map(|next| (key.clone(), *next))).collect()
    }

    /// Partitions being revoked, after every batch the lane sent before:
    /// the reply is the offsets to commit for them — the last checkpoint's
    /// in durable mode, otherwise those processed (once their dead letters
    /// are out), which the loop then forgets (a partition coming back
    /// starts from what the group committed).
    fn revoked(&mut self, partitions: &[PartitionKey]) -> Positions {
        match &self.checkpoints {
            Some(checkpoints) => partitions
                .iter()
                .filter_map(|key| checkpoints.checkpointed.get(key).map(|next| (key.clone(), *next)))
                .collect(),
            None => {
                if let Some(dead_letters) = &mut self.dead_letters {
                    dead_letters.barrier();
                }
                partitions.iter().filter_map(|key| self.positions.remove(key).map(|next| (key.clone(), next))).collect()
            }
        }
    }

    /// The engine's predictions partitions follow the lane's assignment: a
    /// newly assigned partition is declared (it holds the watermark until
    /// its first event or until idle), a revoked one stops holding it.
    fn partitions_changed(&mut self, assigned: BTreeSet<i32>) -> Result<(), KafkaSourceError> {
        self.assigning = false;
        let new: Vec<i32> = assigned.difference(&self.declared).copied().collect();
        self.pipeline.engine.declare_partitions(&new);
        let mut written = 0;
        for revoked in self.declared.difference(&assigned) {
            written += self.pipeline.partition_ended(*revoked, false, &mut self.stage)?;
        }
        self.declared = assigned;
        if let Some(checkpoints) = &mut self.checkpoints {
            checkpoints.dirty |= written > 0;
        }
        Ok(())
    }

    /// The wall clock: the engine's clock and labels activity, the stats
    /// line, backpressure, and a checkpoint when one is due.
    fn tick(&mut self) -> Result<(), KafkaSourceError> {
        let read_until = if self.paused { None } else { self.read_until };
        let clock_closed = self.clock.tick(self.pipeline, &mut self.stage, read_until)?;
        let released = self.label_activity.update(self.pipeline, &mut self.stage, self.paused)?;
        // Alert state changed on the wall clock (a `query:` rule fired on
        // silence, rules reloaded) is checkpointed like events are, and so
        // are rows the clock or a released labels hold closes.
        let alerts_changed = self.stage.alerts_changed();
        if let Some(checkpoints) = &mut self.checkpoints {
            checkpoints.dirty |= clock_closed || released || alerts_changed;
        }
        if self.last_log.elapsed() >= STATS_LOG_INTERVAL {
            log_stats(self.pipeline, self.kafka);
            self.last_log = Instant::now();
        }
        self.apply_backpressure();
        let due = !self.assigning
            && self
                .checkpoints
                .as_ref()
                .is_some_and(|c| c.dirty && !c.writer.in_flight() && c.last_attempt.elapsed() >= c.interval);
        if due {
            self.start_checkpoint();
        }
        Ok(())
    }

    /// Backpressure: an output's retry buffer is full (its disk keeps
    /// failing). The lane stops fetching — every assigned partition
    /// paused, again after each rebalance — while it goes on serving
    /// rebalances, statistics and group membership, and the loop ticks and
    /// the stage retries the writes. The batches in hand are still
    /// processed (their rows wait in the buffer beyond the bound): nothing
    /// is dropped. librdkafka resumes a paused partition at the position
    /// after the last message `poll` returned, so nothing is skipped either.
    fn apply_backpressure(&mut self) {
        let full = self.stage.backpressure();
        if full && !self.paused {
            self.paused = true;
            tracing::error!("an output's retry buffer is full: consumption paused until the disk takes writes");
            let _ = self.lane_commands.send(SourceCommand::Pause);
        } else if !full && self.paused {
            self.paused = false;
            let _ = self.lane_commands.send(SourceCommand::Resume);
            tracing::info!("outputs written: consumption resumed");
        }
    }

    /// Begins a checkpoint between two batches: the barriers (dead letters
    /// out; the alerting stage's outputs written and fsynced, its alert
    /// state taken), the pipeline's state encoded with the offsets it
    /// covers, and the bytes handed to the writer. A failure (disk full,
    /// unwritable state dir) is logged, makes the daemon not ready, and is
    /// retried after the interval; the pipeline runs on from memory
    /// meanwhile. Returns whether it was handed to the writer.
    fn start_checkpoint(&mut self) -> bool {
        let Some(checkpoints) = &mut self.checkpoints else { return false };
        let started = Instant::now();
        checkpoints.last_attempt = started;
        if let Some(dead_letters) = &mut self.dead_letters {
            dead_letters.barrier();
        }
        let encoded = self.stage.snapshot().and_then(|snapshot| {
            let mut offsets = Offsets::new();
            for ((topic, partition), next) in &self.positions {
                offsets.entry(topic.clone()).or_default().insert(*partition, *next);
            }
            self.pipeline
                .encode_checkpoint(&offsets, snapshot.alerts.as_ref(), &snapshot.outputs)
                .map_err(|e| e.to_string())
        });
        let bytes = match encoded {
            Ok(bytes) => bytes,
            Err(error) => {
                checkpoint_failed(&self.pipeline.telemetry, &error);
                return false;
            }
        };
        checkpoints.dirty = false;
        let job = CheckpointJob { bytes, positions: self.positions.clone(), started };
        match checkpoints.writer.submit(job) {
            None => true,
            Some(refused) => {
                self.checkpoint_written(refused);
                false
            }
        }
    }

    /// A checkpoint's outcome: once it is on disk its offsets are committed
    /// (asynchronously; the checkpoint holds them) and become what a
    /// revocation commits; a failure is retried after the interval.
    /// Returns whether it was written.
    fn checkpoint_written(&mut self, outcome: CheckpointOutcome) -> bool {
        use crate::telemetry::{Storage, storage_status};
        let Some(checkpoints) = &mut self.checkpoints else { return false };
        let telemetry = &self.pipeline.telemetry;
        match outcome.written {
            Ok((path, bytes)) => {
                storage_status(Storage::Checkpoints, false, &"");
                telemetry.checkpoints_written.fetch_add(1, Ordering::Relaxed);
                telemetry.checkpoint_bytes.store(bytes as u64, Ordering::Relaxed);
                tracing::debug!(path = %path.display(), bytes, elapsed = ?outcome.started.elapsed(), "checkpoint written");
                checkpoints.checkpointed = outcome.positions.clone();
                let _ = self.lane_commands.send(SourceCommand::Commit(outcome.positions));
                true
            }
            Err(error) => {
                checkpoints.dirty = true;
                checkpoint_failed(telemetry, &error);
                false
            }
        }
    }

    /// Every lane has stopped and everything it read is processed. Durable
    /// mode: the final checkpoint (open windows stay open for the next
    /// run), committed. Otherwise: every open window closed and written,
    /// then the final commit of every processed offset.
    fn shut_down(&mut self) -> Result<(), KafkaSourceError> {
        if self.checkpoints.is_some() {
            if let Some(outcome) = self.checkpoints.as_mut().and_then(|c| c.writer.wait()) {
                self.checkpoint_written(outcome);
            }
            let written = self.start_checkpoint()
                && self
                    .checkpoints
                    .as_mut()
                    .and_then(|c| c.writer.wait())
                    .is_some_and(|outcome| self.checkpoint_written(outcome));
            if !written {
                tracing::error!("the final checkpoint failed; the next run resumes from the last one written");
            }
            return Ok(());
        }
        self.pipeline.finish(&mut self.stage)?;
        self.stage.wait_written()?;
        if let Some(dead_letters) = &mut self.dead_letters {
            dead_letters.barrier();
        }
        let _ = self.lane_commands.send(SourceCommand::FinalCommit(self.positions.clone()));
        Ok(())
    }
}

/// A checkpoint that could not be taken or written: counted, logged (once
/// per streak) and reported to readiness.
fn checkpoint_failed(telemetry: &crate::telemetry::Telemetry, error: &str) {
    use crate::telemetry::{Storage, storage_status};
    telemetry.checkpoints_failed.fetch_add(1, Ordering::Relaxed);
    storage_status(Storage::Checkpoints, true, &error);
}

fn log_stats(pipeline: &Pipeline, kafka: &KafkaConfig) {
    use std::sync::atomic::Ordering::Relaxed;
    let t = &pipeline.telemetry;
    let lag: i64 = t.consumer_lag().values().sum();
    tracing::info!(
        predictions = t.events_on(&kafka.predictions_topic),
        labels = t.events_on(&kafka.labels_topic),
        invalid = t.invalid_total(),
        late = t.events_late.load(Relaxed),
        windows_closed = t.windows_closed.load(Relaxed),
        open_windows = pipeline.engine.open_windows(),
        pending_joins = pipeline.engine.pending_joins(),
        consumer_lag = lag,
        "pipeline stats"
    );
}
