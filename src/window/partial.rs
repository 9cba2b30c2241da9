//! Partial window state that can leave the process: one (model, series,
//! window)'s [`WindowState`] keyed by names instead of the process-local
//! dense ids (feature index, class id, series id), versioned, and
//! serialised as MessagePack (to ship between machines) or JSON (to read).
//! docs/REFERENCE.md ("Partial window state") documents the format.
//!
//! [`PartialWindow::from_state`] names a state's ids with the model's
//! dictionaries; [`PartialWindow::into_state`] interns the names into a
//! model (new series, features and classes as the decoder would, within
//! the same caps) and gives the state back, bit for bit.
//! [`PartialWindow::merge`] merges two partial states of the same window
//! and series through [`WindowState::merge`], so the result is the one an
//! in-process merge gives: exact for counts, missing, extremes, category
//! counts, bins, confusion matrices and sketches; moments through
//! DataFusion's `merge_batch`; the category cap applied after the merge,
//! deterministically. Merging the same partials in the same order gives
//! the same bytes; [`PartialWindow::merge_many`] caps once after merging
//! them all, so its category tables do not depend on the order at all.
//!
//! Floating-point values keep every bit in both encodings: MessagePack
//! stores the doubles themselves; JSON writes each as a string holding the
//! shortest decimal that reads back to the same double (a JSON number
//! would be read back by serde_json's fast parser, which may round the
//! last bit).
//!
//! Pure: no I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::config::{MAX_EVENT_NAME_BYTES, PipelineConfig, Task};
use crate::evaluate::categorical::CategoricalSummary;
use crate::evaluate::numeric::{NumericParts, NumericSummary};
use crate::evaluate::performance::{EXACT_SCORES, PairedCounts, PerformanceState, SCORE_BINS, ScoreState, ScoreSums};
use crate::evaluate::{FeatureState, FeatureSummary, PredictionSummary, WindowState};
use crate::model::reference::FeatureReference;
use crate::model::{ClassId, FeatureKind, ModelId, ModelRegistry, ModelState, SeriesId};
use crate::sketch::QuantileSketch;

#[cfg(test)]
mod tests;

/// The format this build writes and the only one it reads.
pub const PARTIAL_WINDOW_FORMAT_VERSION: u32 = 1;

/// The largest encoded partial window read (256 MiB: a window may hold
/// hundreds of features, each with up to 1,024 exact values or a sketch,
/// and up to `pipeline.max_categories_per_feature` categories of up to
/// 1 KiB).
pub const MAX_PARTIAL_WINDOW_BYTES: usize = 256 << 20;

/// The longest category value a partial window may carry (as in events).
const MAX_CATEGORY_BYTES: usize = 1024;

/// The longest segment key: up to 8 `key=value` pairs of event names.
const MAX_SEGMENT_BYTES: usize = 8 * (2 * MAX_EVENT_NAME_BYTES + 2);

/// One (model, series, window)'s partial state, keyed by names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialWindow {
    /// [`PARTIAL_WINDOW_FORMAT_VERSION`].
    pub format_version: u32,
    pub model: String,
    pub model_version: String,
    /// `""` for the whole-model series, else `key=value` pairs sorted by
    /// key, joined by `,`.
    pub segment: String,
    pub window_start_ms: i64,
    pub window_end_ms: i64,
    /// The sha256 of the baseline profile the bins were counted against
    /// (`None`: the model had no baseline). Bins only add up under the same
    /// baseline, so partials of different baselines do not merge.
    pub baseline: Option<String>,
    /// Events counted in this partial state.
    pub events: u64,
    /// Per feature name.
    pub features: BTreeMap<String, PartialFeature>,
    pub prediction: PartialPrediction,
    pub score: PartialNumeric,
    pub latency_ms: PartialNumeric,
    /// Scores per bin of the baseline's score profile (empty without one).
    pub score_bins: Vec<u64>,
    /// The score bins are not those of the baseline (no `score_psi`).
    pub score_bins_lost: bool,
    /// Regression predictions per bin of the baseline's prediction profile.
    pub prediction_bins: Vec<u64>,
    /// The prediction bins are not those of the baseline.
    pub prediction_bins_lost: bool,
    pub performance: PartialPerformance,
}

/// One feature's partial state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialFeature {
    pub summary: PartialSummary,
    /// Values whose JSON type did not match the feature (also missing).
    pub type_errors: u64,
    /// Numeric features with a baseline: values per baseline bin.
    pub reference_bins: Vec<u64>,
    /// Numeric features with a baseline: values outside its [min, max].
    pub out_of_range: u64,
    /// The bins could not be counted under the current baseline.
    pub bins_lost: bool,
}

/// A feature's summary, by kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartialSummary {
    Numeric(PartialNumeric),
    Categorical(PartialCategories),
}

/// A numeric summary's parts (see [`NumericParts`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialNumeric {
    pub missing: u64,
    pub count: u64,
    #[serde(with = "exact_float")]
    pub mean: f64,
    /// Sum of squared deviations from the mean (Welford's M2).
    #[serde(with = "exact_float")]
    pub m2: f64,
    #[serde(with = "exact_float_option")]
    pub min: Option<f64>,
    #[serde(with = "exact_float_option")]
    pub max: Option<f64>,
    /// The values themselves while there are at most 1,024; the sketch is
    /// then empty.
    #[serde(with = "exact_float_values")]
    pub exact: Option<Vec<f64>>,
    pub sketch: QuantileSketch,
}

