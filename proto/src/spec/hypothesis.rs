//! `expected_impact`: the hypothesis an experiment states, as bounds the
//! coordinator measures. A spec names one (`none`, `minimal`,
//! `temporary_cache_misses`, `brief_latency_spikes`, or another name the
//! coordinator's config defines under `hypotheses:`) or writes its bounds in place.
//!
//! Invariant: a bound is a number the outcome already carries (a signal's baseline
//! and fault-window means, the recovery time, the incidents), so every verdict on a
//! hypothesis names the measured value it rests on.
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::Dur;
use crate::limits::Percent;

/// What may change while the fault is applied, and how fast the service is back.
/// A bound left out is not part of the hypothesis.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImpactBounds {
    /// The error rate's mean while applied may exceed the baseline's by less than
    /// this many percentage points.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_rate_rise_below: Option<Percent>,
    /// The p99's mean while applied may exceed the baseline's by less than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_p99_rise_below: Option<Dur>,
    /// Throughput's mean while applied may fall below the baseline's by less than
    /// this share of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throughput_drop_below: Option<Percent>,
    /// The steady state is back (the recovery time) within this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovered_within: Option<Dur>,
    /// No incident opens while the experiment runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_incident: Option<bool>,
}

/// `expected_impact:` as written: a name, or bounds in place.
#[derive(Clone, Debug, PartialEq)]
pub enum ExpectedImpact {
    Named(String),
    Custom(ImpactBounds),
}

impl ExpectedImpact {
    /// How the outcome and the reports name it.
    pub fn name(&self) -> &str {
        match self {
            Self::Named(n) => n,
            Self::Custom(_) => "custom",
        }
    }
}

impl Serialize for ExpectedImpact {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Named(n) => s.serialize_str(n),
            Self::Custom(b) => b.serialize(s),
        }
    }
}

/// A string is a name; a mapping is bounds, read with their own field names in
/// the errors (an untagged enum would only say that nothing matched).
impl<'de> Deserialize<'de> for ExpectedImpact {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = ExpectedImpact;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a hypothesis's name (e.g. minimal) or a mapping of bounds")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(ExpectedImpact::Named(v.to_owned()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                ImpactBounds::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(ExpectedImpact::Custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// The values the report uses, with the bounds they mean unless the coordinator's
/// config says otherwise (`hypotheses:`), as a config document.
pub const DEFAULTS_YAML: &str = "\
hypotheses:
  # Nothing a user could notice.
  none: {error_rate_rise_below: 0.01%, latency_p99_rise_below: 5ms, throughput_drop_below: 2%, no_incident: true}
  # The report's default: errors and throughput barely move, nobody is paged.
  minimal: {error_rate_rise_below: 0.05%, throughput_drop_below: 5%, no_incident: true}
  # A cold cache costs some errors and is warm again within half a minute.
  temporary_cache_misses: {error_rate_rise_below: 0.1%, recovered_within: 30s, no_incident: true}
  # Latency rises while applied and is back within tolerance 10 s after.
  brief_latency_spikes: {error_rate_rise_below: 0.1%, recovered_within: 10s, no_incident: true}
";

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, Serialize)]
    struct Doc {
        expected_impact: ExpectedImpact,
    }

    #[test]
    fn a_name_or_bounds_read_and_write_back() {
        let named: Doc = serde_yaml_ng::from_str("expected_impact: minimal").unwrap();
        assert_eq!(
            named.expected_impact,
            ExpectedImpact::Named("minimal".into())
        );
        let text = "expected_impact:\n  error_rate_rise_below: 0.2%\n  recovered_within: 15s\n";
        let custom: Doc = serde_yaml_ng::from_str(text).unwrap();
        let ExpectedImpact::Custom(b) = &custom.expected_impact else {
            panic!("{custom:?}")
        };
        assert_eq!(b.error_rate_rise_below.map(|p| p.value()), Some(0.2));
        assert_eq!(b.recovered_within.map(|d| d.0.as_secs()), Some(15));
        let again: Doc =
            serde_yaml_ng::from_str(&serde_yaml_ng::to_string(&custom).unwrap()).unwrap();
        assert_eq!(again.expected_impact, custom.expected_impact);
    }

    #[test]
    fn an_unknown_bound_is_named() {
        let e = serde_yaml_ng::from_str::<Doc>("expected_impact: {error_rate_below: 1%}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("error_rate_below"), "{e}");
    }

    #[test]
    fn the_documented_defaults_read() {
        #[derive(Deserialize)]
        struct File {
            hypotheses: std::collections::BTreeMap<String, ImpactBounds>,
        }
        let f: File = serde_yaml_ng::from_str(DEFAULTS_YAML).unwrap();
        let names: Vec<&str> = f.hypotheses.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "brief_latency_spikes",
                "minimal",
                "none",
                "temporary_cache_misses"
            ]
        );
        assert_eq!(
            f.hypotheses["minimal"]
                .error_rate_rise_below
                .map(|p| p.value()),
            Some(0.05)
        );
    }
}
