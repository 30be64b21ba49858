//! latency_injection: a delay (with optional jitter and loss) on one interface.
use std::time::Duration;

use faultline_proto::{
    endpoint::EndpointPolicy,
    jitter,
    limits::ChaosLimits,
    spec::{JitterShape, Spec, SpecError},
    v1::{Capabilities, Direction, JitterDistribution, LatencyFault},
};

use super::{BuildCtx, FaultKind, Refused, check_filter, loss_percent};
use crate::engine::experiment::window::Window;

fn dur(d: Duration) -> Option<prost_types::Duration> {
    d.try_into().ok()
}

pub fn build(spec: &Spec, ctx: &BuildCtx<'_>) -> Result<LatencyFault, SpecError> {
    let delay = spec
        .latency
        .ok_or_else(|| ctx.err("latency", "required, e.g. 50ms"))?;
    Ok(LatencyFault {
        interface: ctx.interface(spec)?,
        // The node's replies (and everything else it sends) leave late.
        direction: super::direction(spec, Direction::Egress),
        delay: dur(delay.0),
        jitter: spec.jitter.and_then(|j| dur(j.0)),
        jitter_distribution: match spec.jitter_distribution {
            Some(JitterShape::Normal) => JitterDistribution::Normal,
            Some(JitterShape::Uniform) | None => JitterDistribution::Uniform,
        } as i32,
        allow_reorder: spec.allow_reorder.unwrap_or(false),
        filter: super::filter(spec),
        loss_percent: spec.magnitude().map_or(0.0, |p| p.value()),
    })
}

fn to_duration(d: &prost_types::Duration, field: &'static str) -> Result<Duration, Refused> {
    Duration::try_from(*d).map_err(|_| Refused::new(field, "must be a non-negative duration"))
}

impl FaultKind for LatencyFault {
    fn check(
        &self,
        duration: Duration,
        caps: &ChaosLimits,
        source: &str,
        _endpoints: &EndpointPolicy,
    ) -> Result<(), Refused> {
        let l = self;
        let delay = to_duration(
            l.delay
                .as_ref()
                .ok_or_else(|| Refused::new("latency", "latency.delay is required"))?,
            "latency",
        )?;
        let jitter = match &l.jitter {
            Some(j) => to_duration(j, "jitter")?,
            None => Duration::ZERO,
        };
        let shape = match JitterDistribution::try_from(l.jitter_distribution) {
            Ok(JitterDistribution::Normal) => jitter::Shape::Normal,
            Ok(JitterDistribution::Uniform | JitterDistribution::Unspecified) => {
                jitter::Shape::Uniform
            }
            Err(_) => {
                return Err(Refused::new(
                    "jitter_distribution",
                    format!(
                        "latency.jitter_distribution: unknown value {}",
                        l.jitter_distribution
                    ),
                ));
            }
        };
        caps.check_latency(jitter::worst_case(delay, jitter, shape), duration, source)
            .map_err(|e| Refused::limit("latency", e))?;
        if l.loss_percent != 0.0 {
            caps.check_loss(
                loss_percent(l.loss_percent, "packet_loss")?,
                duration,
                source,
            )
            .map_err(|e| Refused::limit("packet_loss", e))?;
        }
        check_filter(l.filter.as_ref())
    }

    fn preflight(&self, node: &str, caps: &Capabilities) -> Result<(), String> {
        super::needs_bpf(node, caps)
    }

    fn interface(&self) -> Option<&str> {
        Some(&self.interface)
    }

    fn kernel_summary(&self, during: &Window) -> String {
        super::loss::summary(during)
    }

    fn summary(&self) -> String {
        format!(
            "latency {:.0}ms on {}",
            self.delay
                .and_then(|d| Duration::try_from(d).ok())
                .unwrap_or_default()
                .as_secs_f64()
                * 1e3,
            self.interface
        )
    }
}
