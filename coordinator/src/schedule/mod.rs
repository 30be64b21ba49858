//! The coordinator's scheduler: turns the schedule file's entries into experiments.
//!
//! Invariants (each has a test below, with an injected clock):
//! - a slot is decided exactly once: the decision is stored, and the entry moved on to
//!   its next slot, in one transaction before anything starts (`Store::record_slot`);
//! - runs never overlap: a slot whose previous run still runs, whose lease is busy,
//!   that falls in a blackout window or under the kill switch, or whose preflight
//!   fails is recorded `skipped` with the reasons;
//! - a slot found due late (the coordinator was down) runs once if it is still
//!   within `starting_deadline`, else it is recorded `missed`; of several due slots
//!   only the latest can run;
//! - while the coordinator is younger than `starting_deadline` (its agents are
//!   reconnecting), a due slot whose targets are not connected yet is left undecided
//!   until they are, or until its deadline is nearly spent;
//! - next run times live in the store, so a restart neither loses nor doubles a slot;
//! - a blackout window that opens while experiments run ends them.
pub mod file;
pub mod when;

use std::time::{Duration, SystemTime};

use anyhow::Result;
use chrono::{DateTime, TimeZone, Utc};
use faultline_proto::v1::{self, RunStatus, ScheduleRun};

pub use file::{Blackout, Entry, ScheduleFile};

use crate::store::{ScheduleState, Store};

/// What the scheduler asks of the rest of the coordinator (a fake in the unit tests).
pub trait Launcher {
    /// Running experiments as (id, the schedule entry that started it or "").
    fn running(&self) -> Vec<(String, String)>;
    /// Starts `entry`'s experiment for the slot: its id, or why it cannot start.
    fn start(&self, entry: &Entry, slot_ms: i64) -> Result<String, Vec<String>>;
    /// Ends running experiments early (their effects removed), with the reason.
    fn end(&self, ids: &[String], reason: &str);
    fn kill_switch(&self) -> Option<String>;
    /// Ok when `entry`'s targets resolve to connected agents; else why not.
    fn targets_ready(&self, entry: &Entry) -> Result<(), String>;
}

/// How much of a slot's starting deadline waiting for agents may use: the last
/// second is for deciding it.
const DECIDE_MARGIN: Duration = Duration::from_secs(1);

pub fn utc(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

fn stamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    SystemTime::from(t).into()
}

pub struct Scheduler {
    pub file: ScheduleFile,
    /// When this coordinator loaded the schedule (started).
    started: DateTime<Utc>,
    /// The slot each entry waits with for its agents, logged once.
    waiting: std::sync::Mutex<std::collections::HashMap<String, i64>>,
}

impl Scheduler {
    /// Loads `file` against the store: a new entry (or one whose timing changed)
    /// starts at its first slot after `now`; a known one keeps its next slot, so slots
    /// that fell due while the coordinator was down are decided by the next tick.
    pub fn load(file: ScheduleFile, store: &Store, now: DateTime<Utc>) -> Result<Self> {
        for e in &file.entries {
            let st = store.schedule_state(&e.name)?;
            match st {
                Some(s) if s.timing == e.when.text() => {}
                _ => {
                    let next = e.when.next_after(now).map(|t| t.timestamp_millis());
                    store.write(|w| {
                        w.set_schedule_next(&e.name, e.when.text(), next)?;
                        if e.paused {
                            w.set_schedule_paused(&e.name, true, "schedule file")?;
                        }
                        Ok(())
                    })?;
                }
            }
        }
        Ok(Self {
            file,
            started: now,
            waiting: Default::default(),
        })
    }

    pub fn entry(&self, name: &str) -> Option<&Entry> {
        self.file.entries.iter().find(|e| e.name == name)
    }

    /// The blackout window open at `now` and when it closes.
    pub fn blackout(&self, now: DateTime<Utc>) -> Option<(&Blackout, DateTime<Utc>)> {
        self.file
            .blackouts
            .iter()
            .find_map(|b| b.window.open_until(now).map(|until| (b, until)))
    }

