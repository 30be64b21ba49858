//! faultline's control plane, as a library the `faultline-coordinator` binary, the
//! `faultline` CLI and their tests use.
pub mod agents;
pub mod api;
pub mod auth;
pub mod certs;
pub mod config;
pub mod control;
pub mod dashboard;
pub mod experiment;
pub mod faults;
pub mod guards;
pub mod health;
pub mod leases;
pub mod limits;
pub mod metrics;
pub mod plan;
pub mod preflight;
pub mod report;
pub mod schedule;
pub mod server;
pub mod store;
pub mod view;
