//! Packet parsing: Ethernet, IPv4 or IPv6 (extension headers skipped), then the L4 ports.
//! Anything we cannot parse, or that has no ports (a non-first fragment), is `None`: not ours.
use proxy_common::{LbFamily, V4, V6, protocol};

use crate::ctx::PacketCtx;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

const IPV6_HLEN: usize = 40;
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_AUTH: u8 = 51;
const NEXTHDR_DEST: u8 = 60;
/// Extension headers walked before giving up (the verifier needs a bound; real traffic has few).
const MAX_IPV6_EXTENSIONS: usize = 8;

const TCP_FLAGS_OFFSET: usize = 13;

/// A parsed service-candidate packet of one family. `A` is the address (`[u8; 4]`/`[u8; 16]`).
pub(crate) struct Packet<A> {
    pub l3_offset: usize,
    pub l4_offset: usize,
    pub source: A,
    pub destination: A,
    /// Network byte order, as on the wire.
    pub source_port: u16,
    /// Network byte order, as on the wire.
    pub destination_port: u16,
    pub protocol: u8,
    /// TCP flags byte (0 for other protocols).
    pub tcp_flags: u8,
    /// When this is the first fragment of several (the rest, without ports, follow its
    /// translation: [`crate::frag`]), where its datagram's identification is, from
    /// `l3_offset`: IPv4's 16 bits or the IPv6 fragment header's 32. 0: not a first fragment.
    /// (An offset, not the value, to keep the packet small: it is on the service path's stack.)
    pub fragment_id_at: u16,
}

/// A fragment after the first of an IP datagram: no ports, the datagram's identity only.
pub(crate) struct Fragment<A> {
    pub l3_offset: usize,
    pub source: A,
    pub destination: A,
    pub id: u32,
    pub protocol: u8,
}

impl<A: Copy> Packet<A> {
    #[inline(always)]
    pub(crate) fn source(&self) -> (A, u16) {
        (self.source, self.source_port)
    }

    #[inline(always)]
    pub(crate) fn destination(&self) -> (A, u16) {
        (self.destination, self.destination_port)
    }
}

/// The family an Ethernet frame carries.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum EtherType {
    V4,
    V6,
}

#[inline(always)]
pub(crate) fn ether_type<C: PacketCtx>(ctx: &C) -> Option<EtherType> {
    match u16::from_be(ctx.header::<u16>(12).ok()?) {
        ETH_P_IP => Some(EtherType::V4),
        ETH_P_IPV6 => Some(EtherType::V6),
        _ => None,
    }
}

/// A family's parser, so a program body generic over the family can parse its packet.
pub(crate) trait Parse: LbFamily {
    /// The packet after the Ethernet header, if it is one of this family with ports.
    fn parse<C: PacketCtx>(ctx: &C) -> Option<Packet<Self::Addr>>;
    /// The packet after the Ethernet header, if it is a fragment after the first.
    fn fragment<C: PacketCtx>(ctx: &C) -> Option<Fragment<Self::Addr>>;
}

/// `F::parse`, in a BPF function of its own ([`parse_into`]): the headers it loads are not on
/// its caller's stack. The packet is not zeroed first: a 56-byte memset (a call into a byte
/// loop) on every packet cost more than the parse's own loads.
#[inline(always)]
pub(crate) fn parsed<F: Parse, C: PacketCtx>(ctx: &C) -> Option<Packet<F::Addr>> {
    let mut packet = core::mem::MaybeUninit::<Packet<F::Addr>>::uninit();
    // SAFETY: `parse_into` wrote the whole packet when it says it found one.
    parse_into::<F, C>(ctx, packet.as_mut_ptr()).then(|| unsafe { packet.assume_init() })
}

/// [`parsed`] into a packet zeroed first, for the ingress service path: its frame is at the
/// stack's limit, and the compiler gives an uninitialized packet 8 bytes more of it. Zeroed
/// without a `memset` call ([`crate::mem::zero`]): that byte loop cost every packet through
/// `from_pod` a sixth of its time.
#[inline(always)]
pub(crate) fn parsed_zeroed<F: Parse, C: PacketCtx>(ctx: &C) -> Option<Packet<F::Addr>> {
    let mut packet = core::mem::MaybeUninit::<Packet<F::Addr>>::uninit();
    // SAFETY: a packet (8-aligned, a whole number of words), all of whose fields may be zero.
    unsafe { crate::mem::zero(packet.as_mut_ptr()) };
    // SAFETY: as in `parsed`.
    parse_into::<F, C>(ctx, packet.as_mut_ptr()).then(|| unsafe { packet.assume_init() })
}

