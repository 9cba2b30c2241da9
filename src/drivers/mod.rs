//! Drivers: the loops that feed one pipeline from a source and write its
//! rows somewhere. [`run`] is the daemon over Kafka, [`replay`] the same
//! engine over files, [`demo`] everything in one process.

pub mod demo;
pub mod lanes;
pub mod replay;
pub mod run;
pub mod simulate;
