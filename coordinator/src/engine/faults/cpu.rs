//! cpu_stress: paced burners under a CFS ceiling of the share of the node.
use std::time::Duration;

use faultline_proto::{
    limits::ChaosLimits,
    spec::{Spec, SpecError},
    v1::{Capabilities, CpuFault},
};

use super::{BuildCtx, Refused, percent};
use crate::engine::experiment::window::Window;

pub fn build(spec: &Spec, ctx: &BuildCtx<'_>) -> Result<CpuFault, SpecError> {
    Ok(CpuFault {
        percent: spec
            .magnitude()
            .ok_or_else(|| ctx.err("cpu_stress", "required, e.g. 15%"))?
            .value(),
    })
}

pub fn check(
    c: &CpuFault,
    duration: Duration,
    caps: &ChaosLimits,
    source: &str,
) -> Result<(), Refused> {
    caps.check_cpu(percent(c.percent, "cpu_stress")?, duration, source)
        .map_err(|e| Refused::limit("cpu_stress", e))
}

/// The stress faults live in cgroups.
pub fn needs_cgroups(node: &str, caps: &Capabilities) -> Result<(), String> {
    if caps.cgroup == "none" {
        return Err(format!("node {node} has no cgroup filesystem"));
    }
    Ok(())
}

/// Node CPU and memory (the stress faults' own effect).
pub fn summary(during: &Window) -> String {
    format!(
        "node cpu {:.1}% (max {:.1}%) mem {:.1}% (max {:.1}%)",
        Window::mean(&during.cpu),
        Window::max(&during.cpu),
        Window::mean(&during.memory),
        Window::max(&during.memory)
    )
}
