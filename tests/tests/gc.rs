//! GC pressure end to end: a real workload process in its own cgroup (v1 here, v2
//! in the VM lane) has its soft memory limit squeezed and restored exactly.
use std::time::Duration;

use faultline_tests::{Agent, agent::run_agent, workload::Workload};

fn state(tag: &str) -> faultline_tests::TempPath {
    faultline_tests::TempPath::dir(&format!("fl-gc-{tag}"))
}

#[test]
fn squeezes_below_usage_and_restores_the_exact_value() {
    let w = Workload::new("gc");
    let original = w.limit();
    let dir = state("a");
    let (mut agent, armed) = Agent::start_host(
        &dir,
        &[
            "inject",
            "gc",
            "--target-cgroup",
            &w.rel,
            "--to-percent",
            "70",
            "--duration",
            "3s",
        ],
    );
    let squeezed = armed["squeezed"].as_u64().unwrap();
    let usage = armed["usage"].as_u64().unwrap();
    assert!(squeezed < usage, "{armed}");
    assert_eq!(
        w.limit().trim(),
        squeezed.to_string(),
        "limit not squeezed while armed"
    );
    assert_eq!(armed["original"], original.trim());
    let removed = agent
        .wait_event("removed", Duration::from_secs(15))
        .expect("removed");
    assert!(agent.child.wait().unwrap().success());
    assert_eq!(removed["reason"], "deadline");
    assert_eq!(w.limit(), original, "limit not restored byte for byte");
}

#[test]
fn a_killed_agents_squeeze_is_restored_by_cleanup() {
    let w = Workload::new("gckill");
    let original = w.limit();
    let dir = state("kill");
    let (mut agent, armed) = Agent::start_host(
        &dir,
        &[
            "inject",
            "gc",
            "--target-cgroup",
            &w.rel,
            "--to-percent",
            "80",
            "--duration",
            "30s",
        ],
    );
    agent.signal(libc::SIGKILL);
    agent.child.wait().unwrap();
    assert_eq!(
        w.limit().trim(),
        armed["squeezed"].as_u64().unwrap().to_string()
    );
    let out = run_agent(None, &["--state-dir", dir.to_str().unwrap(), "cleanup"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("restored"),
        "{out:?}"
    );
    assert_eq!(
        w.limit(),
        original,
        "cleanup did not restore the original limit"
    );
}

#[test]
fn gc_bad_inputs_are_refused_and_change_nothing() {
    let w = Workload::new("gcbad");
    let original = w.limit();
    let cases: &[(&[&str], &str)] = &[
        (
            &["--target-cgroup", "no-such-group", "--duration", "5s"],
            "does not exist",
        ),
        (
            &["--target-cgroup", "../x", "--duration", "5s"],
            "without '..'",
        ),
        (
            &[
                "--target-cgroup",
                &w.rel,
                "--to-percent",
                "30",
                "--duration",
                "5s",
            ],
            "outside 50-99",
        ),
        (
            &["--target-cgroup", &w.rel, "--duration", "0s"],
            "greater than zero",
        ),
        (
            &["--target-cgroup", &w.rel, "--duration", "61s"],
            "memory_stress.max_duration = 1m",
        ),
    ];
    for (extra, needle) in cases {
        let mut args = vec!["--state-dir", "/tmp/fl-gc-bad", "inject", "gc"];
        args.extend_from_slice(extra);
        let out = run_agent(None, &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{extra:?}: expected '{needle}' in {stderr}"
        );
        assert_eq!(w.limit(), original);
    }
}

/// The squeeze has a deadline of its own: with the agent frozen, the original limit
/// is back at the deadline anyway, and nothing of the agent's stays behind.
#[test]
fn the_squeeze_ends_at_its_deadline_while_the_agent_is_frozen() {
    let w = Workload::new("gcfrozen");
    let original = w.limit();
    let dir = state("frozen");
    let (agent, armed) = Agent::start_host(
        &dir,
        &[
            "inject",
            "gc",
            "--target-cgroup",
            &w.rel,
            "--to-percent",
            "75",
            "--duration",
            "2s",
        ],
    );
    agent.signal(libc::SIGSTOP);
    assert_eq!(
        w.limit().trim(),
        armed["squeezed"].as_u64().unwrap().to_string()
    );
    let until = std::time::Instant::now() + Duration::from_secs(6);
    while w.limit() != original {
        assert!(
            std::time::Instant::now() < until,
            "limit still squeezed after the deadline"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    agent.signal(libc::SIGCONT);
    agent.stop();
    assert_eq!(w.limit(), original);
    // The restorer exits once the change is restored.
    std::thread::sleep(Duration::from_millis(500));
    let restorers = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .map(|c| {
                    String::from_utf8_lossy(&c).contains(&*dir.to_string_lossy())
                        && String::from_utf8_lossy(&c).contains("__restorer")
                })
                .unwrap_or(false)
        })
        .count();
    assert_eq!(restorers, 0, "a restorer process outlived its change");
}
