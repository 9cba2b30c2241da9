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
//!
//! With a config (`--config FILE --model NAME`), the inputs are the model's
//! logged events instead of a table: each line goes through the daemon's
//! own decoder ([`crate::decode`]) with the model's JSON Pointers, so the
//! profile's features carry the names the daemon will see, its classes are
//! the model's classes, and events the daemon would reject are skipped and
//! reported. Every column the options name must exist, and the label and
//! prediction values must fit the task, or the build fails naming the
//! column: a profile never silently lacks what was asked for.

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

use crate::baseline::{
    Baseline, BaselineError, CategoricalProfile, ColumnProfile, FORMAT_VERSION, NumericProfile, Source, SourceFile,
};
use crate::config::{Config, Task};
use crate::decode::{Decoder, FeatureArray, Invalid, InvalidReason, PredictionArray};
use crate::evaluate::{NumericSummary, Outcome, PerformanceState};
use crate::model::{Interner, ModelRegistry};
use crate::sketch::QuantileSketch;
use crate::sources::files::LineSource;

/// Columns never treated as features (event metadata in logged events).
pub const IGNORED_COLUMNS: [&str; 6] = ["event_id", "timestamp", "model", "model_version", "segment", "latency_ms"];
/// Default number of quantile bins per numeric feature.
pub const DEFAULT_BINS: usize = 10;
/// Default number of categories kept per categorical column (rest: `other`).
pub const DEFAULT_TOP_CATEGORIES: usize = 100;
/// Distinct values tracked per categorical column while counting.
pub const MAX_TRACKED_CATEGORIES: usize = 10_000;

