//! Hostile input against the real daemon and a real broker (Tansu): every
//! case of the README's "Hostile input" table is produced to the topics,
//! and each must be rejected or capped with its counter moving by exactly
//! the expected amount, dead-lettered when rejected, while the daemon keeps
//! running, keeps counting good events and stays within a memory bound.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use driftwatch::sources::kafka::{DLQ_CUT_BYTES, DLQ_ORIGINAL_BYTES_HEADER};
use driftwatch::timestamp::format_rfc3339_ms;
use rdkafka::Message;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::producer::{BaseProducer, BaseRecord};

use crate::support::{Broker, Killed, flush, http_address, http_text, repo, send, wait_until};

const TIMEOUT: Duration = Duration::from_secs(120);
/// 2026-11-26T10:00:00Z, the fixture's first minute; each case uses later minutes.
const T0: i64 = 1_795_687_200_000;
const MINUTE: i64 = 60_000;
/// Peak resident memory the daemon (a debug build) must stay under through
/// every case, 10 MB messages and 100,000-value floods included.
const MEMORY_BOUND_KB: u64 = 400 * 1024;

/// A prediction of model `shop` with the given features (JSON members).
fn prediction(id: &str, time_ms: i64, features: &str) -> String {
    format!(
        r#"{{"event_id":"{id}","model":"shop","timestamp":"{}","features":{{{features}}},"prediction":1,"score":0.7}}"#,
        format_rfc3339_ms(time_ms)
    )
}

