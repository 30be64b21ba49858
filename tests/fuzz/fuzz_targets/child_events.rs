//! Lines a child prints (any bytes): the daemon's reading of them never panics, and
//! what it takes from them is exactly what the line said.
#![no_main]
use faultline_agent::child::{ChildEvent, parse_event};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for line in text.lines() {
        let Some(ev) = parse_event("latency", line) else {
            continue;
        };
        let v: serde_json::Value = serde_json::from_str(line).expect("an event is JSON");
        match ev {
            ChildEvent::Readings(r)
            | ChildEvent::Armed {
                readings: Some(r), ..
            } => {
                for (k, x) in r {
                    let field = k.strip_prefix("latency.").expect("keys carry the fault");
                    assert_eq!(v[field].as_f64(), Some(x), "{field} in {line}");
                }
            }
            ChildEvent::Counters { ingress, .. } => {
                assert_eq!(
                    ingress.seen,
                    v["counters"]["ingress"]["seen"].as_u64().unwrap_or(0)
                );
            }
            ChildEvent::Armed { readings: None, .. } | ChildEvent::Removed { .. } => {}
        }
    }
});
