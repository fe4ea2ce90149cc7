//! Service + its EndpointSlices → service ports. Validation happens here, once: a Service that
//! fails it is reported by name and skipped, and never disturbs another Service.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use ipnet::IpNet;
use k8s_openapi::api::{
    core::v1::{Service, ServiceSpec, ServiceStatus},
    discovery::v1::EndpointSlice,
};

use super::{
    Endpoint, Protocol, ServiceName, ServicePort, ServicePortName, SliceRecord, TrafficPolicy,
};
use crate::family::Family;

/// Why a Service is skipped as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    #[error("cluster IP {0:?} is not an IP address")]
    InvalidClusterIp(String),
    #[error(
        "cluster IP {ip} is not of family {family} listed at the same index of spec.ipFamilies"
    )]
    FamilyMismatch { ip: IpAddr, family: String },
    #[error("spec.ipFamilies has unknown family {0:?} (expected IPv4 or IPv6)")]
    UnknownFamily(String),
    #[error("spec.clusterIPs {0:?} must hold at most one address per family")]
    ClusterIpsPerFamily(Vec<String>),
    #[error("spec.clusterIPs has {ips} addresses but spec.ipFamilies lists {families} families")]
    FamilyCount { ips: usize, families: usize },
    #[error("port {name:?} has number {port}, outside 1-65535")]
    PortOutOfRange { name: String, port: i32 },
    #[error("port {name:?} has unknown protocol {protocol:?} (expected TCP, UDP or SCTP)")]
    UnknownProtocol { name: String, protocol: String },
    #[error("port {port}/{protocol} is listed twice")]
    DuplicatePort { port: u16, protocol: Protocol },
    #[error("object has no metadata.name")]
    MissingName,
}

/// The outcome of building one Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Built {
    /// Served: one entry per service port. `warnings` name what was dropped inside it
    /// (a bad endpoint address, a wrong-family external IP).
    Ports {
        ports: Vec<ServicePort>,
        warnings: Vec<String>,
    },
    /// Not ours to serve, by design (headless, ExternalName, another proxy's, no cluster IP).
    Ignored(&'static str),
}

/// Label naming the Service an EndpointSlice belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Services with this label are served by another proxy (kube-proxy skips them too).
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// Label kube-proxy uses to skip headless Services without reading their spec.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";

pub fn service_name(service: &Service) -> Result<ServiceName, ServiceError> {
    Ok(ServiceName::new(
        service.metadata.namespace.as_deref(),
        service
            .metadata
            .name
            .as_deref()
            .ok_or(ServiceError::MissingName)?,
    ))
}

/// Legacy spelling of `spec.loadBalancerSourceRanges` (comma-separated), read when the spec
/// field is empty, as kube-proxy does.
pub const SOURCE_RANGES_ANNOTATION: &str = "service.beta.kubernetes.io/load-balancer-source-ranges";

/// `sessionAffinityConfig.clientIP.timeoutSeconds` when unset (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;

/// Builds the service ports of `service` from the EndpointSlices that belong to it.
pub fn service_ports(service: &Service, slices: &[&EndpointSlice]) -> Result<Built, ServiceError> {
    let records: Vec<SliceRecord> = slices.iter().map(|s| SliceRecord::from_slice(s)).collect();
    let records: Vec<&SliceRecord> = records.iter().collect();
    service_ports_from_records(service, &records)
}

/// A Service as the tracker keeps it: the spec, the identity and the load balancer status,
/// without the rest of the status, other annotations or managed fields (which can be most of an
/// object's size). A change of the load balancer's ingress IPs is a change.
pub fn slim_service(service: Service) -> Service {
    let metadata = service.metadata;
    let annotations = metadata.annotations.and_then(|mut all| {
        let kept = all.remove_entry(SOURCE_RANGES_ANNOTATION)?;
        Some(std::iter::once(kept).collect())
    });
    Service {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: metadata.name,
            namespace: metadata.namespace,
            labels: metadata.labels,
            annotations,
            ..Default::default()
        },
        spec: service.spec,
        status: service
            .status
            .and_then(|s| s.load_balancer)
            .filter(|lb| lb.ingress.as_ref().is_some_and(|i| !i.is_empty()))
            .map(|load_balancer| ServiceStatus {
                load_balancer: Some(load_balancer),
                conditions: None,
            }),
    }
}

