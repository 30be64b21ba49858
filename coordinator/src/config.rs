//! The coordinator's config file (`--config`, YAML): what every experiment gets
//! unless its spec says otherwise, so a team writes its health sources, its
//! prerequisites and abort conditions once. Every section is optional; what a file
//! leaves out comes from the embedded defaults of the safety profile
//! (`faultline-coordinator show-config` prints them). Flags of `serve` override the
//! file.
//!
//! The production defaults are the reference report's: its prerequisites (health
//! score above 95, no P0-P3 incident, traffic below 80 % of peak, error rate below
//! 0.1 %, latency within 10 % of baseline, and all six required systems), its abort
//! conditions, and recovery within tolerance of the baseline. With those, an
//! experiment is refused until monitoring, alerting, a health check and a backup
//! check are configured, or explicitly waived per spec (`prerequisites.required`).
//! The staging profile requires only rollback readiness.
use std::{collections::BTreeMap, path::Path, time::Duration};

use anyhow::{Context, Result};
use faultline_proto::{
    endpoint::EndpointPolicy,
    limits::Profile,
    spec::{
        AbortConditions, Dur, Health, ImpactBounds, Prerequisites, Recovery, RecoveryOptions,
        System, hypothesis,
    },
};
use serde::{Deserialize, Serialize};

/// An application component the report's `components:` names: the hook that makes it
/// drop its cache, the files whose page cache is evicted with it, and the hook that
/// asks its runtime to collect (gc_pressure).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Component {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gc_hook: Option<String>,
}

/// What gc_pressure squeezes when a spec names no cgroup.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcDefaults {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_cgroup: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_percent: Option<f64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeEndpoints {
    /// Networks besides loopback that hooks and node-side probes may call (agents
    /// check their own `--allow-endpoint` list again).
    #[serde(default)]
    pub allow: Vec<ipnet::IpNet>,
}

/// The file, as written.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// `faultline-coordinator serve` options (its long flags as keys); read by the
    /// binary before it parses its command line, checked by `check-config`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serve: Option<serde_yaml_ng::Mapping>,
    /// Refuse experiments that would run with no health signal (node signals only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_health: Option<bool>,
    /// The baseline window (the report's T-30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prerequisites: Option<Prerequisites>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort_conditions: Option<AbortConditions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery: Option<Recovery>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub components: BTreeMap<String, Component>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gc: Option<GcDefaults>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_endpoints: Option<NodeEndpoints>,
    /// What each `expected_impact` name means, as bounds; a name here replaces the
    /// default of the same name, a new name adds one.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub hypotheses: BTreeMap<String, ImpactBounds>,
}

const PRODUCTION: &str = "\
# faultline-coordinator's embedded defaults, production profile (the reference
# report's safety measures). A --config file overrides any of it.
require_health: false
baseline: 30s
health:
  window: 5s
  dark_grace: 5s
prerequisites:
  health_score_above: 95
  no_incidents: [P0, P1, P2, P3]
  traffic_below_peak: 80%
  error_rate_below: 0.1%
  latency_within_baseline: 10%
  required: [rollback, health_checker, incident_response, monitoring, alerting, recent_backup]
abort_conditions:
  health_score_below: 90
  error_rate_above: 0.5%
  latency_p99_above: 150ms
  new_incident: [P0, P1, P2]
  consecutive: 1
recovery:
  tolerance: {error_rate: 0.05%, latency_p99_factor: 1.2, latency_p99_extra: 5ms, health_score_drop: 2}
  hold: 3s
  timeout: 120s
";

/// The embedded defaults of `profile`, as a config document.
pub fn defaults_yaml(profile: Profile) -> String {
    let production = format!("{PRODUCTION}{}", hypothesis::DEFAULTS_YAML);
    match profile {
        Profile::Production => production,
        Profile::Staging => production
            .replace("production profile", "staging profile")
            .replace(
                "  required: [rollback, health_checker, incident_response, monitoring, alerting, recent_backup]",
                "  required: [rollback]",
            ),
    }
}

/// The config in force: the profile's defaults with the file (if any) over them.
#[derive(Clone, Debug)]
pub struct Settings {
    pub require_health: bool,
    pub baseline: Duration,
    pub health: Health,
    pub prerequisites: Prerequisites,
    pub abort: AbortConditions,
    pub recovery: RecoveryOptions,
    pub components: BTreeMap<String, Component>,
    pub gc: GcDefaults,
    pub endpoints: EndpointPolicy,
    /// `expected_impact` names and the bounds each means.
    pub hypotheses: BTreeMap<String, ImpactBounds>,
    /// Where the settings came from, for messages.
    pub source: String,
}

