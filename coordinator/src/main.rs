//! faultline-coordinator: the control plane. `serve` runs it; `certs` and `tokens`
//! prepare its credentials; `show-limits`/`check-limits` help write the safety limits
//! it (and every agent) enforces.
use std::{path::PathBuf, process::ExitCode};

use clap::{CommandFactory, Parser, Subcommand};
use faultline_coordinator::{
    api::{auth, certs},
    server,
};
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
    /// Run the coordinator (gRPC for agents and clients, HTTP for POST /abort).
    Serve(Box<server::ServeArgs>),
    /// Create certificates for a dev or demo setup.
    Certs {
        #[command(subcommand)]
        action: CertsAction,
    },
    /// Manage client bearer tokens (stored hashed).
    Tokens {
        #[command(subcommand)]
        action: TokensAction,
    },
    /// Print a built-in profile as a chaos_limits document (a starting point for a file).
    ShowLimits {
        /// The built-in profile: production or staging.
        #[arg(long, default_value = "production")]
        profile: Profile,
    },
    /// Validate a chaos_limits file; prints it normalised, exit 2 with the reason if invalid.
    CheckLimits {
        /// The chaos_limits file (YAML) to check.
        file: PathBuf,
    },
    /// Print the embedded config defaults of a profile (health, prerequisites, abort
    /// conditions, recovery): a starting point for --config.
    ShowConfig {
        /// The built-in profile: production or staging.
        #[arg(long, default_value = "production")]
        profile: Profile,
    },
    /// Validate a config file; exit 2 with the field and line if invalid.
    CheckConfig {
        /// The config file (YAML) to check.
        file: PathBuf,
    },
    /// Write this program's man pages and bash, zsh and fish completions under a
    /// directory (`man/man1/`, `completions/<shell>/`): what the packages install.
    Docs {
        /// The directory to write into (created if missing).
        dir: PathBuf,
    },
    /// Validate a schedule file against the limits (and config) it will run under;
    /// exit 2 with the entry, field and line if invalid.
    CheckSchedule {
        /// The schedule file (YAML) to check.
        file: PathBuf,
        /// The profile the coordinator runs with (its built-in limits and config).
        #[arg(long, default_value = "production")]
        profile: Profile,
        /// The chaos_limits file the coordinator runs with (`serve --limits`).
        #[arg(long)]
        limits: Option<PathBuf>,
        /// The config file the coordinator runs with (`serve --config`).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum CertsAction {
    /// A new CA, the coordinator's server certificate and one client certificate per agent.
    Init {
        /// Where the CA, the coordinator's and the agents' certificates and keys go.
        #[arg(long, default_value = "/etc/faultline/tls")]
        dir: PathBuf,
        /// Extra names or IP addresses the coordinator is reached at (repeatable).
        #[arg(long = "san")]
        sans: Vec<String>,
        /// Agent (node) names to issue client certificates for, comma-separated.
        #[arg(long, value_delimiter = ',')]
        agents: Vec<String>,
        /// How long the certificates are valid, in days.
        #[arg(long, default_value_t = 365)]
        days: i64,
    },
    /// Issue one more agent certificate from the CA in --dir.
    Agent {
        /// Where the CA, the coordinator's and the agents' certificates and keys go.
        #[arg(long, default_value = "/etc/faultline/tls")]
        dir: PathBuf,
        /// The node name (the certificate's common name; the agent must register with it).
        name: String,
        /// How long the certificates are valid, in days.
        #[arg(long, default_value_t = 365)]
        days: i64,
        /// Issue it already expired (for testing that expired certificates are refused).
        #[arg(long, hide = true)]
        expired: bool,
    },
}

#[derive(Subcommand)]
enum TokensAction {
    /// Add a token; prints it once (only its SHA-256 is stored).
    Add {
        /// The token file the coordinator reads (`serve --tokens`).
        #[arg(long, default_value = "/etc/faultline/tokens.yaml")]
        file: PathBuf,
        /// Who holds the token (shown in the audit log).
        #[arg(long)]
        name: String,
        /// viewer, operator (start, abort) or admin (also clears the kill switch).
        #[arg(long)]
        role: auth::Role,
    },
}

