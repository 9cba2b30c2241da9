//! The status page at `/`: one server-rendered HTML document (no scripts,
//! no build step) drawn from the same snapshots the JSON API serves —
//! readiness, pipeline health, alerts pending or firing, and per model its
//! latest window with drifted features highlighted and its performance
//! against the baseline. It refreshes itself every 15 seconds.
//!
//! Every string that comes from data (model, feature, alert names,
//! annotations) is HTML-escaped.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;

use crate::decode::InvalidReason;
use crate::timestamp::format_rfc3339_ms;
use crate::window_metrics::WindowMetricRow;

use super::ApiState;

/// Drift statistics shown as columns, in this order, when a window has them.
const DRIFT_COLUMNS: &[&str] = &[
    "psi",
    "ks",
    "wasserstein",
    "jensen_shannon",
    "hellinger",
    "chi2",
    "unseen_rate",
    "out_of_range_rate",
    "missing_rate",
];

/// Model-level metrics that are not shown as performance.
const NOT_PERFORMANCE: &[&str] = &["count", "events_late", "type_error_rate"];

const STYLE: &str = "body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}\
header{background:#1d2330;color:#fff;padding:12px 24px;display:flex;gap:16px;align-items:baseline}\
header h1{font-size:20px;margin:0}main{padding:8px 24px 32px}\
section,article{background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:8px 16px 12px;margin:16px 0}\
h2{font-size:17px;margin:8px 0}h3{font-size:15px;margin:12px 0 6px}\
table{border-collapse:collapse;font-variant-numeric:tabular-nums}\
th,td{border-bottom:1px solid #e8ebef;padding:3px 10px;text-align:right}th:first-child,td:first-child{text-align:left}\
th{background:#f0f2f5;font-weight:600}.badge{padding:2px 8px;border-radius:10px;font-size:12px;font-weight:600}\
.ok{background:#1f8a4c;color:#fff}.bad{background:#c62828;color:#fff}.pending{background:#ef8f00;color:#fff}\
td.drifted,tr.drifted td:first-child{background:#fde2e1;color:#a31515;font-weight:600}\
td.worse{background:#fde2e1;color:#a31515;font-weight:600}.muted{color:#6b7280}\
dl{display:grid;grid-template-columns:max-content auto;gap:2px 16px;margin:0}dt{color:#6b7280}dd{margin:0}";

/// Escapes text for HTML element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A number with four significant digits, or `—`.
fn number(value: Option<f64>) -> String {
    match value {
        None => "—".to_string(),
        Some(v) if v.is_nan() => "NaN".to_string(),
        Some(0.0) => "0".to_string(),
        Some(v) if v.fract() == 0.0 && v.abs() < 1e15 => format!("{v:.0}"),
        Some(v) if v.abs() >= 1e5 || v.abs() < 1e-3 => format!("{v:.3e}"),
        Some(v) => {
            let digits = (3 - v.abs().log10().floor() as i32).clamp(0, 6) as usize;
            format!("{v:.digits$}")
        }
    }
}

fn clock(ms: i64) -> String {
    format_rfc3339_ms(ms)
}

/// Renders the whole page.
pub fn render(state: &ApiState) -> String {
    let mut page = String::with_capacity(16 * 1024);
    let now = chrono::Utc::now().timestamp_millis();
    let telemetry = state.metrics.as_ref().map(|m| m.telemetry.clone());
    let unmet = telemetry.as_ref().map(|t| t.readiness.unmet()).unwrap_or_default();
    let _ = write!(
        page,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"15\"><meta name=\"viewport\" content=\"width=device-width\">\
         <title>driftwatch</title><style>{STYLE}</style></head><body><header><h1>driftwatch</h1>"
    );
    if unmet.is_empty() {
        page.push_str("<span id=\"readiness\" class=\"badge ok\">ready</span>");
    } else {
        let _ = write!(page, "<span id=\"readiness\" class=\"badge bad\">not ready: {}</span>", unmet.join(", "));
    }
    let _ = write!(page, "<span class=\"muted\">{}</span></header><main>", clock(now));

    if let Some(telemetry) = &telemetry {
        render_health(&mut page, telemetry);
    }
    render_alerts(&mut page, state);
    // Copies: no lock is held, and no snapshot kept, while the page is rendered.
    let models = state.models.snapshot();
    let rows: Vec<WindowMetricRow> =
        state.windows.snapshot().iter().filter(|r| r.segment.is_empty()).cloned().collect();
    for model in models.iter() {
        let name = model["name"].as_str().unwrap_or_default();
        let model_rows: Vec<&WindowMetricRow> =
            rows.iter().filter(|r| *r.model == *name && r.segment.is_empty()).collect();
        render_model(&mut page, model, &model_rows);
    }
    if models.is_empty() {
        page.push_str("<section><p class=\"muted\">No models configured.</p></section>");
    }
    page.push_str("</main></body></html>");
    page
}

