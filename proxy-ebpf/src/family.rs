//! One trait, two families: lookup, conntrack and NAT are written once and instantiated for
//! IPv4 and IPv6. The binding (address type, map names) is `proxy_common::LbFamily`; this adds
//! what only the kernel side has: the map statics and the family's header layout.
use aya_ebpf::{
    helpers::bpf_csum_diff,
    maps::{HashMap, LpmTrie, LruHashMap},
};
use proxy_common::{
    AffinityKey, AffinityValue, Backend, ConntrackKey, ConntrackValue, FragmentKey, FragmentValue,
    LbFamily, ReverseNat, ServiceKey, ServiceValue, SockRevKey, SockRevValue, SockUdpKey,
    SourceRange, V4, V6,
};

use crate::{
    config,
    ctx::{FieldSize, L4Change, PacketCtx},
    maps,
};

type Addr<F> = <F as LbFamily>::Addr;

pub(crate) trait Family: LbFamily {
    fn services() -> &'static HashMap<ServiceKey<Addr<Self>>, ServiceValue>;
    fn backends() -> &'static HashMap<u32, Backend<Addr<Self>>>;
    fn reverse_nat() -> &'static HashMap<u32, ReverseNat<Addr<Self>>>;
    fn conntrack() -> &'static LruHashMap<ConntrackKey<Addr<Self>>, ConntrackValue>;
    fn sock_rev() -> &'static LruHashMap<SockRevKey<Addr<Self>>, SockRevValue<Addr<Self>>>;
    fn sock_udp() -> &'static LruHashMap<SockUdpKey, u32>;
    fn affinity() -> &'static LruHashMap<AffinityKey, AffinityValue>;
    fn fragments() -> &'static LruHashMap<FragmentKey<Addr<Self>>, FragmentValue<Addr<Self>>>;
    fn source_ranges() -> &'static LpmTrie<SourceRange<Addr<Self>>, u8>;
    fn snat_sources() -> &'static HashMap<Addr<Self>, u8>;

    /// `AF_INET` / `AF_INET6`.
    const AF: u8;
    /// The family's `--cluster-cidr` (address, prefix length; 0: none).
    fn cluster() -> (Addr<Self>, u8);

    /// Offsets of the source and destination addresses in the IP header.
    const SOURCE_OFFSET: usize;
    const DESTINATION_OFFSET: usize;

    /// Writes `new` over the address at `at` (which held `old`) and fixes every checksum that
    /// covers it: the IPv4 header's, and the L4 one at `l4_check` (the pseudo header).
    fn rewrite_address<C: PacketCtx>(
        ctx: &C,
        l3_offset: usize,
        at: usize,
        old: Addr<Self>,
        new: Addr<Self>,
        l4_check: Option<(usize, L4Change)>,
    ) -> Result<(), i64>;
}

const IPV4_CHECK_OFFSET: usize = 10;

macro_rules! maps_of {
    ($services:path, $backends:path, $reverse_nat:path, $conntrack:path, $sock_rev:path,
     $sock_udp:path, $affinity:path, $fragments:path, $source_ranges:path,
     $snat_sources:path) => {
        #[inline(always)]
        fn services() -> &'static HashMap<ServiceKey<Addr<Self>>, ServiceValue> {
            &$services
        }
        #[inline(always)]
        fn backends() -> &'static HashMap<u32, Backend<Addr<Self>>> {
            &$backends
        }
        #[inline(always)]
        fn reverse_nat() -> &'static HashMap<u32, ReverseNat<Addr<Self>>> {
            &$reverse_nat
        }
        #[inline(always)]
        fn conntrack() -> &'static LruHashMap<ConntrackKey<Addr<Self>>, ConntrackValue> {
            &$conntrack
        }
        #[inline(always)]
        fn sock_rev() -> &'static LruHashMap<SockRevKey<Addr<Self>>, SockRevValue<Addr<Self>>> {
            &$sock_rev
        }
        #[inline(always)]
        fn sock_udp() -> &'static LruHashMap<SockUdpKey, u32> {
            &$sock_udp
        }
        #[inline(always)]
        fn affinity() -> &'static LruHashMap<AffinityKey, AffinityValue> {
            &$affinity
        }
        #[inline(always)]
        fn fragments() -> &'static LruHashMap<FragmentKey<Addr<Self>>, FragmentValue<Addr<Self>>> {
            &$fragments
        }
        #[inline(always)]
        fn source_ranges() -> &'static LpmTrie<SourceRange<Addr<Self>>, u8> {
            &$source_ranges
        }
        #[inline(always)]
        fn snat_sources() -> &'static HashMap<Addr<Self>, u8> {
            &$snat_sources
        }
    };
}

