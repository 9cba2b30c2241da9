//! The `replay` driver: the engine over files instead of Kafka.
//!
//! Predictions are read in micro-batches of `pipeline.batch_size` lines;
//! label files are read alongside and each label micro-batch is applied once
//! the predictions have reached its earliest timestamp, so a replay sees
//! events in the order a live stream would have delivered them. Batching is
//! by count only (never by time), so the same input always gives
//! byte-identical output. At the end of input every window is closed.
//!
//! As in the daemon, each model's labels hold its performance watermark
//! while labels are still to be read (see
//! [`crate::engine::Engine::set_labels_holding`]): a batch of predictions
//! that spans more event time than `label_horizon` cannot expire its
//! predictions before the labels of that time are read. With the engine
//! judging lateness per event, not per batch, the rows and transitions do
//! not depend on `batch_size` and equal the daemon's for the same events.
//! When the label files end, the hold is released (the daemon releases it
//! when labels have been silent for `windows.idle_timeout`).
//!
//! Each input file is a source partition, as a Kafka partition is in the
//! daemon (file k of `--predictions` is partition k, likewise for
//! `--labels`): predictions files are read in turns of `batch_size` lines,
//! round-robin, by one lane or by `--lanes N` threads
//! ([`crate::drivers::lanes`]) with the same rows; each keeps its own
//! watermark, and every predictions file is declared before reading, so it
//! holds the watermark until its first event and stops holding when it
//! ends. There is no wall clock: no partition goes idle but by ending.
//!
//! With `--checkpoint-every N` (and `state.dir`), a replay takes a
//! checkpoint as the daemon does, each time N more predictions have been
//! read, and reports what each cost: how long the loop paused (the joins'
//! recent entries written, the join store checkpointed, the state
//! encoded), how long until the file was durable, and their sizes. It
//! measures what checkpoints cost at the volume replayed; the files are
//! removed at the end (a replay does not resume).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::decode::LabelBatch;
use crate::drivers::lanes::LaneSet;
use crate::output::WindowSink;
use crate::pipeline::Pipeline;
use crate::sources::files::{FileSourceError, LineSource};
use crate::telemetry::Telemetry;
use crate::window::PartitionId;

/// Errors that stop a replay (bad events never do).
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Source(#[from] FileSourceError),
    #[error("writing window_metrics: {0}")]
    Output(#[from] std::io::Error),
    #[error("{0}")]
    Setup(String),
    /// An output's writes kept failing until its retry buffer was full: a
    /// replay stops rather than wait for the disk (nothing was dropped
    /// silently; rerun once the disk works).
    #[error("stopping the replay: an output's retry buffer is full: {0}")]
    OutputStalled(std::io::Error),
    /// The join store kept failing until a join held its most writes in
    /// memory (as the daemon would pause): a replay stops instead.
    #[error("stopping the replay: the join store fails: {0}")]
    JoinStoreStalled(String),
    /// A checkpoint asked for with `--checkpoint-every` could not be taken
    /// (a replay measures them; it does not go on without).
    #[error("taking a checkpoint: {0}")]
    Checkpoint(String),
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReplaySummary {
    pub predictions: u64,
    pub labels: u64,
    pub invalid: u64,
    /// Labels paired with their prediction.
    pub labels_joined: u64,
    /// Labels whose prediction never came within `label_horizon`.
    pub labels_unmatched: u64,
    /// Labels whose event id was already paired.
    pub labels_duplicate: u64,
    /// Labels that paired after their prediction's windows were final.
    pub labels_late: u64,
    /// Predictions whose label never came within `label_horizon`.
    pub predictions_unlabelled: u64,
    pub rows: u64,
    pub windows_closed: u64,
    pub seconds: f64,
    /// The checkpoints taken (`--checkpoint-every`), in order.
    pub checkpoints: Vec<ReplayCheckpoint>,
}

/// What one checkpoint of a replay cost.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReplayCheckpoint {
    /// Predictions read when it was taken.
    pub predictions: u64,
    /// Predictions and labels waiting in the joins then.
    pub pending_joins: u64,
    /// How long the loop stopped: the joins' recent entries written, the
    /// join store checkpointed, the state encoded (the daemon writes the
    /// file on a thread of its own meanwhile).
    pub paused: Duration,
    /// Until the file was written, fsynced and renamed into place.
    pub durable: Duration,
    /// The checkpoint file's size.
    pub file_bytes: u64,
    /// The join store's checkpoint (hard links to the store's files), when
    /// the joins are on disk.
    pub join_store_bytes: u64,
}

/// How a replay runs, beyond its inputs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReplayOptions {
    /// Lanes (at most one per predictions file; the rows are
    /// byte-identical for any number).
    pub lanes: usize,
    /// Take a checkpoint each time this many more predictions have been
    /// read (needs `state.dir`, and one lane).
    pub checkpoint_every: Option<u64>,
}

