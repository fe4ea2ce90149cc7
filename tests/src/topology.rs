//! One "node" namespace and pod namespaces, each pod joined to the node by a veth pair with an
//! IPv4 /24 and an IPv6 /64 of its own (pods 10.244.<i>.2 and fd00:10:244:<i>::2, the node
//! side .1 / ::1). The node forwards between them and has no default route.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::{netns::Netns, unique};

/// Glob matching the node side of every pod veth.
pub const POD_INTERFACES: &str = "tsp*";

pub struct Pod {
    pub name: String,
    pub netns: Netns,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    /// The node-side interface.
    pub host_interface: String,
}

impl Pod {
    pub fn address(&self, v6: bool) -> IpAddr {
        if v6 { self.v6.into() } else { self.v4.into() }
    }
}

pub struct Topology {
    pub client: Pod,
    pub backends: Vec<Pod>,
    // Dropped last: the pods' veths go with their namespaces first.
    pub node: Netns,
}

impl Topology {
    /// A node, one client pod (subnet 1) and `backends` backend pods (subnets 2, 3, …).
    pub fn new(backends: usize) -> Self {
        let id = unique("ts");
        let node = Netns::create(&format!("{id}-node"));
        node.sysctl("net.ipv4.ip_forward", "1");
        node.sysctl("net.ipv6.conf.all.forwarding", "1");
        node.sysctl("net.ipv4.conf.all.rp_filter", "0");
        node.sysctl("net.ipv4.conf.default.rp_filter", "0");
        let client = add_pod(&node, &format!("{id}-client"), "client", 1);
        let backends = (0..backends)
            .map(|i| {
                let name = format!("backend-{}", (b'a' + i as u8) as char);
                add_pod(&node, &format!("{id}-{name}"), &name, i as u8 + 2)
            })
            .collect();
        Self {
            client,
            backends,
            node,
        }
    }
}

fn add_pod(node: &Netns, ns_name: &str, name: &str, subnet: u8) -> Pod {
    let netns = Netns::create(ns_name);
    let host = format!("tsp{subnet}");
    node.ip(&[
        "link", "add", &host, "type", "veth", "peer", "name", "eth0", "netns", ns_name,
    ]);
    let v4 = Ipv4Addr::new(10, 244, subnet, 2);
    let v6: Ipv6Addr = format!("fd00:10:244:{subnet:x}::2").parse().expect("IPv6");
    let gw4 = format!("10.244.{subnet}.1");
    let gw6 = format!("fd00:10:244:{subnet:x}::1");
    node.ip(&["addr", "add", &format!("{gw4}/24"), "dev", &host]);
    node.ip(&["addr", "add", &format!("{gw6}/64"), "dev", &host, "nodad"]);
    node.ip(&["link", "set", &host, "up"]);
    netns.ip(&["addr", "add", &format!("{v4}/24"), "dev", "eth0"]);
    netns.ip(&["addr", "add", &format!("{v6}/64"), "dev", "eth0", "nodad"]);
    netns.ip(&["link", "set", "eth0", "up"]);
    netns.ip(&["route", "add", "default", "via", &gw4]);
    netns.ip(&["-6", "route", "add", "default", "via", &gw6]);
    Pod {
        name: name.to_owned(),
        netns,
        v4,
        v6,
        host_interface: host,
    }
}

/// Two nodes joined by a veth (`tsn1` in node 1, 10.244.254.1/24 and fd00:10:244:fe::1/64;
/// `tsn2` in node 2, .2 and ::2), each with plain routes to the other's pod subnets, no CNI
/// and no default route. Node 1 holds the client pod (subnet 1) and backend-a (subnet 2),
/// node 2 backend-b (subnet 3).
pub struct TwoNodes {
    pub client: Pod,
    /// backend-a on node 1, backend-b on node 2.
    pub backends: Vec<Pod>,
    // Dropped last: the pods' veths and the link go with their namespaces first.
    pub nodes: [Netns; 2],
}

/// The node link's addresses: node 1's, node 2's.
pub const NODE_LINK_V4: [&str; 2] = ["10.244.254.1", "10.244.254.2"];
pub const NODE_LINK_V6: [&str; 2] = ["fd00:10:244:fe::1", "fd00:10:244:fe::2"];

