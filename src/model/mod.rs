//! The models driftwatch watches: their names, tasks and the per-model
//! dictionaries (series and classes) that the decoder fills and the window
//! stage reads.
//!
//! A *series* is one (model_version, segment) pair of a model; the decoder
//! interns it to a small integer so the window stage groups rows without
//! hashing strings. A *class* is one label value of a classification model,
//! interned the same way so predictions and labels compare as integers.
//! Each model also holds its baseline as the window stage uses it
//! ([`reference`]).

pub mod reference;

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{Config, ModelConfig, OVERFLOW_SEGMENT, OVERFLOW_VERSION, Task};
use reference::{FeatureReference, ModelReference};

/// Index of a model in [`ModelRegistry::models`].
pub type ModelId = u32;
/// Index of a (model_version, segment) pair in [`ModelState::series`].
pub type SeriesId = u32;
/// Index of a class label in [`ModelState::classes`].
pub type ClassId = u32;

/// One (model_version, segment) pair.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Series {
    pub model_version: Arc<str>,
    /// `""` for the whole model, else `key=value[,key=value]` with keys sorted.
    pub segment: Arc<str>,
    /// For a segment, the whole-model series of the same version: every
    /// event of a segment also counts towards segment `""` (docs/REFERENCE.md).
    pub whole_model: Option<SeriesId>,
    /// The join lane of the version: 0 for a serving version, `k` for the
    /// k-th of the model's `shadow_versions` ([`ModelConfig::shadow_lane`]).
    /// Derived from the config, never checkpointed: a restore recomputes it.
    #[serde(skip)]
    pub lane: u32,
}

/// A fast, deterministic hash map for short string keys.
pub type FastMap<K, V> = HashMap<K, V, foldhash::fast::FixedState>;
/// A fast, deterministic hash set for short string keys.
pub type FastSet<K> = std::collections::HashSet<K, foldhash::fast::FixedState>;

/// Interns strings to dense ids; lookups by `&str` never allocate.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct Interner {
    ids: FastMap<Arc<str>, u32>,
    names: Vec<Arc<str>>,
}

impl Interner {
    /// Returns the id of `name`, adding it when new and `names.len() < cap`.
    pub fn intern(&mut self, name: &str, cap: usize) -> Option<u32> {
        if let Some(id) = self.ids.get(name) {
            return Some(*id);
        }
        if self.names.len() >= cap {
            return None;
        }
        let id = self.names.len() as u32;
        let name: Arc<str> = Arc::from(name);
        self.ids.insert(name.clone(), id);
        self.names.push(name);
        Some(id)
    }

    pub fn get(&self, name: &str) -> Option<u32> {
        self.ids.get(name).copied()
    }

    pub fn name(&self, id: u32) -> &Arc<str> {
        &self.names[id as usize]
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// The kind of a feature, fixed when it is first seen (or by the baseline).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum FeatureKind {
    Numeric,
    Categorical,
}

/// A feature column of a model.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct FeatureMeta {
    pub name: Arc<str>,
    pub kind: FeatureKind,
}

/// Everything driftwatch has learned about one model while running.
#[derive(Debug, Clone)]
pub struct ModelState {
    pub name: Arc<str>,
    pub task: Task,
    pub config: ModelConfig,
    /// Interned `model_version + '\0' + segment` keys.
    pub series_keys: Interner,
    pub series: Vec<Series>,
    /// The distinct `model_version` values of [`Self::series`] (rebuilt
    /// from them on restore), so `pipeline.max_versions_per_model` can cap
    /// them.
    pub versions: FastSet<Arc<str>>,
    /// Class labels (classification tasks only).
    pub classes: Interner,
    pub feature_ids: FastMap<Arc<str>, u32>,
    pub features: Vec<FeatureMeta>,
    /// The feature id last seen at each position of an event's features
    /// object: producers usually write features in the same order, so a
    /// string compare replaces most hash lookups.
    pub feature_order_hint: Vec<u32>,
    /// The model's baseline, when one is configured.
    pub reference: Option<Arc<ModelReference>>,
    /// Per feature id, its baseline reference (if the baseline has it).
    pub feature_refs: Vec<Option<Arc<FeatureReference>>>,
}

