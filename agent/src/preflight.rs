//! Checks that must pass before anything touches the kernel: privileges, BPF support
//! and the target interface. Each failure is a usage error (exit code 2) whose text
//! says what is missing.
use std::ffi::CString;

use crate::errors::UsageError;

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
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

/// CAP_NET_ADMIN to attach to interfaces, and CAP_BPF (or, on kernels before 5.8,
/// CAP_SYS_ADMIN) to load programs.
pub fn check_privileges() -> Result<(), UsageError> {
    let caps = effective_caps()?;
    let has = |cap: u32| caps & (1u64 << cap) != 0;
    let mut missing = Vec::new();
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    if missing.is_empty() {
        return Ok(());
    }
    Err(UsageError(format!(
        "faultline-agent needs CAP_BPF and CAP_NET_ADMIN (run it as root); missing: {}",
        missing.join(", ")
    )))
}

/// Creating cgroups and moving processes into them needs root (CAP_SYS_ADMIN over
/// the cgroup filesystem, which is owned by root).
pub fn check_root_for_cgroups() -> Result<(), UsageError> {
    let caps = effective_caps()?;
    if caps & (1u64 << CAP_SYS_ADMIN) == 0 {
        return Err(UsageError(
            "node stress needs CAP_SYS_ADMIN to create cgroups (run faultline-agent as root)"
                .into(),
        ));
    }
    Ok(())
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
