//! The audit log: append-only (the store offers no update or delete for it), one row
//! per action a person or the scheduler took — who (token name and peer address),
//! what, on what.
use std::time::SystemTime;

use anyhow::Result;
use faultline_proto::v1::AuditEntry;
use rusqlite::{Connection, params};

use super::{Audit, Store, Writer, ms, time};

pub(super) fn migrate(db: &Connection) -> Result<()> {
    db.execute_batch(
        "CREATE TABLE IF NOT EXISTS audit (
             seq INTEGER PRIMARY KEY AUTOINCREMENT,
             at_ms INTEGER NOT NULL,
             who TEXT NOT NULL,
             peer TEXT NOT NULL,
             action TEXT NOT NULL,
             target TEXT NOT NULL,
             detail TEXT NOT NULL);
         CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
             BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
         CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
             BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;",
    )?;
    Ok(())
}

impl Writer<'_> {
    pub fn audit(&self, a: &Audit, at_ms: i64) -> Result<()> {
        self.db.execute(
            "INSERT INTO audit (at_ms, who, peer, action, target, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![at_ms, a.who, a.peer, a.action, a.target, a.detail],
        )?;
        Ok(())
    }
}

impl Store {
    /// Entries at or after `since`, oldest first, the newest `limit`.
    pub fn audit_log(&self, since: SystemTime, limit: u32) -> Result<Vec<AuditEntry>> {
        let db = self.db();
        let mut q = db.prepare(
            "SELECT * FROM (SELECT * FROM audit WHERE at_ms >= ?1 ORDER BY seq DESC LIMIT ?2) ORDER BY seq",
        )?;
        let rows = q.query_map(params![ms(since), limit.max(1)], |r| {
            Ok(AuditEntry {
                seq: r.get::<_, i64>("seq")? as u64,
                at: Some(time(r.get("at_ms")?)),
                who: r.get("who")?,
                peer: r.get("peer")?,
                action: r.get("action")?,
                target: r.get("target")?,
                detail: r.get("detail")?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_audit_log_is_append_only() {
        let path = std::env::temp_dir().join(format!("fl-audit-{}.db", std::process::id()));
        let s = Store::open(&path).unwrap();
        let entry = |who: &str, peer: &str, action: &str, target: &str, detail: &str| Audit {
            who: who.into(),
            peer: peer.into(),
            action: action.into(),
            target: target.into(),
            detail: detail.into(),
        };
        s.audited(
            &entry("ci", "10.0.0.1:5555", "abort", "exp-000001", "reason: test"),
            |_| Ok(()),
        )
        .unwrap();
        s.audit_or_defer(entry(
            "scheduler",
            "",
            "experiment.start",
            "exp-000002",
            "schedule nightly",
        ));
        let log = s.audit_log(SystemTime::UNIX_EPOCH, 10).unwrap();
        assert_eq!(log.len(), 2);
        assert_eq!(
            (log[0].who.as_str(), log[0].action.as_str()),
            ("ci", "abort")
        );
        for sql in ["UPDATE audit SET who = 'x'", "DELETE FROM audit"] {
            let e = s.db().execute(sql, []).unwrap_err().to_string();
            assert!(e.contains("append-only"), "{e}");
        }
        assert_eq!(s.audit_log(SystemTime::UNIX_EPOCH, 10).unwrap().len(), 2);
        for ext in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{ext}", path.display()));
        }
    }
}
