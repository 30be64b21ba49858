//! The two texts between the daemon and an order's child: the `inject` command line
//! an order becomes, and the JSON events the child prints on its stdout. Pure
//! functions, fuzzed (tests/fuzz) because both sides of them come from elsewhere: the
//! order from the coordinator, the events from a child process.
//!
//! Invariant of the command line: every value that comes from the request as text is
//! joined to its flag (`--path=VALUE`); an argument of its own is only ever a fixed
//! word or a number this code formatted, so no request can add a flag.
use std::{collections::HashMap, time::Duration};

use faultline_proto::v1::{
    Direction, FaultCounters, FaultSpec, Hook, JitterDistribution, TrafficFilter, fault_spec::Fault,
};
use serde_json::Value;

fn millis(d: &prost_types::Duration) -> Result<String, String> {
    let d = Duration::try_from(*d).map_err(|_| "negative duration".to_owned())?;
    Ok(format!("{}ms", d.as_millis().max(1)))
}

fn direction(d: i32) -> &'static str {
    match Direction::try_from(d) {
        Ok(Direction::Egress) => "egress",
        Ok(Direction::Both) => "both",
        _ => "ingress",
    }
}

fn filter_args(f: Option<&TrafficFilter>, args: &mut Vec<String>) {
    let Some(f) = f else { return };
    for (flag, value) in [
        ("--src", &f.src_cidr),
        ("--dst", &f.dst_cidr),
        ("--proto", &f.protocol),
        ("--port", &f.port),
        ("--sport", &f.sport),
        ("--dport", &f.dport),
    ] {
        if !value.is_empty() {
            args.push(format!("{flag}={value}"));
        }
    }
}

/// The `inject` command line for `spec` (after the global options). Values that come
/// from the request as text are joined to their flag (`--path=VALUE`), so no value
/// can ever be read as a flag of its own.
pub fn inject_args(spec: &FaultSpec) -> Result<Vec<String>, String> {
    let duration = millis(spec.duration.as_ref().ok_or("fault.duration is required")?)?;
    let fault = spec.fault.as_ref().ok_or("fault: none given")?;
    let s = |v: &str| v.to_owned();
    let mut args = vec![s("inject")];
    match fault {
        Fault::Loss(l) => {
            args.extend([s("loss"), format!("--iface={}", l.interface)]);
            args.extend([s("--direction"), s(direction(l.direction))]);
            args.push(format!("--percent={}", l.percent));
            filter_args(l.filter.as_ref(), &mut args);
        }
        Fault::Latency(l) => {
            args.extend([s("latency"), format!("--iface={}", l.interface)]);
            args.extend([s("--direction"), s(direction(l.direction))]);
            args.extend([
                s("--delay"),
                millis(l.delay.as_ref().ok_or("latency.delay is required")?)?,
            ]);
            if let Some(j) = &l.jitter {
                args.extend([s("--jitter"), millis(j)?]);
            }
            let shape = match JitterDistribution::try_from(l.jitter_distribution) {
                Ok(JitterDistribution::Normal) => "normal",
                _ => "uniform",
            };
            args.extend([s("--jitter-distribution"), s(shape)]);
            if l.allow_reorder {
                args.push(s("--allow-reorder"));
            }
            if l.loss_percent > 0.0 {
                args.extend([s("--loss-percent"), l.loss_percent.to_string()]);
            }
            filter_args(l.filter.as_ref(), &mut args);
        }
        // Numbers with `=` too: a negative one must reach the agent's own check.
        Fault::Cpu(c) => args.extend([s("cpu"), format!("--percent={}", c.percent)]),
        Fault::Memory(m) => args.extend([s("memory"), format!("--percent={}", m.percent)]),
        Fault::Gc(g) => {
            args.extend([s("gc"), format!("--target-cgroup={}", g.target_cgroup)]);
            if g.to_percent != 0.0 {
                args.push(format!("--to-percent={}", g.to_percent));
            }
            hook_args(&g.hooks, &mut args);
        }
        Fault::Cache(c) => {
            args.push(s("cache"));
            for p in &c.paths {
                args.push(format!("--path={p}"));
            }
            if !c.target_cgroup.is_empty() {
                args.push(format!("--target-cgroup={}", c.target_cgroup));
            }
            hook_args(&c.hooks, &mut args);
        }
    }
    // Eviction is one shot: the fault's duration is the window its rebuild is watched.
    let length = if matches!(fault, Fault::Cache(_)) {
        "--observe"
    } else {
        "--duration"
    };
    args.extend([s(length), duration, s("--output"), s("json")]);
    // Network faults report counters at the experiment sample rate (10 Hz); the
    // others a reading a second, as often as their numbers move.
    if matches!(fault, Fault::Loss(_) | Fault::Latency(_)) {
        args.extend([s("--interval"), s("100ms")]);
    }
    Ok(args)
}

