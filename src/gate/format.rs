//! A [`GateReport`] for people and for CI: a plain table for the job log,
//! JSON for scripts, JUnit XML for test-report views (Jenkins, GitLab) and
//! Markdown for a GitHub job summary (`$GITHUB_STEP_SUMMARY`). Each lists
//! every requirement with the old and the new value, the threshold, the
//! verdict and the difference with its significance.

use std::fmt::Write as _;

use super::{GateReport, Metric, RequirementOutcome, Significance};

/// The output formats of `driftwatch gate --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Junit,
    Markdown,
}

pub fn render(report: &GateReport, format: Format) -> String {
    match format {
        Format::Table => table(report),
        Format::Json => json(report),
        Format::Junit => junit(report),
        Format::Markdown => markdown(report),
    }
}

/// A metric's value as people read it: latency in ms, counts whole, the
/// rest with four decimals.
pub fn value_text(metric: Metric, value: Option<f64>) -> String {
    match value {
        None => "n/a".to_string(),
        Some(v) if metric.is_latency() => format!("{v:.1} ms"),
        Some(v) if metric == Metric::LabeledCount => format!("{v:.0}"),
        Some(v) => format!("{v:.4}"),
    }
}

fn signed_text(metric: Metric, value: f64) -> String {
    let sign = if value >= 0.0 { "+" } else { "-" };
    let magnitude = value_text(metric, Some(value.abs()));
    format!("{sign}{magnitude}")
}

fn p_text(p: f64) -> String {
    if p < 1e-4 { format!("p={p:.1e}") } else { format!("p={p:.4}") }
}

/// `>= 0.9000`, with the resolved threshold of a relative requirement.
fn requirement_text(outcome: &RequirementOutcome) -> String {
    let threshold = value_text(outcome.metric, outcome.threshold);
    format!("{} {threshold}", outcome.comparison.symbol())
}

/// The difference and whether it is significant, in one cell.
fn difference_text(outcome: &RequirementOutcome) -> String {
    let Some(difference) = outcome.difference else { return String::new() };
    let metric = outcome.metric;
    let mut text = signed_text(metric, difference);
    match &outcome.significance {
        Some(Significance::Mcnemar { p_value, significant, .. }) => {
            let verdict = if *significant { "significant" } else { "not significant" };
            let _ = write!(text, " ({}, McNemar; {verdict})", p_text(*p_value));
        }
        Some(Significance::TwoProportionZ { p_value, significant, .. }) => {
            let verdict = if *significant { "significant" } else { "not significant" };
            let _ = write!(text, " ({}, z-test; {verdict})", p_text(*p_value));
        }
        Some(Significance::Bootstrap { low, high, significant, .. }) => {
            let verdict = if *significant { "significant" } else { "not significant" };
            let (low, high) = (signed_text(metric, *low), signed_text(metric, *high));
            let _ = write!(text, " (95% CI {low} to {high}; {verdict})");
        }
        None => {}
    }
    text
}

fn summary_line(report: &GateReport) -> String {
    let total = report.requirements.len();
    if report.passed {
        format!("PASS: {}", crate::text::count_of(total as u64, "requirement holds", "requirements hold"))
    } else {
        let failed: Vec<&str> =
            report.requirements.iter().filter(|r| !r.verdict.passed()).map(|r| r.requirement.as_str()).collect();
        format!("FAIL: {} of {total} failed: {}", failed.len(), failed.join("; "))
    }
}

fn sides_line(report: &GateReport) -> String {
    format!(
        "old: {} ({}); new: {} ({}); {}",
        report.old.source,
        crate::text::count_of(report.old.labeled_rows, "labelled row", "labelled rows"),
        report.new.source,
        crate::text::count_of(report.new.labeled_rows, "labelled row", "labelled rows"),
        report.pairing
    )
}

/// Rows of cells: header first.
fn cells(report: &GateReport) -> Vec<[String; 6]> {
    let mut rows = vec![["metric", "old", "new", "requirement", "verdict", "difference (new - old)"].map(String::from)];
    for outcome in &report.requirements {
        rows.push([
            outcome.metric.name().to_string(),
            value_text(outcome.metric, outcome.old),
            value_text(outcome.metric, outcome.new),
            requirement_text(outcome),
            outcome.verdict.label().to_string(),
            difference_text(outcome),
        ]);
    }
    rows
}

