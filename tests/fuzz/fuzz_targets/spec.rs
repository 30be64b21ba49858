//! A spec as a user writes it: parsing, shape checks and the full offline
//! resolution (config defaults, the production limits) never panic; whatever parses
//! survives its own YAML unchanged; a spec resolution accepts is within the limits
//! the same resolution enforces, so it must accept it again.
#![no_main]
mod common;

use common::context;
use faultline_coordinator::engine::plan;
use faultline_proto::spec::Spec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(spec) = Spec::parse(text) else {
        return;
    };
    let again = Spec::parse(&spec.to_yaml()).expect("a parsed spec's own YAML parses");
    assert_eq!(again, spec, "YAML round trip changed the spec");
    let _ = spec.check_shape(text);
    let (settings, limits) = context();
    if plan::check_offline(text, settings, limits, "fuzz").is_ok() {
        plan::check_offline(&spec.to_yaml(), settings, limits, "fuzz")
            .expect("the same spec, re-serialized, resolves again");
    }
});
