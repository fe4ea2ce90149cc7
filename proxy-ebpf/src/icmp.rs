//! ICMP and ICMPv6 errors about translated flows. A router (or the node) that cannot forward a
//! DNATed packet, or a backend with nothing on the port, answers with an error quoting the
//! packet as it saw it: to the backend's address. The client's stack matches the quote to its
//! socket, so the quote, and the error's source when the backend sent it, get the frontend
//! back (and the other way round for errors a client sends about a reply). That is what makes
//! path-MTU discovery (fragmentation needed, Packet Too Big), port unreachable and time
//! exceeded work through a Service, as netfilter's NAT of related ICMP does for kube-proxy.
//!
//! Rewritten: the quoted address and port, the quoted IPv4 header checksum, the quoted L4
//! checksum when the quote holds it (a router may quote only 8 bytes), and the error's own
//! checksum for each. Not handled (passed): an outer IPv6 header with extension headers, a
//! quote with IPv6 extension headers, a fragmented error, a client's error about a reply of a
//! masqueraded flow. Echo requests are never answered.
use proxy_common::{ConntrackKey, V4, V6, ct_flags, direction, protocol};

use crate::{
    csum::{self, word},
    ct,
    ctx::{L4Change, PacketCtx},
    lb,
    nat::Side,
    outcome::{Outcome, rewrite_error},
    reject::Reply,
};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ICMP_HLEN: usize = 8;
const ICMP_CHECK_OFFSET: usize = 2;
const IPV4_CHECK_OFFSET: usize = 10;
const TCP_CHECK_OFFSET: usize = 16;
const UDP_CHECK_OFFSET: usize = 6;

/// An error and the packet it quotes. Ports in network order.
struct Error<A> {
    l3: usize,
    icmp: usize,
    source: A,
    destination: A,
    quote: Quote<A>,
}

/// The quoted packet: the flow the error is about, as the error's sender saw it.
struct Quote<A> {
    l3: usize,
    l4: usize,
    source: (A, u16),
    destination: (A, u16),
    protocol: u8,
}

const V4_ICMP: u8 = 1;
const V6_ICMP: u8 = 58;

#[inline(always)]
fn carries_ports(protocol: u8) -> bool {
    matches!(protocol, protocol::TCP | protocol::UDP | protocol::SCTP)
}

/// The quoted ports: the first 4 bytes of the quoted L4 header, all a router must quote.
#[inline(always)]
fn quoted_ports<C: PacketCtx>(ctx: &C, l4: usize) -> Option<(u16, u16)> {
    let ports: [u8; 4] = ctx.load(l4).ok()?;
    Some((
        u16::from_ne_bytes([ports[0], ports[1]]),
        u16::from_ne_bytes([ports[2], ports[3]]),
    ))
}

/// Whom an error is on its way to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Toward {
    /// A client, about a packet of its flow DNATed to a backend.
    Client,
    /// A frontend, from a client about a reply it got from it.
    Frontend,
}

/// Translates the packet if it is an ICMP error about a packet DNATed to a backend, on its
/// way to the client. Its own BPF function (never inlined), as are the family bodies, so
/// their stack is not added to the service path's in the program's frame.
#[inline(never)]
pub(crate) fn to_client<C: PacketCtx>(ctx: &C) -> Outcome {
    by_family(ctx, Toward::Client)
}

/// Translates the packet if it is an ICMP error a client sends about a reply, on its way to
/// the frontend.
#[inline(never)]
pub(crate) fn to_backend<C: PacketCtx>(ctx: &C) -> Outcome {
    by_family(ctx, Toward::Frontend)
}

#[inline(always)]
fn by_family<C: PacketCtx>(ctx: &C, toward: Toward) -> Outcome {
    match ctx.load::<u16>(12).map(u16::from_be) {
        Ok(ETH_P_IP) => error::<V4, C>(ctx, toward),
        Ok(ETH_P_IPV6) => error::<V6, C>(ctx, toward),
        _ => Outcome::Pass,
    }
}

/// What a family adds: where its error and quote are, and which messages are errors.
trait Errors: Reply {
    /// The ICMP error after the Ethernet header, if it is one that quotes a TCP, UDP or SCTP
    /// packet.
    fn parse<C: PacketCtx>(ctx: &C) -> Option<Error<Self::Addr>>;
}

