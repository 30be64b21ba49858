//! The OCI image, assembled byte for byte here rather than by a builder that pulls a
//! base: one layer with the three binaries, the host's Debian libraries they link
//! (found by `ldd`, each with its package's copyright file), `/etc/passwd` with the
//! unprivileged `faultline` user (65532) the image runs as by default, and the
//! directories the manifests mount over.
//!
//! Invariant: the archive is a function of its inputs alone. Entries are sorted,
//! every timestamp is `epoch` (SOURCE_DATE_EPOCH), owners and modes are fixed, the
//! gzip header carries no time or name, and JSON objects are written with sorted keys;
//! so one commit gives one digest (`same_inputs_same_digest` pins it).
use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// What a layer entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    Dir,
    File(Vec<u8>),
    Symlink(String),
}

/// One entry of the layer: its path (no leading `/`), mode and owner.
#[derive(Clone, Debug)]
pub struct Entry {
    pub path: String,
    pub mode: u32,
    pub owner: u32,
    pub body: Body,
}

impl Entry {
    pub fn dir(path: &str, mode: u32, owner: u32) -> Self {
        Self {
            path: path.into(),
            mode,
            owner,
            body: Body::Dir,
        }
    }
    pub fn file(path: &str, mode: u32, bytes: Vec<u8>) -> Self {
        Self {
            path: path.into(),
            mode,
            owner: 0,
            body: Body::File(bytes),
        }
    }
    pub fn symlink(path: &str, target: &str) -> Self {
        Self {
            path: path.into(),
            mode: 0o777,
            owner: 0,
            body: Body::Symlink(target.into()),
        }
    }
}

/// The image's identity and run settings.
pub struct Spec {
    /// `faultline:0.1.0`: what `podman load` names it and the manifests use.
    pub reference: String,
    pub user: String,
    /// OCI labels (`org.opencontainers.image.*`), also the manifest's annotations.
    pub labels: BTreeMap<String, String>,
    pub epoch: u64,
}

/// What was written, for the closing note and the tests.
#[derive(Debug, PartialEq, Eq)]
pub struct Written {
    /// The manifest's digest: the image digest a registry shows.
    pub digest: String,
    /// The config's digest: the image id `podman images` shows.
    pub id: String,
    pub bytes: u64,
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

fn header(path: &str, mode: u32, owner: u32, epoch: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_mode(mode);
    h.set_uid(owner.into());
    h.set_gid(owner.into());
    h.set_mtime(epoch);
    // Long paths go through the builder's GNU extension; names here are short.
    let _ = h.set_path(path);
    h
}

/// A tar of `entries` with every parent directory present, sorted by path.
pub fn layer(entries: &[Entry], epoch: u64) -> Result<Vec<u8>> {
    let mut all: BTreeMap<String, Entry> = BTreeMap::new();
    for e in entries {
        let mut parent = Path::new(&e.path).parent().map(Path::to_path_buf);
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            let name = p.to_string_lossy().into_owned();
            all.entry(name.clone())
                .or_insert_with(|| Entry::dir(&name, 0o755, 0));
            parent = p.parent().map(Path::to_path_buf);
        }
        if all
            .insert(e.path.clone(), e.clone())
            .is_some_and(|old| old.body != Body::Dir)
        {
            bail!("image: {} is listed twice", e.path);
        }
    }
    let mut out = tar::Builder::new(Vec::new());
    for e in all.values() {
        let mut h = header(&e.path, e.mode, e.owner, epoch);
        match &e.body {
            Body::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_path(format!("{}/", e.path))?;
                h.set_size(0);
                h.set_cksum();
                out.append(&h, std::io::empty())?;
            }
            Body::File(bytes) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(bytes.len() as u64);
                h.set_cksum();
                out.append_data(&mut h, &e.path, bytes.as_slice())?;
            }
            Body::Symlink(target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                out.append_link(&mut h, &e.path, target)?;
            }
        }
    }
    Ok(out.into_inner()?)
}

fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    // No name and time 0 in the header: the bytes depend on the input only.
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::default());
    gz.write_all(bytes)?;
    Ok(gz.finish()?)
}

