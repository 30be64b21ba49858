//! Preflight: every prerequisite evaluated and reported with its value, before
//! anything is applied. A failing check refuses the experiment with the whole list.
//!
//! Thresholds run where their signal has a source. Without one they are
//! `skipped: no source`, which fails only when the system that would provide the
//! signal is required. Required systems are operational when their configured source
//! answers: `rollback` is every target agent's self-test, `health_checker` the HTTP
//! probes (or a health-score query), `monitoring` Prometheus, `alerting`
//! Alertmanager, `incident_response` its own check or Alertmanager's receivers,
//! `recent_backup` its check. A required system the spec leaves out of its
//! `required` list is waived, and the waiver is in the list too.
use std::{collections::BTreeSet, sync::Arc, time::Duration};

use faultline_proto::{
    spec::{CheckSource, Severity, System},
    v1::{Check, CheckStatus},
};

use crate::{
    engine::plan::Plan,
    fleet::control::Control,
    health::{Monitor, Reading, alertmanager, http, lock, prometheus},
};

/// Probe results a preflight p99 is taken over when they arrive within
/// `SETTLE_MAX`: with nearest rank, the p99 of fewer than 100 results is
/// the slowest of them, and one stalled request on a busy node would refuse the
/// experiment (seen in CI: "p99 9.8 ms" against a 3.9 ms baseline's 9.3 ms bound,
/// over a 3 s window of 60 probes).
const P99_MIN_PROBES: usize = 100;

/// The longest preflight waits for data before judging.
const SETTLE_MAX: Duration = Duration::from_secs(10);

fn check(
    name: &str,
    status: CheckStatus,
    value: String,
    threshold: String,
    detail: String,
) -> Check {
    Check {
        name: name.to_owned(),
        status: status as i32,
        value,
        threshold,
        detail,
    }
}

fn pass_fail(ok: bool) -> CheckStatus {
    if ok {
        CheckStatus::Pass
    } else {
        CheckStatus::Fail
    }
}

/// Runs the self-tests and waits for the sources, then evaluates every check.
pub async fn run(
    plan: &Plan,
    monitor: &mut Monitor,
    c: &Arc<Control>,
    baseline_p99: Option<f64>,
) -> Vec<Check> {
    let required: BTreeSet<System> = plan.required.iter().copied().collect();
    // The self-tests first, so the health window that follows does not measure the
    // target while its agent loads programs.
    let self_tests = if required.contains(&System::Rollback) {
        Some(self_tests(plan, c).await)
    } else {
        None
    };
    let probes = settle(monitor).await;
    let reading = monitor.reading();
    let mut checks = thresholds(&Seen {
        plan,
        monitor,
        reading: &reading,
        probes,
        required: &required,
        baseline_p99,
    })
    .await;
    checks.extend(required_systems(plan, monitor, &reading, &required).await);
    checks.extend(self_tests.map(|results| rollback(&results)));
    checks
}

/// Every target agent's rollback self-test, in turn.
async fn self_tests(plan: &Plan, c: &Arc<Control>) -> Vec<(String, Result<String, String>)> {
    let mut out = Vec::new();
    for n in &plan.nodes {
        let result = c
            .self_test(n, &plan.self_test_iface, Duration::from_secs(25))
            .await;
        out.push((n.clone(), result));
    }
    out
}

/// Waits for a whole window of data, and for enough probe results that their p99 is
/// not the single slowest one: latency_within_baseline reads the probes' p99 over
/// everything since the start of this wait (returned), the other checks the sliding
/// window.
async fn settle(monitor: &mut Monitor) -> Option<http::Stats> {
    let from = std::time::Instant::now();
    monitor.settle(monitor.plan.window.min(SETTLE_MAX)).await;
    let probes_since_from = || {
        let s = lock(&monitor.shared);
        http::stats(
            &s.probes,
            from,
            std::time::Instant::now() + Duration::from_millis(1),
        )
    };
    // Then, at the probes' combined rate, until there are enough results.
    let hz: f64 = monitor.plan.probes.iter().map(|p| p.hz).sum();
    while hz > 0.0
        && from.elapsed() < SETTLE_MAX
        && probes_since_from().is_some_and(|st| st.count < P99_MIN_PROBES)
    {
        tokio::time::sleep(Duration::from_secs_f64(1.0 / hz)).await;
    }
    probes_since_from()
}

