//! The mergeable summary of one numeric column in one window, built from
//! DataFusion's own aggregate accumulators (`VarianceAccumulator` for count,
//! mean and M2 by Welford's method, `MinAccumulator`/`MaxAccumulator`) plus a
//! quantile sketch. Quantiles are exact (numpy's linear interpolation) while
//! a window holds at most [`EXACT_QUANTILE_LIMIT`] values, and come from the
//! relative-error [`QuantileSketch`] beyond that. Memory is bounded per
//! window whatever its event count.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, Float64Array};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::functions_aggregate::min_max::{MaxAccumulator, MinAccumulator};
use datafusion::functions_aggregate::variance::VarianceAccumulator;
use datafusion::logical_expr::Accumulator;
use datafusion_functions_aggregate_common::stats::StatsType;

use super::sketch::QuantileSketch;

/// Up to this many values per window are kept as they are, so small
/// windows get exact quantiles; beyond it they move into the sketch.
pub const EXACT_QUANTILE_LIMIT: usize = 1024;

/// Count, missing, moments, extremes and a quantile sketch of one column.
#[derive(Debug)]
pub struct NumericSummary {
    /// Null (absent, `null` or wrongly typed) observations.
    pub missing: u64,
    moments: VarianceAccumulator,
    min: MinAccumulator,
    max: MaxAccumulator,
    /// The values themselves while there are at most `EXACT_QUANTILE_LIMIT`.
    exact: Option<Vec<f64>>,
    sketch: QuantileSketch,
}

/// numpy's default (`linear`) percentile of sorted values.
pub fn linear_quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let position = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let lower = position.floor() as usize;
    let upper = position.ceil() as usize;
    let fraction = position - lower as f64;
    Some(sorted[lower] + (sorted[upper] - sorted[lower]) * fraction)
}

impl Default for NumericSummary {
    fn default() -> Self {
        Self::new()
    }
}

fn scalar_f64(value: ScalarValue) -> Option<f64> {
    match value {
        ScalarValue::Float64(v) => v,
        _ => None,
    }
}

fn add_all(sketch: &mut QuantileSketch, values: &Float64Array) {
    if values.null_count() == 0 {
        for &value in values.values() {
            sketch.add(value);
        }
    } else {
        for value in values.iter().flatten() {
            sketch.add(value);
        }
    }
}

impl NumericSummary {
    pub fn new() -> Self {
        NumericSummary {
            missing: 0,
            moments: VarianceAccumulator::try_new(StatsType::Sample).expect("infallible"),
            min: MinAccumulator::try_new(&DataType::Float64).expect("Float64 is supported"),
            max: MaxAccumulator::try_new(&DataType::Float64).expect("Float64 is supported"),
            exact: Some(Vec::new()),
            sketch: QuantileSketch::default(),
        }
    }

    /// Adds one batch of values; nulls count as missing.
    pub fn update(&mut self, values: &Float64Array) {
        self.missing += values.null_count() as u64;
        if values.null_count() == values.len() {
            return;
        }
        let array: ArrayRef = Arc::new(values.clone());
        let batch = std::slice::from_ref(&array);
        // These accumulators cannot fail on a Float64 array.
        let _ = self.moments.update_batch(batch);
        let _ = self.min.update_batch(batch);
        let _ = self.max.update_batch(batch);
        match &mut self.exact {
            Some(exact) if exact.len() + values.len() - values.null_count() <= EXACT_QUANTILE_LIMIT => {
                exact.extend(values.iter().flatten());
            }
            Some(exact) => {
                // Too many for exact: everything moves into the sketch.
                for value in exact.drain(..) {
                    self.sketch.add(value);
                }
                self.exact = None;
                add_all(&mut self.sketch, values);
            }
            None => add_all(&mut self.sketch, values),
        }
    }

    /// Adds `count` missing observations (e.g. rows where the feature was absent).
    pub fn add_missing(&mut self, count: u64) {
        self.missing += count;
    }

    /// Merges another window's (or partition's) summary into this one through
    /// the accumulators' `state`/`merge_batch`, exactly as DataFusion merges
    /// partial aggregates.
    pub fn merge(&mut self, other: &mut NumericSummary) {
        self.missing += other.missing;
        for (into, from) in [
            (&mut self.moments as &mut dyn Accumulator, &mut other.moments as &mut dyn Accumulator),
            (&mut self.min, &mut other.min),
            (&mut self.max, &mut other.max),
        ] {
            let state: Vec<ArrayRef> = from
                .state()
                .expect("state of an in-memory accumulator")
                .into_iter()
                .map(|s| s.to_array().expect("scalar to array"))
                .collect();
            into.merge_batch(&state).expect("merge of matching state");
        }
        match (&mut self.exact, &other.exact) {
            (Some(mine), Some(theirs)) if mine.len() + theirs.len() <= EXACT_QUANTILE_LIMIT => {
                mine.extend_from_slice(theirs);
            }
            _ => {
                for value in self.exact.take().into_iter().flatten() {
                    self.sketch.add(value);
                }
                for &value in other.exact.iter().flatten() {
                    self.sketch.add(value);
                }
                self.sketch.merge(&other.sketch);
            }
        }
    }

