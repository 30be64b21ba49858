//! Shared harness for faultline's end-to-end tests: network namespaces joined by veth
//! pairs (created here, deleted on drop), sockets opened inside a namespace, the real
//! agent binary as a child process, and a UDP sender / counting receiver.
//!
//! Addresses are 10.200.x.y and fd00:fa17::/64 on veths the harness creates inside
//! its own namespaces; no traffic ever leaves them.
pub mod agent;
pub mod checks;
pub mod netns;
pub mod traffic;

pub use agent::{Agent, agent_binary, limits_file};
pub use checks::assert_nothing_attached;
pub use netns::{Netns, Pair};
