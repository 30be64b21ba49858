//! The abort conditions, evaluated by the coordinator on every new data point of
//! each source (every probe result, every query round, every alert poll; the
//! experiment also evaluates on a timer, so a source that goes quiet is noticed).
//! `consecutive` counts breaching data points of one source in a row. A breach is
//! reported with the time it first became visible: the arrival of the probe result,
//! query answer or alert poll that showed it.
//!
//! A source that gives no usable value for longer than `health.dark_grace` is a
//! breach too: an unreachable Prometheus or Alertmanager, an empty query result, a
//! node-side probe whose results stopped arriving. Never a silent pass.
use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant, SystemTime},
};

use crate::{
    engine::plan::AbortPlan,
    health::{Monitor, Reading, lock},
};

/// A condition that held.
#[derive(Clone, Debug)]
pub struct Breach {
    pub guard: String,
    pub source: String,
    pub observed: f64,
    pub threshold: f64,
    pub unit: &'static str,
    pub visible_at: SystemTime,
    pub detail: String,
}

pub struct Guards {
    abort: AbortPlan,
    grace: Duration,
    runs: HashMap<(&'static str, String), u32>,
    /// The last data point of each source already evaluated.
    http_seen: Option<Instant>,
    prom_rounds: u64,
    am_polls: u64,
    /// Alerts active before the experiment began are not new.
    preexisting: Option<HashSet<String>>,
}

impl Guards {
    pub fn new(abort: AbortPlan, grace: Duration) -> Self {
        Self {
            abort,
            grace,
            runs: HashMap::new(),
            http_seen: None,
            prom_rounds: 0,
            am_polls: 0,
            preexisting: None,
        }
    }

    /// Remembers the alerts active now (before the baseline), so only alerts that
    /// fire later count as new incidents.
    pub fn note_preexisting(&mut self, m: &Monitor) {
        let s = lock(&m.shared);
        self.preexisting = s
            .alertmanager
            .as_ref()
            .map(|a| a.active.iter().map(|a| a.fingerprint.clone()).collect());
    }

    /// A source without a usable value for longer than the grace.
    fn dark(&self, source: String, dark_for: Duration, why: &Option<String>) -> Option<Breach> {
        (dark_for > self.grace).then(|| {
            let mut b = breach(
                "health.dark_grace",
                source,
                dark_for.as_secs_f64(),
                self.grace.as_secs_f64(),
                "s",
                SystemTime::now(),
            );
            b.detail = why.clone().unwrap_or_else(|| "no answer".into());
            b
        })
    }

    fn count(&mut self, guard: &'static str, source: &str, breached: bool) -> bool {
        let run = self.runs.entry((guard, source.to_owned())).or_default();
        *run = if breached { *run + 1 } else { 0 };
        *run >= self.abort.consecutive
    }

