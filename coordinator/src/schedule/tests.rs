//! The scheduler against an injected clock and a fake launcher (pure decision logic;
//! the real coordinator firing a real slot is in tests/tests/continuous.rs).
use std::{cell::RefCell, path::PathBuf};

use chrono::{DateTime, Utc};
use faultline_proto::spec::{Scenario, Spec, SpecError};
use faultline_proto::v1::RunStatus;

use super::*;

fn check(yaml: &str) -> Result<Scenario, SpecError> {
    let s = Spec::parse(yaml)?;
    s.check_shape(yaml)?;
    Ok(s.scenario.expect("checked"))
}

fn parse(text: &str) -> Result<ScheduleFile, SpecError> {
    file::parse(text, "test", &check)
}

struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for ext in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{ext}", self.0.display()));
        }
    }
}

/// A store file removed when the last handle goes; `reopen` is a coordinator restart.
struct TempStore(std::rc::Rc<Cleanup>, Store);

impl TempStore {
    fn new(tag: &str) -> Self {
        let g =
            Cleanup(std::env::temp_dir().join(format!("fl-sched-{tag}-{}.db", std::process::id())));
        drop(Cleanup(g.0.clone()));
        let s = Store::open(&g.0).unwrap();
        Self(std::rc::Rc::new(g), s)
    }
    fn reopen(self) -> Self {
        let g = self.0.clone();
        drop(self.1);
        let s = Store::open(&g.0).unwrap();
        Self(g, s)
    }
}

#[derive(Default)]
struct Fake {
    running: RefCell<Vec<(String, String)>>,
    started: RefCell<Vec<(String, i64)>>,
    ended: RefCell<Vec<(Vec<String>, String)>>,
    refuse: RefCell<Option<String>>,
    not_ready: RefCell<Option<String>>,
}

impl Launcher for Fake {
    fn running(&self) -> Vec<(String, String)> {
        self.running.borrow().clone()
    }
    fn start(&self, entry: &Entry, slot_ms: i64) -> Result<String, Vec<String>> {
        if let Some(r) = self.refuse.borrow().clone() {
            return Err(vec![r]);
        }
        let mut s = self.started.borrow_mut();
        s.push((entry.name.clone(), slot_ms));
        Ok(format!("exp-{:06}", s.len()))
    }
    fn end(&self, ids: &[String], reason: &str) {
        self.ended
            .borrow_mut()
            .push((ids.to_vec(), reason.to_owned()));
    }
    fn kill_switch(&self) -> Option<String> {
        None
    }
    fn targets_ready(&self, _: &Entry) -> Result<(), String> {
        self.not_ready.borrow().clone().map_or(Ok(()), Err)
    }
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

const REPORT: &str = "
defaults:
  target_node: node-6
schedule:
  - time: 02:00 UTC
    scenario: latency_injection
    latency: 50ms
    duration: 60s

  - time: 14:00 UTC
    scenario: packet_loss
    packet_loss: 1.0%
    duration: 60s

  - day: Tuesday
    time: 03:00 UTC
    scenario: cpu_stress
    cpu_stress: 15%
    duration: 60s

  - day: Sunday
    time: 02:00 UTC
    scenario: gc_pressure
    duration: 60s
";

#[test]
fn the_reports_schedule_loads_and_its_slots_are_where_the_report_says() {
    let f = parse(REPORT).unwrap();
    let names: Vec<&str> = f.entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "latency_injection@daily 02:00 UTC",
            "packet_loss@daily 14:00 UTC",
            "cpu_stress@TUE 03:00 UTC",
            "gc_pressure@SUN 02:00 UTC"
        ]
    );
    // 2026-12-01 is a Tuesday.
    let t = at("2026-12-01T01:00:00Z");
    let next: Vec<DateTime<Utc>> = f
        .entries
        .iter()
        .map(|e| e.when.next_after(t).unwrap())
        .collect();
    assert_eq!(
        next,
        [
            at("2026-12-01T02:00:00Z"),
            at("2026-12-01T14:00:00Z"),
            at("2026-12-01T03:00:00Z"),
            at("2026-12-06T02:00:00Z")
        ]
    );
    // Defaults are merged under the entry's own fields.
    assert!(f.entries[0].spec_yaml.contains("target_node: node-6"));
    assert!(f.entries[0].spec_yaml.contains("latency: 50ms"));
    assert_eq!(f.starting_deadline, file::DEFAULT_STARTING_DEADLINE);
}

