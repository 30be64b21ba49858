//! memory_stress: a memcg-fenced allocation of the share of MemTotal.
use std::time::Duration;

use faultline_proto::{
    endpoint::EndpointPolicy,
    limits::ChaosLimits,
    spec::{Spec, SpecError},
    v1::{Capabilities, MemoryFault},
};

use super::{BuildCtx, FaultKind, Refused, percent};
use crate::engine::experiment::window::Window;

pub fn build(spec: &Spec, ctx: &BuildCtx<'_>) -> Result<MemoryFault, SpecError> {
    Ok(MemoryFault {
        percent: spec
            .magnitude()
            .ok_or_else(|| ctx.err("memory_stress", "required, e.g. 10%"))?
            .value(),
    })
}

impl FaultKind for MemoryFault {
    fn check(
        &self,
        duration: Duration,
        caps: &ChaosLimits,
        source: &str,
        _endpoints: &EndpointPolicy,
    ) -> Result<(), Refused> {
        let m = self;
        caps.check_memory(percent(m.percent, "memory_stress")?, duration, source)
            .map_err(|e| Refused::limit("memory_stress", e))
    }

    fn preflight(&self, node: &str, caps: &Capabilities) -> Result<(), String> {
        super::needs_cgroups(node, caps)
    }

    fn kernel_summary(&self, during: &Window) -> String {
        super::cpu::summary(during)
    }

    fn summary(&self) -> String {
        format!("memory {}%", self.percent)
    }
}
