//! `faultline`: the thin client CI pipelines and people use. It speaks ChaosService
//! over TLS with a bearer token.
//!
//! Exit codes (stable, for CI):
//! - 0: the experiment completed and the node recovered (or the command succeeded)
//! - 1: infrastructure error (coordinator unreachable, TLS, internal error, failed experiment)
//! - 2: usage error (bad flags or spec file)
//! - 3: rejected (a safety limit, the lease, the kill switch, the token's role, or the
//!   agent's own caps)
//! - 4: aborted
//! - 5: the fault ran but the node did not recover within the recovery window
//! - 6: interrupted (the coordinator restarted mid-experiment)
use std::{collections::HashMap, path::PathBuf, process::ExitCode, time::Duration};

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use faultline_proto::v1::{
    AbortRequest, CacheFault, ClearKillSwitchRequest, CpuFault, Direction, Experiment,
    ExperimentEvent, FaultSpec, GcFault, GetExperimentRequest, Hook, JitterDistribution,
    LatencyFault, ListExperimentsRequest, ListNodesRequest, LossFault, MemoryFault, MetricSample,
    Phase, StartRequest, StatusRequest, TrafficFilter, chaos_service_client::ChaosServiceClient,
    fault_spec::Fault,
};
use serde::Deserialize;
use serde_json::{Value, json};
use tonic::{
    Code, Request, Status,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint},
};

const EXIT_INFRA: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_REJECTED: u8 = 3;
const EXIT_ABORTED: u8 = 4;
const EXIT_RECOVERY: u8 = 5;
const EXIT_INTERRUPTED: u8 = 6;

