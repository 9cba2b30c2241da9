//! An append-only file that outlives write failures. Bytes that cannot be
//! written (disk full, I/O error) wait in a buffer and are retried on the
//! next append or flush; the failure is reported once per streak (logged,
//! and the daemon is not ready meanwhile) and never stops the pipeline.
//! No record is ever dropped: once [`MAX_PENDING_BYTES`] wait, the file
//! asks for backpressure ([`Appender::backpressure`]) and the Kafka source
//! stops consuming until the disk takes writes again, so memory stays
//! bounded through a long outage (by the bound plus what was in hand when
//! it was reached).
//!
//! A checkpoint records only lengths that are durable: [`Appender::position`]
//! writes everything queued and fsyncs (`sync_data`) before it reports the
//! length, so a power cut after the checkpoint cannot take bytes the
//! checkpoint counts.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::telemetry::{Storage, storage_status};

/// Bytes waiting for a failing disk beyond which the file asks for
/// backpressure (nothing is dropped; see the module doc).
pub const MAX_PENDING_BYTES: usize = 64 * 1024 * 1024;

/// Where an [`Appender`]'s bytes go: a file opened for appending (unit
/// tests use a double that can fail and records what was synced).
pub trait Target: Send {
    /// Writes some of `bytes` at the end, like [`Write::write`].
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize>;
    /// Makes everything written so far durable (`fdatasync`).
    fn sync_data(&mut self) -> io::Result<()>;
    /// The length now.
    fn length(&self) -> io::Result<u64>;
}

impl Target for File {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        Write::write(self, bytes)
    }
    fn sync_data(&mut self) -> io::Result<()> {
        File::sync_data(self)
    }
    fn length(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
}

pub struct Appender {
    path: PathBuf,
    file: Box<dyn Target>,
    pending: Vec<u8>,
    /// fsync after each successful write (the audit log).
    sync: bool,
    /// Bytes were written since the last fsync.
    unsynced: bool,
    part: Storage,
}

