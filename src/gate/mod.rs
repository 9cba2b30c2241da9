//! `driftwatch gate`: a CI performance gate (docs/GATE.md). The old and the
//! new model's metrics side by side, checked against requirements such as
//! `accuracy >= 0.90`, `latency_p95 < 150ms` or `f1 >= old - 0.01`, with
//! whether each difference is significant; exit 0 when every requirement
//! holds, 1 when one fails, 2 on bad input.
//!
//! The parts do not care where the numbers come from: [`Requirement`]
//! parses one `--require`, [`evaluate`] checks requirements against two
//! [`GateMetrics`] (one per side) and returns a [`GateReport`], and
//! [`format`] renders a report as a table, JSON, JUnit XML or Markdown.
//! [`offline`] fills the metrics from labelled files (or a baseline
//! profile for the old side), [`online`] from a running daemon's windows
//! of two versions, [`sample`] computes them from rows in memory
//! and [`significance`] holds McNemar's test and the bootstrap interval.
//! Everything but [`offline`] is pure computation.

pub mod format;
pub mod offline;
pub mod online;
pub mod sample;
pub mod significance;

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

pub use significance::Significance;

/// The exit code of a gate whose requirements all hold.
pub const EXIT_PASS: u8 = 0;
/// The exit code of a gate with a failed requirement.
pub const EXIT_FAIL: u8 = 1;
/// The exit code of a gate given bad input (files, columns, requirements).
pub const EXIT_BAD_INPUT: u8 = 2;

/// A metric a requirement can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    Accuracy,
    Precision,
    Recall,
    F1,
    RocAuc,
    LogLoss,
    Brier,
    Mae,
    Rmse,
    Mape,
    R2,
    LatencyP50,
    LatencyP95,
    LatencyP99,
    LabeledCount,
}

/// What a metric needs from the data, to say why it does not apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Any classification model (`accuracy`, `precision`, `recall`, `f1`).
    Classification,
    /// A binary model with scores (`roc_auc`, `log_loss`, `brier`).
    Scores,
    /// A regression model (`mae`, `rmse`, `mape`, `r2`).
    Regression,
    /// A latency column (`latency_p50`, `latency_p95`, `latency_p99`).
    Latency,
    /// Every model (`labeled_count`).
    Any,
}

impl Metric {
    /// Every metric, in the order reports list them.
    pub const ALL: [Metric; 15] = [
        Metric::Accuracy,
        Metric::Precision,
        Metric::Recall,
        Metric::F1,
        Metric::RocAuc,
        Metric::LogLoss,
        Metric::Brier,
        Metric::Mae,
        Metric::Rmse,
        Metric::Mape,
        Metric::R2,
        Metric::LatencyP50,
        Metric::LatencyP95,
        Metric::LatencyP99,
        Metric::LabeledCount,
    ];

    /// The name requirements and reports use (as in `window_metrics`).
    pub fn name(self) -> &'static str {
        match self {
            Metric::Accuracy => "accuracy",
            Metric::Precision => "precision",
            Metric::Recall => "recall",
            Metric::F1 => "f1",
            Metric::RocAuc => "roc_auc",
            Metric::LogLoss => "log_loss",
            Metric::Brier => "brier",
            Metric::Mae => "mae",
            Metric::Rmse => "rmse",
            Metric::Mape => "mape",
            Metric::R2 => "r2",
            Metric::LatencyP50 => "latency_p50",
            Metric::LatencyP95 => "latency_p95",
            Metric::LatencyP99 => "latency_p99",
            Metric::LabeledCount => "labeled_count",
        }
    }

    pub fn from_name(name: &str) -> Option<Metric> {
        Metric::ALL.into_iter().find(|metric| metric.name() == name)
    }

    pub fn kind(self) -> MetricKind {
        match self {
            Metric::Accuracy | Metric::Precision | Metric::Recall | Metric::F1 => MetricKind::Classification,
            Metric::RocAuc | Metric::LogLoss | Metric::Brier => MetricKind::Scores,
            Metric::Mae | Metric::Rmse | Metric::Mape | Metric::R2 => MetricKind::Regression,
            Metric::LatencyP50 | Metric::LatencyP95 | Metric::LatencyP99 => MetricKind::Latency,
            Metric::LabeledCount => MetricKind::Any,
        }
    }

    /// Latency percentiles are in milliseconds and accept `ms` and `s`.
    pub fn is_latency(self) -> bool {
        self.kind() == MetricKind::Latency
    }

    /// The latency quantile of a latency metric (0.5, 0.95, 0.99).
    pub fn latency_quantile(self) -> Option<f64> {
        match self {
            Metric::LatencyP50 => Some(0.5),
            Metric::LatencyP95 => Some(0.95),
            Metric::LatencyP99 => Some(0.99),
            _ => None,
        }
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A comparison in a requirement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Comparison {
    #[serde(rename = ">=")]
    AtLeast,
    #[serde(rename = ">")]
    Above,
    #[serde(rename = "<=")]
    AtMost,
    #[serde(rename = "<")]
    Below,
    #[serde(rename = "==")]
    Equal,
}

impl Comparison {
    pub fn symbol(self) -> &'static str {
        match self {
            Comparison::AtLeast => ">=",
            Comparison::Above => ">",
            Comparison::AtMost => "<=",
            Comparison::Below => "<",
            Comparison::Equal => "==",
        }
    }

    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Comparison::AtLeast => value >= threshold,
            Comparison::Above => value > threshold,
            Comparison::AtMost => value <= threshold,
            Comparison::Below => value < threshold,
            Comparison::Equal => value == threshold,
        }
    }
}

