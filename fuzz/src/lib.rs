//! What the fuzz targets share: a fixed config, sample events and window
//! rows, so each target exercises the code behind its input all the way
//! (decode → windows → statistics; parse → plan → evaluate).

use std::sync::{Arc, OnceLock};

use driftwatch::config::Config;
use driftwatch::output::MemorySink;
use driftwatch::pipeline::Pipeline;
use driftwatch::rules::RuleSet;
use driftwatch::telemetry::Telemetry;
use driftwatch::window_metrics::WindowMetricRow;

/// Two models (classification and regression) with small caps, so fuzzed
/// events reach the caps quickly.
pub const PIPELINE_CONFIG: &str = "models:\n  - {name: shop, task: binary_classification}\n  - {name: price, task: regression}\n\
windows: {size: 1m, allowed_lateness: 30s, label_horizon: 2m}\n\
pipeline: {max_features_per_model: 16, max_segments_per_model: 8, max_categories_per_feature: 16, max_message_bytes: 65536}\n";

pub fn pipeline_config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| Config::from_yaml_str(PIPELINE_CONFIG, "fuzz.yaml").expect("the fuzz config is valid"))
}

/// A fresh pipeline over [`pipeline_config`] (fresh per input, so a crash
/// reproduces from its input alone).
pub fn pipeline() -> Pipeline {
    Pipeline::new(pipeline_config(), Arc::new(Telemetry::default())).expect("pipeline")
}

/// The first 120 events of the committed replay fixture: three numeric and
/// categorical features over two minutes.
pub fn sample_events() -> impl Iterator<Item = &'static [u8]> {
    include_str!("../../tests/fixtures/replay_drift/live.ndjson").lines().take(120).map(str::as_bytes)
}

/// Labels for some of [`sample_events`].
pub fn sample_labels() -> Vec<Vec<u8>> {
    (0..120)
        .step_by(3)
        .map(|i| {
            format!(r#"{{"event_id":"w0-{i}","model":"shop","timestamp":"2026-11-26T10:03:00Z","label":{}}}"#, i % 2)
                .into_bytes()
        })
        .collect()
}

/// Closes every window of `pipeline` into memory and returns the rows.
pub fn finish(pipeline: &mut Pipeline) -> Vec<WindowMetricRow> {
    let mut sink = MemorySink::default();
    pipeline.process(&mut sink).expect("memory sink");
    pipeline.finish(&mut sink).expect("memory sink");
    sink.rows
}

/// Window rows of three windows of the sample events: what fuzzed rules
/// are evaluated on.
pub fn sample_rows() -> &'static [WindowMetricRow] {
    static ROWS: OnceLock<Vec<WindowMetricRow>> = OnceLock::new();
    ROWS.get_or_init(|| {
        let mut pipeline = pipeline();
        for event in sample_events() {
            let _ = pipeline.decode_prediction(event, &"sample");
        }
        for label in sample_labels() {
            let _ = pipeline.decode_label(&label, &"sample");
        }
        finish(&mut pipeline)
    })
}

/// The shipped drift and data-quality rules (`rules/drift.yaml`,
/// `rules/quality.yaml`), checked once. (The `query:` rules of the other
/// files run a SQL query per evaluation, which would make the target too
/// slow to explore the test-file format itself.)
pub fn shipped_rules() -> Arc<RuleSet> {
    static RULES: OnceLock<Arc<RuleSet>> = OnceLock::new();
    RULES
        .get_or_init(|| {
            let sources: Vec<(String, String)> = [
                ("drift.yaml", include_str!("../../rules/drift.yaml")),
                ("quality.yaml", include_str!("../../rules/quality.yaml")),
            ]
            .iter()
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .collect();
            Arc::new(RuleSet::from_sources(&sources, None).expect("the shipped rules load"))
        })
        .clone()
}

/// Evaluates `rules` on the sample rows, window by window, as the daemon does.
pub fn evaluate(rules: Arc<RuleSet>) {
    let mut engine = driftwatch::rules::lifecycle::AlertEngine::new(rules, std::time::Duration::from_secs(3600));
    let rows = sample_rows();
    let mut start = 0;
    while start < rows.len() {
        let end_ms = rows[start].window_end_ms;
        let len = rows[start..].iter().take_while(|r| r.window_end_ms == end_ms).count();
        let _ = engine.evaluate(&rows[start..start + len]);
        start += len;
    }
}

/// `text` as a JSON string literal (also a YAML double-quoted scalar).
pub fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
