//! The partials topic (docs/ARCHITECTURE.md, "Scale-out over Kafka"): the
//! Kafka topic through which instances sharing a consumer group send their
//! deltas and commits ([`crate::cluster::record`]) to the merger of each
//! model. [`PartialsTopic`] creates it when missing, publishes records
//! (each to its model's partition, [`partials_partition`]) and waits for
//! the broker to have them, and reads back, from the end of a model's
//! partition, the clock a source partition had at a committed offset
//! ([`PartialsTopic::clock_at`]), for the partition's next reader, and the
//! newest mark of the model's merger ([`PartialsTopic::newest_mark`]), for
//! the next merger.
//!
//! The producer sends one record per batch: readers here position
//! themselves at offsets inside the partition, and one record per batch
//! makes every offset a batch start (Tansu 0.6 serves a read from inside a
//! batch wrongly; Kafka does not, but records here are large and few, so
//! batching them gains nothing).
//!
//! Unlike the rest of `sources` this module reads what it fetches: the
//! partials topic carries the daemon's own records, not events.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::cluster::record::{AlertHistory, MergerMark, PartialsRecord, RecordBody};
use crate::config::KafkaConfig;
use crate::rules::lifecycle::AlertSnapshot;

/// How many records a backward read of a partition fetches first; each
/// step back doubles it.
const FIRST_STEP_BACK: i64 = 256;

