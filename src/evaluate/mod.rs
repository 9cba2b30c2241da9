//! Evaluate: the per-window statistics state and the `window_metrics` rows it
//! yields when the window closes.
//!
//! A [`WindowState`] holds one mergeable summary per feature plus the
//! model-level summaries (prediction, score, latency) and, once labels join,
//! a [`PerformanceState`]. Memory per window is bounded by the number of
//! features and categories, never by the number of events. Drift statistics
//! against a baseline (next issue) read the same summaries at close time.
//!
//! Architecture invariant: pure computation; no I/O, no clock.

pub mod categorical;
pub mod numeric;
pub mod performance;

use std::sync::Arc;

use datafusion::arrow::array::{Array, Float64Array, UInt32Array};

pub use categorical::CategoricalSummary;
pub use numeric::NumericSummary;
pub use performance::{Outcome, PerformanceState};

use crate::baseline::thresholds;
use crate::decode::{FeatureArray, PredictionArray};
use crate::model::reference::{self, FeatureReference};
use crate::model::{FeatureKind, ModelState, SeriesId};
use crate::sketch;
use crate::window_metrics::WindowMetricRow;

/// The summary of one feature in one window.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum FeatureSummary {
    Numeric(Box<NumericSummary>),
    Categorical(CategoricalSummary),
}

impl FeatureSummary {
    fn new(kind: FeatureKind) -> Self {
        match kind {
            FeatureKind::Numeric => FeatureSummary::Numeric(Box::default()),
            FeatureKind::Categorical => FeatureSummary::Categorical(CategoricalSummary::default()),
        }
    }
}

/// Per-feature summary plus its type-error count and, when the feature has
/// a baseline, the window's counts in the baseline's bins.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct FeatureState {
    pub summary: FeatureSummary,
    /// Values whose JSON type did not match the feature (also counted missing).
    pub type_errors: u64,
    /// Numeric features with a baseline: values per baseline bin.
    pub reference_bins: Vec<u64>,
    /// Numeric features with a baseline: values outside its [min, max].
    pub out_of_range: u64,
    /// The window began under another baseline whose bins its values could
    /// not be re-counted into (see [`WindowState::reattach`]): its binned
    /// drift rows (`psi`, `jensen_shannon`, `hellinger`,
    /// `out_of_range_rate`) are left out.
    #[serde(default, skip_serializing_if = "is_false")]
    pub bins_lost: bool,
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// The distribution of predictions in a window.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum PredictionSummary {
    /// Count per class id.
    Classes(Vec<u64>),
    Values(Box<NumericSummary>),
}

/// The columns of one group of rows (one series, one set of windows) as the
/// window stage hands them over.
pub struct GroupColumns<'a> {
    pub len: usize,
    pub features: &'a [FeatureArray],
    pub prediction: &'a PredictionArray,
    pub score: &'a Float64Array,
    pub latency_ms: &'a Float64Array,
}

/// Everything kept for one (model, series, window).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct WindowState {
    pub events: u64,
    pub features: Vec<Option<FeatureState>>,
    pub prediction: PredictionSummary,
    pub score: NumericSummary,
    pub latency_ms: NumericSummary,
    pub performance: PerformanceState,
    /// Scores per bin of the baseline's score profile (when it has one).
    pub score_bins: Vec<u64>,
    /// Regression predictions per bin of the baseline's prediction profile.
    pub prediction_bins: Vec<u64>,
    /// `score_bins` / `prediction_bins` are not those of the current
    /// baseline (see [`WindowState::reattach`]): no `score_psi` /
    /// `prediction_psi` row.
    #[serde(default, skip_serializing_if = "is_false")]
    pub score_bins_lost: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub prediction_bins_lost: bool,
}

/// A feature id meaning "not tracked here" (over `max_features_per_model`).
pub const NOT_TRACKED: u32 = u32::MAX;

/// Which binned columns of a model's windows a changed baseline
/// invalidated (what [`WindowState::reattach`] re-counts).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Rebin {
    /// By feature id.
    pub features: Vec<bool>,
    pub score: bool,
    pub prediction: bool,
}

impl Rebin {
    pub fn any(&self) -> bool {
        self.score || self.prediction || self.features.iter().any(|f| *f)
    }
}

/// Counts `values` into fresh bins of `reference` (with the values outside
/// its range); `None` without a numeric reference.
fn recount(reference: Option<&FeatureReference>, values: &[f64]) -> Option<(Vec<u64>, u64)> {
    let Some(FeatureReference::Numeric(r)) = reference else { return None };
    let mut bins = vec![0; r.proportions.len()];
    let mut out_of_range = 0;
    for &value in values {
        if let Some(bin) = bins.get_mut(r.bin(value)) {
            *bin += 1;
        }
        out_of_range += u64::from(r.out_of_range(value));
    }
    Some((bins, out_of_range))
}

fn numeric_bins(reference: Option<&FeatureReference>) -> Vec<u64> {
    match reference {
        Some(FeatureReference::Numeric(r)) => vec![0; r.proportions.len()],
        _ => Vec::new(),
    }
}

