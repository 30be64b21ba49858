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
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use clap::Args;
use serde_json::json;

use crate::{
    cgroup::{self, CgroupFs, Group, GroupCounters},
    clock,
    errors::UsageError,
    node::{NodeCounters, NodeSample},
    output::Output,
};

mod pacing;
mod stressor;
mod warden;

pub use pacing::run_ns;
use stressor::WORKING;
pub use stressor::{StressorArgs, stressor};
pub use warden::{WardenArgs, warden};

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
    /// Live counters and the summary as text lines or as JSON objects (one per line).
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// How often live readings are printed.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    pub interval: Duration,
}

impl StressArgs {
    /// An order's stress: no ramp and no target cgroup (an order carries neither).
    pub fn ordered(duration: Duration) -> Self {
        Self {
            duration,
            ramp: None,
            target_cgroup: None,
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            output: Output::Json,
            interval: Duration::from_secs(1),
        }
    }

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

/// Writes the fence limit: the hard ceiling of the full stress. A ramp is the
/// stressors' own pacing underneath it, so the ceiling never moves.
pub type ApplyLimit = Box<dyn Fn(&dyn CgroupFs, &Group) -> Result<()> + Send>;

/// The readings message of a stress kind (`Kind::Cpu` or `Kind::Memory`).
pub type ReadingsOf =
    fn(faultline_proto::v1::StressReadings) -> faultline_proto::v1::fault_readings::Kind;

/// What a stress fault asks of the runner.
pub struct StressPlan {
    pub kind: &'static str,
    /// How its readings are reported to the daemon.
    pub readings_as: ReadingsOf,
    pub summary: String,
    /// Number of stressor processes and the arguments after `__stressor`.
    pub workers: usize,
    pub worker_args: Vec<String>,
    pub apply: ApplyLimit,
    /// Stressors lower their own OOM score to the maximum (memory stress).
    pub oom_first: bool,
}

struct Running {
    fs: Arc<dyn CgroupFs>,
    group: Group,
    children: Vec<Child>,
    /// Removes the group if this process ends without doing so.
    warden: Child,
}

impl Running {
    fn remove(&mut self) -> Result<()> {
        for c in &mut self.children {
            let _ = c.kill();
        }
        for c in &mut self.children {
            let _ = c.wait();
        }
        let removed = self.group.remove();
        // The group is gone (or this reports why not): the warden, let go, finds
        // nothing to remove, or tries once more itself.
        drop(self.warden.stdin.take());
        let _ = self.warden.wait();
        removed
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
        // One line, "working", once it has started and begins its work.
        .stdout(Stdio::piped());
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
    let fs: Arc<dyn CgroupFs> =
        cgroup::detect(&args.cgroup_root, args.target_cgroup.as_deref())?.into();
    let mut out = StressPrinter {
        format: args.output,
        readings_as: plan.readings_as,
    };
    for line in cgroup::reconcile(fs.as_ref())? {
        out.emit(
            json!({"event": "reconciled", "detail": line}),
            format!("faultline-agent: {line}"),
        );
    }
    let group = fs.create(&cgroup::group_name(plan.kind))?;
    let warden = match warden::spawn(&group) {
        Ok(w) => w,
        Err(e) => {
            group.remove()?;
            return Err(e);
        }
    };
    let mut running = Running {
        fs,
        group,
        children: Vec::new(),
        warden,
    };
    let (working_tx, mut working_rx) = tokio::sync::mpsc::unbounded_channel();
    // The reading thread's files are opened before anything runs, so a node
    // without them is refused with nothing applied.
    let counters = NodeCounters::open(&args.cgroup_root);
    let started_ok = counters.and_then(|mut counters| {
        start(&mut running, &args, &plan, working_tx)?;
        let baseline = counters.sample()?;
        Ok((counters, baseline))
    });
    let (counters, baseline) = match started_ok {
        Ok(ok) => ok,
        Err(e) => {
            running.remove()?;
            return Err(e);
        }
    };
    let started = Instant::now();
    let started_ns = clock::monotonic_ns();
    crate::report::armed(plan.kind, &plan.summary, args.duration);
    out.emit(
        json!({
            "event": "armed", "kind": plan.kind, "cgroup": running.group.dirs,
            "cgroup_version": running.fs.version(), "workers": running.children.len(),
            "pids": running.children.iter().map(Child::id).collect::<Vec<_>>(),
            "pid": std::process::id(), "warden": running.warden.id(), "fault": plan.summary,
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
    let (failed_tx, mut failed_rx) = tokio::sync::mpsc::unbounded_channel();
    let readings = Readings::start(ReadingPlan {
        // Without them (a v1 cpu hierarchy with no cpuacct) the group's figures
        // read 0 while the node's are still shown.
        group: GroupCounters::open(running.fs.usage(&running.group)).ok(),
        counters,
        out,
        started_ns,
        interval: args.interval,
        baseline,
        failed: failed_tx,
    });
    let mut not_working = running.children.len();
    let mut failure = None;
    let reason = loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break "deadline",
            name = signals.recv() => break name,
            Some(e) = failed_rx.recv() => {
                failure = Some(e);
                break "reading failed";
            }
            Some(()) = working_rx.recv(), if not_working > 0 => {
                not_working -= 1;
                if not_working == 0 {
                    // When every stressor has begun: their start-up is behind, the
                    // share from here on is the stress itself.
                    let ms = started.elapsed().as_millis() as u64;
                    let n = running.children.len();
                    out.emit(
                        json!({"event": "working", "elapsed_ms": ms}),
                        format!("faultline-agent: all {n} stressor(s) working after {ms} ms"),
                    );
                }
            }
        }
    };
    readings.stop();
    let ooms = running.fs.oom_kills(&running.group).unwrap_or(0);
    running.remove()?;
    crate::report::removed(reason);
    out.emit(
        json!({"event": "removed", "reason": reason, "elapsed_ms": started.elapsed().as_millis() as u64,
               "oom_kills": ooms}),
        format!(
            "faultline-agent: stress removed ({reason}) after {:.1}s; stressors gone, cgroup removed{}",
            started.elapsed().as_secs_f64(),
            if ooms > 0 { format!("; its fence OOM-killed {ooms} stressor(s)") } else { String::new() }
        ),
    );
    match failure {
        Some(e) => Err(e.context("reading the node during the stress")),
        None => Ok(()),
    }
}

/// What the reading thread needs: its own handles on the group and the node.
struct ReadingPlan {
    counters: NodeCounters,
    group: Option<GroupCounters>,
    out: StressPrinter,
    /// When the stress was armed (CLOCK_MONOTONIC, the clock `Instant` reads):
    /// readings fall at whole intervals after it and report their time since it.
    started_ns: u64,
    interval: Duration,
    baseline: NodeSample,
    /// Where a failed reading goes: the experiment loop removes the stress on it.
    failed: tokio::sync::mpsc::UnboundedSender<anyhow::Error>,
}

/// The periodic readings, on a thread of their own that sleeps to absolute times.
///
/// Why not a tokio interval: the runtime's timer wheel wakes its worker at the start
/// of the coarse slot that holds a 1 s timer and again at the deadline, and then the
/// worker wakes the thread that runs the experiment loop: three or four wake-ups
/// from idle per reading. The node's monitoring counts each one against the stress,
/// on top of the share asked for, and on a VM a wake-up from a long idle costs
/// hundreds of microseconds. A thread sleeping with `clock_nanosleep` to the next
/// reading time wakes once per reading, and the experiment loop not at all.
///
/// Invariant: once `stop` has returned no reading is printed, so "removed" is the
/// last line and nothing reads the group after it is gone.
struct Readings {
    stopped: Arc<Mutex<bool>>,
}

impl Readings {
    fn start(plan: ReadingPlan) -> Self {
        let stopped = Arc::new(Mutex::new(false));
        let flag = stopped.clone();
        std::thread::spawn(move || plan.run(&flag));
        Self { stopped }
    }

    fn stop(self) {
        // Taken while no reading is in flight: the thread checks it under the lock.
        *self.stopped.lock().unwrap_or_else(|e| e.into_inner()) = true;
    }
}

impl ReadingPlan {
    fn run(mut self, stopped: &Mutex<bool>) {
        let every = u64::try_from(self.interval.as_nanos()).unwrap_or(u64::MAX);
        let mut last = self.baseline;
        let mut n: u64 = 1;
        loop {
            let wake = self.started_ns.saturating_add(every.saturating_mul(n));
            while clock::monotonic_ns() < wake {
                clock::sleep_until_ns(wake);
            }
            let guard = stopped.lock().unwrap_or_else(|e| e.into_inner());
            if *guard {
                return;
            }
            match self.counters.sample() {
                Ok(now) => {
                    let elapsed = clock::monotonic_ns().saturating_sub(self.started_ns);
                    self.out.reading(
                        self.group.as_mut(),
                        Duration::from_nanos(elapsed),
                        &now,
                        &last,
                    );
                    last = now;
                }
                Err(e) => {
                    let _ = self.failed.send(e);
                    return;
                }
            }
            drop(guard);
            // A reading that came late (the agent was stopped or starved) does not
            // start a burst of catch-up readings: the next falls on the next whole
            // interval still ahead.
            let since = clock::monotonic_ns().saturating_sub(self.started_ns);
            n = (n + 1).max(since / every.max(1) + 1);
        }
    }
}

/// Starts the stressors. Each reports on `working` once it has begun its work.
///
/// The deadline and the ramp are both counted from here, not from each stressor's
/// start: a stressor's own start-up (exec, loading, under emulation a large part
/// of a second of CPU inside the throttled group) must not delay the ramp.
fn start(
    running: &mut Running,
    args: &StressArgs,
    plan: &StressPlan,
    working: tokio::sync::mpsc::UnboundedSender<()>,
) -> Result<()> {
    (plan.apply)(running.fs.as_ref(), &running.group)?;
    let now = clock::monotonic_ns();
    let deadline = clock::deadline_from(now, args.duration);
    let mut worker_args = plan.worker_args.clone();
    worker_args.extend(["--until-ns".to_owned(), deadline.to_string()]);
    if let Some(r) = args.ramp {
        worker_args.extend([
            "--ramp-ms".to_owned(),
            r.as_millis().to_string(),
            "--ramp-start-ns".to_owned(),
            now.to_string(),
        ]);
    }
    for _ in 0..plan.workers {
        let mut child = spawn_worker(&running.group, &worker_args, plan.oom_first)?;
        if let Some(stdout) = child.stdout.take() {
            let working = working.clone();
            // A blocking read of one line; the thread ends with the stressor (EOF).
            std::thread::spawn(move || {
                let mut line = String::new();
                let mut r = std::io::BufReader::new(stdout);
                if std::io::BufRead::read_line(&mut r, &mut line).is_ok() && line.trim() == WORKING
                {
                    let _ = working.send(());
                }
            });
        }
        running.children.push(child);
    }
    Ok(())
}

#[derive(Clone, Copy)]
struct StressPrinter {
    format: Output,
    readings_as: ReadingsOf,
}

impl StressPrinter {
    fn emit(&mut self, value: serde_json::Value, text: String) {
        crate::output::emit(self.format, value, &text);
    }

    fn reading(
        &mut self,
        group: Option<&mut GroupCounters>,
        elapsed: Duration,
        now: &NodeSample,
        last: &NodeSample,
    ) {
        let cpu = now.cpu_busy_since(last);
        let ticks = now.cpu_busy_ticks_since(last);
        let (group_cpu, group_mem) = group.map_or((0, 0), |g| {
            (g.cpu_us().unwrap_or(0), g.memory().unwrap_or(0))
        });
        crate::report::readings(faultline_proto::v1::FaultReadings {
            kind: Some((self.readings_as)(faultline_proto::v1::StressReadings {
                node_cpu_percent: cpu,
                node_cpu_tick_percent: ticks,
                node_cpu_precise: now.precise(),
                node_mem_used_percent: now.mem_used_percent(),
                group_cpu_us: group_cpu,
                group_mem_bytes: group_mem,
            })),
        });
        self.emit(
            json!({"event": "reading", "elapsed_ms": elapsed.as_millis() as u64,
                   "node_cpu_percent": cpu, "node_cpu_tick_percent": ticks,
                   "node_cpu_precise": now.precise(),
                   "node_mem_used_percent": now.mem_used_percent(),
                   "group_cpu_us": group_cpu, "group_mem_bytes": group_mem}),
            format!(
                "[{:>5.1}s] node cpu {cpu:5.1}% (/proc/stat {ticks:5.1}%)  node mem used {:5.1}%  | stress group: cpu {:.1}s, mem {} MiB",
                elapsed.as_secs_f64(),
                now.mem_used_percent(),
                group_cpu as f64 / 1e6,
                group_mem >> 20
            ),
        );
    }
}
