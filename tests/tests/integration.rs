//! Integration: network namespaces (a node, a client pod, two backend pods), the real
//! `twinstack run` on manifests, real TCP and UDP sockets, both families.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use twinstack_lab::{
    agent::Agent,
    lab::{DUAL_STACK, ExampleLab, requests_from},
    manifests,
    objects::{ServiceBuilder, SliceBuilder},
    servers::{self, Answer},
};

const TIMEOUT: Duration = Duration::from_secs(2);
const VIP4: &str = "10.96.0.10";
const VIP6: &str = "fd00:10:96::10";

type Lab = ExampleLab;

fn start() -> Lab {
    ExampleLab::start(DUAL_STACK, &[])
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
    let lab = start();
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
    // The outcome counters: every connection above was a new flow, its replies reverse-NATed;
    // the table leaves zero counters out unless asked.
    let counters: serde_json::Value = serde_json::from_str(
        &lab.agent
            .twinstack(&["bpf", "counters", "list", "-o", "json"]),
    )
    .expect("counters JSON");
    let count = |name: &str| {
        counters
            .as_array()
            .expect("an array")
            .iter()
            .find(|row| row["name"] == name)
            .and_then(|row| row["packets"].as_u64())
            .unwrap_or_else(|| panic!("{name} missing from {counters}"))
    };
    assert!(count("dnat_new") >= 100, "100 TCP connections: {counters}");
    assert!(count("reverse_nat") >= count("dnat_new"), "{counters}");
    assert_eq!(count("snat_error"), 0, "{counters}");
    let table = lab.agent.twinstack(&["bpf", "counters", "list"]);
    assert!(
        table.contains("dnat_new") && !table.contains("snat_error"),
        "{table}"
    );
    let all = lab.agent.twinstack(&["bpf", "counters", "list", "--all"]);
    assert!(all.contains("snat_error"), "{all}");
}

/// A single-stack node serves the dual-stack Service on its own family only: the other
/// family's cluster IP is not translated (the pod has no route for it: the connect fails).
fn single_stack_node(cluster_cidr: &str, served: &str, unserved: &str) {
    let lab = ExampleLab::start(cluster_cidr, &[]);
    let tally = tally(&lab.requests(target(served, 80), false, 20));
    assert_eq!(tally.keys().collect::<Vec<_>>(), ["backend-a", "backend-b"]);
    let other = target(unserved, 80);
    let untranslated = lab
        .topology
        .client
        .netns
        .enter(move || servers::tcp_request(other, Duration::from_millis(300)).is_err());
    assert!(
        untranslated,
        "{unserved} answered on a node not serving its family"
    );
    let services = lab.agent.services();
    let families: BTreeSet<&str> = services
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|s| s["family"].as_str())
        .collect();
    let family = if served.contains(':') { "IPv6" } else { "IPv4" };
    assert_eq!(families, BTreeSet::from([family]), "{services}");
}

#[test]
fn an_ipv4_only_node_serves_the_ipv4_cluster_ip_only() {
    single_stack_node("10.244.0.0/16", VIP4, VIP6);
}

#[test]
fn an_ipv6_only_node_serves_the_ipv6_cluster_ip_only() {
    single_stack_node("fd00:10:244::/56", VIP6, VIP4);
}

/// A LoadBalancer Service reached from a pod on each of its frontends, both families: a NodePort
/// on the Node's addresses (its InternalIPs, from a Node manifest), an external IP and a load
/// balancer IP. The pod's packets are translated by the same TC path as for a cluster IP.
/// The node's addresses here are its pods' gateways, inside `--cluster-cidr`: while they are
/// frontends, the agent tells the datapath to look pod addresses up (`cluster_clear` 0).
#[test]
fn a_pod_reaches_a_service_on_its_node_port_external_ip_and_load_balancer_ip() {
    let lab = start();
    assert_eq!(
        cluster_clear(&lab.agent),
        [1, 1],
        "only cluster IPs: no frontend inside the cluster CIDR"
    );
    let (a, b) = (&lab.topology.backends[0], &lab.topology.backends[1]);
    let service = ServiceBuilder::new("edge")
        .cluster_ips(&[
            "10.96.0.20".parse().unwrap(),
            "fd00:10:96::20".parse().unwrap(),
        ])
        .type_("LoadBalancer")
        .port("http", "TCP", 80, 8080)
        .node_port("http", 30080)
        .external_ips(&["192.0.2.20", "2001:db8:e::20"])
        .load_balancer_ip("203.0.113.20", None)
        .load_balancer_ip("2001:db8:1b::20", Some("VIP"));
    let slices = [
        SliceBuilder::new("edge", "edge-v4")
            .port("http", "TCP", 8080)
            .ready(&[a.v4.into(), b.v4.into()]),
        SliceBuilder::new("edge", "edge-v6")
            .port("http", "TCP", 8080)
            .ready(&[a.v6.into(), b.v6.into()]),
    ];
    // The node's addresses: the client pod's gateways.
    let node = serde_json::json!({
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"},
        "status": {"addresses": [
            {"type": "InternalIP", "address": "10.244.1.1"},
            {"type": "InternalIP", "address": "fd00:10:244:1::1"},
        ]},
    });
    let yaml = [
        service.yaml(),
        slices[0].yaml(),
        slices[1].yaml(),
        serde_yaml::to_string(&node).unwrap(),
    ]
    .join("---\n");
    std::fs::write(lab.manifests.path().join("edge.yaml"), yaml).expect("write manifests");

    let frontends = [
        ("10.244.1.1", 30080),
        ("fd00:10:244:1::1", 30080),
        ("192.0.2.20", 80),
        ("2001:db8:e::20", 80),
        ("203.0.113.20", 80),
        ("2001:db8:1b::20", 80),
    ];
    lab.until(Duration::from_secs(5), |lab| {
        let listed = lab.agent.twinstack(&["bpf", "service", "list"]);
        frontends
            .iter()
            .all(|(ip, port)| listed.contains(&target(ip, *port).to_string()))
    });
    for (ip, port) in frontends {
        let frontend = target(ip, port);
        let answers = lab.requests(frontend, false, 20);
        assert!(
            answers.iter().all(|a| a.reply_from == frontend),
            "{frontend}"
        );
        assert_eq!(
            tally(&answers).keys().collect::<Vec<_>>(),
            ["backend-a", "backend-b"],
            "{frontend}"
        );
    }
    let listed = lab.agent.twinstack(&["bpf", "service", "list"]);
    for kind in ["NodePort", "ExternalIP", "LoadBalancer"] {
        assert!(listed.contains(kind), "{kind} missing from:\n{listed}");
    }
    assert_eq!(
        cluster_clear(&lab.agent),
        [0, 0],
        "NodePorts on pod gateways"
    );
}

