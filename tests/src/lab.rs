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
    require_root,
    servers::{self, Answer, Servers},
    topology::Topology,
};

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
        require_root();
        let topology = Topology::new(2);
        let servers = topology
            .backends
            .iter()
            .map(|pod| Servers::start(pod, 8080, 5353))
            .collect();
        let manifests = tempfile::tempdir().expect("temp dir");
        for file in ["service.yaml", "endpointslices.yaml"] {
            std::fs::copy(examples().join(file), manifests.path().join(file))
                .expect("copy example");
        }
        let agent = Agent::start(
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
        self.topology.client.netns.enter(move || {
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
        self.agent
            .metric(&format!(
                "twinstack_datapath_packets_total{{outcome=\"{outcome}\"}}"
            ))
            .unwrap_or_else(|| panic!("no counter {outcome}:\n{}", self.agent.metrics()))
            as u64
    }
}
