//! The coordinator's embedded store (SQLite, WAL, `synchronous=FULL` so a commit is
//! on disk before it is acknowledged): experiments with their typed outcome, their
//! events, their health readings (one a second), and leases. Faults and outcomes are
//! stored as their protobuf encoding, so the store follows the contract.
//!
//! Writes are few (a handful per experiment); one connection behind a mutex is enough.
//! Schedules, game days and findings keep their tables in the submodules.
mod audit;
mod findings;
mod gamedays;
mod schedules;

pub use gamedays::NewGameDay;
pub use schedules::ScheduleState;

use std::{
    path::Path,
    sync::Mutex,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use faultline_proto::v1::{
    Experiment, ExperimentEvent, FaultSpec, GuardReport, Outcome, Phase, Verdict,
};

use crate::health::Reading;
use prost::Message;
use rusqlite::{Connection, OptionalExtension, params};

pub struct Store {
    db: Mutex<Connection>,
}

/// What an experiment is created with.
pub struct NewExperiment<'a> {
    pub name: &'a str,
    pub nodes: &'a [String],
    pub fault: &'a FaultSpec,
    pub scenario: &'a str,
    pub spec_yaml: &'a str,
    pub probes: &'a [String],
    /// The schedule entry that started it ("" for a person or CI).
    pub schedule: &'a str,
    /// The game day it runs in ("" outside one).
    pub gameday: &'a str,
}

/// One health reading on an experiment's timeline, as recorded (about once a second).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct TimelinePoint {
    pub at_ms: i64,
    /// The experiment's phase when it was taken (`Phase` as a number).
    pub phase: i32,
    pub error_rate_percent: Option<f64>,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub throughput_rps: Option<f64>,
    pub health_score: Option<f64>,
    pub node_cpu_percent: Option<f64>,
    pub node_memory_percent: Option<f64>,
    /// Where the health values came from ("http", "prometheus", ...; "" for none).
    pub source: String,
}

pub(crate) fn ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub(crate) fn time(ms: i64) -> prost_types::Timestamp {
    (UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)).into()
}

pub fn is_terminal(phase: Phase) -> bool {
    matches!(
        phase,
        Phase::Completed | Phase::Aborted | Phase::Failed | Phase::Interrupted
    )
}

