//! Everything that crosses the kernel boundary, declared once: map keys and values, map and
//! program names, each family's binding ([`family`]), the map list ([`maps::MAPS`]), the
//! program table ([`programs::PROGRAMS`]), the datapath counters ([`counter::Counter`]) and the
//! load-time configuration ([`config::DatapathConfig`]).
//!
//! Layout rules: `#[repr(C)]`, explicit padding, sizes asserted at compile time. Addresses and
//! ports are kept in network byte order exactly as they appear in packets; the agent converts at
//! one boundary (`proxy_userspace::maps::codec`), through the constructors here.
#![no_std]

pub mod config;
pub mod conntrack;
pub mod counter;
pub mod family;
pub mod maps;
pub mod programs;
pub mod sctp;

use bytemuck::{Pod, Zeroable};

pub use family::{LbFamily, RawAddress, V4, V6};

/// Bumped whenever a map's key, value or meaning changes. Pins live under
/// `<bpf-root>/v<LAYOUT_VERSION>/` so a new agent never misreads an old map.
pub const LAYOUT_VERSION: u32 = 2;

/// Bytes of the kernel programs' per-CPU scratch value ([`map_names::SCRATCH`]).
pub const SCRATCH_SIZE: usize = 320;

/// Map names (also the pin file names). At most 15 bytes: the kernel's object name limit.
/// Each is declared here once; [`maps::MAPS`] lists them with their shapes and the loader
/// checks the object holds every one.
pub mod map_names {
    pub const SERVICES_V4: &str = "lb4_services";
    pub const SERVICES_V6: &str = "lb6_services";
    pub const BACKENDS_V4: &str = "lb4_backends";
    pub const BACKENDS_V6: &str = "lb6_backends";
    pub const REVERSE_NAT_V4: &str = "lb4_reverse_nat";
    pub const REVERSE_NAT_V6: &str = "lb6_reverse_nat";
    pub const CONNTRACK_V4: &str = "ct4";
    pub const CONNTRACK_V6: &str = "ct6";
    pub const SOCK_REV_V4: &str = "lb4_sock_rev";
    pub const SOCK_REV_V6: &str = "lb6_sock_rev";
    pub const SOCK_UDP_V4: &str = "lb4_sock_udp";
    pub const SOCK_UDP_V6: &str = "lb6_sock_udp";
    pub const AFFINITY_V4: &str = "lb4_affinity";
    pub const AFFINITY_V6: &str = "lb6_affinity";
    pub const FRAGMENTS_V4: &str = "lb4_fragments";
    pub const FRAGMENTS_V6: &str = "lb6_fragments";
    pub const SOURCE_RANGES_V4: &str = "lb4_src_ranges";
    pub const SOURCE_RANGES_V6: &str = "lb6_src_ranges";
    /// The node addresses masqueraded flows have left from: a backend's reply is looked up in
    /// conntrack only when it is addressed to one of them.
    pub const SNAT_SOURCES_V4: &str = "snat4_sources";
    pub const SNAT_SOURCES_V6: &str = "snat6_sources";
    /// Which addresses may be masquerade sources, by slot: [`super::snat_marks`].
    pub const SNAT_MARKS: &str = "snat_marks";
    pub const COUNTERS: &str = "counters";
    /// Traffic per frontend and per backend ([`crate::StatsKey`] → [`crate::TrafficStats`],
    /// per CPU, LRU).
    pub const STATS: &str = "lb_stats";
    /// Datapath events for `twinstack bpf monitor` (a ring buffer of [`crate::MonitorEvent`]).
    pub const MONITOR: &str = "monitor";
    /// Until when (`bpf_ktime_get_ns`) somebody reads [`MONITOR`]: one `u64`, refreshed by
    /// the reader; past it, the datapath emits nothing.
    pub const MONITOR_UNTIL: &str = "monitor_until";
    /// Per-CPU scratch memory of the kernel programs (their stack is 512 bytes).
    pub const SCRATCH: &str = "scratch";
    /// Whether each family's `--cluster-cidr` is clear of frontends: a `u32` per family
    /// (index [`super::cluster_clear::V4`] / [`super::cluster_clear::V6`]), 1 when no frontend
    /// address lies inside it, written by the agent after every sync. Then a packet to a pod
    /// address is no Service's, and the TC programs pass it without a service lookup; 0 (what
    /// a new map holds) keeps the lookup.
    pub const CLUSTER_CLEAR: &str = "cluster_clear";
    /// When flows last moved, by reply address: [`super::conntrack::recent`].
    pub const CT_RECENT: &str = "ct_recent";
    /// How many reverse entries connected sockets hold, by socket: [`super::sock_slots`].
    pub const SOCK_SLOTS: &str = "sock_slots";
}

