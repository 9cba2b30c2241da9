//! Baselines: the reference profile of a model's training (or validation)
//! data that every window is compared with (docs/REFERENCE.md), the
//! calibration recorded in it ([`calibration`]) and the sample-size-aware
//! thresholds drift metrics are judged by ([`thresholds`]).
//! [`crate::profiling`] computes a profile from files with DataFusion;
//! [`crate::model::reference`] prepares one for the window stage.
//!
//! The profile is a JSON file with `"format_version": 1`. Loading is strict
//! (unknown keys are errors) so a hand-edited or truncated profile is caught
//! before it silently changes what counts as drift.

pub mod calibration;
pub mod thresholds;

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::sketch::QuantileSketch;

/// The profile format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// A model's reference profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Baseline {
    pub format_version: u32,
    pub model: String,
    pub version: Option<String>,
    /// RFC 3339 UTC time the profile was built.
    pub created_at: String,
    pub source: Source,
    /// `binary_classification`, `multiclass_classification` or `regression`.
    pub task: String,
    pub features: BTreeMap<String, ColumnProfile>,
    pub prediction: Option<ColumnProfile>,
    pub score: Option<ColumnProfile>,
    pub label: Option<ColumnProfile>,
    /// Reference performance (accuracy, precision, recall, f1 / mae, rmse,
    /// mape, r2) when labels and predictions are both present.
    #[serde(default)]
    pub performance: BTreeMap<String, f64>,
}

/// Where the reference data came from, so every alert traces back to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    pub files: Vec<SourceFile>,
    pub rows: u64,
    /// DVC `md5` of the dataset, when given with `--dvc-md5`.
    pub dvc_md5: Option<String>,
    /// MLflow run id, when given with `--mlflow-run-id`.
    pub mlflow_run_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceFile {
    pub path: String,
    pub rows: u64,
    pub sha256: String,
}

/// The profile of one column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ColumnProfile {
    Numeric(NumericProfile),
    Categorical(CategoricalProfile),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NumericProfile {
    /// Non-missing values.
    pub count: u64,
    pub missing: u64,
    pub missing_rate: f64,
    pub mean: Option<f64>,
    /// Sample standard deviation (n − 1).
    pub std: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// `p01`, `p05`, `p25`, `p50`, `p75`, `p95`, `p99`.
    pub quantiles: BTreeMap<String, f64>,
    /// Inner edges of the quantile bins (bins − 1 of them); the outer bins
    /// are open-ended, so every window value falls in some bin.
    pub bin_edges: Vec<f64>,
    /// Share of reference values in each bin (bins of them, summing to 1):
    /// bin i holds values v with `edges[i-1] < v <= edges[i]`.
    pub bin_proportions: Vec<f64>,
    /// The reference distribution as a mergeable relative-error sketch
    /// (for KS and Wasserstein against windows).
    pub sketch: QuantileSketch,
    /// Per drift metric, its spread across chunks resampled from this
    /// reference, per chunk size (`psi`, `ks`, `wasserstein`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub calibration: BTreeMap<String, Vec<ChunkSpread>>,
}

/// The spread of a drift metric across reference chunks of one size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkSpread {
    /// Values per chunk.
    pub size: u64,
    pub mean: f64,
    pub std: f64,
    /// Mean and std of the metric's logarithm (its positive values).
    pub log_mean: f64,
    pub log_std: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CategoricalProfile {
    pub count: u64,
    pub missing: u64,
    pub missing_rate: f64,
    /// Share of non-missing values per category, for the top categories.
    pub frequencies: BTreeMap<String, f64>,
    /// Share of non-missing values in all other categories.
    pub other: f64,
    /// Distinct values seen (up to the tracking cap).
    pub distinct: u64,
    /// Per drift metric, its spread across chunks resampled from this
    /// reference, per chunk size (`psi`, `chi2`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub calibration: BTreeMap<String, Vec<ChunkSpread>>,
}

/// Errors loading or writing a baseline, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum BaselineError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: not a baseline profile: {message}")]
    Format { path: String, message: String },
    #[error("{path}: format_version {found} is not supported (this build reads {FORMAT_VERSION})")]
    Version { path: String, found: u32 },
    #[error("{0}")]
    Build(String),
}

