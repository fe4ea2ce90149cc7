//! Section 2: end to end in network namespaces. One topology (node, client pod, two backend
//! pods, and a client outside the cluster on the node's device), one mode active at a time,
//! from two entries: the client pod to the target's cluster IP, and the outside client to its
//! NodePort. Modes: `direct` (no Service), the real agent on a generated manifest directory
//! (from the pod: `twinstack-socket`, socket-level load balancing, the load generator inside
//! the agent's cgroup, and `twinstack-tc`, `--socket-lb false`, per-packet NAT at TC; from
//! outside: `twinstack-xdp`, `--xdp generic`, and `twinstack-tc`, `--xdp off`), and
//! kube-proxy's `iptables` and `nftables` layouts.
use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use twinstack_lab::{
    agent::{Agent, AgentOptions, AgentSource},
    cgroup::Cgroup,
    netns::Netns,
    topology::{OUTSIDE_DEVICE, OUTSIDE_NODE_V4, OUTSIDE_NODE_V6, Outside, Topology},
};

use crate::{
    Plan,
    cluster::{
        BACKEND_PORT, CLUSTER_CIDR_V4, CLUSTER_CIDR_V6, Cluster, ManifestDir, NODE_PORT,
        SERVICE_PORT,
    },
    kubeproxy::{self, Layout, LoadTimes, Rules},
    load::{self, Outcome, Server, Test},
    stats::Summary,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    Direct,
    /// The direct path with twinstack's socket-level datapath loaded and the client in its
    /// cgroup: what a connection that no Service translates pays (the hooks and TC programs
    /// it passes as misses). Between `Direct` and `SocketLb`, it splits the gap in two.
    Bypassed,
    /// Socket-level load balancing: connect() goes straight to a backend.
    SocketLb,
    /// `--socket-lb false` (and `--xdp off`): the TC programs translate every packet.
    Twinstack,
    /// From outside: `--xdp generic`, the XDP program on the device translates.
    Xdp,
    Iptables,
    Nftables,
}

/// Where the load comes from, and what it addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Entry {
    /// The client pod, to the target's cluster IP.
    Pod,
    /// The outside client (on the node's device), to the target's NodePort on the node's
    /// address of the device.
    Outside,
}

impl Entry {
    pub(crate) const ALL: [Entry; 2] = [Entry::Pod, Entry::Outside];

    /// The modes measured from this entry, in report order.
    pub(crate) fn modes(self) -> &'static [Mode] {
        match self {
            Entry::Pod => &Mode::ALL,
            Entry::Outside => &[
                Mode::Direct,
                Mode::Xdp,
                Mode::Twinstack,
                Mode::Iptables,
                Mode::Nftables,
            ],
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Entry::Pod => "pod to cluster IP",
            Entry::Outside => "outside to NodePort",
        }
    }
}

impl Mode {
    pub(crate) const ALL: [Mode; 6] = [
        Mode::Direct,
        Mode::Bypassed,
        Mode::SocketLb,
        Mode::Twinstack,
        Mode::Iptables,
        Mode::Nftables,
    ];

    /// Twinstack's modes, the one the targets are set for first.
    pub(crate) const TWINSTACK: [Mode; 2] = [Mode::SocketLb, Mode::Twinstack];

    /// The client's ephemeral port range while this mode is measured: a slice of the kernel's
    /// default (32768-60999), where real clients' ports are. (`--masquerade-ports` sits below
    /// it by design; a client inside it would make every reply to it pay the masquerade-reply
    /// check, which real clients never do.)
    fn ports(self) -> (u16, u16) {
        let i = [
            Mode::Direct,
            Mode::Bypassed,
            Mode::SocketLb,
            Mode::Twinstack,
            Mode::Iptables,
            Mode::Nftables,
            Mode::Xdp,
        ]
        .iter()
        .position(|m| *m == self)
        .unwrap_or(0) as u16;
        (32_768 + i * 4_000, 32_768 + i * 4_000 + 3_999)
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Bypassed => "twinstack-bypassed",
            Mode::SocketLb => "twinstack-socket",
            Mode::Twinstack => "twinstack-tc",
            Mode::Xdp => "twinstack-xdp",
            Mode::Iptables => "iptables",
            Mode::Nftables => "nftables",
        }
    }
}

