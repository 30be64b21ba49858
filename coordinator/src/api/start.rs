//! Starting an experiment, for a person (the Start RPC) and for the scheduler alike:
//! blackout windows and game days are decided here, once, so both paths obey them.
//! Also the scheduler's launcher and its clock task.
use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use faultline_proto::v1::{CheckStatus, ExperimentEvent, Phase, RunStatus, StartRequest, Verdict};
use tokio::sync::{mpsc, watch};
use tonic::Status;

use super::{internal, refusal};
use crate::{
    control::{Control, Running},
    experiment, plan,
    schedule::{Entry, Launcher},
};

pub type EventRx = mpsc::Receiver<Result<ExperimentEvent, Status>>;

/// Resolves, leases and launches an experiment. `schedule` names the entry that
/// asked ("" for a person). Returns the experiment id and its event stream.
pub fn begin(
    c: &Arc<Control>,
    req: &StartRequest,
    schedule: &str,
) -> Result<(String, EventRx), Status> {
    let now = chrono::Utc::now();
    if let Some((b, until)) = c.scheduler.blackout(now) {
        return Err(Status::failed_precondition(format!(
            "blackout window {} is open until {}: no experiment may start",
            b.name,
            until.format("%Y-%m-%d %H:%M:%S UTC")
        )));
    }
    let (limits, limits_source, gameday) = c.limits_in_force(SystemTime::now());
    let views = c.node_views();
    let ctx = plan::Context {
        settings: &c.config.settings,
        limits: &limits,
        limits_source: &limits_source,
        nodes: &views,
    };
    let plan = if req.spec_yaml.is_empty() && req.overrides_yaml.is_empty() {
        plan::from_request(req, &ctx)?
    } else {
        plan::resolve(&req.spec_yaml, &req.overrides_yaml, &ctx)
            .map_err(|e| Status::invalid_argument(format!("spec: {e}")))?
    };
    for n in &plan.nodes {
        c.session(n)?;
    }
    let seq = c.next_experiment_seq();
    let id = crate::store::Store::experiment_id(seq);
    let (tx, rx) = mpsc::channel(1024);
    let origin = Origin {
        schedule: schedule.to_owned(),
        gameday: gameday.as_ref().map(|g| g.id.clone()).unwrap_or_default(),
    };
    let within = gameday.as_ref().map(|_| limits.blast_radius.clone());
    let lease = match c.grant(&id, &plan.nodes, within.as_ref()) {
        Ok(l) => l,
        Err(r) if r.is_busy() && req.wait_for_lease => {
            let _ = tx.try_send(Ok(ExperimentEvent {
                experiment_id: id.clone(),
                at: Some(SystemTime::now().into()),
                phase: Phase::Queued as i32,
                message: format!("queued: {r}"),
                ..Default::default()
            }));
            let c2 = c.clone();
            let id2 = id.clone();
            tokio::spawn(async move {
                loop {
                    let freed = c2.lease_freed.notified();
                    match c2.grant(&id2, &plan.nodes, within.as_ref()) {
                        Ok(lease) => {
                            launch(&c2, seq, lease, plan, tx, origin);
                            return;
                        }
                        Err(r) if r.is_busy() => {}
                        Err(r) => {
                            let _ = tx.send(Err(refusal(r))).await;
                            return;
                        }
                    }
                    tokio::select! {
                        _ = freed => {}
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = tx.closed() => return,
                    }
                }
            });
            return Ok((id, rx));
        }
        Err(r) => return Err(refusal(r)),
    };
    launch(c, seq, lease, plan, tx, origin);
    Ok((id, rx))
}

struct Origin {
    schedule: String,
    gameday: String,
}

