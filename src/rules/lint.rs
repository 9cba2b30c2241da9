//! Checks that catch, when rules load, what would otherwise fail or
//! silently never match at run time: metric names no window produces
//! (`metric = 'accuracyy'`, `metric = 'PSI'`), text written in double
//! quotes that SQL reads as a column name (`metric = "psi"`), and template
//! variables and filters that do not exist (they would render as nothing,
//! or as an error, in every notification).
//!
//! Each check returns readable problems (with the closest valid name when
//! there is one); `ruleset.rs` prefixes them with the rule and its line.

use std::collections::BTreeSet;

use datafusion::common::ScalarValue;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::logical_expr::{Expr, LogicalPlan, Operator};

use crate::output::METRIC_NAMES;

/// The filters MiniJinja ships, less the one-letter aliases `d` and `e`
/// (only used to suggest a name: whether a filter exists is asked of the
/// environment itself).
const BUILTIN_FILTERS: &[&str] = &[
    "abs",
    "attr",
    "batch",
    "bool",
    "capitalize",
    "chain",
    "count",
    "default",
    "dictsort",
    "escape",
    "first",
    "float",
    "format",
    "groupby",
    "indent",
    "int",
    "items",
    "join",
    "last",
    "length",
    "lines",
    "list",
    "lower",
    "map",
    "max",
    "min",
    "pprint",
    "reject",
    "rejectattr",
    "replace",
    "reverse",
    "round",
    "safe",
    "select",
    "selectattr",
    "slice",
    "sort",
    "split",
    "string",
    "sum",
    "title",
    "tojson",
    "trim",
    "unique",
    "upper",
    "zip",
];

/// The edit distance between two names (Levenshtein, on characters).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[b.len()]
}

/// The candidate closest to `name`, if it is close enough to be a likely
/// misspelling (same letters in another case, or a few edits away).
pub fn closest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let lower = name.to_lowercase();
    // Among equally distant names, one that contains the letters as typed
    // (`rnd` in `round`) is the likelier meaning.
    let contains_letters = |candidate: &str| {
        let mut letters = candidate.chars();
        lower.chars().all(|c| letters.any(|l| l == c))
    };
    let mut best: Option<((usize, bool), &str)> = None;
    for candidate in candidates {
        let score = (edit_distance(&lower, candidate), !contains_letters(candidate));
        if best.is_none_or(|(best_score, _)| score < best_score) {
            best = Some((score, candidate));
        }
    }
    let length = name.chars().count();
    let allowed = if length <= 2 { 1 } else { (length / 3).clamp(2, 3) };
    best.filter(|((distance, _), _)| *distance <= allowed).map(|(_, candidate)| candidate)
}

/// ` (did you mean 'x'?)`, or nothing when no name is close.
fn suggestion<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>, quote: char) -> String {
    match closest(name, candidates) {
        Some(candidate) => format!("; did you mean {quote}{candidate}{quote}?"),
        None => String::new(),
    }
}

/// The problem with comparing `metric` to `name`, if no window produces it.
fn unknown_metric(name: &str) -> Option<String> {
    if METRIC_NAMES.contains(&name) {
        return None;
    }
    let case = if METRIC_NAMES.contains(&name.to_lowercase().as_str()) { " (metric names are lower case)" } else { "" };
    Some(format!(
        "no window produces the metric '{name}'{case}, so this comparison never matches{}",
        suggestion(name, METRIC_NAMES.iter().copied(), '\'')
    ))
}

/// Whether `expr` is the `metric` column (possibly cast).
fn is_metric_column(expr: &Expr) -> bool {
    match expr {
        Expr::Column(column) => column.name == "metric",
        Expr::Cast(cast) => is_metric_column(&cast.expr),
        Expr::TryCast(cast) => is_metric_column(&cast.expr),
        _ => false,
    }
}

