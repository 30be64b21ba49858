//! Metrics exposition for clients that do not speak OpenMetrics. prometheus-client
//! writes OpenMetrics text, where a counter family is named without `_total` and the
//! document ends with `# EOF`; the classic Prometheus text format (0.0.4, what
//! `promtool check metrics`, curl users and older scrapers read) names the family
//! after its samples and has no `# EOF`. Both faultline daemons serve OpenMetrics to
//! a scraper that asks for it and this conversion to everyone else.

/// The content type of the classic format.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// The content type of OpenMetrics text.
pub const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Whether an `Accept` header asks for OpenMetrics.
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| a.contains("application/openmetrics-text"))
}

/// OpenMetrics text (as prometheus-client writes it) to the classic text format.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let mut counters: Vec<String> = Vec::new();
    for l in openmetrics.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ")
            && let Some((name, "counter")) = rest.split_once(' ')
        {
            counters.push(name.to_owned());
        }
    }
    let mut out = String::with_capacity(openmetrics.len());
    for l in openmetrics.lines() {
        if l == "# EOF" || l.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = l.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .iter()
                .any(|c| c == name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(l));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_take_their_samples_name_and_eof_goes() {
        let om = "# HELP x_experiments Experiments.\n# TYPE x_experiments counter\n\
                  x_experiments_total{a=\"b\"} 1\n# HELP x_up Up.\n# TYPE x_up gauge\nx_up 1\n\
                  # HELP x_d_seconds D.\n# TYPE x_d_seconds histogram\n# UNIT x_d_seconds seconds\n\
                  x_d_seconds_sum 0.5\nx_d_seconds_count 1\nx_d_seconds_bucket{le=\"+Inf\"} 1\n# EOF\n";
        assert_eq!(
            to_prometheus_text(om),
            "# HELP x_experiments_total Experiments.\n# TYPE x_experiments_total counter\n\
             x_experiments_total{a=\"b\"} 1\n# HELP x_up Up.\n# TYPE x_up gauge\nx_up 1\n\
             # HELP x_d_seconds D.\n# TYPE x_d_seconds histogram\n\
             x_d_seconds_sum 0.5\nx_d_seconds_count 1\nx_d_seconds_bucket{le=\"+Inf\"} 1\n"
        );
        assert!(wants_openmetrics(Some(
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"
        )));
        assert!(!wants_openmetrics(Some("*/*")) && !wants_openmetrics(None));
    }
}
