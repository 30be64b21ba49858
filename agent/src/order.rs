//! An order's child (`faultline-agent __order`): the `FaultSpec` the coordinator sent
//! arrives on stdin (framed, see `faultline_agent::child`) and becomes the same typed
//! arguments the local mode's flags give, one conversion per fault kind, so the order
//! runs through exactly the code of `faultline-agent inject`: its validation, caps,
//! journal, signal handling and in-kernel deadline. No command line is rebuilt from
//! an order. The child reports back typed (`crate::report`).
//!
//! The daemon converts an order here too before it starts a child, so a malformed
//! one is refused without a process.
use std::{io::Read, path::PathBuf, time::Duration};

use anyhow::Result;
use faultline_proto::{
    limits::Percent,
    v1::{
        CacheFault, CpuFault, Direction, FaultSpec, GcFault, Hook, JitterDistribution,
        LatencyFault, LossFault, MemoryFault, TrafficFilter, fault_spec,
    },
};

use crate::{
    Fault, UsageError,
    faults::{
        cache::CacheArgs, cpu::CpuArgs, gc::GcArgs, latency::LatencyArgs, loss::LossArgs,
        memory::MemoryArgs,
    },
    filter::FilterArgs,
    inject::{LimitArgs, TargetArgs},
    stress::StressArgs,
};

/// How often a network fault reports its counters to the daemon: the experiment's
/// sample rate (10 Hz). The others report a reading a second, as often as their
/// numbers move.
const NETWORK_INTERVAL: Duration = Duration::from_millis(100);

/// The child's whole life: read the order, run it, report.
pub async fn run(state_dir: PathBuf, limits: LimitArgs) -> Result<()> {
    crate::report::enable();
    let mut bytes = Vec::new();
    std::io::stdin()
        .take(faultline_agent::child::MAX_MESSAGE as u64 + 16)
        .read_to_end(&mut bytes)?;
    let mut frames = faultline_agent::child::Frames::default();
    frames.push(&bytes);
    let spec: FaultSpec = frames
        .next_message()
        .map_err(|e| UsageError(format!("the order: {e}")))?
        .ok_or_else(|| UsageError("no order on stdin".into()))?;
    crate::run_fault(state_dir, limits, fault(&spec)?).await
}

fn duration(d: Option<&prost_types::Duration>, field: &str) -> Result<Duration, UsageError> {
    let d = d.ok_or_else(|| UsageError(format!("{field} is required")))?;
    Duration::try_from(*d).map_err(|_| UsageError(format!("{field} must not be negative")))
}

fn percent(v: f64, field: &str) -> Result<Percent, UsageError> {
    Percent::new(v).map_err(|e| UsageError(format!("{field}: {e}")))
}

/// The order's fault as the local mode's arguments; a mistake names its field.
pub fn fault(spec: &FaultSpec) -> Result<Fault, UsageError> {
    let length = duration(spec.duration.as_ref(), "fault.duration")?;
    let fault = spec
        .fault
        .as_ref()
        .ok_or_else(|| UsageError("fault: none given".into()))?;
    Ok(match fault {
        fault_spec::Fault::Loss(l) => Fault::Loss {
            target: target(&l.interface, l.direction, length, l.filter.as_ref())?,
            loss: loss(l)?,
        },
        fault_spec::Fault::Latency(l) => Fault::Latency {
            target: target(&l.interface, l.direction, length, l.filter.as_ref())?,
            latency: latency(l)?,
        },
        fault_spec::Fault::Cpu(c) => Fault::Cpu(cpu(c, length)?),
        fault_spec::Fault::Memory(m) => Fault::Memory(memory(m, length)?),
        fault_spec::Fault::Gc(g) => Fault::Gc(gc(g, length)?),
        fault_spec::Fault::Cache(c) => Fault::Cache(cache(c, length)?),
    })
}

/// What the daemon must know of an order before a child runs it: the URLs the child
/// would call (checked against the agent's own `--allow-endpoint`) and the share of
/// the node a stress consumes.
#[derive(Default)]
pub struct Needs<'a> {
    pub hooks: &'a [Hook],
    pub stress_share: Option<f64>,
}

pub fn needs(f: &fault_spec::Fault) -> Needs<'_> {
    let share = |percent| faultline_proto::spec::Scenario::of(f).stress_share(percent);
    match f {
        fault_spec::Fault::Gc(g) => Needs {
            hooks: &g.hooks,
            stress_share: None,
        },
        fault_spec::Fault::Cache(c) => Needs {
            hooks: &c.hooks,
            stress_share: None,
        },
        fault_spec::Fault::Cpu(c) => Needs {
            hooks: &[],
            stress_share: share(c.percent),
        },
        fault_spec::Fault::Memory(m) => Needs {
            hooks: &[],
            stress_share: share(m.percent),
        },
        fault_spec::Fault::Loss(_) | fault_spec::Fault::Latency(_) => Needs::default(),
    }
}

