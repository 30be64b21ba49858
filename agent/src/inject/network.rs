//! The lifecycle of a network fault in local mode and under an order: attach the
//! program and arm it, watch its counters until the deadline or a signal, disarm and
//! detach, with every step journaled so a crash leaves nothing a restart cannot remove.
use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Result;
use faultline_common::{FLAG_LOG, FaultConfig, Filter, LossModel};
use serde_json::json;

use crate::{
    clock,
    delay_line::{Report, StatsView},
    ebpf::{AttachKind, Dir, DirCounters, Programs, TcMode},
    faults::latency::{self, LatencyArgs, LatencyPlan},
    journal::{Entry, Journal, JournalFile},
    output::Output,
    preflight, reconcile,
};

use super::{Attach, TargetArgs};

/// Everything decided before the kernel is touched.
pub(super) struct Plan {
    cfg_template: FaultConfig,
    pub(super) summary: String,
    pub(super) latency: Option<(LatencyArgs, LatencyPlan, latency::Backend)>,
}

pub(super) fn plan(target: &TargetArgs, filter: Filter, loss: LossModel, what: String) -> Plan {
    let directions = target
        .direction
        .dirs()
        .iter()
        .fold(0, |acc, d| acc | d.bit());
    Plan {
        cfg_template: FaultConfig {
            armed: u32::from(!target.disarmed),
            directions,
            deadline_ns: 0,
            flags: if target.debug_ebpf { FLAG_LOG } else { 0 },
            filter,
            loss,
            ..Default::default()
        },
        summary: format!("{what}, filter: {}", target.filter.describe()),
        latency: None,
    }
}

pub(super) async fn run(
    state_dir: PathBuf,
    target: TargetArgs,
    mode: TcMode,
    plan: Plan,
) -> Result<()> {
    let mut signals = crate::signals::Signals::install()?;
    let journal = JournalFile::open(&state_dir)?;
    let mut out = Printer::new(target.output, target.direction.dirs());
    for line in reconcile::reconcile(&journal).await? {
        out.note(&line);
    }

    let mut programs = Programs::load(target.debug_ebpf)?;
    let mut cfg = plan.cfg_template;
    cfg.deadline_ns = clock::deadline_after(target.duration);

    let mut active = None;
    if let Some((args, lat, backend)) = &plan.latency {
        let site = latency::Site {
            iface: &target.iface,
            ifindex: preflight::interface_index(&target.iface)?,
            dirs: target.direction.dirs(),
            mode,
        };
        let a = latency::Active::setup(&journal, &mut programs, &site, args, lat, *backend).await?;
        cfg.latency = a.model;
        active = Some(a);
    }
    programs.configure(&cfg)?;

    let attached = attach(&journal, &mut programs, &target, mode).await;
    let attached = match attached {
        Ok(kinds) => kinds,
        Err(e) => {
            remove(&journal, &mut programs, &target, &cfg, active.as_mut()).await?;
            return Err(e);
        }
    };
    let started = Instant::now();
    let kind = match plan.latency {
        Some(_) => faultline_proto::spec::Scenario::LatencyInjection,
        None => faultline_proto::spec::Scenario::PacketLoss,
    };
    out.armed(
        &target,
        &attached,
        programs.program_ids(),
        kind.kind_name(),
        &plan.summary,
    );

    let reason = watch(
        &programs,
        active.as_ref(),
        &target,
        started,
        &mut signals,
        &mut out,
    )
    .await;

    let report = remove(&journal, &mut programs, &target, &cfg, active.as_mut()).await?;
    let totals = programs.counters()?;
    out.removed(reason, started.elapsed(), &totals, report);
    Ok(())
}

