//! `faultline schedule list|show|pause|resume|next|runs`.
use std::time::SystemTime;

use faultline_coordinator::report::markdown::utc;
use faultline_proto::v1::{
    ListScheduleRunsRequest, ListSchedulesRequest, PauseScheduleRequest, RunStatus, Schedule,
    ScheduleRun,
};
use serde_json::{Value, json};

use crate::table::Table;
use crate::{
    args::{Cli, Output, ScheduleAction},
    connection::{authed, connect},
    exit::{Fail, usage},
    render::millis,
};

fn when(t: Option<&prost_types::Timestamp>) -> String {
    millis(t).map_or("-".into(), utc)
}

pub fn run_status(s: i32) -> &'static str {
    match RunStatus::try_from(s).unwrap_or(RunStatus::Unspecified) {
        RunStatus::Started => "started",
        RunStatus::Skipped => "skipped",
        RunStatus::Missed => "missed",
        RunStatus::Unspecified => "-",
    }
}

fn run_json(r: &ScheduleRun) -> Value {
    json!({"schedule": r.schedule, "slot_ms": millis(r.slot.as_ref()), "status": run_status(r.status),
           "reasons": r.reasons, "experiment": r.experiment_id, "scenario": r.scenario})
}

fn schedule_json(s: &Schedule) -> Value {
    json!({"name": s.name, "when": s.when, "scenario": s.scenario, "paused": s.paused,
           "paused_by": s.paused_by, "next_run_ms": millis(s.next_run.as_ref()),
           "last_run": s.last_run.as_ref().map(run_json), "spec": s.spec_yaml})
}

fn last(s: &Schedule) -> String {
    s.last_run.as_ref().map_or("-".into(), |r| {
        format!(
            "{} {}{}",
            run_status(r.status),
            if r.experiment_id.is_empty() {
                String::new()
            } else {
                r.experiment_id.clone()
            },
            if r.reasons.is_empty() {
                String::new()
            } else {
                format!(" ({})", r.reasons.join("; "))
            }
        )
    })
}

pub async fn schedule(cli: &Cli, action: &ScheduleAction) -> Result<u8, Fail> {
    let mut client = connect(cli).await?;
    let list = client
        .list_schedules(authed(cli, ListSchedulesRequest {})?)
        .await?
        .into_inner();
    let json_out = cli.output == Output::Json;
    match action {
        ScheduleAction::List => {
            if json_out {
                let b: Vec<Value> = list
                    .blackouts
                    .iter()
                    .map(|b| {
                        json!({"name": b.name, "when": b.when,
                    "active": b.active, "active_until_ms": millis(b.active_until.as_ref()),
                    "next_start_ms": millis(b.next_start.as_ref())})
                    })
                    .collect();
                println!(
                    "{}",
                    json!({"source": list.source,
                    "schedules": list.schedules.iter().map(schedule_json).collect::<Vec<_>>(), "blackouts": b})
                );
                return Ok(0);
            }
            println!("schedule file: {}", list.source);
            let mut t = Table::new(["NAME", "WHEN", "SCENARIO", "NEXT", "LAST"]);
            for s in &list.schedules {
                let next = if s.paused {
                    format!("paused by {}", s.paused_by)
                } else {
                    when(s.next_run.as_ref())
                };
                t.row([
                    s.name.clone(),
                    s.when.clone(),
                    s.scenario.clone(),
                    next,
                    last(s),
                ]);
            }
            t.print();
            for b in &list.blackouts {
                println!(
                    "blackout {}: {} — {}",
                    b.name,
                    b.when,
                    if b.active {
                        format!("OPEN until {}", when(b.active_until.as_ref()))
                    } else {
                        format!("next {}", when(b.next_start.as_ref()))
                    }
                );
            }
        }
        ScheduleAction::Show { name } => {
            let s = list
                .schedules
                .iter()
                .find(|s| &s.name == name)
                .ok_or_else(|| usage(format!("no schedule {name:?}")))?;
            let runs = client
                .list_schedule_runs(authed(
                    cli,
                    ListScheduleRunsRequest {
                        schedule: name.clone(),
                        limit: 10,
                        ..Default::default()
                    },
                )?)
                .await?
                .into_inner()
                .runs;
            if json_out {
                println!(
                    "{}",
                    json!({"schedule": schedule_json(s), "runs": runs.iter().map(run_json).collect::<Vec<_>>()})
                );
                return Ok(0);
            }
            println!(
                "{}\n  when: {}\n  next: {}\n  paused: {}\n  spec:",
                s.name,
                s.when,
                if s.paused {
                    "-".into()
                } else {
                    when(s.next_run.as_ref())
                },
                s.paused
            );
            for l in s.spec_yaml.lines() {
                println!("    {l}");
            }
            println!("  recent runs:");
            for r in &runs {
                println!(
                    "    {} {} {} {}",
                    when(r.slot.as_ref()),
                    run_status(r.status),
                    r.experiment_id,
                    r.reasons.join("; ")
                );
            }
        }
        ScheduleAction::Pause { name } | ScheduleAction::Resume { name } => {
            let paused = matches!(action, ScheduleAction::Pause { .. });
            let s = client
                .pause_schedule(authed(
                    cli,
                    PauseScheduleRequest {
                        name: name.clone(),
                        paused,
                    },
                )?)
                .await?
                .into_inner();
            if json_out {
                println!("{}", schedule_json(&s));
            } else {
                println!(
                    "{}: {}",
                    s.name,
                    if s.paused {
                        "paused".to_owned()
                    } else {
                        format!("resumed, next {}", when(s.next_run.as_ref()))
                    }
                );
            }
        }
        ScheduleAction::Next { count } => {
            let mut next: Vec<&Schedule> = list
                .schedules
                .iter()
                .filter(|s| !s.paused && s.next_run.is_some())
                .collect();
            next.sort_by_key(|s| millis(s.next_run.as_ref()));
            next.truncate(*count);
            if json_out {
                println!(
                    "{}",
                    Value::from(next.iter().map(|s| schedule_json(s)).collect::<Vec<_>>())
                );
                return Ok(0);
            }
            for s in next {
                println!("{}  {} ({})", when(s.next_run.as_ref()), s.name, s.scenario);
            }
        }
        ScheduleAction::Runs { since, name } => {
            let since = SystemTime::now()
                .checked_sub(*since)
                .unwrap_or(SystemTime::UNIX_EPOCH);
            let runs = client
                .list_schedule_runs(authed(
                    cli,
                    ListScheduleRunsRequest {
                        since: Some(since.into()),
                        schedule: name.clone().unwrap_or_default(),
                        limit: 0,
                    },
                )?)
                .await?
                .into_inner()
                .runs;
            if json_out {
                println!(
                    "{}",
                    Value::from(runs.iter().map(run_json).collect::<Vec<_>>())
                );
                return Ok(0);
            }
            let mut t = Table::new(["SLOT", "SCHEDULE", "STATUS", "EXPERIMENT", "REASONS"]);
            for r in runs {
                t.row([
                    when(r.slot.as_ref()),
                    r.schedule,
                    run_status(r.status).to_owned(),
                    r.experiment_id,
                    r.reasons.join("; "),
                ]);
            }
            t.print();
        }
    }
    Ok(0)
}
