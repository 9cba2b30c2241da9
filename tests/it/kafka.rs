//! The daemon against a real Kafka-protocol broker (Tansu): exact counts,
//! resuming from committed offsets, splitting partitions in a group, and
//! malformed messages counted, dead-lettered and skipped.

use std::sync::atomic::Ordering;
use std::time::Duration;

use driftwatch::config::Config;
use driftwatch::decode::InvalidReason;
use driftwatch::simulate::{Simulator, SimulatorOptions};
use driftwatch::sources::kafka::DLQ_REASON_HEADER;
use driftwatch::window_metrics::WindowMetricRow;
use rdkafka::Message;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;

use crate::support::{Broker, InProcessDaemon, flush, send, wait_until};

const TIMEOUT: Duration = Duration::from_secs(90);

/// Windows allow 10 minutes of lateness: with several partitions read in
/// any interleaving, a shorter one would (rightly) count some events late,
/// and these tests are about delivery, not lateness.
fn start_daemon(broker: &Broker, group: &str, extra: &str) -> InProcessDaemon {
    let yaml = format!(
        "kafka: {{brokers: \"{}\", group_id: {group}{extra}}}\n\
         windows: {{size: 1m, allowed_lateness: 10m, label_horizon: 10m}}\n\
         pipeline: {{batch_size: 256, linger: 50ms}}\n\
         http: {{listen: \"127.0.0.1:0\"}}\n\
         models: [{{name: fraud}}]\n",
        broker.bootstrap()
    );
    InProcessDaemon::start(Config::from_yaml_str(&yaml, "test.yaml").expect("config"))
}

/// Sum of the whole-model `count` rows: every event counted once.
fn counted(rows: &[WindowMetricRow]) -> f64 {
    rows.iter().filter(|r| r.metric == "count" && r.feature.is_none() && r.segment.is_empty()).map(|r| r.value).sum()
}

/// Produces `n` simulated predictions starting at `start_ms`.
fn produce(broker: &Broker, n: u64, start_ms: i64, seed: u64) {
    let producer = broker.producer();
    let mut simulator = Simulator::new(SimulatorOptions { start_ms, seed, rate: 50.0, ..Default::default() });
    let mut line = Vec::new();
    for i in 0..n {
        line.clear();
        let time = simulator.next_time_ms();
        simulator.write_prediction(time, &mut line);
        send(&producer, "predictions", &format!("{seed}-{i}"), line.strip_suffix(b"\n").unwrap());
    }
    flush(&producer);
}

fn broker_with_topics() -> Broker {
    let broker = Broker::start();
    broker.create_topic("predictions", 4);
    broker.create_topic("labels", 2);
    broker
}

#[test]
fn every_produced_event_is_counted_exactly_once() {
    let broker = broker_with_topics();
    produce(&broker, 2_000, 1_795_687_200_000, 1);
    let daemon = start_daemon(&broker, "exact", "");
    wait_until(TIMEOUT, "2000 predictions consumed", || daemon.telemetry.events_on("predictions") >= 2_000);
    let (summary, rows) = daemon.stop();
    assert_eq!(summary.messages, 2_000);
    assert_eq!(counted(&rows), 2_000.0);
}

#[test]
fn a_restarted_consumer_resumes_from_committed_offsets() {
    let broker = broker_with_topics();
    let first_start = 1_795_687_200_000; // 10:00
    let second_start = first_start + 2 * 3_600_000; // 12:00
    produce(&broker, 600, first_start, 2);
    let first = start_daemon(&broker, "resume", "");
    wait_until(TIMEOUT, "first run consumed", || first.telemetry.events_on("predictions") >= 600);
    let (_, first_rows) = first.stop();
    assert_eq!(counted(&first_rows), 600.0);

    produce(&broker, 400, second_start, 3);
    let second = start_daemon(&broker, "resume", "");
    wait_until(TIMEOUT, "second run consumed", || second.telemetry.events_on("predictions") >= 400);
    let (summary, second_rows) = second.stop();
    assert_eq!(summary.messages, 400, "the restarted consumer read only new messages");
    assert_eq!(counted(&second_rows), 400.0);
    assert!(second_rows.iter().all(|r| r.window_start_ms >= second_start - 60_000), "no old window was counted again");
}

