//! The real coordinator binary on loopback, for the mTLS tests and the control-plane
//! benchmark: its own directory (certificates, tokens, store), removed with it.
#![allow(dead_code)] // each user takes what it needs

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use tonic::{
    Request,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

pub const BIN: &str = env!("CARGO_BIN_EXE_faultline-coordinator");

pub struct Coordinator {
    pub child: Child,
    pub dir: PathBuf,
    pub url: String,
    /// The HTTP port's address, `host:port`.
    pub http: String,
    /// A token of the role asked for at start.
    pub token: String,
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `faultline-coordinator <args>`; its trimmed stdout.
pub fn run(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .output()
        .expect("run coordinator");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?}: {err}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Certificates for `agents`, a token of `role`, and `serve <extra>` on ports the
/// coordinator picks itself (port 0), read back from its "coordinator serving" log
/// line, in `<temp>/fl-coordinator-<pid>-<tag>` (`tag` keeps concurrent users apart).
///
/// The ports are not chosen here: a port probed free and then handed over can be
/// taken in between (by a concurrent test, or by the probe's own connect landing on
/// it), and a coordinator that then failed to bind looked ready to a connect loop.
pub fn start(tag: &str, agents: &[String], role: &str, extra: &[&str]) -> Coordinator {
    let dir = std::env::temp_dir().join(format!("fl-coordinator-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = |p: &str| dir.join(p).display().to_string();
    let mut init = vec!["certs", "init", "--dir"];
    let tls = d("tls");
    init.push(&tls);
    let names = agents.join(",");
    if !agents.is_empty() {
        init.extend(["--agents", &names]);
    }
    run(&init);
    let tokens = d("tokens.yaml");
    let token = run(&[
        "tokens", "add", "--file", &tokens, "--name", "t", "--role", role,
    ]);
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .args(["--log-format", "json"])
        .args([
            "--tls-dir",
            &tls,
            "--tokens",
            &tokens,
            "--store",
            &d("db/c.db"),
        ])
        .args(extra)
        .env("RUST_LOG", "error,faultline_coordinator::server=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn coordinator");
    let (grpc, http) = serving_addresses(&mut child);
    Coordinator {
        child,
        dir,
        url: format!("https://{grpc}"),
        http,
        token,
    }
}

/// The gRPC and HTTP addresses in the child's "coordinator serving" line; its later log lines
/// are passed on to this process's stderr. Panics with what it logged if it exits
/// first, and after 20 s.
fn serving_addresses(child: &mut Child) -> (String, String) {
    use std::io::BufRead;
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut found = false;
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if !found && v["message"] == "coordinator serving" {
                found = true;
                let field = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
                let _ = tx.send(Ok((field("grpc"), field("http"))));
            } else if found {
                eprintln!("{line}");
            } else {
                let _ = tx.send(Err(line));
            }
        }
    });
    let until = Instant::now() + Duration::from_secs(20);
    let mut logged = Vec::new();
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Ok((grpc, http))) => {
                assert!(
                    !grpc.is_empty() && !http.is_empty(),
                    "no grpc or http field in the serving line"
                );
                return (grpc, http);
            }
            Ok(Err(line)) => logged.push(line),
            Err(e) => panic!(
                "coordinator not serving ({e:?}; exit: {:?}):\n{}",
                child.try_wait(),
                logged.join("\n")
            ),
        }
    }
}

/// A TLS channel to `url` trusting the CA in `ca`, with `<dir>/<name>.pem` as client
/// identity when given.
pub async fn connect(
    url: &str,
    ca: &Path,
    identity: Option<(&Path, &str)>,
) -> Result<Channel, tonic::transport::Error> {
    let read = |p: PathBuf| std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca.into())));
    if let Some((dir, name)) = identity {
        tls = tls.identity(Identity::from_pem(
            read(dir.join(format!("{name}.pem"))),
            read(dir.join(format!("{name}.key"))),
        ));
    }
    Endpoint::from_shared(url.to_owned())
        .expect("url")
        .tls_config(tls)
        .expect("tls")
        .connect()
        .await
}

/// `connect` to this coordinator.
pub async fn channel(
    c: &Coordinator,
    identity: Option<(&Path, &str)>,
) -> Result<Channel, tonic::transport::Error> {
    connect(&c.url, &c.dir.join("tls/ca.pem"), identity).await
}

/// `m` with the coordinator's token as bearer.
pub fn authed<T>(c: &Coordinator, m: T) -> Request<T> {
    let mut r = Request::new(m);
    let header = format!("Bearer {}", c.token).parse().expect("header");
    r.metadata_mut().insert("authorization", header);
    r
}
