//! What instances publish to the partials topic (docs/ARCHITECTURE.md,
//! "Scale-out over Kafka"), one record per model and source partition:
//! a [`Delta`], the partial window states a source read from one stretch of
//! a partition, or a [`Commit`], the offset its readers committed (every
//! stretch ending there or before is final, see `timeline.rs`). Records are
//! keyed by model, so one merger sees all of a model's records, in order.
//!
//! MessagePack with named fields, versioned ([`PARTIALS_FORMAT_VERSION`]),
//! read strictly (unknown fields are errors) and bounded
//! ([`MAX_RECORD_BYTES`]) before it is parsed: the partials topic is input
//! like any other, and a record that cannot be read is counted and skipped,
//! never fatal.
//!
//! Pure: no I/O.

use serde::{Deserialize, Serialize};

use crate::window::partial::{PartialWindow, PartialWindowError};

/// The format this build writes and the only one it reads.
pub const PARTIALS_FORMAT_VERSION: u32 = 1;

/// The largest record read (as the largest partial window: a delta holds
/// the windows one stretch touched, each bounded as one is).
pub const MAX_RECORD_BYTES: usize = crate::window::partial::MAX_PARTIAL_WINDOW_BYTES;

/// One record of the partials topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialsRecord {
    /// [`PARTIALS_FORMAT_VERSION`].
    pub format_version: u32,
    /// The instance that published it (its member id in the group), for
    /// logs and `/api/v1/cluster`.
    pub instance: String,
    pub body: RecordBody,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordBody {
    Delta(Delta),
    Commit(Commit),
    Mark(MergerMark),
}

/// What a source read of one model's events in one stretch of a source
/// partition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delta {
    pub model: String,
    /// The source topic and partition.
    pub topic: String,
    pub partition: i32,
    /// The stretch: `[start, end)` in the partition's offsets.
    pub start: i64,
    pub end: i64,
    /// The model's clock in this partition at `end` (the largest event
    /// time read), as the reader knew it; `None` before its first event.
    pub clock_ms: Option<i64>,
    /// The partition has gone idle (`windows.idle_timeout` without an
    /// event): it no longer holds the model's windows open.
    pub idle: bool,
    /// The parts of windows this stretch's events fell in (and the
    /// performance of pairs formed in it), by model version, segment and
    /// window.
    pub windows: Vec<PartialWindow>,
    /// Events of this stretch that were late, per window of their series
    /// still open then (the window that reports them).
    pub late: Vec<LateEvents>,
    /// The stretch's predictions (of a predictions partition) or labels
    /// (of a labels partition) as entries of the join, which the merger
    /// runs (docs/ARCHITECTURE.md, "Joins").
    #[serde(default, skip_serializing_if = "JoinEntries::is_empty")]
    pub joins: JoinEntries,
    /// This record is part `part` (from 0) of the `parts` that carry the
    /// stretch's delta: one too large for a record is cut into several
    /// ([`Delta::split`]), consecutive in the partition, each with some of
    /// the windows (the first also with the late events).
    pub part: u32,
    pub parts: u32,
}

