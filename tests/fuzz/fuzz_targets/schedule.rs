//! A schedule file: parsing and validation (every entry's spec resolved offline
//! against the production limits) never panic, and an accepted file's entries can
//! all compute their next slot.
#![no_main]
use std::sync::OnceLock;

use faultline_coordinator::{config::Settings, plan, schedule::file};
use faultline_proto::limits::{ChaosLimits, Profile};
use libfuzzer_sys::fuzz_target;

fn context() -> &'static (Settings, ChaosLimits) {
    static CTX: OnceLock<(Settings, ChaosLimits)> = OnceLock::new();
    CTX.get_or_init(|| {
        (
            Settings::load(None, Profile::Production).expect("embedded defaults"),
            ChaosLimits::profile(Profile::Production),
        )
    })
}

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
