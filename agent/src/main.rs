//! faultline-agent: the privileged node-local daemon. `run` holds a session with the
//! coordinator and applies its fault orders under leases; `inject` runs one fault
//! locally; `cleanup` removes what a killed agent left behind.
mod active;
mod capabilities;
mod cgroup;
mod clock;
mod delay_line;
mod ebpf;
mod errors;
mod exporter;
mod faults;
mod filter;
mod guard;
mod inject;
mod journal;
mod lockfile;
mod metrics;
mod node;
mod order;
mod orders;
mod output;
mod preflight;
mod probe;
mod qdisc;
mod reconcile;
mod report;
mod selftest;
mod session;
mod signals;
mod stress;
mod targets;
mod tc;
mod timing;

use std::{path::PathBuf, process::ExitCode};

use clap::{CommandFactory, Parser, Subcommand};
use errors::UsageError;

#[derive(Parser)]
#[command(
    name = "faultline-agent",
    version,
    about = "faultline's node-local fault agent"
)]
struct Cli {
    /// Where the agent keeps its per-network-namespace lock and journal.
    #[arg(long, global = true, default_value = "/run/faultline")]
    state_dir: PathBuf,
    /// A YAML file of `run` options (`node_name: a`, `allow_endpoint: [10.0.0.0/8]`,
    /// any long flag of `run` or a global one); flags and their environment
    /// variables override it. See deploy/agent.example.yaml.
    #[arg(long, global = true, env = "FAULTLINE_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// Log lines as text or as JSON objects (one per line).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t,
        env = "FAULTLINE_LOG_FORMAT"
    )]
    log_format: faultline_proto::logging::LogFormat,
    #[command(flatten)]
    limits: inject::LimitArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run as the node's daemon: connect to the coordinator over mTLS and carry out
    /// its fault orders under leases (effects are removed if the lease lapses).
    Run(Box<session::RunArgs>),
    /// Apply one fault now, show live counters, remove it on exit or at the deadline.
    Inject {
        #[command(subcommand)]
        fault: Box<Fault>,
    },
    /// Remove every faultline filter and qdisc left in this network namespace, and
    /// every stress cgroup, by an agent that was killed.
    Cleanup {
        /// Root of the cgroup filesystem.
        #[arg(long, default_value = "/sys/fs/cgroup", hide = true)]
        cgroup_root: PathBuf,
    },
    /// Stop the daemon of this state directory: it removes every effect and exits
    /// (waited for), then anything still recorded is cleaned up. For a Kubernetes
    /// preStop hook or an operator.
    Stop {
        #[arg(long, default_value = "/sys/fs/cgroup", hide = true)]
        cgroup_root: PathBuf,
        /// How long to wait for the daemon to exit.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "25s")]
        timeout: std::time::Duration,
    },
    /// What faultline is doing on this node now: every active effect (kind, magnitude,
    /// filter, order and lease, since, deadline) from the state directory. Exit 0
    /// when none, 10 when one is active, 11 when only a killed agent's records remain
    /// (its effects may still be in place: run `cleanup`).
    Status {
        /// Text for a person, JSON for a script.
        #[arg(long, short = 'o', value_enum, default_value_t = output::Output::Text)]
        output: output::Output,
    },
    /// Validate a `--config` file of `run` options; exit 2 naming the key if invalid.
    CheckConfig {
        /// The options file (YAML) to check.
        file: PathBuf,
    },
    /// Report what this kernel offers (TCX, sch_fq, IFB, TAP, cgroup version, ...).
    Capabilities {
        #[arg(long, default_value = "/sys/fs/cgroup", hide = true)]
        cgroup_root: PathBuf,
        /// Text for a person, JSON for a script.
        #[arg(long, short = 'o', value_enum, default_value_t = output::Output::Text)]
        output: output::Output,
    },
    /// Write this program's man pages and bash, zsh and fish completions under a
    /// directory (`man/man1/`, `completions/<shell>/`): what the packages install.
    Docs {
        /// The directory to write into (created if missing).
        dir: PathBuf,
    },
    /// Rollback readiness: create and remove a cgroup, attach a disarmed program to
    /// the interface with its journal, and detach it (what the coordinator's
    /// `required: [rollback]` prerequisite runs).
    SelfTest(selftest::SelfTestArgs),
    /// A stressor process (started by the agent itself).
    #[command(name = "__stressor", hide = true)]
    Stressor(stress::StressorArgs),
    /// A stress group's warden (started by the stress itself, see `stress::warden`).
    #[command(name = "__warden", hide = true)]
    Warden(stress::WardenArgs),
    /// An order's child (started by the agent itself): reads the order on stdin,
    /// reports on stdout (see `order`).
    #[command(name = "__order", hide = true)]
    Order,
    /// The deadline keeper of a gc-pressure squeeze (started by the agent itself).
    #[command(name = "__restorer", hide = true)]
    Restorer(faults::gc::RestorerArgs),
}

