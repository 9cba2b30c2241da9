//! Evaluating rules and the alert lifecycle.
//!
//! Each batch of closed windows is split by `window_end` and evaluated in
//! that order, one evaluation per window end, at evaluation time =
//! `window_end` (event time: replays are deterministic). Per evaluation:
//!
//! - an `expr` rule's planned expression runs over the new rows; each
//!   matching row belongs to the alert instance of its fingerprint (rule,
//!   model, model_version, segment, feature). An instance is re-evaluated
//!   only when the window brings a row of the metrics its expression names
//!   (`metric = '…'`/`metric IN (…)`), so performance rows that arrive late
//!   do not count as a miss for a drift alert, nor drift rows for an
//!   accuracy alert;
//! - a `query` rule runs over the retained history (`window_metrics` =
//!   rows of windows ending within `history` of the evaluation time); its
//!   rows are the instances, every other instance of the rule is a miss.
//!
//! States: inactive → pending → firing → resolved. `for` (windows or a
//! duration) delays firing, `keep_firing_for` delays resolving, `cooldown`
//! suppresses a notifier for the same model within the given time; the
//! instances of a rule and model firing in one evaluation share one
//! cooldown decision (they become one notification: `notify::spec`).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use datafusion::arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use datafusion::arrow::datatypes::DataType;
use datafusion::datasource::MemTable;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::file::Span;
use super::ruleset::{Condition, Rule, RuleSet, template_name};
use crate::timestamp::format_rfc3339_ms;
use crate::window_metrics::{WindowMetricRow, rows_to_record_batch, window_metrics_schema};

/// An alert state change, as written to `--alerts` and served by
/// `/api/v1/alerts` (docs/RULES.md).
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct Transition {
    pub alert: String,
    /// `pending`, `firing`, `resolved`, or `inactive` (a pending alert whose
    /// condition stopped before it fired).
    pub state: String,
    pub fingerprint: String,
    pub model: String,
    pub model_version: String,
    pub segment: String,
    pub feature: Option<String>,
    pub window_start: String,
    pub window_end: String,
    pub value: Option<f64>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// Notifiers to send this transition to.
    pub notify: Vec<String>,
    /// Notifiers the rule names but `cooldown` held back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub suppressed: Vec<String>,
    /// When the alert became active (its first matching window's start).
    pub active_since: String,
    /// The evaluation that made the transition.
    pub evaluation_time: String,
}

/// A transition with what the audit log needs to explain it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertEvent {
    pub transition: Transition,
    pub rule: RuleReference,
    /// The rows that made the condition true (for a resolve, the last ones).
    pub evidence: Vec<Value>,
}

/// Which rule, exactly.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleReference {
    pub name: String,
    pub group: String,
    pub file: String,
    pub line: u64,
    pub sha256: String,
}

