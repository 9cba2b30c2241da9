//! `driftwatch demo`: the whole product in one process, nothing to install.
//! librdkafka's in-process mock cluster stands in for Kafka; the simulator
//! produces a fraud model's traffic into it (event time running
//! [`DemoOptions::speedup`] times faster than the clock, labels arriving
//! later) and injects drift a third of the way in; the real daemon path
//! (`run_daemon`: consumer, windows, statistics, rules, notifications)
//! watches it with a baseline profiled from the simulator's training
//! distribution and the bundled `demo/rules.yaml`; a local webhook receiver
//! stands in for the CI job that retrains the model. The terminal shows
//! each closed window with its drifted features, each alert transition and
//! the webhook payloads, then a summary.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Seek, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::config::Config;
use crate::shutdown::Shutdown;
use crate::simulate::{Simulator, SimulatorOptions};
use crate::telemetry::Telemetry;
use crate::timestamp::format_rfc3339_ms;
use crate::window_metrics::WindowMetricRow;

/// The demo's window size (2 minutes of event time).
const DEMO_WINDOW_MS: i64 = 120_000;
/// Rows of simulated training data the demo's baseline is profiled from.
pub const TRAINING_ROWS: usize = 10_000;

/// The demo's rules, bundled.
pub const DEMO_RULES: &str = include_str!("../../demo/rules.yaml");

/// How the demo runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Wall-clock length of the live part. Default 60 s.
    pub duration: Duration,
    /// Where to serve the HTTP API and status page; default a free port.
    pub listen: Option<String>,
    /// Predictions per wall-clock second. Default 400.
    pub rate: f64,
    /// Event time per wall-clock time. Default 30 (a minute shows half an
    /// hour of traffic: fifteen 2-minute windows).
    pub speedup: f64,
    pub seed: u64,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions { duration: Duration::from_secs(60), listen: None, rate: 400.0, speedup: 30.0, seed: 42 }
    }
}

/// What the demo saw.
#[derive(Debug, Default, Clone)]
pub struct DemoSummary {
    pub predictions: u64,
    pub labels: u64,
    pub windows: u64,
    /// Wall-clock offset at which drift was injected.
    pub drift_injected_at: Duration,
    /// Wall-clock offset of the first closed window (after the injection)
    /// with a drifted feature, and that window's start.
    pub drift_detected: Option<(Duration, String)>,
    pub transitions: u64,
    pub webhooks: u64,
}

/// The columns of the training table the baseline is profiled from.
fn training_row(prediction: &[u8], label: &[u8]) -> Option<Value> {
    let prediction: Value = serde_json::from_slice(prediction).ok()?;
    let label: Value = serde_json::from_slice(label).ok()?;
    let mut row = prediction["features"].as_object()?.clone();
    row.insert("prediction".into(), prediction["prediction"].clone());
    row.insert("score".into(), prediction["score"].clone());
    row.insert("label".into(), label["label"].clone());
    Some(Value::Object(row))
}

/// Profiles `rows` rows of the simulator's pre-drift traffic (the model's
/// training distribution) into `dir/baseline.json`.
pub fn build_baseline(dir: &Path, rows: usize, seed: u64) -> Result<PathBuf, String> {
    let training = dir.join("training.ndjson");
    let mut out = io::BufWriter::new(std::fs::File::create(&training).map_err(|e| e.to_string())?);
    let mut simulator = Simulator::new(SimulatorOptions { seed, label_fraction: 1.0, ..SimulatorOptions::default() });
    let mut line = Vec::with_capacity(1024);
    for _ in 0..rows {
        line.clear();
        let time = simulator.next_time_ms();
        let Some(label) = simulator.write_prediction(time, &mut line) else { continue };
        if let Some(row) = training_row(&line, &label.json) {
            serde_json::to_writer(&mut out, &row).map_err(|e| e.to_string())?;
            out.write_all(b"\n").map_err(|e| e.to_string())?;
        }
    }
    out.flush().map_err(|e| e.to_string())?;
    drop(out);
    let mut options =
        crate::profiling::BuildOptions::new(vec![training.display().to_string()], &SimulatorOptions::default().model);
    options.version = Some(SimulatorOptions::default().model_version);
    options.progress = false;
    let baseline = crate::profiling::build_baseline(&options).map_err(|e| e.to_string())?;
    let path = dir.join("baseline.json");
    baseline.save(&path).map_err(|e| e.to_string())?;
    Ok(path)
}

/// A received webhook: path, idempotency key, body.
type Webhook = (String, Option<String>, Vec<u8>);

