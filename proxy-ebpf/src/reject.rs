//! Reject, as kube-proxy's `REJECT` rule for a Service with no usable endpoint: the datapath
//! turns the packet into the answer a closed port gives and sends it back where it came from.
//! A TCP segment gets a reset (RFC 9293 §3.10.7.1, as Linux's `tcp_v4_send_reset` builds it);
//! a UDP datagram or an SCTP packet an ICMP (ICMPv6) port unreachable quoting its IP header
//! and its first 8 bytes (SCTP's: the ports and the verification tag), enough for the client's
//! stack to find the socket or association (RFC 792, RFC 4443 §3.1, RFC 9260 §10.1), as
//! iptables' `REJECT` answers every protocol but TCP.
//! Every header and checksum is built afresh, so nothing of the old packet leaks into them.
//!
//! Not rejected (passed untouched, counted `no_backend`): an incoming reset (never answered),
//! an IPv4 header with options or an IPv6 one followed by extension headers (rare from pods;
//! the quote would need a variable length), and protocols other than TCP, UDP and SCTP.
use proxy_common::{V4, V6, protocol};

use crate::{
    csum::{checksum, sum},
    ctx::PacketCtx,
    family::Family,
    outcome::Outcome,
    parse::Packet,
    scratch,
};

const ETH_HLEN: usize = 14;
const TCP_HLEN: usize = 20;
const UDP_HLEN: usize = 8;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
const TTL: u8 = 64;

/// What a family adds: its header, whole, and the pseudo header its checksums cover.
pub(crate) trait Reply: Family {
    /// The IP header, without options or extension headers.
    type Header: Copy;
    /// The pseudo header of an upper-layer checksum (RFC 768, RFC 8200 §8.1).
    type Pseudo: Copy;
    /// The header and the first 8 bytes after it: an ICMP error's quote.
    type Quote: Copy;
    const HEADER_LEN: usize;
    /// The IP length field's offset, and how much of the header it counts.
    const LENGTH_OFFSET: usize;
    const LENGTH_COUNTS_HEADER: bool;
    const ICMP: u8;
    /// ICMP type and code of "port unreachable".
    const PORT_UNREACHABLE: (u8, u8);
    /// ICMPv6's checksum covers a pseudo header, ICMP's does not.
    const ICMP_PSEUDO: bool;

    /// Writes the header into `out` (which may hold anything before).
    fn header(
        out: &mut Self::Header,
        source: Self::Addr,
        destination: Self::Addr,
        protocol: u8,
        payload: u16,
    );
    /// Writes the pseudo header into `out`.
    fn pseudo(
        out: &mut Self::Pseudo,
        source: Self::Addr,
        destination: Self::Addr,
        protocol: u8,
        length: u16,
    );
}

impl Reply for V4 {
    type Header = [u8; 20];
    type Pseudo = [u8; 12];
    type Quote = [u8; 28];
    const HEADER_LEN: usize = 20;
    const LENGTH_OFFSET: usize = 2;
    const LENGTH_COUNTS_HEADER: bool = true;
    const ICMP: u8 = 1;
    const PORT_UNREACHABLE: (u8, u8) = (3, 3);
    const ICMP_PSEUDO: bool = false;

    #[inline(always)]
    fn header(
        header: &mut [u8; 20],
        source: [u8; 4],
        destination: [u8; 4],
        protocol: u8,
        payload: u16,
    ) {
        let [length_high, length_low] = (20 + payload).to_be_bytes();
        *header = [0u8; 20];
        header[0] = 0x45;
        header[2] = length_high;
        header[3] = length_low;
        header[6] = 0x40; // Don't fragment, as Linux sends its resets and errors.
        header[8] = TTL;
        header[9] = protocol;
        header[12..16].copy_from_slice(&source);
        header[16..20].copy_from_slice(&destination);
        if let Ok(sum) = checksum(header, 0) {
            header[10..12].copy_from_slice(&sum);
        }
    }

    #[inline(always)]
    fn pseudo(
        pseudo: &mut [u8; 12],
        source: [u8; 4],
        destination: [u8; 4],
        protocol: u8,
        length: u16,
    ) {
        *pseudo = [0u8; 12];
        pseudo[0..4].copy_from_slice(&source);
        pseudo[4..8].copy_from_slice(&destination);
        pseudo[9] = protocol;
        pseudo[10..12].copy_from_slice(&length.to_be_bytes());
    }
}

impl Reply for V6 {
    type Header = [u8; 40];
    type Pseudo = [u8; 40];
    type Quote = [u8; 48];
    const HEADER_LEN: usize = 40;
    const LENGTH_OFFSET: usize = 4;
    const LENGTH_COUNTS_HEADER: bool = false;
    const ICMP: u8 = 58;
    const PORT_UNREACHABLE: (u8, u8) = (1, 4);
    const ICMP_PSEUDO: bool = true;

