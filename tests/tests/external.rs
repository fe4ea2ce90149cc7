//! Traffic from outside the cluster, end to end: two nodes, each with its agent, and a client
//! namespace outside the cluster (198.51.100.2, 2001:db8::2) attached to node 1's device
//! `tsx1`. NodePorts, load balancer IPs and external IPs, both policies, source ranges, the
//! health check NodePort, in both families, through the device programs the agents attach
//! to their default devices (the interfaces holding their Node's addresses).
use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use twinstack_lab::{
    lab::{DUAL_STACK, TwoNodeLab},
    manifests,
    objects::{EndpointBuilder, ServiceBuilder, SliceBuilder},
    servers::{self, Answer},
    topology::{OUTSIDE_CLIENT_V4, OUTSIDE_CLIENT_V6, OUTSIDE_NODE_V4, OUTSIDE_NODE_V6},
};

const TIMEOUT: Duration = Duration::from_secs(2);

/// Requests sent where both backends must answer: with random selection, all of them land on
/// one backend with probability 2^(1-BOTH) (6 requests made that 3%, a flaky test).
const BOTH: usize = 24;

fn ip(text: &str) -> IpAddr {
    text.parse().expect("an IP address")
}

fn node_address(v6: bool) -> IpAddr {
    ip(if v6 { OUTSIDE_NODE_V6 } else { OUTSIDE_NODE_V4 })
}

fn client_address(v6: bool) -> IpAddr {
    ip(if v6 {
        OUTSIDE_CLIENT_V6
    } else {
        OUTSIDE_CLIENT_V4
    })
}

/// A Service's two EndpointSlices (one per family), port `http` TCP 8080 and `echo` UDP 5353,
/// with the lab's backends of `nodes` (backend-a is on node-a, backend-b on node-b).
fn slices(lab: &TwoNodeLab, service: &str, nodes: &[&str]) -> Vec<String> {
    [("IPv4", false), ("IPv6", true)]
        .into_iter()
        .map(|(family, v6)| {
            let mut slice = SliceBuilder::new(service, &format!("{service}-{family}"))
                .address_type(family)
                .port("http", "TCP", 8080)
                .port("echo", "UDP", 5353);
            for (pod, node) in lab.topology.backends.iter().zip(["node-a", "node-b"]) {
                if nodes.contains(&node) {
                    slice = slice.endpoint(EndpointBuilder::ready(pod.address(v6)).node(node));
                }
            }
            slice.yaml()
        })
        .collect()
}

