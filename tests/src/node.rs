//! Node-wide readings and cgroup fixtures shared by the stress tests and benchmarks.
use std::path::{Path, PathBuf};

/// Jiffies over all CPUs from the first line of /proc/stat.
#[derive(Clone, Copy, Debug)]
pub struct ProcStat {
    /// user + nice + system + irq + softirq: the CPU the node's own tasks used, as
    /// `top` (us+ni+sy+hi+si) and node_exporter's non-idle, non-steal modes add up.
    pub busy: u64,
    /// Time the hypervisor ran something else while this guest wanted the CPU: not
    /// work done on the node, so not counted busy, but shown next to it.
    pub steal: u64,
    /// Every mode (idle, iowait and steal included).
    pub total: u64,
}

pub fn proc_stat() -> ProcStat {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let v: Vec<u64> = stat
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let total: u64 = v.iter().take(8).sum();
    ProcStat {
        busy: v[0] + v[1] + v[2] + v[5] + v[6],
        steal: v[7],
        total,
    }
}

impl ProcStat {
    /// (busy, steal) in percent of all CPUs between `earlier` and `self`.
    pub fn shares_since(&self, earlier: &ProcStat) -> (f64, f64) {
        let total = self.total.saturating_sub(earlier.total).max(1) as f64;
        (
            100.0 * self.busy.saturating_sub(earlier.busy) as f64 / total,
            100.0 * self.steal.saturating_sub(earlier.steal) as f64 / total,
        )
    }
}

/// Node CPU over a window, as the node's monitoring and the kernel each tell it.
#[derive(Clone, Copy, Debug)]
pub struct NodeCpu {
    /// Busy percent by /proc/stat (user+nice+system+irq+softirq), what `top` and
    /// node_exporter show: CPU time charged per timer tick.
    pub stat: f64,
    /// Steal percent by /proc/stat: the hypervisor running others while this guest
    /// wanted to run. Not work on the node; printed so a noisy host is visible.
    pub steal: f64,
    /// Busy percent by the kernel's nanosecond counter of task run time.
    pub precise: f64,
}

/// The node's CPU over `window` (slept through), in percent of all CPUs.
pub fn node_cpu(window: std::time::Duration) -> NodeCpu {
    let cpus = online_cpus() as f64;
    let s0 = proc_stat();
    let n0 = node_cpu_ns();
    let start = std::time::Instant::now();
    std::thread::sleep(window);
    let s1 = proc_stat();
    let n1 = node_cpu_ns();
    let elapsed = start.elapsed().as_nanos() as f64;
    let (stat, steal) = s1.shares_since(&s0);
    NodeCpu {
        stat,
        steal,
        precise: 100.0 * (n1 - n0) as f64 / elapsed / cpus,
    }
}

/// The node's CPU counters read every few milliseconds on a thread of their own,
/// each reading stamped with the wall clock, so that the node's share can be had
/// afterwards over any span that others timed with the wall clock (an agent's
/// samples), to within the reading interval at each end.
pub struct NodeTrace {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<(std::time::SystemTime, ProcStat, u64)>>>,
}

impl NodeTrace {
    pub fn start(every: std::time::Duration) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut readings = Vec::new();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                readings.push((std::time::SystemTime::now(), proc_stat(), node_cpu_ns()));
                std::thread::sleep(every);
            }
            readings
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the readings; what they say between two wall-clock times.
    pub fn finish(mut self) -> NodeTraced {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        NodeTraced(self.thread.take().unwrap().join().unwrap())
    }
}

/// The readings of a `NodeTrace`.
pub struct NodeTraced(Vec<(std::time::SystemTime, ProcStat, u64)>);

impl NodeTraced {
    /// The wall-clock span from the first reading to the last.
    pub fn span(&self) -> Option<(std::time::SystemTime, std::time::SystemTime)> {
        Some((self.0.first()?.0, self.0.last()?.0))
    }

    /// The node's CPU from the reading nearest `from` to the one nearest `to`, or
    /// None if either is more than `within` away from every reading.
    pub fn between(
        &self,
        from: std::time::SystemTime,
        to: std::time::SystemTime,
        within: std::time::Duration,
    ) -> Option<NodeCpu> {
        let nearest = |t: std::time::SystemTime| {
            let gap = |r: &&(std::time::SystemTime, ProcStat, u64)| {
                r.0.duration_since(t)
                    .or_else(|_| t.duration_since(r.0))
                    .unwrap_or_default()
            };
            self.0.iter().min_by_key(gap).filter(|r| gap(r) <= within)
        };
        let (a, b) = (nearest(from)?, nearest(to)?);
        let wall = b.0.duration_since(a.0).ok()?.as_nanos() as f64;
        let (stat, steal) = b.1.shares_since(&a.1);
        Some(NodeCpu {
            stat,
            steal,
            precise: 100.0 * b.2.saturating_sub(a.2) as f64 / wall / online_cpus() as f64,
        })
    }
}

