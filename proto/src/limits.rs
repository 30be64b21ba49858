//! Safety limits in the `chaos_limits` YAML shape:
//!
//! ```yaml
//! chaos_limits:
//!   latency_injection: { max_latency: 50ms, max_duration: 300s }
//!   packet_loss:       { max_loss: 1.0%,    max_duration: 60s }
//!   cpu_stress:        { max_stress: 15%,   max_duration: 60s }
//!   memory_stress:     { max_stress: 10%,   max_duration: 60s }
//!   blast_radius:      { max_nodes: 1,      max_concurrent: 1 }
//! ```
//!
//! Two built-in profiles carry the reference values: `production` (above) and
//! `staging` (500ms, 5%, 50%, 30%).

use std::{fmt, path::Path, str::FromStr, time::Duration};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A percentage, 0 to 100 inclusive, written `1.0%` (or a bare number).
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
pub struct Percent(f64);

impl Percent {
    pub fn new(value: f64) -> Result<Self, String> {
        if value.is_finite() && (0.0..=100.0).contains(&value) {
            Ok(Self(value))
        } else {
            Err(format!("{value} is not a percentage between 0 and 100"))
        }
    }
    pub fn value(self) -> f64 {
        self.0
    }
}

impl FromStr for Percent {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let number = t.strip_suffix('%').unwrap_or(t).trim();
        let value: f64 = number
            .parse()
            .map_err(|_| format!("'{s}' is not a percentage (expected e.g. 1.5%)"))?;
        Self::new(value)
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", self.0)
    }
}

/// Deserializes a value written as a bare number or as text (`1.5` or `1.5%`,
/// `60s`, `20/s`), each with its own parser.
pub fn number_or_text<'de, D: Deserializer<'de>, T>(
    d: D,
    number: impl FnOnce(f64) -> Result<T, String>,
    text: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(f64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Number(v) => number(v),
        Raw::Text(s) => text(&s),
    }
    .map_err(serde::de::Error::custom)
}

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        number_or_text(d, Percent::new, str::parse)
    }
}

impl Serialize for Percent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// serde helpers for durations written like `300s` or `50ms`.
pub mod human_duration {
    use super::*;
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| serde::de::Error::custom(format!("'{s}': {e}")))
    }
    pub fn serialize<S: Serializer>(v: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*v))
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyLimits {
    #[serde(with = "human_duration")]
    pub max_latency: Duration,
    #[serde(with = "human_duration")]
    pub max_duration: Duration,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LossLimits {
    pub max_loss: Percent,
    #[serde(with = "human_duration")]
    pub max_duration: Duration,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StressLimits {
    pub max_stress: Percent,
    #[serde(with = "human_duration")]
    pub max_duration: Duration,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlastRadius {
    pub max_nodes: u32,
    pub max_concurrent: u32,
    /// The largest share of the connected nodes one experiment may target, e.g.
    /// `1/7` (the reference report's "never exceed 1/7 nodes") or `0.14`. Unset in
    /// both built-in profiles, so small fleets keep working.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_nodes_fraction: Option<Fraction>,
}

/// A share of a whole in (0, 1], written `1/7` or `0.14`.
#[derive(Clone, Debug, PartialEq)]
pub struct Fraction {
    value: f64,
    text: String,
}

impl Fraction {
    pub fn value(&self) -> f64 {
        self.value
    }
}

impl FromStr for Fraction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let value = match t.split_once('/') {
            Some((a, b)) => {
                let (a, b): (f64, f64) = (
                    a.trim()
                        .parse()
                        .map_err(|_| format!("'{s}' is not a fraction"))?,
                    b.trim()
                        .parse()
                        .map_err(|_| format!("'{s}' is not a fraction"))?,
                );
                a / b
            }
            None => t
                .parse()
                .map_err(|_| format!("'{s}' is not a fraction (e.g. 1/7 or 0.14)"))?,
        };
        if !(value.is_finite() && value > 0.0 && value <= 1.0) {
            return Err(format!("'{s}' must be a fraction above 0 and at most 1"));
        }
        // The text as written, for messages.
        Ok(Self {
            value,
            text: t.to_owned(),
        })
    }
}

impl fmt::Display for Fraction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Fraction {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        number_or_text(d, |v| v.to_string().parse(), str::parse)
    }
}

