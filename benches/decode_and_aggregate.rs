//! decode → window aggregation throughput on one core, over simulated
//! fraud-model events with 25 features (20 numeric, 5 categorical, ~700
//! bytes of JSON each). Reports events/s (criterion "elements").
//!
//! `replay_lanes/lanes_N` replays the same kind of events from four files
//! (four partitions) with N lanes: the events/s of 1 and 2 lanes give the
//! scaling per core.
//!
//! Run: `cargo bench --bench decode_and_aggregate`

use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use driftwatch::config::Config;
use driftwatch::output::MemorySink;
use driftwatch::pipeline::Pipeline;
use driftwatch::simulate::{Simulator, SimulatorOptions};
use driftwatch::telemetry::Telemetry;

const EVENTS: usize = 50_000;

fn simulated_events(count: usize) -> Vec<Vec<u8>> {
    let mut simulator = Simulator::new(SimulatorOptions { rate: 1000.0, ..Default::default() });
    (0..count)
        .map(|_| {
            let mut line = Vec::with_capacity(800);
            let time = simulator.next_time_ms();
            simulator.write_prediction(time, &mut line);
            line.pop();
            line
        })
        .collect()
}

fn config() -> Config {
    Config::from_yaml_str(
        "windows: {size: 5m, allowed_lateness: 10s}\npipeline: {batch_size: 8192}\nmodels: [{name: fraud}]\n",
        "bench.yaml",
    )
    .expect("bench config")
}

fn bench(c: &mut Criterion) {
    let events = simulated_events(EVENTS);
    let bytes: usize = events.iter().map(Vec::len).sum();
    eprintln!("{} events, {} bytes each on average", events.len(), bytes / events.len());
    let config = config();
    let mut group = c.benchmark_group("decode_and_aggregate");
    group.throughput(Throughput::Elements(events.len() as u64));
    group.sample_size(10);
    group.bench_function("decode_only", |b| {
        b.iter(|| {
            let mut pipeline = Pipeline::new(&config, Arc::new(Telemetry::default())).unwrap();
            for chunk in events.chunks(8192) {
                for event in chunk {
                    pipeline.decode_prediction(event, &"bench").unwrap();
                }
                std::hint::black_box(pipeline.decoder.finish_predictions());
            }
        })
    });
    group.bench_function("decode_window_aggregate", |b| {
        b.iter(|| {
            let mut pipeline = Pipeline::new(&config, Arc::new(Telemetry::default())).unwrap();
            let mut sink = MemorySink::default();
            for chunk in events.chunks(8192) {
                for event in chunk {
                    pipeline.decode_prediction(event, &"bench").unwrap();
                }
                pipeline.process(&mut sink).unwrap();
            }
            pipeline.finish(&mut sink).unwrap();
            std::hint::black_box(sink.rows.len())
        })
    });
    group.finish();

    // 200,000 events dealt over four files, read by 1 or 2 lanes.
    let dir = tempfile::tempdir().expect("temp dir");
    let mut texts = vec![Vec::new(); 4];
    let all = simulated_events(4 * EVENTS);
    for (n, event) in all.iter().enumerate() {
        texts[n % 4].extend_from_slice(event);
        texts[n % 4].push(b'\n');
    }
    let mut files = Vec::new();
    for (file, text) in texts.iter().enumerate() {
        let path = dir.path().join(format!("predictions-{file}.ndjson"));
        std::fs::write(&path, text).expect("write events");
        files.push(path);
    }
    let mut group = c.benchmark_group("replay_lanes");
    group.throughput(Throughput::Elements(all.len() as u64));
    group.sample_size(10);
    for lanes in [1, 2] {
        group.bench_function(format!("lanes_{lanes}"), |b| {
            b.iter(|| {
                let mut sink = MemorySink::default();
                let telemetry = Arc::new(Telemetry::default());
                let summary =
                    driftwatch::drivers::replay::replay_with_lanes(&config, &files, &[], &mut sink, telemetry, lanes)
                        .expect("replay");
                std::hint::black_box(summary.rows)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
