//! A spec resolved into the plan an experiment runs: its target nodes (by name or
//! label selector, within the blast radius), the fault order (node defaults such as
//! the default-route interface and the config's component map filled in), checked
//! against the safety limits, and its health sources, prerequisites, abort
//! conditions, recovery tolerance and agent-side guard with the config's defaults
//! under the spec's own values. Every mistake is a `SpecError` naming the field and,
//! when it is written in the spec, its line; nothing is started.
use std::{collections::BTreeSet, time::Duration};

use faultline_proto::{
    limits::ChaosLimits,
    spec::{
        AbortConditions, ExpectedImpact, ImpactBounds, Prerequisites, Scenario, Severity, Spec,
        SpecError, System,
    },
    v1::{AgentGuard, Capabilities, FaultSpec, ProbeSpec, StartRequest},
};

use crate::{
    config::Settings,
    engine::faults::{self, BuildCtx},
    health::HealthPlan,
};

/// Shortest baseline: ten samples at the experiment rate of 10 Hz.
pub const MIN_BASELINE: Duration = Duration::from_secs(1);
/// Longest baseline or recovery window a request may ask for.
pub const MAX_WINDOW: Duration = Duration::from_secs(600);

#[derive(Clone, Debug)]
pub struct AbortPlan {
    pub health_score_below: Option<f64>,
    /// Percent.
    pub error_rate_above: Option<f64>,
    pub latency_p99_above_ms: Option<f64>,
    pub new_incident: Vec<Severity>,
    pub consecutive: u32,
}

impl AbortPlan {
    fn from(a: &AbortConditions) -> Self {
        Self {
            health_score_below: a.health_score_below,
            error_rate_above: a.error_rate_above.map(|p| p.value()),
            latency_p99_above_ms: a.latency_p99_above.map(|d| d.0.as_secs_f64() * 1e3),
            new_incident: a.new_incident.clone().unwrap_or_default(),
            consecutive: a.consecutive.unwrap_or(1).max(1),
        }
    }
}

#[derive(Clone, Debug)]
pub struct RecoveryPlan {
    /// Points of error rate above the baseline's.
    pub error_rate_pp: f64,
    pub p99_factor: f64,
    pub p99_extra_ms: f64,
    pub health_drop: f64,
    pub hold: Duration,
    pub timeout: Duration,
}

/// One registered node as resolution sees it.
#[derive(Clone, Debug)]
pub struct NodeView {
    pub name: String,
    pub labels: std::collections::HashMap<String, String>,
    pub connected: bool,
    pub default_interface: String,
    pub caps: Capabilities,
}

#[derive(Clone, Debug)]
pub struct Plan {
    pub name: String,
    pub scenario: Scenario,
    pub nodes: Vec<String>,
    pub fault: FaultSpec,
    pub baseline: Duration,
    pub health: HealthPlan,
    pub prerequisites: Prerequisites,
    pub required: Vec<System>,
    pub waivers: Vec<System>,
    pub abort: AbortPlan,
    pub recovery: RecoveryPlan,
    pub agent_guard: Option<AgentGuard>,
    /// The hypothesis's name (`minimal`, ..., `custom`), empty when none was stated.
    pub expected_impact: String,
    /// What it means, judged at the end (`experiment::hypothesis`).
    pub hypothesis: Option<ImpactBounds>,
    pub require_health: bool,
    /// The interface the rollback self-test attaches to.
    pub self_test_iface: String,
    /// The spec as it was resolved (file and flags merged), for the record.
    pub spec_yaml: String,
}

impl Plan {
    pub fn duration(&self) -> Duration {
        self.fault
            .duration
            .and_then(|d| Duration::try_from(d).ok())
            .unwrap_or_default()
    }
}

/// What resolution reads besides the spec.
pub struct Context<'a> {
    pub settings: &'a Settings,
    pub limits: &'a ChaosLimits,
    pub limits_source: &'a str,
    pub nodes: &'a [NodeView],
}