/// The aligned plain-text table, sides and pairing above, verdict below.
pub fn table(report: &GateReport) -> String {
    let rows = cells(report);
    let mut widths = [0usize; 6];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = format!("driftwatch gate: {}\n\n", sides_line(report));
    for row in &rows {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    for outcome in &report.requirements {
        if let Some(note) = &outcome.note {
            let _ = writeln!(out, "{}: {note}", outcome.requirement);
        }
    }
    for note in &report.notes {
        let _ = writeln!(out, "note: {note}");
    }
    let _ = writeln!(out, "\n{}", summary_line(report));
    out
}

/// The report as one JSON document (field names in docs/GATE.md).
pub fn json(report: &GateReport) -> String {
    serde_json::to_string_pretty(report).expect("a gate report always serialises") + "\n"
}

fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Characters XML 1.0 cannot hold at all.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// JUnit XML: one test case per requirement, a `<failure>` for each that
/// fails, the values in `<system-out>`.
pub fn junit(report: &GateReport) -> String {
    let tests = report.requirements.len();
    let failures = report.failed_count();
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ =
        writeln!(out, "<testsuites name=\"driftwatch gate\" tests=\"{tests}\" failures=\"{failures}\" errors=\"0\">");
    let _ = writeln!(
        out,
        "  <testsuite name=\"driftwatch gate\" tests=\"{tests}\" failures=\"{failures}\" errors=\"0\" skipped=\"0\">"
    );
    let _ = writeln!(out, "    <properties>");
    for (name, value) in
        [("old", report.old.source.as_str()), ("new", report.new.source.as_str()), ("pairing", report.pairing.as_str())]
    {
        let _ = writeln!(out, "      <property name=\"{name}\" value=\"{}\"/>", xml_escape(value));
    }
    let _ = writeln!(out, "    </properties>");
    for outcome in &report.requirements {
        let details = format!(
            "old {}, new {}, requirement {}, difference {}",
            value_text(outcome.metric, outcome.old),
            value_text(outcome.metric, outcome.new),
            requirement_text(outcome),
            if outcome.difference.is_some() { difference_text(outcome) } else { "n/a".to_string() }
        );
        let _ = write!(
            out,
            "    <testcase classname=\"driftwatch.gate\" name=\"{}\" time=\"0\">",
            xml_escape(&outcome.requirement)
        );
        if !outcome.verdict.passed() {
            let message = match &outcome.note {
                Some(note) => note.clone(),
                None => format!(
                    "new {} {} is not {}",
                    outcome.metric,
                    value_text(outcome.metric, outcome.new),
                    requirement_text(outcome)
                ),
            };
            let _ = write!(
                out,
                "\n      <failure message=\"{}\" type=\"requirement\">{}</failure>",
                xml_escape(&message),
                xml_escape(&details)
            );
        }
        let _ = writeln!(out, "\n      <system-out>{}</system-out>\n    </testcase>", xml_escape(&details));
    }
    out.push_str("  </testsuite>\n</testsuites>\n");
    out
}

fn markdown_cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// A Markdown heading, the sides, a table and the verdict (GitHub
/// Flavored Markdown, for `$GITHUB_STEP_SUMMARY`).
pub fn markdown(report: &GateReport) -> String {
    let mut out = String::new();
    let mark = if report.passed { "✅ passed" } else { "❌ failed" };
    let _ = writeln!(out, "### driftwatch gate: {mark}\n");
    let _ = writeln!(out, "{}\n", markdown_cell(&sides_line(report)));
    for (i, row) in cells(report).iter().enumerate() {
        let row: Vec<String> = row.iter().map(|c| markdown_cell(c)).collect();
        let _ = writeln!(out, "| {} |", row.join(" | "));
        if i == 0 {
            let _ = writeln!(out, "|{}", "---|".repeat(row.len()));
        }
    }
    out.push('\n');
    for outcome in &report.requirements {
        if let Some(note) = &outcome.note {
            let _ = writeln!(out, "- `{}`: {}", outcome.requirement, markdown_cell(note));
        }
    }
    for note in &report.notes {
        let _ = writeln!(out, "- {}", markdown_cell(note));
    }
    let _ = writeln!(out, "\n**{}**", markdown_cell(&summary_line(report)));
    out
}
