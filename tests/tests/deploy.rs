//! The shipped deployment files, checked by the tools that will read them:
//! systemd's own `systemd-analyze verify` (clean) and `systemd-analyze security`
//! (exposure reported, and held under a ceiling so hardening cannot quietly erode),
//! plus the directives the units promise (cleanup before start and after stop, a
//! capability bounding set, a read-only system with named writable paths).
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use faultline_tests::{TempPath, agent::binary};

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// A root directory as systemd would see it on a node: the distribution's units
/// (the targets ours order against), ours in /etc/systemd/system, and the binaries
/// where its ExecStart lines name them (`verify` refuses a unit whose commands do
/// not exist).
fn unit_root(unit: &str) -> TempPath {
    let root = TempPath::dir("fl-systemd-root");
    let units = root.join("etc/systemd/system");
    let bin = root.join("usr/bin");
    std::fs::create_dir_all(&units).unwrap();
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(root.join("usr/lib/systemd")).unwrap();
    let copied = Command::new("cp")
        .args(["-a", "/usr/lib/systemd/system"])
        .arg(root.join("usr/lib/systemd/"))
        .status()
        .unwrap();
    assert!(copied.success(), "copying /usr/lib/systemd/system");
    std::fs::copy(deploy().join("systemd").join(unit), units.join(unit)).unwrap();
    for b in ["faultline-agent", "faultline-coordinator"] {
        let (from, to) = (binary(b), bin.join(b));
        if std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to).unwrap();
        }
    }
    root
}

fn analyze(root: &Path, args: &[&str], unit: &str) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .args(args)
        .arg(format!("--root={}", root.display()))
        .arg(root.join("etc/systemd/system").join(unit))
        .output()
        .expect("systemd-analyze (apt install systemd)");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The directive values a unit file sets (continuation lines joined).
fn directives(unit: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(deploy().join("systemd").join(unit)).unwrap();
    text.replace("\\\n", " ")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

fn has(d: &[(String, String)], key: &str, value: &str) -> bool {
    d.iter().any(|(k, v)| k == key && v.contains(value))
}

/// `systemd-analyze verify` is clean and `security` rates the unit at most
/// `ceiling` (0 is fully locked down, 10 fully exposed); returns the rating.
fn verify_and_rate(unit: &str, ceiling: f64) -> f64 {
    let root = unit_root(unit);
    let (ok, text) = analyze(&root, &["verify"], unit);
    assert!(
        ok && text.trim().is_empty(),
        "systemd-analyze verify {unit}:\n{text}"
    );
    let (_, text) = analyze(&root, &["security", "--offline=yes", "--no-pager"], unit);
    let exposure: f64 = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for ").nth(1))
        .and_then(|l| l.split(": ").nth(1))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    println!("systemd-analyze security {unit}: exposure {exposure:.1}");
    assert!(
        exposure <= ceiling,
        "{unit} exposure {exposure} above {ceiling}:\n{text}"
    );
    exposure
}

#[test]
fn the_agent_unit_verifies_clean_is_hardened_and_cleans_up_around_every_run() {
    let d = directives("faultline-agent.service");
    for (key, value) in [
        ("ExecStartPre", "faultline-agent cleanup"),
        ("ExecStopPost", "faultline-agent cleanup"),
        ("Restart", "on-failure"),
        ("ProtectSystem", "strict"),
        ("NoNewPrivileges", "yes"),
        ("ReadWritePaths", "/sys/fs/cgroup"),
        ("ReadWritePaths", "/sys/fs/bpf"),
        ("ReadWritePaths", "/run/faultline"),
        ("CapabilityBoundingSet", "CAP_BPF"),
        ("KillMode", "mixed"),
    ] {
        assert!(
            has(&d, key, value),
            "faultline-agent.service lacks {key}={value}"
        );
    }
    // Root's full set would defeat the point: never these.
    for cap in [
        "CAP_SYS_MODULE",
        "CAP_SYS_PTRACE",
        "CAP_SYS_RAWIO",
        "CAP_SETUID",
    ] {
        assert!(
            !has(&d, "CapabilityBoundingSet", cap),
            "the agent's bounding set has {cap}"
        );
    }
    // Root with a narrow capability set; the rest of the exposure is the paths it
    // must write (cgroups, bpffs, /proc/sys/net) and the devices it must open.
    verify_and_rate("faultline-agent.service", 5.5);
}

#[test]
fn the_coordinator_unit_verifies_clean_and_runs_unprivileged() {
    let d = directives("faultline-coordinator.service");
    for (key, value) in [
        ("DynamicUser", "yes"),
        ("Restart", "on-failure"),
        ("ProtectSystem", "strict"),
        ("NoNewPrivileges", "yes"),
        ("StateDirectory", "faultline"),
    ] {
        assert!(
            has(&d, key, value),
            "faultline-coordinator.service lacks {key}={value}"
        );
    }
    assert!(
        d.iter()
            .any(|(k, v)| k == "CapabilityBoundingSet" && v.is_empty()),
        "the coordinator keeps capabilities"
    );
    verify_and_rate("faultline-coordinator.service", 2.0);
}

fn kubernetes() -> PathBuf {
    deploy().join("kubernetes")
}

/// The Kubernetes objects: the base's manifests and the Secret templates (not the
/// kustomization files, which are no objects).
fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = [kubernetes(), kubernetes().join("base")]
        .iter()
        .flat_map(|d| std::fs::read_dir(d).unwrap())
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "yaml")
                && p.file_name().is_some_and(|n| n != "kustomization.yaml")
        })
        .collect();
    files.sort();
    files
}

