//! The lab most namespace tests start from: a node, a client pod and two backend pods with
//! servers (TCP 8080, UDP 5353), and the agent on a manifest directory holding a copy of
//! `examples/` (the dual-stack `demo` Service). Drop order stops the agent (and removes its
//! pins) before the namespaces go.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::{
    agent::{Agent, AgentOptions, AgentSource},
    netns::Netns,
    require_root,
    servers::{self, Answer, Servers},
    topology::{Outside, Topology, TwoNodes},
};

/// `count` requests from a thread of this process in `netns`; every one must succeed.
pub fn requests_from(netns: &Netns, target: SocketAddr, udp: bool, count: usize) -> Vec<Answer> {
    netns.enter(move || {
        (0..count)
            .map(|i| {
                let answer = if udp {
                    servers::udp_request(target, TIMEOUT)
                } else {
                    servers::tcp_request(target, TIMEOUT)
                };
                answer.unwrap_or_else(|e| panic!("request {i} to {target} (udp: {udp}): {e}"))
            })
            .collect()
    })
}

/// Servers (TCP 8080, UDP 5353) on each backend pod.
fn start_servers(backends: &[crate::topology::Pod]) -> Vec<Servers> {
    backends
        .iter()
        .map(|pod| Servers::start(pod, 8080, 5353))
        .collect()
}

/// A copy of `examples/`'s Service and EndpointSlices, for an agent's `--manifests`.
fn example_manifests() -> tempfile::TempDir {
    let manifests = tempfile::tempdir().expect("temp dir");
    for file in ["service.yaml", "endpointslices.yaml"] {
        std::fs::copy(examples().join(file), manifests.path().join(file)).expect("copy example");
    }
    manifests
}

/// `--cluster-cidr` of a dual-stack lab.
pub const DUAL_STACK: &str = "10.244.0.0/16,fd00:10:244::/56";

const TIMEOUT: Duration = Duration::from_secs(2);

pub fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

pub struct ExampleLab {
    pub agent: Agent,
    /// The agent's `--manifests` directory: tests edit it.
    pub manifests: tempfile::TempDir,
    _servers: Vec<Servers>,
    pub topology: Topology,
}

impl ExampleLab {
    /// The lab with `--cluster-cidr cluster_cidr` and `extra` flags for the agent.
    pub fn start(cluster_cidr: &str, extra: &[&str]) -> Self {
        Self::create(cluster_cidr, extra, Agent::start)
    }

    /// The lab with the agent started as `ip netns exec NODE twinstack run …`.
    pub fn start_via_ip_netns_exec(cluster_cidr: &str, extra: &[&str]) -> Self {
        Self::create(cluster_cidr, extra, Agent::start_via_ip_netns_exec)
    }

