//! Decode: Kafka payloads (or file lines) straight into Arrow arrays.
//!
//! Each event is walked once by serde visitors that follow the model's
//! compiled JSON Pointers ([`pointer`]), its fields are copied into a reused
//! scratch row ([`json`]), checked, and only then appended to the model's
//! Arrow builders, so a rejected event leaves no trace in any column.
//! [`Decoder::finish_predictions`] hands out one [`PredictionBatch`] per
//! model per micro-batch.
//!
//! Architecture invariant: decoding does no I/O and never panics on input;
//! every rejection is an [`Invalid`] naming the reason and the field.

pub mod json;
pub mod pointer;

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, Float64Array, Float64Builder, Int64Array, StringArray, StringBuilder, UInt32Array,
};

use crate::config::{MAX_EVENT_NAME_BYTES, PipelineConfig, Task};
use crate::model::{ClassId, FeatureKind, ModelId, ModelRegistry, ModelState};
use crate::timestamp;
use json::{RowScratch, Scalar};
use pointer::{Field, Node};

/// Why an event was rejected. The label is the `reason` of
/// `driftwatch_events_invalid_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum InvalidReason {
    InvalidJson,
    NotAnObject,
    MissingField,
    WrongType,
    NonFinite,
    BadTimestamp,
    TimestampOutOfRange,
    UnknownModel,
    TooLarge,
    TooManyClasses,
    TooLong,
    /// A prediction or label that is not one of a binary model's two
    /// classes, or a binary model's score outside [0, 1].
    BadClass,
}

impl InvalidReason {
    pub const ALL: [InvalidReason; 12] = [
        InvalidReason::InvalidJson,
        InvalidReason::NotAnObject,
        InvalidReason::MissingField,
        InvalidReason::WrongType,
        InvalidReason::NonFinite,
        InvalidReason::BadTimestamp,
        InvalidReason::TimestampOutOfRange,
        InvalidReason::UnknownModel,
        InvalidReason::TooLarge,
        InvalidReason::TooManyClasses,
        InvalidReason::TooLong,
        InvalidReason::BadClass,
    ];

    pub fn label(self) -> &'static str {
        match self {
            InvalidReason::InvalidJson => "invalid_json",
            InvalidReason::NotAnObject => "not_an_object",
            InvalidReason::MissingField => "missing_field",
            InvalidReason::WrongType => "wrong_type",
            InvalidReason::NonFinite => "non_finite",
            InvalidReason::BadTimestamp => "bad_timestamp",
            InvalidReason::TimestampOutOfRange => "timestamp_out_of_range",
            InvalidReason::UnknownModel => "unknown_model",
            InvalidReason::TooLarge => "too_large",
            InvalidReason::TooManyClasses => "too_many_classes",
            InvalidReason::TooLong => "too_long",
            InvalidReason::BadClass => "bad_class",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// The longest text value of a feature, in bytes (categories are kept per
/// window and series, up to `pipeline.max_categories_per_feature`). Longer
/// ones reject the event (`too_long`).
pub const MAX_CATEGORY_BYTES: usize = 1024;

/// A rejected event: the reason and a human-readable detail naming the field.
#[derive(Debug, Clone, PartialEq)]
pub struct Invalid {
    pub reason: InvalidReason,
    pub detail: String,
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason.label(), self.detail)
    }
}

/// The prediction column of a batch: class ids for classification, values
/// for regression.
#[derive(Debug, Clone)]
pub enum PredictionArray {
    Class(UInt32Array),
    Value(Float64Array),
}

/// One feature's column in a batch.
#[derive(Debug, Clone)]
pub enum FeatureArray {
    Numeric(Float64Array),
    Categorical(StringArray),
}

impl FeatureArray {
    pub fn as_array_ref(&self) -> ArrayRef {
        match self {
            FeatureArray::Numeric(a) => Arc::new(a.clone()),
            FeatureArray::Categorical(a) => Arc::new(a.clone()),
        }
    }
}

