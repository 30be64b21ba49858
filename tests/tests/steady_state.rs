//! The steady state end to end: experiments judged by a real service's health. The
//! lab (`faultline_tests::lab`) runs the sample service under steady load on node-1,
//! real Prometheus and Alertmanager beside the coordinator, and the coordinator on
//! the production prerequisites and abort conditions. Every test checks that nothing
//! is left behind.
use std::time::{Duration, Instant};

use faultline_tests::{
    checks::faultline_leftovers,
    fleet::{NODE_IFACE, Role},
    lab::{ERROR_RATE, LATENCY_P99, Lab, Run, finish},
    node::assert_no_stress_cgroups,
    slack,
};
use serde_json::Value;

/// One at a time: the tests check the node's cgroups and kernel state for
/// leftovers, which another test's running experiment would show.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A 5 % CPU stress on node-1 for `duration`, plus `extra` spec lines.
fn cpu(duration: &str, extra: &str) -> String {
    format!(
        "scenario: cpu_stress\ntarget_node: node-1\ncpu_stress: 5%\nduration: {duration}\n{extra}"
    )
}

fn nothing_left(lab: &Lab) {
    assert_no_stress_cgroups();
    let left = faultline_leftovers(&lab.fleet.nodes[0].ns, NODE_IFACE);
    assert!(left.is_empty(), "left in the kernel: {left:?}");
}