#[derive(Parser)]
#[command(
    name = "faultline",
    version,
    about = "Run and control faultline chaos experiments"
)]
struct Cli {
    /// The coordinator's gRPC endpoint.
    #[arg(
        long,
        global = true,
        env = "FAULTLINE_COORDINATOR",
        default_value = "https://127.0.0.1:7443"
    )]
    coordinator: String,
    /// CA certificate (PEM) that signed the coordinator's certificate.
    #[arg(
        long,
        global = true,
        env = "FAULTLINE_CA",
        default_value = "/etc/faultline/tls/ca.pem"
    )]
    ca: PathBuf,
    /// Bearer token (prefer the environment variable to keep it out of `ps`).
    #[arg(long, global = true, env = "FAULTLINE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Name to verify in the coordinator's certificate (default: the URL's host).
    #[arg(long, global = true)]
    tls_server_name: Option<String>,
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Text)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Start an experiment from a spec file or flags.
    Run(Box<RunArgs>),
    /// Remove every effect (of one experiment, or all) and engage the kill switch.
    Abort {
        /// Only this experiment (default: every experiment and every node).
        #[arg(long)]
        experiment: Option<String>,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Clear the kill switch engaged by an abort (admin).
    ClearKillSwitch,
    /// Kill switch, running experiments, connected agents.
    Status,
    /// Registered nodes and their agents.
    Nodes,
    /// Recent experiments, newest first.
    Experiments {
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// One experiment.
    Experiment { id: String },
    /// Print shell completions.
    Completions { shell: clap_complete::Shell },
}

#[derive(clap::Args)]
struct RunArgs {
    /// A YAML experiment spec (flags below override its fields).
    spec: Option<PathBuf>,
    #[arg(long)]
    name: Option<String>,
    /// Target node (repeatable; blast_radius.max_nodes applies).
    #[arg(long = "node")]
    nodes: Vec<String>,
    #[arg(long, value_enum)]
    fault: Option<FaultKind>,
    #[arg(long)]
    iface: Option<String>,
    #[arg(long)]
    direction: Option<String>,
    /// Loss percent (loss), node CPU percent (cpu) or MemTotal percent (memory).
    #[arg(long)]
    percent: Option<f64>,
    #[arg(long, value_parser = humantime::parse_duration)]
    delay: Option<Duration>,
    #[arg(long, value_parser = humantime::parse_duration)]
    jitter: Option<Duration>,
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    #[arg(long)]
    proto: Option<String>,
    #[arg(long)]
    port: Option<String>,
    #[arg(long)]
    dport: Option<String>,
    #[arg(long)]
    sport: Option<String>,
    #[arg(long)]
    src: Option<String>,
    #[arg(long)]
    dst: Option<String>,
    /// gc: the workload cgroup to squeeze; cache: a cgroup v2 workload whose file
    /// cache to reclaim (relative to the cgroup root).
    #[arg(long)]
    target_cgroup: Option<String>,
    /// gc: squeeze the soft memory limit to this share of current usage (50-99).
    #[arg(long)]
    to_percent: Option<f64>,
    /// cache: a file or directory whose page cache to evict (repeatable).
    #[arg(long = "path")]
    paths: Vec<String>,
    /// gc, cache: NAME=URL, a node-local endpoint to POST to (repeatable).
    #[arg(long = "hook")]
    hooks: Vec<String>,
    #[arg(long, value_parser = humantime::parse_duration)]
    baseline: Option<Duration>,
    #[arg(long, value_parser = humantime::parse_duration)]
    recovery: Option<Duration>,
    /// Queue until the lease is free instead of being refused.
    #[arg(long)]
    queue: bool,
    /// Stream progress until the experiment ends; the exit code tells how it ended.
    #[arg(long)]
    wait: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
enum FaultKind {
    Loss,
    Latency,
    Cpu,
    Memory,
    Gc,
    Cache,
}

/// The spec file: the same fields as the flags.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SpecFile {
    name: Option<String>,
    #[serde(default)]
    nodes: Vec<String>,
    fault: Option<FaultKind>,
    iface: Option<String>,
    direction: Option<String>,
    percent: Option<f64>,
    #[serde(default, with = "opt_duration")]
    delay: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    jitter: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    duration: Option<Duration>,
    #[serde(default)]
    filter: HashMap<String, String>,
    target_cgroup: Option<String>,
    to_percent: Option<f64>,
    #[serde(default)]
    paths: Vec<String>,
    /// name: url, e.g. the reference report's components.
    #[serde(default)]
    hooks: std::collections::BTreeMap<String, String>,
    #[serde(default, with = "opt_duration")]
    baseline: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    recovery: Option<Duration>,
}

mod opt_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| humantime::parse_duration(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

struct Fail(u8, String);

impl From<Status> for Fail {
    fn from(s: Status) -> Self {
        let code = match s.code() {
            Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::ResourceExhausted
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::NotFound => EXIT_REJECTED,
            _ => EXIT_INFRA,
        };
        let what = match s.code() {
            Code::Unavailable => format!("coordinator unavailable: {}", s.message()),
            c => format!("{c:?}: {}", s.message()),
        };
        Fail(code, what)
    }
}

fn usage(msg: impl Into<String>) -> Fail {
    Fail(EXIT_USAGE, msg.into())
}

fn dur(d: Duration) -> Option<prost_types::Duration> {
    d.try_into().ok()
}

fn build_request(args: &RunArgs) -> Result<StartRequest, Fail> {
    let file: SpecFile = match &args.spec {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).map_err(|e| usage(format!("{}: {e}", p.display())))?;
            serde_yaml_ng::from_str(&text).map_err(|e| usage(format!("{}: {e}", p.display())))?
        }
        None => SpecFile::default(),
    };
    let nodes = if args.nodes.is_empty() {
        file.nodes
    } else {
        args.nodes.clone()
    };
    if nodes.is_empty() {
        return Err(usage("no target node: --node NAME or `nodes:` in the spec"));
    }
    let kind = args
        .fault
        .or(file.fault)
        .ok_or_else(|| usage("--fault loss|latency|cpu|memory|gc|cache is required"))?;
    let duration = args
        .duration
        .or(file.duration)
        .ok_or_else(|| usage("--duration is required"))?;
    let iface = args.iface.clone().or(file.iface);
    let direction = match args.direction.clone().or(file.direction).as_deref() {
        None | Some("ingress") => Direction::Ingress,
        Some("egress") => Direction::Egress,
        Some("both") => Direction::Both,
        Some(d) => {
            return Err(usage(format!(
                "--direction {d}: expected ingress, egress or both"
            )));
        }
    } as i32;
    let mut f = file.filter;
    for (k, v) in [
        ("protocol", &args.proto),
        ("port", &args.port),
        ("dport", &args.dport),
        ("sport", &args.sport),
        ("src", &args.src),
        ("dst", &args.dst),
    ] {
        if let Some(v) = v {
            f.insert(k.to_owned(), v.clone());
        }
    }
    for k in f.keys() {
        if !["protocol", "port", "dport", "sport", "src", "dst"].contains(&k.as_str()) {
            return Err(usage(format!("filter: unknown key '{k}'")));
        }
    }
    let filter = Some(TrafficFilter {
        src_cidr: f.get("src").cloned().unwrap_or_default(),
        dst_cidr: f.get("dst").cloned().unwrap_or_default(),
        protocol: f.get("protocol").cloned().unwrap_or_default(),
        port: f.get("port").cloned().unwrap_or_default(),
        sport: f.get("sport").cloned().unwrap_or_default(),
        dport: f.get("dport").cloned().unwrap_or_default(),
    });
    let percent = args.percent.or(file.percent);
    let target_cgroup = args.target_cgroup.clone().or(file.target_cgroup);
    let mut hooks: Vec<Hook> = file
        .hooks
        .into_iter()
        .map(|(name, url)| Hook { name, url })
        .collect();
    for h in &args.hooks {
        let (name, url) = h
            .split_once('=')
            .ok_or_else(|| usage(format!("--hook {h}: expected NAME=URL")))?;
        hooks.retain(|k| k.name != name);
        hooks.push(Hook {
            name: name.to_owned(),
            url: url.to_owned(),
        });
    }
    let need_iface = || {
        iface
            .clone()
            .ok_or_else(|| usage("--iface is required for network faults"))
    };
    let need_percent = || percent.ok_or_else(|| usage("--percent is required"));
    let fault = match kind {
        FaultKind::Loss => Fault::Loss(LossFault {
            interface: need_iface()?,
            direction,
            percent: need_percent()?,
            filter,
        }),
        FaultKind::Latency => Fault::Latency(LatencyFault {
            interface: need_iface()?,
            direction,
            delay: dur(args
                .delay
                .or(file.delay)
                .ok_or_else(|| usage("--delay is required"))?),
            jitter: args.jitter.or(file.jitter).and_then(dur),
            jitter_distribution: JitterDistribution::Uniform as i32,
            allow_reorder: false,
            filter,
            loss_percent: percent.unwrap_or(0.0),
        }),
        FaultKind::Cpu => Fault::Cpu(CpuFault {
            percent: need_percent()?,
        }),
        FaultKind::Memory => Fault::Memory(MemoryFault {
            percent: need_percent()?,
        }),
        FaultKind::Gc => Fault::Gc(GcFault {
            target_cgroup: target_cgroup
                .ok_or_else(|| usage("--target-cgroup is required for gc"))?,
            to_percent: args.to_percent.or(file.to_percent).unwrap_or(0.0),
            hooks,
        }),
        FaultKind::Cache => Fault::Cache(CacheFault {
            paths: if args.paths.is_empty() {
                file.paths
            } else {
                args.paths.clone()
            },
            target_cgroup: target_cgroup.unwrap_or_default(),
            hooks,
        }),
    };
    Ok(StartRequest {
        name: args.name.clone().or(file.name).unwrap_or_default(),
        nodes,
        fault: Some(FaultSpec {
            fault: Some(fault),
            duration: dur(duration),
        }),
        wait_for_lease: args.queue,
        baseline: args.baseline.or(file.baseline).and_then(dur),
        recovery: args.recovery.or(file.recovery).and_then(dur),
    })
}

