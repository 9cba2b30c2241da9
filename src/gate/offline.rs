//! The offline gate: the old and the new model's labelled evaluation rows
//! from files (Parquet, CSV or NDJSON, read with DataFusion as `baseline
//! build` reads them), or a baseline profile for the old model, turned
//! into a [`GateReport`].
//!
//! Columns are found by name (`label`, `prediction`, optional `score`,
//! `latency_ms`, `event_id`; renamed with the `baseline build` flags).
//! When both files have event ids, rows are paired by them: both models
//! are measured on the rows they share, labels must agree, and accuracy is
//! compared with McNemar's test, other metrics with a paired bootstrap.
//! Otherwise each model is measured on its own rows and compared with an
//! unpaired bootstrap. Rows without a label or a prediction are left out
//! and counted. Every problem with the input is a [`GateError`] naming the
//! file, the column or the row (exit 2).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, StringArray};
use datafusion::arrow::compute::{cast, concat};
use datafusion::arrow::datatypes::DataType;
use datafusion::prelude::SessionContext;

use super::sample::{EvaluationSample, Outcomes};
use super::significance::{self, BootstrapOptions, Significance};
use super::{Bound, GateMetrics, GateReport, Metric, MetricKind, Requirement, SideSummary};
use crate::baseline::Baseline;
use crate::config::Task;

/// Column names listed in an error about a missing column.
const COLUMNS_LISTED: usize = 20;

/// Bad input to the gate (exit 2): the message names what and where.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error(transparent)]
    Requirement(#[from] super::RequirementError),
    #[error("{path}: {problem}")]
    File { path: String, problem: String },
    #[error("{0}")]
    Input(String),
}

fn file_error(path: &str, problem: impl Into<String>) -> GateError {
    GateError::File { path: path.to_string(), problem: problem.into() }
}

/// The columns to read, as `--label-column` etc. name them.
#[derive(Debug, Clone)]
pub struct ColumnNames {
    pub label: String,
    pub prediction: String,
    pub score: String,
    pub latency: String,
    pub event_id: String,
    /// Columns named on the command line, as (flag, column): each must be
    /// in every file read.
    pub required: Vec<(String, String)>,
}

impl Default for ColumnNames {
    fn default() -> Self {
        ColumnNames {
            label: "label".into(),
            prediction: "prediction".into(),
            score: "score".into(),
            latency: "latency_ms".into(),
            event_id: "event_id".into(),
            required: Vec::new(),
        }
    }
}

/// Where the old model's numbers come from.
#[derive(Debug, Clone)]
pub enum OldSide {
    /// Labelled rows with the old model's predictions.
    Rows(PathBuf),
    /// A baseline profile (`baseline build`): its recorded performance.
    Baseline(PathBuf),
}

#[derive(Debug, Clone)]
pub struct OfflineOptions {
    pub old: OldSide,
    pub new: PathBuf,
    pub requirements: Vec<Requirement>,
    pub columns: ColumnNames,
    /// The models' task; else the baseline's, else inferred (a float label
    /// or prediction column means regression).
    pub task: Option<Task>,
    /// A binary model's positive class (default `1`).
    pub positive_class: Option<String>,
    pub bootstrap: BootstrapOptions,
}

/// One file's columns as read (all batches concatenated).
struct RawFile {
    path: String,
    rows: usize,
    label: ArrayRef,
    prediction: ArrayRef,
    score: Option<ArrayRef>,
    latency: Option<ArrayRef>,
    event_id: Option<ArrayRef>,
}

