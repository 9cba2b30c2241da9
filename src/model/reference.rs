//! The baseline as the window stage uses it: per feature, what a closed
//! window is compared with (bin edges and proportions, category shares,
//! range, missing rate, the reference sketch), prepared once at start-up.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use super::FeatureKind;
use crate::baseline::thresholds::WassersteinNull;
use crate::baseline::{Baseline, ColumnProfile};
use crate::sketch::QuantileSketch;

/// One feature's reference.
#[derive(Debug, Clone, PartialEq)]
pub enum FeatureReference {
    Numeric(NumericReference),
    Categorical(CategoricalReference),
}

impl FeatureReference {
    pub fn kind(&self) -> FeatureKind {
        match self {
            FeatureReference::Numeric(_) => FeatureKind::Numeric,
            FeatureReference::Categorical(_) => FeatureKind::Categorical,
        }
    }

    pub fn missing_rate(&self) -> f64 {
        match self {
            FeatureReference::Numeric(r) => r.missing_rate,
            FeatureReference::Categorical(r) => r.missing_rate,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct NumericReference {
    pub count: u64,
    pub missing_rate: f64,
    pub mean: Option<f64>,
    pub std: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// Inner bin edges; bin i holds `edges[i-1] < v <= edges[i]`.
    pub edges: Vec<f64>,
    pub proportions: Vec<f64>,
    pub quantiles: Vec<(String, f64)>,
    pub sketch: QuantileSketch,
    /// The Wasserstein null law, calibrated from the sketch on first use.
    pub wasserstein_null: OnceLock<WassersteinNull>,
}

impl NumericReference {
    /// The calibrated null law of the normalised Wasserstein distance.
    pub fn wasserstein_null(&self) -> &WassersteinNull {
        self.wasserstein_null.get_or_init(|| WassersteinNull::calibrate(&self.sketch, self.std.unwrap_or(0.0)))
    }

    /// The bin of a value.
    #[inline]
    pub fn bin(&self, value: f64) -> usize {
        self.edges.partition_point(|&e| e < value)
    }

    /// Whether a value lies outside the reference's [min, max].
    #[inline]
    pub fn out_of_range(&self, value: f64) -> bool {
        self.min.is_some_and(|m| value < m) || self.max.is_some_and(|m| value > m)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct CategoricalReference {
    pub count: u64,
    pub missing_rate: f64,
    /// Category → index into `proportions`; the last proportion is `other`.
    pub index: HashMap<String, usize>,
    pub categories: Vec<String>,
    pub proportions: Vec<f64>,
}

/// A model's baseline, prepared for the window stage.
#[derive(Debug, Clone)]
pub struct ModelReference {
    pub baseline: Arc<Baseline>,
    /// Features in name order.
    pub features: Vec<(String, Arc<FeatureReference>)>,
    pub prediction: Option<FeatureReference>,
    pub score: Option<FeatureReference>,
    pub label: Option<FeatureReference>,
    /// What identifies this baseline in a checkpoint.
    pub stamp: BaselineStamp,
}

/// A baseline's identity as a checkpoint records it: the sha256 of the
/// whole profile, and per column that windows count into bins (numeric
/// features, `score`, `prediction`) a hash of what the counts depend on
/// (bin edges and range). Restoring windows under a baseline with another
/// stamp re-bins the columns whose hash differs (see
/// `WindowState::reattach`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BaselineStamp {
    pub sha256: String,
    /// `features.<name>`, `score`, `prediction` → xxh3-64 of the binning.
    pub binning: std::collections::BTreeMap<String, u64>,
}

impl BaselineStamp {
    fn of(baseline: &Baseline) -> BaselineStamp {
        use sha2::Digest;
        let json = serde_json::to_vec(baseline).expect("a baseline always serialises");
        let sha256 = format!("{:x}", sha2::Sha256::digest(&json));
        let mut binning = std::collections::BTreeMap::new();
        let columns = baseline
            .features
            .iter()
            .map(|(name, profile)| (format!("features.{name}"), profile))
            .chain(baseline.score.iter().map(|p| ("score".to_string(), p)))
            .chain(baseline.prediction.iter().map(|p| ("prediction".to_string(), p)));
        for (column, profile) in columns {
            if let ColumnProfile::Numeric(p) = profile {
                let mut bytes = Vec::with_capacity(8 * (p.bin_edges.len() + 4));
                for value in p.bin_edges.iter().copied().chain([p.min, p.max].into_iter().flatten()) {
                    bytes.extend_from_slice(&value.to_bits().to_le_bytes());
                }
                bytes.extend_from_slice(&(p.bin_proportions.len() as u64).to_le_bytes());
                bytes.extend_from_slice(&[u8::from(p.min.is_some()), u8::from(p.max.is_some())]);
                binning.insert(column, xxhash_rust::xxh3::xxh3_64(&bytes));
            }
        }
        BaselineStamp { sha256, binning }
    }

    /// The first 12 hex digits of the sha256, for log lines.
    pub fn short(&self) -> &str {
        &self.sha256[..self.sha256.len().min(12)]
    }
}

impl ModelReference {
    pub fn new(baseline: Baseline) -> ModelReference {
        let features = baseline
            .features
            .iter()
            .map(|(name, profile)| (name.clone(), Arc::new(FeatureReference::from_profile(profile))))
            .collect();
        let prepare = |p: &Option<ColumnProfile>| p.as_ref().map(FeatureReference::from_profile);
        ModelReference {
            stamp: BaselineStamp::of(&baseline),
            prediction: prepare(&baseline.prediction),
            score: prepare(&baseline.score),
            label: prepare(&baseline.label),
            baseline: Arc::new(baseline),
            features,
        }
    }

    pub fn feature(&self, name: &str) -> Option<&Arc<FeatureReference>> {
        self.features.iter().find(|(n, _)| n == name).map(|(_, r)| r)
    }
}

impl CategoricalReference {
    /// The baseline's share of values outside its listed categories.
    pub fn other_share(&self) -> f64 {
        self.proportions.last().copied().unwrap_or(0.0)
    }

    /// Counts per reference category (the last one `other`) of named counts.
    pub fn counts<'a>(&self, named: impl Iterator<Item = (&'a str, u64)>) -> Vec<u64> {
        let mut counts = vec![0u64; self.proportions.len()];
        let other = counts.len() - 1;
        for (name, count) in named {
            counts[self.index.get(name).copied().unwrap_or(other)] += count;
        }
        counts
    }
}

impl FeatureReference {
    pub fn from_profile(profile: &ColumnProfile) -> FeatureReference {
        match profile {
            ColumnProfile::Numeric(p) => FeatureReference::Numeric(NumericReference {
                count: p.count,
                missing_rate: p.missing_rate,
                mean: p.mean,
                std: p.std,
                min: p.min,
                max: p.max,
                edges: p.bin_edges.clone(),
                proportions: p.bin_proportions.clone(),
                quantiles: p.quantiles.iter().map(|(k, v)| (k.clone(), *v)).collect(),
                sketch: p.sketch.clone(),
                wasserstein_null: match p.calibration.get("wasserstein") {
                    Some(spreads) => OnceLock::from(WassersteinNull::from_spreads(spreads)),
                    None => OnceLock::new(),
                },
            }),
            ColumnProfile::Categorical(p) => {
                let categories: Vec<String> = p.frequencies.keys().cloned().collect();
                let mut proportions: Vec<f64> = p.frequencies.values().copied().collect();
                proportions.push(p.other);
                FeatureReference::Categorical(CategoricalReference {
                    count: p.count,
                    missing_rate: p.missing_rate,
                    index: categories.iter().enumerate().map(|(i, c)| (c.clone(), i)).collect(),
                    categories,
                    proportions,
                })
            }
        }
    }
}
