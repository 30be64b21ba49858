//! What the spec and schedule targets resolve against: the embedded production
//! settings and limits, built once per process.
use std::sync::OnceLock;

use faultline_coordinator::config::Settings;
use faultline_proto::limits::{ChaosLimits, Profile};

pub fn context() -> &'static (Settings, ChaosLimits) {
    static CTX: OnceLock<(Settings, ChaosLimits)> = OnceLock::new();
    CTX.get_or_init(|| {
        (
            Settings::load(None, Profile::Production).expect("embedded defaults"),
            ChaosLimits::profile(Profile::Production),
        )
    })
}
