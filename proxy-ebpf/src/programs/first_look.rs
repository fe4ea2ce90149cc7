//! The first look of the TC programs on a pod interface, before any parse: most packets
//! through a node are no Service's (pod to pod, and every packet of a connection the socket
//! hooks already sent straight to a backend), and their destination says so. Passing them on
//! that alone spares each the parse, the calls of the service path and their lookups; the
//! rest goes on to the full path, which decides as before (each look here is one the full
//! path makes too, so the two never disagree).
use aya_ebpf::programs::TcContext;
use proxy_common::{V4, V6, protocol};

use crate::{ct, ctx::PacketCtx, family::Family, lb, snat};

const ETH_HLEN: usize = 14;
const IPV6_HLEN: usize = 40;

/// Where a family's destination and L4 header are, read straight from the packet.
pub(super) trait Look: Family {
    /// The destination address after the Ethernet header.
    #[inline(always)]
    fn destination(ctx: &TcContext) -> Option<Self::Addr> {
        ctx.header(ETH_HLEN + Self::DESTINATION_OFFSET).ok()
    }

    /// The destination port (network order) of a whole TCP, UDP or SCTP packet right after
    /// the IP header (no options' walk, no fragment): `None` for anything else, which the
    /// full path parses.
    fn destination_port(ctx: &TcContext) -> Option<u16>;
}

impl Look for V4 {
    #[inline(always)]
    fn destination_port(ctx: &TcContext) -> Option<u16> {
        let first: u8 = ctx.header(ETH_HLEN).ok()?;
        // Flags and fragment offset: any fragment goes the full way.
        let fragment: u16 = ctx.header(ETH_HLEN + 6).ok()?;
        let next: u8 = ctx.header(ETH_HLEN + 9).ok()?;
        if first >> 4 != 4 || u16::from_be(fragment) & 0x3fff != 0 || !with_ports(next) {
            return None;
        }
        let header_len = usize::from(first & 0x0f) * 4;
        if header_len < 20 {
            return None;
        }
        ctx.header(ETH_HLEN + header_len + 2).ok()
    }
}

impl Look for V6 {
    #[inline(always)]
    fn destination_port(ctx: &TcContext) -> Option<u16> {
        let next: u8 = ctx.header(ETH_HLEN + 6).ok()?;
        // Extension headers (a fragment header among them) go the full way.
        if !with_ports(next) {
            return None;
        }
        ctx.header(ETH_HLEN + IPV6_HLEN + 2).ok()
    }
}

#[inline(always)]
fn with_ports(protocol: u8) -> bool {
    matches!(protocol, protocol::TCP | protocol::UDP | protocol::SCTP)
}

/// Whether a packet a pod sends is nobody's: to a pod address while no frontend lies inside
/// `--cluster-cidr` (`cluster_clear`), and no reply to a masqueraded flow
/// ([`snat::may_reply_to`]). What the ingress service path's lookup says of it, and with it,
/// [`super::ingress::lookup`], before the parse. Its own BPF function: its stack is free
/// again when the full path runs.
#[inline(never)]
pub(super) fn to_nobody<F: Look>(ctx: &TcContext) -> bool {
    let Some(destination) = F::destination(ctx) else {
        return false;
    };
    if !snat::in_cluster_cidr::<F>(destination) || !lb::cluster_clear::<F>() {
        return false;
    }
    match F::destination_port(ctx) {
        Some(port) => !snat::may_reply_to::<F>(destination, port),
        None => false,
    }
}

/// Whether a packet going to a pod (or out of a device) answers no flow of the TC path: its
/// destination is no client with a flow that may live ([`ct::may_answer`]), so no reverse
/// entry, remembered fragment or ICMP error translation can be its. Its own BPF function.
#[inline(never)]
pub(super) fn answers_nobody<F: Look>(ctx: &TcContext) -> bool {
    F::destination(ctx).is_some_and(|destination| !ct::may_answer(destination))
}
