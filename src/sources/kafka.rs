//! The Kafka source: the consumer, a consumer-group member on a thread of
//! its own that polls the predictions and labels topics and emits what it
//! reads, as [`ConsumerEvent`]s over a bounded channel, to the daemon's loop
//! (`crate::daemon`), which owns the pipeline and decides everything else.
//! The consumer interprets nothing: micro-batches of raw payloads with their
//! partitions and offsets go out; offsets to store or commit and pauses
//! come back as [`SourceCommand`]s, applied between polls.
//!
//! Rebalances are served inside `poll`, on the consumer's thread, by
//! [`SourceContext`]. Each is sent to the loop as a [`RebalanceEvent`] and
//! the callback waits for the loop's reply before it completes:
//!
//! - a revocation reaches the loop after every batch the consumer sent before
//!   it (the channel is FIFO), so those batches are in window state; the
//!   loop ends the revoked predictions partitions in the engine and replies
//!   with the offsets to commit (durable: those of a checkpoint covering
//!   everything processed, taken then unless the last one does; otherwise
//!   those processed), which the callback commits before the partitions
//!   leave; the loop then forgets them, so this member never commits them
//!   again. Messages the consumer buffered but had not sent yet are
//!   dropped: the next owner reads them from the committed offset.
//! - an assignment is declared to the engine by the loop before any of the
//!   partitions' batches, and in durable mode the loop's reply says where
//!   the state ends for each partition it has; the callback positions them
//!   there, or at the group's committed offset when another instance read
//!   further since, and the starts it resolves for the others go back to
//!   the loop ([`RebalanceEvent::Started`]) ahead of their first batch.
//!
//! Once the consumer stops (shutdown), it detaches from the loop: the
//! revocation that leaving the group makes commits what the consumer was last
//! told, without waiting for anyone.
//!
//! Delivery: without a state dir, `enable.auto.offset.store=false`; the
//! loop has the offsets of each processed batch stored (after its dead
//! letters are delivered) and librdkafka's auto-commit commits them. With
//! one, offsets live in checkpoints and the loop has them committed after
//! each checkpoint is on disk. Consumer lag per partition comes from
//! librdkafka's statistics.
//!
//! Architecture invariant: this module, `notify`, `http` and `otlp` are the
//! only ones that talk to the network; it never interprets payloads itself.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, TopicPartitionList as Tpl};

use crate::cluster::record::{PartialsRecord, RecordBody};
use crate::config::{Config, KafkaConfig};
use crate::shutdown::Shutdown;
use crate::telemetry::Telemetry;

pub use super::dead_letters::{
    DLQ_CUT_BYTES, DLQ_DETAIL_HEADER, DLQ_ORIGINAL_BYTES_HEADER, DLQ_REASON_HEADER, DLQ_SOURCE_HEADER, producer_config,
};

/// Errors that stop the Kafka source (bad events never do).
#[derive(Debug, thiserror::Error)]
pub enum KafkaSourceError {
    #[error("creating the Kafka consumer: {0}")]
    Consumer(KafkaError),
    #[error("creating the dead-letter producer: {0}")]
    Producer(KafkaError),
    #[error("subscribing to {topics:?}: {source}")]
    Subscribe { topics: Vec<String>, source: KafkaError },
    #[error("writing window_metrics: {0}")]
    Output(#[from] std::io::Error),
    #[error("the config has no `kafka` section")]
    NotConfigured,
    #[error("starting a thread: {0}")]
    Thread(std::io::Error),
    #[error("starting the lanes: {0}")]
    Lanes(String),
    /// A lane thread ended without being asked to (it panicked: its join
    /// says why).
    #[error("lane {0} stopped")]
    LaneStopped(usize),
    #[error("cluster: {0}")]
    Partials(#[from] super::partials::PartialsError),
}

/// A partition: (topic, partition).
pub type PartitionKey = (String, i32);

/// Per partition, the next offset to read.
pub type Positions = BTreeMap<PartitionKey, i64>;

/// Which consumer thread a batch came from. There is one consumer today
/// ([`FIRST_CONSUMER`]); the events carry it so that several, each owning some
/// partitions, can feed the same loop.
pub type ConsumerId = u32;

/// The daemon's one consumer.
pub const FIRST_CONSUMER: ConsumerId = 0;

/// Which topic a message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stream {
    Predictions,
    Labels,
}

impl Stream {
    /// The configured topic of this stream.
    pub fn topic(self, kafka: &KafkaConfig) -> &str {
        match self {
            Stream::Predictions => &kafka.predictions_topic,
            Stream::Labels => &kafka.labels_topic,
        }
    }
}

/// One message of a [`SourceBatch`]: where it came from and where its
/// payload is in the batch's arena.
#[derive(Debug, Clone)]
pub struct RawMessage {
    pub stream: Stream,
    pub partition: i32,
    pub offset: i64,
    start: usize,
    end: usize,
}

/// A micro-batch a consumer read, closed at `pipeline.batch_size` messages,
/// after `pipeline.linger` or at [`MAX_BATCH_BYTES`]: raw payloads back to
/// back in one arena, and the messages ordered by (stream, partition) with
/// offsets ascending within each partition — the order the engine takes
/// them in (predictions before labels, each partition as a batch of its
/// own, so each keeps its own watermark).
///
/// A consumer with nothing to send sends an empty batch every [`POLL_WAIT`]:
/// `read_until` is what the loop's wall clock needs to tell a silent
/// partition from one whose events are still on their way.
#[derive(Debug)]
pub struct SourceBatch {
    pub consumer: ConsumerId,
    /// Everything the consumer read up to this instant is in this batch or an
    /// earlier one, and a broker answered then (the earlier of the two:
    /// silence counts only up to when a broker last answered, so an outage
    /// does not make partitions idle; with statistics turned off,
    /// `statistics.interval.ms: 0`, when the batch was sent).
    pub read_until: Instant,
    arena: Vec<u8>,
    messages: Vec<RawMessage>,
}

impl SourceBatch {
    /// The payload of `message` (one of this batch's).
    pub fn payload(&self, message: &RawMessage) -> &[u8] {
        &self.arena[message.start..message.end]
    }

