//! The image under a real OCI runtime (podman + runc from Debian) with exactly the
//! manifests' pod templates (tests/src/container.rs reads them): the agent's
//! DaemonSet pod on a namespace node, the coordinator's Deployment pod, experiments
//! through the CLI, a SIGKILLed agent container and then its whole pod (container and
//! runtime monitor), its init container's cleanup, and
//! the agent's capability list measured by removing each capability in turn.
//!
//! These tests own the node's cgroup roots (a removed CAP_DAC_OVERRIDE shows only
//! where faultline's parent cgroup does not exist yet), so they run alone, after
//! the others: `cargo xtask test` runs them with `--ignored --test-threads=1`.
use std::{path::Path, sync::Arc, time::Duration};

use faultline_tests::{
    checks::faultline_leftovers,
    container::{Containers, Seccomp},
    fleet::{Fleet, NODE_IFACE, Options, Role},
};
use serde_json::Value;

/// faultline's parent cgroups in every hierarchy of this node (v1 and v2).
fn faultline_parents() -> Vec<std::path::PathBuf> {
    ["cpu", "memory", "cpuacct", "unified", ""]
        .iter()
        .map(|h| Path::new("/sys/fs/cgroup").join(h).join("faultline"))
        .filter(|p| p.is_dir())
        .collect()
}

/// faultline's stress cgroups left on this node.
fn stress_groups() -> Vec<String> {
    faultline_parents()
        .iter()
        .flat_map(|p| std::fs::read_dir(p).into_iter().flatten().flatten())
        .filter(|e| e.path().is_dir())
        .map(|e| e.path().display().to_string())
        .collect()
}

fn container_fleet(containers: Containers, wait: bool) -> Fleet {
    Fleet::build(Options {
        containers: Some(Arc::new(containers)),
        wait_connected: wait,
        ..Options::default()
    })
}

