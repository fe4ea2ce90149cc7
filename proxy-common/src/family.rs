//! Each family's kernel binding, declared once: its raw address type and its maps' names. The
//! kernel programs and the agent both build on [`LbFamily`], so a family is described in one
//! place and the generic key types ([`crate::ServiceKey`] and the others) do the rest.
use core::net::{Ipv4Addr, Ipv6Addr};

use bytemuck::Pod;

use crate::map_names;

mod sealed {
    pub trait Sealed {}
    impl Sealed for [u8; 4] {}
    impl Sealed for [u8; 16] {}
}

/// An address as packets and map keys hold it: 4 or 16 bytes, network order. Sealed: the key
/// types are `Pod` because these are the only two.
pub trait RawAddress:
    sealed::Sealed + Copy + Default + Eq + Ord + Pod + Send + Sync + 'static
{
    /// The `core::net` address it encodes.
    type Ip: Copy;
    fn from_ip(ip: Self::Ip) -> Self;
    fn to_ip(self) -> Self::Ip;
    /// As a conntrack value holds it: IPv4 in the first 4 bytes of 16.
    fn to_wide(self) -> [u8; 16];
    fn from_wide(wide: &[u8; 16]) -> Self;
}

impl RawAddress for [u8; 4] {
    type Ip = Ipv4Addr;
    #[inline(always)]
    fn from_ip(ip: Ipv4Addr) -> Self {
        ip.octets()
    }
    #[inline(always)]
    fn to_ip(self) -> Ipv4Addr {
        Ipv4Addr::from(self)
    }
    #[inline(always)]
    fn to_wide(self) -> [u8; 16] {
        let mut wide = [0u8; 16];
        wide[..4].copy_from_slice(&self);
        wide
    }
    #[inline(always)]
    fn from_wide(wide: &[u8; 16]) -> Self {
        [wide[0], wide[1], wide[2], wide[3]]
    }
}

impl RawAddress for [u8; 16] {
    type Ip = Ipv6Addr;
    #[inline(always)]
    fn from_ip(ip: Ipv6Addr) -> Self {
        ip.octets()
    }
    #[inline(always)]
    fn to_ip(self) -> Ipv6Addr {
        Ipv6Addr::from(self)
    }
    #[inline(always)]
    fn to_wide(self) -> [u8; 16] {
        self
    }
    #[inline(always)]
    fn from_wide(wide: &[u8; 16]) -> Self {
        *wide
    }
}

/// One family's binding: its address and the names of its maps.
pub trait LbFamily: 'static {
    type Addr: RawAddress;
    /// `IPv4` / `IPv6`, as Kubernetes names them.
    const NAME: &'static str;
    const SERVICES: &'static str;
    const BACKENDS: &'static str;
    const REVERSE_NAT: &'static str;
    const CONNTRACK: &'static str;
    const SOCK_REV: &'static str;
    const SOCK_UDP: &'static str;
    const AFFINITY: &'static str;
    const SOURCE_RANGES: &'static str;
    /// The family's entry in [`map_names::CLUSTER_CLEAR`].
    const CLUSTER_CLEAR: u32;
}

pub enum V4 {}
pub enum V6 {}

impl LbFamily for V4 {
    type Addr = [u8; 4];
    const NAME: &'static str = "IPv4";
    const SERVICES: &'static str = map_names::SERVICES_V4;
    const BACKENDS: &'static str = map_names::BACKENDS_V4;
    const REVERSE_NAT: &'static str = map_names::REVERSE_NAT_V4;
    const CONNTRACK: &'static str = map_names::CONNTRACK_V4;
    const SOCK_REV: &'static str = map_names::SOCK_REV_V4;
    const SOCK_UDP: &'static str = map_names::SOCK_UDP_V4;
    const AFFINITY: &'static str = map_names::AFFINITY_V4;
    const SOURCE_RANGES: &'static str = map_names::SOURCE_RANGES_V4;
    const CLUSTER_CLEAR: u32 = crate::cluster_clear::V4;
}

impl LbFamily for V6 {
    type Addr = [u8; 16];
    const NAME: &'static str = "IPv6";
    const SERVICES: &'static str = map_names::SERVICES_V6;
    const BACKENDS: &'static str = map_names::BACKENDS_V6;
    const REVERSE_NAT: &'static str = map_names::REVERSE_NAT_V6;
    const CONNTRACK: &'static str = map_names::CONNTRACK_V6;
    const SOCK_REV: &'static str = map_names::SOCK_REV_V6;
    const SOCK_UDP: &'static str = map_names::SOCK_UDP_V6;
    const AFFINITY: &'static str = map_names::AFFINITY_V6;
    const SOURCE_RANGES: &'static str = map_names::SOURCE_RANGES_V6;
    const CLUSTER_CLEAR: u32 = crate::cluster_clear::V6;
}
