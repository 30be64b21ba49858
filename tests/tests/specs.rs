//! Experiment specs through the real CLI and coordinator: the reference report's
//! scenario blocks run as they are written; every bad spec is a precise error naming
//! its field and line, with nothing started (exit 2); targets by label; the
//! production defaults refuse until sources are configured or waived; and what an
//! agent may be ordered to call is bounded at both ends.
use std::time::Duration;

use faultline_tests::{
    TempPath,
    fleet::{Fleet, NODE_ONLY_CONFIG, Options, Role},
    lab::finish,
    node::assert_no_stress_cgroups,
};
use serde_json::Value;

/// One at a time: the tests check the node's cgroups and kernel state for
/// leftovers, which another test's running experiment would show.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn text(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// Writes `spec` into the fleet's directory; returns its path.
fn spec_file(fleet: &Fleet, name: &str, spec: &str) -> String {
    let path = fleet.dir.join(format!("{name}.yaml"));
    std::fs::write(&path, spec).expect("write spec");
    path.display().to_string()
}

fn labelled(nodes: usize, config: &str) -> Fleet {
    Fleet::build(Options {
        nodes,
        config,
        node_args: ["a", "b", "b"]
            .iter()
            .take(nodes)
            .map(|z| vec!["--label".to_owned(), format!("zone={z}")])
            .collect(),
        ..Options::default()
    })
}