/// `faultline run ... --wait -o json` to its end: the exit code and the experiment.
fn run(fleet: &Fleet, line: &str) -> (Option<i32>, Value) {
    let (code, events) = fleet.watch_run(Role::Operator, line).finish();
    let id = events
        .iter()
        .find_map(|e| e["experiment"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("no experiment in the run's events: {:?}", events.first()));
    (code, fleet.experiment(&id))
}

/// Starts `line` and returns its event stream once the fault is applied.
fn applied(fleet: &Fleet, line: &str) -> faultline_tests::fleet::RunEvents {
    let mut watch = fleet.watch_run(Role::Operator, line);
    watch.until(|e| {
        e["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("applied on"))
    });
    watch
}

#[test]
#[ignore = "owns the cgroup roots: cargo xtask test runs it alone, after the others"]
fn the_images_run_experiments_under_the_manifests_security_contexts_and_a_killed_agent_leaves_nothing()
 {
    let mut fleet = container_fleet(Containers::from_manifests(), true);

    let (code, e) = run(
        &fleet,
        "run --node node-1 --fault loss --percent 1 --duration 4s --baseline 2s",
    );
    assert_eq!(code, Some(0), "loss in containers: {e}");
    assert_eq!(e["outcome"]["verdict"], "passed", "{e}");
    let (code, e) = run(
        &fleet,
        "run --node node-1 --fault cpu --percent 10 --duration 4s --baseline 2s",
    );
    assert_eq!(code, Some(0), "cpu in containers: {e}");
    assert_eq!(e["outcome"]["verdict"], "passed", "{e}");

    // SIGKILL of the agent's container while a CPU stress runs: the PID namespace
    // goes with it (stressors included), the TCX links with their process; only
    // the emptied stress cgroups stay, for the init container to remove.
    let watch = applied(
        &fleet,
        "run --node node-1 --fault cpu --percent 10 --duration 40s --baseline 2s",
    );
    assert!(
        !stress_groups().is_empty(),
        "no stress cgroup while the fault runs"
    );
    let agent = fleet.container_name("node-1");
    fleet.containers().podman.kill(&agent, "KILL");
    let status = fleet.stop_agent(0, libc::SIGKILL);
    println!("agent container after SIGKILL: {status}");
    let (_, events) = watch.finish();
    println!(
        "the run ended with {:?}",
        events.last().map(|e| &e["message"])
    );
    let node = &fleet.nodes[0];
    let left = faultline_leftovers(&node.ns, NODE_IFACE);
    assert!(left.is_empty(), "a killed agent's container left: {left:?}");
    let stressors = std::process::Command::new("pgrep")
        .args(["-f", "faultline-agent __stressor"])
        .output()
        .expect("pgrep");
    assert!(
        stressors.stdout.is_empty(),
        "stressors outlived their container: {}",
        String::from_utf8_lossy(&stressors.stdout)
    );
    let (ok, out) = fleet.run_cleanup_container(0);
    assert!(ok, "the init container failed: {out}");
    println!("init container: {}", out.trim());
    assert_eq!(
        stress_groups(),
        Vec::<String>::new(),
        "after the init container"
    );

    // The pod comes back, as the DaemonSet's would: the node is usable again.
    fleet.start_agent(0);
    fleet.wait_connected(1, Duration::from_secs(20));
    let (code, e) = run(
        &fleet,
        "run --node node-1 --fault loss --percent 1 --duration 2s --baseline 2s",
    );
    assert_eq!(code, Some(0), "loss after the restart: {e}");

    // Then the runtime's whole pod, during a network fault: the agent's container
    // and its monitor SIGKILLed together (podman records no exit, runs no hook).
    let watch = applied(
        &fleet,
        "run --node node-1 --fault loss --percent 1 --duration 40s --baseline 2s",
    );
    let pod = fleet.agent_pod(0);
    let killed = fleet.containers().podman.kill_pod(&pod);
    println!("pod {pod}: {killed} processes SIGKILLed");
    let _ = fleet.stop_agent(0, libc::SIGKILL);
    let (_, events) = watch.finish();
    println!(
        "the run ended with {:?}",
        events.last().map(|e| &e["message"])
    );
    let left = faultline_leftovers(&fleet.nodes[0].ns, NODE_IFACE);
    assert!(left.is_empty(), "a killed agent pod left: {left:?}");
    let (ok, out) = fleet.run_cleanup_container(0);
    assert!(ok, "the init container after the pod's kill failed: {out}");
    assert_eq!(
        stress_groups(),
        Vec::<String>::new(),
        "after the pod's kill"
    );
}

/// Which fault shows each capability the agent's pod adds is needed. A capability
/// the manifest adds without a row here is unproved, and fails the test.
const NEEDED_BY: [(&str, &str); 4] = [
    ("BPF", "loss --percent 1"),
    ("PERFMON", "loss --percent 1"),
    ("NET_ADMIN", "loss --percent 1"),
    ("DAC_OVERRIDE", "cpu --percent 10"),
];

/// Runs `containers` (the manifests with one thing taken away) until the agent
/// fails at start or `fault` fails, and returns how; panics unless the failure
/// names `name` (what was taken away).
fn what_fails_without(containers: Containers, name: &str, fault: &str) -> String {
    // Where faultline's parent cgroups exist, creating one needs no capability:
    // start from a node without them, as a fresh node is.
    for p in faultline_parents() {
        let _ = std::fs::remove_dir(&p);
    }
    let mut fleet = container_fleet(containers, false);
    let until = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = fleet.agent_exited(0) {
            let log = fleet.log("node-1");
            assert!(
                log.contains(name),
                "without {name} the agent exited ({status}) without naming it:\n{log}"
            );
            let line = log.lines().rfind(|l| l.contains(name)).unwrap_or("");
            return format!("fails at start: {}", line.trim());
        }
        if fleet.connected() == 1 {
            let (code, e) = run(
                &fleet,
                &format!("run --node node-1 --fault {fault} --duration 3s --baseline 1s"),
            );
            assert_ne!(code, Some(0), "without {name}, {fault} passed: {e}");
            let message = e["outcome"]["message"].as_str().unwrap_or_default();
            assert!(
                message.contains(name),
                "without {name}, {fault} failed without naming it: {e}"
            );
            // The message's line that names it (a refused load carries the
            // verifier's log after it).
            let line = message
                .lines()
                .find(|l| l.contains(name))
                .unwrap_or(message);
            return format!("{fault} fails: {line}");
        }
        assert!(
            std::time::Instant::now() < until,
            "without {name} the agent neither failed nor connected:\n{}",
            fleet.log("node-1")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
#[ignore = "owns the cgroup roots: cargo xtask test runs it alone, after the others"]
fn each_capability_the_agent_pod_adds_is_needed_and_its_absence_is_named() {
    let base = Containers::from_manifests();
    let mut table = Vec::new();
    for cap in base.agent.capabilities.clone() {
        let fault = NEEDED_BY
            .iter()
            .find(|(c, _)| *c == cap)
            .map(|(_, f)| *f)
            .unwrap_or_else(|| panic!("the manifest adds {cap}, which no row proves needed"));
        let mut without = base.clone();
        without.agent.capabilities.retain(|c| *c != cap);
        let name = format!("CAP_{cap}");
        table.push((name.clone(), what_fails_without(without, &name, fault)));
    }
    // The shipped seccomp profile is the runtime's default plus bpf(2) for CAP_BPF:
    // with the default alone, the agent is refused and says why.
    assert_eq!(
        base.agent.seccomp,
        Seccomp::Localhost("faultline-agent.json".into()),
        "the agent's pod names the shipped profile"
    );
    let mut default_profile = base.clone();
    default_profile.agent.seccomp = Seccomp::RuntimeDefault;
    table.push((
        "the seccomp addition".into(),
        what_fails_without(default_profile, "seccomp", "loss --percent 1"),
    ));
    println!("taken away -> what failed:");
    for (what, failure) in &table {
        println!("  {what}: {failure}");
    }
    assert_eq!(table.len(), NEEDED_BY.len() + 1, "{table:?}");
}
