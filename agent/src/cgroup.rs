//! The cgroups the agent creates to fence its stressors, on cgroup v1 or v2 behind
//! one small trait.
//!
//! Every group lives under a `faultline` parent at the root of each hierarchy (or
//! under an operator-named target cgroup) and is named `stress-<kind>-<agent pid>`,
//! so a later agent can tell a leftover (owner dead) from a group in use by another
//! running agent.
use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    errors::UsageError,
    node::{KernelFile, keyed_in},
};

const PARENT: &str = "faultline";
pub const PREFIX: &str = "stress-";
/// The CFS bandwidth period of a CPU stress group: the quota is the exact share per
/// period, a hard ceiling the paced burners stay under. The longest period the kernel
/// takes (1 s), because each time the ceiling clips a run it does so at a timer tick,
/// which tick-sampled accounting (`/proc/stat`) charges in full: at the default
/// 100 ms period that biased /proc/stat by -1 to +2.3 points of a 5 % share,
/// depending on the period timer's phase against the tick; once a second it is
/// within the sampling noise, and the group's burst (`faults::cpu::burst_us`) makes
/// even those clips rare.
pub const CPU_PERIOD_US: u64 = 1_000_000;

/// One hierarchy flavour: where groups go and how limits are written.
pub trait CgroupFs: Send + Sync {
    fn version(&self) -> u8;
    /// Directories (one per hierarchy involved) that hold faultline groups.
    fn parents(&self) -> Vec<PathBuf>;
    /// Creates the group's directories under `parents()`.
    fn create(&self, name: &str) -> Result<Group>;
    /// The CPU quota per `CPU_PERIOD_US`, and the burst: how much quota left unused
    /// in earlier periods a period may spend on top (skipped on kernels before 5.14,
    /// which have no burst).
    fn set_cpu_quota(&self, group: &Group, quota_us: u64, burst_us: u64) -> Result<()>;
    fn set_memory_max(&self, group: &Group, bytes: u64) -> Result<()>;
    /// Where the group's CPU time and memory in use are read.
    fn usage(&self, group: &Group) -> Usage;
    /// How many processes the memory fence OOM-killed.
    fn oom_kills(&self, group: &Group) -> Result<u64>;
}

/// One usage counter of a group: the number a file holds, or the number after a
/// key in it, in the file's unit divided by `per`.
#[derive(Clone, Debug)]
pub struct Counter {
    path: PathBuf,
    key: Option<&'static str>,
    per: u64,
}

impl Counter {
    fn number(path: PathBuf, per: u64) -> Self {
        Self {
            path,
            key: None,
            per,
        }
    }

    fn keyed(path: PathBuf, key: &'static str) -> Self {
        Self {
            path,
            key: Some(key),
            per: 1,
        }
    }

    fn open(self) -> Result<(Counter, KernelFile)> {
        let file = KernelFile::open(&self.path)?;
        Ok((self, file))
    }

    fn read(&self, file: &mut KernelFile) -> Result<u64> {
        let n = match self.key {
            Some(key) => file.keyed(key)?,
            None => file.number()?,
        };
        Ok(n / self.per)
    }
}

/// Where a group's usage is read: CPU time in microseconds, memory in bytes.
#[derive(Clone, Debug)]
pub struct Usage {
    pub cpu_us: Counter,
    pub memory: Counter,
}

/// A group's usage files, open for as long as its readings are taken (see
/// `crate::node` for why they are not opened per reading).
pub struct GroupCounters {
    cpu_us: (Counter, KernelFile),
    memory: (Counter, KernelFile),
}

impl GroupCounters {
    pub fn open(usage: Usage) -> Result<Self> {
        Ok(Self {
            cpu_us: usage.cpu_us.open()?,
            memory: usage.memory.open()?,
        })
    }

    /// CPU time the group has used, in microseconds.
    pub fn cpu_us(&mut self) -> Result<u64> {
        let (c, f) = &mut self.cpu_us;
        c.read(f)
    }

    /// Memory the group holds, in bytes.
    pub fn memory(&mut self) -> Result<u64> {
        let (c, f) = &mut self.memory;
        c.read(f)
    }
}

/// A group the agent created: one directory per hierarchy (v1) or one (v2).
#[derive(Clone, Debug)]
pub struct Group {
    pub dirs: Vec<PathBuf>,
}

pub fn read_u64(path: &Path) -> Result<u64> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.trim()
        .parse()
        .with_context(|| format!("{} is not a number", path.display()))
}

fn write(path: &Path, value: &str) -> Result<()> {
    fs::write(path, value)
        .map_err(|e| denied(e, format!("writing '{value}' to {}", path.display())))
}