/// Replays `predictions` and `labels` files through a fresh pipeline, with
/// `pipeline.lanes` lanes.
pub fn replay(
    config: &Config,
    predictions: &[PathBuf],
    labels: &[PathBuf],
    sink: &mut dyn WindowSink,
    telemetry: Arc<Telemetry>,
) -> Result<ReplaySummary, ReplayError> {
    replay_with_lanes(config, predictions, labels, sink, telemetry, config.pipeline.lanes())
}

/// Where the predictions come from: read and aggregated here (one lane),
/// or by lane threads ([`LaneSet`]).
enum Predictions {
    InLine(Vec<LineSource>),
    Lanes(LaneSet),
}

/// Replays with `lanes` lanes (at most one per predictions file; the rows
/// are byte-identical for any number).
pub fn replay_with_lanes(
    config: &Config,
    predictions: &[PathBuf],
    labels: &[PathBuf],
    sink: &mut dyn WindowSink,
    telemetry: Arc<Telemetry>,
    lanes: usize,
) -> Result<ReplaySummary, ReplayError> {
    let options = ReplayOptions { lanes, checkpoint_every: None };
    replay_with_options(config, predictions, labels, sink, telemetry, &options)
}

/// Replays as `options` say.
pub fn replay_with_options(
    config: &Config,
    predictions: &[PathBuf],
    labels: &[PathBuf],
    sink: &mut dyn WindowSink,
    telemetry: Arc<Telemetry>,
    options: &ReplayOptions,
) -> Result<ReplaySummary, ReplayError> {
    let started = Instant::now();
    let lanes = options.lanes;
    // Declared before the pipeline, so they are removed after the store
    // closes.
    let store_dir = ReplayDir::create(config, "joins")?;
    let mut checkpoints = match options.checkpoint_every {
        None => None,
        Some(_) if lanes.min(predictions.len()) > 1 => {
            return Err(ReplayError::Setup(
                "--checkpoint-every measures a replay in one lane: add --lanes 1".to_string(),
            ));
        }
        Some(every) => match ReplayDir::create(config, "checkpoints")? {
            None => {
                return Err(ReplayError::Setup(
                    "--checkpoint-every needs state.dir in the config (where checkpoints are written)".to_string(),
                ));
            }
            Some(dir) => {
                let store =
                    crate::checkpoint::CheckpointStore::open(&dir.0).map_err(|e| ReplayError::Setup(e.to_string()))?;
                Some(ReplayCheckpoints {
                    every: every.max(1),
                    next_at: every.max(1),
                    store,
                    taken: Vec::new(),
                    _dir: dir,
                })
            }
        },
    };
    let mut pipeline = Pipeline::new(config, telemetry.clone()).map_err(ReplayError::Setup)?;
    if let Some(dir) = &store_dir {
        let store = crate::join::store::JoinStore::open(&dir.0, config.state.join_memory)
            .map_err(|e| ReplayError::Setup(e.to_string()))?;
        pipeline.engine.use_join_store(&store, config.pipeline.max_pending_joins);
    }
    let mut source = if lanes.min(predictions.len()) > 1 {
        let topic = pipeline.predictions_topic().to_string();
        Predictions::Lanes(
            LaneSet::start(config, &pipeline.registry, predictions, lanes, telemetry.clone(), &topic)
                .map_err(ReplayError::Setup)?,
        )
    } else {
        let mut sources = Vec::with_capacity(predictions.len());
        for path in predictions {
            sources.push(LineSource::new(std::slice::from_ref(path))?);
        }
        Predictions::InLine(sources)
    };
    let mut label_feed = LabelFeed::new(labels, config.pipeline.batch_size.max(1))?;
    let batch_size = config.pipeline.batch_size.max(1);
    let mut line = Vec::with_capacity(4096);
    let mut max_prediction_time = i64::MIN;
    let mut rows = 0u64;
    let models = config.models.len();
    if label_feed.holding {
        for model in 0..models {
            rows += pipeline.set_labels_holding(model, true, sink)? as u64;
        }
    }
    // Each predictions file is a partition, declared before reading so a
    // file read later holds the watermark until its first event.
    let files: Vec<PartitionId> = (0..predictions.len()).map(partition_of).collect();
    pipeline.engine.declare_partitions(&files);
    let mut live = vec![true; predictions.len()];
    // The files are read in turns of batch_size lines, round-robin.
    loop {
        for file in 0..predictions.len() {
            if !live[file] {
                continue;
            }
            let ended = match &mut source {
                Predictions::InLine(sources) => {
                    let mut ended = false;
                    for _ in 0..batch_size {
                        if !sources[file].next_line(&mut line)? {
                            ended = true;
                            break;
                        }
                        let location = sources[file].location();
                        let _ = pipeline.decode_prediction(&line, &location);
                    }
                    let batches = pipeline.decoder.finish_predictions();
                    max_prediction_time = max_prediction_time.max(max_time(batches.iter()));
                    pipeline.push_prediction_batches(&batches, partition_of(file));
                    ended
                }
                Predictions::Lanes(lanes) => {
                    let turn = lanes.next(file, &mut pipeline.registry)?;
                    max_prediction_time = max_prediction_time.max(max_time(turn.batches.iter().map(|(b, _)| b)));
                    for (batch, output) in turn.batches {
                        pipeline.apply_lane_output(Some(&batch), output);
                    }
                    let ended = turn.ended.is_some();
                    for output in turn.ended.into_iter().flatten() {
                        pipeline.apply_lane_output(None, output);
                    }
                    ended
                }
            };
            if ended {
                live[file] = false;
                rows += pipeline.partition_ended(partition_of(file), false, sink)? as u64;
            }
            let predictions_done = !live.iter().any(|l| *l);
            rows += label_feed.step(&mut pipeline, sink, max_prediction_time, predictions_done, &mut line)?;
            rows += pipeline.emit(sink)? as u64;
            if sink.backpressure() {
                sink.flush().map_err(ReplayError::OutputStalled)?;
            }
            if let Some(checkpoints) = &mut checkpoints {
                checkpoints.take_if_due(&mut pipeline)?;
            }
            pipeline.engine.retry_join_store();
            if pipeline.engine.join_store_backed_up() {
                let failure = pipeline.engine.join_store().and_then(|s| s.failure()).unwrap_or_default();
                return Err(ReplayError::JoinStoreStalled(failure));
            }
        }
        if !live.iter().any(|l| *l) {
            break;
        }
    }
    if predictions.is_empty() {
        rows += label_feed.step(&mut pipeline, sink, max_prediction_time, true, &mut line)?;
    }
    drop(source);
    rows += pipeline.finish(sink)? as u64;
    sink.flush()?;
    let counters = &pipeline.engine.counters;
    let join = pipeline.engine.join_counters();
    Ok(ReplaySummary {
        predictions: counters.predictions,
        labels: counters.labels,
        invalid: telemetry.invalid_total(),
        labels_joined: join.matched,
        labels_unmatched: join.labels_unmatched,
        labels_duplicate: join.duplicate_labels,
        labels_late: counters.labels_late,
        predictions_unlabelled: join.predictions_expired,
        rows,
        windows_closed: counters.windows_closed,
        seconds: started.elapsed().as_secs_f64(),
        checkpoints: checkpoints.map(|c| c.taken).unwrap_or_default(),
    })
}

