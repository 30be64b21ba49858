//! Builds the eBPF object (agent-ebpf/) so that a plain `cargo build` of the agent
//! embeds up-to-date programs. The bpf target needs a toolchain whose LLVM matches
//! bpf-linker's and `-Z build-std=core`; `cargo xtask setup` provides both (Debian's
//! rustc, linked into rustup as `faultline-bpf`). See README, "Toolchain".
//!
//! A cargo of its own builds it (as aya-build does, whose steps these are), because
//! the object must carry the path remapping of the binary that embeds it: `cargo
//! xtask dist` builds with `--remap-path-prefix` so that the image is the same
//! whatever directory the checkout is in, and aya-build replaces the eBPF build's
//! rustflags with its own, which left the checkout's path in the object's BTF.
use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

const PACKAGE: &str = "faultline-ebpf";

/// The host build's `--remap-path-prefix` flags (cargo hands a build script the
/// host's rustflags), for the eBPF build to apply the same.
fn remaps(encoded: &str) -> Vec<String> {
    let flags: Vec<&str> = encoded.split('\x1f').filter(|f| !f.is_empty()).collect();
    let mut out = Vec::new();
    for (i, flag) in flags.iter().enumerate() {
        if let Some(map) = flag.strip_prefix("--remap-path-prefix=") {
            out.push(map.to_owned());
        } else if *flag == "--remap-path-prefix"
            && let Some(map) = flags.get(i + 1)
        {
            out.push((*map).to_owned());
        }
    }
    out
}

fn main() -> Result<()> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest
        .parent()
        .context("the agent lives in the workspace")?
        .join("agent-ebpf");
    // The programs and the layouts they share with the agent.
    println!("cargo:rerun-if-changed={}", root.display());
    println!("cargo:rerun-if-env-changed=FAULTLINE_BPF_TOOLCHAIN");
    let toolchain =
        env::var("FAULTLINE_BPF_TOOLCHAIN").unwrap_or_else(|_| "faultline-bpf".to_owned());
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let target = match env::var("CARGO_CFG_TARGET_ENDIAN")?.as_str() {
        "little" => "bpfel-unknown-none",
        "big" => "bpfeb-unknown-none",
        other => bail!("unsupported endianness {other}"),
    };
    let arch = env::var("CARGO_CFG_TARGET_ARCH")?;
    let mut rustflags = vec![
        format!("--cfg=bpf_target_arch=\"{arch}\""),
        "-Cdebuginfo=2".to_owned(),
        "-Clink-arg=--btf".to_owned(),
    ];
    let host_flags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    rustflags.extend(
        remaps(&host_flags)
            .into_iter()
            .map(|m| format!("--remap-path-prefix={m}")),
    );
    // Where rustup is, it picks the toolchain; without it, `cargo` must be that one.
    let rustup = Command::new("rustup")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let mut cmd = if rustup {
        let mut c = Command::new("rustup");
        c.args(["run", &toolchain, "cargo"]);
        c
    } else {
        Command::new("cargo")
    };
    let target_dir = out_dir.join("ebpf-target");
    cmd.args(["build", "--package", PACKAGE, "--bins", "--release"])
        .args(["--target", target, "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(&root)
        // build-std is unstable; the distribution rustc is a stable compiler.
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_TERM_QUIET", "true")
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags.join("\x1f"))
        // The host build's compiler is not the bpf toolchain's.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER");
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!(
            "building the eBPF programs failed ({}):\n{stderr}\n\
             Run `cargo xtask setup` once to install the eBPF toolchain.",
            out.status
        );
    }
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        println!("cargo:warning={line}");
    }
    let object = target_dir.join(target).join("release").join(PACKAGE);
    copy(&object, &out_dir.join(PACKAGE))
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to)
        .map(|_| ())
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))
}
