//! What the binaries' flags say about themselves: man pages and shell completions
//! written from the clap definitions (so they cannot drift from the flags), and the
//! rule that every flag a person can see carries a help line, which the man pages
//! are made of. Each binary runs `undocumented` in a unit test and exposes `write`
//! as its `docs` subcommand, which packaging calls.
use std::{
    fs,
    path::{Path, PathBuf},
};

use clap::Command;
use clap_complete::Shell;

/// Every visible flag or argument without a help line, as `program sub --flag`.
/// Hidden subcommands (the agent's own helper processes) and clap's built-in
/// `--help`/`--version` are left out.
pub fn undocumented(command: &Command) -> Vec<String> {
    let mut missing = Vec::new();
    walk(command, command.get_name(), &mut missing);
    missing
}

fn walk(command: &Command, path: &str, missing: &mut Vec<String>) {
    for arg in command.get_arguments() {
        if arg.is_hide_set() || arg.get_help().is_some() || arg.get_long_help().is_some() {
            continue;
        }
        let id = arg.get_id().as_str();
        if id == "help" || id == "version" {
            continue;
        }
        let name = match arg.get_long() {
            Some(long) => format!("--{long}"),
            None => format!("<{}>", id.to_uppercase()),
        };
        missing.push(format!("{path} {name}"));
    }
    for sub in command.get_subcommands() {
        if sub.is_hide_set() || sub.get_name() == "help" {
            continue;
        }
        walk(sub, &format!("{path} {}", sub.get_name()), missing);
    }
}

/// The shells completions are written for: the shell, its folder, and the file
/// name's prefix and suffix around the program's name (what each shell's system
/// completion directory expects).
const SHELLS: [(Shell, &str, &str, &str); 3] = [
    (Shell::Bash, "bash", "", ""),
    (Shell::Zsh, "zsh", "_", ""),
    (Shell::Fish, "fish", "", ".fish"),
];

/// Writes `man/man1/<program>[-<sub>...].1` for the program and each visible
/// subcommand, and `completions/{bash,zsh,fish}/...` under `dir`, in the file names
/// each shell's system directory expects. Returns the files written.
pub fn write(command: Command, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut command = command;
    command.build();
    let mut written = Vec::new();
    let man = dir.join("man/man1");
    fs::create_dir_all(&man)?;
    pages(&command, command.get_name().to_string(), &man, &mut written)?;
    let name = command.get_name().to_string();
    for (shell, folder, prefix, suffix) in SHELLS {
        let folder = dir.join("completions").join(folder);
        fs::create_dir_all(&folder)?;
        let path = folder.join(format!("{prefix}{name}{suffix}"));
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut command, &name, &mut out);
        fs::write(&path, out)?;
        written.push(path);
    }
    Ok(written)
}

fn pages(
    command: &Command,
    name: String,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> std::io::Result<()> {
    let page = command.clone().name(name.clone());
    let mut out = Vec::new();
    clap_mangen::Man::new(page).render(&mut out)?;
    let path = dir.join(format!("{name}.1"));
    fs::write(&path, out)?;
    written.push(path);
    for sub in command.get_subcommands() {
        if sub.is_hide_set() || sub.get_name() == "help" {
            continue;
        }
        pages(sub, format!("{name}-{}", sub.get_name()), dir, written)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::{Arg, Command};

    use super::*;

    #[test]
    fn a_flag_without_help_is_named_with_its_subcommand() {
        let cmd = Command::new("prog")
            .arg(Arg::new("quiet").long("quiet").help("Say less."))
            .subcommand(
                Command::new("run")
                    .arg(Arg::new("iface").long("iface"))
                    .arg(Arg::new("file")),
            )
            .subcommand(
                Command::new("__child")
                    .hide(true)
                    .arg(Arg::new("x").long("x")),
            );
        assert_eq!(undocumented(&cmd), ["prog run --iface", "prog run <FILE>"]);
    }

    #[test]
    fn pages_and_completions_are_written_for_every_visible_subcommand() {
        let dir = std::env::temp_dir().join(format!("fl-docs-{}", std::process::id()));
        let cmd = Command::new("prog")
            .about("A program.")
            .subcommand(Command::new("run").about("Run it."))
            .subcommand(Command::new("__child").hide(true));
        let written = write(cmd, &dir).unwrap();
        let names: Vec<String> = written
            .iter()
            .map(|p| p.strip_prefix(&dir).unwrap().display().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "man/man1/prog.1",
                "man/man1/prog-run.1",
                "completions/bash/prog",
                "completions/zsh/_prog",
                "completions/fish/prog.fish"
            ]
        );
        let page = fs::read_to_string(dir.join("man/man1/prog-run.1")).unwrap();
        assert!(page.contains("Run it."), "{page}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
