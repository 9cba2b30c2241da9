//! Scale-out against a real broker (Tansu): the partials topic is created
//! when missing, records reach their model's partition, and a source
//! partition's clock at a committed offset, and a merger's newest mark,
//! are read back from the end of it.

use std::time::Duration;

use driftwatch::cluster::record::{Commit, Delta, MergerMark, PartialsRecord};
use driftwatch::config::Config;
use driftwatch::sources::partials::{ClockQuery, PartialsTopic, partials_partition};

use crate::support::Broker;

const TIMEOUT: Duration = Duration::from_secs(30);
const T0: i64 = 1_795_687_200_000;

fn kafka(broker: &Broker) -> driftwatch::config::KafkaConfig {
    let yaml = format!("kafka: {{brokers: \"{}\", group_id: cluster}}\nmodels: [{{name: a}}]\n", broker.bootstrap());
    Config::from_yaml_str(&yaml, "test.yaml").unwrap().kafka.unwrap()
}

/// Round `round`'s records of `model`: per source partition a delta of
/// offsets [10 round, 10 round + 10), then (every other round) its commit;
/// partition 2 has no event of the model (its clock is `None`).
fn round(model: &str, round: i64) -> Vec<PartialsRecord> {
    let mut records = Vec::new();
    for partition in 0..3 {
        let clock = (partition != 2).then_some(T0 + round * 1000 + i64::from(partition));
        let (start, end) = (round * 10, round * 10 + 10);
        records.push(PartialsRecord::delta(
            "member",
            Delta {
                model: model.into(),
                topic: "predictions".into(),
                partition,
                start,
                end,
                clock_ms: clock,
                idle: false,
                windows: Vec::new(),
                late: Vec::new(),
                joins: Default::default(),
                part: 0,
                parts: 1,
            },
        ));
        if round % 2 == 1 {
            records.push(PartialsRecord::commit(
                "member",
                Commit { model: model.into(), topic: "predictions".into(), partition, next: end, clock_ms: clock },
            ));
        }
    }
    records
}

#[test]
fn a_partitions_clock_at_a_committed_offset_is_read_back_from_the_partials_topic() {
    let broker = Broker::start();
    let kafka = kafka(&broker);
    let topic = PartialsTopic::open(&kafka, "driftwatch-partials", 3, TIMEOUT).expect("the topic is created");
    assert_eq!(topic.partitions(), 3);
    // Two models, 300 rounds each: 1,350 records per model.
    for first in (0..300).step_by(50) {
        let records: Vec<PartialsRecord> =
            (first..first + 50).flat_map(|r| [round("a", r), round("other", r)]).flatten().collect();
        topic.publish(&records, TIMEOUT).expect("published");
    }
    // The newest commit, one ~700 records back, a delta's end, and none.
    assert_eq!(topic.clock_at("a", "predictions", 1, 3_000, TIMEOUT).unwrap(), Some(Some(T0 + 299_000 + 1)));
    assert_eq!(topic.clock_at("a", "predictions", 0, 1_000, TIMEOUT).unwrap(), Some(Some(T0 + 99_000)));
    assert_eq!(topic.clock_at("a", "predictions", 0, 2_980, TIMEOUT).unwrap(), Some(Some(T0 + 297_000)));
    assert_eq!(topic.clock_at("a", "predictions", 2, 3_000, TIMEOUT).unwrap(), Some(None));
    assert_eq!(topic.clock_at("a", "predictions", 1, 3_005, TIMEOUT).unwrap(), None);
    assert_eq!(topic.clock_at("a", "labels", 1, 3_000, TIMEOUT).unwrap(), None);
    // Many at once (a new assignment), over both models' partitions.
    let query = |model: &str, partition, offset| ClockQuery {
        model: model.into(),
        topic: "predictions".into(),
        partition,
        offset,
    };
    let queries = [query("a", 0, 2_000), query("other", 1, 3_000), query("other", 2, 500), query("a", 1, 7)];
    let clocks = topic.clocks_at(&queries, TIMEOUT).unwrap();
    assert_eq!(
        clocks,
        [
            (query("a", 0, 2_000), Some(T0 + 199_000)),
            (query("other", 1, 3_000), Some(T0 + 299_000 + 1)),
            (query("other", 2, 500), None),
        ]
        .into_iter()
        .collect(),
        "the query no record ends at is left out"
    );

    // The newest mark of a model's merger, past other records.
    let mark = |model: &str, next_offset: i64| MergerMark {
        model: model.into(),
        next_offset,
        resume_offset: next_offset - 5,
        closed_through_ms: Some(T0 + next_offset),
        late: Vec::new(),
        awaiting: Vec::new(),
        partitions: Vec::new(),
    };
    assert_eq!(topic.newest_mark("a", TIMEOUT).unwrap(), None);
    topic.publish(&[PartialsRecord::mark("merger", mark("a", 100))], TIMEOUT).unwrap();
    let records: Vec<PartialsRecord> = (300..400).flat_map(|r| round("a", r)).collect();
    topic.publish(&records, TIMEOUT).unwrap();
    topic
        .publish(
            &[PartialsRecord::mark("merger", mark("a", 200)), PartialsRecord::mark("merger", mark("other", 300))],
            TIMEOUT,
        )
        .unwrap();
    topic.publish(&round("a", 400), TIMEOUT).unwrap();
    assert_eq!(topic.newest_mark("a", TIMEOUT).unwrap(), Some(mark("a", 200)));
    assert_eq!(topic.newest_mark("other", TIMEOUT).unwrap(), Some(mark("other", 300)));

    // An existing topic keeps its partition count; every model's records
    // are in the model's own partition.
    let again = PartialsTopic::open(&kafka, "driftwatch-partials", 5, TIMEOUT).unwrap();
    assert_eq!(again.partitions(), 3);
    use rdkafka::consumer::Consumer;
    let reader: rdkafka::consumer::BaseConsumer =
        rdkafka::config::ClientConfig::new().set("bootstrap.servers", broker.bootstrap()).create().unwrap();
    for model in ["a", "other"] {
        let (low, high) =
            reader.fetch_watermarks("driftwatch-partials", partials_partition(model, 3), TIMEOUT).unwrap();
        assert!(high - low >= 1_350, "{model}: {low}..{high}");
    }
}

