//! Packet loss end to end: the real agent loads the real programs into this kernel,
//! and real UDP datagrams cross a veth pair between two network namespaces. Loss is
//! applied on the receiver's ingress and counted at the receiving socket (dropping
//! on a sender's own egress makes sendto() fail with ENOBUFS and hides the loss).
use std::{net::SocketAddr, time::Duration};

use faultline_tests::{
    Agent, Pair,
    agent::counter,
    assert_nothing_attached, limits_file,
    netns::{IFACE, run_in},
    traffic::{collect, loss_bursts, receiver, send, sender},
};

fn addr(ip: &str, port: u16) -> SocketAddr {
    if ip.contains(':') {
        format!("[{ip}]:{port}").parse().unwrap()
    } else {
        format!("{ip}:{port}").parse().unwrap()
    }
}

fn program_ids(armed: &serde_json::Value) -> Vec<u32> {
    armed["program_ids"]
        .as_array()
        .expect("program_ids")
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

/// True while any of `ids` is still loaded in the kernel.
fn any_loaded(ids: &[u32]) -> bool {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .any(|p| ids.contains(&p.id()))
}

fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let until = std::time::Instant::now() + timeout;
    while !ok() {
        assert!(std::time::Instant::now() < until, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The lock files in an agent's state directory (one per network namespace it
/// manages while it runs).
fn lock_files(state: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(state)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".lock"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn bernoulli_loss_is_binomial_and_counters_match_the_receiver() {
    let pair = Pair::new();
    let limits = limits_file("100%", "300s");
    let (agent, _) = Agent::start(
        &pair.b.name,
        &pair.b.state_dir(),
        &[
            "--limits",
            limits.to_str().unwrap(),
            "inject",
            "loss",
            "--iface",
            IFACE,
            "--direction",
            "ingress",
            "--percent",
            "30",
            "--duration",
            "60s",
            "--proto",
            "udp",
            "--port",
            "7000",
        ],
    );
    const N: u32 = 6000;
    let rx = receiver(&pair.b, addr("0.0.0.0", 7000));
    let tx = sender(&pair.a, addr("0.0.0.0", 0));
    send(&tx, addr(&pair.v4(2), 7000), N, 20_000);
    let got = collect(&rx, N);
    let removed = agent.stop();

    let received = got.iter().filter(|&&r| r).count() as u64;
    let lost = u64::from(N) - received;
    let (n, p) = (f64::from(N), 0.30);
    let sigma = (n * p * (1.0 - p)).sqrt();
    assert!(
        (lost as f64 - n * p).abs() <= 3.0 * sigma,
        "lost {lost} of {N}: outside {:.0} ± {:.0} (3σ)",
        n * p,
        3.0 * sigma
    );
    // The kernel's counters and the receiver agree exactly.
    assert_eq!(counter(&removed, "ingress", "matched"), u64::from(N));
    assert_eq!(counter(&removed, "ingress", "dropped"), lost);
    assert_eq!(
        counter(&removed, "ingress", "dropped") + received,
        u64::from(N)
    );
    assert!(counter(&removed, "ingress", "seen") >= u64::from(N));
    assert_nothing_attached(&pair);
    // Nothing of the run stays in the state directory either.
    assert_eq!(lock_files(&pair.b.state_dir()), Vec::<String>::new());
}

#[test]
fn filter_spares_other_ports_families_and_addresses() {
    let pair = Pair::new();
    let limits = limits_file("100%", "300s");
    let dst = format!("{}/32", pair.v4(2));
    let (agent, _) = Agent::start(
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
            "50",
            "--duration",
            "60s",
            "--proto",
            "udp",
            "--dst",
            &dst,
            "--dport",
            "7000",
        ],
    );
    let matching = receiver(&pair.b, addr("0.0.0.0", 7000));
    let other_port = receiver(&pair.b, addr("0.0.0.0", 7001));
    let v6 = receiver(&pair.b, addr("::", 7002));
    let tx4 = sender(&pair.a, addr("0.0.0.0", 0));
    let tx6 = sender(&pair.a, addr("::", 0));
    send(&tx4, addr(&pair.v4(2), 7000), 2000, 20_000);
    send(&tx4, addr(&pair.v4(2), 7001), 1000, 20_000);
    // Same destination port as the filter, but IPv6: the v4 CIDR must not match it.
    send(&tx6, addr(&pair.v6(2), 7002), 1000, 20_000);

    let got_matching = collect(&matching, 2000).iter().filter(|&&r| r).count();
    let got_other = collect(&other_port, 1000).iter().filter(|&&r| r).count();
    let got_v6 = collect(&v6, 1000).iter().filter(|&&r| r).count();
    let removed = agent.stop();

    assert_eq!(got_other, 1000, "non-matching port lost packets");
    assert_eq!(got_v6, 1000, "non-matching family/CIDR lost packets");
    assert!(
        got_matching < 2000 - 500,
        "matching traffic barely dropped: {got_matching}"
    );
    assert_eq!(counter(&removed, "ingress", "matched"), 2000);
    assert_eq!(
        counter(&removed, "ingress", "dropped"),
        2000 - got_matching as u64
    );
}

#[test]
fn ipv6_cidr_filter_drops_only_ipv6_traffic() {
    let pair = Pair::new();
    let limits = limits_file("100%", "300s");
    let src = format!("{}/128", pair.v6(1));
    let (agent, _) = Agent::start(
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
            "100",
            "--duration",
            "60s",
            "--src",
            &src,
            "--proto",
            "udp",
        ],
    );
    let rx6 = receiver(&pair.b, addr("::", 7100));
    let rx4 = receiver(&pair.b, addr("0.0.0.0", 7101));
    send(
        &sender(&pair.a, addr("::", 0)),
        addr(&pair.v6(2), 7100),
        500,
        20_000,
    );
    send(
        &sender(&pair.a, addr("0.0.0.0", 0)),
        addr(&pair.v4(2), 7101),
        500,
        20_000,
    );
    let got6 = collect(&rx6, 500).iter().filter(|&&r| r).count();
    let got4 = collect(&rx4, 500).iter().filter(|&&r| r).count();
    let removed = agent.stop();
    assert_eq!(
        got6, 0,
        "100% loss on the v6 source must drop every v6 datagram"
    );
    assert_eq!(got4, 500, "IPv4 traffic must pass a v6 filter");
    assert_eq!(counter(&removed, "ingress", "dropped"), 500);
}

#[test]
fn gilbert_elliott_bursts_have_the_models_mean_length() {
    let pair = Pair::new();
    let limits = limits_file("100%", "300s");
    // p = 5 %, r = 20 %, 1-h = 100 %, 1-k = 0 %: bursts are geometric with mean
    // 1/r = 5 packets, and the long-run loss is p/(p+r) = 20 %.
    let (agent, _) = Agent::start(
        &pair.b.name,
        &pair.b.state_dir(),
        &[
            "--limits",
            limits.to_str().unwrap(),
            "inject",
            "loss",
            "--iface",
            IFACE,
            "--model",
            "gilbert-elliott",
            "--ge-p",
            "5",
            "--ge-r",
            "20",
            "--duration",
            "60s",
            "--proto",
            "udp",
            "--port",
            "7200",
        ],
    );
    const N: u32 = 20_000;
    let rx = receiver(&pair.b, addr("0.0.0.0", 7200));
    send(
        &sender(&pair.a, addr("0.0.0.0", 0)),
        addr(&pair.v4(2), 7200),
        N,
        40_000,
    );
    let got = collect(&rx, N);
    let removed = agent.stop();

    let bursts = loss_bursts(&got);
    let mean = bursts.iter().sum::<usize>() as f64 / bursts.len() as f64;
    // Geometric(r): sd = sqrt(1-r)/r ≈ 4.47; ~800 bursts -> sd of the mean ≈ 0.16.
    let sd_of_mean = (0.8f64).sqrt() / 0.2 / (bursts.len() as f64).sqrt();
    assert!(
        (mean - 5.0).abs() <= 4.0 * sd_of_mean,
        "mean burst {mean:.2} over {} bursts, expected 5 ± {:.2}",
        bursts.len(),
        4.0 * sd_of_mean
    );
    let lost = got.iter().filter(|&&r| !r).count() as f64 / f64::from(N);
    assert!(
        (lost - 0.20).abs() < 0.03,
        "long-run loss {lost:.3}, expected 0.20"
    );
    assert_eq!(
        counter(&removed, "ingress", "dropped"),
        got.iter().filter(|&&r| !r).count() as u64
    );
}

#[test]
fn in_kernel_deadline_stops_loss_while_the_agent_is_frozen() {
    let pair = Pair::new();
    let limits = limits_file("100%", "300s");
    let (agent, _) = Agent::start(
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
            "100",
            "--duration",
            "3s",
            "--proto",
            "udp",
            "--port",
            "7300",
        ],
    );
    agent.signal(libc::SIGSTOP);
    let rx = receiver(&pair.b, addr("0.0.0.0", 7300));
    let tx = sender(&pair.a, addr("0.0.0.0", 0));
    send(&tx, addr(&pair.v4(2), 7300), 200, 10_000);
    assert_eq!(
        collect(&rx, 200).iter().filter(|&&r| r).count(),
        0,
        "fault not active"
    );

    std::thread::sleep(Duration::from_millis(3500));
    // The agent is still frozen and its link still attached; only the kernel's
    // deadline can be letting these through.
    let state = std::fs::read_to_string(format!("/proc/{}/stat", agent.child.id())).unwrap();
    assert!(
        state.split_whitespace().nth(2) == Some("T"),
        "agent not stopped: {state}"
    );
    send(&tx, addr(&pair.v4(2), 7300), 2000, 10_000);
    let after = collect(&rx, 2000).iter().filter(|&&r| r).count();
    assert_eq!(after, 2000, "packets dropped after the in-kernel deadline");
    agent.signal(libc::SIGKILL);
}

#[test]
fn auto_mode_picks_tcx_from_6_6_and_clsact_before() {
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
            "10",
            "--duration",
            "60s",
        ],
    );
    let kind = armed["attachments"][0]["kind"].as_str().unwrap().to_owned();
    agent.stop();
    let expected = if faultline_tests::has_tcx() {
        "tcx"
    } else {
        "netlink"
    };
    assert_eq!(
        kind,
        expected,
        "kernel {:?}: {armed}",
        faultline_tests::kernel_version()
    );
    assert_nothing_attached(&pair);
}

