//! The Kafka source: a consumer group over the predictions and labels
//! topics, feeding the pipeline in micro-batches, at least once.
//!
//! Delivery: `enable.auto.offset.store=false`; after a micro-batch has gone
//! through the engine (its events are in window state) the batch's offsets
//! are stored, and librdkafka's auto-commit commits stored offsets. On a
//! revocation the stored offsets are committed synchronously inside the
//! rebalance callback and buffered, unprocessed messages of the revoked
//! partitions are dropped: the next owner reads them from the committed
//! offset, so nothing is lost and nothing is counted twice. Invalid events
//! go to the optional dead-letter topic with the reason in headers.
//! Consumer lag per partition comes from librdkafka's statistics.
//!
//! Architecture invariant: this module and `notify` are the only ones that
//! talk to the network; it never interprets payloads itself.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, RebalanceProtocol};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, TopicPartitionList as Tpl};

use crate::config::{Config, KafkaConfig};
use crate::decode::Invalid;
use crate::output::WindowSink;
use crate::pipeline::Pipeline;
use crate::shutdown::Shutdown;
use crate::telemetry::Telemetry;

/// Header naming why an event was dead-lettered.
pub const DLQ_REASON_HEADER: &str = "driftwatch-error-reason";
/// Header with the human-readable detail.
pub const DLQ_DETAIL_HEADER: &str = "driftwatch-error-detail";
/// Header with `topic/partition@offset` of the original message.
pub const DLQ_SOURCE_HEADER: &str = "driftwatch-source";

/// Header on a dead letter whose payload was cut because the broker refused
/// it whole: the size of the original payload.
pub const DLQ_ORIGINAL_BYTES_HEADER: &str = "driftwatch-original-bytes";
/// What is kept of a dead letter the broker refused as too large.
pub const DLQ_CUT_BYTES: usize = 64 << 10;

/// The dead-letter producer.
type DeadLetterProducer = BaseProducer<DeadLetterContext>;

/// A dead letter the broker refused as too large, cut short.
struct RefusedDeadLetter {
    payload: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
    original_bytes: usize,
}

/// The dead-letter producer's delivery reports: a letter the broker refused
/// as too large is kept (cut short) to be sent again; any other failure is
/// counted (`driftwatch_dead_letters_failed_total`) and logged.
#[derive(Default)]
pub struct DeadLetterContext {
    refused: Mutex<Vec<RefusedDeadLetter>>,
    failed: std::sync::atomic::AtomicU64,
}

impl DeadLetterContext {
    /// Keeps the first [`DLQ_CUT_BYTES`] of a refused dead letter and all
    /// its headers, to be sent again by `resend_refused_dead_letters`.
    fn keep_cut<H: Headers>(&self, payload: &[u8], headers: Option<&H>) {
        let headers = headers
            .map(|h| h.iter().map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec())).collect())
            .unwrap_or_default();
        let cut = RefusedDeadLetter {
            payload: payload[..DLQ_CUT_BYTES.min(payload.len())].to_vec(),
            headers,
            original_bytes: payload.len(),
        };
        self.refused.lock().expect("dead-letter lock").push(cut);
    }
}

impl ClientContext for DeadLetterContext {}

impl rdkafka::producer::ProducerContext for DeadLetterContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &rdkafka::producer::DeliveryResult<'_>, _: ()) {
        let Err((error, message)) = result else { return };
        let too_large =
            matches!(error, KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::MessageSizeTooLarge));
        let payload = message.payload().unwrap_or_default();
        if too_large && payload.len() > DLQ_CUT_BYTES {
            self.keep_cut(payload, message.headers());
            return;
        }
        self.failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::error!(%error, "a dead letter could not be delivered");
    }
}

/// How often the consumer logs a one-line summary of what it has done.
pub const STATS_LOG_INTERVAL: Duration = Duration::from_secs(30);

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
}

/// A partition: (topic, partition).
type PartitionKey = (String, i32);

/// Consumer context: commits on revocation, positions assigned partitions
/// at the checkpoint (durable mode) and exports lag and reachability.
pub struct SourceContext {
    telemetry: Arc<Telemetry>,
    revoked: Mutex<Vec<PartitionKey>>,
    assigned: Mutex<HashSet<PartitionKey>>,
    /// Durable mode: offsets live in checkpoints, not in Kafka.
    durable: bool,
    /// Durable mode: the next offset per partition that the pipeline's
    /// state covers (from the checkpoint at start, then advanced per batch).
    positions: Mutex<BTreeMap<PartitionKey, i64>>,
    /// Durable mode: `positions` as of the last checkpoint written.
    checkpointed: Mutex<BTreeMap<PartitionKey, i64>>,
    /// Durable mode: the state was restored from a checkpoint (then a
    /// partition missing from `positions` starts at its beginning, not at
    /// Kafka's committed offset).
    restored: bool,
    /// `auto.offset.reset` is latest (`kafka.options`): where a partition
    /// with no committed offset starts (when the state was not restored).
    reset_to_latest: bool,
    /// When a broker last answered (from the statistics' `rxidle`; `None`
    /// before the first statistics): silence counts as idleness only up to
    /// then, so a broker outage does not make partitions idle.
    last_answer: Mutex<Option<Instant>>,
}