#[test]
fn a_slot_fires_exactly_once() {
    let st = TempStore::new("once");
    let f = parse(REPORT).unwrap();
    let s = Scheduler::load(f, &st.1, at("2026-12-01T01:59:00Z")).unwrap();
    let fake = Fake::default();
    assert!(
        s.tick(&st.1, &fake, at("2026-12-01T01:59:59.999Z"))
            .unwrap()
            .is_empty()
    );
    let runs = s
        .tick(&st.1, &fake, at("2026-12-01T02:00:00.300Z"))
        .unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].status, RunStatus::Started as i32);
    assert_eq!(runs[0].experiment_id, "exp-000001");
    for t in [
        "2026-12-01T02:00:01Z",
        "2026-12-01T02:00:30Z",
        "2026-12-01T02:59:00Z",
    ] {
        assert!(s.tick(&st.1, &fake, at(t)).unwrap().is_empty(), "{t}");
    }
    // The weekly entry of the same day, then the next day's daily slot.
    assert_eq!(
        s.tick(&st.1, &fake, at("2026-12-01T03:00:00.1Z"))
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        s.tick(&st.1, &fake, at("2026-12-02T02:00:00.1Z"))
            .unwrap()
            .len(),
        2,
        "14:00 of day 1, then 02:00 of day 2 — the 14:00 slot is past the deadline"
    );
    let started: Vec<String> = fake
        .started
        .borrow()
        .iter()
        .map(|(n, _)| n.clone())
        .collect();
    assert_eq!(
        started,
        [
            "latency_injection@daily 02:00 UTC",
            "cpu_stress@TUE 03:00 UTC",
            "latency_injection@daily 02:00 UTC"
        ]
    );
    let runs = st.1.schedule_runs(SystemTime::UNIX_EPOCH, "", 100).unwrap();
    let missed: Vec<&ScheduleRun> = runs
        .iter()
        .filter(|r| r.status == RunStatus::Missed as i32)
        .collect();
    assert_eq!(missed.len(), 1);
    assert_eq!(missed[0].schedule, "packet_loss@daily 14:00 UTC");
    assert!(
        missed[0].reasons[0].contains("past starting_deadline 5m"),
        "{:?}",
        missed[0].reasons
    );
}

#[test]
fn overlapping_and_refused_runs_are_skipped_with_their_reasons() {
    let st = TempStore::new("overlap");
    let f = parse("schedule:\n  - every: 1m\n    name: micro\n    scenario: latency_injection\n    target_node: node-6\n    latency: 5ms\n    duration: 90s\n").unwrap();
    let s = Scheduler::load(f, &st.1, at("2026-12-01T10:00:30Z")).unwrap();
    let fake = Fake::default();
    let r = s.tick(&st.1, &fake, at("2026-12-01T10:01:00Z")).unwrap();
    assert_eq!(r[0].status, RunStatus::Started as i32);
    fake.running
        .borrow_mut()
        .push((r[0].experiment_id.clone(), "micro".into()));
    let r = s.tick(&st.1, &fake, at("2026-12-01T10:02:00Z")).unwrap();
    assert_eq!(r[0].status, RunStatus::Skipped as i32);
    assert_eq!(r[0].reasons, ["the previous run exp-000001 still runs"]);
    fake.running.borrow_mut().clear();
    *fake.refuse.borrow_mut() = Some("node node-6 is leased by exp-000007".into());
    let r = s.tick(&st.1, &fake, at("2026-12-01T10:03:00Z")).unwrap();
    assert_eq!(r[0].status, RunStatus::Skipped as i32);
    assert_eq!(r[0].reasons, ["node node-6 is leased by exp-000007"]);
    // The store says the same.
    let runs =
        st.1.schedule_runs(SystemTime::UNIX_EPOCH, "micro", 10)
            .unwrap();
    let statuses: Vec<i32> = runs.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        [
            RunStatus::Started as i32,
            RunStatus::Skipped as i32,
            RunStatus::Skipped as i32
        ]
    );
    assert_eq!(runs[2].reasons, ["node node-6 is leased by exp-000007"]);
}