/// An instance of group `group`: in a cluster (`cluster: true`) or alone.
fn start_instance(broker: &Broker, group: &str, cluster: bool) -> crate::support::InProcessDaemon {
    let cluster = if cluster { "cluster: {partials_topic: partials, publish_interval: 1s}\n" } else { "" };
    let yaml = format!(
        "kafka: {{brokers: \"{}\", group_id: {group}, options: {{session.timeout.ms: \"6000\", heartbeat.interval.ms: \"500\"}}}}\n\
         {cluster}\
         windows: {{size: 1m, allowed_lateness: 10m, label_horizon: 5m}}\n\
         pipeline: {{batch_size: 256, linger: 50ms}}\n\
         http: {{listen: \"127.0.0.1:0\"}}\n\
         models: [{{name: fraud}}]\n",
        broker.bootstrap()
    );
    crate::support::InProcessDaemon::start(Config::from_yaml_str(&yaml, "test.yaml").expect("config"))
}

/// `n` simulated predictions from `start_ms`, keyed so they spread over the
/// partitions, then one prediction an hour later in each of the 3
/// partitions, which lets every window before it close.
fn produce_and_close(broker: &Broker, n: u64, start_ms: i64) {
    use driftwatch::simulate::{Simulator, SimulatorOptions};
    let producer = broker.producer();
    let mut simulator = Simulator::new(SimulatorOptions { start_ms, seed: 20, rate: 50.0, ..Default::default() });
    let mut line = Vec::new();
    for i in 0..n {
        line.clear();
        let time = simulator.next_time_ms();
        simulator.write_prediction(time, &mut line);
        crate::support::send(&producer, "predictions", &format!("e{i}"), line.strip_suffix(b"\n").unwrap());
    }
    for partition in 0..3 {
        line.clear();
        simulator.write_prediction(start_ms + 3_600_000, &mut line);
        let key = format!("closing-{partition}");
        crate::support::send_to_partition(&producer, "predictions", partition, &key, line.strip_suffix(b"\n").unwrap());
    }
    crate::support::flush(&producer);
}

/// Predictions `range` of the stream `produce_and_close` makes (the same
/// events, times and keys), without the closing ones.
fn produce_part(broker: &Broker, range: std::ops::Range<u64>, start_ms: i64) {
    use driftwatch::simulate::{Simulator, SimulatorOptions};
    let producer = broker.producer();
    let mut simulator = Simulator::new(SimulatorOptions { start_ms, seed: 20, rate: 50.0, ..Default::default() });
    let mut line = Vec::new();
    for i in 0..range.end {
        line.clear();
        let time = simulator.next_time_ms();
        simulator.write_prediction(time, &mut line);
        if range.contains(&i) {
            crate::support::send(&producer, "predictions", &format!("e{i}"), line.strip_suffix(b"\n").unwrap());
        }
    }
    crate::support::flush(&producer);
}

