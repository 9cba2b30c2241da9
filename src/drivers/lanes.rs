//! Lanes for `replay`: threads that each read, decode and aggregate a share
//! of the predictions files, in parallel.
//!
//! File k goes to lane k mod N. A lane reads its files in turns of
//! `pipeline.batch_size` lines (the round-robin the replay itself follows),
//! decodes and aggregates each turn into its files' panes
//! ([`LaneWorker`]) and sends the closer one [`LaneMessage`] per file and
//! turn, through one bounded channel per file. The closer (the replay's
//! loop) takes the messages in the same round-robin order, so what it sees
//! does not depend on the number of lanes; it moves each message from the
//! lane's ids to its own ([`LaneIds`]) and hands it to the engine, which
//! joins, watermarks and closes. Windows are merged in partition order and lateness is judged
//! per partition, so the rows are byte-identical to those of one lane.
//!
//! Threads: one per lane, owning its files, decoder, dictionaries and
//! panes. A lane ends after its last file, or as soon as the closer has
//! gone (a send fails); [`LaneSet`] joins them when dropped.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use crate::config::Config;
use crate::decode::PredictionBatch;
use crate::engine::lane::LaneOutput;
use crate::lanes::{LANE_CAP_FACTOR, LaneIds, LaneMessage, LaneWorker};
use crate::model::ModelRegistry;
use crate::sources::files::{FileSourceError, LineSource};
use crate::telemetry::Telemetry;
use crate::window::PartitionId;

/// Turns each file's channel holds before its lane waits: enough that a
/// lane a little slower on one turn does not stall the closer (a turn
/// holds no feature columns: their summaries are in the panes).
const MESSAGES_PER_FILE: usize = 4;

/// One turn of one file, aggregated by its lane; `ended` when the file
/// ended with it (its last contributions are in the message's
/// `handed_over`).
struct FileTurn {
    message: LaneMessage,
    ended: bool,
}

/// A turn as the closer takes it: in the closer's ids.
pub struct Turn {
    pub batches: Vec<(PredictionBatch, LaneOutput)>,
    /// The file ended with this turn: its last contributions, per model.
    pub ended: Option<Vec<LaneOutput>>,
}

/// The running lanes, seen from the closer.
pub struct LaneSet {
    /// Per file.
    receivers: Vec<Receiver<Result<FileTurn, FileSourceError>>>,
    lane_of_file: Vec<usize>,
    /// Per lane.
    ids: Vec<LaneIds>,
    threads: Vec<JoinHandle<()>>,
    max_categories: usize,
}

/// One file's channel from its lane to the closer.
type TurnSender = SyncSender<Result<FileTurn, FileSourceError>>;

/// What one lane owns.
struct Lane {
    worker: LaneWorker,
    /// (partition, path, its channel).
    files: Vec<(PartitionId, PathBuf, TurnSender)>,
    batch_size: usize,
    telemetry: Arc<Telemetry>,
    topic: String,
}

impl LaneSet {
    /// Starts `lanes` lanes over `files` (file k is partition k). Every
    /// file is opened first, so a missing one fails here.
    pub fn start(
        config: &Config,
        registry: &ModelRegistry,
        files: &[PathBuf],
        lanes: usize,
        telemetry: Arc<Telemetry>,
        topic: &str,
    ) -> Result<LaneSet, String> {
        LineSource::new(files).map_err(|e| e.to_string())?;
        let lanes = lanes.clamp(1, files.len().max(1));
        let mut receivers = Vec::with_capacity(files.len());
        let mut owned: Vec<Vec<(PartitionId, PathBuf, TurnSender)>> = (0..lanes).map(|_| Vec::new()).collect();
        for (index, path) in files.iter().enumerate() {
            let (sender, receiver) = sync_channel(MESSAGES_PER_FILE);
            receivers.push(receiver);
            owned[index % lanes].push((PartitionId::try_from(index).unwrap_or(PartitionId::MAX), path.clone(), sender));
        }
        let mut threads = Vec::with_capacity(lanes);
        for (number, files) in owned.into_iter().enumerate() {
            let lane = Lane {
                worker: LaneWorker::new(config, registry, LANE_CAP_FACTOR)?,
                files,
                batch_size: config.pipeline.batch_size.max(1),
                telemetry: telemetry.clone(),
                topic: topic.to_string(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("lane-{number}"))
                .spawn(move || lane.run())
                .map_err(|e| format!("starting lane {number}: {e}"))?;
            threads.push(thread);
        }
        Ok(LaneSet {
            receivers,
            lane_of_file: (0..files.len()).map(|index| index % lanes).collect(),
            ids: vec![LaneIds::new(config, registry); lanes],
            threads,
            max_categories: config.pipeline.max_categories_per_feature,
        })
    }

    /// The next turn of `file`, moved into `registry`'s ids (interning the
    /// names the lane met first).
    pub fn next(&mut self, file: usize, registry: &mut ModelRegistry) -> Result<Turn, FileSourceError> {
        let turn = match self.receivers[file].recv() {
            Ok(turn) => turn?,
            // A lane that stopped without a word panicked; its thread's
            // join says why. Treat the file as ended.
            Err(_) => FileTurn { message: LaneMessage::default(), ended: true },
        };
        let translated = self.ids[self.lane_of_file[file]].translate(registry, turn.message, self.max_categories);
        Ok(Turn { batches: translated.batches, ended: turn.ended.then_some(translated.handed_over) })
    }
}

impl Drop for LaneSet {
    fn drop(&mut self) {
        // Lanes still sending see their channel closed and stop.
        self.receivers.clear();
        for thread in self.threads.drain(..) {
            if let Err(panic) = thread.join() {
                tracing::error!(?panic, "a lane panicked");
            }
        }
    }
}

impl Lane {
    fn run(mut self) {
        let mut sources: Vec<LineSource> = Vec::with_capacity(self.files.len());
        for (_, path, sender) in &self.files {
            match LineSource::new(std::slice::from_ref(path)) {
                Ok(source) => sources.push(source),
                Err(e) => {
                    let _ = sender.send(Err(e));
                    return;
                }
            }
        }
        let mut live = vec![true; self.files.len()];
        let mut line = Vec::with_capacity(4096);
        while live.iter().any(|l| *l) {
            for position in 0..self.files.len() {
                if !live[position] {
                    continue;
                }
                let partition = self.files[position].0;
                let mut ended = false;
                for _ in 0..self.batch_size {
                    match sources[position].next_line(&mut line) {
                        Ok(true) => {}
                        Ok(false) => {
                            ended = true;
                            break;
                        }
                        Err(e) => {
                            let _ = self.files[position].2.send(Err(e));
                            return;
                        }
                    }
                    if let Err(invalid) = self.worker.push_prediction(&line) {
                        let location = sources[position].location().to_string();
                        self.telemetry.invalid_event(&self.topic, &location, &invalid);
                    }
                }
                let mut message = LaneMessage::default();
                self.worker.aggregate(partition, &[], None, &mut message);
                if ended {
                    live[position] = false;
                    self.worker.hand_over(partition, true, &mut message);
                }
                self.worker.tell_new_names(&mut message);
                if self.files[position].2.send(Ok(FileTurn { message, ended })).is_err() {
                    return; // the closer has stopped
                }
            }
        }
        self.telemetry.add_decode_counters(&self.worker.decoder.counters);
    }
}
