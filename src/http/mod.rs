//! The HTTP API (docs/OBSERVABILITY.md), served by axum on its own small runtime so the
//! pipeline thread never waits on a socket. Handlers read snapshots the
//! pipeline publishes into [`ApiState`] and send requests (rule reload)
//! over a channel the pipeline answers on its next turn.
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

/// A rule reload asked for over HTTP; the pipeline answers with the number
/// of rules loaded or the errors.
pub struct ReloadRequest {
    pub reply: tokio::sync::oneshot::Sender<Result<usize, Vec<String>>>,
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

/// The rows `/api/v1/windows` and the status page serve, oldest first.
pub type RecentRows = std::collections::VecDeque<crate::output::WindowMetricRow>;

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
    /// The metrics `/metrics` serves.
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
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
            metrics,
        };
        (Arc::new(state), receiver)
    }

    /// Appends rows of closed windows, keeping the latest [`RECENT_ROWS`].
    pub fn push_rows(&self, rows: &[crate::output::WindowMetricRow]) {
        if rows.is_empty() {
            return;
        }
        self.windows.update(|recent| {
            recent.extend(rows.iter().cloned());
            let excess = recent.len().saturating_sub(RECENT_ROWS);
            recent.drain(..excess);
        });
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
}

async fn alerts(State(state): State<Arc<ApiState>>) -> Json<Alerts> {
    Json(Alerts { alerts: state.alerts.snapshot().to_vec() })
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
        Ok(Ok(Ok(count))) => Json(json!({"status": "reloaded", "rules": count})).into_response(),
        Ok(Ok(Err(errors))) => error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_rules",
            "the new rules were rejected; the previous rules stay in force",
            Some(json!(errors)),
        ),
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
}

/// `GET /api/v1/windows?model=&since=`: recent rows, oldest first.
async fn windows(
    State(state): State<Arc<ApiState>>,
    query: Result<axum::extract::Query<WindowsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(axum::extract::Query(query)) = query else {
        return error(StatusCode::BAD_REQUEST, "bad_query", "parameters: model, since (RFC 3339)", None);
    };
    let since = match query.since.as_deref() {
        None => i64::MIN,
        Some(text) => match crate::decode::timestamp::parse_rfc3339_ms(text) {
            Some(ms) => ms,
            None => return error(StatusCode::BAD_REQUEST, "bad_since", "since must be an RFC 3339 time", None),
        },
    };
    // A copy of the rows asked for, taken from the published snapshot (an
    // `Arc`, cloned under the lock and released at once) and dropped before
    // encoding: the pipeline never waits for this response, and rarely has
    // to copy its rows because a reader still holds them.
    let selected: Vec<crate::output::WindowMetricRow> = state
        .windows
        .snapshot()
        .iter()
        .filter(|r| query.model.as_deref().is_none_or(|m| *r.model == *m) && r.window_start_ms >= since)
        .cloned()
        .collect();
    let selected: Vec<Value> = selected.iter().map(crate::rules::lifecycle::row_json).collect();
    Json(json!({"windows": selected})).into_response()
}

/// `GET /api/v1/models`: the configured models and their latest window.
async fn models(State(state): State<Arc<ApiState>>) -> Json<Value> {
    let rows = state.windows.snapshot();
    let mut models = state.models.snapshot().to_vec();
    for model in &mut models {
        let name = model["name"].as_str().unwrap_or("").to_string();
        let latest = rows.iter().rev().find(|r| *r.model == *name && r.metric == "count" && r.segment.is_empty());
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
    use crate::output::WindowMetricRow;
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

    /// While `/api/v1/windows` builds and sends its largest response (the
    /// latest 100,000 rows), over and over, the pipeline keeps publishing
    /// rows without waiting, and rows published meanwhile are served by the
    /// next request. (Before, the handler held the read lock while it
    /// filtered and encoded, and each publish waited for that: the
    /// publishing thread spent nearly all its time blocked.)
    #[test]
    fn encoding_a_large_response_does_not_hold_the_lock_the_pipeline_needs() {
        let (api, _reloads) = ApiState::new(None, None);
        api.push_rows(&(0..RECENT_ROWS as i64).map(row).collect::<Vec<_>>());
        let server = serve("127.0.0.1:0", api.clone()).unwrap();
        let address = server.address;
        let (done, stop) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(false)));
        let client = {
            let (done, stop) = (done.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut last = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    let mut stream = std::net::TcpStream::connect(address).unwrap();
                    stream.write_all(b"GET /api/v1/windows HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
                    last.clear();
                    stream.read_to_end(&mut last).unwrap();
                    done.fetch_add(1, Ordering::SeqCst);
                }
                last
            })
        };
        let started = std::time::Instant::now();
        let deadline = started + Duration::from_secs(300);
        let (mut blocked, mut published) = (Duration::ZERO, 0i64);
        while done.load(Ordering::SeqCst) < 2 {
            assert!(std::time::Instant::now() < deadline, "2 responses took over 300 s");
            // The pipeline publishes a row of a closed window.
            let publishing = std::time::Instant::now();
            api.push_rows(&[row(RECENT_ROWS as i64 + published)]);
            blocked += publishing.elapsed();
            published += 1;
            std::thread::yield_now();
        }
        let elapsed = started.elapsed();
        stop.store(true, Ordering::SeqCst);
        let last = client.join().unwrap();
        assert!(blocked * 4 < elapsed, "publishing took {blocked:?} of {elapsed:?} ({published} rows)");
        // Every response is whole: the latest RECENT_ROWS rows, oldest first.
        let body = &last[last.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4..];
        let served: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(served["windows"].as_array().unwrap().len(), RECENT_ROWS);
        let snapshot = api.windows.snapshot();
        assert_eq!(snapshot.len(), RECENT_ROWS);
        assert_eq!(snapshot.back().unwrap().window_start_ms, (RECENT_ROWS as i64 + published - 1) * 60_000);
    }

    #[test]
    fn tokens_compare_exactly() {
        assert!(token_matches(b"secret", b"secret"));
        assert!(!token_matches(b"secreT", b"secret"));
        assert!(!token_matches(b"secret2", b"secret"));
        assert!(!token_matches(b"", b"secret"));
    }
}
