//! An append-only file that outlives write failures. Bytes that cannot be
//! written (disk full, I/O error) wait in a bounded buffer and are retried
//! on the next append or flush; the failure is reported once per streak
//! (logged, and the daemon is not ready meanwhile) and never stops the
//! pipeline. Beyond [`MAX_PENDING_BYTES`] new records are dropped and
//! counted, so memory stays bounded through a long outage.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::telemetry::{Storage, storage_status};

/// Most bytes kept waiting for a failing disk.
pub const MAX_PENDING_BYTES: usize = 64 * 1024 * 1024;

pub struct Appender {
    path: PathBuf,
    file: File,
    pending: Vec<u8>,
    /// fsync after each successful write (the audit log).
    sync: bool,
    part: Storage,
    /// Records dropped because the buffer was full.
    pub dropped: u64,
}

impl Appender {
    /// Opens (creating) `path` for appending; its directory must exist.
    pub fn open(path: &Path, sync: bool, part: Storage) -> io::Result<Appender> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Appender { path: path.to_path_buf(), file, pending: Vec::new(), sync, part, dropped: 0 })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues `record` (whole lines) and tries to write everything queued.
    pub fn append(&mut self, record: &[u8]) {
        if self.pending.len() + record.len() > MAX_PENDING_BYTES {
            self.dropped += 1;
            tracing::error!(path = %self.path.display(), dropped = self.dropped, "write buffer full: record dropped");
        } else {
            self.pending.extend_from_slice(record);
        }
        self.flush();
    }

    /// Writes what is queued; true when nothing is left.
    pub fn flush(&mut self) -> bool {
        if self.pending.is_empty() {
            return true;
        }
        let mut written = 0;
        let outcome = loop {
            if written == self.pending.len() {
                break if self.sync { self.file.sync_data() } else { Ok(()) };
            }
            match self.file.write(&self.pending[written..]) {
                Ok(0) => break Err(io::Error::new(io::ErrorKind::WriteZero, "wrote nothing")),
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        self.pending.drain(..written);
        let detail = match &outcome {
            Ok(()) => String::new(),
            Err(e) => format!("{}: {e}", self.path.display()),
        };
        storage_status(self.part, outcome.is_err(), &detail);
        outcome.is_ok() && self.pending.is_empty()
    }

    /// The file's length on disk (what is queued not included).
    pub fn written_length(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    /// Where the file stands for a checkpoint: its length once everything
    /// queued is written (an error while writes fail, so no checkpoint
    /// claims records that are not on disk), with the records written
    /// ahead of the state (`written_ahead`).
    pub fn position(
        &mut self,
        written_ahead: &std::collections::HashSet<String>,
    ) -> io::Result<(String, super::recovery::OutputPosition)> {
        if !self.flush() {
            return Err(io::Error::other(format!("{}: writes are failing", self.path.display())));
        }
        let position = super::recovery::OutputPosition {
            length: self.written_length()?,
            written_ahead: written_ahead.iter().cloned().collect(),
        };
        Ok((self.path.display().to_string(), position))
    }

    /// After a restart from a checkpoint that recorded `positions`: the keys
    /// (by `key`) of the records this file already has that the replayed
    /// events will make again (see [`super::recovery::records_to_skip`]).
    pub fn records_to_skip(
        &self,
        positions: &std::collections::BTreeMap<String, super::recovery::OutputPosition>,
        key: impl Fn(&serde_json::Value) -> Option<String>,
    ) -> io::Result<std::collections::HashSet<String>> {
        let Some(position) = positions.get(&self.path.display().to_string()) else { return Ok(Default::default()) };
        let skip = super::recovery::records_to_skip(&self.path, position, key)?;
        if !skip.is_empty() {
            tracing::info!(
                path = %self.path.display(),
                records = skip.len(),
                "records written after the checkpoint will not be written again"
            );
        }
        Ok(skip)
    }

    /// Bytes waiting for the disk.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}
