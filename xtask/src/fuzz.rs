//! `cargo xtask fuzz`: the coverage-guided fuzz targets of tests/fuzz, each for a
//! bounded time.
//!
//! libFuzzer comes from the libfuzzer-sys crate (crates.io; its C++ is built by its
//! build script). The coverage instrumentation is rustc's own SanitizerCoverage pass,
//! on stable: no nightly toolchain, no cargo-fuzz, and no AddressSanitizer (Rust's
//! checks — bounds, overflow with debug assertions on — are what finds bugs here).
//! `--target` keeps the flags off build scripts and proc macros.
//!
//! The seed corpus is in the repository (tests/fuzz/corpus/TARGET). Inputs a run
//! finds go to target/fuzz/corpus/TARGET, crashes to target/fuzz/artifacts/TARGET/;
//! a crash, once fixed, is copied into the repository's corpus, where every later
//! run executes it first.
use std::{path::Path, process::Command};

use anyhow::{Context, Result, bail};

use crate::{run, workspace_root};

/// Every target, in the order they run.
pub const TARGETS: &[&str] = &[
    "spec",
    "limits",
    "schedule",
    "config",
    "order",
    "child_events",
];

const RUSTFLAGS: &[&str] = &[
    "-Cpasses=sancov-module",
    "-Cllvm-args=-sanitizer-coverage-level=4",
    "-Cllvm-args=-sanitizer-coverage-inline-8bit-counters",
    "-Cllvm-args=-sanitizer-coverage-pc-table",
    "-Cllvm-args=-sanitizer-coverage-trace-compares",
    "--cfg=fuzzing",
    "-Cdebug-assertions",
    "-Coverflow-checks",
];

fn host_triple() -> Result<String> {
    let out = Command::new("rustc").arg("-vV").output()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .context("no host triple in rustc -vV")
}

/// A number from libFuzzer's final statistics (`stat::name: value`).
fn stat(log: &str, name: &str) -> Option<u64> {
    log.lines()
        .find_map(|l| l.strip_prefix(&format!("stat::{name}:")))
        .and_then(|v| v.trim().parse().ok())
}

/// The last coverage figure libFuzzer printed (`cov: N`).
fn coverage(log: &str) -> Option<u64> {
    log.lines()
        .rev()
        .find_map(|l| l.split("cov: ").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.count())
}

/// How long each target runs.
#[derive(Clone, Copy)]
pub enum Budget {
    /// Wall time, from a random seed: exploration (`cargo xtask fuzz`).
    Seconds(u64),
    /// A fixed number of inputs from a fixed seed: the same inputs on every run of
    /// the same commit, so the test command cannot fail by luck.
    Runs(u64),
}

/// Builds the targets and runs each within `budget` (or only `only`).
pub fn fuzz(budget: Budget, only: Option<&str>) -> Result<()> {
    if let Some(t) = only
        && !TARGETS.contains(&t)
    {
        bail!("no fuzz target {t}: one of {}", TARGETS.join(", "));
    }
    let root = workspace_root();
    let crate_dir = root.join("tests/fuzz");
    let out = root.join("target/fuzz");
    let triple = host_triple()?;
    run(crate::cargo()
        .args(["build", "--release", "--bins", "--manifest-path"])
        .arg(crate_dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&out)
        .args(["--target", &triple])
        .env("RUSTFLAGS", RUSTFLAGS.join(" ")))?;
    let mut summary = Vec::new();
    for target in TARGETS.iter().filter(|t| only.is_none_or(|o| o == **t)) {
        let seeds = crate_dir.join("corpus").join(target);
        let corpus = out.join("corpus").join(target);
        let artifacts = out.join("artifacts").join(target);
        std::fs::create_dir_all(&corpus)?;
        std::fs::create_dir_all(&artifacts)?;
        let exe = out.join(&triple).join("release").join(target);
        let (limit, what) = match budget {
            Budget::Seconds(s) => (vec![format!("-max_total_time={s}")], format!("{s}s")),
            Budget::Runs(n) => (
                vec![format!("-runs={n}"), "-seed=1".to_owned()],
                format!("{n} inputs, seed 1"),
            ),
        };
        println!("fuzz: {target} for {what} ({} seeds)", count(&seeds));
        // New inputs go to the first corpus directory (target/), the seeds are read.
        let began = std::time::Instant::now();
        let result = Command::new(&exe)
            .arg(&corpus)
            .arg(&seeds)
            .args(&limit)
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .args(["-timeout=10", "-rss_limit_mb=2048", "-print_final_stats=1"])
            .output()
            .with_context(|| format!("starting {}", exe.display()))?;
        let took = began.elapsed().as_secs_f64();
        let log = String::from_utf8_lossy(&result.stderr);
        if !result.status.success() {
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            bail!(
                "fuzz target {target} failed ({}); the input is in {}:\n{}",
                result.status,
                artifacts.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        // libFuzzer's own average_exec_per_sec divides by whole seconds: 0/s for a
        // run under one second. The rate here is over the process's wall time.
        let runs = stat(&log, "number_of_executed_units").unwrap_or(0);
        let line = format!(
            "{target}: {runs} runs in {took:.1} s ({what}, {:.0}/s), coverage {} edges, corpus {} (+{} new), peak {} MB",
            runs as f64 / took.max(1e-3),
            coverage(&log).map_or("?".into(), |c| c.to_string()),
            count(&corpus) + count(&seeds),
            stat(&log, "new_units_added").unwrap_or(0),
            stat(&log, "peak_rss_mb").unwrap_or(0),
        );
        println!("fuzz: {line}");
        summary.push(line);
    }
    println!("fuzz: no crash\n  {}", summary.join("\n  "));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzers_final_statistics() {
        let log = "#1024 pulse  cov: 310 ft: 500 corp: 20/1Kb\n#2048 NEW cov: 322 ft: 510\n\
                   stat::number_of_executed_units: 98765\nstat::average_exec_per_sec:   3291\n\
                   stat::new_units_added: 17\nstat::peak_rss_mb: 61\n";
        assert_eq!(stat(log, "number_of_executed_units"), Some(98765));
        assert_eq!(stat(log, "average_exec_per_sec"), Some(3291));
        assert_eq!(stat(log, "missing"), None);
        assert_eq!(coverage(log), Some(322));
    }
}
