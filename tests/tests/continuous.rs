//! Continuous chaos end to end, with the real coordinator, agents and CLI: a schedule
//! slot fires once and a second entry due at the same instant is skipped with its
//! reason; reports, JUnit and the dashboard come from the store; a finding counts;
//! a game day lets two experiments run at once and its close ends them; a schedule
//! file over the limits is refused whole. (The scheduler's clock logic — exactly
//! once, restarts, blackouts, DST — is unit-tested with an injected clock in
//! coordinator/src/schedule/tests.rs.)
use std::time::{Duration, Instant};

use faultline_tests::{
    checks::faultline_leftovers,
    fleet::{Fleet, NODE_IFACE, Options, Role},
};
use serde_json::Value;

fn json(out: &std::process::Output) -> Value {
    assert!(
        out.status.success(),
        "exit {:?}: {}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn text(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<Value>) -> Value {
    let until = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

const SCHEDULE: &str = "\
starting_deadline: 30s
schedule:
  - name: micro-latency
    every: 20s
    scenario: latency_injection
    target_node: node-1
    latency: 5ms
    duration: 4s
  - name: micro-loss
    every: 20s
    scenario: packet_loss
    target_node: node-1
    packet_loss: 1%
    duration: 4s
  - name: yearly
    paused: true
    cron: '0 0 1 1 *'
    scenario: latency_injection
    target_node: node-1
    latency: 5ms
    duration: 4s
";

#[test]
fn schedules_reports_findings_game_days_and_the_dashboard() {
    let dir = faultline_tests::TempPath::dir("faultline-sched");
    let file = dir.join("schedule.yaml");
    std::fs::write(&file, SCHEDULE).unwrap();
    let file_arg = file.display().to_string();
    let fleet = Fleet::build(Options {
        nodes: 2,
        coordinator_args: &["--schedule", &file_arg, "--baseline", "1s"],
        ..Options::default()
    });

    // The two entries share a slot; the first starts, the second finds node-1 leased.
    let list = json(&fleet.cli(Role::Viewer, &["-o", "json", "schedule", "list"]));
    assert_eq!(list["schedules"].as_array().unwrap().len(), 3);
    let runs = wait_for("the first slot", Duration::from_secs(40), || {
        let r = json(&fleet.cli(Role::Viewer, &["-o", "json", "schedule", "runs"]));
        (r.as_array().unwrap().len() >= 2).then_some(r)
    });
    // No more slots after this one: pause both.
    for n in ["micro-latency", "micro-loss"] {
        let p = json(&fleet.cli(Role::Operator, &["-o", "json", "schedule", "pause", n]));
        assert_eq!(p["paused"], true);
    }
    let runs = runs.as_array().unwrap();
    let (started, skipped) = (&runs[0], &runs[1]);
    assert_eq!(started["schedule"], "micro-latency");
    assert_eq!(started["status"], "started");
    assert_eq!(skipped["schedule"], "micro-loss");
    assert_eq!(skipped["status"], "skipped");
    assert_eq!(started["slot_ms"], skipped["slot_ms"], "the same slot");
    let reason = skipped["reasons"][0].as_str().unwrap();
    assert!(
        reason.contains(started["experiment"].as_str().unwrap()),
        "{reason}"
    );
    let slot = started["slot_ms"].as_i64().unwrap();
    assert_eq!(slot % 20_000, 0, "every: slots are aligned to the epoch");
    let id = started["experiment"].as_str().unwrap().to_owned();
    let exp = fleet.wait_phase(
        &id,
        &["completed", "aborted", "failed"],
        Duration::from_secs(40),
    );
    assert_eq!(exp["outcome"]["verdict"], "passed", "{exp}");

    // Only one slot ran per entry, and the store records where each came from.
    let runs = json(&fleet.cli(Role::Viewer, &["-o", "json", "schedule", "runs"]));
    let started_runs = runs
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["status"] == "started")
        .count();
    assert_eq!(started_runs, 1, "{runs}");

    // The experiment's report, the fleet summary, JUnit.
    let md = text(&fleet.cli(Role::Viewer, &["report", &id]));
    for want in [
        "Latency Injection",
        "**Test Execution:**",
        "1. **baseline**",
        "2. **chaos_injection**",
        "4. **recovery**",
        "Verdict: passed",
        "Recovery time:",
        "Schedule: micro-latency",
        "**Kernel summary:**",
    ] {
        assert!(md.contains(want), "{want:?} missing from\n{md}");
    }
    let r = json(&fleet.cli(Role::Viewer, &["-o", "json", "report", &id]));
    assert_eq!(r["schedule"], "micro-latency");
    assert_eq!(r["steps"].as_array().unwrap().len(), 4);
    let junit = dir.join("chaos.xml");
    let s = json(&fleet.cli(
        Role::Viewer,
        &[
            "-o",
            "json",
            "report",
            "--since",
            "1h",
            "--junit",
            &junit.display().to_string(),
        ],
    ));
    assert_eq!(s["total"]["tests"], 1);
    assert_eq!(s["total"]["passed"], 1);
    let row = s["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["scenario"] == "latency_injection")
        .unwrap()
        .clone();
    assert_eq!(
        (row["tests"].as_u64(), row["recoveries"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(s["distribution"]["count"], 1);
    let skips = s["skipped"].as_array().unwrap();
    assert!(
        skips
            .iter()
            .any(|k| k["what"] == "schedule micro-loss" && k["status"] == "skipped"),
        "{s}"
    );
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(xml.contains(r#"tests="1""#) && xml.contains(&id), "{xml}");
    let fleet_md = text(&fleet.cli(Role::Viewer, &["report", "--since", "1h"]));
    assert!(
        fleet_md.contains("| Latency Injection | 1 | 1 | 100% |"),
        "{fleet_md}"
    );
    assert!(fleet_md.contains("0-10s:"), "{fleet_md}");

    // A finding counts on the dashboard.
    let f = json(&fleet.cli(
        Role::Operator,
        &[
            "-o",
            "json",
            "finding",
            "add",
            "--experiment",
            &id,
            "--title",
            "retry storm",
        ],
    ));
    assert_eq!(f[0]["status"], "open");
    let bad = fleet.cli(
        Role::Operator,
        &[
            "finding",
            "add",
            "--experiment",
            "exp-999999",
            "--title",
            "x",
        ],
    );
    assert!(
        !bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("no experiment")
    );
    let st = json(&fleet.cli(Role::Viewer, &["-o", "json", "status", "--no-readiness"]));
    assert_eq!(st["stats_30d"]["tests"], 1);
    assert_eq!(st["stats_30d"]["issues_found"], 1);
    assert_eq!(st["last_test"]["id"], id.as_str());
    assert!(st["next_scheduled"].is_null(), "both entries paused: {st}");
    let fid = f[0]["id"].as_str().unwrap().to_owned();
    json(&fleet.cli(
        Role::Operator,
        &[
            "-o", "json", "finding", "update", &fid, "--status", "resolved",
        ],
    ));
    let board = text(&fleet.cli(Role::Viewer, &["status", "--no-readiness"]));
    assert!(board.contains("Issues Found: 1 (all resolved)"), "{board}");
    assert!(board.contains("Total Tests: 1"), "{board}");

    // Readiness is an operator's dry run; with nothing scheduled it says so; resumed,
    // the next entry is dry-run (its preflight on node-1, nothing applied). The yearly
    // entry's next slot is far away, so resuming it starts nothing here.
    let st = json(&fleet.cli(Role::Viewer, &["-o", "json", "status"]));
    assert_eq!(st["readiness"]["ready"], false);
    assert!(
        st["readiness"]["message"]
            .as_str()
            .unwrap()
            .contains("needs an operator token"),
        "{st}"
    );
    let st = json(&fleet.cli(Role::Operator, &["-o", "json", "status"]));
    assert_eq!(st["readiness"]["ready"], false);
    assert!(
        st["readiness"]["message"]
            .as_str()
            .unwrap()
            .contains("no scheduled test"),
        "{st}"
    );
    let r = json(&fleet.cli(
        Role::Operator,
        &["-o", "json", "schedule", "resume", "yearly"],
    ));
    assert!(r["next_run_ms"].as_i64().unwrap() > slot);
    let st = json(&fleet.cli(Role::Operator, &["-o", "json", "status"]));
    assert_eq!(st["readiness"]["ready"], true, "{st}");
    assert_eq!(st["readiness"]["checked"], "schedule yearly");
    json(&fleet.cli(
        Role::Operator,
        &["-o", "json", "schedule", "pause", "yearly"],
    ));

    // A coordinator restart keeps the pauses and the history.
    let before = json(&fleet.cli(Role::Viewer, &["-o", "json", "schedule", "runs"]));
    let mut fleet = fleet;
    fleet.kill_coordinator();
    fleet.start_coordinator();
    fleet.wait_connected(2, Duration::from_secs(20));
    let list = json(&fleet.cli(Role::Viewer, &["-o", "json", "schedule", "list"]));
    assert!(
        list["schedules"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["paused"] == true),
        "{list}"
    );
    assert_eq!(
        json(&fleet.cli(Role::Viewer, &["-o", "json", "schedule", "runs"])),
        before
    );
    let fleet = fleet;

    // Outside a game day the production blast radius allows one experiment at once.
    let spec = |node: &str| {
        format!("--fault latency --node {node} --delay 5ms --duration 30s --iface {NODE_IFACE}")
    };
    let mut first = fleet.watch_run(Role::Operator, &format!("run {}", spec("node-1")));
    // Holding its lease before the second asks.
    first.until(|e| e["phase"].is_string());
    let busy = fleet.cli_line(Role::Operator, &format!("run {}", spec("node-2")));
    assert!(
        !busy.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&fleet.cli(Role::Viewer, &["schedule", "runs"]).stdout),
        String::from_utf8_lossy(&fleet.cli(Role::Viewer, &["experiments"]).stdout)
    );
    assert!(
        String::from_utf8_lossy(&busy.stderr).contains("max_concurrent = 1"),
        "{}",
        String::from_utf8_lossy(&busy.stderr)
    );
    let (_, events) = {
        fleet.cli(Role::Operator, &["abort", "--reason", "test"]);
        first.finish()
    };
    assert!(!events.is_empty());
    fleet.cli(Role::Admin, &["clear-kill-switch"]);

    // A game day: two at once, then its close ends both.
    let denied = fleet.cli(
        Role::Operator,
        &["gameday", "open", "--title", "q4", "--duration", "2m"],
    );
    assert!(!denied.status.success(), "opening a game day is for admins");
    let g = json(&fleet.cli(
        Role::Admin,
        &[
            "-o",
            "json",
            "gameday",
            "open",
            "--title",
            "Q4 game day",
            "--announcement",
            "latency and loss together",
            "--duration",
            "2m",
            "--max-concurrent",
            "2",
            "--max-nodes",
            "1",
        ],
    ));
    assert_eq!(g["state"], "open");
    let a = fleet.watch_run(Role::Operator, &format!("run {}", spec("node-1")));
    let b = fleet.watch_run(Role::Operator, &format!("run {}", spec("node-2")));
    let both = wait_for("two experiments running", Duration::from_secs(20), || {
        let s = json(&fleet.cli(Role::Viewer, &["-o", "json", "status", "--no-readiness"]));
        (s["running"].as_array().unwrap().len() == 2).then_some(s)
    });
    let phases: Vec<&str> = both["running"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["phase"].as_str().unwrap())
        .collect();
    assert!(
        phases
            .iter()
            .all(|p| ["preflight", "baseline", "fault"].contains(p)),
        "{phases:?}"
    );
    assert_eq!(
        both["live"].as_array().unwrap().len(),
        2,
        "one live reading per running experiment"
    );
    json(&fleet.cli(
        Role::Operator,
        &[
            "-o",
            "json",
            "gameday",
            "note",
            "--kind",
            "issue",
            "retries doubled under loss",
        ],
    ));
    json(&fleet.cli(
        Role::Operator,
        &[
            "-o",
            "json",
            "gameday",
            "note",
            "--kind",
            "lesson",
            "alert on retry rate",
        ],
    ));
    let closed = json(&fleet.cli(
        Role::Admin,
        &["-o", "json", "gameday", "close", "--reason", "done"],
    ));
    assert_eq!(closed["state"], "closed");
    let (_, ea) = a.finish();
    let (_, eb) = b.finish();
    for events in [&ea, &eb] {
        let last = events.last().unwrap();
        assert_eq!(last["phase"], "aborted", "{last}");
        assert!(
            last["outcome"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains("game day gd-0001 closed"),
            "{last}"
        );
    }
    let show = text(&fleet.cli(Role::Viewer, &["gameday", "show"]));
    for want in [
        "# Game day gd-0001: Q4 game day",
        "Scenarios tested: 1",
        "## Issues found: 1",
        "retries doubled under loss",
        "## Lessons learned: 1",
    ] {
        assert!(show.contains(want), "{want:?} missing from\n{show}");
    }
    let gd = json(&fleet.cli(Role::Viewer, &["-o", "json", "gameday", "list"]));
    assert_eq!(gd[0]["experiments"].as_array().unwrap().len(), 2);

    // A game day closes on time, and ends what it still runs.
    let g = json(&fleet.cli(
        Role::Admin,
        &[
            "-o",
            "json",
            "gameday",
            "open",
            "--title",
            "short",
            "--duration",
            "8s",
        ],
    ));
    assert_eq!(g["id"], "gd-0002");
    let c = fleet.watch_run(Role::Operator, &format!("run {}", spec("node-1")));
    let (_, ec) = c.finish();
    let last = ec.last().unwrap();
    assert_eq!(last["phase"], "aborted", "{last}");
    assert!(
        last["outcome"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("game day gd-0002 closed at its end"),
        "{last}"
    );
    let gd = json(&fleet.cli(Role::Viewer, &["-o", "json", "gameday", "list"]));
    assert_eq!(gd[1]["state"], "closed");
    assert_eq!(gd[1]["close_reason"], "closed on time");
    for n in &fleet.nodes {
        let left = faultline_leftovers(&n.ns, NODE_IFACE);
        assert!(left.is_empty(), "{}: {left:?}", n.name);
    }

    // The audit log says who did each of these, from where; only admins read it.
    let denied = fleet.cli(Role::Operator, &["audit"]);
    assert!(!denied.status.success());
    let log = json(&fleet.cli(Role::Admin, &["-o", "json", "audit"]));
    let entries = log.as_array().unwrap();
    let has = |who: &str, action: &str, target: &str| {
        entries.iter().any(|e| {
            e["who"] == who
                && e["action"] == action
                && e["target"].as_str().unwrap().starts_with(target)
        })
    };
    for (who, action, target) in [
        ("scheduler", "experiment.start", id.as_str()),
        ("ci", "schedule.pause", "micro-latency"),
        ("ci", "schedule.resume", "yearly"),
        ("ci", "experiment.start", "exp-"),
        ("ci", "abort", "all"),
        ("sre", "kill_switch.clear", ""),
        ("sre", "gameday.open", "gd-0001"),
        ("sre", "gameday.close", "gd-0001"),
        ("coordinator", "gameday.close", "gd-0002"),
        ("ci", "finding.add", "fnd-0001"),
        ("ci", "finding.update", "fnd-0001"),
    ] {
        assert!(has(who, action, target), "{who} {action} {target}: {log}");
    }
    let peer = entries.iter().find(|e| e["who"] == "ci").unwrap()["peer"]
        .as_str()
        .unwrap();
    assert!(
        peer.starts_with("10.201.") || peer.starts_with("127.0.0.1:"),
        "a peer address: {peer}"
    );
    // The HTTP abort is audited with its peer too.
    let (code, _) = fleet.http(Some(Role::Operator), "POST", "/abort?reason=audit-check");
    assert_eq!(code, 200);
    let log = json(&fleet.cli(Role::Admin, &["-o", "json", "audit"]));
    let last = log.as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last["who"].as_str(), last["action"].as_str()),
        (Some("ci"), Some("abort")),
        "{last}"
    );
    assert!(last["detail"].as_str().unwrap().contains("audit-check"));
    assert!(!last["peer"].as_str().unwrap().is_empty());
}

#[test]
fn a_schedule_over_the_limits_is_refused_whole_with_its_entry_and_line() {
    let dir = faultline_tests::TempPath::dir("faultline-sched-bad");
    let file = dir.join("schedule.yaml");
    std::fs::write(
        &file,
        "schedule:\n  - time: 02:00 UTC\n    scenario: latency_injection\n    target_node: node-6\n    latency: 50ms\n    duration: 60s\n  - day: Tuesday\n    time: 03:00 UTC\n    scenario: cpu_stress\n    target_node: node-6\n    cpu_stress: 40%\n    duration: 60s\n",
    )
    .unwrap();
    let out = std::process::Command::new(faultline_tests::agent::binary("faultline-coordinator"))
        .args(["check-schedule", &file.display().to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 11: schedule[1].cpu_stress:")
            && err.contains("cpu_stress.max_stress = 15%"),
        "{err}"
    );
    let out = std::process::Command::new(faultline_tests::agent::binary("faultline-coordinator"))
        .args([
            "check-schedule",
            &file.display().to_string(),
            "--profile",
            "staging",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("cpu_stress@TUE 03:00 UTC: TUE 03:00 UTC (cpu_stress)")
    );
}

#[test]
fn blackouts_refuse_and_end_experiments_and_a_failed_preflight_skips_its_slot() {
    let dir = faultline_tests::TempPath::dir("faultline-blackout");
    let file = dir.join("schedule.yaml");
    // A window opening every 20 s for 4 s, and an entry whose preflight cannot pass
    // (it requires a health checker, and no probe is configured).
    std::fs::write(
        &file,
        "blackouts:\n  - {name: drill, cron: '*/20 * * * * *', duration: 4s}\n\
         schedule:\n  - name: needs-health\n    every: 10s\n    scenario: latency_injection\n    target_node: node-1\n    \
         latency: 5ms\n    duration: 2s\n    prerequisites: {required: [rollback, health_checker]}\n",
    )
    .unwrap();
    let f = file.display().to_string();
    let fleet = Fleet::build(Options {
        nodes: 1,
        coordinator_args: &["--schedule", &f, "--baseline", "1s"],
        ..Options::default()
    });
    // Inside the window a person's run is refused; a slot inside it is skipped.
    let in_window = || {
        let l = json(&fleet.cli(Role::Viewer, &["-o", "json", "schedule", "list"]));
        l["blackouts"][0]["active"] == true
    };
    wait_for("the window to open", Duration::from_secs(25), || {
        in_window().then_some(Value::Null)
    });
    let refused = fleet.cli_line(
        Role::Operator,
        &format!(
            "run --fault latency --node node-1 --delay 5ms --duration 30s --iface {NODE_IFACE}"
        ),
    );
    assert_eq!(
        refused.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("blackout window drill is open until")
    );
    // Outside it, a run starts, and the window's next opening ends it.
    wait_for("the window to close", Duration::from_secs(10), || {
        (!in_window()).then_some(Value::Null)
    });
    let run = fleet.watch_run(
        Role::Operator,
        &format!(
            "run --fault latency --node node-1 --delay 5ms --duration 60s --iface {NODE_IFACE}"
        ),
    );
    let (_, events) = run.finish();
    let last = events.last().unwrap();
    assert_eq!(last["phase"], "aborted", "{last}");
    assert!(
        last["outcome"]["message"]
            .as_str()
            .unwrap()
            .contains("blackout window drill opened"),
        "{last}"
    );
    let left = faultline_leftovers(&fleet.nodes[0].ns, NODE_IFACE);
    assert!(left.is_empty(), "{left:?}");
    // The entry's slots: skipped by the window, or by their failed preflight.
    let runs = wait_for(
        "a slot skipped by preflight and one by the window",
        Duration::from_secs(45),
        || {
            let r = json(&fleet.cli(Role::Viewer, &["-o", "json", "schedule", "runs"]));
            let reasons: Vec<String> = r
                .as_array()
                .unwrap()
                .iter()
                .filter(|x| x["status"] == "skipped")
                .flat_map(|x| x["reasons"].as_array().unwrap().clone())
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect();
            (reasons
                .iter()
                .any(|x| x.starts_with("preflight required.health_checker"))
                && reasons
                    .iter()
                    .any(|x| x.starts_with("blackout window drill is open")))
            .then_some(r)
        },
    );
    let preflight = runs
        .as_array()
        .unwrap()
        .iter()
        .find(|x| {
            x["reasons"][0]
                .as_str()
                .is_some_and(|s| s.starts_with("preflight"))
        })
        .unwrap();
    assert!(
        preflight["experiment"]
            .as_str()
            .unwrap()
            .starts_with("exp-"),
        "the refused experiment is named: {preflight}"
    );
    let s = json(&fleet.cli(Role::Viewer, &["-o", "json", "report", "--since", "1h"]));
    assert!(
        s["skipped"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["what"] == "schedule needs-health"),
        "{s}"
    );
}
