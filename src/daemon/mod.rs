//! The daemon's main loop (`driftwatch run`): one thread that owns the
//! pipeline (decoder and engine) and handles everything that can happen to
//! it, one [`LoopEvent`] at a time, in one `match` ([`MainLoop::run`]) — a
//! batch the consumer read, a lane's answer, a rebalance, the wall clock's
//! tick, a reload, a checkpoint written, shutdown — in the manner of
//! rust-analyzer's main loop: [`MainLoop::next_event`] waits on every
//! source of events and returns the next one.
//!
//! Whatever blocks runs on a thread of its own, fed through a bounded
//! channel: the Kafka consumer polls and only emits (`sources::kafka`),
//! the lanes decode and aggregate the predictions ([`lanes`], fed by the
//! loop's [`closer`]), the
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
//! (the consumer watches it, sends its last batch and
//! [`ConsumerEvent::Stopped`]);
//! the loop writes the final checkpoint (or closes every window) and has
//! the final commit made; then it drops its end of every channel, which
//! ends every thread, and joins them all (they are scoped threads). If the
//! loop ends early (an output error), a drop guard stops the consumer the
//! same way.

pub mod checkpointer;
pub mod clock;
pub mod closer;
pub mod lanes;
pub mod stage;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError, channel, sync_channel};
use std::time::{Duration, Instant};

use crate::alerting::AlertingSink;
use crate::checkpoint::{CheckpointStore, Offsets};
use crate::config::{Config, KafkaConfig};
use crate::pipeline::Pipeline;
use crate::shutdown::Shutdown;
use crate::sources::dead_letters::DeadLetters;
use crate::sources::kafka::{
    ConsumerEvent, ConsumerStart, FIRST_CONSUMER, KafkaConsumer, KafkaSourceError, KafkaSummary, PartitionKey,
    Positions, RebalanceEvent, SourceBatch, SourceCommand,
};
use checkpointer::{CheckpointJob, CheckpointOutcome, CheckpointWriter};
use clock::{LabelActivity, WallClock};
use closer::{Closer, Finished};
use lanes::{IN_FLIGHT_BATCHES, LaneDone, Lanes};
use stage::AlertingStage;

/// How often the loop ticks: the engine's wall clock, labels activity,
/// backpressure and checkpoint checks.
pub const TICK: Duration = Duration::from_millis(100);

/// Consumer events queued for the loop at most. Each may be a micro-batch
/// (docs/ARCHITECTURE.md, "Architecture invariants", says how many can be
/// in memory at once).
pub const CONSUMER_EVENTS_QUEUED: usize = 2;

/// How often the loop logs a one-line summary of what it has done.
pub const STATS_LOG_INTERVAL: Duration = Duration::from_secs(30);

/// Everything that can happen to the daemon's pipeline.
pub enum LoopEvent {
    /// Messages the consumer read (an empty batch tells how far it has read).
    Batch(SourceBatch),
    /// A lane's answer to the oldest predictions run in flight.
    Aggregated(usize, LaneDone),
    /// The consumer's partitions changed; it waits for the reply the event
    /// carries, if any.
    Rebalance(RebalanceEvent),
    /// The wall clock, every [`TICK`].
    Tick,
    /// Reload the config: SIGHUP (`None`) or `POST /-/reload`.
    Reload(Option<crate::http::ReloadRequest>),
    /// The checkpoint writer finished a checkpoint, or failed to.
    CheckpointWritten(CheckpointOutcome),
    /// The consumer stopped reading (shutdown); all it read came before.
    Shutdown,
    /// `cluster:`: the merge consumer's news.
    Merge(crate::sources::merge::MergeEvent),
}

/// Durable mode: the pipeline's state is checkpointed into `state.dir`
/// every `interval`, with the offsets it covers; Kafka commits follow each
/// checkpoint (for lag tooling), and partitions are assigned at the
/// checkpoint's offsets, so a restart neither loses nor recounts events.
pub struct Durability {
    pub store: CheckpointStore,
    pub interval: Duration,
    /// The offsets the restored state covers (topic → partition → next).
    resume: Offsets,
    /// The state was restored past newer checkpoints that could not be
    /// read.
    fell_back: bool,
}

impl Durability {
    pub fn new(store: CheckpointStore, interval: Duration, resume: Offsets) -> Self {
        Durability { store, interval, resume, fell_back: false }
    }

