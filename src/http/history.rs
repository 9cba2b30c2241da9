//! The rows `/api/v1/windows` and the status page serve, kept across
//! restarts in durable mode: `<state.dir>/recent_windows.ndjson`.
//!
//! Every row of a closed window the API takes in is appended there (NDJSON,
//! the `window_metrics` encoding), flushed after each batch and fsynced
//! with each checkpoint. At start the daemon reads the file back a line at a
//! time and keeps its latest [`RECENT_ROWS`] rows (bounded memory, however
//! long the file), so a restarted daemon serves the windows closed before
//! it at once. A torn last line (a crash mid-write) is cut; any other line
//! that does not parse, or is longer than any row, is skipped (logged).
//!
//! Rows written after the last checkpoint are produced again by the
//! restarted pipeline (it re-reads those events). The identities (model,
//! version, segment, window, feature, metric) of the rows read back are
//! remembered — a 128-bit hash each, at most [`RECENT_ROWS`] — and a row
//! produced again with one of them is not served or written twice.
//!
//! The file is bounded too: once it holds twice [`RECENT_ROWS`] lines it is
//! rewritten (temporary file, fsync, rename) with the rows the API holds.
//! It is a cache of what the outputs hold, so failing to write it is
//! logged (once per streak) and never stops the pipeline or makes the
//! daemon unready; after a failure the next batch rewrites it whole.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use super::{ApiState, RECENT_ROWS, RecentRows};
use crate::output::{encode_ndjson_row, row_key};
use crate::window_metrics::{METRIC_NAMES, WindowMetricRow};

/// The history's file name in the state dir.
pub const FILE_NAME: &str = "recent_windows.ndjson";

/// The longest line read back; our rows are far shorter.
const MAX_LINE_BYTES: u64 = 64 * 1024;

/// The history file and the identities of the rows read back from it.
pub struct History {
    path: PathBuf,
    file: Option<BufWriter<File>>,
    /// Lines in the file (complete rows).
    lines: usize,
    /// Hashes of the identities of the rows read back at start.
    read_back: HashSet<u128>,
    /// The last write failed: the next batch rewrites the file whole.
    failing: bool,
}

fn identity(row: &WindowMetricRow) -> u128 {
    xxhash_rust::xxh3::xxh3_128(row_key(row).as_bytes())
}

/// A row as [`encode_ndjson_row`] writes it.
fn row_of_json(value: &Value) -> Option<WindowMetricRow> {
    let text = |key: &str| value.get(key).and_then(Value::as_str);
    let time = |key: &str| text(key).and_then(crate::timestamp::parse_rfc3339_ms);
    let number = |key: &str| value.get(key).and_then(Value::as_f64);
    let metric = text("metric")?;
    Some(WindowMetricRow {
        model: Arc::from(text("model")?),
        model_version: Arc::from(text("model_version")?),
        segment: Arc::from(text("segment")?),
        window_start_ms: time("window_start")?,
        window_end_ms: time("window_end")?,
        feature: text("feature").map(Arc::from),
        metric: METRIC_NAMES.iter().copied().find(|m| *m == metric)?,
        // Non-finite values are written as null.
        value: number("value").unwrap_or(f64::NAN),
        baseline: number("baseline"),
        threshold: number("threshold"),
        p_value: number("p_value"),
        drifted: value.get("drifted").and_then(Value::as_bool),
        sample_count: value.get("sample_count").and_then(Value::as_i64)?,
    })
}