impl RuleReference {
    fn of(rule: &Rule) -> RuleReference {
        RuleReference {
            name: rule.name.clone(),
            group: rule.group.clone(),
            file: rule.file.clone(),
            line: rule.line,
            sha256: rule.sha256.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum State {
    Pending,
    Firing,
}

/// The identity columns of an instance.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
struct Series {
    model: String,
    model_version: String,
    segment: String,
    feature: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Instance {
    series: Series,
    state: State,
    active_since_ms: i64,
    last_match_ms: i64,
    matches: u32,
    misses: u32,
    evidence: Vec<Value>,
    window: (i64, i64),
    value: Option<f64>,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    notified: Vec<String>,
}

/// A match in one evaluation: the instance's series and its rows.
struct Match {
    series: Series,
    rows: Vec<Value>,
    window: (i64, i64),
    value: Option<f64>,
}

/// Errors evaluating a rule; logged and counted, never fatal.
#[derive(Debug, thiserror::Error)]
#[error("rule {rule}: {message}")]
pub struct EvaluationError {
    pub rule: String,
    pub message: String,
}

/// Rules, alert instance states and the history query rules read.
pub struct AlertEngine {
    rules: Arc<RuleSet>,
    instances: HashMap<(String, u128), Instance>,
    /// (rule, notifier, model) → last notification time (ms).
    cooldowns: HashMap<(String, String, String), i64>,
    /// Rows for query rules, each with the evaluation clock when it arrived
    /// (so rows of old windows arriving late, like performance rows after
    /// the label horizon, are kept as long as any other).
    history: VecDeque<(i64, RecordBatch)>,
    history_ms: i64,
    /// Rows in `history`, and the most it keeps (the oldest go first).
    history_rows: usize,
    history_max_rows: usize,
    /// Whether rows already aged out by count (logged once).
    history_rows_capped: bool,
    /// The evaluation clock of query rules: the latest evaluation time so
    /// far (window ends, and the wall clock in the daemon). Monotonic, so a
    /// late batch of old windows never turns the clock back.
    clock_ms: i64,
    runtime: Option<tokio::runtime::Runtime>,
    /// Evaluation errors since start.
    pub errors: Vec<EvaluationError>,
}

fn fingerprint(rule: &str, series: &Series) -> u128 {
    let mut key = Vec::with_capacity(64);
    for part in [rule, &series.model, &series.model_version, &series.segment, series.feature.as_deref().unwrap_or("")] {
        key.extend_from_slice(part.as_bytes());
        key.push(0);
    }
    key.push(u8::from(series.feature.is_some()));
    xxhash_rust::xxh3::xxh3_128(&key)
}

/// A `window_metrics` row as JSON (the evidence and template context).
pub fn row_json(row: &WindowMetricRow) -> Value {
    serde_json::json!({
        "model": &*row.model,
        "model_version": &*row.model_version,
        "segment": &*row.segment,
        "window_start": format_rfc3339_ms(row.window_start_ms),
        "window_end": format_rfc3339_ms(row.window_end_ms),
        "feature": row.feature.as_deref(),
        "metric": row.metric,
        "value": row.value,
        "baseline": row.baseline,
        "threshold": row.threshold,
        "p_value": row.p_value,
        "drifted": row.drifted,
        "sample_count": row.sample_count,
    })
}

/// The rows of a query result as JSON objects (timestamps as RFC 3339).
fn batch_json(batch: &RecordBatch) -> Vec<Value> {
    let schema = batch.schema();
    (0..batch.num_rows())
        .map(|row| {
            let mut object = serde_json::Map::new();
            for (i, field) in schema.fields().iter().enumerate() {
                let column = batch.column(i);
                let value = if column.is_null(row) {
                    Value::Null
                } else {
                    match field.data_type() {
                        DataType::Utf8 => Value::from(column.as_string::<i32>().value(row)),
                        DataType::LargeUtf8 => Value::from(column.as_string::<i64>().value(row)),
                        DataType::Utf8View => Value::from(column.as_string_view().value(row)),
                        DataType::Boolean => Value::from(column.as_boolean().value(row)),
                        DataType::Timestamp(_, _) => {
                            match datafusion::arrow::compute::cast(
                                column,
                                &DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Millisecond, None),
                            ) {
                                Ok(ms) => Value::from(format_rfc3339_ms(
                                    ms.as_primitive::<datafusion::arrow::datatypes::TimestampMillisecondType>()
                                        .value(row),
                                )),
                                Err(_) => Value::Null,
                            }
                        }
                        t if t.is_numeric() => match datafusion::arrow::compute::cast(column, &DataType::Float64) {
                            Ok(f) => {
                                let v = f.as_primitive::<datafusion::arrow::datatypes::Float64Type>().value(row);
                                if v.fract() == 0.0 && t.is_integer() {
                                    Value::from(v as i64)
                                } else {
                                    serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number)
                                }
                            }
                            Err(_) => Value::Null,
                        },
                        _ => match datafusion::arrow::util::display::array_value_to_string(column, row) {
                            Ok(s) => Value::from(s),
                            Err(_) => Value::Null,
                        },
                    }
                };
                object.insert(field.name().clone(), value);
            }
            Value::Object(object)
        })
        .collect()
}

fn series_of(row: &Value) -> Series {
    let text = |key: &str| row.get(key).and_then(Value::as_str).unwrap_or("").to_string();
    Series {
        model: text("model"),
        model_version: text("model_version"),
        segment: text("segment"),
        feature: row.get("feature").and_then(Value::as_str).map(str::to_string),
    }
}

fn parse_time(row: &Value, key: &str) -> Option<i64> {
    row.get(key).and_then(Value::as_str).and_then(crate::timestamp::parse_rfc3339_ms)
}

/// The alert engine's state in a checkpoint: instances (with the sha256 of
/// the rule that made them, so a rule edited meanwhile starts over),
/// cooldowns, the evaluation clock and the query rules' history (as Arrow
/// IPC streams).
#[derive(Debug, Serialize, Deserialize)]
pub struct AlertSnapshot {
    instances: Vec<(String, String, u128, Instance)>,
    cooldowns: Vec<((String, String, String), i64)>,
    history: Vec<(i64, serde_bytes::ByteBuf)>,
    clock_ms: i64,
}

impl AlertSnapshot {
    /// The MessagePack bytes a merger's mark carries (`cluster:`).
    pub fn to_msgpack(&self) -> Vec<u8> {
        rmp_serde::to_vec_named(self).expect("an alert snapshot always serialises")
    }

    /// Reads [`Self::to_msgpack`]'s bytes.
    pub fn from_msgpack(bytes: &[u8]) -> Result<AlertSnapshot, String> {
        rmp_serde::from_slice(bytes).map_err(|e| format!("an alert state not readable as MessagePack: {e}"))
    }

    /// This state with the history rows of `other` (an earlier state of
    /// the same model's alerts, from when its history last changed).
    pub fn with_history_of(mut self, other: AlertSnapshot) -> AlertSnapshot {
        self.history = other.history;
        self
    }

    /// Each instance's rule and state (`pending` or `firing`).
    pub fn instance_states(&self) -> Vec<(&str, &'static str)> {
        self.instances
            .iter()
            .map(|(rule, _, _, instance)| {
                (rule.as_str(), if instance.state == State::Firing { "firing" } else { "pending" })
            })
            .collect()
    }
}

fn batch_to_ipc(batch: &RecordBatch) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    let mut writer = datafusion::arrow::ipc::writer::StreamWriter::try_new(&mut bytes, &batch.schema())
        .map_err(|e| e.to_string())?;
    writer.write(batch).map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())?;
    drop(writer);
    Ok(bytes)
}