#[test]
fn two_instances_in_one_group_split_the_partitions_and_count_each_event_once() {
    let broker = broker_with_topics();
    let a = start_daemon(&broker, "split", "");
    let b = start_daemon(&broker, "split", "");
    wait_until(TIMEOUT, "both instances to own partitions", || {
        let (pa, pb) = (
            a.telemetry.assigned_partitions.load(Ordering::Relaxed),
            b.telemetry.assigned_partitions.load(Ordering::Relaxed),
        );
        pa > 0 && pb > 0 && pa + pb == 6
    });
    produce(&broker, 3_000, 1_795_687_200_000, 4);
    wait_until(TIMEOUT, "3000 predictions consumed by the group", || {
        a.telemetry.events_on("predictions") + b.telemetry.events_on("predictions") >= 3_000
    });
    let (summary_a, rows_a) = a.stop();
    let (summary_b, rows_b) = b.stop();
    assert_eq!(summary_a.messages + summary_b.messages, 3_000);
    assert!(summary_a.messages > 0 && summary_b.messages > 0, "{summary_a:?} {summary_b:?}");
    assert_eq!(counted(&rows_a) + counted(&rows_b), 3_000.0);
}

#[test]
fn malformed_messages_are_counted_dead_lettered_and_skipped() {
    let broker = broker_with_topics();
    broker.create_topic("driftwatch-dlq", 1);
    let producer = broker.producer();
    let mut simulator = Simulator::new(SimulatorOptions { seed: 5, ..Default::default() });
    let bad: [&[u8]; 5] = [
        b"not json at all",
        b"",
        br#"{"event_id":"x","model":"unknown-model","timestamp":1795687200000,"prediction":1}"#,
        br#"{"event_id":"y","model":"fraud","timestamp":"yesterday","prediction":1}"#,
        br#"{"event_id":"z","model":"fraud","timestamp":1795687200000,"prediction":1,"score":"NaN"}"#,
    ];
    let mut line = Vec::new();
    for i in 0..100 {
        line.clear();
        let time = simulator.next_time_ms();
        simulator.write_prediction(time, &mut line);
        // All on one key, so good and bad messages interleave in one partition.
        send(&producer, "predictions", "k", line.strip_suffix(b"\n").unwrap());
        if i % 20 == 10 {
            send(&producer, "predictions", "k", bad[i / 20]);
        }
    }
    flush(&producer);
    let daemon = start_daemon(&broker, "malformed", ", dead_letter_topic: driftwatch-dlq");
    wait_until(TIMEOUT, "good and bad messages processed", || {
        daemon.telemetry.events_on("predictions") >= 100 && daemon.telemetry.invalid_total() >= 5
    });
    let telemetry = daemon.telemetry.clone();
    let (summary, rows) = daemon.stop();
    assert_eq!(summary.messages, 105);
    assert_eq!(counted(&rows), 100.0);
    assert_eq!(telemetry.invalid_count(InvalidReason::InvalidJson), 2);
    assert_eq!(telemetry.invalid_count(InvalidReason::UnknownModel), 1);
    assert_eq!(telemetry.invalid_count(InvalidReason::BadTimestamp), 1);
    assert_eq!(telemetry.invalid_count(InvalidReason::NonFinite), 1);
    assert_eq!(summary.dead_lettered, 5);

    // The dead letters carry the original payload and the reason.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("group.id", "dlq-reader")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&["driftwatch-dlq"]).unwrap();
    let mut reasons = Vec::new();
    wait_until(TIMEOUT, "5 dead letters", || {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
            let headers = message.headers().expect("headers");
            let reason = headers.iter().find(|h| h.key == DLQ_REASON_HEADER).and_then(|h| h.value).unwrap();
            reasons.push(String::from_utf8(reason.to_vec()).unwrap());
        }
        reasons.len() == 5
    });
    reasons.sort();
    assert_eq!(reasons, ["bad_timestamp", "invalid_json", "invalid_json", "non_finite", "unknown_model"]);
}