/// Reads `path` back: its latest [`RECENT_ROWS`] rows, the number of
/// complete lines, and the length up to the last complete line.
fn read_back(path: &Path) -> io::Result<(RecentRows, usize, u64)> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((RecentRows::new(), 0, 0)),
        Err(e) => return Err(e),
    };
    let mut reader = BufReader::with_capacity(64 * 1024, file);
    let mut rows = RecentRows::new();
    let (mut lines, mut complete, mut skipped) = (0usize, 0u64, 0u64);
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = (&mut reader).take(MAX_LINE_BYTES).read_until(b'\n', &mut line)?;
        if read == 0 {
            break;
        }
        if line.last() != Some(&b'\n') {
            if (read as u64) < MAX_LINE_BYTES {
                break; // a torn last line
            }
            // Longer than any row: skip the rest of it, a piece at a time.
            let mut length = read as u64;
            loop {
                line.clear();
                let more = (&mut reader).take(MAX_LINE_BYTES).read_until(b'\n', &mut line)?;
                length += more as u64;
                if more == 0 || line.last() == Some(&b'\n') {
                    break;
                }
            }
            if line.last() != Some(&b'\n') {
                break; // torn, too
            }
            complete += length;
            lines += 1;
            skipped += 1;
            continue;
        }
        complete += read as u64;
        lines += 1;
        match serde_json::from_slice::<Value>(&line).ok().as_ref().and_then(row_of_json) {
            Some(row) => {
                if rows.len() == RECENT_ROWS {
                    rows.pop_front();
                }
                rows.push_back(row);
            }
            None => skipped += 1,
        }
    }
    if skipped > 0 {
        tracing::warn!(path = %path.display(), lines = skipped, "unreadable lines in the window history were skipped");
    }
    Ok((rows, lines, complete))
}

impl History {
    /// Opens the history in `state_dir` (created if missing) and reads it
    /// back; a torn last line is cut. Returns the rows read back, oldest
    /// first (at most [`RECENT_ROWS`]).
    pub fn open(state_dir: &Path) -> io::Result<(History, RecentRows)> {
        std::fs::create_dir_all(state_dir)?;
        let path = state_dir.join(FILE_NAME);
        let (rows, lines, complete) = read_back(&path)?;
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        if file.metadata()?.len() > complete {
            tracing::warn!(path = %path.display(), "cutting a torn last line of the window history");
            file.set_len(complete)?;
        }
        let read_back = rows.iter().map(identity).collect();
        if !rows.is_empty() {
            tracing::info!(path = %path.display(), rows = rows.len(), "window history read back");
        }
        let history =
            History { path, file: Some(BufWriter::with_capacity(64 * 1024, file)), lines, read_back, failing: false };
        Ok((history, rows))
    }

    /// Takes in rows of closed windows: those not already read back at
    /// start go to the API and are appended to the file.
    pub fn record(&mut self, rows: &[WindowMetricRow], api: &ApiState) {
        let fresh: Vec<WindowMetricRow> = if self.read_back.is_empty() {
            rows.to_vec()
        } else {
            let fresh = rows.iter().filter(|row| !self.read_back.remove(&identity(row))).cloned().collect();
            if self.read_back.is_empty() {
                self.read_back.shrink_to_fit();
            }
            fresh
        };
        if fresh.is_empty() {
            return;
        }
        api.push_rows(&fresh);
        let outcome = if self.failing || self.lines + fresh.len() > 2 * RECENT_ROWS {
            self.rewrite(&api.windows.snapshot())
        } else {
            self.append(&fresh)
        };
        self.outcome(outcome);
    }

    /// Flushes and fsyncs the file (with each checkpoint), so the rows
    /// before a checkpoint survive a power cut too.
    pub fn sync(&mut self) {
        let outcome = match &mut self.file {
            Some(file) => file.flush().and_then(|()| file.get_ref().sync_data()),
            None => Ok(()),
        };
        self.outcome(outcome);
    }

    fn outcome(&mut self, outcome: io::Result<()>) {
        match outcome {
            Ok(()) => {
                if self.failing {
                    tracing::info!(path = %self.path.display(), "writing the window history works again");
                }
                self.failing = false;
            }
            Err(error) => {
                if !self.failing {
                    tracing::warn!(
                        path = %self.path.display(), %error,
                        "writing the window history failed; the API keeps its rows in memory, retrying"
                    );
                }
                self.failing = true;
                self.file = None;
            }
        }
    }

    fn append(&mut self, rows: &[WindowMetricRow]) -> io::Result<()> {
        let Some(file) = &mut self.file else { return Err(io::Error::other("not open")) };
        let mut out = Vec::with_capacity(rows.len() * 256);
        for row in rows {
            encode_ndjson_row(row, &mut out);
        }
        file.write_all(&out)?;
        file.flush()?;
        self.lines += rows.len();
        Ok(())
    }