/// The cluster's rows (`cluster`, every instance's) before `closing` are
/// the rows of the instance alone: each once, every count equal and every
/// value within 1e-12. Without labels (`labelled: false`) the performance
/// rows are left out: the instance alone writes its empty ones when it
/// stops and closes every window, the cluster's wait for the labels
/// partitions to go idle.
fn assert_same_rows(
    cluster: &[&[driftwatch::window_metrics::WindowMetricRow]],
    alone: &[driftwatch::window_metrics::WindowMetricRow],
    closing: i64,
    labelled: bool,
) {
    let key = |r: &driftwatch::window_metrics::WindowMetricRow| {
        (r.window_start_ms, r.model_version.to_string(), r.segment.to_string(), r.feature.clone(), r.metric.to_string())
    };
    let data = |r: &&driftwatch::window_metrics::WindowMetricRow| {
        r.window_start_ms < closing && (labelled || !matches!(r.metric, "labeled_count" | "label_coverage"))
    };
    let mut merged: Vec<_> = cluster.iter().flat_map(|rows| rows.iter()).filter(data).collect();
    let mut reference: Vec<_> = alone.iter().filter(data).collect();
    merged.sort_by_key(|r| key(r));
    reference.sort_by_key(|r| key(r));
    let keys = |rows: &[&driftwatch::window_metrics::WindowMetricRow]| {
        rows.iter().map(|r| key(r)).collect::<std::collections::BTreeSet<_>>()
    };
    let (got, want) = (keys(&merged), keys(&reference));
    assert_eq!(
        merged.len(),
        reference.len(),
        "missing {:?}; extra {:?}",
        want.difference(&got).take(8).collect::<Vec<_>>(),
        got.difference(&want).take(8).collect::<Vec<_>>()
    );
    for (m, r) in merged.iter().zip(&reference) {
        let close = (m.value - r.value).abs() <= 1e-12 * m.value.abs().max(r.value.abs()).max(1.0)
            || m.value.to_bits() == r.value.to_bits();
        assert!(key(m) == key(r) && m.sample_count == r.sample_count && close, "\ncluster {m:?}\nalone   {r:?}");
    }
}

/// Whole-model counts per window before `before_ms`.
fn counts_before(rows: &[driftwatch::window_metrics::WindowMetricRow], before_ms: i64) -> f64 {
    rows.iter()
        .filter(|r| r.metric == "count" && r.feature.is_none() && r.segment.is_empty() && r.window_start_ms < before_ms)
        .map(|r| r.value)
        .sum()
}

/// A broker with a 3-partition predictions topic (and a labels topic of
/// `label_partitions`), an instance alone, and two instances of a cluster
/// once both own partitions.
fn start_cluster(label_partitions: u32) -> (Broker, [crate::support::InProcessDaemon; 3]) {
    let broker = Broker::start();
    broker.create_topic("predictions", 3);
    broker.create_topic("labels", label_partitions);
    let alone = start_instance(&broker, "alone", false);
    let a = start_instance(&broker, "cluster", true);
    let b = start_instance(&broker, "cluster", true);
    crate::support::wait_until(Duration::from_secs(90), "both cluster instances to own partitions", || {
        use std::sync::atomic::Ordering;
        let (pa, pb) = (
            a.telemetry.assigned_partitions.load(Ordering::Relaxed),
            b.telemetry.assigned_partitions.load(Ordering::Relaxed),
        );
        // Predictions and labels partitions alike.
        pa > 0 && pb > 0 && pa + pb == 3 + i64::from(label_partitions)
    });
    (broker, [alone, a, b])
}

/// Two instances in a cluster give the rows one instance gives alone: each
/// window once, from the instance that merges the model, every count
/// equal and every value within 1e-12.
#[test]
fn two_instances_in_a_cluster_give_the_rows_of_one() {
    let (broker, [mut alone, mut a, mut b]) = start_cluster(1);
    let start_ms = 1_795_687_200_000;
    let closing = start_ms + 3_600_000;
    produce_and_close(&broker, 3_000, start_ms);
    crate::support::wait_until(Duration::from_secs(120), "every window closed, alone and in the cluster", || {
        let merged = counts_before(a.received(), closing) + counts_before(b.received(), closing);
        counts_before(alone.received(), closing) >= 3_000.0 && merged >= 3_000.0
    });
    let (_, rows_alone) = alone.stop();
    let (_, rows_a) = a.stop();
    let (_, rows_b) = b.stop();
    assert!(rows_a.is_empty() || rows_b.is_empty(), "one instance merges the model");
    assert_same_rows(&[&rows_a, &rows_b], &rows_alone, closing, false);
}

