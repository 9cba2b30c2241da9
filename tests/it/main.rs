//! driftwatch's integration tests, one binary (DataFusion is heavy to link).
//!
//! `replay` checks the engine's numbers against numpy on committed fixtures;
//! `kafka` runs the daemon against a real Kafka-protocol broker (Tansu,
//! started per test on a loopback port); `cli` drives the binary.

mod agreement;
mod baseline;
mod ci_examples;
mod classes;
mod cli;
mod cluster;
mod compose;
mod demo;
mod docs;
mod drift;
mod durability;
mod gate;
mod gate_online;
mod hostile;
mod http;
mod kafka;
mod lanes;
mod modules;
pub mod notify;
mod observability;
mod properties;
mod receivers;
mod reload;
mod replay;
mod restart;
mod rules;
mod secrets;
mod shutdown;
mod support;
mod watermarks;
