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
