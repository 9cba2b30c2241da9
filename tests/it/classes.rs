//! Class values of binary models (issue 16): what the task cannot mean is
//! rejected as `bad_class`, and named classes (`positive_class`,
//! `negative_class`) are counted as the user said.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use driftwatch::config::Config;
use driftwatch::decode::InvalidReason;
use driftwatch::drivers::replay::replay;
use driftwatch::output::MemorySink;
use driftwatch::telemetry::Telemetry;

/// 40 predictions and their labels, "yes"/"no": the prediction is right
/// for 30 of them; 20 labels are "yes", 15 of those predicted "yes".
fn write_yes_no_events(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (mut predictions, mut labels) = (String::new(), String::new());
    for i in 0..40 {
        let actual = if i < 20 { "yes" } else { "no" };
        let predicted = match i {
            0..15 => "yes",
            15..20 => "no",
            20..25 => "yes",
            _ => "no",
        };
        let time = 1_795_687_200_000i64 + i * 1000;
        writeln!(
            predictions,
            r#"{{"event_id":"e{i}","model":"churn","timestamp":{time},"prediction":"{predicted}","features":{{"x":{i}}}}}"#
        )
        .unwrap();
        writeln!(labels, r#"{{"event_id":"e{i}","model":"churn","timestamp":{time},"label":"{actual}"}}"#).unwrap();
    }
    let (p, l) = (dir.join("predictions.ndjson"), dir.join("labels.ndjson"));
    std::fs::write(&p, predictions).unwrap();
    std::fs::write(&l, labels).unwrap();
    (p, l)
}

fn replay_with(models: &str, dir: &Path) -> (MemorySink, Arc<Telemetry>) {
    let (predictions, labels) = write_yes_no_events(dir);
    let yaml = format!("windows: {{size: 5m, slide: 5m, allowed_lateness: 0s, label_horizon: 1h}}\nmodels:\n{models}");
    let config = Config::from_yaml_str(&yaml, "classes.yaml").unwrap();
    let telemetry = Arc::new(Telemetry::default());
    let mut sink = MemorySink::default();
    replay(&config, &[predictions], &[labels], &mut sink, telemetry.clone()).unwrap();
    (sink, telemetry)
}

fn metric(sink: &MemorySink, name: &str) -> Option<f64> {
    sink.rows.iter().find(|r| r.feature.is_none() && r.segment.is_empty() && r.metric == name).map(|r| r.value)
}

/// Regression: a stream of "yes"/"no" reported accuracy 1.0 with 0
/// invalid, every value counted as the negative class.
#[test]
fn yes_no_events_of_a_plain_binary_model_are_rejected_as_bad_class() {
    let dir = tempfile::tempdir().unwrap();
    let (sink, telemetry) = replay_with("  - {name: churn, task: binary_classification}\n", dir.path());
    assert_eq!(telemetry.invalid_count(InvalidReason::BadClass), 80, "40 predictions and 40 labels");
    assert_eq!(telemetry.invalid_total(), 80);
    assert_eq!(metric(&sink, "accuracy"), None, "no performance from values the task cannot mean");
}

#[test]
fn named_classes_count_yes_as_positive() {
    let dir = tempfile::tempdir().unwrap();
    let models = "  - {name: churn, positive_class: \"yes\", negative_class: \"no\"}\n";
    let (sink, telemetry) = replay_with(models, dir.path());
    assert_eq!(telemetry.invalid_total(), 0);
    assert_eq!(metric(&sink, "accuracy"), Some(30.0 / 40.0));
    // "yes" is the positive class: 15 true positives, 5 false positives,
    // 5 false negatives.
    assert_eq!(metric(&sink, "precision"), Some(15.0 / 20.0));
    assert_eq!(metric(&sink, "recall"), Some(15.0 / 20.0));
}