async fn attach(
    journal: &JournalFile,
    programs: &mut Programs,
    target: &TargetArgs,
    mode: TcMode,
) -> Result<Vec<AttachKind>> {
    if target.attach == Attach::Xdp {
        return Ok(vec![programs.attach_xdp(&target.iface)?]);
    }
    if mode == TcMode::Netlink {
        // Write-ahead: record the filters (and a clsact we are about to create)
        // before they exist, so a crash at any point leaves a journal that covers it.
        let ifindex = preflight::interface_index(&target.iface)?;
        let created_clsact = !crate::tc::has_clsact(ifindex).await?;
        let entries: Vec<Entry> = target
            .direction
            .dirs()
            .iter()
            .map(|&dir| Entry {
                iface: target.iface.clone(),
                direction: dir,
                program: dir.program().to_owned(),
                created_clsact,
            })
            .collect();
        let mut recorded = journal.load()?;
        recorded.entries.extend(entries);
        journal.store(&recorded)?;
        if created_clsact {
            aya::programs::tc::qdisc_add_clsact(&target.iface)?;
        }
    }
    let mut kinds = Vec::new();
    for &dir in target.direction.dirs() {
        kinds.push(programs.attach_tc(&target.iface, dir, mode)?);
    }
    Ok(kinds)
}

/// Disarms with one map write (effective on the next packet), lets a latency backend
/// release what it holds and take itself down, then detaches and removes a clsact
/// qdisc the agent created.
async fn remove(
    journal: &JournalFile,
    programs: &mut Programs,
    target: &TargetArgs,
    armed: &FaultConfig,
    latency: Option<&mut latency::Active>,
) -> Result<Option<Report>> {
    // Keep the latency devices in the configuration: the delay line's reinjection
    // program still needs them while held packets drain.
    let disarm = FaultConfig {
        latency: armed.latency,
        ..FaultConfig::default()
    };
    let disarmed = programs.configure(&disarm);
    let mut report = None;
    if let Some(active) = latency {
        report = active.teardown(journal, true).await?;
    }
    programs.configure(&FaultConfig::default())?;
    programs.detach_all();
    let recorded = journal.load()?;
    if recorded.entries.iter().any(|e| e.created_clsact) {
        reconcile::remove_own_clsact(&target.iface).await?;
    }
    journal.store(&Journal::default())?;
    disarmed.map(|()| report)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StopReason {
    Deadline,
    Signal(&'static str),
}

async fn watch(
    programs: &Programs,
    latency: Option<&latency::Active>,
    target: &TargetArgs,
    started: Instant,
    signals: &mut crate::signals::Signals,
    out: &mut Printer,
) -> StopReason {
    let deadline = tokio::time::Instant::from_std(started + target.duration);
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::from_std(started + target.interval),
        target.interval,
    );
    let mut last = DirCounters::default();
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return StopReason::Deadline,
            name = signals.recv() => return StopReason::Signal(name),
            _ = tick.tick() => {
                if let Ok(now) = programs.counters() {
                    let line = latency.and_then(|a| a.delay_line_stats());
                    out.counters(started.elapsed(), &now, &last, line);
                    last = now;
                }
            }
        }
    }
}

/// Human or JSON-lines output on stdout.
struct Printer {
    format: Output,
    dirs: &'static [Dir],
}

fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

impl Printer {
    fn new(format: Output, dirs: &'static [Dir]) -> Self {
        Self { format, dirs }
    }

    fn emit(&mut self, value: serde_json::Value, text: String) {
        crate::output::emit(self.format, value, &text);
    }

    fn note(&mut self, line: &str) {
        self.emit(
            json!({"event": "reconciled", "detail": line}),
            format!("faultline-agent: {line}"),
        );
    }

    fn armed(
        &mut self,
        target: &TargetArgs,
        attached: &[AttachKind],
        program_ids: &[u32],
        kind: &str,
        summary: &str,
    ) {
        let how: Vec<String> = attached.iter().map(ToString::to_string).collect();
        crate::report::armed(kind, summary, target.duration);
        self.emit(
            json!({
                "event": "armed",
                "iface": target.iface,
                "attachments": attached,
                "program_ids": program_ids,
                "pid": std::process::id(),
                "duration_ms": target.duration.as_millis() as u64,
                "fault": summary,
            }),
            format!(
                "faultline-agent: {summary}\n  on {} ({}) for {} — Ctrl-C removes it",
                target.iface,
                how.join(", "),
                humantime::format_duration(target.duration)
            ),
        );
    }

