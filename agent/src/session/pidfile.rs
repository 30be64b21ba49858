//! The daemon's pid file, locked for its whole life (one daemon per state directory),
//! and `faultline-agent stop`, which finds the daemon through it.
use std::{path::PathBuf, time::Duration};

use anyhow::{Context, Result};
use tokio::time::Instant;

use crate::{
    errors::UsageError,
    lockfile::{LockFile, Wait},
};

/// `<state dir>/agent.pid` while the daemon runs: how `faultline-agent stop` (a
/// Kubernetes preStop hook, an operator) finds it. The daemon holds an exclusive
/// lock on it for its whole life, so a second daemon on the same state directory is
/// refused before it touches anything; only the holder removes the file.
pub(super) struct PidFile {
    _lock: LockFile,
}

impl PidFile {
    pub(super) fn write(state_dir: &std::path::Path) -> Result<Self> {
        use std::io::{Seek, Write};
        let path = state_dir.join("agent.pid");
        std::fs::create_dir_all(state_dir)
            .with_context(|| format!("creating state directory {}", state_dir.display()))?;
        let Some(mut lock) = LockFile::take(&path, 0o644, Wait::No)? else {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            return Err(UsageError(format!(
                "another faultline-agent daemon (pid {}) runs with state directory {}; one \
                 daemon per state directory (stop it with `faultline-agent stop`)",
                holder.trim(),
                state_dir.display()
            ))
            .into());
        };
        let file = lock.file();
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{}", std::process::id()))
            .and_then(|()| file.sync_all())
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(Self { _lock: lock })
    }
}

/// `faultline-agent stop`: SIGTERM to the daemon of this state directory, then wait
/// until it has removed its effects and exited (at most `timeout`), then remove
/// whatever is still recorded, as `cleanup` does.
pub async fn stop(state_dir: PathBuf, cgroup_root: PathBuf, timeout: Duration) -> Result<()> {
    let path = state_dir.join("agent.pid");
    let pid = match std::fs::read_to_string(&path) {
        Ok(text) => Some(
            text.trim()
                .parse::<i32>()
                .map_err(|_| UsageError(format!("{}: not a process id", path.display())))?,
        ),
        Err(_) => None,
    };
    // Only a faultline-agent daemon: a stale file may name a recycled pid.
    let daemon = pid.filter(|p| {
        std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| {
            let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
            args.first()
                .is_some_and(|a| a.ends_with(b"faultline-agent"))
                && args.iter().any(|a| *a == &b"run"[..])
        })
    });
    match daemon {
        Some(p) => {
            // SAFETY: kill(2) with a pid checked just above.
            if unsafe { libc::kill(p, libc::SIGTERM) } != 0 {
                anyhow::bail!(
                    "cannot signal the agent (pid {p}): {}",
                    std::io::Error::last_os_error()
                );
            }
            let until = Instant::now() + timeout;
            // Gone, or a zombie its parent has yet to reap: either way it has exited.
            let running = |p: i32| {
                std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|s| {
                    s.rsplit_once(") ")
                        .is_some_and(|(_, rest)| !rest.starts_with('Z'))
                })
            };
            while running(p) {
                if Instant::now() >= until {
                    anyhow::bail!("the agent (pid {p}) did not exit within {timeout:?}");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            println!("faultline-agent: the agent (pid {p}) removed its effects and exited");
        }
        None => println!(
            "faultline-agent: no agent running for {}",
            state_dir.display()
        ),
    }
    crate::cleanup(state_dir, cgroup_root)
        .await
        .map(|removed| crate::print_cleanup(&removed))
}
