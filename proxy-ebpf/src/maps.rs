//! The maps, one set per family, pinned by name under the agent's `--bpf-root`. The names are
//! literals (the `map` macro needs them); `proxy_common::maps::MAPS` declares the same list
//! with shapes, and the loader refuses an object that does not hold every one of them.
//!
//! The load-balancing hashes are preallocated: inserts take no allocation, which halves the
//! cost of programming thousands of Services, for a fixed kernel-memory footprint.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, LruPerCpuHashMap, PerCpuArray, RingBuf},
};
use proxy_common::{
    AffinityKey, AffinityValue, BackendV4, BackendV6, ConntrackKeyV4, ConntrackKeyV6,
    ConntrackValue, FragmentKeyV4, FragmentKeyV6, FragmentValueV4, FragmentValueV6, ReverseNatV4,
    ReverseNatV6, ServiceKeyV4, ServiceKeyV6, ServiceValue, SockRevKeyV4, SockRevKeyV6,
    SockRevValueV4, SockRevValueV6, SockUdpKey, SourceRangeV4, SourceRangeV6, capacity,
    counter::Counter,
};

#[map(name = "lb4_services")]
pub(crate) static SERVICES_V4: HashMap<ServiceKeyV4, ServiceValue> =
    HashMap::pinned(capacity::SERVICES, 0);
#[map(name = "lb6_services")]
pub(crate) static SERVICES_V6: HashMap<ServiceKeyV6, ServiceValue> =
    HashMap::pinned(capacity::SERVICES, 0);

#[map(name = "lb4_backends")]
pub(crate) static BACKENDS_V4: HashMap<u32, BackendV4> = HashMap::pinned(capacity::BACKENDS, 0);
#[map(name = "lb6_backends")]
pub(crate) static BACKENDS_V6: HashMap<u32, BackendV6> = HashMap::pinned(capacity::BACKENDS, 0);

#[map(name = "lb4_reverse_nat")]
pub(crate) static REVERSE_NAT_V4: HashMap<u32, ReverseNatV4> =
    HashMap::pinned(capacity::REVERSE_NAT, 0);
#[map(name = "lb6_reverse_nat")]
pub(crate) static REVERSE_NAT_V6: HashMap<u32, ReverseNatV6> =
    HashMap::pinned(capacity::REVERSE_NAT, 0);

#[map(name = "ct4")]
pub(crate) static CONNTRACK_V4: LruHashMap<ConntrackKeyV4, ConntrackValue> =
    LruHashMap::pinned(capacity::CONNTRACK, 0);
#[map(name = "ct6")]
pub(crate) static CONNTRACK_V6: LruHashMap<ConntrackKeyV6, ConntrackValue> =
    LruHashMap::pinned(capacity::CONNTRACK, 0);

#[map(name = "lb4_sock_rev")]
pub(crate) static SOCK_REV_V4: LruHashMap<SockRevKeyV4, SockRevValueV4> =
    LruHashMap::pinned(capacity::SOCK_REV, 0);
#[map(name = "lb6_sock_rev")]
pub(crate) static SOCK_REV_V6: LruHashMap<SockRevKeyV6, SockRevValueV6> =
    LruHashMap::pinned(capacity::SOCK_REV, 0);

#[map(name = "lb4_sock_udp")]
pub(crate) static SOCK_UDP_V4: LruHashMap<SockUdpKey, u32> =
    LruHashMap::pinned(capacity::SOCK_UDP, 0);
#[map(name = "lb6_sock_udp")]
pub(crate) static SOCK_UDP_V6: LruHashMap<SockUdpKey, u32> =
    LruHashMap::pinned(capacity::SOCK_UDP, 0);

#[map(name = "lb4_affinity")]
pub(crate) static AFFINITY_V4: LruHashMap<AffinityKey, AffinityValue> =
    LruHashMap::pinned(capacity::AFFINITY, 0);
#[map(name = "lb6_affinity")]
pub(crate) static AFFINITY_V6: LruHashMap<AffinityKey, AffinityValue> =
    LruHashMap::pinned(capacity::AFFINITY, 0);

#[map(name = "lb4_fragments")]
pub(crate) static FRAGMENTS_V4: LruHashMap<FragmentKeyV4, FragmentValueV4> =
    LruHashMap::pinned(capacity::FRAGMENTS, 0);
#[map(name = "lb6_fragments")]
pub(crate) static FRAGMENTS_V6: LruHashMap<FragmentKeyV6, FragmentValueV6> =
    LruHashMap::pinned(capacity::FRAGMENTS, 0);

#[map(name = "lb4_src_ranges")]
pub(crate) static SOURCE_RANGES_V4: LpmTrie<SourceRangeV4, u8> =
    LpmTrie::pinned(capacity::SOURCE_RANGES, 0);
#[map(name = "lb6_src_ranges")]
pub(crate) static SOURCE_RANGES_V6: LpmTrie<SourceRangeV6, u8> =
    LpmTrie::pinned(capacity::SOURCE_RANGES, 0);

#[map(name = "snat4_sources")]
pub(crate) static SNAT_SOURCES_V4: HashMap<[u8; 4], u8> =
    HashMap::pinned(capacity::SNAT_SOURCES, 0);
#[map(name = "snat6_sources")]
pub(crate) static SNAT_SOURCES_V6: HashMap<[u8; 16], u8> =
    HashMap::pinned(capacity::SNAT_SOURCES, 0);

#[map(name = "lb_stats")]
pub(crate) static STATS: LruPerCpuHashMap<proxy_common::StatsKey, proxy_common::TrafficStats> =
    LruPerCpuHashMap::pinned(capacity::STATS, 0);

#[map(name = "monitor")]
pub(crate) static MONITOR: RingBuf = RingBuf::pinned(capacity::MONITOR_BYTES, 0);
#[map(name = "monitor_until")]
pub(crate) static MONITOR_UNTIL: Array<u64> = Array::pinned(1, 0);

/// [`proxy_common::map_names::CLUSTER_CLEAR`].
#[map(name = "cluster_clear")]
pub(crate) static CLUSTER_CLEAR: Array<u32> = Array::pinned(2, 0);

/// [`proxy_common::map_names::SOCK_SLOTS`].
#[map(name = "sock_slots")]
pub(crate) static SOCK_SLOTS: Array<u64> = Array::pinned(proxy_common::sock_slots::SLOTS, 0);

/// [`proxy_common::map_names::SNAT_MARKS`].
#[map(name = "snat_marks")]
pub(crate) static SNAT_MARKS: Array<u32> = Array::pinned(proxy_common::snat_marks::SLOTS, 0);

/// [`proxy_common::map_names::CT_RECENT`].
#[map(name = "ct_recent")]
pub(crate) static CT_RECENT: Array<u64> = Array::pinned(proxy_common::conntrack::recent::SLOTS, 0);

#[map(name = "counters")]
pub(crate) static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(Counter::COUNT, 0);

#[map(name = "scratch")]
pub(crate) static SCRATCH: PerCpuArray<crate::scratch::Scratch> = PerCpuArray::pinned(1, 0);
