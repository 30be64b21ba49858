//! Node stress end to end: the real agent, real cgroups (v1 here, v2 in the VM
//! lane), real processes, measured through /proc like an operator would.
//!
//! These tests measure node-wide CPU, so they run one at a time, and the memory
//! tests live in their own binary (stress_memory): freeing gigabytes keeps the
//! kernel busy for a while afterwards, which a CPU measurement would count.
use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use faultline_tests::{
    Agent, TempPath,
    agent::run_agent,
    limits_file,
    node::{
        TargetCgroup, assert_no_stress_cgroups, cgroup_dirs, cpu_quota_us, cpu_throttling, exited,
        group_share, node_cpu, online_cpus, usage, wait_quiet,
    },
    slack,
};

/// The measuring window. Runs of whole ticks leave /proc/stat next to no sampling
/// spread of their own (random-length runs spread it by 0.2 points over 20 s);
/// what is left is the node's other activity and steal, a few tenths of a point
/// over 20 s here, so 15 s keeps the ±1 point bound well away from chance.
const WINDOW: Duration = Duration::from_secs(15);

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a CPU stress of `share` % did to the node, seen three ways, and what of it
/// was faultline's.
struct Rise {
    /// By /proc/stat (tick-sampled), baseline subtracted.
    stat: f64,
    /// By the kernel's precise counter, baseline subtracted.
    precise: f64,
    /// Steal during the window, baseline subtracted: what it may have taken from
    /// `stat` (see `reads_as`).
    steal: f64,
    /// The precise node figure during the window, and the mean the agent itself
    /// reported in its readings over the same window.
    during: f64,
    agent_reported: f64,
    /// The burners' fence group by its own counter, and the agent process itself
    /// (utime + stime), in percent of the node over the window.
    fence: f64,
    agent: f64,
    /// CFS periods in the window, and those in which the quota throttled the burners.
    periods: u64,
    throttled: u64,
}

impl Rise {
    /// CPU in the node's precise rise that neither the burners nor the agent used:
    /// other processes and kernel work that happened to fall in the window.
    fn outside(&self) -> f64 {
        self.precise - self.fence - self.agent
    }
}

/// Measuring windows one stress may take: a window is measured again only when it
/// failed and the node's rise held more than `OUTSIDE_NOISE` of CPU that was not
/// faultline's, so an over-delivery by the burners or the agent fails at once.
/// Three windows and the longest settle (5 s) fit in the 60 s the production
/// profile allows a CPU stress.
const WINDOWS: usize = 3;
const OUTSIDE_NOISE: f64 = 0.5;

/// Baseline 3 s, then the stress (`extra` args after `inject cpu --percent share`),
/// `settle` for it to reach its share, then windows until one reads as `share`
/// (`reads_as`), and removal. Panics with every window's figures when none
/// does.
fn cpu_rise(share: &str, extra: &[&str], settle: Duration) -> serde_json::Value {
    cpu_rise_in(None, share, extra, settle).0
}

