//! decode → window aggregation throughput on one core, over simulated
//! fraud-model events with 25 features (20 numeric, 5 categorical, ~700
//! bytes of JSON each). Reports events/s (criterion "elements").
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

fn events() -> Vec<Vec<u8>> {
    let mut simulator = Simulator::new(SimulatorOptions { rate: 1000.0, ..Default::default() });
    (0..EVENTS)
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
    let events = events();
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
}

criterion_group!(benches, bench);
criterion_main!(benches);
