//! Loading and checking rule files into a [`RuleSet`]: every rule's SQL is
//! planned against the `window_metrics` schema, its templates compiled, its
//! notifier names checked, alert names kept unique. Every problem is
//! reported with its file and line, all at once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use datafusion::common::{DFSchema, ScalarValue};
use datafusion::datasource::MemTable;
use datafusion::logical_expr::{ColumnarValue, Expr, Operator, Volatility, create_udf};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::{SessionConfig, SessionContext};
use serde_saphyr::Spanned;
use sha2::{Digest, Sha256};

use super::file::{RULE_KEYS, RuleSpec, Span, parse_rule_file};
use crate::window_metrics::window_metrics_schema;

/// A problem with a rule file, at a line when one is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    pub file: String,
    pub line: Option<u64>,
    pub message: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.file, line, crate::text::shorten_long_tokens(&self.message)),
            None => write!(f, "{}: {}", self.file, crate::text::shorten_long_tokens(&self.message)),
        }
    }
}

/// What a rule tests.
pub enum Condition {
    /// A boolean expression, planned once and evaluated on each batch of
    /// rows; `metrics` are the metric names it requires (`metric = '…'` or
    /// `metric IN (…)` among its conjuncts), if any.
    Expr { sql: String, physical: Arc<dyn PhysicalExpr>, metrics: Option<Vec<String>> },
    /// A query whose rows are alert instances, planned on each evaluation
    /// over the retained history.
    Query { sql: String },
}

impl fmt::Debug for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Condition::Expr { sql, metrics, .. } => write!(f, "Expr({sql:?}, metrics {metrics:?})"),
            Condition::Query { sql } => write!(f, "Query({sql:?})"),
        }
    }
}

/// One checked rule.
#[derive(Debug)]
pub struct Rule {
    pub name: String,
    pub group: String,
    pub file: String,
    pub line: u64,
    /// sha256 of the rule as written (normalised), so the audit log names
    /// the exact rule and a reload can tell changed rules from unchanged.
    pub sha256: String,
    pub condition: Condition,
    pub pending_for: Span,
    pub keep_firing_for: Span,
    pub cooldown: Option<Duration>,
    /// Label and annotation names, in order; the templates live in the
    /// rule set's environment under [`template_name`].
    pub labels: Vec<String>,
    pub annotations: Vec<String>,
    pub notify: Vec<String>,
}

/// The name of a rule's label or annotation template.
pub fn template_name(rule: &str, kind: &str, key: &str) -> String {
    format!("{rule}\u{1f}{kind}\u{1f}{key}")
}

/// A checked set of rules, ready to evaluate.
pub struct RuleSet {
    pub rules: Vec<Rule>,
    pub templates: minijinja::Environment<'static>,
    /// The query engine: `window_metrics` is re-registered per evaluation;
    /// `evaluation_time()` reads [`RuleSet::evaluation_time`].
    pub context: SessionContext,
    pub evaluation_time: Arc<AtomicI64>,
    /// The files the rules came from.
    pub files: Vec<String>,
}

impl fmt::Debug for RuleSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuleSet").field("rules", &self.rules).field("files", &self.files).finish()
    }
}

/// A session with an empty `window_metrics` and `evaluation_time()`.
fn new_context(evaluation_time: &Arc<AtomicI64>) -> SessionContext {
    let config = SessionConfig::new().with_target_partitions(1).with_information_schema(false);
    let context = SessionContext::new_with_config(config);
    let schema = window_metrics_schema();
    let table = MemTable::try_new(schema, vec![vec![]]).expect("an empty window_metrics table");
    context.register_table("window_metrics", Arc::new(table)).expect("registering window_metrics");
    let time = evaluation_time.clone();
    let udf = create_udf(
        "evaluation_time",
        vec![],
        datafusion::arrow::datatypes::DataType::Timestamp(
            datafusion::arrow::datatypes::TimeUnit::Millisecond,
            Some("UTC".into()),
        ),
        Volatility::Volatile,
        Arc::new(move |_| {
            Ok(ColumnarValue::Scalar(ScalarValue::TimestampMillisecond(
                Some(time.load(Ordering::Relaxed)),
                Some("UTC".into()),
            )))
        }),
    );
    context.register_udf(udf);
    // Functions whose result size is set by an argument, not by the rows:
    // one rule could make every evaluation allocate gigabytes. Rules never
    // need them.
    for name in UNBOUNDED_FUNCTIONS {
        context.deregister_udf(name);
        context.deregister_udtf(name);
    }
    context
}

/// SQL functions rules may not use (`repeat('a', 1e10)` would allocate
/// 10 GB per evaluation).
pub const UNBOUNDED_FUNCTIONS: &[&str] =
    &["repeat", "lpad", "rpad", "array_repeat", "array_resize", "generate_series", "range"];

