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

    /// Bytes waiting for the disk.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}
