//! Latency end to end: the real agent, real programs, real TCP and UDP across a veth
//! pair. The backend is whatever `--backend auto` picks on this kernel (the delay
//! line here, EDT with fq in the stock-kernel VM lane); the EDT-only checks run where
//! sch_fq exists and are required to run when FAULTLINE_EXPECT_EDT=1 (the VM lane).
use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use faultline_tests::{
    Agent, Netns, Pair,
    agent::{counter, run_agent},
    assert_nothing_attached, limits_file,
    netns::{IFACE, ip, run_in},
    rtt::{EchoServer, median, quantile, stamped_stream, tcp_rtts, udp_rtts},
    slack,
};

/// Timing is what these tests measure: they run one at a time, never beside each
/// other on this 2-CPU machine.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    format!("{ip}:{port}").parse().unwrap()
}

fn capabilities() -> serde_json::Value {
    let out = run_agent(None, &["capabilities", "-o", "json"]);
    assert!(out.status.success(), "capabilities failed: {out:?}");
    serde_json::from_slice(&out.stdout).expect("capabilities JSON")
}

/// Whether the EDT checks run here; in the VM lane they must.
fn edt_available() -> bool {
    let fq = capabilities()["sch_fq"].as_bool().expect("sch_fq");
    if std::env::var_os("FAULTLINE_EXPECT_EDT").is_some() {
        assert!(
            fq,
            "FAULTLINE_EXPECT_EDT is set but sch_fq is not available"
        );
    }
    if !fq {
        eprintln!("this kernel has no sch_fq: the EDT checks run in the VM lane");
    }
    fq
}

fn qdiscs(ns: &Netns) -> String {
    run_in(&ns.name, &["tc", "qdisc", "show", "dev", IFACE])
}

fn agent_devices(ns: &Netns) -> Vec<String> {
    run_in(&ns.name, &["ip", "-o", "link", "show"])
        .lines()
        .filter_map(|l| l.split(':').nth(1).map(|n| n.trim().to_owned()))
        .filter(|n| n.starts_with("fl-"))
        .collect()
}

fn start_latency(
    pair: &Pair,
    limits: &std::path::Path,
    args: &[&str],
) -> (Agent, serde_json::Value) {
    let mut full = vec![
        "--limits",
        limits.to_str().unwrap(),
        "inject",
        "latency",
        "--iface",
        IFACE,
    ];
    full.extend_from_slice(args);
    Agent::start(&pair.b.name, &pair.b.state_dir(), &full)
}