impl ModelState {
    pub fn new(config: &ModelConfig) -> Self {
        ModelState {
            name: Arc::from(config.name.as_str()),
            task: config.task,
            config: config.clone(),
            series_keys: Interner::default(),
            series: Vec::new(),
            versions: FastSet::default(),
            classes: Interner::default(),
            feature_ids: FastMap::default(),
            features: Vec::new(),
            feature_order_hint: Vec::new(),
            reference: None,
            feature_refs: Vec::new(),
        }
    }

    /// Attaches a baseline: its features are registered up front with the
    /// baseline's kinds, so events cannot change a feature's type.
    pub fn attach_reference(&mut self, reference: ModelReference) {
        let reference = Arc::new(reference);
        for (name, feature) in &reference.features {
            if !self.feature_ids.contains_key(name.as_str()) {
                self.add_feature(name, feature.kind());
            }
        }
        self.reference = Some(reference);
        self.feature_refs =
            self.features.iter().map(|f| self.reference.as_ref().and_then(|r| r.feature(&f.name).cloned())).collect();
    }

    /// Registers a new feature and returns its id.
    pub fn add_feature(&mut self, name: &str, kind: FeatureKind) -> u32 {
        let name: Arc<str> = Arc::from(name);
        let id = self.features.len() as u32;
        self.feature_ids.insert(name.clone(), id);
        let reference = self.reference.as_ref().and_then(|r| r.feature(&name).cloned());
        self.features.push(FeatureMeta { name, kind });
        self.feature_refs.push(reference);
        id
    }

    /// Puts back checkpointed dictionaries: series, classes and features
    /// keep the ids the checkpointed windows use. Baseline features the
    /// checkpoint did not know are added after them.
    pub fn restore_dictionaries(
        &mut self,
        series_keys: Interner,
        series: Vec<Series>,
        classes: Interner,
        features: Vec<FeatureMeta>,
    ) {
        let baseline: Vec<FeatureMeta> = self.features.clone();
        self.series_keys = series_keys;
        self.versions = series.iter().map(|s| s.model_version.clone()).collect();
        self.series = series;
        for series in &mut self.series {
            series.lane = self.config.shadow_lane(&series.model_version);
        }
        self.classes = classes;
        self.features.clear();
        self.feature_ids.clear();
        self.feature_refs.clear();
        self.feature_order_hint.clear();
        for feature in &features {
            self.add_feature(&feature.name, feature.kind);
        }
        for feature in baseline {
            if !self.feature_ids.contains_key(&feature.name) {
                self.add_feature(&feature.name, feature.kind);
            }
        }
    }

    /// The id of the series whose key (`model_version + '\0' + segment`,
    /// the segment's `key=value` pairs sorted by key) is in `key`, its
    /// version `version_len` bytes long; interned when new. A version
    /// beyond `max_versions_per_model` (a configured shadow version
    /// excepted) is filed under [`OVERFLOW_VERSION`], a series beyond
    /// `max_segments_per_model` under the segment [`OVERFLOW_SEGMENT`];
    /// `key` then holds the key used. A new segment series also interns
    /// its whole-model series. The decoder and partial windows
    /// (`window/partial.rs`) intern through here, so both file a series
    /// alike.
    pub fn intern_series_key(
        &mut self,
        key: &mut String,
        version_len: usize,
        (max_segments, max_versions): (usize, usize),
    ) -> (SeriesId, OverCap) {
        let mut over_cap = OverCap::default();
        if let Some(id) = self.series_keys.get(key) {
            return (id, over_cap);
        }
        let mut version_len = version_len;
        if !self.versions.contains(&key[..version_len]) {
            // Configured shadow versions are never folded: their predictions
            // would otherwise meet the champion's as duplicates.
            if self.versions.len() >= max_versions && self.config.shadow_lane(&key[..version_len]) == 0 {
                over_cap.version = true;
                key.replace_range(..version_len, OVERFLOW_VERSION);
                version_len = OVERFLOW_VERSION.len();
                if let Some(id) = self.series_keys.get(key) {
                    return (id, over_cap);
                }
            }
            if !self.versions.contains(&key[..version_len]) {
                self.versions.insert(Arc::from(&key[..version_len]));
            }
        }
        let segment_start = version_len + 1;
        let id = match self.series_keys.intern(key, max_segments) {
            Some(id) => id,
            None => {
                over_cap.segment = true;
                key.truncate(segment_start);
                key.push_str(OVERFLOW_SEGMENT);
                self.series_keys.intern(key, usize::MAX).expect("no cap")
            }
        };
        if id as usize == self.series.len() {
            let version: Arc<str> = Arc::from(&key[..version_len]);
            let segment: Arc<str> = Arc::from(&key[segment_start..]);
            let whole_model = if segment.is_empty() {
                None
            } else {
                key.truncate(segment_start);
                Some(self.series_keys.intern(key, usize::MAX).expect("no cap"))
            };
            let lane = self.config.shadow_lane(&version);
            self.series.push(Series { model_version: version.clone(), segment, whole_model, lane });
            if let Some(parent) = whole_model
                && parent as usize == self.series.len()
            {
                self.series.push(Series { model_version: version, segment: Arc::from(""), whole_model: None, lane });
            }
        }
        (id, over_cap)
    }

