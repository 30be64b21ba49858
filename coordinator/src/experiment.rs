//! One experiment from lease grant to its end: preflight, baseline, fault, recovery.
//!
//! - Preflight: the node's agent is connected and its kernel can do the fault.
//! - Baseline: samples at 10 Hz for the baseline window.
//! - Fault: the order goes out under the lease; the agent acknowledges what it applied.
//!   The fault ends at its duration, on abort, or when the lease lapses (the agent
//!   stopped renewing it, and its dead-man switch removes the effect on its own).
//! - Recovery: after the agent confirmed removal, the node must come back to its
//!   baseline (CPU and memory within a band above the baseline's maximum, no fault
//!   counters moving) within the recovery window; the time it took is the result.
//!
//! Results start with a keyword the CLI maps to its exit codes: `completed`,
//! `refused`, `aborted`, `recovery failed`, `failed`.
use std::{collections::HashMap, sync::Arc, time::Duration};

use faultline_proto::v1::{
    ApplyFault, EffectState, ExperimentEvent, FaultSpec, MetricSample, Phase,
    coordinator_message::Body, fault_spec::Fault,
};
use tokio::{
    sync::{broadcast, mpsc, watch},
    time::Instant,
};
use tonic::Status;
use tracing::info;

use crate::control::Control;

pub struct Experiment {
    pub id: String,
    pub nodes: Vec<String>,
    pub lease_id: String,
    pub spec: FaultSpec,
    pub baseline: Duration,
    pub recovery: Duration,
}

pub type Events = mpsc::Sender<Result<ExperimentEvent, Status>>;

/// CPU may sit this far (percentage points) above the baseline's maximum, memory
/// `MEMORY_BAND`, and the node still counts as recovered.
const CPU_BAND: f64 = 5.0;
const MEMORY_BAND: f64 = 2.0;
/// Event slots samples never take, so a slow reader still gets every phase event
/// (an experiment emits fewer than this).
const RESERVED_FOR_PHASES: usize = 32;
/// How long an agent has to acknowledge an order (memory stress allocates first).
const ACK_TIMEOUT: Duration = Duration::from_secs(30);

struct Run {
    c: Arc<Control>,
    exp: Experiment,
    events: Events,
    abort: watch::Receiver<Option<String>>,
    samples: broadcast::Receiver<(String, MetricSample)>,
    phase: Phase,
}

#[derive(Default)]
struct Window {
    cpu: Vec<f64>,
    memory: Vec<f64>,
    dropped: u64,
    matched: u64,
    delayed: u64,
    retransmits: (Option<u64>, u64),
    /// The fault's own readings: the latest and the largest of each.
    fault_last: HashMap<String, f64>,
    fault_max: HashMap<String, f64>,
}

impl Window {
    fn add(&mut self, s: &MetricSample) {
        self.cpu.push(s.cpu_busy_percent);
        self.memory.push(s.memory_used_percent);
        let (i, e) = (s.ingress.unwrap_or_default(), s.egress.unwrap_or_default());
        self.dropped = self.dropped.max(i.dropped + e.dropped);
        self.matched = self.matched.max(i.matched + e.matched);
        self.delayed = self.delayed.max(i.delayed + e.delayed);
        self.retransmits.0.get_or_insert(s.tcp_retransmits);
        self.retransmits.1 = s.tcp_retransmits;
        for (k, &v) in &s.fault {
            self.fault_last.insert(k.clone(), v);
            let max = self.fault_max.entry(k.clone()).or_insert(v);
            *max = max.max(v);
        }
    }
    fn mean(v: &[f64]) -> f64 {
        if v.is_empty() {
            0.0
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    }
    fn max(v: &[f64]) -> f64 {
        v.iter().copied().fold(0.0, f64::max)
    }
    fn describe(&self) -> String {
        format!(
            "cpu {:.1}% mem {:.1}%",
            Self::mean(&self.cpu),
            Self::mean(&self.memory)
        )
    }
}

/// How an experiment ended: its terminal phase, the result, the recovery time.
struct Outcome(Phase, String, Option<Duration>);

impl Run {
    fn emit(&self, message: String) {
        self.emit_full(message, String::new(), None);
    }

