//! Game days (announced windows opened by an admin) and their notes: issues found,
//! lessons learned. A game day's state is derived from its times and its close, so
//! it is right after a restart without anyone closing it again.
use std::time::SystemTime;

use anyhow::Result;
use faultline_proto::v1::{GameDay, GameDayNote, GameDayState};
use rusqlite::{Connection, OptionalExtension, params};

use super::{Store, Writer, ms, time};

pub(super) fn migrate(db: &Connection) -> Result<()> {
    db.execute_batch(
        "CREATE TABLE IF NOT EXISTS gamedays (
             seq INTEGER PRIMARY KEY AUTOINCREMENT,
             id TEXT UNIQUE NOT NULL,
             title TEXT NOT NULL,
             announcement TEXT NOT NULL,
             start_ms INTEGER NOT NULL,
             end_ms INTEGER NOT NULL,
             max_concurrent INTEGER NOT NULL,
             max_nodes INTEGER NOT NULL,
             opened_by TEXT NOT NULL,
             closed_ms INTEGER,
             close_reason TEXT NOT NULL DEFAULT '');
         CREATE TABLE IF NOT EXISTS gameday_notes (
             seq INTEGER PRIMARY KEY AUTOINCREMENT,
             gameday TEXT NOT NULL,
             kind INTEGER NOT NULL,
             text TEXT NOT NULL,
             by TEXT NOT NULL,
             at_ms INTEGER NOT NULL);",
    )?;
    Ok(())
}

/// What a game day is opened with.
pub struct NewGameDay<'a> {
    pub title: &'a str,
    pub announcement: &'a str,
    pub start: SystemTime,
    pub end: SystemTime,
    pub max_concurrent: u32,
    pub max_nodes: u32,
    pub opened_by: &'a str,
}

impl Writer<'_> {
    pub fn create_gameday(&self, g: &NewGameDay<'_>) -> Result<String> {
        let seq: i64 =
            self.db
                .query_row("SELECT COALESCE(MAX(seq), 0) + 1 FROM gamedays", [], |r| {
                    r.get(0)
                })?;
        let id = format!("gd-{seq:04}");
        self.db.execute(
            "INSERT INTO gamedays (seq, id, title, announcement, start_ms, end_ms, max_concurrent, max_nodes, opened_by)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                seq,
                id,
                g.title,
                g.announcement,
                ms(g.start),
                ms(g.end),
                g.max_concurrent,
                g.max_nodes,
                g.opened_by
            ],
        )?;
        Ok(id)
    }

    pub fn close_gameday(&self, id: &str, reason: &str, at: SystemTime) -> Result<()> {
        self.db.execute(
            "UPDATE gamedays SET closed_ms = ?2, close_reason = ?3 WHERE id = ?1 AND closed_ms IS NULL",
            params![id, ms(at), reason],
        )?;
        Ok(())
    }

    pub fn add_gameday_note(&self, id: &str, note: &GameDayNote) -> Result<()> {
        self.db.execute(
            "INSERT INTO gameday_notes (gameday, kind, text, by, at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![id, note.kind, note.text, note.by, ms(SystemTime::now())],
        )?;
        Ok(())
    }
}

impl Store {
    /// Every game day, oldest first, with its state as of `now`.
    pub fn gamedays(&self, now: SystemTime) -> Result<Vec<GameDay>> {
        let ids: Vec<String> = {
            let db = self.db();
            let mut q = db.prepare("SELECT id FROM gamedays ORDER BY seq")?;
            q.query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?
        };
        let mut out = Vec::new();
        for id in ids {
            if let Some(g) = self.gameday(&id, now)? {
                out.push(g);
            }
        }
        Ok(out)
    }

    pub fn gameday(&self, id: &str, now: SystemTime) -> Result<Option<GameDay>> {
        let now = ms(now);
        let g = self
            .db()
            .query_row("SELECT * FROM gamedays WHERE id = ?1", [id], |r| {
                let start: i64 = r.get("start_ms")?;
                let end: i64 = r.get("end_ms")?;
                let closed: Option<i64> = r.get("closed_ms")?;
                let state = if closed.is_some() || now >= end {
                    GameDayState::Closed
                } else if now < start {
                    GameDayState::Announced
                } else {
                    GameDayState::Open
                };
                Ok(GameDay {
                    id: r.get("id")?,
                    title: r.get("title")?,
                    announcement: r.get("announcement")?,
                    start: Some(time(start)),
                    end: Some(time(end)),
                    state: state as i32,
                    max_concurrent: r.get("max_concurrent")?,
                    max_nodes: r.get("max_nodes")?,
                    opened_by: r.get("opened_by")?,
                    closed_at: closed.or((now >= end).then_some(end)).map(time),
                    close_reason: r.get("close_reason")?,
                    ..Default::default()
                })
            })
            .optional()?;
        let Some(mut g) = g else { return Ok(None) };
        {
            let db = self.db();
            let mut q = db.prepare(
                "SELECT kind, text, by, at_ms FROM gameday_notes WHERE gameday = ?1 ORDER BY seq",
            )?;
            g.notes = q
                .query_map([id], |r| {
                    Ok(GameDayNote {
                        kind: r.get(0)?,
                        text: r.get(1)?,
                        by: r.get(2)?,
                        at: Some(time(r.get(3)?)),
                    })
                })?
                .collect::<rusqlite::Result<_>>()?;
        }
        g.experiment_ids = self.gameday_experiments(id)?;
        Ok(Some(g))
    }
}

impl Store {
    /// The game day open at `now` (started, not ended, not closed), if any; game days
    /// never overlap.
    pub fn open_gameday_id(&self, now: SystemTime) -> Result<Option<String>> {
        Ok(self
            .db()
            .query_row(
                "SELECT id FROM gamedays WHERE closed_ms IS NULL AND start_ms <= ?1 AND end_ms > ?1
                 ORDER BY seq DESC LIMIT 1",
                [ms(now)],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Game days past their end that nobody closed yet: (id, end).
    pub fn gamedays_to_close(&self, now: SystemTime) -> Result<Vec<(String, SystemTime)>> {
        let db = self.db();
        let mut q =
            db.prepare("SELECT id, end_ms FROM gamedays WHERE closed_ms IS NULL AND end_ms <= ?1")?;
        let rows = q.query_map([ms(now)], |r| {
            let end: i64 = r.get(1)?;
            Ok((
                r.get::<_, String>(0)?,
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(end.max(0) as u64),
            ))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}
