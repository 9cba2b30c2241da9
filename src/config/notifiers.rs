//! Typed notifier settings: `notifiers:` in `driftwatch.yaml` gives each
//! notifier a `type` and settings; [`NotifierSpec::from_config`] checks
//! them when the config loads (every problem named with the notifier and
//! key: required and unknown settings, templates, URLs, durations) and
//! keeps them typed. The requests a notifier makes from its settings are
//! built in `notify/spec.rs` (`NotifierSpec::request`). Pure.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use super::NotifierConfig;
use crate::template::{compiled_template_problems, template_env, url_template_env};

/// SMTP settings of an `email` notifier. (`Debug` redacts the password.)
#[derive(Clone, PartialEq)]
pub struct SmtpSettings {
    /// `smtp://host:port` (STARTTLS when offered... see `tls`), `smtps://`
    /// (implicit TLS).
    pub url: String,
    /// `starttls` (required), `opportunistic`, `none` or `implicit`.
    pub tls: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub from: String,
    pub to: Vec<String>,
}

impl std::fmt::Debug for SmtpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpSettings")
            .field("tls", &self.tls)
            .field("from", &self.from)
            .field("to", &self.to)
            .field("password", &self.password.as_ref().map(|_| super::redact::REDACTED))
            .finish_non_exhaustive()
    }
}

/// A checked notifier. (`Debug` shows no settings: they hold secrets.)
#[derive(Clone)]
pub struct NotifierSpec {
    pub name: String,
    pub kind: String,
    pub timeout: Duration,
    /// Most deliveries in flight at once for this notifier.
    pub concurrency: usize,
    /// Whether `resolved` transitions are sent (triggers default to no).
    pub send_resolved: bool,
    /// The settings as written (the request side renders them).
    pub(crate) settings: BTreeMap<String, Value>,
    /// Email notifiers' SMTP settings.
    pub smtp: Option<SmtpSettings>,
    /// Alertmanager: how often firing alerts are sent again, so
    /// Alertmanager does not resolve them by its `resolve_timeout`.
    pub resend_interval: Option<Duration>,
}

impl std::fmt::Debug for NotifierSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotifierSpec")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("timeout", &self.timeout)
            .field("concurrency", &self.concurrency)
            .field("send_resolved", &self.send_resolved)
            .finish_non_exhaustive()
    }
}

/// Default Alertmanager re-send interval (its `resolve_timeout` is 5m).
pub const DEFAULT_RESEND_INTERVAL: Duration = Duration::from_secs(60);

/// Default per-request timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest per-request timeout accepted.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// Default deliveries in flight per notifier.
pub const DEFAULT_CONCURRENCY: usize = 4;
/// The most `concurrency` a notifier accepts: each delivery in flight holds
/// a connection and a task.
pub const MAX_CONCURRENCY: usize = 64;

/// Settings each type requires, and those it may have (beyond the common
/// `timeout`, `concurrency`, `send_resolved`).
fn keys(kind: &str) -> (&'static [&'static str], &'static [&'static str]) {
    match kind {
        "webhook" => (&["url"], &["method", "headers", "body", "secret"]),
        "github_dispatch" => (&["repo", "token", "event_type"], &["api_url", "client_payload"]),
        "github_workflow" => (&["repo", "workflow", "token"], &["ref", "inputs", "api_url"]),
        "gitlab_trigger" => (&["project", "token"], &["ref", "variables", "url"]),
        "jenkins" => (&["url", "job"], &["user", "api_token", "token", "parameters"]),
        "airflow_dag" => (&["url", "dag_id"], &["username", "password", "token", "conf", "api_version"]),
        "argo_workflow" => (&["url", "namespace", "workflow_template"], &["token", "parameters"]),
        "kubeflow_run" => (&["url", "pipeline_id"], &["pipeline_version_id", "experiment_id", "token", "parameters"]),
        "email" => (&["smtp", "from", "to"], &["username", "password", "tls", "subject"]),
        "alertmanager" => (&["url"], &["generator_url", "resend_interval"]),
        "slack" => (&["webhook_url"], &["text"]),
        _ => (&[], &[]),
    }
}

