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
    health::{Monitor, Reading, Sources, lock},
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

    /// The first condition that holds now, if any: each source's new data point,
    /// each source gone dark, then the health score if anything moved.
    pub fn evaluate(&mut self, m: &Monitor, r: &Reading, now: Instant) -> Option<Breach> {
        self.sources(m, r, now).err()
    }

    fn sources(&mut self, m: &Monitor, r: &Reading, now: Instant) -> Result<(), Breach> {
        let s = lock(&m.shared);
        let a = self.abort.clone();
        let mut fresh = self.probes(&s, r, &a)?;
        fresh |= self.prometheus(m, &s, r, &a, now)?;
        fresh |= self.alertmanager(&s, &a, now, m.started)?;
        self.silent_probes(&s, now, m.started)?;
        drop(s);
        match r.health_score {
            Some(v) if fresh => found(self.check(&HEALTH_SCORE, &a, "score", v, SystemTime::now())),
            _ => Ok(()),
        }
    }

    /// Probes: a new result since the last evaluation (whether there was one).
    fn probes(&mut self, s: &Sources, r: &Reading, a: &AbortPlan) -> Result<bool, Breach> {
        let newest = s
            .probes
            .iter()
            .filter_map(|p| p.hits.back())
            .max_by_key(|h| h.mono)
            .copied();
        let Some(h) = newest.filter(|h| self.http_seen.is_none_or(|seen| h.mono > seen)) else {
            return Ok(false);
        };
        self.http_seen = Some(h.mono);
        if let Some(stats) = r.http {
            let names: Vec<&str> = s.probes.iter().map(|p| p.name.as_str()).collect();
            let src = format!("http:{}", names.join(","));
            for (t, observed) in [
                (&ERROR_RATE, stats.error_rate),
                (&LATENCY_P99, stats.p99_ms),
            ] {
                found(self.check(t, a, &src, observed, h.at))?;
            }
        }
        Ok(true)
    }

    /// Prometheus: a new round of queries (whether there was one), or dark.
    fn prometheus(
        &mut self,
        m: &Monitor,
        s: &Sources,
        r: &Reading,
        a: &AbortPlan,
        now: Instant,
    ) -> Result<bool, Breach> {
        let Some(p) = &s.prometheus else {
            return Ok(false);
        };
        let fresh = p.rounds > self.prom_rounds;
        if fresh {
            self.prom_rounds = p.rounds;
            let at = p
                .values
                .values()
                .map(|v| v.at)
                .max()
                .unwrap_or(SystemTime::now());
            for (t, src, observed) in [
                (&ERROR_RATE, "prometheus:error_rate", r.prom_error_rate),
                (&LATENCY_P99, "prometheus:latency_p99", r.prom_p99_ms),
            ] {
                if let Some(v) = observed {
                    found(self.check(t, a, src, v, at))?;
                }
            }
        }
        let live = m
            .plan
            .prometheus
            .as_ref()
            .is_some_and(|pp| !pp.live().is_empty());
        if live {
            let dark_for = now.duration_since(p.last_ok.unwrap_or(m.started));
            found(self.dark("prometheus".into(), dark_for, &p.last_error))?;
        }
        Ok(fresh)
    }

    /// Alertmanager: a new poll (whether there was one) with a new incident, or dark.
    fn alertmanager(
        &mut self,
        s: &Sources,
        a: &AbortPlan,
        now: Instant,
        started: Instant,
    ) -> Result<bool, Breach> {
        let Some(am) = &s.alertmanager else {
            return Ok(false);
        };
        let fresh = am.polls > self.am_polls;
        if fresh {
            self.am_polls = am.polls;
            let new = am
                .active
                .iter()
                .filter(|al| al.severity.is_some_and(|sv| a.new_incident.contains(&sv)))
                .find(|al| {
                    !self
                        .preexisting
                        .as_ref()
                        .is_some_and(|p| p.contains(&al.fingerprint))
                });
            if let Some(al) = new {
                let mut b = breach(
                    "abort_conditions.new_incident",
                    "alertmanager".into(),
                    1.0,
                    0.0,
                    "alerts",
                    SystemTime::now(),
                );
                b.detail = format!("{} ({})", al.name, al.severity.map_or("?", |s| s.as_str()));
                return Err(b);
            }
        }
        let dark_for = now.duration_since(am.last_ok.unwrap_or(started));
        found(self.dark("alertmanager".into(), dark_for, &am.last_error))?;
        Ok(fresh)
    }

    /// Probes whose results stopped arriving (node-side probes, or a refused one).
    fn silent_probes(&self, s: &Sources, now: Instant, started: Instant) -> Result<(), Breach> {
        for p in &s.probes {
            let last = p.hits.back().map_or(started, |h| h.mono);
            let why = p.refused.clone().or_else(|| p.last_error.clone());
            found(self.dark(format!("http:{}", p.name), now.duration_since(last), &why))?;
        }
        Ok(())
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

/// A breach found ends the evaluation.
fn found(b: Option<Breach>) -> Result<(), Breach> {
    b.map_or(Ok(()), Err)
}

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
