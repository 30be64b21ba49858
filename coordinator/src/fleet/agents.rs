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

use crate::fleet::control::{Control, NodeEntry, Session};

pub struct Agents(pub Arc<Control>);

/// The node name an agent certificate carries (its CN), or why the certificate is
/// not an agent's: only a subject with OU `faultline-agent` names a node, so a
/// client certificate issued for a tool cannot register as one.
fn agent_identity(der: &[u8]) -> Result<String, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("unreadable client certificate: {e}"))?;
    let subject = cert.subject();
    let cn = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or("the client certificate has no common name")?
        .to_owned();
    let agent = subject
        .iter_organizational_unit()
        .any(|ou| ou.as_str().ok() == Some(crate::api::certs::AGENT_UNIT));
    if !agent {
        return Err(format!(
            "certificate '{cn}' is not an agent certificate (its subject needs OU={}); \
             client certificates of tools cannot register as nodes",
            crate::api::certs::AGENT_UNIT
        ));
    }
    Ok(cn)
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
            .and_then(|certs| certs.first().map(|c| agent_identity(c)))
            .ok_or_else(|| {
                Status::unauthenticated(
                    "agents must present a client certificate signed by the faultline CA",
                )
            })?
            .map_err(Status::permission_denied)?;
        let peer = request
            .remote_addr()
            .map_or_else(|| "unknown".to_owned(), |a| a.to_string());
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
        if *c.closing.borrow() {
            return Err(Status::unavailable("the coordinator is shutting down"));
        }
        let node = register.node_name.clone();
        let session = c.next_id();
        let (tx, rx) = mpsc::channel(256);
        attach(
            &c,
            register,
            Session {
                id: session,
                tx: tx.clone(),
                peer: peer.clone(),
                last_seen: Instant::now(),
            },
        )?;
        info!(%node, session, %peer, "agent registered");
        let mut closing = c.closing.subscribe();
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    m = inbound.message() => match m {
                        Ok(Some(m)) => m,
                        Ok(None) => break,
                        Err(e) => {
                            warn!(%node, "session error: {e}");
                            break;
                        }
                    },
                    _ = closing.wait_for(|c| *c) => break,
                };
                // A session that was replaced (it had gone silent) hears nothing more.
                if !seen(&c, &node, session) {
                    break;
                }
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
                && e.session.as_ref().is_some_and(|s| s.id == session)
            {
                e.session = None;
            }
            info!(%node, session, "agent disconnected");
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Makes `session` the node's. While the node's current session is live (it spoke
/// within `Session::STALE`), a second agent presenting the same identity is refused:
/// the agent that holds the node's effects keeps its session, whatever a copy of its
/// certificate does elsewhere. A stale session (its agent restarted behind a
/// half-open connection, or the network cut it) is replaced, and told so.
fn attach(
    c: &Control,
    info: faultline_proto::v1::Register,
    session: Session,
) -> Result<(), Status> {
    let node = info.node_name.clone();
    let mut nodes = c.nodes();
    let old = nodes.get_mut(&node).and_then(|e| e.session.take());
    if let Some(old) = old {
        let silent = old.last_seen.elapsed();
        if silent < Session::STALE {
            let refused = format!(
                "node {node} already has a live agent session (from {}, last heard {} ms ago); \
                 a second agent with {node}'s certificate is refused",
                old.peer,
                silent.as_millis()
            );
            nodes.get_mut(&node).expect("taken from it").session = Some(old);
            warn!(%node, peer = %session.peer, "{refused}");
            return Err(Status::already_exists(refused));
        }
        warn!(%node, old = %old.peer, new = %session.peer, silent_ms = silent.as_millis() as u64,
              "a new session replaces the node's silent one");
        let _ = old.tx.try_send(Err(Status::aborted(format!(
            "this session was silent for {} ms and is replaced by a new session of {node} from {}",
            silent.as_millis(),
            session.peer
        ))));
    }
    nodes.insert(
        node,
        NodeEntry {
            info,
            session: Some(session),
            last_heartbeat: SystemTime::now(),
            last_sample: None,
        },
    );
    Ok(())
}

/// Notes that session `id` of `node` spoke; false if it is no longer the node's.
fn seen(c: &Control, node: &str, id: u64) -> bool {
    match c.nodes().get_mut(node).and_then(|e| e.session.as_mut()) {
        Some(s) if s.id == id => {
            s.last_seen = Instant::now();
            true
        }
        _ => false,
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