    fn counters(
        &mut self,
        elapsed: Duration,
        now: &DirCounters,
        last: &DirCounters,
        delay_line: Option<StatsView>,
    ) {
        let line = |name: &str, n: &crate::ebpf::CounterView, l: &crate::ebpf::CounterView| {
            let matched = n.matched - l.matched;
            let dropped = n.dropped - l.dropped;
            format!(
                "{name} seen {:>8} matched {:>8} dropped {:>8} ({:5.2}% now, {:5.2}% total) \
                 delayed {:>8}",
                n.seen,
                n.matched,
                n.dropped,
                pct(dropped, matched),
                pct(n.dropped, n.matched),
                n.delayed
            )
        };
        let parts: Vec<String> = self
            .dirs
            .iter()
            .map(|d| match d {
                Dir::Ingress => line("ingress", &now.ingress, &last.ingress),
                Dir::Egress => line("egress", &now.egress, &last.egress),
            })
            .collect();
        let kernel = |c: &crate::ebpf::CounterView| faultline_proto::v1::FaultCounters {
            seen: c.seen,
            matched: c.matched,
            dropped: c.dropped,
            delayed: c.delayed,
        };
        crate::report::counters(
            kernel(&now.ingress),
            kernel(&now.egress),
            delay_line.map(|d| (d.queued, d.dropped_overflow)),
        );
        let held = delay_line
            .map(|d| {
                format!(
                    " | delay line: held {} lost {}",
                    d.queued, d.dropped_overflow
                )
            })
            .unwrap_or_default();
        self.emit(
            json!({"event": "counters", "elapsed_ms": elapsed.as_millis() as u64, "counters": now, "delay_line": delay_line}),
            format!("[{:>5.1}s] {}{held}", elapsed.as_secs_f64(), parts.join(" | ")),
        );
    }

    fn removed(
        &mut self,
        reason: StopReason,
        elapsed: Duration,
        totals: &DirCounters,
        delay_line: Option<Report>,
    ) {
        let why = match reason {
            StopReason::Deadline => "deadline".to_owned(),
            StopReason::Signal(s) => s.to_owned(),
        };
        crate::report::removed(&why);
        let summary = |name: &str, c: &crate::ebpf::CounterView| {
            format!(
                "  {name}: seen {} matched {} dropped {} ({:.3}% of matched) delayed {}",
                c.seen,
                c.matched,
                c.dropped,
                pct(c.dropped, c.matched),
                c.delayed
            )
        };
        let mut lines: Vec<String> = self
            .dirs
            .iter()
            .map(|d| match d {
                Dir::Ingress => summary("ingress", &totals.ingress),
                Dir::Egress => summary("egress", &totals.egress),
            })
            .collect();
        if let Some(Report {
            stats: d,
            lateness: l,
        }) = &delay_line
        {
            lines.push(format!(
                "  delay line: received {} released {} lost to overflow {} write errors {}; \
                 release late by p50 {} us, p99 {} us, max {} us",
                d.received,
                d.released,
                d.dropped_overflow,
                d.write_errors,
                l.p50_us,
                l.p99_us,
                l.max_us
            ));
        }
        self.emit(
            json!({"event": "removed", "reason": why, "elapsed_ms": elapsed.as_millis() as u64, "counters": totals, "delay_line": delay_line}),
            format!(
                "faultline-agent: fault removed ({why}) after {:.1}s; nothing left attached\n{}",
                elapsed.as_secs_f64(),
                lines.join("\n")
            ),
        );
    }
}