fn count_into_bins(bins: &mut [u64], reference: Option<&FeatureReference>, values: &Float64Array) {
    if let Some(FeatureReference::Numeric(r)) = reference
        && !bins.is_empty()
    {
        for value in values.iter().flatten() {
            if let Some(bin) = bins.get_mut(r.bin(value)) {
                *bin += 1;
            }
        }
    }
}

impl WindowState {
    pub fn new(model: &ModelState) -> Self {
        let mut state = WindowState::empty(model.is_classification());
        state.score_bins = numeric_bins(model.reference.as_ref().and_then(|r| r.score.as_ref()));
        state.prediction_bins = numeric_bins(model.reference.as_ref().and_then(|r| r.prediction.as_ref()));
        state
    }

    /// A state without events nor baseline bins.
    pub fn empty(classification: bool) -> Self {
        WindowState {
            events: 0,
            features: Vec::new(),
            prediction: if classification {
                PredictionSummary::Classes(Vec::new())
            } else {
                PredictionSummary::Values(Box::default())
            },
            score: NumericSummary::new(),
            latency_ms: NumericSummary::new(),
            performance: PerformanceState::default(),
            score_bins: Vec::new(),
            prediction_bins: Vec::new(),
            score_bins_lost: false,
            prediction_bins_lost: false,
        }
    }

    /// Re-attaches a window restored from a checkpoint to the model's
    /// current baseline, which bins the columns `rebin` names differently
    /// (or not at all) than the one the window began under. A column's bin
    /// counts (and values out of range) are counted again from the
    /// window's values when it still holds them all (at most
    /// [`numeric::EXACT_QUANTILE_LIMIT`]), so its rows are those the new
    /// baseline would have given from the start; otherwise they are marked
    /// lost and the window emits no binned drift row for that column (its
    /// other rows are unaffected). A whole-model window (`whole_model`)
    /// also gets a state for each baseline feature it lacks, as if the
    /// baseline had been there from the start. Returns whether every
    /// column could be re-counted.
    pub fn reattach(&mut self, model: &ModelState, rebin: &Rebin, whole_model: bool) -> bool {
        let mut exact = true;
        for (feature, state) in self.features.iter_mut().enumerate() {
            let Some(state) = state else { continue };
            if !rebin.features.get(feature).copied().unwrap_or(false) {
                continue;
            }
            let reference = model.feature_refs.get(feature).and_then(Option::as_deref);
            let values = match &state.summary {
                FeatureSummary::Numeric(s) => s.exact_values(),
                FeatureSummary::Categorical(_) => Some(&[][..]),
            };
            (state.reference_bins, state.out_of_range, state.bins_lost) = match (&state.summary, values) {
                (FeatureSummary::Numeric(_), Some(values)) => match recount(reference, values) {
                    Some((bins, out_of_range)) => (bins, out_of_range, false),
                    None => (Vec::new(), 0, false),
                },
                (FeatureSummary::Numeric(_), None) => {
                    let lost = matches!(reference, Some(FeatureReference::Numeric(_)));
                    exact &= !lost;
                    (Vec::new(), 0, lost)
                }
                (FeatureSummary::Categorical(_), _) => (Vec::new(), 0, false),
            };
        }
        let reference = model.reference.as_deref();
        if rebin.score {
            let score = reference.and_then(|r| r.score.as_ref());
            (self.score_bins, self.score_bins_lost) = match (self.score.exact_values(), score) {
                (_, None) => (Vec::new(), false),
                (Some(values), reference) => (recount(reference, values).map(|(b, _)| b).unwrap_or_default(), false),
                (None, Some(_)) => (Vec::new(), true),
            };
            exact &= !self.score_bins_lost;
        }
        if rebin.prediction {
            let prediction = reference.and_then(|r| r.prediction.as_ref());
            let values = match &self.prediction {
                PredictionSummary::Values(s) => s.exact_values(),
                PredictionSummary::Classes(_) => Some(&[][..]),
            };
            (self.prediction_bins, self.prediction_bins_lost) = match (values, prediction) {
                (_, None) => (Vec::new(), false),
                (Some(values), reference) => (recount(reference, values).map(|(b, _)| b).unwrap_or_default(), false),
                (None, Some(_)) => (Vec::new(), true),
            };
            exact &= !self.prediction_bins_lost;
        }
        if whole_model {
            for feature in 0..model.features.len() {
                if model.feature_refs[feature].is_some() && self.features.get(feature).is_none_or(Option::is_none) {
                    self.feature_mut(model, feature);
                }
            }
        }
        exact
    }

