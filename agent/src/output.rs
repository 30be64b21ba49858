//! How the agent reports: human lines, or one JSON object per line for machines.
use std::io::Write;

use clap::ValueEnum;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    /// One JSON object per line (events "armed", "counters"/"reading", "removed", ...).
    Json,
}

/// Writes one event to stdout in `format`, flushed at once (a supervisor or test
/// reads the stream live). Nothing in an order's child, whose stdout carries its
/// typed reports (`crate::report`).
pub fn emit(format: Output, value: serde_json::Value, text: &str) {
    if crate::report::active() {
        return;
    }
    let mut stdout = std::io::stdout().lock();
    let _ = match format {
        Output::Json => writeln!(stdout, "{value}"),
        Output::Text => writeln!(stdout, "{text}"),
    };
    let _ = stdout.flush();
}