/// The text of a string literal.
fn text_literal(expr: &Expr) -> Option<&str> {
    match expr {
        Expr::Literal(
            ScalarValue::Utf8(Some(s)) | ScalarValue::Utf8View(Some(s)) | ScalarValue::LargeUtf8(Some(s)),
            _,
        ) => Some(s),
        Expr::Cast(cast) => text_literal(&cast.expr),
        _ => None,
    }
}

/// Adds to `names` every text `metric` is compared with (`=`, `<>`, `IN`)
/// anywhere in `expr`.
fn collect_metric_literals(expr: &Expr, names: &mut BTreeSet<String>) {
    let _ = expr.apply(|node| {
        match node {
            Expr::BinaryExpr(binary) if matches!(binary.op, Operator::Eq | Operator::NotEq) => {
                for (column, literal) in [(&binary.left, &binary.right), (&binary.right, &binary.left)] {
                    if is_metric_column(column)
                        && let Some(text) = text_literal(literal)
                    {
                        names.insert(text.to_string());
                    }
                }
            }
            Expr::InList(list) if is_metric_column(&list.expr) => {
                names.extend(list.list.iter().filter_map(text_literal).map(str::to_string));
            }
            _ => {}
        }
        Ok(TreeNodeRecursion::Continue)
    });
}

/// Problems with the metric names an `expr` compares `metric` with.
pub fn expr_metric_problems(expr: &Expr) -> Vec<String> {
    let mut names = BTreeSet::new();
    collect_metric_literals(expr, &mut names);
    names.iter().filter_map(|name| unknown_metric(name)).collect()
}

/// Problems with the metric names a query compares `metric` with, in any
/// of its clauses and subqueries.
pub fn plan_metric_problems(plan: &LogicalPlan) -> Vec<String> {
    let mut names = BTreeSet::new();
    let _ = plan.apply_with_subqueries(|node| {
        let _ = node.apply_expressions(|expr| {
            collect_metric_literals(expr, &mut names);
            Ok(TreeNodeRecursion::Continue)
        });
        Ok(TreeNodeRecursion::Continue)
    });
    names.iter().filter_map(|name| unknown_metric(name)).collect()
}

/// The texts written in double quotes in `sql` (outside single-quoted
/// strings): SQL reads them as column names.
fn double_quoted(sql: &str) -> Vec<&str> {
    let mut found = Vec::new();
    let mut rest = sql;
    loop {
        let Some(start) = rest.find(['\'', '"']) else { return found };
        let quote = &rest[start..start + 1];
        let after = &rest[start + 1..];
        let Some(end) = after.find(quote) else { return found };
        if quote == "\"" {
            found.push(&after[..end]);
        }
        rest = &after[end + 1..];
    }
}

/// When planning failed: a hint for each text in double quotes that is not
/// a column (`metric = "psi"` compares with a column named `psi`).
pub fn double_quote_hint(sql: &str, columns: &[&str]) -> Option<String> {
    let hints: Vec<String> = double_quoted(sql)
        .into_iter()
        .filter(|text| !columns.contains(text))
        .map(|text| format!("\"{text}\" is a column name in SQL (double quotes name columns); for the text, use single quotes: '{text}'"))
        .collect();
    if hints.is_empty() { None } else { Some(hints.join("; ")) }
}

