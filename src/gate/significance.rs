//! Whether the difference between the old and the new model is
//! significant (docs/GATE.md).
//!
//! * Accuracy on the same rows (paired by `event_id`): McNemar's exact
//!   test, the two-sided binomial test of the discordant pairs, as
//!   statsmodels' `mcnemar(table, exact=True)` and scipy's
//!   `binomtest(min(b, c), b + c, 0.5)`.
//! * Every other metric: a 95% percentile bootstrap interval of new − old,
//!   paired (both models' rows resampled together) when the rows are the
//!   same, unpaired (each side resampled on its own) otherwise. Resamples
//!   draw row indices with SplitMix64 from the given seed, so the interval
//!   is reproducible; `tests/fixtures/gate/generate.py` repeats the draws
//!   with numpy.
//! * Against a baseline profile, accuracy only: the two-sided pooled
//!   two-proportion z-test (the profile records its accuracy and labelled
//!   count, not its rows).

use std::collections::BTreeMap;

use serde::Serialize;
use statrs::function::factorial::ln_binomial;

use super::Metric;
use super::sample::EvaluationSample;

/// The significance level: p-values below it, and intervals at 1 − it
/// that exclude zero, are significant.
pub const ALPHA: f64 = 0.05;

/// Default bootstrap resamples.
pub const DEFAULT_RESAMPLES: usize = 1000;
/// Default bootstrap seed.
pub const DEFAULT_SEED: u64 = 1;

/// The test of one metric's difference and its outcome.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum Significance {
    /// McNemar's exact test: `old_only` rows the old model got right and
    /// the new one wrong, `new_only` the reverse.
    Mcnemar { old_only: u64, new_only: u64, p_value: f64, significant: bool },
    /// A 95% percentile bootstrap interval of new − old.
    Bootstrap { low: f64, high: f64, resamples: usize, paired: bool, seed: u64, significant: bool },
    /// The two-sided two-proportion z-test against a baseline's accuracy.
    TwoProportionZ { z: f64, p_value: f64, significant: bool },
}

impl Significance {
    pub fn significant(&self) -> bool {
        match self {
            Significance::Mcnemar { significant, .. }
            | Significance::Bootstrap { significant, .. }
            | Significance::TwoProportionZ { significant, .. } => *significant,
        }
    }
}

/// McNemar's exact two-sided p-value: `min(1, 2 · P(X ≤ min(b, c)))` with
/// `X ~ Binomial(b + c, ½)`; 1 when there are no discordant pairs.
pub fn mcnemar_exact(old_only: u64, new_only: u64) -> f64 {
    let n = old_only + new_only;
    let k = old_only.min(new_only);
    if n == 0 || 2 * k == n {
        return 1.0;
    }
    // The largest term is at k (k < n/2); earlier ones follow by the ratio
    // C(n, i-1) / C(n, i) = i / (n - i + 1), summed from the largest down.
    let mut term = (ln_binomial(n, k) - n as f64 * std::f64::consts::LN_2).exp();
    let mut sum = 0.0;
    let mut i = k;
    loop {
        sum += term;
        if i == 0 || term < sum * 1e-17 {
            break;
        }
        term *= i as f64 / (n - i + 1) as f64;
        i -= 1;
    }
    (2.0 * sum).min(1.0)
}

/// McNemar's test of the accuracy of two models on the same rows.
pub fn mcnemar(old_correct: &[bool], new_correct: &[bool]) -> Significance {
    assert_eq!(old_correct.len(), new_correct.len(), "paired rows");
    let old_only = old_correct.iter().zip(new_correct).filter(|(o, n)| **o && !**n).count() as u64;
    let new_only = old_correct.iter().zip(new_correct).filter(|(o, n)| !**o && **n).count() as u64;
    let p_value = mcnemar_exact(old_only, new_only);
    Significance::Mcnemar { old_only, new_only, p_value, significant: p_value < ALPHA }
}

/// The two-sided pooled two-proportion z-test of the new accuracy against
/// a baseline's (`crate::stats::two_proportion_z_test`, both tails).
pub fn accuracy_against_baseline(baseline: (u64, u64), new: (u64, u64)) -> Option<Significance> {
    let (z, lower_tail) = crate::stats::two_proportion_z_test(baseline.0, baseline.1, new.0, new.1);
    if !z.is_finite() {
        return None;
    }
    let p_value = (2.0 * lower_tail.min(1.0 - lower_tail)).min(1.0);
    Some(Significance::TwoProportionZ { z, p_value, significant: p_value < ALPHA })
}

/// How many resamples and from which seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootstrapOptions {
    pub resamples: usize,
    pub seed: u64,
}

