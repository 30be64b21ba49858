//! The hypothesis judged: each bound of the experiment's `expected_impact` against
//! what its outcome measured. A refuted hypothesis does not change the verdict (the
//! service recovered; the impact was only larger than expected): it is reported,
//! counted, and proposed as a finding.
//!
//! Rules: a bound is measured from the outcome's signal table (fault-window mean
//! against baseline mean, per source; the worst source counts), its recovery time
//! and its incidents. A bound with nothing to measure is `unchecked`, never held. A
//! guard that stopped the fault refutes the hypothesis by its breach. An
//! experiment whose fault never ran to its end for another reason (rejected,
//! failed, interrupted) is not judged.
use faultline_proto::{
    spec::ImpactBounds,
    v1::{Hypothesis, HypothesisCheck, HypothesisResult, Outcome, SignalSummary, Verdict},
};

/// What the judgement needs besides the outcome: whether incidents had a source.
pub struct Sources {
    pub incidents: bool,
}

pub fn judge(name: &str, bounds: &ImpactBounds, o: &Outcome, sources: &Sources) -> Hypothesis {
    let verdict = Verdict::try_from(o.verdict).unwrap_or(Verdict::Unspecified);
    let mut checks = Vec::new();
    match verdict {
        Verdict::Passed | Verdict::NotRecovered | Verdict::Aborted => {}
        Verdict::Rejected | Verdict::Failed | Verdict::Interrupted | Verdict::Unspecified => {
            return Hypothesis {
                name: name.to_owned(),
                result: HypothesisResult::Unchecked as i32,
                checks,
                summary: "not judged: the fault did not run its course".into(),
            };
        }
    }
    if let Some(b) = &o.breach {
        checks.push(HypothesisCheck {
            bound: format!("guard {}", b.guard),
            unit: b.unit.clone(),
            limit: b.threshold,
            measured: Some(b.observed),
            result: HypothesisResult::Refuted as i32,
            detail: format!("the guard stopped the fault ({})", b.source),
        });
    }
    if let Some(p) = bounds.error_rate_rise_below {
        checks.push(rise(
            o,
            "error_rate",
            "error_rate_rise_below",
            "pp",
            p.value(),
        ));
    }
    if let Some(d) = bounds.latency_p99_rise_below {
        let ms = d.0.as_secs_f64() * 1e3;
        checks.push(rise(o, "latency_p99", "latency_p99_rise_below", "ms", ms));
    }
    if let Some(p) = bounds.throughput_drop_below {
        checks.push(drop(o, p.value()));
    }
    if let Some(d) = bounds.recovered_within {
        checks.push(recovered(o, d.0.as_secs_f64()));
    }
    if bounds.no_incident == Some(true) {
        checks.push(incidents(o, sources.incidents));
    }
    let result = overall(&checks);
    Hypothesis {
        name: name.to_owned(),
        result: result as i32,
        summary: summary(result, &checks),
        checks,
    }
}

fn overall(checks: &[HypothesisCheck]) -> HypothesisResult {
    let is = |r: HypothesisResult| checks.iter().any(|c| c.result == r as i32);
    if is(HypothesisResult::Refuted) {
        HypothesisResult::Refuted
    } else if is(HypothesisResult::Unchecked) || checks.is_empty() {
        HypothesisResult::Unchecked
    } else {
        HypothesisResult::Held
    }
}

fn result_of(held: bool) -> i32 {
    if held {
        HypothesisResult::Held as i32
    } else {
        HypothesisResult::Refuted as i32
    }
}

fn unchecked(bound: &str, unit: &str, limit: f64, why: &str) -> HypothesisCheck {
    HypothesisCheck {
        bound: bound.into(),
        unit: unit.into(),
        limit,
        measured: None,
        result: HypothesisResult::Unchecked as i32,
        detail: why.into(),
    }
}

/// The signal's rows that have both means, one per source.
fn measured<'a>(
    o: &'a Outcome,
    signal: &'a str,
) -> impl Iterator<Item = (&'a SignalSummary, f64, f64)> {
    o.signals
        .iter()
        .filter(move |s| s.name == signal)
        .filter_map(|s| Some((s, s.baseline?, s.during?)))
}

/// During mean minus baseline mean, the largest over the sources, below `limit`.
fn rise(o: &Outcome, signal: &str, bound: &str, unit: &str, limit: f64) -> HypothesisCheck {
    let worst = measured(o, signal)
        .map(|(s, base, during)| (s, base, during, during - base))
        .max_by(|a, b| a.3.total_cmp(&b.3));
    let Some((s, base, during, rise)) = worst else {
        return unchecked(bound, unit, limit, &format!("no source measured {signal}"));
    };
    HypothesisCheck {
        bound: bound.into(),
        unit: unit.into(),
        limit,
        measured: Some(rise),
        result: result_of(rise < limit),
        detail: format!(
            "{}: baseline {base:.3} {}, during {during:.3} {}",
            s.source, s.unit, s.unit
        ),
    }
}