/// Every document of every manifest, as (file, document).
fn documents() -> Vec<(String, serde_yaml_ng::Value)> {
    let mut docs = Vec::new();
    for f in manifests() {
        let text = std::fs::read_to_string(&f).unwrap();
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        for d in serde_yaml_ng::Deserializer::from_str(&text) {
            let v = serde_yaml::Value::deserialize(d).unwrap_or_else(|e| panic!("{name}: {e}"));
            if !v.is_null() {
                docs.push((name.clone(), v));
            }
        }
    }
    docs
}

use serde::Deserialize;
use serde_yaml_ng as serde_yaml;

#[test]
fn the_kubernetes_manifests_validate_against_the_kubernetes_schemas() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let validator = root.join("target/pyenv/bin/kubernetes-validate");
    let out = Command::new(&validator)
        .args(["--strict", "--kubernetes-version", KUBERNETES])
        .args(manifests())
        .output()
        .unwrap_or_else(|e| panic!("{} ({e}): run `cargo xtask setup`", validator.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(out.status.success(), "kubernetes-validate:\n{text}");
    // It prints one line per document that passed: every document was checked.
    let valid = text
        .lines()
        .filter(|l| l.contains(" passed for resource "))
        .count();
    assert_eq!(valid, documents().len(), "{text}");
}

/// The Kubernetes version the manifests are validated for.
const KUBERNETES: &str = "1.33.0";

/// Capabilities the agent may add, each justified where it is added (and each
/// proved needed by tests/tests/container.rs).
const AGENT_CAPABILITIES: [&str; 4] = ["BPF", "PERFMON", "NET_ADMIN", "DAC_OVERRIDE"];

fn get<'a>(v: &'a serde_yaml::Value, path: &[&str]) -> Option<&'a serde_yaml::Value> {
    path.iter().try_fold(v, |v, k| v.get(*k))
}

