//! The small value types of an experiment spec, each with the spelling the reference
//! report uses: durations (`60s`), rates (`20/s`), incident severities (`P0`-`P3`);
//! percentages are `limits::Percent` (`1.0%`). And `line_of`, which finds where a
//! field is written so an error can name its line.
use std::{fmt, str::FromStr, time::Duration};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::limits::number_or_text;

/// A duration written `60s`, `150ms`, `2m`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        humantime::parse_duration(s.trim())
            .map(Dur)
            .map_err(|e| format!("'{s}' is not a duration (e.g. 60s, 150ms): {e}"))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        number_or_text(
            d,
            // A bare number has no unit: say which to write instead of guessing.
            |n| Err(format!("{n} has no unit: write e.g. {n}s or {n}ms")),
            str::parse,
        )
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Requests per second, written `20/s`, `300/m` or a bare number (per second).
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
pub struct Rate(pub f64);

/// The fastest a probe may run: a health check, not a load test.
pub const MAX_PROBE_RATE: f64 = 100.0;

impl FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let (n, per) = match t.split_once('/') {
            Some((n, "s")) => (n, 1.0),
            Some((n, "m")) => (n, 60.0),
            Some(_) => return Err(format!("'{s}' is not a rate (e.g. 20/s or 300/m)")),
            None => (t, 1.0),
        };
        let n: f64 = n
            .trim()
            .parse()
            .map_err(|_| format!("'{s}' is not a rate (e.g. 20/s or 300/m)"))?;
        let hz = n / per;
        if !(hz.is_finite() && hz > 0.0 && hz <= MAX_PROBE_RATE) {
            return Err(format!(
                "'{s}' must be above 0 and at most {MAX_PROBE_RATE}/s"
            ));
        }
        Ok(Rate(hz))
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/s", self.0)
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        number_or_text(d, |n| n.to_string().parse(), str::parse)
    }
}

impl Serialize for Rate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Incident severity, P0 (worst) to P3.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Severity {
    P0,
    P1,
    P2,
    P3,
}

impl Severity {
    pub const ALL: [Severity; 4] = [Severity::P0, Severity::P1, Severity::P2, Severity::P3];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::P0 => "P0",
            Severity::P1 => "P1",
            Severity::P2 => "P2",
            Severity::P3 => "P3",
        }
    }
}

impl FromStr for Severity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Severity::ALL
            .into_iter()
            .find(|v| v.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| format!("'{s}' is not a severity (P0, P1, P2 or P3)"))
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The 1-based line where the field at `path` (dot-separated, e.g.
/// `abort_conditions.latency_p99_above`) is written in a YAML document, searching
/// each key after the line of its parent. Block and flow style both work; a field
/// that is not in the text (a default, or a value from the command line) has none.
pub fn line_of(text: &str, path: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let mut from = 0;
    let mut found = None;
    for key in path.split('.').filter(|k| !k.is_empty()) {
        // A list index (`http.0`) moves on to that item's first key.
        if key.parse::<usize>().is_ok() {
            continue;
        }
        let pattern = format!("{key}:");
        let at = (from..lines.len()).find(|&i| {
            let l = lines[i];
            l.match_indices(&pattern).any(|(pos, _)| {
                pos == 0
                    || l[..pos]
                        .chars()
                        .last()
                        .is_some_and(|c| c == ' ' || c == '{' || c == ',' || c == '-')
            })
        })?;
        found = Some(at + 1);
        from = at;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_as_the_report_writes_them() {
        assert_eq!("60s".parse::<Dur>().unwrap().0, Duration::from_secs(60));
        assert_eq!(
            "150ms".parse::<Dur>().unwrap().0,
            Duration::from_millis(150)
        );
        assert!("60".parse::<Dur>().is_err());
        assert_eq!("20/s".parse::<Rate>().unwrap().0, 20.0);
        assert_eq!("300/m".parse::<Rate>().unwrap().0, 5.0);
        assert!("1000/s".parse::<Rate>().is_err());
        assert!("0/s".parse::<Rate>().is_err());
        assert_eq!("p2".parse::<Severity>().unwrap(), Severity::P2);
        assert!("P5".parse::<Severity>().is_err());
        let y: Result<Dur, _> = serde_yaml_ng::from_str("60");
        assert!(y.unwrap_err().to_string().contains("write e.g. 60s"));
    }

    #[test]
    fn fields_are_found_by_path() {
        let text = "scenario: cpu_stress\ncpu_stress: 20%\nabort_conditions:\n  error_rate_above: 1%\n  latency_p99_above: 9\nhealth:\n  http:\n    - {name: api, url: ftp://x}\n";
        assert_eq!(line_of(text, "cpu_stress"), Some(2));
        assert_eq!(line_of(text, "abort_conditions.latency_p99_above"), Some(5));
        assert_eq!(line_of(text, "health.http.0.url"), Some(8));
        assert_eq!(line_of(text, "prerequisites"), None);
    }
}
