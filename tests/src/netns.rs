//! Network namespaces and veth pairs that delete themselves.
use std::{
    fs::File,
    os::fd::AsRawFd,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Runs `ip` with `args`, panicking with its stderr on failure.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Output of a command run inside `ns` (e.g. `tc filter show`).
pub fn run_in(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .expect("ip netns exec");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// A network namespace named `fl<pid>-<n><tag>`, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        static SWEPT: std::sync::Once = std::sync::Once::new();
        SWEPT.call_once(sweep_dead_owners);
        let name = format!(
            "fl{}-{}{tag}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        Self { name }
    }

    /// Runs `f` on a thread that has entered this namespace. Sockets created there stay
    /// in the namespace wherever they are used afterwards.
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let ns = File::open(&path).expect("open netns");
            // SAFETY: valid fd of a network namespace; affects this thread only.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("netns thread")
    }
}

impl Netns {
    /// Steers receive processing on `veth0` to CPU 0 (RPS). veth queues a packet on
    /// the backlog of the CPU that sent it, so a qdisc releasing one flow from two CPUs
    /// (its timer on one, the sender on the other) can see it reordered after the
    /// qdisc, which a NIC queue would not do; with one receive CPU a test sees the
    /// order and timing the qdisc produced.
    pub fn single_receive_cpu(&self) {
        let file = format!("/sys/class/net/{IFACE}/queues/rx-0/rps_cpus");
        let out = run_in(
            &self.name,
            &["sh", "-c", &format!("echo 1 > {file} && cat {file}")],
        );
        let mask = out.trim().trim_start_matches(['0', ',']);
        assert_eq!(mask, "1", "RPS not set in {}: {out}", self.name);
    }

    /// A private agent state directory for this namespace (removed on drop).
    pub fn state_dir(&self) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("{}-state", self.name));
        std::fs::create_dir_all(&dir).expect("state dir");
        dir
    }
}

/// The pid in a name this crate made (`fl<pid>-<n><tag>`, `<prefix>-<pid>-<n>`),
/// if that pid no longer runs. A test process that was killed (a timeout, Ctrl-C
/// on the whole process group) never ran its drops; its namespaces, the processes
/// left inside them and its temp paths are removed by the next test process.
fn dead_owner(pid: &str) -> bool {
    !pid.is_empty()
        && pid.bytes().all(|b| b.is_ascii_digit())
        && pid != std::process::id().to_string()
        && !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

fn sweep_dead_owners() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("fl").and_then(|r| r.split('-').next()) else {
            continue;
        };
        if !name.contains('-') || !dead_owner(pid) {
            continue;
        }
        let pids = run_in_quiet(&["netns", "pids", &name]);
        for p in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            // SAFETY: kill(2); the process is inside a namespace only tests create.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        delete(&name);
        eprintln!("removed network namespace {name} left by dead test process {pid}");
    }
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("faultline-") || name.starts_with("fl-")) {
            continue;
        }
        // `<prefix>-<pid>-<n>`: the pid is the second-to-last part.
        let mut parts = name.rsplit('-');
        let (Some(n), Some(pid)) = (parts.next(), parts.next()) else {
            continue;
        };
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) || !dead_owner(pid) {
            continue;
        }
        crate::remove_path(&e.path());
    }
}

fn run_in_quiet(args: &[&str]) -> String {
    Command::new("ip")
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Deletes the namespace `name` and its agent state directory (see `state_dir`).
fn delete(name: &str) {
    let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!("{name}-state")));
    let _ = Command::new("ip").args(["netns", "del", name]).status();
}

impl Drop for Netns {
    fn drop(&mut self) {
        delete(&self.name);
    }
}

/// Two namespaces joined by a veth pair: `a` (10.200.N.1, fd00:fa17:N::1) and `b`
/// (10.200.N.2, fd00:fa17:N::2). The interface in each is called `veth0`.
pub struct Pair {
    pub a: Netns,
    pub b: Netns,
    pub subnet: u32,
}

pub const IFACE: &str = "veth0";

impl Pair {
    pub fn new() -> Self {
        let a = Netns::new("a");
        let b = Netns::new("b");
        let subnet = 1 + NEXT.fetch_add(1, Ordering::Relaxed) % 250;
        ip(&[
            "link", "add", "flpeer", "netns", &a.name, "type", "veth", "peer", "name", "flpeer",
            "netns", &b.name,
        ]);
        for (ns, host) in [(&a, 1), (&b, 2)] {
            ip(&["-n", &ns.name, "link", "set", "flpeer", "name", IFACE]);
            let v4 = format!("10.200.{subnet}.{host}/24");
            let v6 = format!("fd00:fa17:{subnet}::{host}/64");
            ip(&["-n", &ns.name, "addr", "add", &v4, "dev", IFACE]);
            ip(&["-n", &ns.name, "addr", "add", &v6, "dev", IFACE, "nodad"]);
            ip(&["-n", &ns.name, "link", "set", IFACE, "up"]);
        }
        Self { a, b, subnet }
    }

    pub fn v4(&self, host: u8) -> String {
        format!("10.200.{}.{host}", self.subnet)
    }

    pub fn v6(&self, host: u8) -> String {
        format!("fd00:fa17:{}::{host}", self.subnet)
    }
}

impl Default for Pair {
    fn default() -> Self {
        Self::new()
    }
}