fn check_profile(path: &str, profile: &ColumnProfile) -> Result<(), String> {
    let share = |field: &str, v: f64| {
        if v.is_finite() && v >= 0.0 { Ok(()) } else { Err(format!("{path}.{field}: {v} is not a share >= 0")) }
    };
    let rate = |field: &str, v: f64| {
        if (0.0..=1.0).contains(&v) { Ok(()) } else { Err(format!("{path}.{field}: {v} is not within [0, 1]")) }
    };
    let calibration = |calibration: &BTreeMap<String, Vec<ChunkSpread>>| {
        for (metric, spreads) in calibration {
            for s in spreads {
                if s.size == 0 || ![s.mean, s.std, s.log_mean, s.log_std].iter().all(|v| v.is_finite()) {
                    return Err(format!("{path}.calibration.{metric}: a chunk spread is empty or not finite"));
                }
            }
        }
        Ok(())
    };
    match profile {
        ColumnProfile::Numeric(n) => {
            rate("missing_rate", n.missing_rate)?;
            for (field, value) in [("mean", n.mean), ("std", n.std), ("min", n.min), ("max", n.max)] {
                if value.is_some_and(|v| !v.is_finite()) {
                    return Err(format!("{path}.{field}: not a finite number"));
                }
            }
            if n.std.is_some_and(|s| s < 0.0) {
                return Err(format!("{path}.std: negative"));
            }
            if n.bin_edges.iter().any(|e| !e.is_finite()) || n.bin_edges.windows(2).any(|w| w[0] > w[1]) {
                return Err(format!("{path}.bin_edges: must be finite and in increasing order"));
            }
            if !(n.bin_proportions.is_empty() && n.bin_edges.is_empty())
                && n.bin_proportions.len() != n.bin_edges.len() + 1
            {
                return Err(format!(
                    "{path}.bin_proportions: {} entries for {} bin edges (expected one more than the edges)",
                    n.bin_proportions.len(),
                    n.bin_edges.len()
                ));
            }
            for p in &n.bin_proportions {
                share("bin_proportions", *p)?;
            }
            if n.quantiles.values().any(|q| !q.is_finite()) {
                return Err(format!("{path}.quantiles: not all finite"));
            }
            n.sketch.validate().map_err(|e| format!("{path}.sketch: {e}"))?;
            calibration(&n.calibration)
        }
        ColumnProfile::Categorical(c) => {
            rate("missing_rate", c.missing_rate)?;
            for f in c.frequencies.values() {
                share("frequencies", *f)?;
            }
            share("other", c.other)?;
            calibration(&c.calibration)
        }
    }
}

/// The largest baseline file read (256 MiB; a 25-feature profile with its
/// calibration is well under 1 MiB).
pub const MAX_BASELINE_BYTES: usize = 256 << 20;

impl Baseline {
    /// Reads and checks a profile.
    pub fn load(path: &Path) -> Result<Baseline, BaselineError> {
        let display = path.display().to_string();
        let text = crate::fsutil::read_text_file_bounded(path, MAX_BASELINE_BYTES)
            .map_err(|source| BaselineError::Io { path: display.clone(), source })?;
        Baseline::from_json_str(&text, &display)
    }

    /// Parses and checks a profile's JSON text; `display` names it in errors.
    pub fn from_json_str(text: &str, display: &str) -> Result<Baseline, BaselineError> {
        let baseline: Baseline = serde_json::from_str(text).map_err(|e| BaselineError::Format {
            path: display.to_string(),
            message: crate::text::shorten_long_tokens(&e.to_string()).into_owned(),
        })?;
        if baseline.format_version != FORMAT_VERSION {
            return Err(BaselineError::Version { path: display.to_string(), found: baseline.format_version });
        }
        baseline.validate().map_err(|message| BaselineError::Format { path: display.to_string(), message })?;
        Ok(baseline)
    }

    /// Checks that the profile is internally consistent (what every window
    /// is compared with must not be able to break that comparison): one
    /// proportion per bin, sorted finite edges, finite non-negative shares,
    /// rates within [0, 1], a sketch within the range of finite values.
    /// The error names the column and the field.
    pub fn validate(&self) -> Result<(), String> {
        let columns = self
            .features
            .iter()
            .map(|(name, profile)| (format!("features.{name}"), profile))
            .chain(self.prediction.iter().map(|p| ("prediction".to_string(), p)))
            .chain(self.score.iter().map(|p| ("score".to_string(), p)))
            .chain(self.label.iter().map(|p| ("label".to_string(), p)));
        for (path, profile) in columns {
            let path = crate::text::shorten_long_tokens(&path).into_owned();
            check_profile(&path, profile)?;
        }
        for (metric, value) in &self.performance {
            if !value.is_finite() {
                return Err(format!("performance.{metric}: not a finite number"));
            }
        }
        Ok(())
    }

    /// Writes the profile as pretty JSON, atomically and durably
    /// ([`crate::fsutil::write_atomically`]).
    pub fn save(&self, path: &Path) -> Result<(), BaselineError> {
        let display = path.display().to_string();
        let io = |source| BaselineError::Io { path: display.clone(), source };
        let json = serde_json::to_vec_pretty(self).expect("a baseline always serialises");
        let name = path
            .file_name()
            .ok_or_else(|| io(std::io::Error::new(std::io::ErrorKind::InvalidInput, "the path names no file")))?;
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        crate::fsutil::write_atomically(dir, &name.to_string_lossy(), &json).map_err(io)
    }
}
