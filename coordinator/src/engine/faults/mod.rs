//! One module per fault kind, each owning how its order is built from a spec, its
//! safety limits, what its node must offer (preflight) and its kernel summary.
//! Each module implements `FaultKind` for its order message; `build` (from the
//! spec's scenario) and `kind` (from the order) are the two dispatches, both
//! exhaustive matches the compiler checks.
pub mod cache;
pub mod cpu;
pub mod gc;
pub mod latency;
pub mod loss;
pub mod memory;

use std::time::Duration;

use faultline_proto::{
    endpoint::EndpointPolicy,
    limits::{ChaosLimits, LimitExceeded, Percent},
    spec::{Direction as SpecDirection, Scenario, Spec, SpecError},
    v1::{Capabilities, Direction, Hook, TrafficFilter, fault_spec::Fault},
};

use crate::{config::Settings, engine::experiment::window::Window};

/// A limit or rule a requested fault breaks: the spec field it is about, and why.
#[derive(Debug, PartialEq)]
pub struct Refused {
    pub field: &'static str,
    pub message: String,
}

impl Refused {
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

impl Refused {
    /// A limit exceeded: a duration limit is about the spec's `duration`, any other
    /// about the scenario's `magnitude` field.
    pub fn limit(magnitude: &'static str, e: LimitExceeded) -> Self {
        let field = if e.limit.ends_with("max_duration") {
            "duration"
        } else {
            magnitude
        };
        Refused::new(field, e.to_string())
    }
}

/// What building an order needs besides the spec.
pub struct BuildCtx<'a> {
    pub settings: &'a Settings,
    /// The target node's default-route interface ("" when it reported none).
    pub default_interface: &'a str,
    pub node: &'a str,
    /// The spec's text, to name lines.
    pub text: &'a str,
}

impl BuildCtx<'_> {
    fn err(&self, field: &str, msg: impl Into<String>) -> SpecError {
        SpecError::at(self.text, field, msg)
    }

    /// The spec's interface, or the node's default route's.
    fn interface(&self, spec: &Spec) -> Result<String, SpecError> {
        match &spec.interface {
            Some(i) => Ok(i.clone()),
            None if !self.default_interface.is_empty() => Ok(self.default_interface.to_owned()),
            None => Err(self.err(
                "interface",
                format!(
                    "required: node {} reported no default-route interface to default to",
                    self.node
                ),
            )),
        }
    }

    /// The spec's hooks plus those of its components (from the config's map).
    fn hooks(
        &self,
        spec: &Spec,
        pick: impl Fn(&crate::config::Component) -> Option<&String>,
    ) -> Result<Vec<Hook>, SpecError> {
        let mut hooks: Vec<Hook> = spec
            .hooks
            .iter()
            .map(|(name, url)| Hook {
                name: name.clone(),
                url: url.clone(),
            })
            .collect();
        for c in &spec.components {
            let known = || {
                let names: Vec<&str> = self
                    .settings
                    .components
                    .keys()
                    .map(String::as_str)
                    .collect();
                if names.is_empty() {
                    "none configured".to_owned()
                } else {
                    names.join(", ")
                }
            };
            let comp = self.settings.components.get(c).ok_or_else(|| {
                self.err(
                    "components",
                    format!(
                        "'{c}' is not in the coordinator's components map ({}; known: {})",
                        self.settings.source,
                        known()
                    ),
                )
            })?;
            if let Some(url) = pick(comp)
                && !hooks.iter().any(|h| h.name == *c)
            {
                hooks.push(Hook {
                    name: c.clone(),
                    url: url.clone(),
                });
            }
        }
        Ok(hooks)
    }
}

fn direction(spec: &Spec, default: Direction) -> i32 {
    let d = match spec.direction {
        None => default,
        Some(SpecDirection::Ingress) => Direction::Ingress,
        Some(SpecDirection::Egress) => Direction::Egress,
        Some(SpecDirection::Both) => Direction::Both,
    };
    d as i32
}

fn filter(spec: &Spec) -> Option<TrafficFilter> {
    let f = spec.filter.clone().unwrap_or_default();
    let s = |v: Option<String>| v.unwrap_or_default();
    Some(TrafficFilter {
        src_cidr: s(f.src),
        dst_cidr: s(f.dst),
        protocol: s(f.protocol),
        port: s(f.port),
        sport: s(f.sport),
        dport: s(f.dport),
    })
}

