//! `driftwatch baseline build`: a baseline profile from training or
//! validation data (Parquet, CSV or NDJSON, by extension; globs allowed),
//! read with DataFusion and streamed batch by batch, so memory depends on
//! the number of columns, not rows.
//!
//! Two passes over the inputs: the first accumulates summaries (DataFusion's
//! variance/min/max accumulators through `NumericSummary`, a relative-error
//! sketch, capped category counts, performance); quantile bin edges come
//! from the sketch; the second pass counts the reference values per bin
//! exactly. A third, sequential read hashes each file (sha256).

use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, Float64Array, RecordBatch, StringArray, StructArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::prelude::{CsvReadOptions, JsonReadOptions, ParquetReadOptions, SessionContext};
use futures::StreamExt;
use sha2::{Digest, Sha256};

use super::{
    Baseline, BaselineError, CategoricalProfile, ColumnProfile, FORMAT_VERSION, NumericProfile, Source, SourceFile,
};
use crate::config::Task;
use crate::evaluate::sketch::QuantileSketch;
use crate::evaluate::{NumericSummary, Outcome, PerformanceState};
use crate::model::Interner;

/// Columns never treated as features (event metadata in logged events).
pub const IGNORED_COLUMNS: [&str; 6] = ["event_id", "timestamp", "model", "model_version", "segment", "latency_ms"];
/// Default number of quantile bins per numeric feature.
pub const DEFAULT_BINS: usize = 10;
/// Default number of categories kept per categorical column (rest: `other`).
pub const DEFAULT_TOP_CATEGORIES: usize = 100;
/// Distinct values tracked per categorical column while counting.
pub const MAX_TRACKED_CATEGORIES: usize = 10_000;

/// What to build and from what.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Files or glob patterns.
    pub inputs: Vec<String>,
    pub model: String,
    pub version: Option<String>,
    pub label_column: String,
    pub prediction_column: String,
    pub score_column: String,
    /// Only these columns are features, when given.
    pub features: Option<Vec<String>>,
    /// Columns that are not features.
    pub exclude: Vec<String>,
    /// Numeric columns profiled as categories (codes, ids).
    pub categorical: Vec<String>,
    pub bins: usize,
    pub top_categories: usize,
    /// The model's task; inferred from the label/prediction type when absent.
    pub task: Option<Task>,
    pub dvc_md5: Option<String>,
    pub mlflow_run_id: Option<String>,
    /// Show progress on stderr when it is a terminal.
    pub progress: bool,
}

