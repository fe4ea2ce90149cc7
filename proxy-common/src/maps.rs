//! The map list, declared once: every map the object must hold, with its family, kind, shape
//! and default capacity. The loader checks the object against it; `twinstack bpf map list`,
//! the metrics and the benchmark read it instead of keeping lists of their own.
use core::mem::size_of;

use crate::{
    AffinityKey, AffinityValue, BackendV4, BackendV6, ConntrackKeyV4, ConntrackKeyV6,
    ConntrackValue, FragmentKeyV4, FragmentKeyV6, FragmentValueV4, FragmentValueV6, ReverseNatV4,
    ReverseNatV6, ServiceKeyV4, ServiceKeyV6, ServiceValue, SockRevKeyV4, SockRevKeyV6,
    SockRevValueV4, SockRevValueV6, SockUdpKey, SourceRangeV4, SourceRangeV6, capacity,
    counter::Counter, map_names,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapKind {
    Hash,
    LruHash,
    PerCpuArray,
    /// A longest-prefix-match trie (keys carry their prefix length first).
    LpmTrie,
    Array,
    /// A per-CPU LRU hash: each CPU's value apart, summed by the reader.
    LruPerCpuHash,
    /// A ring buffer: no keys or values, `capacity` is its size in bytes.
    RingBuf,
}

/// The family a map belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum MapFamily {
    V4,
    V6,
}

#[derive(Clone, Copy, Debug)]
pub struct MapSpec {
    pub name: &'static str,
    /// `None` for a map both families share.
    pub family: Option<MapFamily>,
    pub kind: MapKind,
    pub key_size: u32,
    pub value_size: u32,
    /// Default `max_entries` (what the object declares).
    pub capacity: u32,
}

const fn spec<K, V>(
    name: &'static str,
    family: Option<MapFamily>,
    kind: MapKind,
    capacity: u32,
) -> MapSpec {
    MapSpec {
        name,
        family,
        kind,
        key_size: size_of::<K>() as u32,
        value_size: size_of::<V>() as u32,
        capacity,
    }
}

use MapFamily::{V4, V6};
use MapKind::{Array, Hash, LpmTrie, LruHash, LruPerCpuHash, PerCpuArray, RingBuf};

pub const MAPS: &[MapSpec] = &[
    spec::<ServiceKeyV4, ServiceValue>(map_names::SERVICES_V4, Some(V4), Hash, capacity::SERVICES),
    spec::<u32, BackendV4>(map_names::BACKENDS_V4, Some(V4), Hash, capacity::BACKENDS),
    spec::<u32, ReverseNatV4>(
        map_names::REVERSE_NAT_V4,
        Some(V4),
        Hash,
        capacity::REVERSE_NAT,
    ),
    spec::<ConntrackKeyV4, ConntrackValue>(
        map_names::CONNTRACK_V4,
        Some(V4),
        LruHash,
        capacity::CONNTRACK,
    ),
    spec::<ServiceKeyV6, ServiceValue>(map_names::SERVICES_V6, Some(V6), Hash, capacity::SERVICES),
    spec::<u32, BackendV6>(map_names::BACKENDS_V6, Some(V6), Hash, capacity::BACKENDS),
    spec::<u32, ReverseNatV6>(
        map_names::REVERSE_NAT_V6,
        Some(V6),
        Hash,
        capacity::REVERSE_NAT,
    ),
    spec::<ConntrackKeyV6, ConntrackValue>(
        map_names::CONNTRACK_V6,
        Some(V6),
        LruHash,
        capacity::CONNTRACK,
    ),
    spec::<SockRevKeyV4, SockRevValueV4>(
        map_names::SOCK_REV_V4,
        Some(V4),
        LruHash,
        capacity::SOCK_REV,
    ),
    spec::<SockRevKeyV6, SockRevValueV6>(
        map_names::SOCK_REV_V6,
        Some(V6),
        LruHash,
        capacity::SOCK_REV,
    ),
    spec::<SockUdpKey, u32>(
        map_names::SOCK_UDP_V4,
        Some(V4),
        LruHash,
        capacity::SOCK_UDP,
    ),
    spec::<SockUdpKey, u32>(
        map_names::SOCK_UDP_V6,
        Some(V6),
        LruHash,
        capacity::SOCK_UDP,
    ),
    spec::<AffinityKey, AffinityValue>(
        map_names::AFFINITY_V4,
        Some(V4),
        LruHash,
        capacity::AFFINITY,
    ),
    spec::<AffinityKey, AffinityValue>(
        map_names::AFFINITY_V6,
        Some(V6),
        LruHash,
        capacity::AFFINITY,
    ),
    spec::<FragmentKeyV4, FragmentValueV4>(
        map_names::FRAGMENTS_V4,
        Some(V4),
        LruHash,
        capacity::FRAGMENTS,
    ),
    spec::<FragmentKeyV6, FragmentValueV6>(
        map_names::FRAGMENTS_V6,
        Some(V6),
        LruHash,
        capacity::FRAGMENTS,
    ),
    // LPM keys: a 4-byte prefix length, then the data.
    spec::<(u32, SourceRangeV4), u8>(
        map_names::SOURCE_RANGES_V4,
        Some(V4),
        LpmTrie,
        capacity::SOURCE_RANGES,
    ),
    spec::<(u32, SourceRangeV6), u8>(
        map_names::SOURCE_RANGES_V6,
        Some(V6),
        LpmTrie,
        capacity::SOURCE_RANGES,
    ),
    spec::<[u8; 4], u8>(
        map_names::SNAT_SOURCES_V4,
        Some(V4),
        Hash,
        capacity::SNAT_SOURCES,
    ),
    spec::<[u8; 16], u8>(
        map_names::SNAT_SOURCES_V6,
        Some(V6),
        Hash,
        capacity::SNAT_SOURCES,
    ),
    spec::<u32, u64>(map_names::COUNTERS, None, PerCpuArray, Counter::COUNT),
    spec::<crate::StatsKey, crate::TrafficStats>(
        map_names::STATS,
        None,
        LruPerCpuHash,
        capacity::STATS,
    ),
    spec::<(), ()>(map_names::MONITOR, None, RingBuf, capacity::MONITOR_BYTES),
    spec::<u32, u64>(map_names::MONITOR_UNTIL, None, Array, 1),
    spec::<u32, [u8; crate::SCRATCH_SIZE]>(map_names::SCRATCH, None, PerCpuArray, 1),
    spec::<u32, u32>(map_names::CLUSTER_CLEAR, None, Array, 2),
    spec::<u32, u64>(
        map_names::CT_RECENT,
        None,
        Array,
        crate::conntrack::recent::SLOTS,
    ),
    spec::<u32, u64>(map_names::SOCK_SLOTS, None, Array, crate::sock_slots::SLOTS),
    spec::<u32, u32>(map_names::SNAT_MARKS, None, Array, crate::snat_marks::SLOTS),
];