#[test]
fn a_rebalance_mid_stream_neither_loses_nor_double_counts() {
    let broker = broker_with_topics();
    let a = start_daemon(&broker, "rebalance", "");
    produce(&broker, 1_500, 1_795_687_200_000, 6);
    wait_until(TIMEOUT, "the first instance to be consuming", || a.telemetry.events_on("predictions") >= 200);
    // A second member joins while events are flowing: partitions move.
    let b = start_daemon(&broker, "rebalance", "");
    produce(&broker, 1_500, 1_795_687_200_000 + 60_000, 7);
    wait_until(TIMEOUT, "the second instance to own partitions", || {
        b.telemetry.assigned_partitions.load(Ordering::Relaxed) > 0
    });
    produce(&broker, 1_000, 1_795_687_200_000 + 120_000, 8);
    wait_until(TIMEOUT, "4000 predictions consumed by the group", || {
        a.telemetry.events_on("predictions") + b.telemetry.events_on("predictions") >= 4_000
    });
    let (_, rows_a) = a.stop();
    let (_, rows_b) = b.stop();
    assert_eq!(counted(&rows_a) + counted(&rows_b), 4_000.0);
}

/// The harness's producers write one record per batch (see
/// `support::one_record_per_batch`), so a consumer assigned at any offset
/// reads from exactly there. With records batched, Tansu 0.6.0 served a
/// consumer assigned at 1 of a batch [0, 1, 2] followed by [3, 4] the
/// records 3, 4, 3, 4 (1 and 2 lost, 3 and 4 twice), and one assigned at 4
/// nothing: the crash test's rare 599-of-600 windows.
#[test]
fn a_consumer_assigned_at_any_offset_reads_from_exactly_there() {
    use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
    let broker = Broker::start();
    broker.create_topic("offsets", 1);
    let producer = broker.producer();
    for i in 0..5 {
        send(&producer, "offsets", "k", format!("e{i}").as_bytes());
    }
    flush(&producer);
    for start in 0..5i64 {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", broker.bootstrap())
            .set("group.id", format!("offsets-{start}"))
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset("offsets", 0, Offset::Offset(start)).unwrap();
        consumer.assign(&assignment).unwrap();
        let mut read = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while std::time::Instant::now() < deadline {
            if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
                read.push((message.offset(), String::from_utf8_lossy(message.payload().unwrap()).into_owned()));
            }
        }
        let expected: Vec<(i64, String)> = (start..5).map(|i| (i, format!("e{i}"))).collect();
        assert_eq!(read, expected, "assigned at offset {start}");
    }
}

/// A sink that holds the alerting stage on its first rows until released,
/// as a slow `query:` rule or a slow disk would.
struct Gate {
    held: std::sync::Arc<std::sync::atomic::AtomicBool>,
    release: std::sync::mpsc::Receiver<()>,
    rows: std::sync::mpsc::Sender<Vec<WindowMetricRow>>,
}

impl driftwatch::output::WindowSink for Gate {
    fn write_rows(&mut self, rows: &[WindowMetricRow]) -> std::io::Result<()> {
        if !self.held.swap(true, Ordering::SeqCst) {
            let _ = self.release.recv();
        }
        let _ = self.rows.send(rows.to_vec());
        Ok(())
    }
}

