//! Pearson's chi-square goodness-of-fit test of window counts against baseline proportions.

use statrs::distribution::{ChiSquared, ContinuousCDF};

/// Default ε that replaces a zero reference proportion in [`chi_square`] when
/// the window has counts in that category (same value as
/// [`PSI_EPSILON`](super::PSI_EPSILON)).
pub const CHI2_EPSILON: f64 = 1e-4;

/// Pearson's chi-square goodness-of-fit test with [`CHI2_EPSILON`] smoothing.
///
/// See [`chi_square_smoothed`] for the definition. Returns
/// `(statistic, p_value)`.
pub fn chi_square(reference: &[f64], observed: &[u64]) -> (f64, f64) {
    chi_square_smoothed(reference, observed, CHI2_EPSILON)
}

/// Pearson's chi-square goodness-of-fit test of `observed` counts against
/// `reference` proportions, returning `(statistic, p_value)`.
///
/// Definition (Pearson, 1900), over the kept categories `i = 1..k`:
///
/// ```text
/// n = Σ observed_i,  E_i = p_i · n
/// X² = Σ_i (observed_i − E_i)² / E_i,   p = P(χ²_{k−1} ≥ X²)
/// ```
///
/// computed like `scipy.stats.chisquare(f_obs, f_exp)` (the survival function
/// of the chi-square distribution with `k − 1` degrees of freedom, via statrs).
///
/// Zero expected frequencies (a category absent from the baseline), the
/// convention chosen here:
/// 1. a category with reference proportion 0 **and** observed count 0 carries
///    no information and is **excluded** (it does not count in `k`);
/// 2. a category with reference proportion 0 but observed counts (an unseen
///    category) gets proportion `epsilon` — the same smoothing as [`psi`](super::psi) —
///    so it counts as strong evidence of drift instead of making the statistic
///    infinite;
/// 3. the proportions are then renormalised to sum 1 (so Σ E_i = n, as
///    scipy requires), which also accepts unnormalised reference counts.
///
/// Returns `(NaN, NaN)` when `observed` sums to 0 and `(0, 1)` when fewer than
/// two categories are kept (zero degrees of freedom). Panics if the lengths
/// differ or a reference value is negative.
pub fn chi_square_smoothed(reference: &[f64], observed: &[u64], epsilon: f64) -> (f64, f64) {
    assert_eq!(reference.len(), observed.len(), "chi_square: reference and observed must have one entry per category");
    assert!(reference.iter().all(|&p| p >= 0.0), "chi_square: reference proportions must be non-negative");
    let n: u64 = observed.iter().sum();
    if n == 0 {
        return (f64::NAN, f64::NAN);
    }
    let kept = || {
        reference
            .iter()
            .zip(observed)
            .filter(|&(&p, &o)| p > 0.0 || o > 0)
            .map(|(&p, &o)| (if p > 0.0 { p } else { epsilon }, o))
    };
    let k = kept().count();
    if k < 2 {
        return (0.0, 1.0);
    }
    let p_total: f64 = kept().map(|(p, _)| p).sum();
    let n = n as f64;
    let statistic: f64 = kept()
        .map(|(p, o)| {
            let expected = p / p_total * n;
            let d = o as f64 - expected;
            d * d / expected
        })
        .sum();
    let dist = ChiSquared::new((k - 1) as f64).expect("k − 1 ≥ 1 degrees of freedom is valid");
    (statistic, dist.sf(statistic))
}