impl Delta {
    /// This delta in parts of at most about `max_bytes` encoded each (a
    /// window larger than that goes alone), in order: the windows first,
    /// then the join entries; one part when it fits.
    pub fn split(mut self, max_bytes: usize) -> Vec<Delta> {
        let windows = std::mem::take(&mut self.windows);
        let late = std::mem::take(&mut self.late);
        let mut joins = std::mem::take(&mut self.joins);
        let predictions = std::mem::take(&mut joins.predictions);
        let labels = std::mem::take(&mut joins.labels);
        let tables = joins;
        let header = rmp_serde::to_vec_named(&self).map_or(0, |bytes| bytes.len());
        let tables_bytes = rmp_serde::to_vec_named(&tables).map_or(0, |bytes| bytes.len());
        let mut groups: Vec<(Vec<PartialWindow>, JoinEntries)> = vec![(Vec::new(), JoinEntries::default())];
        let mut size = header + rmp_serde::to_vec_named(&late).map_or(0, |bytes| bytes.len());
        // Room for `bytes` more (and the tables, for a part's first
        // entry): a new part when the current one is full.
        let mut place = |bytes: usize, entry: bool, groups: &mut Vec<(Vec<PartialWindow>, JoinEntries)>| {
            let (windows, joins) = groups.last().expect("never empty");
            let empty = windows.is_empty() && joins.is_empty();
            if !empty && size + bytes > max_bytes {
                groups.push((Vec::new(), JoinEntries::default()));
                size = header;
            }
            let first_entry = entry && groups.last().expect("never empty").1.is_empty();
            size += bytes + if first_entry { tables_bytes } else { 0 };
        };
        for window in windows {
            place(window.to_msgpack().len(), false, &mut groups);
            groups.last_mut().expect("never empty").0.push(window);
        }
        for entry in predictions {
            place(MAX_ENTRY_BYTES, true, &mut groups);
            groups.last_mut().expect("never empty").1.predictions.push(entry);
        }
        for entry in labels {
            place(MAX_ENTRY_BYTES, true, &mut groups);
            groups.last_mut().expect("never empty").1.labels.push(entry);
        }
        let parts = groups.len() as u32;
        let mut late = Some(late);
        groups
            .into_iter()
            .enumerate()
            .map(|(part, (windows, mut joins))| {
                if !joins.is_empty() {
                    joins.series = tables.series.clone();
                    joins.classes = tables.classes.clone();
                }
                Delta {
                    windows,
                    late: late.take().unwrap_or_default(),
                    joins,
                    part: part as u32,
                    parts,
                    ..self.clone()
                }
            })
            .collect()
    }

    /// The delta `parts` carry (all of them, in order, as
    /// [`Delta::split`] made them): one part of one.
    pub fn join(parts: Vec<Delta>) -> Delta {
        let mut parts = parts.into_iter();
        let mut whole = parts.next().expect("a delta has a part");
        for part in parts {
            whole.windows.extend(part.windows);
            whole.late.extend(part.late);
            if whole.joins.is_empty() {
                whole.joins.series = part.joins.series;
                whole.joins.classes = part.joins.classes;
            }
            whole.joins.predictions.extend(part.joins.predictions);
            whole.joins.labels.extend(part.joins.labels);
        }
        whole.part = 0;
        whole.parts = 1;
        whole
    }
}

/// The most one join entry takes encoded (a prediction's: an array of six
/// numbers, each at most 9 bytes), for cutting deltas into parts.
pub const MAX_ENTRY_BYTES: usize = 1 + 6 * 9;

/// A stretch's join entries, in the order they were read: predictions
/// waiting for their labels, or labels for their predictions. Series and
/// classes are named once per record, in tables the entries index.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinEntries {
    /// The series the predictions are of: (model version, segment).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub series: Vec<(String, String)>,
    /// The classes predicted or labelled (classification models).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub classes: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub predictions: Vec<PredictionEntry>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<LabelEntry>,
}

impl JoinEntries {
    /// No entry (tables alone do not count).
    pub fn is_empty(&self) -> bool {
        self.predictions.is_empty() && self.labels.is_empty()
    }
}

/// A prediction as the join takes it: its join key (the xxh3-128 hash of
/// its event id, high and low halves), its series (an index into
/// [`JoinEntries::series`]), its event time, what it predicted (a class,
/// as an index into [`JoinEntries::classes`], or a value) and its score
/// (NaN when it has none). An array in MessagePack: no field names, as
/// there is one per event.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PredictionEntry(pub u64, pub u64, pub u32, pub i64, pub f64, pub f64);

/// A label as the join takes it: join key (high and low halves), event
/// time, and the actual class (an index into [`JoinEntries::classes`]) or
/// value.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LabelEntry(pub u64, pub u64, pub i64, pub f64);

/// The halves of a join key, as entries carry it.
pub fn key_halves(key: u128) -> (u64, u64) {
    ((key >> 64) as u64, key as u64)
}

/// A join key from its halves.
pub fn key_from_halves(high: u64, low: u64) -> u128 {
    (u128::from(high) << 64) | u128::from(low)
}

/// Late events a window of a series reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LateEvents {
    pub model_version: String,
    pub segment: String,
    pub window_start_ms: i64,
    pub events: u64,
}

