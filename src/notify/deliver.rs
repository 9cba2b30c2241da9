//! Delivery: every notification is queued in the outbox, then sent by a
//! task on the notify runtime, at most `concurrency` at a time per
//! notifier, retried with exponential backoff and full jitter while the
//! failure is retriable (connect errors, timeouts, 408, 429 — honouring
//! `Retry-After` —, 5xx, transient SMTP errors), and given up at once on
//! the others (4xx, permanent SMTP errors) or after `max_attempts`. Every
//! attempt is counted in `driftwatch_notifications_total{notifier,outcome}`
//! and written to the audit log. Errors never include URLs (a Jenkins
//! trigger token travels in the query string) or secrets. Redirects are
//! followed only within the request's origin, and at most 64 KiB of a
//! reply body is read.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use super::outbox::{Added, Outbox};
use super::spec::{Notification, Outgoing, OutgoingEmail, OutgoingRequest};
use crate::config::notifiers::{NotifierSpec, SmtpSettings};
use crate::output::alerts::AuditLog;
use crate::rules::AlertEvent;
use crate::telemetry::Telemetry;

/// Retry timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// First backoff ceiling; doubles per attempt.
    pub initial: Duration,
    /// Largest backoff ceiling.
    pub max: Duration,
    /// Attempts before giving up (`expired`).
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { initial: Duration::from_secs(1), max: Duration::from_secs(300), max_attempts: 12 }
    }
}

impl RetryPolicy {
    /// The longest one notification can take to be delivered or given up:
    /// every attempt running into `timeout`, every wait at its ceiling.
    pub fn budget(&self, timeout: Duration) -> Duration {
        (1..self.max_attempts.max(1))
            .map(|attempt| self.backoff(attempt, 1.0))
            .fold(timeout.saturating_mul(self.max_attempts.max(1)), Duration::saturating_add)
    }

    /// Full jitter: uniform in [0, min(max, initial · 2^(attempt−1))].
    fn backoff(&self, attempt: u32, random: f64) -> Duration {
        let ceiling = self.initial.saturating_mul(1u32 << attempt.saturating_sub(1).min(20)).min(self.max);
        ceiling.mul_f64(random.clamp(0.0, 1.0))
    }
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq)]
enum Attempt {
    Delivered(Option<u16>),
    /// Retriable; `after` from `Retry-After` when the receiver sent one.
    Retry {
        status: Option<u16>,
        error: String,
        after: Option<Duration>,
    },
    Failed {
        status: Option<u16>,
        error: String,
    },
}

/// The last queued delivery of a (notifier, rule, model): its sequence
/// number and its completion.
type Predecessor = (u64, tokio::sync::oneshot::Receiver<()>);

/// The configured notifiers and their concurrency limits, replaced as a
/// whole when the config is reloaded; a delivery uses the set it started
/// with.
struct Notifiers {
    specs: HashMap<String, NotifierSpec>,
    limits: HashMap<String, Arc<tokio::sync::Semaphore>>,
}

impl Notifiers {
    /// The set for `specs`, keeping the semaphore (and so the deliveries
    /// in flight it counts) of every notifier whose concurrency in
    /// `previous` is the same.
    fn new(specs: Vec<NotifierSpec>, previous: Option<&Notifiers>) -> Notifiers {
        let limits = specs
            .iter()
            .map(|spec| {
                let kept = previous.and_then(|previous| {
                    let same = previous.specs.get(&spec.name)?.concurrency == spec.concurrency;
                    same.then(|| previous.limits.get(&spec.name).cloned()).flatten()
                });
                let limit = kept.unwrap_or_else(|| Arc::new(tokio::sync::Semaphore::new(spec.concurrency)));
                (spec.name.clone(), limit)
            })
            .collect();
        Notifiers { specs: specs.into_iter().map(|s| (s.name.clone(), s)).collect(), limits }
    }
}