async fn connect(cli: &Cli) -> Result<ChaosServiceClient<Channel>, Fail> {
    let ca =
        std::fs::read(&cli.ca).map_err(|e| usage(format!("--ca {}: {e}", cli.ca.display())))?;
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
    if let Some(n) = &cli.tls_server_name {
        tls = tls.domain_name(n.clone());
    }
    let channel = Endpoint::from_shared(cli.coordinator.clone())
        .map_err(|e| usage(format!("--coordinator: {e}")))?
        .tls_config(tls)
        .map_err(|e| Fail(EXIT_INFRA, format!("TLS: {e}")))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| {
            Fail(
                EXIT_INFRA,
                format!(
                    "cannot reach the coordinator at {}: {}",
                    cli.coordinator,
                    causes(&e)
                ),
            )
        })?;
    Ok(ChaosServiceClient::new(channel))
}

/// An error and its sources, `a: b: c`.
fn causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        out = format!("{out}: {s}");
        next = s.source();
    }
    out
}

fn authed<T>(cli: &Cli, msg: T) -> Result<Request<T>, Fail> {
    let token = cli
        .token
        .as_deref()
        .ok_or_else(|| usage("no token: set FAULTLINE_TOKEN (or --token)"))?;
    let mut req = Request::new(msg);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}")
            .parse()
            .map_err(|_| usage("the token contains characters a header cannot carry"))?,
    );
    Ok(req)
}

