//! A lock file in the state directory: an exclusive flock held for as long as its
//! owner needs it, and the file removed by its owner when it lets go, so a clean exit
//! leaves none behind (one per network namespace used to stay after every agent).
//!
//! Removing a lock file is safe only with the check here: a lock is taken on the file
//! the path still names (the descriptor's inode is the path's), else the open is
//! retried. A process that opened the file before its holder removed it therefore
//! never believes it holds the lock on a file nobody else can see.
use std::{
    fs::{File, OpenOptions},
    os::{
        fd::AsRawFd,
        unix::fs::{MetadataExt, OpenOptionsExt},
    },
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

pub struct LockFile {
    path: PathBuf,
    file: File,
}

/// Whether to wait for a lock another process holds.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    Yes,
    No,
}

impl LockFile {
    /// The lock on `path` (created with `mode`), or None when another process holds
    /// it and `wait` is `No`.
    pub fn take(path: &Path, mode: u32, wait: Wait) -> Result<Option<Self>> {
        loop {
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .mode(mode)
                .open(path)
                .with_context(|| format!("opening {}", path.display()))?;
            let op = match wait {
                Wait::Yes => libc::LOCK_EX,
                Wait::No => libc::LOCK_EX | libc::LOCK_NB,
            };
            // SAFETY: flock(2) on a descriptor `file` owns.
            if unsafe { libc::flock(file.as_raw_fd(), op) } != 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                    return Ok(None);
                }
                return Err(e).with_context(|| format!("locking {}", path.display()));
            }
            let held = file.metadata()?.ino();
            match std::fs::metadata(path) {
                Ok(m) if m.ino() == held => {
                    return Ok(Some(Self {
                        path: path.to_owned(),
                        file,
                    }));
                }
                // Removed (or replaced) by its holder while this waited: try again.
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
            }
        }
    }

    pub fn file(&mut self) -> &mut File {
        &mut self.file
    }

    /// Removes the stale lock files `name` picks in `dir` (e.g. of network namespaces
    /// that are gone): each one nobody holds and `stale` calls stale.
    pub fn sweep(dir: &Path, stale: impl Fn(&str) -> bool) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.filter_map(Result::ok) {
            let name = e.file_name().to_string_lossy().into_owned();
            if stale(&name) {
                // Taken and dropped: removed while held, unless another holds it.
                let _ = Self::take(&e.path(), 0o600, Wait::No);
            }
        }
    }
}

impl Drop for LockFile {
    fn drop(&mut self) {
        // Removed while the lock is still held, so it is never another's file.
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_is_exclusive_and_its_file_goes_with_it() {
        let dir = std::env::temp_dir().join(format!("fl-lockfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.lock");
        let held = LockFile::take(&path, 0o600, Wait::No).unwrap().unwrap();
        // flock is per open file description: a second open in this process is
        // refused as another process's would be.
        assert!(LockFile::take(&path, 0o600, Wait::No).unwrap().is_none());
        drop(held);
        assert!(!path.exists());
        // A file nobody holds is swept; a held one is not.
        std::fs::write(dir.join("stale.lock"), "").unwrap();
        let kept = LockFile::take(&dir.join("live.lock"), 0o600, Wait::No)
            .unwrap()
            .unwrap();
        LockFile::sweep(&dir, |n| n.ends_with(".lock"));
        assert!(!dir.join("stale.lock").exists());
        assert!(dir.join("live.lock").exists());
        drop(kept);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
