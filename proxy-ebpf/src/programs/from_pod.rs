//! TC ingress on a pod interface: packets a pod sends. Service traffic is DNATed to a backend
//! and tracked, so the rest of the flow follows and the replies can be translated back.
use aya_ebpf::{helpers::bpf_get_prandom_u32, macros::classifier, programs::TcContext};
use proxy_common::{RawAddress, V4, V6, protocol, service_flags};

use crate::{
    ct::{self, Tuple},
    ctx::PacketCtx,
    icmp, lb,
    nat::{self, Side},
    outcome::{Outcome, rewrite_error},
    parse::{self, EtherType, Packet, Parse},
    reject::{self, Reply},
};

#[classifier]
pub(crate) fn from_pod(ctx: TcContext) -> i32 {
    let served = match parse::ether_type(&ctx) {
        Some(EtherType::V4) => service::<V4>(&ctx),
        Some(EtherType::V6) => service::<V6>(&ctx),
        None => None,
    };
    super::finish_tc(served.unwrap_or_else(|| icmp::to_backend(&ctx)))
}

/// The service path of one family; `None` if the packet has no ports. Its own BPF function
/// (never inlined), so its stack, the other family's and the ICMP path's are not added up in
/// one frame.
#[inline(never)]
fn service<F: Reply + Parse>(ctx: &TcContext) -> Option<Outcome> {
    let packet = F::parse(ctx)?;
    Some(super::either(forward::<F, _>(ctx, &packet)))
}

/// Translates a packet addressed to a service frontend.
#[inline(always)]
fn forward<F: Reply, C: PacketCtx>(ctx: &C, packet: &Packet<F::Addr>) -> Result<Outcome, Outcome> {
    // The service entry is looked up first: a deleted service stops translation at once, even
    // for flows that still have conntrack entries. Pods are inside the cluster.
    let Some(service) = lb::lookup::<F>(
        packet.destination,
        packet.destination_port,
        packet.protocol,
        true,
    ) else {
        return Ok(Outcome::Pass);
    };
    let tuple = Tuple {
        client: packet.source(),
        frontend: packet.destination(),
        protocol: packet.protocol,
    };
    let now = ct::now();

    let mut outcome = Outcome::DnatNew;
    if let Some(entry) = ct::forward::<F>(&tuple)
        && entry.rev_nat_id == service.entry.rev_nat_id
        && !ct::reopens(entry, packet.tcp_flags)
        && !ct::expired::<F>(entry, &tuple, now)
    {
        // A TCP connection keeps its backend for life, like a netfilter NAT binding, even
        // once the backend has left the Service. Other flows follow the Service: if their
        // backend is gone they are balanced again (kube-proxy clears their conntrack).
        if packet.protocol == protocol::TCP || lb::backend_exists::<F>(entry.backend_id) {
            ct::touch(entry, packet.tcp_flags, now);
            let (address, port) = ct::backend_of::<F>(entry);
            nat::rewrite::<F, C>(ctx, packet, Side::Destination, address, port)
                .map_err(rewrite_error)?;
            return Ok(Outcome::DnatEstablished);
        }
        outcome = Outcome::Repick;
    }

    if service.entry.count == 0 && service.entry.flags & service_flags::LOCAL != 0 {
        return Ok(Outcome::DropNoLocalEndpoint);
    }
    // SAFETY: no arguments.
    let random = unsafe { bpf_get_prandom_u32() };
    let client = lb::Client::Address(packet.source.to_wide());
    let Some(chosen) = lb::select_for::<F>(&service, client, random, now) else {
        return Ok(reject::reject::<F, C>(ctx, packet));
    };
    ct::create::<F>(
        &tuple,
        service.entry.rev_nat_id,
        &chosen,
        packet.tcp_flags,
        now,
    )
    .map_err(|_| Outcome::ConntrackError)?;
    let backend = chosen.backend;
    nat::rewrite::<F, C>(
        ctx,
        packet,
        Side::Destination,
        backend.address,
        backend.port,
    )
    .map_err(rewrite_error)?;
    Ok(outcome)
}
