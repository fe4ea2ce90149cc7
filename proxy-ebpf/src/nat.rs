//! Address and port rewrites with incremental checksum updates, over any [`PacketCtx`]: the
//! family fixes the checksums covering its addresses ([`Family::rewrite_address`]); ports are
//! the same for both. UDP over IPv4 with a zero checksum (none) keeps it zero.
use proxy_common::protocol;

use crate::{
    ctx::{FieldSize, L4Change, PacketCtx},
    family::Family,
    parse::Packet,
};

/// Which end of a packet a rewrite changes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// The sender: reverse NAT of a reply (and SNAT, later).
    Source,
    /// The receiver: DNAT to a backend.
    Destination,
}

const TCP_CHECK_OFFSET: usize = 16;
const UDP_CHECK_OFFSET: usize = 6;

/// Offset of the L4 checksum and how it treats a change. SCTP's CRC32c cannot be updated
/// incrementally; the agent does not program SCTP service ports yet.
#[inline(always)]
fn l4_checksum(protocol: u8, l4_offset: usize, pseudo_header: bool) -> Option<(usize, L4Change)> {
    let (offset, zero_means_none) = match protocol {
        protocol::TCP => (TCP_CHECK_OFFSET, false),
        protocol::UDP => (UDP_CHECK_OFFSET, true),
        _ => return None,
    };
    Some((
        l4_offset + offset,
        L4Change {
            pseudo_header,
            zero_means_none,
        },
    ))
}

/// Rewrites one side's address and port to `address`/`port` (network order), fixing every
/// checksum that covers them.
#[inline(always)]
pub(crate) fn rewrite<F: Family, C: PacketCtx>(
    ctx: &C,
    packet: &Packet<F::Addr>,
    side: Side,
    address: F::Addr,
    port: u16,
) -> Result<(), i64> {
    let ((old_address, old_port), address_offset, port_offset) = match side {
        Side::Source => (packet.source(), F::SOURCE_OFFSET, 0),
        Side::Destination => (packet.destination(), F::DESTINATION_OFFSET, 2),
    };
    F::rewrite_address(
        ctx,
        packet.l3_offset,
        packet.l3_offset + address_offset,
        old_address,
        address,
        l4_checksum(packet.protocol, packet.l4_offset, true),
    )?;
    if old_port != port {
        if let Some((check, change)) = l4_checksum(packet.protocol, packet.l4_offset, false) {
            ctx.l4_csum_replace(check, old_port.into(), port.into(), FieldSize::Two, change)?;
        }
        ctx.store(packet.l4_offset + port_offset, &port)?;
    }
    Ok(())
}