    /// Non-null observations.
    pub fn count(&self) -> u64 {
        self.moments.get_count()
    }

    pub fn mean(&self) -> Option<f64> {
        (self.count() > 0).then(|| self.moments.get_mean())
    }

    /// Sample standard deviation (n − 1 in the denominator, as pandas).
    pub fn std(&mut self) -> Option<f64> {
        scalar_f64(self.moments.evaluate().ok()?).map(f64::sqrt)
    }

    /// Sum of squared deviations from the mean (Welford's M2).
    pub fn m2(&self) -> f64 {
        self.moments.get_m2()
    }

    pub fn min(&mut self) -> Option<f64> {
        scalar_f64(self.min.evaluate().ok()?)
    }

    pub fn max(&mut self) -> Option<f64> {
        scalar_f64(self.max.evaluate().ok()?)
    }

    /// Quantile `q`: exact (numpy's linear interpolation) for windows of at
    /// most [`EXACT_QUANTILE_LIMIT`] values, from the sketch (within 0.4%)
    /// beyond.
    pub fn quantile(&mut self, q: f64) -> Option<f64> {
        if self.count() == 0 {
            return None;
        }
        match &mut self.exact {
            Some(values) => {
                values.sort_unstable_by(f64::total_cmp);
                linear_quantile(values, q)
            }
            None => self.sketch.quantile(q),
        }
    }

    /// The window's values as a sketch (built from the exact values while
    /// the window is small).
    pub fn to_sketch(&self) -> QuantileSketch {
        match &self.exact {
            Some(values) => {
                let mut sketch = QuantileSketch::default();
                values.iter().for_each(|&v| sketch.add(v));
                sketch
            }
            None => self.sketch.clone(),
        }
    }

    /// The exact values, while the window holds at most
    /// [`EXACT_QUANTILE_LIMIT`] of them.
    pub fn exact_values(&self) -> Option<&[f64]> {
        self.exact.as_deref()
    }

    /// Whether quantiles are exact (the window is small enough).
    pub fn is_exact(&self) -> bool {
        self.exact.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_equals_one_pass() {
        let values: Vec<f64> = (0..1000).map(|i| ((i * 7919) % 1000) as f64 / 10.0).collect();
        let mut whole = NumericSummary::new();
        whole.update(&Float64Array::from(values.clone()));
        let mut left = NumericSummary::new();
        let mut right = NumericSummary::new();
        left.update(&Float64Array::from(values[..300].to_vec()));
        right.update(&Float64Array::from(values[300..].to_vec()));
        left.merge(&mut right);
        assert_eq!(left.count(), whole.count());
        assert!((left.mean().unwrap() - whole.mean().unwrap()).abs() < 1e-9);
        assert!((left.std().unwrap() - whole.std().unwrap()).abs() < 1e-9);
        assert_eq!(left.min(), whole.min());
        assert_eq!(left.max(), whole.max());
        assert!((left.quantile(0.5).unwrap() - 50.0).abs() < 1.0);
        assert_eq!(left.quantile(0.5), whole.quantile(0.5));
    }

    #[test]
    fn small_windows_have_exact_numpy_quantiles() {
        let mut s = NumericSummary::new();
        s.update(&Float64Array::from(vec![5.0, 1.0, 4.0]));
        s.update(&Float64Array::from(vec![2.0, 3.0]));
        // numpy.percentile([1, 2, 3, 4, 5], [50, 95, 99]) = 3, 4.8, 4.96
        assert_eq!(s.quantile(0.5), Some(3.0));
        assert!((s.quantile(0.95).unwrap() - 4.8).abs() < 1e-12);
        assert!((s.quantile(0.99).unwrap() - 4.96).abs() < 1e-12);
        assert!(s.is_exact());
    }

    /// Large windows use the sketch: within 1% of numpy's value on skewed
    /// (lognormal) data.
    #[test]
    fn large_windows_use_the_sketch_within_its_error_bound() {
        let mut rng = crate::simulate::Rng::new(7);
        let values: Vec<f64> = (0..200_000).map(|_| (1.0 + 0.8 * rng.normal()).exp()).collect();
        let mut s = NumericSummary::new();
        for chunk in values.chunks(8192) {
            s.update(&Float64Array::from(chunk.to_vec()));
        }
        assert!(!s.is_exact());
        let mut sorted = values.clone();
        sorted.sort_unstable_by(f64::total_cmp);
        for q in [0.5, 0.95, 0.99] {
            let exact = linear_quantile(&sorted, q).unwrap();
            let estimate = s.quantile(q).unwrap();
            let relative = (estimate - exact).abs() / exact;
            assert!(relative < 0.01, "q{q}: sketch {estimate} vs exact {exact} ({relative})");
        }
    }

    #[test]
    fn nulls_are_missing_not_values() {
        let mut s = NumericSummary::new();
        s.update(&Float64Array::from(vec![Some(1.0), None, Some(3.0)]));
        assert_eq!((s.count(), s.missing), (2, 1));
        assert_eq!(s.mean(), Some(2.0));
        let mut empty = NumericSummary::new();
        empty.update(&Float64Array::from(vec![None, None]));
        assert_eq!((empty.count(), empty.missing, empty.mean()), (0, 2, None));
    }
}
