//! The `run` driver: the daemon's wiring. Builds the pipeline from the
//! config, the sinks (the output file, the log of closed windows, rules and
//! notifications), the HTTP API and the checkpoint store, restores the
//! last checkpoint, and hands them to the daemon's loop (`crate::daemon`),
//! which consumes Kafka until SIGINT/SIGTERM.

use std::io;
use std::sync::Arc;

use std::sync::atomic::AtomicBool;

use crate::alerting::{AlertingSink, Live};
use crate::checkpoint::CheckpointStore;
use crate::config::Config;
use crate::daemon::Durability;
use crate::join::store::JoinStore;
use crate::output::{AppendFileSink, WindowSink};
use crate::pipeline::Pipeline;
use crate::shutdown::Shutdown;
use crate::sources::kafka::{KafkaSourceError, KafkaSummary};
use crate::telemetry::Telemetry;
use crate::window_metrics::WindowMetricRow;

/// Errors that stop the daemon.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Setup(String),
    #[error("opening the window_metrics output {path}: {source}")]
    Output { path: String, source: io::Error },
    #[error(transparent)]
    Kafka(#[from] KafkaSourceError),
    #[error("HTTP server on {listen}: {source}")]
    Http { listen: String, source: io::Error },
}

/// Logs closed windows and forwards them to an optional inner sink.
struct LoggingSink {
    inner: Option<Box<dyn WindowSink + Send>>,
}

