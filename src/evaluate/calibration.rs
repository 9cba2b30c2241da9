//! Moved to [`crate::baseline::calibration`]: the Wasserstein calibration sits below [`crate::model`], so the
//! module graph has no cycle. Only `evaluate/mod.rs` still names this
//! path; everything else imports [`crate::baseline::calibration`] directly.

pub use crate::baseline::calibration::*;
