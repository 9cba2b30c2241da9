//! Notify: retraining webhooks, email and Alertmanager, delivered exactly
//! when they must be.
//!
//! - [`spec`] — typed notifier settings (checked with the config) and the
//!   exact request each receiver documents (GitHub, GitLab, Jenkins,
//!   Airflow, Argo, Kubeflow, Slack, Alertmanager, generic webhooks with an
//!   HMAC signature, email). Pure.
//! - [`outbox`] — the durable queue: a file per pending notification.
//! - [`deliver`] — the tasks that send, with a per-notifier concurrency
//!   limit, retry classification and backoff with full jitter, counters and
//!   audit lines.
//!
//! Architecture invariant: notify (with the Kafka source and the HTTP API)
//! is the only stage that talks to the network.

pub mod deliver;
pub mod outbox;
pub mod spec;

pub use deliver::{Dispatcher, RetryPolicy};
pub use spec::Notification;

use crate::config::Config;
use crate::config::notifiers::NotifierSpec;

/// Every configured notifier, checked; errors name notifier and setting.
pub fn notifier_specs(config: &Config) -> Result<Vec<NotifierSpec>, Vec<String>> {
    let mut specs = Vec::new();
    let mut errors = Vec::new();
    for (name, notifier) in &config.notifiers {
        match NotifierSpec::from_config(name, notifier) {
            Ok(spec) => specs.push(spec),
            Err(mut e) => errors.append(&mut e),
        }
    }
    if errors.is_empty() { Ok(specs) } else { Err(errors) }
}

/// Starts the notification stage for `config`: its outbox in
/// `<state.dir>/outbox` (memory only without a state dir) and delivery.
pub fn start(
    config: &Config,
    audit: Option<std::sync::Arc<std::sync::Mutex<crate::output::alerts::AuditLog>>>,
    telemetry: std::sync::Arc<crate::telemetry::Telemetry>,
) -> Result<Dispatcher, String> {
    let specs = notifier_specs(config).map_err(|e| e.join("\n"))?;
    let dir = config.state.dir.as_ref().map(|d| d.join("outbox"));
    let outbox = outbox::Outbox::open(dir.as_deref(), config.delivery.max_pending)
        .map_err(|e| format!("opening the outbox: {e}"))?;
    let retry = RetryPolicy {
        initial: config.delivery.retry_initial,
        max: config.delivery.retry_max,
        max_attempts: config.delivery.max_attempts,
    };
    Dispatcher::start(specs, outbox, audit, telemetry, retry).map_err(|e| format!("starting delivery: {e}"))
}
