//! JUnit XML for CI: one test suite per scenario, one test case per experiment. A
//! passed experiment succeeds; an aborted or unrecovered one fails with a message
//! naming the guard or the recovery miss; a platform failure or an interruption is
//! an error (the service was not judged); a refused one is skipped with its reasons.
//! The hypothesis and its judgement are properties of the case.
use std::{collections::BTreeMap, time::Duration};

use faultline_proto::v1::{CheckStatus, Experiment, Verdict};
use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};

use super::stats::{ms, secs, verdict};

fn failure_message(e: &Experiment) -> String {
    let Some(o) = e.outcome.as_ref() else {
        return e.result.clone();
    };
    if let Some(b) = &o.breach {
        return format!("guard {}", b.describe());
    }
    if verdict(Some(o)) == Verdict::NotRecovered {
        return format!("recovery missed: {}", o.message);
    }
    let failed: Vec<String> = o
        .preflight
        .iter()
        .filter(|c| c.status == CheckStatus::Fail as i32)
        .map(|c| format!("{}: {} (needs {})", c.name, c.value, c.threshold))
        .collect();
    if failed.is_empty() {
        o.message.clone()
    } else {
        format!("preflight failed: {}", failed.join("; "))
    }
}

pub fn report(experiments: &[Experiment]) -> Result<String, quick_junit::SerializeError> {
    let mut suites: BTreeMap<&str, TestSuite> = BTreeMap::new();
    for e in experiments {
        let v = verdict(e.outcome.as_ref());
        if v == Verdict::Unspecified {
            continue; // still running
        }
        let status = match v {
            Verdict::Passed => TestCaseStatus::success(),
            Verdict::Aborted | Verdict::NotRecovered => {
                let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
                s.set_message(failure_message(e))
                    .set_type(if v == Verdict::Aborted {
                        "aborted"
                    } else {
                        "not_recovered"
                    });
                s
            }
            Verdict::Failed | Verdict::Interrupted => {
                let mut s = TestCaseStatus::non_success(NonSuccessKind::Error);
                s.set_message(failure_message(e)).set_type("platform");
                s
            }
            Verdict::Rejected | Verdict::Unspecified => {
                let mut s = TestCaseStatus::skipped();
                s.set_message(failure_message(e));
                s
            }
        };
        let mut case = TestCase::new(
            format!("{} {} on {}", e.id, e.scenario, e.nodes.join(",")),
            status,
        );
        case.set_classname(format!("faultline.{}", e.scenario));
        if let (Some(a), Some(b)) = (ms(e.started.as_ref()), ms(e.ended.as_ref())) {
            case.set_time(Duration::from_millis((b - a).max(0) as u64));
        }
        if let Some(r) = e
            .outcome
            .as_ref()
            .and_then(|o| secs(o.recovery_time.as_ref()))
        {
            case.add_property(("recovery_time_s", format!("{r:.3}").as_str()));
        }
        // A refuted hypothesis is not a failure (the service recovered), so it is a
        // property a CI dashboard can show, with the value that refuted it.
        if let Some(h) = e.outcome.as_ref().and_then(|o| o.hypothesis.as_ref()) {
            case.add_property(("hypothesis", h.name.as_str()));
            case.add_property(("hypothesis_result", h.summary.as_str()));
        }
        suites
            .entry(e.scenario.as_str())
            .or_insert_with(|| TestSuite::new(format!("faultline.{}", e.scenario)))
            .add_test_case(case);
    }
    let mut report = Report::new("faultline");
    report.add_test_suites(suites.into_values());
    report.to_string()
}
