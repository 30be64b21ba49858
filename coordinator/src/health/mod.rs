//! The service's health signals during one experiment: HTTP probes (`http`),
//! Prometheus queries (`prometheus`), Alertmanager's alerts (`alertmanager`) and the
//! health score (`score`). A `Monitor` starts every configured source when the
//! experiment's preflight begins and stops them when it ends; its `reading` is the
//! steady state now, which preflight, the guards, the recovery tracker, the live
//! stream and the store all take from the same place.
pub mod alertmanager;
pub mod http;
pub mod prometheus;
pub mod score;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use faultline_proto::{
    spec::{CheckSource, Checks, Health, ProbeFrom, ScoreWeights, Severity},
    v1::{HealthReading, ProbeSpec},
};
use tokio::sync::{mpsc, watch};

pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// An error and its sources, `a: b: c` (reqwest hides the useful part in them).
/// The coordinator's one HTTP client shape (probes, Prometheus, Alertmanager,
/// readiness URLs): a request goes where its URL says and nowhere else. A redirect
/// is an answer, never followed: following it would let an endpoint send the
/// coordinator to an address nobody configured.
pub fn http_client(timeout: std::time::Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("a plain HTTP client builds")
}

pub fn causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            out = format!("{out}: {s_text}");
        }
        next = s.source();
    }
    out
}

#[derive(Clone, Debug)]
pub struct ProbePlan {
    pub name: String,
    pub url: String,
    pub hz: f64,
    pub timeout: Duration,
    pub from: ProbeFrom,
}

#[derive(Clone, Debug)]
pub struct PrometheusPlan {
    pub url: String,
    pub interval: Duration,
    pub queries: faultline_proto::spec::Queries,
}

impl PrometheusPlan {
    /// The queries read every interval.
    pub fn live(&self) -> Vec<(&'static str, String)> {
        let q = &self.queries;
        [
            ("error_rate", &q.error_rate),
            ("latency_p99", &q.latency_p99),
            ("throughput", &q.throughput),
            ("traffic_vs_peak", &q.traffic_vs_peak),
            ("health_score", &q.health_score),
        ]
        .into_iter()
        .filter_map(|(n, q)| q.clone().map(|q| (n, q)))
        .collect()
    }
}

#[derive(Clone, Debug)]
pub struct AlertmanagerPlan {
    pub url: String,
    pub severity_label: Option<String>,
    pub severities: Option<std::collections::BTreeMap<String, Severity>>,
    pub incident_severities: Vec<Severity>,
}

/// Every source of one experiment, with defaults filled in.
#[derive(Clone, Debug)]
pub struct HealthPlan {
    pub probes: Vec<ProbePlan>,
    pub prometheus: Option<PrometheusPlan>,
    pub alertmanager: Option<AlertmanagerPlan>,
    pub window: Duration,
    pub dark_grace: Duration,
    pub score: ScoreWeights,
    pub checks: Checks,
}

impl HealthPlan {
    pub fn from_config(h: &Health) -> Self {
        Self {
            probes: h
                .http
                .iter()
                .flatten()
                .map(|p| ProbePlan {
                    name: p.name.clone(),
                    url: p.url.clone(),
                    hz: p.rate.map_or(10.0, |r| r.0),
                    timeout: p.timeout.map_or(Duration::from_secs(1), |t| t.0),
                    from: p.from.unwrap_or(ProbeFrom::Coordinator),
                })
                .collect(),
            prometheus: h.prometheus.as_ref().map(|p| PrometheusPlan {
                url: p.url.clone(),
                interval: p.interval.map_or(Duration::from_secs(1), |i| i.0),
                queries: p.queries.clone(),
            }),
            alertmanager: h.alertmanager.as_ref().map(|a| AlertmanagerPlan {
                url: a.url.clone(),
                severity_label: a.severity_label.clone(),
                severities: a.severities.clone(),
                incident_severities: a
                    .incident_severities
                    .clone()
                    .unwrap_or_else(|| vec![Severity::P0, Severity::P1, Severity::P2]),
            }),
            window: h.window.map_or(Duration::from_secs(5), |w| w.0),
            dark_grace: h.dark_grace.map_or(Duration::from_secs(5), |g| g.0),
            score: h.score.clone().unwrap_or_default(),
            checks: h.checks.clone().unwrap_or_default(),
        }
    }

    /// No health signal at all: the experiment is judged by the node alone.
    pub fn is_empty(&self) -> bool {
        self.probes.is_empty()
            && self.prometheus.as_ref().is_none_or(|p| p.live().is_empty())
            && self.alertmanager.is_none()
    }

    pub fn check_source(&self, which: &str) -> Option<CheckSource> {
        match which {
            "recent_backup" => self.checks.recent_backup.clone().or_else(|| {
                self.prometheus
                    .as_ref()
                    .and_then(|p| p.queries.recent_backup.clone())
                    .map(CheckSource::Promql)
            }),
            _ => self.checks.incident_response.clone(),
        }
    }
}

