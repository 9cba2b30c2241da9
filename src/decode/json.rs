//! The streaming JSON walker: serde visitors that follow a compiled pointer
//! trie and copy the fields they find into a reusable [`RowScratch`], with no
//! `serde_json::Value` tree and no allocation once the scratch has warmed up.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::pointer::{Field, Node};
use super::{InvalidReason, MAX_CATEGORY_BYTES, MAX_EVENT_NAME_BYTES, timestamp};

/// A byte range into [`RowScratch::bytes`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

/// A scalar JSON value, strings kept as spans into the scratch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scalar {
    Number(f64),
    Text(Span),
    Bool(bool),
    Null,
    /// An object or array where a scalar was expected.
    Nested,
}

/// A name or value longer than its limit (reason `too_long`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLong {
    /// What it is, e.g. "a feature name".
    pub what: &'static str,
    pub bytes: usize,
    pub limit: usize,
}

/// Everything extracted from one event, reused from event to event.
#[derive(Debug, Default)]
pub struct RowScratch {
    bytes: Vec<u8>,
    pub event_id: Option<Span>,
    pub model: Option<Span>,
    pub model_version: Option<Span>,
    pub timestamp_ms: Option<i64>,
    pub prediction: Option<Scalar>,
    pub label: Option<Scalar>,
    pub score: Option<Scalar>,
    pub latency_ms: Option<Scalar>,
    pub features: Vec<(Span, Scalar)>,
    pub segment: Vec<(Span, Span)>,
    /// Set by a visitor just before it fails the parse, so the caller can
    /// tell a type error from a syntax error.
    pub error: Option<(InvalidReason, Field)>,
    /// Where (line, column) a syntax error or out-of-range number was found.
    pub syntax_error_at: Option<(usize, usize)>,
    /// Set with `error` when a name or value was longer than its limit.
    pub too_long: Option<TooLong>,
}

impl RowScratch {
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.event_id = None;
        self.model = None;
        self.model_version = None;
        self.timestamp_ms = None;
        self.prediction = None;
        self.label = None;
        self.score = None;
        self.latency_ms = None;
        self.features.clear();
        self.segment.clear();
        self.error = None;
        self.syntax_error_at = None;
        self.too_long = None;
    }

    #[inline]
    pub fn str(&self, span: Span) -> &str {
        let bytes = &self.bytes[span.start as usize..span.end as usize];
        debug_assert!(std::str::from_utf8(bytes).is_ok());
        // SAFETY: `bytes` is only ever appended to from `&str` values
        // (`push_str`) or from number formatting (`canonical_number`), and spans
        // always cover whole appended pieces, so every span is valid UTF-8.
        unsafe { std::str::from_utf8_unchecked(bytes) }
    }

    #[inline]
    fn push_str(&mut self, text: &str) -> Span {
        let start = self.bytes.len() as u32;
        self.bytes.extend_from_slice(text.as_bytes());
        Span { start, end: self.bytes.len() as u32 }
    }

    fn fail<E: de::Error>(&mut self, reason: InvalidReason, field: Field) -> E {
        self.error = Some((reason, field));
        E::custom(reason.label())
    }

    /// Fails the parse when `span` is longer than `limit` bytes.
    fn check_len<E: de::Error>(&mut self, span: Span, limit: usize, what: &'static str, field: Field) -> Result<(), E> {
        let bytes = (span.end - span.start) as usize;
        if bytes <= limit {
            return Ok(());
        }
        self.too_long = Some(TooLong { what, bytes, limit });
        Err(self.fail(InvalidReason::TooLong, field))
    }
}

/// Writes a JSON number the way class labels and ids are compared:
/// integral values without a fraction (`1.0` → `1`).
#[inline]
pub fn write_canonical_number(out: &mut Vec<u8>, value: f64) {
    use std::io::Write as _;
    // Writing into a Vec cannot fail.
    let _ = if value.fract() == 0.0 && value.abs() < 9.007_199_254_740_992e15 {
        write!(out, "{}", value as i64)
    } else {
        write!(out, "{value}")
    };
}

/// [`write_canonical_number`] into the scratch.
#[inline]
pub fn canonical_number(scratch: &mut RowScratch, value: f64) -> Span {
    let start = scratch.bytes.len() as u32;
    write_canonical_number(&mut scratch.bytes, value);
    Span { start, end: scratch.bytes.len() as u32 }
}