struct Shared {
    notifiers: Mutex<Arc<Notifiers>>,
    outbox: Mutex<Outbox>,
    audit: Option<Arc<Mutex<AuditLog>>>,
    telemetry: Arc<Telemetry>,
    client: reqwest::Client,
    retry: RetryPolicy,
    in_flight: AtomicUsize,
    seed: Mutex<crate::rng::Rng>,
    /// Per (notifier, rule, model): the completion of the last delivery
    /// queued, which the next one waits for, so a `resolved` never
    /// overtakes its `firing`. Tagged with a sequence number for cleanup.
    order: Mutex<HashMap<(String, String, String), Predecessor>>,
    sequence: AtomicUsize,
    /// Per notifier with a re-send interval: when it last re-sent.
    last_resend: Mutex<HashMap<String, Instant>>,
}

/// The notification stage: an outbox and the tasks delivering it.
pub struct Dispatcher {
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Dispatcher {
    /// Starts delivering: first whatever the outbox holds from before.
    pub fn start(
        specs: Vec<NotifierSpec>,
        outbox: Outbox,
        audit: Option<Arc<Mutex<AuditLog>>>,
        telemetry: Arc<Telemetry>,
        retry: RetryPolicy,
    ) -> std::io::Result<Dispatcher> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("driftwatch-notify")
            .enable_all()
            .build()?;
        let client = reqwest::Client::builder()
            .user_agent(concat!("driftwatch/", env!("CARGO_PKG_VERSION")))
            .redirect(same_origin_redirects())
            .build()
            .map_err(|e| std::io::Error::other(e.without_url().to_string()))?;
        let pending = outbox.pending();
        let shared = Arc::new(Shared {
            notifiers: Mutex::new(Arc::new(Notifiers::new(specs, None))),
            outbox: Mutex::new(outbox),
            audit,
            telemetry,
            client,
            retry,
            in_flight: AtomicUsize::new(0),
            order: Mutex::new(HashMap::new()),
            last_resend: Mutex::new(HashMap::new()),
            sequence: AtomicUsize::new(0),
            seed: Mutex::new(crate::rng::Rng::new(chrono::Utc::now().timestamp_nanos_opt().unwrap_or(1) as u64)),
        });
        let dispatcher = Dispatcher { shared, runtime: Some(runtime) };
        if !pending.is_empty() {
            tracing::info!(pending = pending.len(), "delivering notifications left in the outbox");
        }
        for notification in pending {
            dispatcher.spawn(notification);
        }
        Ok(dispatcher)
    }

    /// Queues the notifications of new transitions and starts delivering
    /// them: one per notifier and group of transitions (one rule and model
    /// to one state in one evaluation: [`super::spec::group_notifications`]).
    pub fn submit(&self, events: &[AlertEvent]) {
        let now = chrono::Utc::now().timestamp_millis();
        let notifications = super::spec::group_notifications(events.iter().map(|e| &e.transition), now);
        for notification in notifications {
            let added = self.shared.outbox.lock().expect("outbox lock").add(&notification);
            match added {
                Ok(Added::Queued) => self.spawn(notification),
                Ok(Added::Duplicate) => {}
                Ok(Added::Full) => {
                    tracing::error!(notifier = %notification.notifier, alert = %notification.transition.alert,
                        "outbox full: notification dropped");
                    self.shared.telemetry.notification(&notification.notifier, "dropped");
                }
                Err(error) => {
                    // Not durable, but still worth trying now.
                    tracing::error!(notifier = %notification.notifier, %error,
                        "writing the outbox failed; delivering from memory");
                    self.spawn(notification);
                }
            }
        }
    }