/// A micro-batch of one model's prediction events, columnar.
#[derive(Debug, Clone)]
pub struct PredictionBatch {
    pub model: ModelId,
    pub series: UInt32Array,
    pub event_time_ms: Int64Array,
    pub event_id: StringArray,
    pub prediction: PredictionArray,
    pub score: Float64Array,
    pub latency_ms: Float64Array,
    /// Indexed by feature id; features first seen after this batch are absent.
    pub features: Vec<FeatureArray>,
    /// (row, feature id) of values whose JSON type did not match the feature.
    pub type_errors: Vec<(u32, u32)>,
}

impl PredictionBatch {
    pub fn len(&self) -> usize {
        self.series.len()
    }
    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }
}

/// A micro-batch of one model's label events.
#[derive(Debug, Clone)]
pub struct LabelBatch {
    pub model: ModelId,
    pub event_time_ms: Int64Array,
    pub event_id: StringArray,
    pub label: PredictionArray,
}

impl LabelBatch {
    pub fn len(&self) -> usize {
        self.event_id.len()
    }
    pub fn is_empty(&self) -> bool {
        self.event_id.is_empty()
    }
}

enum FeatureBuilder {
    Numeric(Float64Builder),
    Categorical(StringBuilder),
}

impl FeatureBuilder {
    fn len(&self) -> usize {
        match self {
            FeatureBuilder::Numeric(b) => datafusion::arrow::array::ArrayBuilder::len(b),
            FeatureBuilder::Categorical(b) => datafusion::arrow::array::ArrayBuilder::len(b),
        }
    }
    fn pad_to(&mut self, len: usize) {
        let missing = len.saturating_sub(self.len());
        if missing > 0 {
            match self {
                FeatureBuilder::Numeric(b) => b.append_nulls(missing),
                FeatureBuilder::Categorical(b) => {
                    for _ in 0..missing {
                        b.append_null()
                    }
                }
            }
        }
    }
}

enum ValueColumn {
    Class(Vec<u32>),
    Value(Vec<f64>),
}

impl ValueColumn {
    fn new(task: Task) -> Self {
        match task {
            Task::Regression => ValueColumn::Value(Vec::new()),
            _ => ValueColumn::Class(Vec::new()),
        }
    }
    fn finish(&mut self) -> PredictionArray {
        match self {
            ValueColumn::Class(v) => PredictionArray::Class(UInt32Array::from(std::mem::take(v))),
            ValueColumn::Value(v) => PredictionArray::Value(Float64Array::from(std::mem::take(v))),
        }
    }
}

struct PredictionColumns {
    series: Vec<u32>,
    time: Vec<i64>,
    event_id: StringBuilder,
    prediction: ValueColumn,
    score: Float64Builder,
    latency: Float64Builder,
    features: Vec<FeatureBuilder>,
    type_errors: Vec<(u32, u32)>,
}

impl PredictionColumns {
    fn new(task: Task) -> Self {
        PredictionColumns {
            series: Vec::new(),
            time: Vec::new(),
            event_id: StringBuilder::new(),
            prediction: ValueColumn::new(task),
            score: Float64Builder::new(),
            latency: Float64Builder::new(),
            features: Vec::new(),
            type_errors: Vec::new(),
        }
    }
}

struct LabelColumns {
    time: Vec<i64>,
    event_id: StringBuilder,
    label: ValueColumn,
}

/// Models that share one field mapping are decoded with one trie.
struct MappingGroup {
    prediction_trie: Node,
    label_trie: Node,
    models: Vec<ModelId>,
    /// The configured pointers, which invalid-event messages name.
    pointers: crate::config::FieldPaths,
}

/// Counters the decoder keeps for telemetry (drained by the caller).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct DecodeCounters {
    /// Features not added because the model reached `max_features_per_model`.
    pub features_over_cap: u64,
    /// Segments folded into `__other__` because of `max_segments_per_model`.
    pub segments_over_cap: u64,
    /// Events filed under version `__other__` because of `max_versions_per_model`.
    pub versions_over_cap: u64,
    /// Feature values whose JSON type did not match the feature's kind
    /// (recorded as missing, and in the window's `type_error_rate`).
    pub type_errors: u64,
}

