//! Guard breach -> removal confirmed (`cargo xtask bench`), on the steady-state lab:
//! the sample service under load, real Prometheus scraping every second.
//!
//! - HTTP probe (20/s) with a p99 guard of 30 ms against a 50 ms latency fault, 30
//!   runs: from the breach first visible (the probe result that showed it) to the
//!   agent confirming removal.
//! - PromQL at a 1 s scrape: the same against the client-side p99 query, 30 runs;
//!   also the time from the fault applied to the breach visible (scrape, rate window).
//! - The coordinator's CPU while one experiment carries ten experiments' probes
//!   (10 HTTP probes at 20/s each) plus the PromQL and Alertmanager sources.
use std::time::Duration;

use faultline_tests::{
    lab::{Lab, SERVICE},
    node::process_cpu_s,
};

fn quantiles(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    (q(0.5), q(0.99), *v.last().unwrap())
}

fn ms(v: &serde_json::Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or_else(|| panic!("{k} in {v}"))
}

/// (breach visible -> removal confirmed, fault applied -> breach visible) of `runs`.
fn breaches(lab: &Lab, spec: &str, runs: usize) -> (Vec<f64>, Vec<f64>) {
    let (mut removal, mut detection) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let run = lab.run(spec, "");
        assert_eq!(run.code, Some(4), "{}\n{}", run.outcome, run.stderr);
        let b = &run.outcome["breach"];
        removal.push(ms(b, "removal_confirmed_ms") - ms(b, "visible_ms"));
        detection.push(ms(b, "visible_ms") - ms(&run.outcome, "fault_applied_ms"));
    }
    (removal, detection)
}

fn report(what: &str, v: Vec<f64>) {
    let n = v.len();
    let (p50, p99, max) = quantiles(v);
    println!("  {what:<52} n={n:<3} p50 {p50:7.1} ms  p99 {p99:7.1} ms  max {max:7.1} ms");
}

fn main() {
    // FAULTLINE_GUARDS_BENCH=http|promql|cpu runs one part.
    let only = std::env::var("FAULTLINE_GUARDS_BENCH").ok();
    let part = |p: &str| only.as_deref().is_none_or(|o| o == p);
    let lab = Lab::new(&[], &[]);
    println!("\nguard breach -> removal confirmed (50 ms latency fault, p99 guard 30 ms)");
    let http = "scenario: latency_injection\ntarget_node: node-1\nlatency: 50ms\nduration: 60s\nbaseline: 1s\n\
                abort_conditions: {latency_p99_above: 30ms}\n";
    if part("http") {
        let (removal, detection) = breaches(&lab, http, 30);
        report("HTTP probe 20/s: breach visible -> removal", removal);
        report(
            "HTTP probe 20/s: fault applied -> breach visible",
            detection,
        );
    }
    let promql = faultline_tests::lab::promql_latency_guard_spec();
    if part("promql") {
        let (removal, detection) = breaches(&lab, &promql, 30);
        report("PromQL, 1 s scrape: breach visible -> removal", removal);
        report(
            "PromQL, 1 s scrape: fault applied -> breach visible",
            detection,
        );
    }
    if !part("cpu") {
        return;
    }

    // Ten experiments' worth of probes in one: CPU of the coordinator process over
    // the fault's 30 s (everything else it does meanwhile is idle).
    let probes: Vec<String> = (0..10)
        .map(|i| format!("    - {{name: p{i}, url: 'http://{SERVICE}:8080/healthz', rate: 20/s}}"))
        .collect();
    let spec = format!(
        "scenario: cpu_stress\ntarget_node: node-1\ncpu_stress: 5%\nduration: 30s\nbaseline: 1s\n\
         health:\n  http:\n{}\n",
        probes.join("\n")
    );
    let pid = lab.fleet.coordinator_pid();
    let window = Duration::from_secs(20);
    let mut used = 0.0;
    let run = lab.run_during(&spec, || {
        std::thread::sleep(Duration::from_secs(2));
        let c0 = process_cpu_s(pid as u32).unwrap();
        std::thread::sleep(window);
        used = process_cpu_s(pid as u32).unwrap() - c0;
    });
    assert_eq!(run.code, Some(0), "{}", run.outcome);
    println!(
        "  coordinator CPU with 10 probes at 20/s (200 req/s), 4 PromQL queries/s and 1 alert poll/s: \
         {:.1}% of one CPU",
        100.0 * used / window.as_secs_f64()
    );
}
