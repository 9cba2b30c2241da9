//! The merge consumer (docs/ARCHITECTURE.md, "Scale-out over Kafka"): a
//! second consumer-group member, in group `<kafka.group_id>-merge`, on a
//! thread of its own, reading the partials topic for the loop's merger.
//! The group gives each partials partition, so each model, to one
//! instance. On an assignment it reads back the newest mark of every model
//! of each partition given ([`PartialsTopic::newest_marks`]), positions the
//! partition at the oldest offset they resume from (its beginning when a
//! model has no mark), and tells the loop ([`MergeEvent::Assigned`])
//! before any record of it; a revocation is told too, and the loop forgets
//! the models. Records are read in batches and sent with their offsets.
//! It commits nothing: where a merger goes on from is in the marks.
//!
//! Like the partials module, it reads what it fetches: the daemon's own
//! records, not events.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;

use super::kafka::{ConsumerEvent, KafkaSourceError};
use super::partials::{PartialsTopic, partials_partition};
use crate::cluster::record::{MergerMark, PartialsRecord, RecordError};
use crate::config::KafkaConfig;
use crate::shutdown::Shutdown;

/// Records read at most per batch sent to the loop.
const BATCH_RECORDS: usize = 64;

/// How long reading marks back may take at an assignment.
const MARKS_TIMEOUT: Duration = Duration::from_secs(30);

/// What the merge consumer tells the loop, in order.
#[derive(Debug)]
pub enum MergeEvent {
    /// These partials partitions are now this instance's to merge; the
    /// newest marks of their models (those that have one).
    Assigned { partitions: Vec<i32>, marks: Vec<MergerMark> },
    /// These partials partitions are no longer this instance's.
    Revoked { partitions: Vec<i32> },
    /// Records, each with its partials partition, offset and timestamp
    /// (ms since the epoch, when the broker gave one), or why it could
    /// not be read.
    Records(Vec<ReadRecord>),
}

/// A record read: its partials partition, offset, timestamp and content.
pub type ReadRecord = (i32, i64, Option<i64>, Result<PartialsRecord, RecordError>);

/// The consumer's context: serves rebalances (marks read back,
/// positions set) and tells the loop.
struct MergeContext {
    partials: Arc<PartialsTopic>,
    models: Vec<String>,
    events: SyncSender<ConsumerEvent>,
}

impl ClientContext for MergeContext {}

impl ConsumerContext for MergeContext {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, error: RDKafkaRespErr, partitions: &mut TopicPartitionList) {
        let numbers: Vec<i32> = partitions.elements().iter().map(|e| e.partition()).collect();
        match error {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let count = self.partials.partitions();
                let models: Vec<String> = self
                    .models
                    .iter()
                    .filter(|model| numbers.contains(&partials_partition(model, count)))
                    .cloned()
                    .collect();
                let marks = match self.partials.newest_marks(&models, MARKS_TIMEOUT) {
                    Ok(marks) => marks,
                    Err(error) => {
                        tracing::error!(%error, "reading the merger's marks back failed; merging from the partitions' beginning");
                        Default::default()
                    }
                };
                let topic = self.partials.topic().to_string();
                for &partition in &numbers {
                    let ours = models.iter().filter(|model| partials_partition(model, count) == partition);
                    let start = ours
                        .map(|model| marks.get(model).map(|mark| mark.resume_offset))
                        .try_fold(i64::MAX, |oldest, resume| resume.map(|resume| oldest.min(resume)));
                    let offset = match start {
                        Some(offset) if offset < i64::MAX => Offset::Offset(offset),
                        _ => Offset::Beginning,
                    };
                    if let Err(error) = partitions.set_partition_offset(&topic, partition, offset) {
                        tracing::error!(%error, partition, "positioning a partials partition failed");
                    }
                }
                let _ = self.events.send(ConsumerEvent::Merge(MergeEvent::Assigned {
                    partitions: numbers.clone(),
                    marks: marks.into_values().collect(),
                }));
                if let Err(error) = consumer.assign(partitions) {
                    tracing::error!(%error, "assigning partials partitions failed");
                }
                tracing::info!(partitions = ?numbers, "merging the models of these partials partitions");
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let _ = self.events.send(ConsumerEvent::Merge(MergeEvent::Revoked { partitions: numbers.clone() }));
                if let Err(error) = consumer.unassign() {
                    tracing::error!(%error, "unassigning partials partitions failed");
                }
                tracing::info!(partitions = ?numbers, "no longer merging the models of these partials partitions");
            }
            other => {
                tracing::error!(error = ?other, "merge group rebalance error; unassigning");
                let _ = consumer.unassign();
            }
        }
    }
}

/// The merge consumer: see the module doc.
pub struct MergeConsumer {
    consumer: BaseConsumer<MergeContext>,
    events: SyncSender<ConsumerEvent>,
    shutdown: Shutdown,
    stop: Arc<AtomicBool>,
}

impl MergeConsumer {
    /// Joins group `<kafka.group_id>-merge` on the partials topic.
    pub fn new(
        kafka: &KafkaConfig,
        partials: Arc<PartialsTopic>,
        models: Vec<String>,
        instance: &str,
        events: SyncSender<ConsumerEvent>,
        shutdown: Shutdown,
        stop: Arc<AtomicBool>,
    ) -> Result<MergeConsumer, KafkaSourceError> {
        let mut config = super::kafka::consumer_config(kafka, true);
        config.set("group.id", super::members::merge_group(&kafka.group_id));
        super::kafka::name_client(&mut config, kafka, instance);
        let topic = partials.topic().to_string();
        let context = MergeContext { partials, models, events: events.clone() };
        let consumer: BaseConsumer<MergeContext> =
            config.create_with_context(context).map_err(KafkaSourceError::Consumer)?;
        consumer
            .subscribe(&[&topic])
            .map_err(|source| KafkaSourceError::Subscribe { topics: vec![topic.clone()], source })?;
        Ok(MergeConsumer { consumer, events, shutdown, stop })
    }

    /// Reads until shutdown (or the loop's drop guard), sending batches of
    /// records; then says it stopped and leaves the group.
    pub fn run(self) {
        let mut batch = Vec::new();
        while !self.shutdown.is_triggered() && !self.stop.load(Ordering::SeqCst) {
            match self.consumer.poll(super::kafka::POLL_WAIT) {
                Some(Ok(message)) => {
                    let record = PartialsRecord::from_msgpack(message.payload().unwrap_or_default());
                    batch.push((message.partition(), message.offset(), message.timestamp().to_millis(), record));
                    if batch.len() < BATCH_RECORDS {
                        continue;
                    }
                }
                Some(Err(error)) => tracing::warn!(%error, "merge consumer error"),
                None => {}
            }
            if !batch.is_empty()
                && self.events.send(ConsumerEvent::Merge(MergeEvent::Records(std::mem::take(&mut batch)))).is_err()
            {
                break;
            }
        }
        let _ = self.events.send(ConsumerEvent::Stopped { consumer: MERGE_CONSUMER });
        self.consumer.unsubscribe();
    }
}

/// The merge consumer's id in [`ConsumerEvent::Stopped`].
pub const MERGE_CONSUMER: super::kafka::ConsumerId = 1;
