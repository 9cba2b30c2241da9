//! Agreement with numpy/scipy on `tests/fixtures/drift/cases.json` (made by
//! `tests/fixtures/drift/generate.py`), plus edge cases defined by the docs.

use serde::Deserialize;

use super::*;

const FIXTURE: &str = include_str!("../../tests/fixtures/drift/cases.json");

/// Tolerance for exact computations (docs/REFERENCE.md promises 1e-6; these reach 1e-9).
const EXACT: f64 = 1e-9;

/// Tolerance for asymptotic p-values evaluated by the same formula on both sides.
const ASYMPTOTIC: f64 = 1e-6;

#[derive(Deserialize)]
struct Fixture {
    meta: Meta,
    psi: Vec<PsiCase>,
    chi_square: Vec<ChiCase>,
    jensen_shannon: Vec<PairCase>,
    hellinger: Vec<PairCase>,
    kolmogorov: Vec<KolmogorovCase>,
    ks_samples: Vec<KsSampleCase>,
    kstwo: Vec<KstwoCase>,
    ks_cdfs: Vec<KsCdfCase>,
    wasserstein: Vec<SampleCase>,
    wasserstein_cdfs: Vec<WassersteinCdfCase>,
    two_proportion: Vec<ZCase>,
    roc_auc: Vec<AucCase>,
    log_loss: Vec<LogLossCase>,
    brier: Vec<BrierCase>,
    holm: Vec<HolmCase>,
}

#[derive(Deserialize)]
struct Meta {
    numpy: String,
    scipy: String,
    psi_epsilon: f64,
    chi2_epsilon: f64,
}

#[derive(Deserialize)]
struct PsiCase {
    name: String,
    reference: Vec<f64>,
    observed: Vec<u64>,
    epsilon: f64,
    expected: f64,
}

#[derive(Deserialize)]
struct ChiCase {
    name: String,
    reference: Vec<f64>,
    observed: Vec<u64>,
    statistic: f64,
    p_value: f64,
}

#[derive(Deserialize)]
struct PairCase {
    name: String,
    p: Vec<f64>,
    q: Vec<f64>,
    expected: f64,
}

#[derive(Deserialize)]
struct KolmogorovCase {
    x: f64,
    expected: f64,
}

#[derive(Deserialize)]
struct KsSampleCase {
    name: String,
    a: Vec<f64>,
    b: Vec<f64>,
    statistic: f64,
    p_value_nr: f64,
    p_value_scipy_asymp: Option<f64>,
    p_value_scipy_auto: f64,
}

#[derive(Deserialize)]
struct KstwoCase {
    n: u64,
    d: f64,
    region: String,
    expected: f64,
}

#[derive(Deserialize)]
struct KsCdfCase {
    name: String,
    reference_cdf: Vec<f64>,
    window_cdf: Vec<f64>,
    n: u64,
    m: u64,
    statistic: f64,
    p_value_nr: f64,
}

#[derive(Deserialize)]
struct SampleCase {
    name: String,
    a: Vec<f64>,
    b: Vec<f64>,
    expected: f64,
}

#[derive(Deserialize)]
struct WassersteinCdfCase {
    name: String,
    grid: Vec<f64>,
    reference_cdf: Vec<f64>,
    window_cdf: Vec<f64>,
    expected: f64,
}

#[derive(Deserialize)]
struct ZCase {
    baseline_successes: u64,
    baseline_n: u64,
    window_successes: u64,
    window_n: u64,
    z: f64,
    p_value: f64,
}

#[derive(Deserialize)]
struct AucCase {
    name: String,
    scores: Vec<f64>,
    labels: Vec<bool>,
    expected: Option<f64>,
}

#[derive(Deserialize)]
struct LogLossCase {
    name: String,
    probabilities: Vec<f64>,
    labels: Vec<bool>,
    eps: f64,
    expected: f64,
}

#[derive(Deserialize)]
struct BrierCase {
    name: String,
    probabilities: Vec<f64>,
    labels: Vec<bool>,
    expected: f64,
}

#[derive(Deserialize)]
struct HolmCase {
    name: String,
    p_values: Vec<Option<f64>>,
    expected: Vec<Option<f64>>,
}

fn fixture() -> Fixture {
    serde_json::from_str(FIXTURE).expect("tests/fixtures/drift/cases.json parses")
}

