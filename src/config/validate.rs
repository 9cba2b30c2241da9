//! Semantic checks of a parsed config; every problem is reported at once.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{Config, NOTIFIER_TYPES, parse_json_pointer};

/// librdkafka properties that driftwatch sets from typed keys.
const MANAGED_KAFKA_OPTIONS: &[(&str, &str)] = &[
    ("bootstrap.servers", "kafka.brokers"),
    ("metadata.broker.list", "kafka.brokers"),
    ("group.id", "kafka.group_id"),
];

impl Config {
    /// `cluster:` needs Kafka, a topic of its own, a positive interval and
    /// records of at least 64 KB.
    fn check_cluster(&self, cluster: &super::ClusterConfig, errors: &mut Vec<String>) {
        if self.kafka.is_none() {
            errors.push("cluster: needs a kafka section (instances merge through Kafka)".to_string());
        }
        if cluster.partials_topic.trim().is_empty() {
            errors.push("cluster.partials_topic: empty".to_string());
        } else if let Some(kafka) = &self.kafka
            && [&kafka.predictions_topic, &kafka.labels_topic].contains(&&cluster.partials_topic)
        {
            errors.push(format!("cluster.partials_topic: {:?} is an input topic", cluster.partials_topic));
        }
        if cluster.publish_interval.is_zero() {
            errors.push("cluster.publish_interval: must be positive".to_string());
        }
        if cluster.max_record_bytes < 64 * 1024 {
            errors.push(format!("cluster.max_record_bytes: at least 64KB (got {})", cluster.max_record_bytes));
        }
    }