impl BuildOptions {
    pub fn new(inputs: Vec<String>, model: &str) -> Self {
        BuildOptions {
            inputs,
            model: model.to_string(),
            version: None,
            label_column: "label".into(),
            prediction_column: "prediction".into(),
            score_column: "score".into(),
            features: None,
            exclude: Vec::new(),
            categorical: Vec::new(),
            bins: DEFAULT_BINS,
            top_categories: DEFAULT_TOP_CATEGORIES,
            task: None,
            dvc_md5: None,
            mlflow_run_id: None,
            progress: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Feature,
    Prediction,
    Score,
    Label,
}

enum Accumulator {
    Numeric { summary: Box<NumericSummary>, sketch: QuantileSketch, bins: Vec<u64>, edges: Vec<f64> },
    Categorical { counts: HashMap<String, u64>, count: u64, missing: u64, untracked: u64 },
}

struct Column {
    name: String,
    role: Role,
    acc: Accumulator,
}

fn is_numeric(data_type: &DataType) -> bool {
    data_type.is_numeric()
}

fn is_categorical(data_type: &DataType) -> bool {
    matches!(data_type, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Boolean)
        || matches!(data_type, DataType::Dictionary(_, value) if matches!(**value, DataType::Utf8 | DataType::LargeUtf8))
}

/// Expands globs; every pattern must match at least one file.
pub fn expand_inputs(inputs: &[String]) -> Result<Vec<PathBuf>, BaselineError> {
    let mut files = Vec::new();
    for input in inputs {
        if !input.contains(['*', '?', '[']) {
            files.push(PathBuf::from(input));
            continue;
        }
        let matches: Vec<PathBuf> = glob::glob(input)
            .map_err(|e| BaselineError::Build(format!("--input {input}: {e}")))?
            .filter_map(Result::ok)
            .collect();
        if matches.is_empty() {
            return Err(BaselineError::Build(format!("--input {input}: no file matches")));
        }
        files.extend(matches);
    }
    files.sort();
    files.dedup();
    for file in &files {
        if !file.is_file() {
            return Err(BaselineError::Build(format!("--input {}: no such file", file.display())));
        }
    }
    Ok(files)
}

fn as_f64(array: &ArrayRef) -> Float64Array {
    let floats = cast(array, &DataType::Float64).expect("numeric columns cast to Float64");
    let floats = floats.as_any().downcast_ref::<Float64Array>().expect("Float64").clone();
    if floats.values().iter().all(|v| v.is_finite()) {
        return floats;
    }
    // NaN and ±inf are missing values, not numbers.
    floats.iter().map(|v| v.filter(|x| x.is_finite())).collect()
}

/// Strings of a categorical column; booleans of label/prediction become the
/// class names "1"/"0" the decoder uses for JSON `true`/`false`.
fn as_strings(array: &ArrayRef, role: Role) -> StringArray {
    if role != Role::Feature
        && let Some(bools) = array.as_any().downcast_ref::<BooleanArray>()
    {
        return bools.iter().map(|b| b.map(|b| if b { "1" } else { "0" })).collect();
    }
    if is_numeric(array.data_type()) {
        // Numeric codes profiled as categories: named as the decoder names
        // JSON numbers, so `12.0` in training and `12` in an event agree.
        let mut buffer = Vec::new();
        return as_f64(array)
            .iter()
            .map(|v| {
                v.map(|v| {
                    buffer.clear();
                    crate::decode::json::write_canonical_number(&mut buffer, v);
                    String::from_utf8_lossy(&buffer).into_owned()
                })
            })
            .collect();
    }
    let strings = cast(array, &DataType::Utf8).expect("categorical columns cast to Utf8");
    strings.as_any().downcast_ref::<StringArray>().expect("Utf8").clone()
}

async fn read(ctx: &SessionContext, path: &Path) -> Result<datafusion::prelude::DataFrame, BaselineError> {
    let name = path.display().to_string();
    let fail = |e: datafusion::error::DataFusionError| BaselineError::Build(format!("{name}: {e}"));
    let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    match extension.as_str() {
        "parquet" => ctx.read_parquet(name.as_str(), ParquetReadOptions::default()).await.map_err(fail),
        "csv" => ctx.read_csv(name.as_str(), CsvReadOptions::new()).await.map_err(fail),
        "ndjson" | "jsonl" | "json" => {
            let dotted = format!(".{extension}");
            let options = JsonReadOptions { file_extension: &dotted, ..Default::default() };
            ctx.read_json(name.as_str(), options).await.map_err(fail)
        }
        _ => {
            Err(BaselineError::Build(format!("{name}: unsupported extension (use .parquet, .csv, .ndjson or .jsonl)")))
        }
    }
}

/// The batch's columns with struct columns (such as the `features` object of
/// logged prediction events) replaced by their children.
fn flat_columns(batch: &RecordBatch, ignored: &[&str]) -> Vec<(String, DataType, ArrayRef)> {
    let mut columns = Vec::new();
    for (field, array) in batch.schema().fields().iter().zip(batch.columns()) {
        if ignored.contains(&field.name().as_str()) {
            continue;
        }
        match array.as_any().downcast_ref::<StructArray>() {
            Some(structs) => {
                for (child, values) in structs.fields().iter().zip(structs.columns()) {
                    columns.push((child.name().clone(), child.data_type().clone(), values.clone()));
                }
            }
            None => columns.push((field.name().clone(), field.data_type().clone(), array.clone())),
        }
    }
    columns
}

struct Builder<'a> {
    options: &'a BuildOptions,
    columns: Vec<Column>,
    by_name: HashMap<String, usize>,
    classes: Interner,
    performance: PerformanceState,
    task: Option<Task>,
    rows_in_pass: u64,
}

impl Builder<'_> {
    fn role_of(&self, name: &str) -> Option<Role> {
        let o = self.options;
        if name == o.label_column {
            Some(Role::Label)
        } else if name == o.prediction_column {
            Some(Role::Prediction)
        } else if name == o.score_column {
            Some(Role::Score)
        } else if o.exclude.iter().any(|e| e == name) {
            None
        } else if let Some(only) = &o.features {
            only.iter().any(|f| f == name).then_some(Role::Feature)
        } else {
            Some(Role::Feature)
        }
    }