/// An I/O error with what was attempted, and the missing capability if that is why.
pub fn denied(err: std::io::Error, what: String) -> anyhow::Error {
    match crate::preflight::cgroup_denied_hint(&err) {
        Some(hint) => anyhow::anyhow!("{what}: {err}: {hint}"),
        None => anyhow::Error::new(err).context(what),
    }
}

/// `write` where the kernel has the file; a kernel without it lacks the feature.
fn write_if_present(path: &Path, value: &str) -> Result<()> {
    match path.exists() {
        true => write(path, value),
        false => Ok(()),
    }
}

/// The number after `key` (which includes its separator) in a flat keyed file such
/// as memory.stat or cpu.stat.
pub fn keyed(path: &Path, key: &str) -> Result<u64> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    keyed_in(&text, key).with_context(|| format!("no {key} in {}", path.display()))
}

impl Group {
    /// `cgroup.procs` of each directory: writing "0" there moves the writer itself,
    /// which a child does between fork and exec (no allocation needed).
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    pub fn pids(&self) -> Vec<i32> {
        let mut pids: Vec<i32> = self
            .dirs
            .iter()
            .filter_map(|d| fs::read_to_string(d.join("cgroup.procs")).ok())
            .flat_map(|t| {
                t.lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect::<Vec<_>>()
            })
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Kills whatever still runs in the group, waits for it to leave, and removes the
    /// directories.
    pub fn remove(&self) -> Result<()> {
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            let pids = self.pids();
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                // SAFETY: kill(2) on a pid read from our own cgroup.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            if Instant::now() > until {
                bail!("processes in {:?} did not exit after SIGKILL", self.dirs);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for dir in &self.dirs {
            match fs::remove_dir(dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("removing {}", dir.display()));
                }
                _ => {}
            }
            // The shared `faultline` parent goes too once no agent uses it; another
            // agent's group keeps it (ENOTEMPTY/EBUSY), which is fine.
            if let Some(parent) = dir.parent() {
                let _ = fs::remove_dir(parent);
            }
        }
        Ok(())
    }
}

pub struct V1 {
    cpu: PathBuf,
    memory: PathBuf,
    /// cpuacct, where it is mounted apart from cpu (usage is counted there).
    cpuacct: Option<PathBuf>,
}

pub struct V2 {
    /// The hierarchy's root and the directories from it down to the `faultline`
    /// parent's own parent (the root, then each level of a target cgroup).
    ancestors: Vec<PathBuf>,
    parent: PathBuf,
}

/// The controllers a stress group needs from its parent.
const CONTROLLERS: [&str; 2] = ["cpu", "memory"];

/// `cgroup.subtree_control`'s value that enables `controllers` for the children.
fn enabling(controllers: &[&str]) -> String {
    controllers
        .iter()
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Makes `cpu` and `memory` available to children at every level from the root
/// down (v2 hands a controller to a cgroup only when its parent enables it in
/// `cgroup.subtree_control`). Nobody else may have done so: systemd enables a
/// controller at the root only while some unit asks for its accounting, and a host
/// without an init that manages cgroups enables none. A level that already has
/// both is left untouched; enabling never disturbs processes already there (the
/// root may hold processes; a non-root level that does is refused by the kernel
/// with EBUSY, named below).
fn enable_controllers(ancestors: &[PathBuf]) -> Result<()> {
    for dir in ancestors {
        let file = dir.join("cgroup.subtree_control");
        let enabled =
            fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
        let missing: Vec<&str> = CONTROLLERS
            .into_iter()
            .filter(|c| !enabled.split_whitespace().any(|e| e == *c))
            .collect();
        if missing.is_empty() {
            continue;
        }
        let value = enabling(&missing);
        fs::write(&file, &value).map_err(|e| {
            let why = match e.raw_os_error() {
                Some(libc::EBUSY) => {
                    ": the cgroup holds processes itself, so v2 lets no controller reach \
                     its children (name a target cgroup whose processes live in children)"
                }
                _ => "",
            };
            denied(
                e,
                format!(
                    "enabling the cpu and memory controllers for faultline's groups: writing \
                     '{value}' to {}{why}",
                    file.display()
                ),
            )
        })?;
    }
    Ok(())
}

fn ensure_dir(dir: &Path) -> Result<()> {
    match fs::create_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
            Err(denied(e, format!("creating {}", dir.display())))
        }
        _ => Ok(()),
    }
}

/// `parent/name`, made with its parent (and `prepare` run on the parent). A group's
/// removal takes the shared parent away once it is empty (`Group::remove`), which
/// can happen between the two mkdirs when another group goes at that moment: then
/// the parent is made again, a few times at most.
fn ensure_child(
    parent: &Path,
    name: &str,
    prepare: impl Fn(&Path) -> std::io::Result<()>,
) -> Result<PathBuf> {
    let dir = parent.join(name);
    for _ in 0..5 {
        ensure_dir(parent)?;
        match prepare(parent) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                let what = format!("enabling controllers in {}", parent.display());
                return Err(denied(e, what));
            }
            Ok(()) => {}
        }
        match fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(denied(e, format!("creating {}", dir.display()))),
        }
    }
    bail!(
        "creating {}: its parent was removed each time it was made",
        dir.display()
    )
}

