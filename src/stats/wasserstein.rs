//! Wasserstein-1 (earth mover's) distance between one-dimensional distributions.
//!
//! All functions return the **raw** distance in the feature's units; the
//! engine divides by the baseline's standard deviation (docs/REFERENCE.md).

/// Wasserstein-1 distance between two raw samples.
///
/// Definition (Vallender, 1974): for one-dimensional distributions
///
/// ```text
/// W1(F, G) = ∫ |F(x) − G(x)| dx = ∫_0^1 |F⁻¹(u) − G⁻¹(u)| du
/// ```
///
/// evaluated on the empirical CDFs: with all values of both samples merged
/// and sorted as `x_1 ≤ … ≤ x_N`, `W1 = Σ_k |F(x_k) − G(x_k)| (x_{k+1} − x_k)`,
/// the algorithm of `scipy.stats.wasserstein_distance(a, b)` (unweighted),
/// which it matches. Copies of the inputs are sorted with [`f64::total_cmp`].
///
/// `NaN` if either sample is empty. Inputs must not contain NaN.
pub fn wasserstein_1(a: &[f64], b: &[f64]) -> f64 {
    if a.is_empty() || b.is_empty() {
        return f64::NAN;
    }
    let (a, b) = (super::sorted_copy(a), super::sorted_copy(b));
    let (n, m) = (a.len(), b.len());
    let nm = n as f64 * m as f64;
    let (mut i, mut j) = (0usize, 0usize);
    let mut sum = 0.0;
    // Walk the distinct merged values; between x and the next value y both
    // CDFs are constant at i/n and j/m.
    let mut x = a[0].min(b[0]);
    loop {
        while i < n && a[i] <= x {
            i += 1;
        }
        while j < m && b[j] <= x {
            j += 1;
        }
        let y = match (a.get(i), b.get(j)) {
            (Some(&p), Some(&q)) => p.min(q),
            (Some(&p), None) => p,
            (None, Some(&q)) => q,
            (None, None) => break,
        };
        let diff = (i as f64 * m as f64 - j as f64 * n as f64).abs() / nm;
        sum += diff * (y - x);
        x = y;
    }
    sum
}

/// Wasserstein-1 distance from two quantile functions sampled at the same
/// `k` equally spaced probability levels.
///
/// `reference_quantiles[i]` and `window_quantiles[i]` are the quantiles at
/// level `u_i = (i + ½)/k`, and each quantile function is taken as constant
/// on its cell `[i/k, (i+1)/k)`:
///
/// ```text
/// W1 = ∫_0^1 |F⁻¹(u) − G⁻¹(u)| du ≈ (1/k) Σ_i |F⁻¹(u_i) − G⁻¹(u_i)|
/// ```
///
/// For two samples of equal size `k`, their sorted values are exactly these
/// quantiles and the result equals [`wasserstein_1`] and
/// `scipy.stats.wasserstein_distance`. For sketch quantiles the error is
/// bounded by the sketch's quantile error plus the within-cell variation.
///
/// `NaN` if the slices are empty. Panics if their lengths differ.
pub fn wasserstein_from_quantiles(reference_quantiles: &[f64], window_quantiles: &[f64]) -> f64 {
    assert_eq!(
        reference_quantiles.len(),
        window_quantiles.len(),
        "wasserstein_from_quantiles: quantiles must be at the same levels"
    );
    if reference_quantiles.is_empty() {
        return f64::NAN;
    }
    let sum: f64 = reference_quantiles.iter().zip(window_quantiles).map(|(a, b)| (a - b).abs()).sum();
    sum / reference_quantiles.len() as f64
}

/// Wasserstein-1 distance `∫ |F(x) − G(x)| dx` from two step CDFs on a common
/// sorted grid.
///
/// `reference_cdf[i]` and `window_cdf[i]` are the right-continuous CDFs at
/// `grid[i]`, held constant until `grid[i+1]`:
///
/// ```text
/// W1 = Σ_{i < N−1} |F(x_i) − G(x_i)| · (x_{i+1} − x_i)
/// ```
///
/// The grid must cover both supports (both CDFs 0 before `grid[0]` and equal
/// from the last point on). With the merged samples as grid and empirical
/// CDFs this is exactly `scipy.stats.wasserstein_distance`. On a coarser grid
/// (sketch points) it is a left Riemann sum of the true integral; since
/// `|F − G|` moves by at most `ΔF_i + ΔG_i` (the two CDFs' increases) inside
/// cell `i`, the error is at most `Σ_i (x_{i+1} − x_i)(ΔF_i + ΔG_i)`.
///
/// `NaN` for an empty grid. Panics if the three slices differ in length.
pub fn wasserstein_from_cdfs(grid: &[f64], reference_cdf: &[f64], window_cdf: &[f64]) -> f64 {
    assert!(
        grid.len() == reference_cdf.len() && grid.len() == window_cdf.len(),
        "wasserstein_from_cdfs: grid and CDFs must have the same length"
    );
    if grid.is_empty() {
        return f64::NAN;
    }
    grid.windows(2).zip(reference_cdf.iter().zip(window_cdf)).map(|(x, (f, g))| (f - g).abs() * (x[1] - x[0])).sum()
}