fn read_file(path: &Path, columns: &ColumnNames, flag: &str) -> Result<RawFile, GateError> {
    let name = path.display().to_string();
    if !path.is_file() {
        return Err(file_error(&name, format!("no such file ({flag})")));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| GateError::Input(format!("starting the query runtime: {e}")))?;
    let batches = runtime.block_on(async {
        let ctx = SessionContext::new();
        let frame = crate::profiling::read(&ctx, path).await.map_err(|e| GateError::Input(e.to_string()))?;
        frame.collect().await.map_err(|e| file_error(&name, e.to_string()))
    })?;
    let schema = match batches.first() {
        Some(batch) => batch.schema(),
        None => return Err(file_error(&name, "no rows")),
    };
    let available: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    let mut missing = Vec::new();
    for (flag, column) in &columns.required {
        if !available.contains(&column.as_str()) {
            missing.push(format!("{flag} {column}: no column `{column}`"));
        }
    }
    for (what, column) in [("label", &columns.label), ("prediction", &columns.prediction)] {
        if !available.contains(&column.as_str()) && !columns.required.iter().any(|(_, c)| c == column) {
            missing.push(format!("no {what} column `{column}` (name it with --{what}-column)"));
        }
    }
    if !missing.is_empty() {
        let mut listed: Vec<&str> = available.iter().copied().take(COLUMNS_LISTED).collect();
        if available.len() > COLUMNS_LISTED {
            listed.push("…");
        }
        return Err(file_error(&name, format!("{}; its columns: {}", missing.join("; "), listed.join(", "))));
    }
    let column = |column: &str| -> Result<Option<ArrayRef>, GateError> {
        let Ok(index) = schema.index_of(column) else { return Ok(None) };
        let arrays: Vec<&dyn Array> = batches.iter().map(|b| b.column(index).as_ref()).collect();
        concat(&arrays).map(Some).map_err(|e| file_error(&name, format!("column `{column}`: {e}")))
    };
    let label = column(&columns.label)?.expect("checked above");
    Ok(RawFile {
        path: name.clone(),
        rows: label.len(),
        prediction: column(&columns.prediction)?.expect("checked above"),
        label,
        score: column(&columns.score)?,
        latency: column(&columns.latency)?,
        event_id: column(&columns.event_id)?,
    })
}

fn is_float(data_type: &DataType) -> bool {
    matches!(data_type, DataType::Float16 | DataType::Float32 | DataType::Float64)
}

/// Numbers of a numeric column (non-finite values are missing), or an
/// error naming the column's type.
fn numbers(array: &ArrayRef, path: &str, what: &str) -> Result<Vec<Option<f64>>, GateError> {
    if !array.data_type().is_numeric() {
        return Err(file_error(path, format!("{what} holds {} values, not numbers", array.data_type())));
    }
    Ok(crate::profiling::as_f64(array).iter().collect())
}

/// Class names as the daemon names them: booleans `1`/`0`, numbers as in
/// JSON (`1.0` → `1`), strings as they are.
fn class_names(array: &ArrayRef, path: &str, what: &str) -> Result<Vec<Option<String>>, GateError> {
    if let Some(booleans) = array.as_any().downcast_ref::<BooleanArray>() {
        return Ok(booleans.iter().map(|b| b.map(|b| if b { "1" } else { "0" }.to_string())).collect());
    }
    if array.data_type().is_numeric() {
        let mut buffer = Vec::new();
        return Ok(numbers(array, path, what)?
            .into_iter()
            .map(|v| {
                v.map(|v| {
                    buffer.clear();
                    crate::decode::json::write_canonical_number(&mut buffer, v);
                    String::from_utf8_lossy(&buffer).into_owned()
                })
            })
            .collect());
    }
    let strings = cast(array, &DataType::Utf8)
        .map_err(|_| file_error(path, format!("{what} holds {} values, not classes", array.data_type())))?;
    let strings = strings.as_any().downcast_ref::<StringArray>().expect("cast to Utf8");
    Ok(strings.iter().map(|s| s.map(str::to_string)).collect())
}

/// One file's usable rows: those with a label and a prediction.
struct Rows {
    path: String,
    /// The 1-based row of the file each kept row came from.
    source_rows: Vec<usize>,
    event_ids: Option<Vec<String>>,
    labels: Values,
    predictions: Values,
    scores: Option<Vec<f64>>,
    latency: Option<Vec<f64>>,
    /// Rows left out for lack of a label or a prediction.
    left_out: usize,
}

enum Values {
    Classes(Vec<String>),
    Numbers(Vec<f64>),
}

impl Values {
    fn same(&self, i: usize, other: &Values, j: usize) -> bool {
        match (self, other) {
            (Values::Classes(a), Values::Classes(b)) => a[i] == b[j],
            (Values::Numbers(a), Values::Numbers(b)) => a[i] == b[j],
            _ => false,
        }
    }