fn target(
    iface: &str,
    direction: i32,
    length: Duration,
    filter: Option<&TrafficFilter>,
) -> Result<TargetArgs, UsageError> {
    let direction = match Direction::try_from(direction) {
        Ok(Direction::Ingress | Direction::Unspecified) => crate::inject::Direction::Ingress,
        Ok(Direction::Egress) => crate::inject::Direction::Egress,
        Ok(Direction::Both) => crate::inject::Direction::Both,
        Err(_) => return Err(UsageError(format!("direction: unknown value {direction}"))),
    };
    let filter = match filter {
        Some(f) => {
            let f = f.parse().map_err(|e| UsageError(e.to_string()))?;
            FilterArgs {
                src: f.src,
                dst: f.dst,
                proto: f.proto,
                port: f.port,
                sport: f.sport,
                dport: f.dport,
            }
        }
        None => FilterArgs::default(),
    };
    Ok(TargetArgs::ordered(
        iface.to_owned(),
        direction,
        length,
        filter,
        NETWORK_INTERVAL,
    ))
}

fn loss(l: &LossFault) -> Result<LossArgs, UsageError> {
    let p = percent(l.percent, "loss.percent")?;
    faultline_proto::filter::check_loss_resolution(p)
        .map_err(|e| UsageError(format!("loss.percent: {e}")))?;
    Ok(LossArgs {
        percent: Some(p),
        ..LossArgs::default()
    })
}

fn latency(l: &LatencyFault) -> Result<LatencyArgs, UsageError> {
    let delay = duration(l.delay.as_ref(), "latency.delay")?;
    let jitter = match &l.jitter {
        Some(j) => duration(Some(j), "latency.jitter")?,
        None => Duration::ZERO,
    };
    let distribution = match JitterDistribution::try_from(l.jitter_distribution) {
        Ok(JitterDistribution::Uniform | JitterDistribution::Unspecified) => {
            crate::faults::latency::Distribution::Uniform
        }
        Ok(JitterDistribution::Normal) => crate::faults::latency::Distribution::Normal,
        Err(_) => {
            return Err(UsageError(format!(
                "latency.jitter_distribution: unknown value {}",
                l.jitter_distribution
            )));
        }
    };
    let loss_percent = match l.loss_percent {
        0.0 => None,
        v => {
            let p = percent(v, "latency.loss_percent")?;
            faultline_proto::filter::check_loss_resolution(p)
                .map_err(|e| UsageError(format!("latency.loss_percent: {e}")))?;
            Some(p)
        }
    };
    Ok(LatencyArgs::ordered(
        delay,
        jitter,
        distribution,
        l.allow_reorder,
        loss_percent,
    ))
}

fn cpu(c: &CpuFault, length: Duration) -> Result<CpuArgs, UsageError> {
    Ok(CpuArgs {
        percent: percent(c.percent, "cpu.percent")?,
        stress: StressArgs::ordered(length),
    })
}

fn memory(m: &MemoryFault, length: Duration) -> Result<MemoryArgs, UsageError> {
    Ok(MemoryArgs::ordered(
        percent(m.percent, "memory.percent")?,
        StressArgs::ordered(length),
    ))
}

fn hooks(hooks: &[Hook]) -> Result<Vec<Hook>, UsageError> {
    hooks
        .iter()
        .map(|h| crate::faults::hooks::checked(&h.name, &h.url).map_err(UsageError))
        .collect()
}

fn gc(g: &GcFault, length: Duration) -> Result<GcArgs, UsageError> {
    let to = match g.to_percent {
        0.0 => GcFault::DEFAULT_TO_PERCENT,
        v => v,
    };
    Ok(GcArgs::ordered(
        PathBuf::from(&g.target_cgroup),
        percent(to, "gc.to_percent")?,
        length,
        hooks(&g.hooks)?,
    ))
}

fn cache(c: &CacheFault, length: Duration) -> Result<CacheArgs, UsageError> {
    let target = (!c.target_cgroup.is_empty()).then(|| PathBuf::from(&c.target_cgroup));
    Ok(CacheArgs::ordered(
        c.paths.iter().map(PathBuf::from).collect(),
        target,
        hooks(&c.hooks)?,
        length,
    ))
}

#[cfg(test)]
mod tests {
    use faultline_proto::v1::Direction;

    use super::*;

    fn dur(ms: u64) -> Option<prost_types::Duration> {
        Some(Duration::from_millis(ms).try_into().unwrap())
    }

