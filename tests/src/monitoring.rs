//! Real monitoring for the steady-state tests: Prometheus and Alertmanager from
//! Debian's packages, and faultline's sample service, each started as a process
//! inside a network namespace the test made, configured by the test, and stopped
//! (with its data directory removed) on drop.
use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{Netns, Proc, TempPath, agent::binary};

fn spawn_in(ns: &Netns, program: &str, args: &[String], log: &std::path::Path) -> Child {
    let file = std::fs::File::create(log).expect("log file");
    Command::new("ip")
        .args(["netns", "exec", &ns.name, program])
        .args(args)
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("log"))
        .stderr(file)
        .spawn()
        .unwrap_or_else(|e| panic!("start {program} (cargo xtask setup installs it): {e}"))
}

/// `curl` inside `ns`: (HTTP status, body).
pub fn curl(ns: &str, method: &str, url: &str, body: Option<&str>) -> (u16, String) {
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        ns,
        "curl",
        "-s",
        "-m",
        "5",
        "-X",
        method,
        "-w",
        "\n%{http_code}",
    ]);
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "--data-binary", b]);
    }
    let out = cmd.arg(url).output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text
        .trim_end()
        .rsplit_once('\n')
        .unwrap_or(("", text.trim()));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// Polls `ok` until it holds, or fails with `log` after `timeout`.