#[test]
fn the_kubernetes_manifests_follow_the_projects_rules() {
    let docs = documents();
    let kinds: Vec<String> = docs
        .iter()
        .map(|(_, d)| d["kind"].as_str().unwrap().to_owned())
        .collect();
    for want in [
        "Namespace",
        "DaemonSet",
        "Deployment",
        "Service",
        "ServiceAccount",
        "ConfigMap",
        "Secret",
        "NetworkPolicy",
    ] {
        assert!(
            kinds.iter().any(|k| k == want),
            "no {want} in deploy/kubernetes"
        );
    }
    let agent_text = std::fs::read_to_string(kubernetes().join("base/agent.yaml")).unwrap();
    let mut containers = 0;
    for (file, d) in &docs {
        let Some(pod) = get(d, &["spec", "template", "spec"]) else {
            continue;
        };
        let kind = d["kind"].as_str().unwrap();
        assert_eq!(
            pod["automountServiceAccountToken"].as_bool(),
            Some(false),
            "{file}: {kind} mounts an API token it does not use"
        );
        let all = ["initContainers", "containers"]
            .iter()
            .filter_map(|k| pod.get(*k).and_then(|c| c.as_sequence()))
            .flatten();
        for c in all {
            containers += 1;
            let name = c["name"].as_str().unwrap();
            let at = format!("{file}: {kind} container {name}");
            for r in ["requests", "limits"] {
                for res in ["cpu", "memory"] {
                    assert!(
                        get(c, &["resources", r, res]).is_some(),
                        "{at}: no resources.{r}.{res}"
                    );
                }
            }
            let sc = &c["securityContext"];
            assert_ne!(sc["privileged"].as_bool(), Some(true), "{at}: privileged");
            assert_eq!(
                sc["allowPrivilegeEscalation"].as_bool(),
                Some(false),
                "{at}: privilege escalation allowed"
            );
            assert_eq!(
                sc["readOnlyRootFilesystem"].as_bool(),
                Some(true),
                "{at}: writable root filesystem"
            );
            let drop: Vec<&str> = get(sc, &["capabilities", "drop"])
                .and_then(|v| v.as_sequence())
                .map(|s| s.iter().filter_map(|v| v.as_str()).collect())
                .unwrap_or_default();
            assert_eq!(drop, ["ALL"], "{at}: capabilities not dropped");
            let add = get(sc, &["capabilities", "add"]).and_then(|v| v.as_sequence());
            for cap in add.into_iter().flatten().filter_map(|v| v.as_str()) {
                assert!(
                    AGENT_CAPABILITIES.contains(&cap) && file == "agent.yaml",
                    "{at}: adds {cap}"
                );
                // Justified where it is added: `- CAP  # why`.
                assert!(
                    agent_text.lines().any(|l| {
                        l.trim_start().starts_with(&format!("- {cap} "))
                            && l.split_once('#')
                                .is_some_and(|(_, why)| why.trim().len() > 10)
                    }),
                    "{at}: {cap} without a comment saying why"
                );
            }
            if kind != "DaemonSet"
                || pod["initContainers"]
                    .as_sequence()
                    .is_none_or(|i| !i.iter().any(|x| x["name"] == c["name"]))
            {
                for probe in ["livenessProbe", "readinessProbe"] {
                    assert!(c.get(probe).is_some(), "{at}: no {probe}");
                }
            }
        }
        if kind == "DaemonSet" {
            assert_eq!(pod["hostNetwork"].as_bool(), Some(true));
            assert_ne!(pod["hostPID"].as_bool(), Some(true), "hostPID without need");
            let tolerates_all = pod["tolerations"].as_sequence().is_some_and(|t| {
                t.iter()
                    .any(|t| t["operator"] == "Exists" && t.get("key").is_none())
            });
            assert!(tolerates_all, "the agent does not tolerate every node");
            let init = format!("{:?}", pod["initContainers"]);
            assert!(init.contains("cleanup"), "no cleanup init container");
            let pre_stop = format!(
                "{:?}",
                get(&pod["containers"][0], &["lifecycle", "preStop"])
            );
            assert!(pre_stop.contains("stop"), "no preStop that removes effects");
            let mounts = format!("{:?}", pod["volumes"]);
            for path in ["/sys/fs/cgroup", "/sys/fs/bpf", "/run/faultline"] {
                assert!(mounts.contains(path), "the agent does not mount {path}");
            }
        }
    }
    assert!(containers >= 3, "only {containers} containers checked");
}

