//! Developer tasks. `cargo xtask --help` lists them.
mod demo;
mod dist;
mod fuzz;
mod guest;
mod image;
mod lint;
mod sbom;
mod setup;
mod vm;

use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "faultline developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what this machine lacks (apt packages, bpf-linker, toolchain link); idempotent.
    Setup,
    /// Build the eBPF object (release, with BTF) and print where it is.
    BuildEbpf,
    /// Set up, build, and run every test (needs root: tests load programs and create
    /// network namespaces), here and in the stock-kernel VM lane. This is what CI runs.
    Test,
    /// The main job: seven namespace nodes with agents and the sample service under
    /// load, real Prometheus and Alertmanager, the coordinator on its production
    /// defaults; all six scenarios against node-6, a schedule firing (and its twin
    /// skipped), a guard abort; then the reports, the fleet summary and the dashboard.
    Demo {
        /// Multiplies every scenario's duration and the baseline (the report's 60 s
        /// and 30 s); 1 runs them as the report does. The limits are unchanged.
        #[arg(long, default_value_t = 0.1)]
        scale: f64,
    },
    /// Set up, build, and run the benchmarks (per-packet cost, throughput, latency
    /// accuracy).
    Bench,
    /// Run the latency accuracy benchmark inside the stock-kernel VM (EDT and netem
    /// side by side).
    VmBench,
    /// Run the kernel-facing tests inside Debian's stock kernel under qemu (cached
    /// in target/vm; part of `test`).
    VmTest,
    /// Build what a team installs into target/dist: the Debian packages (agent;
    /// coordinator with the CLI), one OCI image archive with all three binaries, and
    /// their SBOMs. Reproducible: SOURCE_DATE_EPOCH (or the commit's time), and no
    /// path of the building machine in the binaries.
    Dist,
    /// The packages under systemd as PID 1: a Debian 12 guest (stock kernel, qemu)
    /// installs what `dist` built, starts both units, runs an experiment, upgrades
    /// the agent with an effect active, stops and removes everything, and checks
    /// nothing is left (part of `test`; needs `dist` first).
    SystemdTest,
    /// Check the structure rules the compiler cannot: no catch-all arm or `matches!`
    /// over fault kinds (part of `test`).
    Lint,
    /// Build the fuzz targets (tests/fuzz) with coverage instrumentation and run each
    /// for a bounded time: spec, limits, schedule, config, order, child_events.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Only this target.
        #[arg(long)]
        target: Option<String>,
    },
}

pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Runs a command (from the workspace root unless it has a directory of its own),
/// failing with its name on error.
pub fn run(cmd: &mut Command) -> Result<()> {
    if cmd.get_current_dir().is_none() {
        cmd.current_dir(workspace_root());
    }
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

pub fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn require_root(task: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "`cargo xtask {task}` loads eBPF programs and creates network namespaces: run it as root"
        );
    }
    Ok(())
}

/// The agent, the coordinator, the CLI and the sample service (debug build).
pub fn build_daemons() -> Result<()> {
    run(cargo().args([
        "build",
        "--package",
        "faultline-agent",
        "--package",
        "faultline-coordinator",
    ]))?;
    run(cargo().args([
        "build",
        "--package",
        "faultline-tests",
        "--bin",
        "faultline-sample",
    ]))
}

/// Everything, tests included: one feature set for the whole workspace, so the
/// test run, the demo and the VM lane reuse these artifacts instead of building
/// the daemons again with other features.
pub fn build_workspace() -> Result<()> {
    run(cargo().args(["build", "--workspace", "--all-targets"]))
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::setup(),
        Task::BuildEbpf => {
            setup::setup()?;
            let object = setup::build_ebpf()?;
            println!("eBPF object: {}", object.display());
            Ok(())
        }
        Task::Lint => lint::lint(),
        Task::Test => {
            require_root("test")?;
            lint::lint()?;
            setup::setup()?;
            build_workspace()?;
            // The packages and the image, which the container tests run.
            dist::dist()?;
            // Each end-to-end test builds its own namespaces; two at a time keeps the
            // packet rates of the statistical tests well inside this machine's means.
            run(cargo().args(["test", "--workspace", "--", "--test-threads=2"]))?;
            // The image under a real runtime: alone, since these tests own the node's
            // cgroup roots (see tests/tests/container.rs).
            // `--workspace`: the feature set the run above built with (with
            // `--package` cargo would build the test's dependencies again).
            run(cargo().args([
                "test",
                "--workspace",
                "--test",
                "container",
                "--",
                "--ignored",
                "--test-threads=1",
            ]))?;
            // The main job, as a new user runs it: it fails on any error or residue.
            // The workspace build above made its binaries; `build_daemons` would build
            // them again with other features (a second copy of every dependency).
            demo::run(0.1)?;
            // Every fuzz target briefly, seeds (and fixed crashes) included, on fixed
            // inputs. `cargo xtask fuzz` explores, for longer.
            fuzz::fuzz(fuzz::Budget::Runs(50_000), None)?;
            vm::vm_test()?;
            // The packages `dist` built, under systemd as PID 1 (the VM lane's kernel).
            guest::systemd_test()
        }
        Task::Dist => {
            setup::setup()?;
            dist::dist()
        }
        Task::SystemdTest => {
            require_root("systemd-test")?;
            guest::systemd_test()
        }
        Task::VmTest => {
            require_root("vm-test")?;
            setup::setup()?;
            vm::vm_test()
        }
        Task::Demo { scale } => {
            require_root("demo")?;
            setup::setup()?;
            build_daemons()?;
            demo::run(scale)
        }
        Task::Fuzz { seconds, target } => {
            fuzz::fuzz(fuzz::Budget::Seconds(seconds), target.as_deref())
        }
        Task::VmBench => {
            require_root("vm-bench")?;
            setup::setup()?;
            vm::vm_bench()
        }
        Task::Bench => {
            require_root("bench")?;
            setup::setup()?;
            // `cargo bench` runs from target/release and looks for the agent there.
            run(cargo().args([
                "build",
                "--release",
                "--package",
                "faultline-agent",
                "--package",
                "faultline-coordinator",
            ]))?;
            // The steady-state benchmark's workload (`--bin` alone: with it, cargo
            // builds that binary only).
            run(cargo().args([
                "build",
                "--release",
                "--package",
                "faultline-tests",
                "--bin",
                "faultline-sample",
            ]))?;
            run(cargo().args([
                "bench",
                "--package",
                "faultline-tests",
                "--package",
                "faultline-coordinator",
            ]))
        }
    }
}
