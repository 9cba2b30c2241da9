//! The dead-letter stage: a thread of its own that owns the Kafka producer
//! of `kafka.dead_letter_topic` and sends the invalid events the daemon's
//! loop hands it, with the reason in headers. Waiting for the broker's
//! acknowledgements (a flush, up to 30 s) happens here, never on the loop
//! or a consumer thread.
//!
//! Order is what makes it safe: the loop hands over each batch's dead
//! letters before anything that moves offsets past them, and this stage
//! flushes every letter it was given before it acts on what follows — it
//! passes the offsets of processed batches on to the consumer
//! ([`DeadLetterInput::ThenStore`], without a state dir) and answers
//! barriers ([`DeadLetterInput::Barrier`], before a checkpoint, a
//! revocation's commit or the final commit) only once the letters before
//! them are delivered (or counted as failed, as the single-threaded daemon
//! did). It ends when the loop drops its sender, after a last flush.
//!
//! Architecture invariant: like the rest of `sources`, it talks to the
//! network and never interprets a payload.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender, TryRecvError, sync_channel};
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use super::kafka::{KafkaSourceError, Positions, SourceCommand};
use crate::config::KafkaConfig;
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

/// How long one flush waits for the broker's acknowledgements.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);

/// Inputs queued for the stage at most: each holds one micro-batch's
/// letters, so this bounds the payload bytes waiting here.
const INPUTS_IN_FLIGHT: usize = 2;

/// The dead-letter producer.
pub type DeadLetterProducer = BaseProducer<DeadLetterContext>;

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
    failed: AtomicU64,
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
        self.failed.fetch_add(1, Ordering::Relaxed);
        tracing::error!(%error, "a dead letter could not be delivered");
    }
}

/// librdkafka properties for the dead-letter producer.
pub fn producer_config(kafka: &KafkaConfig) -> rdkafka::config::ClientConfig {
    let mut config = rdkafka::config::ClientConfig::new();
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

/// The producer for `kafka.dead_letter_topic`, if one is configured.
pub fn create_producer(kafka: &KafkaConfig) -> Result<Option<DeadLetterProducer>, KafkaSourceError> {
    match &kafka.dead_letter_topic {
        Some(_) => producer_config(kafka)
            .create_with_context(DeadLetterContext::default())
            .map(Some)
            .map_err(KafkaSourceError::Producer),
        None => Ok(None),
    }
}

/// An invalid event to dead-letter: its payload, why, and where it came
/// from (`topic/partition@offset`).
pub struct DeadLetter {
    pub payload: Vec<u8>,
    pub reason: &'static str,
    pub detail: String,
    pub source: String,
}

impl DeadLetter {
    /// The letter of an event rejected as `invalid`, read at `source`.
    pub fn new(payload: &[u8], invalid: crate::decode::Invalid, source: &dyn std::fmt::Display) -> Self {
        DeadLetter {
            payload: payload.to_vec(),
            reason: invalid.reason.label(),
            detail: invalid.detail,
            source: source.to_string(),
        }
    }
}

/// What the loop hands the stage, in order.
pub enum DeadLetterInput {
    /// One micro-batch's dead letters.
    Letters(Vec<DeadLetter>),
    /// Offsets of processed events (no state dir): passed on to the
    /// consumer to be stored once every letter before them is delivered.
    ThenStore(Positions),
    /// Answered once every letter before it is delivered (or failed).
    Barrier(SyncSender<()>),
}

/// The loop's end of the stage.
pub struct DeadLetters {
    input: SyncSender<DeadLetterInput>,
    /// Letters were handed over since the last barrier.
    unflushed: bool,
}

impl DeadLetters {
    /// Starts the stage's thread on `scope`; it returns the number of
    /// letters delivered when it ends. `consumer_commands` is where the offsets
    /// of [`DeadLetterInput::ThenStore`] go.
    pub fn spawn<'scope>(
        scope: &'scope std::thread::Scope<'scope, '_>,
        producer: DeadLetterProducer,
        topic: String,
        telemetry: std::sync::Arc<Telemetry>,
        consumer_commands: Sender<SourceCommand>,
    ) -> std::io::Result<(DeadLetters, std::thread::ScopedJoinHandle<'scope, u64>)> {
        let (input, inputs) = sync_channel(INPUTS_IN_FLIGHT);
        let handle =
            std::thread::Builder::new().name("driftwatch-dead-letters".into()).spawn_scoped(scope, move || {
                let mut stage = Stage { producer, topic, telemetry, consumer_commands, queued: 0, delivered: 0 };
                stage.run(inputs);
                stage.delivered
            })?;
        Ok((DeadLetters { input, unflushed: false }, handle))
    }

    /// Hands over a batch's letters (waits while the stage holds
    /// [`INPUTS_IN_FLIGHT`] inputs). Returns false when the stage is gone.
    pub fn send(&mut self, letters: Vec<DeadLetter>) -> bool {
        if letters.is_empty() {
            return true;
        }
        self.unflushed = true;
        self.input.send(DeadLetterInput::Letters(letters)).is_ok()
    }

    /// Has `positions` stored by the consumer once the letters handed over
    /// before are delivered.
    pub fn store_after(&mut self, positions: Positions) -> bool {
        self.input.send(DeadLetterInput::ThenStore(positions)).is_ok()
    }

    /// Waits until every letter handed over so far is delivered (or
    /// failed); at once when none was handed over since the last barrier.
    pub fn barrier(&mut self) {
        if !self.unflushed {
            return;
        }
        let (reply, done) = sync_channel(1);
        if self.input.send(DeadLetterInput::Barrier(reply)).is_ok() {
            let _ = done.recv();
        }
        self.unflushed = false;
    }
}

