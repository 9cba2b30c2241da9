//! `driftwatch demo`: nothing to set up; drift injected a third of the way
//! in is detected after the injection, the accuracy alert fires and the
//! retraining webhook is delivered; exit 0 with a summary.

use std::process::Command;

#[test]
fn the_demo_detects_the_injected_drift_and_delivers_the_retraining_webhook() {
    let output = Command::new(env!("CARGO_BIN_EXE_driftwatch"))
        .args(["demo", "--duration", "40s", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("status page and API: http://127.0.0.1:"), "{stdout}");
    let injected = stdout.find("injecting drift now").expect("the injection is announced");
    let first_drift = stdout.find("DRIFT in").expect("a window with drifted features");
    assert!(first_drift > injected, "no drift reported before the injection:\n{stdout}");
    assert!(stdout.contains("ALERT FeatureDrift FIRING: amount drifted"), "{stdout}");
    assert!(stdout.contains("ALERT AccuracyBelowBaseline FIRING"), "{stdout}");
    let webhook = stdout.find("webhook received: POST /retrain").expect("the retraining webhook");
    assert!(stdout[webhook..].contains("\"alert\": \"AccuracyBelowBaseline\""), "{stdout}");
    let summary = stdout.lines().find(|l| l.starts_with("summary:")).expect("a summary");
    let number_after = |marker: &str| -> f64 {
        let rest = &summary[summary.find(marker).unwrap_or_else(|| panic!("{marker} in {summary}")) + marker.len()..];
        rest.split_whitespace().next().unwrap().trim_end_matches(',').parse().unwrap()
    };
    assert!(number_after("detected at ") >= number_after("drift injected at "), "{summary}");
    assert!(summary.contains("retraining webhook"), "{summary}");
    assert!(!summary.contains(" 0 retraining webhooks"), "{summary}");
}