/// A local HTTP receiver that answers 200 and hands each request over.
fn start_receiver() -> io::Result<(u16, mpsc::Receiver<Webhook>)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let (sender, receiver) = mpsc::channel();
    std::thread::Builder::new().name("demo-webhook".into()).spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let Ok(clone) = stream.try_clone() else { continue };
            let mut reader = BufReader::new(clone);
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            let path = request_line.split_whitespace().nth(1).unwrap_or("/").to_string();
            let (mut length, mut key) = (0usize, None);
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).is_err() || header.trim().is_empty() {
                    break;
                }
                if let Some((name, value)) = header.split_once(':') {
                    match name.trim().to_ascii_lowercase().as_str() {
                        "content-length" => length = value.trim().parse().unwrap_or(0),
                        "idempotency-key" => key = Some(value.trim().to_string()),
                        _ => {}
                    }
                }
            }
            let mut body = vec![0; length.min(1 << 20)];
            if reader.read_exact(&mut body).is_err() {
                continue;
            }
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\nConnection: close\r\n\r\n{\"ok\":true}",
            );
            if sender.send((path, key, body)).is_err() {
                return;
            }
        }
    })?;
    Ok((port, receiver))
}

fn demo_config(
    dir: &Path,
    bootstrap: &str,
    baseline: &Path,
    webhook_port: u16,
    listen: &str,
) -> Result<Config, String> {
    let rules = dir.join("rules.yaml");
    std::fs::write(&rules, DEMO_RULES).map_err(|e| e.to_string())?;
    let window_minutes = DEMO_WINDOW_MS / 60_000;
    let yaml = format!(
        "kafka: {{brokers: \"{bootstrap}\", group_id: driftwatch-demo}}\n\
         windows: {{size: {window_minutes}m, allowed_lateness: 10s, label_horizon: 5m}}\n\
         pipeline: {{batch_size: 2048, linger: 50ms, max_future_skew: 30days}}\n\
         models: [{{name: fraud, task: binary_classification, baseline: \"{}\"}}]\n\
         rules: [\"{}\"]\n\
         notifiers:\n  retrain-ci: {{type: webhook, url: \"http://127.0.0.1:{webhook_port}/retrain\"}}\n\
         alerting: {{audit_log: \"{}\", evaluation_interval: 2s}}\n\
         state: {{dir: \"{}\", checkpoint_interval: 5s}}\n\
         http: {{listen: \"{listen}\"}}\n",
        baseline.display(),
        rules.display(),
        dir.join("audit.ndjson").display(),
        dir.join("state").display(),
    );
    Config::from_yaml_str(&yaml, "demo").map_err(|e| e.to_string())
}

/// Prints as the demo goes; knows the clocks.
struct Narrator<'a> {
    out: &'a mut dyn Write,
    started: Instant,
    drift_event_ms: i64,
    summary: DemoSummary,
}

impl Narrator<'_> {
    fn clock(&self) -> String {
        let s = self.started.elapsed().as_secs();
        format!("[{:02}:{:02}]", s / 60, s % 60)
    }

    fn say(&mut self, text: &str) {
        let _ = writeln!(self.out, "{} {text}", self.clock());
        let _ = self.out.flush();
    }

    fn windows(&mut self, rows: &[WindowMetricRow]) {
        let mut windows: BTreeMap<(i64, i64), Vec<&WindowMetricRow>> = BTreeMap::new();
        for row in rows.iter().filter(|r| r.segment.is_empty()) {
            windows.entry((row.window_start_ms, row.window_end_ms)).or_default().push(row);
        }
        for ((start, end), rows) in windows {
            let span = format!("{}–{}", &format_rfc3339_ms(start)[11..16], &format_rfc3339_ms(end)[11..16]);
            if let Some(count) = rows.iter().find(|r| r.feature.is_none() && r.metric == "count") {
                self.summary.windows += 1;
                let mut drifted: BTreeMap<&str, f64> = BTreeMap::new();
                for row in rows.iter().filter(|r| r.drifted == Some(true) && r.metric == "psi") {
                    if let Some(feature) = &row.feature {
                        drifted.insert(feature, row.value);
                    }
                }
                let verdict = if drifted.is_empty() {
                    "no drift".to_string()
                } else {
                    let names: Vec<String> = drifted.iter().map(|(f, psi)| format!("{f} (PSI {psi:.2})")).collect();
                    format!("DRIFT in {}", names.join(", "))
                };
                self.say(&format!("window {span} closed: {} predictions, {verdict}", count.value));
                if !drifted.is_empty() && end > self.drift_event_ms && self.summary.drift_detected.is_none() {
                    self.summary.drift_detected = Some((self.started.elapsed(), span.clone()));
                }
            }
            if let Some(accuracy) = rows.iter().find(|r| r.feature.is_none() && r.metric == "accuracy") {
                let baseline = accuracy.baseline.map(|b| format!(" (baseline {b:.3})")).unwrap_or_default();
                self.say(&format!(
                    "labels in for {span}: accuracy {:.3}{baseline} over {} labels",
                    accuracy.value, accuracy.sample_count
                ));
            }
        }
    }

    fn audit(&mut self, record: &Value) {
        if record["kind"] != "transition" {
            return;
        }
        self.summary.transitions += 1;
        let state = record["state"].as_str().unwrap_or("").to_uppercase();
        let summary = record["annotations"]["summary"].as_str().unwrap_or("");
        let notify = record["notify"].as_array().map(|n| n.len()).unwrap_or(0);
        let note = if notify > 0 && state == "FIRING" { " → notifying retrain-ci" } else { "" };
        self.say(&format!("ALERT {} {state}: {summary}{note}", record["alert"].as_str().unwrap_or("")));
    }

    fn webhook(&mut self, (path, key, body): Webhook) {
        self.summary.webhooks += 1;
        let pretty = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| serde_json::to_string_pretty(&v).ok())
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        self.say(&format!(
            "webhook received: POST {path} (Idempotency-Key {}) — the retraining job would start now:",
            key.unwrap_or_default()
        ));
        for line in pretty.lines() {
            let _ = writeln!(self.out, "        {line}");
        }
    }
}

