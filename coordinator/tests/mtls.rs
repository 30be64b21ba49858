//! The real coordinator binary on loopback: agents without a certificate, with one from
//! another CA, with an expired one, or posing as another node are refused; a valid
//! agent registers. gRPC health and reflection answer standard clients.
use std::{
    path::Path,
    time::{Duration, Instant},
};

use faultline_proto::v1::{
    AgentMessage, ListNodesRequest, Register, agent_message::Body,
    agent_service_client::AgentServiceClient, chaos_service_client::ChaosServiceClient,
};
use tokio_stream::StreamExt;
use tonic::Code;

mod common;

use common::{Coordinator, authed, channel};

/// A coordinator with node-1's certificate, plus a second CA and an expired
/// certificate in its directory to present.
fn start(tag: &str) -> Coordinator {
    let c = common::start(tag, &["node-1".to_owned()], common::Role::Viewer, &[]);
    let d = |p: &str| c.dir.join(p).display().to_string();
    common::run(&[
        "certs",
        "init",
        "--dir",
        &d("other-ca"),
        "--agents",
        "node-1",
    ]);
    common::run(&["certs", "agent", "--dir", &d("tls"), "stale", "--expired"]);
    c
}

/// Opens an agent session registering as `node`; Ok once the coordinator accepted it.
async fn register(
    c: &Coordinator,
    identity: Option<(&Path, &str)>,
    node: &str,
) -> Result<(), (Code, String)> {
    let ch = channel(c, identity)
        .await
        .map_err(|e| (Code::Unavailable, format!("{e:?}")))?;
    let hello = AgentMessage {
        body: Some(Body::Register(Register {
            node_name: node.into(),
            ..Default::default()
        })),
    };
    // Keep the stream open (pending) after the Register so the session lives.
    let outbound = tokio_stream::iter(vec![hello]).chain(tokio_stream::pending());
    let mut client = AgentServiceClient::new(ch);
    let resp = client
        .session(outbound)
        .await
        .map_err(|s| (s.code(), s.message().to_owned()))?;
    // Hold the session for the caller's check.
    tokio::spawn(async move {
        let mut s = resp.into_inner();
        while let Ok(Some(_)) = s.message().await {}
        drop(client);
    });
    Ok(())
}

async fn connected(c: &Coordinator) -> Vec<String> {
    let mut chaos = ChaosServiceClient::new(channel(c, None).await.unwrap());
    chaos
        .list_nodes(authed(c, ListNodesRequest {}))
        .await
        .unwrap()
        .into_inner()
        .nodes
        .into_iter()
        .filter(|n| n.connected)
        .map(|n| n.name)
        .collect()
}

/// The handshake (TLS 1.3: the first read after it) failed: no application status.
fn refused_by_tls(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
    )
}

#[tokio::test]
async fn agents_need_a_current_certificate_from_the_faultline_ca_for_their_own_name() {
    let c = start("agents");
    let tls = c.dir.join("tls");
    let other = c.dir.join("other-ca");

    let e = register(&c, None, "node-1").await.unwrap_err();
    assert_eq!(e.0, Code::Unauthenticated, "no certificate: {e:?}");

    let e = register(&c, Some((&other, "node-1")), "node-1")
        .await
        .unwrap_err();
    assert!(refused_by_tls(e.0), "other CA: {e:?}");

    let e = register(&c, Some((&tls, "stale")), "stale")
        .await
        .unwrap_err();
    assert!(refused_by_tls(e.0), "expired: {e:?}");

    let e = register(&c, Some((&tls, "node-1")), "node-2")
        .await
        .unwrap_err();
    assert_eq!(e.0, Code::PermissionDenied, "posing as another node: {e:?}");
    assert!(connected(&c).await.is_empty());

    register(&c, Some((&tls, "node-1")), "node-1")
        .await
        .expect("valid agent");
    let until = Instant::now() + Duration::from_secs(5);
    while connected(&c).await != ["node-1"] {
        assert!(Instant::now() < until, "node-1 never listed as connected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn health_and_reflection_answer_standard_clients() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let c = start("reflection");
    let ch = channel(&c, None).await.unwrap();
    let status = HealthClient::new(ch.clone())
        .check(HealthCheckRequest {
            service: "faultline.v1.ChaosService".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = ServerReflectionClient::new(ch)
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        stream.message().await.unwrap().unwrap().message_response
    else {
        panic!("no service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for s in [
        "faultline.v1.ChaosService",
        "faultline.v1.AgentService",
        "grpc.health.v1.Health",
    ] {
        assert!(names.iter().any(|n| n == s), "{s} not in {names:?}");
    }
}