const COMMON: &[&str] = &["timeout", "concurrency", "send_resolved"];

/// Settings that take a map or a list; every other one is a single string.
const STRUCTURED_SETTINGS: &[&str] =
    &["headers", "body", "client_payload", "inputs", "variables", "parameters", "conf", "to"];

/// A URL template's scheme and host (and port, and userinfo) must be
/// literal text, so no value can choose where a request goes: the first
/// template tag must come after the authority has ended (at `/`, `?` or `#`).
fn url_authority_is_literal(template: &str) -> bool {
    let Some(first_tag) = ["{{", "{%", "{#"].iter().filter_map(|tag| template.find(tag)).min() else {
        return true;
    };
    let literal = &template[..first_tag];
    literal.find("://").is_some_and(|i| literal[i + 3..].contains(['/', '?', '#']))
}

/// The settings of a notifier type that are URLs requests go to (or, for
/// `generator_url`, that receivers link to).
fn url_settings(kind: &str) -> &'static [&'static str] {
    match kind {
        "webhook" | "gitlab_trigger" | "jenkins" | "airflow_dag" | "argo_workflow" | "kubeflow_run" => &["url"],
        "github_dispatch" | "github_workflow" => &["api_url"],
        "alertmanager" => &["url", "generator_url"],
        "slack" => &["webhook_url"],
        _ => &[],
    }
}

/// Checks that a URL setting is an absolute `http://` or `https://` URL
/// with a host, so a mistake is found when the config loads, not as a
/// "builder error" at the first delivery. A `template` (a webhook's `url`)
/// is checked as rendered with placeholder values. The problem never
/// quotes the URL: it may hold a credential (a Slack webhook's path, a
/// password, a token in the query).
fn check_url(url: &str, template: bool) -> Result<(), String> {
    let rendered = if template {
        let placeholders = minijinja::Value::from_serialize(json!({
            "alert": "a", "state": "firing", "fingerprint": "f", "model": "m", "model_version": "v",
            "segment": "s", "feature": "f", "window_start": "t", "window_end": "t", "value": 1,
            "labels": {}, "annotations": {}, "summary": "s", "idempotency_key": "k",
        }));
        match url_template_env().render_str(url, placeholders) {
            Ok(rendered) => rendered,
            // Reported by the template check.
            Err(_) => return Ok(()),
        }
    } else {
        url.to_string()
    };
    let hint = "write it as http://HOST[:PORT]/… or https://HOST[:PORT]/…";
    // Without `://` there is no scheme (`localhost:9093` would otherwise
    // parse as the scheme `localhost`).
    if !rendered.contains("://") {
        return Err(format!("the URL has no scheme; {hint}"));
    }
    let parsed = match reqwest::Url::parse(rendered.trim()) {
        Ok(parsed) => parsed,
        Err(e) => return Err(format!("not a valid URL ({e}); {hint}")),
    };
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "the URL must start with http:// or https:// (it starts with \"{}:\"); {hint}",
            crate::text::shorten_long_tokens(parsed.scheme())
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("the URL has no host; {hint}"));
    }
    Ok(())
}

/// The variables notifier templates are rendered with
/// (`NotifierSpec::request`, in `notify/spec.rs`).
const TEMPLATE_VARIABLES: &[&str] = &[
    "alert",
    "state",
    "fingerprint",
    "model",
    "model_version",
    "segment",
    "feature",
    "window_start",
    "window_end",
    "value",
    "labels",
    "annotations",
    "summary",
    "idempotency_key",
    "transition",
    "transitions",
    "features",
    "count",
];

