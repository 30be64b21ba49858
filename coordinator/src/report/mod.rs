//! Reports from the store, never typed by a person: one experiment's report (the
//! reference report's scenario block: configuration, test execution, results,
//! classification, guard events, kernel summary), the fleet summary (`stats`), their
//! Markdown (`markdown`) and a JUnit document for CI (`junit`). Everything here is a
//! pure function of recorded experiments, events, schedule runs and findings.
pub mod junit;
pub mod markdown;
pub mod stats;

use faultline_proto::{
    spec::Scenario,
    v1::{CheckStatus, Experiment, ExperimentEvent, Finding, FindingStatus, Phase},
};
use serde::Serialize;

use stats::{classification, ms, secs, verdict};

pub fn enum_name(debug: String) -> String {
    // `NotRecovered` -> `not_recovered`
    let mut out = String::new();
    for (i, ch) in debug.chars().enumerate() {
        if ch.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(ch.to_ascii_lowercase());
    }
    out
}

#[derive(Clone, Debug, Serialize)]
pub struct Value {
    pub signal: String,
    pub value: f64,
    pub unit: String,
}

/// One step of "Test Execution", with the values measured in it.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    pub step: &'static str,
    pub started_ms: Option<i64>,
    pub ended_ms: Option<i64>,
    pub values: Vec<Value>,
    pub notes: Vec<String>,
}

