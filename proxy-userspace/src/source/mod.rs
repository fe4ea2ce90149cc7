//! Where Services, EndpointSlices and Nodes come from: a manifest directory or the API server.
//! Both emit the same [`SourceEvent`]s into the agent.
pub mod kube;
pub mod manifests;

use k8s_openapi::api::{core::v1::Node, core::v1::Service, discovery::v1::EndpointSlice};

use crate::model::{SliceEntry, slim_service};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Service,
    EndpointSlice,
    Node,
}

#[derive(Clone, Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "objects move one at a time through a channel; boxing buys nothing"
)]
pub enum Object {
    /// Slimmed on arrival ([`slim_service`]).
    Service(Service),
    /// Parsed on arrival: a fraction of the API object's size.
    EndpointSlice(SliceEntry),
    Node(Node),
}

impl Object {
    pub fn service(service: Service) -> Self {
        Object::Service(slim_service(service))
    }

    /// `None` for a slice without a name (which the API server never sends).
    pub fn endpoint_slice(slice: EndpointSlice) -> Option<Self> {
        SliceEntry::from_slice(&slice).map(Object::EndpointSlice)
    }
}

#[derive(Clone, Debug)]
pub enum SourceEvent {
    /// A complete list of one kind (the first list, a relist, a directory read): objects of
    /// that kind not in it are gone. Only a complete list ever removes anything en masse.
    Replace(Kind, Vec<Object>),
    /// An object was added or changed.
    Apply(Object),
    /// An object was deleted.
    Delete(Object),
    /// Something could not be read; logged, counted, skipped.
    Invalid(String),
}

/// A full list of the objects a source knows (a directory read).
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub services: Vec<Service>,
    pub slices: Vec<EndpointSlice>,
    pub nodes: Vec<Node>,
    /// Objects or files that could not be read, each naming what and why.
    pub errors: Vec<String>,
}

impl Snapshot {
    /// The snapshot as one complete list per kind.
    pub fn into_events(self) -> Vec<SourceEvent> {
        let mut events: Vec<SourceEvent> =
            self.errors.into_iter().map(SourceEvent::Invalid).collect();
        events.push(SourceEvent::Replace(
            Kind::Service,
            self.services.into_iter().map(Object::service).collect(),
        ));
        events.push(SourceEvent::Replace(
            Kind::EndpointSlice,
            self.slices
                .into_iter()
                .filter_map(Object::endpoint_slice)
                .collect(),
        ));
        events.push(SourceEvent::Replace(
            Kind::Node,
            self.nodes.into_iter().map(Object::Node).collect(),
        ));
        events
    }
}
