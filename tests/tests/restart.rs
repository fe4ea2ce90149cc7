//! Restarts under load: the real agent, watching the test API server through a kubeconfig,
//! serves a dual-stack Service to a client pod that, in both families and for the whole test,
//! makes new TCP connections (hundreds a second), keeps one echoed TCP stream and one UDP
//! exchange with sequence numbers going. Meanwhile the agent is stopped and started five
//! times, replaced once by the binary at another path (an upgrade), and then the API server
//! goes away and comes back with its history compacted (a relist). Nothing may fail: no
//! connection, no stream exchange, no UDP reply. Once on the TC path (the client outside every
//! cgroup of ours), once on the socket path (the client inside the agent's cgroup).
use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::Value;
use twinstack_lab::{
    agent::{Agent, AgentOptions, AgentSource},
    apiserver::{ApiServer, Kind},
    lab::DUAL_STACK,
    load::{LoadReport, now_ms},
    objects::{ServiceBuilder, SliceBuilder},
    require_root,
    servers::Servers,
    topology::Topology,
    twinstack_binary,
};

const VIP4: &str = "10.96.0.10";
const VIP6: &str = "fd00:10:96::10";
const TCP_PORT: u16 = 80;
/// The UDP echo servers' port (and the Service's), beside the lab servers' 5353.
const ECHO_PORT: u16 = 7777;
/// Threads making new connections, per family.
const CONNECTION_THREADS: usize = 3;
/// New connections per second each family must reach, restarts included.
const MIN_RATE: f64 = 200.0;
/// A load run stops by itself after this long (the servers end a stream after 60 s).
const LOAD_LIMIT_SECONDS: u64 = 50;
const RESTARTS: usize = 5;

/// Which hook translates the client (always in the client pod's namespace).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hook {
    /// Outside every cgroup of ours: only the TC programs on the pod's veth translate it.
    Tc,
    /// In the agent's cgroup: the socket hooks translate it at connect/sendmsg.
    Socket,
}

/// Topology, servers, the API server double in the node namespace, and the agent on it.
/// Fields drop in order: the agent (stopped, pins removed) first, the namespaces last.
struct RestartLab {
    agent: Agent,
    api: Arc<ApiServer>,
    _kubeconfig: tempfile::TempDir,
    _servers: Vec<Servers>,
    topology: Topology,
}

fn addresses(topology: &Topology, v6: bool) -> Vec<IpAddr> {
    topology
        .backends
        .iter()
        .map(|pod| pod.address(v6))
        .collect()
}