/// How far throughput's mean fell below the baseline's, as a share of it.
fn drop(o: &Outcome, limit: f64) -> HypothesisCheck {
    let bound = "throughput_drop_below";
    let worst = measured(o, "throughput")
        .filter(|(_, base, _)| *base > 0.0)
        .map(|(s, base, during)| (s, base, during, (base - during) / base * 100.0))
        .max_by(|a, b| a.3.total_cmp(&b.3));
    let Some((s, base, during, drop)) = worst else {
        return unchecked(bound, "%", limit, "no source measured throughput");
    };
    HypothesisCheck {
        bound: bound.into(),
        unit: "%".into(),
        limit,
        measured: Some(drop),
        result: result_of(drop < limit),
        detail: format!(
            "{}: baseline {base:.2} req/s, during {during:.2} req/s",
            s.source
        ),
    }
}

fn recovered(o: &Outcome, limit: f64) -> HypothesisCheck {
    let bound = "recovered_within";
    match o
        .recovery_time
        .and_then(|d| std::time::Duration::try_from(d).ok())
    {
        Some(t) => HypothesisCheck {
            bound: bound.into(),
            unit: "s".into(),
            limit,
            measured: Some(t.as_secs_f64()),
            result: result_of(t.as_secs_f64() <= limit),
            detail: "removal to the held return of the steady state".into(),
        },
        None => HypothesisCheck {
            bound: bound.into(),
            unit: "s".into(),
            limit,
            measured: None,
            result: HypothesisResult::Refuted as i32,
            detail: "the steady state did not come back within the recovery timeout".into(),
        },
    }
}

