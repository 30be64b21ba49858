//! The other two runtimes an image archive must load into: containerd (`ctr
//! import`, what a kubelet's node pulls into) and Docker (`docker load`), both from
//! Debian's packages. Each daemon runs with every path of its own (root, state,
//! sockets, configuration) under one temporary directory, without networking setup
//! (no bridge, no iptables) and without the plugins a node would use to run pods;
//! stopping it (on drop) unmounts what it mounted, and the directory goes after.
//!
//! Only loading is proved here: the image *runs* under podman (see `container`).
//! Also: the archive's members, for the tests that look inside the image.
use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use crate::{Proc, TempPath, container::text};

/// What `cargo xtask dist`'s archive says it holds: the manifest's and the
/// config's digests (the config digest is the image ID Docker shows).
#[derive(Debug, PartialEq, Eq)]
pub struct Digests {
    pub manifest: String,
    pub config: String,
}

/// One file of the archive.
fn member(archive: &Path, name: &str) -> Vec<u8> {
    let out = Command::new("tar")
        .arg("-xOf")
        .arg(archive)
        .arg(name)
        .output()
        .expect("run tar");
    assert!(out.status.success(), "tar {name}: {}", text(&out));
    out.stdout
}

/// The blob `digest` names.
fn blob(archive: &Path, digest: &str) -> Vec<u8> {
    let name = format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"));
    member(archive, &name)
}

/// The blob `digest` names, read as JSON.
fn json_blob(archive: &Path, digest: &str) -> serde_json::Value {
    serde_json::from_slice(&blob(archive, digest)).unwrap_or_else(|e| panic!("{digest}: {e}"))
}

/// Reads the archive's `index.json` and its manifest blob.
pub fn digests(archive: &Path) -> Digests {
    let index: serde_json::Value =
        serde_json::from_slice(&member(archive, "index.json")).expect("index.json");
    let manifest = index["manifests"][0]["digest"]
        .as_str()
        .expect("index.json names a manifest")
        .to_owned();
    let config = json_blob(archive, &manifest)["config"]["digest"]
        .as_str()
        .expect("the manifest names its config")
        .to_owned();
    Digests { manifest, config }
}

/// Waits until `socket` exists (the daemon is serving); a daemon that exits first
/// fails at once, with its log.
fn wait_for_socket(what: &str, socket: &Path, log: &Path, proc: &mut Proc) {
    crate::monitoring::wait_for(
        what,
        Duration::from_secs(30),
        || {
            if let Ok(Some(status)) = proc.0.try_wait() {
                panic!(
                    "{what} exited ({status}): {}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            socket.exists()
        },
        log,
    );
}

fn spawn(program: &str, args: &[String], log: &Path) -> Proc {
    let file = std::fs::File::create(log).expect("log file");
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("log"))
        .stderr(file)
        .spawn()
        .unwrap_or_else(|e| panic!("start {program} (cargo xtask setup installs it): {e}"));
    Proc(child)
}

/// A containerd of its own. Field order is drop order: the daemon stops before
/// its directory is removed.
pub struct Containerd {
    proc: Proc,
    pub socket: PathBuf,
    pub dir: TempPath,
}

impl Containerd {
    pub fn start() -> Self {
        let dir = TempPath::dir("fl-containerd");
        let socket = dir.join("containerd.sock");
        let d = dir.display();
        // Every path containerd would otherwise take from the host (/var/lib,
        // /run, /opt/containerd) is set; the CRI plugin (a kubelet's) is off.
        let config = format!(
            "version = 2\n\
             root = \"{d}/root\"\n\
             state = \"{d}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{d}/containerd.sock\"\n\
             [ttrpc]\n  address = \"{d}/containerd.sock.ttrpc\"\n\
             [debug]\n  address = \"\"\n\
             [metrics]\n  address = \"\"\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{d}/opt\"\n"
        );
        std::fs::write(dir.join("config.toml"), config).expect("containerd config");
        let log = dir.join("containerd.log");
        let mut proc = spawn(
            "containerd",
            &[
                "--config".into(),
                dir.join("config.toml").display().to_string(),
            ],
            &log,
        );
        wait_for_socket("containerd", &socket, &log, &mut proc);
        Self { proc, socket, dir }
    }

    /// `ctr` against this daemon, in the `faultline-test` namespace.
    pub fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", "faultline-test"])
            .args(args)
            .output()
            .expect("run ctr")
    }

    /// Stops the daemon now (drop does it otherwise).
    pub fn stop(self) {
        let Self { proc, dir, .. } = self;
        drop(proc);
        drop(dir);
    }
}