/// `cpu_rise` with the agent itself started inside `agent_group`; also the fence
/// group's CFS quota (µs per period) as its files said while it ran.
fn cpu_rise_in(
    agent_group: Option<&TargetCgroup>,
    share: &str,
    extra: &[&str],
    settle: Duration,
) -> (serde_json::Value, u64) {
    let want: f64 = share.parse().unwrap();
    let cpus = online_cpus() as f64;
    wait_quiet(2.0);
    let base = node_cpu(Duration::from_secs(3));
    let mut args = vec!["inject", "cpu", "--percent", share, "--duration", "60s"];
    args.extend(extra);
    let (mut agent, armed) = match agent_group {
        None => start(&args),
        Some(g) => {
            let dir = state();
            let (mut agent, armed) = Agent::start_host_in_cgroup(&g.dirs, &dir, &args);
            agent.keep(dir);
            let pid = armed["pid"].as_u64().unwrap();
            let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
            assert!(
                own.contains(&format!("/{}\n", g.rel)),
                "agent {pid} not in {}: {own}",
                g.rel
            );
            (agent, armed)
        }
    };
    let pid = armed["pid"].as_u64().unwrap() as u32;
    let dirs = cgroup_dirs(&armed);
    let quota = cpu_quota_us(&dirs);
    std::thread::sleep(settle);
    let mut failures = Vec::new();
    let mut passed = false;
    for _ in 0..WINDOWS {
        // Readings queued before the window belong before it.
        while agent
            .wait_event("reading", Duration::from_millis(50))
            .is_some()
        {}
        let from = agent
            .wait_event("reading", Duration::from_secs(5))
            .expect("reading");
        let agent_from = usage(&[pid]);
        let throttling_from = cpu_throttling(&dirs);
        let started = Instant::now();
        let during = node_cpu(WINDOW);
        let agent_ns = usage(&[pid]).since(&agent_from).run_ns;
        let throttling = cpu_throttling(&dirs);
        let wall = started.elapsed().as_secs_f64();
        let mut reported = Vec::new();
        let mut to = from.clone();
        while let Some(r) = agent.wait_event("reading", Duration::from_millis(1200)) {
            reported.push(r["node_cpu_percent"].as_f64().unwrap());
            to = r;
            if to["elapsed_ms"].as_u64()
                >= from["elapsed_ms"]
                    .as_u64()
                    .map(|t| t + WINDOW.as_millis() as u64)
            {
                break;
            }
        }
        let rise = Rise {
            stat: during.stat - base.stat,
            precise: during.precise - base.precise,
            steal: during.steal - base.steal,
            during: during.precise,
            agent_reported: reported.iter().sum::<f64>() / reported.len().max(1) as f64,
            fence: group_share(&from, &to, cpus),
            agent: 100.0 * agent_ns as f64 / 1e9 / wall / cpus,
            periods: throttling.0 - throttling_from.0,
            throttled: throttling.1 - throttling_from.1,
        };
        let line = format!(
            "cpu {share}% {extra:?}: precise rise {:.2} pp, /proc/stat rise {:.2} pp (steal \
             {:+.2} pp); fence group {:.2} %, throttled in {} of {} periods, agent {:.2} %, outside \
             faultline {:+.2} pp; node {:.2}% precise, agent reported {:.2}%",
            rise.precise,
            rise.stat,
            rise.steal,
            rise.fence,
            rise.throttled,
            rise.periods,
            rise.agent,
            rise.outside(),
            rise.during,
            rise.agent_reported
        );
        eprintln!("{line}");
        match reads_as(want, &rise) {
            Ok(()) => {
                passed = true;
                break;
            }
            Err(e) if rise.outside().abs() > OUTSIDE_NOISE => {
                eprintln!(
                    "  measuring again: {e}, with {:+.2} pp outside faultline",
                    rise.outside()
                );
                failures.push(format!("{line}: {e}"));
            }
            Err(e) => {
                failures.push(format!("{line}: {e}"));
                break;
            }
        }
    }
    let removed = agent.stop();
    assert_eq!(removed["reason"], "SIGTERM");
    for dir in &dirs {
        assert!(!std::path::Path::new(dir).exists(), "{dir} left behind");
    }
    assert_no_stress_cgroups();
    assert!(passed, "{}", failures.join("\n"));
    (armed, quota)
}

