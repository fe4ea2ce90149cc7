//! The plan: the desired contents of one family's load-balancing maps, as a pure function of
//! the model and of this node ([`NodeContext`]). Frontends come with a typed kind and scope,
//! entries with typed policies; no IDs (the map writer owns them), no kernel flag bits (the
//! codec owns them) and no kernel access.
use std::{fmt, net::IpAddr};

use crate::{
    family::{Address, socket_display},
    model::{Endpoint, Protocol, ServicePort, TrafficPolicy},
};

/// What the plan needs to know about this node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeContext {
    /// The Node's name: endpoints with this `nodeName` are local.
    pub name: String,
    /// `topology.kubernetes.io/zone` of the Node.
    pub zone: Option<String>,
    /// The node's addresses (both families).
    pub addresses: Vec<IpAddr>,
    /// The addresses NodePorts are served on (both families).
    pub nodeport_addresses: Vec<IpAddr>,
}

/// The kind of a frontend: which address of the Service a client used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum FrontendKind {
    ClusterIp,
    NodePort,
    ExternalIp,
    LoadBalancer,
}

impl FrontendKind {
    pub fn name(self) -> &'static str {
        match self {
            FrontendKind::ClusterIp => "ClusterIP",
            FrontendKind::NodePort => "NodePort",
            FrontendKind::ExternalIp => "ExternalIP",
            FrontendKind::LoadBalancer => "LoadBalancer",
        }
    }
}

/// Which clients a frontend entry is for. Every frontend has an external entry; one whose
/// external traffic policy is `Local` also has an internal one, for clients in the cluster
/// (kube-proxy's short-circuit: pod traffic to an external destination uses every endpoint).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum Scope {
    External,
    Internal,
}

/// What a client addresses: (address, port, protocol), and the entry's scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frontend<A> {
    pub address: A,
    pub port: u16,
    pub protocol: Protocol,
    pub scope: Scope,
}

impl<A> Frontend<A> {
    /// The external entry of `address:port/protocol`.
    pub fn new(address: A, port: u16, protocol: Protocol) -> Self {
        Self {
            address,
            port,
            protocol,
            scope: Scope::External,
        }
    }
}

impl<A: Address> fmt::Display for Frontend<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            socket_display(self.address.into(), self.port),
            self.protocol
        )?;
        if self.scope == Scope::Internal {
            f.write_str(" (internal)")?;
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BackendState {
    Active,
    /// Terminating but still serving: used only when a service port has no ready endpoint.
    Terminating,
}

/// Where traffic goes: (address, port, protocol) plus its state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Backend<A> {
    pub address: A,
    pub port: u16,
    pub protocol: Protocol,
    pub state: BackendState,
}

impl<A> Backend<A> {
    /// Identity of a backend in the maps: the state may change without a new ID.
    pub fn key(&self) -> (A, u16, Protocol)
    where
        A: Copy,
    {
        (self.address, self.port, self.protocol)
    }
}

/// Slot 0 and the backend slots of one frontend entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceEntry<A> {
    pub kind: FrontendKind,
    /// In slot order (slot 1 first).
    pub backends: Vec<Backend<A>>,
    /// The backends are this node's only (a `Local` policy): with none, traffic is dropped
    /// rather than rejected.
    pub local: bool,
    /// This external entry has an internal twin for clients inside the cluster.
    pub two_scopes: bool,
    /// `sessionAffinity: ClientIP`: the timeout in seconds.
    pub affinity_timeout: Option<u32>,
    /// `loadBalancerSourceRanges` of this family (a load balancer IP's entry only): the client
    /// prefixes served, as (network, prefix length); empty: every client.
    pub source_ranges: Vec<(A, u8)>,
}

impl<A> ServiceEntry<A> {
    /// A cluster IP's entry with no policy or affinity.
    pub fn cluster_ip(backends: Vec<Backend<A>>) -> Self {
        Self {
            kind: FrontendKind::ClusterIp,
            backends,
            local: false,
            two_scopes: false,
            affinity_timeout: None,
            source_ranges: Vec::new(),
        }
    }
}

