//! `faultline-agent run`: the daemon. It dials the coordinator (outbound only) over
//! mTLS, holds one AgentService stream, carries out fault orders (see `orders`),
//! heartbeats the leases it holds effects for, and streams metric samples.
//!
//! It also runs what the coordinator may order besides faults, each bounded by this
//! agent's own configuration: node-side health probes (`probe`), the rollback
//! self-test (`selftest`), and the guard that travels with an order (`guard`): a
//! breach removes the effect here, without waiting for the coordinator, and its
//! report is kept and sent again after every reconnect until the coordinator
//! confirms it. Hooks and probe URLs must be loopback or in `--allow-endpoint`.
//!
//! The dead-man switch lives here: every lease has a renewal deadline (the lease TTL
//! after the last renewal the coordinator sent). A lease that passes it, because the
//! coordinator is down, stopped or unreachable, has its effects removed by the agent
//! on its own; the in-kernel deadline of each fault backs this up if the agent itself
//! is gone.
use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result};
use clap::Args;
use faultline_proto::{
    endpoint::EndpointPolicy,
    spec::Scenario,
    v1::{
        Ack, AgentMessage, Capabilities, CoordinatorMessage, EffectState, FaultCounters,
        GuardReport, Heartbeat, ProbeResults, ProbeSpec, Register, agent_message::Body as Out,
        agent_service_client::AgentServiceClient,
    },
};
use tokio::{sync::mpsc, time::Instant};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tracing::{info, warn};

use crate::{
    errors::UsageError,
    exporter::{AgentMetrics, Seen},
    guard::{AbortOnDrop, Breach},
    inject::LimitArgs,
    metrics::Sampler,
    orders::{self, Report},
};

mod dispatch;
mod pidfile;

use dispatch::{Ctx, child_report, order};
use pidfile::PidFile;
pub use pidfile::stop;

#[derive(Args, Clone, Debug)]
pub struct RunArgs {
    /// The coordinator's agent endpoint, e.g. https://10.0.0.1:7443.
    #[arg(long, env = "FAULTLINE_COORDINATOR")]
    pub coordinator: String,
    /// This node's name (default: the host name).
    #[arg(long)]
    pub node_name: Option<String>,
    /// Labels reported at registration, key=value (repeatable).
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// CA certificate (PEM) that signed the coordinator's certificate.
    #[arg(long)]
    pub ca: PathBuf,
    /// This agent's client certificate (PEM), signed by the same CA.
    #[arg(long)]
    pub cert: PathBuf,
    /// The private key (PEM) of `--cert`.
    #[arg(long)]
    pub key: PathBuf,
    /// Name to verify in the coordinator's certificate (default: the URL's host).
    #[arg(long)]
    pub tls_server_name: Option<String>,
    #[arg(long, default_value = "/sys/fs/cgroup", hide = true)]
    pub cgroup_root: PathBuf,
    /// A network (CIDR) besides loopback whose addresses hooks and node-side probes
    /// may call (repeatable). Nothing else is ever called on the coordinator's order.
    #[arg(long = "allow-endpoint")]
    pub allow_endpoints: Vec<ipnet::IpNet>,
    /// Serve Prometheus metrics (`GET /metrics`) on this address, e.g.
    /// 127.0.0.1:9464. Off unless set; the endpoint is read-only and unauthenticated,
    /// so bind it to loopback or a monitoring network.
    #[arg(long, env = "FAULTLINE_AGENT_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("'{s}' is not key=value"))
}

/// Lease TTL assumed when an order carries none.
const DEFAULT_TTL: Duration = Duration::from_secs(5);

struct Effect {
    lease_id: String,
    handle: orders::Handle,
    /// The fault kind, and the share of the node a stress fault consumes (0-1).
    scenario: Scenario,
    stress_share: Option<f64>,
    /// When the order arrived, until its effect is in place.
    pending_since: Option<Instant>,
    /// Stopped by the dead-man switch: its removal is acknowledged as Expired.
    expired: bool,
    /// Stopped by its own guard: its removal is acknowledged as GuardBreached.
    breach: Option<GuardReport>,
    _guard: Option<AbortOnDrop>,
}