/// Parses one event into `scratch` following `root`.
pub fn walk(root: &Node, bytes: &[u8], scratch: &mut RowScratch) -> Result<(), InvalidReason> {
    scratch.clear();
    // One UTF-8 check of the whole payload (JSON text is UTF-8) is cheaper
    // than serde_json checking every string it meets in a byte slice.
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Err(InvalidReason::InvalidJson);
    };
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let outcome = ObjectSeed { node: root, row: scratch, root: true }
        .deserialize(&mut deserializer)
        .and_then(|()| deserializer.end());
    match outcome {
        Ok(()) => Ok(()),
        Err(error) => {
            if scratch.error.is_none() {
                scratch.syntax_error_at = Some((error.line(), error.column()));
            }
            Err(match scratch.error {
                Some((reason, _)) => reason,
                None if error.to_string().starts_with("number out of range") => InvalidReason::NonFinite,
                None => InvalidReason::InvalidJson,
            })
        }
    }
}

struct ObjectSeed<'a> {
    node: &'a Node,
    row: &'a mut RowScratch,
    root: bool,
}

impl<'de> DeserializeSeed<'de> for ObjectSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ObjectSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(child) = map.next_key_seed(ChildKey { node: self.node })? {
            match child {
                Some(index) => {
                    let node = &self.node.children[index].1;
                    match node.target {
                        Some(field) => map.next_value_seed(FieldSeed { field, row: self.row })?,
                        None => map.next_value_seed(ObjectSeed { node, row: self.row, root: false })?,
                    }
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }

    // Below the root, a non-object where the trie expects one simply holds
    // none of the configured fields; at the root it is not an event at all.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.root {
            return Err(self.row.fail(InvalidReason::NotAnObject, Field::EventId));
        }
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.non_object()
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.non_object()
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.non_object()
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.non_object()
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.non_object()
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.non_object()
    }
}

impl ObjectSeed<'_> {
    fn non_object<E: de::Error>(self) -> Result<(), E> {
        if self.root {
            return Err(self.row.fail(InvalidReason::NotAnObject, Field::EventId));
        }
        Ok(())
    }
}

/// Looks a key up among a node's children without allocating.
struct ChildKey<'a> {
    node: &'a Node,
}

impl<'de> DeserializeSeed<'de> for ChildKey<'_> {
    type Value = Option<usize>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Option<usize>, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for ChildKey<'_> {
    type Value = Option<usize>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_str<E: de::Error>(self, key: &str) -> Result<Option<usize>, E> {
        Ok(self.node.child(key))
    }
}

/// Copies a key (feature or segment name) into the scratch.
struct KeyToScratch<'a> {
    row: &'a mut RowScratch,
}

impl<'de> DeserializeSeed<'de> for KeyToScratch<'_> {
    type Value = Span;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Span, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyToScratch<'_> {
    type Value = Span;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_str<E: de::Error>(self, key: &str) -> Result<Span, E> {
        Ok(self.row.push_str(key))
    }
}

/// Reads any scalar into the scratch; objects and arrays are skipped and
/// reported as [`Scalar::Nested`].
struct ScalarSeed<'a> {
    row: &'a mut RowScratch,
}

impl<'de> DeserializeSeed<'de> for ScalarSeed<'_> {
    type Value = Scalar;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Scalar, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ScalarSeed<'_> {
    type Value = Scalar;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON scalar")
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
        Ok(Scalar::Number(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
        Ok(Scalar::Number(v as f64))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
        Ok(Scalar::Number(v as f64))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
        Ok(Scalar::Text(self.row.push_str(v)))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
        Ok(Scalar::Bool(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Scalar, E> {
        Ok(Scalar::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Scalar, E> {
        Ok(Scalar::Null)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Nested)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::Nested)
    }
}

/// Decodes the value of one configured field.
struct FieldSeed<'a> {
    field: Field,
    row: &'a mut RowScratch,
}

impl<'de> DeserializeSeed<'de> for FieldSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        let FieldSeed { field, row } = self;
        match field {
            Field::Features => deserializer.deserialize_any(FeaturesVisitor { row }),
            Field::Segment => deserializer.deserialize_any(SegmentVisitor { row }),
            _ => {
                let scalar = ScalarSeed { row }.deserialize(deserializer)?;
                store_scalar(row, field, scalar)
            }
        }
    }
}

fn is_non_finite_text(text: &str) -> bool {
    matches!(
        text.trim().to_ascii_lowercase().as_str(),
        "nan" | "inf" | "+inf" | "-inf" | "infinity" | "+infinity" | "-infinity"
    )
}