/// The rows of `batch` (of [`crate::window_metrics::window_metrics_schema`])
/// whose model is `model` (`equal`), or is not.
fn select_by_model(batch: &RecordBatch, model: &str, equal: bool) -> Result<RecordBatch, String> {
    let column = batch.column_by_name("model").ok_or("a history batch without a model column")?;
    let models = column.as_string_opt::<i32>().ok_or("a history batch whose model column is not text")?;
    let keep: datafusion::arrow::array::BooleanArray =
        models.iter().map(|value| Some((value == Some(model)) == equal)).collect();
    datafusion::arrow::compute::filter_record_batch(batch, &keep).map_err(|e| e.to_string())
}

fn ipc_to_batches(bytes: &[u8]) -> Result<Vec<RecordBatch>, String> {
    let reader = datafusion::arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
        .map_err(|e| e.to_string())?;
    reader.collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())
}

impl AlertEngine {
    /// The state to checkpoint.
    pub fn snapshot(&self) -> Result<AlertSnapshot, String> {
        self.snapshot_of(None, Some(usize::MAX))
    }

    /// The state of every model's alerts, or (`Some(model)`) of one
    /// model's: its instances, cooldowns and history rows.
    /// At most `history_bytes` of history rows go in, the newest (`None`:
    /// none).
    fn snapshot_of(&self, model: Option<&str>, history_bytes: Option<usize>) -> Result<AlertSnapshot, String> {
        let hashes = self.rules.hashes();
        let mut history = Vec::new();
        let mut budget = history_bytes.unwrap_or(0);
        let batches = if history_bytes.is_some() { self.history.len() } else { 0 };
        for (arrived, batch) in self.history.iter().rev().take(batches) {
            let rows = match model {
                Some(model) => &select_by_model(batch, model, true)?,
                None => batch,
            };
            if model.is_some() && rows.num_rows() == 0 {
                continue;
            }
            let bytes = batch_to_ipc(rows)?;
            if bytes.len() > budget {
                tracing::warn!(
                    model = model.unwrap_or("every model"),
                    limit = history_bytes.unwrap_or(0),
                    "query rules' history handed on only in part: the rest exceeds the limit"
                );
                break;
            }
            budget -= bytes.len();
            history.push((*arrived, serde_bytes::ByteBuf::from(bytes)));
        }
        history.reverse();
        Ok(AlertSnapshot {
            instances: self
                .instances
                .iter()
                .filter(|(_, instance)| model.is_none_or(|model| instance.series.model == model))
                .map(|((rule, fp), instance)| {
                    (rule.clone(), hashes.get(rule).cloned().unwrap_or_default(), *fp, instance.clone())
                })
                .collect(),
            cooldowns: self
                .cooldowns
                .iter()
                .filter(|((_, _, of), _)| model.is_none_or(|model| of == model))
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            history,
            clock_ms: self.clock_ms,
        })
    }

    /// Restores a checkpointed state: instances of rules that are loaded
    /// with the same text, cooldowns of loaded rules, the history and the
    /// clock. Returns how many instances were restored.
    pub fn restore(&mut self, snapshot: AlertSnapshot) -> Result<usize, String> {
        let hashes = self.rules.hashes();
        self.instances = snapshot
            .instances
            .into_iter()
            .filter(|(rule, hash, _, _)| hashes.get(rule) == Some(hash))
            .map(|(rule, _, fp, instance)| ((rule, fp), instance))
            .collect();
        self.cooldowns = snapshot.cooldowns.into_iter().filter(|((rule, _, _), _)| hashes.contains_key(rule)).collect();
        self.history.clear();
        self.history_rows = 0;
        for (arrived, bytes) in snapshot.history {
            for batch in ipc_to_batches(&bytes)? {
                self.history_rows += batch.num_rows();
                self.history.push_back((arrived, batch));
            }
        }
        self.clock_ms = snapshot.clock_ms;
        self.prune_history();
        Ok(self.instances.len())
    }

    /// `cluster:`: the state of `model`'s alerts, for the mark a next
    /// merger of the model takes over: its instances, its cooldowns, the
    /// clock, and (`history_bytes`: at most that many bytes of them, the
    /// newest) its rows of the query rules' history.
    pub fn model_snapshot(&self, model: &str, history_bytes: Option<usize>) -> Result<AlertSnapshot, String> {
        self.snapshot_of(Some(model), history_bytes)
    }

    /// Whether a rule reads the history (a `query:` rule): else no history
    /// needs handing on.
    pub fn keeps_history(&self) -> bool {
        self.rules.rules.iter().any(|rule| matches!(rule.condition, Condition::Query { .. }))
    }

