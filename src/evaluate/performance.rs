//! Model performance once labels have joined their predictions: a confusion
//! matrix for classification, error sums for regression. Both are plain
//! sums, so they merge by addition.

use std::collections::BTreeMap;

use crate::model::ClassId;

/// What a joined (prediction, label) pair looks like.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    /// `score` is the predicted probability of the positive class (NaN when
    /// the event had none).
    Class {
        predicted: ClassId,
        actual: ClassId,
        score: f64,
    },
    Value {
        predicted: f64,
        actual: f64,
    },
}

/// Scored pairs kept exactly up to this many per window (for an exact ROC
/// AUC); beyond it scores are counted in [`SCORE_BINS`] equal-width bins.
pub const EXACT_SCORES: usize = 4096;
/// Score histogram resolution once a window has more than [`EXACT_SCORES`].
pub const SCORE_BINS: usize = 1000;

/// Probability-quality sums of the pairs whose actual class is one class.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ScoreSums {
    pub count: u64,
    /// Σ ln(clip(s)) and Σ ln(clip(1 − s)), clipped like sklearn's log loss.
    pub ln_score: f64,
    pub ln_complement: f64,
    /// Σ s² and Σ (1 − s)².
    pub score_squared: f64,
    pub complement_squared: f64,
}

/// Scores by actual class: exact pairs while few, then histograms.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ScoreState {
    pub sums: BTreeMap<ClassId, ScoreSums>,
    pub exact: Option<Vec<(f64, ClassId)>>,
    pub histograms: BTreeMap<ClassId, Vec<u64>>,
}

fn score_bin(score: f64) -> usize {
    ((score.clamp(0.0, 1.0) * SCORE_BINS as f64) as usize).min(SCORE_BINS - 1)
}

impl ScoreState {
    fn add(&mut self, score: f64, actual: ClassId) {
        let clipped = score.clamp(crate::stats::LOG_LOSS_EPS, 1.0 - crate::stats::LOG_LOSS_EPS);
        let sums = self.sums.entry(actual).or_default();
        sums.count += 1;
        sums.ln_score += clipped.ln();
        sums.ln_complement += (1.0 - clipped).ln();
        sums.score_squared += score * score;
        sums.complement_squared += (1.0 - score) * (1.0 - score);
        let total: u64 = self.sums.values().map(|s| s.count).sum();
        match &mut self.exact {
            Some(pairs) if total as usize <= EXACT_SCORES => pairs.push((score, actual)),
            None if total as usize <= EXACT_SCORES => self.exact = Some(vec![(score, actual)]),
            _ => {
                for (s, c) in self.exact.take().into_iter().flatten() {
                    self.histograms.entry(c).or_insert_with(|| vec![0; SCORE_BINS])[score_bin(s)] += 1;
                }
                self.histograms.entry(actual).or_insert_with(|| vec![0; SCORE_BINS])[score_bin(score)] += 1;
            }
        }
    }

    fn merge(&mut self, other: &ScoreState) {
        if self.sums.is_empty() && self.histograms.is_empty() {
            // Nothing scored yet: the other's state as it is (exact pairs stay exact).
            *self = other.clone();
            return;
        }
        for (class, sums) in &other.sums {
            let mine = self.sums.entry(*class).or_default();
            mine.count += sums.count;
            mine.ln_score += sums.ln_score;
            mine.ln_complement += sums.ln_complement;
            mine.score_squared += sums.score_squared;
            mine.complement_squared += sums.complement_squared;
        }
        let total: u64 = self.sums.values().map(|s| s.count).sum();
        // A side without scored pairs has neither exact pairs nor
        // histograms: the other side's exact pairs stay exact.
        if total as usize <= EXACT_SCORES && self.histograms.is_empty() && other.histograms.is_empty() {
            if let Some(theirs) = &other.exact {
                self.exact.get_or_insert_with(Vec::new).extend_from_slice(theirs);
            }
            return;
        }
        for (s, c) in self.exact.take().into_iter().flatten().chain(other.exact.iter().flatten().copied()) {
            self.histograms.entry(c).or_insert_with(|| vec![0; SCORE_BINS])[score_bin(s)] += 1;
        }
        for (class, bins) in &other.histograms {
            let mine = self.histograms.entry(*class).or_insert_with(|| vec![0; SCORE_BINS]);
            mine.iter_mut().zip(bins).for_each(|(a, b)| *a += b);
        }
    }