/// The required systems but rollback (its self-tests are judged by `rollback`), each
/// operational, failing, or waived by the spec.
async fn required_systems(
    plan: &Plan,
    monitor: &Monitor,
    reading: &Reading,
    required: &BTreeSet<System>,
) -> Vec<Check> {
    let mut checks = Vec::new();
    for system in System::ALL {
        let name = format!("required.{}", system.as_str());
        if plan.waivers.contains(&system) {
            checks.push(check(
                &name,
                CheckStatus::Waived,
                "-".into(),
                "operational".into(),
                "waived: the spec's prerequisites.required leaves it out".into(),
            ));
            continue;
        }
        if !required.contains(&system) {
            continue;
        }
        let (ok, value, detail) = match system {
            System::Rollback => continue,
            System::HealthChecker => health_checker(plan, monitor, reading),
            System::Monitoring => monitoring(plan).await,
            System::Alerting => alerting(monitor),
            System::IncidentResponse => incident_response(plan).await,
            System::RecentBackup => yes_no(plan, "recent_backup").await,
        };
        checks.push(check(
            &name,
            pass_fail(ok),
            value,
            "operational".into(),
            detail,
        ));
    }
    checks
}

/// Rollback is operational when every target's self-test passed.
fn rollback(results: &[(String, Result<String, String>)]) -> Check {
    let failed: Vec<String> = results
        .iter()
        .filter_map(|(n, r)| r.as_ref().err().map(|e| format!("{n}: {e}")))
        .collect();
    let passed: Vec<String> = results
        .iter()
        .filter_map(|(n, r)| r.as_ref().ok().map(|d| format!("{n}: {d}")))
        .collect();
    let (value, detail) = if failed.is_empty() {
        ("self-test passed", passed.join("; "))
    } else {
        ("self-test failed", failed.join("; "))
    };
    check(
        "required.rollback",
        pass_fail(failed.is_empty() && !results.is_empty()),
        value.into(),
        "operational".into(),
        detail,
    )
}

/// What the prerequisite checks read.
struct Seen<'a> {
    plan: &'a Plan,
    monitor: &'a Monitor,
    reading: &'a Reading,
    probes: Option<http::Stats>,
    required: &'a BTreeSet<System>,
    baseline_p99: Option<f64>,
}

impl Seen<'_> {
    /// A signal without a source: skipped, or failed when one of its providers is
    /// required.
    fn no_source(&self, name: &str, threshold: String, providers: &[System]) -> Check {
        let needed: Vec<&str> = providers
            .iter()
            .filter(|s| self.required.contains(s))
            .map(|s| s.as_str())
            .collect();
        if needed.is_empty() {
            check(
                name,
                CheckStatus::Skipped,
                "-".into(),
                threshold,
                "skipped: no source".into(),
            )
        } else {
            check(
                name,
                CheckStatus::Fail,
                "-".into(),
                threshold,
                format!("no source, and {} is required", needed.join(" / ")),
            )
        }
    }
}

/// Every prerequisite, in the order the result lists them: one row each.
enum Prerequisite {
    Numeric(Numeric),
    NoIncidents,
    LatencyWithinBaseline,
}

const PREREQUISITES: [Prerequisite; 5] = [
    Prerequisite::Numeric(HEALTH_SCORE_ABOVE),
    Prerequisite::NoIncidents,
    Prerequisite::Numeric(TRAFFIC_BELOW_PEAK),
    Prerequisite::Numeric(ERROR_RATE_BELOW),
    Prerequisite::LatencyWithinBaseline,
];

async fn thresholds(seen: &Seen<'_>) -> Vec<Check> {
    let mut out = Vec::new();
    for row in &PREREQUISITES {
        let c = match row {
            Prerequisite::Numeric(n) => numeric(seen, n),
            Prerequisite::NoIncidents => no_incidents(seen),
            Prerequisite::LatencyWithinBaseline => latency_within_baseline(seen).await,
        };
        out.extend(c);
    }
    out
}

