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