impl Serialize for Fraction {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChaosLimits {
    pub latency_injection: LatencyLimits,
    pub packet_loss: LossLimits,
    pub cpu_stress: StressLimits,
    pub memory_stress: StressLimits,
    pub blast_radius: BlastRadius,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct LimitsDocument {
    chaos_limits: ChaosLimits,
}

/// The built-in profiles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Profile {
    #[default]
    Production,
    Staging,
}

impl FromStr for Profile {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "production" => Ok(Self::Production),
            "staging" => Ok(Self::Staging),
            other => Err(format!(
                "unknown profile '{other}' (expected production or staging)"
            )),
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Production => "production",
            Self::Staging => "staging",
        })
    }
}

/// A request that exceeds a limit. The message names the limit and its value, so an
/// operator knows exactly which line of which profile refused it.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{what} exceeds the limit {limit} = {allowed} ({source_name})")]
pub struct LimitExceeded {
    pub what: String,
    pub limit: &'static str,
    pub allowed: String,
    pub source_name: String,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read limits file {path}: {err}")]
    Read { path: String, err: std::io::Error },
    #[error("invalid limits file {path}: {err}")]
    Parse {
        path: String,
        err: serde_yaml_ng::Error,
    },
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

impl ChaosLimits {
    pub fn profile(profile: Profile) -> Self {
        let pct = |v| Percent(v);
        match profile {
            Profile::Production => Self {
                latency_injection: LatencyLimits {
                    max_latency: Duration::from_millis(50),
                    max_duration: secs(300),
                },
                packet_loss: LossLimits {
                    max_loss: pct(1.0),
                    max_duration: secs(60),
                },
                cpu_stress: StressLimits {
                    max_stress: pct(15.0),
                    max_duration: secs(60),
                },
                memory_stress: StressLimits {
                    max_stress: pct(10.0),
                    max_duration: secs(60),
                },
                blast_radius: BlastRadius {
                    max_nodes: 1,
                    max_concurrent: 1,
                    max_nodes_fraction: None,
                },
            },
            Profile::Staging => Self {
                latency_injection: LatencyLimits {
                    max_latency: Duration::from_millis(500),
                    max_duration: secs(300),
                },
                packet_loss: LossLimits {
                    max_loss: pct(5.0),
                    max_duration: secs(60),
                },
                cpu_stress: StressLimits {
                    max_stress: pct(50.0),
                    max_duration: secs(60),
                },
                memory_stress: StressLimits {
                    max_stress: pct(30.0),
                    max_duration: secs(60),
                },
                blast_radius: BlastRadius {
                    max_nodes: 1,
                    max_concurrent: 1,
                    max_nodes_fraction: None,
                },
            },
        }
    }

    /// Parses a document whose top-level key is `chaos_limits`.
    pub fn from_yaml(text: &str) -> Result<Self, serde_yaml_ng::Error> {
        // An editor's byte-order mark would read as a second document.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        serde_yaml_ng::from_str::<LimitsDocument>(text).map(|d| d.chaos_limits)
    }

    pub fn to_yaml(&self) -> String {
        serde_yaml_ng::to_string(&LimitsDocument {
            chaos_limits: self.clone(),
        })
        .expect("limits serialize")
    }

    pub fn from_file(path: &Path) -> Result<Self, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|err| LoadError::Read {
            path: path.display().to_string(),
            err,
        })?;
        Self::from_yaml(&text).map_err(|err| LoadError::Parse {
            path: path.display().to_string(),
            err,
        })
    }

    /// The caps `who` ("agent", "coordinator") enforces: `file` when given, else the
    /// built-in `profile`; with the source that refusals name.
    pub fn load(
        file: Option<&Path>,
        profile: Profile,
        who: &str,
    ) -> Result<(Self, String), LoadError> {
        Ok(match file {
            Some(p) => (
                Self::from_file(p)?,
                format!("{who} limits file {}", p.display()),
            ),
            None => (Self::profile(profile), format!("{who} profile {profile}")),
        })
    }

    /// Checks a packet-loss request. `loss` is the long-run loss rate the model
    /// produces (for Gilbert-Elliott, its stationary rate).
    pub fn check_loss(
        &self,
        loss: Percent,
        duration: Duration,
        source: &str,
    ) -> Result<(), LimitExceeded> {
        let l = &self.packet_loss;
        if loss > l.max_loss {
            return Err(LimitExceeded {
                what: format!("packet loss {loss}"),
                limit: "packet_loss.max_loss",
                allowed: l.max_loss.to_string(),
                source_name: source.to_owned(),
            });
        }
        check_duration(duration, l.max_duration, "packet_loss.max_duration", source)
    }
}

