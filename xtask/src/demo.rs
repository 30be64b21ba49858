//! The main job: faultline as a fleet system on a sandbox of network-namespace nodes.
//!
//! A coordinator (its own namespace, embedded store, production limits) and three
//! nodes, node-1..node-3, each running `faultline-agent run` over mTLS. Through the
//! `faultline` CLI, as a CI pipeline would:
//! 1. latency: 50 ms on node-2's replies (the reference report's first scenario), with
//!    round trips measured before, during and after, and live metrics streamed;
//! 2. loss: 1 % of a UDP stream to node-2, with kernel counters streamed live and the
//!    receiver's count compared with the model;
//! 3. a second request refused while a lease is held, then `POST /abort` on the
//!    running experiment, with how long removal took;
//! 4. cleanup: no namespace, process, filter, qdisc or cgroup left.
use std::{
    net::SocketAddr,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use faultline_tests::{
    checks::faultline_leftovers,
    fleet::{Fleet, NODE_IFACE, Role},
    rtt::{EchoServer, median, udp_rtts},
    traffic::{collect, receiver, sender},
};

const ECHO_PORT: u16 = 9100;
const STREAM_PORT: u16 = 9000;
const PPS: u32 = 2000;

fn show(cmd: &str) {
    println!("\n$ {cmd}");
}

/// Runs `faultline <line>` with its output on the terminal; returns its exit code.
fn cli_live(fleet: &Fleet, role: Role, line: &str) -> Result<i32> {
    show(&format!("faultline {line}"));
    let status = fleet
        .cli_command(role, &line.split_whitespace().collect::<Vec<_>>())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .status()
        .context("run faultline")?;
    Ok(status.code().unwrap_or(-1))
}

pub fn run() -> Result<()> {
    println!("== faultline demo: a coordinator and three nodes in network namespaces ==");
    let started = Instant::now();
    let fleet = Fleet::new(3, &[], &[]);
    println!(
        "coordinator: netns {} (gRPC :7443 mTLS for agents, bearer tokens for clients; HTTP :7080)",
        fleet.ctl.name
    );
    for n in &fleet.nodes {
        println!(
            "{}: netns {} ({} on {NODE_IFACE})",
            n.name, n.ns.name, n.addr
        );
    }
    cli_live(&fleet, Role::Viewer, "nodes")?;

    latency(&fleet)?;
    loss(&fleet)?;
    refusal_and_abort(&fleet)?;

    cli_live(&fleet, Role::Viewer, "experiments")?;
    let nodes: Vec<_> = fleet.nodes.iter().map(|n| n.ns.name.clone()).collect();
    let dir = fleet.dir.to_path_buf();
    let mut residue = Vec::new();
    for n in &fleet.nodes {
        residue.extend(faultline_leftovers(&n.ns, NODE_IFACE));
    }
    drop(fleet);
    residue.extend(remaining(&nodes, &dir));
    println!("\n== cleanup ==");
    if !residue.is_empty() {
        bail!("residue after the demo: {residue:?}");
    }
    println!(
        "nothing left: no namespace, no faultline process, no program, filter, qdisc or cgroup"
    );
    println!("\ndemo passed in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// What survives the fleet: namespaces, processes, cgroups, files.
fn remaining(namespaces: &[String], dir: &std::path::Path) -> Vec<String> {
    let mut left = Vec::new();
    let list = Command::new("ip").args(["netns", "list"]).output();
    let list = list
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    left.extend(
        namespaces
            .iter()
            .filter(|n| list.contains(n.as_str()))
            .map(|n| format!("netns {n}")),
    );
    let ps = Command::new("pgrep")
        .args(["-f", &dir.display().to_string()])
        .output();
    if let Ok(o) = ps
        && !o.stdout.is_empty()
    {
        left.push(format!(
            "processes: {}",
            String::from_utf8_lossy(&o.stdout).trim()
        ));
    }
    for root in [
        "/sys/fs/cgroup",
        "/sys/fs/cgroup/cpu",
        "/sys/fs/cgroup/memory",
    ] {
        if let Ok(entries) = std::fs::read_dir(format!("{root}/faultline")) {
            let groups: Vec<String> = entries
                .flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| e.path().display().to_string())
                .collect();
            left.extend(groups);
        }
    }
    if dir.exists() {
        left.push(format!("directory {}", dir.display()));
    }
    left
}

/// 50 ms on node-2's egress, for the echo replies only.
fn latency(fleet: &Fleet) -> Result<()> {
    println!("\n== 1. latency: 50 ms on node-2's replies (production cap) ==");
    let node = &fleet.nodes[1];
    let _echo = EchoServer::start(&node.ns, ECHO_PORT);
    let to: SocketAddr = format!("{}:{ECHO_PORT}", node.addr).parse()?;
    let gap = Duration::from_millis(10);
    let base = median(&udp_rtts(&fleet.ctl, to, 200, gap));
    println!("baseline: median UDP round trip coordinator -> node-2 {base:.3} ms");
    let line = format!(
        "run --name latency-daily --node node-2 --fault latency --iface {NODE_IFACE} \
         --direction egress --delay 50ms --duration 8s --proto udp --sport {ECHO_PORT} \
         --baseline 2s --recovery 10s --wait"
    );
    let (code, during) = thread::scope(|scope| {
        let probe = scope.spawn(|| {
            // Probe from inside the fault window (the baseline is 2 s, the fault 8 s).
            thread::sleep(Duration::from_secs(5));
            median(&udp_rtts(&fleet.ctl, to, 100, gap))
        });
        let code = cli_live(fleet, Role::Operator, &line);
        (code, probe.join().expect("probe"))
    });
    let code = code?;
    let after = median(&udp_rtts(&fleet.ctl, to, 200, gap));
    println!(
        "median UDP round trip: baseline {base:.3} ms, fault {during:.3} ms (+{:.3}), after {after:.3} ms",
        during - base
    );
    if code != 0 || (during - base - 50.0).abs() > 2.0 || after > base + 1.0 {
        bail!("latency experiment failed: exit {code}, or added delay not 50 ms, or no recovery");
    }
    Ok(())
}

/// A sleep-paced UDP stream from the coordinator's namespace to a node, and the
/// receiver recording which sequence numbers arrived.
struct Stream {
    stop: Arc<AtomicBool>,
    seq: Arc<AtomicU32>,
    sender: thread::JoinHandle<()>,
    collector: thread::JoinHandle<Vec<bool>>,
}

impl Stream {
    /// Stops sending; returns how many were sent and which of them arrived.
    fn finish(self) -> (u32, Vec<bool>) {
        self.stop.store(true, Ordering::Relaxed);
        self.sender.join().expect("sender");
        let total = self.seq.load(Ordering::Relaxed);
        (total, self.collector.join().expect("receiver"))
    }
}

fn stream(fleet: &Fleet, node: usize) -> Result<Stream> {
    let to: SocketAddr = format!("{}:{STREAM_PORT}", fleet.nodes[node].addr).parse()?;
    let rx = receiver(
        &fleet.nodes[node].ns,
        format!("0.0.0.0:{STREAM_PORT}").parse()?,
    );
    let tx = sender(&fleet.ctl, "0.0.0.0:0".parse()?);
    let seq = Arc::new(AtomicU32::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
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
    Ok(Stream {
        stop,
        seq,
        sender,
        collector,
    })
}

fn loss(fleet: &Fleet) -> Result<()> {
    println!("\n== 2. packet loss: 1 % of a UDP stream to node-2 (production cap) ==");
    let s = stream(fleet, 1)?;
    let before = s.seq.load(Ordering::Relaxed);
    let code = cli_live(
        fleet,
        Role::Operator,
        &format!(
            "run --name loss-daily --node node-2 --fault loss --iface {NODE_IFACE} --percent 1 \
             --duration 10s --proto udp --dport {STREAM_PORT} --baseline 2s --recovery 10s \
             --wait"
        ),
    )?;
    thread::sleep(Duration::from_secs(1));
    let (total, got) = s.finish();
    let lost = (before..total)
        .filter(|&i| got.get(i as usize) != Some(&true))
        .count();
    let sent = (total - before) as usize;
    // What the kernel counted, from the experiment's stored result.
    let out = fleet.cli(Role::Viewer, &["experiments", "--limit", "1", "-o", "json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let result = list[0]["result"].as_str().unwrap_or_default().to_owned();
    let counter = |key: &str| -> u64 {
        result
            .split(key)
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let (matched, dropped) = (counter("matched "), counter("dropped "));
    let expect = matched as f64 / 100.0;
    println!(
        "kernel: {dropped} of {matched} matched packets dropped; model: 1 % = {expect:.0} ± {:.0} \
         (3σ); receiver: {lost} of {sent} lost over the whole run (baseline and recovery \
         included)",
        3.0 * (expect * 0.99).sqrt()
    );
    // The stored counters are the last 10 Hz sample before removal, so the receiver
    // may see a drop or two more than they show, never fewer.
    let sigma3 = 3.0 * (expect * 0.99).sqrt();
    if (lost as u64) < dropped || (lost as f64 - expect).abs() > sigma3 + 3.0 {
        bail!("loss outside the fault, or not binomial around 1 %");
    }
    if code != 0 {
        bail!("loss experiment failed: exit {code}");
    }
    Ok(())
}

fn refusal_and_abort(fleet: &Fleet) -> Result<()> {
    println!("\n== 3. the lease refuses a second experiment; POST /abort ends the first ==");
    let s = stream(fleet, 0)?;
    let line = format!(
        "run --name loss-long --node node-1 --fault loss --iface {NODE_IFACE} --percent 1 \
         --duration 60s --proto udp --dport {STREAM_PORT} --baseline 1s --wait"
    );
    show(&format!("faultline {line} &"));
    let mut first = fleet
        .cli_command(Role::Operator, &line.split_whitespace().collect::<Vec<_>>())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()?;
    thread::sleep(Duration::from_secs(4));
    let second = cli_live(
        fleet,
        Role::Operator,
        "run --node node-3 --fault cpu --percent 10 --duration 30s",
    )?;
    println!("(exit code {second}: rejected)");
    show(
        "curl -X POST -H 'Authorization: Bearer $TOKEN' 'http://127.0.0.1:7080/abort?reason=demo'",
    );
    let (status, body) = fleet.http(Some(Role::Operator), "POST", "/abort?reason=demo");
    println!("HTTP {status} {body}");
    let code = first.wait()?.code().unwrap_or(-1);
    s.finish();
    println!(
        "all effects removed and confirmed by the agent {:.1} ms after POST /abort; the \
         experiment's CLI exited {code} (aborted)",
        body["took_ms"].as_f64().unwrap_or(f64::NAN)
    );
    cli_live(fleet, Role::Viewer, "status")?;
    if second != 3 || status != 200 || code != 4 {
        bail!("expected refusal (3), HTTP 200 and an aborted run (4)");
    }
    cli_live(fleet, Role::Admin, "clear-kill-switch")?;
    Ok(())
}
