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

use super::refusal;
use crate::{
    engine::experiment,
    engine::plan,
    fleet::control::{Control, Running},
    schedule::{Entry, Launcher},
    store::Audit,
};

pub type EventRx = mpsc::Receiver<Result<ExperimentEvent, Status>>;

/// Who asked for an experiment, and where it runs.
#[derive(Clone, Debug, Default)]
pub struct Origin {
    /// The schedule entry that asked ("" for a person or CI).
    pub schedule: String,
    /// The game day it runs in (set when the start is judged).
    pub gameday: String,
    /// The start's audit record; its target becomes the experiment's id. The record
    /// and the experiment land in one transaction, or the start is refused.
    pub audit: Audit,
}

/// Resolves, leases and launches an experiment for a person or CI: the spec is
/// parsed on a blocking thread (a hostile spec must not stall the runtime that
/// serves aborts and agent streams). Returns the experiment id and its event stream.
pub async fn begin(
    c: &Arc<Control>,
    req: StartRequest,
    origin: Origin,
) -> Result<(String, EventRx), Status> {
    let judged = judge(c)?;
    let c2 = c.clone();
    let wait = req.wait_for_lease;
    let (plan, judged) =
        tokio::task::spawn_blocking(move || plan_of(&c2, &req, &judged).map(|p| (p, judged)))
            .await
            .map_err(|e| Status::internal(format!("planning: {e}")))??;
    lease_and_launch(c, plan, judged, origin, wait)
}

/// The scheduler's start: its specs were checked when the schedule file was loaded,
/// so they are parsed where the clock runs.
pub fn begin_scheduled(
    c: &Arc<Control>,
    req: &StartRequest,
    origin: Origin,
) -> Result<(String, EventRx), Status> {
    let judged = judge(c)?;
    let plan = plan_of(c, req, &judged)?;
    lease_and_launch(c, plan, judged, origin, false)
}

/// What a start is judged by at this moment.
struct Judged {
    /// The limits in force (a game day's while one is open) and their source.
    limits: faultline_proto::limits::ChaosLimits,
    limits_source: String,
    gameday: Option<faultline_proto::v1::GameDay>,
    views: Vec<plan::NodeView>,
}

/// Refuses a start when none may begin now — the store cannot record it, a blackout
/// window is open — else what it is judged by.
fn judge(c: &Control) -> Result<Judged, Status> {
    c.store
        .writable()
        .map_err(|why| Status::failed_precondition(format!("no experiment starts: {why}")))?;
    let now = chrono::Utc::now();
    if let Some((b, until)) = c.scheduler.blackout(now) {
        return Err(Status::failed_precondition(format!(
            "blackout window {} is open until {}: no experiment may start",
            b.name,
            until.format("%Y-%m-%d %H:%M:%S UTC")
        )));
    }
    let (limits, limits_source, gameday) = c.limits_in_force(SystemTime::now());
    Ok(Judged {
        limits,
        limits_source,
        gameday,
        views: c.node_views(),
    })
}

fn plan_of(c: &Control, req: &StartRequest, j: &Judged) -> Result<plan::Plan, Status> {
    let ctx = plan::Context {
        settings: &c.config.settings,
        limits: &j.limits,
        limits_source: &j.limits_source,
        nodes: &j.views,
    };
    if req.spec_yaml.is_empty() && req.overrides_yaml.is_empty() {
        plan::from_request(req, &ctx)
    } else {
        plan::resolve(&req.spec_yaml, &req.overrides_yaml, &ctx)
            .map_err(|e| Status::invalid_argument(format!("spec: {e}")))
    }
}

