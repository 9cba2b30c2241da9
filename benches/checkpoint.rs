//! The cost of a checkpoint: encoding the state of a busy model (25
//! features, 5 regions, 50,000 events in open 5-minute windows, 50,000
//! predictions waiting for labels) and decoding it back. The size is
//! printed. The daemon writes one every `state.checkpoint_interval` (10 s).
//!
//! Run: `cargo bench --bench checkpoint`

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use driftwatch::checkpoint::{Offsets, decode};
use driftwatch::config::Config;
use driftwatch::output::MemorySink;
use driftwatch::pipeline::Pipeline;
use driftwatch::simulate::{Simulator, SimulatorOptions};
use driftwatch::telemetry::Telemetry;

fn busy_pipeline() -> Pipeline {
    let config = Config::from_yaml_str(
        "windows: {size: 5m, allowed_lateness: 10s, label_horizon: 1h}\nmodels: [{name: fraud}]\n",
        "bench.yaml",
    )
    .expect("bench config");
    let mut pipeline = Pipeline::new(&config, Arc::new(Telemetry::default())).unwrap();
    let mut simulator = Simulator::new(SimulatorOptions { rate: 1000.0, ..Default::default() });
    let mut sink = MemorySink::default();
    let mut line = Vec::with_capacity(800);
    for i in 0..50_000 {
        line.clear();
        let time = simulator.next_time_ms();
        simulator.write_prediction(time, &mut line);
        line.pop();
        pipeline.decode_prediction(&line, &"bench").unwrap();
        if i % 8192 == 8191 {
            pipeline.process(&mut sink).unwrap();
        }
    }
    pipeline.process(&mut sink).unwrap();
    pipeline
}

fn bench(c: &mut Criterion) {
    let pipeline = busy_pipeline();
    let offsets = Offsets::new();
    let bytes = pipeline.encode_checkpoint(&offsets, None, &BTreeMap::new(), None).unwrap();
    eprintln!(
        "checkpoint of {} open windows and {} pending joins: {} bytes",
        pipeline.engine.open_windows(),
        pipeline.engine.pending_joins(),
        bytes.len()
    );
    let mut group = c.benchmark_group("checkpoint");
    group.sample_size(10);
    group.bench_function("encode", |b| {
        b.iter(|| std::hint::black_box(pipeline.encode_checkpoint(&offsets, None, &BTreeMap::new(), None).unwrap()))
    });
    group.bench_function("decode", |b| b.iter(|| std::hint::black_box(decode(Path::new("bench"), &bytes).unwrap())));
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