    fn feature_mut(&mut self, model: &ModelState, feature: usize) -> &mut FeatureState {
        if self.features.len() <= feature {
            self.features.resize_with(feature + 1, || None);
        }
        self.features[feature].get_or_insert_with(|| {
            let reference_bins = match model.feature_refs.get(feature).and_then(Option::as_deref) {
                Some(FeatureReference::Numeric(r)) => vec![0; r.proportions.len()],
                _ => Vec::new(),
            };
            let mut state = FeatureState {
                summary: FeatureSummary::new(model.features[feature].kind),
                type_errors: 0,
                reference_bins,
                out_of_range: 0,
                bins_lost: false,
            };
            // Events of this window seen before the feature existed lacked it.
            match &mut state.summary {
                FeatureSummary::Numeric(s) => s.add_missing(self.events),
                FeatureSummary::Categorical(s) => s.add_missing(self.events),
            }
            state
        })
    }

    /// Adds a group of rows. `max_categories` caps distinct categorical
    /// values; returns how many values the cap pooled into `__other__`.
    ///
    /// A feature gets a state in this window (and so rows when it closes)
    /// once a value of it arrives here — or from the start, in a
    /// whole-model series (`whole_model`), when the baseline profiles it,
    /// so a baseline feature that stops arriving shows `missing_rate` 1.
    /// Creating states lazily keeps the work per window proportional to the
    /// (feature, series) pairs that occur, not to features × series: a
    /// producer that adds many features and many segments cannot make every
    /// window emit the product.
    pub fn update(
        &mut self,
        model: &ModelState,
        columns: &GroupColumns<'_>,
        max_categories: usize,
        whole_model: bool,
    ) -> u64 {
        let mut pooled = 0;
        for (feature, array) in columns.features.iter().enumerate() {
            let has_state = self.features.get(feature).is_some_and(Option::is_some);
            if !has_state {
                let profiled = model.feature_refs.get(feature).is_some_and(Option::is_some);
                let all_missing = match array {
                    FeatureArray::Numeric(a) => a.null_count() == a.len(),
                    FeatureArray::Categorical(a) => a.null_count() == a.len(),
                };
                if all_missing && !(whole_model && profiled) {
                    continue; // created (counting these rows as missing) when a value comes
                }
            }
            let state = self.feature_mut(model, feature);
            match (&mut state.summary, array) {
                (FeatureSummary::Numeric(s), FeatureArray::Numeric(a)) => {
                    s.update(a);
                    if let Some(FeatureReference::Numeric(r)) =
                        model.feature_refs.get(feature).and_then(Option::as_deref)
                        && !state.bins_lost
                    {
                        for value in a.iter().flatten() {
                            if let Some(bin) = state.reference_bins.get_mut(r.bin(value)) {
                                *bin += 1;
                            }
                            state.out_of_range += u64::from(r.out_of_range(value));
                        }
                    }
                }
                (FeatureSummary::Categorical(s), FeatureArray::Categorical(a)) => pooled += s.update(a, max_categories),
                // A kind cannot change once set; keep the state consistent anyway.
                (FeatureSummary::Numeric(s), _) => s.add_missing(columns.len as u64),
                (FeatureSummary::Categorical(s), _) => s.add_missing(columns.len as u64),
            }
        }
        // A whole-model series profiles every baseline feature from the
        // start, also those this batch has no column for (the decoder adds
        // columns up to the highest feature it has met, so whether one is
        // there depends on what else it has decoded).
        if whole_model {
            for feature in columns.features.len()..model.features.len() {
                let profiled = model.feature_refs.get(feature).is_some_and(Option::is_some);
                if profiled && self.features.get(feature).is_none_or(Option::is_none) {
                    self.feature_mut(model, feature);
                }
            }
        }
        // Features this batch does not carry yet were absent from its rows.
        for state in self.features.iter_mut().skip(columns.features.len()).flatten() {
            match &mut state.summary {
                FeatureSummary::Numeric(s) => s.add_missing(columns.len as u64),
                FeatureSummary::Categorical(s) => s.add_missing(columns.len as u64),
            }
        }
        self.events += columns.len as u64;
        match (&mut self.prediction, columns.prediction) {
            (PredictionSummary::Classes(counts), PredictionArray::Class(classes)) => count_classes(counts, classes),
            (PredictionSummary::Values(summary), PredictionArray::Value(values)) => {
                summary.update(values);
                let reference = model.reference.as_ref().and_then(|r| r.prediction.as_ref());
                count_into_bins(&mut self.prediction_bins, reference, values);
            }
            _ => {}
        }
        if columns.score.null_count() < columns.len {
            self.score.update(columns.score);
            let reference = model.reference.as_ref().and_then(|r| r.score.as_ref());
            count_into_bins(&mut self.score_bins, reference, columns.score);
        }
        if columns.latency_ms.null_count() < columns.len {
            self.latency_ms.update(columns.latency_ms);
        }
        pooled
    }

    pub fn add_type_errors(&mut self, model: &ModelState, feature: usize, count: u64) {
        self.feature_mut(model, feature).type_errors += count;
    }

