//! `faultline-coordinator serve`: the gRPC port (AgentService for agents over mTLS,
//! ChaosService for clients with bearer tokens, plus gRPC health and reflection) and
//! the HTTP port (`POST /abort`, `GET /status`, `GET /healthz`).
use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use clap::Args;
use faultline_proto::{
    limits::{ChaosLimits, Profile},
    v1::{
        FILE_DESCRIPTOR_SET, agent_service_server::AgentServiceServer,
        chaos_service_server::ChaosServiceServer,
    },
};
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tracing::{info, warn};

use crate::{
    api::auth::Tokens,
    api::{Chaos, Http, http_router},
    config::Settings,
    fleet::agents::Agents,
    fleet::control::{Config, Control},
    store::Store,
};

#[derive(Args, Clone, Debug)]
pub struct ServeArgs {
    /// Log lines as text or as JSON objects (one per line).
    #[arg(long, value_enum, default_value_t, env = "FAULTLINE_LOG_FORMAT")]
    pub log_format: faultline_proto::logging::LogFormat,
    /// gRPC address (agents and clients; TLS always).
    #[arg(long, default_value = "[::]:7443")]
    pub listen: SocketAddr,
    /// HTTP address for POST /abort, GET /status, GET /healthz and GET /metrics
    /// (plain HTTP unless --http-tls; tokens required but for health and metrics;
    /// keep it on loopback or a management network).
    #[arg(long, default_value = "127.0.0.1:7080")]
    pub http: SocketAddr,
    /// Serve the HTTP port over TLS, with the certificate and key in --tls-dir (no
    /// client certificate: every route keeps its token).
    #[arg(long, env = "FAULTLINE_HTTP_TLS")]
    pub http_tls: bool,
    /// Directory with ca.pem, coordinator.pem and coordinator.key (`certs init`).
    #[arg(long, default_value = "/etc/faultline/tls")]
    pub tls_dir: PathBuf,
    /// Bearer tokens file (hashes only; `tokens add`).
    #[arg(long, default_value = "/etc/faultline/tokens.yaml")]
    pub tokens: PathBuf,
    /// The embedded store (SQLite, WAL).
    #[arg(long, default_value = "/var/lib/faultline/coordinator.db")]
    pub store: PathBuf,
    /// Built-in safety limits: production (reference limits) or staging.
    #[arg(long, default_value = "production")]
    pub profile: Profile,
    /// A chaos_limits YAML file that replaces the built-in profile.
    #[arg(long, env = "FAULTLINE_LIMITS")]
    pub limits: Option<PathBuf>,
    /// Lease TTL: an agent that cannot renew for this long removes its effects.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    pub lease_ttl: Duration,
    /// The config file: default health sources, prerequisites, abort conditions,
    /// recovery, components (YAML; `show-config` prints the embedded defaults).
    #[arg(long, env = "FAULTLINE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Baseline window when a spec gives none (overrides the config; default 30s).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub baseline: Option<Duration>,
    /// Recovery timeout when a spec gives none (overrides the config; default 120s).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub recovery: Option<Duration>,
    /// The schedule file (the report's `schedule:` blocks, plus cron, every,
    /// blackouts); loaded whole or not at all.
    #[arg(long, env = "FAULTLINE_SCHEDULE")]
    pub schedule: Option<PathBuf>,
    /// A chaos_limits YAML file for game days (default: the staging profile with
    /// max_concurrent 3 and max_nodes 3).
    #[arg(long)]
    pub gameday_limits: Option<PathBuf>,
}

/// The game-day profile: the staging limits, several experiments at once.
pub fn gameday_limits(path: Option<&std::path::Path>) -> Result<(ChaosLimits, String)> {
    match path {
        Some(p) => ChaosLimits::load(Some(p), Profile::Staging, "game day")
            .map_err(|e| anyhow::anyhow!("{e}")),
        None => {
            let mut l = ChaosLimits::profile(Profile::Staging);
            l.blast_radius.max_concurrent = 3;
            l.blast_radius.max_nodes = 3;
            Ok((l, "the built-in game-day profile (staging limits)".into()))
        }
    }
}