/// A frontend with the entry it should have.
pub type Planned<A> = (Frontend<A>, ServiceEntry<A>);

/// The port of a cluster IP's "every other port" frontend: no Service port is 0.
pub const UNEXPOSED_PORT: u16 = 0;

/// The unexposed-port frontends of a Service's cluster IPs in family `A`, as kube-proxy's
/// nftables mode rejects what they catch: a TCP, UDP or SCTP packet (or socket call) to a port of a
/// cluster IP that no port of the Service exposes meets port 0 there, a frontend with no
/// backend, and is rejected. One per cluster IP and protocol, whatever the Service's ports.
pub fn unexposed<A: Address>(ports: &[ServicePort]) -> Vec<Planned<A>> {
    let mut addresses: Vec<A> = ports
        .iter()
        .filter_map(|port| A::from_ip(port.cluster_ip))
        .collect();
    addresses.sort();
    addresses.dedup();
    addresses
        .into_iter()
        .flat_map(|address| {
            Protocol::ALL.map(|protocol| {
                (
                    Frontend::new(address, UNEXPOSED_PORT, protocol),
                    ServiceEntry::cluster_ip(Vec::new()),
                )
            })
        })
        .collect()
}

/// The frontend entries family `A` serves for one service port on this node: its cluster IP,
/// a NodePort on each NodePort address, its external IPs and load balancer IPs.
pub fn frontends<A: Address>(port: &ServicePort, node: &NodeContext) -> Vec<Planned<A>> {
    let Some(cluster_ip) = A::from_ip(port.cluster_ip) else {
        return Vec::new();
    };
    let endpoints = categorize(port, node);
    let cluster = backends::<A>(port, &endpoints.cluster);
    let local = backends::<A>(port, &endpoints.local);
    let source_ranges: Vec<(A, u8)> = port
        .source_ranges
        .iter()
        .filter_map(|net| Some((A::from_ip(net.network())?, net.prefix_len())))
        .collect();
    let entry = |kind, backends: &Vec<Backend<A>>, local, two_scopes| ServiceEntry {
        kind,
        backends: backends.clone(),
        local,
        two_scopes,
        affinity_timeout: port.affinity_timeout,
        // kube-proxy's firewall: on load balancer IPs only.
        source_ranges: if kind == FrontendKind::LoadBalancer {
            source_ranges.clone()
        } else {
            Vec::new()
        },
    };
    let mut planned = Vec::new();
    let internal_local = port.internal_policy == TrafficPolicy::Local;
    planned.push((
        Frontend::new(cluster_ip, port.port, port.protocol),
        entry(
            FrontendKind::ClusterIp,
            if internal_local { &local } else { &cluster },
            internal_local,
            false,
        ),
    ));

    let node_ports = port.node_port.into_iter().flat_map(|node_port| {
        node.nodeport_addresses
            .iter()
            .map(move |a| (FrontendKind::NodePort, *a, node_port))
    });
    let external = port
        .external_ips
        .iter()
        .map(|a| (FrontendKind::ExternalIp, *a, port.port));
    let load_balancer = port
        .load_balancer_ips
        .iter()
        .map(|a| (FrontendKind::LoadBalancer, *a, port.port));
    let external_local = port.external_policy == TrafficPolicy::Local;
    for (kind, address, number) in node_ports.chain(external).chain(load_balancer) {
        let Some(address) = A::from_ip(address) else {
            continue;
        };
        let frontend = Frontend::new(address, number, port.protocol);
        if external_local {
            planned.push((frontend, entry(kind, &local, true, true)));
            planned.push((
                Frontend {
                    scope: Scope::Internal,
                    ..frontend
                },
                entry(kind, &cluster, false, false),
            ));
        } else {
            planned.push((frontend, entry(kind, &cluster, false, false)));
        }
    }
    planned
}

