//! The experiment spec: a YAML document in the reference report's own language.
//! Its scenario blocks are valid specs as they stand:
//!
//! ```yaml
//! scenario: latency_injection
//! target_node: node-6          # Least critical node
//! latency: 50ms                # Production-safe limit
//! duration: 60s
//! expected_impact: minimal
//! ```
//!
//! faultline's own fields extend them (interface, direction, filter, cgroup, paths,
//! hooks, health, prerequisites, abort conditions, recovery, the agent-side guard),
//! and the fields of earlier spec files (`fault: loss`, `nodes:`, `iface:`,
//! `percent:`, `delay:`) keep working. The CLI parses a spec to report mistakes with
//! their line before anything is sent; the coordinator parses it again, fills the
//! gaps from its config and the nodes (`resolve`), and checks it against the limits.
pub mod health;
pub mod hypothesis;
pub mod values;

use std::{collections::BTreeMap, fmt};

use serde::{Deserialize, Serialize};

pub use self::{
    health::{
        AbortConditions, AgentGuard, AlertmanagerSource, CheckSource, Checks, Health, HttpProbe,
        NodeProbe, ProbeFrom, PrometheusSource, Queries, Recovery, RecoveryOptions, ScoreWeights,
        System, Tolerance,
    },
    hypothesis::{ExpectedImpact, ImpactBounds},
    values::{Dur, Rate, Severity, line_of},
};
use crate::limits::Percent;

/// The report's six scenarios, one per fault kind: the list of fault kinds the
/// compiler checks everywhere (every dispatch over them is an exhaustive match, and
/// `ALL` is pinned by a test). The short names of earlier spec files are aliases.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(test, derive(strum::EnumIter))]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    #[serde(alias = "latency")]
    LatencyInjection,
    #[serde(alias = "loss")]
    PacketLoss,
    #[serde(alias = "cpu")]
    CpuStress,
    #[serde(alias = "memory")]
    MemoryStress,
    #[serde(alias = "cache")]
    CacheInvalidation,
    #[serde(alias = "gc")]
    GcPressure,
}

/// Everything about a fault kind that is data, in one row per kind
/// (`Scenario::info`): a new kind is one row, not an arm in each accessor.
pub struct KindInfo {
    /// The report's name (`packet_loss`), as specs, the store and reports write it.
    pub name: &'static str,
    /// The short name (`loss`), as metrics label it, logs print it and earlier spec
    /// files wrote it (`fault: loss`).
    pub short: &'static str,
    /// The report's heading (`Packet Loss`).
    pub title: &'static str,
    /// The spec fields that give the scenario its shape; any other scenario's field
    /// in a spec is a mistake worth naming.
    pub fields: &'static [&'static str],
    /// Acts once (an eviction) rather than for its duration: its recovery is timed
    /// from the moment it acted, not from a removal.
    pub one_shot: bool,
    /// Consumes a share of a node resource (CPU, memory) that its short name names.
    pub stress: bool,
    /// Its magnitude in a spec (its report-named field, or the older `percent`).
    pub magnitude: fn(&Spec) -> Option<Percent>,
    /// The field a bare percentage (`faultline run --percent`) sets, if it has one.
    pub percent_field: Option<fn(&mut Spec) -> &mut Option<Percent>>,
    /// What a spec of it cannot do without.
    pub required: Option<Required>,
}

/// A field a spec of a kind cannot do without.
pub struct Required {
    pub field: &'static str,
    /// Whether the spec gives it.
    pub given: fn(&Spec) -> bool,
    /// An example for the message ("required for ..., e.g. 50ms").
    pub example: &'static str,
}

/// The magnitudes: each kind's report-named field, or the older `percent`.
fn packet_loss(s: &Spec) -> Option<Percent> {
    s.packet_loss.or(s.percent)
}

fn cpu_stress(s: &Spec) -> Option<Percent> {
    s.cpu_stress.or(s.percent)
}

fn memory_stress(s: &Spec) -> Option<Percent> {
    s.memory_stress.or(s.percent)
}

const NETWORK_FIELDS: [&str; 3] = ["interface", "direction", "filter"];