    /// Decides every slot due at `now`. Returns the decisions made.
    pub fn tick(
        &self,
        store: &Store,
        launcher: &dyn Launcher,
        now: DateTime<Utc>,
    ) -> Result<Vec<ScheduleRun>> {
        let blackout = self.blackout(now);
        if let Some((b, until)) = blackout {
            let ids: Vec<String> = launcher.running().into_iter().map(|(id, _)| id).collect();
            if !ids.is_empty() {
                launcher.end(
                    &ids,
                    &format!(
                        "blackout window {} opened (until {})",
                        b.name,
                        until.format("%Y-%m-%d %H:%M:%S UTC")
                    ),
                );
            }
        }
        let mut out = Vec::new();
        for e in &self.file.entries {
            let st: ScheduleState = store.schedule_state(&e.name)?.unwrap_or_default();
            let Some(next) = st.next_ms else { continue };
            if next > now.timestamp_millis() {
                continue;
            }
            if st.paused {
                // A paused entry's slots pass unrecorded; it resumes at its next slot.
                store.set_schedule_next(
                    &e.name,
                    e.when.text(),
                    e.when.next_after(now).map(|t| t.timestamp_millis()),
                )?;
                continue;
            }
            let mut due = vec![utc(next)];
            while due.len() < 10_000 {
                match e.when.next_after(*due.last().expect("not empty")) {
                    Some(t) if t <= now => due.push(t),
                    _ => break,
                }
            }
            let last = *due.last().expect("not empty");
            let following = e.when.next_after(last).map(|t| t.timestamp_millis());
            let run = |slot: DateTime<Utc>, status: RunStatus, reasons: Vec<String>| ScheduleRun {
                schedule: e.name.clone(),
                slot: Some(stamp(slot)),
                at: Some(stamp(now)),
                status: status as i32,
                reasons,
                experiment_id: String::new(),
                scenario: e.scenario.as_str().to_owned(),
            };
            for (i, slot) in due.iter().enumerate().take(due.len() - 1) {
                let r = run(
                    *slot,
                    RunStatus::Missed,
                    vec![format!(
                        "the coordinator was not running at {}; only the latest due slot ({}) may still run",
                        slot.format("%Y-%m-%d %H:%M:%S UTC"),
                        last.format("%Y-%m-%d %H:%M:%S UTC")
                    )],
                );
                if store.record_slot(&r, Some(due[i + 1].timestamp_millis()))? {
                    out.push(r);
                }
            }
            let late = (now - last).to_std().unwrap_or_default();
            let mut reasons = Vec::new();
            if late > self.file.starting_deadline {
                let r = run(
                    last,
                    RunStatus::Missed,
                    vec![format!(
                        "found due {} late (the coordinator was not running), past starting_deadline {}",
                        humantime::format_duration(Duration::from_secs(late.as_secs())),
                        humantime::format_duration(self.file.starting_deadline)
                    )],
                );
                if store.record_slot(&r, following)? {
                    out.push(r);
                }
                continue;
            }
            if let Some((b, until)) = blackout {
                reasons.push(format!(
                    "blackout window {} is open until {}",
                    b.name,
                    until.format("%Y-%m-%d %H:%M:%S UTC")
                ));
            }
            if let Some(k) = launcher.kill_switch() {
                reasons.push(format!("the kill switch is engaged ({k})"));
            }
            for (id, from) in launcher.running() {
                if from == e.name {
                    reasons.push(format!("the previous run {id} still runs"));
                }
            }
            if !reasons.is_empty() {
                let r = run(last, RunStatus::Skipped, reasons);
                if store.record_slot(&r, following)? {
                    out.push(r);
                }
                continue;
            }
            let deadline = self.file.starting_deadline;
            let reconnecting = (now - self.started).to_std().unwrap_or_default() < deadline;
            if reconnecting
                && late + DECIDE_MARGIN < deadline
                && let Err(why) = launcher.targets_ready(e)
            {
                let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
                if waiting.insert(e.name.clone(), last.timestamp_millis())
                    != Some(last.timestamp_millis())
                {
                    tracing::info!(schedule = %e.name, slot = %last, %why,
                        "slot due after a restart: waiting for its agents to reconnect (at most until its starting deadline)");
                }
                continue;
            }
            let mut r = run(last, RunStatus::Started, vec![]);
            if !store.record_slot(&r, following)? {
                continue;
            }
            match launcher.start(e, last.timestamp_millis()) {
                Ok(id) => {
                    store.update_slot(
                        &e.name,
                        last.timestamp_millis(),
                        RunStatus::Started,
                        &[],
                        &id,
                    )?;
                    r.experiment_id = id;
                }
                Err(why) => {
                    store.update_slot(
                        &e.name,
                        last.timestamp_millis(),
                        RunStatus::Skipped,
                        &why,
                        "",
                    )?;
                    r.status = RunStatus::Skipped as i32;
                    r.reasons = why;
                }
            }
            out.push(r);
        }
        Ok(out)
    }

    /// The entries as the API shows them.
    pub fn list(&self, store: &Store) -> Result<Vec<v1::Schedule>> {
        let mut out = Vec::new();
        for e in &self.file.entries {
            let st = store.schedule_state(&e.name)?.unwrap_or_default();
            out.push(v1::Schedule {
                name: e.name.clone(),
                when: e.when.text().to_owned(),
                scenario: e.scenario.as_str().to_owned(),
                paused: st.paused,
                next_run: st.next_ms.filter(|_| !st.paused).map(|m| stamp(utc(m))),
                last_run: store.last_schedule_run(&e.name)?,
                spec_yaml: e.spec_yaml.clone(),
                paused_by: st.paused_by,
            });
        }
        Ok(out)
    }

    pub fn blackouts(&self, now: DateTime<Utc>) -> Vec<v1::Blackout> {
        self.file
            .blackouts
            .iter()
            .map(|b| {
                let until = b.window.open_until(now);
                v1::Blackout {
                    name: b.name.clone(),
                    when: b.window.text(),
                    active: until.is_some(),
                    active_until: until.map(stamp),
                    next_start: b.window.next_start(now).map(stamp),
                }
            })
            .collect()
    }

    /// Pauses or resumes an entry, recorded with `audit` (both land or neither).
    /// Resuming starts at the first slot after `now`, so a long pause does not
    /// release a burst of late slots.
    pub fn set_paused(
        &self,
        store: &Store,
        name: &str,
        paused: bool,
        audit: &crate::store::Audit,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let Some(e) = self.entry(name) else {
            return Ok(false);
        };
        store.audited(audit, |w| {
            if !paused {
                w.set_schedule_next(
                    name,
                    e.when.text(),
                    e.when.next_after(now).map(|t| t.timestamp_millis()),
                )?;
            }
            w.set_schedule_paused(name, paused, &audit.who)
        })?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests;
