//! The plan: the desired contents of one family's load-balancing maps, as a pure function of
//! the model. No IDs here (the map writer owns them) and no kernel access.
use std::fmt;

use proxy_common::service_flags;

use crate::{
    family::{Address, socket_display},
    model::{Protocol, ServicePort},
};

/// What a client addresses: (address, port, protocol).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frontend<A> {
    pub address: A,
    pub port: u16,
    pub protocol: Protocol,
}

impl<A: Address> fmt::Display for Frontend<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            socket_display(self.address.into(), self.port),
            self.protocol
        )
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

/// Slot 0 and the backend slots of one frontend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceEntry<A> {
    /// In slot order (slot 1 first).
    pub backends: Vec<Backend<A>>,
    pub flags: u16,
}

/// A frontend with the entry it should have.
pub type Planned<A> = (Frontend<A>, ServiceEntry<A>);

/// The frontends one family serves for one service port, each with its entry.
pub fn frontends<A: Address>(port: &ServicePort) -> Vec<Planned<A>> {
    let backends = backends::<A>(port);
    port.cluster_ips
        .iter()
        .filter_map(|ip| A::from_ip(*ip))
        .map(|address| {
            (
                Frontend {
                    address,
                    port: port.port,
                    protocol: port.protocol,
                },
                ServiceEntry {
                    backends: backends.clone(),
                    flags: service_flags::CLUSTER_IP,
                },
            )
        })
        .collect()
}

/// Ready endpoints of this family; when there are none, the serving-but-terminating ones
/// (kube-proxy's terminating-endpoint fallback), so a rolling update does not black-hole.
fn backends<A: Address>(port: &ServicePort) -> Vec<Backend<A>> {
    let of_family = || {
        port.endpoints
            .iter()
            .filter_map(|e| A::from_ip(e.address).map(|a| (a, e)))
    };
    let ready: Vec<_> = of_family()
        .filter(|(_, e)| e.conditions.ready)
        .map(|(address, e)| Backend {
            address,
            port: e.port,
            protocol: port.protocol,
            state: BackendState::Active,
        })
        .collect();
    if !ready.is_empty() {
        return ready;
    }
    of_family()
        .filter(|(_, e)| e.conditions.serving && e.conditions.terminating)
        .map(|(address, e)| Backend {
            address,
            port: e.port,
            protocol: port.protocol,
            state: BackendState::Terminating,
        })
        .collect()
}