/// The alerting stage runs beside the loop: while it is stuck on a batch of
/// rows, batches keep flowing from Kafka into the engine; released, it
/// writes every row, and every event is counted once.
#[test]
fn a_stalled_alerting_stage_does_not_stop_consumption() {
    let broker = Broker::start();
    broker.create_topic("predictions", 1);
    broker.create_topic("labels", 1);
    let yaml = format!(
        "kafka: {{brokers: \"{}\", group_id: stalled}}\n\
         windows: {{size: 1m, allowed_lateness: 0s, label_horizon: 0s}}\n\
         pipeline: {{batch_size: 64, linger: 20ms}}\n\
         http: {{listen: \"127.0.0.1:0\"}}\n\
         models: [{{name: fraud}}]\n",
        broker.bootstrap()
    );
    let config = Config::from_yaml_str(&yaml, "test.yaml").expect("config");
    let held = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (release, released) = std::sync::mpsc::channel();
    let mut daemon = crate::support::InProcessDaemon::start_with(config, |rows| {
        Box::new(Gate { held: held.clone(), release: released, rows })
    });
    // 10:00:00-10:00:30 fills the first window; an event at 10:01:30 closes
    // it, and its rows reach the gate, which holds the stage.
    let start_ms = 1_795_687_200_000;
    produce(&broker, 100, start_ms, 11);
    produce(&broker, 1, start_ms + 90_000, 12);
    wait_until(TIMEOUT, "the stage to be held by the first rows", || held.load(Ordering::SeqCst));
    // Consumption goes on while the stage is held: 500 more events of the
    // second window reach the engine.
    produce(&broker, 500, start_ms + 91_000, 13);
    wait_until(TIMEOUT, "601 predictions in the engine while the stage is held", || {
        daemon.telemetry.events_on("predictions") >= 601
    });
    assert!(daemon.received().is_empty(), "the stage wrote rows while held");
    release.send(()).unwrap();
    let (_, written) = daemon.stop();
    assert_eq!(counted(&written), 601.0);
}

/// A durable daemon of group `group` with its state in `dir`. Checkpoints
/// are an hour apart, so only a hand-over or a stop takes one: a member
/// that committed its last checkpoint's offsets on revocation would hand
/// over at the start of the stream, and its next owner count it again.
fn start_durable_daemon(broker: &Broker, group: &str, dir: &std::path::Path) -> InProcessDaemon {
    let yaml = format!(
        "kafka: {{brokers: \"{}\", group_id: {group}, options: {{session.timeout.ms: \"6000\", heartbeat.interval.ms: \"500\"}}}}\n\
         state: {{dir: \"{}\", checkpoint_interval: 1h}}\n\
         windows: {{size: 1m, allowed_lateness: 10m, label_horizon: 10m}}\n\
         pipeline: {{batch_size: 256, linger: 50ms}}\n\
         http: {{listen: \"127.0.0.1:0\"}}\n\
         models: [{{name: fraud}}]\n",
        broker.bootstrap(),
        dir.display()
    );
    InProcessDaemon::start(Config::from_yaml_str(&yaml, "test.yaml").expect("config"))
}

/// Per window start, the events `produce(broker, n, start_ms, _)` made.
fn expected_counts(counts: &mut std::collections::BTreeMap<i64, f64>, n: u64, start_ms: i64) {
    let mut simulator = Simulator::new(SimulatorOptions { start_ms, rate: 50.0, ..Default::default() });
    let mut line = Vec::new();
    for _ in 0..n {
        let time = simulator.next_time_ms();
        simulator.write_prediction(time, &mut line);
        *counts.entry(time - time.rem_euclid(60_000)).or_default() += 1.0;
    }
}

/// Per window start, the whole-model `count` rows of every instance.
fn counted_per_window(rows: &[&[WindowMetricRow]]) -> std::collections::BTreeMap<i64, f64> {
    let mut counts = std::collections::BTreeMap::new();
    for row in rows.iter().flat_map(|rows| rows.iter()) {
        if row.metric == "count" && row.feature.is_none() && row.segment.is_empty() {
            *counts.entry(row.window_start_ms).or_default() += row.value;
        }
    }
    counts
}

/// One prediction at `time_ms` in each of the 4 predictions partitions:
/// every instance's watermark passes what came before, and its windows
/// close.
fn close_windows_before(broker: &Broker, time_ms: i64) {
    let producer = broker.producer();
    let mut simulator = Simulator::new(SimulatorOptions { start_ms: time_ms, seed: 99, ..Default::default() });
    for partition in 0..4 {
        let mut line = Vec::new();
        simulator.write_prediction(time_ms, &mut line);
        let key = format!("closing-{time_ms}-{partition}");
        crate::support::send_to_partition(&producer, "predictions", partition, &key, line.strip_suffix(b"\n").unwrap());
    }
    flush(&producer);
}

