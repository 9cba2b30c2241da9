//! The daemon's configuration (`driftwatch.yaml`, docs/CONFIG.md).
//!
//! Loading goes: read the file → expand `${ENV_VAR}` references in the text
//! ([`env`] syntax) → parse the YAML strictly (an unknown or duplicate key is
//! an error naming the key and its line) → resolve relative paths against the
//! config file's directory → [`Config::validate`], which reports every
//! semantic problem at once.
//!
//! Secrets never appear in `Debug` output or in any serialization of a
//! [`Config`] (see [`redact`] for exactly what is redacted);
//! [`Config::to_redacted_yaml`] is what `driftwatch config check` prints.
//!
//! This module does no network or Kafka I/O.

mod bytesize;
mod duration;
mod env;
mod error;
pub mod notifiers;
mod pointer;
pub mod redact;
pub mod reload;
mod validate;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};

pub use error::ConfigError;
pub use pointer::parse_json_pointer;
pub use redact::{REDACTED, Secret};

use crate::fsutil::{MAX_TEXT_FILE_BYTES, check_text_size, read_text_file_bounded};
use crate::text::shorten_long_tokens;

// ---------------------------------------------------------------------------
// Defaults
// ---------------------------------------------------------------------------

/// Default `kafka.group_id`.
pub const DEFAULT_GROUP_ID: &str = "driftwatch";
/// Default `kafka.predictions_topic`.
pub const DEFAULT_PREDICTIONS_TOPIC: &str = "predictions";
/// Default `kafka.labels_topic`.
pub const DEFAULT_LABELS_TOPIC: &str = "labels";

/// Default `windows.size`: 5 minutes.
pub const DEFAULT_WINDOW_SIZE: Duration = Duration::from_secs(5 * 60);
/// Default `windows.allowed_lateness`: 1 minute.
pub const DEFAULT_ALLOWED_LATENESS: Duration = Duration::from_secs(60);
/// Default `windows.label_horizon`: 24 hours.
pub const DEFAULT_LABEL_HORIZON: Duration = Duration::from_secs(24 * 60 * 60);
/// Default `windows.idle_timeout`: 1 minute.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Default `pipeline.batch_size`: events per micro-batch.
pub const DEFAULT_BATCH_SIZE: usize = 8192;
/// Default `pipeline.linger`: 200 ms.
pub const DEFAULT_LINGER: Duration = Duration::from_millis(200);
/// Default `delivery.max_pending`: most notifications pending at once;
/// beyond it new ones are refused (counted as `dropped`) rather than
/// growing without bound.
pub const DEFAULT_MAX_PENDING_NOTIFICATIONS: usize = 10_000;
/// Default `pipeline.max_pending_joins`.
pub const DEFAULT_MAX_PENDING_JOINS: usize = 1_000_000;
/// Default `pipeline.max_features_per_model`.
pub const DEFAULT_MAX_FEATURES_PER_MODEL: usize = 500;
/// Default `pipeline.max_segments_per_model`.
pub const DEFAULT_MAX_SEGMENTS_PER_MODEL: usize = 1000;
/// Default `pipeline.max_versions_per_model`.
pub const DEFAULT_MAX_VERSIONS_PER_MODEL: usize = 100;
/// The most `pipeline.max_versions_per_model` accepts: every version adds
/// series to each window and label sets to `/metrics`.
pub const MAX_VERSIONS_PER_MODEL: usize = 10_000;
/// Default `pipeline.max_categories_per_feature`.
pub const DEFAULT_MAX_CATEGORIES_PER_FEATURE: usize = 1000;
/// Default `pipeline.max_message_bytes`: 1 MiB.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// Default `http.listen`.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:9464";

/// Default `models[].fields.event_id`.
pub const DEFAULT_EVENT_ID_POINTER: &str = "/event_id";
/// Default `models[].fields.model`.
pub const DEFAULT_MODEL_POINTER: &str = "/model";
/// Default `models[].fields.model_version`.
pub const DEFAULT_MODEL_VERSION_POINTER: &str = "/model_version";
/// Default `models[].fields.timestamp`.
pub const DEFAULT_TIMESTAMP_POINTER: &str = "/timestamp";
/// Default `models[].fields.features`.
pub const DEFAULT_FEATURES_POINTER: &str = "/features";
/// Default `models[].fields.prediction`.
pub const DEFAULT_PREDICTION_POINTER: &str = "/prediction";
/// Default `models[].fields.score`.
pub const DEFAULT_SCORE_POINTER: &str = "/score";
/// Default `models[].fields.latency_ms`.
pub const DEFAULT_LATENCY_MS_POINTER: &str = "/latency_ms";
/// Default `models[].fields.segment`.
pub const DEFAULT_SEGMENT_POINTER: &str = "/segment";
/// Default `models[].fields.label`.
pub const DEFAULT_LABEL_POINTER: &str = "/label";

/// The notifier `type`s driftwatch knows.
pub const NOTIFIER_TYPES: &[&str] = &[
    "webhook",
    "github_dispatch",
    "github_workflow",
    "gitlab_trigger",
    "jenkins",
    "airflow_dag",
    "argo_workflow",
    "kubeflow_run",
    "email",
    "alertmanager",
    "slack",
];

fn default_group_id() -> String {
    DEFAULT_GROUP_ID.to_string()
}
fn default_predictions_topic() -> String {
    DEFAULT_PREDICTIONS_TOPIC.to_string()
}
fn default_labels_topic() -> String {
    DEFAULT_LABELS_TOPIC.to_string()
}
fn default_http_listen() -> String {
    DEFAULT_HTTP_LISTEN.to_string()
}

