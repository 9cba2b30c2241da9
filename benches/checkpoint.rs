//! The cost of a checkpoint: encoding the state of a busy model (25
//! features, 5 regions, 50,000 events in open 5-minute windows, 50,000
//! predictions waiting for labels) and decoding it back. The size is
//! printed. The daemon writes one every `state.checkpoint_interval` (10 s).
//!
//! And the join store's part, with the joins on disk: 1,000,000
//! predictions waiting (a `label_horizon` of a day), then 100,000 more
//! between two checkpoints (10 s at 10,000 events/s); the checkpoint
//! writes the joins' recent entries, flushes the store's write buffers and
//! hard-links its files. The store's size and the checkpoint's are printed.
//!
//! Run: `cargo bench --bench checkpoint` (`DRIFTWATCH_BENCH_JOINS=N`
//! waits N predictions instead of 1,000,000)

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    push_predictions(&mut pipeline, &mut simulator, 50_000);
    pipeline
}

/// Decodes and processes `count` simulated predictions.
fn push_predictions(pipeline: &mut Pipeline, simulator: &mut Simulator, count: usize) {
    let mut sink = MemorySink::default();
    let mut line = Vec::with_capacity(800);
    for i in 0..count {
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
}

/// Bytes of the files under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map_or(0, |entries| entries.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
}

/// The join store's checkpoint (see the module doc).
fn bench_join_store(c: &mut Criterion) {
    // Under `cargo test` (a smoke run) a small store will do.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let waiting = std::env::var("DRIFTWATCH_BENCH_JOINS").ok().and_then(|n| n.parse().ok()).unwrap_or(if smoke {
        20_000
    } else {
        1_000_000
    });
    let between = (waiting / 10).max(1);
    let dir = tempfile::tempdir().unwrap();
    let config = Config::from_yaml_str(
        "windows: {size: 1h, allowed_lateness: 10s, label_horizon: 24h}\n\
         pipeline: {max_pending_joins: 100000000}\nmodels: [{name: fraud}]\n",
        "bench.yaml",
    )
    .expect("bench config");
    let mut pipeline = Pipeline::new(&config, Arc::new(Telemetry::default())).unwrap();
    let store =
        driftwatch::join::store::JoinStore::open(&dir.path().join("joins"), driftwatch::config::DEFAULT_JOIN_MEMORY)
            .unwrap();
    pipeline.engine.use_join_store(&store, config.pipeline.max_pending_joins);
    let mut simulator = Simulator::new(SimulatorOptions { rate: 10_000.0, ..Default::default() });
    push_predictions(&mut pipeline, &mut simulator, waiting);
    let mut sequence = 0;
    let mut checkpoint = |pipeline: &mut Pipeline| {
        sequence += 1;
        let target = dir.path().join(format!("checkpoint-{sequence}.joins"));
        let started = Instant::now();
        pipeline.engine.checkpoint_join_store(&target).unwrap();
        let elapsed = started.elapsed();
        (target, elapsed)
    };
    let (first, elapsed) = checkpoint(&mut pipeline);
    eprintln!(
        "join store checkpoint of {} waiting predictions: {elapsed:?}, store {} MB on disk, checkpoint {} MB (hard links)",
        pipeline.engine.pending_joins(),
        store.disk_bytes() / 1_000_000,
        dir_bytes(&first) / 1_000_000,
    );
    std::fs::remove_dir_all(&first).unwrap();
    let mut group = c.benchmark_group("checkpoint");
    // Each iteration first writes `between` predictions (untimed): few of them.
    group.sample_size(10).sampling_mode(criterion::SamplingMode::Flat).warm_up_time(Duration::from_millis(1));
    group.measurement_time(Duration::from_millis(100));
    group.bench_function(format!("join store, {between} predictions since the last"), |b| {
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                push_predictions(&mut pipeline, &mut simulator, between);
                let (target, elapsed) = checkpoint(&mut pipeline);
                total += elapsed;
                std::fs::remove_dir_all(&target).unwrap();
            }
            total
        })
    });
    group.finish();
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

criterion_group!(benches, bench, bench_join_store);
criterion_main!(benches);