fn main() -> ExitCode {
    let args = std::env::args_os().collect();
    let options = faultline_proto::options_file::args_with_file(
        &Cli::command(),
        "serve",
        Some("serve"),
        args,
    );
    let args = match options {
        Ok(a) => a,
        Err(e) => {
            eprintln!("faultline-coordinator: error: {e}");
            return ExitCode::from(2);
        }
    };
    let cli = Cli::parse_from(args);
    let result = match cli.command {
        Command::Serve(args) => {
            faultline_proto::logging::init(args.log_format);
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|rt| {
                    let served = rt.block_on(server::serve(*args));
                    // A probe or parse still on a blocking thread must not hold the
                    // exit past the documented stop bound.
                    rt.shutdown_timeout(std::time::Duration::from_millis(500));
                    served
                })
        }
        Command::Certs {
            action:
                CertsAction::Init {
                    dir,
                    sans,
                    agents,
                    days,
                },
        } => certs::init(&dir, &sans, &agents, days).map(|()| {
            println!("certificates written to {}", dir.display());
        }),
        Command::Certs {
            action:
                CertsAction::Agent {
                    dir,
                    name,
                    days,
                    expired,
                },
        } => certs::agent(&dir, &name, days, expired).map(|p| println!("{}", p.display())),
        Command::Tokens {
            action: TokensAction::Add { file, name, role },
        } => auth::TokenFile::add(&file, &name, role).map(|t| println!("{t}")),
        Command::ShowLimits { profile } => {
            print!("{}", ChaosLimits::profile(profile).to_yaml());
            Ok(())
        }
        Command::ShowConfig { profile } => {
            print!("{}", faultline_coordinator::config::defaults_yaml(profile));
            Ok(())
        }
        Command::CheckSchedule {
            file,
            profile,
            limits,
            config,
        } => {
            let loaded = ChaosLimits::load(limits.as_deref(), profile, "coordinator")
                .map_err(|e| anyhow::anyhow!("{e}"))
                .and_then(|(l, src)| {
                    let settings =
                        faultline_coordinator::config::Settings::load(config.as_deref(), profile)?;
                    server::load_schedule(&file, &settings, &l, &src)
                });
            match loaded {
                Ok(s) => {
                    for e in &s.entries {
                        println!("{}: {} ({})", e.name, e.when.text(), e.scenario);
                    }
                    println!(
                        "{}: ok, {} entries, {} blackout windows",
                        s.source,
                        s.entries.len(),
                        s.blackouts.len()
                    );
                    Ok(())
                }
                Err(e) => {
                    eprintln!("faultline-coordinator: error: {e:#}");
                    return ExitCode::from(2);
                }
            }
        }
        Command::CheckConfig { file } => {
            // The `serve:` options are flags of `serve`; the rest is the settings.
            if let Err(e) =
                faultline_proto::options_file::check(&Cli::command(), "serve", Some("serve"), &file)
            {
                eprintln!("faultline-coordinator: error: {e}");
                return ExitCode::from(2);
            }
            match faultline_coordinator::config::Settings::load(Some(&file), Profile::Production) {
                Ok(s) => {
                    println!("{}: ok", s.source);
                    Ok(())
                }
                Err(e) => {
                    eprintln!("faultline-coordinator: error: {e:#}");
                    return ExitCode::from(2);
                }
            }
        }
        Command::Docs { dir } => faultline_proto::docs::write(Cli::command(), &dir)
            .map(|files| println!("wrote {} file(s) under {}", files.len(), dir.display()))
            .map_err(|e| anyhow::anyhow!("cannot write under {}: {e}", dir.display())),
        Command::CheckLimits { file } => match ChaosLimits::from_file(&file) {
            Ok(limits) => {
                print!("{}", limits.to_yaml());
                Ok(())
            }
            Err(e) => {
                eprintln!("faultline-coordinator: error: {e}");
                return ExitCode::from(2);
            }
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("faultline-coordinator: error: {e:#}");
            ExitCode::from(1)
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