/// A replay's join store or checkpoints, when the config has a state dir:
/// a directory of its own beside the daemon's
/// (`<state.dir>/replay-<what>-<pid>`, so a replay never touches a running
/// daemon's state), removed at the end.
struct ReplayDir(PathBuf);

impl ReplayDir {
    fn create(config: &Config, what: &str) -> Result<Option<ReplayDir>, ReplayError> {
        let Some(state) = &config.state.dir else { return Ok(None) };
        let dir = state.join(format!("replay-{what}-{}", std::process::id()));
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        Ok(Some(ReplayDir(dir)))
    }
}

impl Drop for ReplayDir {
    fn drop(&mut self) {
        if !self.0.exists() {
            return;
        }
        if let Err(error) = std::fs::remove_dir_all(&self.0) {
            tracing::warn!(path = %self.0.display(), %error, "removing the replay's directory failed");
        }
    }
}

/// The checkpoints of a replay (`--checkpoint-every`).
struct ReplayCheckpoints {
    every: u64,
    /// The count of predictions read at which the next is taken.
    next_at: u64,
    store: crate::checkpoint::CheckpointStore,
    taken: Vec<ReplayCheckpoint>,
    _dir: ReplayDir,
}

impl ReplayCheckpoints {
    /// Takes a checkpoint, as the daemon does between two batches, once
    /// enough predictions have been read since the last; records its cost.
    fn take_if_due(&mut self, pipeline: &mut Pipeline) -> Result<(), ReplayError> {
        let predictions = pipeline.engine.counters.predictions;
        if predictions < self.next_at {
            return Ok(());
        }
        self.next_at = predictions + self.every;
        let failed = ReplayError::Checkpoint;
        let started = Instant::now();
        let pending_joins = pipeline.engine.pending_joins() as u64;
        let mut join_store = None;
        let mut join_store_bytes = 0;
        if pipeline.engine.join_store().is_some() {
            let name = crate::checkpoint::join_store_name(self.store.next_sequence());
            let target = self.store.dir().join(&name);
            pipeline.engine.checkpoint_join_store(&target).map_err(|e| failed(e.to_string()))?;
            join_store_bytes = directory_bytes(&target).map_err(|e| failed(format!("{}: {e}", target.display())))?;
            join_store = Some(name);
        }
        let outputs = std::collections::BTreeMap::new();
        let bytes = pipeline
            .encode_checkpoint(&crate::checkpoint::Offsets::new(), None, &outputs, join_store.as_deref())
            .map_err(|e| failed(e.to_string()))?;
        let paused = started.elapsed();
        self.store.write(&bytes).map_err(|e| failed(e.to_string()))?;
        let checkpoint = ReplayCheckpoint {
            predictions,
            pending_joins,
            paused,
            durable: started.elapsed(),
            file_bytes: bytes.len() as u64,
            join_store_bytes,
        };
        tracing::info!(
            predictions,
            pending_joins,
            paused_ms = checkpoint.paused.as_millis() as u64,
            durable_ms = checkpoint.durable.as_millis() as u64,
            file_bytes = checkpoint.file_bytes,
            join_store_bytes,
            "checkpoint taken"
        );
        self.taken.push(checkpoint);
        Ok(())
    }
}

