//! Markdown for people: the reference report's tables and blocks, filled from
//! `stats::Summary` and `ExperimentReport`. Times are UTC.
use std::fmt::Write;

use super::{ExperimentReport, stats::Summary};

pub fn utc(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or("-".to_owned(), |t| {
        t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
    })
}

fn opt(v: Option<f64>, digits: usize, unit: &str) -> String {
    v.map_or("-".to_owned(), |v| format!("{v:.digits$}{unit}"))
}

fn signed(v: Option<f64>, digits: usize, unit: &str) -> String {
    v.map_or("-".to_owned(), |v| format!("{v:+.digits$}{unit}"))
}

/// Seconds as the report writes them: "11s", "1.8 min", "1 hour 32 minutes".
pub fn span(s: f64) -> String {
    if s < 120.0 {
        format!("{s:.1}s")
    } else if s < 3600.0 {
        format!(
            "{} minutes {} seconds",
            (s / 60.0).floor(),
            (s % 60.0).round()
        )
    } else {
        format!(
            "{} hours {} minutes",
            (s / 3600.0).floor(),
            ((s % 3600.0) / 60.0).round()
        )
    }
}

fn digits(unit: &str) -> usize {
    match unit {
        "%" => 3,
        "pp" => 3,
        _ => 1,
    }
}

pub fn histogram(s: &Summary) -> String {
    let d = &s.distribution;
    let max = d.buckets.iter().map(|b| b.count).max().unwrap_or(0).max(1);
    let mut out = String::new();
    for b in &d.buckets {
        let bar = "█".repeat(((f64::from(b.count) / f64::from(max)) * 30.0).round() as usize);
        let _ = writeln!(
            out,
            "{:<9} {}{}{} tests ({:.0}%)",
            format!("{}:", b.label),
            bar,
            if bar.is_empty() { "" } else { " " },
            b.count,
            b.share_percent
        );
    }
    let _ = writeln!(
        out,
        "\nAverage: {}\nMedian: {}\nP99: {}",
        opt(d.average_s, 1, " s"),
        opt(d.median_s, 1, " s"),
        opt(d.p99_s, 1, " s")
    );
    out
}

pub fn fleet(s: &Summary) -> String {
    let mut out = String::new();
    let days = (s.until_ms - s.since_ms) as f64 / 86_400_000.0;
    let _ = writeln!(
        out,
        "# Chaos summary: {} to {} ({days:.0} days)\n",
        utc(s.since_ms),
        utc(s.until_ms)
    );
    let _ = writeln!(out, "## Overall Performance\n");
    let _ = writeln!(
        out,
        "| Scenario | Tests | Recoveries | Success Rate | Avg Recovery |"
    );
    let _ = writeln!(
        out,
        "|----------|-------|------------|--------------|--------------|"
    );
    for r in s.scenarios.iter().chain(std::iter::once(&s.total)) {
        let bold = |t: String| {
            if r.scenario == "total" {
                format!("**{t}**")
            } else {
                t
            }
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            bold(r.title.clone()),
            bold(r.tests.to_string()),
            bold(r.recoveries.to_string()),
            bold(opt(r.success_rate_percent, 0, "%")),
            bold(opt(r.avg_recovery_s, 1, "s"))
        );
    }
    if s.total.hypotheses_held + s.total.hypotheses_refuted + s.total.hypotheses_unchecked > 0 {
        let _ = writeln!(
            out,
            "\n## Hypotheses (expected_impact)\n\n| Scenario | Held | Refuted | Unchecked |"
        );
        let _ = writeln!(out, "|----------|------|---------|-----------|");
        for r in s.scenarios.iter().chain(std::iter::once(&s.total)) {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                r.title, r.hypotheses_held, r.hypotheses_refuted, r.hypotheses_unchecked
            );
        }
    }
    let _ = writeln!(out, "\n## Impact Analysis\n\n```");
    let _ = writeln!(out, "Total Chaos Tests: {}", s.total.tests);
    let _ = writeln!(out, "Total Chaos Duration: {}", span(s.chaos_duration_s));
    let _ = writeln!(
        out,
        "User-Impacting Incidents: {}",
        s.user_impacting_incidents
    );
    let _ = writeln!(out, "```\n");
    let _ = writeln!(out, "| Metric | Baseline | During Chaos | Max Impact |");
    let _ = writeln!(out, "|--------|----------|--------------|------------|");
    for i in &s.impact {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            i.metric,
            opt(i.baseline, digits(i.unit), &format!(" {}", i.unit)),
            opt(i.during, digits(i.unit), &format!(" {}", i.unit)),
            signed(
                i.max_impact,
                digits(i.max_impact_unit),
                &format!(" {}", i.max_impact_unit)
            ),
        );
    }
    let _ = writeln!(
        out,
        "\n## Recovery Analysis\n\n| Mechanism | Tests | Average Time |"
    );
    let _ = writeln!(out, "|-----------|-------|--------------|");
    for m in &s.mechanisms {
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            m.mechanism,
            m.count,
            opt(m.avg_recovery_s, 1, " s")
        );
    }
    let _ = writeln!(
        out,
        "\n**Recovery Time Distribution:**\n\n```\n{}```\n",
        histogram(s)
    );
    let _ = writeln!(
        out,
        "## Findings\n\nIssues found: {} ({} open, {} mitigated, {} resolved)\n",
        s.findings.total, s.findings.open, s.findings.mitigated, s.findings.resolved
    );
    for (title, list) in [("Aborted", &s.aborted), ("Skipped and refused", &s.skipped)] {
        let _ = writeln!(out, "## {title} ({})\n", list.len());
        for n in list {
            let _ = writeln!(
                out,
                "- {} {} ({}, {}): {}",
                utc(n.at_ms),
                n.what,
                n.scenario,
                n.status,
                if n.reasons.is_empty() {
                    "-".to_owned()
                } else {
                    n.reasons.join("; ")
                }
            );
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(out, "## Resilience score: {:.0}/100\n", s.resilience.score);
    let _ = writeln!(
        out,
        "| Scenario | Tests | Score | Weight |\n|---|---|---|---|"
    );
    for c in &s.resilience.categories {
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {} |",
            c.scenario, c.runs, c.score, c.weight
        );
    }
    out
}