const LATENCY: KindInfo = KindInfo {
    name: "latency_injection",
    short: "latency",
    title: "Latency Injection",
    fields: &[
        "latency",
        "jitter",
        "jitter_distribution",
        "allow_reorder",
        "packet_loss",
        "percent",
        NETWORK_FIELDS[0],
        NETWORK_FIELDS[1],
        NETWORK_FIELDS[2],
    ],
    one_shot: false,
    stress: false,
    magnitude: packet_loss,
    percent_field: Some(|s| &mut s.packet_loss),
    required: Some(Required {
        field: "latency",
        given: |s| s.latency.is_some(),
        example: "50ms",
    }),
};

const LOSS: KindInfo = KindInfo {
    name: "packet_loss",
    short: "loss",
    title: "Packet Loss",
    fields: &[
        "packet_loss",
        "percent",
        NETWORK_FIELDS[0],
        NETWORK_FIELDS[1],
        NETWORK_FIELDS[2],
    ],
    one_shot: false,
    stress: false,
    magnitude: packet_loss,
    percent_field: Some(|s| &mut s.packet_loss),
    required: Some(Required {
        field: "packet_loss",
        given: |s| packet_loss(s).is_some(),
        example: "packet_loss: 1.0%",
    }),
};

const CPU: KindInfo = KindInfo {
    name: "cpu_stress",
    short: "cpu",
    title: "CPU Stress",
    fields: &["cpu_stress", "percent"],
    one_shot: false,
    stress: true,
    magnitude: cpu_stress,
    percent_field: Some(|s| &mut s.cpu_stress),
    required: Some(Required {
        field: "cpu_stress",
        given: |s| cpu_stress(s).is_some(),
        example: "cpu_stress: 1.0%",
    }),
};

const MEMORY: KindInfo = KindInfo {
    name: "memory_stress",
    short: "memory",
    title: "Memory Stress",
    fields: &["memory_stress", "percent"],
    one_shot: false,
    stress: true,
    magnitude: memory_stress,
    percent_field: Some(|s| &mut s.memory_stress),
    required: Some(Required {
        field: "memory_stress",
        given: |s| memory_stress(s).is_some(),
        example: "memory_stress: 1.0%",
    }),
};

// Components, paths, hooks or the config's defaults: resolution decides what the
// two hook-driven kinds need.
const CACHE: KindInfo = KindInfo {
    name: "cache_invalidation",
    short: "cache",
    title: "Cache Invalidation",
    fields: &["components", "paths", "target_cgroup", "hooks"],
    one_shot: true,
    stress: false,
    magnitude: |_| None,
    percent_field: None,
    required: None,
};

const GC: KindInfo = KindInfo {
    name: "gc_pressure",
    short: "gc",
    title: "GC Pressure",
    fields: &["components", "target_cgroup", "to_percent", "hooks"],
    one_shot: false,
    stress: false,
    magnitude: |_| None,
    percent_field: None,
    required: None,
};

impl Scenario {
    pub const ALL: [Scenario; 6] = [
        Scenario::LatencyInjection,
        Scenario::PacketLoss,
        Scenario::CpuStress,
        Scenario::MemoryStress,
        Scenario::CacheInvalidation,
        Scenario::GcPressure,
    ];

