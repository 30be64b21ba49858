//! The real coordinator binary on loopback, for the mTLS tests and the control-plane
//! benchmark: its own directory, removed with it, set up by the same `Home` the
//! end-to-end fleet uses (certificates, a token per role, the store).
#![allow(dead_code)] // each user takes what it needs

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

pub use faultline_tests::coordinator::Role;
use faultline_tests::coordinator::{Home, serving_addresses};

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
    faultline_tests::coordinator::run(Path::new(BIN), args)
}

/// The home the harness shares with the end-to-end tests (certificates for `agents`,
/// a token per role), a token of `role`, and `serve <extra>` on ports the coordinator
/// picks itself (port 0), read back from its "coordinator serving" log line, in
/// `<temp>/fl-coordinator-<pid>-<tag>` (`tag` keeps concurrent users apart).
///
/// The ports are not chosen here: a port probed free and then handed over can be
/// taken in between (by a concurrent test, or by the probe's own connect landing on
/// it), and a coordinator that then failed to bind looked ready to a connect loop.
pub fn start(tag: &str, agents: &[String], role: Role, extra: &[&str]) -> Coordinator {
    let dir = std::env::temp_dir().join(format!("fl-coordinator-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let home = Home::create(BIN.into(), &dir, agents, None);
    let mut child = Command::new(BIN)
        .args(home.serve_args("db/c.db"))
        .args(["--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .args(["--log-format", "json"])
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
        token: home.token(role).to_owned(),
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
