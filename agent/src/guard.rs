//! The agent-side guard: node-local conditions that travel with a fault order and
//! that the agent evaluates itself, four times a second, while the effect is
//! applied: a node-local HTTP probe's error rate and p99 over a sliding window, the
//! node's CPU and memory pressure (PSI some avg10), and TCP retransmits per second.
//! A condition that holds for `consecutive` evaluations in a row is a breach: the
//! session removes the effect at once, whether or not the coordinator can be
//! reached, and reports the breach (again after every reconnect, until confirmed).
use std::{
    collections::VecDeque,
    time::{Duration, Instant, SystemTime},
};

use faultline_proto::v1::{AgentGuard, GuardReport};
use procfs::Current;
use tokio::sync::mpsc;

const EVERY: Duration = Duration::from_millis(250);

/// A breach of the guard of `order_id`.
#[derive(Debug)]
pub struct Breach {
    pub order_id: String,
    pub report: GuardReport,
}

struct Condition {
    name: &'static str,
    threshold: f64,
    unit: &'static str,
    run: u32,
}

/// Evaluates `guard` until a breach (sent on `breaches`) or until aborted.
pub async fn run(
    order_id: String,
    lease_id: String,
    guard: AgentGuard,
    breaches: mpsc::UnboundedSender<Breach>,
) {
    let consecutive = guard.consecutive.max(1);
    let window = guard
        .window
        .and_then(|w| Duration::try_from(w).ok())
        .filter(|w| !w.is_zero())
        .unwrap_or(Duration::from_secs(3));
    let p99_limit = guard
        .latency_p99_above
        .and_then(|d| Duration::try_from(d).ok())
        .filter(|d| !d.is_zero());
    let mut conditions: Vec<Condition> = [
        (
            "agent_guard.error_rate_above",
            guard.error_rate_above_percent,
            "%",
        ),
        (
            "agent_guard.latency_p99_above",
            p99_limit.map_or(0.0, |d| d.as_secs_f64() * 1e3),
            "ms",
        ),
        ("agent_guard.psi_cpu_above", guard.psi_cpu_above, "%"),
        ("agent_guard.psi_memory_above", guard.psi_memory_above, "%"),
        (
            "agent_guard.tcp_retransmits_above",
            guard.tcp_retransmits_per_s_above,
            "/s",
        ),
    ]
    .into_iter()
    .filter(|(_, t, _)| *t > 0.0)
    .map(|(name, threshold, unit)| Condition {
        name,
        threshold,
        unit,
        run: 0,
    })
    .collect();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _probe = guard.probe.clone().map(|spec| {
        let task = tokio::spawn(crate::probe::run(spec, tx.clone()));
        AbortOnDrop(task)
    });
    let mut results: VecDeque<(Instant, u32, bool)> = VecDeque::new();
    let mut tick = tokio::time::interval(EVERY);
    let mut retrans = retransmits().map(|n| (Instant::now(), n));
    loop {
        tokio::select! {
            Some(r) = rx.recv() => results.push_back((Instant::now(), r.latency_us, r.ok)),
            _ = tick.tick() => {
                let now = Instant::now();
                while results.front().is_some_and(|r| now.duration_since(r.0) > window) {
                    results.pop_front();
                }
                let probe = crate::probe::stats(results.make_contiguous());
                let rate = match (retrans, retransmits()) {
                    (Some((t0, n0)), Some(n1)) => {
                        retrans = Some((now, n1));
                        let dt = now.duration_since(t0).as_secs_f64();
                        (dt > 0.0).then(|| n1.saturating_sub(n0) as f64 / dt)
                    }
                    _ => None,
                };
                for c in &mut conditions {
                    let observed = match c.name {
                        "agent_guard.error_rate_above" => probe.map(|p| p.0),
                        "agent_guard.latency_p99_above" => probe.map(|p| p.1),
                        "agent_guard.psi_cpu_above" => procfs::CpuPressure::current()
                            .ok()
                            .map(|p| f64::from(p.some.avg10)),
                        "agent_guard.psi_memory_above" => procfs::MemoryPressure::current()
                            .ok()
                            .map(|p| f64::from(p.some.avg10)),
                        _ => rate,
                    };
                    match observed {
                        Some(v) if v > c.threshold => c.run += 1,
                        _ => c.run = 0,
                    }
                    if c.run >= consecutive {
                        let _ = breaches.send(Breach {
                            order_id: order_id.clone(),
                            report: GuardReport {
                                report_id: format!("{order_id}-guard"),
                                lease_id: lease_id.clone(),
                                guard: c.name.to_owned(),
                                observed: observed.unwrap_or_default(),
                                threshold: c.threshold,
                                unit: c.unit.to_owned(),
                                visible_at: Some(SystemTime::now().into()),
                                removal_confirmed_at: None,
                            },
                        });
                        return;
                    }
                }
            }
        }
    }
}

/// TCP segments retransmitted since boot (node-wide, this network namespace).
fn retransmits() -> Option<u64> {
    procfs::net::snmp().ok().map(|s| s.tcp_retrans_segs)
}

/// Aborts a task when dropped, so a guard's probe ends with the guard.
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