/// The share as the node's own monitoring reads it: within 1 point of the request by
/// the precise counter and by tick-sampled /proc/stat alike, and never more than 1
/// point above it. The burners pace themselves under the quota; spinning until the
/// quota throttled them read +2 to +5 points in /proc/stat (see `stress::pace`).
/// Emulation (the VM lane) steals delivery below the share and makes tick sampling
/// noisy, so there the floor is lower and /proc/stat's ceiling 3 points. The fence
/// group's own counter is held to the share as well: the node-wide bounds allow for
/// a window's noise, the burners' own figure does not need to. It is off only by
/// the runs the window cuts at its ends, at most a 32 ms run per burner: 0.21
/// points of a 15 s window on 2 CPUs.
fn reads_as(share: f64, r: &Rise) -> Result<(), String> {
    if !(r.precise <= share + slack(1.0, 1.5) && r.precise >= share - slack(1.0, 6.0)) {
        return Err(format!(
            "node CPU (precise) rose {:.2} pp for {share} %",
            r.precise
        ));
    }
    // Steal only ever takes from /proc/stat's busy share: a tick that finds steal
    // pending is charged to steal, not to the task it interrupted. On this VM, when
    // the host is busy the paced burners' wake-ups wait for a host CPU, and a
    // window read /proc/stat +13.97 pp with steal +9.51 pp while the fence group
    // used exactly 15.01 %. So the ceiling is judged on the busy share alone and
    // the floor on the busy share with what steal may have taken from it.
    let stat_floor = r.stat + r.steal.max(0.0);
    if !(r.stat <= share + slack(1.0, 3.0) && stat_floor >= share - slack(1.0, 9.0)) {
        return Err(format!(
            "node CPU (/proc/stat) rose {:.2} pp (steal {:+.2} pp) for {share} %",
            r.stat, r.steal
        ));
    }
    if !(r.fence <= share + slack(0.25, 1.0) && r.fence >= share - slack(0.5, 6.0)) {
        return Err(format!(
            "the fence group used {:.2} % for {share} %",
            r.fence
        ));
    }
    // Paced runs stay under the quota, and its burst absorbs a period whose runs
    // came out long: a throttled period ends a run on a tick, which /proc/stat
    // over-counts. Without the burst 17 of 21 periods were. Emulation's preemptions
    // make the grid late, never early, but its timing is not judged.
    if !faultline_tests::emulated() && (r.throttled > 1 || r.periods < 10) {
        return Err(format!(
            "the quota throttled the burners in {} of {} periods",
            r.throttled, r.periods
        ));
    }
    // The agent's own node readings (what it streams and what recovery compares)
    // use the precise counter too.
    if (r.agent_reported - r.during).abs() > slack(1.0, 3.0) {
        return Err(format!(
            "the agent reported {:.2} % while the node ran {:.2} %",
            r.agent_reported, r.during
        ));
    }
    Ok(())
}

fn state() -> TempPath {
    TempPath::dir("fl-stress-state")
}

/// The agent in the host network namespace (stress is node-wide, not per netns).
fn start(args: &[&str]) -> (Agent, serde_json::Value) {
    let dir = state();
    let (mut agent, armed) = Agent::start_host(&dir, args);
    agent.keep(dir);
    (agent, armed)
}

#[test]
fn cpu_share_reads_as_requested_in_proc_stat_and_precise_counters_and_is_released() {
    let _g = serial();
    // cpu_rise judges the windows (reads_as).
    cpu_rise("15", &[], Duration::from_secs(1));
    let after = node_cpu(Duration::from_secs(2));
    assert!(
        after.precise < 2.0 && after.stat < 3.0,
        "2 s after removal node CPU is {:.2}% ({:.2}% by /proc/stat)",
        after.precise,
        after.stat
    );
}

#[test]
fn cpu_share_reads_as_requested_after_a_ramp() {
    let _g = serial();
    // cpu_rise judges the windows after the ramp (reads_as).
    cpu_rise("15", &["--ramp", "4s"], Duration::from_secs(5));
}

