//! Secrets never leak: a config holding every kind of secret (the HTTP
//! token, an SMTP password, a webhook's HMAC key, URL credentials, bearer
//! tokens in headers and query strings, a Kafka SASL password, OTLP headers)
//! is checked, replayed with notifications to a hostile receiver that
//! echoes every request back in its error replies, and run as a daemon
//! whose whole API is called, whose reload is fed broken configs, and whose
//! OTLP exporter and Kafka client fail; debug logs on throughout. No output,
//! log line, response or error message may contain any secret.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::{Killed, http_address, http_text, repo, wait_until};

const SECRETS: &[(&str, &str)] = &[
    ("http.token", "http-token-Zq81xN"),
    ("SMTP password", "smtp-pass-Kd02mW"),
    ("webhook HMAC key", "hmac-key-Pf55tR"),
    ("webhook URL password", "url-pass-Qa27dE"),
    ("webhook bearer header", "bearer-hdr-Ux19gL"),
    ("GitHub token", "ghp-token-Lr62vA"),
    ("Jenkins token (query string)", "jenkins-tok-Ce48sN"),
    ("Kafka SASL password", "sasl-pass-Wm30eJ"),
    ("OTLP header", "otlp-key-Hy74cB"),
];

const HTTP_TOKEN: &str = "http-token-Zq81xN";

fn assert_no_secret(what: &str, text: &str) {
    for (name, secret) in SECRETS {
        assert!(!text.contains(secret), "{what} contains the {name}:\n{}", excerpt(text, secret));
    }
}

fn excerpt(text: &str, secret: &str) -> String {
    let at = text.find(secret).unwrap_or(0);
    let start = text[..at].char_indices().rev().nth(300).map_or(0, |(i, _)| i);
    let end = text[at..].char_indices().nth(300).map_or(text.len(), |(i, _)| at + i);
    text[start..end].to_string()
}

/// A hostile receiver: answers every request with 500 and a body that
/// repeats the whole request (request line, headers, body) back. Returns
/// its port and the request lines it received.
fn start_echoing_receiver() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let received = Arc::new(Mutex::new(Vec::new()));
    let seen = received.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let seen = seen.clone();
            std::thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut head = String::new();
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                    head.push_str(&line);
                }
                seen.lock().unwrap().push(head.lines().next().unwrap_or("").to_string());
                let mut body = vec![0; length.min(1 << 20)];
                let _ = reader.read_exact(&mut body);
                let echo = format!("you sent: {head}{}", String::from_utf8_lossy(&body));
                let mut stream = stream;
                let _ = write!(
                    stream,
                    "HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{echo}",
                    echo.len()
                );
            });
        }
    });
    (port, received)
}

fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn write_files(dir: &Path, echo: u16, closed: u16) -> std::path::PathBuf {
    crate::support::write_amount_drift_rule(dir, "mail, hook, gh, jenkins");
    let config = dir.join("driftwatch.yaml");
    std::fs::write(
        &config,
        format!(
            "kafka:\n  brokers: \"127.0.0.1:{closed}\"\n  group_id: secrets\n  options:\n    security.protocol: SASL_PLAINTEXT\n    \
             sasl.mechanisms: PLAIN\n    sasl.username: driftwatch\n    sasl.password: sasl-pass-Wm30eJ\n\
             http: {{listen: \"127.0.0.1:0\", token: {HTTP_TOKEN}}}\n\
             otlp: {{endpoint: \"http://127.0.0.1:{echo}\", interval: 1s, traces: true, headers: {{x-api-key: otlp-key-Hy74cB}}}}\n\
             windows: {{size: 5m, allowed_lateness: 0s, label_horizon: 1h}}\n\
             models: [{{name: shop, baseline: {}}}]\n\
             rules: [rules.yaml]\n\
             state: {{dir: state}}\n\
             delivery: {{retry_initial: 10ms, retry_max: 50ms, max_attempts: 3}}\n\
             notifiers:\n  \
               mail: {{type: email, smtp: \"smtp://driftwatch:smtp-pass-Kd02mW@127.0.0.1:{closed}\", tls: none, from: dw@example.com, to: [oncall@example.com]}}\n  \
               hook: {{type: webhook, url: \"http://driftwatch:url-pass-Qa27dE@127.0.0.1:{echo}/hook\", secret: hmac-key-Pf55tR, \
                       headers: {{Authorization: \"Bearer bearer-hdr-Ux19gL\"}}}}\n  \
               gh: {{type: github_dispatch, repo: acme/model, token: ghp-token-Lr62vA, event_type: retrain, api_url: \"http://127.0.0.1:{echo}\"}}\n  \
               jenkins: {{type: jenkins, url: \"http://127.0.0.1:{echo}\", job: retrain, token: jenkins-tok-Ce48sN}}\n",
            repo("tests/fixtures/replay_drift/baseline.json").display()
        ),
    )
    .unwrap();
    config
}

/// `text` without ANSI colour sequences.
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|c| *c == 'm');
        } else {
            out.push(c);
        }
    }
    out
}

fn driftwatch(dir: &Path, args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_driftwatch"))
        .args(args)
        .current_dir(dir)
        .env("DRIFTWATCH_LOG", "debug")
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), plain(&text))
}