// ---------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------

/// The whole `driftwatch.yaml`. Only `models` is required (`Config::default()`
/// has none and so does not validate).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Kafka connection and topics. Absent (`None`) for file-only use
    /// (`replay`); `run` requires it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaConfig>,
    /// Event-time windowing. Default: [`WindowsConfig::default`]
    /// (5m tumbling windows, 1m lateness, 24h label horizon).
    #[serde(default)]
    pub windows: WindowsConfig,
    /// Micro-batching and memory caps (driftwatch extension).
    /// Default: [`PipelineConfig::default`].
    #[serde(default)]
    pub pipeline: PipelineConfig,
    /// The monitored models; at least one is required.
    #[serde(default)]
    pub models: Vec<ModelConfig>,
    /// Glob patterns of rule files. Relative patterns are resolved against
    /// the config file's directory on [`Config::load`] (that directory is
    /// glob-escaped, so the entries stay valid patterns). Default: none.
    /// See [`Config::rule_files`].
    #[serde(default)]
    pub rules: Vec<String>,
    /// Notifiers by name (the names rules refer to in `notify`). Default: none.
    #[serde(default)]
    pub notifiers: BTreeMap<String, NotifierConfig>,
    /// The HTTP server. Default: listen on `127.0.0.1:9464`, no token.
    #[serde(default)]
    pub http: HttpConfig,
    /// Local state (history, audit log, offsets). Default: no state dir.
    #[serde(default)]
    pub state: StateConfig,
    /// Extra outputs (driftwatch extension). Default: none.
    #[serde(default)]
    pub output: OutputConfig,
    /// How drift rows are judged (driftwatch extension). Default:
    /// [`DriftConfig::default`].
    #[serde(default)]
    pub drift: DriftConfig,
    /// Rule evaluation and the audit log (driftwatch extension). Default:
    /// [`AlertingConfig::default`].
    #[serde(default)]
    pub alerting: AlertingConfig,
    /// Notification delivery: retries and the outbox (driftwatch
    /// extension). Default: [`DeliveryConfig::default`].
    #[serde(default)]
    pub delivery: DeliveryConfig,
    /// Push metrics (and optionally traces) to an OpenTelemetry collector
    /// over OTLP/HTTP (driftwatch extension). Default: none (only the
    /// Prometheus `/metrics` endpoint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp: Option<OtlpConfig>,
    /// Instances sharing `kafka.group_id` merge exact windows through
    /// Kafka (docs/CONFIG.md, `cluster`). Default: none (each instance closes the
    /// windows of its own partitions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterConfig>,
}

/// `cluster:` — several instances, one exact answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The topic through which instances send what they read to each
    /// model's merger; created, with the predictions topic's partition
    /// count, when missing. Default `driftwatch-partials`.
    #[serde(default = "default_partials_topic")]
    pub partials_topic: String,
    /// How often an instance publishes what it read (and commits it).
    /// Default [`DEFAULT_PUBLISH_INTERVAL`] (1s).
    #[serde(default = "default_publish_interval", with = "duration")]
    pub publish_interval: Duration,
    /// The largest record published: a larger delta goes in parts.
    /// Default [`DEFAULT_MAX_RECORD_BYTES`] (900 KB, under Kafka's 1 MB).
    #[serde(default = "default_max_record_bytes", with = "bytesize")]
    pub max_record_bytes: u64,
    /// Where other instances and users reach this instance's HTTP API:
    /// its name in `/api/v1/cluster` (and its consumers' `client.id`).
    /// Default: `http://<host>:<port>` of the address `http.listen` bound
    /// (the machine's host name when it listens on every interface).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertised_url: Option<String>,
}

/// Default `cluster.publish_interval`.
pub const DEFAULT_PUBLISH_INTERVAL: Duration = Duration::from_secs(1);
/// Default `cluster.max_record_bytes`.
pub const DEFAULT_MAX_RECORD_BYTES: u64 = 900_000;

fn default_partials_topic() -> String {
    "driftwatch-partials".to_string()
}

fn default_publish_interval() -> Duration {
    DEFAULT_PUBLISH_INTERVAL
}

fn default_max_record_bytes() -> u64 {
    DEFAULT_MAX_RECORD_BYTES
}

/// Default `otlp.interval`: how often metrics are pushed.
pub const DEFAULT_OTLP_INTERVAL: Duration = Duration::from_secs(30);
/// Default `otlp.timeout`: one export request's deadline.
pub const DEFAULT_OTLP_TIMEOUT: Duration = Duration::from_secs(10);

/// `otlp:` — OpenTelemetry push over OTLP/HTTP with protobuf bodies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// Base URL of the OTLP/HTTP receiver, e.g. `http://otel-collector:4318`;
    /// `/v1/metrics` and `/v1/traces` are appended. Required.
    pub endpoint: String,
    /// How often metrics are pushed. Default [`DEFAULT_OTLP_INTERVAL`] (30s).
    #[serde(default = "default_otlp_interval", with = "duration")]
    pub interval: Duration,
    /// Deadline of one export request. Default [`DEFAULT_OTLP_TIMEOUT`] (10s).
    #[serde(default = "default_otlp_timeout", with = "duration")]
    pub timeout: Duration,
    /// Extra request headers, e.g. `authorization: "Bearer ${OTLP_TOKEN}"`
    /// (values are secrets: never logged). Default: none.
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    /// Push the metrics `/metrics` serves. Default true.
    #[serde(default = "default_true")]
    pub metrics: bool,
    /// Export spans of the window close → rules → notify path. Default false.
    #[serde(default)]
    pub traces: bool,
    /// The `service.name` resource attribute. Default `driftwatch`.
    #[serde(default = "default_service_name")]
    pub service_name: String,
}