    /// Sends firing alerts again to notifiers that want it (Alertmanager,
    /// every `resend_interval`). `active`: the alerts pending or firing,
    /// with the notifiers their firing went to.
    pub fn resend_firing(&self, active: &[crate::rules::Transition]) {
        let now = Instant::now();
        let mut due = Vec::new();
        {
            let mut last = self.shared.last_resend.lock().expect("resend lock");
            for spec in self.shared.notifiers().specs.values() {
                let Some(interval) = spec.resend_interval else { continue };
                let entry = last.entry(spec.name.clone()).or_insert(now);
                if now.duration_since(*entry) >= interval {
                    *entry = now;
                    due.push(spec.name.clone());
                }
            }
        }
        let wall = chrono::Utc::now().timestamp_millis();
        // One request per notifier, rule and model, listing its firing alerts.
        let mut groups: std::collections::BTreeMap<(&str, &str, &str), Vec<crate::rules::Transition>> =
            std::collections::BTreeMap::new();
        for transition in active.iter().filter(|t| t.state == "firing") {
            for notifier in transition.notify.iter().filter(|n| due.contains(n)) {
                let key = (notifier.as_str(), transition.alert.as_str(), transition.model.as_str());
                groups.entry(key).or_default().push(transition.clone());
            }
        }
        for ((notifier, _, _), members) in groups {
            let mut notification = Notification::group(notifier, members, wall);
            // A distinct outbox entry per re-send.
            notification.id = format!("{}-{wall}", notification.id);
            if let Ok(Added::Queued) = self.shared.outbox.lock().expect("outbox lock").add(&notification) {
                self.spawn(notification);
            }
        }
    }

    /// How long delivering what is queued may take at most: the retry
    /// budget of one notification ([`RetryPolicy::budget`]) with the
    /// longest timeout of the notifiers.
    pub fn retry_budget(&self) -> Duration {
        let timeout = self
            .shared
            .notifiers()
            .specs
            .values()
            .map(|s| s.timeout)
            .max()
            .unwrap_or(crate::config::notifiers::DEFAULT_TIMEOUT);
        self.shared.retry.budget(timeout)
    }

    /// Notifications given up so far (`failed`, `expired` or `dropped`).
    pub fn given_up(&self) -> u64 {
        let notifications = self.shared.telemetry.notifications();
        notifications
            .iter()
            .filter(|((_, outcome), _)| matches!(outcome.as_str(), "failed" | "expired" | "dropped"))
            .map(|(_, n)| n)
            .sum()
    }

    /// Replaces the notifiers (a reloaded config): notifications queued
    /// from now on, and those waiting in the outbox, use the new set;
    /// deliveries already under way finish with the settings they started
    /// with.
    pub fn replace_notifiers(&self, specs: Vec<NotifierSpec>) {
        let mut notifiers = self.shared.notifiers.lock().expect("notifiers lock");
        let replaced = Arc::new(Notifiers::new(specs, Some(&notifiers)));
        *notifiers = replaced;
    }

    /// The names of the notifiers in force, sorted.
    pub fn notifier_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.shared.notifiers().specs.keys().cloned().collect();
        names.sort();
        names
    }

    /// Notifications not yet delivered or given up.
    pub fn pending(&self) -> usize {
        self.shared.outbox.lock().expect("outbox lock").len()
    }

    /// Waits until nothing is in flight (or `timeout`); true when idle.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.shared.in_flight.load(Ordering::SeqCst) > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    fn spawn(&self, notification: Notification) {
        let shared = self.shared.clone();
        shared.in_flight.fetch_add(1, Ordering::SeqCst);
        // Deliveries of one rule and model to one notifier go in order.
        let key = notification.order_key();
        let sequence = shared.sequence.fetch_add(1, Ordering::SeqCst) as u64;
        let (done, completion) = tokio::sync::oneshot::channel();
        let previous = shared.order.lock().expect("order lock").insert(key.clone(), (sequence, completion));
        // A child of the span that queued it (the window close that made the
        // transition, in traces), or a root of its own after a restart.
        let span = tracing::info_span!(
            "notify_deliver",
            notifier = %notification.notifier,
            alert = %notification.transition.alert,
            state = %notification.transition.state,
            idempotency_key = %notification.idempotency_key,
        );
        if let Some(runtime) = &self.runtime {
            use tracing::Instrument;
            runtime.spawn(async move {
                if let Some((_, previous)) = previous {
                    let _ = previous.await;
                }
                deliver(&shared, notification).instrument(span).await;
                let _ = done.send(());
                let mut order = shared.order.lock().expect("order lock");
                if order.get(&key).is_some_and(|(s, _)| *s == sequence) {
                    order.remove(&key);
                }
                drop(order);
                shared.in_flight.fetch_sub(1, Ordering::SeqCst);
            });
        }
    }
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            // Pending deliveries stay in the outbox for the next start.
            runtime.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