/// Every string leaf of a settings value must be a valid template, using
/// only the variables and filters there are (an unknown variable would
/// render as nothing in every notification).
fn check_templates(value: &Value, path: &str, errors: &mut Vec<String>) {
    match value {
        Value::String(s) => {
            let environment = template_env();
            match environment.template_from_str(s) {
                Ok(template) => {
                    for problem in compiled_template_problems(&environment, &template, TEMPLATE_VARIABLES) {
                        errors.push(format!("{path}: {problem}"));
                    }
                }
                Err(e) => errors.push(format!("{path}: template error: {}", e.detail().unwrap_or(&e.to_string()))),
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                check_templates(item, &format!("{path}[{i}]"), errors);
            }
        }
        Value::Object(map) => {
            for (k, v) in map {
                check_templates(v, &format!("{path}.{k}"), errors);
            }
        }
        _ => {}
    }
}

impl NotifierSpec {
    /// Checks a notifier's settings; errors name the notifier and key.
    pub fn from_config(name: &str, config: &NotifierConfig) -> Result<NotifierSpec, Vec<String>> {
        let kind = config.kind.as_str();
        let mut errors = Vec::new();
        let (required, optional) = keys(kind);
        if required.is_empty() {
            return Err(vec![format!("notifiers.{name}.type: unknown notifier type {kind:?}")]);
        }
        for key in required {
            match config.settings.get(*key) {
                None | Some(Value::Null) => errors.push(format!("notifiers.{name}.{key}: required for type {kind}")),
                Some(Value::String(s)) if s.trim().is_empty() => {
                    errors.push(format!("notifiers.{name}.{key}: must not be empty"))
                }
                _ => {}
            }
        }
        for key in config.settings.keys() {
            if !required.contains(&key.as_str()) && !optional.contains(&key.as_str()) && !COMMON.contains(&key.as_str())
            {
                let mut known: Vec<&str> = required.iter().chain(optional).chain(COMMON).copied().collect();
                known.sort();
                errors.push(format!(
                    "notifiers.{name}.{key}: unknown setting for type {kind} (known: {})",
                    known.join(", ")
                ));
            }
        }
        for (key, value) in &config.settings {
            // A mistyped credential must not silently turn signing or
            // authentication off; the value itself is never quoted.
            if !STRUCTURED_SETTINGS.contains(&key.as_str())
                && !COMMON.contains(&key.as_str())
                && !matches!(value, Value::String(_) | Value::Number(_) | Value::Bool(_) | Value::Null)
            {
                errors.push(format!("notifiers.{name}.{key}: expected a string"));
                continue;
            }
            check_templates(value, &format!("notifiers.{name}.{key}"), &mut errors);
        }
        if kind == "webhook"
            && let Some(Value::String(url)) = config.settings.get("url")
            && !url_authority_is_literal(url)
        {
            errors.push(format!(
                "notifiers.{name}.url: the scheme and host must be literal text (`${{ENV}}` is fine); \
                 templates may fill in the path and query only"
            ));
        }
        for key in url_settings(kind) {
            if let Some(Value::String(url)) = config.settings.get(*key)
                && !url.trim().is_empty()
                && let Err(problem) = check_url(url, *key == "url" && kind == "webhook")
            {
                errors.push(format!("notifiers.{name}.{key}: {problem}"));
            }
        }
        let timeout = match config.settings.get("timeout") {
            None => DEFAULT_TIMEOUT,
            Some(Value::String(s)) => match humantime::parse_duration(s) {
                Ok(d) if d > Duration::ZERO && d <= MAX_TIMEOUT => d,
                Ok(_) => {
                    errors.push(format!("notifiers.{name}.timeout: must be more than 0 and at most 1h (got {s:?})"));
                    DEFAULT_TIMEOUT
                }
                Err(e) => {
                    errors.push(format!("notifiers.{name}.timeout: {s:?}: {e}"));
                    DEFAULT_TIMEOUT
                }
            },
            Some(other) => {
                errors.push(format!("notifiers.{name}.timeout: expected a duration such as \"10s\", got {other}"));
                DEFAULT_TIMEOUT
            }
        };
        let concurrency = match config.settings.get("concurrency") {
            None => DEFAULT_CONCURRENCY,
            Some(v) => match v.as_u64().or_else(|| v.as_str().and_then(|s| s.parse().ok())) {
                Some(n) if (1..=MAX_CONCURRENCY as u64).contains(&n) => n as usize,
                _ => {
                    errors.push(format!(
                        "notifiers.{name}.concurrency: expected a whole number from 1 to {MAX_CONCURRENCY}, got {v}"
                    ));
                    DEFAULT_CONCURRENCY
                }
            },
        };
        let triggers = matches!(
            kind,
            "github_dispatch"
                | "github_workflow"
                | "gitlab_trigger"
                | "jenkins"
                | "airflow_dag"
                | "argo_workflow"
                | "kubeflow_run"
        );
        let send_resolved = match config.settings.get("send_resolved") {
            None => !triggers,
            Some(v) => match v.as_bool().or_else(|| v.as_str().and_then(|s| s.parse().ok())) {
                Some(b) => b,
                None => {
                    errors.push(format!("notifiers.{name}.send_resolved: expected true or false, got {v}"));
                    !triggers
                }
            },
        };
        let text = |key: &str| {
            config.settings.get(key).and_then(|v| match v {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
        };
        let smtp = if kind == "email" {
            let to: Vec<String> = match config.settings.get("to") {
                Some(Value::Array(items)) => items.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
                Some(Value::String(s)) => {
                    s.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
                }
                _ => Vec::new(),
            };
            if to.is_empty() && config.settings.contains_key("to") {
                errors.push(format!("notifiers.{name}.to: expected a list of addresses"));
            }
            let url = text("smtp").unwrap_or_default();
            let default_tls = if url.starts_with("smtps://") { "implicit" } else { "starttls" };
            let tls = text("tls").unwrap_or_else(|| default_tls.to_string());
            if !["starttls", "opportunistic", "none", "implicit"].contains(&tls.as_str()) {
                errors
                    .push(format!("notifiers.{name}.tls: use starttls, opportunistic, none or implicit (got {tls:?})"));
            }
            if !(url.starts_with("smtp://") || url.starts_with("smtps://") || url.is_empty()) {
                errors.push(format!("notifiers.{name}.smtp: expected smtp://host:port or smtps://host:port"));
            }
            // Credentials may also come as the URL's userinfo (smtp://user:pass@host:587).
            let userinfo = url.split_once("://").and_then(|(_, rest)| rest.rsplit_once('@')).map(|(info, _)| {
                info.split_once(':').map_or((info.to_string(), None), |(u, p)| (u.to_string(), Some(p.to_string())))
            });
            let username = text("username").or_else(|| userinfo.as_ref().map(|(u, _)| u.clone()));
            let password = text("password").or_else(|| userinfo.and_then(|(_, p)| p));
            Some(SmtpSettings { url, tls, username, password, from: text("from").unwrap_or_default(), to })
        } else {
            None
        };
        let resend_interval = if kind == "alertmanager" {
            match config.settings.get("resend_interval") {
                None => Some(DEFAULT_RESEND_INTERVAL),
                Some(Value::String(s)) => match humantime::parse_duration(s) {
                    Ok(d) if !d.is_zero() && d <= super::MAX_DURATION => Some(d),
                    _ => {
                        errors
                            .push(format!("notifiers.{name}.resend_interval: expected a positive duration, got {s:?}"));
                        None
                    }
                },
                Some(other) => {
                    errors.push(format!(
                        "notifiers.{name}.resend_interval: expected a duration such as \"1m\", got {other}"
                    ));
                    None
                }
            }
        } else {
            None
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(NotifierSpec {
            resend_interval,
            name: name.to_string(),
            kind: kind.to_string(),
            timeout,
            concurrency,
            send_resolved,
            settings: config.settings.clone(),
            smtp,
        })
    }
}