fn default_otlp_interval() -> Duration {
    DEFAULT_OTLP_INTERVAL
}
fn default_otlp_timeout() -> Duration {
    DEFAULT_OTLP_TIMEOUT
}
fn default_true() -> bool {
    true
}
fn default_service_name() -> String {
    "driftwatch".to_string()
}

/// `delivery:` — how notifications are retried (driftwatch extension;
/// every key optional).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// First retry's backoff ceiling; it doubles per attempt (full jitter:
    /// the wait is uniform below the ceiling). Default 1s.
    #[serde(with = "duration")]
    pub retry_initial: Duration,
    /// Largest backoff ceiling (and longest `Retry-After` honoured).
    /// Default 5m.
    #[serde(with = "duration")]
    pub retry_max: Duration,
    /// Attempts before a notification is given up (`expired`). Default 12.
    pub max_attempts: u32,
    /// Most notifications pending in the outbox; beyond it new ones are
    /// dropped and counted. Default 10,000.
    pub max_pending: usize,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
            max_attempts: 12,
            max_pending: DEFAULT_MAX_PENDING_NOTIFICATIONS,
        }
    }
}

/// Default `alerting.history`: rows kept for `query:` rules.
pub const DEFAULT_ALERTING_HISTORY: Duration = Duration::from_secs(60 * 60);
/// Default `alerting.history_max_rows`: the most `window_metrics` rows kept
/// for `query:` rules, whatever `history` says.
pub const DEFAULT_ALERTING_HISTORY_MAX_ROWS: usize = 200_000;
/// The most `alerting.history_max_rows` accepts.
pub const MAX_ALERTING_HISTORY_ROWS: usize = 10_000_000;
/// Default `alerting.evaluation_interval`: how often the daemon evaluates
/// `query:` rules when no window closes.
pub const DEFAULT_EVALUATION_INTERVAL: Duration = Duration::from_secs(30);

/// `alerting:` — rule evaluation (driftwatch extension; every key optional).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertingConfig {
    /// How far back `query:` rules see `window_metrics` (by `window_end`,
    /// from the newest closed window). Default [`DEFAULT_ALERTING_HISTORY`]
    /// (1h).
    #[serde(with = "duration")]
    pub history: Duration,
    /// The most rows `query:` rules see: beyond it the oldest windows'
    /// rows age out early, so a burst of rows cannot hold `history` worth
    /// of them in memory and checkpoints. Default
    /// [`DEFAULT_ALERTING_HISTORY_MAX_ROWS`] (200,000). From 1 to
    /// [`MAX_ALERTING_HISTORY_ROWS`].
    pub history_max_rows: usize,
    /// How often the daemon evaluates `query:` rules on the wall clock, so
    /// that "no windows for 10 minutes" fires while nothing arrives.
    /// Default [`DEFAULT_EVALUATION_INTERVAL`] (30s).
    #[serde(with = "duration")]
    pub evaluation_interval: Duration,
    /// The append-only audit log of alert transitions (NDJSON); relative
    /// paths are resolved against the config file's directory. Default:
    /// `audit.ndjson` in `state.dir`, or none without a state dir.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_log: Option<PathBuf>,
}

impl Default for AlertingConfig {
    fn default() -> Self {
        AlertingConfig {
            history: DEFAULT_ALERTING_HISTORY,
            history_max_rows: DEFAULT_ALERTING_HISTORY_MAX_ROWS,
            evaluation_interval: DEFAULT_EVALUATION_INTERVAL,
            audit_log: None,
        }
    }
}

impl AlertingConfig {
    /// The audit log's path: `audit_log`, else `audit.ndjson` in the state dir.
    pub fn audit_log_path(&self, state: &StateConfig) -> Option<PathBuf> {
        self.audit_log.clone().or_else(|| state.dir.as_ref().map(|d| d.join("audit.ndjson")))
    }
}

/// Default `drift.alpha`: the false-alarm rate per window and drift metric,
/// shared across the model's features (Bonferroni).
pub const DEFAULT_DRIFT_ALPHA: f64 = 0.01;

/// `drift:` — thresholds for the `drifted` column (driftwatch extension).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriftConfig {
    /// Probability that a window drawn from the baseline's own distribution
    /// is marked drifted on a given metric for any of the model's features
    /// (the per-feature level is `alpha / features`). Thresholds are the
    /// metric's critical value at that level for the window's sample size,
    /// so they tighten as windows grow. Default [`DEFAULT_DRIFT_ALPHA`]
    /// (0.01). Must be in (0, 0.5).
    #[serde(default = "default_drift_alpha")]
    pub alpha: f64,
}

fn default_drift_alpha() -> f64 {
    DEFAULT_DRIFT_ALPHA
}

impl Default for DriftConfig {
    fn default() -> Self {
        DriftConfig { alpha: DEFAULT_DRIFT_ALPHA }
    }
}