/// Resolves a spec document (with `overrides` over it) into a plan.
pub fn resolve(text: &str, overrides: &str, ctx: &Context<'_>) -> Result<Plan, SpecError> {
    let file = Spec::parse(text)?;
    let over = Spec::parse(overrides).map_err(|e| SpecError {
        message: format!("{} (from the command line)", e.message),
        line: None,
        ..e
    })?;
    let spec = file.merged(over);
    spec.check_shape(text)?;
    let err = |field: &str, msg: String| SpecError::at(text, field, msg);
    let scenario = spec.scenario.expect("checked by check_shape");
    let nodes = targets(&spec, ctx, text)?;
    let first = ctx
        .nodes
        .iter()
        .find(|n| n.name == nodes[0])
        .expect("targets are registered nodes");
    let fault = faults::build(
        &spec,
        &BuildCtx {
            settings: ctx.settings,
            default_interface: &first.default_interface,
            node: &first.name,
            text,
        },
    )?;
    let duration = spec.duration.expect("checked by check_shape").0;
    faults::kind(&fault)
        .check(
            duration,
            ctx.limits,
            ctx.limits_source,
            &ctx.settings.endpoints,
        )
        .map_err(|r| err(r.field, r.message))?;

    let health = health_plan(&spec, ctx, text)?;
    let agent_guard = agent_guard(&spec, ctx, text)?;

    let prerequisites = ctx
        .settings
        .prerequisites
        .clone()
        .merged(spec.prerequisites.clone().unwrap_or_default());
    let configured: BTreeSet<System> = ctx.settings.required().into_iter().collect();
    let required: Vec<System> = prerequisites.required.clone().unwrap_or_default();
    let waivers: Vec<System> = configured
        .iter()
        .filter(|s| !required.contains(s))
        .copied()
        .collect();
    let abort = AbortPlan::from(
        &ctx.settings
            .abort
            .clone()
            .merged(spec.abort_conditions.clone().unwrap_or_default()),
    );
    let recovery = recovery_plan(
        ctx.settings.recovery.clone().merged(
            spec.recovery
                .as_ref()
                .map(|r| r.options())
                .unwrap_or_default(),
        ),
    )
    .map_err(|(field, msg)| err(field, msg))?;
    let baseline = spec.baseline.map_or(ctx.settings.baseline, |b| b.0);
    check_baseline(baseline).map_err(|m| err("baseline", m))?;
    let self_test_iface = faults::interface(&fault, &first.default_interface).to_owned();
    let (expected_impact, hypothesis) = hypothesis(&spec, ctx, text)?;
    Ok(Plan {
        name: spec.name.clone().unwrap_or_default(),
        scenario,
        nodes,
        fault: FaultSpec {
            fault: Some(fault),
            duration: duration.try_into().ok(),
        },
        baseline,
        health,
        prerequisites,
        required,
        waivers,
        abort,
        recovery,
        agent_guard,
        expected_impact,
        hypothesis,
        require_health: ctx.settings.require_health,
        self_test_iface,
        spec_yaml: spec.to_yaml(),
    })
}

