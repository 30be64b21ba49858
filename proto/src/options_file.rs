//! Daemon options from a YAML file (feature `logging`): the agent's `--config`
//! file, the coordinator's `--config` file's `serve:` section. Each key is a long
//! flag of the command it configures (`node_name` and `node-name` both mean
//! `--node-name`), a list gives a repeatable flag several values, `true` sets a
//! switch. Precedence: the command line, then the flag's environment variable, then
//! the file, then the built-in default.
//!
//! Invariant: a key that is not a flag of that command, or a value of the wrong
//! shape, is an error naming the file and the key; nothing is silently ignored.
use std::ffi::OsString;

use serde_yaml_ng::{Mapping, Value};

/// `args` (argv, program name first) with the options in `file_options` appended
/// for every flag that neither `args` nor its environment variable sets. `scope` is
/// the subcommand the options belong to (`["run"]`, `["serve"]`); flags global to
/// the whole command are accepted too.
pub fn apply(
    cmd: &clap::Command,
    scope: &[&str],
    mut args: Vec<OsString>,
    file_options: &Mapping,
    file: &str,
) -> Result<Vec<OsString>, String> {
    let mut sub = cmd;
    for name in scope {
        sub = sub
            .find_subcommand(name)
            .ok_or_else(|| format!("no subcommand {name}"))?;
    }
    let flags: Vec<&clap::Arg> = sub
        .get_arguments()
        .chain(cmd.get_arguments().filter(|a| a.is_global_set()))
        .filter(|a| a.get_long().is_some())
        .collect();
    let given = |long: &str| {
        let flag = format!("--{long}");
        args.iter().any(|a| {
            a.to_str()
                .is_some_and(|a| a == flag || a.starts_with(&format!("{flag}=")))
        })
    };
    let mut extra = Vec::new();
    for (key, value) in file_options {
        let key = key
            .as_str()
            .ok_or_else(|| format!("{file}: option names are strings"))?;
        let long = key.replace('_', "-");
        let Some(arg) = flags.iter().find(|a| a.get_long() == Some(long.as_str())) else {
            let mut known: Vec<&str> = flags.iter().filter_map(|a| a.get_long()).collect();
            known.retain(|k| !matches!(*k, "help" | "version"));
            return Err(format!(
                "{file}: unknown option '{key}' (known: {})",
                known.join(", ")
            ));
        };
        let from_env = arg.get_env().is_some_and(|e| std::env::var_os(e).is_some());
        if given(&long) || from_env {
            continue;
        }
        let takes_value = arg.get_action().takes_values();
        let scalar = |v: &Value| -> Result<String, String> {
            match v {
                Value::String(s) => Ok(s.clone()),
                Value::Number(n) => Ok(n.to_string()),
                Value::Bool(b) => Ok(b.to_string()),
                _ => Err(format!("{file}: option '{key}' takes a value, not {v:?}")),
            }
        };
        match value {
            Value::Bool(true) if !takes_value => extra.push(format!("--{long}")),
            Value::Bool(false) if !takes_value => {}
            _ if !takes_value => {
                return Err(format!("{file}: option '{key}' is a switch: true or false"));
            }
            Value::Sequence(items) => {
                for item in items {
                    extra.push(format!("--{long}={}", scalar(item)?));
                }
            }
            Value::Null => {}
            v => extra.push(format!("--{long}={}", scalar(v)?)),
        }
    }
    args.extend(extra.into_iter().map(OsString::from));
    Ok(args)
}

/// What a daemon's `main` calls first: `args` with the options of the `--config`
/// file that `args` (or its environment variable) names for subcommand `scope`,
/// read from the file's `section` (or the whole document) and added as `apply`
/// does. `args` comes back as it was when the subcommand is another or names no file.
pub fn args_with_file(
    cmd: &clap::Command,
    scope: &str,
    section: Option<&str>,
    args: Vec<OsString>,
) -> Result<Vec<OsString>, String> {
    // Required flags may be in the file: find the file and the subcommand without
    // insisting on them.
    let probe = cmd
        .clone()
        .ignore_errors(true)
        .try_get_matches_from(&args)
        .ok();
    let path = probe
        .as_ref()
        .and_then(|m| m.subcommand_matches(scope))
        .and_then(|m| m.get_one::<std::path::PathBuf>("config"))
        .cloned();
    let Some(path) = path else { return Ok(args) };
    let options = read(&path, section)?;
    apply(cmd, &[scope], args, &options, &label(&path, section))
}