/// A categorical summary: counts per value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialCategories {
    pub missing: u64,
    /// Observations with a value, `other` included.
    pub count: u64,
    pub frequencies: BTreeMap<String, u64>,
    /// Observations of values beyond the cap of distinct values.
    pub other: u64,
}

/// The distribution of predictions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartialPrediction {
    /// Classification: predictions per class name.
    Classes(BTreeMap<String, u64>),
    /// Regression: the predicted values.
    Values(PartialNumeric),
}

/// Performance of the pairs joined so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialPerformance {
    pub labeled: u64,
    /// Predicted class name → actual class name → pairs.
    pub confusion: BTreeMap<String, BTreeMap<String, u64>>,
    #[serde(with = "exact_float")]
    pub abs_error_sum: f64,
    #[serde(with = "exact_float")]
    pub squared_error_sum: f64,
    #[serde(with = "exact_float")]
    pub abs_pct_error_sum: f64,
    pub pct_count: u64,
    #[serde(with = "exact_float")]
    pub actual_mean: f64,
    #[serde(with = "exact_float")]
    pub actual_m2: f64,
    /// Probability-quality sums per actual class name.
    pub score_sums: BTreeMap<String, PartialScoreSums>,
    /// Scored pairs while there are at most 4,096 (then `score_histograms`).
    pub exact_scores: Option<Vec<PartialScore>>,
    /// Per actual class name, scores counted in 1,000 equal-width bins.
    pub score_histograms: BTreeMap<String, Vec<u64>>,
    /// A shadow version's pairs whose event the champion also paired.
    pub paired: PartialPairedCounts,
}

/// Sums over the scored pairs of one actual class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialScoreSums {
    pub count: u64,
    #[serde(with = "exact_float")]
    pub ln_score: f64,
    #[serde(with = "exact_float")]
    pub ln_complement: f64,
    #[serde(with = "exact_float")]
    pub score_squared: f64,
    #[serde(with = "exact_float")]
    pub complement_squared: f64,
}

/// One scored pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialScore {
    #[serde(with = "exact_float")]
    pub score: f64,
    pub actual: String,
}

/// See [`PairedCounts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialPairedCounts {
    pub events: u64,
    pub champion_correct: u64,
    pub champion_only: u64,
    pub shadow_only: u64,
}

/// Why a partial window cannot be read, interned or merged. Each message
/// names the model and what is wrong where; values are quoted up to 60
/// characters.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PartialWindowError {
    #[error("partial window format_version {found} is not supported: this build reads version {supported}")]
    UnsupportedVersion { found: u32, supported: u32 },
    #[error("partial window: not readable as {format}: {message}")]
    Unreadable { format: &'static str, message: String },
    #[error("partial window: {bytes} bytes; the limit is {limit}")]
    TooLarge { bytes: usize, limit: usize },
    #[error("partial window of model {model}: no model of that name is configured")]
    UnknownModel { model: String },
    #[error("partial window of model {model}: it was counted against baseline {found}, the model here has {expected}")]
    BaselineMismatch { model: String, expected: String, found: String },
    #[error("partial window of model {model}: its predictions are {found}, but the model's task is {task}")]
    TaskMismatch { model: String, task: String, found: &'static str },
    #[error("partial window of model {model}, feature {feature}: {found} there, {expected} here")]
    KindMismatch { model: String, feature: String, expected: &'static str, found: &'static str },
    #[error(
        "partial window of model {model}, feature {feature}: the model already has {cap} features \
         (pipeline.max_features_per_model)"
    )]
    TooManyFeatures { model: String, feature: String, cap: usize },
    #[error(
        "partial window of model {model}, class {class}: the model already has {cap} classes \
         (pipeline.max_categories_per_feature)"
    )]
    TooManyClasses { model: String, class: String, cap: usize },
    #[error(
        "partial window of model {model}, class {class}: not one of the binary model's classes {positive} and {negative}"
    )]
    NotABinaryClass { model: String, class: String, positive: String, negative: String },
    #[error(
        "partial windows differ in {field} ({mine} and {theirs}): only partial states of one window and series merge"
    )]
    DifferentWindows { field: &'static str, mine: String, theirs: String },
    #[error("partial window of model {model}, {field}: {message}")]
    Invalid { model: String, field: String, message: String },
}

/// `text` in quotes, cut to 60 characters.
fn quote(text: &str) -> String {
    match text.char_indices().nth(60) {
        Some((cut, _)) => format!("{:?}…", &text[..cut]),
        None => format!("{text:?}"),
    }
}

fn kind_name(kind: FeatureKind) -> &'static str {
    match kind {
        FeatureKind::Numeric => "numeric",
        FeatureKind::Categorical => "categorical",
    }
}

impl PartialSummary {
    fn kind(&self) -> FeatureKind {
        match self {
            PartialSummary::Numeric(_) => FeatureKind::Numeric,
            PartialSummary::Categorical(_) => FeatureKind::Categorical,
        }
    }
}

impl PartialPrediction {
    fn name(&self) -> &'static str {
        match self {
            PartialPrediction::Classes(_) => "classes",
            PartialPrediction::Values(_) => "values",
        }
    }
}

