//! GC pressure: squeeze a workload cgroup's soft memory limit below its current
//! usage for the duration, so the kernel reclaims from it and its runtime's collector
//! has to work; optionally also run the runtime's own GC trigger (e.g. a JVM's
//! `jcmd <pid> GC.run`). The previous limit is journalled first and restored exactly.
//!
//! cgroup v2: `memory.high` (throttles and reclaims above it, never OOM-kills).
//! cgroup v1: `memory.soft_limit_in_bytes`, which the kernel only enforces under
//! node-wide memory pressure, so on v1 the squeeze is best effort.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use clap::Args;
use faultline_proto::limits::Percent;
use serde_json::json;

use crate::{
    cgroup::{keyed, read_u64},
    errors::UsageError,
    faults::loss::parse_percent,
    inject::LimitArgs,
    output::Output,
    targets::TargetJournal,
};

#[derive(Args, Clone, Debug)]
pub struct GcArgs {
    /// The workload's cgroup, relative to the cgroup root (e.g. system.slice/app.service).
    #[arg(long)]
    pub target_cgroup: PathBuf,
    /// Squeeze the soft limit to this share of the cgroup's current usage (50-99).
    #[arg(long, value_parser = parse_percent, default_value = "80")]
    pub to_percent: Percent,
    /// How long the squeeze holds, e.g. 60s; the soft limit is restored after it
    /// (by a keeper process even if the agent is killed).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// An HTTP endpoint that asks the runtime to collect: NAME=http://URL (POST once).
    #[arg(long = "hook", value_parser = crate::faults::hooks::parse)]
    pub hooks: Vec<faultline_proto::v1::Hook>,
    /// A command that asks the runtime to collect (run once, without a shell).
    #[arg(long, num_args = 1.., allow_hyphen_values = true)]
    pub runtime_command: Option<Vec<String>>,
    #[arg(long, default_value = "/sys/fs/cgroup", hide = true)]
    pub cgroup_root: PathBuf,
    /// Live counters and the summary as text lines or as JSON objects (one per line).
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// How often live readings are printed.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    pub interval: Duration,
}

impl GcArgs {
    /// An order's squeeze: never a runtime command (an order names no command).
    pub fn ordered(
        target_cgroup: PathBuf,
        to_percent: Percent,
        duration: Duration,
        hooks: Vec<faultline_proto::v1::Hook>,
    ) -> Self {
        Self {
            target_cgroup,
            to_percent,
            duration,
            hooks,
            runtime_command: None,
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            output: Output::Json,
            interval: Duration::from_secs(1),
        }
    }
}

/// The files GC pressure reads and writes in the target group.
struct Target {
    version: u8,
    dir: PathBuf,
    limit_file: PathBuf,
    usage_file: PathBuf,
}

fn target(root: &Path, rel: &Path) -> Result<Target, UsageError> {
    crate::cgroup::check_relative(rel)?;
    let (version, dir) = if root.join("cgroup.controllers").exists() {
        (2, root.join(rel))
    } else {
        (1, root.join("memory").join(rel))
    };
    if rel.as_os_str().is_empty() || !dir.is_dir() {
        return Err(UsageError(format!(
            "target cgroup {} does not exist",
            dir.display()
        )));
    }
    let (limit, usage) = if version == 2 {
        ("memory.high", "memory.current")
    } else {
        ("memory.soft_limit_in_bytes", "memory.usage_in_bytes")
    };
    if !dir.join(limit).exists() {
        return Err(UsageError(format!(
            "{} has no {limit}: the memory controller is not enabled for it",
            dir.display()
        )));
    }
    Ok(Target {
        version,
        limit_file: dir.join(limit),
        usage_file: dir.join(usage),
        dir,
    })
}

/// `some avg10` of the group's memory PSI (v2), or the node's (v1 has no per-group
/// pressure).
fn pressure(t: &Target) -> Option<f64> {
    let file = if t.version == 2 {
        t.dir.join("memory.pressure")
    } else {
        PathBuf::from("/proc/pressure/memory")
    };
    let text = fs::read_to_string(file).ok()?;
    let some = text.lines().find(|l| l.starts_with("some"))?;
    some.split_whitespace()
        .find_map(|kv| kv.strip_prefix("avg10="))?
        .parse()
        .ok()
}

