//! Shutdown with the broker gone: the daemon writes its final checkpoint
//! (or closes its windows) and exits at once, cleanly, instead of waiting
//! for a broker that is not coming back until `pipeline.shutdown_timeout`
//! ends it with an error.

use std::process::Command;
use std::time::Duration;

use crate::support::{Broker, flush, http_address, http_text, log_text, send, start_daemon, wait_until};

/// Starts a daemon (durable when `durable`), feeds it one event, stops the
/// broker, then SIGTERMs the daemon: it must exit 0 (not be ended by the
/// default 30 s `pipeline.shutdown_timeout`, which exits 1), having written
/// its final checkpoint. (librdkafka's own ERROR lines about refused
/// connections are expected.)
fn stop_with_the_broker_down(durable: bool) {
    let broker = Broker::start();
    broker.create_topic("predictions", 1);
    broker.create_topic("labels", 1);
    let dir = tempfile::tempdir().unwrap();
    let state = if durable { "state: {dir: state, checkpoint_interval: 1h}\n" } else { "" };
    std::fs::write(
        dir.path().join("c.yaml"),
        format!(
            "kafka: {{brokers: \"{}\", group_id: shutdown}}\n\
             windows: {{size: 10s, allowed_lateness: 0s, label_horizon: 0s}}\n\
             pipeline: {{batch_size: 64, linger: 20ms}}\n\
             models: [{{name: m}}]\n\
             http: {{listen: \"127.0.0.1:0\"}}\n{state}",
            broker.bootstrap()
        ),
    )
    .unwrap();
    let mut daemon = start_daemon(dir.path(), &dir.path().join("c.yaml"), "log");
    let log = || log_text(dir.path(), "log");
    let timeout = Duration::from_secs(60);
    let producer = broker.producer();
    send(
        &producer,
        "predictions",
        "k",
        b"{\"event_id\":\"e1\",\"model\":\"m\",\"timestamp\":1795687200000,\"prediction\":1}",
    );
    flush(&producer);
    drop(producer);
    wait_until(timeout, "the HTTP API", || log().contains("HTTP API listening"));
    let address = http_address(&log());
    wait_until(timeout, "the event to be read", || {
        let (_, metrics) = http_text(&address, "GET", "/metrics", None);
        metrics
            .lines()
            .any(|l| l.starts_with("driftwatch_events_total{") && l.contains("predictions") && l.ends_with(" 1"))
    });
    drop(broker);
    let pid = daemon.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let mut status = None;
    wait_until(Duration::from_secs(120), "the daemon to exit", || {
        status = daemon.0.try_wait().unwrap();
        status.is_some()
    });
    let log = log();
    assert!(status.unwrap().success(), "{status:?}\n{log}");
    assert!(!log.contains("shutdown took longer"), "{log}");
    assert!(!log.contains("final checkpoint failed"), "{log}");
    assert!(log.contains("consumer stopped"), "{log}");
    if durable {
        let checkpoints = std::fs::read_dir(dir.path().join("state/checkpoints")).unwrap().count();
        assert!(checkpoints >= 1, "{log}");
    }
}

#[test]
fn a_durable_daemon_stops_at_once_with_the_broker_down() {
    stop_with_the_broker_down(true);
}

#[test]
fn a_daemon_without_state_stops_at_once_with_the_broker_down() {
    stop_with_the_broker_down(false);
}