#[test]
fn blackouts_skip_slots_and_end_what_runs_when_they_open() {
    let st = TempStore::new("blackout");
    let f = parse(
        "blackouts:
  - {name: year-end-freeze, start: 2026-12-20T00:00:00Z, end: 2027-01-04T00:00:00Z}
  - {name: business-hours, cron: '0 9 * * MON-FRI', duration: 8h, timezone: Europe/Berlin}
schedule:
  - time: '10:00'
    timezone: Europe/Berlin
    scenario: latency_injection
    target_node: node-6
    latency: 5ms
    duration: 60s
  - time: 20:00 UTC
    scenario: packet_loss
    target_node: node-6
    packet_loss: 1%
    duration: 60s
",
    )
    .unwrap();
    let s = Scheduler::load(f, &st.1, at("2026-12-01T00:00:00Z")).unwrap();
    let fake = Fake::default();
    // 10:00 Berlin = 09:00 UTC in winter, inside business hours (09:00-17:00 Berlin).
    let r = s.tick(&st.1, &fake, at("2026-12-01T09:00:00.5Z")).unwrap();
    assert_eq!(r[0].status, RunStatus::Skipped as i32);
    assert_eq!(
        r[0].reasons,
        ["blackout window business-hours is open until 2026-12-01 16:00:00 UTC"]
    );
    let r = s.tick(&st.1, &fake, at("2026-12-01T20:00:00.5Z")).unwrap();
    assert_eq!(r[0].status, RunStatus::Started as i32);
    // The freeze opens while that experiment runs: it is ended.
    fake.running
        .borrow_mut()
        .push(("exp-000001".into(), r[0].schedule.clone()));
    assert!(
        s.tick(&st.1, &fake, at("2026-12-19T23:59:59Z"))
            .unwrap()
            .iter()
            .all(|r| r.status != RunStatus::Started as i32)
    );
    assert!(fake.ended.borrow().is_empty());
    s.tick(&st.1, &fake, at("2026-12-20T00:00:00.2Z")).unwrap();
    let ended = fake.ended.borrow();
    assert_eq!(ended[0].0, ["exp-000001"]);
    assert_eq!(
        ended[0].1,
        "blackout window year-end-freeze opened (until 2027-01-04 00:00:00 UTC)"
    );
    let (b, until) = s.blackout(at("2026-12-24T12:00:00Z")).unwrap();
    assert_eq!(
        (b.name.as_str(), until),
        ("year-end-freeze", at("2027-01-04T00:00:00Z"))
    );
    assert!(
        s.blackout(at("2026-12-05T12:00:00Z")).is_none(),
        "Saturday: no business hours"
    );
}

#[test]
fn a_restart_neither_loses_nor_doubles_a_slot() {
    let f = || parse(REPORT).unwrap();
    let fake = Fake::default();
    // Fired, then restarted a second later: nothing fires again.
    let st = TempStore::new("restart");
    let s = Scheduler::load(f(), &st.1, at("2026-12-01T01:00:00Z")).unwrap();
    assert_eq!(
        s.tick(&st.1, &fake, at("2026-12-01T02:00:00.1Z"))
            .unwrap()
            .len(),
        1
    );
    let st = st.reopen();
    let s = Scheduler::load(f(), &st.1, at("2026-12-01T02:00:01Z")).unwrap();
    assert!(
        s.tick(&st.1, &fake, at("2026-12-01T02:00:01Z"))
            .unwrap()
            .is_empty()
    );
    // Down across the 03:00 slot, back within the starting deadline: it runs once.
    let st = st.reopen();
    let s = Scheduler::load(f(), &st.1, at("2026-12-01T03:04:00Z")).unwrap();
    let r = s.tick(&st.1, &fake, at("2026-12-01T03:04:00Z")).unwrap();
    assert_eq!((r.len(), r[0].status), (1, RunStatus::Started as i32));
    let st = st.reopen();
    let s = Scheduler::load(f(), &st.1, at("2026-12-01T03:04:30Z")).unwrap();
    assert!(
        s.tick(&st.1, &fake, at("2026-12-01T03:04:30Z"))
            .unwrap()
            .is_empty()
    );
    // Down across 14:00 and back after the deadline: missed, and the next slot is tomorrow's.
    let st = st.reopen();
    let s = Scheduler::load(f(), &st.1, at("2026-12-01T14:20:00Z")).unwrap();
    let r = s.tick(&st.1, &fake, at("2026-12-01T14:20:00Z")).unwrap();
    assert_eq!((r.len(), r[0].status), (1, RunStatus::Missed as i32));
    let list = s.list(&st.1).unwrap();
    let loss = list.iter().find(|e| e.scenario == "packet_loss").unwrap();
    assert_eq!(
        loss.next_run.unwrap().seconds,
        at("2026-12-02T14:00:00Z").timestamp()
    );
    assert_eq!(fake.started.borrow().len(), 2);
}