#[test]
fn no_secret_appears_in_output_logs_responses_or_errors() {
    let (echo, received) = start_echoing_receiver();
    let closed = closed_port();
    let dir = tempfile::tempdir().unwrap();
    let config = write_files(dir.path(), echo, closed);
    let config_arg = config.to_str().unwrap();

    // `config check` and `rules check` print the config and its notifiers.
    let (ok, text) = driftwatch(dir.path(), &["config", "check", "--config", config_arg]);
    assert!(ok, "{text}");
    assert!(text.contains("***redacted***"), "the secrets are shown as redacted:\n{text}");
    assert_no_secret("`config check`", &text);
    let (ok, text) = driftwatch(dir.path(), &["rules", "check", "--config", config_arg, "rules.yaml"]);
    assert!(ok, "{text}");
    assert_no_secret("`rules check`", &text);

    // A replay that fires the rule and notifies all four notifiers, each
    // failing: the echoing receiver puts every credential in its replies,
    // the SMTP port is closed.
    let (ok, text) = driftwatch(
        dir.path(),
        &[
            "replay",
            "--config",
            config_arg,
            "--predictions",
            repo("tests/fixtures/replay_drift/live.ndjson").to_str().unwrap(),
            "--out",
            "rows.ndjson",
            "--notify",
        ],
    );
    assert!(!ok, "no notification arrived, so the replay fails:\n{text}");
    for notifier in ["mail", "hook", "gh", "jenkins"] {
        assert!(text.contains(&format!("notifier={notifier}")), "{notifier} was attempted:\n{text}");
    }
    assert!(text.contains("you sent:"), "the receiver's echo was logged (scrubbed):\n{text}");
    assert_no_secret("replay --notify logs", &text);
    // Waiting notifications hold the credentials: only the owner may read them.
    use std::os::unix::fs::PermissionsExt;
    let outbox = std::fs::metadata(dir.path().join("state/outbox")).expect("the outbox exists");
    assert_eq!(outbox.permissions().mode() & 0o777, 0o700, "the outbox directory is private");

    // The daemon: its Kafka client fails SASL against a closed port, its OTLP
    // exports get the echo; every endpoint is called with the token.
    let log = dir.path().join("daemon.log");
    let mut daemon = Killed(
        Command::new(env!("CARGO_BIN_EXE_driftwatch"))
            .args(["run", "--config", config_arg])
            .current_dir(dir.path())
            .env("DRIFTWATCH_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let read_log = || plain(&std::fs::read_to_string(&log).unwrap_or_default());
    wait_until(Duration::from_secs(60), "the HTTP API", || read_log().contains("HTTP API listening"));
    let address = http_address(&read_log());
    let mut responses = String::new();
    for path in
        ["/", "/healthz", "/readyz", "/metrics", "/api/v1/models", "/api/v1/windows", "/api/v1/alerts", "/api/v1/rules"]
    {
        for token in [None, Some(HTTP_TOKEN), Some("wrong")] {
            let (status, body) = http_text(&address, "GET", path, token);
            responses.push_str(&format!("GET {path} -> {status}\n{body}\n"));
        }
    }
    for token in [None, Some("wrong"), Some("http-token-Zq81xM")] {
        let (status, body) = http_text(&address, "POST", "/-/reload", token);
        assert_eq!(status, 401, "{body}");
        responses.push_str(&body);
    }
    // A reload (it re-reads the rule files) that fails, and `config check`
    // of broken configs: the errors must not quote a secret.
    let rules = std::fs::read_to_string(dir.path().join("rules.yaml")).unwrap();
    std::fs::write(dir.path().join("rules.yaml"), rules.replace("notify: [", "notify: [nobody, ")).unwrap();
    let (status, body) = http_text(&address, "POST", "/-/reload", Some(HTTP_TOKEN));
    assert_ne!(status, 200, "a broken rule file is refused: {body}");
    responses.push_str(&format!("reload -> {status}\n{body}\n"));
    std::fs::write(dir.path().join("rules.yaml"), rules).unwrap();
    let good = std::fs::read_to_string(&config).unwrap();
    let broken = [
        good.replace("127.0.0.1:0\", token:", "127.0.0.1:0\", unknown_key: http-token-Zq81xN, token:"),
        good.replace(&format!("@127.0.0.1:{closed}\""), "@127.0.0.1:notaport\" , tls: sometimes"),
        good.replace("secret: hmac-key-Pf55tR", "secret: [hmac-key-Pf55tR]"),
        good.replace("sasl.password: sasl-pass-Wm30eJ", "sasl.password: {nested: sasl-pass-Wm30eJ}"),
        good.replace("x-api-key: otlp-key-Hy74cB", "\"bad header\": otlp-key-Hy74cB"),
        good.replace("token: ghp-token-Lr62vA", "token: ghp-token-Lr62vA, tokn: ghp-token-Lr62vA"),
    ];
    for (i, text) in broken.iter().enumerate() {
        assert_ne!(*text, good, "broken config {i} differs from the good one");
        std::fs::write(&config, text).unwrap();
        let (ok, out) = driftwatch(dir.path(), &["config", "check", "--config", config_arg]);
        assert!(!ok, "config check refuses broken config {i}:\n{text}");
        responses.push_str(&out);
    }
    std::fs::write(&config, good).unwrap();
    assert_no_secret("HTTP responses and config errors", &responses);
    wait_until(Duration::from_secs(60), "an OTLP export to the echoing receiver", || {
        received.lock().unwrap().iter().any(|line| line.contains("/v1/metrics"))
    });
    wait_until(Duration::from_secs(60), "the Kafka client's failures in the log", || {
        read_log().contains("kafka_reachable") || read_log().to_ascii_lowercase().contains("broker")
    });
    assert!(daemon.0.try_wait().unwrap().is_none(), "the daemon keeps running:\n{}", read_log());
    let _ = Command::new("kill").args(["-TERM", &daemon.0.id().to_string()]).status();
    let _ = daemon.0.wait();
    assert_no_secret("the daemon's log", &read_log());
}
