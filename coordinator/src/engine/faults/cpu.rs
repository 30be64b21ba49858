//! cpu_stress: paced burners under a CFS ceiling of the share of the node.
use std::time::Duration;

use faultline_proto::{
    endpoint::EndpointPolicy,
    limits::ChaosLimits,
    spec::{Spec, SpecError},
    v1::{Capabilities, CpuFault},
};

use super::{BuildCtx, FaultKind, Refused, percent};
use crate::engine::experiment::window::Window;

pub fn build(spec: &Spec, ctx: &BuildCtx<'_>) -> Result<CpuFault, SpecError> {
    Ok(CpuFault {
        percent: spec
            .magnitude()
            .ok_or_else(|| ctx.err("cpu_stress", "required, e.g. 15%"))?
            .value(),
    })
}

impl FaultKind for CpuFault {
    fn check(
        &self,
        duration: Duration,
        caps: &ChaosLimits,
        source: &str,
        _endpoints: &EndpointPolicy,
    ) -> Result<(), Refused> {
        let c = self;
        caps.check_cpu(percent(c.percent, "cpu_stress")?, duration, source)
            .map_err(|e| Refused::limit("cpu_stress", e))
    }

    fn preflight(&self, node: &str, caps: &Capabilities) -> Result<(), String> {
        super::needs_cgroups(node, caps)
    }

    fn kernel_summary(&self, during: &Window) -> String {
        summary(during)
    }

    fn summary(&self) -> String {
        format!("cpu {}%", self.percent)
    }
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
