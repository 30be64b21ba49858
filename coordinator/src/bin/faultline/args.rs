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
    /// Text for a person, JSON for a script or a pipeline.
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
        /// Why (kept in the audit log and the experiment's outcome).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Clear the kill switch engaged by an abort (admin).
    ClearKillSwitch,
    /// The chaos dashboard: current status, last test, 30-day statistics, next
    /// scheduled test, system health, chaos readiness, kill switch.
    Status {
        /// Skip the readiness dry run (a health window, about 5 s).
        #[arg(long)]
        no_readiness: bool,
    },
    /// Registered nodes and their agents.
    Nodes,
    /// Recent experiments, newest first.
    Experiments {
        /// How many to list.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// One experiment and its outcome.
    Experiment {
        /// The experiment's id (as `run` and `experiments` print it).
        id: String,
    },
    /// An experiment's report (Markdown, or JSON with -o json), or with --since the
    /// fleet summary.
    Report(ReportArgs),
    /// Schedules: list, show, pause, resume, next, runs.
    Schedule {
        #[command(subcommand)]
        action: ScheduleAction,
    },
    /// Game days: open, close, note, list, show.
    Gameday {
        #[command(subcommand)]
        action: GamedayAction,
    },
    /// Findings: what experiments uncovered.
    Finding {
        #[command(subcommand)]
        action: FindingAction,
    },
    /// The audit log: who started, aborted, cleared the kill switch, opened a game
    /// day, changed a schedule (admin).
    Audit {
        /// How far back, e.g. 7d or 12h.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "7d")]
        since: Duration,
        /// At most this many entries, newest first.
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    },
    /// Print shell completions.
    Completions {
        /// The shell to write the script for.
        shell: clap_complete::Shell,
    },
    /// Write this program's man pages and bash, zsh and fish completions under a
    /// directory (`man/man1/`, `completions/<shell>/`): what the packages install.
    Docs {
        /// The directory to write into (created if missing).
        dir: PathBuf,
    },
}

