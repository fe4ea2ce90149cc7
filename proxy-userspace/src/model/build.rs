//! Service + its EndpointSlices → service ports. Validation happens here, once: a Service that
//! fails it is reported by name and skipped, and never disturbs another Service.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

use super::{Endpoint, Protocol, ServiceName, ServicePort, ServicePortName, SliceRecord};
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
    /// (a bad endpoint address, an SCTP port the datapath cannot translate yet).
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

/// Builds the service ports of `service` from the EndpointSlices that belong to it.
pub fn service_ports(service: &Service, slices: &[&EndpointSlice]) -> Result<Built, ServiceError> {
    let records: Vec<SliceRecord> = slices.iter().map(|s| SliceRecord::from_slice(s)).collect();
    let records: Vec<&SliceRecord> = records.iter().collect();
    service_ports_from_records(service, &records)
}

/// A Service as the tracker keeps it: the spec and the identity, without status,
/// annotations or managed fields (which can be most of an object's size).
pub fn slim_service(service: Service) -> Service {
    let metadata = service.metadata;
    Service {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: metadata.name,
            namespace: metadata.namespace,
            labels: metadata.labels,
            ..Default::default()
        },
        spec: service.spec,
        status: None,
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
        if protocol == Protocol::Sctp {
            warnings.push(format!(
                "port {port_name:?} {number}/SCTP skipped: SCTP is not translated yet"
            ));
            continue;
        }
        let endpoints = endpoints(&port_name, protocol, slices, &mut warnings);
        ports.push(ServicePort {
            name: ServicePortName {
                service: name.clone(),
                port: port_name,
                protocol,
            },
            port: number,
            protocol,
            cluster_ips: cluster_ips.clone(),
            endpoints,
        });
    }
    Ok(Built::Ports { ports, warnings })
}

/// `Ok(None)` for a headless Service (`clusterIP: None`).
fn cluster_ips(
    spec: &k8s_openapi::api::core::v1::ServiceSpec,
) -> Result<Option<Vec<IpAddr>>, ServiceError> {
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
                    zone_hints: endpoint.zone_hints.clone(),
                });
        }
    }
    unique.into_values().collect()
}