    fn column_index(&mut self, name: &str, data_type: &DataType) -> Option<usize> {
        if let Some(&i) = self.by_name.get(name) {
            return Some(i);
        }
        let role = self.role_of(name)?;
        let numeric = match role {
            Role::Score => true,
            Role::Label | Role::Prediction => {
                let task = *self.task.get_or_insert(if matches!(data_type, DataType::Float32 | DataType::Float64) {
                    Task::Regression
                } else {
                    Task::BinaryClassification
                });
                matches!(task, Task::Regression)
            }
            Role::Feature if self.options.categorical.iter().any(|c| c == name) => false,
            Role::Feature if is_numeric(data_type) => true,
            Role::Feature if is_categorical(data_type) => false,
            Role::Feature => {
                tracing::warn!(column = name, ?data_type, "column skipped: neither numeric nor categorical");
                return None;
            }
        };
        let acc = if numeric {
            Accumulator::Numeric {
                summary: Box::default(),
                sketch: QuantileSketch::default(),
                bins: Vec::new(),
                edges: Vec::new(),
            }
        } else {
            Accumulator::Categorical { counts: HashMap::new(), count: 0, missing: 0, untracked: 0 }
        };
        self.columns.push(Column { name: name.to_string(), role, acc });
        self.by_name.insert(name.to_string(), self.columns.len() - 1);
        Some(self.columns.len() - 1)
    }

    fn first_pass(&mut self, batch: &RecordBatch) {
        let mut predicted: Option<ArrayRef> = None;
        let mut actual: Option<ArrayRef> = None;
        let mut scores: Option<Float64Array> = None;
        for (name, data_type, array) in flat_columns(batch, &IGNORED_COLUMNS) {
            let array = &array;
            let Some(index) = self.column_index(&name, &data_type) else { continue };
            let column = &mut self.columns[index];
            match &mut column.acc {
                Accumulator::Numeric { summary, sketch, .. } => {
                    let values = as_f64(array);
                    summary.update(&values);
                    values.iter().flatten().for_each(|v| sketch.add(v));
                    match column.role {
                        Role::Prediction => predicted = Some(Arc::new(values)),
                        Role::Label => actual = Some(Arc::new(values)),
                        Role::Score => scores = Some(values),
                        _ => {}
                    }
                }
                Accumulator::Categorical { counts, count, missing, untracked } => {
                    let values = as_strings(array, column.role);
                    *missing += values.null_count() as u64;
                    for value in values.iter().flatten() {
                        *count += 1;
                        if let Some(n) = counts.get_mut(value) {
                            *n += 1;
                        } else if counts.len() < MAX_TRACKED_CATEGORIES {
                            counts.insert(value.to_string(), 1);
                        } else {
                            *untracked += 1;
                        }
                    }
                    match column.role {
                        Role::Prediction => predicted = Some(Arc::new(values)),
                        Role::Label => actual = Some(Arc::new(values)),
                        _ => {}
                    }
                }
            }
        }
        if let (Some(p), Some(a)) = (predicted, actual) {
            self.add_performance(&p, &a, scores.as_ref());
        }
    }

    fn add_performance(&mut self, predicted: &ArrayRef, actual: &ArrayRef, scores: Option<&Float64Array>) {
        if let (Some(p), Some(a)) =
            (predicted.as_any().downcast_ref::<Float64Array>(), actual.as_any().downcast_ref::<Float64Array>())
        {
            for (p, a) in p.iter().zip(a.iter()) {
                if let (Some(predicted), Some(actual)) = (p, a) {
                    self.performance.add(Outcome::Value { predicted, actual });
                }
            }
        } else if let (Some(p), Some(a)) =
            (predicted.as_any().downcast_ref::<StringArray>(), actual.as_any().downcast_ref::<StringArray>())
        {
            for (row, (p, a)) in p.iter().zip(a.iter()).enumerate() {
                if let (Some(p), Some(a)) = (p, a) {
                    let (Some(predicted), Some(actual)) =
                        (self.classes.intern(p, usize::MAX), self.classes.intern(a, usize::MAX))
                    else {
                        continue;
                    };
                    let score = scores.filter(|s| s.is_valid(row)).map_or(f64::NAN, |s| s.value(row));
                    self.performance.add(Outcome::Class { predicted, actual, score });
                }
            }
        }
    }

    fn second_pass(&mut self, batch: &RecordBatch) {
        for (name, _, array) in flat_columns(batch, &IGNORED_COLUMNS) {
            let Some(&index) = self.by_name.get(name.as_str()) else { continue };
            if let Accumulator::Numeric { bins, edges, .. } = &mut self.columns[index].acc {
                for value in as_f64(&array).iter().flatten() {
                    bins[edges.partition_point(|&e| e < value)] += 1;
                }
            }
        }
    }