    /// The first condition that holds now, if any.
    pub fn evaluate(&mut self, m: &Monitor, r: &Reading, now: Instant) -> Option<Breach> {
        let s = lock(&m.shared);
        let started = m.started;
        let wall = SystemTime::now();
        let a = self.abort.clone();
        // Probes: a new result since the last evaluation.
        let newest = s
            .probes
            .iter()
            .filter_map(|p| p.hits.back())
            .max_by_key(|h| h.mono)
            .copied();
        let http_new = newest.is_some_and(|h| self.http_seen.is_none_or(|seen| h.mono > seen));
        let mut fresh = http_new;
        if let Some(h) = newest {
            self.http_seen = Some(h.mono);
        }
        let http_source = || {
            format!(
                "http:{}",
                s.probes
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            )
        };
        if http_new && let (Some(stats), Some(h)) = (r.http, newest) {
            let src = http_source();
            for (t, observed) in [
                (&ERROR_RATE, stats.error_rate),
                (&LATENCY_P99, stats.p99_ms),
            ] {
                if let Some(b) = self.check(t, &a, &src, observed, h.at) {
                    return Some(b);
                }
            }
        }
        // Prometheus: a new round of queries.
        if let Some(p) = &s.prometheus {
            if p.rounds > self.prom_rounds {
                self.prom_rounds = p.rounds;
                fresh = true;
                let at = p.values.values().map(|v| v.at).max().unwrap_or(wall);
                for (t, src, observed) in [
                    (&ERROR_RATE, "prometheus:error_rate", r.prom_error_rate),
                    (&LATENCY_P99, "prometheus:latency_p99", r.prom_p99_ms),
                ] {
                    if let Some(v) = observed
                        && let Some(b) = self.check(t, &a, src, v, at)
                    {
                        return Some(b);
                    }
                }
            }
            let live = m
                .plan
                .prometheus
                .as_ref()
                .is_some_and(|pp| !pp.live().is_empty());
            if live
                && let Some(b) = self.dark(
                    "prometheus".into(),
                    now.duration_since(p.last_ok.unwrap_or(started)),
                    &p.last_error,
                )
            {
                return Some(b);
            }
        }
        // Alertmanager: a new poll.
        if let Some(am) = &s.alertmanager {
            if am.polls > self.am_polls {
                self.am_polls = am.polls;
                fresh = true;
                let new: Vec<_> = am
                    .active
                    .iter()
                    .filter(|al| al.severity.is_some_and(|sv| a.new_incident.contains(&sv)))
                    .filter(|al| {
                        !self
                            .preexisting
                            .as_ref()
                            .is_some_and(|p| p.contains(&al.fingerprint))
                    })
                    .collect();
                if let Some(al) = new.first() {
                    let mut b = breach(
                        "abort_conditions.new_incident",
                        "alertmanager".into(),
                        1.0,
                        0.0,
                        "alerts",
                        wall,
                    );
                    b.detail = format!("{} ({})", al.name, al.severity.map_or("?", |s| s.as_str()));
                    return Some(b);
                }
            }
            if let Some(b) = self.dark(
                "alertmanager".into(),
                now.duration_since(am.last_ok.unwrap_or(started)),
                &am.last_error,
            ) {
                return Some(b);
            }
        }
        // Probes whose results stopped arriving (node-side probes, or a refused one).
        for p in &s.probes {
            let last = p.hits.back().map_or(started, |h| h.mono);
            let why = p.refused.clone().or_else(|| p.last_error.clone());
            if let Some(b) = self.dark(format!("http:{}", p.name), now.duration_since(last), &why) {
                return Some(b);
            }
        }
        drop(s);
        // The health score, whenever anything moved.
        match r.health_score {
            Some(v) if fresh => self.check(&HEALTH_SCORE, &a, "score", v, wall),
            _ => None,
        }
    }

    /// One data point of `source` against threshold `t`: a breach once it has held
    /// for `consecutive` points of that source in a row.
    fn check(
        &mut self,
        t: &Threshold,
        a: &AbortPlan,
        source: &str,
        observed: f64,
        at: SystemTime,
    ) -> Option<Breach> {
        let limit = (t.limit)(a)?;
        self.count(t.guard, source, (t.breached)(observed, limit))
            .then(|| breach(t.guard, source.to_owned(), observed, limit, t.unit, at))
    }
}

/// A numeric abort condition: one row per condition; every source that carries
/// its signal is checked against it.
struct Threshold {
    guard: &'static str,
    unit: &'static str,
    /// The plan's limit, when the condition is set.
    limit: fn(&AbortPlan) -> Option<f64>,
    breached: fn(f64, f64) -> bool,
}

const ERROR_RATE: Threshold = Threshold {
    guard: "abort_conditions.error_rate_above",
    unit: "%",
    limit: |a| a.error_rate_above,
    breached: |observed, limit| observed > limit,
};

const LATENCY_P99: Threshold = Threshold {
    guard: "abort_conditions.latency_p99_above",
    unit: "ms",
    limit: |a| a.latency_p99_above_ms,
    breached: |observed, limit| observed > limit,
};

const HEALTH_SCORE: Threshold = Threshold {
    guard: "abort_conditions.health_score_below",
    unit: "points",
    limit: |a| a.health_score_below,
    breached: |observed, limit| observed < limit,
};

fn breach(
    guard: &str,
    source: String,
    observed: f64,
    threshold: f64,
    unit: &'static str,
    at: SystemTime,
) -> Breach {
    Breach {
        guard: guard.to_owned(),
        source,
        observed,
        threshold,
        unit,
        visible_at: at,
        detail: String::new(),
    }
}
