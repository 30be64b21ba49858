//! The safety limits at the coordinator's door: a requested fault is checked against
//! the `chaos_limits` before any lease is granted, and a refusal is INVALID_ARGUMENT
//! naming the limit. Each fault kind's own rules live in `faults`; every agent checks
//! the same limits again (defence in depth).
use std::time::Duration;

use faultline_proto::{endpoint::EndpointPolicy, limits::ChaosLimits, v1::FaultSpec};
use tonic::Status;

pub fn check(
    spec: &FaultSpec,
    caps: &ChaosLimits,
    source: &str,
    endpoints: &EndpointPolicy,
) -> Result<(), Status> {
    let duration = required_duration(spec.duration.as_ref(), "fault.duration")?;
    if duration.is_zero() {
        return Err(Status::invalid_argument(
            "fault.duration must be greater than zero",
        ));
    }
    let fault = spec.fault.as_ref().ok_or_else(|| {
        Status::invalid_argument("fault: one of loss, latency, cpu, memory, gc, cache")
    })?;
    crate::engine::faults::kind(fault)
        .check(duration, caps, source, endpoints)
        .map_err(|r| Status::invalid_argument(r.message))
}

fn required_duration(d: Option<&prost_types::Duration>, field: &str) -> Result<Duration, Status> {
    let d = d.ok_or_else(|| Status::invalid_argument(format!("{field} is required")))?;
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return Err(Status::invalid_argument(format!(
            "{field} must be a non-negative duration"
        )));
    }
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}

#[cfg(test)]
mod tests {
    use faultline_proto::{
        limits::{Percent, Profile},
        v1::{CacheFault, CpuFault, GcFault, LatencyFault, LossFault, MemoryFault},
        v1::{Hook, JitterDistribution, fault_spec::Fault},
    };
    use tonic::Code;

    use super::*;

    fn secs(s: i64) -> Option<prost_types::Duration> {
        Some(prost_types::Duration {
            seconds: s,
            nanos: 0,
        })
    }

    fn millis(ms: i32) -> Option<prost_types::Duration> {
        Some(prost_types::Duration {
            seconds: 0,
            nanos: ms * 1_000_000,
        })
    }

    fn spec(fault: Fault, duration_s: i64) -> FaultSpec {
        FaultSpec {
            fault: Some(fault),
            duration: secs(duration_s),
        }
    }

    fn refused_by(spec: &FaultSpec, profile: Profile) -> String {
        let e = check(
            spec,
            &ChaosLimits::profile(profile),
            "test",
            &EndpointPolicy::default(),
        )
        .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        e.message().to_owned()
    }

    fn latency(delay_ms: i32, jitter_ms: i32, normal: bool) -> Fault {
        Fault::Latency(LatencyFault {
            delay: millis(delay_ms),
            jitter: millis(jitter_ms),
            jitter_distribution: if normal {
                JitterDistribution::Normal as i32
            } else {
                JitterDistribution::Uniform as i32
            },
            ..Default::default()
        })
    }

    #[test]
    fn every_limit_of_both_profiles_is_enforced_and_named() {
        let loss = |p| {
            Fault::Loss(LossFault {
                percent: p,
                ..Default::default()
            })
        };
        let cpu = |p| Fault::Cpu(CpuFault { percent: p });
        let memory = |p| Fault::Memory(MemoryFault { percent: p });
        let gc = || {
            Fault::Gc(GcFault {
                target_cgroup: "app".into(),
                ..Default::default()
            })
        };
        let cache = || {
            Fault::Cache(CacheFault {
                paths: vec!["/srv/app/data".into()],
                ..Default::default()
            })
        };
        for profile in [Profile::Production, Profile::Staging] {
            let caps = ChaosLimits::profile(profile);
            let max = |p: Percent| p.value();
            let cases = [
                (
                    loss(max(caps.packet_loss.max_loss) + 0.1),
                    30,
                    "packet_loss.max_loss",
                ),
                (
                    loss(0.1),
                    caps.packet_loss.max_duration.as_secs() as i64 + 1,
                    "packet_loss.max_duration",
                ),
                (
                    cpu(max(caps.cpu_stress.max_stress) + 1.0),
                    30,
                    "cpu_stress.max_stress",
                ),
                (
                    cpu(1.0),
                    caps.cpu_stress.max_duration.as_secs() as i64 + 1,
                    "cpu_stress.max_duration",
                ),
                (
                    memory(max(caps.memory_stress.max_stress) + 1.0),
                    30,
                    "memory_stress.max_stress",
                ),
                (
                    memory(1.0),
                    caps.memory_stress.max_duration.as_secs() as i64 + 1,
                    "memory_stress.max_duration",
                ),
                (
                    latency(
                        caps.latency_injection.max_latency.as_millis() as i32 + 1,
                        0,
                        false,
                    ),
                    30,
                    "latency_injection.max_latency",
                ),
                (
                    latency(10, 0, false),
                    caps.latency_injection.max_duration.as_secs() as i64 + 1,
                    "latency_injection.max_duration",
                ),
                (
                    gc(),
                    caps.memory_stress.max_duration.as_secs() as i64 + 1,
                    "memory_stress.max_duration",
                ),
                (
                    cache(),
                    caps.memory_stress.max_duration.as_secs() as i64 + 1,
                    "memory_stress.max_duration",
                ),
            ];
            for (fault, duration, limit) in cases {
                let msg = refused_by(&spec(fault, duration), profile);
                assert!(msg.contains(limit), "{profile}: {msg}");
            }
            // At the limit itself, everything passes.
            let at = [
                loss(max(caps.packet_loss.max_loss)),
                cpu(max(caps.cpu_stress.max_stress)),
                memory(max(caps.memory_stress.max_stress)),
                latency(
                    caps.latency_injection.max_latency.as_millis() as i32,
                    0,
                    false,
                ),
                gc(),
                cache(),
            ];
            for fault in at {
                assert!(
                    check(&spec(fault, 30), &caps, "test", &EndpointPolicy::default()).is_ok(),
                    "{profile}"
                );
            }
            let longest = caps.memory_stress.max_duration.as_secs() as i64;
            assert!(
                check(
                    &spec(gc(), longest),
                    &caps,
                    "test",
                    &EndpointPolicy::default()
                )
                .is_ok()
            );
            assert!(
                check(
                    &spec(cache(), longest),
                    &caps,
                    "test",
                    &EndpointPolicy::default()
                )
                .is_ok()
            );
        }
    }