impl CgroupFs for V1 {
    fn version(&self) -> u8 {
        1
    }
    fn parents(&self) -> Vec<PathBuf> {
        let mut p = vec![self.cpu.clone(), self.memory.clone()];
        p.extend(self.cpuacct.clone());
        p
    }
    fn create(&self, name: &str) -> Result<Group> {
        let mut dirs = Vec::new();
        for parent in self.parents() {
            dirs.push(ensure_child(&parent, name, |_| Ok(()))?);
        }
        Ok(Group { dirs })
    }
    fn set_cpu_quota(&self, g: &Group, quota_us: u64, burst_us: u64) -> Result<()> {
        write(
            &g.dirs[0].join("cpu.cfs_period_us"),
            &CPU_PERIOD_US.to_string(),
        )?;
        // The burst may not exceed the quota, so it goes in after it.
        write(&g.dirs[0].join("cpu.cfs_quota_us"), &quota_us.to_string())?;
        write_if_present(&g.dirs[0].join("cpu.cfs_burst_us"), &burst_us.to_string())
    }
    fn set_memory_max(&self, g: &Group, bytes: u64) -> Result<()> {
        write(&g.dirs[1].join("memory.limit_in_bytes"), &bytes.to_string())
    }
    fn usage(&self, g: &Group) -> Usage {
        // v1 counts usage in cpuacct: co-mounted with cpu, or its own hierarchy.
        let dir = if self.cpuacct.is_some() {
            &g.dirs[2]
        } else {
            &g.dirs[0]
        };
        Usage {
            cpu_us: Counter::number(dir.join("cpuacct.usage"), 1000),
            memory: Counter::number(g.dirs[1].join("memory.usage_in_bytes"), 1),
        }
    }
    fn oom_kills(&self, g: &Group) -> Result<u64> {
        keyed(&g.dirs[1].join("memory.oom_control"), "oom_kill ")
    }
}

impl CgroupFs for V2 {
    fn version(&self) -> u8 {
        2
    }
    fn parents(&self) -> Vec<PathBuf> {
        vec![self.parent.clone()]
    }
    fn create(&self, name: &str) -> Result<Group> {
        // Children of the parent get the cpu and memory controllers; the parent
        // itself never holds processes, as v2 requires.
        enable_controllers(&self.ancestors)?;
        let dir = ensure_child(&self.parent, name, |parent| {
            fs::write(
                parent.join("cgroup.subtree_control"),
                enabling(&CONTROLLERS),
            )
        })?;
        Ok(Group { dirs: vec![dir] })
    }
    fn set_cpu_quota(&self, g: &Group, quota_us: u64, burst_us: u64) -> Result<()> {
        write(
            &g.dirs[0].join("cpu.max"),
            &format!("{quota_us} {CPU_PERIOD_US}"),
        )?;
        write_if_present(&g.dirs[0].join("cpu.max.burst"), &burst_us.to_string())
    }
    fn set_memory_max(&self, g: &Group, bytes: u64) -> Result<()> {
        write(&g.dirs[0].join("memory.max"), &bytes.to_string())
    }
    fn usage(&self, g: &Group) -> Usage {
        Usage {
            cpu_us: Counter::keyed(g.dirs[0].join("cpu.stat"), "usage_usec "),
            memory: Counter::number(g.dirs[0].join("memory.current"), 1),
        }
    }
    fn oom_kills(&self, g: &Group) -> Result<u64> {
        keyed(&g.dirs[0].join("memory.events"), "oom_kill ")
    }
}

/// A `--target-cgroup` must stay inside the cgroup filesystem.
/// (An empty path is the root itself: no target.)
pub fn check_relative(rel: &Path) -> Result<(), UsageError> {
    if rel.as_os_str().is_empty() {
        return Ok(());
    }
    faultline_proto::filter::check_cgroup_path(&rel.to_string_lossy())
        .map_err(|e| UsageError(format!("--target-cgroup {e}")))
}