/// `|actual − expected| ≤ tol · max(1, |expected|)`: absolute near 0, relative for large values.
#[track_caller]
fn assert_close(actual: f64, expected: f64, tol: f64, what: &str) {
    let err = (actual - expected).abs();
    assert!(
        err <= tol * expected.abs().max(1.0),
        "{what}: got {actual:e}, expected {expected:e} (|diff| {err:e}, tol {tol:e})"
    );
}

/// Relative agreement, for values that can be tiny but still matter (p-values far in the tail).
#[track_caller]
fn assert_rel(actual: f64, expected: f64, tol: f64, what: &str) {
    let err = (actual - expected).abs();
    assert!(
        err <= tol * expected.abs() || err <= f64::MIN_POSITIVE,
        "{what}: got {actual:e}, expected {expected:e} (relative diff {:e}, tol {tol:e})",
        err / expected.abs()
    );
}

/// Step CDFs of both samples at every merged sample value, like `np.searchsorted(.., side='right') / n`.
fn merged_ecdfs(a: &[f64], b: &[f64]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let sorted = |xs: &[f64]| {
        let mut v = xs.to_vec();
        v.sort_by(f64::total_cmp);
        v
    };
    let (sa, sb) = (sorted(a), sorted(b));
    let grid = sorted(&[a, b].concat());
    let ecdf = |s: &[f64]| grid.iter().map(|x| s.partition_point(|v| v <= x) as f64 / s.len() as f64).collect();
    let (f, g) = (ecdf(&sa), ecdf(&sb));
    (grid, f, g)
}

#[test]
fn fixture_is_complete_and_matches_module_defaults() {
    let f = fixture();
    assert!(!f.meta.numpy.is_empty() && !f.meta.scipy.is_empty());
    assert_eq!(f.meta.psi_epsilon, PSI_EPSILON);
    assert_eq!(f.meta.chi2_epsilon, CHI2_EPSILON);
    for (name, len) in [
        ("psi", f.psi.len()),
        ("chi_square", f.chi_square.len()),
        ("jensen_shannon", f.jensen_shannon.len()),
        ("hellinger", f.hellinger.len()),
        ("kolmogorov", f.kolmogorov.len()),
        ("ks_samples", f.ks_samples.len()),
        ("kstwo", f.kstwo.len()),
        ("ks_cdfs", f.ks_cdfs.len()),
        ("wasserstein", f.wasserstein.len()),
        ("wasserstein_cdfs", f.wasserstein_cdfs.len()),
        ("two_proportion", f.two_proportion.len()),
        ("roc_auc", f.roc_auc.len()),
        ("log_loss", f.log_loss.len()),
        ("brier", f.brier.len()),
        ("holm", f.holm.len()),
    ] {
        assert!(len >= 5, "fixture section {name} has only {len} cases");
    }
}

#[test]
fn psi_matches_numpy() {
    for c in fixture().psi {
        assert_close(psi(&c.reference, &c.observed, c.epsilon), c.expected, EXACT, &format!("psi {}", c.name));
    }
}

#[test]
fn chi_square_matches_scipy_chisquare() {
    for c in fixture().chi_square {
        let (stat, p) = chi_square(&c.reference, &c.observed);
        assert_close(stat, c.statistic, EXACT, &format!("chi2 statistic {}", c.name));
        assert_close(p, c.p_value, EXACT, &format!("chi2 p-value {}", c.name));
        if c.p_value > 1e-290 {
            assert_rel(p, c.p_value, 1e-8, &format!("chi2 p-value (relative) {}", c.name));
        }
    }
}

#[test]
fn jensen_shannon_matches_scipy() {
    for c in fixture().jensen_shannon {
        assert_close(jensen_shannon_distance(&c.p, &c.q), c.expected, EXACT, &format!("jensen_shannon {}", c.name));
        assert_close(jensen_shannon_distance(&c.q, &c.p), c.expected, EXACT, &format!("jensen_shannon sym {}", c.name));
    }
}

#[test]
fn hellinger_matches_numpy() {
    for c in fixture().hellinger {
        assert_close(hellinger(&c.p, &c.q), c.expected, EXACT, &format!("hellinger {}", c.name));
    }
}