/// The event decoder for all configured models.
pub struct Decoder {
    groups: Vec<MappingGroup>,
    /// Trie of every distinct model pointer when the groups differ, each
    /// leaf telling which group it belongs to (by index into `model_pointer_groups`).
    model_finder: Option<(Node, Node)>,
    scratch: RowScratch,
    /// The mapping group of the event being decoded, once known (for the
    /// pointers its error messages name).
    current_group: Option<usize>,
    segment_key: String,
    /// Reused text of numbers used as class labels or category values.
    number_text: Vec<u8>,
    predictions: Vec<PredictionColumns>,
    labels: Vec<LabelColumns>,
    max_features: usize,
    max_segments: usize,
    max_versions: usize,
    max_classes: usize,
    max_message_bytes: usize,
    /// Events at or after this time are out of range (the fixed upper
    /// bound, or the host's clock plus `max_future_skew` in the daemon).
    latest_accepted_ms: i64,
    pub counters: DecodeCounters,
}

impl Decoder {
    /// Compiles every model's field mapping. Fails naming the model and field
    /// of an unusable pointer.
    pub fn new(registry: &ModelRegistry, pipeline: &PipelineConfig) -> Result<Decoder, String> {
        let mut groups: Vec<MappingGroup> = Vec::new();
        let mut group_paths = Vec::new();
        for (id, model) in registry.models.iter().enumerate() {
            let paths = &model.config.fields;
            if let Some(index) = group_paths.iter().position(|p| p == paths) {
                groups[index].models.push(id as ModelId);
                continue;
            }
            let prediction_trie = pointer::compile(paths, &Field::PREDICTION_FIELDS)
                .map_err(|e| format!("models[{id}] ({}): {e}", model.name))?;
            let label_trie = pointer::compile(paths, &Field::LABEL_FIELDS)
                .map_err(|e| format!("models[{id}] ({}): {e}", model.name))?;
            groups.push(MappingGroup {
                prediction_trie,
                label_trie,
                models: vec![id as ModelId],
                pointers: paths.clone(),
            });
            group_paths.push(paths.clone());
        }
        let model_finder = if groups.len() > 1 {
            let mut prediction_finder = Node::default();
            let mut label_finder = Node::default();
            // Each distinct model pointer becomes one leaf; the walker stores
            // the first model name it meets, then groups are tried in order.
            for paths in &group_paths {
                let only_model = pointer::compile(paths, &[Field::Model])?;
                merge_tries(&mut prediction_finder, &only_model);
                merge_tries(&mut label_finder, &only_model);
            }
            Some((prediction_finder, label_finder))
        } else {
            None
        };
        Ok(Decoder {
            groups,
            model_finder,
            scratch: RowScratch::default(),
            current_group: None,
            segment_key: String::new(),
            number_text: Vec::new(),
            predictions: registry.models.iter().map(|m| PredictionColumns::new(m.task)).collect(),
            labels: registry
                .models
                .iter()
                .map(|m| LabelColumns {
                    time: Vec::new(),
                    event_id: StringBuilder::new(),
                    label: ValueColumn::new(m.task),
                })
                .collect(),
            max_features: pipeline.max_features_per_model,
            max_segments: pipeline.max_segments_per_model,
            max_versions: pipeline.max_versions_per_model,
            max_classes: pipeline.max_categories_per_feature,
            max_message_bytes: pipeline.max_message_bytes,
            latest_accepted_ms: timestamp::MAX_EVENT_TIME_MS,
            counters: DecodeCounters::default(),
        })
    }

    /// Rejects events stamped at or after `limit_ms` (never later than the
    /// fixed upper bound). The daemon calls this before each micro-batch
    /// with its clock plus `pipeline.max_future_skew`; decoding itself
    /// never reads a clock.
    pub fn accept_times_before(&mut self, limit_ms: i64) {
        self.latest_accepted_ms = limit_ms.min(timestamp::MAX_EVENT_TIME_MS);
    }