fn experiments(fleet: &Fleet) -> Vec<Value> {
    let out = fleet.cli(Role::Viewer, &["experiments", "-o", "json"]);
    serde_json::from_slice::<Value>(&out.stdout)
        .expect("json")
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn the_reports_scenario_blocks_run_as_they_are_written() {
    let _g = serial();
    let fleet = labelled(1, NODE_ONLY_CONFIG);
    // The report's blocks, word for word but for the node's name; the one
    // documented flag shortens their production durations.
    let blocks = [
        "scenario: latency_injection\ntarget_node: node-1          # Least critical node\nlatency: 50ms                # Production-safe limit\nduration: 60s\nexpected_impact: minimal\n",
        "scenario: packet_loss\ntarget_node: node-1\npacket_loss: 1.0%            # 1% loss rate\nduration: 60s\nexpected_impact: minimal\n",
        "scenario: cpu_stress\ntarget_node: node-1\ncpu_stress: 15%              # 15% of CPU\nduration: 60s\nexpected_impact: minimal\n",
    ];
    for (i, block) in blocks.iter().enumerate() {
        let path = spec_file(&fleet, &format!("block-{i}"), block);
        let run = finish(fleet.cli(
            Role::Operator,
            &[
                "run",
                &path,
                "--duration",
                "2s",
                "--baseline",
                "1s",
                "--recovery",
                "20s",
                "--wait",
                "-o",
                "json",
            ],
        ));
        assert_eq!(
            run.code,
            Some(0),
            "{block}\n{}\n{}",
            run.outcome,
            run.stderr
        );
        assert_eq!(run.outcome["verdict"], "passed");
        assert_eq!(run.outcome["expected_impact"], "minimal");
        assert_eq!(run.outcome["node_signals_only"], true, "{}", run.outcome);
    }
    let list = experiments(&fleet);
    let scenarios: Vec<&str> = list
        .iter()
        .map(|e| e["scenario"].as_str().unwrap())
        .collect();
    assert_eq!(
        scenarios,
        ["cpu_stress", "packet_loss", "latency_injection"]
    );
    // The latency block defaulted to the node's default-route interface, egress.
    assert!(
        list[2]["fault"]
            .as_str()
            .unwrap()
            .contains("interface: \"eth0\""),
        "{}",
        list[2]
    );
    assert_no_stress_cgroups();
}

#[test]
fn every_bad_spec_is_a_precise_error_naming_its_field_and_line_and_nothing_starts() {
    let _g = serial();
    let fleet = labelled(3, NODE_ONLY_CONFIG);
    let cases = [
        (
            "scenario: latency_injektion\ntarget_node: node-1\nduration: 5s\n",
            "line 1",
            "unknown variant `latency_injektion`",
        ),
        (
            "scenario: cpu_stress\ntarget_node: node-1\ncpu_stres: 5%\nduration: 5s\n",
            "line 3",
            "unknown field `cpu_stres`",
        ),
        (
            "scenario: cpu_stress\ntarget_node: node-1\ncpu_stress: 20%\nduration: 5s\n",
            "line 3: cpu_stress",
            "exceeds the limit cpu_stress.max_stress = 15% (coordinator profile production)",
        ),
        (
            "scenario: packet_loss\ntarget_node: node-1\npacket_loss: 1%\nduration: 61s\n",
            "line 4: duration",
            "packet_loss.max_duration = 1m",
        ),
        (
            "scenario: cpu_stress\ntarget: {labels: {zone: b}}\ncpu_stress: 5%\nduration: 5s\n",
            "line 2: target.labels",
            "matches 2 connected nodes (node-2, node-3), above blast_radius.max_nodes = 1",
        ),
        (
            "scenario: cpu_stress\ntarget_node: node-1\ncpu_stress: 5%\nduration: 60\n",
            "line 4",
            "write e.g. 60s",
        ),
        (
            "scenario: packet_loss\ntarget_node: node-1\npacket_loss: 1.5.0%\nduration: 5s\n",
            "line 3",
            "is not a percentage",
        ),
        (
            "scenario: cpu_stress\ntarget_node: node-1\ncpu_stress: 5%\nduration: 5s\nhealth:\n  http:\n    - {name: api, url: 'ftp://10.201.1.2/healthz'}\n",
            "line 7: health.http.0.url",
            "the scheme must be http:// or https://",
        ),
        (
            "scenario: cpu_stress\ntarget_node: node-9\ncpu_stress: 5%\nduration: 5s\n",
            "line 2: target_node",
            "node 'node-9' is not registered",
        ),
        (
            "scenario: cache_invalidation\ntarget_node: node-1\ncomponents: [consensus]\nduration: 5s\n",
            "line 3: components",
            "'consensus' is not in the coordinator's components map",
        ),
        (
            "scenario: cache_invalidation\ntarget_node: node-1\nhooks: {api: 'http://10.0.0.1:8080/drop'}\nduration: 5s\n",
            "hooks",
            "10.0.0.1 is neither loopback nor in the allowed networks",
        ),
        (
            "scenario: cpu_stress\ntarget_node: node-1\ncpu_stress: 5%\nlatency: 5ms\nduration: 5s\n",
            "line 4: latency",
            "not a field of scenario cpu_stress",
        ),
        (
            "scenario: gc_pressure\ntarget_node: node-1\nduration: 5s\n",
            "target_cgroup",
            "required: the workload cgroup to squeeze",
        ),
        (
            "scenario: cpu_stress\ntarget_node: node-1\ncpu_stress: 5%\nduration: 5s\nexpected_impact: minmal\n",
            "line 5: expected_impact",
            "unknown hypothesis 'minmal': the coordinator's config file",
        ),
        (
            "scenario: cpu_stress\ntarget_node: node-1\ncpu_stress: 5%\nduration: 5s\nexpected_impact:\n  error_rate_rise: 1%\n",
            "line 6",
            "unknown field `error_rate_rise`",
        ),
        (
            "scenario: cpu_stress\ntarget_node: node-1\ncpu_stress: 5%\nduration: 5s\nexpected_impact: {}\n",
            "line 5: expected_impact",
            "names no bound",
        ),
    ];
    for (i, (spec, at, what)) in cases.iter().enumerate() {
        let path = spec_file(&fleet, &format!("bad-{i}"), spec);
        let out = fleet.cli(Role::Operator, &["run", &path, "--wait"]);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(2), "{spec}\n{t}");
        assert!(
            t.contains(at) && t.contains(what),
            "{spec}\nexpected '{at}' and '{what}' in: {t}"
        );
    }
    // A bad flag value is named too.
    let out = fleet.cli_line(
        Role::Operator,
        "run --node node-1 --fault cpu --percent 5 --duration 60",
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("--duration: '60' is not a duration"),
        "{}",
        text(&out)
    );
    assert!(experiments(&fleet).is_empty(), "something started");
}