/// Parses into `out` and says whether it found a packet (then every byte of `out` is
/// written: a packet has no padding): a scalar return, never a pointer to the caller's stack
/// in `r0` (an `sret` function may leave one there, which the verifier refuses), and a value
/// without padding (an `Option` around it has some, which LLVM may copy from a register it
/// never set, which the verifier refuses too).
#[inline(never)]
fn parse_into<F: Parse, C: PacketCtx>(ctx: &C, out: *mut Packet<F::Addr>) -> bool {
    match F::parse(ctx) {
        Some(packet) => {
            // SAFETY: `out` is the caller's packet, writable, aligned.
            unsafe { out.write(packet) };
            true
        }
        None => false,
    }
}

impl Parse for V4 {
    #[inline(always)]
    fn parse<C: PacketCtx>(ctx: &C) -> Option<Packet<[u8; 4]>> {
        parse_v4(ctx, ETH_HLEN)
    }

    #[inline(always)]
    fn fragment<C: PacketCtx>(ctx: &C) -> Option<Fragment<[u8; 4]>> {
        fragment_v4(ctx, ETH_HLEN)
    }
}

impl Parse for V6 {
    #[inline(always)]
    fn parse<C: PacketCtx>(ctx: &C) -> Option<Packet<[u8; 16]>> {
        parse_v6(ctx, ETH_HLEN)
    }

    #[inline(always)]
    fn fragment<C: PacketCtx>(ctx: &C) -> Option<Fragment<[u8; 16]>> {
        fragment_v6(ctx, ETH_HLEN)
    }
}

#[inline(always)]
fn parse_v4<C: PacketCtx>(ctx: &C, l3: usize) -> Option<Packet<[u8; 4]>> {
    let header: [u8; 20] = ctx.header(l3).ok()?;
    if header[0] >> 4 != 4 {
        return None;
    }
    let header_len = usize::from(header[0] & 0x0f) * 4;
    if header_len < 20 {
        return None;
    }
    // A non-first fragment carries no ports: [`fragment_v4`] reads it.
    let flags_offset = u16::from_be_bytes([header[6], header[7]]);
    if flags_offset & IPV4_OFFSET_MASK != 0 {
        return None;
    }
    let fragment_id_at = if flags_offset & IPV4_MORE_FRAGMENTS != 0 {
        IPV4_ID_OFFSET
    } else {
        0
    };
    let protocol = header[9];
    let l4 = l3 + header_len;
    let (source_port, destination_port, tcp_flags) = ports(ctx, l4, protocol)?;
    Some(Packet {
        l3_offset: l3,
        l4_offset: l4,
        source: [header[12], header[13], header[14], header[15]],
        destination: [header[16], header[17], header[18], header[19]],
        source_port,
        destination_port,
        protocol,
        tcp_flags,
        fragment_id_at,
    })
}

const IPV4_OFFSET_MASK: u16 = 0x1fff;
const IPV4_ID_OFFSET: u16 = 4;
/// The identification's offset in an IPv6 fragment header.
const IPV6_FRAGMENT_ID_OFFSET: usize = 4;
const IPV4_MORE_FRAGMENTS: u16 = 0x2000;

/// An IPv4 fragment after the first.
#[inline(always)]
fn fragment_v4<C: PacketCtx>(ctx: &C, l3: usize) -> Option<Fragment<[u8; 4]>> {
    let header: [u8; 20] = ctx.load(l3).ok()?;
    if header[0] >> 4 != 4 {
        return None;
    }
    if u16::from_be_bytes([header[6], header[7]]) & IPV4_OFFSET_MASK == 0 {
        return None;
    }
    Some(Fragment {
        l3_offset: l3,
        source: [header[12], header[13], header[14], header[15]],
        destination: [header[16], header[17], header[18], header[19]],
        id: u32::from(u16::from_be_bytes([header[4], header[5]])),
        protocol: header[9],
    })
}

