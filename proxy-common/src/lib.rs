//! Everything that crosses the kernel boundary: map names, keys, values and constants.
//!
//! Layout rules: `#[repr(C)]`, explicit padding, sizes asserted at compile time. Addresses and
//! ports are kept in network byte order exactly as they appear in packets; the agent converts at
//! one boundary (`proxy_userspace::maps::codec`).
#![no_std]

use bytemuck::{Pod, Zeroable};

/// Bumped whenever a map's key, value or meaning changes. Pins live under
/// `<bpf-root>/v<LAYOUT_VERSION>/` so a new agent never misreads an old map.
pub const LAYOUT_VERSION: u32 = 1;

/// Map names (also the pin file names). At most 15 bytes: the kernel's object name limit.
pub mod map_names {
    pub const SERVICES_V4: &str = "lb4_services";
    pub const SERVICES_V6: &str = "lb6_services";
    pub const BACKENDS_V4: &str = "lb4_backends";
    pub const BACKENDS_V6: &str = "lb6_backends";
    pub const REVERSE_NAT_V4: &str = "lb4_reverse_nat";
    pub const REVERSE_NAT_V6: &str = "lb6_reverse_nat";
    pub const CONNTRACK_V4: &str = "ct4";
    pub const CONNTRACK_V6: &str = "ct6";
    pub const COUNTERS: &str = "counters";
}

/// Program names (the entry points in the object file).
pub mod program_names {
    /// TC ingress on a pod interface: packets leaving a pod (service DNAT).
    pub const FROM_POD: &str = "from_pod";
    /// TC egress on a pod interface: packets going to a pod (reverse NAT).
    pub const TO_POD: &str = "to_pod";
}

/// Default capacities; the agent may override them at load time.
pub mod capacity {
    pub const SERVICES: u32 = 262_144;
    pub const BACKENDS: u32 = 131_072;
    pub const REVERSE_NAT: u32 = 65_536;
    pub const CONNTRACK: u32 = 262_144;
}

/// IANA protocol numbers used in keys.
pub mod protocol {
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const SCTP: u8 = 132;
}

/// Service scope in [`ServiceKeyV4::scope`] / [`ServiceKeyV6::scope`].
pub mod scope {
    /// The entry used for every client (and for external clients once policies land).
    pub const EXTERNAL: u8 = 0;
}

/// Bits of [`ServiceValue::flags`] (slot 0 only).
pub mod service_flags {
    /// The frontend is a cluster IP.
    pub const CLUSTER_IP: u16 = 1 << 0;
}

/// [`Backend`] states.
pub mod backend_state {
    pub const ACTIVE: u8 = 0;
    pub const TERMINATING: u8 = 1;
}

/// [`ConntrackKeyV4::direction`] / [`ConntrackKeyV6::direction`].
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
}

/// Index of each counter in the per-CPU `counters` array.
pub mod counter {
    /// A packet that is not service traffic (or not parseable) passed untouched.
    pub const PASS: u32 = 0;
    /// A new flow was load-balanced to a backend.
    pub const DNAT_NEW: u32 = 1;
    /// A packet of a known flow was translated to its backend.
    pub const DNAT_ESTABLISHED: u32 = 2;
    /// A reply was translated back to the service address.
    pub const REVERSE_NAT: u32 = 3;
    /// A packet to a service with no usable backend.
    pub const NO_BACKEND: u32 = 4;
    /// A known flow's backend had gone and a new one was picked.
    pub const REPICK: u32 = 5;
    /// A rewrite helper failed; the packet passed untouched.
    pub const REWRITE_ERROR: u32 = 6;
    pub const COUNT: u32 = 7;
    pub const NAMES: [&str; COUNT as usize] = [
        "pass",
        "dnat_new",
        "dnat_established",
        "reverse_nat",
        "no_backend",
        "repick",
        "rewrite_error",
    ];
}

/// Key of the services maps. Slot 0 is the service entry; slots `1..=count` name backends.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Pod, Zeroable)]
pub struct ServiceKeyV4 {
    pub address: [u8; 4],
    /// Network byte order.
    pub port: u16,
    pub slot: u16,
    pub protocol: u8,
    pub scope: u8,
    pub _pad: [u8; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Pod, Zeroable)]
pub struct ServiceKeyV6 {
    pub address: [u8; 16],
    /// Network byte order.
    pub port: u16,
    pub slot: u16,
    pub protocol: u8,
    pub scope: u8,
    pub _pad: [u8; 2],
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

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct BackendV4 {
    pub address: [u8; 4],
    /// Network byte order.
    pub port: u16,
    pub protocol: u8,
    /// [`backend_state`].
    pub state: u8,
    pub zone: u8,
    pub _pad: [u8; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct BackendV6 {
    pub address: [u8; 16],
    /// Network byte order.
    pub port: u16,
    pub protocol: u8,
    /// [`backend_state`].
    pub state: u8,
    pub zone: u8,
    pub _pad: [u8; 3],
}

/// Reverse NAT: what a reply's source is rewritten to (the frontend).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct ReverseNatV4 {
    pub address: [u8; 4],
    /// Network byte order.
    pub port: u16,
    pub _pad: [u8; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct ReverseNatV6 {
    pub address: [u8; 16],
    /// Network byte order.
    pub port: u16,
    pub _pad: [u8; 2],
}

/// Conntrack key: the 5-tuple as seen on the wire, plus the direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct ConntrackKeyV4 {
    pub source: [u8; 4],
    pub destination: [u8; 4],
    /// Network byte order.
    pub source_port: u16,
    /// Network byte order.
    pub destination_port: u16,
    pub protocol: u8,
    /// [`direction`].
    pub direction: u8,
    pub _pad: [u8; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct ConntrackKeyV6 {
    pub source: [u8; 16],
    pub destination: [u8; 16],
    /// Network byte order.
    pub source_port: u16,
    /// Network byte order.
    pub destination_port: u16,
    pub protocol: u8,
    /// [`direction`].
    pub direction: u8,
    pub _pad: [u8; 2],
}

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
    /// [`ct_flags`], accumulated.
    pub flags: u8,
    pub _pad: [u8; 5],
}

macro_rules! assert_size {
    ($($t:ty => $n:expr),* $(,)?) => {
        $(const _: () = assert!(core::mem::size_of::<$t>() == $n);)*
    };
}

assert_size! {
    ServiceKeyV4 => 12,
    ServiceKeyV6 => 24,
    ServiceValue => 16,
    BackendV4 => 12,
    BackendV6 => 24,
    ReverseNatV4 => 8,
    ReverseNatV6 => 20,
    ConntrackKeyV4 => 16,
    ConntrackKeyV6 => 40,
    ConntrackValue => 40,
}

#[cfg(feature = "user")]
mod user {
    use super::*;

    macro_rules! aya_pod {
        ($($t:ty),*) => { $(unsafe impl aya::Pod for $t {})* };
    }

    // SAFETY: every type is repr(C), padding is explicit, and bytemuck::Pod is derived.
    aya_pod!(
        ServiceKeyV4,
        ServiceKeyV6,
        ServiceValue,
        BackendV4,
        BackendV6,
        ReverseNatV4,
        ReverseNatV6,
        ConntrackKeyV4,
        ConntrackKeyV6,
        ConntrackValue
    );
}
