//! The real coordinator's home, for every harness that starts one: the fleet here,
//! and the coordinator crate's own tests and benchmark. A home is a directory with a
//! CA and certificates for the named agents (`certs init`), a token per role
//! (`tokens add`), a config when one is given, and the store; `serve_args` are the
//! arguments that start `faultline-coordinator serve` on it. The caller owns the
//! directory (and removes it) and adds the addresses, logging and its own flags.
use std::{
    ffi::{OsStr, OsString},
    path::{Path, PathBuf},
    process::{Child, Command},
    time::{Duration, Instant},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// The token's name in the tokens file (and so in the audit log).
    fn token_name(self) -> &'static str {
        match self {
            Role::Viewer => "dashboard",
            Role::Operator => "ci",
            Role::Admin => "sre",
        }
    }
}

pub struct Home {
    pub bin: PathBuf,
    pub dir: PathBuf,
    tokens: [String; 3],
    config: bool,
}

impl Home {
    /// Creates the home in `dir` for the coordinator binary `bin`: certificates for
    /// `agents`, a token per role, and `config` as its `--config` document if given.
    pub fn create(bin: PathBuf, dir: &Path, agents: &[String], config: Option<&str>) -> Self {
        std::fs::create_dir_all(dir).expect("coordinator home");
        let mut home = Self {
            bin,
            dir: dir.to_owned(),
            tokens: Default::default(),
            config: config.is_some(),
        };
        let tls = home.path("tls");
        let mut init: Vec<OsString> = vec!["certs".into(), "init".into(), "--dir".into(), tls];
        if !agents.is_empty() {
            init.extend(["--agents".into(), agents.join(",").into()]);
        }
        home.run(&init);
        for (i, role) in Role::ALL.into_iter().enumerate() {
            let tokens = home.path("tokens.yaml");
            home.tokens[i] = home.run(&[
                "tokens".into(),
                "add".into(),
                "--file".into(),
                tokens,
                "--name".into(),
                role.token_name().into(),
                "--role".into(),
                role.as_str().into(),
            ]);
        }
        if let Some(c) = config {
            std::fs::write(dir.join("config.yaml"), c).expect("write config");
        }
        home
    }

    pub fn token(&self, role: Role) -> &str {
        &self.tokens[role as usize]
    }

    fn path(&self, p: &str) -> OsString {
        self.dir.join(p).into_os_string()
    }

    pub fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> String {
        run(&self.bin, args)
    }

    /// `serve` on this home: its certificates, tokens, config and the store at
    /// `store` (relative to the home).
    pub fn serve_args(&self, store: &str) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "serve".into(),
            "--tls-dir".into(),
            self.path("tls"),
            "--tokens".into(),
            self.path("tokens.yaml"),
            "--store".into(),
            self.path(store),
        ];
        if self.config {
            args.extend(["--config".into(), self.path("config.yaml")]);
        }
        args
    }
}

/// `<bin> <args>` (the coordinator binary): its trimmed stdout; a failure panics
/// with its stderr.
pub fn run<S: AsRef<OsStr>>(bin: &Path, args: &[S]) -> String {
    let out = Command::new(bin)
        .args(args)
        .output()
        .expect("run coordinator");
    assert!(
        out.status.success(),
        "{:?}: {}",
        args.iter().map(|a| a.as_ref()).collect::<Vec<_>>(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The gRPC and HTTP addresses in a coordinator's JSON "coordinator serving" log line
/// (it binds both before it says so); its later log lines are passed on to this
/// process's stderr. Panics with what it logged if it exits first, and after 20 s.
pub fn serving_addresses(child: &mut Child) -> (String, String) {
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