impl PartialNumeric {
    fn of(summary: &NumericSummary) -> PartialNumeric {
        let NumericParts { missing, count, mean, m2, min, max, exact, sketch } = summary.to_parts();
        PartialNumeric { missing, count, mean, m2, min, max, exact, sketch }
    }

    fn to_summary(&self) -> Result<NumericSummary, String> {
        NumericSummary::from_parts(NumericParts {
            missing: self.missing,
            count: self.count,
            mean: self.mean,
            m2: self.m2,
            min: self.min,
            max: self.max,
            exact: self.exact.clone(),
            sketch: self.sketch.clone(),
        })
    }
}

/// Ids for names while a partial window becomes a [`WindowState`]: the
/// model's (after interning) or a merge's own.
struct Ids {
    features: BTreeMap<String, usize>,
    classes: BTreeMap<String, ClassId>,
}

/// Names of ids while a [`WindowState`] becomes a partial window.
struct Names<'a> {
    features: Vec<&'a str>,
    classes: Vec<&'a str>,
}

impl<'a> Names<'a> {
    fn of_model(model: &'a ModelState) -> Names<'a> {
        Names {
            features: model.features.iter().map(|f| &*f.name).collect(),
            classes: (0..model.classes.len()).map(|id| &**model.classes.name(id as ClassId)).collect(),
        }
    }

    fn class(&self, id: ClassId) -> String {
        self.classes.get(id as usize).expect("class ids come from the model's classes").to_string()
    }
}

/// A state with nothing counted yet (the task decides the prediction).
fn empty_state(classification: bool) -> WindowState {
    WindowState::empty(classification)
}

impl PartialWindow {
    /// The partial window of `state`, the state of `model`'s series
    /// `series` in the window `[window_start_ms, window_end_ms)`.
    pub fn from_state(
        model: &ModelState,
        series: SeriesId,
        window_start_ms: i64,
        window_end_ms: i64,
        state: &WindowState,
    ) -> PartialWindow {
        let series = &model.series[series as usize];
        PartialWindow::encode(
            Header {
                model: model.name.to_string(),
                model_version: series.model_version.to_string(),
                segment: series.segment.to_string(),
                window_start_ms,
                window_end_ms,
                baseline: model.reference.as_ref().map(|r| r.stamp.sha256.clone()),
            },
            state,
            &Names::of_model(model),
        )
    }

    /// The state back in `model` (whose name must be the partial's): its
    /// series, features and classes are interned when the model does not
    /// know them yet, as the decoder interns them from events — a version
    /// or series beyond `limits`' caps is filed under `__other__` — and
    /// categories beyond `max_categories_per_feature` are pooled into
    /// `other` as a merge pools them. Nothing is interned when an error is
    /// returned: a feature of another kind than the model's, more features
    /// or classes than the caps allow, a class a binary model does not
    /// have, predictions of the other task, another baseline, or values
    /// that do not make a valid state.
    pub fn into_state(
        self,
        model: &mut ModelState,
        limits: &PipelineConfig,
    ) -> Result<(SeriesId, WindowState), PartialWindowError> {
        self.check_header()?;
        if self.model != *model.name {
            return Err(PartialWindowError::UnknownModel { model: quote(&self.model) });
        }
        let expected = model.reference.as_ref().map(|r| r.stamp.sha256.clone());
        if self.baseline != expected {
            let name = |b: &Option<String>| b.as_deref().map_or_else(|| "none".to_string(), quote);
            return Err(PartialWindowError::BaselineMismatch {
                model: quote(&self.model),
                expected: name(&expected),
                found: name(&self.baseline),
            });
        }
        if matches!(self.prediction, PartialPrediction::Classes(_)) != model.is_classification() {
            return Err(PartialWindowError::TaskMismatch {
                model: quote(&self.model),
                task: model.task.to_string(),
                found: self.prediction.name(),
            });
        }
        // Everything that can fail is checked before the model changes.
        let mut new_features = 0;
        for (name, feature) in &self.features {
            match model.feature_ids.get(name.as_str()) {
                Some(&id) if model.features[id as usize].kind != feature.summary.kind() => {
                    return Err(PartialWindowError::KindMismatch {
                        model: quote(&self.model),
                        feature: quote(name),
                        expected: kind_name(model.features[id as usize].kind),
                        found: kind_name(feature.summary.kind()),
                    });
                }
                Some(_) => {}
                None if model.features.len() + new_features >= limits.max_features_per_model => {
                    return Err(PartialWindowError::TooManyFeatures {
                        model: quote(&self.model),
                        feature: quote(name),
                        cap: limits.max_features_per_model,
                    });
                }
                None => new_features += 1,
            }
        }
        let classes = self.class_names();
        let mut new_classes = 0;
        for class in &classes {
            if model.task == Task::BinaryClassification {
                let (positive, negative) = model.config.binary_classes();
                if class != positive && class != negative {
                    return Err(PartialWindowError::NotABinaryClass {
                        model: quote(&self.model),
                        class: quote(class),
                        positive: quote(positive),
                        negative: quote(negative),
                    });
                }
            } else if model.classes.get(class).is_none() {
                if model.classes.len() + new_classes >= limits.max_categories_per_feature {
                    return Err(PartialWindowError::TooManyClasses {
                        model: quote(&self.model),
                        class: quote(class),
                        cap: limits.max_categories_per_feature,
                    });
                }
                new_classes += 1;
            }
        }
        self.check_reference_bins(model)?;
        let scratch = self.scratch_ids(None);
        self.decode(&scratch)?;
        // Valid: intern, then decode with the model's ids.
        for (name, feature) in &self.features {
            if !model.feature_ids.contains_key(name.as_str()) {
                model.add_feature(name, feature.summary.kind());
            }
        }
        for class in &classes {
            model.classes.intern(class, usize::MAX).expect("no cap");
        }
        let mut key = format!("{}\0{}", self.model_version, self.segment);
        let (series, _) = model.intern_series_key(
            &mut key,
            self.model_version.len(),
            (limits.max_segments_per_model, limits.max_versions_per_model),
        );
        let ids = Ids {
            features: self
                .features
                .keys()
                .map(|name| (name.clone(), model.feature_ids[name.as_str()] as usize))
                .collect(),
            classes: classes.iter().map(|class| (class.clone(), model.classes.get(class).expect("interned"))).collect(),
        };
        let mut state = self.decode(&ids).expect("checked with the same values");
        for feature in state.features.iter_mut().flatten() {
            if let FeatureSummary::Categorical(summary) = &mut feature.summary {
                summary.apply_cap(limits.max_categories_per_feature);
            }
        }
        Ok((series, state))
    }