pub(crate) const TESTS: [Test; 2] = [Test::NewConnections, Test::RequestResponse];

pub(crate) struct Cell {
    pub entry: Entry,
    pub mode: Mode,
    pub size: usize,
    pub v6: bool,
    pub test: Test,
    pub rate: Summary,
    pub p50_us: Summary,
    pub p99_us: Summary,
    pub errors: u64,
    /// The direct path's rate in the runs made in turns with this cell's (for a direct cell,
    /// its own): what its ratio is to.
    pub reference: Summary,
}

impl Cell {
    fn of(
        entry: Entry,
        mode: Mode,
        size: usize,
        v6: bool,
        test: Test,
        list: &[Outcome],
        reference: Summary,
    ) -> Self {
        let of = |f: fn(&Outcome) -> f64| Summary::of(&list.iter().map(f).collect::<Vec<_>>());
        Self {
            entry,
            mode,
            size,
            v6,
            test,
            rate: of(|o| o.rate),
            p50_us: of(|o| o.p50_us),
            p99_us: of(|o| o.p99_us),
            errors: list.iter().map(|o| o.errors).sum(),
            reference,
        }
    }

    /// The rate over the direct path's, both medians of runs made in turns.
    pub(crate) fn ratio(&self) -> f64 {
        crate::stats::ratio(&self.rate, &self.reference)
    }
}

/// One load of a kube-proxy layout.
#[derive(Clone, Copy)]
pub(crate) struct LoadSample {
    pub layout: Layout,
    pub services: usize,
    pub times: LoadTimes,
}

pub(crate) struct Results {
    pub sizes: Vec<usize>,
    pub cells: Vec<Cell>,
    /// Seconds from starting the agent to its first full sync, per size.
    pub agent_ready: Vec<(usize, f64)>,
    /// The client's SYN retransmissions and retransmitted segments while each mode was
    /// active: a lost or mistranslated packet shows here before it shows in a rate.
    pub retransmitted: Vec<(Entry, Mode, usize, u64, u64)>,
    /// How long programming each kube-proxy layout took (section 3 reuses these).
    pub loads: Vec<LoadSample>,
    /// The share of the CPUs that other processes (not the bench, not packet processing)
    /// used while each mode was measured: the figures of a mode with a high share are noise.
    pub other_load: Vec<(Entry, Mode, usize, f64)>,
}

impl Results {
    /// A cell of the pod entry (cluster IP).
    pub(crate) fn cell(&self, mode: Mode, size: usize, v6: bool, test: Test) -> Option<&Cell> {
        self.cell_of(Entry::Pod, mode, size, v6, test)
    }

    pub(crate) fn cell_of(
        &self,
        entry: Entry,
        mode: Mode,
        size: usize,
        v6: bool,
        test: Test,
    ) -> Option<&Cell> {
        self.cells.iter().find(|c| {
            c.entry == entry && c.mode == mode && c.size == size && c.v6 == v6 && c.test == test
        })
    }
}

/// What makes one mode active; dropping it deactivates the mode (the agent's guard runs
/// `twinstack cleanup` before its manifests go).
#[derive(Default)]
struct Active<'a> {
    agent: Option<Agent>,
    _manifests: Option<ManifestDir>,
    _rules: Option<Rules<'a>>,
}

/// One test bed: a topology with its servers, and the outside client on its node's device.
struct Bed {
    _servers: Vec<Server>,
    outside: Outside,
    // Dropped last: the servers' and the outside client's namespaces go first.
    topology: Topology,
}