impl Errors for V4 {
    #[inline(always)]
    fn parse<C: PacketCtx>(ctx: &C) -> Option<Error<[u8; 4]>> {
        let l3 = ETH_HLEN;
        let header: [u8; 20] = ctx.load(l3).ok()?;
        let header_len = usize::from(header[0] & 0x0f) * 4;
        // An error fits in one packet; a fragment of one is not ours.
        let fragment = u16::from_be_bytes([header[6], header[7]]) & 0x3fff;
        if header[0] >> 4 != 4 || header_len < 20 || fragment != 0 || header[9] != V4_ICMP {
            return None;
        }
        let icmp = l3 + header_len;
        // Destination unreachable (fragmentation needed among them), time exceeded,
        // parameter problem.
        if !matches!(ctx.load::<u8>(icmp).ok()?, 3 | 11 | 12) {
            return None;
        }
        let quote_l3 = icmp + ICMP_HLEN;
        let quoted: [u8; 20] = ctx.load(quote_l3).ok()?;
        let quoted_len = usize::from(quoted[0] & 0x0f) * 4;
        let quoted_fragment = u16::from_be_bytes([quoted[6], quoted[7]]) & 0x1fff;
        if quoted[0] >> 4 != 4
            || quoted_len < 20
            || quoted_fragment != 0
            || !carries_ports(quoted[9])
        {
            return None;
        }
        let quote_l4 = quote_l3 + quoted_len;
        let (source_port, destination_port) = quoted_ports(ctx, quote_l4)?;
        let address = |h: &[u8; 20], at: usize| [h[at], h[at + 1], h[at + 2], h[at + 3]];
        Some(Error {
            l3,
            icmp,
            source: address(&header, 12),
            destination: address(&header, 16),
            quote: Quote {
                l3: quote_l3,
                l4: quote_l4,
                source: (address(&quoted, 12), source_port),
                destination: (address(&quoted, 16), destination_port),
                protocol: quoted[9],
            },
        })
    }
}

impl Errors for V6 {
    #[inline(always)]
    fn parse<C: PacketCtx>(ctx: &C) -> Option<Error<[u8; 16]>> {
        let l3 = ETH_HLEN;
        let first: [u8; 8] = ctx.load(l3).ok()?;
        if first[0] >> 4 != 6 || first[6] != V6_ICMP {
            return None;
        }
        let icmp = l3 + 40;
        // Destination unreachable, Packet Too Big, time exceeded, parameter problem.
        if !matches!(ctx.load::<u8>(icmp).ok()?, 1..=4) {
            return None;
        }
        let quote_l3 = icmp + ICMP_HLEN;
        let quoted: [u8; 8] = ctx.load(quote_l3).ok()?;
        if quoted[0] >> 4 != 6 || !carries_ports(quoted[6]) {
            return None;
        }
        let quote_l4 = quote_l3 + 40;
        let (source_port, destination_port) = quoted_ports(ctx, quote_l4)?;
        Some(Error {
            l3,
            icmp,
            source: ctx.load(l3 + 8).ok()?,
            destination: ctx.load(l3 + 24).ok()?,
            quote: Quote {
                l3: quote_l3,
                l4: quote_l4,
                source: (ctx.load(quote_l3 + 8).ok()?, source_port),
                destination: (ctx.load(quote_l3 + 24).ok()?, destination_port),
                protocol: quoted[6],
            },
        })
    }
}

/// One family's errors (its own BPF function, returning one byte).
#[inline(never)]
fn error<F: Errors, C: PacketCtx>(ctx: &C, toward: Toward) -> Outcome {
    translated::<F, C>(ctx, toward).unwrap_or_else(|error| error)
}

/// The flow's conntrack entry, keyed from the quote (the packet as the flow's far end got
/// it), names the address to restore.
#[inline(always)]
fn translated<F: Errors, C: PacketCtx>(ctx: &C, toward: Toward) -> Result<Outcome, Outcome> {
    let Some(error) = F::parse(ctx) else {
        return Ok(Outcome::Pass);
    };
    let quote = &error.quote;
    let flow = match toward {
        // The reverse entry, keyed as the backend sends: from the quote's destination.
        Toward::Client => direction::REVERSE,
        // The forward entry, keyed as the client sends: to the quote's source.
        Toward::Frontend => direction::FORWARD,
    };
    let key = ConntrackKey::raw(quote.destination, quote.source, quote.protocol, flow);
    // SAFETY: a map value read.
    let Some(entry) = (unsafe { F::conntrack().get(key) }) else {
        return Ok(Outcome::Pass);
    };
    match toward {
        Toward::Client => {
            let Some(frontend) = lb::frontend_of::<F>(entry.rev_nat_id) else {
                return Ok(Outcome::Pass);
            };
            translate::<F, C>(ctx, &error, Side::Destination, frontend)
        }
        // A masqueraded flow's backend knows the node, not the client: not translated.
        Toward::Frontend if entry.flags & ct_flags::SNAT != 0 => Ok(Outcome::Pass),
        Toward::Frontend => {
            let backend = ct::backend_of::<F>(entry);
            translate::<F, C>(ctx, &error, Side::Source, backend)
        }
    }
}