/// How long resolving a newly assigned partition's start may take.
const START_QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a broker connection may stay silent before the broker counts
/// as unreachable (a healthy consumer hears from it every fetch wait,
/// 500 ms by default, and every heartbeat).
pub const BROKER_SILENCE: Duration = Duration::from_secs(10);

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
        self.telemetry.readiness.kafka_reachable.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Durable mode: every assigned partition starts at an explicit offset,
    /// which goes into `positions` (and so into every checkpoint) at once,
    /// before any of its events is read. A partition the checkpoint has
    /// starts where the checkpointed state ends. One it lacks (never read
    /// into this state: the first run, a new partition, one moving over
    /// from another instance) starts at its committed offset, or where
    /// `auto.offset.reset` says when none is committed, resolved here.
    ///
    /// Left to librdkafka, such a partition started wherever Kafka's
    /// committed offset said each run and was absent from the checkpoints
    /// until its first event was processed. A run that fell back past a
    /// damaged checkpoint then read it from the offset that checkpoint had
    /// committed, skipping the events only the damaged checkpoint counted
    /// (a labels partition, slow to start against the test broker, lost
    /// its first ~3,000 labels so).
    fn position_assigned(&self, consumer: &BaseConsumer<Self>, partitions: &mut TopicPartitionList) {
        let keys: Vec<PartitionKey> =
            partitions.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect();
        let unknown: Vec<PartitionKey> = {
            let positions = self.positions.lock().expect("context lock");
            keys.iter().filter(|k| !positions.contains_key(*k)).cloned().collect()
        };
        let starts = self.resolve_starts(consumer, &unknown);
        let mut positions = self.positions.lock().expect("context lock");
        for key in keys {
            let next = match positions.get(&key) {
                Some(next) => *next,
                None => match starts.get(&key) {
                    Some(start) => {
                        positions.insert(key.clone(), *start);
                        *start
                    }
                    // Unresolved: a restored state still must not start
                    // at a committed offset (see `resolve_starts`).
                    None if self.restored => {
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
    }

    /// The start offsets of partitions this state has never read. A state
    /// restored from a checkpoint starts them at their beginning (the low
    /// watermark): the offset Kafka has committed may come from a newer
    /// checkpoint that turned out unusable, and starting there would skip
    /// events the state never counted. A state that starts empty takes the
    /// group's committed offset, else the low (or, with
    /// `auto.offset.reset: latest`, high) watermark. A partition whose
    /// start cannot be resolved is logged (and positioned by the caller).
    fn resolve_starts(&self, consumer: &BaseConsumer<Self>, keys: &[PartitionKey]) -> BTreeMap<PartitionKey, i64> {
        let mut starts = BTreeMap::new();
        if keys.is_empty() {
            return starts;
        }
        let mut query = Tpl::new();
        for (topic, partition) in keys {
            query.add_partition(topic, *partition);
        }
        let committed = if self.restored {
            query
        } else {
            match consumer.committed_offsets(query, START_QUERY_TIMEOUT) {
                Ok(committed) => committed,
                Err(error) => {
                    tracing::warn!(%error, "querying committed offsets failed; librdkafka positions the new partitions");
                    return starts;
                }
            }
        };
        for element in committed.elements() {
            let key = (element.topic().to_string(), element.partition());
            let start = match (self.restored, element.error(), element.offset()) {
                (false, Ok(()), Offset::Offset(committed)) if committed >= 0 => Ok(committed),
                _ => consumer
                    .fetch_watermarks(&key.0, key.1, START_QUERY_TIMEOUT)
                    .map(|(low, high)| if self.reset_to_latest && !self.restored { high } else { low }),
            };
            match start {
                Ok(start) => {
                    tracing::info!(topic = %key.0, partition = key.1, start, "partition not in the checkpoint: starting it here");
                    starts.insert(key, start);
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
        let previous = self.telemetry.readiness.kafka_reachable.swap(reachable, std::sync::atomic::Ordering::Relaxed);
        if previous != reachable {
            if reachable {
                tracing::info!("Kafka reachable");
            } else {
                tracing::warn!("Kafka unreachable; the daemon keeps running and reconnects");
            }
        }
    }
}

impl ConsumerContext for SourceContext {
    /// As rdkafka's own, except that in durable mode assigned partitions
    /// start where the checkpointed state ends, whatever Kafka has committed
    /// (and ones it lacks at a start recorded at once: `position_assigned`).
    fn rebalance(&self, consumer: &BaseConsumer<Self>, error: RDKafkaRespErr, partitions: &mut TopicPartitionList) {
        let cooperative = matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative);
        match error {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                if self.durable {
                    self.position_assigned(consumer, partitions);
                }
                let result =
                    if cooperative { consumer.incremental_assign(partitions) } else { consumer.assign(partitions) };
                if let Err(error) = result {
                    tracing::error!(%error, "assigning partitions failed");
                }
                self.post_rebalance(consumer, &Rebalance::Assign(partitions));
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.pre_rebalance(consumer, &Rebalance::Revoke(partitions));
                let result = if cooperative { consumer.incremental_unassign(partitions) } else { consumer.unassign() };
                if let Err(error) = result {
                    tracing::error!(%error, "unassigning partitions failed");
                }
            }
            other => {
                tracing::error!(error = ?other, "rebalance error; unassigning");
                let _ = consumer.unassign();
            }
        }
    }

    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(partitions) = rebalance else { return };
        if !self.broker_reachable() {
            // A synchronous commit would wait for a coordinator that is not
            // there (tens of seconds) and fail anyway.
            tracing::warn!("Kafka unreachable: offsets not committed on revocation");
        } else if self.durable {
            // The next owner starts from the last checkpoint's offsets.
            let checkpointed = self.checkpointed.lock().expect("context lock").clone();
            let mut offsets = Tpl::new();
            for element in partitions.elements() {
                if let Some(next) = checkpointed.get(&(element.topic().to_string(), element.partition())) {
                    let _ = offsets.add_partition_offset(element.topic(), element.partition(), Offset::Offset(*next));
                }
            }
            if offsets.count() > 0
                && let Err(error) = consumer.commit(&offsets, CommitMode::Sync)
            {
                tracing::warn!(%error, "committing checkpointed offsets on revocation failed");
            }
        } else {
            // Offsets stored so far cover exactly the events in window state.
            match consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) | Err(KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => {}
                Err(error) => tracing::warn!(%error, "committing offsets on revocation failed"),
            }
        }
        let mut revoked = self.revoked.lock().expect("context lock");
        let mut assigned = self.assigned.lock().expect("context lock");
        for element in partitions.elements() {
            let key = (element.topic().to_string(), element.partition());
            assigned.remove(&key);
            self.telemetry.remove_consumer_lag(&key.0, key.1);
            revoked.push(key);
        }
        self.telemetry.assigned_partitions.store(assigned.len() as i64, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(partitions = partitions.count(), "partitions revoked");
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(partitions) = rebalance {
            let mut assigned = self.assigned.lock().expect("context lock");
            for element in partitions.elements() {
                assigned.insert((element.topic().to_string(), element.partition()));
            }
            self.telemetry.assigned_partitions.store(assigned.len() as i64, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(partitions = partitions.count(), "partitions assigned");
        }
    }
}

/// Durable mode: the pipeline's state is checkpointed into `state.dir`
/// every `interval`, with the offsets it covers; Kafka commits follow each
/// checkpoint (for lag tooling), and partitions are assigned at the
/// checkpoint's offsets, so a restart neither loses nor recounts events.
pub struct Durability {
    pub store: crate::checkpoint::CheckpointStore,
    pub interval: Duration,
    last_attempt: Instant,
    /// Events processed, or alert state changed, since the last checkpoint.
    dirty: bool,
    /// Offsets the restored state covers (topic → partition → next).
    resume: crate::checkpoint::Offsets,
    /// The state was restored from a checkpoint.
    restored: bool,
}

impl Durability {
    pub fn new(
        store: crate::checkpoint::CheckpointStore,
        interval: Duration,
        resume: crate::checkpoint::Offsets,
    ) -> Self {
        Durability { store, interval, last_attempt: Instant::now(), dirty: false, resume, restored: false }
    }

    /// The state was restored from a checkpoint: partitions it has no
    /// offset for start at their beginning.
    pub fn restored(mut self) -> Self {
        self.restored = true;
        self
    }
}

/// Whether each model's labels are live: a model's labels hold its
/// performance rows and pending joins (see
/// [`crate::engine::Engine::set_labels_holding`]) until they have been
/// silent for `windows.idle_timeout` (counted from the start of the run
/// when none came yet; time paused by backpressure does not count). So when this process reads predictions ahead of
/// labels (its labels partitions are still with a dead group member, or
/// their backlog is read later), no window's performance is finalised
/// before its labels are read; when a model's labels stop, its
/// performance rows follow the predictions' watermark again.
struct LabelActivity {
    idle_timeout: Duration,
    /// Per model: labels seen, and when that count last changed.
    last: Vec<(u64, Instant)>,
    /// When the hold was last updated (at most every [`Self::EVERY`]).
    updated: Option<Instant>,
}

impl LabelActivity {
    fn new(idle_timeout: Duration, pipeline: &Pipeline) -> Self {
        let now = Instant::now();
        LabelActivity { idle_timeout, last: pipeline.labels_seen().iter().map(|&n| (n, now)).collect(), updated: None }
    }

    const EVERY: Duration = Duration::from_millis(100);

    /// Updates each model's hold from the labels seen since the last
    /// update; returns whether a hold was released (state changed). While
    /// consumption is `paused` (backpressure) nothing is read, which is not
    /// silence: no model's labels go idle then. (Consumer lag cannot tell
    /// either: one labels topic serves every model, and a busy one always
    /// has some, so a model without labels would never be released.)
    fn update(
        &mut self,
        pipeline: &mut Pipeline,
        sink: &mut dyn WindowSink,
        paused: bool,
    ) -> Result<bool, KafkaSourceError> {
        let now = Instant::now();
        if self.updated.is_some_and(|t| now.duration_since(t) < Self::EVERY) {
            return Ok(false);
        }
        self.updated = Some(now);
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

/// Gives the engine the wall clock at most every 100 ms (see
/// [`crate::engine::Engine::advance_clock`]): partitions silent for
/// `windows.idle_timeout` stop holding the others' watermark, models whose
/// traffic stopped close their windows, and event times beyond the host
/// clock no longer move a watermark. Silence counts only while reading:
/// not while consumption is paused (backpressure), and only up to when a
/// broker last answered (an outage is not silence; with statistics turned
/// off, `statistics.interval.ms: 0`, up to now). The clock runs
/// `pipeline.clock_speedup` times faster from the start (the demo's).
struct WallClock {
    ticked: Option<Instant>,
    started: Instant,
    started_ms: i64,
    speedup: i64,
}

impl WallClock {
    fn new(speedup: u32) -> Self {
        WallClock {
            ticked: None,
            started: Instant::now(),
            started_ms: chrono::Utc::now().timestamp_millis(),
            speedup: i64::from(speedup.max(1)),
        }
    }

    /// The clock at `instant` (not before the start), in ms.
    fn at(&self, instant: Instant) -> i64 {
        let elapsed = i64::try_from(instant.saturating_duration_since(self.started).as_millis()).unwrap_or(i64::MAX);
        self.started_ms.saturating_add(elapsed.saturating_mul(self.speedup))
    }

    /// Ticks when due; returns whether rows were written.
    fn tick(
        &mut self,
        consumer: &BaseConsumer<SourceContext>,
        pipeline: &mut Pipeline,
        sink: &mut dyn WindowSink,
        paused: bool,
    ) -> Result<bool, KafkaSourceError> {
        let now = Instant::now();
        if self.ticked.is_some_and(|t| now.duration_since(t) < LabelActivity::EVERY) {
            return Ok(false);
        }
        self.ticked = Some(now);
        let now_ms = self.at(now);
        let last_answer = *consumer.context().last_answer.lock().expect("context lock");
        let read_until_ms = match (paused, last_answer) {
            (true, _) => None,
            (false, Some(answered)) => Some(self.at(answered)),
            (false, None) => Some(now_ms),
        };
        let written = pipeline.advance_clock(now_ms, read_until_ms, sink)?;
        Ok(written > 0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Stream {
    Predictions,
    Labels,
}

/// Payload bytes a micro-batch holds at most (beyond one message): a batch
/// closes at `pipeline.batch_size` events, after `pipeline.linger`, or at
/// this many bytes, so a flood of big messages cannot grow the buffer
/// without bound.
pub const MAX_BATCH_BYTES: usize = 64 << 20;
const INITIAL_ARENA_BYTES: usize = 1 << 20;

/// One buffered message: where it came from and its bytes in the arena.
struct Buffered {
    stream: Stream,
    partition: i32,
    offset: i64,
    start: usize,
    end: usize,
}

struct Location<'a> {
    topic: &'a str,
    partition: i32,
    offset: i64,
}

impl fmt::Display for Location<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}@{}", self.topic, self.partition, self.offset)
    }
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

/// librdkafka properties for the dead-letter producer.
pub fn producer_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &kafka.brokers);
    for (key, value) in &kafka.options {
        // Consumer-only properties would make the producer complain.
        if key.starts_with("group.") || key.starts_with("auto.") || key.starts_with("enable.auto") {
            continue;
        }
        config.set(key, value);
    }
    config.set("enable.idempotence", "true").set("acks", "all");
    // librdkafka's own limit (1 MB) would refuse big invalid messages before
    // the broker sees them; let the broker decide (a refused one is sent
    // again cut short, see `resend_refused_dead_letters`).
    if !kafka.options.contains_key("message.max.bytes") {
        config.set("message.max.bytes", "1000000000");
    }
    config
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

/// Consumes until `shutdown` is triggered, then drains the batch in hand.
/// Durable mode (`durability`): checkpoints every interval and once more at
/// shutdown, leaving open windows open for the next run. Otherwise closes
/// every open window into `sink` and commits.
pub fn run_kafka(
    config: &Config,
    pipeline: &mut Pipeline,
    sink: &mut dyn WindowSink,
    shutdown: &Shutdown,
    mut durability: Option<&mut Durability>,
) -> Result<KafkaSummary, KafkaSourceError> {
    let kafka = config.kafka.as_ref().ok_or(KafkaSourceError::NotConfigured)?;
    let mut positions = BTreeMap::new();
    if let Some(durability) = &durability {
        for (topic, partitions) in &durability.resume {
            for (partition, next) in partitions {
                positions.insert((topic.clone(), *partition), *next);
            }
        }
    }
    let context = SourceContext {
        telemetry: pipeline.telemetry.clone(),
        revoked: Mutex::new(Vec::new()),
        assigned: Mutex::new(HashSet::new()),
        durable: durability.is_some(),
        restored: durability.as_ref().is_some_and(|d| d.restored),
        checkpointed: Mutex::new(positions.clone()),
        positions: Mutex::new(positions),
        reset_to_latest: kafka
            .options
            .get("auto.offset.reset")
            .is_some_and(|v| matches!(v.as_str(), "latest" | "largest" | "end")),
        last_answer: Mutex::new(None),
    };
    let consumer: BaseConsumer<SourceContext> = consumer_config(kafka, durability.is_some())
        .create_with_context(context)
        .map_err(KafkaSourceError::Consumer)?;
    let topics = [kafka.predictions_topic.as_str(), kafka.labels_topic.as_str()];
    consumer.subscribe(&topics).map_err(|source| KafkaSourceError::Subscribe {
        topics: topics.iter().map(|t| t.to_string()).collect(),
        source,
    })?;
    let producer: Option<DeadLetterProducer> = match &kafka.dead_letter_topic {
        Some(_) => Some(
            producer_config(kafka)
                .create_with_context(DeadLetterContext::default())
                .map_err(KafkaSourceError::Producer)?,
        ),
        None => None,
    };
    tracing::info!(brokers = %kafka.brokers, group = %kafka.group_id, ?topics, durable = durability.is_some(), "consuming");

    let batch_size = config.pipeline.batch_size.max(1);
    let linger = config.pipeline.linger;
    let mut arena: Vec<u8> = Vec::with_capacity(INITIAL_ARENA_BYTES);
    let mut buffered: Vec<Buffered> = Vec::with_capacity(batch_size);
    let mut deadline: Option<Instant> = None;
    let mut summary = KafkaSummary::default();
    let mut last_log = Instant::now();
    let mut paused = false;
    let mut wrote = false;
    let mut last_pressure_check = Instant::now();
    let mut label_activity = LabelActivity::new(config.windows.idle_timeout, pipeline);
    // Per partition of the current assignment: the offset after the last
    // message delivered.
    let mut expected: HashMap<(Stream, i32), i64> = HashMap::new();
    label_activity.update(pipeline, sink, false)?;
    let mut clock = WallClock::new(config.pipeline.clock_speedup);
    // The predictions partitions declared to the engine (the assignment).
    let mut declared: BTreeSet<i32> = BTreeSet::new();
    clock.tick(&consumer, pipeline, sink, false)?;
    loop {
        if shutdown.is_triggered() {
            break;
        }
        // Alert state changed on the wall clock (a `query:` rule fired on
        // silence, rules reloaded) is checkpointed like events are, and so
        // are rows a released labels hold closes.
        let alerts_changed = sink.tick();
        let clock_closed = clock.tick(&consumer, pipeline, sink, paused)?;
        if (label_activity.update(pipeline, sink, paused)? || alerts_changed || clock_closed)
            && let Some(durability) = durability.as_deref_mut()
        {
            durability.dirty = true;
        }
        if last_log.elapsed() >= STATS_LOG_INTERVAL {
            log_stats(pipeline, kafka);
            last_log = Instant::now();
        }
        if let Some(durability) = durability.as_deref_mut()
            && durability.dirty
            && durability.last_attempt.elapsed() >= durability.interval
        {
            checkpoint(&consumer, pipeline, sink, durability);
        }
        // Backpressure: an output's retry buffer is full (its disk keeps
        // failing). Stop fetching — every assigned partition paused, again
        // each turn so partitions a rebalance assigns meanwhile are paused
        // too — while `poll` goes on serving rebalances, statistics and
        // group membership, the loop ticks and the writes are retried. The
        // batch in hand is still processed (its rows wait in the buffer
        // beyond the bound): nothing is dropped. librdkafka resumes a
        // paused partition at the position after the last message `poll`
        // returned, so nothing is skipped either.
        // (Asked each 100 ms, after a batch, and each turn while paused.)
        let ask = paused || wrote || last_pressure_check.elapsed() >= Duration::from_millis(100);
        if ask {
            wrote = false;
            last_pressure_check = Instant::now();
        }
        if ask && sink.backpressure() {
            if !paused {
                paused = true;
                tracing::error!("an output's retry buffer is full: consumption paused until the disk takes writes");
            }
            if let Ok(assignment) = consumer.assignment()
                && let Err(error) = consumer.pause(&assignment)
            {
                tracing::warn!(%error, "pausing partitions failed");
            }
        } else if ask && paused {
            paused = false;
            if let Ok(assignment) = consumer.assignment()
                && let Err(error) = consumer.resume(&assignment)
            {
                tracing::warn!(%error, "resuming partitions failed");
            }
            tracing::info!("outputs written: consumption resumed");
        }
        let wait = deadline.map_or(Duration::from_millis(100), |d| d.saturating_duration_since(Instant::now()));
        let polled = consumer.poll(wait.min(Duration::from_millis(100)));
        // A rebalance is served inside `poll`: messages buffered before it
        // from revoked partitions are dropped (they are fetched again from
        // the processed position if the partition comes back). The message
        // this poll returned came after the rebalance, from the current
        // assignment, so it is kept. (Regression: dropping after buffering
        // lost it when the same poll revoked and re-assigned its partition,
        // while later messages moved the position past it.)
        drop_revoked(&consumer, kafka, &mut buffered, &mut expected, &mut summary);
        sync_partitions(&consumer, kafka, pipeline, &mut declared, sink)?;
        match polled {
            Some(Ok(message)) => {
                let stream =
                    if message.topic() == kafka.predictions_topic { Stream::Predictions } else { Stream::Labels };
                // Offsets only move forward within an assignment: a message
                // at an offset already delivered is a broker's repeat
                // (seen with Tansu 0.6) and would be counted twice.
                let next = expected.entry((stream, message.partition())).or_insert(message.offset());
                if message.offset() < *next {
                    summary.repeated += 1;
                    tracing::warn!(
                        topic = message.topic(),
                        partition = message.partition(),
                        offset = message.offset(),
                        expected = *next,
                        "the broker delivered an offset again; dropped"
                    );
                    continue;
                }
                *next = message.offset() + 1;
                let payload = message.payload().unwrap_or(&[]);
                let start = arena.len();
                arena.extend_from_slice(payload);
                buffered.push(Buffered {
                    stream,
                    partition: message.partition(),
                    offset: message.offset(),
                    start,
                    end: arena.len(),
                });
                summary.messages += 1;
                if summary.messages == 1 {
                    consumer.context().set_reachable(true);
                }
                deadline.get_or_insert_with(|| Instant::now() + linger);
            }
            Some(Err(error)) => tracing::warn!(%error, "Kafka consumer error"),
            None => {}
        }
        let due = deadline.is_some_and(|d| Instant::now() >= d);
        if buffered.len() >= batch_size || arena.len() >= MAX_BATCH_BYTES || (due && !buffered.is_empty()) {
            process_batch(&consumer, producer.as_ref(), kafka, pipeline, sink, &arena, &buffered, &mut summary)?;
            wrote = true;
            if let Some(durability) = durability.as_deref_mut() {
                durability.dirty = true;
            }
            arena.clear();
            if arena.capacity() > 4 * INITIAL_ARENA_BYTES {
                // A burst of big messages is over: give the memory back.
                arena.shrink_to(INITIAL_ARENA_BYTES);
            }
            buffered.clear();
            deadline = None;
        } else if due {
            deadline = None;
        }
    }
    // Drain the batch in hand; then either checkpoint (durable: open
    // windows stay open for the next run) or close every open window.
    drop_revoked(&consumer, kafka, &mut buffered, &mut expected, &mut summary);
    process_batch(&consumer, producer.as_ref(), kafka, pipeline, sink, &arena, &buffered, &mut summary)?;
    match durability {
        Some(durability) => {
            if !checkpoint(&consumer, pipeline, sink, durability) {
                tracing::error!("the final checkpoint failed; the next run resumes from the last one written");
            }
        }
        None => {
            pipeline.finish(sink)?;
            sink.flush()?;
            if !consumer.context().broker_reachable() {
                tracing::warn!(
                    "Kafka unreachable: the final commit is skipped; the next run reads again from the last committed offsets"
                );
            } else {
                match consumer.commit_consumer_state(CommitMode::Sync) {
                    Ok(()) | Err(KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => {}
                    Err(error) => tracing::warn!(%error, "final commit failed"),
                }
            }
        }
    }
    consumer.unsubscribe();
    tracing::info!(messages = summary.messages, batches = summary.batches, "consumer stopped");
    close_consumer(consumer);
    Ok(summary)
}

/// How long shutdown waits to leave the consumer group when no broker is
/// reachable.
const UNREACHABLE_CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Leaves the consumer group and closes the consumer. With no broker
/// reachable, leaving would wait up to `session.timeout.ms` (45 s by
/// default) for a coordinator that is not there, past the shutdown timeout:
/// then it waits [`UNREACHABLE_CLOSE_WAIT`] at most and abandons the
/// consumer to the process's exit (the group expires the membership).
fn close_consumer(consumer: BaseConsumer<SourceContext>) {
    if consumer.context().broker_reachable() {
        drop(consumer);
        return;
    }
    if consumer.close_queue().is_ok() {
        let deadline = Instant::now() + UNREACHABLE_CLOSE_WAIT;
        while !consumer.closed() && Instant::now() < deadline {
            consumer.poll(Duration::from_millis(100));
        }
    }
    if !consumer.closed() {
        tracing::warn!("Kafka unreachable: not waiting to leave the consumer group; the broker expires the membership");
    }
    std::mem::forget(consumer);
}

/// Takes a checkpoint between micro-batches; on success commits its
/// offsets to Kafka. A failure (disk full, unwritable state dir) is logged,
/// makes the daemon not ready, and is retried after the interval; the
/// pipeline runs on from memory meanwhile. Returns whether it was written.
fn checkpoint(
    consumer: &BaseConsumer<SourceContext>,
    pipeline: &Pipeline,
    sink: &mut dyn WindowSink,
    durability: &mut Durability,
) -> bool {
    use crate::telemetry::{Storage, storage_status};
    let started = Instant::now();
    durability.last_attempt = started;
    let positions = consumer.context().positions.lock().expect("context lock").clone();
    let mut offsets = crate::checkpoint::Offsets::new();
    for ((topic, partition), next) in &positions {
        offsets.entry(topic.clone()).or_default().insert(*partition, *next);
    }
    let written = (|| -> Result<(PathBuf, usize), String> {
        let mut outputs = BTreeMap::new();
        sink.flush().map_err(|e| format!("flushing outputs: {e}"))?;
        sink.output_positions(&mut outputs).map_err(|e| format!("output positions: {e}"))?;
        let alerts = sink.alert_snapshot().transpose().map_err(|e| format!("alert state: {e}"))?;
        let bytes = pipeline.encode_checkpoint(&offsets, alerts.as_ref(), &outputs).map_err(|e| e.to_string())?;
        let path = durability.store.write(&bytes).map_err(|e| e.to_string())?;
        Ok((path, bytes.len()))
    })();
    match written {
        Ok((path, bytes)) => {
            storage_status(Storage::Checkpoints, false, &"");
            durability.dirty = false;
            let telemetry = &pipeline.telemetry;
            telemetry.checkpoints_written.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            telemetry.checkpoint_bytes.store(bytes as u64, std::sync::atomic::Ordering::Relaxed);
            tracing::debug!(path = %path.display(), bytes, elapsed = ?started.elapsed(), "checkpoint written");
            let mut tpl = Tpl::new();
            for ((topic, partition), next) in &positions {
                let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(*next));
            }
            if tpl.count() > 0
                && let Err(error) = consumer.commit(&tpl, CommitMode::Async)
            {
                tracing::warn!(%error, "committing checkpointed offsets failed (the checkpoint holds them)");
            }
            *consumer.context().checkpointed.lock().expect("context lock") = positions;
            true
        }
        Err(error) => {
            pipeline.telemetry.checkpoints_failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            storage_status(Storage::Checkpoints, true, &error);
            false
        }
    }
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

/// Drops buffered messages of partitions revoked since the last call, and
/// forgets their next expected offsets.
fn drop_revoked(
    consumer: &BaseConsumer<SourceContext>,
    kafka: &KafkaConfig,
    buffered: &mut Vec<Buffered>,
    expected: &mut HashMap<(Stream, i32), i64>,
    summary: &mut KafkaSummary,
) {
    let revoked: Vec<(String, i32)> = std::mem::take(&mut *consumer.context().revoked.lock().expect("context lock"));
    if revoked.is_empty() {
        return;
    }
    expected.retain(|(stream, partition), _| {
        let topic = match stream {
            Stream::Predictions => &kafka.predictions_topic,
            Stream::Labels => &kafka.labels_topic,
        };
        !revoked.iter().any(|(t, p)| t == topic && p == partition)
    });
    let before = buffered.len();
    buffered.retain(|b| {
        let topic = match b.stream {
            Stream::Predictions => &kafka.predictions_topic,
            Stream::Labels => &kafka.labels_topic,
        };
        !revoked.iter().any(|(t, p)| t == topic && *p == b.partition)
    });
    summary.dropped_on_revoke += (before - buffered.len()) as u64;
}

/// Keeps the engine's predictions partitions those assigned: a newly
/// assigned partition is declared (it holds the watermark until its first
/// event or until idle), a revoked one stops holding it.
fn sync_partitions(
    consumer: &BaseConsumer<SourceContext>,
    kafka: &KafkaConfig,
    pipeline: &mut Pipeline,
    declared: &mut BTreeSet<i32>,
    sink: &mut dyn WindowSink,
) -> Result<(), KafkaSourceError> {
    let assigned: BTreeSet<i32> = {
        let assigned = consumer.context().assigned.lock().expect("context lock");
        assigned.iter().filter(|(topic, _)| *topic == kafka.predictions_topic).map(|(_, p)| *p).collect()
    };
    if assigned == *declared {
        return Ok(());
    }
    let new: Vec<i32> = assigned.difference(declared).copied().collect();
    pipeline.engine.declare_partitions(&new);
    for revoked in declared.difference(&assigned) {
        pipeline.partition_ended(*revoked, false, sink)?;
    }
    *declared = assigned;
    Ok(())
}

/// Runs the messages decoded so far, all from one partition, through the
/// engine.
fn process_partition(pipeline: &mut Pipeline, stream: Stream, partition: i32) {
    match stream {
        Stream::Predictions => pipeline.process_predictions(partition),
        Stream::Labels => pipeline.process_labels(partition),
    }
}

#[allow(clippy::too_many_arguments)]
fn process_batch(
    consumer: &BaseConsumer<SourceContext>,
    producer: Option<&DeadLetterProducer>,
    kafka: &KafkaConfig,
    pipeline: &mut Pipeline,
    sink: &mut dyn WindowSink,
    arena: &[u8],
    buffered: &[Buffered],
    summary: &mut KafkaSummary,
) -> Result<(), KafkaSourceError> {
    if buffered.is_empty() {
        return Ok(());
    }
    let mut next_offsets: BTreeMap<(Stream, i32), i64> = BTreeMap::new();
    let mut dead_letters = 0u64;
    let skew_ms = i64::try_from(pipeline.max_future_skew.as_millis()).unwrap_or(i64::MAX);
    pipeline.decoder.accept_times_before(chrono::Utc::now().timestamp_millis().saturating_add(skew_ms));
    // Each partition's messages go through the engine as their own batches
    // (predictions first, as before), so each keeps its own watermark.
    let mut order: Vec<&Buffered> = buffered.iter().collect();
    order.sort_by_key(|m| (m.stream, m.partition));
    let mut current: Option<(Stream, i32)> = None;
    for message in order {
        if let Some((stream, partition)) = current
            && (stream, partition) != (message.stream, message.partition)
        {
            process_partition(pipeline, stream, partition);
        }
        current = Some((message.stream, message.partition));
        let bytes = &arena[message.start..message.end];
        let topic = match message.stream {
            Stream::Predictions => kafka.predictions_topic.as_str(),
            Stream::Labels => kafka.labels_topic.as_str(),
        };
        let location = Location { topic, partition: message.partition, offset: message.offset };
        let outcome = match message.stream {
            Stream::Predictions => pipeline.decode_prediction(bytes, &location),
            Stream::Labels => pipeline.decode_label(bytes, &location),
        };
        if let (Err(invalid), Some(producer), Some(dlq)) = (&outcome, producer, &kafka.dead_letter_topic) {
            dead_letter(producer, dlq, bytes, invalid, &location);
            dead_letters += 1;
        }
        let next = next_offsets.entry((message.stream, message.partition)).or_insert(0);
        *next = (*next).max(message.offset + 1);
    }
    if let Some((stream, partition)) = current {
        process_partition(pipeline, stream, partition);
    }
    pipeline.emit(sink)?;
    if let Some(producer) = producer
        && dead_letters > 0
    {
        let mut flushed = producer.flush(Duration::from_secs(30));
        if flushed.is_ok() && !producer.context().refused.lock().expect("dead-letter lock").is_empty() {
            if let Some(topic) = &kafka.dead_letter_topic {
                resend_refused_dead_letters(producer, topic);
            }
            flushed = producer.flush(Duration::from_secs(30));
        }
        let failed = producer.context().failed.swap(0, std::sync::atomic::Ordering::Relaxed);
        pipeline.telemetry.dead_letters_failed.fetch_add(failed, std::sync::atomic::Ordering::Relaxed);
        match flushed {
            Ok(()) => {
                let delivered = dead_letters.saturating_sub(failed);
                summary.dead_lettered += delivered;
                pipeline.telemetry.dead_lettered.fetch_add(delivered, std::sync::atomic::Ordering::Relaxed);
            }
            Err(error) => tracing::error!(%error, count = dead_letters, "dead-letter delivery failed"),
        }
    }
    let mut offsets = Tpl::new();
    for ((stream, partition), next) in next_offsets {
        let topic = match stream {
            Stream::Predictions => &kafka.predictions_topic,
            Stream::Labels => &kafka.labels_topic,
        };
        let _ = offsets.add_partition_offset(topic, partition, Offset::Offset(next));
    }
    if consumer.context().durable {
        let mut positions = consumer.context().positions.lock().expect("context lock");
        for element in offsets.elements() {
            if let Offset::Offset(next) = element.offset() {
                positions.insert((element.topic().to_string(), element.partition()), next);
            }
        }
    } else if let Err(error) = store(consumer, &offsets) {
        tracing::warn!(%error, "storing offsets failed (partition revoked meanwhile?)");
    }
    summary.batches += 1;
    Ok(())
}

fn store(consumer: &BaseConsumer<SourceContext>, offsets: &TopicPartitionList) -> KafkaResult<()> {
    consumer.store_offsets(offsets)
}

fn dead_letter(producer: &DeadLetterProducer, topic: &str, payload: &[u8], invalid: &Invalid, location: &Location<'_>) {
    let source = location.to_string();
    let headers = OwnedHeaders::new()
        .insert(Header { key: DLQ_REASON_HEADER, value: Some(invalid.reason.label()) })
        .insert(Header { key: DLQ_DETAIL_HEADER, value: Some(invalid.detail.as_str()) })
        .insert(Header { key: DLQ_SOURCE_HEADER, value: Some(source.as_str()) });
    send_dead_letter(producer, BaseRecord::to(topic).payload(payload).headers(headers));
}

/// Queues a dead letter, waiting while librdkafka's queue is full (it
/// drains as the broker acknowledges); other errors are counted and logged.
fn send_dead_letter(producer: &DeadLetterProducer, mut record: BaseRecord<'_, (), [u8]>) {
    loop {
        match producer.send(record) {
            Ok(()) => break,
            Err((KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                producer.poll(Duration::from_millis(10));
            }
            // Over the producer's own `message.max.bytes`: cut, like one the
            // broker refuses.
            Err((KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::MessageSizeTooLarge), back))
                if back.payload.is_some_and(|p| p.len() > DLQ_CUT_BYTES) =>
            {
                producer.context().keep_cut(back.payload.unwrap_or_default(), back.headers.as_ref());
                break;
            }
            Err((error, _)) => {
                producer.context().failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::error!(%error, "queueing a dead letter failed");
                break;
            }
        }
    }
    producer.poll(Duration::ZERO);
}

/// Sends again, cut to [`DLQ_CUT_BYTES`], the dead letters the broker
/// refused as too large, with their original size in a header; the whole
/// original stays in its source topic at the position the
/// `driftwatch-source` header names.
fn resend_refused_dead_letters(producer: &DeadLetterProducer, topic: &str) {
    let refused = std::mem::take(&mut *producer.context().refused.lock().expect("dead-letter lock"));
    for letter in &refused {
        let original = letter.original_bytes.to_string();
        let mut headers = OwnedHeaders::new();
        for (key, value) in &letter.headers {
            headers = headers.insert(Header { key, value: Some(value.as_slice()) });
        }
        headers = headers.insert(Header { key: DLQ_ORIGINAL_BYTES_HEADER, value: Some(original.as_str()) });
        send_dead_letter(producer, BaseRecord::to(topic).payload(letter.payload.as_slice()).headers(headers));
    }
}