    /// The kind's row.
    pub const fn info(self) -> &'static KindInfo {
        match self {
            Scenario::LatencyInjection => &LATENCY,
            Scenario::PacketLoss => &LOSS,
            Scenario::CpuStress => &CPU,
            Scenario::MemoryStress => &MEMORY,
            Scenario::CacheInvalidation => &CACHE,
            Scenario::GcPressure => &GC,
        }
    }

    /// The scenario (the fault kind) of an order's fault.
    pub fn of(fault: &crate::v1::fault_spec::Fault) -> Scenario {
        use crate::v1::fault_spec::Fault;
        match fault {
            Fault::Loss(_) => Scenario::PacketLoss,
            Fault::Latency(_) => Scenario::LatencyInjection,
            Fault::Cpu(_) => Scenario::CpuStress,
            Fault::Memory(_) => Scenario::MemoryStress,
            Fault::Gc(_) => Scenario::GcPressure,
            Fault::Cache(_) => Scenario::CacheInvalidation,
        }
    }

    pub fn as_str(self) -> &'static str {
        self.info().name
    }

    pub fn kind_name(self) -> &'static str {
        self.info().short
    }

    pub fn one_shot(self) -> bool {
        self.info().one_shot
    }

    pub fn is_stress(self) -> bool {
        self.info().stress
    }

    /// The share of the node a stress of `percent` consumes (0-1); None for the
    /// faults that are no stress.
    pub fn stress_share(self, percent: f64) -> Option<f64> {
        self.is_stress().then_some(percent / 100.0)
    }

    pub fn title(self) -> &'static str {
        self.info().title
    }

    /// Every kind's short name, for series that exist at zero.
    pub fn short_names() -> [&'static str; 6] {
        Scenario::ALL.map(Scenario::kind_name)
    }

    /// The scenario of a name as specs, the store and the CLI write it (the report's
    /// name, or the short name of earlier spec files): the one parser of names.
    pub fn from_name(name: &str) -> Option<Scenario> {
        Scenario::ALL
            .into_iter()
            .find(|s| s.as_str() == name || s.kind_name() == name)
    }

    fn fields(self) -> &'static [&'static str] {
        self.info().fields
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Ingress,
    Egress,
    Both,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JitterShape {
    Uniform,
    Normal,
}

/// Which packets a network fault applies to (empty: all).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sport: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dport: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst: Option<String>,
}

/// The target by name or by labels. A selector must match at most
/// `blast_radius.max_nodes` connected nodes, unless `count` picks that many (by name).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
}

/// One experiment, as written.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, alias = "fault", skip_serializing_if = "Option::is_none")]
    pub scenario: Option<Scenario>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Target>,
    /// Earlier spec files' target list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<Dur>,
    /// The hypothesis (the report's `expected_impact`): a name the coordinator's
    /// config defines, or bounds in place; every experiment is judged against it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_impact: Option<ExpectedImpact>,

    // The scenarios' magnitudes, as the report names them.
    #[serde(default, alias = "delay", skip_serializing_if = "Option::is_none")]
    pub latency: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter_distribution: Option<JitterShape>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_reorder: Option<bool>,
    /// packet_loss: the loss rate; latency_injection: loss on top of the delay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packet_loss: Option<Percent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_stress: Option<Percent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_stress: Option<Percent>,
    /// Earlier spec files' magnitude (loss, cpu or memory percent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<Percent>,
    /// cache_invalidation / gc_pressure: application components, each mapped to its
    /// hook (and cache paths) in the coordinator's config.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub components: Vec<String>,

    // faultline's own fields.
    /// Default: the node's default-route interface.
    #[serde(default, alias = "iface", skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<Direction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<Filter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_cgroup: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_percent: Option<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// name: url, node-local endpoints the agent POSTs to.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub hooks: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prerequisites: Option<Prerequisites>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort_conditions: Option<AbortConditions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_guard: Option<AgentGuard>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery: Option<Recovery>,
}

pub use health::Prerequisites;

/// A mistake in a spec: the field, the line it is written on (when it is in the
/// text), and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecError {
    pub field: String,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(l) = self.line {
            write!(f, "line {l}: ")?;
        }
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

impl std::error::Error for SpecError {}

impl SpecError {
    /// An error about `field`, located in `text` when it is written there.
    pub fn at(text: &str, field: &str, message: impl Into<String>) -> Self {
        Self {
            field: field.to_owned(),
            line: line_of(text, field),
            message: message.into(),
        }
    }
}

/// Takes `over`'s value of each field where it has one.
macro_rules! merge_fields {
    ($base:ident, $over:ident; opt: $($o:ident),*; many: $($m:ident),*) => {
        $( if $over.$o.is_some() { $base.$o = $over.$o; } )*
        $( if !$over.$m.is_empty() { $base.$m = $over.$m; } )*
    };
}

