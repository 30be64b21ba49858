//! Removing what an earlier agent left behind in this network namespace: faultline's
//! own clsact filters (recognised by program name; nothing else is touched), any
//! clsact qdisc it created that is now empty, root qdiscs it replaced (restored from
//! the journal's snapshot) and its IFB devices.
use anyhow::Result;
use aya::programs::tc::qdisc_detach_program;
use faultline_common::{PROG_TC_EGRESS, PROG_TC_INGRESS, PROG_TO_IFB};

use crate::{
    ebpf::Dir,
    journal::{Journal, JournalFile},
    preflight, tc,
};

/// Returns one line per thing removed.
pub async fn reconcile(journal: &JournalFile) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    let recorded = journal.load()?;
    // Filters live only under a clsact qdisc; skip every other interface.
    let with_clsact = tc::clsact_ifindexes().await?;
    for (iface, ifindex) in preflight::interfaces() {
        if !with_clsact.contains(&ifindex) {
            continue;
        }
        let ours = [
            (Dir::Ingress, PROG_TC_INGRESS),
            (Dir::Ingress, PROG_TO_IFB),
            (Dir::Egress, PROG_TC_EGRESS),
        ];
        for (dir, program) in ours {
            match qdisc_detach_program(&iface, dir.tc_attach_type(), program) {
                Ok(()) => removed.push(format!(
                    "removed leftover {program} filter on {iface} {dir}"
                )),
                Err(aya::programs::tc::TcError::IoError(e))
                    if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(anyhow::anyhow!(
                        "cannot remove leftover {program} filter on {iface} {dir}: {e}"
                    ));
                }
            }
        }
    }
    for q in &recorded.qdiscs {
        let Ok(ifindex) = preflight::interface_index(&q.iface) else {
            continue; // the device is gone, and its qdiscs with it
        };
        let note = crate::qdisc::restore(ifindex, &q.original).await?;
        removed.push(format!(
            "restored the root qdisc of {} to {}{}",
            q.iface,
            q.original.describe(),
            note.map(|n| format!(" ({n})")).unwrap_or_default()
        ));
    }
    // One agent per namespace: any IFB of ours here belongs to a dead agent.
    for (name, _) in preflight::interfaces() {
        let ours = recorded.ifbs.contains(&name) || crate::qdisc::is_agent_ifb(&name);
        if ours && crate::qdisc::delete_link(&name).await? {
            removed.push(format!("removed leftover IFB device {name}"));
        }
    }
    let mut seen = Vec::new();
    for entry in recorded.entries.iter().filter(|e| e.created_clsact) {
        if seen.contains(&entry.iface) {
            continue;
        }
        seen.push(entry.iface.clone());
        if let Some(line) = remove_own_clsact(&entry.iface).await? {
            removed.push(line);
        }
    }
    journal.store(&Journal::default())?;
    Ok(removed)
}

/// Deletes the clsact qdisc the agent created on `iface`, unless someone else's
/// filters now depend on it.
pub async fn remove_own_clsact(iface: &str) -> Result<Option<String>> {
    let Ok(ifindex) = preflight::interface_index(iface) else {
        return Ok(None); // interface gone, and its qdisc with it
    };
    if !tc::has_clsact(ifindex).await? {
        return Ok(None);
    }
    let others = tc::clsact_filter_count(ifindex).await?;
    if others > 0 {
        return Ok(Some(format!(
            "kept the clsact qdisc on {iface}: {others} filter(s) of other software use it"
        )));
    }
    tc::delete_clsact(ifindex).await?;
    Ok(Some(format!(
        "removed the clsact qdisc faultline added on {iface}"
    )))
}
