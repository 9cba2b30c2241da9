//! Writing alert transitions: the `--alerts` NDJSON (docs/RULES.md transition
//! format) and the append-only audit log, one line per transition with the
//! rule (file, line, sha256), the evidence rows, the models' baselines and
//! the notifications requested — enough to answer "why did we retrain on
//! Tuesday?" months later.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use crate::rules::AlertEvent;

/// Transitions as NDJSON.
pub struct AlertsWriter<W: Write> {
    writer: W,
}

impl<W: Write> AlertsWriter<W> {
    pub fn new(writer: W) -> Self {
        AlertsWriter { writer }
    }

    pub fn write(&mut self, events: &[AlertEvent]) -> io::Result<()> {
        for event in events {
            serde_json::to_writer(&mut self.writer, &event.transition)?;
            self.writer.write_all(b"\n")?;
        }
        self.writer.flush()
    }
}

/// One audit log line for a transition (`kind: transition`).
#[derive(Serialize)]
struct AuditRecord<'a> {
    kind: &'static str,
    /// Wall-clock time the line was written (RFC 3339).
    logged_at: String,
    #[serde(flatten)]
    transition: &'a crate::rules::Transition,
    rule: &'a crate::rules::lifecycle::RuleReference,
    evidence: &'a [Value],
    /// The baseline the model's rows were compared with (path, build time,
    /// the training inputs' sha256), when it has one.
    baseline: Option<&'a Value>,
    /// Notifiers asked to deliver this transition.
    notifications: &'a [String],
}

/// The append-only audit log (NDJSON), flushed after every batch.
pub struct AuditLog {
    file: super::appender::Appender,
    line: Vec<u8>,
    /// Model name → baseline identity.
    baselines: BTreeMap<String, Value>,
    /// Transitions logged after the checkpoint the daemon restarted from:
    /// the replayed events make them again; they are not logged twice.
    already_logged: std::collections::HashSet<String>,
}

/// The identity of a transition: its instance, state, window and start.
fn transition_key(fingerprint: &str, state: &str, window_end: &str, active_since: &str) -> String {
    format!("{fingerprint}|{state}|{window_end}|{active_since}")
}

fn transition_key_of_json(record: &Value) -> Option<String> {
    if record.get("kind")?.as_str()? != "transition" {
        return None;
    }
    let text = |key: &str| record.get(key).and_then(Value::as_str);
    Some(transition_key(text("fingerprint")?, text("state")?, text("window_end")?, text("active_since")?))
}

impl AuditLog {
    /// Opens (creating) `path` for appending.
    pub fn open(path: &Path, baselines: BTreeMap<String, Value>) -> io::Result<AuditLog> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        Ok(AuditLog {
            file: super::appender::Appender::open(path, true, crate::telemetry::Storage::AuditLog)?,
            line: Vec::new(),
            baselines,
            already_logged: Default::default(),
        })
    }

    /// Writes what waits; an error when records could not be written.
    pub fn flush(&mut self) -> io::Result<()> {
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

    /// Whether the log holds as much as it may for a failing disk (see
    /// [`super::appender::Appender::backpressure`]).
    pub fn backpressure(&mut self) -> bool {
        self.file.backpressure()
    }

    /// The log's path and durable length (for a checkpoint); an error while
    /// writes or fsync are failing.
    pub fn position(&mut self) -> io::Result<(String, super::recovery::OutputPosition)> {
        self.file.position(&self.already_logged)
    }

    /// After a restart: transitions logged past the checkpoint's length are
    /// recognised when they recur and not logged again.
    pub fn recover(&mut self, positions: &BTreeMap<String, crate::output::recovery::OutputPosition>) -> io::Result<()> {
        self.already_logged = self.file.records_to_skip(positions, transition_key_of_json)?;
        Ok(())
    }

    /// Appends one free-form record (notification attempts). A failing disk
    /// never fails the caller: the record waits and is retried.
    pub fn write_record(&mut self, record: &Value) -> io::Result<()> {
        self.line.clear();
        serde_json::to_writer(&mut self.line, record)?;
        self.line.push(b'\n');
        self.file.append(&self.line);
        Ok(())
    }

    pub fn write(&mut self, events: &[AlertEvent]) -> io::Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        self.line.clear();
        let logged_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        for event in events {
            let t = &event.transition;
            if !self.already_logged.is_empty()
                && self.already_logged.remove(&transition_key(&t.fingerprint, &t.state, &t.window_end, &t.active_since))
            {
                continue;
            }
            let record = AuditRecord {
                kind: "transition",
                logged_at: logged_at.clone(),
                transition: &event.transition,
                rule: &event.rule,
                evidence: &event.evidence,
                baseline: self.baselines.get(&event.transition.model),
                notifications: &event.transition.notify,
            };
            serde_json::to_writer(&mut self.line, &record)?;
            self.line.push(b'\n');
        }
        self.file.append(&self.line);
        self.line.clear();
        Ok(())
    }
}
