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
        Ack, AgentMessage, ApplyFault, Capabilities, CoordinatorMessage, EffectState,
        FaultCounters, GuardReport, Heartbeat, ProbeResults, ProbeSpec, Register,
        agent_message::Body as Out, agent_service_client::AgentServiceClient,
        coordinator_message::Body as In, fault_spec::Fault,
    },
};
use tokio::{sync::mpsc, time::Instant};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tracing::{info, warn};

use crate::{
    errors::UsageError,
    exporter::{AgentMetrics, OrderResult, Seen},
    guard::{AbortOnDrop, Breach},
    inject::LimitArgs,
    metrics::Sampler,
    orders::{self, Report},
};

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

/// What order handling needs besides the state.
struct Ctx<'a> {
    global: &'a [String],
    reports: &'a mpsc::UnboundedSender<Report>,
    breaches: &'a mpsc::UnboundedSender<Breach>,
    outbox: &'a mpsc::Sender<AgentMessage>,
}

/// Every URL an order would have this agent call, checked against its own policy.
fn endpoints_allowed(policy: &EndpointPolicy, a: &ApplyFault) -> Result<(), String> {
    let hooks = match a.spec.as_ref().and_then(|s| s.fault.as_ref()) {
        Some(Fault::Gc(g)) => g.hooks.as_slice(),
        Some(Fault::Cache(c)) => c.hooks.as_slice(),
        Some(Fault::Loss(_) | Fault::Latency(_) | Fault::Cpu(_) | Fault::Memory(_)) | None => &[],
    };
    for h in hooks {
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

fn order(st: &mut State, body: In, ctx: &Ctx<'_>, send: &impl Fn(Out)) {
    match body {
        In::Apply(a) => {
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
            let stress_share = match fault {
                Fault::Cpu(c) => scenario.stress_share(c.percent),
                Fault::Memory(m) => scenario.stress_share(m.percent),
                Fault::Loss(_) | Fault::Latency(_) | Fault::Gc(_) | Fault::Cache(_) => None,
            };
            let ttl = a
                .lease_ttl
                .and_then(|t| Duration::try_from(t).ok())
                .filter(|t| !t.is_zero())
                .unwrap_or(DEFAULT_TTL);
            match orders::spawn(&a.order_id, ctx.global, spec, ctx.reports.clone()) {
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
        In::Remove(r) => {
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
        In::SampleRate(s) => st.sample_hz = s.hz.clamp(0.1, 10.0),
        In::StartProbe(p) => {
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
        In::Renewal(r) => {
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
    }
}

fn child_report(st: &mut State, report: Report, send: &impl Fn(Out)) {
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

/// `<state dir>/agent.pid` while the daemon runs: how `faultline-agent stop` (a
/// Kubernetes preStop hook, an operator) finds it. The daemon holds an exclusive
/// lock on it for its whole life, so a second daemon on the same state directory is
/// refused before it touches anything; only the holder removes the file.
struct PidFile {
    path: PathBuf,
    _lock: std::fs::File,
}

impl PidFile {
    fn write(state_dir: &std::path::Path) -> Result<Self> {
        use std::{
            io::{Read, Seek, Write},
            os::{fd::AsRawFd, unix::fs::OpenOptionsExt},
        };
        let path = state_dir.join("agent.pid");
        std::fs::create_dir_all(state_dir)
            .with_context(|| format!("creating state directory {}", state_dir.display()))?;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .mode(0o644)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: flock(2) on a descriptor `file` owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            return Err(UsageError(format!(
                "another faultline-agent daemon (pid {}) runs with state directory {}; one \
                 daemon per state directory (stop it with `faultline-agent stop`)",
                holder.trim(),
                state_dir.display()
            ))
            .into());
        }
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{}", std::process::id()))
            .and_then(|()| file.sync_all())
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(Self { path, _lock: file })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        // Removed while the lock is still held, so it is never another daemon's file.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// `faultline-agent stop`: SIGTERM to the daemon of this state directory, then wait
/// until it has removed its effects and exited (at most `timeout`), then remove
/// whatever is still recorded, as `cleanup` does.
pub async fn stop(state_dir: PathBuf, cgroup_root: PathBuf, timeout: Duration) -> Result<()> {
    let path = state_dir.join("agent.pid");
    let pid = match std::fs::read_to_string(&path) {
        Ok(text) => Some(
            text.trim()
                .parse::<i32>()
                .map_err(|_| UsageError(format!("{}: not a process id", path.display())))?,
        ),
        Err(_) => None,
    };
    // Only a faultline-agent daemon: a stale file may name a recycled pid.
    let daemon = pid.filter(|p| {
        std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| {
            let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
            args.first()
                .is_some_and(|a| a.ends_with(b"faultline-agent"))
                && args.iter().any(|a| *a == &b"run"[..])
        })
    });
    match daemon {
        Some(p) => {
            // SAFETY: kill(2) with a pid checked just above.
            if unsafe { libc::kill(p, libc::SIGTERM) } != 0 {
                anyhow::bail!(
                    "cannot signal the agent (pid {p}): {}",
                    std::io::Error::last_os_error()
                );
            }
            let until = Instant::now() + timeout;
            // Gone, or a zombie its parent has yet to reap: either way it has exited.
            let running = |p: i32| {
                std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|s| {
                    s.rsplit_once(") ")
                        .is_some_and(|(_, rest)| !rest.starts_with('Z'))
                })
            };
            while running(p) {
                if Instant::now() >= until {
                    anyhow::bail!("the agent (pid {p}) did not exit within {timeout:?}");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            println!("faultline-agent: the agent (pid {p}) removed its effects and exited");
        }
        None => println!(
            "faultline-agent: no agent running for {}",
            state_dir.display()
        ),
    }
    crate::cleanup(state_dir, cgroup_root)
        .await
        .map(|removed| crate::print_cleanup(&removed))
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
