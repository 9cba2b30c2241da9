//! The online gate: the requirements against a running daemon's windows
//! for a canary or shadow version (`--candidate`) and the version it would
//! replace (`--champion`) of one model, over the windows that started in
//! the last `--since`.
//!
//! The numbers come from the daemon's `/api/v1/windows` (whole-model rows,
//! every page): each metric is pooled over the windows, weighted by the
//! window's labelled rows (latency percentiles by the window's latency
//! sample count). That is exact for `accuracy`, `mae`, `rmse` (pooled as
//! the root of the weighted mean square), `log_loss`, `brier`, `mape` and
//! `labeled_count`; `precision`, `recall`, `f1`, `roc_auc`, `r2` and the
//! latency percentiles are the weighted means of the windows' values, which
//! the report says. The gate refuses to pass when either side has fewer
//! labelled predictions than `--min-labels`, and says so.
//!
//! Only [`fetch_rows`] does I/O; [`sides_from_rows`] and [`gate`] are pure.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use super::{GateMetrics, GateReport, Metric, Requirement, SideSummary, Significance};

/// What `driftwatch gate --from` asks.
#[derive(Debug, Clone)]
pub struct OnlineQuery {
    /// The daemon's HTTP address, e.g. `http://127.0.0.1:9464`.
    pub from: String,
    pub model: String,
    /// The version being replaced (the old side).
    pub champion: String,
    /// The canary or shadow version (the new side).
    pub candidate: String,
    /// Windows that started at or after this time (epoch ms).
    pub since_ms: i64,
    /// Fewest labelled predictions each side needs for the gate to pass.
    pub min_labels: u64,
}

/// Why the daemon's rows could not be read (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum OnlineError {
    #[error("--from {from}: {message}")]
    Unreachable { from: String, message: String },
    #[error("--from {from}: {status} from {path}: {message}")]
    Refused { from: String, path: String, status: u16, message: String },
    #[error("--from {from}: {path} answered what is not a driftwatch windows page: {message}")]
    NotWindows { from: String, path: String, message: String },
}

/// Rows per page asked of the daemon.
const PAGE_ROWS: usize = 10_000;

/// Every whole-model row of `query.model` since `query.since_ms`, following
/// the API's pages.
pub fn fetch_rows(query: &OnlineQuery) -> Result<Vec<Value>, OnlineError> {
    let from = query.from.trim_end_matches('/').to_string();
    let unreachable = |message: String| OnlineError::Unreachable { from: from.clone(), message };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| unreachable(format!("starting the HTTP client: {e}")))?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| unreachable(format!("building the HTTP client: {e}")))?;
    let since = crate::timestamp::format_rfc3339_ms(query.since_ms);
    let mut rows = Vec::new();
    let mut after: Option<String> = None;
    // A bound on pages, so a misbehaving server cannot keep the gate forever.
    for _ in 0..1_000 {
        let mut parameters: Vec<(&str, String)> = vec![
            ("model", query.model.clone()),
            ("since", since.clone()),
            ("segment", String::new()),
            ("feature", String::new()),
            ("limit", PAGE_ROWS.to_string()),
        ];
        if let Some(after) = &after {
            parameters.push(("after", after.clone()));
        }
        let path = "/api/v1/windows";
        let url = format!("{from}{path}");
        let (status, body) = runtime
            .block_on(async {
                let response = client.get(&url).query(&parameters).send().await?;
                let status = response.status().as_u16();
                let body = response.text().await?;
                Ok::<_, reqwest::Error>((status, body))
            })
            .map_err(|e| unreachable(crate::notify::deliver::error_chain(&e)))?;
        let page: Value = serde_json::from_str(&body).map_err(|e| OnlineError::NotWindows {
            from: from.clone(),
            path: path.to_string(),
            message: e.to_string(),
        })?;
        if status != 200 {
            let message = page["error"]["message"].as_str().unwrap_or(&body).chars().take(300).collect();
            return Err(OnlineError::Refused { from: from.clone(), path: path.to_string(), status, message });
        }
        let Some(windows) = page["windows"].as_array() else {
            return Err(OnlineError::NotWindows {
                from: from.clone(),
                path: path.to_string(),
                message: "no `windows` list".to_string(),
            });
        };
        rows.extend(windows.iter().cloned());
        if page["more"].as_bool() != Some(true) {
            return Ok(rows);
        }
        after = page["next"].as_str().map(str::to_string);
        if after.is_none() {
            return Ok(rows);
        }
    }
    Ok(rows)
}

/// Sums that pool one metric over windows.
#[derive(Debug, Default, Clone, Copy)]
struct Pooled {
    weighted_sum: f64,
    weight: f64,
}

impl Pooled {
    fn add(&mut self, value: f64, weight: f64) {
        if value.is_finite() && weight > 0.0 {
            self.weighted_sum += value * weight;
            self.weight += weight;
        }
    }

