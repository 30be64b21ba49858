//! The flags of a network fault (where, which way, how long, how shown) and of the
//! caps that apply to any fault.
use std::{path::PathBuf, time::Duration};

use anyhow::Result;
use clap::{Args, ValueEnum};
use faultline_proto::limits::{ChaosLimits, Profile};

use crate::{
    ebpf::{Dir, TcMode},
    errors::UsageError,
    filter::FilterArgs,
    output::Output,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Direction {
    Ingress,
    Egress,
    Both,
}

impl Direction {
    pub(super) fn dirs(self) -> &'static [Dir] {
        match self {
            Direction::Ingress => &[Dir::Ingress],
            Direction::Egress => &[Dir::Egress],
            Direction::Both => &[Dir::Ingress, Dir::Egress],
        }
    }
}

/// Where the fault's program attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Attach {
    /// tc (TCX or clsact): both directions.
    Tc,
    /// XDP: ingress only, earliest point in the receive path.
    Xdp,
}

/// Where and for how long a network fault applies, and how it is shown.
#[derive(Args, Clone, Debug)]
pub struct TargetArgs {
    /// Interface to act on (in the agent's network namespace).
    #[arg(long)]
    pub iface: String,
    /// Which packets: those arriving on the interface, leaving it, or both.
    #[arg(long, value_enum, default_value_t = Direction::Ingress)]
    pub direction: Direction,
    /// How long the fault lasts, e.g. 60s or 2m; also written into the kernel as a deadline.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Where the program attaches: tc (both directions) or xdp (ingress only).
    #[arg(long, value_enum, default_value_t = Attach::Tc)]
    pub attach: Attach,
    /// How a tc program attaches: TCX links (kernel >= 6.6), a clsact qdisc via
    /// netlink (any kernel), or auto (TCX where the kernel has it).
    #[arg(long, value_enum, default_value_t = TcMode::Auto)]
    pub tc_mode: TcMode,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Emit aya-log records from the eBPF programs (costly; for debugging).
    #[arg(long)]
    pub debug_ebpf: bool,
    /// Live counters and the summary as text lines or as JSON objects (one per line).
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Attach with the fault disarmed: the programs run and count but never act.
    /// For benchmarks of the idle cost of an attached program.
    #[arg(long, hide = true)]
    pub disarmed: bool,
    /// How often live counters are printed.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    pub interval: Duration,
}

/// Which caps apply: a built-in profile or an operator's `chaos_limits` file.
#[derive(Args, Clone, Debug)]
pub struct LimitArgs {
    /// Built-in caps: production (reference limits) or staging.
    #[arg(long, global = true, default_value = "production")]
    pub profile: Profile,
    /// A chaos_limits YAML file that replaces the built-in profile's caps.
    #[arg(long, global = true, env = "FAULTLINE_LIMITS")]
    pub limits: Option<PathBuf>,
}

impl LimitArgs {
    /// These options as command-line arguments, for the daemon's fault children.
    pub fn to_args(&self) -> Vec<String> {
        match &self.limits {
            Some(path) => vec!["--limits".into(), path.display().to_string()],
            None => vec!["--profile".into(), self.profile.to_string()],
        }
    }

    pub fn load(&self) -> Result<(ChaosLimits, String)> {
        Ok(
            ChaosLimits::load(self.limits.as_deref(), self.profile, "agent")
                .map_err(|e| UsageError(e.to_string()))?,
        )
    }
}

impl TargetArgs {
    /// An order's target: what the flags would give, with the defaults of the flags
    /// an order does not carry (tc, the automatic tc mode, armed, no eBPF logs).
    pub fn ordered(
        iface: String,
        direction: Direction,
        duration: Duration,
        filter: FilterArgs,
        interval: Duration,
    ) -> Self {
        Self {
            iface,
            direction,
            duration,
            attach: Attach::Tc,
            tc_mode: TcMode::Auto,
            filter,
            debug_ebpf: false,
            output: Output::Json,
            disarmed: false,
            interval,
        }
    }

    pub(super) fn validate(&self) -> Result<(), UsageError> {
        if self.duration.is_zero() {
            return Err(UsageError("--duration must be greater than zero".into()));
        }
        if self.interval.is_zero() {
            return Err(UsageError("--interval must be greater than zero".into()));
        }
        if self.attach == Attach::Xdp {
            if self.direction != Direction::Ingress {
                return Err(UsageError(
                    "--attach xdp only sees ingress traffic; use --attach tc for egress".into(),
                ));
            }
            if self.tc_mode != TcMode::Auto {
                return Err(UsageError("--tc-mode applies to --attach tc only".into()));
            }
        }
        Ok(())
    }
}
