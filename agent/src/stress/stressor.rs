//! `faultline-agent __stressor cpu|memory ...`: the stressor process itself. It
//! learns its deadline, duty and ramp from its arguments, reports once that it has
//! begun (one line on stdout), and exits at its deadline whatever the agent does.
use std::time::Duration;

use anyhow::Result;
use clap::Args;

use super::pacing::pace;
use crate::clock;
/// What a stressor prints when it begins its work.
pub(super) const WORKING: &str = "working";

/// Tells the agent this stressor has started. A failed write (the agent gone) is
/// harmless: the stressor dies with it by PDEATHSIG.
fn report_working() {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{WORKING}").and_then(|()| out.flush());
}

/// What a stressor consumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StressorKind {
    Cpu,
    Memory,
}

/// `faultline-agent __stressor cpu|memory ...`: the stressor process itself.
#[derive(Args, Clone, Debug)]
pub struct StressorArgs {
    #[arg(value_enum)]
    pub kind: StressorKind,
    /// memory: bytes to allocate and touch.
    #[arg(long, default_value_t = 0)]
    pub bytes: u64,
    /// cpu: the share of one CPU this burner runs (0-1), reached at the end of the ramp.
    #[arg(long, default_value_t = 1.0)]
    pub duty: f64,
    /// CLOCK_MONOTONIC deadline: the stressor exits at it whatever the agent does.
    #[arg(long)]
    pub until_ns: u64,
    #[arg(long)]
    pub ramp_ms: Option<u64>,
    /// CLOCK_MONOTONIC time the ramp started (the agent's arming); default: now.
    #[arg(long)]
    pub ramp_start_ns: Option<u64>,
}

pub fn stressor(a: StressorArgs) -> Result<()> {
    // The deadline must not depend on how much CPU the stressor is allowed: a burner
    // at a small quota would reach its next clock check late. A sleeping thread
    // needs next to no CPU to wake and end the process on time.
    let until = a.until_ns;
    std::thread::spawn(move || {
        let now = clock::monotonic_ns();
        std::thread::sleep(Duration::from_nanos(until.saturating_sub(now)));
        std::process::exit(0);
    });
    let ramp_start = a.ramp_start_ns.unwrap_or_else(clock::monotonic_ns);
    match a.kind {
        StressorKind::Cpu => {
            report_working();
            pace(
                a.duty,
                ramp_start,
                a.ramp_ms.unwrap_or(0) * 1_000_000,
                a.until_ns,
            );
            Ok(())
        }
        StressorKind::Memory => {
            const PAGE: usize = 4096;
            let total = usize::try_from(a.bytes)?;
            let mut block: Vec<u8> = Vec::with_capacity(total);
            report_working();
            let ramp_ns = a.ramp_ms.unwrap_or(0) * 1_000_000;
            let mut touched = 0usize;
            // SAFETY: capacity reserved above; bytes are written before being read.
            unsafe { block.set_len(total) };
            while touched < total {
                let due = if ramp_ns == 0 {
                    total
                } else {
                    let since = clock::monotonic_ns().saturating_sub(ramp_start);
                    let f = (since as f64 / ramp_ns as f64).min(1.0);
                    (total as f64 * f) as usize
                };
                while touched < due {
                    block[touched] = 1;
                    touched += PAGE;
                }
                if touched < total {
                    std::thread::sleep(Duration::from_millis(50));
                }
                if clock::monotonic_ns() >= a.until_ns {
                    return Ok(());
                }
            }
            std::hint::black_box(&block);
            while clock::monotonic_ns() < a.until_ns {
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(())
        }
    }
}
