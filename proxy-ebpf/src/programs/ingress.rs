//! The service path of TC ingress, shared by the pod interfaces ([`super::from_pod`]) and the
//! node's devices ([`super::from_device`]): service traffic is DNATed to a backend (and SNATed
//! to the node where it must be) and tracked, so the rest of the flow follows and the replies
//! can be translated back. The two hooks differ in who the client is: a pod, or anybody
//! outside the node (`DEVICE`).
use aya_ebpf::{helpers::bpf_get_prandom_u32, programs::TcContext};
use proxy_common::{
    RawAddress, ct_flags,
    monitor_kind::{DROP, NEW_FLOW, NO_BACKEND},
    protocol, service_flags,
};

use super::first_look;
use crate::{
    ct::{self, Tuple},
    ctx::PacketCtx,
    frag, icmp, lb, monitor,
    nat::{self, Side},
    outcome::{Outcome, rewrite_error},
    parse::{self, EtherType, Packet, Parse},
    reject::{self, Reply},
    snat, stats,
};

/// The outcome of one packet at a TC ingress hook.
#[inline(always)]
pub(super) fn ingress<const DEVICE: bool>(ctx: &TcContext) -> Outcome {
    use proxy_common::{V4, V6};
    // From a pod, a packet to a pod address is most often nobody's, and passed unparsed.
    match parse::ether_type(ctx) {
        Some(EtherType::V4) if !DEVICE && first_look::to_nobody::<V4>(ctx) => Outcome::Pass,
        Some(EtherType::V6) if !DEVICE && first_look::to_nobody::<V6>(ctx) => Outcome::Pass,
        Some(EtherType::V4) => family::<V4, DEVICE>(ctx),
        Some(EtherType::V6) => family::<V6, DEVICE>(ctx),
        None => Outcome::Pass,
    }
}

/// What the service path made of a packet.
pub(super) enum Served {
    Done(Outcome),
    /// No ports: an ICMP error, maybe.
    Unparsed,
    /// To no frontend, on a port of `--masquerade-ports`: a reply to a masqueraded flow, maybe.
    MaybeReply,
    /// A packet of a live masqueraded flow (its entry touched, the packet not translated yet).
    Masqueraded,
}

/// One family's paths, each a BPF function of its own (never inlined), called from here one
/// after the other, so their stacks never add up.
#[inline(always)]
fn family<F: Reply + Parse, const DEVICE: bool>(ctx: &TcContext) -> Outcome {
    match service::<F, DEVICE>(ctx) {
        Served::Done(outcome) => outcome,
        Served::Unparsed => frag::translate::<F, _>(ctx).unwrap_or_else(|| icmp::to_backend(ctx)),
        Served::MaybeReply => snat::reply::<F, _>(ctx),
        Served::Masqueraded => snat::established::<F, _>(ctx),
    }
}

#[inline(never)]
fn service<F: Reply + Parse, const DEVICE: bool>(ctx: &TcContext) -> Served {
    let Some(packet) = parse::parsed_zeroed::<F, _>(ctx) else {
        return Served::Unparsed;
    };
    forward::<F, _, DEVICE>(ctx, &packet)
}