/// `kafka:`. Only `brokers` is required.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Comma-separated bootstrap servers (`bootstrap.servers`). Required,
    /// non-empty.
    pub brokers: String,
    /// Consumer group id. Default [`DEFAULT_GROUP_ID`] (`driftwatch`).
    #[serde(default = "default_group_id")]
    pub group_id: String,
    /// Topic of prediction events. Default [`DEFAULT_PREDICTIONS_TOPIC`]
    /// (`predictions`).
    #[serde(default = "default_predictions_topic")]
    pub predictions_topic: String,
    /// Topic of label events. Default [`DEFAULT_LABELS_TOPIC`] (`labels`).
    #[serde(default = "default_labels_topic")]
    pub labels_topic: String,
    /// Where invalid events go, with the reason in a header. Default: none
    /// (invalid events are only counted and logged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_topic: Option<String>,
    /// Extra librdkafka properties, passed as-is (e.g. `security.protocol`).
    /// YAML numbers and booleans are accepted and turned into strings.
    /// Secret-looking entries are redacted when printed. Default: none.
    #[serde(default, deserialize_with = "deserialize_scalar_map", serialize_with = "redact::serialize_options")]
    pub options: BTreeMap<String, String>,
}

impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("group_id", &self.group_id)
            .field("predictions_topic", &self.predictions_topic)
            .field("labels_topic", &self.labels_topic)
            .field("dead_letter_topic", &self.dead_letter_topic)
            .field("options", &redact::redacted_options(&self.options))
            .finish()
    }
}

/// `windows:` — event-time windows. Durations are humantime strings
/// (`"30s"`, `"5m"`, `"24h"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "RawWindowsConfig")]
pub struct WindowsConfig {
    /// Window length. Default [`DEFAULT_WINDOW_SIZE`] (5m). Must be a whole
    /// multiple of `slide`.
    #[serde(with = "duration")]
    pub size: Duration,
    /// Distance between window starts; `slide < size` gives hopping windows.
    /// Default: equal to `size` (tumbling windows).
    #[serde(with = "duration")]
    pub slide: Duration,
    /// How long after a window's end late events are still accepted before
    /// the window closes. Default [`DEFAULT_ALLOWED_LATENESS`] (1m).
    #[serde(with = "duration")]
    pub allowed_lateness: Duration,
    /// How long a prediction waits for its label (and a label for its
    /// prediction); performance rows of a window are final after it.
    /// Default [`DEFAULT_LABEL_HORIZON`] (24h).
    #[serde(with = "duration")]
    pub label_horizon: Duration,
    /// How long (wall clock) an input may be silent before it stops holding
    /// windows open. The labels of a model hold its performance rows and
    /// pending joins while they arrive (or while the daemon has run for
    /// less than this without them), so predictions read ahead of their
    /// labels (a backlog, a restart, a rebalance) cannot close a window's
    /// performance before its labels are read. Default
    /// [`DEFAULT_IDLE_TIMEOUT`] (1m).
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
}

