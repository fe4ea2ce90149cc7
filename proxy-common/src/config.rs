//! Load-time configuration of the kernel programs: one value, set as the read-only global
//! [`SYMBOL`] when the object is loaded (`EbpfLoader::set_global`), so the programs read it
//! without a map lookup and the verifier can prune what a setting turns off. A change means a
//! reload, which the agent swaps into the pinned links atomically.
use bytemuck::{Pod, Zeroable};

use crate::conntrack::Timeouts;

/// The global's symbol name.
pub const SYMBOL: &str = "CONFIG";

/// Bits of [`DatapathConfig::flags`].
pub mod flags {
    /// `--socket-lb-hostns-only`: the socket hooks translate only for sockets of the node's
    /// own network namespace ([`super::DatapathConfig::host_netns_cookie`]); pods go through TC.
    pub const SOCKET_LB_HOSTNS_ONLY: u16 = 1 << 0;
    /// `--masquerade-all`: every flow through a Service is SNATed to the node, not only those
    /// from outside `--cluster-cidr` and hairpins.
    pub const MASQUERADE_ALL: u16 = 1 << 1;
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct DatapathConfig {
    /// `SO_NETNS_COOKIE` of the node's network namespace (the agent's).
    pub host_netns_cookie: u64,
    /// `--cluster-cidr` of each family (address, prefix length; prefix 0 = none).
    pub cluster_v4: [u8; 4],
    pub cluster_v6: [u8; 16],
    pub cluster_v4_prefix: u8,
    pub cluster_v6_prefix: u8,
    /// [`flags`].
    pub flags: u16,
    /// Conntrack lifetimes (`--conntrack-*`).
    pub ct_timeouts: Timeouts,
    /// `--masquerade-ports`: the source ports masqueraded flows get, inclusive, host order.
    pub snat_port_min: u16,
    pub snat_port_max: u16,
    pub _pad: [u8; 4],
}

/// The default `--masquerade-ports`: below Linux's default ephemeral range (32768–60999), so a
/// masqueraded flow never takes a port the node's own connections use, and below Kubernetes'
/// default NodePort range (30000–32767), so a backend's reply to a masqueraded flow is never
/// taken for a packet to a NodePort. 28,976 ports per node address and backend: at a second's
/// hold after a flow closes, room for ~29,000 new masqueraded connections per second to one
/// backend (61000–65535, the range above the ephemeral one, held 4,536 and ran out at a few
/// thousand). Ports of listening sockets in it are no conflict: a masqueraded flow's tuple
/// includes the backend's address and port, and the replies it takes match that tuple only.
pub const DEFAULT_SNAT_PORTS: (u16, u16) = (1024, 29999);

impl DatapathConfig {
    /// All zeros: what the object holds until the loader sets it.
    pub const UNSET: Self = Self {
        host_netns_cookie: 0,
        cluster_v4: [0; 4],
        cluster_v6: [0; 16],
        cluster_v4_prefix: 0,
        cluster_v6_prefix: 0,
        flags: 0,
        ct_timeouts: Timeouts::ZERO,
        snat_port_min: 0,
        snat_port_max: 0,
        _pad: [0; 4],
    };
}

impl Default for DatapathConfig {
    fn default() -> Self {
        Self {
            ct_timeouts: Timeouts::DEFAULT,
            snat_port_min: DEFAULT_SNAT_PORTS.0,
            snat_port_max: DEFAULT_SNAT_PORTS.1,
            ..Self::UNSET
        }
    }
}
