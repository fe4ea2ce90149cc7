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

/// Whether the first `prefix` bits of `address` are `network`'s (a `prefix` past the
/// address's length counts as all of it). In the kernel programs it runs on most packets a
/// pod sends (is the destination a pod?): an IPv4 address is compared as one word under a
/// mask computed without a branch (a byte loop cost it a few dozen instructions); an IPv6
/// one byte by byte, up to the prefix's last byte (a straight-line word compare of 16
/// unaligned bytes came out longer).
#[inline(always)]
pub fn within<A: RawAddress>(address: &A, network: &A, prefix: u8) -> bool {
    if let (&[a0, a1, a2, a3], &[n0, n1, n2, n3]) =
        (bytemuck::bytes_of(address), bytemuck::bytes_of(network))
    {
        let bits = u32::from(prefix).min(32);
        let mask = ((0xffff_ffff_u64 << (32 - bits)) as u32).to_be();
        let differ = u32::from_ne_bytes([a0, a1, a2, a3]) ^ u32::from_ne_bytes([n0, n1, n2, n3]);
        return differ & mask == 0;
    }
    let (address, network) = (address.to_wide(), network.to_wide());
    let mut bits = usize::from(prefix);
    for i in 0..16 {
        if bits == 0 {
            return true;
        }
        let take = if bits < 8 { bits } else { 8 };
        let mask = 0xffu8 << (8 - take);
        if (address[i] ^ network[i]) & mask != 0 {
            return false;
        }
        bits -= take;
    }
    true
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

#[cfg(test)]
mod tests {
    use super::within;

    /// `network` with bit `bit` (0: the most significant) flipped.
    fn flipped<const N: usize>(network: [u8; N], bit: usize) -> [u8; N] {
        let mut address = network;
        address[bit / 8] ^= 0x80 >> (bit % 8);
        address
    }

    /// For every prefix length and every bit: an address that differs from the network in
    /// that bit alone is within the prefix exactly when the bit lies past it.
    #[test]
    fn an_address_is_within_a_prefix_when_it_differs_only_past_it() {
        let v4 = [10u8, 244, 0, 0];
        let v6 = [0xfd, 0, 0, 0x10, 0x02, 0x44, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        for prefix in 0..=32u8 {
            assert!(within(&v4, &v4, prefix));
            for bit in 0..32 {
                let expected = bit >= usize::from(prefix);
                let address = flipped(v4, bit);
                assert_eq!(
                    within(&address, &v4, prefix),
                    expected,
                    "v4 /{prefix}, bit {bit}"
                );
            }
        }
        for prefix in 0..=128u8 {
            assert!(within(&v6, &v6, prefix));
            for bit in 0..128 {
                let expected = bit >= usize::from(prefix);
                let address = flipped(v6, bit);
                assert_eq!(
                    within(&address, &v6, prefix),
                    expected,
                    "v6 /{prefix}, bit {bit}"
                );
            }
        }
        // A prefix past the address's length takes all of it.
        assert!(within(&v4, &v4, 64));
        assert!(!within(&flipped(v4, 31), &v4, 64));
    }
}
