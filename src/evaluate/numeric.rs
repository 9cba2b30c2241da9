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
        let mut rng = crate::rng::Rng::new(7);
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

/// What a [`NumericSummary`] is made of, for checkpoints and partial
/// windows (`window/partial.rs`): the accumulators' states (count, mean,
/// M2, min, max), the exact values (while there are at most
/// [`EXACT_QUANTILE_LIMIT`]; the sketch is then empty) or the sketch.
/// [`NumericSummary::from_parts`] rebuilds a summary that continues bit
/// for bit as the original would.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NumericParts {
    pub missing: u64,
    pub count: u64,
    pub mean: f64,
    pub m2: f64,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub exact: Option<Vec<f64>>,
    pub sketch: QuantileSketch,
}

type NumericSummaryState = NumericParts;

impl NumericSummary {
    /// The summary's parts (see [`NumericParts`]).
    pub fn to_parts(&self) -> NumericParts {
        self.to_state()
    }

    /// A summary from its parts, continuing bit for bit as the one they
    /// were taken from. Parts read from elsewhere are checked first: the
    /// exact values number `count` (at most [`EXACT_QUANTILE_LIMIT`]), are
    /// finite and lie within [min, max], the sketch's buckets are valid,
    /// and an empty summary has no extremes.
    pub fn from_parts(parts: NumericParts) -> Result<NumericSummary, String> {
        parts.sketch.validate()?;
        if let Some(exact) = &parts.exact {
            if exact.len() as u64 != parts.count || exact.len() > EXACT_QUANTILE_LIMIT {
                return Err(format!(
                    "{} exact values for a count of {} (at most {EXACT_QUANTILE_LIMIT} are kept exactly)",
                    exact.len(),
                    parts.count
                ));
            }
            let outside = |v: &f64| parts.min.is_some_and(|m| *v < m) || parts.max.is_some_and(|m| *v > m);
            if exact.iter().any(|v| !v.is_finite() || outside(v)) {
                return Err("an exact value is not finite or lies outside [min, max]".to_string());
            }
            if parts.sketch.count() > 0 {
                return Err("both exact values and a sketch".to_string());
            }
        } else if parts.sketch.count() != parts.count {
            return Err(format!("a sketch of {} values for a count of {}", parts.sketch.count(), parts.count));
        }
        let finite = [Some(parts.mean), Some(parts.m2), parts.min, parts.max].into_iter().flatten().all(f64::is_finite);
        if !finite || parts.m2 < 0.0 {
            return Err("mean, m2, min and max must be finite, m2 not negative".to_string());
        }
        if (parts.count == 0) != (parts.min.is_none() && parts.max.is_none())
            || parts.min.is_none() != parts.max.is_none()
        {
            return Err(format!("a count of {} with min {:?} and max {:?}", parts.count, parts.min, parts.max));
        }
        NumericSummary::from_state(parts).map_err(|e| e.to_string())
    }

    fn to_state(&self) -> NumericSummaryState {
        NumericSummaryState {
            missing: self.missing,
            count: self.moments.get_count(),
            mean: self.moments.get_mean(),
            m2: self.moments.get_m2(),
            min: self.min.clone().evaluate().ok().and_then(scalar_f64),
            max: self.max.clone().evaluate().ok().and_then(scalar_f64),
            exact: self.exact.clone(),
            sketch: self.sketch.clone(),
        }
    }
}

impl serde::Serialize for NumericSummary {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_state().serialize(serializer)
    }
}

/// A copy that continues bit for bit as the original would (a hopping
/// window's pane is merged into each window it belongs to).
impl Clone for NumericSummary {
    fn clone(&self) -> Self {
        NumericSummary::from_state(self.to_state()).expect("a summary's own state is valid")
    }
}

/// Candidates within a few ulps of `x`: x, x+1ulp, x−1ulp, x+2ulp, ...
fn near(x: f64) -> impl Iterator<Item = f64> {
    (0..33i64).map(move |step| {
        let ulps = (step + 1) / 2 * if step % 2 == 1 { 1 } else { -1 };
        f64::from_bits((x.to_bits() as i64 + ulps) as u64)
    })
}

