//! Test support: a real Kafka-protocol broker (Tansu, in-memory storage)
//! started on a free loopback port per test and killed when dropped, plus
//! polling with deadlines.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

/// Polls `condition` every 20 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn tansu_binary() -> PathBuf {
    if let Ok(path) = std::env::var("TANSU") {
        return PathBuf::from(path);
    }
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let candidate = PathBuf::from(dir).join("tansu");
        if candidate.is_file() {
            return candidate;
        }
    }
    let home = PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cargo/bin/tansu");
    assert!(home.is_file(), "tansu is not installed: run ./scripts/test.sh, which installs it");
    home
}

/// A child process killed (and reaped) when dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A Tansu broker with in-memory storage on 127.0.0.1.
pub struct Broker {
    child: Child,
    pub port: u16,
}

impl Broker {
    pub fn start() -> Broker {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(tansu_binary())
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/", "--silent"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting tansu");
        let broker = Broker { child, port };
        wait_until(Duration::from_secs(30), "tansu to listen", || TcpStream::connect(("127.0.0.1", port)).is_ok());
        broker
    }

    /// The broker's process id (to freeze it with SIGSTOP).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn create_topic(&self, name: &str, partitions: u32) {
        self.create_topic_with(name, partitions, &[]);
    }

    /// [`Broker::create_topic`] with topic configs (`key=value`).
    pub fn create_topic_with(&self, name: &str, partitions: u32, configs: &[&str]) {
        let status = Command::new(tansu_binary())
            .args(["topic", "create", "--broker", &format!("tcp://127.0.0.1:{}", self.port)])
            .args(configs.iter().flat_map(|c| ["--config", c]))
            .args(["--partitions", &partitions.to_string(), name])
            .stdout(Stdio::null())
            .status()
            .expect("running tansu topic create");
        assert!(status.success(), "creating topic {name}");
    }

    pub fn producer(&self) -> BaseProducer {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", self.bootstrap()).set("linger.ms", "5");
        one_record_per_batch(&mut config).create().expect("producer")
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Makes a test producer write each record in a batch of its own.
///
/// Tansu 0.6.0 cannot serve a fetch that starts inside a record batch: its
/// storage returns only the batches whose *base* offset is at or past the
/// fetch offset (the rest of the containing batch is skipped), and its fetch
/// loop then advances by record counts from the requested offset, so it
/// fetches the last batch(es) again in the same response (as many records
/// read twice as were skipped). Kafka returns the containing batch and the
/// client drops the records before its position. A consumer starts inside a
/// batch whenever it resumes at an offset it chose (a checkpoint, a commit
/// after a micro-batch), so with batched records a restart or rebalance
/// would lose events and read others twice — the broker's doing, not the
/// daemon's. One record per batch makes every offset a batch start.
pub fn one_record_per_batch(config: &mut ClientConfig) -> &mut ClientConfig {
    config.set("batch.num.messages", "1")
}

/// Sends `payload` to `topic`, waiting while the producer's queue is full.
pub fn send(producer: &BaseProducer, topic: &str, key: &str, payload: &[u8]) {
    send_record(producer, BaseRecord::to(topic).key(key).payload(payload));
}

/// [`send`] to one partition of `topic`.
pub fn send_to_partition(producer: &BaseProducer, topic: &str, partition: i32, key: &str, payload: &[u8]) {
    send_record(producer, BaseRecord::to(topic).partition(partition).key(key).payload(payload));
}

fn send_record(producer: &BaseProducer, mut record: BaseRecord<'_, str, [u8]>) {
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((_, back)) => {
                record = back;
                producer.poll(Duration::from_millis(10));
            }
        }
    }
}

pub fn flush(producer: &BaseProducer) {
    producer.flush(Duration::from_secs(30)).expect("delivery");
}

/// A path inside the repository.
pub fn repo(path: &str) -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Notifications waiting in an outbox directory (`*.json` files).
pub fn outbox_entries(outbox: &std::path::Path) -> usize {
    std::fs::read_dir(outbox)
        .map(|d| d.filter_map(Result::ok).filter(|e| e.path().extension().is_some_and(|x| x == "json")).count())
        .unwrap_or(0)
}