    fn create(
        cluster_cidr: &str,
        extra: &[&str],
        start: fn(&Netns, AgentOptions<'_>) -> Agent,
    ) -> Self {
        require_root();
        let topology = Topology::new(2);
        let servers = start_servers(&topology.backends);
        let manifests = example_manifests();
        let agent = start(
            &topology.node,
            AgentOptions {
                source: AgentSource::Manifests(manifests.path()),
                cluster_cidr,
                extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            },
        );
        Self {
            agent,
            manifests,
            _servers: servers,
            topology,
        }
    }

    /// `count` requests from a thread of this process in the client pod; every one must
    /// succeed.
    pub fn requests(&self, target: SocketAddr, udp: bool, count: usize) -> Vec<Answer> {
        requests_from(&self.topology.client.netns, target, udp, count)
    }

    /// Polls (bounded) until `done` holds; returns the time it took.
    pub fn until(&self, limit: Duration, mut done: impl FnMut(&Self) -> bool) -> Duration {
        let start = Instant::now();
        while start.elapsed() < limit {
            if done(self) {
                return start.elapsed();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "condition not met within {limit:?}; agent log:\n{}",
            self.agent.log()
        );
    }

    /// A datapath counter, summed over CPUs, from the agent's /metrics.
    pub fn counter(&self, outcome: &str) -> u64 {
        self.agent.counter(outcome)
    }
}

/// Two nodes ([`TwoNodes`]): backend-a beside the client on node 1, backend-b on node 2, each
/// with servers (TCP 8080, UDP 5353), each node with its own agent (own pins, `--node-name`
/// node-a and node-b) on one manifest directory (a copy of `examples/`, whose slices place the
/// backends on those nodes). Drop order stops the agents before the namespaces go.
pub struct TwoNodeLab {
    pub agents: [Agent; 2],
    pub manifests: tempfile::TempDir,
    _servers: Vec<Servers>,
    /// A client outside the cluster, attached to node 1 ([`TwoNodeLab::with_outside`]).
    pub outside: Option<Outside>,
    pub topology: TwoNodes,
}

/// The Nodes of the two-node lab with an outside client: node-a's InternalIPs on the node
/// link and ExternalIPs on the outside device (so both are devices), node-b's on the link.
const NODES_WITH_OUTSIDE: &str = "apiVersion: v1
kind: Node
metadata: {name: node-a}
status:
  addresses:
  - {type: InternalIP, address: 10.244.254.1}
  - {type: InternalIP, address: 'fd00:10:244:fe::1'}
  - {type: ExternalIP, address: 198.51.100.1}
  - {type: ExternalIP, address: '2001:db8::1'}
---
apiVersion: v1
kind: Node
metadata: {name: node-b}
status:
  addresses:
  - {type: InternalIP, address: 10.244.254.2}
  - {type: InternalIP, address: 'fd00:10:244:fe::2'}
";

impl TwoNodeLab {
    pub fn start(cluster_cidr: &str, extra: &[&str]) -> Self {
        Self::create(cluster_cidr, extra, false)
    }

    /// The lab with an outside client attached to node 1 ([`Outside`]) and the Nodes'
    /// addresses in the manifests, so each agent's default devices are its node-link (and
    /// outside) interfaces.
    pub fn with_outside(cluster_cidr: &str, extra: &[&str]) -> Self {
        Self::create(cluster_cidr, extra, true)
    }

    fn create(cluster_cidr: &str, extra: &[&str], outside: bool) -> Self {
        require_root();
        let topology = TwoNodes::create();
        let outside = outside.then(|| Outside::attach(&topology.nodes[0]));
        let servers = start_servers(&topology.backends);
        let manifests = example_manifests();
        // backend-b lives on node-b here.
        let slices = manifests.path().join("endpointslices.yaml");
        let text = std::fs::read_to_string(&slices).expect("example slices");
        let moved = text.replace(
            "nodeName: node-a\n    targetRef: {kind: Pod, name: backend-b",
            "nodeName: node-b\n    targetRef: {kind: Pod, name: backend-b",
        );
        assert_ne!(moved, text, "the example slices name backend-b's node");
        std::fs::write(&slices, moved).expect("write slices");
        if outside.is_some() {
            std::fs::write(manifests.path().join("nodes.yaml"), NODES_WITH_OUTSIDE)
                .expect("write nodes");
        }
        let agents = [("node-a", 0), ("node-b", 1)].map(|(name, i)| {
            let mut flags: Vec<String> = vec!["--node-name".into(), name.into()];
            flags.extend(extra.iter().map(|s| (*s).to_owned()));
            Agent::start(
                &topology.nodes[i],
                AgentOptions {
                    source: AgentSource::Manifests(manifests.path()),
                    cluster_cidr,
                    extra: flags,
                },
            )
        });
        Self {
            agents,
            manifests,
            _servers: servers,
            outside,
            topology,
        }
    }

    /// `count` requests from a thread in the client pod (node 1); every one must succeed.
    pub fn requests(&self, target: SocketAddr, udp: bool, count: usize) -> Vec<Answer> {
        requests_from(&self.topology.client.netns, target, udp, count)
    }

    /// A datapath counter of node `node`'s agent (0 or 1).
    pub fn counter(&self, node: usize, outcome: &str) -> u64 {
        self.agents[node].counter(outcome)
    }
}