/// Translates a packet addressed to a service frontend. Each phase is a BPF function of its
/// own (never inlined), so this frame stays small and the deepest call chain (this, a phase,
/// the helpers it inlines) stays within the verifier's 512 bytes of stack.
#[inline(always)]
fn forward<F: Reply, C: PacketCtx, const DEVICE: bool>(
    ctx: &C,
    packet: &Packet<F::Addr>,
) -> Served {
    // The service entry is looked up first: a deleted service stops translation at once, even
    // for flows that still have conntrack entries.
    let hook = C::HOOK;
    let service = match lookup::<F, DEVICE>(packet) {
        Found::Service(service) => service,
        Found::Denied => {
            return Served::Done(report(
                packet,
                DROP,
                Outcome::DropSourceRange,
                hook,
                0,
                None,
            ));
        }
        Found::Nothing if snat::may_reply::<F>(packet) => return Served::MaybeReply,
        Found::Nothing => return Served::Done(Outcome::Pass),
    };
    let now = ct::now();
    let outcome = match known::<F, C>(ctx, packet, &service, now) {
        Known::Translated(Outcome::DnatEstablished) if packet.fragment_id_at != 0 => {
            frag::remember_flow::<F, C>(ctx, packet);
            return Served::Done(Outcome::DnatEstablished);
        }
        Known::Translated(outcome) => return Served::Done(outcome),
        // Translated beside this path ([`family`]), where the stack is free.
        Known::Masqueraded => return Served::Masqueraded,
        Known::Repick => Outcome::Repick,
        Known::New => Outcome::DnatNew,
    };
    let rev_nat_id = service.entry.rev_nat_id;
    if service.entry.count == 0 && service.entry.flags & service_flags::LOCAL != 0 {
        let outcome = Outcome::DropNoLocalEndpoint;
        return Served::Done(report(packet, DROP, outcome, hook, rev_nat_id, None));
    }
    let Some(chosen) = select::<F>(packet, &service, now) else {
        let outcome = reject::reject::<F, C>(ctx, packet);
        return Served::Done(report(packet, NO_BACKEND, outcome, hook, rev_nat_id, None));
    };
    // From outside the node, a flow is masqueraded unless its policy is `Local` (the client's
    // address kept, the backend this node's): its replies must come back through this node.
    let masquerade = if DEVICE {
        service.entry.flags & service_flags::LOCAL == 0
    } else {
        snat::needed::<F>(packet.source, chosen.backend.address)
    };
    if masquerade {
        return Served::Done(snat::new_flow::<F, C>(
            ctx, packet, rev_nat_id, &chosen, now,
        ));
    }
    Served::Done(
        match new_flow::<F, C>(ctx, packet, rev_nat_id, &chosen, now) {
            Outcome::DnatNew => {
                frag::remember_backend::<F, C>(ctx, packet, &chosen.backend.address);
                outcome
            }
            other => other,
        },
    )
}

/// Emits a monitor event about `packet` ([`monitor::emit`]) and returns `outcome`.
#[inline(always)]
pub(super) fn report<A: proxy_common::RawAddress>(
    packet: &Packet<A>,
    kind: u8,
    outcome: Outcome,
    hook: u8,
    rev_nat_id: u32,
    chosen: Option<&lb::Chosen<A>>,
) -> Outcome {
    monitor::emit(
        packet,
        monitor::what(kind, outcome, hook),
        rev_nat_id,
        chosen,
    );
    outcome
}

/// What a packet is addressed to.
pub(super) enum Found<A> {
    Service(lb::Service<A>),
    /// A frontend whose `loadBalancerSourceRanges` leave the client out.
    Denied,
    Nothing,
}

/// The frontend the packet is addressed to, if the client may use it; for a new flow (a TCP
/// SYN, a UDP datagram, an SCTP packet) to a port its cluster IP does not expose, that cluster IP's
/// unexposed-port frontend (rejected). Pods are inside the cluster; a client beyond a device
/// is when its address is in `--cluster-cidr` (a pod of another node). A packet to a pod
/// address, while the agent says no frontend lies inside `--cluster-cidr`, is nobody's: most
/// of a node's traffic (pod to pod, and every connection the socket hooks already sent to a
/// backend) pays no service lookup.
#[inline(never)]
pub(super) fn lookup<F: Reply, const DEVICE: bool>(packet: &Packet<F::Addr>) -> Found<F::Addr> {
    let to_pod = snat::in_cluster_cidr::<F>(packet.destination);
    if to_pod && lb::cluster_clear::<F>() {
        return Found::Nothing;
    }
    let from_cluster = !DEVICE || snat::in_cluster_cidr::<F>(packet.source);
    let service = lb::lookup::<F>(
        packet.destination,
        packet.destination_port,
        packet.protocol,
        from_cluster,
    );
    if let Some(service) = service {
        return if lb::admits::<F>(&service, packet.source) {
            Found::Service(service)
        } else {
            Found::Denied
        };
    }
    let new_flow = match packet.protocol {
        protocol::TCP => packet.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN,
        // UDP, and SCTP as kube-proxy rejects any of its packets (no state to tell an INIT by).
        protocol::UDP | protocol::SCTP => true,
        _ => false,
    };
    // A pod address (inside the cluster CIDR) is no cluster IP: pod-to-pod traffic pays no
    // second lookup.
    if !new_flow || to_pod {
        return Found::Nothing;
    }
    match lb::unexposed::<F>(packet.destination, packet.protocol) {
        Some(service) => Found::Service(service),
        None => Found::Nothing,
    }
}

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// What the packet's conntrack entry says.
pub(super) enum Known {
    /// A live flow: translated to its backend.
    Translated(Outcome),
    /// A live masqueraded flow (touched, not translated yet).
    Masqueraded,
    /// A flow whose backend left (not TCP): balanced again.
    Repick,
    /// No live flow of this frontend: a new one.
    New,
}