/// How many entries of the socket reverse maps (`lb{4,6}_sock_rev`) connected sockets made, by
/// socket cookie, in [`map_names::SOCK_SLOTS`]: an array of [`sock_slots::SLOTS`] counts, a
/// socket's given by [`sock_slots::slot`]. A connect that writes a socket's entry adds one; a
/// close (`cgroup/sock_release`) that removes it takes one away. A closing socket whose slot
/// counts none made no entry (it connected to no Service: most sockets, pod to pod) and is
/// spared the removal, a lookup in a large hash that is cold for a socket never seen. Slots are
/// shared (by the cookie's low bits): a neighbour's entry only costs the removal; so does a
/// count above the entries (one the LRU evicted, an UDP socket connected again elsewhere). The
/// counts are not atomic: a race of two CPUs on one slot may leave a count too low, and an
/// entry to age out of the LRU map as unconnected sockets' entries do.
pub mod sock_slots {
    /// A power of two: 256 KiB of `u64` counts.
    pub const SLOTS: u32 = 32_768;

    /// The slot of the socket `cookie`: its low bits. Cookies are handed out in sequence (in
    /// per-CPU runs), so sockets made one after the other take slots side by side: a page of
    /// the map serves 512 sockets in a row, and a connect or a close touches memory its
    /// neighbours just did. (A hash that scattered them cost each a TLB and a cache miss,
    /// ~100 ns in a VM, more than the removal it spares.) Two live sockets share a slot only
    /// when 32,768 others were made between them.
    #[inline(always)]
    pub fn slot(cookie: u64) -> u32 {
        (cookie as u32) & (SLOTS - 1)
    }

    #[cfg(test)]
    mod tests {
        use super::{SLOTS, slot};

        #[test]
        fn cookies_in_sequence_take_slots_side_by_side() {
            let first = 0x1_0000_7ff0_u64;
            for (i, cookie) in (first..first + u64::from(SLOTS)).enumerate() {
                let expected = (slot(first) + i as u32) % SLOTS;
                assert_eq!(slot(cookie), expected, "cookie {cookie:#x}");
            }
            assert_eq!(
                slot(first + u64::from(SLOTS)),
                slot(first),
                "then around again"
            );
        }
    }
}

/// The slot of `address` in an array of `2^bits` slots: Fibonacci hashing of its folded
/// 32-bit words (an IPv4 address is one word; an IPv6 address's four are XORed).
#[inline(always)]
pub fn address_slot<A: RawAddress>(address: A, bits: u32) -> u32 {
    let bytes = bytemuck::bytes_of(&address);
    let mut folded = 0u32;
    let mut i = 0;
    while i + 4 <= bytes.len() {
        folded ^= u32::from_ne_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        i += 4;
    }
    folded.wrapping_mul(0x9e37_79b9) >> (32 - bits)
}

/// Marks of the masquerade sources ([`map_names::SNAT_SOURCES_V4`] / `_V6`), in
/// [`map_names::SNAT_MARKS`]: an array of [`snat_marks::SLOTS`] `u32`s, both families', an
/// address's at [`snat_marks::slot`], nonzero once the address is a source. A packet a pod
/// sends to an unmarked address is no reply to a masqueraded flow: one array read instead of
/// the lookup in the sources' hash, for every pod-to-pod packet to a port of
/// `--masquerade-ports` (a target port such as 8080). A mark is only ever stored, never
/// cleared, so racing writers lose none; a collision only brings the lookup back.
pub mod snat_marks {
    use crate::RawAddress;

