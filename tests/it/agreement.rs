//! `replay` agrees with the daemon: the same events, read by `driftwatch
//! run` from a real broker (Tansu) and by `driftwatch replay` from files
//! with micro-batches of 1, 200 and 8,192 events, give the same
//! `window_metrics` rows and the same alert transitions, for label horizons
//! of one minute, one hour and one day.
//!
//! The events are two models' (a binary classifier with segments and a
//! regression model) over 26 hours, one prediction a minute each, a little
//! out of order (some late beyond `allowed_lateness`), with labels coming
//! from seconds to a day later (some exactly at the horizon, some just past
//! it, some never): the daemon reads the whole backlog at once, predictions
//! far ahead of labels. Random with a printed seed
//! (`DRIFTWATCH_AGREEMENT_SEED` reruns one).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{Broker, flush, log_text, one_record_per_batch, records, send, start_daemon, wait_until};

/// 2026-11-26T00:00:00Z.
const T0: i64 = 1_795_651_200_000;
const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;
/// One prediction a minute per model for 26 hours.
const PREDICTIONS_PER_MODEL: i64 = 26 * 60;

/// splitmix64: a small seeded generator (the test prints its seed).
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The predictions in the order produced and the labels in the order they
/// became known (their event time), as NDJSON lines; plus each model's last
/// prediction time.
fn events(seed: u64) -> (Vec<String>, Vec<String>) {
    let mut random = Random(seed);
    let mut predictions = Vec::new();
    let mut labels: Vec<(i64, usize, String)> = Vec::new();
    let horizons = [MINUTE, HOUR, DAY];
    for i in 0..PREDICTIONS_PER_MODEL {
        for model in ["shop", "eta"] {
            // A little out of order: up to 90 s early or late.
            let time = T0 + i * MINUTE + random.below(180_000) as i64 - 90_000;
            let id = format!("{model}-{i}");
            let hour = (time - T0) / HOUR;
            // The models are worse in some hours (alerts fire and resolve).
            let bad = hour % 5 == 3;
            let (prediction, label, extra) = if model == "shop" {
                let score = random.unit();
                let predicted = u8::from(score >= 0.5);
                let wrong = random.unit() < if bad { 0.5 } else { 0.1 };
                let actual = if wrong { 1 - predicted } else { predicted };
                let country = ["DE", "FR", "US"][random.below(3) as usize];
                (json!(predicted), json!(actual), json!({"score": score, "segment": {"country": country}}))
            } else {
                let predicted = 10.0 + random.unit() * 20.0;
                let error = (random.unit() - 0.5) * if bad { 16.0 } else { 2.0 };
                (json!(predicted), json!(predicted + error), json!({}))
            };
            let channel = ["web", "app"][random.below(2) as usize];
            let mut event = json!({
                "event_id": id, "model": model, "timestamp": time, "prediction": prediction,
                "features": {"amount": (random.unit() * 100.0).round(), "channel": channel},
            });
            for (key, value) in extra.as_object().unwrap() {
                event[key] = value.clone();
            }
            predictions.push(event.to_string());
            // Label delays in whole seconds, some exactly at or just past a horizon.
            let roll = random.below(100);
            let delay = match roll {
                0..=44 => Some(random.below(120) as i64 * 1000),
                45..=52 => Some(horizons[random.below(3) as usize]),
                53..=60 => Some(horizons[random.below(3) as usize] + 1000),
                61..=84 => Some((2 * 60 + random.below(118 * 60) as i64) * 1000),
                85..=94 => Some((2 * 3600 + random.below(23 * 3600) as i64) * 1000),
                _ => None,
            };
            if let Some(delay) = delay {
                let label = json!({"event_id": id, "model": model, "timestamp": time + delay, "label": label});
                labels.push((time + delay, labels.len(), label.to_string()));
            }
        }
    }
    labels.sort();
    (predictions, labels.into_iter().map(|(_, _, line)| line).collect())
}

/// Predictions two days after the last, one per model: they close every
/// real window and label horizon (their own window stays open).
fn closers() -> Vec<String> {
    let time = T0 + PREDICTIONS_PER_MODEL * MINUTE + 2 * DAY;
    vec![
        json!({"event_id": "shop-closer", "model": "shop", "timestamp": time, "prediction": 0, "score": 0.1})
            .to_string(),
        json!({"event_id": "eta-closer", "model": "eta", "timestamp": time, "prediction": 1.0}).to_string(),
    ]
}

