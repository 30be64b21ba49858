//! How an experiment judges the service: where its health signals come from, what
//! must be true before a fault (`prerequisites`), what ends it early
//! (`abort_conditions`), what counts as recovered (`recovery`), and the guard that
//! travels with the order and is evaluated by the agent itself (`agent_guard`).
//!
//! Every section is written once in the coordinator's config file and may be
//! narrowed or sharpened per experiment; the field names are the contract (the
//! README documents each). Values of PromQL queries are read in base units: ratios
//! for `error_rate` and `traffic_vs_peak` (0.001 = 0.1 %), seconds for
//! `latency_p99`, requests per second for `throughput`, 0-100 for `health_score`.
use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use super::values::{Dur, Rate, Severity};
use crate::limits::Percent;

/// Where health signals come from. Sections present in a spec replace the
/// config's; absent ones keep it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// Built-in synthetic probes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<Vec<HttpProbe>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alertmanager: Option<AlertmanagerSource>,
    /// Sliding window of the probes' error rate, p50/p99 and throughput (5s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Dur>,
    /// A source that gives no usable value for longer than this aborts (5s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dark_grace: Option<Dur>,
    /// The computed health score's weights, when no `health_score` query is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<ScoreWeights>,
    /// How "recent backup available" and "incident response" are checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checks: Option<Checks>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeFrom {
    /// The coordinator sends the requests.
    Coordinator,
    /// The target node's agent sends them (a node-local service can be watched);
    /// the URL must be one the agent may call (loopback or its allow-list).
    Node,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpProbe {
    /// Named in results; letters, digits, '-' or '_'.
    pub name: String,
    /// http:// or https:// (from the node: http:// only). Non-2xx, a timeout or a
    /// connection error is an error.
    pub url: String,
    /// Requests per second (10/s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<Rate>,
    /// Per request (1s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<ProbeFrom>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrometheusSource {
    /// The server's base URL, e.g. http://prometheus:9090.
    pub url: String,
    /// How often every query is evaluated (1s; at least once a second).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Dur>,
    #[serde(default)]
    pub queries: Queries,
}

/// PromQL instant queries, each optional. Each must return one series; an empty
/// result, several series or an unreachable server is a failure of that signal.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Queries {
    /// Ratio of failed requests (0.001 = 0.1 %).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_rate: Option<String>,
    /// Seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_p99: Option<String>,
    /// Requests per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throughput: Option<String>,
    /// Ratio of current traffic to its peak (1 = at peak).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_vs_peak: Option<String>,
    /// 0-100; when set it is the health score, instead of the computed one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_score: Option<String>,
    /// Seconds: the p99 that `latency_within_baseline` compares with (e.g. the same
    /// quantile a day earlier). Without it, the baseline p99 that earlier
    /// experiments recorded for the same probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_p99_baseline: Option<String>,
    /// A truthy value (non-zero) means a recent backup exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recent_backup: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertmanagerSource {
    /// The server's base URL, e.g. http://alertmanager:9093 (API v2).
    pub url: String,
    /// The label that carries an alert's severity (severity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity_label: Option<String>,
    /// Label values mapped to P0-P3 beyond the literal P0..P3 (defaults: critical P1,
    /// error P2, warning P3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severities: Option<BTreeMap<String, Severity>>,
    /// Severities that make an experiment an `incident` (P0, P1, P2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incident_severities: Option<Vec<Severity>>,
}

/// The computed health score (see the README for the formula).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScoreWeights {
    pub error_rate: f64,
    pub latency: f64,
    pub alerts: f64,
    /// The error rate at which the error part of the score reaches zero.
    pub error_budget: Percent,
    /// The p99 up to which latency costs nothing; at twice it, the latency part is zero.
    pub latency_target: Dur,
}