    /// A power of two: 8 KiB (array slots take 8 bytes), for the few addresses of a node.
    pub const SLOTS: u32 = 1_024;
    const SLOT_BITS: u32 = SLOTS.trailing_zeros();
    /// What a marked slot holds.
    pub const MARKED: u32 = 1;

    /// The slot of `address` ([`crate::address_slot`]).
    #[inline(always)]
    pub fn slot<A: RawAddress>(address: A) -> u32 {
        crate::address_slot(address, SLOT_BITS)
    }
}

/// The entries of [`map_names::CLUSTER_CLEAR`].
pub mod cluster_clear {
    pub const V4: u32 = 0;
    pub const V6: u32 = 1;
    /// The value that says the family's cluster CIDR holds no frontend.
    pub const CLEAR: u32 = 1;
}

/// Default capacities; the agent may override them at load time.
pub mod capacity {
    pub const SERVICES: u32 = 262_144;
    pub const BACKENDS: u32 = 131_072;
    pub const REVERSE_NAT: u32 = 65_536;
    pub const CONNTRACK: u32 = 262_144;
    /// Translated sockets whose replies or peer name the socket hooks restore (Cilium's
    /// default too).
    pub const SOCK_REV: u32 = 262_144;
    /// Unconnected UDP sockets' chosen backend per frontend.
    pub const SOCK_UDP: u32 = 65_536;
    /// `sessionAffinity: ClientIP` bindings (client, frontend) → backend.
    pub const AFFINITY: u32 = 65_536;
    /// Fragmented datagrams of translated flows in flight (each entry lives until the LRU
    /// needs its room: a datagram's fragments arrive within moments).
    pub const FRAGMENTS: u32 = 8_192;
    /// `loadBalancerSourceRanges` entries, every Service's together.
    pub const SOURCE_RANGES: u32 = 16_384;
    /// Node addresses masqueraded flows leave from (every local address is recorded at start).
    pub const SNAT_SOURCES: u32 = 4_096;
    /// Frontends and backends whose traffic is counted (per CPU; the least recently counted
    /// make room).
    pub const STATS: u32 = 32_768;
    /// Bytes of the monitor's ring buffer (a power of two, pages).
    pub const MONITOR_BYTES: u32 = 1 << 18;
}

/// What a [`MonitorEvent`] reports.
pub mod monitor_kind {
    /// A new flow and the backend it was given (TC or XDP).
    pub const NEW_FLOW: u8 = 1;
    /// A packet to a frontend with no usable backend (rejected, or passed when no reject
    /// could answer it).
    pub const NO_BACKEND: u8 = 2;
    /// A packet dropped on purpose ([`MonitorEvent::counter`] says why).
    pub const DROP: u8 = 3;
    /// A reply matched a flow whose frontend is gone: passed untranslated.
    pub const REVERSE_NAT_MISS: u8 = 4;
}

/// Which hook saw a [`MonitorEvent`].
pub mod monitor_hook {
    /// A TC program (a pod interface or a device).
    pub const TC: u8 = 1;
    pub const XDP: u8 = 2;
}

/// One datapath event, as `twinstack bpf monitor` reads it from [`map_names::MONITOR`]. The
/// packet's addresses as it arrived (client → frontend, or backend → client for a reverse-NAT
/// miss); ports in network order; IPv4 addresses in the first 4 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct MonitorEvent {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC).
    pub time_ns: u64,
    /// [`monitor_kind`].
    pub kind: u8,
    /// 4 or 6.
    pub family: u8,
    pub protocol: u8,
    /// The [`counter::Counter`] index of the packet's outcome.
    pub counter: u8,
    /// [`monitor_hook`].
    pub hook: u8,
    pub _pad: [u8; 3],
    pub source: [u8; 16],
    pub destination: [u8; 16],
    /// A new flow's backend (zero otherwise).
    pub backend: [u8; 16],
    pub source_port: u16,
    pub destination_port: u16,
    pub backend_port: u16,
    pub _pad2: u16,
    /// The frontend's reverse-NAT id (0: none).
    pub rev_nat_id: u32,
    /// A new flow's backend id (0 otherwise).
    pub backend_id: u32,
}

