//! What the agent needs to know about its own Node: addresses per family and its zone.
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Node;

use crate::family::Family;

pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// InternalIP and ExternalIP addresses, in the Node's order.
    pub addresses: Vec<IpAddr>,
    pub zone: Option<String>,
}

impl NodeInfo {
    pub fn from_node(node: &Node) -> Self {
        let addresses = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .into_iter()
            .flatten()
            .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
            .filter_map(|a| a.address.parse().ok())
            .collect();
        let zone = node
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(ZONE_LABEL))
            .cloned();
        Self { addresses, zone }
    }

    pub fn families(&self) -> Vec<Family> {
        let mut families: Vec<Family> = self.addresses.iter().map(Family::of).collect();
        families.sort();
        families.dedup();
        families
    }
}