const RULES: &str = "groups:
  - name: quality
    rules:
      - alert: ShopAccuracyLow
        expr: model = 'shop' AND metric = 'accuracy' AND value < 0.8
      - alert: EtaErrorHigh
        expr: model = 'eta' AND metric = 'mae' AND segment = '' AND value > 2
";

fn write_config(dir: &Path, name: &str, horizon: &str, head: &str, batch_size: usize) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "{head}windows: {{size: 30m, allowed_lateness: 1m, label_horizon: {horizon}, idle_timeout: 10s}}\n\
             pipeline: {{batch_size: {batch_size}, linger: 20ms}}\n\
             models:\n  - {{name: shop, task: binary_classification}}\n  - {{name: eta, task: regression}}\n\
             rules: [rules.yaml]\n"
        ),
    )
    .unwrap();
    path
}

fn rows_by_key(path: &Path) -> BTreeMap<String, Value> {
    let mut rows = BTreeMap::new();
    for row in records(path) {
        let key = driftwatch::output::row_key_of_json(&row).expect("a window_metrics row");
        assert!(rows.insert(key.clone(), row).is_none(), "{}: row written twice: {key}", path.display());
    }
    rows
}

fn transition_identity(t: &Value) -> String {
    format!("{} {} {} {}", t["alert"], t["state"], t["fingerprint"], t["window_end"].as_str().unwrap_or(""))
}

