//! faultline fails closed under its own failures, end to end with the real
//! coordinator, agents and CLI: a stop with agents connected, a restart after an
//! abort, a full disk under the store, a second agent with a node's certificate, a
//! restart with a slot due, hostile input (redirects, deep YAML, bad filters), and
//! the small promises around them. Each test reproduces one defect an adversarial
//! run found, and fails on the code that had it.
use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use faultline_tests::{
    checks::faultline_leftovers,
    fleet::{Fleet, NODE_IFACE, Options, Role},
    lab::finish,
    workload::Responder,
};
use serde_json::Value;

fn text(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn json(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(out)))
}

fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Writes `spec` into the fleet's directory; returns its path.
fn spec_file(fleet: &Fleet, name: &str, spec: &str) -> String {
    let path = fleet.dir.join(format!("{name}.yaml"));
    std::fs::write(&path, spec).expect("write spec");
    path.display().to_string()
}

/// The id of the running experiment that is in its fault phase.
fn in_fault(fleet: &Fleet) -> String {
    wait_until(
        "an experiment in its fault phase",
        Duration::from_secs(60),
        || {
            let list = json(&fleet.cli(Role::Viewer, &["experiments", "-o", "json"]));
            list.as_array()?
                .iter()
                .find(|e| e["phase"] == "fault")
                .map(|e| e["id"].as_str().unwrap().to_owned())
        },
    )
}

/// The lines of a process's log that contain `needle`.
fn count(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

#[test]
fn sigterm_with_agents_connected_ends_every_effect_and_exits_within_five_seconds() {
    // A scheduled loss fault on node-1, long enough to be running at the stop.
    let schedule = "starting_deadline: 30s\nschedule:\n  - name: micro-loss\n    every: 10s\n    \
                    scenario: packet_loss\n    target_node: node-1\n    packet_loss: 1%\n    duration: 40s\n";
    let dir = faultline_tests::TempPath::dir("faultline-stop");
    let file = dir.join("schedule.yaml");
    std::fs::write(&file, schedule).unwrap();
    let file = file.display().to_string();
    let mut fleet = Fleet::build(Options {
        nodes: 2,
        coordinator_args: &["--schedule", &file, "--baseline", "1s"],
        ..Options::default()
    });
    let id = in_fault(&fleet);
    wait_until(
        "the loss in node-1's kernel",
        Duration::from_secs(10),
        || (!faultline_leftovers(&fleet.nodes[0].ns, NODE_IFACE).is_empty()).then_some(()),
    );

    let (status, took) = fleet.stop_coordinator(libc::SIGTERM, Duration::from_secs(30));
    eprintln!("coordinator exit after SIGTERM with 2 agents connected: {took:?}");
    assert!(status.success(), "{status:?}: {}", fleet.log("coordinator"));
    assert!(took < Duration::from_secs(5), "{took:?}");
    // Every effect is gone when it has exited, not a lease TTL later.
    let left = faultline_leftovers(&fleet.nodes[0].ns, NODE_IFACE);
    assert!(left.is_empty(), "{left:?}");
    // The scheduler stopped with the signal: no slot decided after it.
    let log = fleet.log("coordinator");
    let after = log
        .split("stopping: no new experiment starts")
        .nth(1)
        .expect("stop logged");
    assert_eq!(count(after, "schedule slot"), 0, "{after}");
    assert!(after.contains("coordinator stopped"), "{after}");
    // Both agents were told and let go of the session.
    for n in ["node-1", "node-2"] {
        let log = fleet.log(n);
        assert!(
            log.contains("the coordinator is shutting down"),
            "{n}: {log}"
        );
    }

    // The store says what happened to the experiment, and nothing is left running.
    fleet.start_coordinator();
    fleet.wait_connected(2, Duration::from_secs(20));
    let e = fleet.experiment(&id);
    assert_eq!(e["phase"], "interrupted", "{e}");
    assert!(
        e["result"].as_str().unwrap().contains("shutting down"),
        "{e}"
    );
}

#[test]
fn the_kill_switch_outlives_a_crash_and_only_an_admin_lifts_it() {
    let mut fleet = Fleet::new(1, &[], &[]);
    let out = fleet.cli(Role::Operator, &["abort", "--reason", "page from on-call"]);
    assert!(out.status.success(), "{}", text(&out));
    fleet.kill_coordinator();
    fleet.start_coordinator();
    fleet.wait_connected(1, Duration::from_secs(20));

    let status = json(&fleet.cli(Role::Viewer, &["status", "--no-readiness", "-o", "json"]));
    assert_eq!(
        status["kill_switch_engaged"], true,
        "still engaged after the restart: {status}"
    );
    let run = fleet.cli_line(
        Role::Operator,
        &format!("run --node node-1 --fault loss --iface {NODE_IFACE} --percent 0.5 --duration 1s --baseline 1s"),
    );
    assert_eq!(run.status.code(), Some(3), "{}", text(&run));
    assert!(
        text(&run).contains("an admin must clear it first (faultline clear-kill-switch)"),
        "{}",
        text(&run)
    );
    // An operator cannot lift it; an admin can, and that is in the audit log.
    let op = fleet.cli(Role::Operator, &["clear-kill-switch"]);
    assert_eq!(op.status.code(), Some(3), "{}", text(&op));
    let audit = |fleet: &Fleet| json(&fleet.cli(Role::Admin, &["audit", "-o", "json"]));
    let clears = |a: &Value| {
        a.as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == "kill_switch.clear")
            .count()
    };
    assert_eq!(clears(&audit(&fleet)), 0);
    let admin = fleet.cli(Role::Admin, &["clear-kill-switch"]);
    assert!(admin.status.success(), "{}", text(&admin));
    let a = audit(&fleet);
    assert_eq!(clears(&a), 1, "{a}");
    // Cleared stays cleared across a restart.
    fleet.kill_coordinator();
    fleet.start_coordinator();
    fleet.wait_connected(1, Duration::from_secs(20));
    let run = fleet.cli_line(
        Role::Operator,
        &format!("run --node node-1 --fault loss --iface {NODE_IFACE} --percent 0.5 --duration 1s --baseline 1s --recovery 10s --wait"),
    );
    assert_eq!(run.status.code(), Some(0), "{}", text(&run));
}

