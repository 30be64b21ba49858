//! `faultline status`: the reference report's dashboard box, from live data —
//! current status (running experiments with their phase and latest signals), last
//! test and result, 30-day statistics, next scheduled test, system health, chaos
//! readiness (a preflight dry run) and the kill switch. `-o json` for scripts.
use std::time::Duration;

use faultline_coordinator::report::markdown::utc;
use faultline_proto::v1::{
    CheckStatus, HealthReading, ListExperimentsRequest, ListSchedulesRequest, ReadinessRequest,
    ReadinessResponse, StatusRequest,
};
use serde_json::json;

use crate::{
    args::{Cli, Output},
    connection::{authed, connect},
    exit::Fail,
    render::{experiment_json, fault_summary, millis, phase_name, reading_json, verdict},
    report::summary,
};

const WIDTH: usize = 57;

/// Terminal columns: the dashboard's symbols take two, a variation selector none.
fn width(s: &str) -> usize {
    s.chars()
        .map(|c| match c as u32 {
            0xFE0F => 0,
            0x2600.. => 2,
            _ => 1,
        })
        .sum()
}

fn boxed(lines: &[String]) -> String {
    let mut out = format!("┌{}┐\n", "─".repeat(WIDTH + 2));
    for l in lines {
        if l == "---" {
            out += &format!("├{}┤\n", "─".repeat(WIDTH + 2));
            continue;
        }
        let mut text = String::new();
        for c in l.chars() {
            if width(&text) + width(&c.to_string()) > WIDTH {
                break;
            }
            text.push(c);
        }
        let pad = WIDTH - width(&text);
        out += &format!("│ {text}{} │\n", " ".repeat(pad));
    }
    out + &format!("└{}┘\n", "─".repeat(WIDTH + 2))
}

fn live(r: &HealthReading) -> String {
    let f = |v: Option<f64>, unit: &str| v.map_or("-".into(), |v| format!("{v:.2}{unit}"));
    format!(
        "err {} p99 {} {} health {}",
        f(r.error_rate_percent, "%"),
        f(r.latency_p99_ms, "ms"),
        f(r.throughput_rps, "/s"),
        f(r.health_score, "")
    )
}

