//! The coordinator's shared state: connected agents and their sessions, routing of
//! agent acknowledgements to whoever waits for them, running experiments, leases, the
//! store, and the abort path every interface (gRPC, HTTP, CLI) goes through.
use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use faultline_proto::{
    limits::ChaosLimits,
    v1::{
        Ack, CoordinatorMessage, EffectState, MetricSample, ProbeResults, Register, RemoveFault,
        ReportReceived, SelfTest, SetSampleRate, coordinator_message::Body,
    },
};
use tokio::sync::{Notify, broadcast, mpsc, watch};
use tonic::Status;
use tracing::{info, warn};

use crate::{
    config::Settings,
    fleet::leases::{Lease, LeaseTable, Refusal},
    store::Store,
};

pub struct Config {
    pub limits: ChaosLimits,
    pub limits_source: String,
    pub lease_ttl: Duration,
    /// The config file (or the profile's embedded defaults) with flags over it.
    pub settings: Settings,
    /// The limits inside a game day (the staging profile unless configured); a game
    /// day's own max_concurrent and max_nodes replace its blast radius.
    pub gameday_limits: ChaosLimits,
    pub gameday_limits_source: String,
    pub schedule: crate::schedule::ScheduleFile,
}

pub type AgentTx = mpsc::Sender<Result<CoordinatorMessage, Status>>;

/// One agent's live stream.
pub struct Session {
    pub id: u64,
    pub tx: AgentTx,
    /// The agent's address, for the messages that name a session.
    pub peer: String,
    /// When the agent last sent anything on this stream (heartbeats come every
    /// second): a session silent for `Session::STALE` may be replaced.
    pub last_seen: Instant,
}

impl Session {
    /// How long a session may be silent and still count as its agent's: three
    /// missed heartbeats. A second agent with the same identity is refused while
    /// the first one's session is live, and takes over once it is stale.
    pub const STALE: Duration = Duration::from_secs(3);
}

pub struct NodeEntry {
    pub info: Register,
    pub session: Option<Session>,
    pub last_heartbeat: SystemTime,
    pub last_sample: Option<MetricSample>,
}

/// Why a running experiment is asked to end before its time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Halt {
    /// A person's abort, a blackout window, a game day's close: it ends `aborted`.
    Abort(String),
    /// The coordinator is shutting down: it ends `interrupted`.
    Shutdown(String),
}

impl Halt {
    pub fn reason(&self) -> &str {
        match self {
            Halt::Abort(why) | Halt::Shutdown(why) => why,
        }
    }

    pub fn verdict(&self) -> faultline_proto::v1::Verdict {
        match self {
            Halt::Abort(_) => faultline_proto::v1::Verdict::Aborted,
            Halt::Shutdown(_) => faultline_proto::v1::Verdict::Interrupted,
        }
    }
}

/// An experiment between lease grant and its end.
pub struct Running {
    pub lease_id: String,
    pub nodes: Vec<String>,
    /// Set by an abort or a shutdown (with its reason); the experiment ends as the
    /// halt's verdict says.
    pub abort: watch::Sender<Option<Halt>>,
    /// Becomes true once the experiment has recorded its end.
    pub done: watch::Receiver<bool>,
    /// The schedule entry that started it ("" for a person or CI).
    pub schedule: String,
    /// The game day it runs in ("").
    pub gameday: String,
}