impl Spec {
    /// Parses a spec document; a mistake names its line (and field where serde knows it).
    pub fn parse(text: &str) -> Result<Self, SpecError> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        parse_yaml(text)
    }

    pub fn to_yaml(&self) -> String {
        serde_yaml_ng::to_string(self).expect("a spec always serializes")
    }

    /// This spec with every field `over` sets taken from it (command-line flags over
    /// a spec file).
    pub fn merged(mut self, over: Spec) -> Spec {
        // A target given over a spec replaces the spec's, whatever form either has.
        if over.target_node.is_some() || over.target.is_some() || !over.nodes.is_empty() {
            self.target_node = None;
            self.target = None;
            self.nodes.clear();
        }
        merge_fields!(self, over;
            opt: name, scenario, target_node, target, duration, expected_impact, latency,
                 jitter, jitter_distribution, allow_reorder, packet_loss, cpu_stress,
                 memory_stress, percent, interface, direction, filter, target_cgroup,
                 to_percent, baseline, health, prerequisites, abort_conditions, agent_guard,
                 recovery;
            many: nodes, components, paths, hooks);
        self
    }

    /// The names of the fields set, for shape checks.
    fn set_fields(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        let mut add = |set: bool, name| {
            if set {
                v.push(name);
            }
        };
        add(self.latency.is_some(), "latency");
        add(self.jitter.is_some(), "jitter");
        add(self.jitter_distribution.is_some(), "jitter_distribution");
        add(self.allow_reorder.is_some(), "allow_reorder");
        add(self.packet_loss.is_some(), "packet_loss");
        add(self.cpu_stress.is_some(), "cpu_stress");
        add(self.memory_stress.is_some(), "memory_stress");
        add(self.percent.is_some(), "percent");
        add(!self.components.is_empty(), "components");
        add(self.interface.is_some(), "interface");
        add(self.direction.is_some(), "direction");
        add(self.filter.is_some(), "filter");
        add(self.target_cgroup.is_some(), "target_cgroup");
        add(self.to_percent.is_some(), "to_percent");
        add(!self.paths.is_empty(), "paths");
        add(!self.hooks.is_empty(), "hooks");
        v
    }

    /// The scenario's magnitude for loss, CPU and memory: its report-named field, or
    /// the older `percent`.
    pub fn magnitude(&self) -> Option<Percent> {
        (self.scenario?.info().magnitude)(self)
    }

    /// The checks that need nothing but the document (the coordinator checks the
    /// rest against its config, its limits and the nodes). `text` is what the spec
    /// was parsed from, to name lines.
    pub fn check_shape(&self, text: &str) -> Result<(), SpecError> {
        let err = |field: &str, msg: String| SpecError::at(text, field, msg);
        let names = Scenario::ALL.map(Scenario::as_str).join(", ");
        let scenario = self
            .scenario
            .ok_or_else(|| err("scenario", format!("required: one of {names}")))?;
        for field in self.set_fields() {
            if !scenario.fields().contains(&field) {
                return Err(err(
                    field,
                    format!(
                        "is not a field of scenario {scenario} (its fields: {})",
                        scenario.fields().join(", ")
                    ),
                ));
            }
        }
        match self.duration {
            None => return Err(err("duration", "required, e.g. 60s".into())),
            Some(Dur(d)) if d.is_zero() => {
                return Err(err("duration", "must be greater than zero".into()));
            }
            Some(_) => {}
        }
        let targets = [
            self.target_node.is_some(),
            self.target.is_some(),
            !self.nodes.is_empty(),
        ];
        match targets.iter().filter(|t| **t).count() {
            0 => {
                return Err(err(
                    "target_node",
                    "required: target_node: NAME, target: {labels: {...}} or nodes: [...]".into(),
                ));
            }
            1 => {}
            _ => {
                return Err(err(
                    "target",
                    "give one of target_node, target and nodes".into(),
                ));
            }
        }
        if let Some(t) = &self.target {
            let named = t.node.is_some() || !t.nodes.is_empty();
            // Exactly one of the two forms.
            if named != t.labels.is_empty() {
                return Err(err("target", "give either node/nodes or labels".into()));
            }
            if t.count == Some(0) {
                return Err(err("target.count", "must be at least 1".into()));
            }
        }
        // What each scenario cannot do without.
        if let Some(r) = &scenario.info().required
            && !(r.given)(self)
        {
            return Err(err(
                r.field,
                format!("required for {scenario}, e.g. {}", r.example),
            ));
        }
        if let Some(p) = self.to_percent
            && !crate::v1::GcFault::TO_PERCENT.contains(&p)
        {
            return Err(err("to_percent", format!("{p} is outside 50-99")));
        }
        if let Some(h) = &self.health {
            check_health(h, text)?;
        }
        if let Some(a) = &self.abort_conditions
            && a.consecutive == Some(0)
        {
            return Err(err(
                "abort_conditions.consecutive",
                "must be at least 1".into(),
            ));
        }
        if let Some(g) = &self.agent_guard {
            if g.consecutive == Some(0) {
                return Err(err("agent_guard.consecutive", "must be at least 1".into()));
            }
            let needs_probe = g.error_rate_above.is_some() || g.latency_p99_above.is_some();
            if needs_probe && g.http.is_none() {
                return Err(err(
                    "agent_guard.http",
                    "error_rate_above and latency_p99_above need a node-local probe (http: {url: ...})"
                        .into(),
                ));
            }
            if let Some(p) = &g.http {
                check_url(&p.url, false, text, "agent_guard.http.url")?;
            }
        }
        for (name, url) in &self.hooks {
            if !crate::v1::Hook::valid_name(name) {
                return Err(err(
                    "hooks",
                    format!("name '{name}' must be letters, digits, '-' or '_'"),
                ));
            }
            check_url(url, false, text, &format!("hooks.{name}"))?;
        }
        Ok(())
    }
}