    /// `cluster:`: takes `model`'s alerts over from a previous merger's
    /// [`Self::model_snapshot`]: its instances (of rules loaded with the
    /// same text) and cooldowns replace what this engine held of the model,
    /// its history rows replace the model's, in arrival order, and the
    /// clock is the later of the two. Returns how many instances it took.
    pub fn adopt_model(&mut self, model: &str, snapshot: AlertSnapshot) -> Result<usize, String> {
        let mut adopted = Vec::new();
        for (arrived, bytes) in &snapshot.history {
            for batch in ipc_to_batches(bytes)? {
                adopted.push((*arrived, select_by_model(&batch, model, true)?));
            }
        }
        self.forget_model(model)?;
        let hashes = self.rules.hashes();
        let mut taken = 0;
        for (rule, hash, fingerprint, instance) in snapshot.instances {
            if instance.series.model == model && hashes.get(&rule) == Some(&hash) {
                self.instances.insert((rule, fingerprint), instance);
                taken += 1;
            }
        }
        for ((rule, notifier, of), at) in snapshot.cooldowns {
            if of == model && hashes.contains_key(&rule) {
                self.cooldowns.insert((rule, notifier, of), at);
            }
        }
        let mut history: Vec<(i64, RecordBatch)> = self.history.drain(..).chain(adopted).collect();
        history.sort_by_key(|(arrived, _)| *arrived);
        self.history_rows = history.iter().map(|(_, batch)| batch.num_rows()).sum();
        self.history = history.into();
        self.clock_ms = self.clock_ms.max(snapshot.clock_ms);
        self.prune_history();
        Ok(taken)
    }

    /// `cluster:`: forgets `model`'s alerts (its merging went to another
    /// instance, which takes them over): its instances, with no
    /// transition (they did not resolve), its cooldowns and its history
    /// rows.
    pub fn forget_model(&mut self, model: &str) -> Result<(), String> {
        self.instances.retain(|_, instance| instance.series.model != model);
        self.cooldowns.retain(|(_, _, of), _| of != model);
        let mut kept = VecDeque::with_capacity(self.history.len());
        for (arrived, batch) in self.history.drain(..) {
            let others = select_by_model(&batch, model, false)?;
            if others.num_rows() > 0 {
                kept.push_back((arrived, others));
            }
        }
        self.history_rows = kept.iter().map(|(_, batch)| batch.num_rows()).sum();
        self.history = kept;
        Ok(())
    }

    /// An engine over `rules`, keeping `history` of rows for query rules.
    pub fn new(rules: Arc<RuleSet>, history: std::time::Duration) -> AlertEngine {
        AlertEngine {
            rules,
            instances: HashMap::new(),
            cooldowns: HashMap::new(),
            history: VecDeque::new(),
            history_ms: history.as_millis().min(i64::MAX as u128) as i64,
            history_rows: 0,
            history_max_rows: crate::config::DEFAULT_ALERTING_HISTORY_MAX_ROWS,
            history_rows_capped: false,
            clock_ms: i64::MIN,
            runtime: None,
            errors: Vec::new(),
        }
    }

    /// Keeps at most `rows` rows of history (`alerting.history_max_rows`),
    /// whatever the history's duration.
    pub fn with_history_max_rows(mut self, rows: usize) -> AlertEngine {
        self.history_max_rows = rows.max(1);
        self.prune_history();
        self
    }

    /// Rows query rules see now.
    pub fn history_rows(&self) -> usize {
        self.history_rows
    }

    pub fn rules(&self) -> &Arc<RuleSet> {
        &self.rules
    }

    /// Replaces the rule set; instances of rules whose text is unchanged
    /// keep their state, the others start over.
    pub fn replace_rules(&mut self, rules: Arc<RuleSet>) {
        let old = self.rules.hashes();
        let new = rules.hashes();
        self.instances.retain(|(rule, _), _| old.get(rule).is_some_and(|hash| new.get(rule) == Some(hash)));
        self.cooldowns.retain(|(rule, _, _), _| new.contains_key(rule));
        self.rules = rules;
    }

    /// Alert instances currently pending or firing, as transitions
    /// describing their present state (`notify`: where the firing went).
    pub fn active(&self) -> Vec<Transition> {
        let mut active: Vec<Transition> = self
            .instances
            .iter()
            .map(|((rule, fp), instance)| {
                let state = if instance.state == State::Firing { "firing" } else { "pending" };
                let notified = instance.notified.clone();
                self.transition(rule, *fp, instance, state, instance.last_match_ms, notified, Vec::new())
            })
            .collect();
        active.sort_by(|a, b| (&a.alert, &a.fingerprint).cmp(&(&b.alert, &b.fingerprint)));
        active
    }

    /// Evaluates every rule on newly closed windows' rows.
    pub fn evaluate(&mut self, rows: &[WindowMetricRow]) -> Vec<AlertEvent> {
        let mut events = Vec::new();
        if rows.is_empty() {
            return events;
        }
        let mut ends: Vec<i64> = rows.iter().map(|r| r.window_end_ms).collect();
        ends.sort_unstable();
        ends.dedup();
        for end in ends {
            let group: Vec<WindowMetricRow> = rows.iter().filter(|r| r.window_end_ms == end).cloned().collect();
            let batch = rows_to_record_batch(&group);
            self.clock_ms = self.clock_ms.max(end);
            self.history_rows += batch.num_rows();
            self.history.push_back((self.clock_ms, batch.clone()));
            self.prune_history();
            let clock = self.clock_ms;
            let rules = self.rules.clone();
            for rule in &rules.rules {
                match &rule.condition {
                    Condition::Expr { physical, metrics, .. } => {
                        match self.expr_matches(rule, physical.as_ref(), metrics.as_deref(), &group, &batch) {
                            Ok((matches, scope)) => events.extend(self.apply(rule, matches, Some(&scope), end)),
                            Err(message) => self.errors.push(EvaluationError { rule: rule.name.clone(), message }),
                        }
                    }
                    Condition::Query { sql } => events.extend(self.evaluate_query(rule, sql, clock)),
                }
            }
        }
        events
    }

