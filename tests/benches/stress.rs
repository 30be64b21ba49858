//! Accuracy of the node stress faults and the agent's own cost (`cargo xtask bench`).
//!
//! - CPU share: requested vs measured over 20 s at 5 %, 15 % and 50 % of the node,
//!   side by side with stress-ng (`--cpu-load`), by the kernel's precise node-wide
//!   counter (root cgroup) and by /proc/stat (tick-sampled, what node_exporter and
//!   `top` show). Each window also reads the tool's own processes by the scheduler's
//!   nanosecond counter (faultline: its burners and the agent; stress-ng: all its
//!   processes): `outside` is what the node's precise rise held besides them, other
//!   processes and kernel work that no tool controls. The summary gives each tool's
//!   error twice: as the node's counters showed it, and the tool's own part, with
//!   `outside` taken out of both counters (in /proc/stat that leaves the tool's
//!   delivery plus the tick-sampling difference it caused). Also per tool: its
//!   kernel time (`top`'s `sy`, the cost of its clock reads and sleeps), its sleeps
//!   (wake-ups) per second, and for faultline the agent's CPU and how many of the
//!   window's CFS periods the quota throttled the burners in (each such clip ends a
//!   run on a tick, which /proc/stat over-counts).
//! - Memory share: requested 10 % of MemTotal vs the fence group's usage and the
//!   node's used memory (excluding free pages parked on per-CPU lists).
//! - The agent while a fault runs idle: CPU % and RSS of the agent process itself.
use std::time::{Duration, Instant};

use faultline_tests::{
    Agent, Pair, limits_file,
    netns::IFACE,
    node::{
        NodeCpu, Usage, cgroup_dirs, cpu_throttling, mem_used_percent, meminfo_kb, node_cpu,
        online_cpus, pids_named, usage, wait_quiet,
    },
};

const WINDOW: Duration = Duration::from_secs(20);
/// Each baseline (one before and one after every window).
const BASELINE: Duration = Duration::from_secs(5);

/// Each (share, tool) row is measured this many times, interleaved, unless
/// `FAULTLINE_BENCH_ROUNDS` says otherwise: one 20 s window of tick sampling spreads
/// by about 0.2 points, as much as the errors compared.
const ROUNDS: usize = 3;

fn rounds() -> usize {
    match std::env::var("FAULTLINE_BENCH_ROUNDS") {
        Err(_) => ROUNDS,
        Ok(r) => r.parse().ok().filter(|&r| r > 0).unwrap_or_else(|| {
            panic!("FAULTLINE_BENCH_ROUNDS={r:?}: expected a whole number of rounds, 1 or more")
        }),
    }
}

/// The CPU shares measured: 5, 15 and 50 % unless `FAULTLINE_BENCH_SHARES` names
/// some of them (e.g. `5,15`), to repeat one level with more rounds.
fn shares() -> Vec<&'static str> {
    const ALL: [&str; 3] = ["5", "15", "50"];
    match std::env::var("FAULTLINE_BENCH_SHARES") {
        Err(_) => ALL.to_vec(),
        Ok(list) => list
            .split(',')
            .map(|p| {
                ALL.into_iter().find(|a| *a == p.trim()).unwrap_or_else(|| {
                    panic!("FAULTLINE_BENCH_SHARES={list:?}: {p:?} is not one of {ALL:?}")
                })
            })
            .collect(),
    }
}

/// Mean of `xs` and its standard error (the sample deviation over √n; 0 for one value).
fn mean_and_error(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    if n < 2.0 {
        return (mean, 0.0);
    }
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, (var / n).sqrt())
}

/// VmRSS of a process, in kB.
fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap()
}

fn state() -> faultline_tests::TempPath {
    faultline_tests::TempPath::dir("fl-bench-state")
}

