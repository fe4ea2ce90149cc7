//! Where Services, EndpointSlices and Nodes come from: a manifest directory or the API server.
//! Every source emits the same events into the tracker.
pub mod manifests;

use k8s_openapi::api::{core::v1::Node, core::v1::Service, discovery::v1::EndpointSlice};

/// A full list of the objects a source knows (the first list, a directory read, a relist).
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub services: Vec<Service>,
    pub slices: Vec<EndpointSlice>,
    pub nodes: Vec<Node>,
    /// Objects or files that could not be read, each naming what and why.
    pub errors: Vec<String>,
}
