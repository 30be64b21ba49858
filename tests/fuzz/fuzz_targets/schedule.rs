//! A schedule file: parsing and validation (every entry's spec resolved offline
//! against the production limits) never panic, and an accepted file's entries can
//! all compute their next slot.
#![no_main]
mod common;

use common::context;
use faultline_coordinator::{engine::plan, schedule::file};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (settings, limits) = context();
    let check = |spec: &str| plan::check_offline(spec, settings, limits, "fuzz");
    if let Ok(f) = file::parse(text, "fuzz", &check) {
        let now = chrono::DateTime::<chrono::Utc>::from_timestamp(1_800_000_000, 0).unwrap();
        for e in &f.entries {
            let _ = e.when.next_after(now);
        }
    }
});