#[test]
fn kolmogorov_survival_matches_scipy_special_kolmogorov() {
    for c in fixture().kolmogorov {
        let got = kolmogorov_survival(c.x);
        assert_close(got, c.expected, EXACT, &format!("kolmogorov({})", c.x));
        if c.expected > 1e-300 {
            assert_rel(got, c.expected, 1e-9, &format!("kolmogorov({}) relative", c.x));
        }
    }
}

#[test]
fn ks_two_sample_exact_values_matches_ks_2samp() {
    let mut worst_nr_vs_scipy: f64 = 0.0;
    for c in fixture().ks_samples {
        let (d, p) = ks_two_sample_exact_values(&c.a, &c.b);
        assert_close(d, c.statistic, 1e-12, &format!("ks statistic {}", c.name));
        match c.p_value_scipy_asymp {
            Some(e) => {
                assert_close(p, e, ASYMPTOTIC, &format!("ks p-value vs ks_2samp(method='asymp') {}", c.name));
                assert_rel(p, e, 1e-9, &format!("ks p-value vs ks_2samp(method='asymp'), relative {}", c.name));
                // The Numerical-Recipes form differs from scipy's by a documented, bounded amount.
                worst_nr_vs_scipy = worst_nr_vs_scipy
                    .max((ks_pvalue_asymptotic(d, ks_effective_n(c.a.len() as u64, c.b.len() as u64)) - e).abs());
            }
            None => assert!(p.is_nan(), "ks {}: scipy gives NaN (round(ne) = 0), got {p}", c.name),
        }
        assert!((0.0..=1.0).contains(&c.p_value_scipy_auto));
        // The NR p-value from the same statistic.
        let ne = ks_effective_n(c.a.len() as u64, c.b.len() as u64);
        let p_nr = ks_pvalue_asymptotic(d, ne);
        assert_close(p_nr, c.p_value_nr, ASYMPTOTIC, &format!("ks NR p-value {}", c.name));
        assert_rel(p_nr, c.p_value_nr, 1e-9, &format!("ks NR p-value (relative) {}", c.name));
        // The same statistic through the CDF interface on the full merged grid.
        let (_, f, g) = merged_ecdfs(&c.a, &c.b);
        let (d2, p2) = ks_two_sample_from_cdfs(&f, &g, c.a.len() as u64, c.b.len() as u64);
        assert_close(d2, c.statistic, 1e-12, &format!("ks from merged cdfs {}", c.name));
        assert_close(p2, c.p_value_nr, ASYMPTOTIC, &format!("ks p-value from merged cdfs {}", c.name));
        // Symmetric in the two samples.
        let (d3, p3) = ks_two_sample_exact_values(&c.b, &c.a);
        assert!(d3 == d && (p3 == p || (p.is_nan() && p3.is_nan())), "ks symmetry {}", c.name);
    }
    assert!(worst_nr_vs_scipy < 0.05, "NR vs scipy asymp differ by {worst_nr_vs_scipy}");
    eprintln!("ks: max |p_NR − p_scipy_asymp| on fixtures = {worst_nr_vs_scipy:.3e}");
}

#[test]
fn kolmogorov_smirnov_survival_matches_scipy_kstwo() {
    let mut worst: (f64, String) = (0.0, String::new());
    for c in fixture().kstwo {
        let got = kolmogorov_smirnov_survival(c.n, c.d);
        let err = (got - c.expected).abs() / c.expected.abs().max(1e-300);
        if err > worst.0 {
            worst = (err, format!("n={} d={} [{}]", c.n, c.d, c.region));
        }
        assert_close(got, c.expected, EXACT, &format!("kstwo.sf({}, {}) [{}]", c.d, c.n, c.region));
        if c.expected > 1e-300 {
            assert_rel(got, c.expected, 1e-9, &format!("kstwo.sf({}, {}) relative [{}]", c.d, c.n, c.region));
        }
    }
    eprintln!("kstwo: max relative difference to scipy {:.3e} at {}", worst.0, worst.1);
}

#[test]
fn ks_two_sample_from_cdfs_matches_numpy() {
    for c in fixture().ks_cdfs {
        let (d, p) = ks_two_sample_from_cdfs(&c.reference_cdf, &c.window_cdf, c.n, c.m);
        assert_close(d, c.statistic, 1e-12, &format!("ks cdfs statistic {}", c.name));
        assert_close(p, c.p_value_nr, ASYMPTOTIC, &format!("ks cdfs p-value {}", c.name));
        assert_rel(p, c.p_value_nr, 1e-9, &format!("ks cdfs p-value relative {}", c.name));
    }
}

