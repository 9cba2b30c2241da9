//! Rules: SQL alert rules over `window_metrics` and the alert lifecycle
//! (docs/RULES.md).
//!
//! - [`file`] — the rule file format as written (Prometheus-style groups).
//! - [`ruleset`] — loading and checking: SQL planned against the schema,
//!   templates compiled, notifier names and duplicates checked, errors with
//!   file and line.
//! - [`lifecycle`] — evaluation on each batch of closed windows and the
//!   inactive → pending → firing → resolved state machine per alert
//!   instance, with `for`, `keep_firing_for` and `cooldown`.
//! - [`lint`] — checks beyond planning: metric names no window produces,
//!   text in double quotes, unknown template variables and filters.
//! - [`testing`] — `driftwatch rules test`: rule unit tests.
//!
//! Architecture invariant: rules never do I/O; they turn rows into
//! transitions. Writing the alerts file and the audit log is `output`'s job;
//! delivering notifications is `notify`'s.

pub mod file;
pub mod lifecycle;
pub mod lint;
pub mod ruleset;
pub mod testing;

pub use lifecycle::{AlertEngine, AlertEvent, Transition};
pub use ruleset::{RuleError, RuleSet};
