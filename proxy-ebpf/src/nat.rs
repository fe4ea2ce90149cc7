//! Address and port rewrites with incremental checksum updates (IPv4 header, TCP/UDP pseudo
//! header and port). UDP over IPv4 with a zero checksum (none) keeps it zero.
use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::bpf_csum_diff,
    programs::TcContext,
};
use proxy_common::protocol;

use crate::parse::Packet;

const IPV4_CHECK_OFFSET: usize = 10;
const IPV4_SOURCE_OFFSET: usize = 12;
const IPV4_DESTINATION_OFFSET: usize = 16;
const IPV6_SOURCE_OFFSET: usize = 8;
const IPV6_DESTINATION_OFFSET: usize = 24;

/// Offset of the L4 checksum and the flags for `bpf_l4_csum_replace`. SCTP's CRC32c cannot be
/// updated incrementally; the agent does not program SCTP service ports yet.
#[inline(always)]
fn l4_checksum(protocol: u8, l4_offset: usize) -> Option<(usize, u64)> {
    match protocol {
        protocol::TCP => Some((l4_offset + 16, 0)),
        protocol::UDP => Some((l4_offset + 6, u64::from(BPF_F_MARK_MANGLED_0))),
        _ => None,
    }
}

#[inline(always)]
fn offsets<A>(packet: &Packet<A>, destination: bool, v4: bool) -> (usize, usize) {
    let (source, dest) = if v4 {
        (IPV4_SOURCE_OFFSET, IPV4_DESTINATION_OFFSET)
    } else {
        (IPV6_SOURCE_OFFSET, IPV6_DESTINATION_OFFSET)
    };
    if destination {
        (packet.l3_offset + dest, packet.l4_offset + 2)
    } else {
        (packet.l3_offset + source, packet.l4_offset)
    }
}

#[inline(always)]
fn rewrite_port<A>(
    ctx: &TcContext,
    packet: &Packet<A>,
    port_offset: usize,
    old: u16,
    new: u16,
) -> Result<(), i64> {
    if old == new {
        return Ok(());
    }
    if let Some((check, flags)) = l4_checksum(packet.protocol, packet.l4_offset) {
        ctx.l4_csum_replace(check, u64::from(old), u64::from(new), flags | 2)?;
    }
    ctx.store(port_offset, &new, 0)?;
    Ok(())
}

#[inline(always)]
pub fn rewrite_v4(
    ctx: &TcContext,
    packet: &Packet<[u8; 4]>,
    destination: bool,
    address: [u8; 4],
    port: u16,
) -> Result<(), i64> {
    let (address_offset, port_offset) = offsets(packet, destination, true);
    let (old_address, old_port) = if destination {
        (packet.destination, packet.destination_port)
    } else {
        (packet.source, packet.source_port)
    };
    let old = u64::from(u32::from_ne_bytes(old_address));
    let new = u64::from(u32::from_ne_bytes(address));
    if let Some((check, flags)) = l4_checksum(packet.protocol, packet.l4_offset) {
        ctx.l4_csum_replace(check, old, new, flags | u64::from(BPF_F_PSEUDO_HDR) | 4)?;
    }
    ctx.l3_csum_replace(packet.l3_offset + IPV4_CHECK_OFFSET, old, new, 4)?;
    ctx.store(address_offset, &address, 0)?;
    rewrite_port(ctx, packet, port_offset, old_port, port)
}

#[inline(always)]
pub fn rewrite_v6(
    ctx: &TcContext,
    packet: &Packet<[u8; 16]>,
    destination: bool,
    address: [u8; 16],
    port: u16,
) -> Result<(), i64> {
    let (address_offset, port_offset) = offsets(packet, destination, false);
    let (mut old_address, old_port) = if destination {
        (packet.destination, packet.destination_port)
    } else {
        (packet.source, packet.source_port)
    };
    let mut new_address = address;
    if let Some((check, flags)) = l4_checksum(packet.protocol, packet.l4_offset) {
        // SAFETY: both buffers are 16 bytes on our stack.
        let diff = unsafe {
            bpf_csum_diff(
                old_address.as_mut_ptr().cast(),
                16,
                new_address.as_mut_ptr().cast(),
                16,
                0,
            )
        };
        if diff < 0 {
            return Err(diff);
        }
        // Size 0: `to` is a checksum difference, not a value.
        ctx.l4_csum_replace(check, 0, diff as u64, flags | u64::from(BPF_F_PSEUDO_HDR))?;
    }
    ctx.store(address_offset, &new_address, 0)?;
    rewrite_port(ctx, packet, port_offset, old_port, port)
}
