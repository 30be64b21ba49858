//! The main job: the reference report's month of production chaos, in minutes, on a
//! sandbox of network-namespace nodes (`faultline_tests::sandbox`).
//!
//! Seven nodes (node-1..node-7) run agents and faultline's sample service under a
//! steady load; Prometheus and Alertmanager (Debian's packages) watch them; the
//! coordinator runs on its embedded production defaults (the report's limits,
//! prerequisites and abort conditions) with a config that names the sources, and
//! the report's schedule. Through the `faultline` CLI:
//! 1. the dashboard, with a readiness dry run;
//! 2. a schedule slot firing, and its twin due at the same instant skipped (the
//!    lease is held: runs never overlap);
//! 3. the report's six scenarios against node-6, each from the report's own
//!    configuration block, durations multiplied by `--scale` (default 0.1);
//! 4. the latency scenario again under a tighter abort condition: a guard abort;
//! 5. a finding recorded against it;
//! 6. each experiment's report, the fleet summary with the recovery-time
//!    distribution, the dashboard; then cleanup, checked.
use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use faultline_tests::{
    checks::faultline_leftovers,
    fleet::{Fleet, NODE_IFACE, Role},
    sandbox::{Sandbox, TARGET},
};
use serde_json::Value;

fn show(cmd: &str) {
    println!("\n$ {cmd}");
}

/// Runs `faultline <args>` with its output on the terminal; returns its exit code.
fn cli_live(fleet: &Fleet, role: Role, args: &[&str]) -> Result<i32> {
    show(&format!("faultline {}", args.join(" ")));
    let status = fleet
        .cli_command(role, args)
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .status()
        .context("run faultline")?;
    Ok(status.code().unwrap_or(-1))
}

