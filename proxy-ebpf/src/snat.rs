//! Masquerade, as kube-proxy's `KUBE-MARK-MASQ` and `MASQUERADE` do it: a flow through a
//! Service is SNATed to the node when its client is outside `--cluster-cidr` of its family
//! (the local-traffic detector), when it is a hairpin (a pod reaching itself through its own
//! Service, whose reply would otherwise never come back through the datapath), and always with
//! `--masquerade-all`. The source is the address the node's route to the backend picks (the
//! FIB lookup's, as `MASQUERADE` takes the outgoing interface's), the port one of
//! `--masquerade-ports`, so a masqueraded flow never takes a port of the node's own sockets.
//!
//! Both translations of a masqueraded flow happen at a pod interface's ingress, before the
//! node's routing, which would refuse a packet from one of its own addresses (or from a
//! service address): the packet is sent straight out of its route's interface instead
//! (`bpf_redirect_neigh`). The flow lives in conntrack like any other: its forward entry holds
//! the node address and port, its reverse entry is keyed to them and holds the client.
use aya_ebpf::helpers::bpf_get_prandom_u32;
use proxy_common::{
    RawAddress, config::flags, ct_flags, family::within, monitor_kind::NEW_FLOW, snat_marks,
};

use crate::{
    config,
    ct::{self, Tuple},
    ctx::PacketCtx,
    family::Family,
    lb::{self, Chosen},
    maps, monitor,
    nat::{self, Side},
    outcome::Outcome,
    parse::{Packet, Parse},
    stats,
};

/// Random ports tried for a new flow, after the client's own, before giving up (the verifier
/// needs a bound: 32,
/// Cilium's `SNAT_COLLISION_RETRIES`, exceeds its complexity limit in the XDP program).
const ATTEMPTS: u32 = 8;

/// Whether a new flow from `client` to `backend` is masqueraded.
#[inline(always)]
pub(crate) fn needed<F: Family>(client: F::Addr, backend: F::Addr) -> bool {
    if client == backend {
        return true; // A hairpin.
    }
    if config::field!(flags) & flags::MASQUERADE_ALL != 0 {
        return true;
    }
    // Without a cluster CIDR nothing is known to be outside (kube-proxy's no-op detector).
    let (network, prefix) = F::cluster();
    prefix != 0 && !within(&client, &network, prefix)
}

/// Whether `address` is inside `--cluster-cidr` of its family (a pod's: never a cluster IP,
/// which Kubernetes keeps out of the pod range). `false` without a cluster CIDR.
#[inline(always)]
pub(crate) fn in_cluster_cidr<F: Family>(address: F::Addr) -> bool {
    let (network, prefix) = F::cluster();
    prefix != 0 && within(&address, &network, prefix)
}

/// A new flow to `chosen`, masqueraded: routed, given a free port, recorded, translated and
/// sent out of its route's interface. Each step is a BPF function of its own, called one
/// after the other from the service path's frame, so their stacks never add up.
#[inline(always)]
pub(crate) fn new_flow<F: Family, C: PacketCtx>(
    ctx: &C,
    packet: &Packet<F::Addr>,
    rev_nat_id: u32,
    chosen: &Chosen<F::Addr>,
    now: u64,
) -> Outcome {
    let backend = (chosen.backend.address, chosen.backend.port);
    let mut found = (0, backend.0);
    if !route_to::<F, C>(ctx, backend.0, &mut found) {
        return Outcome::SnatError;
    }
    let (ifindex, node) = found;
    if !remember_source::<F>(&node) {
        return Outcome::SnatError;
    }
    let Some(port) = allocate::<F>(packet, rev_nat_id, chosen, now, node) else {
        return Outcome::SnatError;
    };
    let what = monitor::what(NEW_FLOW, Outcome::SnatNew, C::HOOK);
    monitor::emit(packet, what, rev_nat_id, Some(chosen));
    let rewrites = [(Side::Destination, backend), (Side::Source, (node, port))];
    let ids = u64::from(rev_nat_id) << 32 | u64::from(chosen.id);
    send_new::<F, C>(ctx, packet, &rewrites, ifindex, ids)
}

/// The interface of the node's route to `destination`, and the source address it picks, into
/// `found` (a BPF function returns one register, so no tuple).
#[inline(never)]
fn route_to<F: Family, C: PacketCtx>(
    ctx: &C,
    destination: F::Addr,
    found: &mut (u32, F::Addr),
) -> bool {
    match route::<F, C>(ctx, destination, true) {
        Some(route) => {
            *found = route;
            true
        }
        None => false,
    }
}