    /// A field as error messages name it: `` `event_id` ``, and where the
    /// event's model maps it to another pointer than the default, that
    /// pointer too: `` `event_id` at `/request_id` ``.
    fn field_text(&self, field: Field) -> String {
        let name = field.name();
        let group = self.current_group.or((self.groups.len() == 1).then_some(0));
        let pointer_of = |paths: &crate::config::FieldPaths| {
            paths.entries().into_iter().find(|(key, _)| *key == name).map(|(_, pointer)| pointer.to_string())
        };
        let configured = group.and_then(|g| self.groups.get(g)).and_then(|g| pointer_of(&g.pointers));
        // Every default pointer is `/` and the field's name.
        match configured {
            Some(pointer) if pointer.strip_prefix('/') != Some(name) => {
                let shown: String = pointer.chars().take(60).collect();
                format!("`{name}` at `{shown}`")
            }
            _ => format!("`{name}`"),
        }
    }

    fn invalid(&self, reason: InvalidReason, field: Option<Field>) -> Invalid {
        let detail = match (reason, self.scratch.error, field) {
            (InvalidReason::InvalidJson, _, _) => match self.scratch.syntax_error_at {
                Some((line, column)) if line > 0 => format!("payload is not valid JSON (line {line}, column {column})"),
                _ => "payload is not valid JSON".to_string(),
            },
            (InvalidReason::NonFinite, None, None) if self.scratch.syntax_error_at.is_some() => {
                let (line, column) = self.scratch.syntax_error_at.unwrap_or_default();
                format!("a number out of range (line {line}, column {column})")
            }
            (InvalidReason::NotAnObject, _, _) => "payload is not a JSON object".to_string(),
            (InvalidReason::TooLong, error, field) => {
                let field = field.or(error.map(|(_, f)| f)).map_or_else(|| "``".to_string(), |f| self.field_text(f));
                match self.scratch.too_long {
                    Some(long) => {
                        format!("field {field}: {} of {} bytes; the limit is {}", long.what, long.bytes, long.limit)
                    }
                    None => format!("field {field}: a class label longer than {MAX_EVENT_NAME_BYTES} bytes"),
                }
            }
            (InvalidReason::TooLarge, _, _) => {
                format!("payload larger than pipeline.max_message_bytes ({})", self.max_message_bytes)
            }
            (InvalidReason::UnknownModel, _, _) => {
                let name = self.scratch.model.map(|s| self.scratch.str(s)).unwrap_or("");
                let shown: String = name.chars().take(64).collect();
                let more = if shown.len() < name.len() { format!("… ({} bytes)", name.len()) } else { String::new() };
                format!("model {shown:?}{more} is not configured")
            }
            (InvalidReason::TimestampOutOfRange, _, _) => format!(
                "field {}: {} is outside the accepted range [{}, {})",
                self.field_text(Field::Timestamp),
                self.scratch.timestamp_ms.map_or_else(String::new, timestamp::format_rfc3339_ms),
                timestamp::format_rfc3339_ms(timestamp::MIN_EVENT_TIME_MS),
                timestamp::format_rfc3339_ms(self.latest_accepted_ms)
            ),
            (_, _, Some(field)) | (_, Some((_, field)), None) => {
                format!("field {}: {}", self.field_text(field), reason.label().replace('_', " "))
            }
            _ => reason.label().replace('_', " "),
        };
        Invalid { reason, detail }
    }

    /// Finds which mapping group an event belongs to.
    fn group_for(&mut self, registry: &ModelRegistry, bytes: &[u8], labels: bool) -> Result<usize, Invalid> {
        let Some((prediction_finder, label_finder)) = &self.model_finder else {
            return Ok(0);
        };
        let finder = if labels { label_finder } else { prediction_finder };
        json::walk(finder, bytes, &mut self.scratch).map_err(|r| self.invalid(r, None))?;
        let name = match self.scratch.model {
            Some(span) => self.scratch.str(span),
            None => return Err(self.invalid(InvalidReason::MissingField, Some(Field::Model))),
        };
        let Some(model) = registry.id(name) else {
            return Err(self.invalid(InvalidReason::UnknownModel, None));
        };
        Ok(self.groups.iter().position(|g| g.models.contains(&model)).unwrap_or(0))
    }

