//! The node's CPU and memory as its own monitoring reads them: a sample of the
//! kernel's counters (`NodeSample`) and the open files it is read from
//! (`NodeCounters`, `KernelFile`).
//!
//! Readings are taken once a second for as long as a fault runs, and what one costs
//! is CPU the node's monitoring counts on top of the stress. So the counter files are
//! opened once and re-read from the start: proc and cgroup files regenerate their
//! text on every read at offset 0. Opening a file after a second's sleep cost about
//! 35 µs of CPU here (path walk, stat, two reads, close, all on cold caches), so a
//! reading of five files by name cost 230 µs; re-reading open files costs a system
//! call each.
//!
//! Invariant: a sample's numbers are the kernel's at the time of the read, never a
//! copy of an earlier read (`a_kernel_file_reads_the_counter_as_it_is_now`).
use std::{
    fs::File,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context, Result, bail};

/// A kernel counter file, opened once and read whole from offset 0 each time.
pub struct KernelFile {
    file: File,
    path: PathBuf,
    buf: Vec<u8>,
}

impl KernelFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        Ok(Self {
            file,
            path: path.to_owned(),
            buf: vec![0; 4096],
        })
    }

    /// The file's text as the kernel generates it now.
    pub fn read(&mut self) -> Result<&str> {
        let mut len = 0;
        loop {
            if len == self.buf.len() {
                self.buf.resize(len * 2, 0);
            }
            let n = self
                .file
                .read_at(&mut self.buf[len..], len as u64)
                .with_context(|| format!("reading {}", self.path.display()))?;
            if n == 0 {
                break;
            }
            len += n;
        }
        std::str::from_utf8(&self.buf[..len])
            .with_context(|| format!("{} is not text", self.path.display()))
    }

    /// The file's single number.
    pub fn number(&mut self) -> Result<u64> {
        let path = self.path.display().to_string();
        let text = self.read()?;
        text.trim()
            .parse()
            .with_context(|| format!("{path} is not a number"))
    }

    /// The number after `key` (which includes its separator) in a flat keyed file
    /// such as cpu.stat or memory.stat.
    pub fn keyed(&mut self, key: &str) -> Result<u64> {
        let path = self.path.display().to_string();
        let text = self.read()?;
        keyed_in(text, key).with_context(|| format!("no {key} in {path}"))
    }
}

/// The number after `key` in the lines of `text`.
pub fn keyed_in(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
}

/// Node-wide readings: CPU two ways, and memory.
///
/// CPU busy time is read from the kernel's precise counter of task run time (the
/// root cgroup's `cpuacct.usage` on v1 or `cpu.stat usage_usec` on v2, else the
/// per-CPU run time in `/proc/schedstat`) and from the tick-sampled `/proc/stat`
/// that node_exporter, `top` and most dashboards read. The two agree for ordinary
/// workloads; they differ when runs line up with the timer tick, which is why the
/// agent reports both.
#[derive(Clone, Copy, Debug)]
pub struct NodeSample {
    busy_ticks: u64,
    total_ticks: u64,
    /// Nanoseconds all tasks have run, summed over CPUs (None: no precise counter).
    run_ns: Option<u64>,
    at: Instant,
    /// CPUs the node's counters cover: the `cpuN` lines of /proc/stat, the online
    /// CPUs, as node_exporter and `top` count them.
    pub cpus: usize,
    /// Bytes.
    pub mem_total: u64,
    /// Bytes.
    pub mem_available: u64,
}

/// The kernel's precise counter of task run time, in the order the agent prefers
/// them: the root cgroup's (v1 cpuacct, alone or co-mounted with cpu; v2), else the
/// per-CPU run time of /proc/schedstat.
enum Precise {
    /// Nanoseconds.
    CpuacctUsage(KernelFile),
    /// `usage_usec` in microseconds.
    CpuStat(KernelFile),
    /// Field 7 of each `cpuN` line, in nanoseconds.
    Schedstat(KernelFile),
}

impl Precise {
    fn open(cgroup_root: &Path) -> Option<Self> {
        let mut candidates = ["cpuacct/cpuacct.usage", "cpu,cpuacct/cpuacct.usage"]
            .iter()
            .filter_map(|rel| KernelFile::open(&cgroup_root.join(rel)).ok())
            .map(Precise::CpuacctUsage)
            .chain(
                KernelFile::open(&cgroup_root.join("cpu.stat"))
                    .ok()
                    .map(Precise::CpuStat),
            )
            .chain(
                KernelFile::open(Path::new("/proc/schedstat"))
                    .ok()
                    .map(Precise::Schedstat),
            );
        // The first that reads as a number now; a file that exists but does not
        // (cpu.stat of a v1 cpu hierarchy holds no usage) is passed over.
        candidates.find_map(|mut p| p.run_ns().map(|_| p))
    }