fn render_health(page: &mut String, telemetry: &crate::telemetry::Telemetry) {
    page.push_str("<section id=\"pipeline\"><h2>Pipeline</h2><dl>");
    let mut by_topic: BTreeMap<String, u64> = BTreeMap::new();
    for ((topic, _), n) in telemetry.events() {
        *by_topic.entry(topic).or_default() += n;
    }
    for (topic, n) in &by_topic {
        let _ = write!(page, "<dt>events on {}</dt><dd>{n}</dd>", escape(topic));
    }
    if by_topic.is_empty() {
        page.push_str("<dt>events</dt><dd>0</dd>");
    }
    let invalid: Vec<String> = InvalidReason::ALL
        .iter()
        .map(|r| (r.label(), telemetry.invalid_count(*r)))
        .filter(|(_, n)| *n > 0)
        .map(|(label, n)| format!("{label} {n}"))
        .collect();
    let _ = write!(
        page,
        "<dt>invalid events</dt><dd>{}{}</dd>",
        telemetry.invalid_total(),
        if invalid.is_empty() { String::new() } else { format!(" ({})", invalid.join(", ")) }
    );
    let lag: i64 = telemetry.consumer_lag().values().sum();
    let _ = write!(
        page,
        "<dt>late events</dt><dd>{}</dd><dt>windows closed</dt><dd>{}</dd>\
         <dt>consumer lag</dt><dd>{lag}</dd><dt>predictions awaiting labels</dt><dd>{}</dd>",
        telemetry.events_late.load(Relaxed),
        telemetry.windows_closed.load(Relaxed),
        telemetry.join_pending.load(Relaxed),
    );
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    for ((_, outcome), n) in telemetry.notifications() {
        *outcomes.entry(outcome).or_default() += n;
    }
    let outcomes: Vec<String> = outcomes.iter().map(|(o, n)| format!("{} {n}", escape(o))).collect();
    let _ = write!(
        page,
        "<dt>notifications</dt><dd>{}</dd></dl></section>",
        if outcomes.is_empty() { "none".to_string() } else { outcomes.join(", ") }
    );
}

fn render_alerts(page: &mut String, state: &ApiState) {
    let alerts = state.alerts.snapshot();
    let firing = alerts.iter().filter(|a| a.state == "firing").count();
    let _ = write!(page, "<section id=\"alerts\"><h2>Alerts: {firing} firing, {} pending</h2>", alerts.len() - firing);
    if alerts.is_empty() {
        page.push_str("<p class=\"muted\">No alert is pending or firing.</p></section>");
        return;
    }
    page.push_str(
        "<table><tr><th>alert</th><th>state</th><th>model</th><th>version</th><th>feature</th>\
         <th>value</th><th>since</th><th>summary</th></tr>",
    );
    for alert in alerts.iter() {
        let class = if alert.state == "firing" { "bad" } else { "pending" };
        let _ = write!(
            page,
            "<tr class=\"alert\"><td>{}</td><td><span class=\"badge {class}\">{}</span></td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&alert.alert),
            escape(&alert.state),
            escape(&alert.model),
            escape(if alert.model_version.is_empty() { "—" } else { &alert.model_version }),
            escape(alert.feature.as_deref().unwrap_or("—")),
            number(alert.value),
            escape(&alert.active_since),
            escape(alert.annotations.get("summary").map(String::as_str).unwrap_or("")),
        );
    }
    page.push_str("</table></section>");
}

