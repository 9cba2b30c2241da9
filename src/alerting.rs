//! The glue between closed windows and alerts: a [`WindowSink`] that passes
//! rows on, evaluates the rules on them, and writes the transitions to the
//! alerts file and the audit log. `replay` and `run` both wrap their row
//! sink in it: `replay` calls it inline, the daemon runs it on the
//! alerting stage's thread (`crate::daemon::stage`), where it also
//! evaluates `query:` rules on the wall clock and applies reloads.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter};
use std::path::Path;
use std::sync::Arc;

use serde_json::Value;

use crate::config::Config;
use crate::output::WindowSink;
use crate::output::alerts::{AlertsWriter, AuditLog};
use crate::rules::{AlertEngine, AlertEvent, RuleSet};
use crate::window_metrics::WindowMetricRow;

/// Loads the rule files the config names, checking notifier names against
/// the config's notifiers. Errors are `file:line: message` lines.
pub fn load_rules(config: &Config) -> Result<RuleSet, Vec<String>> {
    let files = config.rule_files().map_err(|e| vec![e.to_string()])?;
    let notifiers = config.notifiers.keys().cloned().collect();
    RuleSet::load(&files, Some(&notifiers)).map_err(|errors| errors.iter().map(ToString::to_string).collect())
}

/// Model name → what identifies its baseline (for the audit log).
pub fn baseline_identities(config: &Config) -> BTreeMap<String, Value> {
    let mut identities = BTreeMap::new();
    for model in &config.models {
        let Some(path) = &model.baseline else { continue };
        let Ok(baseline) = crate::baseline::Baseline::load(path) else { continue };
        identities.insert(
            model.name.clone(),
            serde_json::json!({
                "path": path.display().to_string(),
                "model": baseline.model,
                "version": baseline.version,
                "created_at": baseline.created_at,
                "source": baseline.source,
            }),
        );
    }
    identities
}

/// Receives each batch of new transitions (the notification stage).
pub type EventHandler<'a> = Box<dyn FnMut(&[AlertEvent]) + Send + 'a>;

/// Opens the audit log the config names (`alerting.audit_log`, else
/// `audit.ndjson` in the state dir), shared by rules and notification.
pub fn open_audit(config: &Config) -> io::Result<Option<Arc<std::sync::Mutex<AuditLog>>>> {
    match config.alerting.audit_log_path(&config.state) {
        Some(path) => Ok(Some(Arc::new(std::sync::Mutex::new(AuditLog::open(&path, baseline_identities(config))?)))),
        None => Ok(None),
    }
}

/// Receives the active alerts on each wall-clock evaluation.
pub type ActiveHandler<'a> = Box<dyn FnMut(&[crate::rules::Transition]) + Send + 'a>;

/// Rows in, rows out plus alert transitions.
pub struct AlertingSink<'a> {
    inner: &'a mut (dyn WindowSink + Send),
    pub engine: AlertEngine,
    alerts: Option<AlertsWriter<BufWriter<File>>>,
    audit: Option<Arc<std::sync::Mutex<AuditLog>>>,
    /// Every transition so far (kept for summaries and notification).
    pub events: Vec<AlertEvent>,
    /// Where new transitions are handed on (notification), if anywhere.
    pub on_events: Option<EventHandler<'a>>,
    /// Called on each wall-clock evaluation with the active alerts (the
    /// notification stage re-sends firing ones to Alertmanager).
    pub on_active: Option<ActiveHandler<'a>>,
    /// Wall-clock evaluation and reload (the daemon); `None` in a replay.
    pub live: Option<Live>,
    /// The gauges fed from closed windows and active alerts (the daemon).
    pub metrics: Option<Arc<crate::metrics::LatestRows>>,
}

