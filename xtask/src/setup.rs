//! The eBPF toolchain from Debian packages and crates.io only:
//! - Debian's rustc-web (rustc 1.96 on LLVM 22) with rust-web-src for
//!   `-Z build-std=core`, linked into rustup as the `faultline-bpf` toolchain;
//! - bpf-linker 0.13.0 built against Debian's LLVM 22.
//!
//! bpf-linker must use the same LLVM major as the rustc that compiles the eBPF
//! crate, otherwise linking fails with obscure bitcode errors; setup checks it.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::run;

const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "rustc-web",
    "cargo-web",
    "rust-web-src",
    "iproute2",
    // The demo and the control-plane tests: POST /abort, agents joined to a netns only.
    "curl",
    "util-linux",
    // The CPU stress benchmark measures faultline beside stress-ng in one run.
    "stress-ng",
    // The steady-state tests and the demo judge experiments with real monitoring.
    "prometheus",
    "prometheus-alertmanager",
    // A gRPC reflection client as new users have it (Python's grpcio-reflection).
    "python3-venv",
    // deploy/systemd/: `systemd-analyze verify` and `security` in the tests.
    "systemd",
    // The dashboard test drives a real headless browser.
    "chromium",
    // `cargo xtask dist`: cargo-deb's library dependencies (dpkg-shlibdeps) and
    // `strip` for the image's binaries.
    "dpkg-dev",
    "binutils",
    // The image's tests run it under a real OCI runtime.
    "podman",
    "runc",
    // The image archive must load where teams load images: `ctr import` and
    // `docker load` (tests/tests/image.rs starts both daemons on private state).
    "containerd",
    "docker.io",
];

/// PyPI packages for the tests' Python clients, pinned; in `target/pyenv`.
const PY_PACKAGES: &[&str] = &[
    "grpcio==1.85.3",
    "grpcio-reflection==1.85.1",
    "protobuf==7.36.2",
    // deploy/kubernetes/ is validated against the Kubernetes schemas it bundles.
    "kubernetes-validate==1.37.0",
];

/// A virtualenv with `PY_PACKAGES` (from PyPI only); rebuilt when the pins change.
fn python_env() -> Result<()> {
    let env = crate::workspace_root().join("target/pyenv");
    let stamp = env.join("faultline-pins");
    let want = PY_PACKAGES.join("\n");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == want) {
        return Ok(());
    }
    println!(
        "setup: Python packages for the tests: {}",
        PY_PACKAGES.join(" ")
    );
    let _ = std::fs::remove_dir_all(&env);
    run(Command::new("python3").args(["-m", "venv"]).arg(&env))?;
    run(Command::new(env.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .args(PY_PACKAGES))?;
    std::fs::write(&stamp, want)?;
    Ok(())
}
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_MAJOR: u32 = 22;
pub const BPF_TOOLCHAIN: &str = "faultline-bpf";
const SYSTEM_RUSTC: &str = "/usr/bin/rustc";

pub fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn apt_missing<'a>(packages: &[&'a str]) -> Vec<&'a str> {
    packages
        .iter()
        .copied()
        .filter(|p| {
            output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_none_or(|s| !s.contains("install ok installed"))
        })
        .collect()
}

fn cargo_home_bin() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
        .join("bin")
}

fn bpf_linker() -> PathBuf {
    cargo_home_bin().join("bpf-linker")
}

/// The LLVM major a bpf-linker binary was linked against (it loads libLLVM.so.N).
fn linker_llvm_major(linker: &Path) -> Option<u32> {
    let ldd = output(Command::new("ldd").arg(linker))?;
    ldd.lines().find_map(|l| {
        let rest = l.trim().strip_prefix("libLLVM.so.")?;
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    })
}

fn rustc_llvm_major(rustc: &str) -> Option<u32> {
    let v = output(Command::new(rustc).arg("-vV"))?;
    v.lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))?
        .split('.')
        .next()?
        .parse()
        .ok()
}

