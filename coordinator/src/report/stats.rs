//! The fleet summary: every table and number of the reference report's "Test
//! Results" and "Recovery Analysis", computed from recorded experiments, schedule
//! runs and findings — a pure function of the records, so the CLI, the dashboard
//! and the tests agree by construction.
//!
//! Counting rules (README, "Reports"):
//! - a *test* is an experiment that ended passed, aborted or not recovered; refused
//!   (rejected) ones are listed with the skips, platform failures and interruptions
//!   with the aborts, and neither counts as a test of the service;
//! - a *recovery* is a test with a recovery time; *success* is a passed test;
//! - recovery-time buckets are half-open: [0, 10), [10, 30), [30, 60), [60, 120),
//!   [120, ∞) seconds; the median is the middle value (the mean of the two middle
//!   values for an even count) and p99 is the nearest rank, ⌈0.99·n⌉-th smallest.

use faultline_proto::{
    spec::Scenario,
    v1::{
        Classification, Experiment, Finding, FindingStatus, HypothesisResult, Outcome, RunStatus,
        ScheduleRun, SignalSummary, Verdict,
    },
};
use serde::Serialize;

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ScenarioRow {
    pub scenario: String,
    pub title: String,
    pub tests: u32,
    pub recoveries: u32,
    pub passed: u32,
    pub success_rate_percent: Option<f64>,
    pub avg_recovery_s: Option<f64>,
    /// Tests whose stated hypothesis (expected_impact) held, was refuted, or could
    /// not be checked; tests that stated none are in none of them.
    pub hypotheses_held: u32,
    pub hypotheses_refuted: u32,
    pub hypotheses_unchecked: u32,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Bucket {
    pub label: &'static str,
    pub from_s: f64,
    pub to_s: Option<f64>,
    pub count: u32,
    pub share_percent: f64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Distribution {
    pub count: u32,
    pub buckets: Vec<Bucket>,
    pub average_s: Option<f64>,
    pub median_s: Option<f64>,
    pub p99_s: Option<f64>,
}

/// One row of "System Behavior During Chaos".
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ImpactRow {
    pub metric: &'static str,
    pub signal: &'static str,
    pub unit: &'static str,
    /// Means over the tests that had the signal.
    pub baseline: Option<f64>,
    pub during: Option<f64>,
    /// The worst change any one test saw while its fault was applied (worst value
    /// minus its own baseline; for throughput relative to the baseline, in %).
    pub max_impact: Option<f64>,
    pub max_impact_unit: &'static str,
    pub experiments: u32,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Mechanism {
    pub mechanism: &'static str,
    pub count: u32,
    pub avg_recovery_s: Option<f64>,
}

/// An experiment that ended early or did not count, or a slot that did not run.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct NotRun {
    pub what: String,
    pub scenario: String,
    pub status: String,
    pub at_ms: i64,
    pub reasons: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct FindingCounts {
    pub total: u32,
    pub open: u32,
    pub mitigated: u32,
    pub resolved: u32,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Category {
    pub scenario: String,
    pub weight: u32,
    pub runs: u32,
    pub score: f64,
}

/// The resilience score (README, "Resilience score"): per scenario the mean of its
/// tests' points — passed 100, aborted by a guard 50, not recovered or an incident 0
/// — with a scenario not run scoring 0 (Gremlin's "not run"), and scenarios with a
/// user-impacting incident weighing 3, the others 1 (Krkn's critical vs warning).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Resilience {
    pub score: f64,
    pub categories: Vec<Category>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Summary {
    pub since_ms: i64,
    pub until_ms: i64,
    pub scenarios: Vec<ScenarioRow>,
    pub total: ScenarioRow,
    pub distribution: Distribution,
    pub impact: Vec<ImpactRow>,
    pub mechanisms: Vec<Mechanism>,
    pub aborted: Vec<NotRun>,
    pub skipped: Vec<NotRun>,
    pub chaos_duration_s: f64,
    pub user_impacting_incidents: u32,
    pub findings: FindingCounts,
    pub resilience: Resilience,
}

pub(crate) use faultline_proto::v1::{duration_secs as secs, timestamp_ms as ms};

pub fn verdict(o: Option<&Outcome>) -> Verdict {
    o.and_then(|o| Verdict::try_from(o.verdict).ok())
        .unwrap_or(Verdict::Unspecified)
}

pub fn classification(o: Option<&Outcome>) -> Classification {
    o.and_then(|o| Classification::try_from(o.classification).ok())
        .unwrap_or(Classification::Unspecified)
}

/// Whether an experiment counts as a test of the service.
pub fn is_test(e: &Experiment) -> bool {
    matches!(
        verdict(e.outcome.as_ref()),
        Verdict::Passed | Verdict::Aborted | Verdict::NotRecovered
    )
}

pub fn recovery_s(e: &Experiment) -> Option<f64> {
    e.outcome
        .as_ref()
        .and_then(|o| secs(o.recovery_time.as_ref()))
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

pub fn median(sorted: &[f64]) -> Option<f64> {
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

/// Nearest rank: the ⌈p/100·n⌉-th smallest value.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

const BUCKETS: [(&str, f64, Option<f64>); 5] = [
    ("0-10s", 0.0, Some(10.0)),
    ("10-30s", 10.0, Some(30.0)),
    ("30-60s", 30.0, Some(60.0)),
    ("60-120s", 60.0, Some(120.0)),
    (">120s", 120.0, None),
];

pub fn distribution(times: &[f64]) -> Distribution {
    let mut sorted = times.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len() as u32;
    let buckets = BUCKETS
        .iter()
        .map(|&(label, from, to)| {
            let count = sorted
                .iter()
                .filter(|&&t| t >= from && to.is_none_or(|to| t < to))
                .count() as u32;
            Bucket {
                label,
                from_s: from,
                to_s: to,
                count,
                share_percent: if n == 0 {
                    0.0
                } else {
                    100.0 * f64::from(count) / f64::from(n)
                },
            }
        })
        .collect();
    Distribution {
        count: n,
        buckets,
        average_s: mean(&sorted),
        median_s: median(&sorted),
        p99_s: percentile(&sorted, 99.0),
    }
}

fn row(scenario: &str, title: &str, tests: &[&Experiment]) -> ScenarioRow {
    let times: Vec<f64> = tests.iter().filter_map(|e| recovery_s(e)).collect();
    let passed = tests
        .iter()
        .filter(|e| verdict(e.outcome.as_ref()) == Verdict::Passed)
        .count() as u32;
    let judged = |r: HypothesisResult| {
        tests
            .iter()
            .filter(|e| {
                e.outcome
                    .as_ref()
                    .and_then(|o| o.hypothesis.as_ref())
                    .is_some_and(|h| h.result == r as i32)
            })
            .count() as u32
    };
    ScenarioRow {
        scenario: scenario.to_owned(),
        title: title.to_owned(),
        tests: tests.len() as u32,
        recoveries: times.len() as u32,
        passed,
        success_rate_percent: (!tests.is_empty())
            .then(|| 100.0 * f64::from(passed) / tests.len() as f64),
        avg_recovery_s: mean(&times),
        hypotheses_held: judged(HypothesisResult::Held),
        hypotheses_refuted: judged(HypothesisResult::Refuted),
        hypotheses_unchecked: judged(HypothesisResult::Unchecked),
    }
}

/// (report label, signal name, unit, impact unit, relative?)
const IMPACT: [(&str, &str, &str, &str, bool); 5] = [
    ("Error Rate", "error_rate", "%", "pp", false),
    ("Latency P99", "latency_p99", "ms", "ms", false),
    ("Throughput", "throughput", "req/s", "%", true),
    ("Health Score", "health_score", "points", "points", false),
    ("Availability", "availability", "%", "pp", false),
];

fn signal<'a>(e: &'a Experiment, name: &str) -> Option<&'a SignalSummary> {
    e.outcome.as_ref()?.signals.iter().find(|s| s.name == name)
}

fn impact(tests: &[&Experiment]) -> Vec<ImpactRow> {
    IMPACT
        .iter()
        .map(|&(metric, name, unit, impact_unit, relative)| {
            let sigs: Vec<&SignalSummary> = tests.iter().filter_map(|e| signal(e, name)).collect();
            let baseline: Vec<f64> = sigs.iter().filter_map(|s| s.baseline).collect();
            let during: Vec<f64> = sigs.iter().filter_map(|s| s.during).collect();
            let deltas: Vec<f64> = sigs
                .iter()
                .filter_map(|s| {
                    let (b, m) = (s.baseline?, s.max_impact?);
                    if relative {
                        (b > 0.0).then(|| 100.0 * (m - b) / b)
                    } else {
                        Some(m - b)
                    }
                })
                .collect();
            ImpactRow {
                metric,
                signal: name,
                unit,
                baseline: mean(&baseline),
                during: mean(&during),
                max_impact: deltas
                    .into_iter()
                    .max_by(|a, b| a.abs().total_cmp(&b.abs())),
                max_impact_unit: impact_unit,
                experiments: sigs.len() as u32,
            }
        })
        .collect()
}

fn mechanisms(tests: &[&Experiment]) -> Vec<Mechanism> {
    [
        ("absorbed", Classification::Absorbed),
        ("self_healed", Classification::SelfHealed),
        ("incident", Classification::Incident),
        ("not_recovered", Classification::NotRecovered),
    ]
    .into_iter()
    .map(|(mechanism, class)| {
        let of: Vec<&&Experiment> = tests
            .iter()
            .filter(|e| classification(e.outcome.as_ref()) == class)
            .collect();
        let times: Vec<f64> = of.iter().filter_map(|e| recovery_s(e)).collect();
        Mechanism {
            mechanism,
            count: of.len() as u32,
            avg_recovery_s: mean(&times),
        }
    })
    .collect()
}

fn points(e: &Experiment) -> f64 {
    match (
        verdict(e.outcome.as_ref()),
        classification(e.outcome.as_ref()),
    ) {
        (_, Classification::Incident) => 0.0,
        (Verdict::Passed, _) => 100.0,
        (Verdict::Aborted, _) => 50.0,
        _ => 0.0,
    }
}

/// Whether an experiment (or run, or finding) of the stored scenario `name` is one of
/// `scenario`.
fn of(name: &str, scenario: Scenario) -> bool {
    Scenario::from_name(name) == Some(scenario)
}

fn resilience(scenarios: &[Scenario], tests: &[&Experiment]) -> Resilience {
    let categories: Vec<Category> = scenarios
        .iter()
        .map(|s| {
            let tested: Vec<&&Experiment> = tests.iter().filter(|e| of(&e.scenario, *s)).collect();
            let incident = tested
                .iter()
                .any(|e| classification(e.outcome.as_ref()) == Classification::Incident);
            let pts: Vec<f64> = tested.iter().map(|e| points(e)).collect();
            Category {
                scenario: s.as_str().to_owned(),
                weight: if incident { 3 } else { 1 },
                runs: tested.len() as u32,
                score: mean(&pts).unwrap_or(0.0),
            }
        })
        .collect();
    let weight: u32 = categories.iter().map(|c| c.weight).sum();
    let score = if weight == 0 {
        0.0
    } else {
        categories
            .iter()
            .map(|c| f64::from(c.weight) * c.score)
            .sum::<f64>()
            / f64::from(weight)
    };
    Resilience { score, categories }
}

/// Why an experiment ended early or did not run: the breach, else the failed
/// preflight checks, else its message.
fn reason(e: &Experiment) -> Vec<String> {
    let Some(o) = e.outcome.as_ref() else {
        return vec![e.result.clone()];
    };
    if let Some(b) = &o.breach {
        return vec![b.describe()];
    }
    let failed: Vec<String> = o
        .preflight
        .iter()
        .filter(|c| c.status == faultline_proto::v1::CheckStatus::Fail as i32)
        .map(|c| format!("{}: {} (needs {})", c.name, c.value, c.threshold))
        .collect();
    if failed.is_empty() {
        vec![o.message.clone()]
    } else {
        failed
    }
}

/// The records a summary is computed from.
pub struct Records<'a> {
    pub since_ms: i64,
    pub until_ms: i64,
    /// Only this scenario (the fleet summary's `--scenario`), or every one.
    pub scenario: Option<Scenario>,
    pub experiments: &'a [Experiment],
    pub runs: &'a [ScheduleRun],
    pub findings: &'a [Finding],
}

pub fn summarize(r: &Records<'_>) -> Summary {
    let in_scope = |name: &str| r.scenario.is_none_or(|s| of(name, s));
    let exps: Vec<&Experiment> = r
        .experiments
        .iter()
        .filter(|e| in_scope(&e.scenario))
        .filter(|e| ms(e.started.as_ref()).is_some_and(|t| t >= r.since_ms && t < r.until_ms))
        .collect();
    let tests: Vec<&Experiment> = exps.iter().copied().filter(|e| is_test(e)).collect();
    let scenarios: Vec<Scenario> = Scenario::ALL
        .into_iter()
        .filter(|s| r.scenario.is_none_or(|only| only == *s))
        .collect();
    let rows: Vec<ScenarioRow> = scenarios
        .iter()
        .map(|s| {
            let of: Vec<&Experiment> = tests
                .iter()
                .copied()
                .filter(|e| of(&e.scenario, *s))
                .collect();
            row(s.as_str(), s.title(), &of)
        })
        .collect();
    let times: Vec<f64> = tests.iter().filter_map(|e| recovery_s(e)).collect();
    let mut aborted: Vec<NotRun> = Vec::new();
    let mut skipped: Vec<NotRun> = Vec::new();
    for e in &exps {
        let v = verdict(e.outcome.as_ref());
        let entry = || NotRun {
            what: e.id.clone(),
            scenario: e.scenario.clone(),
            status: format!("{v:?}").to_lowercase(),
            at_ms: ms(e.started.as_ref()).unwrap_or(0),
            reasons: reason(e),
        };
        match v {
            Verdict::Aborted | Verdict::Failed | Verdict::Interrupted => aborted.push(entry()),
            Verdict::Rejected => skipped.push(entry()),
            Verdict::Passed | Verdict::NotRecovered | Verdict::Unspecified => {}
        }
    }
    for run in r.runs.iter().filter(|x| in_scope(&x.scenario)) {
        let status = RunStatus::try_from(run.status).unwrap_or(RunStatus::Unspecified);
        let slot = ms(run.slot.as_ref()).unwrap_or(0);
        if !(r.since_ms..r.until_ms).contains(&slot) {
            continue;
        }
        // A started slot whose experiment was refused is listed once, as the slot.
        if matches!(status, RunStatus::Skipped | RunStatus::Missed) {
            skipped.retain(|s| s.what != run.experiment_id || run.experiment_id.is_empty());
            skipped.push(NotRun {
                what: format!("schedule {}", run.schedule),
                scenario: run.scenario.clone(),
                status: if status == RunStatus::Missed {
                    "missed"
                } else {
                    "skipped"
                }
                .to_owned(),
                at_ms: slot,
                reasons: run.reasons.clone(),
            });
        }
    }
    skipped.sort_by_key(|s| s.at_ms);
    let chaos_duration_s = tests
        .iter()
        .filter_map(|e| {
            let o = e.outcome.as_ref()?;
            let (a, b) = (
                ms(o.fault_applied_at.as_ref())?,
                ms(o.fault_removed_at.as_ref())?,
            );
            Some((b - a).max(0) as f64 / 1000.0)
        })
        .sum();
    let mut findings = FindingCounts::default();
    for f in r.findings.iter().filter(|f| in_scope(&f.scenario)) {
        findings.total += 1;
        match FindingStatus::try_from(f.status).unwrap_or(FindingStatus::Open) {
            FindingStatus::Resolved => findings.resolved += 1,
            FindingStatus::Mitigated => findings.mitigated += 1,
            FindingStatus::Open | FindingStatus::Unspecified => findings.open += 1,
        }
    }
    Summary {
        since_ms: r.since_ms,
        until_ms: r.until_ms,
        total: row("total", "Total", &tests),
        scenarios: rows,
        distribution: distribution(&times),
        impact: impact(&tests),
        mechanisms: mechanisms(&tests),
        aborted,
        skipped,
        chaos_duration_s,
        user_impacting_incidents: tests
            .iter()
            .filter(|e| classification(e.outcome.as_ref()) == Classification::Incident)
            .count() as u32,
        findings,
        resilience: resilience(&scenarios, &tests),
    }
}