    #[inline(always)]
    fn header(
        header: &mut [u8; 40],
        source: [u8; 16],
        destination: [u8; 16],
        protocol: u8,
        payload: u16,
    ) {
        *header = [0u8; 40];
        header[0] = 0x60;
        header[4..6].copy_from_slice(&payload.to_be_bytes());
        header[6] = protocol;
        header[7] = TTL;
        header[8..24].copy_from_slice(&source);
        header[24..40].copy_from_slice(&destination);
    }

    #[inline(always)]
    fn pseudo(
        pseudo: &mut [u8; 40],
        source: [u8; 16],
        destination: [u8; 16],
        protocol: u8,
        length: u16,
    ) {
        *pseudo = [0u8; 40];
        pseudo[0..16].copy_from_slice(&source);
        pseudo[16..32].copy_from_slice(&destination);
        pseudo[34..36].copy_from_slice(&length.to_be_bytes());
        pseudo[39] = protocol;
    }
}

/// A reset: the IP header, then a TCP header without options.
#[repr(C)]
#[derive(Clone, Copy)]
struct Reset<H> {
    ip: H,
    tcp: [u8; TCP_HLEN],
}

/// A port unreachable: the IP header, then the ICMP message.
#[repr(C)]
#[derive(Clone, Copy)]
struct Unreachable<H, Q> {
    ip: H,
    message: IcmpMessage<Q>,
}

/// An ICMP message: its header, then the quote. Its checksum covers this.
#[repr(C)]
#[derive(Clone, Copy)]
struct IcmpMessage<Q> {
    icmp: [u8; 8],
    quote: Q,
}

/// Whether the packet can be answered: a fixed-size header right before TCP, UDP or SCTP, and
/// not a reset.
#[inline(always)]
fn answerable<F: Reply>(packet: &Packet<F::Addr>) -> bool {
    if packet.l4_offset - packet.l3_offset != F::HEADER_LEN || packet.l3_offset != ETH_HLEN {
        return false;
    }
    match packet.protocol {
        protocol::TCP => packet.tcp_flags & TCP_RST == 0,
        protocol::UDP | protocol::SCTP => true,
        _ => false,
    }
}

/// Rewrites the packet into its rejection, from the frontend to the client, with the
/// Ethernet addresses swapped, and sends it back out of the interface it came in on. A packet
/// that cannot be answered, or a helper failing before the packet changed, leaves it untouched
/// ([`Outcome::NoBackend`]); a failure after is [`Outcome::RejectError`].
/// Its own BPF function (never inlined), so its stack is not the service path's.
#[inline(never)]
pub(crate) fn reject<F: Reply, C: PacketCtx>(ctx: &C, packet: &Packet<F::Addr>) -> Outcome {
    if !answerable::<F>(packet) {
        return Outcome::NoBackend;
    }
    let written = if packet.protocol == protocol::TCP {
        reset::<F, C>(ctx, packet)
    } else {
        unreachable::<F, C>(ctx, packet)
    };
    match written {
        Err(Written::Untouched) => Outcome::NoBackend,
        Err(Written::Broken) => Outcome::RejectError,
        Ok(()) if ctx.bounce().is_ok() => Outcome::Reject,
        Ok(()) => Outcome::RejectError,
    }
}

/// How far a failed [`write`] got.
enum Written {
    Untouched,
    Broken,
}

/// Makes the packet the Ethernet header, its addresses swapped, followed by `reply`.
#[inline(always)]
fn write<C: PacketCtx, T>(ctx: &C, reply: &T) -> Result<(), Written> {
    let macs = ctx
        .load::<[[u8; 6]; 2]>(0)
        .map_err(|_| Written::Untouched)?;
    ctx.resize((ETH_HLEN + core::mem::size_of::<T>()) as u32)
        .map_err(|_| Written::Untouched)?;
    ctx.store(ETH_HLEN, reply).map_err(|_| Written::Broken)?;
    ctx.store(0, &[macs[1], macs[0]])
        .map_err(|_| Written::Broken)
}

/// Makes the packet its reset. Its own BPF function, as is [`unreachable`]; both build the
/// reply in scratch memory, not on the stack.
#[inline(never)]
fn reset<F: Reply, C: PacketCtx>(ctx: &C, packet: &Packet<F::Addr>) -> Result<(), Written> {
    let scratch = scratch::get().ok_or(Written::Untouched)?;
    let (reply, pseudo): (&mut Reset<F::Header>, _) = scratch.reply_and_pseudo();
    build_reset::<F, C>(ctx, packet, reply, pseudo).map_err(|_| Written::Untouched)?;
    write(ctx, reply)
}

