//! One-node leases: the blast radius of every experiment.
//!
//! A lease names the nodes an experiment may touch and lives for a TTL that the
//! agents' heartbeats renew. The table enforces `blast_radius.max_nodes` (nodes per
//! lease), `blast_radius.max_concurrent` (leases at once) and node exclusivity under
//! one lock, so concurrent requests can never be granted twice. An engaged kill
//! switch (set by abort) refuses every grant until an admin clears it; the table
//! holds it in memory, the store keeps it across restarts (`Control` loads it). A
//! table that is closed (the coordinator is shutting down) refuses every grant.
use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use faultline_proto::limits::BlastRadius;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub id: String,
    pub experiment_id: String,
    pub nodes: Vec<String>,
    pub ttl: Duration,
    pub expires: Instant,
}

/// Why a lease was not granted. The message names the limit that refused it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "the kill switch is engaged ({0}); an admin must clear it first \
         (faultline clear-kill-switch)"
    )]
    KillSwitch(String),
    #[error("the coordinator is shutting down: no experiment starts")]
    ShuttingDown,
    #[error("an experiment needs at least one node")]
    NoNodes,
    #[error("node {0} is listed twice")]
    DuplicateNode(String),
    #[error("{requested} nodes exceed the limit blast_radius.max_nodes = {max}")]
    TooManyNodes { requested: usize, max: u32 },
    #[error(
        "{held} experiment(s) already hold a lease ({holders}); limit \
         blast_radius.max_concurrent = {max}"
    )]
    Concurrent {
        held: usize,
        holders: String,
        max: u32,
    },
    #[error("node {node} is leased to experiment {experiment}")]
    NodeBusy { node: String, experiment: String },
}

impl Refusal {
    /// Refused only while other leases are held: it ends when one is released.
    /// The `reason` label of `faultline_lease_refusals_total`.
    pub fn metric_reason(&self) -> &'static str {
        match self {
            Refusal::KillSwitch(_) => "kill_switch",
            Refusal::ShuttingDown => "shutting_down",
            Refusal::Concurrent { .. } => "max_concurrent",
            Refusal::NodeBusy { .. } => "node_busy",
            Refusal::TooManyNodes { .. } => "max_nodes",
            Refusal::NoNodes | Refusal::DuplicateNode(_) => "invalid",
        }
    }

    pub fn is_busy(&self) -> bool {
        matches!(self, Refusal::Concurrent { .. } | Refusal::NodeBusy { .. })
    }
}

#[derive(Default)]
struct State {
    leases: HashMap<String, Lease>,
    kill_switch: Option<String>,
    closed: bool,
    issued: u64,
}

pub struct LeaseTable {
    limits: BlastRadius,
    state: Mutex<State>,
}

