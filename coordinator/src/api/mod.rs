//! ChaosService (gRPC, for people and CI) and the HTTP surface (`POST /abort`,
//! `GET /status`, `GET /healthz`). Every call but health needs a bearer token; the
//! role each needs is stated at the call.
pub mod auth;
pub mod certs;
mod http;
pub mod https;
mod start;

use std::{sync::Arc, time::SystemTime};

use faultline_proto::v1::{
    AbortRequest, AbortResponse, AddFindingRequest, AddGameDayNoteRequest, ClearKillSwitchRequest,
    ClearKillSwitchResponse, CloseGameDayRequest, Experiment, ExperimentEvent, Finding,
    FindingStatus, GameDay, GameDayNote, GameDayState, GetExperimentEventsRequest,
    GetExperimentEventsResponse, GetExperimentRequest, ListAuditRequest, ListAuditResponse,
    ListExperimentsRequest, ListExperimentsResponse, ListFindingsRequest, ListFindingsResponse,
    ListGameDaysRequest, ListGameDaysResponse, ListNodesRequest, ListNodesResponse,
    ListScheduleRunsRequest, ListScheduleRunsResponse, ListSchedulesRequest, ListSchedulesResponse,
    Node, NoteKind, OpenGameDayRequest, PauseScheduleRequest, ReadinessRequest, ReadinessResponse,
    Schedule, StartRequest, StatusRequest, StatusResponse, UpdateFindingRequest,
    chaos_service_server::ChaosService,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

pub(crate) use http::http_caller;
pub use http::{Http, http_router};
pub use start::{close_due_gamedays, spawn_clock};

use crate::{
    api::auth::{Caller, Role, require},
    fleet::control::Control,
    fleet::leases::Refusal,
    store::Audit,
};

pub struct Chaos(pub Arc<Control>);

/// The audit record of a person's action.
pub(crate) fn entry(caller: &Caller, action: &str, target: &str, detail: &str) -> Audit {
    tracing::info!(who = %caller.name, peer = %caller.peer, action, target, detail, "audit");
    Audit {
        who: caller.name.clone(),
        peer: caller.peer.clone(),
        action: action.to_owned(),
        target: target.to_owned(),
        detail: detail.to_owned(),
    }
}

/// A person's action refused because its audit record could not be written.
pub(crate) fn unrecorded(e: anyhow::Error) -> Status {
    Status::failed_precondition(format!(
        "not done: the action could not be recorded in the store's audit log ({e:#})"
    ))
}

pub(crate) fn internal(e: anyhow::Error) -> Status {
    Status::internal(format!("{e:#}"))
}

pub(crate) fn refusal(r: Refusal) -> Status {
    let msg = r.to_string();
    match r {
        Refusal::KillSwitch(_) => Status::failed_precondition(msg),
        Refusal::ShuttingDown => Status::unavailable(msg),
        Refusal::Concurrent { .. } | Refusal::NodeBusy { .. } => Status::resource_exhausted(msg),
        Refusal::NoNodes | Refusal::DuplicateNode(_) | Refusal::TooManyNodes { .. } => {
            Status::invalid_argument(msg)
        }
    }
}

impl Chaos {
    fn running_experiments(&self) -> Vec<Experiment> {
        let ids: Vec<String> = self.0.running().keys().cloned().collect();
        ids.iter()
            .filter_map(|id| self.0.store.experiment(id).ok().flatten())
            .collect()
    }
}

#[tonic::async_trait]
impl ChaosService for Chaos {
    type StartStream = ReceiverStream<Result<ExperimentEvent, Status>>;

    async fn start(
        &self,
        request: Request<StartRequest>,
    ) -> Result<Response<Self::StartStream>, Status> {
        let caller = require(&request, Role::Operator, "starting an experiment")?;
        let detail = if request.get_ref().spec_yaml.is_empty() {
            "flags"
        } else {
            "spec"
        };
        let by = start::Origin {
            audit: entry(&caller, "experiment.start", "", detail),
            ..Default::default()
        };
        let (_, rx) = start::begin(&self.0, request.into_inner(), by).await?;
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn abort(
        &self,
        request: Request<AbortRequest>,
    ) -> Result<Response<AbortResponse>, Status> {
        let caller = require(&request, Role::Operator, "abort")?;
        let req = request.into_inner();
        let target = if req.experiment_id.is_empty() {
            "all"
        } else {
            &req.experiment_id
        };
        // An abort happens whatever the store does: its record is written now or as
        // soon as the store can write.
        self.0
            .audit(&caller.name, &caller.peer, "abort", target, &req.reason);
        let out = self
            .0
            .abort(&req.experiment_id, &req.reason, &caller.name)
            .await?;
        if !out.unconfirmed.is_empty() {
            return Err(Status::deadline_exceeded(format!(
                "abort: kill switch engaged, but {} did not confirm removal within 5 s \
                 (their dead-man switch and the in-kernel deadline end the effects)",
                out.unconfirmed.join(", ")
            )));
        }
        Ok(Response::new(AbortResponse {
            experiment_ids: out.experiment_ids,
            took: out.took.try_into().ok(),
            kill_switch_engaged: true,
        }))
    }

    async fn clear_kill_switch(
        &self,
        request: Request<ClearKillSwitchRequest>,
    ) -> Result<Response<ClearKillSwitchResponse>, Status> {
        let caller = require(&request, Role::Admin, "clearing the kill switch")?;
        self.0
            .clear_kill_switch(&entry(&caller, "kill_switch.clear", "", ""))
            .map_err(unrecorded)?;
        Ok(Response::new(ClearKillSwitchResponse {}))
    }

    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        require(&request, Role::Viewer, "status")?;
        let running = self.running_experiments();
        let live = running
            .iter()
            .map(|e| {
                self.0
                    .store
                    .last_reading(&e.id)
                    .ok()
                    .flatten()
                    .unwrap_or_default()
            })
            .collect();
        Ok(Response::new(StatusResponse {
            kill_switch_engaged: self.0.leases.kill_switch().is_some(),
            running,
            connected_agents: self.0.connected_nodes().len() as u32,
            live,
        }))
    }

    async fn list_nodes(
        &self,
        request: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesResponse>, Status> {
        require(&request, Role::Viewer, "listing nodes")?;
        let held = self.0.leases.held();
        let mut nodes: Vec<Node> = self
            .0
            .nodes()
            .iter()
            .map(|(name, e)| Node {
                name: name.clone(),
                labels: e.info.labels.clone(),
                capabilities: e.info.capabilities.clone(),
                agent_version: e.info.agent_version.clone(),
                connected: e.session.is_some(),
                last_heartbeat: Some(e.last_heartbeat.into()),
                lease_id: held
                    .iter()
                    .find(|l| l.nodes.contains(name))
                    .map(|l| l.id.clone())
                    .unwrap_or_default(),
            })
            .collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Response::new(ListNodesResponse { nodes }))
    }

    async fn list_experiments(
        &self,
        request: Request<ListExperimentsRequest>,
    ) -> Result<Response<ListExperimentsResponse>, Status> {
        require(&request, Role::Viewer, "listing experiments")?;
        let req = request.get_ref();
        let experiments = match &req.since {
            // Reports read a window whole, oldest first.
            Some(since) => self
                .0
                .store
                .experiments_since(time(since), &req.scenario)
                .map_err(internal)?,
            None => {
                let limit = match req.limit {
                    0 => 50,
                    n => n.min(1000),
                };
                let mut v = self.0.store.experiments(limit).map_err(internal)?;
                v.retain(|e| req.scenario.is_empty() || e.scenario == req.scenario);
                v
            }
        };
        Ok(Response::new(ListExperimentsResponse { experiments }))
    }

    async fn get_experiment(
        &self,
        request: Request<GetExperimentRequest>,
    ) -> Result<Response<Experiment>, Status> {
        require(&request, Role::Viewer, "reading experiments")?;
        let id = &request.get_ref().id;
        self.0
            .store
            .experiment(id)
            .map_err(internal)?
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("no experiment {id}")))
    }

    async fn get_experiment_events(
        &self,
        request: Request<GetExperimentEventsRequest>,
    ) -> Result<Response<GetExperimentEventsResponse>, Status> {
        require(&request, Role::Viewer, "reading experiments")?;
        let id = &request.get_ref().id;
        if self.0.store.experiment(id).map_err(internal)?.is_none() {
            return Err(Status::not_found(format!("no experiment {id}")));
        }
        Ok(Response::new(GetExperimentEventsResponse {
            events: self.0.store.events(id).map_err(internal)?,
        }))
    }

    async fn list_schedules(
        &self,
        request: Request<ListSchedulesRequest>,
    ) -> Result<Response<ListSchedulesResponse>, Status> {
        require(&request, Role::Viewer, "listing schedules")?;
        let s = &self.0.scheduler;
        Ok(Response::new(ListSchedulesResponse {
            schedules: s.list(&self.0.store).map_err(internal)?,
            blackouts: s.blackouts(chrono::Utc::now()),
            source: s.file.source.clone(),
            starting_deadline: s.file.starting_deadline.try_into().ok(),
        }))
    }

    async fn pause_schedule(
        &self,
        request: Request<PauseScheduleRequest>,
    ) -> Result<Response<Schedule>, Status> {
        let caller = require(&request, Role::Operator, "pausing or resuming a schedule")?;
        let req = request.into_inner();
        let s = &self.0.scheduler;
        let action = if req.paused {
            "schedule.pause"
        } else {
            "schedule.resume"
        };
        if !s
            .set_paused(
                &self.0.store,
                &req.name,
                req.paused,
                &entry(&caller, action, &req.name, ""),
                chrono::Utc::now(),
            )
            .map_err(unrecorded)?
        {
            let names: Vec<&str> = s.file.entries.iter().map(|e| e.name.as_str()).collect();
            return Err(Status::not_found(format!(
                "no schedule {:?} (schedules: {})",
                req.name,
                if names.is_empty() {
                    "none loaded".to_owned()
                } else {
                    names.join(", ")
                }
            )));
        }
        s.list(&self.0.store)
            .map_err(internal)?
            .into_iter()
            .find(|e| e.name == req.name)
            .map(Response::new)
            .ok_or_else(|| Status::internal("schedule vanished"))
    }

    async fn list_schedule_runs(
        &self,
        request: Request<ListScheduleRunsRequest>,
    ) -> Result<Response<ListScheduleRunsResponse>, Status> {
        require(&request, Role::Viewer, "listing schedule runs")?;
        let req = request.get_ref();
        let since = req.since.as_ref().map_or(SystemTime::UNIX_EPOCH, time);
        let limit = if req.limit == 0 { 100_000 } else { req.limit };
        Ok(Response::new(ListScheduleRunsResponse {
            runs: self
                .0
                .store
                .schedule_runs(since, &req.schedule, limit)
                .map_err(internal)?,
        }))
    }

    async fn open_game_day(
        &self,
        request: Request<OpenGameDayRequest>,
    ) -> Result<Response<GameDay>, Status> {
        let caller = require(&request, Role::Admin, "opening a game day")?;
        let req = request.into_inner();
        let now = SystemTime::now();
        let start = req.start.as_ref().map_or(now, time);
        let end = req
            .end
            .as_ref()
            .map(time)
            .ok_or_else(|| Status::invalid_argument("a game day needs an end"))?;
        if req.title.trim().is_empty() {
            return Err(Status::invalid_argument("a game day needs a title"));
        }
        if end <= start || end <= now {
            return Err(Status::invalid_argument(
                "the game day's end must be after its start and in the future",
            ));
        }
        if end.duration_since(start).unwrap_or_default() > std::time::Duration::from_secs(24 * 3600)
        {
            return Err(Status::invalid_argument("a game day lasts at most 24h"));
        }
        let cap = &self.0.config.gameday_limits.blast_radius;
        let pick = |asked: u32, max: u32, what: &str| -> Result<u32, Status> {
            match asked {
                0 => Ok(max),
                n if n <= max => Ok(n),
                n => Err(Status::invalid_argument(format!(
                    "{what} {n} exceeds the game-day limit blast_radius.{what} = {max} ({})",
                    self.0.config.gameday_limits_source
                ))),
            }
        };
        let max_concurrent = pick(req.max_concurrent, cap.max_concurrent, "max_concurrent")?;
        let max_nodes = pick(req.max_nodes, cap.max_nodes, "max_nodes")?;
        for g in self.0.store.gamedays(now).map_err(internal)? {
            let overlaps = g.state != GameDayState::Closed as i32
                && g.start.as_ref().map_or(now, time) < end
                && start < g.end.as_ref().map_or(now, time);
            if overlaps {
                return Err(Status::already_exists(format!(
                    "game day {} ({}) overlaps that window; close it first",
                    g.id, g.title
                )));
            }
        }
        let id = self
            .0
            .store
            .write(|w| {
                let id = w.create_gameday(&crate::store::NewGameDay {
                    title: &req.title,
                    announcement: &req.announcement,
                    start,
                    end,
                    max_concurrent,
                    max_nodes,
                    opened_by: &caller.name,
                })?;
                w.audit(
                    &entry(&caller, "gameday.open", &id, &req.title),
                    crate::store::ms(now),
                )?;
                Ok(id)
            })
            .map_err(unrecorded)?;
        self.gameday(&id)
    }

    async fn close_game_day(
        &self,
        request: Request<CloseGameDayRequest>,
    ) -> Result<Response<GameDay>, Status> {
        let caller = require(&request, Role::Admin, "closing a game day")?;
        let req = request.into_inner();
        let id = self.pick_gameday(&req.id, true)?;
        let reason = if req.reason.is_empty() {
            format!("closed by {}", caller.name)
        } else {
            format!("closed by {}: {}", caller.name, req.reason)
        };
        let running = self
            .0
            .running()
            .values()
            .filter(|r| r.gameday == id)
            .count();
        self.0
            .store
            .audited(
                &entry(
                    &caller,
                    "gameday.close",
                    &id,
                    &format!("{reason}; ended {running}"),
                ),
                |w| w.close_gameday(&id, &reason, SystemTime::now()),
            )
            .map_err(unrecorded)?;
        self.0
            .end_gameday_experiments(&id, &format!("game day {id} closed by {}", caller.name));
        self.gameday(&id)
    }

    async fn add_game_day_note(
        &self,
        request: Request<AddGameDayNoteRequest>,
    ) -> Result<Response<GameDay>, Status> {
        let caller = require(&request, Role::Operator, "noting a game day")?;
        let req = request.into_inner();
        if req.text.trim().is_empty() {
            return Err(Status::invalid_argument("a note needs text"));
        }
        let kind = NoteKind::try_from(req.kind).unwrap_or(NoteKind::Unspecified);
        if kind == NoteKind::Unspecified {
            return Err(Status::invalid_argument(
                "a note is an issue, a lesson or a note",
            ));
        }
        let id = self.pick_gameday(&req.id, false)?;
        self.0
            .store
            .audited(&entry(&caller, "gameday.note", &id, &req.text), |w| {
                w.add_gameday_note(
                    &id,
                    &GameDayNote {
                        kind: kind as i32,
                        text: req.text.clone(),
                        by: caller.name.clone(),
                        at: None,
                    },
                )
            })
            .map_err(unrecorded)?;
        self.gameday(&id)
    }

    async fn list_game_days(
        &self,
        request: Request<ListGameDaysRequest>,
    ) -> Result<Response<ListGameDaysResponse>, Status> {
        require(&request, Role::Viewer, "listing game days")?;
        Ok(Response::new(ListGameDaysResponse {
            gamedays: self.0.store.gamedays(SystemTime::now()).map_err(internal)?,
        }))
    }

    async fn add_finding(
        &self,
        request: Request<AddFindingRequest>,
    ) -> Result<Response<Finding>, Status> {
        let caller = require(&request, Role::Operator, "recording a finding")?;
        let req = request.into_inner();
        if req.title.trim().is_empty() {
            return Err(Status::invalid_argument("a finding needs a title"));
        }
        let exp = self
            .0
            .store
            .experiment(&req.experiment_id)
            .map_err(internal)?
            .ok_or_else(|| Status::not_found(format!("no experiment {:?}", req.experiment_id)))?;
        let status = match FindingStatus::try_from(req.status).unwrap_or(FindingStatus::Unspecified)
        {
            FindingStatus::Unspecified => FindingStatus::Open,
            s => s,
        };
        let f = self
            .0
            .store
            .write(|w| {
                let f = w.add_finding(&Finding {
                    experiment_id: exp.id.clone(),
                    scenario: exp.scenario.clone(),
                    title: req.title.clone(),
                    status: status as i32,
                    detail: req.detail.clone(),
                    by: caller.name.clone(),
                    ..Default::default()
                })?;
                w.audit(
                    &entry(&caller, "finding.add", &f.id, &f.title),
                    crate::store::ms(SystemTime::now()),
                )?;
                Ok(f)
            })
            .map_err(unrecorded)?;
        Ok(Response::new(f))
    }

    async fn update_finding(
        &self,
        request: Request<UpdateFindingRequest>,
    ) -> Result<Response<Finding>, Status> {
        let caller = require(&request, Role::Operator, "updating a finding")?;
        let req = request.into_inner();
        let status = FindingStatus::try_from(req.status).unwrap_or(FindingStatus::Unspecified);
        if status == FindingStatus::Unspecified {
            return Err(Status::invalid_argument(
                "a finding is open, mitigated or resolved",
            ));
        }
        let updated = self
            .0
            .store
            .write(|w| {
                let updated = w.update_finding(&req.id, status)?;
                if updated.is_some() {
                    w.audit(
                        &entry(
                            &caller,
                            "finding.update",
                            &req.id,
                            &format!("{status:?}").to_lowercase(),
                        ),
                        crate::store::ms(SystemTime::now()),
                    )?;
                }
                Ok(updated)
            })
            .map_err(unrecorded)?;
        updated
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("no finding {:?}", req.id)))
    }

    async fn list_findings(
        &self,
        request: Request<ListFindingsRequest>,
    ) -> Result<Response<ListFindingsResponse>, Status> {
        require(&request, Role::Viewer, "listing findings")?;
        let since = request
            .get_ref()
            .since
            .as_ref()
            .map_or(SystemTime::UNIX_EPOCH, time);
        Ok(Response::new(ListFindingsResponse {
            findings: self.0.store.findings(since).map_err(internal)?,
        }))
    }

    async fn readiness(
        &self,
        request: Request<ReadinessRequest>,
    ) -> Result<Response<ReadinessResponse>, Status> {
        // A dry run makes the target's agent run its self-test (a disarmed attach and
        // a cgroup): an action on a node, so an operator's, not a viewer's.
        require(&request, Role::Operator, "a readiness dry run")?;
        Ok(Response::new(
            start::readiness(&self.0, request.into_inner().spec_yaml).await,
        ))
    }

    async fn list_audit(
        &self,
        request: Request<ListAuditRequest>,
    ) -> Result<Response<ListAuditResponse>, Status> {
        // Who did what is for admins.
        require(&request, Role::Admin, "reading the audit log")?;
        let req = request.into_inner();
        let since = req.since.as_ref().map_or(SystemTime::UNIX_EPOCH, time);
        let limit = if req.limit == 0 {
            1000
        } else {
            req.limit.min(100_000)
        };
        Ok(Response::new(ListAuditResponse {
            entries: self.0.store.audit_log(since, limit).map_err(internal)?,
        }))
    }
}