/// An instance that leaves the cluster while windows are open hands its
/// partitions and, if it merged the model, its merging over: the rows are
/// still those of one instance alone, each window once.
#[test]
fn an_instance_leaving_a_cluster_mid_window_changes_no_row() {
    let (broker, [mut alone, mut a, b]) = start_cluster(1);
    let start_ms = 1_795_687_200_000;
    let closing = start_ms + 3_600_000;
    // Half a window's events, read by both instances, then one leaves.
    produce_part(&broker, 0..1_500, start_ms);
    crate::support::wait_until(Duration::from_secs(90), "the first half read by the cluster", || {
        a.telemetry.events_on("predictions") + b.telemetry.events_on("predictions") >= 1_500
    });
    let (_, rows_b) = b.stop();
    produce_part(&broker, 1_500..3_000, start_ms);
    produce_and_close(&broker, 0, start_ms);
    crate::support::wait_until(Duration::from_secs(120), "every window closed, alone and in the cluster", || {
        counts_before(alone.received(), closing) >= 3_000.0 && counts_before(a.received(), closing) >= 3_000.0
    });
    let (_, rows_alone) = alone.stop();
    let (_, rows_a) = a.stop();
    assert_same_rows(&[&rows_a, &rows_b], &rows_alone, closing, false);
}

/// `n` simulated predictions from `start_ms` and their labels (80 %, a
/// second to a minute after them, keyed by event id), then a prediction
/// and a label an hour later in each partition, which lets every window
/// before them close and its labels' horizon pass. Returns how many
/// predictions were labelled.
fn produce_labelled_and_close(broker: &Broker, n: u64, start_ms: i64) -> u64 {
    use driftwatch::simulate::{Simulator, SimulatorOptions};
    let producer = broker.producer();
    let mut simulator = Simulator::new(SimulatorOptions { start_ms, seed: 21, rate: 50.0, ..Default::default() });
    let mut line = Vec::new();
    let mut labels = Vec::new();
    for i in 0..n {
        line.clear();
        let time = simulator.next_time_ms();
        if let Some(label) = simulator.write_prediction(time, &mut line) {
            labels.push(label);
        }
        crate::support::send(&producer, "predictions", &format!("e{i}"), line.strip_suffix(b"\n").unwrap());
    }
    labels.sort_by_key(|label| label.time_ms);
    for (i, label) in labels.iter().enumerate() {
        let json = label.json.strip_suffix(b"\n").unwrap_or(&label.json);
        crate::support::send(&producer, "labels", &format!("l{i}"), json);
    }
    for partition in 0..3 {
        line.clear();
        simulator.write_prediction(start_ms + 3_600_000, &mut line);
        let key = format!("closing-{partition}");
        crate::support::send_to_partition(&producer, "predictions", partition, &key, line.strip_suffix(b"\n").unwrap());
        let label = format!(
            r#"{{"event_id":"closing-{partition}","model":"fraud","timestamp":{},"label":0}}"#,
            start_ms + 3_600_000
        );
        crate::support::send_to_partition(&producer, "labels", partition, &key, label.as_bytes());
    }
    crate::support::flush(&producer);
    labels.len() as u64
}

/// Whole-model labelled predictions per window before `before_ms`.
fn labelled_before(rows: &[driftwatch::window_metrics::WindowMetricRow], before_ms: i64) -> f64 {
    rows.iter()
        .filter(|r| {
            r.metric == "labeled_count" && r.feature.is_none() && r.segment.is_empty() && r.window_start_ms < before_ms
        })
        .map(|r| r.value)
        .sum()
}

