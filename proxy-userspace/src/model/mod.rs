//! The service model: what Kubernetes asks for, per service port and family, in words of the
//! problem (frontends of every kind, policies, endpoints and their conditions), independent of
//! maps and of this node.
mod build;
mod slice;

use std::{
    collections::HashSet,
    fmt,
    net::IpAddr,
    sync::{Arc, Mutex},
};

use ipnet::IpNet;

use crate::family::Family;

pub use build::{
    Built, DEFAULT_AFFINITY_TIMEOUT, HEADLESS_LABEL, SERVICE_NAME_LABEL, SERVICE_PROXY_NAME_LABEL,
    SOURCE_RANGES_ANNOTATION, ServiceError, service_name, service_ports,
    service_ports_from_records, slim_service,
};
pub use slice::{
    Hints, LAST_CHANGE_TRIGGER_TIME, SliceEndpoint, SliceEntry, SlicePort, SliceRecord,
};

/// `namespace/name` of a Service (or of an EndpointSlice). Shared strings: the same name is
/// held by the tracker, the plan and the proxier's ownership records, so a clone is cheap.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceName {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

impl ServiceName {
    /// `None` namespace means `default`, as in the API.
    pub fn new(namespace: Option<&str>, name: &str) -> Self {
        Self {
            namespace: intern(namespace.unwrap_or("default")),
            name: Arc::from(name),
        }
    }
}

/// Names that repeat (namespaces; node and zone names across endpoints) are stored once.
pub(crate) fn intern(name: &str) -> Arc<str> {
    static NAMES: Mutex<Option<HashSet<Arc<str>>>> = Mutex::new(None);
    let mut names = NAMES.lock().unwrap_or_else(|e| e.into_inner());
    let names = names.get_or_insert_with(HashSet::new);
    if let Some(name) = names.get(name) {
        return name.clone();
    }
    let name: Arc<str> = Arc::from(name);
    names.insert(name.clone());
    name
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// Every protocol a Service port may name.
    pub const ALL: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

    pub fn parse(value: Option<&str>) -> Option<Protocol> {
        match value.unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// The IANA number carried in map keys.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => proxy_common::protocol::TCP,
            Protocol::Udp => proxy_common::protocol::UDP,
            Protocol::Sctp => proxy_common::protocol::SCTP,
        }
    }

    pub fn from_number(number: u8) -> Option<Protocol> {
        Protocol::ALL.into_iter().find(|p| p.number() == number)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The unit of load balancing: `namespace/name:port/protocol`, as kube-proxy names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServicePortName {
    pub service: ServiceName,
    /// The port's name (empty for a single unnamed port).
    pub port: String,
    pub protocol: Protocol,
}

impl fmt::Display for ServicePortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.service, self.port, self.protocol)
    }
}

/// A traffic policy (`externalTrafficPolicy`, `internalTrafficPolicy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum TrafficPolicy {
    /// Every usable endpoint in the cluster.
    #[default]
    Cluster,
    /// This node's endpoints only; none → the traffic is dropped.
    Local,
}

/// One port of one Service in one family: what kube-proxy's `ServicePort` holds, every frontend
/// kind with its addresses filtered to [`Self::family`] when the model is built. A dual-stack
/// Service has one of these per port and family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub name: ServicePortName,
    /// The family of every address below.
    pub family: Family,
    pub port: u16,
    pub protocol: Protocol,
    pub cluster_ip: IpAddr,
    /// `spec.ports[].nodePort` of a NodePort or LoadBalancer Service.
    pub node_port: Option<u16>,
    /// `spec.externalIPs` of this family.
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip` of this family, in VIP mode (`ipMode: Proxy` skipped).
    pub load_balancer_ips: Vec<IpAddr>,
    /// `spec.loadBalancerSourceRanges` (or the legacy annotation) of this family.
    pub source_ranges: Vec<IpNet>,
    /// `Local` only for an externally reachable Service asking for it, as kube-proxy reads it.
    pub external_policy: TrafficPolicy,
    pub internal_policy: TrafficPolicy,
    /// `spec.healthCheckNodePort` (a LoadBalancer Service with `externalTrafficPolicy: Local`).
    pub health_check_node_port: Option<u16>,
    /// `sessionAffinity: ClientIP`: the affinity timeout in seconds.
    pub affinity_timeout: Option<u32>,
    /// This family's endpoints, deduplicated, sorted.
    pub endpoints: Vec<Endpoint>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    pub address: IpAddr,
    /// The port traffic is sent to (the EndpointSlice port matching the service port's name).
    pub port: u16,
    pub conditions: Conditions,
    pub node_name: Option<Arc<str>>,
    pub zone: Option<Arc<str>>,
    /// Topology hints (`None`: the endpoint has none).
    pub hints: Option<Arc<Hints>>,
}

impl Endpoint {
    /// `hints.forZones[].name`.
    pub fn zone_hints(&self) -> &[Arc<str>] {
        self.hints.as_deref().map_or(&[], |h| &h.zones)
    }

    /// `hints.forNodes[].name`.
    pub fn node_hints(&self) -> &[Arc<str>] {
        self.hints.as_deref().map_or(&[], |h| &h.nodes)
    }
}

/// EndpointSlice conditions, with Kubernetes' defaults applied (`ready`/`serving` unset mean
/// true, `terminating` unset means false).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Conditions {
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}