#[inline(always)]
fn build_reset<F: Reply, C: PacketCtx>(
    ctx: &C,
    packet: &Packet<F::Addr>,
    reply: &mut Reset<F::Header>,
    pseudo: &mut F::Pseudo,
) -> Result<(), i64> {
    let (client, frontend) = (packet.source, packet.destination);
    let segment: [u8; TCP_HLEN] = ctx.load(packet.l4_offset)?;
    let length: [u8; 2] = ctx.load(packet.l3_offset + F::LENGTH_OFFSET)?;
    let mut l4_length = u32::from(u16::from_be_bytes(length));
    if F::LENGTH_COUNTS_HEADER {
        l4_length = l4_length.saturating_sub(F::HEADER_LEN as u32);
    }
    let data_offset = u32::from(segment[12] >> 4) * 4;
    let flags = segment[13];
    let tcp = &mut reply.tcp;
    *tcp = [0u8; TCP_HLEN];
    tcp[0..2].copy_from_slice(&segment[2..4]);
    tcp[2..4].copy_from_slice(&segment[0..2]);
    if flags & TCP_ACK != 0 {
        // Its sequence number is the acknowledgment the segment carried.
        tcp[4..8].copy_from_slice(&segment[8..12]);
        tcp[13] = TCP_RST;
    } else {
        // Sequence zero, acknowledging everything the segment occupied.
        let sequence = u32::from_be_bytes([segment[4], segment[5], segment[6], segment[7]]);
        let occupied = l4_length.saturating_sub(data_offset)
            + u32::from(flags & TCP_SYN != 0)
            + u32::from(flags & TCP_FIN != 0);
        tcp[8..12].copy_from_slice(&sequence.wrapping_add(occupied).to_be_bytes());
        tcp[13] = TCP_RST | TCP_ACK;
    }
    tcp[12] = ((TCP_HLEN / 4) as u8) << 4;
    F::pseudo(pseudo, frontend, client, protocol::TCP, TCP_HLEN as u16);
    let sum = checksum(tcp, sum(pseudo, 0)?)?;
    tcp[16..18].copy_from_slice(&sum);
    F::header(
        &mut reply.ip,
        frontend,
        client,
        protocol::TCP,
        TCP_HLEN as u16,
    );
    Ok(())
}

/// Makes the packet its port unreachable.
#[inline(never)]
fn unreachable<F: Reply, C: PacketCtx>(ctx: &C, packet: &Packet<F::Addr>) -> Result<(), Written> {
    let scratch = scratch::get().ok_or(Written::Untouched)?;
    let (reply, pseudo): (&mut Unreachable<F::Header, F::Quote>, _) = scratch.reply_and_pseudo();
    build_unreachable::<F, C>(ctx, packet, reply, pseudo).map_err(|_| Written::Untouched)?;
    write(ctx, reply)
}

#[inline(always)]
fn build_unreachable<F: Reply, C: PacketCtx>(
    ctx: &C,
    packet: &Packet<F::Addr>,
    reply: &mut Unreachable<F::Header, F::Quote>,
    pseudo: &mut F::Pseudo,
) -> Result<(), i64> {
    let (client, frontend) = (packet.source, packet.destination);
    let message = &mut reply.message;
    ctx.load_into(packet.l3_offset, &mut message.quote)?;
    let (kind, code) = F::PORT_UNREACHABLE;
    message.icmp = [kind, code, 0, 0, 0, 0, 0, 0];
    let icmp_length = (8 + F::HEADER_LEN + UDP_HLEN) as u16;
    let seed = if F::ICMP_PSEUDO {
        F::pseudo(pseudo, frontend, client, F::ICMP, icmp_length);
        sum(pseudo, 0)?
    } else {
        0
    };
    let sum = checksum(message, seed)?;
    message.icmp[2..4].copy_from_slice(&sum);
    F::header(&mut reply.ip, frontend, client, F::ICMP, icmp_length);
    Ok(())
}

/// Both families' headers are whole 32-bit words, as [`sum`] needs.
const _: () = {
    assert!(core::mem::size_of::<<V4 as Reply>::Header>() == <V4 as Reply>::HEADER_LEN);
    assert!(core::mem::size_of::<<V6 as Reply>::Header>() == <V6 as Reply>::HEADER_LEN);
    assert!(core::mem::size_of::<<V4 as Reply>::Quote>() % 4 == 0);
    assert!(core::mem::size_of::<<V6 as Reply>::Quote>() % 4 == 0);
};
