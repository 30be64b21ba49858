//! The demo's sandbox: seven namespace nodes (node-1..node-7) with agents, the sample
//! service on every node under a steady load, Prometheus scraping every service and
//! every load generator, Alertmanager, a memory-holding "runtime" cgroup for GC
//! pressure and a set of cached files per application component — and a
//! coordinator config that gives the embedded production defaults every source
//! they need. node-6 is the report's "least critical node", the target.
use std::path::PathBuf;

use crate::{
    fleet::{Fleet, Options},
    monitoring::{Alertmanager, Load, Prometheus, SampleService},
    workload::{Workload, file_set},
};

pub const NODES: usize = 7;
pub const TARGET: &str = "node-6";
pub const TARGET_ADDR: &str = "10.201.6.2";
/// Requests a second each load generator sends to its node's service.
pub const RATE: u32 = 20;

/// Fields drop in declaration order: processes in the namespaces go first.
pub struct Sandbox {
    pub loads: Vec<Load>,
    pub prometheus: Prometheus,
    pub alertmanager: Alertmanager,
    pub services: Vec<SampleService>,
    pub fleet: Fleet,
    pub runtime: Workload,
    /// The components' cached files (removed with the sandbox).
    pub components: Vec<crate::TempPath>,
}

/// The coordinator config: sources for every production prerequisite (p99 from the
/// load generators' client-side histograms, which see the wire as the service's own
/// histogram does not), the
/// application's components (the api's cache hook and GC hook are node-local on
/// the service; consensus, network and scheduler are cached files), the GC target.
pub fn config(runtime_cgroup: &str, components: &[PathBuf]) -> String {
    let sum = "sum(rate(sample_requests_total[5s]))";
    // The load generators and the probe together run at about half the peak.
    let peak = (f64::from(RATE) * NODES as f64 + 20.0) * 2.0;
    format!(
        "health:
  window: 3s
  dark_grace: 3s
  http:
    - {{name: api, url: 'http://{TARGET_ADDR}:8080/api/item', rate: 20/s, timeout: 1s}}
  prometheus:
    url: http://127.0.0.1:9090
    queries:
      error_rate: 'sum(rate(sample_requests_total{{code=~\"5..\"}}[5s])) / {sum}'
      latency_p99: 'histogram_quantile(0.99, sum(rate(sample_client_request_duration_seconds_bucket[5s])) by (le))'
      throughput: '{sum}'
      traffic_vs_peak: '{sum} / {peak:.0}'
  alertmanager: {{url: 'http://127.0.0.1:9093'}}
  checks:
    recent_backup: {{promql: 'time() - max(sample_backup_last_success_timestamp_seconds) < bool 86400'}}
components:
  api: {{hook: 'http://127.0.0.1:8080/cache/drop', gc_hook: 'http://127.0.0.1:8080/gc'}}
  consensus: {{paths: ['{}']}}
  network: {{paths: ['{}']}}
  scheduler: {{paths: ['{}']}}
gc: {{target_cgroup: '{runtime_cgroup}', to_percent: 80}}
",
        components[0].display(),
        components[1].display(),
        components[2].display(),
    )
}

impl Sandbox {
    /// `coordinator_args` go to `serve` (e.g. `--schedule FILE`).
    pub fn start(coordinator_args: &[&str], service_args: &[&str]) -> Self {
        let runtime = Workload::new("sandbox-runtime");
        let components: Vec<crate::TempPath> = ["consensus", "network", "scheduler"]
            .iter()
            .map(|c| file_set(&format!("sandbox-{c}")))
            .collect();
        let paths: Vec<PathBuf> = components.iter().map(|c| c.to_path_buf()).collect();
        let config = config(&runtime.rel, &paths);
        let fleet = Fleet::build(Options {
            nodes: NODES,
            coordinator_args,
            config: &config,
            ..Options::default()
        });
        let services: Vec<SampleService> = fleet
            .nodes
            .iter()
            .map(|n| SampleService::start(&n.ns, &n.addr, service_args))
            .collect();
        let alertmanager = Alertmanager::start(&fleet.ctl);
        let loads: Vec<Load> = fleet
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                Load::start_with_metrics(
                    &fleet.ctl,
                    &format!("http://{}:8080/api/item", n.addr),
                    RATE,
                    &format!("127.0.0.1:{}", 9101 + i),
                )
            })
            .collect();
        let mut targets: Vec<String> = fleet
            .nodes
            .iter()
            .map(|n| format!("{}:8080", n.addr))
            .collect();
        targets.extend((0..NODES).map(|i| format!("127.0.0.1:{}", 9101 + i)));
        let refs: Vec<&str> = targets.iter().map(String::as_str).collect();
        let prometheus = Prometheus::start(&fleet.ctl, &refs);
        Self {
            loads,
            prometheus,
            alertmanager,
            services,
            fleet,
            runtime,
            components,
        }
    }
}