    /// Checks everything the types cannot express and returns every problem
    /// found, each starting with its field path, e.g.
    /// `models[1].fields.score: not a JSON Pointer (must start with '/')`.
    ///
    /// Checks: at least one model; model names non-empty and unique; window
    /// size and slide > 0, whole milliseconds, slide <= size, size a whole
    /// multiple of slide; field paths valid, non-empty JSON Pointers; pipeline
    /// sizes and caps >= 1; Kafka brokers, group id and topics non-empty, the
    /// dead-letter topic distinct from the input topics, no option that
    /// duplicates a typed key; notifier names non-empty and types known;
    /// `http.listen` of the form `host:port`, `http.token` non-empty; rule
    /// patterns valid globs. The file system is not consulted.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut errors = Vec::new();
        // In the order of the keys in the file.
        self.check_kafka(&mut errors);
        self.check_windows(&mut errors);
        self.check_pipeline(&mut errors);
        self.check_models(&mut errors);
        if !(self.drift.alpha > 0.0 && self.drift.alpha < 0.5) {
            errors.push(format!("drift.alpha: {} is not in (0, 0.5)", self.drift.alpha));
        }
        for (i, pattern) in self.rules.iter().enumerate() {
            if pattern.trim().is_empty() {
                errors.push(format!("rules[{i}]: empty pattern"));
            } else if let Err(e) = glob::Pattern::new(pattern) {
                errors.push(format!("rules[{i}]: invalid glob pattern {pattern:?}: {e}"));
            }
        }
        check_range(
            "alerting.history_max_rows",
            self.alerting.history_max_rows,
            super::MAX_ALERTING_HISTORY_ROWS,
            &mut errors,
        );
        self.check_notifiers(&mut errors);
        self.check_http(&mut errors);
        // Every duration is bounded so that time arithmetic cannot overflow.
        let mut durations = vec![
            ("windows.size", self.windows.size),
            ("windows.slide", self.windows.slide),
            ("windows.allowed_lateness", self.windows.allowed_lateness),
            ("windows.label_horizon", self.windows.label_horizon),
            ("windows.idle_timeout", self.windows.idle_timeout),
            ("pipeline.linger", self.pipeline.linger),
            ("pipeline.max_future_skew", self.pipeline.max_future_skew),
            ("pipeline.shutdown_timeout", self.pipeline.shutdown_timeout),
            ("state.checkpoint_interval", self.state.checkpoint_interval),
            ("alerting.history", self.alerting.history),
            ("alerting.evaluation_interval", self.alerting.evaluation_interval),
            ("delivery.retry_initial", self.delivery.retry_initial),
            ("delivery.retry_max", self.delivery.retry_max),
        ];
        if let Some(otlp) = &self.otlp {
            durations.extend([("otlp.interval", otlp.interval), ("otlp.timeout", otlp.timeout)]);
        }
        if let Some(cluster) = &self.cluster {
            durations.push(("cluster.publish_interval", cluster.publish_interval));
            self.check_cluster(cluster, &mut errors);
        }
        for (path, d) in durations {
            if d > super::MAX_DURATION {
                errors.push(format!("{path}: at most 100 years (got {})", humantime::format_duration(d)));
            }
        }
        if self.state.checkpoint_interval.is_zero() {
            errors.push("state.checkpoint_interval: must be positive".to_string());
        }
        if self.pipeline.shutdown_timeout.is_zero() {
            errors.push("pipeline.shutdown_timeout: must be positive".to_string());
        }
        if let Some(otlp) = &self.otlp {
            if !(otlp.endpoint.starts_with("http://") || otlp.endpoint.starts_with("https://")) {
                errors.push(format!("otlp.endpoint: expected an http:// or https:// URL, got {:?}", otlp.endpoint));
            }
            if otlp.interval.is_zero() || otlp.timeout.is_zero() {
                errors.push("otlp: interval and timeout must be positive".to_string());
            }
            for name in otlp.headers.keys() {
                if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                    errors.push(format!("otlp.headers.{name}: not a valid header name"));
                }
            }
            if !otlp.metrics && !otlp.traces {
                errors.push("otlp: metrics and traces are both off; remove the section instead".to_string());
            }
        }
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }

    fn check_models(&self, errors: &mut Vec<String>) {
        if self.models.is_empty() {
            errors.push("models: at least one model is required".to_string());
        }
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, model) in self.models.iter().enumerate() {
            if model.name.trim().is_empty() {
                errors.push(format!("models[{i}].name: must not be empty"));
            } else if model.name.len() > super::MAX_NAME_BYTES {
                errors.push(format!(
                    "models[{i}].name: {} bytes long; the limit is {} (it is a metric label and a key)",
                    model.name.len(),
                    super::MAX_NAME_BYTES
                ));
            } else if let Some(first) = seen.get(model.name.as_str()) {
                errors.push(format!(
                    "models[{i}].name: duplicate model name {:?} (already used by models[{first}])",
                    model.name
                ));
            } else {
                seen.insert(&model.name, i);
            }
            if model.baseline.as_ref().is_some_and(|b| b.as_os_str().is_empty()) {
                errors.push(format!("models[{i}].baseline: must not be empty"));
            }
            check_binary_classes(i, model, errors);
            check_shadow_versions(i, model, errors);
            for (key, pointer) in model.fields.entries() {
                if pointer.is_empty() {
                    errors.push(format!("models[{i}].fields.{key}: must not be empty (\"\" would be the whole event)"));
                } else if let Err(e) = parse_json_pointer(pointer) {
                    errors.push(format!("models[{i}].fields.{key}: {e}"));
                }
            }
        }
    }

    fn check_windows(&self, errors: &mut Vec<String>) {
        let w = &self.windows;
        let size_ok = check_window_duration("windows.size", w.size, errors);
        let slide_ok = check_window_duration("windows.slide", w.slide, errors);
        if size_ok && slide_ok {
            if w.slide > w.size {
                errors.push(format!(
                    "windows.slide: must not be longer than windows.size ({} > {})",
                    humantime::format_duration(w.slide),
                    humantime::format_duration(w.size)
                ));
            } else if !w.size.as_millis().is_multiple_of(w.slide.as_millis()) {
                errors.push(format!(
                    "windows.size: must be a whole multiple of windows.slide ({} is not a multiple of {})",
                    humantime::format_duration(w.size),
                    humantime::format_duration(w.slide)
                ));
            } else if w.size.as_millis() / w.slide.as_millis() > super::MAX_WINDOWS_PER_EVENT as u128 {
                errors.push(format!(
                    "windows.slide: every event would fall into {} windows ({} / {}); at most {} are allowed",
                    w.size.as_millis() / w.slide.as_millis(),
                    humantime::format_duration(w.size),
                    humantime::format_duration(w.slide),
                    super::MAX_WINDOWS_PER_EVENT
                ));
            }
        }
        // allowed_lateness and label_horizon are unsigned durations: >= 0 by
        // construction (negative values are rejected while parsing).
    }

    fn check_pipeline(&self, errors: &mut Vec<String>) {
        let p = &self.pipeline;
        for (key, value) in [
            ("batch_size", p.batch_size),
            ("max_pending_joins", p.max_pending_joins),
            ("max_features_per_model", p.max_features_per_model),
            ("max_segments_per_model", p.max_segments_per_model),
            ("max_categories_per_feature", p.max_categories_per_feature),
            ("max_message_bytes", p.max_message_bytes),
        ] {
            if value < 1 {
                errors.push(format!("pipeline.{key}: must be at least 1"));
            }
        }
        check_range("pipeline.max_versions_per_model", p.max_versions_per_model, super::MAX_VERSIONS_PER_MODEL, errors);
        if p.lanes_setting == Some(0) {
            errors.push("pipeline.lanes: must be at least 1".to_string());
        }
    }

    fn check_kafka(&self, errors: &mut Vec<String>) {
        let Some(k) = &self.kafka else { return };
        if k.brokers.split(',').all(|b| b.trim().is_empty()) {
            errors.push("kafka.brokers: must not be empty".to_string());
        }
        for (key, value) in
            [("group_id", &k.group_id), ("predictions_topic", &k.predictions_topic), ("labels_topic", &k.labels_topic)]
        {
            if value.trim().is_empty() {
                errors.push(format!("kafka.{key}: must not be empty"));
            }
        }
        if let Some(dlq) = &k.dead_letter_topic {
            if dlq.trim().is_empty() {
                errors.push("kafka.dead_letter_topic: must not be empty when given".to_string());
            } else if dlq == &k.predictions_topic || dlq == &k.labels_topic {
                errors.push(format!(
                    "kafka.dead_letter_topic: must differ from the predictions and labels topics ({dlq:?})"
                ));
            }
        }
        for key in k.options.keys() {
            if key.trim().is_empty() {
                errors.push("kafka.options: empty option name".to_string());
            }
            if let Some((_, typed)) = MANAGED_KAFKA_OPTIONS.iter().find(|(o, _)| o == key) {
                errors.push(format!("kafka.options.{key}: set {typed} instead"));
            }
        }
    }

    fn check_notifiers(&self, errors: &mut Vec<String>) {
        for (name, notifier) in &self.notifiers {
            if name.trim().is_empty() {
                errors.push("notifiers: notifier names must not be empty".to_string());
            }
            if !NOTIFIER_TYPES.contains(&notifier.kind.as_str()) {
                errors.push(format!(
                    "notifiers.{name}.type: unknown notifier type {:?} (expected one of {})",
                    notifier.kind,
                    NOTIFIER_TYPES.join(", ")
                ));
                continue;
            }
            // The per-type settings (required, unknown, templates, values).
            if let Err(mut problems) = super::notifiers::NotifierSpec::from_config(name, notifier) {
                errors.append(&mut problems);
            }
        }
        if self.delivery.max_attempts == 0 {
            errors.push("delivery.max_attempts: must be at least 1".to_string());
        }
        if self.delivery.max_pending == 0 {
            errors.push("delivery.max_pending: must be at least 1".to_string());
        }
        if self.delivery.retry_initial.is_zero() || self.delivery.retry_max < self.delivery.retry_initial {
            errors.push("delivery: retry_initial must be positive and not above retry_max".to_string());
        }
    }

    fn check_http(&self, errors: &mut Vec<String>) {
        let listen = &self.http.listen;
        let valid = listen.parse::<std::net::SocketAddr>().is_ok()
            || listen
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && !host.contains(':') && port.parse::<u16>().is_ok());
        if !valid {
            errors.push(format!("http.listen: expected host:port (e.g. 127.0.0.1:9464), got {listen:?}"));
        }
        if self.http.token.as_ref().is_some_and(|t| t.expose().trim().is_empty()) {
            errors.push("http.token: must not be empty when given".to_string());
        }
    }
}

