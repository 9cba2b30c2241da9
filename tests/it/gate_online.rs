//! The online gate against a daemon on a real broker (Tansu): a champion
//! (version 3) and two canaries of one model, one worse (version 4) and one
//! not (version 5); `driftwatch gate --from` fails the worse, passes the
//! other, refuses to pass on too little evidence, and says when the daemon
//! cannot be reached.

use std::process::{Command, Output};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{
    Broker, flush, http, http_address, log_text, one_record_per_batch, send, start_daemon, wait_until,
};

/// Predictions per version; all labelled.
const PER_VERSION: usize = 400;

/// Whether version `version`'s prediction `i` is right: 3 and 5 are right
/// 90% and 92% of the time, 4 only 70%.
fn right(version: &str, i: usize) -> bool {
    let share = match version {
        "3" => 90,
        "4" => 70,
        _ => 92,
    };
    (i * 37) % 100 < share
}

fn gate(address: &str, candidate: &str, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_driftwatch"))
        .args(["gate", "--from", &format!("http://{address}"), "--model", "fraud", "--champion", "3"])
        .args(["--candidate", candidate, "--since", "2h", "--format", "json"])
        .args(["--require", "accuracy >= old - 0.02", "--require", "labeled_count >= 100"])
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn the_online_gate_fails_a_worse_canary_passes_a_good_one_and_wants_evidence() {
    let broker = Broker::start();
    broker.create_topic("predictions", 1);
    broker.create_topic("labels", 1);
    let now = chrono::Utc::now().timestamp_millis();
    // Half an hour of traffic ending ten minutes ago, labels a second later.
    let start = now - 40 * 60_000;
    let mut config = rdkafka::config::ClientConfig::new();
    let producer: rdkafka::producer::BaseProducer =
        one_record_per_batch(&mut config).set("bootstrap.servers", broker.bootstrap()).create().unwrap();
    for i in 0..PER_VERSION {
        for version in ["3", "4", "5"] {
            let time = start + (i as i64) * 4_500;
            let id = format!("{version}-{i}");
            let prediction = (i % 2) as i64;
            let label = if right(version, i) { prediction } else { 1 - prediction };
            let event = json!({"event_id": id, "model": "fraud", "model_version": version, "timestamp": time,
                               "prediction": prediction, "features": {"amount": i % 50}});
            send(&producer, "predictions", &id, event.to_string().as_bytes());
            let label = json!({"event_id": id, "model": "fraud", "timestamp": time + 1_000, "label": label});
            send(&producer, "labels", &id, label.to_string().as_bytes());
        }
        producer.poll(Duration::ZERO);
    }
    // A prediction two minutes ago closes every window and label horizon before it.
    let closer = json!({"event_id": "closer", "model": "fraud", "model_version": "3", "timestamp": now - 120_000, "prediction": 0});
    send(&producer, "predictions", "closer", closer.to_string().as_bytes());
    flush(&producer);

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("driftwatch.yaml");
    std::fs::write(
        &config,
        format!(
            "kafka: {{brokers: \"{}\", group_id: gate}}\n\
             windows: {{size: 5m, allowed_lateness: 0s, label_horizon: 1m, idle_timeout: 2s}}\n\
             pipeline: {{batch_size: 200, linger: 20ms}}\n\
             http: {{listen: \"127.0.0.1:0\"}}\n\
             models: [{{name: fraud, task: binary_classification}}]\n",
            broker.bootstrap()
        ),
    )
    .unwrap();
    let _daemon = start_daemon(dir.path(), &config, "daemon.log");
    wait_until(Duration::from_secs(60), "the HTTP API", || {
        log_text(dir.path(), "daemon.log").contains("HTTP API listening")
    });
    let address = http_address(&log_text(dir.path(), "daemon.log"));
    // Every label joined and its window's performance rows out.
    wait_until(Duration::from_secs(120), "every version's labelled rows", || {
        let (_, page) = http(&address, "GET", "/api/v1/windows?model=fraud&metric=labeled_count&segment=", None);
        let labelled = |version: &str| -> f64 {
            page["windows"]
                .as_array()
                .map(|rows| {
                    rows.iter().filter(|r| r["model_version"] == version).map(|r| r["value"].as_f64().unwrap()).sum()
                })
                .unwrap_or(0.0)
        };
        ["3", "4", "5"].iter().all(|v| labelled(v) == PER_VERSION as f64)
    });
    let accuracy = |version: &str| (0..PER_VERSION).filter(|&i| right(version, i)).count() as f64 / PER_VERSION as f64;

    // The worse canary fails, with the exact pooled accuracy of each side.
    let worse = gate(&address, "4", &["--min-labels", "200"]);
    let stderr = String::from_utf8_lossy(&worse.stderr);
    assert_eq!(worse.status.code(), Some(1), "{stderr}");
    let report: Value = serde_json::from_slice(&worse.stdout).unwrap();
    let requirement = &report["requirements"][0];
    assert!((requirement["old"].as_f64().unwrap() - accuracy("3")).abs() < 1e-12, "{report}");
    assert!((requirement["new"].as_f64().unwrap() - accuracy("4")).abs() < 1e-12, "{report}");
    assert_eq!(requirement["verdict"], "fail");
    assert_eq!(report["new"]["labeled_rows"], PER_VERSION as u64);
    assert_eq!(requirement["significance"]["method"], "two_proportion_z", "{report}");
    assert_eq!(requirement["significance"]["significant"], true, "{report}");

    // The good one passes.
    let good = gate(&address, "5", &["--min-labels", "200"]);
    assert_eq!(good.status.code(), Some(0), "{}", String::from_utf8_lossy(&good.stderr));
    let report: Value = serde_json::from_slice(&good.stdout).unwrap();
    assert!((report["requirements"][0]["new"].as_f64().unwrap() - accuracy("5")).abs() < 1e-12);

    // Too little evidence: the requirements hold, the gate still fails, and says why.
    let thin = gate(&address, "5", &["--min-labels", "1000"]);
    assert_eq!(thin.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&thin.stdout).unwrap();
    assert!(report["requirements"].as_array().unwrap().iter().all(|r| r["verdict"] == "pass"), "{report}");
    let notes = report["notes"].to_string();
    assert!(notes.contains("too little evidence") && notes.contains("fewer than --min-labels 1000"), "{notes}");
    assert!(String::from_utf8_lossy(&thin.stderr).contains("too little evidence"));

    // An unknown model and an unreachable daemon are bad input (exit 2), named.
    let unknown = Command::new(env!("CARGO_BIN_EXE_driftwatch"))
        .args([
            "gate",
            "--from",
            &format!("http://{address}"),
            "--model",
            "frod",
            "--champion",
            "3",
            "--candidate",
            "5",
        ])
        .args(["--require", "accuracy >= 0.5"])
        .output()
        .unwrap();
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("no model named \"frod\""),
        "{}",
        String::from_utf8_lossy(&unknown.stderr)
    );
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let unreachable = gate(&closed.to_string(), "5", &[]);
    assert_eq!(unreachable.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unreachable.stderr).contains(&format!("--from http://{closed}")));
}