/// A Docker daemon of its own, on the given containerd.
pub struct Docker {
    proc: Proc,
    socket: PathBuf,
    pub dir: TempPath,
}

impl Docker {
    pub fn start(containerd: &Containerd) -> Self {
        let dir = TempPath::dir("fl-docker");
        let socket = dir.join("docker.sock");
        let d = |sub: &str| dir.join(sub).display().to_string();
        std::fs::write(dir.join("daemon.json"), "{}").expect("docker config");
        let args: Vec<String> = [
            "--host".into(),
            format!("unix://{}", socket.display()),
            "--containerd".into(),
            containerd.socket.display().to_string(),
            "--data-root".into(),
            d("data"),
            "--exec-root".into(),
            d("exec"),
            "--pidfile".into(),
            d("docker.pid"),
            "--config-file".into(),
            d("daemon.json"),
            // No network of its own: no bridge, no iptables or forwarding changes.
            "--bridge=none".into(),
            "--iptables=false".into(),
            "--ip6tables=false".into(),
            "--ip-forward=false".into(),
            "--ip-masq=false".into(),
            // A copying storage driver: no overlay mounts.
            "--storage-driver=vfs".into(),
        ]
        .into();
        let log = dir.join("dockerd.log");
        // A mount namespace of its own: Docker 20.10 writes an identity key to
        // /etc/docker and a plugin directory to /run/docker whatever it is told
        // (tmpfs mounts there take them), and whatever it mounts goes with the
        // namespace even if it is killed.
        let script = "mount -t tmpfs faultline-test /etc/docker \
                      && mount -t tmpfs faultline-test /run && exec dockerd \"$@\"";
        let mut wrapped: Vec<String> = [
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            script,
            "dockerd",
        ]
        .map(String::from)
        .into();
        wrapped.extend(args);
        let mut proc = spawn("unshare", &wrapped, &log);
        wait_for_socket("dockerd", &socket, &log, &mut proc);
        let docker = Self { proc, socket, dir };
        // The socket comes before the API answers.
        crate::monitoring::wait_for(
            "dockerd's API",
            Duration::from_secs(30),
            || docker.docker(&["version"]).status.success(),
            &log,
        );
        docker
    }

    /// `docker` against this daemon, with a client configuration of its own.
    pub fn docker(&self, args: &[&str]) -> Output {
        Command::new("docker")
            .arg("--host")
            .arg(format!("unix://{}", self.socket.display()))
            .env("DOCKER_CONFIG", self.dir.join("client"))
            .args(args)
            .output()
            .expect("run docker")
    }

    /// Stops the daemon now (drop does it otherwise).
    pub fn stop(self) {
        let Self { proc, dir, .. } = self;
        drop(proc);
        drop(dir);
    }
}

/// Mount points under `dir` (a stopped daemon must have left none).
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&prefix))
        .map(str::to_owned)
        .collect()
}

/// The image's one layer, uncompressed (every file of the image, in tar form).
pub fn layer(archive: &Path) -> Vec<u8> {
    let manifest = json_blob(archive, &digests(archive).manifest);
    let digest = manifest["layers"][0]["digest"]
        .as_str()
        .expect("the manifest names a layer");
    let gz = blob(archive, digest);
    let mut gunzip = Command::new("gzip")
        .arg("-dc")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run gzip");
    let mut stdin = gunzip.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        stdin.write_all(&gz).expect("feed gzip");
    });
    let out = gunzip.wait_with_output().expect("gzip");
    writer.join().expect("writer");
    assert!(out.status.success(), "gzip -d of the layer failed");
    out.stdout
}