const _: () = assert!(core::mem::size_of::<MonitorEvent>() == 80);

/// IANA protocol numbers used in keys.
pub mod protocol {
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const SCTP: u8 = 132;
}

/// Service scope in [`ServiceKey::scope`] (Cilium's `LB_LOOKUP_SCOPE_*`). Every frontend has
/// an external entry; one whose external traffic policy differs from its internal one also has
/// an internal entry ([`service_flags::TWO_SCOPES`]), which traffic from inside the cluster uses.
pub mod scope {
    pub const EXTERNAL: u8 = 0;
    pub const INTERNAL: u8 = 1;
}

/// Bits of [`ServiceValue::flags`] (slot 0 only). Only the codec (`maps::codec`) and the
/// kernel programs read these; the rest of the agent speaks in typed kinds and policies.
pub mod service_flags {
    /// The frontend is a cluster IP.
    pub const CLUSTER_IP: u16 = 1 << 0;
    /// The frontend is a NodePort on one of the node's NodePort addresses.
    pub const NODE_PORT: u16 = 1 << 1;
    /// The frontend is one of `spec.externalIPs`.
    pub const EXTERNAL_IP: u16 = 1 << 2;
    /// The frontend is a LoadBalancer ingress IP.
    pub const LOAD_BALANCER: u16 = 1 << 3;
    /// This entry's backends are this node's endpoints only (a `Local` traffic policy): with
    /// none, traffic is dropped rather than rejected, as kube-proxy does.
    pub const LOCAL: u16 = 1 << 4;
    /// The external entry has an internal twin (scope [`super::scope::INTERNAL`]) for traffic
    /// from inside the cluster.
    pub const TWO_SCOPES: u16 = 1 << 5;
    /// `loadBalancerSourceRanges` apply: only clients in this frontend's entries of the
    /// source-range map are served, the others dropped.
    pub const SOURCE_RANGES: u16 = 1 << 6;
}

/// [`Backend`] states.
pub mod backend_state {
    pub const ACTIVE: u8 = 0;
    pub const TERMINATING: u8 = 1;
}

/// [`ConntrackKey::direction`].
pub mod direction {
    /// Client → service, as the client sent it (before DNAT).
    pub const FORWARD: u8 = 0;
    /// Backend → client, as the backend sent it (before reverse NAT).
    pub const REVERSE: u8 = 1;
}

/// Bits of [`ConntrackValue::flags`].
pub mod ct_flags {
    pub const SEEN_SYN: u8 = 1 << 0;
    pub const SEEN_FIN: u8 = 1 << 1;
    pub const SEEN_RST: u8 = 1 << 2;
    /// The backend has answered: set in both entries by the first reply.
    pub const SEEN_REPLY: u8 = 1 << 3;
    /// The flow is masqueraded: its source is SNATed to a node address (`nat_address`).
    pub const SNAT: u8 = 1 << 4;
    /// In a masqueraded flow's reverse entry: its client sent a FIN. With the backend's own
    /// FIN (`SEEN_FIN` there), or a reset on either side, the flow is over and a new flow may
    /// take its port before the entry expires, as a TCP TIME_WAIT tuple may be reused.
    pub const PEER_FIN: u8 = 1 << 5;
    /// In a masqueraded flow's reverse entry: its client sent a reset.
    pub const PEER_RST: u8 = 1 << 6;
}

/// Key of the services maps. Slot 0 is the service entry; slots `1..=count` name backends.
/// `A` is the raw address (`[u8; 4]` or `[u8; 16]`, see [`RawAddress`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey<A> {
    pub address: A,
    /// Network byte order.
    pub port: u16,
    pub slot: u16,
    pub protocol: u8,
    /// [`scope`].
    pub scope: u8,
    pub _pad: [u8; 2],
}