/// Decoded events handed to the builder at a time (per model).
const EVENTS_PER_CHUNK: usize = 8192;
/// Column names listed in an error about a column the input lacks.
const COLUMNS_LISTED: usize = 20;

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
    /// Columns the user named (`--label-column` etc.): each must be in the
    /// input, or the build fails naming it. As (flag, column).
    pub required_columns: Vec<(String, String)>,
    /// Read the inputs as this config's logged events of [`Self::model`]
    /// (its JSON Pointers, task and classes) instead of as a table.
    pub events_config: Option<Config>,
    /// A binary model's (positive, negative) class names; default `("1", "0")`.
    pub binary_classes: (String, String),
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
    /// Reads the inputs as `config`'s logged events of [`Self::model`]: the
    /// model's JSON Pointers, task and binary classes. Fails when the model
    /// is not configured or `--task` says otherwise.
    pub fn use_config(&mut self, config: Config) -> Result<(), BaselineError> {
        let Some(model) = config.models.iter().find(|m| m.name == self.model) else {
            let names: Vec<&str> = config.models.iter().map(|m| m.name.as_str()).collect();
            return Err(BaselineError::Build(format!(
                "--model {}: the config has no such model (its models: {})",
                self.model,
                names.join(", ")
            )));
        };
        if let Some(task) = self.task
            && task != model.task
        {
            return Err(BaselineError::Build(format!(
                "--task {task}: model {} is a {} model in the config",
                model.name, model.task
            )));
        }
        self.task = Some(model.task);
        let (positive, negative) = model.binary_classes();
        self.binary_classes = (positive.to_string(), negative.to_string());
        self.events_config = Some(config);
        Ok(())
    }

    pub fn new(inputs: Vec<String>, model: &str) -> Self {
        BuildOptions {
            inputs,
            model: model.to_string(),
            version: None,
            label_column: "label".into(),
            prediction_column: "prediction".into(),
            score_column: "score".into(),
            required_columns: Vec::new(),
            events_config: None,
            binary_classes: (
                crate::config::DEFAULT_POSITIVE_CLASS.to_string(),
                crate::config::DEFAULT_NEGATIVE_CLASS.to_string(),
            ),
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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

impl Role {
    /// How the user names this column on the command line, for errors.
    fn describe(self, column: &str) -> String {
        match self {
            Role::Label => format!("label column `{column}`"),
            Role::Prediction => format!("prediction column `{column}`"),
            Role::Score => format!("score column `{column}`"),
            Role::Feature => format!("feature `{column}`"),
        }
    }
}

/// One column of an input batch, with the role it plays in the profile.
struct InputColumn {
    name: String,
    role: Role,
    data_type: DataType,
    array: ArrayRef,
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

pub(crate) fn as_f64(array: &ArrayRef) -> Float64Array {
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

pub(crate) async fn read(ctx: &SessionContext, path: &Path) -> Result<datafusion::prelude::DataFrame, BaselineError> {
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
    by_name: HashMap<(Role, String), usize>,
    /// Every column name the input has (features by name in events mode).
    seen: std::collections::BTreeSet<String>,
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

    /// Whether a feature named `name` is profiled (`--features`, `--exclude`).
    fn is_wanted_feature(&self, name: &str) -> bool {
        let o = self.options;
        !o.exclude.iter().any(|e| e == name) && o.features.as_ref().is_none_or(|only| only.iter().any(|f| f == name))
    }

    /// The columns of a table batch (struct columns flattened), with roles.
    fn table_columns(&mut self, batch: &RecordBatch) -> Vec<InputColumn> {
        let mut columns = Vec::new();
        for (name, data_type, array) in flat_columns(batch, &IGNORED_COLUMNS) {
            if !self.seen.contains(&name) {
                self.seen.insert(name.clone());
            }
            if let Some(role) = self.role_of(&name) {
                columns.push(InputColumn { name, role, data_type, array });
            }
        }
        columns
    }

    fn column_index(&mut self, name: &str, role: Role, data_type: &DataType) -> Result<Option<usize>, BaselineError> {
        if let Some(&i) = self.by_name.get(&(role, name.to_string())) {
            return Ok(Some(i));
        }
        let numeric = match role {
            Role::Score => true,
            Role::Label | Role::Prediction => {
                let task = *self.task.get_or_insert(if matches!(data_type, DataType::Float32 | DataType::Float64) {
                    Task::Regression
                } else {
                    Task::BinaryClassification
                });
                let regression = matches!(task, Task::Regression);
                if regression && !is_numeric(data_type) {
                    return Err(BaselineError::Build(format!(
                        "{} holds {data_type} values, but a regression model's labels and predictions are \
                         numbers (is the task a classification? use --task)",
                        role.describe(name)
                    )));
                }
                regression
            }
            Role::Feature if self.options.categorical.iter().any(|c| c == name) => false,
            Role::Feature if is_numeric(data_type) => true,
            Role::Feature if is_categorical(data_type) => false,
            Role::Feature => {
                tracing::warn!(column = name, ?data_type, "column skipped: neither numeric nor categorical");
                return Ok(None);
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
        self.by_name.insert((role, name.to_string()), self.columns.len() - 1);
        Ok(Some(self.columns.len() - 1))
    }

    /// Fails on a label or prediction value a binary model cannot mean,
    /// naming the column, the value and `origin` (the file).
    fn check_binary_values(
        &self,
        column: &str,
        role: Role,
        values: &StringArray,
        origin: &str,
    ) -> Result<(), BaselineError> {
        if !matches!(role, Role::Label | Role::Prediction) || self.task != Some(Task::BinaryClassification) {
            return Ok(());
        }
        let (positive, negative) = (&self.options.binary_classes.0, &self.options.binary_classes.1);
        let Some(bad) = values.iter().flatten().find(|v| v != positive && v != negative) else {
            return Ok(());
        };
        let shown: String = bad.chars().take(60).collect();
        let accepted = if self.options.binary_classes == ("1".to_string(), "0".to_string()) {
            "0 or 1 (numbers, booleans or \"0\"/\"1\"); with --config, a model's positive_class and \
             negative_class name other classes"
                .to_string()
        } else {
            format!("{positive:?} (positive_class) or {negative:?} (negative_class)")
        };
        let hint = match bad.parse::<f64>() {
            Ok(_) => "; if it is a regression target or one of more than two classes, say so with --task",
            Err(_) => "",
        };
        Err(BaselineError::Build(format!(
            "{} in {origin}: {shown:?} is not a class of a binary_classification model, whose classes are {accepted}{hint}",
            role.describe(column)
        )))
    }

    fn first_pass(&mut self, input: Vec<InputColumn>, origin: &str) -> Result<(), BaselineError> {
        let mut predicted: Option<ArrayRef> = None;
        let mut actual: Option<ArrayRef> = None;
        let mut scores: Option<Float64Array> = None;
        for InputColumn { name, role, data_type, array } in input {
            let array = &array;
            let Some(index) = self.column_index(&name, role, &data_type)? else { continue };
            let strings = match &self.columns[index].acc {
                Accumulator::Categorical { .. } => {
                    let values = as_strings(array, role);
                    self.check_binary_values(&name, role, &values, origin)?;
                    Some(values)
                }
                Accumulator::Numeric { .. } => None,
            };
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
                    let values = strings.unwrap_or_else(|| as_strings(array, column.role));
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
        if self.task == Some(Task::BinaryClassification)
            && let Some(bad) = scores.iter().flat_map(|s| s.iter().flatten()).find(|v| !(0.0..=1.0).contains(v))
        {
            return Err(BaselineError::Build(format!(
                "{} in {origin}: {bad} is not a probability in [0, 1]; a binary model's score is the \
                 probability of its positive class (rename or --exclude a column of logits)",
                Role::Score.describe(&self.options.score_column)
            )));
        }
        if let (Some(p), Some(a)) = (predicted, actual) {
            self.add_performance(&p, &a, scores.as_ref());
        }
        Ok(())
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

    fn second_pass(&mut self, input: Vec<InputColumn>) {
        for InputColumn { name, role, array, .. } in input {
            let Some(&index) = self.by_name.get(&(role, name)) else { continue };
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
        crate::baseline::calibration::calibrate_numeric(sketch, summary.std().unwrap_or(0.0), edges, &bin_proportions);
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
        calibration: crate::baseline::calibration::calibrate_categorical(&proportions),
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
        seen: Default::default(),
        classes: Interner::default(),
        performance: PerformanceState::default(),
        task: options.task,
        rows_in_pass: 0,
    };
    let mut rows_per_file = vec![0u64; files.len()];
    let mut skipped = SkippedEvents::default();
    for pass in 1..=2u8 {
        builder.rows_in_pass = 0;
        if pass == 2 {
            builder.check_named_columns()?;
            builder.prepare_bins();
        }
        if let Some(config) = &options.events_config {
            let counted = read_events(&mut builder, config, &files, pass, &mut rows_per_file)?;
            if pass == 1 {
                skipped = counted;
                if skipped.accepted == 0 {
                    return Err(BaselineError::Build(skipped.no_events(&options.model)));
                }
            }
            continue;
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
                    let columns = builder.table_columns(&batch);
                    if pass == 1 {
                        rows_per_file[i] += batch.num_rows() as u64;
                        builder.first_pass(columns, &file.display().to_string())?;
                    } else {
                        builder.second_pass(columns);
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
    if let Some(report) = skipped.report() {
        eprintln!("driftwatch baseline build: {report}");
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
            if let Some(positive) = builder.classes.get(&options.binary_classes.0) {
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
        created_at: crate::timestamp::format_rfc3339_ms(chrono::Utc::now().timestamp_millis()),
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

impl Builder<'_> {
    /// After the first pass: every column the options name exists in the
    /// input, or the build fails naming the flag and the column.
    fn check_named_columns(&self) -> Result<(), BaselineError> {
        let o = self.options;
        let mut errors = Vec::new();
        for (flag, column) in &o.required_columns {
            if !self.seen.contains(column) {
                errors.push(format!("{flag} {column}: the input has no column `{column}`"));
            }
        }
        for (flag, names) in [
            ("--features", o.features.as_deref().unwrap_or(&[])),
            ("--exclude", &o.exclude),
            ("--categorical", &o.categorical),
        ] {
            let unknown: Vec<&str> =
                names.iter().filter(|name| !self.seen.contains(name.as_str())).map(String::as_str).collect();
            if !unknown.is_empty() {
                errors.push(format!("{flag} names columns the input does not have: {}", unknown.join(", ")));
            }
        }
        if errors.is_empty() {
            return Ok(());
        }
        let what = if o.events_config.is_some() { "features in the events" } else { "columns" };
        let mut listed: Vec<&str> = self.seen.iter().map(String::as_str).take(COLUMNS_LISTED).collect();
        if self.seen.len() > COLUMNS_LISTED {
            listed.push("…");
        }
        errors.push(format!("{what}: {}", if listed.is_empty() { "none".to_string() } else { listed.join(", ") }));
        Err(BaselineError::Build(errors.join("\n")))
    }
}

/// Events the decoder rejected (or that belong to other models) while
/// reading logged events, for the report after the build.
#[derive(Debug, Default)]
struct SkippedEvents {
    by_reason: BTreeMap<&'static str, u64>,
    /// The first rejection: where, and why.
    first: Option<String>,
    /// Labels of accepted predictions rejected on their own.
    labels: u64,
    other_models: u64,
    accepted: u64,
}

impl SkippedEvents {
    fn reject(&mut self, invalid: &Invalid, location: String) {
        *self.by_reason.entry(invalid.reason.label()).or_default() += 1;
        if self.first.is_none() {
            self.first = Some(format!("{location}: {invalid}"));
        }
    }

    /// One line for stderr when anything was skipped.
    fn report(&self) -> Option<String> {
        let rejected: u64 = self.by_reason.values().sum();
        if rejected == 0 && self.other_models == 0 {
            return None;
        }
        let mut parts = Vec::new();
        if rejected > 0 {
            let reasons: Vec<String> = self.by_reason.iter().map(|(r, n)| format!("{r} {n}")).collect();
            parts.push(format!(
                "skipped {} ({}{}; the first: {})",
                crate::text::count_of(rejected, "invalid event", "invalid events"),
                reasons.join(", "),
                if self.labels > 0 { format!(", of which {} labels only", self.labels) } else { String::new() },
                self.first.as_deref().unwrap_or("")
            ));
        }
        if self.other_models > 0 {
            parts.push(format!(
                "ignored {} of other models",
                crate::text::count_of(self.other_models, "event", "events")
            ));
        }
        Some(format!("{} of {} events profiled; {}", self.accepted, self.accepted + rejected, parts.join("; ")))
    }

    /// The error when no event of the model could be read.
    fn no_events(&self, model: &str) -> String {
        let mut message = format!("no valid prediction event of model {model:?} in the inputs");
        if let Some(first) = &self.first {
            let rejected: u64 = self.by_reason.values().sum();
            message.push_str(&format!(" ({rejected} rejected; the first: {first})"));
        }
        if self.other_models > 0 {
            message.push_str(&format!(
                " ({} of other models)",
                crate::text::count_of(self.other_models, "event", "events")
            ));
        }
        message
    }
}

/// One pass over logged events of `builder.options.model`, decoded with
/// the model's mapping from `config`. On the first pass, counts rows per
/// file and returns what was skipped.
fn read_events(
    builder: &mut Builder<'_>,
    config: &Config,
    files: &[PathBuf],
    pass: u8,
    rows_per_file: &mut [u64],
) -> Result<SkippedEvents, BaselineError> {
    let model = config
        .models
        .iter()
        .find(|m| m.name == builder.options.model)
        .ok_or_else(|| BaselineError::Build(format!("model {:?} is not in the config", builder.options.model)))?;
    // A registry of this model alone: events of other models are `unknown_model`.
    let mut only_model = config.clone();
    only_model.models = vec![model.clone()];
    let mut registry = ModelRegistry::from_config(&only_model);
    let mut decoder = Decoder::new(&registry, &only_model.pipeline).map_err(BaselineError::Build)?;
    // A label pointer shared with the prediction's (allowed: the daemon
    // reads them from different events) would pair each prediction with
    // itself, so such events give no performance.
    let labels_in_events = model.fields.label != model.fields.prediction;
    let mut source = LineSource::new(files).map_err(|e| BaselineError::Build(e.to_string()))?;
    let mut skipped = SkippedEvents::default();
    let mut line = Vec::with_capacity(4096);
    // For each buffered prediction, the row of its label in the label buffer.
    let mut label_rows: Vec<Option<u32>> = Vec::new();
    let mut labels_buffered = 0u32;
    let mut file_index = 0;
    loop {
        let more = source.next_line(&mut line).map_err(|e| BaselineError::Build(e.to_string()))?;
        if more {
            let location = source.location();
            if files.get(file_index).is_none_or(|file| file != location.path) {
                file_index = files.iter().position(|file| file == location.path).unwrap_or(file_index);
            }
            if pass == 1 {
                rows_per_file[file_index] += 1;
            }
            match decoder.push_prediction(&mut registry, &line) {
                Err(invalid) if invalid.reason == InvalidReason::UnknownModel => skipped.other_models += 1,
                Err(invalid) => skipped.reject(&invalid, location.to_string()),
                Ok(()) if !labels_in_events => {
                    skipped.accepted += 1;
                    label_rows.push(None);
                }
                Ok(()) => {
                    skipped.accepted += 1;
                    match decoder.push_label(&mut registry, &line) {
                        Ok(()) => {
                            label_rows.push(Some(labels_buffered));
                            labels_buffered += 1;
                        }
                        // No label in this event: a prediction only.
                        Err(invalid) if invalid.reason == InvalidReason::MissingField => label_rows.push(None),
                        Err(invalid) => {
                            skipped.labels += 1;
                            skipped.reject(&invalid, location.to_string());
                            label_rows.push(None);
                        }
                    }
                }
            }
        }
        if label_rows.len() >= EVENTS_PER_CHUNK || (!more && !label_rows.is_empty()) {
            let columns = event_columns(builder, &registry, &mut decoder, &label_rows)?;
            let rows = label_rows.len();
            label_rows.clear();
            labels_buffered = 0;
            if pass == 1 {
                builder.first_pass(columns, "the events")?;
            } else {
                builder.second_pass(columns);
            }
            builder.progress(rows, pass, file_index + 1, files.len());
        }
        if !more {
            return Ok(skipped);
        }
    }
}

/// The buffered events of the model as profile columns: features under
/// the model's feature names, then `prediction`, `score` (when any event
/// has one) and `label` (when any has one), aligned by `label_rows`.
fn event_columns(
    builder: &mut Builder<'_>,
    registry: &ModelRegistry,
    decoder: &mut Decoder,
    label_rows: &[Option<u32>],
) -> Result<Vec<InputColumn>, BaselineError> {
    let model = registry.get(0);
    let predictions = decoder.finish_predictions();
    let labels = decoder.finish_labels();
    let Some(batch) = predictions.into_iter().next() else { return Ok(Vec::new()) };
    let class_names = |array: &PredictionArray| -> ArrayRef {
        match array {
            PredictionArray::Class(ids) => {
                Arc::new(ids.iter().map(|id| id.map(|id| model.classes.name(id).to_string())).collect::<StringArray>())
            }
            PredictionArray::Value(values) => Arc::new(values.clone()),
        }
    };
    let mut columns = Vec::new();
    for (id, feature) in batch.features.iter().enumerate() {
        let name = model.features[id].name.to_string();
        if !builder.seen.contains(&name) {
            builder.seen.insert(name.clone());
        }
        if !builder.is_wanted_feature(&name) {
            continue;
        }
        let array = feature.as_array_ref();
        let data_type = match feature {
            FeatureArray::Numeric(_) => DataType::Float64,
            FeatureArray::Categorical(_) => DataType::Utf8,
        };
        columns.push(InputColumn { name, role: Role::Feature, data_type, array });
    }
    let prediction = class_names(&batch.prediction);
    columns.push(InputColumn {
        name: "prediction".into(),
        role: Role::Prediction,
        data_type: prediction.data_type().clone(),
        array: prediction,
    });
    if batch.score.null_count() < batch.score.len() {
        let score: ArrayRef = Arc::new(batch.score.clone());
        columns.push(InputColumn {
            name: "score".into(),
            role: Role::Score,
            data_type: DataType::Float64,
            array: score,
        });
    }
    if let Some(labels) = labels.into_iter().next() {
        let indices = datafusion::arrow::array::UInt32Array::from(label_rows.to_vec());
        let label = datafusion::arrow::compute::take(class_names(&labels.label).as_ref(), &indices, None)
            .map_err(|e| BaselineError::Build(format!("aligning labels with their predictions: {e}")))?;
        columns.push(InputColumn {
            name: "label".into(),
            role: Role::Label,
            data_type: label.data_type().clone(),
            array: label,
        });
    }
    Ok(columns)
}
