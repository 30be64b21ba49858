//! Prometheus through its HTTP API: PromQL instant queries (`/api/v1/query`), each
//! evaluated every `interval` (at least once a second). A query must return exactly
//! one series (or a scalar) with a finite value; an empty result, several series, an
//! error or an unreachable server is a failure of that signal, never a pass.
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use serde_json::Value;
use tokio::sync::watch;

/// The signals read each interval, by name.
pub const LIVE: [&str; 5] = [
    "error_rate",
    "latency_p99",
    "throughput",
    "traffic_vs_peak",
    "health_score",
];

#[derive(Clone, Debug)]
pub struct Sample {
    pub value: Result<f64, String>,
    pub at: SystemTime,
    pub mono: Instant,
}

#[derive(Debug, Default)]
pub struct State {
    pub url: String,
    pub values: BTreeMap<&'static str, Sample>,
    /// The last round in which every query returned a value.
    pub last_ok: Option<Instant>,
    pub last_error: Option<String>,
    pub rounds: u64,
    /// Every value of the last minute, for the recovery tracker's buckets.
    pub history: std::collections::VecDeque<(Instant, &'static str, f64)>,
}

impl State {
    /// The latest value of `name`, when it is a value.
    pub fn value(&self, name: &str) -> Option<f64> {
        self.values
            .get(name)
            .and_then(|s| s.value.as_ref().ok().copied())
    }
}

pub fn client() -> reqwest::Client {
    super::http_client(Duration::from_secs(2))
}

/// One instant query's single value.
pub async fn query(client: &reqwest::Client, base: &str, promql: &str) -> Result<f64, String> {
    let url = format!("{}/api/v1/query", base.trim_end_matches('/'));
    let resp = client
        .get(&url)
        .query(&[("query", promql)])
        .send()
        .await
        .map_err(|e| format!("Prometheus at {base} unreachable: {}", super::causes(&e)))?;
    let status = resp.status();
    let body: Value = resp
        .json()
        .await
        .map_err(|e| format!("Prometheus answered {status} without JSON: {e}"))?;
    if body["status"] != "success" {
        return Err(format!(
            "query failed: {}",
            body["error"].as_str().unwrap_or("unknown error")
        ));
    }
    let data = &body["data"];
    let point = match data["resultType"].as_str() {
        Some("scalar") => &data["result"],
        Some("vector") => {
            let series = data["result"].as_array().map_or(&[][..], |v| v.as_slice());
            match series {
                [] => return Err("empty result (no series)".into()),
                [one] => &one["value"],
                many => {
                    return Err(format!(
                        "{} series: aggregate the query to one (e.g. sum(...))",
                        many.len()
                    ));
                }
            }
        }
        other => return Err(format!("unsupported result type {other:?}")),
    };
    let v: f64 = point[1]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no value in {point}"))?;
    if v.is_finite() {
        Ok(v)
    } else {
        Err(format!("the value is {v}"))
    }
}

/// Whether the server is up (`/-/ready`).
pub async fn ready(client: &reqwest::Client, base: &str) -> Result<(), String> {
    let url = format!("{}/-/ready", base.trim_end_matches('/'));
    match client.get(&url).send().await {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(format!(
            "Prometheus at {base} is not ready: HTTP {}",
            r.status()
        )),
        Err(e) => Err(format!(
            "Prometheus at {base} unreachable: {}",
            super::causes(&e)
        )),
    }
}

/// Evaluates `queries` every `interval` into the shared state until aborted.
pub async fn run(
    base: String,
    interval: Duration,
    queries: Vec<(&'static str, String)>,
    shared: Arc<Mutex<super::Sources>>,
    changed: watch::Sender<u64>,
) {
    let client = client();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut pending = Vec::new();
        for (name, q) in &queries {
            let (client, base, q) = (client.clone(), base.clone(), q.clone());
            pending.push((
                *name,
                tokio::spawn(async move { query(&client, &base, &q).await }),
            ));
        }
        let mut results = Vec::new();
        for (name, task) in pending {
            let v = task
                .await
                .unwrap_or_else(|e| Err(format!("query task: {e}")));
            results.push((name, v));
        }
        let now = (SystemTime::now(), Instant::now());
        let mut s = super::lock(&shared);
        let Some(p) = s.prometheus.as_mut() else {
            return;
        };
        p.rounds += 1;
        let mut all_ok = true;
        for (name, value) in results {
            match &value {
                Err(e) => {
                    all_ok = false;
                    p.last_error = Some(format!("{name}: {e}"));
                }
                Ok(v) => p.history.push_back((now.1, name, *v)),
            }
            p.values.insert(
                name,
                Sample {
                    value,
                    at: now.0,
                    mono: now.1,
                },
            );
        }
        while p
            .history
            .front()
            .is_some_and(|h| now.1.duration_since(h.0) > Duration::from_secs(60))
        {
            p.history.pop_front();
        }
        if all_ok {
            p.last_ok = Some(now.1);
        }
        s.version += 1;
        let v = s.version;
        drop(s);
        changed.send_replace(v);
    }
}