pub fn experiment(r: &ExperimentReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# {} — {}{}\n",
        r.id,
        r.title,
        if r.name.is_empty() {
            String::new()
        } else {
            format!(" ({})", r.name)
        }
    );
    let _ = writeln!(
        out,
        "Nodes: {}   Started: {}   Ended: {}{}{}\n",
        r.nodes.join(", "),
        r.started_ms.map_or("-".into(), utc),
        r.ended_ms.map_or("-".into(), utc),
        if r.schedule.is_empty() {
            String::new()
        } else {
            format!("   Schedule: {}", r.schedule)
        },
        if r.gameday_id.is_empty() {
            String::new()
        } else {
            format!("   Game day: {}", r.gameday_id)
        },
    );
    let _ = writeln!(out, "**Configuration:**\n```yaml\n{}```\n", r.configuration);
    if !r.preflight.is_empty() {
        let _ = writeln!(
            out,
            "**Prerequisites:**\n\n| Check | Status | Value | Threshold |\n|---|---|---|---|"
        );
        for c in &r.preflight {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                c.check, c.status, c.value, c.threshold
            );
        }
        let _ = writeln!(out);
    }
    if !r.waivers.is_empty() {
        let _ = writeln!(out, "Waived: {}\n", r.waivers.join(", "));
    }
    if r.node_signals_only {
        let _ = writeln!(
            out,
            "No health signal: judged by node-level signals only.\n"
        );
    }
    let _ = writeln!(out, "**Test Execution:**\n");
    let t0 = r
        .steps
        .iter()
        .find(|s| s.step == "chaos_injection")
        .and_then(|s| s.started_ms);
    for (i, s) in r.steps.iter().enumerate() {
        let at = |t: Option<i64>| match (t, t0) {
            (Some(t), Some(z)) => format!("T{:+.1}s", (t - z) as f64 / 1000.0),
            _ => "-".to_owned(),
        };
        let _ = writeln!(
            out,
            "{}. **{}** ({} to {})",
            i + 1,
            s.step,
            at(s.started_ms),
            at(s.ended_ms)
        );
        for v in &s.values {
            let _ = writeln!(out, "   - {}: {:.3} {}", v.signal, v.value, v.unit);
        }
        for n in &s.notes {
            let _ = writeln!(out, "   - {n}");
        }
    }
    let _ = writeln!(out, "\n**Results:**\n");
    let _ = writeln!(
        out,
        "- Verdict: {}   Classification: {}",
        r.verdict, r.classification
    );
    for i in &r.impacts {
        let _ = writeln!(
            out,
            "- {} impact: {} (baseline {}, worst {}, after {}; {})",
            i.signal,
            signed(i.change, 3, &format!(" {}", i.unit)),
            opt(i.baseline, 3, ""),
            opt(i.worst, 3, ""),
            opt(i.after, 3, ""),
            i.source
        );
    }
    let _ = writeln!(out, "- Recovery time: {}", opt(r.recovery_time_s, 2, " s"));
    if let Some(h) = &r.hypothesis {
        let _ = writeln!(out, "- Hypothesis ({}): **{}**", h.name, h.summary);
        for c in &h.checks {
            let _ = writeln!(out, "   - {c}");
        }
        if let Some(cmd) = &h.proposed_finding {
            let _ = writeln!(out, "- Proposed finding: `{cmd}`");
        }
    }
    let _ = writeln!(
        out,
        "- Health recovered: {}",
        if r.health_recovered { "yes" } else { "no" }
    );
    if !r.message.is_empty() {
        let _ = writeln!(out, "- {}", r.message);
    }
    for (title, list) in [
        ("Guard events", &r.guard_events),
        ("Incidents", &r.incidents),
        ("Findings", &r.findings),
    ] {
        if !list.is_empty() {
            let _ = writeln!(out, "\n**{title}:**\n");
            for l in list {
                let _ = writeln!(out, "- {l}");
            }
        }
    }
    if !r.kernel_summary.is_empty() {
        let _ = writeln!(out, "\n**Kernel summary:** {}", r.kernel_summary);
    }
    if let Some(st) = &r.scenario_stats {
        let _ = writeln!(
            out,
            "\n**{} statistics:** tests executed {}, recoveries {} ({}), average recovery {}",
            st.title,
            st.tests,
            st.recoveries,
            opt(st.success_rate_percent, 0, "% passed"),
            opt(st.avg_recovery_s, 1, " s")
        );
    }
    out
}