#[derive(Subcommand)]
enum Fault {
    /// Drop a share of the matching packets in the kernel.
    Loss {
        #[command(flatten)]
        target: inject::TargetArgs,
        #[command(flatten)]
        loss: faults::loss::LossArgs,
    },
    /// Delay the matching packets (EDT with fq, or the agent's delay line).
    Latency {
        #[command(flatten)]
        target: inject::TargetArgs,
        #[command(flatten)]
        latency: faults::latency::LatencyArgs,
    },
    /// Burn a share of the node's CPU inside a cgroup whose quota enforces it.
    Cpu(faults::cpu::CpuArgs),
    /// Allocate a share of the node's memory inside a fencing memory cgroup.
    Memory(faults::memory::MemoryArgs),
    /// Squeeze a workload cgroup's soft memory limit to make its collector work.
    Gc(faults::gc::GcArgs),
    /// Evict page cache (of files, or of a cgroup on v2) and watch it rebuild.
    Cache(faults::cache::CacheArgs),
}

/// Applies one fault, until its deadline or a signal: what `inject` runs for its
/// flags and an order's child for its order.
async fn run_fault(
    state_dir: PathBuf,
    limits: inject::LimitArgs,
    fault: Fault,
) -> anyhow::Result<()> {
    // The fault records itself for `status` when armed; the record goes with it.
    active::set_state_dir(&state_dir);
    let result = match fault {
        Fault::Loss { target, loss } => inject::loss(state_dir, limits, target, loss).await,
        Fault::Latency { target, latency } => {
            inject::latency(state_dir, limits, target, latency).await
        }
        Fault::Cpu(args) => inject::cpu(limits, args).await,
        Fault::Memory(args) => inject::memory(limits, args).await,
        Fault::Gc(args) => faults::gc::run(state_dir, limits, args).await,
        // Eviction is instantaneous; only the observation takes time.
        Fault::Cache(args) => tokio::task::spawn_blocking(move || faults::cache::run(limits, args))
            .await
            .map_err(anyhow::Error::from)
            .and_then(|r| r),
    };
    active::clear();
    result
}

/// Removes what a killed agent left in this network namespace and every orphaned
/// stress cgroup; returns a line per thing removed.
pub(crate) async fn cleanup(
    state_dir: PathBuf,
    cgroup_root: PathBuf,
) -> anyhow::Result<Vec<String>> {
    preflight::check_privileges()?;
    let journal = journal::JournalFile::open(&state_dir)?;
    let mut removed = reconcile::reconcile(&journal).await?;
    if let Ok(fs) = cgroup::detect(&cgroup_root, None) {
        removed.extend(cgroup::reconcile(fs.as_ref())?);
    }
    removed.extend(targets::TargetJournal::new(&state_dir)?.reconcile()?);
    let records = active::sweep(&state_dir);
    if records > 0 {
        removed.push(format!(
            "removed {records} record(s) of killed agents' effects"
        ));
    }
    Ok(removed)
}