    fn mean(self) -> Option<f64> {
        (self.weight > 0.0).then(|| self.weighted_sum / self.weight)
    }
}

/// One version's pooled numbers.
#[derive(Debug, Default, Clone)]
pub struct VersionEvidence {
    pub windows: usize,
    pub labeled: u64,
    /// Labelled rows the pooled accuracy counts right (for the z-test).
    pub correct: Option<u64>,
    pub metrics: GateMetrics,
}

/// The metrics pooled exactly from window values (weighted means of
/// per-row quantities); `rmse` pools its square.
fn pooled_exactly(metric: Metric) -> bool {
    matches!(metric, Metric::Accuracy | Metric::Mae | Metric::Rmse | Metric::LogLoss | Metric::Brier | Metric::Mape)
}

/// Pools a version's whole-model rows: each window's performance weighted
/// by its `labeled_count`, its latency percentiles by their sample count.
pub fn version_evidence(rows: &[Value], version: &str) -> VersionEvidence {
    let mut labeled_by_window: BTreeMap<(String, String), f64> = BTreeMap::new();
    let mine = |row: &&Value| {
        row["model_version"].as_str() == Some(version)
            && row["segment"].as_str() == Some("")
            && row["feature"].is_null()
    };
    for row in rows.iter().filter(mine) {
        if row["metric"] == "labeled_count" {
            let window = (
                row["window_start"].as_str().unwrap_or("").to_string(),
                row["window_end"].as_str().unwrap_or("").to_string(),
            );
            labeled_by_window.insert(window, row["value"].as_f64().unwrap_or(0.0));
        }
    }
    let mut pooled: BTreeMap<Metric, Pooled> = BTreeMap::new();
    let mut windows = std::collections::BTreeSet::new();
    for row in rows.iter().filter(mine) {
        let Some(name) = row["metric"].as_str() else { continue };
        let Some(metric) = Metric::from_name(name) else { continue };
        let Some(value) = row["value"].as_f64() else { continue };
        let window = (
            row["window_start"].as_str().unwrap_or("").to_string(),
            row["window_end"].as_str().unwrap_or("").to_string(),
        );
        let weight = if metric.is_latency() {
            row["sample_count"].as_f64().unwrap_or(0.0)
        } else if metric == Metric::LabeledCount {
            windows.insert(window);
            continue;
        } else {
            labeled_by_window.get(&window).copied().unwrap_or(0.0)
        };
        let value = if metric == Metric::Rmse { value * value } else { value };
        pooled.entry(metric).or_default().add(value, weight);
    }
    let labeled: f64 = labeled_by_window.values().sum();
    let mut metrics = GateMetrics::default();
    for (metric, sums) in pooled {
        if let Some(mean) = sums.mean() {
            metrics.values.insert(metric, if metric == Metric::Rmse { mean.sqrt() } else { mean });
        }
    }
    metrics.values.insert(Metric::LabeledCount, labeled);
    let correct = metrics.get(Metric::Accuracy).map(|accuracy| (accuracy * labeled).round() as u64);
    VersionEvidence { windows: windows.len(), labeled: labeled as u64, correct, metrics }
}

/// The two-sided two-proportion z-test of the candidate's accuracy against
/// the champion's (unpaired: the versions scored different traffic).
fn accuracy_test(champion: &VersionEvidence, candidate: &VersionEvidence) -> Option<Significance> {
    let (Some(champion_correct), Some(candidate_correct)) = (champion.correct, candidate.correct) else {
        return None;
    };
    if champion.labeled == 0 || candidate.labeled == 0 {
        return None;
    }
    let (z, one_sided) = crate::stats::two_proportion_z_test(
        champion_correct.min(champion.labeled),
        champion.labeled,
        candidate_correct.min(candidate.labeled),
        candidate.labeled,
    );
    let p_value = (2.0 * one_sided.min(1.0 - one_sided)).min(1.0);
    Some(Significance::TwoProportionZ { z, p_value, significant: p_value < 0.05 })
}