    /// The state was restored past newer checkpoints that could not be
    /// read: the group's committed offsets may then be this instance's
    /// own, past the state, so partitions start where the state ends (at
    /// their beginning when it has no offset for them), whatever the group
    /// committed.
    pub fn fell_back(mut self) -> Self {
        self.fell_back = true;
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

/// Sets the consumer's stop flag when dropped: a loop that ends, however it
/// ends, stops the consumer.
struct StopConsumer(Arc<AtomicBool>);

impl Drop for StopConsumer {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Runs the daemon until `shutdown` is triggered: the Kafka consumer, the
/// lanes, the alerting stage (over `sink`), the dead-letter stage and, in durable mode
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
    // A cluster: the partials topic, the merger, and a source engine.
    let mut cluster = None;
    let mut cluster_source = None;
    if let Some(settings) = &config.cluster {
        let timeout = Duration::from_secs(30);
        let count = crate::sources::partials::partitions_of(kafka, &kafka.predictions_topic, timeout)?;
        if count == 0 {
            tracing::warn!(topic = %kafka.predictions_topic, "cluster: the predictions topic has no partitions yet; the merger waits for none");
        }
        let partials = Arc::new(crate::sources::partials::PartialsTopic::open(
            kafka,
            &settings.partials_topic,
            count.max(1),
            timeout,
        )?);
        let models: Vec<String> = config.models.iter().map(|m| m.name.clone()).collect();
        let label_count = crate::sources::partials::partitions_of(kafka, &kafka.labels_topic, timeout)?;
        if label_count == 0 {
            tracing::warn!(topic = %kafka.labels_topic, "cluster: the labels topic has no partitions yet; its labels join once the instances restart after it exists");
        }
        let mut merger = crate::engine::cluster::Merger::new(config, &kafka.predictions_topic, count);
        if label_count > 0 {
            merger = merger.with_labels(&kafka.labels_topic, label_count);
        }
        pipeline.engine.set_source_mode();
        let http_address = pipeline.telemetry.http_address.lock().expect("telemetry lock").clone().unwrap_or_default();
        let instance = crate::sources::members::instance_name(settings.advertised_url.as_deref(), &http_address);
        cluster_source = Some(crate::sources::kafka::ClusterSource {
            partials: partials.clone(),
            models: models.clone(),
            instance: instance.clone(),
        });
        cluster = Some(Cluster {
            merger,
            instance,
            partials,
            models,
            interval: settings.publish_interval,
            last_publish: Instant::now(),
            max_record_bytes: usize::try_from(settings.max_record_bytes).unwrap_or(usize::MAX),
            published: Positions::new(),
            merged: BTreeSet::new(),
            history_due: BTreeSet::new(),
        });
    }
    let start = ConsumerStart {
        durable: durability.is_some() || cluster.is_some(),
        fell_back: durability.as_ref().is_some_and(|d| d.fell_back),
        checkpointed: resume.clone(),
        cluster: cluster_source,
    };
    let producer = crate::sources::dead_letters::create_producer(kafka)?;
    let thread = KafkaSourceError::Thread;
    std::thread::scope(|scope| {
        // Every channel end is a local of this closure: however it returns,
        // they are dropped, and so every thread ends, before the scope
        // joins them.
        let (consumer_events, events) = sync_channel(CONSUMER_EVENTS_QUEUED);
        let merge_events = consumer_events.clone();
        let (consumer_commands, commands) = channel();
        let stop = StopConsumer(Arc::new(AtomicBool::new(false)));
        let consumer = KafkaConsumer::new(
            config,
            FIRST_CONSUMER,
            pipeline.telemetry.clone(),
            start,
            consumer_events,
            commands,
            shutdown.clone(),
            stop.0.clone(),
        )?;
        let merge_consumer = match &cluster {
            Some(cluster) => Some(crate::sources::merge::MergeConsumer::new(
                kafka,
                cluster.partials.clone(),
                cluster.models.clone(),
                &cluster.instance,
                merge_events,
                shutdown.clone(),
                stop.0.clone(),
            )?),
            None => None,
        };
        let consumer = std::thread::Builder::new()
            .name("driftwatch-consumer".into())
            .spawn_scoped(scope, move || consumer.run())
            .map_err(thread)?;
        let merge_thread = match merge_consumer {
            Some(merge) => Some(
                std::thread::Builder::new()
                    .name("driftwatch-merge".into())
                    .spawn_scoped(scope, move || merge.run())
                    .map_err(thread)?,
            ),
            None => None,
        };
        // Lanes start from the restored dictionaries: the panes a
        // checkpoint restored go to them as they are (see Lanes::dispatch).
        let (lanes, lane_threads) = Lanes::spawn(
            scope,
            config,
            &pipeline.registry,
            config.pipeline.lanes(),
            pipeline.telemetry.clone(),
            &kafka.predictions_topic,
        )?;
        let (stage, stage_thread) = AlertingStage::spawn(scope, sink).map_err(thread)?;
        let (dead_letters, dead_letters_thread) = match (producer, &kafka.dead_letter_topic) {
            (Some(producer), Some(topic)) => {
                let (handle, joined) = DeadLetters::spawn(
                    scope,
                    producer,
                    topic.clone(),
                    pipeline.telemetry.clone(),
                    consumer_commands.clone(),
                )
                .map_err(thread)?;
                (Some(handle), Some(joined))
            }
            _ => (None, None),
        };
        let (checkpoints, writer_thread) = match durability {
            Some(durability) => {
                let dir = durability.store.dir().to_path_buf();
                let next_sequence = durability.store.next_sequence();
                let (writer, joined) = CheckpointWriter::spawn(scope, durability.store).map_err(thread)?;
                let checkpoints = Checkpoints {
                    writer,
                    interval: durability.interval,
                    last_attempt: Instant::now(),
                    dirty: false,
                    checkpointed: resume.clone(),
                    dir,
                    next_sequence,
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
            consumers_running: 1 + usize::from(cluster.is_some()),
            cluster,
            closer: Closer::new(
                lanes,
                &kafka.predictions_topic,
                &kafka.labels_topic,
                kafka.dead_letter_topic.is_some(),
            ),
            consumer_commands,
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
            _stop_consumer: stop,
        };
        let outcome = main_loop.run();
        let batches = main_loop.batches;
        // Dropping the loop closes every channel end it holds: each thread
        // finishes what it was given and ends.
        drop(main_loop);
        let mut summary = join(consumer);
        summary.batches = batches;
        if let Some(merge) = merge_thread {
            join(merge);
        }
        for lane in lane_threads {
            join(lane);
        }
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
    /// The checkpoint directory, and the sequence number of the next
    /// checkpoint file (whose join store checkpoint goes beside it).
    dir: std::path::PathBuf,
    next_sequence: u64,
}

/// A cluster's part of the loop (`cluster:`, docs/ARCHITECTURE.md,
/// "Scale-out over Kafka"): the source side publishes what the engine read
/// every `interval`; the merger merges the models whose partials
/// partitions the merge group gave this instance.
struct Cluster {
    /// This instance's name (see [`crate::sources::members`]).
    instance: String,
    partials: Arc<crate::sources::partials::PartialsTopic>,
    merger: crate::engine::cluster::Merger,
    models: Vec<String>,
    interval: Duration,
    last_publish: Instant,
    max_record_bytes: usize,
    /// Per predictions or labels partition: where its next delta starts.
    published: Positions,
    /// The models merged here.
    merged: BTreeSet<String>,
    /// Models merged here whose query-rule history changed since their
    /// last mark (the next one carries it).
    history_due: BTreeSet<String>,
}

/// The loop's state: see the module doc.
struct MainLoop<'a, 'env> {
    kafka: &'a KafkaConfig,
    pipeline: &'a mut Pipeline,
    events: Receiver<ConsumerEvent>,
    consumers_running: usize,
    cluster: Option<Cluster>,
    /// The lanes, and the batches taken from the consumer and not yet
    /// applied.
    closer: Closer,
    consumer_commands: Sender<SourceCommand>,
    stage: AlertingStage,
    dead_letters: Option<DeadLetters>,
    checkpoints: Option<Checkpoints>,
    reloads: Reloads<'env>,
    next_tick: Instant,
    clock: WallClock,
    label_activity: LabelActivity,
    /// Everything the consumer read up to this instant is in the pipeline
    /// (the last batch's `read_until`); `None` before its first batch.
    read_until: Option<Instant>,
    /// The predictions partitions declared to the engine (the assignment).
    declared: BTreeSet<i32>,
    /// Per partition, the next offset the pipeline's state covers.
    positions: Positions,
    /// An assignment is under way: its starts may not have reached
    /// `positions` yet, so no checkpoint begins until the consumer's `poll`
    /// has returned (`RebalanceEvent::Partitions`).
    assigning: bool,
    /// Consumption is paused (backpressure).
    paused: bool,
    last_log: Instant,
    batches: u64,
    _stop_consumer: StopConsumer,
}

impl MainLoop<'_, '_> {
    /// Handles events until shutdown; returns once the final checkpoint is
    /// written (or every window closed) and the final commit asked for.
    fn run(&mut self) -> Result<(), KafkaSourceError> {
        loop {
            match self.next_event()? {
                LoopEvent::Batch(batch) => self.dispatch(batch)?,
                LoopEvent::Aggregated(lane, done) => self.advance(lane, done)?,
                LoopEvent::Rebalance(rebalance) => {
                    // A rebalance concerns what was read before it.
                    self.drain()?;
                    match rebalance {
                        RebalanceEvent::Assigned { consumer: _, partitions, reply } => {
                            let _ = reply.send(self.assigned(&partitions));
                        }
                        RebalanceEvent::Started { consumer: _, starts } => {
                            if let Some(cluster) = &mut self.cluster {
                                cluster.published.extend(starts.iter().map(|(key, start)| (key.clone(), *start)));
                                // A labels partition with no labels of a
                                // model goes idle for it after
                                // `windows.idle_timeout`, as a predictions
                                // partition does, and the merger hears so.
                                let labels: Vec<i32> = (starts.keys())
                                    .filter(|(topic, _)| *topic == self.kafka.labels_topic)
                                    .map(|(_, partition)| *partition)
                                    .collect();
                                self.pipeline.engine.declare_label_partitions(&labels);
                            }
                            self.positions.extend(starts);
                        }
                        RebalanceEvent::Clocks { consumer: _, clocks } => {
                            for (model, partition, clock) in clocks {
                                if let Some(id) = self.pipeline.registry.id(&model) {
                                    self.pipeline.engine.restore_partition_clock(id, partition, clock);
                                }
                            }
                        }
                        RebalanceEvent::Revoked { consumer: _, partitions, reply } => {
                            let offsets = self.revoked(&partitions)?;
                            let _ = reply.send(offsets);
                        }
                        RebalanceEvent::Partitions { consumer: _, predictions } => {
                            self.partitions_changed(predictions)?;
                        }
                    }
                }
                LoopEvent::Tick => self.tick()?,
                LoopEvent::Reload(request) => self.stage.reload(request)?,
                LoopEvent::CheckpointWritten(outcome) => {
                    self.checkpoint_written(outcome);
                }
                LoopEvent::Merge(event) => self.merge(event)?,
                LoopEvent::Shutdown => return self.shut_down(),
            }
        }
    }

    /// The next event: a reload asked for, a checkpoint written, the tick
    /// when due, a lane's answer to the oldest run in flight, else the
    /// consumer's next event (waiting at most until the tick). With
    /// [`IN_FLIGHT_BATCHES`] batches in flight, the consumer waits.
    fn next_event(&mut self) -> Result<LoopEvent, KafkaSourceError> {
        loop {
            if self.reloads.signal.swap(false, Ordering::SeqCst) {
                return Ok(LoopEvent::Reload(None));
            }
            if let Some(request) = self.reloads.http.as_ref().and_then(|http| http.try_recv().ok()) {
                return Ok(LoopEvent::Reload(Some(request)));
            }
            if let Some(outcome) = self.checkpoints.as_mut().and_then(|c| c.writer.try_outcome()) {
                return Ok(LoopEvent::CheckpointWritten(outcome));
            }
            let now = Instant::now();
            if now >= self.next_tick {
                self.next_tick = now + TICK;
                return Ok(LoopEvent::Tick);
            }
            let wait = self.next_tick - now;
            if let Some(lane) = self.closer.awaited_lane() {
                if let Some(done) = self.closer.try_done(lane)? {
                    return Ok(LoopEvent::Aggregated(lane, done));
                }
                // The consumer's next batch goes to the lanes at once
                // (while they have room); otherwise the loop waits for
                // the oldest answer, which is what it needs next.
                if self.closer.in_flight() < IN_FLIGHT_BATCHES {
                    match self.events.try_recv() {
                        Ok(event) => match self.source_event(event) {
                            Some(event) => return Ok(event),
                            None => continue,
                        },
                        Err(TryRecvError::Empty) => {}
                        Err(TryRecvError::Disconnected) => return Ok(LoopEvent::Shutdown),
                    }
                }
                if let Some(done) = self.closer.wait_done(lane, wait)? {
                    return Ok(LoopEvent::Aggregated(lane, done));
                }
                continue;
            }
            match self.events.recv_timeout(wait) {
                Ok(event) => {
                    if let Some(event) = self.source_event(event) {
                        return Ok(event);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                // The consumer gone without a word (a panic, passed on when
                // it is joined).
                Err(RecvTimeoutError::Disconnected) => return Ok(LoopEvent::Shutdown),
            }
        }
    }

    /// What the consumer's event is to the loop (`None`: nothing yet).
    fn source_event(&mut self, event: ConsumerEvent) -> Option<LoopEvent> {
        match event {
            ConsumerEvent::Batch(batch) => Some(LoopEvent::Batch(batch)),
            ConsumerEvent::Rebalance(rebalance) => Some(LoopEvent::Rebalance(rebalance)),
            ConsumerEvent::Merge(event) => Some(LoopEvent::Merge(event)),
            ConsumerEvent::Stopped { consumer: _ } => {
                self.consumers_running -= 1;
                (self.consumers_running == 0).then_some(LoopEvent::Shutdown)
            }
        }
    }

    /// `cluster:`: what the merge consumer tells. A partials partition
    /// given to this instance makes its models merged here (each from its
    /// newest mark, if any); one taken away forgets them; records of the
    /// models merged here go to the merger, and the rows it closes to the
    /// alerting stage.
    fn merge(&mut self, event: crate::sources::merge::MergeEvent) -> Result<(), KafkaSourceError> {
        use crate::sources::merge::MergeEvent;
        use crate::sources::partials::partials_partition;
        let Some(cluster) = &mut self.cluster else { return Ok(()) };
        let count = cluster.partials.partitions();
        match event {
            MergeEvent::Assigned { partitions, mut marks } => {
                for model in cluster.models.iter().filter(|m| partitions.contains(&partials_partition(m, count))) {
                    cluster.merger.forget(model);
                    cluster.merged.insert(model.clone());
                    // The first mark of this turn carries the history.
                    cluster.history_due.insert(model.clone());
                    let alerts = marks.iter_mut().find(|mark| mark.model == *model).and_then(|mark| mark.alerts.take());
                    let state = alerts.and_then(|bytes| {
                        crate::rules::lifecycle::AlertSnapshot::from_msgpack(&bytes)
                            .inspect_err(|error| {
                                tracing::error!(%model, %error, "a merger's alert state could not be read; the model's alerts start over");
                            })
                            .ok()
                    });
                    self.stage.replace_model_alerts(model, state)?;
                }
                for mark in marks {
                    if let Err(error) = cluster.merger.resume(mark) {
                        tracing::error!(%error, "a merger's mark could not be taken over; merging from what is read");
                    }
                }
                self.pipeline.telemetry.models_merged.store(cluster.merged.len() as i64, Ordering::Relaxed);
            }
            MergeEvent::Revoked { partitions } => {
                for model in cluster.models.iter().filter(|m| partitions.contains(&partials_partition(m, count))) {
                    cluster.merger.forget(model);
                    cluster.merged.remove(model);
                    cluster.history_due.remove(model);
                    self.stage.replace_model_alerts(model, None)?;
                }
                self.pipeline.telemetry.models_merged.store(cluster.merged.len() as i64, Ordering::Relaxed);
            }
            MergeEvent::Records(records) => {
                let mut rows = Vec::new();
                let now_ms = chrono::Utc::now().timestamp_millis();
                for (_, offset, timestamp_ms, record) in records {
                    match record {
                        Ok(record) if cluster.merged.contains(record.model()) => {
                            if let Err(error) = cluster.merger.apply(offset, record, &mut rows) {
                                tracing::warn!(%error, offset, "a partials record was not merged");
                            }
                            if let Some(published_ms) = timestamp_ms {
                                let delay = now_ms.saturating_sub(published_ms).max(0);
                                self.pipeline.telemetry.merge_delay_ms.store(delay, Ordering::Relaxed);
                            }
                        }
                        Ok(_) => {}
                        Err(error) => tracing::warn!(%error, offset, "a partials record could not be read"),
                    }
                }
                let counters = &cluster.merger.counters;
                let telemetry = &self.pipeline.telemetry;
                telemetry.partials_merged.store(counters.stretches, Ordering::Relaxed);
                telemetry.partials_replaced.store(counters.replaced, Ordering::Relaxed);
                telemetry.partials_stale.store(counters.stale, Ordering::Relaxed);
                telemetry.partials_broken.store(counters.broken, Ordering::Relaxed);
                if !rows.is_empty() {
                    use crate::output::WindowSink;
                    self.pipeline.telemetry.windows_closed.fetch_add(
                        rows.iter().filter(|r| r.metric == "count" && r.feature.is_none()).count() as u64,
                        Ordering::Relaxed,
                    );
                    self.stage.write_rows(&rows)?;
                    // The rows changed the query rules' history.
                    for row in &rows {
                        if !cluster.history_due.contains(&*row.model) {
                            cluster.history_due.insert(row.model.to_string());
                        }
                    }
                    // Windows closed: marked as soon as their rows are
                    // written, so a next merger seldom emits them again.
                    let marks = Self::marks(cluster, &self.stage);
                    if !marks.is_empty() {
                        let command =
                            SourceCommand::Publish { records: marks, offsets: Positions::new(), commits: Vec::new() };
                        let _ = self.consumer_commands.send(command);
                    }
                }
            }
        }
        Ok(())
    }

    /// `cluster:`: publishes what the engine read of each predictions and
    /// labels partition since its last delta, per model (empty ones too: the
    /// merger hears every partition's clock and idleness), with the offsets
    /// to commit and the commit records, and the marks of the models merged
    /// here, as one command to the consumer (docs/ARCHITECTURE.md, "The
    /// order of a publish").
    fn publish(&mut self) -> Result<(), KafkaSourceError> {
        if self.cluster.is_none() {
            return Ok(());
        }
        // The lanes' panes go to the engine first.
        self.hand_over(None, false)?;
        let Some(cluster) = &mut self.cluster else { return Ok(()) };
        cluster.last_publish = Instant::now();
        let (mut records, mut commits, mut offsets) = (Vec::new(), Vec::new(), Positions::new());
        let predictions = self.declared.iter().map(|&partition| (self.kafka.predictions_topic.clone(), partition));
        let labels: Vec<PartitionKey> =
            self.positions.keys().filter(|(topic, _)| *topic == self.kafka.labels_topic).cloned().collect();
        for key in predictions.chain(labels) {
            let Some(&end) = self.positions.get(&key) else { continue };
            let start = cluster.published.get(&key).copied().unwrap_or(end);
            let (topic, partition) = (&key.0, key.1);
            let of_labels = *topic == self.kafka.labels_topic;
            for (id, model) in self.pipeline.registry.models.iter().enumerate() {
                let id = id as u32;
                let engine = &mut self.pipeline.engine;
                let (taken, idle) = if of_labels {
                    let taken = engine.take_label_delta(&self.pipeline.registry, id, partition);
                    (taken, engine.label_partition_is_idle(id, partition))
                } else {
                    let taken = engine.take_delta(&self.pipeline.registry, id, partition);
                    (taken, engine.partition_is_idle(id, partition))
                };
                let clock_ms = taken.clock_ms;
                let delta = taken.into_delta(&model.name, topic, partition, (start, end), idle);
                records.extend(
                    delta
                        .split(cluster.max_record_bytes)
                        .into_iter()
                        .map(|part| crate::cluster::record::PartialsRecord::delta(&cluster.instance, part)),
                );
                commits.push(crate::cluster::record::PartialsRecord::commit(
                    &cluster.instance,
                    crate::cluster::record::Commit {
                        model: model.name.to_string(),
                        topic: topic.clone(),
                        partition,
                        next: end,
                        clock_ms,
                    },
                ));
            }
            cluster.published.insert(key.clone(), end);
            offsets.insert(key, end);
        }
        records.extend(Self::marks(cluster, &self.stage));
        let _ = self.consumer_commands.send(SourceCommand::Publish { records, offsets, commits });
        Ok(())
    }

    /// `cluster:`: the marks of the models merged here, once the alerting
    /// stage has written every row sent to it (outputs, alert transitions,
    /// the outbox): a mark says its windows were emitted, and a next merger
    /// emits none of them again, so a mark must never run ahead of the
    /// outputs (as a checkpoint never does). None while an output's writes
    /// fail: the next merger would emit those windows again, the same rows,
    /// which beats losing them.
    ///
    /// Each mark carries the state of the model's alerts as the stage holds
    /// it then, and, when the model's query-rule history changed since the
    /// last mark that carried it, the history (at most half a record).
    fn marks(cluster: &mut Cluster, stage: &AlertingStage) -> Vec<crate::cluster::record::PartialsRecord> {
        use crate::cluster::record::AlertHistory;
        let mut marks: Vec<_> = cluster.merged.iter().filter_map(|model| cluster.merger.mark(model)).collect();
        if marks.is_empty() {
            return Vec::new();
        }
        let history_bytes = cluster.max_record_bytes / 2;
        let models = marks
            .iter()
            .map(|mark| (mark.model.clone(), cluster.history_due.contains(&mark.model).then_some(history_bytes)))
            .collect();
        let states = match stage.alert_states(models) {
            Ok(states) => states,
            Err(error) => {
                tracing::warn!(%error, "merger marks held back: rows wait to be written");
                return Vec::new();
            }
        };
        for (mark, alerts) in marks.iter_mut().zip(states) {
            let carried = cluster.history_due.remove(&mark.model);
            mark.alert_history = match (alerts.keeps_history, carried) {
                (false, _) => AlertHistory::NotKept,
                (true, true) => AlertHistory::Carried,
                (true, false) => AlertHistory::InAnEarlierMark,
            };
            mark.alerts = Some(serde_bytes::ByteBuf::from(alerts.state));
        }
        marks.into_iter().map(|mark| crate::cluster::record::PartialsRecord::mark(&cluster.instance, mark)).collect()
    }

    /// Runs `step` on the closer, then passes on the batches it finished
    /// (whether or not the step then failed).
    fn with_closer<T>(
        &mut self,
        step: impl FnOnce(&mut Closer, &mut Pipeline, &mut Vec<Finished>) -> Result<T, KafkaSourceError>,
    ) -> Result<T, KafkaSourceError> {
        let mut finished = Vec::new();
        let outcome = step(&mut self.closer, self.pipeline, &mut finished);
        self.finish_batches(finished)?;
        outcome
    }

    /// Takes a batch from the consumer (see [`Closer::dispatch`]).
    fn dispatch(&mut self, batch: SourceBatch) -> Result<(), KafkaSourceError> {
        self.with_closer(|closer, pipeline, finished| closer.dispatch(pipeline, batch, finished))
    }

    /// Applies a lane's answer and whatever it lets through.
    fn advance(&mut self, lane: usize, done: LaneDone) -> Result<(), KafkaSourceError> {
        self.with_closer(|closer, pipeline, finished| closer.advance(pipeline, Some((lane, done)), finished))
    }

    /// Waits for the lanes until every batch taken is applied.
    fn drain(&mut self) -> Result<(), KafkaSourceError> {
        self.with_closer(|closer, pipeline, finished| closer.drain(pipeline, finished))
    }

    /// Has the lanes hand `partitions`' panes (`None`: all) over to the
    /// engine, once every batch taken is applied; `forget` them (revoked).
    fn hand_over(&mut self, partitions: Option<&BTreeSet<i32>>, forget: bool) -> Result<(), KafkaSourceError> {
        self.with_closer(|closer, pipeline, finished| closer.hand_over(pipeline, partitions, forget, finished))
    }

    /// Batches whose runs are all applied: their rows go to the alerting
    /// stage and their invalid events to the dead-letter stage; then their
    /// offsets are the state's (stored for auto-commit without a state
    /// dir, once their dead letters are out), and everything read up to
    /// their `read_until` is in the pipeline.
    fn finish_batches(&mut self, finished: Vec<Finished>) -> Result<(), KafkaSourceError> {
        for batch in finished {
            self.read_until = Some(batch.read_until);
            if batch.empty {
                continue;
            }
            self.pipeline.emit(&mut self.stage)?;
            if let Some(dead_letters) = &mut self.dead_letters {
                dead_letters.send(batch.letters);
            }
            let processed = batch.processed;
            self.positions.extend(processed.iter().map(|(key, next)| (key.clone(), *next)));
            match &mut self.checkpoints {
                Some(checkpoints) => checkpoints.dirty = true,
                None => match &mut self.dead_letters {
                    Some(dead_letters) => {
                        dead_letters.store_after(processed);
                    }
                    None => {
                        let _ = self.consumer_commands.send(SourceCommand::Store(processed));
                    }
                },
            }
            self.batches += 1;
        }
        Ok(())
    }

    /// Partitions being assigned: the reply is where the state ends for
    /// them. The starts the consumer resolves for the others arrive before the
    /// `poll` returns; until then no checkpoint begins (each checkpoint
    /// from the assignment on has every assigned partition's start, as the
    /// single-threaded daemon's did).
    fn assigned(&mut self, partitions: &[PartitionKey]) -> Positions {
        self.assigning = true;
        partitions.iter().filter_map(|key| self.positions.get(key).map(|next| (key.clone(), *next))).collect()
    }

    /// Partitions being revoked, after every batch the consumer sent before:
    /// the reply is the offsets to commit for them, those of everything
    /// processed. Durable mode has a checkpoint cover them first (see
    /// [`Self::hand_over_durably`]); otherwise they are the offsets
    /// processed, once their dead letters are out. Either way the loop then
    /// forgets them: this member never commits them again, and a partition
    /// coming back starts from what the group committed.
    fn revoked(&mut self, partitions: &[PartitionKey]) -> Result<Positions, KafkaSourceError> {
        if self.checkpoints.is_some() {
            return self.hand_over_durably(partitions);
        }
        if self.cluster.is_some() {
            // A cluster forgets (docs/ARCHITECTURE.md, "A revocation
            // forgets"): nothing is committed here, the next owner reads
            // again from the last publish (this member too, when the
            // partition comes back), so what the lanes and the engine hold
            // of the partitions since that publish is dropped now: kept, it
            // would go out again with what is read again.
            let revoked: BTreeSet<i32> = partitions
                .iter()
                .filter(|(topic, _)| *topic == self.kafka.predictions_topic)
                .map(|(_, partition)| *partition)
                .collect();
            self.hand_over(Some(&revoked), true)?;
            for &partition in &revoked {
                for model in 0..self.pipeline.registry.models.len() {
                    let _ = self.pipeline.engine.take_delta(&self.pipeline.registry, model as u32, partition);
                }
            }
            for (_, partition) in partitions.iter().filter(|(topic, _)| *topic == self.kafka.labels_topic) {
                self.pipeline.engine.drop_label_partition(*partition);
            }
            let Some(cluster) = &mut self.cluster else { return Ok(Positions::new()) };
            for key in partitions {
                self.positions.remove(key);
                cluster.published.remove(key);
            }
            return Ok(Positions::new());
        }
        if let Some(dead_letters) = &mut self.dead_letters {
            dead_letters.barrier();
        }
        Ok(partitions.iter().filter_map(|key| self.positions.remove(key).map(|next| (key.clone(), next))).collect())
    }

    /// Durable mode: partitions leave this instance. Everything read of
    /// them is in the state; a checkpoint taken now (unless the last one
    /// already covers the state) makes it durable, and its offsets for them
    /// are what the callback commits, so their next owner starts exactly
    /// where this state ends: every event counted once across the group.
    /// They then leave the offsets, so no later checkpoint or commit of
    /// this instance names them. A checkpoint that cannot be written leaves
    /// the last one's offsets to commit: the next owner then reads again
    /// what this state holds since (counted twice, which beats losing it),
    /// and the error says so.
    fn hand_over_durably(&mut self, partitions: &[PartitionKey]) -> Result<Positions, KafkaSourceError> {
        if let Some(outcome) = self.checkpoints.as_mut().and_then(|c| c.writer.wait()) {
            self.checkpoint_written(outcome);
        }
        let covered = !self.checkpoints.as_ref().is_some_and(|c| c.dirty)
            || (self.start_checkpoint()?
                && self
                    .checkpoints
                    .as_mut()
                    .and_then(|c| c.writer.wait())
                    .is_some_and(|outcome| self.checkpoint_written(outcome)));
        let Some(checkpoints) = &mut self.checkpoints else { return Ok(Positions::new()) };
        let mut offsets = Positions::new();
        for key in partitions {
            let processed = self.positions.remove(key);
            if let Some(next) = checkpoints.checkpointed.remove(key) {
                if !covered && processed.is_some_and(|processed| processed > next) {
                    tracing::error!(
                        topic = %key.0, partition = key.1, committed = next, processed = processed.unwrap_or(next),
                        "a revoked partition's checkpoint could not be written: its next owner reads again what this instance counted since the last checkpoint"
                    );
                }
                offsets.insert(key.clone(), next);
            }
        }
        Ok(offsets)
    }

    /// The engine's predictions partitions follow the consumer's assignment: a
    /// newly assigned partition is declared (it holds the watermark until
    /// its first event or until idle), a revoked one stops holding it.
    fn partitions_changed(&mut self, assigned: BTreeSet<i32>) -> Result<(), KafkaSourceError> {
        self.assigning = false;
        let revoked: BTreeSet<i32> = self.declared.difference(&assigned).copied().collect();
        self.hand_over(Some(&revoked), true)?;
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
        // Partitions this tick makes idle stop holding the windows, which
        // then close with their part: the lanes hand it over first.
        loop {
            let read_until = if self.paused { None } else { self.read_until };
            let going = self.pipeline.engine.partitions_going_idle(read_until.map(|i| self.clock.at(i)));
            let held = self.closer.holding(&going);
            if held.is_empty() {
                break;
            }
            self.hand_over(Some(&held), false)?;
        }
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
        // A failing join store is retried here too: a paused consumer
        // brings no events whose writes would retry it.
        self.pipeline.engine.retry_join_store();
        self.apply_backpressure();
        if !self.assigning && self.cluster.as_ref().is_some_and(|c| c.last_publish.elapsed() >= c.interval) {
            self.publish()?;
        }
        let due = !self.assigning
            && self
                .checkpoints
                .as_ref()
                .is_some_and(|c| c.dirty && !c.writer.in_flight() && c.last_attempt.elapsed() >= c.interval);
        if due {
            self.start_checkpoint()?;
        }
        Ok(())
    }

    /// Backpressure: an output's retry buffer is full (its disk keeps
    /// failing), or a join keeps too many writes in memory (its store
    /// fails). The consumer stops fetching — every assigned partition
    /// paused, again after each rebalance — while it goes on serving
    /// rebalances, statistics and group membership, and the loop ticks and
    /// the stage and the join store retry the writes. The batches in hand
    /// are still processed (their rows and entries wait beyond the bound):
    /// nothing is dropped. librdkafka resumes a paused partition at the
    /// position after the last message `poll` returned, so nothing is
    /// skipped either.
    fn apply_backpressure(&mut self) {
        let outputs_full = self.stage.backpressure();
        let joins_full = self.pipeline.engine.join_store_backed_up();
        let full = outputs_full || joins_full;
        if full && !self.paused {
            self.paused = true;
            if outputs_full {
                tracing::error!("an output's retry buffer is full: consumption paused until the disk takes writes");
            } else {
                tracing::error!(
                    "the join store fails and a join holds its most writes in memory: consumption paused until the store takes writes"
                );
            }
            let _ = self.consumer_commands.send(SourceCommand::Pause);
        } else if !full && self.paused {
            self.paused = false;
            let _ = self.consumer_commands.send(SourceCommand::Resume);
            tracing::info!("outputs and joins written: consumption resumed");
        }
    }

    /// Begins a checkpoint between two batches: the barriers (dead letters
    /// out; the alerting stage's outputs written and fsynced, its alert
    /// state taken), the pipeline's state encoded with the offsets it
    /// covers, and the bytes handed to the writer. A failure (disk full,
    /// unwritable state dir) is logged, makes the daemon not ready, and is
    /// retried after the interval; the pipeline runs on from memory
    /// meanwhile. Returns whether it was handed to the writer.
    fn start_checkpoint(&mut self) -> Result<bool, KafkaSourceError> {
        if self.checkpoints.is_none() {
            return Ok(false);
        }
        // Everything read so far is applied; a copy of the lanes' panes
        // goes into the checkpoint as the engine's (restored, they go back
        // to the lanes as they were: the rows stay those of a run that
        // never stopped, to the last bit).
        let lane_panes = self.with_closer(|closer, pipeline, finished| closer.snapshot(pipeline, finished))?;
        let Some(checkpoints) = &mut self.checkpoints else { return Ok(false) };
        let started = Instant::now();
        checkpoints.last_attempt = started;
        if let Some(dead_letters) = &mut self.dead_letters {
            dead_letters.barrier();
        }
        // The join store (joins on disk) is checkpointed beside the file,
        // at the same point of the stream.
        let mut join_store = None;
        if self.pipeline.engine.join_store().is_some() {
            let name = crate::checkpoint::join_store_name(checkpoints.next_sequence);
            let target = checkpoints.dir.join(&name);
            // A leftover of a checkpoint whose file was never written.
            let _ = std::fs::remove_dir_all(&target);
            if let Err(error) = self.pipeline.engine.checkpoint_join_store(&target) {
                checkpoint_failed(&self.pipeline.telemetry, &error.to_string());
                return Ok(false);
            }
            join_store = Some(name);
        }
        let encoded = self.stage.snapshot().and_then(|snapshot| {
            let mut offsets = Offsets::new();
            for ((topic, partition), next) in &self.positions {
                offsets.entry(topic.clone()).or_default().insert(*partition, *next);
            }
            let partitions: Vec<i32> = lane_panes.iter().map(|(partition, _)| *partition).collect();
            for (partition, panes) in lane_panes {
                self.pipeline.engine.put_partition_panes(partition, panes);
            }
            let encoded = self
                .pipeline
                .encode_checkpoint(&offsets, snapshot.alerts.as_ref(), &snapshot.outputs, join_store.as_deref())
                .map_err(|e| e.to_string());
            for partition in partitions {
                self.pipeline.engine.take_partition_panes(partition);
            }
            encoded
        });
        let bytes = match encoded {
            Ok(bytes) => bytes,
            Err(error) => {
                checkpoint_failed(&self.pipeline.telemetry, &error);
                return Ok(false);
            }
        };
        checkpoints.dirty = false;
        let job = CheckpointJob { bytes, positions: self.positions.clone(), started };
        match checkpoints.writer.submit(job) {
            None => Ok(true),
            Some(refused) => {
                self.checkpoint_written(refused);
                Ok(false)
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
                checkpoints.next_sequence += 1;
                let _ = self.consumer_commands.send(SourceCommand::Commit(outcome.positions));
                true
            }
            Err(error) => {
                checkpoints.dirty = true;
                checkpoint_failed(telemetry, &error);
                false
            }
        }
    }

    /// The consumer has stopped and everything it read is processed. Durable
    /// mode: the final checkpoint (open windows stay open for the next
    /// run), committed. Otherwise: every open window closed and written,
    /// then the final commit of every processed offset.
    fn shut_down(&mut self) -> Result<(), KafkaSourceError> {
        self.drain()?;
        if self.cluster.is_some() {
            // What was read goes out with the last publish; the windows
            // stay open at their mergers.
            return self.publish();
        }
        if self.checkpoints.is_some() {
            if let Some(outcome) = self.checkpoints.as_mut().and_then(|c| c.writer.wait()) {
                self.checkpoint_written(outcome);
            }
            let written = self.start_checkpoint()?
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
        self.hand_over(None, false)?;
        self.pipeline.finish(&mut self.stage)?;
        self.stage.wait_written()?;
        if let Some(dead_letters) = &mut self.dead_letters {
            dead_letters.barrier();
        }
        let _ = self.consumer_commands.send(SourceCommand::FinalCommit(self.positions.clone()));
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
