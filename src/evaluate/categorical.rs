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

    /// Merges another summary; the cap still applies.
    pub fn merge(&mut self, other: &CategoricalSummary, max_categories: usize) {
        self.missing += other.missing;
        self.count += other.count;
        self.other += other.other;
        for (value, n) in &other.frequencies {
            if let Some(mine) = self.frequencies.get_mut(value) {
                *mine += n;
            } else if self.frequencies.len() < max_categories {
                self.frequencies.insert(value.clone(), *n);
            } else {
                self.other += n;
            }
        }
    }
}