impl Settings {
    pub fn load(file: Option<&Path>, profile: Profile) -> Result<Self> {
        let defaults: ConfigFile =
            serde_yaml_ng::from_str(&defaults_yaml(profile)).expect("embedded defaults parse");
        let (over, source) = match file {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read config file {}", p.display()))?;
                let f: ConfigFile = Self::parse(&text)
                    .with_context(|| format!("invalid config file {}", p.display()))?;
                (f, format!("config file {}", p.display()))
            }
            None => (
                ConfigFile::default(),
                format!("embedded {profile} defaults"),
            ),
        };
        Ok(Self::merge(defaults, over, source))
    }

    /// Parses a config document, naming the field and line of a mistake.
    pub fn parse(text: &str) -> Result<ConfigFile> {
        let f: ConfigFile =
            faultline_proto::spec::parse_yaml(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        // The same rules as a spec's own health section (schemes, names, intervals).
        let probe = faultline_proto::spec::Spec {
            health: f.health.clone(),
            ..Default::default()
        };
        if let Err(e) = probe.check_health_only(text) {
            anyhow::bail!("{e}");
        }
        Ok(f)
    }

    fn merge(d: ConfigFile, f: ConfigFile, source: String) -> Self {
        let or_default = |o: Option<Recovery>| o.map(|r| r.options()).unwrap_or_default();
        Self {
            require_health: f.require_health.or(d.require_health).unwrap_or(false),
            baseline: f
                .baseline
                .or(d.baseline)
                .map_or(Duration::from_secs(30), |b| b.0),
            health: d
                .health
                .unwrap_or_default()
                .merged(f.health.unwrap_or_default()),
            prerequisites: d
                .prerequisites
                .unwrap_or_default()
                .merged(f.prerequisites.unwrap_or_default()),
            abort: d
                .abort_conditions
                .unwrap_or_default()
                .merged(f.abort_conditions.unwrap_or_default()),
            recovery: or_default(d.recovery).merged(or_default(f.recovery)),
            components: f.components,
            gc: f.gc.unwrap_or_default(),
            endpoints: EndpointPolicy::new(f.node_endpoints.unwrap_or_default().allow),
            hypotheses: d.hypotheses.into_iter().chain(f.hypotheses).collect(),
            source,
        }
    }

    /// The systems required unless a spec waives them.
    pub fn required(&self) -> Vec<System> {
        self.prerequisites.required.clone().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_production_defaults_are_the_reports_and_a_file_overrides_fields() {
        let s = Settings::load(None, Profile::Production).unwrap();
        assert_eq!(s.prerequisites.health_score_above, Some(95.0));
        assert_eq!(s.required(), System::ALL.to_vec());
        assert_eq!(
            s.abort.latency_p99_above.unwrap().0,
            Duration::from_millis(150)
        );
        assert_eq!(s.recovery.timeout.unwrap().0, Duration::from_secs(120));
        assert_eq!(s.baseline, Duration::from_secs(30));
        let staging = Settings::load(None, Profile::Staging).unwrap();
        assert_eq!(staging.required(), vec![System::Rollback]);

        let dir = std::env::temp_dir().join(format!("fl-config-{}", std::process::id()));
        std::fs::write(
            &dir,
            "prerequisites: {health_score_above: 90}\nrecovery: {hold: 1s}\ncomponents: {api: {hook: 'http://127.0.0.1:8080/cache/drop'}}\n",
        )
        .unwrap();
        let s = Settings::load(Some(&dir), Profile::Production).unwrap();
        assert_eq!(s.prerequisites.health_score_above, Some(90.0));
        assert_eq!(s.prerequisites.error_rate_below.unwrap().value(), 0.1);
        assert_eq!(s.recovery.hold.unwrap().0, Duration::from_secs(1));
        assert_eq!(s.recovery.timeout.unwrap().0, Duration::from_secs(120));
        assert!(s.components.contains_key("api"));
        assert_eq!(
            s.hypotheses["minimal"]
                .throughput_drop_below
                .map(|p| p.value()),
            Some(5.0),
            "the documented default"
        );
        std::fs::write(
            &dir,
            "hypotheses: {minimal: {error_rate_rise_below: 0.2%}, slow: {recovered_within: 1m}}\n",
        )
        .unwrap();
        let s = Settings::load(Some(&dir), Profile::Production).unwrap();
        assert_eq!(
            s.hypotheses["minimal"].throughput_drop_below, None,
            "replaced whole"
        );
        assert!(s.hypotheses.contains_key("slow") && s.hypotheses.contains_key("none"));
        std::fs::write(&dir, "health:\n  prometheus: {url: 'ftp://x'}\n").unwrap();
        let e = format!(
            "{:#}",
            Settings::load(Some(&dir), Profile::Production).unwrap_err()
        );
        assert!(e.contains("line 2") && e.contains("scheme"), "{e}");
        std::fs::write(&dir, "prerequisits: {}\n").unwrap();
        let e = format!(
            "{:#}",
            Settings::load(Some(&dir), Profile::Production).unwrap_err()
        );
        assert!(
            e.contains("line 1") && e.contains("unknown field `prerequisits`"),
            "{e}"
        );
        let _ = std::fs::remove_file(&dir);
    }
}