/// A second `faultline-agent run` for node-1 in node-1's namespace.
fn duplicate_agent(fleet: &Fleet, state_dir: &std::path::Path) -> std::process::Child {
    let tls = fleet.dir.join("tls");
    Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", fleet.nodes[0].ns.name))
        .arg(faultline_tests::agent_binary())
        .arg("--state-dir")
        .arg(state_dir)
        .arg("run")
        .args([
            "--coordinator",
            &format!("https://{}:7443", fleet.nodes[0].ctl_addr),
        ])
        .args(["--tls-server-name", "faultline-coordinator"])
        .args(["--node-name", "node-1"])
        .arg("--ca")
        .arg(tls.join("ca.pem"))
        .arg("--cert")
        .arg(tls.join("node-1.pem"))
        .arg("--key")
        .arg(tls.join("node-1.key"))
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn duplicate agent")
}

fn connected(fleet: &Fleet, node: &str) -> bool {
    let out = fleet.cli(Role::Viewer, &["nodes", "-o", "json"]);
    out.status.success()
        && json(&out)
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["name"] == node && n["connected"] == true)
}

#[test]
fn a_second_agent_with_a_nodes_identity_never_cuts_off_the_live_one() {
    let fleet = Fleet::new(1, &[], &[]);
    // One daemon per state directory: the second is refused before it touches
    // anything, and the first one's pid file stays.
    let state = fleet.agent_state_dir(0);
    let out = duplicate_agent(&fleet, &state).wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "another faultline-agent daemon (pid {}) runs with state directory",
            fleet.agent_pid(0)
        )),
        "{}",
        text(&out)
    );
    let pid = std::fs::read_to_string(state.join("agent.pid")).unwrap();
    assert_eq!(pid.trim(), fleet.agent_pid(0).to_string());

    // A copy of node-1's certificate elsewhere, for 5 s: refused while node-1's own
    // agent is live; node-1 stays connected throughout and after.
    let other = faultline_tests::TempPath::dir("faultline-dup");
    let dup = duplicate_agent(&fleet, &other);
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(5) {
        assert!(
            connected(&fleet, "node-1"),
            "node-1 dropped while a copy ran"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(dup.id() as i32, libc::SIGTERM) };
    let out = dup.wait_with_output().unwrap();
    assert!(
        text(&out).contains("already has a live agent session"),
        "{}",
        text(&out)
    );
    assert!(connected(&fleet, "node-1"));
    let log = fleet.log("coordinator");
    assert!(count(&log, "a second agent with node-1's certificate is refused") >= 1);

    // The live agent frozen past the session's staleness: a newer session takes
    // over, and the old one is told so when it wakes; once the newer one is gone,
    // the real agent has the node back within seconds.
    let real = fleet.agent_pid(0);
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(real, libc::SIGSTOP) };
    std::thread::sleep(Duration::from_secs(4));
    let mut dup = duplicate_agent(&fleet, &other);
    wait_until(
        "the copy to take the silent node",
        Duration::from_secs(15),
        || {
            fleet
                .log("coordinator")
                .contains("a new session replaces the node's silent one")
                .then_some(())
        },
    );
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(real, libc::SIGCONT) };
    std::thread::sleep(Duration::from_secs(2));
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(dup.id() as i32, libc::SIGTERM) };
    let _ = dup.wait();
    let back = wait_until("node-1's own agent back", Duration::from_secs(15), || {
        connected(&fleet, "node-1").then_some(Instant::now())
    });
    let _ = back;
    let run = fleet.cli_line(
        Role::Operator,
        &format!("run --node node-1 --fault loss --iface {NODE_IFACE} --percent 0.5 --duration 1s --baseline 1s --recovery 10s --wait"),
    );
    assert_eq!(run.status.code(), Some(0), "{}", text(&run));
    let own = fleet.log("node-1");
    assert!(own.contains("replaced"), "the real agent was told: {own}");
}