/// The right-hand side of a requirement.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Bound {
    /// A fixed number (latency in milliseconds).
    Absolute(f64),
    /// The old model's value plus this (negative for `old - x`).
    RelativeToOld(f64),
}

/// One `--require`: `METRIC OP NUMBER[unit]` or `METRIC OP old [+-]
/// NUMBER[unit]`, always about the new model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Requirement {
    /// As the user wrote it.
    pub text: String,
    pub metric: Metric,
    pub comparison: Comparison,
    pub bound: Bound,
}

/// Why a `--require` could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--require {text:?}: {problem}")]
pub struct RequirementError {
    pub text: String,
    pub problem: String,
}

/// Every metric name, for errors.
fn metric_names() -> String {
    Metric::ALL.iter().map(|m| m.name()).collect::<Vec<_>>().join(", ")
}

impl Requirement {
    /// Parses `accuracy >= 0.90`, `latency_p95 < 150ms`, `latency_p99 <= 0.2s`,
    /// `f1 >= old - 0.01`, `latency_p95 <= old + 5ms`, `labeled_count >= 500`
    /// (spaces optional).
    pub fn parse(text: &str) -> Result<Requirement, RequirementError> {
        let fail = |problem: String| RequirementError { text: text.to_string(), problem };
        let trimmed = text.trim();
        let name_end = trimmed.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(trimmed.len());
        let name = &trimmed[..name_end];
        if name.is_empty() {
            return Err(fail(format!("expected a metric name first (one of {})", metric_names())));
        }
        let metric = Metric::from_name(name)
            .ok_or_else(|| fail(format!("unknown metric `{name}` (use one of {})", metric_names())))?;
        let rest = trimmed[name_end..].trim_start();
        let (comparison, rest) = [
            (">=", Comparison::AtLeast),
            ("<=", Comparison::AtMost),
            ("==", Comparison::Equal),
            (">", Comparison::Above),
            ("<", Comparison::Below),
        ]
        .into_iter()
        .find_map(|(symbol, comparison)| rest.strip_prefix(symbol).map(|rest| (comparison, rest.trim())))
        .ok_or_else(|| fail(format!("expected >=, >, <=, < or == after `{name}`")))?;
        if rest.is_empty() {
            return Err(fail(format!("expected a number or `old` after `{}`", comparison.symbol())));
        }
        let bound = match rest.strip_prefix("old") {
            Some(after_old) => {
                let after_old = after_old.trim();
                if after_old.is_empty() {
                    Bound::RelativeToOld(0.0)
                } else {
                    let (sign, amount) = if let Some(amount) = after_old.strip_prefix('+') {
                        (1.0, amount)
                    } else if let Some(amount) = after_old.strip_prefix('-') {
                        (-1.0, amount)
                    } else {
                        return Err(fail(format!("expected `+` or `-` after `old`, found `{after_old}`")));
                    };
                    let amount = parse_amount(metric, amount.trim()).map_err(fail)?;
                    if amount < 0.0 {
                        return Err(fail("write `old - x` or `old + x` with x a number >= 0".to_string()));
                    }
                    Bound::RelativeToOld(sign * amount)
                }
            }
            None => Bound::Absolute(parse_amount(metric, rest).map_err(fail)?),
        };
        Ok(Requirement { text: trimmed.to_string(), metric, comparison, bound })
    }