impl<A: RawAddress> ServiceKey<A> {
    /// `port` in host order (as in the API); stored in network order.
    pub fn new(address: A::Ip, port: u16, protocol: u8, scope: u8, slot: u16) -> Self {
        Self::raw(A::from_ip(address), port.to_be(), protocol, scope, slot)
    }

    /// From packet bytes: `port` already in network order.
    #[inline(always)]
    pub fn raw(address: A, port: u16, protocol: u8, scope: u8, slot: u16) -> Self {
        Self {
            address,
            port,
            slot,
            protocol,
            scope,
            _pad: [0; 2],
        }
    }

    /// The same frontend and scope, another slot.
    #[inline(always)]
    pub fn with_slot(&self, slot: u16) -> Self {
        Self { slot, ..*self }
    }
}

/// Value of the services maps (both families).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct ServiceValue {
    /// Slot > 0: the backend this slot names. Slot 0: unused (0).
    pub backend_id: u32,
    /// The frontend's reverse-NAT id (all slots carry it).
    pub rev_nat_id: u32,
    /// Slot 0: number of backend slots.
    pub count: u16,
    /// Slot 0: [`service_flags`].
    pub flags: u16,
    /// Slot 0: session affinity timeout in seconds (0 = no affinity).
    pub affinity_timeout: u32,
}

impl ServiceValue {
    /// A backend slot's value.
    pub const fn slot(backend_id: u32, rev_nat_id: u32) -> Self {
        Self {
            backend_id,
            rev_nat_id,
            count: 0,
            flags: 0,
            affinity_timeout: 0,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Backend<A> {
    pub address: A,
    /// Network byte order.
    pub port: u16,
    pub protocol: u8,
    /// [`backend_state`].
    pub state: u8,
    pub zone: u8,
    pub _pad: [u8; 3],
}

impl<A: RawAddress> Backend<A> {
    /// `port` in host order.
    pub fn new(address: A::Ip, port: u16, protocol: u8, state: u8) -> Self {
        Self {
            address: A::from_ip(address),
            port: port.to_be(),
            protocol,
            state,
            zone: 0,
            _pad: [0; 3],
        }
    }
}

/// Reverse NAT: what a reply's source is rewritten to (the frontend).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReverseNat<A> {
    pub address: A,
    /// Network byte order.
    pub port: u16,
    pub _pad: [u8; 2],
}

impl<A: RawAddress> ReverseNat<A> {
    /// `port` in host order.
    pub fn new(address: A::Ip, port: u16) -> Self {
        Self {
            address: A::from_ip(address),
            port: port.to_be(),
            _pad: [0; 2],
        }
    }
}

/// Conntrack key: the 5-tuple as seen on the wire, plus the direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConntrackKey<A> {
    pub source: A,
    pub destination: A,
    /// Network byte order.
    pub source_port: u16,
    /// Network byte order.
    pub destination_port: u16,
    pub protocol: u8,
    /// [`direction`].
    pub direction: u8,
    pub _pad: [u8; 2],
}

impl<A: Copy> ConntrackKey<A> {
    /// From packet fields: (address, port) pairs with ports in network order.
    #[inline(always)]
    pub fn raw(source: (A, u16), destination: (A, u16), protocol: u8, direction: u8) -> Self {
        Self {
            source: source.0,
            destination: destination.0,
            source_port: source.1,
            destination_port: destination.1,
            protocol,
            direction,
            _pad: [0; 2],
        }
    }
}

/// Key of the socket reverse-NAT maps: a socket (its cookie) and the backend it was sent to.
/// What `recvmsg` and `getpeername` see is looked up here to show the frontend instead.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockRevKey<A> {
    /// `bpf_get_socket_cookie`, native order (bytes, to keep the key 2-aligned and unpadded).
    pub cookie: [u8; 8],
    pub address: A,
    /// Network byte order.
    pub port: u16,
    pub _pad: [u8; 2],
}

impl<A: Copy> SockRevKey<A> {
    #[inline(always)]
    pub fn new(cookie: u64, address: A, port: u16) -> Self {
        Self {
            cookie: cookie.to_ne_bytes(),
            address,
            port,
            _pad: [0; 2],
        }
    }
}

