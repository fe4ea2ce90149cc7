//! Socket-level load balancing, at the level of addresses and ports: what a socket hook does
//! with the frontend a socket addresses (pick a backend with [`lb`], once per connection or per
//! unconnected datagram, and remember what to show the socket instead), and the reverse (which
//! frontend a reply's source or a peer name stands for). No context here: the hooks adapt.
use aya_ebpf::helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns};
use proxy_common::{SockRevKey, SockRevValue, SockUdpKey, service_flags, sock_slots};

use crate::{
    config,
    family::Family,
    lb::{self, Chosen},
    maps, snat, stats,
};

/// What to do with a socket's destination.
pub(crate) enum Forward<A> {
    /// Not a frontend: untouched.
    Untouched,
    /// Send to this backend (address, port in network order) instead. `map_error`: a socket
    /// map could not be updated (replies may show the backend).
    Backend(A, u16, bool),
    /// A frontend with no usable backend.
    Refused,
}

/// The backend for a socket (`cookie`, of the network namespace `netns`: session affinity's
/// client) addressing `address:port/protocol` (port in network order). `sticky`: an unconnected UDP socket, which keeps its backend per frontend while that
/// backend lives, like a flow (each datagram comes through here).
#[inline(always)]
pub(crate) fn forward<F: Family>(
    cookie: u64,
    netns: u64,
    address: F::Addr,
    port: u16,
    protocol: u8,
    sticky: bool,
) -> Forward<F::Addr> {
    // A pod address is no frontend while the agent says none lies inside the cluster CIDR.
    let to_pod = snat::in_cluster_cidr::<F>(address);
    if to_pod && lb::cluster_clear::<F>() {
        return Forward::Untouched;
    }
    // Every socket is inside the cluster: pods and the node's own processes.
    // A port the cluster IP does not expose meets its unexposed-port frontend: refused.
    let Some(service) = lb::lookup::<F>(address, port, protocol, true).or_else(|| {
        // A pod address is no cluster IP: connections to pods pay no second lookup.
        (!to_pod)
            .then(|| lb::unexposed::<F>(address, protocol))
            .flatten()
    }) else {
        return Forward::Untouched;
    };
    if service.entry.count == 0 {
        // A `Local` policy with no endpoint here: kube-proxy drops its packets. A pod's call
        // goes on untranslated and the TC program drops its packets; the node's own processes
        // have no TC program to drop them (untranslated, they would follow a default route
        // off the node), so their call is refused. Any other empty Service is refused.
        if service.entry.flags & service_flags::LOCAL != 0
            && netns != config::get().host_netns_cookie
        {
            return Forward::Untouched;
        }
        return Forward::Refused;
    }
    let rev_nat_id = service.entry.rev_nat_id;
    let mut map_error = false;
    let udp_key = SockUdpKey::new(cookie, rev_nat_id);
    // SAFETY: a map value read.
    let kept = sticky
        .then(|| unsafe { F::sock_udp().get(udp_key) }.copied())
        .flatten()
        .and_then(lb::backend::<F>);
    let chosen: Chosen<F::Addr> = match kept {
        Some(chosen) => chosen,
        None => {
            let client = lb::Client::Netns(netns);
            // SAFETY: no arguments.
            let (random, now) = unsafe { (bpf_get_prandom_u32(), bpf_ktime_get_ns()) };
            let Some(chosen) = lb::select_for::<F>(&service, client, random, now) else {
                return Forward::Refused;
            };
            if sticky && F::sock_udp().insert(udp_key, chosen.id, 0).is_err() {
                map_error = true;
            }
            // A connect, or an unconnected socket's first datagram to this frontend: a
            // connection (its packets no hook of ours sees).
            stats::count::<F>(rev_nat_id, chosen.id, 0, stats::NEW | stats::NO_PACKET);
            chosen
        }
    };
    let backend = chosen.backend;
    let key = SockRevKey::new(cookie, backend.address, backend.port);
    let value = SockRevValue {
        address,
        port,
        _pad: [0; 2],
        rev_nat_id,
    };
    // Most datagrams of an unconnected UDP socket find their entry already right: no write
    // then. A connect makes its entry afresh (a new socket's has none: a lookup first would
    // only cost a cold bucket's miss).
    // SAFETY: a map value read.
    if !sticky || unsafe { F::sock_rev().get(key) } != Some(&value) {
        if F::sock_rev().insert(key, value, 0).is_err() {
            map_error = true;
        } else if !sticky {
            // A connected socket's entry, which its close removes.
            count_entries(cookie, true);
        }
    }
    Forward::Backend(backend.address, backend.port, map_error)
}

/// What a socket sees instead of the backend `address:port` (network order) it talks to: the
/// frontend it addressed, while that frontend still exists as it was. A stale entry is
/// dropped (`Err`), and the backend shown.
#[inline(always)]
pub(crate) fn reverse<F: Family>(
    cookie: u64,
    address: F::Addr,
    port: u16,
    protocol: u8,
) -> Option<Result<(F::Addr, u16), ()>> {
    let key = SockRevKey::new(cookie, address, port);
    // SAFETY: a map value read.
    let value = *unsafe { F::sock_rev().get(key) }?;
    match lb::lookup::<F>(value.address, value.port, protocol, true) {
        Some(service) if service.entry.rev_nat_id == value.rev_nat_id => {
            Some(Ok((value.address, value.port)))
        }
        _ => {
            let _ = F::sock_rev().remove(key);
            Some(Err(()))
        }
    }
}

/// Forgets a closed socket's reverse entry for the backend it was connected to.
#[inline(always)]
pub(crate) fn release<F: Family>(cookie: u64, address: F::Addr, port: u16) {
    if F::sock_rev()
        .remove(SockRevKey::new(cookie, address, port))
        .is_ok()
    {
        count_entries(cookie, false);
    }
}

/// Whether the socket `cookie` may hold a reverse entry its connect made
/// ([`proxy_common::sock_slots`]); if not, its close has none to remove.
#[inline(always)]
pub(crate) fn may_hold_entry(cookie: u64) -> bool {
    maps::SOCK_SLOTS
        .get(sock_slots::slot(cookie))
        .is_none_or(|count| *count != 0)
}

/// Counts one entry more (`made`) or one less in `cookie`'s slot, never below zero. Not
/// atomic (the BPF target has no atomic add in Rust): two CPUs on one slot at once may lose a
/// count, which costs a close's removal (a count too high) or, rarely, leaves an entry to age
/// out of the LRU map (a count too low), as an unconnected socket's do.
#[inline(always)]
fn count_entries(cookie: u64, made: bool) {
    if let Some(count) = maps::SOCK_SLOTS.get_ptr_mut(sock_slots::slot(cookie)) {
        // SAFETY: a map value, alive while the program runs.
        unsafe {
            *count = if made {
                (*count).wrapping_add(1)
            } else {
                (*count).saturating_sub(1)
            }
        };
    }
}
