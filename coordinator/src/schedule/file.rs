//! The schedule file. The reference report's blocks work as they stand:
//!
//! ```yaml
//! schedule:
//!   - time: 02:00 UTC
//!     scenario: latency_injection
//!     duration: 60s
//!   - day: Tuesday
//!     time: 03:00 UTC
//!     scenario: cpu_stress
//!     duration: 60s
//! ```
//!
//! plus `cron:` (5 or 6 fields) with `timezone:`, `every: 1h`, a `name:` and
//! `paused: true` per entry, and at the top `timezone`, `starting_deadline`,
//! `defaults` (spec fields every entry inherits, e.g. `target_node`) and
//! `blackouts`. Every other key of an entry is a spec field. A file loads whole or
//! not at all: the first mistake is returned with its entry, field and line.
use std::{collections::BTreeSet, time::Duration};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use faultline_proto::spec::{Scenario, SpecError, values::Dur};
use serde::Deserialize;
use serde_yaml_ng::{Mapping, Value};

use super::when::{When, Window, parse_time_of_day, parse_tz, parse_weekday};

/// The default for how late a slot may still start (e.g. after a restart).
pub const DEFAULT_STARTING_DEADLINE: Duration = Duration::from_secs(300);

#[derive(Clone, Debug)]
pub struct Entry {
    pub name: String,
    pub when: When,
    pub scenario: Scenario,
    /// The entry's spec, the file's defaults merged under it.
    pub spec_yaml: String,
    /// Paused when first loaded (`paused: true`); afterwards the store decides.
    pub paused: bool,
}

#[derive(Clone, Debug)]
pub struct Blackout {
    pub name: String,
    pub window: Window,
}

#[derive(Clone, Debug)]
pub struct ScheduleFile {
    pub entries: Vec<Entry>,
    pub blackouts: Vec<Blackout>,
    pub starting_deadline: Duration,
    pub source: String,
}