/// Value of the socket reverse-NAT maps: the frontend the socket addressed.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockRevValue<A> {
    pub address: A,
    /// Network byte order.
    pub port: u16,
    pub _pad: [u8; 2],
    /// The frontend entry's reverse-NAT id when the socket was translated: a different id now
    /// means the entry is stale.
    pub rev_nat_id: u32,
}

/// What [`AffinityKey::client`] holds.
pub mod affinity_by {
    /// The client's address (the TC path; IPv4 in the first 4 bytes).
    pub const ADDRESS: u8 = 0;
    /// The client's network namespace cookie (the socket path: no source address exists at
    /// `connect()`; one pod is one namespace, as it is one address).
    pub const NETNS: u8 = 1;
}

/// Key of the fragment maps: one fragmented IP datagram of a translated flow, as each of its
/// fragments carries it (the fragments after the first have no ports).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FragmentKey<A> {
    pub source: A,
    pub destination: A,
    /// The IPv4 identification (16 bits) or the IPv6 fragment header's.
    pub id: u32,
    pub protocol: u8,
    pub _pad: [u8; 3],
}

impl<A> FragmentKey<A> {
    #[inline(always)]
    pub fn new(source: A, destination: A, id: u32, protocol: u8) -> Self {
        Self {
            source,
            destination,
            id,
            protocol,
            _pad: [0; 3],
        }
    }
}

/// What the fragments after the first of a datagram get: the address their first fragment's
/// translation wrote, on that side ([`fragment_side`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FragmentValue<A> {
    pub address: A,
    /// [`fragment_side`].
    pub side: u8,
    pub _pad: [u8; 3],
}

/// Which address of a fragment [`FragmentValue::address`] replaces.
pub mod fragment_side {
    /// The destination: a client's datagram DNATed to a backend.
    pub const DESTINATION: u8 = 0;
    /// The source: a backend's reply given its frontend back.
    pub const SOURCE: u8 = 1;
}

pub type FragmentKeyV4 = FragmentKey<[u8; 4]>;
pub type FragmentKeyV6 = FragmentKey<[u8; 16]>;
pub type FragmentValueV4 = FragmentValue<[u8; 4]>;
pub type FragmentValueV6 = FragmentValue<[u8; 16]>;

/// Data of a source-range (LPM trie) key: a frontend and an allowed client prefix. Its
/// prefix length is [`SourceRange::FRONTEND_BITS`] plus the client prefix's.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceRange<A> {
    pub frontend: A,
    /// Network byte order.
    pub port: u16,
    pub protocol: u8,
    pub _pad: u8,
    pub client: A,
}

impl<A: RawAddress> SourceRange<A> {
    /// The bits of the key that name the frontend (always matched whole).
    pub const FRONTEND_BITS: u32 = (core::mem::size_of::<A>() as u32 + 4) * 8;

    /// `port` in network order.
    #[inline(always)]
    pub fn new(frontend: A, port: u16, protocol: u8, client: A) -> Self {
        Self {
            frontend,
            port,
            protocol,
            _pad: 0,
            client,
        }
    }
}

pub type SourceRangeV4 = SourceRange<[u8; 4]>;
pub type SourceRangeV6 = SourceRange<[u8; 16]>;

/// Key of the session-affinity maps: a client and a frontend entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Pod, Zeroable)]
pub struct AffinityKey {
    /// The client's address, or its netns cookie in the first 8 bytes ([`affinity_by`]).
    pub client: [u8; 16],
    pub rev_nat_id: u32,
    /// [`affinity_by`].
    pub by: u8,
    pub _pad: [u8; 3],
}

impl AffinityKey {
    #[inline(always)]
    pub fn new(client: [u8; 16], by: u8, rev_nat_id: u32) -> Self {
        Self {
            client,
            rev_nat_id,
            by,
            _pad: [0; 3],
        }
    }
}

/// Value of the session-affinity maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct AffinityValue {
    /// `bpf_ktime_get_ns()` of the last new connection that used it.
    pub last_used: u64,
    pub backend_id: u32,
    pub _pad: [u8; 4],
}

