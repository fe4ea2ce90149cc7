//! Load-time configuration of the kernel programs: one value, set as the read-only global
//! [`SYMBOL`] when the object is loaded (`EbpfLoader::set_global`), so the programs read it
//! without a map lookup and the verifier can prune what a setting turns off. A change means a
//! reload, which the agent swaps into the pinned links atomically.
use bytemuck::{Pod, Zeroable};

/// The global's symbol name.
pub const SYMBOL: &str = "CONFIG";

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct DatapathConfig {
    /// `--cluster-cidr` of each family (address, prefix length; prefix 0 = none).
    pub cluster_v4: [u8; 4],
    pub cluster_v6: [u8; 16],
    pub cluster_v4_prefix: u8,
    pub cluster_v6_prefix: u8,
    /// Feature bits (none defined yet: every setting so far is an address).
    pub flags: u16,
    pub _pad: [u8; 4],
}