    fn common_checks(&self, registry: &ModelRegistry, value_field: Field) -> Result<(ModelId, i64), Invalid> {
        let row = &self.scratch;
        if row.event_id.is_none() {
            return Err(self.invalid(InvalidReason::MissingField, Some(Field::EventId)));
        }
        let Some(model_span) = row.model else {
            return Err(self.invalid(InvalidReason::MissingField, Some(Field::Model)));
        };
        let Some(time) = row.timestamp_ms else {
            return Err(self.invalid(InvalidReason::MissingField, Some(Field::Timestamp)));
        };
        if !timestamp::in_accepted_range(time) || time >= self.latest_accepted_ms {
            return Err(self.invalid(InvalidReason::TimestampOutOfRange, Some(Field::Timestamp)));
        }
        let value = if value_field == Field::Label { row.label } else { row.prediction };
        if value.is_none() {
            return Err(self.invalid(InvalidReason::MissingField, Some(value_field)));
        }
        let Some(model) = registry.id(row.str(model_span)) else {
            return Err(self.invalid(InvalidReason::UnknownModel, None));
        };
        Ok((model, time))
    }

    /// Decodes one prediction event and appends it to its model's columns.
    pub fn push_prediction(&mut self, registry: &mut ModelRegistry, bytes: &[u8]) -> Result<(), Invalid> {
        if bytes.len() > self.max_message_bytes {
            return Err(self.invalid(InvalidReason::TooLarge, None));
        }
        self.current_group = None;
        let group = self.group_for(registry, bytes, false)?;
        self.current_group = Some(group);
        json::walk(&self.groups[group].prediction_trie, bytes, &mut self.scratch).map_err(|r| self.invalid(r, None))?;
        let (model_id, time) = self.common_checks(registry, Field::Prediction)?;
        let model = registry.get_mut(model_id);
        let row = &self.scratch;
        // Validate every value before touching a column.
        let prediction =
            match to_value(row, row.prediction.unwrap_or(Scalar::Null), model, self.max_classes, &mut self.number_text)
            {
                Ok(v) => v,
                Err(InvalidReason::BadClass) => return Err(bad_class(row, Field::Prediction, &model.config)),
                Err(reason) => return Err(self.invalid(reason, Some(Field::Prediction))),
            };
        let score = match optional_number(row.score) {
            Ok(Some(score)) if model.task == Task::BinaryClassification && !(0.0..=1.0).contains(&score) => {
                return Err(bad_class(row, Field::Score, &model.config));
            }
            Ok(v) => v,
            Err(reason) => return Err(self.invalid(reason, Some(Field::Score))),
        };
        let latency = match optional_number(row.latency_ms) {
            Ok(v) => v,
            Err(reason) => return Err(self.invalid(reason, Some(Field::LatencyMs))),
        };
        let caps = (self.max_segments, self.max_versions);
        let series = intern_series(row, model, &mut self.segment_key, caps, &mut self.counters);
        let columns = &mut self.predictions[model_id as usize];
        let row_index = columns.series.len();
        columns.series.push(series);
        columns.time.push(time);
        columns.event_id.append_value(row.str(row.event_id.unwrap_or_default()));
        match (&mut columns.prediction, prediction) {
            (ValueColumn::Class(c), Value::Class(v)) => c.push(v),
            (ValueColumn::Value(c), Value::Number(v)) => c.push(v),
            _ => unreachable!("prediction kind follows the task"),
        }
        columns.score.append_option(score);
        columns.latency.append_option(latency);
        for (position, &(name_span, value)) in row.features.iter().enumerate() {
            let name = row.str(name_span);
            let feature_id = match model.feature_id(position, name) {
                Some(id) => id as usize,
                None => {
                    let kind = match value {
                        Scalar::Number(_) => FeatureKind::Numeric,
                        Scalar::Text(_) | Scalar::Bool(_) => FeatureKind::Categorical,
                        Scalar::Null | Scalar::Nested => continue,
                    };
                    if model.features.len() >= self.max_features {
                        self.counters.features_over_cap += 1;
                        continue;
                    }
                    model.add_feature(name, kind) as usize
                }
            };
            while columns.features.len() <= feature_id {
                let kind = model.features[columns.features.len()].kind;
                columns.features.push(match kind {
                    FeatureKind::Numeric => FeatureBuilder::Numeric(Float64Builder::new()),
                    FeatureKind::Categorical => FeatureBuilder::Categorical(StringBuilder::new()),
                });
            }
            let builder = &mut columns.features[feature_id];
            if builder.len() > row_index {
                continue; // a duplicate key in one event: the first value wins
            }
            builder.pad_to(row_index);
            let mut type_error = false;
            match (builder, value) {
                (FeatureBuilder::Numeric(b), Scalar::Number(n)) if n.is_finite() => b.append_value(n),
                (FeatureBuilder::Numeric(b), Scalar::Null) => b.append_null(),
                (FeatureBuilder::Numeric(b), _) => {
                    b.append_null();
                    type_error = true;
                }
                (FeatureBuilder::Categorical(b), Scalar::Text(span)) => b.append_value(row.str(span)),
                (FeatureBuilder::Categorical(b), Scalar::Bool(v)) => b.append_value(if v { "true" } else { "false" }),
                (FeatureBuilder::Categorical(b), Scalar::Number(n)) => {
                    b.append_value(number_text(&mut self.number_text, n));
                }
                (FeatureBuilder::Categorical(b), Scalar::Null) => b.append_null(),
                (FeatureBuilder::Categorical(b), Scalar::Nested) => {
                    b.append_null();
                    type_error = true;
                }
            }
            if type_error {
                columns.type_errors.push((row_index as u32, feature_id as u32));
                self.counters.type_errors += 1;
            }
        }
        Ok(())
    }