#[test]
fn sigkill_leaves_no_tcx_link_or_program() {
    let pair = Pair::new();
    let limits = limits_file("100%", "300s");
    if !faultline_tests::has_tcx() {
        // Before 6.6 there is no TCX: asking for it must be refused up front.
        let out = faultline_tests::agent::run_agent(
            Some(&pair.b.name),
            &[
                "--state-dir",
                pair.b.state_dir().to_str().unwrap(),
                "--limits",
                limits.to_str().unwrap(),
                "inject",
                "loss",
                "--iface",
                IFACE,
                "--percent",
                "10",
                "--duration",
                "60s",
                "--tc-mode",
                "tcx",
            ],
        );
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains("needs kernel >= 6.6"));
        assert_nothing_attached(&pair);
        return;
    }
    let (mut agent, armed) = Agent::start(
        &pair.b.name,
        &pair.b.state_dir(),
        &[
            "--limits",
            limits.to_str().unwrap(),
            "inject",
            "loss",
            "--iface",
            IFACE,
            "--direction",
            "both",
            "--percent",
            "10",
            "--duration",
            "60s",
            "--tc-mode",
            "tcx",
        ],
    );
    let ids = program_ids(&armed);
    assert_eq!(ids.len(), 2);
    assert!(any_loaded(&ids));
    agent.signal(libc::SIGKILL);
    agent.child.wait().unwrap();
    wait_until("programs unloaded", Duration::from_secs(5), || {
        !any_loaded(&ids)
    });
    assert_nothing_attached(&pair);
}

