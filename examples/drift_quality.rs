//! Statistical quality of the `drifted` verdicts, measured (issue 3 item 7).
//!
//! Builds a baseline from 200,000 synthetic reference rows (5 numeric
//! features, standard normal; 2 categorical), then streams synthetic events
//! through the real pipeline (decode → windows → drift rows) with windows
//! of exactly n events, and reports the share of drift rows marked
//! `drifted`:
//! - no drift, n = 100, 1,000, 10,000 (want < 1%);
//! - a 0.25σ mean shift of feature `x0`, n = 5,000 (want ≥ 95% of windows);
//! - a 10-point change in the category mix of `c0`, n = 5,000 (want ≥ 95%).
//!
//! Run: `cargo run --release --example drift_quality`

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;

use driftwatch::config::Config;
use driftwatch::output::MemorySink;
use driftwatch::pipeline::Pipeline;
use driftwatch::profiling::{BuildOptions, build_baseline};
use driftwatch::rng::Rng;
use driftwatch::telemetry::Telemetry;

const NUMERIC: usize = 5;
const CATEGORIES: [&str; 4] = ["a", "b", "c", "d"];
const MIX: [f64; 4] = [0.5, 0.3, 0.15, 0.05];
const SHIFTED_MIX: [f64; 4] = [0.4, 0.4, 0.15, 0.05];

fn pick(rng: &mut Rng, weights: &[f64; 4]) -> &'static str {
    let mut x = rng.uniform();
    for (c, w) in CATEGORIES.iter().zip(weights) {
        if x < *w {
            return c;
        }
        x -= w;
    }
    CATEGORIES[3]
}

struct Scenario {
    name: &'static str,
    window: usize,
    windows: usize,
    shift: f64,
    mix: [f64; 4],
    /// (feature, metric) rows whose drifted share is reported as power.
    watched: &'static str,
}

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut rng = Rng::new(2026);
    // Reference data.
    let train = dir.path().join("train.csv");
    let mut csv = std::io::BufWriter::new(std::fs::File::create(&train).unwrap());
    let header: Vec<String> =
        (0..NUMERIC).map(|i| format!("x{i}")).chain(["c0".to_string(), "c1".to_string()]).collect();
    writeln!(csv, "{}", header.join(",")).unwrap();
    for _ in 0..200_000 {
        let numbers: Vec<String> = (0..NUMERIC).map(|_| format!("{:.6}", rng.normal())).collect();
        writeln!(csv, "{},{},{}", numbers.join(","), pick(&mut rng, &MIX), pick(&mut rng, &MIX)).unwrap();
    }
    drop(csv);
    let baseline_path = dir.path().join("baseline.json");
    let mut options = BuildOptions::new(vec![train.display().to_string()], "m");
    options.progress = false;
    build_baseline(&options).expect("baseline").save(&baseline_path).unwrap();

    let scenarios = [
        Scenario { name: "no drift", window: 100, windows: 2_000, shift: 0.0, mix: MIX, watched: "" },
        Scenario { name: "no drift", window: 1_000, windows: 500, shift: 0.0, mix: MIX, watched: "" },
        Scenario { name: "no drift", window: 10_000, windows: 100, shift: 0.0, mix: MIX, watched: "" },
        Scenario { name: "x0 mean +0.25σ", window: 5_000, windows: 100, shift: 0.25, mix: MIX, watched: "x0" },
        Scenario {
            name: "c0 mix a −10, b +10 pts",
            window: 5_000,
            windows: 100,
            shift: 0.0,
            mix: SHIFTED_MIX,
            watched: "c0",
        },
    ];
    println!(
        "| scenario | events/window | windows | drift rows | healthy rows marked drifted | per metric (the drifting feature's rows, else all) |"
    );
    println!("|---|---|---|---|---|---|");
    for scenario in &scenarios {
        let yaml = format!(
            "windows: {{size: {}ms, allowed_lateness: 0s, label_horizon: 0s}}\n\
             pipeline: {{batch_size: 8192}}\n\
             models: [{{name: m, baseline: {}}}]\n",
            scenario.window,
            baseline_path.display()
        );
        let config = Config::from_yaml_str(&yaml, "eval.yaml").expect("config");
        let mut pipeline = Pipeline::new(&config, Arc::new(Telemetry::default())).expect("pipeline");
        let mut sink = MemorySink::default();
        let t0 = 1_795_687_200_000i64;
        let mut line = String::new();
        for i in 0..(scenario.window * scenario.windows) as i64 {
            line.clear();
            line.push_str(&format!(
                "{{\"event_id\":\"{i}\",\"model\":\"m\",\"timestamp\":{},\"prediction\":1,\"features\":{{",
                t0 + i
            ));
            for f in 0..NUMERIC {
                let shift = if f == 0 { scenario.shift } else { 0.0 };
                line.push_str(&format!("\"x{f}\":{:.6},", rng.normal() + shift));
            }
            line.push_str(&format!(
                "\"c0\":\"{}\",\"c1\":\"{}\"}}}}",
                pick(&mut rng, &scenario.mix),
                pick(&mut rng, &MIX)
            ));
            pipeline.decode_prediction(line.as_bytes(), &"eval").expect("valid event");
            if pipeline.decoder.buffered_predictions() >= 8192 {
                pipeline.process(&mut sink).unwrap();
            }
        }
        pipeline.finish(&mut sink).unwrap();
        let judged: Vec<_> = sink.rows.iter().filter(|r| r.drifted.is_some()).collect();
        // Healthy rows: every row in the no-drift scenarios, the other
        // features' rows when one feature drifts.
        let healthy: Vec<_> = judged
            .iter()
            .filter(|r| scenario.watched.is_empty() || r.feature.as_deref() != Some(scenario.watched))
            .collect();
        let false_alarms = healthy.iter().filter(|r| r.drifted == Some(true)).count();
        let mut per_metric: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
        for row in &judged {
            if !scenario.watched.is_empty() && row.feature.as_deref() != Some(scenario.watched) {
                continue;
            }
            let entry = per_metric.entry(row.metric).or_default();
            entry.0 += usize::from(row.drifted == Some(true));
            entry.1 += 1;
        }
        let metrics: Vec<String> =
            per_metric.iter().map(|(m, (d, n))| format!("{m} {:.1}%", 100.0 * *d as f64 / *n as f64)).collect();
        let label = if scenario.watched.is_empty() {
            scenario.name.to_string()
        } else {
            format!("{} (rows of {})", scenario.name, scenario.watched)
        };
        println!(
            "| {label} | {} | {} | {} | {:.2}% | {} |",
            scenario.window,
            scenario.windows,
            judged.len(),
            100.0 * false_alarms as f64 / healthy.len().max(1) as f64,
            metrics.join(", ")
        );
    }
}