#[test]
fn wasserstein_matches_scipy() {
    for c in fixture().wasserstein {
        assert_close(wasserstein_1(&c.a, &c.b), c.expected, EXACT, &format!("wasserstein_1 {}", c.name));
        assert_close(wasserstein_1(&c.b, &c.a), c.expected, EXACT, &format!("wasserstein_1 sym {}", c.name));
        let (grid, f, g) = merged_ecdfs(&c.a, &c.b);
        assert_close(
            wasserstein_from_cdfs(&grid, &f, &g),
            c.expected,
            EXACT,
            &format!("wasserstein_from_cdfs merged {}", c.name),
        );
        if c.a.len() == c.b.len() {
            let mut qa = c.a.clone();
            let mut qb = c.b.clone();
            qa.sort_by(f64::total_cmp);
            qb.sort_by(f64::total_cmp);
            assert_close(
                wasserstein_from_quantiles(&qa, &qb),
                c.expected,
                EXACT,
                &format!("wasserstein_from_quantiles {}", c.name),
            );
        }
    }
}

#[test]
fn wasserstein_from_cdfs_matches_numpy() {
    for c in fixture().wasserstein_cdfs {
        assert_close(
            wasserstein_from_cdfs(&c.grid, &c.reference_cdf, &c.window_cdf),
            c.expected,
            EXACT,
            &format!("wasserstein_from_cdfs {}", c.name),
        );
    }
}

#[test]
fn two_proportion_z_test_matches_scipy_norm() {
    for c in fixture().two_proportion {
        let what = format!("z-test {}/{} vs {}/{}", c.baseline_successes, c.baseline_n, c.window_successes, c.window_n);
        let (z, p) = two_proportion_z_test(c.baseline_successes, c.baseline_n, c.window_successes, c.window_n);
        assert_close(z, c.z, EXACT, &what);
        assert_close(p, c.p_value, EXACT, &what);
        assert_rel(p, c.p_value, 1e-8, &what);
    }
}

#[test]
fn roc_auc_matches_mann_whitney() {
    for c in fixture().roc_auc {
        let got = roc_auc(&c.scores, &c.labels);
        match c.expected {
            Some(e) => assert_close(got.expect("two classes present"), e, EXACT, &format!("roc_auc {}", c.name)),
            None => assert_eq!(got, None, "roc_auc {}", c.name),
        }
    }
}

#[test]
fn log_loss_and_brier_match_numpy() {
    let f = fixture();
    for c in f.log_loss {
        assert_close(log_loss(&c.probabilities, &c.labels, c.eps), c.expected, EXACT, &format!("log_loss {}", c.name));
    }
    for c in f.brier {
        assert_close(brier(&c.probabilities, &c.labels), c.expected, EXACT, &format!("brier {}", c.name));
    }
}

#[test]
fn holm_matches_numpy() {
    for c in fixture().holm {
        let input: Vec<f64> = c.p_values.iter().map(|p| p.unwrap_or(f64::NAN)).collect();
        let got = holm_bonferroni(&input);
        assert_eq!(got.len(), c.expected.len(), "holm {}", c.name);
        for (i, (g, e)) in got.iter().zip(&c.expected).enumerate() {
            match e {
                Some(e) => assert_close(*g, *e, EXACT, &format!("holm {}[{i}]", c.name)),
                None => assert!(g.is_nan(), "holm {}[{i}]: NaN input must stay NaN, got {g}", c.name),
            }
        }
    }
}

// ---- edge cases and properties that follow from the documented definitions ----