/// The longest alert name accepted (it becomes a label value and a key).
pub const MAX_NAME_BYTES: usize = crate::config::MAX_NAME_BYTES;

/// The longest `expr` or `query` accepted (16 KiB). Real conditions are a
/// line or two; SQL planning time grows with the text, so a huge one is
/// refused before DataFusion sees it.
pub const MAX_SQL_BYTES: usize = 16 << 10;

fn check_sql_length(sql: &str) -> Result<(), String> {
    if sql.len() > MAX_SQL_BYTES {
        return Err(format!("is {} bytes long; the limit is {MAX_SQL_BYTES} bytes", sql.len()));
    }
    Ok(())
}

/// The metric names an expression requires among its top-level conjuncts.
fn required_metrics(expr: &Expr) -> Option<Vec<String>> {
    let is_metric = |e: &Expr| matches!(e, Expr::Column(c) if c.name == "metric");
    let literal = |e: &Expr| match e {
        Expr::Literal(ScalarValue::Utf8(Some(s)) | ScalarValue::Utf8View(Some(s)), _) => Some(s.clone()),
        _ => None,
    };
    for conjunct in datafusion::logical_expr::utils::split_conjunction(expr) {
        match conjunct {
            Expr::BinaryExpr(b) if b.op == Operator::Eq => {
                if is_metric(&b.left)
                    && let Some(s) = literal(&b.right)
                {
                    return Some(vec![s]);
                }
                if is_metric(&b.right)
                    && let Some(s) = literal(&b.left)
                {
                    return Some(vec![s]);
                }
            }
            Expr::InList(list) if !list.negated && is_metric(&list.expr) => {
                let names: Option<Vec<String>> = list.list.iter().map(literal).collect();
                if names.is_some() {
                    return names;
                }
            }
            _ => {}
        }
    }
    None
}

/// A planning error, led by a hint when the SQL writes text in double
/// quotes (`metric = "psi"`), which SQL reads as a column name.
fn explain_planning_error(sql: &str, schema: &DFSchema, message: String) -> String {
    let columns: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    match super::lint::double_quote_hint(sql, &columns) {
        // DataFusion's first line names the missing column; the list of
        // valid fields after it adds nothing here.
        Some(hint) => format!("{hint} ({})", message.lines().next().unwrap_or_default()),
        None => message,
    }
}

fn line_of<T>(spanned: &Spanned<T>) -> u64 {
    spanned.referenced.line()
}

impl RuleSet {
    /// An empty rule set (no rules loaded).
    pub fn empty() -> RuleSet {
        let evaluation_time = Arc::new(AtomicI64::new(0));
        RuleSet {
            rules: Vec::new(),
            templates: minijinja::Environment::new(),
            context: new_context(&evaluation_time),
            evaluation_time,
            files: Vec::new(),
        }
    }

    /// Loads and checks rule files. `notifiers`: the names rules may use in
    /// `notify` (`None`: not checked). Returns every error found.
    pub fn load(paths: &[impl AsRef<Path>], notifiers: Option<&BTreeSet<String>>) -> Result<RuleSet, Vec<RuleError>> {
        let mut sources = Vec::new();
        let mut errors = Vec::new();
        for path in paths {
            let path = path.as_ref();
            let file = path.display().to_string();
            match crate::fsutil::read_text_file_bounded(path, crate::fsutil::MAX_TEXT_FILE_BYTES) {
                Ok(text) => sources.push((file, text)),
                Err(e) => errors.push(RuleError { file, line: None, message: e.to_string() }),
            }
        }
        match RuleSet::from_sources(&sources, notifiers) {
            Ok(set) if errors.is_empty() => Ok(set),
            Ok(_) => Err(errors),
            Err(more) => {
                errors.extend(more);
                Err(errors)
            }
        }
    }