/// `driftwatch replay` over the files with `batch_size`: its rows and
/// transitions.
fn replay(dir: &Path, horizon: &str, batch_size: usize) -> (BTreeMap<String, Value>, Vec<String>, String) {
    let config = write_config(dir, &format!("replay-{batch_size}.yaml"), horizon, "", batch_size);
    let out = dir.join(format!("replay-{batch_size}.ndjson"));
    let alerts = dir.join(format!("replay-{batch_size}-alerts.ndjson"));
    let output = Command::new(env!("CARGO_BIN_EXE_driftwatch"))
        .args(["replay", "--config", config.to_str().unwrap()])
        .args(["--predictions", dir.join("predictions.ndjson").to_str().unwrap()])
        .args(["--labels", dir.join("labels.ndjson").to_str().unwrap()])
        .args(["--out", out.to_str().unwrap(), "--alerts", alerts.to_str().unwrap()])
        .current_dir(dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(output.status.success(), "replay failed: {stderr}");
    (rows_by_key(&out), records(&alerts).iter().map(transition_identity).collect(), stderr)
}

/// Rows are equal field by field; `value`, `threshold` and `p_value` may
/// differ in the last bits (sums of floating-point errors depend on the
/// order in which pairs formed, which the interleaving of the two topics
/// decides), nothing else may.
fn same_row(a: &Value, b: &Value) -> bool {
    let (a, b) = (a.as_object().unwrap(), b.as_object().unwrap());
    a.len() == b.len()
        && a.iter().all(|(field, x)| {
            let y = &b[field];
            match (field.as_str(), x.as_f64(), y.as_f64()) {
                ("value" | "threshold" | "p_value" | "baseline", Some(x), Some(y)) => {
                    x == y || (x - y).abs() <= 1e-12 * x.abs().max(y.abs())
                }
                _ => x == y,
            }
        })
}

fn window_start_ms(row: &Value) -> i64 {
    driftwatch::timestamp::parse_rfc3339_ms(row["window_start"].as_str().unwrap()).unwrap()
}

#[test]
fn replay_gives_the_daemons_rows_and_transitions_for_any_batch_size_and_horizon() {
    let seed = std::env::var("DRIFTWATCH_AGREEMENT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    eprintln!("agreement seed {seed} (DRIFTWATCH_AGREEMENT_SEED={seed} reruns it)");
    let (predictions, labels) = events(seed);
    let closers = closers();
    let broker = Broker::start();
    broker.create_topic("predictions", 1);
    broker.create_topic("labels", 1);
    // The whole stream is a backlog when each daemon starts.
    let mut config = rdkafka::config::ClientConfig::new();
    let producer: rdkafka::producer::BaseProducer =
        one_record_per_batch(&mut config).set("bootstrap.servers", broker.bootstrap()).create().unwrap();
    for (i, line) in predictions.iter().chain(&closers).enumerate() {
        send(&producer, "predictions", &i.to_string(), line.as_bytes());
        if i % 500 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    for (i, line) in labels.iter().enumerate() {
        send(&producer, "labels", &i.to_string(), line.as_bytes());
        if i % 500 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    flush(&producer);
    let closer_window = {
        let time = T0 + PREDICTIONS_PER_MODEL * MINUTE + 2 * DAY;
        time - time.rem_euclid(30 * MINUTE)
    };
    for horizon in ["1m", "1h", "1d"] {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        std::fs::write(dir.join("rules.yaml"), RULES).unwrap();
        std::fs::write(
            dir.join("predictions.ndjson"),
            predictions.iter().chain(&closers).cloned().collect::<Vec<_>>().join("\n") + "\n",
        )
        .unwrap();
        std::fs::write(dir.join("labels.ndjson"), labels.join("\n") + "\n").unwrap();
        let head = format!(
            "kafka: {{brokers: \"{}\", group_id: agreement-{horizon}, options: {{session.timeout.ms: \"6000\"}}}}\n\
             state: {{dir: state, checkpoint_interval: 1s}}\n\
             output: {{window_metrics: out.ndjson}}\n",
            broker.bootstrap()
        );
        let config = write_config(dir, "daemon.yaml", horizon, &head, 200);
        let mut daemon = start_daemon(dir, &config, "daemon.log");
        // Every row the replay has but for the closers' windows: the last
        // performance rows come once the labels have been idle for 10 s and
        // the closers' watermark releases them.
        let (reference, _, _) = replay(dir, horizon, 8192);
        let expected: Vec<&String> =
            reference.iter().filter(|(_, r)| window_start_ms(r) < closer_window).map(|(k, _)| k).collect();
        wait_until(Duration::from_secs(180), &format!("horizon {horizon}: the daemon's rows"), || {
            // Whole lines only: the daemon may be writing the last one.
            let text = std::fs::read_to_string(dir.join("out.ndjson")).unwrap_or_default();
            let whole = &text[..text.rfind('\n').map_or(0, |end| end + 1)];
            let written: std::collections::BTreeSet<String> = whole
                .lines()
                .map(|l| driftwatch::output::row_key_of_json(&serde_json::from_str(l).unwrap()).unwrap())
                .collect();
            expected.iter().all(|k| written.contains(*k)) || log_text(dir, "daemon.log").contains(" ERROR ")
        });
        let pid = daemon.0.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(daemon.0.wait().unwrap().success(), "clean exit:\n{}", log_text(dir, "daemon.log"));
        let daemon_rows = rows_by_key(&dir.join("out.ndjson"));
        let daemon_transitions: Vec<String> = records(&dir.join("state/audit.ndjson"))
            .iter()
            .filter(|r| r["kind"] == "transition")
            .map(transition_identity)
            .collect();
        let labelled: f64 = daemon_rows
            .values()
            .filter(|r| r["metric"] == "labeled_count" && r["segment"] == "")
            .map(|r| r["value"].as_f64().unwrap())
            .sum();
        assert!(labelled > 0.0, "horizon {horizon}: no label joined");
        for batch_size in [1, 200, 8192] {
            let (rows, transitions, stderr) = replay(dir, horizon, batch_size);
            let what = format!("horizon {horizon}, replay batch_size {batch_size} (seed {seed})");
            // Every row but the closers' windows' is the daemon's too. The
            // daemon closes the closers' windows only once the model has
            // been quiet for idle_timeout (which may come after the stop);
            // what it wrote of them is the replay's.
            let expected: BTreeMap<&String, &Value> = rows.iter().collect();
            let missing: Vec<&&String> = expected
                .iter()
                .filter(|(k, r)| window_start_ms(r) < closer_window && !daemon_rows.contains_key(**k))
                .map(|(k, _)| k)
                .collect();
            assert!(
                missing.is_empty(),
                "{what}: {} rows only in the replay, e.g. {:?}",
                missing.len(),
                missing.first()
            );
            for (key, row) in &daemon_rows {
                let replayed =
                    expected.get(&key).copied().unwrap_or_else(|| panic!("{what}: row only in the daemon's: {row}"));
                assert!(same_row(row, replayed), "{what}: rows differ:\n daemon {row}\n replay {replayed}");
            }
            let closer_end = driftwatch::timestamp::format_rfc3339_ms(closer_window + 30 * MINUTE);
            let mut replayed: Vec<&String> = transitions.iter().filter(|t| !t.ends_with(&closer_end)).collect();
            let mut daemon: Vec<&String> = daemon_transitions.iter().filter(|t| !t.ends_with(&closer_end)).collect();
            replayed.sort();
            daemon.sort();
            assert!(!daemon.is_empty(), "{what}: no alert transition to compare");
            assert_eq!(daemon, replayed, "{what}: transitions differ");
            assert!(stderr.contains("labels: "), "{what}: the summary reports the join: {stderr}");
        }
    }
}