#[test]
fn a_fault_whose_hook_failed_is_not_a_pass() {
    let fleet = Fleet::new(1, &[], &[]);
    let run = finish(fleet.cli_line(
        Role::Operator,
        "run --node node-1 --fault cache --hook h=http://127.0.0.1:1/x --duration 3s \
         --baseline 1s --recovery 10s --wait -o json",
    ));
    assert_eq!(run.code, Some(1), "{}", run.outcome);
    assert_eq!(run.outcome["verdict"], "failed", "{}", run.outcome);
    let msg = run.outcome["message"].as_str().unwrap();
    assert!(msg.contains("hook(s) failed: h"), "{msg}");
}

#[test]
fn a_redirect_is_never_followed_to_an_address_the_allow_list_refuses() {
    let fleet = Fleet::new(1, &[], &[]);
    let node = &fleet.nodes[0];
    // What nobody may call from node-1: the coordinator's side of its link (not
    // loopback, not in any allow-list) — and a node-local endpoint redirecting there.
    let forbidden = Responder::new(
        Some(&fleet.ctl),
        &format!("{}:0", node.ctl_addr),
        "204 No Content",
    );
    let to = format!("http://{}:{}/stolen", node.ctl_addr, forbidden.port);
    let redirect = Responder::new(
        Some(&node.ns),
        "127.0.0.1:0",
        &format!("302 Found\r\nlocation: {to}"),
    );
    let local = format!("http://127.0.0.1:{}/x", redirect.port);

    // Named directly, the address is refused where the request enters.
    let direct = fleet.cli_line(
        Role::Operator,
        &format!("run --node node-1 --fault cache --hook h={to} --duration 2s --baseline 1s"),
    );
    assert_eq!(direct.status.code(), Some(2), "{}", text(&direct));

    // A hook: called, not followed; the fault fails naming the redirect.
    let run = finish(fleet.cli_line(
        Role::Operator,
        &format!("run --node node-1 --fault cache --hook h={local} --duration 2s --baseline 1s --recovery 10s --wait -o json"),
    ));
    assert_eq!(run.outcome["verdict"], "failed", "{}", run.outcome);
    assert!(
        run.outcome["message"]
            .as_str()
            .unwrap()
            .contains("hook(s) failed: h"),
        "{}",
        run.outcome
    );
    assert!(
        run.outcome["message"]
            .as_str()
            .unwrap()
            .contains("not followed"),
        "{}",
        run.outcome
    );

    // A node-side health probe and the agent guard's probe.
    let probe = spec_file(
        &fleet,
        "probe",
        &format!(
            "scenario: cpu_stress\ntarget_node: node-1\ncpu_stress: 5%\nduration: 2s\nbaseline: 1s\n\
             health: {{http: [{{name: local, url: '{local}', from: node, rate: 20/s}}]}}\n"
        ),
    );
    let out = fleet.cli(
        Role::Operator,
        &["run", &probe, "--recovery", "5s", "--wait"],
    );
    eprintln!("node-side probe run: {}", text(&out));
    let guard = spec_file(
        &fleet,
        "guard",
        &format!(
            "scenario: cpu_stress\ntarget_node: node-1\ncpu_stress: 5%\nduration: 3s\nbaseline: 1s\n\
             agent_guard:\n  http: {{url: '{local}', rate: 20/s}}\n  error_rate_above: 99%\n  window: 1s\n"
        ),
    );
    let out = fleet.cli(
        Role::Operator,
        &["run", &guard, "--recovery", "5s", "--wait"],
    );
    eprintln!("agent guard run: {}", text(&out));

    // The coordinator's own probe, redirected from the coordinator's loopback to
    // node-1's address.
    let node_side = Responder::new(
        Some(&node.ns),
        &format!("{}:0", node.addr),
        "204 No Content",
    );
    let coord_redirect = Responder::new(
        Some(&fleet.ctl),
        "127.0.0.1:0",
        &format!(
            "302 Found\r\nlocation: http://{}:{}/stolen",
            node.addr, node_side.port
        ),
    );
    let coord = spec_file(
        &fleet,
        "coord",
        &format!(
            "scenario: cpu_stress\ntarget_node: node-1\ncpu_stress: 5%\nduration: 2s\nbaseline: 1s\n\
             health: {{http: [{{name: svc, url: 'http://127.0.0.1:{}/x', rate: 20/s}}]}}\n",
            coord_redirect.port
        ),
    );
    let out = fleet.cli(
        Role::Operator,
        &["run", &coord, "--recovery", "5s", "--wait"],
    );
    eprintln!("coordinator probe run: {}", text(&out));

    eprintln!(
        "redirects answered: node-local {}, coordinator-local {}; requests that reached the \
         refused addresses: {} and {}",
        redirect.served(),
        coord_redirect.served(),
        forbidden.served(),
        node_side.served()
    );
    assert!(
        redirect.served() >= 10,
        "the hook and both probes called it"
    );
    assert!(
        coord_redirect.served() >= 5,
        "the coordinator's probe called it"
    );
    assert_eq!(
        forbidden.served(),
        0,
        "a redirect was followed from the agent"
    );
    assert_eq!(
        node_side.served(),
        0,
        "a redirect was followed from the coordinator"
    );
}