/// A count that must lie in `1..=max`.
fn check_range(path: &str, value: usize, max: usize, errors: &mut Vec<String>) {
    if !(1..=max).contains(&value) {
        errors.push(format!("{path}: must be from 1 to {max} (got {value})"));
    }
}

fn check_window_duration(path: &str, d: Duration, errors: &mut Vec<String>) -> bool {
    if d.is_zero() {
        errors.push(format!("{path}: must be greater than 0"));
        false
    } else if !d.subsec_nanos().is_multiple_of(1_000_000) {
        errors.push(format!("{path}: must be a whole number of milliseconds (got {})", humantime::format_duration(d)));
        false
    } else {
        true
    }
}

/// `models[i].shadow_versions`: a few distinct, non-empty version names no
/// longer than a version may be in an event, and not the overflow version.
fn check_shadow_versions(i: usize, model: &super::ModelConfig, errors: &mut Vec<String>) {
    let versions = &model.shadow_versions;
    if versions.len() > super::MAX_SHADOW_VERSIONS {
        errors.push(format!(
            "models[{i}].shadow_versions: {} versions; the limit is {} (each keeps a join of its own)",
            versions.len(),
            super::MAX_SHADOW_VERSIONS
        ));
    }
    for (k, version) in versions.iter().enumerate() {
        if version.is_empty() {
            errors.push(format!("models[{i}].shadow_versions[{k}]: must not be empty"));
        } else if version.len() > super::MAX_EVENT_NAME_BYTES {
            errors.push(format!(
                "models[{i}].shadow_versions[{k}]: {} bytes long; the limit is {} (a longer model_version is \
                 rejected in events)",
                version.len(),
                super::MAX_EVENT_NAME_BYTES
            ));
        } else if version == super::OVERFLOW_VERSION {
            errors.push(format!(
                "models[{i}].shadow_versions[{k}]: {version:?} is where versions beyond \
                 pipeline.max_versions_per_model are filed, not a version"
            ));
        } else if let Some(first) = versions[..k].iter().position(|v| v == version) {
            errors.push(format!(
                "models[{i}].shadow_versions[{k}]: duplicate version {version:?} (already shadow_versions[{first}])"
            ));
        }
    }
}