/// [`service_ports`] over slices already parsed into records (what the tracker keeps).
pub fn service_ports_from_records(
    service: &Service,
    slices: &[&SliceRecord],
) -> Result<Built, ServiceError> {
    let name = service_name(service)?;
    let labels = service.metadata.labels.as_ref();
    if labels.is_some_and(|l| l.contains_key(SERVICE_PROXY_NAME_LABEL)) {
        return Ok(Built::Ignored(
            "served by another proxy (service-proxy-name label)",
        ));
    }
    if labels.is_some_and(|l| l.contains_key(HEADLESS_LABEL)) {
        return Ok(Built::Ignored("headless"));
    }
    let Some(spec) = service.spec.as_ref() else {
        return Ok(Built::Ignored("no spec"));
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return Ok(Built::Ignored("ExternalName"));
    }
    let cluster_ips = cluster_ips(spec)?;
    if cluster_ips.is_none() {
        return Ok(Built::Ignored("headless"));
    }
    let cluster_ips = cluster_ips.unwrap_or_default();
    if cluster_ips.is_empty() {
        return Ok(Built::Ignored("no cluster IP allocated"));
    }

    let mut warnings = Vec::new();
    let frontends = Frontends::of(service, spec, &cluster_ips, &mut warnings);
    let mut seen = BTreeSet::new();
    let mut ports = Vec::new();
    for port in spec.ports.iter().flatten() {
        let port_name = port.name.clone().unwrap_or_default();
        let number = u16::try_from(port.port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| ServiceError::PortOutOfRange {
                name: port_name.clone(),
                port: port.port,
            })?;
        let protocol = Protocol::parse(port.protocol.as_deref()).ok_or_else(|| {
            ServiceError::UnknownProtocol {
                name: port_name.clone(),
                protocol: port.protocol.clone().unwrap_or_default(),
            }
        })?;
        if !seen.insert((number, protocol)) {
            return Err(ServiceError::DuplicatePort {
                port: number,
                protocol,
            });
        }
        let node_port = frontends
            .node_ports
            .then(|| port.node_port.and_then(|p| u16::try_from(p).ok()))
            .flatten()
            .filter(|p| *p != 0);
        let name = ServicePortName {
            service: name.clone(),
            port: port_name.clone(),
            protocol,
        };
        let endpoints = endpoints(&port_name, protocol, slices, &mut warnings);
        for cluster_ip in &cluster_ips {
            let family = Family::of(cluster_ip);
            ports.push(ServicePort {
                name: name.clone(),
                family,
                port: number,
                protocol,
                cluster_ip: *cluster_ip,
                node_port,
                external_ips: of_family(&frontends.external_ips, family),
                load_balancer_ips: of_family(&frontends.load_balancer_ips, family),
                source_ranges: frontends
                    .source_ranges
                    .iter()
                    .filter(|r| Family::of(&r.addr()) == family)
                    .copied()
                    .collect(),
                external_policy: frontends.external_policy,
                internal_policy: frontends.internal_policy,
                health_check_node_port: frontends.health_check_node_port,
                affinity_timeout: frontends.affinity_timeout,
                endpoints: endpoints
                    .iter()
                    .filter(|e| Family::of(&e.address) == family)
                    .cloned()
                    .collect(),
            });
        }
    }
    Ok(Built::Ports { ports, warnings })
}

fn of_family(addresses: &[IpAddr], family: Family) -> Vec<IpAddr> {
    addresses
        .iter()
        .filter(|a| Family::of(a) == family)
        .copied()
        .collect()
}

/// What a Service's spec and status say beyond its cluster IPs, shared by all its ports.
struct Frontends {
    /// Whether the ports' `nodePort`s are served (a NodePort or LoadBalancer Service).
    node_ports: bool,
    external_ips: Vec<IpAddr>,
    load_balancer_ips: Vec<IpAddr>,
    source_ranges: Vec<IpNet>,
    external_policy: TrafficPolicy,
    internal_policy: TrafficPolicy,
    health_check_node_port: Option<u16>,
    affinity_timeout: Option<u32>,
}