/// Finds the cgroup hierarchy of this host. `under` places faultline's groups below
/// a target cgroup (a path relative to the hierarchy root, e.g.
/// `system.slice/app.service`) so stressors compete inside its limits.
pub fn detect(root: &Path, under: Option<&Path>) -> Result<Box<dyn CgroupFs>> {
    let rel = under.unwrap_or(Path::new(""));
    check_relative(rel)?;
    let unified = root.join("cgroup.controllers");
    if let Ok(controllers) = fs::read_to_string(&unified) {
        let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
        if !has("cpu") || !has("memory") {
            bail!(UsageError(format!(
                "cgroup v2 at {} lacks the cpu or memory controller",
                root.display()
            )));
        }
        let base = root.join(rel);
        check_target(&base, under)?;
        let mut ancestors = vec![root.to_path_buf()];
        let mut level = root.to_path_buf();
        for part in rel.components() {
            level.push(part);
            ancestors.push(level.clone());
        }
        return Ok(Box::new(V2 {
            ancestors,
            parent: base.join(PARENT),
        }));
    }
    let (cpu, memory) = (root.join("cpu"), root.join("memory"));
    if cpu.join("cpu.cfs_quota_us").exists() && memory.join("memory.limit_in_bytes").exists() {
        check_target(&cpu.join(rel), under)?;
        check_target(&memory.join(rel), under)?;
        let cpuacct = root.join("cpuacct");
        let separate_acct =
            !cpu.join("cpuacct.usage").exists() && cpuacct.join("cpuacct.usage").exists();
        return Ok(Box::new(V1 {
            cpu: cpu.join(rel).join(PARENT),
            memory: memory.join(rel).join(PARENT),
            cpuacct: separate_acct.then(|| cpuacct.join(rel).join(PARENT)),
        }));
    }
    bail!(UsageError(format!(
        "no usable cgroup hierarchy at {} (need v2 with cpu+memory, or v1 cpu and memory)",
        root.display()
    )))
}

fn check_target(dir: &Path, under: Option<&Path>) -> Result<()> {
    if under.is_some() && !dir.is_dir() {
        bail!(UsageError(format!(
            "target cgroup {} does not exist",
            dir.display()
        )));
    }
    Ok(())
}

/// The name of a group this agent owns for `kind`.
pub fn group_name(kind: &str) -> String {
    format!("{PREFIX}{kind}-{}", std::process::id())
}

/// True when `pid` is another running faultline-agent (not this one).
pub fn agent_alive(pid: i32) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    pid != std::process::id() as i32
        && String::from_utf8_lossy(&cmdline).contains("faultline-agent")
}

fn owner_alive(name: &str) -> bool {
    name.rsplit('-')
        .next()
        .and_then(|p| p.parse::<i32>().ok())
        .is_some_and(agent_alive)
}

/// Removes groups left by agents that are gone (their owner pid is dead or is no
/// longer an agent), killing anything still inside. Returns what was removed.
pub fn reconcile(fs_: &dyn CgroupFs) -> Result<Vec<String>> {
    let mut names: Vec<String> = Vec::new();
    for parent in fs_.parents() {
        let Ok(entries) = fs::read_dir(&parent) else {
            continue;
        };
        for e in entries.filter_map(Result::ok) {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(PREFIX) && e.path().is_dir() && !names.contains(&name) {
                names.push(name);
            }
        }
    }
    let mut removed = Vec::new();
    for name in names {
        if owner_alive(&name) {
            continue;
        }
        let group = Group {
            dirs: fs_
                .parents()
                .into_iter()
                .map(|p| p.join(&name))
                .filter(|d| d.is_dir())
                .collect(),
        };
        group.remove()?;
        removed.push(format!(
            "removed leftover cgroup {name} (v{})",
            fs_.version()
        ));
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_target_is_the_root_and_a_target_stays_below_it() {
        check_relative(Path::new("")).unwrap();
        check_relative(Path::new("system.slice/app.service")).unwrap();
        for bad in ["/sys/fs/cgroup/x", "a/../../etc"] {
            let e = check_relative(Path::new(bad)).unwrap_err().0;
            assert!(e.starts_with("--target-cgroup "), "{e}");
        }
    }

    /// Only the controllers a level lacks are written, and a level with both is
    /// not written at all (a write is a change to a cgroup someone else manages).
    #[test]
    fn controllers_are_enabled_where_missing_and_nowhere_else() {
        let tmp = std::env::temp_dir().join(format!("fl-controllers-{}", std::process::id()));
        let levels: Vec<PathBuf> = ["", "a", "a/b"].iter().map(|l| tmp.join(l)).collect();
        for (dir, enabled) in levels.iter().zip(["cpu io", "cpu memory pids", ""]) {
            fs::create_dir_all(dir).unwrap();
            fs::write(dir.join("cgroup.subtree_control"), enabled).unwrap();
        }
        enable_controllers(&levels).unwrap();
        let now: Vec<String> = levels
            .iter()
            .map(|d| fs::read_to_string(d.join("cgroup.subtree_control")).unwrap())
            .collect();
        assert_eq!(now, ["+memory", "cpu memory pids", "+cpu +memory"]);
        let e = enable_controllers(&[tmp.join("absent")]).unwrap_err();
        fs::remove_dir_all(&tmp).unwrap();
        assert!(
            format!("{e:#}").contains("absent/cgroup.subtree_control"),
            "{e:#}"
        );
    }
}