impl ScheduleFile {
    pub fn empty() -> Self {
        Self {
            entries: vec![],
            blackouts: vec![],
            starting_deadline: DEFAULT_STARTING_DEADLINE,
            source: "none".into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    timezone: Option<String>,
    starting_deadline: Option<Dur>,
    #[serde(default)]
    defaults: Mapping,
    #[serde(default)]
    blackouts: Vec<BlackoutDoc>,
    #[serde(default)]
    schedule: Vec<Mapping>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BlackoutDoc {
    name: String,
    start: Option<String>,
    end: Option<String>,
    cron: Option<String>,
    duration: Option<Dur>,
    timezone: Option<String>,
}

/// The line of `field` inside item `index` of the top-level list `list`.
fn item_line(text: &str, list: &str, index: usize, field: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let head = lines
        .iter()
        .position(|l| l.trim_end() == format!("{list}:") || l.starts_with(&format!("{list}:")))?;
    let mut seen = 0;
    let mut start = None;
    let mut end = lines.len();
    for (i, l) in lines.iter().enumerate().skip(head + 1) {
        let t = l.trim_start();
        if !l.starts_with(' ') && !l.starts_with('-') && !t.is_empty() && !t.starts_with('#') {
            end = i;
            break;
        }
        if t.starts_with("- ") || t == "-" {
            if start.is_some() {
                end = i;
                break;
            }
            if seen == index {
                start = Some(i);
            }
            seen += 1;
        }
    }
    let start = start?;
    if field.is_empty() {
        return Some(start + 1);
    }
    let key = field.split('.').next().unwrap_or(field);
    (start..end)
        .find(|&i| {
            let t = lines[i].trim_start().trim_start_matches("- ");
            t.starts_with(&format!("{key}:"))
        })
        .map(|i| i + 1)
        .or(Some(start + 1))
}

const TIMING_KEYS: [&str; 7] = ["name", "time", "day", "cron", "every", "timezone", "paused"];

fn text_of(v: &Value, what: &str) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Err(format!(
            "{what} must be text; write it in quotes (YAML read {n} as a number)"
        )),
        _ => Err(format!("{what} must be text")),
    }
}

/// Parses and validates a schedule document. `check` validates one entry's spec
/// (resolution and the limits) and returns its scenario.
pub fn parse(
    text: &str,
    source: &str,
    check: &dyn Fn(&str) -> Result<Scenario, SpecError>,
) -> Result<ScheduleFile, SpecError> {
    let doc: Doc = faultline_proto::spec::parse_yaml(text)?;
    let top_err = |field: &str, msg: String| SpecError::at(text, field, msg);
    let default_tz = match &doc.timezone {
        Some(z) => parse_tz(z).map_err(|m| top_err("timezone", m))?,
        None => Tz::UTC,
    };
    let starting_deadline = doc
        .starting_deadline
        .map_or(DEFAULT_STARTING_DEADLINE, |d| d.0);
    if starting_deadline < Duration::from_secs(1) {
        return Err(top_err("starting_deadline", "must be at least 1s".into()));
    }
    let mut blackouts = Vec::new();
    for (i, b) in doc.blackouts.iter().enumerate() {
        let err = |field: &str, msg: String| SpecError {
            field: format!("blackouts[{i}].{field}")
                .trim_end_matches('.')
                .to_owned(),
            line: item_line(text, "blackouts", i, field),
            message: msg,
        };
        let tz = match &b.timezone {
            Some(z) => parse_tz(z).map_err(|m| err("timezone", m))?,
            None => default_tz,
        };
        let when = |field: &str, s: &Option<String>| -> Result<DateTime<Utc>, SpecError> {
            let s = s
                .as_deref()
                .ok_or_else(|| err(field, "is required with a fixed window".into()))?;
            DateTime::parse_from_rfc3339(s)
                .map(|d| d.with_timezone(&Utc))
                .map_err(|e| {
                    err(
                        field,
                        format!("{s:?} is not an RFC 3339 time (2026-12-24T00:00:00Z): {e}"),
                    )
                })
        };
        let window = match (&b.cron, b.duration) {
            (Some(c), Some(d)) => {
                if b.start.is_some() || b.end.is_some() {
                    return Err(err(
                        "cron",
                        "give either cron with duration, or start and end".into(),
                    ));
                }
                Window::Recurring {
                    opens: When::cron(c, tz).map_err(|m| err("cron", m))?,
                    duration: d.0,
                }
            }
            (Some(_), None) => return Err(err("duration", "is required with cron".into())),
            (None, Some(_)) => return Err(err("cron", "is required with duration".into())),
            (None, None) => {
                let (start, end) = (when("start", &b.start)?, when("end", &b.end)?);
                if end <= start {
                    return Err(err("end", "must be after start".into()));
                }
                Window::Fixed { start, end }
            }
        };
        blackouts.push(Blackout {
            name: b.name.clone(),
            window,
        });
    }
    let mut names = BTreeSet::new();
    let mut entries = Vec::new();
    for (i, item) in doc.schedule.iter().enumerate() {
        let err = |field: &str, msg: String| SpecError {
            field: format!("schedule[{i}].{field}")
                .trim_end_matches('.')
                .to_owned(),
            line: item_line(text, "schedule", i, field),
            message: msg,
        };
        let get = |k: &str| item.get(Value::String(k.into()));
        let tz = match get("timezone") {
            Some(v) => parse_tz(&text_of(v, "timezone").map_err(|m| err("timezone", m))?)
                .map_err(|m| err("timezone", m))?,
            None => default_tz,
        };
        let when = match (get("time"), get("cron"), get("every")) {
            (Some(t), None, None) => {
                let t = text_of(t, "time").map_err(|m| err("time", m))?;
                let (h, m, s, zone) = parse_time_of_day(&t).map_err(|m| err("time", m))?;
                let tz = match (zone, get("timezone")) {
                    (Some(z), Some(_)) if z != tz => {
                        return Err(err("timezone", format!("says {tz} but time says {z}")));
                    }
                    (Some(z), _) => z,
                    (None, _) => tz,
                };
                let days: Vec<&str> = match get("day") {
                    None => vec![],
                    Some(Value::Sequence(ds)) => ds
                        .iter()
                        .map(|d| {
                            text_of(d, "day")
                                .and_then(|d| parse_weekday(&d))
                                .map_err(|m| err("day", m))
                        })
                        .collect::<Result<_, _>>()?,
                    Some(d) => vec![
                        text_of(d, "day")
                            .and_then(|d| parse_weekday(&d))
                            .map_err(|m| err("day", m))?,
                    ],
                };
                When::daily(h, m, s, &days, tz).map_err(|m| err("time", m))?
            }
            (None, Some(c), None) => {
                if get("day").is_some() {
                    return Err(err(
                        "day",
                        "goes with time, not with cron (put the day in the expression)".into(),
                    ));
                }
                let c = text_of(c, "cron").map_err(|m| err("cron", m))?;
                When::cron(&c, tz).map_err(|m| err("cron", m))?
            }
            (None, None, Some(e)) => {
                let e = text_of(e, "every").map_err(|m| err("every", m))?;
                let d: Dur = e.parse().map_err(|m| err("every", m))?;
                When::every(d.0).map_err(|m| err("every", m))?
            }
            (None, None, None) => {
                return Err(err(
                    "",
                    "needs one of time (with an optional day), cron or every".into(),
                ));
            }
            _ => return Err(err("", "give only one of time, cron and every".into())),
        };
        let mut spec = doc.defaults.clone();
        for (k, v) in item {
            if k.as_str().is_some_and(|k| TIMING_KEYS.contains(&k)) {
                continue;
            }
            spec.insert(k.clone(), v.clone());
        }
        let spec_yaml = if spec.is_empty() {
            String::new()
        } else {
            // Not every parsed mapping can be written back: a tagged key (`! x: 1`,
            // found by the schedule fuzz target) makes the emitter fail. That is a
            // mistake in the file, not a reason to stop the coordinator.
            serde_yaml_ng::to_string(&spec)
                .map_err(|e| err("", format!("this entry cannot be read as a spec: {e}")))?
        };
        let scenario = check(&spec_yaml).map_err(|e| {
            let field = e.field.clone();
            err(&field, e.message)
        })?;
        let paused = match get("paused") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(err("paused", "must be true or false".into())),
        };
        let name = match get("name") {
            Some(n) => {
                let n = text_of(n, "name").map_err(|m| err("name", m))?;
                if n.trim().is_empty() {
                    return Err(err("name", "must not be empty".into()));
                }
                n
            }
            None => format!("{}@{}", scenario.as_str(), when.text()),
        };
        if !names.insert(name.clone()) {
            return Err(err(
                "name",
                format!("{name:?} is used by an earlier entry; give each entry its own name"),
            ));
        }
        entries.push(Entry {
            name,
            when,
            scenario,
            spec_yaml,
            paused,
        });
    }
    Ok(ScheduleFile {
        entries,
        blackouts,
        starting_deadline,
        source: source.to_owned(),
    })
}
