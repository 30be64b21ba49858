//! packet_loss: Bernoulli loss in the kernel's data path on one interface.
use std::time::Duration;

use faultline_proto::{
    endpoint::EndpointPolicy,
    limits::ChaosLimits,
    spec::{Spec, SpecError},
    v1::{Capabilities, Direction, LossFault},
};

use super::{BuildCtx, FaultKind, Refused, check_filter, loss_percent};
use crate::engine::experiment::window::Window;

pub fn build(spec: &Spec, ctx: &BuildCtx<'_>) -> Result<LossFault, SpecError> {
    Ok(LossFault {
        interface: ctx.interface(spec)?,
        // Loss is emulated where packets arrive (a sender's own egress drop only
        // makes its sendto() fail and retry).
        direction: super::direction(spec, Direction::Ingress),
        percent: spec
            .magnitude()
            .ok_or_else(|| ctx.err("packet_loss", "required, e.g. 1.0%"))?
            .value(),
        filter: super::filter(spec),
    })
}

impl FaultKind for LossFault {
    fn check(
        &self,
        duration: Duration,
        caps: &ChaosLimits,
        source: &str,
        _endpoints: &EndpointPolicy,
    ) -> Result<(), Refused> {
        let l = self;
        let p = loss_percent(l.percent, "packet_loss")?;
        check_filter(l.filter.as_ref())?;
        caps.check_loss(p, duration, source)
            .map_err(|e| Refused::limit("packet_loss", e))
    }

    fn preflight(&self, node: &str, caps: &Capabilities) -> Result<(), String> {
        super::needs_bpf(node, caps)
    }

    fn interface(&self) -> Option<&str> {
        Some(&self.interface)
    }

    fn kernel_summary(&self, during: &Window) -> String {
        summary(during)
    }

    fn summary(&self) -> String {
        format!("loss {}% on {}", self.percent, self.interface)
    }
}

/// Packet counters for the network faults (loss and latency share them).
pub fn summary(during: &Window) -> String {
    format!(
        "matched {} dropped {} delayed {} | tcp retransmits +{}",
        during.matched,
        during.dropped,
        during.delayed,
        during.retransmits.1 - during.retransmits.0.unwrap_or(during.retransmits.1)
    )
}