    /// [`PartialWindow::into_state`] into the registry's model of the
    /// partial's name.
    pub fn into_registry(
        self,
        registry: &mut ModelRegistry,
        limits: &PipelineConfig,
    ) -> Result<(ModelId, SeriesId, WindowState), PartialWindowError> {
        self.check_header()?;
        let Some(id) = registry.id(&self.model) else {
            return Err(PartialWindowError::UnknownModel { model: quote(&self.model) });
        };
        let (series, state) = self.into_state(registry.get_mut(id), limits)?;
        Ok((id, series, state))
    }

    /// Merges `other`, a partial state of the same model, series, window
    /// and baseline, into this one, as [`WindowState::merge`] merges states
    /// in a process (it does the merge): exact for counts, missing, min
    /// and max, category counts, bins, confusion matrices and sketches;
    /// moments through DataFusion's `merge_batch`; a feature only one side
    /// has counts the other side's events as missing; then at most
    /// `max_categories` categories per feature are kept, the most frequent
    /// (ties by value), whatever the order of the merges. On an error this
    /// partial is left as it was.
    pub fn merge(&mut self, other: PartialWindow, max_categories: usize) -> Result<(), PartialWindowError> {
        self.check_header()?;
        other.check_header()?;
        let differ = |field: &'static str, mine: String, theirs: String| {
            if mine == theirs { Ok(()) } else { Err(PartialWindowError::DifferentWindows { field, mine, theirs }) }
        };
        differ("model", quote(&self.model), quote(&other.model))?;
        differ("model_version", quote(&self.model_version), quote(&other.model_version))?;
        differ("segment", quote(&self.segment), quote(&other.segment))?;
        differ("window_start_ms", self.window_start_ms.to_string(), other.window_start_ms.to_string())?;
        differ("window_end_ms", self.window_end_ms.to_string(), other.window_end_ms.to_string())?;
        let baseline = |b: &Option<String>| b.as_deref().map_or_else(|| "none".to_string(), quote);
        differ("baseline", baseline(&self.baseline), baseline(&other.baseline))?;
        differ("prediction", self.prediction.name().to_string(), other.prediction.name().to_string())?;
        for (name, theirs) in &other.features {
            if let Some(mine) = self.features.get(name)
                && mine.summary.kind() != theirs.summary.kind()
            {
                return Err(PartialWindowError::KindMismatch {
                    model: quote(&self.model),
                    feature: quote(name),
                    expected: kind_name(mine.summary.kind()),
                    found: kind_name(theirs.summary.kind()),
                });
            }
        }
        let same_bins = |field: String, mine: &[u64], theirs: &[u64]| {
            if mine.is_empty() || theirs.is_empty() || mine.len() == theirs.len() {
                Ok(())
            } else {
                Err(PartialWindowError::Invalid {
                    model: quote(&self.model),
                    field,
                    message: format!("{} bins here, {} in the other partial", mine.len(), theirs.len()),
                })
            }
        };
        same_bins("score_bins".into(), &self.score_bins, &other.score_bins)?;
        same_bins("prediction_bins".into(), &self.prediction_bins, &other.prediction_bins)?;
        for (name, theirs) in &other.features {
            if let Some(mine) = self.features.get(name) {
                let field = format!("features[{}].reference_bins", quote(name));
                same_bins(field, &mine.reference_bins, &theirs.reference_bins)?;
            }
        }
        let ids = self.scratch_ids(Some(&other));
        let mut state = self.decode(&ids)?;
        state.merge(other.decode(&ids)?, max_categories);
        let names = Names {
            features: {
                let mut names = vec![""; ids.features.len()];
                ids.features.iter().for_each(|(name, &id)| names[id] = name);
                names
            },
            classes: {
                let mut names = vec![""; ids.classes.len()];
                ids.classes.iter().for_each(|(name, &id)| names[id as usize] = name);
                names
            },
        };
        let merged = PartialWindow::encode(self.header(), &state, &names);
        *self = merged;
        Ok(())
    }

