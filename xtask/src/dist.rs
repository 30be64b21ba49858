//! `cargo xtask dist`: what a team installs, from this checkout, crates.io and
//! Debian's packages only, into `target/dist/`:
//! - `faultline-agent_<v>-1_amd64.deb` and `faultline-coordinator_<v>-1_amd64.deb`
//!   (the latter with the `faultline` CLI), built by cargo-deb from each crate's
//!   `[package.metadata.deb]`: binaries, systemd units, example files, man pages
//!   and completions, maintainer scripts (deploy/debian/);
//! - `faultline-<v>.oci.tar`: one OCI image with the three binaries (`image`);
//! - `faultline-<v>.{image,packages}.cdx.json`: their SBOMs (`sbom`).
//!
//! Every timestamp is SOURCE_DATE_EPOCH (the commit's time unless it is set), so
//! one commit builds one image digest.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result};

use crate::{
    cargo,
    image::{self, Entry},
    run, sbom, workspace_root,
};

const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The binaries: the agent, the coordinator and the CLI (built by the coordinator's
/// crate, packaged with it).
const BINARIES: [&str; 3] = ["faultline-agent", "faultline-coordinator", "faultline"];
const PACKAGES: [&str; 2] = ["faultline-agent", "faultline-coordinator"];
const CARGO_DEB: &str = "3.6.2";
/// The image's default user: unprivileged (the coordinator); the agent's pod sets 0.
const USER: u32 = 65532;

pub fn dir() -> PathBuf {
    workspace_root().join("target/dist")
}

/// The image archive `dist` writes (the tests load it).
pub fn image_path() -> PathBuf {
    dir().join(format!("faultline-{VERSION}.oci.tar"))
}

/// What the image is called once loaded; the manifests use it.
pub fn reference() -> String {
    format!("faultline:{VERSION}")
}

/// SOURCE_DATE_EPOCH if set, else the time of the checked-out commit.
fn source_date_epoch() -> Result<u64> {
    if let Ok(v) = std::env::var("SOURCE_DATE_EPOCH") {
        return v.parse().context("SOURCE_DATE_EPOCH is not a Unix time");
    }
    let out = Command::new("git")
        .args(["log", "-1", "--format=%ct"])
        .current_dir(workspace_root())
        .output()
        .context("git (for SOURCE_DATE_EPOCH)")?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .context("cannot read the commit's time: set SOURCE_DATE_EPOCH")
}

/// Where this checkout and the crates' sources are, written as fixed names into
/// what the build embeds (panic locations, debug and BTF file names, generated
/// files' paths), so the binaries and the image do not depend on either directory:
/// one commit, one digest, whoever builds it where. agent/build.rs passes the same
/// flags to the eBPF object's build.
fn remap_flags() -> Result<String> {
    let cargo_home = match std::env::var_os("CARGO_HOME") {
        Some(home) => PathBuf::from(home),
        None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?).join(".cargo"),
    };
    Ok(format!(
        "--remap-path-prefix={}=/faultline\x1f--remap-path-prefix={}=/cargo",
        workspace_root().display(),
        cargo_home.display()
    ))
}

fn revision() -> String {
    crate::setup::output(
        Command::new("git")
            .args(["rev-parse", "HEAD"])
            .current_dir(workspace_root()),
    )
    .map(|s| s.trim().to_string())
    .unwrap_or_default()
}

