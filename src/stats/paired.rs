//! Paired comparison of two classifiers scored on the same labelled events:
//! the exact McNemar test.
//!
//! Only the discordant events carry information: `champion_only` events
//! the champion got right and the challenger wrong, `challenger_only` the
//! reverse. Under "equally accurate" each discordant event is a fair coin,
//! so the count of `champion_only` among the `n = champion_only +
//! challenger_only` is Binomial(n, 1/2). Checked against scipy's
//! `binomtest(champion_only, n, 0.5, alternative='greater')` on
//! `tests/fixtures/shadow/mcnemar.json` (made by
//! `tests/fixtures/shadow/generate.py`).

/// One-sided exact McNemar p-value for "the challenger is less accurate
/// than the champion": P(X ≥ `champion_only`) with X ~ Binomial(n, 1/2),
/// n the discordant events. 1 without discordant events. Summed in log
/// space term by term (O(n), once per window), so it neither overflows nor
/// underflows before the result does.
pub fn mcnemar_worse_p_value(champion_only: u64, challenger_only: u64) -> f64 {
    let n = champion_only.saturating_add(challenger_only);
    if n == 0 || champion_only == 0 {
        return 1.0;
    }
    if 2 * champion_only > n {
        // Past the mode the terms fall from the first one on.
        upper_tail_from_mode(n, champion_only)
    } else {
        // At or before the mode: one minus the lower tail below
        // `champion_only`, whose terms fall from its last one down.
        let lower = (0..champion_only).rev();
        (1.0 - tail_sum(n, champion_only - 1, lower)).clamp(0.0, 1.0)
    }
}

/// P(X ≥ k) for X ~ Binomial(n, 1/2), k past n / 2.
fn upper_tail_from_mode(n: u64, k: u64) -> f64 {
    tail_sum(n, k, k..=n).min(1.0)
}

/// The sum of P(X = j) over `ks` (falling terms, the first at `first`),
/// each term relative to the first, stopping once terms no longer count.
fn tail_sum(n: u64, first: u64, ks: impl Iterator<Item = u64>) -> f64 {
    let ln_first = ln_binomial_half(n, first);
    let mut sum = 0.0;
    let mut ln_term = ln_first;
    let mut previous = first;
    for k in ks {
        // C(n, k + 1) / C(n, k) = (n − k) / (k + 1), and its inverse going down.
        if k > previous {
            ln_term += ((n - previous) as f64 / (previous + 1) as f64).ln();
        } else if k < previous {
            ln_term += ((previous) as f64 / (n - previous + 1) as f64).ln();
        }
        previous = k;
        let relative = (ln_term - ln_first).exp();
        sum += relative;
        if relative < 1e-18 * sum {
            break;
        }
    }
    ln_first.exp() * sum
}

/// ln(C(n, k) / 2^n).
fn ln_binomial_half(n: u64, k: u64) -> f64 {
    let k = k.min(n - k);
    let mut ln = 0.0;
    for i in 1..=k {
        ln += ((n - k + i) as f64 / i as f64).ln();
    }
    ln - n as f64 * std::f64::consts::LN_2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct Case {
        champion_only: u64,
        challenger_only: u64,
        p_value: f64,
    }

    /// Agreement with scipy's exact binomial test to 1e-9 (relative in the
    /// tail).
    #[test]
    fn agrees_with_scipy_binomtest() {
        let cases: Vec<Case> =
            serde_json::from_str(include_str!("../../tests/fixtures/shadow/mcnemar.json")).expect("fixture parses");
        assert!(cases.len() >= 10);
        for case in cases {
            let p = mcnemar_worse_p_value(case.champion_only, case.challenger_only);
            assert!(
                (p - case.p_value).abs() <= 1e-9 * case.p_value,
                "({}, {}): {p:e} vs scipy {:e}",
                case.champion_only,
                case.challenger_only,
                case.p_value
            );
        }
    }

    #[test]
    fn no_discordant_events_prove_nothing() {
        assert_eq!(mcnemar_worse_p_value(0, 0), 1.0);
        assert_eq!(mcnemar_worse_p_value(0, 7), 1.0);
    }
}