    /// Merges every partial of `others` into this one, then applies the
    /// category cap once: the result's category tables (and every other
    /// count) do not depend on the order of the partials, where a chain of
    /// [`PartialWindow::merge`]s pools a value as soon as an intermediate
    /// union exceeds the cap (see [`CategoricalSummary::merge`]). The
    /// order only decides the order of exact values, which no row depends
    /// on. On an error this partial is left as it was.
    pub fn merge_many(
        &mut self,
        others: impl IntoIterator<Item = PartialWindow>,
        max_categories: usize,
    ) -> Result<(), PartialWindowError> {
        let mut merged = self.clone();
        for other in others {
            merged.merge(other, usize::MAX)?;
        }
        for (name, feature) in &mut merged.features {
            if let PartialSummary::Categorical(categories) = &mut feature.summary {
                let mut summary = decode_categories(categories).map_err(|message| PartialWindowError::Invalid {
                    model: quote(&self.model),
                    field: format!("features[{}].summary.categorical", quote(name)),
                    message,
                })?;
                summary.apply_cap(max_categories);
                *categories = encode_categories(&summary);
            }
        }
        *self = merged;
        Ok(())
    }

    /// MessagePack (named fields), as shipped between machines.
    pub fn to_msgpack(&self) -> Vec<u8> {
        rmp_serde::to_vec_named(self).expect("a partial window always serialises")
    }

    /// Reads [`PartialWindow::to_msgpack`]'s bytes: the format version
    /// first (another is [`PartialWindowError::UnsupportedVersion`]), then
    /// strictly (unknown fields are errors). The values are checked when
    /// the partial is interned or merged.
    pub fn from_msgpack(bytes: &[u8]) -> Result<PartialWindow, PartialWindowError> {
        if bytes.len() > MAX_PARTIAL_WINDOW_BYTES {
            return Err(PartialWindowError::TooLarge { bytes: bytes.len(), limit: MAX_PARTIAL_WINDOW_BYTES });
        }
        let unreadable = |e: rmp_serde::decode::Error| PartialWindowError::Unreadable {
            format: "MessagePack",
            message: crate::text::shorten_long_tokens(&e.to_string()).into_owned(),
        };
        let probe: VersionProbe = rmp_serde::from_slice(bytes).map_err(unreadable)?;
        probe.check()?;
        let partial: PartialWindow = rmp_serde::from_slice(bytes).map_err(unreadable)?;
        partial.check_header()?;
        Ok(partial)
    }