#[test]
fn sigkill_on_the_netlink_path_is_cleaned_by_the_next_start() {
    let pair = Pair::new();
    let limits = limits_file("100%", "300s");
    let state = pair.b.state_dir();
    let args = [
        "--limits",
        limits.to_str().unwrap(),
        "inject",
        "loss",
        "--iface",
        IFACE,
        "--direction",
        "both",
        "--percent",
        "10",
        "--duration",
        "60s",
        "--tc-mode",
        "netlink",
    ];
    let (mut agent, _) = Agent::start(&pair.b.name, &state, &args);
    agent.signal(libc::SIGKILL);
    agent.child.wait().unwrap();
    // Netlink filters outlive the process: that is why the journal exists.
    let left = run_in(
        &pair.b.name,
        &["tc", "filter", "show", "dev", IFACE, "ingress"],
    );
    assert!(
        left.contains("faultline_ingress"),
        "expected a leftover filter: {left}"
    );

    // Someone else's filter on the same clsact must survive the clean-up (u32 is
    // built into every kernel this runs on; it classifies only, never drops).
    let out = run_in(
        &pair.b.name,
        &[
            "tc", "filter", "add", "dev", IFACE, "egress", "prio", "7", "u32", "match", "u32", "0",
            "0", "classid", "1:1",
        ],
    );
    assert!(
        !out.contains("Error"),
        "cannot add the foreign filter: {out}"
    );

    let (agent, _) = Agent::start(&pair.b.name, &state, &args);
    agent.stop();
    let egress = run_in(
        &pair.b.name,
        &["tc", "filter", "show", "dev", IFACE, "egress"],
    );
    assert!(!egress.contains("faultline"), "{egress}");
    assert!(egress.contains("u32"), "foreign filter removed: {egress}");
    let qdiscs = run_in(&pair.b.name, &["tc", "qdisc", "show", "dev", IFACE]);
    assert!(
        qdiscs.contains("clsact"),
        "clsact removed under a foreign filter: {qdiscs}"
    );
    run_in(
        &pair.b.name,
        &["tc", "qdisc", "del", "dev", IFACE, "clsact"],
    );
    assert_nothing_attached(&pair);
}

