//! When a schedule entry is due and when a blackout window is open. Calendar times
//! (`time:` with `day:`, and `cron:`) are cron expressions evaluated by croner in
//! an IANA time zone, so daylight-saving changes follow croner's rules: a time that
//! does not exist that day runs at the first instant after the gap, a repeated one
//! runs once. `every:` is a fixed period aligned to the Unix epoch, so its slots do
//! not depend on when the coordinator started.
use std::{str::FromStr, time::Duration};

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::{
    Cron,
    parser::{CronParser, Seconds},
};

#[derive(Clone, Debug)]
pub enum When {
    Calendar {
        cron: Box<Cron>,
        tz: Tz,
        text: String,
    },
    Every {
        period: Duration,
        text: String,
    },
}

pub fn parse_tz(name: &str) -> Result<Tz, String> {
    Tz::from_str(name).map_err(|_| {
        format!("unknown time zone {name:?} (an IANA name such as UTC or Europe/Berlin)")
    })
}

pub fn parse_cron(pattern: &str) -> Result<Cron, String> {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .build()
        .parse(pattern)
        .map_err(|e| format!("invalid cron expression {pattern:?}: {e}"))
}

/// `"02:00"`, `"02:00:30"`, optionally followed by a time zone (`"02:00 UTC"`).
/// Returns (hour, minute, second, zone named in the text).
pub fn parse_time_of_day(text: &str) -> Result<(u32, u32, u32, Option<Tz>), String> {
    let mut parts = text.split_whitespace();
    let clock = parts.next().unwrap_or_default();
    let tz = parts.next().map(parse_tz).transpose()?;
    if parts.next().is_some() {
        return Err(format!(
            "{text:?}: expected HH:MM[:SS] [ZONE], e.g. \"02:00 UTC\""
        ));
    }
    let nums: Vec<&str> = clock.split(':').collect();
    let bad = || format!("{text:?}: expected HH:MM[:SS] [ZONE], e.g. \"02:00 UTC\"");
    if !(2..=3).contains(&nums.len()) {
        return Err(bad());
    }
    let n = |s: &str, max: u32| s.parse::<u32>().ok().filter(|v| *v <= max && s.len() <= 2);
    let h = n(nums[0], 23).ok_or_else(bad)?;
    let m = n(nums[1], 59).ok_or_else(bad)?;
    let s = match nums.get(2) {
        Some(x) => n(x, 59).ok_or_else(bad)?,
        None => 0,
    };
    Ok((h, m, s, tz))
}

pub fn parse_weekday(name: &str) -> Result<&'static str, String> {
    const DAYS: [(&str, &str); 7] = [
        ("monday", "MON"),
        ("tuesday", "TUE"),
        ("wednesday", "WED"),
        ("thursday", "THU"),
        ("friday", "FRI"),
        ("saturday", "SAT"),
        ("sunday", "SUN"),
    ];
    let l = name.trim().to_ascii_lowercase();
    DAYS.iter()
        .find(|(full, short)| {
            l == *full || (l.len() >= 3 && full.starts_with(&l)) || l == short.to_ascii_lowercase()
        })
        .map(|(_, short)| *short)
        .ok_or_else(|| format!("unknown day {name:?} (Monday .. Sunday)"))
}

impl When {
    /// `time:` (with optional `day:`s) as a cron expression in `tz`.
    pub fn daily(h: u32, m: u32, s: u32, days: &[&str], tz: Tz) -> Result<When, String> {
        let dow = if days.is_empty() {
            "*".to_owned()
        } else {
            days.join(",")
        };
        let cron = parse_cron(&format!("{s} {m} {h} * * {dow}"))?;
        let clock = if s == 0 {
            format!("{h:02}:{m:02}")
        } else {
            format!("{h:02}:{m:02}:{s:02}")
        };
        let text = if days.is_empty() {
            format!("daily {clock} {tz}")
        } else {
            format!("{} {clock} {tz}", days.join(","))
        };
        Ok(When::Calendar {
            cron: Box::new(cron),
            tz,
            text,
        })
    }

    pub fn cron(pattern: &str, tz: Tz) -> Result<When, String> {
        Ok(When::Calendar {
            cron: Box::new(parse_cron(pattern)?),
            tz,
            text: format!("cron {pattern} ({tz})"),
        })
    }

    pub fn every(period: Duration) -> Result<When, String> {
        if period < Duration::from_secs(1) {
            return Err("must be at least 1s".into());
        }
        Ok(When::Every {
            period,
            text: format!("every {}", humantime::format_duration(period)),
        })
    }

    pub fn text(&self) -> &str {
        match self {
            When::Calendar { text, .. } | When::Every { text, .. } => text,
        }
    }

    /// The first slot strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            When::Calendar { cron, tz, .. } => cron
                .find_next_occurrence(&t.with_timezone(tz), false)
                .ok()
                .map(|d| d.with_timezone(&Utc)),
            When::Every { period, .. } => {
                let p = period.as_millis() as i64;
                let now = t.timestamp_millis();
                Utc.timestamp_millis_opt((now.div_euclid(p) + 1) * p)
                    .single()
            }
        }
    }

    /// The last slot at or before `t`.
    pub fn last_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            When::Calendar { cron, tz, .. } => cron
                .find_previous_occurrence(&t.with_timezone(tz), true)
                .ok()
                .map(|d| d.with_timezone(&Utc)),
            When::Every { period, .. } => {
                let p = period.as_millis() as i64;
                Utc.timestamp_millis_opt(t.timestamp_millis().div_euclid(p) * p)
                    .single()
            }
        }
    }
}

/// A window in which no experiment may start or run.
#[derive(Clone, Debug)]
pub enum Window {
    Fixed {
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    },
    Recurring {
        opens: When,
        duration: Duration,
    },
}

impl Window {
    /// When the window closes, if it is open at `t`.
    pub fn open_until(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Window::Fixed { start, end } => (*start <= t && t < *end).then_some(*end),
            Window::Recurring { opens, duration } => {
                let opened = opens.last_at_or_before(t)?;
                let end = opened + chrono::Duration::from_std(*duration).ok()?;
                (t < end).then_some(end)
            }
        }
    }

    /// The next time the window opens after `t`.
    pub fn next_start(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Window::Fixed { start, .. } => (*start > t).then_some(*start),
            Window::Recurring { opens, .. } => opens.next_after(t),
        }
    }

    pub fn text(&self) -> String {
        match self {
            Window::Fixed { start, end } => format!(
                "{} to {}",
                start.format("%Y-%m-%d %H:%M UTC"),
                end.format("%Y-%m-%d %H:%M UTC")
            ),
            Window::Recurring { opens, duration } => format!(
                "{} for {}",
                opens.text().trim_start_matches("cron "),
                humantime::format_duration(*duration)
            ),
        }
    }
}
