//! The steady-state lab: a fleet whose node-1 runs faultline's sample service under a
//! steady load, with Prometheus (scraping the service and the load generator's
//! client-side metrics every second) and Alertmanager in the coordinator's
//! namespace, and a coordinator config whose sources satisfy every production
//! prerequisite. Tests, the guard benchmark and the demo share it.
use std::process::Output;

use serde_json::Value;

use crate::{
    fleet::{Fleet, Options, Role},
    monitoring::{Alertmanager, Load, Prometheus, SampleService},
};

/// node-1's address, where the service answers.
pub const SERVICE: &str = "10.201.1.2";

/// PromQL for the sample service's own metrics (server side) and the load
/// generator's (client side, wire included).
pub const ERROR_RATE: &str =
    r#"sum(rate(sample_requests_total{code=~"5.."}[5s])) / sum(rate(sample_requests_total[5s]))"#;
pub const LATENCY_P99: &str =
    "histogram_quantile(0.99, sum(rate(sample_request_duration_seconds_bucket[5s])) by (le))";
pub const CLIENT_P99: &str = "histogram_quantile(0.99, sum(rate(sample_client_request_duration_seconds_bucket[2s])) by (le))";

/// The lab's coordinator config: the production prerequisites and abort conditions
/// (embedded defaults), with every source they need.
pub fn config() -> String {
    format!(
        "baseline: 2s
health:
  window: 3s
  dark_grace: 3s
  http:
    - {{name: api, url: 'http://{SERVICE}:8080/api/item', rate: 20/s, timeout: 1s}}
  prometheus:
    url: http://127.0.0.1:9090
    queries:
      error_rate: '{ERROR_RATE}'
      latency_p99: '{LATENCY_P99}'
      throughput: 'sum(rate(sample_requests_total[5s]))'
      traffic_vs_peak: 'sum(rate(sample_requests_total[5s])) / 200'
  alertmanager: {{url: 'http://127.0.0.1:9093'}}
  checks:
    recent_backup: {{promql: 'time() - max(sample_backup_last_success_timestamp_seconds) < bool 86400'}}
recovery: {{hold: 2s, timeout: 20s}}
components:
  api: {{hook: 'http://127.0.0.1:8080/cache/drop', gc_hook: 'http://127.0.0.1:8080/gc'}}
"
    )
}

/// Fields drop in declaration order: everything inside the namespaces goes before
/// the fleet deletes them.
pub struct Lab {
    pub load: Load,
    pub prometheus: Prometheus,
    pub alertmanager: Alertmanager,
    pub service: SampleService,
    pub fleet: Fleet,
}

/// The end of one `faultline run --wait -o json`.
pub struct Run {
    pub code: Option<i32>,
    pub events: Vec<Value>,
    pub outcome: Value,
    pub stderr: String,
}

impl Run {
    /// The preflight check named `name`.
    pub fn check(&self, name: &str) -> &Value {
        self.outcome["preflight"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["name"] == name))
            .unwrap_or_else(|| panic!("no check {name} in {}", self.outcome))
    }

    /// The signal summary named `name` (`error_rate`, `latency_p99`, ...).
    pub fn signal(&self, name: &str) -> &Value {
        self.outcome["signals"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["name"] == name))
            .unwrap_or_else(|| panic!("no signal {name} in {}", self.outcome))
    }
}

impl Lab {
    /// `service_args` go to the sample service (e.g. `--warmup 4s`);
    /// `coordinator_args` to `serve` (e.g. `--lease-ttl 15s`).
    pub fn new(service_args: &[&str], coordinator_args: &[&str]) -> Self {
        let config = config();
        let fleet = Fleet::build(Options {
            nodes: 1,
            coordinator_args,
            config: &config,
            ..Options::default()
        });
        let service = SampleService::start(&fleet.nodes[0].ns, SERVICE, service_args);
        let alertmanager = Alertmanager::start(&fleet.ctl);
        let load = Load::start(&fleet.ctl, &format!("{}/api/item", service.url), 50);
        let prometheus =
            Prometheus::start(&fleet.ctl, &[&format!("{SERVICE}:8080"), "127.0.0.1:9100"]);
        Self {
            load,
            prometheus,
            alertmanager,
            service,
            fleet,
        }
    }

    /// Writes `spec` to a file and returns `run FILE <flags>` as one line.
    pub fn spec_line(&self, spec: &str, flags: &str) -> String {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let path = self
            .fleet
            .dir
            .join(format!("spec-{}.yaml", N.fetch_add(1, Ordering::Relaxed)));
        std::fs::write(&path, spec).expect("write spec");
        format!("run {} {flags}", path.display())
    }

    /// Runs `spec`, calls `during` once the fault is applied, and waits for the end.
    pub fn run_during(&self, spec: &str, during: impl FnOnce()) -> Run {
        let mut run = self
            .fleet
            .watch_run(Role::Operator, &self.spec_line(spec, ""));
        run.until(|e| {
            e["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("applied on"))
        });
        during();
        let (code, events) = run.finish();
        Run {
            code,
            outcome: outcome_of(&events),
            events,
            stderr: String::new(),
        }
    }

    /// Runs `spec` to its end (`--wait -o json`).
    pub fn run(&self, spec: &str, flags: &str) -> Run {
        let line = self.spec_line(spec, &format!("{flags} --wait -o json"));
        finish(self.fleet.cli_line(Role::Operator, &line))
    }
}

/// The events and final outcome of a finished `run --wait -o json`.
pub fn finish(out: Output) -> Run {
    let events: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    Run {
        code: out.status.code(),
        outcome: outcome_of(&events),
        events,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The outcome the final event carries (Null when the run ended without one).
fn outcome_of(events: &[Value]) -> Value {
    events
        .iter()
        .rev()
        .find_map(|e| e.get("outcome").cloned())
        .unwrap_or(Value::Null)
}

/// A 50 ms latency fault on node-1 guarded only by PromQL: the load generator's
/// client-side p99 (which sees the wire, as the service's own histogram does not)
/// above 30 ms aborts it. The probes' health checker is waived, since none runs.
pub fn promql_latency_guard_spec() -> String {
    format!(
        "scenario: latency_injection\ntarget_node: node-1\nlatency: 50ms\nduration: 40s\nbaseline: 1s\n\
         health:\n  http: []\n  prometheus:\n    url: http://127.0.0.1:9090\n    queries:\n      \
         error_rate: '{ERROR_RATE}'\n      latency_p99: '{CLIENT_P99}'\n      \
         traffic_vs_peak: 'sum(rate(sample_requests_total[5s])) / 200'\n\
         abort_conditions: {{latency_p99_above: 30ms}}\n\
         prerequisites: {{required: [rollback, monitoring, alerting, incident_response, recent_backup]}}\n"
    )
}

/// `events` that carry a health reading, in order.
pub fn readings(events: &[Value]) -> Vec<&Value> {
    events.iter().filter_map(|e| e.get("reading")).collect()
}