fn hook_args(hooks: &[Hook], args: &mut Vec<String>) {
    for h in hooks {
        args.push(format!("--hook={}={}", h.name, h.url));
    }
}

/// What one line of a child's stdout says, for the daemon.
#[derive(Clone, Debug, PartialEq)]
pub enum ChildEvent {
    /// The effect is in place (cache invalidation: its one-shot eviction, which
    /// carries its readings).
    Armed {
        detail: String,
        readings: Option<HashMap<String, f64>>,
    },
    /// The latest numbers of the fault's own readings, keyed "<fault>.<field>".
    Readings(HashMap<String, f64>),
    /// A network fault's cumulative kernel counters, and its delay line's (held now,
    /// lost to overflow so far) when it runs one.
    Counters {
        ingress: FaultCounters,
        egress: FaultCounters,
        delay_line: Option<(u64, u64)>,
    },
    /// The child removed its effects, for `reason`.
    Removed { reason: String },
}

/// One line of the child `kind`'s stdout; `None` for anything that is not one of its
/// events (other lines, other JSON, other event names).
pub fn parse_event(kind: &str, line: &str) -> Option<ChildEvent> {
    let ev: Value = serde_json::from_str(line).ok()?;
    Some(match ev["event"].as_str()? {
        e @ ("armed" | "evicted") => ChildEvent::Armed {
            detail: match ev["fault"].as_str() {
                Some(f) => f.to_owned(),
                None => format!("{kind} {e}"),
            },
            readings: (e == "evicted").then(|| readings(kind, &ev)),
        },
        "reading" => ChildEvent::Readings(readings(kind, &ev)),
        "counters" => {
            let d = &ev["delay_line"];
            ChildEvent::Counters {
                ingress: counters(&ev["counters"]["ingress"]),
                egress: counters(&ev["counters"]["egress"]),
                delay_line: d["queued"]
                    .as_u64()
                    .map(|q| (q, d["dropped_overflow"].as_u64().unwrap_or(0))),
            }
        }
        "removed" => ChildEvent::Removed {
            reason: ev["reason"].as_str().unwrap_or("?").to_owned(),
        },
        _ => return None,
    })
}

/// The numeric fields of a reading, except its timing.
fn readings(kind: &str, ev: &Value) -> HashMap<String, f64> {
    let Some(fields) = ev.as_object() else {
        return HashMap::new();
    };
    fields
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "elapsed_ms" | "pid"))
        .filter_map(|(k, v)| Some((format!("{kind}.{k}"), v.as_f64()?)))
        .collect()
}

fn counters(v: &Value) -> FaultCounters {
    let n = |k: &str| v[k].as_u64().unwrap_or(0);
    FaultCounters {
        seen: n("seen"),
        matched: n("matched"),
        dropped: n("dropped"),
        delayed: n("delayed"),
    }
}

#[cfg(test)]
mod tests {
    use faultline_proto::v1::{CacheFault, GcFault, LatencyFault, LossFault};
    use serde_json::json;

    use super::*;

    fn dur(ms: u64) -> Option<prost_types::Duration> {
        Some(Duration::from_millis(ms).try_into().unwrap())
    }

