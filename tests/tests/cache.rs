//! Cache invalidation end to end: real files in the page cache, evicted by the real
//! agent, measured with mincore() by the agent and rebuilt by a re-read.
use std::{path::PathBuf, process::Command, time::Duration};

use faultline_tests::{
    Agent,
    agent::run_agent,
    agent_binary,
    workload::{file_set, hook_server, read_all},
};

fn state() -> faultline_tests::TempPath {
    faultline_tests::TempPath::dir("fl-cache-state")
}

#[test]
fn evicts_a_file_set_and_watches_it_rebuild() {
    let dir = file_set("evict");
    let st = state();
    let (mut agent, evicted) = Agent::start_host_event(
        &st,
        &[
            "inject",
            "cache",
            "--path",
            dir.to_str().unwrap(),
            "--observe",
            "4s",
        ],
        "evicted",
    );
    let before = evicted["resident_before_percent"].as_f64().unwrap();
    let after = evicted["resident_after_percent"].as_f64().unwrap();
    assert_eq!(evicted["files"], 8);
    assert!(before >= 95.0, "files not cached before: {evicted}");
    assert!(after <= 5.0, "page cache not evicted: {evicted}");
    // The workload reads its files again: the cache rebuilds, and the agent sees it.
    read_all(&dir);
    let mut rebuilt = 0.0;
    while let Some(r) = agent.wait_event("reading", Duration::from_secs(5)) {
        rebuilt = r["resident_percent"].as_f64().unwrap();
        if rebuilt >= 95.0 {
            break;
        }
    }
    assert!(rebuilt >= 95.0, "cache did not rebuild: {rebuilt:.1}%");
    assert!(agent.child.wait().unwrap().success());
    drop(dir);
}

/// cgroup v2: a workload's file cache is reclaimed through memory.reclaim. cgroup
/// v1 has no such knob: there the request must be refused, naming the alternative.
#[test]
fn evicts_a_workload_cgroups_file_cache_on_v2_and_refuses_on_v1() {
    let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let rel = format!("fltest-cache-{}", std::process::id());
    if !v2 {
        let out = run_agent(None, &["inject", "cache", "--target-cgroup", &rel]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("needs cgroup v2 (memory.reclaim); on cgroup v1 evict by --path"),
            "{stderr}"
        );
        return;
    }
    let dir = file_set("cg");
    faultline_tests::node::delegate_below_root();
    let cg = PathBuf::from("/sys/fs/cgroup").join(&rel);
    std::fs::create_dir(&cg).unwrap();
    // The workload reads the files from inside its cgroup, so the cache is charged there.
    let script = format!(
        "echo $$ > {}/cgroup.procs && for f in {}/*; do cat $f > /dev/null; done",
        cg.display(),
        dir.display()
    );
    // Drop the cache first so the reads inside the group are what charge it.
    let _ = run_agent(None, &["inject", "cache", "--path", dir.to_str().unwrap()]);
    assert!(
        Command::new("sh")
            .args(["-c", &script])
            .status()
            .unwrap()
            .success()
    );
    let out = run_agent(
        None,
        &[
            "inject",
            "cache",
            "--target-cgroup",
            &rel,
            "--output",
            "json",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let ev: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().next().unwrap()).unwrap();
    let before = ev["cgroup_file_before_bytes"].as_u64().unwrap();
    let after = ev["cgroup_file_after_bytes"].as_u64().unwrap();
    assert!(
        before >= 30 << 20,
        "workload cache not charged to its cgroup: {ev}"
    );
    assert!(
        after <= before / 10,
        "memory.reclaim left {after} of {before} bytes: {ev}"
    );
    std::fs::remove_dir(&cg).unwrap();
    drop(dir);
    let _ = agent_binary();
}

#[test]
fn cache_bad_inputs_are_refused() {
    for (args, needle) in [
        (vec!["inject", "cache"], "name what to evict"),
        (vec!["inject", "cache", "--hook", "nourl"], "NAME=URL"),
        (
            vec!["inject", "cache", "--path", "/no/such/path"],
            "does not exist",
        ),
        (
            vec!["inject", "cache", "--target-cgroup", "../etc"],
            "cgroup",
        ),
    ] {
        let out = run_agent(None, &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{args:?}: expected '{needle}' in {stderr}"
        );
    }
}

#[test]
fn hooks_ask_each_component_and_failures_are_named() {
    let (port, server) = hook_server(None, 2);
    let api = format!("api=http://127.0.0.1:{port}/cache/drop");
    let consensus = format!("consensus=http://127.0.0.1:{port}/consensus/cache");
    let out = run_agent(
        None,
        &[
            "inject", "cache", "--hook", &api, "--hook", &consensus, "--output", "json",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let seen = server.join().unwrap();
    assert_eq!(
        seen,
        vec![
            "POST /cache/drop HTTP/1.1",
            "POST /consensus/cache HTTP/1.1"
        ]
    );

    // An unreachable component is reported by name; the others still ran; exit 1.
    let (port, server) = hook_server(None, 1);
    let ok = format!("api=http://127.0.0.1:{port}/cache/drop");
    let dead = "scheduler=http://127.0.0.1:9/cache/drop";
    let out = run_agent(None, &["inject", "cache", "--hook", dead, "--hook", &ok]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.contains("hook scheduler: FAILED"), "{stdout}");
    assert!(stdout.contains("hook api: done"), "{stdout}");
    assert!(stderr.contains("hook(s) failed: scheduler"), "{stderr}");
    assert_eq!(server.join().unwrap(), vec!["POST /cache/drop HTTP/1.1"]);

    // A malformed hook is refused before anything happens.
    let out = run_agent(
        None,
        &["inject", "cache", "--hook", "api=https://127.0.0.1/x"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("must be an http:// URL"));
}