    /// Scored pairs.
    pub fn count(&self) -> u64 {
        self.sums.values().map(|s| s.count).sum()
    }

    /// Log loss with `positive` as the positive class.
    pub fn log_loss(&self, positive: ClassId) -> Option<f64> {
        let n = self.count();
        (n > 0).then(|| {
            let total: f64 =
                self.sums.iter().map(|(class, s)| if *class == positive { s.ln_score } else { s.ln_complement }).sum();
            -total / n as f64
        })
    }

    /// Brier score with `positive` as the positive class.
    pub fn brier(&self, positive: ClassId) -> Option<f64> {
        let n = self.count();
        (n > 0).then(|| {
            let total: f64 = self
                .sums
                .iter()
                .map(|(class, s)| if *class == positive { s.complement_squared } else { s.score_squared })
                .sum();
            total / n as f64
        })
    }

    /// ROC AUC with `positive` as the positive class: exact (average ranks
    /// for ties) while the window has at most [`EXACT_SCORES`] scored pairs,
    /// else from the histograms (pairs within one bin count as ties, so the
    /// error is at most the share of positive–negative pairs sharing a bin).
    pub fn roc_auc(&self, positive: ClassId) -> Option<f64> {
        if let Some(pairs) = &self.exact {
            let scores: Vec<f64> = pairs.iter().map(|p| p.0).collect();
            let labels: Vec<bool> = pairs.iter().map(|p| p.1 == positive).collect();
            return crate::stats::roc_auc(&scores, &labels);
        }
        let mut positives = vec![0u64; SCORE_BINS];
        let mut negatives = vec![0u64; SCORE_BINS];
        for (class, bins) in &self.histograms {
            let into = if *class == positive { &mut positives } else { &mut negatives };
            into.iter_mut().zip(bins).for_each(|(a, b)| *a += b);
        }
        let (p, n): (u64, u64) = (positives.iter().sum(), negatives.iter().sum());
        if p == 0 || n == 0 {
            return None;
        }
        let mut below = 0u64;
        let mut wins = 0.0;
        for (pos, neg) in positives.iter().zip(&negatives) {
            wins += *pos as f64 * (below as f64 + 0.5 * *neg as f64);
            below += neg;
        }
        Some(wins / (p as f64 * n as f64))
    }
}

/// Performance accumulators of one window.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PerformanceState {
    pub labeled: u64,
    /// (predicted, actual) → count.
    pub confusion: BTreeMap<(ClassId, ClassId), u64>,
    pub abs_error_sum: f64,
    pub squared_error_sum: f64,
    /// Sum of |error / actual| over labels that are not zero, and their count.
    pub abs_pct_error_sum: f64,
    pub pct_count: u64,
    /// Mean and sum of squared deviations of the actual values (Welford),
    /// for R²'s total sum of squares without cancellation.
    pub actual_mean: f64,
    pub actual_m2: f64,
    /// Scores of classification pairs that had one.
    pub scores: ScoreState,
    /// A shadow version's window: its pairs whose event the champion also
    /// paired (absent in older checkpoints).
    #[serde(default)]
    pub paired: PairedCounts,
}

/// A shadow's and its champion's outcomes on the same labelled events,
/// counted in the shadow's windows (`accuracy_vs_champion`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PairedCounts {
    /// Events both predicted and a label joined.
    pub events: u64,
    /// Of those, the ones the champion got right.
    pub champion_correct: u64,
    /// The champion right and the shadow wrong.
    pub champion_only: u64,
    /// The shadow right and the champion wrong.
    pub shadow_only: u64,
}

impl PairedCounts {
    /// Counts one event both versions predicted.
    pub fn add(&mut self, shadow_correct: bool, champion_correct: bool) {
        self.events += 1;
        self.champion_correct += u64::from(champion_correct);
        self.champion_only += u64::from(champion_correct && !shadow_correct);
        self.shadow_only += u64::from(shadow_correct && !champion_correct);
    }

    fn merge(&mut self, other: &PairedCounts) {
        self.events += other.events;
        self.champion_correct += other.champion_correct;
        self.champion_only += other.champion_only;
        self.shadow_only += other.shadow_only;
    }
}

