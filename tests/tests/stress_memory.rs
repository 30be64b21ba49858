//! Memory stress end to end, in a fixed order in one test: node-wide memory
//! readings are only clean when no large free happened just before (freed pages
//! linger in the kernel's per-CPU page lists, counted as used, and the next
//! allocation reuses them first), so the share is measured first and the OOM
//! scenario, which frees memory abruptly, comes last.
use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use faultline_tests::{
    Agent,
    node::{
        TargetCgroup, assert_no_stress_cgroups, cgroup_dirs, exited, mem_used_percent, meminfo_kb,
    },
};

/// Used memory once it stops moving.
fn settled_mem_used_percent() -> f64 {
    let mut last = mem_used_percent();
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(250));
        let now = mem_used_percent();
        if (now - last).abs() < 0.05 {
            return now;
        }
        last = now;
    }
    last
}

fn start(args: &[&str]) -> (Agent, serde_json::Value) {
    let dir = faultline_tests::TempPath::dir("fl-memory-state");
    let (mut agent, armed) = Agent::start_host(&dir, args);
    agent.keep(dir);
    (agent, armed)
}

fn an_over_asking_stressor_is_the_only_process_killed() {
    let mut canary = Command::new("sleep")
        .arg("120")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Fence for 3 % of MemTotal; the stressor tries to touch 3 % + 3 %.
    let (agent, armed) = start(&[
        "inject",
        "memory",
        "--percent",
        "3",
        "--overask",
        "3",
        "--duration",
        "15s",
    ]);
    let stressor = armed["pids"][0].as_u64().unwrap();
    let until = Instant::now() + Duration::from_secs(30);
    while !exited(stressor) {
        assert!(
            Instant::now() < until,
            "the over-asking stressor was never killed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        canary.try_wait().unwrap().is_none(),
        "the canary process was killed"
    );
    let agent_pid = agent.child.id();
    assert!(
        std::path::Path::new(&format!("/proc/{agent_pid}")).exists(),
        "agent killed"
    );
    let removed = agent.stop();
    assert!(
        removed["oom_kills"].as_u64().unwrap() >= 1,
        "fence recorded no OOM kill: {removed}"
    );
    canary.kill().unwrap();
    canary.wait().unwrap();
    assert_no_stress_cgroups();
}

fn memory_share_is_allocated_fenced_and_released() {
    let baseline = settled_mem_used_percent();
    let (mut agent, armed) = start(&["inject", "memory", "--percent", "10", "--duration", "60s"]);
    let target = meminfo_kb("MemTotal:") * 1024 / 10;
    // Wait until the stressor has touched its whole block.
    let until = Instant::now() + Duration::from_secs(40);
    loop {
        let ev = agent
            .wait_event("reading", Duration::from_secs(5))
            .expect("readings");
        if ev["group_mem_bytes"].as_u64().unwrap() >= target {
            break;
        }
        assert!(
            Instant::now() < until,
            "stressor never reached {target} bytes: {ev}"
        );
    }
    let during = mem_used_percent();
    let removed = agent.stop();
    // Released at removal: the stressor and its cgroup are gone (checked below) and
    // its memory is back.
    std::thread::sleep(Duration::from_millis(500));
    let after = mem_used_percent();
    assert!(
        (during - baseline - 10.0).abs() <= 1.0,
        "used memory rose {:.2} pp (baseline {baseline:.2}%, during {during:.2}%)",
        during - baseline
    );
    assert!(
        (after - baseline).abs() <= 1.0,
        "after removal {after:.2}% vs baseline {baseline:.2}%"
    );
    assert_eq!(removed["oom_kills"], 0);
    for dir in cgroup_dirs(&armed) {
        assert!(!std::path::Path::new(&dir).exists(), "{dir} left behind");
    }
    assert_no_stress_cgroups();
}

/// Under --target-cgroup with a memory limit, the share is of that limit: 50 % of a
/// 256 MiB workload group is 128 MiB, nested and fenced inside it.
fn share_of_a_target_cgroups_limit() {
    let target = TargetCgroup::new("memtarget");
    let rel = target.rel.clone();
    let limit: u64 = 256 << 20;
    target.set_memory_limit(limit);
    let (mut agent, armed) = start(&[
        "inject",
        "memory",
        "--percent",
        "10",
        "--duration",
        "30s",
        "--target-cgroup",
        &rel,
    ]);
    assert!(
        armed["fault"]
            .as_str()
            .unwrap()
            .contains("of the target cgroup's limit (25 MiB"),
        "{armed}"
    );
    let mut group = 0;
    for _ in 0..20 {
        group = agent.wait_event("reading", Duration::from_secs(5)).unwrap()["group_mem_bytes"]
            .as_u64()
            .unwrap();
        if group >= limit / 10 {
            break;
        }
    }
    assert!(
        group >= limit / 10 && group < limit / 10 + (8 << 20),
        "group holds {group} bytes"
    );
    agent.stop();
    for d in &target.dirs {
        assert!(!d.join("faultline").exists());
    }
}

#[test]
fn memory_stress_is_fenced_allocated_and_released() {
    memory_share_is_allocated_fenced_and_released();
    share_of_a_target_cgroups_limit();
    an_over_asking_stressor_is_the_only_process_killed();
}