/// An IPv6 fragment after the first: its fragment header right after the fixed header (where
/// a sender puts it when there is no other extension header to come before it).
#[inline(always)]
fn fragment_v6<C: PacketCtx>(ctx: &C, l3: usize) -> Option<Fragment<[u8; 16]>> {
    let first: [u8; 8] = ctx.load(l3).ok()?;
    if first[0] >> 4 != 6 || first[6] != NEXTHDR_FRAGMENT {
        return None;
    }
    let ext: [u8; 8] = ctx.load(l3 + IPV6_HLEN).ok()?;
    if u16::from_be_bytes([ext[2], ext[3]]) & 0xfff8 == 0 {
        return None;
    }
    Some(Fragment {
        l3_offset: l3,
        source: ctx.load(l3 + 8).ok()?,
        destination: ctx.load(l3 + 24).ok()?,
        id: u32::from_be_bytes([ext[4], ext[5], ext[6], ext[7]]),
        protocol: ext[0],
    })
}

#[inline(always)]
fn parse_v6<C: PacketCtx>(ctx: &C, l3: usize) -> Option<Packet<[u8; 16]>> {
    // Through the load helper: read straight from the packet, the fixed header's 40 bytes
    // grew the ingress service path's frame past the stack's limit.
    let header: [u8; IPV6_HLEN] = ctx.load(l3).ok()?;
    if header[0] >> 4 != 6 {
        return None;
    }
    let mut next = header[6];
    let mut offset = l3 + IPV6_HLEN;
    let mut found = false;
    let mut fragment_id_at = 0u16;
    for _ in 0..MAX_IPV6_EXTENSIONS {
        match next {
            protocol::TCP | protocol::UDP | protocol::SCTP => {
                found = true;
                break;
            }
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST => {
                let ext: [u8; 2] = ctx.load(offset).ok()?;
                next = ext[0];
                offset += (usize::from(ext[1]) + 1) * 8;
            }
            NEXTHDR_FRAGMENT => {
                let ext: [u8; 8] = ctx.load(offset).ok()?;
                let offset_flags = u16::from_be_bytes([ext[2], ext[3]]);
                if offset_flags & 0xfff8 != 0 {
                    return None;
                }
                if offset_flags & 1 != 0 {
                    fragment_id_at = (offset - l3 + IPV6_FRAGMENT_ID_OFFSET) as u16;
                }
                next = ext[0];
                offset += 8;
            }
            NEXTHDR_AUTH => {
                let ext: [u8; 2] = ctx.load(offset).ok()?;
                next = ext[0];
                offset += (usize::from(ext[1]) + 2) * 4;
            }
            _ => return None,
        }
    }
    if !found {
        return None;
    }
    let (source_port, destination_port, tcp_flags) = ports(ctx, offset, next)?;
    let mut source = [0u8; 16];
    let mut destination = [0u8; 16];
    source.copy_from_slice(&header[8..24]);
    destination.copy_from_slice(&header[24..40]);
    Some(Packet {
        l3_offset: l3,
        l4_offset: offset,
        source,
        destination,
        source_port,
        destination_port,
        protocol: next,
        tcp_flags,
        fragment_id_at,
    })
}

/// Reads the ports (and TCP flags). Loading the whole fixed L4 header proves the packet is not
/// truncated, so a later checksum rewrite cannot fail halfway.
#[inline(always)]
fn ports<C: PacketCtx>(ctx: &C, l4: usize, protocol: u8) -> Option<(u16, u16, u8)> {
    match protocol {
        protocol::TCP => {
            let header: [u8; 20] = ctx.header(l4).ok()?;
            Some((port(&header, 0), port(&header, 2), header[TCP_FLAGS_OFFSET]))
        }
        protocol::UDP => {
            let header: [u8; 8] = ctx.header(l4).ok()?;
            Some((port(&header, 0), port(&header, 2), 0))
        }
        protocol::SCTP => {
            let header: [u8; 12] = ctx.header(l4).ok()?;
            Some((port(&header, 0), port(&header, 2), 0))
        }
        _ => None,
    }
}

/// The port at `at`, kept in network byte order (the raw bytes).
#[inline(always)]
fn port(header: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([header[at], header[at + 1]])
}