impl Bed {
    fn new(plan: &Plan) -> Self {
        let topology = Topology::new(2);
        let servers = topology
            .backends
            .iter()
            .map(|pod| Server::start(pod, BACKEND_PORT, plan.server_workers))
            .collect();
        // The backends keep no TIME_WAIT: from outside every mode masquerades to the node's
        // addresses, and a mode's masquerade ports would otherwise meet the previous mode's
        // TIME_WAIT connections (a SYN on one is refused when its timestamp is not newer, and
        // retried a second later), which measures the order of the modes, not the modes.
        for pod in &topology.backends {
            pod.netns.sysctl("net.ipv4.tcp_max_tw_buckets", "0");
        }
        // The outside client reaches the NodePort on the node's device, and (direct) the pods
        // through the node.
        let outside = Outside::attach(&topology.node);
        outside
            .netns
            .ip(&["route", "add", CLUSTER_CIDR_V4, "via", OUTSIDE_NODE_V4]);
        outside.netns.ip(&[
            "-6",
            "route",
            "add",
            CLUSTER_CIDR_V6,
            "via",
            OUTSIDE_NODE_V6,
        ]);
        Self {
            _servers: servers,
            outside,
            topology,
        }
    }

    /// The client of `entry`: its namespace.
    fn client(&self, entry: Entry) -> &Netns {
        match entry {
            Entry::Pod => &self.topology.client.netns,
            Entry::Outside => &self.outside.netns,
        }
    }

    /// The backend pods, as the direct path addresses them (alternating).
    fn backends(&self, v6: bool) -> Vec<SocketAddr> {
        self.topology
            .backends
            .iter()
            .map(|p| SocketAddr::new(p.address(v6), BACKEND_PORT))
            .collect()
    }
}

/// Every run of one (entry, family, test), in the order they ran.
type Runs = Vec<((Entry, bool, Test), Vec<Outcome>)>;

fn record(runs: &mut Runs, key: (Entry, bool, Test), outcome: Outcome) {
    match runs.iter_mut().find(|(k, _)| *k == key) {
        Some((_, list)) => list.push(outcome),
        None => runs.push((key, vec![outcome])),
    }
}

fn rates(list: &[Outcome]) -> Summary {
    Summary::of(&list.iter().map(|o| o.rate).collect::<Vec<_>>())
}