/// Why the partials topic could not be used. Each says which topic.
#[derive(Debug, thiserror::Error)]
pub enum PartialsError {
    #[error("partials topic {topic}: creating the Kafka client: {source}")]
    Client { topic: String, source: KafkaError },
    #[error("partials topic {topic}: {action}: {source}")]
    Broker { topic: String, action: &'static str, source: KafkaError },
    #[error("partials topic {topic}: {action}: no answer within {timeout:?}")]
    Timeout { topic: String, action: &'static str, timeout: Duration },
}

/// The partition of the partials topic that carries `model`'s records: a
/// hash of the name, the same on every instance and in every version (it
/// must never change: a model's records must stay in one partition, in
/// order).
pub fn partials_partition(model: &str, partitions: i32) -> i32 {
    let hash = xxhash_rust::xxh3::xxh3_64(model.as_bytes());
    (hash % partitions.max(1) as u64) as i32
}

/// How many partitions `topic` (the predictions topic) has, from the
/// broker's metadata (0 when it does not exist).
pub fn partitions_of(kafka: &KafkaConfig, topic: &str, timeout: Duration) -> Result<i32, PartialsError> {
    let broker = |action, source| PartialsError::Broker { topic: topic.to_string(), action, source };
    let producer: BaseProducer =
        super::dead_letters::producer_config(kafka).create().map_err(|source| broker("creating a client", source))?;
    let metadata = producer
        .client()
        .fetch_metadata(Some(topic), timeout)
        .map_err(|source| broker("reading its partitions", source))?;
    Ok(metadata.topics().iter().find(|t| t.name() == topic).map_or(0, |t| t.partitions().len() as i32))
}

/// The partials topic: see the module doc.
pub struct PartialsTopic {
    topic: String,
    partitions: i32,
    producer: BaseProducer,
    brokers: String,
    options: Vec<(String, String)>,
}

impl PartialsTopic {
    /// Connects to `topic`, creating it with `partitions` partitions when it
    /// does not exist (an existing topic keeps its own count).
    pub fn open(kafka: &KafkaConfig, topic: &str, partitions: i32, timeout: Duration) -> Result<Self, PartialsError> {
        let client = |source| PartialsError::Client { topic: topic.to_string(), source };
        let mut config = super::dead_letters::producer_config(kafka);
        config.set("batch.num.messages", "1");
        let producer: BaseProducer = config.create().map_err(client)?;
        let admin: AdminClient<DefaultClientContext> =
            super::dead_letters::producer_config(kafka).create().map_err(client)?;
        let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(-1));
        let created = wait_for(topic, "creating the topic", timeout, || {
            futures::executor::block_on(
                admin.create_topics([&new_topic], &AdminOptions::new().request_timeout(Some(timeout))),
            )
        })?;
        for result in created {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => {
                    return Err(PartialsError::Broker {
                        topic: topic.to_string(),
                        action: "creating the topic",
                        source: KafkaError::AdminOp(code),
                    });
                }
            }
        }
        let metadata = producer.client().fetch_metadata(Some(topic), timeout).map_err(|source| {
            PartialsError::Broker { topic: topic.to_string(), action: "reading its partitions", source }
        })?;
        let partitions = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .map(|t| t.partitions().len() as i32)
            .filter(|count| *count > 0)
            .unwrap_or(partitions);
        let options = kafka
            .options
            .iter()
            .filter(|(key, _)| !key.starts_with("group.") && !key.starts_with("enable.auto"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(PartialsTopic { topic: topic.to_string(), partitions, producer, brokers: kafka.brokers.clone(), options })
    }

    /// The topic's partition count.
    /// The topic's name.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub fn partitions(&self) -> i32 {
        self.partitions
    }

    /// Sends `records`, each keyed by its model to the model's partition,
    /// and waits until the broker has every one (or `timeout` passed: then
    /// nothing is known of those still out, and the caller must not
    /// commit what they cover).
    pub fn publish(&self, records: &[PartialsRecord], timeout: Duration) -> Result<u64, PartialsError> {
        let broker = |source| PartialsError::Broker { topic: self.topic.clone(), action: "publishing", source };
        let mut bytes = 0;
        for record in records {
            let payload = record.to_msgpack();
            bytes += payload.len() as u64;
            let model = record.model();
            let mut pending = BaseRecord::to(&self.topic)
                .partition(partials_partition(model, self.partitions))
                .key(model)
                .payload(&payload);
            loop {
                match self.producer.send(pending) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        pending = back;
                        self.producer.poll(Duration::from_millis(10));
                    }
                    Err((source, _)) => return Err(broker(source)),
                }
            }
        }
        self.producer.flush(timeout).map_err(broker)?;
        Ok(bytes)
    }

    /// The clock source partition `topic`/`partition` had for `model` at
    /// offset `offset` (its readers' committed offset), read from the
    /// newest commit record, or delta, ending there in the model's
    /// partition of this topic, reading back from the end. `Ok(None)` when
    /// no record ends there (the partition's first reader; one whose commit
    /// record was never published); `Ok(Some(None))` when the partition had
    /// no event of the model yet.
    #[allow(clippy::option_option)]
    pub fn clock_at(
        &self,
        model: &str,
        topic: &str,
        partition: i32,
        offset: i64,
        timeout: Duration,
    ) -> Result<Option<Option<i64>>, PartialsError> {
        let query = ClockQuery { model: model.to_string(), topic: topic.to_string(), partition, offset };
        Ok(self.clocks_at(std::slice::from_ref(&query), timeout)?.remove(&query))
    }

    /// [`PartialsTopic::clock_at`] for many source partitions at once (a
    /// new assignment): one reader, one pass back through each partials
    /// partition involved, until every query there is answered. Queries
    /// with no record ending at their offset are absent from the answer.
    pub fn clocks_at(
        &self,
        queries: &[ClockQuery],
        timeout: Duration,
    ) -> Result<BTreeMap<ClockQuery, Option<i64>>, PartialsError> {
        let mut by_partition: BTreeMap<i32, BTreeSet<ClockQuery>> = BTreeMap::new();
        for query in queries {
            by_partition.entry(partials_partition(&query.model, self.partitions)).or_default().insert(query.clone());
        }
        let reader = self.reader()?;
        let deadline = Instant::now() + timeout;
        let mut answers = BTreeMap::new();
        for (partition, wanted) in by_partition {
            answers.extend(self.newest_each(&reader, partition, &wanted, deadline, timeout, None, |record, _| {
                let (model, topic, source, offset, clock) = match record.body {
                    RecordBody::Commit(c) => (c.model, c.topic, c.partition, c.next, c.clock_ms),
                    RecordBody::Delta(d) => (d.model, d.topic, d.partition, d.end, d.clock_ms),
                    RecordBody::Mark(_) => return None,
                };
                Some((ClockQuery { model, topic, partition: source, offset }, clock))
            })?);
        }
        Ok(answers)
    }

    /// The newest mark record of `model`'s merger (where a new merger of
    /// the model goes on from); `None` when none was published.
    pub fn newest_mark(&self, model: &str, timeout: Duration) -> Result<Option<MergerMark>, PartialsError> {
        Ok(self.newest_marks(&[model.to_string()], timeout)?.remove(model))
    }

    /// [`PartialsTopic::newest_mark`] for several models at once (the
    /// models of a partials partition a merger was just given).
    pub fn newest_marks(
        &self,
        models: &[String],
        timeout: Duration,
    ) -> Result<BTreeMap<String, MergerMark>, PartialsError> {
        let mut by_partition: BTreeMap<i32, BTreeSet<String>> = BTreeMap::new();
        for model in models {
            by_partition.entry(partials_partition(model, self.partitions)).or_default().insert(model.clone());
        }
        let reader = self.reader()?;
        let deadline = Instant::now() + timeout;
        let mut marks = BTreeMap::new();
        for (partition, wanted) in by_partition {
            let mut newest = self.newest_each(&reader, partition, &wanted, deadline, timeout, None, |record, _| {
                match record.body {
                    RecordBody::Mark(mark) => Some((mark.model.clone(), mark)),
                    _ => None,
                }
            })?;
            // Alert states whose history rows are in an earlier mark: the
            // newest that carries them (they have not changed since).
            let elsewhere: BTreeSet<String> = newest
                .values()
                .filter(|mark| mark.alert_history == AlertHistory::InAnEarlierMark && mark.alerts.is_some())
                .map(|mark| mark.model.clone())
                .collect();
            if !elsewhere.is_empty() {
                let carried = self.newest_each(
                    &reader,
                    partition,
                    &elsewhere,
                    deadline,
                    timeout,
                    None,
                    |record, _| match record.body {
                        RecordBody::Mark(mark) if mark.alert_history == AlertHistory::Carried => {
                            Some((mark.model.clone(), mark.alerts?))
                        }
                        _ => None,
                    },
                )?;
                for model in &elsewhere {
                    let mark = newest.get_mut(model).expect("a model with a mark");
                    match with_history(
                        mark.alerts.as_ref().map(|bytes| &bytes[..]),
                        carried.get(model).map(|bytes| &bytes[..]),
                    ) {
                        Ok(alerts) => {
                            mark.alerts = Some(serde_bytes::ByteBuf::from(alerts));
                            mark.alert_history = AlertHistory::Carried;
                        }
                        Err(error) => tracing::warn!(
                            %model, %error,
                            "the query rules' history of a model's alerts was not found: its query rules start over"
                        ),
                    }
                }
            }
            marks.extend(newest);
        }
        Ok(marks)
    }

    /// Who published last, read back from the end of the partitions: for
    /// each of `models`, the instance whose merger published its newest
    /// mark; for each of `sources` (topic, partition), the instance that
    /// published its newest delta (of the first model: every reader
    /// publishes one for every model). Each with the record's timestamp
    /// (ms), when the broker gave one. Records published more than
    /// [`PUBLISHERS_HORIZON`] ago are not looked for: a model or partition
    /// without a publisher since then has none.
    pub fn newest_publishers(
        &self,
        models: &[String],
        sources: &[(String, i32)],
        timeout: Duration,
    ) -> Result<Publishers, PartialsError> {
        let Some(first) = models.first() else { return Ok(Publishers::default()) };
        let mut by_partition: BTreeMap<i32, BTreeSet<PublisherKey>> = BTreeMap::new();
        for model in models {
            by_partition
                .entry(partials_partition(model, self.partitions))
                .or_default()
                .insert(PublisherKey::Merger(model.clone()));
        }
        let first_partition = by_partition.entry(partials_partition(first, self.partitions)).or_default();
        first_partition
            .extend(sources.iter().map(|(topic, partition)| PublisherKey::Reader(topic.clone(), *partition)));
        let reader = self.reader()?;
        let deadline = Instant::now() + timeout;
        let horizon_ms = i64::try_from(PUBLISHERS_HORIZON.as_millis()).unwrap_or(i64::MAX);
        let not_before_ms = Some(chrono::Utc::now().timestamp_millis().saturating_sub(horizon_ms));
        let mut publishers = Publishers::default();
        for (partition, wanted) in by_partition {
            let newest =
                self.newest_each(&reader, partition, &wanted, deadline, timeout, not_before_ms, |record, at| {
                    let key = match &record.body {
                        RecordBody::Mark(mark) => PublisherKey::Merger(mark.model.clone()),
                        RecordBody::Delta(delta) if delta.model == *first => {
                            PublisherKey::Reader(delta.topic.clone(), delta.partition)
                        }
                        _ => return None,
                    };
                    Some((key, (record.instance, at)))
                })?;
            for (key, publisher) in newest {
                match key {
                    PublisherKey::Merger(model) => publishers.mergers.insert(model, publisher),
                    PublisherKey::Reader(topic, partition) => publishers.readers.insert((topic, partition), publisher),
                };
            }
        }
        Ok(publishers)
    }

    /// A reader of this topic: assigned, never subscribed (the group id,
    /// which librdkafka wants for an assignment, names no group that joins
    /// or commits).
    fn reader(&self) -> Result<BaseConsumer, PartialsError> {
        let mut config = rdkafka::config::ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        for (key, value) in &self.options {
            config.set(key, value);
        }
        config
            .set("group.id", "driftwatch-partials-reader")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true");
        config.create().map_err(|source| PartialsError::Broker {
            topic: self.topic.clone(),
            action: "creating a reader",
            source,
        })
    }

    /// For each key of `wanted`, the newest record of partials partition
    /// `partition` that `select` picks for it, read back from the end in
    /// strides that double until every key is answered, the partition's
    /// beginning is reached or (with `not_before_ms`) a stride reached a
    /// record published before then (records that cannot be read are
    /// passed over).
    #[allow(clippy::too_many_arguments)]
    fn newest_each<K: Ord + Clone, T>(
        &self,
        reader: &BaseConsumer,
        partition: i32,
        wanted: &BTreeSet<K>,
        deadline: Instant,
        timeout: Duration,
        not_before_ms: Option<i64>,
        mut select: impl FnMut(PartialsRecord, Option<i64>) -> Option<(K, T)>,
    ) -> Result<BTreeMap<K, T>, PartialsError> {
        let broker = |action, source| PartialsError::Broker { topic: self.topic.clone(), action, source };
        let (low, high) = reader
            .fetch_watermarks(&self.topic, partition, timeout)
            .map_err(|source| broker("reading the partition's offsets", source))?;
        let mut answered: BTreeMap<K, T> = BTreeMap::new();
        let mut until = high;
        let mut step = FIRST_STEP_BACK;
        while until > low && answered.len() < wanted.len() {
            let from = (until - step).max(low);
            let mut assignment = TopicPartitionList::new();
            assignment
                .add_partition_offset(&self.topic, partition, Offset::Offset(from))
                .map_err(|source| broker("positioning a reader", source))?;
            reader.assign(&assignment).map_err(|source| broker("positioning a reader", source))?;
            // Later records in this stride are newer: they replace earlier
            // ones; what a newer stride answered stays.
            let mut stride: BTreeMap<K, T> = BTreeMap::new();
            let mut reached_not_before = false;
            let mut next = from;
            while next < until {
                if Instant::now() >= deadline {
                    return Err(PartialsError::Timeout { topic: self.topic.clone(), action: "reading back", timeout });
                }
                let Some(message) = reader.poll(Duration::from_millis(100)) else { continue };
                let message = match message {
                    Ok(message) => message,
                    Err(KafkaError::PartitionEOF(_)) => break,
                    Err(source) => return Err(broker("reading back", source)),
                };
                next = message.offset() + 1;
                if message.offset() >= until {
                    break;
                }
                let published_ms = message.timestamp().to_millis();
                reached_not_before |= not_before_ms.zip(published_ms).is_some_and(|(cut, at)| at < cut);
                let Some(Ok(record)) = message.payload().map(PartialsRecord::from_msgpack) else { continue };
                if let Some((key, value)) = select(record, published_ms)
                    && wanted.contains(&key)
                    && !answered.contains_key(&key)
                {
                    stride.insert(key, value);
                }
            }
            answered.extend(stride);
            if reached_not_before {
                break;
            }
            until = from;
            step = step.saturating_mul(2);
        }
        Ok(answered)
    }
}