impl Appender {
    /// Opens (creating) `path` for appending; its directory must exist.
    pub fn open(path: &Path, sync: bool, part: Storage) -> io::Result<Appender> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Appender::with_target(path, Box::new(file), sync, part))
    }

    /// An appender over any [`Target`] (`path` names it in logs and
    /// checkpoints).
    pub fn with_target(path: &Path, file: Box<dyn Target>, sync: bool, part: Storage) -> Appender {
        Appender { path: path.to_path_buf(), file, pending: Vec::new(), sync, unsynced: false, part }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues `record` (whole lines) and tries to write everything queued.
    /// Never drops: past [`MAX_PENDING_BYTES`] the record still waits, and
    /// [`Appender::backpressure`] says so.
    pub fn append(&mut self, record: &[u8]) {
        self.pending.extend_from_slice(record);
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
                Ok(n) => {
                    written += n;
                    self.unsynced = true;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        if outcome.is_ok() && self.sync {
            self.unsynced = false;
        }
        self.pending.drain(..written);
        self.report(&outcome);
        outcome.is_ok() && self.pending.is_empty()
    }

    fn report(&self, outcome: &io::Result<()>) {
        let detail = match outcome {
            Ok(()) => String::new(),
            Err(e) => format!("{}: {e}", self.path.display()),
        };
        storage_status(self.part, outcome.is_err(), &detail);
    }

    /// Writes what is queued and fsyncs what was written since the last
    /// fsync; Ok once everything appended so far is durable.
    pub fn sync(&mut self) -> io::Result<()> {
        if !self.flush() {
            return Err(io::Error::other(format!("{}: writes are failing", self.path.display())));
        }
        if self.unsynced {
            let outcome = self.file.sync_data();
            self.report(&outcome);
            outcome.map_err(|e| io::Error::new(e.kind(), format!("{}: fsync: {e}", self.path.display())))?;
            self.unsynced = false;
        }
        Ok(())
    }

    /// The file's length on disk (what is queued not included).
    pub fn written_length(&self) -> io::Result<u64> {
        self.file.length()
    }

    /// Where the file stands for a checkpoint: its length once everything
    /// queued is written and fsynced (an error while writes or fsync fail,
    /// so no checkpoint claims records that are not durably on disk), with
    /// the records written ahead of the state (`written_ahead`).
    pub fn position(
        &mut self,
        written_ahead: &std::collections::HashSet<String>,
    ) -> io::Result<(String, super::recovery::OutputPosition)> {
        self.sync()?;
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

    /// Whether the file can take no more records now: at least
    /// [`MAX_PENDING_BYTES`] wait for a failing disk. Retries the writes
    /// first (so a disk that works again lifts it at once). Records
    /// appended meanwhile are still kept.
    pub fn backpressure(&mut self) -> bool {
        if self.pending.len() >= MAX_PENDING_BYTES {
            self.flush();
        }
        self.pending.len() >= MAX_PENDING_BYTES
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// What a [`Double`] holds: the bytes written, how many of them were
    /// fsynced, whether writes fail, and every call in order.
    #[derive(Default)]
    pub struct DoubleState {
        pub data: Vec<u8>,
        pub synced: usize,
        pub failing: bool,
        pub sync_failing: bool,
        pub calls: Vec<&'static str>,
    }

    /// A [`Target`] in memory that can be made to fail (disk full).
    #[derive(Clone, Default)]
    pub struct Double(pub Arc<Mutex<DoubleState>>);

    impl Target for Double {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            let mut state = self.0.lock().unwrap();
            state.calls.push("write");
            if state.failing {
                return Err(io::Error::from_raw_os_error(28)); // ENOSPC
            }
            // A short write now and then, like a real disk may do.
            let n = bytes.len().min(1 << 20);
            state.data.extend_from_slice(&bytes[..n]);
            Ok(n)
        }
        fn sync_data(&mut self) -> io::Result<()> {
            let mut state = self.0.lock().unwrap();
            state.calls.push("sync");
            if state.failing || state.sync_failing {
                return Err(io::Error::from_raw_os_error(5)); // EIO
            }
            state.synced = state.data.len();
            Ok(())
        }
        fn length(&self) -> io::Result<u64> {
            Ok(self.0.lock().unwrap().data.len() as u64)
        }
    }

    fn record(i: usize) -> Vec<u8> {
        // 64 KiB lines, each naming its number.
        let mut line = format!("{{\"n\":{i},\"pad\":\"").into_bytes();
        line.resize(64 * 1024 - 3, b'x');
        line.extend_from_slice(b"\"}\n");
        line
    }

    /// A full retry buffer keeps every record and asks for backpressure;
    /// once the disk works again, every record lands exactly once, in order.
    #[test]
    fn a_full_buffer_keeps_every_record_and_asks_for_backpressure() {
        let double = Double::default();
        let mut appender =
            Appender::with_target(Path::new("double.ndjson"), Box::new(double.clone()), false, Storage::AuditLog);
        appender.append(&record(0));
        assert!(!appender.backpressure());
        double.0.lock().unwrap().failing = true;
        // One batch more than the buffer holds.
        let records = MAX_PENDING_BYTES / (64 * 1024) + 10;
        for i in 1..records {
            appender.append(&record(i));
        }
        assert!(appender.backpressure(), "a full buffer must ask for backpressure");
        assert!(appender.pending() >= MAX_PENDING_BYTES);
        assert!(appender.position(&Default::default()).is_err(), "no checkpoint while records wait");
        assert_eq!(double.0.lock().unwrap().data, record(0));

        double.0.lock().unwrap().failing = false;
        assert!(!appender.backpressure(), "a disk that works again lifts backpressure");
        assert_eq!(appender.pending(), 0);
        let data = std::mem::take(&mut double.0.lock().unwrap().data);
        let lines: Vec<&[u8]> = data.split_inclusive(|&b| b == b'\n').collect();
        assert_eq!(lines.len(), records, "every record written, none twice");
        for (i, line) in lines.iter().enumerate() {
            assert_eq!(*line, record(i).as_slice(), "record {i}");
        }
    }

    /// The length a checkpoint records is never past what was fsynced, and
    /// the fsync comes after the last write it covers.
    #[test]
    fn a_checkpoint_position_is_durable() {
        let double = Double::default();
        let mut appender =
            Appender::with_target(Path::new("double.ndjson"), Box::new(double.clone()), false, Storage::AuditLog);
        for round in 0..3 {
            for i in 0..5 {
                appender.append(format!("{{\"round\":{round},\"n\":{i}}}\n").as_bytes());
            }
            let (_, position) = appender.position(&Default::default()).expect("position");
            let state = double.0.lock().unwrap();
            assert_eq!(position.length as usize, state.data.len());
            assert!(
                position.length as usize <= state.synced,
                "the checkpoint records {} bytes but only {} are durable",
                position.length,
                state.synced
            );
            assert_eq!(state.calls.last(), Some(&"sync"), "fsync after the last write: {:?}", state.calls);
        }
        // Nothing written since: no second fsync.
        let syncs = double.0.lock().unwrap().calls.iter().filter(|c| **c == "sync").count();
        appender.position(&Default::default()).expect("position");
        assert_eq!(double.0.lock().unwrap().calls.iter().filter(|c| **c == "sync").count(), syncs);
        // A failing fsync is no position.
        appender.append(b"{\"late\":1}\n");
        double.0.lock().unwrap().sync_failing = true;
        assert!(appender.position(&Default::default()).is_err());
        double.0.lock().unwrap().sync_failing = false;
        let (_, position) = appender.position(&Default::default()).expect("position");
        assert_eq!(position.length as usize, double.0.lock().unwrap().synced);
    }
}