#[test]
fn catch_up_after_a_restart_waits_for_the_agents_within_the_deadline() {
    let f = || parse(REPORT).unwrap();
    let fake = Fake::default();
    let st = TempStore::new("catchup");
    Scheduler::load(f(), &st.1, at("2026-12-01T01:00:00Z")).unwrap();
    // Down across 02:00, back at 02:01: the agents have not reconnected yet.
    let st = st.reopen();
    let s = Scheduler::load(f(), &st.1, at("2026-12-01T02:01:00Z")).unwrap();
    *fake.not_ready.borrow_mut() = Some("node node-6 is not registered".into());
    for secs in [0, 1, 2] {
        let now = at("2026-12-01T02:01:00Z") + chrono::Duration::seconds(secs);
        assert!(s.tick(&st.1, &fake, now).unwrap().is_empty(), "undecided");
    }
    // They are back: the slot runs, once.
    *fake.not_ready.borrow_mut() = None;
    let r = s.tick(&st.1, &fake, at("2026-12-01T02:01:03Z")).unwrap();
    assert_eq!((r.len(), r[0].status), (1, RunStatus::Started as i32));
    assert!(
        s.tick(&st.1, &fake, at("2026-12-01T02:01:04Z"))
            .unwrap()
            .is_empty()
    );
    // An agent that never comes back: decided (and refused) just before the deadline.
    let st = st.reopen();
    let s = Scheduler::load(f(), &st.1, at("2026-12-02T02:00:30Z")).unwrap();
    *fake.not_ready.borrow_mut() = Some("node node-6 is not registered".into());
    *fake.refuse.borrow_mut() = Some("node node-6 is not registered".into());
    let daily = |r: Vec<ScheduleRun>| -> Vec<ScheduleRun> {
        r.into_iter()
            .filter(|r| r.schedule == "latency_injection@daily 02:00 UTC")
            .collect()
    };
    // (Yesterday's 14:00 and 03:00 slots are missed at the first tick.)
    assert!(daily(s.tick(&st.1, &fake, at("2026-12-02T02:03:58Z")).unwrap()).is_empty());
    let r = daily(s.tick(&st.1, &fake, at("2026-12-02T02:04:59.5Z")).unwrap());
    assert_eq!(r[0].status, RunStatus::Skipped as i32);
    assert_eq!(r[0].reasons, ["node node-6 is not registered"]);
    // A coordinator that has run longer than the deadline decides at once.
    let r = daily(s.tick(&st.1, &fake, at("2026-12-03T02:00:00.1Z")).unwrap());
    assert_eq!(r[0].status, RunStatus::Skipped as i32);
}

#[test]
fn several_missed_slots_run_at_most_once() {
    let st = TempStore::new("burst");
    let f = parse("schedule:\n  - every: 10m\n    name: m\n    scenario: latency_injection\n    target_node: node-6\n    latency: 5ms\n    duration: 60s\n").unwrap();
    let s = Scheduler::load(f, &st.1, at("2026-12-01T10:00:30Z")).unwrap();
    let fake = Fake::default();
    let r = s.tick(&st.1, &fake, at("2026-12-01T10:52:00Z")).unwrap();
    let statuses: Vec<i32> = r.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [3, 3, 3, 3, 1], "10:10..10:40 missed, 10:50 runs");
    assert_eq!(
        fake.started.borrow()[0].1,
        at("2026-12-01T10:50:00Z").timestamp_millis()
    );
}