/// Every time the agent wakes from idle, the node's monitoring charges the CPU that
/// costs to the stress, on top of the share asked for (and on a VM a wake-up after a
/// long sleep costs hundreds of microseconds). So while a stress runs the agent
/// sleeps until its next reading and wakes once for it: one thread sleeping to
/// absolute times, not a runtime timer that wakes a worker at the start of its
/// coarse slot, again at the deadline, and then the thread that prints.
#[test]
fn the_agent_wakes_once_per_reading_while_a_stress_runs() {
    let _g = serial();
    let (mut agent, armed) = start(&["inject", "cpu", "--percent", "5", "--duration", "60s"]);
    let pid = armed["pid"].as_u64().unwrap() as u32;
    // Each stressor reports once that it has begun, and the agent wakes to read
    // that: under emulation (the VM lane) those reports come after the first
    // readings, so the count starts once all of them are in.
    agent
        .wait_event("working", Duration::from_secs(slack(5, 30)))
        .expect("stressors working");
    agent
        .wait_event("reading", Duration::from_secs(5))
        .expect("a reading after the stressors began");
    let from = usage(&[pid]);
    let mut readings = 0;
    while readings < 6 {
        agent
            .wait_event("reading", Duration::from_secs(3))
            .expect("a reading every second");
        readings += 1;
    }
    let sleeps = usage(&[pid]).since(&from).sleeps;
    agent.stop();
    assert_no_stress_cgroups();
    // Both counts are taken just after a reading is printed, when the reading
    // thread may or may not be back asleep: the window holds the sleeps before
    // `readings` wake-ups, give or take the one at each end. Nothing else in the
    // agent is due in it (the 60 s deadline's timer fires near its end). Under
    // emulation (the VM lane) a wake-up or two more were seen in 2 of 4 runs (8 and
    // 9 for 6 readings; the stressors' start-up lands late there): the bound there
    // is 3 over, the host's stays exact.
    assert!(
        sleeps + 1 >= readings && sleeps <= readings + slack(1, 3),
        "the agent woke {sleeps} times for {readings} readings"
    );
}

#[test]
fn ramp_reaches_the_share_gradually() {
    let _g = serial();
    let cpus = online_cpus() as f64;
    const RAMP_S: f64 = 8.0;
    let (mut agent, _) = start(&[
        "inject",
        "cpu",
        "--percent",
        "15",
        "--duration",
        "20s",
        "--ramp",
        "8s",
    ]);
    // Readings every second carry the fence group's own CPU counter (cpuacct or
    // cgroup v2's cpu.stat), which other activity on the node cannot disturb.
    let mut readings: Vec<serde_json::Value> = Vec::new();
    let mut working_ms = None;
    while readings.len() < 14 {
        let ev = agent
            .next_event(Duration::from_secs(5))
            .expect("an event every second");
        match ev["event"].as_str() {
            Some("reading") => readings.push(ev),
            Some("working") => working_ms = ev["elapsed_ms"].as_u64(),
            _ => {}
        }
    }
    agent.stop();
    let working_ms = working_ms.expect("the agent reports when its stressors are working");
    let per_second: Vec<String> = readings
        .windows(2)
        .map(|w| format!("{:.2}", group_share(&w[0], &w[1], cpus)))
        .collect();
    eprintln!(
        "stressors working after {working_ms} ms; fence group: {} ms of CPU by the first \
         reading at {} ms; per second after: {}",
        readings[0]["group_cpu_us"].as_u64().unwrap() / 1000,
        readings[0]["elapsed_ms"].as_u64().unwrap(),
        per_second.join(" ")
    );
    // The stressors' own start-up is CPU in the fence group but not the ramp: a
    // debug binary under emulation spends a few tenths of a second of CPU each
    // loading, throttled by the ramp's ceiling, so the ramp is judged from the first
    // reading after all of them began (natively, the first reading).
    let e = readings
        .iter()
        .position(|r| r["elapsed_ms"].as_u64().unwrap() >= working_ms)
        .unwrap();
    assert!(e <= 3, "the stressors took {working_ms} ms to start");
    let secs = |i: usize| readings[i]["elapsed_ms"].as_u64().unwrap() as f64 / 1000.0;
    // The ramp counts from arming; over a window the mean of a rising line is
    // below its value at the window's end.
    let ramp_at = |t: f64| 15.0 * (t / RAMP_S).min(1.0);
    let early = group_share(&readings[e], &readings[e + 2], cpus);
    let middle = group_share(&readings[e + 3], &readings[e + 5], cpus);
    let full = group_share(&readings[9], &readings[13], cpus);
    assert!(
        early < ramp_at(secs(e + 2)) + 0.5,
        "{:.1}-{:.1} s of an 8 s ramp: {early:.2} %",
        secs(e),
        secs(e + 2)
    );
    assert!(
        middle > early && middle < full + slack(0.0, 2.0),
        "not gradual: {early:.2} -> {middle:.2} -> {full:.2}"
    );
    // The quota is a ceiling the kernel enforces everywhere. What the burners get
    // below it is delivery, which emulation steals from: one CI run in the VM lane
    // measured 10.48 % for a 15 % share, with guest wall time passing while the
    // host did not run the vCPUs.
    assert!(
        full <= 15.0 + 1.0 && full >= 15.0 - slack(1.0, 6.0),
        "after the ramp: {full:.2} %"
    );
    assert_no_stress_cgroups();
}

