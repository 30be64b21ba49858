//! What the daemon does with a message from the coordinator (an order, a renewal, a
//! removal, a probe, a self-test) and with a report from an order's child: each
//! checked against this agent's own limits and policy before anything runs, and
//! answered with one acknowledgement.
use std::{collections::HashSet, time::Duration};

use anyhow::Result;
use faultline_proto::{
    endpoint::EndpointPolicy,
    spec::Scenario,
    v1::{
        Ack, AgentMessage, ApplyFault, EffectState, LeaseRenewal, ProbeResults, RemoveFault,
        StartProbe, agent_message::Body as Out, coordinator_message::Body as In,
    },
};
use tokio::{sync::mpsc, time::Instant};
use tracing::{info, warn};

use crate::{
    errors::UsageError,
    exporter::{OrderResult, Seen},
    guard::{AbortOnDrop, Breach},
    orders::{self, Report},
};

use super::{DEFAULT_TTL, Effect, State, ack, forward_probe};

/// What order handling needs besides the state.
pub(super) struct Ctx<'a> {
    pub(super) global: &'a [String],
    pub(super) reports: &'a mpsc::UnboundedSender<Report>,
    pub(super) breaches: &'a mpsc::UnboundedSender<Breach>,
    pub(super) outbox: &'a mpsc::Sender<AgentMessage>,
}

/// Every URL an order would have this agent call, checked against its own policy.
fn endpoints_allowed(policy: &EndpointPolicy, a: &ApplyFault) -> Result<(), String> {
    let fault = a.spec.as_ref().and_then(|s| s.fault.as_ref());
    for h in fault
        .map(|f| crate::order::needs(f).hooks)
        .unwrap_or_default()
    {
        policy
            .check(&h.url)
            .map_err(|e| format!("hook {}: {e} (agent --allow-endpoint)", h.name))?;
    }
    if let Some(p) = a.guard.as_ref().and_then(|g| g.probe.as_ref()) {
        policy
            .check(&p.url)
            .map_err(|e| format!("agent_guard probe: {e} (agent --allow-endpoint)"))?;
    }
    Ok(())
}

/// A message from the coordinator.
pub(super) fn order(st: &mut State, body: In, ctx: &Ctx<'_>, send: &impl Fn(Out)) {
    match body {
        In::Apply(a) => apply(st, a, ctx, send),
        In::Remove(r) => remove(st, r, send),
        In::SampleRate(s) => st.sample_hz = s.hz.clamp(0.1, 10.0),
        In::StartProbe(p) => start_probe(st, p, ctx),
        In::StopProbe(p) => {
            if st.probes.remove(&p.probe_id).is_some() {
                info!(probe = %p.probe_id, "node-side probe stopped");
            }
        }
        In::SelfTest(t) => {
            if let Err(e) = orders::spawn_self_test(
                &t.request_id,
                ctx.global,
                &t.interface,
                ctx.reports.clone(),
            ) {
                send(ack(
                    &t.request_id,
                    EffectState::Failed,
                    format!("spawn: {e}"),
                ));
            }
        }
        In::ReportReceived(r) => st
            .unconfirmed
            .retain(|a| a.guard.as_ref().is_none_or(|g| g.report_id != r.report_id)),
        In::Renewal(r) => renew(st, r),
    }
}