impl PerformanceState {
    pub fn add(&mut self, outcome: Outcome) {
        self.labeled += 1;
        match outcome {
            Outcome::Class { predicted, actual, score } => {
                *self.confusion.entry((predicted, actual)).or_default() += 1;
                if score.is_finite() {
                    self.scores.add(score, actual);
                }
            }
            Outcome::Value { predicted, actual } => {
                let error = predicted - actual;
                self.abs_error_sum += error.abs();
                self.squared_error_sum += error * error;
                if actual != 0.0 {
                    self.abs_pct_error_sum += (error / actual).abs();
                    self.pct_count += 1;
                }
                let delta = actual - self.actual_mean;
                self.actual_mean += delta / self.labeled as f64;
                self.actual_m2 += delta * (actual - self.actual_mean);
            }
        }
    }

    pub fn merge(&mut self, other: &PerformanceState) {
        self.paired.merge(&other.paired);
        if other.labeled == 0 {
            return;
        }
        let (n1, n2) = (self.labeled as f64, other.labeled as f64);
        let delta = other.actual_mean - self.actual_mean;
        self.actual_mean += delta * n2 / (n1 + n2);
        self.actual_m2 += other.actual_m2 + delta * delta * n1 * n2 / (n1 + n2);
        self.labeled += other.labeled;
        self.scores.merge(&other.scores);
        for (k, v) in &other.confusion {
            *self.confusion.entry(*k).or_default() += v;
        }
        self.abs_error_sum += other.abs_error_sum;
        self.squared_error_sum += other.squared_error_sum;
        self.abs_pct_error_sum += other.abs_pct_error_sum;
        self.pct_count += other.pct_count;
    }

    /// Share of pairs whose predicted class equals the actual one.
    pub fn accuracy(&self) -> Option<f64> {
        let total: u64 = self.confusion.values().sum();
        let correct: u64 = self.confusion.iter().filter(|((p, a), _)| p == a).map(|(_, n)| n).sum();
        (total > 0).then(|| correct as f64 / total as f64)
    }

    /// (true positives, false positives, false negatives) for `positive`.
    pub fn binary_counts(&self, positive: ClassId) -> (u64, u64, u64) {
        let mut tp = 0;
        let mut fp = 0;
        let mut fn_ = 0;
        for (&(p, a), &n) in &self.confusion {
            match (p == positive, a == positive) {
                (true, true) => tp += n,
                (true, false) => fp += n,
                (false, true) => fn_ += n,
                (false, false) => {}
            }
        }
        (tp, fp, fn_)
    }

    /// Macro-averaged (precision, recall, f1) over the classes that occur
    /// as predicted or actual; a class's precision counts only when it was
    /// predicted, its recall only when it occurred (as sklearn with
    /// `zero_division` left out of the average).
    pub fn macro_scores(&self) -> Option<(f64, f64, f64)> {
        let classes: std::collections::BTreeSet<ClassId> = self.confusion.keys().flat_map(|&(p, a)| [p, a]).collect();
        if classes.is_empty() {
            return None;
        }
        let (mut precision, mut recall, mut f1) = (Vec::new(), Vec::new(), Vec::new());
        for &class in &classes {
            let (tp, fp, fn_) = self.binary_counts(class);
            if tp + fp > 0 {
                precision.push(tp as f64 / (tp + fp) as f64);
            }
            if tp + fn_ > 0 {
                recall.push(tp as f64 / (tp + fn_) as f64);
            }
            f1.push(2.0 * tp as f64 / (2 * tp + fp + fn_) as f64);
        }
        let mean = |v: &[f64]| if v.is_empty() { f64::NAN } else { v.iter().sum::<f64>() / v.len() as f64 };
        Some((mean(&precision), mean(&recall), mean(&f1)))
    }

    pub fn mae(&self) -> Option<f64> {
        (self.labeled > 0 && self.confusion.is_empty()).then(|| self.abs_error_sum / self.labeled as f64)
    }

    /// Standard deviation of the absolute errors (regression), from
    /// Σ|e| and Σe².
    pub fn absolute_error_std(&self) -> Option<f64> {
        let n = self.labeled as f64;
        (self.labeled > 1 && self.confusion.is_empty()).then(|| {
            let mean = self.abs_error_sum / n;
            ((self.squared_error_sum / n - mean * mean).max(0.0) * n / (n - 1.0)).sqrt()
        })
    }

