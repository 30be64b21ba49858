//! The software bill of materials (CycloneDX 1.5 JSON) of what `dist` ships: every
//! crate compiled into the three binaries and the eBPF object (normal dependencies
//! only, for x86_64 Linux, with the SHA-256 Cargo.lock pins), and, for the image,
//! each Debian package a shipped library comes from.
//!
//! The crate list is read from `cargo metadata`'s resolved graph, walked from the
//! shipped packages along normal dependency edges, so a build or dev dependency
//! (protox, the test harness) is not listed as shipped.
use std::{
    collections::{BTreeMap, BTreeSet},
    process::Command,
};

use anyhow::{Context, Result};
use serde_json::{Value, json};

/// A crate compiled into a shipped binary.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Crate {
    pub name: String,
    pub version: String,
    pub license: String,
    /// The crates.io checksum Cargo.lock pins (none for the workspace's own crates).
    pub sha256: Option<String>,
}

/// A Debian package a shipped file comes from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct DebPackage {
    pub name: String,
    pub version: String,
}

/// The crates in `roots` and everything they depend on normally.
pub fn crates(roots: &[&str]) -> Result<Vec<Crate>> {
    let out = crate::cargo()
        .args(["metadata", "--format-version", "1", "--locked"])
        .args(["--filter-platform", "x86_64-unknown-linux-gnu"])
        .current_dir(crate::workspace_root())
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout)?;
    let packages: BTreeMap<&str, &Value> = meta["packages"]
        .as_array()
        .context("metadata has no packages")?
        .iter()
        .filter_map(|p| Some((p["id"].as_str()?, p)))
        .collect();
    let nodes: BTreeMap<&str, &Value> = meta["resolve"]["nodes"]
        .as_array()
        .context("metadata has no resolve graph")?
        .iter()
        .filter_map(|n| Some((n["id"].as_str()?, n)))
        .collect();
    let mut todo: Vec<&str> = packages
        .iter()
        .filter(|(_, p)| roots.contains(&p["name"].as_str().unwrap_or("")))
        .map(|(id, _)| *id)
        .collect();
    anyhow::ensure!(
        todo.len() == roots.len(),
        "not every one of {roots:?} is in the workspace"
    );
    let mut seen = BTreeSet::new();
    while let Some(id) = todo.pop() {
        if !seen.insert(id) {
            continue;
        }
        for dep in nodes[id]["deps"].as_array().into_iter().flatten() {
            let normal = dep["dep_kinds"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|k| k["kind"].is_null());
            if normal && let Some(d) = dep["pkg"].as_str() {
                todo.push(d);
            }
        }
    }
    let pins = lock_checksums()?;
    let mut list: Vec<Crate> = seen
        .into_iter()
        .map(|id| {
            let p = packages[id];
            let name = p["name"].as_str().unwrap_or_default().to_string();
            let version = p["version"].as_str().unwrap_or_default().to_string();
            Crate {
                license: p["license"].as_str().unwrap_or("NOASSERTION").to_string(),
                sha256: pins.get(&(name.clone(), version.clone())).cloned(),
                name,
                version,
            }
        })
        .collect();
    list.sort();
    Ok(list)
}

/// (name, version) → checksum, from Cargo.lock.
fn lock_checksums() -> Result<BTreeMap<(String, String), String>> {
    let lock = std::fs::read_to_string(crate::workspace_root().join("Cargo.lock"))?;
    let mut pins = BTreeMap::new();
    for block in lock.split("[[package]]") {
        let field = |key: &str| {
            block.lines().find_map(|l| {
                l.strip_prefix(key)
                    .and_then(|v| v.trim().strip_prefix("= "))
                    .map(|v| v.trim_matches('"').to_string())
            })
        };
        if let (Some(n), Some(v), Some(c)) = (field("name "), field("version "), field("checksum "))
        {
            pins.insert((n, v), c);
        }
    }
    Ok(pins)
}

/// The Debian package that owns `path` and its installed version.
pub fn deb_owner(path: &std::path::Path) -> Result<DebPackage> {
    let out = Command::new("dpkg").arg("-S").arg(path).output()?;
    anyhow::ensure!(
        out.status.success(),
        "no Debian package owns {}",
        path.display()
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let name = text
        .split(':')
        .next()
        .context("dpkg -S printed nothing")?
        .trim()
        .to_string();
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Version}"])
        .arg(&name)
        .output()?;
    Ok(DebPackage {
        version: String::from_utf8_lossy(&out.stdout).trim().to_string(),
        name,
    })
}

/// The CycloneDX document for `subject` (the image or the packages).
pub fn document(
    subject: &str,
    version: &str,
    epoch: u64,
    crates: &[Crate],
    debs: &[DebPackage],
) -> Value {
    let mut components: Vec<Value> = crates
        .iter()
        .map(|c| {
            let mut v = json!({
                "type": "library",
                "bom-ref": format!("pkg:cargo/{}@{}", c.name, c.version),
                "name": c.name,
                "version": c.version,
                "purl": format!("pkg:cargo/{}@{}", c.name, c.version),
                "licenses": [{"expression": c.license}],
            });
            if let Some(sum) = &c.sha256 {
                v["hashes"] = json!([{"alg": "SHA-256", "content": sum}]);
            }
            v
        })
        .collect();
    components.extend(debs.iter().map(|d| {
        let purl = format!("pkg:deb/debian/{}@{}?arch=amd64", d.name, d.version);
        json!({
            "type": "library",
            "bom-ref": purl,
            "name": d.name,
            "version": d.version,
            "purl": purl,
        })
    }));
    json!({
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "version": 1,
        "metadata": {
            "timestamp": crate::image::rfc3339(epoch),
            "tools": {"components": [{"type": "application", "name": "cargo xtask dist"}]},
            "component": {
                "type": "application",
                "bom-ref": subject,
                "name": subject,
                "version": version,
                "licenses": [{"expression": "Apache-2.0"}],
            },
        },
        "components": components,
    })
}