#[test]
fn cleanup_command_removes_leftovers_of_a_killed_agent() {
    let pair = Pair::new();
    let limits = limits_file("100%", "300s");
    let state = pair.b.state_dir();
    let (mut agent, _) = Agent::start(
        &pair.b.name,
        &state,
        &[
            "--limits",
            limits.to_str().unwrap(),
            "inject",
            "loss",
            "--iface",
            IFACE,
            "--percent",
            "10",
            "--duration",
            "60s",
            "--tc-mode",
            "netlink",
        ],
    );
    agent.signal(libc::SIGKILL);
    agent.child.wait().unwrap();
    assert_eq!(lock_files(&state).len(), 1, "the killed agent's lock");
    let out = faultline_tests::agent::run_agent(
        Some(&pair.b.name),
        &["--state-dir", state.to_str().unwrap(), "cleanup"],
    );
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("removed leftover faultline_ingress"),
        "{text}"
    );
    assert!(text.contains("removed the clsact qdisc"), "{text}");
    assert_nothing_attached(&pair);
    assert_eq!(lock_files(&state), Vec::<String>::new());
}

#[test]
fn xdp_hook_drops_on_ingress() {
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
            "--attach",
            "xdp",
            "--percent",
            "50",
            "--duration",
            "60s",
            "--proto",
            "udp",
            "--port",
            "7400",
        ],
    );
    let kind = armed["attachments"][0]["kind"].as_str().unwrap().to_owned();
    assert!(kind == "xdp-native" || kind == "xdp-generic", "{armed}");
    const N: u32 = 4000;
    let rx = receiver(&pair.b, addr("0.0.0.0", 7400));
    send(
        &sender(&pair.a, addr("0.0.0.0", 0)),
        addr(&pair.v4(2), 7400),
        N,
        20_000,
    );
    let received = collect(&rx, N).iter().filter(|&&r| r).count() as u64;
    let removed = agent.stop();
    let sigma = (f64::from(N) * 0.25).sqrt();
    assert!(
        (received as f64 - f64::from(N) / 2.0).abs() <= 3.0 * sigma,
        "{received} of {N} received ({kind}); kernel: {removed}"
    );
    assert_eq!(
        counter(&removed, "ingress", "dropped") + received,
        u64::from(N)
    );
    assert_nothing_attached(&pair);
}

