//! A limits file (`chaos_limits:`): parsing never panics, and what parses survives
//! its own YAML unchanged.
#![no_main]
use faultline_proto::limits::ChaosLimits;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(l) = ChaosLimits::from_yaml(text) {
        let again = ChaosLimits::from_yaml(&l.to_yaml()).expect("own YAML parses");
        assert_eq!(again, l, "YAML round trip changed the limits");
    }
});
