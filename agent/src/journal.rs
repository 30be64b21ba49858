//! What the agent changed in the kernel that would outlive it, written *before* the
//! change, so that the next start (after a crash or SIGKILL) can undo it.
//!
//! TCX and XDP links (and TAP devices) are owned by file descriptors and vanish with
//! the process; clsact filters (and a clsact qdisc the agent created), replaced root
//! qdiscs and IFB devices do not. One journal and one
//! lock exist per network namespace: only one agent may manage a namespace at a
//! time, otherwise a starting agent would remove a running agent's faults.
use std::{
    fs::{self, File},
    io::Write,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::{
    ebpf::Dir,
    errors::UsageError,
    lockfile::{LockFile, Wait},
};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Journal {
    pub entries: Vec<Entry>,
    /// Root qdiscs replaced for EDT latency, with what to put back.
    #[serde(default)]
    pub qdiscs: Vec<QdiscEntry>,
    /// IFB devices the agent created (deleted on cleanup).
    #[serde(default)]
    pub ifbs: Vec<String>,
}

impl Journal {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.qdiscs.is_empty() && self.ifbs.is_empty()
    }
}

/// A root qdisc the agent replaced (intended or done).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QdiscEntry {
    pub iface: String,
    pub original: crate::qdisc::RootSnapshot,
}

/// One clsact attachment (intended or made).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub iface: String,
    pub direction: Dir,
    /// Program (and netlink filter) name; how our filters are told from others'.
    pub program: String,
    /// The agent added the clsact qdisc and must remove it when it is empty again.
    pub created_clsact: bool,
}

/// The locked journal of this network namespace.
pub struct JournalFile {
    path: PathBuf,
    _lock: LockFile,
}

impl JournalFile {
    /// Takes the namespace's lock (refusing if another agent holds it). Lock files of
    /// namespaces whose journal is empty and that nobody holds are removed on the way
    /// (a killed agent's; namespace inode numbers are reused).
    pub fn open(state_dir: &Path) -> Result<Self> {
        fs::create_dir_all(state_dir)
            .with_context(|| format!("creating state directory {}", state_dir.display()))?;
        let netns = fs::metadata("/proc/self/ns/net")
            .context("reading /proc/self/ns/net")?
            .ino();
        LockFile::sweep(state_dir, |name| {
            name.strip_prefix("netns-")
                .and_then(|n| n.strip_suffix(".lock"))
                .is_some_and(|ino| {
                    ino != netns.to_string()
                        && !state_dir.join(format!("netns-{ino}.journal.json")).exists()
                })
        });
        let lock_path = state_dir.join(format!("netns-{netns}.lock"));
        let lock = LockFile::take(&lock_path, 0o600, Wait::No)?.ok_or_else(|| {
            UsageError(format!(
                "another faultline-agent is managing this network namespace (lock {} is held)",
                lock_path.display()
            ))
        })?;
        Ok(Self {
            path: state_dir.join(format!("netns-{netns}.journal.json")),
            _lock: lock,
        })
    }

    pub fn load(&self) -> Result<Journal> {
        match fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("parsing journal {}", self.path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Journal::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", self.path.display())),
        }
    }

    /// Durably replaces the journal (write, fsync, rename).
    pub fn store(&self, journal: &Journal) -> Result<()> {
        if journal.is_empty() {
            return match fs::remove_file(&self.path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
                _ => Ok(()),
            };
        }
        let tmp = self.path.with_extension("tmp");
        let mut f = File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(journal)?)?;
        f.sync_all()?;
        fs::rename(&tmp, &self.path)
            .with_context(|| format!("writing journal {}", self.path.display()))?;
        Ok(())
    }
}