    /// Decodes one label event and appends it to its model's columns.
    pub fn push_label(&mut self, registry: &mut ModelRegistry, bytes: &[u8]) -> Result<(), Invalid> {
        if bytes.len() > self.max_message_bytes {
            return Err(self.invalid(InvalidReason::TooLarge, None));
        }
        self.current_group = None;
        let group = self.group_for(registry, bytes, true)?;
        self.current_group = Some(group);
        json::walk(&self.groups[group].label_trie, bytes, &mut self.scratch).map_err(|r| self.invalid(r, None))?;
        let (model_id, time) = self.common_checks(registry, Field::Label)?;
        let model = registry.get_mut(model_id);
        let row = &self.scratch;
        let label =
            match to_value(row, row.label.unwrap_or(Scalar::Null), model, self.max_classes, &mut self.number_text) {
                Ok(v) => v,
                Err(InvalidReason::BadClass) => return Err(bad_class(row, Field::Label, &model.config)),
                Err(reason) => return Err(self.invalid(reason, Some(Field::Label))),
            };
        let columns = &mut self.labels[model_id as usize];
        columns.time.push(time);
        columns.event_id.append_value(row.str(row.event_id.unwrap_or_default()));
        match (&mut columns.label, label) {
            (ValueColumn::Class(c), Value::Class(v)) => c.push(v),
            (ValueColumn::Value(c), Value::Number(v)) => c.push(v),
            _ => unreachable!("label kind follows the task"),
        }
        Ok(())
    }

    /// Number of prediction rows buffered so far.
    pub fn buffered_predictions(&self) -> usize {
        self.predictions.iter().map(|c| c.series.len()).sum()
    }

    /// Hands out the buffered predictions, one batch per model that has rows.
    pub fn finish_predictions(&mut self) -> Vec<PredictionBatch> {
        let mut batches = Vec::new();
        for (model, columns) in self.predictions.iter_mut().enumerate() {
            let len = columns.series.len();
            if len == 0 {
                continue;
            }
            let features = columns
                .features
                .iter_mut()
                .map(|builder| {
                    builder.pad_to(len);
                    match builder {
                        FeatureBuilder::Numeric(b) => FeatureArray::Numeric(b.finish()),
                        FeatureBuilder::Categorical(b) => FeatureArray::Categorical(b.finish()),
                    }
                })
                .collect();
            batches.push(PredictionBatch {
                model: model as ModelId,
                series: UInt32Array::from(std::mem::take(&mut columns.series)),
                event_time_ms: Int64Array::from(std::mem::take(&mut columns.time)),
                event_id: columns.event_id.finish(),
                prediction: columns.prediction.finish(),
                score: columns.score.finish(),
                latency_ms: columns.latency.finish(),
                features,
                type_errors: std::mem::take(&mut columns.type_errors),
            });
        }
        batches
    }