    /// Pretty JSON, for reading (floating-point values as exact strings).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a partial window always serialises")
    }

    /// Reads [`PartialWindow::to_json`]'s text, as
    /// [`PartialWindow::from_msgpack`] reads bytes.
    pub fn from_json(text: &str) -> Result<PartialWindow, PartialWindowError> {
        if text.len() > MAX_PARTIAL_WINDOW_BYTES {
            return Err(PartialWindowError::TooLarge { bytes: text.len(), limit: MAX_PARTIAL_WINDOW_BYTES });
        }
        let unreadable = |e: serde_json::Error| PartialWindowError::Unreadable {
            format: "JSON",
            message: crate::text::shorten_long_tokens(&e.to_string()).into_owned(),
        };
        let probe: VersionProbe = serde_json::from_str(text).map_err(unreadable)?;
        probe.check()?;
        let partial: PartialWindow = serde_json::from_str(text).map_err(unreadable)?;
        partial.check_header()?;
        Ok(partial)
    }

    fn header(&self) -> Header {
        Header {
            model: self.model.clone(),
            model_version: self.model_version.clone(),
            segment: self.segment.clone(),
            window_start_ms: self.window_start_ms,
            window_end_ms: self.window_end_ms,
            baseline: self.baseline.clone(),
        }
    }

    /// The version, and the names and window bounds (which say where the
    /// state goes) within what events may carry.
    pub(crate) fn check_header(&self) -> Result<(), PartialWindowError> {
        VersionProbe { format_version: self.format_version }.check()?;
        let invalid = |field: &str, message: String| {
            Err(PartialWindowError::Invalid { model: quote(&self.model), field: field.to_string(), message })
        };
        for (field, text, limit) in [
            ("model", &self.model, crate::config::MAX_NAME_BYTES),
            ("model_version", &self.model_version, MAX_EVENT_NAME_BYTES),
            ("segment", &self.segment, MAX_SEGMENT_BYTES),
        ] {
            if text.len() > limit {
                return invalid(field, format!("{} bytes long; the limit is {limit}", text.len()));
            }
        }
        if self.window_end_ms <= self.window_start_ms {
            return invalid(
                "window_end_ms",
                format!("{} is not after window_start_ms {}", self.window_end_ms, self.window_start_ms),
            );
        }
        Ok(())
    }

    /// Every class name the partial mentions, sorted.
    fn class_names(&self) -> BTreeSet<String> {
        let performance = &self.performance;
        let mut names: BTreeSet<String> = BTreeSet::new();
        if let PartialPrediction::Classes(counts) = &self.prediction {
            names.extend(counts.keys().cloned());
        }
        for (predicted, actual) in &performance.confusion {
            names.insert(predicted.clone());
            names.extend(actual.keys().cloned());
        }
        names.extend(performance.score_sums.keys().cloned());
        names.extend(performance.score_histograms.keys().cloned());
        names.extend(performance.exact_scores.iter().flatten().map(|s| s.actual.clone()));
        names
    }

    /// Ids of this partial's (and `other`'s) names in name order.
    fn scratch_ids(&self, other: Option<&PartialWindow>) -> Ids {
        let mut features: BTreeSet<&String> = self.features.keys().collect();
        let mut classes = self.class_names();
        if let Some(other) = other {
            features.extend(other.features.keys());
            classes.extend(other.class_names());
        }
        Ids {
            features: features.into_iter().enumerate().map(|(id, name)| (name.clone(), id)).collect(),
            classes: classes.into_iter().enumerate().map(|(id, name)| (name, id as ClassId)).collect(),
        }
    }

    /// Bins must be those of the model's baseline (or none, when lost).
    fn check_reference_bins(&self, model: &ModelState) -> Result<(), PartialWindowError> {
        let bins_of = |reference: Option<&FeatureReference>| match reference {
            Some(FeatureReference::Numeric(r)) => r.proportions.len(),
            _ => 0,
        };
        let reference = model.reference.as_deref();
        let mut columns: Vec<(String, usize, usize)> = vec![
            ("score_bins".into(), self.score_bins.len(), bins_of(reference.and_then(|r| r.score.as_ref()))),
            (
                "prediction_bins".into(),
                self.prediction_bins.len(),
                bins_of(reference.and_then(|r| r.prediction.as_ref())),
            ),
        ];
        for (name, feature) in &self.features {
            let expected = bins_of(reference.and_then(|r| r.feature(name)).map(|r| &**r));
            columns.push((format!("features[{}].reference_bins", quote(name)), feature.reference_bins.len(), expected));
        }
        for (field, found, expected) in columns {
            if found != 0 && found != expected {
                return Err(PartialWindowError::Invalid {
                    model: quote(&self.model),
                    field,
                    message: format!("{found} bins; the model's baseline has {expected}"),
                });
            }
        }
        Ok(())
    }

    fn encode(header: Header, state: &WindowState, names: &Names<'_>) -> PartialWindow {
        let features = state
            .features
            .iter()
            .enumerate()
            .filter_map(|(id, feature)| Some((names.features[id].to_string(), encode_feature(feature.as_ref()?))))
            .collect();
        let prediction = match &state.prediction {
            PredictionSummary::Classes(counts) => PartialPrediction::Classes(
                counts
                    .iter()
                    .enumerate()
                    .filter(|(_, n)| **n > 0)
                    .map(|(id, n)| (names.class(id as ClassId), *n))
                    .collect(),
            ),
            PredictionSummary::Values(summary) => PartialPrediction::Values(PartialNumeric::of(summary)),
        };
        PartialWindow {
            format_version: PARTIAL_WINDOW_FORMAT_VERSION,
            model: header.model,
            model_version: header.model_version,
            segment: header.segment,
            window_start_ms: header.window_start_ms,
            window_end_ms: header.window_end_ms,
            baseline: header.baseline,
            events: state.events,
            features,
            prediction,
            score: PartialNumeric::of(&state.score),
            latency_ms: PartialNumeric::of(&state.latency_ms),
            score_bins: state.score_bins.clone(),
            score_bins_lost: state.score_bins_lost,
            prediction_bins: state.prediction_bins.clone(),
            prediction_bins_lost: state.prediction_bins_lost,
            performance: encode_performance(&state.performance, names),
        }
    }

    /// The state with `ids` for names; checks every value.
    fn decode(&self, ids: &Ids) -> Result<WindowState, PartialWindowError> {
        let invalid =
            |field: String, message: String| PartialWindowError::Invalid { model: quote(&self.model), field, message };
        let numeric = |field: &str, partial: &PartialNumeric| {
            partial.to_summary().map_err(|message| invalid(field.to_string(), message))
        };
        if let Some(long) = self.class_names().into_iter().find(|class| class.len() > MAX_EVENT_NAME_BYTES) {
            return Err(invalid(
                format!("class {}", quote(&long)),
                format!("{} bytes long; the limit is {MAX_EVENT_NAME_BYTES}", long.len()),
            ));
        }
        let mut state = empty_state(matches!(self.prediction, PartialPrediction::Classes(_)));
        state.events = self.events;
        for (name, feature) in &self.features {
            let field = |what: &str| format!("features[{}].{what}", quote(name));
            if name.len() > MAX_EVENT_NAME_BYTES {
                return Err(invalid(
                    field("name"),
                    format!("{} bytes long; the limit is {MAX_EVENT_NAME_BYTES}", name.len()),
                ));
            }
            let summary = match &feature.summary {
                PartialSummary::Numeric(partial) => {
                    FeatureSummary::Numeric(Box::new(numeric(&field("summary.numeric"), partial)?))
                }
                PartialSummary::Categorical(partial) => FeatureSummary::Categorical(
                    decode_categories(partial).map_err(|message| invalid(field("summary.categorical"), message))?,
                ),
            };
            let id = ids.features[name];
            if state.features.len() <= id {
                state.features.resize_with(id + 1, || None);
            }
            state.features[id] = Some(FeatureState {
                summary,
                type_errors: feature.type_errors,
                reference_bins: feature.reference_bins.clone(),
                out_of_range: feature.out_of_range,
                bins_lost: feature.bins_lost,
            });
        }
        state.prediction = match &self.prediction {
            PartialPrediction::Classes(counts) => {
                let mut by_id = vec![0; counts.keys().map(|c| ids.classes[c] as usize + 1).max().unwrap_or(0)];
                for (class, n) in counts {
                    by_id[ids.classes[class] as usize] = *n;
                }
                PredictionSummary::Classes(by_id)
            }
            PartialPrediction::Values(partial) => {
                PredictionSummary::Values(Box::new(numeric("prediction.values", partial)?))
            }
        };
        state.score = numeric("score", &self.score)?;
        state.latency_ms = numeric("latency_ms", &self.latency_ms)?;
        state.score_bins = self.score_bins.clone();
        state.score_bins_lost = self.score_bins_lost;
        state.prediction_bins = self.prediction_bins.clone();
        state.prediction_bins_lost = self.prediction_bins_lost;
        state.performance =
            decode_performance(&self.performance, ids).map_err(|(field, message)| invalid(field, message))?;
        Ok(state)
    }
}

