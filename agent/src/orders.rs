//! Fault orders from the coordinator, carried out by the same code as local mode: each
//! applied order is a `faultline-agent inject ...` child process of this daemon, so an
//! order gets the local mode's validation, caps, journal, signal handling and in-kernel
//! deadline unchanged. The daemon talks to it through its JSON event stream and ends it
//! with SIGTERM (the child then removes everything it applied and exits).
//!
//! A child gets PR_SET_PDEATHSIG = SIGTERM: if the daemon dies, its effects go with it.
use std::{collections::HashMap, process::Stdio, time::Duration};

pub use faultline_agent::child::inject_args;
use faultline_agent::child::{self, ChildEvent};
use faultline_proto::v1::FaultCounters;
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
            match child::parse_event(&kind, &line) {
                Some(ChildEvent::Armed { detail, readings }) => {
                    armed = true;
                    let _ = events.send(Report::Armed {
                        order_id: order.clone(),
                        detail,
                    });
                    if let Some(r) = readings {
                        let _ = events.send(Report::Readings(r));
                    }
                }
                Some(ChildEvent::Readings(r)) => {
                    let _ = events.send(Report::Readings(r));
                }
                Some(ChildEvent::Counters {
                    ingress,
                    egress,
                    delay_line,
                }) => {
                    let _ = events.send(Report::Counters {
                        order_id: order.clone(),
                        ingress,
                        egress,
                        delay_line,
                    });
                }
                Some(ChildEvent::Removed { reason }) => last = format!("removed ({reason})"),
                None => {}
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