#[test]
fn manifest_edits_reach_the_datapath() {
    let lab = start();
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
    // The Service ports (port 0: a cluster IP's unexposed ports, which have no backend).
    let ports = services.as_array().expect("array").iter();
    for service in ports.filter(|s| s["port"] != 0) {
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

/// What the agent told the datapath of each family's cluster CIDR (`cluster_clear`: 1 when
/// no frontend lies inside it), IPv4 then IPv6.
fn cluster_clear(agent: &Agent) -> [u32; 2] {
    let pin = agent
        .bpf_root
        .join(format!("v{}", proxy_common::LAYOUT_VERSION))
        .join("maps")
        .join(proxy_common::map_names::CLUSTER_CLEAR);
    let map = aya::maps::MapData::from_pin(pin).expect("cluster_clear pin");
    let array: aya::maps::Array<_, u32> =
        aya::maps::Array::try_from(aya::maps::Map::from_map_data(map).expect("map"))
            .expect("an array");
    [
        proxy_common::cluster_clear::V4,
        proxy_common::cluster_clear::V6,
    ]
    .map(|index| array.get(&index, 0).expect("an entry"))
}

/// At start the agent records every node address as a masquerade source and marks it
/// (`snat_marks`), so the replies of flows an older datapath masqueraded without recording
/// their source are still looked for: here the node's addresses on the backends' veths.
#[test]
fn the_agent_records_and_marks_the_node_addresses_as_masquerade_sources() {
    use proxy_common::{map_names, snat_marks};
    let lab = start();
    let pins = lab
        .agent
        .bpf_root
        .join(format!("v{}", proxy_common::LAYOUT_VERSION))
        .join("maps");
    let open = |name: &str| {
        let map = aya::maps::MapData::from_pin(pins.join(name)).expect("pin");
        aya::maps::Map::from_map_data(map).expect("map")
    };
    let marks: aya::maps::Array<_, u32> =
        aya::maps::Array::try_from(open(map_names::SNAT_MARKS)).expect("an array");
    let v4: aya::maps::HashMap<_, [u8; 4], u8> =
        aya::maps::HashMap::try_from(open(map_names::SNAT_SOURCES_V4)).expect("a hash");
    let v6: aya::maps::HashMap<_, [u8; 16], u8> =
        aya::maps::HashMap::try_from(open(map_names::SNAT_SOURCES_V6)).expect("a hash");
    for subnet in [2, 3] {
        for like in [VIP4, VIP6] {
            let address: IpAddr = node_side(subnet, like.parse().unwrap()).parse().unwrap();
            let (recorded, slot) = match address {
                IpAddr::V4(a) => (v4.get(&a.octets(), 0).is_ok(), snat_marks::slot(a.octets())),
                IpAddr::V6(a) => (v6.get(&a.octets(), 0).is_ok(), snat_marks::slot(a.octets())),
            };
            assert!(recorded, "{address}: recorded as a masquerade source");
            assert_eq!(
                marks.get(&slot, 0).expect("a slot"),
                snat_marks::MARKED,
                "{address}: marked"
            );
        }
    }
}

/// Kernel ids of every pinned map: a map recreated (and so emptied) gets a new id.
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

/// The forward conntrack entries of UDP flows: (client, backend, reverse-NAT id).
fn udp_flows(agent: &Agent) -> BTreeSet<(String, String, u64)> {
    let rows: serde_json::Value =
        serde_json::from_str(&agent.twinstack(&["bpf", "ct", "list", "-o", "json"]))
            .expect("ct list JSON");
    rows.as_array()
        .expect("array")
        .iter()
        .filter(|r| r["direction"] == "forward" && r["protocol"] == "UDP")
        .map(|r| {
            (
                r["source"].as_str().unwrap_or_default().to_owned(),
                r["backend"].as_str().unwrap_or_default().to_owned(),
                r["rev_nat_id"].as_u64().unwrap_or_default(),
            )
        })
        .collect()
}

/// 40 UDP flows (one socket each, so a fixed 5-tuple) pinned to backends by conntrack: each
/// stays on its backend while no agent runs and after a new agent takes over. With conntrack
/// lost, all 40 would land where they were by chance with probability 2^-40. The maps are the
/// same kernel objects before and after, and the restart renumbers nothing.
#[test]
fn an_agent_restart_keeps_flows_on_their_backends() {
    const FLOWS: usize = 40;
    let mut lab = start();
    let vip = target(VIP4, 5353);
    let sockets: Vec<std::net::UdpSocket> = lab.topology.client.netns.enter(move || {
        (0..FLOWS)
            .map(|_| {
                let s = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
                s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
                s
            })
            .collect()
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
    let ask_all = || sockets.iter().map(ask).collect::<Vec<_>>();
    let backends = ask_all();
    assert_eq!(
        backends.iter().collect::<BTreeSet<_>>().len(),
        2,
        "the flows spread over both backends: {backends:?}"
    );
    let services = lab.agent.twinstack(&["bpf", "service", "list"]);
    let maps = map_ids(&lab.agent);
    let flows = udp_flows(&lab.agent);
    assert_eq!(flows.len(), FLOWS, "{flows:?}");

    lab.agent.stop().expect("agent was running");
    assert_eq!(
        ask_all(),
        backends,
        "the datapath keeps serving while no agent runs"
    );

    let node = &lab.topology.node;
    lab.agent.restart(node);
    assert_eq!(
        ask_all(),
        backends,
        "a new agent keeps every flow on its backend"
    );
    assert_eq!(
        map_ids(&lab.agent),
        maps,
        "the new agent adopted the same maps"
    );
    assert_eq!(udp_flows(&lab.agent), flows, "conntrack is untouched");
    assert_eq!(
        lab.agent.twinstack(&["bpf", "service", "list"]),
        services,
        "a restart renumbers nothing"
    );
}

/// The agent's conntrack collector with short UDP timeouts (`--conntrack-udp-timeout 1s
/// --conntrack-udp-timeout-stream 2s --conntrack-gc-interval 1s`), both families: answered
/// flows show as `UDP_STREAM` with both entries, then every entry is deleted once idle past
/// the timeout, and counted; a TCP connection made at the same time stays (24 h).
#[test]
fn the_collector_deletes_idle_udp_flows_and_keeps_the_rest() {
    let lab = ExampleLab::start(
        DUAL_STACK,
        &[
            "--conntrack-udp-timeout",
            "1s",
            "--conntrack-udp-timeout-stream",
            "2s",
            "--conntrack-gc-interval",
            "1s",
        ],
    );
    let rows = |lab: &Lab| -> Vec<serde_json::Value> {
        let list = lab.agent.twinstack(&["bpf", "ct", "list", "-o", "json"]);
        serde_json::from_str::<serde_json::Value>(&list)
            .expect("ct list JSON")
            .as_array()
            .expect("array")
            .clone()
    };
    for vip in [VIP4, VIP6] {
        lab.requests(target(vip, 5353), true, 5);
        lab.requests(target(vip, 80), false, 1);
    }
    let udp: Vec<_> = rows(&lab)
        .into_iter()
        .filter(|r| r["protocol"] == "UDP")
        .collect();
    assert_eq!(
        udp.len(),
        20,
        "5 flows per family, two entries each: {udp:?}"
    );
    for row in &udp {
        assert_eq!(row["state"], "UDP_STREAM", "{row}");
        assert!(
            row["age_seconds"].as_f64().is_some_and(|age| age < 5.0),
            "{row}"
        );
    }
    let took = lab.until(Duration::from_secs(8), |lab| {
        rows(lab).iter().all(|r| r["protocol"] != "UDP")
    });
    assert!(
        took >= Duration::from_secs(1),
        "collected before the timeout: {took:?}"
    );
    let tcp = rows(&lab);
    assert_eq!(tcp.len(), 4, "the TCP connections stay: {tcp:?}");
    assert!(
        lab.agent
            .metric("twinstack_conntrack_expired_total")
            .is_some_and(|n| n >= 20.0),
        "{}",
        lab.agent.metrics()
    );
}

/// The node's address on the veth of the pod with subnet `subnet` (10.244.<subnet>.1), in
/// the family of `like`.
fn node_side(subnet: u8, like: IpAddr) -> String {
    if like.is_ipv4() {
        format!("10.244.{subnet}.1")
    } else {
        format!("fd00:10:244:{subnet:x}::1")
    }
}

/// Hairpin: the client pod is the only endpoint of a Service and reaches itself through it
/// on the TC path, in both families, over TCP and UDP. Without masquerade its own reply would
/// go straight back to itself untranslated; masqueraded, the server sees the node's address
/// and the client gets its answer from the cluster IP.
#[test]
fn a_pod_reaches_itself_through_its_own_service() {
    let lab = start();
    let client = &lab.topology.client;
    let _servers = twinstack_lab::servers::Servers::start(client, 8080, 5353);
    let vips: [IpAddr; 2] = [
        "10.96.0.60".parse().unwrap(),
        "fd00:10:96::60".parse().unwrap(),
    ];
    let service = ServiceBuilder::new("hairpin")
        .cluster_ips(&vips)
        .port("http", "TCP", 80, 8080)
        .port("dns", "UDP", 53, 5353);
    let slice = |name, family, address: IpAddr| {
        SliceBuilder::new("hairpin", name)
            .address_type(family)
            .port("http", "TCP", 8080)
            .port("dns", "UDP", 5353)
            .endpoint(twinstack_lab::objects::EndpointBuilder::ready(address))
            .yaml()
    };
    let objects = [
        service.yaml(),
        slice("hairpin-v4", "IPv4", client.v4.into()),
        slice("hairpin-v6", "IPv6", client.v6.into()),
    ];
    std::fs::write(
        lab.manifests.path().join("hairpin.yaml"),
        objects.join("---\n"),
    )
    .unwrap();
    lab.until(Duration::from_secs(5), |lab| {
        let list = lab.agent.twinstack(&["bpf", "service", "list"]);
        list.contains("10.96.0.60:53") && list.contains("[fd00:10:96::60]:53")
    });
    let masqueraded = lab.counter("snat_new");
    for vip in vips {
        for (udp, port) in [(false, 80), (true, 53)] {
            let target = SocketAddr::new(vip, port);
            for answer in lab.requests(target, udp, 5) {
                assert_eq!(answer.backend, "client", "{target}");
                assert_eq!(
                    answer.client_seen,
                    node_side(1, vip),
                    "{target}: masqueraded"
                );
                assert_eq!(answer.reply_from, target, "{target}: from the cluster IP");
            }
        }
    }
    assert_eq!(
        lab.counter("snat_new"),
        masqueraded + 20,
        "every new flow masqueraded"
    );
}

/// kube-proxy's local-traffic detector: with `--cluster-cidr` holding the backends' subnets
/// but not the client's, the client's flows are masqueraded (the backends see the node's
/// address on their own veth), while a pod inside the CIDR keeps its address, except on its
/// hairpin to itself. Both families.
#[test]
fn a_source_outside_the_cluster_cidr_is_masqueraded_and_one_inside_is_not() {
    let lab = ExampleLab::start("10.244.2.0/23,fd00:10:244:2::/63", &[]);
    for vip in [VIP4, VIP6] {
        let vip: IpAddr = vip.parse().unwrap();
        let target = SocketAddr::new(vip, 80);
        let answers = lab.requests(target, false, 20);
        assert_eq!(tally(&answers).len(), 2, "{vip}: both backends used");
        for answer in &answers {
            let subnet = if answer.backend == "backend-a" { 2 } else { 3 };
            assert_eq!(
                answer.client_seen,
                node_side(subnet, vip),
                "{vip}: the client (outside) is masqueraded"
            );
        }
        let inside = &lab.topology.backends[1];
        let answers = requests_from(&inside.netns, target, false, 20);
        assert_eq!(tally(&answers).len(), 2, "{vip}: both backends used");
        for answer in &answers {
            let expected = if answer.backend == "backend-a" {
                inside.address(vip.is_ipv6()).to_string()
            } else {
                node_side(3, vip) // Its hairpin.
            };
            assert_eq!(answer.client_seen, expected, "{vip}: from backend-b");
        }
    }
}

/// Two nodes: a client on node 1 reaches the backend beside it and the one on node 2, through
/// both cluster IPs over TCP and UDP; the remote backend's replies cross back to node 1, whose
/// datapath gives them the cluster IP back (no masquerade: the backends see the client). Node
/// 2's agent translates nothing of it.
#[test]
fn a_client_on_one_node_reaches_backends_on_both_nodes() {
    let lab = twinstack_lab::lab::TwoNodeLab::start(DUAL_STACK, &[]);
    let reversed = lab.counter(0, "reverse_nat");
    let remote_before = lab.counter(1, "reverse_nat") + lab.counter(1, "dnat_new");
    for vip in [VIP4, VIP6] {
        for (udp, port) in [(false, 80), (true, 5353)] {
            let target = target(vip, port);
            let answers = lab.requests(target, udp, 20);
            assert_eq!(
                tally(&answers).keys().collect::<Vec<_>>(),
                ["backend-a", "backend-b"],
                "{target}: the local and the remote backend"
            );
            let client = lab.topology.client.address(target.is_ipv6()).to_string();
            for answer in &answers {
                assert_eq!(answer.reply_from, target, "{target}: from the cluster IP");
                assert_eq!(answer.client_seen, client, "{target}: not masqueraded");
            }
        }
    }
    assert!(
        lab.counter(0, "reverse_nat") >= reversed + 80,
        "replies translated on node 1"
    );
    assert_eq!(
        lab.counter(1, "reverse_nat") + lab.counter(1, "dnat_new"),
        remote_before,
        "node 2 translated nothing"
    );
}

/// Topology: node-a is in zone-a, node-b in zone-b (their Nodes' `topology.kubernetes.io/zone`),
/// and the EndpointSlices hint each backend to its own zone, as the controller does for
/// `trafficDistribution: PreferClose`. Each node's agent then keeps the Service in its zone: a
/// client on node-a reaches only backend-a, one on node-b only backend-b, in both families.
#[test]
fn a_zone_hinted_service_stays_in_its_zone() {
    use twinstack_lab::objects::EndpointBuilder;
    let lab = twinstack_lab::lab::TwoNodeLab::start(DUAL_STACK, &[]);
    let node = |name: &str, zone: &str| {
        format!(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels:\n    \
             topology.kubernetes.io/zone: {zone}\n"
        )
    };
    let vips: [IpAddr; 2] = [
        "10.96.0.70".parse().unwrap(),
        "fd00:10:96::70".parse().unwrap(),
    ];
    let service = ServiceBuilder::new("zoned")
        .cluster_ips(&vips)
        .port("http", "TCP", 80, 8080)
        .spec("trafficDistribution", serde_json::json!("PreferClose"));
    let (a, b) = (&lab.topology.backends[0], &lab.topology.backends[1]);
    let slice = |name, family, v6: bool| {
        SliceBuilder::new("zoned", name)
            .address_type(family)
            .port("http", "TCP", 8080)
            .endpoint(
                EndpointBuilder::ready(a.address(v6))
                    .node("node-a")
                    .zone("zone-a")
                    .zone_hints(&["zone-a"]),
            )
            .endpoint(
                EndpointBuilder::ready(b.address(v6))
                    .node("node-b")
                    .zone("zone-b")
                    .zone_hints(&["zone-b"]),
            )
            .yaml()
    };
    let objects = [
        node("node-a", "zone-a"),
        node("node-b", "zone-b"),
        service.yaml(),
        slice("zoned-v4", "IPv4", false),
        slice("zoned-v6", "IPv6", true),
    ];
    std::fs::write(
        lab.manifests.path().join("zoned.yaml"),
        objects.join("---\n"),
    )
    .unwrap();
    // Each node programs its own zone's backend only.
    for (agent, own, other) in [(0, a, b), (1, b, a)] {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let list = lab.agents[agent].twinstack(&["bpf", "service", "list"]);
            let zoned: Vec<&str> = list
                .lines()
                .filter(|l| l.contains("10.96.0.70:80/") || l.contains("[fd00:10:96::70]:80/"))
                .collect();
            let done = zoned.len() == 2
                && zoned.iter().all(|l| {
                    (l.contains(&own.v4.to_string()) || l.contains(&own.v6.to_string()))
                        && !l.contains(&other.v4.to_string())
                        && !l.contains(&other.v6.to_string())
                });
            if done {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "node {agent}: not zoned:\n{list}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    each_node_reaches_only_its_own_backend(&lab, vips);
}

/// 20 connections from the client (node-a) to each VIP reach backend-a only, 20 from
/// backend-b's pod (node-b) backend-b only.
fn each_node_reaches_only_its_own_backend(lab: &twinstack_lab::lab::TwoNodeLab, vips: [IpAddr; 2]) {
    let b = &lab.topology.backends[1];
    for vip in vips {
        let target = SocketAddr::new(vip, 80);
        let from_a = tally(&lab.requests(target, false, 20));
        assert_eq!(
            from_a.keys().collect::<Vec<_>>(),
            ["backend-a"],
            "{vip} from node-a"
        );
        let from_b = tally(&requests_from(&b.netns, target, false, 20));
        assert_eq!(
            from_b.keys().collect::<Vec<_>>(),
            ["backend-b"],
            "{vip} from node-b"
        );
    }
}

/// A datagram too big for one packet (3000 bytes over 1500-byte links) through a cluster IP,
/// both families: the client's fragments reach the backend, which reassembles it, and the
/// backend's as-big answer comes back in fragments, each given the cluster IP back.
#[test]
fn datagrams_too_big_for_one_packet_go_through_the_service_in_fragments() {
    let lab = start();
    let fragments = lab.counter("fragment");
    for vip in [VIP4, VIP6] {
        let target = target(vip, 5353);
        for _ in 0..5 {
            let (answer, size) = lab.topology.client.netns.enter(move || {
                servers::udp_request_of(target, TIMEOUT, 3000).expect("a 3000-byte exchange")
            });
            assert_eq!(size, 3000, "{target}: the whole answer");
            assert_eq!(answer.reply_from, target, "{target}: from the cluster IP");
        }
    }
    // Each exchange: at least one later fragment each way.
    assert!(
        lab.counter("fragment") >= fragments + 20,
        "later fragments translated"
    );
}

/// `internalTrafficPolicy: Local` on two nodes: each node's pods use only the endpoint on
/// their own node (node-a's client backend-a, backend-b on node-b itself), both families;
/// once node-a has none, its client's connections are dropped (and counted) while node-b's
/// still work.
#[test]
fn an_internal_local_policy_keeps_each_node_to_its_own_endpoints() {
    use twinstack_lab::objects::EndpointBuilder;
    let lab = twinstack_lab::lab::TwoNodeLab::start(DUAL_STACK, &[]);
    let vips: [IpAddr; 2] = [
        "10.96.0.80".parse().unwrap(),
        "fd00:10:96::80".parse().unwrap(),
    ];
    let (a, b) = (&lab.topology.backends[0], &lab.topology.backends[1]);
    let write = |with_a: bool| {
        let service = ServiceBuilder::new("local2")
            .cluster_ips(&vips)
            .port("http", "TCP", 80, 8080)
            .internal_traffic_policy("Local");
        let slice = |name, family, v6: bool| {
            let mut slice = SliceBuilder::new("local2", name)
                .address_type(family)
                .port("http", "TCP", 8080)
                .endpoint(EndpointBuilder::ready(b.address(v6)).node("node-b"));
            if with_a {
                slice = slice.endpoint(EndpointBuilder::ready(a.address(v6)).node("node-a"));
            }
            slice.yaml()
        };
        let objects = [
            service.yaml(),
            slice("local2-v4", "IPv4", false),
            slice("local2-v6", "IPv6", true),
        ];
        std::fs::write(
            lab.manifests.path().join("local2.yaml"),
            objects.join("---\n"),
        )
        .unwrap();
    };
    // Node `node` programs its frontends with `v4` and `v6` as their backends' text.
    let programmed = |node: usize, v4: &str, v6: &str| {
        let list = lab.agents[node].twinstack(&["bpf", "service", "list"]);
        [("10.96.0.80:80/", v4), ("[fd00:10:96::80]:80/", v6)]
            .iter()
            .all(|(f, backends)| list.lines().any(|l| l.contains(f) && l.contains(backends)))
    };
    let wait = |what: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !what() {
            assert!(std::time::Instant::now() < deadline, "not programmed");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    write(true);
    let own = |pod: &twinstack_lab::topology::Pod| {
        (format!("{}:8080", pod.v4), format!("[{}]:8080", pod.v6))
    };
    let ((a4, a6), (b4, b6)) = (own(a), own(b));
    wait(&|| programmed(0, &a4, &a6) && programmed(1, &b4, &b6));
    each_node_reaches_only_its_own_backend(&lab, vips);

    write(false);
    wait(&|| programmed(0, "(none)", "(none)"));
    let dropped = lab.counter(0, "drop_no_local_endpoint");
    for vip in vips {
        let target = SocketAddr::new(vip, 80);
        let failed = lab
            .topology
            .client
            .netns
            .enter(move || servers::tcp_request(target, Duration::from_millis(300)).is_err());
        assert!(failed, "{vip}: node-a has no local endpoint: dropped");
        let from_b = tally(&requests_from(&b.netns, target, false, 5));
        assert_eq!(
            from_b.keys().collect::<Vec<_>>(),
            ["backend-b"],
            "{vip} on node-b"
        );
    }
    assert!(
        lab.counter(0, "drop_no_local_endpoint") > dropped,
        "counted on node-a"
    );
}

/// kube-proxy's service health checks: an `externalTrafficPolicy: Local` LoadBalancer Service
/// with `healthCheckNodePort` is answered on that port on IPv4 and IPv6 with kube-proxy's
/// JSON: 200 and the count of this node's ready endpoints while it has some, 503 and 0 once
/// they are on another node; the port closes with the Service.
#[test]
fn the_health_check_node_port_answers_as_endpoints_move() {
    use twinstack_lab::objects::EndpointBuilder;
    let lab = start();
    const PORT: u16 = 32100;
    let vips: [IpAddr; 2] = [
        "10.96.0.90".parse().unwrap(),
        "fd00:10:96::90".parse().unwrap(),
    ];
    let service = ServiceBuilder::new("checked")
        .cluster_ips(&vips)
        .type_("LoadBalancer")
        .port("http", "TCP", 80, 8080)
        .node_port("http", 30090)
        .external_traffic_policy("Local")
        .health_check_node_port(PORT);
    let (a, b) = (&lab.topology.backends[0], &lab.topology.backends[1]);
    let write = |node: &str| {
        let slice = |name, family, v6: bool| {
            SliceBuilder::new("checked", name)
                .address_type(family)
                .port("http", "TCP", 8080)
                .endpoint(EndpointBuilder::ready(a.address(v6)).node(node))
                .endpoint(EndpointBuilder::ready(b.address(v6)).node(node))
                .yaml()
        };
        let objects = [
            service.yaml(),
            slice("checked-v4", "IPv4", false),
            slice("checked-v6", "IPv6", true),
        ];
        std::fs::write(
            lab.manifests.path().join("checked.yaml"),
            objects.join("---\n"),
        )
        .unwrap();
    };
    let addresses: [IpAddr; 2] = ["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()];
    let answers =
        |lab: &Lab| addresses.map(|address| lab.agent.http_get(address, PORT, "/healthz"));
    let expected = |status: u16, local: usize| {
        let body = serde_json::json!({
            "service": {"namespace": "default", "name": "checked"},
            "localEndpoints": local,
            "serviceProxyHealthy": true,
        });
        Some((status, body))
    };
    let parsed = |answer: Option<(u16, String)>| {
        answer.map(|(status, body)| (status, serde_json::from_str(&body).expect("JSON")))
    };

    write("node-a");
    lab.until(Duration::from_secs(5), |lab| {
        answers(lab)
            .into_iter()
            .all(|a| parsed(a) == expected(200, 2))
    });
    write("node-b");
    lab.until(Duration::from_secs(5), |lab| {
        answers(lab)
            .into_iter()
            .all(|a| parsed(a) == expected(503, 0))
    });
    std::fs::remove_file(lab.manifests.path().join("checked.yaml")).unwrap();
    lab.until(Duration::from_secs(5), |lab| {
        answers(lab).iter().all(Option::is_none)
    });
}

/// `--healthz-bind-address 0.0.0.0:10256` (kube-proxy's default) serves `/healthz` on every
/// address of both families, as kube-proxy's does.
#[test]
fn healthz_on_the_unspecified_address_answers_on_both_families() {
    let lab = ExampleLab::start(DUAL_STACK, &["--healthz-bind-address", "0.0.0.0:10256"]);
    for address in ["127.0.0.1", "::1", "10.244.1.1", "fd00:10:244:1::1"] {
        let answer = lab
            .agent
            .http_get(address.parse().unwrap(), 10256, "/healthz");
        assert_eq!(answer.map(|(status, _)| status), Some(200), "{address}");
    }
}

/// `ip netns exec NODE twinstack run …`, as a new user tries it: `ip netns exec` remounts
/// /sys in a mount namespace of its own, hiding the host's bpffs (and cgroup v2, so socket-level
/// load balancing is off here). The agent mounts a bpffs of its own under --bpf-root, says so,
/// and serves both families; its pins live as long as that mount namespace (they are not in the
/// host's bpffs).
#[test]
fn the_agent_runs_under_ip_netns_exec_on_a_bpffs_it_mounts() {
    let lab = ExampleLab::start_via_ip_netns_exec(DUAL_STACK, &["--socket-lb", "false"]);
    let log = lab.agent.log();
    assert!(
        log.contains("no BPF filesystem under --bpf-root: mounted one"),
        "the agent says it mounted a bpffs:\n{log}"
    );
    assert!(
        !lab.agent.bpf_root.exists(),
        "the pins are in the agent's own mount namespace, not the host's bpffs"
    );
    for vip in [VIP4, VIP6] {
        let answers = lab.requests(target(vip, 80), false, 12);
        assert_eq!(tally(&answers).len(), 2, "{vip}: both backends answer");
    }
}

/// The frontend with `address` and `port` in `bpf service list --stats -o json`.
fn stats_of(lab: &Lab, address: &str, port: u16, protocol: &str) -> serde_json::Value {
    let rows: serde_json::Value = serde_json::from_str(
        &lab.agent
            .twinstack(&["bpf", "service", "list", "--stats", "-o", "json"]),
    )
    .expect("service list JSON");
    rows.as_array()
        .expect("rows")
        .iter()
        .find(|r| r["address"] == address && r["port"] == port && r["protocol"] == protocol)
        .unwrap_or_else(|| panic!("no frontend {address}:{port}/{protocol}: {rows:#}"))
        .clone()
}

/// Traffic per frontend and backend, exact: each UDP request is a new socket (a new flow) of
/// known size, so connections, packets and bytes each way are known, per frontend and per
/// backend (from who answered), in both families; each TCP request is one connection.
#[test]
fn traffic_counters_count_connections_packets_and_bytes_per_frontend_and_backend() {
    let lab = start();
    const REQUESTS: usize = 10;
    const SIZE: usize = 100;
    for (vip, ip_header) in [(VIP4, 20u64), (VIP6, 40u64)] {
        let target = target(vip, 5353);
        let netns = &lab.topology.client.netns;
        let answers: Vec<(Answer, usize)> = netns.enter(move || {
            (0..REQUESTS)
                .map(|_| servers::udp_request_of(target, TIMEOUT, SIZE).expect("a UDP answer"))
                .collect()
        });
        // Whole frames, as the TC hooks see them: Ethernet, IP, UDP, payload.
        let frame = |payload: usize| 14 + ip_header + 8 + payload as u64;
        let row = stats_of(&lab, vip, 5353, "UDP");
        let stats = &row["stats"];
        assert_eq!(stats["connections"], REQUESTS, "{vip}: {row:#}");
        assert_eq!(stats["packets_to"], REQUESTS, "{vip}: {row:#}");
        assert_eq!(stats["packets_from"], REQUESTS, "{vip}: {row:#}");
        assert_eq!(
            stats["bytes_to"],
            REQUESTS as u64 * frame(SIZE),
            "{vip}: {row:#}"
        );
        let replies: u64 = answers.iter().map(|(_, n)| frame(*n)).sum();
        assert_eq!(stats["bytes_from"], replies, "{vip}: {row:#}");
        // Per backend: as many connections and replies as it gave answers.
        for backend in row["backends"].as_array().expect("backends") {
            let address: IpAddr = backend["address"]
                .as_str()
                .expect("address")
                .parse()
                .unwrap();
            let pod = lab
                .topology
                .backends
                .iter()
                .find(|p| p.address(address.is_ipv6()) == address)
                .expect("a backend pod");
            let answered = answers
                .iter()
                .filter(|(a, _)| a.backend == pod.name)
                .count();
            assert_eq!(backend["stats"]["connections"], answered, "{vip}: {row:#}");
            assert_eq!(backend["stats"]["packets_from"], answered, "{vip}: {row:#}");
        }

        let tcp = target.ip().to_string();
        lab.requests(SocketAddr::new(target.ip(), 80), false, 5);
        let row = stats_of(&lab, &tcp, 80, "TCP");
        assert_eq!(row["stats"]["connections"], 5, "{vip}: {row:#}");
        let to = row["stats"]["packets_to"].as_u64().unwrap();
        let from = row["stats"]["packets_from"].as_u64().unwrap();
        assert!(
            to >= 5 * 3 && from >= 5 * 2,
            "{vip}: a handshake, a request and a close each: {row:#}"
        );
    }
    // The table shows them.
    let table = lab.agent.twinstack(&["bpf", "service", "list", "--stats"]);
    assert!(table.contains("BYTES TO/FROM"), "{table}");
}

/// `twinstack top -o json` while UDP requests flow to one frontend: that frontend leads with
/// its connections per second, each interval's an object.
#[test]
fn top_shows_the_busiest_frontend_first_with_its_rates() {
    let lab = start();
    let top = std::process::Command::new(twinstack_lab::twinstack_binary())
        .args(["top", "-o", "json", "--interval", "500ms", "--count", "4"])
        .arg("--bpf-root")
        .arg(&lab.agent.bpf_root)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("starting twinstack top");
    let target = target(VIP6, 5353);
    let sent = lab.topology.client.netns.enter(move || {
        let started = std::time::Instant::now();
        let mut sent = 0;
        while started.elapsed() < Duration::from_millis(2_500) && sent < 20_000 {
            servers::udp_request(target, TIMEOUT).expect("a UDP answer");
            sent += 1;
        }
        sent
    });
    let output = top.wait_with_output().expect("top ends after --count");
    assert!(output.status.success(), "{output:?}");
    let frames: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON frame"))
        .collect();
    assert_eq!(frames.len(), 4, "{frames:#?}");
    let busy = frames
        .iter()
        .filter(|f| {
            let first = &f["frontends"][0];
            first["frontend"] == "[fd00:10:96::10]:5353/UDP"
                && first["connections_per_second"].as_f64().unwrap_or(0.0) > 10.0
        })
        .count();
    assert!(
        busy >= 2,
        "{sent} requests sent; the frontend leads in 2 frames at least: {frames:#?}"
    );
}

/// `--service-metrics`: each frontend's traffic on /metrics, labelled by its Service; without
/// the flag, none of those series (their cardinality is the operator's choice).
#[test]
fn service_metrics_label_each_frontends_traffic_with_its_service_only_when_asked() {
    let lab = ExampleLab::start(DUAL_STACK, &["--service-metrics"]);
    let target = target(VIP4, 5353);
    lab.requests(target, true, 7);
    let series = "twinstack_service_connections_total{namespace=\"default\",service=\"demo\",\
                  family=\"IPv4\",frontend=\"10.96.0.10:5353/UDP\"}";
    assert_eq!(
        lab.agent.metric(series),
        Some(7.0),
        "{}\n{}",
        lab.agent.metrics(),
        lab.agent.log()
    );
    let packets = "twinstack_service_packets_total{namespace=\"default\",service=\"demo\",\
                   family=\"IPv4\",frontend=\"10.96.0.10:5353/UDP\",direction=\"from\"}";
    assert_eq!(
        lab.agent.metric(packets),
        Some(7.0),
        "{}",
        lab.agent.metrics()
    );
    drop(lab);

    let lab = start();
    lab.requests(target, true, 1);
    let metrics = lab.agent.metrics();
    assert!(metrics.contains("twinstack_datapath_packets"), "{metrics}");
    assert!(
        !metrics.contains("twinstack_service_connections"),
        "{metrics}"
    );
    assert!(!metrics.contains("twinstack_service_packets"), "{metrics}");
}