impl Default for WindowsConfig {
    fn default() -> Self {
        WindowsConfig {
            size: DEFAULT_WINDOW_SIZE,
            slide: DEFAULT_WINDOW_SIZE,
            allowed_lateness: DEFAULT_ALLOWED_LATENESS,
            label_horizon: DEFAULT_LABEL_HORIZON,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWindowsConfig {
    #[serde(default)]
    size: Option<duration::HumanDuration>,
    #[serde(default)]
    slide: Option<duration::HumanDuration>,
    #[serde(default)]
    allowed_lateness: Option<duration::HumanDuration>,
    #[serde(default)]
    label_horizon: Option<duration::HumanDuration>,
    #[serde(default)]
    idle_timeout: Option<duration::HumanDuration>,
}

impl From<RawWindowsConfig> for WindowsConfig {
    fn from(raw: RawWindowsConfig) -> Self {
        let size = raw.size.map_or(DEFAULT_WINDOW_SIZE, |d| d.0);
        WindowsConfig {
            size,
            slide: raw.slide.map_or(size, |d| d.0),
            allowed_lateness: raw.allowed_lateness.map_or(DEFAULT_ALLOWED_LATENESS, |d| d.0),
            label_horizon: raw.label_horizon.map_or(DEFAULT_LABEL_HORIZON, |d| d.0),
            idle_timeout: raw.idle_timeout.map_or(DEFAULT_IDLE_TIMEOUT, |d| d.0),
        }
    }
}

/// `pipeline:` — micro-batching and the caps that bound memory
/// (driftwatch extension; every key optional).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Events per micro-batch handed to DataFusion: a batch is cut when it
    /// has this many events or `linger` has passed. Default
    /// [`DEFAULT_BATCH_SIZE`] (8192). At least 1.
    pub batch_size: usize,
    /// Longest time a partial micro-batch waits for more events.
    /// Default [`DEFAULT_LINGER`] (200ms).
    #[serde(with = "duration")]
    pub linger: Duration,
    /// Most predictions (and early labels) held per model waiting for their
    /// other half of the label join; beyond it the oldest are evicted and
    /// counted.
    /// Default [`DEFAULT_MAX_PENDING_JOINS`] (1,000,000). At least 1.
    pub max_pending_joins: usize,
    /// Most distinct features tracked per model; extra features are ignored
    /// and counted. Default [`DEFAULT_MAX_FEATURES_PER_MODEL`] (500). At least 1.
    pub max_features_per_model: usize,
    /// Most distinct (model_version, segment) series tracked per model;
    /// events of further segments are filed under segment `__other__` (and
    /// still count in their version's whole-model rows). Default
    /// [`DEFAULT_MAX_SEGMENTS_PER_MODEL`] (1000). At least 1.
    pub max_segments_per_model: usize,
    /// Most distinct `model_version` values tracked per model; events of
    /// further versions are filed under version `__other__` and counted.
    /// Default [`DEFAULT_MAX_VERSIONS_PER_MODEL`] (100). From 1 to
    /// [`MAX_VERSIONS_PER_MODEL`].
    pub max_versions_per_model: usize,
    /// Most distinct categories kept per categorical feature and window;
    /// the rest are pooled. Default [`DEFAULT_MAX_CATEGORIES_PER_FEATURE`]
    /// (1000). At least 1.
    pub max_categories_per_feature: usize,
    /// How many times faster than the host clock event time runs: the
    /// daemon's clock (as the engine sees it: idleness, quiet models, the
    /// cap on the watermark) runs this many times faster from the daemon's
    /// start. Not a config key: 1, except in `driftwatch demo`, which
    /// streams event time 30× faster than the clock.
    #[serde(skip)]
    pub clock_speedup: u32,
    /// Largest accepted event message in bytes; bigger ones are invalid
    /// (`reason="too_large"`). Default [`DEFAULT_MAX_MESSAGE_BYTES`] (1 MiB).
    /// At least 1.
    pub max_message_bytes: usize,
    /// Events stamped more than this ahead of the host's clock are
    /// invalid (`reason="timestamp_out_of_range"`), so one producer with a
    /// wrong clock cannot push the watermark ahead and close every window
    /// early. Applied by the daemon (`run`, `demo`); `replay` takes the
    /// files' times as they are. Default [`DEFAULT_MAX_FUTURE_SKEW`] (1h).
    #[serde(with = "duration")]
    pub max_future_skew: Duration,
    /// Lanes: threads that each read, decode and aggregate a share of the
    /// source partitions in parallel (`replay`: of the predictions files;
    /// see `replay --lanes`; the daemon reads with one lane for now).
    /// Default: the number of available cores ([`PipelineConfig::lanes`]
    /// gives it), at most the number of partitions. The rows are the same
    /// for any number of lanes. At least 1.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "lanes")]
    pub lanes_setting: Option<usize>,
    /// After SIGTERM/SIGINT, the longest the daemon takes to drain its
    /// batch, checkpoint and commit before it exits anyway (code 1).
    /// Default [`DEFAULT_SHUTDOWN_TIMEOUT`] (30s).
    #[serde(with = "duration")]
    pub shutdown_timeout: Duration,
}

impl PipelineConfig {
    /// `pipeline.lanes`, or the number of available cores when unset.
    pub fn lanes(&self) -> usize {
        self.lanes_setting
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get))
            .max(1)
    }
}

/// Default `pipeline.max_future_skew`.
pub const DEFAULT_MAX_FUTURE_SKEW: Duration = Duration::from_secs(3600);

/// Default `pipeline.shutdown_timeout`.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            batch_size: DEFAULT_BATCH_SIZE,
            linger: DEFAULT_LINGER,
            max_pending_joins: DEFAULT_MAX_PENDING_JOINS,
            max_features_per_model: DEFAULT_MAX_FEATURES_PER_MODEL,
            max_segments_per_model: DEFAULT_MAX_SEGMENTS_PER_MODEL,
            max_versions_per_model: DEFAULT_MAX_VERSIONS_PER_MODEL,
            max_categories_per_feature: DEFAULT_MAX_CATEGORIES_PER_FEATURE,
            clock_speedup: 1,
            lanes_setting: None,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_future_skew: DEFAULT_MAX_FUTURE_SKEW,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
        }
    }
}

/// `models[]`: one monitored model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The model's name, as it appears in events' `model` field. Required,
    /// non-empty, unique.
    pub name: String,
    /// What the model predicts; decides the performance metrics.
    /// Default [`Task::BinaryClassification`].
    #[serde(default)]
    pub task: Task,
    /// Baseline profile (docs/REFERENCE.md) to compare windows against; relative paths
    /// are resolved against the config file's directory. Default: none
    /// (no drift metrics that need a reference).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<PathBuf>,
    /// Where each field is found in this model's events. Default: the
    /// default event layout (docs/REFERENCE.md) ([`FieldPaths::default`]).
    #[serde(default)]
    pub fields: FieldPaths,
    /// `binary_classification` only: the class value that counts as
    /// positive, when the model's classes are not 0/1 (e.g. `"yes"`). Set
    /// together with [`Self::negative_class`]; then exactly these two values
    /// are accepted as predictions and labels, compared as text (a number by
    /// its shortest form, `1.0` → `"1"`; a boolean as `true`/`false`).
    /// Default: none (classes are 0 and 1, see [`DEFAULT_POSITIVE_CLASS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub positive_class: Option<String>,
    /// `binary_classification` only: the other class value, required with
    /// [`Self::positive_class`]. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub negative_class: Option<String>,
    /// Versions of this model that run in shadow: they score the same
    /// events as the serving version (the champion) and send predictions
    /// with the same `event_id`. A label then joins the champion's
    /// prediction and each shadow's, each credited to its own version's
    /// rows, so they are compared on the same events. Without this, a
    /// second prediction with an event id already seen is a duplicate.
    /// At most [`MAX_SHADOW_VERSIONS`], distinct, non-empty. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shadow_versions: Vec<String>,
}