/// Labels read by whichever instance owns their partition join at the
/// model's merger: two instances give the performance rows of one alone
/// (accuracy, ROC AUC, log loss, labelled count and coverage), each once.
#[test]
fn a_cluster_joins_labels_across_instances_and_gives_the_performance_rows_of_one() {
    let (broker, [mut alone, mut a, mut b]) = start_cluster(3);
    let start_ms = 1_795_687_200_000;
    let closing = start_ms + 3_600_000;
    let labelled = produce_labelled_and_close(&broker, 3_000, start_ms) as f64;
    assert!(labelled > 2_000.0, "{labelled} labels");
    crate::support::wait_until(Duration::from_secs(120), "every label credited, alone and in the cluster", || {
        let merged = labelled_before(a.received(), closing) + labelled_before(b.received(), closing);
        labelled_before(alone.received(), closing) >= labelled && merged >= labelled
    });
    assert_cluster_described(&a, &b);
    let (_, rows_alone) = alone.stop();
    let (_, rows_a) = a.stop();
    let (_, rows_b) = b.stop();
    assert!(rows_a.is_empty() || rows_b.is_empty(), "one instance merges the model");
    let merged = if rows_a.is_empty() { &rows_b } else { &rows_a };
    for metric in ["accuracy", "roc_auc", "log_loss", "label_coverage"] {
        assert!(
            merged.iter().any(|r| r.metric == metric && r.window_start_ms < closing),
            "the cluster wrote {metric} rows"
        );
    }
    assert_same_rows(&[&rows_a, &rows_b], &rows_alone, closing, true);
}

/// `/api/v1/cluster` on either instance lists both (named by their HTTP
/// addresses, neither stale), the partitions each reads (every predictions
/// and labels partition once) and the one that merges the model;
/// `/api/v1/windows` and `/api/v1/alerts` on the other instance name it.
fn assert_cluster_described(a: &crate::support::InProcessDaemon, b: &crate::support::InProcessDaemon) {
    let address = |d: &crate::support::InProcessDaemon| d.telemetry.http_address.lock().unwrap().clone().unwrap();
    let (address_a, address_b) = (address(a), address(b));
    let names = [format!("http://{address_a}"), format!("http://{address_b}")];
    let mut answer = serde_json::Value::Null;
    crate::support::wait_until(Duration::from_secs(60), "the cluster described with its merger", || {
        answer = crate::support::http(&address_a, "GET", "/api/v1/cluster", None).1;
        answer["models"]["fraud"].is_string()
            && answer["members"].as_array().is_some_and(|m| m.len() == 2)
            && answer["members"]
                .as_array()
                .unwrap()
                .iter()
                .all(|m| m["partitions"].as_object().is_some_and(|p| !p.is_empty()))
    });
    assert_eq!(answer["clustered"], true, "{answer}");
    assert_eq!(answer["instance"], names[0], "{answer}");
    let mut members: Vec<String> =
        answer["members"].as_array().unwrap().iter().map(|m| m["instance"].as_str().unwrap().to_string()).collect();
    members.sort();
    let mut expected = names.to_vec();
    expected.sort();
    assert_eq!(members, expected, "{answer}");
    assert!(answer["members"].as_array().unwrap().iter().all(|m| m["stale"] == false), "{answer}");
    for topic in ["predictions", "labels"] {
        let mut partitions: Vec<i64> = answer["members"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|m| m["partitions"][topic].as_array().cloned().unwrap_or_default())
            .map(|p| p.as_i64().unwrap())
            .collect();
        partitions.sort();
        assert_eq!(partitions, [0, 1, 2], "{topic}: each partition read by one member: {answer}");
    }
    let merger = answer["models"]["fraud"].as_str().unwrap().to_string();
    assert!(names.contains(&merger), "{answer}");
    let merging: Vec<&serde_json::Value> = answer["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["models_merged"] == serde_json::json!(["fraud"]))
        .collect();
    assert_eq!(merging.len(), 1, "{answer}");
    assert_eq!(merging[0]["instance"], merger.as_str());
    // The other instance sends a client to the merger.
    let other = if merger == names[0] { &address_b } else { &address_a };
    let windows = crate::support::http(other, "GET", "/api/v1/windows?model=fraud", None).1;
    assert_eq!(windows["merged_elsewhere"]["fraud"], merger.as_str(), "{windows}");
    let alerts = crate::support::http(other, "GET", "/api/v1/alerts", None).1;
    assert_eq!(alerts["merged_elsewhere"]["fraud"], merger.as_str(), "{alerts}");
    let (status, alone) = crate::support::http(
        if merger == names[0] { &address_a } else { &address_b },
        "GET",
        "/api/v1/windows?model=fraud",
        None,
    );
    assert_eq!(status, 200);
    assert!(alone.get("merged_elsewhere").is_none(), "the merger answers for its model: {alone}");
}