/// Key of the UDP stickiness maps: an unconnected UDP socket and a frontend entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct SockUdpKey {
    pub cookie: [u8; 8],
    pub rev_nat_id: u32,
}

impl SockUdpKey {
    #[inline(always)]
    pub fn new(cookie: u64, rev_nat_id: u32) -> Self {
        Self {
            cookie: cookie.to_ne_bytes(),
            rev_nat_id,
        }
    }
}

pub type ServiceKeyV4 = ServiceKey<[u8; 4]>;
pub type ServiceKeyV6 = ServiceKey<[u8; 16]>;
pub type BackendV4 = Backend<[u8; 4]>;
pub type BackendV6 = Backend<[u8; 16]>;
pub type ReverseNatV4 = ReverseNat<[u8; 4]>;
pub type ReverseNatV6 = ReverseNat<[u8; 16]>;
pub type ConntrackKeyV4 = ConntrackKey<[u8; 4]>;
pub type ConntrackKeyV6 = ConntrackKey<[u8; 16]>;
pub type SockRevKeyV4 = SockRevKey<[u8; 4]>;
pub type SockRevKeyV6 = SockRevKey<[u8; 16]>;
pub type SockRevValueV4 = SockRevValue<[u8; 4]>;
pub type SockRevValueV6 = SockRevValue<[u8; 16]>;

/// Conntrack value (both families and directions).
///
/// The backend's address is kept in the entry, like a netfilter NAT binding: a TCP connection
/// stays on its backend for its whole life even after the backend leaves the Service (as with
/// kube-proxy); UDP flows, and new connections on a reused tuple, are re-balanced instead.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct ConntrackValue {
    /// `bpf_ktime_get_ns()` of the last packet.
    pub last_seen: u64,
    /// The backend the flow is pinned to.
    pub backend_id: u32,
    /// The frontend the flow was addressed to.
    pub rev_nat_id: u32,
    /// The backend's address (IPv4 in the first 4 bytes).
    pub backend_address: [u8; 16],
    /// The backend's port, network byte order.
    pub backend_port: u16,
    /// [`ct_flags`], accumulated: each entry its own direction's TCP flags (the forward entry
    /// the client's, the reverse entry the backend's), and `SEEN_REPLY` in both.
    pub flags: u8,
    pub _pad: u8,
    /// When the flow was created, in whole seconds of `bpf_ktime_get_ns()`'s clock (0: made by
    /// an agent that did not record it).
    pub created: u32,
    /// A masqueraded flow ([`ct_flags::SNAT`]): in the forward entry, the node address and
    /// port its packets leave with; in the reverse entry (keyed to that address and port), the
    /// client's address and port, restored on replies. Zero otherwise.
    pub nat_address: [u8; 16],
    /// Network byte order.
    pub nat_port: u16,
    pub _pad2: [u8; 6],
}

/// Asserts each type's size, and for the generic ones that the size is the sum of the fields'
/// (no implicit padding), which is what makes the manual `Pod` impls below sound.
macro_rules! assert_layout {
    ($($t:ty => $n:expr $(, fields: $($f:ty),+)?;)*) => {
        $(
            const _: () = assert!(core::mem::size_of::<$t>() == $n);
            $(const _: () = assert!(0 $(+ core::mem::size_of::<$f>())+ == $n);)?
        )*
    };
}

