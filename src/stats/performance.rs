//! Binary-classification performance metrics on scores/probabilities and labels.

/// Default probability clipping for [`log_loss`]: `1e-15`, the long-standing
/// `eps` default of scikit-learn's `log_loss` (recent releases clip at the
/// float64 machine epsilon, 2.2·10⁻¹⁶, instead; the two agree unless a
/// probability is within 10⁻¹⁵ of 0 or 1).
pub const LOG_LOSS_EPS: f64 = 1e-15;

/// Area under the ROC curve, or `None` when only one class is present.
///
/// Computed as the normalised Mann–Whitney U statistic (Hanley & McNeil,
/// 1982):
///
/// ```text
/// AUC = (R₊ − n₊(n₊ + 1)/2) / (n₊ n₋)
/// ```
///
/// where `R₊` is the sum of the ranks of the positive scores among all
/// scores, tied scores receiving their **average rank**. That counts a tied
/// positive/negative pair as ½, which is exactly the trapezoidal area under
/// the ROC curve that `sklearn.metrics.roc_auc_score` computes. Checked
/// against `scipy.stats.mannwhitneyu(pos, neg).statistic / (n₊ n₋)` and a
/// numpy trapezoid (fixture key `roc_auc`).
///
/// Panics if the lengths differ. Scores must not be NaN.
pub fn roc_auc(scores: &[f64], labels: &[bool]) -> Option<f64> {
    assert_eq!(scores.len(), labels.len(), "roc_auc: one label per score");
    let n_pos = labels.iter().filter(|&&y| y).count();
    let n_neg = labels.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_unstable_by(|&i, &j| scores[i].total_cmp(&scores[j]));
    let mut rank_sum_pos = 0.0;
    let mut start = 0;
    while start < order.len() {
        let score = scores[order[start]];
        let mut end = start + 1;
        while end < order.len() && scores[order[end]] == score {
            end += 1;
        }
        // Ranks start..end (0-based) share the average 1-based rank.
        let average_rank = (start + end + 1) as f64 / 2.0;
        let positives = order[start..end].iter().filter(|&&i| labels[i]).count();
        rank_sum_pos += average_rank * positives as f64;
        start = end;
    }
    let (p, n) = (n_pos as f64, n_neg as f64);
    Some((rank_sum_pos - p * (p + 1.0) / 2.0) / (p * n))
}

/// Mean binary cross-entropy (log loss), natural logarithm.
///
/// Definition (scikit-learn `log_loss` for binary labels):
///
/// ```text
/// p_i ← clip(p_i, eps, 1 − eps)
/// L   = −(1/N) Σ_i [ y_i ln p_i + (1 − y_i) ln(1 − p_i) ]
/// ```
///
/// `probabilities` are P(label = true). Use [`LOG_LOSS_EPS`] for `eps` unless
/// configured. `NaN` for empty input; panics if the lengths differ.
pub fn log_loss(probabilities: &[f64], labels: &[bool], eps: f64) -> f64 {
    assert_eq!(probabilities.len(), labels.len(), "log_loss: one label per probability");
    if probabilities.is_empty() {
        return f64::NAN;
    }
    let sum: f64 = probabilities
        .iter()
        .zip(labels)
        .map(|(&p, &y)| {
            let p = p.clamp(eps, 1.0 - eps);
            if y { p.ln() } else { (1.0 - p).ln() }
        })
        .sum();
    -sum / probabilities.len() as f64
}

/// Brier score: mean squared difference between the predicted probability of
/// the positive class and the 0/1 outcome (Brier, 1950),
/// `B = (1/N) Σ_i (p_i − y_i)²`, as `sklearn.metrics.brier_score_loss`.
///
/// `NaN` for empty input; panics if the lengths differ.
pub fn brier(probabilities: &[f64], labels: &[bool]) -> f64 {
    assert_eq!(probabilities.len(), labels.len(), "brier: one label per probability");
    if probabilities.is_empty() {
        return f64::NAN;
    }
    let sum: f64 = probabilities
        .iter()
        .zip(labels)
        .map(|(&p, &y)| {
            let d = p - if y { 1.0 } else { 0.0 };
            d * d
        })
        .sum();
    sum / probabilities.len() as f64
}
