//! Fault orders from the coordinator, carried out by the same code as local mode: each
//! applied order is a `faultline-agent inject ...` child process of this daemon, so an
//! order gets the local mode's validation, caps, journal, signal handling and in-kernel
//! deadline unchanged. The daemon talks to it through its JSON event stream and ends it
//! with SIGTERM (the child then removes everything it applied and exits).
//!
//! A child gets PR_SET_PDEATHSIG = SIGTERM: if the daemon dies, its effects go with it.
use std::{collections::HashMap, process::Stdio, time::Duration};

use faultline_proto::v1::{
    Direction, FaultCounters, FaultSpec, Hook, JitterDistribution, TrafficFilter, fault_spec::Fault,
};
use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, BufReader},
    process::Command,
    sync::mpsc,
};

/// What a child reports back to the session loop.
#[derive(Debug)]
pub enum Report {
    /// The effect is in place; `detail` says what and how.
    Armed { order_id: String, detail: String },
    /// A network fault's cumulative kernel counters, and its delay line's (packets
    /// held now, lost to overflow so far) when it runs one.
    Counters {
        order_id: String,
        ingress: FaultCounters,
        egress: FaultCounters,
        delay_line: Option<(u64, u64)>,
    },
    /// The latest numbers of a fault's own readings, keyed "<fault>.<field>" (e.g.
    /// "cache.resident_percent"); they go out with every metric sample.
    Readings(HashMap<String, f64>),
    /// A rollback self-test ended.
    SelfTest {
        request_id: String,
        passed: bool,
        detail: String,
    },
    /// The child is gone (and with it every effect it applied).
    Exited {
        order_id: String,
        armed: bool,
        /// 2: refused (bad input or a cap); otherwise a failure.
        code: Option<i32>,
        detail: String,
    },
}

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

/// A running child: dropping the sender does nothing; `stop` asks for removal.
pub struct Handle(mpsc::UnboundedSender<()>);

impl Handle {
    /// Asks the child to remove its effects and exit (SIGTERM, sent only while the
    /// child is unreaped, so never to a recycled pid).
    pub fn stop(&self) {
        let _ = self.0.send(());
    }
}

/// Starts the child for one order; its reports arrive on `reports`.
pub fn spawn(
    order_id: &str,
    global: &[String],
    inject: &[String],
    reports: mpsc::UnboundedSender<Report>,
) -> std::io::Result<Handle> {
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.args(global)
        .args(inject)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("RUST_LOG", "warn");
    // SAFETY: prctl is async-signal-safe; called between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    let stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let (stop_tx, mut stop_rx) = mpsc::unbounded_channel::<()>();
    let order = order_id.to_owned();
    let kind = inject.get(1).cloned().unwrap_or_default();
    let events = reports.clone();
    let reader = tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        let mut armed = false;
        let mut last = String::new();
        while let Ok(Some(line)) = lines.next_line().await {
            let Ok(ev) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            match ev["event"].as_str() {
                // Cache invalidation's effect is its one-shot eviction.
                Some(e @ ("armed" | "evicted")) => {
                    armed = true;
                    let detail = match ev["fault"].as_str() {
                        Some(f) => f.to_owned(),
                        None => format!("{kind} {e}"),
                    };
                    let _ = events.send(Report::Armed {
                        order_id: order.clone(),
                        detail,
                    });
                    if e == "evicted" {
                        let _ = events.send(Report::Readings(readings(&kind, &ev)));
                    }
                }
                Some("reading") => {
                    let _ = events.send(Report::Readings(readings(&kind, &ev)));
                }
                Some("counters") => {
                    let d = &ev["delay_line"];
                    let _ = events.send(Report::Counters {
                        order_id: order.clone(),
                        ingress: counters(&ev["counters"]["ingress"]),
                        egress: counters(&ev["counters"]["egress"]),
                        delay_line: d["queued"]
                            .as_u64()
                            .map(|q| (q, d["dropped_overflow"].as_u64().unwrap_or(0))),
                    });
                }
                Some("removed") => {
                    last = format!("removed ({})", ev["reason"].as_str().unwrap_or("?"));
                }
                _ => {}
            }
        }
        (armed, last)
    });
    let errors = tokio::spawn(async move {
        let mut err = String::new();
        let _ = stderr.read_to_string(&mut err).await;
        err
    });
    let order = order_id.to_owned();
    tokio::spawn(async move {
        let status = loop {
            tokio::select! {
                s = child.wait() => break s,
                Some(()) = stop_rx.recv() => {
                    if let Some(pid) = child.id() {
                        // SAFETY: kill(2) on our unreaped child.
                        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
                    }
                }
            }
        };
        let (armed, last) = reader.await.unwrap_or_default();
        let err = errors.await.unwrap_or_default();
        let _ = reports.send(Report::Exited {
            order_id: order,
            armed,
            code: status.ok().and_then(|s| s.code()),
            detail: err
                .lines()
                .rev()
                .find(|l| l.contains("error"))
                .map(|l| l.trim_start_matches("faultline-agent: error: ").to_owned())
                .unwrap_or(last),
        });
    });
    Ok(Handle(stop_tx))
}

/// Runs `faultline-agent self-test --iface=IF` for one request; its end arrives on
/// `reports` as `Report::SelfTest`, with the failing step's error when it failed.
pub fn spawn_self_test(
    request_id: &str,
    global: &[String],
    iface: &str,
    reports: mpsc::UnboundedSender<Report>,
) -> std::io::Result<()> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(global)
        .arg("self-test")
        .arg(format!("--iface={iface}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .env("RUST_LOG", "warn")
        .kill_on_drop(true);
    let child = cmd.spawn()?;
    let request_id = request_id.to_owned();
    let iface = iface.to_owned();
    tokio::spawn(async move {
        let (passed, detail) = match tokio::time::timeout(
            Duration::from_secs(20),
            child.wait_with_output(),
        )
        .await
        {
            Ok(Ok(out)) if out.status.success() => (
                true,
                format!(
                    "cgroup created and removed; a disarmed program attached to {iface}, journalled and detached"
                ),
            ),
            Ok(Ok(out)) => {
                let err = String::from_utf8_lossy(&out.stderr);
                let line = err
                    .lines()
                    .rev()
                    .find(|l| l.contains("error"))
                    .unwrap_or("failed")
                    .trim_start_matches("faultline-agent: error: ")
                    .to_owned();
                (false, line)
            }
            Ok(Err(e)) => (false, format!("self-test: {e}")),
            Err(_) => (false, "self-test did not finish within 20 s".to_owned()),
        };
        let _ = reports.send(Report::SelfTest {
            request_id,
            passed,
            detail,
        });
    });
    Ok(())
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
}