/// Leases the plan's nodes (or queues for them when `wait` and they are busy) and
/// launches the experiment.
fn lease_and_launch(
    c: &Arc<Control>,
    plan: plan::Plan,
    j: Judged,
    mut origin: Origin,
    wait: bool,
) -> Result<(String, EventRx), Status> {
    for n in &plan.nodes {
        c.session(n)?;
    }
    let seq = c.next_experiment_seq();
    let id = crate::store::Store::experiment_id(seq);
    let (tx, rx) = mpsc::channel(1024);
    origin.gameday = j.gameday.as_ref().map(|g| g.id.clone()).unwrap_or_default();
    origin.audit.target = id.clone();
    let within = j.gameday.as_ref().map(|_| j.limits.blast_radius.clone());
    let lease = match c.grant(&id, &plan.nodes, within.as_ref()) {
        Ok(l) => l,
        Err(r) if r.is_busy() && wait => {
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
                            if let Err(e) = launch(&c2, seq, lease, plan, tx.clone(), origin) {
                                let _ = tx.send(Err(e)).await;
                            }
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
    launch(c, seq, lease, plan, tx, origin)?;
    Ok((id, rx))
}

/// Records the experiment, its lease and the start's audit record in one
/// transaction, and starts its task. Nothing starts (the lease is released) when
/// the record cannot be written.
fn launch(
    c: &Arc<Control>,
    seq: u64,
    lease: crate::fleet::leases::Lease,
    plan: plan::Plan,
    events: experiment::Events,
    origin: Origin,
) -> Result<(), Status> {
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
    let recorded = c.store.audited(&origin.audit, |w| {
        let id = w.create_experiment(seq, &new)?;
        w.set_lease(&id, &lease.id, &lease.nodes)?;
        Ok(id)
    });
    let id = match recorded {
        Ok(id) => id,
        Err(e) => {
            c.leases.release(&lease.id);
            c.lease_freed.notify_waiters();
            return Err(Status::failed_precondition(format!(
                "not started: the experiment could not be recorded ({e:#})"
            )));
        }
    };
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
    Ok(())
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
        let origin = Origin {
            schedule: entry.name.clone(),
            audit: Audit {
                who: "scheduler".into(),
                action: "experiment.start".into(),
                detail: format!("schedule {}", entry.name),
                ..Default::default()
            },
            ..Default::default()
        };
        let (id, mut rx) =
            begin_scheduled(&self.0, &req, origin).map_err(|s| vec![s.message().to_owned()])?;
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
            self.0.audit("scheduler", "", "experiment.end", id, reason);
        }
        self.0.end_experiments(ids, reason);
    }

    fn kill_switch(&self) -> Option<String> {
        self.0.leases.kill_switch()
    }

    fn targets_ready(&self, entry: &Entry) -> Result<(), String> {
        let req = StartRequest {
            spec_yaml: entry.spec_yaml.clone(),
            ..Default::default()
        };
        let judged = judge(&self.0).map_err(|s| s.message().to_owned())?;
        let plan = plan_of(&self.0, &req, &judged).map_err(|s| s.message().to_owned())?;
        for n in &plan.nodes {
            self.0.session(n).map_err(|s| s.message().to_owned())?;
        }
        Ok(())
    }
}

/// The scheduler's clock: decides due slots, ends what a blackout forbids, and
/// closes game days at their end, four times a second. Aborting the handle stops it.
pub fn spawn_clock(c: Arc<Control>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        // A tick that fails the same way four times a second is logged once.
        let mut failing = String::new();
        loop {
            tick.tick().await;
            let live = Live(c.clone());
            match c.scheduler.tick(&c.store, &live, chrono::Utc::now()) {
                Ok(runs) => {
                    if !failing.is_empty() {
                        tracing::info!("scheduler: deciding slots again");
                        failing.clear();
                    }
                    for r in runs {
                        c.metrics.schedule_run(
                            &r.schedule,
                            RunStatus::try_from(r.status).unwrap_or(RunStatus::Unspecified),
                        );
                        tracing::info!(schedule = %r.schedule, status = r.status, experiment = %r.experiment_id,
                            reasons = %r.reasons.join("; "), "schedule slot");
                    }
                }
                Err(e) => {
                    let why = format!("{e:#}");
                    if why != failing {
                        tracing::error!(
                            "scheduler: {why} (tried again four times a second; logged once)"
                        );
                        failing = why;
                    }
                }
            }
            close_due_gamedays(&c, SystemTime::now());
            // Records a failed write kept, and whether writes land again.
            c.store.flush();
        }
    })
}

/// Closes the game days whose end has passed and ends what they still run.
pub fn close_due_gamedays(c: &Arc<Control>, now: SystemTime) {
    let Ok(due) = c.store.gamedays_to_close(now) else {
        return;
    };
    for (id, end) in due {
        // Ending is idempotent, and happens whatever the store does; the close and its
        // audit record land together, or are tried again at the next tick.
        let ended = c.end_gameday_experiments(&id, &format!("game day {id} closed at its end"));
        let audit = Audit {
            who: "coordinator".into(),
            action: "gameday.close".into(),
            target: id.clone(),
            detail: format!("closed on time; ended {ended}"),
            ..Default::default()
        };
        if c.store
            .audited(&audit, |w| w.close_gameday(&id, "closed on time", end))
            .is_ok()
        {
            tracing::info!(gameday = %id, ended, "game day closed");
        }
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
    let mut monitor =
        crate::health::Monitor::start(plan.health.clone(), c.clone(), &probe_id, &plan.nodes);
    let mut checks = crate::engine::preflight::run(&plan, &mut monitor, c, None).await;
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