pub fn dist() -> Result<()> {
    let epoch = source_date_epoch()?;
    let out = dir();
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out)?;
    run(cargo()
        .args(["build", "--release", "--locked"])
        .args(PACKAGES.iter().flat_map(|p| ["--package", p]))
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        .env("CARGO_ENCODED_RUSTFLAGS", remap_flags()?))?;
    let release = workspace_root().join("target/release");
    for bin in BINARIES {
        run(Command::new(release.join(bin))
            .arg("docs")
            .arg(out.join("docs").join(bin)))?;
    }
    let packages = debs(epoch)?;
    let (entries, debs) = image_entries(&release)?;
    let crates = sbom::crates(&["faultline-agent", "faultline-coordinator", "faultline-ebpf"])?;
    let image_sbom = sbom::document("faultline-image", VERSION, epoch, &crates, &debs);
    let packages_sbom = sbom::document("faultline-packages", VERSION, epoch, &crates, &[]);
    let image_sbom = serde_json::to_vec_pretty(&image_sbom)?;
    std::fs::write(
        out.join(format!("faultline-{VERSION}.image.cdx.json")),
        &image_sbom,
    )?;
    std::fs::write(
        out.join(format!("faultline-{VERSION}.packages.cdx.json")),
        serde_json::to_vec_pretty(&packages_sbom)?,
    )?;
    let mut entries = entries;
    entries.push(Entry::file(
        "usr/share/doc/faultline/sbom.cdx.json",
        0o644,
        image_sbom,
    ));
    let spec = image::Spec {
        reference: reference(),
        user: format!("{USER}:{USER}"),
        labels: labels(epoch),
        epoch,
    };
    let written = image::write(&entries, &spec, &image_path())?;
    for p in &packages {
        println!(
            "dist: {} ({} bytes)",
            p.display(),
            std::fs::metadata(p)?.len()
        );
    }
    println!(
        "dist: {} ({} bytes), {} as {}, image id {}",
        image_path().display(),
        written.bytes,
        written.digest,
        reference(),
        written.id
    );
    println!(
        "dist: {} crates, {} Debian packages in the SBOMs",
        crates.len(),
        debs.len()
    );
    Ok(())
}

fn labels(epoch: u64) -> BTreeMap<String, String> {
    [
        ("title", "faultline".to_string()),
        (
            "description",
            "faultline: production-safe chaos engineering (agent, coordinator, CLI)".into(),
        ),
        ("version", VERSION.into()),
        ("revision", revision()),
        ("created", image::rfc3339(epoch)),
        ("licenses", "Apache-2.0".into()),
    ]
    .into_iter()
    .map(|(k, v)| (format!("org.opencontainers.image.{k}"), v))
    .collect()
}

/// cargo-deb, at the pinned version, under target/tools.
fn cargo_deb() -> Result<PathBuf> {
    let root = workspace_root().join("target/tools");
    let bin = root.join("bin/cargo-deb");
    let current = crate::setup::output(Command::new(&bin).arg("--version"))
        .is_some_and(|v| v.contains(CARGO_DEB));
    if !current {
        println!("dist: installing cargo-deb {CARGO_DEB} from crates.io");
        run(cargo()
            .args([
                "install",
                &format!("cargo-deb@{CARGO_DEB}"),
                "--locked",
                "--root",
            ])
            .arg(&root))?;
    }
    Ok(bin)
}