/// Pages the kernel reclaimed from the group so far.
fn reclaimed(t: &Target) -> Option<u64> {
    let key = if t.version == 2 {
        "pgsteal "
    } else {
        "total_pgpgout "
    };
    keyed(&t.dir.join("memory.stat"), key).ok()
}

pub async fn run(state_dir: PathBuf, limits: LimitArgs, args: GcArgs) -> Result<()> {
    if args.duration.is_zero() {
        return Err(UsageError("--duration must be greater than zero".into()).into());
    }
    let to = args.to_percent.value();
    if !faultline_proto::v1::GcFault::TO_PERCENT.contains(&to) {
        return Err(UsageError(format!(
            "--to-percent {to} is outside 50-99: a harder squeeze stalls the workload rather than pressing its collector"
        ))
        .into());
    }
    // GC pressure is a memory fault: it runs under memory_stress.max_duration.
    let (caps, source) = limits.load()?;
    caps.check_memory_duration(args.duration, &source)
        .map_err(|e| UsageError(e.to_string()))?;
    let t = target(&args.cgroup_root, &args.target_cgroup)?;

    let mut signals = crate::signals::Signals::install()?;
    let journal = TargetJournal::new(&state_dir)?;
    let print = |v: serde_json::Value, text: String| crate::output::emit(args.output, v, &text);
    for line in journal.reconcile()? {
        print(
            json!({"event": "reconciled", "detail": line}),
            format!("faultline-agent: {line}"),
        );
    }

    let usage = read_u64(&t.usage_file)?;
    let until_ns = crate::clock::deadline_after(args.duration);
    // The kernel keeps these limits in whole pages; write a page multiple so that
    // what is reported is exactly what is in force.
    let page = 4096;
    let squeezed = (usage as f64 * to / 100.0) as u64 / page * page;
    let change = journal.change(&t.limit_file, &squeezed.to_string())?;
    let mut restorer = match spawn_restorer(&state_dir, &t.limit_file, until_ns) {
        Ok(child) => child,
        Err(e) => {
            journal.restore(&change)?;
            return Err(e);
        }
    };
    let started = Instant::now();
    let reclaim0 = reclaimed(&t).unwrap_or(0);
    crate::report::armed(
        faultline_proto::spec::Scenario::GcPressure.kind_name(),
        &format!(
            "{} limited to {squeezed} bytes (was {})",
            t.limit_file.display(),
            change.original.trim()
        ),
        args.duration,
    );
    print(
        json!({"event": "armed", "kind": "gc", "file": t.limit_file, "original": change.original.trim(),
               "squeezed": squeezed, "usage": usage, "cgroup_version": t.version, "pid": std::process::id()}),
        format!(
            "faultline-agent: gc pressure on {}: {} {} -> {} ({}% of usage {} MiB) for {}",
            t.dir.display(),
            t.limit_file
                .file_name()
                .unwrap_or_default()
                .to_string_lossy(),
            change.original.trim(),
            squeezed,
            to,
            usage >> 20,
            humantime::format_duration(args.duration)
        ),
    );
    if let Some(cmd) = &args.runtime_command {
        let status = Command::new(&cmd[0]).args(&cmd[1..]).status();
        let what = match status {
            Ok(s) => format!("runtime command exited with {s}"),
            Err(e) => format!("runtime command failed to start: {e}"),
        };
        print(
            json!({"event": "hook", "detail": what}),
            format!("faultline-agent: {what}"),
        );
    }

    let failed = crate::faults::hooks::report(&crate::faults::hooks::call_all(&args.hooks), print);

    let deadline = tokio::time::Instant::from_std(started + args.duration);
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::from_std(started + args.interval),
        args.interval,
    );
    let mut peak_psi: f64 = 0.0;
    // A hook that failed means the collection it asks for did not happen: the
    // squeeze ends at once and the run fails, naming it.
    let reason = loop {
        if !failed.is_empty() {
            break "a hook failed";
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break "deadline",
            name = signals.recv() => break name,
            _ = tick.tick() => {
                let psi = pressure(&t).unwrap_or(0.0);
                peak_psi = peak_psi.max(psi);
                let usage = read_u64(&t.usage_file).unwrap_or(0);
                let limit = fs::read_to_string(&t.limit_file).unwrap_or_default();
                let reclaimed_pages = reclaimed(&t).unwrap_or(0).saturating_sub(reclaim0);
                crate::report::readings(faultline_proto::v1::FaultReadings {
                    kind: Some(faultline_proto::v1::fault_readings::Kind::Gc(
                        faultline_proto::v1::GcReadings {
                            usage_bytes: usage,
                            psi_some_avg10: psi,
                            reclaimed_pages,
                        },
                    )),
                });
                print(
                    json!({"event": "reading", "elapsed_ms": started.elapsed().as_millis() as u64,
                           "usage": usage, "limit": limit.trim(), "psi_some_avg10": psi,
                           "reclaimed_pages": reclaimed_pages}),
                    format!("[{:>5.1}s] usage {} MiB, limit {}, memory PSI some avg10 {psi:.2}",
                        started.elapsed().as_secs_f64(), usage >> 20, limit.trim()),
                );
            }
        }
    };
    journal.restore(&change)?;
    let _ = restorer.kill();
    let _ = restorer.wait();
    let restored = fs::read_to_string(&t.limit_file).unwrap_or_default();
    let reclaimed_pages = reclaimed(&t).unwrap_or(0).saturating_sub(reclaim0);
    crate::report::removed(reason);
    print(
        json!({"event": "removed", "reason": reason, "restored": restored.trim(),
               "peak_psi_some_avg10": peak_psi, "reclaimed_pages": reclaimed_pages}),
        format!(
            "faultline-agent: gc pressure removed ({reason}); {} restored to {}; peak memory PSI {peak_psi:.2}, {reclaimed_pages} pages reclaimed",
            t.limit_file.display(),
            restored.trim()
        ),
    );
    if !failed.is_empty() {
        anyhow::bail!(
            "gc pressure ended at once and was restored: hook(s) failed: {}",
            failed.join(", ")
        );
    }
    Ok(())
}