impl Spec {
    /// Only the `health` section's checks (the coordinator's config file has one too).
    pub fn check_health_only(&self, text: &str) -> Result<(), SpecError> {
        match &self.health {
            Some(h) => check_health(h, text),
            None => Ok(()),
        }
    }
}

/// The most bytes a YAML document (spec, overrides, config, schedule, limits) may
/// have: the largest real one is a few KiB.
pub const MAX_YAML_BYTES: usize = 256 * 1024;
/// The deepest nesting a YAML document may have (block indentation, sequence
/// markers and flow brackets together): real specs nest 6 deep. The YAML parser's
/// time grows with the square of the depth, so it is bounded before parsing.
pub const MAX_YAML_DEPTH: usize = 32;

/// A YAML text as the parser should see it, or why it is refused before parsing:
/// a leading UTF-8 byte-order mark is dropped (editors write one; the parser would
/// read the rest as a second document), and the size and nesting bounds are
/// checked in one linear pass, so no input can make parsing slow.
pub fn bounded_yaml(text: &str) -> Result<&str, SpecError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.len() > MAX_YAML_BYTES {
        return Err(SpecError {
            field: String::new(),
            line: None,
            message: format!(
                "the document has {} bytes; at most {MAX_YAML_BYTES} are accepted",
                text.len()
            ),
        });
    }
    let too_deep = |line: usize, depth: usize| SpecError {
        field: String::new(),
        line: Some(line),
        message: format!("nested {depth} levels deep; at most {MAX_YAML_DEPTH} are accepted"),
    };
    // Open flow collections ([ and {), and the indentation of each open block level.
    let mut flow = 0usize;
    let mut blocks: Vec<usize> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let content = line.trim_start_matches(' ');
        if flow == 0 && !content.is_empty() && !content.starts_with('#') {
            let indent = line.len() - content.len();
            while blocks.last().is_some_and(|&i| i >= indent) {
                blocks.pop();
            }
            blocks.push(indent);
            // `- - - x` opens a level per marker on one line.
            let markers = content
                .split_inclusive(' ')
                .take_while(|w| matches!(w.trim_end(), "-" | "?"))
                .count();
            let depth = blocks.len() + markers;
            if depth > MAX_YAML_DEPTH {
                return Err(too_deep(n + 1, depth));
            }
        }
        let mut quote: Option<char> = None;
        let mut prev = ' ';
        for ch in line.chars() {
            match (quote, ch) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '#') if prev == ' ' || prev == '\t' => break,
                (None, '\'' | '"') if matches!(prev, ' ' | '\t' | '[' | '{' | ',' | ':') => {
                    quote = Some(ch)
                }
                (None, '[' | '{') => {
                    flow += 1;
                    let depth = blocks.len() + flow;
                    if depth > MAX_YAML_DEPTH {
                        return Err(too_deep(n + 1, depth));
                    }
                }
                (None, ']' | '}') => flow = flow.saturating_sub(1),
                _ => {}
            }
            prev = ch;
        }
    }
    Ok(text)
}

