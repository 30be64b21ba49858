//! faultline's contract, shared by the coordinator, the agents and the CLI.
//!
//! `v1` is the gRPC contract (AgentService for the agents' sessions, ChaosService
//! for people and CI), generated from `proto/faultline/v1/faultline.proto`.
//!
//! `limits` is the `chaos_limits` document operators write (the shape of the
//! reference production-chaos report); both the coordinator and every agent
//! enforce it, so a request that slips past one is still refused by the other.
//!
//! `spec` is the experiment spec document (the report's scenario blocks plus
//! faultline's fields); `endpoint` is the one rule for what an agent may be ordered
//! to call; `filter` the rules of traffic filters, cgroup paths and loss resolution.
#[cfg(feature = "logging")]
pub mod docs;
pub mod endpoint;
pub mod exposition;
pub mod filter;
pub mod jitter;
pub mod limits;
#[cfg(feature = "logging")]
pub mod logging;
#[cfg(feature = "logging")]
pub mod options_file;
pub mod spec;
pub mod v1;
