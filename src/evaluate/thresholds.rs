//! Moved to [`crate::baseline::thresholds`]: the drift thresholds sits below [`crate::model`], so the
//! module graph has no cycle. Only `evaluate/mod.rs` still names this
//! path; everything else imports [`crate::baseline::thresholds`] directly.

pub use crate::baseline::thresholds::*;
