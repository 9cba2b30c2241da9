//! The alerting stage: a thread of its own that owns everything rows go to
//! once the engine has made them — the `window_metrics` output, the HTTP
//! API's rows and history, the metrics' latest values, and the
//! [`AlertingSink`]: rules (`query:` rules planned through DataFusion on
//! the wall clock included), the alert lifecycle, the alerts file and
//! audit log, and the notification outbox. The loop feeds it through a
//! bounded channel ([`ROWS_IN_FLIGHT`] inputs), so a slow rule or a slow
//! disk holds up consumption only once that many batches of rows wait.
//!
//! A checkpoint goes through it as a barrier ([`StageInput::Snapshot`]):
//! sent right after the rows the checkpoint's state has produced, answered
//! once those are written, with the outputs' lengths (written and fsynced)
//! and the alert engine's state — exactly what the checkpoint's events
//! made of them. Wall-clock work the stage does itself (evaluating `query:`
//! rules, retrying writes to a failing disk) is reported through two flags
//! the loop reads on its tick: alert state changed since the last snapshot
//! (to checkpoint it), and an output's retry buffer is full (to pause
//! consumption). The thread ends when the loop drops its sender, after
//! writing everything queued.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::time::Instant;

use crate::alerting::AlertingSink;
use crate::output::WindowSink;
use crate::output::recovery::OutputPosition;
use crate::rules::lifecycle::AlertSnapshot;
use crate::window_metrics::WindowMetricRow;

/// Inputs queued for the stage at most (each a batch of rows, or a request).
pub const ROWS_IN_FLIGHT: usize = 16;

/// What the loop sends the stage, handled in order.
pub enum StageInput {
    /// Rows of closed windows, in the order the engine made them.
    Rows(Vec<WindowMetricRow>),
    /// A checkpoint's barrier: everything before it is written; the reply
    /// is what the checkpoint records of the stage's state.
    Snapshot(SyncSender<Result<StageSnapshot, String>>),
    /// Write out everything queued (shutdown without a state dir; a
    /// cluster merger's marks).
    Flush(SyncSender<io::Result<()>>),
    /// `cluster:` a merger's marks: once every row sent before is written
    /// (an error when records still wait for a failing disk), the state
    /// of each model's alerts.
    AlertStates(AlertStatesRequest),
    /// `cluster:` a model's merging moved: its alerts are taken over from
    /// its previous merger's mark (merged here now), or forgotten (`None`:
    /// merged elsewhere now, or here with no mark).
    ReplaceModelAlerts { model: String, state: Option<AlertSnapshot> },
    /// Reload the config's rules and notifiers (SIGHUP when `None`, else
    /// `POST /-/reload`, which gets the outcome).
    Reload(Option<crate::http::ReloadRequest>),
}

/// [`StageInput::AlertStates`]: the models, and for each the most bytes
/// of its query-rule history rows to include (`None`: none).
pub struct AlertStatesRequest {
    pub models: Vec<(String, Option<usize>)>,
    pub reply: SyncSender<io::Result<Vec<ModelAlerts>>>,
}

/// A model's alert state for its merger's mark.
pub struct ModelAlerts {
    /// [`AlertSnapshot::to_msgpack`]'s bytes.
    pub state: Vec<u8>,
    /// A rule reads the history (a `query:` rule).
    pub keeps_history: bool,
}

/// The stage's share of a checkpoint.
pub struct StageSnapshot {
    /// Each output file and its durable length.
    pub outputs: BTreeMap<String, OutputPosition>,
    pub alerts: Option<AlertSnapshot>,
}

/// What the stage tells the loop between inputs.
#[derive(Default)]
struct Flags {
    /// Alert state changed on the wall clock (or by a reload) since the
    /// last snapshot.
    alerts_changed: AtomicBool,
    /// An output's retry buffer is full.
    backpressure: AtomicBool,
}

/// The loop's end of the stage; as a [`WindowSink`], it queues rows.
pub struct AlertingStage {
    input: SyncSender<StageInput>,
    flags: Arc<Flags>,
}

fn stage_gone() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the alerting stage stopped")
}

impl AlertingStage {
    /// Starts the stage's thread on `scope`, owning `sink`. The thread
    /// ends at the first error writing rows, returning it (which stops the
    /// daemon).
    pub fn spawn<'scope, 'env>(
        scope: &'scope std::thread::Scope<'scope, 'env>,
        sink: AlertingSink<'env>,
    ) -> io::Result<(AlertingStage, std::thread::ScopedJoinHandle<'scope, io::Result<()>>)> {
        let (input, inputs) = sync_channel(ROWS_IN_FLIGHT);
        let flags = Arc::new(Flags::default());
        let shared = flags.clone();
        let handle = std::thread::Builder::new()
            .name("driftwatch-alerting".into())
            .spawn_scoped(scope, move || run(sink, inputs, &shared))?;
        Ok((AlertingStage { input, flags }, handle))
    }

    /// The barrier of a checkpoint: waits until the stage has written every
    /// row sent before, and returns its outputs' durable lengths and alert
    /// state.
    pub fn snapshot(&self) -> Result<StageSnapshot, String> {
        let (reply, answer) = sync_channel(1);
        self.input.send(StageInput::Snapshot(reply)).map_err(|_| stage_gone().to_string())?;
        answer.recv().map_err(|_| stage_gone().to_string())?
    }

