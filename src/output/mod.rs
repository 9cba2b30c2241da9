//! Outputs of the `window_metrics` table (docs/REFERENCE.md; the row type
//! and its Arrow schema are in [`crate::window_metrics`]): the NDJSON
//! encoding used by `replay --out` and the daemon's output file, and the
//! sinks closed windows' rows go to.

pub mod alerts;
pub mod appender;
pub mod recovery;

use std::collections::{BTreeMap, HashSet};
use std::io::{self, Write};
use std::path::Path;

use crate::timestamp::format_rfc3339_ms;
use crate::window_metrics::WindowMetricRow;

fn write_json_str(out: &mut Vec<u8>, text: &str) {
    // serde_json's string escaping; writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, text);
}

fn write_json_f64(out: &mut Vec<u8>, value: Option<f64>) {
    match value {
        Some(v) if v.is_finite() => {
            let _ = serde_json::to_writer(&mut *out, &v);
        }
        _ => out.extend_from_slice(b"null"),
    }
}

/// Appends one row as a line of NDJSON (keys in schema order, timestamps as
/// RFC 3339 UTC with milliseconds) to `out`.
pub fn encode_ndjson_row(row: &WindowMetricRow, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"model\":");
    write_json_str(out, &row.model);
    out.extend_from_slice(b",\"model_version\":");
    write_json_str(out, &row.model_version);
    out.extend_from_slice(b",\"segment\":");
    write_json_str(out, &row.segment);
    out.extend_from_slice(b",\"window_start\":\"");
    out.extend_from_slice(format_rfc3339_ms(row.window_start_ms).as_bytes());
    out.extend_from_slice(b"\",\"window_end\":\"");
    out.extend_from_slice(format_rfc3339_ms(row.window_end_ms).as_bytes());
    out.extend_from_slice(b"\",\"feature\":");
    match &row.feature {
        Some(f) => write_json_str(out, f),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"metric\":");
    write_json_str(out, row.metric);
    out.extend_from_slice(b",\"value\":");
    write_json_f64(out, Some(row.value));
    out.extend_from_slice(b",\"baseline\":");
    write_json_f64(out, row.baseline);
    out.extend_from_slice(b",\"threshold\":");
    write_json_f64(out, row.threshold);
    out.extend_from_slice(b",\"p_value\":");
    write_json_f64(out, row.p_value);
    out.extend_from_slice(b",\"drifted\":");
    out.extend_from_slice(match row.drifted {
        Some(true) => b"true",
        Some(false) => b"false",
        None => b"null",
    });
    out.extend_from_slice(b",\"sample_count\":");
    out.extend_from_slice(row.sample_count.to_string().as_bytes());
    out.extend_from_slice(b"}\n");
}

/// Where closed windows go.
pub trait WindowSink {
    fn write_rows(&mut self, rows: &[WindowMetricRow]) -> io::Result<()>;
    /// Writes what waits; an error when records could not be written (they
    /// still wait and are retried).
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
    /// Whether this sink can take no more rows now: a file it appends to
    /// holds [`appender::MAX_PENDING_BYTES`] for a failing disk. Retries
    /// those writes first. The daemon pauses consumption while it holds
    /// (rows already in hand are still taken: nothing is dropped).
    fn backpressure(&mut self) -> bool {
        false
    }
    /// Called on every tick of the daemon's alerting stage (every 100 ms),
    /// for work driven by the wall clock. Must be cheap when idle. Returns
    /// whether that work changed state a checkpoint keeps (alert
    /// instances, cooldowns, notifications queued), so the daemon
    /// checkpoints it although no event arrived.
    fn tick(&mut self) -> bool {
        false
    }
    /// For a checkpoint: writes and fsyncs each file this sink appends to,
    /// then adds it with its length now, which is durable (an error when
    /// writes or fsync fail: the checkpoint must not count bytes a power
    /// cut could take).
    fn output_positions(
        &mut self,
        _positions: &mut BTreeMap<String, crate::output::recovery::OutputPosition>,
    ) -> io::Result<()> {
        Ok(())
    }
    /// After a restart from a checkpoint: files this sink appends to that
    /// grew after the checkpoint had records written that the replayed
    /// events will produce again; they are recognised and not written twice.
    fn recover_outputs(
        &mut self,
        _positions: &BTreeMap<String, crate::output::recovery::OutputPosition>,
    ) -> io::Result<()> {
        Ok(())
    }
    /// The alert engine's state for a checkpoint, if this sink has one.
    fn alert_snapshot(&self) -> Option<Result<crate::rules::lifecycle::AlertSnapshot, String>> {
        None
    }
    /// Restores a checkpointed alert engine state.
    fn restore_alerts(&mut self, _snapshot: crate::rules::lifecycle::AlertSnapshot) -> Result<(), String> {
        Ok(())
    }
}

