//! A real OCI runtime: podman with runc, from Debian, running the image `cargo xtask
//! dist` wrote, under exactly the pod templates of deploy/kubernetes/ — each
//! container's arguments, environment, user, capabilities, read-only root,
//! no-new-privileges, seccomp profile and volume mounts are read from the manifest
//! and turned into the runtime's flags here, never restated. The kubelet's part is
//! what a test supplies: where each volume is on this machine, which network
//! namespace is the pod's "host" network, and the coordinator's Service address.
//!
//! Everything podman keeps (image store, containers, their state) lives under a
//! temporary directory and goes with the `Podman` value; its containers are
//! removed first.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use serde_yaml_ng::Value;

use crate::TempPath;

/// The workspace's root (tests run from their crate's directory).
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf()
}

/// The image archive of `cargo xtask dist` and the reference it loads as.
pub fn image_archive() -> (PathBuf, String) {
    let version = env!("CARGO_PKG_VERSION");
    (
        workspace().join(format!("target/dist/faultline-{version}.oci.tar")),
        format!("faultline:{version}"),
    )
}

/// One podman installation of its own: storage, run state and containers under a
/// temporary directory, with the image loaded.
pub struct Podman {
    root: TempPath,
    pub image: String,
}

impl Podman {
    /// Loads the image `cargo xtask dist` built (panics naming the command if absent).
    pub fn load() -> Self {
        let (archive, image) = image_archive();
        assert!(
            archive.exists(),
            "{} is missing: run `cargo xtask dist` (cargo xtask test does)",
            archive.display()
        );
        let podman = Self {
            root: TempPath::dir("fl-podman"),
            image,
        };
        let out = podman
            .command()
            .arg("load")
            .arg("-i")
            .arg(&archive)
            .output()
            .expect("run podman load");
        assert!(out.status.success(), "podman load: {}", text(&out));
        podman
    }

    /// `podman` with this installation's storage; the runtime settings this machine
    /// needs (no systemd: cgroupfs and file events; root without CAP_SYS_RESOURCE:
    /// a copy-based storage driver and no overlay mounts to leak).
    pub fn command(&self) -> Command {
        let mut cmd = Command::new("podman");
        cmd.arg("--root")
            .arg(self.root.join("storage"))
            .arg("--runroot")
            .arg(self.root.join("run"))
            .args(["--storage-driver", "vfs"])
            .args(["--cgroup-manager", "cgroupfs", "--events-backend", "file"])
            .arg("--tmpdir")
            .arg(self.root.join("tmp"));
        cmd
    }

    /// `podman <args>`: its output (the caller judges the status).
    pub fn podman(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("run podman")
    }

    /// `podman kill --signal <sig> <name>`, and waits until it has exited.
    pub fn kill(&self, name: &str, signal: &str) {
        let out = self.podman(&["kill", "--signal", signal, name]);
        assert!(out.status.success(), "podman kill {name}: {}", text(&out));
        let _ = self.podman(&["wait", name]);
    }
}