fn incidents(o: &Outcome, source: bool) -> HypothesisCheck {
    let bound = "no_incident";
    if !source {
        return unchecked(
            bound,
            "incidents",
            0.0,
            "no alert source (health.alertmanager)",
        );
    }
    let n = o.incidents.len();
    HypothesisCheck {
        bound: bound.into(),
        unit: "incidents".into(),
        limit: 0.0,
        measured: Some(n as f64),
        result: result_of(n == 0),
        detail: o
            .incidents
            .iter()
            .map(|i| format!("{} ({})", i.alert, i.severity))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// One check in a few words: "error_rate_rise_below 0.29 pp (limit 0.05 pp)".
pub fn describe(c: &HypothesisCheck) -> String {
    match c.measured {
        Some(m) => format!(
            "{} {m:.2} {} (limit {} {})",
            c.bound, c.unit, c.limit, c.unit
        ),
        None => format!("{}: {} (limit {} {})", c.bound, c.detail, c.limit, c.unit),
    }
}

fn summary(result: HypothesisResult, checks: &[HypothesisCheck]) -> String {
    let of = |r: HypothesisResult| -> Vec<String> {
        checks
            .iter()
            .filter(|c| c.result == r as i32)
            .map(describe)
            .collect()
    };
    match result {
        HypothesisResult::Refuted => format!("refuted: {}", of(result).join("; ")),
        HypothesisResult::Held => format!("held: {}", of(result).join("; ")),
        HypothesisResult::Unchecked if checks.is_empty() => "unchecked: no bound".into(),
        HypothesisResult::Unchecked | HypothesisResult::Unspecified => {
            format!("unchecked: {}", of(HypothesisResult::Unchecked).join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use faultline_proto::{
        limits::Percent,
        spec::Dur,
        v1::{GuardBreach, Incident},
    };

    use super::*;

    fn signal(name: &str, unit: &str, base: f64, during: f64) -> SignalSummary {
        SignalSummary {
            name: name.into(),
            unit: unit.into(),
            source: "prometheus".into(),
            baseline: Some(base),
            during: Some(during),
            ..Default::default()
        }
    }

    fn passed(signals: Vec<SignalSummary>, recovery_s: Option<u64>) -> Outcome {
        Outcome {
            verdict: Verdict::Passed as i32,
            signals,
            recovery_time: recovery_s.map(|s| prost_types::Duration {
                seconds: s as i64,
                nanos: 0,
            }),
            ..Default::default()
        }
    }

    fn minimal() -> ImpactBounds {
        ImpactBounds {
            error_rate_rise_below: Some(Percent::new(0.05).unwrap()),
            throughput_drop_below: Some(Percent::new(5.0).unwrap()),
            no_incident: Some(true),
            ..Default::default()
        }
    }

    const ALERTS: Sources = Sources { incidents: true };

    #[test]
    fn within_every_bound_it_holds_and_names_each_value() {
        let o = passed(
            vec![
                signal("error_rate", "%", 0.02, 0.05),
                signal("throughput", "req/s", 20.0, 19.5),
            ],
            Some(3),
        );
        let h = judge("minimal", &minimal(), &o, &ALERTS);
        assert_eq!(h.result, HypothesisResult::Held as i32, "{h:?}");
        assert!(
            h.summary.starts_with("held: error_rate_rise_below 0.03 pp"),
            "{}",
            h.summary
        );
        assert!(
            h.summary
                .contains("throughput_drop_below 2.50 % (limit 5 %)"),
            "{}",
            h.summary
        );
    }

    #[test]
    fn one_bound_crossed_refutes_with_its_measured_value_and_the_worst_source_counts() {
        let mut http = signal("error_rate", "%", 0.0, 0.01);
        http.source = "http".into();
        let o = passed(
            vec![
                http,
                signal("error_rate", "%", 0.02, 0.31),
                signal("throughput", "req/s", 20.0, 20.0),
            ],
            Some(3),
        );
        let h = judge("minimal", &minimal(), &o, &ALERTS);
        assert_eq!(h.result, HypothesisResult::Refuted as i32);
        assert_eq!(
            h.checks[0].measured.map(|m| (m * 100.0).round()),
            Some(29.0)
        );
        assert!(
            h.summary
                .starts_with("refuted: error_rate_rise_below 0.29 pp (limit 0.05 pp)"),
            "{}",
            h.summary
        );
    }

    #[test]
    fn a_bound_without_a_measurement_is_unchecked_never_held() {
        let o = passed(vec![signal("throughput", "req/s", 20.0, 20.0)], Some(1));
        let h = judge("minimal", &minimal(), &o, &Sources { incidents: false });
        assert_eq!(h.result, HypothesisResult::Unchecked as i32, "{h:?}");
        assert!(
            h.summary.contains("no source measured error_rate"),
            "{}",
            h.summary
        );
        assert!(h.summary.contains("no alert source"), "{}", h.summary);
    }

    #[test]
    fn recovery_incidents_and_a_guard_breach_each_refute() {
        let slow = ImpactBounds {
            recovered_within: Some(Dur(std::time::Duration::from_secs(10))),
            ..Default::default()
        };
        let h = judge("brief", &slow, &passed(vec![], Some(12)), &ALERTS);
        assert_eq!(h.result, HypothesisResult::Refuted as i32);
        let h = judge("brief", &slow, &passed(vec![], Some(10)), &ALERTS);
        assert_eq!(h.result, HypothesisResult::Held as i32);
        let mut not_back = passed(vec![], None);
        not_back.verdict = Verdict::NotRecovered as i32;
        let h = judge("brief", &slow, &not_back, &ALERTS);
        assert_eq!(h.result, HypothesisResult::Refuted as i32);

        let mut paged = passed(
            vec![
                signal("error_rate", "%", 0.0, 0.0),
                signal("throughput", "req/s", 1.0, 1.0),
            ],
            Some(1),
        );
        paged.incidents.push(Incident {
            alert: "HighErrorRate".into(),
            severity: "P2".into(),
            ..Default::default()
        });
        let h = judge("minimal", &minimal(), &paged, &ALERTS);
        assert_eq!(h.result, HypothesisResult::Refuted as i32);
        assert!(
            h.summary.contains("no_incident 1.00 incidents"),
            "{}",
            h.summary
        );

        let aborted = Outcome {
            verdict: Verdict::Aborted as i32,
            breach: Some(GuardBreach {
                guard: "latency_p99_above".into(),
                observed: 212.0,
                threshold: 150.0,
                unit: "ms".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let h = judge("minimal", &minimal(), &aborted, &ALERTS);
        assert_eq!(h.result, HypothesisResult::Refuted as i32);
        assert!(
            h.summary.contains("guard latency_p99_above 212.00 ms"),
            "{}",
            h.summary
        );
    }

    #[test]
    fn a_fault_that_did_not_run_its_course_is_not_judged() {
        for v in [Verdict::Rejected, Verdict::Failed, Verdict::Interrupted] {
            let o = Outcome {
                verdict: v as i32,
                ..Default::default()
            };
            let h = judge("minimal", &minimal(), &o, &ALERTS);
            assert_eq!(h.result, HypothesisResult::Unchecked as i32, "{v:?}");
            assert!(h.checks.is_empty());
        }
    }
}