pub(crate) fn run(plan: &Plan) -> anyhow::Result<Results> {
    let bed = Bed::new(plan);
    // The direct path runs on a twin bed that no mode ever touches, in turns with every run
    // of every mode: each mode's ratio is to the direct runs made between its own, so a drift
    // of the machine's speed over the minutes a size takes (a few percent on a shared VM)
    // cancels out instead of landing in the ratios.
    let reference = Bed::new(plan);
    for entry in Entry::ALL {
        let client = reference.client(entry);
        let (low, high) = Mode::Direct.ports();
        client.sysctl("net.ipv4.ip_local_port_range", &format!("{low} {high}"));
        for v6 in [false, true] {
            wait_reachable(client, &reference.backends(v6))
                .with_context(|| format!("{}, direct", entry.name()))?;
        }
    }
    let topology = &bed.topology;
    let target_v4: Vec<Ipv4Addr> = topology.backends.iter().map(|p| p.v4).collect();
    let target_v6: Vec<Ipv6Addr> = topology.backends.iter().map(|p| p.v6).collect();

    let mut cells = Vec::new();
    let mut agent_ready = Vec::new();
    let mut retransmitted = Vec::new();
    let mut loads = Vec::new();
    let mut other_load = Vec::new();
    for &size in &plan.e2e_sizes {
        let cluster = Cluster::new(size, &target_v4, &target_v6);
        let mut direct: Runs = Vec::new();
        let direct_started = Entry::ALL.map(|entry| retransmissions(reference.client(entry)));
        let direct_cpu = CpuSample::now();
        for (entry, &mode) in Entry::ALL
            .into_iter()
            .flat_map(|entry| entry.modes().iter().map(move |mode| (entry, mode)))
            .filter(|(_, mode)| **mode != Mode::Direct)
        {
            if let Ok(only) = std::env::var("TWINSTACK_BENCH_MODES")
                && !only.split(',').any(|m| m == mode.name())
            {
                continue;
            }
            eprintln!(
                "  end to end, {}: {} with {size} Services",
                entry.name(),
                mode.name()
            );
            let client = bed.client(entry);
            let reference_client = reference.client(entry);
            // Each mode has its own client ports. The server closes first, so the client keeps
            // no TIME_WAIT and reuses a port at once; the backend accepts a new SYN on its
            // TIME_WAIT only if the SYN's sequence number and timestamp are newer, and those
            // are derived from the address the client connected to (the cluster IP or the pod
            // IP). Shared ports would make one mode's SYNs look old to another's TIME_WAIT.
            let (low, high) = mode.ports();
            client.sysctl("net.ipv4.ip_local_port_range", &format!("{low} {high}"));
            let started = Instant::now();
            let before = retransmissions(client);
            let (mut active, load) = activate(entry, mode, topology, &cluster)?;
            if let Some(load) = load
                && entry == Entry::Pod
            {
                loads.push(load);
            }
            if mode == Mode::SocketLb {
                agent_ready.push((size, started.elapsed().as_secs_f64()));
            }
            if let Some(agent) = &mut active.agent {
                ensure!(
                    kubeproxy::ruleset(&topology.node).trim().is_empty(),
                    "netfilter rules left in the node while measuring twinstack"
                );
                // The datapath is pinned and keeps serving without the agent. Stopping it
                // leaves only the datapath on the CPUs (the agent rescans its manifest
                // directory every 2 s; its own costs belong to section 3). The guard still
                // runs `twinstack cleanup` when the mode ends.
                agent.stop();
            }
            // The load generator's threads make their sockets inside the agent's cgroup, so
            // the socket programs serve them (the servers' listeners were made outside it);
            // it leaves the cgroup for the direct runs in between.
            let cgroup = matches!(mode, Mode::SocketLb | Mode::Bypassed)
                .then(|| active.agent.as_ref().map(|a| &a.cgroup))
                .flatten();
            let targets = |v6: bool| -> Vec<SocketAddr> {
                match (mode, entry) {
                    (Mode::Direct | Mode::Bypassed, _) => bed.backends(v6),
                    (_, Entry::Pod) => vec![SocketAddr::new(
                        cluster.target().cluster_ip(v6),
                        SERVICE_PORT,
                    )],
                    (_, Entry::Outside) => {
                        let node = if v6 { OUTSIDE_NODE_V6 } else { OUTSIDE_NODE_V4 };
                        vec![SocketAddr::new(node.parse().expect("address"), NODE_PORT)]
                    }
                }
            };
            let measure = |test: Test, v6: bool, duration: Duration| -> Outcome {
                let _inside = cgroup.map(InCgroup::join);
                client_run(client, test, targets(v6), duration, plan)
            };
            {
                let _inside = cgroup.map(InCgroup::join);
                for v6 in [false, true] {
                    wait_reachable(client, &targets(v6)).with_context(|| {
                        format!("{}, {} ({size} Services)", entry.name(), mode.name())
                    })?;
                }
            }
            // Warm up (neighbour entries, caches, the first conntrack entries).
            measure(Test::NewConnections, false, plan.warmup);
            let mut outcomes: Runs = Vec::new();
            let mut paired: Runs = Vec::new();
            let cpu_before = CpuSample::now();
            for _ in 0..plan.e2e_reps {
                for v6 in [false, true] {
                    for test in TESTS {
                        let key = (entry, v6, test);
                        let of_reference = client_run(
                            reference_client,
                            test,
                            reference.backends(v6),
                            plan.duration,
                            plan,
                        );
                        let outcome = measure(test, v6, plan.duration);
                        for (what, outcome) in [(mode, &outcome), (Mode::Direct, &of_reference)] {
                            if outcome.completed == 0 {
                                bail!(
                                    "{}, {} {test:?} over {}: nothing completed ({} errors)",
                                    entry.name(),
                                    what.name(),
                                    if v6 { "IPv6" } else { "IPv4" },
                                    outcome.errors
                                );
                            }
                        }
                        record(&mut outcomes, key, outcome);
                        record(&mut paired, key, of_reference);
                        record(&mut direct, key, of_reference);
                    }
                }
            }
            for ((_, v6, test), list) in outcomes {
                let reference = paired
                    .iter()
                    .find(|((_, v, t), _)| (*v, *t) == (v6, test))
                    .map(|(_, list)| rates(list))
                    .unwrap_or_default();
                let cell = Cell::of(entry, mode, size, v6, test, &list, reference);
                eprintln!(
                    "    {:<4} {:<24} {:>10}/s  p50 {:>7} µs  p99 {:>7} µs  errors {}  \
                     ({:.2}× the direct runs between)",
                    if v6 { "IPv6" } else { "IPv4" },
                    test.label(),
                    crate::stats::number(cell.rate.median, 0),
                    crate::stats::number(cell.p50_us.median, 1),
                    crate::stats::number(cell.p99_us.median, 1),
                    cell.errors,
                    cell.ratio(),
                );
                cells.push(cell);
            }
            let others = cpu_before.others_share();
            let after = retransmissions(client);
            retransmitted.push((entry, mode, size, after.0 - before.0, after.1 - before.1));
            other_load.push((entry, mode, size, others));
            eprintln!(
                "    other processes used {:.1}% of the CPUs",
                others * 100.0
            );
            drop(active);
            ensure!(
                kubeproxy::ruleset(&topology.node).trim().is_empty(),
                "the {} rules were not removed",
                mode.name()
            );
        }
        // The direct cells: every direct run of this size, each its own reference.
        for ((entry, v6, test), list) in direct {
            let cell = Cell::of(entry, Mode::Direct, size, v6, test, &list, rates(&list));
            cells.push(cell);
        }
        for (i, entry) in Entry::ALL.into_iter().enumerate() {
            let after = retransmissions(reference.client(entry));
            let before = direct_started[i];
            retransmitted.push((
                entry,
                Mode::Direct,
                size,
                after.0 - before.0,
                after.1 - before.1,
            ));
            other_load.push((entry, Mode::Direct, size, direct_cpu.others_share()));
        }
    }
    Ok(Results {
        sizes: plan.e2e_sizes.clone(),
        cells,
        agent_ready,
        retransmitted,
        loads,
        other_load,
    })
}