/// `cleanup` as a command: what it removed, on stdout.
pub(crate) fn print_cleanup(removed: &[String]) {
    if removed.is_empty() {
        println!("faultline-agent: nothing to clean up");
    }
    for line in removed {
        println!("faultline-agent: {line}");
    }
}

/// `check-config`: the file's options are flags `run` has, of the right shape.
fn check_config(file: &std::path::Path) -> anyhow::Result<()> {
    let n = faultline_proto::options_file::check(&Cli::command(), "run", None, file)
        .map_err(UsageError)?;
    println!("{}: ok ({n} option(s))", file.display());
    Ok(())
}

fn main() -> ExitCode {
    let args = std::env::args_os().collect();
    let args =
        match faultline_proto::options_file::args_with_file(&Cli::command(), "run", None, args) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("faultline-agent: error: {e}");
                return ExitCode::from(2);
            }
        };
    let cli = Cli::parse_from(args);
    if let Command::Restorer(args) = &cli.command {
        return match faults::gc::restorer(&cli.state_dir, args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("faultline-agent restorer: error: {e:#}");
                ExitCode::from(1)
            }
        };
    }
    if let Command::Status { output } = &cli.command {
        return ExitCode::from(active::status(
            &cli.state_dir,
            *output == output::Output::Json,
        ));
    }
    if let Command::Docs { dir } = &cli.command {
        return match faultline_proto::docs::write(Cli::command(), dir) {
            Ok(files) => {
                println!(
                    "faultline-agent: wrote {} file(s) under {}",
                    files.len(),
                    dir.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!(
                    "faultline-agent: error: cannot write under {}: {e}",
                    dir.display()
                );
                ExitCode::from(1)
            }
        };
    }
    if let Command::Warden(args) = &cli.command {
        return match stress::warden(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("faultline-agent warden: error: {e:#}");
                ExitCode::from(1)
            }
        };
    }
    if let Command::Stressor(args) = &cli.command {
        // No runtime, no logging: a stressor is a tight loop or a memory block.
        return match stress::stressor(args.clone()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(_) => ExitCode::from(1),
        };
    }
    faultline_proto::logging::init(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("faultline-agent: error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Inject { fault } => run_fault(cli.state_dir, cli.limits, *fault).await,
            Command::Order => order::run(cli.state_dir, cli.limits).await,
            Command::Run(args) => session::run(cli.state_dir, cli.limits, *args).await,
            Command::CheckConfig { file } => check_config(&file),
            Command::Cleanup { cgroup_root } => cleanup(cli.state_dir, cgroup_root)
                .await
                .map(|removed| print_cleanup(&removed)),
            Command::Stop {
                cgroup_root,
                timeout,
            } => session::stop(cli.state_dir, cgroup_root, timeout).await,
            Command::SelfTest(args) => selftest::run(cli.state_dir, cli.limits, args).await,
            Command::Capabilities {
                cgroup_root,
                output,
            } => capabilities::report(&cgroup_root, output).await,
            Command::Stressor(_)
            | Command::Restorer(_)
            | Command::Warden(_)
            | Command::Docs { .. }
            | Command::Status { .. } => {
                unreachable!("handled before the runtime starts")
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let refused = e.downcast_ref::<UsageError>().is_some();
            // An order's child says it to the daemon, typed; a person reads stderr.
            report::error(&format!("{e:#}"), refused);
            eprintln!("faultline-agent: error: {e:#}");
            if refused {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The man pages are made of the help lines: a flag without one is a hole in them.
    #[test]
    fn every_visible_flag_has_a_help_line() {
        assert_eq!(
            faultline_proto::docs::undocumented(&Cli::command()),
            Vec::<String>::new()
        );
    }
}