/// What the daemon adds: query rules evaluated on the wall clock, config
/// reloads (asked for by SIGHUP or the HTTP API, passed on by the daemon's
/// loop), and the HTTP API's snapshots.
pub struct Live {
    /// The config in force: the one the daemon started with, with the
    /// reloadable settings of the latest successful reload.
    pub config: Config,
    /// The config file a reload re-reads; without one (the demo, tests) a
    /// reload re-reads only the rule files.
    pub config_path: Option<std::path::PathBuf>,
    /// The notification stage, whose notifiers a reload replaces.
    pub dispatcher: Option<Arc<crate::notify::Dispatcher>>,
    pub last_evaluation: std::time::Instant,
    /// The HTTP API's state (published snapshots).
    pub api: Option<Arc<crate::http::ApiState>>,
    /// The API's rows kept across restarts (durable mode).
    pub history: Option<crate::http::history::History>,
}

/// The loaded rules as the API lists them.
pub fn rules_json(rules: &RuleSet) -> Vec<Value> {
    rules
        .rules
        .iter()
        .map(|rule| {
            let (kind, sql) = match &rule.condition {
                crate::rules::ruleset::Condition::Expr { sql, .. } => ("expr", sql),
                crate::rules::ruleset::Condition::Query { sql } => ("query", sql),
            };
            serde_json::json!({
                "alert": rule.name,
                "group": rule.group,
                "file": rule.file,
                "line": rule.line,
                "sha256": rule.sha256,
                kind: sql,
                "for": rule.pending_for,
                "keep_firing_for": rule.keep_firing_for,
                "cooldown": rule.cooldown.map(|d| humantime::format_duration(d).to_string()),
                "notify": rule.notify,
            })
        })
        .collect()
}

impl<'a> AlertingSink<'a> {
    pub fn new(
        inner: &'a mut (dyn WindowSink + Send),
        config: &Config,
        rules: Arc<RuleSet>,
        alerts_path: Option<&Path>,
        audit: Option<Arc<std::sync::Mutex<AuditLog>>>,
    ) -> io::Result<AlertingSink<'a>> {
        let alerts = match alerts_path {
            Some(path) => Some(AlertsWriter::new(BufWriter::new(File::create(path)?))),
            None => None,
        };
        Ok(AlertingSink {
            inner,
            engine: AlertEngine::new(rules, config.alerting.history)
                .with_history_max_rows(config.alerting.history_max_rows),
            alerts,
            audit,
            events: Vec::new(),
            on_events: None,
            on_active: None,
            live: None,
            metrics: None,
        })
    }

    /// Publishes the active alerts and the rules to the HTTP API.
    pub fn publish(&self) {
        if let Some(metrics) = &self.metrics {
            metrics.set_active(&self.engine.active());
        }
        if let Some(Live { api: Some(api), .. }) = &self.live {
            api.alerts.set(self.engine.active());
            api.rules.set(rules_json(self.engine.rules()));
        }
    }

    /// Writes transitions (from a window batch or a timer tick).
    pub fn record(&mut self, events: Vec<AlertEvent>) -> io::Result<()> {
        for error in self.engine.errors.drain(..) {
            tracing::warn!(rule = %error.rule, error = %error.message, "rule evaluation failed");
        }
        if events.is_empty() {
            return Ok(());
        }
        for event in &events {
            let t = &event.transition;
            tracing::info!(
                alert = %t.alert, state = t.state, model = %t.model, feature = ?t.feature,
                window_end = %t.window_end, notify = ?t.notify, "alert transition"
            );
        }
        if let Some(alerts) = &mut self.alerts {
            alerts.write(&events)?;
        }
        if let Some(audit) = &self.audit {
            audit.lock().expect("audit lock").write(&events)?;
        }
        if let Some(on_events) = &mut self.on_events {
            on_events(&events);
        }
        // Kept for replay's summary; the daemon runs for months.
        if self.live.is_none() {
            self.events.extend(events);
        }
        self.publish();
        Ok(())
    }

    /// `cluster:`: `model`'s merging moved. Merged here now, its alerts
    /// are taken over from the previous merger's `state` (`None`: there
    /// was none, and what this instance held of the model from an earlier
    /// turn goes); merged elsewhere now (`None`), they go from here
    /// silently (they did not resolve).
    pub fn replace_model_alerts(&mut self, model: &str, state: Option<crate::rules::lifecycle::AlertSnapshot>) {
        let outcome = match state {
            Some(state) => self.engine.adopt_model(model, state).map(|taken| {
                tracing::info!(%model, instances = taken, "alert states taken over from the model's previous merger");
            }),
            None => self.engine.forget_model(model),
        };
        if let Err(error) = outcome {
            tracing::error!(%model, %error, "a model's alert state could not be taken over: its alerts start over");
        }
        self.publish();
    }

    /// Evaluates the query rules at `now_ms` (wall clock). Returns whether
    /// an alert changed state (a transition, and the notifications it
    /// queued).
    pub fn tick_rules(&mut self, now_ms: i64) -> io::Result<bool> {
        let events = self.engine.tick(now_ms);
        let changed = !events.is_empty();
        self.record(events)?;
        Ok(changed)
    }
}

