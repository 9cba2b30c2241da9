//! A reload re-reads the whole config file: the rules and the notifiers
//! they name change together, settings that need a restart are named by
//! their config path (and keep their running values), and a broken config
//! changes nothing.

use std::process::Command;
use std::time::Duration;

use crate::notify::Receiver;
use crate::support::{Broker, flush, http, http_address, log_text, send, start_daemon, wait_until};

const TOKEN: &str = "reload-token";

/// The config under test: `extra` holds the notifiers (or nothing), and
/// `size` the window size.
fn write_config(dir: &std::path::Path, bootstrap: &str, size: &str, extra: &str) {
    std::fs::write(
        dir.join("c.yaml"),
        format!(
            "kafka: {{brokers: \"{bootstrap}\", group_id: reload-config}}\n\
             windows: {{size: {size}, slide: 10s, allowed_lateness: 0s, label_horizon: 0s}}\n\
             pipeline: {{batch_size: 64, linger: 20ms}}\n\
             models: [{{name: m}}]\n\
             rules: [rules.yaml]\n\
             http: {{listen: \"127.0.0.1:0\", token: {TOKEN}}}\n\
             {extra}"
        ),
    )
    .unwrap();
}

fn write_rules(dir: &std::path::Path, notify: &str) {
    std::fs::write(
        dir.join("rules.yaml"),
        format!(
            "groups:\n  - name: g\n    rules:\n      - alert: Busy\n        \
             expr: metric = 'count' AND segment = '' AND value >= 2\n        notify: [{notify}]\n"
        ),
    )
    .unwrap();
}

/// A notifier added to the config together with a rule naming it is
/// loaded by `POST /-/reload` (not refused as an unknown notifier) and
/// receives the next alert; a changed window size is reported as needing a
/// restart and the running size stays in force; a config with an unknown
/// key is refused with its error and changes nothing; SIGHUP does the same
/// as the endpoint and logs the settings that need a restart.
#[test]
fn a_reload_applies_new_notifiers_and_names_the_settings_that_need_a_restart() {
    let broker = Broker::start();
    broker.create_topic("predictions", 1);
    broker.create_topic("labels", 1);
    let receiver = Receiver::start(0);
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &broker.bootstrap(), "10s", "");
    write_rules(dir.path(), "");
    let daemon = start_daemon(dir.path(), &dir.path().join("c.yaml"), "log");
    let log = || log_text(dir.path(), "log");
    let timeout = Duration::from_secs(60);
    wait_until(timeout, "the HTTP API", || log().contains("HTTP API listening"));
    let address = http_address(&log());
    let reload = || http(&address, "POST", "/-/reload", Some(TOKEN));

    // The notifier and the rule naming it arrive together, with a change
    // that only a restart can apply.
    let notifiers = format!("notifiers: {{hook: {{type: webhook, url: \"{}/hook\"}}}}\n", receiver.url());
    write_config(dir.path(), &broker.bootstrap(), "20s", &notifiers);
    write_rules(dir.path(), "hook");
    let (status, body) = reload();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rules"], 1, "{body}");
    assert_eq!(body["notifiers"], serde_json::json!(["hook"]), "{body}");
    assert_eq!(body["restart_required"], serde_json::json!(["windows.size"]), "{body}");
    assert!(log().contains("windows.size"), "the log names the setting: {}", log());

    // Windows are still 10 s: [0s, 10s) with two events closes at 11 s,
    // Busy fires, and the new notifier receives it.
    let producer = broker.producer();
    let t0 = 1_795_687_200_000i64;
    for (i, offset_s) in [1i64, 2, 11].iter().enumerate() {
        let event = format!(
            "{{\"event_id\":\"e{i}\",\"model\":\"m\",\"timestamp\":{},\"prediction\":1}}",
            t0 + offset_s * 1000
        );
        send(&producer, "predictions", "k", event.as_bytes());
    }
    flush(&producer);
    wait_until(timeout, "the webhook", || !receiver.requests().is_empty());
    let request = &receiver.requests()[0];
    assert_eq!(request.path, "/hook");
    assert_eq!(request.json()["transition"]["alert"], "Busy", "{:?}", request.json());

    // A broken config is refused whole, naming the key; nothing changes.
    std::fs::write(
        dir.path().join("c.yaml"),
        std::fs::read_to_string(dir.path().join("c.yaml")).unwrap() + "surprise: 1\n",
    )
    .unwrap();
    let (status, body) = reload();
    assert_eq!((status, body["error"]["code"].as_str()), (422, Some("invalid_config")), "{body}");
    assert!(body["error"]["details"][0].as_str().unwrap().contains("surprise"), "{body}");
    let (_, rules) = http(&address, "GET", "/api/v1/rules", None);
    assert_eq!(rules["rules"][0]["notify"], serde_json::json!(["hook"]), "{rules}");

    // SIGHUP reloads the same way: the notifier goes, and so does the rule's
    // use of it.
    write_config(dir.path(), &broker.bootstrap(), "10s", "");
    write_rules(dir.path(), "");
    let pid = daemon.0.id().to_string();
    assert!(Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    wait_until(timeout, "the SIGHUP reload", || {
        http(&address, "GET", "/api/v1/rules", None).1["rules"][0]["notify"] == serde_json::json!([])
    });
}