    fn text(&self, i: usize) -> String {
        match self {
            Values::Classes(v) => v[i].clone(),
            Values::Numbers(v) => v[i].to_string(),
        }
    }
}

fn usable_rows(raw: &RawFile, columns: &ColumnNames, regression: bool) -> Result<Rows, GateError> {
    let path = raw.path.as_str();
    let label_what = format!("label column `{}`", columns.label);
    let prediction_what = format!("prediction column `{}`", columns.prediction);
    let (labels, predictions): (Vec<Option<Values1>>, Vec<Option<Values1>>) = if regression {
        let wrap = |v: Vec<Option<f64>>| v.into_iter().map(|v| v.map(Values1::Number)).collect();
        let hint = " (a regression model's labels and predictions are numbers; is this a classification? use --task)";
        let labels = numbers(&raw.label, path, &label_what).map_err(|e| append(e, hint))?;
        let predictions = numbers(&raw.prediction, path, &prediction_what).map_err(|e| append(e, hint))?;
        (wrap(labels), wrap(predictions))
    } else {
        let wrap = |v: Vec<Option<String>>| v.into_iter().map(|v| v.map(Values1::Class)).collect();
        (wrap(class_names(&raw.label, path, &label_what)?), wrap(class_names(&raw.prediction, path, &prediction_what)?))
    };
    let scores = match &raw.score {
        Some(array) => Some(numbers(array, path, &format!("score column `{}`", columns.score))?),
        None => None,
    };
    let latency = match &raw.latency {
        Some(array) => Some(numbers(array, path, &format!("latency column `{}`", columns.latency))?),
        None => None,
    };
    let event_ids = match &raw.event_id {
        Some(array) => Some(class_names(array, path, &format!("event id column `{}`", columns.event_id))?),
        None => None,
    };
    let mut rows = Rows {
        path: raw.path.clone(),
        source_rows: Vec::new(),
        event_ids: event_ids.as_ref().map(|_| Vec::new()),
        labels: if regression { Values::Numbers(Vec::new()) } else { Values::Classes(Vec::new()) },
        predictions: if regression { Values::Numbers(Vec::new()) } else { Values::Classes(Vec::new()) },
        scores: scores.as_ref().map(|_| Vec::new()),
        latency: latency.as_ref().map(|_| Vec::new()),
        left_out: 0,
    };
    for row in 0..raw.rows {
        let (Some(label), Some(prediction)) = (&labels[row], &predictions[row]) else {
            rows.left_out += 1;
            continue;
        };
        rows.source_rows.push(row + 1);
        push(&mut rows.labels, label);
        push(&mut rows.predictions, prediction);
        if let (Some(ids), Some(all)) = (&mut rows.event_ids, &event_ids) {
            let Some(id) = &all[row] else {
                return Err(file_error(path, format!("row {}: no event id in column `{}`", row + 1, columns.event_id)));
            };
            ids.push(id.clone());
        }
        if let (Some(kept), Some(all)) = (&mut rows.scores, &scores) {
            kept.push(all[row].unwrap_or(f64::NAN));
        }
        if let (Some(kept), Some(all)) = (&mut rows.latency, &latency) {
            kept.push(all[row].unwrap_or(f64::NAN));
        }
    }
    if rows.source_rows.is_empty() {
        return Err(file_error(
            path,
            format!(
                "no labelled row ({} read, none with both a {} and a {})",
                crate::text::count_of(raw.rows as u64, "row", "rows"),
                label_what,
                prediction_what
            ),
        ));
    }
    Ok(rows)
}

/// One value of a label or prediction cell.
enum Values1 {
    Class(String),
    Number(f64),
}

fn push(values: &mut Values, value: &Values1) {
    match (values, value) {
        (Values::Classes(v), Values1::Class(c)) => v.push(c.clone()),
        (Values::Numbers(v), Values1::Number(n)) => v.push(*n),
        _ => unreachable!("one kind per task"),
    }
}

fn append(error: GateError, hint: &str) -> GateError {
    match error {
        GateError::File { path, problem } => GateError::File { path, problem: problem + hint },
        other => other,
    }
}