    /// A batch of `messages` (stream, partition, offset, payload) as a
    /// consumer sends it: ordered by (stream, partition), each partition's
    /// in the order given. For benches and tests, which drive the loop's
    /// closer without a broker.
    pub fn from_messages<'a>(
        consumer: ConsumerId,
        read_until: Instant,
        messages: impl IntoIterator<Item = (Stream, i32, i64, &'a [u8])>,
    ) -> SourceBatch {
        let mut messages: Vec<(Stream, i32, i64, &[u8])> = messages.into_iter().collect();
        messages.sort_by_key(|(stream, partition, ..)| (*stream, *partition));
        let mut arena = Vec::with_capacity(messages.iter().map(|m| m.3.len()).sum());
        let messages = messages
            .into_iter()
            .map(|(stream, partition, offset, payload)| {
                let start = arena.len();
                arena.extend_from_slice(payload);
                RawMessage { stream, partition, offset, start, end: arena.len() }
            })
            .collect();
        SourceBatch { consumer, read_until, arena, messages }
    }

    /// Every message of the batch, in order.
    pub fn messages(&self) -> &[RawMessage] {
        &self.messages
    }

    /// The batch's messages, one run per (stream, partition), in order.
    pub fn partitions(&self) -> impl Iterator<Item = &[RawMessage]> {
        self.messages.chunk_by(|a, b| (a.stream, a.partition) == (b.stream, b.partition))
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    pub fn len(&self) -> usize {
        self.messages.len()
    }
}

/// A change of a consumer's partitions. `Assigned` and `Revoked` are sent from
/// inside `poll` and the consumer waits for their reply (see the module doc);
/// `Partitions` follows once the rebalance has settled.
#[derive(Debug)]
pub enum RebalanceEvent {
    /// `partitions` are being assigned to `consumer`. Reply: the positions the
    /// state has for them (where durable mode starts them).
    Assigned { consumer: ConsumerId, partitions: Vec<PartitionKey>, reply: SyncSender<Positions> },
    /// Durable mode: where the assigned partitions the state had no
    /// position for start, resolved by the consumer after `Assigned`. It comes
    /// before any of their batches, so every checkpoint from then on has
    /// them.
    Started { consumer: ConsumerId, starts: Positions },
    /// `cluster:`: the clocks newly assigned predictions partitions had at
    /// their start, per (model, partition), read back from the partials
    /// topic; sent before any of their batches.
    Clocks { consumer: ConsumerId, clocks: Vec<(String, i32, i64)> },
    /// `partitions` are being revoked from `consumer`. Reply: the offsets to
    /// commit for them before they leave.
    Revoked { consumer: ConsumerId, partitions: Vec<PartitionKey>, reply: SyncSender<Positions> },
    /// A rebalance settled — the `poll` that served an assignment (or a
    /// cooperative revocation) returned: `consumer` now holds these predictions
    /// partitions, which the engine's watermarks follow. Sent before any
    /// batch read after it. An eager rebalance (every partition revoked,
    /// then the new assignment after the group rejoined) is told once, with
    /// the new assignment: a partition revoked and assigned again never
    /// stops holding the watermark in between, as it did not when the
    /// single-threaded daemon served both in one turn.
    Partitions { consumer: ConsumerId, predictions: std::collections::BTreeSet<i32> },
}

/// What a consumer sends the loop, in the order it happens.
#[derive(Debug)]
pub enum ConsumerEvent {
    Batch(SourceBatch),
    Rebalance(RebalanceEvent),
    /// From the merge consumer (`cluster:`): see [`super::merge`].
    Merge(super::merge::MergeEvent),
    /// The consumer stopped reading (shutdown): every batch it read was sent
    /// before this. It then applies the commands still coming and leaves
    /// the group once the loop drops its command sender.
    Stopped {
        consumer: ConsumerId,
    },
}

/// What the loop has a consumer do, between two polls.
#[derive(Debug)]
pub enum SourceCommand {
    /// No state dir: offsets of processed events, stored for auto-commit.
    Store(Positions),
    /// Durable mode: a checkpoint with these offsets is on disk; those of
    /// partitions still assigned are committed (asynchronously), and they
    /// become what a revocation commits once the consumer is detached.
    Commit(Positions),
    /// Stop fetching (an output's retry buffer is full), again after every
    /// rebalance, until [`SourceCommand::Resume`].
    Pause,
    Resume,
    /// No state dir, at shutdown: these offsets (every event processed) are
    /// stored and committed synchronously, unless no broker is reachable.
    FinalCommit(Positions),
    /// `cluster:`: publish `records` to the partials topic (retrying until
    /// the broker has them all), then commit `offsets` synchronously, then
    /// publish `commits` (docs/ARCHITECTURE.md, "The order of a publish").
    /// What concerns a partition no longer assigned is dropped.
    Publish {
        records: Vec<PartialsRecord>,
        offsets: Positions,
        commits: Vec<PartialsRecord>,
    },
}

/// `cluster:`: what the consumer needs of the partials topic.
pub struct ClusterSource {
    pub partials: Arc<super::partials::PartialsTopic>,
    /// Every model's name (a partition's clock is read back per model).
    pub models: Vec<String>,
    /// This instance's name (its HTTP address, see
    /// [`super::members::instance_name`]): in every record it publishes,
    /// and the consumers' `client.id` unless `kafka.options` sets one (so
    /// broker logs and group tools name each member by it).
    pub instance: String,
}

/// Payload bytes a micro-batch holds at most (beyond one message): a batch
/// closes at `pipeline.batch_size` events, after `pipeline.linger`, or at
/// this many bytes, so a flood of big messages cannot grow the buffer
/// without bound.
pub const MAX_BATCH_BYTES: usize = 64 << 20;
const INITIAL_ARENA_BYTES: usize = 1 << 20;

/// How long one publish to the partials topic may wait for the broker.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);

/// How long resolving a newly assigned partition's start may take.
const START_QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a broker connection may stay silent before the broker counts
/// as unreachable (a healthy consumer hears from it every fetch wait,
/// 500 ms by default, and every heartbeat).
pub const BROKER_SILENCE: Duration = Duration::from_secs(10);

/// The longest a consumer waits in one `poll`: commands and the shutdown flag
/// are looked at at least this often, and an empty batch is sent this
/// often when nothing was read.
pub const POLL_WAIT: Duration = Duration::from_millis(100);

/// Consumer context: serves rebalances with the loop, positions assigned
/// partitions at the checkpoint (durable mode) and exports lag and
/// reachability.
pub struct SourceContext {
    id: ConsumerId,
    telemetry: Arc<Telemetry>,
    /// The loop, while the consumer is attached to it (until it stops).
    events: Mutex<Option<SyncSender<ConsumerEvent>>>,
    /// Partitions revoked since the consumer last dropped their buffered messages.
    revoked: Mutex<Vec<PartitionKey>>,
    assigned: Mutex<HashSet<PartitionKey>>,
    /// Durable mode: offsets live in checkpoints, not in Kafka.
    durable: bool,
    /// Durable mode: the offsets of the last checkpoint written (what a
    /// revocation commits once the consumer is detached from the loop).
    checkpointed: Mutex<Positions>,
    /// Durable mode: the state was restored past newer checkpoints that
    /// could not be read (then the group's committed offsets may be this
    /// instance's own, past the state: see `position_assigned`).
    fell_back: bool,
    /// `auto.offset.reset` is latest (`kafka.options`): where a partition
    /// with no committed offset starts (unless the state fell back).
    reset_to_latest: bool,
    /// When a broker last answered (from the statistics' `rxidle`; `None`
    /// before the first statistics): see [`SourceBatch::read_until`].
    last_answer: Mutex<Option<Instant>>,
    /// Counts the rebalances settled, so the consumer knows when to send
    /// [`RebalanceEvent::Partitions`].
    rebalances: std::sync::atomic::AtomicU64,
    /// `cluster:` (see [`ConsumerStart::cluster`]).
    cluster: Option<ClusterSource>,
    /// The predictions topic (whose partitions' clocks are read back).
    predictions_topic: String,
}

impl ClientContext for SourceContext {
    fn stats(&self, statistics: Statistics) {
        // A broker is reachable when librdkafka holds an "UP" connection to
        // one (bootstrap entries included, librdkafka's internal one not)
        // that has answered lately: a stopped broker keeps its socket open.
        let silence_us = BROKER_SILENCE.as_micros() as i64;
        let any_up = statistics
            .brokers
            .values()
            .any(|b| !b.name.ends_with("/internal") && b.state == "UP" && (0..silence_us).contains(&b.rxidle));
        self.set_reachable(any_up);
        let freshest = statistics
            .brokers
            .values()
            .filter(|b| !b.name.ends_with("/internal") && b.state == "UP" && b.rxidle >= 0)
            .map(|b| b.rxidle)
            .min();
        if let Some(rxidle) = freshest {
            let answered = Instant::now().checked_sub(Duration::from_micros(rxidle as u64));
            let mut last = self.last_answer.lock().expect("context lock");
            if let Some(answered) = answered
                && last.is_none_or(|l| l < answered)
            {
                *last = Some(answered);
            }
        }
        let assigned = self.assigned.lock().expect("context lock");
        for (topic_name, topic) in &statistics.topics {
            for (partition, stats) in &topic.partitions {
                if *partition < 0 || !assigned.contains(&(topic_name.clone(), *partition)) {
                    continue;
                }
                if stats.consumer_lag >= 0 {
                    self.telemetry.set_consumer_lag(topic_name, *partition, stats.consumer_lag);
                }
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if let Some(rdkafka::types::RDKafkaErrorCode::AllBrokersDown) = error.rdkafka_error_code() {
            self.set_reachable(false);
        }
        tracing::warn!(%error, reason, "librdkafka error");
    }
}

impl SourceContext {
    /// Whether a broker answered lately (`kafka_reachable`): commits to an
    /// unreachable one are skipped rather than waited for.
    fn broker_reachable(&self) -> bool {
        self.telemetry.readiness.kafka_reachable.load(Ordering::Relaxed)
    }

    /// Sends `event` (made with a reply sender) to the loop and waits for
    /// its reply; `None` once the consumer is detached or the loop is gone.
    fn ask_loop(&self, event: impl FnOnce(SyncSender<Positions>) -> RebalanceEvent) -> Option<Positions> {
        let events = self.events.lock().expect("context lock").clone()?;
        let (reply, answer) = sync_channel(1);
        events.send(ConsumerEvent::Rebalance(event(reply))).ok()?;
        answer.recv().ok()
    }

    /// Tells the loop something that needs no reply (while attached).
    fn tell_loop(&self, event: RebalanceEvent) {
        let events = self.events.lock().expect("context lock").clone();
        if let Some(events) = events {
            let _ = events.send(ConsumerEvent::Rebalance(event));
        }
    }

    /// Rebalance callbacks stop waiting for the loop (the consumer stopped).
    fn detach(&self) {
        self.events.lock().expect("context lock").take();
    }

    /// Durable mode: every assigned partition starts at an explicit offset.
    /// A partition the state has a position for (`known`, the loop's reply)
    /// starts where the state ends, unless the group committed a later
    /// offset for it: then another instance of the group read it since this
    /// state did (this state's own commits never pass its newest
    /// checkpoint, see `docs/DURABILITY.md`), and starting where the state
    /// ends would count those events twice. One the state lacks (the first
    /// run, a new partition, one moving over from another instance, one
    /// this instance handed over earlier) starts at its committed offset,
    /// or where `auto.offset.reset` says when none is committed. The starts
    /// that differ from `known` are returned, to go into the loop's
    /// positions (and so into every checkpoint) before any of their events
    /// is read.
    ///
    /// After a fall-back past newer checkpoints that could not be read, the
    /// group's committed offsets may be this instance's own, from a state
    /// that is gone: then a known partition starts where the restored state
    /// ends and an unknown one at its beginning (left to the committed
    /// offset, a run that fell back skipped the events only the damaged
    /// checkpoint had counted: a labels partition, slow to start against
    /// the test broker, lost its first ~3,000 labels so).
    fn position_assigned(
        &self,
        consumer: &BaseConsumer<Self>,
        partitions: &mut TopicPartitionList,
        known: &Positions,
    ) -> Positions {
        let keys: Vec<PartitionKey> =
            partitions.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect();
        let committed = if self.fell_back { Some(Positions::new()) } else { self.committed(consumer, &keys) };
        let Some(committed) = committed else {
            // The group's offsets are unknown: the partitions the state has
            // start where it ends; the others are left to librdkafka, which
            // starts them at the committed offset (never at the beginning
            // of a partition another instance has read).
            for key in keys {
                if let Some(&own) = known.get(&key)
                    && let Err(error) = partitions.set_partition_offset(&key.0, key.1, Offset::Offset(own))
                {
                    tracing::error!(%error, topic = %key.0, partition = key.1, "positioning a partition failed");
                }
            }
            return Positions::new();
        };
        let unknown: Vec<PartitionKey> =
            keys.iter().filter(|k| !known.contains_key(*k) && !committed.contains_key(*k)).cloned().collect();
        let mut starts = self.first_offsets(consumer, &unknown);
        for key in keys {
            let next = match (known.get(&key), committed.get(&key)) {
                (Some(&own), Some(&group)) if group > own => {
                    tracing::info!(
                        topic = %key.0, partition = key.1, checkpointed = own, committed = group,
                        "another instance read this partition past the checkpoint: starting it at the group's offset"
                    );
                    starts.insert(key.clone(), group);
                    group
                }
                (Some(&own), _) => own,
                (None, Some(&group)) => {
                    tracing::info!(topic = %key.0, partition = key.1, start = group, "partition not in the checkpoint: starting it at the group's offset");
                    starts.insert(key.clone(), group);
                    group
                }
                (None, None) => match starts.get(&key) {
                    Some(&first) => first,
                    // Unresolved: a state that fell back still must not
                    // start at a committed offset.
                    None if self.fell_back => {
                        if let Err(error) = partitions.set_partition_offset(&key.0, key.1, Offset::Beginning) {
                            tracing::error!(%error, topic = %key.0, partition = key.1, "positioning a partition failed");
                        }
                        continue;
                    }
                    None => continue,
                },
            };
            if let Err(error) = partitions.set_partition_offset(&key.0, key.1, Offset::Offset(next)) {
                tracing::error!(%error, topic = %key.0, partition = key.1, "positioning a partition failed");
            }
        }
        starts
    }

    /// The offsets the group has committed for `keys` (those it has);
    /// `None` when the query failed (logged).
    fn committed(&self, consumer: &BaseConsumer<Self>, keys: &[PartitionKey]) -> Option<Positions> {
        let mut committed = Positions::new();
        if keys.is_empty() {
            return Some(committed);
        }
        let mut query = Tpl::new();
        for (topic, partition) in keys {
            query.add_partition(topic, *partition);
        }
        match consumer.committed_offsets(query, START_QUERY_TIMEOUT) {
            Ok(answer) => {
                for element in answer.elements() {
                    if let (Ok(()), Offset::Offset(offset)) = (element.error(), element.offset())
                        && offset >= 0
                    {
                        committed.insert((element.topic().to_string(), element.partition()), offset);
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%error, "querying committed offsets failed; partitions start where the state ends, or where librdkafka finds the group's offset");
                return None;
            }
        }
        Some(committed)
    }

    /// Where partitions nobody committed an offset for start: their low
    /// watermark (with `auto.offset.reset: latest`, their high one; never
    /// after a fall-back). One whose watermarks cannot be read is logged
    /// (and positioned by the caller).
    fn first_offsets(&self, consumer: &BaseConsumer<Self>, keys: &[PartitionKey]) -> Positions {
        let mut starts = BTreeMap::new();
        for key in keys {
            match consumer.fetch_watermarks(&key.0, key.1, START_QUERY_TIMEOUT) {
                Ok((low, high)) => {
                    let start = if self.reset_to_latest && !self.fell_back { high } else { low };
                    tracing::info!(topic = %key.0, partition = key.1, start, "partition with no offset: starting it here");
                    starts.insert(key.clone(), start);
                }
                Err(error) => tracing::warn!(
                    %error, topic = %key.0, partition = key.1,
                    "resolving a partition's start failed; librdkafka positions it"
                ),
            }
        }
        starts
    }

    fn set_reachable(&self, reachable: bool) {
        let previous = self.telemetry.readiness.kafka_reachable.swap(reachable, Ordering::Relaxed);
        if previous != reachable {
            if reachable {
                tracing::info!("Kafka reachable");
            } else {
                tracing::warn!("Kafka unreachable; the daemon keeps running and reconnects");
            }
        }
    }

    /// An assignment: declared to the loop (which replies with the
    /// positions its state has), positioned there in durable mode, then
    /// the starts resolved for the others told to the loop.
    fn assign(&self, consumer: &BaseConsumer<Self>, partitions: &mut TopicPartitionList, cooperative: bool) {
        let keys: Vec<PartitionKey> =
            partitions.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect();
        let known = self
            .ask_loop(|reply| RebalanceEvent::Assigned { consumer: self.id, partitions: keys.clone(), reply })
            .unwrap_or_default();
        let starts = if self.durable { self.position_assigned(consumer, partitions, &known) } else { Positions::new() };
        let result = if cooperative { consumer.incremental_assign(partitions) } else { consumer.assign(partitions) };
        if let Err(error) = result {
            tracing::error!(%error, "assigning partitions failed");
        }
        {
            let mut assigned = self.assigned.lock().expect("context lock");
            assigned.extend(keys.iter().cloned());
            self.telemetry.assigned_partitions.store(assigned.len() as i64, Ordering::Relaxed);
        }
        tracing::info!(partitions = partitions.count(), "partitions assigned");
        let clocks = self.clocks_at_start(&keys, &known, &starts);
        if !starts.is_empty() {
            self.tell_loop(RebalanceEvent::Started { consumer: self.id, starts });
        }
        if !clocks.is_empty() {
            self.tell_loop(RebalanceEvent::Clocks { consumer: self.id, clocks });
        }
        self.rebalances.fetch_add(1, Ordering::SeqCst);
    }

    /// `cluster:`: the clock each model had in each newly assigned
    /// predictions partition at the offset it starts at, as the partition's
    /// last reader published it (none for a partition read for the first
    /// time, or whose start is left to librdkafka).
    fn clocks_at_start(&self, keys: &[PartitionKey], known: &Positions, starts: &Positions) -> Vec<(String, i32, i64)> {
        let Some(cluster) = &self.cluster else { return Vec::new() };
        let mut queries = Vec::new();
        for key in keys.iter().filter(|(topic, _)| *topic == self.predictions_topic) {
            let Some(&start) = starts.get(key).or_else(|| known.get(key)) else { continue };
            for model in &cluster.models {
                queries.push(super::partials::ClockQuery {
                    model: model.clone(),
                    topic: key.0.clone(),
                    partition: key.1,
                    offset: start,
                });
            }
        }
        if queries.is_empty() {
            return Vec::new();
        }
        match cluster.partials.clocks_at(&queries, START_QUERY_TIMEOUT) {
            Ok(clocks) => clocks
                .into_iter()
                .filter_map(|(query, clock)| clock.map(|clock| (query.model, query.partition, clock)))
                .collect(),
            Err(error) => {
                tracing::error!(%error, "reading partitions' clocks back failed: their first events are judged without them (the merger counts late what they should have been)");
                Vec::new()
            }
        }
    }

    /// A revocation: the loop processes what it was sent of these
    /// partitions and replies with the offsets to commit, committed here
    /// (synchronously) before they leave. Detached (leaving the group at
    /// shutdown), the consumer commits what it was last told: the last
    /// checkpoint's offsets, or the offsets stored.
    fn revoke(&self, consumer: &BaseConsumer<Self>, partitions: &TopicPartitionList, cooperative: bool) {
        let keys: Vec<PartitionKey> =
            partitions.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect();
        let from_loop =
            self.ask_loop(|reply| RebalanceEvent::Revoked { consumer: self.id, partitions: keys.clone(), reply });
        let offsets = match from_loop {
            Some(offsets) => Some(offsets),
            None if self.durable => {
                let checkpointed = self.checkpointed.lock().expect("context lock");
                Some(keys.iter().filter_map(|k| checkpointed.get(k).map(|next| (k.clone(), *next))).collect())
            }
            // Stored offsets cover exactly the events in window state.
            None => None,
        };
        if !self.broker_reachable() {
            // A synchronous commit would wait for a coordinator that is not
            // there (tens of seconds) and fail anyway.
            tracing::warn!("Kafka unreachable: offsets not committed on revocation");
        } else {
            let committed = match offsets {
                Some(offsets) if offsets.is_empty() => Ok(()),
                Some(offsets) => consumer.commit(&to_list(&offsets), CommitMode::Sync),
                None => consumer.commit_consumer_state(CommitMode::Sync),
            };
            match committed {
                Ok(()) | Err(KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => {}
                Err(error) => tracing::warn!(%error, "committing offsets on revocation failed"),
            }
        }
        {
            let mut revoked = self.revoked.lock().expect("context lock");
            let mut assigned = self.assigned.lock().expect("context lock");
            for key in keys {
                assigned.remove(&key);
                self.telemetry.remove_consumer_lag(&key.0, key.1);
                revoked.push(key);
            }
            self.telemetry.assigned_partitions.store(assigned.len() as i64, Ordering::Relaxed);
        }
        tracing::info!(partitions = partitions.count(), "partitions revoked");
        let result = if cooperative { consumer.incremental_unassign(partitions) } else { consumer.unassign() };
        if let Err(error) = result {
            tracing::error!(%error, "unassigning partitions failed");
        }
        // An eager revocation (every partition) is always followed by an
        // assignment once the group has rejoined, usually within a few ms
        // but in another `poll`: the engine's partitions follow then, so
        // that a partition this member keeps never stops holding the
        // watermark in between (when every partition stops, a model goes
        // quiet and its windows close). A cooperative revocation is final.
        if cooperative {
            self.rebalances.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// The predictions partitions assigned now.
    fn predictions_partitions(&self, kafka: &KafkaConfig) -> std::collections::BTreeSet<i32> {
        let assigned = self.assigned.lock().expect("context lock");
        assigned.iter().filter(|(topic, _)| *topic == kafka.predictions_topic).map(|(_, p)| *p).collect()
    }
}

impl ConsumerContext for SourceContext {
    /// As rdkafka's own, except that the loop is told of every change and
    /// waited for (see the module doc), and that in durable mode assigned
    /// partitions start where the checkpointed state ends, whatever Kafka
    /// has committed.
    fn rebalance(&self, consumer: &BaseConsumer<Self>, error: RDKafkaRespErr, partitions: &mut TopicPartitionList) {
        let cooperative = matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative);
        match error {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => self.assign(consumer, partitions, cooperative),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => self.revoke(consumer, partitions, cooperative),
            other => {
                tracing::error!(error = ?other, "rebalance error; unassigning");
                let _ = consumer.unassign();
            }
        }
    }
}

fn to_list(positions: &Positions) -> TopicPartitionList {
    let mut list = Tpl::new();
    for ((topic, partition), next) in positions {
        let _ = list.add_partition_offset(topic, *partition, Offset::Offset(*next));
    }
    list
}

/// librdkafka properties for the consumer: ours, then the user's
/// `kafka.options`, then the ones at-least-once delivery depends on.
pub fn consumer_config(kafka: &KafkaConfig, durable: bool) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &kafka.brokers)
        .set("group.id", &kafka.group_id)
        .set("auto.offset.reset", "earliest")
        .set("statistics.interval.ms", "1000")
        .set("enable.partition.eof", "false");
    for (key, value) in &kafka.options {
        config.set(key, value);
    }
    // Durable mode commits after each checkpoint itself.
    let auto_commit = if durable { "false" } else { "true" };
    for (key, value) in [("enable.auto.offset.store", "false"), ("enable.auto.commit", auto_commit)] {
        if kafka.options.get(key).is_some_and(|v| v != value) {
            tracing::warn!(key, "kafka.options.{key} is overridden: at-least-once delivery needs {value}");
        }
        config.set(key, value);
    }
    config
}

/// `cluster:`: names a consumer by the instance (its `client.id`), unless
/// `kafka.options` sets one.
pub fn name_client(config: &mut ClientConfig, kafka: &KafkaConfig, instance: &str) {
    if !kafka.options.contains_key("client.id") {
        config.set("client.id", instance);
    }
}

/// What the source did, for logs and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KafkaSummary {
    pub messages: u64,
    pub batches: u64,
    pub dropped_on_revoke: u64,
    pub dead_lettered: u64,
    /// Messages delivered again at an offset this assignment had already
    /// delivered (a broker fault): dropped, never counted twice.
    pub repeated: u64,
}

/// How a consumer starts: durable or not, and where a restored state ends.
pub struct ConsumerStart {
    /// Durable mode (a state dir).
    pub durable: bool,
    /// The state was restored past newer checkpoints that could not be read.
    pub fell_back: bool,
    /// The restored checkpoint's offsets (what a revocation commits until
    /// the next checkpoint, once detached).
    pub checkpointed: Positions,
    /// `cluster:`: partitions are positioned as in durable mode, only the
    /// predictions topic is read, newly assigned partitions' clocks are
    /// read back, and publishes come as [`SourceCommand::Publish`].
    pub cluster: Option<ClusterSource>,
}

/// A consumer-group member on a thread of its own: see the module doc.
pub struct KafkaConsumer {
    id: ConsumerId,
    consumer: BaseConsumer<SourceContext>,
    batch_size: usize,
    events: SyncSender<ConsumerEvent>,
    commands: Receiver<SourceCommand>,
    shutdown: Shutdown,
    /// Set when the loop ends (its drop guard): stop as at shutdown.
    stop: Arc<AtomicBool>,
    paused: bool,
    /// The rebalances served when the loop was last told the partitions.
    rebalances_told: u64,
    /// `cluster:`: the offsets its publishes last committed, per partition
    /// (an offset that did not move is not committed again).
    published_commits: Positions,
    reading: Reading,
}

/// What a consumer has read and not yet sent, and what it has counted.
struct Reading {
    kafka: KafkaConfig,
    linger: Duration,
    /// The micro-batch being filled: payloads back to back, the messages,
    /// and when it closes (`linger` after its first message).
    arena: Vec<u8>,
    messages: Vec<RawMessage>,
    deadline: Option<Instant>,
    /// Per partition of the current assignment: the offset after the last
    /// message delivered.
    expected: HashMap<(Stream, i32), i64>,
    /// When the last batch (possibly empty) was sent.
    last_sent: Instant,
    summary: KafkaSummary,
}

impl KafkaConsumer {
    /// Creates the consumer and subscribes it (errors here stop the daemon
    /// before any thread starts). Events go to `events`; commands come from
    /// `commands`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: &Config,
        id: ConsumerId,
        telemetry: Arc<Telemetry>,
        start: ConsumerStart,
        events: SyncSender<ConsumerEvent>,
        commands: Receiver<SourceCommand>,
        shutdown: Shutdown,
        stop: Arc<AtomicBool>,
    ) -> Result<KafkaConsumer, KafkaSourceError> {
        let kafka = config.kafka.as_ref().ok_or(KafkaSourceError::NotConfigured)?;
        let mut client = consumer_config(kafka, start.durable);
        if let Some(cluster) = &start.cluster {
            name_client(&mut client, kafka, &cluster.instance);
        }
        let context = SourceContext {
            id,
            telemetry,
            events: Mutex::new(Some(events.clone())),
            revoked: Mutex::new(Vec::new()),
            assigned: Mutex::new(HashSet::new()),
            durable: start.durable,
            checkpointed: Mutex::new(start.checkpointed),
            fell_back: start.fell_back,
            reset_to_latest: kafka
                .options
                .get("auto.offset.reset")
                .is_some_and(|v| matches!(v.as_str(), "latest" | "largest" | "end")),
            last_answer: Mutex::new(None),
            rebalances: std::sync::atomic::AtomicU64::new(0),
            cluster: start.cluster,
            predictions_topic: kafka.predictions_topic.clone(),
        };
        let consumer: BaseConsumer<SourceContext> =
            client.create_with_context(context).map_err(KafkaSourceError::Consumer)?;
        let topics: Vec<&str> = vec![kafka.predictions_topic.as_str(), kafka.labels_topic.as_str()];
        consumer.subscribe(&topics).map_err(|source| KafkaSourceError::Subscribe {
            topics: topics.iter().map(|t| t.to_string()).collect(),
            source,
        })?;
        tracing::info!(brokers = %kafka.brokers, group = %kafka.group_id, ?topics, durable = start.durable, "consuming");
        Ok(KafkaConsumer {
            id,
            consumer,
            batch_size: config.pipeline.batch_size.max(1),
            events,
            commands,
            shutdown,
            stop,
            paused: false,
            rebalances_told: 0,
            published_commits: Positions::new(),
            reading: Reading {
                kafka: kafka.clone(),
                linger: config.pipeline.linger,
                arena: Vec::with_capacity(INITIAL_ARENA_BYTES),
                messages: Vec::new(),
                deadline: None,
                expected: HashMap::new(),
                last_sent: Instant::now(),
                summary: KafkaSummary::default(),
            },
        })
    }

    /// Polls until shutdown (or until the loop is gone), sending batches
    /// and rebalances; then sends the batch in hand and
    /// [`ConsumerEvent::Stopped`], applies the commands still coming until the
    /// loop drops its sender, and leaves the group. Returns what it read.
    pub fn run(mut self) -> KafkaSummary {
        loop {
            while let Ok(command) = self.commands.try_recv() {
                self.apply(command);
            }
            if self.shutdown.is_triggered() || self.stop.load(Ordering::SeqCst) {
                break;
            }
            if self.paused {
                // Again each turn: partitions a rebalance assigned meanwhile
                // are paused too.
                self.pause_assignment();
            }
            let reading = &mut self.reading;
            let wait = reading.deadline.map_or(POLL_WAIT, |d| d.saturating_duration_since(Instant::now()));
            let polled = self.consumer.poll(wait.min(POLL_WAIT));
            // A rebalance is served inside `poll`: messages buffered before
            // it from revoked partitions are dropped (they are fetched again
            // from the processed position if the partition comes back). The
            // message this poll returned came after the rebalance, from the
            // current assignment, so it is kept. (Regression: dropping after
            // buffering lost it when the same poll revoked and re-assigned
            // its partition, while later messages moved the position past
            // it.)
            reading.drop_revoked(self.consumer.context());
            let context = self.consumer.context();
            let rebalances = context.rebalances.load(Ordering::SeqCst);
            if rebalances != self.rebalances_told {
                self.rebalances_told = rebalances;
                let predictions = context.predictions_partitions(&reading.kafka);
                let told = ConsumerEvent::Rebalance(RebalanceEvent::Partitions { consumer: self.id, predictions });
                if self.events.send(told).is_err() {
                    break;
                }
            }
            match polled {
                Some(Ok(message)) => reading.buffer(&message, self.consumer.context()),
                Some(Err(error)) => tracing::warn!(%error, "Kafka consumer error"),
                None => {}
            }
            let due = reading.deadline.is_some_and(|d| Instant::now() >= d);
            let full = reading.messages.len() >= self.batch_size || reading.arena.len() >= MAX_BATCH_BYTES;
            let quiet = reading.messages.is_empty() && reading.last_sent.elapsed() >= POLL_WAIT;
            if (full || due || quiet) && !self.send() {
                break;
            }
        }
        // Hand over the batch in hand, then say so; from here on rebalances
        // (leaving the group) no longer wait for the loop.
        self.reading.drop_revoked(self.consumer.context());
        if self.send() {
            let _ = self.events.send(ConsumerEvent::Stopped { consumer: self.id });
        }
        self.consumer.context().detach();
        while let Ok(command) = self.commands.recv() {
            self.apply(command);
        }
        self.consumer.unsubscribe();
        tracing::info!(messages = self.reading.summary.messages, "consumer stopped");
        close_consumer(self.consumer);
        self.reading.summary
    }

    /// Sends the batch being filled (empty when nothing was read) to the
    /// loop, waiting while the channel is full. Returns false when the loop
    /// is gone.
    fn send(&mut self) -> bool {
        let reading = &mut self.reading;
        reading.deadline = None;
        let mut messages = std::mem::take(&mut reading.messages);
        // Stable: offsets stay ascending within each partition.
        messages.sort_by_key(|m| (m.stream, m.partition));
        let arena = if messages.is_empty() {
            reading.arena.clear();
            Vec::new()
        } else {
            std::mem::replace(&mut reading.arena, Vec::with_capacity(INITIAL_ARENA_BYTES))
        };
        let now = Instant::now();
        let answered = *self.consumer.context().last_answer.lock().expect("context lock");
        let read_until = answered.map_or(now, |answered| answered.min(now));
        reading.last_sent = now;
        self.events.send(ConsumerEvent::Batch(SourceBatch { consumer: self.id, read_until, arena, messages })).is_ok()
    }

    /// `cluster:`: [`SourceCommand::Publish`]. Deltas and commits of
    /// partitions no longer assigned are dropped (published late, a delta
    /// would replace the next owner's stretches from the same offset). The
    /// records are published until the broker has them all (retried every
    /// second; the group's session is kept by librdkafka's own thread
    /// meanwhile), and only then is anything committed; a failed commit
    /// publishes no commit record (the next publish commits further).
    fn publish(&mut self, records: Vec<PartialsRecord>, offsets: Positions, commits: Vec<PartialsRecord>) {
        let Some(cluster) = &self.consumer.context().cluster else { return };
        let partials = cluster.partials.clone();
        let assigned = self.consumer.context().assigned.lock().expect("context lock").clone();
        let held = |record: &PartialsRecord| match &record.body {
            RecordBody::Delta(d) => assigned.contains(&(d.topic.clone(), d.partition)),
            RecordBody::Commit(c) => assigned.contains(&(c.topic.clone(), c.partition)),
            RecordBody::Mark(_) => true,
        };
        let records: Vec<PartialsRecord> = records.into_iter().filter(held).collect();
        let commits: Vec<PartialsRecord> = commits.into_iter().filter(held).collect();
        let offsets: Positions = offsets.into_iter().filter(|(key, _)| assigned.contains(key)).collect();
        let telemetry = &self.consumer.context().telemetry;
        loop {
            match partials.publish(&records, PUBLISH_TIMEOUT) {
                Ok(bytes) => {
                    telemetry.partials_published.fetch_add(records.len() as u64, Ordering::Relaxed);
                    telemetry.partials_published_bytes.fetch_add(bytes, Ordering::Relaxed);
                    break;
                }
                Err(error) => tracing::error!(%error, "publishing to the partials topic failed; retrying"),
            }
            if self.shutdown.is_triggered() || self.stop.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        if offsets.is_empty() {
            return;
        }
        // Only offsets that moved: a commit a second for nothing kept Tansu
        // 0.6 from letting a second member join the group.
        let moved: Positions =
            offsets.into_iter().filter(|(key, next)| self.published_commits.get(key) != Some(next)).collect();
        let committed =
            if moved.is_empty() { Ok(()) } else { self.consumer.commit(&to_list(&moved), CommitMode::Sync) };
        if let Err(error) = committed {
            tracing::warn!(%error, "committing published offsets failed (the next publish commits further)");
            return;
        }
        self.published_commits.extend(moved);
        match partials.publish(&commits, PUBLISH_TIMEOUT) {
            Ok(bytes) => {
                let telemetry = &self.consumer.context().telemetry;
                telemetry.partials_published.fetch_add(commits.len() as u64, Ordering::Relaxed);
                telemetry.partials_published_bytes.fetch_add(bytes, Ordering::Relaxed);
            }
            Err(error) => {
                tracing::warn!(%error, "publishing commit records failed (the next publish's make them final)")
            }
        }
    }

    fn pause_assignment(&self) {
        if let Ok(assignment) = self.consumer.assignment()
            && let Err(error) = self.consumer.pause(&assignment)
        {
            tracing::warn!(%error, "pausing partitions failed");
        }
    }

    fn apply(&mut self, command: SourceCommand) {
        match command {
            SourceCommand::Store(positions) => {
                // Partitions revoked meanwhile are no longer ours to store.
                let assigned = self.consumer.context().assigned.lock().expect("context lock").clone();
                let positions: Positions = positions.into_iter().filter(|(key, _)| assigned.contains(key)).collect();
                if !positions.is_empty()
                    && let Err(error) = self.consumer.store_offsets(&to_list(&positions))
                {
                    tracing::warn!(%error, "storing offsets failed (partition revoked meanwhile?)");
                }
            }
            SourceCommand::Commit(positions) => {
                // Only partitions this member holds: one handed over since
                // the checkpoint is its next owner's to commit.
                let assigned = self.consumer.context().assigned.lock().expect("context lock").clone();
                let owned: Positions =
                    positions.iter().filter(|(key, _)| assigned.contains(*key)).map(|(k, v)| (k.clone(), *v)).collect();
                if !owned.is_empty()
                    && let Err(error) = self.consumer.commit(&to_list(&owned), CommitMode::Async)
                {
                    tracing::warn!(%error, "committing checkpointed offsets failed (the checkpoint holds them)");
                }
                *self.consumer.context().checkpointed.lock().expect("context lock") = positions;
            }
            SourceCommand::Pause => {
                self.paused = true;
                self.pause_assignment();
            }
            SourceCommand::Resume => {
                self.paused = false;
                if let Ok(assignment) = self.consumer.assignment()
                    && let Err(error) = self.consumer.resume(&assignment)
                {
                    tracing::warn!(%error, "resuming partitions failed");
                }
            }
            SourceCommand::Publish { records, offsets, commits } => self.publish(records, offsets, commits),
            SourceCommand::FinalCommit(positions) => {
                self.apply(SourceCommand::Store(positions));
                if !self.consumer.context().broker_reachable() {
                    tracing::warn!(
                        "Kafka unreachable: the final commit is skipped; the next run reads again from the last committed offsets"
                    );
                    return;
                }
                match self.consumer.commit_consumer_state(CommitMode::Sync) {
                    Ok(()) | Err(KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => {}
                    Err(error) => tracing::warn!(%error, "final commit failed"),
                }
            }
        }
    }
}

impl Reading {
    /// Adds a polled message to the batch being filled, unless the broker
    /// delivered its offset already.
    fn buffer(&mut self, message: &rdkafka::message::BorrowedMessage<'_>, context: &SourceContext) {
        let stream = if message.topic() == self.kafka.predictions_topic { Stream::Predictions } else { Stream::Labels };
        // Offsets only move forward within an assignment: a message at an
        // offset already delivered is a broker's repeat (seen with Tansu
        // 0.6) and would be counted twice.
        let next = self.expected.entry((stream, message.partition())).or_insert(message.offset());
        if message.offset() < *next {
            self.summary.repeated += 1;
            tracing::warn!(
                topic = message.topic(),
                partition = message.partition(),
                offset = message.offset(),
                expected = *next,
                "the broker delivered an offset again; dropped"
            );
            return;
        }
        *next = message.offset() + 1;
        let payload = message.payload().unwrap_or(&[]);
        let start = self.arena.len();
        self.arena.extend_from_slice(payload);
        self.messages.push(RawMessage {
            stream,
            partition: message.partition(),
            offset: message.offset(),
            start,
            end: self.arena.len(),
        });
        self.summary.messages += 1;
        if self.summary.messages == 1 {
            context.set_reachable(true);
        }
        let linger = self.linger;
        self.deadline.get_or_insert_with(|| Instant::now() + linger);
    }

    /// Drops buffered messages of partitions revoked since the last call,
    /// and forgets their next expected offsets.
    fn drop_revoked(&mut self, context: &SourceContext) {
        let revoked: Vec<PartitionKey> = std::mem::take(&mut *context.revoked.lock().expect("context lock"));
        if revoked.is_empty() {
            return;
        }
        let kafka = &self.kafka;
        let is_revoked =
            |stream: Stream, partition: i32| revoked.iter().any(|(t, p)| t == stream.topic(kafka) && *p == partition);
        self.expected.retain(|(stream, partition), _| !is_revoked(*stream, *partition));
        let before = self.messages.len();
        self.messages.retain(|m| !is_revoked(m.stream, m.partition));
        self.summary.dropped_on_revoke += (before - self.messages.len()) as u64;
        if self.messages.is_empty() {
            self.arena.clear();
            self.deadline = None;
        }
    }
}

/// How long shutdown waits to leave the consumer group when no broker is
/// reachable.
const UNREACHABLE_CLOSE_WAIT: Duration = Duration::from_secs(2);
/// How long shutdown waits to leave the consumer group with a broker
/// reachable (it answers in milliseconds; a commit on revocation may take
/// longer).
const REACHABLE_CLOSE_WAIT: Duration = Duration::from_secs(10);

/// Leaves the consumer group and closes the consumer. With no broker
/// reachable, leaving would wait up to `session.timeout.ms` (45 s by
/// default) for a coordinator that is not there, past the shutdown timeout:
/// so the wait is bounded, [`UNREACHABLE_CLOSE_WAIT`] while no broker is
/// reachable (judged at every poll: the broker may go away during the
/// close) and [`REACHABLE_CLOSE_WAIT`] while one is; past it the consumer
/// is abandoned to the process's exit (the group expires the membership).
fn close_consumer(consumer: BaseConsumer<SourceContext>) {
    if consumer.close_queue().is_ok() {
        let started = Instant::now();
        while !consumer.closed() {
            let wait =
                if consumer.context().broker_reachable() { REACHABLE_CLOSE_WAIT } else { UNREACHABLE_CLOSE_WAIT };
            if started.elapsed() >= wait {
                break;
            }
            consumer.poll(Duration::from_millis(100));
        }
    }
    if consumer.closed() {
        // Left the group: dropping it only destroys the client.
        drop(consumer);
        return;
    }
    tracing::warn!("Kafka unreachable: not waiting to leave the consumer group; the broker expires the membership");
    std::mem::forget(consumer);
}

/// Where a message came from, as dead letters and logs name it:
/// `topic/partition@offset`.
pub struct Location<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

impl fmt::Display for Location<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}@{}", self.topic, self.partition, self.offset)
    }
}
