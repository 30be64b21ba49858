//! A sandbox fleet: a coordinator in its own network namespace and N node namespaces
//! (`node-1`..`node-N`), each joined to the coordinator's namespace by a veth pair and
//! running a real `faultline-agent run` over mTLS. Everything (namespaces, processes,
//! certificates, tokens, the store) belongs to the fleet and goes when it is dropped.
//!
//! Addresses: node i is 10.201.i.2 on its `eth0`; the coordinator's side of that link
//! is 10.201.i.1. They exist only inside the fleet's namespaces.
use std::{
    fs::File,
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, ChildStdout, Command, Output, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use std::{collections::BTreeMap, sync::Arc};

use crate::{
    Netns, TempPath,
    agent::binary,
    container::{Containers, manifest},
    coordinator::Home,
    netns::ip,
};

pub const NODE_IFACE: &str = "eth0";
const GRPC_PORT: u16 = 7443;
const HTTP_PORT: u16 = 7080;

pub use crate::coordinator::Role;

pub struct FleetNode {
    pub name: String,
    pub ns: Netns,
    /// This node's address on its link to the coordinator.
    pub addr: String,
    /// The coordinator's address on that link.
    pub ctl_addr: String,
}

pub struct Fleet {
    pub ctl: Netns,
    pub nodes: Vec<FleetNode>,
    pub dir: TempPath,
    home: Home,
    coordinator_args: Vec<String>,
    agent_args: Vec<String>,
    /// Per node (0-based): extra `faultline-agent run` options, e.g. labels.
    node_args: Vec<Vec<String>>,
    coordinator: Option<Child>,
    agents: Vec<Option<Child>>,
    /// The tmpfs under the store, unmounted on drop.
    store_mount: Option<PathBuf>,
    containers: Option<Arc<Containers>>,
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("run command");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The coordinator config the fleet runs with unless a test gives its own: only
/// rollback readiness is required (the production defaults also require health,
/// monitoring, alerting and backup sources, which these tests do not set up), with
/// the short baseline and recovery window the tests were written for.
pub const NODE_ONLY_CONFIG: &str = "\
baseline: 3s
prerequisites:
  required: [rollback]
recovery:
  timeout: 30s
";

/// How a fleet is built: see `Fleet::build`.
pub struct Options<'a> {
    pub nodes: usize,
    pub coordinator_args: &'a [&'a str],
    pub agent_args: &'a [&'a str],
    /// The coordinator's --config document.
    pub config: &'a str,
    /// Per node (0-based): extra `run` options, e.g. `--label zone=a`.
    pub node_args: Vec<Vec<String>>,
    /// Put the coordinator's store on a tmpfs of this size (`mount -o size=`), so a
    /// test can fill its disk.
    pub store_tmpfs: Option<&'a str>,
    /// Run the coordinator and the agents as containers of the image under a real
    /// runtime, with the manifests' pod templates; processes when None.
    pub containers: Option<Arc<Containers>>,
    /// Wait until every agent is connected (a test of an agent that must fail to
    /// start says false).
    pub wait_connected: bool,
}

impl Default for Options<'_> {
    fn default() -> Self {
        Self {
            nodes: 1,
            coordinator_args: &[],
            agent_args: &[],
            config: NODE_ONLY_CONFIG,
            node_args: Vec::new(),
            store_tmpfs: None,
            containers: None,
            wait_connected: true,
        }
    }
}

impl Fleet {
    /// Builds `n` nodes, starts the coordinator with `coordinator_args` (e.g.
    /// `--profile staging`) and every agent with `agent_args` (global agent options
    /// such as `--profile`), and waits until all agents are connected.
    pub fn new(n: usize, coordinator_args: &[&str], agent_args: &[&str]) -> Self {
        Self::build(Options {
            nodes: n,
            coordinator_args,
            agent_args,
            ..Options::default()
        })
    }

