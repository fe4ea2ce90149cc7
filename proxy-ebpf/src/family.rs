//! One trait, two families: the service, conntrack and NAT logic is written once and
//! instantiated for IPv4 and IPv6 with their own maps and header layouts.
use aya_ebpf::maps::{HashMap, LruHashMap};
use proxy_common::{
    BackendV4, BackendV6, ConntrackKeyV4, ConntrackKeyV6, ConntrackValue, ReverseNatV4,
    ReverseNatV6, ServiceKeyV4, ServiceKeyV6, ServiceValue, scope,
};

use crate::{maps, nat, parse::Packet};

pub trait Family {
    type Addr: Copy + 'static;
    type ServiceKey: 'static;
    type Backend: Copy + 'static;
    type ReverseNat: Copy + 'static;
    type ConntrackKey: 'static;

    fn services() -> &'static HashMap<Self::ServiceKey, ServiceValue>;
    fn backends() -> &'static HashMap<u32, Self::Backend>;
    fn reverse_nat() -> &'static HashMap<u32, Self::ReverseNat>;
    fn conntrack() -> &'static LruHashMap<Self::ConntrackKey, ConntrackValue>;

    fn service_key(address: Self::Addr, port: u16, protocol: u8, slot: u16) -> Self::ServiceKey;
    fn conntrack_key(
        source: Self::Addr,
        destination: Self::Addr,
        source_port: u16,
        destination_port: u16,
        protocol: u8,
        direction: u8,
    ) -> Self::ConntrackKey;
    fn backend_address(backend: &Self::Backend) -> (Self::Addr, u16);
    /// The address as kept in a conntrack entry, and back.
    fn to_conntrack(address: Self::Addr) -> [u8; 16];
    fn from_conntrack(address: &[u8; 16]) -> Self::Addr;
    fn reverse_nat_address(entry: &Self::ReverseNat) -> (Self::Addr, u16);

    /// Rewrites the source (`destination == false`) or destination address and port, fixing
    /// every checksum that covers them.
    fn rewrite(
        ctx: &aya_ebpf::programs::TcContext,
        packet: &Packet<Self::Addr>,
        destination: bool,
        address: Self::Addr,
        port: u16,
    ) -> Result<(), i64>;
}

pub enum V4 {}
pub enum V6 {}

macro_rules! family {
    ($family:ty, $addr:ty, $skey:ident, $backend:ident, $revnat:ident, $ctkey:ident,
     $services:path, $backends:path, $reverse_nat:path, $conntrack:path, $rewrite:path) => {
        impl Family for $family {
            type Addr = $addr;
            type ServiceKey = $skey;
            type Backend = $backend;
            type ReverseNat = $revnat;
            type ConntrackKey = $ctkey;

            #[inline(always)]
            fn services() -> &'static HashMap<$skey, ServiceValue> {
                &$services
            }
            #[inline(always)]
            fn backends() -> &'static HashMap<u32, $backend> {
                &$backends
            }
            #[inline(always)]
            fn reverse_nat() -> &'static HashMap<u32, $revnat> {
                &$reverse_nat
            }
            #[inline(always)]
            fn conntrack() -> &'static LruHashMap<$ctkey, ConntrackValue> {
                &$conntrack
            }
            #[inline(always)]
            fn service_key(address: $addr, port: u16, protocol: u8, slot: u16) -> $skey {
                $skey {
                    address,
                    port,
                    slot,
                    protocol,
                    scope: scope::EXTERNAL,
                    _pad: [0; 2],
                }
            }
            #[inline(always)]
            fn conntrack_key(
                source: $addr,
                destination: $addr,
                source_port: u16,
                destination_port: u16,
                protocol: u8,
                direction: u8,
            ) -> $ctkey {
                $ctkey {
                    source,
                    destination,
                    source_port,
                    destination_port,
                    protocol,
                    direction,
                    _pad: [0; 2],
                }
            }
            #[inline(always)]
            fn backend_address(backend: &$backend) -> ($addr, u16) {
                (backend.address, backend.port)
            }
            #[inline(always)]
            fn to_conntrack(address: $addr) -> [u8; 16] {
                let mut out = [0u8; 16];
                out[..address.len()].copy_from_slice(&address);
                out
            }
            #[inline(always)]
            fn from_conntrack(address: &[u8; 16]) -> $addr {
                let mut out = <$addr>::default();
                let n = out.len();
                out.copy_from_slice(&address[..n]);
                out
            }
            #[inline(always)]
            fn reverse_nat_address(entry: &$revnat) -> ($addr, u16) {
                (entry.address, entry.port)
            }
            #[inline(always)]
            fn rewrite(
                ctx: &aya_ebpf::programs::TcContext,
                packet: &Packet<$addr>,
                destination: bool,
                address: $addr,
                port: u16,
            ) -> Result<(), i64> {
                $rewrite(ctx, packet, destination, address, port)
            }
        }
    };
}

family!(
    V4,
    [u8; 4],
    ServiceKeyV4,
    BackendV4,
    ReverseNatV4,
    ConntrackKeyV4,
    maps::SERVICES_V4,
    maps::BACKENDS_V4,
    maps::REVERSE_NAT_V4,
    maps::CONNTRACK_V4,
    nat::rewrite_v4
);
family!(
    V6,
    [u8; 16],
    ServiceKeyV6,
    BackendV6,
    ReverseNatV6,
    ConntrackKeyV6,
    maps::SERVICES_V6,
    maps::BACKENDS_V6,
    maps::REVERSE_NAT_V6,
    maps::CONNTRACK_V6,
    nat::rewrite_v6
);