#[inline(never)]
pub(super) fn known<F: Reply, C: PacketCtx>(
    ctx: &C,
    packet: &Packet<F::Addr>,
    service: &lb::Service<F::Addr>,
    now: u64,
) -> Known {
    let tuple = Tuple {
        client: packet.source(),
        frontend: packet.destination(),
        protocol: packet.protocol,
    };
    let Some(entry) = ct::forward::<F>(&tuple) else {
        return Known::New;
    };
    if entry.rev_nat_id != service.entry.rev_nat_id
        || ct::reopens(entry, packet.tcp_flags)
        || ct::expired::<F>(entry, &tuple, now)
    {
        return Known::New;
    }
    // A TCP connection keeps its backend for life, like a netfilter NAT binding, even once
    // the backend has left the Service. Other flows follow the Service: if their backend is
    // gone they are balanced again (kube-proxy clears their conntrack).
    if packet.protocol != protocol::TCP && !lb::backend_exists::<F>(entry.backend_id) {
        return Known::Repick;
    }
    ct::touch(entry, packet.tcp_flags, now);
    if entry.flags & ct_flags::SNAT != 0 {
        return Known::Masqueraded;
    }
    ct::moved(tuple.client.0, now);
    let (address, port) = ct::backend_of::<F>(entry);
    Known::Translated(
        match nat::rewrite::<F, C>(ctx, packet, Side::Destination, address, port) {
            Ok(()) => {
                stats::packet::<F, C>(ctx, entry.rev_nat_id, entry.backend_id, stats::TO);
                Outcome::DnatEstablished
            }
            Err(error) => rewrite_error(error),
        },
    )
}

#[inline(never)]
pub(super) fn select<F: Reply>(
    packet: &Packet<F::Addr>,
    service: &lb::Service<F::Addr>,
    now: u64,
) -> Option<lb::Chosen<F::Addr>> {
    // SAFETY: no arguments.
    let random = unsafe { bpf_get_prandom_u32() };
    let client = lb::Client::Address(packet.source.to_wide());
    lb::select_for::<F>(service, client, random, now)
}

/// A new flow to `chosen`, not masqueraded: recorded and DNATed ([`Outcome::DnatNew`]). Five
/// arguments at most: a BPF function takes no more.
#[inline(never)]
pub(super) fn new_flow<F: Reply, C: PacketCtx>(
    ctx: &C,
    packet: &Packet<F::Addr>,
    rev_nat_id: u32,
    chosen: &lb::Chosen<F::Addr>,
    now: u64,
) -> Outcome {
    let tuple = Tuple {
        client: packet.source(),
        frontend: packet.destination(),
        protocol: packet.protocol,
    };
    if ct::create::<F>(&tuple, rev_nat_id, chosen, packet.tcp_flags, now).is_err() {
        return Outcome::ConntrackError;
    }
    let what = monitor::what(NEW_FLOW, Outcome::DnatNew, C::HOOK);
    monitor::emit(packet, what, rev_nat_id, Some(chosen));
    stats::packet::<F, C>(ctx, rev_nat_id, chosen.id, stats::TO | stats::NEW);
    let backend = chosen.backend;
    match nat::rewrite::<F, C>(
        ctx,
        packet,
        Side::Destination,
        backend.address,
        backend.port,
    ) {
        Ok(()) => Outcome::DnatNew,
        Err(error) => rewrite_error(error),
    }
}