    /// A fleet as `o` describes it.
    pub fn build(o: Options<'_>) -> Self {
        let (n, coordinator_args, agent_args) = (o.nodes, o.coordinator_args, o.agent_args);
        let dir = TempPath::dir("faultline-fleet");
        let names: Vec<String> = (1..=n).map(|i| format!("node-{i}")).collect();
        let home = Home::create(
            binary("faultline-coordinator"),
            &dir,
            &names,
            Some(o.config),
        );
        let store_mount = o.store_tmpfs.map(|size| {
            let m = dir.join("store");
            std::fs::create_dir_all(&m).expect("store dir");
            run(Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "fltest-store"])
                .arg(&m));
            m
        });
        let ctl = Netns::new("ctl");
        let nodes = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let ns = Netns::new(&format!("n{}", i + 1));
                let link = format!("c{}", i + 1);
                ip(&[
                    "link", "add", &link, "netns", &ctl.name, "type", "veth", "peer", "name",
                    NODE_IFACE, "netns", &ns.name,
                ]);
                let ctl_addr = format!("10.201.{}.1", i + 1);
                let addr = format!("10.201.{}.2", i + 1);
                ip(&[
                    "-n",
                    &ctl.name,
                    "addr",
                    "add",
                    &format!("{ctl_addr}/24"),
                    "dev",
                    &link,
                ]);
                ip(&[
                    "-n",
                    &ns.name,
                    "addr",
                    "add",
                    &format!("{addr}/24"),
                    "dev",
                    NODE_IFACE,
                ]);
                ip(&["-n", &ctl.name, "link", "set", &link, "up"]);
                ip(&["-n", &ns.name, "link", "set", NODE_IFACE, "up"]);
                // A node routes through its link, as a real one does: the agent
                // reports the default-route interface, and faults default to it.
                ip(&["-n", &ns.name, "route", "add", "default", "via", &ctl_addr]);
                FleetNode {
                    name: name.clone(),
                    ns,
                    addr,
                    ctl_addr,
                }
            })
            .collect();
        let mut fleet = Self {
            ctl,
            nodes,
            dir,
            home,
            coordinator_args: coordinator_args.iter().map(|s| (*s).to_owned()).collect(),
            agent_args: agent_args.iter().map(|s| (*s).to_owned()).collect(),
            node_args: o.node_args,
            coordinator: None,
            agents: (0..n).map(|_| None).collect(),
            store_mount,
            containers: o.containers,
        };
        fleet.start_coordinator();
        for i in 0..n {
            fleet.start_agent(i);
        }
        if o.wait_connected {
            fleet.wait_connected(n, Duration::from_secs(20));
        }
        fleet
    }

    pub fn token(&self, role: Role) -> &str {
        self.home.token(role)
    }

    pub fn log_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.log"))
    }

    /// The text a process of the fleet logged so far (`coordinator`, `node-1`, ...).
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.log_path(name)).unwrap_or_default()
    }

    fn log_file(&self, name: &str) -> File {
        File::options()
            .create(true)
            .append(true)
            .open(self.log_path(name))
            .expect("log file")
    }

    /// Starts the coordinator (again) on the fleet's store and waits for its port.
    pub fn start_coordinator(&mut self) {
        assert!(self.coordinator.is_none(), "coordinator already running");
        let child = match &self.containers {
            Some(c) => self.coordinator_container(c).spawn(),
            None => self.coordinator_process().spawn(),
        }
        .expect("spawn coordinator");
        self.coordinator = Some(child);
        self.wait_coordinator_ports();
    }

    fn coordinator_process(&self) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ctl.name])
            .arg(&self.home.bin)
            .args(self.home.serve_args("store/coordinator.db"))
            .args(["--listen", &format!("0.0.0.0:{GRPC_PORT}")])
            .args(["--http", &format!("127.0.0.1:{HTTP_PORT}")])
            .args(&self.coordinator_args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(self.log_file("coordinator"))
            .stderr(self.log_file("coordinator"));
        cmd
    }

    /// The coordinator's container: the Deployment's pod with this fleet's
    /// certificates, tokens and config where its Secrets and ConfigMap would be
    /// (the ConfigMap's limits and schedule, the fleet's config), owned as the
    /// kubelet leaves them for `fsGroup: 65532`.
    fn coordinator_container(&self, c: &Containers) -> Command {
        let pod = self.dir.join("pod-coordinator");
        let user = c.coordinator.user.unwrap_or(0) as u32;
        let mut volumes = BTreeMap::new();
        for (volume, files) in [
            ("tls", vec!["ca.pem", "coordinator.pem", "coordinator.key"]),
            ("tokens", vec!["tokens.yaml"]),
        ] {
            let dir = pod.join(volume);
            std::fs::create_dir_all(&dir).expect("secret dir");
            for f in files {
                let from = match volume {
                    "tls" => self.dir.join("tls").join(f),
                    _ => self.dir.join(f),
                };
                let to = dir.join(f);
                std::fs::copy(&from, &to).expect("secret file");
                own(&to, 0, user, 0o440);
            }
            volumes.insert(volume.to_owned(), dir);
        }
        let config = pod.join("config");
        std::fs::create_dir_all(&config).expect("config dir");
        let map = manifest("coordinator-config.yaml")
            .into_iter()
            .find(|d| d["kind"] == "ConfigMap")
            .expect("the coordinator's ConfigMap");
        for key in ["limits.yaml", "schedule.yaml"] {
            let text = map["data"][key].as_str().expect("ConfigMap key");
            std::fs::write(config.join(key), text).expect("config file");
        }
        std::fs::copy(self.dir.join("config.yaml"), config.join("config.yaml"))
            .expect("the fleet's config");
        volumes.insert("config".to_owned(), config);
        let store = pod.join("store");
        std::fs::create_dir_all(&store).expect("store dir");
        own(&store, user, user, 0o750);
        volumes.insert("store".to_owned(), store);
        let args = c.coordinator.run_args(
            &c.podman,
            &self.container_name("coordinator"),
            &self.ctl.name,
            &volumes,
            &[],
        );
        let mut cmd = c.podman.command();
        cmd.args(args)
            .args(&self.coordinator_args)
            .stdin(Stdio::null())
            .stdout(self.log_file("coordinator"))
            .stderr(self.log_file("coordinator"));
        cmd
    }

    /// The name of this fleet's container for `what` (`coordinator`, `node-1`).
    pub fn container_name(&self, what: &str) -> String {
        let fleet = self.dir.file_name().unwrap_or_default().to_string_lossy();
        format!("{fleet}-{what}")
    }

    fn wait_coordinator_ports(&self) {
        let until = Instant::now() + Duration::from_secs(15);
        let port_open = || {
            self.ctl.enter(|| {
                std::net::TcpStream::connect(("127.0.0.1", GRPC_PORT)).is_ok()
                    && std::net::TcpStream::connect(("127.0.0.1", HTTP_PORT)).is_ok()
            })
        };
        while !port_open() {
            assert!(
                Instant::now() < until,
                "coordinator did not listen: {}",
                self.log("coordinator")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn coordinator_pid(&self) -> i32 {
        self.coordinator.as_ref().expect("coordinator running").id() as i32
    }

    /// Sends `sig` to the coordinator (SIGSTOP/SIGCONT to freeze it, ...).
    pub fn signal_coordinator(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our child.
        unsafe { libc::kill(self.coordinator_pid(), sig) };
    }

    /// Sends `sig` to the coordinator and waits for it to exit (at most `timeout`,
    /// then SIGKILL): its exit status and how long it took.
    pub fn stop_coordinator(
        &mut self,
        sig: libc::c_int,
        timeout: Duration,
    ) -> (std::process::ExitStatus, Duration) {
        let mut c = self.coordinator.take().expect("coordinator running");
        let t0 = Instant::now();
        // SAFETY: kill(2) on our child.
        unsafe { libc::kill(c.id() as i32, sig) };
        while matches!(c.try_wait(), Ok(None)) && t0.elapsed() < timeout {
            std::thread::sleep(Duration::from_millis(5));
        }
        let took = t0.elapsed();
        let _ = c.kill();
        (c.wait().expect("wait coordinator"), took)
    }

    /// SIGKILLs the coordinator and reaps it.
    pub fn kill_coordinator(&mut self) {
        let mut c = self.coordinator.take().expect("coordinator running");
        let _ = c.kill();
        let _ = c.wait();
    }

    /// Starts node i's agent (0-based), joined to the node's network namespace only, so
    /// it shares the host's cgroups like a real node's agent.
    pub fn start_agent(&mut self, i: usize) {
        let child = match &self.containers {
            Some(c) => self.agent_container(c, i).spawn(),
            None => self.agent_process(i).spawn(),
        }
        .expect("spawn agent");
        self.agents[i] = Some(child);
    }

    /// The volumes of node i's agent pod: the host's cgroup and BPF filesystems,
    /// the node's state directory, the fleet's certificates as its Secret.
    fn agent_volumes(&self, i: usize) -> BTreeMap<String, PathBuf> {
        let state = self.agent_state_dir(i);
        std::fs::create_dir_all(&state).expect("state dir");
        [
            ("cgroup", PathBuf::from("/sys/fs/cgroup")),
            ("bpffs", PathBuf::from("/sys/fs/bpf")),
            ("state", state),
            ("tls", self.dir.join("tls")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// Node i's agent pod, as the runtime holds it: the init container and the
    /// agent run in it (made on first use; no infra container, since the network is
    /// the node's).
    pub fn agent_pod(&self, i: usize) -> String {
        let c = self.containers.as_ref().expect("a container fleet");
        let pod = self.container_name(&format!("{}-pod", self.nodes[i].name));
        if !c.podman.podman(&["pod", "exists", &pod]).status.success() {
            let out = c
                .podman
                .podman(&["pod", "create", "--infra=false", "--name", &pod]);
            assert!(
                out.status.success(),
                "podman pod create: {}",
                crate::container::text(&out)
            );
        }
        pod
    }

    /// Node i's agent container: the DaemonSet's pod on that node, its "host"
    /// network the node's namespace, the coordinator's Service at its address.
    fn agent_container(&self, c: &Containers, i: usize) -> Command {
        let pod = self.agent_pod(i);
        let node = &self.nodes[i];
        let env = [
            ("NODE_NAME", node.name.clone()),
            (
                "FAULTLINE_COORDINATOR",
                format!("https://{}:{GRPC_PORT}", node.ctl_addr),
            ),
        ];
        let args = c.agent.run_args(
            &c.podman,
            &self.container_name(&node.name),
            &node.ns.name,
            &self.agent_volumes(i),
            &env,
        );
        let mut cmd = c.podman.command();
        cmd.arg(&args[0])
            .arg(format!("--pod={pod}"))
            .args(&args[1..])
            .args(&self.agent_args)
            .args(self.node_args.get(i).into_iter().flatten())
            .stdin(Stdio::null())
            .stdout(self.log_file(&node.name))
            .stderr(self.log_file(&node.name));
        cmd
    }

    /// Runs node i's init container (`faultline-agent cleanup`) to its end, as the
    /// kubelet does before the agent starts: its output, and whether it succeeded.
    pub fn run_cleanup_container(&self, i: usize) -> (bool, String) {
        let c = self.containers.as_ref().expect("a container fleet");
        let pod = self.agent_pod(i);
        let node = &self.nodes[i];
        let args = c.cleanup.run_args(
            &c.podman,
            &self.container_name(&format!("{}-cleanup", node.name)),
            &node.ns.name,
            &self.agent_volumes(i),
            &[("NODE_NAME", node.name.clone())],
        );
        let out = c
            .podman
            .command()
            .arg(&args[0])
            .arg(format!("--pod={pod}"))
            .args(&args[1..])
            .output()
            .expect("podman run");
        (out.status.success(), crate::container::text(&out))
    }

    /// The fleet's containers (a container fleet only).
    pub fn containers(&self) -> &Containers {
        self.containers.as_ref().expect("a container fleet")
    }

    fn agent_process(&self, i: usize) -> Command {
        let node = &self.nodes[i];
        let tls = self.dir.join("tls");
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", node.ns.name))
            .arg(binary("faultline-agent"))
            .arg("--state-dir")
            .arg(self.agent_state_dir(i))
            .args(&self.agent_args)
            .arg("run")
            .args([
                "--coordinator",
                &format!("https://{}:{GRPC_PORT}", node.ctl_addr),
            ])
            .args(["--tls-server-name", "faultline-coordinator"])
            .args(["--node-name", &node.name])
            .arg("--ca")
            .arg(tls.join("ca.pem"))
            .arg("--cert")
            .arg(tls.join(format!("{}.pem", node.name)))
            .arg("--key")
            .arg(tls.join(format!("{}.key", node.name)))
            .args(self.node_args.get(i).into_iter().flatten())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(self.log_file(&node.name))
            .stderr(self.log_file(&node.name));
        cmd
    }

    /// Node i's agent state directory (its journal, locks and pid file).
    pub fn agent_state_dir(&self, i: usize) -> PathBuf {
        self.dir.join(format!("state-{}", self.nodes[i].name))
    }

    /// Reaps node i's agent, which is exiting by itself.
    pub fn wait_agent(&mut self, i: usize) -> std::process::ExitStatus {
        let mut c = self.agents[i].take().expect("agent running");
        c.wait().expect("wait agent")
    }

    pub fn agent_pid(&self, i: usize) -> i32 {
        self.agents[i].as_ref().expect("agent running").id() as i32
    }

    /// Stops node i's agent with `sig` and reaps it.
    pub fn stop_agent(&mut self, i: usize, sig: libc::c_int) -> std::process::ExitStatus {
        let mut c = self.agents[i].take().expect("agent running");
        // SAFETY: kill(2) on our child.
        unsafe { libc::kill(c.id() as i32, sig) };
        c.wait().expect("wait agent")
    }

    /// Waits until `n` agents are connected to the coordinator.
    pub fn wait_connected(&self, n: usize, timeout: Duration) {
        let until = Instant::now() + timeout;
        loop {
            if self.connected() >= n {
                return;
            }
            assert!(
                Instant::now() < until,
                "{n} agents never connected; coordinator log:\n{}",
                self.log("coordinator")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// How many agents the coordinator has connected now.
    pub fn connected(&self) -> usize {
        let out = self.cli(Role::Viewer, &["nodes", "-o", "json"]);
        if !out.status.success() {
            return 0;
        }
        let nodes: Value = serde_json::from_slice(&out.stdout).expect("nodes json");
        nodes
            .as_array()
            .map_or(0, |a| a.iter().filter(|n| n["connected"] == true).count())
    }

    /// Node i's agent's exit status if it has exited (it is reaped then).
    pub fn agent_exited(&mut self, i: usize) -> Option<std::process::ExitStatus> {
        let status = self.agents[i].as_mut()?.try_wait().ok()??;
        self.agents[i] = None;
        Some(status)
    }

    /// The `faultline` CLI, run in the coordinator's namespace with `role`'s token.
    pub fn cli_command(&self, role: Role, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ctl.name])
            .arg(binary("faultline"))
            .args(["--coordinator", &format!("https://127.0.0.1:{GRPC_PORT}")])
            .arg("--ca")
            .arg(self.dir.join("tls/ca.pem"))
            .args(args)
            .env("FAULTLINE_TOKEN", self.token(role))
            .stdin(Stdio::null());
        cmd
    }

    pub fn cli(&self, role: Role, args: &[&str]) -> Output {
        self.cli_command(role, args)
            .output()
            .expect("run faultline")
    }

    /// `cli` with the arguments given as one line, split on whitespace.
    pub fn cli_line(&self, role: Role, line: &str) -> Output {
        self.cli(role, &line.split_whitespace().collect::<Vec<_>>())
    }

    /// `faultline <line> --wait -o json`, running, its events read as they come.
    pub fn watch_run(&self, role: Role, line: &str) -> RunEvents {
        let mut args: Vec<&str> = line.split_whitespace().collect();
        args.extend(["--wait", "-o", "json"]);
        let child = self
            .cli_command(role, &args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn faultline run");
        RunEvents::new(child)
    }

    /// `curl -X <method>` against the coordinator's HTTP port, with `role`'s token
    /// (or none): the HTTP status and the JSON body.
    pub fn http(&self, role: Option<Role>, method: &str, path: &str) -> (u16, Value) {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ctl.name, "curl", "-s", "-X", method])
            .args(["-w", "\n%{http_code}"]);
        if let Some(r) = role {
            cmd.args(["-H", &format!("Authorization: Bearer {}", self.token(r))]);
        }
        let out = run(cmd.arg(format!("http://127.0.0.1:{HTTP_PORT}{path}")));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.trim_end().rsplit_once('\n').unwrap_or(("", &text));
        (
            code.trim().parse().unwrap_or(0),
            serde_json::from_str(body).unwrap_or(Value::String(body.to_owned())),
        )
    }

    /// One experiment as JSON (`faultline experiment <id> -o json`).
    pub fn experiment(&self, id: &str) -> Value {
        let out = self.cli(Role::Viewer, &["experiment", id, "-o", "json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("experiment json")
    }

    /// Waits until experiment `id` reaches a phase in `phases`; returns it.
    pub fn wait_phase(&self, id: &str, phases: &[&str], timeout: Duration) -> Value {
        let until = Instant::now() + timeout;
        loop {
            let e = self.experiment(id);
            if phases.iter().any(|p| e["phase"] == *p) {
                return e;
            }
            assert!(Instant::now() < until, "{id} never reached {phases:?}: {e}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The JSON event stream of a running `faultline run --wait`, read on a thread of
/// its own so the CLI never waits for the test to read.
pub struct RunEvents {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl RunEvents {
    fn new(mut child: Child) -> Self {
        let stdout: ChildStdout = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self { child, lines }
    }

    /// Reads events until one satisfies `pred`, and returns it.
    pub fn until(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        loop {
            let line = self
                .lines
                .recv()
                .expect("the run ended before the awaited event");
            let ev: Value = serde_json::from_str(&line).expect("event json");
            if pred(&ev) {
                return ev;
            }
        }
    }

    /// Reads the rest; returns the exit code and the remaining events.
    pub fn finish(mut self) -> (Option<i32>, Vec<Value>) {
        let code = self.child.wait().expect("wait run").code();
        let rest = self
            .lines
            .iter()
            .filter_map(|l| serde_json::from_str(&l).ok())
            .collect();
        (code, rest)
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        // Agents first, with SIGTERM: each removes its effects before it exits.
        for a in self.agents.iter_mut().flatten() {
            // SAFETY: kill(2) on our child.
            unsafe { libc::kill(a.id() as i32, libc::SIGTERM) };
        }
        for a in self.agents.iter_mut().flatten() {
            let until = Instant::now() + Duration::from_secs(20);
            while matches!(a.try_wait(), Ok(None)) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = a.kill();
            let _ = a.wait();
        }
        if let Some(c) = &mut self.coordinator {
            // SAFETY: kill(2) on our child.
            unsafe { libc::kill(c.id() as i32, libc::SIGCONT) };
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let until = Instant::now() + Duration::from_secs(10);
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(m) = &self.store_mount {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
    }
}

/// chown and chmod, as a kubelet leaves a volume's files.
fn own(path: &std::path::Path, uid: u32, gid: u32, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}
