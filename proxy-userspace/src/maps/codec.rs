//! The one boundary between model types and the kernel's byte layouts. Each model key or value
//! a [`super::Table`] holds has one [`Encode`] impl here, built on the constructors in
//! `proxy_common` (addresses as raw network-order bytes, ports converted to network order there
//! and nowhere else). Slot 0 is built by [`head`] and read back by [`decode_head`]: the only
//! code that knows the kernel's flag bits.
use std::net::{Ipv4Addr, Ipv6Addr};

use proxy_common::{
    ConntrackKey, LbFamily, RawAddress, ReverseNat, ServiceKey, ServiceValue, V4, V6,
    backend_state, scope, service_flags,
};

use super::SlotKey;
use crate::{
    family::Address,
    model::Protocol,
    plan::{Backend, BackendState, Frontend, FrontendKind, Scope, ServiceEntry},
};

/// A model address with its kernel binding.
pub trait KernelFamily: Address {
    type Raw: RawAddress<Ip = Self>;
    type Binding: LbFamily<Addr = Self::Raw>;
}

impl KernelFamily for Ipv4Addr {
    type Raw = [u8; 4];
    type Binding = V4;
}

impl KernelFamily for Ipv6Addr {
    type Raw = [u8; 16];
    type Binding = V6;
}

/// A model-level key or value, and its kernel layout.
pub trait Encode: Sized {
    type Raw: aya::Pod + bytemuck::Pod;
    fn encode(&self) -> Self::Raw;
    /// `None` for bytes the agent never writes (an unknown protocol, scope or state).
    fn decode(raw: &Self::Raw) -> Option<Self>;
}

impl Encode for u32 {
    type Raw = u32;
    fn encode(&self) -> u32 {
        *self
    }
    fn decode(raw: &u32) -> Option<u32> {
        Some(*raw)
    }
}

/// Kernel-only shapes the agent reads and deletes as they are.
macro_rules! as_is {
    ($($t:ty),*) => {$(
        impl Encode for $t {
            type Raw = $t;
            fn encode(&self) -> $t {
                *self
            }
            fn decode(raw: &$t) -> Option<$t> {
                Some(*raw)
            }
        }
    )*};
}

as_is!(proxy_common::AffinityKey, proxy_common::AffinityValue);

impl Encode for ServiceValue {
    type Raw = ServiceValue;
    fn encode(&self) -> ServiceValue {
        *self
    }
    fn decode(raw: &ServiceValue) -> Option<ServiceValue> {
        Some(*raw)
    }
}

fn encode_scope(scope: Scope) -> u8 {
    match scope {
        Scope::External => scope::EXTERNAL,
        Scope::Internal => scope::INTERNAL,
    }
}

fn decode_scope(raw: u8) -> Option<Scope> {
    match raw {
        scope::EXTERNAL => Some(Scope::External),
        scope::INTERNAL => Some(Scope::Internal),
        _ => None,
    }
}

impl<A: KernelFamily> Encode for SlotKey<A> {
    type Raw = ServiceKey<A::Raw>;
    fn encode(&self) -> Self::Raw {
        let f = &self.frontend;
        ServiceKey::new(
            f.address,
            f.port,
            f.protocol.number(),
            encode_scope(f.scope),
            self.slot,
        )
    }
    fn decode(raw: &Self::Raw) -> Option<Self> {
        Some(SlotKey {
            frontend: Frontend {
                address: raw.address.to_ip(),
                port: u16::from_be(raw.port),
                protocol: Protocol::from_number(raw.protocol)?,
                scope: decode_scope(raw.scope)?,
            },
            slot: raw.slot,
        })
    }
}

fn encode_state(state: BackendState) -> u8 {
    match state {
        BackendState::Active => backend_state::ACTIVE,
        BackendState::Terminating => backend_state::TERMINATING,
    }
}

fn decode_state(state: u8) -> Option<BackendState> {
    match state {
        backend_state::ACTIVE => Some(BackendState::Active),
        backend_state::TERMINATING => Some(BackendState::Terminating),
        _ => None,
    }
}

impl<A: KernelFamily> Encode for Backend<A> {
    type Raw = proxy_common::Backend<A::Raw>;
    fn encode(&self) -> Self::Raw {
        proxy_common::Backend::new(
            self.address,
            self.port,
            self.protocol.number(),
            encode_state(self.state),
        )
    }
    fn decode(raw: &Self::Raw) -> Option<Self> {
        Some(Backend {
            address: raw.address.to_ip(),
            port: u16::from_be(raw.port),
            protocol: Protocol::from_number(raw.protocol)?,
            state: decode_state(raw.state)?,
        })
    }
}

/// A reverse-NAT entry: the frontend's (address, port).
impl<A: KernelFamily> Encode for (A, u16) {
    type Raw = ReverseNat<A::Raw>;
    fn encode(&self) -> Self::Raw {
        ReverseNat::new(self.0, self.1)
    }
    fn decode(raw: &Self::Raw) -> Option<Self> {
        Some((raw.address.to_ip(), u16::from_be(raw.port)))
    }
}

