//! Lifecycle shared by the node stress faults (cpu, memory): fence cgroup, stressor
//! processes, live readings, removal.
//!
//! Stressors are child processes of the agent (`faultline-agent __stressor ...`).
//! Between fork and exec each one joins its fence cgroup (so it never runs a cycle
//! outside the kernel-enforced limit), asks to be SIGKILLed when the agent dies, and
//! is told the deadline: it exits by itself at that time even if the agent is frozen.
use std::{
    ffi::CString,
    os::unix::process::CommandExt,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Args;
use procfs::{Current, CurrentSI};
use serde_json::json;

use crate::{
    UsageError,
    cgroup::{self, CgroupFs, Group},
    clock,
    output::Output,
};

/// Duration, ramp and placement shared by the stress faults.
#[derive(Args, Clone, Debug)]
pub struct StressArgs {
    /// How long the stress lasts; stressors also stop by themselves at this deadline.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Reach the full stress gradually over this time.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub ramp: Option<Duration>,
    /// Put the stress group under this cgroup (relative to the cgroup root) so the
    /// stressors compete inside a workload's limits.
    #[arg(long)]
    pub target_cgroup: Option<PathBuf>,
    /// Root of the cgroup filesystem.
    #[arg(long, default_value = "/sys/fs/cgroup", hide = true)]
    pub cgroup_root: PathBuf,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// How often live readings are printed.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    pub interval: Duration,
}

impl StressArgs {
    pub fn validate(&self) -> Result<(), UsageError> {
        if self.duration.is_zero() {
            return Err(UsageError("--duration must be greater than zero".into()));
        }
        if self.interval.is_zero() {
            return Err(UsageError("--interval must be greater than zero".into()));
        }
        if let Some(r) = self.ramp
            && r > self.duration
        {
            return Err(UsageError(format!(
                "--ramp {} is longer than --duration {}",
                humantime::format_duration(r),
                humantime::format_duration(self.duration)
            )));
        }
        Ok(())
    }
}

/// Node-wide readings from procfs.
#[derive(Clone, Copy, Debug, Default)]
pub struct NodeSample {
    busy_ticks: u64,
    total_ticks: u64,
    pub mem_total: u64,
    pub mem_available: u64,
}

impl NodeSample {
    pub fn now() -> Result<Self> {
        let stat = procfs::KernelStats::current().context("reading /proc/stat")?;
        let c = stat.total;
        let idle = c.idle + c.iowait.unwrap_or(0);
        let busy = c.user
            + c.nice
            + c.system
            + c.irq.unwrap_or(0)
            + c.softirq.unwrap_or(0)
            + c.steal.unwrap_or(0);
        let mem = procfs::Meminfo::current().context("reading /proc/meminfo")?;
        Ok(Self {
            busy_ticks: busy,
            total_ticks: busy + idle,
            mem_total: mem.mem_total,
            mem_available: mem.mem_available.unwrap_or(mem.mem_free),
        })
    }

    /// Node CPU busy share between two samples, in percent of all CPUs.
    pub fn cpu_busy_since(&self, earlier: &NodeSample) -> f64 {
        let total = self.total_ticks.saturating_sub(earlier.total_ticks);
        if total == 0 {
            return 0.0;
        }
        100.0 * self.busy_ticks.saturating_sub(earlier.busy_ticks) as f64 / total as f64
    }

    /// CPU ticks (all CPUs) between two samples.
    pub fn ticks_since(&self, earlier: &NodeSample) -> u64 {
        self.total_ticks.saturating_sub(earlier.total_ticks)
    }

    pub fn mem_used_percent(&self) -> f64 {
        100.0 * (self.mem_total - self.mem_available) as f64 / self.mem_total as f64
    }
}

/// Writes the fence limit for a fraction (0..=1) of the full stress.
pub type ApplyLimit = Box<dyn Fn(&dyn CgroupFs, &Group, f64) -> Result<()> + Send>;

/// What a stress fault asks of the runner.
pub struct StressPlan {
    pub kind: &'static str,
    pub summary: String,
    /// Number of stressor processes and the arguments after `__stressor`.
    pub workers: usize,
    pub worker_args: Vec<String>,
    pub apply: ApplyLimit,
    /// Stressors lower their own OOM score to the maximum (memory stress).
    pub oom_first: bool,
}

struct Running {
    fs: Box<dyn CgroupFs>,
    group: Group,
    children: Vec<Child>,
}

impl Running {
    fn remove(&mut self) -> Result<()> {
        for c in &mut self.children {
            let _ = c.kill();
        }
        for c in &mut self.children {
            let _ = c.wait();
        }
        self.group.remove()
    }
}

fn spawn_worker(group: &Group, args: &[String], oom_first: bool) -> Result<Child> {
    let procs: Vec<CString> = group
        .procs_files()
        .iter()
        .map(|p| CString::new(p.as_os_str().as_encoded_bytes()).expect("no NUL in cgroup path"))
        .collect();
    let oom = CString::new("/proc/self/oom_score_adj").expect("static");
    let parent = std::process::id() as libc::pid_t;
    // The binary's own path (not /proc/self/exe) so stressors show up as
    // faultline-agent in ps and in the kernel's OOM reports.
    let exe = std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into());
    let mut cmd = Command::new(exe);
    cmd.arg("__stressor")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    // SAFETY: only async-signal-safe calls (prctl, getppid, open, write, close) on
    // memory prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0
                || libc::getppid() != parent
            {
                return Err(std::io::Error::other(
                    "agent gone before the stressor started",
                ));
            }
            let mut files: Vec<&CString> = procs.iter().collect();
            if oom_first {
                files.push(&oom);
            }
            for (i, path) in files.iter().enumerate() {
                let value: &[u8] = if oom_first && i == files.len() - 1 {
                    b"1000"
                } else {
                    b"0"
                };
                let fd = libc::open(path.as_ptr(), libc::O_WRONLY);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let n = libc::write(fd, value.as_ptr().cast(), value.len());
                libc::close(fd);
                if n != value.len() as isize {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    cmd.spawn().context("starting a stressor")
}

pub async fn run(args: StressArgs, plan: StressPlan) -> Result<()> {
    let mut signals = crate::signals::Signals::install()?;
    let fs = cgroup::detect(&args.cgroup_root, args.target_cgroup.as_deref())?;
    let mut out = StressPrinter {
        format: args.output,
    };
    for line in cgroup::reconcile(fs.as_ref())? {
        out.emit(
            json!({"event": "reconciled", "detail": line}),
            format!("faultline-agent: {line}"),
        );
    }
    let group = fs.create(&cgroup::group_name(plan.kind))?;
    let mut running = Running {
        fs,
        group,
        children: Vec::new(),
    };
    let started_ok = start(&mut running, &args, &plan);
    if let Err(e) = started_ok {
        running.remove()?;
        return Err(e);
    }
    let baseline = NodeSample::now()?;
    let started = Instant::now();
    out.emit(
        json!({
            "event": "armed", "kind": plan.kind, "cgroup": running.group.dirs,
            "cgroup_version": running.fs.version(), "workers": running.children.len(),
            "pids": running.children.iter().map(Child::id).collect::<Vec<_>>(),
            "pid": std::process::id(), "fault": plan.summary,
            "duration_ms": args.duration.as_millis() as u64,
        }),
        format!(
            "faultline-agent: {} in {} (cgroup v{}) for {}, {} stressor(s) — Ctrl-C removes it",
            plan.summary,
            running.group.dirs[0]
                .file_name()
                .unwrap_or_default()
                .display(),
            running.fs.version(),
            humantime::format_duration(args.duration),
            running.children.len()
        ),
    );

    let deadline = tokio::time::Instant::from_std(started + args.duration);
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::from_std(started + args.interval),
        args.interval,
    );
    let mut last = baseline;
    let mut applied = if args.ramp.is_some() { 0.0 } else { 1.0 };
    let reason = loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break "deadline",
            name = signals.recv() => break name,
            _ = tick.tick() => {
                let elapsed = started.elapsed();
                if let Some(ramp) = args.ramp {
                    let f = (elapsed.as_secs_f64() / ramp.as_secs_f64()).min(1.0);
                    // Write only on change: each write of a CFS quota refills the
                    // period's runtime, so rewriting the same value every tick would
                    // hand out extra CPU (measured: +0.9 % of the node at 15 %).
                    if f != applied {
                        (plan.apply)(running.fs.as_ref(), &running.group, f)?;
                        applied = f;
                    }
                }
                let now = NodeSample::now()?;
                out.reading(&running, elapsed, &now, &last);
                last = now;
            }
        }
    };
    let ooms = running.fs.oom_kills(&running.group).unwrap_or(0);
    running.remove()?;
    out.emit(
        json!({"event": "removed", "reason": reason, "elapsed_ms": started.elapsed().as_millis() as u64,
               "oom_kills": ooms}),
        format!(
            "faultline-agent: stress removed ({reason}) after {:.1}s; stressors gone, cgroup removed{}",
            started.elapsed().as_secs_f64(),
            if ooms > 0 { format!("; its fence OOM-killed {ooms} stressor(s)") } else { String::new() }
        ),
    );
    Ok(())
}