    /// Hands out the buffered labels, one batch per model that has rows.
    pub fn finish_labels(&mut self) -> Vec<LabelBatch> {
        let mut batches = Vec::new();
        for (model, columns) in self.labels.iter_mut().enumerate() {
            if columns.time.is_empty() {
                continue;
            }
            batches.push(LabelBatch {
                model: model as ModelId,
                event_time_ms: Int64Array::from(std::mem::take(&mut columns.time)),
                event_id: columns.event_id.finish(),
                label: columns.label.finish(),
            });
        }
        batches
    }
}

fn merge_tries(into: &mut Node, from: &Node) {
    if from.target.is_some() {
        into.target = from.target;
    }
    for (key, child) in &from.children {
        match into.child(key) {
            Some(i) => merge_tries(&mut into.children[i].1, child),
            None => into.children.push((key.clone(), child.clone())),
        }
    }
}

enum Value {
    Class(ClassId),
    Number(f64),
}

/// A prediction or label as the model's task wants it.
fn to_value(
    row: &RowScratch,
    scalar: Scalar,
    model: &mut ModelState,
    max_classes: usize,
    number_buffer: &mut Vec<u8>,
) -> Result<Value, InvalidReason> {
    if matches!(model.task, Task::Regression) {
        return match scalar {
            Scalar::Number(n) if n.is_finite() => Ok(Value::Number(n)),
            Scalar::Number(_) => Err(InvalidReason::NonFinite),
            _ => Err(InvalidReason::WrongType),
        };
    }
    if model.task == Task::BinaryClassification {
        return binary_class(row, scalar, model, number_buffer);
    }
    let name: &str = match scalar {
        Scalar::Text(span) if (span.end - span.start) as usize > MAX_EVENT_NAME_BYTES => {
            return Err(InvalidReason::TooLong);
        }
        Scalar::Text(span) => row.str(span),
        Scalar::Bool(true) => "1",
        Scalar::Bool(false) => "0",
        Scalar::Number(n) => number_text(number_buffer, n),
        Scalar::Null => return Err(InvalidReason::MissingField),
        Scalar::Nested => return Err(InvalidReason::WrongType),
    };
    model.classes.intern(name, max_classes).map(Value::Class).ok_or(InvalidReason::TooManyClasses)
}

/// A binary model's prediction or label: one of its two classes (see
/// [`crate::config::ModelConfig::binary_classes`]), else `bad_class`.
///
/// Without `positive_class`, the classes are "1" (JSON `1`, `1.0`, `true`,
/// `"1"`) and "0" (`0`, `0.0`, `false`, `"0"`). With it, exactly the two
/// configured values, compared as text: a number by its shortest form, a
/// boolean as `true`/`false`.
fn binary_class(
    row: &RowScratch,
    scalar: Scalar,
    model: &mut ModelState,
    number_buffer: &mut Vec<u8>,
) -> Result<Value, InvalidReason> {
    let named = model.config.has_named_classes();
    let text: &str = match scalar {
        Scalar::Text(span) if (span.end - span.start) as usize > MAX_EVENT_NAME_BYTES => {
            return Err(InvalidReason::TooLong);
        }
        Scalar::Text(span) => row.str(span),
        Scalar::Bool(value) if named => {
            if value {
                "true"
            } else {
                "false"
            }
        }
        Scalar::Bool(value) => {
            if value {
                crate::config::DEFAULT_POSITIVE_CLASS
            } else {
                crate::config::DEFAULT_NEGATIVE_CLASS
            }
        }
        Scalar::Number(n) if !n.is_finite() => return Err(InvalidReason::NonFinite),
        Scalar::Number(n) => number_text(number_buffer, n),
        Scalar::Null => return Err(InvalidReason::MissingField),
        Scalar::Nested => return Err(InvalidReason::WrongType),
    };
    let (positive, negative) = model.config.binary_classes();
    if text != positive && text != negative {
        return Err(InvalidReason::BadClass);
    }
    // Two classes never reach any cap.
    model.classes.intern(text, usize::MAX).map(Value::Class).ok_or(InvalidReason::TooManyClasses)
}

