//! Scale-out over Kafka (docs/ARCHITECTURE.md, "Scale-out over Kafka"):
//! the bookkeeping that lets several instances sharing a consumer group
//! give one exact answer. `record.rs` is what they publish to the
//! partials topic: deltas (the partial window states read from one stretch
//! of a source partition) and commits. `timeline.rs` holds, per source partition, the
//! stretches of it that sources published and the merger has not yet
//! taken in: provisional until the source's commit covers them, replaced
//! when a new owner (or the same one, after a crash) publishes the same
//! stretch again, so a stretch is counted once whoever read it.
//!
//! Pure: no I/O, no clock; tested with data alone.

pub mod record;
pub mod timeline;