    /// Checks rule files given as (name, text) pairs.
    pub fn from_sources(
        sources: &[(String, String)],
        notifiers: Option<&BTreeSet<String>>,
    ) -> Result<RuleSet, Vec<RuleError>> {
        let mut set = RuleSet::empty();
        let mut errors = Vec::new();
        let schema = DFSchema::try_from(window_metrics_schema().as_ref().clone()).expect("window_metrics schema");
        let mut seen: HashMap<String, (String, u64)> = HashMap::new();
        for (file, text) in sources {
            set.files.push(file.clone());
            let (spec, unknown_keys) = match parse_rule_file(text) {
                Ok(parsed) => parsed,
                Err((line, message)) => {
                    errors.push(RuleError { file: file.clone(), line, message });
                    continue;
                }
            };
            for (group, group_unknown) in spec.groups.into_iter().zip(unknown_keys) {
                for (rule, rule_unknown) in group.rules.into_iter().zip(group_unknown) {
                    let error =
                        |line: u64, message: String| RuleError { file: file.clone(), line: Some(line), message };
                    if !rule_unknown.is_empty() {
                        // Reported, and the rule left unchecked (a misspelt
                        // key would only make it look incomplete); the
                        // file's other rules are still checked.
                        for (line, key) in rule_unknown {
                            errors.push(error(
                                line,
                                format!("unknown key `{key}` in a rule; expected one of {}", RULE_KEYS.join(", ")),
                            ));
                        }
                        continue;
                    }
                    let name = rule.alert.value.trim().to_string();
                    let line = line_of(&rule.alert);
                    if name.len() > MAX_NAME_BYTES {
                        errors.push(error(
                            line,
                            format!("alert name: {} bytes long; the limit is {MAX_NAME_BYTES}", name.len()),
                        ));
                        continue;
                    }
                    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                        errors.push(error(line, format!("alert name {name:?}: use letters, digits, '_' and '-'")));
                        continue;
                    }
                    if let Some((other_file, other_line)) = seen.get(&name) {
                        errors.push(error(
                            line,
                            format!("duplicate alert name {name:?} (first defined at {other_file}:{other_line})"),
                        ));
                        continue;
                    }
                    seen.insert(name.clone(), (file.clone(), line));
                    match set.check_rule(&rule, &name, &group.name.value, file, &schema, notifiers) {
                        Ok(checked) => set.rules.push(checked),
                        Err(mut rule_errors) => errors.append(&mut rule_errors),
                    }
                }
            }
        }
        if errors.is_empty() { Ok(set) } else { Err(errors) }
    }

    fn check_rule(
        &mut self,
        rule: &RuleSpec,
        name: &str,
        group: &str,
        file: &str,
        schema: &DFSchema,
        notifiers: Option<&BTreeSet<String>>,
    ) -> Result<Rule, Vec<RuleError>> {
        let mut errors = Vec::new();
        let error = |line: u64, message: String| RuleError { file: file.to_string(), line: Some(line), message };
        let line = line_of(&rule.alert);
        // The names label and annotation templates may use: the row's
        // columns, or a query's result columns (unknown if it failed).
        let row_columns: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
        let mut template_variables: Option<Vec<String>> = None;
        let condition = match (&rule.expr, &rule.query) {
            (Some(expr), None) => match self.plan_expr(&expr.value, schema) {
                Ok((condition, problems)) => {
                    for problem in problems {
                        errors.push(error(line_of(expr), format!("{name}: expr: {problem}")));
                    }
                    template_variables = Some(row_columns);
                    Some(condition)
                }
                Err(message) => {
                    errors.push(error(line_of(expr), format!("{name}: expr: {message}")));
                    None
                }
            },
            (None, Some(query)) => match self.plan_query(&query.value) {
                Ok((columns, problems)) => {
                    for problem in problems {
                        errors.push(error(line_of(query), format!("{name}: query: {problem}")));
                    }
                    template_variables = Some(columns);
                    Some(Condition::Query { sql: query.value.clone() })
                }
                Err(message) => {
                    errors.push(error(line_of(query), format!("{name}: query: {message}")));
                    None
                }
            },
            (Some(_), Some(query)) => {
                errors.push(error(line_of(query), format!("{name}: give either `expr` or `query`, not both")));
                None
            }
            (None, None) => {
                errors.push(error(line, format!("{name}: needs an `expr` (or a `query`)")));
                None
            }
        };
        for (key, span) in
            [("for", &rule.pending_for), ("keep_firing_for", &rule.keep_firing_for), ("cooldown", &rule.cooldown)]
        {
            if let Some(Spanned { value: Span::Duration(d), .. }) = span
                && *d > crate::config::MAX_DURATION
            {
                errors
                    .push(error(line_of(span.as_ref().expect("matched")), format!("{name}: {key}: at most 100 years")));
            }
        }
        let cooldown = match &rule.cooldown {
            None => None,
            Some(Spanned { value: Span::Duration(d), .. }) => Some(*d),
            Some(Spanned { value: Span::Windows(0), .. }) => None,
            Some(spanned) => {
                errors.push(error(line_of(spanned), format!("{name}: cooldown must be a duration (e.g. 12h)")));
                None
            }
        };
        for notifier in &rule.notify {
            if let Some(known) = notifiers
                && !known.contains(&notifier.value)
            {
                let list = known.iter().cloned().collect::<Vec<_>>().join(", ");
                let known = if list.is_empty() { "none are configured".to_string() } else { format!("known: {list}") };
                errors
                    .push(error(line_of(notifier), format!("{name}: unknown notifier {:?} ({known})", notifier.value)));
            }
        }
        let mut labels = Vec::new();
        let mut annotations = Vec::new();
        for (kind, entries, names) in
            [("labels", &rule.labels, &mut labels), ("annotations", &rule.annotations, &mut annotations)]
        {
            for (key, template) in entries {
                let template_name = template_name(name, kind, key);
                match self.templates.add_template_owned(template_name.clone(), template.value.clone()) {
                    Ok(()) => {
                        names.push(key.clone());
                        let Some(variables) = &template_variables else { continue };
                        let variables: Vec<&str> = variables.iter().map(String::as_str).collect();
                        for problem in crate::template::template_problems(&self.templates, &template_name, &variables) {
                            errors.push(error(line_of(template), format!("{name}: {kind}.{key}: {problem}")));
                        }
                    }
                    Err(e) => errors.push(error(
                        line_of(template),
                        format!("{name}: {kind}.{key}: template error: {}", e.detail().unwrap_or(&e.to_string())),
                    )),
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let normalised = serde_json::to_vec(rule).expect("a rule spec serialises");
        Ok(Rule {
            name: name.to_string(),
            group: group.to_string(),
            file: file.to_string(),
            line,
            sha256: format!("{:x}", Sha256::digest(&normalised)),
            condition: condition.expect("no errors, so a condition"),
            pending_for: rule.pending_for.as_ref().map(|s| s.value).unwrap_or_default(),
            keep_firing_for: rule.keep_firing_for.as_ref().map(|s| s.value).unwrap_or_default(),
            cooldown,
            labels,
            annotations,
            notify: rule.notify.iter().map(|n| n.value.clone()).collect(),
        })
    }

    /// Plans an `expr`; also returns the problems [`super::lint`] finds in
    /// it (metric names no window produces).
    fn plan_expr(&self, sql: &str, schema: &DFSchema) -> Result<(Condition, Vec<String>), String> {
        check_sql_length(sql)?;
        let explained = |message: String| explain_planning_error(sql, schema, message);
        let expr = self.context.parse_sql_expr(sql, schema).map_err(|e| explained(e.strip_backtrace()))?;
        let data_type = datafusion::logical_expr::ExprSchemable::get_type(&expr, schema)
            .map_err(|e| explained(e.strip_backtrace()))?;
        if data_type != datafusion::arrow::datatypes::DataType::Boolean {
            return Err(format!("must be a boolean condition, but it is {data_type}"));
        }
        let physical =
            self.context.create_physical_expr(expr.clone(), schema).map_err(|e| explained(e.strip_backtrace()))?;
        let problems = super::lint::expr_metric_problems(&expr);
        Ok((Condition::Expr { sql: sql.to_string(), physical, metrics: required_metrics(&expr) }, problems))
    }

    /// Plans a `query`; returns its result columns and the problems
    /// [`super::lint`] finds in it.
    fn plan_query(&self, sql: &str) -> Result<(Vec<String>, Vec<String>), String> {
        check_sql_length(sql)?;
        let schema = DFSchema::try_from(window_metrics_schema().as_ref().clone()).expect("window_metrics schema");
        let explained = |message: String| explain_planning_error(sql, &schema, message);
        let state = self.context.state();
        let runtime = tokio::runtime::Builder::new_current_thread().build().map_err(|e| e.to_string())?;
        runtime.block_on(async {
            let plan = state.create_logical_plan(sql).await.map_err(|e| explained(e.strip_backtrace()))?;
            if !matches!(
                plan,
                datafusion::logical_expr::LogicalPlan::Projection(_)
                    | datafusion::logical_expr::LogicalPlan::Sort(_)
                    | datafusion::logical_expr::LogicalPlan::Limit(_)
                    | datafusion::logical_expr::LogicalPlan::Distinct(_)
                    | datafusion::logical_expr::LogicalPlan::Aggregate(_)
                    | datafusion::logical_expr::LogicalPlan::Filter(_)
                    | datafusion::logical_expr::LogicalPlan::Union(_)
            ) {
                return Err("must be a SELECT query".to_string());
            }
            state.create_physical_plan(&plan).await.map_err(|e| explained(e.strip_backtrace()))?;
            let columns = plan.schema().fields().iter().map(|f| f.name().clone()).collect();
            Ok((columns, super::lint::plan_metric_problems(&plan)))
        })
    }

    /// Rules by name.
    pub fn rule(&self, name: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.name == name)
    }

    /// (name, sha256) of every rule, for telling changed rules on reload.
    pub fn hashes(&self) -> BTreeMap<String, String> {
        self.rules.iter().map(|r| (r.name.clone(), r.sha256.clone())).collect()
    }
}