/// The bytes of the files in `dir`.
fn directory_bytes(dir: &std::path::Path) -> std::io::Result<u64> {
    let mut bytes = 0;
    for entry in std::fs::read_dir(dir)? {
        bytes += entry?.metadata()?.len();
    }
    Ok(bytes)
}

/// The label files, read alongside the predictions: a label micro-batch is
/// applied once the predictions have reached its earliest timestamp (all
/// of them once the predictions have ended).
struct LabelFeed {
    lines: LineSource,
    files: usize,
    batch_size: usize,
    queued: QueuedLabels,
    /// The most entries the queue held (a bound the tests check).
    most_queued: usize,
    exhausted: bool,
    file: usize,
    /// Whether the models' labels still hold their performance watermark.
    holding: bool,
}

impl LabelFeed {
    fn new(labels: &[PathBuf], batch_size: usize) -> Result<LabelFeed, ReplayError> {
        Ok(LabelFeed {
            lines: LineSource::new(labels)?,
            files: labels.len(),
            batch_size,
            queued: QueuedLabels::new(),
            most_queued: 0,
            exhausted: labels.is_empty(),
            file: 0,
            holding: !labels.is_empty(),
        })
    }

    /// Reads and decodes up to a batch of labels into the queue (a file
    /// that ends on the way is queued as its own batch, then as ended).
    fn read_batch(&mut self, pipeline: &mut Pipeline, line: &mut Vec<u8>) -> Result<(), ReplayError> {
        let mut read = 0;
        while read < self.batch_size {
            if !self.lines.next_line(line)? {
                self.exhausted = true;
                break;
            }
            let index = self.lines.file_index();
            if index != self.file {
                // As for predictions: the earlier file's labels so far are
                // its own batch, then it has ended.
                queue_labels(pipeline, &mut self.queued, self.file);
                for ended in self.file..index {
                    self.queued.push_back((i64::MIN, partition_of(ended), None));
                }
                self.file = index;
            }
            read += 1;
            let location = self.lines.location();
            let _ = pipeline.decode_label(line, &location);
        }
        queue_labels(pipeline, &mut self.queued, self.file);
        if self.exhausted {
            for ended in self.file..self.files {
                self.queued.push_back((i64::MIN, partition_of(ended), None));
            }
        }
        self.most_queued = self.most_queued.max(self.queued.len());
        Ok(())
    }

