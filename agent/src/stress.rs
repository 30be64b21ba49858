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
    let mut running = Running {
        fs,
        group,
        children: Vec::new(),
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
    crate::report::armed(&plan.summary);
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

/// What a stressor prints when it begins its work.
const WORKING: &str = "working";

/// Tells the agent this stressor has started. A failed write (the agent gone) is
/// harmless: the stressor dies with it by PDEATHSIG.
fn report_working() {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{WORKING}").and_then(|()| out.flush());
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

/// What a stressor consumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StressorKind {
    Cpu,
    Memory,
}

/// `faultline-agent __stressor cpu|memory ...`: the stressor process itself.
#[derive(Args, Clone, Debug)]
pub struct StressorArgs {
    #[arg(value_enum)]
    pub kind: StressorKind,
    /// memory: bytes to allocate and touch.
    #[arg(long, default_value_t = 0)]
    pub bytes: u64,
    /// cpu: the share of one CPU this burner runs (0-1), reached at the end of the ramp.
    #[arg(long, default_value_t = 1.0)]
    pub duty: f64,
    /// CLOCK_MONOTONIC deadline: the stressor exits at it whatever the agent does.
    #[arg(long)]
    pub until_ns: u64,
    #[arg(long)]
    pub ramp_ms: Option<u64>,
    /// CLOCK_MONOTONIC time the ramp started (the agent's arming); default: now.
    #[arg(long)]
    pub ramp_start_ns: Option<u64>,
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
    let ramp_start = a.ramp_start_ns.unwrap_or_else(clock::monotonic_ns);
    match a.kind {
        StressorKind::Cpu => {
            report_working();
            pace(
                a.duty,
                ramp_start,
                a.ramp_ms.unwrap_or(0) * 1_000_000,
                a.until_ns,
            );
            Ok(())
        }
        StressorKind::Memory => {
            const PAGE: usize = 4096;
            let total = usize::try_from(a.bytes)?;
            let mut block: Vec<u8> = Vec::with_capacity(total);
            report_working();
            let ramp_ns = a.ramp_ms.unwrap_or(0) * 1_000_000;
            let mut touched = 0usize;
            // SAFETY: capacity reserved above; bytes are written before being read.
            unsafe { block.set_len(total) };
            while touched < total {
                let due = if ramp_ns == 0 {
                    total
                } else {
                    let since = clock::monotonic_ns().saturating_sub(ramp_start);
                    let f = (since as f64 / ramp_ns as f64).min(1.0);
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
    }
}

/// How long a burner runs at a time: 32 ms of CPU, the length of stress-ng's own
/// busy slices, whatever the share; its cycle (run, then sleep) is the run ÷ the
/// share, so a CPU wakes from idle at the share's rate and no faster.
///
/// Each wake-up from a sleep long enough for the idle CPU to stop its tick costs the
/// kernel a tick restart and its softirq work, run by the idle task before the burner
/// is switched in: /proc/stat charges the ticks that land there as busy (softirq),
/// while the precise counter, which counts tasks, does not. With 100 ms cycles, 4 ms
/// runs at 5 % faultline's processes (the agent's included) woke 29 times a second
/// against stress-ng's 3, and /proc/stat
/// read 0.07 points over the share (stress-ng -0.04) in the bench's 8 rounds; with
/// 20 ms cycles at 15 % (75 wake-ups a second) it was 0.11 points more than
/// stress-ng's, softirq 0.17 % of the node against its 0.04 %. Shorter runs than
/// this buy nothing in the tick count: runs of whole ticks keep it exact however long
/// they are (`Slots`). Longer ones cost the readings over short windows, which cut a
/// run at each end: with 52 ms runs at 50 % the burners' own share over 20 s windows
/// was 0.04 points off on average, against stress-ng's 0.02.
const RUN_NS: f64 = 32e6;

/// The run at `duty`: `RUN_NS`, or half of one burner's quota per CFS period where
/// that is less (below 6.4 %), so that the burst, two runs per burner
/// (`faults::cpu::burst_us`), fits under the kernel's bound on it, the quota.
fn run_target_ns(duty: f64) -> f64 {
    RUN_NS.min(duty * (crate::cgroup::CPU_PERIOD_US * 1000) as f64 / 2.0)
}

/// Mean length of one cycle at `duty` while ramping: the full share's slot.
fn cycle_ns(duty: f64) -> f64 {
    if duty > 0.0 {
        run_target_ns(duty) / duty
    } else {
        RUN_NS
    }
}

/// Wall time of one batch of work between two reads of the monotonic clock: short
/// against a run (32 ms here, less early in a ramp), long against the read
/// itself (about 20 ns through the vDSO).
const BATCH_NS: f64 = 20e3;

/// CPU time this process has been charged, in nanoseconds: every thread, its
/// system calls, its sleeps' entry and wake-up. The same time the fence group's
/// counter and the node's accounting see.
fn process_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer; CLOCK_PROCESS_CPUTIME_ID always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// How long one run of a burner at `duty` of its CPU lasts at the full share: whole
/// ticks where the tick is known (`Slots`), else its part of a mean cycle.
pub fn run_ns(duty: f64) -> u64 {
    tick_ns()
        .and_then(|t| Slots::new(duty, t))
        .map_or(run_target_ns(duty.clamp(0.0, 1.0)) as u64, |s| s.run_ns)
}

/// The kernel's tick (1/HZ): the coarse clocks' resolution is one jiffy. None if it
/// reads as no kernel configures it (HZ 100 to 1000 is 1 to 10 ms).
fn tick_ns() -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    let rc = unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    let ns = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
    (rc == 0 && (500_000..=20_000_000).contains(&ns)).then_some(ns)
}

/// How a burner at its full share lays out its runs: each lasts `run_ns`, a whole
/// number of ticks, somewhere inside its own slot of `run_ns / duty`; the slots
/// follow each other on a fixed grid.
///
/// Tick-sampled accounting charges a run of `m + f` ticks (`0 <= f < 1`) either `m`
/// or `m + 1` ticks, depending on where it falls against the tick. With a random
/// place that is right on average, but each run adds `f(1 - f)` tick² of variance:
/// with 20 ms cycles, ±0.2 points of /proc/stat over a 20 s window, four times
/// stress-ng's. A run of a whole number of ticks holds exactly that many ticks
/// wherever it falls, so /proc/stat only sees the runs' µs-sized deviations.
///
/// The place inside the slot is still random, so those deviations cannot lock onto
/// the tick; the grid is fixed rather than a sum of random cycle lengths, so the CPU
/// used over any span is the share of it within one run (a random walk would drift
/// a run's worth per few dozen cycles, and the group's quota would clip the excess).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Slots {
    run_ns: u64,
    slot_ns: f64,
}

impl Slots {
    /// Runs of about `run_target_ns(duty)` rounded to whole ticks, at least one.
    fn new(duty: f64, tick_ns: u64) -> Option<Slots> {
        if !(duty > 0.0 && duty <= 1.0) || tick_ns == 0 {
            return None;
        }
        let ticks = (run_target_ns(duty) / tick_ns as f64).round().max(1.0);
        let run_ns = ticks as u64 * tick_ns;
        Some(Slots {
            run_ns,
            slot_ns: run_ns as f64 / duty,
        })
    }

    /// Where slot `n` after `anchor` begins.
    fn slot_start(&self, anchor: u64, n: u64) -> u64 {
        anchor + (n as f64 * self.slot_ns) as u64
    }

    /// Where the run of slot `n` starts: `place` (0-1) of the way through the
    /// slot's spare time, so it ends inside its slot.
    fn run_start(&self, anchor: u64, n: u64, place: f64) -> u64 {
        let spare = (self.slot_ns - self.run_ns as f64).max(0.0);
        self.slot_start(anchor, n) + (place.clamp(0.0, 1.0) * spare) as u64
    }
}

/// xorshift64: cheap, and only the place against the tick needs randomness.
fn uniform(rng: &mut u64) -> f64 {
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    (*rng >> 11) as f64 / (1u64 << 53) as f64
}

/// The burner's work: multiplications in batches of about `BATCH_NS`.
struct Work {
    x: u64,
    /// Multiplications per batch.
    batch: u64,
}

impl Default for Work {
    fn default() -> Self {
        Self { x: 0, batch: 64 }
    }
}

impl Work {
    /// One batch; returns the monotonic time at its end.
    fn batch(&mut self, began: u64) -> u64 {
        for _ in 0..self.batch {
            self.x = std::hint::black_box(self.x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        let now = clock::monotonic_ns();
        let took = now.saturating_sub(began);
        if took > 0 {
            // At most doubling or halving per batch: one batch stretched by an
            // interrupt or a preemption must not size the next one far off.
            let scaled = (self.batch as f64 * BATCH_NS / took as f64) as u64;
            self.batch = scaled
                .clamp(self.batch / 2, self.batch * 2)
                .clamp(64, 1 << 20);
        }
        now
    }
}

/// Works until `cpu_clock` (the process's CPU clock, in ns) has advanced `target`
/// beyond `from`, its reading when the run began; returns how many times it read it.
///
/// The process's CPU clock is a system call (190 ns here); read after every 20 µs
/// batch it put 1 % of the burners' time in the kernel, 0.56 points of the node in
/// `top`'s `sy` at 50 % against stress-ng's 0.10. Wall time is read through the
/// vDSO (18 ns) and bounds the CPU time from above: the stressor's other thread only
/// sleeps, so the process cannot have used more CPU than the wall time since the run
/// began. So the CPU clock is read only once the wall time says the run could be
/// over: once per run, plus once per preemption that made it fall short.
fn burn(cpu_clock: impl Fn() -> u64, from: u64, target: u64, work: &mut Work) -> u32 {
    let mut reads = 0;
    let mut used = 0;
    while used < target {
        let began = clock::monotonic_ns();
        let mut now = began;
        while now - began < target - used {
            now = work.batch(now);
        }
        used = cpu_clock().saturating_sub(from);
        reads += 1;
    }
    reads
}

/// Runs `duty` of one CPU until `until_ns`, rising linearly over the `ramp_ns`
/// from `ramp_start` first.
///
/// The burner paces itself underneath the group's CFS quota rather than spinning
/// until the quota throttles it. Throttling takes effect at the next timer tick, so a
/// throttled burst always ends on a tick that finds the burner running, and
/// tick-sampled accounting (`/proc/stat`, what node_exporter and `top` show) charges
/// it an extra half tick per burst: a 15 % share read as 17-20 % there while the
/// precise counters said 15.0. Here runs start at times unrelated to the tick, so
/// the chance that a tick finds the burner running equals its duty cycle; at the
/// full share they also last whole ticks (`Slots`), so the count is exact too.
/// While ramping, each cycle has a random length (0.5-1.5 × the mean) and runs its
/// part of it.
///
/// What a cycle costs is measured on the process's own CPU clock over the whole
/// cycle, so the sleep's entry and wake-up, the clock reads and the last batch's
/// overshoot count against the share: the next run is shorter by what the last
/// cycle used beyond its plan. Under emulation that cost is a large part of a small
/// run (it read as +2 points in the middle of a 15 % ramp when only the run itself
/// was counted). Only surplus is carried: time lost to preemption is not made up,
/// so the stress never exceeds its share to catch up, and a run that overran its
/// slot starts a new grid at once.
fn pace(duty: f64, ramp_start: u64, ramp_ns: u64, until_ns: u64) {
    let duty = duty.clamp(0.0, 1.0);
    let slots = tick_ns().and_then(|t| Slots::new(duty, t));
    let start = clock::monotonic_ns();
    let mut rng = (u64::from(std::process::id()) << 32) ^ start | 1;
    let mut cycle_end = start;
    // The full share's grid, once the ramp is over: its anchor and the slot now run.
    let mut grid: Option<(u64, u64)> = None;
    let mut work = Work::default();
    // CPU used beyond the plan so far, capped at one full run: when the fixed cost
    // of a cycle exceeds a tiny early-ramp plan, there is nothing to give back and
    // the debt must not silence the ramp later.
    let debt_cap = run_ns(duty);
    let mut debt: u64 = 0;
    let mut planned: u64 = 0;
    let mut cycle_from = process_cpu_ns();
    loop {
        let woke = clock::monotonic_ns();
        if woke >= until_ns {
            return;
        }
        let cpu = process_cpu_ns();
        debt = (debt + (cpu - cycle_from))
            .saturating_sub(planned)
            .min(debt_cap);
        cycle_from = cpu;
        let ramp = if ramp_ns == 0 {
            1.0
        } else {
            (woke.saturating_sub(ramp_start) as f64 / ramp_ns as f64).min(1.0)
        };
        let full = slots.filter(|_| ramp >= 1.0);
        planned = match full {
            Some(s) => s.run_ns,
            None => {
                let cycle = cycle_ns(duty) * (0.5 + uniform(&mut rng));
                cycle_end += cycle as u64;
                (cycle * duty * ramp) as u64
            }
        };
        burn(process_cpu_ns, cpu, planned.saturating_sub(debt), &mut work);
        let now = clock::monotonic_ns();
        let wake = match full {
            Some(s) => {
                // The first run at the full share began this grid's slot 0.
                let (anchor, n) = grid.get_or_insert((woke, 0));
                *n += 1;
                let wake = s.run_start(*anchor, *n, uniform(&mut rng));
                if wake <= now {
                    // Late: run at once if the run still fits in its slot, else
                    // start a new grid here rather than catch up.
                    if now + s.run_ns > s.slot_start(*anchor, *n + 1) {
                        (*anchor, *n) = (now, 0);
                    }
                    continue;
                }
                wake
            }
            None => {
                if cycle_end <= now {
                    cycle_end = now;
                    continue;
                }
                cycle_end
            }
        };
        // An interrupted sleep just starts the next cycle.
        clock::sleep_until_ns(wake);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_share_runs_are_whole_ticks_in_slots_that_give_the_share() {
        const TICK: u64 = 4_000_000;
        // 32 ms runs (8 ticks), or half a burner's quota per 1 s period below 6.4 %.
        for (duty, ticks) in [
            (0.01, 1),
            (0.05, 6),
            (0.15, 8),
            (0.5, 8),
            (0.95, 8),
            (1.0, 8),
        ] {
            let s = Slots::new(duty, TICK).unwrap();
            assert_eq!(s.run_ns, ticks * TICK, "{duty}");
            assert!((s.run_ns as f64 / s.slot_ns - duty).abs() < 1e-12, "{duty}");
            // Each run ends inside its own slot wherever it is placed.
            for place in [0.0, 0.3, 1.0] {
                let run = s.run_start(1_000, 7, place);
                assert!(run >= s.slot_start(1_000, 7));
                assert!(
                    run + s.run_ns <= s.slot_start(1_000, 8) + 1,
                    "{duty} {place}"
                );
            }
        }
        // HZ=1000: 1 ms ticks, so a 5 % run is 25 ticks of a 500 ms slot.
        assert_eq!(Slots::new(0.05, 1_000_000).unwrap().run_ns, 25_000_000);
        assert_eq!(Slots::new(0.0, TICK), None);
        assert_eq!(Slots::new(1.5, TICK), None);
    }

    #[test]
    fn the_grid_does_not_drift() {
        // Slot n begins at n × slot whatever n is: no rounding accumulates.
        let s = Slots::new(0.15, 4_000_000).unwrap();
        let n = 1_000_000;
        let expect = (n as f64 * 32e6 / 0.15) as u64;
        assert!(s.slot_start(0, n).abs_diff(expect) <= 1);
    }

    /// CPU time of the calling thread: the test harness runs other tests in this
    /// process at the same time, so its process clock would run ahead of the burner.
    fn thread_cpu_ns() -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: valid out-pointer.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }

    #[test]
    fn a_run_uses_its_cpu_time_and_reads_the_cpu_clock_once_per_stretch() {
        let mut work = Work::default();
        for target in [0, 300_000, 5_000_000, 20_000_000] {
            let from = thread_cpu_ns();
            let reads = burn(thread_cpu_ns, from, target, &mut work);
            let used = thread_cpu_ns() - from;
            // Never short; over by at most the last batch (about 20 µs of work) and
            // the clock reads, bounded here by a generous 1 ms.
            assert!(used >= target, "{target}: used {used}");
            assert!(used < target + 1_000_000, "{target}: used {used}");
            // Once per stretch of wall time, and a stretch ends early only when the
            // thread was preempted: a read per 20 µs batch would be 1000 for 20 ms.
            let most = if target == 0 { 0 } else { 25 };
            assert!(reads <= most, "{target}: {reads} reads of the CPU clock");
        }
    }

    #[test]
    fn the_tick_reads_as_a_configured_hz() {
        let t = tick_ns().expect("coarse clock resolution");
        assert!(
            [1_000_000, 3_333_333, 4_000_000, 10_000_000].contains(&t),
            "{t}"
        );
    }
}