#[test]
fn an_outcome_survives_a_full_disk_under_the_store_and_starts_wait_for_space() {
    let mut fleet = Fleet::build(Options {
        store_tmpfs: Some("16m"),
        ..Options::default()
    });
    let run = fleet.watch_run(
        Role::Operator,
        &format!("run --node node-1 --fault loss --iface {NODE_IFACE} --percent 0.5 --duration 4s --baseline 1s --recovery 10s"),
    );
    let id = in_fault(&fleet);
    // Fill the store's disk.
    let filler = fleet.dir.join("store/filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0xA5u8; 1 << 20];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }
    let (code, events) = run.finish();
    let outcome = events
        .iter()
        .rev()
        .find_map(|e| e.get("outcome").cloned())
        .unwrap_or(Value::Null);
    assert_eq!(code, Some(0), "{outcome}");
    // The disk is full: no new experiment starts, and the log said so once.
    std::thread::sleep(Duration::from_secs(3));
    let refused = fleet.cli_line(
        Role::Operator,
        &format!("run --node node-1 --fault loss --iface {NODE_IFACE} --percent 0.5 --duration 2s --baseline 1s"),
    );
    assert_eq!(refused.status.code(), Some(3), "{}", text(&refused));
    assert!(
        text(&refused).contains("the store cannot write"),
        "{}",
        text(&refused)
    );
    let log = fleet.log("coordinator");
    assert_eq!(count(&log, "store: a write failed"), 1, "{log}");

    // Space returns: the outcome lands, by itself.
    std::fs::remove_file(&filler).unwrap();
    let t0 = Instant::now();
    let e = wait_until("the outcome written", Duration::from_secs(10), || {
        let e = fleet.experiment(&id);
        (e["phase"] == "completed").then_some(e)
    });
    let took = t0.elapsed();
    eprintln!("outcome written {took:?} after space returned");
    assert_eq!(e["outcome"]["verdict"], "passed", "{e}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert_eq!(
        count(&fleet.log("coordinator"), "store: writes land again"),
        1
    );
    let run = fleet.cli_line(
        Role::Operator,
        &format!("run --node node-1 --fault loss --iface {NODE_IFACE} --percent 0.5 --duration 1s --baseline 1s --recovery 10s --wait"),
    );
    assert_eq!(run.status.code(), Some(0), "{}", text(&run));
    // A restart does not relabel it.
    fleet.kill_coordinator();
    fleet.start_coordinator();
    assert_eq!(fleet.experiment(&id)["phase"], "completed");
}

#[test]
fn a_slot_due_at_a_restart_waits_for_its_agents_instead_of_skipping() {
    let schedule = "starting_deadline: 60s\nschedule:\n  - name: micro\n    every: 15s\n    \
                    scenario: packet_loss\n    target_node: node-1\n    packet_loss: 0.5%\n    duration: 1s\n";
    let dir = faultline_tests::TempPath::dir("faultline-catchup");
    let file = dir.join("schedule.yaml");
    std::fs::write(&file, schedule).unwrap();
    let file = file.display().to_string();
    let mut fleet = Fleet::build(Options {
        coordinator_args: &["--schedule", &file, "--baseline", "1s", "--recovery", "10s"],
        ..Options::default()
    });
    let next = wait_until("a first slot decided", Duration::from_secs(30), || {
        let runs = json(&fleet.cli(Role::Viewer, &["-o", "json", "schedule", "runs"]));
        if runs.as_array()?.is_empty() {
            return None;
        }
        let list = json(&fleet.cli(Role::Viewer, &["-o", "json", "schedule", "list"]));
        list["schedules"][0]["next_run_ms"].as_i64()
    });
    // Wait for the first run to end, then take the coordinator down across the next
    // slot, with the agent unable to reconnect for a while after the restart.
    wait_until("the first run ended", Duration::from_secs(30), || {
        let list = json(&fleet.cli(Role::Viewer, &["experiments", "-o", "json"]));
        list.as_array()?
            .iter()
            .all(|e| ["completed", "failed", "aborted"].contains(&e["phase"].as_str().unwrap()))
            .then_some(())
    });
    fleet.kill_coordinator();
    let agent = fleet.agent_pid(0);
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(agent, libc::SIGSTOP) };
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    };
    while now_ms() < next + 1000 {
        std::thread::sleep(Duration::from_millis(100));
    }
    fleet.start_coordinator();
    std::thread::sleep(Duration::from_secs(3));
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(agent, libc::SIGCONT) };
    let slot = wait_until("the overdue slot decided", Duration::from_secs(30), || {
        let runs = json(&fleet.cli(Role::Viewer, &["-o", "json", "schedule", "runs"]));
        runs.as_array()?
            .iter()
            .find(|r| r["slot_ms"].as_i64() == Some(next))
            .cloned()
    });
    assert_eq!(slot["status"], "started", "{slot}");
    assert!(
        fleet
            .log("coordinator")
            .contains("waiting for its agents to reconnect"),
        "{}",
        fleet.log("coordinator")
    );
}

