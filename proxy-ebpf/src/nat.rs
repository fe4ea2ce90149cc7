//! Address and port rewrites with incremental checksum updates, over any [`PacketCtx`]: the
//! family fixes the checksums covering its addresses ([`Family::rewrite_address`]); ports are
//! the same for both. UDP over IPv4 with a zero checksum (none) keeps it zero. SCTP's CRC32c
//! covers no address, and a port change moves it by what [`sctp::port_change`] says.
use proxy_common::{monitor_hook, protocol, sctp};

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

/// Offset of the L4 checksum and how it treats a change, for the ones'-complement sums (TCP,
/// UDP); SCTP's is [`sctp_port`]'s.
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
/// checksum that covers them; SCTP's CRC32c first ([`sctp_port`]), which may refuse before
/// anything changed.
#[inline(always)]
pub(crate) fn rewrite<F: Family, C: PacketCtx>(
    ctx: &C,
    packet: &Packet<F::Addr>,
    side: Side,
    address: F::Addr,
    port: u16,
) -> Result<(), i64> {
    // Not at XDP, which hands SCTP on to TC (`xdp_device`): its instances have no SCTP code.
    if C::HOOK != monitor_hook::XDP && packet.protocol == protocol::SCTP {
        let delta = port_delta(packet, side, port);
        if delta != 0 {
            sctp_port::<F, C>(
                ctx,
                packet.l3_offset,
                packet.l4_offset,
                packet.fragment_id_at != 0,
                delta,
            )?;
        }
    }
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

/// What writing `port` over `side`'s port changes in the packet's first four bytes: their
/// XOR, as on the wire (0: nothing).
#[inline(always)]
fn port_delta<A: Copy>(packet: &Packet<A>, side: Side, port: u16) -> u32 {
    let (old, shift) = match side {
        Side::Source => (packet.source_port, 0),
        Side::Destination => (packet.destination_port, 16),
    };
    // The ports are kept as their bytes read natively: the XOR's bytes are the wire's.
    u32::from(old ^ port) << shift
}

/// `-EMSGSIZE`: an SCTP packet whose length is not a whole number of words, or a first
/// fragment (of a datagram whose length it does not tell), whose port would change.
const SCTP_UNKNOWN_LENGTH: i64 = -90;

/// `x^(32 w) mod P` for SCTP packets of `w` words ([`sctp::word_powers`]), read-only data.
static SCTP_WORD_POWERS: [u32; sctp::WORDS] = sctp::word_powers();

/// Moves the CRC32c of the SCTP packet at `l4` (after the IP header at `l3`) by a change of
/// its first four bytes by `delta` (their XOR, as on the wire, read natively), before the
/// ports are written; refuses a first fragment, whose datagram's length (which the CRC32c
/// covers whole) it does not tell. The packet's length is the IP header's (Ethernet padding
/// is no part of it). Its own BPF function, with a small frame.
#[inline(never)]
fn sctp_port<F: Family, C: PacketCtx>(
    ctx: &C,
    l3: usize,
    l4: usize,
    first_fragment: bool,
    delta: u32,
) -> Result<(), i64> {
    if first_fragment {
        return Err(SCTP_UNKNOWN_LENGTH);
    }
    // Read straight from the packet, without stack: the masquerade's call chain leaves this
    // function 16 bytes, which the store's word takes. The IP header's length field in 16
    // bits, wrapping as the field does: the table's index below is bounded by its type.
    let len = if F::AF == <proxy_common::V6 as Family>::AF {
        // The payload length counts the extension headers, not the fixed header.
        u16::from_be(ctx.peek::<u16>(l3 + 4)?).wrapping_sub((l4 - l3 - 40) as u16)
    } else {
        u16::from_be(ctx.peek::<u16>(l3 + 2)?).wrapping_sub((l4 - l3) as u16)
    };
    // A length the packet does not hold (a header that lies: the CRC32c table is by length)
    // is no length to update the checksum by.
    if len % 4 != 0
        || usize::from(len) < sctp::HEADER_LEN
        || l4 + usize::from(len) > ctx.length() as usize
    {
        return Err(SCTP_UNKNOWN_LENGTH);
    }
    let at = l4 + sctp::CHECKSUM_OFFSET;
    let mut word: u32 = ctx.peek(at)?;
    if word == 0 {
        // Not computed yet: the sender's stack left it to checksum offload
        // (`CHECKSUM_PARTIAL`; SCTP zeroes the field), which computes it over the rewritten
        // ports on the way out, or the receiver skips it (a packet that never left the
        // machine). A complete packet whose CRC32c happens to be 0 (1 in 2^32) keeps a
        // checksum its receiver drops, and the sender retransmits.
        return Ok(());
    }
    // Read natively, the field is the CRC least significant byte first on this (little-endian)
    // target, as SCTP stores it.
    word ^= sctp::port_change(delta.to_ne_bytes(), SCTP_WORD_POWERS[usize::from(len / 4)]);
    ctx.store(at, &word)
}
