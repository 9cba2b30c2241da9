//! The `window_metrics` table (docs/REFERENCE.md): the row type every
//! closed window yields, the metric names a row may carry, its Arrow
//! schema and the conversion of rows to a record batch. A leaf of the
//! module graph: the stages that make rows (`evaluate`, `engine`), the
//! ones that read them (`rules`, `metrics`, `http`) and the ones that write
//! them (`output`) all use it, and it uses nothing else of the crate.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, RecordBatch, StringBuilder, TimestampMillisecondBuilder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// One row of `window_metrics`.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowMetricRow {
    pub model: Arc<str>,
    pub model_version: Arc<str>,
    pub segment: Arc<str>,
    pub window_start_ms: i64,
    pub window_end_ms: i64,
    /// `None` for model-level metrics.
    pub feature: Option<Arc<str>>,
    pub metric: &'static str,
    pub value: f64,
    pub baseline: Option<f64>,
    pub threshold: Option<f64>,
    pub p_value: Option<f64>,
    pub drifted: Option<bool>,
    pub sample_count: i64,
}

/// Every metric name a `window_metrics` row may carry (docs/REFERENCE.md lists them all).
pub const METRIC_NAMES: &[&str] = &[
    "count",
    "missing_rate",
    "type_error_rate",
    "mean",
    "std",
    "min",
    "max",
    "p50",
    "p95",
    "p99",
    "psi",
    "ks",
    "chi2",
    "jensen_shannon",
    "wasserstein",
    "hellinger",
    "unseen_rate",
    "out_of_range_rate",
    "prediction_psi",
    "score_psi",
    "label_psi",
    "accuracy",
    "precision",
    "recall",
    "f1",
    "roc_auc",
    "log_loss",
    "brier",
    "mae",
    "rmse",
    "mape",
    "r2",
    "labeled_count",
    "label_coverage",
    "accuracy_vs_champion",
    "latency_p50",
    "latency_p95",
    "latency_p99",
    "events_late",
];

/// The Arrow schema of `window_metrics`.
pub fn window_metrics_schema() -> SchemaRef {
    let utc: Arc<str> = Arc::from("UTC");
    Arc::new(Schema::new(vec![
        Field::new("model", DataType::Utf8, false),
        Field::new("model_version", DataType::Utf8, false),
        Field::new("segment", DataType::Utf8, false),
        Field::new("window_start", DataType::Timestamp(TimeUnit::Millisecond, Some(utc.clone())), false),
        Field::new("window_end", DataType::Timestamp(TimeUnit::Millisecond, Some(utc)), false),
        Field::new("feature", DataType::Utf8, true),
        Field::new("metric", DataType::Utf8, false),
        Field::new("value", DataType::Float64, false),
        Field::new("baseline", DataType::Float64, true),
        Field::new("threshold", DataType::Float64, true),
        Field::new("p_value", DataType::Float64, true),
        Field::new("drifted", DataType::Boolean, true),
        Field::new("sample_count", DataType::Int64, false),
    ]))
}

/// Rows as one Arrow record batch of [`window_metrics_schema`].
pub fn rows_to_record_batch(rows: &[WindowMetricRow]) -> RecordBatch {
    let mut model = StringBuilder::new();
    let mut version = StringBuilder::new();
    let mut segment = StringBuilder::new();
    let mut start = TimestampMillisecondBuilder::new().with_timezone("UTC");
    let mut end = TimestampMillisecondBuilder::new().with_timezone("UTC");
    let mut feature = StringBuilder::new();
    let mut metric = StringBuilder::new();
    let mut value = Float64Builder::new();
    let mut baseline = Float64Builder::new();
    let mut threshold = Float64Builder::new();
    let mut p_value = Float64Builder::new();
    let mut drifted = BooleanBuilder::new();
    let mut sample_count = Int64Builder::new();
    for row in rows {
        model.append_value(&row.model);
        version.append_value(&row.model_version);
        segment.append_value(&row.segment);
        start.append_value(row.window_start_ms);
        end.append_value(row.window_end_ms);
        feature.append_option(row.feature.as_deref());
        metric.append_value(row.metric);
        value.append_value(row.value);
        baseline.append_option(row.baseline);
        threshold.append_option(row.threshold);
        p_value.append_option(row.p_value);
        drifted.append_option(row.drifted);
        sample_count.append_value(row.sample_count);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(model.finish()),
        Arc::new(version.finish()),
        Arc::new(segment.finish()),
        Arc::new(start.finish()),
        Arc::new(end.finish()),
        Arc::new(feature.finish()),
        Arc::new(metric.finish()),
        Arc::new(value.finish()),
        Arc::new(baseline.finish()),
        Arc::new(threshold.finish()),
        Arc::new(p_value.finish()),
        Arc::new(drifted.finish()),
        Arc::new(sample_count.finish()),
    ];
    RecordBatch::try_new(window_metrics_schema(), columns).expect("columns match the schema")
}
