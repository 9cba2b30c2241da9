//! Moved to [`crate::sketch`]: the quantile sketch sits below [`crate::model`], so the
//! module graph has no cycle. Only `evaluate/mod.rs` still names this
//! path; everything else imports [`crate::sketch`] directly.

pub use crate::sketch::*;
