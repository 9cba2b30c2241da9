//! Compiled JSON Pointer sets: a trie over object keys that the decoder
//! walks while parsing, so it descends only into the parts of an event that
//! some configured pointer names and skips the rest unparsed.

use crate::config::{FieldPaths, parse_json_pointer};

/// The event fields driftwatch extracts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    EventId,
    Model,
    ModelVersion,
    Timestamp,
    Features,
    Prediction,
    Score,
    LatencyMs,
    Segment,
    Label,
}

impl Field {
    /// The field's name in the default event format (used in error messages).
    pub fn name(self) -> &'static str {
        match self {
            Field::EventId => "event_id",
            Field::Model => "model",
            Field::ModelVersion => "model_version",
            Field::Timestamp => "timestamp",
            Field::Features => "features",
            Field::Prediction => "prediction",
            Field::Score => "score",
            Field::LatencyMs => "latency_ms",
            Field::Segment => "segment",
            Field::Label => "label",
        }
    }

    pub const PREDICTION_FIELDS: [Field; 9] = [
        Field::EventId,
        Field::Model,
        Field::ModelVersion,
        Field::Timestamp,
        Field::Features,
        Field::Prediction,
        Field::Score,
        Field::LatencyMs,
        Field::Segment,
    ];
    pub const LABEL_FIELDS: [Field; 4] = [Field::EventId, Field::Model, Field::Timestamp, Field::Label];
}

/// The pointer configured for `field` in `paths`.
pub fn pointer_of(paths: &FieldPaths, field: Field) -> &str {
    match field {
        Field::EventId => &paths.event_id,
        Field::Model => &paths.model,
        Field::ModelVersion => &paths.model_version,
        Field::Timestamp => &paths.timestamp,
        Field::Features => &paths.features,
        Field::Prediction => &paths.prediction,
        Field::Score => &paths.score,
        Field::LatencyMs => &paths.latency_ms,
        Field::Segment => &paths.segment,
        Field::Label => &paths.label,
    }
}

/// One object level of the trie.
#[derive(Debug, Default, Clone)]
pub struct Node {
    /// Keys at this level that lead somewhere, with what they lead to.
    pub children: Vec<(Box<str>, Node)>,
    /// The field this node *is* (a leaf); a node with a target is decoded as
    /// that field even when other pointers continue below it.
    pub target: Option<Field>,
}

impl Node {
    /// Index of the child for `key`; a short linear scan beats hashing for
    /// the handful of keys an event has.
    #[inline]
    pub fn child(&self, key: &str) -> Option<usize> {
        self.children.iter().position(|(k, _)| &**k == key)
    }

    fn insert(&mut self, tokens: &[String], field: Field) {
        match tokens.split_first() {
            None => self.target = Some(field),
            Some((first, rest)) => {
                let index = match self.child(first) {
                    Some(i) => i,
                    None => {
                        self.children.push((first.clone().into_boxed_str(), Node::default()));
                        self.children.len() - 1
                    }
                };
                self.children[index].1.insert(rest, field);
            }
        }
    }
}

/// Builds the trie for `fields` of `paths`. Errors name the field whose
/// pointer is unusable (invalid, or the document root).
pub fn compile(paths: &FieldPaths, fields: &[Field]) -> Result<Node, String> {
    let mut root = Node::default();
    for &field in fields {
        let pointer = pointer_of(paths, field);
        let tokens = parse_json_pointer(pointer).map_err(|e| format!("fields.{}: {e}", field.name()))?;
        if tokens.is_empty() {
            return Err(format!(
                "fields.{}: the pointer \"\" names the whole event; name a member instead",
                field.name()
            ));
        }
        root.insert(&tokens, field);
    }
    Ok(root)
}
