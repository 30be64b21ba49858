//! The command line: global options and the verbs.
use std::{path::PathBuf, time::Duration};

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "faultline",
    version,
    about = "Run and control faultline chaos experiments"
)]
pub struct Cli {
    /// The coordinator's gRPC endpoint.
    #[arg(
        long,
        global = true,
        env = "FAULTLINE_COORDINATOR",
        default_value = "https://127.0.0.1:7443"
    )]
    pub coordinator: String,
    /// CA certificate (PEM) that signed the coordinator's certificate.
    #[arg(
        long,
        global = true,
        env = "FAULTLINE_CA",
        default_value = "/etc/faultline/tls/ca.pem"
    )]
    pub ca: PathBuf,
    /// Bearer token (prefer the environment variable to keep it out of `ps`).
    #[arg(long, global = true, env = "FAULTLINE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Name to verify in the coordinator's certificate (default: the URL's host).
    #[arg(long, global = true)]
    pub tls_server_name: Option<String>,
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Subcommand)]
pub enum Command {
    /// Start an experiment from a spec file and/or flags.
    Run(Box<RunArgs>),
    /// Remove every effect (of one experiment, or all) and engage the kill switch.
    Abort {
        /// Only this experiment (default: every experiment and every node).
        #[arg(long)]
        experiment: Option<String>,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Clear the kill switch engaged by an abort (admin).
    ClearKillSwitch,
    /// Kill switch, running experiments, connected agents.
    Status,
    /// Registered nodes and their agents.
    Nodes,
    /// Recent experiments, newest first.
    Experiments {
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// One experiment and its outcome.
    Experiment { id: String },
    /// Print shell completions.
    Completions { shell: clap_complete::Shell },
}

/// `faultline run`: a spec file (the reference report's scenario blocks work as
/// they stand), flags, or both (flags override the file's fields).
#[derive(clap::Args)]
pub struct RunArgs {
    /// A YAML experiment spec.
    pub spec: Option<PathBuf>,
    #[arg(long)]
    pub name: Option<String>,
    /// Target node (repeatable; blast_radius.max_nodes applies).
    #[arg(long = "node")]
    pub nodes: Vec<String>,
    /// The scenario (the report's names, or loss, latency, cpu, memory, gc, cache).
    #[arg(long)]
    pub fault: Option<String>,
    #[arg(long)]
    pub iface: Option<String>,
    #[arg(long)]
    pub direction: Option<String>,
    /// Loss percent (loss; extra loss for latency), node CPU percent (cpu) or
    /// MemTotal percent (memory).
    #[arg(long, allow_negative_numbers = true)]
    pub percent: Option<String>,
    #[arg(long)]
    pub delay: Option<String>,
    #[arg(long)]
    pub jitter: Option<String>,
    #[arg(long)]
    pub duration: Option<String>,
    #[arg(long)]
    pub proto: Option<String>,
    #[arg(long)]
    pub port: Option<String>,
    #[arg(long)]
    pub dport: Option<String>,
    #[arg(long)]
    pub sport: Option<String>,
    #[arg(long)]
    pub src: Option<String>,
    #[arg(long)]
    pub dst: Option<String>,
    /// gc: the workload cgroup to squeeze; cache: a cgroup v2 workload whose file
    /// cache to reclaim (relative to the cgroup root).
    #[arg(long)]
    pub target_cgroup: Option<String>,
    /// gc: squeeze the soft memory limit to this share of current usage (50-99).
    #[arg(long)]
    pub to_percent: Option<f64>,
    /// cache: a file or directory whose page cache to evict (repeatable).
    #[arg(long = "path")]
    pub paths: Vec<String>,
    /// gc, cache: NAME=URL, a node-local endpoint to POST to (repeatable).
    #[arg(long = "hook")]
    pub hooks: Vec<String>,
    /// cache, gc: an application component of the coordinator's config (repeatable).
    #[arg(long = "component")]
    pub components: Vec<String>,
    #[arg(long)]
    pub baseline: Option<String>,
    /// The recovery timeout.
    #[arg(long)]
    pub recovery: Option<String>,
    /// Queue until the lease is free instead of being refused.
    #[arg(long)]
    pub queue: bool,
    /// Stream progress until the experiment ends; the exit code tells how it ended.
    #[arg(long)]
    pub wait: bool,
}

pub fn secs(d: Option<&prost_types::Duration>) -> Option<f64> {
    d.and_then(|d| Duration::try_from(*d).ok())
        .map(|d| d.as_secs_f64())
}