/// A process's name and utime + stime in seconds, from its /proc/<pid>/stat text.
/// The name is in parentheses and may hold spaces or parentheses itself, so the
/// fields are counted from the last ")": utime and stime are the 12th and 13th after it.
fn stat_cpu_s(stat: &str) -> Option<(&str, f64)> {
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let f: Vec<&str> = stat.get(close + 2..)?.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((&stat[open + 1..close], ticks as f64 / hz))
}

/// utime + stime of process `pid` in seconds; None once it is gone.
pub fn process_cpu_s(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat_cpu_s(&stat).map(|(_, s)| s)
}

/// The processes whose name starts with `prefix` (stress-ng names its workers
/// stress-ng-cpu).
pub fn pids_named(prefix: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            stat_cpu_s(&stat)
                .is_some_and(|(name, _)| name.starts_with(prefix))
                .then_some(pid)
        })
        .collect()
}

/// What a set of processes used, summed over their threads.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    /// Run time by the scheduler's nanosecond counter (each thread's schedstat): the
    /// time the precise node counters hold for them, without the 10 ms steps of
    /// utime + stime.
    pub run_ns: u64,
    /// Kernel time, stime (what `top` shows as `sy`), in seconds.
    pub system_s: f64,
    /// Voluntary context switches: each one a sleep, so a wake-up to come.
    pub sleeps: u64,
}

impl Usage {
    /// The difference since `earlier`, of threads alive at both readings.
    pub fn since(&self, earlier: &Usage) -> Usage {
        Usage {
            run_ns: self.run_ns.saturating_sub(earlier.run_ns),
            system_s: (self.system_s - earlier.system_s).max(0.0),
            sleeps: self.sleeps.saturating_sub(earlier.sleeps),
        }
    }
}

/// stime in seconds from a /proc/<pid>/stat text (the 13th field after the name).
fn stat_system_s(stat: &str) -> Option<f64> {
    let close = stat.rfind(')')?;
    let ticks: u64 = stat
        .get(close + 2..)?
        .split_whitespace()
        .nth(12)?
        .parse()
        .ok()?;
    // SAFETY: sysconf has no preconditions.
    Some(ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64)
}

/// `Usage` of the processes `pids` now; those gone count nothing.
pub fn usage(pids: &[u32]) -> Usage {
    let mut u = Usage::default();
    for pid in pids {
        if let Some(s) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| stat_system_s(&s))
        {
            u.system_s += s;
        }
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            if let Some(ns) = std::fs::read_to_string(t.path().join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            {
                u.run_ns += ns;
            }
            if let Some(n) = std::fs::read_to_string(t.path().join("status"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                        .and_then(|v| v.trim().parse::<u64>().ok())
                })
            {
                u.sleeps += n;
            }
        }
    }
    u
}

/// The stress fence group's share of the whole node between two of the agent's
/// readings (`group_cpu_us` over `elapsed_ms`), in percent.
pub fn group_share(a: &serde_json::Value, b: &serde_json::Value, cpus: f64) -> f64 {
    let us = b["group_cpu_us"].as_u64().unwrap() - a["group_cpu_us"].as_u64().unwrap();
    let ms = b["elapsed_ms"].as_u64().unwrap() - a["elapsed_ms"].as_u64().unwrap();
    100.0 * us as f64 / 1000.0 / ms as f64 / cpus
}

/// A node-wide measurement needs a quiet node: flush dirty pages (a build just
/// before leaves gigabytes to write back) and wait, up to 20 s, for a second in
/// which the node is below `busy_below` % by the precise counter (the kernel
/// finishes tearing down earlier tests' network namespaces in deferred work).
pub fn wait_quiet(busy_below: f64) {
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while node_cpu(std::time::Duration::from_secs(1)).precise > busy_below
        && std::time::Instant::now() < until
    {}
}

