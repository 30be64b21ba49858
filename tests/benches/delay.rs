//! Accuracy of injected latency (`cargo xtask bench`, and in the stock-kernel VM with
//! `cargo xtask vm-bench`).
//!
//! 50 ms on the sender's egress; timestamped UDP at 1 kpps and 10 kpps, at least
//! 10,000 packets each; the receiver (another namespace, same CLOCK_MONOTONIC)
//! computes each packet's one-way delay. Error = one-way delay - 50 ms, reported as
//! median / p99 / max per backend: the delay line, EDT (where sch_fq exists) and
//! netem (where it exists) side by side on the same devices and traffic. Also the
//! agent's CPU time per 10 kpps through the delay line, and the lateness of a plain
//! timer on this machine (the floor any userspace release can reach).
//! Numbers, not assertions: this is a benchmark, not a test.
use std::{process::Command, time::Instant};

use faultline_tests::{
    Agent, Pair, limits_file,
    netns::{IFACE, run_in},
    node::process_cpu_s,
    rtt::{monotonic_ns, quantile, stamped_stream},
};

const DELAY_MS: f64 = 50.0;
const PORT: u16 = 7600;

struct Run {
    received: usize,
    sent: u32,
    errors: Vec<f64>,
    agent_cpu_percent: Option<f64>,
}

fn stream(pair: &Pair, pps: u32, count: u32) -> Vec<(u32, f64)> {
    let to = format!("{}:{PORT}", pair.v4(1)).parse().unwrap();
    stamped_stream(&pair.b, &pair.a, to, count, pps, || ()).0
}

/// The agent's process id, from its "armed" event.
fn measure(pair: &Pair, backend: &str, pps: u32, count: u32) -> Option<Run> {
    let limits = limits_file("100%", "300s");
    let mut agent = None;
    let mut netem = false;
    match backend {
        "netem" => {
            let ok = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &pair.b.name,
                    "tc",
                    "qdisc",
                    "add",
                    "dev",
                    IFACE,
                ])
                .args(["root", "netem", "delay", "50ms", "limit", "1000000"])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if !ok {
                return None;
            }
            netem = true;
        }
        "baseline" => {}
        _ => {
            let (a, armed) = Agent::start(
                &pair.b.name,
                &pair.b.state_dir(),
                &[
                    "--limits",
                    limits.to_str().unwrap(),
                    "inject",
                    "latency",
                    "--iface",
                    IFACE,
                    "--direction",
                    "egress",
                    "--delay",
                    "50ms",
                    "--duration",
                    "120s",
                    "--backend",
                    backend,
                    "--proto",
                    "udp",
                    "--dport",
                    &PORT.to_string(),
                    "--interval",
                    "60s",
                ],
            );
            agent = Some((a, armed["pid"].as_u64().unwrap_or(0) as u32));
        }
    }
    let cpu0 = agent
        .as_ref()
        .map(|(_, pid)| process_cpu_s(*pid).unwrap_or(0.0));
    let started = Instant::now();
    let got = stream(pair, pps, count);
    let elapsed = started.elapsed().as_secs_f64();
    let agent_cpu_percent = agent
        .as_ref()
        .zip(cpu0)
        .map(|((_, pid), c0)| (process_cpu_s(*pid).unwrap_or(0.0) - c0) / elapsed * 100.0);
    if let Some((a, _)) = agent {
        a.stop();
    }
    if netem {
        run_in(&pair.b.name, &["tc", "qdisc", "del", "dev", IFACE, "root"]);
    }
    let expect = if backend == "baseline" { 0.0 } else { DELAY_MS };
    Some(Run {
        received: got.len(),
        sent: count,
        errors: got.iter().map(|&(_, d)| d - expect).collect(),
        agent_cpu_percent,
    })
}

/// Lateness of a thread sleeping until absolute 1 ms deadlines: what this machine's
/// scheduler (and hypervisor) allow any userspace timer.
fn timer_floor() -> (f64, f64, f64) {
    let mut late = Vec::new();
    let mut next = monotonic_ns();
    for _ in 0..3000 {
        next += 1_000_000;
        let ts = libc::timespec {
            tv_sec: (next / 1_000_000_000) as libc::time_t,
            tv_nsec: (next % 1_000_000_000) as libc::c_long,
        };
        // SAFETY: valid timespec; absolute sleep on CLOCK_MONOTONIC.
        unsafe {
            libc::clock_nanosleep(
                libc::CLOCK_MONOTONIC,
                libc::TIMER_ABSTIME,
                &ts,
                std::ptr::null_mut(),
            )
        };
        late.push((monotonic_ns() - next) as f64 / 1e6);
    }
    (
        quantile(&late, 0.5),
        quantile(&late, 0.99),
        quantile(&late, 1.0),
    )
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // cargo's harness protocol: nothing to list
    }
    let pair = Pair::new();
    pair.a.single_receive_cpu();
    let caps = Command::new(faultline_tests::agent_binary())
        .args(["capabilities", "-o", "json"])
        .output()
        .ok()
        .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
        .unwrap_or_default();
    println!("kernel {}", caps["kernel"].as_str().unwrap_or("?"));
    let (p50, p99, max) = timer_floor();
    println!("timer floor (1 ms absolute sleeps): late p50 {p50:.3} p99 {p99:.3} max {max:.3} ms");
    let mut backends = vec!["baseline", "delay-line"];
    if caps["sch_fq"] == true {
        backends.push("edt");
    }
    backends.push("netem");
    println!(
        "{:<11} {:>6} {:>7} {:>9} {:>9} {:>9} {:>9} {:>10}",
        "backend", "pps", "packets", "received", "err p50", "err p99", "err max", "agent CPU"
    );
    for pps in [1_000u32, 10_000] {
        let count = (pps * 2).max(10_000);
        for backend in &backends {
            let Some(run) = measure(&pair, backend, pps, count) else {
                println!("{backend:<11} {pps:>6} (not available on this kernel)");
                continue;
            };
            let cpu = run
                .agent_cpu_percent
                .map(|c| format!("{c:.1}%"))
                .unwrap_or_else(|| "-".into());
            if run.errors.is_empty() {
                println!(
                    "{backend:<11} {pps:>6} {:>7} {:>9} (nothing received)",
                    run.sent, 0
                );
                continue;
            }
            println!(
                "{backend:<11} {pps:>6} {:>7} {:>9} {:>7.3}ms {:>7.3}ms {:>7.3}ms {cpu:>10}",
                run.sent,
                run.received,
                quantile(&run.errors, 0.5),
                quantile(&run.errors, 0.99),
                quantile(&run.errors, 1.0),
            );
        }
    }
}
