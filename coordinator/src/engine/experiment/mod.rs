//! One experiment from lease grant to its typed outcome, judged by the service's
//! steady state (and the node's). Each phase is a function that returns what the
//! next one needs, or ends the experiment with its outcome (`Step`, with `?`):
//!
//! 1. `preflight`: the agents are connected and their kernels can do the fault; the
//!    health sources start and every prerequisite is evaluated (`crate::engine::preflight`).
//!    Any failure refuses the experiment (rejected) with the whole list; nothing is
//!    applied.
//! 2. `baseline`: health signals and node samples for the baseline window, with the
//!    guards on: a breach here cancels the experiment before any fault.
//! 3. the fault — `order`, `applied`, `fault`, `remove`: the order goes out under the
//!    lease (with its agent-side guard); the guards are evaluated on every new data
//!    point. A breach, a dark source or a manual abort removes the effect at once
//!    (aborted). The agent's own guard may remove it too, and says so.
//! 4. `recovery`: after removal (a one-shot fault, cache invalidation: from its
//!    application) the steady state must return within tolerance of the baseline and
//!    hold (`recovery`), and the node's CPU and memory must return;
//! 5. `judge`: the classification (absorbed, self-healed, incident or not
//!    recovered), the signal table, the recovery time and the verdict.
//!
//! Every way out releases the lease and leaves a terminal phase and an `Outcome` in
//! the store (`run`).
pub mod hypothesis;
pub mod outcome;
pub mod recovery;
pub mod window;

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use faultline_proto::v1::{
    Ack, ApplyFault, Check, CheckStatus, Classification, EffectState, ExperimentEvent, GuardBreach,
    Incident, MetricSample, Outcome, Phase, Verdict, coordinator_message::Body,
};
use tokio::{
    sync::{broadcast, mpsc, watch},
    time::Instant,
};
use tonic::Status;
use tracing::info;

use self::{
    outcome::ts,
    recovery::{Tolerance, Tracker},
    window::{Signals, Values, Window},
};
use crate::{
    engine::faults,
    engine::guards::{Breach, Guards},
    engine::plan::Plan,
    fleet::control::{AckWaiter, Control, Halt},
    health::{Monitor, lock},
};

pub struct Experiment {
    pub id: String,
    pub lease_id: String,
    pub plan: Plan,
}

pub type Events = mpsc::Sender<Result<ExperimentEvent, Status>>;

/// CPU may sit this far (percentage points) above the baseline's maximum, memory
/// `MEMORY_BAND`, and the node still counts as recovered.
const CPU_BAND: f64 = 5.0;
const MEMORY_BAND: f64 = 2.0;
/// Event slots live data never takes, so a slow reader still gets every phase event.
const RESERVED_FOR_PHASES: usize = 32;
/// How long an agent has to acknowledge an order (memory stress allocates first).
const ACK_TIMEOUT: Duration = Duration::from_secs(30);

struct Run {
    c: Arc<Control>,
    exp: Experiment,
    events: Events,
    abort: watch::Receiver<Option<Halt>>,
    samples: broadcast::Receiver<(String, MetricSample)>,
    phase: Phase,
    monitor: Option<Monitor>,
    guards: Option<Guards>,
    tracker: Option<Tracker>,
    outcome: Outcome,
    /// Node CPU and memory bound for "back to the baseline", once known.
    node_band: Option<(f64, f64)>,
    node_returned: Option<Instant>,
}

/// Why observing stopped early.
enum Stop {
    Halted(Halt),
    LeaseLapsed,
    Breach(Breach),
    Ack(Ack),
}

/// What one observed phase collects.
#[derive(Default)]
struct Collect {
    node: Window,
    signals: Signals,
    /// (when, values) of every reading, for the "after" figures.
    readings: Vec<(Instant, Values)>,
}

impl Run {
    fn emit(&self, message: String) {
        self.send(ExperimentEvent {
            message,
            ..Default::default()
        });
    }

    /// Records (unless it carries only live data) and streams one event. Never waits
    /// for the caller: a slow reader must not hold up the fault's end or an abort.
    /// Live data is best effort and leaves the channel's last slots to phase events.
    fn send(&self, mut ev: ExperimentEvent) {
        let live = ev.sample.is_some() || ev.reading.is_some();
        if live && self.events.capacity() <= RESERVED_FOR_PHASES {
            return;
        }
        ev.experiment_id = self.exp.id.clone();
        ev.at = Some(SystemTime::now().into());
        ev.phase = self.phase as i32;
        if !live {
            self.c.store.record_event(&ev);
        }
        // A caller that went away does not stop the experiment.
        let _ = self.events.try_send(Ok(ev));
    }

