//! faultline-coordinator. The control plane (gRPC sessions, leases, experiments) is
//! not built yet; what exists is the safety-limit tooling it will enforce, so that
//! operators can validate the `chaos_limits` file they deploy to the coordinator and
//! to every agent (which enforces the same file on its own).
use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use faultline_proto::limits::{ChaosLimits, Profile};

#[derive(Parser)]
#[command(
    name = "faultline-coordinator",
    version,
    about = "faultline's control plane"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a built-in profile as a chaos_limits document (a starting point for a file).
    ShowLimits {
        #[arg(long, default_value = "production")]
        profile: Profile,
    },
    /// Validate a chaos_limits file; prints it normalised, exit 2 with the reason if invalid.
    CheckLimits { file: PathBuf },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::ShowLimits { profile } => {
            print!("{}", ChaosLimits::profile(profile).to_yaml());
            ExitCode::SUCCESS
        }
        Command::CheckLimits { file } => match ChaosLimits::from_file(&file) {
            Ok(limits) => {
                print!("{}", limits.to_yaml());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("faultline-coordinator: error: {e}");
                ExitCode::from(2)
            }
        },
    }
}
