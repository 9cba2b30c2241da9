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

/// The "done when": a replay of a stream whose second half drifts
/// (`tests/fixtures/replay_drift/`, made by its `generate.py`) marks rows
/// drifted only after the drift starts, and its statistics equal scipy's on
/// the same data: exactly (1e-6) where driftwatch computes exactly, within
/// the fixture's stated bound where it uses the baseline's sketch.
#[test]
fn replayed_drift_matches_scipy_and_is_flagged_only_after_it_starts() {
    let fixture =
        |name: &str| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/replay_drift").join(name);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.yaml");
    std::fs::write(
        &config,
        format!("windows: {{size: 5m}}\nmodels: [{{name: shop, baseline: {}}}]\n", fixture("baseline.json").display()),
    )
    .unwrap();
    let output = driftwatch(&[
        "replay",
        "--config",
        config.to_str().unwrap(),
        "--predictions",
        fixture("live.ndjson").to_str().unwrap(),
    ]);
    let rows: Vec<Value> = output.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let expected: Value = serde_json::from_str(&std::fs::read_to_string(fixture("expected.json")).unwrap()).unwrap();
    let drift_starts = expected["drift_starts"].as_str().unwrap();
    let row = |window: &str, feature: &str, metric: &str| -> &Value {
        rows.iter()
            .find(|r| {
                r["window_start"] == window && r["segment"] == "" && r["feature"] == feature && r["metric"] == metric
            })
            .unwrap_or_else(|| panic!("no {feature} {metric} row for {window}"))
    };
    let mut compared = 0;
    for window in expected["windows"].as_array().unwrap() {
        let start = window["window_start"].as_str().unwrap();
        for (feature, values) in window["features"].as_object().unwrap() {
            let n = values["n"].as_u64().unwrap();
            for metric in ["psi", "jensen_shannon", "hellinger", "chi2", "unseen_rate", "out_of_range_rate"] {
                let Some(want) = values[metric].as_f64() else { continue };
                let got = row(start, feature, metric);
                let value = got["value"].as_f64().unwrap();
                assert!(
                    (value - want).abs() <= 1e-6 * want.abs().max(1.0),
                    "{start} {feature} {metric}: {value} vs scipy {want}"
                );
                assert_eq!(got["sample_count"].as_u64(), Some(n), "{start} {feature} {metric} sample_count");
                compared += 1;
            }
            if let Some(want) = values["chi2_p_value"].as_f64() {
                let p = row(start, feature, "chi2")["p_value"].as_f64().unwrap();
                assert!(
                    (p - want).abs() <= 1e-6 * want.max(1e-300).max(1e-12) + 1e-12,
                    "{start} {feature} chi2 p: {p} vs scipy {want}"
                );
            }
            if let Some(want) = values["ks"].as_f64() {
                let got = row(start, feature, "ks");
                let (d, p) = (got["value"].as_f64().unwrap(), got["p_value"].as_f64().unwrap());
                let bound = values["ks_bound"].as_f64().unwrap();
                assert!((d - want).abs() <= bound, "{start} {feature} ks: {d} vs scipy {want} (bound {bound})");
                let range = values["ks_p_value_range"].as_array().unwrap();
                let (low, high) = (range[0].as_f64().unwrap(), range[1].as_f64().unwrap());
                assert!(
                    p >= low * (1.0 - 1e-9) && p <= high * (1.0 + 1e-9),
                    "{start} {feature} ks p {p} outside [{low}, {high}]"
                );
                let w = row(start, feature, "wasserstein")["value"].as_f64().unwrap();
                let want = values["wasserstein"].as_f64().unwrap();
                let bound = values["wasserstein_bound"].as_f64().unwrap();
                assert!(
                    (w - want).abs() <= bound,
                    "{start} {feature} wasserstein: {w} vs scipy {want} (bound {bound})"
                );
                compared += 2;
            }
        }
    }
    assert_eq!(compared, 4 * (2 * 6 + 4), "every expected value was compared");
    // Verdicts: every drift row carries a threshold; nothing is drifted
    // before the drift starts; afterwards every metric of the drifting
    // features is, and the stable feature (`tenure`) is not.
    let drift_rows: Vec<&Value> = rows.iter().filter(|r| r["segment"] == "" && r["drifted"].is_boolean()).collect();
    for metric in
        ["psi", "ks", "wasserstein", "jensen_shannon", "hellinger", "chi2", "unseen_rate", "out_of_range_rate"]
    {
        assert!(drift_rows.iter().any(|r| r["metric"] == metric), "{metric} rows carry a verdict");
    }
    assert!(drift_rows.iter().all(|r| r["threshold"].is_number()));
    let early_alarms: Vec<&&Value> = drift_rows
        .iter()
        .filter(|r| r["window_start"].as_str().unwrap() < drift_starts && r["drifted"] == true)
        .collect();
    assert!(early_alarms.is_empty(), "drifted before the drift: {early_alarms:?}");
    for window in ["2026-11-26T10:10:00.000Z", "2026-11-26T10:15:00.000Z"] {
        for metric in ["psi", "ks", "wasserstein", "jensen_shannon", "hellinger"] {
            assert_eq!(row(window, "amount", metric)["drifted"], true, "{window} amount {metric}");
            assert_eq!(row(window, "tenure", metric)["drifted"], false, "{window} tenure {metric}");
        }
        for metric in ["psi", "chi2", "jensen_shannon", "unseen_rate"] {
            assert_eq!(row(window, "country", metric)["drifted"], true, "{window} country {metric}");
        }
    }
}