pub async fn status(cli: &Cli, no_readiness: bool) -> Result<u8, Fail> {
    let mut client = connect(cli).await?;
    let s = client
        .status(authed(cli, StatusRequest {})?)
        .await?
        .into_inner();
    let recent = client
        .list_experiments(authed(
            cli,
            ListExperimentsRequest {
                limit: 50,
                ..Default::default()
            },
        )?)
        .await?
        .into_inner()
        .experiments;
    let last = recent.iter().find(|e| e.outcome.is_some());
    let (stats, _) = summary(cli, &mut client, Duration::from_secs(30 * 86_400), None).await?;
    let schedules = client
        .list_schedules(authed(cli, ListSchedulesRequest {})?)
        .await?
        .into_inner();
    let next = schedules
        .schedules
        .iter()
        .filter(|e| !e.paused)
        .filter_map(|e| millis(e.next_run.as_ref()).map(|t| (t, e)))
        .min_by_key(|(t, _)| *t);
    let ready: Option<ReadinessResponse> = if no_readiness {
        None
    } else {
        match client
            .readiness(authed(cli, ReadinessRequest::default())?)
            .await
        {
            Ok(r) => Some(r.into_inner()),
            // A viewer's dashboard shows everything but the dry run.
            Err(s) if s.code() == tonic::Code::PermissionDenied => Some(ReadinessResponse {
                message: "not checked: a dry run needs an operator token".into(),
                ..Default::default()
            }),
            Err(s) => return Err(s.into()),
        }
    };
    let health = ready
        .as_ref()
        .and_then(|r| r.reading.as_ref())
        .and_then(|r| r.health_score)
        .or_else(|| s.live.iter().find_map(|r| r.health_score));
    if cli.output == Output::Json {
        println!(
            "{}",
            json!({
                "kill_switch_engaged": s.kill_switch_engaged,
                "connected_agents": s.connected_agents,
                "running": s.running.iter().map(experiment_json).collect::<Vec<_>>(),
                "live": s.live.iter().map(reading_json).collect::<Vec<_>>(),
                "last_test": last.map(experiment_json),
                "stats_30d": {"tests": stats.total.tests, "success_rate_percent": stats.total.success_rate_percent,
                    "avg_recovery_s": stats.total.avg_recovery_s, "issues_found": stats.findings.total,
                    "issues_resolved": stats.findings.resolved, "resilience_score": stats.resilience.score},
                "next_scheduled": next.map(|(t, e)| json!({"at_ms": t, "schedule": e.name, "scenario": e.scenario})),
                "health_score": health,
                "readiness": ready.as_ref().map(|r| json!({"ready": r.ready, "checked": r.checked, "message": r.message,
                    "failing": r.checks.iter().filter(|c| c.status == CheckStatus::Fail as i32).map(|c| c.name.clone()).collect::<Vec<_>>()})),
            })
        );
        return Ok(0);
    }
    let mut l = vec![
        format!("{:^WIDTH$}", "Production Chaos Dashboard"),
        "---".into(),
        String::new(),
    ];
    if s.running.is_empty() {
        l.push("Current Status: ✅ No active chaos".into());
    } else {
        l.push(format!("Current Status: 🔥 {} running", s.running.len()));
        for (e, r) in s.running.iter().zip(&s.live) {
            l.push(format!(
                "├─ {} {} ({})",
                e.id,
                fault_summary(e),
                phase_name(e.phase)
            ));
            l.push(format!("│  {}", live(r)));
        }
    }
    match last {
        Some(e) => {
            let o = e.outcome.clone().unwrap_or_default();
            l.push(format!(
                "Last Test: {} ({}, {})",
                millis(e.started.as_ref()).map_or("-".into(), utc),
                e.id,
                e.scenario
            ));
            let v = verdict(&o);
            l.push(format!(
                "Last Result: {} {}",
                if v == "passed" { "✅" } else { "❌" },
                v.to_uppercase()
            ));
        }
        None => l.push("Last Test: none yet".into()),
    }
    l.push(String::new());
    l.push("30-Day Statistics:".into());
    l.push(format!("├─ Total Tests: {}", stats.total.tests));
    l.push(format!(
        "├─ Success Rate: {}",
        stats
            .total
            .success_rate_percent
            .map_or("-".into(), |v| format!("{v:.0}%"))
    ));
    l.push(format!(
        "├─ Avg Recovery: {}",
        stats
            .total
            .avg_recovery_s
            .map_or("-".into(), |v| format!("{v:.1}s"))
    ));
    l.push(format!(
        "└─ Issues Found: {} ({})",
        stats.findings.total,
        if stats.findings.total == 0 {
            "none".to_owned()
        } else if stats.findings.resolved == stats.findings.total {
            "all resolved".to_owned()
        } else {
            format!("{} resolved", stats.findings.resolved)
        }
    ));
    l.push(String::new());
    l.push("Next Scheduled Test:".into());
    l.push(match next {
        Some((t, e)) => format!("└─ {} ({})", utc(t), e.scenario),
        None => "└─ none scheduled".into(),
    });
    l.push(String::new());
    l.push(format!(
        "System Health: {}",
        health.map_or("- (no health score source)".into(), |h| format!(
            "{h:.0}/100 {}",
            if h >= 95.0 { "✅" } else { "⚠️" }
        ))
    ));
    match &ready {
        None => l.push("Chaos Readiness: not checked (--no-readiness)".into()),
        Some(r) if r.ready => l.push("Chaos Readiness: ✅ READY".into()),
        Some(r) if r.checks.is_empty() => l.push(format!("Chaos Readiness: ⚠️ {}", r.message)),
        Some(r) => {
            l.push("Chaos Readiness: ❌ NOT READY".into());
            for c in r
                .checks
                .iter()
                .filter(|c| c.status == CheckStatus::Fail as i32)
            {
                l.push(format!(
                    "├─ {}: {} (needs {})",
                    c.name, c.value, c.threshold
                ));
            }
        }
    }
    l.push(format!(
        "Kill Switch: {}",
        if s.kill_switch_engaged {
            "🛑 ENGAGED"
        } else {
            "off"
        }
    ));
    l.push(format!("Connected Agents: {}", s.connected_agents));
    l.push(String::new());
    print!("{}", boxed(&l));
    Ok(0)
}