    fn run_ns(&mut self) -> Option<u64> {
        match self {
            Precise::CpuacctUsage(f) => f.number().ok(),
            Precise::CpuStat(f) => f.keyed("usage_usec ").ok().map(|us| us * 1000),
            Precise::Schedstat(f) => {
                let per_cpu: Vec<u64> = f
                    .read()
                    .ok()?
                    .lines()
                    .filter(|l| l.starts_with("cpu"))
                    .filter_map(|l| l.split_whitespace().nth(7)?.parse().ok())
                    .collect();
                (!per_cpu.is_empty()).then(|| per_cpu.iter().sum())
            }
        }
    }
}

/// The node's counter files, open for as long as readings are taken.
pub struct NodeCounters {
    precise: Option<Precise>,
    stat: KernelFile,
    meminfo: KernelFile,
}

impl NodeCounters {
    pub fn open(cgroup_root: &Path) -> Result<Self> {
        Ok(Self {
            precise: Precise::open(cgroup_root),
            stat: KernelFile::open(Path::new("/proc/stat"))?,
            meminfo: KernelFile::open(Path::new("/proc/meminfo"))?,
        })
    }

    pub fn sample(&mut self) -> Result<NodeSample> {
        let run_ns = self.precise.as_mut().and_then(Precise::run_ns);
        let at = Instant::now();
        let (busy_ticks, total_ticks, cpus) = parse_stat(self.stat.read()?)?;
        let (mem_total, mem_available) = parse_meminfo(self.meminfo.read()?)?;
        Ok(NodeSample {
            busy_ticks,
            total_ticks,
            run_ns,
            at,
            cpus,
            mem_total,
            mem_available,
        })
    }
}

/// (busy, total, CPUs) from /proc/stat: busy is what the node's own tasks used
/// (top's us+ni+sy+hi+si); steal is the hypervisor running other guests, in the
/// total, never in busy, so a noisy host does not read as faultline exceeding its
/// share. Guest time is already inside user.
fn parse_stat(text: &str) -> Result<(u64, u64, usize)> {
    let first = text.lines().next().unwrap_or_default();
    let Some(fields) = first.strip_prefix("cpu ") else {
        bail!("/proc/stat does not begin with the cpu line: {first:?}");
    };
    let v: Vec<u64> = fields
        .split_whitespace()
        .map(|x| x.parse().context("/proc/stat: a cpu field is not a number"))
        .collect::<Result<_>>()?;
    if v.len() < 4 {
        bail!(
            "/proc/stat: the cpu line has {} fields, not at least 4",
            v.len()
        );
    }
    // user nice system idle iowait irq softirq steal: the last four are missing on
    // kernels too old to run the agent anyway, and then count as 0.
    let f = |i: usize| v.get(i).copied().unwrap_or(0);
    let busy = f(0) + f(1) + f(2) + f(5) + f(6);
    let idle = f(3) + f(4) + f(7);
    let cpus = text
        .lines()
        .filter(|l| {
            l.strip_prefix("cpu")
                .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
        })
        .count();
    Ok((busy, busy + idle, cpus.max(1)))
}

/// (MemTotal, MemAvailable) in bytes; MemFree where the kernel has no MemAvailable.
fn parse_meminfo(text: &str) -> Result<(u64, u64)> {
    let kib = |key: &str| {
        text.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k == key).then(|| v.split_whitespace().next()?.parse::<u64>().ok())?
            })
            .map(|k| k * 1024)
    };
    let total = kib("MemTotal").context("/proc/meminfo has no MemTotal")?;
    let available = kib("MemAvailable")
        .or_else(|| kib("MemFree"))
        .context("/proc/meminfo has neither MemAvailable nor MemFree")?;
    Ok((total, available))
}

impl NodeSample {
    /// One sample, opening the files for it: for a reading taken once.
    pub fn now(cgroup_root: &Path) -> Result<Self> {
        NodeCounters::open(cgroup_root)?.sample()
    }

    /// Node CPU busy share between two samples, in percent of all CPUs, by the
    /// precise counter (by ticks where the kernel has none).
    pub fn cpu_busy_since(&self, earlier: &NodeSample) -> f64 {
        let wall = self.at.saturating_duration_since(earlier.at).as_nanos() as f64;
        match (self.run_ns, earlier.run_ns) {
            (Some(b), Some(a)) if wall > 0.0 => {
                (100.0 * b.saturating_sub(a) as f64 / wall / self.cpus as f64).min(100.0)
            }
            _ => self.cpu_busy_ticks_since(earlier),
        }
    }

    /// The same share as `/proc/stat` tells it (tick-sampled; steal is not busy).
    pub fn cpu_busy_ticks_since(&self, earlier: &NodeSample) -> f64 {
        let total = self.total_ticks.saturating_sub(earlier.total_ticks);
        if total == 0 {
            return 0.0;
        }
        100.0 * self.busy_ticks.saturating_sub(earlier.busy_ticks) as f64 / total as f64
    }

    /// Whether CPU shares come from the precise counter.
    pub fn precise(&self) -> bool {
        self.run_ns.is_some()
    }