/// Waits until Prometheus has scraped what the service now says.
fn wait_for_value(lab: &Lab, promql: &str, want: f64) {
    let until = Instant::now() + Duration::from_secs(15);
    while lab.prometheus.query(promql) != Some(want) {
        assert!(Instant::now() < until, "{promql} never became {want}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn ms(v: &Value, key: &str) -> i64 {
    v[key].as_i64().unwrap_or_else(|| panic!("{key} in {v}"))
}

/// breach first visible -> removal confirmed, in ms.
fn breach_to_removal(run: &Run) -> i64 {
    let b = &run.outcome["breach"];
    ms(b, "removal_confirmed_ms") - ms(b, "visible_ms")
}

/// Every check passes or is skipped, except `failing` (which must fail) and those in
/// `dependent` (which may, because they read the same broken source).
fn assert_only_failing(run: &Run, failing: &str, dependent: &[&str]) {
    assert_eq!(
        run.code,
        Some(3),
        "{failing}: {}\n{}",
        run.outcome,
        run.stderr
    );
    assert_eq!(
        run.outcome["verdict"], "rejected",
        "{failing}: {}",
        run.outcome
    );
    assert!(
        run.outcome["fault_applied_ms"].is_null(),
        "{failing}: applied? {}",
        run.outcome
    );
    let c = run.check(failing);
    assert_eq!(c["status"], "fail", "{failing}: {c}");
    assert!(
        !c["value"].as_str().unwrap_or("").is_empty(),
        "{failing} names no value: {c}"
    );
    for c in run.outcome["preflight"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        // Preflight takes the probes' p99 over 100 results (5 s at the lab's 20/s),
        // so one stalled request no longer decides it, but two in those 5 s on this
        // shared 2-vCPU machine still can cross a 2-4 ms baseline's 7-9 ms bound.
        // That check is tested on its own below, with a 23 ms p99, and must hold in
        // the control runs above; here its noise is not the failure under test.
        let noise = name == "latency_within_baseline" && failing != name;
        if name != failing && !dependent.contains(&name) && !noise {
            assert!(c["status"] != "fail", "{failing}: {name} failed too: {c}");
        }
    }
    eprintln!(
        "{failing}: {} vs {} ({})",
        c["value"], c["threshold"], c["detail"]
    );
}

/// A prerequisite failing on its own: the spec that makes `failing` fail (and
/// `dependent`, which read the same broken source, may fail with it), and what its
/// check must say (`(field, text)`).
struct Case {
    spec: String,
    failing: &'static str,
    dependent: &'static [&'static str],
    says: Option<(&'static str, &'static str)>,
}

impl Case {
    fn check(&self, run: &Run) {
        assert_only_failing(run, self.failing, self.dependent);
        if let Some((field, text)) = self.says {
            let said = run.check(self.failing)[field]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            assert!(
                said.contains(text),
                "{}: {field} {said:?} lacks {text:?}",
                self.failing
            );
        }
    }

    fn check_in(&self, lab: &Lab) {
        self.check(&lab.run(&self.spec, ""));
    }
}

#[test]
fn each_prerequisite_failing_on_its_own_refuses_the_experiment_with_its_name_and_value() {
    let _g = serial();
    let lab = Lab::new(&[], &[]);
    // The control: in the healthy lab every prerequisite holds, and the runs record
    // the probes' baseline p99 that latency_within_baseline compares with later. It
    // compares with the median of recent runs; three of them, because one run's p99
    // is a single probe of 40, and a CI run once recorded 41.8 ms (a stall while the
    // lab was starting) where the service answers in about 2 ms.
    for _ in 0..3 {
        let ok = lab.run(&cpu("2s", "baseline: 2s\n"), "");
        assert_eq!(ok.code, Some(0), "{}\n{}", ok.outcome, ok.stderr);
        for c in ok.outcome["preflight"].as_array().unwrap() {
            assert!(c["status"] == "pass" || c["status"] == "skipped", "{c}");
        }
        assert_eq!(ok.check("required.rollback")["status"], "pass");
    }

    let short = "baseline: 1s\n";
    let with = |extra: &str| cpu("2s", &format!("{short}{extra}"));
    // Thresholds that real values fail, and required systems that do not answer.
    let cases = [
        Case {
            spec: with("prerequisites: {health_score_above: 100}\n"),
            failing: "health_score_above",
            dependent: &[],
            says: None,
        },
        Case {
            spec: with("prerequisites: {traffic_below_peak: 10%}\n"),
            failing: "traffic_below_peak",
            dependent: &[],
            says: Some(("value", "% of peak")),
        },
        Case {
            spec: "scenario: packet_loss\ntarget_node: node-1\npacket_loss: 0.1%\ninterface: eth9\nduration: 2s\nbaseline: 1s\n".into(),
            failing: "required.rollback",
            dependent: &[],
            says: Some(("detail", "eth9")),
        },
        Case {
            spec: with("health: {http: [{name: api, url: 'http://10.201.1.2:8081/api/item'}]}\n"),
            failing: "required.health_checker",
            dependent: &[],
            says: None,
        },
        Case {
            spec: with("health: {prometheus: {url: 'http://127.0.0.1:9999', queries: {traffic_vs_peak: 'vector(0)'}}}\n"),
            failing: "required.monitoring",
            // Prometheus also answers traffic_vs_peak and the backup check.
            dependent: &["traffic_below_peak", "required.recent_backup"],
            says: None,
        },
        Case {
            spec: with("health: {alertmanager: {url: 'http://127.0.0.1:9999'}}\n"),
            failing: "required.alerting",
            // Alertmanager also answers no_incidents and lists the receivers.
            dependent: &["no_incidents", "required.incident_response"],
            says: None,
        },
        Case {
            spec: with(
                "health:\n  checks:\n    incident_response: {url: 'http://127.0.0.1:9/pager'}\n    \
                 recent_backup: {promql: 'time() - max(sample_backup_last_success_timestamp_seconds) < bool 86400'}\n",
            ),
            failing: "required.incident_response",
            dependent: &[],
            says: None,
        },
    ];
    for case in &cases {
        case.check(&lab.run(&case.spec, ""));
    }

    // An open incident (a P3 alert also lowers the health score, so that check is
    // set aside for this case).
    lab.alertmanager.fire("QueueBacklog", "P3");
    Case {
        spec: with("prerequisites: {health_score_above: 0}\n"),
        failing: "no_incidents",
        dependent: &[],
        says: Some(("value", "QueueBacklog (P3)")),
    }
    .check_in(&lab);
    lab.alertmanager.resolve("QueueBacklog", "P3");

    lab.service.backup_age("48h");
    let backup = "time() - max(sample_backup_last_success_timestamp_seconds) < bool 86400";
    wait_for_value(&lab, backup, 0.0);
    let run = lab.run(&cpu("2s", short), "");
    assert_only_failing(&run, "required.recent_backup", &[]);
    lab.service.backup_age("0s");
    wait_for_value(&lab, backup, 1.0);

    // Degraded service: the signals themselves fail their thresholds.
    lab.service.degrade("error_rate=0.03");
    std::thread::sleep(Duration::from_secs(6));
    let run = lab.run(
        &cpu(
            "2s",
            &format!("{short}prerequisites: {{health_score_above: 0}}\n"),
        ),
        "",
    );
    assert_only_failing(&run, "error_rate_below", &[]);
    lab.service.degrade("latency=20ms");
    std::thread::sleep(Duration::from_secs(6));
    let run = lab.run(&cpu("2s", short), "");
    assert_only_failing(&run, "latency_within_baseline", &[]);
    // Its p99 is over enough results that it is not the single slowest.
    let detail = run.check("latency_within_baseline")["detail"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    let over: usize = detail
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {detail}"));
    assert!(over >= 100, "p99 over {over} results: {detail}");
    lab.service.degrade("");
    nothing_left(&lab);
}

#[test]
fn a_latency_fault_against_an_http_p99_guard_aborts_within_a_second_of_the_breach() {
    let _g = serial();
    let lab = Lab::new(&[], &[]);
    let started = Instant::now();
    let run = lab.run(
        "scenario: latency_injection\ntarget_node: node-1\nlatency: 50ms\nduration: 40s\nbaseline: 2s\n\
         abort_conditions: {latency_p99_above: 30ms}\nexpected_impact: minimal\n",
        "",
    );
    assert_eq!(run.code, Some(4), "{}\n{}", run.outcome, run.stderr);
    let b = &run.outcome["breach"];
    assert_eq!(b["guard"], "abort_conditions.latency_p99_above", "{b}");
    assert_eq!(b["source"], "http:api", "{b}");
    assert!(b["observed"].as_f64().unwrap() > 30.0, "{b}");
    // A guard that had to stop the fault refutes "minimal", with what it saw.
    let h = &run.outcome["hypothesis"];
    assert_eq!(h["result"], "refuted", "{h}");
    assert!(
        h["summary"]
            .as_str()
            .unwrap()
            .starts_with("refuted: guard abort_conditions.latency_p99_above "),
        "{h}"
    );
    let took = breach_to_removal(&run);
    eprintln!("http p99 breach visible -> removal confirmed: {took} ms; {b}");
    assert!((0..=slack(1000, 3000)).contains(&took), "{took} ms: {b}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the fault ran its course"
    );
    nothing_left(&lab);
}

#[test]
fn a_latency_fault_against_a_promql_guard_aborts_within_a_scrape_and_a_second() {
    let _g = serial();
    let lab = Lab::new(&[], &[]);
    // Client-side latency (the load generator's histogram) sees the wire; only the
    // PromQL signals guard this run, no probe.
    let spec = faultline_tests::lab::promql_latency_guard_spec();
    let run = lab.run(&spec, "");
    assert_eq!(run.code, Some(4), "{}\n{}", run.outcome, run.stderr);
    let b = &run.outcome["breach"];
    assert_eq!(b["guard"], "abort_conditions.latency_p99_above", "{b}");
    assert_eq!(b["source"], "prometheus:latency_p99", "{b}");
    assert_eq!(
        run.outcome["waivers"],
        serde_json::json!(["health_checker"])
    );
    let took = breach_to_removal(&run);
    let from_apply = ms(b, "visible_ms") - ms(&run.outcome, "fault_applied_ms");
    eprintln!(
        "PromQL p99 breach: visible {from_apply} ms after the fault, removal confirmed {took} ms after that"
    );
    assert!((0..=slack(1000, 3000)).contains(&took), "{took} ms: {b}");
    nothing_left(&lab);
}

#[test]
fn an_alert_that_fires_mid_fault_aborts_it() {
    let _g = serial();
    let lab = Lab::new(&[], &[]);
    let run = lab.run_during(&cpu("30s", "baseline: 1s\n"), || {
        lab.alertmanager.fire("CheckoutErrors", "P1");
    });
    assert_eq!(run.code, Some(4), "{}", run.outcome);
    let b = &run.outcome["breach"];
    assert_eq!(b["guard"], "abort_conditions.new_incident", "{b}");
    assert!(
        b["detail"]
            .as_str()
            .unwrap()
            .contains("CheckoutErrors (P1)"),
        "{b}"
    );
    lab.alertmanager.resolve("CheckoutErrors", "P1");
    nothing_left(&lab);
}

#[test]
fn a_dark_prometheus_aborts_after_the_grace() {
    let _g = serial();
    let lab = Lab::new(&[], &[]);
    let mut frozen = None;
    let run = lab.run_during(
        &cpu("40s", "baseline: 1s\nhealth: {dark_grace: 2s}\n"),
        || {
            frozen = Some(Instant::now());
            lab.prometheus.freeze();
        },
    );
    let dark = frozen.expect("frozen").elapsed();
    lab.prometheus.thaw();
    assert_eq!(run.code, Some(4), "{}", run.outcome);
    let b = &run.outcome["breach"];
    assert_eq!(b["guard"], "health.dark_grace", "{b}");
    assert_eq!(b["source"], "prometheus", "{b}");
    eprintln!("Prometheus frozen; the run ended {dark:?} later: {b}");
    // Dark since its last answer, a round (1 s) at most before the freeze.
    assert!(b["observed"].as_f64().unwrap() >= 2.0, "{b}");
    assert!(
        dark >= Duration::from_secs(1) && dark < Duration::from_secs(slack(6, 10)),
        "{dark:?}"
    );
    nothing_left(&lab);
}

#[test]
fn the_agent_side_guard_removes_the_fault_while_the_coordinator_is_frozen() {
    let _g = serial();
    // The lease outlives the freeze, so only the agent's own guard can end it. The
    // coordinator's latency guard is set above the freeze: a probe of its own that
    // was in flight when it was stopped measures the freeze as the service's
    // latency (246 ms over a 235 ms freeze in one CI run), and on waking it could
    // act on that before it reads the agent's report.
    let lab = Lab::new(&[], &["--lease-ttl", "20s"]);
    let spec = cpu(
        "40s",
        "baseline: 1s\nabort_conditions: {latency_p99_above: 20s}\nagent_guard:\n  \
         http: {url: 'http://127.0.0.1:8080/api/item', rate: 20/s}\n  \
         error_rate_above: 20%\n  window: 1s\n",
    );
    let stress = || {
        std::fs::read_dir("/sys/fs/cgroup/cpu/faultline")
            .or_else(|_| std::fs::read_dir("/sys/fs/cgroup/faultline"))
            .map(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with("stress-cpu-"))
            })
            .unwrap_or(false)
    };
    let mut removed = Duration::ZERO;
    let run = lab.run_during(&spec, || {
        assert!(stress(), "the stress group is in place");
        lab.fleet.signal_coordinator(libc::SIGSTOP);
        let broke = Instant::now();
        lab.service.degrade("error_rate=1");
        while stress() {
            assert!(
                broke.elapsed() < Duration::from_secs(10),
                "the agent did not remove the stress"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        removed = broke.elapsed();
        // Healed before the coordinator wakes: only the agent saw the breakage.
        lab.service.degrade("");
        lab.fleet.signal_coordinator(libc::SIGCONT);
    });
    eprintln!("service broken with the coordinator frozen; stress removed {removed:?} later");
    assert_eq!(run.code, Some(4), "{}", run.outcome);
    let b = &run.outcome["breach"];
    assert_eq!(b["agent_side"], true, "{b}");
    assert_eq!(b["guard"], "agent_guard.error_rate_above", "{b}");
    assert!(removed < Duration::from_secs(slack(3, 8)), "{removed:?}");
    nothing_left(&lab);
}

#[test]
fn a_cache_with_a_known_warm_up_recovers_within_a_second_of_it_and_self_heals() {
    let _g = serial();
    let lab = Lab::new(&["--warmup", "4s", "--miss-latency", "40ms"], &[]);
    // The probes judge the steady state here: the service's own p99 is a rate over
    // 5 s, which would add its window to the recovery time.
    let spec = format!(
        "scenario: cache_invalidation\ntarget_node: node-1\ncomponents: [api]\nduration: 8s\nbaseline: 2s\n\
         expected_impact: temporary_cache_misses\n\
         health:\n  prometheus:\n    url: http://127.0.0.1:9090\n    queries:\n      error_rate: '{ERROR_RATE}'\n      \
         traffic_vs_peak: 'sum(rate(sample_requests_total[5s])) / 200'\n\
         recovery: {{hold: 2s, timeout: 20s}}\n"
    );
    let run = lab.run(&spec, "");
    assert_eq!(run.code, Some(0), "{}\n{}", run.outcome, run.stderr);
    assert_eq!(
        run.outcome["classification"], "self_healed",
        "{}",
        run.outcome
    );
    let rec = run.outcome["recovery_s"].as_f64().unwrap();
    eprintln!(
        "cache warm-up 4 s: recovery {rec:.2} s; p99 {}",
        run.signal("latency_p99")
    );
    assert!(
        (rec - 4.0).abs() <= 1.0,
        "recovery {rec} s for a 4 s warm-up: {}",
        run.outcome
    );
    // temporary_cache_misses: a few errors at most, back within 30 s, nobody paged.
    let h = &run.outcome["hypothesis"];
    eprintln!("hypothesis: {}", h["summary"]);
    assert_eq!(h["name"], "temporary_cache_misses", "{h}");
    assert_eq!(h["result"], "held", "{h}");
    let within = h["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["bound"] == "recovered_within")
        .expect("the recovery bound");
    assert_eq!(within["measured"].as_f64(), Some(rec), "{h}");
    assert!(lab.service.metrics().contains("sample_cache_drops_total 1"));
    nothing_left(&lab);
}

#[test]
fn a_small_cpu_stress_on_an_idle_service_is_absorbed() {
    let _g = serial();
    let lab = Lab::new(&[], &[]);
    let run = lab.run(&cpu("6s", "baseline: 3s\nexpected_impact: minimal\n"), "");
    assert_eq!(run.code, Some(0), "{}\n{}", run.outcome, run.stderr);
    assert_eq!(run.outcome["classification"], "absorbed", "{}", run.outcome);
    let h = &run.outcome["hypothesis"];
    eprintln!("hypothesis: {}", h["summary"]);
    assert_eq!(h["result"], "held", "{h}");
    let bounds: Vec<&str> = h["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["bound"].as_str().unwrap())
        .collect();
    assert_eq!(
        bounds,
        [
            "error_rate_rise_below",
            "throughput_drop_below",
            "no_incident"
        ],
        "{h}"
    );
    assert_eq!(
        run.outcome["recovery_s"].as_f64(),
        Some(0.0),
        "{}",
        run.outcome
    );
    let cpu = run.signal("node_cpu");
    assert!(
        cpu["during"].as_f64().unwrap() > cpu["baseline"].as_f64().unwrap() + 2.0,
        "{cpu}"
    );
    for s in [
        "error_rate",
        "latency_p99",
        "throughput",
        "health_score",
        "availability",
    ] {
        assert!(
            run.signal(s)["baseline"].is_number(),
            "{s}: {}",
            run.signal(s)
        );
    }
    nothing_left(&lab);
}

#[test]
fn an_incident_during_the_fault_is_classified_incident_with_its_time_to_resolve() {
    let _g = serial();
    let lab = Lab::new(&[], &[]);
    // A P2 alert does not abort here (only P0 would), and the score it lowers is not
    // guarded.
    let spec = cpu(
        "8s",
        "baseline: 1s\nabort_conditions: {new_incident: [P0], health_score_below: 0}\n\
         expected_impact: minimal\n",
    );
    let run = lab.run_during(&spec, || {
        lab.alertmanager.fire("DiskFilling", "P2");
        std::thread::sleep(Duration::from_secs(2));
        lab.alertmanager.resolve("DiskFilling", "P2");
    });
    assert_eq!(run.code, Some(7), "{}", run.outcome);
    assert_eq!(run.outcome["classification"], "incident", "{}", run.outcome);
    let i = &run.outcome["incidents"][0];
    assert_eq!(i["alert"], "DiskFilling", "{i}");
    assert_eq!(i["severity"], "P2", "{i}");
    let ttr = i["time_to_resolve_s"].as_f64().expect("resolved");
    assert!((1.5..6.0).contains(&ttr), "{ttr} s: {i}");
    // Recovered, so not an abort; but "minimal" promised nobody would be paged.
    let h = &run.outcome["hypothesis"];
    assert_eq!(h["result"], "refuted", "{h}");
    assert!(
        h["summary"]
            .as_str()
            .unwrap()
            .contains("no_incident 1.00 incidents (limit 0 incidents)"),
        "{h}"
    );
    nothing_left(&lab);
}

#[test]
fn a_service_that_never_comes_back_is_not_recovered_after_the_timeout() {
    let _g = serial();
    let lab = Lab::new(&[], &[]);
    let spec = cpu(
        "4s",
        "baseline: 1s\nabort_conditions: {error_rate_above: 100%, health_score_below: 0}\n\
         recovery: {hold: 2s, timeout: 5s}\n",
    );
    let run = lab.run_during(&spec, || lab.service.degrade("down=1"));
    lab.service.degrade("");
    let outcome = &run.outcome;
    assert_eq!(run.code, Some(5), "{outcome}");
    assert_eq!(outcome["verdict"], "not_recovered", "{outcome}");
    assert_eq!(outcome["classification"], "not_recovered", "{outcome}");
    assert!(outcome["recovery_s"].is_null(), "{outcome}");
    assert!(
        outcome["message"]
            .as_str()
            .unwrap()
            .contains("did not hold"),
        "{outcome}"
    );
    nothing_left(&lab);
}

#[test]
fn health_readings_stream_about_once_a_second() {
    let _g = serial();
    let lab = Lab::new(&[], &[]);
    let run = finish(lab.fleet.cli_line(
        Role::Operator,
        &lab.spec_line(&cpu("3s", "baseline: 2s\n"), "--wait -o json"),
    ));
    assert_eq!(run.code, Some(0), "{}", run.outcome);
    let readings = faultline_tests::lab::readings(&run.events);
    assert!(readings.len() >= 5, "{} readings", readings.len());
    let r = readings.last().unwrap();
    for k in [
        "error_rate_percent",
        "latency_p99_ms",
        "throughput_rps",
        "health_score",
    ] {
        assert!(r[k].is_number(), "{k}: {r}");
    }
    assert_eq!(r["source"], "prometheus");
}

#[test]
fn a_node_side_probe_watches_a_node_local_service_and_its_guard_acts_on_it() {
    let _g = serial();
    let lab = Lab::new(&[], &[]);
    // The agent probes the service on its node's loopback; the coordinator guards
    // the experiment with those results. The spec's Prometheus source keeps every
    // signal but the error rate, so the probes are the only error rate there is: with
    // the config's, Prometheus saw the same degradation and won the race to breach
    // in one CI run (11.4 % by `prometheus:error_rate`). The score, which the same
    // errors lower, is not guarded here for the same reason.
    let spec = cpu(
        "30s",
        &format!(
            "baseline: 2s\nhealth:\n  http:\n    - {{name: local, url: 'http://127.0.0.1:8080/api/item', rate: 20/s, from: node}}\n\
             \x20 prometheus:\n    url: http://127.0.0.1:9090\n    queries:\n      \
             latency_p99: '{LATENCY_P99}'\n      \
             throughput: 'sum(rate(sample_requests_total[5s]))'\n      \
             traffic_vs_peak: 'sum(rate(sample_requests_total[5s])) / 200'\n\
             abort_conditions: {{error_rate_above: 10%, health_score_below: 0}}\n"
        ),
    );
    let run = lab.run_during(&spec, || lab.service.degrade("error_rate=1"));
    lab.service.degrade("");
    assert_eq!(run.code, Some(4), "{}", run.outcome);
    let checker = run.check("required.health_checker");
    assert!(
        checker["detail"].as_str().unwrap().contains("local@node-1"),
        "{checker}"
    );
    let b = &run.outcome["breach"];
    assert_eq!(b["guard"], "abort_conditions.error_rate_above", "{b}");
    assert_eq!(b["source"], "http:local@node-1", "{b}");
    eprintln!(
        "node-side probe breach -> removal: {} ms",
        breach_to_removal(&run)
    );
    nothing_left(&lab);
}