#[test]
fn stressors_stop_at_the_deadline_while_the_agent_is_frozen() {
    let _g = serial();
    let (agent, armed) = start(&["inject", "cpu", "--percent", "10", "--duration", "3s"]);
    agent.signal(libc::SIGSTOP);
    let pids: Vec<u64> = armed["pids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap())
        .collect();
    // The deadline is 3 s after arming; a stressor killed by its own timer still
    // needs a slot in its throttled group to finish exiting, which under emulation
    // (the VM lane, FAULTLINE_EMULATED) can take several seconds. Allow 3 s here,
    // 10 s there, and report the lateness.
    let grace = slack(Duration::from_secs(3), Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(3));
    let deadline = Instant::now();
    for pid in &pids {
        while !exited(*pid) {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            assert!(
                deadline.elapsed() < grace,
                "stressor {pid} still running {grace:?} after its deadline: {stat}\ncmdline: {}",
                String::from_utf8_lossy(&cmdline).replace('\0', " ")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    eprintln!("stressors gone {:?} after the deadline", deadline.elapsed());
    agent.signal(libc::SIGCONT);
    agent.stop();
    assert_no_stress_cgroups();
}

/// SIGKILLs the agent of `armed` (and first its warden, when `with_warden`) and waits
/// until every stressor has exited.
fn kill_stress(agent: &mut Agent, armed: &serde_json::Value, with_warden: bool) {
    let pids: Vec<u64> = armed["pids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap())
        .collect();
    if with_warden {
        let warden = armed["warden"].as_u64().expect("the warden's pid") as i32;
        // SAFETY: kill(2) on the agent's own warden.
        unsafe { libc::kill(warden, libc::SIGKILL) };
    }
    agent.signal(libc::SIGKILL);
    agent.child.wait().unwrap();
    let until = Instant::now() + Duration::from_secs(2);
    for pid in &pids {
        while !exited(*pid) {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            assert!(
                Instant::now() < until,
                "stressor {pid} survived the agent: {stat}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn sigkill_leaves_no_stressor_and_the_warden_removes_the_cgroup() {
    let _g = serial();
    let (mut agent, armed) = start(&["inject", "cpu", "--percent", "10", "--duration", "30s"]);
    let t0 = Instant::now();
    kill_stress(&mut agent, &armed, false);
    // The fence group (and its quota) goes with the agent: its warden removes it.
    let dirs = cgroup_dirs(&armed);
    while dirs.iter().any(|d| std::path::Path::new(d).exists()) {
        assert!(
            t0.elapsed() < Duration::from_secs(slack(2, 10)),
            "the fence group outlived the agent: {dirs:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "fence group removed {} ms after the SIGKILL",
        t0.elapsed().as_millis()
    );
    assert_no_stress_cgroups();

    // With its warden killed too, cleanup (or the next start) removes it.
    let (mut agent, armed) = start(&["inject", "cpu", "--percent", "10", "--duration", "30s"]);
    kill_stress(&mut agent, &armed, true);
    assert!(
        cgroup_dirs(&armed)
            .iter()
            .any(|d| std::path::Path::new(d).exists())
    );
    let out = run_agent(None, &["--state-dir", state().to_str().unwrap(), "cleanup"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("removed leftover cgroup stress-cpu-"),
        "{text}"
    );
    assert_no_stress_cgroups();
}

#[test]
fn stress_bad_inputs_are_refused_with_nothing_created() {
    let _g = serial();
    let limits = limits_file("100%", "300s");
    let cases: &[(&[&str], &str)] = &[
        (
            &["inject", "cpu", "--percent", "16", "--duration", "10s"],
            "cpu_stress.max_stress = 15%",
        ),
        (
            &["inject", "cpu", "--percent", "10", "--duration", "61s"],
            "cpu_stress.max_duration = 1m",
        ),
        (
            &["inject", "memory", "--percent", "11", "--duration", "10s"],
            "memory_stress.max_stress = 10%",
        ),
        (
            &["inject", "cpu", "--percent", "101", "--duration", "10s"],
            "between 0 and 100",
        ),
        (
            &[
                "inject",
                "cpu",
                "--percent",
                "5",
                "--duration",
                "10s",
                "--ramp",
                "20s",
            ],
            "--ramp 20s is longer",
        ),
        (
            &["inject", "cpu", "--percent", "5", "--duration", "0s"],
            "greater than zero",
        ),
        (
            &[
                "inject",
                "cpu",
                "--percent",
                "5",
                "--duration",
                "10s",
                "--target-cgroup",
                "no/such/group",
            ],
            "does not exist",
        ),
        (
            &[
                "inject",
                "cpu",
                "--percent",
                "5",
                "--duration",
                "10s",
                "--target-cgroup",
                "../etc",
            ],
            "without '..'",
        ),
        (
            &[
                "--limits",
                limits.to_str().unwrap(),
                "inject",
                "memory",
                "--percent",
                "31",
                "--duration",
                "10s",
            ],
            "memory_stress.max_stress = 30%",
        ),
        (
            &[
                "inject",
                "memory",
                "--percent",
                "10",
                "--floor",
                "95",
                "--duration",
                "10s",
            ],
            "below the safety floor",
        ),
    ];
    for (args, needle) in cases {
        let out = run_agent(None, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{args:?}: expected '{needle}' in {stderr}"
        );
        assert_no_stress_cgroups();
    }
}

/// `--target-cgroup` nests the fence group under a workload's cgroup, so the
/// stressors compete inside its limits; the share reads as requested there too, and
/// the workload's group is left as it was.
#[test]
fn stress_can_run_inside_a_target_cgroup() {
    let _g = serial();
    let target = TargetCgroup::new("target");
    let rel = target.rel.clone();
    // cpu_rise judges the windows (reads_as).
    let armed = cpu_rise("15", &["--target-cgroup", &rel], Duration::from_secs(1));
    for g in &cgroup_dirs(&armed) {
        assert!(
            g.contains(&format!("/{rel}/faultline/stress-cpu-")),
            "fence group not under the target: {g}"
        );
    }
    for d in &target.dirs {
        assert!(
            !d.join("faultline").exists(),
            "faultline parent left in {}",
            d.display()
        );
    }
}

/// A share is of the node's CPUs even when the agent itself runs under a CPU limit,
/// as the DaemonSet's 500m (deploy/kubernetes/base/agent.yaml) or a systemd CPUQuota
/// puts it: the standard library's count of usable CPUs then says 1, and the
/// quota and the agent's node readings were sized on it (half the share, and
/// twice the node's CPU, on 2 CPUs). The burners' fence group is outside the
/// agent's own, so the stress reads as requested (`reads_as`).
#[test]
fn cpu_share_is_of_the_node_when_the_agent_itself_is_cpu_limited() {
    let _g = serial();
    let limited = TargetCgroup::leaf("agent-limit");
    limited.set_cpu_limit(50_000, 100_000);
    // cpu_rise_in checks the agent ran in the limited group and judges the windows.
    let (armed, quota) = cpu_rise_in(Some(&limited), "15", &[], Duration::from_secs(1));
    let cpus = online_cpus();
    assert_eq!(
        quota,
        150_000 * cpus as u64,
        "fence quota for 15 % of {cpus} CPU(s): {}",
        armed["fault"]
    );
    assert!(
        armed["fault"]
            .as_str()
            .unwrap()
            .contains(&format!("of {cpus} CPU(s)")),
        "{}",
        armed["fault"]
    );
}