    /// CPU ticks (all CPUs) between two samples.
    pub fn ticks_since(&self, earlier: &NodeSample) -> u64 {
        self.total_ticks.saturating_sub(earlier.total_ticks)
    }

    pub fn mem_used_percent(&self) -> f64 {
        100.0 * (self.mem_total - self.mem_available) as f64 / self.mem_total as f64
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn node_cpu_is_the_precise_counter_over_the_online_cpus_with_ticks_alongside() {
        let at = Instant::now();
        let a = NodeSample {
            busy_ticks: 1_000,
            total_ticks: 10_000,
            run_ns: Some(5_000_000_000),
            at,
            cpus: 2,
            mem_total: 100,
            mem_available: 50,
        };
        // 0.3 s of task run time in 1 s on 2 CPUs is 15 %; the ticks say 20 %.
        let b = NodeSample {
            busy_ticks: 1_040,
            total_ticks: 10_200,
            run_ns: Some(5_300_000_000),
            at: at + Duration::from_secs(1),
            ..a
        };
        assert!((b.cpu_busy_since(&a) - 15.0).abs() < 1e-9);
        assert!((b.cpu_busy_ticks_since(&a) - 20.0).abs() < 1e-9);
        assert!(b.precise());
        // Without a precise counter the share is the ticks', and says so.
        let (a, b) = (
            NodeSample { run_ns: None, ..a },
            NodeSample { run_ns: None, ..b },
        );
        assert!((b.cpu_busy_since(&a) - 20.0).abs() < 1e-9);
        assert!(!b.precise());
    }

    #[test]
    fn a_kernel_file_reads_the_counter_as_it_is_now() {
        // This thread's run time, read twice through one open file with work between.
        let mut f = KernelFile::open(Path::new("/proc/thread-self/schedstat")).unwrap();
        let run = |f: &mut KernelFile| -> u64 {
            f.read()
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap()
                .parse()
                .unwrap()
        };
        let before = run(&mut f);
        let spin = Instant::now();
        let mut x = 0u64;
        while spin.elapsed() < Duration::from_millis(20) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let after = run(&mut f);
        assert!(
            after >= before + 10_000_000,
            "20 ms of work moved the counter from {before} to {after}"
        );
    }

    #[test]
    fn a_kernel_file_reads_past_its_first_buffer() {
        let path = std::env::temp_dir().join(format!("fl-kernel-file-{}", std::process::id()));
        let text: String = (0..2000).map(|i| format!("{i}\n")).collect();
        std::fs::write(&path, &text).unwrap();
        let mut f = KernelFile::open(&path).unwrap();
        let read = f.read().unwrap().to_owned();
        std::fs::remove_file(&path).unwrap();
        assert!(text.len() > 4096);
        assert_eq!(read, text);
    }

    #[test]
    fn proc_stat_busy_leaves_idle_iowait_and_steal_out_and_counts_the_cpus() {
        let text = "cpu  100 2 30 5000 40 5 6 70 9 0\n\
                    cpu0 50 1 15 2500 20 3 3 35 0 0\n\
                    cpu1 50 1 15 2500 20 2 3 35 0 0\n\
                    intr 12345 0 0\nctxt 99\ncpu_is_not_a_cpu 1\n";
        // busy: user+nice+system+irq+softirq; total adds idle, iowait, steal.
        assert_eq!(parse_stat(text).unwrap(), (143, 143 + 5000 + 40 + 70, 2));
        assert!(parse_stat("intr 1\n").is_err());
        assert!(parse_stat("cpu  1 x 3 4\n").is_err());
        assert!(parse_stat("cpu  1 2\n").is_err());
    }

    #[test]
    fn meminfo_is_read_in_bytes_with_memfree_where_there_is_no_memavailable() {
        let text = "MemTotal:       1000 kB\nMemFree:         300 kB\nMemAvailable:    600 kB\n";
        assert_eq!(parse_meminfo(text).unwrap(), (1000 * 1024, 600 * 1024));
        let old = "MemTotal:       1000 kB\nMemFree:         300 kB\n";
        assert_eq!(parse_meminfo(old).unwrap(), (1000 * 1024, 300 * 1024));
        assert!(parse_meminfo("MemFree: 3 kB\n").is_err());
    }

    #[test]
    fn node_counters_read_this_node() {
        let mut c = NodeCounters::open(Path::new("/sys/fs/cgroup")).unwrap();
        let a = c.sample().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let b = c.sample().unwrap();
        let cpus = std::fs::read_to_string("/proc/stat")
            .unwrap()
            .lines()
            .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
            .count();
        assert_eq!(b.cpus, cpus);
        assert!(b.mem_total > 0 && b.mem_available <= b.mem_total);
        // The counters moved forward between the two samples, so neither is a copy.
        assert!(b.total_ticks > a.total_ticks);
        if let (Some(x), Some(y)) = (a.run_ns, b.run_ns) {
            assert!(y > x);
        }
    }
}