fn activate<'a>(
    entry: Entry,
    mode: Mode,
    topology: &'a Topology,
    cluster: &Cluster,
) -> anyhow::Result<(Active<'a>, Option<LoadSample>)> {
    let mut sample = None;
    let active = match mode {
        Mode::Direct => Active::default(),
        Mode::Bypassed | Mode::SocketLb | Mode::Twinstack | Mode::Xdp => {
            let manifests = cluster.write_manifests()?;
            let cidrs = format!("{CLUSTER_CIDR_V4},{CLUSTER_CIDR_V6}");
            let flags: &[&str] = match (entry, mode) {
                (Entry::Pod, Mode::SocketLb | Mode::Bypassed) => &["--xdp", "off"],
                (Entry::Pod, _) => &["--socket-lb", "false", "--xdp", "off"],
                // From outside, socket-level load balancing serves nobody: off.
                (Entry::Outside, Mode::Xdp) => &["--socket-lb", "false", "--xdp", "generic"],
                (Entry::Outside, _) => &["--socket-lb", "false", "--xdp", "off"],
            };
            let mut extra: Vec<String> = flags.iter().map(|f| (*f).to_owned()).collect();
            extra.extend(["--devices".into(), OUTSIDE_DEVICE.into()]);
            let agent = Agent::start(
                &topology.node,
                AgentOptions {
                    source: AgentSource::Manifests(manifests.path()),
                    cluster_cidr: &cidrs,
                    extra,
                },
            );
            Active {
                agent: Some(agent),
                _manifests: Some(manifests),
                _rules: None,
            }
        }
        Mode::Iptables | Mode::Nftables => {
            let layout = if mode == Mode::Iptables {
                Layout::Iptables
            } else {
                Layout::Nftables
            };
            let (rules, times) = kubeproxy::program(&topology.node, layout, cluster)?;
            sample = Some(LoadSample {
                layout,
                services: cluster.services.len(),
                times,
            });
            Active {
                _rules: Some(rules),
                ..Active::default()
            }
        }
    };
    Ok((active, sample))
}

