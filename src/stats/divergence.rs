//! Binned divergences: PSI, Jensen–Shannon distance, Hellinger distance.

/// Default ε that replaces empty-bin proportions in [`psi`].
///
/// `1e-4` is the value used by common PSI implementations (e.g. Evidently's
/// `psi_stat_test`) and is small next to the smallest
/// bin of a 10-bin quantile binning (0.1) while keeping a single empty bin's
/// contribution finite: an empty window bin against a 0.1 reference bin adds
/// `(1e-4 − 0.1)·ln(1e-4/0.1) ≈ 0.69`.
pub const PSI_EPSILON: f64 = 1e-4;

/// Population Stability Index of observed counts against reference proportions.
///
/// Definition (Siddiqi, *Credit Risk Scorecards*, 2006; Yurdakul, 2018):
///
/// ```text
/// PSI = Σ_i (a_i − e_i) · ln(a_i / e_i)
/// a_i = observed_i / Σ observed      (actual proportion in bin i)
/// e_i = reference_i                  (expected proportion, Σ e_i = 1)
/// ```
///
/// ε-smoothing: a zero `a_i` or `e_i` is replaced by `epsilon` (use
/// [`PSI_EPSILON`] unless configured) **without renormalising**, as in
/// Evidently; a bin empty on both sides then contributes
/// `(ε − ε)·ln 1 = 0`. The result is ≥ 0 and symmetric in `a` and `e`.
/// Usual reading: < 0.1 stable, 0.1–0.25 moderate shift, > 0.25 major shift
/// (these cut-offs ignore sample size; see issue 3 item 5).
///
/// Returns `NaN` when `observed` sums to 0. Panics if the lengths differ.
/// Checked against numpy on the same definition (`cases.json`, key `psi`).
pub fn psi(reference: &[f64], observed: &[u64], epsilon: f64) -> f64 {
    assert_eq!(reference.len(), observed.len(), "psi: reference and observed must have one entry per bin");
    let n: u64 = observed.iter().sum();
    if n == 0 {
        return f64::NAN;
    }
    let n = n as f64;
    let smooth = |x: f64| if x == 0.0 { epsilon } else { x };
    reference
        .iter()
        .zip(observed)
        .map(|(&e, &o)| {
            let a = smooth(o as f64 / n);
            let e = smooth(e);
            (a - e) * (a / e).ln()
        })
        .sum()
}

/// Sum of a slice, for normalising distributions.
fn total(xs: &[f64]) -> f64 {
    xs.iter().sum()
}

/// Jensen–Shannon **distance**, base 2, in [0, 1].
///
/// Definition (Lin, 1991; Endres & Schindelin, 2003):
///
/// ```text
/// p ← p / Σp,  q ← q / Σq,  m = (p + q) / 2
/// JSD(p, q) = ½ KL(p ‖ m) + ½ KL(q ‖ m)      with KL in bits, 0·log 0 = 0
/// distance  = √JSD
/// ```
///
/// Inputs are normalised first, so counts may be passed directly. Matches
/// `scipy.spatial.distance.jensenshannon(p, q, base=2)` (which is the square
/// root of the divergence); 0 for identical, 1 for disjoint supports.
///
/// Returns `NaN` if either input sums to 0. Panics if the lengths differ.
pub fn jensen_shannon_distance(p: &[f64], q: &[f64]) -> f64 {
    assert_eq!(p.len(), q.len(), "jensen_shannon_distance: p and q must have the same length");
    let (sp, sq) = (total(p), total(q));
    if sp <= 0.0 || sq <= 0.0 {
        return f64::NAN;
    }
    // Relative entropy x·ln(x/y) with the convention 0·ln(0/y) = 0 (scipy.special.rel_entr).
    let rel_entr = |x: f64, y: f64| if x > 0.0 { x * (x / y).ln() } else { 0.0 };
    let js: f64 = p
        .iter()
        .zip(q)
        .map(|(&pi, &qi)| {
            let (pi, qi) = (pi / sp, qi / sq);
            let mi = 0.5 * (pi + qi);
            rel_entr(pi, mi) + rel_entr(qi, mi)
        })
        .sum();
    (js / std::f64::consts::LN_2 / 2.0).max(0.0).sqrt()
}

/// Hellinger distance, in [0, 1].
///
/// Convention (Hellinger, 1909; Le Cam & Yang, 2000), on normalised inputs:
///
/// ```text
/// p ← p / Σp,  q ← q / Σq
/// H(p, q) = √(1 − Σ_i √(p_i q_i))        (= ‖√p − √q‖₂ / √2)
/// ```
///
/// i.e. the version **with** the 1/√2 factor, so that 0 means identical and 1
/// disjoint supports (without it the maximum would be √2). scipy has no
/// Hellinger function; the fixture computes the formula above with numpy.
/// Rounding can make `1 − Σ√(p q)` slightly negative; it is clamped at 0.
///
/// Returns `NaN` if either input sums to 0. Panics if the lengths differ.
pub fn hellinger(p: &[f64], q: &[f64]) -> f64 {
    assert_eq!(p.len(), q.len(), "hellinger: p and q must have the same length");
    let (sp, sq) = (total(p), total(q));
    if sp <= 0.0 || sq <= 0.0 {
        return f64::NAN;
    }
    let bc: f64 = p.iter().zip(q).map(|(&pi, &qi)| ((pi / sp) * (qi / sq)).sqrt()).sum();
    (1.0 - bc).max(0.0).sqrt()
}