impl Shared {
    /// The notifiers in force (the lock is released on return).
    fn notifiers(&self) -> Arc<Notifiers> {
        Arc::clone(&self.notifiers.lock().expect("notifiers lock"))
    }
}

fn audit_attempt(shared: &Shared, n: &Notification, outcome: &str, status: Option<u16>, error: Option<&str>) {
    let Some(audit) = &shared.audit else { return };
    let record = json!({
        "logged_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "kind": "notification_attempt",
        "notifier": n.notifier,
        "idempotency_key": n.idempotency_key,
        "alert": n.transition.alert,
        "state": n.transition.state,
        "fingerprint": n.transition.fingerprint,
        "fingerprints": n.members().iter().map(|t| t.fingerprint.as_str()).collect::<Vec<_>>(),
        "model": n.transition.model,
        "attempt": n.attempts,
        "outcome": outcome,
        "status": status,
        "error": error,
    });
    if let Err(e) = audit.lock().expect("audit lock").write_record(&record) {
        tracing::warn!(error = %e, "writing the audit log failed");
    }
}

async fn deliver(shared: &Shared, mut n: Notification) {
    let notifiers = shared.notifiers();
    let Some(spec) = notifiers.specs.get(&n.notifier) else {
        tracing::error!(notifier = %n.notifier, "notification for an unknown notifier dropped");
        let _ = shared.outbox.lock().expect("outbox lock").remove(&n.id);
        return;
    };
    let outgoing = match spec.request(&n) {
        Ok(Outgoing::Skip) => {
            shared.telemetry.notification(&n.notifier, "skipped");
            let _ = shared.outbox.lock().expect("outbox lock").remove(&n.id);
            return;
        }
        Ok(outgoing) => outgoing,
        Err(error) => {
            tracing::error!(notifier = %n.notifier, %error, "notification could not be rendered");
            shared.telemetry.notification(&n.notifier, "failed");
            audit_attempt(shared, &n, "failed", None, Some(&error));
            let _ = shared.outbox.lock().expect("outbox lock").remove(&n.id);
            return;
        }
    };
    let limit = notifiers.limits.get(&n.notifier).cloned();
    loop {
        n.attempts += 1;
        let _ = shared.outbox.lock().expect("outbox lock").update(&n);
        let result = {
            let _permit = match &limit {
                Some(semaphore) => semaphore.acquire().await.ok(),
                None => None,
            };
            match &outgoing {
                Outgoing::Http(request) => send_http(&shared.client, request, &n, spec.timeout).await,
                Outgoing::Email(email) => send_email(spec.smtp.as_ref(), email, &n, spec.timeout).await,
                Outgoing::Skip => Attempt::Delivered(None),
            }
        };
        match result {
            Attempt::Delivered(status) => {
                tracing::info!(notifier = %n.notifier, alert = %n.transition.alert, state = n.transition.state,
                    attempt = n.attempts, "notification delivered");
                shared.telemetry.notification(&n.notifier, "delivered");
                audit_attempt(shared, &n, "delivered", status, None);
                let _ = shared.outbox.lock().expect("outbox lock").remove(&n.id);
                return;
            }
            Attempt::Failed { status, error } => {
                tracing::error!(notifier = %n.notifier, alert = %n.transition.alert, ?status, %error,
                    "notification failed permanently");
                shared.telemetry.notification(&n.notifier, "failed");
                audit_attempt(shared, &n, "failed", status, Some(&error));
                let _ = shared.outbox.lock().expect("outbox lock").remove(&n.id);
                return;
            }
            Attempt::Retry { status, error, after } => {
                if n.attempts >= shared.retry.max_attempts {
                    tracing::error!(notifier = %n.notifier, alert = %n.transition.alert, attempts = n.attempts, %error,
                        "notification given up after the last retry");
                    shared.telemetry.notification(&n.notifier, "expired");
                    audit_attempt(shared, &n, "expired", status, Some(&error));
                    let _ = shared.outbox.lock().expect("outbox lock").remove(&n.id);
                    return;
                }
                shared.telemetry.notification(&n.notifier, "retried");
                audit_attempt(shared, &n, "retried", status, Some(&error));
                let random = shared.seed.lock().expect("rng lock").uniform();
                let wait = after.unwrap_or_else(|| shared.retry.backoff(n.attempts, random)).min(shared.retry.max);
                tracing::warn!(notifier = %n.notifier, attempt = n.attempts, ?status, %error, ?wait, "notification will be retried");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Most redirects followed per request.
const MAX_REDIRECTS: usize = 3;

/// Most bytes of a reply body read; the rest is never read (the connection
/// is dropped), so a receiver cannot make delivery hold an unbounded reply.
pub const MAX_REPLY_BYTES: usize = 64 * 1024;

/// Redirects are followed (at most [`MAX_REDIRECTS`]) only while they stay
/// on the origin — scheme, host and port — of the URL the request was made
/// to: the headers (credentials, signatures), the query (a Jenkins token)
/// and, on 307/308, the body never go to another host. A redirect elsewhere
/// is not followed; the 3xx reply is the attempt's result (a permanent
/// failure).
fn same_origin_redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let Some(first) = attempt.previous().first() else { return attempt.stop() };
        if attempt.url().origin() != first.origin() {
            attempt.stop()
        } else if attempt.previous().len() > MAX_REDIRECTS {
            attempt.error("too many redirects")
        } else {
            attempt.follow()
        }
    })
}

/// Reads at most `cap` bytes of a reply body, chunk by chunk; true when
/// the body was longer (the rest is left unread and discarded).
async fn read_capped(mut response: reqwest::Response, cap: usize) -> (Vec<u8>, bool) {
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = cap - body.len();
                if chunk.len() > room {
                    body.extend_from_slice(&chunk[..room]);
                    return (body, true);
                }
                body.extend_from_slice(&chunk);
            }
            // An error mid-body (timeout, reset): keep what arrived.
            Ok(None) | Err(_) => return (body, false),
        }
    }
}