    /// Records (unless it is a sample) and streams one event. Never waits for the
    /// caller: a slow reader must not hold up the fault's end or an abort. Samples
    /// are best effort and leave the channel's last slots to phase events.
    fn emit_full(&self, message: String, node: String, sample: Option<MetricSample>) {
        if sample.is_some() && self.events.capacity() <= RESERVED_FOR_PHASES {
            return;
        }
        let ev = ExperimentEvent {
            experiment_id: self.exp.id.clone(),
            at: Some(std::time::SystemTime::now().into()),
            phase: self.phase as i32,
            message,
            node,
            sample,
        };
        if ev.sample.is_none()
            && let Err(e) = self.c.store.record_event(&ev)
        {
            tracing::error!("store: {e:#}");
        }
        // A caller that went away does not stop the experiment.
        let _ = self.events.try_send(Ok(ev));
    }

    fn set_phase(&mut self, phase: Phase, message: String) {
        self.phase = phase;
        self.emit(message);
    }

    fn aborted(&self) -> Option<String> {
        self.abort.borrow().clone()
    }

    /// Forwards samples of the experiment's nodes until `until`, into `window`;
    /// stops early (with the reason) on abort, on a lapsed lease, or when
    /// `stop_when` holds for a sample.
    async fn observe(
        &mut self,
        until: Instant,
        window: &mut Window,
        renew_self: bool,
        mut stop_when: impl FnMut(&MetricSample) -> bool,
    ) -> Option<Stop> {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return None,
                _ = self.abort.changed() => {
                    if let Some(why) = self.aborted() { return Some(Stop::Aborted(why)); }
                }
                _ = tick.tick() => {
                    let now = std::time::Instant::now();
                    if renew_self {
                        self.c.leases.renew(&self.exp.lease_id, now);
                    } else if self.c.leases.get(&self.exp.lease_id).is_none_or(|l| l.expires <= now) {
                        return Some(Stop::LeaseLapsed);
                    }
                }
                s = self.samples.recv() => match s {
                    Ok((node, sample)) if self.exp.nodes.contains(&node) => {
                        window.add(&sample);
                        let stop = stop_when(&sample);
                        self.emit_full(String::new(), node, Some(sample));
                        if stop { return Some(Stop::Condition); }
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        }
    }
}

enum Stop {
    Aborted(String),
    LeaseLapsed,
    Condition,
}

/// Runs the experiment to its end and records the result. Never fails: every way
/// out releases the lease and leaves a terminal phase in the store.
pub async fn run(
    c: Arc<Control>,
    exp: Experiment,
    events: Events,
    abort: watch::Receiver<Option<String>>,
    done: watch::Sender<bool>,
) {
    let samples = c.samples.subscribe();
    let mut run = Run {
        c: c.clone(),
        exp,
        events,
        abort,
        samples,
        phase: Phase::Preflight,
    };
    let Outcome(phase, result, recovery) = steps(&mut run).await;
    c.set_sample_rate(&run.exp.nodes, 1.0);
    c.leases.release(&run.exp.lease_id);
    let _ = c.store.release_lease(&run.exp.lease_id, &result);
    if let Err(e) = c.store.finish(&run.exp.id, phase, &result, recovery) {
        tracing::error!("store: {e:#}");
    }
    run.phase = phase;
    info!(experiment = %run.exp.id, "{result}");
    run.emit(result);
    c.running().remove(&run.exp.id);
    c.lease_freed.notify_waiters();
    let _ = done.send(true);
}

async fn steps(r: &mut Run) -> Outcome {
    let ttl = r.c.config.lease_ttl;
    r.emit(format!(
        "lease {} on {} (ttl {ttl:?})",
        r.exp.lease_id,
        r.exp.nodes.join(", ")
    ));
    if let Err(why) = preflight(&r.c, &r.exp) {
        return Outcome(Phase::Failed, format!("failed: preflight: {why}"), None);
    }
    r.c.set_sample_rate(&r.exp.nodes, 10.0);

    r.set_phase(
        Phase::Baseline,
        format!("measuring the baseline for {:?}", r.exp.baseline),
    );
    let mut baseline = Window::default();
    let until = Instant::now() + r.exp.baseline;
    if let Some(Stop::Aborted(why)) = r.observe(until, &mut baseline, true, |_| false).await {
        return Outcome(
            Phase::Aborted,
            format!("aborted before the fault: {why}"),
            None,
        );
    }

    r.set_phase(Phase::Fault, "ordering the fault".into());
    let duration = r
        .exp
        .spec
        .duration
        .and_then(|d| Duration::try_from(d).ok())
        .unwrap_or_default();
    let order_id = format!("{}-fault", r.exp.id);
    let mut acks = r.c.expect(&order_id);
    if let Some(why) = r.aborted() {
        return Outcome(
            Phase::Aborted,
            format!("aborted before the fault: {why}"),
            None,
        );
    }
    for node in &r.exp.nodes {
        let apply = Body::Apply(ApplyFault {
            lease_id: r.exp.lease_id.clone(),
            order_id: order_id.clone(),
            spec: Some(r.exp.spec.clone()),
            lease_ttl: ttl.try_into().ok(),
        });
        if let Err(e) = r.c.send(node, apply) {
            return Outcome(Phase::Failed, format!("failed: {}", e.message()), None);
        }
    }
    // Until the agent holds the effect, the coordinator keeps the lease alive.
    let applied = loop {
        r.c.leases.renew(&r.exp.lease_id, std::time::Instant::now());
        tokio::select! {
            a = tokio::time::timeout(ACK_TIMEOUT, acks.rx.recv()) => match a {
                Ok(Some(a)) => break a,
                _ => {
                    r.c.remove(&r.exp.nodes, &r.exp.lease_id, Duration::from_secs(5)).await;
                    return Outcome(Phase::Failed, format!("failed: no acknowledgement within {ACK_TIMEOUT:?}"), None);
                }
            },
            _ = r.abort.changed() => {
                if let Some(why) = r.aborted() {
                    // The abort's own removal may have reached the agent before this
                    // order did: remove again, after it, before reporting the end.
                    r.c.remove(&r.exp.nodes, &r.exp.lease_id, Duration::from_secs(5)).await;
                    return Outcome(Phase::Aborted, format!("aborted: {why}"), None);
                }
            }
        }
    };
    match EffectState::try_from(applied.state) {
        Ok(EffectState::Applied) => {}
        Ok(EffectState::Refused) => {
            return Outcome(
                Phase::Failed,
                format!(
                    "refused by the agent on {}: {}",
                    r.exp.nodes.join(", "),
                    applied.detail
                ),
                None,
            );
        }
        _ => {
            return Outcome(
                Phase::Failed,
                format!(
                    "failed: applying on {}: {}",
                    r.exp.nodes.join(", "),
                    applied.detail
                ),
                None,
            );
        }
    }
    r.emit(format!(
        "applied on {}: {}",
        r.exp.nodes.join(", "),
        applied.detail
    ));

    let mut during = Window::default();
    let until = Instant::now() + duration;
    let stop = tokio::select! {
        s = r.observe(until, &mut during, false, |_| false) => s,
        // The effect ended on the agent before the coordinator's timer: that ends the
        // fault phase too. Why it ended decides the outcome. The agent's dead-man
        // switch says Expired: heartbeats from before it fired may still renew the
        // lease here (a coordinator that was frozen reads them late), so the agent's
        // word, not the lease table, tells that the lease lapsed.
        a = acks.rx.recv() => match a.map(|a| (EffectState::try_from(a.state), a.detail)) {
            Some((Ok(EffectState::Expired), _)) => Some(Stop::LeaseLapsed),
            Some((Ok(EffectState::Failed), detail)) => {
                return Outcome(
                    Phase::Failed,
                    format!("failed: the effect failed on {}: {detail}", r.exp.nodes.join(", ")),
                    None,
                );
            }
            _ => Some(Stop::Condition),
        },
    };
    match stop {
        Some(Stop::Aborted(why)) => {
            return Outcome(
                Phase::Aborted,
                format!("aborted: {why}; every effect removed"),
                None,
            );
        }
        Some(Stop::LeaseLapsed) => {
            return Outcome(
                Phase::Failed,
                format!(
                    "failed: lease {} lapsed: {} stopped renewing it; the agent's dead-man \
                     switch removes the effect",
                    r.exp.lease_id,
                    r.exp.nodes.join(", ")
                ),
                None,
            );
        }
        Some(Stop::Condition) | None => {}
    }
    let unconfirmed =
        r.c.remove(&r.exp.nodes, &r.exp.lease_id, Duration::from_secs(10))
            .await;
    if !unconfirmed.is_empty() {
        return Outcome(
            Phase::Failed,
            format!(
                "failed: removal not confirmed by {}",
                unconfirmed.join(", ")
            ),
            None,
        );
    }
    let removed_at = Instant::now();

    r.set_phase(
        Phase::Recovery,
        format!(
            "fault removed; waiting up to {:?} for the baseline",
            r.exp.recovery
        ),
    );
    let cpu_limit = Window::max(&baseline.cpu) + CPU_BAND;
    let mem_limit = Window::max(&baseline.memory) + MEMORY_BAND;
    let mut after = Window::default();
    let stop = r
        .observe(removed_at + r.exp.recovery, &mut after, true, |s| {
            let quiet = s.ingress.unwrap_or_default().matched == 0
                && s.egress.unwrap_or_default().matched == 0;
            quiet && s.cpu_busy_percent <= cpu_limit && s.memory_used_percent <= mem_limit
        })
        .await;
    // Stop::Condition: a sample back within the baseline band arrived just now.
    let recovered = matches!(stop, Some(Stop::Condition)).then(|| removed_at.elapsed());
    if let Some(Stop::Aborted(why)) = stop {
        return Outcome(
            Phase::Aborted,
            format!("aborted during recovery: {why}"),
            None,
        );
    }
    let summary = format!(
        "baseline {} | during {} | after {}{}",
        baseline.describe(),
        during.describe(),
        after.describe(),
        match r.exp.spec.fault {
            Some(Fault::Loss(_)) | Some(Fault::Latency(_)) => format!(
                " | matched {} dropped {} delayed {} | tcp retransmits +{}",
                during.matched,
                during.dropped,
                during.delayed,
                during.retransmits.1 - during.retransmits.0.unwrap_or(during.retransmits.1)
            ),
            Some(Fault::Gc(_)) => {
                let max = |k: &str| during.fault_max.get(k).copied().unwrap_or(0.0);
                format!(
                    " | gc: {:.0} pages reclaimed, peak group memory PSI {:.2}",
                    max("gc.reclaimed_pages"),
                    max("gc.psi_some_avg10")
                )
            }
            Some(Fault::Cache(_)) => {
                let get = |k: &str| during.fault_last.get(k).copied().unwrap_or(0.0);
                format!(
                    " | cache resident {:.1}% -> {:.1}% evicted -> {:.1}% rebuilt",
                    get("cache.resident_before_percent"),
                    get("cache.resident_after_percent"),
                    during
                        .fault_last
                        .get("cache.resident_percent")
                        .copied()
                        .unwrap_or(get("cache.resident_after_percent"))
                )
            }
            _ => String::new(),
        }
    );
    match recovered {
        Some(took) => Outcome(
            Phase::Completed,
            format!(
                "completed: recovered {:.2} s after removal; {summary}",
                took.as_secs_f64()
            ),
            Some(took),
        ),
        None => Outcome(
            Phase::Failed,
            format!(
                "recovery failed: not back to baseline (cpu <= {cpu_limit:.1}%, mem <= \
                 {mem_limit:.1}%, no fault traffic) within {:?}; {summary}",
                r.exp.recovery
            ),
            None,
        ),
    }
}

/// The node can carry this fault: agent connected, and the kernel features it needs.
fn preflight(c: &Control, exp: &Experiment) -> Result<(), String> {
    for n in &exp.nodes {
        c.session(n).map_err(|s| s.message().to_owned())?;
        let caps = c
            .nodes()
            .get(n)
            .and_then(|e| e.info.capabilities.clone())
            .unwrap_or_default();
        match exp.spec.fault {
            Some(Fault::Loss(_)) | Some(Fault::Latency(_)) if !caps.bpf => {
                return Err(format!("node {n} cannot load BPF programs"));
            }
            Some(Fault::Cpu(_)) | Some(Fault::Memory(_)) | Some(Fault::Gc(_))
                if caps.cgroup == "none" =>
            {
                return Err(format!("node {n} has no cgroup filesystem"));
            }
            Some(Fault::Cache(ref c)) if !c.target_cgroup.is_empty() && caps.cgroup != "v2" => {
                return Err(format!(
                    "node {n} has cgroup {}: a workload's file cache can be reclaimed on \
                     cgroup v2 only (evict by path instead)",
                    caps.cgroup
                ));
            }
            _ => {}
        }
    }
    Ok(())
}