fn label(id: &str, model: &str, time_ms: i64) -> String {
    format!(r#"{{"event_id":"{id}","model":"{model}","timestamp":"{}","label":1}}"#, format_rfc3339_ms(time_ms))
}

fn normal(id: &str, time_ms: i64) -> String {
    prediction(id, time_ms, r#""amount":42.5,"tenure":700,"country":"DE""#)
}

/// [`normal`] with the time as epoch milliseconds (any `i64`).
fn normal_at_ms(id: &str, time_ms: i64) -> String {
    format!(r#"{{"event_id":"{id}","model":"shop","timestamp":{time_ms},"features":{{"amount":42.5}},"prediction":1}}"#)
}

/// Counter values by series (`name{labels}`) from the daemon's `/metrics`.
fn scrape(address: &str) -> BTreeMap<String, f64> {
    let (status, body) = http_text(address, "GET", "/metrics", None);
    assert_eq!(status, 200, "/metrics");
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' ').map(|(k, v)| (k.to_string(), v.parse().unwrap_or(f64::NAN))))
        .collect()
}

/// The sum of every series of counter `name` whose labels contain `labels`.
fn sum(metrics: &BTreeMap<String, f64>, name: &str, labels: &str) -> f64 {
    metrics
        .iter()
        .filter(|(k, _)| {
            let (series, rest) = k.split_once('{').unwrap_or((k.as_str(), ""));
            series == name && rest.contains(labels)
        })
        .map(|(_, v)| v)
        .sum()
}

fn invalid(reason: &str) -> (&'static str, String) {
    ("driftwatch_events_invalid_total", format!("reason=\"{reason}\""))
}

fn plain(name: &'static str) -> (&'static str, String) {
    (name, String::new())
}

fn accepted(topic: &str) -> (&'static str, String) {
    ("driftwatch_events_total", format!("topic=\"{topic}\""))
}

fn status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the daemon is running");
    let line = status.lines().find(|l| l.starts_with(field)).unwrap_or_else(|| panic!("{field} in /proc status"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

struct Harness {
    broker: Broker,
    producer: BaseProducer,
    daemon: Killed,
    address: String,
    dir: tempfile::TempDir,
    invalid_sent: u64,
}

impl Harness {
    fn start() -> Harness {
        let broker = Broker::start();
        broker.create_topic("predictions", 1);
        broker.create_topic("labels", 1);
        broker.create_topic("driftwatch-dlq", 1);
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("daemon.yaml");
        std::fs::write(
            &config,
            format!(
                "kafka: {{brokers: \"{}\", group_id: hostile, dead_letter_topic: driftwatch-dlq, \
                 options: {{message.max.bytes: 1000000}}}}\n\
                 windows: {{size: 1m, allowed_lateness: 0s, label_horizon: 10m}}\n\
                 pipeline: {{batch_size: 1000, linger: 20ms}}\n\
                 http: {{listen: \"127.0.0.1:0\"}}\n\
                 models: [{{name: shop, baseline: {}}}]\n",
                broker.bootstrap(),
                repo("tests/fixtures/replay_drift/baseline.json").display()
            ),
        )
        .unwrap();
        let daemon = Killed(
            Command::new(env!("CARGO_BIN_EXE_driftwatch"))
                .args(["run", "--config", config.to_str().unwrap()])
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.path().join("daemon.log")).unwrap())
                .spawn()
                .unwrap(),
        );
        let log = dir.path().join("daemon.log");
        wait_until(TIMEOUT, "the HTTP API to listen", || {
            std::fs::read_to_string(&log).unwrap_or_default().contains("HTTP API listening")
        });
        let address = http_address(&std::fs::read_to_string(&log).unwrap());
        let producer = ClientConfig::new()
            .set("bootstrap.servers", broker.bootstrap())
            .set("linger.ms", "5")
            .set("message.max.bytes", "12000000")
            .create()
            .expect("producer");
        Harness { broker, producer, daemon, address, dir, invalid_sent: 0 }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    fn alive(&mut self) {
        assert!(self.daemon.0.try_wait().unwrap().is_none(), "the daemon exited:\n{}", self.log());
        let (status, _) = http_text(&self.address, "GET", "/healthz", None);
        assert_eq!(status, 200, "/healthz");
    }

    /// Sends `messages` (topic, payload; `None` is a message without a
    /// value) and checks that every counter in `expect` moves by exactly
    /// its amount and the daemon is still up.
    fn case(&mut self, name: &str, messages: &[(&str, Option<Vec<u8>>)], expect: &[((&'static str, String), f64)]) {
        let before = scrape(&self.address);
        for (i, (topic, payload)) in messages.iter().enumerate() {
            let key = format!("{name}-{i}");
            match payload {
                Some(bytes) => send(&self.producer, topic, &key, bytes),
                None => {
                    let record: BaseRecord<'_, str, [u8]> = BaseRecord::to(topic).key(&key);
                    self.producer.send(record).map_err(|(e, _)| e).expect("sending a message without a value");
                }
            }
        }
        flush(&self.producer);
        let delta = |metrics: &BTreeMap<String, f64>, (name, labels): &(&'static str, String)| {
            sum(metrics, name, labels) - sum(&before, name, labels)
        };
        let mut after = before.clone();
        let reached = |after: &BTreeMap<String, f64>| expect.iter().all(|(key, amount)| delta(after, key) >= *amount);
        // Poll until every counter got there (or the deadline passes: then
        // the assertions below show which did not and by how much).
        let deadline = std::time::Instant::now() + TIMEOUT;
        while std::time::Instant::now() < deadline {
            after = scrape(&self.address);
            if reached(&after) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        for (key, amount) in expect {
            assert_eq!(delta(&after, key), *amount, "case {name:?}: {}{{{}}}", key.0, key.1);
            if key.0 == "driftwatch_events_invalid_total" {
                self.invalid_sent += *amount as u64;
            }
        }
        self.alive();
        let rss = status_kb(self.daemon.0.id(), "VmRSS:");
        println!("case {name:?}: ok, daemon RSS {} MB", rss / 1024);
    }
}

fn predictions(payloads: impl IntoIterator<Item = String>) -> Vec<(&'static str, Option<Vec<u8>>)> {
    payloads.into_iter().map(|p| ("predictions", Some(p.into_bytes()))).collect()
}

#[test]
fn hostile_input_is_counted_and_bounded_and_never_stops_the_daemon() {
    let mut h = Harness::start();

    h.case(
        "warm-up: good events",
        &predictions((0..200).map(|i| normal(&format!("warm-{i}"), T0 + i * 100))),
        &[(accepted("predictions"), 200.0)],
    );

    // 100,000 distinct feature names from one producer: the model already
    // tracks its baseline's 3 features, so 497 more are taken and the rest
    // of the values are counted over the cap.
    let flood = (0..1_000).map(|e| {
        let features: Vec<String> = (0..100).map(|f| format!("\"f{}\":1.5", e * 100 + f)).collect();
        prediction(&format!("features-{e}"), T0 + MINUTE + e, &features.join(","))
    });
    h.case(
        "100,000 distinct feature names",
        &predictions(flood),
        &[(accepted("predictions"), 1_000.0), (plain("driftwatch_features_over_cap_total"), 100_000.0 - 497.0)],
    );

    // 100,000 distinct values of one categorical feature in one window: 1,000
    // are kept, the rest pooled as `__other__`.
    let categories = (0..100_000)
        .map(|e| prediction(&format!("category-{e}"), T0 + 2 * MINUTE + e / 2, &format!("\"country\":\"c{e}\"")));
    h.case(
        "100,000 distinct category values",
        &predictions(categories),
        &[(accepted("predictions"), 100_000.0), (plain("driftwatch_categories_over_cap_total"), 99_000.0)],
    );

    // 5,000 distinct segments: 999 series besides the whole model fit.
    let segments = (0..5_000).map(|e| {
        format!(
            r#"{{"event_id":"segment-{e}","model":"shop","timestamp":"{}","segment":{{"user":"u{e}"}},"prediction":0}}"#,
            format_rfc3339_ms(T0 + 4 * MINUTE + e)
        )
    });
    h.case(
        "5,000 distinct segments",
        &predictions(segments),
        &[(accepted("predictions"), 5_000.0), (plain("driftwatch_segments_over_cap_total"), 5_000.0 - 999.0)],
    );

    // Messages of 10 MB (a valid event carrying a huge string) and of 0 bytes.
    let huge = prediction("huge", T0 + 5 * MINUTE, &format!("\"note\":\"{}\"", "x".repeat(10 << 20)));
    let mut messages = predictions([huge.clone(), huge.clone()]);
    messages.push(("labels", Some(huge.into_bytes())));
    h.case("10 MB messages", &messages, &[(invalid("too_large"), 3.0)]);
    h.case(
        "0-byte messages and messages without a value",
        &[("predictions", Some(Vec::new())), ("labels", Some(Vec::new())), ("predictions", None), ("labels", None)],
        &[(invalid("invalid_json"), 4.0)],
    );

    // Deep nesting: a payload that is 100,000 arrays deep; and a good event
    // with 100,000 levels of nesting under an unknown key and in a feature.
    let depth = 100_000;
    let deep_array = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let deep_object = format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth));
    let t = T0 + 6 * MINUTE;
    let nested_extra = format!(
        r#"{{"event_id":"deep-1","model":"shop","timestamp":"{}","extra":{deep_object},"features":{{"amount":1}},"prediction":1}}"#,
        format_rfc3339_ms(t)
    );
    let nested_feature = prediction("deep-2", t + 1, &format!("\"amount\":{deep_array}"));
    h.case(
        "deeply nested JSON",
        &predictions([deep_array.clone(), deep_object, nested_extra, nested_feature]),
        &[
            (invalid("not_an_object"), 1.0),
            (invalid("missing_field"), 1.0),
            (accepted("predictions"), 2.0),
            (plain("driftwatch_feature_type_errors_total"), 1.0),
        ],
    );

    // Timestamps far in the past and the future: out of the accepted range,
    // or more than pipeline.max_future_skew (1h) ahead of the clock; one in
    // range but long past, which is late.
    let now = chrono::Utc::now().timestamp_millis();
    let times = [0, -62_135_596_800_000, 946_684_799_999, 4_102_444_800_000, 253_402_300_799_000, now + 2 * 3_600_000];
    let mut messages = predictions(times.iter().map(|t| normal_at_ms("time", *t)));
    let future_label = format!(r#"{{"event_id":"time","model":"shop","timestamp":{},"label":1}}"#, now + 2 * 3_600_000);
    messages.push(("labels", Some(future_label.into_bytes())));
    messages.extend(predictions([
        format!(r#"{{"event_id":"t","model":"shop","timestamp":"{}","prediction":1}}"#, "9".repeat(40)),
        normal("past", 978_307_200_000), // 2001-01-01: in range, but its window closed long ago
    ]));
    h.case(
        "timestamps far in the past and the future",
        &messages,
        &[
            (invalid("timestamp_out_of_range"), 7.0),
            (invalid("bad_timestamp"), 1.0),
            (plain("driftwatch_events_late_total"), 1.0),
        ],
    );

    // Duplicate event ids: one prediction three times, its label twice.
    let t = T0 + 7 * MINUTE;
    let mut messages = predictions([normal("dup", t), normal("dup", t), normal("dup", t)]);
    messages.push(("labels", Some(label("dup", "shop", t).into_bytes())));
    messages.push(("labels", Some(label("dup", "shop", t).into_bytes())));
    h.case(
        "duplicate event ids",
        &messages,
        &[
            (plain("driftwatch_duplicate_predictions_total"), 2.0),
            (plain("driftwatch_duplicate_labels_total"), 1.0),
            (accepted("predictions"), 3.0),
        ],
    );

    // NaN, ±inf and numbers as strings.
    let t = T0 + 8 * MINUTE;
    let with_score = |id: &str, score: &str| {
        format!(
            r#"{{"event_id":"{id}","model":"shop","timestamp":"{}","prediction":1,"score":{score}}}"#,
            format_rfc3339_ms(t)
        )
    };
    h.case(
        "NaN, infinities and numbers as strings",
        &predictions([
            with_score("nan-literal", "NaN"),
            with_score("inf", "1e999"),
            with_score("minus-inf", "-1e999"),
            with_score("nan-string", "\"NaN\""),
            with_score("inf-string", "\"Infinity\""),
            with_score("number-string", "\"0.5\""),
            prediction("feature-inf", t, "\"amount\":1e999"),
            prediction("feature-string", t, "\"amount\":\"12.5\""),
        ]),
        &[
            (invalid("invalid_json"), 1.0),
            (invalid("non_finite"), 5.0),
            (invalid("wrong_type"), 1.0),
            (accepted("predictions"), 1.0),
            (plain("driftwatch_feature_type_errors_total"), 1.0),
        ],
    );

    // Events for a model that is not configured.
    h.case(
        "a label and a prediction for an unknown model",
        &[
            ("labels", Some(label("ghost", "no-such-model", T0 + 9 * MINUTE).into_bytes())),
            (
                "predictions",
                Some(normal("ghost", T0 + 9 * MINUTE).replace("\"shop\"", "\"no-such-model\"").into_bytes()),
            ),
        ],
        &[(invalid("unknown_model"), 2.0)],
    );

    // 1,100 events whose 499 numeric features (the 497 taken above, amount
    // and tenure) alternate between ±1e-300 and ±1e300 in one window: each
    // feature's quantile sketch spanned every bucket in between (2 MB per
    // feature, 1 GB here) before its bucket budget; now 32 KiB at most.
    let numeric: Vec<String> =
        (0..497).map(|f| format!("f{f}")).chain(["amount".to_string(), "tenure".to_string()]).collect();
    let extremes = ["1e-300", "-1e300", "-1e-300", "1e300"];
    let spanning = (0..1_100).map(|e| {
        let features: Vec<String> =
            numeric.iter().enumerate().map(|(f, name)| format!("\"{name}\":{}", extremes[(e + f) % 4])).collect();
        prediction(&format!("extreme-{e}"), T0 + 10 * MINUTE + e as i64 * 10, &features.join(","))
    });
    h.case(
        "numeric values spanning the double range",
        &predictions(spanning),
        &[(accepted("predictions"), 1_100.0), (plain("driftwatch_features_over_cap_total"), 0.0)],
    );

    // A new model_version per event: 99 versions fit beside the version
    // "" of every event so far; the other 201 events are filed under
    // `__other__`.
    let versions = (0..300).map(|e| {
        format!(
            r#"{{"event_id":"version-{e}","model":"shop","model_version":"v{e}","timestamp":"{}","features":{{"amount":1.5}},"prediction":1}}"#,
            format_rfc3339_ms(T0 + 10 * MINUTE + e)
        )
    });
    h.case(
        "a new model_version per event",
        &predictions(versions),
        &[(accepted("predictions"), 300.0), (plain("driftwatch_versions_over_cap_total"), 201.0)],
    );

    // Names and values of 500 KB (and just over the limits): rejected
    // whole, never kept in a row, series or checkpoint.
    let t = T0 + 11 * MINUTE;
    let long = "n".repeat(500_000);
    let with = |id: &str, members: &str| {
        format!(r#"{{"event_id":"{id}","model":"shop","timestamp":"{}",{members}}}"#, format_rfc3339_ms(t))
    };
    let mut messages = predictions([
        prediction("long-feature-name", t, &format!(r#""{long}":1"#)),
        prediction("257-byte-feature-name", t, &format!(r#""{}":1"#, "f".repeat(257))),
        prediction("long-category", t, &format!(r#""country":"{long}""#)),
        with("long-segment-key", &format!(r#""prediction":1,"segment":{{"{long}":"eu"}}"#)),
        with("long-segment-value", &format!(r#""prediction":1,"segment":{{"region":"{long}"}}"#)),
        with("long-version", &format!(r#""prediction":1,"model_version":"{long}""#)),
        with("long-class", &format!(r#""prediction":"{long}""#)),
    ]);
    messages.push(("labels", Some(with("long-label", &format!(r#""label":"{long}""#)).into_bytes())));
    h.case("names and values of 500 KB", &messages, &[(invalid("too_long"), 8.0)]);

    // After all of it: good events are still counted, windows still close.
    let closed_before = sum(&scrape(&h.address), "driftwatch_windows_closed_total", "");
    h.case(
        "good events afterwards",
        &predictions((0..200).map(|i| normal(&format!("after-{i}"), T0 + 20 * MINUTE + i * 100))),
        &[(accepted("predictions"), 200.0)],
    );
    wait_until(TIMEOUT, "windows to go on closing", || {
        sum(&scrape(&h.address), "driftwatch_windows_closed_total", "") > closed_before
    });

    // /metrics keeps the values of at most 100 versions and `__other__`
    // per model, however many versions were sent.
    let versions_exported = |metrics: &BTreeMap<String, f64>| {
        let mut versions: Vec<String> = metrics
            .keys()
            .filter(|k| k.starts_with("driftwatch_feature_drift{") || k.starts_with("driftwatch_model_performance{"))
            .filter(|k| k.contains("model=\"shop\""))
            .filter_map(|k| k.split("model_version=\"").nth(1).and_then(|v| v.split('"').next()).map(str::to_string))
            .collect();
        versions.sort();
        versions.dedup();
        versions
    };
    wait_until(TIMEOUT, "the window of the versions to reach /metrics", || {
        versions_exported(&scrape(&h.address)).iter().any(|v| v == "__other__")
    });
    let versions = versions_exported(&scrape(&h.address));
    println!("model versions in /metrics: {}", versions.len());
    assert!(versions.len() <= 101, "{} versions in /metrics: {versions:?}", versions.len());

    // Nothing rejected was lost: each is in the dead-letter topic.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", h.broker.bootstrap())
        .set("group.id", "dlq-reader")
        .set("auto.offset.reset", "earliest")
        .set("fetch.message.max.bytes", "12000000")
        .create()
        .unwrap();
    consumer.subscribe(&["driftwatch-dlq"]).unwrap();
    let mut dead_letters = 0u64;
    let mut cut = Vec::new();
    wait_until(TIMEOUT, "every rejected event in the dead-letter topic", || {
        while let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let message = message.expect("reading the dead-letter topic");
            dead_letters += 1;
            let original = message.headers().and_then(|headers| {
                headers.iter().find(|h| h.key == DLQ_ORIGINAL_BYTES_HEADER).and_then(|h| h.value).map(|v| v.to_vec())
            });
            if let Some(original) = original {
                cut.push((message.payload().map_or(0, <[u8]>::len), String::from_utf8(original).unwrap()));
            }
        }
        dead_letters >= h.invalid_sent
    });
    assert_eq!(dead_letters, h.invalid_sent);
    // The three 10 MB messages, over the clients' 1 MB `message.max.bytes`
    // (a broker's default limit refuses them the same way; Tansu takes
    // them), arrive cut, with their original size.
    let huge_len = prediction("huge", T0 + 5 * MINUTE, &format!("\"note\":\"{}\"", "x".repeat(10 << 20))).len();
    assert_eq!(cut, vec![(DLQ_CUT_BYTES, huge_len.to_string()); 3]);

    let peak = status_kb(h.daemon.0.id(), "VmHWM:");
    println!("peak RSS of the daemon: {} MB (bound {} MB)", peak / 1024, MEMORY_BOUND_KB / 1024);
    assert!(peak < MEMORY_BOUND_KB, "peak RSS {peak} kB");
    h.alive();
}

/// Runs `driftwatch` with `args` under a 3 GiB address-space limit
/// (`ulimit -v`): a file that made a loader use unbounded memory would be
/// killed by it instead of passing. Returns success and the output.
fn driftwatch_limited(dir: &std::path::Path, args: &[&str]) -> (bool, String) {
    let output = Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 3145728 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_driftwatch"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

/// A billion-laughs document: nine levels of nine aliases each (9⁹ strings
/// if it were expanded), under `key`.
fn alias_bomb(key: &str) -> String {
    let mut text =
        format!("{key}:\n  a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n");
    for level in 1..9u8 {
        let (name, previous) = ((b'a' + level) as char, (b'a' + level - 1) as char);
        let refs = vec![format!("*{previous}"); 9].join(",");
        text.push_str(&format!("  {name}: &{name} [{refs}]\n"));
    }
    text
}

#[test]
fn hostile_config_rule_and_test_files_are_refused_with_clear_errors_within_a_memory_limit() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rule_head = "groups:\n  - name: g\n    rules:\n      - alert: A\n";
    let cases: Vec<(&str, &str, String, &str)> = vec![
        // (what, file, text, what the error must say)
        (
            "alias bomb in a config",
            "config.yaml",
            format!("models: [{{name: shop}}]\n{}", alias_bomb("notifiers")),
            "config.yaml",
        ),
        (
            "alias bomb in a free-form notifier setting",
            "config.yaml",
            format!(
                "models: [{{name: shop}}]\nnotifiers:\n  hook:\n    type: webhook\n    url: http://127.0.0.1:9/x\n{}",
                alias_bomb("    client_payload").replace("\n  ", "\n      ")
            ),
            "budget breached",
        ),
        (
            "alias bomb in a rule file",
            "rules.yaml",
            format!(
                "{rule_head}        expr: \"1=1\"\n{}",
                alias_bomb("        labels").replace("\n  ", "\n          ")
            ),
            "rules.yaml:",
        ),
        (
            "alias bomb in a rule test file",
            "test.yaml",
            format!("rule_files: [rules.yaml]\n{}", alias_bomb("tests")),
            "test.yaml",
        ),
        (
            "1 MB plain key in a config",
            "config.yaml",
            format!("models: [{{name: shop}}]\n{}: 1\n", "k".repeat((1 << 20) - 64)),
            "line 2",
        ),
        (
            "1 MB explicit key in a config",
            "config.yaml",
            format!("models: [{{name: shop}}]\n? {}\n: 1\n", "k".repeat((1 << 20) - 64)),
            "characters]",
        ),
        (
            "1 MB model name",
            "config.yaml",
            format!("models: [{{name: {}}}]\n", "m".repeat((1 << 20) - 64)),
            "the limit is 200",
        ),
        (
            "1 MB rule expression",
            "rules.yaml",
            format!("{rule_head}        expr: \"{}\"\n", "x".repeat((1 << 20) - 128)),
            "the limit is 16384 bytes",
        ),
        (
            "1 MB alert name",
            "rules.yaml",
            format!(
                "{rule_head}        expr: \"1=1\"\n      - alert: {}\n        expr: \"1=1\"\n",
                "n".repeat((1 << 20) - 128)
            ),
            "the limit is 200",
        ),
        (
            "a rule building a 10 GB string",
            "rules.yaml",
            format!("{rule_head}        expr: \"repeat('a', 10000000000) = feature\"\n"),
            "Invalid function 'repeat'",
        ),
        (
            "a query rule generating 10 billion rows",
            "rules.yaml",
            format!("{rule_head}        query: \"SELECT * FROM generate_series(1, 10000000000)\"\n"),
            "'generate_series' not found",
        ),
        (
            "2 MB config",
            "config.yaml",
            format!("models: [{{name: shop}}]\n# {}\n", "c".repeat(2 << 20)),
            "the limit is 1048576 bytes",
        ),
        (
            "100,000-deep nesting in a config",
            "config.yaml",
            format!("models: {}{}\n", "[".repeat(100_000), "]".repeat(100_000)),
            "recursion limit",
        ),
    ];
    std::fs::write(d.join("ok-rules.yaml"), format!("{rule_head}        expr: \"metric = 'psi'\"\n")).unwrap();
    for (what, file, text, expected) in &cases {
        std::fs::write(d.join(file), text).unwrap();
        let args: Vec<&str> = match *file {
            "config.yaml" => vec!["config", "check", "--config", "config.yaml"],
            "rules.yaml" => vec!["rules", "check", "rules.yaml"],
            _ => {
                std::fs::copy(d.join("ok-rules.yaml"), d.join("rules.yaml")).unwrap();
                vec!["rules", "test", "test.yaml"]
            }
        };
        let started = std::time::Instant::now();
        let (ok, output) = driftwatch_limited(d, &args);
        println!("{what}: refused in {:.2}s: {}", started.elapsed().as_secs_f64(), output.lines().next().unwrap_or(""));
        assert!(!ok, "{what}: accepted:\n{output}");
        assert!(output.contains(expected), "{what}: the error should say {expected:?}:\n{output}");
        assert!(output.len() < 4096, "{what}: the error is short ({} bytes)", output.len());
        assert!(!output.contains("memory allocation"), "{what}: ran out of memory:\n{output}");
    }
}
