//! Limits the agent changes on *other* software's cgroups (GC pressure squeezes a
//! workload's memory.high). The original value is journalled before the change and
//! restored byte for byte afterwards; if the agent dies in between, the next start
//! or `cleanup` restores it.
//!
//! One journal per host (cgroups are host-wide), shared by all agents under a file
//! lock; each entry names the agent pid that made the change, so a starting agent
//! restores only changes whose agent is gone.
use std::{
    fs::{self, File},
    io::Write,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::lockfile::{LockFile, Wait};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub file: PathBuf,
    /// The file's content before the change, exactly as read.
    pub original: String,
    pub agent_pid: u32,
}

pub struct TargetJournal {
    path: PathBuf,
    lock_path: PathBuf,
}

impl TargetJournal {
    pub fn new(state_dir: &Path) -> Result<Self> {
        fs::create_dir_all(state_dir)
            .with_context(|| format!("creating {}", state_dir.display()))?;
        Ok(Self {
            path: state_dir.join("targets.json"),
            lock_path: state_dir.join("targets.lock"),
        })
    }

    /// Held briefly around each read-modify-write; the file goes with it.
    fn lock(&self) -> Result<LockFile> {
        LockFile::take(&self.lock_path, 0o600, Wait::Yes)?
            .ok_or_else(|| anyhow::anyhow!("{} stayed locked", self.lock_path.display()))
    }

    fn load(&self) -> Result<Vec<Change>> {
        match fs::read(&self.path) {
            Ok(b) => serde_json::from_slice(&b)
                .with_context(|| format!("parsing {}", self.path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
    }

    fn store(&self, changes: &[Change]) -> Result<()> {
        if changes.is_empty() {
            return match fs::remove_file(&self.path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
                _ => Ok(()),
            };
        }
        let tmp = self.path.with_extension("tmp");
        let mut f = File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(changes)?)?;
        f.sync_all()?;
        fs::rename(&tmp, &self.path)?;
        Ok(())
    }

    /// Writes `value` to `file`, journalling the original first. Refuses a file that
    /// another live agent has changed and not yet restored.
    pub fn change(&self, file: &Path, value: &str) -> Result<Change> {
        let _l = self.lock()?;
        let mut changes = self.load()?;
        if let Some(c) = changes.iter().find(|c| c.file == file) {
            anyhow::bail!(crate::errors::UsageError(format!(
                "{} is already changed by faultline-agent pid {} and not yet restored",
                file.display(),
                c.agent_pid
            )));
        }
        let original =
            fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let change = Change {
            file: file.to_owned(),
            original,
            agent_pid: std::process::id(),
        };
        changes.push(change.clone());
        self.store(&changes)?;
        if let Err(e) = fs::write(file, value) {
            changes.pop();
            self.store(&changes)?;
            let what = format!("writing '{value}' to {}", file.display());
            return Err(crate::cgroup::denied(e, what));
        }
        Ok(change)
    }

    /// Restores one change and drops it from the journal.
    pub fn restore(&self, change: &Change) -> Result<()> {
        let _l = self.lock()?;
        write_original(change)?;
        let mut changes = self.load()?;
        changes.retain(|c| c.file != change.file);
        self.store(&changes)
    }

    /// True while `file` has a journalled change.
    pub fn has(&self, file: &Path) -> Result<bool> {
        let _l = self.lock()?;
        Ok(self.load()?.iter().any(|c| c.file == file))
    }

    /// The deadline's restore: if `file` is still journalled, put its original back
    /// and drop the entry. Returns whether it did.
    pub fn restore_at_deadline(&self, file: &Path) -> Result<bool> {
        let _l = self.lock()?;
        let mut changes = self.load()?;
        let Some(c) = changes.iter().find(|c| c.file == file).cloned() else {
            return Ok(false);
        };
        write_original(&c)?;
        changes.retain(|x| x.file != file);
        self.store(&changes)?;
        Ok(true)
    }

    /// Restores every change whose agent is gone. Returns what was restored.
    pub fn reconcile(&self) -> Result<Vec<String>> {
        let _l = self.lock()?;
        let changes = self.load()?;
        let mut kept = Vec::new();
        let mut restored = Vec::new();
        for c in changes {
            if crate::cgroup::agent_alive(c.agent_pid as i32) {
                kept.push(c);
                continue;
            }
            if c.file.exists() {
                write_original(&c)?;
                restored.push(format!(
                    "restored {} to its original value {}",
                    c.file.display(),
                    c.original.trim()
                ));
            }
        }
        self.store(&kept)?;
        Ok(restored)
    }
}

/// Cgroup control files take one value per write; the journal holds what was read,
/// which for memory.high is e.g. "max\n" or "123456\n".
fn write_original(c: &Change) -> Result<()> {
    fs::write(&c.file, c.original.trim())
        .with_context(|| format!("restoring {} to {}", c.file.display(), c.original.trim()))
}