    fn set_phase(&mut self, phase: Phase, message: String) {
        self.phase = phase;
        self.emit(message);
    }

    fn aborted(&self) -> Option<Halt> {
        self.abort.borrow().clone()
    }

    /// Ends the experiment in a phase: the way out of `Step`.
    fn end<T>(&mut self, verdict: Verdict, message: impl Into<String>) -> Step<T> {
        Err(Box::new(self.finish(verdict, message)))
    }

    /// Ends the experiment in a phase as a halt asks.
    fn end_halted<T>(&mut self, halt: &Halt, context: &str) -> Step<T> {
        Err(Box::new(self.halted(halt, context)))
    }

    /// Ends the experiment as a halt asks: `aborted` or `interrupted`, with the
    /// halt's reason after `context`.
    fn halted(&mut self, halt: &Halt, context: &str) -> Outcome {
        self.finish(halt.verdict(), format!("{context}{}", halt.reason()))
    }

    fn breach_check(&mut self) -> Option<Breach> {
        let (m, g) = (self.monitor.as_ref()?, self.guards.as_mut()?);
        let r = m.reading();
        self.c.metrics.guard_evaluations.inc();
        g.evaluate(m, &r, std::time::Instant::now())
    }

    /// Forwards the nodes' samples and the service's readings until `until`,
    /// collecting them; stops early (with the reason) on abort, a lapsed lease, a
    /// guard breach (when `guarded`), or an acknowledgement on `acks`.
    async fn observe(
        &mut self,
        until: Instant,
        into: &mut Collect,
        renew_self: bool,
        guarded: bool,
        mut acks: Option<&mut AckWaiter>,
    ) -> Option<Stop> {
        let mut lease_tick = tokio::time::interval(Duration::from_millis(200));
        let mut reading_tick = tokio::time::interval(Duration::from_secs(1));
        let mut changed = self.monitor.as_ref().map(|m| m.changed.clone());
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return None,
                _ = self.abort.changed() => {
                    if let Some(why) = self.aborted() { return Some(Stop::Halted(why)); }
                }
                a = async {
                    match acks.as_mut() {
                        Some(w) => w.rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    if let Some(a) = a { return Some(Stop::Ack(a)); }
                }
                _ = lease_tick.tick() => {
                    let now = std::time::Instant::now();
                    if renew_self {
                        self.c.leases.renew(&self.exp.lease_id, now);
                    } else if self.c.leases.get(&self.exp.lease_id).is_none_or(|l| l.expires <= now) {
                        return Some(Stop::LeaseLapsed);
                    }
                    // A source that went quiet produces no change to wake us.
                    if guarded && let Some(b) = self.breach_check() {
                        return Some(Stop::Breach(b));
                    }
                    if let (Some(t), Some(m)) = (self.tracker.as_mut(), self.monitor.as_ref()) {
                        t.step(m, now);
                    }
                }
                open = async {
                    match changed.as_mut() {
                        Some(c) => c.changed().await.is_ok(),
                        None => std::future::pending().await,
                    }
                } => {
                    if !open {
                        changed = None;
                    } else if guarded && let Some(b) = self.breach_check() {
                        return Some(Stop::Breach(b));
                    }
                }
                _ = reading_tick.tick() => {
                    if let Some(m) = self.monitor.as_ref().filter(|m| !m.plan.is_empty()) {
                        let r = m.reading();
                        let v = Values::of(&r);
                        into.signals.add(&v, r.source());
                        into.readings.push((Instant::now(), v));
                        if let Some(t) = self.tracker.as_mut() {
                            t.observe_window(&v);
                        }
                        let cpu = into.node.cpu.last().copied();
                        let mem = into.node.memory.last().copied();
                        // A reading that cannot be stored is lost; the store logs a
                        // failing disk once, not once a second.
                        let _ = self.c.store.record_reading(&self.exp.id, self.phase, &r, cpu, mem);
                        self.send(ExperimentEvent { reading: Some(r.to_proto()), ..Default::default() });
                    }
                }
                s = self.samples.recv() => match s {
                    Ok((node, sample)) if self.exp.plan.nodes.contains(&node) => {
                        into.node.add(&sample);
                        if let Some((cpu, mem)) = self.node_band {
                            let quiet = sample.ingress.unwrap_or_default().matched == 0
                                && sample.egress.unwrap_or_default().matched == 0;
                            let back = quiet && sample.cpu_busy_percent <= cpu && sample.memory_used_percent <= mem;
                            match (back, self.node_returned) {
                                (true, None) => self.node_returned = Some(Instant::now()),
                                (false, Some(_)) => self.node_returned = None,
                                _ => {}
                            }
                        }
                        self.send(ExperimentEvent { node, sample: Some(sample), ..Default::default() });
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        }
    }

    fn finish(&mut self, verdict: Verdict, message: impl Into<String>) -> Outcome {
        let mut o = std::mem::take(&mut self.outcome);
        o.verdict = verdict as i32;
        o.message = message.into();
        let plan = &self.exp.plan;
        if let Some(bounds) = &plan.hypothesis {
            let sources = hypothesis::Sources {
                incidents: plan.health.alertmanager.is_some(),
            };
            o.hypothesis = Some(hypothesis::judge(
                &plan.expected_impact,
                bounds,
                &o,
                &sources,
            ));
        }
        o
    }

    /// A guard breach ends the experiment: order the removal at once, and time it.
    async fn abort_on(&mut self, b: Breach, phase: Phase) -> Outcome {
        let ordered = SystemTime::now();
        let applied = phase == Phase::Fault;
        let unconfirmed = if applied {
            self.c
                .remove(
                    &self.exp.plan.nodes,
                    &self.exp.lease_id,
                    Duration::from_secs(5),
                )
                .await
        } else {
            Vec::new()
        };
        let confirmed = SystemTime::now();
        info!(experiment = %self.exp.id, guard = %b.guard, observed = b.observed, "guard breached: fault removed");
        self.outcome.breach = Some(GuardBreach {
            guard: b.guard.clone(),
            source: b.source.clone(),
            observed: b.observed,
            threshold: b.threshold,
            unit: b.unit.to_owned(),
            visible_at: ts(b.visible_at),
            abort_ordered_at: ts(ordered),
            removal_confirmed_at: unconfirmed.is_empty().then(|| confirmed.into()),
            agent_side: false,
            node: self.exp.plan.nodes.join(","),
            phase: phase as i32,
            detail: b.detail.clone(),
        });
        if applied {
            self.outcome.fault_removed_at = ts(confirmed);
        }
        let msg = if !unconfirmed.is_empty() {
            format!(
                "removal not confirmed by {} (their dead-man switch and the in-kernel deadline end it)",
                unconfirmed.join(", ")
            )
        } else if applied {
            "every effect removed".to_owned()
        } else {
            "cancelled in the baseline: nothing was applied".to_owned()
        };
        self.finish(Verdict::Aborted, msg)
    }
}

/// Runs the experiment to its end and records the outcome. Never fails: every way
/// out releases the lease and leaves a terminal phase in the store.
pub async fn run(
    c: Arc<Control>,
    exp: Experiment,
    events: Events,
    abort: watch::Receiver<Option<Halt>>,
    done: watch::Sender<bool>,
) {
    let samples = c.samples.subscribe();
    let outcome = Outcome {
        scenario: exp.plan.scenario.as_str().to_owned(),
        expected_impact: exp.plan.expected_impact.clone(),
        waivers: exp
            .plan
            .waivers
            .iter()
            .map(|s| s.as_str().to_owned())
            .collect(),
        ..Default::default()
    };
    let mut run = Run {
        c: c.clone(),
        exp,
        events,
        abort,
        samples,
        phase: Phase::Preflight,
        monitor: None,
        guards: None,
        tracker: None,
        outcome,
        node_band: None,
        node_returned: None,
    };
    let mut outcome = steps(&mut run).await;
    run.monitor = None; // stops every source (and node-side probes)
    outcome.message = outcome::message(&outcome);
    let verdict = Verdict::try_from(outcome.verdict).unwrap_or(Verdict::Failed);
    let phase = outcome::phase(verdict);
    c.set_sample_rate(&run.exp.plan.nodes, 1.0);
    c.leases.release(&run.exp.lease_id);
    c.store.release_lease(&run.exp.lease_id, &outcome.message);
    c.store.finish(&run.exp.id, phase, &outcome);
    c.metrics
        .experiment_ended(run.exp.plan.scenario.as_str(), &outcome);
    run.phase = phase;
    info!(experiment = %run.exp.id, "{}", outcome.message);
    run.send(ExperimentEvent {
        message: outcome.message.clone(),
        outcome: Some(outcome),
        ..Default::default()
    });
    c.running().remove(&run.exp.id);
    c.lease_freed.notify_waiters();
    let _ = done.send(true);
}

/// A phase's result: what the next phase needs, or the experiment's end.
type Step<T> = Result<T, Box<Outcome>>;

/// The phases in order; each ends the experiment early with its outcome.
async fn steps(r: &mut Run) -> Outcome {
    match phases(r).await {
        Ok(o) => o,
        Err(o) => *o,
    }
}

async fn phases(r: &mut Run) -> Step<Outcome> {
    r.emit(format!(
        "lease {} on {} (ttl {:?})",
        r.exp.lease_id,
        r.exp.plan.nodes.join(", "),
        r.c.config.lease_ttl
    ));
    preflight(r).await?;
    let base = baseline(r).await?;
    let mut acks = order(r).await?;
    let applied_at = applied(r, &mut acks, &base).await?;
    let during = fault(r, &mut acks, applied_at).await?;
    let removed_at = remove(r, &during).await?;
    let after = recovery(r, applied_at, removed_at).await?;
    Ok(judge(r, &base.collect, &during, after))
}

/// What the baseline leaves to the later phases.
struct Baseline {
    collect: Collect,
    tolerance: Tolerance,
}

/// Phase 1, preflight: the agents can carry the fault; the health sources start and every
/// prerequisite is evaluated over a health window. A failure refuses the experiment
/// with the whole list; nothing is applied.
async fn preflight(r: &mut Run) -> Step<()> {
    if let Err(why) = node_preflight(&r.c, &r.exp.plan) {
        r.outcome.preflight.push(Check {
            name: "agent".into(),
            status: CheckStatus::Fail as i32,
            value: "-".into(),
            threshold: "connected, kernel can do the fault".into(),
            detail: why.clone(),
        });
        return r.end(Verdict::Rejected, format!("preflight: {why}"));
    }
    // Until the baseline's observer takes over, the coordinator keeps its own lease
    // alive: preflight lasts a health window.
    let renewer = {
        let (c, lease) = (r.c.clone(), r.exp.lease_id.clone());
        tokio::spawn(async move {
            loop {
                c.leases.renew(&lease, std::time::Instant::now());
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let _renewing = crate::health::AbortOnDrop(renewer);
    let nodes = r.exp.plan.nodes.clone();
    let mut monitor = Monitor::start(r.exp.plan.health.clone(), r.c.clone(), &r.exp.id, &nodes);
    let baseline_p99 =
        r.c.store
            .recorded_baseline_p99(&probe_names(&r.exp.plan))
            .unwrap_or(None);
    let checks = crate::engine::preflight::run(&r.exp.plan, &mut monitor, &r.c, baseline_p99).await;
    let mut guards = Guards::new(r.exp.plan.abort.clone(), monitor.plan.dark_grace);
    guards.note_preexisting(&monitor);
    r.outcome.preflight = checks;
    r.outcome.node_signals_only = r.exp.plan.health.is_empty();
    let lines: Vec<String> = r.outcome.preflight.iter().map(check_line).collect();
    for line in lines {
        r.emit(line);
    }
    let failed = outcome::failed_checks(&r.outcome.preflight);
    if !failed.is_empty() {
        return r.end(Verdict::Rejected, format!("preflight failed: {failed}"));
    }
    if r.outcome.node_signals_only && r.exp.plan.require_health {
        return r.end(
            Verdict::Rejected,
            "require_health: no health signal is configured (health.http, health.prometheus or \
             health.alertmanager), and the coordinator's config requires one",
        );
    }
    r.monitor = Some(monitor);
    r.guards = Some(guards);
    r.c.set_sample_rate(&nodes, 10.0);
    Ok(())
}

/// Phase 2, the baseline: health signals and node samples over the baseline window, guards on:
/// a breach here cancels the experiment before any fault.
async fn baseline(r: &mut Run) -> Step<Baseline> {
    r.set_phase(
        Phase::Baseline,
        format!("measuring the baseline for {:?}", r.exp.plan.baseline),
    );
    let mut collect = Collect::default();
    let from = std::time::Instant::now();
    let until = Instant::now() + r.exp.plan.baseline;
    match r.observe(until, &mut collect, true, true, None).await {
        Some(Stop::Halted(why)) => return r.end_halted(&why, "before the fault: "),
        Some(Stop::Breach(b)) => return Err(Box::new(r.abort_on(b, Phase::Baseline).await)),
        Some(Stop::LeaseLapsed | Stop::Ack(_)) | None => {}
    }
    let tolerance = Tolerance::from_baseline(&collect.signals, &r.exp.plan.recovery);
    // The probes' own p99 over the baseline: later experiments' latency_within_baseline.
    if let Some(m) = r.monitor.as_ref() {
        let probes = lock(&m.shared);
        if let Some(st) =
            crate::health::http::stats(&probes.probes, from, std::time::Instant::now())
            && let Err(e) = r.c.store.set_baseline_p99(&r.exp.id, st.p99_ms)
        {
            tracing::error!("store: {e:#}");
        }
    }
    r.node_band = Some((
        Window::max(&collect.node.cpu) + CPU_BAND,
        Window::max(&collect.node.memory) + MEMORY_BAND,
    ));
    if !collect.signals.is_empty() {
        r.emit(format!(
            "baseline steady state; tolerance: {}",
            tolerance.describe()
        ));
    }
    Ok(Baseline { collect, tolerance })
}

/// Phase 3, the fault: the order goes out under the lease, with its agent-side guard.
async fn order(r: &mut Run) -> Step<AckWaiter> {
    r.set_phase(Phase::Fault, "ordering the fault".into());
    let order_id = format!("{}-fault", r.exp.id);
    let acks = r.c.expect(&order_id);
    if let Some(why) = r.aborted() {
        return r.end_halted(&why, "before the fault: ");
    }
    for node in &r.exp.plan.nodes {
        let apply = Body::Apply(ApplyFault {
            lease_id: r.exp.lease_id.clone(),
            order_id: order_id.clone(),
            spec: Some(r.exp.plan.fault.clone()),
            lease_ttl: r.c.config.lease_ttl.try_into().ok(),
            guard: r.exp.plan.agent_guard.clone(),
        });
        if let Err(e) = r.c.send(node, apply) {
            return r.end(Verdict::Failed, e.message().to_owned());
        }
        info!(experiment = %r.exp.id, lease = %r.exp.lease_id, %node, order = %order_id,
              fault = r.exp.plan.scenario.kind_name(), "fault ordered");
    }
    Ok(acks)
}

/// Phase 3, the fault: until the agents hold the effect the coordinator keeps the lease alive; an
/// agent whose session ends meanwhile will never acknowledge the order (a new session
/// of it knows nothing of it), which ends the wait at once. Returns when it was
/// applied, and starts the recovery tracker there.
async fn applied(r: &mut Run, acks: &mut AckWaiter, base: &Baseline) -> Step<Instant> {
    let nodes = r.exp.plan.nodes.clone();
    let sessions: Vec<Option<u64>> = nodes.iter().map(|n| r.c.session_id(n)).collect();
    let ack_deadline = Instant::now() + ACK_TIMEOUT;
    let mut session_check = tokio::time::interval(Duration::from_millis(100));
    let ack = loop {
        r.c.leases.renew(&r.exp.lease_id, std::time::Instant::now());
        tokio::select! {
            a = tokio::time::timeout_at(ack_deadline, acks.rx.recv()) => match a {
                Ok(Some(a)) => break a,
                _ => {
                    r.c.remove(&nodes, &r.exp.lease_id, Duration::from_secs(5)).await;
                    return r.end(Verdict::Failed, format!("no acknowledgement within {ACK_TIMEOUT:?}"));
                }
            },
            _ = session_check.tick() => {
                let gone = nodes
                    .iter()
                    .zip(&sessions)
                    .find(|(n, id)| r.c.session_id(n) != **id)
                    .map(|(n, _)| n.clone());
                if let Some(node) = gone {
                    r.c.remove(&nodes, &r.exp.lease_id, Duration::from_secs(1)).await;
                    return r.end(
                        Verdict::Failed,
                        format!(
                            "the agent on {node} disconnected before acknowledging the order \
                             (its dead-man switch and the in-kernel deadline end anything it applied)"
                        ),
                    );
                }
            }
            _ = r.abort.changed() => {
                if let Some(why) = r.aborted() {
                    // The abort's own removal may have reached the agent before this
                    // order did: remove again, after it, before reporting the end.
                    r.c.remove(&nodes, &r.exp.lease_id, Duration::from_secs(5)).await;
                    return r.end_halted(&why, "");
                }
            }
        }
    };
    let on = nodes.join(", ");
    match EffectState::try_from(ack.state) {
        Ok(EffectState::Applied) => {}
        Ok(EffectState::Refused) => {
            return r.end(
                Verdict::Rejected,
                format!("refused by the agent on {on}: {}", ack.detail),
            );
        }
        _ => {
            return r.end(Verdict::Failed, format!("applying on {on}: {}", ack.detail));
        }
    }
    let applied_at = Instant::now();
    r.outcome.fault_applied_at = ts(SystemTime::now());
    info!(experiment = %r.exp.id, lease = %r.exp.lease_id, nodes = %on,
          detail = %ack.detail, "fault applied");
    r.emit(format!("applied on {on}: {}", ack.detail));
    r.tracker = Some(Tracker::new(
        base.tolerance,
        r.exp.plan.recovery.hold,
        applied_at.into_std(),
    ));
    Ok(applied_at)
}

/// Phase 3, the fault: its duration, guarded on every new data point: a breach, a dark
/// source or an abort removes the effect at once; the agent's own guard, its
/// dead-man switch or a failure may end it first, and say so.
async fn fault(r: &mut Run, acks: &mut AckWaiter, applied_at: Instant) -> Step<Collect> {
    let nodes = r.exp.plan.nodes.clone();
    let mut during = Collect::default();
    let until = applied_at + r.exp.plan.duration();
    let stop = match r.observe(until, &mut during, false, true, Some(acks)).await {
        // The lease lapsed: the agent's own guard may be why it stopped renewing,
        // and its acknowledgement may be right behind.
        Some(Stop::LeaseLapsed) => {
            match tokio::time::timeout(Duration::from_secs(1), acks.rx.recv()).await {
                Ok(Some(a)) if a.state == EffectState::GuardBreached as i32 => Some(Stop::Ack(a)),
                _ => Some(Stop::LeaseLapsed),
            }
        }
        s => s,
    };
    match stop {
        Some(Stop::Halted(why)) => {
            // A person's abort has removed the effects already; a blackout window, a
            // game day's close or a shutdown only asked this experiment to end.
            // Removing again is idempotent, and the end is reported only once the
            // agent confirmed it.
            r.c.remove(&nodes, &r.exp.lease_id, Duration::from_secs(5))
                .await;
            r.outcome.fault_removed_at = ts(SystemTime::now());
            let removed = format!("{}; every effect removed", why.reason());
            r.end(why.verdict(), removed)
        }
        Some(Stop::Breach(b)) => Err(Box::new(r.abort_on(b, Phase::Fault).await)),
        Some(Stop::LeaseLapsed) => r.end(Verdict::Failed, lapsed(r)),
        Some(Stop::Ack(a)) => ended_on_the_agent(r, a).map(|()| during),
        None => Ok(during),
    }
}

/// The effect ended on the agent before the coordinator's timer: why decides the
/// outcome. The agent's dead-man switch says Expired: heartbeats from before it fired
/// may still renew the lease here (a coordinator that was frozen reads them late), so
/// the agent's word, not the lease table, tells that the lease lapsed.
fn ended_on_the_agent(r: &mut Run, a: Ack) -> Step<()> {
    let nodes = r.exp.plan.nodes.clone();
    match EffectState::try_from(a.state) {
        Ok(EffectState::Expired) => {
            for n in &nodes {
                r.c.metrics
                    .deadman_firings
                    .get_or_create(&crate::metrics::NodeLabel { node: n.clone() })
                    .inc();
            }
            r.end(Verdict::Failed, lapsed(r))
        }
        Ok(EffectState::Failed) => r.end(
            Verdict::Failed,
            format!("the effect failed on {}: {}", nodes.join(", "), a.detail),
        ),
        Ok(EffectState::GuardBreached) => {
            if let Some(g) = &a.guard {
                r.c.confirm_report(&nodes, &g.report_id);
            }
            Err(Box::new(agent_breach(r, a)))
        }
        _ => Ok(()),
    }
}

/// Phase 3, the fault: its removal, confirmed by every agent; the kernel's summary of the fault.
async fn remove(r: &mut Run, during: &Collect) -> Step<Instant> {
    let unconfirmed =
        r.c.remove(&r.exp.plan.nodes, &r.exp.lease_id, Duration::from_secs(10))
            .await;
    if !unconfirmed.is_empty() {
        return r.end(
            Verdict::Failed,
            format!("removal not confirmed by {}", unconfirmed.join(", ")),
        );
    }
    let removed_at = Instant::now();
    r.outcome.fault_removed_at = ts(SystemTime::now());
    if let Some(fault) = r.exp.plan.fault.fault.as_ref() {
        r.outcome.kernel_summary = faults::kind(fault).kernel_summary(&during.node);
    }
    Ok(removed_at)
}

/// What the recovery phase saw.
struct After {
    collect: Collect,
    /// Since when the steady state has held (with health signals), and since when the
    /// node is back.
    service_since: Option<std::time::Instant>,
    node_back: Option<Instant>,
    /// What recovery time is measured from: the removal, or the application of a
    /// one-shot fault.
    reference: Instant,
    removed_at: Instant,
}

/// Phase 4, recovery: after removal (a one-shot fault: from its application) the steady
/// state must return within tolerance of the baseline and hold, and the node's CPU
/// and memory must return, within the recovery timeout.
async fn recovery(r: &mut Run, applied_at: Instant, removed_at: Instant) -> Step<After> {
    let timeout = r.exp.plan.recovery.timeout;
    r.set_phase(
        Phase::Recovery,
        format!("fault removed; waiting up to {timeout:?} for the steady state"),
    );
    let one_shot = r
        .exp
        .plan
        .fault
        .fault
        .as_ref()
        .is_some_and(|f| faultline_proto::spec::Scenario::of(f).one_shot());
    let reference = if one_shot { applied_at } else { removed_at };
    let deadline = removed_at + timeout;
    let mut collect = Collect::default();
    let health = !r.exp.plan.health.is_empty();
    let mut service_since = None;
    while Instant::now() < deadline {
        let slice = (Instant::now() + Duration::from_millis(250)).min(deadline);
        if let Some(Stop::Halted(why)) = r.observe(slice, &mut collect, true, false, None).await {
            return r.end_halted(&why, "during recovery: ");
        }
        if let (Some(t), Some(m)) = (r.tracker.as_mut(), r.monitor.as_ref()) {
            t.step(m, std::time::Instant::now());
        }
        service_since = if health {
            r.tracker.as_ref().and_then(Tracker::held_since)
        } else {
            None
        };
        let service_back = !health || service_since.is_some();
        if service_back && r.node_returned.is_some() && !open_incidents(r) {
            break;
        }
    }
    Ok(After {
        collect,
        service_since,
        node_back: r.node_returned,
        reference,
        removed_at,
    })
}

/// Phase 5, the judgement: the classification, the signal table, the recovery time and the verdict.
fn judge(r: &mut Run, baseline: &Collect, during: &Collect, after: After) -> Outcome {
    let health = !r.exp.plan.health.is_empty();
    let recovered = (!health || after.service_since.is_some()) && after.node_back.is_some();
    let back_at = if health {
        after.service_since.map(Instant::from_std)
    } else {
        after.node_back
    };
    let base_ref = if health {
        after.reference
    } else {
        after.removed_at
    };
    let recovery_time = back_at.map(|b| b.saturating_duration_since(base_ref));
    let after_from = back_at.unwrap_or(after.removed_at);
    let mut after_signals = Signals::default();
    for (_, v) in after
        .collect
        .readings
        .iter()
        .filter(|(t, _)| *t >= after_from)
    {
        after_signals.add(v, after.collect.signals.source);
    }
    let score_source = if r
        .exp
        .plan
        .health
        .prometheus
        .as_ref()
        .is_some_and(|p| p.queries.health_score.is_some())
    {
        "prometheus"
    } else {
        "computed"
    };
    r.outcome.signals = window::summaries(
        &baseline.signals,
        &during.signals,
        &after_signals,
        score_source,
        [&baseline.node, &during.node, &after.collect.node],
    );
    r.outcome.incidents = incidents(r);
    let left = r.tracker.as_ref().is_some_and(|t| t.left);
    let node_left = Window::max(&during.node.cpu) > r.node_band.map_or(f64::MAX, |b| b.0);
    r.outcome.classification = if !recovered {
        Classification::NotRecovered
    } else if !r.outcome.incidents.is_empty() {
        Classification::Incident
    } else if (health && left) || (!health && node_left) {
        Classification::SelfHealed
    } else {
        Classification::Absorbed
    } as i32;
    if let Some(t) = recovery_time {
        r.outcome.recovery_time = t.try_into().ok();
        r.outcome.recovered_at =
            ts(SystemTime::now() - back_at.map_or(Duration::ZERO, |b| b.elapsed()));
    }
    if recovered {
        return r.finish(Verdict::Passed, String::new());
    }
    let mut missing = Vec::new();
    if health && after.service_since.is_none() {
        let tol = r
            .tracker
            .as_ref()
            .map(|t| t.tolerance.describe())
            .unwrap_or_default();
        missing.push(format!(
            "the steady state ({tol}) did not hold for {:?}",
            r.exp.plan.recovery.hold
        ));
    }
    if after.node_back.is_none() {
        let (cpu, mem) = r.node_band.unwrap_or_default();
        missing.push(format!(
            "the node (cpu <= {cpu:.1}%, mem <= {mem:.1}%, no fault traffic) did not return"
        ));
    }
    let timeout = r.exp.plan.recovery.timeout;
    r.finish(
        Verdict::NotRecovered,
        format!("within {timeout:?}: {}", missing.join("; ")),
    )
}

/// The lease lapsed: the agent stopped renewing it (its dead-man switch removes, or
/// removed, the effect).
fn lapsed(r: &Run) -> String {
    format!(
        "lease {} lapsed: {} stopped renewing it; the agent's dead-man switch removes the effect",
        r.exp.lease_id,
        r.exp.plan.nodes.join(", ")
    )
}

/// The agent's own guard removed the effect.
fn agent_breach(r: &mut Run, a: Ack) -> Outcome {
    let g = a.guard.unwrap_or_default();
    r.outcome.breach = Some(GuardBreach {
        guard: g.guard.clone(),
        source: format!("agent:{}", r.exp.plan.nodes.join(",")),
        observed: g.observed,
        threshold: g.threshold,
        unit: g.unit.clone(),
        visible_at: g.visible_at,
        // The agent ordered the removal itself, the moment it saw the breach.
        abort_ordered_at: g.visible_at,
        removal_confirmed_at: g.removal_confirmed_at,
        agent_side: true,
        node: r.exp.plan.nodes.join(","),
        phase: Phase::Fault as i32,
        detail: a.detail.clone(),
    });
    r.outcome.fault_removed_at = g.removal_confirmed_at;
    r.finish(Verdict::Aborted, "the agent's own guard removed the effect")
}

/// One preflight check as its event says it.
fn check_line(c: &Check) -> String {
    format!(
        "preflight {} {}: {} (threshold {}){}",
        status_word(c.status),
        c.name,
        c.value,
        c.threshold,
        if c.detail.is_empty() {
            String::new()
        } else {
            format!(" — {}", c.detail)
        }
    )
}

fn status_word(s: i32) -> &'static str {
    match CheckStatus::try_from(s) {
        Ok(CheckStatus::Pass) => "PASS",
        Ok(CheckStatus::Fail) => "FAIL",
        Ok(CheckStatus::Skipped) => "SKIP",
        Ok(CheckStatus::Waived) => "WAIVED",
        _ => "?",
    }
}

fn probe_names(plan: &Plan) -> Vec<String> {
    plan.health.probes.iter().map(|p| p.name.clone()).collect()
}

/// Alerts of incident severity that fired after the experiment began.
fn incidents(r: &Run) -> Vec<Incident> {
    let Some(m) = r.monitor.as_ref() else {
        return Vec::new();
    };
    let sev = m
        .plan
        .alertmanager
        .as_ref()
        .map(|a| a.incident_severities.clone())
        .unwrap_or_default();
    let s = lock(&m.shared);
    let Some(am) = s.alertmanager.as_ref() else {
        return Vec::new();
    };
    let applied = r
        .outcome
        .fault_applied_at
        .and_then(|t| SystemTime::try_from(t).ok())
        .unwrap_or(m.started_at);
    let mut out: Vec<Incident> = am
        .history
        .values()
        .filter(|seen| seen.alert.severity.is_some_and(|x| sev.contains(&x)))
        .filter(|seen| seen.first_seen >= applied && seen.alert.starts_at >= m.started_at)
        .map(|seen| Incident {
            alert: seen.alert.name.clone(),
            severity: seen.alert.severity.map_or("?", |s| s.as_str()).to_owned(),
            started: ts(seen.alert.starts_at),
            resolved: seen.resolved.map(Into::into),
            time_to_resolve: seen
                .resolved
                .and_then(|r| r.duration_since(seen.alert.starts_at).ok())
                .and_then(|d| d.try_into().ok()),
        })
        .collect();
    out.sort_by(|a, b| a.alert.cmp(&b.alert));
    out
}

fn open_incidents(r: &Run) -> bool {
    incidents(r).iter().any(|i| i.resolved.is_none())
}

/// The targets can carry this fault: agent connected, and the kernel features it needs.
fn node_preflight(c: &Control, plan: &Plan) -> Result<(), String> {
    let fault = plan.fault.fault.as_ref().ok_or("no fault")?;
    for n in &plan.nodes {
        c.session(n).map_err(|s| s.message().to_owned())?;
        let caps = c
            .nodes()
            .get(n)
            .and_then(|e| e.info.capabilities.clone())
            .unwrap_or_default();
        faults::kind(fault).preflight(n, &caps)?;
    }
    Ok(())
}
