//! How the CLI shows the contract's messages to people: outcome text and tables. The
//! JSON values and one-line summaries are the library's (`faultline_coordinator::view`),
//! shared with the dashboard.
pub use faultline_coordinator::view::*;
use faultline_proto::v1::{Check, CheckStatus, Outcome};

use crate::args::secs;
use crate::table::Table;

/// An outcome for people: verdict line, breach, preflight failures, signal table.
pub fn outcome_text(o: &Outcome) -> String {
    let mut lines = vec![format!(
        "verdict: {}   classification: {}   recovery: {}",
        verdict(o),
        classification(o),
        secs(o.recovery_time.as_ref()).map_or("-".into(), |s| format!("{s:.2} s"))
    )];
    if let Some(b) = &o.breach {
        lines.push(format!("guard breach: {}", b.describe()));
    }
    if let Some(h) = &o.hypothesis {
        lines.push(format!("hypothesis {}: {}", h.name, h.summary));
    }
    let failed: Vec<&Check> = o
        .preflight
        .iter()
        .filter(|c| c.status == CheckStatus::Fail as i32)
        .collect();
    for c in failed {
        lines.push(format!(
            "preflight FAIL {}: {} (threshold {}) {}",
            c.name, c.value, c.threshold, c.detail
        ));
    }
    if !o.signals.is_empty() {
        let mut t = Table::new([
            "signal",
            "baseline",
            "during",
            "worst",
            "after",
            "unit/source",
        ])
        .right(&[1, 2, 3, 4]);
        let f = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.2}"));
        for s in &o.signals {
            t.row([
                s.name.clone(),
                f(s.baseline),
                f(s.during),
                f(s.max_impact),
                f(s.after),
                format!("{} ({})", s.unit, s.source),
            ]);
        }
        lines.extend(t.lines());
    }
    for i in &o.incidents {
        lines.push(format!(
            "incident: {} ({}) {}",
            i.alert,
            i.severity,
            secs(i.time_to_resolve.as_ref())
                .map_or("unresolved".into(), |s| format!("resolved after {s:.1} s"))
        ));
    }
    lines.join("\n")
}