/// Most `models[].shadow_versions` per model: each one keeps a join of its
/// own, and every label is offered to each.
pub const MAX_SHADOW_VERSIONS: usize = 16;

/// The positive class of a binary model without `positive_class`: JSON
/// `1`, `1.0`, `true` and `"1"` all name it.
pub const DEFAULT_POSITIVE_CLASS: &str = "1";
/// The negative class of a binary model without `negative_class`: JSON
/// `0`, `0.0`, `false` and `"0"` all name it.
pub const DEFAULT_NEGATIVE_CLASS: &str = "0";

impl ModelConfig {
    /// The (positive, negative) class names of a binary model: the
    /// configured pair, or `("1", "0")`.
    pub fn binary_classes(&self) -> (&str, &str) {
        match (&self.positive_class, &self.negative_class) {
            (Some(positive), Some(negative)) => (positive, negative),
            _ => (DEFAULT_POSITIVE_CLASS, DEFAULT_NEGATIVE_CLASS),
        }
    }

    /// The join lane of `version`: 0 for the serving version(s), `k` for
    /// the k-th of [`Self::shadow_versions`].
    pub fn shadow_lane(&self, version: &str) -> u32 {
        self.shadow_versions.iter().position(|v| v == version).map_or(0, |k| k as u32 + 1)
    }

    /// Whether the model names its own binary classes (`positive_class`).
    pub fn has_named_classes(&self) -> bool {
        self.positive_class.is_some() && self.negative_class.is_some()
    }
}

/// The kind of model, `models[].task`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// `binary_classification` (the default): predictions and labels are
    /// 0/1 (or booleans), `score` is the probability of class 1.
    #[default]
    BinaryClassification,
    /// `multiclass_classification`: predictions and labels are class names
    /// or numbers.
    MulticlassClassification,
    /// `regression`: predictions and labels are numbers.
    Regression,
}

impl Task {
    /// The config spelling (`binary_classification`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Task::BinaryClassification => "binary_classification",
            Task::MulticlassClassification => "multiclass_classification",
            Task::Regression => "regression",
        }
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `models[].fields`: JSON Pointers (RFC 6901, see [`parse_json_pointer`])
/// locating each field in a prediction or label event. Every key is
/// optional and defaults to the name of the default event layout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FieldPaths {
    /// Join key of predictions and labels. Default `/event_id`.
    pub event_id: String,
    /// Model name. Default `/model`.
    pub model: String,
    /// Model version. Default `/model_version`.
    pub model_version: String,
    /// Event time (RFC 3339 or epoch ms). Default `/timestamp`.
    pub timestamp: String,
    /// Object of feature name → value. Default `/features`.
    pub features: String,
    /// The prediction. Default `/prediction`.
    pub prediction: String,
    /// Optional probability of the positive class. Default `/score`.
    pub score: String,
    /// Optional serving latency in ms. Default `/latency_ms`.
    pub latency_ms: String,
    /// Optional object of segment key → value. Default `/segment`.
    pub segment: String,
    /// The label, in label events. Default `/label`.
    pub label: String,
}

impl Default for FieldPaths {
    fn default() -> Self {
        FieldPaths {
            event_id: DEFAULT_EVENT_ID_POINTER.to_string(),
            model: DEFAULT_MODEL_POINTER.to_string(),
            model_version: DEFAULT_MODEL_VERSION_POINTER.to_string(),
            timestamp: DEFAULT_TIMESTAMP_POINTER.to_string(),
            features: DEFAULT_FEATURES_POINTER.to_string(),
            prediction: DEFAULT_PREDICTION_POINTER.to_string(),
            score: DEFAULT_SCORE_POINTER.to_string(),
            latency_ms: DEFAULT_LATENCY_MS_POINTER.to_string(),
            segment: DEFAULT_SEGMENT_POINTER.to_string(),
            label: DEFAULT_LABEL_POINTER.to_string(),
        }
    }
}

impl FieldPaths {
    /// `(key, pointer)` for every field, in declaration order.
    pub fn entries(&self) -> [(&'static str, &str); 10] {
        [
            ("event_id", &self.event_id),
            ("model", &self.model),
            ("model_version", &self.model_version),
            ("timestamp", &self.timestamp),
            ("features", &self.features),
            ("prediction", &self.prediction),
            ("score", &self.score),
            ("latency_ms", &self.latency_ms),
            ("segment", &self.segment),
            ("label", &self.label),
        ]
    }
}

/// `notifiers.<name>`: for now a `type` plus free-form settings (typed
/// variants come later). Secret-looking settings are redacted whenever this
/// is printed or serialized (see [`redact`]).
#[derive(Clone, PartialEq, Deserialize)]
pub struct NotifierConfig {
    /// The notifier kind, YAML key `type`; one of [`NOTIFIER_TYPES`].
    /// Required.
    #[serde(rename = "type")]
    pub kind: String,
    /// Every other key of the notifier, as written (after `${...}`
    /// expansion).
    #[serde(flatten)]
    pub settings: BTreeMap<String, serde_json::Value>,
}

impl Serialize for NotifierConfig {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let settings = redact::redacted_settings(&self.kind, &self.settings);
        let mut map = s.serialize_map(Some(settings.len() + 1))?;
        map.serialize_entry("type", &self.kind)?;
        for (k, v) in &settings {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl fmt::Debug for NotifierConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NotifierConfig")
            .field("kind", &self.kind)
            .field("settings", &redact::redacted_settings(&self.kind, &self.settings))
            .finish()
    }
}

/// `http:` — the HTTP server (docs/OBSERVABILITY.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// `host:port` to listen on. Default [`DEFAULT_HTTP_LISTEN`]
    /// (`127.0.0.1:9464`).
    pub listen: String,
    /// Bearer token required by `POST /-/reload`. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig { listen: default_http_listen(), token: None }
    }
}