fn store_scalar<E: de::Error>(row: &mut RowScratch, field: Field, scalar: Scalar) -> Result<(), E> {
    if scalar == Scalar::Nested {
        return Err(row.fail(InvalidReason::WrongType, field));
    }
    match field {
        Field::EventId | Field::Model | Field::ModelVersion => {
            let span = match scalar {
                Scalar::Text(span) => span,
                Scalar::Number(n) if n.fract() == 0.0 => canonical_number(row, n),
                Scalar::Null => return Ok(()),
                _ => return Err(row.fail(InvalidReason::WrongType, field)),
            };
            match field {
                Field::EventId => row.event_id = Some(span),
                Field::Model => row.model = Some(span),
                _ => {
                    row.check_len(span, MAX_EVENT_NAME_BYTES, "a model version", field)?;
                    row.model_version = Some(span);
                }
            }
        }
        Field::Timestamp => {
            let ms = match scalar {
                Scalar::Number(n) if n.is_finite() => n as i64,
                Scalar::Text(span) => match timestamp::parse_rfc3339_ms(row.str(span)) {
                    Some(ms) => ms,
                    None => return Err(row.fail(InvalidReason::BadTimestamp, field)),
                },
                Scalar::Null => return Ok(()),
                _ => return Err(row.fail(InvalidReason::BadTimestamp, field)),
            };
            row.timestamp_ms = Some(ms);
        }
        Field::Score | Field::LatencyMs => {
            let value = match scalar {
                Scalar::Number(n) => Scalar::Number(n),
                Scalar::Null => return Ok(()),
                Scalar::Text(span) if is_non_finite_text(row.str(span)) => {
                    return Err(row.fail(InvalidReason::NonFinite, field));
                }
                _ => return Err(row.fail(InvalidReason::WrongType, field)),
            };
            if field == Field::Score {
                row.score = Some(value);
            } else {
                row.latency_ms = Some(value);
            }
        }
        Field::Prediction | Field::Label => {
            if let Scalar::Text(span) = scalar
                && is_non_finite_text(row.str(span))
            {
                return Err(row.fail(InvalidReason::NonFinite, field));
            }
            if scalar == Scalar::Null {
                return Ok(());
            }
            if field == Field::Prediction {
                row.prediction = Some(scalar);
            } else {
                row.label = Some(scalar);
            }
        }
        Field::Features | Field::Segment => unreachable!("objects are decoded by their visitors"),
    }
    Ok(())
}

struct FeaturesVisitor<'a> {
    row: &'a mut RowScratch,
}

impl<'de> Visitor<'de> for FeaturesVisitor<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object of features")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(name) = map.next_key_seed(KeyToScratch { row: self.row })? {
            self.row.check_len(name, MAX_EVENT_NAME_BYTES, "a feature name", Field::Features)?;
            let value = map.next_value_seed(ScalarSeed { row: self.row })?;
            if let Scalar::Text(span) = value {
                self.row.check_len(span, MAX_CATEGORY_BYTES, "a feature value", Field::Features)?;
            }
            self.row.features.push((name, value));
        }
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(self.row.fail(InvalidReason::WrongType, Field::Features))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Err(self.row.fail(InvalidReason::WrongType, Field::Features))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Err(self.row.fail(InvalidReason::WrongType, Field::Features))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Err(self.row.fail(InvalidReason::WrongType, Field::Features))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Err(self.row.fail(InvalidReason::WrongType, Field::Features))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Err(self.row.fail(InvalidReason::WrongType, Field::Features))
    }
}

struct SegmentVisitor<'a> {
    row: &'a mut RowScratch,
}

impl<'de> Visitor<'de> for SegmentVisitor<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object of segment keys")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key_seed(KeyToScratch { row: self.row })? {
            self.row.check_len(key, MAX_EVENT_NAME_BYTES, "a segment key", Field::Segment)?;
            let value = map.next_value_seed(ScalarSeed { row: self.row })?;
            if let Scalar::Text(span) = value {
                self.row.check_len(span, MAX_EVENT_NAME_BYTES, "a segment value", Field::Segment)?;
            }
            let value = match value {
                Scalar::Text(span) => span,
                Scalar::Number(n) => canonical_number(self.row, n),
                Scalar::Bool(b) => self.row.push_str(if b { "true" } else { "false" }),
                Scalar::Null => continue,
                Scalar::Nested => return Err(self.row.fail(InvalidReason::WrongType, Field::Segment)),
            };
            self.row.segment.push((key, value));
        }
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Err(self.row.fail(InvalidReason::WrongType, Field::Segment))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(self.row.fail(InvalidReason::WrongType, Field::Segment))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Err(self.row.fail(InvalidReason::WrongType, Field::Segment))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Err(self.row.fail(InvalidReason::WrongType, Field::Segment))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Err(self.row.fail(InvalidReason::WrongType, Field::Segment))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Err(self.row.fail(InvalidReason::WrongType, Field::Segment))
    }
}
