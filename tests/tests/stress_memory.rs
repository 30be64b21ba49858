//! Memory stress end to end, in a fixed order in one test: node-wide memory
//! readings are only clean when no large free happened just before (freed pages
//! linger in the kernel's per-CPU page lists, counted as used, and the next
//! allocation reuses them first), so the share is measured first and the OOM
//! scenario, which frees memory abruptly, comes last.
use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use faultline_tests::Agent;

fn meminfo(key: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap();
    text.lines()
        .find_map(|l| {
            l.strip_prefix(key)?
                .trim()
                .trim_end_matches(" kB")
                .trim()
                .parse()
                .ok()
        })
        .unwrap()
}

/// Free pages the kernel keeps on its per-CPU lists (each pageset's `count` in
/// /proc/zoneinfo), in kB. They are free memory that MemAvailable counts as used; a
/// large free leaves hundreds of MiB there for minutes, and the next allocation
/// takes them first.
fn per_cpu_free_kb() -> u64 {
    std::fs::read_to_string("/proc/zoneinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("count:")?.trim().parse::<u64>().ok())
        .sum::<u64>()
        * 4
}

/// Used memory in percent of MemTotal: MemTotal - MemAvailable, less the free
/// pages parked on per-CPU lists.
fn mem_used_percent() -> f64 {
    let total = meminfo("MemTotal:") as f64;
    let used = total - meminfo("MemAvailable:") as f64 - per_cpu_free_kb() as f64;
    100.0 * used / total
}

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

fn no_stress_cgroups_left() {
    for dir in [
        "/sys/fs/cgroup/faultline",
        "/sys/fs/cgroup/cpu/faultline",
        "/sys/fs/cgroup/memory/faultline",
        "/sys/fs/cgroup/cpuacct/faultline",
    ] {
        assert!(!std::path::Path::new(dir).exists(), "{dir} left behind");
    }
}

fn start(args: &[&str]) -> (Agent, serde_json::Value) {
    let dir = std::env::temp_dir().join(format!("fl-oom-state-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    Agent::start_host(&dir, args)
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
    while std::path::Path::new(&format!("/proc/{stressor}/status")).exists()
        && !std::fs::read_to_string(format!("/proc/{stressor}/stat"))
            .unwrap_or_default()
            .contains(") Z")
    {
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
    no_stress_cgroups_left();
}

fn memory_share_is_allocated_fenced_and_released() {
    let baseline = settled_mem_used_percent();
    let (mut agent, armed) = start(&["inject", "memory", "--percent", "10", "--duration", "60s"]);
    let target = meminfo("MemTotal:") * 1024 / 10;
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
    for dir in armed["cgroup"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_owned())
        .collect::<Vec<_>>()
    {
        assert!(!std::path::Path::new(&dir).exists(), "{dir} left behind");
    }
    no_stress_cgroups_left();
}

/// Under --target-cgroup with a memory limit, the share is of that limit: 50 % of a
/// 256 MiB workload group is 128 MiB, nested and fenced inside it.
fn share_of_a_target_cgroups_limit() {
    let rel = format!("fltest-memtarget-{}", std::process::id());
    let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let dirs: Vec<std::path::PathBuf> = if v2 {
        vec![std::path::PathBuf::from("/sys/fs/cgroup").join(&rel)]
    } else {
        ["cpu", "memory", "cpuacct"]
            .iter()
            .map(|h| {
                std::path::PathBuf::from("/sys/fs/cgroup")
                    .join(h)
                    .join(&rel)
            })
            .collect()
    };
    for d in &dirs {
        std::fs::create_dir(d).unwrap();
    }
    let limit: u64 = 256 << 20;
    if v2 {
        std::fs::write(dirs[0].join("cgroup.subtree_control"), "+cpu +memory").unwrap();
        std::fs::write(dirs[0].join("memory.max"), limit.to_string()).unwrap();
    } else {
        std::fs::write(dirs[1].join("memory.limit_in_bytes"), limit.to_string()).unwrap();
    }
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
    for d in &dirs {
        assert!(!d.join("faultline").exists());
        std::fs::remove_dir(d).unwrap();
    }
}

#[test]
fn memory_stress_is_fenced_allocated_and_released() {
    memory_share_is_allocated_fenced_and_released();
    share_of_a_target_cgroups_limit();
    an_over_asking_stressor_is_the_only_process_killed();
}
