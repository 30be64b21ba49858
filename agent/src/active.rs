//! What faultline is doing on this node now, for a person on the node: each process
//! that holds an effect (an order's child, or `inject` in local mode) records it in
//! `<state-dir>/active/<pid>.json` when it is armed and removes the record when the
//! effect is removed or the process ends. `faultline-agent status` lists them. A
//! record whose process is gone means a killed agent: its effects may still be in
//! the kernel until `cleanup` (or the next start) removes them, and it says so.
use std::{
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// The order and lease an order's child runs for, from the daemon.
pub const ORDER_ENV: &str = "FAULTLINE_ORDER_ID";
pub const LEASE_ENV: &str = "FAULTLINE_LEASE_ID";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Active {
    pub kind: String,
    /// Magnitude, target and filter, as the fault summarises itself.
    pub detail: String,
    pub pid: u32,
    pub since_ms: u64,
    pub deadline_ms: u64,
    #[serde(default)]
    pub order: String,
    #[serde(default)]
    pub lease: String,
}

static STATE_DIR: Mutex<Option<PathBuf>> = Mutex::new(None);

fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("active")
}

fn record_path(state_dir: &Path, pid: u32) -> PathBuf {
    dir(state_dir).join(format!("{pid}.json"))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// Where this process records its effect (set once, before a fault runs).
pub fn set_state_dir(state_dir: &Path) {
    *STATE_DIR.lock().unwrap_or_else(|e| e.into_inner()) = Some(state_dir.to_owned());
}

/// Records this process's effect, armed now for `duration`. A record that cannot
/// be written is logged, not fatal: the effect is in place and its own deadline and
/// removal do not depend on it.
pub fn armed(kind: &str, detail: &str, duration: Duration) {
    let Some(state_dir) = STATE_DIR.lock().unwrap_or_else(|e| e.into_inner()).clone() else {
        return;
    };
    let since_ms = now_ms();
    let a = Active {
        kind: kind.to_owned(),
        detail: detail.to_owned(),
        pid: std::process::id(),
        since_ms,
        deadline_ms: since_ms + duration.as_millis() as u64,
        order: std::env::var(ORDER_ENV).unwrap_or_default(),
        lease: std::env::var(LEASE_ENV).unwrap_or_default(),
    };
    if let Err(e) = write(&state_dir, &a) {
        tracing::warn!("recording the active effect for `faultline-agent status`: {e:#}");
    }
}

fn write(state_dir: &Path, a: &Active) -> Result<()> {
    std::fs::create_dir_all(dir(state_dir))?;
    let path = record_path(state_dir, a.pid);
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(a)?)?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
}

/// This process's effect is gone.
pub fn clear() {
    if let Some(state_dir) = STATE_DIR.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
        let _ = std::fs::remove_file(record_path(state_dir, std::process::id()));
    }
}

/// Every record, with whether its process still runs.
pub fn list(state_dir: &Path) -> Vec<(Active, bool)> {
    let Ok(entries) = std::fs::read_dir(dir(state_dir)) else {
        return Vec::new();
    };
    let mut out: Vec<(Active, bool)> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| std::fs::read(e.path()).ok())
        .filter_map(|b| serde_json::from_slice::<Active>(&b).ok())
        .map(|a| {
            // A reused pid is not the record's process: it must be a faultline-agent.
            let live = crate::cgroup::agent_alive(a.pid as i32);
            (a, live)
        })
        .collect();
    out.sort_by_key(|(a, _)| a.since_ms);
    out
}

/// Removes the records of processes that are gone (after `cleanup` removed what they
/// left); returns how many.
pub fn sweep(state_dir: &Path) -> usize {
    let mut n = 0;
    for (a, live) in list(state_dir) {
        if !live && std::fs::remove_file(record_path(state_dir, a.pid)).is_ok() {
            n += 1;
        }
    }
    n
}

/// `faultline-agent status`: exit 0 when nothing is active, 10 when an effect is,
/// 11 when only records of killed agents remain (run `faultline-agent cleanup`).
pub fn status(state_dir: &Path, json: bool) -> u8 {
    let all = list(state_dir);
    let code = if all.iter().any(|(_, live)| *live) {
        10
    } else if all.is_empty() {
        0
    } else {
        11
    };
    if json {
        let effects: Vec<serde_json::Value> = all
            .iter()
            .map(|(a, live)| {
                let mut v = serde_json::to_value(a).unwrap_or_default();
                v["running"] = (*live).into();
                v
            })
            .collect();
        println!("{}", serde_json::json!({"effects": effects, "exit": code}));
    } else {
        if all.is_empty() {
            println!("no faultline effect on this node ({})", state_dir.display());
        }
        for (a, live) in &all {
            let owner = match (a.order.is_empty(), a.lease.is_empty()) {
                (true, _) => "local inject".to_owned(),
                (false, true) => format!("order {}", a.order),
                (false, false) => format!("order {} lease {}", a.order, a.lease),
            };
            let state = if *live {
                format!("active (pid {})", a.pid)
            } else {
                format!(
                    "agent pid {} is gone: its effect may remain until `faultline-agent cleanup`",
                    a.pid
                )
            };
            println!(
                "{}: {} · {owner} · since {} · deadline {} · {state}",
                a.kind,
                a.detail,
                utc(a.since_ms),
                utc(a.deadline_ms)
            );
        }
    }
    code
}

/// `2026-12-06T09:20:01Z` from milliseconds since the epoch.
fn utc(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_utc() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(1_796_548_801_000), "2026-12-06T09:20:01Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29T00:00:00Z");
    }
}