    /// Moves the state from another registry's ids (a lane's) to this
    /// process's: `features[lane id]` and `classes[lane id]` give the ids
    /// here ([`NOT_TRACKED`] for a feature over the cap here: left out).
    pub fn remap(&mut self, features: &[u32], classes: &[u32]) {
        if !self.features.is_empty() {
            let mut remapped: Vec<Option<FeatureState>> = Vec::new();
            for (lane_id, state) in std::mem::take(&mut self.features).into_iter().enumerate() {
                let Some(state) = state else { continue };
                if features[lane_id] == NOT_TRACKED {
                    continue;
                }
                let id = features[lane_id] as usize;
                if remapped.len() <= id {
                    remapped.resize_with(id + 1, || None);
                }
                remapped[id] = Some(state);
            }
            self.features = remapped;
        }
        if let PredictionSummary::Classes(counts) = &mut self.prediction {
            let mut remapped: Vec<u64> = Vec::new();
            for (lane_id, &count) in counts.iter().enumerate() {
                if count == 0 {
                    continue;
                }
                let id = classes[lane_id] as usize;
                if remapped.len() <= id {
                    remapped.resize(id + 1, 0);
                }
                remapped[id] += count;
            }
            *counts = remapped;
        }
    }

    /// Merges another partial state of the same window and series (another
    /// partition's or another pane's) into this one: counts, missing,
    /// extremes, bins, category counts, confusion matrices and sketches
    /// exactly; moments through DataFusion's `state`/`merge_batch`. A
    /// feature only one side has a state for was absent from the other
    /// side's events, which count as missing, as in one pass. The category
    /// cap applies after the merge (see [`CategoricalSummary::merge`]).
    /// Merging the same partials in the same order gives the same bits.
    pub fn merge(&mut self, mut other: WindowState, max_categories: usize) {
        if other.features.len() > self.features.len() {
            self.features.resize_with(other.features.len(), || None);
        }
        let (mine_events, their_events) = (self.events, other.events);
        other.features.resize_with(self.features.len(), || None);
        for (feature, theirs) in self.features.iter_mut().zip(other.features.iter_mut()) {
            match (feature.as_mut(), theirs.take()) {
                (None, None) => {}
                (Some(mine), None) => mine.add_missing(their_events),
                (None, Some(mut theirs)) => {
                    theirs.add_missing(mine_events);
                    *feature = Some(theirs);
                }
                (Some(mine), Some(mut theirs)) => mine.merge(&mut theirs, max_categories),
            }
        }
        self.events += other.events;
        match (&mut self.prediction, &mut other.prediction) {
            (PredictionSummary::Classes(mine), PredictionSummary::Classes(theirs)) => {
                if mine.len() < theirs.len() {
                    mine.resize(theirs.len(), 0);
                }
                mine.iter_mut().zip(theirs.iter()).for_each(|(a, b)| *a += b);
            }
            (PredictionSummary::Values(mine), PredictionSummary::Values(theirs)) => mine.merge(theirs),
            _ => {}
        }
        self.score.merge(&mut other.score);
        self.latency_ms.merge(&mut other.latency_ms);
        self.performance.merge(&other.performance);
        add_bins(&mut self.score_bins, &other.score_bins);
        add_bins(&mut self.prediction_bins, &other.prediction_bins);
        self.score_bins_lost |= other.score_bins_lost;
        self.prediction_bins_lost |= other.prediction_bins_lost;
    }
}

/// Adds bin counts (of the same baseline bins; an empty side has none).
fn add_bins(mine: &mut Vec<u64>, theirs: &[u64]) {
    if mine.is_empty() {
        mine.extend_from_slice(theirs);
    } else if mine.len() == theirs.len() {
        mine.iter_mut().zip(theirs).for_each(|(a, b)| *a += b);
    }
}

impl FeatureState {
    fn add_missing(&mut self, count: u64) {
        match &mut self.summary {
            FeatureSummary::Numeric(s) => s.add_missing(count),
            FeatureSummary::Categorical(s) => s.add_missing(count),
        }
    }

    fn merge(&mut self, other: &mut FeatureState, max_categories: usize) {
        match (&mut self.summary, &mut other.summary) {
            (FeatureSummary::Numeric(mine), FeatureSummary::Numeric(theirs)) => mine.merge(theirs),
            (FeatureSummary::Categorical(mine), FeatureSummary::Categorical(theirs)) => {
                mine.merge(theirs, max_categories)
            }
            // A kind cannot change once set; count the other side as missing.
            (FeatureSummary::Numeric(mine), FeatureSummary::Categorical(theirs)) => {
                mine.add_missing(theirs.count + theirs.missing)
            }
            (FeatureSummary::Categorical(mine), FeatureSummary::Numeric(theirs)) => {
                mine.add_missing(theirs.count() + theirs.missing)
            }
        }
        self.type_errors += other.type_errors;
        self.out_of_range += other.out_of_range;
        add_bins(&mut self.reference_bins, &other.reference_bins);
        self.bins_lost |= other.bins_lost;
    }
}

fn count_classes(counts: &mut Vec<u64>, classes: &UInt32Array) {
    for &class in classes.values() {
        let class = class as usize;
        if counts.len() <= class {
            counts.resize(class + 1, 0);
        }
        counts[class] += 1;
    }
}

