//! The real `twinstack run` process, started in the node namespace with its own pin root.
//! On drop it is stopped (by its own PID) and `twinstack cleanup` removes its pins.
use std::{
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{cgroup::Cgroup, netns::Netns, topology::POD_INTERFACES, twinstack_binary, unique};

pub const HEALTHZ_PORT: u16 = 10256;
pub const METRICS_PORT: u16 = 10249;

pub struct Agent {
    child: Option<Child>,
    pub bpf_root: PathBuf,
    /// The cgroup the agent's socket programs serve (`--cgroup-root`): this agent's own, so a
    /// lab agent never touches a process it did not start.
    pub cgroup: Cgroup,
    node_path: String,
    log: PathBuf,
    arguments: Vec<std::ffi::OsString>,
    /// Started as `ip netns exec NODE twinstack …` (a mount namespace of its own, /sys
    /// remounted: no bpffs, no cgroup v2), not by entering the namespace.
    ip_netns_exec: bool,
}

/// Where the agent reads Services from.
pub enum AgentSource<'a> {
    Manifests(&'a Path),
    Kubeconfig(&'a Path),
}

/// Flags for `twinstack run` beyond the ones every lab agent gets.
pub struct AgentOptions<'a> {
    pub source: AgentSource<'a>,
    pub cluster_cidr: &'a str,
    pub extra: Vec<String>,
}

impl Agent {
    /// Starts the agent in `node` and waits (bounded) until /healthz answers 200.
    pub fn start(node: &Netns, options: AgentOptions<'_>) -> Self {
        let agent = Self::launch(node, options);
        agent.wait_healthy(Duration::from_secs(20));
        agent
    }

    /// Starts the agent as `ip netns exec NODE twinstack run …` and waits until it is healthy.
    pub fn start_via_ip_netns_exec(node: &Netns, options: AgentOptions<'_>) -> Self {
        let mut agent = Self::prepare(node, options);
        agent.ip_netns_exec = true;
        agent.spawn(node);
        agent.wait_healthy(Duration::from_secs(20));
        agent
    }

    /// Starts the agent in `node` without waiting for it to become healthy.
    pub fn launch(node: &Netns, options: AgentOptions<'_>) -> Self {
        let mut agent = Self::prepare(node, options);
        agent.spawn(node);
        agent
    }

    /// The agent's pins, cgroup, log and flags; not started.
    fn prepare(node: &Netns, options: AgentOptions<'_>) -> Self {
        crate::ensure_bpffs();
        let bpf_root = PathBuf::from(format!("/sys/fs/bpf/{}", unique("twinstack-test-")));
        let cgroup = Cgroup::create("twinstack-test-");
        let log = std::env::temp_dir().join(format!("{}.log", unique("twinstack-agent-")));
        let mut arguments: Vec<std::ffi::OsString> = vec!["run".into()];
        match options.source {
            AgentSource::Manifests(dir) => {
                arguments.push("--manifests".into());
                arguments.push(dir.into());
            }
            AgentSource::Kubeconfig(path) => {
                arguments.push("--kubeconfig".into());
                arguments.push(path.into());
            }
        }
        // Node "node-a" and /healthz on 127.0.0.1 unless the test says otherwise.
        if !options.extra.iter().any(|flag| flag == "--node-name") {
            arguments.extend(["--node-name".into(), "node-a".into()]);
        }
        if !options
            .extra
            .iter()
            .any(|flag| flag == "--healthz-bind-address")
        {
            arguments.push("--healthz-bind-address".into());
            arguments.push(format!("127.0.0.1:{HEALTHZ_PORT}").into());
        }
        for flag in [
            "--cluster-cidr",
            options.cluster_cidr,
            "--pod-interfaces",
            POD_INTERFACES,
            "--bpf-root",
        ] {
            arguments.push(flag.into());
        }
        arguments.push(bpf_root.clone().into());
        arguments.push("--cgroup-root".into());
        arguments.push(cgroup.path().into());
        arguments.extend(options.extra.iter().map(Into::into));
        Self {
            child: None,
            bpf_root,
            cgroup,
            node_path: node.path(),
            log,
            arguments,
            ip_netns_exec: false,
        }
    }

    fn spawn(&mut self, node: &Netns) {
        self.spawn_binary(node, &twinstack_binary());
    }

    fn spawn_binary(&mut self, node: &Netns, binary: &Path) {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("agent log");
        let mut command = if self.ip_netns_exec {
            let mut command = Command::new("ip");
            command.args(["netns", "exec", node.name()]).arg(binary);
            command
        } else {
            let mut command = Command::new(binary);
            node.command(&mut command);
            command
        };
        command
            .args(&self.arguments)
            .env("RUST_LOG", "info,proxy_userspace=debug")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log_file);
        self.child = Some(command.spawn().expect("starting twinstack"));
    }

    /// Stops the agent and starts a new one on the same pins (an upgrade or a crash restart).
    pub fn restart(&mut self, node: &Netns) {
        self.stop();
        self.spawn(node);
        self.wait_healthy(Duration::from_secs(20));
    }

    /// Stops the agent and starts `binary` with the same flags on the same pins: an upgrade
    /// to another build of the same layout.
    pub fn restart_with(&mut self, node: &Netns, binary: &Path) {
        self.stop();
        self.spawn_binary(node, binary);
        self.wait_healthy(Duration::from_secs(20));
    }

    /// A datapath counter, summed over CPUs, from /metrics.
    pub fn counter(&self, outcome: &str) -> u64 {
        self.metric(&format!(
            "twinstack_datapath_packets_total{{outcome=\"{outcome}\"}}"
        ))
        .unwrap_or_else(|| panic!("no counter {outcome}:\n{}", self.metrics())) as u64
    }

    /// GET /healthz from inside the node namespace: the status code, or None if unreachable.
    pub fn healthz(&self) -> Option<u16> {
        self.get(HEALTHZ_PORT, "/healthz").map(|(status, _)| status)
    }

    /// GET /metrics from inside the node namespace: the Prometheus text.
    pub fn metrics(&self) -> String {
        self.get(METRICS_PORT, "/metrics")
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    /// The value of one metric line (name with its labels, e.g. `twinstack_frontends{family="IPv4"}`).
    pub fn metric(&self, series: &str) -> Option<f64> {
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
    }

    /// One HTTP GET on the node's loopback: (status, body).
    fn get(&self, port: u16, path: &str) -> Option<(u16, String)> {
        self.http_get([127, 0, 0, 1].into(), port, path)
    }

    /// `GET path` from inside the node namespace to `address:port`: the status code and the
    /// body, or `None` if nothing answered.
    pub fn http_get(
        &self,
        address: std::net::IpAddr,
        port: u16,
        path: &str,
    ) -> Option<(u16, String)> {
        let node = self.node_path.clone();
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        std::thread::spawn(move || {
            crate::netns::join(&node);
            let mut stream =
                TcpStream::connect_timeout(&(address, port).into(), Duration::from_millis(500))
                    .ok()?;
            stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
            stream.write_all(request.as_bytes()).ok()?;
            let mut response = String::new();
            let _ = stream.read_to_string(&mut response);
            let status = response.split_whitespace().nth(1)?.parse().ok()?;
            let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
            Some((status, body))
        })
        .join()
        .ok()
        .flatten()
    }

    pub fn wait_healthy(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.healthz() == Some(200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "twinstack did not become healthy within {limit:?}; its log:\n{}",
            self.log()
        );
    }

    /// Whether the agent process is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The agent process's PID while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `twinstack ARGS… --bpf-root <ours>`, e.g. `bpf service list -o json`.
    pub fn twinstack(&self, args: &[&str]) -> String {
        let output = Command::new(twinstack_binary())
            .args(args)
            .arg("--bpf-root")
            .arg(&self.bpf_root)
            .output()
            .expect("running twinstack");
        assert!(
            output.status.success(),
            "twinstack {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The programmed services, as `bpf service list -o json` reports them.
    pub fn services(&self) -> serde_json::Value {
        serde_json::from_str(&self.twinstack(&["bpf", "service", "list", "-o", "json"]))
            .expect("service list JSON")
    }

    /// Stops the agent with SIGTERM (bounded wait) and returns its exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: signalling the child we started, by its PID.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
        let _ = Command::new(twinstack_binary())
            .args(["cleanup", "--bpf-root"])
            .arg(&self.bpf_root)
            .output();
        let _ = std::fs::remove_file(&self.log);
    }
}