fn linker_is_current(linker: &Path) -> bool {
    output(Command::new(linker).arg("--version"))
        .is_some_and(|v| v.trim().ends_with(BPF_LINKER_VERSION))
        && linker_llvm_major(linker) == Some(LLVM_MAJOR)
}

/// Installs the Debian packages in `packages` that are missing.
pub fn ensure_apt(packages: &[&str]) -> Result<()> {
    let missing = apt_missing(packages);
    if !missing.is_empty() {
        println!("setup: installing Debian packages: {}", missing.join(" "));
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    Ok(())
}

pub fn setup() -> Result<()> {
    ensure_apt(APT_PACKAGES)?;
    // The manifests' overlays are rendered by kubectl's built-in kustomize in the
    // tests; Debian 12 ships no kubectl new enough (kubernetes-client is 1.20).
    if output(Command::new("kubectl").args(["kustomize", "--help"])).is_none() {
        bail!("kubectl with kustomize (1.21 or newer) is needed on PATH for the deploy tests");
    }
    python_env()?;

    let linker = bpf_linker();
    if !linker_is_current(&linker) {
        println!(
            "setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM {LLVM_MAJOR} (2-3 min)"
        );
        // Debian's /usr/bin/llvm-config is an older LLVM; point llvm-sys at 22's.
        run(Command::new("cargo")
            .args([
                "install",
                &format!("bpf-linker@{BPF_LINKER_VERSION}"),
                "--locked",
            ])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{LLVM_MAJOR}"),
            ])
            .env("LLVM_PREFIX", format!("/usr/lib/llvm-{LLVM_MAJOR}")))?;
    }

    // agent/build.rs runs `rustup run <toolchain> cargo` when rustup is present.
    if output(Command::new("rustup").arg("--version")).is_some() {
        let linked = output(Command::new("rustup").args(["toolchain", "list"]))
            .is_some_and(|l| l.lines().any(|t| t.starts_with(BPF_TOOLCHAIN)));
        if !linked {
            run(Command::new("rustup").args(["toolchain", "link", BPF_TOOLCHAIN, "/usr"]))?;
        }
    }

    verify(&linker)
}

fn verify(linker: &Path) -> Result<()> {
    let rustc = rustc_llvm_major(SYSTEM_RUSTC)
        .with_context(|| format!("cannot read the LLVM version of {SYSTEM_RUSTC}"))?;
    let bpf = linker_llvm_major(linker)
        .with_context(|| format!("cannot tell which LLVM {} uses", linker.display()))?;
    if rustc != bpf {
        bail!(
            "LLVM mismatch: {SYSTEM_RUSTC} uses LLVM {rustc} but {} uses LLVM {bpf}; \
             the eBPF object would not link. Reinstall bpf-linker with --features llvm-{rustc}.",
            linker.display()
        );
    }
    println!("setup: eBPF toolchain ready (rustc and bpf-linker both on LLVM {rustc})");
    Ok(())
}

/// Builds the eBPF object the same way the agent's build script does, into
/// target/bpf, and returns its path.
pub fn build_ebpf() -> Result<PathBuf> {
    let root = crate::workspace_root();
    let target_dir = root.join("target").join("bpf");
    let rustup = output(Command::new("rustup").arg("--version")).is_some();
    let mut cmd = if rustup {
        let mut c = Command::new("rustup");
        c.args(["run", BPF_TOOLCHAIN, "cargo"]);
        c
    } else {
        Command::new("/usr/bin/cargo")
    };
    cmd.args([
        "build",
        "--package",
        "faultline-ebpf",
        "--bins",
        "--release",
    ])
    .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
    .arg("--target-dir")
    .arg(&target_dir)
    .env("RUSTC_BOOTSTRAP", "1")
    .env(
        "CARGO_ENCODED_RUSTFLAGS",
        "--cfg=bpf_target_arch=\"x86_64\"\x1f-Cdebuginfo=2\x1f-Clink-arg=--btf",
    )
    .env_remove("RUSTC")
    .env_remove("RUSTC_WORKSPACE_WRAPPER");
    run(&mut cmd)?;
    Ok(target_dir.join("bpfel-unknown-none/release/faultline-ebpf"))
}
