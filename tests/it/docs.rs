//! The documentation stands alone and stays current: nothing outside the
//! tests points at a document the repository does not hold, and the
//! reference pages list exactly the metric names, invalid-event reasons,
//! Prometheus metrics and config keys the code has.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use driftwatch::config::Config;
use driftwatch::decode::InvalidReason;
use driftwatch::window_metrics::METRIC_NAMES;

use crate::support::repo;

/// Text that points at a document outside the repository.
const OUTSIDE_POINTERS: &[&str] = &["../shared", "shared/SPEC.md", "SPEC.md", "SPEC §"];

/// Tracked paths not checked for pointers: the tests themselves (this file
/// names the pointers), fuzz inputs (mutated copies of old fixtures) and
/// the CI machinery.
const UNCHECKED_PREFIXES: &[&str] = &["tests/", "fuzz/corpus/", ".ci/"];

fn read_doc(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every file git tracks (with uncommitted additions), or, without git,
/// every file under the repository except build output.
fn repository_files() -> Vec<PathBuf> {
    let root = repo("");
    let listed = Command::new("git")
        .args(["ls-files", "-z", "--cached", "--others", "--exclude-standard"])
        .current_dir(&root)
        .output();
    if let Ok(output) = listed
        && output.status.success()
    {
        return output
            .stdout
            .split(|b| *b == 0)
            .filter(|p| !p.is_empty())
            .map(|p| root.join(String::from_utf8_lossy(p).as_ref()))
            .collect();
    }
    let mut files = Vec::new();
    let mut directories = vec![root.clone()];
    while let Some(directory) = directories.pop() {
        for entry in std::fs::read_dir(&directory).unwrap().flatten() {
            let path = entry.path();
            let name = entry.file_name();
            if name == "target" || name == ".git" {
                continue;
            }
            if path.is_dir() {
                directories.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}

#[test]
fn nothing_outside_the_tests_points_at_a_document_outside_the_repository() {
    let root = repo("");
    let mut offenders = Vec::new();
    for path in repository_files() {
        let relative = path.strip_prefix(&root).unwrap_or(&path).to_string_lossy().replace('\\', "/");
        if UNCHECKED_PREFIXES.iter().any(|prefix| relative.starts_with(prefix)) {
            continue;
        }
        let Ok(bytes) = std::fs::read(&path) else { continue };
        let text = String::from_utf8_lossy(&bytes);
        for (number, line) in text.lines().enumerate() {
            if let Some(pointer) = OUTSIDE_POINTERS.iter().find(|pointer| line.contains(*pointer)) {
                offenders.push(format!("{relative}:{}: mentions {pointer:?}: {}", number + 1, line.trim()));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "point at docs/ instead (docs/REFERENCE.md, CONFIG.md, RULES.md, OBSERVABILITY.md):\n{}",
        offenders.join("\n")
    );
}

/// The backticked names in the first column of the table that follows
/// `heading` in `text` (a cell may list several: `` `a`, `b` ``).
fn first_column_names(text: &str, heading: &str) -> BTreeSet<String> {
    let start = text.find(heading).unwrap_or_else(|| panic!("no {heading:?} section"));
    let mut names = BTreeSet::new();
    let mut in_table = false;
    for line in text[start + heading.len()..].lines() {
        if line.starts_with('#') {
            break;
        }
        if !line.starts_with('|') {
            if in_table {
                break;
            }
            continue;
        }
        in_table = true;
        let cell = line.trim_start_matches('|').split('|').next().unwrap_or("");
        names.extend(cell.split('`').skip(1).step_by(2).map(str::to_string));
    }
    assert!(!names.is_empty(), "no table under {heading:?}");
    names
}

fn assert_same_names(what: &str, documented: &BTreeSet<String>, in_code: &BTreeSet<String>, page: &str) {
    let undocumented: Vec<_> = in_code.difference(documented).collect();
    let stale: Vec<_> = documented.difference(in_code).collect();
    assert!(
        undocumented.is_empty() && stale.is_empty(),
        "{page}'s {what} differ from the code: not documented {undocumented:?}; documented but not in the code {stale:?}"
    );
}

#[test]
fn the_reference_lists_every_window_metric_name() {
    let documented = first_column_names(&read_doc("docs/REFERENCE.md"), "### Metric names");
    let in_code: BTreeSet<String> = METRIC_NAMES.iter().map(|name| name.to_string()).collect();
    assert_same_names("metric names", &documented, &in_code, "docs/REFERENCE.md");
}

#[test]
fn the_reference_lists_every_invalid_event_reason() {
    let documented = first_column_names(&read_doc("docs/REFERENCE.md"), "### Invalid events");
    let in_code: BTreeSet<String> = InvalidReason::ALL.iter().map(|reason| reason.label().to_string()).collect();
    assert_same_names("invalid-event reasons", &documented, &in_code, "docs/REFERENCE.md");
}

/// A Prometheus name without the `_total` the exporter adds to counters.
fn without_total(name: &str) -> String {
    name.strip_suffix("_total").unwrap_or(name).to_string()
}

#[test]
fn observability_lists_every_prometheus_metric() {
    let documented: BTreeSet<String> =
        first_column_names(&read_doc("docs/OBSERVABILITY.md"), "## Metrics").iter().map(|n| without_total(n)).collect();
    // The instruments are registered by name in src/metrics.rs.
    let source = read_doc("src/metrics.rs");
    let in_code: BTreeSet<String> = source
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|literal| {
            literal.starts_with("driftwatch_") && literal.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        })
        .map(without_total)
        .collect();
    assert!(in_code.len() > 10, "found only {in_code:?} in src/metrics.rs");
    assert_same_names("metric names", &documented, &in_code, "docs/OBSERVABILITY.md");
}

/// Every key of `value`, recursively, except inside maps whose keys are
/// the user's (librdkafka options, notifiers, OTLP headers).
fn config_keys(value: &serde_json::Value, path: &str, keys: &mut BTreeSet<(String, String)>) {
    const FREE_FORM: &[&str] = &["kafka.options", "notifiers", "otlp.headers"];
    match value {
        serde_json::Value::Object(map) => {
            for (key, inner) in map {
                let inner_path = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                keys.insert((key.clone(), inner_path.clone()));
                if !FREE_FORM.contains(&inner_path.as_str()) {
                    config_keys(inner, &inner_path, keys);
                }
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                config_keys(item, &format!("{path}[]"), keys);
            }
        }
        _ => {}
    }
}

#[test]
fn config_md_describes_every_config_key() {
    // Every section, and every optional key that is left out when unset.
    let yaml = "kafka: {brokers: localhost:9092, dead_letter_topic: dlq}\n\
                models: [{name: m, baseline: b.json}]\n\
                http: {token: secret-token}\n\
                state: {dir: state}\n\
                output: {window_metrics: out.ndjson}\n\
                alerting: {audit_log: audit.ndjson}\n\
                otlp: {endpoint: 'http://collector:4318'}\n";
    let config =
        Config::from_yaml_str_with_base(yaml, "every-key.yaml", Some(Path::new("/"))).unwrap_or_else(|e| panic!("{e}"));
    let mut keys = BTreeSet::new();
    config_keys(&serde_json::to_value(&config).unwrap(), "", &mut keys);
    let page = read_doc("docs/CONFIG.md");
    let undocumented: Vec<&String> =
        keys.iter().filter(|(key, _)| !page.contains(&format!("`{key}`"))).map(|(_, path)| path).collect();
    assert!(keys.len() > 40, "found only {keys:?}");
    assert!(undocumented.is_empty(), "docs/CONFIG.md does not describe {undocumented:?}");
}