/// Writes `objects` as one manifest file and waits (bounded) until node 1 programs a frontend
/// line containing each of `frontends`, with backends.
fn publish(lab: &TwoNodeLab, file: &str, objects: Vec<String>, frontends: &[&str]) {
    manifests::write_atomically(lab.manifests.path(), file, &objects.join("---\n"));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list = lab.agents[0].twinstack(&["bpf", "service", "list"]);
        // Each frontend programmed, with its backends.
        let ready = |frontend: &&str| {
            list.lines()
                .any(|l| l.contains(frontend) && !l.contains("(none)"))
        };
        if frontends.iter().all(ready) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node 1 did not program {frontends:?}:\n{list}\nagent log:\n{}",
            lab.agents[0].log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `count` requests from the outside client; every one must succeed.
fn from_outside(lab: &TwoNodeLab, target: SocketAddr, udp: bool, count: usize) -> Vec<Answer> {
    let outside = lab.outside.as_ref().expect("the lab has an outside client");
    outside
        .netns
        .enter(move || {
            (0..count)
                .map(|i| {
                    if udp {
                        servers::udp_request(target, TIMEOUT)
                    } else {
                        servers::tcp_request(target, TIMEOUT)
                    }
                    .map_err(|e| format!("request {i} to {target} (udp: {udp}): {e}"))
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .unwrap_or_else(|error| {
            panic!(
                "{error}\nnode 1's frontends:\n{}\nits log:\n{}",
                lab.agents[0].twinstack(&["bpf", "service", "list"]),
                lab.agents[0].log()
            )
        })
}

/// One TCP request from the outside client that must fail (dropped: a timeout).
fn refused_from_outside(lab: &TwoNodeLab, target: SocketAddr) {
    let outside = lab.outside.as_ref().expect("the lab has an outside client");
    let result = outside
        .netns
        .enter(move || servers::tcp_request(target, Duration::from_millis(700)));
    assert!(result.is_err(), "{target} must not answer: {result:?}");
}

/// What `--xdp` did on node 1: generic XDP served packets itself; off, none; native, on the
/// lab's veths, fell back to TC with a log line that says why.
fn check_xdp(lab: &TwoNodeLab, xdp: &str) {
    let served = lab.counter(0, "xdp");
    match xdp {
        // The client's packets are XDP's (a remote backend's replies too), so it serves more
        // packets than there are masqueraded replies (all of which it would see at most).
        "generic" => {
            let replies = lab.counter(0, "reverse_snat");
            assert!(
                served > 0 && served > replies,
                "XDP served {served} packets, fewer than the {replies} masqueraded replies"
            );
        }
        "off" => assert_eq!(served, 0, "--xdp off: no XDP"),
        "native" => {
            assert_eq!(served, 0, "native XDP on veth falls back to TC");
            let log = lab.agents[0].log();
            assert!(
                log.contains("tsx1") && log.contains("native XDP on a veth"),
                "the fallback is logged, with the device and why:\n{log}"
            );
        }
        other => panic!("no --xdp {other}"),
    }
}

fn backends_of(answers: &[Answer]) -> Vec<String> {
    let mut names: Vec<String> = answers.iter().map(|a| a.backend.clone()).collect();
    names.sort();
    names.dedup();
    names
}

/// An HTTP GET from the outside client: the status code and body.
fn http_get_from_outside(lab: &TwoNodeLab, target: SocketAddr) -> (u16, String) {
    let outside = lab.outside.as_ref().expect("the lab has an outside client");
    outside.netns.enter(move || {
        let mut stream = TcpStream::connect_timeout(&target, TIMEOUT).expect("connect");
        stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        stream
            .write_all(b"GET / HTTP/1.0\r\nHost: node\r\n\r\n")
            .expect("request");
        let mut text = String::new();
        stream.read_to_string(&mut text).expect("response");
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
        let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
        (status, body)
    })
}

/// NodePort with `externalTrafficPolicy: Cluster`, from outside, TCP and UDP, both families:
/// both backends answer (backend-b on the other node), from the NodePort, and they see the
/// node (masqueraded), so the remote backend's replies come back through node 1.
fn a_node_port_reaches_local_and_remote_backends_from_outside(xdp: &str) {
    let lab = TwoNodeLab::with_outside(DUAL_STACK, &["--xdp", xdp]);
    let service = ServiceBuilder::new("edge")
        .cluster_ips(&[ip("10.96.0.80"), ip("fd00:10:96::80")])
        .type_("NodePort")
        .port("http", "TCP", 80, 8080)
        .port("echo", "UDP", 5353, 5353)
        .node_port("http", 30080)
        .node_port("echo", 30053);
    let mut objects = vec![service.yaml()];
    objects.extend(slices(&lab, "edge", &["node-a", "node-b"]));
    publish(
        &lab,
        "edge.yaml",
        objects,
        &["198.51.100.1:30080/TCP", "[2001:db8::1]:30053/UDP"],
    );
    let snat_before = lab.counter(0, "snat_new");
    for v6 in [false, true] {
        for (udp, port) in [(false, 30080), (true, 30053)] {
            let target = SocketAddr::new(node_address(v6), port);
            let answers = from_outside(&lab, target, udp, BOTH);
            assert_eq!(
                backends_of(&answers),
                ["backend-a", "backend-b"],
                "{target}: the local and the remote backend"
            );
            for answer in &answers {
                assert_eq!(answer.reply_from, target, "{target}: from the NodePort");
                assert_ne!(
                    answer.client_seen,
                    client_address(v6).to_string(),
                    "{target}: masqueraded (externalTrafficPolicy: Cluster)"
                );
            }
        }
    }
    assert!(
        lab.counter(0, "snat_new") >= snat_before + 4,
        "new flows masqueraded on node 1"
    );
    assert!(
        lab.counter(0, "reverse_snat") > 0,
        "replies translated back on node 1"
    );
    check_xdp(&lab, xdp);
}

/// `externalTrafficPolicy: Local`: the NodePort, the load balancer IP and the external IP of
/// a Service with a backend on each node are served by node 1's own backend only, which sees
/// the client's address; the health check NodePort says 200 with one local endpoint. A Local
/// Service whose only backend is on node 2 is dropped at node 1, and its health check says
/// 503. Both families.
fn a_local_policy_keeps_the_client_address_and_drops_without_a_local_endpoint(xdp: &str) {
    let lab = TwoNodeLab::with_outside(DUAL_STACK, &["--xdp", xdp]);
    let local = ServiceBuilder::new("local")
        .cluster_ips(&[ip("10.96.0.81"), ip("fd00:10:96::81")])
        .type_("LoadBalancer")
        .port("http", "TCP", 80, 8080)
        .port("echo", "UDP", 5353, 5353)
        .node_port("http", 30081)
        .node_port("echo", 30054)
        .external_traffic_policy("Local")
        .health_check_node_port(32100)
        .external_ips(&["10.96.201.1", "fd00:10:96::201"])
        .load_balancer_ip("10.96.200.1", Some("VIP"))
        .load_balancer_ip("fd00:10:96::200", Some("VIP"));
    let remote = ServiceBuilder::new("remote")
        .cluster_ips(&[ip("10.96.0.82"), ip("fd00:10:96::82")])
        .type_("LoadBalancer")
        .port("http", "TCP", 80, 8080)
        .port("echo", "UDP", 5353, 5353)
        .node_port("http", 30082)
        .node_port("echo", 30055)
        .external_traffic_policy("Local")
        .health_check_node_port(32101);
    let mut objects = vec![local.yaml(), remote.yaml()];
    objects.extend(slices(&lab, "local", &["node-a", "node-b"]));
    objects.extend(slices(&lab, "remote", &["node-b"]));
    publish(
        &lab,
        "local.yaml",
        objects,
        &[
            "198.51.100.1:30081/TCP",
            "[fd00:10:96::200]:80/TCP",
            "10.96.201.1:80/TCP",
            "[2001:db8::1]:30082/TCP",
        ],
    );
    for v6 in [false, true] {
        let (lb, external) = if v6 {
            (ip("fd00:10:96::200"), ip("fd00:10:96::201"))
        } else {
            (ip("10.96.200.1"), ip("10.96.201.1"))
        };
        for (target, udp) in [
            (SocketAddr::new(node_address(v6), 30081), false),
            (SocketAddr::new(node_address(v6), 30054), true),
            (SocketAddr::new(lb, 80), false),
            (SocketAddr::new(external, 5353), true),
        ] {
            let answers = from_outside(&lab, target, udp, 10);
            assert_eq!(backends_of(&answers), ["backend-a"], "{target}: local only");
            for answer in &answers {
                assert_eq!(answer.reply_from, target, "{target}: from the frontend");
                assert_eq!(
                    answer.client_seen,
                    client_address(v6).to_string(),
                    "{target}: the client's own address"
                );
            }
        }
        let dropped = lab.counter(0, "drop_no_local_endpoint");
        refused_from_outside(&lab, SocketAddr::new(node_address(v6), 30082));
        assert!(
            lab.counter(0, "drop_no_local_endpoint") > dropped,
            "node 1 has no endpoint of remote: dropped"
        );
        let (status, body) = http_get_from_outside(&lab, SocketAddr::new(node_address(v6), 32100));
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("\"localEndpoints\":1"), "{body}");
        let (status, body) = http_get_from_outside(&lab, SocketAddr::new(node_address(v6), 32101));
        assert_eq!(status, 503, "{body}");
    }
    check_xdp(&lab, xdp);
}

/// `loadBalancerSourceRanges`: a load balancer IP whose ranges hold the outside client serves
/// it; one whose ranges leave it out drops it (counted). A wrong-family external IP of a
/// single-stack Service is skipped with a warning, and the rest of that Service is served.
fn source_ranges_and_a_wrong_family_external_ip(xdp: &str) {
    let lab = TwoNodeLab::with_outside(DUAL_STACK, &["--xdp", xdp]);
    let ranged = |name: &str, n: u8, ranges: &[&str]| {
        ServiceBuilder::new(name)
            .cluster_ips(&[ip(&format!("10.96.0.{n}")), ip(&format!("fd00:10:96::{n}"))])
            .type_("LoadBalancer")
            .port("http", "TCP", 80, 8080)
            .port("echo", "UDP", 5353, 5353)
            .node_port("http", 30000 + u16::from(n))
            .node_port("echo", 31000 + u16::from(n))
            .load_balancer_ip(&format!("10.96.200.{n}"), Some("VIP"))
            .load_balancer_ip(&format!("fd00:10:96::2{n}"), None)
            .source_ranges(ranges)
    };
    let single = ServiceBuilder::new("single")
        .cluster_ips(&[ip("10.96.0.85")])
        .port("http", "TCP", 80, 8080)
        .external_ips(&["10.96.201.5", "fd00:10:96::205"]);
    let mut objects = vec![
        ranged("open", 83, &["198.51.100.0/30", "2001:db8::/120"]).yaml(),
        ranged("fenced", 84, &["198.51.100.128/25", "2001:db8:1::/48"]).yaml(),
        single.yaml(),
    ];
    for service in ["open", "fenced", "single"] {
        objects.extend(slices(&lab, service, &["node-a", "node-b"]));
    }
    publish(
        &lab,
        "ranged.yaml",
        objects,
        &[
            "10.96.200.83:80/TCP",
            "[fd00:10:96::284]:80/TCP",
            "10.96.201.5:80/TCP",
        ],
    );
    for v6 in [false, true] {
        let lb = |n: u8| {
            ip(&if v6 {
                format!("fd00:10:96::2{n}")
            } else {
                format!("10.96.200.{n}")
            })
        };
        for udp in [false, true] {
            let port = if udp { 5353 } else { 80 };
            let answers = from_outside(&lab, SocketAddr::new(lb(83), port), udp, BOTH);
            assert_eq!(backends_of(&answers), ["backend-a", "backend-b"]);
        }
        let dropped = lab.counter(0, "drop_source_range");
        refused_from_outside(&lab, SocketAddr::new(lb(84), 80));
        assert!(
            lab.counter(0, "drop_source_range") > dropped,
            "outside fenced's ranges: dropped"
        );
    }
    let answers = from_outside(&lab, "10.96.201.5:80".parse().unwrap(), false, BOTH);
    assert_eq!(backends_of(&answers), ["backend-a", "backend-b"]);
    let list = lab.agents[0].twinstack(&["bpf", "service", "list"]);
    assert!(!list.contains("fd00:10:96::205"), "{list}");
    let log = lab.agents[0].log();
    assert!(
        log.contains("fd00:10:96::205") && log.contains("skipped"),
        "the wrong-family external IP is named in a warning:\n{log}"
    );
    check_xdp(&lab, xdp);
}

#[test]
fn a_node_port_reaches_local_and_remote_backends_from_outside_xdp_off() {
    a_node_port_reaches_local_and_remote_backends_from_outside("off");
}

#[test]
fn a_node_port_reaches_local_and_remote_backends_from_outside_xdp_generic() {
    a_node_port_reaches_local_and_remote_backends_from_outside("generic");
}

#[test]
fn a_local_policy_keeps_the_client_address_and_drops_without_a_local_endpoint_xdp_off() {
    a_local_policy_keeps_the_client_address_and_drops_without_a_local_endpoint("off");
}

#[test]
fn a_local_policy_keeps_the_client_address_and_drops_without_a_local_endpoint_xdp_generic() {
    a_local_policy_keeps_the_client_address_and_drops_without_a_local_endpoint("generic");
}

#[test]
fn source_ranges_and_a_wrong_family_external_ip_xdp_off() {
    source_ranges_and_a_wrong_family_external_ip("off");
}

#[test]
fn source_ranges_and_a_wrong_family_external_ip_xdp_generic() {
    source_ranges_and_a_wrong_family_external_ip("generic");
}

#[test]
fn a_node_port_reaches_local_and_remote_backends_from_outside_xdp_native() {
    a_node_port_reaches_local_and_remote_backends_from_outside("native");
}
