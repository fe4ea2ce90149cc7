//! The reverse path of TC egress, shared by the pod interfaces ([`super::to_pod`]) and the
//! node's devices ([`super::to_device`]): a backend's reply to a translated flow gets the
//! service address back, so the client sees the frontend it addressed.
use aya_ebpf::programs::TcContext;
use proxy_common::{V4, V6, fragment_side, monitor_kind::REVERSE_NAT_MISS};

use super::first_look;
use crate::{
    ct,
    ctx::PacketCtx,
    family::Family,
    frag, icmp, lb, monitor,
    nat::{self, Side},
    outcome::{Outcome, rewrite_error},
    parse::{self, EtherType, Packet, Parse},
    stats,
};

/// The outcome of one packet at a TC egress hook.
#[inline(always)]
pub(super) fn egress(ctx: &TcContext) -> Outcome {
    // Most packets answer no flow of ours: passed unparsed.
    match parse::ether_type(ctx) {
        Some(EtherType::V4) if first_look::answers_nobody::<V4>(ctx) => Outcome::Pass,
        Some(EtherType::V6) if first_look::answers_nobody::<V6>(ctx) => Outcome::Pass,
        Some(EtherType::V4) => family::<V4>(ctx),
        Some(EtherType::V6) => family::<V6>(ctx),
        None => Outcome::Pass,
    }
}

/// One family's paths, each a BPF function of its own, called one after the other.
#[inline(always)]
fn family<F: Family + Parse>(ctx: &TcContext) -> Outcome {
    service::<F>(ctx)
        .or_else(|| frag::translate::<F, _>(ctx))
        .unwrap_or_else(|| icmp::to_client(ctx))
}

/// The service path of one family; `None` if the packet has no ports. Its own BPF function
/// (never inlined), so its stack, the other family's and the ICMP path's are not added up in
/// one frame.
#[inline(never)]
fn service<F: Family + Parse>(ctx: &TcContext) -> Option<Outcome> {
    let packet = parse::parsed::<F, _>(ctx)?;
    Some(super::either(reverse::<F, _>(ctx, &packet)))
}

/// Restores the service address on a backend's reply to a translated flow.
#[inline(always)]
fn reverse<F: Family, C: PacketCtx>(ctx: &C, packet: &Packet<F::Addr>) -> Result<Outcome, Outcome> {
    let Some(entry) = ct::reverse::<F>(packet.source(), packet.destination(), packet.protocol)
    else {
        return Ok(Outcome::Pass);
    };
    if ct::answers_another(entry, packet.tcp_flags) {
        ct::forget_reverse::<F>(packet.source(), packet.destination(), packet.protocol);
        return Ok(Outcome::Pass);
    }
    let Some((address, port)) = lb::frontend_of::<F>(entry.rev_nat_id) else {
        let what = monitor::what(REVERSE_NAT_MISS, Outcome::Pass, C::HOOK);
        monitor::emit(packet, what, entry.rev_nat_id, None);
        return Ok(Outcome::Pass);
    };
    let now = ct::now();
    ct::touch(entry, packet.tcp_flags, now);
    ct::moved(packet.destination, now);
    stats::packet::<F, C>(ctx, entry.rev_nat_id, entry.backend_id, stats::FROM);
    let tuple = ct::Tuple {
        client: packet.destination(),
        frontend: (address, port),
        protocol: packet.protocol,
    };
    ct::answered::<F>(entry, &tuple);
    nat::rewrite::<F, C>(ctx, packet, Side::Source, address, port).map_err(rewrite_error)?;
    frag::remember::<F, C>(ctx, packet, fragment_side::SOURCE, &address);
    Ok(Outcome::ReverseNat)
}
