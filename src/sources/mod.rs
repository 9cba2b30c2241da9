//! Sources: where event payloads come from. [`kafka`] is the daemon's
//! consumer-group source; [`files`] reads NDJSON and Parquet for `replay`.
//!
//! Architecture invariant: sources do I/O and hand raw payloads to the
//! pipeline; they never interpret an event's contents.

pub mod dead_letters;
pub mod files;
pub mod kafka;
pub mod members;
pub mod merge;
pub mod partials;