    fn prepare_bins(&mut self) {
        let bins = self.options.bins.max(1);
        for column in &mut self.columns {
            if let Accumulator::Numeric { sketch, bins: counts, edges, .. } = &mut column.acc {
                edges.clear();
                for i in 1..bins {
                    if let Some(edge) = sketch.quantile(i as f64 / bins as f64)
                        && edges.last().is_none_or(|last| edge > *last)
                    {
                        edges.push(edge);
                    }
                }
                *counts = vec![0; edges.len() + 1];
            }
        }
    }

    fn progress(&mut self, rows: usize, pass: u8, file: usize, files: usize) {
        self.rows_in_pass += rows as u64;
        if self.options.progress && std::io::stderr().is_terminal() {
            eprint!("\rbaseline: pass {pass}/2, file {file}/{files}, {} rows   ", self.rows_in_pass);
            let _ = std::io::stderr().flush();
        }
    }
}

fn sha256_of(path: &Path) -> Result<String, BaselineError> {
    let io = |source| BaselineError::Io { path: path.display().to_string(), source };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(format!("{:x}", hasher.finalize()))
}

fn numeric_profile(
    summary: &mut NumericSummary,
    sketch: &QuantileSketch,
    edges: &[f64],
    bins: &[u64],
) -> NumericProfile {
    let count = summary.count();
    let missing = summary.missing;
    let total: u64 = bins.iter().sum();
    let quantiles =
        [("p01", 0.01), ("p05", 0.05), ("p25", 0.25), ("p50", 0.5), ("p75", 0.75), ("p95", 0.95), ("p99", 0.99)]
            .into_iter()
            .filter_map(|(name, q)| sketch.quantile(q).map(|v| (name.to_string(), v)))
            .collect();
    let bin_proportions: Vec<f64> =
        bins.iter().map(|&b| if total == 0 { 0.0 } else { b as f64 / total as f64 }).collect();
    let calibration =
        crate::evaluate::calibration::calibrate_numeric(sketch, summary.std().unwrap_or(0.0), edges, &bin_proportions);
    NumericProfile {
        count,
        missing,
        missing_rate: if count + missing == 0 { 0.0 } else { missing as f64 / (count + missing) as f64 },
        mean: summary.mean(),
        std: summary.std(),
        min: summary.min(),
        max: summary.max(),
        quantiles,
        bin_edges: edges.to_vec(),
        bin_proportions,
        sketch: sketch.clone(),
        calibration,
    }
}

fn categorical_profile(
    counts: &HashMap<String, u64>,
    count: u64,
    missing: u64,
    untracked: u64,
    top: usize,
) -> CategoricalProfile {
    let mut sorted: Vec<(&String, &u64)> = counts.iter().collect();
    sorted.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let share = |n: u64| if count == 0 { 0.0 } else { n as f64 / count as f64 };
    let kept: u64 = sorted.iter().take(top).map(|(_, n)| **n).sum();
    let frequencies: BTreeMap<String, f64> = sorted.iter().take(top).map(|(k, n)| ((*k).clone(), share(**n))).collect();
    let other = share(count - kept);
    let proportions: Vec<f64> = frequencies.values().copied().chain([other]).collect();
    CategoricalProfile {
        count,
        missing,
        missing_rate: if count + missing == 0 { 0.0 } else { missing as f64 / (count + missing) as f64 },
        frequencies,
        other,
        distinct: counts.len() as u64 + u64::from(untracked > 0),
        calibration: crate::evaluate::calibration::calibrate_categorical(&proportions),
    }
}