/// A fault order: checked against this agent's policy and converted (a malformed
/// order is refused without a process), then its child started.
fn apply(st: &mut State, a: ApplyFault, ctx: &Ctx<'_>, send: &impl Fn(Out)) {
    if st.effects.contains_key(&a.order_id) {
        return; // a resent order: the first one's acks stand
    }
    if let Err(e) = endpoints_allowed(&st.policy, &a) {
        st.metrics.order(OrderResult::Refused);
        return send(ack(&a.order_id, EffectState::Refused, e));
    }
    // Converted here first, as the child converts it again: a malformed
    // order is refused without a process.
    let spec = match a
        .spec
        .as_ref()
        .ok_or_else(|| UsageError("no fault spec".into()))
        .and_then(|s| crate::order::fault(s).map(|_| s))
    {
        Ok(spec) => spec,
        Err(e) => {
            st.metrics.order(OrderResult::Refused);
            return send(ack(&a.order_id, EffectState::Refused, e.0));
        }
    };
    let Some(fault) = spec.fault.as_ref() else {
        return; // converted above: an order without a fault was refused there
    };
    let scenario = Scenario::of(fault);
    let kind = scenario.kind_name();
    let stress_share = crate::order::needs(fault).stress_share;
    let ttl = a
        .lease_ttl
        .and_then(|t| Duration::try_from(t).ok())
        .filter(|t| !t.is_zero())
        .unwrap_or(DEFAULT_TTL);
    match orders::spawn(
        &a.order_id,
        &a.lease_id,
        ctx.global,
        spec,
        ctx.reports.clone(),
    ) {
        Ok(handle) => {
            info!(order = %a.order_id, lease = %a.lease_id, fault = kind, "applying the order");
            st.leases
                .insert(a.lease_id.clone(), (Instant::now() + ttl, ttl));
            let guard = a.guard.map(|g| {
                AbortOnDrop(tokio::spawn(crate::guard::run(
                    a.order_id.clone(),
                    a.lease_id.clone(),
                    g,
                    ctx.breaches.clone(),
                )))
            });
            st.effects.insert(
                a.order_id,
                Effect {
                    lease_id: a.lease_id,
                    handle,
                    scenario,
                    stress_share,
                    pending_since: Some(Instant::now()),
                    expired: false,
                    breach: None,
                    _guard: guard,
                },
            );
        }
        Err(e) => {
            st.metrics.order(OrderResult::Failed);
            send(ack(&a.order_id, EffectState::Failed, format!("spawn: {e}")))
        }
    }
}

/// Stops the effects a removal names; acknowledged once their children exit.
fn remove(st: &mut State, r: RemoveFault, send: &impl Fn(Out)) {
    let matching: HashSet<String> = st
        .effects
        .iter()
        .filter(|(id, e)| {
            (r.lease_id.is_empty() || e.lease_id == r.lease_id)
                && (r.order_id.is_empty() || **id == r.order_id)
        })
        .map(|(id, _)| id.clone())
        .collect();
    for id in &matching {
        st.effects[id].handle.stop();
    }
    if matching.is_empty() {
        if !r.lease_id.is_empty() {
            st.leases.remove(&r.lease_id);
        }
        send(ack(&r.request_id, EffectState::Removed, "nothing applied"));
    } else {
        info!(lease = %r.lease_id, "removing {} effect(s)", matching.len());
        st.removals.insert(r.request_id, matching);
    }
}

/// A node-side probe the coordinator asks for, if this agent's policy allows its URL.
fn start_probe(st: &mut State, p: StartProbe, ctx: &Ctx<'_>) {
    let Some(spec) = p.probe else { return };
    if let Err(e) = st.policy.check(&spec.url) {
        warn!(probe = %p.probe_id, "refusing a node-side probe: {e}");
        let _ = ctx.outbox.try_send(AgentMessage {
            body: Some(Out::Probe(ProbeResults {
                probe_id: p.probe_id,
                results: Vec::new(),
                refused: format!("{e} (agent --allow-endpoint)"),
            })),
        });
        return;
    }
    info!(probe = %p.probe_id, url = %spec.url, hz = spec.rate_hz, "node-side probe started");
    let task = tokio::spawn(forward_probe(p.probe_id.clone(), spec, ctx.outbox.clone()));
    st.probes.insert(p.probe_id, AbortOnDrop(task));
}

/// A renewal moves each named lease's deadline (the dead-man switch's) on.
fn renew(st: &mut State, r: LeaseRenewal) {
    let ttl = r
        .ttl
        .and_then(|t| Duration::try_from(t).ok())
        .filter(|t| !t.is_zero());
    let now = Instant::now();
    for id in r.lease_ids {
        if let Some((until, lease_ttl)) = st.leases.get_mut(&id) {
            *lease_ttl = ttl.unwrap_or(*lease_ttl);
            *until = now + *lease_ttl;
        }
    }
}