/// CPU time of every task on the node in nanoseconds, as the kernel accounts it
/// precisely: the root cgroup's counter (cpuacct.usage on v1, cpu.stat usage_usec
/// on v2).
pub fn node_cpu_ns() -> u64 {
    if let Ok(v1) = std::fs::read_to_string("/sys/fs/cgroup/cpuacct/cpuacct.usage") {
        return v1.trim().parse().unwrap();
    }
    let stat = std::fs::read_to_string("/sys/fs/cgroup/cpu.stat")
        .expect("no root CPU counter (cpuacct.usage or cpu.stat)");
    stat.lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .map(|v| v.trim().parse::<u64>().unwrap() * 1000)
        .unwrap()
}

pub fn meminfo_kb(key: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap();
    text.lines()
        .find_map(|l| {
            l.strip_prefix(key)?
                .trim()
                .trim_end_matches(" kB")
                .trim()
                .parse()
                .ok()
        })
        .unwrap()
}

/// Free pages the kernel keeps on its per-CPU lists (each pageset's `count` in
/// /proc/zoneinfo), in kB. They are free memory that MemAvailable counts as used; a
/// large free leaves hundreds of MiB there for minutes, and the next allocation
/// takes them first.
pub fn per_cpu_free_kb() -> u64 {
    std::fs::read_to_string("/proc/zoneinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("count:")?.trim().parse::<u64>().ok())
        .sum::<u64>()
        * 4
}

/// Used memory in percent of MemTotal: MemTotal - MemAvailable, less the free
/// pages parked on per-CPU lists.
pub fn mem_used_percent() -> f64 {
    let total = meminfo_kb("MemTotal:") as f64;
    let used = total - meminfo_kb("MemAvailable:") as f64 - per_cpu_free_kb() as f64;
    100.0 * used / total
}

/// True once `pid` has exited: gone from /proc, or a zombie awaiting its reaper.
pub fn exited(pid: u64) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.is_empty() || stat.contains(") Z")
}

