//! The web dashboard, served by the coordinator on its HTTP surface.
//!
//! `/ui` is one page of plain HTML, CSS and JavaScript compiled into the binary (no
//! front-end toolchain, nothing fetched from elsewhere). It holds no data: the page
//! asks the token-guarded JSON API under `/api/v1/` with the bearer token the user
//! gave it, once a second while it is open. Charts are SVG drawn here (`svg`).
//!
//! Roles are the API's: every read needs a viewer token; the abort button calls the
//! existing `POST /abort`, which needs an operator's. The page shows that button only
//! to operators and admins (`/api/v1/whoami`), and the server refuses a viewer's
//! abort whatever the page does.
pub mod svg;

use std::time::{Duration, SystemTime};

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use faultline_proto::{
    spec::Spec,
    v1::{ExperimentEvent, Phase, timestamp_ms},
};
use serde_json::{Value, json};

use crate::{
    api::auth::Role,
    api::{Http, http_caller},
    report::stats,
    store::TimelinePoint,
    view::{experiment_json, fault_summary, phase_name},
};

const INDEX: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// The window of the dashboard's statistics (the reference report's "30-Day").
const STATS_WINDOW: Duration = Duration::from_secs(30 * 86_400);

/// A signal the timeline can chart: its key, title, unit and where a reading has it.
struct Signal {
    key: &'static str,
    title: &'static str,
    unit: &'static str,
    get: fn(&TimelinePoint) -> Option<f64>,
}

const SIGNALS: [Signal; 5] = [
    Signal {
        key: "error_rate",
        title: "error rate",
        unit: "%",
        get: |p| p.error_rate_percent,
    },
    Signal {
        key: "latency_p99",
        title: "latency p99",
        unit: "ms",
        get: |p| p.latency_p99_ms,
    },
    Signal {
        key: "throughput",
        title: "throughput",
        unit: "req/s",
        get: |p| p.throughput_rps,
    },
    Signal {
        key: "health_score",
        title: "health score",
        unit: "points",
        get: |p| p.health_score,
    },
    Signal {
        key: "node_cpu",
        title: "node CPU",
        unit: "%",
        get: |p| p.node_cpu_percent,
    },
];

type ApiResult = Result<Json<Value>, (StatusCode, Json<Value>)>;

fn viewer(h: &Http, headers: &HeaderMap, what: &str) -> Result<(), (StatusCode, Json<Value>)> {
    http_caller(h, headers, Role::Viewer, what).map(|_| ())
}

fn internal(e: anyhow::Error) -> (StatusCode, Json<Value>) {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(json!({"error": format!("{e:#}")})),
    )
}

