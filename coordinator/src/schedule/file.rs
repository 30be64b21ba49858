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
use faultline_proto::{
    limits::number_or_text,
    spec::{Scenario, SpecError, values::Dur},
};
use serde::{
    Deserialize, Deserializer,
    de::{SeqAccess, Visitor},
};
use serde_yaml_ng::Mapping;

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
    timezone: Option<Zone>,
    starting_deadline: Option<Dur>,
    #[serde(default)]
    defaults: Mapping,
    #[serde(default)]
    blackouts: Vec<BlackoutDoc>,
    #[serde(default)]
    schedule: Vec<EntryDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BlackoutDoc {
    name: Text,
    start: Option<Instant>,
    end: Option<Instant>,
    cron: Option<Text>,
    duration: Option<Dur>,
    timezone: Option<Zone>,
}

/// One entry: its timing keys, and every other key a spec field (checked by the
/// spec's own parser, which names the unknown ones).
#[derive(Deserialize)]
struct EntryDoc {
    name: Option<Name>,
    time: Option<TimeOfDay>,
    day: Option<Days>,
    cron: Option<Text>,
    every: Option<Dur>,
    timezone: Option<Zone>,
    paused: Option<bool>,
    #[serde(flatten)]
    spec: Mapping,
}

/// Text a person wrote where YAML may read a number (`time: 0200`): refused with
/// the hint to quote it, not turned into "200".
struct Text(String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        number_or_text(
            d,
            |n| {
                Err(format!(
                    "must be text; write it in quotes (YAML read {n} as a number)"
                ))
            },
            |s| Ok(Text(s.to_owned())),
        )
    }
}

/// Parses a value from its text with `parse`, whose message is the error.
fn from_text<'de, D: Deserializer<'de>, T>(
    d: D,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, D::Error> {
    let Text(t) = Text::deserialize(d)?;
    parse(&t).map_err(serde::de::Error::custom)
}

/// An entry's name: not blank.
struct Name(String);

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_text(d, |t| {
            if t.trim().is_empty() {
                Err("must not be empty".into())
            } else {
                Ok(Name(t.to_owned()))
            }
        })
    }
}

/// An IANA time zone.
struct Zone(Tz);

impl<'de> Deserialize<'de> for Zone {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_text(d, |t| parse_tz(t).map(Zone))
    }
}

/// `02:00`, `02:00:30`, optionally with the zone (`02:00 UTC`).
struct TimeOfDay {
    h: u32,
    m: u32,
    s: u32,
    zone: Option<Tz>,
}

impl<'de> Deserialize<'de> for TimeOfDay {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_text(d, |t| {
            parse_time_of_day(t).map(|(h, m, s, zone)| TimeOfDay { h, m, s, zone })
        })
    }
}

/// An RFC 3339 time.
struct Instant(DateTime<Utc>);

impl<'de> Deserialize<'de> for Instant {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_text(d, |t| {
            DateTime::parse_from_rfc3339(t)
                .map(|d| Instant(d.with_timezone(&Utc)))
                .map_err(|e| format!("{t:?} is not an RFC 3339 time (2026-12-24T00:00:00Z): {e}"))
        })
    }
}

/// `day: Tuesday` or `day: [Monday, Friday]`.
struct Days(Vec<&'static str>);

impl<'de> Deserialize<'de> for Days {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Day(&'static str);
        impl<'de> Deserialize<'de> for Day {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                from_text(d, |t| parse_weekday(t).map(Day))
            }
        }
        struct OneOrMany;
        impl<'de> Visitor<'de> for OneOrMany {
            type Value = Days;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a day (Monday .. Sunday) or a list of days")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Days, E> {
                parse_weekday(v).map(|d| Days(vec![d])).map_err(E::custom)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Days, A::Error> {
                let mut days = Vec::new();
                while let Some(Day(d)) = seq.next_element()? {
                    days.push(d);
                }
                Ok(Days(days))
            }
        }
        d.deserialize_any(OneOrMany)
    }
}