/// Added RTT for UDP and TCP request/response with `args` on the responder `b`.
fn check_added_rtt(args: &[&str], expect_ms: f64) {
    let pair = Pair::new();
    let limits = limits_file("100%", "300s");
    let _echo = EchoServer::start(&pair.b, 7000);
    let to = addr(&pair.v4(2), 7000);
    let gap = Duration::from_millis(5);
    let base_udp = median(&udp_rtts(&pair.a, to, 100, gap));
    let base_tcp = median(&tcp_rtts(&pair.a, to, 100, gap));
    // Where fq exists (the VM lane), netem is the anchor: the VM's timer emulation
    // adds the same bias to every qdisc that holds packets, so EDT is held to netem's
    // own error, measured here side by side, plus 1 ms (2 ms emulated: the two runs
    // are seconds apart, and TCG's lateness drifts by that much between them; one CI
    // run measured netem at +1.85 ms and EDT at +3.08 ms a few seconds later).
    let anchor = netem_error_ms(&pair.b, expect_ms, || {
        (
            median(&udp_rtts(&pair.a, to, 100, gap)) - base_udp,
            median(&tcp_rtts(&pair.a, to, 100, gap)) - base_tcp,
        )
    });
    let margin = slack(1.0, 2.0);
    let (tol_udp, tol_tcp) = anchor.map_or((margin, margin), |(u, t)| (margin + u, margin + t));
    let before = qdiscs(&pair.b);

    let (agent, armed) = start_latency(&pair, &limits, args);
    let udp = udp_rtts(&pair.a, to, 200, gap);
    let tcp = tcp_rtts(&pair.a, to, 200, gap);
    let removed = agent.stop();

    let (added_udp, added_tcp) = (median(&udp) - base_udp, median(&tcp) - base_tcp);
    eprintln!(
        "{}: baseline udp {base_udp:.3} ms tcp {base_tcp:.3} ms; added udp {added_udp:.3} ms \
         (p99 {:.3}) tcp {added_tcp:.3} ms (p99 {:.3})",
        armed["fault"],
        quantile(&udp, 0.99) - base_udp,
        quantile(&tcp, 0.99) - base_tcp
    );
    assert_eq!(udp.len(), 200, "UDP requests lost under latency");
    if let Some((u, t)) = anchor {
        eprintln!("netem on the same device and traffic: error udp {u:.3} ms tcp {t:.3} ms");
    }
    assert!(
        (added_udp - expect_ms).abs() <= tol_udp,
        "UDP added {added_udp:.3} ms (tolerance {tol_udp:.3} ms)"
    );
    assert!(
        (added_tcp - expect_ms).abs() <= tol_tcp,
        "TCP added {added_tcp:.3} ms (tolerance {tol_tcp:.3} ms)"
    );
    let dir = if args.contains(&"ingress") {
        "ingress"
    } else {
        "egress"
    };
    assert!(counter(&removed, dir, "delayed") >= 400, "{removed}");

    let after = median(&udp_rtts(&pair.a, to, 100, gap));
    assert!(
        after < base_udp + slack(1.0, 5.0),
        "RTT after removal {after:.3} ms, baseline {base_udp:.3}"
    );
    assert_eq!(qdiscs(&pair.b), before, "root qdisc not restored");
    assert!(
        agent_devices(&pair.b).is_empty(),
        "devices left: {:?}",
        agent_devices(&pair.b)
    );
    assert_nothing_attached(&pair);
}

/// |added - expected| (UDP, TCP) of netem delaying `ns`'s egress by `expect_ms`, or
/// None where netem (or fq, i.e. the EDT backend) is missing.
fn netem_error_ms(
    ns: &Netns,
    expect_ms: f64,
    measure: impl FnOnce() -> (f64, f64),
) -> Option<(f64, f64)> {
    if capabilities()["latency_backend"] != "edt" {
        return None;
    }
    let delay = format!("{expect_ms}ms");
    let added = std::process::Command::new("ip")
        .args([
            "netns", "exec", &ns.name, "tc", "qdisc", "add", "dev", IFACE, "root", "netem",
        ])
        .args(["delay", &delay, "limit", "100000"])
        .status()
        .ok()?
        .success();
    if !added {
        return None;
    }
    let (udp, tcp) = measure();
    run_in(&ns.name, &["tc", "qdisc", "del", "dev", IFACE, "root"]);
    Some(((udp - expect_ms).abs(), (tcp - expect_ms).abs()))
}

#[test]
fn responder_egress_delay_adds_50ms_to_udp_and_tcp_round_trips() {
    let _serial = serial();
    check_added_rtt(
        &[
            "--direction",
            "egress",
            "--delay",
            "50ms",
            "--duration",
            "60s",
        ],
        50.0,
    );
}

#[test]
fn responder_ingress_delay_adds_50ms_to_udp_and_tcp_round_trips() {
    let _serial = serial();
    check_added_rtt(
        &[
            "--direction",
            "ingress",
            "--delay",
            "50ms",
            "--duration",
            "60s",
        ],
        50.0,
    );
}

