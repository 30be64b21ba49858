//! cache_invalidation: a one-shot eviction of files' page cache (and a cgroup v2
//! workload's file cache) plus each component's own cache through its hook; the
//! duration is the observation window. Recovery is timed from the eviction.
use std::time::Duration;

use faultline_proto::{
    endpoint::EndpointPolicy,
    limits::ChaosLimits,
    spec::{Spec, SpecError},
    v1::{CacheFault, Capabilities, FaultReadings},
};

use super::{BuildCtx, FaultKind, Refused, check_cgroup, check_hooks};
use crate::engine::experiment::window::Window;

pub fn build(spec: &Spec, ctx: &BuildCtx<'_>) -> Result<CacheFault, SpecError> {
    let mut paths = spec.paths.clone();
    for c in &spec.components {
        if let Some(comp) = ctx.settings.components.get(c) {
            paths.extend(comp.paths.iter().cloned());
        }
    }
    let f = CacheFault {
        paths,
        target_cgroup: spec.target_cgroup.clone().unwrap_or_default(),
        hooks: ctx.hooks(spec, |c| c.hook.as_ref())?,
    };
    if f.paths.is_empty() && f.target_cgroup.is_empty() && f.hooks.is_empty() {
        return Err(ctx.err(
            "components",
            "name what to evict: components (with hooks or paths in the coordinator's config), \
             paths, target_cgroup or hooks",
        ));
    }
    Ok(f)
}

impl FaultKind for CacheFault {
    fn check(
        &self,
        duration: Duration,
        caps: &ChaosLimits,
        source: &str,
        endpoints: &EndpointPolicy,
    ) -> Result<(), Refused> {
        let c = self;
        if c.paths.is_empty() && c.target_cgroup.is_empty() && c.hooks.is_empty() {
            return Err(Refused::new(
                "components",
                "cache: name what to evict (paths, target_cgroup and/or hooks)",
            ));
        }
        if let Some(p) = c.paths.iter().find(|p| !p.starts_with('/')) {
            return Err(Refused::new(
                "paths",
                format!("cache.paths: '{p}' is not an absolute path"),
            ));
        }
        check_cgroup(&c.target_cgroup)?;
        check_hooks(&c.hooks, endpoints)?;
        caps.check_memory_duration(duration, source)
            .map_err(|e| Refused::limit("duration", e))
    }

    fn preflight(&self, node: &str, caps: &Capabilities) -> Result<(), String> {
        preflight(self, node, caps)
    }

    fn kernel_summary(&self, during: &Window) -> String {
        summary(during)
    }

    fn summary(&self) -> String {
        format!(
            "cache invalidation ({} path(s), {} hook(s))",
            self.paths.len(),
            self.hooks.len()
        )
    }
}

fn preflight(c: &CacheFault, node: &str, caps: &Capabilities) -> Result<(), String> {
    if !c.target_cgroup.is_empty() && caps.cgroup != "v2" {
        return Err(format!(
            "node {node} has cgroup {}: a workload's file cache can be reclaimed on cgroup v2 \
             only (evict by path instead)",
            caps.cgroup
        ));
    }
    Ok(())
}

pub fn summary(during: &Window) -> String {
    let last = during
        .fault_last
        .as_ref()
        .and_then(FaultReadings::cache)
        .cloned()
        .unwrap_or_default();
    format!(
        "cache resident {:.1}% -> {:.1}% evicted -> {:.1}% rebuilt",
        last.resident_before_percent, last.resident_after_percent, last.resident_percent
    )
}
