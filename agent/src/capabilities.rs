//! What this node's kernel offers faultline, found by trying rather than by reading
//! version numbers: `faultline-agent capabilities`, and later the registration the
//! agent sends to the coordinator.
use std::path::Path;

use anyhow::Result;
use serde::Serialize;
use serde_json::json;

use crate::{ebpf::TcMode, faults::latency, output::Output, preflight, qdisc};

#[derive(Clone, Debug, Serialize)]
pub struct Capabilities {
    pub agent_version: &'static str,
    pub kernel: String,
    /// BPF programs can be loaded (privileges, bpf syscall).
    pub bpf: bool,
    /// Kernel BTF is present (/sys/kernel/btf/vmlinux).
    pub btf: bool,
    /// TCX attachment (kernel >= 6.6); clsact via netlink otherwise.
    pub tcx: bool,
    /// The fq qdisc can be created (EDT latency).
    pub sch_fq: bool,
    /// IFB devices can be created (EDT latency on ingress).
    pub ifb: bool,
    /// TAP devices can be created (the delay line).
    pub tun: bool,
    /// "v2", "v1" or "none".
    pub cgroup: &'static str,
    /// What `--backend auto` picks for latency.
    pub latency_backend: &'static str,
}

pub async fn detect(cgroup_root: &Path) -> Capabilities {
    let (sch_fq, ifb) = qdisc::probe_fq().await;
    // The same detection the stress faults use, so "v1"/"v2" means they can run.
    let cgroup = match crate::cgroup::detect(cgroup_root, None).map(|fs| fs.version()) {
        Ok(2) => "v2",
        Ok(_) => "v1",
        Err(_) => "none",
    };
    let backend = if sch_fq && ifb {
        latency::Backend::Edt
    } else {
        latency::Backend::DelayLine
    };
    Capabilities {
        agent_version: env!("CARGO_PKG_VERSION"),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default(),
        bpf: preflight::check_bpf_support().is_ok(),
        btf: Path::new("/sys/kernel/btf/vmlinux").exists(),
        tcx: TcMode::Tcx.resolve().is_ok(),
        sch_fq,
        ifb,
        tun: std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .is_ok(),
        cgroup,
        latency_backend: match backend {
            latency::Backend::Edt => "edt",
            _ => "delay-line",
        },
    }
}

pub async fn report(cgroup_root: &Path, format: Output) -> Result<()> {
    preflight::check_privileges()?;
    let caps = detect(cgroup_root).await;
    let yes = |b: bool| if b { "yes" } else { "no" };
    let text = format!(
        "faultline-agent {} on Linux {}\n  bpf: {}  btf: {}  tcx: {}\n  sch_fq: {}  ifb: {}  tun: {}\n  cgroup: {}\n  latency backend (auto): {}",
        caps.agent_version,
        caps.kernel,
        yes(caps.bpf),
        yes(caps.btf),
        yes(caps.tcx),
        yes(caps.sch_fq),
        yes(caps.ifb),
        yes(caps.tun),
        caps.cgroup,
        caps.latency_backend
    );
    crate::output::emit(format, json!(caps), &text);
    Ok(())
}
