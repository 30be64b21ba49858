//! The built-in synthetic probe: GETs at a steady rate, from the coordinator or
//! (`from: node`) from the target node's agent. An error is a non-2xx answer, a
//! timeout or a connection error. Results are kept for a minute, from which the
//! sliding window's error rate, p50/p99 and throughput are computed, and the
//! recovery tracker reads one-second buckets.
use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use faultline_proto::v1::ProbeResult;
use tokio::sync::watch;

/// How long results are kept (longer than any window or bucket that reads them).
const KEEP: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug)]
pub struct Hit {
    /// When the answer (or the failure) arrived, on both clocks.
    pub at: SystemTime,
    pub mono: Instant,
    pub latency_ms: f64,
    pub ok: bool,
    /// An HTTP answer came back (whatever its status): the endpoint is up.
    pub answered: bool,
}

/// One probe's recent results.
#[derive(Debug, Default)]
pub struct ProbeLog {
    pub name: String,
    pub url: String,
    pub hits: VecDeque<Hit>,
    /// The agent refused to call the URL (its allow-list), and why.
    pub refused: Option<String>,
    pub last_error: Option<String>,
}

impl ProbeLog {
    pub fn push(&mut self, hit: Hit, error: Option<String>) {
        if let Some(e) = error {
            self.last_error = Some(e);
        }
        self.hits.push_back(hit);
        while self
            .hits
            .front()
            .is_some_and(|h| hit.mono.duration_since(h.mono) > KEEP)
        {
            self.hits.pop_front();
        }
    }

    /// Whether any request got an HTTP answer within `since`.
    pub fn answered_since(&self, since: Instant) -> bool {
        self.hits.iter().any(|h| h.answered && h.mono >= since)
    }
}

/// A probe signal's numbers over a span.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stats {
    pub error_rate: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Successful answers per second.
    pub throughput: f64,
    pub count: usize,
}

/// The q-quantile (nearest rank) of sorted values.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    let idx = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[idx]
}

/// Stats of the hits in `[from, to)` of every log.
pub fn stats<'a>(
    logs: impl IntoIterator<Item = &'a ProbeLog>,
    from: Instant,
    to: Instant,
) -> Option<Stats> {
    let mut lat = Vec::new();
    let mut errors = 0usize;
    for log in logs {
        for h in log.hits.iter().filter(|h| h.mono >= from && h.mono < to) {
            lat.push(h.latency_ms);
            if !h.ok {
                errors += 1;
            }
        }
    }
    if lat.is_empty() {
        return None;
    }
    let n = lat.len();
    lat.sort_by(f64::total_cmp);
    let span = to.duration_since(from).as_secs_f64().max(1e-3);
    Some(Stats {
        error_rate: 100.0 * errors as f64 / n as f64,
        p50_ms: quantile(&lat, 0.5),
        p99_ms: quantile(&lat, 0.99),
        throughput: (n - errors) as f64 / span,
        count: n,
    })
}

/// A result the agent measured, placed on the coordinator's clocks (its wall-clock
/// arrival time is the agent's; the monotonic instant is derived from it).
pub fn hit_from_agent(r: &ProbeResult) -> Hit {
    let at =
        r.at.and_then(|t| SystemTime::try_from(t).ok())
            .unwrap_or_else(SystemTime::now);
    let age = SystemTime::now().duration_since(at).unwrap_or_default();
    Hit {
        at,
        mono: Instant::now().checked_sub(age).unwrap_or_else(Instant::now),
        latency_ms: f64::from(r.latency_us) / 1000.0,
        ok: r.ok,
        answered: r.status != 0,
    }
}

/// Probes `url` from the coordinator at `hz` into `logs[index]` until aborted.
pub async fn run(
    url: String,
    hz: f64,
    timeout: Duration,
    logs: Arc<Mutex<super::Sources>>,
    index: usize,
    changed: watch::Sender<u64>,
) {
    let client = super::http_client(timeout);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / hz));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let (client, url, logs, changed) =
            (client.clone(), url.clone(), logs.clone(), changed.clone());
        // Requests overlap when the service is slower than the rate.
        tokio::spawn(async move {
            let started = Instant::now();
            let (ok, answered, error) = match client.get(&url).send().await {
                Ok(r) => {
                    let status = r.status();
                    // Read the body: a response is complete when it has arrived.
                    let body = r.bytes().await;
                    (
                        status.is_success() && body.is_ok(),
                        true,
                        (!status.is_success()).then(|| format!("HTTP {status}")),
                    )
                }
                Err(e) => (false, false, Some(super::causes(&e))),
            };
            let hit = Hit {
                at: SystemTime::now(),
                mono: Instant::now(),
                latency_ms: started.elapsed().as_secs_f64() * 1e3,
                ok,
                answered,
            };
            let mut s = super::lock(&logs);
            s.probes[index].push(hit, error);
            s.version += 1;
            let v = s.version;
            drop(s);
            changed.send_replace(v);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_stats_are_nearest_rank_over_the_span() {
        let t0 = Instant::now();
        let mut log = ProbeLog::default();
        for i in 0..100u32 {
            log.push(
                Hit {
                    at: SystemTime::now(),
                    mono: t0 + Duration::from_millis(u64::from(i) * 50),
                    latency_ms: f64::from(i + 1),
                    ok: i % 10 != 0,
                    answered: true,
                },
                None,
            );
        }
        let s = stats([&log], t0, t0 + Duration::from_secs(5)).unwrap();
        assert_eq!(s.count, 100);
        assert_eq!(s.error_rate, 10.0);
        assert_eq!(s.p50_ms, 50.0);
        assert_eq!(s.p99_ms, 99.0);
        assert_eq!(s.throughput, 90.0 / 5.0);
        assert!(
            stats(
                [&log],
                t0 + Duration::from_secs(6),
                t0 + Duration::from_secs(7)
            )
            .is_none()
        );
    }
}