pub struct Control {
    pub config: Config,
    pub metrics: crate::metrics::Metrics,
    pub scheduler: crate::schedule::Scheduler,
    pub leases: LeaseTable,
    pub store: Store,
    pub nodes: Mutex<HashMap<String, NodeEntry>>,
    pub running: Mutex<HashMap<String, Running>>,
    waiters: Mutex<HashMap<String, mpsc::UnboundedSender<Ack>>>,
    probes: Mutex<HashMap<String, mpsc::UnboundedSender<ProbeResults>>>,
    pub samples: broadcast::Sender<(String, MetricSample)>,
    /// Signalled whenever a lease is released (queued requests retry).
    pub lease_freed: Notify,
    /// Becomes true when the coordinator shuts down: every agent stream ends.
    pub closing: watch::Sender<bool>,
    next_experiment: AtomicU64,
    next_id: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section is a single map operation, so a poisoned lock still
    // guards consistent data.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Receives the acknowledgements for one order or request id until dropped.
pub struct AckWaiter {
    control: Arc<Control>,
    id: String,
    pub rx: mpsc::UnboundedReceiver<Ack>,
}

impl Drop for AckWaiter {
    fn drop(&mut self) {
        lock(&self.control.waiters).remove(&self.id);
    }
}

/// Receives one node-side probe's result batches.
pub struct ProbeSubscription {
    pub rx: mpsc::UnboundedReceiver<ProbeResults>,
}

/// What a shutdown did.
#[derive(Debug)]
pub struct ShutdownReport {
    /// The experiments that were running, each ended `interrupted`.
    pub interrupted: Vec<String>,
    /// Connected nodes that did not confirm the removal of their effects in time
    /// (their dead-man switch and the in-kernel deadline still end them).
    pub unconfirmed: Vec<String>,
    /// Agent streams ended.
    pub sessions: usize,
}

pub struct AbortOutcome {
    pub experiment_ids: Vec<String>,
    pub took: Duration,
    /// Nodes that did not confirm removal in time (their dead-man switch and the
    /// in-kernel deadline still end the effects).
    pub unconfirmed: Vec<String>,
}

impl Control {
    pub fn new(config: Config, store: Store) -> anyhow::Result<Arc<Self>> {
        let last = store.last_seq()?;
        let scheduler =
            crate::schedule::Scheduler::load(config.schedule.clone(), &store, chrono::Utc::now())?;
        // The kill switch outlives the process: engaged before a restart (or a crash),
        // it stays engaged until an admin clears it.
        let leases = LeaseTable::new(config.limits.blast_radius.clone());
        if let Some(reason) = store.kill_switch()? {
            warn!(%reason, "the kill switch is engaged (recorded in the store); no experiment starts until an admin clears it");
            leases.engage_kill_switch(&reason);
        }
        Ok(Arc::new(Self {
            metrics: crate::metrics::Metrics::new(),
            scheduler,
            leases,
            config,
            store,
            nodes: Mutex::default(),
            running: Mutex::default(),
            waiters: Mutex::default(),
            probes: Mutex::default(),
            samples: broadcast::channel(4096).0,
            lease_freed: Notify::new(),
            closing: watch::channel(false).0,
            next_experiment: AtomicU64::new(last + 1),
            next_id: AtomicU64::new(1),
        }))
    }

    pub fn nodes(&self) -> std::sync::MutexGuard<'_, HashMap<String, NodeEntry>> {
        lock(&self.nodes)
    }

    pub fn running(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        lock(&self.running)
    }

    pub fn next_experiment_seq(&self) -> u64 {
        self.next_experiment.fetch_add(1, Ordering::Relaxed)
    }