fn phase_name(p: i32) -> String {
    Phase::try_from(p)
        .map(|p| p.as_str_name().trim_start_matches("PHASE_").to_lowercase())
        .unwrap_or_else(|_| p.to_string())
}

fn secs(d: Option<&prost_types::Duration>) -> Option<f64> {
    d.map(|d| d.seconds as f64 + f64::from(d.nanos) / 1e9)
}

fn millis(t: Option<&prost_types::Timestamp>) -> Option<i64> {
    t.map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
}

fn sample_json(s: &MetricSample) -> Value {
    let c = |x: Option<faultline_proto::v1::FaultCounters>| {
        let x = x.unwrap_or_default();
        json!({"seen": x.seen, "matched": x.matched, "dropped": x.dropped, "delayed": x.delayed})
    };
    json!({
        "at_ms": millis(s.at.as_ref()), "cpu_busy_percent": s.cpu_busy_percent,
        "cpu_busy_tick_percent": s.cpu_busy_tick_percent, "cpu_precise": s.cpu_precise,
        "memory_used_percent": s.memory_used_percent, "psi_cpu_some_avg10": s.psi_cpu_some_avg10,
        "psi_memory_some_avg10": s.psi_memory_some_avg10, "psi_io_some_avg10": s.psi_io_some_avg10,
        "net_rx_packets": s.net_rx_packets, "net_tx_packets": s.net_tx_packets,
        "tcp_retransmits": s.tcp_retransmits, "ingress": c(s.ingress), "egress": c(s.egress),
        "cgroup": s.cgroup, "fault": s.fault,
    })
}

fn experiment_json(e: &Experiment) -> Value {
    json!({
        "id": e.id, "name": e.name, "nodes": e.nodes, "phase": phase_name(e.phase),
        "fault": e.fault.as_ref().map(|f| format!("{:?}", f.fault)),
        "duration_s": e.fault.as_ref().and_then(|f| secs(f.duration.as_ref())),
        "started_ms": millis(e.started.as_ref()), "ended_ms": millis(e.ended.as_ref()),
        "recovery_s": secs(e.recovery_time.as_ref()), "result": e.result,
    })
}

fn fault_summary(e: &Experiment) -> String {
    match e.fault.as_ref().and_then(|f| f.fault.as_ref()) {
        Some(Fault::Loss(l)) => format!("loss {}% on {}", l.percent, l.interface),
        Some(Fault::Latency(l)) => format!(
            "latency {:.0}ms on {}",
            secs(l.delay.as_ref()).unwrap_or(0.0) * 1e3,
            l.interface
        ),
        Some(Fault::Cpu(c)) => format!("cpu {}%", c.percent),
        Some(Fault::Memory(m)) => format!("memory {}%", m.percent),
        Some(Fault::Gc(g)) => format!("gc pressure on {}", g.target_cgroup),
        Some(Fault::Cache(c)) => format!(
            "cache invalidation ({} path(s), {} hook(s))",
            c.paths.len(),
            c.hooks.len()
        ),
        None => "-".into(),
    }
}

/// Prints events; samples at most once a second per node in text mode.
struct Progress {
    output: Output,
    last_sample: HashMap<String, std::time::Instant>,
}

impl Progress {
    fn event(&mut self, ev: &ExperimentEvent) {
        if self.output == Output::Json {
            let mut v = json!({
                "experiment": ev.experiment_id, "at_ms": millis(ev.at.as_ref()),
                "phase": phase_name(ev.phase), "node": ev.node, "message": ev.message,
            });
            if let Some(s) = &ev.sample {
                v["sample"] = sample_json(s);
            }
            println!("{v}");
            return;
        }
        if let Some(s) = &ev.sample {
            let now = std::time::Instant::now();
            if self
                .last_sample
                .get(&ev.node)
                .is_some_and(|t| now.duration_since(*t) < Duration::from_millis(950))
            {
                return;
            }
            self.last_sample.insert(ev.node.clone(), now);
            let (i, e) = (s.ingress.unwrap_or_default(), s.egress.unwrap_or_default());
            // The node's own monitoring reads /proc/stat: where it tells a different
            // story than the precise counter, say so.
            let ticks =
                if s.cpu_precise && (s.cpu_busy_tick_percent - s.cpu_busy_percent).abs() > 1.0 {
                    format!(" (/proc/stat {:.1}%)", s.cpu_busy_tick_percent)
                } else {
                    String::new()
                };
            println!(
                "  [{:<8}] {:<7} cpu {:5.1}%{ticks}  mem {:5.1}%  psi-cpu {:4.1}  rx {:>8} tx {:>8} pkts  \
                 matched {:>6} dropped {:>6} delayed {:>6}  tcp-retrans {}",
                phase_name(ev.phase),
                ev.node,
                s.cpu_busy_percent,
                s.memory_used_percent,
                s.psi_cpu_some_avg10,
                s.net_rx_packets,
                s.net_tx_packets,
                i.matched + e.matched,
                i.dropped + e.dropped,
                i.delayed + e.delayed,
                s.tcp_retransmits
            );
            // A gc or cache fault's own readings, on a line of their own.
            if !s.fault.is_empty() {
                let mut readings: Vec<_> = s.fault.iter().collect();
                readings.sort_by(|a, b| a.0.cmp(b.0));
                let line: Vec<String> = readings
                    .iter()
                    .map(|(k, v)| format!("{k} {}", round(**v)))
                    .collect();
                println!("  {:<10} {:<7} {}", "", ev.node, line.join("  "));
            }
        } else {
            println!(
                "{} [{}] {}",
                ev.experiment_id,
                phase_name(ev.phase),
                ev.message
            );
        }
    }
}