/// `check-config`: the file's options (its `section`, or the whole document) are
/// flags of subcommand `scope`, each of the right shape. Returns how many it holds.
pub fn check(
    cmd: &clap::Command,
    scope: &str,
    section: Option<&str>,
    path: &std::path::Path,
) -> Result<usize, String> {
    let options = read(path, section)?;
    let argv = vec![OsString::from(cmd.get_name()), OsString::from(scope)];
    apply(cmd, &[scope], argv, &options, &label(path, section))?;
    Ok(options.len())
}

/// How errors name the file (and its section).
fn label(path: &std::path::Path, section: Option<&str>) -> String {
    match section {
        Some(s) => format!("{} ({s}:)", path.display()),
        None => path.display().to_string(),
    }
}

/// The options mapping of a YAML document (the whole document, or one section).
pub fn read(path: &std::path::Path, section: Option<&str>) -> Result<Mapping, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let doc: Value = serde_yaml_ng::from_str(text.strip_prefix('\u{feff}').unwrap_or(&text))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let doc = match section {
        Some(s) => doc.get(s).cloned().unwrap_or(Value::Null),
        None => doc,
    };
    match doc {
        Value::Mapping(m) => Ok(m),
        Value::Null => Ok(Mapping::new()),
        _ => Err(format!(
            "{}: {} is not a mapping of options",
            path.display(),
            section.unwrap_or("the document")
        )),
    }
}

#[cfg(test)]
mod tests {
    use clap::{Arg, ArgAction, Command};

    use super::*;

    fn cmd() -> Command {
        Command::new("agent")
            .arg(Arg::new("state_dir").long("state-dir").global(true))
            .subcommand(
                Command::new("run")
                    .arg(Arg::new("node_name").long("node-name"))
                    .arg(Arg::new("label").long("label").action(ArgAction::Append))
                    .arg(Arg::new("quiet").long("quiet").action(ArgAction::SetTrue))
                    .arg(Arg::new("port").long("port").env("FL_TEST_OPTIONS_PORT")),
            )
    }

    fn args(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    fn map(yaml: &str) -> Mapping {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn file_options_fill_what_the_command_line_does_not_set() {
        let out = apply(
            &cmd(),
            &["run"],
            args(&["agent", "run", "--node-name", "cli"]),
            &map("node_name: file\nstate-dir: /s\nlabel: [a=1, b=2]\nquiet: true\nport: 7\n"),
            "agent.yaml",
        )
        .unwrap();
        assert_eq!(
            out,
            args(&[
                "agent",
                "run",
                "--node-name",
                "cli",
                "--state-dir=/s",
                "--label=a=1",
                "--label=b=2",
                "--quiet",
                "--port=7"
            ])
        );
        let parsed = cmd().try_get_matches_from(out).unwrap();
        let run = parsed.subcommand_matches("run").unwrap();
        assert_eq!(run.get_one::<String>("node_name").unwrap(), "cli");
        assert_eq!(run.get_many::<String>("label").unwrap().count(), 2);
    }

    #[test]
    fn unknown_keys_and_wrong_shapes_are_errors_naming_the_key() {
        let e = apply(
            &cmd(),
            &["run"],
            args(&["agent", "run"]),
            &map("nodename: x"),
            "a.yaml",
        )
        .unwrap_err();
        assert!(
            e.contains("unknown option 'nodename'") && e.contains("node-name"),
            "{e}"
        );
        let e = apply(
            &cmd(),
            &["run"],
            args(&["agent", "run"]),
            &map("quiet: loud"),
            "a.yaml",
        )
        .unwrap_err();
        assert!(e.contains("'quiet' is a switch"), "{e}");
        let e = apply(
            &cmd(),
            &["run"],
            args(&["agent", "run"]),
            &map("node_name: {a: 1}"),
            "a.yaml",
        )
        .unwrap_err();
        assert!(e.contains("'node_name' takes a value"), "{e}");
    }
}
