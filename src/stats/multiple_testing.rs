//! Multiple-testing correction across the features tested in one window.

/// Holm–Bonferroni adjusted p-values (Holm, 1979), in input order.
///
/// With the `m` non-NaN p-values sorted ascending, `p_(1) ≤ … ≤ p_(m)`:
///
/// ```text
/// p̃_(i) = min(1, max_{j ≤ i} (m − j + 1) · p_(j))
/// ```
///
/// Rejecting every hypothesis with `p̃ ≤ α` controls the family-wise error
/// rate at `α` under any dependence between the features' tests, and is
/// uniformly more powerful than plain Bonferroni (`m · p`). Same values as
/// statsmodels' `multipletests(p, method='holm')[1]`; checked against a numpy
/// implementation of the formula (fixture key `holm`).
///
/// NaN p-values (features with no test this window) are excluded from `m`
/// and returned as NaN. Ties get equal adjusted values. Allocates the result
/// and one index vector.
pub fn holm_bonferroni(p_values: &[f64]) -> Vec<f64> {
    let mut adjusted = vec![f64::NAN; p_values.len()];
    let mut order: Vec<usize> = (0..p_values.len()).filter(|&i| !p_values[i].is_nan()).collect();
    order.sort_by(|&i, &j| p_values[i].total_cmp(&p_values[j]));
    let m = order.len();
    let mut running_max: f64 = 0.0;
    for (rank, &i) in order.iter().enumerate() {
        running_max = running_max.max((m - rank) as f64 * p_values[i]);
        adjusted[i] = running_max.min(1.0);
    }
    adjusted
}
