//! gc_pressure: a workload cgroup's soft memory limit squeezed below its usage (and
//! its runtime asked to collect through hooks), restored exactly afterwards. Runs
//! under memory_stress.max_duration.
use std::time::Duration;

use faultline_proto::{
    endpoint::EndpointPolicy,
    limits::ChaosLimits,
    spec::{Spec, SpecError},
    v1::{Capabilities, FaultReadings, GcFault},
};

use super::{BuildCtx, FaultKind, Refused, check_cgroup, check_hooks};
use crate::engine::experiment::window::Window;

pub fn build(spec: &Spec, ctx: &BuildCtx<'_>) -> Result<GcFault, SpecError> {
    let defaults = &ctx.settings.gc;
    let target = spec
        .target_cgroup
        .clone()
        .or_else(|| defaults.target_cgroup.clone())
        .ok_or_else(|| {
            ctx.err(
                "target_cgroup",
                format!(
                    "required: the workload cgroup to squeeze (or gc.target_cgroup in the \
                     coordinator's config, {})",
                    ctx.settings.source
                ),
            )
        })?;
    Ok(GcFault {
        target_cgroup: target,
        to_percent: spec.to_percent.or(defaults.to_percent).unwrap_or(0.0),
        hooks: ctx.hooks(spec, |c| c.gc_hook.as_ref())?,
    })
}

impl FaultKind for GcFault {
    fn check(
        &self,
        duration: Duration,
        caps: &ChaosLimits,
        source: &str,
        endpoints: &EndpointPolicy,
    ) -> Result<(), Refused> {
        let g = self;
        if g.target_cgroup.is_empty() {
            return Err(Refused::new(
                "target_cgroup",
                "gc.target_cgroup is required: the workload cgroup to squeeze",
            ));
        }
        check_cgroup(&g.target_cgroup)?;
        if g.to_percent != 0.0 && !GcFault::TO_PERCENT.contains(&g.to_percent) {
            return Err(Refused::new(
                "to_percent",
                format!("gc.to_percent {} is outside 50-99", g.to_percent),
            ));
        }
        check_hooks(&g.hooks, endpoints)?;
        caps.check_memory_duration(duration, source)
            .map_err(|e| Refused::limit("duration", e))
    }

    fn preflight(&self, node: &str, caps: &Capabilities) -> Result<(), String> {
        super::needs_cgroups(node, caps)
    }

    fn kernel_summary(&self, during: &Window) -> String {
        summary(during)
    }

    fn summary(&self) -> String {
        format!("gc pressure on {}", self.target_cgroup)
    }
}

pub fn summary(during: &Window) -> String {
    let peak = during
        .fault_max
        .as_ref()
        .and_then(FaultReadings::gc)
        .copied()
        .unwrap_or_default();
    format!(
        "gc: {:.0} pages reclaimed, peak group memory PSI {:.2}",
        peak.reclaimed_pages as f64, peak.psi_some_avg10
    )
}
