//! One model's labelled rows in memory and the gate's metrics over them,
//! each row counted as often as its weight says: weight one for every row
//! gives the metric, the multiplicities of a bootstrap resample give the
//! metric on that resample (the same code, so the two cannot disagree).
//!
//! Definitions follow the daemon's performance rows (docs/REFERENCE.md):
//! binary precision, recall and f1 of the positive class, macro averages
//! over the classes that occur for multiclass models, ROC AUC as the
//! Mann–Whitney statistic with ties counted half, log loss with scores
//! clipped at 1e-15, Brier, mae, rmse, mape over non-zero labels, r2, and
//! latency percentiles with numpy's linear interpolation.

use super::{GateMetrics, Metric, MetricKind};

/// The predictions and labels of the rows.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcomes {
    /// Classification: class ids (dense, `classes` of them). `positive` is
    /// the positive class of a binary model (`None`: multiclass, macro
    /// averages); `scores` the probability of the positive class per row
    /// (NaN where a row has none).
    Classes { predicted: Vec<u32>, actual: Vec<u32>, classes: usize, positive: Option<u32>, scores: Option<Vec<f64>> },
    /// Regression.
    Values { predicted: Vec<f64>, actual: Vec<f64> },
}

/// Rows of one model, with the orders the rank-based metrics need.
#[derive(Debug, Clone)]
pub struct EvaluationSample {
    pub outcomes: Outcomes,
    /// Serving latency in ms per row (NaN where a row has none).
    pub latency: Option<Vec<f64>>,
    /// Rows with a score, by score.
    score_order: Vec<usize>,
    /// Rows with a latency, by latency.
    latency_order: Vec<usize>,
}