fn backends<A: Address>(port: &ServicePort, endpoints: &[&Endpoint]) -> Vec<Backend<A>> {
    endpoints
        .iter()
        .filter_map(|e| {
            Some(Backend {
                address: A::from_ip(e.address)?,
                port: e.port,
                protocol: port.protocol,
                state: if e.conditions.ready {
                    BackendState::Active
                } else {
                    BackendState::Terminating
                },
            })
        })
        .collect()
}

/// A service port's endpoints as each traffic policy uses them.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Categorized<'a> {
    /// For a `Cluster` policy: the ready endpoints (narrowed by topology hints when they
    /// apply), else the serving-and-terminating ones, so a rolling update does not black-hole.
    pub cluster: Vec<&'a Endpoint>,
    /// For a `Local` policy: this node's ready endpoints, else its serving-and-terminating ones.
    pub local: Vec<&'a Endpoint>,
}

/// kube-proxy's `CategorizeEndpoints`: which endpoints each policy uses on this node.
pub fn categorize<'a>(port: &'a ServicePort, node: &NodeContext) -> Categorized<'a> {
    let endpoints = &port.endpoints;
    let topology = topology_from_hints(endpoints, node);
    let mut cluster: Vec<&Endpoint> = endpoints
        .iter()
        .filter(|e| e.conditions.ready && topology.admits(e, node))
        .collect();
    if cluster.is_empty() {
        // No ready endpoint anywhere (topology already stood aside if none was for this
        // node): the terminating fallback ignores topology.
        cluster = endpoints
            .iter()
            .filter(|e| serving_terminating(e))
            .collect();
    }
    let is_local = |e: &&Endpoint| e.node_name.as_deref() == Some(node.name.as_str());
    let mut local: Vec<&Endpoint> = endpoints
        .iter()
        .filter(is_local)
        .filter(|e| e.conditions.ready)
        .collect();
    if local.is_empty() {
        local = endpoints
            .iter()
            .filter(is_local)
            .filter(|e| serving_terminating(e))
            .collect();
    }
    Categorized { cluster, local }
}

fn serving_terminating(endpoint: &Endpoint) -> bool {
    endpoint.conditions.serving && endpoint.conditions.terminating
}

/// Which topology hints narrow the cluster endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Topology {
    /// No hints apply: every ready endpoint.
    Any,
    /// `hints.forNodes` name this node for some endpoint (PreferSameNode).
    SameNode,
    /// `hints.forZones` name this node's zone for some endpoint (PreferSameZone/PreferClose).
    SameZone,
}

impl Topology {
    fn admits(self, endpoint: &Endpoint, node: &NodeContext) -> bool {
        match self {
            Topology::Any => true,
            Topology::SameNode => endpoint.node_hints().iter().any(|n| **n == *node.name),
            Topology::SameZone => endpoint
                .zone_hints()
                .iter()
                .any(|z| Some(&**z) == node.zone.as_deref()),
        }
    }
}

/// kube-proxy's `topologyModeFromHints`: hints are used only when every ready endpoint has
/// them and at least one names this node (or its zone); node hints win over zone hints.
fn topology_from_hints(endpoints: &[Endpoint], node: &NodeContext) -> Topology {
    let ready: Vec<&Endpoint> = endpoints.iter().filter(|e| e.conditions.ready).collect();
    if ready.is_empty() {
        return Topology::Any;
    }
    if ready.iter().all(|e| !e.node_hints().is_empty())
        && ready.iter().any(|e| Topology::SameNode.admits(e, node))
    {
        return Topology::SameNode;
    }
    if node.zone.is_some()
        && ready.iter().all(|e| !e.zone_hints().is_empty())
        && ready.iter().any(|e| Topology::SameZone.admits(e, node))
    {
        return Topology::SameZone;
    }
    Topology::Any
}