/// The old side once read.
enum Old {
    Rows(Rows),
    Baseline { path: String, baseline: Box<Baseline> },
}

fn parse_task(text: &str, path: &str) -> Result<Task, GateError> {
    match text {
        "binary_classification" => Ok(Task::BinaryClassification),
        "multiclass_classification" => Ok(Task::MulticlassClassification),
        "regression" => Ok(Task::Regression),
        other => Err(file_error(path, format!("unknown task `{other}`"))),
    }
}

/// Runs the offline gate: reads, pairs, measures, tests and checks.
pub fn run_offline(options: &OfflineOptions) -> Result<GateReport, GateError> {
    let new_raw = read_file(&options.new, &options.columns, "--new")?;
    let (old_raw, baseline) = match &options.old {
        OldSide::Rows(path) => (Some(read_file(path, &options.columns, "--old")?), None),
        OldSide::Baseline(path) => {
            let baseline = Baseline::load(path).map_err(|e| GateError::Input(e.to_string()))?;
            (None, Some((path.display().to_string(), baseline)))
        }
    };
    let baseline_task = match &baseline {
        Some((path, baseline)) => Some(parse_task(&baseline.task, path)?),
        None => None,
    };
    if let (Some(task), Some(baseline_task), Some((path, _))) = (options.task, baseline_task, &baseline)
        && task != baseline_task
    {
        return Err(GateError::Input(format!("--task {task}: the baseline {path} is a {baseline_task} profile")));
    }
    let regression = match options.task.or(baseline_task) {
        Some(task) => task == Task::Regression,
        None => std::iter::once(&new_raw)
            .chain(old_raw.as_ref())
            .any(|raw| is_float(raw.label.data_type()) || is_float(raw.prediction.data_type())),
    };
    let new_rows = usable_rows(&new_raw, &options.columns, regression)?;
    let old = match (old_raw, baseline) {
        (Some(raw), _) => Old::Rows(usable_rows(&raw, &options.columns, regression)?),
        (None, Some((path, baseline))) => Old::Baseline { path, baseline: Box::new(baseline) },
        (None, None) => unreachable!("one old side"),
    };
    let explicit_task = options.task.or(baseline_task);
    measure(options, old, new_rows, regression, explicit_task)
}

/// Class ids shared by both sides, and the binary model's positive class.
struct Classes {
    ids: HashMap<String, u32>,
    names: Vec<String>,
    positive: Option<u32>,
}

fn classes_of(
    sides: &[&Rows],
    explicit_task: Option<Task>,
    positive_class: Option<&str>,
) -> Result<Classes, GateError> {
    let mut classes = Classes { ids: HashMap::new(), names: Vec::new(), positive: None };
    for rows in sides {
        for values in [&rows.labels, &rows.predictions] {
            let Values::Classes(values) = values else { continue };
            for value in values {
                if !classes.ids.contains_key(value) {
                    classes.ids.insert(value.clone(), classes.names.len() as u32);
                    classes.names.push(value.clone());
                }
            }
        }
    }
    let mut sorted = classes.names.clone();
    sorted.sort();
    let listed = sorted.iter().take(COLUMNS_LISTED).cloned().collect::<Vec<_>>().join(", ");
    let zero_one = classes.names.iter().all(|name| name == "0" || name == "1");
    let binary = match explicit_task {
        Some(Task::BinaryClassification) => {
            if classes.names.len() > 2 {
                return Err(GateError::Input(format!(
                    "a binary_classification model, but the labels and predictions hold {} classes: {listed}",
                    classes.names.len()
                )));
            }
            if positive_class.is_none() && !zero_one {
                return Err(GateError::Input(format!(
                    "which class is positive? name it with --positive-class (the classes: {listed})"
                )));
            }
            true
        }
        Some(_) => false,
        None => classes.names.len() <= 2 && (zero_one || positive_class.is_some()),
    };
    if binary {
        let positive = positive_class.unwrap_or(crate::config::DEFAULT_POSITIVE_CLASS).to_string();
        if !classes.ids.contains_key(&positive) {
            classes.ids.insert(positive.clone(), classes.names.len() as u32);
            classes.names.push(positive.clone());
        }
        classes.positive = classes.ids.get(&positive).copied();
    }
    Ok(classes)
}