/// This process inside a cgroup until dropped.
struct InCgroup<'a>(&'a Cgroup);

impl<'a> InCgroup<'a> {
    fn join(cgroup: &'a Cgroup) -> Self {
        cgroup.join_self();
        Self(cgroup)
    }
}

impl Drop for InCgroup<'_> {
    fn drop(&mut self) {
        self.0.leave_self();
    }
}

fn client_run(
    client: &Netns,
    test: Test,
    targets: Vec<SocketAddr>,
    duration: Duration,
    plan: &Plan,
) -> Outcome {
    let threads = plan.client_threads;
    client.enter(move || load::run(test, &targets, threads, duration, 5_000_000))
}

/// One transaction to each target must succeed within a few seconds (the agent may still be
/// attaching to the interfaces, neighbours may be resolving).
fn wait_reachable(client: &Netns, targets: &[SocketAddr]) -> anyhow::Result<()> {
    for &target in targets {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let outcome = client.enter(move || {
                load::run(
                    Test::NewConnections,
                    &[target],
                    1,
                    Duration::from_millis(200),
                    1,
                )
            });
            if outcome.completed == 1 {
                break;
            }
            if Instant::now() > deadline {
                bail!("{target} does not answer");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

/// The client namespace's (SYN retransmissions, retransmitted segments) so far.
fn retransmissions(client: &Netns) -> (u64, u64) {
    client.enter(|| {
        // thread-self: this thread's namespace, not the process's.
        let read = |file: &str| std::fs::read_to_string(format!("/proc/thread-self/net/{file}"));
        let counter = |text: &str, group: &str, name: &str| -> u64 {
            let mut lines = text.lines().filter(|l| l.starts_with(group));
            let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
                return 0;
            };
            names
                .split_whitespace()
                .zip(values.split_whitespace())
                .find(|(n, _)| *n == name)
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0)
        };
        let netstat = read("netstat").unwrap_or_default();
        let snmp = read("snmp").unwrap_or_default();
        (
            counter(&netstat, "TcpExt:", "TCPSynRetrans"),
            counter(&snmp, "Tcp:", "RetransSegs"),
        )
    })
}

/// CPU time every other process has used so far (pid → ticks).
struct CpuSample {
    at: Instant,
    ticks: std::collections::HashMap<u32, u64>,
}

impl CpuSample {
    fn now() -> Self {
        let own = std::process::id();
        let mut ticks = std::collections::HashMap::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if pid == own {
                continue;
            }
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // After the command name (which may hold spaces): state, then numbers; utime and
            // stime are the 14th and 15th fields of the line.
            let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
            if let (Some(user), Some(system)) = (field(14), field(15)) {
                ticks.insert(pid, user + system);
            }
        }
        Self {
            at: Instant::now(),
            ticks,
        }
    }

    /// The share of all CPUs that other processes (those alive at the end) used since `self`.
    fn others_share(&self) -> f64 {
        let now = Self::now();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let used: u64 = now
            .ticks
            .iter()
            .map(|(pid, t)| t.saturating_sub(self.ticks.get(pid).copied().unwrap_or(0)))
            .sum();
        used as f64 / hz / (now.at - self.at).as_secs_f64() / cpus
    }
}
