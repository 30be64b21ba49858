//! `faultline-sample`: the small service faultline's tests and demo judge experiments
//! by, and its load generator.
//!
//! `serve` answers `GET /api/item` through a cache. The cache is warm at start;
//! `POST /cache/drop` (the cache-invalidation hook) empties it, and it warms up again
//! linearly over `--warmup`: t seconds after a drop a request hits with probability
//! t / warmup. A miss costs `--miss-latency`. `POST /gc` (the GC hook) stops the world
//! for `--gc-pause`. `GET /metrics` is Prometheus text: requests by code, a duration
//! histogram, cache hits/misses/drops, GC collections and pause time, and the time of
//! the last successful backup. `POST /admin/fault?error_rate=0.05&latency=20ms&down=1`
//! degrades it (no parameters: healthy again) and `POST /admin/backup?age=48h` dates
//! the backup back: test controls, not something to expose.
//!
//! `load` sends GETs at a steady rate, retrying a failed request up to `--retries`
//! times (10 ms, then 20 ms ... apart), and prints a JSON summary on SIGTERM/SIGINT.
//! With `--metrics ADDR` it serves what its users saw, client side and wire included:
//! `sample_client_requests_total{code}` (ok or error, after retries) and the
//! `sample_client_request_duration_seconds` histogram of every attempt.
use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use axum::{
    Router,
    extract::{Query, State},
    http::StatusCode,
    routing::{get, post},
};
use clap::{Parser, Subcommand};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Parser)]
#[command(
    name = "faultline-sample",
    about = "A sample service and load generator for faultline"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    Serve(ServeArgs),
    Load(LoadArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// How long the cache takes to warm up after a drop (linearly).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    warmup: Duration,
    /// What a cache miss costs.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "40ms")]
    miss_latency: Duration,
    /// How long a collection (POST /gc) stops the world.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "100ms")]
    gc_pause: Duration,
}

#[derive(clap::Args)]
struct LoadArgs {
    #[arg(long)]
    url: String,
    /// Requests per second.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    #[arg(long, default_value_t = 2)]
    retries: u32,
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    timeout: Duration,
    /// Serve the client-side metrics here (GET /metrics).
    #[arg(long)]
    metrics: Option<SocketAddr>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Code {
    code: String,
}

#[derive(Default)]
struct Degraded {
    error_rate: f64,
    latency: Duration,
    down: bool,
}

struct App {
    warmup: Duration,
    miss_latency: Duration,
    gc_pause: Duration,
    dropped_at: Mutex<Option<Instant>>,
    gc_until: Mutex<Option<Instant>>,
    degraded: Mutex<Degraded>,
    rng: AtomicU64,
    registry: Registry,
    requests: Family<Code, Counter>,
    duration: Histogram,
    hits: Counter,
    misses: Counter,
    drops: Counter,
    collections: Counter,
    gc_pause_total: Counter<f64, AtomicU64>,
    backup: Gauge<f64, AtomicU64>,
}

/// Request-duration buckets (seconds), server and client alike.
fn buckets() -> Histogram {
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    ])
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

impl App {
    fn new(a: &ServeArgs) -> Self {
        let mut registry = Registry::default();
        let requests = Family::<Code, Counter>::default();
        // Both codes exist from the start, so an error-rate query never divides by
        // an absent series.
        for code in ["200", "500"] {
            let _ = requests.get_or_create(&Code { code: code.into() });
        }
        let duration = buckets();
        let (hits, misses, drops, collections) = (
            Counter::default(),
            Counter::default(),
            Counter::default(),
            Counter::default(),
        );
        let gc_pause_total = Counter::<f64, AtomicU64>::default();
        let backup = Gauge::<f64, AtomicU64>::default();
        backup.set(now_s());
        registry.register(
            "sample_requests",
            "Requests to /api/item by status code",
            requests.clone(),
        );
        registry.register(
            "sample_request_duration_seconds",
            "Time to answer /api/item",
            duration.clone(),
        );
        registry.register("sample_cache_hits", "Cache hits", hits.clone());
        registry.register("sample_cache_misses", "Cache misses", misses.clone());
        registry.register(
            "sample_cache_drops",
            "Cache drops (POST /cache/drop)",
            drops.clone(),
        );
        registry.register(
            "sample_gc_collections",
            "Collections (POST /gc)",
            collections.clone(),
        );
        registry.register(
            "sample_gc_pause_seconds",
            "Time the world stopped for collections",
            gc_pause_total.clone(),
        );
        registry.register(
            "sample_backup_last_success_timestamp_seconds",
            "When the last backup succeeded",
            backup.clone(),
        );
        Self {
            warmup: a.warmup,
            miss_latency: a.miss_latency,
            gc_pause: a.gc_pause,
            dropped_at: Mutex::new(None),
            gc_until: Mutex::new(None),
            degraded: Mutex::default(),
            rng: AtomicU64::new(0x9E37_79B9_7F4A_7C15 ^ u64::from(std::process::id())),
            registry,
            requests,
            duration,
            hits,
            misses,
            drops,
            collections,
            gc_pause_total,
            backup,
        }
    }

