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

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// Certificates for `agents`, a token of `role`, and `serve <extra>` on free ports,
/// in `<temp>/fl-coordinator-<pid>-<tag>` (`tag` keeps concurrent users apart).
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
    let (grpc, http) = (free_port(), free_port());
    let child = Command::new(BIN)
        .args(["serve", "--listen", &format!("127.0.0.1:{grpc}")])
        .args(["--http", &format!("127.0.0.1:{http}")])
        .args([
            "--tls-dir",
            &tls,
            "--tokens",
            &tokens,
            "--store",
            &d("db/c.db"),
        ])
        .args(extra)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn coordinator");
    let until = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", grpc)).is_err() {
        assert!(Instant::now() < until, "coordinator did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    Coordinator {
        child,
        dir,
        url: format!("https://127.0.0.1:{grpc}"),
        token,
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
