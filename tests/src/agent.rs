//! The real `faultline-agent` binary as a child process in a namespace.
use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, ChildStdout, Command, Output, Stdio},
    sync::mpsc,
    time::Duration,
};

use serde_json::Value;

/// The agent binary of the same build as the running program.
pub fn agent_binary() -> PathBuf {
    binary("faultline-agent")
}

/// A workspace binary (`faultline-agent`, `faultline-coordinator`, `faultline`) of the
/// same build as the running program: beside it (xtask in target/<profile>/) or one
/// level up (tests in target/<profile>/deps/).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().expect("exe dir");
    let candidates = [dir.join(name), dir.join("..").join(name)];
    candidates
        .iter()
        .find(|p| p.exists())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "{name} not found beside {}: build the workspace first",
                exe.display()
            )
        })
}

/// A `chaos_limits` file that lets tests ask for large faults (the production caps
/// are tested separately).
pub fn limits_file(max_loss: &str, max_duration: &str) -> crate::TempPath {
    let path = crate::TempPath::new("faultline-test-limits");
    let text = format!(
        "chaos_limits:\n\
         \x20 latency_injection: {{ max_latency: 500ms, max_duration: 300s }}\n\
         \x20 packet_loss: {{ max_loss: {max_loss}, max_duration: {max_duration} }}\n\
         \x20 cpu_stress: {{ max_stress: 50%, max_duration: 60s }}\n\
         \x20 memory_stress: {{ max_stress: 30%, max_duration: 60s }}\n\
         \x20 blast_radius: {{ max_nodes: 1, max_concurrent: 1 }}\n"
    );
    std::fs::write(&*path, text).expect("write limits");
    path
}

/// A running agent whose JSON-lines stdout is read on a thread.
pub struct Agent {
    pub child: Child,
    events: mpsc::Receiver<Value>,
    /// Temp paths (e.g. its state dir) removed when the agent is gone.
    owned: Vec<crate::TempPath>,
}

impl Agent {
    /// Starts `faultline-agent <args> --output json` inside namespace `ns` and waits
    /// for its "armed" event. The agent's stderr goes to the test's stderr.
    pub fn start(ns: &str, state_dir: &std::path::Path, args: &[&str]) -> (Self, Value) {
        Self::start_with_stderr(ns, state_dir, args, Stdio::inherit())
    }

    /// Starts the agent in the host network namespace (node-wide faults).
    pub fn start_host(state_dir: &std::path::Path, args: &[&str]) -> (Self, Value) {
        Self::start_host_event(state_dir, args, "armed")
    }

    /// Like `start_host`, with the agent inside the cgroup directories `dirs` from
    /// before its first instruction (a shell joins them, then execs the agent), as a
    /// service manager or a pod would start it.
    pub fn start_host_in_cgroup(
        dirs: &[PathBuf],
        state_dir: &std::path::Path,
        args: &[&str],
    ) -> (Self, Value) {
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            r#"for d in $FLTEST_JOIN; do echo $$ > "$d/cgroup.procs" || exit 1; done; exec "$0" "$@""#,
        ])
        .arg(agent_binary())
        .env(
            "FLTEST_JOIN",
            dirs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(" "),
        );
        Self::spawn(cmd, state_dir, args, Stdio::inherit(), "armed")
    }

    /// Like `start_host`, waiting for the first event named `first`.
    pub fn start_host_event(
        state_dir: &std::path::Path,
        args: &[&str],
        first: &str,
    ) -> (Self, Value) {
        Self::spawn(
            Command::new(agent_binary()),
            state_dir,
            args,
            Stdio::inherit(),
            first,
        )
    }

    /// Runs `cmd` (the agent, possibly behind `ip netns exec`) with `--state-dir`,
    /// `args` and JSON output, and waits for its first event named `first`.
    fn spawn(
        mut cmd: Command,
        state_dir: &std::path::Path,
        args: &[&str],
        stderr: Stdio,
        first: &str,
    ) -> (Self, Value) {
        let mut child = cmd
            .arg("--state-dir")
            .arg(state_dir)
            .args(args)
            .args(["--output", "json"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn agent");
        let events = reader(child.stdout.take().expect("stdout"));
        let mut agent = Self {
            child,
            events,
            owned: Vec::new(),
        };
        let armed = agent
            .wait_event(first, Duration::from_secs(20))
            .unwrap_or_else(|| panic!("agent never reported {first}"));
        (agent, armed)
    }

    /// Like `start`, with the agent's stderr sent to `stderr` (e.g. a file).
    pub fn start_with_stderr(
        ns: &str,
        state_dir: &std::path::Path,
        args: &[&str],
        stderr: Stdio,
    ) -> (Self, Value) {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).arg(agent_binary());
        Self::spawn(cmd, state_dir, args, stderr, "armed")
    }

    /// The next event of any name.
    pub fn next_event(&mut self, timeout: Duration) -> Option<Value> {
        self.events.recv_timeout(timeout).ok()
    }

    pub fn wait_event(&mut self, name: &str, timeout: Duration) -> Option<Value> {
        let until = std::time::Instant::now() + timeout;
        loop {
            let left = until.checked_duration_since(std::time::Instant::now())?;
            let ev = self.events.recv_timeout(left).ok()?;
            if ev["event"] == name {
                return Some(ev);
            }
        }
    }

    /// Removes `path` when this agent is dropped (after the process is gone).
    pub fn keep(&mut self, path: crate::TempPath) {
        self.owned.push(path);
    }

    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: plain kill(2) on our child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
    }

    /// SIGTERM, then the final "removed" event.
    pub fn stop(mut self) -> Value {
        self.signal(libc::SIGTERM);
        let removed = self
            .wait_event("removed", Duration::from_secs(60))
            .expect("no removed event after SIGTERM");
        let status = self.child.wait().expect("wait agent");
        assert!(status.success(), "agent exited with {status}");
        removed
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn reader(stdout: ChildStdout) -> mpsc::Receiver<Value> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line)
                && tx.send(v).is_err()
            {
                return;
            }
        }
    });
    rx
}

/// Runs the agent to completion (for inputs that must be refused).
pub fn run_agent(ns: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(agent_binary());
            c
        }
        None => Command::new(agent_binary()),
    };
    cmd.args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run agent")
}

/// Sum of one counter over the "counters" object of an event, for one direction.
pub fn counter(ev: &Value, dir: &str, name: &str) -> u64 {
    ev["counters"][dir][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no {dir}.{name} in {ev}"))
}