fn render_model(page: &mut String, model: &serde_json::Value, rows: &[&WindowMetricRow]) {
    let name = model["name"].as_str().unwrap_or_default();
    let _ = write!(
        page,
        "<article class=\"model\" id=\"model-{}\"><h2>{}</h2><p class=\"muted\">task {} · baseline {}</p>",
        escape(name),
        escape(name),
        escape(model["task"].as_str().unwrap_or("—")),
        escape(model["baseline"].as_str().unwrap_or("none")),
    );
    // The latest window with drift rows.
    let Some(window_end) = rows.iter().filter(|r| r.feature.is_some()).map(|r| r.window_end_ms).max() else {
        page.push_str("<p class=\"muted\">No window has closed yet.</p></article>");
        return;
    };
    let window: Vec<&WindowMetricRow> = rows
        .iter()
        .copied()
        .filter(|r| r.window_end_ms == window_end && r.feature.is_some() && DRIFT_COLUMNS.contains(&r.metric))
        .collect();
    let window_start = window.first().map_or(window_end, |r| r.window_start_ms);
    let events = rows
        .iter()
        .find(|r| r.window_end_ms == window_end && r.feature.is_none() && r.metric == "count")
        .map(|r| r.value);
    let columns: Vec<&str> = DRIFT_COLUMNS.iter().copied().filter(|c| window.iter().any(|r| r.metric == *c)).collect();
    let mut features: BTreeMap<&str, BTreeMap<&str, &WindowMetricRow>> = BTreeMap::new();
    for row in &window {
        features.entry(row.feature.as_deref().unwrap_or_default()).or_default().insert(row.metric, row);
    }
    let drifted: BTreeSet<&str> = features
        .iter()
        .filter(|(_, metrics)| metrics.values().any(|r| r.drifted == Some(true)))
        .map(|(feature, _)| *feature)
        .collect();
    let _ = write!(
        page,
        "<h3>Drift in the window {} – {} ({} events)</h3>",
        clock(window_start),
        clock(window_end),
        number(events)
    );
    if drifted.is_empty() {
        let _ = write!(page, "<p id=\"drift-summary-{}\">No feature drifted.</p>", escape(name));
    } else {
        let names: Vec<String> = drifted.iter().map(|f| escape(f)).collect();
        let _ = write!(
            page,
            "<p id=\"drift-summary-{}\"><span class=\"badge bad\">{} of {} features drifted</span> {}</p>",
            escape(name),
            drifted.len(),
            features.len(),
            names.join(", ")
        );
    }
    page.push_str("<table class=\"drift\"><tr><th>feature</th>");
    for column in &columns {
        let _ = write!(page, "<th>{column}</th>");
    }
    page.push_str("</tr>");
    for (feature, metrics) in &features {
        let class = if drifted.contains(feature) { " class=\"drifted\"" } else { "" };
        let _ = write!(page, "<tr{class} data-feature=\"{0}\"><td>{0}</td>", escape(feature));
        for column in &columns {
            match metrics.get(column) {
                Some(row) => {
                    let class = if row.drifted == Some(true) { " class=\"drifted\"" } else { "" };
                    let title = match (row.threshold, row.baseline) {
                        (Some(t), _) => format!(" title=\"threshold {}\"", number(Some(t))),
                        (None, Some(b)) => format!(" title=\"baseline {}\"", number(Some(b))),
                        _ => String::new(),
                    };
                    let _ = write!(page, "<td{class}{title}>{}</td>", number(Some(row.value)));
                }
                None => page.push_str("<td class=\"muted\">—</td>"),
            }
        }
        page.push_str("</tr>");
    }
    page.push_str("</table>");
    render_performance(page, rows);
    page.push_str("</article>");
}

/// The latest value of each model-level metric against its baseline.
fn render_performance(page: &mut String, rows: &[&WindowMetricRow]) {
    let mut latest: BTreeMap<&str, &WindowMetricRow> = BTreeMap::new();
    for row in rows.iter().filter(|r| r.feature.is_none() && !NOT_PERFORMANCE.contains(&r.metric)) {
        let entry = latest.entry(row.metric).or_insert(row);
        if row.window_end_ms > entry.window_end_ms {
            *entry = row;
        }
    }
    page.push_str("<h3>Performance and outputs vs baseline</h3>");
    if latest.is_empty() {
        page.push_str("<p class=\"muted\">No model-level metric yet (labels may still be on their way).</p>");
        return;
    }
    page.push_str(
        "<table class=\"performance\"><tr><th>metric</th><th>value</th><th>baseline</th><th>change</th>\
         <th>p-value (worse)</th><th>window</th></tr>",
    );
    for (metric, row) in &latest {
        // Worse than baseline, significantly: the one-sided test says so.
        let worse = row.p_value.is_some_and(|p| p < 0.01) || row.drifted == Some(true);
        let class = if worse { " class=\"worse\"" } else { "" };
        let change = row.baseline.map(|b| row.value - b);
        let _ = write!(
            page,
            "<tr data-metric=\"{metric}\"><td>{metric}</td><td{class}>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            number(Some(row.value)),
            number(row.baseline),
            change.map_or("—".to_string(), |c| format!("{}{}", if c > 0.0 { "+" } else { "" }, number(Some(c)))),
            number(row.p_value),
            clock(row.window_start_ms),
        );
    }
    page.push_str("</table>");
}

#[cfg(test)]
mod tests {
    use super::{escape, number};

    #[test]
    fn text_from_data_is_escaped() {
        assert_eq!(escape("<b a=\"x\">&'"), "&lt;b a=&quot;x&quot;&gt;&amp;&#39;");
    }

    #[test]
    fn numbers_keep_four_significant_digits() {
        assert_eq!(number(Some(0.123456)), "0.1235");
        assert_eq!(number(Some(12.3456)), "12.35");
        assert_eq!(number(Some(2401.0)), "2401");
        assert_eq!(number(Some(0.0)), "0");
        assert_eq!(number(Some(1.5e-7)), "1.500e-7");
        assert_eq!(number(None), "—");
    }
}
