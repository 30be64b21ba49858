//! The coordinator's and the agent's /metrics as Prometheus sees them: `promtool
//! check metrics` passes on each live endpoint, the series say what happened (an
//! experiment, an abort, the kill switch, the agent's session; on the agent the fault
//! in effect, its packets, its lease, the dead-man switch), a real Prometheus scrapes
//! each, and the shipped alert rules pass `promtool check rules` and their `promtool
//! test rules` unit tests.
use std::{
    io::Write,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use faultline_tests::{
    fleet::{Fleet, NODE_IFACE, Options, Role},
    monitoring::Prometheus,
};

fn scrape(fleet: &Fleet) -> String {
    get_metrics(&fleet.ctl.name, "127.0.0.1:7080")
}

/// `GET /metrics` at `addr` inside network namespace `ns`.
fn get_metrics(ns: &str, addr: &str) -> String {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "curl",
            "-sf",
            &format!("http://{addr}/metrics"),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "GET {addr}/metrics in {ns} failed");
    String::from_utf8(out.stdout).unwrap()
}

/// `promtool check metrics` on `text`: no error and no lint finding.
fn promtool_check(text: &str) {
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The value of the first sample whose line starts with `name{` (or `name `) and
/// contains every label in `labels`.
fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .find(|l| labels.iter().all(|lab| l.contains(lab)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn coordinator_metrics_pass_promtool_say_what_happened_and_are_scraped() {
    let fleet = Fleet::new(1, &["--baseline", "1s"], &[]);
    let run = fleet.cli_line(
        Role::Operator,
        &format!("run --fault latency --node node-1 --delay 5ms --duration 2s --iface {NODE_IFACE} --wait"),
    );
    assert_eq!(
        run.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let abort = fleet.cli(Role::Operator, &["abort", "--reason", "metrics"]);
    assert!(abort.status.success());

    let text = scrape(&fleet);
    promtool_check(&text);
    let v = |name: &str, labels: &[&str]| {
        sample(&text, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?} in\n{text}"))
    };
    assert_eq!(
        v(
            "faultline_experiments_total",
            &[r#"scenario="latency_injection""#, r#"verdict="passed""#]
        ),
        1.0
    );
    assert_eq!(v("faultline_agent_connected", &[r#"node="node-1""#]), 1.0);
    assert_eq!(v("faultline_agents_connected", &[]), 1.0);
    assert!(
        v(
            "faultline_agent_heartbeat_age_seconds",
            &[r#"node="node-1""#]
        ) < 5.0
    );
    assert_eq!(v("faultline_lease_grants_total", &[]), 1.0);
    assert_eq!(v("faultline_aborts_total", &[]), 1.0);
    assert_eq!(v("faultline_abort_duration_seconds_count", &[]), 1.0);
    assert_eq!(v("faultline_kill_switch_engaged", &[]), 1.0);
    assert_eq!(v("faultline_recovery_time_seconds_count", &[]), 1.0);
    assert_eq!(
        v("faultline_recovery_time_seconds_bucket", &[r#"le="10.0""#]),
        1.0
    );
    // The 2 s fault was watched by its guards: at least once a second (this run
    // counted 17 evaluations); the run passed, so none of them breached.
    let evaluations = v("faultline_guard_evaluations_total", &[]);
    assert!(evaluations >= 2.0, "{evaluations} guard evaluations");
    // The kill switch refuses the next lease, and the refusal is counted by reason.
    let refused = fleet.cli_line(
        Role::Operator,
        &format!(
            "run --fault latency --node node-1 --delay 5ms --duration 2s --iface {NODE_IFACE}"
        ),
    );
    assert!(!refused.status.success());
    assert_eq!(
        sample(
            &scrape(&fleet),
            "faultline_lease_refusals_total",
            &[r#"reason="kill_switch""#]
        ),
        Some(1.0)
    );

    // A real Prometheus scrapes the endpoint.
    let prom = Prometheus::start(&fleet.ctl, &["127.0.0.1:7080"]);
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let up = prom.query(r#"faultline_agent_connected{node="node-1"}"#);
        let exps = prom.query(r#"sum(faultline_experiments_total{verdict="passed"})"#);
        if up == Some(1.0) && exps == Some(1.0) {
            break;
        }
        assert!(Instant::now() < until, "Prometheus saw {up:?} / {exps:?}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

const AGENT_METRICS: &str = "127.0.0.1:9464";

/// A per-direction agent counter, ingress plus egress (each series must exist).
fn both_directions(text: &str, name: &str) -> f64 {
    ["ingress", "egress"]
        .iter()
        .map(|d| {
            sample(text, name, &[&format!("direction=\"{d}\"")])
                .unwrap_or_else(|| panic!("no {name} for {d} in\n{text}"))
        })
        .sum()
}

fn wait_for(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The agent's endpoint (`run --metrics-listen`, in the node's namespace): every
/// series exists at zero before anything runs; while a latency fault is in effect
/// it shows the fault, its lease being renewed and the packets it delays; after the
/// end the fault is gone and the counters kept what happened; freezing the
/// coordinator fires the dead-man switch, counted; a real Prometheus scrapes it.
#[test]
fn agent_metrics_pass_promtool_and_follow_a_fault_its_lease_and_the_dead_man() {
    let fleet = Fleet::build(Options {
        nodes: 1,
        coordinator_args: &["--baseline", "1s", "--lease-ttl", "2s"],
        node_args: vec![vec!["--metrics-listen".into(), AGENT_METRICS.into()]],
        ..Options::default()
    });
    let ns = fleet.nodes[0].ns.name.clone();
    let agent =
        |labels: &[&str], name: &str| sample(&get_metrics(&ns, AGENT_METRICS), name, labels);

    let idle = get_metrics(&ns, AGENT_METRICS);
    promtool_check(&idle);
    for kind in ["loss", "latency", "cpu", "memory", "gc", "cache"] {
        let label = format!("fault=\"{kind}\"");
        assert_eq!(
            sample(&idle, "faultline_agent_active_faults", &[&label]),
            Some(0.0),
            "{idle}"
        );
    }
    assert_eq!(
        sample(&idle, "faultline_agent_coordinator_session_up", &[]),
        Some(1.0)
    );
    assert_eq!(sample(&idle, "faultline_agent_leases", &[]), Some(0.0));

    let run = fleet.cli_line(
        Role::Operator,
        &format!("run --fault latency --node node-1 --delay 5ms --duration 4s --iface {NODE_IFACE} -o json"),
    );
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let first: serde_json::Value =
        serde_json::from_slice(run.stdout.split(|b| *b == b'\n').next().unwrap()).unwrap();
    let id = first["experiment"]
        .as_str()
        .expect("experiment id")
        .to_owned();
    wait_for(
        Duration::from_secs(10),
        "the latency fault in the agent's metrics",
        || agent(&[r#"fault="latency""#], "faultline_agent_active_faults") == Some(1.0),
    );
    let during = get_metrics(&ns, AGENT_METRICS);
    promtool_check(&during);
    assert_eq!(sample(&during, "faultline_agent_leases", &[]), Some(1.0));
    let age = sample(&during, "faultline_agent_lease_renewal_age_seconds", &[]).unwrap();
    assert!(
        age < 2.0,
        "a renewed lease is {age} s old against a 2 s TTL"
    );
    // The session's own heartbeats and samples cross the faulted interface.
    wait_for(Duration::from_secs(5), "delayed packets", || {
        both_directions(
            &get_metrics(&ns, AGENT_METRICS),
            "faultline_agent_packets_delayed_total",
        ) > 0.0
    });
    wait_for(Duration::from_secs(15), "the fault's end", || {
        agent(&[r#"fault="latency""#], "faultline_agent_active_faults") == Some(0.0)
            && agent(&[], "faultline_agent_leases") == Some(0.0)
    });
    let after = get_metrics(&ns, AGENT_METRICS);
    let v = |name: &str, labels: &[&str]| {
        sample(&after, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?} in\n{after}"))
    };
    assert_eq!(
        v("faultline_agent_orders_total", &[r#"result="applied""#]),
        1.0
    );
    assert_eq!(v("faultline_agent_order_apply_seconds_count", &[]), 1.0);
    assert!(v("faultline_agent_order_apply_seconds_sum", &[]) < 5.0);
    let seen = both_directions(&after, "faultline_agent_packets_seen_total");
    let delayed = both_directions(&after, "faultline_agent_packets_delayed_total");
    assert!(
        seen >= delayed && delayed > 0.0,
        "seen {seen}, delayed {delayed}"
    );
    assert_eq!(v("faultline_agent_dead_man_firings_total", &[]), 0.0);
    fleet.wait_phase(&id, &["completed"], Duration::from_secs(30));

    // A CPU stress shows its share; freezing the coordinator lets its lease lapse.
    let run = fleet.cli_line(
        Role::Operator,
        "run --fault cpu --node node-1 --percent 5 --duration 30s -o json",
    );
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    wait_for(Duration::from_secs(10), "the CPU stress's share", || {
        agent(&[r#"resource="cpu""#], "faultline_agent_stress_share_ratio") == Some(0.05)
    });
    fleet.signal_coordinator(libc::SIGSTOP);
    wait_for(Duration::from_secs(10), "the dead-man switch", || {
        agent(&[], "faultline_agent_dead_man_firings_total") == Some(1.0)
            && agent(&[r#"fault="cpu""#], "faultline_agent_active_faults") == Some(0.0)
    });
    fleet.signal_coordinator(libc::SIGCONT);
    assert_eq!(
        agent(&[r#"resource="cpu""#], "faultline_agent_stress_share_ratio"),
        Some(0.0)
    );

    // A real Prometheus in the node's namespace scrapes the agent.
    let prom = Prometheus::start(&fleet.nodes[0].ns, &[AGENT_METRICS]);
    wait_for(
        Duration::from_secs(20),
        "Prometheus to scrape the agent",
        || {
            prom.query("faultline_agent_dead_man_firings_total") == Some(1.0)
                && prom.query(r#"sum(faultline_agent_orders_total{result="applied"})"#) == Some(2.0)
        },
    );
    drop(fleet);
}

#[test]
fn the_shipped_alert_rules_pass_promtool_check_and_their_unit_tests() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus");
    for args in [
        &["check", "rules", "faultline-rules.yaml"][..],
        &["test", "rules", "faultline-rules.test.yaml"][..],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The JSON log lines of `log` that parse, as objects.
fn json_lines(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.is_object())
        .collect()
}

/// `--log-format json` on both daemons: every line is one JSON object, and each
/// fault ordered, applied and removed carries its experiment, order and lease ids.
#[test]
fn json_logs_carry_the_experiment_order_and_lease_of_every_fault() {
    let fleet = Fleet::new(
        1,
        &["--baseline", "1s", "--log-format", "json"],
        &["--log-format", "json"],
    );
    let run = fleet.cli_line(
        Role::Operator,
        &format!(
            "run --fault latency --node node-1 --delay 5ms --duration 2s --iface {NODE_IFACE} --wait -o json"
        ),
    );
    assert_eq!(
        run.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let first: serde_json::Value =
        serde_json::from_slice(run.stdout.split(|b| *b == b'\n').next().unwrap()).unwrap();
    let id = first["experiment"].as_str().unwrap().to_owned();

    for name in ["coordinator", "node-1"] {
        let log = fleet.log(name);
        let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
        let objects = json_lines(&log);
        assert_eq!(
            objects.len(),
            lines.len(),
            "{name}: lines that are not JSON:\n{log}"
        );
        assert!(
            objects
                .iter()
                .all(|o| o["level"].is_string() && o["timestamp"].is_string())
        );
    }
    let find = |name: &str, message: &str| -> serde_json::Value {
        json_lines(&fleet.log(name))
            .into_iter()
            .find(|o| o["message"] == message)
            .unwrap_or_else(|| panic!("no '{message}' in the {name} log:\n{}", fleet.log(name)))
    };
    let ordered = find("coordinator", "fault ordered");
    assert_eq!(ordered["experiment"], id.as_str());
    assert_eq!(ordered["node"], "node-1");
    assert_eq!(ordered["fault"], "latency");
    let lease = ordered["lease"].as_str().expect("lease id").to_owned();
    assert!(!lease.is_empty());
    assert_eq!(
        find("coordinator", "fault applied")["lease"],
        lease.as_str()
    );
    assert_eq!(
        find("coordinator", "fault removal confirmed")["lease"],
        lease.as_str()
    );
    let applied = find("node-1", "fault applied");
    assert_eq!(applied["lease"], lease.as_str());
    assert_eq!(applied["order"], ordered["order"]);
    assert_eq!(applied["fault"], "latency");
    let removed = find("node-1", "fault removed");
    assert_eq!(removed["lease"], lease.as_str());
    assert_eq!(removed["fault"], "latency");
    assert_eq!(removed["outcome"], "Removed");
}