/// The rows `indices` of one side as an evaluation sample; binary scores
/// must be probabilities.
fn sample_of(rows: &Rows, indices: &[usize], classes: &Classes) -> Result<EvaluationSample, GateError> {
    let pick = |values: &[f64]| indices.iter().map(|&i| values[i]).collect::<Vec<f64>>();
    let outcomes = match (&rows.labels, &rows.predictions) {
        (Values::Classes(labels), Values::Classes(predictions)) => {
            let ids = |values: &[String]| indices.iter().map(|&i| classes.ids[&values[i]]).collect::<Vec<u32>>();
            let scores = match (&rows.scores, classes.positive) {
                (Some(scores), Some(_)) => {
                    for &i in indices {
                        let score = scores[i];
                        if score.is_finite() && !(0.0..=1.0).contains(&score) {
                            return Err(file_error(
                                &rows.path,
                                format!(
                                    "row {}: score {score} is not a probability (from 0 to 1) of the positive class",
                                    rows.source_rows[i]
                                ),
                            ));
                        }
                    }
                    Some(pick(scores))
                }
                _ => None,
            };
            Outcomes::Classes {
                predicted: ids(predictions),
                actual: ids(labels),
                classes: classes.names.len(),
                positive: classes.positive,
                scores,
            }
        }
        (Values::Numbers(labels), Values::Numbers(predictions)) => {
            Outcomes::Values { predicted: pick(predictions), actual: pick(labels) }
        }
        _ => unreachable!("labels and predictions of one kind"),
    };
    Ok(EvaluationSample::new(outcomes, rows.latency.as_ref().map(|latency| pick(latency))))
}

/// The old file's rows and the new file's rows that share an event id,
/// aligned (pair i is `old[i]`, `new[i]`), in the new file's order.
struct Pairs {
    old: Vec<usize>,
    new: Vec<usize>,
}

fn pair_rows(old: &Rows, new: &Rows) -> Result<Option<Pairs>, GateError> {
    let (Some(old_ids), Some(new_ids)) = (&old.event_ids, &new.event_ids) else { return Ok(None) };
    let index = |rows: &Rows, ids: &[String]| -> Result<HashMap<String, usize>, GateError> {
        let mut index = HashMap::with_capacity(ids.len());
        for (i, id) in ids.iter().enumerate() {
            if let Some(first) = index.insert(id.clone(), i) {
                return Err(file_error(
                    &rows.path,
                    format!(
                        "event id {:?} is on rows {} and {}: each row must have its own",
                        crate::text::shorten_long_tokens(id),
                        rows.source_rows[first],
                        rows.source_rows[i]
                    ),
                ));
            }
        }
        Ok(index)
    };
    let old_index = index(old, old_ids)?;
    index(new, new_ids)?;
    let (mut old_rows, mut new_rows) = (Vec::new(), Vec::new());
    for (j, id) in new_ids.iter().enumerate() {
        let Some(&i) = old_index.get(id) else { continue };
        if !old.labels.same(i, &new.labels, j) {
            return Err(GateError::Input(format!(
                "event id {:?}: the label is {} in {} (row {}) but {} in {} (row {}); both files must hold the same \
                 ground truth",
                crate::text::shorten_long_tokens(id),
                old.labels.text(i),
                old.path,
                old.source_rows[i],
                new.labels.text(j),
                new.path,
                new.source_rows[j]
            )));
        }
        old_rows.push(i);
        new_rows.push(j);
    }
    if old_rows.is_empty() {
        return Err(GateError::Input(format!(
            "{} and {} have no event id in common: are they the same evaluation set? (without event ids the rows \
             are compared unpaired)",
            old.path, new.path
        )));
    }
    Ok(Some(Pairs { old: old_rows, new: new_rows }))
}

