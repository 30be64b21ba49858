//! The main job for a first look: real experiments between two network-namespace
//! "nodes". First loss: node-1 sends a steady UDP stream to node-2; the agent on
//! node-2 drops 1 % of it in the kernel (the production cap) with live counters; the
//! summary compares what the kernel counted, what the receiver saw, and what the model
//! predicts, for the baseline, the fault and the recovery. Then latency: 50 ms on
//! node-2's replies (the reference report's first scenario, at the production cap),
//! with round trips measured before, during and after. Both check that nothing was
//! left attached.
use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    thread,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use faultline_tests::{
    Pair, agent_binary, assert_nothing_attached,
    netns::IFACE,
    rtt::{EchoServer, median, udp_rtts},
    traffic::{collect, receiver, sender},
};

const PORT: u16 = 9000;
/// Target rate; the sleep-paced sender reaches somewhat less.
const PPS: u32 = 2000;
const PHASE: Duration = Duration::from_secs(3);
const FAULT: &str = "10s";
const PERCENT: f64 = 1.0;

pub fn run() -> Result<()> {
    println!("\n== faultline demo: 1 % packet loss on node-2 for {FAULT} ==");
    let pair = Pair::new();
    println!(
        "nodes: node-1 = netns {} ({}), node-2 = netns {} ({}), joined by a veth pair",
        pair.a.name,
        pair.v4(1),
        pair.b.name,
        pair.v4(2)
    );
    let to: SocketAddr = format!("{}:{PORT}", pair.v4(2)).parse()?;
    let rx = receiver(&pair.b, "0.0.0.0:9000".parse()?);
    let tx = sender(&pair.a, "0.0.0.0:0".parse()?);

    // A steady stream; `marks` records the sequence number at each phase change.
    let seq = Arc::new(AtomicU32::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let stream = {
        let (seq, stop) = (seq.clone(), stop.clone());
        thread::spawn(move || {
            let mut buf = [0u8; 64];
            let gap = Duration::from_secs_f64(1.0 / f64::from(PPS));
            while !stop.load(Ordering::Relaxed) {
                let n = seq.fetch_add(1, Ordering::Relaxed);
                buf[..4].copy_from_slice(&n.to_be_bytes());
                let _ = tx.send_to(&buf, to);
                thread::sleep(gap);
            }
        })
    };
    let collector = thread::spawn(move || collect(&rx, u32::MAX / 1024));

    println!("\n-- baseline: {} s of traffic, no fault", PHASE.as_secs());
    thread::sleep(PHASE);
    let fault_start = seq.load(Ordering::Relaxed);

    println!("-- fault: faultline-agent inject loss on node-2 ingress\n");
    let mut agent = Command::new("ip")
        .args(["netns", "exec", &pair.b.name])
        .arg(agent_binary())
        .arg("--state-dir")
        .arg(pair.b.state_dir())
        .args(["inject", "loss", "--iface", IFACE])
        .args(["--percent", &PERCENT.to_string(), "--duration", FAULT])
        .args(["--proto", "udp", "--dport", &PORT.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .context("starting faultline-agent")?;
    let mut final_counts = None;
    for line in BufReader::new(agent.stdout.take().expect("stdout")).lines() {
        let line = line?;
        println!("   {line}");
        if line.trim_start().starts_with("ingress: seen") {
            final_counts = Some(line);
        }
    }
    let status = agent.wait()?;
    if !status.success() {
        bail!("faultline-agent failed: {status}");
    }
    let fault_end = seq.load(Ordering::Relaxed);

    println!(
        "\n-- recovery: {} s of traffic after removal",
        PHASE.as_secs()
    );
    thread::sleep(PHASE);
    stop.store(true, Ordering::Relaxed);
    stream.join().expect("sender");
    let total = seq.load(Ordering::Relaxed);
    let got = collector.join().expect("receiver");

    let phase = |from: u32, to: u32| {
        let sent = to - from;
        let received = (from..to)
            .filter(|&s| got.get(s as usize) == Some(&true))
            .count() as u32;
        (sent, sent - received)
    };
    println!("\n== summary ==");
    println!("{:<10} {:>8} {:>8} {:>8}", "phase", "sent", "lost", "loss");
    let mut rows = Vec::new();
    for (name, from, to) in [
        ("baseline", 0, fault_start),
        ("fault", fault_start, fault_end),
        ("recovery", fault_end, total),
    ] {
        let (sent, lost) = phase(from, to);
        println!(
            "{name:<10} {sent:>8} {lost:>8} {:>7.2}%",
            100.0 * f64::from(lost) / f64::from(sent.max(1))
        );
        rows.push((sent, lost));
    }
    if let Some(line) = final_counts {
        println!("kernel counters (node-2):{}", line.trim_start_matches(' '));
    }
    let (fault_sent, fault_lost) = rows[1];
    let expect = f64::from(fault_sent) * PERCENT / 100.0;
    let sigma = (expect * (1.0 - PERCENT / 100.0)).sqrt();
    println!(
        "model: {PERCENT}% of {fault_sent} = {expect:.0} ± {:.0} (3σ); measured {fault_lost}",
        3.0 * sigma
    );
    let clean = std::panic::catch_unwind(|| assert_nothing_attached(&pair)).is_ok();
    println!(
        "residue on node-2: {}",
        if clean {
            "none (no TCX program, no filter, no qdisc)"
        } else {
            "FOUND"
        }
    );
    if rows[0].1 != 0 || rows[2].1 != 0 || !clean {
        bail!("demo failed: loss outside the fault window, or residue");
    }
    println!("loss passed: loss only while the fault was armed, and nothing left behind");
    latency(&pair)?;
    println!("\ndemo passed");
    Ok(())
}

const ECHO_PORT: u16 = 9100;

/// 50 ms on node-2's egress for the echo replies only; RTT before, during, after.
fn latency(pair: &Pair) -> Result<()> {
    println!("\n== faultline demo: 50 ms latency on node-2's replies for {FAULT} ==");
    let _echo = EchoServer::start(&pair.b, ECHO_PORT);
    let to: SocketAddr = format!("{}:{ECHO_PORT}", pair.v4(2)).parse()?;
    let gap = Duration::from_millis(10);
    let base = median(&udp_rtts(&pair.a, to, 200, gap));
    println!("-- baseline: median UDP round trip {base:.3} ms");
    println!("-- fault: faultline-agent inject latency on node-2 egress\n");
    let mut agent = Command::new("ip")
        .args(["netns", "exec", &pair.b.name])
        .arg(agent_binary())
        .arg("--state-dir")
        .arg(pair.b.state_dir())
        .args([
            "inject",
            "latency",
            "--iface",
            IFACE,
            "--direction",
            "egress",
        ])
        .args(["--delay", "50ms", "--duration", FAULT])
        .args(["--proto", "udp", "--sport", &ECHO_PORT.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .context("starting faultline-agent")?;
    let stdout = agent.stdout.take().expect("stdout");
    let printer = thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("   {line}");
        }
    });
    thread::sleep(Duration::from_secs(2));
    let during = median(&udp_rtts(&pair.a, to, 100, gap));
    let status = agent.wait()?;
    printer.join().expect("printer");
    if !status.success() {
        bail!("faultline-agent failed: {status}");
    }
    let after = median(&udp_rtts(&pair.a, to, 200, gap));
    println!("\n== summary ==");
    println!(
        "median UDP round trip: baseline {base:.3} ms, fault {during:.3} ms (+{:.3}), recovery {after:.3} ms",
        during - base
    );
    let clean = std::panic::catch_unwind(|| assert_nothing_attached(pair)).is_ok();
    if (during - base - 50.0).abs() > 1.0 || after > base + 1.0 || !clean {
        bail!("latency demo failed: added delay not 50 ± 1 ms, no recovery, or residue");
    }
    println!("latency passed: +50 ms while armed, back to baseline after, nothing left behind");
    Ok(())
}
