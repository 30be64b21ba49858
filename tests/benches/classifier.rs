//! Cost of the fault classifier on this kernel (`cargo xtask bench`).
//!
//! Per-packet cost comes from the kernel's own BPF run-time statistics
//! (run_time_ns / run_cnt of the attached program) while a UDP flood crosses a veth
//! pair, for: attached but not armed, armed but not matching, armed and dropping.
//! Throughput compares received datagrams/s with no program against the program
//! armed but not matching. Each case runs ROUNDS times, interleaved; medians are
//! reported. Numbers, not assertions: this is a benchmark, not a test.
use std::{
    net::{SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use faultline_tests::{
    Agent, Pair, limits_file,
    netns::IFACE,
    traffic::{receiver, sender},
};

const WINDOW: Duration = Duration::from_secs(3);
const ROUNDS: usize = 5;
const PORT: u16 = 7500;

/// Floods `to` from a thread pinned to CPU 0 for WINDOW; returns datagrams/s received.
fn flood(tx: &UdpSocket, rx: &UdpSocket, to: SocketAddr) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (tx, stop) = (tx.try_clone().unwrap(), stop.clone());
        thread::spawn(move || {
            // SAFETY: zeroed cpu_set_t with CPU 0, for this thread.
            unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(0, &mut set);
                libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
            }
            let buf = [0u8; 64];
            while !stop.load(Ordering::Relaxed) {
                let _ = tx.send_to(&buf, to);
            }
        })
    };
    rx.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut buf = [0u8; 256];
    // Warm up, then count for WINDOW.
    let warm = Instant::now() + Duration::from_millis(300);
    while Instant::now() < warm {
        let _ = rx.recv_from(&mut buf);
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < WINDOW {
        if rx.recv_from(&mut buf).is_ok() {
            n += 1;
        }
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    while rx.recv_from(&mut buf).is_ok() {}
    rate
}

fn run_stats(ids: &[u32]) -> (u64, u64) {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| ids.contains(&p.id()))
        .fold((0, 0), |(t, c), p| {
            (t + p.run_time().as_nanos() as u64, c + p.run_count())
        })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct Case {
    name: &'static str,
    args: Vec<String>,
    ns_per_pkt: Vec<f64>,
    pps: Vec<f64>,
}

fn main() {
    let pair = Pair::new();
    let limits = limits_file("100%", "300s");
    let to: SocketAddr = format!("{}:{PORT}", pair.v4(2)).parse().unwrap();
    let rx = receiver(&pair.b, format!("0.0.0.0:{PORT}").parse().unwrap());
    let tx = sender(&pair.a, "0.0.0.0:0".parse().unwrap());

    let base = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = ["--limits", limits.to_str().unwrap(), "inject", "loss"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.extend(["--iface", IFACE, "--duration", "120s"].map(String::from));
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let mut none_pps = Vec::new();
    let mut cases = vec![
        Case {
            name: "attached, not armed",
            args: base(&["--percent", "100", "--disarmed"]),
            ns_per_pkt: vec![],
            pps: vec![],
        },
        Case {
            name: "armed, not matching",
            args: base(&["--percent", "100", "--proto", "udp", "--dport", "1"]),
            ns_per_pkt: vec![],
            pps: vec![],
        },
        Case {
            name: "armed, dropping (100 %)",
            args: base(&[
                "--percent",
                "100",
                "--proto",
                "udp",
                "--dport",
                &PORT.to_string(),
            ]),
            ns_per_pkt: vec![],
            pps: vec![],
        },
    ];
    for round in 0..ROUNDS {
        eprintln!("round {}/{ROUNDS}", round + 1);
        none_pps.push(flood(&tx, &rx, to));
        for case in &mut cases {
            let args: Vec<&str> = case.args.iter().map(String::as_str).collect();
            let (agent, armed) = Agent::start(&pair.b.name, &pair.b.state_dir(), &args);
            let ids: Vec<u32> = armed["program_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            // Throughput first, with run-time statistics off: they cost two clock
            // reads per packet themselves.
            case.pps.push(flood(&tx, &rx, to));
            let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
                .expect("enable BPF run-time stats");
            let (t0, c0) = run_stats(&ids);
            flood(&tx, &rx, to);
            let (t1, c1) = run_stats(&ids);
            drop(stats);
            if c1 > c0 {
                case.ns_per_pkt.push((t1 - t0) as f64 / (c1 - c0) as f64);
            }
            agent.stop();
        }
    }
    let none = median(none_pps);
    println!(
        "\nfaultline classifier on {} (tc ingress of a veth, 64-byte UDP, {ROUNDS} rounds x {}s, medians)",
        kernel(),
        WINDOW.as_secs()
    );
    println!(
        "{:<26} {:>12} {:>14} {:>10}",
        "case", "ns/packet", "received pps", "vs none"
    );
    println!(
        "{:<26} {:>12} {:>14.0} {:>9.1}%",
        "no program", "-", none, 100.0
    );
    for case in cases {
        let pps = median(case.pps);
        println!(
            "{:<26} {:>12.1} {:>14.0} {:>9.1}%",
            case.name,
            median(case.ns_per_pkt),
            pps,
            100.0 * pps / none
        );
    }
    println!(
        "(the dropping case receives almost nothing by design; its pps column is not throughput)"
    );
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| format!("Linux {}", s.trim()))
        .unwrap_or_else(|_| "this kernel".into())
}