fn debs(epoch: u64) -> Result<Vec<PathBuf>> {
    let tool = cargo_deb()?;
    let mut made = Vec::new();
    for package in PACKAGES {
        let out = Command::new(&tool)
            .args(["--package", package, "--no-build", "--locked", "--output"])
            .arg(dir())
            .current_dir(workspace_root())
            .env("SOURCE_DATE_EPOCH", epoch.to_string())
            .output()
            .context("cargo-deb")?;
        anyhow::ensure!(
            out.status.success(),
            "cargo-deb --package {package}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // cargo-deb prints the package's path last.
        let path = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .map(|l| PathBuf::from(l.trim()))
            .context("cargo-deb printed no package")?;
        made.push(path);
    }
    Ok(made)
}

/// The image's files, and the Debian packages its libraries come from.
fn image_entries(release: &Path) -> Result<(Vec<Entry>, Vec<sbom::DebPackage>)> {
    let mut entries = vec![
        // Debian 12's merged /usr, which the libraries' paths assume.
        Entry::symlink("bin", "usr/bin"),
        Entry::symlink("lib", "usr/lib"),
        Entry::symlink("lib64", "usr/lib64"),
        Entry::symlink("sbin", "usr/sbin"),
        Entry::dir("tmp", 0o1777, 0),
        Entry::dir("etc/faultline", 0o755, 0),
        Entry::dir("run/faultline", 0o700, 0),
        Entry::dir("var/lib/faultline", 0o750, USER),
        Entry::file(
            "etc/passwd",
            0o644,
            format!(
                "root:x:0:0:root:/root:/usr/sbin/nologin\n\
                 faultline:x:{USER}:{USER}:faultline:/var/lib/faultline:/usr/sbin/nologin\n"
            )
            .into_bytes(),
        ),
        Entry::file(
            "etc/group",
            0o644,
            format!("root:x:0:\nfaultline:x:{USER}:\n").into_bytes(),
        ),
    ];
    for example in ["agent.example.yaml", "coordinator.example.yaml"] {
        let text = std::fs::read(workspace_root().join("deploy").join(example))?;
        entries.push(Entry::file(
            &format!("usr/share/doc/faultline/examples/{example}"),
            0o644,
            text,
        ));
    }
    let mut libraries = BTreeSet::new();
    for bin in BINARIES {
        let path = release.join(bin);
        entries.push(Entry::file(
            &format!("usr/bin/{bin}"),
            0o755,
            stripped(&path)?,
        ));
        libraries.extend(image::libraries(&path)?);
    }
    let mut debs = BTreeSet::new();
    let mut files = BTreeSet::new();
    for lib in &libraries {
        let file = in_image(&lib.file);
        if files.insert(file.clone()) {
            entries.push(Entry::file(&file, 0o755, std::fs::read(&lib.file)?));
        }
        let wanted = in_image(&lib.wanted);
        if wanted != file && files.insert(wanted.clone()) {
            entries.push(Entry::symlink(&wanted, &format!("/{file}")));
        }
        debs.insert(sbom::deb_owner(&lib.file).or_else(|_| sbom::deb_owner(&lib.wanted))?);
    }
    for deb in &debs {
        let copyright = PathBuf::from(format!("/usr/share/doc/{}/copyright", deb.name));
        if let Ok(text) = std::fs::read(&copyright) {
            entries.push(Entry::file(
                &format!("usr/share/doc/{}/copyright", deb.name),
                0o644,
                text,
            ));
        }
    }
    Ok((entries, debs.into_iter().collect()))
}

/// A host path as it sits in the merged-/usr image (no leading `/`).
fn in_image(path: &Path) -> String {
    let s = path.to_string_lossy();
    let s = s.trim_start_matches('/');
    for top in ["lib64/", "lib/", "bin/", "sbin/"] {
        if let Some(rest) = s.strip_prefix(top) {
            return format!("usr/{top}{rest}");
        }
    }
    s.to_string()
}

/// The binary without debug sections (`strip --strip-debug`, from binutils).
fn stripped(path: &Path) -> Result<Vec<u8>> {
    let out = dir()
        .join("stripped")
        .join(path.file_name().context("binary name")?);
    std::fs::create_dir_all(out.parent().context("parent")?)?;
    run(Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&out)
        .arg(path))?;
    let bytes = std::fs::read(&out)?;
    std::fs::remove_file(&out)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_paths_land_in_the_merged_usr() {
        assert_eq!(
            in_image(Path::new("/lib/x86_64-linux-gnu/libc.so.6")),
            "usr/lib/x86_64-linux-gnu/libc.so.6"
        );
        assert_eq!(
            in_image(Path::new("/lib64/ld-linux-x86-64.so.2")),
            "usr/lib64/ld-linux-x86-64.so.2"
        );
        assert_eq!(
            in_image(Path::new("/usr/lib/x86_64-linux-gnu/libm.so.6")),
            "usr/lib/x86_64-linux-gnu/libm.so.6"
        );
    }
}