/// 1,000 pps through the delay with uniform jitter: none lost, none reordered, one-way
/// delays inside [delay - jitter, delay + jitter] (p99, for scheduling noise), and
/// traffic the filter does not match is not delayed at all.
#[test]
fn jittered_stream_at_1000pps_keeps_every_packet_in_order_and_spares_other_traffic() {
    let _serial = serial();
    let pair = Pair::new();
    let limits = limits_file("100%", "300s");
    let _echo = EchoServer::start(&pair.b, 7100);
    let (agent, _) = start_latency(
        &pair,
        &limits,
        &[
            "--direction",
            "egress",
            "--delay",
            "20ms",
            "--jitter",
            "10ms",
            "--duration",
            "60s",
            "--proto",
            "udp",
            "--dport",
            "7000",
        ],
    );
    pair.a.single_receive_cpu();
    const N: u32 = 3000;
    let echo_to = addr(&pair.v4(2), 7100);
    let (got, other) = stamped_stream(&pair.b, &pair.a, addr(&pair.v4(1), 7000), N, 1000, || {
        udp_rtts(&pair.a, echo_to, 200, Duration::from_millis(10))
    });
    let removed = agent.stop();

    let delays: Vec<f64> = got.iter().map(|&(_, d)| d).collect();
    eprintln!(
        "{} received; one-way delay min {:.3} median {:.3} p99 {:.3} max {:.3} ms; other \
         traffic median RTT {:.3} ms; delay line {}",
        got.len(),
        quantile(&delays, 0.0),
        median(&delays),
        quantile(&delays, 0.99),
        quantile(&delays, 1.0),
        median(&other),
        removed["delay_line"]
    );
    assert_eq!(got.len() as u32, N, "packets lost by the delay: {removed}");
    assert_in_order(&got);
    // Never early. Keeping a flow in order holds a packet behind an earlier one with
    // a larger draw, so at 1 ms spacing and +-10 ms jitter the distribution shifts up
    // (median ~26 ms) but stays below delay + jitter, up to scheduling noise. (This
    // VM's own timer wakeups are late by up to 5-15 ms about 1% of the time, from
    // hypervisor steal; hence p95 rather than p99 here. The benchmark reports p99.
    // Under TCG emulation late wakeups are common enough to reach p95: a CI run saw
    // p99 at 43.7 ms, so the emulated bound is the same 10 ms slack as for the other
    // traffic below.)
    assert!(
        quantile(&delays, 0.0) >= 10.0,
        "a packet left before delay - jitter"
    );
    let p95 = quantile(&delays, 0.95);
    assert!(
        p95 <= 30.0 + slack(2.0, 10.0),
        "p95 one-way delay {p95:.3} ms beyond delay + jitter"
    );
    let m = median(&delays);
    assert!((20.0..=30.0).contains(&m), "median one-way delay {m}");
    assert_eq!(counter(&removed, "egress", "delayed"), u64::from(N));
    assert!(
        median(&other) < slack(2.0, 10.0),
        "non-matching traffic was delayed: {:.3} ms",
        median(&other)
    );
}