    /// The series (`version`, `segment`) for names another registry (a
    /// lane's) interned first, filed as the decoder files them: the caps
    /// apply again here, over what all lanes met.
    pub fn series_named(&mut self, version: &str, segment: &str, caps: (usize, usize)) -> SeriesId {
        let mut key = String::with_capacity(version.len() + 1 + segment.len());
        key.push_str(version);
        key.push('\0');
        key.push_str(segment);
        self.intern_series_key(&mut key, version.len(), caps).0
    }

    /// The feature `name`, added with `kind` when new and the model tracks
    /// fewer than `max_features` (see [`Self::series_named`]); `None` when
    /// it is over the cap (its values are left out, as the decoder does).
    pub fn feature_named(&mut self, name: &str, kind: FeatureKind, max_features: usize) -> Option<u32> {
        match self.feature_ids.get(name) {
            Some(&id) => Some(id),
            None if self.features.len() >= max_features => None,
            None => Some(self.add_feature(name, kind)),
        }
    }

    pub fn is_classification(&self) -> bool {
        !matches!(self.task, Task::Regression)
    }

    /// The id of the class that counts as positive for binary metrics: the
    /// model's `positive_class`, or "1".
    pub fn positive_class(&self) -> Option<ClassId> {
        self.classes.get(self.config.binary_classes().0)
    }

    /// The id of feature `name` seen at `position` of an event's features.
    #[inline]
    pub fn feature_id(&mut self, position: usize, name: &str) -> Option<u32> {
        if let Some(&hint) = self.feature_order_hint.get(position)
            && *self.features[hint as usize].name == *name
        {
            return Some(hint);
        }
        let id = *self.feature_ids.get(name)?;
        if self.feature_order_hint.len() <= position {
            self.feature_order_hint.resize(position + 1, id);
        }
        self.feature_order_hint[position] = id;
        Some(id)
    }
}

/// What [`ModelState::intern_series_key`] filed elsewhere because a cap
/// was reached.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct OverCap {
    /// The version went to [`OVERFLOW_VERSION`].
    pub version: bool,
    /// The series went to segment [`OVERFLOW_SEGMENT`].
    pub segment: bool,
}

/// All configured models, by id and by name.
#[derive(Debug, Clone)]
pub struct ModelRegistry {
    pub models: Vec<ModelState>,
    by_name: HashMap<Arc<str>, ModelId>,
}

impl ModelRegistry {
    pub fn from_config(config: &Config) -> Self {
        let models: Vec<ModelState> = config.models.iter().map(ModelState::new).collect();
        let by_name = models.iter().enumerate().map(|(i, m)| (m.name.clone(), i as ModelId)).collect();
        ModelRegistry { models, by_name }
    }

    pub fn id(&self, name: &str) -> Option<ModelId> {
        self.by_name.get(name).copied()
    }

    pub fn get(&self, id: ModelId) -> &ModelState {
        &self.models[id as usize]
    }

    pub fn get_mut(&mut self, id: ModelId) -> &mut ModelState {
        &mut self.models[id as usize]
    }
}
