//! Every bad input is refused with exit code 2, a message that names the problem,
//! and nothing attached to the interface.
use std::{os::unix::process::CommandExt, process::Command};

use faultline_tests::{
    Agent, Pair, agent::run_agent, agent_binary, assert_nothing_attached, limits_file, netns::IFACE,
};

/// Runs `inject loss` in the pair's receiving namespace with `extra` arguments and
/// expects a refusal mentioning `needle`.
fn refused(extra: &[&str], needle: &str) {
    let pair = Pair::new();
    let state = pair.b.state_dir();
    let mut args = vec!["--state-dir", state.to_str().unwrap(), "inject", "loss"];
    args.extend_from_slice(extra);
    let out = run_agent(Some(&pair.b.name), &args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "args {extra:?}: {stderr}");
    assert!(
        stderr.contains(needle),
        "args {extra:?}: expected '{needle}' in: {stderr}"
    );
    assert_nothing_attached(&pair);
}

#[test]
fn unknown_interface() {
    refused(
        &[
            "--iface",
            "nosuch0",
            "--percent",
            "0.5",
            "--duration",
            "10s",
        ],
        "unknown interface 'nosuch0'",
    );
}

#[test]
fn malformed_cidr() {
    refused(
        &[
            "--iface",
            IFACE,
            "--percent",
            "0.5",
            "--duration",
            "10s",
            "--src",
            "10.0.0.0/40",
        ],
        "is not a CIDR",
    );
    refused(
        &[
            "--iface",
            IFACE,
            "--percent",
            "0.5",
            "--duration",
            "10s",
            "--dst",
            "banana",
        ],
        "is not a CIDR",
    );
}

#[test]
fn reversed_port_range() {
    refused(
        &[
            "--iface",
            IFACE,
            "--percent",
            "0.5",
            "--duration",
            "10s",
            "--port",
            "9000-80",
        ],
        "reversed",
    );
}

#[test]
fn percent_outside_0_to_100() {
    refused(
        &["--iface", IFACE, "--percent", "150", "--duration", "10s"],
        "between 0 and 100",
    );
    refused(
        &["--iface", IFACE, "--percent", "-3", "--duration", "10s"],
        "between 0 and 100",
    );
}

#[test]
fn percent_above_the_production_cap_names_the_limit() {
    refused(
        &["--iface", IFACE, "--percent", "2", "--duration", "10s"],
        "packet_loss.max_loss = 1%",
    );
}

#[test]
fn staging_profile_raises_the_cap_but_still_enforces_it() {
    refused(
        &[
            "--profile",
            "staging",
            "--iface",
            IFACE,
            "--percent",
            "6",
            "--duration",
            "10s",
        ],
        "packet_loss.max_loss = 5%",
    );
}

#[test]
fn zero_duration() {
    refused(
        &["--iface", IFACE, "--percent", "0.5", "--duration", "0s"],
        "--duration must be greater than zero",
    );
}

#[test]
fn duration_above_the_cap() {
    refused(
        &["--iface", IFACE, "--percent", "0.5", "--duration", "61s"],
        "packet_loss.max_duration = 1m",
    );
}

#[test]
fn limits_file_errors_are_reported() {
    let bad = faultline_tests::TempPath::new("faultline-bad-limits");
    std::fs::write(&*bad, "chaos_limits:\n  packet_loss: {max_loss: lots}\n").unwrap();
    refused(
        &[
            "--limits",
            bad.to_str().unwrap(),
            "--iface",
            IFACE,
            "--percent",
            "0.5",
            "--duration",
            "1s",
        ],
        "invalid limits file",
    );
}

#[test]
fn conflicting_options() {
    refused(
        &[
            "--iface",
            IFACE,
            "--percent",
            "0.5",
            "--duration",
            "10s",
            "--attach",
            "xdp",
            "--direction",
            "egress",
        ],
        "only sees ingress",
    );
    refused(
        &[
            "--iface",
            IFACE,
            "--percent",
            "0.5",
            "--duration",
            "10s",
            "--port",
            "80",
            "--sport",
            "81",
        ],
        "cannot be used with",
    );
    refused(
        &[
            "--iface",
            IFACE,
            "--model",
            "gilbert-elliott",
            "--percent",
            "0.5",
            "--ge-p",
            "1",
            "--duration",
            "10s",
        ],
        "conflicts with --model gilbert-elliott",
    );
    refused(
        &[
            "--iface",
            IFACE,
            "--percent",
            "0.5",
            "--duration",
            "10s",
            "--src",
            "10.0.0.0/8",
            "--dst",
            "fd00::/8",
        ],
        "different IP families",
    );
}

#[test]
fn not_root() {
    let out = Command::new(agent_binary())
        .args([
            "--state-dir",
            "/tmp/faultline-nobody",
            "inject",
            "loss",
            "--iface",
            "lo",
        ])
        .args(["--percent", "0.5", "--duration", "10s"])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("needs CAP_BPF and CAP_NET_ADMIN"),
        "{stderr}"
    );
    assert!(
        stderr.contains("missing: CAP_BPF, CAP_NET_ADMIN"),
        "{stderr}"
    );
}

/// A kernel without CONFIG_BPF_SYSCALL answers bpf() with ENOSYS; a seccomp filter
/// reproduces exactly that answer for the agent process.
#[test]
fn kernel_without_bpf() {
    let pair = Pair::new();
    let state = pair.b.state_dir();
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &pair.b.name])
        .arg(agent_binary())
        .args([
            "--state-dir",
            state.to_str().unwrap(),
            "inject",
            "loss",
            "--iface",
            IFACE,
        ])
        .args(["--percent", "0.5", "--duration", "10s"]);
    // SAFETY: only async-signal-safe calls (prctl) between fork and exec.
    unsafe { cmd.pre_exec(deny_bpf_syscall) };
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no BPF support"), "{stderr}");
    assert_nothing_attached(&pair);
}

fn deny_bpf_syscall() -> std::io::Result<()> {
    const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
    const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
    let stmt = |code: u16, k: u32| libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    };
    let jeq = |k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    };
    let filter = [
        // seccomp_data.nr
        stmt((libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16, 0),
        jeq(libc::SYS_bpf as u32, 0, 1),
        stmt(
            libc::BPF_RET as u16,
            SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
        ),
        stmt(libc::BPF_RET as u16, SECCOMP_RET_ALLOW),
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: valid filter program that outlives the calls.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            || libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &prog) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[test]
fn a_second_agent_in_the_same_namespace_is_refused() {
    let pair = Pair::new();
    let state = pair.b.state_dir();
    let limits = limits_file("100%", "300s");
    let args = [
        "--limits",
        limits.to_str().unwrap(),
        "inject",
        "loss",
        "--iface",
        IFACE,
        "--percent",
        "1",
        "--duration",
        "30s",
    ];
    let (first, _) = Agent::start(&pair.b.name, &state, &args);
    let mut second = vec!["--state-dir", state.to_str().unwrap()];
    second.extend_from_slice(&args);
    let out = run_agent(Some(&pair.b.name), &second);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("another faultline-agent is managing this network namespace"),
        "{stderr}"
    );
    // The refusal must not have touched the running agent's fault.
    first.stop();
    assert_nothing_attached(&pair);
}
