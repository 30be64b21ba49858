//! Accuracy of the node stress faults and the agent's own cost (`cargo xtask bench`).
//!
//! - CPU share: requested vs measured over 30 s at 5 %, 15 % and 50 % of the node,
//!   by the fence group's own counter, by the kernel's precise node-wide counter
//!   (root cgroup), and by /proc/stat (tick-sampled).
//! - Memory share: requested 10 % of MemTotal vs the fence group's usage and the
//!   node's used memory (excluding free pages parked on per-CPU lists).
//! - The agent while a fault runs idle: CPU % and RSS of the agent process itself.
use std::time::{Duration, Instant};

use faultline_tests::{
    Agent, Pair, limits_file,
    netns::IFACE,
    node::{mem_used_percent, meminfo_kb, node_cpu_ns, proc_stat_busy},
};

const WINDOW: Duration = Duration::from_secs(30);

/// (utime + stime in clock ticks, VmRSS in kB) of a process.
fn proc_usage(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap();
    (ticks, rss)
}

fn state() -> faultline_tests::TempPath {
    faultline_tests::TempPath::dir("fl-bench-state")
}

fn main() {
    let cpus = std::thread::available_parallelism().unwrap().get() as f64;
    let ticks_per_s = 100.0; // USER_HZ
    println!(
        "\nnode stress accuracy on {cpus} CPU(s), {}s windows",
        WINDOW.as_secs()
    );
    println!(
        "{:<10} {:>14} {:>16} {:>14}",
        "requested", "fence group", "node (precise)", "/proc/stat"
    );
    for pct in ["5", "15", "50"] {
        // Let the previous stressors' teardown settle.
        std::thread::sleep(Duration::from_secs(3));
        let (s0, t0) = proc_stat_busy();
        let n0 = node_cpu_ns();
        let base_start = Instant::now();
        std::thread::sleep(Duration::from_secs(3));
        let (s1, t1) = proc_stat_busy();
        let base_node =
            100.0 * (node_cpu_ns() - n0) as f64 / base_start.elapsed().as_nanos() as f64 / cpus;
        let base_stat = 100.0 * (s1 - s0) as f64 / (t1 - t0) as f64;

        let st = state();
        let (mut agent, _) = Agent::start_host(
            &st,
            &[
                "--profile",
                "staging",
                "inject",
                "cpu",
                "--percent",
                pct,
                "--duration",
                "40s",
            ],
        );
        let first = agent.wait_event("reading", Duration::from_secs(5)).unwrap();
        let (s0, t0) = proc_stat_busy();
        let n0 = node_cpu_ns();
        let start = Instant::now();
        let mut last = first.clone();
        while start.elapsed() < WINDOW {
            last = agent.wait_event("reading", Duration::from_secs(5)).unwrap();
        }
        let (s1, t1) = proc_stat_busy();
        let node = 100.0 * (node_cpu_ns() - n0) as f64 / start.elapsed().as_nanos() as f64 / cpus
            - base_node;
        let stat = 100.0 * (s1 - s0) as f64 / (t1 - t0) as f64 - base_stat;
        let us = last["group_cpu_us"].as_u64().unwrap() - first["group_cpu_us"].as_u64().unwrap();
        let ms = last["elapsed_ms"].as_u64().unwrap() - first["elapsed_ms"].as_u64().unwrap();
        let group = 100.0 * us as f64 / 1000.0 / ms as f64 / cpus;
        agent.stop();
        println!(
            "{:<10} {:>13.2}% {:>15.2}% {:>13.2}%",
            format!("{pct}%"),
            group,
            node,
            stat
        );
    }

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
    let (c0, _) = proc_usage(pid);
    std::thread::sleep(WINDOW);
    let (c1, rss) = proc_usage(pid);
    agent.stop();
    println!(
        "agent idle (loss fault armed, 1 Hz counters): {:.3}% of one CPU, RSS {} MiB",
        100.0 * (c1 - c0) as f64 / ticks_per_s / WINDOW.as_secs_f64(),
        rss / 1024
    );
}