#[derive(Default)]
struct State {
    effects: HashMap<String, Effect>,
    /// Renewal deadline and TTL per lease with effects.
    leases: HashMap<String, (Instant, Duration)>,
    /// RemoveFault requests waiting for their children to exit.
    removals: HashMap<String, HashSet<String>>,
    counters: (FaultCounters, FaultCounters),
    /// Each network fault's counters as last reported, and its delay line's depth.
    seen: HashMap<String, (Seen, u64)>,
    metrics: Arc<AgentMetrics>,
    /// The active fault's latest readings.
    readings: Option<faultline_proto::v1::FaultReadings>,
    sample_hz: f64,
    /// Node-side probes the coordinator ordered, by probe id.
    probes: HashMap<String, AbortOnDrop>,
    /// Guard breach acknowledgements not yet confirmed by the coordinator.
    unconfirmed: Vec<Ack>,
    policy: EndpointPolicy,
}

enum Inbound {
    Connected,
    Disconnected,
    Message(Box<CoordinatorMessage>),
}

pub async fn run(state_dir: PathBuf, limits: LimitArgs, args: RunArgs) -> Result<()> {
    crate::preflight::check_privileges()?;
    // Every child checks the limits itself; loading them here too makes a bad file
    // stop the daemon before it touches anything, not refuse every order later.
    limits.load()?;
    let endpoint = endpoint(&args)?;
    let metrics = Arc::new(AgentMetrics::new());
    let exporter = match args.metrics_listen {
        Some(addr) => Some(crate::exporter::serve(addr, metrics.clone()).await?),
        None => None,
    };
    let node_name = match &args.node_name {
        Some(n) => n.clone(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")?
            .trim()
            .to_owned(),
    };
    // One daemon per state directory, decided before anything is touched: a second
    // one's clean-up would remove the first one's effects.
    let _pid = PidFile::write(&state_dir)?;
    // What a previous, killed agent left in this namespace goes before anything else.
    for line in crate::cleanup(state_dir.clone(), args.cgroup_root.clone()).await? {
        warn!("left by an earlier agent: {line}");
    }
    let caps = crate::capabilities::detect(&args.cgroup_root).await;
    let register = AgentMessage {
        body: Some(Out::Register(Register {
            node_name: node_name.clone(),
            labels: args.labels.iter().cloned().collect(),
            capabilities: Some(Capabilities {
                kernel: caps.kernel.clone(),
                bpf: caps.bpf,
                btf: caps.btf,
                tcx: caps.tcx,
                sch_fq: caps.sch_fq,
                ifb: caps.ifb,
                tun: caps.tun,
                cgroup: caps.cgroup.to_owned(),
                latency_backend: caps.latency_backend.to_owned(),
            }),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            default_interface: crate::probe::default_interface(),
        })),
    };
    let mut global = vec!["--state-dir".to_owned(), state_dir.display().to_string()];
    global.extend(limits.to_args());

    let mut signals = crate::signals::Signals::install()?;
    let (out_tx, out_rx) = mpsc::channel::<AgentMessage>(1024);
    let (in_tx, mut in_rx) = mpsc::channel::<Inbound>(1024);
    let (rep_tx, mut rep_rx) = mpsc::unbounded_channel::<Report>();
    let (breach_tx, mut breach_rx) = mpsc::unbounded_channel::<Breach>();
    let outbox = out_tx.clone();
    tokio::spawn(link(endpoint, register, out_rx, in_tx));
    if let Some(serve) = exporter {
        tokio::spawn(serve);
        info!(listen = ?args.metrics_listen, "metrics endpoint serving /metrics");
    }
    info!(node = %node_name, coordinator = %args.coordinator, "agent started");

    let mut st = State {
        sample_hz: 1.0,
        policy: EndpointPolicy::new(args.allow_endpoints.clone()),
        metrics,
        ..State::default()
    };
    let ctx = Ctx {
        global: &global,
        reports: &rep_tx,
        breaches: &breach_tx,
        outbox: &outbox,
    };
    let mut sampler = Sampler::new(&args.cgroup_root);
    let mut next_sample = Instant::now();
    let mut heartbeat = tokio::time::interval(Duration::from_secs(1));
    let send = |m: Out| {
        // Never block the loop on a stalled link: heartbeats and samples are
        // periodic, and the coordinator re-learns state from the next heartbeat.
        let _ = out_tx.try_send(AgentMessage { body: Some(m) });
    };
    loop {
        // The dead-man switch sleeps until the first lease lapses, not on a short
        // interval: it fires on time to the millisecond, and an idle agent is not
        // woken 20 times a second (each wake-up from idle is CPU the node's
        // monitoring shows, and during a stress it reads as part of the share).
        let lease_due = st.leases.values().map(|(until, _)| *until).min();
        tokio::select! {
            name = signals.recv() => {
                info!(signal = name, "stopping: removing every effect");
                return shutdown(&mut st, &mut rep_rx).await;
            }
            Some(inbound) = in_rx.recv() => match inbound {
                Inbound::Disconnected => {
                    st.metrics.session_up.set(0);
                }
                Inbound::Connected => {
                    info!("session established");
                    st.metrics.session_up.set(1);
                    heartbeat.reset_immediately();
                    // What the coordinator has not confirmed may never have reached it.
                    for a in &st.unconfirmed {
                        send(Out::Ack(a.clone()));
                    }
                }
                Inbound::Message(m) => {
                    if let Some(body) = m.body {
                        order(&mut st, body, &ctx, &send);
                    }
                }
            },
            Some(report) = rep_rx.recv() => child_report(&mut st, report, &send),
            Some(b) = breach_rx.recv() => {
                if let Some(e) = st.effects.get_mut(&b.order_id)
                    && e.breach.is_none()
                {
                    warn!(order = %b.order_id, lease = %e.lease_id, guard = %b.report.guard,
                          observed = b.report.observed, threshold = b.report.threshold,
                          "agent-side guard breached: removing the effect");
                    st.metrics.guard_breaches.inc();
                    e.breach = Some(b.report);
                    e.handle.stop();
                }
            }
            _ = heartbeat.tick() => send(Out::Heartbeat(Heartbeat {
                lease_ids: st.leases.keys().cloned().collect(),
            })),
            _ = tokio::time::sleep_until(next_sample) => {
                next_sample = Instant::now() + Duration::from_secs_f64(1.0 / st.sample_hz);
                let (i, e) = st.counters;
                send(Out::Sample(sampler.sample(i, e, st.readings)));
            }
            _ = tokio::time::sleep_until(lease_due.unwrap_or_else(Instant::now)), if lease_due.is_some() => {
                dead_man(&mut st);
            }
        }
        // After every event, and at least once a second (the heartbeat): the gauges
        // follow the state, and the liveness probe sees the loop turning.
        export_state(&st);
        st.metrics.tick();
    }
}

fn endpoint(args: &RunArgs) -> Result<Endpoint> {
    let read = |p: &PathBuf| {
        std::fs::read(p).map_err(|e| UsageError(format!("cannot read {}: {e}", p.display())))
    };
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&args.ca)?))
        .identity(Identity::from_pem(read(&args.cert)?, read(&args.key)?));
    if let Some(name) = &args.tls_server_name {
        tls = tls.domain_name(name.clone());
    }
    Ok(Endpoint::from_shared(args.coordinator.clone())
        .map_err(|e| UsageError(format!("--coordinator {}: {e}", args.coordinator)))?
        .tls_config(tls)
        .context("TLS configuration")?
        .connect_timeout(Duration::from_secs(3))
        .http2_keep_alive_interval(Duration::from_secs(2))
        .keep_alive_timeout(Duration::from_secs(3))
        .keep_alive_while_idle(true))
}

