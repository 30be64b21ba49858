//! Fault orders from the coordinator, carried out by the same code as local mode: each
//! applied order is a `faultline-agent inject ...` child process of this daemon, so an
//! order gets the local mode's validation, caps, journal, signal handling and in-kernel
//! deadline unchanged. The daemon talks to it through its JSON event stream and ends it
//! with SIGTERM (the child then removes everything it applied and exits).
//!
//! A child gets PR_SET_PDEATHSIG = SIGTERM: if the daemon dies, its effects go with it.
use std::{process::Stdio, time::Duration};

use faultline_proto::v1::{
    Direction, FaultCounters, FaultSpec, JitterDistribution, TrafficFilter, fault_spec::Fault,
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
    Counters {
        ingress: FaultCounters,
        egress: FaultCounters,
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
            args.extend([flag.to_owned(), value.clone()]);
        }
    }
}

/// The `inject` command line for `spec` (after the global options).
pub fn inject_args(spec: &FaultSpec) -> Result<Vec<String>, String> {
    let duration = millis(spec.duration.as_ref().ok_or("fault.duration is required")?)?;
    let fault = spec.fault.as_ref().ok_or("fault: none given")?;
    let s = |v: &str| v.to_owned();
    let mut args = vec![s("inject")];
    match fault {
        Fault::Loss(l) => {
            args.extend([s("loss"), s("--iface"), l.interface.clone()]);
            args.extend([s("--direction"), s(direction(l.direction))]);
            args.extend([s("--percent"), l.percent.to_string()]);
            filter_args(l.filter.as_ref(), &mut args);
        }
        Fault::Latency(l) => {
            args.extend([s("latency"), s("--iface"), l.interface.clone()]);
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
        Fault::Cpu(c) => args.extend([s("cpu"), s("--percent"), c.percent.to_string()]),
        Fault::Memory(m) => args.extend([s("memory"), s("--percent"), m.percent.to_string()]),
    }
    args.extend([s("--duration"), duration, s("--output"), s("json")]);
    // Network faults report counters at the experiment sample rate (10 Hz).
    if matches!(fault, Fault::Loss(_) | Fault::Latency(_)) {
        args.extend([s("--interval"), s("100ms")]);
    }
    Ok(args)
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
                Some("armed") => {
                    armed = true;
                    let detail = ev["fault"].as_str().unwrap_or("applied").to_owned();
                    let _ = events.send(Report::Armed {
                        order_id: order.clone(),
                        detail,
                    });
                }
                Some("counters") => {
                    let _ = events.send(Report::Counters {
                        ingress: counters(&ev["counters"]["ingress"]),
                        egress: counters(&ev["counters"]["egress"]),
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
    use faultline_proto::v1::{LatencyFault, LossFault};

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
            "inject loss --iface eth0 --direction both --percent 0.5 --proto udp --dport 7000 \
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
            "inject latency --iface eth0 --direction egress --delay 50ms --jitter 5ms \
             --jitter-distribution normal --duration 1500ms --output json --interval 100ms"
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