/// Reads the complete lines appended to `path` since `offset`.
fn tail(path: &Path, offset: &mut u64) -> Vec<Value> {
    let Ok(mut file) = std::fs::File::open(path) else { return Vec::new() };
    if file.seek(io::SeekFrom::Start(*offset)).is_err() {
        return Vec::new();
    }
    let mut text = String::new();
    if file.read_to_string(&mut text).is_err() {
        return Vec::new();
    }
    let complete = text.rfind('\n').map_or(0, |i| i + 1);
    *offset += complete as u64;
    text[..complete].lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// Runs the demo, narrating to `out`.
pub fn run_demo(options: &DemoOptions, out: &mut dyn Write) -> Result<DemoSummary, String> {
    let started = Instant::now();
    let dir = std::env::temp_dir().join(format!("driftwatch-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let result = run_in(options, out, &dir, started);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run_in(options: &DemoOptions, out: &mut dyn Write, dir: &Path, started: Instant) -> Result<DemoSummary, String> {
    let _ = writeln!(
        out,
        "driftwatch demo: a fraud model's predictions and labels stream through an in-process Kafka cluster;\n\
         driftwatch watches them against the model's training baseline. Drift is injected at about {:.0} s.\n",
        options.duration.as_secs_f64() / 3.0
    );
    let baseline = build_baseline(dir, TRAINING_ROWS, options.seed + 1)?;
    let _ = writeln!(
        out,
        "profiled {TRAINING_ROWS} training rows into a baseline ({:.1} s)",
        started.elapsed().as_secs_f64()
    );

    let cluster = rdkafka::mocking::MockCluster::new(1).map_err(|e| format!("mock Kafka cluster: {e}"))?;
    for topic in ["predictions", "labels"] {
        cluster.create_topic(topic, 3, 1).map_err(|e| format!("creating topic {topic}: {e}"))?;
    }
    let bootstrap = cluster.bootstrap_servers();
    let (webhook_port, webhooks) = start_receiver().map_err(|e| format!("webhook receiver: {e}"))?;
    let listen = options.listen.clone().unwrap_or_else(|| "127.0.0.1:0".to_string());
    let mut config = demo_config(dir, &bootstrap, &baseline, webhook_port, &listen)?;
    // The daemon's clock runs as fast as the stream's event time.
    config.pipeline.clock_speedup = options.speedup.round().clamp(1.0, f64::from(u32::MAX)) as u32;

    let shutdown = Shutdown::new();
    let telemetry = Arc::new(Telemetry::default());
    let (rows_sender, rows) = mpsc::channel::<Vec<WindowMetricRow>>();
    let daemon = {
        let (config, telemetry, shutdown) = (config.clone(), telemetry.clone(), shutdown.clone());
        std::thread::Builder::new()
            .name("demo-daemon".into())
            .spawn(move || {
                crate::drivers::run::run_daemon(
                    &config,
                    telemetry,
                    &shutdown,
                    &Default::default(),
                    Some(Box::new(rows_sender)),
                )
                .map(|_| ())
                .map_err(|e| e.to_string())
            })
            .map_err(|e| e.to_string())?
    };

    // Event time starts where a window starts, so that the first window
    // is whole: a window of a few events looks drifted to every test.
    let event_start_ms = {
        let now_ms = chrono::Utc::now().timestamp_millis();
        now_ms - now_ms.rem_euclid(DEMO_WINDOW_MS)
    };
    let drift_after = options.duration / 3;
    let drift_event_ms_offset = (drift_after.as_secs_f64() * 1000.0 * options.speedup) as i64;
    let produced = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
    let stop_producing = Shutdown::new();
    let producer = {
        let (bootstrap, produced, stop, options) =
            (bootstrap.clone(), produced.clone(), stop_producing.clone(), options.clone());
        std::thread::Builder::new()
            .name("demo-simulator".into())
            .spawn(move || {
                let simulator = SimulatorOptions {
                    rate: options.rate,
                    seed: options.seed,
                    drift_after_ms: Some(drift_event_ms_offset),
                    label_delay_ms: (30_000, 180_000),
                    ..SimulatorOptions::default()
                };
                let live = crate::drivers::simulate::Live {
                    speedup: options.speedup,
                    start_ms: Some(event_start_ms),
                    produced: Some(&produced),
                };
                crate::drivers::simulate::simulate_live(
                    simulator,
                    options.duration,
                    &bootstrap,
                    ("predictions", "labels"),
                    &stop,
                    &live,
                )
                .map_err(|e| e.to_string())
            })
            .map_err(|e| e.to_string())?
    };
    let live_started = Instant::now();
    let mut narrator = Narrator {
        out,
        started: live_started,
        drift_event_ms: event_start_ms + drift_event_ms_offset,
        summary: DemoSummary { drift_injected_at: drift_after, ..Default::default() },
    };
    narrator.say(&format!(
        "streaming {:.0} predictions/s (event time ×{:.0}: 2-minute windows close every {:.0} s); webhook receiver on 127.0.0.1:{webhook_port}",
        options.rate,
        options.speedup,
        120.0 / options.speedup
    ));
    let audit = dir.join("audit.ndjson");
    let mut audit_offset = 0u64;
    let mut announced_http = false;
    let mut announced_drift = false;
    let mut last_progress = Instant::now();
    let mut daemon_done = false;
    loop {
        let mut idle = true;
        for batch in rows.try_iter() {
            narrator.windows(&batch);
            idle = false;
        }
        for record in tail(&audit, &mut audit_offset) {
            narrator.audit(&record);
            idle = false;
        }
        for webhook in webhooks.try_iter() {
            narrator.webhook(webhook);
            idle = false;
        }
        if !announced_http && let Some(address) = http_address(&telemetry) {
            narrator.say(&format!("status page and API: http://{address}/  (metrics at /metrics)"));
            announced_http = true;
        }
        let elapsed = live_started.elapsed();
        if !announced_drift && elapsed >= drift_after {
            narrator.say("injecting drift now: amounts grow, a new country appears, the model's accuracy drops");
            announced_drift = true;
        }
        if last_progress.elapsed() >= Duration::from_secs(5) && elapsed < options.duration {
            let (p, l) = (produced.0.load(Ordering::Relaxed), produced.1.load(Ordering::Relaxed));
            narrator.say(&format!(
                "… {p} predictions and {l} labels produced, {} consumed, {} windows closed",
                telemetry.events().values().sum::<u64>(),
                narrator.summary.windows
            ));
            last_progress = Instant::now();
        }
        if elapsed >= options.duration && !shutdown.is_triggered() {
            stop_producing.trigger();
            narrator.say("time is up: checkpointing the open windows and delivering what is pending");
            shutdown.trigger();
        }
        if daemon.is_finished() && !daemon_done {
            daemon_done = true;
            continue; // one more pass to drain what it emitted last
        }
        if daemon_done && idle {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let daemon_result = daemon.join().map_err(|_| "the daemon thread panicked".to_string())?;
    let producer_result = producer.join().map_err(|_| "the simulator thread panicked".to_string())?;
    daemon_result?;
    let simulated = producer_result?;
    narrator.summary.predictions = simulated.predictions;
    narrator.summary.labels = simulated.labels;
    drop(cluster);
    Ok(narrator.summary)
}

/// The HTTP API's bound address, once the daemon published it.
fn http_address(telemetry: &Telemetry) -> Option<String> {
    telemetry.http_address.lock().expect("telemetry lock").clone()
}

/// Prints the closing summary.
pub fn print_summary(summary: &DemoSummary, out: &mut dyn Write) {
    let detected = match &summary.drift_detected {
        Some((at, window)) => {
            format!("detected at {:.0} s, in the window {window}", at.as_secs_f64())
        }
        None => "not detected".to_string(),
    };
    let _ = writeln!(
        out,
        "\nsummary: {} predictions and {} labels, {} windows closed; drift injected at {:.0} s, {detected}; \
         {} alert transitions; {} retraining webhook{} delivered",
        summary.predictions,
        summary.labels,
        summary.windows,
        summary.drift_injected_at.as_secs_f64(),
        summary.transitions,
        summary.webhooks,
        if summary.webhooks == 1 { "" } else { "s" }
    );
}
