//! The HTTP API (docs/OBSERVABILITY.md), served by axum on its own small runtime so the
//! daemon's loop never waits on a socket. Handlers read snapshots the
//! pipeline publishes into [`ApiState`] and send requests (rule reload)
//! over a channel the loop takes on its next turn (the alerting stage
//! applies the reload and answers).
//!
//! No handler blocks the pipeline: each snapshot is an immutable `Arc`
//! behind a [`Published`] cell whose lock is held only to clone or swap
//! that `Arc` — a handler takes its copy and releases the lock before it
//! filters, renders or encodes anything, and the pipeline's next publish
//! never waits for a response being encoded or a slow client. Nothing on
//! the HTTP runtime touches the disk.
//!
//! Errors are JSON: `{"error": {"code": "...", "message": "..."}}`.
//! Mutating endpoints need `Authorization: Bearer <http.token>`; without a
//! configured token they are disabled.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use serde_json::{Value, json};

use crate::rules::Transition;

pub mod history;
pub mod status;

/// Largest request body accepted (413 beyond).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Most `window_metrics` rows `/api/v1/windows` keeps (oldest dropped).
pub const RECENT_ROWS: usize = 100_000;

/// Default `limit` of `/api/v1/windows`: every row kept.
pub const DEFAULT_WINDOWS_LIMIT: usize = RECENT_ROWS;

/// A config reload asked for over HTTP; the pipeline answers with what it
/// applied or why it refused.
pub struct ReloadRequest {
    pub reply: tokio::sync::oneshot::Sender<Result<ReloadReport, ReloadRejection>>,
}

/// What a reload applied, and the changed settings it could not.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReloadReport {
    /// Rules now loaded.
    pub rules: usize,
    /// Names of the notifiers now configured, sorted.
    pub notifiers: Vec<String>,
    /// Config paths of changed settings that take effect only after a
    /// restart (their running values stay in force), sorted.
    pub restart_required: Vec<String>,
}

/// Why a reload changed nothing: a code (`invalid_config`,
/// `invalid_rules`), a sentence, and every error found.
#[derive(Debug, Clone, PartialEq)]
pub struct ReloadRejection {
    pub code: &'static str,
    pub message: String,
    pub errors: Vec<String>,
}

impl ReloadRejection {
    pub fn new(code: &'static str, message: impl Into<String>, errors: Vec<String>) -> ReloadRejection {
        ReloadRejection { code, message: message.into(), errors }
    }
}

/// A value the pipeline publishes and handlers read: an immutable `Arc`
/// snapshot behind a lock held only long enough to clone or replace the
/// `Arc` (never while a reader filters or encodes its copy).
pub struct Published<T>(Mutex<Arc<T>>);

impl<T: Clone> Published<T> {
    pub fn new(value: T) -> Published<T> {
        Published(Mutex::new(Arc::new(value)))
    }

    fn cell(&self) -> std::sync::MutexGuard<'_, Arc<T>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The current snapshot; the lock is released on return.
    pub fn snapshot(&self) -> Arc<T> {
        Arc::clone(&self.cell())
    }

    /// Replaces the snapshot (the old one is dropped outside the lock).
    pub fn set(&self, value: T) {
        let value = Arc::new(value);
        let old = std::mem::replace(&mut *self.cell(), value);
        drop(old);
    }

    /// Changes the snapshot in place, copying it first only if a reader
    /// still holds the current one (copy on write): readers keep the
    /// version they took, unchanged.
    pub fn update<R>(&self, change: impl FnOnce(&mut T) -> R) -> R {
        let mut cell = self.cell();
        change(Arc::make_mut(&mut cell))
    }
}

/// `cluster:`: what `/api/v1/cluster` answers, and which instance merges a
/// model (implemented over Kafka's group descriptions,
/// [`crate::sources::members`]). Blocking: handlers call it off the
/// runtime's threads.
pub trait ClusterView: Send + Sync {
    /// The members, the partitions each reads, the models each merges.
    fn describe(&self) -> Value;
    /// The instance that merges `model`, when it is not this one.
    fn merged_elsewhere(&self) -> std::collections::BTreeMap<String, String>;
}