/// An alert state (`state`) with the history rows of an earlier one
/// (`earlier`), both [`AlertSnapshot::to_msgpack`]'s bytes.
fn with_history(state: Option<&[u8]>, earlier: Option<&[u8]>) -> Result<Vec<u8>, String> {
    let (Some(state), Some(earlier)) = (state, earlier) else {
        return Err("no earlier mark carries it".into());
    };
    let earlier = AlertSnapshot::from_msgpack(earlier)?;
    Ok(AlertSnapshot::from_msgpack(state)?.with_history_of(earlier).to_msgpack())
}

/// How far back [`PartialsTopic::newest_publishers`] looks: an instance
/// silent for longer is no longer a member.
pub const PUBLISHERS_HORIZON: Duration = Duration::from_secs(600);

/// Who published last ([`PartialsTopic::newest_publishers`]): an instance
/// name and the record's timestamp (ms).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Publishers {
    pub mergers: BTreeMap<String, (String, Option<i64>)>,
    pub readers: BTreeMap<(String, i32), (String, Option<i64>)>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum PublisherKey {
    Merger(String),
    Reader(String, i32),
}

/// One source partition's clock asked for at an offset
/// ([`PartialsTopic::clocks_at`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ClockQuery {
    pub model: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// An admin call's outcome, or a timeout error naming `action`.
fn wait_for<T>(
    topic: &str,
    action: &'static str,
    timeout: Duration,
    call: impl FnOnce() -> rdkafka::error::KafkaResult<T>,
) -> Result<T, PartialsError> {
    call().map_err(|source| match source {
        KafkaError::AdminOp(RDKafkaErrorCode::RequestTimedOut)
        | KafkaError::AdminOp(RDKafkaErrorCode::OperationTimedOut) => {
            PartialsError::Timeout { topic: topic.to_string(), action, timeout }
        }
        source => PartialsError::Broker { topic: topic.to_string(), action, source },
    })
}