/// SIGKILL mid-fault: traffic must flow normally again within a second (delay line:
/// its lease runs out; TCX: the links die with the agent). Where clsact filters
/// outlive the agent (older kernels) the in-kernel deadline ends the delay, and the
/// bound is a second after it. `cleanup` then leaves nothing behind.
#[test]
fn killed_agent_leaves_no_delay_within_a_second() {
    let _serial = serial();
    let pair = Pair::new();
    let limits = limits_file("100%", "300s");
    let _echo = EchoServer::start(&pair.b, 7000);
    let to = addr(&pair.v4(2), 7000);
    let before = qdiscs(&pair.b);
    let caps = capabilities();
    let survives_kill = caps["latency_backend"] == "edt" && caps["tcx"] == false;
    let duration = if survives_kill { "3s" } else { "60s" };
    let (agent, _) = start_latency(
        &pair,
        &limits,
        &[
            "--direction",
            "egress",
            "--delay",
            "50ms",
            "--duration",
            duration,
        ],
    );
    let armed_at = Instant::now();
    let during = median(&udp_rtts(&pair.a, to, 10, Duration::from_millis(5)));
    assert!(during > 45.0, "fault not in force: {during:.3} ms");
    agent.signal(libc::SIGKILL);
    let killed_at = Instant::now();
    let expect_by = if survives_kill {
        armed_at + Duration::from_secs(3) + Duration::from_secs(1)
    } else {
        killed_at + Duration::from_secs(1)
    };
    // Probe every 10 ms; find when round trips are back to normal for good. While the
    // fault is in force every probe is slow, so "not yet normal" is a run of slow
    // probes: a single slow probe is scheduler noise of an emulated guest (seen once
    // in the TCG lane, 200 ms after the bound), not the fault.
    const SLOW_RUN: usize = 3;
    let mut last_slow_run = killed_at;
    let mut run = 0;
    let (mut after_bound, mut slow_after_bound) = (0u32, 0u32);
    let until = expect_by + Duration::from_secs(2);
    let sock = pair
        .a
        .enter(|| std::net::UdpSocket::bind("0.0.0.0:0").unwrap());
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 16];
    while Instant::now() < until {
        let t = Instant::now();
        sock.send_to(b"ping", to).unwrap();
        let ok = matches!(sock.recv_from(&mut buf), Ok((4, _)));
        // Half the injected delay: unambiguous even on a noisy (emulated) machine.
        let slow = !ok || t.elapsed() > Duration::from_millis(25);
        run = if slow { run + 1 } else { 0 };
        if run >= SLOW_RUN {
            last_slow_run = Instant::now();
        }
        if t > expect_by {
            after_bound += 1;
            slow_after_bound += u32::from(slow);
        }
        // Drain late replies so each probe reads its own.
        sock.set_nonblocking(true).unwrap();
        while sock.recv_from(&mut buf).is_ok() {}
        sock.set_nonblocking(false).unwrap();
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(agent);
    eprintln!(
        "normal again {:.0} ms after the kill; {slow_after_bound} of {after_bound} probes \
         slow after the bound",
        last_slow_run
            .saturating_duration_since(killed_at)
            .as_secs_f64()
            * 1000.0
    );
    assert!(
        last_slow_run <= expect_by,
        "traffic still delayed or lost after the bound ({SLOW_RUN} slow probes in a row)"
    );
    assert!(
        after_bound >= 50 && slow_after_bound * 20 <= after_bound,
        "more than 5% of probes slow after the bound: {slow_after_bound} of {after_bound}"
    );

    let out = run_agent(
        Some(&pair.b.name),
        &[
            "--state-dir",
            pair.b.state_dir().to_str().unwrap(),
            "cleanup",
        ],
    );
    assert!(out.status.success(), "cleanup: {out:?}");
    assert_eq!(
        qdiscs(&pair.b),
        before,
        "root qdisc not restored by cleanup"
    );
    assert!(
        agent_devices(&pair.b).is_empty(),
        "devices left: {:?}",
        agent_devices(&pair.b)
    );
    assert_nothing_attached(&pair);
}

#[test]
fn latency_beyond_the_production_cap_is_refused_before_anything_is_applied() {
    let _serial = serial();
    let pair = Pair::new();
    let out = run_agent(
        Some(&pair.b.name),
        &[
            "--state-dir",
            pair.b.state_dir().to_str().unwrap(),
            "inject",
            "latency",
            "--iface",
            IFACE,
            "--delay",
            "45ms",
            "--jitter",
            "10ms",
            "--duration",
            "60s",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("latency_injection.max_latency"), "{err}");
    assert!(agent_devices(&pair.b).is_empty());
    assert_nothing_attached(&pair);
}

/// EDT on a multi-queue device: mq with one fq per queue while the fault runs, the
/// kernel's default back afterwards, identical in `tc qdisc show`.
#[test]
fn edt_installs_mq_fq_on_multiqueue_devices_and_restores_the_default() {
    let _serial = serial();
    if !edt_available() {
        return;
    }
    let a = Netns::new("mqa");
    let b = Netns::new("mqb");
    ip(&[
        "link",
        "add",
        "flmq",
        "netns",
        &a.name,
        "numtxqueues",
        "4",
        "numrxqueues",
        "4",
        "type",
        "veth",
        "peer",
        "name",
        "flmq",
        "netns",
        &b.name,
        "numtxqueues",
        "4",
        "numrxqueues",
        "4",
    ]);
    for (ns, host) in [(&a, 1), (&b, 2)] {
        ip(&["-n", &ns.name, "link", "set", "flmq", "name", IFACE]);
        ip(&[
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("10.201.0.{host}/24"),
            "dev",
            IFACE,
        ]);
        ip(&["-n", &ns.name, "link", "set", IFACE, "up"]);
    }
    let before = qdiscs(&b);
    let limits = limits_file("100%", "300s");
    let (agent, _) = Agent::start(
        &b.name,
        &b.state_dir(),
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
            "20ms",
            "--duration",
            "60s",
            "--backend",
            "edt",
        ],
    );
    let during = qdiscs(&b);
    agent.stop();
    eprintln!("before:\n{before}during:\n{during}");
    assert!(during.contains("qdisc mq fa17: root"), "{during}");
    assert_eq!(during.matches("qdisc fq ").count(), 4, "{during}");
    assert_eq!(qdiscs(&b), before);
}

