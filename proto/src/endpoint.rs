//! What an agent may be ordered to call: node-local `http://` endpoints (hooks that
//! ask an application to drop its cache or collect, node-side health probes). The
//! agent never becomes a general HTTP client for whoever holds a token, so a URL is
//! allowed only when its host is loopback or an address in the allow-list of the
//! side checking it (the coordinator's config, and again the agent's own flags).
//! Host names other than `localhost` are refused: a name could resolve anywhere,
//! and the two ends could not agree on what it means.
use std::net::IpAddr;

use ipnet::IpNet;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct EndpointPolicy {
    pub allow: Vec<IpNet>,
}

impl EndpointPolicy {
    pub fn new(allow: Vec<IpNet>) -> Self {
        Self { allow }
    }

    /// Ok when `url` is an http:// URL whose host this policy allows; else why not.
    pub fn check(&self, url: &str) -> Result<(), String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("'{url}' must be an http:// URL of a node-local service"))?;
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let host = if let Some(v6) = authority.strip_prefix('[') {
            v6.split_once(']').map(|(h, _)| h).unwrap_or(v6)
        } else {
            authority.split(':').next().unwrap_or_default()
        };
        if host.is_empty() {
            return Err(format!("'{url}' has no host"));
        }
        if host.eq_ignore_ascii_case("localhost") {
            return Ok(());
        }
        let ip: IpAddr = host.parse().map_err(|_| {
            format!("'{url}': the host must be an IP address or localhost (a name could resolve anywhere)")
        })?;
        if ip.is_loopback() || self.allow.iter().any(|n| n.contains(&ip)) {
            return Ok(());
        }
        Err(format!(
            "'{url}': {ip} is neither loopback nor in the allowed networks ({})",
            if self.allow.is_empty() {
                "none configured".to_owned()
            } else {
                self.allow
                    .iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_the_allow_list_pass_everything_else_is_named() {
        let p = EndpointPolicy::new(vec!["10.201.0.0/16".parse().unwrap()]);
        for ok in [
            "http://127.0.0.1:8080/cache/drop",
            "http://localhost/gc",
            "http://[::1]:9/x",
            "http://10.201.6.2:8080/healthz",
        ] {
            p.check(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for (bad, why) in [
            ("https://127.0.0.1/", "http:// URL"),
            ("http://10.0.0.1/", "neither loopback nor"),
            ("http://example.com/", "IP address or localhost"),
            ("http://user@8.8.8.8/", "neither loopback"),
            ("http:///x", "no host"),
        ] {
            let e = p.check(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert!(
            EndpointPolicy::default()
                .check("http://10.201.6.2/")
                .is_err()
        );
    }
}