assert_layout! {
    ServiceKeyV4 => 12, fields: [u8; 4], u16, u16, u8, u8, [u8; 2];
    ServiceKeyV6 => 24, fields: [u8; 16], u16, u16, u8, u8, [u8; 2];
    ServiceValue => 16;
    BackendV4 => 12, fields: [u8; 4], u16, u8, u8, u8, [u8; 3];
    BackendV6 => 24, fields: [u8; 16], u16, u8, u8, u8, [u8; 3];
    ReverseNatV4 => 8, fields: [u8; 4], u16, [u8; 2];
    ReverseNatV6 => 20, fields: [u8; 16], u16, [u8; 2];
    ConntrackKeyV4 => 16, fields: [u8; 4], [u8; 4], u16, u16, u8, u8, [u8; 2];
    ConntrackKeyV6 => 40, fields: [u8; 16], [u8; 16], u16, u16, u8, u8, [u8; 2];
    ConntrackValue => 64;
    FragmentKeyV4 => 16, fields: [u8; 4], [u8; 4], u32, u8, [u8; 3];
    FragmentKeyV6 => 40, fields: [u8; 16], [u8; 16], u32, u8, [u8; 3];
    FragmentValueV4 => 8, fields: [u8; 4], u8, [u8; 3];
    FragmentValueV6 => 20, fields: [u8; 16], u8, [u8; 3];
    SockRevKeyV4 => 16, fields: [u8; 8], [u8; 4], u16, [u8; 2];
    SockRevKeyV6 => 28, fields: [u8; 8], [u8; 16], u16, [u8; 2];
    SockRevValueV4 => 12, fields: [u8; 4], u16, [u8; 2], u32;
    SockRevValueV6 => 24, fields: [u8; 16], u16, [u8; 2], u32;
    SockUdpKey => 12;
    AffinityKey => 24;
    SourceRangeV4 => 12, fields: [u8; 4], u16, u8, u8, [u8; 4];
    SourceRangeV6 => 36, fields: [u8; 16], u16, u8, u8, [u8; 16];
    AffinityValue => 16;
    config::DatapathConfig => 72;
    conntrack::Timeouts => 32;
}

/// `Pod` for the generic key and value types. [`RawAddress`] is sealed: it holds for
/// `[u8; 4]` and `[u8; 16]` only, the two layouts `assert_layout!` checks.
macro_rules! pod {
    ($($t:ident),* $(,)?) => {
        $(
            // SAFETY: repr(C), every field is Pod, and `assert_layout!` proves there is no
            // implicit padding at either address type; any bit pattern is valid.
            unsafe impl<A: RawAddress> Zeroable for $t<A> {}
            unsafe impl<A: RawAddress> Pod for $t<A> {}
            #[cfg(feature = "user")]
            unsafe impl<A: RawAddress> aya::Pod for $t<A> {}
        )*
    };
}

pod!(
    ServiceKey,
    Backend,
    ReverseNat,
    ConntrackKey,
    SockRevKey,
    SockRevValue,
    FragmentKey,
    FragmentValue,
    SourceRange
);

#[cfg(feature = "user")]
mod user {
    use super::*;

    // SAFETY: repr(C), padding explicit, and bytemuck::Pod holds.
    unsafe impl aya::Pod for ServiceValue {}
    unsafe impl aya::Pod for ConntrackValue {}
    unsafe impl aya::Pod for SockUdpKey {}
    unsafe impl aya::Pod for AffinityKey {}
    unsafe impl aya::Pod for AffinityValue {}
    unsafe impl aya::Pod for config::DatapathConfig {}
    unsafe impl aya::Pod for StatsKey {}
    unsafe impl aya::Pod for TrafficStats {}
}

/// What a [`StatsKey`] counts.
pub mod stats_kind {
    /// A frontend: `id` is its reverse-NAT id.
    pub const FRONTEND: u8 = 1;
    /// A backend: `id` is its backend id.
    pub const BACKEND: u8 = 2;
}

/// Which frontend or backend a [`TrafficStats`] counts.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Pod, Zeroable)]
pub struct StatsKey {
    pub id: u32,
    /// 4 or 6.
    pub family: u8,
    /// [`stats_kind`].
    pub kind: u8,
    pub _pad: [u8; 2],
}

/// Traffic through one frontend or backend, on one CPU: connections (new flows, socket
/// connects and first datagrams), and packets and bytes (whole frames as the hook sees them)
/// towards the backend and back.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct TrafficStats {
    pub connections: u64,
    pub packets_to: u64,
    pub bytes_to: u64,
    pub packets_from: u64,
    pub bytes_from: u64,
}

const _: () = assert!(core::mem::size_of::<StatsKey>() == 8);
const _: () = assert!(core::mem::size_of::<TrafficStats>() == 40);