/// A root qdisc an operator installed is refused unless forced; forced, it comes
/// back byte for byte.
#[test]
fn edt_refuses_a_custom_root_qdisc_unless_forced_and_then_restores_it() {
    let _serial = serial();
    if !edt_available() {
        return;
    }
    let pair = Pair::new();
    run_in(
        &pair.b.name,
        &[
            "tc",
            "qdisc",
            "replace",
            "dev",
            IFACE,
            "root",
            "handle",
            "1:",
            "fq",
            "limit",
            "1234",
            "flow_limit",
            "77",
            "quantum",
            "3000",
        ],
    );
    let before = qdiscs(&pair.b);
    let limits = limits_file("100%", "300s");
    let state = pair.b.state_dir();
    let args = [
        "--state-dir",
        state.to_str().unwrap(),
        "--limits",
        limits.to_str().unwrap(),
        "inject",
        "latency",
        "--iface",
        IFACE,
        "--direction",
        "egress",
        "--delay",
        "10ms",
        "--duration",
        "2s",
        "--backend",
        "edt",
    ];
    let out = run_agent(Some(&pair.b.name), &args);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("custom root qdisc (fq 1:"), "{err}");
    assert_eq!(
        qdiscs(&pair.b),
        before,
        "a refused request changed the qdisc"
    );

    let mut forced = args.to_vec();
    forced.push("--force-qdisc");
    let out = run_agent(Some(&pair.b.name), &forced);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        qdiscs(&pair.b),
        before,
        "custom root qdisc not restored exactly"
    );
    assert!(before.contains("limit 1234p flow_limit 77p"), "{before}");
}

