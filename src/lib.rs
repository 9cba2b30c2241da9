//! driftwatch: a streaming model-monitoring daemon.
//!
//! The crate is laid out along the data flow (see docs/ARCHITECTURE.md):
//! [`sources`] → [`decode`] → [`join`] → [`window`] → [`evaluate`] →
//! [`rules`] → [`notify`], wired by [`engine`] and [`pipeline`] and driven by
//! [`drivers`] (`run` over Kafka, `replay` over files).

pub mod alerting;
pub mod baseline;
pub mod checkpoint;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod decode;
pub mod drivers;
pub mod engine;
pub mod evaluate;
pub mod fsutil;
pub mod gate;
pub mod http;
pub mod join;
pub mod lanes;
pub mod metrics;
pub mod model;
pub mod notify;
pub mod otlp;
pub mod output;
pub mod pipeline;
pub mod profiling;
pub mod rng;
pub mod rules;
pub mod shutdown;
pub mod simulate;
pub mod sketch;
pub mod sources;
pub mod stats;
pub mod telemetry;
pub mod template;
pub mod text;
pub mod timestamp;
pub mod window;
pub mod window_metrics;