/// Parses a YAML document into `T`, naming the field (as a dotted path) and its
/// line on a mistake. The coordinator's config file is read the same way.
pub fn parse_yaml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, SpecError> {
    let text = bounded_yaml(text)?;
    let de = serde_yaml_ng::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        // `health.http[0].url` -> `health.http.0.url`; "." is the document.
        let path = e.path().to_string().replace('[', ".").replace(']', "");
        let path = if path == "." { String::new() } else { path };
        let inner = e.into_inner();
        // serde_yaml_ng knows the line of unknown keys and type mismatches, but not
        // of errors a value's own parser raised (percentages, durations); the
        // field's path finds those. The later of the two is the field's line.
        let line = inner.location().map(|l| l.line()).max(line_of(text, &path));
        let message = inner.to_string();
        let message = message.split(" at line ").next().unwrap_or(&message);
        // serde_yaml_ng puts the path (of the field, or of its parent for an unknown
        // key) in front of its own message too.
        let parts: Vec<&str> = path.split('.').collect();
        let message = (1..=parts.len())
            .rev()
            .find_map(|n| message.strip_prefix(&format!("{}: ", parts[..n].join("."))))
            .unwrap_or(message)
            .to_owned();
        SpecError {
            field: path,
            line,
            message,
        }
    })
}

/// An endpoint URL: http:// (or https:// where `https_ok`) with a host.
fn check_url(url: &str, https_ok: bool, text: &str, field: &str) -> Result<(), SpecError> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://").filter(|_| https_ok));
    match rest {
        Some(r) if !r.is_empty() && !r.starts_with('/') => Ok(()),
        Some(_) => Err(SpecError::at(text, field, format!("'{url}' has no host"))),
        None => Err(SpecError::at(
            text,
            field,
            format!(
                "'{url}': the scheme must be {}",
                if https_ok {
                    "http:// or https://"
                } else {
                    "http://"
                }
            ),
        )),
    }
}