/// Parses `Retry-After` given in seconds (HTTP dates fall back to backoff).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// The secret parts of a request — values of headers with sensitive names
/// (`Authorization`, `X-Driftwatch-Signature`, `PRIVATE-TOKEN`, … and their
/// credential after `Bearer `/`Basic `), the URL's password and sensitive query values
/// — to be blanked out of anything logged about it.
fn request_secrets(request: &OutgoingRequest) -> Vec<String> {
    let mut secrets = Vec::new();
    for (name, value) in &request.headers {
        if !crate::config::redact::is_sensitive_key(name) {
            continue;
        }
        secrets.push(value.clone());
        if let Some((_, credential)) = value.split_once(' ') {
            secrets.push(credential.to_string());
        }
    }
    secrets.extend(crate::config::redact::url_secrets(&request.url));
    secrets
}

/// What is logged of a receiver's error reply: its first 300 characters
/// (cut on a character boundary), with any secret of ours it echoes back
/// blanked out.
fn reply_excerpt(body: &str, request: &OutgoingRequest) -> String {
    let cut = body.char_indices().nth(300).map_or(body.len(), |(i, _)| i);
    crate::config::redact::scrub(body[..cut].trim(), &request_secrets(request))
}

/// `host:port` of a URL (never its user info, path or query).
fn host_and_port(url: &str) -> Option<String> {
    let parsed = reqwest::Url::parse(url).ok()?;
    let host = parsed.host_str()?;
    Some(match parsed.port_or_known_default() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    })
}

