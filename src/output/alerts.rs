//! Writing alert transitions: the `--alerts` NDJSON (SPEC §6 transition
//! format) and the append-only audit log, one line per transition with the
//! rule (file, line, sha256), the evidence rows, the models' baselines and
//! the notifications requested — enough to answer "why did we retrain on
//! Tuesday?" months later.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
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
    writer: BufWriter<File>,
    /// Model name → baseline identity.
    baselines: BTreeMap<String, Value>,
}

impl AuditLog {
    /// Opens (creating) `path` for appending.
    pub fn open(path: &Path, baselines: BTreeMap<String, Value>) -> io::Result<AuditLog> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(AuditLog { writer: BufWriter::new(file), baselines })
    }

    /// Appends one free-form record (notification attempts).
    pub fn write_record(&mut self, record: &Value) -> io::Result<()> {
        serde_json::to_writer(&mut self.writer, record)?;
        self.writer.write_all(b"\n")?;
        self.writer.flush()?;
        self.writer.get_ref().sync_data()
    }

    pub fn write(&mut self, events: &[AlertEvent]) -> io::Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let logged_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        for event in events {
            let record = AuditRecord {
                kind: "transition",
                logged_at: logged_at.clone(),
                transition: &event.transition,
                rule: &event.rule,
                evidence: &event.evidence,
                baseline: self.baselines.get(&event.transition.model),
                notifications: &event.transition.notify,
            };
            serde_json::to_writer(&mut self.writer, &record)?;
            self.writer.write_all(b"\n")?;
        }
        self.writer.flush()?;
        self.writer.get_ref().sync_data()
    }
}
