//! One-sided two-proportion z-test for "window worse than baseline".

use statrs::distribution::{ContinuousCDF, Normal};

/// Pooled two-proportion z-test that the window's success rate is **lower**
/// than the baseline's. Returns `(z, p_one_sided)`.
///
/// Definition (the classical score test for two binomial proportions, e.g.
/// Agresti, *Categorical Data Analysis*; statsmodels' `proportions_ztest`
/// with its default pooled variance):
///
/// ```text
/// p_b = baseline_successes / baseline_n,  p_w = window_successes / window_n
/// p̂   = (baseline_successes + window_successes) / (baseline_n + window_n)
/// z   = (p_w − p_b) / √(p̂ (1 − p̂) (1/baseline_n + 1/window_n))
/// p   = Φ(z) = P(Z ≤ z)
/// ```
///
/// A small `p` means the window's rate is significantly below the baseline's
/// (z < 0). For metrics where higher is worse (error rate), pass the
/// complementary counts.
///
/// Why this test: a window's accuracy (precision, recall) is a proportion of
/// independent Bernoulli outcomes, and under H₀ "same rate" the pooled
/// estimate is the maximum-likelihood rate, so `z` is the score test,
/// asymptotically N(0, 1); `z²` equals Pearson's chi-square on the 2×2 table
/// without continuity correction. It needs only counts, which the baseline
/// profile and the window state already keep, and it is one-sided because
/// only degradation should alert. The normal approximation wants roughly
/// `n·p̂(1−p̂) ≥ 10` in each group; below that the p-value is only approximate
/// and callers should require a minimum labeled count. The baseline is treated as a
/// sample, not a known constant, which keeps p-values honest when the
/// baseline itself is small.
///
/// Degenerate cases: `(NaN, NaN)` if either `n` is 0; `(0, 0.5)` when the
/// pooled rate is 0 or 1 (both groups all failures or all successes: equal
/// rates, no evidence either way). Panics if successes exceed `n`.
pub fn two_proportion_z_test(
    baseline_successes: u64,
    baseline_n: u64,
    window_successes: u64,
    window_n: u64,
) -> (f64, f64) {
    assert!(
        baseline_successes <= baseline_n && window_successes <= window_n,
        "two_proportion_z_test: successes must not exceed trials"
    );
    if baseline_n == 0 || window_n == 0 {
        return (f64::NAN, f64::NAN);
    }
    let (xb, nb, xw, nw) = (baseline_successes as f64, baseline_n as f64, window_successes as f64, window_n as f64);
    let pooled = (xb + xw) / (nb + nw);
    let variance = pooled * (1.0 - pooled) * (1.0 / nb + 1.0 / nw);
    if variance <= 0.0 {
        return (0.0, 0.5);
    }
    let z = (xw / nw - xb / nb) / variance.sqrt();
    (z, Normal::standard().cdf(z))
}

/// One-sided p-value that a window's ROC AUC is **lower** than the
/// baseline's, with Hanley & McNeil's (1982) standard error for each:
///
/// ```text
/// Q1 = A/(2−A),  Q2 = 2A²/(1+A)
/// SE² = (A(1−A) + (n₊−1)(Q1−A²) + (n₋−1)(Q2−A²)) / (n₊·n₋)
/// z = (A_w − A_b) / √(SE_w² + SE_b²),  p = Φ(z)
/// ```
///
/// The two AUCs come from independent samples (training data and the
/// window), so their variances add. NaN when either side lacks a class.
pub fn auc_lower_p_value(baseline: (f64, u64, u64), window: (f64, u64, u64)) -> f64 {
    let se2 = |(a, positives, negatives): (f64, u64, u64)| {
        if positives == 0 || negatives == 0 {
            return f64::NAN;
        }
        let (p, n) = (positives as f64, negatives as f64);
        let q1 = a / (2.0 - a);
        let q2 = 2.0 * a * a / (1.0 + a);
        (a * (1.0 - a) + (p - 1.0) * (q1 - a * a) + (n - 1.0) * (q2 - a * a)) / (p * n)
    };
    let variance = se2(baseline) + se2(window);
    if !variance.is_finite() {
        return f64::NAN;
    }
    if variance <= 0.0 {
        return if window.0 < baseline.0 { 0.0 } else { 1.0 };
    }
    Normal::standard().cdf((window.0 - baseline.0) / variance.sqrt())
}

/// One-sided p-value that a window's mean loss (for example the mean
/// absolute error) is **higher** than the baseline's: a two-sample z-test
/// with unpooled variances (Welch's statistic, normal reference, as the
/// samples are large). Each side is `(mean, standard deviation, n)`.
pub fn mean_higher_p_value(baseline: (f64, f64, u64), window: (f64, f64, u64)) -> f64 {
    if baseline.2 == 0 || window.2 == 0 {
        return f64::NAN;
    }
    let variance = baseline.1.powi(2) / baseline.2 as f64 + window.1.powi(2) / window.2 as f64;
    if !variance.is_finite() {
        return f64::NAN;
    }
    if variance <= 0.0 {
        return if window.0 > baseline.0 { 0.0 } else { 1.0 };
    }
    Normal::standard().sf((window.0 - baseline.0) / variance.sqrt())
}

#[cfg(test)]
mod auc_and_mean_tests {
    use super::*;

    #[test]
    fn auc_p_value_matches_hanley_mcneil_by_hand() {
        // n+ = n- = 100: SE²(0.8) = 0.000984, SE²(0.7) = 0.00135683;
        // z = −0.1/√(0.000984 + 0.00135683), scipy norm.cdf(z) = 0.0193727358.
        let p = auc_lower_p_value((0.8, 100, 100), (0.7, 100, 100));
        assert!((p - 0.019_372_735_8).abs() < 1e-9, "{p}");
        assert!(auc_lower_p_value((0.8, 100, 100), (0.9, 100, 100)) > 0.5);
        assert!(auc_lower_p_value((0.8, 0, 100), (0.7, 100, 100)).is_nan());
    }

    #[test]
    fn mean_p_value_is_one_sided_upwards() {
        // z = (1.2 − 1.0)/√(0.25/100 + 0.25/100); scipy norm.sf(z) = 0.00233886749.
        let p = mean_higher_p_value((1.0, 0.5, 100), (1.2, 0.5, 100));
        assert!((p - 0.002_338_867_49).abs() < 1e-9, "{p}");
        assert!(mean_higher_p_value((1.0, 0.5, 100), (0.8, 0.5, 100)) > 0.99);
    }
}