/// The readers of a source partition committed `next` (a new reader also
/// publishes the offset it starts at): stretches ending there or before
/// are final.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Commit {
    pub model: String,
    pub topic: String,
    pub partition: i32,
    pub next: i64,
    /// The model's clock in the partition at `next` (what the partition's
    /// next reader starts from, so its lateness is judged as if it had
    /// read the partition from the start).
    pub clock_ms: Option<i64>,
}

/// Where a model's merger stands, for the next merger of the model (a
/// merger moved to another instance, or restarted): it reads the partials
/// partition again from `resume_offset`, skipping what this merger had
/// already emitted (docs/ARCHITECTURE.md, "A merger's recovery").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MergerMark {
    pub model: String,
    /// The partials offset after the last record the merger took in.
    pub next_offset: i64,
    /// The oldest record still needed: one of a provisional stretch, or
    /// with a part of a window still open (`next_offset` when none).
    pub resume_offset: i64,
    /// Windows ending at or before this were emitted.
    pub closed_through_ms: Option<i64>,
    /// Late events not yet reported by a window.
    pub late: Vec<LateEvents>,
    /// Windows emitted and waiting for their labels: their event counts
    /// and the performance of the pairs so far (no data).
    pub awaiting: Vec<PartialWindow>,
    /// Per source partition the merger has heard from.
    pub partitions: Vec<PartitionMark>,
    /// The state of the model's alerts, as the merger's alerting stage
    /// held it when every row emitted so far was written
    /// ([`crate::rules::lifecycle::AlertSnapshot::to_msgpack`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerts: Option<serde_bytes::ByteBuf>,
    /// Where the model's rows of the query rules' history are.
    #[serde(default, skip_serializing_if = "AlertHistory::is_not_kept")]
    pub alert_history: AlertHistory,
}

/// Where a mark's alert state has the model's rows of the query rules'
/// history. They change only when the model's windows close, so they go
/// only in the marks published after that; the others point back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertHistory {
    /// No rule reads a history (no `query:` rule), or no alert state.
    #[default]
    NotKept,
    /// In this mark's `alerts`.
    Carried,
    /// In the newest earlier mark of the model that carries it.
    InAnEarlierMark,
}

impl AlertHistory {
    fn is_not_kept(&self) -> bool {
        *self == AlertHistory::NotKept
    }
}

/// A source partition as a merger's mark records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionMark {
    pub partition: i32,
    /// A partition of the labels topic (else of the predictions topic).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub labels: bool,
    /// The offset its readers committed, as the merger last heard.
    pub committed: Option<i64>,
    /// The largest clock of its final stretches.
    pub clock_ms: Option<i64>,
    /// It had gone idle.
    pub idle: bool,
}

/// Why a record cannot be read. Each message says what is wrong where.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RecordError {
    #[error("partials record: {bytes} bytes; the limit is {limit}")]
    TooLarge { bytes: usize, limit: usize },
    #[error("partials record format_version {found} is not supported: this build reads version {supported}")]
    UnsupportedVersion { found: u32, supported: u32 },
    #[error("partials record: not readable as MessagePack: {message}")]
    Unreadable { message: String },
    #[error("partials record of model {model}, partition {partition}: {field}: {message}")]
    Invalid { model: String, partition: i32, field: String, message: String },
    #[error("partials record of model {model}, partition {partition}: windows[{index}]: {source}")]
    Window { model: String, partition: i32, index: usize, source: Box<PartialWindowError> },
}

#[derive(Deserialize)]
struct VersionProbe {
    format_version: u32,
}

impl PartialsRecord {
    pub fn delta(instance: &str, delta: Delta) -> Self {
        PartialsRecord {
            format_version: PARTIALS_FORMAT_VERSION,
            instance: instance.to_string(),
            body: RecordBody::Delta(delta),
        }
    }

    pub fn mark(instance: &str, mark: MergerMark) -> Self {
        PartialsRecord {
            format_version: PARTIALS_FORMAT_VERSION,
            instance: instance.to_string(),
            body: RecordBody::Mark(mark),
        }
    }

    pub fn commit(instance: &str, commit: Commit) -> Self {
        PartialsRecord {
            format_version: PARTIALS_FORMAT_VERSION,
            instance: instance.to_string(),
            body: RecordBody::Commit(commit),
        }
    }