/// Identifies the rows of one closed window.
pub struct WindowIdentity<'a> {
    pub model: &'a ModelState,
    pub series: SeriesId,
    pub start_ms: i64,
    pub end_ms: i64,
    /// `drift.alpha`; divided among the model's baselined features.
    pub drift_alpha: f64,
}

impl WindowIdentity<'_> {
    /// The false-alarm level of one feature's drift test (Bonferroni).
    fn feature_alpha(&self) -> f64 {
        let features = self.model.reference.as_ref().map_or(1, |r| r.features.len().max(1));
        self.drift_alpha / features as f64
    }
}

/// A drift row with its threshold and verdict.
fn judged(mut row: WindowMetricRow, threshold: f64) -> WindowMetricRow {
    if threshold.is_finite() {
        row.threshold = Some(threshold);
        row.drifted = Some(row.value > threshold);
    }
    row
}

impl WindowIdentity<'_> {
    fn row(&self, feature: Option<&Arc<str>>, metric: &'static str, value: f64, sample_count: u64) -> WindowMetricRow {
        let series = &self.model.series[self.series as usize];
        WindowMetricRow {
            model: self.model.name.clone(),
            model_version: series.model_version.clone(),
            segment: series.segment.clone(),
            window_start_ms: self.start_ms,
            window_end_ms: self.end_ms,
            feature: feature.cloned(),
            metric,
            value,
            baseline: None,
            threshold: None,
            p_value: None,
            drifted: None,
            sample_count: sample_count as i64,
        }
    }
}

