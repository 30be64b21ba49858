//! Alertmanager's API v2: the active alerts (`/api/v2/alerts`, unsilenced and
//! uninhibited), each with a severity P0-P3 read from a configurable label; an
//! alert is "new" when it started after the experiment began. The state keeps every
//! alert seen during the experiment and when it was last seen, so an incident's
//! time to resolution can be told.
use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use faultline_proto::spec::Severity;
use serde_json::Value;
use tokio::sync::watch;

#[derive(Clone, Debug, PartialEq)]
pub struct Alert {
    pub name: String,
    pub fingerprint: String,
    pub severity: Option<Severity>,
    pub starts_at: SystemTime,
}

/// An alert across the experiment: first and last seen active, and when it was
/// first seen gone again.
#[derive(Clone, Debug)]
pub struct Seen {
    pub alert: Alert,
    pub first_seen: SystemTime,
    pub resolved: Option<SystemTime>,
}

#[derive(Debug, Default)]
pub struct State {
    pub url: String,
    pub active: Vec<Alert>,
    pub history: HashMap<String, Seen>,
    pub last_ok: Option<Instant>,
    pub last_error: Option<String>,
    pub polls: u64,
}

/// How label values map to severities: P0..P3 as written, then the configured map
/// (defaults: critical P1, error P2, warning P3).
pub struct Severities {
    pub label: String,
    pub map: BTreeMap<String, Severity>,
}

impl Severities {
    pub fn new(label: Option<&str>, custom: Option<&BTreeMap<String, Severity>>) -> Self {
        let mut map: BTreeMap<String, Severity> = [
            ("critical", Severity::P1),
            ("error", Severity::P2),
            ("warning", Severity::P3),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        if let Some(c) = custom {
            map.extend(c.iter().map(|(k, v)| (k.to_lowercase(), *v)));
        }
        Self {
            label: label.unwrap_or("severity").to_owned(),
            map,
        }
    }

    fn of(&self, value: &str) -> Option<Severity> {
        value
            .parse()
            .ok()
            .or_else(|| self.map.get(&value.to_lowercase()).copied())
    }
}

pub fn client() -> reqwest::Client {
    super::http_client(Duration::from_secs(2))
}

fn base(url: &str) -> &str {
    url.trim_end_matches('/')
}

/// The active, unsilenced, uninhibited alerts.
pub async fn alerts(
    client: &reqwest::Client,
    url: &str,
    sev: &Severities,
) -> Result<Vec<Alert>, String> {
    let resp = client
        .get(format!("{}/api/v2/alerts", base(url)))
        .query(&[
            ("active", "true"),
            ("silenced", "false"),
            ("inhibited", "false"),
        ])
        .send()
        .await
        .map_err(|e| format!("Alertmanager at {url} unreachable: {}", super::causes(&e)))?;
    if !resp.status().is_success() {
        return Err(format!("Alertmanager at {url}: HTTP {}", resp.status()));
    }
    let list: Vec<Value> = resp
        .json()
        .await
        .map_err(|e| format!("Alertmanager at {url}: not an alert list: {e}"))?;
    Ok(list
        .iter()
        .filter(|a| a["status"]["state"].as_str().is_none_or(|s| s == "active"))
        .map(|a| Alert {
            name: a["labels"]["alertname"].as_str().unwrap_or("?").to_owned(),
            fingerprint: a["fingerprint"].as_str().unwrap_or_default().to_owned(),
            severity: a["labels"][&sev.label].as_str().and_then(|v| sev.of(v)),
            starts_at: a["startsAt"]
                .as_str()
                .and_then(|t| {
                    humantime::parse_rfc3339_weak(t.trim_end_matches('Z').split('.').next()?).ok()
                })
                .unwrap_or_else(SystemTime::now),
        })
        .collect())
}

/// How many receivers Alertmanager routes to (`/api/v2/receivers`).
pub async fn receivers(client: &reqwest::Client, url: &str) -> Result<usize, String> {
    let resp = client
        .get(format!("{}/api/v2/receivers", base(url)))
        .send()
        .await
        .map_err(|e| format!("Alertmanager at {url} unreachable: {}", super::causes(&e)))?;
    let list: Vec<Value> = resp
        .json()
        .await
        .map_err(|e| format!("Alertmanager at {url}: not a receiver list: {e}"))?;
    Ok(list.len())
}

/// Polls the alerts once a second into the shared state until aborted.
pub async fn run(
    url: String,
    sev: Severities,
    shared: Arc<Mutex<super::Sources>>,
    changed: watch::Sender<u64>,
) {
    let client = client();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let got = alerts(&client, &url, &sev).await;
        let now = SystemTime::now();
        let mut s = super::lock(&shared);
        let Some(a) = s.alertmanager.as_mut() else {
            return;
        };
        a.polls += 1;
        match got {
            Ok(list) => {
                a.last_ok = Some(Instant::now());
                for al in &list {
                    a.history
                        .entry(al.fingerprint.clone())
                        .and_modify(|seen| seen.resolved = None)
                        .or_insert_with(|| Seen {
                            alert: al.clone(),
                            first_seen: now,
                            resolved: None,
                        });
                }
                for seen in a.history.values_mut() {
                    if seen.resolved.is_none()
                        && !list.iter().any(|l| l.fingerprint == seen.alert.fingerprint)
                    {
                        seen.resolved = Some(now);
                    }
                }
                a.active = list;
            }
            Err(e) => a.last_error = Some(e),
        }
        s.version += 1;
        let v = s.version;
        drop(s);
        changed.send_replace(v);
    }
}