/// Reads and validates a schedule file against the limits and settings it will run
/// under (`check-schedule` and `serve` alike).
pub fn load_schedule(
    path: &std::path::Path,
    settings: &Settings,
    limits: &ChaosLimits,
    limits_source: &str,
) -> Result<crate::schedule::ScheduleFile> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let check =
        |spec: &str| crate::engine::plan::check_offline(spec, settings, limits, limits_source);
    crate::schedule::file::parse(&text, &path.display().to_string(), &check)
        .map_err(|e| anyhow::anyhow!("schedule {}: {e}", path.display()))
}

pub async fn serve(args: ServeArgs) -> Result<()> {
    let (limits, limits_source) =
        ChaosLimits::load(args.limits.as_deref(), args.profile, "coordinator")
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    anyhow::ensure!(
        !args.lease_ttl.is_zero() && args.lease_ttl <= Duration::from_secs(300),
        "--lease-ttl must be between 1ms and 300s"
    );
    let read = |f: &str| {
        let p = args.tls_dir.join(f);
        std::fs::read(&p).with_context(|| format!("read {}", p.display()))
    };
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(
            read("coordinator.pem")?,
            read("coordinator.key")?,
        ))
        .client_ca_root(Certificate::from_pem(read("ca.pem")?))
        // Clients (CLI, grpcurl) authenticate with tokens; agents must present a
        // certificate, which AgentService checks. A certificate from another CA, or
        // an expired one, fails the handshake itself.
        .client_auth_optional(true);
    let mut settings = Settings::load(args.config.as_deref(), args.profile)?;
    if let Some(b) = args.baseline {
        anyhow::ensure!(
            (crate::engine::plan::MIN_BASELINE..=crate::engine::plan::MAX_WINDOW).contains(&b),
            "--baseline must be between 1s and 10m"
        );
        settings.baseline = b;
    }
    if let Some(r) = args.recovery {
        anyhow::ensure!(
            !r.is_zero() && r <= crate::engine::plan::MAX_WINDOW,
            "--recovery must be between 1ms and 10m"
        );
        settings.recovery.timeout = Some(faultline_proto::spec::Dur(r));
    }
    let schedule = match &args.schedule {
        Some(p) => load_schedule(p, &settings, &limits, &limits_source)?,
        None => crate::schedule::ScheduleFile::empty(),
    };
    let (gameday_limits, gameday_limits_source) = gameday_limits(args.gameday_limits.as_deref())?;
    let tokens = Arc::new(Tokens::load(&args.tokens)?);
    // SIGHUP re-reads the tokens file at once (a change is also noticed by itself).
    {
        let tokens = tokens.clone();
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("SIGHUP handler")?;
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                tokens.refresh(true);
            }
        });
    }
    let store = Store::open(&args.store)?;
    for (id, lease) in store.interrupt_unfinished(
        "the coordinator restarted while this experiment ran; its effects are removed by \
         the agents and its lease is freed",
    )? {
        warn!(experiment = %id, %lease, "interrupted by a coordinator restart; agents holding its effects are told to remove them");
    }
    let control = Control::new(
        Config {
            limits,
            limits_source,
            lease_ttl: args.lease_ttl,
            settings,
            gameday_limits,
            gameday_limits_source,
            schedule,
        },
        store,
    )?;
    let clock = crate::api::spawn_clock(control.clone());

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<ChaosServiceServer<Chaos>>().await;
    health.set_serving::<AgentServiceServer<Agents>>().await;
    // Reflection as both grpc.reflection.v1 and v1alpha: grpcurl speaks v1, while
    // Python's grpcio-reflection, Postman and older grpcurl speak only v1alpha.
    let reflection_builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection = reflection_builder().build_v1()?;
    let reflection_alpha = reflection_builder().build_v1alpha()?;
    let auth = tokens.clone();
    let chaos = ChaosServiceServer::with_interceptor(
        Chaos(control.clone()),
        move |mut req: tonic::Request<()>| {
            let header = req
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok());
            let mut caller = auth.authorize(header)?;
            caller.peer = req.remote_addr().map(|a| a.to_string()).unwrap_or_default();
            req.extensions_mut().insert(caller);
            Ok(req)
        },
    );
    // Both ports are bound before the "serving" line, so a port in use stops the
    // start with its reason, and the line names the addresses really bound (port 0
    // in --listen or --http picks a free one).
    let grpc_listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("bind gRPC {}", args.listen))?;
    let grpc_addr = grpc_listener.local_addr()?;
    let http = tokio::net::TcpListener::bind(args.http)
        .await
        .with_context(|| format!("bind HTTP {}", args.http))?;
    let http_addr = http.local_addr()?;
    let router = http_router(Http {
        control: control.clone(),
        tokens,
    });
    // Read before serving anything, so bad certificates stop the start.
    let https = match args.http_tls {
        true => Some(crate::api::https::acceptor(
            &read("coordinator.pem")?,
            &read("coordinator.key")?,
        )?),
        false => None,
    };
    info!(grpc = %grpc_addr, http = %http_addr, http_tls = args.http_tls, store = %args.store.display(),
          config = %control.config.settings.source, schedule = %control.scheduler.file.source,
          schedules = control.scheduler.file.entries.len(), "coordinator serving");
    // The servers stop only when the shutdown below has ended every experiment and
    // agent stream: until then `abort` and reads keep working, and a start is refused
    // with the reason rather than a refused connection.
    let stop = Arc::new(tokio::sync::Notify::new());
    let stopped = |stop: &Arc<tokio::sync::Notify>| {
        let stop = stop.clone();
        async move { stop.notified().await }
    };
    let grpc = Server::builder()
        .tls_config(tls)?
        .http2_keepalive_interval(Some(Duration::from_secs(2)))
        .http2_keepalive_timeout(Some(Duration::from_secs(3)))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(AgentServiceServer::new(Agents(control.clone())))
        .add_service(chaos)
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(true)),
            stopped(&stop),
        );
    let http_stopped = stopped(&stop);
    let http = async move {
        match https {
            Some(acceptor) => crate::api::https::serve(http, acceptor, router, http_stopped).await,
            None => axum::serve(
                http,
                router.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(http_stopped)
            .await
            .map_err(anyhow::Error::from),
        }
    };
    let servers = tokio::spawn(async move {
        tokio::try_join!(async { grpc.await.context("gRPC server") }, async {
            http.await.context("HTTP server")
        })
        .map(|_| ())
    });
    tokio::pin!(servers);
    let signal = tokio::select! {
        name = shutdown_signal() => name,
        r = &mut servers => return r.context("servers")?,
    };
    // The stop is bounded: SHUTDOWN_BUDGET for the effects' removal and the
    // experiments' records, then a second for the servers to close.
    let t0 = std::time::Instant::now();
    info!(
        signal,
        "stopping: no new experiment starts; removing every effect"
    );
    clock.abort();
    let report = control.shut_down(SHUTDOWN_BUDGET).await;
    stop.notify_waiters();
    if tokio::time::timeout(Duration::from_secs(1), &mut servers)
        .await
        .is_err()
    {
        warn!("the servers did not close within 1 s; exiting anyway");
    }
    info!(interrupted = ?report.interrupted, unconfirmed = ?report.unconfirmed,
          sessions_ended = report.sessions, took_ms = t0.elapsed().as_millis() as u64,
          "coordinator stopped");
    Ok(())
}

/// How long a stop waits for agents to confirm that every effect is removed.
pub const SHUTDOWN_BUDGET: Duration = Duration::from_secs(3);

/// The first SIGTERM or SIGINT, by name.
async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}