/// The squeeze's deadline, independent of the agent: a detached process that puts
/// the original limit back at the deadline if the agent has not (frozen, killed),
/// and exits as soon as the journal shows the change restored. It is deliberately
/// not tied to the agent's life (no parent-death signal): outliving a killed agent
/// is its purpose.
fn spawn_restorer(state_dir: &Path, file: &Path, until_ns: u64) -> Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into());
    let mut cmd = Command::new(exe);
    cmd.arg("--state-dir")
        .arg(state_dir)
        .arg("__restorer")
        .arg("--file")
        .arg(file)
        .args(["--until-ns", &until_ns.to_string()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    // SAFETY: setsid is async-signal-safe; a new session keeps the restorer out of
    // the agent's process group (a Ctrl-C to the agent must not kill it first).
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    cmd.spawn().context("starting the gc-pressure restorer")
}

/// `faultline-agent __restorer`: see `spawn_restorer`.
#[derive(Args, Clone, Debug)]
pub struct RestorerArgs {
    #[arg(long)]
    pub file: PathBuf,
    #[arg(long)]
    pub until_ns: u64,
}

pub fn restorer(state_dir: &Path, a: &RestorerArgs) -> Result<()> {
    let journal = TargetJournal::new(state_dir)?;
    loop {
        if !journal.has(&a.file)? {
            return Ok(()); // the agent restored it
        }
        let now = crate::clock::monotonic_ns();
        if now >= a.until_ns {
            journal.restore_at_deadline(&a.file)?;
            return Ok(());
        }
        std::thread::sleep(Duration::from_nanos((a.until_ns - now).min(200_000_000)));
    }
}
