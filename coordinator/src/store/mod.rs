//! The coordinator's embedded store (SQLite, WAL, `synchronous=FULL` so a commit is
//! on disk before it is acknowledged): experiments with their typed outcome, their
//! events, their health readings (one a second), and leases. Faults and outcomes are
//! stored as their protobuf encoding, so the store follows the contract.
//!
//! Writes are few (a handful per experiment); one connection behind a mutex is enough.
//! Schedules, game days and findings keep their tables in the submodules.
//!
//! Invariants of writing:
//! - every change is a method of `Writer`, run inside one transaction by
//!   `Store::write`; a person's action and its audit record commit together
//!   (`Store::audited`) or not at all, so an action that cannot be recorded is refused;
//! - what must land whatever happens — an experiment's end, its lease's release, its
//!   phase events, the kill switch engaged by an abort, an abort's audit record — is
//!   kept in memory when a write fails (`Store::write_or_defer`) and written, in order,
//!   before the next write, or by `Store::flush` from the coordinator's clock;
//! - while writes fail, or records wait, the store says so once in the log (not once
//!   per write), and `Store::writable` refuses new experiments;
//! - `Store::open` refuses a store that fails SQLite's quick check or cannot be
//!   written.
mod audit;
mod findings;
mod gamedays;
mod schedules;

pub use gamedays::NewGameDay;
pub use schedules::ScheduleState;

use std::{
    collections::VecDeque,
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
    /// Records that must land but could not be written yet, oldest first.
    deferred: Mutex<VecDeque<Deferred>>,
    health: Mutex<WriteHealth>,
}

/// Whether writes land, remembered so that a failing store is logged once.
#[derive(Default)]
struct WriteHealth {
    /// The first error of the current run of failures.
    failing: Option<String>,
    failures: u64,
}

/// One transaction of changes (see `Store::write`).
pub struct Writer<'a> {
    db: &'a Connection,
}

/// Who did an audited action, and what (one row of the audit log).
#[derive(Clone, Debug, Default)]
pub struct Audit {
    pub who: String,
    pub peer: String,
    pub action: String,
    pub target: String,
    pub detail: String,
}

/// A record that must land even if the write fails now (see `Store::write_or_defer`),
/// with the time it happened.
#[derive(Clone, Debug)]
pub enum Deferred {
    Event(Box<ExperimentEvent>),
    Finish {
        id: String,
        phase: Phase,
        outcome: Box<Outcome>,
        at_ms: i64,
    },
    ReleaseLease {
        lease_id: String,
        reason: String,
        at_ms: i64,
    },
    KillSwitch {
        engaged: Option<String>,
        at_ms: i64,
    },
    Audit {
        entry: Audit,
        at_ms: i64,
    },
}

impl Deferred {
    fn apply(&self, w: &Writer<'_>) -> Result<()> {
        match self {
            Deferred::Event(ev) => w.record_event(ev),
            Deferred::Finish {
                id,
                phase,
                outcome,
                at_ms,
            } => w.finish(id, *phase, outcome, *at_ms),
            Deferred::ReleaseLease {
                lease_id,
                reason,
                at_ms,
            } => w.release_lease(lease_id, reason, *at_ms),
            Deferred::KillSwitch { engaged, at_ms } => {
                w.set_kill_switch(engaged.as_deref(), *at_ms)
            }
            Deferred::Audit { entry, at_ms } => w.audit(entry, *at_ms),
        }
    }
}