    /// Reads and applies the labels the predictions so far have reached;
    /// returns the rows written.
    fn step(
        &mut self,
        pipeline: &mut Pipeline,
        sink: &mut dyn WindowSink,
        max_prediction_time: i64,
        predictions_done: bool,
        line: &mut Vec<u8>,
    ) -> Result<u64, ReplayError> {
        let mut rows = 0u64;
        loop {
            if predictions_done {
                // Every remaining label is due: one batch at a time, each
                // applied before the next is read (the queue would
                // otherwise hold the rest of the labels, hours of them with
                // a long label_horizon).
                if !self.exhausted {
                    self.read_batch(pipeline, line)?;
                }
            } else {
                // Read label batches until one starts after the predictions
                // so far.
                while !self.exhausted && self.queued.back().is_none_or(|(min, ..)| *min <= max_prediction_time) {
                    self.read_batch(pipeline, line)?;
                }
            }
            while let Some((min, ..)) = self.queued.front() {
                if *min > max_prediction_time && !predictions_done {
                    break;
                }
                let (_, file, batches) = self.queued.pop_front().expect("front exists");
                match batches {
                    Some(batches) => pipeline.push_label_batches(&batches, file),
                    None => rows += pipeline.partition_ended(file, true, sink)? as u64,
                }
            }
            if !predictions_done || self.exhausted {
                break;
            }
        }
        if self.holding && self.exhausted && self.queued.is_empty() {
            self.holding = false;
            for model in 0..pipeline.registry.models.len() {
                rows += pipeline.set_labels_holding(model, false, sink)? as u64;
            }
        }
        Ok(rows)
    }
}

/// Queued label batches: (earliest time, file, batches), or (`i64::MIN`,
/// file, `None`) once that file has ended.
type QueuedLabels = VecDeque<(i64, PartitionId, Option<Vec<LabelBatch>>)>;

/// Queues the labels decoded so far, read from label file `file`.
fn queue_labels(pipeline: &mut Pipeline, queued: &mut QueuedLabels, file: usize) {
    let batches = pipeline.decoder.finish_labels();
    if batches.is_empty() {
        return;
    }
    let min =
        batches.iter().filter_map(|b| datafusion::arrow::compute::min(&b.event_time_ms)).min().unwrap_or(i64::MIN);
    queued.push_back((min, partition_of(file), Some(batches)));
}