fn not_found(what: String) -> (StatusCode, Json<Value>) {
    (StatusCode::NOT_FOUND, Json(json!({ "error": what })))
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            // The page is data-free; a fresh binary's page must not be shadowed.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

fn svg(body: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

async fn whoami(State(h): State<Http>, headers: HeaderMap) -> ApiResult {
    let header = headers.get("authorization").and_then(|v| v.to_str().ok());
    let caller = h.tokens.authorize(header).map_err(|s| {
        (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": s.message()})),
        )
    })?;
    Ok(Json(json!({
        "name": caller.name,
        "role": caller.role.to_string(),
        "can_abort": caller.role >= Role::Operator,
    })))
}

/// The latest reading of an experiment with the values the dashboard shows live.
fn live(p: &TimelinePoint) -> Value {
    json!({
        "at_ms": p.at_ms, "phase": phase_name(p.phase),
        "error_rate_percent": p.error_rate_percent, "latency_p50_ms": p.latency_p50_ms,
        "latency_p99_ms": p.latency_p99_ms, "throughput_rps": p.throughput_rps,
        "health_score": p.health_score, "node_cpu_percent": p.node_cpu_percent,
        "node_memory_percent": p.node_memory_percent,
    })
}

fn summary(h: &Http, now: SystemTime) -> anyhow::Result<stats::Summary> {
    let since = now - STATS_WINDOW;
    let store = &h.control.store;
    let experiments = store.experiments_since(since, "")?;
    let runs = store.schedule_runs(since, "", 100_000)?;
    let findings = store.findings(since)?;
    Ok(stats::summarize(&stats::Records {
        since_ms: timestamp_ms(Some(&since.into())).unwrap_or(0),
        until_ms: timestamp_ms(Some(&now.into())).unwrap_or(0) + 1,
        scenario: None,
        experiments: &experiments,
        runs: &runs,
        findings: &findings,
    }))
}

/// The reference report's dashboard box, from live data.
async fn overview(State(h): State<Http>, headers: HeaderMap) -> ApiResult {
    viewer(&h, &headers, "the dashboard")?;
    let c = &h.control;
    let now = SystemTime::now();
    let mut ids: Vec<String> = c.running().keys().cloned().collect();
    ids.sort();
    let mut running = Vec::new();
    for id in &ids {
        let Some(e) = c.store.experiment(id).map_err(internal)? else {
            continue;
        };
        let last = c.store.latest_point(id).map_err(internal)?;
        let mut v = experiment_json(&e);
        v["summary"] = json!(fault_summary(&e));
        v["live"] = last.as_ref().map_or(Value::Null, live);
        running.push(v);
    }
    let recent = c.store.experiments(50).map_err(internal)?;
    let last = recent.iter().find(|e| e.outcome.is_some());
    let health = recent.iter().find_map(|e| {
        c.store.last_reading(&e.id).ok().flatten().and_then(|r| {
            r.health_score
                .map(|s| (s, e.id.clone(), timestamp_ms(r.at.as_ref())))
        })
    });
    let s = summary(&h, now).map_err(internal)?;
    let schedules = c.scheduler.list(&c.store).map_err(internal)?;
    let next = schedules
        .iter()
        .filter(|e| !e.paused)
        .filter_map(|e| timestamp_ms(e.next_run.as_ref()).map(|t| (t, e)))
        .min_by_key(|(t, _)| *t);
    let blackouts = c.scheduler.blackouts(chrono::Utc::now());
    let kill_switch = c.leases.kill_switch();
    let connected = c.connected_nodes();
    // Readiness without a dry run (that is an operator's action on the nodes, as in
    // `faultline status`): what would refuse an experiment started now.
    let mut not_ready = Vec::new();
    if let Some(k) = &kill_switch {
        not_ready.push(format!("kill switch engaged: {k}"));
    }
    if connected.is_empty() {
        not_ready.push("no agent connected".to_owned());
    }
    for b in blackouts.iter().filter(|b| b.active) {
        not_ready.push(format!("blackout {} active", b.name));
    }
    Ok(Json(json!({
        "now_ms": timestamp_ms(Some(&now.into())),
        "kill_switch": kill_switch,
        "connected_agents": connected,
        "nodes": c.nodes().len(),
        "running": running,
        "last_test": last.map(experiment_json),
        "stats_30d": {
            "tests": s.total.tests, "success_rate_percent": s.total.success_rate_percent,
            "avg_recovery_s": s.total.avg_recovery_s, "issues_found": s.findings.total,
            "issues_resolved": s.findings.resolved, "resilience_score": s.resilience.score,
            "scenarios": s.scenarios, "distribution": s.distribution,
        },
        "next_scheduled": next.map(|(t, e)| json!({"at_ms": t, "schedule": e.name, "scenario": e.scenario})),
        "health": health.map(|(score, id, at)| json!({"score": score, "experiment": id, "at_ms": at})),
        "readiness": {"ready": not_ready.is_empty(), "reasons": not_ready},
    })))
}

#[derive(serde::Deserialize, Default)]
struct ListQuery {
    #[serde(default)]
    limit: u32,
}

async fn experiments(
    State(h): State<Http>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> ApiResult {
    viewer(&h, &headers, "listing experiments")?;
    let limit = if q.limit == 0 { 100 } else { q.limit.min(1000) };
    let list = h.control.store.experiments(limit).map_err(internal)?;
    Ok(Json(json!({
        "experiments": list.iter().map(|e| {
            let mut v = experiment_json(e);
            v["summary"] = json!(fault_summary(e));
            v
        }).collect::<Vec<_>>(),
    })))
}

/// The phase spans of an experiment from its recorded phase changes: each phase
/// from the event that entered it to the next change; the last one ends at `end_ms`
/// (its latest reading or event). Only the phases the chart shades are kept.
fn phase_spans(events: &[(i64, Phase)], end_ms: i64) -> Vec<(i64, i64, Phase)> {
    let mut spans: Vec<(i64, i64, Phase)> = Vec::new();
    for &(at, phase) in events {
        match spans.last_mut() {
            Some(last) if last.2 == phase => {}
            Some(last) => {
                last.1 = at;
                spans.push((at, at, phase));
            }
            None => spans.push((at, at, phase)),
        }
    }
    if let Some(last) = spans.last_mut() {
        last.1 = last.1.max(end_ms);
    }
    spans.retain(|s| matches!(s.2, Phase::Baseline | Phase::Fault | Phase::Recovery));
    spans
}

/// The guard on `signal` in the spec the experiment ran with: its value in the
/// signal's unit and its name.
fn threshold(spec: Option<&Spec>, signal: &str) -> Option<(f64, String)> {
    let a = spec?.abort_conditions.as_ref()?;
    match signal {
        "error_rate" => a
            .error_rate_above
            .map(|p| (p.value(), "error_rate_above".to_owned())),
        "latency_p99" => a
            .latency_p99_above
            .as_ref()
            .map(|d| (d.0.as_secs_f64() * 1e3, "latency_p99_above".to_owned())),
        "health_score" => a
            .health_score_below
            .map(|v| (v, "health_score_below".to_owned())),
        _ => None,
    }
}

/// The signal a breached guard watched, if it watched one of the charted signals.
fn breached_signal(guard: &str) -> Option<&'static str> {
    match guard.rsplit('.').next()? {
        "error_rate_above" => Some("error_rate"),
        "latency_p99_above" => Some("latency_p99"),
        "health_score_below" => Some("health_score"),
        _ => None,
    }
}

/// What every chart of one experiment shares, worked out once: its phase spans,
/// the spec it ran with and its guard breach.
struct Charts<'a> {
    points: &'a [TimelinePoint],
    phases: Vec<(i64, i64, Phase)>,
    spec: Option<Spec>,
    breach: Option<&'a faultline_proto::v1::GuardBreach>,
}

impl<'a> Charts<'a> {
    fn new(
        e: &'a faultline_proto::v1::Experiment,
        events: &[ExperimentEvent],
        points: &'a [TimelinePoint],
    ) -> Self {
        let changes: Vec<(i64, Phase)> = events
            .iter()
            .filter_map(|ev| {
                Some((
                    timestamp_ms(ev.at.as_ref())?,
                    Phase::try_from(ev.phase).ok()?,
                ))
            })
            .collect();
        let end = points
            .last()
            .map(|p| p.at_ms)
            .into_iter()
            .chain(changes.last().map(|c| c.0))
            .max()
            .unwrap_or(0);
        Self {
            points,
            phases: phase_spans(&changes, end),
            spec: Spec::parse(&e.spec_yaml).ok(),
            breach: e.outcome.as_ref().and_then(|o| o.breach.as_ref()),
        }
    }

    fn svg(&self, s: &Signal) -> String {
        let breach = self.breach.and_then(|b| {
            let at = timestamp_ms(b.visible_at.as_ref())?;
            let mine = breached_signal(&b.guard) == Some(s.key);
            Some((at, mine.then_some(b.observed), b.describe()))
        });
        let with: Vec<&TimelinePoint> = self
            .points
            .iter()
            .filter(|p| (s.get)(p).is_some())
            .collect();
        let mut sources: Vec<&str> = with
            .iter()
            .map(|p| {
                if s.key.starts_with("node_") {
                    "node"
                } else {
                    p.source.as_str()
                }
            })
            .filter(|x| !x.is_empty())
            .collect();
        sources.sort_unstable();
        sources.dedup();
        svg::timeline(&svg::Timeline {
            title: s.title.to_owned(),
            unit: s.unit.to_owned(),
            source: sources.join(", "),
            points: with
                .iter()
                .filter_map(|p| Some((p.at_ms, (s.get)(p)?)))
                .collect(),
            phases: self.phases.clone(),
            threshold: threshold(self.spec.as_ref(), s.key),
            breach,
        })
    }
}

async fn experiment(
    State(h): State<Http>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    viewer(&h, &headers, "reading experiments")?;
    let store = &h.control.store;
    let e = store
        .experiment(&id)
        .map_err(internal)?
        .ok_or_else(|| not_found(format!("no experiment {id}")))?;
    let points = store.timeline(&id).map_err(internal)?;
    let events = store.events(&id).map_err(internal)?;
    let mut v = experiment_json(&e);
    v["summary"] = json!(fault_summary(&e));
    v["running"] = json!(h.control.running().contains_key(&id));
    v["live"] = points.last().map_or(Value::Null, live);
    v["readings"] = json!(points.len());
    v["events"] = events
        .iter()
        .map(|ev| {
            json!({"at_ms": timestamp_ms(ev.at.as_ref()), "phase": phase_name(ev.phase),
                   "message": ev.message})
        })
        .collect();
    let charts = Charts::new(&e, &events, &points);
    v["charts"] = SIGNALS
        .iter()
        .filter(|s| points.iter().any(|p| (s.get)(p).is_some()))
        .map(|s| json!({"signal": s.key, "svg": charts.svg(s)}))
        .collect();
    Ok(Json(v))
}

async fn timeline_svg(
    State(h): State<Http>,
    headers: HeaderMap,
    Path((id, signal)): Path<(String, String)>,
) -> Result<Response, (StatusCode, Json<Value>)> {
    viewer(&h, &headers, "reading experiments")?;
    let s = SIGNALS.iter().find(|s| s.key == signal).ok_or_else(|| {
        not_found(format!(
            "no signal {signal}: one of error_rate, latency_p99, throughput, health_score, node_cpu"
        ))
    })?;
    let store = &h.control.store;
    let e = store
        .experiment(&id)
        .map_err(internal)?
        .ok_or_else(|| not_found(format!("no experiment {id}")))?;
    let points = store.timeline(&id).map_err(internal)?;
    let events = store.events(&id).map_err(internal)?;
    Ok(svg(Charts::new(&e, &events, &points).svg(s)))
}

async fn distribution_svg(
    State(h): State<Http>,
    headers: HeaderMap,
) -> Result<Response, (StatusCode, Json<Value>)> {
    viewer(&h, &headers, "the dashboard")?;
    let s = summary(&h, SystemTime::now()).map_err(internal)?;
    Ok(svg(svg::distribution(&s.distribution)))
}

async fn schedules(State(h): State<Http>, headers: HeaderMap) -> ApiResult {
    viewer(&h, &headers, "listing schedules")?;
    let sch = &h.control.scheduler;
    let list = sch.list(&h.control.store).map_err(internal)?;
    Ok(Json(json!({
        "source": sch.file.source,
        "schedules": list.iter().map(|e| json!({
            "name": e.name, "when": e.when, "scenario": e.scenario, "paused": e.paused,
            "paused_by": e.paused_by, "next_run_ms": timestamp_ms(e.next_run.as_ref()),
            "last_run": e.last_run.as_ref().map(|r| json!({
                "slot_ms": timestamp_ms(r.slot.as_ref()),
                "status": crate::report::enum_name(format!("{:?}", r.status())),
                "experiment": r.experiment_id, "reasons": r.reasons,
            })),
        })).collect::<Vec<_>>(),
        "blackouts": sch.blackouts(chrono::Utc::now()).iter().map(|b| json!({
            "name": b.name, "when": b.when, "active": b.active,
            "active_until_ms": timestamp_ms(b.active_until.as_ref()),
            "next_start_ms": timestamp_ms(b.next_start.as_ref()),
        })).collect::<Vec<_>>(),
    })))
}

async fn nodes(State(h): State<Http>, headers: HeaderMap) -> ApiResult {
    viewer(&h, &headers, "listing nodes")?;
    let held = h.control.leases.held();
    let mut list: Vec<Value> = h
        .control
        .nodes()
        .iter()
        .map(|(name, e)| {
            json!({
                "name": name, "connected": e.session.is_some(),
                "agent_version": e.info.agent_version, "labels": e.info.labels,
                "kernel": e.info.capabilities.as_ref().map(|c| c.kernel.clone()),
                "cgroup": e.info.capabilities.as_ref().map(|c| c.cgroup.clone()),
                "latency_backend": e.info.capabilities.as_ref().map(|c| c.latency_backend.clone()),
                "last_heartbeat_ms": timestamp_ms(Some(&e.last_heartbeat.into())),
                "lease": held.iter().find(|l| l.nodes.contains(name)).map(|l| l.id.clone()),
            })
        })
        .collect();
    list.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    Ok(Json(json!({ "nodes": list })))
}

pub fn router() -> Router<Http> {
    Router::new()
        .route(
            "/ui",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/ui/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/ui/app.css",
            get(|| async { asset("text/css; charset=utf-8", APP_CSS) }),
        )
        .route("/api/v1/whoami", get(whoami))
        .route("/api/v1/overview", get(overview))
        .route("/api/v1/experiments", get(experiments))
        .route("/api/v1/experiments/{id}", get(experiment))
        .route(
            "/api/v1/experiments/{id}/timeline/{signal}",
            get(timeline_svg),
        )
        .route("/api/v1/distribution", get(distribution_svg))
        .route("/api/v1/schedules", get(schedules))
        .route("/api/v1/nodes", get(nodes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_spans_run_from_each_change_to_the_next() {
        let changes = [
            (0, Phase::Preflight),
            (500, Phase::Baseline),
            (2000, Phase::Fault),
            (2100, Phase::Fault),
            (4000, Phase::Recovery),
            (6000, Phase::Completed),
        ];
        assert_eq!(
            phase_spans(&changes, 6000),
            vec![
                (500, 2000, Phase::Baseline),
                (2000, 4000, Phase::Fault),
                (4000, 6000, Phase::Recovery)
            ]
        );
        // A running experiment's current phase lasts up to its latest reading.
        assert_eq!(
            phase_spans(&changes[..3], 2500),
            vec![(500, 2000, Phase::Baseline), (2000, 2500, Phase::Fault)]
        );
        assert!(phase_spans(&[], 0).is_empty());
    }

    #[test]
    fn thresholds_come_from_the_spec_in_the_signals_unit() {
        let spec = Spec::parse(
            "scenario: latency_injection\nlatency: 50ms\nabort_conditions:\n  latency_p99_above: 30ms\n  error_rate_above: 1%\n  health_score_below: 80\n",
        )
        .unwrap();
        assert_eq!(
            threshold(Some(&spec), "latency_p99"),
            Some((30.0, "latency_p99_above".into()))
        );
        assert_eq!(
            threshold(Some(&spec), "error_rate"),
            Some((1.0, "error_rate_above".into()))
        );
        assert_eq!(
            threshold(Some(&spec), "health_score"),
            Some((80.0, "health_score_below".into()))
        );
        assert_eq!(threshold(Some(&spec), "throughput"), None);
        assert_eq!(threshold(None, "latency_p99"), None);
        assert_eq!(
            breached_signal("abort_conditions.latency_p99_above"),
            Some("latency_p99")
        );
        assert_eq!(breached_signal("health.dark_grace"), None);
    }
}