#[inline(always)]
fn route<F: Family, C: PacketCtx>(
    ctx: &C,
    destination: F::Addr,
    source: bool,
) -> Option<(u32, F::Addr)> {
    let route = ctx.route(F::AF, destination.to_wide(), source)?;
    Some((route.ifindex, F::Addr::from_wide(&route.source)))
}

/// [`send`] for a new flow, as a BPF function of its own, counting it (`ids`: its frontend's
/// reverse-NAT id in the high half, its backend's id in the low: a BPF function takes five
/// arguments). Counted here, not in the service path's frame, which has no room to spare.
#[inline(never)]
fn send_new<F: Family, C: PacketCtx>(
    ctx: &C,
    packet: &Packet<F::Addr>,
    rewrites: &[(Side, (F::Addr, u16)); 2],
    ifindex: u32,
    ids: u64,
) -> Outcome {
    let what = stats::TO | stats::NEW;
    stats::count::<F>((ids >> 32) as u32, ids as u32, ctx.length(), what);
    send::<F, C>(ctx, packet, *rewrites, ifindex, Outcome::SnatNew)
}

/// A packet of a known masqueraded flow (its forward entry touched already). Parses the
/// packet again: called beside the service path, not from it.
#[inline(never)]
pub(crate) fn established<F: Family + Parse, C: PacketCtx>(ctx: &C) -> Outcome {
    let Some(packet) = F::parse(ctx) else {
        return Outcome::Pass;
    };
    let packet = &packet;
    let tuple = Tuple {
        client: packet.source(),
        frontend: packet.destination(),
        protocol: packet.protocol,
    };
    let Some(entry) = ct::forward::<F>(&tuple) else {
        return Outcome::Pass; // Gone since: the next packet starts afresh.
    };
    let backend = ct::backend_of::<F>(entry);
    let node = ct::nat_of::<F>(entry);
    stats::packet::<F, C>(ctx, entry.rev_nat_id, entry.backend_id, stats::TO);
    ct::client_closing::<F>(backend, node, packet.protocol, packet.tcp_flags);
    // The interface alone: the flow's node address is in its entry.
    let Some((ifindex, _)) = route::<F, C>(ctx, backend.0, false) else {
        return Outcome::SnatError;
    };
    send::<F, C>(
        ctx,
        packet,
        [(Side::Destination, backend), (Side::Source, node)],
        ifindex,
        Outcome::SnatEstablished,
    )
}

/// Whether a packet to no frontend may be a backend's reply to a masqueraded flow: to a port
/// of `--masquerade-ports` on an address masqueraded flows leave from ([`remember_source`]).
/// Only those take [`reply`]'s conntrack lookup: pod-to-pod traffic to a port of the range
/// (a target port such as 8080) pays one lookup in a map of a few entries, not a conntrack one.
#[inline(always)]
pub(crate) fn may_reply<F: Family>(packet: &Packet<F::Addr>) -> bool {
    may_reply_to::<F>(packet.destination, packet.destination_port)
}

/// [`may_reply`] for a packet to `destination` on `port` (network order).
#[inline(always)]
pub(crate) fn may_reply_to<F: Family>(destination: F::Addr, port: u16) -> bool {
    let port = u16::from_be(port);
    if port < config::field!(snat_port_min) || port > config::field!(snat_port_max) {
        return false;
    }
    // SAFETY: a map value read.
    marked(snat_marks::slot(destination)) && unsafe { F::snat_sources().get(destination) }.is_some()
}

/// Whether `slot` of [`maps::SNAT_MARKS`] is marked: its addresses may be masquerade sources.
/// Its own BPF function, as [`mark`].
#[inline(never)]
fn marked(slot: u32) -> bool {
    maps::SNAT_MARKS.get(slot).is_none_or(|mark| *mark != 0)
}

/// Marks `slot` of [`maps::SNAT_MARKS`]. Its own BPF function, a leaf with a frame of a few
/// bytes: inlined, it grew the masquerade path's chain past the 512-byte limit.
#[inline(never)]
fn mark(slot: u32) {
    if let Some(mark) = maps::SNAT_MARKS.get_ptr_mut(slot) {
        // SAFETY: a map value pointer; every writer stores the same value.
        unsafe {
            if *mark != snat_marks::MARKED {
                *mark = snat_marks::MARKED;
            }
        }
    }
}