/// What identifies a partial window (everything but the state).
struct Header {
    model: String,
    model_version: String,
    segment: String,
    window_start_ms: i64,
    window_end_ms: i64,
    baseline: Option<String>,
}

/// The format version alone, read before the rest so that another version
/// is reported as such and not as unknown fields.
#[derive(Deserialize)]
struct VersionProbe {
    format_version: u32,
}

impl VersionProbe {
    fn check(&self) -> Result<(), PartialWindowError> {
        if self.format_version == PARTIAL_WINDOW_FORMAT_VERSION {
            Ok(())
        } else {
            Err(PartialWindowError::UnsupportedVersion {
                found: self.format_version,
                supported: PARTIAL_WINDOW_FORMAT_VERSION,
            })
        }
    }
}

fn encode_feature(feature: &FeatureState) -> PartialFeature {
    PartialFeature {
        summary: match &feature.summary {
            FeatureSummary::Numeric(summary) => PartialSummary::Numeric(PartialNumeric::of(summary)),
            FeatureSummary::Categorical(summary) => PartialSummary::Categorical(encode_categories(summary)),
        },
        type_errors: feature.type_errors,
        reference_bins: feature.reference_bins.clone(),
        out_of_range: feature.out_of_range,
        bins_lost: feature.bins_lost,
    }
}

fn encode_categories(summary: &CategoricalSummary) -> PartialCategories {
    PartialCategories {
        missing: summary.missing,
        count: summary.count,
        frequencies: summary.frequencies.iter().map(|(value, n)| (value.to_string(), *n)).collect(),
        other: summary.other,
    }
}

fn decode_categories(partial: &PartialCategories) -> Result<CategoricalSummary, String> {
    let named = partial.frequencies.values().try_fold(partial.other, |sum, n| sum.checked_add(*n));
    if named != Some(partial.count) {
        return Err(format!(
            "count {} is not the sum of the frequencies and other ({})",
            partial.count,
            named.map_or_else(|| "more than 2^64".to_string(), |n| n.to_string())
        ));
    }
    if let Some(long) = partial.frequencies.keys().find(|value| value.len() > MAX_CATEGORY_BYTES) {
        return Err(format!("a value of {} bytes; the limit is {MAX_CATEGORY_BYTES}", long.len()));
    }
    Ok(CategoricalSummary {
        missing: partial.missing,
        count: partial.count,
        frequencies: partial.frequencies.iter().map(|(value, n)| (Arc::<str>::from(value.as_str()), *n)).collect(),
        other: partial.other,
    })
}

fn encode_performance(performance: &PerformanceState, names: &Names<'_>) -> PartialPerformance {
    let mut confusion: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for (&(predicted, actual), &n) in &performance.confusion {
        confusion.entry(names.class(predicted)).or_default().insert(names.class(actual), n);
    }
    let scores = &performance.scores;
    let paired = performance.paired;
    PartialPerformance {
        labeled: performance.labeled,
        confusion,
        abs_error_sum: performance.abs_error_sum,
        squared_error_sum: performance.squared_error_sum,
        abs_pct_error_sum: performance.abs_pct_error_sum,
        pct_count: performance.pct_count,
        actual_mean: performance.actual_mean,
        actual_m2: performance.actual_m2,
        score_sums: scores
            .sums
            .iter()
            .map(|(class, s)| {
                (
                    names.class(*class),
                    PartialScoreSums {
                        count: s.count,
                        ln_score: s.ln_score,
                        ln_complement: s.ln_complement,
                        score_squared: s.score_squared,
                        complement_squared: s.complement_squared,
                    },
                )
            })
            .collect(),
        exact_scores: scores.exact.as_ref().map(|pairs| {
            pairs.iter().map(|(score, class)| PartialScore { score: *score, actual: names.class(*class) }).collect()
        }),
        score_histograms: scores.histograms.iter().map(|(class, bins)| (names.class(*class), bins.clone())).collect(),
        paired: PartialPairedCounts {
            events: paired.events,
            champion_correct: paired.champion_correct,
            champion_only: paired.champion_only,
            shadow_only: paired.shadow_only,
        },
    }
}

