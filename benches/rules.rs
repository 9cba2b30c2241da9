//! Rule evaluation cost per closed window: the 12 shipped rules over the
//! rows one window of a 25-feature model yields (about 560 rows: drift,
//! quality and performance metrics), evaluated window after window so
//! alert states and the query rules' history are live.
//!
//! Run: `cargo bench --bench rules`

use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use driftwatch::rules::{AlertEngine, RuleSet};
use driftwatch::window_metrics::{METRIC_NAMES, WindowMetricRow};

fn window_rows(window: i64) -> Vec<WindowMetricRow> {
    let t0 = 1_795_687_200_000i64 + window * 300_000;
    let mut rows = Vec::new();
    let mut push = |feature: Option<&str>, metric: &'static str, value: f64| {
        rows.push(WindowMetricRow {
            model: "fraud".into(),
            model_version: "3".into(),
            segment: "".into(),
            window_start_ms: t0,
            window_end_ms: t0 + 300_000,
            feature: feature.map(Into::into),
            metric,
            value,
            baseline: Some(0.1),
            threshold: Some(0.2),
            p_value: Some(0.5),
            drifted: Some(value > 0.2),
            sample_count: 5000,
        })
    };
    for f in 0..25 {
        let name = format!("f{f}");
        for metric in METRIC_NAMES.iter().take(18) {
            // Every fifth window, a few features drift.
            let value = if window % 5 == 0 && f < 3 { 0.5 } else { 0.05 };
            push(Some(&name), metric, value);
        }
    }
    for metric in METRIC_NAMES.iter().skip(18) {
        push(None, metric, 0.95);
    }
    rows
}

fn bench(c: &mut Criterion) {
    let paths: Vec<_> = ["drift", "performance", "quality", "pipeline"]
        .iter()
        .map(|f| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules").join(format!("{f}.yaml")))
        .collect();
    let rules = Arc::new(RuleSet::load(&paths, None).expect("shipped rules"));
    let windows: Vec<Vec<WindowMetricRow>> = (0..50).map(window_rows).collect();
    let mut group = c.benchmark_group("rules");
    group.throughput(Throughput::Elements(windows.len() as u64));
    group.sample_size(10);
    group.bench_function("shipped_rules_per_window", |b| {
        b.iter(|| {
            let mut engine = AlertEngine::new(rules.clone(), std::time::Duration::from_secs(3600));
            for rows in &windows {
                std::hint::black_box(engine.evaluate(rows));
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
