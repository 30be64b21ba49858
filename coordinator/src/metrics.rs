//! The coordinator's Prometheus metrics (`GET /metrics` on the HTTP port), with
//! Prometheus' conventions: the `faultline_` prefix, base units in the names
//! (seconds), `_total` on counters. Counters are counted where things happen;
//! gauges of state (agents, heartbeats, kill switch, running experiments) are read
//! from the coordinator when scraped, so they cannot drift.
use std::sync::atomic::AtomicU64;

use faultline_proto::v1::{Classification, Outcome, RunStatus, Verdict};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::report::enum_name;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExperimentLabels {
    pub scenario: String,
    pub verdict: String,
    pub classification: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabel {
    pub node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GuardLabel {
    pub guard: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScheduleLabels {
    pub schedule: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

/// The recovery-time buckets are the report's distribution edges.
pub const RECOVERY_BUCKETS: [f64; 4] = [10.0, 30.0, 60.0, 120.0];

/// The coordinator's state the gauges show, read at a scrape.
pub struct State {
    pub nodes: Vec<NodeState>,
    pub kill_switch: bool,
    pub running: usize,
}

pub struct NodeState {
    pub name: String,
    pub connected: bool,
    pub last_heartbeat: std::time::SystemTime,
}

pub struct Metrics {
    registry: Registry,
    pub experiments: Family<ExperimentLabels, Counter>,
    pub guard_evaluations: Counter,
    pub guard_breaches: Family<GuardLabel, Counter>,
    pub aborts: Counter,
    pub abort_seconds: Histogram,
    pub aborts_unconfirmed: Counter,
    pub recovery_seconds: Histogram,
    pub schedule_runs: Family<ScheduleLabels, Counter>,
    pub lease_grants: Counter,
    pub lease_refusals: Family<ReasonLabel, Counter>,
    pub deadman_firings: Family<NodeLabel, Counter>,
    agent_connected: Family<NodeLabel, Gauge>,
    heartbeat_age: Family<NodeLabel, Gauge<f64, AtomicU64>>,
    agents_connected: Gauge,
    kill_switch: Gauge,
    running: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let experiments = Family::<ExperimentLabels, Counter>::default();
        registry.register(
            "faultline_experiments",
            "Experiments ended, by scenario, verdict and classification",
            experiments.clone(),
        );
        let guard_evaluations = Counter::default();
        registry.register(
            "faultline_guard_evaluations",
            "Health data points the abort conditions were evaluated on",
            guard_evaluations.clone(),
        );
        let guard_breaches = Family::<GuardLabel, Counter>::default();
        registry.register(
            "faultline_guard_breaches",
            "Guard breaches that aborted an experiment, by guard",
            guard_breaches.clone(),
        );
        let aborts = Counter::default();
        registry.register(
            "faultline_aborts",
            "Aborts ordered by a person",
            aborts.clone(),
        );
        let abort_seconds = Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0]);
        registry.register(
            "faultline_abort_duration_seconds",
            "From an abort's order until every agent confirmed removal",
            abort_seconds.clone(),
        );
        let aborts_unconfirmed = Counter::default();
        registry.register(
            "faultline_aborts_unconfirmed",
            "Aborts some agent did not confirm within 5 s",
            aborts_unconfirmed.clone(),
        );
        let recovery_seconds = Histogram::new(RECOVERY_BUCKETS);
        registry.register(
            "faultline_recovery_time_seconds",
            "From removal until the steady state's held return (the report's buckets)",
            recovery_seconds.clone(),
        );
        let schedule_runs = Family::<ScheduleLabels, Counter>::default();
        registry.register(
            "faultline_schedule_runs",
            "Schedule slots decided, by schedule and status (started, skipped, missed)",
            schedule_runs.clone(),
        );
        let lease_grants = Counter::default();
        registry.register(
            "faultline_lease_grants",
            "Leases granted",
            lease_grants.clone(),
        );
        let lease_refusals = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "faultline_lease_refusals",
            "Leases refused, by reason",
            lease_refusals.clone(),
        );
        let deadman_firings = Family::<NodeLabel, Counter>::default();
        registry.register(
            "faultline_deadman_firings",
            "Effects an agent's dead-man switch removed (reported by its acknowledgement)",
            deadman_firings.clone(),
        );
        let agent_connected = Family::<NodeLabel, Gauge>::default();
        registry.register(
            "faultline_agent_connected",
            "1 while the node's agent holds its session",
            agent_connected.clone(),
        );
        let heartbeat_age = Family::<NodeLabel, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "faultline_agent_heartbeat_age_seconds",
            "Seconds since the node's last heartbeat",
            heartbeat_age.clone(),
        );
        let agents_connected = Gauge::default();
        registry.register(
            "faultline_agents_connected",
            "Agents holding a session",
            agents_connected.clone(),
        );
        let kill_switch = Gauge::default();
        registry.register(
            "faultline_kill_switch_engaged",
            "1 while the kill switch refuses new experiments",
            kill_switch.clone(),
        );
        let running = Gauge::default();
        registry.register(
            "faultline_experiments_running",
            "Experiments between lease grant and their end",
            running.clone(),
        );
        Self {
            registry,
            experiments,
            guard_evaluations,
            guard_breaches,
            aborts,
            abort_seconds,
            aborts_unconfirmed,
            recovery_seconds,
            schedule_runs,
            lease_grants,
            lease_refusals,
            deadman_firings,
            agent_connected,
            heartbeat_age,
            agents_connected,
            kill_switch,
            running,
        }
    }

    pub fn experiment_ended(&self, scenario: &str, o: &Outcome) {
        let verdict = Verdict::try_from(o.verdict).unwrap_or(Verdict::Unspecified);
        let class =
            Classification::try_from(o.classification).unwrap_or(Classification::Unspecified);
        self.experiments
            .get_or_create(&ExperimentLabels {
                scenario: scenario.to_owned(),
                verdict: enum_name(format!("{verdict:?}")),
                classification: enum_name(format!("{class:?}")),
            })
            .inc();
        if let Some(r) = o
            .recovery_time
            .and_then(|d| std::time::Duration::try_from(d).ok())
        {
            self.recovery_seconds.observe(r.as_secs_f64());
        }
        if let Some(b) = &o.breach {
            self.guard_breaches
                .get_or_create(&GuardLabel {
                    guard: b.guard.clone(),
                })
                .inc();
        }
    }

    pub fn schedule_run(&self, schedule: &str, status: RunStatus) {
        let status = match status {
            RunStatus::Started => "started",
            RunStatus::Skipped => "skipped",
            RunStatus::Missed => "missed",
            RunStatus::Unspecified => "unspecified",
        };
        self.schedule_runs
            .get_or_create(&ScheduleLabels {
                schedule: schedule.to_owned(),
                status: status.to_owned(),
            })
            .inc();
    }

    /// The text exposition, with the state gauges set from `now`.
    pub fn render(&self, state: &State) -> String {
        let now = std::time::SystemTime::now();
        let mut connected = 0;
        for n in &state.nodes {
            let label = NodeLabel {
                node: n.name.clone(),
            };
            connected += i64::from(n.connected);
            self.agent_connected
                .get_or_create(&label)
                .set(i64::from(n.connected));
            self.heartbeat_age.get_or_create(&label).set(
                now.duration_since(n.last_heartbeat)
                    .unwrap_or_default()
                    .as_secs_f64(),
            );
        }
        self.agents_connected.set(connected);
        self.kill_switch.set(i64::from(state.kill_switch));
        self.running.set(state.running as i64);
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
