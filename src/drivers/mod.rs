//! Drivers: the loops that feed one pipeline from a source and write its
//! rows somewhere. [`run`] is the daemon over Kafka, [`replay`] the same
//! engine over files.

pub mod alerting;
pub mod replay;
pub mod run;
pub mod simulate;