    /// A process-unique id for sessions and requests.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Starts collecting acks for `id`; register before sending the order.
    pub fn expect(self: &Arc<Self>, id: &str) -> AckWaiter {
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.waiters).insert(id.to_owned(), tx);
        AckWaiter {
            control: self.clone(),
            id: id.to_owned(),
            rx,
        }
    }

    /// Starts collecting the results of node-side probe `id`.
    pub fn expect_probe(&self, id: &str) -> ProbeSubscription {
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.probes).insert(id.to_owned(), tx);
        ProbeSubscription { rx }
    }

    pub fn forget_probe(&self, id: &str) {
        lock(&self.probes).remove(id);
    }

    pub fn deliver_probe(&self, r: ProbeResults) {
        if let Some(tx) = lock(&self.probes).get(&r.probe_id) {
            let _ = tx.send(r);
        }
    }

    /// Tells the agents the guard report `report_id` arrived, so they stop resending it.
    pub fn confirm_report(&self, nodes: &[String], report_id: &str) {
        for n in nodes {
            let _ = self.send(
                n,
                Body::ReportReceived(ReportReceived {
                    report_id: report_id.to_owned(),
                }),
            );
        }
    }

    /// Appends to the audit log, now or as soon as the store can write: for what
    /// happens whatever the store does (an abort, the scheduler's and the clock's
    /// actions). A person's other actions use `Store::audited` and are refused when
    /// they cannot be recorded.
    pub fn audit(&self, who: &str, peer: &str, action: &str, target: &str, detail: &str) {
        info!(who, peer, action, target, detail, "audit");
        self.store.audit_or_defer(crate::store::Audit {
            who: who.to_owned(),
            peer: peer.to_owned(),
            action: action.to_owned(),
            target: target.to_owned(),
            detail: detail.to_owned(),
        });
    }

    /// Stores a guard report from an agent on the experiment that holds its lease.
    pub fn record_guard_report(&self, node: &str, g: &faultline_proto::v1::GuardReport) {
        if let Err(e) = self.store.record_guard_report(node, g) {
            warn!("store: guard report {}: {e:#}", g.report_id);
        }
    }

    /// The rollback self-test on `node`: Ok with what passed, Err with what failed.
    pub async fn self_test(
        self: &Arc<Self>,
        node: &str,
        iface: &str,
        timeout: Duration,
    ) -> Result<String, String> {
        let request_id = format!("selftest-{}-{node}", self.next_id());
        let mut waiter = self.expect(&request_id);
        self.send(
            node,
            Body::SelfTest(SelfTest {
                request_id,
                interface: iface.to_owned(),
            }),
        )
        .map_err(|e| e.message().to_owned())?;
        match tokio::time::timeout(timeout, waiter.rx.recv()).await {
            Ok(Some(a)) if a.state == EffectState::Applied as i32 => Ok(a.detail),
            Ok(Some(a)) => Err(a.detail),
            _ => Err(format!(
                "no self-test result from {node} within {timeout:?}"
            )),
        }
    }

    pub fn deliver(&self, ack: Ack) {
        if let Some(tx) = lock(&self.waiters).get(&ack.order_id) {
            let _ = tx.send(ack);
        }
    }

    /// The node's session, or why there is none (not registered, agent not connected).
    pub fn session(&self, node: &str) -> Result<AgentTx, Status> {
        match self.nodes().get(node) {
            None => Err(Status::failed_precondition(format!(
                "node {node} is not registered"
            ))),
            Some(NodeEntry { session: None, .. }) => Err(Status::failed_precondition(format!(
                "node {node}'s agent is not connected"
            ))),
            Some(NodeEntry {
                session: Some(s), ..
            }) => Ok(s.tx.clone()),
        }
    }

    /// What the metrics' state gauges show, now.
    pub fn metrics_state(&self) -> crate::metrics::State {
        crate::metrics::State {
            nodes: self
                .nodes()
                .iter()
                .map(|(name, e)| crate::metrics::NodeState {
                    name: name.clone(),
                    connected: e.session.is_some(),
                    last_heartbeat: e.last_heartbeat,
                })
                .collect(),
            kill_switch: self.leases.kill_switch().is_some(),
            running: self.running().len(),
        }
    }

    /// The id of the node's current session, if its agent is connected.
    pub fn session_id(&self, node: &str) -> Option<u64> {
        self.nodes()
            .get(node)
            .and_then(|e| e.session.as_ref().map(|s| s.id))
    }

    /// Sends one message to a node's agent; an error names why it cannot be sent.
    pub fn send(&self, node: &str, body: Body) -> Result<(), Status> {
        self.session(node)?
            .try_send(Ok(CoordinatorMessage { body: Some(body) }))
            .map_err(|e| {
                Status::unavailable(format!("node {node}: session cannot take orders: {e}"))
            })
    }

    /// A lease on `nodes` for experiment `id`, with the configured TTL.
    /// A lease under the coordinator's blast radius, or a game day's (`within`).
    pub fn grant(
        &self,
        id: &str,
        nodes: &[String],
        within: Option<&faultline_proto::limits::BlastRadius>,
    ) -> Result<Lease, Refusal> {
        let granted =
            self.leases
                .grant_within(id, nodes, self.config.lease_ttl, Instant::now(), within);
        match &granted {
            Ok(_) => self.metrics.lease_grants.inc(),
            Err(r) => self
                .metrics
                .lease_refusals
                .get_or_create(&crate::metrics::ReasonLabel {
                    reason: r.metric_reason().to_owned(),
                })
                .inc(),
        };
        granted
    }

    /// The game day open at `now`, if any.
    /// Asked at every start: one indexed query, then that game day alone.
    pub fn open_gameday(&self, now: SystemTime) -> Option<faultline_proto::v1::GameDay> {
        let id = self.store.open_gameday_id(now).ok()??;
        self.store.gameday(&id, now).ok()?
    }

    /// Ends what a game day still runs (its close); returns how many.
    pub fn end_gameday_experiments(&self, gameday: &str, reason: &str) -> usize {
        let ids: Vec<String> = self
            .running()
            .iter()
            .filter(|(_, r)| r.gameday == gameday)
            .map(|(i, _)| i.clone())
            .collect();
        self.end_experiments(&ids, reason);
        ids.len()
    }

    /// The limits a start at `now` is judged by — a game day's while one is open, else
    /// the coordinator's — with their source, and that game day.
    pub fn limits_in_force(
        &self,
        now: SystemTime,
    ) -> (ChaosLimits, String, Option<faultline_proto::v1::GameDay>) {
        match self.open_gameday(now) {
            Some(g) => {
                let (l, src) = self.gameday_limits(&g);
                (l, src, Some(g))
            }
            None => (
                self.config.limits.clone(),
                self.config.limits_source.clone(),
                None,
            ),
        }
    }

    /// The limits a game day runs under.
    fn gameday_limits(&self, g: &faultline_proto::v1::GameDay) -> (ChaosLimits, String) {
        let mut l = self.config.gameday_limits.clone();
        l.blast_radius.max_concurrent = g.max_concurrent;
        l.blast_radius.max_nodes = g.max_nodes;
        (
            l,
            format!(
                "game day {} ({}, max_concurrent {}, max_nodes {})",
                g.id, self.config.gameday_limits_source, g.max_concurrent, g.max_nodes
            ),
        )
    }

    /// Ends running experiments early without engaging the kill switch (a blackout
    /// window opened, a game day closed): each removes its effects and ends aborted.
    pub fn end_experiments(&self, ids: &[String], reason: &str) {
        for id in ids {
            if let Some(r) = self.running().get(id) {
                let _ = r.abort.send(Some(Halt::Abort(reason.to_owned())));
            }
        }
    }

    pub fn set_sample_rate(&self, nodes: &[String], hz: f64) {
        for n in nodes {
            let _ = self.send(n, Body::SampleRate(SetSampleRate { hz }));
        }
    }

    /// Every registered node, as spec resolution sees it.
    pub fn node_views(&self) -> Vec<crate::engine::plan::NodeView> {
        let mut v: Vec<_> = self
            .nodes()
            .iter()
            .map(|(name, e)| crate::engine::plan::NodeView {
                name: name.clone(),
                labels: e.info.labels.clone(),
                connected: e.session.is_some(),
                default_interface: e.info.default_interface.clone(),
                caps: e.info.capabilities.clone().unwrap_or_default(),
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    pub fn connected_nodes(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .nodes()
            .iter()
            .filter(|(_, e)| e.session.is_some())
            .map(|(n, _)| n.clone())
            .collect();
        v.sort();
        v
    }

    /// Removes effects on `nodes` (of `lease_id`, or all when empty) and waits until
    /// each agent confirmed, or `timeout`. Returns the nodes that did not confirm.
    pub async fn remove(
        self: &Arc<Self>,
        nodes: &[String],
        lease_id: &str,
        timeout: Duration,
    ) -> Vec<String> {
        let mut pending = Vec::new();
        let mut missing = Vec::new();
        for node in nodes {
            let request_id = format!("rm-{}-{node}", self.next_id());
            let waiter = self.expect(&request_id);
            let sent = self.send(
                node,
                Body::Remove(RemoveFault {
                    lease_id: lease_id.to_owned(),
                    order_id: String::new(),
                    request_id,
                }),
            );
            match sent {
                Ok(()) => {
                    info!(lease = %lease_id, %node, "fault removal ordered");
                    pending.push((node.clone(), waiter))
                }
                Err(e) => {
                    warn!("removal on {node} not sent: {}", e.message());
                    missing.push(node.clone());
                }
            }
        }
        let deadline = tokio::time::Instant::now() + timeout;
        for (node, mut waiter) in pending {
            loop {
                match tokio::time::timeout_at(deadline, waiter.rx.recv()).await {
                    Ok(Some(a)) if a.state == EffectState::Removed as i32 => {
                        info!(lease = %lease_id, %node, detail = %a.detail, "fault removal confirmed");
                        break;
                    }
                    Ok(Some(_)) => continue,
                    _ => {
                        warn!(lease = %lease_id, %node, "fault removal not confirmed in {timeout:?}");
                        missing.push(node);
                        break;
                    }
                }
            }
        }
        missing
    }

    /// Engages the kill switch at once, and records it so that a restart finds it
    /// engaged (written later if the store cannot write now: the switch is in force
    /// either way).
    pub fn engage_kill_switch(&self, why: &str) {
        self.leases.engage_kill_switch(why);
        self.store.engage_kill_switch(why);
    }

    /// Clears the kill switch: recorded with `audit` first, and only if that lands.
    pub fn clear_kill_switch(&self, audit: &crate::store::Audit) -> anyhow::Result<()> {
        let at = crate::store::ms(SystemTime::now());
        self.store.audited(audit, |w| w.set_kill_switch(None, at))?;
        self.leases.clear_kill_switch();
        Ok(())
    }

    /// The coordinator's stop (SIGTERM, SIGINT): from this moment no experiment starts
    /// (the lease table is closed); every running experiment is asked to end
    /// `interrupted`; the effects on every connected node are removed and confirmed
    /// (waited for at most `budget`); what did not record its end in that time is
    /// recorded `interrupted` in the store; then every agent's stream is ended with
    /// the reason, so agents reconnect to whichever coordinator serves next.
    pub async fn shut_down(self: &Arc<Self>, budget: Duration) -> ShutdownReport {
        let deadline = tokio::time::Instant::now() + budget;
        self.leases.close();
        let why = "the coordinator is shutting down";
        let (ids, mut done): (Vec<String>, Vec<_>) = self
            .running()
            .iter()
            .map(|(id, r)| {
                r.abort.send_replace(Some(Halt::Shutdown(why.to_owned())));
                (id.clone(), r.done.clone())
            })
            .unzip();
        let nodes = self.connected_nodes();
        let unconfirmed = self.remove(&nodes, "", budget).await;
        for d in &mut done {
            let _ = tokio::time::timeout_at(deadline, d.wait_for(|v| *v)).await;
        }
        // An experiment still in preflight when the budget ran out has applied
        // nothing; its record ends here.
        match self.store.interrupt_unfinished(
            "the coordinator stopped while this experiment ran; its effects were removed",
        ) {
            Ok(left) => {
                for (id, _) in left {
                    warn!(experiment = %id, "recorded interrupted at shutdown");
                }
            }
            Err(e) => warn!("store: recording interrupted experiments: {e:#}"),
        }
        // The reason goes on every stream before the readers let go of theirs (a
        // stream whose last sender is gone ends without one).
        let sessions: Vec<AgentTx> = self
            .nodes()
            .values_mut()
            .filter_map(|e| e.session.take().map(|s| s.tx))
            .collect();
        for tx in &sessions {
            let _ = tx.try_send(Err(Status::unavailable(why)));
        }
        self.closing.send_replace(true);
        ShutdownReport {
            interrupted: ids,
            unconfirmed,
            sessions: sessions.len(),
        }
    }

    /// The abort path of `POST /abort`, gRPC `Abort` and `faultline abort`: engages
    /// the kill switch, removes every effect of the experiment (or of every node when
    /// `experiment_id` is empty) and returns once the agents confirmed.
    pub async fn abort(
        self: &Arc<Self>,
        experiment_id: &str,
        reason: &str,
        caller: &str,
    ) -> Result<AbortOutcome, Status> {
        let started = Instant::now();
        let why = format!(
            "abort by {caller}{}",
            if reason.is_empty() {
                String::new()
            } else {
                format!(": {}", crate::view::printable(reason))
            }
        );
        self.engage_kill_switch(&why);
        let (targets, nodes, lease, mut done) = {
            let running = self.running();
            if experiment_id.is_empty() {
                let ids: Vec<String> = running.keys().cloned().collect();
                let done: Vec<_> = running.values().map(|r| r.done.clone()).collect();
                for r in running.values() {
                    r.abort.send_replace(Some(Halt::Abort(why.clone())));
                }
                (ids, self.connected_nodes(), String::new(), done)
            } else {
                let r = running.get(experiment_id).ok_or_else(|| {
                    Status::not_found(format!(
                        "experiment {experiment_id} is not running (the kill switch is engaged)"
                    ))
                })?;
                r.abort.send_replace(Some(Halt::Abort(why.clone())));
                (
                    vec![experiment_id.to_owned()],
                    r.nodes.clone(),
                    r.lease_id.clone(),
                    vec![r.done.clone()],
                )
            }
        };
        let unconfirmed = self.remove(&nodes, &lease, Duration::from_secs(5)).await;
        for d in &mut done {
            let _ = tokio::time::timeout(Duration::from_secs(2), d.wait_for(|v| *v)).await;
        }
        let took = started.elapsed();
        self.metrics.aborts.inc();
        self.metrics.abort_seconds.observe(took.as_secs_f64());
        if !unconfirmed.is_empty() {
            self.metrics.aborts_unconfirmed.inc();
        }
        info!(?targets, ?took, ?unconfirmed, "{why}");
        Ok(AbortOutcome {
            experiment_ids: targets,
            took,
            unconfirmed,
        })
    }
}

/// The health monitor's view of the fleet: node-side probes, nothing else.
impl crate::health::NodeProbes for Control {
    fn start_probe(
        &self,
        node: &str,
        probe_id: &str,
        spec: faultline_proto::v1::ProbeSpec,
    ) -> (crate::health::ProbeResultsRx, Result<(), String>) {
        let results = self.expect_probe(probe_id);
        let sent = self
            .send(
                node,
                Body::StartProbe(faultline_proto::v1::StartProbe {
                    probe_id: probe_id.to_owned(),
                    probe: Some(spec),
                }),
            )
            .map_err(|e| e.message().to_owned());
        (results.rx, sent)
    }

    fn stop_probe(&self, node: &str, probe_id: &str) {
        let _ = self.send(
            node,
            Body::StopProbe(faultline_proto::v1::StopProbe {
                probe_id: probe_id.to_owned(),
            }),
        );
        self.forget_probe(probe_id);
    }
}