/// The performance state with `ids` for class names; an error names the
/// field.
fn decode_performance(partial: &PartialPerformance, ids: &Ids) -> Result<PerformanceState, (String, String)> {
    let class = |name: &String| ids.classes[name];
    let mut confusion = BTreeMap::new();
    for (predicted, actuals) in &partial.confusion {
        for (actual, n) in actuals {
            confusion.insert((class(predicted), class(actual)), *n);
        }
    }
    let floats = [
        partial.abs_error_sum,
        partial.squared_error_sum,
        partial.abs_pct_error_sum,
        partial.actual_mean,
        partial.actual_m2,
    ];
    if !floats.iter().all(|v| v.is_finite()) {
        return Err(("performance".into(), "error sums and actual moments must be finite".into()));
    }
    let mut sums = BTreeMap::new();
    for (name, s) in &partial.score_sums {
        let values = [s.ln_score, s.ln_complement, s.score_squared, s.complement_squared];
        if !values.iter().all(|v| v.is_finite()) {
            return Err((format!("performance.score_sums[{}]", quote(name)), "sums must be finite".into()));
        }
        sums.insert(
            class(name),
            ScoreSums {
                count: s.count,
                ln_score: s.ln_score,
                ln_complement: s.ln_complement,
                score_squared: s.score_squared,
                complement_squared: s.complement_squared,
            },
        );
    }
    let scored = partial.score_sums.values().try_fold(0u64, |sum, s| sum.checked_add(s.count));
    match &partial.exact_scores {
        Some(pairs) => {
            if !partial.score_histograms.is_empty() || scored != Some(pairs.len() as u64) || pairs.len() > EXACT_SCORES
            {
                return Err((
                    "performance.exact_scores".into(),
                    format!(
                        "{} scored pairs (at most {EXACT_SCORES}, then histograms) for score sums counting {:?}",
                        pairs.len(),
                        scored
                    ),
                ));
            }
            if !pairs.iter().all(|p| (0.0..=1.0).contains(&p.score)) {
                return Err(("performance.exact_scores".into(), "a score outside [0, 1]".into()));
            }
        }
        None => {
            let binned = partial.score_histograms.values().flatten().try_fold(0u64, |sum, n| sum.checked_add(*n));
            if partial.score_histograms.values().any(|bins| bins.len() != SCORE_BINS) || binned != scored {
                return Err((
                    "performance.score_histograms".into(),
                    format!("histograms of {SCORE_BINS} bins must count every scored pair ({scored:?})"),
                ));
            }
        }
    }
    let paired = PairedCounts {
        events: partial.paired.events,
        champion_correct: partial.paired.champion_correct,
        champion_only: partial.paired.champion_only,
        shadow_only: partial.paired.shadow_only,
    };
    Ok(PerformanceState {
        labeled: partial.labeled,
        confusion,
        abs_error_sum: partial.abs_error_sum,
        squared_error_sum: partial.squared_error_sum,
        abs_pct_error_sum: partial.abs_pct_error_sum,
        pct_count: partial.pct_count,
        actual_mean: partial.actual_mean,
        actual_m2: partial.actual_m2,
        scores: ScoreState {
            sums,
            exact: partial
                .exact_scores
                .as_ref()
                .map(|pairs| pairs.iter().map(|p| (p.score, class(&p.actual))).collect()),
            histograms: partial.score_histograms.iter().map(|(name, bins)| (class(name), bins.clone())).collect(),
        },
        paired,
    })
}

/// A double that keeps every bit: itself in binary formats, in text
/// formats a string of the shortest decimal that reads back to it.
#[derive(Clone, Copy)]
struct ExactF64(f64);

impl Serialize for ExactF64 {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(&format_args!("{:?}", self.0))
        } else {
            serializer.serialize_f64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for ExactF64 {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<ExactF64, D::Error> {
        if deserializer.is_human_readable() {
            let text = String::deserialize(deserializer)?;
            text.parse()
                .map(ExactF64)
                .map_err(|_| serde::de::Error::custom(format!("{} is not a number written as a string", quote(&text))))
        } else {
            f64::deserialize(deserializer).map(ExactF64)
        }
    }
}

mod exact_float {
    use super::*;

    pub fn serialize<S: Serializer>(value: &f64, serializer: S) -> Result<S::Ok, S::Error> {
        ExactF64(*value).serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
        ExactF64::deserialize(deserializer).map(|v| v.0)
    }
}

mod exact_float_option {
    use super::*;

    pub fn serialize<S: Serializer>(value: &Option<f64>, serializer: S) -> Result<S::Ok, S::Error> {
        value.map(ExactF64).serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<f64>, D::Error> {
        Ok(Option::<ExactF64>::deserialize(deserializer)?.map(|v| v.0))
    }
}

mod exact_float_values {
    use super::*;

    pub fn serialize<S: Serializer>(values: &Option<Vec<f64>>, serializer: S) -> Result<S::Ok, S::Error> {
        values.as_ref().map(|values| values.iter().map(|v| ExactF64(*v)).collect::<Vec<_>>()).serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Vec<f64>>, D::Error> {
        Ok(Option::<Vec<ExactF64>>::deserialize(deserializer)?.map(|values| values.into_iter().map(|v| v.0).collect()))
    }
}