/// The gate over the daemon's rows: the champion is the old side, the
/// candidate the new one. Too little evidence on either side fails the
/// gate, whatever the requirements say, with a note saying so.
pub fn gate(query: &OnlineQuery, requirements: &[Requirement], rows: &[Value]) -> GateReport {
    let champion = version_evidence(rows, &query.champion);
    let candidate = version_evidence(rows, &query.candidate);
    let since = crate::timestamp::format_rfc3339_ms(query.since_ms);
    let side = |role: &str, version: &str, evidence: &VersionEvidence| SideSummary {
        role: role.to_string(),
        source: format!(
            "{} model {} version {} ({} windows since {since})",
            query.from, query.model, version, evidence.windows
        ),
        labeled_rows: evidence.labeled,
        metrics: evidence.metrics.clone(),
    };
    let mut significance = BTreeMap::new();
    if let Some(test) = accuracy_test(&champion, &candidate) {
        significance.insert(Metric::Accuracy, test);
    }
    let mut notes = Vec::new();
    let approximated: Vec<&str> = requirements
        .iter()
        .map(|r| r.metric)
        .filter(|m| !pooled_exactly(*m) && *m != Metric::LabeledCount)
        .map(Metric::name)
        .collect();
    if !approximated.is_empty() {
        notes.push(format!(
            "{} pooled as the mean of the windows' values weighted by their labelled rows (latency: by their samples), not recomputed from the rows",
            approximated.join(", ")
        ));
    }
    let mut too_little = Vec::new();
    for (name, version, evidence) in
        [("champion", &query.champion, &champion), ("candidate", &query.candidate, &candidate)]
    {
        if evidence.labeled < query.min_labels {
            too_little.push(format!(
                "the {name} (version {version}) has {} labelled predictions in {} windows since {since}, fewer than --min-labels {}",
                evidence.labeled, evidence.windows, query.min_labels
            ));
        }
    }
    let pairing = "unpaired: champion and candidate scored different traffic".to_string();
    let mut report = super::evaluate(
        requirements,
        side("old", &query.champion, &champion),
        side("new", &query.candidate, &candidate),
        pairing,
        &significance,
        notes,
    );
    if !too_little.is_empty() {
        report.passed = false;
        for reason in too_little {
            report.notes.push(format!("too little evidence: {reason}; the gate does not pass"));
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(version: &str, window: i64, metric: &str, value: f64, samples: u64) -> Value {
        json!({
            "model": "fraud", "model_version": version, "segment": "", "feature": null,
            "window_start": format!("2026-11-26T10:{:02}:00.000Z", window * 5),
            "window_end": format!("2026-11-26T10:{:02}:00.000Z", window * 5 + 5),
            "metric": metric, "value": value, "sample_count": samples,
        })
    }

    /// Two windows of 100 and 300 labelled rows: accuracy pools to the
    /// share of all 400 rows right, rmse as the root of the mean square.
    #[test]
    fn metrics_pool_over_windows_by_labelled_rows() {
        let rows = vec![
            row("3", 0, "labeled_count", 100.0, 100),
            row("3", 0, "accuracy", 0.9, 100),
            row("3", 0, "rmse", 2.0, 100),
            row("3", 0, "latency_p95", 10.0, 50),
            row("3", 1, "labeled_count", 300.0, 300),
            row("3", 1, "accuracy", 0.7, 300),
            row("3", 1, "rmse", 4.0, 300),
            row("3", 1, "latency_p95", 20.0, 150),
            row("4", 1, "labeled_count", 7.0, 7),
            json!({"model": "fraud", "model_version": "3", "segment": "country=DE", "feature": null,
                   "window_start": "x", "window_end": "y", "metric": "accuracy", "value": 0.0, "sample_count": 1}),
        ];
        let evidence = version_evidence(&rows, "3");
        assert_eq!((evidence.windows, evidence.labeled, evidence.correct), (2, 400, Some(300)));
        assert!((evidence.metrics.get(Metric::Accuracy).unwrap() - 0.75).abs() < 1e-12);
        assert!(
            (evidence.metrics.get(Metric::Rmse).unwrap() - ((100.0 * 4.0 + 300.0 * 16.0) / 400.0f64).sqrt()).abs()
                < 1e-12
        );
        assert!((evidence.metrics.get(Metric::LatencyP95).unwrap() - 17.5).abs() < 1e-12);
        assert_eq!(version_evidence(&rows, "4").labeled, 7);
    }

    #[test]
    fn too_little_evidence_fails_the_gate_and_says_why() {
        let rows = vec![
            row("3", 0, "labeled_count", 1000.0, 1000),
            row("3", 0, "accuracy", 0.9, 1000),
            row("4", 0, "labeled_count", 40.0, 40),
            row("4", 0, "accuracy", 0.95, 40),
        ];
        let query = OnlineQuery {
            from: "http://x".into(),
            model: "fraud".into(),
            champion: "3".into(),
            candidate: "4".into(),
            since_ms: 0,
            min_labels: 100,
        };
        let requirements = vec![Requirement::parse("accuracy >= old - 0.01").unwrap()];
        let report = gate(&query, &requirements, &rows);
        assert!(report.requirements[0].verdict.passed(), "the requirement itself holds");
        assert!(!report.passed);
        assert!(
            report.notes.iter().any(|n| n.contains("too little evidence") && n.contains("has 40 labelled")),
            "{:?}",
            report.notes
        );
        let query = OnlineQuery { min_labels: 40, ..query };
        assert!(gate(&query, &requirements, &rows).passed);
    }
}