/// Records `node` as an address masqueraded flows leave from (once: a node has a few, and
/// they stay), so [`may_reply`] looks for its replies: its mark first, then its entry, both
/// before the flow's first packet leaves. `false` when the set is full (the flow is not
/// masqueraded: its replies would not be recognized). Its own BPF function: inlined, it grew
/// the service path's frame past the 512-byte chain limit.
#[inline(never)]
fn remember_source<F: Family>(node: &F::Addr) -> bool {
    mark(snat_marks::slot(*node));
    // SAFETY: a map value read.
    if unsafe { F::snat_sources().get(node) }.is_some() {
        return true;
    }
    F::snat_sources().insert(node, 1, 0).is_ok()
}

/// A backend's reply to a masqueraded flow (matching a reverse entry) gets the frontend as
/// its source and the client as its destination back and goes out to the client. Anything
/// else passes. Parses the packet again: called beside the service path, not from it.
#[inline(never)]
pub(crate) fn reply<F: Family + Parse, C: PacketCtx>(ctx: &C) -> Outcome {
    let Some(packet) = F::parse(ctx) else {
        return Outcome::Pass;
    };
    let Some(entry) = ct::reverse::<F>(packet.source(), packet.destination(), packet.protocol)
    else {
        return Outcome::Pass;
    };
    if entry.flags & ct_flags::SNAT == 0 {
        return Outcome::Pass;
    }
    let Some(frontend) = lb::frontend_of::<F>(entry.rev_nat_id) else {
        return Outcome::Pass;
    };
    let client = ct::nat_of::<F>(entry);
    ct::touch(entry, packet.tcp_flags, ct::now());
    stats::packet::<F, C>(ctx, entry.rev_nat_id, entry.backend_id, stats::FROM);
    let tuple = Tuple {
        client,
        frontend,
        protocol: packet.protocol,
    };
    ct::answered::<F>(entry, &tuple);
    let Some((ifindex, _)) = route::<F, C>(ctx, client.0, false) else {
        return Outcome::SnatError;
    };
    send::<F, C>(
        ctx,
        &packet,
        [(Side::Source, frontend), (Side::Destination, client)],
        ifindex,
        Outcome::ReverseSnat,
    )
}

/// Rewrites both ends and redirects the packet out of `ifindex`.
#[inline(always)]
fn send<F: Family, C: PacketCtx>(
    ctx: &C,
    packet: &Packet<F::Addr>,
    rewrites: [(Side, (F::Addr, u16)); 2],
    ifindex: u32,
    outcome: Outcome,
) -> Outcome {
    for (side, (address, port)) in rewrites {
        if nat::rewrite::<F, C>(ctx, packet, side, address, port).is_err() {
            return Outcome::RewriteError;
        }
    }
    match ctx.redirect(ifindex) {
        Ok(()) => outcome,
        Err(_) => Outcome::RewriteError,
    }
}

/// Records the flow on a free port of `--masquerade-ports` for `node`, returned in network
/// order. Its own BPF function: the conntrack entries it builds are not on the caller's stack.
#[inline(never)]
fn allocate<F: Family>(
    packet: &Packet<F::Addr>,
    rev_nat_id: u32,
    chosen: &Chosen<F::Addr>,
    now: u64,
    node: F::Addr,
) -> Option<u16> {
    let tuple = Tuple {
        client: packet.source(),
        frontend: packet.destination(),
        protocol: packet.protocol,
    };
    let tcp_flags = packet.tcp_flags;
    let (min, max) = (config::field!(snat_port_min), config::field!(snat_port_max));
    if max < min {
        return None;
    }
    let span = u32::from(max - min) + 1;
    let client_port = u32::from(u16::from_be(packet.source_port));
    for attempt in 0..=ATTEMPTS {
        // First the client's own port folded into the range, as netfilter keeps a client's
        // port when it can: one client's ports map to distinct masquerade ports, and a client
        // that reuses its port (its kernel judged the old connection done) gets its masquerade
        // port back at once. The backend may hold the old connection in TIME_WAIT: it takes
        // the new SYN, whose timestamp follows the old one's (a client's clock is one per
        // address pair). Then random ports.
        let own = attempt == 0;
        let pick = if own {
            client_port
        } else {
            // SAFETY: no arguments.
            unsafe { bpf_get_prandom_u32() }
        };
        let port = ((u32::from(min) + pick % span) as u16).to_be();
        if ct::create_masqueraded::<F>(
            &tuple,
            rev_nat_id,
            chosen,
            tcp_flags,
            now,
            (node, port),
            own,
        )
        .is_ok()
        {
            return Some(port);
        }
    }
    None
}