fn time(t: &prost_types::Timestamp) -> SystemTime {
    SystemTime::try_from(*t).unwrap_or(SystemTime::UNIX_EPOCH)
}

impl Chaos {
    fn gameday(&self, id: &str) -> Result<Response<GameDay>, Status> {
        self.0
            .store
            .gameday(id, SystemTime::now())
            .map_err(internal)?
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("no game day {id:?}")))
    }

    /// `id`, or the open game day (or with `open_only` false, the latest one).
    fn pick_gameday(&self, id: &str, open_only: bool) -> Result<String, Status> {
        let all = self.0.store.gamedays(SystemTime::now()).map_err(internal)?;
        if !id.is_empty() {
            let g = all
                .iter()
                .find(|g| g.id == id)
                .ok_or_else(|| Status::not_found(format!("no game day {id:?}")))?;
            if open_only && g.state == GameDayState::Closed as i32 {
                return Err(Status::failed_precondition(format!(
                    "game day {id} is already closed"
                )));
            }
            return Ok(g.id.clone());
        }
        let pick = all
            .iter()
            .rev()
            .find(|g| g.state != GameDayState::Closed as i32)
            .or(if open_only { None } else { all.last() });
        pick.map(|g| g.id.clone()).ok_or_else(|| {
            Status::failed_precondition("no game day is open (faultline gameday open)")
        })
    }
}