    /// A uniform draw in [0, 1) (xorshift; only the shares matter).
    fn uniform(&self) -> f64 {
        let mut x = self.rng.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.store(x, Ordering::Relaxed);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The chance a request hits now.
    fn hit_ratio(&self) -> f64 {
        match *lock(&self.dropped_at) {
            None => 1.0,
            Some(d) if self.warmup.is_zero() => {
                let _ = d;
                1.0
            }
            Some(d) => (d.elapsed().as_secs_f64() / self.warmup.as_secs_f64()).min(1.0),
        }
    }
}

async fn item(State(app): State<Arc<App>>) -> (StatusCode, &'static str) {
    let started = Instant::now();
    let mut wait = Duration::ZERO;
    if let Some(until) = *lock(&app.gc_until) {
        wait += until.saturating_duration_since(started);
    }
    if app.uniform() < app.hit_ratio() {
        app.hits.inc();
    } else {
        app.misses.inc();
        wait += app.miss_latency;
    }
    let (error_rate, extra, down) = {
        let d = lock(&app.degraded);
        (d.error_rate, d.latency, d.down)
    };
    wait += extra;
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
    let failed = down || app.uniform() < error_rate;
    let code = if failed { "500" } else { "200" };
    app.requests
        .get_or_create(&Code { code: code.into() })
        .inc();
    app.duration.observe(started.elapsed().as_secs_f64());
    if failed {
        (StatusCode::INTERNAL_SERVER_ERROR, "error\n")
    } else {
        (StatusCode::OK, "item\n")
    }
}

async fn healthz(State(app): State<Arc<App>>) -> StatusCode {
    if lock(&app.degraded).down {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    }
}

async fn drop_cache(State(app): State<Arc<App>>) -> &'static str {
    *lock(&app.dropped_at) = Some(Instant::now());
    app.drops.inc();
    "cache dropped\n"
}

async fn collect(State(app): State<Arc<App>>) -> &'static str {
    *lock(&app.gc_until) = Some(Instant::now() + app.gc_pause);
    app.collections.inc();
    app.gc_pause_total.inc_by(app.gc_pause.as_secs_f64());
    "collected\n"
}

#[derive(serde::Deserialize)]
struct FaultQuery {
    error_rate: Option<f64>,
    latency: Option<String>,
    down: Option<u8>,
}

async fn admin_fault(
    State(app): State<Arc<App>>,
    Query(q): Query<FaultQuery>,
) -> (StatusCode, String) {
    let latency = match q
        .latency
        .as_deref()
        .map(humantime::parse_duration)
        .transpose()
    {
        Ok(l) => l.unwrap_or_default(),
        Err(e) => return (StatusCode::BAD_REQUEST, format!("latency: {e}\n")),
    };
    let mut d = lock(&app.degraded);
    *d = Degraded {
        error_rate: q.error_rate.unwrap_or(0.0).clamp(0.0, 1.0),
        latency,
        down: q.down == Some(1),
    };
    (
        StatusCode::OK,
        format!(
            "error_rate {} latency {:?} down {}\n",
            d.error_rate, d.latency, d.down
        ),
    )
}

#[derive(serde::Deserialize)]
struct BackupQuery {
    age: String,
}

