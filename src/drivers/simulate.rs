//! The `simulate` driver: writes simulated traffic to files (as fast as
//! possible, in simulated event time) or produces it to a Kafka broker in
//! real time at the requested rate.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use crate::shutdown::Shutdown;
use crate::simulate::{Simulator, SimulatorOptions};

/// Counts of what was written.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SimulateSummary {
    pub predictions: u64,
    pub labels: u64,
}

/// Writes `duration_ms` of simulated event time to `predictions` and
/// `labels` (NDJSON). Labels are written in label-time order.
pub fn simulate_to_files(
    options: SimulatorOptions,
    duration_ms: i64,
    predictions: &Path,
    labels: &Path,
) -> io::Result<SimulateSummary> {
    let mut simulator = Simulator::new(options);
    let end = simulator.options.start_ms + duration_ms;
    let mut prediction_out = BufWriter::new(File::create(predictions)?);
    let mut label_out = BufWriter::new(File::create(labels)?);
    let mut pending: BinaryHeap<Reverse<(i64, u64, Vec<u8>)>> = BinaryHeap::new();
    let mut line = Vec::with_capacity(1024);
    let mut summary = SimulateSummary::default();
    let mut sequence = 0u64;
    loop {
        let time = simulator.next_time_ms();
        if time >= end {
            break;
        }
        line.clear();
        if let Some(label) = simulator.write_prediction(time, &mut line) {
            pending.push(Reverse((label.time_ms, sequence, label.json)));
            sequence += 1;
        }
        prediction_out.write_all(&line)?;
        summary.predictions += 1;
        while pending.peek().is_some_and(|Reverse((t, _, _))| *t <= time) {
            let Reverse((_, _, json)) = pending.pop().expect("peeked");
            label_out.write_all(&json)?;
            summary.labels += 1;
        }
    }
    while let Some(Reverse((_, _, json))) = pending.pop() {
        label_out.write_all(&json)?;
        summary.labels += 1;
    }
    prediction_out.flush()?;
    label_out.flush()?;
    Ok(summary)
}

/// Produces traffic to Kafka in real time (event time = wall clock) for
/// `duration`, or until `shutdown`.
pub fn simulate_to_kafka(
    options: SimulatorOptions,
    duration: Duration,
    brokers: &str,
    predictions_topic: &str,
    labels_topic: &str,
    shutdown: &Shutdown,
) -> Result<SimulateSummary, KafkaError> {
    let live = Live { speedup: 1.0, start_ms: None, produced: None };
    simulate_live(options, duration, brokers, (predictions_topic, labels_topic), shutdown, &live)
}

/// How a live simulation runs: event time advances `speedup` times faster
/// than the wall clock (the demo compresses an hour into a minute) from
/// `start_ms` (`None`: now), and `produced` counts (predictions, labels) as
/// they are sent.
pub struct Live<'a> {
    pub speedup: f64,
    pub start_ms: Option<i64>,
    pub produced: Option<&'a (std::sync::atomic::AtomicU64, std::sync::atomic::AtomicU64)>,
}

/// Produces `options.rate` predictions per wall-clock second (and their
/// labels when their time comes) to Kafka for `duration` or until
/// `shutdown`; event time starts at `live.start_ms` (or now) and runs
/// `live.speedup` times faster.
pub fn simulate_live(
    mut options: SimulatorOptions,
    duration: Duration,
    brokers: &str,
    (predictions_topic, labels_topic): (&str, &str),
    shutdown: &Shutdown,
    live: &Live<'_>,
) -> Result<SimulateSummary, KafkaError> {
    use std::sync::atomic::Ordering::Relaxed;
    let producer: BaseProducer =
        ClientConfig::new().set("bootstrap.servers", brokers).set("linger.ms", "20").create()?;
    let started = Instant::now();
    let start_ms = live.start_ms.unwrap_or_else(|| chrono::Utc::now().timestamp_millis());
    options.start_ms = start_ms;
    let rate = options.rate.max(0.001);
    let speedup = live.speedup.max(0.001);
    let event_now = || start_ms + (started.elapsed().as_secs_f64() * 1000.0 * speedup) as i64;
    let mut simulator = Simulator::new(options);
    let mut pending: BinaryHeap<Reverse<(i64, u64, Vec<u8>)>> = BinaryHeap::new();
    let mut summary = SimulateSummary::default();
    let mut line = Vec::with_capacity(1024);
    let mut sequence = 0u64;
    while started.elapsed() < duration && !shutdown.is_triggered() {
        let due = (started.elapsed().as_secs_f64() * rate) as u64;
        while simulator.generated() < due {
            line.clear();
            if let Some(label) = simulator.write_prediction(event_now(), &mut line) {
                pending.push(Reverse((label.time_ms, sequence, label.json)));
                sequence += 1;
            }
            send(&producer, predictions_topic, &line)?;
            summary.predictions += 1;
            if let Some((predictions, _)) = live.produced {
                predictions.fetch_add(1, Relaxed);
            }
        }
        let now = event_now();
        while pending.peek().is_some_and(|Reverse((t, _, _))| *t <= now) {
            let Reverse((_, _, json)) = pending.pop().expect("peeked");
            send(&producer, labels_topic, &json)?;
            summary.labels += 1;
            if let Some((_, labels)) = live.produced {
                labels.fetch_add(1, Relaxed);
            }
        }
        producer.poll(Duration::from_millis(5));
    }
    producer.flush(Duration::from_secs(30))?;
    Ok(summary)
}

fn send(producer: &BaseProducer, topic: &str, line: &[u8]) -> Result<(), KafkaError> {
    let payload = line.strip_suffix(b"\n").unwrap_or(line);
    let mut record: BaseRecord<'_, (), [u8]> = BaseRecord::to(topic).payload(payload);
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                producer.poll(Duration::from_millis(10));
            }
            Err((error, _)) => return Err(error),
        }
    }
}
