//! `faultline`: the thin client CI pipelines and people use. It speaks ChaosService
//! over TLS with a bearer token. One file per verb; `exit` has the exit codes.
mod abort;
mod args;
mod audit;
mod connection;
mod exit;
mod experiments;
mod finding;
mod gameday;
mod nodes;
mod render;
mod report;
mod run;
mod schedule;
mod spec;
mod status;
mod table;

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use crate::{
    args::{Cli, Command},
    exit::Fail,
};

async fn execute(cli: &Cli) -> Result<u8, Fail> {
    match &cli.command {
        Command::Run(args) => run::run(cli, args).await,
        Command::Abort { experiment, reason } => abort::abort(cli, experiment, reason).await,
        Command::ClearKillSwitch => abort::clear_kill_switch(cli).await,
        Command::Status { no_readiness } => status::status(cli, *no_readiness).await,
        Command::Report(args) => report::report(cli, args).await,
        Command::Audit { since, limit } => audit::audit(cli, *since, *limit).await,
        Command::Schedule { action } => schedule::schedule(cli, action).await,
        Command::Gameday { action } => gameday::gameday(cli, action).await,
        Command::Finding { action } => finding::finding(cli, action).await,
        Command::Nodes => nodes::nodes(cli).await,
        Command::Experiments { limit } => experiments::list(cli, *limit).await,
        Command::Experiment { id } => experiments::one(cli, id).await,
        Command::Docs { dir } => faultline_proto::docs::write(Cli::command(), dir)
            .map(|files| {
                println!("wrote {} file(s) under {}", files.len(), dir.display());
                0
            })
            .map_err(|e| {
                Fail(
                    exit::INFRA,
                    format!("cannot write under {}: {e}", dir.display()),
                )
            }),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "faultline", &mut script);
            // A closed pipe (`| head`) is the reader's choice, not an error.
            let _ = std::io::Write::write_all(&mut std::io::stdout(), &script);
            Ok(0)
        }
    }
}

fn main() -> ExitCode {
    // `faultline experiments | head`: a reader that stops reading ends the CLI
    // quietly, as it does any Unix filter, instead of a panic on the next print.
    // SAFETY: signal(2) with SIG_DFL, before any thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("faultline: error: {e}");
            return ExitCode::from(exit::INFRA);
        }
    };
    match runtime.block_on(execute(&cli)) {
        Ok(code) => ExitCode::from(code),
        Err(Fail(code, msg)) => {
            eprintln!("faultline: error: {msg}");
            ExitCode::from(code)
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