fn cli_json(fleet: &Fleet, role: Role, args: &[&str]) -> Result<Value> {
    let mut all = vec!["-o", "json"];
    all.extend_from_slice(args);
    let out = fleet.cli(role, &all);
    if !out.status.success() {
        bail!(
            "faultline {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("faultline {} output", args.join(" ")))
}

/// The report's six configuration blocks, as the report writes them.
const SCENARIOS: [(&str, &str); 6] = [
    (
        "latency_injection",
        "scenario: latency_injection
target_node: node-6          # Least critical node
latency: 50ms                # Production-safe limit
duration: 60s
expected_impact: minimal
",
    ),
    (
        "packet_loss",
        "scenario: packet_loss
target_node: node-6
packet_loss: 1.0%            # 1% loss rate
duration: 60s
expected_impact: minimal
",
    ),
    (
        "cpu_stress",
        "scenario: cpu_stress
target_node: node-6
cpu_stress: 15%              # 15% of CPU
duration: 60s
expected_impact: minimal
",
    ),
    (
        "memory_stress",
        "scenario: memory_stress
target_node: node-6
memory_stress: 10%           # 10% of RAM
duration: 60s
expected_impact: minimal
",
    ),
    // The report's block names no node; the CLI's --node gives it one.
    (
        "cache_invalidation",
        "scenario: cache_invalidation
components:
  - consensus
  - network
  - api
  - scheduler
duration: 30s                # Observation period
expected_impact: temporary_cache_misses
",
    ),
    (
        "gc_pressure",
        "scenario: gc_pressure
target_node: node-6
duration: 60s
expected_impact: brief_latency_spikes
",
    ),
];

/// The report's daily and weekly schedule (node-6 by default), and two demo entries
/// sharing a 30 s slot so that one fires soon and the other is skipped. They load
/// paused and are resumed once Prometheus has data (a slot before that would be
/// skipped by preflight, rightly: no traffic figure, no backup check).
fn schedule(scale: f64) -> String {
    let d = |s: f64| format!("{}ms", ((s * scale).max(1.0) * 1000.0).round() as u64);
    format!(
        "defaults:
  target_node: node-6
schedule:
  - time: 02:00 UTC
    scenario: latency_injection
    latency: 50ms
    duration: 60s

  - time: 14:00 UTC
    scenario: packet_loss
    packet_loss: 1.0%
    duration: 60s

  - day: Tuesday
    time: 03:00 UTC
    scenario: cpu_stress
    cpu_stress: 15%
    duration: 60s

  - day: Thursday
    time: 03:00 UTC
    scenario: memory_stress
    memory_stress: 10%
    duration: 60s

  - day: Saturday
    time: 02:00 UTC
    scenario: cache_invalidation
    components: [consensus, network, api, scheduler]
    duration: 30s

  - day: Sunday
    time: 02:00 UTC
    scenario: gc_pressure
    duration: 60s

  - name: demo-latency
    paused: true
    every: 30s
    scenario: latency_injection
    latency: 20ms
    duration: {}
    baseline: {}
  - name: demo-loss
    paused: true
    every: 30s
    scenario: packet_loss
    packet_loss: 0.5%
    duration: {}
    baseline: {}
",
        d(60.0),
        d(30.0),
        d(60.0),
        d(30.0),
    )
}

fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let until = Instant::now() + timeout;
    loop {
        if let Some(v) = f()? {
            return Ok(v);
        }
        if Instant::now() > until {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

pub fn run(scale: f64) -> Result<()> {
    if !(0.01..=1.0).contains(&scale) {
        bail!("--scale must be between 0.01 and 1 (1 runs the report's durations)");
    }
    let started = Instant::now();
    let secs = |s: f64| format!("{}ms", ((s * scale).max(1.0) * 1000.0).round() as u64);
    println!(
        "== faultline demo: seven nodes, the report's scenarios, schedule and dashboard (scale {scale}) =="
    );
    let dir = faultline_tests::TempPath::dir("faultline-demo");
    let schedule_file = dir.join("schedule.yaml");
    std::fs::write(&schedule_file, schedule(scale))?;
    let sched = schedule_file.display().to_string();
    let sandbox = Sandbox::start(&["--schedule", &sched], &["--warmup", "4s"]);
    let fleet = &sandbox.fleet;
    println!(
        "coordinator: netns {} (production limits and prerequisites; Prometheus :9090, Alertmanager :9093 beside it)",
        fleet.ctl.name
    );
    for n in &fleet.nodes {
        println!(
            "{}: netns {} ({}), sample service :8080 at {} req/s",
            n.name,
            n.ns.name,
            n.addr,
            faultline_tests::sandbox::RATE
        );
    }
    cli_live(fleet, Role::Viewer, &["nodes"])?;
    // Prometheus needs a few scrapes before its rates mean anything.
    wait_for(
        "Prometheus to see the services' traffic",
        Duration::from_secs(30),
        || {
            Ok((sandbox
                .prometheus
                .query("sum(rate(sample_requests_total[5s]))")
                .unwrap_or(0.0)
                > 50.0)
                .then_some(()))
        },
    )?;
    cli_live(fleet, Role::Viewer, &["schedule", "list"])?;
    cli_live(fleet, Role::Operator, &["status"])?;

    println!("\n== 1. a schedule slot: demo-latency fires, demo-loss (same slot) is skipped ==");
    for n in ["demo-latency", "demo-loss"] {
        cli_live(fleet, Role::Operator, &["schedule", "resume", n])?;
    }
    let runs: Value = wait_for("the demo slot", Duration::from_secs(45), || {
        let r = cli_json(fleet, Role::Viewer, &["schedule", "runs"])?;
        Ok((r.as_array().map_or(0, Vec::len) >= 2).then_some(r))
    })?;
    for n in ["demo-latency", "demo-loss"] {
        cli_live(fleet, Role::Operator, &["schedule", "pause", n])?;
    }
    let scheduled = runs
        .as_array()
        .and_then(|r| r.iter().find(|r| r["status"] == "started"))
        .and_then(|r| r["experiment"].as_str())
        .context("the slot started nothing")?
        .to_owned();
    fleet.wait_phase(
        &scheduled,
        &["completed", "aborted", "failed"],
        Duration::from_secs(120),
    );
    cli_live(fleet, Role::Viewer, &["schedule", "runs"])?;

    println!("\n== 2. the report's six scenarios against {TARGET} ==");
    let mut ids = vec![scheduled];
    let baseline = secs(30.0);
    for (name, block) in SCENARIOS {
        let file = dir.join(format!("{name}.yaml"));
        std::fs::write(&file, block)?;
        let duration = secs(if name == "cache_invalidation" {
            30.0
        } else {
            60.0
        });
        let f = file.display().to_string();
        let mut args = vec![
            "run",
            &f,
            "--duration",
            &duration,
            "--baseline",
            &baseline,
            "--wait",
        ];
        if name == "cache_invalidation" {
            args.extend(["--node", TARGET]);
        }
        println!("\n--- {name} ---\n{block}");
        let code = cli_live(fleet, Role::Operator, &args)?;
        let last = &cli_json(fleet, Role::Viewer, &["experiments", "--limit", "1"])?[0];
        let id = last["id"].as_str().unwrap_or_default().to_owned();
        println!(
            "exit code {code}: {id} {} / {}",
            last["outcome"]["verdict"].as_str().unwrap_or("-"),
            last["outcome"]["classification"].as_str().unwrap_or("-")
        );
        // What a team would write down: a scenario of the report that this sandbox's
        // guards stopped, recorded against its experiment with the measured breach.
        if let Some(b) = last["outcome"]["breach"].as_object() {
            let title = format!(
                "{name} on {TARGET} tripped {} at {:.0}{} (limit {}{})",
                b["guard"].as_str().unwrap_or("-"),
                b["observed"].as_f64().unwrap_or(0.0),
                b["unit"].as_str().unwrap_or(""),
                b["threshold"],
                b["unit"].as_str().unwrap_or("")
            );
            cli_live(
                fleet,
                Role::Operator,
                &["finding", "add", "--experiment", &id, "--title", &title],
            )?;
        }
        ids.push(id);
    }

    println!(
        "\n== 3. a guard abort: the latency scenario with p99 above 30 ms as an abort condition =="
    );
    let guarded = dir.join("latency-guarded.yaml");
    std::fs::write(
        &guarded,
        format!(
            "{}abort_conditions:\n  latency_p99_above: 30ms\n",
            SCENARIOS[0].1
        ),
    )?;
    let g = guarded.display().to_string();
    let duration = secs(60.0);
    let code = cli_live(
        fleet,
        Role::Operator,
        &[
            "run",
            &g,
            "--duration",
            &duration,
            "--baseline",
            &baseline,
            "--wait",
        ],
    )?;
    let last = &cli_json(fleet, Role::Viewer, &["experiments", "--limit", "1"])?[0];
    let aborted = last["id"].as_str().unwrap_or_default().to_owned();
    println!("exit code {code} (4 = aborted): {aborted}");
    ids.push(aborted.clone());
    cli_live(
        fleet,
        Role::Operator,
        &[
            "finding",
            "add",
            "--experiment",
            &aborted,
            "--title",
            "a 50 ms hop breaks a 30 ms p99 budget: the client has no hedged requests",
        ],
    )?;

    println!("\n== 4. the reports ==");
    for id in &ids {
        cli_live(fleet, Role::Viewer, &["report", id])?;
    }
    let junit = dir.join("chaos-junit.xml");
    let j = junit.display().to_string();
    cli_live(
        fleet,
        Role::Viewer,
        &["report", "--since", "30d", "--junit", &j],
    )?;
    println!(
        "(JUnit for CI written to {j}: {} bytes)",
        std::fs::metadata(&junit).map_or(0, |m| m.len())
    );
    cli_live(fleet, Role::Operator, &["status"])?;

    let nodes: Vec<_> = fleet.nodes.iter().map(|n| n.ns.name.clone()).collect();
    let fleet_dir = fleet.dir.to_path_buf();
    let mut residue = Vec::new();
    for n in &fleet.nodes {
        residue.extend(faultline_leftovers(&n.ns, NODE_IFACE));
    }
    drop(sandbox);
    residue.extend(remaining(&nodes, &fleet_dir));
    println!("\n== cleanup ==");
    if !residue.is_empty() {
        bail!("residue after the demo: {residue:?}");
    }
    println!(
        "nothing left: no namespace, no faultline or sample process, no program, filter, qdisc or cgroup"
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
    for pattern in [
        dir.display().to_string(),
        "faultline-sample".into(),
        "fl-prometheus".into(),
        "fl-alertmanager".into(),
    ] {
        let ps = Command::new("pgrep").args(["-f", &pattern]).output();
        if let Ok(o) = ps
            && !o.stdout.is_empty()
        {
            left.push(format!(
                "processes ({pattern}): {}",
                String::from_utf8_lossy(&o.stdout).trim()
            ));
        }
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
