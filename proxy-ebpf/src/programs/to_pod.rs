//! TC egress on a pod interface: packets going to a pod. A backend's reply to a translated
//! flow gets the service address back, so the client sees the frontend it addressed.
use aya_ebpf::{macros::classifier, programs::TcContext};
use proxy_common::{V4, V6};

use crate::{
    ct,
    ctx::PacketCtx,
    family::Family,
    icmp, lb,
    nat::{self, Side},
    outcome::{Outcome, rewrite_error},
    parse::{self, EtherType, Packet, Parse},
};

#[classifier]
pub(crate) fn to_pod(ctx: TcContext) -> i32 {
    let served = match parse::ether_type(&ctx) {
        Some(EtherType::V4) => service::<V4>(&ctx),
        Some(EtherType::V6) => service::<V6>(&ctx),
        None => None,
    };
    super::finish_tc(served.unwrap_or_else(|| icmp::to_client(&ctx)))
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
    let Some((address, port)) = lb::frontend_of::<F>(entry.rev_nat_id) else {
        return Ok(Outcome::Pass);
    };
    ct::touch(entry, packet.tcp_flags, ct::now());
    let tuple = ct::Tuple {
        client: packet.destination(),
        frontend: (address, port),
        protocol: packet.protocol,
    };
    ct::answered::<F>(entry, &tuple);
    nat::rewrite::<F, C>(ctx, packet, Side::Source, address, port).map_err(rewrite_error)?;
    Ok(Outcome::ReverseNat)
}