impl TwoNodes {
    /// Creates both nodes, the link, the pods and the routes.
    pub fn create() -> Self {
        let id = unique("ts");
        let nodes = [1, 2].map(|n| {
            let node = Netns::create(&format!("{id}-node{n}"));
            node.sysctl("net.ipv4.ip_forward", "1");
            node.sysctl("net.ipv6.conf.all.forwarding", "1");
            node.sysctl("net.ipv4.conf.all.rp_filter", "0");
            node.sysctl("net.ipv4.conf.default.rp_filter", "0");
            node
        });
        nodes[0].ip(&[
            "link",
            "add",
            "tsn1",
            "type",
            "veth",
            "peer",
            "name",
            "tsn2",
            "netns",
            nodes[1].name(),
        ]);
        for (i, (node, link)) in nodes.iter().zip(["tsn1", "tsn2"]).enumerate() {
            node.ip(&[
                "addr",
                "add",
                &format!("{}/24", NODE_LINK_V4[i]),
                "dev",
                link,
            ]);
            node.ip(&[
                "addr",
                "add",
                &format!("{}/64", NODE_LINK_V6[i]),
                "dev",
                link,
                "nodad",
            ]);
            node.ip(&["link", "set", link, "up"]);
        }
        let client = add_pod(&nodes[0], &format!("{id}-client"), "client", 1);
        let backend_a = add_pod(&nodes[0], &format!("{id}-backend-a"), "backend-a", 2);
        let backend_b = add_pod(&nodes[1], &format!("{id}-backend-b"), "backend-b", 3);
        // Each node reaches the other's pod subnets through the link.
        for (node, peer, subnets) in [(&nodes[0], 1, &[3u8][..]), (&nodes[1], 0, &[1, 2][..])] {
            for subnet in subnets {
                node.ip(&[
                    "route",
                    "add",
                    &format!("10.244.{subnet}.0/24"),
                    "via",
                    NODE_LINK_V4[peer],
                ]);
                node.ip(&[
                    "-6",
                    "route",
                    "add",
                    &format!("fd00:10:244:{subnet:x}::/64"),
                    "via",
                    NODE_LINK_V6[peer],
                ]);
            }
        }
        Self {
            client,
            backends: vec![backend_a, backend_b],
            nodes,
        }
    }
}

/// The device of node 1 that the outside client is attached to.
pub const OUTSIDE_DEVICE: &str = "tsx1";
/// Node 1's addresses on [`OUTSIDE_DEVICE`], and the outside client's.
pub const OUTSIDE_NODE_V4: &str = "198.51.100.1";
pub const OUTSIDE_NODE_V6: &str = "2001:db8::1";
pub const OUTSIDE_CLIENT_V4: &str = "198.51.100.2";
pub const OUTSIDE_CLIENT_V6: &str = "2001:db8::2";

/// A client outside the cluster: a namespace joined to node 1 by a veth ([`OUTSIDE_DEVICE`]
/// in node 1, 198.51.100.1/24 and 2001:db8::1/64; the client .2 and ::2). It routes the
/// Service ranges (10.96.0.0/12, fd00:10:96::/112, where the tests' external and load
/// balancer IPs live) through node 1 and has no other route; node 1's NodePorts are on-link.
pub struct Outside {
    pub netns: Netns,
}

impl Outside {
    pub fn attach(node: &Netns) -> Self {
        let netns = Netns::create(&unique("ts-outside"));
        node.ip(&[
            "link",
            "add",
            OUTSIDE_DEVICE,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            netns.name(),
        ]);
        node.ip(&[
            "addr",
            "add",
            &format!("{OUTSIDE_NODE_V4}/24"),
            "dev",
            OUTSIDE_DEVICE,
        ]);
        node.ip(&[
            "addr",
            "add",
            &format!("{OUTSIDE_NODE_V6}/64"),
            "dev",
            OUTSIDE_DEVICE,
            "nodad",
        ]);
        node.ip(&["link", "set", OUTSIDE_DEVICE, "up"]);
        netns.ip(&[
            "addr",
            "add",
            &format!("{OUTSIDE_CLIENT_V4}/24"),
            "dev",
            "eth0",
        ]);
        netns.ip(&[
            "addr",
            "add",
            &format!("{OUTSIDE_CLIENT_V6}/64"),
            "dev",
            "eth0",
            "nodad",
        ]);
        netns.ip(&["link", "set", "eth0", "up"]);
        netns.ip(&["route", "add", "10.96.0.0/12", "via", OUTSIDE_NODE_V4]);
        netns.ip(&[
            "-6",
            "route",
            "add",
            "fd00:10:96::/112",
            "via",
            OUTSIDE_NODE_V6,
        ]);
        Self { netns }
    }
}