pub fn cgroup_v2() -> bool {
    Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// What a workload's manager (systemd, the kubelet) does before it runs workloads
/// in their own cgroups on v2: hand cpu and memory below the root. The tests'
/// workload groups need it; the agent does it for its own groups and must not rely
/// on this (the VM lane's init leaves the root bare, so whichever test runs first
/// shows it). A no-op on v1.
pub fn delegate_below_root() {
    if cgroup_v2() {
        std::fs::write("/sys/fs/cgroup/cgroup.subtree_control", "+cpu +memory")
            .expect("enable cpu and memory below the cgroup root");
    }
}

/// The node's CPUs as its counters cover them: the `cpuN` lines of /proc/stat.
pub fn online_cpus() -> usize {
    std::fs::read_to_string("/proc/stat")
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count()
}

/// The CFS quota of a stress group, in µs per period, from its directories as the
/// `armed` event lists them (v1: the cpu hierarchy's; v2: `cpu.max`).
pub fn cpu_quota_us(dirs: &[String]) -> u64 {
    for d in dirs {
        let d = Path::new(d);
        if let Ok(q) = std::fs::read_to_string(d.join("cpu.cfs_quota_us")) {
            return q.trim().parse().unwrap();
        }
        if let Ok(max) = std::fs::read_to_string(d.join("cpu.max")) {
            return max.split_whitespace().next().unwrap().parse().unwrap();
        }
    }
    panic!("no CPU quota file in {dirs:?}")
}

/// A stress group's directories, as the agent's `armed` event lists them.
pub fn cgroup_dirs(armed: &serde_json::Value) -> Vec<String> {
    armed["cgroup"]
        .as_array()
        .expect("armed event without cgroup")
        .iter()
        .map(|d| d.as_str().expect("cgroup directory").to_owned())
        .collect()
}

/// CFS periods and throttled periods so far of a stress group, given its directories
/// (the agent's `armed` event lists them): cpu.stat's nr_periods and nr_throttled,
/// from the one directory that has it (the cpu controller's, v1 or v2).
pub fn cpu_throttling(dirs: &[String]) -> (u64, u64) {
    let Some(stat) = dirs
        .iter()
        .find_map(|d| std::fs::read_to_string(Path::new(d).join("cpu.stat")).ok())
    else {
        panic!("no cpu.stat in {dirs:?}");
    };
    let field = |k: &str| {
        stat.lines()
            .find_map(|l| l.strip_prefix(k)?.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {k}in cpu.stat of {dirs:?}"))
    };
    (field("nr_periods "), field("nr_throttled "))
}

/// No faultline stress group or parent is left in any hierarchy.
pub fn assert_no_stress_cgroups() {
    for dir in [
        "/sys/fs/cgroup/faultline",
        "/sys/fs/cgroup/cpu/faultline",
        "/sys/fs/cgroup/memory/faultline",
        "/sys/fs/cgroup/cpuacct/faultline",
    ] {
        assert!(!Path::new(dir).exists(), "{dir} left behind");
    }
}

/// A workload cgroup `fltest-<tag>-<pid>` in each hierarchy the agent uses, with cpu
/// and memory delegated below it on v2 (as systemd does); removed on drop.
pub struct TargetCgroup {
    pub rel: String,
    /// v2: the one directory; v1: cpu, memory, cpuacct.
    pub dirs: Vec<PathBuf>,
}

impl TargetCgroup {
    /// A group other groups go under (a workload's, for `--target-cgroup`).
    pub fn new(tag: &str) -> Self {
        let g = Self::leaf(tag);
        if cgroup_v2() {
            std::fs::write(g.dirs[0].join("cgroup.subtree_control"), "+cpu +memory").unwrap();
        }
        g
    }

    /// A group processes go into (v2 refuses processes in a group that hands its
    /// controllers down).
    pub fn leaf(tag: &str) -> Self {
        let rel = format!("fltest-{tag}-{}", std::process::id());
        let root = PathBuf::from("/sys/fs/cgroup");
        let dirs: Vec<PathBuf> = if cgroup_v2() {
            delegate_below_root();
            vec![root.join(&rel)]
        } else {
            ["cpu", "memory", "cpuacct"]
                .iter()
                .map(|h| root.join(h).join(&rel))
                .collect()
        };
        for d in &dirs {
            std::fs::create_dir(d).unwrap();
        }
        Self { rel, dirs }
    }

    /// Sets the group's CFS quota: `quota_us` of CPU time per `period_us`, what a
    /// Kubernetes CPU limit or a systemd CPUQuota writes.
    pub fn set_cpu_limit(&self, quota_us: u64, period_us: u64) {
        if cgroup_v2() {
            std::fs::write(
                self.dirs[0].join("cpu.max"),
                format!("{quota_us} {period_us}"),
            )
            .unwrap();
        } else {
            std::fs::write(
                self.dirs[0].join("cpu.cfs_period_us"),
                period_us.to_string(),
            )
            .unwrap();
            std::fs::write(self.dirs[0].join("cpu.cfs_quota_us"), quota_us.to_string()).unwrap();
        }
    }

    /// Sets the group's hard memory limit.
    pub fn set_memory_limit(&self, bytes: u64) {
        if cgroup_v2() {
            std::fs::write(self.dirs[0].join("memory.max"), bytes.to_string()).unwrap();
        } else {
            std::fs::write(
                self.dirs[1].join("memory.limit_in_bytes"),
                bytes.to_string(),
            )
            .unwrap();
        }
    }
}

impl Drop for TargetCgroup {
    fn drop(&mut self) {
        for d in &self.dirs {
            let _ = std::fs::remove_dir(d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_cpu_reads_utime_and_stime_after_a_name_with_parentheses() {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let stat = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 5 0";
        let (name, s) = stat_cpu_s(stat).unwrap();
        assert_eq!(name, "a) b (c)");
        assert_eq!(s, 300.0 / hz);
        assert!(stat_cpu_s("42 (cut").is_none());
        // Some CPU of this process's own, more than a clock tick's worth.
        let t = std::time::Instant::now();
        while t.elapsed() < std::time::Duration::from_millis(100) {
            std::hint::black_box(t.elapsed());
        }
        let own = std::fs::read_to_string("/proc/self/stat").unwrap();
        let (name, used) = stat_cpu_s(&own).unwrap();
        assert!(used > 0.0, "{own}");
        assert!(process_cpu_s(std::process::id()).unwrap() >= used);
        assert!(pids_named(name).contains(&std::process::id()));
        assert!(process_cpu_s(u32::MAX).is_none());
        assert_eq!(stat_system_s(stat), Some(50.0 / hz));
    }

    #[test]
    fn usage_counts_run_time_in_nanoseconds_and_sleeps() {
        let me = [std::process::id()];
        let a = usage(&me);
        let t = std::time::Instant::now();
        while t.elapsed() < std::time::Duration::from_millis(30) {
            std::hint::black_box(t.elapsed());
        }
        for _ in 0..5 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let d = usage(&me).since(&a);
        // 30 ms of spinning on this thread alone, whatever else the test harness runs.
        assert!(d.run_ns >= 30_000_000, "{d:?}");
        assert!(d.sleeps >= 5, "{d:?}");
        assert_eq!(usage(&[u32::MAX]), Usage::default());
    }
}
