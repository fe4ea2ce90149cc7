//! Load-time configuration of the kernel programs: one value, set as the read-only global
//! [`SYMBOL`] when the object is loaded (`EbpfLoader::set_global`), so the programs read it
//! without a map lookup and the verifier can prune what a setting turns off. A change means a
//! reload, which the agent swaps into the pinned links atomically.
use bytemuck::{Pod, Zeroable};

/// The global's symbol name.
pub const SYMBOL: &str = "CONFIG";

/// Bits of [`DatapathConfig::flags`].
pub mod flags {
    /// `--socket-lb-hostns-only`: the socket hooks translate only for sockets of the node's
    /// own network namespace ([`super::DatapathConfig::host_netns_cookie`]); pods go through TC.
    pub const SOCKET_LB_HOSTNS_ONLY: u16 = 1 << 0;
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
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
}
