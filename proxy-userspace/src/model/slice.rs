//! EndpointSlices as the model needs them: parsed once on arrival, a fraction of the size of
//! the API object (no metadata, target references or raw strings), so 10,000 Services' slices
//! fit in a few megabytes.
use std::{net::IpAddr, sync::Arc, time::SystemTime};

use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::{Conditions, Protocol, SERVICE_NAME_LABEL, ServiceName, intern};
use crate::family::Family;

/// A slice port: the name matches a service port's name; the number is the target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlicePort {
    pub name: String,
    /// `None` for an unknown protocol.
    pub protocol: Option<Protocol>,
    /// `None` when missing or outside 1-65535.
    pub port: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceEndpoint {
    pub address: IpAddr,
    pub conditions: Conditions,
    pub node_name: Option<Arc<str>>,
    pub zone: Option<Arc<str>>,
    /// Most endpoints have none; one pointer keeps the ones without small (the tracker holds
    /// every endpoint of the cluster).
    pub hints: Option<Arc<Hints>>,
}

/// An endpoint's topology hints.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Hints {
    /// `hints.forZones[].name`.
    pub zones: Box<[Arc<str>]>,
    /// `hints.forNodes[].name`.
    pub nodes: Box<[Arc<str>]>,
}

impl Hints {
    fn of(hints: Option<&k8s_openapi::api::discovery::v1::EndpointHints>) -> Option<Arc<Self>> {
        let hints = hints?;
        let zones = hints.for_zones.iter().flatten().map(|z| intern(&z.name));
        let nodes = hints.for_nodes.iter().flatten().map(|n| intern(&n.name));
        let hints = Self {
            zones: zones.collect(),
            nodes: nodes.collect(),
        };
        (!hints.zones.is_empty() || !hints.nodes.is_empty()).then(|| Arc::new(hints))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceRecord {
    pub name: String,
    /// `None` for FQDN slices, which name no address we could translate to.
    pub family: Option<Family>,
    pub ports: Vec<SlicePort>,
    pub endpoints: Vec<SliceEndpoint>,
    /// Endpoints dropped while parsing, and why.
    pub invalid: Vec<String>,
}

/// A slice with its identity and owner, as sources deliver it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceEntry {
    /// `namespace/name` of the slice.
    pub name: ServiceName,
    /// The Service it belongs to (`kubernetes.io/service-name`).
    pub service: Option<ServiceName>,
    pub record: SliceRecord,
    /// `endpoints.kubernetes.io/last-change-trigger-time`: when the change this version of the
    /// slice carries was triggered (for the network programming latency); `None` when absent
    /// or unreadable.
    pub trigger_time: Option<SystemTime>,
}

/// The annotation the EndpointSlice controller sets to the time of the change it wrote.
pub const LAST_CHANGE_TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// An RFC 3339 time (as the controller writes it, with or without fractional seconds).
fn trigger_time(slice: &EndpointSlice) -> Option<SystemTime> {
    let text = slice
        .metadata
        .annotations
        .as_ref()?
        .get(LAST_CHANGE_TRIGGER_TIME)?;
    match text.parse::<k8s_openapi::jiff::Timestamp>() {
        Ok(time) => Some(SystemTime::from(time)),
        Err(error) => {
            tracing::warn!(slice = ?slice.metadata.name, value = text, %error, "unreadable {LAST_CHANGE_TRIGGER_TIME}");
            None
        }
    }
}

impl SliceEntry {
    /// `None` for a slice without a name.
    pub fn from_slice(slice: &EndpointSlice) -> Option<Self> {
        let namespace = slice.metadata.namespace.as_deref();
        let service = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
            .map(|name| ServiceName::new(namespace, name));
        Some(Self {
            name: ServiceName::new(namespace, slice.metadata.name.as_deref()?),
            service,
            record: SliceRecord::from_slice(slice),
            trigger_time: trigger_time(slice),
        })
    }
}

impl SliceRecord {
    pub fn from_slice(slice: &EndpointSlice) -> Self {
        let name = slice.metadata.name.clone().unwrap_or_default();
        let family = Family::from_kubernetes_name(&slice.address_type);
        let ports = slice
            .ports
            .iter()
            .flatten()
            .map(|p| SlicePort {
                name: p.name.clone().unwrap_or_default(),
                protocol: Protocol::parse(p.protocol.as_deref()),
                port: p
                    .port
                    .and_then(|p| u16::try_from(p).ok())
                    .filter(|p| *p != 0),
            })
            .collect();
        let mut invalid = Vec::new();
        let mut endpoints = Vec::with_capacity(slice.endpoints.len());
        if let Some(family) = family {
            for endpoint in &slice.endpoints {
                // Like kube-proxy, the first address is the endpoint's address.
                let Some(raw) = endpoint.addresses.first() else {
                    continue;
                };
                let address = match raw.parse::<IpAddr>() {
                    Ok(a) if Family::of(&a) == family => a,
                    _ => {
                        invalid.push(format!(
                            "EndpointSlice {name}: endpoint address {raw:?} is not an {family} address"
                        ));
                        continue;
                    }
                };
                let c = endpoint.conditions.as_ref();
                endpoints.push(SliceEndpoint {
                    address,
                    conditions: Conditions {
                        ready: c.and_then(|c| c.ready).unwrap_or(true),
                        serving: c.and_then(|c| c.serving.or(c.ready)).unwrap_or(true),
                        terminating: c.and_then(|c| c.terminating).unwrap_or(false),
                    },
                    node_name: endpoint.node_name.as_deref().map(intern),
                    zone: endpoint.zone.as_deref().map(intern),
                    hints: Hints::of(endpoint.hints.as_ref()),
                });
            }
        }
        endpoints.shrink_to_fit();
        Self {
            name,
            family,
            ports,
            endpoints,
            invalid,
        }
    }
}