fn push_quantiles(
    out: &mut Vec<WindowMetricRow>,
    id: &WindowIdentity<'_>,
    feature: Option<&Arc<str>>,
    summary: &mut NumericSummary,
    names: [&'static str; 3],
) {
    let n = summary.count();
    for (name, q) in names.into_iter().zip([0.5, 0.95, 0.99]) {
        if let Some(v) = summary.quantile(q) {
            out.push(id.row(feature, name, v, n));
        }
    }
}

/// Rows for the data part of a closed window: model-level count, latency
/// and late events, then every feature in name order.
pub fn data_rows(state: &mut WindowState, id: &WindowIdentity<'_>, events_late: u64, out: &mut Vec<WindowMetricRow>) {
    let events = state.events;
    out.push(id.row(None, "count", events as f64, events));
    out.push(id.row(None, "events_late", events_late as f64, events_late));
    push_quantiles(out, id, None, &mut state.latency_ms, ["latency_p50", "latency_p95", "latency_p99"]);
    if let Some(reference) = &id.model.reference {
        // Output drift: the distribution of predictions and scores.
        let prediction_counts = match (&state.prediction, &reference.prediction) {
            (PredictionSummary::Classes(counts), Some(FeatureReference::Categorical(r))) => Some((
                r.counts(counts.iter().enumerate().map(|(class, n)| (&**id.model.classes.name(class as u32), *n))),
                &r.proportions,
                r.count,
            )),
            (PredictionSummary::Values(_), Some(FeatureReference::Numeric(r)))
                if !state.prediction_bins_lost && state.prediction_bins.len() == r.proportions.len() =>
            {
                Some((state.prediction_bins.clone(), &r.proportions, r.count))
            }
            _ => None,
        };
        if let Some((counts, proportions, reference_n)) = prediction_counts {
            push_model_psi(out, id, "prediction_psi", proportions, &counts, reference_n);
        }
        if let Some(FeatureReference::Numeric(r)) = &reference.score
            && !state.score_bins_lost
            && state.score_bins.len() == r.proportions.len()
        {
            push_model_psi(out, id, "score_psi", &r.proportions, &state.score_bins, r.count);
        }
    }
    let mut order: Vec<usize> = (0..state.features.len()).filter(|&f| state.features[f].is_some()).collect();
    order.sort_by(|&a, &b| id.model.features[a].name.cmp(&id.model.features[b].name));
    for feature in order {
        let name = Some(&id.model.features[feature].name);
        let reference = id.model.feature_refs.get(feature).and_then(Option::as_deref);
        let Some(feature_state) = state.features[feature].as_mut() else { continue };
        let first_row = out.len();
        match &mut feature_state.summary {
            FeatureSummary::Numeric(s) => {
                let n = s.count();
                out.push(id.row(name, "count", n as f64, n));
                out.push(id.row(name, "missing_rate", ratio(s.missing, events), events));
                if let Some(mean) = s.mean() {
                    out.push(id.row(name, "mean", mean, n));
                }
                if let Some(std) = s.std() {
                    out.push(id.row(name, "std", std, n));
                }
                if let Some(min) = s.min() {
                    out.push(id.row(name, "min", min, n));
                }
                if let Some(max) = s.max() {
                    out.push(id.row(name, "max", max, n));
                }
                push_quantiles(out, id, name, s, ["p50", "p95", "p99"]);
                if let Some(FeatureReference::Numeric(r)) = reference
                    && n > 0
                {
                    // Bins of another baseline (restored, not re-countable):
                    // only the unbinned drift rows.
                    let bins = (!feature_state.bins_lost && feature_state.reference_bins.len() == r.proportions.len())
                        .then_some((&feature_state.reference_bins[..], feature_state.out_of_range));
                    numeric_drift_rows(s, r, bins, id, name, out);
                }
            }
            FeatureSummary::Categorical(s) => {
                out.push(id.row(name, "count", s.count as f64, s.count));
                out.push(id.row(name, "missing_rate", ratio(s.missing, events), events));
                if let Some(FeatureReference::Categorical(r)) = reference
                    && s.count > 0
                {
                    categorical_drift_rows(s, r, id, name, out);
                }
            }
        }
        if feature_state.type_errors > 0 {
            // Values of the wrong JSON type (also counted as missing).
            let rate = ratio(feature_state.type_errors, events);
            out.push(id.row(name, "type_error_rate", rate, events));
        }
        if let Some(reference) = reference {
            fill_baselines(&mut out[first_row..], reference);
        }
    }
}

/// A model-level PSI row (one test per window: level `drift.alpha`).
fn push_model_psi(
    out: &mut Vec<WindowMetricRow>,
    id: &WindowIdentity<'_>,
    metric: &'static str,
    proportions: &[f64],
    counts: &[u64],
    reference_n: u64,
) {
    let n: u64 = counts.iter().sum();
    if n == 0 {
        return;
    }
    let psi = crate::stats::psi(proportions, counts, crate::stats::PSI_EPSILON);
    if psi.is_finite() {
        let k = proportions.iter().zip(counts).filter(|(p, c)| **p > 0.0 || **c > 0).count();
        let threshold = thresholds::psi_threshold(k, n, reference_n, id.drift_alpha);
        out.push(judged(id.row(None, metric, psi, n), threshold));
    }
}

/// The baseline's value of the summary metrics, on the rows just written.
fn fill_baselines(rows: &mut [WindowMetricRow], reference: &FeatureReference) {
    for row in rows {
        row.baseline = match (row.metric, reference) {
            ("missing_rate", r) => Some(r.missing_rate()),
            ("mean", FeatureReference::Numeric(r)) => r.mean,
            ("std", FeatureReference::Numeric(r)) => r.std,
            ("min", FeatureReference::Numeric(r)) => r.min,
            ("max", FeatureReference::Numeric(r)) => r.max,
            (q @ ("p50" | "p95" | "p99"), FeatureReference::Numeric(r)) => {
                r.quantiles.iter().find(|(k, _)| k == q).map(|(_, v)| *v)
            }
            ("out_of_range_rate", _) => Some(0.0),
            ("unseen_rate", FeatureReference::Categorical(r)) => Some(r.other_share()),
            _ => row.baseline,
        };
    }
}

/// Drift of a numeric feature against its baseline: PSI, Jensen–Shannon
/// and Hellinger over the baseline's quantile bins; KS and Wasserstein-1
/// (normalised by the baseline's std) over the two distributions; the share
/// of values outside the baseline's range.
fn numeric_drift_rows(
    summary: &NumericSummary,
    reference: &reference::NumericReference,
    bins: Option<(&[u64], u64)>,
    id: &WindowIdentity<'_>,
    name: Option<&Arc<str>>,
    out: &mut Vec<WindowMetricRow>,
) {
    let n = summary.count();
    let alpha = id.feature_alpha();
    let reference_n = reference.count;
    let k = reference.proportions.iter().filter(|p| **p > 0.0).count();
    if let Some((bins, out_of_range)) = bins {
        let out_of_range_threshold = thresholds::out_of_range_threshold(n, reference_n, alpha);
        out.push(judged(id.row(name, "out_of_range_rate", ratio(out_of_range, n), n), out_of_range_threshold));
        let total: u64 = bins.iter().sum();
        let shares: Vec<f64> = bins.iter().map(|&b| ratio(b, total)).collect();
        let psi = crate::stats::psi(&reference.proportions, bins, crate::stats::PSI_EPSILON);
        if psi.is_finite() {
            out.push(judged(id.row(name, "psi", psi, n), thresholds::psi_threshold(k, n, reference_n, alpha)));
        }
        let js = crate::stats::jensen_shannon_distance(&reference.proportions, &shares);
        if js.is_finite() {
            let threshold = thresholds::jensen_shannon_threshold(k, n, reference_n, alpha);
            out.push(judged(id.row(name, "jensen_shannon", js, n), threshold));
        }
        let hellinger = crate::stats::hellinger(&reference.proportions, &shares);
        if hellinger.is_finite() {
            let threshold = thresholds::hellinger_threshold(k, n, reference_n, alpha);
            out.push(judged(id.row(name, "hellinger", hellinger, n), threshold));
        }
    }
    let window = summary.to_sketch();
    let (grid, reference_cdf, window_cdf) = sketch::common_cdfs(&reference.sketch, &window);
    let (d, _) = crate::stats::ks_two_sample_from_cdfs(&reference_cdf, &window_cdf, reference.sketch.count(), n);
    if d.is_finite() {
        // scipy's `ks_2samp(method='asymp')` p-value convention.
        let p = crate::stats::ks_pvalue_scipy_asymp(d, reference.sketch.count(), n);
        let mut row = judged(id.row(name, "ks", d, n), thresholds::ks_threshold(n, reference_n, alpha));
        row.p_value = p.is_finite().then_some(p);
        out.push(row);
    }
    let w = crate::stats::wasserstein_from_cdfs(&grid, &reference_cdf, &window_cdf);
    if let Some(std) = reference.std.filter(|s| *s > 0.0)
        && w.is_finite()
    {
        let threshold = reference.wasserstein_null().threshold(n, reference_n, alpha);
        out.push(judged(id.row(name, "wasserstein", w / std, n), threshold));
    }
}

/// Drift of a categorical feature against its baseline: PSI, chi-square
/// (with p-value) and Jensen–Shannon over the baseline's categories plus
/// `other`, and the share of values the baseline never saw.
fn categorical_drift_rows(
    summary: &CategoricalSummary,
    reference: &reference::CategoricalReference,
    id: &WindowIdentity<'_>,
    name: Option<&Arc<str>>,
    out: &mut Vec<WindowMetricRow>,
) {
    let n = summary.count;
    let alpha = id.feature_alpha();
    let other = reference.proportions.len() - 1;
    let mut counts = vec![0u64; reference.proportions.len()];
    let mut unseen = summary.other;
    counts[other] += summary.other;
    for (value, &count) in &summary.frequencies {
        match reference.index.get(&**value) {
            Some(&i) => counts[i] += count,
            None => {
                counts[other] += count;
                unseen += count;
            }
        }
    }
    let threshold = thresholds::unseen_rate_threshold(n, reference.other_share(), reference.count, alpha);
    out.push(judged(id.row(name, "unseen_rate", ratio(unseen, n), n), threshold));
    // Categories the baseline has, plus `other` when the baseline or the
    // window puts anything there.
    let k = reference.proportions.iter().zip(&counts).filter(|(p, c)| **p > 0.0 || **c > 0).count();
    let psi = crate::stats::psi(&reference.proportions, &counts, crate::stats::PSI_EPSILON);
    if psi.is_finite() {
        out.push(judged(id.row(name, "psi", psi, n), thresholds::psi_threshold(k, n, reference.count, alpha)));
    }
    let (chi2, p) = crate::stats::chi_square(&reference.proportions, &counts);
    if chi2.is_finite() {
        let critical = thresholds::chi_square_critical(k.saturating_sub(1), alpha);
        let mut row = judged(id.row(name, "chi2", chi2, n), critical);
        row.p_value = p.is_finite().then_some(p);
        out.push(row);
    }
    let shares: Vec<f64> = counts.iter().map(|&c| ratio(c, n)).collect();
    let js = crate::stats::jensen_shannon_distance(&reference.proportions, &shares);
    if js.is_finite() {
        let threshold = thresholds::jensen_shannon_threshold(k, n, reference.count, alpha);
        out.push(judged(id.row(name, "jensen_shannon", js, n), threshold));
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 { 0.0 } else { part as f64 / whole as f64 }
}

/// Rows for the performance part of a window, emitted once its labels had
/// `label_horizon` to arrive.
pub fn performance_rows(
    performance: &PerformanceState,
    events: u64,
    id: &WindowIdentity<'_>,
    out: &mut Vec<WindowMetricRow>,
) {
    performance_rows_with_baseline(performance, events, id, out);
    paired_rows(performance, id, out);
}

/// A shadow version's window: `accuracy_vs_champion`, its accuracy minus
/// the champion's on the events both predicted and a label joined (value),
/// the champion's accuracy on them (`baseline`), how many (`sample_count`)
/// and the exact one-sided McNemar p-value of "the shadow is less
/// accurate" (`p_value`).
fn paired_rows(performance: &PerformanceState, id: &WindowIdentity<'_>, out: &mut Vec<WindowMetricRow>) {
    let paired = &performance.paired;
    if paired.events == 0 {
        return;
    }
    let events = paired.events as f64;
    let difference = (paired.shadow_only as f64 - paired.champion_only as f64) / events;
    let mut row = id.row(None, "accuracy_vs_champion", difference, paired.events);
    row.baseline = Some(paired.champion_correct as f64 / events);
    row.p_value = Some(crate::stats::mcnemar_worse_p_value(paired.champion_only, paired.shadow_only));
    out.push(row);
}

fn performance_rows_with_baseline(
    performance: &PerformanceState,
    events: u64,
    id: &WindowIdentity<'_>,
    out: &mut Vec<WindowMetricRow>,
) {
    let first_row = out.len();
    performance_rows_without_baseline(performance, events, id, out);
    let Some(reference) = &id.model.reference else { return };
    if let Some(FeatureReference::Categorical(r)) = &reference.label {
        let mut actual: std::collections::BTreeMap<u32, u64> = std::collections::BTreeMap::new();
        for (&(_, class), &n) in &performance.confusion {
            *actual.entry(class).or_default() += n;
        }
        let counts = r.counts(actual.iter().map(|(class, n)| (&**id.model.classes.name(*class), *n)));
        push_model_psi(out, id, "label_psi", &r.proportions, &counts, r.count);
    }
    let baseline = &reference.baseline.performance;
    let baseline_count = |key: &str| baseline.get(key).copied().unwrap_or(0.0).max(0.0) as u64;
    let baseline_labeled = baseline_count("labeled_count");
    let positive = id.model.positive_class();
    let scored_positives = positive.and_then(|p| performance.scores.sums.get(&p)).map_or(0, |s| s.count);
    let window_error_std = performance.absolute_error_std();
    for row in &mut out[first_row..] {
        if matches!(row.metric, "labeled_count" | "label_coverage" | "label_psi") {
            continue;
        }
        row.baseline = baseline.get(row.metric).copied();
        let Some(reference_value) = row.baseline else { continue };
        let n = row.sample_count.max(0) as u64;
        if n == 0 {
            continue;
        }
        // "Worse than baseline", one-sided (docs/DRIFT.md): proportions by
        // a two-proportion z-test over their own denominators, ROC AUC by
        // Hanley–McNeil standard errors, MAE by a z-test of mean errors.
        let proportion_denominator = match row.metric {
            "accuracy" => Some(baseline_labeled),
            "precision" => Some(baseline_count("predicted_positive_count")),
            "recall" => Some(baseline_count("positive_count")),
            _ => None,
        };
        let p = if let Some(reference_n) = proportion_denominator {
            if reference_n == 0
                || !matches!(id.model.task, crate::config::Task::BinaryClassification) && row.metric != "accuracy"
            {
                continue;
            }
            let successes = ((row.value * n as f64).round() as u64).min(n);
            let reference_successes = ((reference_value * reference_n as f64).round() as u64).min(reference_n);
            crate::stats::two_proportion_z_test(reference_successes, reference_n, successes, n).1
        } else if row.metric == "roc_auc" {
            let reference_positives = baseline_count("positive_count").min(baseline_labeled);
            crate::stats::auc_lower_p_value(
                (reference_value, reference_positives, baseline_labeled - reference_positives),
                (row.value, scored_positives.min(n), n - scored_positives.min(n)),
            )
        } else if row.metric == "mae"
            && let (Some(window_std), Some(reference_rmse)) = (window_error_std, baseline.get("rmse"))
        {
            let reference_std = (reference_rmse.powi(2) - reference_value.powi(2)).max(0.0).sqrt();
            crate::stats::mean_higher_p_value(
                (reference_value, reference_std, baseline_labeled),
                (row.value, window_std, n),
            )
        } else {
            continue;
        };
        row.p_value = p.is_finite().then_some(p);
    }
}

fn performance_rows_without_baseline(
    performance: &PerformanceState,
    events: u64,
    id: &WindowIdentity<'_>,
    out: &mut Vec<WindowMetricRow>,
) {
    let labeled = performance.labeled;
    out.push(id.row(None, "labeled_count", labeled as f64, labeled));
    out.push(id.row(None, "label_coverage", ratio(labeled, events), events));
    if id.model.is_classification() {
        if let Some(accuracy) = performance.accuracy() {
            out.push(id.row(None, "accuracy", accuracy, labeled));
        }
        if matches!(id.model.task, crate::config::Task::MulticlassClassification)
            && let Some((precision, recall, f1)) = performance.macro_scores()
        {
            for (name, value) in [("precision", precision), ("recall", recall), ("f1", f1)] {
                if value.is_finite() {
                    out.push(id.row(None, name, value, labeled));
                }
            }
        }
        if matches!(id.model.task, crate::config::Task::BinaryClassification)
            && let Some(positive) = id.model.positive_class()
            && labeled > 0
        {
            let (tp, fp, fn_) = performance.binary_counts(positive);
            let precision = (tp + fp > 0).then(|| tp as f64 / (tp + fp) as f64);
            let recall = (tp + fn_ > 0).then(|| tp as f64 / (tp + fn_) as f64);
            if let Some(p) = precision {
                out.push(id.row(None, "precision", p, tp + fp));
            }
            if let Some(r) = recall {
                out.push(id.row(None, "recall", r, tp + fn_));
            }
            if tp + fp + fn_ > 0 {
                let f1 = 2.0 * tp as f64 / (2 * tp + fp + fn_) as f64;
                out.push(id.row(None, "f1", f1, labeled));
            }
            let scored = performance.scores.count();
            for (name, value) in [
                ("roc_auc", performance.scores.roc_auc(positive)),
                ("log_loss", performance.scores.log_loss(positive)),
                ("brier", performance.scores.brier(positive)),
            ] {
                if let Some(v) = value {
                    out.push(id.row(None, name, v, scored));
                }
            }
        }
    } else {
        for (name, value) in [
            ("mae", performance.mae()),
            ("rmse", performance.rmse()),
            ("mape", performance.mape()),
            ("r2", performance.r2()),
        ] {
            if let Some(v) = value {
                let n = if name == "mape" { performance.pct_count } else { labeled };
                out.push(id.row(None, name, v, n));
            }
        }
    }
}
