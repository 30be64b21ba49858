//! AgentService: one stream per agent. The TLS layer has already verified the
//! client certificate against the faultline CA; here the certificate's common name
//! must equal the node name the agent registers, so one node cannot pose as another.
use std::{
    sync::Arc,
    time::{Instant, SystemTime},
};

use faultline_proto::v1::{
    AgentMessage, CoordinatorMessage, LeaseRenewal, RemoveFault, agent_message::Body as From,
    agent_service_server::AgentService, coordinator_message::Body,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use crate::control::{Control, NodeEntry};

pub struct Agents(pub Arc<Control>);

fn certificate_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

#[tonic::async_trait]
impl AgentService for Agents {
    type SessionStream = ReceiverStream<Result<CoordinatorMessage, Status>>;

    async fn session(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let identity = request
            .peer_certs()
            .and_then(|certs| certs.first().and_then(|c| certificate_name(c)))
            .ok_or_else(|| {
                Status::unauthenticated(
                    "agents must present a client certificate signed by the faultline CA",
                )
            })?;
        let mut inbound = request.into_inner();
        let register = match inbound.message().await? {
            Some(AgentMessage {
                body: Some(From::Register(r)),
            }) => r,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message must be Register",
                ));
            }
        };
        if register.node_name != identity {
            return Err(Status::permission_denied(format!(
                "certificate is for '{identity}' but the agent registers as '{}'",
                register.node_name
            )));
        }
        let c = self.0.clone();
        let node = register.node_name.clone();
        let session = c.next_id();
        let (tx, rx) = mpsc::channel(256);
        let replaced = c.nodes().insert(
            node.clone(),
            NodeEntry {
                info: register,
                session: Some((session, tx.clone())),
                last_heartbeat: SystemTime::now(),
                last_sample: None,
            },
        );
        if replaced.is_some_and(|e| e.session.is_some()) {
            warn!(%node, "a new session replaces the node's previous one");
        }
        info!(%node, session, "agent registered");
        tokio::spawn(async move {
            loop {
                let msg = match inbound.message().await {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    Err(e) => {
                        warn!(%node, "session error: {e}");
                        break;
                    }
                };
                match msg.body {
                    Some(From::Heartbeat(h)) => heartbeat(&c, &node, &tx, h.lease_ids),
                    Some(From::Ack(a)) => {
                        if let Some(g) = &a.guard {
                            // Recorded whether or not an experiment still waits for it
                            // (after a reconnect the experiment may have ended), and
                            // confirmed so the agent stops resending it.
                            c.record_guard_report(&node, g);
                            c.confirm_report(std::slice::from_ref(&node), &g.report_id);
                        }
                        c.deliver(a);
                    }
                    Some(From::Probe(p)) => c.deliver_probe(p),
                    Some(From::Sample(s)) => {
                        if let Some(e) = c.nodes().get_mut(&node) {
                            e.last_sample = Some(s.clone());
                        }
                        let _ = c.samples.send((node.clone(), s));
                    }
                    Some(From::Register(_)) | None => {}
                }
            }
            let mut nodes = c.nodes();
            if let Some(e) = nodes.get_mut(&node)
                && e.session.as_ref().is_some_and(|(id, _)| *id == session)
            {
                e.session = None;
            }
            info!(%node, session, "agent disconnected");
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Renews the leases the agent holds effects for, and orders removal of effects under
/// leases the coordinator does not know (expired, or from before a restart).
fn heartbeat(
    c: &Control,
    node: &str,
    tx: &mpsc::Sender<Result<CoordinatorMessage, Status>>,
    lease_ids: Vec<String>,
) {
    let now = Instant::now();
    if let Some(e) = c.nodes().get_mut(node) {
        e.last_heartbeat = SystemTime::now();
    }
    let mut renewed = Vec::new();
    for id in lease_ids {
        let ours = c
            .leases
            .get(&id)
            .is_some_and(|l| l.nodes.iter().any(|n| n == node));
        if ours && c.leases.renew(&id, now) {
            renewed.push(id);
        } else {
            warn!(%node, lease = %id, "agent holds effects under an unknown lease; ordering removal");
            let _ = tx.try_send(Ok(CoordinatorMessage {
                body: Some(Body::Remove(RemoveFault {
                    lease_id: id.clone(),
                    order_id: String::new(),
                    request_id: format!("stale-{id}"),
                })),
            }));
        }
    }
    let _ = tx.try_send(Ok(CoordinatorMessage {
        body: Some(Body::Renewal(LeaseRenewal {
            lease_ids: renewed,
            ttl: c.config.lease_ttl.try_into().ok(),
        })),
    }));
}
