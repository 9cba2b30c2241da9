//! Drift against a baseline end to end: a baseline built from healthy
//! simulated traffic, then a replay of a stream that drifts half-way.

use std::process::Command;

use serde_json::Value;

fn driftwatch(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_driftwatch")).args(args).output().unwrap();
    assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn drift_rows_rise_only_after_the_drift_starts() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();
    // Healthy training traffic, then a stream whose second half drifts.
    driftwatch(&["simulate", "--out", &path("train.ndjson"), "--rate", "40", "--duration", "20m", "--seed", "1"]);
    driftwatch(&[
        "baseline",
        "build",
        "--input",
        &path("train.ndjson"),
        "--model",
        "fraud",
        "--out",
        &path("b.json"),
        "--quiet",
    ]);
    driftwatch(&[
        "simulate",
        "--out",
        &path("live.ndjson"),
        "--rate",
        "40",
        "--duration",
        "20m",
        "--drift-at",
        "10m",
        "--seed",
        "2",
    ]);
    std::fs::write(
        path("c.yaml"),
        format!("windows: {{size: 5m}}\nmodels: [{{name: fraud, baseline: {}}}]\n", path("b.json")),
    )
    .unwrap();
    let rows = driftwatch(&["replay", "--config", &path("c.yaml"), "--predictions", &path("live.ndjson")]);
    let rows: Vec<Value> = rows.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let series = |feature: &str, metric: &str| -> Vec<(String, f64)> {
        rows.iter()
            .filter(|r| r["segment"] == "" && r["feature"] == feature && r["metric"] == metric)
            .map(|r| (r["window_start"].as_str().unwrap().to_string(), r["value"].as_f64().unwrap()))
            .collect()
    };
    for (feature, metric) in
        [("amount", "psi"), ("amount", "ks"), ("amount", "wasserstein"), ("country", "psi"), ("country", "unseen_rate")]
    {
        let values = series(feature, metric);
        assert_eq!(values.len(), 4, "{feature} {metric}: {values:?}");
        let before = values[0].1.max(values[1].1);
        let after = values[2].1.min(values[3].1);
        assert!(after > 4.0 * before && after > 0.05, "{feature} {metric}: {values:?}");
    }
    // Verdicts: healthy windows (before 10:10) almost never drifted, shifted
    // features drifted after. (Whole-model rows: the baseline is the whole
    // model's, and a segment defined by a feature, like region by country,
    // rightly differs from it.)
    let drift_rows: Vec<&Value> = rows.iter().filter(|r| r["drifted"].is_boolean() && r["segment"] == "").collect();
    let healthy: Vec<&&Value> =
        drift_rows.iter().filter(|r| r["window_start"].as_str().unwrap() < "2026-11-26T10:10").collect();
    let false_alarms = healthy.iter().filter(|r| r["drifted"] == true).count();
    assert!(healthy.len() > 150, "{}", healthy.len());
    assert!(
        false_alarms * 100 <= healthy.len(),
        "{false_alarms} of {} healthy drift rows marked drifted",
        healthy.len()
    );
    for metric in ["psi", "ks", "jensen_shannon", "hellinger"] {
        let after: Vec<&&Value> = drift_rows
            .iter()
            .filter(|r| r["feature"] == "amount" && r["metric"] == metric && r["segment"] == "")
            .filter(|r| r["window_start"].as_str().unwrap() >= "2026-11-26T10:10")
            .collect();
        assert_eq!(after.len(), 2, "{metric}");
        assert!(after.iter().all(|r| r["drifted"] == true && r["threshold"].is_number()), "{metric}: {after:?}");
    }
    // Healthy windows: the reference bins fit (PSI well under the usual 0.1).
    assert!(series("amount", "psi")[..2].iter().all(|(_, v)| *v < 0.05));
    // Every drift row of a feature with a baseline carries the baseline value where it has one.
    let missing = rows.iter().find(|r| r["feature"] == "amount" && r["metric"] == "missing_rate").unwrap();
    assert!(missing["baseline"].is_number());
    let ks = rows.iter().find(|r| r["feature"] == "amount" && r["metric"] == "ks").unwrap();
    assert!(ks["p_value"].is_number());
}