/// What every source has seen so far.
#[derive(Debug, Default)]
pub struct Sources {
    pub probes: Vec<http::ProbeLog>,
    pub prometheus: Option<prometheus::State>,
    pub alertmanager: Option<alertmanager::State>,
    /// Bumped on every new data point.
    pub version: u64,
}

/// The steady state at one instant.
#[derive(Clone, Debug, Default)]
pub struct Reading {
    pub at: Option<SystemTime>,
    pub http: Option<http::Stats>,
    pub prom_error_rate: Option<f64>,
    pub prom_p99_ms: Option<f64>,
    pub prom_throughput: Option<f64>,
    pub traffic_vs_peak: Option<f64>,
    pub health_score: Option<f64>,
    pub alerts: Option<Vec<alertmanager::Alert>>,
}

impl Reading {
    /// The primary error rate and p99: Prometheus (the service's own traffic) where
    /// it has them, else the probes.
    pub fn error_rate(&self) -> Option<f64> {
        self.prom_error_rate.or(self.http.map(|h| h.error_rate))
    }
    pub fn p99_ms(&self) -> Option<f64> {
        self.prom_p99_ms.or(self.http.map(|h| h.p99_ms))
    }
    pub fn throughput(&self) -> Option<f64> {
        self.prom_throughput.or(self.http.map(|h| h.throughput))
    }
    pub fn source(&self) -> &'static str {
        if self.prom_error_rate.is_some() || self.prom_p99_ms.is_some() {
            "prometheus"
        } else if self.http.is_some() {
            "http"
        } else {
            ""
        }
    }
    pub fn incidents(&self) -> usize {
        self.alerts.as_ref().map_or(0, Vec::len)
    }

    pub fn to_proto(&self) -> HealthReading {
        HealthReading {
            at: self.at.map(Into::into),
            error_rate_percent: self.error_rate(),
            latency_p50_ms: self.http.map(|h| h.p50_ms),
            latency_p99_ms: self.p99_ms(),
            throughput_rps: self.throughput(),
            health_score: self.health_score,
            traffic_vs_peak_percent: self.traffic_vs_peak.map(|t| t * 100.0),
            active_incidents: self.incidents() as u32,
            availability_percent: self.error_rate().map(|e| 100.0 - e),
            source: self.source().to_owned(),
        }
    }
}

/// Aborts a task when dropped.
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

type Task = AbortOnDrop;

/// What the monitor needs of the fleet, and nothing more: a node-side probe started
/// on a node's agent, its results routed back, and stopped. (The coordinator's
/// `Control` is one.)
pub trait NodeProbes: Send + Sync {
    /// Starts probe `probe_id` on `node`'s agent: its result batches arrive on the
    /// receiver; the error says why the order could not be sent.
    fn start_probe(
        &self,
        node: &str,
        probe_id: &str,
        spec: ProbeSpec,
    ) -> (ProbeResultsRx, Result<(), String>);
    fn stop_probe(&self, node: &str, probe_id: &str);
}

/// The running sources of one experiment; dropping it stops them (node-side probes
/// are told to stop).
pub struct Monitor {
    pub plan: HealthPlan,
    pub shared: Arc<Mutex<Sources>>,
    pub changed: watch::Receiver<u64>,
    pub started: Instant,
    pub started_at: SystemTime,
    fleet: Arc<dyn NodeProbes>,
    node_probes: Vec<(String, String)>,
    _tasks: Vec<Task>,
    /// Held so `changed` stays open while no source runs (it would fire at once).
    _changed: watch::Sender<u64>,
}