    #[test]
    fn latency_is_bounded_by_its_worst_case_delay() {
        // 40 ms + 10 ms uniform jitter reaches 50 ms: allowed in production; normal
        // jitter's tail reaches ~77 ms: refused.
        assert!(
            check(
                &spec(latency(40, 10, false), 30),
                &ChaosLimits::profile(Profile::Production),
                "t",
                &EndpointPolicy::default()
            )
            .is_ok()
        );
        let msg = refused_by(&spec(latency(40, 10, true), 30), Profile::Production);
        assert!(msg.contains("latency_injection.max_latency"), "{msg}");
    }

    #[test]
    fn incomplete_requests_are_invalid_arguments() {
        let caps = ChaosLimits::profile(Profile::Production);
        let no_duration = FaultSpec {
            fault: Some(latency(10, 0, false)),
            duration: None,
        };
        assert!(
            check(&no_duration, &caps, "t", &EndpointPolicy::default())
                .unwrap_err()
                .message()
                .contains("fault.duration")
        );
        let no_fault = FaultSpec {
            fault: None,
            duration: secs(10),
        };
        assert_eq!(
            check(&no_fault, &caps, "t", &EndpointPolicy::default())
                .unwrap_err()
                .code(),
            Code::InvalidArgument
        );
        let no_delay = spec(Fault::Latency(LatencyFault::default()), 10);
        assert!(refused_by(&no_delay, Profile::Production).contains("latency.delay is required"));
        let bad_percent = spec(
            Fault::Loss(LossFault {
                percent: 150.0,
                ..Default::default()
            }),
            10,
        );
        assert!(
            refused_by(&bad_percent, Profile::Production)
                .contains("packet_loss: 150 is not a percentage")
        );
    }

    #[test]
    fn gc_and_cache_requests_are_checked_before_any_lease() {
        let refused = |f: Fault| refused_by(&spec(f, 10), Profile::Production);
        assert!(refused(Fault::Gc(GcFault::default())).contains("gc.target_cgroup is required"));
        let squeeze = |p| {
            Fault::Gc(GcFault {
                target_cgroup: "app".into(),
                to_percent: p,
                ..Default::default()
            })
        };
        assert!(refused(squeeze(30.0)).contains("gc.to_percent 30 is outside 50-99"));
        assert!(refused(squeeze(99.5)).contains("outside 50-99"));
        let hook = |name: &str, url: &str| {
            Fault::Cache(CacheFault {
                hooks: vec![Hook {
                    name: name.into(),
                    url: url.into(),
                }],
                ..Default::default()
            })
        };
        assert!(refused(hook("api", "https://x/drop")).contains("must be an http:// URL"));
        assert!(refused(hook("a b", "http://127.0.0.1/drop")).contains("name 'a b'"));
        assert!(refused(Fault::Cache(CacheFault::default())).contains("name what to evict"));
        let relative = Fault::Cache(CacheFault {
            paths: vec!["data".into()],
            ..Default::default()
        });
        assert!(refused(relative).contains("'data' is not an absolute path"));
        let ok = hook("api", "http://127.0.0.1:8080/cache/drop");
        let caps = ChaosLimits::profile(Profile::Production);
        assert!(check(&spec(ok, 10), &caps, "t", &EndpointPolicy::default()).is_ok());
    }
}
