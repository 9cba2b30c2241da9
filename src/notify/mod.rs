//! Notify: retraining webhooks, email and Alertmanager delivery. Not built
//! yet (issue 5); the module exists so the tree shows where the stage sits in
//! the data flow.
//!
//! Architecture invariant: notify (with the Kafka source) is the only stage
//! that talks to the network.