/// The states to merge into an empty `VarianceAccumulator` so that it ends
/// with exactly (`count`, `mean`, `m2`), bit for bit: DataFusion's merge
/// computes the mean as `c · n / n`, which does not always round back to
/// `c`. Tries one state (n, c, m2), then pairs (k, c, 0) and (n − k, c, m2)
/// for k a power of two (merged alone, k·c/k is exact; equal means keep M2
/// exact), for `c` within a few ulps of `mean`. Falls back to (n, mean,
/// m2): a mean off by an ulp.
fn moments_states(count: u64, mean: f64, m2: f64) -> Vec<(u64, f64, f64)> {
    let n = count as f64;
    if let Some(c) = near(mean).find(|c| c * n / n == mean) {
        return vec![(count, c, m2)];
    }
    let mut k = 1u64;
    while k < count {
        let (first, rest) = (k as f64, (count - k) as f64);
        if let Some(c) = near(mean).find(|c| c * first / n + c * rest / n == mean) {
            return vec![(k, c, 0.0), (count - k, c, m2)];
        }
        k *= 2;
    }
    vec![(count, mean, m2)]
}

impl<'de> serde::Deserialize<'de> for NumericSummary {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<NumericSummary, D::Error> {
        let state = NumericSummaryState::deserialize(deserializer)?;
        NumericSummary::from_state(state).map_err(serde::de::Error::custom)
    }
}

impl NumericSummary {
    fn from_state(state: NumericSummaryState) -> datafusion::error::Result<NumericSummary> {
        use datafusion::arrow::array::UInt64Array;
        let mut summary = NumericSummary::new();
        summary.missing = state.missing;
        if state.count > 0 {
            for (count, mean, m2) in moments_states(state.count, state.mean, state.m2) {
                let moments: Vec<ArrayRef> = vec![
                    Arc::new(UInt64Array::from(vec![count])),
                    Arc::new(Float64Array::from(vec![mean])),
                    Arc::new(Float64Array::from(vec![m2])),
                ];
                summary.moments.merge_batch(&moments)?;
            }
        }
        for (accumulator, value) in [
            (&mut summary.min as &mut dyn Accumulator, state.min),
            (&mut summary.max as &mut dyn Accumulator, state.max),
        ] {
            if let Some(value) = value {
                let array: ArrayRef = Arc::new(Float64Array::from(vec![value]));
                accumulator.merge_batch(&[array])?;
            }
        }
        summary.exact = state.exact;
        summary.sketch = state.sketch;
        Ok(summary)
    }
}

#[cfg(test)]
mod checkpoint_tests {
    use super::*;

    #[test]
    fn a_restored_summary_continues_bit_for_bit() {
        let first = Float64Array::from(vec![0.1, 2.7, -3.3, 1e-3, 42.0, f64::NAN.min(1.0)]);
        let second = Float64Array::from((0..3000).map(|i| (i as f64 * 0.37).sin() * 10.0).collect::<Vec<_>>());
        let mut original = NumericSummary::new();
        original.update(&first);
        original.add_missing(3);
        let bytes = rmp_serde::to_vec_named(&original).unwrap();
        let mut restored: NumericSummary = rmp_serde::from_slice(&bytes).unwrap();
        original.update(&second);
        restored.update(&second);
        assert_eq!(original.count(), restored.count());
        assert_eq!(original.missing, restored.missing);
        assert_eq!(original.mean().unwrap().to_bits(), restored.mean().unwrap().to_bits());
        assert_eq!(original.m2().to_bits(), restored.m2().to_bits());
        assert_eq!(original.min(), restored.min());
        assert_eq!(original.max(), restored.max());
        assert_eq!(original.quantile(0.95), restored.quantile(0.95));
        assert_eq!(original.to_sketch(), restored.to_sketch());
    }

    #[test]
    fn restored_moments_are_bit_exact() {
        let mut inexact = 0;
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..20_000u64 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let mean = (state >> 11) as f64 / (1u64 << 53) as f64 * 200.0 - 100.0;
            let count = 1 + (state % 5000) + if i % 3 == 0 { 1_000_000 } else { 0 };
            let m2 = (state >> 20) as f64 * 1e-3;
            let mut moments = VarianceAccumulator::try_new(StatsType::Sample).unwrap();
            for (n, c, m) in moments_states(count, mean, m2) {
                let arrays: Vec<ArrayRef> = vec![
                    Arc::new(datafusion::arrow::array::UInt64Array::from(vec![n])),
                    Arc::new(Float64Array::from(vec![c])),
                    Arc::new(Float64Array::from(vec![m])),
                ];
                moments.merge_batch(&arrays).unwrap();
            }
            assert_eq!(moments.get_count(), count);
            assert_eq!(moments.get_m2().to_bits(), m2.to_bits());
            if moments.get_mean().to_bits() != mean.to_bits() {
                inexact += 1;
            }
        }
        assert_eq!(inexact, 0, "means not restored exactly out of 20,000");
    }
}
