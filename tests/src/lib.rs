//! Shared harness for faultline's end-to-end tests: network namespaces joined by veth
//! pairs (created here, deleted on drop), sockets opened inside a namespace, the real
//! agent binary as a child process, and a UDP sender / counting receiver.
//!
//! Addresses are 10.200.x.y and fd00:fa17::/64 on veths the harness creates inside
//! its own namespaces; no traffic ever leaves them.
pub mod agent;
pub mod checks;
pub mod netns;
pub mod node;
pub mod traffic;

pub use agent::{Agent, agent_binary, limits_file};
pub use checks::assert_nothing_attached;
pub use netns::{Netns, Pair};

/// The running kernel's (major, minor), e.g. (6, 18).
pub fn kernel_version() -> (u32, u32) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    let mut parts = release
        .trim()
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// TCX (tc BPF links) exists from Linux 6.6.
pub fn has_tcx() -> bool {
    kernel_version() >= (6, 6)
}
