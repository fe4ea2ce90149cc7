//! The service model: what Kubernetes asks for, per service port, in words of the problem
//! (cluster IPs, endpoints and their conditions), independent of maps and families.
mod build;
mod slice;

use std::{
    collections::HashSet,
    fmt,
    net::IpAddr,
    sync::{Arc, Mutex},
};

pub use build::{
    Built, HEADLESS_LABEL, SERVICE_NAME_LABEL, SERVICE_PROXY_NAME_LABEL, ServiceError,
    service_name, service_ports, service_ports_from_records, slim_service,
};
pub use slice::{SliceEndpoint, SliceEntry, SlicePort, SliceRecord};

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
        [Protocol::Tcp, Protocol::Udp, Protocol::Sctp]
            .into_iter()
            .find(|p| p.number() == number)
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

/// One port of one Service, with its frontends and endpoints in every family it has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub name: ServicePortName,
    pub port: u16,
    pub protocol: Protocol,
    /// At most one per family, in `spec.clusterIPs` order.
    pub cluster_ips: Vec<IpAddr>,
    /// Every endpoint of every family, deduplicated, sorted.
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
    /// `hints.forZones[].name`.
    pub zone_hints: Vec<Arc<str>>,
}

/// EndpointSlice conditions, with Kubernetes' defaults applied (`ready`/`serving` unset mean
/// true, `terminating` unset means false).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Conditions {
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}