    /// Replaces the file with `rows` (temporary file, fsync, rename).
    fn rewrite(&mut self, rows: &RecentRows) -> io::Result<()> {
        self.file = None;
        let temporary = self.path.with_extension("ndjson.tmp");
        let mut out = BufWriter::with_capacity(256 * 1024, File::create(&temporary)?);
        let mut line = Vec::with_capacity(512);
        for row in rows {
            line.clear();
            encode_ndjson_row(row, &mut line);
            out.write_all(&line)?;
        }
        let file = out.into_inner().map_err(io::IntoInnerError::into_error)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&temporary, &self.path)?;
        if let Some(dir) = self.path.parent() {
            crate::fsutil::sync_dir(dir)?;
        }
        let file = OpenOptions::new().append(true).open(&self.path)?;
        self.file = Some(BufWriter::with_capacity(64 * 1024, file));
        self.lines = rows.len();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(end_minute: i64, metric: &'static str, value: f64) -> WindowMetricRow {
        WindowMetricRow {
            model: Arc::from("shop"),
            model_version: Arc::from("v1"),
            segment: Arc::from(""),
            window_start_ms: (end_minute - 1) * 60_000,
            window_end_ms: end_minute * 60_000,
            feature: (metric != "count").then(|| Arc::from("amount \"x\"")),
            metric,
            value,
            baseline: Some(0.25),
            threshold: None,
            p_value: Some(1e-9),
            drifted: Some(false),
            sample_count: 42,
        }
    }

    #[test]
    fn rows_read_back_are_the_rows_written_and_a_torn_line_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let (api, _reloads) = ApiState::new(None, None);
        let (mut history, rows) = History::open(dir.path()).unwrap();
        assert!(rows.is_empty());
        let written = vec![row(1, "count", 10.0), row(1, "psi", 0.125), row(2, "count", 12.0)];
        history.record(&written, &api);
        history.sync();
        drop(history);
        // A crash mid-write leaves a torn line.
        let path = dir.path().join(FILE_NAME);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"model\":\"shop\",\"model_ver").unwrap();
        drop(file);

        let (api, _reloads) = ApiState::new(None, None);
        let (mut history, rows) = History::open(dir.path()).unwrap();
        assert_eq!(Vec::from(rows.clone()), written);
        api.push_rows(&Vec::from(rows));
        // Rows produced again after the restart are not served twice; new ones are.
        history.record(&[row(2, "count", 12.0), row(3, "count", 7.0)], &api);
        let served: Vec<i64> = api.windows.snapshot().iter().map(|r| r.window_end_ms / 60_000).collect();
        assert_eq!(served, [1, 1, 2, 3]);
        drop(history);
        let (_, rows) = History::open(dir.path()).unwrap();
        assert_eq!(rows.len(), 4);
        assert_eq!(rows.back(), Some(&row(3, "count", 7.0)));
    }

    #[test]
    fn the_file_is_bounded_and_only_the_latest_rows_are_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let (api, _reloads) = ApiState::new(None, None);
        let (mut history, _) = History::open(dir.path()).unwrap();
        let total = 2 * RECENT_ROWS + 10;
        let batch: Vec<WindowMetricRow> = (0..1000).map(|i| row(i + 1, "count", 1.0)).collect();
        let mut done = 0;
        while done < total {
            let rows: Vec<WindowMetricRow> = batch
                .iter()
                .map(|r| WindowMetricRow { window_end_ms: r.window_end_ms + done as i64 * 60_000, ..r.clone() })
                .collect();
            history.record(&rows, &api);
            done += rows.len();
        }
        drop(history);
        let lines = std::fs::read_to_string(dir.path().join(FILE_NAME)).unwrap().lines().count();
        assert!(lines <= 2 * RECENT_ROWS, "{lines} lines");
        let (_, rows) = History::open(dir.path()).unwrap();
        assert_eq!(rows.len(), RECENT_ROWS);
        assert_eq!(Vec::from(rows), Vec::from((*api.windows.snapshot()).clone()));
    }
}
