//! `faultline gameday open|close|note|list|show`: announced windows in which several
//! scenarios run at once under the game-day limits, and their report.
use std::time::{Duration, SystemTime};

use faultline_coordinator::report::markdown::utc;
use faultline_proto::v1::{
    AddGameDayNoteRequest, CloseGameDayRequest, GameDay, GameDayState, GetExperimentRequest,
    ListGameDaysRequest, NoteKind, OpenGameDayRequest,
};
use serde_json::{Value, json};

use crate::{
    args::{Cli, GamedayAction, NoteKindArg, Output},
    connection::{authed, connect},
    exit::{Fail, usage},
    render::{classification, millis, verdict},
};

fn state(s: i32) -> &'static str {
    match GameDayState::try_from(s).unwrap_or(GameDayState::Unspecified) {
        GameDayState::Announced => "announced",
        GameDayState::Open => "open",
        GameDayState::Closed => "closed",
        GameDayState::Unspecified => "-",
    }
}

fn kind(k: i32) -> &'static str {
    match NoteKind::try_from(k).unwrap_or(NoteKind::Unspecified) {
        NoteKind::Issue => "issue",
        NoteKind::Lesson => "lesson",
        NoteKind::Note | NoteKind::Unspecified => "note",
    }
}

fn gameday_json(g: &GameDay) -> Value {
    json!({"id": g.id, "title": g.title, "announcement": g.announcement, "state": state(g.state),
        "start_ms": millis(g.start.as_ref()), "end_ms": millis(g.end.as_ref()),
        "max_concurrent": g.max_concurrent, "max_nodes": g.max_nodes, "opened_by": g.opened_by,
        "closed_ms": millis(g.closed_at.as_ref()), "close_reason": g.close_reason,
        "experiments": g.experiment_ids,
        "notes": g.notes.iter().map(|n| json!({"kind": kind(n.kind), "text": n.text, "by": n.by})).collect::<Vec<_>>()})
}

fn line(g: &GameDay) -> String {
    format!(
        "{} {:<9} {} to {}  {} (max_concurrent {}, max_nodes {}, {} experiments)",
        g.id,
        state(g.state),
        millis(g.start.as_ref()).map_or("-".into(), utc),
        millis(g.end.as_ref()).map_or("-".into(), utc),
        g.title,
        g.max_concurrent,
        g.max_nodes,
        g.experiment_ids.len()
    )
}

pub async fn gameday(cli: &Cli, action: &GamedayAction) -> Result<u8, Fail> {
    let mut client = connect(cli).await?;
    let g = match action {
        GamedayAction::Open {
            title,
            announcement,
            start,
            duration,
            max_concurrent,
            max_nodes,
        } => {
            let start = match start {
                None => SystemTime::now(),
                Some(s) => chrono::DateTime::parse_from_rfc3339(s)
                    .map(SystemTime::from)
                    .map_err(|e| usage(format!("--start {s:?}: not an RFC 3339 time: {e}")))?,
            };
            let end = start + *duration;
            client
                .open_game_day(authed(
                    cli,
                    OpenGameDayRequest {
                        title: title.clone(),
                        announcement: announcement.clone(),
                        start: Some(start.into()),
                        end: Some(end.into()),
                        max_concurrent: *max_concurrent,
                        max_nodes: *max_nodes,
                    },
                )?)
                .await?
                .into_inner()
        }
        GamedayAction::Close { id, reason } => client
            .close_game_day(authed(
                cli,
                CloseGameDayRequest {
                    id: id.clone(),
                    reason: reason.clone(),
                },
            )?)
            .await?
            .into_inner(),
        GamedayAction::Note { kind: k, text, id } => client
            .add_game_day_note(authed(
                cli,
                AddGameDayNoteRequest {
                    id: id.clone(),
                    kind: match k {
                        NoteKindArg::Issue => NoteKind::Issue,
                        NoteKindArg::Lesson => NoteKind::Lesson,
                        NoteKindArg::Note => NoteKind::Note,
                    } as i32,
                    text: text.clone(),
                },
            )?)
            .await?
            .into_inner(),
        GamedayAction::List => {
            let all = client
                .list_game_days(authed(cli, ListGameDaysRequest {})?)
                .await?
                .into_inner()
                .gamedays;
            if cli.output == Output::Json {
                println!(
                    "{}",
                    Value::from(all.iter().map(gameday_json).collect::<Vec<_>>())
                );
            } else {
                for g in &all {
                    println!("{}", line(g));
                }
            }
            return Ok(0);
        }
        GamedayAction::Show { id } => {
            let all = client
                .list_game_days(authed(cli, ListGameDaysRequest {})?)
                .await?
                .into_inner()
                .gamedays;
            let g = if id.is_empty() {
                all.last()
            } else {
                all.iter().find(|g| &g.id == id)
            }
            .cloned()
            .ok_or_else(|| {
                usage(if id.is_empty() {
                    "no game day yet".to_owned()
                } else {
                    format!("no game day {id:?}")
                })
            })?;
            if cli.output == Output::Json {
                println!("{}", gameday_json(&g));
                return Ok(0);
            }
            let dur = millis(g.end.as_ref())
                .zip(millis(g.start.as_ref()))
                .map(|(e, s)| Duration::from_millis((e - s).max(0) as u64));
            println!("# Game day {}: {}\n", g.id, g.title);
            println!(
                "- Date: {}",
                millis(g.start.as_ref()).map_or("-".into(), utc)
            );
            println!(
                "- Duration: {}",
                dur.map_or("-".into(), |d| humantime::format_duration(d).to_string())
            );
            println!(
                "- State: {}{}",
                state(g.state),
                if g.close_reason.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", g.close_reason)
                }
            );
            if !g.announcement.is_empty() {
                println!("- Announcement: {}", g.announcement);
            }
            let mut scenarios = std::collections::BTreeSet::new();
            println!(
                "\n## Scenarios tested ({} experiments)\n",
                g.experiment_ids.len()
            );
            for id in &g.experiment_ids {
                let e = client
                    .get_experiment(authed(cli, GetExperimentRequest { id: id.clone() })?)
                    .await?
                    .into_inner();
                scenarios.insert(e.scenario.clone());
                let o = e.outcome.clone().unwrap_or_default();
                println!(
                    "- {} {} on {}: {} / {}",
                    e.id,
                    e.scenario,
                    e.nodes.join(","),
                    verdict(&o),
                    classification(&o)
                );
            }
            println!("\nScenarios tested: {}", scenarios.len());
            for (title, k) in [
                ("Issues found", NoteKind::Issue),
                ("Lessons learned", NoteKind::Lesson),
                ("Notes", NoteKind::Note),
            ] {
                let notes: Vec<_> = g.notes.iter().filter(|n| n.kind == k as i32).collect();
                println!("\n## {title}: {}\n", notes.len());
                for n in notes {
                    println!("- {} ({})", n.text, n.by);
                }
            }
            return Ok(0);
        }
    };
    if cli.output == Output::Json {
        println!("{}", gameday_json(&g));
    } else {
        println!("{}", line(&g));
    }
    Ok(0)
}
