//! What an order's child tells the daemon, typed (`ChildReport`, framed by
//! `faultline_agent::child`). While a child runs for an order its stdout carries
//! these frames and nothing else: the local mode's human or JSON lines are off
//! (`output::emit` says nothing), and each fault reports at the same points where it
//! prints — armed, its readings, its counters, removed — and main reports the error
//! that stopped it.
use std::{
    io::Write,
    sync::atomic::{AtomicBool, Ordering},
};

use faultline_proto::v1::{
    ChildArmed, ChildCounters, ChildError, ChildRemoved, ChildReport, DelayLineState,
    FaultCounters, FaultReadings, child_report::Report,
};

static ON: AtomicBool = AtomicBool::new(false);

/// This process is an order's child: report, and print nothing else.
pub fn enable() {
    ON.store(true, Ordering::Relaxed);
}

pub fn active() -> bool {
    ON.load(Ordering::Relaxed)
}

fn send(report: Report) {
    if !active() {
        return;
    }
    let frame = faultline_agent::child::frame(&ChildReport {
        report: Some(report),
    });
    let mut out = std::io::stdout().lock();
    // The daemon is the only reader; if it is gone, so is the reason to report.
    let _ = out.write_all(&frame).and_then(|()| out.flush());
}

/// The effect (`kind`, in a few words: `detail`) is in place for `duration`; it is
/// also recorded for `faultline-agent status` (`crate::active`).
pub fn armed(kind: &str, detail: &str, duration: std::time::Duration) {
    crate::active::armed(kind, detail, duration);
    send(Report::Armed(ChildArmed {
        detail: detail.to_owned(),
    }));
}

/// The fault's own readings, whole (the daemon keeps the latest).
pub fn readings(r: FaultReadings) {
    send(Report::Readings(r));
}

/// A network fault's cumulative counters, and its delay line's (held now, lost to
/// overflow so far).
pub fn counters(ingress: FaultCounters, egress: FaultCounters, delay_line: Option<(u64, u64)>) {
    send(Report::Counters(ChildCounters {
        ingress: Some(ingress),
        egress: Some(egress),
        delay_line: delay_line.map(|(queued, dropped_overflow)| DelayLineState {
            queued,
            dropped_overflow,
        }),
    }));
}

/// The effect is gone, for `reason`.
pub fn removed(reason: &str) {
    crate::active::clear();
    send(Report::Removed(ChildRemoved {
        reason: reason.to_owned(),
    }));
}

/// The error that stops the child; `refused` when nothing was applied (bad input, a
/// cap, an unusable node).
pub fn error(message: &str, refused: bool) {
    send(Report::Error(ChildError {
        message: message.to_owned(),
        refused,
    }));
}