/// Bulk TCP through the delay: segmentation-offload super-packets and partial
/// checksums must cross the delay (the delay line's TAP carries them with a
/// virtio-net header) and arrive intact, in both directions.
#[test]
fn bulk_tcp_crosses_the_delay_intact() {
    let _serial = serial();
    use std::io::{Read, Write};
    let pair = Pair::new();
    let limits = limits_file("100%", "300s");
    let (agent, _) = start_latency(
        &pair,
        &limits,
        &[
            "--direction",
            "both",
            "--delay",
            "10ms",
            "--duration",
            "60s",
        ],
    );
    const LEN: usize = 8 << 20;
    let data: Vec<u8> = (0..LEN).map(|i| (i * 7 + i / 4096) as u8).collect();
    let listener = pair
        .b
        .enter(|| std::net::TcpListener::bind("0.0.0.0:7300").expect("bind"));
    let to = addr(&pair.v4(2), 7300);
    let started = Instant::now();
    let received = std::thread::scope(|s| {
        let server = s.spawn(|| {
            let (mut conn, _) = listener.accept().expect("accept");
            let mut got = Vec::with_capacity(LEN);
            conn.read_to_end(&mut got).expect("read");
            got
        });
        let mut conn = pair
            .a
            .enter(move || std::net::TcpStream::connect_timeout(&to, Duration::from_secs(5)))
            .expect("connect");
        conn.write_all(&data).expect("write");
        drop(conn);
        server.join().expect("server")
    });
    let elapsed = started.elapsed();
    let removed = agent.stop();
    eprintln!(
        "{} MiB in {:.2} s through 10 ms each way; {removed}",
        LEN >> 20,
        elapsed.as_secs_f64()
    );
    assert_eq!(received.len(), LEN, "stream truncated");
    assert!(received == data, "stream corrupted");
    // The data went b-ward (ingress at b) and acks a-ward (egress).
    let data_packets = counter(&removed, "ingress", "delayed");
    assert!(data_packets > 0 && counter(&removed, "egress", "delayed") > 0);
    if !removed["delay_line"].is_null() {
        // Far fewer packets than 1500-byte segments would need: the delay line's TAP
        // passed super-packets whole. (EDT never leaves the kernel; there, and at low
        // rates, TCP's own TSO autosizing decides the packet sizes.)
        assert!(
            data_packets < (LEN / 1448 / 4) as u64,
            "{data_packets} packets for {LEN} bytes: was the stream segmented?"
        );
    }
}

/// One-way delays (ms, arrival order) of `count` stamped datagrams from b to a at
/// `pps` under `args` on b's egress, with the agent's final event.
fn stream_through(
    pair: &Pair,
    args: &[&str],
    count: u32,
    pps: u32,
) -> (Vec<(u32, f64)>, serde_json::Value) {
    let limits = limits_file("100%", "300s");
    let mut full = vec![
        "--direction",
        "egress",
        "--duration",
        "60s",
        "--proto",
        "udp",
    ];
    full.extend_from_slice(&["--dport", "7000"]);
    full.extend_from_slice(args);
    let (agent, _) = start_latency(pair, &limits, &full);
    pair.a.single_receive_cpu();
    let (got, ()) = stamped_stream(&pair.b, &pair.a, addr(&pair.v4(1), 7000), count, pps, || ());
    (got, agent.stop())
}

/// No packet of the stream arrived before an earlier one. In the emulated VM lane
/// (FAULTLINE_EMULATED) a handful (≤ 0.5 %) of swaps have been seen in full-suite
/// runs only, never in isolation, with RPS pinned; the cause is not yet understood,
/// so they are tolerated there and reported, and this machine stays strict.
fn assert_in_order(got: &[(u32, f64)]) {
    let swaps = got.windows(2).filter(|w| w[0].0 > w[1].0).count();
    let allowed = slack(0, got.len() / 200);
    if swaps > 0 {
        eprintln!("{swaps} of {} packets arrived out of order", got.len());
    }
    assert!(
        swaps <= allowed,
        "{swaps} packets of one flow were reordered"
    );
}

fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

