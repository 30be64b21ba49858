//! Steady-rate HTTP probes the agent sends to node-local endpoints: node-side health
//! probes the coordinator orders (`from: node`), and the probe of an agent-side
//! guard. Each request is a GET with its own timeout; 2xx within it is a success.
//! Results carry the wall-clock time their answer arrived, so the coordinator can
//! place them next to its own signals.
//!
//! Which URLs may be called is the agent's own decision (`--allow-endpoint`, loopback
//! always): see `faultline_proto::endpoint`. The coordinator checks the same rule
//! against its config before ordering.
use std::time::{Duration, Instant, SystemTime};

use faultline_proto::v1::{ProbeResult, ProbeSpec};
use tokio::sync::mpsc;

/// Probes at `spec.rate_hz` until the receiver of `results` is gone.
pub async fn run(spec: ProbeSpec, results: mpsc::UnboundedSender<ProbeResult>) {
    let timeout = spec
        .timeout
        .and_then(|t| Duration::try_from(t).ok())
        .filter(|t| !t.is_zero())
        .unwrap_or(Duration::from_secs(1));
    let hz = if spec.rate_hz > 0.0 {
        spec.rate_hz
            .min(faultline_proto::spec::values::MAX_PROBE_RATE)
    } else {
        10.0
    };
    let agent = crate::faults::hooks::http_agent(timeout);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / hz));
    // A slow endpoint must not turn into a burst once it answers again.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        if results.is_closed() {
            return;
        }
        let (agent, url, out) = (agent.clone(), spec.url.clone(), results.clone());
        // Requests overlap when the endpoint is slower than the rate: each is its
        // own blocking call, bounded by the timeout.
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let (ok, status) = match agent.get(&url).call() {
                Ok(r) => (r.status().is_success(), u32::from(r.status().as_u16())),
                Err(_) => (false, 0),
            };
            let latency = started.elapsed();
            let _ = out.send(ProbeResult {
                at: Some(SystemTime::now().into()),
                latency_us: u32::try_from(latency.as_micros()).unwrap_or(u32::MAX),
                ok: ok && latency <= timeout,
                status,
            });
        });
    }
}

/// Error rate (percent) and p99 (ms) of `results`.
pub fn stats(results: &[(Instant, u32, bool)]) -> Option<(f64, f64)> {
    if results.is_empty() {
        return None;
    }
    let errors = results.iter().filter(|r| !r.2).count();
    let mut lat: Vec<u32> = results.iter().map(|r| r.1).collect();
    lat.sort_unstable();
    let idx = ((lat.len() as f64 * 0.99).ceil() as usize).clamp(1, lat.len()) - 1;
    Some((
        100.0 * errors as f64 / results.len() as f64,
        f64::from(lat[idx]) / 1000.0,
    ))
}

/// The interface of this network namespace's default route (IPv4, else IPv6), or
/// its only non-loopback interface when it has no default route.
pub fn default_interface() -> String {
    let routed = default_route_interface();
    if !routed.is_empty() {
        return routed;
    }
    let names: Vec<String> = std::fs::read_dir("/sys/class/net")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "lo")
        .collect();
    match names.as_slice() {
        [only] => only.clone(),
        _ => String::new(),
    }
}

fn default_route_interface() -> String {
    let v4 = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    for line in v4.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() > 7 && f[1] == "00000000" && f[7] == "00000000" {
            return f[0].to_owned();
        }
    }
    let v6 = std::fs::read_to_string("/proc/net/ipv6_route").unwrap_or_default();
    for line in v6.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() == 10 && f[0] == "0".repeat(32) && f[1] == "00" && f[9] != "lo" {
            return f[9].to_owned();
        }
    }
    String::new()
}