    /// Evaluates only the query rules at `now_ms` (a timer tick: lets
    /// "no windows for 10 minutes" fire while nothing arrives).
    pub fn tick(&mut self, now_ms: i64) -> Vec<AlertEvent> {
        self.clock_ms = self.clock_ms.max(now_ms);
        self.prune_history();
        let now_ms = self.clock_ms;
        let rules = self.rules.clone();
        let mut events = Vec::new();
        for rule in &rules.rules {
            if let Condition::Query { sql } = &rule.condition {
                events.extend(self.evaluate_query(rule, sql, now_ms));
            }
        }
        events
    }

    /// Drops rows older than `history`, then the oldest rows beyond
    /// `history_max_rows`.
    fn prune_history(&mut self) {
        let oldest = self.clock_ms.saturating_sub(self.history_ms);
        while let Some((arrived, rows)) = self.history.front().map(|(arrived, batch)| (*arrived, batch.num_rows())) {
            let expired = arrived < oldest;
            let excess = self.history_rows.saturating_sub(self.history_max_rows);
            if !expired && excess == 0 {
                break;
            }
            if !expired && excess < rows {
                // Part of this batch goes: copy the rest, so the memory of
                // the dropped rows is freed too.
                let kept = self.history[0].1.slice(excess, rows - excess);
                let kept = datafusion::arrow::compute::concat_batches(&kept.schema(), [&kept]).unwrap_or(kept);
                self.history[0].1 = kept;
                self.history_rows -= excess;
            } else {
                self.history.pop_front();
                self.history_rows -= rows;
            }
            if !expired && !self.history_rows_capped {
                self.history_rows_capped = true;
                tracing::warn!(
                    max_rows = self.history_max_rows,
                    "alerting.history_max_rows reached: query rules see less than alerting.history of rows"
                );
            }
        }
    }

    fn expr_matches(
        &self,
        rule: &Rule,
        physical: &dyn datafusion::physical_expr::PhysicalExpr,
        metrics: Option<&[String]>,
        rows: &[WindowMetricRow],
        batch: &RecordBatch,
    ) -> Result<(Vec<Match>, HashSet<u128>), String> {
        let result = physical.evaluate(batch).map_err(|e| e.strip_backtrace())?;
        let mask = result.into_array(batch.num_rows()).map_err(|e| e.strip_backtrace())?;
        let mask: &BooleanArray = mask.as_boolean_opt().ok_or("the expression is not boolean")?;
        let mut scope = HashSet::new();
        let mut by_series: Vec<(u128, Match)> = Vec::new();
        for (i, row) in rows.iter().enumerate() {
            let relevant = metrics.is_none_or(|m| m.iter().any(|name| name == row.metric));
            if !relevant {
                continue;
            }
            let series = Series {
                model: row.model.to_string(),
                model_version: row.model_version.to_string(),
                segment: row.segment.to_string(),
                feature: row.feature.as_deref().map(str::to_string),
            };
            let fp = fingerprint(&rule.name, &series);
            scope.insert(fp);
            if !(mask.is_valid(i) && mask.value(i)) {
                continue;
            }
            match by_series.iter_mut().find(|(f, _)| *f == fp) {
                Some((_, m)) => m.rows.push(row_json(row)),
                None => by_series.push((
                    fp,
                    Match {
                        series,
                        rows: vec![row_json(row)],
                        window: (row.window_start_ms, row.window_end_ms),
                        value: Some(row.value),
                    },
                )),
            }
        }
        Ok((by_series.into_iter().map(|(_, m)| m).collect(), scope))
    }

    fn evaluate_query(&mut self, rule: &Rule, sql: &str, now_ms: i64) -> Vec<AlertEvent> {
        match self.run_query(sql, now_ms) {
            Ok(rows) => {
                let matches = rows
                    .into_iter()
                    .map(|row| {
                        let start = parse_time(&row, "window_start").unwrap_or(now_ms);
                        let end = parse_time(&row, "window_end").unwrap_or(now_ms);
                        Match {
                            series: series_of(&row),
                            value: row.get("value").and_then(Value::as_f64),
                            window: (start, end),
                            rows: vec![row],
                        }
                    })
                    .collect();
                self.apply(rule, matches, None, now_ms)
            }
            Err(message) => {
                self.errors.push(EvaluationError { rule: rule.name.clone(), message });
                Vec::new()
            }
        }
    }

    fn run_query(&mut self, sql: &str, now_ms: i64) -> Result<Vec<Value>, String> {
        self.rules.evaluation_time.store(now_ms, Ordering::Relaxed);
        let batches: Vec<RecordBatch> = self.history.iter().map(|(_, b)| b.clone()).collect();
        let table = MemTable::try_new(window_metrics_schema(), vec![batches]).map_err(|e| e.strip_backtrace())?;
        let context = &self.rules.context;
        context.deregister_table("window_metrics").map_err(|e| e.strip_backtrace())?;
        context.register_table("window_metrics", Arc::new(table)).map_err(|e| e.strip_backtrace())?;
        let runtime = match &self.runtime {
            Some(r) => r,
            None => self.runtime.insert(
                tokio::runtime::Builder::new_current_thread().build().map_err(|e| format!("query runtime: {e}"))?,
            ),
        };
        let result = runtime.block_on(async {
            let frame = context.sql(sql).await?;
            frame.collect().await
        });
        let batches = result.map_err(|e| e.strip_backtrace())?;
        Ok(batches.iter().flat_map(batch_json).collect())
    }

