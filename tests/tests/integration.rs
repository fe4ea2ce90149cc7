//! Integration: network namespaces (a node, a client pod, two backend pods), the real
//! `twinstack run` on manifests, real TCP and UDP sockets, both families.
use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use twinstack_lab::{
    agent::{Agent, AgentOptions, AgentSource},
    manifests, require_root,
    servers::{self, Answer, Servers},
    topology::Topology,
};

const CLUSTER_CIDR: &str = "10.244.0.0/16,fd00:10:244::/56";
const TIMEOUT: Duration = Duration::from_secs(2);
const VIP4: &str = "10.96.0.10";
const VIP6: &str = "fd00:10:96::10";

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// The lab of every test here: the topology, servers on both backends, and a manifest
/// directory holding a copy of `examples/`.
struct Lab {
    agent: Agent,
    manifests: tempfile::TempDir,
    _servers: Vec<Servers>,
    topology: Topology,
}

impl Lab {
    fn start() -> Self {
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
                cluster_cidr: CLUSTER_CIDR,
                extra: vec![],
            },
        );
        Self {
            agent,
            manifests,
            _servers: servers,
            topology,
        }
    }

    /// `count` requests from the client pod; every one must succeed.
    fn requests(&self, target: SocketAddr, udp: bool, count: usize) -> Vec<Answer> {
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

    /// Polls (bounded) until `done` holds for one round of requests; returns the time it took.
    fn until(&self, limit: Duration, mut done: impl FnMut(&Lab) -> bool) -> Duration {
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
}

fn tally(answers: &[Answer]) -> BTreeMap<String, usize> {
    answers.iter().fold(BTreeMap::new(), |mut m, a| {
        *m.entry(a.backend.clone()).or_default() += 1;
        m
    })
}

fn target(vip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(vip.parse().expect("VIP"), port)
}

#[test]
fn dual_stack_service_answers_on_both_cluster_ips_over_tcp_and_udp() {
    let lab = Lab::start();
    for (vip, client) in [
        (VIP4, IpAddr::from(lab.topology.client.v4)),
        (VIP6, IpAddr::from(lab.topology.client.v6)),
    ] {
        for (udp, port) in [(false, 80), (true, 5353)] {
            let target = target(vip, port);
            let answers = lab.requests(target, udp, 50);
            for answer in &answers {
                assert_eq!(
                    answer.reply_from, target,
                    "the client must see the cluster IP"
                );
                assert_eq!(
                    answer.client_seen,
                    client.to_string(),
                    "backends see the client's own address"
                );
            }
            let tally = tally(&answers);
            eprintln!("{target} udp={udp}: {tally:?}");
            assert_eq!(
                tally.keys().collect::<Vec<_>>(),
                ["backend-a", "backend-b"],
                "both backends used over 50 connections to {target}"
            );
        }
    }
    let services = lab.agent.twinstack(&["bpf", "service", "list"]);
    for expected in [
        "10.96.0.10:80/TCP",
        "[fd00:10:96::10]:5353/UDP",
        "10.244.3.2:8080",
    ] {
        assert!(
            services.contains(expected),
            "{expected} missing from:\n{services}"
        );
    }
    let conntrack = lab.agent.twinstack(&["bpf", "ct", "list"]);
    assert!(
        conntrack.contains("forward") && conntrack.contains("reverse"),
        "{conntrack}"
    );
}

#[test]
fn manifest_edits_reach_the_datapath() {
    let lab = Lab::start();
    let ports = [("http", "TCP", 80, 8080), ("echo", "UDP", 5353, 5353)];
    let a = &lab.topology.backends[0];
    std::fs::write(
        lab.manifests.path().join("endpointslices.yaml"),
        [
            manifests::endpoint_slice("demo", "demo-ipv4", &[a.v4.into()], &ports),
            manifests::endpoint_slice("demo", "demo-ipv6", &[a.v6.into()], &ports),
        ]
        .join("---\n"),
    )
    .expect("rewrite slices");
    let took = lab.until(Duration::from_secs(5), |lab| {
        [VIP4, VIP6].iter().all(|vip| {
            tally(&lab.requests(target(vip, 80), false, 20))
                .keys()
                .collect::<Vec<_>>()
                == ["backend-a"]
        })
    });
    eprintln!("backend removal took effect after {took:?}");
    let services = lab.agent.services();
    for service in services.as_array().expect("array") {
        assert_eq!(
            service["backends"].as_array().map(Vec::len),
            Some(1),
            "{service}"
        );
    }

    std::fs::remove_file(lab.manifests.path().join("service.yaml")).expect("delete service");
    let took = lab.until(Duration::from_secs(5), |lab| {
        let (v4, v6) = (target(VIP4, 80), target(VIP6, 80));
        lab.topology.client.netns.enter(move || {
            servers::tcp_request(v4, Duration::from_millis(300)).is_err()
                && servers::tcp_request(v6, Duration::from_millis(300)).is_err()
        })
    });
    eprintln!("service deletion took effect after {took:?}");
    assert_eq!(lab.agent.services(), serde_json::json!([]));
}

#[test]
fn an_agent_restart_keeps_flows_on_their_backends() {
    let mut lab = Lab::start();
    let vip = target(VIP4, 5353);
    // One UDP socket: the same 5-tuple for every request, so conntrack pins it to a backend.
    let socket = lab.topology.client.netns.enter(move || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
        s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        s
    });
    let ask = |socket: &std::net::UdpSocket| {
        socket.send_to(b"hello\n", vip).expect("send");
        let mut buffer = [0u8; 256];
        let (n, from) = socket.recv_from(&mut buffer).expect("reply");
        assert_eq!(from, vip);
        String::from_utf8_lossy(&buffer[..n])
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned()
    };
    let backend = ask(&socket);
    let before = lab.agent.twinstack(&["bpf", "service", "list"]);

    lab.agent.stop().expect("agent was running");
    assert_eq!(
        ask(&socket),
        backend,
        "the datapath keeps serving while no agent runs"
    );

    let node = &lab.topology.node;
    lab.agent.restart(node);
    assert_eq!(
        ask(&socket),
        backend,
        "a new agent keeps the flow on its backend"
    );
    assert_eq!(
        lab.agent.twinstack(&["bpf", "service", "list"]),
        before,
        "a restart renumbers nothing"
    );
}
