//! `driftwatch rules test`: rule unit tests, like `promtool test rules`.
//!
//! A test file names rule files and gives test cases: `window_metrics`
//! rows in (single rows or series of values over consecutive windows) and
//! the exact alert transitions expected out, each at an evaluation time
//! (the `window_end` of the window that caused it). The format is
//! documented in `docs/RULES.md`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::lifecycle::{AlertEngine, Transition};
use super::ruleset::RuleSet;
use crate::timestamp::{format_rfc3339_ms, parse_rfc3339_ms};
use crate::window_metrics::{METRIC_NAMES, WindowMetricRow};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    /// Rule files, relative to the test file.
    rule_files: Vec<String>,
    /// Notifier names the rules may use (default: not checked).
    #[serde(default)]
    notifiers: Option<Vec<String>>,
    /// Window length of the input rows (default 5m).
    #[serde(default)]
    window: Option<String>,
    /// History kept for `query` rules (default 1h).
    #[serde(default)]
    history: Option<String>,
    tests: Vec<TestCase>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestCase {
    name: String,
    input: Vec<InputRows>,
    /// Exactly these transitions, in this order.
    #[serde(default)]
    expect: Vec<Expected>,
}

/// One row (`window_start` + `value`) or a series (`start` + `values`, one
/// per consecutive window; `null` skips a window).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InputRows {
    model: String,
    #[serde(default)]
    model_version: String,
    #[serde(default)]
    segment: String,
    #[serde(default)]
    feature: Option<String>,
    metric: String,
    #[serde(default)]
    window_start: Option<String>,
    #[serde(default)]
    value: Option<f64>,
    #[serde(default)]
    start: Option<String>,
    #[serde(default)]
    values: Option<Vec<Option<f64>>>,
    #[serde(default)]
    baseline: Option<f64>,
    #[serde(default)]
    threshold: Option<f64>,
    #[serde(default)]
    p_value: Option<f64>,
    /// Default: `value > threshold` when a threshold is given.
    #[serde(default)]
    drifted: Option<bool>,
    #[serde(default)]
    sample_count: i64,
}

/// An expected transition; absent fields match anything, `labels` and
/// `annotations` must contain the given entries.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expected {
    at: String,
    alert: String,
    state: String,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    model_version: Option<String>,
    #[serde(default)]
    segment: Option<String>,
    #[serde(default)]
    feature: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    notify: Option<Vec<String>>,
}

/// The outcome of one test file.
#[derive(Debug, Default)]
pub struct TestReport {
    pub passed: usize,
    /// Each failure: the test's name and a readable explanation.
    pub failures: Vec<(String, String)>,
}

fn duration(text: Option<&str>, default: Duration, what: &str) -> Result<Duration, String> {
    let d = match text {
        None => default,
        Some(t) => humantime::parse_duration(t).map_err(|e| format!("{what}: {t:?}: {e}"))?,
    };
    if d.is_zero() || d > crate::config::MAX_DURATION {
        return Err(format!("{what}: must be more than 0 and at most 100 years"));
    }
    Ok(d)
}

fn time(text: &str, what: &str) -> Result<i64, String> {
    parse_rfc3339_ms(text).ok_or_else(|| format!("{what}: {text:?} is not an RFC 3339 time"))
}