/// The filter names a template's source applies (`{{ x | round(2) }}`,
/// `{% if a | length %}`), read from its tags with string literals
/// skipped.
fn filter_names(source: &str) -> BTreeSet<String> {
    let bytes = source.as_bytes();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let mut in_tag = false;
    let mut quote: Option<u8> = None;
    while i < bytes.len() {
        let byte = bytes[i];
        let next = bytes.get(i + 1).copied();
        if !in_tag {
            in_tag = byte == b'{' && matches!(next, Some(b'{' | b'%'));
            i += if in_tag { 2 } else { 1 };
            continue;
        }
        if let Some(q) = quote {
            if byte == b'\\' {
                i += 2;
                continue;
            }
            if byte == q {
                quote = None;
            }
            i += 1;
            continue;
        }
        match byte {
            b'\'' | b'"' => quote = Some(byte),
            b'}' | b'%' if next == Some(b'}') => {
                in_tag = false;
                i += 2;
                continue;
            }
            b'|' => {
                let start = i + 1 + bytes[i + 1..].iter().take_while(|b| b.is_ascii_whitespace()).count();
                let length = bytes[start..]
                    .iter()
                    .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_' || **b == b'.')
                    .count();
                if length > 0 {
                    names.insert(source[start..start + length].to_string());
                }
            }
            _ => {}
        }
        i += 1;
    }
    names
}

/// Problems with a compiled template of `environment`: variables that are
/// neither in `variables` nor globals, and filters the environment does
/// not have.
pub fn template_problems(
    environment: &minijinja::Environment<'_>,
    template_name: &str,
    variables: &[&str],
) -> Vec<String> {
    let Ok(template) = environment.get_template(template_name) else { return Vec::new() };
    compiled_template_problems(environment, &template, variables)
}

/// [`template_problems`] of a template already compiled in `environment`.
pub fn compiled_template_problems(
    environment: &minijinja::Environment<'_>,
    template: &minijinja::Template<'_, '_>,
    variables: &[&str],
) -> Vec<String> {
    let mut problems = Vec::new();
    let globals: Vec<&str> = environment.globals().map(|(name, _)| name).collect();
    let mut undeclared: Vec<String> = template.undeclared_variables(false).into_iter().collect();
    undeclared.sort();
    for name in undeclared {
        if variables.contains(&name.as_str()) || globals.contains(&name.as_str()) {
            continue;
        }
        problems.push(format!(
            "unknown variable `{name}`: it would render as nothing{} (the variables are {})",
            suggestion(&name, variables.iter().copied(), '`'),
            variables.join(", ")
        ));
    }
    for name in filter_names(template.source()) {
        // Applying the filter to nothing tells whether it exists: only an
        // unknown one fails with `UnknownFilter` (others may complain
        // about their arguments).
        let probe = environment.render_str(&format!("{{{{ none | {name} }}}}"), ());
        if probe.is_err_and(|e| e.kind() == minijinja::ErrorKind::UnknownFilter) {
            problems
                .push(format!("unknown filter `{name}`{}", suggestion(&name, BUILTIN_FILTERS.iter().copied(), '`')));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_closest_name_is_suggested_only_when_it_is_close() {
        assert_eq!(closest("accuracyy", METRIC_NAMES.iter().copied()), Some("accuracy"));
        assert_eq!(closest("PSI", METRIC_NAMES.iter().copied()), Some("psi"));
        assert_eq!(closest("featur", ["model", "feature"]), Some("feature"));
        assert_eq!(closest("rnd", BUILTIN_FILTERS.iter().copied()), Some("round"));
        assert_eq!(closest("throughput", METRIC_NAMES.iter().copied()), None);
    }

    #[test]
    fn filters_are_read_from_tags_only_and_outside_strings() {
        let names = filter_names("a | b {{ x | round(3) }} {% if y|lengthh %}{{ '|not' ~ z |  upper }}{% endif %}");
        assert_eq!(names.into_iter().collect::<Vec<_>>(), ["lengthh", "round", "upper"]);
    }

    #[test]
    fn double_quoted_text_outside_strings_is_found() {
        assert_eq!(double_quoted("metric = \"psi\" AND x = 'a\"b\"' AND \"value\" > 1"), ["psi", "value"]);
        let hint = double_quote_hint("metric = \"psi\" AND \"value\" > 1", &["metric", "value"]).unwrap();
        assert_eq!(
            hint,
            "\"psi\" is a column name in SQL (double quotes name columns); for the text, use single quotes: 'psi'"
        );
    }
}