    /// Waits until the stage has written every row sent before (an error
    /// when records still wait for a failing disk).
    pub fn wait_written(&self) -> io::Result<()> {
        let (reply, answer) = sync_channel(1);
        self.input.send(StageInput::Flush(reply)).map_err(|_| stage_gone())?;
        answer.recv().map_err(|_| stage_gone())?
    }

    /// `cluster:` waits until the stage has written every row sent before
    /// (an error when records still wait for a failing disk), then returns
    /// the state of each of `models`' alerts ([`StageInput::AlertStates`]).
    pub fn alert_states(&self, models: Vec<(String, Option<usize>)>) -> io::Result<Vec<ModelAlerts>> {
        let (reply, answer) = sync_channel(1);
        self.input.send(StageInput::AlertStates(AlertStatesRequest { models, reply })).map_err(|_| stage_gone())?;
        answer.recv().map_err(|_| stage_gone())?
    }

    /// `cluster:` has the stage take `model`'s alerts over from `state`
    /// (or forget them: `None`), in order with the rows sent before and
    /// after ([`StageInput::ReplaceModelAlerts`]).
    pub fn replace_model_alerts(&self, model: &str, state: Option<AlertSnapshot>) -> io::Result<()> {
        let input = StageInput::ReplaceModelAlerts { model: model.to_string(), state };
        self.input.send(input).map_err(|_| stage_gone())
    }

    /// Has the stage reload the config.
    pub fn reload(&self, request: Option<crate::http::ReloadRequest>) -> io::Result<()> {
        self.input.send(StageInput::Reload(request)).map_err(|_| stage_gone())
    }

    /// Alert state changed on the wall clock since the last snapshot.
    pub fn alerts_changed(&self) -> bool {
        self.flags.alerts_changed.load(Ordering::SeqCst)
    }

    /// An output's retry buffer is full: consumption should pause.
    pub fn backpressure(&self) -> bool {
        self.flags.backpressure.load(Ordering::SeqCst)
    }
}

impl WindowSink for AlertingStage {
    fn write_rows(&mut self, rows: &[WindowMetricRow]) -> io::Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        self.input.send(StageInput::Rows(rows.to_vec())).map_err(|_| stage_gone())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.wait_written()
    }
}

/// The stage's thread: inputs in order, and every [`super::TICK`] the
/// sink's wall-clock work and the backpressure check.
fn run(mut sink: AlertingSink<'_>, inputs: Receiver<StageInput>, flags: &Flags) -> io::Result<()> {
    let mut next_tick = Instant::now();
    loop {
        match inputs.recv_timeout(next_tick.saturating_duration_since(Instant::now())) {
            Ok(StageInput::Rows(rows)) => {
                sink.write_rows(&rows)?;
                flags.backpressure.store(sink.backpressure(), Ordering::SeqCst);
            }
            Ok(StageInput::Snapshot(reply)) => {
                // Changes from here on belong to the next checkpoint.
                flags.alerts_changed.store(false, Ordering::SeqCst);
                let _ = reply.send(snapshot(&mut sink));
            }
            Ok(StageInput::Flush(reply)) => {
                let _ = reply.send(sink.flush());
            }
            Ok(StageInput::AlertStates(request)) => {
                let _ = request.reply.send(alert_states(&mut sink, &request.models));
            }
            Ok(StageInput::ReplaceModelAlerts { model, state }) => {
                sink.replace_model_alerts(&model, state);
                flags.alerts_changed.store(true, Ordering::SeqCst);
            }
            Ok(StageInput::Reload(request)) => {
                if sink.reload_and_reply(request) {
                    flags.alerts_changed.store(true, Ordering::SeqCst);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        let now = Instant::now();
        if now >= next_tick {
            next_tick = now + super::TICK;
            // Query rules evaluated when due: a slow one holds up this
            // thread only.
            if sink.tick() {
                flags.alerts_changed.store(true, Ordering::SeqCst);
            }
            flags.backpressure.store(sink.backpressure(), Ordering::SeqCst);
        }
    }
    // What the loop needed written it has flushed through the stage
    // (a checkpoint's barrier, or `Flush` at shutdown); this is a last try.
    if let Err(error) = sink.flush() {
        tracing::warn!(%error, "outputs not all written at exit");
    }
    Ok(())
}

/// Flushes and fsyncs the outputs, then takes their lengths and the alert
/// state (see [`WindowSink::output_positions`]).
fn snapshot(sink: &mut AlertingSink<'_>) -> Result<StageSnapshot, String> {
    let mut outputs = BTreeMap::new();
    sink.flush().map_err(|e| format!("flushing outputs: {e}"))?;
    sink.output_positions(&mut outputs).map_err(|e| format!("output positions: {e}"))?;
    let alerts = sink.alert_snapshot().transpose().map_err(|e| format!("alert state: {e}"))?;
    Ok(StageSnapshot { outputs, alerts })
}

/// Flushes the outputs, then takes the state of each model's alerts.
fn alert_states(sink: &mut AlertingSink<'_>, models: &[(String, Option<usize>)]) -> io::Result<Vec<ModelAlerts>> {
    sink.flush()?;
    let keeps_history = sink.engine.keeps_history();
    models
        .iter()
        .map(|(model, history_bytes)| {
            let history_bytes = history_bytes.filter(|_| keeps_history);
            let state = sink.engine.model_snapshot(model, history_bytes).map_err(io::Error::other)?;
            Ok(ModelAlerts { state: state.to_msgpack(), keeps_history })
        })
        .collect()
}
