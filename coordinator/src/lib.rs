//! faultline's control plane, as a library the `faultline-coordinator` binary, the
//! `faultline` CLI and their tests use.
pub mod api;
pub mod config;
pub mod dashboard;
pub mod engine;
pub mod fleet;
pub mod health;
pub mod metrics;
pub mod report;
pub mod schedule;
pub mod server;
pub mod store;
pub mod view;