/// Integers as integers, fractions to one decimal.
fn round(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn final_code(ev: &ExperimentEvent) -> u8 {
    match Phase::try_from(ev.phase) {
        Ok(Phase::Completed) => 0,
        Ok(Phase::Aborted) => EXIT_ABORTED,
        Ok(Phase::Interrupted) => EXIT_INTERRUPTED,
        _ if ev.message.starts_with("recovery failed") => EXIT_RECOVERY,
        _ if ev.message.starts_with("refused") => EXIT_REJECTED,
        _ => EXIT_INFRA,
    }
}

async fn run(cli: &Cli, args: &RunArgs) -> Result<u8, Fail> {
    let request = build_request(args)?;
    let mut client = connect(cli).await?;
    let mut stream = client.start(authed(cli, request)?).await?.into_inner();
    let mut progress = Progress {
        output: cli.output,
        last_sample: HashMap::new(),
    };
    while let Some(ev) = stream.message().await? {
        progress.event(&ev);
        let phase = Phase::try_from(ev.phase).unwrap_or(Phase::Unspecified);
        if is_terminal(phase) && ev.sample.is_none() {
            return Ok(final_code(&ev));
        }
        if !args.wait && phase != Phase::Queued {
            // Without --wait: the experiment is under way; its id was printed.
            return Ok(0);
        }
    }
    Err(Fail(
        EXIT_INFRA,
        "the coordinator closed the stream before the experiment ended".into(),
    ))
}

fn is_terminal(p: Phase) -> bool {
    matches!(
        p,
        Phase::Completed | Phase::Aborted | Phase::Failed | Phase::Interrupted
    )
}

async fn execute(cli: &Cli) -> Result<u8, Fail> {
    match &cli.command {
        Command::Run(args) => run(cli, args).await,
        Command::Abort { experiment, reason } => {
            let mut client = connect(cli).await?;
            let started = std::time::Instant::now();
            let r = client
                .abort(authed(
                    cli,
                    AbortRequest {
                        experiment_id: experiment.clone().unwrap_or_default(),
                        reason: reason.clone(),
                    },
                )?)
                .await?
                .into_inner();
            let took = secs(r.took.as_ref()).unwrap_or(0.0);
            if cli.output == Output::Json {
                println!(
                    "{}",
                    json!({"aborted": r.experiment_ids, "took_ms": took * 1e3,
                           "round_trip_ms": started.elapsed().as_secs_f64() * 1e3,
                           "kill_switch_engaged": r.kill_switch_engaged})
                );
            } else {
                println!(
                    "aborted {} — every agent confirmed removal in {:.1} ms; kill switch engaged \
                     (clear it with `faultline clear-kill-switch`)",
                    if r.experiment_ids.is_empty() {
                        "(nothing running)".to_owned()
                    } else {
                        r.experiment_ids.join(", ")
                    },
                    took * 1e3
                );
            }
            Ok(0)
        }
        Command::ClearKillSwitch => {
            let mut client = connect(cli).await?;
            client
                .clear_kill_switch(authed(cli, ClearKillSwitchRequest {})?)
                .await?;
            println!("kill switch cleared");
            Ok(0)
        }
        Command::Status => {
            let mut client = connect(cli).await?;
            let s = client
                .status(authed(cli, StatusRequest {})?)
                .await?
                .into_inner();
            if cli.output == Output::Json {
                let running: Vec<Value> = s.running.iter().map(experiment_json).collect();
                println!(
                    "{}",
                    json!({"kill_switch_engaged": s.kill_switch_engaged, "connected_agents": s.connected_agents, "running": running})
                );
            } else {
                println!(
                    "kill switch: {}\nconnected agents: {}\nrunning: {}",
                    if s.kill_switch_engaged {
                        "ENGAGED"
                    } else {
                        "off"
                    },
                    s.connected_agents,
                    if s.running.is_empty() {
                        "none".to_owned()
                    } else {
                        s.running
                            .iter()
                            .map(|e| {
                                format!("{} ({}, {})", e.id, fault_summary(e), phase_name(e.phase))
                            })
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                );
            }
            Ok(0)
        }
        Command::Nodes => {
            let mut client = connect(cli).await?;
            let nodes = client
                .list_nodes(authed(cli, ListNodesRequest {})?)
                .await?
                .into_inner()
                .nodes;
            if cli.output == Output::Json {
                let v: Vec<Value> = nodes
                    .iter()
                    .map(|n| {
                        let c = n.capabilities.clone().unwrap_or_default();
                        json!({"name": n.name, "connected": n.connected, "labels": n.labels,
                           "last_heartbeat_ms": millis(n.last_heartbeat.as_ref()),
                           "agent_version": n.agent_version, "lease": n.lease_id,
                           "kernel": c.kernel, "tcx": c.tcx, "sch_fq": c.sch_fq, "cgroup": c.cgroup,
                           "latency_backend": c.latency_backend})
                    })
                    .collect();
                println!("{}", Value::from(v));
            } else {
                println!(
                    "{:<12} {:<10} {:<16} {:<8} {:<12} LEASE",
                    "NODE", "STATE", "KERNEL", "CGROUP", "LATENCY"
                );
                for n in nodes {
                    let c = n.capabilities.unwrap_or_default();
                    println!(
                        "{:<12} {:<10} {:<16} {:<8} {:<12} {}",
                        n.name,
                        if n.connected { "connected" } else { "gone" },
                        c.kernel,
                        c.cgroup,
                        c.latency_backend,
                        if n.lease_id.is_empty() {
                            "-"
                        } else {
                            &n.lease_id
                        }
                    );
                }
            }
            Ok(0)
        }
        Command::Experiments { limit } => {
            let mut client = connect(cli).await?;
            let list = client
                .list_experiments(authed(cli, ListExperimentsRequest { limit: *limit })?)
                .await?
                .into_inner()
                .experiments;
            if cli.output == Output::Json {
                println!(
                    "{}",
                    Value::from(list.iter().map(experiment_json).collect::<Vec<_>>())
                );
            } else {
                println!(
                    "{:<11} {:<12} {:<9} {:<24} {:<10} RESULT",
                    "ID", "PHASE", "NODES", "FAULT", "RECOVERY"
                );
                for e in list {
                    println!(
                        "{:<11} {:<12} {:<9} {:<24} {:<10} {}",
                        e.id,
                        phase_name(e.phase),
                        e.nodes.join(","),
                        fault_summary(&e),
                        secs(e.recovery_time.as_ref()).map_or("-".into(), |s| format!("{s:.2}s")),
                        e.result.chars().take(90).collect::<String>()
                    );
                }
            }
            Ok(0)
        }
        Command::Experiment { id } => {
            let mut client = connect(cli).await?;
            let e = client
                .get_experiment(authed(cli, GetExperimentRequest { id: id.clone() })?)
                .await?
                .into_inner();
            if cli.output == Output::Json {
                println!("{}", experiment_json(&e));
            } else {
                println!(
                    "{} {} on {}: {} — {}\n{}",
                    e.id,
                    e.name,
                    e.nodes.join(","),
                    fault_summary(&e),
                    phase_name(e.phase),
                    e.result
                );
            }
            Ok(0)
        }
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "faultline", &mut script);
            // A closed pipe (`| head`) is the reader's choice, not an error.
            let _ = std::io::Write::write_all(&mut std::io::stdout(), &script);
            Ok(0)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("faultline: error: {e}");
            return ExitCode::from(EXIT_INFRA);
        }
    };
    match runtime.block_on(execute(&cli)) {
        Ok(code) => ExitCode::from(code),
        Err(Fail(code, msg)) => {
            eprintln!("faultline: error: {msg}");
            ExitCode::from(code)
        }
    }
}