/// `state:` — where the daemon keeps its checkpoints, the notification
/// outbox and the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// State directory; relative paths are resolved against the config
    /// file's directory. Default: none (nothing is persisted: a restart
    /// starts with empty windows, and shutdown closes every open window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// How often the daemon checkpoints its state (and then commits its
    /// Kafka offsets). Default [`DEFAULT_CHECKPOINT_INTERVAL`] (10s).
    #[serde(default = "default_checkpoint_interval", with = "duration")]
    pub checkpoint_interval: Duration,
    /// Memory for the join store (with a state directory, predictions
    /// waiting for labels live on disk, in `<dir>/joins`): its block cache
    /// and memtables together, for every model. A size such as `"256MB"`.
    /// Default [`DEFAULT_JOIN_MEMORY`] (256 MiB).
    #[serde(default = "default_join_memory", with = "bytesize")]
    pub join_memory: u64,
}

/// Default `state.join_memory`: 256 MiB for the join store's block cache
/// and memtables, every model's joins together.
pub const DEFAULT_JOIN_MEMORY: u64 = 256 * 1024 * 1024;

fn default_join_memory() -> u64 {
    DEFAULT_JOIN_MEMORY
}

/// Default `state.checkpoint_interval`.
pub const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(10);

fn default_checkpoint_interval() -> Duration {
    DEFAULT_CHECKPOINT_INTERVAL
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig { dir: None, checkpoint_interval: DEFAULT_CHECKPOINT_INTERVAL, join_memory: default_join_memory() }
    }
}

impl StateConfig {
    /// `<dir>/checkpoints`, when there is a state dir.
    pub fn checkpoint_dir(&self) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join("checkpoints"))
    }

    /// `<dir>/joins`, the join store, when there is a state dir.
    pub fn join_store_dir(&self) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join("joins"))
    }
}

/// `output:` — extra outputs (driftwatch extension).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    /// NDJSON file the daemon appends every closed window's
    /// `window_metrics` rows to; relative paths are resolved against the
    /// config file's directory. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_metrics: Option<PathBuf>,
}

// ---------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------

/// The longest feature name, segment key or value, model version or class
/// label an event may carry, in bytes: each is kept in every row, series
/// and checkpoint it reaches. Longer ones reject the event (`too_long`).
pub const MAX_EVENT_NAME_BYTES: usize = 256;
/// The `model_version` events of versions beyond `max_versions_per_model` are filed under.
pub const OVERFLOW_VERSION: &str = "__other__";
/// The segment of events beyond `max_segments_per_model` (their
/// version's series are full).
pub const OVERFLOW_SEGMENT: &str = "__other__";

/// Most windows one event may fall into (`windows.size / windows.slide`):
/// each is updated per event.
pub const MAX_WINDOWS_PER_EVENT: usize = 100;

/// The longest duration any setting accepts (100 years): event-time
/// arithmetic in milliseconds then never overflows.
pub const MAX_DURATION: std::time::Duration = std::time::Duration::from_secs(100 * 365 * 24 * 3600);

/// The longest model or alert name accepted: names become metric labels,
/// file names and map keys.
pub const MAX_NAME_BYTES: usize = 200;

