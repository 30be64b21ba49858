//! Shared harness for faultline's end-to-end tests: network namespaces joined by veth
//! pairs (created here, deleted on drop), sockets opened inside a namespace, the real
//! agent binary as a child process, and a UDP sender / counting receiver.
//!
//! Addresses are 10.200.x.y and fd00:fa17::/64 on veths the harness creates inside
//! its own namespaces; no traffic ever leaves them.
pub mod agent;
pub mod checks;
pub mod container;
pub mod coordinator;
pub mod fleet;
pub mod lab;
pub mod loaders;
pub mod monitoring;
pub mod netns;
pub mod node;
pub mod rtt;
pub mod sandbox;
pub mod test_run;
pub mod traffic;
pub mod workload;

pub use agent::{Agent, agent_binary, limits_file};

pub use checks::assert_nothing_attached;
pub use netns::{Netns, Pair};

/// Whether the tests run in the emulated VM lane (FAULTLINE_EMULATED), where TCG's
/// timers and the host's steal make every timing and CPU-time measurement noisier.
pub fn emulated() -> bool {
    std::env::var_os("FAULTLINE_EMULATED").is_some()
}

/// A measurement bound: `host` on this machine, `emulated` in the VM lane.
pub fn slack<T>(host: T, emulated: T) -> T {
    if self::emulated() { emulated } else { host }
}

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

/// A process the test started, stopped on drop: SIGTERM, up to 5 s to exit (a
/// daemon undoes its mounts and sockets then), SIGKILL after; always reaped.
pub struct Proc(pub std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        use std::time::{Duration, Instant};
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let until = Instant::now() + Duration::from_secs(5);
        while matches!(self.0.try_wait(), Ok(None)) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A path in the temp dir that is removed (file or directory tree) when dropped, so
/// tests leave nothing behind. Derefs to `Path`.
#[derive(Debug)]
pub struct TempPath(std::path::PathBuf);

impl TempPath {
    /// `<temp>/<prefix>-<pid>-<n>`, not created.
    pub fn new(prefix: &str) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        Self(std::env::temp_dir().join(format!(
            "{prefix}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        )))
    }

    /// A path the caller made (e.g. under another scratch directory): removed on
    /// drop like the others, so a failing test leaves nothing behind.
    pub fn adopt(path: std::path::PathBuf) -> Self {
        Self(path)
    }

    /// Like `new`, created as an empty directory.
    pub fn dir(prefix: &str) -> Self {
        let t = Self::new(prefix);
        std::fs::create_dir_all(&t.0).expect("create temp dir");
        t
    }
}

impl std::ops::Deref for TempPath {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        remove_path(&self.0);
    }
}

/// Removes `path`, a file or a directory tree; one that is already gone is fine.
pub(crate) fn remove_path(path: &std::path::Path) {
    let _ = if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
}
