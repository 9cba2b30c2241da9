//! Rules: SQL alert rules over `window_metrics` and the alert lifecycle.
//! Not built yet (issue 4); the module exists so the tree shows where the
//! stage sits in the data flow.
//!
//! Architecture invariant: rules never do I/O; only `notify` talks to
//! receivers.