/// The spec's `expected_impact` as a name and its bounds: a name the config
/// defines, or bounds in place (at least one).
fn hypothesis(
    spec: &Spec,
    ctx: &Context<'_>,
    text: &str,
) -> Result<(String, Option<ImpactBounds>), SpecError> {
    let err = |msg: String| SpecError::at(text, "expected_impact", msg);
    let Some(impact) = &spec.expected_impact else {
        return Ok((String::new(), None));
    };
    let bounds = match impact {
        ExpectedImpact::Named(name) => match ctx.settings.hypotheses.get(name) {
            Some(bounds) => bounds,
            None => {
                return Err(err(format!(
                    "unknown hypothesis '{name}': the coordinator's {} defines {} (or write \
                 its bounds in place)",
                    ctx.settings.source,
                    ctx.settings
                        .hypotheses
                        .keys()
                        .map(String::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        },
        ExpectedImpact::Custom(bounds) if bounds == &ImpactBounds::default() => {
            return Err(err(
                "names no bound: give at least one of error_rate_rise_below, \
                 latency_p99_rise_below, throughput_drop_below, recovered_within, no_incident"
                    .into(),
            ));
        }
        ExpectedImpact::Custom(bounds) => bounds,
    };
    Ok((impact.name().to_owned(), Some(bounds.clone())))
}

/// The config's health sources with the spec's over them; a node-side probe's URL
/// must be one the coordinator lets agents call.
fn health_plan(spec: &Spec, ctx: &Context<'_>, text: &str) -> Result<HealthPlan, SpecError> {
    let health_cfg = ctx
        .settings
        .health
        .clone()
        .merged(spec.health.clone().unwrap_or_default());
    let health = HealthPlan::from_config(&health_cfg);
    for (i, p) in health.probes.iter().enumerate() {
        if p.from == faultline_proto::spec::ProbeFrom::Node {
            ctx.settings.endpoints.check(&p.url).map_err(|e| {
                SpecError::at(
                    text,
                    &format!("health.http.{i}.url"),
                    format!("{e} (coordinator node_endpoints.allow)"),
                )
            })?;
        }
    }
    Ok(health)
}

/// The guard that travels with the order, if the spec sets one; its probe's URL
/// must be one the coordinator lets agents call.
fn agent_guard(
    spec: &Spec,
    ctx: &Context<'_>,
    text: &str,
) -> Result<Option<AgentGuard>, SpecError> {
    let Some(g) = &spec.agent_guard else {
        return Ok(None);
    };
    let probe = match &g.http {
        Some(p) => {
            ctx.settings.endpoints.check(&p.url).map_err(|e| {
                SpecError::at(
                    text,
                    "agent_guard.http.url",
                    format!("{e} (coordinator node_endpoints.allow)"),
                )
            })?;
            Some(ProbeSpec {
                url: p.url.clone(),
                rate_hz: p.rate.map_or(10.0, |r| r.0),
                timeout: p.timeout.and_then(|t| t.0.try_into().ok()),
            })
        }
        None => None,
    };
    Ok(Some(AgentGuard {
        probe,
        error_rate_above_percent: g.error_rate_above.map_or(0.0, |p| p.value()),
        latency_p99_above: g.latency_p99_above.and_then(|d| d.0.try_into().ok()),
        psi_cpu_above: g.psi_cpu_above.unwrap_or(0.0),
        psi_memory_above: g.psi_memory_above.unwrap_or(0.0),
        tcp_retransmits_per_s_above: g.tcp_retransmits_above.unwrap_or(0.0),
        consecutive: g.consecutive.unwrap_or(1),
        window: g.window.and_then(|w| w.0.try_into().ok()),
    }))
}

fn check_baseline(b: Duration) -> Result<(), String> {
    if b < MIN_BASELINE {
        return Err(format!(
            "must be at least {MIN_BASELINE:?}: recovery is judged against it"
        ));
    }
    if b > MAX_WINDOW {
        return Err(format!("is limited to {MAX_WINDOW:?}"));
    }
    Ok(())
}

fn recovery_plan(
    r: faultline_proto::spec::RecoveryOptions,
) -> Result<RecoveryPlan, (&'static str, String)> {
    let t = r.tolerance.unwrap_or_default();
    let plan = RecoveryPlan {
        error_rate_pp: t.error_rate.map_or(0.05, |p| p.value()),
        p99_factor: t.latency_p99_factor.unwrap_or(1.2),
        p99_extra_ms: t.latency_p99_extra.map_or(5.0, |d| d.0.as_secs_f64() * 1e3),
        health_drop: t.health_score_drop.unwrap_or(2.0),
        hold: r.hold.map_or(Duration::from_secs(3), |h| h.0),
        timeout: r.timeout.map_or(Duration::from_secs(120), |t| t.0),
    };
    if plan.timeout > MAX_WINDOW {
        return Err(("recovery.timeout", format!("is limited to {MAX_WINDOW:?}")));
    }
    if plan.timeout.is_zero() {
        return Err(("recovery.timeout", "must be greater than zero".into()));
    }
    if plan.hold > plan.timeout {
        return Err(("recovery.hold", "is longer than recovery.timeout".into()));
    }
    if plan.p99_factor < 1.0 {
        return Err((
            "recovery.tolerance.latency_p99_factor",
            "must be at least 1".into(),
        ));
    }
    Ok(plan)
}

/// The target nodes: named ones must be registered; a selector matches connected
/// nodes. Within blast_radius.max_nodes and max_nodes_fraction.
fn targets(spec: &Spec, ctx: &Context<'_>, text: &str) -> Result<Vec<String>, SpecError> {
    let registered: Vec<&str> = ctx.nodes.iter().map(|n| n.name.as_str()).collect();
    let known = |n: &str, field: &str| {
        if registered.contains(&n) {
            Ok(n.to_owned())
        } else {
            Err(SpecError::at(
                text,
                field,
                format!(
                    "node '{n}' is not registered (registered: {})",
                    if registered.is_empty() {
                        "none".to_owned()
                    } else {
                        registered.join(", ")
                    }
                ),
            ))
        }
    };
    let (nodes, field) = if let Some(n) = &spec.target_node {
        (vec![known(n, "target_node")?], "target_node")
    } else if !spec.nodes.is_empty() {
        (
            spec.nodes
                .iter()
                .map(|n| known(n, "nodes"))
                .collect::<Result<_, _>>()?,
            "nodes",
        )
    } else {
        let t = spec.target.clone().unwrap_or_default();
        if !t.labels.is_empty() {
            let mut matched: Vec<String> = ctx
                .nodes
                .iter()
                .filter(|n| n.connected && t.labels.iter().all(|(k, v)| n.labels.get(k) == Some(v)))
                .map(|n| n.name.clone())
                .collect();
            matched.sort();
            let selector = t
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",");
            if matched.is_empty() {
                return Err(SpecError::at(
                    text,
                    "target.labels",
                    format!("selector {selector} matches no connected node"),
                ));
            }
            let max = ctx.limits.blast_radius.max_nodes as usize;
            match t.count {
                Some(c) => matched.truncate(c as usize),
                None if matched.len() > max => {
                    return Err(SpecError::at(
                        text,
                        "target.labels",
                        format!(
                            "selector {selector} matches {} connected nodes ({}), above \
                             blast_radius.max_nodes = {max} ({}); narrow it or add count",
                            matched.len(),
                            matched.join(", "),
                            ctx.limits_source
                        ),
                    ));
                }
                None => {}
            }
            (matched, "target")
        } else {
            let mut v: Vec<String> = t.node.iter().cloned().collect();
            v.extend(t.nodes.iter().cloned());
            (
                v.iter()
                    .map(|n| known(n, "target"))
                    .collect::<Result<_, _>>()?,
                "target",
            )
        }
    };
    check_blast_radius(&nodes, ctx).map_err(|m| SpecError::at(text, field, m))?;
    Ok(nodes)
}

fn check_blast_radius(nodes: &[String], ctx: &Context<'_>) -> Result<(), String> {
    let br = &ctx.limits.blast_radius;
    if nodes.len() > br.max_nodes as usize {
        return Err(format!(
            "{} nodes exceed blast_radius.max_nodes = {} ({})",
            nodes.len(),
            br.max_nodes,
            ctx.limits_source
        ));
    }
    if let Some(f) = &br.max_nodes_fraction {
        let connected = ctx.nodes.iter().filter(|n| n.connected).count();
        if nodes.len() as f64 > f.value() * connected as f64 + 1e-9 {
            return Err(format!(
                "{} of {connected} connected node(s) is above blast_radius.max_nodes_fraction = {f} ({})",
                nodes.len(),
                ctx.limits_source
            ));
        }
    }
    Ok(())
}

/// A request that carries a fault order directly (the gRPC API's own fields, no
/// spec): the config's health, prerequisites and abort conditions apply.
pub fn from_request(req: &StartRequest, ctx: &Context<'_>) -> Result<Plan, tonic::Status> {
    let fault = req
        .fault
        .clone()
        .ok_or_else(|| tonic::Status::invalid_argument("fault is required"))?;
    crate::engine::limits::check(
        &fault,
        ctx.limits,
        ctx.limits_source,
        &ctx.settings.endpoints,
    )?;
    let f = fault.fault.clone().expect("checked by limits::check");
    let for_window = |d: Option<prost_types::Duration>, default: Duration, field: &str| match d {
        None => Ok(default),
        Some(d) => Duration::try_from(d)
            .map_err(|_| tonic::Status::invalid_argument(format!("{field} must not be negative"))),
    };
    let baseline = for_window(req.baseline, ctx.settings.baseline, "baseline")?;
    check_baseline(baseline)
        .map_err(|m| tonic::Status::invalid_argument(format!("baseline {m}")))?;
    let mut recovery_opts = ctx.settings.recovery.clone();
    if let Some(r) = req.recovery {
        recovery_opts.timeout = Some(faultline_proto::spec::Dur(for_window(
            Some(r),
            Duration::ZERO,
            "recovery",
        )?));
    }
    let recovery = recovery_plan(recovery_opts)
        .map_err(|(field, m)| tonic::Status::invalid_argument(format!("{field} {m}")))?;
    let nodes = req.nodes.clone();
    if nodes.is_empty() {
        return Err(tonic::Status::invalid_argument(
            "nodes: at least one target node",
        ));
    }
    let default_iface = ctx
        .nodes
        .iter()
        .find(|n| n.name == nodes[0])
        .map(|n| n.default_interface.clone())
        .unwrap_or_default();
    let required = ctx.settings.required();
    Ok(Plan {
        name: req.name.clone(),
        scenario: Scenario::of(&f),
        self_test_iface: faults::interface(&f, &default_iface).to_owned(),
        nodes,
        fault,
        baseline,
        health: HealthPlan::from_config(&ctx.settings.health),
        prerequisites: ctx.settings.prerequisites.clone(),
        required,
        waivers: Vec::new(),
        abort: AbortPlan::from(&ctx.settings.abort),
        recovery,
        agent_guard: None,
        expected_impact: String::new(),
        hypothesis: None,
        require_health: ctx.settings.require_health,
        spec_yaml: String::new(),
    })
}

/// Validates a spec without a fleet (a schedule file at load): resolution against
/// stand-ins for the nodes it names, each with every capability, so everything but
/// the nodes' existence and kernels is checked now; the rest is checked when the
/// slot comes. Returns its scenario.
pub fn check_offline(
    text: &str,
    settings: &Settings,
    limits: &ChaosLimits,
    limits_source: &str,
) -> Result<Scenario, SpecError> {
    let spec = Spec::parse(text)?;
    let mut names: Vec<String> = spec.target_node.iter().cloned().collect();
    names.extend(spec.nodes.iter().cloned());
    let labels = spec
        .target
        .as_ref()
        .map(|t| t.labels.clone())
        .unwrap_or_default();
    let count = spec
        .target
        .as_ref()
        .and_then(|t| t.count)
        .unwrap_or(1)
        .max(1);
    if names.is_empty() {
        names = (1..=count).map(|i| format!("selected-{i}")).collect();
    }
    let caps = Capabilities {
        kernel: "any".into(),
        bpf: true,
        btf: true,
        tcx: true,
        sch_fq: true,
        ifb: true,
        tun: true,
        cgroup: "v2".into(),
        latency_backend: "edt".into(),
    };
    let nodes: Vec<NodeView> = names
        .into_iter()
        .map(|name| NodeView {
            name,
            labels: labels.clone().into_iter().collect(),
            connected: true,
            default_interface: "eth0".into(),
            caps: caps.clone(),
        })
        .collect();
    let ctx = Context {
        settings,
        limits,
        limits_source,
        nodes: &nodes,
    };
    resolve(text, "", &ctx).map(|p| p.scenario)
}
