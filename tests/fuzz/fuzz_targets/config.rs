//! The coordinator's config file: parsing and its checks never panic.
#![no_main]
use faultline_coordinator::config::Settings;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Settings::parse(text);
    }
});