/// A signal's change under the fault (the report's "Error rate impact: +0.03%").
#[derive(Clone, Debug, Serialize)]
pub struct Impact {
    pub signal: String,
    pub unit: String,
    pub source: String,
    pub baseline: Option<f64>,
    pub during: Option<f64>,
    pub worst: Option<f64>,
    pub after: Option<f64>,
    pub change: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Preflight {
    pub check: String,
    pub status: String,
    pub value: String,
    pub threshold: String,
    pub detail: String,
}

/// The stated hypothesis and the judgement on it; a refuted one comes with the
/// finding it proposes, as the CLI command that records it.
#[derive(Clone, Debug, Serialize)]
pub struct HypothesisReport {
    pub name: String,
    /// held, refuted, unchecked.
    pub result: String,
    pub summary: String,
    /// Each bound with what was measured against it.
    pub checks: Vec<String>,
    pub proposed_finding: Option<String>,
}

fn hypothesis(e: &Experiment, h: &faultline_proto::v1::Hypothesis) -> HypothesisReport {
    use crate::view::hypothesis_result;
    let refuted = h.result == faultline_proto::v1::HypothesisResult::Refuted as i32;
    HypothesisReport {
        name: h.name.clone(),
        result: hypothesis_result(h.result),
        summary: h.summary.clone(),
        checks: h
            .checks
            .iter()
            .map(|c| {
                format!(
                    "{}: {}",
                    hypothesis_result(c.result),
                    crate::engine::experiment::hypothesis::describe(c)
                )
            })
            .collect(),
        // Single quotes: the summary is a value the shell must not expand.
        proposed_finding: refuted.then(|| {
            format!(
                "faultline finding add --experiment {} --title '{} impact expected, {}' --detail '{}'",
                e.id,
                h.name,
                h.summary.replace('\'', ""),
                h.checks
                    .iter()
                    .map(|c| c.detail.replace('\'', ""))
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        }),
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ExperimentReport {
    pub id: String,
    pub name: String,
    pub scenario: String,
    pub title: String,
    pub nodes: Vec<String>,
    pub started_ms: Option<i64>,
    pub ended_ms: Option<i64>,
    pub schedule: String,
    pub gameday_id: String,
    pub expected_impact: String,
    pub hypothesis: Option<HypothesisReport>,
    /// The resolved spec it ran with.
    pub configuration: String,
    pub preflight: Vec<Preflight>,
    pub waivers: Vec<String>,
    pub node_signals_only: bool,
    pub steps: Vec<Step>,
    pub verdict: String,
    pub classification: String,
    pub recovery_time_s: Option<f64>,
    pub health_recovered: bool,
    pub impacts: Vec<Impact>,
    pub guard_events: Vec<String>,
    pub incidents: Vec<String>,
    pub kernel_summary: String,
    pub message: String,
    pub findings: Vec<String>,
    /// The scenario's row of the fleet summary over the report's window, if asked.
    pub scenario_stats: Option<stats::ScenarioRow>,
}

fn first_event(events: &[ExperimentEvent], phase: Phase) -> Option<i64> {
    events
        .iter()
        .find(|e| e.phase == phase as i32)
        .and_then(|e| ms(e.at.as_ref()))
}

pub fn experiment(
    e: &Experiment,
    events: &[ExperimentEvent],
    findings: &[Finding],
    scenario_stats: Option<stats::ScenarioRow>,
) -> ExperimentReport {
    let o = e.outcome.clone().unwrap_or_default();
    let title =
        Scenario::from_name(&e.scenario).map_or(e.scenario.clone(), |s| s.title().to_owned());
    let values = |pick: fn(&faultline_proto::v1::SignalSummary) -> Option<f64>| -> Vec<Value> {
        o.signals
            .iter()
            .filter_map(|s| {
                pick(s).map(|v| Value {
                    signal: s.name.clone(),
                    value: v,
                    unit: s.unit.clone(),
                })
            })
            .collect()
    };
    let applied = ms(o.fault_applied_at.as_ref());
    let removed = ms(o.fault_removed_at.as_ref());
    let baseline_at = first_event(events, Phase::Baseline);
    let recovered = ms(o.recovered_at.as_ref());
    let mut steps = vec![
        Step {
            step: "baseline",
            started_ms: baseline_at,
            ended_ms: applied.or(first_event(events, Phase::Fault)),
            values: values(|s| s.baseline),
            notes: vec![],
        },
        Step {
            step: "chaos_injection",
            started_ms: applied,
            ended_ms: applied,
            values: vec![],
            notes: vec![format!("{} on {}", title, e.nodes.join(", "))],
        },
        Step {
            step: "monitoring",
            started_ms: applied,
            ended_ms: removed,
            values: values(|s| s.max_impact),
            notes: vec!["worst value while the fault was applied".into()],
        },
        Step {
            step: "recovery",
            started_ms: removed,
            ended_ms: recovered.or(ms(e.ended.as_ref())),
            values: values(|s| s.after),
            notes: secs(o.recovery_time.as_ref())
                .map(|r| vec![format!("steady state back {r:.2} s after removal")])
                .unwrap_or_default(),
        },
    ];
    if applied.is_none() {
        // Nothing was applied: the steps after the baseline did not happen.
        steps.truncate(1);
    }
    let impacts = o
        .signals
        .iter()
        .map(|s| Impact {
            signal: s.name.clone(),
            unit: s.unit.clone(),
            source: s.source.clone(),
            baseline: s.baseline,
            during: s.during,
            worst: s.max_impact,
            after: s.after,
            change: s.baseline.zip(s.max_impact).map(|(b, m)| m - b),
        })
        .collect();
    let mut guard_events = Vec::new();
    if let Some(b) = &o.breach {
        guard_events.push(b.describe());
    }
    for ev in events {
        if ev.message.contains("guard") && !guard_events.contains(&ev.message) {
            guard_events.push(ev.message.clone());
        }
    }
    ExperimentReport {
        id: e.id.clone(),
        name: e.name.clone(),
        scenario: e.scenario.clone(),
        title,
        nodes: e.nodes.clone(),
        started_ms: ms(e.started.as_ref()),
        ended_ms: ms(e.ended.as_ref()),
        schedule: e.schedule.clone(),
        gameday_id: e.gameday_id.clone(),
        expected_impact: o.expected_impact.clone(),
        hypothesis: o.hypothesis.as_ref().map(|h| hypothesis(e, h)),
        configuration: e.spec_yaml.clone(),
        preflight: o
            .preflight
            .iter()
            .map(|c| Preflight {
                check: c.name.clone(),
                status: enum_name(format!(
                    "{:?}",
                    CheckStatus::try_from(c.status).unwrap_or(CheckStatus::Unspecified)
                )),
                value: c.value.clone(),
                threshold: c.threshold.clone(),
                detail: c.detail.clone(),
            })
            .collect(),
        waivers: o.waivers.clone(),
        node_signals_only: o.node_signals_only,
        steps,
        verdict: enum_name(format!("{:?}", verdict(Some(&o)))),
        classification: enum_name(format!("{:?}", classification(Some(&o)))),
        recovery_time_s: secs(o.recovery_time.as_ref()),
        health_recovered: o.recovered_at.is_some(),
        impacts,
        guard_events,
        incidents: o
            .incidents
            .iter()
            .map(|i| {
                format!(
                    "{} ({}){}",
                    i.alert,
                    i.severity,
                    secs(i.time_to_resolve.as_ref())
                        .map_or(", unresolved at the end".into(), |s| format!(
                            ", resolved after {s:.1} s"
                        ))
                )
            })
            .collect(),
        kernel_summary: o.kernel_summary.clone(),
        message: if o.message.is_empty() {
            e.result.clone()
        } else {
            o.message.clone()
        },
        findings: findings
            .iter()
            .filter(|f| f.experiment_id == e.id)
            .map(|f| {
                format!(
                    "{} {} [{}]",
                    f.id,
                    f.title,
                    enum_name(format!(
                        "{:?}",
                        FindingStatus::try_from(f.status).unwrap_or(FindingStatus::Open)
                    ))
                )
            })
            .collect(),
        scenario_stats,
    }
}

#[cfg(test)]
mod tests;