impl Monitor {
    pub fn start(
        plan: HealthPlan,
        fleet: Arc<dyn NodeProbes>,
        experiment: &str,
        nodes: &[String],
    ) -> Self {
        let (tx, rx) = watch::channel(0);
        let mut sources = Sources::default();
        let mut tasks = Vec::new();
        let mut node_probes = Vec::new();
        let mut logs = Vec::new();
        for p in &plan.probes {
            match p.from {
                ProbeFrom::Coordinator => logs.push((p, None)),
                ProbeFrom::Node => {
                    for n in nodes {
                        logs.push((p, Some(n.clone())));
                    }
                }
            }
        }
        for (p, node) in &logs {
            sources.probes.push(http::ProbeLog {
                name: match node {
                    Some(n) => format!("{}@{n}", p.name),
                    None => p.name.clone(),
                },
                url: p.url.clone(),
                ..Default::default()
            });
        }
        if let Some(p) = &plan.prometheus {
            sources.prometheus = Some(prometheus::State {
                url: p.url.clone(),
                ..Default::default()
            });
        }
        if let Some(a) = &plan.alertmanager {
            sources.alertmanager = Some(alertmanager::State {
                url: a.url.clone(),
                ..Default::default()
            });
        }
        let shared = Arc::new(Mutex::new(sources));
        for (i, (p, node)) in logs.into_iter().enumerate() {
            match node {
                None => tasks.push(AbortOnDrop(tokio::spawn(http::run(
                    p.url.clone(),
                    p.hz,
                    p.timeout,
                    shared.clone(),
                    i,
                    tx.clone(),
                )))),
                Some(n) => {
                    let probe_id = format!("{experiment}-{}-{n}", p.name);
                    let spec = ProbeSpec {
                        url: p.url.clone(),
                        rate_hz: p.hz,
                        timeout: p.timeout.try_into().ok(),
                    };
                    let (mut results, sent) = fleet.start_probe(&n, &probe_id, spec);
                    if let Err(e) = sent {
                        lock(&shared).probes[i].last_error = Some(e);
                    }
                    node_probes.push((n, probe_id));
                    let (shared, tx) = (shared.clone(), tx.clone());
                    tasks.push(AbortOnDrop(tokio::spawn(async move {
                        while let Some(batch) = results.recv().await {
                            let mut s = lock(&shared);
                            if !batch.refused.is_empty() {
                                s.probes[i].refused = Some(batch.refused.clone());
                            }
                            for r in &batch.results {
                                let err = (!r.ok).then(|| format!("HTTP {}", r.status));
                                s.probes[i].push(http::hit_from_agent(r), err);
                            }
                            s.version += 1;
                            let v = s.version;
                            drop(s);
                            tx.send_replace(v);
                        }
                    })));
                }
            }
        }
        if let Some(p) = &plan.prometheus {
            let live = p.live();
            if !live.is_empty() {
                tasks.push(AbortOnDrop(tokio::spawn(prometheus::run(
                    p.url.clone(),
                    p.interval,
                    live,
                    shared.clone(),
                    tx.clone(),
                ))));
            }
        }
        if let Some(a) = &plan.alertmanager {
            let sev =
                alertmanager::Severities::new(a.severity_label.as_deref(), a.severities.as_ref());
            tasks.push(AbortOnDrop(tokio::spawn(alertmanager::run(
                a.url.clone(),
                sev,
                shared.clone(),
                tx.clone(),
            ))));
        }
        Self {
            plan,
            shared,
            changed: rx,
            started: Instant::now(),
            started_at: SystemTime::now(),
            fleet,
            node_probes,
            _tasks: tasks,
            _changed: tx,
        }
    }

    /// The steady state now, over the sliding window.
    pub fn reading(&self) -> Reading {
        let s = lock(&self.shared);
        let now = Instant::now();
        let from = now.checked_sub(self.plan.window).unwrap_or(self.started);
        let http = http::stats(&s.probes, from, now + Duration::from_millis(1));
        let prom = s.prometheus.as_ref();
        let value = |n: &str| prom.and_then(|p| p.value(n));
        let alerts = s
            .alertmanager
            .as_ref()
            .and_then(|a| a.last_ok.map(|_| a.active.clone()));
        let mut r = Reading {
            at: Some(SystemTime::now()),
            http,
            prom_error_rate: value("error_rate").map(|v| v * 100.0),
            prom_p99_ms: value("latency_p99").map(|v| v * 1e3),
            prom_throughput: value("throughput"),
            traffic_vs_peak: value("traffic_vs_peak"),
            health_score: None,
            alerts,
        };
        let has_score_query = self
            .plan
            .prometheus
            .as_ref()
            .is_some_and(|p| p.queries.health_score.is_some());
        r.health_score = if has_score_query {
            value("health_score")
        } else {
            score::computed(
                r.error_rate(),
                r.p99_ms(),
                r.alerts.as_deref(),
                &self.plan.score,
            )
        };
        r
    }

    /// Waits until `span` has passed and every source has answered (a probe result
    /// or two, one query round, one alert poll), or twice `span` at most.
    pub async fn settle(&mut self, span: Duration) {
        if self.plan.is_empty() {
            return;
        }
        let from = tokio::time::Instant::now();
        let until = from + 2 * span.max(Duration::from_secs(1));
        let full = from + span;
        loop {
            let ready = {
                let s = lock(&self.shared);
                let probes = s
                    .probes
                    .iter()
                    .all(|p| p.hits.len() >= 2 || p.refused.is_some());
                let prom = s.prometheus.as_ref().is_none_or(|p| {
                    p.rounds > 0
                        || self
                            .plan
                            .prometheus
                            .as_ref()
                            .is_some_and(|pp| pp.live().is_empty())
                });
                let am = s.alertmanager.as_ref().is_none_or(|a| a.polls > 0);
                probes && prom && am
            };
            let now = tokio::time::Instant::now();
            if (ready && now >= full) || now >= until {
                return;
            }
            if ready {
                tokio::time::sleep_until(full).await;
                continue;
            }
            let _ = tokio::time::timeout_at(until, self.changed.changed()).await;
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        for (node, probe_id) in &self.node_probes {
            self.fleet.stop_probe(node, probe_id);
        }
    }
}

/// The results of node-side probes, routed from the agents' sessions.
pub type ProbeResultsRx = mpsc::UnboundedReceiver<faultline_proto::v1::ProbeResults>;