impl Podman {
    /// SIGKILLs everything of `pod` the runtime runs at once: each container's
    /// process and its monitor (conmon), as when the node's runtime goes down with
    /// it, so podman records no exit and runs no cleanup of its own; then waits
    /// until they are gone. Returns how many processes it killed.
    pub fn kill_pod(&self, pod: &str) -> usize {
        let filter = format!("pod={pod}");
        let out = self.podman(&["ps", "--filter", &filter, "--format", "{{.ID}}"]);
        assert!(out.status.success(), "podman ps: {}", text(&out));
        let mut pids: Vec<i32> = Vec::new();
        for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let out = self.podman(&[
                "inspect",
                "--format",
                "{{.State.Pid}} {{.State.ConmonPid}}",
                id,
            ]);
            pids.extend(
                String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok())
                    .filter(|p| *p > 0),
            );
        }
        assert!(!pids.is_empty(), "pod {pod} runs nothing");
        for pid in &pids {
            // SAFETY: kill(2) on processes the runtime reported for this pod.
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while pids.iter().any(|p| !crate::node::exited(*p as u64)) {
            assert!(
                std::time::Instant::now() < until,
                "pod {pod} outlived SIGKILL"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        pids.len()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.podman(&["rm", "--all", "--force", "--time", "0"]);
        let _ = self.podman(&["system", "reset", "--force"]);
    }
}

pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A seccomp profile as a pod asks for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seccomp {
    Unconfined,
    RuntimeDefault,
    /// A file under the kubelet's seccomp directory; deploy/seccomp/ ships them.
    Localhost(String),
}

/// One container of a pod template, as the manifest states it.
#[derive(Clone, Debug)]
pub struct PodContainer {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub user: Option<i64>,
    pub group: Option<i64>,
    pub read_only_root: bool,
    pub no_new_privileges: bool,
    pub drop_all: bool,
    /// Without the `CAP_` prefix, as Kubernetes writes them.
    pub capabilities: Vec<String>,
    pub seccomp: Seccomp,
    /// (volume name, mount path, read-only).
    pub mounts: Vec<(String, String, bool)>,
    pub host_network: bool,
}

fn str_of(v: &Value) -> Option<String> {
    v.as_str().map(str::to_owned)
}

/// The documents of a manifest file of deploy/kubernetes/base/.
pub fn manifest(file: &str) -> Vec<Value> {
    let path = workspace().join("deploy/kubernetes/base").join(file);
    let text = std::fs::read_to_string(&path).expect("read manifest");
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("manifest yaml"))
        .collect()
}