pub(crate) fn wait_for(
    what: &str,
    timeout: Duration,
    mut ok: impl FnMut() -> bool,
    log: &std::path::Path,
) {
    let until = Instant::now() + timeout;
    while !ok() {
        assert!(
            Instant::now() < until,
            "{what} did not come up within {timeout:?}:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The sample service on port 8080 of every address in `ns` (loopback for the
/// node's agent, `addr` for everyone else).
pub struct SampleService {
    pub ns_name: String,
    pub url: String,
    _dir: TempPath,
    _proc: Proc,
}

impl SampleService {
    /// `extra`: e.g. `--warmup 3s`.
    pub fn start(ns: &Netns, addr: &str, extra: &[&str]) -> Self {
        let dir = TempPath::dir("fl-sample");
        let log = dir.join("sample.log");
        let mut args = vec!["serve".to_owned(), "--listen".into(), "0.0.0.0:8080".into()];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let child = spawn_in(
            ns,
            binary("faultline-sample").to_str().unwrap(),
            &args,
            &log,
        );
        let url = format!("http://{addr}:8080");
        wait_for(
            "the sample service",
            Duration::from_secs(10),
            || curl(&ns.name, "GET", &format!("{url}/healthz"), None).0 == 200,
            &log,
        );
        Self {
            ns_name: ns.name.clone(),
            url,
            _dir: dir,
            _proc: Proc(child),
        }
    }

    /// Degrades the service (`error_rate=0.05&latency=20ms&down=1`); "" heals it.
    pub fn degrade(&self, query: &str) {
        let (code, body) = curl(
            &self.ns_name,
            "POST",
            &format!("{}/admin/fault?{query}", self.url),
            None,
        );
        assert_eq!(code, 200, "{body}");
    }

    /// Dates the last backup `age` back (e.g. `48h`).
    pub fn backup_age(&self, age: &str) {
        let (code, body) = curl(
            &self.ns_name,
            "POST",
            &format!("{}/admin/backup?age={age}", self.url),
            None,
        );
        assert_eq!(code, 200, "{body}");
    }

    /// The service's own metrics text.
    pub fn metrics(&self) -> String {
        curl(&self.ns_name, "GET", &format!("{}/metrics", self.url), None).1
    }
}

/// The load generator: `rate` requests a second at `url`, from inside `ns`.
pub struct Load {
    _proc: Proc,
    _dir: TempPath,
}

impl Load {
    /// Client-side metrics on 127.0.0.1:9100 in `ns` (scrape target `127.0.0.1:9100`).
    pub fn start(ns: &Netns, url: &str, rate: u32) -> Self {
        Self::start_with_metrics(ns, url, rate, "127.0.0.1:9100")
    }

    /// As `start`, with the client-side metrics on `metrics` (host:port in `ns`).
    pub fn start_with_metrics(ns: &Netns, url: &str, rate: u32, metrics: &str) -> Self {
        let dir = TempPath::dir("fl-load");
        let log = dir.join("load.log");
        let args: Vec<String> = [
            "load",
            "--url",
            url,
            "--rate",
            &rate.to_string(),
            "--metrics",
            metrics,
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let child = spawn_in(
            ns,
            binary("faultline-sample").to_str().unwrap(),
            &args,
            &log,
        );
        Self {
            _proc: Proc(child),
            _dir: dir,
        }
    }
}

/// Prometheus on 127.0.0.1:9090 in `ns`, scraping `targets` (host:port) every second.
pub struct Prometheus {
    ns_name: String,
    pub url: String,
    proc: Option<Proc>,
    dir: TempPath,
    log: std::path::PathBuf,
}

impl Prometheus {
    pub fn start(ns: &Netns, targets: &[&str]) -> Self {
        let dir = TempPath::dir("fl-prometheus");
        let config = format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             scrape_configs:\n  - job_name: sample\n    static_configs: [{{targets: [{}]}}]\n",
            targets
                .iter()
                .map(|t| format!("'{t}'"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        std::fs::write(dir.join("prometheus.yml"), config).expect("config");
        let log = dir.join("prometheus.log");
        let mut p = Self {
            ns_name: ns.name.clone(),
            url: "http://127.0.0.1:9090".into(),
            proc: None,
            log,
            dir,
        };
        p.run(ns);
        // Ready, and every target scraped at least twice (rates need two samples).
        wait_for(
            "Prometheus",
            Duration::from_secs(30),
            || {
                p.query(&format!(
                    "count(count_over_time(up{{job=\"sample\"}}[10s]) >= 2) == {}",
                    targets.len()
                ))
                .is_some()
            },
            &p.log,
        );
        p
    }

    fn run(&mut self, ns: &Netns) {
        let args: Vec<String> = [
            format!(
                "--config.file={}",
                self.dir.join("prometheus.yml").display()
            ),
            format!("--storage.tsdb.path={}", self.dir.join("data").display()),
            "--web.listen-address=127.0.0.1:9090".into(),
        ]
        .into();
        self.proc = Some(Proc(spawn_in(ns, "prometheus", &args, &self.log)));
    }

    /// An instant query's single value, if it has one.
    pub fn query(&self, promql: &str) -> Option<f64> {
        let q: String = promql
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let (code, body) = curl(
            &self.ns_name,
            "GET",
            &format!("{}/api/v1/query?query={q}", self.url),
            None,
        );
        if code != 200 {
            return None;
        }
        let v: Value = serde_json::from_str(&body).ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }

    /// Freezes Prometheus (SIGSTOP): it stops answering, as a dark source does.
    pub fn freeze(&self) {
        if let Some(p) = &self.proc {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(p.0.id() as i32, libc::SIGSTOP) };
        }
    }

    pub fn thaw(&self) {
        if let Some(p) = &self.proc {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(p.0.id() as i32, libc::SIGCONT) };
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.thaw();
    }
}

/// Alertmanager on 127.0.0.1:9093 in `ns`, routing everything to one receiver.
pub struct Alertmanager {
    ns_name: String,
    pub url: String,
    _proc: Proc,
    _dir: TempPath,
}

impl Alertmanager {
    pub fn start(ns: &Netns) -> Self {
        let dir = TempPath::dir("fl-alertmanager");
        std::fs::write(
            dir.join("alertmanager.yml"),
            "route: {receiver: oncall, group_wait: 1s}\nreceivers: [{name: oncall}]\n",
        )
        .expect("config");
        let log = dir.join("alertmanager.log");
        let args: Vec<String> = [
            format!("--config.file={}", dir.join("alertmanager.yml").display()),
            format!("--storage.path={}", dir.join("data").display()),
            "--web.listen-address=127.0.0.1:9093".into(),
            "--cluster.listen-address=".into(),
        ]
        .into();
        let child = spawn_in(ns, "prometheus-alertmanager", &args, &log);
        let url = "http://127.0.0.1:9093".to_owned();
        wait_for(
            "Alertmanager",
            Duration::from_secs(20),
            || curl(&ns.name, "GET", &format!("{url}/api/v2/status"), None).0 == 200,
            &log,
        );
        Self {
            ns_name: ns.name.clone(),
            url,
            _proc: Proc(child),
            _dir: dir,
        }
    }

    fn post(&self, name: &str, severity: &str, ends: &str) {
        // Without startsAt, Alertmanager takes endsAt as the start too. Resolving
        // posts it again: Alertmanager keeps the earlier start of the same alert.
        let body = serde_json::json!([{
            "labels": {"alertname": name, "severity": severity, "service": "sample"},
            "annotations": {"summary": "posted by the test"},
            "startsAt": rfc3339(std::time::SystemTime::now()),
            "endsAt": ends,
        }])
        .to_string();
        let (code, text) = curl(
            &self.ns_name,
            "POST",
            &format!("{}/api/v2/alerts", self.url),
            Some(&body),
        );
        assert_eq!(code, 200, "{text}");
    }

    /// Fires an alert (active for an hour unless resolved).
    pub fn fire(&self, name: &str, severity: &str) {
        self.post(
            name,
            severity,
            &rfc3339(std::time::SystemTime::now() + Duration::from_secs(3600)),
        );
    }

    /// Resolves it (ends now).
    pub fn resolve(&self, name: &str, severity: &str) {
        self.post(name, severity, &rfc3339(std::time::SystemTime::now()));
    }

    /// Names of the active alerts.
    pub fn active(&self) -> Vec<String> {
        let (_, body) = curl(
            &self.ns_name,
            "GET",
            &format!("{}/api/v2/alerts?active=true", self.url),
            None,
        );
        serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|a| a["labels"]["alertname"].as_str().map(str::to_owned))
            .collect()
    }
}

/// UTC time as RFC 3339 (what Alertmanager's API takes).
fn rfc3339(t: std::time::SystemTime) -> String {
    let secs = t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