impl ChaosLimits {
    /// Checks a latency request. `worst` is the largest delay any packet can get
    /// (delay plus the jitter distribution's largest offset): that is what a user
    /// experiences, so that is what the cap bounds.
    pub fn check_latency(
        &self,
        worst: Duration,
        duration: Duration,
        source: &str,
    ) -> Result<(), LimitExceeded> {
        let l = &self.latency_injection;
        if worst > l.max_latency {
            return Err(LimitExceeded {
                what: format!("added latency up to {}", humantime::format_duration(worst)),
                limit: "latency_injection.max_latency",
                allowed: humantime::format_duration(l.max_latency).to_string(),
                source_name: source.to_owned(),
            });
        }
        check_duration(
            duration,
            l.max_duration,
            "latency_injection.max_duration",
            source,
        )
    }

    /// Checks a CPU stress request (share of the node's total CPU).
    pub fn check_cpu(
        &self,
        share: Percent,
        duration: Duration,
        source: &str,
    ) -> Result<(), LimitExceeded> {
        check_stress(
            &self.cpu_stress,
            ["cpu_stress.max_stress", "cpu_stress.max_duration"],
            "CPU stress",
            share,
            duration,
            source,
        )
    }

    /// Checks a memory stress request (share of the node's MemTotal).
    pub fn check_memory(
        &self,
        share: Percent,
        duration: Duration,
        source: &str,
    ) -> Result<(), LimitExceeded> {
        check_stress(
            &self.memory_stress,
            ["memory_stress.max_stress", "memory_stress.max_duration"],
            "memory stress",
            share,
            duration,
            source,
        )
    }

    /// GC pressure and cache invalidation are memory faults without a share of their
    /// own: only `memory_stress.max_duration` bounds them.
    pub fn check_memory_duration(
        &self,
        duration: Duration,
        source: &str,
    ) -> Result<(), LimitExceeded> {
        check_duration(
            duration,
            self.memory_stress.max_duration,
            "memory_stress.max_duration",
            source,
        )
    }
}