impl Family for V4 {
    maps_of!(
        maps::SERVICES_V4,
        maps::BACKENDS_V4,
        maps::REVERSE_NAT_V4,
        maps::CONNTRACK_V4,
        maps::SOCK_REV_V4,
        maps::SOCK_UDP_V4,
        maps::AFFINITY_V4,
        maps::FRAGMENTS_V4,
        maps::SOURCE_RANGES_V4,
        maps::SNAT_SOURCES_V4
    );

    const AF: u8 = 2;
    #[inline(always)]
    fn cluster() -> ([u8; 4], u8) {
        (
            config::field!(cluster_v4),
            config::field!(cluster_v4_prefix),
        )
    }

    const SOURCE_OFFSET: usize = 12;
    const DESTINATION_OFFSET: usize = 16;

    #[inline(always)]
    fn rewrite_address<C: PacketCtx>(
        ctx: &C,
        l3_offset: usize,
        at: usize,
        old: [u8; 4],
        new: [u8; 4],
        l4_check: Option<(usize, L4Change)>,
    ) -> Result<(), i64> {
        let (from, to) = (u32::from_ne_bytes(old), u32::from_ne_bytes(new));
        if let Some((check, change)) = l4_check {
            ctx.l4_csum_replace(check, from, to, FieldSize::Four, change)?;
        }
        ctx.l3_csum_replace(l3_offset + IPV4_CHECK_OFFSET, from, to, FieldSize::Four)?;
        ctx.store(at, &new)
    }
}

impl Family for V6 {
    maps_of!(
        maps::SERVICES_V6,
        maps::BACKENDS_V6,
        maps::REVERSE_NAT_V6,
        maps::CONNTRACK_V6,
        maps::SOCK_REV_V6,
        maps::SOCK_UDP_V6,
        maps::AFFINITY_V6,
        maps::FRAGMENTS_V6,
        maps::SOURCE_RANGES_V6,
        maps::SNAT_SOURCES_V6
    );

    const AF: u8 = 10;
    #[inline(always)]
    fn cluster() -> ([u8; 16], u8) {
        (
            config::field!(cluster_v6),
            config::field!(cluster_v6_prefix),
        )
    }

    const SOURCE_OFFSET: usize = 8;
    const DESTINATION_OFFSET: usize = 24;

    #[inline(always)]
    fn rewrite_address<C: PacketCtx>(
        ctx: &C,
        _l3_offset: usize,
        at: usize,
        mut old: [u8; 16],
        mut new: [u8; 16],
        l4_check: Option<(usize, L4Change)>,
    ) -> Result<(), i64> {
        // IPv6 has no header checksum; the L4 one covers the address through the pseudo header.
        if let Some((check, change)) = l4_check {
            // SAFETY: both buffers are 16 bytes on our stack.
            let diff = unsafe {
                bpf_csum_diff(old.as_mut_ptr().cast(), 16, new.as_mut_ptr().cast(), 16, 0)
            };
            if diff < 0 {
                return Err(diff);
            }
            ctx.l4_csum_add(check, diff as u32, change)?;
        }
        ctx.store(at, &new)
    }
}
