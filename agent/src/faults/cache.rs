//! Cache invalidation: evict the page cache of given files (precise, per
//! application: `posix_fadvise(DONTNEED)` on every file under the paths) and/or of a
//! workload cgroup (cgroup v2 `memory.reclaim` of its file pages), then watch the
//! cache rebuild. Residency is measured exactly with `mincore()`, so the report
//! gives before / after / rebuilt for recovery tracking.
//!
//! cgroup v1 has no per-cgroup reclaim knob that spares a workload's anonymous
//! memory (`memory.force_empty` takes everything), so on v1 eviction is by path only.
use std::{
    fs::File,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use clap::Args;
use serde_json::json;

use crate::{errors::UsageError, inject::LimitArgs, output::Output};

#[derive(Args, Clone, Debug)]
pub struct CacheArgs {
    /// A file or directory (recursively) whose page cache to evict; repeatable.
    #[arg(long = "path")]
    pub paths: Vec<PathBuf>,
    /// cgroup v2: reclaim this workload cgroup's file cache (relative to the root).
    #[arg(long)]
    pub target_cgroup: Option<PathBuf>,
    /// Ask an application component to drop its own cache: NAME=http://URL (POST);
    /// repeatable, e.g. --hook api=http://127.0.0.1:8080/cache/drop.
    #[arg(long = "hook", value_parser = crate::faults::hooks::parse)]
    pub hooks: Vec<faultline_proto::v1::Hook>,
    /// Watch the cache rebuild for this long after the eviction.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    pub observe: Duration,
    #[arg(long, default_value = "/sys/fs/cgroup", hide = true)]
    pub cgroup_root: PathBuf,
    /// Live counters and the summary as text lines or as JSON objects (one per line).
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// How often live readings are printed while the cache rebuilds.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    pub interval: Duration,
}

impl CacheArgs {
    /// An order's eviction: the fault's duration is the window its rebuild is watched.
    pub fn ordered(
        paths: Vec<PathBuf>,
        target_cgroup: Option<PathBuf>,
        hooks: Vec<faultline_proto::v1::Hook>,
        observe: Duration,
    ) -> Self {
        Self {
            paths,
            target_cgroup,
            hooks,
            observe,
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            output: Output::Json,
            interval: Duration::from_secs(1),
        }
    }
}

/// Page-cache residency of a set of files, in pages.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Residency {
    resident: u64,
    total: u64,
}

impl Residency {
    fn percent(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            100.0 * self.resident as f64 / self.total as f64
        }
    }
}

fn files_under(path: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let meta =
        std::fs::symlink_metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if meta.is_file() {
        out.push(path.to_owned());
    } else if meta.is_dir() {
        for e in std::fs::read_dir(path)? {
            files_under(&e?.path(), out)?;
        }
    }
    Ok(())
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as u64 }
}

/// Resident pages of one file, from mincore() on a read-only mapping.
fn file_residency(path: &Path) -> Result<Residency> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let len = f.metadata()?.len() as usize;
    if len == 0 {
        return Ok(Residency::default());
    }
    let page = page_size() as usize;
    let pages = len.div_ceil(page);
    // SAFETY: a private read-only mapping of an open file, unmapped below; mincore
    // only reads the page tables into `vec`, which has one byte per page.
    unsafe {
        let addr = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        if addr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("mapping {}", path.display()));
        }
        let mut vec = vec![0u8; pages];
        let rc = libc::mincore(addr, len, vec.as_mut_ptr());
        libc::munmap(addr, len);
        if rc != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("mincore on {}", path.display()));
        }
        Ok(Residency {
            resident: vec.iter().filter(|b| *b & 1 == 1).count() as u64,
            total: pages as u64,
        })
    }
}

fn residency(files: &[PathBuf]) -> Residency {
    files
        .iter()
        .filter_map(|f| file_residency(f).ok())
        .fold(Residency::default(), |a, r| Residency {
            resident: a.resident + r.resident,
            total: a.total + r.total,
        })
}

fn evict(files: &[PathBuf]) -> Result<()> {
    for path in files {
        let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: valid fd; advice only.
        let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc))
                .with_context(|| format!("fadvise on {}", path.display()));
        }
    }
    Ok(())
}

/// The v2 cgroup directory for `rel`, or why it cannot be used.
fn v2_target(root: &Path, rel: &Path) -> Result<PathBuf, UsageError> {
    crate::cgroup::check_relative(rel)?;
    if !root.join("cgroup.controllers").exists() {
        return Err(UsageError(
            "--target-cgroup needs cgroup v2 (memory.reclaim); on cgroup v1 evict by --path".into(),
        ));
    }
    let dir = root.join(rel);
    if !dir.join("memory.reclaim").exists() {
        return Err(UsageError(format!(
            "target cgroup {} does not exist or has no memory.reclaim",
            dir.display()
        )));
    }
    Ok(dir)
}

fn file_bytes(dir: &Path) -> Option<u64> {
    crate::cgroup::keyed(&dir.join("memory.stat"), "file ").ok()
}

