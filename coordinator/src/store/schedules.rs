//! Schedule state and the fate of every slot. A slot is recorded, and the schedule's
//! next run advanced, in one transaction before anything is started, and a slot is
//! unique per schedule: a restart can neither lose a slot nor run it twice.
use std::time::SystemTime;

use anyhow::Result;
use faultline_proto::v1::{RunStatus, ScheduleRun};
use rusqlite::{Connection, OptionalExtension, params};

use super::{Store, Writer, ms, time};

pub(super) fn migrate(db: &Connection) -> Result<()> {
    db.execute_batch(
        "CREATE TABLE IF NOT EXISTS schedule_state (
             name TEXT PRIMARY KEY,
             timing TEXT NOT NULL,
             next_ms INTEGER,
             paused INTEGER NOT NULL DEFAULT 0,
             paused_by TEXT NOT NULL DEFAULT '');
         CREATE TABLE IF NOT EXISTS schedule_runs (
             seq INTEGER PRIMARY KEY AUTOINCREMENT,
             schedule TEXT NOT NULL,
             slot_ms INTEGER NOT NULL,
             at_ms INTEGER NOT NULL,
             status INTEGER NOT NULL,
             reasons TEXT NOT NULL,
             experiment_id TEXT NOT NULL DEFAULT '',
             scenario TEXT NOT NULL DEFAULT '',
             UNIQUE (schedule, slot_ms));",
    )?;
    Ok(())
}

/// What the store remembers of one schedule entry across restarts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ScheduleState {
    /// The entry's timing as loaded; a different timing restarts its slot sequence.
    pub timing: String,
    /// The next slot not yet decided, in ms since the epoch.
    pub next_ms: Option<i64>,
    pub paused: bool,
    pub paused_by: String,
}

fn run_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ScheduleRun> {
    let reasons: String = r.get("reasons")?;
    Ok(ScheduleRun {
        schedule: r.get("schedule")?,
        slot: Some(time(r.get("slot_ms")?)),
        at: Some(time(r.get("at_ms")?)),
        status: r.get("status")?,
        reasons: reasons
            .split('\n')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        experiment_id: r.get("experiment_id")?,
        scenario: r.get("scenario")?,
    })
}

impl Store {
    pub fn schedule_state(&self, name: &str) -> Result<Option<ScheduleState>> {
        Ok(self
            .db()
            .query_row(
                "SELECT timing, next_ms, paused, paused_by FROM schedule_state WHERE name = ?1",
                [name],
                |r| {
                    Ok(ScheduleState {
                        timing: r.get(0)?,
                        next_ms: r.get(1)?,
                        paused: r.get::<_, i64>(2)? != 0,
                        paused_by: r.get(3)?,
                    })
                },
            )
            .optional()?)
    }

    /// Sets an entry's timing and next slot (a new entry, or one whose timing changed).
    pub fn set_schedule_next(&self, name: &str, timing: &str, next_ms: Option<i64>) -> Result<()> {
        self.write(|w| w.set_schedule_next(name, timing, next_ms))
    }

    /// Records the decision for `slot_ms` and moves the entry on to `next_ms`, in one
    /// transaction. False (and nothing changed) when that slot was already decided.
    pub fn record_slot(&self, run: &ScheduleRun, next_ms: Option<i64>) -> Result<bool> {
        self.write(|w| w.record_slot(run, next_ms))
    }

    /// What became of a started slot once its experiment was created or refused.
    pub fn update_slot(
        &self,
        schedule: &str,
        slot_ms: i64,
        status: RunStatus,
        reasons: &[String],
        experiment_id: &str,
    ) -> Result<()> {
        self.write(|w| w.update_slot(schedule, slot_ms, status, reasons, experiment_id))
    }

    /// Slots decided at or after `since`, oldest first (`schedule` empty: all).
    pub fn schedule_runs(
        &self,
        since: SystemTime,
        schedule: &str,
        limit: u32,
    ) -> Result<Vec<ScheduleRun>> {
        let db = self.db();
        let mut q = db.prepare(
            "SELECT * FROM (SELECT * FROM schedule_runs WHERE slot_ms >= ?1 AND (?2 = '' OR schedule = ?2)
             ORDER BY seq DESC LIMIT ?3) ORDER BY seq",
        )?;
        let rows = q.query_map(params![ms(since), schedule, limit.max(1)], run_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn last_schedule_run(&self, schedule: &str) -> Result<Option<ScheduleRun>> {
        Ok(self
            .db()
            .query_row(
                "SELECT * FROM schedule_runs WHERE schedule = ?1 ORDER BY seq DESC LIMIT 1",
                [schedule],
                run_row,
            )
            .optional()?)
    }
}

impl Writer<'_> {
    pub fn set_schedule_next(&self, name: &str, timing: &str, next_ms: Option<i64>) -> Result<()> {
        self.db.execute(
            "INSERT INTO schedule_state (name, timing, next_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT(name) DO UPDATE SET timing = ?2, next_ms = ?3",
            params![name, timing, next_ms],
        )?;
        Ok(())
    }

    pub fn set_schedule_paused(&self, name: &str, paused: bool, by: &str) -> Result<()> {
        self.db.execute(
            "UPDATE schedule_state SET paused = ?2, paused_by = ?3 WHERE name = ?1",
            params![name, paused as i64, if paused { by } else { "" }],
        )?;
        Ok(())
    }

    pub fn record_slot(&self, run: &ScheduleRun, next_ms: Option<i64>) -> Result<bool> {
        let slot_ms = faultline_proto::v1::timestamp_ms(run.slot.as_ref()).unwrap_or(0);
        let inserted = self.db.execute(
            "INSERT OR IGNORE INTO schedule_runs (schedule, slot_ms, at_ms, status, reasons, experiment_id, scenario)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                run.schedule,
                slot_ms,
                ms(SystemTime::now()),
                run.status,
                run.reasons.join("\n"),
                run.experiment_id,
                run.scenario
            ],
        )? == 1;
        if inserted {
            self.db.execute(
                "UPDATE schedule_state SET next_ms = ?2 WHERE name = ?1",
                params![run.schedule, next_ms],
            )?;
        }
        Ok(inserted)
    }

    pub fn update_slot(
        &self,
        schedule: &str,
        slot_ms: i64,
        status: RunStatus,
        reasons: &[String],
        experiment_id: &str,
    ) -> Result<()> {
        self.db.execute(
            "UPDATE schedule_runs SET status = ?3, reasons = ?4, experiment_id = ?5
             WHERE schedule = ?1 AND slot_ms = ?2",
            params![
                schedule,
                slot_ms,
                status as i32,
                reasons.join("\n"),
                experiment_id
            ],
        )?;
        Ok(())
    }
}