    /// Applies one evaluation's matches to a rule's instances. `scope`:
    /// the fingerprints this evaluation covers (`None`: all of the rule's).
    fn apply(
        &mut self,
        rule: &Rule,
        matches: Vec<Match>,
        scope: Option<&HashSet<u128>>,
        now_ms: i64,
    ) -> Vec<AlertEvent> {
        let mut events = Vec::new();
        let mut matched = HashSet::new();
        for m in matches {
            let fp = fingerprint(&rule.name, &m.series);
            if !matched.insert(fp) {
                // A query returning the same series twice: the first row wins.
                continue;
            }
            let (labels, annotations) = self.render(rule, &m.rows[0]);
            let key = (rule.name.clone(), fp);
            let instance = self.instances.entry(key.clone()).or_insert_with(|| Instance {
                series: m.series.clone(),
                state: State::Pending,
                active_since_ms: m.window.0,
                last_match_ms: now_ms,
                matches: 0,
                misses: 0,
                evidence: Vec::new(),
                window: m.window,
                value: m.value,
                labels: BTreeMap::new(),
                annotations: BTreeMap::new(),
                notified: Vec::new(),
            });
            let new = instance.matches == 0;
            instance.matches = instance.matches.saturating_add(1);
            instance.misses = 0;
            instance.last_match_ms = now_ms;
            instance.evidence = m.rows;
            instance.window = m.window;
            instance.value = m.value;
            instance.labels = labels;
            instance.annotations = annotations;
            let ready = match rule.pending_for {
                Span::Windows(n) => instance.matches >= n.max(1),
                Span::Duration(d) => now_ms - instance.active_since_ms >= d.as_millis() as i64,
            };
            if instance.state == State::Pending && ready {
                instance.state = State::Firing;
                let (notify, suppressed) = self.notifications(rule, &key, now_ms);
                let instance = self.instances.get_mut(&key).expect("just inserted");
                instance.notified = notify.clone();
                events.push(self.event(rule, fp, "firing", now_ms, notify, suppressed));
            } else if new {
                events.push(self.event(rule, fp, "pending", now_ms, Vec::new(), Vec::new()));
            }
        }
        let missed: Vec<u128> = self
            .instances
            .keys()
            .filter(|(name, fp)| *name == rule.name && !matched.contains(fp) && scope.is_none_or(|s| s.contains(fp)))
            .map(|(_, fp)| *fp)
            .collect();
        for fp in missed {
            let key = (rule.name.clone(), fp);
            let instance = self.instances.get_mut(&key).expect("listed above");
            instance.misses = instance.misses.saturating_add(1);
            let (state, done) = match instance.state {
                State::Pending => ("inactive", true),
                State::Firing => {
                    let resolved = match rule.keep_firing_for {
                        Span::Windows(n) => instance.misses > n,
                        Span::Duration(d) => now_ms - instance.last_match_ms >= d.as_millis() as i64,
                    };
                    ("resolved", resolved)
                }
            };
            if done {
                let notify = if state == "resolved" { instance.notified.clone() } else { Vec::new() };
                events.push(self.event(rule, fp, state, now_ms, notify, Vec::new()));
                self.instances.remove(&key);
            }
        }
        events
    }

    /// The notifiers a firing transition goes to, and those `cooldown`
    /// holds back (per rule, notifier and model). The cooldown applies to
    /// the group of instances of one rule and model firing in one
    /// evaluation, which make one notification: once one of them is sent,
    /// the others firing in the same evaluation join it.
    fn notifications(&mut self, rule: &Rule, key: &(String, u128), now_ms: i64) -> (Vec<String>, Vec<String>) {
        let model = self.instances[key].series.model.clone();
        let mut notify = Vec::new();
        let mut suppressed = Vec::new();
        for notifier in &rule.notify {
            let cooldown_key = (rule.name.clone(), notifier.clone(), model.clone());
            match (rule.cooldown, self.cooldowns.get(&cooldown_key)) {
                (_, Some(&last)) if last == now_ms => notify.push(notifier.clone()),
                (Some(cooldown), Some(&last)) if now_ms - last < cooldown.as_millis() as i64 => {
                    suppressed.push(notifier.clone());
                }
                _ => {
                    self.cooldowns.insert(cooldown_key, now_ms);
                    notify.push(notifier.clone());
                }
            }
        }
        (notify, suppressed)
    }

