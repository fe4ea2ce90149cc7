//! TC egress on a pod interface: packets going to a pod. A backend's reply to a translated
//! flow gets the service address back, so the client sees the frontend it addressed.
use aya_ebpf::{macros::classifier, programs::TcContext};
use proxy_common::{V4, V6};

use crate::{
    ct,
    ctx::PacketCtx,
    family::Family,
    lb,
    nat::{self, Side},
    outcome::{Outcome, rewrite_error},
    parse::{self, Packet, Parsed},
};

#[classifier]
pub(crate) fn to_pod(ctx: TcContext) -> i32 {
    super::finish_tc(match parse::parse(&ctx) {
        Some(Parsed::V4(packet)) => reverse::<V4, _>(&ctx, &packet),
        Some(Parsed::V6(packet)) => reverse::<V6, _>(&ctx, &packet),
        None => Ok(Outcome::Pass),
    })
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
