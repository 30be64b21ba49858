//! Calling application hooks (`v1::Hook`, the contract's one notion of a hook): named
//! HTTP endpoints the agent POSTs to as part of a fault,
//! e.g. asking each component of an application to drop its caches
//! (`--hook consensus=http://127.0.0.1:8081/cache/drop`) or its runtime to collect.
//! Plain HTTP to the node's own services only: hooks are local by design.
use std::time::Duration;

use faultline_proto::v1::Hook;
use serde::Serialize;

/// A hook from the command line, `NAME=URL` (clap's value parser).
pub fn parse(s: &str) -> Result<Hook, String> {
    let (name, url) = s
        .split_once('=')
        .ok_or_else(|| format!("hook '{s}' is not NAME=URL"))?;
    checked(name, url)
}

/// A named http:// endpoint of a local service, or why not.
pub fn checked(name: &str, url: &str) -> Result<Hook, String> {
    if !Hook::valid_name(name) {
        return Err(format!(
            "hook name '{name}' must be letters, digits, '-' or '_'"
        ));
    }
    let uri: ureq::http::Uri = url
        .parse()
        .map_err(|e| format!("hook {name}: '{url}' is not a URL ({e})"))?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() {
        return Err(format!(
            "hook {name}: '{url}' must be an http:// URL of a local service"
        ));
    }
    Ok(Hook {
        name: name.to_owned(),
        url: url.to_owned(),
    })
}

/// What one hook call did.
#[derive(Clone, Debug, Serialize)]
pub struct HookResult {
    pub name: String,
    pub ok: bool,
    pub detail: String,
    pub elapsed_ms: u64,
}

/// The agent's one HTTP client shape (hooks, node-side probes, the guard's probe):
/// a request goes to the URL that was checked against the endpoint policy and
/// nowhere else. A redirect is an answer (a failure), never followed: following it
/// would let a node-local endpoint send the agent to an address its allow-list
/// refuses.
pub fn http_agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into()
}

/// "HTTP <status>", with where a redirect pointed (it is not followed).
pub fn status_text(resp: &ureq::http::Response<ureq::Body>) -> String {
    let status = resp.status();
    match resp.headers().get("location").and_then(|l| l.to_str().ok()) {
        Some(to) if status.is_redirection() => {
            format!("HTTP {status}: redirect to {to} not followed")
        }
        _ => format!("HTTP {status}"),
    }
}

/// POSTs to every hook (each with a 5 s budget) and reports each one; a failing hook
/// does not stop the others.
pub fn call_all(hooks: &[Hook]) -> Vec<HookResult> {
    let agent = http_agent(Duration::from_secs(5));
    hooks
        .iter()
        .map(|h| {
            let started = std::time::Instant::now();
            let (ok, detail) = match agent.post(&h.url).send_empty() {
                Ok(resp) => (resp.status().is_success(), status_text(&resp)),
                Err(e) => (false, e.to_string()),
            };
            HookResult {
                name: h.name.clone(),
                ok,
                detail,
                elapsed_ms: started.elapsed().as_millis() as u64,
            }
        })
        .collect()
}

/// Prints each result through `print(json, text)` and returns the hooks that failed,
/// each as `name (what happened)`.
pub fn report(results: &[HookResult], print: impl Fn(serde_json::Value, String)) -> Vec<String> {
    for r in results {
        print(
            serde_json::json!({"event": "hook", "result": r}),
            format!(
                "faultline-agent: hook {}: {} ({}, {} ms)",
                r.name,
                if r.ok { "done" } else { "FAILED" },
                r.detail,
                r.elapsed_ms
            ),
        );
    }
    results
        .iter()
        .filter(|r| !r.ok)
        .map(|r| format!("{} ({})", r.name, r.detail))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hooks_parse_and_bad_ones_are_refused() {
        let h = parse("api=http://127.0.0.1:8080/cache/drop").unwrap();
        assert_eq!(h.name, "api");
        assert!(parse("noequals").unwrap_err().contains("NAME=URL"));
        assert!(parse("bad name=http://x/").unwrap_err().contains("letters"));
        assert!(parse("x=ftp://host/").unwrap_err().contains("http://"));
        assert!(parse("x=https://host/").unwrap_err().contains("http://"));
        assert!(parse("x=not a url").is_err());
    }
}
