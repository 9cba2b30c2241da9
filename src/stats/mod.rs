//! Drift, performance and multiple-testing statistics (docs/REFERENCE.md, docs/DRIFT.md).
//!
//! Pure functions on slices: no I/O, no clock, no allocation beyond what a
//! function documents. Each function's doc comment gives its definition, the
//! convention chosen where the literature has several, and the reference
//! implementation it is checked against. The fixtures in
//! `tests/fixtures/drift/cases.json` are produced by
//! `tests/fixtures/drift/generate.py` with numpy/scipy and checked in
//! `src/stats/tests.rs`.
//!
//! | metric (docs/REFERENCE.md)   | function                                                      |
//! |------------------------------|---------------------------------------------------------------|
//! | `psi`, `*_psi`               | [`psi`]                                                       |
//! | `chi2` (+ `p_value`)         | [`chi_square`], [`chi_square_smoothed`]                       |
//! | `jensen_shannon`             | [`jensen_shannon_distance`]                                   |
//! | `hellinger`                  | [`hellinger`]                                                 |
//! | `ks` (+ `p_value`)           | [`ks_two_sample_from_cdfs`], [`ks_two_sample_exact_values`]   |
//! | `wasserstein` (raw distance) | [`wasserstein_1`], [`wasserstein_from_quantiles`], [`wasserstein_from_cdfs`] |
//! | performance `p_value`        | [`two_proportion_z_test`]                                     |
//! | `roc_auc`, `log_loss`, `brier` | [`roc_auc`], [`log_loss`], [`brier`]                        |
//! | per-feature correction       | [`holm_bonferroni`]                                           |
//! | `accuracy_vs_champion` `p_value` | [`mcnemar_worse_p_value`] (exact McNemar, one-sided)      |
//!
//! KS p-values come in two conventions: [`ks_pvalue_asymptotic`] (Numerical
//! Recipes, limiting Kolmogorov law with Stephens' correction; used by
//! [`ks_two_sample_from_cdfs`]) and [`ks_pvalue_scipy_asymp`] (scipy's
//! `ks_2samp(method='asymp')`, the finite-n law [`kolmogorov_smirnov_survival`];
//! used by [`ks_two_sample_exact_values`]).
//!
//! Conventions shared by all functions:
//! * Empty input (no observations) yields `NaN`, never a panic; callers map
//!   `NaN` to a null column.
//! * Slices that must be aligned (bins, grid points, labels) panic on a length
//!   mismatch: that is a programming error, not a data condition.
//! * Inputs must not contain `NaN` except where a function says otherwise
//!   ([`holm_bonferroni`]); samples are ordered with [`f64::total_cmp`].

mod chi_square;
mod divergence;
mod ks;
mod kstwo;
mod multiple_testing;
mod paired;
mod performance;
mod proportion;
mod wasserstein;

/// A sorted copy of a sample (one linear check when it is already sorted).
fn sorted_copy(xs: &[f64]) -> Vec<f64> {
    let mut v = xs.to_vec();
    if !v.is_sorted_by(|x, y| x.total_cmp(y).is_le()) {
        v.sort_unstable_by(f64::total_cmp);
    }
    v
}

#[cfg(test)]
mod tests;

pub use chi_square::{CHI2_EPSILON, chi_square, chi_square_smoothed};
pub use divergence::{PSI_EPSILON, hellinger, jensen_shannon_distance, psi};
pub use ks::{
    kolmogorov_survival, ks_effective_n, ks_pvalue_asymptotic, ks_two_sample_exact_values, ks_two_sample_from_cdfs,
};
pub use kstwo::{kolmogorov_smirnov_survival, ks_pvalue_scipy_asymp};
pub use multiple_testing::holm_bonferroni;
pub use paired::mcnemar_worse_p_value;
pub use performance::{LOG_LOSS_EPS, brier, log_loss, roc_auc};
pub use proportion::{auc_lower_p_value, mean_higher_p_value, two_proportion_z_test};
pub use wasserstein::{wasserstein_1, wasserstein_from_cdfs, wasserstein_from_quantiles};