/// Whether a failed write may succeed later (the disk filled, the file was locked or
/// made read-only for a while), rather than being wrong in itself.
fn transient(e: &anyhow::Error) -> bool {
    use rusqlite::ErrorCode as C;
    match e.downcast_ref::<rusqlite::Error>() {
        Some(rusqlite::Error::SqliteFailure(f, _)) => matches!(
            f.code,
            C::DiskFull
                | C::SystemIoFailure
                | C::DatabaseBusy
                | C::DatabaseLocked
                | C::ReadOnly
                | C::CannotOpen
                | C::OutOfMemory
        ),
        _ => false,
    }
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

pub fn ms(t: SystemTime) -> i64 {
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
        // The schema and its migrations are the first writes of all (WAL's side files
        // too): a store that cannot take them cannot be served.
        let prepare = |db: &Connection| -> Result<()> {
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
            db.execute_batch(
                "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);",
            )?;
            schedules::migrate(db)?;
            gamedays::migrate(db)?;
            findings::migrate(db)?;
            audit::migrate(db)?;
            Ok(())
        };
        prepare(&db).with_context(|| format!("store {} cannot be written", path.display()))?;
        // A damaged page (of readings, of the audit log) would fail some later read or
        // write in the middle of an experiment: find it now, before serving.
        let damaged = || {
            format!(
                "store {} failed its integrity check; move the file aside (a new store starts \
                 empty) or recover it with sqlite3's .recover",
                path.display()
            )
        };
        let problems: Vec<String> = db
            .prepare("PRAGMA quick_check(5)")
            .and_then(|mut q| q.query_map([], |r| r.get(0))?.collect())
            .with_context(damaged)?;
        if problems != ["ok"] {
            anyhow::bail!("{}: {}", damaged(), problems.join("; "));
        }
        // A read-only file, or a full disk, would fail every run: refuse to serve.
        db.execute(
            "INSERT INTO meta (key, value) VALUES ('opened_ms', ?1)
             ON CONFLICT(key) DO UPDATE SET value = ?1",
            [ms(SystemTime::now()).to_string()],
        )
        .with_context(|| format!("store {} cannot be written", path.display()))?;
        Ok(Self {
            db: Mutex::new(db),
            deferred: Mutex::default(),
            health: Mutex::default(),
        })
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn deferred(&self) -> std::sync::MutexGuard<'_, VecDeque<Deferred>> {
        self.deferred.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn health(&self) -> std::sync::MutexGuard<'_, WriteHealth> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` in one transaction, after writing (in the same transaction, first)
    /// every deferred record: records land in the order they happened.
    pub fn write<T>(&self, f: impl FnOnce(&Writer<'_>) -> Result<T>) -> Result<T> {
        let mut db = self.db();
        let mut deferred = self.deferred();
        let result = (|| {
            let tx = db.transaction()?;
            let w = Writer { db: &tx };
            let mut dropped = 0;
            for d in deferred.iter() {
                if let Err(e) = d.apply(&w) {
                    if transient(&e) {
                        return Err(e);
                    }
                    // Wrong in itself: retrying cannot help, and it must not hold up
                    // the records behind it.
                    tracing::error!(
                        "store: dropping a deferred record that cannot be written ({e:#}): {d:?}"
                    );
                    dropped += 1;
                }
            }
            let value = f(&w)?;
            tx.commit()?;
            Ok((value, deferred.len() - dropped))
        })();
        let landed = match &result {
            Ok((_, n)) => {
                let n = *n;
                deferred.clear();
                Ok(n)
            }
            Err(e) => Err(e),
        };
        self.note(landed);
        result.map(|(v, _)| v)
    }

    /// Logs the first failure of a run of failed writes, and the first success after
    /// one, instead of every failure.
    fn note(&self, landed: std::result::Result<usize, &anyhow::Error>) {
        let mut h = self.health();
        match landed {
            Ok(deferred) => {
                if let Some(first) = h.failing.take() {
                    tracing::warn!(
                        failed_writes = h.failures,
                        deferred_written = deferred,
                        "store: writes land again (they failed since: {first}); experiments may start"
                    );
                    h.failures = 0;
                }
            }
            Err(e) => {
                h.failures += 1;
                if h.failing.is_none() {
                    let why = format!("{e:#}");
                    tracing::error!(
                        "store: a write failed ({why}); until writes land again no experiment \
                         starts, and outcomes, lease releases and audit records are kept in \
                         memory and written then (this is logged once)"
                    );
                    h.failing = Some(why);
                }
            }
        }
    }

    /// Writes `record` now, or keeps it to write, in order, as soon as a write lands.
    pub fn write_or_defer(&self, record: Deferred) {
        if self.write(|w| record.apply(w)).is_err() {
            self.deferred().push_back(record);
        }
    }

    /// Runs `f` and appends `audit` in one transaction: the action is recorded, or it
    /// does not happen.
    pub fn audited<T>(&self, audit: &Audit, f: impl FnOnce(&Writer<'_>) -> Result<T>) -> Result<T> {
        self.write(|w| {
            let value = f(w)?;
            w.audit(audit, ms(SystemTime::now()))?;
            Ok(value)
        })
    }

    /// Writes what waits, or checks that a write lands again after failures (the
    /// coordinator's clock calls it four times a second; it costs nothing while the
    /// store is healthy).
    pub fn flush(&self) {
        let waiting = !self.deferred().is_empty() || self.health().failing.is_some();
        if waiting {
            let _ = self.write(|w| w.touch());
        }
    }

    /// Ok while writes land and nothing waits; else why a new experiment must not
    /// start (its outcome could not be recorded).
    pub fn writable(&self) -> std::result::Result<(), String> {
        let waiting = self.deferred().len();
        match (&self.health().failing, waiting) {
            (None, 0) => Ok(()),
            (Some(e), _) => Err(format!(
                "the store cannot write ({e}); {waiting} record(s) wait to be written"
            )),
            (None, n) => Err(format!("{n} record(s) wait to be written to the store")),
        }
    }

    /// The kill switch as last recorded (engaged with its reason, or clear).
    pub fn kill_switch(&self) -> Result<Option<String>> {
        Ok(self
            .db()
            .query_row(
                "SELECT value FROM meta WHERE key = 'kill_switch'",
                [],
                |r| r.get::<_, String>(0),
            )
            .optional()?)
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
        self.write(|w| w.create_experiment(seq, new))
    }

    /// Records one phase event (kept and written later if the write fails).
    pub fn record_event(&self, ev: &ExperimentEvent) {
        self.write_or_defer(Deferred::Event(Box::new(ev.clone())));
    }

    pub fn set_lease(&self, experiment_id: &str, lease_id: &str, nodes: &[String]) -> Result<()> {
        self.write(|w| w.set_lease(experiment_id, lease_id, nodes))
    }

    /// Records a lease's release (kept and written later if the write fails).
    pub fn release_lease(&self, lease_id: &str, reason: &str) {
        self.write_or_defer(Deferred::ReleaseLease {
            lease_id: lease_id.to_owned(),
            reason: reason.to_owned(),
            at_ms: ms(SystemTime::now()),
        });
    }

    /// Ends an experiment in `phase` with its outcome (kept and written later if the
    /// write fails: an outcome is never lost to a full disk).
    pub fn finish(&self, id: &str, phase: Phase, outcome: &Outcome) {
        self.write_or_defer(Deferred::Finish {
            id: id.to_owned(),
            phase,
            outcome: Box::new(outcome.clone()),
            at_ms: ms(SystemTime::now()),
        });
    }

    /// Engages (with its reason) or clears the kill switch; an engage that cannot be
    /// written now is kept and written later, so a restart still finds it engaged.
    pub fn engage_kill_switch(&self, reason: &str) {
        self.write_or_defer(Deferred::KillSwitch {
            engaged: Some(reason.to_owned()),
            at_ms: ms(SystemTime::now()),
        });
    }

    /// Appends to the audit log now, or as soon as a write lands (for actions that
    /// happen whatever the store does: an abort, the scheduler's, the clock's).
    pub fn audit_or_defer(&self, entry: Audit) {
        self.write_or_defer(Deferred::Audit {
            entry,
            at_ms: ms(SystemTime::now()),
        });
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
        self.write(|w| w.record_reading(experiment_id, phase, r, node_cpu, node_memory))
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
        self.write(|w| w.set_baseline_p99(experiment_id, p99_ms))
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
        self.write(|w| w.record_guard_report(node, g))
    }

    /// Every experiment not ended is marked `interrupted` with `msg`, and its lease
    /// released: at start-up, what a previous coordinator left running; at shutdown,
    /// what did not end in time. Deferred ends land first, so an experiment whose
    /// outcome waited is not relabelled. Returns (experiment id, lease id) pairs.
    pub fn interrupt_unfinished(&self, msg: &str) -> Result<Vec<(String, String)>> {
        self.write(|w| w.interrupt_unfinished(msg))
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

impl Writer<'_> {
    fn touch(&self) -> Result<()> {
        self.db.execute(
            "INSERT INTO meta (key, value) VALUES ('written_ms', ?1)
             ON CONFLICT(key) DO UPDATE SET value = ?1",
            [ms(SystemTime::now()).to_string()],
        )?;
        Ok(())
    }

    pub fn create_experiment(&self, seq: u64, new: &NewExperiment<'_>) -> Result<String> {
        let id = Store::experiment_id(seq);
        self.db.execute(
            "INSERT INTO experiments (seq, id, name, nodes, fault, phase, started_ms, scenario, spec_yaml, probes, schedule, gameday)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![
                seq as i64,
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
        Ok(id)
    }

    pub fn record_event(&self, ev: &ExperimentEvent) -> Result<()> {
        let at = ev
            .at
            .and_then(|t| SystemTime::try_from(t).ok())
            .unwrap_or_else(SystemTime::now);
        self.db.execute(
            "INSERT INTO events (experiment_id, at_ms, phase, node, message) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![ev.experiment_id, ms(at), ev.phase, ev.node, ev.message],
        )?;
        // A phase event never moves an ended experiment back (a deferred event may
        // land after the end it preceded).
        self.db.execute(
            "UPDATE experiments SET phase = ?2 WHERE id = ?1 AND ended_ms IS NULL",
            params![ev.experiment_id, ev.phase],
        )?;
        Ok(())
    }

    pub fn set_lease(&self, experiment_id: &str, lease_id: &str, nodes: &[String]) -> Result<()> {
        self.db.execute(
            "UPDATE experiments SET lease_id = ?2 WHERE id = ?1",
            params![experiment_id, lease_id],
        )?;
        self.db.execute(
            "INSERT INTO leases (id, experiment_id, nodes, granted_ms) VALUES (?1, ?2, ?3, ?4)",
            params![
                lease_id,
                experiment_id,
                nodes.join(","),
                ms(SystemTime::now())
            ],
        )?;
        Ok(())
    }

    pub fn release_lease(&self, lease_id: &str, reason: &str, at_ms: i64) -> Result<()> {
        self.db.execute(
            "UPDATE leases SET released_ms = ?2, release_reason = ?3 WHERE id = ?1 AND released_ms IS NULL",
            params![lease_id, at_ms, reason],
        )?;
        Ok(())
    }

    pub fn finish(&self, id: &str, phase: Phase, outcome: &Outcome, at_ms: i64) -> Result<()> {
        let recovery = outcome
            .recovery_time
            .and_then(|d| Duration::try_from(d).ok());
        self.db.execute(
            "UPDATE experiments SET phase = ?2, result = ?3, ended_ms = ?4, recovery_ms = ?5, outcome = ?6 WHERE id = ?1",
            params![
                id,
                phase as i32,
                outcome.message,
                at_ms,
                recovery.map(|d| d.as_millis() as i64),
                outcome.encode_to_vec(),
            ],
        )?;
        Ok(())
    }

    /// The kill switch: engaged with its reason, or clear (`None`).
    pub fn set_kill_switch(&self, engaged: Option<&str>, at_ms: i64) -> Result<()> {
        match engaged {
            Some(reason) => self.db.execute(
                "INSERT INTO meta (key, value) VALUES ('kill_switch', ?1)
                 ON CONFLICT(key) DO UPDATE SET value = ?1",
                [reason],
            )?,
            None => self
                .db
                .execute("DELETE FROM meta WHERE key = 'kill_switch'", [])?,
        };
        self.db.execute(
            "INSERT INTO meta (key, value) VALUES ('kill_switch_changed_ms', ?1)
             ON CONFLICT(key) DO UPDATE SET value = ?1",
            [at_ms.to_string()],
        )?;
        Ok(())
    }

    pub fn record_reading(
        &self,
        experiment_id: &str,
        phase: Phase,
        r: &Reading,
        node_cpu: Option<f64>,
        node_memory: Option<f64>,
    ) -> Result<()> {
        self.db.execute(
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

    pub fn set_baseline_p99(&self, experiment_id: &str, p99_ms: f64) -> Result<()> {
        self.db.execute(
            "UPDATE experiments SET baseline_p99_ms = ?2 WHERE id = ?1",
            params![experiment_id, p99_ms],
        )?;
        Ok(())
    }

    pub fn record_guard_report(&self, node: &str, g: &GuardReport) -> Result<()> {
        let db = self.db;
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

    pub fn interrupt_unfinished(&self, msg: &str) -> Result<Vec<(String, String)>> {
        let tx = self.db;
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
                "UPDATE leases SET released_ms = ?2, release_reason = ?3 WHERE id = ?1 AND released_ms IS NULL",
                params![lease, now, msg],
            )?;
        }
        Ok(unfinished)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RESTARTED: &str = "the coordinator restarted";

    /// A store file in the temp dir, removed (with its WAL files) when dropped.
    struct TempDb(std::path::PathBuf);

    impl TempDb {
        fn new(tag: &str) -> Self {
            let path = std::env::temp_dir().join(format!("fl-{tag}-{}.db", std::process::id()));
            let db = Self(path);
            db.remove();
            db
        }
        fn remove(&self) {
            for ext in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{ext}", self.0.display()));
            }
        }
    }

    impl Drop for TempDb {
        fn drop(&mut self) {
            self.remove();
        }
    }

    /// A loss experiment record on `nodes`.
    fn record<'a>(name: &'a str, nodes: &'a [String], fault: &'a FaultSpec) -> NewExperiment<'a> {
        NewExperiment {
            name,
            nodes,
            fault,
            scenario: "packet_loss",
            spec_yaml: "",
            probes: &[],
            schedule: "",
            gameday: "",
        }
    }

    #[test]
    fn unfinished_experiments_are_interrupted_on_reopen_and_history_is_kept() {
        let db = TempDb::new("store");
        let path = &db.0;
        {
            let s = Store::open(path).unwrap();
            let (n1, n2, fault) = (
                ["node-1".to_owned()],
                ["node-2".to_owned()],
                FaultSpec::default(),
            );
            let a = s
                .create_experiment(s.last_seq().unwrap() + 1, &record("done", &n1, &fault))
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
            );
            let b = s
                .create_experiment(s.last_seq().unwrap() + 1, &record("running", &n2, &fault))
                .unwrap();
            s.set_lease(&b, "lease-1-b", &["node-2".into()]).unwrap();
            s.record_event(&ExperimentEvent {
                experiment_id: b.clone(),
                phase: Phase::Fault as i32,
                message: "applied".into(),
                ..Default::default()
            });
            assert_eq!((a.as_str(), b.as_str()), ("exp-000001", "exp-000002"));
        }
        let s = Store::open(path).unwrap();
        assert_eq!(
            s.interrupt_unfinished(RESTARTED).unwrap(),
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
        assert!(s.interrupt_unfinished(RESTARTED).unwrap().is_empty());
    }

    #[test]
    fn an_outcome_that_cannot_be_written_is_kept_and_lands_when_writes_do() {
        let db = TempDb::new("defer");
        let s = Store::open(&db.0).unwrap();
        let fault = FaultSpec::default();
        let id = s
            .create_experiment(1, &record("x", &["node-1".to_owned()], &fault))
            .unwrap();
        assert_eq!(s.writable(), Ok(()));
        // SQLite's own "database or disk is full": the file may not grow.
        let pages: i64 = s
            .db()
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .unwrap();
        s.db().pragma_update(None, "max_page_count", pages).unwrap();
        let outcome = Outcome {
            verdict: Verdict::Passed as i32,
            message: "x".repeat(200_000),
            ..Default::default()
        };
        s.finish(&id, Phase::Completed, &outcome);
        s.record_event(&ExperimentEvent {
            experiment_id: id.clone(),
            phase: Phase::Completed as i32,
            message: "passed".into(),
            ..Default::default()
        });
        let why = s.writable().unwrap_err();
        assert!(why.contains("full") && why.contains("2 record(s)"), "{why}");
        assert_eq!(s.experiment(&id).unwrap().unwrap().ended, None);
        // A start's record is refused outright, not kept.
        assert!(s.audited(&Audit::default(), |w| w.touch()).is_err());
        s.flush();
        assert!(s.writable().is_err());
        s.db()
            .pragma_update(None, "max_page_count", 1_000_000)
            .unwrap();
        s.flush();
        assert_eq!(s.writable(), Ok(()));
        let e = s.experiment(&id).unwrap().unwrap();
        assert_eq!(e.phase, Phase::Completed as i32);
        assert_eq!(e.outcome.unwrap().message.len(), 200_000);
        assert_eq!(s.events(&id).unwrap()[0].message, "passed");
        // Nothing unfinished is left for a restart to relabel.
        assert!(s.interrupt_unfinished(RESTARTED).unwrap().is_empty());
    }

    #[test]
    fn a_store_that_fails_its_integrity_check_is_refused() {
        let db = TempDb::new("damaged");
        let path = &db.0;
        // A damaged page: overwrite the middle of the file after a checkpoint.
        {
            let s = Store::open(path).unwrap();
            let (fault, name) = (FaultSpec::default(), "n".repeat(500));
            for seq in 1..200 {
                s.create_experiment(seq, &record(&name, &[], &fault))
                    .unwrap();
            }
            s.db()
                .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
                .unwrap();
        }
        let mut bytes = std::fs::read(path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid..mid + 4096].fill(0xA5);
        std::fs::write(path, bytes).unwrap();
        let e = Store::open(path).err().expect("a damaged store is refused");
        let e = format!("{e:#}");
        assert!(e.contains("failed its integrity check"), "{e}");
    }
}
