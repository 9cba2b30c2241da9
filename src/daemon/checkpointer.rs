//! The checkpoint writer: a thread that owns the checkpoint store and
//! writes the checkpoints the loop encodes — temporary file, fsync,
//! rename, directory fsync ([`CheckpointStore::write`]) — while the loop
//! goes on with the next batches. One checkpoint at a time: the loop
//! submits the next only once it has the outcome of the last, and has a
//! checkpoint's offsets committed to Kafka only once its outcome says it is
//! on disk. The thread ends when the loop drops its end.

use std::path::PathBuf;
use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};
use std::time::Instant;

use crate::checkpoint::CheckpointStore;
use crate::sources::kafka::Positions;

/// A checkpoint encoded by the loop, to be written.
pub struct CheckpointJob {
    pub bytes: Vec<u8>,
    /// The offsets it records (committed once it is on disk).
    pub positions: Positions,
    /// When the loop began taking it.
    pub started: Instant,
}

/// What became of a [`CheckpointJob`].
pub struct CheckpointOutcome {
    pub positions: Positions,
    pub started: Instant,
    /// Its path and size once durable, or why it is not.
    pub written: Result<(PathBuf, usize), String>,
}

/// The loop's end of the writer.
pub struct CheckpointWriter {
    jobs: SyncSender<CheckpointJob>,
    outcomes: Receiver<CheckpointOutcome>,
    in_flight: bool,
}

impl CheckpointWriter {
    /// Starts the writer's thread on `scope`, owning `store`.
    pub fn spawn<'scope>(
        scope: &'scope std::thread::Scope<'scope, '_>,
        store: CheckpointStore,
    ) -> std::io::Result<(CheckpointWriter, std::thread::ScopedJoinHandle<'scope, ()>)> {
        // One job at a time: the capacity is never waited for.
        let (jobs, queued) = sync_channel(1);
        let (done, outcomes) = channel();
        let handle = std::thread::Builder::new()
            .name("driftwatch-checkpoint".into())
            .spawn_scoped(scope, move || write_each(store, queued, done))?;
        Ok((CheckpointWriter { jobs, outcomes, in_flight: false }, handle))
    }

    /// A checkpoint is being written.
    pub fn in_flight(&self) -> bool {
        self.in_flight
    }

    /// Hands a checkpoint to the writer (none may be in flight). Returns
    /// the job's outcome at once if the writer is gone.
    pub fn submit(&mut self, job: CheckpointJob) -> Option<CheckpointOutcome> {
        debug_assert!(!self.in_flight, "one checkpoint at a time");
        match self.jobs.send(job) {
            Ok(()) => {
                self.in_flight = true;
                None
            }
            Err(std::sync::mpsc::SendError(job)) => Some(CheckpointOutcome {
                positions: job.positions,
                started: job.started,
                written: Err("the checkpoint writer stopped".to_string()),
            }),
        }
    }

    /// The outcome of the checkpoint in flight, if it is done.
    pub fn try_outcome(&mut self) -> Option<CheckpointOutcome> {
        if !self.in_flight {
            return None;
        }
        let outcome = self.outcomes.try_recv().ok()?;
        self.in_flight = false;
        Some(outcome)
    }

    /// Waits for the outcome of the checkpoint in flight (`None` when none
    /// is).
    pub fn wait(&mut self) -> Option<CheckpointOutcome> {
        if !self.in_flight {
            return None;
        }
        self.in_flight = false;
        self.outcomes.recv().ok()
    }
}

/// The writer's thread: writes each job and reports it, until the loop
/// drops its sender.
fn write_each(mut store: CheckpointStore, jobs: Receiver<CheckpointJob>, done: Sender<CheckpointOutcome>) {
    for job in jobs {
        let written = store.write(&job.bytes).map(|path| (path, job.bytes.len())).map_err(|e| e.to_string());
        let outcome = CheckpointOutcome { positions: job.positions, started: job.started, written };
        if done.send(outcome).is_err() {
            break;
        }
    }
}
