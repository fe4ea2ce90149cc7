//! XDP on a device of `--devices` (`--xdp native|generic`): the fast path of
//! [`super::from_device`], with its lookup, selection, conntrack and masquerade (the same
//! functions, over the XDP packet context). A NodePort, external or load balancer IP flow to
//! a backend is translated here and sent straight out of its route's device (masqueraded), or
//! DNATed and handed on to the kernel (`Local`: the client's address kept); a reply to a
//! masqueraded flow goes straight back to its client. What it does not serve, it hands on to
//! TC unchanged: packets of no frontend, fragments, SCTP, ICMP errors, rejects, and a flow whose next
//! hop's MAC address the kernel has not resolved yet (TC's `bpf_redirect_neigh` resolves it;
//! the next packets take XDP).
use aya_ebpf::{macros::xdp, programs::XdpContext};
use proxy_common::{
    counter::Counter, monitor_hook::XDP, monitor_kind::DROP, protocol, service_flags,
};

use super::ingress::{self, Found, Known, Served};
use crate::{
    ct, metrics,
    outcome::Outcome,
    parse::{self, EtherType, Parse},
    reject::Reply,
    snat,
};

#[xdp]
pub(crate) fn xdp_device(ctx: XdpContext) -> u32 {
    let outcome = match parse::ether_type(&ctx) {
        Some(EtherType::V4) => family::<proxy_common::V4>(&ctx),
        Some(EtherType::V6) => family::<proxy_common::V6>(&ctx),
        None => Outcome::Pass,
    };
    // An error here is TC's to handle: it serves the packet whole (or drops it, counted).
    let outcome = match outcome {
        Outcome::SnatError | Outcome::RewriteError | Outcome::ConntrackError => Outcome::XdpToTc,
        other => other,
    };
    metrics::count(outcome.counter());
    if outcome != Outcome::Pass && outcome != Outcome::XdpToTc {
        metrics::count(Counter::Xdp);
    }
    outcome.verdict().xdp()
}

#[inline(always)]
fn family<F: Reply + Parse>(ctx: &XdpContext) -> Outcome {
    match service::<F>(ctx) {
        Served::Done(outcome) => outcome,
        Served::Unparsed => Outcome::Pass,
        Served::MaybeReply => snat::reply::<F, _>(ctx),
        Served::Masqueraded => snat::established::<F, _>(ctx),
    }
}

#[inline(never)]
fn service<F: Reply + Parse>(ctx: &XdpContext) -> Served {
    let Some(packet) = parse::parsed::<F, _>(ctx) else {
        return Served::Unparsed;
    };
    if packet.fragment_id_at != 0 {
        return Served::Done(Outcome::Pass); // TC remembers the datagram's backend.
    }
    if packet.protocol == protocol::SCTP {
        // TC's: moving its CRC32c (`nat::sctp_port`) on every path here would take this
        // program past the verifier's budget, and SCTP is rarely the traffic XDP is for.
        return Served::Done(Outcome::Pass);
    }
    let service = match ingress::lookup::<F, true>(&packet) {
        Found::Service(service) => service,
        Found::Denied => {
            let outcome = Outcome::DropSourceRange;
            return Served::Done(ingress::report(&packet, DROP, outcome, XDP, 0, None));
        }
        Found::Nothing if snat::may_reply::<F>(&packet) => return Served::MaybeReply,
        Found::Nothing => return Served::Done(Outcome::Pass),
    };
    let now = ct::now();
    match ingress::known::<F, _>(ctx, &packet, &service, now) {
        Known::Translated(outcome) => return Served::Done(outcome),
        Known::Masqueraded => return Served::Masqueraded,
        Known::Repick | Known::New => {}
    }
    let local = service.entry.flags & service_flags::LOCAL != 0;
    let rev_nat_id = service.entry.rev_nat_id;
    if service.entry.count == 0 {
        // A `Local` policy's drop is the same here; a reject is TC's (it answers).
        return Served::Done(if local {
            let outcome = Outcome::DropNoLocalEndpoint;
            ingress::report(&packet, DROP, outcome, XDP, rev_nat_id, None)
        } else {
            Outcome::Pass
        });
    }
    let Some(chosen) = ingress::select::<F>(&packet, &service, now) else {
        return Served::Done(Outcome::Pass);
    };
    Served::Done(if local {
        ingress::new_flow::<F, _>(ctx, &packet, rev_nat_id, &chosen, now)
    } else {
        snat::new_flow::<F, _>(ctx, &packet, rev_nat_id, &chosen, now)
    })
}