    fn spec(fault: fault_spec::Fault, ms: u64) -> FaultSpec {
        FaultSpec {
            fault: Some(fault),
            duration: dur(ms),
        }
    }

    #[test]
    fn each_order_becomes_the_arguments_its_flags_would_give() {
        let Fault::Loss { target, loss } = fault(&spec(
            fault_spec::Fault::Loss(LossFault {
                interface: "eth0".into(),
                direction: Direction::Both as i32,
                percent: 0.5,
                filter: Some(TrafficFilter {
                    protocol: "udp".into(),
                    dport: "7000".into(),
                    ..Default::default()
                }),
            }),
            60_000,
        ))
        .unwrap() else {
            panic!("a loss order is a loss fault")
        };
        assert_eq!(target.iface, "eth0");
        assert_eq!(target.direction, crate::inject::Direction::Both);
        assert_eq!(target.duration, Duration::from_secs(60));
        assert_eq!(target.interval, NETWORK_INTERVAL);
        assert_eq!(target.filter.describe(), "proto 17 dport 7000");
        assert_eq!(loss.percent.unwrap().value(), 0.5);

        let Fault::Latency { latency, .. } = fault(&spec(
            fault_spec::Fault::Latency(LatencyFault {
                interface: "eth0".into(),
                direction: Direction::Egress as i32,
                delay: dur(50),
                jitter: dur(5),
                jitter_distribution: JitterDistribution::Normal as i32,
                ..Default::default()
            }),
            1500,
        ))
        .unwrap() else {
            panic!("a latency order is a latency fault")
        };
        assert_eq!(latency.delay, Duration::from_millis(50));
        assert_eq!(latency.jitter, Duration::from_millis(5));
        assert_eq!(
            latency.jitter_distribution,
            crate::faults::latency::Distribution::Normal
        );
        assert_eq!(latency.loss_percent, None);

        let Fault::Gc(g) = fault(&spec(
            fault_spec::Fault::Gc(GcFault {
                target_cgroup: "system.slice/app.service".into(),
                to_percent: 0.0,
                hooks: vec![Hook {
                    name: "jvm".into(),
                    url: "http://127.0.0.1:8080/gc".into(),
                }],
            }),
            30_000,
        ))
        .unwrap() else {
            panic!("a gc order is a gc fault")
        };
        assert_eq!(g.to_percent.value(), GcFault::DEFAULT_TO_PERCENT);
        assert_eq!(g.hooks[0].name, "jvm");
        assert!(
            g.runtime_command.is_none(),
            "an order never names a command"
        );

        // A path that looks like a flag is a path: there is no command line.
        let Fault::Cache(c) = fault(&spec(
            fault_spec::Fault::Cache(CacheFault {
                paths: vec!["--runtime-command=sh".into()],
                ..Default::default()
            }),
            30_000,
        ))
        .unwrap() else {
            panic!("a cache order is a cache fault")
        };
        assert_eq!(c.paths, [PathBuf::from("--runtime-command=sh")]);
        assert_eq!(c.observe, Duration::from_secs(30));
    }

    #[test]
    fn a_malformed_order_is_refused_naming_its_field() {
        let refused = |s: FaultSpec| fault(&s).err().expect("refused").0;
        assert!(refused(FaultSpec::default()).contains("fault.duration"));
        let cpu = |percent| spec(fault_spec::Fault::Cpu(CpuFault { percent }), 1000);
        assert!(refused(cpu(150.0)).contains("cpu.percent"));
        assert!(refused(cpu(f64::NAN)).contains("cpu.percent"));
        let loss = |direction, percent, filter| {
            spec(
                fault_spec::Fault::Loss(LossFault {
                    interface: "eth0".into(),
                    direction,
                    percent,
                    filter,
                }),
                1000,
            )
        };
        assert!(refused(loss(99, 1.0, None)).contains("direction"));
        assert!(refused(loss(1, 1e-320, None)).contains("resolution"));
        let bad_port = TrafficFilter {
            port: "70000".into(),
            ..Default::default()
        };
        assert!(refused(loss(1, 1.0, Some(bad_port))).contains("filter.port"));
        let negative = FaultSpec {
            duration: Some(prost_types::Duration {
                seconds: -1,
                nanos: 0,
            }),
            ..cpu(5.0)
        };
        assert!(refused(negative).contains("must not be negative"));
        let hook = spec(
            fault_spec::Fault::Cache(CacheFault {
                hooks: vec![Hook {
                    name: "bad name".into(),
                    url: "http://127.0.0.1/x".into(),
                }],
                ..Default::default()
            }),
            1000,
        );
        assert!(refused(hook).contains("letters"));
    }
}
