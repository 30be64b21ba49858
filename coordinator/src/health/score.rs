//! The health score, 0-100. A team's own `health_score` PromQL query is the score
//! when configured. Otherwise it is computed, here and nowhere else, from the
//! signals that have a source:
//!
//! ```text
//! E = 1 - min(1, error_rate / error_budget)                       (error_budget 5 %)
//! L = 1 - min(1, max(0, p99 - latency_target) / latency_target)   (latency_target 100 ms)
//! A = 1 with no active alert, 0.5 with only P3 or unmapped ones, 0 with any P0-P2
//! score = 100 x (wE·E + wL·L + wA·A) / (wE + wL + wA)             (weights 0.5, 0.3, 0.2)
//! ```
//!
//! over the components present (a missing signal drops its term and its weight).
use faultline_proto::spec::{ScoreWeights, Severity};

use super::alertmanager::Alert;

pub fn computed(
    error_rate: Option<f64>,
    p99_ms: Option<f64>,
    alerts: Option<&[Alert]>,
    w: &ScoreWeights,
) -> Option<f64> {
    let mut parts = Vec::new();
    if let Some(e) = error_rate {
        let budget = w.error_budget.value().max(1e-9);
        parts.push((w.error_rate, 1.0 - (e / budget).min(1.0)));
    }
    if let Some(p) = p99_ms {
        let target = (w.latency_target.0.as_secs_f64() * 1e3).max(1e-9);
        parts.push((w.latency, 1.0 - ((p - target).max(0.0) / target).min(1.0)));
    }
    if let Some(list) = alerts {
        let a = if list
            .iter()
            .any(|a| a.severity.is_some_and(|s| s <= Severity::P2))
        {
            0.0
        } else if list.is_empty() {
            1.0
        } else {
            0.5
        };
        parts.push((w.alerts, a));
    }
    let weight: f64 = parts.iter().map(|p| p.0).sum();
    (weight > 0.0).then(|| 100.0 * parts.iter().map(|(w, v)| w * v).sum::<f64>() / weight)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_formula() {
        let w = ScoreWeights::default();
        assert_eq!(computed(Some(0.0), Some(40.0), Some(&[]), &w), Some(100.0));
        // 0.5 % errors: E = 0.9; p99 150 ms: L = 0.5; no alerts.
        let s = computed(Some(0.5), Some(150.0), Some(&[]), &w).unwrap();
        assert!(
            (s - 100.0 * (0.5 * 0.9 + 0.3 * 0.5 + 0.2)).abs() < 1e-9,
            "{s}"
        );
        // Without an alert source the weights renormalise.
        let s = computed(Some(5.0), Some(50.0), None, &w).unwrap();
        assert!((s - 100.0 * 0.3 / 0.8).abs() < 1e-9, "{s}");
        let p1 = Alert {
            name: "x".into(),
            fingerprint: "f".into(),
            severity: Some(Severity::P1),
            starts_at: std::time::SystemTime::now(),
        };
        assert_eq!(computed(None, None, Some(&[p1]), &w), Some(0.0));
        assert_eq!(computed(None, None, None, &w), None);
    }
}
