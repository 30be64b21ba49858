//! The statistics against a fixture whose every number was computed by hand (in the
//! comments), not by this code.
use std::time::Duration;

use faultline_proto::v1::{
    Check, CheckStatus, Classification, Experiment, Finding, FindingStatus, GuardBreach, Outcome,
    RunStatus, ScheduleRun, SignalSummary, Verdict,
};

use super::stats::{Records, summarize};

fn ts(s: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: s,
        nanos: 0,
    })
}

fn sig(name: &str, b: f64, d: f64, m: f64) -> SignalSummary {
    SignalSummary {
        name: name.into(),
        baseline: Some(b),
        during: Some(d),
        max_impact: Some(m),
        ..Default::default()
    }
}

#[allow(clippy::too_many_arguments)]
fn exp(
    n: i64,
    scenario: &str,
    v: Verdict,
    c: Classification,
    recovery_s: Option<u64>,
    applied_s: Option<i64>,
    signals: Vec<SignalSummary>,
) -> Experiment {
    let start = 1000 * n;
    Experiment {
        id: format!("exp-{n:06}"),
        scenario: scenario.into(),
        started: ts(start),
        ended: ts(start + 200),
        nodes: vec!["node-6".into()],
        outcome: Some(Outcome {
            verdict: v as i32,
            classification: c as i32,
            recovery_time: recovery_s.and_then(|s| Duration::from_secs(s).try_into().ok()),
            fault_applied_at: applied_s.and_then(|_| ts(start + 30)),
            fault_removed_at: applied_s.and_then(|a| ts(start + 30 + a)),
            signals,
            breach: (v == Verdict::Aborted).then(|| GuardBreach {
                guard: "abort_conditions.latency_p99_above".into(),
                source: "http:api".into(),
                observed: 180.0,
                threshold: 150.0,
                unit: "ms".into(),
                ..Default::default()
            }),
            preflight: if v == Verdict::Rejected {
                vec![Check {
                    name: "error_rate_below".into(),
                    status: CheckStatus::Fail as i32,
                    value: "0.4%".into(),
                    threshold: "0.1%".into(),
                    ..Default::default()
                }]
            } else {
                vec![]
            },
            message: "fixture".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn fixture() -> (Vec<Experiment>, Vec<ScheduleRun>, Vec<Finding>) {
    use Classification as C;
    use Verdict as V;
    let exps = vec![
        exp(
            1,
            "latency_injection",
            V::Passed,
            C::Absorbed,
            Some(2),
            Some(60),
            vec![
                sig("error_rate", 0.05, 0.08, 0.10),
                sig("latency_p99", 42.0, 92.0, 95.0),
                sig("throughput", 1250.0, 1180.0, 1100.0),
            ],
        ),
        exp(
            2,
            "latency_injection",
            V::Passed,
            C::SelfHealed,
            Some(12),
            Some(60),
            vec![
                sig("error_rate", 0.07, 0.06, 0.09),
                sig("latency_p99", 40.0, 60.0, 70.0),
                sig("throughput", 1250.0, 1200.0, 1240.0),
            ],
        ),
        exp(
            3,
            "packet_loss",
            V::Passed,
            C::Absorbed,
            Some(10),
            Some(60),
            vec![],
        ),
        exp(
            4,
            "cpu_stress",
            V::Aborted,
            C::SelfHealed,
            Some(35),
            Some(20),
            vec![],
        ),
        exp(
            5,
            "memory_stress",
            V::NotRecovered,
            C::NotRecovered,
            None,
            Some(60),
            vec![],
        ),
        exp(
            6,
            "cache_invalidation",
            V::Passed,
            C::Incident,
            Some(130),
            Some(0),
            vec![],
        ),
        exp(
            7,
            "gc_pressure",
            V::Rejected,
            C::Unspecified,
            None,
            None,
            vec![],
        ),
        exp(
            8,
            "latency_injection",
            V::Failed,
            C::Unspecified,
            None,
            None,
            vec![],
        ),
    ];
    let run = |s: &str, scenario: &str, status: RunStatus, slot: i64| ScheduleRun {
        schedule: s.into(),
        scenario: scenario.into(),
        status: status as i32,
        slot: ts(slot),
        reasons: vec![format!("{s} reason")],
        ..Default::default()
    };
    let runs = vec![
        run("loss-daily", "packet_loss", RunStatus::Skipped, 9000),
        run("cpu-weekly", "cpu_stress", RunStatus::Missed, 9500),
        run("lat-daily", "latency_injection", RunStatus::Started, 9600),
    ];
    let f = |title: &str, s: FindingStatus| Finding {
        title: title.into(),
        status: s as i32,
        scenario: "latency_injection".into(),
        ..Default::default()
    };
    let findings = vec![
        f("cache stampede", FindingStatus::Resolved),
        f("retry storm", FindingStatus::Resolved),
        f("gc pause impact", FindingStatus::Open),
    ];
    (exps, runs, findings)
}

fn close(a: Option<f64>, b: f64) -> bool {
    a.is_some_and(|a| (a - b).abs() < 1e-9)
}

#[test]
fn the_fleet_summary_matches_the_hand_computed_fixture() {
    let (exps, runs, findings) = fixture();
    let s = summarize(&Records {
        since_ms: 0,
        until_ms: 100_000_000,
        scenario: None,
        experiments: &exps,
        runs: &runs,
        findings: &findings,
    });
    // Per scenario: (tests, recoveries, success %, average recovery s).
    type Row<'a> = (&'a str, u32, u32, Option<f64>, Option<f64>);
    let rows: Vec<Row> = s
        .scenarios
        .iter()
        .map(|r| {
            (
                r.scenario.as_str(),
                r.tests,
                r.recoveries,
                r.success_rate_percent,
                r.avg_recovery_s,
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("latency_injection", 2, 2, Some(100.0), Some(7.0)),
            ("packet_loss", 1, 1, Some(100.0), Some(10.0)),
            ("cpu_stress", 1, 1, Some(0.0), Some(35.0)),
            ("memory_stress", 1, 0, Some(0.0), None),
            ("cache_invalidation", 1, 1, Some(100.0), Some(130.0)),
            ("gc_pressure", 0, 0, None, None),
        ]
    );
    // Total: 6 tests (rejected and failed do not count), 5 recoveries, 4 passed.
    assert_eq!(
        (s.total.tests, s.total.recoveries, s.total.passed),
        (6, 5, 4)
    );
    assert!(close(s.total.success_rate_percent, 400.0 / 6.0));
    assert!(close(s.total.avg_recovery_s, 189.0 / 5.0));
    // Recovery times 2, 10, 12, 35, 130: 10 s falls in [10, 30).
    let buckets: Vec<(&str, u32)> = s
        .distribution
        .buckets
        .iter()
        .map(|b| (b.label, b.count))
        .collect();
    assert_eq!(
        buckets,
        [
            ("0-10s", 1),
            ("10-30s", 2),
            ("30-60s", 1),
            ("60-120s", 0),
            (">120s", 1)
        ]
    );
    let shares: Vec<f64> = s
        .distribution
        .buckets
        .iter()
        .map(|b| b.share_percent)
        .collect();
    assert_eq!(shares, [20.0, 40.0, 20.0, 0.0, 20.0]);
    assert!(close(s.distribution.median_s, 12.0));
    assert!(
        close(s.distribution.p99_s, 130.0),
        "nearest rank ceil(0.99*5) = 5th"
    );
    assert!(close(s.distribution.average_s, 37.8));
    // Mechanisms: absorbed #1 #3 (2, 10 s), self-healed #2 #4 (12, 35 s), incident #6.
    let mech: Vec<(&str, u32, Option<f64>)> = s
        .mechanisms
        .iter()
        .map(|m| (m.mechanism, m.count, m.avg_recovery_s))
        .collect();
    assert_eq!(
        mech,
        [
            ("absorbed", 2, Some(6.0)),
            ("self_healed", 2, Some(23.5)),
            ("incident", 1, Some(130.0)),
            ("not_recovered", 1, None)
        ]
    );
    // Impact, from #1 and #2 only.
    let er = &s.impact[0];
    assert!(close(er.baseline, 0.06) && close(er.during, 0.07) && close(er.max_impact, 0.05));
    let p99 = &s.impact[1];
    assert!(close(p99.baseline, 41.0) && close(p99.during, 76.0) && close(p99.max_impact, 53.0));
    let tp = &s.impact[2];
    assert!(close(tp.baseline, 1250.0) && close(tp.during, 1190.0) && close(tp.max_impact, -12.0));
    assert_eq!(tp.experiments, 2);
    assert_eq!(s.impact[3].baseline, None, "no health score in the fixture");
    assert!(
        (s.chaos_duration_s - 260.0).abs() < 1e-9,
        "60+60+60+20+60+0"
    );
    assert_eq!(s.user_impacting_incidents, 1);
    assert_eq!(
        (s.findings.total, s.findings.open, s.findings.resolved),
        (3, 1, 2)
    );
    let aborted: Vec<&str> = s.aborted.iter().map(|a| a.what.as_str()).collect();
    assert_eq!(aborted, ["exp-000004", "exp-000008"]);
    assert!(s.aborted[0].reasons[0].contains("abort_conditions.latency_p99_above"));
    let skipped: Vec<(&str, &str)> = s
        .skipped
        .iter()
        .map(|a| (a.what.as_str(), a.status.as_str()))
        .collect();
    assert_eq!(
        skipped,
        [
            ("exp-000007", "rejected"),
            ("schedule loss-daily", "skipped"),
            ("schedule cpu-weekly", "missed")
        ]
    );
    assert_eq!(
        s.skipped[0].reasons,
        ["error_rate_below: 0.4% (needs 0.1%)"]
    );
    // Resilience: (100 + 100 + 50 + 0 + 3*0 + 0) / (1+1+1+1+3+1) = 31.25.
    let weights: Vec<u32> = s.resilience.categories.iter().map(|c| c.weight).collect();
    assert_eq!(weights, [1, 1, 1, 1, 3, 1]);
    assert!(
        (s.resilience.score - 31.25).abs() < 1e-9,
        "{}",
        s.resilience.score
    );
}

#[test]
fn a_scenario_filter_and_a_window_narrow_every_table() {
    let (exps, runs, findings) = fixture();
    let s = summarize(&Records {
        since_ms: 1_500_000, // after exp-000001 started
        until_ms: 100_000_000,
        scenario: Some(faultline_proto::spec::Scenario::LatencyInjection),
        experiments: &exps,
        runs: &runs,
        findings: &findings,
    });
    assert_eq!(s.scenarios.len(), 1);
    assert_eq!((s.total.tests, s.total.recoveries), (1, 1));
    assert!(close(s.total.avg_recovery_s, 12.0));
    assert_eq!(s.aborted.len(), 1, "exp-000008, the platform failure");
    assert!(s.skipped.is_empty(), "the latency slot started");
    assert!((s.resilience.score - 100.0).abs() < 1e-9);
}

#[test]
fn junit_has_one_case_per_experiment_and_names_the_guard_or_the_miss() {
    let (exps, _, _) = fixture();
    let xml = super::junit::report(&exps).unwrap();
    assert!(
        xml.contains(
            r#"<testsuites name="faultline" tests="8" skipped="1" failures="2" errors="1">"#
        ),
        "{xml}"
    );
    assert!(
        xml.contains("guard abort_conditions.latency_p99_above on http:api: 180.000ms vs 150ms"),
        "{xml}"
    );
    assert!(xml.contains(r#"type="not_recovered""#));
    assert!(xml.contains(r#"classname="faultline.cache_invalidation""#));
    assert!(xml.contains("preflight failed: error_rate_below: 0.4% (needs 0.1%)"));
}

#[test]
fn the_histogram_and_tables_render_from_the_summary() {
    let (exps, runs, findings) = fixture();
    let s = summarize(&Records {
        since_ms: 0,
        until_ms: 30 * 86_400_000,
        scenario: None,
        experiments: &exps,
        runs: &runs,
        findings: &findings,
    });
    let md = super::markdown::fleet(&s);
    assert!(
        md.contains("| Latency Injection | 2 | 2 | 100% | 7.0s |"),
        "{md}"
    );
    assert!(
        md.contains("| **Total** | **6** | **5** | **67%** | **37.8s** |"),
        "{md}"
    );
    assert!(
        md.contains("10-30s:   ██████████████████████████████ 2 tests (40%)"),
        "{md}"
    );
    assert!(md.contains("60-120s:  0 tests (0%)"), "{md}");
    assert!(md.contains("Median: 12.0 s"));
    assert!(md.contains("Issues found: 3 (1 open, 0 mitigated, 2 resolved)"));
    assert!(md.contains("## Resilience score: 31/100"));
}

/// A judged hypothesis reaches every report: the experiment's (with the finding a
/// refuted one proposes), JUnit's properties, and the fleet summary's counts.
#[test]
fn a_refuted_hypothesis_is_reported_counted_and_proposed_as_a_finding() {
    use faultline_proto::v1::{Hypothesis, HypothesisCheck, HypothesisResult};
    let judged = |n: i64, result: HypothesisResult, summary: &str| {
        let mut e = exp(
            n,
            "packet_loss",
            Verdict::Passed,
            Classification::Absorbed,
            Some(4),
            Some(60),
            vec![],
        );
        e.outcome.as_mut().unwrap().hypothesis = Some(Hypothesis {
            name: "minimal".into(),
            result: result as i32,
            checks: vec![HypothesisCheck {
                bound: "error_rate_rise_below".into(),
                unit: "pp".into(),
                limit: 0.05,
                measured: Some(0.29),
                result: result as i32,
                detail: "prometheus: baseline 0.020 %, during 0.310 %".into(),
            }],
            summary: summary.into(),
        });
        e
    };
    let refuted = judged(
        1,
        HypothesisResult::Refuted,
        "refuted: error_rate_rise_below 0.29 pp (limit 0.05 pp)",
    );
    let held = judged(2, HypothesisResult::Held, "held: ...");
    let r = super::experiment(&refuted, &[], &[], None);
    let md = super::markdown::experiment(&r);
    assert!(
        md.contains(
            "- Hypothesis (minimal): **refuted: error_rate_rise_below 0.29 pp (limit 0.05 pp)**"
        ),
        "{md}"
    );
    assert!(
        md.contains("- Proposed finding: `faultline finding add --experiment exp-000001 --title 'minimal impact expected, refuted: error_rate_rise_below 0.29 pp (limit 0.05 pp)'"),
        "{md}"
    );
    let r = super::experiment(&held, &[], &[], None);
    assert!(r.hypothesis.as_ref().unwrap().proposed_finding.is_none());

    let xml = super::junit::report(&[refuted.clone(), held.clone()]).unwrap();
    assert!(
        xml.contains(r#"<property name="hypothesis_result" value="refuted: error_rate_rise_below 0.29 pp (limit 0.05 pp)"/>"#),
        "{xml}"
    );

    let exps = vec![
        refuted,
        held,
        exp(
            3,
            "packet_loss",
            Verdict::Passed,
            Classification::Absorbed,
            Some(2),
            Some(60),
            vec![],
        ),
    ];
    let s = summarize(&Records {
        since_ms: 0,
        until_ms: 30 * 86_400_000,
        scenario: None,
        experiments: &exps,
        runs: &[],
        findings: &[],
    });
    let row = s
        .scenarios
        .iter()
        .find(|r| r.scenario == "packet_loss")
        .unwrap();
    assert_eq!(
        (
            row.tests,
            row.hypotheses_held,
            row.hypotheses_refuted,
            row.hypotheses_unchecked
        ),
        (3, 1, 1, 0)
    );
    let md = super::markdown::fleet(&s);
    assert!(md.contains("| Packet Loss | 1 | 1 | 0 |"), "{md}");
}