fn finite_order(values: Option<&Vec<f64>>) -> Vec<usize> {
    let Some(values) = values else { return Vec::new() };
    let mut order: Vec<usize> = (0..values.len()).filter(|&i| values[i].is_finite()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    order
}

impl EvaluationSample {
    /// Panics if the columns differ in length (a programming error).
    pub fn new(outcomes: Outcomes, latency: Option<Vec<f64>>) -> EvaluationSample {
        let rows = match &outcomes {
            Outcomes::Classes { predicted, actual, scores, .. } => {
                assert_eq!(predicted.len(), actual.len());
                if let Some(scores) = scores {
                    assert_eq!(scores.len(), actual.len());
                }
                actual.len()
            }
            Outcomes::Values { predicted, actual } => {
                assert_eq!(predicted.len(), actual.len());
                actual.len()
            }
        };
        if let Some(latency) = &latency {
            assert_eq!(latency.len(), rows);
        }
        let score_order = match &outcomes {
            Outcomes::Classes { scores, positive: Some(_), .. } => finite_order(scores.as_ref()),
            _ => Vec::new(),
        };
        let latency_order = finite_order(latency.as_ref());
        EvaluationSample { outcomes, latency, score_order, latency_order }
    }

    pub fn len(&self) -> usize {
        match &self.outcomes {
            Outcomes::Classes { actual, .. } => actual.len(),
            Outcomes::Values { actual, .. } => actual.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the rows can have `metric` at all: the task fits, and scores
    /// or latencies are there when it needs them.
    pub fn supports(&self, metric: Metric) -> bool {
        match (metric.kind(), &self.outcomes) {
            (MetricKind::Any, _) => true,
            (MetricKind::Classification, Outcomes::Classes { .. }) => true,
            (MetricKind::Scores, Outcomes::Classes { .. }) => !self.score_order.is_empty(),
            (MetricKind::Regression, Outcomes::Values { .. }) => true,
            (MetricKind::Latency, _) => !self.latency_order.is_empty(),
            _ => false,
        }
    }

    /// Per row, whether the prediction was right (classification only).
    pub fn correct(&self) -> Option<Vec<bool>> {
        match &self.outcomes {
            Outcomes::Classes { predicted, actual, .. } => {
                Some(predicted.iter().zip(actual).map(|(p, a)| p == a).collect())
            }
            Outcomes::Values { .. } => None,
        }
    }

    /// Every metric the rows support and define, each row counted once.
    pub fn metrics(&self) -> GateMetrics {
        let ones = vec![1u32; self.len()];
        let values = Metric::ALL
            .into_iter()
            .filter(|&metric| self.supports(metric))
            .filter_map(|metric| self.metric(metric, &ones).map(|value| (metric, value)))
            .collect();
        GateMetrics { values }
    }

    /// `metric` with row i counted `weights[i]` times; `None` when the rows
    /// do not support or define it. Panics if `weights` is not one per row.
    pub fn metric(&self, metric: Metric, weights: &[u32]) -> Option<f64> {
        assert_eq!(weights.len(), self.len(), "one weight per row");
        if !self.supports(metric) {
            return None;
        }
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        if metric == Metric::LabeledCount {
            return Some(total as f64);
        }
        if total == 0 {
            return None;
        }
        if let Some(quantile) = metric.latency_quantile() {
            let latency = self.latency.as_ref()?;
            return weighted_quantile(latency, &self.latency_order, weights, quantile);
        }
        match &self.outcomes {
            Outcomes::Classes { predicted, actual, classes, positive, scores } => {
                let counts = ClassCounts::new(predicted, actual, *classes, weights);
                match metric {
                    Metric::Accuracy => Some(counts.correct as f64 / total as f64),
                    Metric::Precision | Metric::Recall | Metric::F1 => match positive {
                        Some(positive) => counts.binary(metric, *positive as usize),
                        None => counts.macro_average(metric),
                    },
                    Metric::RocAuc => {
                        weighted_roc_auc(scores.as_ref()?, actual, positive.as_ref()?, &self.score_order, weights)
                    }
                    Metric::LogLoss | Metric::Brier => {
                        let (scores, positive) = (scores.as_ref()?, (*positive)?);
                        let (mut sum, mut count) = (0.0, 0u64);
                        for &i in &self.score_order {
                            let w = weights[i];
                            if w == 0 {
                                continue;
                            }
                            let y = actual[i] == positive;
                            let s = scores[i];
                            let loss = if metric == Metric::Brier {
                                let d = s - if y { 1.0 } else { 0.0 };
                                d * d
                            } else {
                                let clipped = s.clamp(crate::stats::LOG_LOSS_EPS, 1.0 - crate::stats::LOG_LOSS_EPS);
                                -(if y { clipped.ln() } else { (1.0 - clipped).ln() })
                            };
                            sum += f64::from(w) * loss;
                            count += u64::from(w);
                        }
                        (count > 0).then(|| sum / count as f64)
                    }
                    _ => None,
                }
            }
            Outcomes::Values { predicted, actual } => regression_metric(metric, predicted, actual, weights, total),
        }
    }
}

/// Per-class true positives, false positives and false negatives.
struct ClassCounts {
    correct: u64,
    true_positives: Vec<u64>,
    false_positives: Vec<u64>,
    false_negatives: Vec<u64>,
}

impl ClassCounts {
    fn new(predicted: &[u32], actual: &[u32], classes: usize, weights: &[u32]) -> ClassCounts {
        let mut counts = ClassCounts {
            correct: 0,
            true_positives: vec![0; classes],
            false_positives: vec![0; classes],
            false_negatives: vec![0; classes],
        };
        for ((&p, &a), &w) in predicted.iter().zip(actual).zip(weights) {
            let w = u64::from(w);
            if p == a {
                counts.correct += w;
                counts.true_positives[p as usize] += w;
            } else {
                counts.false_positives[p as usize] += w;
                counts.false_negatives[a as usize] += w;
            }
        }
        counts
    }

    fn binary(&self, metric: Metric, class: usize) -> Option<f64> {
        let (tp, fp, fn_) = (self.true_positives[class], self.false_positives[class], self.false_negatives[class]);
        let ratio = |numerator: u64, denominator: u64| (denominator > 0).then(|| numerator as f64 / denominator as f64);
        match metric {
            Metric::Precision => ratio(tp, tp + fp),
            Metric::Recall => ratio(tp, tp + fn_),
            _ => ratio(2 * tp, 2 * tp + fp + fn_),
        }
    }

    /// The mean over the classes that occur (predicted or actual) of those
    /// that define the metric, as the daemon's macro averages.
    fn macro_average(&self, metric: Metric) -> Option<f64> {
        let per_class: Vec<f64> = (0..self.true_positives.len()).filter_map(|c| self.binary(metric, c)).collect();
        (!per_class.is_empty()).then(|| per_class.iter().sum::<f64>() / per_class.len() as f64)
    }
}

/// ROC AUC over the rows with a score, `order` sorting them by score; tied
/// scores count half (the Mann–Whitney statistic, as `crate::stats::roc_auc`).
fn weighted_roc_auc(scores: &[f64], actual: &[u32], positive: &u32, order: &[usize], weights: &[u32]) -> Option<f64> {
    let (mut wins, mut negatives_below, mut positives_total) = (0.0f64, 0u64, 0u64);
    let mut start = 0;
    while start < order.len() {
        let score = scores[order[start]];
        let mut end = start;
        let (mut positives, mut negatives) = (0u64, 0u64);
        while end < order.len() && scores[order[end]] == score {
            let i = order[end];
            let w = u64::from(weights[i]);
            if actual[i] == *positive {
                positives += w
            } else {
                negatives += w
            }
            end += 1;
        }
        wins += positives as f64 * (negatives_below as f64 + 0.5 * negatives as f64);
        negatives_below += negatives;
        positives_total += positives;
        start = end;
    }
    let pairs = positives_total as f64 * negatives_below as f64;
    (pairs > 0.0).then(|| wins / pairs)
}

/// The `quantile` of the values (rows in `order`, sorted), each repeated by
/// its weight, with numpy's default linear interpolation.
fn weighted_quantile(values: &[f64], order: &[usize], weights: &[u32], quantile: f64) -> Option<f64> {
    let count: u64 = order.iter().map(|&i| u64::from(weights[i])).sum();
    if count == 0 {
        return None;
    }
    let rank = quantile * (count - 1) as f64;
    let below = rank.floor() as u64;
    let fraction = rank - below as f64;
    // The values at expanded ranks `below` and `below + 1`.
    let mut seen = 0u64;
    let mut lower = None;
    for &i in order {
        let w = u64::from(weights[i]);
        if w == 0 {
            continue;
        }
        seen += w;
        if lower.is_none() && below < seen {
            lower = Some(values[i]);
        }
        if below + 1 < seen || seen == count {
            let lower = lower.unwrap_or(values[i]);
            let upper = values[i];
            return Some(lower + fraction * (upper - lower));
        }
    }
    None
}

fn regression_metric(metric: Metric, predicted: &[f64], actual: &[f64], weights: &[u32], total: u64) -> Option<f64> {
    let n = total as f64;
    let weighted = || {
        predicted.iter().zip(actual).zip(weights).filter(|(_, w)| **w > 0).map(|((p, a), w)| (*p, *a, f64::from(*w)))
    };
    match metric {
        Metric::Mae => Some(weighted().map(|(p, a, w)| w * (p - a).abs()).sum::<f64>() / n),
        Metric::Rmse => Some((weighted().map(|(p, a, w)| w * (p - a) * (p - a)).sum::<f64>() / n).sqrt()),
        Metric::Mape => {
            let (sum, count) = weighted()
                .filter(|(_, a, _)| *a != 0.0)
                .fold((0.0, 0.0), |(sum, count), (p, a, w)| (sum + w * ((p - a) / a).abs(), count + w));
            (count > 0.0).then(|| sum / count)
        }
        Metric::R2 => {
            if total < 2 {
                return None;
            }
            let mean = weighted().map(|(_, a, w)| w * a).sum::<f64>() / n;
            let total_squares: f64 = weighted().map(|(_, a, w)| w * (a - mean) * (a - mean)).sum();
            let residual_squares: f64 = weighted().map(|(p, a, w)| w * (p - a) * (p - a)).sum();
            (total_squares > 0.0).then(|| 1.0 - residual_squares / total_squares)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binary(predicted: &[u32], actual: &[u32], scores: &[f64]) -> EvaluationSample {
        let outcomes = Outcomes::Classes {
            predicted: predicted.to_vec(),
            actual: actual.to_vec(),
            classes: 2,
            positive: Some(1),
            scores: Some(scores.to_vec()),
        };
        EvaluationSample::new(outcomes, None)
    }

    #[test]
    fn weights_count_rows_as_often_as_repeating_them() {
        let sample = binary(&[1, 0, 1, 0, 1], &[1, 0, 0, 1, 1], &[0.9, 0.2, 0.6, 0.6, 0.4]);
        let repeated = binary(&[1, 0, 0, 0, 1, 1, 1], &[1, 0, 0, 1, 1, 1, 1], &[0.9, 0.2, 0.2, 0.6, 0.4, 0.4, 0.4]);
        let weights = [1, 2, 0, 1, 3];
        for metric in [Metric::Accuracy, Metric::Precision, Metric::Recall, Metric::F1, Metric::RocAuc, Metric::Brier] {
            let a = sample.metric(metric, &weights).unwrap();
            let b = repeated.metric(metric, &[1; 7]).unwrap();
            assert!((a - b).abs() < 1e-12, "{metric}: {a} vs {b}");
        }
        let auc = crate::stats::roc_auc(&[0.9, 0.2, 0.6, 0.6, 0.4], &[true, false, false, true, true]).unwrap();
        assert!((sample.metric(Metric::RocAuc, &[1; 5]).unwrap() - auc).abs() < 1e-12);
    }

    #[test]
    fn weighted_quantiles_interpolate_like_numpy() {
        let values = [3.0, 1.0, 2.0, 10.0];
        let order = finite_order(Some(&values.to_vec()));
        // numpy.percentile([1, 2, 3, 10], 95) = 8.95; [1, 1, 2, 10, 10, 10] p50 = 6.0.
        assert!((weighted_quantile(&values, &order, &[1, 1, 1, 1], 0.95).unwrap() - 8.95).abs() < 1e-12);
        assert!((weighted_quantile(&values, &order, &[0, 2, 1, 3], 0.5).unwrap() - 6.0).abs() < 1e-12);
        assert_eq!(weighted_quantile(&values, &order, &[0, 0, 0, 0], 0.5), None);
        assert_eq!(weighted_quantile(&values, &order, &[0, 0, 0, 1], 0.99), Some(10.0));
    }

    #[test]
    fn undefined_metrics_are_absent_not_nan() {
        let sample = binary(&[0, 0], &[0, 0], &[0.1, 0.2]);
        let metrics = sample.metrics();
        assert_eq!(metrics.get(Metric::Accuracy), Some(1.0));
        assert_eq!(metrics.get(Metric::Precision), None, "nothing predicted positive");
        assert_eq!(metrics.get(Metric::RocAuc), None, "one class only");
        assert_eq!(metrics.get(Metric::LatencyP95), None);
        assert_eq!(metrics.get(Metric::Mae), None);
    }

    #[test]
    fn multiclass_macro_averages_agree_with_the_daemons_window_rows() {
        let seed = 11;
        println!("seed {seed}");
        let mut rng = crate::rng::Rng::new(seed);
        let mut state = crate::evaluate::PerformanceState::default();
        let (mut predicted, mut actual) = (Vec::new(), Vec::new());
        for _ in 0..500 {
            let a = (rng.next_u64() % 4) as u32;
            // Class 3 is never predicted, so its precision is undefined.
            let p = if rng.uniform() < 0.6 { a.min(2) } else { (rng.next_u64() % 3) as u32 };
            state.add(crate::evaluate::Outcome::Class { predicted: p, actual: a, score: f64::NAN });
            predicted.push(p);
            actual.push(a);
        }
        let sample = EvaluationSample::new(
            Outcomes::Classes { predicted, actual, classes: 4, positive: None, scores: None },
            None,
        );
        let metrics = sample.metrics();
        let (precision, recall, f1) = state.macro_scores().unwrap();
        assert!((metrics.get(Metric::Precision).unwrap() - precision).abs() < 1e-12);
        assert!((metrics.get(Metric::Recall).unwrap() - recall).abs() < 1e-12);
        assert!((metrics.get(Metric::F1).unwrap() - f1).abs() < 1e-12);
        assert!((metrics.get(Metric::Accuracy).unwrap() - state.accuracy().unwrap()).abs() < 1e-12);
        assert_eq!(metrics.get(Metric::RocAuc), None, "no ROC AUC for multiclass models");
    }
}