/// The coordinator's ConfigMap holds files the coordinator itself accepts.
#[test]
fn the_kubernetes_config_map_passes_the_coordinators_own_checks() {
    let docs = documents();
    let cm = docs
        .iter()
        .find(|(_, d)| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "faultline-coordinator")
        .map(|(_, d)| &d["data"])
        .expect("the coordinator's ConfigMap");
    let dir = TempPath::dir("fl-k8s-config");
    for f in ["limits.yaml", "config.yaml", "schedule.yaml"] {
        std::fs::write(dir.join(f), cm[f].as_str().unwrap()).unwrap();
    }
    let coordinator = binary("faultline-coordinator");
    for args in [
        vec![
            "check-limits".to_owned(),
            dir.join("limits.yaml").display().to_string(),
        ],
        vec![
            "check-config".to_owned(),
            dir.join("config.yaml").display().to_string(),
        ],
        vec![
            "check-schedule".to_owned(),
            dir.join("schedule.yaml").display().to_string(),
            "--limits".to_owned(),
            dir.join("limits.yaml").display().to_string(),
            "--config".to_owned(),
            dir.join("config.yaml").display().to_string(),
        ],
    ] {
        let out = Command::new(&coordinator).args(&args).output().unwrap();
        assert!(
            out.status.success(),
            "faultline-coordinator {}: {}{}",
            args[0],
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The example option files are what the binaries accept, and a wrong key is an
/// error naming it, with exit code 2.
#[test]
fn the_example_option_files_pass_each_binarys_check_and_a_wrong_key_is_named() {
    let ok = |bin: &str, file: &Path| {
        let out = Command::new(binary(bin))
            .arg("check-config")
            .arg(file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{bin} check-config {}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ok("faultline-agent", &deploy().join("agent.example.yaml"));
    ok(
        "faultline-coordinator",
        &deploy().join("coordinator.example.yaml"),
    );
    let dir = TempPath::dir("fl-options");
    for (bin, text, key) in [
        ("faultline-agent", "node_nam: a\n", "node_nam"),
        ("faultline-coordinator", "serve:\n  listn: 1\n", "listn"),
    ] {
        let f = dir.join(format!("{bin}.yaml"));
        std::fs::write(&f, text).unwrap();
        let out = Command::new(binary(bin))
            .arg("check-config")
            .arg(&f)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bin}: {err}");
        assert!(
            err.contains(&format!("unknown option '{key}'")),
            "{bin}: {err}"
        );
    }
}

/// The agent's seccomp profile is the runtime's default (Debian's containers-common,
/// which podman and CRI-O apply as RuntimeDefault) with one change: bpf(2) moves
/// from the rules for CAP_SYS_ADMIN holders to a rule of its own for CAP_BPF
/// holders. Nothing else is allowed that the default refuses.
#[test]
fn the_agent_seccomp_profile_is_the_runtime_default_plus_bpf_for_cap_bpf() {
    let read = |p: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(p).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (apt install golang-github-containers-common)",
                p.display()
            )
        }))
        .expect("seccomp json")
    };
    let mut ours = read(&deploy().join("seccomp/faultline-agent.json"));
    let default = read(Path::new("/usr/share/containers/seccomp.json"));
    let rules = ours["syscalls"].as_array_mut().expect("syscalls");
    let added = rules.pop().expect("the added rule");
    assert_eq!(added["names"], serde_json::json!(["bpf"]), "{added}");
    assert_eq!(added["action"], "SCMP_ACT_ALLOW");
    assert_eq!(added["includes"]["caps"], serde_json::json!(["CAP_BPF"]));
    // With that rule taken out and bpf given back to the rules it came from, the
    // profile is the default, field for field.
    let mut expected = default.clone();
    for rule in expected["syscalls"].as_array_mut().expect("syscalls") {
        if rule["action"] == "SCMP_ACT_ERRNO"
            && let Some(names) = rule["names"].as_array_mut()
        {
            names.retain(|n| n != "bpf");
        }
    }
    assert_eq!(
        ours, expected,
        "the profile drifted from the runtime default"
    );
}