#[test]
fn a_label_selector_picks_its_nodes_within_the_blast_radius() {
    let _g = serial();
    let fleet = labelled(3, NODE_ONLY_CONFIG);
    let run = |spec: &str| {
        let path = spec_file(&fleet, "selector", spec);
        finish(fleet.cli(Role::Operator, &["run", &path, "--wait", "-o", "json"]))
    };
    let r = run(
        "scenario: cpu_stress\ntarget: {labels: {zone: a}}\ncpu_stress: 5%\nduration: 1s\nbaseline: 1s\n",
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let r = run(
        "scenario: cpu_stress\ntarget: {labels: {zone: b}, count: 1}\ncpu_stress: 5%\nduration: 1s\nbaseline: 1s\n",
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let nodes: Vec<Value> = experiments(&fleet)
        .iter()
        .map(|e| e["nodes"].clone())
        .collect();
    assert_eq!(
        nodes,
        [serde_json::json!(["node-2"]), serde_json::json!(["node-1"])]
    );
    assert_no_stress_cgroups();

    // max_nodes_fraction: one node of one connected is within 1/1, not within 1/2.
    let limits = TempPath::new("fl-fraction-limits");
    let doc =
        faultline_proto::limits::ChaosLimits::profile(faultline_proto::limits::Profile::Production)
            .to_yaml()
            .replace(
                "max_concurrent: 1",
                "max_concurrent: 1\n    max_nodes_fraction: 1/2",
            );
    std::fs::write(&*limits, doc).unwrap();
    let small = Fleet::new(1, &["--limits", limits.to_str().unwrap()], &[]);
    let out = small.cli_line(
        Role::Operator,
        "run --node node-1 --fault cpu --percent 5 --duration 1s --wait",
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out)
            .contains("1 of 1 connected node(s) is above blast_radius.max_nodes_fraction = 1/2"),
        "{}",
        text(&out)
    );
}

#[test]
fn the_production_defaults_refuse_until_sources_are_configured_and_a_waiver_is_recorded() {
    let _g = serial();
    // The coordinator on its embedded production defaults.
    let mut fleet = labelled(1, "");
    let short =
        "scenario: cpu_stress\ntarget_node: node-1\ncpu_stress: 5%\nduration: 1s\nbaseline: 1s\n";
    let path = spec_file(&fleet, "plain", short);
    let run = finish(fleet.cli(Role::Operator, &["run", &path, "--wait", "-o", "json"]));
    assert_eq!(run.code, Some(3), "{}", run.outcome);
    for system in [
        "health_checker",
        "incident_response",
        "monitoring",
        "alerting",
        "recent_backup",
    ] {
        let c = run.check(&format!("required.{system}"));
        assert_eq!(c["status"], "fail", "{c}");
        let how = c["detail"].as_str().unwrap();
        assert!(how.contains("configure") && how.contains("waive"), "{c}");
    }
    assert_eq!(run.check("required.rollback")["status"], "pass");

    // Narrowing `required` waives the rest, and the result says so.
    let waived = format!("{short}prerequisites: {{required: [rollback]}}\n");
    let path = spec_file(&fleet, "waived", &waived);
    let run = finish(fleet.cli(Role::Operator, &["run", &path, "--wait", "-o", "json"]));
    assert_eq!(run.code, Some(0), "{}", run.outcome);
    assert_eq!(
        run.outcome["waivers"],
        serde_json::json!([
            "health_checker",
            "incident_response",
            "monitoring",
            "alerting",
            "recent_backup"
        ])
    );
    assert_eq!(run.outcome["node_signals_only"], true);
    assert!(
        run.outcome["message"]
            .as_str()
            .unwrap()
            .contains("judged by node signals only")
    );
    assert_eq!(run.check("required.monitoring")["status"], "waived");

    // require_health makes node-signals-only a refusal.
    fleet.kill_coordinator();
    std::fs::write(fleet.dir.join("config.yaml"), "require_health: true\n").unwrap();
    fleet.start_coordinator();
    fleet.wait_connected(1, Duration::from_secs(20));
    let run = finish(fleet.cli(Role::Operator, &["run", &path, "--wait", "-o", "json"]));
    assert_eq!(run.code, Some(3), "{}", run.outcome);
    assert!(
        run.outcome["message"]
            .as_str()
            .unwrap()
            .contains("require_health"),
        "{}",
        run.outcome
    );
    assert_no_stress_cgroups();
}

#[test]
fn what_an_agent_may_call_is_bounded_by_its_own_allow_list_too() {
    let _g = serial();
    // The coordinator allows the fleet's network; the agent only loopback.
    let config = format!("{NODE_ONLY_CONFIG}node_endpoints: {{allow: [10.201.0.0/16]}}\n");
    let fleet = labelled(1, &config);
    let path = spec_file(
        &fleet,
        "hook",
        "scenario: cache_invalidation\ntarget_node: node-1\nhooks: {api: 'http://10.201.1.1:9/drop'}\nduration: 2s\nbaseline: 1s\n",
    );
    let out = fleet.cli(Role::Operator, &["run", &path, "--wait"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("refused by the agent on node-1: hook api:")
            && text(&out).contains("--allow-endpoint"),
        "{}",
        text(&out)
    );
    // A node-side probe to the same address: the agent refuses to send it, and the
    // health checker is not operational.
    let path = spec_file(
        &fleet,
        "probe",
        "scenario: cpu_stress\ntarget_node: node-1\ncpu_stress: 5%\nduration: 2s\nbaseline: 1s\n\
         health: {http: [{name: local, url: 'http://10.201.1.1:9/healthz', from: node}]}\n\
         prerequisites: {required: [rollback, health_checker]}\n",
    );
    let run = finish(fleet.cli(Role::Operator, &["run", &path, "--wait", "-o", "json"]));
    assert_eq!(run.code, Some(3), "{}", run.outcome);
    let c = run.check("required.health_checker");
    assert!(
        c["detail"]
            .as_str()
            .unwrap()
            .contains("refused by the agent"),
        "{c}"
    );
    assert_no_stress_cgroups();
}
