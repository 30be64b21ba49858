//! The typed result of an experiment (`v1::Outcome`): its verdict (what the CLI's
//! exit code comes from), the classification, the recovery time, the guard breach,
//! the preflight list and the signal table, and the one-line message derived from
//! them for people.
use std::time::{Duration, SystemTime};

use faultline_proto::{
    spec::Scenario,
    v1::{Check, CheckStatus, Classification, Outcome, Phase, SignalSummary, Verdict},
};

/// The terminal phase a verdict ends in.
pub fn phase(v: Verdict) -> Phase {
    match v {
        Verdict::Passed => Phase::Completed,
        Verdict::Aborted => Phase::Aborted,
        Verdict::Interrupted => Phase::Interrupted,
        Verdict::Rejected | Verdict::NotRecovered | Verdict::Failed | Verdict::Unspecified => {
            Phase::Failed
        }
    }
}

pub fn ts(t: SystemTime) -> Option<prost_types::Timestamp> {
    Some(t.into())
}

pub fn classification_name(c: Classification) -> &'static str {
    match c {
        Classification::Absorbed => "absorbed",
        Classification::SelfHealed => "self_healed",
        Classification::Incident => "incident",
        Classification::NotRecovered => "not_recovered",
        Classification::Unspecified => "-",
    }
}

/// The failing checks, one line.
pub fn failed_checks(checks: &[Check]) -> String {
    checks
        .iter()
        .filter(|c| c.status == CheckStatus::Fail as i32)
        .map(|c| {
            let mut s = format!("{} ({} vs {})", c.name, c.value, c.threshold);
            if !c.detail.is_empty() {
                s.push_str(&format!(": {}", c.detail));
            }
            s
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn figure(s: &SignalSummary) -> Option<String> {
    let f = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2}"));
    (s.baseline.is_some() || s.during.is_some()).then(|| {
        format!(
            "{} {} -> {} (worst {}) -> {} {}",
            s.name,
            f(s.baseline),
            f(s.during),
            f(s.max_impact),
            f(s.after),
            s.unit
        )
    })
}

/// The message of a finished experiment.
pub fn message(o: &Outcome) -> String {
    let verdict = Verdict::try_from(o.verdict).unwrap_or(Verdict::Unspecified);
    let class = Classification::try_from(o.classification).unwrap_or(Classification::Unspecified);
    let table: Vec<String> = o.signals.iter().filter_map(figure).collect();
    let secs = o
        .recovery_time
        .and_then(|d| Duration::try_from(d).ok())
        .map(|d| d.as_secs_f64());
    let head = match verdict {
        Verdict::Passed => format!(
            "completed ({}): recovered {:.2} s after {}",
            classification_name(class),
            secs.unwrap_or(0.0),
            if Scenario::from_name(&o.scenario).is_some_and(Scenario::one_shot) {
                "the eviction"
            } else {
                "removal"
            }
        ),
        Verdict::NotRecovered => {
            "recovery failed: the steady state did not come back in time".into()
        }
        Verdict::Rejected => format!("rejected: {}", o.message),
        Verdict::Aborted => match &o.breach {
            Some(b) => format!("aborted: {}", b.describe()),
            None => format!("aborted: {}", o.message),
        },
        Verdict::Interrupted => format!("interrupted: {}", o.message),
        Verdict::Failed | Verdict::Unspecified => format!("failed: {}", o.message),
    };
    let mut parts = vec![head];
    if matches!(verdict, Verdict::Passed | Verdict::NotRecovered) && !o.message.is_empty() {
        parts.push(o.message.clone());
    }
    if o.node_signals_only
        && matches!(
            verdict,
            Verdict::Passed | Verdict::NotRecovered | Verdict::Aborted
        )
    {
        parts.push("judged by node signals only (no health signal configured)".into());
    }
    if !table.is_empty()
        && matches!(
            verdict,
            Verdict::Passed | Verdict::NotRecovered | Verdict::Aborted
        )
    {
        parts.push(table.join(", "));
    }
    if !o.kernel_summary.is_empty() {
        parts.push(o.kernel_summary.clone());
    }
    if !o.waivers.is_empty() {
        parts.push(format!("waived: {}", o.waivers.join(", ")));
    }
    parts.join("; ")
}
