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

use crate::text::suggestion;
use crate::window_metrics::METRIC_NAMES;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::closest;

    #[test]
    fn the_closest_metric_name_is_suggested_only_when_it_is_close() {
        assert_eq!(closest("accuracyy", METRIC_NAMES.iter().copied()), Some("accuracy"));
        assert_eq!(closest("PSI", METRIC_NAMES.iter().copied()), Some("psi"));
        assert_eq!(closest("throughput", METRIC_NAMES.iter().copied()), None);
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
