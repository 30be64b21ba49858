//! The contract's messages as JSON values and in a few words: one view shared by the
//! CLI's `-o json` and the dashboard's API, so both say the same thing.
use faultline_proto::v1::{
    Check, CheckStatus, Classification, Experiment, FaultCounters, GuardBreach, HealthReading,
    Hypothesis, HypothesisResult, MetricSample, Outcome, Phase, SignalSummary, Verdict,
};
use serde_json::{Value, json};

use faultline_proto::v1::duration_secs as secs;

pub fn phase_name(p: i32) -> String {
    Phase::try_from(p)
        .map(|p| p.as_str_name().trim_start_matches("PHASE_").to_lowercase())
        .unwrap_or_else(|_| p.to_string())
}

fn enum_name(s: &str, prefix: &str) -> String {
    s.trim_start_matches(prefix).to_lowercase()
}

pub fn verdict(o: &Outcome) -> String {
    Verdict::try_from(o.verdict).map_or("-".into(), |v| enum_name(v.as_str_name(), "VERDICT_"))
}

/// A hypothesis's (or one check's) result: held, refuted, unchecked.
pub fn hypothesis_result(r: i32) -> String {
    HypothesisResult::try_from(r).map_or("-".into(), |r| {
        enum_name(r.as_str_name(), "HYPOTHESIS_RESULT_")
    })
}

pub fn hypothesis_json(h: &Hypothesis) -> Value {
    json!({
        "name": h.name, "result": hypothesis_result(h.result), "summary": h.summary,
        "checks": h.checks.iter().map(|c| json!({
            "bound": c.bound, "unit": c.unit, "limit": c.limit, "measured": c.measured,
            "result": hypothesis_result(c.result), "detail": c.detail,
        })).collect::<Vec<_>>(),
    })
}

pub fn classification(o: &Outcome) -> String {
    match Classification::try_from(o.classification) {
        Ok(Classification::Unspecified) | Err(_) => "-".into(),
        Ok(c) => enum_name(c.as_str_name(), "CLASSIFICATION_"),
    }
}

pub use faultline_proto::v1::timestamp_ms as millis;

pub fn sample_json(s: &MetricSample) -> Value {
    let c = |x: Option<FaultCounters>| {
        let x = x.unwrap_or_default();
        json!({"seen": x.seen, "matched": x.matched, "dropped": x.dropped, "delayed": x.delayed})
    };
    json!({
        "at_ms": millis(s.at.as_ref()), "cpu_busy_percent": s.cpu_busy_percent,
        "cpu_busy_tick_percent": s.cpu_busy_tick_percent, "cpu_precise": s.cpu_precise,
        "memory_used_percent": s.memory_used_percent, "psi_cpu_some_avg10": s.psi_cpu_some_avg10,
        "psi_memory_some_avg10": s.psi_memory_some_avg10, "psi_io_some_avg10": s.psi_io_some_avg10,
        "net_rx_packets": s.net_rx_packets, "net_tx_packets": s.net_tx_packets,
        "tcp_retransmits": s.tcp_retransmits, "ingress": c(s.ingress), "egress": c(s.egress),
        "cgroup": s.cgroup,
        "fault": s.fault_readings.as_ref().map_or_else(Default::default, |r| {
            r.named()
                .into_iter()
                .map(|(k, v)| (k, Value::from(v)))
                .collect::<serde_json::Map<String, Value>>()
        }),
    })
}

pub fn reading_json(r: &HealthReading) -> Value {
    json!({
        "at_ms": millis(r.at.as_ref()), "error_rate_percent": r.error_rate_percent,
        "latency_p50_ms": r.latency_p50_ms, "latency_p99_ms": r.latency_p99_ms,
        "throughput_rps": r.throughput_rps, "health_score": r.health_score,
        "traffic_vs_peak_percent": r.traffic_vs_peak_percent,
        "active_incidents": r.active_incidents, "availability_percent": r.availability_percent,
        "source": r.source,
    })
}

fn check_json(c: &Check) -> Value {
    json!({
        "name": c.name,
        "status": CheckStatus::try_from(c.status).map_or("-".into(), |s| enum_name(s.as_str_name(), "CHECK_STATUS_")),
        "value": c.value, "threshold": c.threshold, "detail": c.detail,
    })
}

fn breach_json(b: &GuardBreach) -> Value {
    json!({
        "guard": b.guard, "source": b.source, "observed": b.observed, "threshold": b.threshold,
        "unit": b.unit, "visible_ms": millis(b.visible_at.as_ref()),
        "abort_ordered_ms": millis(b.abort_ordered_at.as_ref()),
        "removal_confirmed_ms": millis(b.removal_confirmed_at.as_ref()),
        "agent_side": b.agent_side, "node": b.node, "phase": phase_name(b.phase), "detail": b.detail,
    })
}

fn signal_json(s: &SignalSummary) -> Value {
    json!({"name": s.name, "unit": s.unit, "source": s.source, "baseline": s.baseline,
           "during": s.during, "max_impact": s.max_impact, "after": s.after})
}

pub fn outcome_json(o: &Outcome) -> Value {
    json!({
        "verdict": verdict(o), "classification": classification(o),
        "recovery_s": secs(o.recovery_time.as_ref()),
        "breach": o.breach.as_ref().map(breach_json),
        "preflight": o.preflight.iter().map(check_json).collect::<Vec<_>>(),
        "signals": o.signals.iter().map(signal_json).collect::<Vec<_>>(),
        "kernel_summary": o.kernel_summary, "waivers": o.waivers,
        "node_signals_only": o.node_signals_only, "message": o.message,
        "fault_applied_ms": millis(o.fault_applied_at.as_ref()),
        "fault_removed_ms": millis(o.fault_removed_at.as_ref()),
        "recovered_ms": millis(o.recovered_at.as_ref()),
        "incidents": o.incidents.iter().map(|i| json!({
            "alert": i.alert, "severity": i.severity, "started_ms": millis(i.started.as_ref()),
            "resolved_ms": millis(i.resolved.as_ref()), "time_to_resolve_s": secs(i.time_to_resolve.as_ref()),
        })).collect::<Vec<_>>(),
        "scenario": o.scenario, "expected_impact": o.expected_impact,
        "hypothesis": o.hypothesis.as_ref().map(hypothesis_json),
    })
}

pub fn experiment_json(e: &Experiment) -> Value {
    json!({
        "id": e.id, "name": e.name, "nodes": e.nodes, "phase": phase_name(e.phase),
        "scenario": e.scenario,
        "fault": e.fault.as_ref().map(|f| format!("{:?}", f.fault)),
        "duration_s": e.fault.as_ref().and_then(|f| secs(f.duration.as_ref())),
        "started_ms": millis(e.started.as_ref()), "ended_ms": millis(e.ended.as_ref()),
        "recovery_s": secs(e.recovery_time.as_ref()), "result": e.result,
        "outcome": e.outcome.as_ref().map(outcome_json),
    })
}

/// The fault in a few words.
pub fn fault_summary(e: &Experiment) -> String {
    e.fault
        .as_ref()
        .and_then(|f| f.fault.as_ref())
        .map_or("-".into(), |f| crate::engine::faults::kind(f).summary())
}

/// Text as a terminal or a log line may show it: control characters (an escape
/// sequence in an abort reason, a carriage return) are written as escapes, not
/// sent to the terminal.
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    if s.chars().any(char::is_control) {
        s.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect::<String>()
            .into()
    } else {
        s.into()
    }
}