pub(super) fn child_report(st: &mut State, report: Report, send: &impl Fn(Out)) {
    match report {
        Report::Armed { order_id, detail } => {
            let (lease, kind) = match st.effects.get_mut(&order_id) {
                Some(e) => {
                    if let Some(t) = e.pending_since.take() {
                        st.metrics
                            .order_apply_seconds
                            .observe(t.elapsed().as_secs_f64());
                        st.metrics.order(OrderResult::Applied);
                    }
                    (e.lease_id.clone(), e.scenario.kind_name())
                }
                None => (String::new(), "unknown"),
            };
            info!(order = %order_id, %lease, fault = kind, %detail, "fault applied");
            send(ack(&order_id, EffectState::Applied, detail));
        }
        Report::SelfTest {
            request_id,
            passed,
            detail,
        } => {
            let state = if passed {
                EffectState::Applied
            } else {
                EffectState::Failed
            };
            send(ack(&request_id, state, detail));
        }
        Report::Counters {
            order_id,
            ingress,
            egress,
            delay_line,
        } => {
            let (queued, overflow) = delay_line.unwrap_or_default();
            let now = Seen {
                ingress,
                egress,
                overflow,
            };
            let (before, depth) = st.seen.entry(order_id).or_default();
            st.metrics.packets(before, &now);
            *before = now;
            *depth = queued;
            st.counters = (ingress, egress);
        }
        Report::Readings(r) => st.readings = Some(r),
        Report::Exited {
            order_id,
            armed,
            code,
            detail,
        } => {
            let effect = st.effects.remove(&order_id);
            st.seen.remove(&order_id);
            let expired = effect.as_ref().is_some_and(|e| e.expired);
            let breach = effect.as_ref().and_then(|e| e.breach.clone());
            if !armed && effect.as_ref().is_some_and(|e| e.pending_since.is_some()) {
                st.metrics.order(if code == Some(2) {
                    OrderResult::Refused
                } else {
                    OrderResult::Failed
                });
            }
            let kind = effect
                .as_ref()
                .map_or("unknown", |e| e.scenario.kind_name());
            let lease = effect.map(|e| e.lease_id);
            // An armed child exits 0 when it removed its effects at its deadline or
            // on our SIGTERM, 1 when something failed after arming (it removed them
            // too, e.g. a hook that could not be reached).
            let state = match (armed, code) {
                (true, _) if expired => EffectState::Expired,
                (_, _) if breach.is_some() => EffectState::GuardBreached,
                (true, Some(c)) if c != 0 => EffectState::Failed,
                (true, _) => EffectState::Removed,
                (false, Some(2)) => EffectState::Refused,
                (false, _) => EffectState::Failed,
            };
            info!(order = %order_id, lease = lease.as_deref().unwrap_or(""), fault = kind,
                  outcome = ?state, %detail, "fault removed");
            match breach {
                Some(mut report) => {
                    report.removal_confirmed_at = Some(std::time::SystemTime::now().into());
                    let a = Ack {
                        order_id: order_id.clone(),
                        state: state as i32,
                        detail: format!(
                            "{} {:.2}{} above {}{}: removed by the agent",
                            report.guard,
                            report.observed,
                            report.unit,
                            report.threshold,
                            report.unit
                        ),
                        guard: Some(report),
                    };
                    send(Out::Ack(a.clone()));
                    st.unconfirmed.push(a);
                }
                None => send(ack(&order_id, state, detail.clone())),
            }
            let done: Vec<String> = st
                .removals
                .iter_mut()
                .filter_map(|(req, pending)| {
                    (pending.remove(&order_id) && pending.is_empty()).then(|| req.clone())
                })
                .collect();
            for req in done {
                st.removals.remove(&req);
                send(ack(&req, EffectState::Removed, detail.clone()));
            }
            if let Some(lease) = lease
                && !st.effects.values().any(|e| e.lease_id == lease)
            {
                st.leases.remove(&lease);
            }
            if st.effects.is_empty() {
                st.counters = Default::default();
                st.readings = None;
            }
        }
    }
}