fn start(running: &mut Running, args: &StressArgs, plan: &StressPlan) -> Result<()> {
    let initial = if args.ramp.is_some() { 0.0 } else { 1.0 };
    (plan.apply)(running.fs.as_ref(), &running.group, initial)?;
    let deadline = clock::deadline_after(args.duration);
    let mut worker_args = plan.worker_args.clone();
    worker_args.extend(["--until-ns".to_owned(), deadline.to_string()]);
    if let Some(r) = args.ramp {
        worker_args.extend(["--ramp-ms".to_owned(), r.as_millis().to_string()]);
    }
    for _ in 0..plan.workers {
        running
            .children
            .push(spawn_worker(&running.group, &worker_args, plan.oom_first)?);
    }
    Ok(())
}

struct StressPrinter {
    format: Output,
}

impl StressPrinter {
    fn emit(&mut self, value: serde_json::Value, text: String) {
        crate::output::emit(self.format, value, &text);
    }

    fn reading(&mut self, r: &Running, elapsed: Duration, now: &NodeSample, last: &NodeSample) {
        let cpu = now.cpu_busy_since(last);
        let group_cpu = r.fs.cpu_usage_us(&r.group).unwrap_or(0);
        let group_mem = r.fs.memory_current(&r.group).unwrap_or(0);
        self.emit(
            json!({"event": "reading", "elapsed_ms": elapsed.as_millis() as u64,
                   "node_cpu_percent": cpu, "node_mem_used_percent": now.mem_used_percent(),
                   "group_cpu_us": group_cpu, "group_mem_bytes": group_mem}),
            format!(
                "[{:>5.1}s] node cpu {cpu:5.1}%  node mem used {:5.1}%  | stress group: cpu {:.1}s, mem {} MiB",
                elapsed.as_secs_f64(),
                now.mem_used_percent(),
                group_cpu as f64 / 1e6,
                group_mem >> 20
            ),
        );
    }
}