#[test]
fn daylight_saving_changes_in_a_zone_are_right() {
    let f = parse(
        "timezone: Europe/Berlin
schedule:
  - {name: gap, time: '02:30', scenario: latency_injection, target_node: n, latency: 5ms, duration: 60s}
  - {name: ny, cron: '30 1 * * *', timezone: America/New_York, scenario: latency_injection, target_node: n, latency: 5ms, duration: 60s}
",
    )
    .unwrap();
    let gap = &f.entries[0].when;
    // Spring forward (2027-03-28, 02:00 -> 03:00 CEST): 02:30 does not exist; it runs
    // at the first instant after the gap, 03:00 CEST = 01:00 UTC; the next day 00:30 UTC.
    assert_eq!(
        gap.next_after(at("2027-03-27T12:00:00Z")),
        Some(at("2027-03-28T01:00:00Z"))
    );
    assert_eq!(
        gap.next_after(at("2027-03-28T01:00:00Z")),
        Some(at("2027-03-29T00:30:00Z"))
    );
    // Fall back (2027-10-31, 03:00 -> 02:00 CET): 02:30 happens twice; it runs once.
    assert_eq!(
        gap.next_after(at("2027-10-30T12:00:00Z")),
        Some(at("2027-10-31T00:30:00Z"))
    );
    assert_eq!(
        gap.next_after(at("2027-10-31T00:30:00Z")),
        Some(at("2027-11-01T01:30:00Z"))
    );
    // New York (2027-03-14 spring forward at 02:00): 01:30 EST is 06:30 UTC before, 05:30 after.
    let ny = &f.entries[1].when;
    assert_eq!(
        ny.next_after(at("2027-03-13T12:00:00Z")),
        Some(at("2027-03-14T06:30:00Z"))
    );
    assert_eq!(
        ny.next_after(at("2027-03-14T06:30:00Z")),
        Some(at("2027-03-15T05:30:00Z"))
    );
    // Ticking through the fall-back night fires the entry exactly once.
    let st = TempStore::new("dst");
    let s = Scheduler::load(f, &st.1, at("2027-10-30T12:00:00Z")).unwrap();
    let fake = Fake::default();
    let mut t = at("2027-10-30T22:00:00Z");
    while t < at("2027-10-31T06:00:00Z") {
        s.tick(&st.1, &fake, t).unwrap();
        t += chrono::Duration::seconds(30);
    }
    let gap_runs = fake
        .started
        .borrow()
        .iter()
        .filter(|(n, _)| n == "gap")
        .count();
    assert_eq!(gap_runs, 1);
}

#[test]
fn paused_entries_do_not_fire_and_resume_at_their_next_slot() {
    let st = TempStore::new("pause");
    let f = parse("schedule:\n  - every: 1m\n    name: m\n    scenario: latency_injection\n    target_node: n\n    latency: 5ms\n    duration: 30s\n  - every: 1m\n    name: p\n    paused: true\n    scenario: latency_injection\n    target_node: n\n    latency: 5ms\n    duration: 30s\n").unwrap();
    let s = Scheduler::load(f, &st.1, at("2026-12-01T10:00:30Z")).unwrap();
    let fake = Fake::default();
    let alice = crate::store::Audit {
        who: "alice".into(),
        action: "schedule.pause".into(),
        ..Default::default()
    };
    assert!(
        s.set_paused(&st.1, "m", true, &alice, at("2026-12-01T10:00:40Z"))
            .unwrap()
    );
    assert!(
        !s.set_paused(&st.1, "nope", true, &alice, at("2026-12-01T10:00:40Z"))
            .unwrap()
    );
    for m in 1..5 {
        let t = at("2026-12-01T10:00:00Z") + chrono::Duration::minutes(m);
        assert!(s.tick(&st.1, &fake, t).unwrap().is_empty());
    }
    let list = s.list(&st.1).unwrap();
    assert!(list.iter().all(|e| e.paused && e.next_run.is_none()));
    assert_eq!(list[0].paused_by, "alice");
    assert_eq!(list[1].paused_by, "schedule file");
    s.set_paused(&st.1, "m", false, &alice, at("2026-12-01T10:04:10Z"))
        .unwrap();
    let r = s.tick(&st.1, &fake, at("2026-12-01T10:05:00Z")).unwrap();
    assert_eq!((r.len(), r[0].schedule.as_str()), (1, "m"));
}