    /// The threshold the new model's value is compared with, given the old
    /// model's value (`None` when relative and the old value is unknown).
    pub fn threshold(&self, old: Option<f64>) -> Option<f64> {
        match self.bound {
            Bound::Absolute(value) => Some(value),
            Bound::RelativeToOld(delta) => old.map(|old| old + delta),
        }
    }
}

/// A number, with `ms` or `s` for latency metrics (milliseconds by default).
fn parse_amount(metric: Metric, text: &str) -> Result<f64, String> {
    let (number, scale) = if let Some(number) = text.strip_suffix("ms") {
        (number, Some(1.0))
    } else if let Some(number) = text.strip_suffix('s') {
        (number, Some(1000.0))
    } else {
        (text, None)
    };
    if scale.is_some() && !metric.is_latency() {
        return Err(format!("`{text}`: only latency metrics take a unit (`ms`, `s`); {metric} is a plain number"));
    }
    let value: f64 = number.trim().parse().ok().filter(|v: &f64| v.is_finite()).ok_or_else(|| {
        format!("`{text}` is not a number{}", if metric.is_latency() { " (e.g. 150ms, 0.15s)" } else { "" })
    })?;
    Ok(value * scale.unwrap_or(1.0))
}

/// One side's metric values; a metric the side does not have (it does not
/// apply, or the rows do not define it, e.g. precision with nothing
/// predicted positive) is absent.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GateMetrics {
    pub values: BTreeMap<Metric, f64>,
}

impl GateMetrics {
    pub fn get(&self, metric: Metric) -> Option<f64> {
        self.values.get(&metric).copied()
    }
}

/// What one side is and where its numbers come from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SideSummary {
    /// `old` or `new`.
    pub role: String,
    /// The file, profile or model version the numbers come from.
    pub source: String,
    /// Labelled rows the metrics are computed on.
    pub labeled_rows: u64,
    pub metrics: GateMetrics,
}

/// The outcome of one requirement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    Fail,
    /// A value the requirement needs is unknown: counted as a failure.
    NoValue,
}

impl Verdict {
    pub fn passed(self) -> bool {
        self == Verdict::Pass
    }

    pub fn label(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "FAIL",
            Verdict::NoValue => "FAIL (no value)",
        }
    }
}

/// One requirement checked.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RequirementOutcome {
    pub requirement: String,
    pub metric: Metric,
    pub comparison: Comparison,
    pub old: Option<f64>,
    pub new: Option<f64>,
    /// What the new value was compared with.
    pub threshold: Option<f64>,
    pub verdict: Verdict,
    /// new − old, when both are known.
    pub difference: Option<f64>,
    /// Whether the difference is significant, where a test applies.
    pub significance: Option<Significance>,
    /// Why a value is missing, for a [`Verdict::NoValue`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Every requirement checked, with both sides.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GateReport {
    pub passed: bool,
    pub old: SideSummary,
    pub new: SideSummary,
    /// How the rows were paired (e.g. `paired on 1000 event ids`), or why not.
    pub pairing: String,
    pub requirements: Vec<RequirementOutcome>,
    /// Other things the reader should know (rows left out, ...).
    pub notes: Vec<String>,
}

impl GateReport {
    pub fn failed_count(&self) -> usize {
        self.requirements.iter().filter(|r| !r.verdict.passed()).count()
    }

    pub fn exit_code(&self) -> u8 {
        if self.passed { EXIT_PASS } else { EXIT_FAIL }
    }
}

