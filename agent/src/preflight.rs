//! Checks that must pass before anything touches the kernel: privileges, BPF support
//! and the target interface. Each failure is a usage error (exit code 2) whose text
//! says what is missing.
use std::ffi::CString;

use crate::errors::UsageError;

const CAP_DAC_OVERRIDE: u32 = 1;
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

fn effective_caps() -> Result<u64, UsageError> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| UsageError(format!("cannot read /proc/self/status: {e}")))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .ok_or_else(|| UsageError("no CapEff line in /proc/self/status".into()))
}

/// CAP_BPF to load programs and CAP_NET_ADMIN to attach them, checked before
/// anything starts (kernels before 5.8 know no CAP_BPF; CAP_SYS_ADMIN stands for it
/// there). CAP_PERFMON, which the verifier wants too, is named by the load that
/// fails without it (`bpf_denied`), so the capability tests see the real refusal.
pub fn check_privileges() -> Result<(), UsageError> {
    let caps = effective_caps()?;
    let has = |cap: u32| caps & (1u64 << cap) != 0;
    let needs = [
        ("CAP_BPF", has(CAP_BPF) || has(CAP_SYS_ADMIN)),
        ("CAP_NET_ADMIN", has(CAP_NET_ADMIN)),
    ];
    let missing: Vec<&str> = needs
        .iter()
        .filter(|(_, held)| !held)
        .map(|(name, _)| *name)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(UsageError(format!(
        "faultline-agent needs CAP_BPF and CAP_NET_ADMIN (run it as root); missing: {}",
        missing.join(", ")
    )))
}

/// A BPF load the kernel refused (EACCES or EPERM anywhere in the error's chain),
/// with its likely cause named: CAP_PERFMON not in effect (measured: without it,
/// and without CAP_SYS_ADMIN, the verifier rejects the fault programs with EACCES),
/// or else a seccomp filter on the agent (a container runtime's default profile
/// allows bpf(2) only with CAP_SYS_ADMIN). The error as it was otherwise.
pub fn bpf_denied(err: anyhow::Error) -> anyhow::Error {
    let refused = err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| matches!(io.raw_os_error(), Some(libc::EACCES) | Some(libc::EPERM)))
    });
    if !refused {
        return err;
    }
    let caps = effective_caps().unwrap_or(0);
    let has = |cap: u32| caps & (1u64 << cap) != 0;
    if !has(CAP_PERFMON) && !has(CAP_SYS_ADMIN) {
        return err.context(
            "the kernel refused the program: the agent lacks CAP_PERFMON, without which \
             the verifier rejects faultline's programs",
        );
    }
    if seccomp_filtered() {
        return err.context(
            "the kernel refused bpf(2) although the agent holds CAP_BPF: a seccomp filter \
             blocks it (a container runtime's default profile allows bpf only with \
             CAP_SYS_ADMIN); run the agent with deploy/seccomp/faultline-agent.json",
        );
    }
    err
}

/// Whether a seccomp filter is on this process (`Seccomp: 2` in its status).
fn seccomp_filtered() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Seccomp:"))
            .is_some_and(|v| v.trim() == "2")
    })
}

/// Why root was refused a cgroup file or directory, when the reason is a missing
/// capability: the top directories of a cgroup filesystem are mode 0555 and a
/// workload's delegated cgroup belongs to its user, so root writes there only with
/// CAP_DAC_OVERRIDE. None when the error is another one or the capability is held.
pub fn cgroup_denied_hint(err: &std::io::Error) -> Option<&'static str> {
    let denied = err.kind() == std::io::ErrorKind::PermissionDenied;
    let lacks = effective_caps().is_ok_and(|c| c & (1u64 << CAP_DAC_OVERRIDE) == 0);
    (denied && lacks).then_some(
        "the agent lacks CAP_DAC_OVERRIDE, which root needs to create cgroups under the \
         cgroup filesystem's read-only top directories and to write cgroups of other owners",
    )
}

/// A kernel built without CONFIG_BPF_SYSCALL answers every bpf() call with ENOSYS.
/// An invalid command is harmless: a kernel with BPF answers EINVAL (or EPERM).
pub fn check_bpf_support() -> Result<(), UsageError> {
    const INVALID_CMD: libc::c_long = 0xffff;
    // SAFETY: a bpf() call with an invalid command and no attribute pointer.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, INVALID_CMD, std::ptr::null::<u8>(), 0) };
    let errno = std::io::Error::last_os_error().raw_os_error();
    if rc == -1 && errno == Some(libc::ENOSYS) {
        return Err(UsageError(
            "this kernel has no BPF support: bpf() returned ENOSYS (CONFIG_BPF_SYSCALL is off, \
             or a seccomp policy forbids bpf())"
                .into(),
        ));
    }
    Ok(())
}

/// The interface's index, or a usage error naming it.
pub fn interface_index(name: &str) -> Result<u32, UsageError> {
    let c = CString::new(name)
        .map_err(|_| UsageError(format!("interface name '{name}' contains a NUL byte")))?;
    // SAFETY: valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        return Err(UsageError(format!(
            "unknown interface '{name}' in this network namespace"
        )));
    }
    Ok(index)
}

/// (name, index) of every interface in this network namespace (for the leftover
/// sweep).
pub fn interfaces() -> Vec<(String, u32)> {
    let mut found = Vec::new();
    // SAFETY: if_nameindex returns a list terminated by a zero entry, freed below.
    unsafe {
        let list = libc::if_nameindex();
        if list.is_null() {
            return found;
        }
        let mut p = list;
        while (*p).if_index != 0 {
            found.push((
                std::ffi::CStr::from_ptr((*p).if_name)
                    .to_string_lossy()
                    .into_owned(),
                (*p).if_index,
            ));
            p = p.add(1);
        }
        libc::if_freenameindex(list);
    }
    found
}