/// The rows `/api/v1/windows` and the status page serve, oldest first.
pub type RecentRows = std::collections::VecDeque<crate::window_metrics::WindowMetricRow>;

/// What the API serves, published by the pipeline.
pub struct ApiState {
    /// Alert instances pending or firing.
    pub alerts: Published<Vec<Transition>>,
    /// The loaded rules (name, group, file, line, sha256, condition...).
    pub rules: Published<Vec<Value>>,
    /// The most recent `window_metrics` rows (bounded by [`RECENT_ROWS`]).
    pub windows: Published<RecentRows>,
    /// The configured models (name, task, baseline path).
    pub models: Published<Vec<Value>>,
    token: Option<String>,
    reload: Mutex<mpsc::Sender<ReloadRequest>>,
    /// Rows dropped from the front of `windows` since this state was made:
    /// the sequence number of its first row (`/api/v1/windows` cursors).
    /// Changed only under the lock of `windows`.
    windows_dropped: std::sync::atomic::AtomicU64,
    /// Tells this run's cursors from an earlier run's: the time (ms) the
    /// state was made.
    cursor_epoch: i64,
    /// The metrics `/metrics` serves.
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
    /// `cluster:`: the cluster this instance is in (set once the daemon
    /// knows its HTTP address).
    pub cluster: Mutex<Option<Arc<dyn ClusterView>>>,
}

impl ApiState {
    /// State for a server whose reload requests arrive on the returned
    /// receiver.
    pub fn new(
        token: Option<String>,
        metrics: Option<Arc<crate::metrics::Metrics>>,
    ) -> (Arc<ApiState>, mpsc::Receiver<ReloadRequest>) {
        let (sender, receiver) = mpsc::channel();
        let state = ApiState {
            alerts: Published::new(Vec::new()),
            rules: Published::new(Vec::new()),
            windows: Published::new(RecentRows::new()),
            models: Published::new(Vec::new()),
            token,
            reload: Mutex::new(sender),
            windows_dropped: std::sync::atomic::AtomicU64::new(0),
            cursor_epoch: chrono::Utc::now().timestamp_millis(),
            metrics,
            cluster: Mutex::new(None),
        };
        (Arc::new(state), receiver)
    }

    /// Appends rows of closed windows, keeping the latest [`RECENT_ROWS`].
    pub fn push_rows(&self, rows: &[crate::window_metrics::WindowMetricRow]) {
        if rows.is_empty() {
            return;
        }
        self.windows.update(|recent| {
            recent.extend(rows.iter().cloned());
            let excess = recent.len().saturating_sub(RECENT_ROWS);
            recent.drain(..excess);
            self.windows_dropped.fetch_add(excess as u64, std::sync::atomic::Ordering::SeqCst);
        });
    }

    /// The rows and the sequence number of the first of them, taken
    /// together under the lock (the lock is released on return).
    fn windows_with_first_sequence(&self) -> (Arc<RecentRows>, u64) {
        let cell = self.windows.cell();
        (Arc::clone(&cell), self.windows_dropped.load(std::sync::atomic::Ordering::SeqCst))
    }

    /// `cluster:`: the models merged by another instance, and which (empty
    /// outside a cluster), asked off the runtime's threads.
    async fn merged_elsewhere(&self) -> std::collections::BTreeMap<String, String> {
        let Some(view) = self.cluster.lock().expect("cluster lock").clone() else { return Default::default() };
        tokio::task::spawn_blocking(move || view.merged_elsewhere()).await.unwrap_or_default()
    }

    /// The names of the configured models, as `/api/v1/models` lists them.
    fn model_names(&self) -> Vec<String> {
        self.models.snapshot().iter().filter_map(|m| m["name"].as_str().map(str::to_string)).collect()
    }
}