#[test]
fn empty_inputs_give_nan() {
    assert!(psi(&[0.5, 0.5], &[0, 0], PSI_EPSILON).is_nan());
    let (s, p) = chi_square(&[0.5, 0.5], &[0, 0]);
    assert!(s.is_nan() && p.is_nan());
    assert!(jensen_shannon_distance(&[0.0, 0.0], &[1.0, 0.0]).is_nan());
    assert!(hellinger(&[1.0, 0.0], &[0.0, 0.0]).is_nan());
    let (d, p) = ks_two_sample_exact_values(&[], &[1.0]);
    assert!(d.is_nan() && p.is_nan());
    let (d, p) = ks_two_sample_from_cdfs(&[0.5, 1.0], &[0.2, 1.0], 0, 10);
    assert!(d.is_nan() && p.is_nan());
    assert!(wasserstein_1(&[1.0], &[]).is_nan());
    assert!(wasserstein_from_quantiles(&[], &[]).is_nan());
    assert!(wasserstein_from_cdfs(&[], &[], &[]).is_nan());
    assert!(log_loss(&[], &[], LOG_LOSS_EPS).is_nan());
    assert!(brier(&[], &[]).is_nan());
    assert_eq!(roc_auc(&[], &[]), None);
    assert!(holm_bonferroni(&[]).is_empty());
    let (z, p) = two_proportion_z_test(0, 0, 3, 10);
    assert!(z.is_nan() && p.is_nan());
}

#[test]
fn chi_square_single_kept_category_has_no_evidence() {
    assert_eq!(chi_square(&[1.0, 0.0], &[10, 0]), (0.0, 1.0));
}

#[test]
fn z_test_degenerate_pooled_rate_is_neutral() {
    assert_eq!(two_proportion_z_test(100, 100, 50, 50), (0.0, 0.5));
    assert_eq!(two_proportion_z_test(0, 100, 0, 50), (0.0, 0.5));
}

#[test]
fn z_test_direction_flags_only_degradation() {
    let (z_worse, p_worse) = two_proportion_z_test(900, 1000, 800, 1000);
    let (z_better, p_better) = two_proportion_z_test(800, 1000, 900, 1000);
    assert!(z_worse < 0.0 && p_worse < 1e-6);
    assert!(z_better > 0.0 && p_better > 1.0 - 1e-6);
    assert_close(z_worse, -z_better, EXACT, "z antisymmetry");
}

#[test]
fn kolmogorov_survival_is_monotone_and_continuous_at_cutover() {
    assert_eq!(kolmogorov_survival(0.0), 1.0);
    assert_eq!(kolmogorov_survival(-1.0), 1.0);
    assert!(kolmogorov_survival(f64::NAN).is_nan());
    let below = kolmogorov_survival(0.82 - 1e-12);
    let at = kolmogorov_survival(0.82);
    assert!((below - at).abs() < 1e-11, "{below} vs {at}");
    let mut previous = 1.0;
    for i in 0..=4000 {
        let q = kolmogorov_survival(f64::from(i) * 0.001);
        assert!(q <= previous + 1e-15, "not monotone at {}", f64::from(i) * 0.001);
        previous = q;
    }
}

#[test]
fn ks_from_cdfs_on_a_coarse_grid_is_a_lower_bound() {
    let f = fixture();
    for c in f.ks_samples.iter().filter(|c| c.a.len() > 100) {
        let (d_exact, _) = ks_two_sample_exact_values(&c.a, &c.b);
        let (grid, fa, gb) = merged_ecdfs(&c.a, &c.b);
        let step = grid.len() / 50;
        let pick = |v: &[f64]| v.iter().step_by(step).copied().collect::<Vec<_>>();
        let (d_coarse, _) = ks_two_sample_from_cdfs(&pick(&fa), &pick(&gb), c.a.len() as u64, c.b.len() as u64);
        assert!(d_coarse <= d_exact + 1e-12, "{}: coarse {d_coarse} > exact {d_exact}", c.name);
    }
}

#[test]
fn psi_with_both_empty_bin_equals_psi_without_it() {
    let with = psi(&[0.5, 0.5, 0.0], &[7, 3, 0], PSI_EPSILON);
    let without = psi(&[0.5, 0.5], &[7, 3], PSI_EPSILON);
    assert_close(with, without, 1e-15, "empty-both bin contributes 0");
}

#[test]
fn holm_is_at_least_raw_and_at_most_bonferroni() {
    let p = [0.001, 0.2, 0.03, 0.04, 0.5, 0.0004];
    let adjusted = holm_bonferroni(&p);
    for (raw, adj) in p.iter().zip(&adjusted) {
        assert!(adj >= raw && *adj <= (raw * p.len() as f64).min(1.0));
    }
}

#[test]
#[should_panic(expected = "one entry per bin")]
fn psi_length_mismatch_panics() {
    psi(&[0.5, 0.5], &[1], PSI_EPSILON);
}