/// A mistake inside `schedule` or `blackouts` named as `schedule[1].day` at the line
/// of that key inside that item.
fn in_item(text: &str, mut e: SpecError) -> SpecError {
    let path = e.field.clone();
    let mut parts = path.splitn(3, '.');
    let (Some(list @ ("schedule" | "blackouts")), Some(i)) = (parts.next(), parts.next()) else {
        return e;
    };
    let Ok(i) = i.parse::<usize>() else { return e };
    let rest = parts.next().unwrap_or_default();
    e.line = item_line(text, list, i, rest).or(e.line);
    let mut field = format!("{list}[{i}]");
    for part in rest.split('.').filter(|p| !p.is_empty()) {
        if part.parse::<usize>().is_ok() {
            field += &format!("[{part}]");
        } else {
            field += &format!(".{part}");
        }
    }
    e.field = field;
    // serde_yaml_ng may lead its message with its own form of the path, or of a
    // parent's (`schedule[0]: ` for a key of an entry).
    let parents = (0..=e.field.len())
        .rev()
        .filter(|&n| n == e.field.len() || matches!(e.field.as_bytes()[n], b'.' | b'['));
    for n in parents {
        if let Some(m) = e.message.strip_prefix(&format!("{}: ", &e.field[..n])) {
            e.message = m.to_owned();
            break;
        }
    }
    e
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

/// A mistake at `field` of item `i` of `list`.
fn item_err(text: &str, list: &str, i: usize) -> impl Fn(&str, String) -> SpecError {
    move |field: &str, message: String| SpecError {
        field: format!("{list}[{i}].{field}")
            .trim_end_matches('.')
            .to_owned(),
        line: item_line(text, list, i, field),
        message,
    }
}

/// Parses and validates a schedule document. `check` validates one entry's spec
/// (resolution and the limits) and returns its scenario.
pub fn parse(
    text: &str,
    source: &str,
    check: &dyn Fn(&str) -> Result<Scenario, SpecError>,
) -> Result<ScheduleFile, SpecError> {
    let doc: Doc = faultline_proto::spec::parse_yaml(text).map_err(|e| in_item(text, e))?;
    let default_tz = doc.timezone.map_or(Tz::UTC, |z| z.0);
    let starting_deadline = doc
        .starting_deadline
        .map_or(DEFAULT_STARTING_DEADLINE, |d| d.0);
    if starting_deadline < Duration::from_secs(1) {
        return Err(SpecError::at(
            text,
            "starting_deadline",
            "must be at least 1s",
        ));
    }
    let blackouts = (doc.blackouts.into_iter().enumerate())
        .map(|(i, b)| blackout(b, default_tz, item_err(text, "blackouts", i)))
        .collect::<Result<_, _>>()?;
    let mut names = BTreeSet::new();
    let mut entries = Vec::new();
    for (i, item) in doc.schedule.into_iter().enumerate() {
        let e = entry(
            item,
            &doc.defaults,
            default_tz,
            check,
            item_err(text, "schedule", i),
        )?;
        if !names.insert(e.name.clone()) {
            return Err(item_err(text, "schedule", i)(
                "name",
                format!(
                    "{:?} is used by an earlier entry; give each entry its own name",
                    e.name
                ),
            ));
        }
        entries.push(e);
    }
    Ok(ScheduleFile {
        entries,
        blackouts,
        starting_deadline,
        source: source.to_owned(),
    })
}

fn blackout(
    b: BlackoutDoc,
    default_tz: Tz,
    err: impl Fn(&str, String) -> SpecError,
) -> Result<Blackout, SpecError> {
    let tz = b.timezone.map_or(default_tz, |z| z.0);
    let window = match (b.cron, b.duration) {
        (Some(_), Some(_)) if b.start.is_some() || b.end.is_some() => {
            return Err(err(
                "cron",
                "give either cron with duration, or start and end".into(),
            ));
        }
        (Some(Text(c)), Some(d)) => Window::Recurring {
            opens: When::cron(&c, tz).map_err(|m| err("cron", m))?,
            duration: d.0,
        },
        (Some(_), None) => return Err(err("duration", "is required with cron".into())),
        (None, Some(_)) => return Err(err("cron", "is required with duration".into())),
        (None, None) => {
            let required = |field: &str, at: Option<Instant>| {
                at.map(|a| a.0)
                    .ok_or_else(|| err(field, "is required with a fixed window".into()))
            };
            let (start, end) = (required("start", b.start)?, required("end", b.end)?);
            if end <= start {
                return Err(err("end", "must be after start".into()));
            }
            Window::Fixed { start, end }
        }
    };
    Ok(Blackout {
        name: b.name.0,
        window,
    })
}

fn entry(
    item: EntryDoc,
    defaults: &Mapping,
    default_tz: Tz,
    check: &dyn Fn(&str) -> Result<Scenario, SpecError>,
    err: impl Fn(&str, String) -> SpecError,
) -> Result<Entry, SpecError> {
    let tz = item.timezone.as_ref().map_or(default_tz, |z| z.0);
    let when = match (item.time, item.cron, item.every) {
        (Some(t), None, None) => {
            let tz = match (t.zone, &item.timezone) {
                (Some(z), Some(_)) if z != tz => {
                    return Err(err("timezone", format!("says {tz} but time says {z}")));
                }
                (Some(z), _) => z,
                (None, _) => tz,
            };
            let days = item.day.map(|d| d.0).unwrap_or_default();
            When::daily(t.h, t.m, t.s, &days, tz).map_err(|m| err("time", m))?
        }
        (None, Some(_), None) if item.day.is_some() => {
            return Err(err(
                "day",
                "goes with time, not with cron (put the day in the expression)".into(),
            ));
        }
        (None, Some(Text(c)), None) => When::cron(&c, tz).map_err(|m| err("cron", m))?,
        (None, None, Some(e)) => When::every(e.0).map_err(|m| err("every", m))?,
        (None, None, None) => {
            return Err(err(
                "",
                "needs one of time (with an optional day), cron or every".into(),
            ));
        }
        _ => return Err(err("", "give only one of time, cron and every".into())),
    };
    let mut spec = defaults.clone();
    spec.extend(item.spec);
    let spec_yaml = if spec.is_empty() {
        String::new()
    } else {
        // Not every parsed mapping can be written back: a tagged key (`! x: 1`,
        // found by the schedule fuzz target) makes the emitter fail. That is a
        // mistake in the file, not a reason to stop the coordinator.
        serde_yaml_ng::to_string(&spec)
            .map_err(|e| err("", format!("this entry cannot be read as a spec: {e}")))?
    };
    let scenario = check(&spec_yaml).map_err(|e| err(&e.field, e.message))?;
    Ok(Entry {
        name: item
            .name
            .map_or_else(|| format!("{}@{}", scenario.as_str(), when.text()), |n| n.0),
        when,
        scenario,
        spec_yaml,
        paused: item.paused.unwrap_or(false),
    })
}