/// Each distinct message along an error's `source()` chain, starting with
/// the error itself, joined by `: ` — the cause ("Connection refused", "dns
/// error: failed to lookup address") is at the end of the chain, not in
/// the outermost message ("error sending request").
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut messages: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(current) = next {
        let text = current.to_string();
        // Wrappers often repeat their source's text in their own.
        if !messages.iter().any(|m| m.contains(&text)) {
            messages.push(text);
        }
        next = current.source();
    }
    messages.join(": ")
}

/// What failed, where and why, for a request that got no reply: `could
/// not connect to hooks.example:443: … Connection refused (os error 111)`.
/// Names the host and port only (the URL may carry a token), with any
/// secret of the request scrubbed.
fn describe_request_error(error: reqwest::Error, request: &OutgoingRequest, timeout: Duration) -> String {
    let what = if error.is_timeout() {
        format!("no reply within {} from", humantime::format_duration(timeout))
    } else if error.is_connect() {
        "could not connect to".to_string()
    } else if error.is_builder() {
        "could not make a request to".to_string()
    } else {
        "the request failed at".to_string()
    };
    let target = host_and_port(&request.url).unwrap_or_else(|| "the configured URL".to_string());
    let error = error.without_url();
    // reqwest's own message ("error sending request") and hyper's wrapper
    // ("client error (Connect)") say less than `what`: the causes follow.
    let cause = match std::error::Error::source(&error) {
        Some(source) => error_chain(source),
        None => error.to_string(),
    };
    let cause = cause.strip_prefix("client error (Connect): ").unwrap_or(&cause);
    let text = format!("{what} {target}: {cause}");
    crate::config::redact::scrub(&text, &request_secrets(request))
}

async fn send_http(
    client: &reqwest::Client,
    request: &OutgoingRequest,
    n: &Notification,
    timeout: Duration,
) -> Attempt {
    let method = reqwest::Method::from_bytes(request.method.as_bytes()).unwrap_or(reqwest::Method::POST);
    let mut builder = client.request(method, &request.url).timeout(timeout).body(request.body.clone());
    for (name, value) in &request.headers {
        builder = builder.header(name, value);
    }
    builder = builder.header("Idempotency-Key", &n.idempotency_key);
    match builder.send().await {
        Ok(response) => {
            let status = response.status();
            let code = Some(status.as_u16());
            if status.is_success() {
                return Attempt::Delivered(code);
            }
            let after = retry_after(response.headers());
            if status.is_redirection() {
                // Left unfollowed: to another origin (or without a usable
                // `Location`). Its target is not logged (it may carry tokens).
                return Attempt::Failed {
                    status: code,
                    error: format!(
                        "HTTP {status}: redirect not followed (only those to the same scheme, host and port are)"
                    ),
                };
            }
            let (body, truncated) = read_capped(response, MAX_REPLY_BYTES).await;
            let body = String::from_utf8_lossy(&body);
            let error = format!(
                "HTTP {status}: {}{}",
                reply_excerpt(&body, request),
                if truncated { " (reply cut at 64 KiB)" } else { "" }
            );
            if status.as_u16() == 429 || status.as_u16() == 408 || status.is_server_error() {
                Attempt::Retry { status: code, error, after }
            } else {
                Attempt::Failed { status: code, error }
            }
        }
        Err(error) => {
            let retriable = error.is_connect() || error.is_timeout() || error.is_request() || error.is_body();
            let error = describe_request_error(error, request, timeout);
            if retriable {
                Attempt::Retry { status: None, error, after: None }
            } else {
                Attempt::Failed { status: None, error }
            }
        }
    }
}