    pub fn rmse(&self) -> Option<f64> {
        (self.labeled > 0 && self.confusion.is_empty()).then(|| (self.squared_error_sum / self.labeled as f64).sqrt())
    }

    /// Mean absolute percentage error as a fraction (not × 100), over
    /// non-zero labels.
    pub fn mape(&self) -> Option<f64> {
        (self.pct_count > 0).then(|| self.abs_pct_error_sum / self.pct_count as f64)
    }

    /// Coefficient of determination, 1 − SS_res / SS_tot.
    pub fn r2(&self) -> Option<f64> {
        if self.labeled < 2 || !self.confusion.is_empty() {
            return None;
        }
        let ss_tot = self.actual_m2;
        (ss_tot > 0.0).then(|| 1.0 - self.squared_error_sum / ss_tot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_windows_keep_roc_auc_within_the_histogram_bound_and_sums_exact() {
        let mut rng = crate::rng::Rng::new(3);
        let mut state = PerformanceState::default();
        let (mut scores, mut labels) = (Vec::new(), Vec::new());
        for _ in 0..20_000 {
            let positive = rng.uniform() < 0.3;
            let score = (rng.normal() * 0.2 + if positive { 0.65 } else { 0.4 }).clamp(0.0, 1.0);
            state.add(Outcome::Class { predicted: 0, actual: u32::from(positive), score });
            scores.push(score);
            labels.push(positive);
        }
        assert!(state.scores.exact.is_none(), "past the exact limit");
        let exact = crate::stats::roc_auc(&scores, &labels).unwrap();
        let binned = state.scores.roc_auc(1).unwrap();
        assert!((exact - binned).abs() < 1e-3, "{exact} vs {binned}");
        let brier: f64 =
            scores.iter().zip(&labels).map(|(s, l)| (s - f64::from(u8::from(*l))).powi(2)).sum::<f64>() / 20_000.0;
        assert!((state.scores.brier(1).unwrap() - brier).abs() < 1e-12);
        let log_loss = crate::stats::log_loss(&scores, &labels, crate::stats::LOG_LOSS_EPS);
        assert!((state.scores.log_loss(1).unwrap() - log_loss).abs() < 1e-9);
        // Merging two halves gives the same verdicts.
        let mut left = PerformanceState::default();
        let mut right = PerformanceState::default();
        for (i, (s, l)) in scores.iter().zip(&labels).enumerate() {
            let outcome = Outcome::Class { predicted: 0, actual: u32::from(*l), score: *s };
            if i % 2 == 0 { left.add(outcome) } else { right.add(outcome) }
        }
        left.merge(&right);
        assert!((left.scores.roc_auc(1).unwrap() - binned).abs() < 1e-12);
    }

    /// Regression (the agreement test, seed 1796092971870255210): merging
    /// a window's scored pairs into an empty state (a window whose pairs
    /// joined before it closed) moved them into histograms, and the
    /// window's exact ROC AUC became a binned one or none.
    #[test]
    fn merging_into_an_empty_state_keeps_scores_exact() {
        let mut pairs = PerformanceState::default();
        for (score, actual) in [(0.9, 1), (0.2, 0), (0.6, 1), (0.7, 0), (0.1, 0)] {
            pairs.add(Outcome::Class { predicted: u32::from(score > 0.5), actual, score });
        }
        let mut empty = PerformanceState::default();
        empty.merge(&pairs);
        assert_eq!(empty.scores.exact, pairs.scores.exact);
        assert_eq!(empty.scores.roc_auc(1), pairs.scores.roc_auc(1));
        assert_eq!(empty.scores.roc_auc(1), Some(5.0 / 6.0));
    }

    #[test]
    fn macro_scores_average_per_class_scores() {
        let mut state = PerformanceState::default();
        // class 0: tp 2, fp 1, fn 0; class 1: tp 1, fp 0, fn 1
        for (p, a) in [(0, 0), (0, 0), (0, 1), (1, 1)] {
            state.add(Outcome::Class { predicted: p, actual: a, score: f64::NAN });
        }
        let (precision, recall, f1) = state.macro_scores().unwrap();
        assert!((precision - (2.0 / 3.0 + 1.0) / 2.0).abs() < 1e-12);
        assert!((recall - (1.0 + 0.5) / 2.0).abs() < 1e-12);
        assert!((f1 - (0.8 + 2.0 / 3.0) / 2.0).abs() < 1e-12);
    }
}