/// One window of one tool at one share, baselines subtracted, in points of the node
/// unless named otherwise.
struct Row {
    /// The node's rise by /proc/stat and by the precise counter, and steal's.
    stat: f64,
    precise: f64,
    steal: f64,
    /// The tool's own processes by their precise counters.
    own: f64,
    /// Their kernel time, and their sleeps per second (all processes together).
    system: f64,
    sleeps_per_s: f64,
    /// faultline only: the agent in % of one CPU, and (throttled, periods).
    agent: Option<(f64, (u64, u64))>,
    /// /proc/stat minus the precise counter over the window itself (no baseline).
    window_gap: f64,
}

impl Row {
    /// What the node's precise rise held besides the tool's own processes.
    fn outside(&self) -> f64 {
        self.precise - self.own
    }

    /// The errors (/proc/stat, precise) as the node's counters showed them.
    fn shown(&self, share: f64) -> [f64; 2] {
        [self.stat - share, self.precise - share]
    }

    /// The tool's own part of those errors: `outside` taken out of both counters.
    /// In /proc/stat that is the tool's delivery plus the difference between the
    /// counters it caused: the window's, less the idle node's (`idle_gap`). The idle
    /// node's difference is taken over every baseline of the run rather than the
    /// row's own: a 5 s baseline holds /proc/stat in 10 ms steps, 0.1 points on 2
    /// CPUs, as much as the differences compared.
    fn tools(&self, share: f64, idle_gap: f64) -> [f64; 2] {
        [
            self.window_gap - idle_gap + self.own - share,
            self.own - share,
        ]
    }
}

/// The tool's own processes between two readings, in points of the node.
fn own_share(d: &Usage, wall: Duration, cpus: f64) -> f64 {
    100.0 * d.run_ns as f64 / wall.as_nanos() as f64 / cpus
}