/// A ChaosService client for `role`, inside the coordinator's namespace (to send
/// what the CLI would refuse before sending), on a runtime of its own.
fn with_client<T: Send + 'static>(
    fleet: &Fleet,
    role: Role,
    f: impl AsyncFnOnce(
        faultline_proto::v1::chaos_service_client::ChaosServiceClient<tonic::transport::Channel>,
        String,
    ) -> T
    + Send
    + 'static,
) -> T {
    let ca = std::fs::read(fleet.dir.join("tls/ca.pem")).unwrap();
    let token = fleet.token(role).to_owned();
    fleet.ctl.enter(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let tls = tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(ca))
                .domain_name("faultline-coordinator");
            let channel = tonic::transport::Endpoint::from_static("https://127.0.0.1:7443")
                .tls_config(tls)
                .unwrap()
                .connect()
                .await
                .unwrap();
            f(
                faultline_proto::v1::chaos_service_client::ChaosServiceClient::new(channel),
                format!("Bearer {token}"),
            )
            .await
        })
    })
}

fn authed<T>(msg: T, bearer: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", bearer.parse().unwrap());
    r
}

#[test]
fn a_deeply_nested_or_huge_spec_is_refused_fast_and_the_coordinator_stays_responsive() {
    use faultline_proto::v1::{ListNodesRequest, StartRequest};
    let fleet = Fleet::new(1, &[], &[]);
    // 100,000 levels (the size the probe used), and a document at both bounds: as
    // large as accepted, nested as deep as accepted, all over.
    let deep = format!("scenario: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
    let unit = format!("{}a{}, ", "[".repeat(30), "]".repeat(30));
    let mut at_bound = String::from("scenario: cpu_stress\ncomponents: [");
    while at_bound.len() + unit.len() + 2 < faultline_proto::spec::MAX_YAML_BYTES {
        at_bound.push_str(&unit);
    }
    at_bound.push_str("]\n");
    let bound_len = at_bound.len();
    let deep_file = deep.clone();
    let (times, nodes_ms) = with_client(&fleet, Role::Operator, async move |client, bearer| {
        // Two of each at once, while the fleet is listed every 50 ms.
        let mut starts = Vec::new();
        for spec in [&deep, &deep, &at_bound, &at_bound] {
            let (mut c, b, spec) = (client.clone(), bearer.clone(), spec.clone());
            starts.push(tokio::spawn(async move {
                let t0 = Instant::now();
                let r = c
                    .start(authed(
                        StartRequest {
                            spec_yaml: spec,
                            ..Default::default()
                        },
                        &b,
                    ))
                    .await;
                let Err(e) = r else {
                    panic!("a hostile spec was accepted")
                };
                (t0.elapsed(), e.code(), e.message().to_owned())
            }));
        }
        let mut nodes_ms = Vec::new();
        while starts.iter().any(|s| !s.is_finished()) || nodes_ms.len() < 5 {
            let t0 = Instant::now();
            let n = client
                .clone()
                .list_nodes(authed(ListNodesRequest {}, &bearer))
                .await
                .unwrap()
                .into_inner();
            assert!(n.nodes.iter().all(|n| n.connected), "{n:?}");
            nodes_ms.push(t0.elapsed().as_secs_f64() * 1e3);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut times = Vec::new();
        for s in starts {
            times.push(s.await.unwrap());
        }
        (times, nodes_ms)
    });
    let worst_nodes = nodes_ms.iter().copied().fold(0.0, f64::max);
    eprintln!(
        "deep spec refused in {:?} and {:?}; spec at the bounds ({} bytes) refused in {:?} and \
         {:?}; nodes latency meanwhile: worst {worst_nodes:.1} ms over {} calls",
        times[0].0,
        times[1].0,
        bound_len,
        times[2].0,
        times[3].0,
        nodes_ms.len()
    );
    for (took, code, msg) in &times[..2] {
        assert_eq!(*code, tonic::Code::InvalidArgument, "{msg}");
        assert!(msg.contains("levels deep"), "{msg}");
        assert!(*took < Duration::from_secs(1), "{took:?}");
    }
    for (took, code, msg) in &times[2..] {
        assert_eq!(*code, tonic::Code::InvalidArgument, "{msg}");
        assert!(*took < Duration::from_secs(2), "{took:?}");
    }
    assert!(worst_nodes < 1000.0, "{nodes_ms:?}");
    assert!(connected(&fleet, "node-1"));
    assert!(!fleet.log("coordinator").contains("agent disconnected"));
    // The CLI refuses it too, before sending.
    let path = spec_file(&fleet, "deep", &deep_file);
    let out = fleet.cli(Role::Operator, &["run", &path]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("levels deep"), "{}", text(&out));
}

#[test]
fn bad_filter_and_cgroup_fields_are_refused_where_the_request_enters() {
    use faultline_proto::v1::{
        FaultSpec, LossFault, StartRequest, TrafficFilter, fault_spec::Fault,
    };
    let fleet = Fleet::new(1, &[], &[]);
    let net =
        format!("--node node-1 --fault loss --iface {NODE_IFACE} --percent 0.5 --duration 2s");
    for (args, field) in [
        (format!("{net} --port 70000"), "filter.port"),
        (format!("{net} --proto 999"), "filter.protocol"),
        (format!("{net} --src 10.0.0.0/33"), "filter.src"),
        (format!("{net} --dport 5-1"), "filter.dport"),
        (
            format!(
                "--node node-1 --fault loss --iface {NODE_IFACE} --percent 1e-320 --duration 2s"
            ),
            "resolution",
        ),
        (
            "--node node-1 --fault gc --target-cgroup ../../etc --duration 2s".to_owned(),
            "target_cgroup",
        ),
    ] {
        let out = fleet.cli_line(Role::Operator, &format!("run {args}"));
        assert_eq!(out.status.code(), Some(2), "{args}: {}", text(&out));
        assert!(text(&out).contains(field), "{args}: {}", text(&out));
    }
    // The same through the contract itself (no spec: the typed order).
    let code = with_client(&fleet, Role::Operator, async |mut c, bearer| {
        let fault = FaultSpec {
            duration: Some(Duration::from_secs(2).try_into().unwrap()),
            fault: Some(Fault::Loss(LossFault {
                interface: NODE_IFACE.into(),
                percent: 0.5,
                filter: Some(TrafficFilter {
                    port: "70000".into(),
                    ..Default::default()
                }),
                ..Default::default()
            })),
        };
        let req = StartRequest {
            nodes: vec!["node-1".into()],
            fault: Some(fault),
            ..Default::default()
        };
        c.start(authed(req, &bearer))
            .await
            .err()
            .map(|e| (e.code(), e.message().to_owned()))
    });
    let (code, msg) = code.expect("refused");
    assert_eq!(code, tonic::Code::InvalidArgument, "{msg}");
    assert!(msg.contains("filter.port"), "{msg}");
    // Nothing started: no experiment, no order reached the agent.
    let list = json(&fleet.cli(Role::Viewer, &["experiments", "-o", "json"]));
    assert_eq!(list.as_array().unwrap().len(), 0, "{list}");
    assert!(
        !fleet.log("node-1").contains("applying"),
        "{}",
        fleet.log("node-1")
    );
}

#[test]
fn a_store_that_cannot_be_written_or_is_damaged_is_refused_at_start() {
    let dir = faultline_tests::TempPath::dir("faultline-store");
    let coordinator = faultline_tests::agent::binary("faultline-coordinator");
    let ok = |cmd: &mut Command| {
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{cmd:?}: {}", text(&out));
    };
    ok(Command::new(&coordinator)
        .args(["certs", "init", "--dir"])
        .arg(dir.join("tls")));
    ok(Command::new(&coordinator)
        .args([
            "tokens", "add", "--name", "ci", "--role", "operator", "--file",
        ])
        .arg(dir.join("tokens.yaml")));
    // `serve` on `store` for at most `timeout`, then SIGTERM: what it printed.
    let serve = |store: &std::path::Path, timeout: Duration| {
        let mut child = Command::new(&coordinator)
            .args(["serve", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])
            .arg("--tls-dir")
            .arg(dir.join("tls"))
            .arg("--tokens")
            .arg(dir.join("tokens.yaml"))
            .arg("--store")
            .arg(store.join("coordinator.db"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let t0 = Instant::now();
        while matches!(child.try_wait(), Ok(None)) && t0.elapsed() < timeout {
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: kill(2) on our child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        child.wait_with_output().unwrap()
    };
    // A healthy store serves (until stopped): the three below start as one.
    let fresh = |name: &str| {
        let store = dir.join(name);
        std::fs::create_dir_all(&store).unwrap();
        let out = serve(&store, Duration::from_secs(2));
        assert!(text(&out).contains("coordinator serving"), "{}", text(&out));
        store
    };
    let refused = |store: &std::path::Path, why: &str| {
        let out = serve(store, Duration::from_secs(10));
        assert_eq!(out.status.code(), Some(1), "{why}: {}", text(&out));
        assert!(
            !text(&out).contains("coordinator serving"),
            "{why}: {}",
            text(&out)
        );
        text(&out)
    };

    // An immutable store file (what a read-only file is to a coordinator that is
    // not root): it used to serve and fail every run.
    let store = fresh("immutable");
    let db = store.join("coordinator.db");
    ok(Command::new("chattr").arg("+i").arg(&db));
    let out = refused(&store, "immutable");
    ok(Command::new("chattr").arg("-i").arg(&db));
    assert!(out.contains("cannot be written"), "{out}");

    // A read-only mount.
    let store = fresh("read-only");
    ok(Command::new("mount").arg("--bind").arg(&store).arg(&store));
    ok(Command::new("mount")
        .args(["-o", "remount,bind,ro"])
        .arg(&store));
    let out = refused(&store, "read-only mount");
    let _ = Command::new("umount").arg(&store).status();
    assert!(out.contains("cannot be written"), "{out}");

    // A damaged page (the last one: a table's root).
    let store = fresh("damaged");
    let db = store.join("coordinator.db");
    let mut bytes = std::fs::read(&db).unwrap();
    let page = 4096;
    let last = bytes.len() / page - 1;
    bytes[last * page..(last + 1) * page].fill(0x5A);
    std::fs::write(&db, bytes).unwrap();
    let out = refused(&store, "damaged");
    assert!(out.contains("failed its integrity check"), "{out}");
}

#[test]
fn the_small_promises_hold() {
    let mut fleet = Fleet::new(1, &[], &[]);
    // A reader that stops reading ends the CLI quietly (SIGPIPE), not with a panic.
    let mut child = fleet
        .cli_command(Role::Viewer, &["audit", "--since", "1d"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert!(!text(&out).contains("panicked"), "{}", text(&out));
    assert_ne!(out.status.code(), Some(101), "{}", text(&out));

    // A spec written with a byte-order mark runs.
    let bom = spec_file(
        &fleet,
        "bom",
        &format!(
            "\u{feff}scenario: packet_loss\ntarget_node: node-1\npacket_loss: 0.5%\ninterface: {NODE_IFACE}\nduration: 1s\nbaseline: 1s\n"
        ),
    );
    let out = fleet.cli(
        Role::Operator,
        &["run", &bom, "--recovery", "10s", "--wait"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // Control characters in an abort reason reach no terminal raw.
    let out = fleet.cli(Role::Operator, &["abort", "--reason", "\u{1b}[31mred\rx"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = fleet.cli(Role::Admin, &["audit"]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        !shown.contains('\u{1b}') && !shown.contains('\r'),
        "{shown:?}"
    );
    assert!(shown.contains("\\u{1b}[31mred\\rx"), "{shown}");
    let out = fleet.cli(Role::Admin, &["clear-kill-switch"]);
    assert!(out.status.success(), "{}", text(&out));

    // The dashboard names the command that exists.
    let (code, js) = fleet.http(None, "GET", "/ui/app.js");
    assert_eq!(code, 200);
    let js = js.as_str().unwrap();
    assert!(js.contains("faultline clear-kill-switch") && !js.contains("kill-switch clear"));

    // A token removed from the file stops working without a restart.
    let tokens = fleet.dir.join("tokens.yaml");
    let before = std::fs::read_to_string(&tokens).unwrap();
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&before).unwrap();
    let kept: Vec<serde_yaml_ng::Value> = doc["tokens"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter(|t| t["name"] != "dashboard")
        .cloned()
        .collect();
    let mut doc = doc.clone();
    doc["tokens"] = serde_yaml_ng::Value::Sequence(kept);
    std::fs::write(&tokens, serde_yaml_ng::to_string(&doc).unwrap()).unwrap();
    let out = fleet.cli(Role::Viewer, &["nodes"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains("unknown token"), "{}", text(&out));
    std::fs::write(&tokens, before).unwrap();
    let out = fleet.cli(Role::Viewer, &["nodes"]);
    assert!(out.status.success(), "{}", text(&out));

    // A tool's client certificate (cli.pem from `certs init`) is no agent identity.
    let tls = fleet.dir.join("tls");
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", fleet.nodes[0].ns.name))
        .arg(faultline_tests::agent_binary())
        .arg("--state-dir")
        .arg(fleet.dir.join("state-cli"))
        .arg("run")
        .args([
            "--coordinator",
            &format!("https://{}:7443", fleet.nodes[0].ctl_addr),
        ])
        .args([
            "--tls-server-name",
            "faultline-coordinator",
            "--node-name",
            "cli",
        ])
        .arg("--ca")
        .arg(tls.join("ca.pem"))
        .arg("--cert")
        .arg(tls.join("cli.pem"))
        .arg("--key")
        .arg(tls.join("cli.key"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(out.id() as i32, libc::SIGTERM) };
    let out = out.wait_with_output().unwrap();
    assert!(
        text(&out).contains("not an agent certificate"),
        "{}",
        text(&out)
    );
    let nodes = json(&fleet.cli(Role::Viewer, &["nodes", "-o", "json"]));
    assert!(
        nodes.as_array().unwrap().iter().all(|n| n["name"] != "cli"),
        "{nodes}"
    );

    // An agent that dies right after an order costs no 30 s wait.
    let mut run = fleet.watch_run(
        Role::Operator,
        "run --node node-1 --fault memory --percent 5 --duration 10s --baseline 1s --recovery 5s",
    );
    run.until(|e| e["message"] == "ordering the fault");
    let t0 = Instant::now();
    fleet.stop_agent(0, libc::SIGKILL);
    let (code, events) = run.finish();
    let took = t0.elapsed();
    let outcome = events
        .iter()
        .rev()
        .find_map(|e| e.get("outcome").cloned())
        .unwrap_or(Value::Null);
    eprintln!("an agent killed after the order: the experiment ended {took:?} later: {outcome}");
    assert_eq!(code, Some(1), "{outcome}");
    assert!(
        outcome["message"]
            .as_str()
            .unwrap_or("")
            .contains("disconnected before acknowledging")
            || outcome["message"].as_str().unwrap_or("").contains("lapsed"),
        "{outcome}"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
    fleet.start_agent(0);
}