impl PodContainer {
    /// The container `name` (or init container) of the pod template of the `kind`
    /// object in `file`; the container's security context over the pod's.
    pub fn from_manifest(file: &str, kind: &str, name: &str) -> Self {
        let docs = manifest(file);
        let doc = docs
            .iter()
            .find(|d| d["kind"] == kind)
            .unwrap_or_else(|| panic!("{file} has no {kind}"));
        let pod = &doc["spec"]["template"]["spec"];
        let container = ["containers", "initContainers"]
            .iter()
            .flat_map(|k| pod[*k].as_sequence().into_iter().flatten())
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("{file}'s {kind} has no container {name}"));
        let (pod_sc, sc) = (&pod["securityContext"], &container["securityContext"]);
        let pick = |key: &str| {
            let v = &sc[key];
            if v.is_null() {
                pod_sc[key].clone()
            } else {
                v.clone()
            }
        };
        let seccomp = match pick("seccompProfile") {
            Value::Null => Seccomp::RuntimeDefault,
            p => match p["type"].as_str() {
                Some("Unconfined") => Seccomp::Unconfined,
                Some("RuntimeDefault") => Seccomp::RuntimeDefault,
                Some("Localhost") => {
                    Seccomp::Localhost(str_of(&p["localhostProfile"]).expect("localhostProfile"))
                }
                other => panic!("{file}: seccomp profile type {other:?}"),
            },
        };
        let strings = |v: &Value| -> Vec<String> {
            v.as_sequence()
                .into_iter()
                .flatten()
                .filter_map(str_of)
                .collect()
        };
        Self {
            args: strings(&container["args"]),
            env: container["env"]
                .as_sequence()
                .into_iter()
                .flatten()
                .filter_map(|e| Some((str_of(&e["name"])?, str_of(&e["value"])?)))
                .collect(),
            user: pick("runAsUser").as_i64(),
            group: pick("runAsGroup").as_i64(),
            read_only_root: sc["readOnlyRootFilesystem"].as_bool() == Some(true),
            no_new_privileges: sc["allowPrivilegeEscalation"].as_bool() == Some(false),
            drop_all: strings(&sc["capabilities"]["drop"]) == ["ALL"],
            capabilities: strings(&sc["capabilities"]["add"]),
            seccomp,
            mounts: container["volumeMounts"]
                .as_sequence()
                .into_iter()
                .flatten()
                .filter_map(|m| {
                    Some((
                        str_of(&m["name"])?,
                        str_of(&m["mountPath"])?,
                        m["readOnly"].as_bool() == Some(true),
                    ))
                })
                .collect(),
            host_network: pod["hostNetwork"].as_bool() == Some(true),
        }
    }

    /// `podman run` arguments for this container: `name`, in the network namespace
    /// `netns` (the pod's network), each volume at the path `volumes` gives,
    /// environment `env` over the manifest's, `$(VAR)` in the arguments expanded
    /// from the environment as the kubelet does.
    pub fn run_args(
        &self,
        podman: &Podman,
        name: &str,
        netns: &str,
        volumes: &BTreeMap<String, PathBuf>,
        env: &[(&str, String)],
    ) -> Vec<String> {
        let mut vars: BTreeMap<String, String> = self.env.iter().cloned().collect();
        vars.extend(env.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
        let mut a: Vec<String> = vec![
            "run".into(),
            "--rm".into(),
            "--name".into(),
            name.into(),
            format!("--network=ns:/run/netns/{netns}"),
            // The runtime would raise these to its defaults, which root here may not
            // (no CAP_SYS_RESOURCE); a kubelet leaves the node's own values.
            format!("--ulimit=nofile={0}:{0}", nofile()),
            "--ulimit=nproc=4096:4096".into(),
        ];
        if let Some(u) = self.user {
            a.push(format!("--user={u}:{}", self.group.unwrap_or(u)));
        }
        if self.read_only_root {
            a.push("--read-only".into());
            // Kubernetes mounts no writable /tmp or /run; podman would.
            a.push("--read-only-tmpfs=false".into());
        }
        if self.no_new_privileges {
            a.push("--security-opt=no-new-privileges".into());
        }
        if self.drop_all {
            a.push("--cap-drop=all".into());
        }
        a.extend(self.capabilities.iter().map(|c| format!("--cap-add={c}")));
        match &self.seccomp {
            Seccomp::Unconfined => a.push("--security-opt=seccomp=unconfined".into()),
            Seccomp::RuntimeDefault => {}
            Seccomp::Localhost(file) => a.push(format!(
                "--security-opt=seccomp={}",
                workspace().join("deploy/seccomp").join(file).display()
            )),
        }
        for (volume, path, ro) in &self.mounts {
            let host = volumes
                .get(volume)
                .unwrap_or_else(|| panic!("no host path for volume {volume}"));
            let ro = if *ro { ":ro" } else { "" };
            a.push(format!("--volume={}:{path}{ro}", host.display()));
        }
        for (k, v) in &vars {
            a.push(format!("--env={k}={v}"));
        }
        a.push(podman.image.clone());
        a.extend(self.args.iter().map(|arg| {
            vars.iter()
                .fold(arg.clone(), |s, (k, v)| s.replace(&format!("$({k})"), v))
        }));
        a
    }
}

/// This process's open-file limit, which a container may keep but not exceed.
fn nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) into a local.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    lim.rlim_cur
}

/// A fleet's daemons as containers: the image, and the three pod containers of
/// the manifests (a test may change one, e.g. remove a capability).
#[derive(Clone)]
pub struct Containers {
    pub podman: std::sync::Arc<Podman>,
    pub agent: PodContainer,
    /// The agent pod's init container (`faultline-agent cleanup`).
    pub cleanup: PodContainer,
    pub coordinator: PodContainer,
}

impl Containers {
    pub fn from_manifests() -> Self {
        Self {
            podman: std::sync::Arc::new(Podman::load()),
            agent: PodContainer::from_manifest("agent.yaml", "DaemonSet", "agent"),
            cleanup: PodContainer::from_manifest("agent.yaml", "DaemonSet", "cleanup"),
            coordinator: PodContainer::from_manifest(
                "coordinator.yaml",
                "Deployment",
                "coordinator",
            ),
        }
    }
}