    /// The model the record is about (its key on the partials topic).
    pub fn model(&self) -> &str {
        match &self.body {
            RecordBody::Delta(delta) => &delta.model,
            RecordBody::Commit(commit) => &commit.model,
            RecordBody::Mark(mark) => &mark.model,
        }
    }

    pub fn to_msgpack(&self) -> Vec<u8> {
        rmp_serde::to_vec_named(self).expect("a partials record always serialises")
    }

    /// Reads [`PartialsRecord::to_msgpack`]'s bytes: the size, then the
    /// format version (another is [`RecordError::UnsupportedVersion`]),
    /// then strictly, then the header fields and each window's.
    pub fn from_msgpack(bytes: &[u8]) -> Result<PartialsRecord, RecordError> {
        if bytes.len() > MAX_RECORD_BYTES {
            return Err(RecordError::TooLarge { bytes: bytes.len(), limit: MAX_RECORD_BYTES });
        }
        let unreadable = |e: rmp_serde::decode::Error| RecordError::Unreadable {
            message: crate::text::shorten_long_tokens(&e.to_string()).into_owned(),
        };
        let probe: VersionProbe = rmp_serde::from_slice(bytes).map_err(unreadable)?;
        if probe.format_version != PARTIALS_FORMAT_VERSION {
            return Err(RecordError::UnsupportedVersion {
                found: probe.format_version,
                supported: PARTIALS_FORMAT_VERSION,
            });
        }
        let record: PartialsRecord = rmp_serde::from_slice(bytes).map_err(unreadable)?;
        record.check()?;
        Ok(record)
    }