/// A faultline CPU stress of `pct` for one window.
fn faultline_window(pct: &str, cpus: f64) -> Measured {
    let span = format!("{}s", WINDOW.as_secs() + 5);
    let st = state();
    let (mut agent, armed) = Agent::start_host(
        &st,
        &[
            "--profile",
            "staging",
            "inject",
            "cpu",
            "--percent",
            pct,
            "--duration",
            &span,
        ],
    );
    let pid = armed["pid"].as_u64().unwrap() as u32;
    agent.wait_event("reading", Duration::from_secs(5)).unwrap();
    let mut pids: Vec<u32> = armed["pids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap() as u32)
        .collect();
    pids.push(pid);
    let dirs = cgroup_dirs(&armed);
    let (all0, agent0, t0) = (usage(&pids), usage(&[pid]), cpu_throttling(&dirs));
    let start = Instant::now();
    let node = node_cpu(WINDOW);
    let (all1, agent1, t1) = (usage(&pids), usage(&[pid]), cpu_throttling(&dirs));
    let wall = start.elapsed();
    agent.stop();
    let agent_cpu = own_share(&agent1.since(&agent0), wall, 1.0);
    Measured {
        node,
        own: all1.since(&all0),
        wall,
        agent: Some((agent_cpu, (t1.1 - t0.1, t1.0 - t0.0))),
        cpus,
    }
}

/// stress-ng at `pct` on every CPU for one window.
fn stress_ng_window(pct: &str, cpus: f64) -> Measured {
    let span = format!("{}s", WINDOW.as_secs() + 5);
    let mut ng = std::process::Command::new("stress-ng")
        .args([
            "--cpu",
            &cpus.to_string(),
            "--cpu-load",
            pct,
            "--timeout",
            &span,
            "--quiet",
        ])
        .spawn()
        .expect("stress-ng (apt install stress-ng)");
    std::thread::sleep(Duration::from_secs(1));
    let pids = pids_named("stress-ng");
    let u0 = usage(&pids);
    let start = Instant::now();
    let node = node_cpu(WINDOW);
    let u1 = usage(&pids);
    let wall = start.elapsed();
    // Its workers are named stress-ng-cpu and outlive a killed parent until their
    // timeout: stop them all before the next baseline.
    let _ = std::process::Command::new("pkill")
        .args(["-TERM", "-f", "^stress-ng"])
        .status();
    let _ = ng.wait();
    while !pids_named("stress-ng").is_empty() {
        std::thread::sleep(Duration::from_millis(100));
    }
    Measured {
        node,
        own: u1.since(&u0),
        wall,
        agent: None,
        cpus,
    }
}

/// One tool's window as measured, before a baseline is subtracted.
struct Measured {
    node: NodeCpu,
    own: Usage,
    wall: Duration,
    agent: Option<(f64, (u64, u64))>,
    cpus: f64,
}

impl Measured {
    fn row(&self, quiet: &NodeCpu) -> Row {
        let secs = self.wall.as_secs_f64();
        Row {
            stat: self.node.stat - quiet.stat,
            precise: self.node.precise - quiet.precise,
            steal: self.node.steal - quiet.steal,
            own: own_share(&self.own, self.wall, self.cpus),
            system: 100.0 * self.own.system_s / secs / self.cpus,
            sleeps_per_s: self.own.sleeps as f64 / secs,
            agent: self.agent,
            window_gap: self.node.stat - self.node.precise,
        }
    }
}

fn main() {
    let cpus = online_cpus() as f64;
    println!(
        "\nCPU stress accuracy on {cpus} CPU(s), faultline and stress-ng side by side, {}s \
         windows, the quieter of a baseline before and after (by the precise counter) \
         subtracted; error = rise - requested, in points of the node",
        WINDOW.as_secs()
    );
    println!(
        "{:<6} {:<10} {:>11} {:>7} {:>11} {:>7} {:>7} {:>10} {:>7} {:>8} {:>7} {:>8} {:>12} {:>9}",
        "share",
        "tool",
        "/proc/stat",
        "error",
        "precise",
        "error",
        "steal",
        "tool's own",
        "error",
        "outside",
        "sys",
        "wakeups/s",
        "agent",
        "throttled"
    );
    let mut rows: std::collections::BTreeMap<(u32, &str), Vec<Row>> = Default::default();
    // /proc/stat minus the precise counter of every baseline: the idle node's.
    let mut idle_gaps = Vec::new();
    // The build that started this benchmark leaves dirty pages behind; their
    // writeback (kernel time, in /proc/stat and the precise counter alike) landed in
    // the first row's baseline: 5 % read 3.3 points low there while the fence group's
    // own counter said 5.01 %. Flush them, then let the node settle.
    let _ = std::process::Command::new("sync").status();
    std::thread::sleep(Duration::from_secs(5));
    wait_quiet(1.0);
    let (rounds, shares) = (rounds(), shares());
    for (round, pct) in (0..rounds).flat_map(|r| shares.iter().map(move |&p| (r, p))) {
        let share: f64 = pct.parse().unwrap();
        // Each round starts with the other tool, so neither always measures first.
        let order = if round % 2 == 0 {
            ["faultline", "stress-ng"]
        } else {
            ["stress-ng", "faultline"]
        };
        for tool in order {
            // Let the previous stressors' teardown settle, then a baseline on a
            // quiet node (a baseline taken during a burst moves every error).
            std::thread::sleep(Duration::from_secs(3));
            wait_quiet(1.0);
            let base = node_cpu(BASELINE);
            let window = if tool == "faultline" {
                faultline_window(pct, cpus)
            } else {
                stress_ng_window(pct, cpus)
            };
            // A second baseline after the window, on a quiet node again, and the
            // quieter of the two is the node's idle load: other activity only ever adds
            // to a baseline. Rows taken after a heavy one read up to 3.3 points low
            // against the baseline before them alone (activity left over from the
            // load before), while the fence group's own counter was exact. The
            // quieter one is chosen by the precise counter and used for all three
            // figures: /proc/stat counts in 10 ms units, 0.1 points of a 5 s baseline
            // on 2 CPUs, and taking its lower reading on its own made every
            // /proc/stat rise read up to a tenth of a point high.
            std::thread::sleep(Duration::from_secs(3));
            wait_quiet(1.0);
            let after = node_cpu(BASELINE);
            idle_gaps.extend([base.stat - base.precise, after.stat - after.precise]);
            let quiet = if after.precise < base.precise {
                after
            } else {
                base
            };
            let row = window.row(&quiet);
            let (agent, throttled) = match row.agent {
                Some((cpu, (throttled, periods))) => {
                    (format!("{cpu:.3}% CPU"), format!("{throttled}/{periods}"))
                }
                None => ("-".to_owned(), "-".to_owned()),
            };
            let [stat_error, precise_error] = row.shown(share);
            println!(
                "{:<6} {:<10} {:>10.2}% {:>+7.2} {:>10.2}% {:>+7.2} {:>+7.2} {:>9.2}% {:>+7.2} {:>+8.2} {:>6.2}% {:>9.1} {:>12} {:>9}  round {}",
                format!("{pct}%"),
                tool,
                row.stat,
                stat_error,
                row.precise,
                precise_error,
                row.steal,
                row.own,
                row.own - share,
                row.outside(),
                row.system,
                row.sleeps_per_s,
                agent,
                throttled,
                round + 1
            );
            rows.entry((share as u32, tool)).or_default().push(row);
        }
    }
    summary(&rows, rounds, &idle_gaps);
    std::thread::sleep(Duration::from_secs(3));
    let base = mem_used_percent();
    let st = state();
    let (mut agent, _) = Agent::start_host(
        &st,
        &["inject", "memory", "--percent", "10", "--duration", "40s"],
    );
    let target = meminfo_kb("MemTotal:") * 1024 / 10;
    let mut group = 0;
    while group < target {
        group = agent.wait_event("reading", Duration::from_secs(5)).unwrap()["group_mem_bytes"]
            .as_u64()
            .unwrap();
    }
    let node = mem_used_percent() - base;
    agent.stop();
    println!(
        "memory 10%: fence group {:.2}% of MemTotal, node used +{node:.2} pp",
        100.0 * group as f64 / (meminfo_kb("MemTotal:") * 1024) as f64
    );

    // The agent's own cost while a fault is armed but idle (nothing matches).
    let pair = Pair::new();
    let limits = limits_file("100%", "300s");
    let (agent, armed) = Agent::start(
        &pair.b.name,
        &pair.b.state_dir(),
        &[
            "--limits",
            limits.to_str().unwrap(),
            "inject",
            "loss",
            "--iface",
            IFACE,
            "--percent",
            "1",
            "--duration",
            "60s",
            "--proto",
            "udp",
            "--dport",
            "1",
        ],
    );
    let pid = armed["pid"].as_u64().unwrap() as u32;
    let (c0, start) = (usage(&[pid]), Instant::now());
    std::thread::sleep(WINDOW);
    let (c1, rss) = (usage(&[pid]), rss_kb(pid));
    let wall = start.elapsed();
    agent.stop();
    println!(
        "agent idle (loss fault armed, 1 Hz counters): {:.3}% of one CPU, RSS {} MiB",
        own_share(&c1.since(&c0), wall, 1.0),
        rss / 1024
    );
}

/// The errors of one (share, tool) over its rounds: [as shown, the tool's part] ×
/// [/proc/stat, precise].
fn errors(rs: &[Row], share: f64, idle_gap: f64) -> [[Vec<f64>; 2]; 2] {
    let shown = |i: usize| -> Vec<f64> { rs.iter().map(|r| r.shown(share)[i]).collect() };
    let tools = |i: usize| -> Vec<f64> { rs.iter().map(|r| r.tools(share, idle_gap)[i]).collect() };
    [[shown(0), shown(1)], [tools(0), tools(1)]]
}

/// Mean |error| with its standard error.
fn mean_abs(e: &[f64]) -> (f64, f64) {
    mean_and_error(&e.iter().map(|x| x.abs()).collect::<Vec<_>>())
}

/// Per level and tool, each error's mean size over the rounds and its signed mean
/// (a bias shows as a signed mean several standard errors from zero, a window's
/// noise as one within them); then, per level and figure, faultline beside
/// stress-ng.
fn summary(
    rows: &std::collections::BTreeMap<(u32, &str), Vec<Row>>,
    rounds: usize,
    idle_gaps: &[f64],
) {
    let (idle_gap, idle_gap_error) = mean_and_error(idle_gaps);
    const FIGURES: [&str; 4] = [
        "/proc/stat as shown",
        "precise as shown",
        "/proc/stat, tool's part",
        "precise, tool's part",
    ];
    println!(
        "\nover {rounds} rounds, in points of the node: mean |error| ± its standard error \
         (signed mean ± standard error); the tool's part is the error with `outside` taken out; \
         sys and wakeups/s are the tool's own, `most above` the most either counter showed \
         above the share in a window. The idle node's /proc/stat minus precise, over the \
         run's {} baselines: {idle_gap:+.3} ± {idle_gap_error:.3}",
        idle_gaps.len()
    );
    println!(
        "{:<5} {:<10} {:>24} {:>24} {:>24} {:>24} {:>6} {:>9} {:>10}",
        "share",
        "tool",
        FIGURES[0],
        FIGURES[1],
        FIGURES[2],
        FIGURES[3],
        "sys",
        "wakeups/s",
        "most above"
    );
    for ((share, tool), rs) in rows {
        let e = errors(rs, f64::from(*share), idle_gap);
        let cells: Vec<String> = [&e[0][0], &e[0][1], &e[1][0], &e[1][1]]
            .iter()
            .map(|x| {
                let ((m, me), (s, se)) = (mean_abs(x), mean_and_error(x));
                format!("{:>24}", format!("{m:.2}±{me:.2} ({s:+.2}±{se:.2})"))
            })
            .collect();
        let n = rs.len() as f64;
        let sys = rs.iter().map(|r| r.system).sum::<f64>() / n;
        let sleeps = rs.iter().map(|r| r.sleeps_per_s).sum::<f64>() / n;
        let above = rs
            .iter()
            .flat_map(|r| r.shown(f64::from(*share)))
            .fold(f64::MIN, f64::max);
        println!(
            "{:<5} {tool:<10} {} {sys:>5.2}% {sleeps:>9.1} {above:>+10.2}",
            format!("{share}%"),
            cells.join(" ")
        );
    }
    println!(
        "\nfaultline beside stress-ng, mean |error| in points (where larger, the difference's \
         standard error in brackets):"
    );
    let levels: std::collections::BTreeSet<u32> = rows.keys().map(|k| k.0).collect();
    for share in levels {
        let (Some(fl), Some(ng)) = (
            rows.get(&(share, "faultline")),
            rows.get(&(share, "stress-ng")),
        ) else {
            continue;
        };
        let (fl, ng) = (
            errors(fl, f64::from(share), idle_gap),
            errors(ng, f64::from(share), idle_gap),
        );
        for (i, figure) in FIGURES.iter().enumerate() {
            let ((a, ae), (b, be)) = (mean_abs(&fl[i / 2][i % 2]), mean_abs(&ng[i / 2][i % 2]));
            let verdict = if a <= b {
                "no larger".to_owned()
            } else {
                format!("larger by {:.2} [{:.2}]", a - b, ae.hypot(be))
            };
            println!(
                "{:<5} {figure:<24} faultline {a:.2}  stress-ng {b:.2}  {verdict}",
                format!("{share}%")
            );
        }
    }
}