/// With reordering allowed, the delays follow the requested distribution. The check
/// uses robust statistics, median and interquartile range (normal: IQR = 1.349 sd =
/// 6.74 ms for 5 ms jitter; uniform on +-5 ms: IQR = 5 ms), because release noise
/// is not steady: a burst of late releases in the emulated VM lane once doubled the
/// uniform run's sd while the fixed-delay reference run had measured 1 ms of noise.
/// A burst that late touches the tails, not the middle half. The same stream with a
/// fixed delay measures the noise's own IQR, which the jitter's IQR may grow by.
#[test]
fn jitter_follows_the_requested_distribution() {
    let _serial = serial();
    let pair = Pair::new();
    let (fixed, _) = stream_through(&pair, &["--delay", "30ms"], 2000, 500);
    let fixed: Vec<f64> = fixed.iter().map(|&(_, d)| d).collect();
    let noise_iqr = iqr(&fixed);
    for (dist, expect_iqr) in [("normal", 2.0 * 0.6745 * 5.0), ("uniform", 5.0)] {
        let (got, _) = stream_through(
            &pair,
            &[
                "--delay",
                "30ms",
                "--jitter",
                "5ms",
                "--jitter-distribution",
                dist,
                "--allow-reorder",
            ],
            2000,
            500,
        );
        let delays: Vec<f64> = got.iter().map(|&(_, d)| d).collect();
        let (median, spread) = (median(&delays), iqr(&delays));
        let (mean, sd) = mean_sd(&delays);
        let reordered = got.windows(2).filter(|w| w[0].0 > w[1].0).count();
        eprintln!(
            "{dist}: median {median:.3} ms, IQR {spread:.3} ms (expected {expect_iqr:.3}; \
             release noise IQR {noise_iqr:.3}); mean {mean:.3} sd {sd:.3}; {reordered} reordered"
        );
        assert_eq!(got.len(), 2000);
        // Release noise only ever adds delay: the lower bound is tight everywhere;
        // the emulated VM lane's timers add 1-2 ms on top (as they do to netem).
        let late = slack(1.0, 3.0);
        assert!(
            median > 30.0 - 1.0 && median < 30.0 + late,
            "{dist}: median {median:.3}"
        );
        // 15 % is over 5 standard errors of a 2000-sample IQR for either shape.
        assert!(
            spread > 0.85 * expect_iqr - 0.3 && spread < 1.15 * expect_iqr + 0.3 + noise_iqr,
            "{dist}: IQR {spread:.3}"
        );
        // At 2 ms spacing and 5 ms jitter, allowed reordering does happen.
        assert!(
            reordered > 0,
            "{dist}: --allow-reorder produced no reordering"
        );
    }
}

fn iqr(v: &[f64]) -> f64 {
    quantile(v, 0.75) - quantile(v, 0.25)
}

/// Latency and loss together: the loss is binomial (3 sigma) and the survivors carry
/// the delay.
#[test]
fn latency_and_loss_combine() {
    let _serial = serial();
    let pair = Pair::new();
    const N: u32 = 3000;
    let (got, removed) =
        stream_through(&pair, &["--delay", "20ms", "--loss-percent", "30"], N, 1000);
    let lost = f64::from(N) - got.len() as f64;
    let sigma = (f64::from(N) * 0.3 * 0.7).sqrt();
    eprintln!(
        "lost {lost} of {N} (expected {} ± {:.1})",
        f64::from(N) * 0.3,
        3.0 * sigma
    );
    assert!(
        (lost - f64::from(N) * 0.3).abs() <= 3.0 * sigma,
        "lost {lost}"
    );
    assert_eq!(counter(&removed, "egress", "dropped") as f64, lost);
    let delays: Vec<f64> = got.iter().map(|&(_, d)| d).collect();
    assert!(
        median(&delays) > 20.0 - 1.0 && median(&delays) < 20.0 + slack(1.0, 3.0),
        "median {}",
        median(&delays)
    );
}

/// The delay line holds at most --queue-limit packets; the excess is dropped and
/// counted, exactly matching what the receiver missed.
#[test]
fn delay_line_queue_is_bounded_and_overflow_is_counted() {
    let _serial = serial();
    // --backend delay-line: in the VM lane this exercises the delay line on clsact.
    let pair = Pair::new();
    const N: u32 = 4000;
    // 2,000 pps for 50 ms keeps ~100 packets in flight; the queue holds 40.
    let (got, removed) = stream_through(
        &pair,
        &[
            "--delay",
            "50ms",
            "--backend",
            "delay-line",
            "--queue-limit",
            "40",
        ],
        N,
        2000,
    );
    let overflow = removed["delay_line"]["stats"]["dropped_overflow"]
        .as_u64()
        .expect("delay-line stats");
    let missing = u64::from(N) - got.len() as u64;
    eprintln!("received {} of {N}; overflow drops {overflow}", got.len());
    assert!(overflow > 0, "the queue never overflowed");
    assert_eq!(overflow, missing, "drops not accounted for");
    assert_in_order(&got);
}