fn rows_of(input: &InputRows, window_ms: i64, case: &str) -> Result<Vec<WindowMetricRow>, String> {
    let metric = METRIC_NAMES
        .iter()
        .copied()
        .find(|m| *m == input.metric)
        .ok_or_else(|| format!("{case}: unknown metric {:?}", input.metric))?;
    let points: Vec<(i64, f64)> = match (&input.window_start, input.value, &input.start, &input.values) {
        (Some(start), Some(value), None, None) => vec![(time(start, case)?, value)],
        (None, None, Some(start), Some(values)) => {
            let start = time(start, case)?;
            let at = |i: usize| (i as i64).checked_mul(window_ms).and_then(|offset| start.checked_add(offset));
            let mut points = Vec::with_capacity(values.len());
            for (i, value) in values.iter().enumerate() {
                let Some(value) = value else { continue };
                let time = at(i).ok_or_else(|| format!("{case}: window {i} after {start} lies beyond any time"))?;
                points.push((time, *value));
            }
            points
        }
        _ => {
            return Err(format!("{case}: an input gives either `window_start` and `value`, or `start` and `values`"));
        }
    };
    Ok(points
        .into_iter()
        .map(|(start, value)| WindowMetricRow {
            model: input.model.as_str().into(),
            model_version: input.model_version.as_str().into(),
            segment: input.segment.as_str().into(),
            window_start_ms: start,
            window_end_ms: start + window_ms,
            feature: input.feature.as_deref().map(Into::into),
            metric,
            value,
            baseline: input.baseline,
            threshold: input.threshold,
            p_value: input.p_value,
            drifted: input.drifted.or(input.threshold.map(|t| value > t)),
            sample_count: input.sample_count,
        })
        .collect())
}

fn describe(t: &Transition) -> String {
    let mut text = format!("at {} {} {} model={}", t.evaluation_time, t.alert, t.state, t.model);
    if !t.model_version.is_empty() {
        text.push_str(&format!(" model_version={}", t.model_version));
    }
    if !t.segment.is_empty() {
        text.push_str(&format!(" segment={}", t.segment));
    }
    if let Some(f) = &t.feature {
        text.push_str(&format!(" feature={f}"));
    }
    if !t.notify.is_empty() {
        text.push_str(&format!(" notify={}", t.notify.join(",")));
    }
    // As rendered, so a template that renders differently than expected
    // shows how.
    for (k, v) in &t.labels {
        text.push_str(&format!(" labels.{k}={v:?}"));
    }
    for (k, v) in &t.annotations {
        text.push_str(&format!(" annotations.{k}={v:?}"));
    }
    text
}

fn describe_expected(e: &Expected) -> String {
    let mut text = format!("at {} {} {}", e.at, e.alert, e.state);
    for (key, value) in
        [("model", &e.model), ("model_version", &e.model_version), ("segment", &e.segment), ("feature", &e.feature)]
    {
        if let Some(v) = value {
            text.push_str(&format!(" {key}={v}"));
        }
    }
    if let Some(n) = &e.notify {
        text.push_str(&format!(" notify={}", n.join(",")));
    }
    for (k, v) in &e.labels {
        text.push_str(&format!(" labels.{k}={v:?}"));
    }
    for (k, v) in &e.annotations {
        text.push_str(&format!(" annotations.{k}={v:?}"));
    }
    text
}

fn matches(e: &Expected, t: &Transition) -> Result<bool, String> {
    let at = time(&e.at, "at")?;
    Ok(format_rfc3339_ms(at) == t.evaluation_time
        && e.alert == t.alert
        && e.state == t.state
        && e.model.as_ref().is_none_or(|m| *m == t.model)
        && e.model_version.as_ref().is_none_or(|m| *m == t.model_version)
        && e.segment.as_ref().is_none_or(|m| *m == t.segment)
        && e.feature.as_ref().is_none_or(|f| Some(f) == t.feature.as_ref())
        && e.notify.as_ref().is_none_or(|n| *n == t.notify)
        && e.labels.iter().all(|(k, v)| t.labels.get(k) == Some(v))
        && e.annotations.iter().all(|(k, v)| t.annotations.get(k) == Some(v)))
}

/// Runs one test file. `Err`: the file itself is broken (unreadable,
/// invalid, or its rules fail to load).
pub fn run_test_file(path: &Path) -> Result<TestReport, String> {
    let display = path.display().to_string();
    let text = crate::fsutil::read_text_file_bounded(path, crate::fsutil::MAX_TEXT_FILE_BYTES)
        .map_err(|e| format!("{display}: {e}"))?;
    run_test_text(&text, &display, path.parent().unwrap_or(Path::new(".")), None)
}