async fn admin_backup(
    State(app): State<Arc<App>>,
    Query(q): Query<BackupQuery>,
) -> (StatusCode, String) {
    match humantime::parse_duration(&q.age) {
        Ok(age) => {
            app.backup.set(now_s() - age.as_secs_f64());
            (StatusCode::OK, format!("backup {} old\n", q.age))
        }
        Err(e) => (StatusCode::BAD_REQUEST, format!("age: {e}\n")),
    }
}

async fn metrics(
    State(app): State<Arc<App>>,
) -> (StatusCode, [(&'static str, &'static str); 1], String) {
    let mut out = String::new();
    match encode(&mut out, &app.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                "content-type",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            out,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [("content-type", "text/plain")],
            e.to_string(),
        ),
    }
}

async fn serve(a: ServeArgs) -> std::io::Result<()> {
    let app = Arc::new(App::new(&a));
    let router = Router::new()
        .route("/api/item", get(item))
        .route("/healthz", get(healthz))
        .route("/cache/drop", post(drop_cache))
        .route("/gc", post(collect))
        .route("/admin/fault", post(admin_fault))
        .route("/admin/backup", post(admin_backup))
        .route("/metrics", get(metrics))
        .with_state(app);
    let listener = tokio::net::TcpListener::bind(a.listen).await?;
    eprintln!("faultline-sample: serving on {}", a.listen);
    axum::serve(listener, router)
        .with_graceful_shutdown(stopped())
        .await
}

async fn stopped() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

async fn load(a: LoadArgs) {
    let client = reqwest::Client::builder()
        .timeout(a.timeout)
        .build()
        .expect("client");
    let requests = Family::<Code, Counter>::default();
    for code in ["ok", "error"] {
        let _ = requests.get_or_create(&Code { code: code.into() });
    }
    let duration = buckets();
    let mut registry = Registry::default();
    registry.register(
        "sample_client_requests",
        "Requests as the client saw them (after retries)",
        requests.clone(),
    );
    registry.register(
        "sample_client_request_duration_seconds",
        "Every attempt, wire included",
        duration.clone(),
    );
    let registry = Arc::new(registry);
    if let Some(addr) = a.metrics {
        let registry = registry.clone();
        let router = Router::new().route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move {
                    let mut out = String::new();
                    let _ = encode(&mut out, &registry);
                    out
                }
            }),
        );
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => {
                tokio::spawn(async move { axum::serve(l, router).await });
            }
            Err(e) => eprintln!("faultline-sample load: --metrics {addr}: {e}"),
        }
    }
    let (sent, ok, retried, failed) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / a.rate.max(0.1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let stop = stopped();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tick.tick() => {
                let (client, url, retries) = (client.clone(), a.url.clone(), a.retries);
                let (sent, ok, retried, failed) = (sent.clone(), ok.clone(), retried.clone(), failed.clone());
                let (requests, duration) = (requests.clone(), duration.clone());
                sent.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let mut backoff = Duration::from_millis(10);
                    for attempt in 0..=retries {
                        if attempt > 0 {
                            retried.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(backoff).await;
                            backoff *= 2;
                        }
                        let started = Instant::now();
                        let answered = match client.get(&url).send().await {
                            Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                            Err(_) => false,
                        };
                        duration.observe(started.elapsed().as_secs_f64());
                        if answered {
                            ok.fetch_add(1, Ordering::Relaxed);
                            requests.get_or_create(&Code { code: "ok".into() }).inc();
                            return;
                        }
                    }
                    failed.fetch_add(1, Ordering::Relaxed);
                    requests.get_or_create(&Code { code: "error".into() }).inc();
                });
            }
        }
    }
    println!(
        "{}",
        serde_json::json!({
            "sent": sent.load(Ordering::Relaxed), "ok": ok.load(Ordering::Relaxed),
            "retried": retried.load(Ordering::Relaxed), "failed": failed.load(Ordering::Relaxed),
        })
    );
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    match cli.command {
        Cmd::Serve(a) => {
            if let Err(e) = rt.block_on(serve(a)) {
                eprintln!("faultline-sample: {e}");
                return std::process::ExitCode::from(1);
            }
        }
        Cmd::Load(a) => rt.block_on(load(a)),
    }
    std::process::ExitCode::SUCCESS
}
