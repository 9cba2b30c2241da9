//! Moved to [`crate::model::reference`]: the prepared baseline sits below [`crate::model`], so the
//! module graph has no cycle. Only `evaluate/mod.rs` still names this
//! path; everything else imports [`crate::model::reference`] directly.

pub use crate::model::reference::*;