    fn render(&self, rule: &Rule, row: &Value) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
        let context = minijinja::Value::from_serialize(row);
        let render = |kind: &str, key: &str| -> String {
            let name = template_name(&rule.name, kind, key);
            match self.rules.templates.get_template(&name).and_then(|t| t.render(&context)) {
                Ok(text) => text,
                Err(e) => format!("<template error: {e}>"),
            }
        };
        let labels = rule.labels.iter().map(|k| (k.clone(), render("labels", k))).collect();
        let annotations = rule.annotations.iter().map(|k| (k.clone(), render("annotations", k))).collect();
        (labels, annotations)
    }

    fn event(
        &self,
        rule: &Rule,
        fp: u128,
        state: &'static str,
        now_ms: i64,
        notify: Vec<String>,
        suppressed: Vec<String>,
    ) -> AlertEvent {
        let instance = &self.instances[&(rule.name.clone(), fp)];
        AlertEvent {
            transition: self.transition(&rule.name, fp, instance, state, now_ms, notify, suppressed),
            rule: RuleReference::of(rule),
            evidence: instance.evidence.clone(),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn transition(
        &self,
        rule: &str,
        fp: u128,
        instance: &Instance,
        state: &'static str,
        now_ms: i64,
        notify: Vec<String>,
        suppressed: Vec<String>,
    ) -> Transition {
        Transition {
            alert: rule.to_string(),
            state: state.to_string(),
            fingerprint: format!("{fp:032x}"),
            model: instance.series.model.clone(),
            model_version: instance.series.model_version.clone(),
            segment: instance.series.segment.clone(),
            feature: instance.series.feature.clone(),
            window_start: format_rfc3339_ms(instance.window.0),
            window_end: format_rfc3339_ms(instance.window.1),
            value: instance.value,
            labels: instance.labels.clone(),
            annotations: instance.annotations.clone(),
            notify,
            suppressed,
            active_since: format_rfc3339_ms(instance.active_since_ms),
            evaluation_time: format_rfc3339_ms(now_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(model: &str, metric: &'static str, end_minute: i64, value: f64) -> WindowMetricRow {
        let t0 = 1_795_687_200_000i64; // 2026-11-26T10:00:00Z
        let end = t0 + end_minute * 60_000;
        WindowMetricRow {
            model: model.into(),
            model_version: "".into(),
            segment: "".into(),
            window_start_ms: end - 300_000,
            window_end_ms: end,
            feature: None,
            metric,
            value,
            baseline: None,
            threshold: None,
            p_value: None,
            drifted: None,
            sample_count: 1000,
        }
    }

    fn engine(rules: &str) -> AlertEngine {
        let set = RuleSet::from_sources(&[("r.yaml".into(), rules.into())], None).expect("rules load");
        AlertEngine::new(Arc::new(set), std::time::Duration::from_secs(3600))
    }

    const RULES: &str = "groups:
  - name: g
    rules:
      - alert: Silence
        query: >-
          SELECT model, max(window_end) AS window_end FROM window_metrics WHERE metric = 'count'
          GROUP BY model HAVING max(window_end) < evaluation_time() - INTERVAL '10 minutes'
      - alert: LowAccuracy
        query: SELECT model, value FROM window_metrics WHERE metric = 'accuracy' AND value < 0.9
";

    /// Regression: with a cooldown, three features drifting in one window
    /// sent one notification naming one arbitrary feature; the others were
    /// only `suppressed`. The cooldown now applies to the group.
    #[test]
    fn features_firing_together_share_one_cooldown_decision() {
        let mut engine = engine(
            "groups:\n  - name: g\n    rules:\n      - alert: Drift\n        expr: metric = 'psi' AND value > 0.2\n        \
             notify: [hook, mail]\n        cooldown: 1h\n",
        );
        let drift = |feature: &str, end_minute: i64, value: f64| WindowMetricRow {
            feature: Some(feature.into()),
            ..row("fraud", "psi", end_minute, value)
        };
        let events = engine.evaluate(&[drift("amount", 5, 0.5), drift("country", 5, 0.4), drift("tenure", 5, 0.3)]);
        let firing: Vec<(Option<&str>, &[String], &[String])> = events
            .iter()
            .map(|e| (e.transition.feature.as_deref(), &e.transition.notify[..], &e.transition.suppressed[..]))
            .collect();
        let both = ["hook".to_string(), "mail".to_string()];
        assert_eq!(
            firing,
            [
                (Some("amount"), &both[..], &[][..]),
                (Some("country"), &both[..], &[][..]),
                (Some("tenure"), &both[..], &[][..])
            ]
        );
        // A fourth feature firing in a later window within the hour: held back.
        let events = engine.evaluate(&[
            drift("amount", 10, 0.5),
            drift("country", 10, 0.4),
            drift("tenure", 10, 0.3),
            drift("age", 10, 0.9),
        ]);
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].transition.feature.as_deref(), Some("age"));
        assert!(events[0].transition.notify.is_empty());
        assert_eq!(events[0].transition.suppressed, both);
    }

    #[test]
    fn history_is_bounded_by_rows_as_well_as_time() {
        let mut engine = engine(RULES).with_history_max_rows(5);
        let events = engine.evaluate(&[row("fraud", "accuracy", 5, 0.5), row("fraud", "count", 5, 10.0)]);
        assert!(events.iter().any(|e| e.transition.alert == "LowAccuracy" && e.transition.state == "firing"));
        assert_eq!(engine.history_rows(), 2);
        // Eight rows of one later window, well within the hour: only the
        // newest five rows stay, so the low accuracy row has aged out.
        let rows: Vec<WindowMetricRow> = (0..8).map(|i| row(&format!("m{i}"), "count", 10, 10.0)).collect();
        let events = engine.evaluate(&rows);
        assert_eq!(engine.history_rows(), 5);
        assert!(events.iter().any(|e| e.transition.alert == "LowAccuracy" && e.transition.state == "resolved"));
        let snapshot = engine.snapshot().unwrap();
        let mut restored = self::engine(RULES).with_history_max_rows(3);
        restored.restore(snapshot).unwrap();
        assert_eq!(restored.history_rows(), 3);
    }

    /// A model's merging moves to another instance: the new merger takes
    /// the model's alerts over from the old one's snapshot and goes on as
    /// the old one would have (no second firing, the resolution comes from
    /// it); the old one forgets the model, silently, and keeps the others.
    #[test]
    fn a_models_alerts_move_to_its_next_merger_and_go_on_as_they_would_have() {
        let rules = "groups:
  - name: g
    rules:
      - alert: Drift
        expr: metric = 'psi' AND value > 0.2
        for: 2
      - alert: LowAccuracy
        query: SELECT model, value FROM window_metrics WHERE metric = 'accuracy' AND value < 0.9
";
        let psi = |model: &str, end_minute: i64, value: f64| WindowMetricRow {
            feature: Some("amount".into()),
            ..row(model, "psi", end_minute, value)
        };
        let states = |events: &[AlertEvent], model: &str| -> Vec<(String, String)> {
            events
                .iter()
                .filter(|e| e.transition.model == model)
                .map(|e| (e.transition.alert.clone(), e.transition.state.clone()))
                .collect()
        };
        // One engine all along, and one whose merging of fraud moves away
        // after the second window.
        let mut alone = engine(rules);
        let mut old = engine(rules);
        let first = [psi("fraud", 5, 0.5), psi("churn", 5, 0.5), row("fraud", "accuracy", 5, 0.5)];
        let second = [psi("fraud", 10, 0.5), psi("churn", 10, 0.5)];
        for rows in [&first[..], &second[..]] {
            let (a, b) = (alone.evaluate(rows), old.evaluate(rows));
            assert_eq!(states(&a, "fraud"), states(&b, "fraud"));
        }
        let fraud_firing = |engine: &AlertEngine| {
            let mut firing: Vec<String> =
                engine.active().into_iter().filter(|a| a.model == "fraud").map(|a| a.alert).collect();
            firing.sort();
            firing
        };
        assert_eq!(fraud_firing(&alone), ["Drift", "LowAccuracy"]);
        assert!(old.keeps_history());
        // As a mark carries it: the state now, the history as of its last
        // change (here the same).
        let state = old.model_snapshot("fraud", None).unwrap();
        let with_history = old.model_snapshot("fraud", Some(1 << 20)).unwrap();
        let snapshot = AlertSnapshot::from_msgpack(&state.to_msgpack())
            .unwrap()
            .with_history_of(AlertSnapshot::from_msgpack(&with_history.to_msgpack()).unwrap());
        assert!(old.model_snapshot("fraud", Some(10)).unwrap().history.is_empty(), "none fits in 10 bytes");
        old.forget_model("fraud").unwrap();
        assert!(fraud_firing(&old).is_empty(), "the old merger keeps none of fraud's alerts");
        assert!(old.active().iter().any(|a| a.model == "churn"), "nor loses the others'");
        assert_eq!(old.history_rows(), 2, "churn's rows stay in the old merger's history");
        let mut new = engine(rules);
        assert_eq!(new.adopt_model("fraud", snapshot).unwrap(), 2);
        assert_eq!(fraud_firing(&new), fraud_firing(&alone));
        // Fraud's next window goes to the new merger, which does what the
        // engine alone does: the drift resolves, and the accuracy row that
        // came along in the history keeps LowAccuracy firing, no transition.
        let third = [psi("fraud", 15, 0.1)];
        let (a, b) = (alone.evaluate(&third), new.evaluate(&third));
        assert_eq!(states(&b, "fraud"), states(&a, "fraud"));
        assert_eq!(states(&b, "fraud"), [("Drift".to_string(), "resolved".to_string())]);
        assert_eq!(fraud_firing(&new), ["LowAccuracy"]);
        assert_eq!(new.history_rows(), alone.history_rows() - 2, "fraud's rows, not churn's");
    }

    #[test]
    fn late_rows_of_old_windows_neither_turn_the_clock_back_nor_age_out_at_once() {
        let mut engine = engine(RULES);
        let mut rows = vec![row("fraud", "count", 5, 10.0)];
        rows.extend((1..=5).map(|i| row("churn", "count", 5 * i, 10.0)));
        let events = engine.evaluate(&rows);
        let states: Vec<(String, &str)> =
            events.iter().map(|e| (e.transition.alert.clone(), e.transition.state.as_str())).collect();
        assert_eq!(states, [("Silence".to_string(), "firing")]);
        // Performance rows of a window two hours old arrive (after its label
        // horizon): the silence alert stays firing, and the late rows are
        // visible to query rules although their window is older than the
        // history.
        let late = engine.evaluate(&[row("churn", "accuracy", -115, 0.5)]);
        let states: Vec<(&str, &str)> =
            late.iter().map(|e| (e.transition.alert.as_str(), e.transition.state.as_str())).collect();
        assert_eq!(states, [("LowAccuracy", "firing")]);
        assert_eq!(engine.active().len(), 2);
        // An hour of wall clock later the late rows have aged out.
        let later = engine.tick(1_795_687_200_000 + 25 * 60_000 + 3_600_001);
        assert!(later.iter().any(|e| e.transition.alert == "LowAccuracy" && e.transition.state == "resolved"));
    }
}