/// The partition of the input file at `index`.
fn partition_of(index: usize) -> PartitionId {
    PartitionId::try_from(index).unwrap_or(PartitionId::MAX)
}

/// The largest event time of some batches (`i64::MIN` for none).
fn max_time<'a>(batches: impl Iterator<Item = &'a crate::decode::PredictionBatch>) -> i64 {
    batches.filter_map(|b| datafusion::arrow::compute::max(&b.event_time_ms)).max().unwrap_or(i64::MIN)
}

impl ReplaySummary {
    /// One line on how labels met their predictions, e.g. "labels: 7,000
    /// joined, 200 without a prediction within label_horizon, ...".
    pub fn join_report(&self) -> String {
        let mut parts = vec![format!("{} joined their prediction", self.labels_joined)];
        if self.labels_unmatched > 0 {
            parts.push(format!("{} found no prediction within label_horizon", self.labels_unmatched));
        }
        if self.labels_duplicate > 0 {
            parts.push(format!("{} repeated an already joined event_id", self.labels_duplicate));
        }
        if self.labels_late > 0 {
            parts.push(format!("{} came after their windows' performance rows were written", self.labels_late));
        }
        parts.push(format!("{} predictions got no label within label_horizon", self.predictions_unlabelled));
        format!("labels: {}", parts.join(", "))
    }

    /// One line on the checkpoints taken (`None` when none were): the one
    /// taken with the most joins pending, and the longest, e.g.
    /// "checkpoints: 3 taken; at the most pending joins (4579328): paused
    /// the replay 125 ms, durable after 128 ms, file 2.6 MB, join store
    /// checkpoint 599.4 MB (hard links); the longest durable after 130 ms".
    pub fn checkpoint_report(&self) -> Option<String> {
        let peak = self.checkpoints.iter().max_by_key(|c| c.pending_joins)?;
        let longest = self.checkpoints.iter().map(|c| c.durable).max().unwrap_or_default();
        let mb = |bytes: u64| bytes as f64 / 1e6;
        let join_store = match peak.join_store_bytes {
            0 => String::new(),
            bytes => format!(", join store checkpoint {:.1} MB (hard links)", mb(bytes)),
        };
        Some(format!(
            "checkpoints: {} taken; at the most pending joins ({}): paused the replay {} ms, durable after {} ms, \
             file {:.1} MB{join_store}; the longest durable after {} ms",
            self.checkpoints.len(),
            peak.pending_joins,
            peak.paused.as_millis(),
            peak.durable.as_millis(),
            mb(peak.file_bytes),
            longest.as_millis(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::MemorySink;

    /// At the end of the predictions every remaining label is due: the
    /// feed reads and applies them a batch at a time, never holding the
    /// rest of the file in its queue.
    #[test]
    fn labels_due_at_the_end_of_the_predictions_are_read_a_batch_at_a_time() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("labels.ndjson");
        let mut text = String::new();
        for i in 0..1_000 {
            let second = i % 60;
            text += &format!(
                "{{\"event_id\":\"e{i}\",\"model\":\"fraud\",\"timestamp\":\"2026-11-26T10:00:{second:02}.000Z\",\"label\":1}}\n"
            );
        }
        std::fs::write(&path, text).expect("writes");
        let config = Config::from_yaml_str("models: [{name: fraud, task: binary_classification}]", "test")
            .expect("config loads");
        let mut pipeline = Pipeline::new(&config, Arc::new(Telemetry::default())).expect("pipeline");
        let mut feed = LabelFeed::new(&[path], 50).expect("opens");
        let mut sink = MemorySink::default();
        feed.step(&mut pipeline, &mut sink, i64::MIN, true, &mut Vec::new()).expect("steps");
        assert!(feed.exhausted && feed.queued.is_empty() && !feed.holding);
        assert_eq!(pipeline.engine.counters.labels, 1_000, "every label applied");
        // A batch of labels and the file's end.
        assert!(feed.most_queued <= 2, "{} entries queued at once", feed.most_queued);
    }
}