/// Records the experiment and starts its task.
fn launch(
    c: &Arc<Control>,
    seq: u64,
    lease: crate::leases::Lease,
    plan: plan::Plan,
    events: experiment::Events,
    origin: Origin,
) {
    let probes: Vec<String> = plan.health.probes.iter().map(|p| p.name.clone()).collect();
    let new = crate::store::NewExperiment {
        name: &plan.name,
        nodes: &lease.nodes,
        fault: &plan.fault,
        scenario: plan.scenario.as_str(),
        spec_yaml: &plan.spec_yaml,
        probes: &probes,
        schedule: &origin.schedule,
        gameday: &origin.gameday,
    };
    let id = match c.store.create_experiment(seq, &new) {
        Ok(id) => id,
        Err(e) => {
            c.leases.release(&lease.id);
            let _ = events.try_send(Err(internal(e)));
            return;
        }
    };
    if let Err(e) = c.store.set_lease(&id, &lease.id, &lease.nodes) {
        tracing::error!("store: {e:#}");
    }
    let (abort_tx, abort_rx) = watch::channel(None);
    let (done_tx, done_rx) = watch::channel(false);
    c.running().insert(
        id.clone(),
        Running {
            lease_id: lease.id.clone(),
            nodes: lease.nodes.clone(),
            abort: abort_tx,
            done: done_rx,
            schedule: origin.schedule,
            gameday: origin.gameday,
        },
    );
    let exp = experiment::Experiment {
        id,
        lease_id: lease.id,
        plan,
    };
    tokio::spawn(experiment::run(c.clone(), exp, events, abort_rx, done_tx));
}

/// The scheduler's view of the live coordinator.
pub struct Live(pub Arc<Control>);

impl Launcher for Live {
    fn running(&self) -> Vec<(String, String)> {
        self.0
            .running()
            .iter()
            .map(|(id, r)| (id.clone(), r.schedule.clone()))
            .collect()
    }

    fn start(&self, entry: &Entry, slot_ms: i64) -> Result<String, Vec<String>> {
        let req = StartRequest {
            spec_yaml: entry.spec_yaml.clone(),
            ..Default::default()
        };
        let (id, mut rx) =
            begin(&self.0, &req, &entry.name).map_err(|s| vec![s.message().to_owned()])?;
        super::audit(
            &self.0,
            "scheduler",
            "",
            "experiment.start",
            &id,
            &format!("schedule {}", entry.name),
        );
        // Nobody watches a scheduled run's stream; this task does, so a refusal in
        // preflight turns the slot into a skip with the failing checks as reasons.
        let (c, name) = (self.0.clone(), entry.name.clone());
        let id2 = id.clone();
        tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                let Ok(ev) = ev else { continue };
                let Some(o) = ev.outcome else { continue };
                if o.verdict == Verdict::Rejected as i32 {
                    let mut reasons: Vec<String> = o
                        .preflight
                        .iter()
                        .filter(|c| c.status == CheckStatus::Fail as i32)
                        .map(|c| {
                            format!("preflight {}: {} (needs {})", c.name, c.value, c.threshold)
                        })
                        .collect();
                    if reasons.is_empty() {
                        reasons.push(o.message.clone());
                    }
                    // Counted once more: the slot started, then preflight skipped it.
                    c.metrics.schedule_run(&name, RunStatus::Skipped);
                    if let Err(e) =
                        c.store
                            .update_slot(&name, slot_ms, RunStatus::Skipped, &reasons, &id2)
                    {
                        tracing::error!("store: {e:#}");
                    }
                }
            }
        });
        Ok(id)
    }

    fn end(&self, ids: &[String], reason: &str) {
        for id in ids {
            super::audit(&self.0, "scheduler", "", "experiment.end", id, reason);
        }
        self.0.end_experiments(ids, reason);
    }

    fn kill_switch(&self) -> Option<String> {
        self.0.leases.kill_switch()
    }
}

/// The scheduler's clock: decides due slots, ends what a blackout forbids, and
/// closes game days at their end, four times a second.
pub fn spawn_clock(c: Arc<Control>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tick.tick().await;
            let live = Live(c.clone());
            match c.scheduler.tick(&c.store, &live, chrono::Utc::now()) {
                Ok(runs) => {
                    for r in runs {
                        c.metrics.schedule_run(
                            &r.schedule,
                            RunStatus::try_from(r.status).unwrap_or(RunStatus::Unspecified),
                        );
                        tracing::info!(schedule = %r.schedule, status = r.status, experiment = %r.experiment_id,
                            reasons = %r.reasons.join("; "), "schedule slot");
                    }
                }
                Err(e) => tracing::error!("scheduler: {e:#}"),
            }
            close_due_gamedays(&c, SystemTime::now());
        }
    });
}