/// Builds a baseline profile.
pub fn build_baseline(options: &BuildOptions) -> Result<Baseline, BaselineError> {
    let files = expand_inputs(&options.inputs)?;
    if files.is_empty() {
        return Err(BaselineError::Build("no input files".into()));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| BaselineError::Build(format!("starting the query runtime: {e}")))?;
    let mut builder = Builder {
        options,
        columns: Vec::new(),
        by_name: HashMap::new(),
        classes: Interner::default(),
        performance: PerformanceState::default(),
        task: options.task,
        rows_in_pass: 0,
    };
    let mut rows_per_file = vec![0u64; files.len()];
    for pass in 1..=2u8 {
        builder.rows_in_pass = 0;
        if pass == 2 {
            builder.prepare_bins();
        }
        for (i, file) in files.iter().enumerate() {
            runtime.block_on(async {
                let ctx = SessionContext::new();
                let frame = read(&ctx, file).await?;
                let mut stream = frame
                    .execute_stream()
                    .await
                    .map_err(|e| BaselineError::Build(format!("{}: {e}", file.display())))?;
                while let Some(batch) = stream.next().await {
                    let batch = batch.map_err(|e| BaselineError::Build(format!("{}: {e}", file.display())))?;
                    if pass == 1 {
                        rows_per_file[i] += batch.num_rows() as u64;
                        builder.first_pass(&batch);
                    } else {
                        builder.second_pass(&batch);
                    }
                    builder.progress(batch.num_rows(), pass, i + 1, files.len());
                }
                Ok::<(), BaselineError>(())
            })?;
        }
    }
    if options.progress && std::io::stderr().is_terminal() {
        eprintln!();
    }
    let unknown: Vec<&str> = options
        .categorical
        .iter()
        .filter(|name| !builder.by_name.contains_key(name.as_str()))
        .map(String::as_str)
        .collect();
    if !unknown.is_empty() {
        return Err(BaselineError::Build(format!(
            "--categorical names columns the input does not have: {}",
            unknown.join(", ")
        )));
    }
    let task = builder.task.unwrap_or(Task::BinaryClassification);
    let mut features = BTreeMap::new();
    let (mut prediction, mut score, mut label) = (None, None, None);
    for column in &mut builder.columns {
        let profile = match &mut column.acc {
            Accumulator::Numeric { summary, sketch, bins, edges } => {
                ColumnProfile::Numeric(numeric_profile(summary, sketch, edges, bins))
            }
            Accumulator::Categorical { counts, count, missing, untracked } => ColumnProfile::Categorical(
                categorical_profile(counts, *count, *missing, *untracked, options.top_categories),
            ),
        };
        match column.role {
            Role::Feature => {
                features.insert(column.name.clone(), profile);
            }
            Role::Prediction => prediction = Some(profile),
            Role::Score => score = Some(profile),
            Role::Label => label = Some(profile),
        }
    }
    let mut performance = BTreeMap::new();
    let perf = &builder.performance;
    if perf.labeled > 0 {
        if matches!(task, Task::Regression) {
            for (name, value) in [("mae", perf.mae()), ("rmse", perf.rmse()), ("mape", perf.mape()), ("r2", perf.r2())]
            {
                if let Some(v) = value {
                    performance.insert(name.to_string(), v);
                }
            }
        } else {
            if let Some(accuracy) = perf.accuracy() {
                performance.insert("accuracy".into(), accuracy);
            }
            if let Some(positive) = builder.classes.get("1") {
                let (tp, fp, fn_) = perf.binary_counts(positive);
                if tp + fp > 0 {
                    performance.insert("precision".into(), tp as f64 / (tp + fp) as f64);
                }
                if tp + fn_ > 0 {
                    performance.insert("recall".into(), tp as f64 / (tp + fn_) as f64);
                }
                if tp + fp + fn_ > 0 {
                    performance.insert("f1".into(), 2.0 * tp as f64 / (2 * tp + fp + fn_) as f64);
                }
                // The denominators, for the windows' worse-than-baseline tests.
                performance.insert("predicted_positive_count".into(), (tp + fp) as f64);
                performance.insert("positive_count".into(), (tp + fn_) as f64);
                let scores = &perf.scores;
                for (name, value) in [
                    ("roc_auc", scores.roc_auc(positive)),
                    ("log_loss", scores.log_loss(positive)),
                    ("brier", scores.brier(positive)),
                ] {
                    if let Some(v) = value {
                        performance.insert(name.into(), v);
                    }
                }
            }
        }
        performance.insert("labeled_count".into(), perf.labeled as f64);
    }
    let mut source_files = Vec::new();
    for (file, rows) in files.iter().zip(&rows_per_file) {
        source_files.push(SourceFile { path: file.display().to_string(), rows: *rows, sha256: sha256_of(file)? });
    }
    Ok(Baseline {
        format_version: FORMAT_VERSION,
        model: options.model.clone(),
        version: options.version.clone(),
        created_at: crate::decode::timestamp::format_rfc3339_ms(chrono::Utc::now().timestamp_millis()),
        source: Source {
            rows: rows_per_file.iter().sum(),
            files: source_files,
            dvc_md5: options.dvc_md5.clone(),
            mlflow_run_id: options.mlflow_run_id.clone(),
        },
        task: task.as_str().to_string(),
        features,
        prediction,
        score,
        label,
        performance,
    })
}
