//! Checkpoints: everything the daemon would lose in a crash — per model its
//! dictionaries, open windows, windows awaiting labels and pending joins;
//! the alert engine's instances, cooldowns and history; the Kafka offsets
//! the state covers; the lengths of the files it appends to — in one
//! versioned, checksummed file written atomically into
//! `<state.dir>/checkpoints/`.
//!
//! File layout: the magic `DRIFTWCK`, the format version (u32 LE), the
//! body's length (u64 LE), its xxh3-64 (u64 LE), then the body in
//! MessagePack (named fields). A file is written to a temporary name,
//! fsynced, renamed into place and the directory fsynced, so a reader sees
//! a whole checkpoint or none. The newest [`KEEP`] are kept; loading takes
//! the newest that verifies and falls back, loudly, to older ones.
//!
//! Architecture invariant: a checkpoint is taken between micro-batches, so
//! the offsets it records are exactly those of the events in its state.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::Task;
use crate::engine::EngineCounters;
use crate::join::disk::DiskJoinState;
use crate::join::{Join, ModelJoin};
use crate::model::reference::BaselineStamp;
use crate::model::{FeatureMeta, Interner, Series};
use crate::rules::lifecycle::AlertSnapshot;
use crate::window::{ModelWindows, WindowSpec};

/// The format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Checkpoints kept on disk (the newest first; older ones are deleted).
pub const KEEP: usize = 3;
const MAGIC: &[u8; 8] = b"DRIFTWCK";
const HEADER_LEN: usize = 8 + 4 + 8 + 8;

/// Errors reading or writing checkpoints.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("{path} is corrupt: {reason}")]
    Corrupt { path: String, reason: String },
    #[error(
        "{path} was written by a newer driftwatch (checkpoint format {version}, this build reads {FORMAT_VERSION})"
    )]
    NewerFormat { path: String, version: u32 },
    #[error("encoding a checkpoint: {0}")]
    Encode(String),
}

/// One model's share, borrowed for writing.
#[derive(Serialize)]
pub struct ModelRef<'a> {
    pub name: &'a str,
    pub series_keys: &'a Interner,
    pub series: &'a [Series],
    pub classes: &'a Interner,
    pub features: &'a [FeatureMeta],
    pub windows: &'a ModelWindows,
    pub join: &'a Join,
    /// The join's counts and times when it is on disk.
    pub disk_join: Option<DiskJoinState>,
    pub stamp: ModelStamp,
    /// The joins of the model's shadow versions, by version name.
    pub shadow_joins: Vec<ShadowJoinRef<'a>>,
}

/// A shadow version's join, borrowed for writing.
#[derive(Serialize)]
pub struct ShadowJoinRef<'a> {
    pub model_version: &'a str,
    pub join: &'a Join,
    pub disk_join: Option<DiskJoinState>,
}

/// A shadow version's join, read back. Restored by version name, so a
/// reordered `shadow_versions` list finds its joins again.
#[derive(Deserialize)]
pub struct ShadowJoin {
    pub model_version: String,
    pub join: ModelJoin,
    #[serde(default)]
    pub disk_join: Option<DiskJoinState>,
}

/// What a model's windows were built for: its task and baseline. A restore
/// under another config compares them (`Pipeline::restore`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelStamp {
    pub task: Task,
    /// `None`: the model had no baseline.
    pub baseline: Option<BaselineStamp>,
}

/// One model's share, read back.
#[derive(Deserialize)]
pub struct ModelCheckpoint {
    pub name: String,
    pub series_keys: Interner,
    pub series: Vec<Series>,
    pub classes: Interner,
    pub features: Vec<FeatureMeta>,
    pub windows: ModelWindows,
    /// Empty when the join is on disk (`disk_join`).
    pub join: ModelJoin,
    /// The join's counts and times when it was on disk (its entries are in
    /// the join store's checkpoint). Absent in older checkpoints.
    #[serde(default)]
    pub disk_join: Option<DiskJoinState>,
    /// `None` in checkpoints written before it was recorded: the windows
    /// are then checked against the config by their shape alone.
    #[serde(default)]
    pub stamp: Option<ModelStamp>,
    /// Absent in checkpoints written before shadow versions existed.
    #[serde(default)]
    pub shadow_joins: Vec<ShadowJoin>,
}

/// Kafka positions: topic → partition → the next offset to read.
pub type Offsets = BTreeMap<String, BTreeMap<i32, i64>>;