fn numeric(seen: &Seen<'_>, row: &Numeric) -> Option<Check> {
    let (limit, threshold) = (row.limit)(&seen.plan.prerequisites)?;
    Some(match (row.value)(seen.reading) {
        Some(v) => check(
            row.name,
            pass_fail((row.passes)(v, limit)),
            (row.shown)(v),
            threshold,
            (row.detail)(seen.reading),
        ),
        None => row
            .query
            .and_then(|q| prometheus_failure(seen.monitor, q))
            .map(|e| {
                check(
                    row.name,
                    CheckStatus::Fail,
                    "-".into(),
                    threshold.clone(),
                    e,
                )
            })
            .unwrap_or_else(|| seen.no_source(row.name, threshold, &(row.providers)(seen.plan))),
    })
}

fn no_incidents(seen: &Seen<'_>) -> Option<Check> {
    let sev = seen.plan.prerequisites.no_incidents.as_ref()?;
    let th = format!(
        "none of {}",
        sev.iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Some(match &seen.reading.alerts {
        Some(alerts) => {
            let hits: Vec<String> = alerts
                .iter()
                .filter(|a| a.severity.is_some_and(|s| sev.contains(&s)))
                .map(|a| format!("{} ({})", a.name, a.severity.map_or("?", Severity::as_str)))
                .collect();
            check(
                "no_incidents",
                pass_fail(hits.is_empty()),
                if hits.is_empty() {
                    "none active".into()
                } else {
                    hits.join(", ")
                },
                th,
                String::new(),
            )
        }
        None => {
            let unreachable = monitor_error_alerts(seen.monitor);
            let mut c = seen.no_source("no_incidents", th, &[System::Alerting]);
            if let Some(e) = unreachable {
                c.status = CheckStatus::Fail as i32;
                c.detail = e;
            }
            c
        }
    })
}

async fn latency_within_baseline(seen: &Seen<'_>) -> Option<Check> {
    let (plan, r) = (seen.plan, seen.reading);
    let t = plan.prerequisites.latency_within_baseline?;
    let th = format!("<= baseline p99 + {t}");
    // Like with like: a PromQL baseline against the PromQL p99, a recorded one (the
    // probes' baseline in earlier experiments) against the probes' p99.
    let (now, base, over) = match &plan.health.prometheus {
        Some(pp) if pp.queries.latency_p99_baseline.is_some() => {
            let q = pp.queries.latency_p99_baseline.clone().unwrap_or_default();
            (
                r.prom_p99_ms,
                Some(
                    prometheus::query(&prometheus::client(), &pp.url, &q)
                        .await
                        .map(|v| v * 1e3),
                ),
                "from prometheus".to_owned(),
            )
        }
        _ => match seen.probes.or(r.http) {
            Some(h) => (
                Some(h.p99_ms),
                seen.baseline_p99.map(Ok),
                format!("over {} probe results", h.count),
            ),
            // Only a PromQL p99, and nothing to compare it with.
            None => (r.prom_p99_ms, None, String::new()),
        },
    };
    let name = "latency_within_baseline";
    Some(match (now, base) {
        (None, _) => seen.no_source(name, th, &[System::HealthChecker, System::Monitoring]),
        (Some(_), None) => check(
            name,
            CheckStatus::Skipped,
            "-".into(),
            th,
            "skipped: no baseline p99 recorded yet (set queries.latency_p99_baseline, or it \
             comes from earlier experiments with the same probes)"
                .into(),
        ),
        (Some(_), Some(Err(e))) => check(name, CheckStatus::Fail, "-".into(), th, e),
        (Some(now), Some(Ok(base))) => {
            // The recovery tolerance's absolute extra is the floor: ten per cent of a
            // 2 ms p99 is noise.
            let extra = plan.recovery.p99_extra_ms;
            let limit = base * (1.0 + t.value() / 100.0) + extra;
            check(
                name,
                pass_fail(now <= limit),
                format!("p99 {now:.1} ms"),
                format!("<= {limit:.1} ms (baseline {base:.1} ms + {t} + {extra:.0} ms)"),
                over,
            )
        }
    })
}

/// A prerequisite that compares one number of the reading with its threshold: one
/// row each. (No incidents and the latency against its baseline are their own.)
struct Numeric {
    name: &'static str,
    /// The configured threshold, as a number and as the check shows it.
    limit: fn(&faultline_proto::spec::Prerequisites) -> Option<(f64, String)>,
    value: fn(&Reading) -> Option<f64>,
    passes: fn(f64, f64) -> bool,
    shown: fn(f64) -> String,
    detail: fn(&Reading) -> String,
    /// The systems that provide the signal: without a source the check is skipped,
    /// or failed when one of them is required.
    providers: fn(&Plan) -> Vec<System>,
    /// The Prometheus query whose failure explains a missing value.
    query: Option<&'static str>,
}

const HEALTH_SCORE_ABOVE: Numeric = Numeric {
    name: "health_score_above",
    limit: |p| p.health_score_above.map(|t| (t, format!("> {t}"))),
    value: |r| r.health_score,
    passes: |v, t| v > t,
    shown: |v| format!("{v:.1}"),
    detail: |_| String::new(),
    // A PromQL score is Monitoring's; a computed one the probes'.
    providers: |plan| {
        let promql = plan
            .health
            .prometheus
            .as_ref()
            .is_some_and(|p| p.queries.health_score.is_some());
        vec![if promql {
            System::Monitoring
        } else {
            System::HealthChecker
        }]
    },
    query: None,
};

const TRAFFIC_BELOW_PEAK: Numeric = Numeric {
    name: "traffic_below_peak",
    limit: |p| {
        p.traffic_below_peak
            .map(|t| (t.value(), format!("< {t} of peak")))
    },
    value: |r| r.traffic_vs_peak.map(|v| v * 100.0),
    passes: |v, t| v < t,
    shown: |v| format!("{v:.1}% of peak"),
    detail: |_| String::new(),
    providers: |_| vec![System::Monitoring],
    query: Some("traffic_vs_peak"),
};

const ERROR_RATE_BELOW: Numeric = Numeric {
    name: "error_rate_below",
    limit: |p| p.error_rate_below.map(|t| (t.value(), format!("< {t}"))),
    value: Reading::error_rate,
    passes: |v, t| v < t,
    shown: |v| format!("{v:.3}%"),
    detail: |r| format!("from {}", r.source()),
    providers: |_| vec![System::HealthChecker, System::Monitoring],
    query: None,
};

fn monitor_error_alerts(m: &Monitor) -> Option<String> {
    let s = lock(&m.shared);
    s.alertmanager
        .as_ref()
        .filter(|a| a.last_ok.is_none())
        .map(|a| {
            a.last_error
                .clone()
                .unwrap_or_else(|| format!("Alertmanager at {} did not answer", a.url))
        })
}

fn prometheus_failure(m: &Monitor, name: &str) -> Option<String> {
    let s = lock(&m.shared);
    let p = s.prometheus.as_ref()?;
    match p.values.get(name) {
        Some(sample) => sample.value.as_ref().err().map(|e| format!("{name}: {e}")),
        None => Some(format!("{name}: Prometheus at {} gave no answer", p.url)),
    }
}

fn health_checker(plan: &Plan, m: &Monitor, r: &Reading) -> (bool, String, String) {
    let s = lock(&m.shared);
    if s.probes.is_empty() {
        if plan
            .health
            .prometheus
            .as_ref()
            .is_some_and(|p| p.queries.health_score.is_some())
        {
            return match r.health_score {
                Some(v) => (
                    true,
                    format!("health_score {v:.1}"),
                    "from the health_score query".into(),
                ),
                None => (
                    false,
                    "-".into(),
                    prometheus_failure_locked(&s, "health_score").unwrap_or_default(),
                ),
            };
        }
        return (
            false,
            "-".into(),
            "no health.http probe (or health_score query) configured: configure one, or waive \
             health_checker (prerequisites.required)"
                .into(),
        );
    }
    let silent: Vec<String> = s
        .probes
        .iter()
        .filter(|p| !p.answered_since(m.started))
        .map(|p| match &p.refused {
            Some(why) => format!("{}: refused by the agent: {why}", p.name),
            None => format!(
                "{} ({}): {}",
                p.name,
                p.url,
                p.last_error.clone().unwrap_or_else(|| "no answer".into())
            ),
        })
        .collect();
    let names: Vec<&str> = s.probes.iter().map(|p| p.name.as_str()).collect();
    (
        silent.is_empty(),
        format!("{} probe(s) answering", s.probes.len() - silent.len()),
        if silent.is_empty() {
            names.join(", ")
        } else {
            silent.join("; ")
        },
    )
}

fn prometheus_failure_locked(s: &crate::health::Sources, name: &str) -> Option<String> {
    let p = s.prometheus.as_ref()?;
    p.values
        .get(name)
        .and_then(|v| v.value.as_ref().err().cloned())
        .or_else(|| p.last_error.clone())
}

async fn monitoring(plan: &Plan) -> (bool, String, String) {
    match &plan.health.prometheus {
        None => (
            false,
            "-".into(),
            "no health.prometheus configured: configure it, or waive monitoring".into(),
        ),
        Some(p) => match prometheus::ready(&prometheus::client(), &p.url).await {
            Ok(()) => (true, "ready".into(), p.url.clone()),
            Err(e) => (false, "-".into(), e),
        },
    }
}

fn alerting(m: &Monitor) -> (bool, String, String) {
    let s = lock(&m.shared);
    match &s.alertmanager {
        None => (
            false,
            "-".into(),
            "no health.alertmanager configured: configure it, or waive alerting".into(),
        ),
        Some(a) if a.last_ok.is_some() => (
            true,
            format!("{} active alert(s)", a.active.len()),
            a.url.clone(),
        ),
        Some(a) => (
            false,
            "-".into(),
            a.last_error
                .clone()
                .unwrap_or_else(|| format!("Alertmanager at {} did not answer", a.url)),
        ),
    }
}

async fn incident_response(plan: &Plan) -> (bool, String, String) {
    if plan.health.check_source("incident_response").is_some() {
        return yes_no(plan, "incident_response").await;
    }
    match &plan.health.alertmanager {
        Some(a) => match alertmanager::receivers(&alertmanager::client(), &a.url).await {
            Ok(0) => (
                false,
                "0 receivers".into(),
                "Alertmanager routes to no receiver".into(),
            ),
            Ok(n) => (true, format!("{n} receiver(s)"), a.url.clone()),
            Err(e) => (false, "-".into(), e),
        },
        None => (
            false,
            "-".into(),
            "configure health.checks.incident_response ({promql: ...} or {url: ...}) or \
             health.alertmanager, or waive incident_response"
                .into(),
        ),
    }
}

/// A configured yes/no check: a PromQL value that is non-zero, or a URL answering 2xx.
async fn yes_no(plan: &Plan, which: &str) -> (bool, String, String) {
    match plan.health.check_source(which) {
        None => (
            false,
            "-".into(),
            format!(
                "not configured: set health.checks.{which} ({{promql: ...}} or {{url: ...}}), or \
                 waive {which} (leave it out of prerequisites.required)"
            ),
        ),
        Some(CheckSource::Promql(q)) => {
            let Some(p) = &plan.health.prometheus else {
                return (
                    false,
                    "-".into(),
                    format!("{which} is a PromQL check but no health.prometheus is configured"),
                );
            };
            match prometheus::query(&prometheus::client(), &p.url, &q).await {
                Ok(v) => (v != 0.0, format!("{v}"), format!("PromQL {q}")),
                Err(e) => (false, "-".into(), format!("PromQL {q}: {e}")),
            }
        }
        Some(CheckSource::Url(u)) => {
            let client = crate::health::http_client(Duration::from_secs(3));
            match client.get(&u).send().await {
                Ok(r) if r.status().is_success() => (true, format!("HTTP {}", r.status()), u),
                Ok(r) => (false, format!("HTTP {}", r.status()), u),
                Err(e) => (
                    false,
                    "-".into(),
                    format!("{u}: {}", crate::health::causes(&e)),
                ),
            }
        }
    }
}