/// The stage's thread state.
struct Stage {
    producer: DeadLetterProducer,
    topic: String,
    telemetry: std::sync::Arc<Telemetry>,
    consumer_commands: Sender<SourceCommand>,
    /// Letters queued on the producer since the last flush.
    queued: u64,
    /// Letters delivered in all.
    delivered: u64,
}

impl Stage {
    /// Takes inputs until the loop drops its sender; flushes whenever no
    /// further input waits (so letters go out promptly, several batches'
    /// at a time when they come quickly), and before any input that must
    /// follow the letters.
    fn run(&mut self, inputs: Receiver<DeadLetterInput>) {
        let mut next = inputs.recv();
        while let Ok(input) = next {
            match input {
                DeadLetterInput::Letters(letters) => {
                    for letter in &letters {
                        self.queue(letter);
                    }
                }
                DeadLetterInput::ThenStore(positions) => {
                    self.flush();
                    let _ = self.consumer_commands.send(SourceCommand::Store(positions));
                }
                DeadLetterInput::Barrier(reply) => {
                    self.flush();
                    let _ = reply.send(());
                }
            }
            next = match inputs.try_recv() {
                Ok(input) => Ok(input),
                Err(TryRecvError::Empty) => {
                    self.flush();
                    inputs.recv()
                }
                Err(TryRecvError::Disconnected) => break,
            };
        }
        self.flush();
    }

    fn queue(&mut self, letter: &DeadLetter) {
        let headers = OwnedHeaders::new()
            .insert(Header { key: DLQ_REASON_HEADER, value: Some(letter.reason) })
            .insert(Header { key: DLQ_DETAIL_HEADER, value: Some(letter.detail.as_str()) })
            .insert(Header { key: DLQ_SOURCE_HEADER, value: Some(letter.source.as_str()) });
        send_dead_letter(
            &self.producer,
            BaseRecord::to(&self.topic).payload(letter.payload.as_slice()).headers(headers),
        );
        self.queued += 1;
    }

    /// Waits for the broker to acknowledge every queued letter, sends the
    /// refused ones again cut short, and counts what was delivered.
    fn flush(&mut self) {
        if self.queued == 0 {
            return;
        }
        let producer = &self.producer;
        let mut flushed = producer.flush(FLUSH_TIMEOUT);
        if flushed.is_ok() && !producer.context().refused.lock().expect("dead-letter lock").is_empty() {
            resend_refused_dead_letters(producer, &self.topic);
            flushed = producer.flush(FLUSH_TIMEOUT);
        }
        let failed = producer.context().failed.swap(0, Ordering::Relaxed);
        self.telemetry.dead_letters_failed.fetch_add(failed, Ordering::Relaxed);
        match flushed {
            Ok(()) => {
                let delivered = self.queued.saturating_sub(failed);
                self.delivered += delivered;
                self.telemetry.dead_lettered.fetch_add(delivered, Ordering::Relaxed);
            }
            Err(error) => tracing::error!(%error, count = self.queued, "dead-letter delivery failed"),
        }
        self.queued = 0;
    }
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
                producer.context().failed.fetch_add(1, Ordering::Relaxed);
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