    fn check(&self) -> Result<(), RecordError> {
        let (model, partition) = match &self.body {
            RecordBody::Delta(delta) => (&delta.model, delta.partition),
            RecordBody::Commit(commit) => (&commit.model, commit.partition),
            RecordBody::Mark(mark) => (&mark.model, 0),
        };
        let invalid = |field: &str, message: String| {
            Err(RecordError::Invalid {
                model: crate::text::shorten_long_tokens(model).into_owned(),
                partition,
                field: field.to_string(),
                message,
            })
        };
        if model.len() > crate::config::MAX_NAME_BYTES {
            return invalid(
                "model",
                format!("{} bytes long; the limit is {}", model.len(), crate::config::MAX_NAME_BYTES),
            );
        }
        if partition < 0 {
            return invalid("partition", format!("{partition} is negative"));
        }
        match &self.body {
            RecordBody::Commit(commit) if commit.next < 0 => invalid("next", format!("{} is negative", commit.next)),
            RecordBody::Commit(_) => Ok(()),
            RecordBody::Mark(mark) => {
                if mark.resume_offset < 0 || mark.next_offset < mark.resume_offset {
                    return invalid(
                        "resume_offset",
                        format!(
                            "{} is not an offset at or before next_offset {}",
                            mark.resume_offset, mark.next_offset
                        ),
                    );
                }
                match mark.partitions.iter().find(|p| p.partition < 0) {
                    Some(bad) => invalid("partitions", format!("partition {} is negative", bad.partition)),
                    None => Ok(()),
                }
            }
            RecordBody::Delta(delta) => {
                if delta.part >= delta.parts {
                    return invalid("part", format!("part {} of {} does not exist", delta.part, delta.parts));
                }
                if delta.start < 0 || delta.end < delta.start {
                    return invalid(
                        "end",
                        format!("the stretch [{}, {}) is not a range of offsets", delta.start, delta.end),
                    );
                }
                let series = delta.joins.series.len();
                if let Some(index) = delta.joins.predictions.iter().position(|entry| entry.2 as usize >= series) {
                    return invalid(
                        &format!("joins.predictions[{index}]"),
                        format!("series {} is not one of the record's {series}", delta.joins.predictions[index].2),
                    );
                }
                for (index, window) in delta.windows.iter().enumerate() {
                    let wrong = |source: PartialWindowError| RecordError::Window {
                        model: crate::text::shorten_long_tokens(model).into_owned(),
                        partition,
                        index,
                        source: Box::new(source),
                    };
                    window.check_header().map_err(wrong)?;
                    if window.model != *model {
                        return invalid(
                            &format!("windows[{index}].model"),
                            format!("{} is not the record's model", crate::text::shorten_long_tokens(&window.model)),
                        );
                    }
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta() -> Delta {
        Delta {
            model: "fraud".into(),
            topic: "predictions".into(),
            partition: 2,
            start: 100,
            end: 164,
            clock_ms: Some(1_795_687_260_000),
            idle: false,
            windows: Vec::new(),
            late: vec![LateEvents {
                model_version: "3".into(),
                segment: String::new(),
                window_start_ms: 1_795_687_200_000,
                events: 4,
            }],
            joins: JoinEntries::default(),
            part: 0,
            parts: 1,
        }
    }

    #[test]
    fn records_read_back_as_written() {
        for record in [
            PartialsRecord::delta("member-1", delta()),
            PartialsRecord::commit(
                "member-1",
                Commit {
                    model: "fraud".into(),
                    topic: "predictions".into(),
                    partition: 2,
                    next: 164,
                    clock_ms: Some(1_795_687_260_000),
                },
            ),
        ] {
            let bytes = record.to_msgpack();
            assert_eq!(PartialsRecord::from_msgpack(&bytes).unwrap(), record);
            assert_eq!(record.model(), "fraud");
        }
    }

    /// A delta's join entries travel with it, cut into parts of the size
    /// asked for (each part with the tables its entries index) and joined
    /// back as they were.
    #[test]
    fn join_entries_split_into_parts_and_join_back() {
        let mut whole = delta();
        whole.joins = JoinEntries {
            series: vec![("3".into(), String::new()), ("3".into(), "region=eu".into())],
            classes: vec!["0".into(), "1".into()],
            predictions: (0..500)
                .map(|i| PredictionEntry(i, u64::MAX - i, (i % 2) as u32, 1_795_687_200_000 + i as i64, 1.0, 0.75))
                .collect(),
            labels: (0..300).map(|i| LabelEntry(i, i * 7, 1_795_687_300_000, 0.0)).collect(),
        };
        let record = PartialsRecord::delta("m", whole.clone());
        assert_eq!(PartialsRecord::from_msgpack(&record.to_msgpack()).unwrap(), record);
        let parts = whole.clone().split(8 * 1024);
        assert!(parts.len() >= 5, "{} parts", parts.len());
        for part in &parts {
            let bytes = PartialsRecord::delta("m", part.clone()).to_msgpack();
            assert!(bytes.len() <= 8 * 1024 + 512, "a part of {} bytes", bytes.len());
            let read = PartialsRecord::from_msgpack(&bytes).expect("each part reads on its own");
            assert_eq!(read, PartialsRecord::delta("m", part.clone()));
            if !part.joins.is_empty() {
                assert_eq!(part.joins.series.len(), 2, "each part names its series");
            }
        }
        assert_eq!(Delta::join(parts), whole);
        assert_eq!(key_from_halves(key_halves(u128::MAX - 5).0, key_halves(u128::MAX - 5).1), u128::MAX - 5);

        let mut wrong = delta();
        wrong.joins.predictions.push(PredictionEntry(1, 2, 0, 0, 1.0, f64::NAN));
        let error = PartialsRecord::from_msgpack(&PartialsRecord::delta("m", wrong).to_msgpack()).unwrap_err();
        assert_eq!(
            error.to_string(),
            "partials record of model fraud, partition 2: joins.predictions[0]: series 0 is not one of the record's 0"
        );
    }

    #[test]
    fn unreadable_records_say_why() {
        let mut record = PartialsRecord::delta("m", delta());
        record.format_version = 2;
        assert_eq!(
            PartialsRecord::from_msgpack(&record.to_msgpack()),
            Err(RecordError::UnsupportedVersion { found: 2, supported: 1 })
        );
        assert!(matches!(PartialsRecord::from_msgpack(b"\x93garbage"), Err(RecordError::Unreadable { .. })));
        let mut backwards = delta();
        backwards.end = 50;
        let error = PartialsRecord::from_msgpack(&PartialsRecord::delta("m", backwards).to_msgpack()).unwrap_err();
        assert_eq!(
            error.to_string(),
            "partials record of model fraud, partition 2: end: the stretch [100, 50) is not a range of offsets"
        );
        let too_large = vec![0u8; MAX_RECORD_BYTES + 1];
        assert!(matches!(PartialsRecord::from_msgpack(&too_large), Err(RecordError::TooLarge { .. })));
    }
}