/// The fault order a (shape-checked) spec asks for on one node.
pub fn build(spec: &Spec, ctx: &BuildCtx<'_>) -> Result<Fault, SpecError> {
    let scenario = spec
        .scenario
        .ok_or_else(|| ctx.err("scenario", "required"))?;
    Ok(match scenario {
        Scenario::PacketLoss => Fault::Loss(loss::build(spec, ctx)?),
        Scenario::LatencyInjection => Fault::Latency(latency::build(spec, ctx)?),
        Scenario::CpuStress => Fault::Cpu(cpu::build(spec, ctx)?),
        Scenario::MemoryStress => Fault::Memory(memory::build(spec, ctx)?),
        Scenario::GcPressure => Fault::Gc(gc::build(spec, ctx)?),
        Scenario::CacheInvalidation => Fault::Cache(cache::build(spec, ctx)?),
    })
}

/// What the engine asks of a fault kind's order; each kind's module implements it
/// for its message, and `kind` is the one dispatch over them.
pub trait FaultKind {
    /// The fault against the safety limits (and the rules every order follows),
    /// before any lease. The agent checks the same limits again.
    fn check(
        &self,
        duration: Duration,
        caps: &ChaosLimits,
        source: &str,
        endpoints: &EndpointPolicy,
    ) -> Result<(), Refused>;

    /// What the node must offer for the fault; Err says what it lacks.
    fn preflight(&self, node: &str, caps: &Capabilities) -> Result<(), String>;

    /// The interface it acts on, if it is a network fault.
    fn interface(&self) -> Option<&str> {
        None
    }

    /// What the kernel saw while the fault was applied, for the result.
    fn kernel_summary(&self, during: &Window) -> String;

    /// The fault in a few words (lists, the dashboard).
    fn summary(&self) -> String;
}

/// The kind's module, for an order's fault.
pub fn kind(f: &Fault) -> &dyn FaultKind {
    match f {
        Fault::Loss(l) => l,
        Fault::Latency(l) => l,
        Fault::Cpu(c) => c,
        Fault::Memory(m) => m,
        Fault::Gc(g) => g,
        Fault::Cache(c) => c,
    }
}

/// The interface whose attach the rollback self-test exercises.
pub fn interface<'a>(f: &'a Fault, default: &'a str) -> &'a str {
    kind(f).interface().unwrap_or(default)
}

/// The network faults load BPF programs.
fn needs_bpf(node: &str, caps: &Capabilities) -> Result<(), String> {
    if !caps.bpf {
        return Err(format!("node {node} cannot load BPF programs"));
    }
    Ok(())
}

/// The stress faults live in cgroups.
fn needs_cgroups(node: &str, caps: &Capabilities) -> Result<(), String> {
    if caps.cgroup == "none" {
        return Err(format!("node {node} has no cgroup filesystem"));
    }
    Ok(())
}

/// A percentage from a request, named.
fn percent(value: f64, field: &'static str) -> Result<Percent, Refused> {
    Percent::new(value).map_err(|e| Refused::new(field, format!("{field}: {e}")))
}

/// A loss probability from a request: a percentage the data path can carry.
fn loss_percent(value: f64, field: &'static str) -> Result<Percent, Refused> {
    let p = percent(value, field)?;
    faultline_proto::filter::check_loss_resolution(p)
        .map_err(|e| Refused::new(field, format!("{field}: {e}")))?;
    Ok(p)
}

/// A traffic filter by the rules the agent parses it with.
fn check_filter(f: Option<&TrafficFilter>) -> Result<(), Refused> {
    if let Some(f) = f {
        f.parse()
            .map_err(|e| Refused::new(e.field, e.to_string()))?;
    }
    Ok(())
}

/// A target cgroup by the rule the agent checks it with (empty: none given).
fn check_cgroup(path: &str) -> Result<(), Refused> {
    if path.is_empty() {
        return Ok(());
    }
    faultline_proto::filter::check_cgroup_path(path)
        .map_err(|e| Refused::new("target_cgroup", format!("target_cgroup: {e}")))
}

/// A hook is a named http:// endpoint the coordinator's policy allows.
fn check_hooks(hooks: &[Hook], endpoints: &EndpointPolicy) -> Result<(), Refused> {
    for h in hooks {
        if !Hook::valid_name(&h.name) {
            return Err(Refused::new(
                "hooks",
                format!("name '{}' must be letters, digits, '-' or '_'", h.name),
            ));
        }
        endpoints.check(&h.url).map_err(|e| {
            Refused::new(
                "hooks",
                format!("{}: {e} (coordinator node_endpoints.allow)", h.name),
            )
        })?;
    }
    Ok(())
}