/// Why a requirement cannot be checked on these inputs, if it cannot.
fn unsupported(metric: Metric, sample: &EvaluationSample, rows: &Rows, columns: &ColumnNames) -> String {
    let regression = matches!(sample.outcomes, Outcomes::Values { .. });
    let binary = matches!(sample.outcomes, Outcomes::Classes { positive: Some(_), .. });
    match metric.kind() {
        MetricKind::Classification | MetricKind::Scores if regression => {
            format!(
                "`{metric}` is a classification metric, but these are regression models (use mae, rmse, mape or r2)"
            )
        }
        MetricKind::Regression => format!(
            "`{metric}` is a regression metric, but these are classification models (use accuracy, precision, \
             recall, f1, or with scores roc_auc, log_loss, brier)"
        ),
        MetricKind::Scores if !binary => {
            format!("`{metric}` needs a binary model with scores; these models have more than two classes")
        }
        MetricKind::Scores if rows.scores.is_none() => format!(
            "`{metric}` needs scores: {} has no column `{}` (name it with --score-column)",
            rows.path, columns.score
        ),
        MetricKind::Scores => format!("`{metric}` needs scores: no row of {} has one", rows.path),
        MetricKind::Latency if rows.latency.is_none() => format!(
            "`{metric}` needs latencies: {} has no column `{}` (name it with --latency-column)",
            rows.path, columns.latency
        ),
        _ => format!("`{metric}` needs latencies: no row of {} has one", rows.path),
    }
}