/// `--debug-ebpf` turns on aya-log records from the data path; without it the
/// programs emit none (the level is patched to 0 at load).
#[test]
fn debug_ebpf_logs_each_drop_only_when_asked() {
    for debug in [true, false] {
        let pair = Pair::new();
        let limits = limits_file("100%", "300s");
        let mut args = vec![
            "--limits",
            limits.to_str().unwrap(),
            "inject",
            "loss",
            "--iface",
            IFACE,
            "--percent",
            "100",
            "--duration",
            "60s",
            "--proto",
            "udp",
            "--port",
            "7600",
        ];
        if debug {
            args.push("--debug-ebpf");
        }
        let log = std::env::temp_dir().join(format!("{}-agent.stderr", pair.b.name));
        let (agent, _) = Agent::start_with_stderr(
            &pair.b.name,
            &pair.b.state_dir(),
            &args,
            std::fs::File::create(&log).unwrap().into(),
        );
        send(
            &sender(&pair.a, addr("0.0.0.0", 0)),
            addr(&pair.v4(2), 7600),
            5,
            1000,
        );
        // Records travel through a ring buffer that the agent polls; give it a moment.
        std::thread::sleep(Duration::from_millis(500));
        agent.stop();
        let stderr = std::fs::read_to_string(&log).unwrap();
        let _ = std::fs::remove_file(&log);
        let records = stderr.matches("faultline: drop family=4 proto=17").count();
        if debug {
            assert_eq!(records, 5, "expected one record per drop: {stderr}");
        } else {
            assert_eq!(records, 0, "records without --debug-ebpf: {stderr}");
        }
    }
}

/// A person on the node sees what faultline does there: `status` lists the effect
/// while it runs (exit 10), a killed agent's record with what to do (exit 11), and
/// nothing once `cleanup` has run (exit 0).
#[test]
fn status_shows_the_active_effect_and_a_killed_agents_leftovers() {
    let pair = Pair::new();
    let limits = limits_file("100%", "300s");
    let state = pair.b.state_dir();
    let status = |format: &str| {
        faultline_tests::agent::run_agent(
            None,
            &[
                "--state-dir",
                state.to_str().unwrap(),
                "status",
                "-o",
                format,
            ],
        )
    };
    let (mut agent, armed) = Agent::start(
        &pair.b.name,
        &state,
        &[
            "--limits",
            limits.to_str().unwrap(),
            "inject",
            "loss",
            "--iface",
            IFACE,
            "--percent",
            "10",
            "--duration",
            "60s",
            "--tc-mode",
            "netlink",
            "--dport",
            "7000",
        ],
    );
    let out = status("json");
    assert_eq!(out.status.code(), Some(10), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let e = &v["effects"][0];
    assert_eq!(e["kind"], "loss", "{v}");
    assert_eq!(e["running"], true, "{v}");
    assert_eq!(e["pid"], armed["pid"], "{v}");
    let detail = e["detail"].as_str().unwrap();
    assert!(detail.contains("loss 10") && detail.contains("7000"), "{v}");
    let since = e["since_ms"].as_u64().unwrap();
    assert_eq!(e["deadline_ms"].as_u64().unwrap() - since, 60_000, "{v}");
    let text = String::from_utf8_lossy(&status("text").stdout).into_owned();
    assert!(
        text.starts_with("loss: ") && text.contains("local inject"),
        "{text}"
    );

    agent.signal(libc::SIGKILL);
    agent.child.wait().unwrap();
    let out = status("text");
    assert_eq!(out.status.code(), Some(11), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("faultline-agent cleanup"),
        "{out:?}"
    );
    let out = faultline_tests::agent::run_agent(
        Some(&pair.b.name),
        &["--state-dir", state.to_str().unwrap(), "cleanup"],
    );
    assert!(out.status.success(), "{out:?}");
    let out = status("text");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("no faultline effect"),
        "{out:?}"
    );
    assert_nothing_attached(&pair);
}