/// Rewrites the quote's `side` to `new`, and the error's other side too when it is the same
/// address (the quote's destination sent the error, or its source is where it goes).
#[inline(always)]
fn translate<F: Reply, C: PacketCtx>(
    ctx: &C,
    error: &Error<F::Addr>,
    side: Side,
    new: (F::Addr, u16),
) -> Result<Outcome, Outcome> {
    let quote = &error.quote;
    let (old, address_offset, port_offset, outer, outer_offset) = match side {
        Side::Destination => (
            quote.destination,
            F::DESTINATION_OFFSET,
            2,
            error.source,
            F::SOURCE_OFFSET,
        ),
        Side::Source => (
            quote.source,
            F::SOURCE_OFFSET,
            0,
            error.destination,
            F::DESTINATION_OFFSET,
        ),
    };
    let icmp_check = error.icmp + ICMP_CHECK_OFFSET;
    let mut message = 0u32;

    // The quoted IP header: its address, and the checksum that covers it (IPv4 only).
    let address_diff = csum::diff(&old.0, &new.0, 0).map_err(rewrite_error)?;
    if F::ICMP == V4_ICMP {
        let check = quote.l3 + IPV4_CHECK_OFFSET;
        message = adjust(ctx, check, address_diff, message)?;
    }
    ctx.store(quote.l3 + address_offset, &new.0)
        .map_err(rewrite_error)?;
    message = add(message, address_diff);

    // The quoted L4 header: its port, and its checksum when quoted (and not UDP's "none").
    let port_diff = csum::diff(&word(old.1), &word(new.1), 0).map_err(rewrite_error)?;
    if old.1 != new.1 {
        ctx.store(quote.l4 + port_offset, &new.1)
            .map_err(rewrite_error)?;
        message = add(message, port_diff);
    }
    let l4_check = match quote.protocol {
        protocol::TCP => Some(quote.l4 + TCP_CHECK_OFFSET),
        protocol::UDP => Some(quote.l4 + UDP_CHECK_OFFSET),
        _ => None, // SCTP's CRC32c is no ones'-complement sum; nobody checks a quote's.
    };
    if let Some(check) = l4_check
        && let Ok(before) = ctx.load::<u16>(check)
        && !(quote.protocol == protocol::UDP && before == 0)
    {
        message = adjust(ctx, check, add(address_diff, port_diff), message)?;
    }

    // The error's own checksum, for all of the quote's changes.
    let change = L4Change {
        pseudo_header: false,
        zero_means_none: false,
    };
    ctx.l4_csum_add(icmp_check, message, change)
        .map_err(rewrite_error)?;

    // The error's address: the backend that sent it, or the frontend it goes to.
    if outer == old.0 {
        let pseudo = F::ICMP_PSEUDO.then_some((
            icmp_check,
            L4Change {
                pseudo_header: true,
                zero_means_none: false,
            },
        ));
        F::rewrite_address(ctx, error.l3, error.l3 + outer_offset, old.0, new.0, pseudo)
            .map_err(rewrite_error)?;
    }
    Ok(Outcome::IcmpError)
}

/// Adds `diff` to the quoted checksum at `check` and returns `message` plus the change that
/// made to the bytes the error's own checksum covers.
#[inline(always)]
fn adjust<C: PacketCtx>(ctx: &C, check: usize, diff: u32, message: u32) -> Result<u32, Outcome> {
    let before: u16 = ctx.load(check).map_err(rewrite_error)?;
    ctx.csum_add(check, diff).map_err(rewrite_error)?;
    let after: u16 = ctx.load(check).map_err(rewrite_error)?;
    csum::diff(&word(before), &word(after), message).map_err(rewrite_error)
}

/// Ones'-complement addition of two unfolded sums.
#[inline(always)]
fn add(a: u32, b: u32) -> u32 {
    let (sum, carry) = a.overflowing_add(b);
    sum.wrapping_add(u32::from(carry))
}

const _: () = assert!(<V4 as Reply>::ICMP == V4_ICMP);
const _: () = assert!(<V6 as Reply>::ICMP == V6_ICMP);