fn measure(
    options: &OfflineOptions,
    old: Old,
    new: Rows,
    regression: bool,
    explicit_task: Option<Task>,
) -> Result<GateReport, GateError> {
    let mut notes = Vec::new();
    for rows in std::iter::once(&new).chain(match &old {
        Old::Rows(rows) => Some(rows),
        Old::Baseline { .. } => None,
    }) {
        if rows.left_out > 0 {
            notes.push(format!(
                "{}: {} without a label or a prediction left out",
                rows.path,
                crate::text::count_of(rows.left_out as u64, "row", "rows")
            ));
        }
    }
    let sides: Vec<&Rows> = match &old {
        Old::Rows(rows) => vec![rows, &new],
        Old::Baseline { .. } => vec![&new],
    };
    let classes = if regression {
        Classes { ids: HashMap::new(), names: Vec::new(), positive: None }
    } else {
        classes_of(&sides, explicit_task, options.positive_class.as_deref())?
    };
    let all = |rows: &Rows| (0..rows.source_rows.len()).collect::<Vec<usize>>();
    let new_all = all(&new);
    match old {
        Old::Rows(old_rows) => {
            let pairs = pair_rows(&old_rows, &new)?;
            let (old_indices, new_indices, pairing) = match pairs {
                Some(Pairs { old: old_indices, new: new_indices }) => {
                    let paired = old_indices.len();
                    for (rows, kept) in [(&old_rows, paired), (&new, paired)] {
                        let unmatched = rows.source_rows.len() - kept;
                        if unmatched > 0 {
                            notes.push(format!(
                                "{}: {} whose event id the other file lacks left out",
                                rows.path,
                                crate::text::count_of(unmatched as u64, "labelled row", "labelled rows")
                            ));
                        }
                    }
                    let pairing =
                        format!("paired on {}", crate::text::count_of(paired as u64, "event id", "event ids"));
                    (old_indices, new_indices, pairing)
                }
                None => {
                    let lacking: Vec<&str> = [&old_rows, &new]
                        .iter()
                        .filter(|rows| rows.event_ids.is_none())
                        .map(|rows| rows.path.as_str())
                        .collect();
                    let pairing = format!(
                        "not paired ({} no column `{}`): compared as independent samples",
                        if lacking.len() == 2 { "both files have".to_string() } else { format!("{} has", lacking[0]) },
                        options.columns.event_id
                    );
                    (all(&old_rows), new_all, pairing)
                }
            };
            let paired = pairing.starts_with("paired");
            let old_sample = sample_of(&old_rows, &old_indices, &classes)?;
            let new_sample = sample_of(&new, &new_indices, &classes)?;
            for requirement in &options.requirements {
                let metric = requirement.metric;
                if !new_sample.supports(metric) {
                    return Err(GateError::Input(format!(
                        "--require {:?}: {}",
                        requirement.text,
                        unsupported(metric, &new_sample, &new, &options.columns)
                    )));
                }
                if matches!(requirement.bound, Bound::RelativeToOld(_)) && !old_sample.supports(metric) {
                    return Err(GateError::Input(format!(
                        "--require {:?}: {}",
                        requirement.text,
                        unsupported(metric, &old_sample, &old_rows, &options.columns)
                    )));
                }
            }
            let mut tested: Vec<Metric> = Vec::new();
            for requirement in &options.requirements {
                let metric = requirement.metric;
                let by_mcnemar = paired && metric == Metric::Accuracy;
                if metric != Metric::LabeledCount
                    && !by_mcnemar
                    && old_sample.supports(metric)
                    && !tested.contains(&metric)
                {
                    tested.push(metric);
                }
            }
            let mut significance =
                significance::bootstrap(&old_sample, &new_sample, paired, &tested, options.bootstrap);
            if paired
                && options.requirements.iter().any(|r| r.metric == Metric::Accuracy)
                && let (Some(old_correct), Some(new_correct)) = (old_sample.correct(), new_sample.correct())
            {
                significance.insert(Metric::Accuracy, significance::mcnemar(&old_correct, &new_correct));
            }
            let old_side = SideSummary {
                role: "old".into(),
                source: old_rows.path.clone(),
                labeled_rows: old_sample.len() as u64,
                metrics: old_sample.metrics(),
            };
            let new_side = SideSummary {
                role: "new".into(),
                source: new.path.clone(),
                labeled_rows: new_sample.len() as u64,
                metrics: new_sample.metrics(),
            };
            Ok(super::evaluate(&options.requirements, old_side, new_side, pairing, &significance, notes))
        }
        Old::Baseline { path, baseline } => {
            let new_sample = sample_of(&new, &new_all, &classes)?;
            let old_metrics = GateMetrics {
                values: baseline
                    .performance
                    .iter()
                    .filter_map(|(name, value)| Metric::from_name(name).map(|metric| (metric, *value)))
                    .collect(),
            };
            for requirement in &options.requirements {
                let metric = requirement.metric;
                if !new_sample.supports(metric) {
                    return Err(GateError::Input(format!(
                        "--require {:?}: {}",
                        requirement.text,
                        unsupported(metric, &new_sample, &new, &options.columns)
                    )));
                }
                if matches!(requirement.bound, Bound::RelativeToOld(_)) && old_metrics.get(metric).is_none() {
                    let recorded: Vec<&str> = old_metrics.values.keys().map(|m| m.name()).collect();
                    return Err(GateError::Input(format!(
                        "--require {:?}: the baseline profile {path} records no `{metric}` (it records: {})",
                        requirement.text,
                        if recorded.is_empty() { "nothing".to_string() } else { recorded.join(", ") }
                    )));
                }
            }
            let mut significance = BTreeMap::new();
            if options.requirements.iter().any(|r| r.metric == Metric::Accuracy)
                && let (Some(old_accuracy), Some(old_count)) =
                    (old_metrics.get(Metric::Accuracy), old_metrics.get(Metric::LabeledCount))
                && let Some(new_correct) = new_sample.correct()
            {
                let old_count = old_count.round() as u64;
                let old_successes = ((old_accuracy * old_count as f64).round() as u64).min(old_count);
                let new_successes = new_correct.iter().filter(|c| **c).count() as u64;
                if let Some(test) = significance::accuracy_against_baseline(
                    (old_successes, old_count),
                    (new_successes, new_correct.len() as u64),
                ) {
                    significance.insert(Metric::Accuracy, test);
                }
            }
            let version = baseline.version.as_deref().map(|v| format!(" version {v}")).unwrap_or_default();
            let old_side = SideSummary {
                role: "old".into(),
                source: format!("baseline {path} (model {}{version})", baseline.model),
                labeled_rows: old_metrics.get(Metric::LabeledCount).unwrap_or(0.0) as u64,
                metrics: old_metrics,
            };
            let new_side = SideSummary {
                role: "new".into(),
                source: new.path.clone(),
                labeled_rows: new_sample.len() as u64,
                metrics: new_sample.metrics(),
            };
            let pairing = "not paired: the old side is a baseline profile".to_string();
            let significance: BTreeMap<Metric, Significance> = significance;
            Ok(super::evaluate(&options.requirements, old_side, new_side, pairing, &significance, notes))
        }
    }
}