/// Slot 0 as the model sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Head {
    /// `None` for a value with no kind bit (never written by this agent).
    pub kind: Option<FrontendKind>,
    pub local: bool,
    pub two_scopes: bool,
    /// Only clients in the frontend's source ranges are served.
    pub source_ranges: bool,
    pub affinity_timeout: Option<u32>,
}

fn kind_flag(kind: FrontendKind) -> u16 {
    match kind {
        FrontendKind::ClusterIp => service_flags::CLUSTER_IP,
        FrontendKind::NodePort => service_flags::NODE_PORT,
        FrontendKind::ExternalIp => service_flags::EXTERNAL_IP,
        FrontendKind::LoadBalancer => service_flags::LOAD_BALANCER,
    }
}

/// The slot-0 value of `entry`, with its reverse-NAT id and `count` backend slots. Built here
/// only, and compared whole: any attribute that changes rewrites slot 0.
pub fn head<A>(entry: &ServiceEntry<A>, rev_nat_id: u32, count: u16) -> ServiceValue {
    let mut flags = kind_flag(entry.kind);
    if entry.local {
        flags |= service_flags::LOCAL;
    }
    if entry.two_scopes {
        flags |= service_flags::TWO_SCOPES;
    }
    if !entry.source_ranges.is_empty() {
        flags |= service_flags::SOURCE_RANGES;
    }
    ServiceValue {
        backend_id: 0,
        rev_nat_id,
        count,
        flags,
        affinity_timeout: entry.affinity_timeout.unwrap_or(0),
    }
}

pub fn decode_head(value: &ServiceValue) -> Head {
    let kind = [
        FrontendKind::ClusterIp,
        FrontendKind::NodePort,
        FrontendKind::ExternalIp,
        FrontendKind::LoadBalancer,
    ]
    .into_iter()
    .find(|k| value.flags & kind_flag(*k) != 0);
    Head {
        kind,
        local: value.flags & service_flags::LOCAL != 0,
        two_scopes: value.flags & service_flags::TWO_SCOPES != 0,
        source_ranges: value.flags & service_flags::SOURCE_RANGES != 0,
        affinity_timeout: (value.affinity_timeout != 0).then_some(value.affinity_timeout),
    }
}

/// A decoded conntrack key (host-order ports).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConntrackTuple<A> {
    pub source: A,
    pub destination: A,
    pub source_port: u16,
    pub destination_port: u16,
    pub protocol: u8,
    pub direction: u8,
}

pub fn decode_conntrack_key<A: KernelFamily>(raw: &ConntrackKey<A::Raw>) -> ConntrackTuple<A> {
    ConntrackTuple {
        source: raw.source.to_ip(),
        destination: raw.destination.to_ip(),
        source_port: u16::from_be(raw.source_port),
        destination_port: u16::from_be(raw.destination_port),
        protocol: raw.protocol,
        direction: raw.direction,
    }
}

/// An address as a conntrack value holds it (IPv4 in the first 4 bytes).
pub fn decode_conntrack_address<A: KernelFamily>(raw: &[u8; 16]) -> A {
    A::Raw::from_wide(raw).to_ip()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_network_order_and_round_trip() {
        let key = SlotKey::new(
            Frontend {
                address: Ipv4Addr::new(10, 96, 0, 10),
                port: 80,
                protocol: Protocol::Tcp,
                scope: Scope::Internal,
            },
            3,
        );
        let raw = key.encode();
        assert_eq!(bytemuck::bytes_of(&raw)[4..6], [0, 80]);
        assert_eq!(raw.address, [10, 96, 0, 10]);
        assert_eq!(raw.scope, scope::INTERNAL);
        assert_eq!(SlotKey::decode(&raw), Some(key));

        let backend = Backend {
            address: "fd00:10:244::5".parse::<Ipv6Addr>().unwrap(),
            port: 8080,
            protocol: Protocol::Udp,
            state: BackendState::Terminating,
        };
        let raw = backend.encode();
        assert_eq!(bytemuck::bytes_of(&raw)[16..18], [0x1f, 0x90]);
        assert_eq!(Backend::decode(&raw), Some(backend));
    }

    #[test]
    fn slot_0_round_trips_every_attribute() {
        let entry = ServiceEntry::<Ipv4Addr> {
            kind: FrontendKind::LoadBalancer,
            backends: Vec::new(),
            local: true,
            two_scopes: true,
            affinity_timeout: Some(30),
            source_ranges: vec![(Ipv4Addr::new(198, 51, 100, 0), 24)],
        };
        let value = head(&entry, 7, 3);
        assert_eq!((value.rev_nat_id, value.count), (7, 3));
        assert_eq!(
            decode_head(&value),
            Head {
                kind: Some(FrontendKind::LoadBalancer),
                local: true,
                two_scopes: true,
                source_ranges: true,
                affinity_timeout: Some(30),
            }
        );
    }
}
