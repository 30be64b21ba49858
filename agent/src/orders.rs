//! Fault orders from the coordinator, carried out by the same code as local mode: each
//! applied order is a `faultline-agent __order` child process of this daemon, which
//! reads the order's `FaultSpec` on its stdin and turns it into the local mode's own
//! arguments, so an order gets the local mode's validation, caps, journal, signal
//! handling and in-kernel deadline unchanged. The child reports typed messages on its
//! stdout (`faultline_agent::child`); the daemon ends it with SIGTERM (the child then
//! removes everything it applied and exits).
//!
//! A child gets PR_SET_PDEATHSIG = SIGTERM: if the daemon dies, its effects go with it.
use std::{process::Stdio, time::Duration};

use faultline_agent::child::{Frames, frame};
use faultline_proto::v1::{
    ChildReport, FaultCounters, FaultReadings, FaultSpec, child_report::Report as Child,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
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
    /// A fault's own readings, whole; they go out with every metric sample.
    Readings(FaultReadings),
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

/// The typed reports a child writes on `out`, until it closes it, each passed to
/// `each`; returns the last error the child reported, if any. A stream that does
/// not frame is read no further (the child's exit still ends the order).
async fn read_reports(
    mut out: impl AsyncRead + Unpin,
    mut each: impl FnMut(Child),
) -> Option<String> {
    let mut frames = Frames::default();
    let mut buf = vec![0u8; 4096];
    let mut error = None;
    loop {
        let n = match out.read(&mut buf).await {
            Ok(0) | Err(_) => return error,
            Ok(n) => n,
        };
        frames.push(&buf[..n]);
        loop {
            match frames.next_message::<ChildReport>() {
                Ok(Some(ChildReport {
                    report: Some(Child::Error(e)),
                })) => error = Some(e.message),
                Ok(Some(ChildReport { report: Some(r) })) => each(r),
                Ok(Some(ChildReport { report: None })) => {}
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!("a child's report stream is unreadable: {e}");
                    return error;
                }
            }
        }
    }
}

/// A child of this executable with `args`, its order on stdin and its reports on
/// stdout; it dies with the daemon.
fn child(global: &[String], args: &[&str]) -> std::io::Result<Command> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(global)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        // Its log lines join the daemon's.
        .stderr(Stdio::inherit())
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
    Ok(cmd)
}

/// Starts the child for one order; its reports arrive on `reports`.
pub fn spawn(
    order_id: &str,
    lease_id: &str,
    global: &[String],
    spec: &FaultSpec,
    reports: mpsc::UnboundedSender<Report>,
) -> std::io::Result<Handle> {
    let mut child = child(global, &["__order"])?
        .env(crate::active::ORDER_ENV, order_id)
        .env(crate::active::LEASE_ENV, lease_id)
        .spawn()?;
    let mut stdin = child.stdin.take().expect("piped");
    let stdout = child.stdout.take().expect("piped");
    let order = frame(spec);
    let (stop_tx, mut stop_rx) = mpsc::unbounded_channel::<()>();
    let id = order_id.to_owned();
    let events = reports.clone();
    let reader = tokio::spawn(async move {
        // The order is a few hundred bytes: the pipe takes it whole. Closing stdin
        // ends the child's read.
        let _ = stdin.write_all(&order).await;
        drop(stdin);
        let mut armed = false;
        let mut removed = String::new();
        let error = read_reports(stdout, |r| match r {
            Child::Armed(a) => {
                armed = true;
                let _ = events.send(Report::Armed {
                    order_id: id.clone(),
                    detail: a.detail,
                });
            }
            Child::Readings(r) => {
                let _ = events.send(Report::Readings(r));
            }
            Child::Counters(c) => {
                let _ = events.send(Report::Counters {
                    order_id: id.clone(),
                    ingress: c.ingress.unwrap_or_default(),
                    egress: c.egress.unwrap_or_default(),
                    delay_line: c.delay_line.map(|d| (d.queued, d.dropped_overflow)),
                });
            }
            Child::Removed(r) => removed = format!("removed ({})", r.reason),
            Child::Error(_) => {}
        })
        .await;
        (armed, error.unwrap_or(removed))
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
        let (armed, detail) = reader.await.unwrap_or_default();
        let _ = reports.send(Report::Exited {
            order_id: order,
            armed,
            code: status.ok().and_then(|s| s.code()),
            detail,
        });
    });
    Ok(Handle(stop_tx))
}

/// Runs `faultline-agent self-test` on `iface` for one request; its end arrives on
/// `reports` as `Report::SelfTest`, with the error the child reported when it failed.
pub fn spawn_self_test(
    request_id: &str,
    global: &[String],
    iface: &str,
    reports: mpsc::UnboundedSender<Report>,
) -> std::io::Result<()> {
    let mut cmd = child(global, &["self-test", "--report"])?;
    // The interface goes joined to its flag: it cannot be read as a flag of its own.
    cmd.arg(format!("--iface={iface}")).kill_on_drop(true);
    let mut child = cmd.spawn()?;
    drop(child.stdin.take());
    let stdout = child.stdout.take().expect("piped");
    let request_id = request_id.to_owned();
    let iface = iface.to_owned();
    tokio::spawn(async move {
        let run = async {
            let error = read_reports(stdout, |_| {}).await;
            (child.wait().await, error)
        };
        let (passed, detail) = match tokio::time::timeout(Duration::from_secs(20), run).await {
            Ok((Ok(status), _)) if status.success() => (
                true,
                format!(
                    "cgroup created and removed; a disarmed program attached to {iface}, journalled and detached"
                ),
            ),
            Ok((Ok(_), error)) => (false, error.unwrap_or_else(|| "failed".to_owned())),
            Ok((Err(e), _)) => (false, format!("self-test: {e}")),
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
