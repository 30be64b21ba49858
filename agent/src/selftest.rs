//! `faultline-agent self-test --iface IF`: rollback readiness, the reference
//! report's "rollback system active". It exercises the paths that remove effects,
//! for real and with nothing armed: a cgroup is created and removed (where the node
//! has a cgroup filesystem), and the fault programs are attached to the interface
//! disarmed (they pass every packet), with their journal written ahead, then
//! detached and the journal cleared, exactly as a fault's removal does. Exit 0: every
//! step passed; otherwise the failing step is named.
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use serde_json::json;

use crate::{cgroup, inject};

#[derive(clap::Args, Clone, Debug)]
pub struct SelfTestArgs {
    /// The interface a network fault would use.
    #[arg(long)]
    pub iface: String,
    #[arg(long, default_value = "/sys/fs/cgroup", hide = true)]
    pub cgroup_root: PathBuf,
    /// Report to the daemon that started it, typed, instead of printing.
    #[arg(long, hide = true)]
    pub report: bool,
}

/// The disarmed attach is a `loss` injection of its own, parsed like any other.
#[derive(Parser)]
struct DisarmedLoss {
    #[command(flatten)]
    target: inject::TargetArgs,
    #[command(flatten)]
    loss: crate::faults::loss::LossArgs,
}

fn step(name: &str, ok: bool, detail: &str) {
    if crate::report::active() {
        return;
    }
    println!(
        "{}",
        json!({"event": "self_test", "step": name, "ok": ok, "detail": detail})
    );
}

pub async fn run(state_dir: PathBuf, limits: inject::LimitArgs, args: SelfTestArgs) -> Result<()> {
    if args.report {
        crate::report::enable();
    }
    match cgroup::detect(&args.cgroup_root, None) {
        Ok(fs) => {
            let group = fs
                .create(&cgroup::group_name("selftest"))
                .context("self-test: creating a cgroup")?;
            group.remove().context("self-test: removing a cgroup")?;
            step(
                "cgroup",
                true,
                &format!("created and removed a v{} group", fs.version()),
            );
        }
        Err(e) => step("cgroup", true, &format!("skipped: {e:#}")),
    }
    if args.iface.is_empty() {
        step(
            "tc",
            true,
            "skipped: no interface to test (the node has no default route)",
        );
    } else {
        disarmed_attach(&state_dir, limits, &args.iface).await?;
    }
    // TCX links need no journal entry, so write it explicitly: removal after a crash
    // depends on it.
    let journal = crate::journal::JournalFile::open(&state_dir).context("self-test: journal")?;
    let recorded = journal.load().context("self-test: reading the journal")?;
    journal
        .store(&recorded)
        .context("self-test: writing the journal")?;
    step("journal", true, &format!("wrote {}", state_dir.display()));
    step("done", true, "rollback ready");
    Ok(())
}

async fn disarmed_attach(
    state_dir: &std::path::Path,
    limits: inject::LimitArgs,
    iface: &str,
) -> Result<()> {
    let DisarmedLoss { target, loss } = DisarmedLoss::try_parse_from([
        "self-test",
        &format!("--iface={iface}"),
        "--percent=0",
        "--duration=100ms",
        "--disarmed",
        "--output=json",
    ])
    .context("self-test arguments")?;
    inject::loss(state_dir.to_owned(), limits, target, loss)
        .await
        .with_context(|| format!("self-test: attaching a no-op program to {iface}"))?;
    step(
        "tc",
        true,
        &format!("attached, journalled, detached a disarmed program on {iface}"),
    );
    Ok(())
}