/// A refused reload: each error logged, and the reply the API sends.
fn rejected(code: &'static str, message: &str, errors: Vec<String>) -> crate::http::ReloadRejection {
    for error in &errors {
        tracing::error!(%error, "reload rejected: {message}");
    }
    crate::http::ReloadRejection::new(code, message, errors)
}

impl AlertingSink<'_> {
    /// Reloads the config (SIGHUP, `POST /-/reload`): re-reads the config
    /// file when the daemon has one, and applies its reloadable settings
    /// (rules, notifiers, `alerting.evaluation_interval`; alert states of
    /// unchanged rules survive). Changed settings that need a restart are
    /// named in the report and the log; their running values stay. A config
    /// or rule set with an error is rejected whole: nothing changes.
    pub fn reload(&mut self) -> Result<crate::http::ReloadReport, crate::http::ReloadRejection> {
        let Some(live) = &mut self.live else {
            return Err(crate::http::ReloadRejection::new("not_running", "nothing to reload", Vec::new()));
        };
        let reloaded = match &live.config_path {
            Some(path) => Config::load(path).map_err(|error| {
                rejected(
                    "invalid_config",
                    "the new config was rejected; the previous config stays in force",
                    config_error_lines(&error),
                )
            })?,
            None => live.config.clone(),
        };
        let rules = load_rules(&reloaded).map_err(|errors| {
            rejected("invalid_rules", "the new rules were rejected; the previous rules stay in force", errors)
        })?;
        let specs = crate::notify::notifier_specs(&reloaded).map_err(|errors| {
            rejected("invalid_config", "the new config was rejected; the previous config stays in force", errors)
        })?;
        let restart_required = crate::config::reload::settings_needing_restart(&live.config, &reloaded);
        let notifiers: Vec<String> = reloaded.notifiers.keys().cloned().collect();
        if let Some(dispatcher) = &live.dispatcher {
            dispatcher.replace_notifiers(specs);
        }
        live.config = crate::config::reload::with_reloadable_settings(&live.config, &reloaded);
        let count = rules.rules.len();
        self.engine.replace_rules(Arc::new(rules));
        tracing::info!(rules = count, notifiers = notifiers.len(), "rules reloaded");
        if !restart_required.is_empty() {
            tracing::warn!(
                settings = %restart_required.join(", "),
                "changed settings need a restart to take effect; their running values stay in force"
            );
        }
        Ok(crate::http::ReloadReport { rules: count, notifiers, restart_required })
    }

    /// Reloads (see [`AlertingSink::reload`]), publishes the rules, and
    /// answers the HTTP request that asked, if one did. Returns whether the
    /// reload was applied (alert state may have changed: instances of
    /// edited or removed rules start over).
    pub fn reload_and_reply(&mut self, request: Option<crate::http::ReloadRequest>) -> bool {
        let outcome = self.reload();
        // Publish first: a client told "reloaded" must then see the new rules.
        self.publish();
        let applied = outcome.is_ok();
        if let Some(request) = request {
            let _ = request.reply.send(outcome);
        }
        applied
    }
}