/// The `bad_class` rejection of `field` (prediction, label or score) of
/// the event in `row`: the value (at most 60 characters of it) and what
/// the model accepts instead.
fn bad_class(row: &RowScratch, field: Field, config: &crate::config::ModelConfig) -> Invalid {
    let scalar = match field {
        Field::Label => row.label,
        Field::Score => row.score,
        _ => row.prediction,
    };
    let shown = match scalar {
        Some(Scalar::Text(span)) => {
            let text = row.str(span);
            let cut: String = text.chars().take(60).collect();
            if cut.len() < text.len() { format!("{cut:?}… ({} bytes)", text.len()) } else { format!("{text:?}") }
        }
        Some(Scalar::Number(n)) => {
            let mut buffer = Vec::new();
            number_text(&mut buffer, n).to_string()
        }
        Some(Scalar::Bool(b)) => b.to_string(),
        _ => "the value".to_string(),
    };
    let detail = if field == Field::Score {
        format!("field `score`: {shown} is not a probability in [0, 1] (the probability of the positive class)")
    } else if config.has_named_classes() {
        let (positive, negative) = config.binary_classes();
        format!(
            "field `{}`: {shown} is neither positive_class {positive:?} nor negative_class {negative:?} of model {:?}",
            field.name(),
            config.name
        )
    } else {
        format!(
            "field `{}`: {shown} is not a class of binary model {:?}: 0 or 1 (a number, a boolean or \"0\"/\"1\"); \
             set positive_class and negative_class to use other values",
            field.name(),
            config.name
        )
    };
    Invalid { reason: InvalidReason::BadClass, detail }
}

/// Number → text the way class labels compare (`1.0` and `1` are both
/// "1"), in a buffer the decoder reuses, so no event allocates for it.
fn number_text(buffer: &mut Vec<u8>, n: f64) -> &str {
    buffer.clear();
    json::write_canonical_number(buffer, n);
    std::str::from_utf8(buffer).unwrap_or("")
}

fn optional_number(scalar: Option<Scalar>) -> Result<Option<f64>, InvalidReason> {
    match scalar {
        None | Some(Scalar::Null) => Ok(None),
        Some(Scalar::Number(n)) if n.is_finite() => Ok(Some(n)),
        Some(Scalar::Number(_)) => Err(InvalidReason::NonFinite),
        Some(_) => Err(InvalidReason::WrongType),
    }
}

/// The series of the event in `row`: its (model_version, segment) pair,
/// interned ([`ModelState::intern_series_key`]). `caps`:
/// (`max_segments_per_model`, `max_versions_per_model`).
fn intern_series(
    row: &RowScratch,
    model: &mut ModelState,
    key: &mut String,
    caps: (usize, usize),
    counters: &mut DecodeCounters,
) -> u32 {
    let version = row.model_version.map_or("", |span| row.str(span));
    build_series_key(row, version, key);
    let (id, over_cap) = model.intern_series_key(key, version.len(), caps);
    counters.versions_over_cap += u64::from(over_cap.version);
    counters.segments_over_cap += u64::from(over_cap.segment);
    id
}

/// `version + '\0' + segment` into `key`, the segment's pairs sorted by key.
fn build_series_key(row: &RowScratch, version: &str, key: &mut String) {
    key.clear();
    key.push_str(version);
    key.push('\0');
    if !row.segment.is_empty() {
        // Sort pair indices by key without allocating for up to 8 pairs.
        let mut order: [u8; 8] = [0, 1, 2, 3, 4, 5, 6, 7];
        let count = row.segment.len().min(8);
        let pairs = &row.segment[..count];
        order[..count].sort_by(|&a, &b| row.str(pairs[a as usize].0).cmp(row.str(pairs[b as usize].0)));
        for (n, &i) in order[..count].iter().enumerate() {
            if n > 0 {
                key.push(',');
            }
            key.push_str(row.str(pairs[i as usize].0));
            key.push('=');
            key.push_str(row.str(pairs[i as usize].1));
        }
    }
}

#[cfg(test)]
mod tests;
