//! Packet access behind one trait, so parsing and rewriting are written once for every hook
//! that sees packets: TC ([`TcContext`], with the skb helpers) now, XDP (direct access plus
//! `bpf_csum_diff`) when the device path lands. This is Cilium's `overloadable_{skb,xdp}.h`.
use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};

/// How a field change affects an L4 checksum.
#[derive(Clone, Copy)]
pub(crate) struct L4Change {
    /// The field is part of the pseudo header (an IP address), not of the L4 header itself.
    pub pseudo_header: bool,
    /// A zero checksum means "none" and must stay zero (UDP over IPv4).
    pub zero_means_none: bool,
}

/// The size of a replaced field, for the checksum helpers.
#[derive(Clone, Copy)]
pub(crate) enum FieldSize {
    Two = 2,
    Four = 4,
}

pub(crate) trait PacketCtx {
    fn load<T>(&self, offset: usize) -> Result<T, i64>;
    fn store<T>(&self, offset: usize, value: &T) -> Result<(), i64>;
    /// Updates the IPv4 header checksum at `check` for a field that changed from `old` to `new`.
    fn l3_csum_replace(&self, check: usize, old: u32, new: u32, size: FieldSize)
    -> Result<(), i64>;
    /// Updates the L4 checksum at `check` for a field that changed from `old` to `new`.
    fn l4_csum_replace(
        &self,
        check: usize,
        old: u32,
        new: u32,
        size: FieldSize,
        change: L4Change,
    ) -> Result<(), i64>;
    /// Adds a checksum difference (from `bpf_csum_diff`) to the L4 checksum at `check`.
    fn l4_csum_add(&self, check: usize, diff: u32, change: L4Change) -> Result<(), i64>;
}

#[inline(always)]
fn l4_flags(change: L4Change) -> u64 {
    let mut flags = 0u64;
    if change.pseudo_header {
        flags |= u64::from(BPF_F_PSEUDO_HDR);
    }
    if change.zero_means_none {
        flags |= u64::from(BPF_F_MARK_MANGLED_0);
    }
    flags
}

impl PacketCtx for TcContext {
    #[inline(always)]
    fn load<T>(&self, offset: usize) -> Result<T, i64> {
        TcContext::load(self, offset)
    }

    #[inline(always)]
    fn store<T>(&self, offset: usize, value: &T) -> Result<(), i64> {
        TcContext::store(self, offset, value, 0)
    }

    #[inline(always)]
    fn l3_csum_replace(
        &self,
        check: usize,
        old: u32,
        new: u32,
        size: FieldSize,
    ) -> Result<(), i64> {
        TcContext::l3_csum_replace(self, check, old.into(), new.into(), size as u64)
    }

    #[inline(always)]
    fn l4_csum_replace(
        &self,
        check: usize,
        old: u32,
        new: u32,
        size: FieldSize,
        change: L4Change,
    ) -> Result<(), i64> {
        let flags = l4_flags(change) | size as u64;
        TcContext::l4_csum_replace(self, check, old.into(), new.into(), flags)
    }

    #[inline(always)]
    fn l4_csum_add(&self, check: usize, diff: u32, change: L4Change) -> Result<(), i64> {
        // Size 0: `to` is a checksum difference, not a value.
        TcContext::l4_csum_replace(self, check, 0, diff.into(), l4_flags(change))
    }
}