/// `models[i].positive_class` / `negative_class`: binary models only, set
/// together, two different non-empty values no longer than a class label
/// may be in an event.
fn check_binary_classes(i: usize, model: &super::ModelConfig, errors: &mut Vec<String>) {
    let (positive, negative) = (&model.positive_class, &model.negative_class);
    if positive.is_none() && negative.is_none() {
        return;
    }
    if model.task != super::Task::BinaryClassification {
        let key = if positive.is_some() { "positive_class" } else { "negative_class" };
        errors.push(format!(
            "models[{i}].{key}: only for task binary_classification (this model's task is {})",
            model.task
        ));
        return;
    }
    let (Some(positive), Some(negative)) = (positive, negative) else {
        let (given, missing) = if positive.is_some() {
            ("positive_class", "negative_class")
        } else {
            ("negative_class", "positive_class")
        };
        errors.push(format!(
            "models[{i}].{missing}: required with {given}: a binary model has exactly two classes and \
             driftwatch does not guess the other one"
        ));
        return;
    };
    for (key, value) in [("positive_class", positive), ("negative_class", negative)] {
        if value.is_empty() {
            errors.push(format!("models[{i}].{key}: must not be empty"));
        } else if value.len() > super::MAX_EVENT_NAME_BYTES {
            errors.push(format!(
                "models[{i}].{key}: {} bytes long; the limit is {} (a longer class label is rejected in events)",
                value.len(),
                super::MAX_EVENT_NAME_BYTES
            ));
        }
    }
    if positive == negative {
        errors
            .push(format!("models[{i}].negative_class: {negative:?} is also the positive_class; the two must differ"));
    }
}