/// Runs a test file given as text. Its `rule_files` are read relative to
/// `base`, unless `rules` is given: then the cases run against those rules
/// (the fuzz target does this, so it never touches the disk).
pub fn run_test_text(
    text: &str,
    display: &str,
    base: &Path,
    rules: Option<Arc<RuleSet>>,
) -> Result<TestReport, String> {
    crate::fsutil::check_text_size(text).map_err(|message| format!("{display}: {message}"))?;
    let file: TestFile = serde_saphyr::from_str(text)
        .map_err(|e| format!("{display}: {}", crate::text::shorten_long_tokens(&e.without_snippet().to_string())))?;
    let window = duration(file.window.as_deref(), Duration::from_secs(300), "window")?;
    let history = duration(file.history.as_deref(), Duration::from_secs(3600), "history")?;
    let rules = match rules {
        Some(rules) => rules,
        None => {
            let rule_files: Vec<PathBuf> = file.rule_files.iter().map(|f| base.join(f)).collect();
            let notifiers = file.notifiers.map(|n| n.into_iter().collect());
            let rules = RuleSet::load(&rule_files, notifiers.as_ref())
                .map_err(|errors| errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))?;
            Arc::new(rules)
        }
    };
    let mut report = TestReport::default();
    for case in &file.tests {
        let mut rows = Vec::new();
        for input in &case.input {
            rows.extend(rows_of(input, window.as_millis() as i64, &case.name).map_err(|e| format!("{display}: {e}"))?);
        }
        rows.sort_by_key(|r| (r.window_end_ms, r.window_start_ms));
        let mut engine = AlertEngine::new(rules.clone(), history);
        let got: Vec<Transition> = engine.evaluate(&rows).into_iter().map(|e| e.transition).collect();
        let mut ok = got.len() == case.expect.len();
        for (e, t) in case.expect.iter().zip(&got) {
            ok &= matches(e, t).map_err(|m| format!("{display}: {}: {m}", case.name))?;
        }
        let errors: Vec<String> = engine.errors.iter().map(ToString::to_string).collect();
        if ok && errors.is_empty() {
            report.passed += 1;
            continue;
        }
        let mut explanation = String::new();
        explanation.push_str("  expected:\n");
        for e in &case.expect {
            explanation.push_str(&format!("    {}\n", describe_expected(e)));
        }
        if case.expect.is_empty() {
            explanation.push_str("    (no transitions)\n");
        }
        explanation.push_str("  got:\n");
        for t in &got {
            explanation.push_str(&format!("    {}\n", describe(t)));
        }
        if got.is_empty() {
            explanation.push_str("    (no transitions)\n");
        }
        for error in errors {
            explanation.push_str(&format!("  evaluation error: {error}\n"));
        }
        report.failures.push((case.name.clone(), explanation));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (found probing the rule-test format for the fuzz
    /// targets): `window: 300000000years` overflowed the window arithmetic
    /// and panicked.
    #[test]
    fn absurd_windows_are_errors_not_panics() {
        let rules = Arc::new(RuleSet::empty());
        let file = |window: &str| {
            format!(
                "rule_files: []\nwindow: {window}\ntests:\n  - name: t\n    input:\n      - {{model: m, metric: psi, \
                 start: \"2026-11-26T10:00:00Z\", values: [0.1, 0.2, 0.3]}}\n    expect: []\n"
            )
        };
        for window in ["300000000years", "0s"] {
            let error = run_test_text(&file(window), "t.yaml", Path::new("."), Some(rules.clone())).unwrap_err();
            assert!(error.contains("window: must be more than 0 and at most 100 years"), "{error}");
        }
        let report = run_test_text(&file("99years"), "t.yaml", Path::new("."), Some(rules)).unwrap();
        assert_eq!(report.passed, 1);
    }
}
