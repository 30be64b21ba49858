//! Recovery of the steady state, judged against the baseline:
//!
//! - Tolerance (defaults): error rate <= baseline + 0.05 points, p99 <= baseline p99
//!   x 1.2 + 5 ms, health score >= baseline - 2.
//! - Resolution 1 s: the tracker judges consecutive one-second buckets of fresh data
//!   (the probe results and query values that arrived in each), not the sliding
//!   window, whose lag would add its own length to every recovery time. A bucket
//!   without data neither breaks nor extends a run.
//! - Held return: a run of buckets within tolerance at least `hold` long. Recovery
//!   time = removal (or, for cache invalidation, the eviction) until the start of
//!   the held return; zero when it started before.
//!
//! Whether the steady state ever left tolerance (an `absorbed` experiment never did)
//! is judged on the sliding window, so one straggling probe does not count.
use std::time::{Duration, Instant};

use super::window::Values;
use crate::{
    engine::plan::RecoveryPlan,
    health::{Monitor, http, lock, score},
};

const BUCKET: Duration = Duration::from_secs(1);

/// The steady state's bounds, from the baseline.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tolerance {
    pub error_rate_max: Option<f64>,
    pub p99_max_ms: Option<f64>,
    pub score_min: Option<f64>,
}

impl Tolerance {
    pub fn from_baseline(b: &super::window::Signals, plan: &RecoveryPlan) -> Self {
        Self {
            error_rate_max: b.mean("error_rate").map(|e| e + plan.error_rate_pp),
            p99_max_ms: b
                .mean("latency_p99")
                .map(|p| p * plan.p99_factor + plan.p99_extra_ms),
            score_min: b.mean("health_score").map(|s| s - plan.health_drop),
        }
    }

    /// Within tolerance (None: no signal has both a bound and a value).
    pub fn within(&self, v: &Values) -> Option<bool> {
        let checks = [
            self.error_rate_max
                .zip(v.error_rate)
                .map(|(m, x)| x <= m + 1e-9),
            self.p99_max_ms.zip(v.latency_p99).map(|(m, x)| x <= m),
            self.score_min
                .zip(v.health_score)
                .map(|(m, x)| x >= m - 1e-9),
        ];
        let known: Vec<bool> = checks.into_iter().flatten().collect();
        (!known.is_empty()).then(|| known.iter().all(|b| *b))
    }

    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(e) = self.error_rate_max {
            parts.push(format!("error rate <= {e:.3}%"));
        }
        if let Some(p) = self.p99_max_ms {
            parts.push(format!("p99 <= {p:.1} ms"));
        }
        if let Some(s) = self.score_min {
            parts.push(format!("health >= {s:.1}"));
        }
        parts.join(", ")
    }
}

pub struct Tracker {
    pub tolerance: Tolerance,
    hold: Duration,
    /// Start of the next bucket to judge.
    next: Instant,
    run_start: Option<Instant>,
    judged_until: Instant,
    pub left: bool,
}

impl Tracker {
    /// Buckets start at `from` (the fault's start).
    pub fn new(tolerance: Tolerance, hold: Duration, from: Instant) -> Self {
        Self {
            tolerance,
            hold,
            next: from,
            run_start: None,
            judged_until: from,
            left: false,
        }
    }

    /// Judges every bucket that has ended by `now`.
    pub fn step(&mut self, m: &Monitor, now: Instant) {
        while self.next + BUCKET <= now {
            let (from, to) = (self.next, self.next + BUCKET);
            self.next = to;
            let v = bucket(m, from, to);
            match self.tolerance.within(&v) {
                Some(true) => {
                    self.run_start.get_or_insert(from);
                    self.judged_until = to;
                }
                Some(false) => {
                    self.run_start = None;
                    self.judged_until = to;
                }
                None => {}
            }
        }
    }

    /// Notes a sliding-window reading (for "did it ever leave tolerance").
    pub fn observe_window(&mut self, v: &Values) {
        if self.tolerance.within(v) == Some(false) {
            self.left = true;
        }
    }

    /// The start of the held return, once it has held for `hold`.
    pub fn held_since(&self) -> Option<Instant> {
        self.run_start
            .filter(|s| self.judged_until.saturating_duration_since(*s) >= self.hold)
    }
}

/// The signals of the data that arrived in `[from, to)`.
fn bucket(m: &Monitor, from: Instant, to: Instant) -> Values {
    let s = lock(&m.shared);
    let h = http::stats(&s.probes, from, to);
    let prom = |name: &str| {
        s.prometheus.as_ref().and_then(|p| {
            p.history
                .iter()
                .rev()
                .find(|(t, n, _)| *n == name && *t >= from && *t < to)
                .map(|x| x.2)
        })
    };
    let err = prom("error_rate")
        .map(|v| v * 100.0)
        .or(h.map(|h| h.error_rate));
    let p99 = prom("latency_p99").map(|v| v * 1e3).or(h.map(|h| h.p99_ms));
    let alerts = s
        .alertmanager
        .as_ref()
        .filter(|a| a.last_ok.is_some())
        .map(|a| a.active.clone());
    let has_score_query = m
        .plan
        .prometheus
        .as_ref()
        .is_some_and(|p| p.queries.health_score.is_some());
    let health = if has_score_query {
        prom("health_score")
    } else {
        score::computed(err, p99, alerts.as_deref(), &m.plan.score)
    };
    Values {
        error_rate: err,
        latency_p99: p99,
        throughput: prom("throughput").or(h.map(|h| h.throughput)),
        health_score: health,
        availability: err.map(|e| 100.0 - e),
    }
}