#[derive(clap::Args)]
pub struct ReportArgs {
    /// The experiment (omit with --since for the fleet summary).
    pub experiment: Option<String>,
    /// The fleet summary over this window, e.g. 30d, 7d, 12h.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub since: Option<Duration>,
    /// Only this scenario (the report's names).
    #[arg(long)]
    pub scenario: Option<String>,
    /// Also write a JUnit XML file: one test case per experiment in the window.
    #[arg(long)]
    pub junit: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum ScheduleAction {
    /// Every entry with its next run and last result, and the blackout windows.
    List,
    /// One entry: its spec, next run and recent runs.
    Show {
        /// The entry's name in the schedule file.
        name: String,
    },
    /// Stop firing an entry's slots until it is resumed (operator; audited).
    Pause {
        /// The entry's name in the schedule file.
        name: String,
    },
    /// Fire a paused entry's slots again (operator; audited).
    Resume {
        /// The entry's name in the schedule file.
        name: String,
    },
    /// The next runs across all entries, soonest first.
    Next {
        /// How many runs to show.
        #[arg(long, default_value_t = 5)]
        count: usize,
    },
    /// Decided slots (started, skipped, missed) with their reasons.
    Runs {
        /// How far back, e.g. 7d or 12h.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "7d")]
        since: Duration,
        /// Only this entry.
        #[arg(long)]
        name: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum GamedayAction {
    /// Announce and open a game day (admin). Inside it several experiments may run at
    /// once under the game-day limits.
    Open {
        /// What the game day is, e.g. "Q4 network partition drill".
        #[arg(long)]
        title: String,
        /// The text shown to everyone (status, dashboard) while it is open.
        #[arg(long, default_value = "")]
        announcement: String,
        /// RFC 3339 start (default: now).
        #[arg(long)]
        start: Option<String>,
        /// How long it lasts, e.g. 2h.
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Experiments that may run at once inside it (0: the limits' game-day value).
        #[arg(long, default_value_t = 0)]
        max_concurrent: u32,
        /// Nodes that may be under a fault at once (0: the limits' game-day value).
        #[arg(long, default_value_t = 0)]
        max_nodes: u32,
    },
    /// Close it now; what still runs is ended (admin).
    Close {
        /// The game day (default: the open one).
        #[arg(long, default_value = "")]
        id: String,
        /// Why it closes (kept in its report and the audit log).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Record an issue found, a lesson learned or a note.
    Note {
        /// An issue found, a lesson learned, or a plain note.
        #[arg(long, value_enum)]
        kind: NoteKindArg,
        /// The note itself.
        text: String,
        /// The game day (default: the open one).
        #[arg(long, default_value = "")]
        id: String,
    },
    /// Game days, newest first.
    List,
    /// The game-day report: scenarios tested, issues found, lessons learned.
    Show {
        /// The game day (default: the open or the last one).
        #[arg(default_value = "")]
        id: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum NoteKindArg {
    Issue,
    Lesson,
    Note,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum FindingStatusArg {
    Open,
    Mitigated,
    Resolved,
}

#[derive(Subcommand)]
pub enum FindingAction {
    /// Record what an experiment uncovered.
    Add {
        /// The experiment that uncovered it.
        #[arg(long)]
        experiment: String,
        /// One line, e.g. "retry storm when the cache is cold".
        #[arg(long)]
        title: String,
        /// Where it stands.
        #[arg(long, value_enum, default_value = "open")]
        status: FindingStatusArg,
        /// What happened, what was measured, what to change.
        #[arg(long, default_value = "")]
        detail: String,
    },
    /// Change a finding's status.
    Update {
        /// The finding's id (as `finding list` prints it).
        id: String,
        /// Its new status.
        #[arg(long, value_enum)]
        status: FindingStatusArg,
    },
    /// Every finding, newest first.
    List,
}

/// `faultline run`: a spec file (the reference report's scenario blocks work as
/// they stand), flags, or both (flags override the file's fields).
#[derive(clap::Args)]
pub struct RunArgs {
    /// A YAML experiment spec.
    pub spec: Option<PathBuf>,
    /// The experiment's name (default: the spec's, or one made from the fault).
    #[arg(long)]
    pub name: Option<String>,
    /// Target node (repeatable; blast_radius.max_nodes applies).
    #[arg(long = "node")]
    pub nodes: Vec<String>,
    /// The scenario (the report's names, or loss, latency, cpu, memory, gc, cache).
    #[arg(long)]
    pub fault: Option<String>,
    /// loss, latency: the interface on the node to act on.
    #[arg(long)]
    pub iface: Option<String>,
    /// loss, latency: ingress, egress or both.
    #[arg(long)]
    pub direction: Option<String>,
    /// Loss percent (loss; extra loss for latency), node CPU percent (cpu) or
    /// MemTotal percent (memory).
    #[arg(long, allow_negative_numbers = true)]
    pub percent: Option<String>,
    /// latency: the delay added to each matching packet, e.g. 50ms.
    #[arg(long)]
    pub delay: Option<String>,
    /// latency: the spread around the delay, e.g. 10ms.
    #[arg(long)]
    pub jitter: Option<String>,
    /// How long the fault lasts, e.g. 60s or 5m (the limits' max_duration applies).
    #[arg(long)]
    pub duration: Option<String>,
    /// Filter: only this protocol (tcp, udp, sctp, icmp).
    #[arg(long)]
    pub proto: Option<String>,
    /// Filter: source or destination port N or range N-M (needs --proto with ports).
    #[arg(long)]
    pub port: Option<String>,
    /// Filter: destination port N or range N-M.
    #[arg(long)]
    pub dport: Option<String>,
    /// Filter: source port N or range N-M.
    #[arg(long)]
    pub sport: Option<String>,
    /// Filter: source address or network, e.g. 10.0.0.0/8.
    #[arg(long)]
    pub src: Option<String>,
    /// Filter: destination address or network, e.g. 10.1.2.3/32.
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
    /// How long the steady state is measured before the fault, e.g. 30s.
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

pub use faultline_proto::v1::duration_secs as secs;
