//! An order's fault as the coordinator sends it (any protobuf bytes), translated to
//! the agent's `inject` command line: never a panic, and never an argument the
//! request chose: every request text stays joined to its own flag, and every
//! argument of its own is a fixed word or a number the translation formatted.
#![no_main]
use faultline_agent::child::inject_args;
use faultline_proto::v1::FaultSpec;
use libfuzzer_sys::fuzz_target;
use prost::Message;

/// Flags whose value is joined to them (`--flag=value`), as the translation writes them.
const JOINED: &[&str] = &[
    "--iface",
    "--percent",
    "--src",
    "--dst",
    "--proto",
    "--port",
    "--sport",
    "--dport",
    "--target-cgroup",
    "--to-percent",
    "--path",
    "--hook",
];

fn is_ms(v: &str) -> bool {
    v.strip_suffix("ms")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fuzz_target!(|data: &[u8]| {
    let Ok(spec) = FaultSpec::decode(data) else {
        return;
    };
    let Ok(args) = inject_args(&spec) else {
        return;
    };
    assert_eq!(args[0], "inject");
    assert!(
        ["loss", "latency", "cpu", "memory", "gc", "cache"].contains(&args[1].as_str()),
        "{args:?}"
    );
    let mut i = 2;
    while i < args.len() {
        let a = &args[i];
        let value = args.get(i + 1).map(String::as_str).unwrap_or("");
        let ok_value = match a.as_str() {
            "--direction" => ["ingress", "egress", "both"].contains(&value),
            "--jitter-distribution" => ["uniform", "normal"].contains(&value),
            "--delay" | "--jitter" | "--duration" | "--observe" => is_ms(value),
            "--interval" => value == "100ms",
            "--output" => value == "json",
            // f64's Display: digits, a point, "inf"; never a sign (it is > 0).
            "--loss-percent" => value.parse::<f64>().is_ok_and(|v| v > 0.0),
            "--allow-reorder" => {
                i += 1;
                continue;
            }
            joined => {
                let flag = joined.split_once('=').map(|(f, _)| f);
                assert!(
                    flag.is_some_and(|f| JOINED.contains(&f)),
                    "argument {joined:?} is neither a known flag nor joined to one: {args:?}"
                );
                i += 1;
                continue;
            }
        };
        assert!(ok_value, "{a} {value:?} in {args:?}");
        i += 2;
    }
});