/// Closes the game days whose end has passed and ends what they still run.
pub fn close_due_gamedays(c: &Arc<Control>, now: SystemTime) {
    let Ok(due) = c.store.gamedays_to_close(now) else {
        return;
    };
    for (id, end) in due {
        let ended = c.end_gameday_experiments(&id, &format!("game day {id} closed at its end"));
        super::audit(
            c,
            "coordinator",
            "",
            "gameday.close",
            &id,
            &format!("closed on time; ended {ended}"),
        );
        if let Err(e) = c.store.close_gameday(&id, "closed on time", end) {
            tracing::error!("store: {e:#}");
        }
        tracing::info!(gameday = %id, ended, "game day closed");
    }
}

/// A preflight dry run: the spec (or the next scheduled entry's) resolved and every
/// prerequisite evaluated over one health window; nothing applied, no lease taken.
pub async fn readiness(
    c: &Arc<Control>,
    spec_yaml: String,
) -> faultline_proto::v1::ReadinessResponse {
    use faultline_proto::v1::{Check, ReadinessResponse};
    let (spec, checked) = if !spec_yaml.is_empty() {
        (spec_yaml, "the given spec".to_owned())
    } else {
        let list = c.scheduler.list(&c.store).unwrap_or_default();
        let next = list
            .iter()
            .filter(|e| !e.paused)
            .filter_map(|e| e.next_run.map(|t| (t.seconds, e)))
            .min_by_key(|(t, _)| *t);
        match next {
            Some((_, e)) => (e.spec_yaml.clone(), format!("schedule {}", e.name)),
            None => {
                return ReadinessResponse {
                    message: "no scheduled test to check (load a schedule, or pass a spec)".into(),
                    ..Default::default()
                };
            }
        }
    };
    let busy: Vec<String> = c.running().keys().cloned().collect();
    if !busy.is_empty() {
        return ReadinessResponse {
            checked,
            message: format!("not checked while {} runs", busy.join(", ")),
            ..Default::default()
        };
    }
    // Judged by the limits a start now would be judged by (a game day's, if open).
    let (limits, limits_source, _) = c.limits_in_force(SystemTime::now());
    let views = c.node_views();
    let ctx = plan::Context {
        settings: &c.config.settings,
        limits: &limits,
        limits_source: &limits_source,
        nodes: &views,
    };
    let plan = match plan::resolve(&spec, "", &ctx) {
        Ok(p) => p,
        Err(e) => {
            return ReadinessResponse {
                checked,
                message: format!("spec: {e}"),
                ..Default::default()
            };
        }
    };
    let probe_id = format!("readiness-{}", c.next_id());
    let mut monitor = crate::health::Monitor::start(plan.health.clone(), c, &probe_id, &plan.nodes);
    let mut checks = crate::preflight::run(&plan, &mut monitor, c, None).await;
    let reading = monitor.reading().to_proto();
    drop(monitor);
    let state = |ok: bool| if ok { CheckStatus::Pass } else { CheckStatus::Fail } as i32;
    let kill = c.leases.kill_switch();
    checks.push(Check {
        name: "kill_switch".into(),
        status: state(kill.is_none()),
        value: kill.clone().unwrap_or_else(|| "off".into()),
        threshold: "off".into(),
        detail: if kill.is_some() {
            "an admin clears it (faultline clear-kill-switch)".into()
        } else {
            String::new()
        },
    });
    let blackout = c.scheduler.blackout(chrono::Utc::now());
    checks.push(Check {
        name: "blackout".into(),
        status: state(blackout.is_none()),
        value: blackout.map_or("none open".into(), |(b, _)| b.name.clone()),
        threshold: "none open".into(),
        detail: String::new(),
    });
    ReadinessResponse {
        ready: checks.iter().all(|c| c.status != CheckStatus::Fail as i32),
        checks,
        reading: Some(reading),
        checked,
        message: String::new(),
    }
}