/// A config error as lines, each naming the file (and the setting).
fn config_error_lines(error: &crate::config::ConfigError) -> Vec<String> {
    match error {
        crate::config::ConfigError::Invalid { origin, errors } => {
            errors.iter().map(|message| format!("{origin}: {message}")).collect()
        }
        other => vec![other.to_string()],
    }
}

impl WindowSink for AlertingSink<'_> {
    /// Evaluates the query rules when due, which can change alert state
    /// between batches (a silence rule firing) that the daemon must then
    /// checkpoint: such a transition is not made again by replayed events
    /// after a crash, but anew, at another time and with another key.
    fn tick(&mut self) -> bool {
        let mut changed = self.inner.tick();
        let Some(live) = &mut self.live else { return changed };
        if live.last_evaluation.elapsed() < live.config.alerting.evaluation_interval {
            return changed;
        }
        live.last_evaluation = std::time::Instant::now();
        let now = chrono::Utc::now().timestamp_millis();
        match self.tick_rules(now) {
            Ok(transitions) => changed |= transitions,
            Err(error) => {
                // The engine's state changed even if writing failed.
                changed = true;
                tracing::warn!(%error, "writing alert transitions failed");
            }
        }
        if let Some(on_active) = &mut self.on_active {
            on_active(&self.engine.active());
        }
        changed
    }

    fn write_rows(&mut self, rows: &[WindowMetricRow]) -> io::Result<()> {
        // Traced as one span per batch of closed windows, with the rule
        // evaluation and the notifications it queues as children.
        let span = tracing::info_span!("window_close", rows = rows.len(), windows = tracing::field::Empty);
        let _entered = span.enter();
        span.record("windows", rows.iter().filter(|r| r.metric == "count" && r.feature.is_none()).count());
        self.inner.write_rows(rows)?;
        if let Some(metrics) = &self.metrics {
            metrics.update(rows);
        }
        if let Some(Live { api: Some(api), history, .. }) = &mut self.live {
            match history {
                Some(history) => history.record(rows, api),
                None => api.push_rows(rows),
            }
        }
        let events = tracing::info_span!("rules_evaluate").in_scope(|| self.engine.evaluate(rows));
        tracing::info_span!("alerts_record", transitions = events.len()).in_scope(|| self.record(events))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()?;
        if let Some(audit) = &self.audit {
            audit.lock().expect("audit lock").flush()?;
        }
        Ok(())
    }

    fn backpressure(&mut self) -> bool {
        let rows = self.inner.backpressure();
        let audit = self.audit.as_ref().is_some_and(|audit| audit.lock().expect("audit lock").backpressure());
        rows || audit
    }

    fn output_positions(
        &mut self,
        positions: &mut BTreeMap<String, crate::output::recovery::OutputPosition>,
    ) -> io::Result<()> {
        self.inner.output_positions(positions)?;
        if let Some(Live { history: Some(history), .. }) = &mut self.live {
            history.sync();
        }
        if let Some(audit) = &self.audit {
            let (path, length) = audit.lock().expect("audit lock").position()?;
            positions.insert(path, length);
        }
        Ok(())
    }

    fn recover_outputs(
        &mut self,
        positions: &BTreeMap<String, crate::output::recovery::OutputPosition>,
    ) -> io::Result<()> {
        self.inner.recover_outputs(positions)?;
        if let Some(audit) = &self.audit {
            audit.lock().expect("audit lock").recover(positions)?;
        }
        Ok(())
    }

    fn alert_snapshot(&self) -> Option<Result<crate::rules::lifecycle::AlertSnapshot, String>> {
        Some(self.engine.snapshot())
    }

    fn restore_alerts(&mut self, snapshot: crate::rules::lifecycle::AlertSnapshot) -> Result<(), String> {
        let restored = self.engine.restore(snapshot)?;
        tracing::info!(instances = restored, "alert states restored");
        self.publish();
        Ok(())
    }
}
