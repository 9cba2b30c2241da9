//! decode → window aggregation throughput on one core, over simulated
//! fraud-model events with 25 features (20 numeric, 5 categorical, ~700
//! bytes of JSON each). Reports events/s (criterion "elements").
//!
//! `replay_lanes/lanes_N` replays the same kind of events from four files
//! (four partitions) with N lanes: the events/s of 1 and 2 lanes give the
//! scaling per core.
//!
//! `daemon_lanes/lanes_N` drives the daemon's closer
//! (`driftwatch::daemon::closer`) with N lane threads over the same
//! 200,000 events as micro-batches of 8,192 messages from four partitions,
//! as the Kafka consumer hands them over (no broker: what a broker can
//! serve is its own limit).
//!
//! Run: `cargo bench --bench decode_and_aggregate`

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use driftwatch::config::Config;
use driftwatch::daemon::closer::Closer;
use driftwatch::daemon::lanes::{IN_FLIGHT_BATCHES, Lanes};
use driftwatch::output::MemorySink;
use driftwatch::pipeline::Pipeline;
use driftwatch::simulate::{Simulator, SimulatorOptions};
use driftwatch::sources::kafka::{SourceBatch, Stream};
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

    // The same 200,000 events as the daemon's consumer hands them over:
    // micro-batches of 8,192 messages, 2,048 from each of four partitions.
    let mut batches = Vec::new();
    let mut offsets = [0i64; 4];
    for chunk in all.chunks(8192) {
        let messages: Vec<Message<'_>> = chunk
            .iter()
            .enumerate()
            .map(|(n, event)| {
                let partition = n % 4;
                offsets[partition] += 1;
                (Stream::Predictions, partition as i32, offsets[partition] - 1, event.as_slice())
            })
            .collect();
        batches.push(messages);
    }
    let mut group = c.benchmark_group("daemon_lanes");
    group.throughput(Throughput::Elements(all.len() as u64));
    group.sample_size(10);
    for lanes in [1, 2] {
        // The consumer's work (copying payloads into a batch) is left out.
        let source_batches = || -> Vec<SourceBatch> {
            batches.iter().map(|b| SourceBatch::from_messages(0, Instant::now(), b.iter().copied())).collect()
        };
        group.bench_function(format!("lanes_{lanes}"), |b| {
            b.iter_batched(
                source_batches,
                |batches| std::hint::black_box(run_closer(&config, batches, lanes)),
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

/// A message as the consumer hands it over: (stream, partition, offset, payload).
type Message<'a> = (Stream, i32, i64, &'a [u8]);

/// The daemon's closer with `lanes` lanes over `batches`, as its loop runs
/// it (at most `IN_FLIGHT_BATCHES` in flight); returns the rows written.
fn run_closer(config: &Config, batches: Vec<SourceBatch>, lanes: usize) -> usize {
    let telemetry = Arc::new(Telemetry::default());
    let mut pipeline = Pipeline::new(config, telemetry.clone()).expect("pipeline");
    pipeline.engine.declare_partitions(&[0, 1, 2, 3]);
    let mut sink = MemorySink::default();
    std::thread::scope(|scope| {
        let (lanes, threads) =
            Lanes::spawn(scope, config, &pipeline.registry, lanes, telemetry, "predictions").expect("lanes");
        let mut closer = Closer::new(lanes, "predictions", "labels", false);
        let mut finished = Vec::new();
        for batch in batches {
            while closer.in_flight() >= IN_FLIGHT_BATCHES {
                let lane = closer.awaited_lane().expect("a run in flight");
                if let Some(done) = closer.wait_done(lane, Duration::from_secs(60)).expect("lane") {
                    closer.advance(&mut pipeline, Some((lane, done)), &mut finished).expect("advance");
                }
            }
            closer.dispatch(&mut pipeline, batch, &mut finished).expect("dispatch");
            if !finished.is_empty() {
                finished.clear();
                pipeline.emit(&mut sink).expect("rows");
            }
        }
        closer.drain(&mut pipeline, &mut finished).expect("drain");
        closer.hand_over(&mut pipeline, None, false, &mut finished).expect("hand over");
        pipeline.finish(&mut sink).expect("rows");
        drop(closer);
        for thread in threads {
            thread.join().expect("lane");
        }
    });
    sink.rows.len()
}

criterion_group!(benches, bench);
criterion_main!(benches);