/// Keeps one session up, reconnecting with backoff; forwards inbound messages.
async fn link(
    endpoint: Endpoint,
    register: AgentMessage,
    mut outbox: mpsc::Receiver<AgentMessage>,
    inbox: mpsc::Sender<Inbound>,
) {
    let mut backoff = Duration::from_millis(100);
    // The same failure again (the coordinator down, this node's session held by
    // another agent) is logged once, not at every retry.
    let mut last = String::new();
    loop {
        let mut connected = false;
        let ended = session(
            &endpoint,
            &register,
            &mut outbox,
            &inbox,
            &mut backoff,
            &mut connected,
        )
        .await;
        let why = match ended {
            Ok(()) => "session closed by the coordinator".to_owned(),
            Err(e) => format!("session: {e:#}"),
        };
        if connected {
            last.clear();
        }
        if why != last {
            warn!(
                "{why}; reconnecting (retried every {backoff:?} to 2s; logged again when the reason changes)"
            );
            last = why;
        }
        let _ = inbox.send(Inbound::Disconnected).await;
        let until = Instant::now() + backoff;
        // Messages queued while disconnected are stale by the time we are back.
        while let Ok(Some(_)) = tokio::time::timeout_at(until, outbox.recv()).await {}
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

async fn session(
    endpoint: &Endpoint,
    register: &AgentMessage,
    outbox: &mut mpsc::Receiver<AgentMessage>,
    inbox: &mpsc::Sender<Inbound>,
    backoff: &mut Duration,
    connected: &mut bool,
) -> Result<()> {
    let channel = endpoint.connect().await.context("connect")?;
    let mut client = AgentServiceClient::new(channel);
    let (tx, rx) = mpsc::channel(256);
    tx.send(register.clone()).await?;
    let mut inbound = client
        .session(ReceiverStream::new(rx))
        .await
        .context("open session")?
        .into_inner();
    *backoff = Duration::from_millis(100);
    *connected = true;
    let _ = inbox.send(Inbound::Connected).await;
    loop {
        tokio::select! {
            m = inbound.message() => match m.context("receive")? {
                Some(m) => { let _ = inbox.send(Inbound::Message(Box::new(m))).await; }
                None => return Ok(()),
            },
            Some(m) = outbox.recv() => {
                if tx.send(m).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
}

fn ack(order_id: &str, state: EffectState, detail: impl Into<String>) -> Out {
    Out::Ack(Ack {
        order_id: order_id.to_owned(),
        state: state as i32,
        detail: detail.into(),
        guard: None,
    })
}

/// Runs one node-side probe and sends its results in batches of 200 ms.
async fn forward_probe(probe_id: String, spec: ProbeSpec, outbox: mpsc::Sender<AgentMessage>) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _probe = AbortOnDrop(tokio::spawn(crate::probe::run(spec, tx)));
    let mut flush = tokio::time::interval(Duration::from_millis(200));
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            Some(r) = rx.recv() => batch.push(r),
            _ = flush.tick() => {
                if !batch.is_empty() {
                    let _ = outbox.try_send(AgentMessage {
                        body: Some(Out::Probe(ProbeResults {
                            probe_id: probe_id.clone(),
                            results: std::mem::take(&mut batch),
                            refused: String::new(),
                        })),
                    });
                }
            }
        }
    }
}

/// Removes the effects of every lease whose renewal deadline has passed.
fn dead_man(st: &mut State) {
    let now = Instant::now();
    let lapsed: Vec<String> = st
        .leases
        .iter()
        .filter(|(_, (until, _))| *until <= now)
        .map(|(id, _)| id.clone())
        .collect();
    for lease in lapsed {
        let ttl = st.leases.remove(&lease).map(|(_, t)| t).unwrap_or_default();
        warn!(%lease, "dead-man switch: no renewal within the lease TTL ({ttl:?}); removing its effects");
        st.metrics.deadman_firings.inc();
        for e in st.effects.values_mut().filter(|e| e.lease_id == lease) {
            e.expired = true;
            e.handle.stop();
        }
    }
}

/// Sets the metrics' state gauges from what the session holds now.
fn export_state(st: &State) {
    let m = &st.metrics;
    for scenario in Scenario::ALL {
        let of = || st.effects.values().filter(move |e| e.scenario == scenario);
        m.set_active_faults(scenario.kind_name(), of().count());
        // A stress fault's kind is the resource it consumes.
        if scenario.is_stress() {
            let share = of().filter_map(|e| e.stress_share).sum();
            m.set_stress_share(scenario.kind_name(), share);
        }
    }
    m.delay_line_queued
        .set(st.seen.values().map(|(_, q)| *q as i64).sum());
    m.leases.set(st.leases.len() as i64);
    let now = Instant::now();
    let oldest = st
        .leases
        .values()
        .map(|(until, ttl)| now.saturating_duration_since(*until - *ttl))
        .max()
        .unwrap_or_default();
    m.lease_renewal_age.set(oldest.as_secs_f64());
}

/// Stops every child and waits until each has removed its effects.
async fn shutdown(st: &mut State, reports: &mut mpsc::UnboundedReceiver<Report>) -> Result<()> {
    for e in st.effects.values() {
        e.handle.stop();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while !st.effects.is_empty() {
        match tokio::time::timeout_at(deadline, reports.recv()).await {
            Ok(Some(Report::Exited { order_id, .. })) => {
                st.effects.remove(&order_id);
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => anyhow::bail!(
                "{} effect(s) did not confirm removal; run `faultline-agent cleanup`",
                st.effects.len()
            ),
        }
    }
    info!("every effect removed");
    Ok(())
}