/// RFC 3339 UTC for a Unix time (days from the civil calendar, no time zones).
pub fn rfc3339(epoch: u64) -> String {
    let days = (epoch / 86_400) as i64;
    let secs = epoch % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Writes the OCI archive (an `oci-layout` tree as one tar) to `out`.
pub fn write(entries: &[Entry], spec: &Spec, out: &Path) -> Result<Written> {
    let tar = layer(entries, spec.epoch)?;
    let diff_id = sha256(&tar);
    let blob = gzip(&tar)?;
    let created = rfc3339(spec.epoch);
    let labels: Value = spec
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
        .collect::<serde_json::Map<_, _>>()
        .into();
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "created": created,
        "config": {
            "User": spec.user,
            "Env": ["PATH=/usr/bin:/bin"],
            "WorkingDir": "/",
            "Labels": labels,
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": created, "created_by": "cargo xtask dist"}],
    });
    let config = serde_json::to_vec(&config)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha256(&config),
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": sha256(&blob),
            "size": blob.len(),
        }],
        "annotations": labels,
    });
    let manifest = serde_json::to_vec(&manifest)?;
    let (name, tag) = spec
        .reference
        .split_once(':')
        .context("image reference needs a tag")?;
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": sha256(&manifest),
            "size": manifest.len(),
            "annotations": {
                // podman and skopeo read this one; containerd's `ctr import` and
                // docker the fully qualified one (what a bare `faultline:0.1.0`
                // in a pod spec resolves to).
                "org.opencontainers.image.ref.name": spec.reference,
                "io.containerd.image.name": format!("docker.io/library/{name}:{tag}"),
            },
        }],
    });
    let mut files = vec![
        Entry::file(
            "oci-layout",
            0o644,
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ),
        Entry::file("index.json", 0o644, serde_json::to_vec(&index)?),
        // Docker before 25 loads only its own archive format, whose `manifest.json`
        // points into the same blobs: one archive serves every runtime (as
        // BuildKit's docker exporter does).
        Entry::file(
            "manifest.json",
            0o644,
            docker_manifest(spec, &config, &blob)?,
        ),
    ];
    for blob in [&config, &manifest, &blob] {
        files.push(Entry::file(&blob_path(blob), 0o644, blob.to_vec()));
    }
    let archive = layer(&files, spec.epoch)?;
    std::fs::write(out, &archive).with_context(|| format!("cannot write {}", out.display()))?;
    Ok(Written {
        digest: sha256(&manifest),
        id: sha256(&config),
        bytes: archive.len() as u64,
    })
}

/// Where a blob lives in the archive (the OCI layout's content-addressed path).
fn blob_path(bytes: &[u8]) -> String {
    format!(
        "blobs/sha256/{}",
        sha256(bytes).trim_start_matches("sha256:")
    )
}

/// `docker load`'s index: the config, the layers and the tag, as blob paths.
fn docker_manifest(spec: &Spec, config: &[u8], layer: &[u8]) -> Result<Vec<u8>> {
    Ok(serde_json::to_vec(&json!([{
        "Config": blob_path(config),
        "RepoTags": [spec.reference],
        "Layers": [blob_path(layer)],
    }]))?)
}

/// A shared library a binary loads, as the dynamic loader finds it here.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Library {
    /// The path the loader asks for (`/lib/x86_64-linux-gnu/libc.so.6`).
    pub wanted: PathBuf,
    /// The file it is (`/usr/lib/x86_64-linux-gnu/libc.so.6`).
    pub file: PathBuf,
}

/// The libraries `binary` links, from `ldd` (the vDSO has no file and is left out).
pub fn libraries(binary: &Path) -> Result<Vec<Library>> {
    let out = std::process::Command::new("ldd").arg(binary).output()?;
    if !out.status.success() {
        bail!(
            "ldd {}: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut libs = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let line = line.trim();
        let path = match line.split_once(" => ") {
            Some((_, rest)) => rest.split(" (").next().unwrap_or(""),
            None => line.split(" (").next().unwrap_or(""),
        };
        if !path.starts_with('/') {
            continue;
        }
        let wanted = PathBuf::from(path);
        let file = std::fs::canonicalize(&wanted)
            .with_context(|| format!("{} links {}, which is missing", binary.display(), path))?;
        libs.push(Library { wanted, file });
    }
    Ok(libs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(epoch: u64) -> Spec {
        Spec {
            reference: "faultline:0.1.0".into(),
            user: "65532:65532".into(),
            labels: [(
                "org.opencontainers.image.version".to_string(),
                "0.1.0".to_string(),
            )]
            .into(),
            epoch,
        }
    }

    #[test]
    fn same_inputs_same_digest_and_the_epoch_is_in_it() {
        let dir = std::env::temp_dir().join(format!("fl-image-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let entries = vec![
            Entry::file("usr/bin/tool", 0o755, b"#!binary".to_vec()),
            Entry::symlink("lib", "usr/lib"),
            Entry::dir("var/lib/faultline", 0o750, 65532),
        ];
        let mut reversed = entries.clone();
        reversed.reverse();
        let a = write(&entries, &spec(1_700_000_000), &dir.join("a.tar")).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let b = write(&reversed, &spec(1_700_000_000), &dir.join("b.tar")).unwrap();
        assert_eq!(
            a, b,
            "the order of the inputs or the clock changed the image"
        );
        assert_eq!(
            std::fs::read(dir.join("a.tar")).unwrap(),
            std::fs::read(dir.join("b.tar")).unwrap()
        );
        let c = write(&entries, &spec(1_700_000_001), &dir.join("c.tar")).unwrap();
        assert_ne!(a.digest, c.digest, "SOURCE_DATE_EPOCH must reach the image");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn every_parent_directory_is_in_the_layer_once_and_sorted() {
        let tar = layer(
            &[
                Entry::file("usr/bin/b", 0o755, vec![1]),
                Entry::file("usr/bin/a", 0o755, vec![2]),
                Entry::dir("usr", 0o755, 0),
            ],
            0,
        )
        .unwrap();
        let mut archive = tar::Archive::new(tar.as_slice());
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["usr/", "usr/bin/", "usr/bin/a", "usr/bin/b"]);
    }

    #[test]
    fn a_path_listed_twice_is_refused() {
        let e = Entry::file("etc/passwd", 0o644, vec![]);
        let err = layer(&[e.clone(), e], 0).unwrap_err();
        assert!(
            err.to_string().contains("etc/passwd is listed twice"),
            "{err}"
        );
    }

    #[test]
    fn rfc3339_matches_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_796_554_925), "2026-12-06T11:02:05Z");
    }
}