async fn send_email(
    smtp: Option<&SmtpSettings>,
    email: &OutgoingEmail,
    n: &Notification,
    timeout: Duration,
) -> Attempt {
    use lettre::message::{Mailbox, MultiPart, header};
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::transport::smtp::client::{Tls, TlsParameters};
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

    let Some(smtp) = smtp else {
        return Attempt::Failed { status: None, error: "no SMTP settings".into() };
    };
    let failed = |error: String| Attempt::Failed { status: None, error };
    let from: Mailbox = match smtp.from.parse() {
        Ok(m) => m,
        Err(e) => return failed(format!("from address: {e}")),
    };
    let mut message = Message::builder()
        .from(from)
        .subject(&email.subject)
        .message_id(Some(format!("<{}@driftwatch>", n.idempotency_key)))
        .header(header::ContentTransferEncoding::QuotedPrintable);
    for to in &smtp.to {
        match to.parse::<Mailbox>() {
            Ok(m) => message = message.to(m),
            Err(e) => return failed(format!("to address {to:?}: {e}")),
        }
    }
    let message = match message.multipart(MultiPart::alternative_plain_html(email.text.clone(), email.html.clone())) {
        Ok(m) => m,
        Err(e) => return failed(format!("building the message: {e}")),
    };
    let (implicit, rest) = match (smtp.url.strip_prefix("smtps://"), smtp.url.strip_prefix("smtp://")) {
        (Some(rest), _) => (true, rest),
        (None, Some(rest)) => (false, rest),
        _ => return failed("smtp: expected smtp:// or smtps://".into()),
    };
    let hostport = rest.rsplit('@').next().unwrap_or(rest).trim_end_matches('/');
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => match p.parse::<u16>() {
            Ok(p) => (h.to_string(), p),
            Err(_) => return failed("smtp: bad port".into()),
        },
        None => (hostport.to_string(), if implicit { 465 } else { 587 }),
    };
    let parameters = match TlsParameters::new(host.clone()) {
        Ok(p) => p,
        Err(e) => return failed(format!("TLS setup: {e}")),
    };
    let tls = match smtp.tls.as_str() {
        "implicit" => Tls::Wrapper(parameters),
        "opportunistic" => Tls::Opportunistic(parameters),
        "none" => Tls::None,
        _ => Tls::Required(parameters),
    };
    let mut transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host.clone())
        .port(port)
        .tls(tls)
        .timeout(Some(timeout));
    if let (Some(user), Some(password)) = (&smtp.username, &smtp.password) {
        transport = transport.credentials(Credentials::new(user.clone(), password.clone()));
    }
    match transport.build().send(message).await {
        Ok(response) => Attempt::Delivered(Some(response.code().into())),
        Err(error) => {
            let password: Vec<String> = smtp.password.iter().cloned().collect();
            let text = crate::config::redact::scrub(&format!("SMTP {host}:{port}: {}", error_chain(&error)), &password);
            if error.is_permanent() { failed(text) } else { Attempt::Retry { status: None, error: text, after: None } }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: the reply was cut with `String::truncate(300)`, which
    /// panics inside a multi-byte character; and a receiver echoing our
    /// credentials had them logged.
    #[test]
    fn error_replies_are_cut_on_a_character_boundary_and_scrubbed() {
        let request = OutgoingRequest {
            method: "POST".into(),
            url: "http://ci.example/job?token=query-secret-1".into(),
            headers: vec![
                ("Authorization".into(), "Bearer header-secret-2".into()),
                ("Content-Type".into(), "application/json".into()),
            ],
            body: Vec::new(),
        };
        let body = format!("{}you sent Bearer header-secret-2 and query-secret-1", "é".repeat(300));
        let excerpt = reply_excerpt(&body, &request);
        assert_eq!(excerpt, "é".repeat(300), "300 characters, not 300 bytes");
        let excerpt = reply_excerpt("denied: header-secret-2 / query-secret-1 as application/json", &request);
        assert_eq!(excerpt, "denied: ***redacted*** / ***redacted*** as application/json");
    }

    #[test]
    fn firing_alerts_are_re_sent_to_alertmanager_each_interval() {
        let config: crate::config::NotifierConfig = serde_json::from_value(json!({
            "type": "alertmanager", "url": "http://127.0.0.1:9", "resend_interval": "1ns"
        }))
        .unwrap();
        let spec = NotifierSpec::from_config("am", &config).unwrap();
        let outbox = Outbox::open(None, 100).unwrap();
        let retry = RetryPolicy { initial: Duration::from_secs(60), max: Duration::from_secs(60), max_attempts: 2 };
        let dispatcher = Dispatcher::start(vec![spec], outbox, None, Arc::new(Telemetry::default()), retry).unwrap();
        let firing = crate::rules::Transition {
            alert: "A".into(),
            state: "firing".into(),
            fingerprint: "f".into(),
            model: "m".into(),
            model_version: String::new(),
            segment: String::new(),
            feature: None,
            window_start: "2026-11-26T10:00:00.000Z".into(),
            window_end: "2026-11-26T10:05:00.000Z".into(),
            value: Some(1.0),
            labels: Default::default(),
            annotations: Default::default(),
            notify: vec!["am".into()],
            suppressed: Vec::new(),
            active_since: "2026-11-26T10:00:00.000Z".into(),
            evaluation_time: "2026-11-26T10:05:00.000Z".into(),
        };
        let pending = crate::rules::Transition { state: "pending".into(), fingerprint: "g".into(), ..firing.clone() };
        // The first call starts the clock; the next (an interval later) re-sends firing alerts only.
        dispatcher.resend_firing(&[firing.clone(), pending.clone()]);
        assert_eq!(dispatcher.pending(), 0);
        dispatcher.resend_firing(&[firing, pending]);
        assert_eq!(dispatcher.pending(), 1);
    }

    /// Regression: a refused connection was reported as "error sending
    /// request", naming neither where nor why.
    #[test]
    fn a_connection_error_names_the_host_and_the_cause() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let request = OutgoingRequest {
            method: "POST".into(),
            url: format!("http://user:url-pass@127.0.0.1:{port}/hook?token=query-secret"),
            headers: Vec::new(),
            body: Vec::new(),
        };
        let notification = Notification::new("hook", &crate::rules::Transition::default(), 0);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let client = reqwest::Client::new();
        let attempt = runtime.block_on(send_http(&client, &request, &notification, Duration::from_secs(5)));
        let Attempt::Retry { error, .. } = attempt else { panic!("a refused connection is retriable: {attempt:?}") };
        assert!(error.starts_with(&format!("could not connect to 127.0.0.1:{port}: ")), "{error}");
        assert!(error.contains("Connection refused"), "{error}");
        assert!(!error.contains("url-pass") && !error.contains("query-secret") && !error.contains("/hook"), "{error}");
    }

    #[test]
    fn backoff_is_full_jitter_under_a_doubling_ceiling() {
        let policy = RetryPolicy { initial: Duration::from_millis(100), max: Duration::from_secs(1), max_attempts: 5 };
        assert_eq!(policy.backoff(1, 1.0), Duration::from_millis(100));
        assert_eq!(policy.backoff(3, 1.0), Duration::from_millis(400));
        assert_eq!(policy.backoff(3, 0.5), Duration::from_millis(200));
        assert_eq!(policy.backoff(10, 1.0), Duration::from_secs(1));
        assert_eq!(policy.backoff(2, 0.0), Duration::ZERO);
        // 100 + 200 + 400 + 800 ms of waits, five attempts of up to 2 s.
        assert_eq!(policy.budget(Duration::from_secs(2)), Duration::from_millis(11_500));
    }
}
