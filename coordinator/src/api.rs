//! ChaosService (gRPC, for people and CI) and the HTTP surface (`POST /abort`,
//! `GET /status`, `GET /healthz`). Every call but health needs a bearer token; the
//! role each needs is stated at the call.
use std::{sync::Arc, time::Duration};

use axum::{
    Json, Router,
    extract::{Query, State},
    http::{HeaderMap, StatusCode},
    routing::{get, post},
};
use faultline_proto::v1::{
    AbortRequest, AbortResponse, ClearKillSwitchRequest, ClearKillSwitchResponse, Experiment,
    ExperimentEvent, GetExperimentRequest, ListExperimentsRequest, ListExperimentsResponse,
    ListNodesRequest, ListNodesResponse, Node, Phase, StartRequest, StatusRequest, StatusResponse,
    chaos_service_server::ChaosService,
};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::{
    auth::{Role, TokenFile, require},
    control::{Control, Running},
    experiment,
    leases::Refusal,
    plan,
};

pub struct Chaos(pub Arc<Control>);

fn internal(e: anyhow::Error) -> Status {
    Status::internal(format!("{e:#}"))
}

fn refusal(r: Refusal) -> Status {
    let msg = r.to_string();
    match r {
        Refusal::KillSwitch(_) => Status::failed_precondition(msg),
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
        let req = request.into_inner();
        let c = self.0.clone();
        let views = c.node_views();
        let ctx = plan::Context {
            settings: &c.config.settings,
            limits: &c.config.limits,
            limits_source: &c.config.limits_source,
            nodes: &views,
        };
        let plan = if req.spec_yaml.is_empty() && req.overrides_yaml.is_empty() {
            plan::from_request(&req, &ctx)?
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
        let lease = match c.grant(&id, &plan.nodes) {
            Ok(l) => l,
            Err(r) if r.is_busy() && req.wait_for_lease => {
                let _ = tx
                    .send(Ok(ExperimentEvent {
                        experiment_id: id.clone(),
                        at: Some(std::time::SystemTime::now().into()),
                        phase: Phase::Queued as i32,
                        message: format!("queued: {r}"),
                        ..Default::default()
                    }))
                    .await;
                let c2 = c.clone();
                tokio::spawn(async move {
                    loop {
                        let freed = c2.lease_freed.notified();
                        match c2.grant(&id, &plan.nodes) {
                            Ok(lease) => {
                                launch(&c2, seq, lease, plan, tx);
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
                return Ok(Response::new(ReceiverStream::new(rx)));
            }
            Err(r) => return Err(refusal(r)),
        };
        tracing::info!(caller = %caller.name, experiment = %id, "start");
        launch(&c, seq, lease, plan, tx);
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn abort(
        &self,
        request: Request<AbortRequest>,
    ) -> Result<Response<AbortResponse>, Status> {
        let caller = require(&request, Role::Operator, "abort")?;
        let req = request.into_inner();
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
        tracing::info!(caller = %caller.name, "kill switch cleared");
        self.0.leases.clear_kill_switch();
        Ok(Response::new(ClearKillSwitchResponse {}))
    }

    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        require(&request, Role::Viewer, "status")?;
        Ok(Response::new(StatusResponse {
            kill_switch_engaged: self.0.leases.kill_switch().is_some(),
            running: self.running_experiments(),
            connected_agents: self.0.connected_nodes().len() as u32,
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
        let limit = match request.get_ref().limit {
            0 => 50,
            n => n.min(1000),
        };
        Ok(Response::new(ListExperimentsResponse {
            experiments: self.0.store.experiments(limit).map_err(internal)?,
        }))
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
}

/// Records the experiment and starts its task.
fn launch(
    c: &Arc<Control>,
    seq: u64,
    lease: crate::leases::Lease,
    plan: plan::Plan,
    events: experiment::Events,
) {
    let probes: Vec<String> = plan.health.probes.iter().map(|p| p.name.clone()).collect();
    let new = crate::store::NewExperiment {
        name: &plan.name,
        nodes: &lease.nodes,
        fault: &plan.fault,
        scenario: plan.scenario.as_str(),
        spec_yaml: &plan.spec_yaml,
        probes: &probes,
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
        },
    );
    let exp = experiment::Experiment {
        id,
        lease_id: lease.id,
        plan,
    };
    tokio::spawn(experiment::run(c.clone(), exp, events, abort_rx, done_tx));
}

// ------------------------------------------------------------------ HTTP

#[derive(Clone)]
pub struct Http {
    pub control: Arc<Control>,
    pub tokens: Arc<TokenFile>,
}

#[derive(serde::Deserialize, Default)]
struct AbortQuery {
    #[serde(default)]
    experiment: String,
    #[serde(default)]
    reason: String,
}

type HttpResult = (StatusCode, Json<serde_json::Value>);

fn http_error(s: &Status) -> HttpResult {
    let code = match s.code() {
        tonic::Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
        tonic::Code::NotFound => StatusCode::NOT_FOUND,
        tonic::Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::BAD_REQUEST,
    };
    (code, Json(json!({"error": s.message()})))
}

fn http_caller(
    h: &Http,
    headers: &HeaderMap,
    role: Role,
    action: &str,
) -> Result<String, HttpResult> {
    let header = headers.get("authorization").and_then(|v| v.to_str().ok());
    let caller = h.tokens.authorize(header).map_err(|s| http_error(&s))?;
    caller.allow(role, action).map_err(|s| http_error(&s))?;
    Ok(caller.name)
}

async fn http_abort(
    State(h): State<Http>,
    headers: HeaderMap,
    Query(q): Query<AbortQuery>,
) -> HttpResult {
    let caller = match http_caller(&h, &headers, Role::Operator, "abort") {
        Ok(c) => c,
        Err(e) => return e,
    };
    match h.control.abort(&q.experiment, &q.reason, &caller).await {
        Ok(out) => (
            if out.unconfirmed.is_empty() {
                StatusCode::OK
            } else {
                StatusCode::GATEWAY_TIMEOUT
            },
            Json(json!({
                "aborted": out.experiment_ids,
                "took_ms": out.took.as_secs_f64() * 1e3,
                "kill_switch_engaged": true,
                "unconfirmed_nodes": out.unconfirmed,
            })),
        ),
        Err(s) => http_error(&s),
    }
}

async fn http_status(State(h): State<Http>, headers: HeaderMap) -> HttpResult {
    if let Err(e) = http_caller(&h, &headers, Role::Viewer, "status") {
        return e;
    }
    let running: Vec<String> = h.control.running().keys().cloned().collect();
    (
        StatusCode::OK,
        Json(json!({
            "kill_switch": h.control.leases.kill_switch(),
            "running": running,
            "connected_agents": h.control.connected_nodes(),
        })),
    )
}

pub fn http_router(h: Http) -> Router {
    Router::new()
        .route("/abort", post(http_abort))
        .route("/status", get(http_status))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(h)
}