/// `sha256=<hex HMAC-SHA256>` of `body`, computed here independently of
/// the code under test.
pub fn expected_signature(secret: &[u8], body: &[u8]) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    mac.update(body);
    format!("sha256={}", mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// The HTTP API's address from a daemon's log line.
pub fn http_address(log: &str) -> String {
    let plain = without_colours(log);
    let line = plain.lines().find(|l| l.contains("HTTP API listening")).expect("the listening line");
    let start = line.find("address=").expect("address field") + "address=".len();
    line[start..].split_whitespace().next().unwrap().to_string()
}

/// A log without its ANSI colour sequences.
pub fn without_colours(log: &str) -> String {
    let mut plain = String::new();
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

/// A minimal HTTP/1.1 request; returns the status and the body as text.
pub fn http_text(address: &str, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(address).unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default();
    (status, body)
}

/// [`http_text`] with the body parsed as JSON (`Null` when it is not).
pub fn http(address: &str, method: &str, path: &str, token: Option<&str>) -> (u16, serde_json::Value) {
    let (status, body) = http_text(address, method, path, token);
    (status, serde_json::from_str(&body).unwrap_or(serde_json::Value::Null))
}

/// Writes `rules.yaml` into `dir`: one rule, `AmountDrift`, firing after two
/// windows in which the `amount` feature's PSI drifted, notifying `notify`.
pub fn write_amount_drift_rule(dir: &std::path::Path, notify: &str) {
    write_amount_drift_rule_with(dir, notify, "", "for: 2");
}

/// [`write_amount_drift_rule`] with `condition` appended to its `expr`
/// (e.g. ` AND window_start = ...`) and `keys` (e.g. `for: 2`, `cooldown:
/// 12h`, one per line) added to the rule.
pub fn write_amount_drift_rule_with(dir: &std::path::Path, notify: &str, condition: &str, keys: &str) {
    let keys: String =
        keys.lines().filter(|l| !l.trim().is_empty()).map(|l| format!("        {}\n", l.trim())).collect();
    std::fs::write(
        dir.join("rules.yaml"),
        format!(
            "groups:\n  - name: g\n    rules:\n      - alert: AmountDrift\n        \
             expr: metric = 'psi' AND drifted AND feature = 'amount' AND segment = ''{condition}\n{keys}        \
             labels: {{severity: critical}}\n        annotations: {{summary: \"amount drifted on {{{{ model }}}}\"}}\n        \
             notify: [{notify}]\n"
        ),
    )
    .unwrap();
}

/// Starts `driftwatch run --config CONFIG` in `dir`, its log in `dir/log`.
pub fn start_daemon(dir: &std::path::Path, config: &std::path::Path, log: &str) -> Killed {
    Killed(
        std::process::Command::new(env!("CARGO_BIN_EXE_driftwatch"))
            .args(["run", "--config", config.to_str().unwrap()])
            .current_dir(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join(log)).unwrap())
            .spawn()
            .unwrap(),
    )
}

/// A daemon's log so far (empty before it exists).
pub fn log_text(dir: &std::path::Path, log: &str) -> String {
    std::fs::read_to_string(dir.join(log)).unwrap_or_default()
}

/// NDJSON lines of a file, parsed (none when the file does not exist).
pub fn records(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: {e}: {l}", path.display())))
        .collect()
}

/// `run_daemon` on a thread of this process, its rows sent back as windows
/// close (the Kafka tests that read the daemon's rows and counters).
pub struct InProcessDaemon {
    shutdown: driftwatch::shutdown::Shutdown,
    pub telemetry: std::sync::Arc<driftwatch::telemetry::Telemetry>,
    handle:
        std::thread::JoinHandle<Result<driftwatch::sources::kafka::KafkaSummary, driftwatch::drivers::run::RunError>>,
    rows: std::sync::mpsc::Receiver<Vec<driftwatch::window_metrics::WindowMetricRow>>,
    /// Rows received so far (see [`Self::received`]).
    received: Vec<driftwatch::window_metrics::WindowMetricRow>,
}

impl InProcessDaemon {
    pub fn start(config: driftwatch::config::Config) -> InProcessDaemon {
        Self::start_with(config, |rows| Box::new(rows))
    }

    /// [`Self::start`] with the daemon's extra sink made by `sink` from the
    /// sender of the rows [`Self::received`] and [`Self::stop`] return.
    pub fn start_with(
        config: driftwatch::config::Config,
        sink: impl FnOnce(
            std::sync::mpsc::Sender<Vec<driftwatch::window_metrics::WindowMetricRow>>,
        ) -> Box<dyn driftwatch::output::WindowSink + Send>,
    ) -> InProcessDaemon {
        let shutdown = driftwatch::shutdown::Shutdown::new();
        let telemetry = std::sync::Arc::new(driftwatch::telemetry::Telemetry::default());
        let (sender, rows) = std::sync::mpsc::channel();
        let sink = sink(sender);
        let handle = {
            let shutdown = shutdown.clone();
            let telemetry = telemetry.clone();
            std::thread::spawn(move || {
                driftwatch::drivers::run::run_daemon(&config, telemetry, &shutdown, &Default::default(), Some(sink))
            })
        };
        InProcessDaemon { shutdown, telemetry, handle, rows, received: Vec::new() }
    }

    /// The rows the daemon has written so far (while it runs).
    pub fn received(&mut self) -> &[driftwatch::window_metrics::WindowMetricRow] {
        self.received.extend(self.rows.try_iter().flatten());
        &self.received
    }

    /// Stops the daemon: its summary and every row it wrote.
    pub fn stop(
        mut self,
    ) -> (driftwatch::sources::kafka::KafkaSummary, Vec<driftwatch::window_metrics::WindowMetricRow>) {
        self.shutdown.trigger();
        let summary = self.handle.join().expect("daemon thread").expect("daemon ran");
        self.received.extend(self.rows.try_iter().flatten());
        (summary, self.received)
    }
}
