//! The coordinator's /metrics as Prometheus sees it: `promtool check metrics` passes
//! on the live endpoint, the series say what happened (an experiment, an abort, the
//! kill switch, the agent's session), a real Prometheus scrapes it, and the shipped
//! alert rules pass `promtool check rules` and their `promtool test rules` unit tests.
use std::{
    io::Write,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use faultline_tests::{
    fleet::{Fleet, NODE_IFACE, Role},
    monitoring::Prometheus,
};

fn scrape(fleet: &Fleet) -> String {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &fleet.ctl.name,
            "curl",
            "-sf",
            "http://127.0.0.1:7080/metrics",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "GET /metrics failed");
    String::from_utf8(out.stdout).unwrap()
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
    assert!(v("faultline_guard_evaluations_total", &[]) >= 0.0);
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