impl RestartLab {
    fn start() -> Self {
        require_root();
        let topology = Topology::new(2);
        let mut servers = Vec::new();
        for pod in &topology.backends {
            servers.push(Servers::start(pod, 8080, 5353));
            servers.push(Servers::start_udp_echo(pod, ECHO_PORT));
        }
        let api = Arc::new(
            topology
                .node
                .enter(|| ApiServer::new().expect("API server")),
        );
        let service = ServiceBuilder::new("demo")
            .cluster_ips(&[VIP4.parse().unwrap(), VIP6.parse().unwrap()])
            .port("http", "TCP", TCP_PORT, 8080)
            .port("echo", "UDP", ECHO_PORT, ECHO_PORT)
            .json();
        api.apply(service).expect("Service");
        for (name, v6) in [("demo-ipv4", false), ("demo-ipv6", true)] {
            let slice = SliceBuilder::new("demo", name)
                .address_type(if v6 { "IPv6" } else { "IPv4" })
                .port("http", "TCP", 8080)
                .port("echo", "UDP", ECHO_PORT)
                .ready(&addresses(&topology, v6))
                .json();
            api.apply(slice).expect("EndpointSlice");
        }
        api.apply_file(Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/api/node-node-a.json"))
            .expect("Node");
        let kubeconfig = tempfile::tempdir().expect("temp dir");
        let path = kubeconfig.path().join("kubeconfig");
        api.write_kubeconfig(&path).expect("kubeconfig");
        let agent = Agent::start(
            &topology.node,
            AgentOptions {
                source: AgentSource::Kubeconfig(&path),
                cluster_cidr: DUAL_STACK,
                extra: vec!["--min-sync-period".into(), "100ms".into()],
            },
        );
        Self {
            agent,
            api,
            _kubeconfig: kubeconfig,
            _servers: servers,
            topology,
        }
    }

    /// Starts the load (`lab-load`) in the client pod, placed for `hook`.
    fn load(&self, hook: Hook) -> Load {
        let pair = |vip: &str| {
            let ip: IpAddr = vip.parse().unwrap();
            format!(
                "{},{}",
                SocketAddr::new(ip, TCP_PORT),
                SocketAddr::new(ip, ECHO_PORT)
            )
        };
        let mut command = Command::new(env!("CARGO_BIN_EXE_lab-load"));
        command
            .args([
                LOAD_LIMIT_SECONDS.to_string(),
                CONNECTION_THREADS.to_string(),
                pair(VIP4),
                pair(VIP6),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if hook == Hook::Socket {
            self.agent.cgroup.command(&mut command);
        }
        self.topology.client.netns.command(&mut command);
        Load {
            child: Some(command.spawn().expect("lab-load")),
            started: Instant::now(),
        }
    }

    fn counters(&self) -> [u64; 2] {
        [
            self.agent.counter("dnat_new"),
            self.agent.counter("sock_connect"),
        ]
    }
}

/// A running `lab-load`: closing its stdin stops it (it stops by itself at its limit too).
struct Load {
    child: Option<Child>,
    started: Instant,
}

impl Load {
    fn finish(mut self) -> LoadReport {
        let mut child = self.child.take().expect("running");
        drop(child.stdin.take());
        let output = child.wait_with_output().expect("lab-load");
        assert!(
            self.started.elapsed() < Duration::from_secs(LOAD_LIMIT_SECONDS),
            "the load stopped by itself before the scenario ended ({:?})",
            self.started.elapsed()
        );
        assert!(
            output.status.success(),
            "lab-load: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
            panic!(
                "lab-load's report ({e}): {}",
                String::from_utf8_lossy(&output.stdout)
            )
        })
    }
}

impl Drop for Load {
    /// A test that failed midway: stop the load (by its PID) before the cgroup goes.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What happened when (milliseconds since the Unix epoch), to place each failure.
#[derive(Default)]
struct Timeline(Vec<(String, u64, u64)>);

impl Timeline {
    fn phase<T>(&mut self, name: &str, f: impl FnOnce() -> T) -> T {
        let start = now_ms();
        let result = f();
        self.0.push((name.to_owned(), start, now_ms()));
        result
    }

    fn place(&self, at_ms: u64) -> String {
        if let Some((name, ..)) = self.0.iter().find(|(_, s, e)| (*s..=*e).contains(&at_ms)) {
            return format!("during {name}");
        }
        match self.0.iter().rev().find(|(_, _, e)| *e < at_ms) {
            Some((name, _, end)) => format!("{} ms after {name}", at_ms - end),
            None => "before the first phase".to_owned(),
        }
    }
}

/// Every family of `report`: no failure of any kind, the connection rate reached, both
/// backends used, the stream and the UDP exchange kept going the whole time.
fn check(report: &LoadReport, timeline: &Timeline, agent: &Agent, what: &str) {
    let seconds = report.elapsed_ms as f64 / 1000.0;
    let mut problems = Vec::new();
    for family in &report.families {
        let rate = family.connection_rate(report.elapsed_ms);
        eprintln!(
            "{what}, {} over {seconds:.1} s: {} connections ({rate:.0}/s, {} failed, backends \
             {:?}); stream to {}: {} exchanges, intact {}; UDP {}: {} exchanges, {} lost, {} late",
            family.tcp,
            family.connections,
            family.connection_failures,
            family.backends,
            family.stream_backend,
            family.stream_exchanges,
            family.stream_intact,
            family.udp,
            family.udp_exchanges,
            family.udp_lost,
            family.udp_late,
        );
        if family.connection_failures > 0 {
            problems.push(format!(
                "{}: {} connections failed",
                family.tcp, family.connection_failures
            ));
        }
        if rate < MIN_RATE {
            problems.push(format!(
                "{}: {rate:.0} connections/s, below {MIN_RATE}",
                family.tcp
            ));
        }
        if family.backends.len() != 2 {
            problems.push(format!(
                "{}: connections reached {:?}",
                family.tcp, family.backends
            ));
        }
        // A round every ~5 ms (UDP ~2 ms) when all is well: a tenth of that is the floor.
        let floor = (seconds * 20.0) as u64;
        if !family.stream_intact || family.stream_exchanges < floor {
            problems.push(format!(
                "{}: stream broken or stalled after {} exchanges",
                family.tcp, family.stream_exchanges
            ));
        }
        if family.udp_lost > 0 || family.udp_exchanges < floor {
            problems.push(format!(
                "{}: {} UDP exchanges lost, {} answered",
                family.udp, family.udp_lost, family.udp_exchanges
            ));
        }
        for failure in &family.failures {
            problems.push(format!(
                "  {} ({})",
                failure.what,
                timeline.place(failure.at_ms)
            ));
        }
    }
    if !problems.is_empty() {
        let log = agent.log();
        let lines: Vec<&str> = log.lines().collect();
        panic!(
            "{what}:\n{}\nphases (ms since the epoch): {:?}\nagent log (last 80 lines):\n{}",
            problems.join("\n"),
            timeline.0,
            lines[lines.len().saturating_sub(80)..].join("\n")
        );
    }
}

/// The id of every pinned map, by name: the same ids mean the same kernel objects.
fn map_ids(agent: &Agent) -> BTreeMap<&'static str, u32> {
    let pins = agent
        .bpf_root
        .join(format!("v{}", proxy_common::LAYOUT_VERSION))
        .join("maps");
    proxy_common::maps::MAPS
        .iter()
        .map(|spec| {
            let info = aya::maps::MapInfo::from_pin(pins.join(spec.name))
                .unwrap_or_else(|e| panic!("map {}: {e}", spec.name));
            (spec.name, info.id())
        })
        .collect()
}

/// Each pinned link: pin name → (link id, program id).
fn links(agent: &Agent) -> BTreeMap<String, (u64, u64)> {
    let rows: Value =
        serde_json::from_str(&agent.twinstack(&["bpf", "link", "list", "-o", "json"]))
            .expect("link list JSON");
    rows.as_array()
        .expect("array")
        .iter()
        .map(|row| {
            (
                row["pin"].as_str().expect("pin").to_owned(),
                (
                    row["link_id"].as_u64().expect("link id"),
                    row["program_id"].as_u64().expect("program id"),
                ),
            )
        })
        .collect()
}

fn first_syncs(agent: &Agent) -> usize {
    agent.log().matches("first sync programmed").count()
}

/// "A newer build of the same layout": the binary has no build id of its own (`--version` is
/// the crate version), so the upgrade is the same build run from another path, and what makes
/// it an upgrade is checked: the new process is that file, it adopted every pinned map (same
/// ids), took over every pinned interface link in place (same link ids), put its own programs
/// on every link (new program ids), and programmed its first sync.
fn upgrade(lab: &mut RestartLab, timeline: &mut Timeline) {
    let binary = twinstack_binary();
    // Beside the original: a hard link is instant there (the binary is hundreds of MB).
    let dir = tempfile::Builder::new()
        .prefix("twinstack-upgrade-")
        .tempdir_in(binary.parent().expect("the binary's directory"))
        .expect("temp dir");
    let next = dir.path().join("twinstack");
    std::fs::hard_link(&binary, &next)
        .or_else(|_| std::fs::copy(&binary, &next).map(|_| ()))
        .expect("the upgrade binary");
    let (maps, links_before, syncs) = (
        map_ids(&lab.agent),
        links(&lab.agent),
        first_syncs(&lab.agent),
    );
    assert!(!links_before.is_empty(), "no pinned link");
    let node = &lab.topology.node;
    timeline.phase("the upgrade", || lab.agent.restart_with(node, &next));
    let pid = lab.agent.pid().expect("running");
    let exe: PathBuf = std::fs::read_link(format!("/proc/{pid}/exe")).expect("exe");
    assert_eq!(
        exe,
        next.canonicalize().unwrap(),
        "the new agent runs the new binary"
    );
    assert_eq!(
        map_ids(&lab.agent),
        maps,
        "the new agent adopted the pinned maps"
    );
    let links_after = links(&lab.agent);
    assert_eq!(
        links_after.keys().collect::<Vec<_>>(),
        links_before.keys().collect::<Vec<_>>(),
        "the same links"
    );
    for (pin, (link, program)) in &links_before {
        let (link_after, program_after) = links_after[pin];
        // A cgroup link is replaced make-before-break (attached beside the old one, which is
        // then dropped); a TCX link is updated in place.
        if !pin.ends_with("-cgroup") {
            assert_eq!(link_after, *link, "{pin}: the link was taken over in place");
        }
        assert_ne!(
            program_after, *program,
            "{pin}: the new agent swapped its own program in"
        );
    }
    assert_eq!(first_syncs(&lab.agent), syncs + 1, "{}", lab.agent.log());
    assert!(
        lab.agent
            .metric("twinstack_syncs_total")
            .is_some_and(|n| n >= 1.0),
        "the new agent counts its sync:\n{}",
        lab.agent.metrics()
    );
}

/// The scenario, with the client placed for `hook`.
fn restarts_under_load(hook: Hook) {
    let mut lab = RestartLab::start();
    let settle = || std::thread::sleep(Duration::from_millis(700));
    let counters = lab.counters();
    let served = Instant::now();

    // The agent: five stops and starts, then the upgrade.
    let mut timeline = Timeline::default();
    let load = lab.load(hook);
    settle();
    let syncs = first_syncs(&lab.agent);
    for i in 1..=RESTARTS {
        let node = &lab.topology.node;
        timeline.phase(&format!("agent restart {i}"), || lab.agent.restart(node));
        settle();
    }
    assert_eq!(first_syncs(&lab.agent), syncs + RESTARTS);
    upgrade(&mut lab, &mut timeline);
    settle();
    let agent_restarts = load.finish();
    check(&agent_restarts, &timeline, &lab.agent, "agent restarts");

    // The API server: away for two seconds, back with its history compacted, so every watch
    // ends in a 410 and a relist.
    let mut timeline = Timeline::default();
    let load = lab.load(hook);
    settle();
    let lists = lab.api.requests(Kind::EndpointSlice).lists;
    timeline.phase("API server down", || {
        lab.api.stop();
        std::thread::sleep(Duration::from_secs(2));
    });
    timeline.phase("API server back, until relisted", || {
        lab.api.compact();
        let api = lab.api.clone();
        lab.topology
            .node
            .enter(move || api.start())
            .expect("API server restart");
        let deadline = Instant::now() + Duration::from_secs(30);
        while lab.api.requests(Kind::EndpointSlice).lists <= lists {
            assert!(
                Instant::now() < deadline,
                "the agent did not relist:\n{}",
                lab.agent.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    settle();
    assert_eq!(lab.agent.healthz(), Some(200), "{}", lab.agent.log());
    let api_restart = load.finish();
    check(&api_restart, &timeline, &lab.agent, "API server restart");

    // The traffic took the path it was meant to: every connection was translated there.
    let connections: u64 = [&agent_restarts, &api_restart]
        .iter()
        .flat_map(|r| &r.families)
        .map(|f| f.connections)
        .sum();
    let [dnat, sock] = lab.counters();
    let (dnat, sock) = (dnat - counters[0], sock - counters[1]);
    eprintln!(
        "{hook:?}: {connections} connections; dnat_new +{dnat}, sock_connect +{sock}; {:?} in all",
        served.elapsed()
    );
    match hook {
        Hook::Tc => {
            assert!(dnat >= connections, "dnat_new +{dnat} < {connections}");
            assert_eq!(sock, 0, "the socket hooks saw the TC client");
        }
        Hook::Socket => {
            assert!(sock >= connections, "sock_connect +{sock} < {connections}");
            assert_eq!(dnat, 0, "the TC programs translated the socket client");
        }
    }
}

#[test]
fn restarts_of_the_agent_and_the_api_server_drop_nothing_on_the_tc_path() {
    restarts_under_load(Hook::Tc);
}

#[test]
fn restarts_of_the_agent_and_the_api_server_drop_nothing_on_the_socket_path() {
    restarts_under_load(Hook::Socket);
}