/// Checks every requirement against the two sides; `significance` gives
/// the test of a metric's difference where one applies.
pub fn evaluate(
    requirements: &[Requirement],
    old: SideSummary,
    new: SideSummary,
    pairing: String,
    significance: &BTreeMap<Metric, Significance>,
    notes: Vec<String>,
) -> GateReport {
    let outcomes: Vec<RequirementOutcome> = requirements
        .iter()
        .map(|requirement| {
            let metric = requirement.metric;
            let old_value = old.metrics.get(metric);
            let new_value = new.metrics.get(metric);
            let threshold = requirement.threshold(old_value);
            let (verdict, note) = match (new_value, threshold) {
                (Some(value), Some(threshold)) => {
                    let verdict =
                        if requirement.comparison.holds(value, threshold) { Verdict::Pass } else { Verdict::Fail };
                    (verdict, None)
                }
                (None, _) => (Verdict::NoValue, Some(format!("the new model has no {metric} on these rows"))),
                (Some(_), None) => (Verdict::NoValue, Some(format!("the old model has no {metric} on these rows"))),
            };
            let difference = match (old_value, new_value) {
                (Some(old), Some(new)) => Some(new - old),
                _ => None,
            };
            RequirementOutcome {
                requirement: requirement.text.clone(),
                metric,
                comparison: requirement.comparison,
                old: old_value,
                new: new_value,
                threshold,
                verdict,
                difference,
                significance: significance.get(&metric).cloned(),
                note,
            }
        })
        .collect();
    GateReport { passed: outcomes.iter().all(|o| o.verdict.passed()), old, new, pairing, requirements: outcomes, notes }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requirements_parse_numbers_units_and_relative_bounds() {
        let r = Requirement::parse("accuracy >= 0.90").unwrap();
        assert_eq!((r.metric, r.comparison, r.bound), (Metric::Accuracy, Comparison::AtLeast, Bound::Absolute(0.9)));
        let r = Requirement::parse("latency_p95 < 150ms").unwrap();
        assert_eq!((r.metric, r.comparison, r.bound), (Metric::LatencyP95, Comparison::Below, Bound::Absolute(150.0)));
        assert_eq!(Requirement::parse("latency_p99<=0.2s").unwrap().bound, Bound::Absolute(200.0));
        assert_eq!(Requirement::parse("latency_p50 < 40").unwrap().bound, Bound::Absolute(40.0));
        assert_eq!(Requirement::parse("f1 >= old - 0.01").unwrap().bound, Bound::RelativeToOld(-0.01));
        assert_eq!(Requirement::parse("latency_p95 <= old+5ms").unwrap().bound, Bound::RelativeToOld(5.0));
        assert_eq!(Requirement::parse("roc_auc > old").unwrap().bound, Bound::RelativeToOld(0.0));
        assert_eq!(Requirement::parse(" labeled_count == 1000 ").unwrap().comparison, Comparison::Equal);
    }

    #[test]
    fn bad_requirements_say_what_is_wrong() {
        let problem = |text: &str| Requirement::parse(text).unwrap_err().to_string();
        assert!(problem("acuracy >= 0.9").contains("unknown metric `acuracy`"), "{}", problem("acuracy >= 0.9"));
        assert!(problem("accuracy => 0.9").contains("expected >=, >, <=, < or =="));
        assert!(problem("accuracy >=").contains("expected a number or `old`"));
        assert!(problem("accuracy >= ninety").contains("`ninety` is not a number"));
        assert!(problem("accuracy >= 0.9ms").contains("only latency metrics take a unit"));
        assert!(problem("f1 >= old * 0.9").contains("expected `+` or `-` after `old`"));
        assert!(problem("f1 >= old - -0.1").contains(">= 0"));
        assert!(problem(">= 0.9").contains("expected a metric name"));
        assert!(problem("accuracy >= NaN").contains("not a number"));
    }

    fn side(role: &str, values: &[(Metric, f64)]) -> SideSummary {
        SideSummary {
            role: role.into(),
            source: format!("{role}.csv"),
            labeled_rows: 10,
            metrics: GateMetrics { values: values.iter().copied().collect() },
        }
    }

    #[test]
    fn evaluation_compares_the_new_value_with_absolute_and_relative_thresholds() {
        let requirements: Vec<Requirement> =
            ["accuracy >= 0.90", "f1 >= old - 0.01", "latency_p95 < 150ms", "roc_auc >= 0.5"]
                .iter()
                .map(|t| Requirement::parse(t).unwrap())
                .collect();
        let old = side("old", &[(Metric::Accuracy, 0.95), (Metric::F1, 0.80), (Metric::LatencyP95, 100.0)]);
        let new = side("new", &[(Metric::Accuracy, 0.91), (Metric::F1, 0.795), (Metric::LatencyP95, 150.0)]);
        let report = evaluate(&requirements, old, new, String::new(), &BTreeMap::new(), Vec::new());
        let verdicts: Vec<Verdict> = report.requirements.iter().map(|r| r.verdict).collect();
        assert_eq!(verdicts, [Verdict::Pass, Verdict::Pass, Verdict::Fail, Verdict::NoValue]);
        assert!((report.requirements[1].threshold.unwrap() - 0.79).abs() < 1e-12);
        assert!((report.requirements[0].difference.unwrap() + 0.04).abs() < 1e-12);
        assert!(!report.passed);
        assert_eq!(report.exit_code(), EXIT_FAIL);
        assert_eq!(report.failed_count(), 2);
    }
}