/// Durable mode: a member that loses partitions in a rebalance checkpoints
/// what it processed of them and commits exactly that, so their next owner
/// starts there; and it never commits them again. Each window's count,
/// summed over the two instances, is the number of events produced in it.
#[test]
fn a_durable_member_hands_revoked_partitions_over_where_its_state_ends() {
    let broker = broker_with_topics();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let start_ms = 1_795_687_200_000;
    let mut expected = std::collections::BTreeMap::new();
    let a = start_durable_daemon(&broker, "handover", dir_a.path());
    produce(&broker, 1_500, start_ms, 0);
    expected_counts(&mut expected, 1_500, start_ms);
    wait_until(TIMEOUT, "the first instance to read the first 1500", || a.telemetry.events_on("predictions") >= 1_500);
    let b = start_durable_daemon(&broker, "handover", dir_b.path());
    wait_until(TIMEOUT, "both instances to own partitions", || {
        let (pa, pb) = (
            a.telemetry.assigned_partitions.load(Ordering::Relaxed),
            b.telemetry.assigned_partitions.load(Ordering::Relaxed),
        );
        pa > 0 && pb > 0 && pa + pb == 6
    });
    produce(&broker, 1_500, start_ms + 60_000, 0);
    expected_counts(&mut expected, 1_500, start_ms + 60_000);
    close_windows_before(&broker, start_ms + 3_600_000);
    let (mut a, mut b) = (a, b);
    wait_until(TIMEOUT, "3000 predictions counted in closed windows", || {
        counted(a.received()) + counted(b.received()) >= 3_000.0
    });
    let (_, rows_a) = a.stop();
    let (_, rows_b) = b.stop();
    assert_eq!(counted_per_window(&[&rows_a, &rows_b]), expected);
}

/// Durable mode: an instance restarted from its checkpoint does not read
/// again what another instance of its group read of its partitions while
/// it was away (the group's committed offset is past its state's): it
/// starts there, and each event is counted once.
#[test]
fn a_restarted_durable_instance_starts_past_what_another_instance_read_meanwhile() {
    let broker = broker_with_topics();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let start_ms = 1_795_687_200_000;
    let mut expected = std::collections::BTreeMap::new();

    // A reads the first 1000 and stops: its checkpoint ends after them.
    let a = start_durable_daemon(&broker, "away", dir_a.path());
    produce(&broker, 1_000, start_ms, 0);
    expected_counts(&mut expected, 1_000, start_ms);
    wait_until(TIMEOUT, "the first instance to read 1000", || a.telemetry.events_on("predictions") >= 1_000);
    let (_, rows_a) = a.stop();

    // B, alone in the group, reads the next 1000 and closes their windows.
    let mut b = start_durable_daemon(&broker, "away", dir_b.path());
    produce(&broker, 1_000, start_ms + 600_000, 1);
    expected_counts(&mut expected, 1_000, start_ms + 600_000);
    close_windows_before(&broker, start_ms + 2 * 3_600_000);
    wait_until(TIMEOUT, "the second instance to count 1000", || counted(b.received()) >= 1_000.0);
    let (_, rows_b) = b.stop();

    // A comes back: what B read is not A's to count again.
    let mut a = start_durable_daemon(&broker, "away", dir_a.path());
    produce(&broker, 1_000, start_ms + 3 * 3_600_000, 2);
    expected_counts(&mut expected, 1_000, start_ms + 3 * 3_600_000);
    close_windows_before(&broker, start_ms + 5 * 3_600_000);
    wait_until(TIMEOUT, "the restarted instance to count 2000", || counted(a.received()) >= 2_000.0);
    let (_, rows_a_again) = a.stop();
    assert_eq!(counted_per_window(&[&rows_a, &rows_b, &rows_a_again]), expected);
}
