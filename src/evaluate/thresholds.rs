//! Sample-size-aware thresholds for the `drifted` column.
//!
//! A fixed cut-off (PSI > 0.1, p < 0.05) either cries wolf on small windows
//! or sleeps through real shifts on large ones. Here every threshold is the
//! metric's critical value at level `α` for *this* window's sample size `n`
//! and the baseline's size `N`: the value a window drawn from the baseline's
//! own distribution exceeds with probability `α`. `α` is `drift.alpha`
//! divided by the number of features the model has baselines for
//! (Bonferroni), so a healthy window is marked drifted on a given metric for
//! *any* feature with probability at most `drift.alpha`.
//!
//! The critical values come from the statistics' large-sample null
//! distributions:
//! - KS: `D_crit = c(α)·√((n+N)/(n·N))`, `c(α) = √(−½·ln(α/2))` (the
//!   Kolmogorov limit, as in Smirnov's two-sample table).
//! - chi-square over `k` categories: the `1 − α` quantile of `χ²(k−1)`.
//! - PSI over `k` bins: for small differences `PSI ≈ Σ (a−e)²/e = X²/n`,
//!   so `PSI_crit = χ²_{1−α}(k−1)·(1/n + 1/N)` (the second term for the
//!   baseline's own sampling noise).
//! - Jensen–Shannon (base 2): `JSD ≈ X²/(8n·ln 2)`, so the distance's
//!   threshold is `√(χ²_{1−α}(k−1)·(1/n + 1/N)/(8·ln 2))`.
//! - Hellinger: `H² ≈ X²/(8n)`, so `H_crit = √(χ²_{1−α}(k−1)·(1/n + 1/N)/8)`.
//!
//! - `out_of_range_rate`: a value drawn from the baseline's distribution
//!   falls outside the baseline's [min, max] of N values with probability
//!   `2/(N+1)` (at most, for discrete features); the count of such values in
//!   a window is then about `Poisson(n·2/(N+1))`, and the threshold is the
//!   smallest rate `c/n` with `P(count > c) ≤ α`.
//!
//! Wasserstein and `unseen_rate` have no threshold (their null
//! distributions depend on the feature's shape); they are descriptive and
//! rules may use them directly.

use statrs::distribution::{ChiSquared, ContinuousCDF, DiscreteCDF, Poisson};

/// The `1 − alpha` quantile of the chi-square distribution with `df` degrees
/// of freedom.
pub fn chi_square_critical(df: usize, alpha: f64) -> f64 {
    if df == 0 {
        return f64::INFINITY;
    }
    ChiSquared::new(df as f64).map(|d| d.inverse_cdf(1.0 - alpha)).unwrap_or(f64::INFINITY)
}

fn sampling(n: u64, reference_n: u64) -> f64 {
    let n = n.max(1) as f64;
    let reference = if reference_n == 0 { 0.0 } else { 1.0 / reference_n as f64 };
    1.0 / n + reference
}

/// Two-sample KS critical value.
pub fn ks_threshold(n: u64, reference_n: u64, alpha: f64) -> f64 {
    (-0.5 * (alpha / 2.0).ln()).sqrt() * sampling(n, reference_n).sqrt()
}

/// PSI critical value over `bins` bins.
pub fn psi_threshold(bins: usize, n: u64, reference_n: u64, alpha: f64) -> f64 {
    chi_square_critical(bins.saturating_sub(1), alpha) * sampling(n, reference_n)
}

/// Jensen–Shannon distance (base 2) critical value over `bins` bins.
pub fn jensen_shannon_threshold(bins: usize, n: u64, reference_n: u64, alpha: f64) -> f64 {
    (chi_square_critical(bins.saturating_sub(1), alpha) * sampling(n, reference_n) / (8.0 * std::f64::consts::LN_2))
        .sqrt()
}

/// Hellinger distance critical value over `bins` bins.
pub fn hellinger_threshold(bins: usize, n: u64, reference_n: u64, alpha: f64) -> f64 {
    (chi_square_critical(bins.saturating_sub(1), alpha) * sampling(n, reference_n) / 8.0).sqrt()
}

/// Out-of-range rate critical value (see the module comment).
pub fn out_of_range_threshold(n: u64, reference_n: u64, alpha: f64) -> f64 {
    if n == 0 || reference_n == 0 {
        return f64::INFINITY;
    }
    let lambda = n as f64 * 2.0 / (reference_n as f64 + 1.0);
    let Ok(poisson) = Poisson::new(lambda) else { return f64::INFINITY };
    let mut count = 0u64;
    while poisson.sf(count) > alpha && count < n {
        count += 1;
    }
    count as f64 / n as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn critical_values_match_scipy() {
        // scipy.stats.chi2.ppf(0.99, 9) = 21.665994333461924
        assert!((chi_square_critical(9, 0.01) - 21.665_994_333_461_924).abs() < 1e-9);
        // c(0.05) = sqrt(-ln(0.025)/2) = 1.3581 (Smirnov's table), for n = m = 100 times sqrt(0.02)
        assert!((ks_threshold(100, 100, 0.05) - 1.358_101_515_740_619_5 * 0.02f64.sqrt()).abs() < 1e-9);
    }

    #[test]
    fn out_of_range_threshold_is_a_poisson_quantile() {
        // n = 1000, N = 1999: λ = 1; P(Poisson(1) > 4) = 0.00366, > 5 = 0.000594.
        assert_eq!(out_of_range_threshold(1000, 1999, 0.001), 5.0 / 1000.0);
        assert_eq!(out_of_range_threshold(1000, 1999, 0.01), 4.0 / 1000.0);
    }

    #[test]
    fn thresholds_shrink_as_windows_grow() {
        for f in [psi_threshold, jensen_shannon_threshold, hellinger_threshold] {
            let small = f(10, 100, 1_000_000, 0.001);
            let large = f(10, 10_000, 1_000_000, 0.001);
            assert!(small > 5.0 * large, "{small} vs {large}");
        }
        assert!(ks_threshold(100, 1_000_000, 0.001) > 5.0 * ks_threshold(10_000, 1_000_000, 0.001));
    }
}