/// The identity of a `window_metrics` row: model, version, segment, window,
/// feature and metric (a row with the same identity is the same row).
pub fn row_key(row: &WindowMetricRow) -> String {
    format!(
        "{}\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{}",
        row.model,
        row.model_version,
        row.segment,
        row.window_start_ms,
        row.window_end_ms,
        row.feature.as_deref().unwrap_or(""),
        row.metric
    )
}

/// [`row_key`] of a row as written in NDJSON.
pub fn row_key_of_json(row: &serde_json::Value) -> Option<String> {
    let text = |key: &str| row.get(key).and_then(|v| v.as_str());
    let time = |key: &str| text(key).and_then(crate::timestamp::parse_rfc3339_ms);
    Some(format!(
        "{}\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{}",
        text("model")?,
        text("model_version")?,
        text("segment")?,
        time("window_start")?,
        time("window_end")?,
        text("feature").unwrap_or(""),
        text("metric")?
    ))
}

/// The daemon's `output.window_metrics` file: NDJSON appended (writes that
/// fail are retried, see [`appender`]), its length recorded in checkpoints,
/// and after a restart the rows already written past the checkpoint are
/// not written again.
pub struct AppendFileSink {
    file: appender::Appender,
    buffer: Vec<u8>,
    /// Rows written after the checkpoint the daemon restarted from.
    already_written: HashSet<String>,
}

impl AppendFileSink {
    /// Opens `path` for appending (created if missing).
    pub fn open(path: &Path) -> io::Result<AppendFileSink> {
        Ok(AppendFileSink {
            file: appender::Appender::open(path, false, crate::telemetry::Storage::WindowMetricsOutput)?,
            buffer: Vec::with_capacity(64 * 1024),
            already_written: HashSet::new(),
        })
    }
}

impl WindowSink for AppendFileSink {
    fn write_rows(&mut self, rows: &[WindowMetricRow]) -> io::Result<()> {
        for row in rows {
            if !self.already_written.is_empty() && self.already_written.remove(&row_key(row)) {
                continue;
            }
            encode_ndjson_row(row, &mut self.buffer);
        }
        self.file.append(&self.buffer);
        self.buffer.clear();
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        if self.file.flush() {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "{}: {} bytes wait for a failing disk",
                self.file.path().display(),
                self.file.pending()
            )))
        }
    }
    fn backpressure(&mut self) -> bool {
        self.file.backpressure()
    }
    fn output_positions(
        &mut self,
        positions: &mut BTreeMap<String, crate::output::recovery::OutputPosition>,
    ) -> io::Result<()> {
        let (path, position) = self.file.position(&self.already_written)?;
        positions.insert(path, position);
        Ok(())
    }
    fn recover_outputs(
        &mut self,
        positions: &BTreeMap<String, crate::output::recovery::OutputPosition>,
    ) -> io::Result<()> {
        self.already_written = self.file.records_to_skip(positions, row_key_of_json)?;
        Ok(())
    }
}

/// Writes rows as NDJSON to any writer.
pub struct NdjsonSink<W: Write> {
    writer: W,
    buffer: Vec<u8>,
}

impl<W: Write> NdjsonSink<W> {
    pub fn new(writer: W) -> Self {
        NdjsonSink { writer, buffer: Vec::with_capacity(64 * 1024) }
    }
    pub fn into_inner(self) -> W {
        self.writer
    }
}

impl<W: Write> WindowSink for NdjsonSink<W> {
    fn write_rows(&mut self, rows: &[WindowMetricRow]) -> io::Result<()> {
        for row in rows {
            encode_ndjson_row(row, &mut self.buffer);
            if self.buffer.len() > 60 * 1024 {
                self.writer.write_all(&self.buffer)?;
                self.buffer.clear();
            }
        }
        self.writer.write_all(&self.buffer)?;
        self.buffer.clear();
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }
}

/// Keeps rows in memory (tests, the HTTP API's recent history).
#[derive(Default)]
pub struct MemorySink {
    pub rows: Vec<WindowMetricRow>,
}

impl WindowSink for MemorySink {
    fn write_rows(&mut self, rows: &[WindowMetricRow]) -> io::Result<()> {
        self.rows.extend_from_slice(rows);
        Ok(())
    }
}

/// Sends rows over a channel (tests and in-process consumers).
impl WindowSink for std::sync::mpsc::Sender<Vec<WindowMetricRow>> {
    fn write_rows(&mut self, rows: &[WindowMetricRow]) -> io::Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        self.send(rows.to_vec()).map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "receiver gone"))
    }
}