fn check_stress(
    l: &StressLimits,
    [max_stress, max_duration]: [&'static str; 2],
    what: &str,
    share: Percent,
    duration: Duration,
    source: &str,
) -> Result<(), LimitExceeded> {
    if share > l.max_stress {
        return Err(LimitExceeded {
            what: format!("{what} {share}"),
            limit: max_stress,
            allowed: l.max_stress.to_string(),
            source_name: source.to_owned(),
        });
    }
    check_duration(duration, l.max_duration, max_duration, source)
}

fn check_duration(
    duration: Duration,
    max: Duration,
    limit: &'static str,
    source: &str,
) -> Result<(), LimitExceeded> {
    if duration > max {
        return Err(LimitExceeded {
            what: format!("duration {}", humantime::format_duration(duration)),
            limit,
            allowed: humantime::format_duration(max).to_string(),
            source_name: source.to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_caps_bound_the_worst_delay_and_the_duration() {
        let prod = ChaosLimits::profile(Profile::Production);
        let ms = Duration::from_millis;
        assert!(prod.check_latency(ms(50), secs(300), "p").is_ok());
        let e = prod.check_latency(ms(51), secs(60), "p").unwrap_err();
        assert_eq!(e.limit, "latency_injection.max_latency");
        let e = prod.check_latency(ms(10), secs(301), "p").unwrap_err();
        assert_eq!(e.limit, "latency_injection.max_duration");
        let staging = ChaosLimits::profile(Profile::Staging);
        assert!(staging.check_latency(ms(500), secs(60), "s").is_ok());
        assert!(staging.check_latency(ms(501), secs(60), "s").is_err());
    }

    #[test]
    fn percent_parses_suffix_and_bare_numbers_and_rejects_out_of_range() {
        assert_eq!("1.0%".parse::<Percent>().unwrap().value(), 1.0);
        assert_eq!(" 30 ".parse::<Percent>().unwrap().value(), 30.0);
        assert!("101%".parse::<Percent>().is_err());
        assert!("-1%".parse::<Percent>().is_err());
        assert!("NaN".parse::<Percent>().is_err());
        assert!("abc".parse::<Percent>().is_err());
    }

    #[test]
    fn reference_document_round_trips_to_the_production_profile() {
        let text = r#"
chaos_limits:
  latency_injection:
    max_latency: 50ms        # vs 500ms in staging
    max_duration: 300s       # 5 minutes
  packet_loss:
    max_loss: 1.0%           # vs 5% in staging
    max_duration: 60s
  cpu_stress:
    max_stress: 15%          # vs 50% in staging
    max_duration: 60s
  memory_stress:
    max_stress: 10%          # vs 30% in staging
    max_duration: 60s
  blast_radius:
    max_nodes: 1             # Single node only
    max_concurrent: 1        # One test at a time
"#;
        let parsed = ChaosLimits::from_yaml(text).unwrap();
        assert_eq!(parsed, ChaosLimits::profile(Profile::Production));
        let again = ChaosLimits::from_yaml(&parsed.to_yaml()).unwrap();
        assert_eq!(again, parsed);
    }

    #[test]
    fn unknown_keys_are_rejected_so_typos_do_not_silently_drop_a_limit() {
        let text = ChaosLimits::profile(Profile::Staging)
            .to_yaml()
            .replace("max_loss", "max_los");
        let err = ChaosLimits::from_yaml(&text).unwrap_err().to_string();
        assert!(err.contains("max_los"), "{err}");
    }

    #[test]
    fn loss_checks_name_the_limit_that_refused() {
        let prod = ChaosLimits::profile(Profile::Production);
        assert!(
            prod.check_loss(Percent(1.0), secs(60), "production")
                .is_ok()
        );
        let e = prod
            .check_loss(Percent(1.5), secs(10), "production")
            .unwrap_err();
        assert_eq!(e.limit, "packet_loss.max_loss");
        assert!(e.to_string().contains("1%"), "{e}");
        let e = prod
            .check_loss(Percent(0.5), secs(61), "production")
            .unwrap_err();
        assert_eq!(e.limit, "packet_loss.max_duration");
        let staging = ChaosLimits::profile(Profile::Staging);
        assert!(
            staging
                .check_loss(Percent(5.0), secs(60), "staging")
                .is_ok()
        );
        assert!(
            staging
                .check_loss(Percent(5.1), secs(60), "staging")
                .is_err()
        );
    }

    #[test]
    fn stress_checks_name_their_own_section() {
        let prod = ChaosLimits::profile(Profile::Production);
        let limit = |r: Result<(), LimitExceeded>| r.unwrap_err().limit;
        assert!(prod.check_cpu(Percent(15.0), secs(60), "p").is_ok());
        assert_eq!(
            limit(prod.check_cpu(Percent(16.0), secs(1), "p")),
            "cpu_stress.max_stress"
        );
        assert_eq!(
            limit(prod.check_cpu(Percent(1.0), secs(61), "p")),
            "cpu_stress.max_duration"
        );
        assert!(prod.check_memory(Percent(10.0), secs(60), "p").is_ok());
        assert_eq!(
            limit(prod.check_memory(Percent(11.0), secs(1), "p")),
            "memory_stress.max_stress"
        );
        let staging = ChaosLimits::profile(Profile::Staging);
        assert!(staging.check_cpu(Percent(50.0), secs(60), "s").is_ok());
        assert!(staging.check_memory(Percent(30.0), secs(60), "s").is_ok());
        assert!(staging.check_memory(Percent(31.0), secs(60), "s").is_err());
    }
}