pub fn run(limits: LimitArgs, args: CacheArgs) -> Result<()> {
    if args.paths.is_empty() && args.target_cgroup.is_none() && args.hooks.is_empty() {
        return Err(
            UsageError("name what to evict: --path, --target-cgroup and/or --hook".into()).into(),
        );
    }
    if args.interval.is_zero() {
        return Err(UsageError("--interval must be greater than zero".into()).into());
    }
    // The observation window is the fault's duration (a coordinator holds the node's
    // lease for it): bounded like the other memory faults.
    let (caps, source) = limits.load()?;
    caps.check_memory_duration(args.observe, &source)
        .map_err(|e| UsageError(e.to_string()))?;
    let mut files = Vec::new();
    for p in &args.paths {
        if !p.exists() {
            return Err(UsageError(format!("path {} does not exist", p.display())).into());
        }
        files_under(p, &mut files)?;
    }
    let group = match &args.target_cgroup {
        Some(rel) => Some(v2_target(&args.cgroup_root, rel)?),
        None => None,
    };
    let print = |v: serde_json::Value, text: String| crate::output::emit(args.output, v, &text);

    let before = residency(&files);
    let group_before = group.as_deref().and_then(file_bytes);
    evict(&files)?;
    if let (Some(dir), Some(bytes)) = (&group, group_before) {
        // EAGAIN means "reclaimed less than asked": a partial result, reported below.
        let _ = std::fs::write(dir.join("memory.reclaim"), bytes.to_string());
    }
    let after = residency(&files);
    let group_after = group.as_deref().and_then(file_bytes);
    let page = page_size();
    // The whole picture in every report: the eviction's figures, and residency now.
    let mut readings = faultline_proto::v1::CacheReadings {
        files: files.len() as u64,
        total_bytes: before.total * page,
        resident_before_bytes: before.resident * page,
        resident_after_bytes: after.resident * page,
        resident_before_percent: before.percent(),
        resident_after_percent: after.percent(),
        resident_bytes: after.resident * page,
        resident_percent: after.percent(),
        cgroup_file_before_bytes: group_before,
        cgroup_file_after_bytes: group_after,
        cgroup_file_bytes: group_after,
    };
    let report = |r: &faultline_proto::v1::CacheReadings| {
        crate::report::readings(faultline_proto::v1::FaultReadings {
            kind: Some(faultline_proto::v1::fault_readings::Kind::Cache(*r)),
        })
    };
    crate::report::armed(
        faultline_proto::spec::Scenario::CacheInvalidation.kind_name(),
        &format!(
            "cache evicted: {} file(s), watching the rebuild",
            files.len()
        ),
        args.observe,
    );
    report(&readings);
    print(
        json!({"event": "evicted", "files": files.len(),
               "resident_before_bytes": before.resident * page, "resident_after_bytes": after.resident * page,
               "total_bytes": before.total * page, "resident_before_percent": before.percent(),
               "resident_after_percent": after.percent(),
               "cgroup_file_before_bytes": group_before, "cgroup_file_after_bytes": group_after}),
        format!(
            "faultline-agent: evicted the page cache of {} file(s): {} -> {} MiB resident ({:.1}% -> {:.1}%){}",
            files.len(),
            (before.resident * page) >> 20,
            (after.resident * page) >> 20,
            before.percent(),
            after.percent(),
            match (group_before, group_after) {
                (Some(b), Some(a)) => format!("; cgroup file cache {} -> {} MiB", b >> 20, a >> 20),
                _ => String::new(),
            }
        ),
    );

    // Each component's own cache, by its hook; one failing does not stop the rest,
    // and each outcome is reported by name. A hook that failed means the fault did
    // not happen as ordered: the run fails at once, naming it, instead of watching a
    // rebuild that was never caused (and passing).
    let failed = crate::faults::hooks::report(&crate::faults::hooks::call_all(&args.hooks), print);
    if !failed.is_empty() {
        anyhow::bail!(
            "cache invalidation did not happen as ordered: hook(s) failed: {}",
            failed.join(", ")
        );
    }

    let started = Instant::now();
    while started.elapsed() < args.observe {
        std::thread::sleep(
            args.interval
                .min(args.observe.saturating_sub(started.elapsed())),
        );
        let now = residency(&files);
        let group_now = group.as_deref().and_then(file_bytes);
        readings.resident_bytes = now.resident * page;
        readings.resident_percent = now.percent();
        readings.cgroup_file_bytes = group_now;
        report(&readings);
        print(
            json!({"event": "reading", "elapsed_ms": started.elapsed().as_millis() as u64,
                   "resident_bytes": now.resident * page, "resident_percent": now.percent(),
                   "cgroup_file_bytes": group_now}),
            format!(
                "[{:>5.1}s] resident {} MiB ({:.1}%){}",
                started.elapsed().as_secs_f64(),
                (now.resident * page) >> 20,
                now.percent(),
                group_now
                    .map(|b| format!(", cgroup file cache {} MiB", b >> 20))
                    .unwrap_or_default()
            ),
        );
    }
    Ok(())
}
