//! memory_stress: a memcg-fenced allocation of the share of MemTotal.
use std::time::Duration;

use faultline_proto::{
    limits::ChaosLimits,
    spec::{Spec, SpecError},
    v1::MemoryFault,
};

use super::{BuildCtx, Refused, percent};

pub fn build(spec: &Spec, ctx: &BuildCtx<'_>) -> Result<MemoryFault, SpecError> {
    Ok(MemoryFault {
        percent: spec
            .magnitude()
            .ok_or_else(|| ctx.err("memory_stress", "required, e.g. 10%"))?
            .value(),
    })
}

pub fn check(
    m: &MemoryFault,
    duration: Duration,
    caps: &ChaosLimits,
    source: &str,
) -> Result<(), Refused> {
    caps.check_memory(percent(m.percent, "memory_stress")?, duration, source)
        .map_err(|e| Refused::limit("memory_stress", e))
}