/// `kubectl kustomize` of a directory of deploy/kubernetes/, offline.
fn kustomize(dir: &str) -> String {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(kubernetes().join(dir))
        .output()
        .expect("kubectl (with kustomize) on PATH");
    assert!(
        out.status.success(),
        "kubectl kustomize {dir}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "kubectl kustomize {dir} warned: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn rendered(text: &str) -> Vec<serde_yaml::Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| serde_yaml::Value::deserialize(d).expect("rendered yaml"))
        .filter(|v| !v.is_null())
        .collect()
}

/// Every container's image in rendered objects.
fn images(docs: &[serde_yaml::Value]) -> Vec<String> {
    docs.iter()
        .flat_map(|d| {
            let pod = &d["spec"]["template"]["spec"];
            ["containers", "initContainers"]
                .iter()
                .flat_map(|k| pod[*k].as_sequence().cloned().unwrap_or_default())
                .collect::<Vec<_>>()
        })
        .filter_map(|c| c["image"].as_str().map(str::to_owned))
        .collect()
}

/// The base and both overlays render offline with `kubectl kustomize`, pass the
/// schema validation, and name the image `cargo xtask dist` builds: the base as it
/// loads (`faultline:<version>`), the overlays as pushed to the registry they name,
/// with the same tag. Staging runs the agents on the staging profile and the
/// coordinator on the staging limits, which the coordinator accepts.
#[test]
fn the_kustomizations_render_offline_validate_and_name_the_image_dist_builds() {
    let version = env!("CARGO_PKG_VERSION");
    let (_, reference) = faultline_tests::container::image_archive();
    assert_eq!(reference, format!("faultline:{version}"));
    let validator =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pyenv/bin/kubernetes-validate");
    let dir = TempPath::dir("fl-kustomize");
    for (overlay, image) in [
        ("base", reference.clone()),
        (
            "overlays/production",
            format!("registry.example.internal/faultline:{version}"),
        ),
        (
            "overlays/staging",
            format!("registry.example.internal/faultline:{version}"),
        ),
    ] {
        let text = kustomize(overlay);
        let docs = rendered(&text);
        let found = images(&docs);
        assert_eq!(
            found.len(),
            3,
            "{overlay}: agent, its init container, coordinator"
        );
        assert!(
            found.iter().all(|i| *i == image),
            "{overlay}: images {found:?}, not {image}"
        );
        let file = dir.join(format!("{}.yaml", overlay.replace('/', "-")));
        std::fs::write(&file, &text).unwrap();
        let out = Command::new(&validator)
            .args(["--strict", "--kubernetes-version", KUBERNETES])
            .arg(&file)
            .output()
            .expect("kubernetes-validate");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{overlay}: {said}");
        let valid = said
            .lines()
            .filter(|l| l.contains(" passed for resource "))
            .count();
        assert_eq!(valid, docs.len(), "{overlay}: {said}");
        if overlay == "overlays/staging" {
            let agent = docs
                .iter()
                .find(|d| d["kind"] == "DaemonSet")
                .expect("DaemonSet");
            let args = format!(
                "{:?}",
                agent["spec"]["template"]["spec"]["containers"][0]["args"]
            );
            assert!(
                args.contains("--profile=staging") && !args.contains("--profile=production"),
                "{args}"
            );
            let limits = docs
                .iter()
                .find(|d| d["kind"] == "ConfigMap")
                .and_then(|d| d["data"]["limits.yaml"].as_str())
                .expect("the staging limits");
            let f = dir.join("staging-limits.yaml");
            std::fs::write(&f, limits).unwrap();
            let shown = Command::new(binary("faultline-coordinator"))
                .args(["show-limits", "--profile", "staging"])
                .output()
                .unwrap();
            let checked = Command::new(binary("faultline-coordinator"))
                .arg("check-limits")
                .arg(&f)
                .output()
                .unwrap();
            assert!(
                checked.status.success(),
                "{}",
                String::from_utf8_lossy(&checked.stderr)
            );
            assert_eq!(
                String::from_utf8_lossy(&checked.stdout),
                String::from_utf8_lossy(&shown.stdout),
                "the staging overlay's limits are the staging profile's"
            );
        }
    }
}
