//! Findings: what an experiment uncovered, and how far it has been dealt with. The
//! dashboard's "Issues Found: 4 (all resolved)" is a count of these rows.
use std::time::SystemTime;

use anyhow::Result;
use faultline_proto::v1::{Finding, FindingStatus};
use rusqlite::{Connection, OptionalExtension, params};

use super::{Store, Writer, ms, time};

pub(super) fn migrate(db: &Connection) -> Result<()> {
    db.execute_batch(
        "CREATE TABLE IF NOT EXISTS findings (
             seq INTEGER PRIMARY KEY AUTOINCREMENT,
             id TEXT UNIQUE NOT NULL,
             experiment_id TEXT NOT NULL,
             scenario TEXT NOT NULL,
             title TEXT NOT NULL,
             status INTEGER NOT NULL,
             detail TEXT NOT NULL,
             by TEXT NOT NULL,
             created_ms INTEGER NOT NULL,
             updated_ms INTEGER NOT NULL);",
    )?;
    Ok(())
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Finding> {
    Ok(Finding {
        id: r.get("id")?,
        experiment_id: r.get("experiment_id")?,
        title: r.get("title")?,
        status: r.get("status")?,
        detail: r.get("detail")?,
        created: Some(time(r.get("created_ms")?)),
        updated: Some(time(r.get("updated_ms")?)),
        by: r.get("by")?,
        scenario: r.get("scenario")?,
    })
}

impl Writer<'_> {
    pub fn add_finding(&self, f: &Finding) -> Result<Finding> {
        let now = ms(SystemTime::now());
        let seq: i64 =
            self.db
                .query_row("SELECT COALESCE(MAX(seq), 0) + 1 FROM findings", [], |r| {
                    r.get(0)
                })?;
        let id = format!("fnd-{seq:04}");
        self.db.execute(
            "INSERT INTO findings (seq, id, experiment_id, scenario, title, status, detail, by, created_ms, updated_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9)",
            params![seq, id, f.experiment_id, f.scenario, f.title, f.status, f.detail, f.by, now],
        )?;
        Ok(self
            .db
            .query_row("SELECT * FROM findings WHERE id = ?1", [&id], row)?)
    }

    pub fn update_finding(&self, id: &str, status: FindingStatus) -> Result<Option<Finding>> {
        self.db.execute(
            "UPDATE findings SET status = ?2, updated_ms = ?3 WHERE id = ?1",
            params![id, status as i32, ms(SystemTime::now())],
        )?;
        Ok(self
            .db
            .query_row("SELECT * FROM findings WHERE id = ?1", [id], row)
            .optional()?)
    }
}

impl Store {
    /// Findings recorded at or after `since`, oldest first.
    pub fn findings(&self, since: SystemTime) -> Result<Vec<Finding>> {
        let db = self.db();
        let mut q = db.prepare("SELECT * FROM findings WHERE created_ms >= ?1 ORDER BY seq")?;
        let rows = q.query_map([ms(since)], row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}