impl Default for ScoreWeights {
    fn default() -> Self {
        Self {
            error_rate: 0.5,
            latency: 0.3,
            alerts: 0.2,
            error_budget: Percent::new(5.0).expect("valid"),
            latency_target: Dur(std::time::Duration::from_millis(100)),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checks {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recent_backup: Option<CheckSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incident_response: Option<CheckSource>,
}

/// A yes/no check: a PromQL query whose value is non-zero, or an HTTP URL that
/// answers 2xx. Written `{promql: '...'}` or `{url: '...'}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "CheckDoc", into = "CheckDoc")]
pub enum CheckSource {
    Promql(String),
    Url(String),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckDoc {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    promql: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    url: Option<String>,
}

impl TryFrom<CheckDoc> for CheckSource {
    type Error = String;
    fn try_from(d: CheckDoc) -> Result<Self, String> {
        match (d.promql, d.url) {
            (Some(q), None) => Ok(CheckSource::Promql(q)),
            (None, Some(u)) => Ok(CheckSource::Url(u)),
            _ => Err("give exactly one of promql: '...' and url: '...'".into()),
        }
    }
}

impl From<CheckSource> for CheckDoc {
    fn from(c: CheckSource) -> Self {
        match c {
            CheckSource::Promql(q) => CheckDoc {
                promql: Some(q),
                url: None,
            },
            CheckSource::Url(u) => CheckDoc {
                promql: None,
                url: Some(u),
            },
        }
    }
}

/// The systems the report requires to be operational before any production test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum System {
    /// Every target's agent can attach and detach a no-op program, write its
    /// journal and create and remove a cgroup (its self-test).
    Rollback,
    /// The configured HTTP probes (or the health-score query) answer.
    HealthChecker,
    /// `checks.incident_response`, else Alertmanager lists at least one receiver.
    IncidentResponse,
    /// Prometheus answers.
    Monitoring,
    /// Alertmanager answers.
    Alerting,
    /// `checks.recent_backup` (or the `recent_backup` query) says yes.
    RecentBackup,
}

impl System {
    pub const ALL: [System; 6] = [
        System::Rollback,
        System::HealthChecker,
        System::IncidentResponse,
        System::Monitoring,
        System::Alerting,
        System::RecentBackup,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            System::Rollback => "rollback",
            System::HealthChecker => "health_checker",
            System::IncidentResponse => "incident_response",
            System::Monitoring => "monitoring",
            System::Alerting => "alerting",
            System::RecentBackup => "recent_backup",
        }
    }
}

/// What must hold before a fault is applied. A threshold whose signal has no source
/// is skipped ("no source"), which fails only when the system that would provide it
/// is `required`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prerequisites {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_score_above: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_incidents: Option<Vec<Severity>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_below_peak: Option<Percent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_rate_below: Option<Percent>,
    /// Current p99 at most this much above the recorded baseline p99.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_within_baseline: Option<Percent>,
    /// Systems that must be operational. A spec that lists fewer than the config
    /// waives the rest, and the waiver is recorded in the result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required: Option<Vec<System>>,
}

/// What ends a running experiment at once (every condition on every source that
/// provides its signal).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbortConditions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_score_below: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_rate_above: Option<Percent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_p99_above: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_incident: Option<Vec<Severity>>,
    /// Breaching readings of one source in a row before aborting (1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive: Option<u32>,
}

/// How far from the baseline the steady state may be and still count as back.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tolerance {
    /// Points of error rate above the baseline's (0.05%).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_rate: Option<Percent>,
    /// p99 at most baseline p99 x this + `latency_p99_extra` (1.2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_p99_factor: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_p99_extra: Option<Dur>,
    /// Health score points below the baseline's (2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_score_drop: Option<f64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoveryOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerance: Option<Tolerance>,
    /// How long the steady state must stay within tolerance to count as back (3s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<Dur>,
    /// How long after removal it may take (120s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Dur>,
}

/// `recovery: 30s` (the timeout, as before) or the full form.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Recovery {
    Timeout(Dur),
    Options(RecoveryOptions),
}

impl Recovery {
    pub fn options(&self) -> RecoveryOptions {
        match self {
            Recovery::Timeout(t) => RecoveryOptions {
                timeout: Some(*t),
                ..Default::default()
            },
            Recovery::Options(o) => o.clone(),
        }
    }
}

impl<'de> Deserialize<'de> for Recovery {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Not an untagged derive: its error ("did not match any variant") would hide
        // which field is wrong.
        let v = serde_yaml_ng::Value::deserialize(d)?;
        match v {
            serde_yaml_ng::Value::String(s) => s
                .parse()
                .map(Recovery::Timeout)
                .map_err(serde::de::Error::custom),
            serde_yaml_ng::Value::Mapping(_) => serde_yaml_ng::from_value(v)
                .map(Recovery::Options)
                .map_err(serde::de::Error::custom),
            other => Err(serde::de::Error::custom(format!(
                "expected a duration (e.g. 30s) or {{tolerance, hold, timeout}}, got {other:?}"
            ))),
        }
    }
}

/// A node-local condition the agent evaluates itself, so a breach removes the fault
/// even when the coordinator is unreachable.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentGuard {
    /// A node-local HTTP endpoint the agent probes (loopback or its allow-list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<NodeProbe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_rate_above: Option<Percent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_p99_above: Option<Dur>,
    /// The node's CPU / memory pressure (PSI some avg10, percent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub psi_cpu_above: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub psi_memory_above: Option<f64>,
    /// TCP segments retransmitted per second, node-wide.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_retransmits_above: Option<f64>,
    /// Breaching evaluations in a row (4 a second) before removing (1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive: Option<u32>,
    /// The probe's sliding window (3s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Dur>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeProbe {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<Rate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Dur>,
}

/// `over`'s value of each listed field where it has one, else `base`'s.
macro_rules! merge_options {
    ($t:ty: $($f:ident),*) => {
        impl $t {
            /// This section with every field `over` sets taken from it (a spec over
            /// the coordinator's config).
            pub fn merged(self, over: Self) -> Self {
                Self { $( $f: over.$f.or(self.$f), )* }
            }
        }
    };
}

merge_options!(Health: http, prometheus, alertmanager, window, dark_grace, score, checks);
merge_options!(Prerequisites: health_score_above, no_incidents, traffic_below_peak, error_rate_below,
    latency_within_baseline, required);
merge_options!(AbortConditions: health_score_below, error_rate_above, latency_p99_above, new_incident,
    consecutive);
merge_options!(Tolerance: error_rate, latency_p99_factor, latency_p99_extra, health_score_drop);

impl RecoveryOptions {
    /// Field by field, the tolerance too.
    pub fn merged(self, over: Self) -> Self {
        Self {
            tolerance: match (self.tolerance, over.tolerance) {
                (Some(a), Some(b)) => Some(a.merged(b)),
                (a, b) => b.or(a),
            },
            hold: over.hold.or(self.hold),
            timeout: over.timeout.or(self.timeout),
        }
    }
}
