//! The one boundary between model types and the kernel's byte layouts: addresses as raw
//! network-order bytes, ports converted to network order here and nowhere else.
use std::net::{Ipv4Addr, Ipv6Addr};

use aya::Pod;
use proxy_common::{
    BackendV4, BackendV6, ConntrackKeyV4, ConntrackKeyV6, ReverseNatV4, ReverseNatV6, ServiceKeyV4,
    ServiceKeyV6, backend_state, map_names, scope,
};

use crate::{
    family::Address,
    model::Protocol,
    plan::{Backend, BackendState, Frontend},
};

/// A decoded conntrack key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConntrackTuple<A> {
    pub source: A,
    pub destination: A,
    pub source_port: u16,
    pub destination_port: u16,
    pub protocol: u8,
    pub direction: u8,
}

/// Kernel layouts of one family.
pub trait KernelFamily: Address {
    type ServiceKey: Pod + bytemuck::Pod;
    type Backend: Pod + bytemuck::Pod;
    type ReverseNat: Pod + bytemuck::Pod;
    type ConntrackKey: Pod + bytemuck::Pod;

    const SERVICES: &'static str;
    const BACKENDS: &'static str;
    const REVERSE_NAT: &'static str;
    const CONNTRACK: &'static str;

    fn encode_service_key(frontend: &Frontend<Self>, slot: u16) -> Self::ServiceKey;
    /// `None` for a key naming an unknown protocol.
    fn decode_service_key(key: &Self::ServiceKey) -> Option<(Frontend<Self>, u16)>;
    fn encode_backend(backend: &Backend<Self>) -> Self::Backend;
    fn decode_backend(raw: &Self::Backend) -> Option<Backend<Self>>;
    fn encode_reverse_nat(address: Self, port: u16) -> Self::ReverseNat;
    fn decode_reverse_nat(raw: &Self::ReverseNat) -> (Self, u16);
    fn decode_conntrack_key(raw: &Self::ConntrackKey) -> ConntrackTuple<Self>;
    /// An address as a conntrack value holds it (IPv4 in the first 4 bytes).
    fn decode_conntrack_address(raw: &[u8; 16]) -> Self;
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

macro_rules! kernel_family {
    ($addr:ty, $skey:ident, $backend:ident, $revnat:ident, $ctkey:ident,
     $services:expr, $backends:expr, $reverse_nat:expr, $conntrack:expr) => {
        impl KernelFamily for $addr {
            type ServiceKey = $skey;
            type Backend = $backend;
            type ReverseNat = $revnat;
            type ConntrackKey = $ctkey;

            const SERVICES: &'static str = $services;
            const BACKENDS: &'static str = $backends;
            const REVERSE_NAT: &'static str = $reverse_nat;
            const CONNTRACK: &'static str = $conntrack;

            fn encode_service_key(frontend: &Frontend<Self>, slot: u16) -> $skey {
                $skey {
                    address: frontend.address.octets(),
                    port: frontend.port.to_be(),
                    slot,
                    protocol: frontend.protocol.number(),
                    scope: scope::EXTERNAL,
                    _pad: [0; 2],
                }
            }

            fn decode_service_key(key: &$skey) -> Option<(Frontend<Self>, u16)> {
                Some((
                    Frontend {
                        address: <$addr>::from(key.address),
                        port: u16::from_be(key.port),
                        protocol: Protocol::from_number(key.protocol)?,
                    },
                    key.slot,
                ))
            }

            fn encode_backend(backend: &Backend<Self>) -> $backend {
                $backend {
                    address: backend.address.octets(),
                    port: backend.port.to_be(),
                    protocol: backend.protocol.number(),
                    state: encode_state(backend.state),
                    zone: 0,
                    _pad: [0; 3],
                }
            }

            fn decode_backend(raw: &$backend) -> Option<Backend<Self>> {
                Some(Backend {
                    address: <$addr>::from(raw.address),
                    port: u16::from_be(raw.port),
                    protocol: Protocol::from_number(raw.protocol)?,
                    state: decode_state(raw.state)?,
                })
            }

            fn encode_reverse_nat(address: Self, port: u16) -> $revnat {
                $revnat {
                    address: address.octets(),
                    port: port.to_be(),
                    _pad: [0; 2],
                }
            }

            fn decode_reverse_nat(raw: &$revnat) -> (Self, u16) {
                (<$addr>::from(raw.address), u16::from_be(raw.port))
            }

            fn decode_conntrack_address(raw: &[u8; 16]) -> Self {
                let mut octets = Self::UNSPECIFIED.octets();
                let n = octets.len();
                octets.copy_from_slice(&raw[..n]);
                <$addr>::from(octets)
            }

            fn decode_conntrack_key(raw: &$ctkey) -> ConntrackTuple<Self> {
                ConntrackTuple {
                    source: <$addr>::from(raw.source),
                    destination: <$addr>::from(raw.destination),
                    source_port: u16::from_be(raw.source_port),
                    destination_port: u16::from_be(raw.destination_port),
                    protocol: raw.protocol,
                    direction: raw.direction,
                }
            }
        }
    };
}

kernel_family!(
    Ipv4Addr,
    ServiceKeyV4,
    BackendV4,
    ReverseNatV4,
    ConntrackKeyV4,
    map_names::SERVICES_V4,
    map_names::BACKENDS_V4,
    map_names::REVERSE_NAT_V4,
    map_names::CONNTRACK_V4
);
kernel_family!(
    Ipv6Addr,
    ServiceKeyV6,
    BackendV6,
    ReverseNatV6,
    ConntrackKeyV6,
    map_names::SERVICES_V6,
    map_names::BACKENDS_V6,
    map_names::REVERSE_NAT_V6,
    map_names::CONNTRACK_V6
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_network_order_and_round_trip() {
        let frontend = Frontend {
            address: Ipv4Addr::new(10, 96, 0, 10),
            port: 80,
            protocol: Protocol::Tcp,
        };
        let key = Ipv4Addr::encode_service_key(&frontend, 3);
        assert_eq!(bytemuck::bytes_of(&key)[4..6], [0, 80]);
        assert_eq!(key.address, [10, 96, 0, 10]);
        assert_eq!(Ipv4Addr::decode_service_key(&key), Some((frontend, 3)));

        let backend = Backend {
            address: "fd00:10:244::5".parse::<Ipv6Addr>().unwrap(),
            port: 8080,
            protocol: Protocol::Udp,
            state: BackendState::Terminating,
        };
        let raw = Ipv6Addr::encode_backend(&backend);
        assert_eq!(bytemuck::bytes_of(&raw)[16..18], [0x1f, 0x90]);
        assert_eq!(Ipv6Addr::decode_backend(&raw), Some(backend));
    }
}
