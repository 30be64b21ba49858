//! The fence group's warden (`faultline-agent __warden DIR...`): a process outside the
//! group that removes it when the process that made it ended without doing so
//! (SIGKILL, a crash), so no empty group with its quota stays behind until the next
//! start. It waits on a pipe the stress holds open: the kernel closes it however the
//! stress ends. On a clean end the stress removes the group itself first, and the
//! warden finds nothing left to do. The stressors die with the stress (their parent
//! death signal); the warden waits for them to leave the group, then removes it.
use std::{
    io::Read,
    os::unix::process::CommandExt,
    path::PathBuf,
    process::{Child, Command, Stdio},
};

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::cgroup::{Group, PREFIX};

#[derive(Args, Clone, Debug)]
pub struct WardenArgs {
    /// The group's directories (one per hierarchy on cgroup v1).
    #[arg(required = true)]
    pub dirs: Vec<PathBuf>,
}

/// Starts the warden of `group`; it holds until the returned child's stdin closes.
pub fn spawn(group: &Group) -> Result<Child> {
    let exe = std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into());
    let mut cmd = Command::new(exe);
    cmd.arg("__warden")
        .args(&group.dirs)
        .stdin(Stdio::piped())
        .stdout(Stdio::null());
    // SAFETY: setsid is async-signal-safe; a new session keeps the warden out of the
    // agent's process group (a Ctrl-C to the agent must not kill it first).
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    cmd.spawn().context("starting the stress group's warden")
}

pub fn warden(a: &WardenArgs) -> Result<()> {
    // Only the stress groups faultline makes, whatever the arguments say.
    for d in &a.dirs {
        let name = d.file_name().unwrap_or_default().to_string_lossy();
        if !name.starts_with(PREFIX) {
            bail!("{} is not a faultline stress group", d.display());
        }
    }
    let mut stdin = std::io::stdin().lock();
    let mut buf = [0u8; 64];
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let left: Vec<PathBuf> = a.dirs.iter().filter(|d| d.is_dir()).cloned().collect();
    if left.is_empty() {
        return Ok(()); // removed by the stress itself
    }
    Group { dirs: left }.remove()
}
