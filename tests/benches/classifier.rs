//! Cost of the fault classifier on this kernel (`cargo xtask bench`).
//!
//! Per-packet cost, for: attached but not armed, armed but not matching, armed and
//! dropping, two ways:
//! - the kernel's own BPF run-time statistics (run_time_ns / run_cnt of the attached
//!   program) while a UDP flood crosses a veth pair. These include two clock reads
//!   per packet, which in a VM (pvclock) cost more than the program itself;
//! - BPF_PROG_TEST_RUN: the kernel runs the same loaded program 300,000 times on a
//!   64-byte Ethernet/IPv4/UDP frame and reports the mean, with no per-run clock read;
//!   the best of 7 such runs is kept, since interference only ever adds time.
//!
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
    test_run::test_run,
    traffic::{receiver, sender},
};

const WINDOW: Duration = Duration::from_secs(3);
const ROUNDS: usize = 5;
/// Set FAULTLINE_BENCH_QUICK=1 for one short round (profiling iterations).
fn rounds() -> usize {
    if std::env::var_os("FAULTLINE_BENCH_QUICK").is_some() {
        1
    } else {
        ROUNDS
    }
}
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

/// A 64-byte Ethernet/IPv4/UDP frame to port PORT.
fn frame() -> [u8; 64] {
    let mut f = [0u8; 64];
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    f[14] = 0x45;
    f[16..18].copy_from_slice(&50u16.to_be_bytes());
    f[22] = 64;
    f[23] = 17;
    f[26..30].copy_from_slice(&[10, 200, 9, 1]);
    f[30..34].copy_from_slice(&[10, 200, 9, 2]);
    f[34..36].copy_from_slice(&40000u16.to_be_bytes());
    f[36..38].copy_from_slice(&PORT.to_be_bytes());
    f[38..40].copy_from_slice(&30u16.to_be_bytes());
    f
}

/// Mean ns per run of program `id` over `repeat` runs of BPF_PROG_TEST_RUN.
fn test_run_ns(id: u32, repeat: u32) -> f64 {
    let info = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .expect("program loaded");
    let fd = info.fd().expect("program fd");
    let run = test_run(fd, &frame(), repeat).expect("BPF_PROG_TEST_RUN");
    f64::from(run.duration_ns)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct Case {
    name: &'static str,
    args: Vec<String>,
    ns_per_pkt: Vec<f64>,
    test_run: Vec<f64>,
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
            test_run: vec![],
            pps: vec![],
        },
        Case {
            name: "armed, not matching",
            args: base(&["--percent", "100", "--proto", "udp", "--dport", "1"]),
            ns_per_pkt: vec![],
            test_run: vec![],
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
            test_run: vec![],
            pps: vec![],
        },
    ];
    for round in 0..rounds() {
        eprintln!("round {}/{}", round + 1, rounds());
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
            // Minimum of several runs: interference only ever adds time.
            let best = (0..7)
                .map(|_| test_run_ns(ids[0], 300_000))
                .fold(f64::INFINITY, f64::min);
            case.test_run.push(best);
            agent.stop();
        }
    }
    let none = median(none_pps);
    println!(
        "\nfaultline classifier on {} (tc ingress of a veth, 64-byte UDP, {} round(s) x {}s, medians)",
        kernel(),
        rounds(),
        WINDOW.as_secs()
    );
    println!(
        "{:<26} {:>14} {:>14} {:>14} {:>9}",
        "case", "ns/pkt (stats)", "ns/pkt (test)", "received pps", "vs none"
    );
    println!(
        "{:<26} {:>14} {:>14} {:>14.0} {:>8.1}%",
        "no program", "-", "-", none, 100.0
    );
    for case in cases {
        let pps = median(case.pps);
        println!(
            "{:<26} {:>14.1} {:>14.1} {:>14.0} {:>8.1}%",
            case.name,
            median(case.ns_per_pkt),
            median(case.test_run),
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