impl LeaseTable {
    pub fn new(limits: BlastRadius) -> Self {
        Self {
            limits,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the map half-updated (every
        // change is one insert or remove), so a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Grants a lease on `nodes` for `ttl`, or says which limit refuses it. Leases
    /// past their expiry are dropped first, so a dead experiment never blocks.
    pub fn grant(
        &self,
        experiment_id: &str,
        nodes: &[String],
        ttl: Duration,
        now: Instant,
    ) -> Result<Lease, Refusal> {
        self.grant_within(experiment_id, nodes, ttl, now, None)
    }

    /// `grant` under another blast radius (a game day's) instead of the table's.
    pub fn grant_within(
        &self,
        experiment_id: &str,
        nodes: &[String],
        ttl: Duration,
        now: Instant,
        within: Option<&BlastRadius>,
    ) -> Result<Lease, Refusal> {
        let limits = within.unwrap_or(&self.limits);
        if nodes.is_empty() {
            return Err(Refusal::NoNodes);
        }
        for (i, n) in nodes.iter().enumerate() {
            if nodes[..i].contains(n) {
                return Err(Refusal::DuplicateNode(n.clone()));
            }
        }
        if nodes.len() > limits.max_nodes as usize {
            return Err(Refusal::TooManyNodes {
                requested: nodes.len(),
                max: limits.max_nodes,
            });
        }
        let mut st = self.state();
        if st.closed {
            return Err(Refusal::ShuttingDown);
        }
        if let Some(reason) = &st.kill_switch {
            return Err(Refusal::KillSwitch(reason.clone()));
        }
        st.leases.retain(|_, l| l.expires > now);
        if st.leases.len() >= limits.max_concurrent as usize {
            let mut holders: Vec<&str> = st
                .leases
                .values()
                .map(|l| l.experiment_id.as_str())
                .collect();
            holders.sort_unstable();
            return Err(Refusal::Concurrent {
                held: st.leases.len(),
                holders: holders.join(", "),
                max: limits.max_concurrent,
            });
        }
        for l in st.leases.values() {
            if let Some(node) = nodes.iter().find(|n| l.nodes.contains(n)) {
                return Err(Refusal::NodeBusy {
                    node: node.clone(),
                    experiment: l.experiment_id.clone(),
                });
            }
        }
        st.issued += 1;
        let lease = Lease {
            id: format!("lease-{}-{experiment_id}", st.issued),
            experiment_id: experiment_id.to_owned(),
            nodes: nodes.to_vec(),
            ttl,
            expires: now + ttl,
        };
        st.leases.insert(lease.id.clone(), lease.clone());
        Ok(lease)
    }

    /// Extends a lease by its TTL from `now`; false if it is unknown or expired.
    pub fn renew(&self, lease_id: &str, now: Instant) -> bool {
        let mut st = self.state();
        match st.leases.get_mut(lease_id) {
            Some(l) if l.expires > now => {
                l.expires = now + l.ttl;
                true
            }
            _ => false,
        }
    }

    pub fn release(&self, lease_id: &str) -> Option<Lease> {
        self.state().leases.remove(lease_id)
    }

    /// Removes and returns the leases that expired by `now`.
    pub fn expire(&self, now: Instant) -> Vec<Lease> {
        let mut st = self.state();
        let expired: Vec<String> = st
            .leases
            .values()
            .filter(|l| l.expires <= now)
            .map(|l| l.id.clone())
            .collect();
        expired
            .iter()
            .filter_map(|id| st.leases.remove(id))
            .collect()
    }

    /// The lease `lease_id`, if it is held (it may be past its expiry until the next
    /// grant or `expire` drops it).
    pub fn get(&self, lease_id: &str) -> Option<Lease> {
        self.state().leases.get(lease_id).cloned()
    }

    pub fn held(&self) -> Vec<Lease> {
        self.state().leases.values().cloned().collect()
    }

    /// Refuses every new lease until cleared (existing ones are the aborter's to end).
    pub fn engage_kill_switch(&self, reason: &str) {
        self.state().kill_switch = Some(reason.to_owned());
    }

    pub fn clear_kill_switch(&self) {
        self.state().kill_switch = None;
    }

    pub fn kill_switch(&self) -> Option<String> {
        self.state().kill_switch.clone()
    }

    /// Refuses every grant from now on (the coordinator is shutting down). Held
    /// leases are the shutdown's to end.
    pub fn close(&self) {
        self.state().closed = true;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Barrier};

    use super::*;

    fn table(max_nodes: u32, max_concurrent: u32) -> LeaseTable {
        LeaseTable::new(BlastRadius {
            max_nodes,
            max_concurrent,
            max_nodes_fraction: None,
        })
    }

    fn nodes(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    const TTL: Duration = Duration::from_secs(5);

    #[test]
    fn fifty_concurrent_requests_get_exactly_one_lease() {
        let t = Arc::new(table(1, 1));
        let start = Arc::new(Barrier::new(50));
        let now = Instant::now();
        let handles: Vec<_> = (0..50)
            .map(|i| {
                let (t, start) = (t.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    let node = format!("node-{}", i % 3 + 1);
                    t.grant(&format!("exp-{i}"), &[node], TTL, now)
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let granted: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(granted.len(), 1, "{results:?}");
        for r in results.iter().filter_map(|r| r.as_ref().err()) {
            assert!(
                r.to_string().contains("blast_radius.max_concurrent = 1"),
                "{r}"
            );
        }
        // After it ends, the next one can start.
        t.release(&granted[0].id).expect("held");
        assert!(t.grant("next", &nodes(&["node-1"]), TTL, now).is_ok());
    }

    #[test]
    fn each_blast_radius_limit_is_named_when_it_refuses() {
        let t = table(1, 2);
        let now = Instant::now();
        let e = t
            .grant("a", &nodes(&["node-1", "node-2"]), TTL, now)
            .unwrap_err();
        assert!(e.to_string().contains("blast_radius.max_nodes = 1"), "{e}");
        assert_eq!(t.grant("a", &[], TTL, now), Err(Refusal::NoNodes));
        let t = table(3, 2);
        assert!(matches!(
            t.grant("a", &nodes(&["n", "n"]), TTL, now),
            Err(Refusal::DuplicateNode(_))
        ));
        t.grant("a", &nodes(&["node-1"]), TTL, now).unwrap();
        let e = t.grant("b", &nodes(&["node-1"]), TTL, now).unwrap_err();
        assert!(
            e.to_string()
                .contains("node node-1 is leased to experiment a"),
            "{e}"
        );
        t.grant("b", &nodes(&["node-2"]), TTL, now).unwrap();
        let e = t.grant("c", &nodes(&["node-3"]), TTL, now).unwrap_err();
        assert!(e.to_string().contains("(a, b)"), "{e}");
    }

    #[test]
    fn leases_expire_unless_renewed() {
        let t = table(1, 1);
        let t0 = Instant::now();
        let lease = t.grant("a", &nodes(&["node-1"]), TTL, t0).unwrap();
        assert!(t.renew(&lease.id, t0 + Duration::from_secs(4)));
        // Renewed at 4 s: alive until 9 s.
        assert!(t.expire(t0 + Duration::from_secs(8)).is_empty());
        assert_eq!(
            t.expire(t0 + Duration::from_secs(9)),
            vec![Lease {
                expires: t0 + Duration::from_secs(9),
                ..lease.clone()
            }]
        );
        assert!(!t.renew(&lease.id, t0 + Duration::from_secs(9)));
        // An expired lease never blocks a new grant, even before expire() runs.
        let t = table(1, 1);
        t.grant("a", &nodes(&["node-1"]), TTL, t0).unwrap();
        assert!(t.grant("b", &nodes(&["node-1"]), TTL, t0 + TTL).is_ok());
    }

    #[test]
    fn the_kill_switch_refuses_until_cleared() {
        let t = table(1, 1);
        let now = Instant::now();
        t.engage_kill_switch("POST /abort by ci");
        let e = t.grant("a", &nodes(&["node-1"]), TTL, now).unwrap_err();
        assert!(
            e.to_string()
                .contains("kill switch is engaged (POST /abort by ci)")
        );
        t.clear_kill_switch();
        assert!(t.grant("a", &nodes(&["node-1"]), TTL, now).is_ok());
    }

    #[test]
    fn a_closed_table_refuses_every_grant() {
        let t = table(3, 3);
        let now = Instant::now();
        t.grant("a", &nodes(&["node-1"]), TTL, now).unwrap();
        t.close();
        assert_eq!(
            t.grant("b", &nodes(&["node-2"]), TTL, now),
            Err(Refusal::ShuttingDown)
        );
        assert!(!Refusal::ShuttingDown.is_busy());
    }
}