impl Store {
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        }
        let db = Connection::open(path).with_context(|| format!("open {}", path.display()))?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "FULL")?;
        db.busy_timeout(Duration::from_secs(5))?;
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS experiments (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT,
                 id TEXT UNIQUE NOT NULL,
                 name TEXT NOT NULL,
                 nodes TEXT NOT NULL,
                 fault BLOB NOT NULL,
                 phase INTEGER NOT NULL,
                 started_ms INTEGER NOT NULL,
                 ended_ms INTEGER,
                 recovery_ms INTEGER,
                 result TEXT NOT NULL DEFAULT '',
                 lease_id TEXT NOT NULL DEFAULT '');
             CREATE TABLE IF NOT EXISTS events (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT,
                 experiment_id TEXT NOT NULL,
                 at_ms INTEGER NOT NULL,
                 phase INTEGER NOT NULL,
                 node TEXT NOT NULL,
                 message TEXT NOT NULL);
             CREATE INDEX IF NOT EXISTS events_by_experiment ON events(experiment_id);
             CREATE TABLE IF NOT EXISTS leases (
                 id TEXT PRIMARY KEY,
                 experiment_id TEXT NOT NULL,
                 nodes TEXT NOT NULL,
                 granted_ms INTEGER NOT NULL,
                 released_ms INTEGER,
                 release_reason TEXT);
             CREATE TABLE IF NOT EXISTS readings (
                 experiment_id TEXT NOT NULL,
                 at_ms INTEGER NOT NULL,
                 phase INTEGER NOT NULL,
                 source TEXT NOT NULL,
                 error_rate REAL, latency_p50_ms REAL, latency_p99_ms REAL,
                 throughput REAL, health_score REAL, traffic_vs_peak REAL,
                 active_incidents INTEGER NOT NULL,
                 node_cpu REAL, node_memory REAL);
             CREATE INDEX IF NOT EXISTS readings_by_experiment ON readings(experiment_id, at_ms);",
        )?;
        // Columns added after the first release: a store from before gains them.
        let have: Vec<String> = db
            .prepare("SELECT name FROM pragma_table_info('experiments')")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        for (col, ty) in [
            ("scenario", "TEXT NOT NULL DEFAULT ''"),
            ("spec_yaml", "TEXT NOT NULL DEFAULT ''"),
            ("probes", "TEXT NOT NULL DEFAULT ''"),
            ("outcome", "BLOB"),
            ("baseline_p99_ms", "REAL"),
            ("schedule", "TEXT NOT NULL DEFAULT ''"),
            ("gameday", "TEXT NOT NULL DEFAULT ''"),
        ] {
            if !have.iter().any(|h| h == col) {
                db.execute_batch(&format!("ALTER TABLE experiments ADD COLUMN {col} {ty}"))?;
            }
        }
        schedules::migrate(&db)?;
        gamedays::migrate(&db)?;
        findings::migrate(&db)?;
        audit::migrate(&db)?;
        Ok(Self { db: Mutex::new(db) })
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The highest experiment number used so far (ids are `exp-<number>`).
    pub fn last_seq(&self) -> Result<u64> {
        let n: i64 =
            self.db()
                .query_row("SELECT COALESCE(MAX(seq), 0) FROM experiments", [], |r| {
                    r.get(0)
                })?;
        Ok(n as u64)
    }

    pub fn experiment_id(seq: u64) -> String {
        format!("exp-{seq:06}")
    }

    /// Inserts experiment number `seq` (from `last_seq() + n`) and returns its id.
    pub fn create_experiment(&self, seq: u64, new: &NewExperiment<'_>) -> Result<String> {
        let id = Self::experiment_id(seq);
        let next = seq as i64;
        let mut db = self.db();
        let tx = db.transaction()?;
        tx.execute(
            "INSERT INTO experiments (seq, id, name, nodes, fault, phase, started_ms, scenario, spec_yaml, probes, schedule, gameday)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![
                next,
                id,
                new.name,
                new.nodes.join(","),
                new.fault.encode_to_vec(),
                Phase::Preflight as i32,
                ms(SystemTime::now()),
                new.scenario,
                new.spec_yaml,
                new.probes.join(","),
                new.schedule,
                new.gameday,
            ],
        )?;
        tx.commit()?;
        Ok(id)
    }

    pub fn record_event(&self, ev: &ExperimentEvent) -> Result<()> {
        let at = ev
            .at
            .and_then(|t| SystemTime::try_from(t).ok())
            .unwrap_or_else(SystemTime::now);
        let db = self.db();
        db.execute(
            "INSERT INTO events (experiment_id, at_ms, phase, node, message) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![ev.experiment_id, ms(at), ev.phase, ev.node, ev.message],
        )?;
        db.execute(
            "UPDATE experiments SET phase = ?2 WHERE id = ?1",
            params![ev.experiment_id, ev.phase],
        )?;
        Ok(())
    }

    pub fn set_lease(&self, experiment_id: &str, lease_id: &str, nodes: &[String]) -> Result<()> {
        let mut db = self.db();
        let tx = db.transaction()?;
        tx.execute(
            "UPDATE experiments SET lease_id = ?2 WHERE id = ?1",
            params![experiment_id, lease_id],
        )?;
        tx.execute(
            "INSERT INTO leases (id, experiment_id, nodes, granted_ms) VALUES (?1, ?2, ?3, ?4)",
            params![
                lease_id,
                experiment_id,
                nodes.join(","),
                ms(SystemTime::now())
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    pub fn release_lease(&self, lease_id: &str, reason: &str) -> Result<()> {
        self.db().execute(
            "UPDATE leases SET released_ms = ?2, release_reason = ?3 WHERE id = ?1 AND released_ms IS NULL",
            params![lease_id, ms(SystemTime::now()), reason],
        )?;
        Ok(())
    }

    /// Ends an experiment in `phase` with its outcome.
    pub fn finish(&self, id: &str, phase: Phase, outcome: &Outcome) -> Result<()> {
        let recovery = outcome
            .recovery_time
            .and_then(|d| Duration::try_from(d).ok());
        self.db().execute(
            "UPDATE experiments SET phase = ?2, result = ?3, ended_ms = ?4, recovery_ms = ?5, outcome = ?6 WHERE id = ?1",
            params![
                id,
                phase as i32,
                outcome.message,
                ms(SystemTime::now()),
                recovery.map(|d| d.as_millis() as i64),
                outcome.encode_to_vec(),
            ],
        )?;
        Ok(())
    }

    /// One health reading of a running experiment (about once a second).
    pub fn record_reading(
        &self,
        experiment_id: &str,
        phase: Phase,
        r: &Reading,
        node_cpu: Option<f64>,
        node_memory: Option<f64>,
    ) -> Result<()> {
        self.db().execute(
            "INSERT INTO readings (experiment_id, at_ms, phase, source, error_rate, latency_p50_ms,
                 latency_p99_ms, throughput, health_score, traffic_vs_peak, active_incidents,
                 node_cpu, node_memory)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            params![
                experiment_id,
                ms(r.at.unwrap_or_else(SystemTime::now)),
                phase as i32,
                r.source(),
                r.error_rate(),
                r.http.map(|h| h.p50_ms),
                r.p99_ms(),
                r.throughput(),
                r.health_score,
                r.traffic_vs_peak,
                r.incidents() as i64,
                node_cpu,
                node_memory,
            ],
        )?;
        Ok(())
    }

    /// How many health readings an experiment recorded.
    /// The latest recorded reading of an experiment.
    pub fn last_reading(
        &self,
        experiment_id: &str,
    ) -> Result<Option<faultline_proto::v1::HealthReading>> {
        Ok(self
            .db()
            .query_row(
                "SELECT at_ms, source, error_rate, latency_p50_ms, latency_p99_ms, throughput,
                        health_score, traffic_vs_peak, active_incidents
                 FROM readings WHERE experiment_id = ?1 ORDER BY at_ms DESC LIMIT 1",
                [experiment_id],
                |r| {
                    let err: Option<f64> = r.get(2)?;
                    Ok(faultline_proto::v1::HealthReading {
                        at: Some(time(r.get(0)?)),
                        source: r.get(1)?,
                        error_rate_percent: err,
                        latency_p50_ms: r.get(3)?,
                        latency_p99_ms: r.get(4)?,
                        throughput_rps: r.get(5)?,
                        health_score: r.get(6)?,
                        traffic_vs_peak_percent: r.get::<_, Option<f64>>(7)?.map(|t| t * 100.0),
                        active_incidents: r.get::<_, i64>(8)? as u32,
                        availability_percent: err.map(|e| 100.0 - e),
                    })
                },
            )
            .optional()?)
    }

    /// Every recorded reading of an experiment, oldest first: its timeline.
    pub fn timeline(&self, experiment_id: &str) -> Result<Vec<TimelinePoint>> {
        self.points(experiment_id, "ORDER BY at_ms")
    }

    /// The latest recorded reading of an experiment, with every field the timeline has.
    pub fn latest_point(&self, experiment_id: &str) -> Result<Option<TimelinePoint>> {
        Ok(self
            .points(experiment_id, "ORDER BY at_ms DESC LIMIT 1")?
            .pop())
    }

    fn points(&self, experiment_id: &str, order: &str) -> Result<Vec<TimelinePoint>> {
        let db = self.db();
        let mut q = db.prepare(&format!(
            "SELECT at_ms, phase, error_rate, latency_p50_ms, latency_p99_ms, throughput,
                    health_score, node_cpu, node_memory, source
             FROM readings WHERE experiment_id = ?1 {order}"
        ))?;
        let rows = q.query_map([experiment_id], |r| {
            Ok(TimelinePoint {
                at_ms: r.get(0)?,
                phase: r.get(1)?,
                error_rate_percent: r.get(2)?,
                latency_p50_ms: r.get(3)?,
                latency_p99_ms: r.get(4)?,
                throughput_rps: r.get(5)?,
                health_score: r.get(6)?,
                node_cpu_percent: r.get(7)?,
                node_memory_percent: r.get(8)?,
                source: r.get(9)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn reading_count(&self, experiment_id: &str) -> Result<u64> {
        let n: i64 = self.db().query_row(
            "SELECT COUNT(*) FROM readings WHERE experiment_id = ?1",
            [experiment_id],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }

    /// The probes' p99 over an experiment's baseline.
    pub fn set_baseline_p99(&self, experiment_id: &str, p99_ms: f64) -> Result<()> {
        self.db().execute(
            "UPDATE experiments SET baseline_p99_ms = ?2 WHERE id = ?1",
            params![experiment_id, p99_ms],
        )?;
        Ok(())
    }

    /// The median of the probes' baseline p99 (ms) in the last ten completed
    /// experiments that used the same probes: what `latency_within_baseline`
    /// compares with when no PromQL baseline is configured.
    pub fn recorded_baseline_p99(&self, probes: &[String]) -> Result<Option<f64>> {
        if probes.is_empty() {
            return Ok(None);
        }
        let db = self.db();
        let mut q = db.prepare(
            "SELECT baseline_p99_ms FROM experiments
             WHERE probes = ?1 AND baseline_p99_ms IS NOT NULL AND phase = ?2
             ORDER BY seq DESC LIMIT 10",
        )?;
        let mut p99: Vec<f64> = q
            .query_map(params![probes.join(","), Phase::Completed as i32], |r| {
                r.get(0)
            })?
            .collect::<rusqlite::Result<_>>()?;
        if p99.is_empty() {
            return Ok(None);
        }
        p99.sort_by(f64::total_cmp);
        Ok(Some(p99[p99.len() / 2]))
    }

    /// An agent's guard report, as an event of the experiment that holds its lease.
    pub fn record_guard_report(&self, node: &str, g: &GuardReport) -> Result<()> {
        let db = self.db();
        let id: Option<String> = db
            .query_row(
                "SELECT experiment_id FROM leases WHERE id = ?1",
                [&g.lease_id],
                |r| r.get(0),
            )
            .optional()?;
        let Some(id) = id else { return Ok(()) };
        let at = g
            .visible_at
            .and_then(|t| SystemTime::try_from(t).ok())
            .unwrap_or_else(SystemTime::now);
        let seen: i64 = db.query_row(
            "SELECT COUNT(*) FROM events WHERE experiment_id = ?1 AND message LIKE ?2",
            params![id, format!("agent-side guard report {}%", g.report_id)],
            |r| r.get(0),
        )?;
        if seen == 0 {
            db.execute(
                "INSERT INTO events (experiment_id, at_ms, phase, node, message) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    id,
                    ms(at),
                    Phase::Fault as i32,
                    node,
                    format!(
                        "agent-side guard report {}: {} {:.3}{} vs {}{}; the agent removed the effect",
                        g.report_id, g.guard, g.observed, g.unit, g.threshold, g.unit
                    )
                ],
            )?;
        }
        Ok(())
    }

    /// At start-up: every experiment a previous coordinator left running is marked
    /// `interrupted` and its lease released. Returns (experiment id, lease id) pairs.
    pub fn interrupt_unfinished(&self) -> Result<Vec<(String, String)>> {
        let mut db = self.db();
        let tx = db.transaction()?;
        let unfinished: Vec<(String, String)> = {
            let mut q = tx.prepare(
                "SELECT id, lease_id FROM experiments WHERE phase NOT IN (?1, ?2, ?3, ?4)",
            )?;
            q.query_map(
                params![
                    Phase::Completed as i32,
                    Phase::Aborted as i32,
                    Phase::Failed as i32,
                    Phase::Interrupted as i32
                ],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?
            .collect::<rusqlite::Result<_>>()?
        };
        let now = ms(SystemTime::now());
        for (id, lease) in &unfinished {
            let msg = "the coordinator restarted while this experiment ran; its effects are \
                       removed by the agents and its lease is freed";
            let outcome = Outcome {
                verdict: Verdict::Interrupted as i32,
                message: msg.to_owned(),
                ..Default::default()
            };
            tx.execute(
                "UPDATE experiments SET phase = ?2, result = ?3, ended_ms = ?4, outcome = ?5 WHERE id = ?1",
                params![id, Phase::Interrupted as i32, msg, now, outcome.encode_to_vec()],
            )?;
            tx.execute(
                "INSERT INTO events (experiment_id, at_ms, phase, node, message) VALUES (?1, ?2, ?3, '', ?4)",
                params![id, now, Phase::Interrupted as i32, msg],
            )?;
            tx.execute(
                "UPDATE leases SET released_ms = ?2, release_reason = 'coordinator restart' WHERE id = ?1 AND released_ms IS NULL",
                params![lease, now],
            )?;
        }
        tx.commit()?;
        Ok(unfinished)
    }

    fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Experiment> {
        let nodes: String = r.get("nodes")?;
        let fault: Vec<u8> = r.get("fault")?;
        Ok(Experiment {
            id: r.get("id")?,
            name: r.get("name")?,
            nodes: nodes
                .split(',')
                .filter(|n| !n.is_empty())
                .map(str::to_owned)
                .collect(),
            fault: FaultSpec::decode(fault.as_slice()).ok(),
            phase: r.get("phase")?,
            started: Some(time(r.get("started_ms")?)),
            ended: r.get::<_, Option<i64>>("ended_ms")?.map(time),
            recovery_time: r
                .get::<_, Option<i64>>("recovery_ms")?
                .and_then(|m| Duration::from_millis(m.max(0) as u64).try_into().ok()),
            result: r.get("result")?,
            outcome: r
                .get::<_, Option<Vec<u8>>>("outcome")?
                .and_then(|b| Outcome::decode(b.as_slice()).ok()),
            scenario: r.get("scenario")?,
            spec_yaml: r.get("spec_yaml")?,
            schedule: r.get("schedule")?,
            gameday_id: r.get("gameday")?,
        })
    }

    pub fn experiment(&self, id: &str) -> Result<Option<Experiment>> {
        Ok(self
            .db()
            .query_row("SELECT * FROM experiments WHERE id = ?1", [id], Self::row)
            .optional()?)
    }

    /// The newest `limit` experiments, newest first.
    pub fn experiments(&self, limit: u32) -> Result<Vec<Experiment>> {
        let db = self.db();
        let mut q = db.prepare("SELECT * FROM experiments ORDER BY seq DESC LIMIT ?1")?;
        let rows = q.query_map([limit.max(1)], Self::row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Experiments started at or after `since` (optionally of one scenario), oldest
    /// first: what reports and statistics read.
    pub fn experiments_since(&self, since: SystemTime, scenario: &str) -> Result<Vec<Experiment>> {
        let db = self.db();
        let mut q = db.prepare(
            "SELECT * FROM experiments WHERE started_ms >= ?1 AND (?2 = '' OR scenario = ?2) ORDER BY seq",
        )?;
        let rows = q.query_map(params![ms(since), scenario], Self::row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The ids of the experiments a game day ran, in order.
    pub fn gameday_experiments(&self, gameday: &str) -> Result<Vec<String>> {
        let db = self.db();
        let mut q = db.prepare("SELECT id FROM experiments WHERE gameday = ?1 ORDER BY seq")?;
        let rows = q.query_map([gameday], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn events(&self, id: &str) -> Result<Vec<ExperimentEvent>> {
        let db = self.db();
        let mut q = db.prepare(
            "SELECT at_ms, phase, node, message FROM events WHERE experiment_id = ?1 ORDER BY seq",
        )?;
        let rows = q.query_map([id], |r| {
            Ok(ExperimentEvent {
                experiment_id: id.to_owned(),
                at: Some(time(r.get(0)?)),
                phase: r.get(1)?,
                node: r.get(2)?,
                message: r.get(3)?,
                ..Default::default()
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unfinished_experiments_are_interrupted_on_reopen_and_history_is_kept() {
        let path = std::env::temp_dir().join(format!("fl-store-{}.db", std::process::id()));
        let _ = std::fs::remove_file(&path);
        {
            let s = Store::open(&path).unwrap();
            let (n1, n2, fault) = (
                ["node-1".to_owned()],
                ["node-2".to_owned()],
                FaultSpec::default(),
            );
            let new = |name, nodes| NewExperiment {
                name,
                nodes,
                fault: &fault,
                scenario: "packet_loss",
                spec_yaml: "",
                probes: &[],
                schedule: "",
                gameday: "",
            };
            let a = s
                .create_experiment(s.last_seq().unwrap() + 1, &new("done", &n1))
                .unwrap();
            s.finish(
                &a,
                Phase::Completed,
                &Outcome {
                    verdict: Verdict::Passed as i32,
                    message: "recovered".into(),
                    recovery_time: Duration::from_millis(1200).try_into().ok(),
                    ..Default::default()
                },
            )
            .unwrap();
            let b = s
                .create_experiment(s.last_seq().unwrap() + 1, &new("running", &n2))
                .unwrap();
            s.set_lease(&b, "lease-1-b", &["node-2".into()]).unwrap();
            s.record_event(&ExperimentEvent {
                experiment_id: b.clone(),
                phase: Phase::Fault as i32,
                message: "applied".into(),
                ..Default::default()
            })
            .unwrap();
            assert_eq!((a.as_str(), b.as_str()), ("exp-000001", "exp-000002"));
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(
            s.interrupt_unfinished().unwrap(),
            vec![("exp-000002".to_owned(), "lease-1-b".to_owned())]
        );
        let list = s.experiments(10).unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].phase, Phase::Interrupted as i32);
        assert_eq!(
            list[0].outcome.as_ref().unwrap().verdict,
            Verdict::Interrupted as i32
        );
        assert_eq!(list[1].outcome.as_ref().unwrap().message, "recovered");
        assert_eq!(list[1].phase, Phase::Completed as i32);
        assert_eq!(list[1].recovery_time.unwrap().nanos, 200_000_000);
        let events = s.events("exp-000002").unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].message, "applied");
        assert!(s.interrupt_unfinished().unwrap().is_empty());
        for ext in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{ext}", path.display()));
        }
    }
}