impl WindowSink for LoggingSink {
    fn write_rows(&mut self, rows: &[WindowMetricRow]) -> io::Result<()> {
        for row in rows.iter().filter(|r| r.metric == "count" && r.feature.is_none()) {
            tracing::info!(
                model = %row.model,
                model_version = %row.model_version,
                segment = %row.segment,
                window_start = %crate::timestamp::format_rfc3339_ms(row.window_start_ms),
                events = row.value,
                "window closed"
            );
        }
        match &mut self.inner {
            Some(sink) => sink.write_rows(rows),
            None => Ok(()),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match &mut self.inner {
            Some(sink) => sink.flush(),
            None => Ok(()),
        }
    }
    fn tick(&mut self) -> bool {
        match &mut self.inner {
            Some(sink) => sink.tick(),
            None => false,
        }
    }
    fn backpressure(&mut self) -> bool {
        match &mut self.inner {
            Some(sink) => sink.backpressure(),
            None => false,
        }
    }
    fn output_positions(
        &mut self,
        positions: &mut std::collections::BTreeMap<String, crate::output::recovery::OutputPosition>,
    ) -> io::Result<()> {
        match &mut self.inner {
            Some(sink) => sink.output_positions(positions),
            None => Ok(()),
        }
    }
    fn recover_outputs(
        &mut self,
        positions: &std::collections::BTreeMap<String, crate::output::recovery::OutputPosition>,
    ) -> io::Result<()> {
        match &mut self.inner {
            Some(sink) => sink.recover_outputs(positions),
            None => Ok(()),
        }
    }
}

/// Runs the daemon until `shutdown` is triggered. Extra rows go to `sink`
/// as well when given (tests use a channel). Setting `reload` reloads the
/// rule files (SIGHUP does, through the CLI); with no config file to
/// re-read, only the rules are reloaded.
pub fn run_daemon(
    config: &Config,
    telemetry: Arc<Telemetry>,
    shutdown: &Shutdown,
    reload: &Arc<AtomicBool>,
    extra_sink: Option<Box<dyn WindowSink + Send>>,
) -> Result<KafkaSummary, RunError> {
    run_daemon_with_config_file(config, None, telemetry, shutdown, reload, extra_sink)
}

/// [`run_daemon`] for a config loaded from `config_path`: a reload
/// (`reload` set by SIGHUP, or `POST /-/reload`) re-reads that file and
/// applies its reloadable settings (`docs/CONFIG.md`, "Reloading").
pub fn run_daemon_with_config_file(
    config: &Config,
    config_path: Option<&std::path::Path>,
    telemetry: Arc<Telemetry>,
    shutdown: &Shutdown,
    reload: &Arc<AtomicBool>,
    extra_sink: Option<Box<dyn WindowSink + Send>>,
) -> Result<KafkaSummary, RunError> {
    let mut pipeline = Pipeline::new(config, telemetry).map_err(RunError::Setup)?;
    let file_sink: Option<Box<dyn WindowSink + Send>> = match &config.output.window_metrics {
        Some(path) => Some(Box::new(
            AppendFileSink::open(path)
                .map_err(|source| RunError::Output { path: path.display().to_string(), source })?,
        )),
        None => None,
    };
    let inner: Option<Box<dyn WindowSink + Send>> = match (file_sink, extra_sink) {
        (Some(a), Some(b)) => Some(Box::new(Tee(a, b))),
        (a, b) => a.or(b),
    };
    let mut logging = LoggingSink { inner };
    let rules = crate::alerting::load_rules(config).map_err(|errors| RunError::Setup(errors.join("\n")))?;
    let audit = crate::alerting::open_audit(config)
        .map_err(|source| RunError::Output { path: "the audit log".to_string(), source })?;
    // Started even without notifiers, so that a reload can add some.
    let dispatcher =
        Arc::new(crate::notify::start(config, audit.clone(), pipeline.telemetry.clone()).map_err(RunError::Setup)?);
    let mut sink = AlertingSink::new(&mut logging, config, Arc::new(rules), None, audit)
        .map_err(|source| RunError::Output { path: "the audit log".to_string(), source })?;
    {
        let (submitting, resending) = (dispatcher.clone(), dispatcher.clone());
        sink.on_events = Some(Box::new(move |events| submitting.submit(events)));
        sink.on_active = Some(Box::new(move |active| resending.resend_firing(active)));
    }
    let metrics = Arc::new(
        crate::metrics::Metrics::new(
            pipeline.telemetry.clone(),
            config.otlp.as_ref(),
            config.pipeline.max_versions_per_model,
        )
        .map_err(RunError::Setup)?,
    );
    sink.metrics = Some(metrics.latest.clone());
    let (api, reload_requests) =
        crate::http::ApiState::new(config.http.token.as_ref().map(|t| t.expose().to_string()), Some(metrics));
    // Durable mode: the rows closed before a restart are served at once.
    // The history is a cache: if it cannot be opened the daemon runs on
    // without it (the outputs and checkpoints are what is durable).
    let history = config.state.dir.as_ref().and_then(|dir| match crate::http::history::History::open(dir) {
        Ok((history, rows)) => {
            api.windows.set(rows);
            Some(history)
        }
        Err(error) => {
            tracing::error!(
                path = %dir.join(crate::http::history::FILE_NAME).display(), %error,
                "the window history cannot be opened; the API serves only windows closed from now on"
            );
            None
        }
    });
    let server = crate::http::serve(&config.http.listen, api.clone())
        .map_err(|source| RunError::Http { listen: config.http.listen.clone(), source })?;
    *pipeline.telemetry.http_address.lock().expect("telemetry lock") = Some(server.address.to_string());
    if let (Some(cluster), Some(kafka)) = (&config.cluster, &config.kafka) {
        let instance =
            crate::sources::members::instance_name(cluster.advertised_url.as_deref(), &server.address.to_string());
        let models = config.models.iter().map(|m| m.name.clone()).collect();
        let describer =
            crate::sources::members::ClusterDescriber::new(kafka, &instance, &cluster.partials_topic, models);
        *api.cluster.lock().expect("cluster lock") = Some(Arc::new(describer));
    }
    sink.live = Some(Live {
        config: config.clone(),
        config_path: config_path.map(std::path::Path::to_path_buf),
        dispatcher: Some(dispatcher.clone()),
        last_evaluation: std::time::Instant::now(),
        api: Some(api.clone()),
        history,
    });
    api.models.set(
        config
            .models
            .iter()
            .map(|m| {
                serde_json::json!({
                    "name": m.name,
                    "task": m.task,
                    "baseline": m.baseline.as_ref().map(|b| b.display().to_string()),
                })
            })
            .collect(),
    );
    let durability = restore_checkpoint(config, &mut pipeline, &mut sink)?;
    sink.publish();
    let readiness = &pipeline.telemetry.readiness;
    readiness.pipeline_running.store(true, std::sync::atomic::Ordering::Relaxed);
    let telemetry = pipeline.telemetry.clone();
    let reloads = crate::daemon::Reloads { signal: reload, http: Some(reload_requests) };
    let summary = crate::daemon::run(config, &mut pipeline, sink, reloads, shutdown, durability);
    telemetry.readiness.pipeline_running.store(false, std::sync::atomic::Ordering::Relaxed);
    if !dispatcher.wait_idle(std::time::Duration::from_secs(5)) {
        tracing::warn!(pending = dispatcher.pending(), "notifications still pending at shutdown; kept in the outbox");
    }
    Ok(summary?)
}

/// The join store's failures and recovery make the daemon not ready and
/// ready again (`state_writable`), like the other parts that write to disk.
fn report_join_store_status(store: &JoinStore) {
    store.set_status_hook(Box::new(|failure| {
        use crate::telemetry::{Storage, storage_status};
        storage_status(Storage::JoinStore, failure.is_some(), &failure.unwrap_or(""));
    }));
}

/// Durable mode (a state dir): restores the newest usable checkpoint into
/// the pipeline and the alerting sink, prepares the output files, and
/// returns what the daemon's loop needs to checkpoint on.
fn restore_checkpoint(
    config: &Config,
    pipeline: &mut Pipeline,
    sink: &mut dyn WindowSink,
) -> Result<Option<Durability>, RunError> {
    let Some(dir) = config.state.checkpoint_dir() else { return Ok(None) };
    if config.cluster.is_some() {
        // The windows' state lives in the partials topic (what the sources
        // read, the mergers' marks); the state dir keeps the notification
        // outbox, the audit log and the API's window history.
        tracing::info!(dir = %dir.display(), "cluster: no checkpoints; the partials topic holds the windows' state");
        return Ok(None);
    }
    let setup = |e: crate::checkpoint::CheckpointError| RunError::Setup(format!("checkpoints: {e}"));
    let mut store = CheckpointStore::open(&dir).map_err(setup)?;
    let join_store_setup = |e: crate::join::store::JoinStoreError| RunError::Setup(e.to_string());
    let live_joins = config.state.join_store_dir().expect("a state dir");
    let Some(loaded) = store.load_latest().map_err(setup)? else {
        tracing::info!(dir = %dir.display(), "no checkpoint yet: starting empty");
        let joins = JoinStore::open_empty(&live_joins, config.state.join_memory).map_err(join_store_setup)?;
        report_join_store_status(&joins);
        pipeline.engine.use_join_store(&joins, config.pipeline.max_pending_joins);
        return Ok(Some(Durability::new(store, config.state.checkpoint_interval, Default::default())));
    };
    let checkpoint = loaded.checkpoint;
    // The joins live on disk: the store as the checkpoint left it (or
    // empty, for a checkpoint with its joins in the file, which are then
    // moved into the store).
    let joins = match &checkpoint.join_store {
        Some(name) => JoinStore::restore(&dir.join(name), &live_joins, config.state.join_memory),
        None => JoinStore::open_empty(&live_joins, config.state.join_memory),
    }
    .map_err(join_store_setup)?;
    report_join_store_status(&joins);
    pipeline.engine.use_join_store(&joins, config.pipeline.max_pending_joins);
    let models = pipeline.restore(checkpoint.models, checkpoint.window_spec, checkpoint.counters);
    if let Some(alerts) = checkpoint.alerts
        && let Err(error) = sink.restore_alerts(alerts)
    {
        tracing::error!(%error, "the checkpoint's alert states could not be restored; alerts start over");
    }
    sink.recover_outputs(&checkpoint.outputs)
        .map_err(|source| RunError::Output { path: "an output file".to_string(), source })?;
    tracing::info!(
        path = %loaded.path.display(),
        created_at = %crate::timestamp::format_rfc3339_ms(checkpoint.created_at_ms),
        models,
        offsets = ?checkpoint.offsets,
        unusable_newer = loaded.skipped.len(),
        "restored from checkpoint"
    );
    let durability = Durability::new(store, config.state.checkpoint_interval, checkpoint.offsets);
    Ok(Some(if loaded.skipped.is_empty() { durability } else { durability.fell_back() }))
}

struct Tee(Box<dyn WindowSink + Send>, Box<dyn WindowSink + Send>);

impl WindowSink for Tee {
    fn write_rows(&mut self, rows: &[WindowMetricRow]) -> io::Result<()> {
        self.0.write_rows(rows)?;
        self.1.write_rows(rows)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()?;
        self.1.flush()
    }
    fn tick(&mut self) -> bool {
        let first = self.0.tick();
        self.1.tick() || first
    }
    fn backpressure(&mut self) -> bool {
        let first = self.0.backpressure();
        self.1.backpressure() || first
    }
    fn output_positions(
        &mut self,
        positions: &mut std::collections::BTreeMap<String, crate::output::recovery::OutputPosition>,
    ) -> io::Result<()> {
        self.0.output_positions(positions)?;
        self.1.output_positions(positions)
    }
    fn recover_outputs(
        &mut self,
        positions: &std::collections::BTreeMap<String, crate::output::recovery::OutputPosition>,
    ) -> io::Result<()> {
        self.0.recover_outputs(positions)?;
        self.1.recover_outputs(positions)
    }
}
