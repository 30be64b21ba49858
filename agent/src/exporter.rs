//! The agent daemon's Prometheus metrics (`run --metrics-listen ADDR`, `GET /metrics`),
//! with Prometheus' conventions: the `faultline_agent_` prefix, base units in the
//! names, `_total` on counters.
//!
//! Invariants:
//! - Counters only ever rise. A fault child reports cumulative kernel counters for
//!   its own effect; the session adds the difference since that child's previous
//!   report, so a child that ends (and its counters with it) never lowers a series.
//! - Gauges of state (active faults, stress shares, leases, renewal age) are set
//!   from the session's own state on every watchdog tick, so they cannot drift from
//!   what the agent holds.
//! - Every fault kind and direction is exported from the start at zero, so an
//!   absent series means a broken scrape, never "nothing happened".
//! - The endpoint is read-only and serves no request that changes anything. Besides
//!   `/metrics` it answers `/healthz` (the daemon's loop ran in the last 5 s) and
//!   `/readyz` (the session with the coordinator is up), for liveness and readiness
//!   probes.
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use anyhow::{Context, Result};
use axum::{
    Router,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use faultline_proto::{exposition, spec::Scenario, v1::FaultCounters};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FaultLabel {
    fault: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    pub direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceLabel {
    resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

/// How an order ended up, as `faultline_agent_orders_total{result}` counts it.
#[derive(Clone, Copy, Debug)]
pub enum OrderResult {
    /// The effect is in place.
    Applied,
    /// Refused before anything was applied (policy, bad input, a cap).
    Refused,
    /// The child could not start or failed before arming.
    Failed,
}

impl OrderResult {
    fn label(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Refused => "refused",
            Self::Failed => "failed",
        }
    }
}

pub struct AgentMetrics {
    registry: Registry,
    active_faults: Family<FaultLabel, Gauge>,
    packets_seen: Family<DirectionLabel, Counter>,
    packets_matched: Family<DirectionLabel, Counter>,
    packets_dropped: Family<DirectionLabel, Counter>,
    packets_delayed: Family<DirectionLabel, Counter>,
    pub delay_line_queued: Gauge,
    pub delay_line_overflow: Counter,
    stress_share: Family<ResourceLabel, Gauge<f64, AtomicU64>>,
    pub leases: Gauge,
    pub lease_renewal_age: Gauge<f64, AtomicU64>,
    pub session_up: Gauge,
    pub deadman_firings: Counter,
    pub guard_breaches: Counter,
    orders: Family<ResultLabel, Counter>,
    pub order_apply_seconds: Histogram,
    /// CLOCK_MONOTONIC of the daemon loop's last watchdog tick, in nanoseconds.
    loop_tick_ns: AtomicU64,
}

/// A loop that has not ticked for this long is stuck (its heartbeat alone ticks it every second).
const LIVENESS_NS: u64 = 5_000_000_000;

impl Default for AgentMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Cumulative counters of one child, as last reported.
#[derive(Clone, Copy, Default)]
pub struct Seen {
    pub ingress: FaultCounters,
    pub egress: FaultCounters,
    pub overflow: u64,
}

impl AgentMetrics {
    pub fn new() -> Self {
        let mut r = Registry::default();
        let active_faults = Family::<FaultLabel, Gauge>::default();
        r.register(
            "faultline_agent_active_faults",
            "Faults this agent has in effect now, by kind",
            active_faults.clone(),
        );
        let packet = |r: &mut Registry, name: &str, help: &str| {
            let f = Family::<DirectionLabel, Counter>::default();
            r.register(name, help, f.clone());
            f
        };
        let packets_seen = packet(
            &mut r,
            "faultline_agent_packets_seen",
            "Packets the fault programs saw, by direction",
        );
        let packets_matched = packet(
            &mut r,
            "faultline_agent_packets_matched",
            "Packets that matched a fault's filter, by direction",
        );
        let packets_dropped = packet(
            &mut r,
            "faultline_agent_packets_dropped",
            "Packets a loss fault dropped, by direction",
        );
        let packets_delayed = packet(
            &mut r,
            "faultline_agent_packets_delayed",
            "Packets a latency fault delayed, by direction",
        );
        let delay_line_queued = Gauge::default();
        r.register(
            "faultline_agent_delay_line_queued_packets",
            "Packets held in the delay line now",
            delay_line_queued.clone(),
        );
        let delay_line_overflow = Counter::default();
        r.register(
            "faultline_agent_delay_line_overflow_packets",
            "Packets the delay line lost because its queue was full",
            delay_line_overflow.clone(),
        );
        let stress_share = Family::<ResourceLabel, Gauge<f64, AtomicU64>>::default();
        r.register(
            "faultline_agent_stress_share_ratio",
            "Share of the node's CPU or memory the stress faults in effect consume (0-1)",
            stress_share.clone(),
        );
        let leases = Gauge::default();
        r.register(
            "faultline_agent_leases",
            "Leases this agent holds effects under",
            leases.clone(),
        );
        let lease_renewal_age = Gauge::<f64, AtomicU64>::default();
        r.register(
            "faultline_agent_lease_renewal_age_seconds",
            "Time since the least recently renewed lease was renewed (0 with no lease)",
            lease_renewal_age.clone(),
        );
        let session_up = Gauge::default();
        r.register(
            "faultline_agent_coordinator_session_up",
            "1 while the session with the coordinator is established",
            session_up.clone(),
        );
        let deadman_firings = Counter::default();
        r.register(
            "faultline_agent_dead_man_firings",
            "Leases whose effects the dead-man switch removed for want of renewal",
            deadman_firings.clone(),
        );
        let guard_breaches = Counter::default();
        r.register(
            "faultline_agent_guard_breaches",
            "Effects the agent removed by its own guard",
            guard_breaches.clone(),
        );
        let orders = Family::<ResultLabel, Counter>::default();
        r.register(
            "faultline_agent_orders",
            "Fault orders received, by how they ended up",
            orders.clone(),
        );
        let order_apply_seconds =
            Histogram::new([0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]);
        r.register(
            "faultline_agent_order_apply_seconds",
            "Time from receiving a fault order to its effect being in place",
            order_apply_seconds.clone(),
        );
        let m = Self {
            registry: r,
            active_faults,
            packets_seen,
            packets_matched,
            packets_dropped,
            packets_delayed,
            delay_line_queued,
            delay_line_overflow,
            stress_share,
            leases,
            lease_renewal_age,
            session_up,
            deadman_firings,
            guard_breaches,
            orders,
            order_apply_seconds,
            loop_tick_ns: AtomicU64::new(crate::clock::monotonic_ns()),
        };
        for kind in Scenario::short_names() {
            m.active_faults.get_or_create(&fault(kind)).set(0);
        }
        for d in ["ingress", "egress"] {
            for f in [
                &m.packets_seen,
                &m.packets_matched,
                &m.packets_dropped,
                &m.packets_delayed,
            ] {
                f.get_or_create(&direction(d)).inc_by(0);
            }
        }
        for res in ["cpu", "memory"] {
            m.stress_share.get_or_create(&resource(res)).set(0.0);
        }
        for o in [
            OrderResult::Applied,
            OrderResult::Refused,
            OrderResult::Failed,
        ] {
            m.orders
                .get_or_create(&ResultLabel {
                    result: o.label().to_owned(),
                })
                .inc_by(0);
        }
        m
    }

    pub fn set_active_faults(&self, kind: &str, n: usize) {
        self.active_faults.get_or_create(&fault(kind)).set(n as i64);
    }

    /// `share` of the node's `resource` (cpu, memory), 0-1.
    pub fn set_stress_share(&self, resource: &str, share: f64) {
        self.stress_share
            .get_or_create(&self::resource(resource))
            .set(share);
    }

    /// The daemon's loop is alive (called after every event it handles, and its
    /// heartbeat is one every second).
    pub fn tick(&self) {
        self.loop_tick_ns
            .store(crate::clock::monotonic_ns(), Ordering::Relaxed);
    }

    pub fn order(&self, result: OrderResult) {
        self.orders
            .get_or_create(&ResultLabel {
                result: result.label().to_owned(),
            })
            .inc();
    }

    /// Adds what a child's counters rose by since its previous report.
    pub fn packets(&self, before: &Seen, now: &Seen) {
        for (d, b, n) in [
            ("ingress", &before.ingress, &now.ingress),
            ("egress", &before.egress, &now.egress),
        ] {
            let l = direction(d);
            self.packets_seen
                .get_or_create(&l)
                .inc_by(n.seen.saturating_sub(b.seen));
            self.packets_matched
                .get_or_create(&l)
                .inc_by(n.matched.saturating_sub(b.matched));
            self.packets_dropped
                .get_or_create(&l)
                .inc_by(n.dropped.saturating_sub(b.dropped));
            self.packets_delayed
                .get_or_create(&l)
                .inc_by(n.delayed.saturating_sub(b.delayed));
        }
        self.delay_line_overflow
            .inc_by(now.overflow.saturating_sub(before.overflow));
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

fn fault(kind: &str) -> FaultLabel {
    FaultLabel {
        fault: kind.to_owned(),
    }
}

fn direction(d: &str) -> DirectionLabel {
    DirectionLabel {
        direction: d.to_owned(),
    }
}

fn resource(r: &str) -> ResourceLabel {
    ResourceLabel {
        resource: r.to_owned(),
    }
}

async fn http_metrics(State(m): State<Arc<AgentMetrics>>, headers: HeaderMap) -> impl IntoResponse {
    let text = m.encode();
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    if exposition::wants_openmetrics(accept) {
        ([(header::CONTENT_TYPE, exposition::OPENMETRICS_TEXT)], text)
    } else {
        (
            [(header::CONTENT_TYPE, exposition::PROMETHEUS_TEXT)],
            exposition::to_prometheus_text(&text),
        )
    }
}

async fn http_healthz(State(m): State<Arc<AgentMetrics>>) -> (StatusCode, &'static str) {
    let idle = crate::clock::monotonic_ns().saturating_sub(m.loop_tick_ns.load(Ordering::Relaxed));
    if idle < LIVENESS_NS {
        (StatusCode::OK, "ok\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the agent's loop is stuck\n",
        )
    }
}

async fn http_readyz(State(m): State<Arc<AgentMetrics>>) -> (StatusCode, &'static str) {
    if m.session_up.get() == 1 {
        (StatusCode::OK, "ok\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "no session with the coordinator\n",
        )
    }
}

/// Binds `addr` now (so a taken port stops the daemon before it touches anything)
/// and returns the task that serves `/metrics` on it.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<AgentMetrics>,
) -> Result<impl std::future::Future<Output = ()>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| crate::errors::UsageError(format!("--metrics-listen {addr}: {e}")))
        .context("metrics endpoint")?;
    let app = Router::new()
        .route("/metrics", get(http_metrics))
        .route("/healthz", get(http_healthz))
        .route("/readyz", get(http_readyz))
        .with_state(metrics);
    Ok(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("metrics endpoint stopped: {e}");
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(seen: u64, matched: u64, dropped: u64) -> FaultCounters {
        FaultCounters {
            seen,
            matched,
            dropped,
            delayed: 0,
        }
    }

    #[test]
    fn every_series_exists_at_zero_and_counters_add_only_rises() {
        let m = AgentMetrics::new();
        let text = exposition::to_prometheus_text(&m.encode());
        for kind in Scenario::short_names() {
            assert!(
                text.contains(&format!(
                    "faultline_agent_active_faults{{fault=\"{kind}\"}} 0"
                )),
                "{text}"
            );
        }
        assert!(text.contains("faultline_agent_packets_dropped_total{direction=\"egress\"} 0"));
        let a = Seen {
            egress: counters(100, 50, 5),
            ..Seen::default()
        };
        let b = Seen {
            egress: counters(300, 150, 15),
            overflow: 2,
            ..Seen::default()
        };
        m.packets(&Seen::default(), &a);
        m.packets(&a, &b);
        // A child restarting from zero (a new effect) adds nothing negative.
        m.packets(&b, &Seen::default());
        let text = exposition::to_prometheus_text(&m.encode());
        assert!(text.contains("faultline_agent_packets_seen_total{direction=\"egress\"} 300"));
        assert!(text.contains("faultline_agent_packets_dropped_total{direction=\"egress\"} 15"));
        assert!(text.contains("faultline_agent_delay_line_overflow_packets_total 2"));
    }
}
