//! The mergeable summary of one categorical column in one window: exact
//! frequencies up to a cap of distinct values, the rest counted as
//! `__other__`, so memory stays bounded under hostile cardinality.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, StringArray};

/// Frequency table of one categorical column.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CategoricalSummary {
    pub missing: u64,
    /// Observations with a value (including those folded into `other`).
    pub count: u64,
    pub frequencies: HashMap<Arc<str>, u64, foldhash::fast::FixedState>,
    /// Observations of values beyond the cap of distinct values.
    pub other: u64,
}

impl CategoricalSummary {
    /// Adds one batch; at most `max_categories` distinct values are kept.
    /// Returns how many values were pooled into `other` by the cap.
    pub fn update(&mut self, values: &StringArray, max_categories: usize) -> u64 {
        let other_before = self.other;
        self.missing += values.null_count() as u64;
        self.count += (values.len() - values.null_count()) as u64;
        for value in values.iter().flatten() {
            if let Some(n) = self.frequencies.get_mut(value) {
                *n += 1;
            } else if self.frequencies.len() < max_categories {
                self.frequencies.insert(Arc::from(value), 1);
            } else {
                self.other += 1;
            }
        }
        self.other - other_before
    }

    pub fn add_missing(&mut self, count: u64) {
        self.missing += count;
    }

    /// Merges another summary (a partial state of the same window: another
    /// partition's, or another pane's), then applies the cap
    /// deterministically: when the union holds more than `max_categories`
    /// distinct values, the most frequent are kept (ties broken by the
    /// value) and the rest pooled into `other`. So merging two summaries
    /// gives the same whichever is merged into which, and merges equal one
    /// pass over all the events whenever the union of all the partials'
    /// values stays within the cap. A value pooled by one merge is not
    /// recovered by a later one, so once an intermediate union exceeds the
    /// cap, a chain of three or more merges can depend on its order; merge
    /// with no cap (`usize::MAX`) and cap once at the end
    /// ([`Self::apply_cap`]) for a result independent of the order.
    pub fn merge(&mut self, other: &CategoricalSummary, max_categories: usize) {
        self.missing += other.missing;
        self.count += other.count;
        self.other += other.other;
        for (value, n) in &other.frequencies {
            *self.frequencies.entry(value.clone()).or_default() += n;
        }
        self.apply_cap(max_categories);
    }

    /// Keeps the `max_categories` most frequent values (ties by value) and
    /// pools the rest into `other`.
    pub fn apply_cap(&mut self, max_categories: usize) {
        if self.frequencies.len() <= max_categories {
            return;
        }
        let mut ranked: Vec<(Arc<str>, u64)> = self.frequencies.drain().collect();
        ranked.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        for (value, n) in ranked.drain(max_categories..) {
            drop(value);
            self.other += n;
        }
        self.frequencies.extend(ranked);
    }
}