impl Config {
    /// Reads, expands, parses, resolves and validates the config at `path`.
    /// Relative paths in it (baselines, rule globs, state dir, output file)
    /// are resolved against the directory of `path` (made absolute).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = read_text_file_bounded(path, MAX_TEXT_FILE_BYTES)
            .map_err(|source| ConfigError::Io { path: path.to_path_buf(), source })?;
        let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let base_dir = absolute.parent().unwrap_or(Path::new("."));
        Config::from_yaml_str_with_base(&text, &path.display().to_string(), Some(base_dir))
    }

    /// Expands, parses and validates config text. `origin` names the text
    /// in error messages. Relative paths are left as they are (relative to
    /// the working directory); use [`Config::from_yaml_str_with_base`] to
    /// resolve them.
    pub fn from_yaml_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
        Config::from_yaml_str_with_base(text, origin, None)
    }

    /// Like [`Config::from_yaml_str`], resolving relative paths against
    /// `base_dir` when given.
    pub fn from_yaml_str_with_base(text: &str, origin: &str, base_dir: Option<&Path>) -> Result<Config, ConfigError> {
        check_text_size(text).map_err(|message| ConfigError::Parse {
            origin: origin.to_string(),
            message,
            line: None,
        })?;
        let expanded = env::expand_env(text).map_err(|e| match e {
            env::ExpandError::Unset { var, line } => ConfigError::Env { origin: origin.to_string(), var, line },
            env::ExpandError::Syntax { line, message } => ConfigError::Parse {
                origin: origin.to_string(),
                message: format!("line {line}: {message}"),
                line: Some(line as u64),
            },
        })?;
        let mut config = parse_yaml(&expanded, origin)?;
        if let Some(base) = base_dir {
            config.resolve_relative_paths(base);
        }
        config.validate().map_err(|errors| ConfigError::Invalid {
            origin: origin.to_string(),
            errors: errors.iter().map(|e| shorten_long_tokens(e).into_owned()).collect(),
        })?;
        Ok(config)
    }

    /// Makes every relative path absolute against `base_dir`: model
    /// baselines, rule glob patterns (with `base_dir` glob-escaped), the
    /// state dir and the window metrics output. Absolute ones are kept.
    pub fn resolve_relative_paths(&mut self, base_dir: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base_dir.join(&*p);
            }
        };
        for model in &mut self.models {
            if let Some(b) = model.baseline.as_mut() {
                resolve(b);
            }
        }
        if let Some(d) = self.state.dir.as_mut() {
            resolve(d);
        }
        if let Some(o) = self.output.window_metrics.as_mut() {
            resolve(o);
        }
        if let Some(a) = self.alerting.audit_log.as_mut() {
            resolve(a);
        }
        let escaped_base = glob::Pattern::escape(&base_dir.to_string_lossy());
        for pattern in &mut self.rules {
            if Path::new(pattern.as_str()).is_relative() {
                let rel = pattern.strip_prefix("./").unwrap_or(pattern);
                *pattern = format!(
                    "{}{}{rel}",
                    escaped_base.trim_end_matches(std::path::MAIN_SEPARATOR),
                    std::path::MAIN_SEPARATOR
                );
            }
        }
    }

    /// The config as YAML with defaults filled in, durations in humantime
    /// form and secrets replaced by `***redacted***` (what `driftwatch
    /// config check` prints). It parses back with [`Config::from_yaml_str`]
    /// (`$` before `{` is escaped as `$${`).
    pub fn to_redacted_yaml(&self) -> String {
        match serde_saphyr::to_string(self) {
            Ok(text) => text.replace("${", "$${"),
            Err(e) => format!("# could not render the config: {e}\n"),
        }
    }

    /// The model named `name`, if configured.
    pub fn model(&self, name: &str) -> Option<&ModelConfig> {
        self.models.iter().find(|m| m.name == name)
    }

    /// The rule files matched by [`Config::rules`], sorted, without
    /// duplicates. A pattern with no `*` or `?` (a plain file name) that
    /// matches nothing is an error; a wildcard pattern may match nothing.
    pub fn rule_files(&self) -> Result<Vec<PathBuf>, ConfigError> {
        let mut files = Vec::new();
        let mut errors = Vec::new();
        for (i, pattern) in self.rules.iter().enumerate() {
            let paths = match glob::glob(pattern) {
                Ok(paths) => paths,
                Err(e) => {
                    errors.push(format!("rules[{i}]: invalid glob pattern {pattern:?}: {e}"));
                    continue;
                }
            };
            let before = files.len();
            for entry in paths {
                match entry {
                    Ok(p) if p.is_file() => files.push(p),
                    Ok(_) => {}
                    Err(e) => errors.push(format!("rules[{i}]: {e}")),
                }
            }
            if files.len() == before && !pattern.contains(['*', '?']) {
                errors.push(format!("rules[{i}]: no such file: {pattern}"));
            }
        }
        if !errors.is_empty() {
            return Err(ConfigError::Invalid { origin: "rules".to_string(), errors });
        }
        files.sort();
        files.dedup();
        Ok(files)
    }
}

fn parse_yaml(text: &str, origin: &str) -> Result<Config, ConfigError> {
    let has_content = text.lines().any(|l| {
        let t = l.trim();
        !(t.is_empty() || t.starts_with('#') || t == "---" || t == "...")
    });
    if !has_content {
        return Err(ConfigError::Parse {
            origin: origin.to_string(),
            message: "the config is empty (at least `models` is required)".to_string(),
            line: None,
        });
    }
    serde_saphyr::from_str::<Config>(text).map_err(|e| {
        let (line, message) = yaml_error(&e);
        ConfigError::Parse { origin: origin.to_string(), message: shorten_long_tokens(&message).into_owned(), line }
    })
}

/// A YAML parse error as (line, "line L, column C: message") without the
/// source snippet; shared by the config and rule-file loaders.
pub fn yaml_error(error: &serde_saphyr::Error) -> (Option<u64>, String) {
    let plain = error.without_snippet().to_string();
    match error.location() {
        Some(loc) => {
            let suffix = format!(" at line {}, column {}", loc.line(), loc.column());
            let message = plain.strip_suffix(&suffix).unwrap_or(&plain);
            // The YAML parser's word for a plain key over 1024 characters.
            let hint = if message.contains("simple key expected") {
                " (a missing `:`, or a key longer than YAML's 1024 characters)"
            } else {
                ""
            };
            (Some(loc.line()), format!("line {}, column {}: {message}{hint}", loc.line(), loc.column()))
        }
        None => (None, plain),
    }
}

/// A map whose values may be YAML strings, numbers or booleans, all kept as
/// strings (for `kafka.options`).
fn deserialize_scalar_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let raw = BTreeMap::<String, ScalarString>::deserialize(d)?;
    Ok(raw.into_iter().map(|(k, v)| (k, v.0)).collect())
}

struct ScalarString(String);

impl<'de> Deserialize<'de> for ScalarString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarStringVisitor).map(ScalarString)
    }
}

struct ScalarStringVisitor;

impl Visitor<'_> for ScalarStringVisitor {
    type Value = String;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string, number or boolean")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<String, E> {
        Ok(v.to_string())
    }
}