fn check_health(h: &Health, text: &str) -> Result<(), SpecError> {
    let mut names = std::collections::BTreeSet::new();
    for (i, p) in h.http.iter().flatten().enumerate() {
        let field = format!("health.http.{i}");
        if !crate::v1::Hook::valid_name(&p.name) {
            return Err(SpecError::at(
                text,
                &format!("{field}.name"),
                format!("'{}' must be letters, digits, '-' or '_'", p.name),
            ));
        }
        if !names.insert(&p.name) {
            return Err(SpecError::at(
                text,
                &format!("{field}.name"),
                format!("probe '{}' is named twice", p.name),
            ));
        }
        let from_node = p.from == Some(ProbeFrom::Node);
        check_url(&p.url, !from_node, text, &format!("{field}.url"))?;
    }
    if let Some(p) = &h.prometheus {
        check_url(&p.url, true, text, "health.prometheus.url")?;
        if p.interval
            .is_some_and(|i| i.0 > std::time::Duration::from_secs(1) || i.0.is_zero())
        {
            return Err(SpecError::at(
                text,
                "health.prometheus.interval",
                "queries are evaluated at least once a second: at most 1s",
            ));
        }
    }
    if let Some(a) = &h.alertmanager {
        check_url(&a.url, true, text, "health.alertmanager.url")?;
    }
    if let Some(Checks {
        recent_backup,
        incident_response,
    }) = &h.checks
    {
        for (name, c) in [
            ("recent_backup", recent_backup),
            ("incident_response", incident_response),
        ] {
            if let Some(CheckSource::Url(u)) = c {
                check_url(u, true, text, &format!("health.checks.{name}"))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CLI's flags cross the wire as a spec document (`overrides_yaml`) that the
    /// coordinator reads with this same parser; the magnitudes must arrive exactly as
    /// parsed, not rounded by their way through text.
    #[test]
    fn a_spec_written_out_reads_back_with_every_magnitude_exact() {
        use std::time::Duration;
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..10_000 {
            let fraction = (next() >> 11) as f64 / (1u64 << 53) as f64;
            let percent = Percent::new(100.0 * fraction).unwrap();
            let ns = next() % 86_400_000_000_000;
            let spec = Spec {
                scenario: Some(Scenario::LatencyInjection),
                packet_loss: Some(percent),
                cpu_stress: Some(Percent::new(fraction).unwrap()),
                latency: Some(Dur(Duration::from_nanos(ns))),
                jitter: Some(Dur(Duration::from_nanos(ns % 1_000_000_007))),
                duration: Some(Dur(Duration::from_secs(next() % 100_000))),
                ..Default::default()
            };
            let back = Spec::parse(&spec.to_yaml()).unwrap();
            assert_eq!(back, spec, "{}", spec.to_yaml());
        }
    }

    #[test]
    fn all_lists_every_scenario_once_in_order() {
        use strum::IntoEnumIterator;
        assert_eq!(Scenario::iter().collect::<Vec<_>>(), Scenario::ALL);
        use crate::v1::{fault_spec::Fault, *};
        for f in [
            Fault::Loss(LossFault::default()),
            Fault::Latency(LatencyFault::default()),
            Fault::Cpu(CpuFault::default()),
            Fault::Memory(MemoryFault::default()),
            Fault::Gc(GcFault::default()),
            Fault::Cache(CacheFault::default()),
        ] {
            let s = Scenario::of(&f);
            assert_eq!(Scenario::from_name(s.kind_name()), Some(s));
        }
    }

    #[test]
    fn deep_or_large_documents_are_refused_before_parsing_and_a_bom_is_dropped() {
        let spec =
            "\u{feff}scenario: cpu_stress\ntarget_node: node-6\ncpu_stress: 15%\nduration: 60s\n";
        assert_eq!(Spec::parse(spec).unwrap().duration.unwrap().0.as_secs(), 60);
        let flow = format!("scenario: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
        let e = Spec::parse(&flow).unwrap_err();
        assert_eq!(e.line, Some(1));
        assert!(e.message.contains("nested 33 levels deep"), "{e}");
        let mut block = String::from("health:\n");
        for i in 1..40 {
            block.push_str(&format!("{}k{i}:\n", " ".repeat(i)));
        }
        let e = Spec::parse(&block).unwrap_err();
        assert_eq!(e.line, Some(33), "{e}");
        let markers = format!("components:\n  {}x\n", "- ".repeat(40));
        assert!(
            Spec::parse(&markers)
                .unwrap_err()
                .message
                .contains("levels deep")
        );
        let big = format!("scenario: cpu_stress\n# {}\n", "x".repeat(MAX_YAML_BYTES));
        assert!(
            Spec::parse(&big)
                .unwrap_err()
                .message
                .contains("bytes; at most")
        );
        // Brackets in quotes, comments and PromQL do not count as nesting.
        let fine = "health:\n  prometheus:\n    url: http://p:9090\n    queries:\n      error_rate: 'sum(rate(x{a=\"[[[[\"}[1m]))' # [[[[[[[[[[\n";
        bounded_yaml(fine).unwrap();
    }

    #[test]
    fn the_reports_scenario_blocks_are_specs_as_they_stand() {
        let blocks = [
            "scenario: latency_injection\ntarget_node: node-6          # Least critical node\nlatency: 50ms                # Production-safe limit\nduration: 60s\nexpected_impact: minimal\n",
            "scenario: packet_loss\ntarget_node: node-6\npacket_loss: 1.0%            # 1% loss rate\nduration: 60s\nexpected_impact: minimal\n",
            "scenario: cpu_stress\ntarget_node: node-6\ncpu_stress: 15%              # 15% of CPU\nduration: 60s\nexpected_impact: minimal\n",
            "scenario: memory_stress\ntarget_node: node-6\nmemory_stress: 10%           # 10% of RAM\nduration: 60s\nexpected_impact: minimal\n",
            "scenario: cache_invalidation\ncomponents:\n  - consensus\n  - network\n  - api\n  - scheduler\nduration: 30s                # Observation period\nexpected_impact: temporary_cache_misses\ntarget_node: node-6\n",
            "scenario: gc_pressure\ntarget_node: node-6\nduration: 60s\nexpected_impact: brief_latency_spikes\n",
        ];
        for text in blocks {
            let spec = Spec::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            spec.check_shape(text)
                .unwrap_or_else(|e| panic!("{text}: {e}"));
        }
        let loss = Spec::parse(blocks[1]).unwrap();
        assert_eq!(loss.magnitude().unwrap().value(), 1.0);
        let cache = Spec::parse(blocks[4]).unwrap();
        assert_eq!(
            cache.components,
            ["consensus", "network", "api", "scheduler"]
        );
    }

    #[test]
    fn earlier_spec_files_keep_working() {
        let text = "name: l\nnodes: [node-1]\nfault: loss\niface: eth0\npercent: 0.5\nduration: 10s\nfilter: {protocol: udp, dport: '7000'}\nrecovery: 30s\n";
        let spec = Spec::parse(text).unwrap();
        spec.check_shape(text).unwrap();
        assert_eq!(spec.scenario, Some(Scenario::PacketLoss));
        assert_eq!(spec.interface.as_deref(), Some("eth0"));
        assert_eq!(
            spec.recovery.unwrap().options().timeout,
            Some(Dur(std::time::Duration::from_secs(30)))
        );
    }

    #[test]
    fn mistakes_name_the_field_and_line() {
        let cases = [
            (
                "scenario: latency_injektion\ntarget_node: n\nduration: 1s\n",
                "line 1",
                "unknown variant `latency_injektion`",
            ),
            (
                "scenario: cpu_stress\ntarget_node: n\ncpu_stres: 5%\nduration: 1s\n",
                "line 3",
                "unknown field `cpu_stres`",
            ),
            (
                "scenario: cpu_stress\ntarget_node: n\ncpu_stress: 5%\nlatency: 5ms\nduration: 1s\n",
                "line 4: latency",
                "not a field of scenario cpu_stress",
            ),
            (
                "scenario: cpu_stress\ntarget_node: n\ncpu_stress: 150%\nduration: 1s\n",
                "line 3",
                "between 0 and 100",
            ),
            (
                "scenario: cpu_stress\ntarget_node: n\ncpu_stress: 5%\nduration: 60\n",
                "line 4",
                "write e.g. 60s",
            ),
            (
                "scenario: cpu_stress\ntarget_node: n\ncpu_stress: 5%\n",
                "duration",
                "required",
            ),
            (
                "scenario: packet_loss\ntarget_node: n\nduration: 1s\n",
                "packet_loss",
                "required for packet_loss",
            ),
            (
                "scenario: cpu_stress\ncpu_stress: 5%\nduration: 1s\n",
                "target_node",
                "required",
            ),
            (
                "scenario: cpu_stress\ntarget_node: n\ncpu_stress: 5%\nduration: 1s\nhealth:\n  http:\n    - {name: api, url: ftp://10.0.0.6/healthz}\n",
                "line 7: health.http.0.url",
                "scheme must be http:// or https://",
            ),
            (
                "scenario: cpu_stress\ntarget_node: n\ncpu_stress: 5%\nduration: 1s\nhealth:\n  http:\n    - {name: api, url: 'https://x/', from: node}\n",
                "health.http.0.url",
                "must be http://",
            ),
            (
                "scenario: cpu_stress\ntarget_node: n\ncpu_stress: 5%\nduration: 1s\nabort_conditions:\n  consecutive: 0\n",
                "line 6: abort_conditions.consecutive",
                "at least 1",
            ),
            (
                "scenario: cpu_stress\ntarget_node: n\ncpu_stress: 5%\nduration: 1s\nrecovery: {hold: 3s, timeuot: 5s}\n",
                "line 5",
                "unknown field `timeuot`",
            ),
        ];
        for (text, at, what) in cases {
            let e = Spec::parse(text)
                .and_then(|s| s.check_shape(text).map(|()| s))
                .expect_err(text)
                .to_string();
            assert!(e.contains(at) && e.contains(what), "{text}\n=> {e}");
        }
    }

    #[test]
    fn flags_override_a_file_field_by_field() {
        let file =
            Spec::parse("scenario: packet_loss\ntarget_node: a\npacket_loss: 1%\nduration: 60s\n")
                .unwrap();
        let flags = Spec {
            duration: Some("5s".parse().unwrap()),
            ..Default::default()
        };
        let m = file.merged(flags);
        assert_eq!(m.duration.unwrap().to_string(), "5s");
        assert_eq!(m.target_node.as_deref(), Some("a"));
        let back = Spec::parse(&m.to_yaml()).unwrap();
        assert_eq!(back, m);
    }
}