impl Frontends {
    /// Reads them as kube-proxy's `newBaseServiceInfo` does. An address that is not one, or of
    /// a family the Service has no cluster IP of, is skipped with a warning; it never fails
    /// the Service.
    fn of(
        service: &Service,
        spec: &ServiceSpec,
        cluster_ips: &[IpAddr],
        warnings: &mut Vec<String>,
    ) -> Self {
        let families: Vec<Family> = cluster_ips.iter().map(Family::of).collect();
        let type_ = spec.type_.as_deref().unwrap_or("ClusterIP");
        let load_balancer = type_ == "LoadBalancer";
        let node_ports = load_balancer || type_ == "NodePort";
        let mut address = |what: &str, raw: &str| -> Option<IpAddr> {
            let Ok(ip) = raw.trim().parse::<IpAddr>() else {
                warnings.push(format!("{what} {raw:?} skipped: not an IP address"));
                return None;
            };
            if !families.contains(&Family::of(&ip)) {
                warnings.push(format!(
                    "{what} {ip} skipped: the Service has no {} cluster IP",
                    Family::of(&ip)
                ));
                return None;
            }
            Some(ip)
        };
        let external_ips: Vec<IpAddr> = spec
            .external_ips
            .iter()
            .flatten()
            .filter_map(|raw| address("externalIP", raw))
            .collect();
        let load_balancer_ips = service
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .into_iter()
            .flatten()
            // Proxy mode: the load balancer proxies to the nodes itself (kube-proxy skips it).
            .filter(|ingress| ingress.ip_mode.as_deref() != Some("Proxy"))
            .filter_map(|ingress| ingress.ip.as_deref())
            .filter_map(|raw| address("load balancer ingress IP", raw))
            .collect();
        let annotation = service
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(SOURCE_RANGES_ANNOTATION));
        let ranges: Vec<&str> = match spec.load_balancer_source_ranges.as_ref() {
            Some(ranges) if !ranges.is_empty() => ranges.iter().map(String::as_str).collect(),
            _ => annotation
                .map(|a| a.split(',').filter(|r| !r.trim().is_empty()).collect())
                .unwrap_or_default(),
        };
        let source_ranges = ranges
            .iter()
            .filter_map(|raw| match raw.trim().parse::<IpNet>() {
                Ok(net) => Some(net.trunc()),
                Err(_) => {
                    warnings.push(format!(
                        "loadBalancerSourceRange {raw:?} skipped: not a CIDR"
                    ));
                    None
                }
            })
            .collect();
        let externally_accessible = node_ports || !external_ips.is_empty();
        let local = |policy: Option<&String>| match policy.map(String::as_str) {
            Some("Local") => TrafficPolicy::Local,
            _ => TrafficPolicy::Cluster,
        };
        let external_policy = if externally_accessible {
            local(spec.external_traffic_policy.as_ref())
        } else {
            TrafficPolicy::Cluster
        };
        let health_check_node_port = (load_balancer && external_policy == TrafficPolicy::Local)
            .then(|| {
                spec.health_check_node_port
                    .and_then(|p| u16::try_from(p).ok())
            })
            .flatten()
            .filter(|p| *p != 0);
        let affinity_timeout = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .and_then(|t| u32::try_from(t).ok())
                .filter(|t| *t > 0)
                .unwrap_or(DEFAULT_AFFINITY_TIMEOUT)
        });
        Self {
            node_ports,
            external_ips,
            load_balancer_ips,
            source_ranges,
            external_policy,
            internal_policy: local(spec.internal_traffic_policy.as_ref()),
            health_check_node_port,
            affinity_timeout,
        }
    }
}

/// `Ok(None)` for a headless Service (`clusterIP: None`).
fn cluster_ips(spec: &ServiceSpec) -> Result<Option<Vec<IpAddr>>, ServiceError> {
    let raw: Vec<String> = match (&spec.cluster_ips, &spec.cluster_ip) {
        (Some(ips), _) if !ips.is_empty() => ips.clone(),
        (_, Some(ip)) if !ip.is_empty() => vec![ip.clone()],
        _ => Vec::new(),
    };
    if raw.first().is_some_and(|ip| ip == "None") {
        return Ok(None);
    }
    let ips = raw
        .iter()
        .map(|ip| {
            ip.parse::<IpAddr>()
                .map_err(|_| ServiceError::InvalidClusterIp(ip.clone()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if ips.len() > 2 || (ips.len() == 2 && Family::of(&ips[0]) == Family::of(&ips[1])) {
        return Err(ServiceError::ClusterIpsPerFamily(raw));
    }
    if let Some(families) = spec.ip_families.as_ref().filter(|f| !f.is_empty()) {
        if families.len() < ips.len() {
            return Err(ServiceError::FamilyCount {
                ips: ips.len(),
                families: families.len(),
            });
        }
        for (ip, family) in ips.iter().zip(families) {
            let expected = Family::from_kubernetes_name(family)
                .ok_or_else(|| ServiceError::UnknownFamily(family.clone()))?;
            if expected != Family::of(ip) {
                return Err(ServiceError::FamilyMismatch {
                    ip: *ip,
                    family: family.clone(),
                });
            }
        }
    }
    Ok(Some(ips))
}

/// The endpoints of one service port across all slices: the slice port with the same name
/// and protocol gives the target port (this is how named `targetPort`s resolve).
fn endpoints(
    port_name: &str,
    protocol: Protocol,
    slices: &[&SliceRecord],
    warnings: &mut Vec<String>,
) -> Vec<Endpoint> {
    let mut unique = BTreeMap::new();
    for slice in slices {
        if slice.family.is_none() {
            continue;
        }
        warnings.extend(slice.invalid.iter().cloned());
        let Some(target) = slice
            .ports
            .iter()
            .find(|p| p.name == port_name && p.protocol == Some(protocol))
        else {
            continue;
        };
        let Some(target_port) = target.port else {
            warnings.push(format!(
                "EndpointSlice {}: port {port_name:?} has no valid number",
                slice.name
            ));
            continue;
        };
        for endpoint in &slice.endpoints {
            unique
                .entry((endpoint.address, target_port))
                .or_insert_with(|| Endpoint {
                    address: endpoint.address,
                    port: target_port,
                    conditions: endpoint.conditions,
                    node_name: endpoint.node_name.clone(),
                    zone: endpoint.zone.clone(),
                    hints: endpoint.hints.clone(),
                });
        }
    }
    unique.into_values().collect()
}
