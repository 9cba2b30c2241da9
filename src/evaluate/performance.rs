//! Model performance once labels have joined their predictions: a confusion
//! matrix for classification, error sums for regression. Both are plain
//! sums, so they merge by addition.

use std::collections::BTreeMap;

use crate::model::ClassId;

/// What a joined (prediction, label) pair looks like.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    Class { predicted: ClassId, actual: ClassId },
    Value { predicted: f64, actual: f64 },
}

/// Performance accumulators of one window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PerformanceState {
    pub labeled: u64,
    /// (predicted, actual) → count.
    pub confusion: BTreeMap<(ClassId, ClassId), u64>,
    pub abs_error_sum: f64,
    pub squared_error_sum: f64,
    /// Sum of |error / actual| over labels that are not zero, and their count.
    pub abs_pct_error_sum: f64,
    pub pct_count: u64,
    /// Mean and sum of squared deviations of the actual values (Welford),
    /// for R²'s total sum of squares without cancellation.
    pub actual_mean: f64,
    pub actual_m2: f64,
}

impl PerformanceState {
    pub fn add(&mut self, outcome: Outcome) {
        self.labeled += 1;
        match outcome {
            Outcome::Class { predicted, actual } => *self.confusion.entry((predicted, actual)).or_default() += 1,
            Outcome::Value { predicted, actual } => {
                let error = predicted - actual;
                self.abs_error_sum += error.abs();
                self.squared_error_sum += error * error;
                if actual != 0.0 {
                    self.abs_pct_error_sum += (error / actual).abs();
                    self.pct_count += 1;
                }
                let delta = actual - self.actual_mean;
                self.actual_mean += delta / self.labeled as f64;
                self.actual_m2 += delta * (actual - self.actual_mean);
            }
        }
    }

    pub fn merge(&mut self, other: &PerformanceState) {
        if other.labeled == 0 {
            return;
        }
        let (n1, n2) = (self.labeled as f64, other.labeled as f64);
        let delta = other.actual_mean - self.actual_mean;
        self.actual_mean += delta * n2 / (n1 + n2);
        self.actual_m2 += other.actual_m2 + delta * delta * n1 * n2 / (n1 + n2);
        self.labeled += other.labeled;
        for (k, v) in &other.confusion {
            *self.confusion.entry(*k).or_default() += v;
        }
        self.abs_error_sum += other.abs_error_sum;
        self.squared_error_sum += other.squared_error_sum;
        self.abs_pct_error_sum += other.abs_pct_error_sum;
        self.pct_count += other.pct_count;
    }

    /// Share of pairs whose predicted class equals the actual one.
    pub fn accuracy(&self) -> Option<f64> {
        let total: u64 = self.confusion.values().sum();
        let correct: u64 = self.confusion.iter().filter(|((p, a), _)| p == a).map(|(_, n)| n).sum();
        (total > 0).then(|| correct as f64 / total as f64)
    }

    /// (true positives, false positives, false negatives) for `positive`.
    pub fn binary_counts(&self, positive: ClassId) -> (u64, u64, u64) {
        let mut tp = 0;
        let mut fp = 0;
        let mut fn_ = 0;
        for (&(p, a), &n) in &self.confusion {
            match (p == positive, a == positive) {
                (true, true) => tp += n,
                (true, false) => fp += n,
                (false, true) => fn_ += n,
                (false, false) => {}
            }
        }
        (tp, fp, fn_)
    }

    pub fn mae(&self) -> Option<f64> {
        (self.labeled > 0 && self.confusion.is_empty()).then(|| self.abs_error_sum / self.labeled as f64)
    }

    pub fn rmse(&self) -> Option<f64> {
        (self.labeled > 0 && self.confusion.is_empty()).then(|| (self.squared_error_sum / self.labeled as f64).sqrt())
    }

    /// Mean absolute percentage error as a fraction (not × 100), over
    /// non-zero labels.
    pub fn mape(&self) -> Option<f64> {
        (self.pct_count > 0).then(|| self.abs_pct_error_sum / self.pct_count as f64)
    }

    /// Coefficient of determination, 1 − SS_res / SS_tot.
    pub fn r2(&self) -> Option<f64> {
        if self.labeled < 2 || !self.confusion.is_empty() {
            return None;
        }
        let ss_tot = self.actual_m2;
        (ss_tot > 0.0).then(|| 1.0 - self.squared_error_sum / ss_tot)
    }
}