/// A checkpoint, borrowed for writing.
#[derive(Serialize)]
pub struct CheckpointRef<'a> {
    pub created_at_ms: i64,
    pub window_spec: WindowSpec,
    pub counters: &'a EngineCounters,
    pub models: Vec<ModelRef<'a>>,
    pub offsets: &'a Offsets,
    pub alerts: Option<&'a AlertSnapshot>,
    /// Output files and their length when the checkpoint was taken.
    pub outputs: &'a BTreeMap<String, crate::output::recovery::OutputPosition>,
    /// The join store's checkpoint (a directory beside the file), when the
    /// joins live on disk.
    pub join_store: Option<&'a str>,
}

/// A checkpoint, read back.
#[derive(Deserialize)]
pub struct Checkpoint {
    pub created_at_ms: i64,
    pub window_spec: WindowSpec,
    pub counters: EngineCounters,
    pub models: Vec<ModelCheckpoint>,
    pub offsets: Offsets,
    pub alerts: Option<AlertSnapshot>,
    pub outputs: BTreeMap<String, crate::output::recovery::OutputPosition>,
    /// Absent when the joins were in memory (they are in the file).
    #[serde(default)]
    pub join_store: Option<String>,
}

/// The bytes of a checkpoint file: header and body.
pub fn encode(checkpoint: &CheckpointRef<'_>) -> Result<Vec<u8>, CheckpointError> {
    let body = rmp_serde::to_vec_named(checkpoint).map_err(|e| CheckpointError::Encode(e.to_string()))?;
    let mut bytes = Vec::with_capacity(HEADER_LEN + body.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    bytes.extend_from_slice(&(body.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(&body).to_le_bytes());
    bytes.extend_from_slice(&body);
    Ok(bytes)
}

/// Verifies and decodes a checkpoint file's bytes.
pub fn decode(path: &Path, bytes: &[u8]) -> Result<Checkpoint, CheckpointError> {
    let corrupt = |reason: String| CheckpointError::Corrupt { path: path.display().to_string(), reason };
    if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
        return Err(corrupt(format!("not a checkpoint ({} bytes, no header)", bytes.len())));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version > FORMAT_VERSION {
        return Err(CheckpointError::NewerFormat { path: path.display().to_string(), version });
    }
    let length = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
    let checksum = u64::from_le_bytes(bytes[20..28].try_into().expect("8 bytes"));
    let body = &bytes[HEADER_LEN..];
    if body.len() as u64 != length {
        return Err(corrupt(format!("truncated: body of {} bytes, header says {length}", body.len())));
    }
    if xxhash_rust::xxh3::xxh3_64(body) != checksum {
        return Err(corrupt("checksum mismatch".to_string()));
    }
    rmp_serde::from_slice(body).map_err(|e| corrupt(format!("undecodable body: {e}")))
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io { path: path.display().to_string(), source }
}

/// The directory (in the checkpoint directory) the join store's checkpoint
/// goes to for checkpoint file `sequence`; removed with the file.
pub fn join_store_name(sequence: u64) -> String {
    format!("checkpoint-{sequence:020}.joins")
}

/// The file in the checkpoint directory that holds the sequence number of
/// the newest checkpoint written (see [`CheckpointStore::load_latest`]).
pub const NEWEST: &str = "newest";

/// The checkpoint directory.
pub struct CheckpointStore {
    dir: PathBuf,
    next_sequence: u64,
}

/// A checkpoint loaded at start, with where it came from.
pub struct Loaded {
    pub path: PathBuf,
    pub checkpoint: Checkpoint,
    /// Newer checkpoints that could not be used: files that did not verify
    /// (moved aside as `*.corrupt`), and newer ones written and since gone.
    pub skipped: Vec<String>,
}

impl CheckpointStore {
    /// The store in `dir` (created if missing).
    pub fn open(dir: &Path) -> Result<CheckpointStore, CheckpointError> {
        fs::create_dir_all(dir).map_err(io_error(dir))?;
        let mut store = CheckpointStore { dir: dir.to_path_buf(), next_sequence: 1 };
        store.next_sequence = store.files()?.iter().map(|(sequence, _)| sequence + 1).max().unwrap_or(1);
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The sequence number the next checkpoint file gets.
    pub fn next_sequence(&self) -> u64 {
        self.next_sequence
    }

    /// Checkpoint files, newest first.
    fn files(&self) -> Result<Vec<(u64, PathBuf)>, CheckpointError> {
        let mut files = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_error(&self.dir))? {
            let path = entry.map_err(io_error(&self.dir))?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
            let sequence = name.strip_prefix("checkpoint-").and_then(|rest| rest.strip_suffix(".ckpt"));
            if let Some(sequence) = sequence.and_then(|s| s.parse::<u64>().ok()) {
                files.push((sequence, path));
            }
        }
        files.sort_by_key(|(sequence, _)| std::cmp::Reverse(*sequence));
        Ok(files)
    }

    /// The newest checkpoint that verifies, falling back to older ones; a
    /// file that does not verify is logged as an error and moved aside
    /// (`*.corrupt`). `None` when there is none. A checkpoint of a newer
    /// format is an error: starting empty would silently lose its state.
    ///
    /// A checkpoint newer than every file found (the [`NEWEST`] record
    /// says one was written: the files were deleted or lost) counts as
    /// skipped too: the run falls back as much as past a damaged one.
    pub fn load_latest(&mut self) -> Result<Option<Loaded>, CheckpointError> {
        let mut skipped = Vec::new();
        let files = self.files()?;
        let newest_written = fs::read_to_string(self.dir.join(NEWEST)).ok().and_then(|t| t.trim().parse::<u64>().ok());
        if let Some(newest) = newest_written
            && files.first().is_none_or(|(found, _)| *found < newest)
        {
            tracing::error!(
                sequence = newest,
                "CHECKPOINT MISSING: a newer checkpoint was written and is gone; falling back to the newest one found"
            );
            skipped.push(format!("checkpoint {newest} was written and is gone"));
        }
        for (_, path) in files {
            let bytes = fs::read(&path).map_err(io_error(&path))?;
            match decode(&path, &bytes) {
                Ok(checkpoint) => return Ok(Some(Loaded { path, checkpoint, skipped })),
                Err(error @ CheckpointError::NewerFormat { .. }) => return Err(error),
                Err(error) => {
                    tracing::error!(
                        %error,
                        "CHECKPOINT UNUSABLE: falling back to the previous checkpoint; the file is kept as *.corrupt"
                    );
                    let aside = path.with_extension("corrupt");
                    if let Err(e) = fs::rename(&path, &aside) {
                        tracing::error!(error = %e, path = %path.display(), "moving the unusable checkpoint aside failed");
                    }
                    skipped.push(error.to_string());
                }
            }
        }
        Ok(None)
    }

    /// Removes the join-store checkpoints (`*.joins`) of no kept file: of
    /// deleted checkpoints, and of any whose file was never written.
    fn remove_unkept_join_stores(&self, kept: &[(u64, PathBuf)]) {
        let Ok(entries) = fs::read_dir(&self.dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
            let Some(sequence) = name.strip_prefix("checkpoint-").and_then(|r| r.strip_suffix(".joins")) else {
                continue;
            };
            let Ok(sequence) = sequence.parse::<u64>() else { continue };
            if sequence >= self.next_sequence || kept.iter().any(|(kept, _)| *kept == sequence) {
                continue;
            }
            if let Err(e) = fs::remove_dir_all(&path) {
                tracing::warn!(error = %e, path = %path.display(), "removing an old join store checkpoint failed");
            }
        }
    }

    /// Writes `bytes` (from [`encode`]) as the next checkpoint, atomically,
    /// then deletes all but the newest [`KEEP`]. Returns its path.
    pub fn write(&mut self, bytes: &[u8]) -> Result<PathBuf, CheckpointError> {
        let name = format!("checkpoint-{:020}.ckpt", self.next_sequence);
        let path = self.dir.join(&name);
        if let Err(source) = crate::fsutil::write_atomically(&self.dir, &name, bytes) {
            return Err(CheckpointError::Io { path: path.display().to_string(), source });
        }
        // Which checkpoint is the newest, for a run that finds it gone.
        if let Err(error) =
            crate::fsutil::write_atomically(&self.dir, NEWEST, self.next_sequence.to_string().as_bytes())
        {
            tracing::warn!(%error, "recording the newest checkpoint's sequence number failed");
        }
        self.next_sequence += 1;
        let files = self.files()?;
        for (_, old) in files.iter().skip(KEEP) {
            if let Err(e) = fs::remove_file(old) {
                tracing::warn!(error = %e, path = %old.display(), "removing an old checkpoint failed");
            }
        }
        self.remove_unkept_join_stores(&files[..files.len().min(KEEP)]);
        Ok(path)
    }
}

#[cfg(test)]
mod tests;