/// `faultline-agent __stressor cpu|memory ...`: the stressor process itself.
#[derive(Args, Clone, Debug)]
pub struct StressorArgs {
    /// cpu or memory.
    pub kind: String,
    /// memory: bytes to allocate and touch.
    #[arg(long, default_value_t = 0)]
    pub bytes: u64,
    /// CLOCK_MONOTONIC deadline: the stressor exits at it whatever the agent does.
    #[arg(long)]
    pub until_ns: u64,
    #[arg(long)]
    pub ramp_ms: Option<u64>,
}

pub fn stressor(a: StressorArgs) -> Result<()> {
    // The deadline must not depend on how much CPU the stressor is allowed: a burner
    // at a small quota would reach its next clock check late. A sleeping thread
    // needs next to no CPU to wake and end the process on time.
    let until = a.until_ns;
    std::thread::spawn(move || {
        let now = clock::monotonic_ns();
        std::thread::sleep(Duration::from_nanos(until.saturating_sub(now)));
        std::process::exit(0);
    });
    match a.kind.as_str() {
        "cpu" => {
            // Spin; the cgroup's quota, not this loop, decides how much CPU it gets.
            let mut x: u64 = 0;
            while clock::monotonic_ns() < a.until_ns {
                for _ in 0..1_000 {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            }
            Ok(())
        }
        "memory" => {
            const PAGE: usize = 4096;
            let total = usize::try_from(a.bytes)?;
            let mut block: Vec<u8> = Vec::with_capacity(total);
            let start = clock::monotonic_ns();
            let ramp_ns = a.ramp_ms.unwrap_or(0) * 1_000_000;
            let mut touched = 0usize;
            // SAFETY: capacity reserved above; bytes are written before being read.
            unsafe { block.set_len(total) };
            while touched < total {
                let due = if ramp_ns == 0 {
                    total
                } else {
                    let f = ((clock::monotonic_ns() - start) as f64 / ramp_ns as f64).min(1.0);
                    (total as f64 * f) as usize
                };
                while touched < due {
                    block[touched] = 1;
                    touched += PAGE;
                }
                if touched < total {
                    std::thread::sleep(Duration::from_millis(50));
                }
                if clock::monotonic_ns() >= a.until_ns {
                    return Ok(());
                }
            }
            std::hint::black_box(&block);
            while clock::monotonic_ns() < a.until_ns {
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(())
        }
        other => bail!("unknown stressor kind {other}"),
    }
}