impl Default for BootstrapOptions {
    fn default() -> Self {
        BootstrapOptions { resamples: DEFAULT_RESAMPLES, seed: DEFAULT_SEED }
    }
}

/// A row index in `0..rows` from one 64-bit draw (multiply-shift).
fn draw_index(rng: &mut crate::rng::Rng, rows: usize) -> usize {
    ((u128::from(rng.next_u64()) * rows as u128) >> 64) as usize
}

/// Resample multiplicities: `rows` draws with replacement.
fn resample(rng: &mut crate::rng::Rng, rows: usize, weights: &mut [u32]) {
    weights.iter_mut().for_each(|w| *w = 0);
    for _ in 0..rows {
        weights[draw_index(rng, rows)] += 1;
    }
}

/// Percentile bootstrap intervals of new − old for each of `metrics`.
/// Paired: `old` and `new` hold the same rows in the same order, and each
/// resample draws one set of rows for both; unpaired: each resample draws
/// the old rows, then the new rows. A resample on which a side does not
/// define the metric is left out of that metric's interval; a metric with
/// no usable resample gets none.
pub fn bootstrap(
    old: &EvaluationSample,
    new: &EvaluationSample,
    paired: bool,
    metrics: &[Metric],
    options: BootstrapOptions,
) -> BTreeMap<Metric, Significance> {
    if paired {
        assert_eq!(old.len(), new.len(), "paired samples hold the same rows");
    }
    let mut rng = crate::rng::Rng::new(options.seed);
    let mut differences: Vec<Vec<f64>> = vec![Vec::with_capacity(options.resamples); metrics.len()];
    let mut old_weights = vec![0u32; old.len()];
    let mut new_weights = vec![0u32; new.len()];
    if old.is_empty() || new.is_empty() {
        return BTreeMap::new();
    }
    for _ in 0..options.resamples {
        resample(&mut rng, old.len(), &mut old_weights);
        if paired {
            new_weights.copy_from_slice(&old_weights);
        } else {
            resample(&mut rng, new.len(), &mut new_weights);
        }
        for (metric, differences) in metrics.iter().zip(&mut differences) {
            if let (Some(o), Some(n)) = (old.metric(*metric, &old_weights), new.metric(*metric, &new_weights)) {
                differences.push(n - o);
            }
        }
    }
    let mut intervals = BTreeMap::new();
    for (metric, mut differences) in metrics.iter().zip(differences) {
        if differences.is_empty() {
            continue;
        }
        differences.sort_by(f64::total_cmp);
        let low = percentile_sorted(&differences, 100.0 * ALPHA / 2.0);
        let high = percentile_sorted(&differences, 100.0 * (1.0 - ALPHA / 2.0));
        let significant = low > 0.0 || high < 0.0;
        intervals.insert(
            *metric,
            Significance::Bootstrap {
                low,
                high,
                resamples: options.resamples,
                paired,
                seed: options.seed,
                significant,
            },
        );
    }
    intervals
}

/// numpy's `percentile` (linear interpolation) of sorted values.
fn percentile_sorted(sorted: &[f64], percent: f64) -> f64 {
    let rank = percent / 100.0 * (sorted.len() - 1) as f64;
    let below = rank.floor() as usize;
    let above = (below + 1).min(sorted.len() - 1);
    sorted[below] + (rank - below as f64) * (sorted[above] - sorted[below])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mcnemar_exact_matches_the_binomial_test() {
        // scipy.stats.binomtest(1, 10, 0.5).pvalue = 22/1024
        assert!((mcnemar_exact(1, 9) - 22.0 / 1024.0).abs() < 1e-15);
        assert!((mcnemar_exact(9, 1) - 22.0 / 1024.0).abs() < 1e-15);
        assert_eq!(mcnemar_exact(0, 0), 1.0);
        assert_eq!(mcnemar_exact(5, 5), 1.0);
        // binomtest(0, 3) = 2/8
        assert!((mcnemar_exact(0, 3) - 0.25).abs() < 1e-15);
        assert!(mcnemar_exact(0, 2000) < 1e-300);
    }

    #[test]
    fn percentiles_interpolate_like_numpy() {
        // numpy.percentile([1, 2, 3, 4], [2.5, 97.5]) = [1.075, 3.925]
        assert!((percentile_sorted(&[1.0, 2.0, 3.0, 4.0], 2.5) - 1.075).abs() < 1e-12);
        assert!((percentile_sorted(&[1.0, 2.0, 3.0, 4.0], 97.5) - 3.925).abs() < 1e-12);
        assert_eq!(percentile_sorted(&[7.0], 97.5), 7.0);
    }
}
