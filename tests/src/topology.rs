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