#[test]
fn bad_schedule_files_name_the_entry_the_field_and_the_line() {
    let e = |text: &str| parse(text).map(|_| ()).unwrap_err().to_string();
    let base = "schedule:\n  - time: 02:00 UTC\n    scenario: latency_injection\n    target_node: n\n    latency: 5ms\n    duration: 60s\n";
    assert_eq!(
        e(&format!(
            "{base}  - day: Funday\n    time: 03:00 UTC\n    scenario: cpu_stress\n    target_node: n\n    cpu_stress: 5%\n    duration: 60s\n"
        )),
        "line 7: schedule[1].day: unknown day \"Funday\" (Monday .. Sunday)"
    );
    assert_eq!(
        e("schedule:\n  - time: '25:00'\n    scenario: cpu_stress\n"),
        "line 2: schedule[0].time: \"25:00\": expected HH:MM[:SS] [ZONE], e.g. \"02:00 UTC\""
    );
    assert_eq!(
        e("schedule:\n  - time: 02:00 Mars/Olympus\n    scenario: cpu_stress\n"),
        "line 2: schedule[0].time: unknown time zone \"Mars/Olympus\" (an IANA name such as UTC or Europe/Berlin)"
    );
    assert_eq!(
        e("schedule:\n  - time: 02:00 UTC\n    cron: '0 2 * * *'\n    scenario: cpu_stress\n"),
        "line 2: schedule[0]: give only one of time, cron and every"
    );
    assert_eq!(
        e("schedule:\n  - scenario: cpu_stress\n"),
        "line 2: schedule[0]: needs one of time (with an optional day), cron or every"
    );
    assert!(
        e("schedule:\n  - cron: '61 * * * *'\n    scenario: cpu_stress\n")
            .starts_with("line 2: schedule[0].cron: invalid cron expression \"61 * * * *\"")
    );
    assert_eq!(
        e(&format!("{base}{}", &base["schedule:\n".len()..])),
        "line 7: schedule[1].name: \"latency_injection@daily 02:00 UTC\" is used by an earlier entry; give each entry its own name"
    );
    assert!(e("schedule:\n  - time: 02:00 UTC\n    scenario: latency_injection\n    target_node: n\n    latncy: 5ms\n    duration: 60s\n")
        .starts_with("line 5: schedule[0].latncy: unknown field `latncy`, expected one of"));
    // A magnitude above the profile's limit names the limit.
    let over = parse(
        "schedule:\n  - time: 02:00 UTC\n    scenario: latency_injection\n    target_node: n\n    latency: 500ms\n    duration: 60s\n",
    );
    assert!(
        over.is_ok(),
        "the test's check is shape only; the coordinator's check_offline adds the limits"
    );
    assert!(e("schedul:\n  - time: 02:00 UTC\n").contains("unknown field `schedul`"));
    assert_eq!(
        e("blackouts:\n  - {name: x, start: 2026-12-20T00:00:00Z, end: 2026-12-19T00:00:00Z}\n"),
        "line 2: blackouts[0].end: must be after start"
    );
    assert_eq!(
        e("starting_deadline: 0s\n"),
        "line 1: starting_deadline: must be at least 1s"
    );
    // Each value is read by its own type, so the path and the line come with it.
    let two = |second: &str| e(&format!("{base}  - scenario: cpu_stress\n{second}"));
    for (second, expected) in [
        (
            "    time: 2\n",
            "line 8: schedule[1].time: must be text; write it in quotes (YAML read 2 as a number)",
        ),
        (
            "    time: 03:00 UTC\n    day: [Monday, Funday]\n",
            "line 9: schedule[1].day[1]: unknown day \"Funday\" (Monday .. Sunday)",
        ),
        (
            "    every: 1h\n    paused: yes\n",
            "line 9: schedule[1].paused: invalid type: string \"yes\", expected a boolean",
        ),
        (
            "    every: 1h\n    name: ' '\n",
            "line 9: schedule[1].name: must not be empty",
        ),
    ] {
        assert_eq!(two(second), expected, "{second}");
    }
}

/// Found by the schedule fuzz target (tests/fuzz/corpus/schedule/crash-0d8c0f...): a
/// tagged key in the defaults made the coordinator panic writing the entry's spec.
#[test]
fn a_tagged_key_is_an_error_in_the_file_not_a_panic() {
    let text = "defaults:\n  target:\n  ! abt:launt: 2\nschedule:\n  - time: 02:00 UTC\n    scenario: packet_loss\n    packet_loss: 0.1%\n    duration: 60s\n";
    let crash = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fuzz/corpus/schedule/crash-0d8c0f4ec745e1658bec89c41bc9bcd5bbf6804c"
    ))
    .expect("the fuzz corpus's crash input");
    for input in [text.to_owned(), String::from_utf8(crash).unwrap()] {
        assert!(parse(&input).is_err(), "{input}");
    }
}
