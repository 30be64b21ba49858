//! Control-plane benchmark against the real coordinator binary on loopback, with
//! simulated agents in this process (each its own mTLS connection and certificate,
//! acknowledging orders at once, heartbeating and sampling at 1 Hz):
//!
//! - abort latency p50/p99 over 100 aborts with 1 and with 100 agents connected
//!   (gRPC Abort until every agent confirmed removal, as the coordinator reports it);
//! - lease grant p99: a Start request until its lease-granted event, 100 times;
//! - coordinator CPU and RSS with 1000 agents streaming 1 Hz metrics for 30 s.
//!
//! The real-agent abort (eBPF loss fault in a network namespace) is in
//! `tests/benches/abort.rs`.
use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use faultline_proto::v1::{
    AbortRequest, Ack, AgentMessage, Capabilities, ClearKillSwitchRequest, CoordinatorMessage,
    EffectState, FaultSpec, Heartbeat, LossFault, MetricSample, Register, StartRequest,
    agent_message::Body, agent_service_client::AgentServiceClient,
    chaos_service_client::ChaosServiceClient, coordinator_message::Body as In, fault_spec::Fault,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

#[path = "../tests/common/mod.rs"]
mod common;

use common::{Coordinator, authed};

const AGENTS: usize = 1000;

fn start() -> Coordinator {
    let names: Vec<String> = (0..AGENTS).map(name).collect();
    common::start(
        "bench",
        &names,
        common::Role::Admin,
        &["--baseline", "1s", "--recovery", "1s"],
    )
}

fn name(i: usize) -> String {
    format!("sim-{i:04}")
}

/// One simulated agent: acknowledges every order at once, heartbeats and samples at 1 Hz.
async fn sim_agent(url: String, dir: PathBuf, node: String, connected: mpsc::Sender<()>) {
    let tls = dir.join("tls");
    let ch = common::connect(&url, &tls.join("ca.pem"), Some((&tls, &node)))
        .await
        .expect("connect");
    let (tx, rx) = mpsc::channel(64);
    tx.send(msg(Body::Register(Register {
        node_name: node.clone(),
        capabilities: Some(Capabilities {
            bpf: true,
            cgroup: "v2".into(),
            ..Default::default()
        }),
        ..Default::default()
    })))
    .await
    .unwrap();
    let mut inbound = AgentServiceClient::new(ch)
        .session(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    connected.send(()).await.unwrap();
    let mut leases: Vec<String> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            m = inbound.message() => match m {
                Ok(Some(CoordinatorMessage { body: Some(b) })) => match b {
                    In::Apply(a) => {
                        leases.push(a.lease_id);
                        let _ = tx.send(ack(&a.order_id, EffectState::Applied)).await;
                    }
                    In::Remove(r) => {
                        leases.retain(|l| !r.lease_id.is_empty() && *l != r.lease_id);
                        let _ = tx.send(ack(&r.request_id, EffectState::Removed)).await;
                    }
                    _ => {}
                },
                _ => return,
            },
            _ = tick.tick() => {
                let _ = tx.send(msg(Body::Heartbeat(Heartbeat { lease_ids: leases.clone() }))).await;
                let _ = tx.send(msg(Body::Sample(MetricSample {
                    at: Some(std::time::SystemTime::now().into()),
                    cpu_busy_percent: 3.0,
                    memory_used_percent: 20.0,
                    ..Default::default()
                }))).await;
            }
        }
    }
}

fn msg(b: Body) -> AgentMessage {
    AgentMessage { body: Some(b) }
}

fn ack(id: &str, state: EffectState) -> AgentMessage {
    msg(Body::Ack(Ack {
        order_id: id.into(),
        state: state as i32,
        detail: String::new(),
        guard: None,
    }))
}

fn quantiles(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    (q(0.5), q(0.99), *v.last().unwrap())
}

async fn connect_agents(c: &Coordinator, from: usize, to: usize) {
    let (done, mut up) = mpsc::channel(AGENTS);
    for i in from..to {
        tokio::spawn(sim_agent(
            c.url.clone(),
            c.dir.clone(),
            name(i),
            done.clone(),
        ));
    }
    for _ in from..to {
        up.recv().await.unwrap();
    }
}

async fn aborts(chaos: &mut ChaosServiceClient<Channel>, c: &Coordinator, n: usize) -> Vec<f64> {
    let mut took = Vec::new();
    for _ in 0..n {
        let r = chaos
            .abort(authed(
                c,
                AbortRequest {
                    experiment_id: String::new(),
                    reason: "bench".into(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        let d = r.took.unwrap();
        took.push(d.seconds as f64 * 1e3 + f64::from(d.nanos) / 1e6);
        chaos
            .clear_kill_switch(authed(c, ClearKillSwitchRequest {}))
            .await
            .unwrap();
    }
    took
}

fn proc_stat(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let ticks = (fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap()) / 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    (ticks, rss_kib / 1024.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let c = start();
    let mut chaos = ChaosServiceClient::new(common::channel(&c, None).await.expect("connect"));

    connect_agents(&c, 0, 1).await;
    let (p50, p99, max) = quantiles(aborts(&mut chaos, &c, 100).await);
    println!(
        "abort, 1 simulated agent, 100 aborts: p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms"
    );

    // Lease grant: Start until the lease-granted event, then end the experiment.
    let mut grants = Vec::new();
    for _ in 0..100 {
        let spec = FaultSpec {
            fault: Some(Fault::Loss(LossFault {
                interface: "eth0".into(),
                percent: 1.0,
                ..Default::default()
            })),
            duration: Some(Duration::from_secs(30).try_into().unwrap()),
        };
        let t0 = Instant::now();
        let mut events = chaos
            .start(authed(
                &c,
                StartRequest {
                    nodes: vec![name(0)],
                    fault: Some(spec),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        let first = events.message().await.unwrap().unwrap();
        grants.push(t0.elapsed().as_secs_f64() * 1e3);
        assert!(first.message.starts_with("lease "), "{}", first.message);
        chaos
            .abort(authed(
                &c,
                AbortRequest {
                    experiment_id: first.experiment_id,
                    reason: String::new(),
                },
            ))
            .await
            .unwrap();
        chaos
            .clear_kill_switch(authed(&c, ClearKillSwitchRequest {}))
            .await
            .unwrap();
    }
    let (p50, p99, max) = quantiles(grants);
    println!(
        "lease grant (Start -> lease event), 100 grants: p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms"
    );

    connect_agents(&c, 1, 100).await;
    let (p50, p99, max) = quantiles(aborts(&mut chaos, &c, 100).await);
    println!(
        "abort, 100 simulated agents, 100 aborts: p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms"
    );

    connect_agents(&c, 100, AGENTS).await;
    let pid = c.child.id();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (cpu0, _) = proc_stat(pid);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(30)).await;
    let (cpu1, rss) = proc_stat(pid);
    let share = 100.0 * (cpu1 - cpu0) / t0.elapsed().as_secs_f64();
    println!(
        "{AGENTS} simulated agents, 1 Hz heartbeats + metric samples, 30 s: coordinator CPU {share:.1}% of one core, RSS {rss:.0} MiB"
    );
    let (p50, p99, max) = quantiles(aborts(&mut chaos, &c, 20).await);
    println!(
        "abort, {AGENTS} simulated agents, 20 aborts: p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms"
    );
    drop(c);
    // The simulated agents' tasks are still running; the runtime need not wind down.
    std::process::exit(0);
}