fn error(status: StatusCode, code: &str, message: impl Into<String>, extra: Option<Value>) -> Response {
    let mut body = json!({"error": {"code": code, "message": message.into()}});
    if let Some(extra) = extra {
        body["error"]["details"] = extra;
    }
    (status, Json(body)).into_response()
}

/// Constant-time comparison of the presented token with the configured one.
fn token_matches(presented: &[u8], expected: &[u8]) -> bool {
    let mut difference = presented.len() ^ expected.len();
    for (i, byte) in expected.iter().enumerate() {
        difference |= usize::from(presented.get(i).copied().unwrap_or(0) ^ byte);
    }
    difference == 0
}

/// `None` when the request may proceed, else the rejection.
fn rejection(state: &ApiState, headers: &HeaderMap) -> Option<Response> {
    let Some(expected) = &state.token else {
        return Some(error(
            StatusCode::FORBIDDEN,
            "disabled",
            "mutating endpoints are disabled: set http.token to enable them",
            None,
        ));
    };
    let presented = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if token_matches(presented.as_bytes(), expected.as_bytes()) {
        None
    } else {
        Some(error(StatusCode::UNAUTHORIZED, "unauthorized", "a valid bearer token is required", None))
    }
}

async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz`: 200 when every readiness condition holds, else 503
/// naming the ones that do not (`pipeline_running`, `kafka_reachable`,
/// `state_writable`).
async fn readyz(State(state): State<Arc<ApiState>>) -> Response {
    let unmet = match &state.metrics {
        Some(metrics) => metrics.telemetry.readiness.unmet(),
        None => vec!["pipeline_running"],
    };
    if unmet.is_empty() {
        Json(json!({"status": "ready"})).into_response()
    } else {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            format!("not ready: {}", unmet.join(", ")),
            Some(json!(unmet)),
        )
    }
}

/// `GET /`: the status page.
async fn status_page(State(state): State<Arc<ApiState>>) -> Response {
    let page = status::render(&state);
    ([(axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8")], page).into_response()
}

#[derive(Serialize)]
struct Alerts {
    alerts: Vec<Transition>,
    /// `cluster:`: models whose alerts another instance holds, and which.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    merged_elsewhere: std::collections::BTreeMap<String, String>,
}

async fn alerts(State(state): State<Arc<ApiState>>) -> Json<Alerts> {
    let merged_elsewhere = state.merged_elsewhere().await;
    Json(Alerts { alerts: state.alerts.snapshot().to_vec(), merged_elsewhere })
}

/// `GET /api/v1/cluster`: the members of the cluster (their instance
/// names, partitions read and models merged), as Kafka's groups describe
/// them; `{"clustered": false}` outside a cluster.
async fn cluster(State(state): State<Arc<ApiState>>) -> Response {
    let Some(view) = state.cluster.lock().expect("cluster lock").clone() else {
        return Json(json!({"clustered": false, "members": [], "models": {}})).into_response();
    };
    match tokio::task::spawn_blocking(move || view.describe()).await {
        Ok(answer) => Json(answer).into_response(),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", "describing the cluster failed", None),
    }
}

async fn rules(State(state): State<Arc<ApiState>>) -> Json<Value> {
    let rules = state.rules.snapshot();
    Json(json!({"rules": *rules}))
}

async fn reload(State(state): State<Arc<ApiState>>, headers: HeaderMap) -> Response {
    if let Some(response) = rejection(&state, &headers) {
        return response;
    }
    let (reply, answer) = tokio::sync::oneshot::channel();
    if state.reload.lock().expect("reload lock").send(ReloadRequest { reply }).is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "not_running", "the pipeline is not running", None);
    }
    match tokio::time::timeout(Duration::from_secs(30), answer).await {
        Ok(Ok(Ok(report))) => Json(json!({
            "status": "reloaded",
            "rules": report.rules,
            "notifiers": report.notifiers,
            "restart_required": report.restart_required,
        }))
        .into_response(),
        Ok(Ok(Err(rejection))) => {
            error(StatusCode::UNPROCESSABLE_ENTITY, rejection.code, rejection.message, Some(json!(rejection.errors)))
        }
        _ => error(StatusCode::SERVICE_UNAVAILABLE, "timeout", "the pipeline did not answer in time", None),
    }
}

async fn metrics(State(state): State<Arc<ApiState>>) -> Response {
    let body = state.metrics.as_ref().map(|m| m.encode()).unwrap_or_default();
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct WindowsQuery {
    model: Option<String>,
    since: Option<String>,
    metric: Option<String>,
    feature: Option<String>,
    segment: Option<String>,
    limit: Option<String>,
    after: Option<String>,
}

/// What `/api/v1/windows` says about its parameters when one is wrong.
const WINDOWS_PARAMETERS: &str = "parameters: model, since (RFC 3339), metric, feature (empty: model-level rows), \
     segment (empty: the whole model), limit (1 to 100000), after (the `next` of a previous page)";

/// A page cursor: this run's epoch and the sequence number of the first
/// row after the page. The error is the rejection's status, code and
/// message.
fn parse_cursor(text: &str, epoch: i64) -> Result<u64, (StatusCode, &'static str, &'static str)> {
    let parsed =
        text.split_once('.').and_then(|(run, sequence)| Some((run.parse::<i64>().ok()?, sequence.parse().ok()?)));
    match parsed {
        Some((run, sequence)) if run == epoch => Ok(sequence),
        Some(_) => Err((
            StatusCode::GONE,
            "cursor_expired",
            "the cursor is from an earlier run of the daemon: start again without `after`",
        )),
        None => Err((StatusCode::BAD_REQUEST, "bad_after", "after must be the `next` cursor of a previous page")),
    }
}

/// `GET /api/v1/windows?model=&since=&metric=&feature=&segment=&limit=&after=`:
/// recent rows, oldest first, a page of at most `limit` at a time; `next`
/// continues after the page (and later returns rows closed since).
async fn windows(
    State(state): State<Arc<ApiState>>,
    query: Result<axum::extract::Query<WindowsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(axum::extract::Query(query)) = query else {
        return error(StatusCode::BAD_REQUEST, "bad_query", WINDOWS_PARAMETERS, None);
    };
    let since = match query.since.as_deref() {
        None => i64::MIN,
        Some(text) => match crate::timestamp::parse_rfc3339_ms(text) {
            Some(ms) => ms,
            None => return error(StatusCode::BAD_REQUEST, "bad_since", "since must be an RFC 3339 time", None),
        },
    };
    let limit = match query.limit.as_deref() {
        None => DEFAULT_WINDOWS_LIMIT,
        Some(text) => match text.parse::<usize>() {
            Ok(limit) if (1..=RECENT_ROWS).contains(&limit) => limit,
            _ => {
                let message = format!("limit must be a whole number from 1 to {RECENT_ROWS}");
                return error(StatusCode::BAD_REQUEST, "bad_limit", message, None);
            }
        },
    };
    let after = match query.after.as_deref() {
        None => 0,
        Some(text) => match parse_cursor(text, state.cursor_epoch) {
            Ok(sequence) => sequence,
            Err((status, code, message)) => return error(status, code, message, None),
        },
    };
    if let Some(model) = query.model.as_deref() {
        let known = state.model_names();
        if !known.iter().any(|name| name == model) {
            let shown: String = model.chars().take(60).collect();
            let message = format!("no model named {shown:?}; known models: {}", known.join(", "));
            return error(StatusCode::NOT_FOUND, "unknown_model", message, Some(json!(known)));
        }
    }
    // A copy of the rows asked for, taken from the published snapshot (an
    // `Arc`, cloned under the lock and released at once) and dropped before
    // encoding: the pipeline never waits for this response, and rarely has
    // to copy its rows because a reader still holds them.
    let (rows, first_sequence) = state.windows_with_first_sequence();
    let skip = usize::try_from(after.saturating_sub(first_sequence)).unwrap_or(usize::MAX);
    let matches = |r: &&crate::window_metrics::WindowMetricRow| {
        query.model.as_deref().is_none_or(|m| *r.model == *m)
            && r.window_start_ms >= since
            && query.metric.as_deref().is_none_or(|m| r.metric == m)
            && query.feature.as_deref().is_none_or(|f| r.feature.as_deref().unwrap_or("") == f)
            && query.segment.as_deref().is_none_or(|s| *r.segment == *s)
    };
    let mut selected = Vec::new();
    let mut next = first_sequence + rows.len() as u64;
    let mut more = false;
    for (index, row) in rows.iter().enumerate().skip(skip) {
        if !matches(&row) {
            continue;
        }
        if selected.len() == limit {
            next = first_sequence + index as u64;
            more = true;
            break;
        }
        selected.push(row.clone());
    }
    drop(rows);
    let selected: Vec<Value> = selected.iter().map(crate::rules::lifecycle::row_json).collect();
    let next = format!("{}.{}", state.cursor_epoch, next.max(after));
    let mut body = json!({"windows": selected, "next": next, "more": more});
    // In a cluster, the rows of a model merged elsewhere are there.
    let elsewhere = state.merged_elsewhere().await;
    let elsewhere: std::collections::BTreeMap<&String, &String> =
        elsewhere.iter().filter(|(model, _)| query.model.as_deref().is_none_or(|m| m == model.as_str())).collect();
    if !elsewhere.is_empty() {
        body["merged_elsewhere"] = json!(elsewhere);
    }
    Json(body).into_response()
}

/// `GET /api/v1/models`: the configured models and their latest window
/// (the whole model's `count` row, not a feature's).
async fn models(State(state): State<Arc<ApiState>>) -> Json<Value> {
    let rows = state.windows.snapshot();
    let mut models = state.models.snapshot().to_vec();
    for model in &mut models {
        let name = model["name"].as_str().unwrap_or("").to_string();
        let latest = rows
            .iter()
            .rev()
            .find(|r| *r.model == *name && r.metric == "count" && r.segment.is_empty() && r.feature.is_none());
        model["latest_window"] = latest.map(crate::rules::lifecycle::row_json).unwrap_or(Value::Null);
    }
    Json(json!({"models": models}))
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "not_found", "no such endpoint", None)
}

async fn method_not_allowed() -> Response {
    error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this endpoint does not take that method", None)
}

/// The router over `state`.
pub fn router(state: Arc<ApiState>) -> axum::Router {
    axum::Router::new()
        .route("/", get(status_page))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/alerts", get(alerts))
        .route("/api/v1/rules", get(rules))
        .route("/api/v1/windows", get(windows))
        .route("/api/v1/models", get(models))
        .route("/api/v1/cluster", get(cluster))
        .route("/-/reload", post(reload))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// A running server; dropping it stops it.
pub struct Server {
    pub address: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

/// Binds `listen` and serves the API on a one-thread runtime of its own.
pub fn serve(listen: &str, state: Arc<ApiState>) -> std::io::Result<Server> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("driftwatch-http")
        .enable_all()
        .build()?;
    let listener = runtime.block_on(tokio::net::TcpListener::bind(listen))?;
    let address = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    runtime.spawn(async move {
        let server = axum::serve(listener, router(state)).with_graceful_shutdown(async {
            let _ = stopped.await;
        });
        if let Err(e) = server.await {
            tracing::error!(error = %e, "HTTP server failed");
        }
    });
    tracing::info!(%address, "HTTP API listening");
    Ok(Server { address, runtime: Some(runtime), stop: Some(stop) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window_metrics::WindowMetricRow;
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    fn row(i: i64) -> WindowMetricRow {
        WindowMetricRow {
            model: Arc::from("shop"),
            model_version: Arc::from("v1"),
            segment: Arc::from(""),
            window_start_ms: i * 60_000,
            window_end_ms: (i + 1) * 60_000,
            feature: Some(Arc::from("amount")),
            metric: "psi",
            value: 0.5,
            baseline: None,
            threshold: Some(0.2),
            p_value: None,
            drifted: Some(true),
            sample_count: 100,
        }
    }

    /// A reader holding a snapshot never holds the lock: the pipeline's
    /// update completes while the snapshot is held (on another thread, so a
    /// lock held by the reader would show as a missed deadline, not a hang),
    /// and the reader keeps the version it took, unchanged.
    #[test]
    fn a_held_snapshot_does_not_block_the_publisher_and_stays_unchanged() {
        let published = Arc::new(Published::new(vec![1, 2, 3]));
        let held = published.snapshot();
        let (sent, received) = std::sync::mpsc::channel();
        let publisher = {
            let published = published.clone();
            std::thread::spawn(move || {
                published.update(|values| values.push(4));
                sent.send(()).unwrap();
            })
        };
        received.recv_timeout(Duration::from_secs(60)).expect("the update waited for the reader");
        publisher.join().unwrap();
        assert_eq!(*held, vec![1, 2, 3]);
        assert_eq!(*published.snapshot(), vec![1, 2, 3, 4]);
    }

    /// While `/api/v1/windows` builds and sends its largest response (the
    /// latest 100,000 rows), over and over, the pipeline keeps publishing
    /// rows, every response is whole, and rows published meanwhile are
    /// served by the next request. (Handlers reach the rows only through
    /// [`Published::snapshot`], so no lock is held while they filter and
    /// encode; the test above checks that property without timing.)
    #[test]
    fn publishing_while_large_responses_are_served_keeps_every_response_whole() {
        let (api, _reloads) = ApiState::new(None, None);
        api.push_rows(&(0..RECENT_ROWS as i64).map(row).collect::<Vec<_>>());
        let server = serve("127.0.0.1:0", api.clone()).unwrap();
        let address = server.address;
        let get = move || {
            let mut stream = std::net::TcpStream::connect(address).unwrap();
            stream.write_all(b"GET /api/v1/windows HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
            let mut response = Vec::new();
            stream.read_to_end(&mut response).unwrap();
            let body = &response[response.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4..];
            let served: Value = serde_json::from_slice(body).unwrap();
            served["windows"].as_array().unwrap().iter().map(|r| r["window_start"].clone()).collect::<Vec<_>>()
        };
        let (done, stop) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(false)));
        let client = {
            let (done, stop) = (done.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    assert_eq!(get().len(), RECENT_ROWS);
                    done.fetch_add(1, Ordering::SeqCst);
                }
            })
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(300);
        let mut published = 0i64;
        while done.load(Ordering::SeqCst) < 2 {
            assert!(std::time::Instant::now() < deadline, "2 responses took over 300 s");
            // The pipeline publishes a row of a closed window.
            api.push_rows(&[row(RECENT_ROWS as i64 + published)]);
            published += 1;
            std::thread::yield_now();
        }
        stop.store(true, Ordering::SeqCst);
        client.join().unwrap();
        assert!(published > 0);
        // The next request serves the latest RECENT_ROWS rows, oldest first,
        // ending with the last row published.
        let snapshot = api.windows.snapshot();
        assert_eq!(snapshot.len(), RECENT_ROWS);
        assert_eq!(snapshot.back().unwrap().window_start_ms, (RECENT_ROWS as i64 + published - 1) * 60_000);
        let served = get();
        assert_eq!(served.len(), RECENT_ROWS);
        let expected_last = crate::rules::lifecycle::row_json(snapshot.back().unwrap())["window_start"].clone();
        assert_eq!(served.last().unwrap(), &expected_last);
    }

    #[test]
    fn tokens_compare_exactly() {
        assert!(token_matches(b"secret", b"secret"));
        assert!(!token_matches(b"secreT", b"secret"));
        assert!(!token_matches(b"secret2", b"secret"));
        assert!(!token_matches(b"", b"secret"));
    }
}