    #[test]
    fn orders_become_the_local_mode_command_line() {
        let spec = FaultSpec {
            fault: Some(Fault::Loss(LossFault {
                interface: "eth0".into(),
                direction: Direction::Both as i32,
                percent: 0.5,
                filter: Some(TrafficFilter {
                    protocol: "udp".into(),
                    dport: "7000".into(),
                    ..Default::default()
                }),
            })),
            duration: dur(60_000),
        };
        assert_eq!(
            inject_args(&spec).unwrap().join(" "),
            "inject loss --iface=eth0 --direction both --percent=0.5 --proto=udp --dport=7000 \
             --duration 60000ms --output json --interval 100ms"
        );
        let spec = FaultSpec {
            fault: Some(Fault::Latency(LatencyFault {
                interface: "eth0".into(),
                direction: Direction::Egress as i32,
                delay: dur(50),
                jitter: dur(5),
                jitter_distribution: JitterDistribution::Normal as i32,
                ..Default::default()
            })),
            duration: dur(1500),
        };
        assert_eq!(
            inject_args(&spec).unwrap().join(" "),
            "inject latency --iface=eth0 --direction egress --delay 50ms --jitter 5ms \
             --jitter-distribution normal --duration 1500ms --output json --interval 100ms"
        );
        let hook = |name: &str, url: &str| Hook {
            name: name.into(),
            url: url.into(),
        };
        let spec = FaultSpec {
            fault: Some(Fault::Gc(GcFault {
                target_cgroup: "system.slice/app.service".into(),
                to_percent: 70.0,
                hooks: vec![hook("jvm", "http://127.0.0.1:8080/gc")],
            })),
            duration: dur(30_000),
        };
        assert_eq!(
            inject_args(&spec).unwrap().join(" "),
            "inject gc --target-cgroup=system.slice/app.service --to-percent=70 \
             --hook=jvm=http://127.0.0.1:8080/gc --duration 30000ms --output json"
        );
        // A cache's duration is its observation window. A value that looks like a
        // flag stays the value of its own flag.
        let spec = FaultSpec {
            fault: Some(Fault::Cache(CacheFault {
                paths: vec!["/srv/data".into(), "--runtime-command=sh".into()],
                target_cgroup: String::new(),
                hooks: vec![hook("api", "http://127.0.0.1:8081/cache/drop")],
            })),
            duration: dur(30_000),
        };
        assert_eq!(
            inject_args(&spec).unwrap().join(" "),
            "inject cache --path=/srv/data --path=--runtime-command=sh \
             --hook=api=http://127.0.0.1:8081/cache/drop --observe 30000ms --output json"
        );
        assert!(
            inject_args(&FaultSpec {
                fault: None,
                duration: dur(1)
            })
            .is_err()
        );
    }

    #[test]
    fn child_events_become_typed_reports() {
        let line = |v: Value| v.to_string();
        assert_eq!(
            parse_event("cpu", &line(json!({"event": "armed", "fault": "cpu 15%"}))),
            Some(ChildEvent::Armed {
                detail: "cpu 15%".into(),
                readings: None
            })
        );
        let Some(ChildEvent::Armed { detail, readings }) = parse_event(
            "cache",
            &line(
                json!({"event": "evicted", "resident_percent": 0.5, "elapsed_ms": 3, "path": "/x"}),
            ),
        ) else {
            panic!("evicted is armed");
        };
        assert_eq!(detail, "cache evicted");
        assert_eq!(
            readings,
            Some(HashMap::from([("cache.resident_percent".to_owned(), 0.5)]))
        );
        assert_eq!(
            parse_event(
                "latency",
                &line(
                    json!({"event": "counters", "counters": {"ingress": {"seen": 4, "matched": 3},
                             "egress": {"dropped": 2}}, "delay_line": {"queued": 7}})
                )
            ),
            Some(ChildEvent::Counters {
                ingress: FaultCounters {
                    seen: 4,
                    matched: 3,
                    ..Default::default()
                },
                egress: FaultCounters {
                    dropped: 2,
                    ..Default::default()
                },
                delay_line: Some((7, 0)),
            })
        );
        assert_eq!(
            parse_event("cpu", &line(json!({"event": "removed"}))),
            Some(ChildEvent::Removed { reason: "?".into() })
        );
        for other in [
            "",
            "not json",
            "[1,2]",
            "{\"event\": 3}",
            "{\"event\": \"hello\"}",
        ] {
            assert_eq!(parse_event("cpu", other), None, "{other}");
        }
    }
}
