//! One file per kernel program; each entry point is thin: read its context, hand it to the
//! family-generic body, count the [`Outcome`] and return its verdict.
mod egress;
mod first_look;
mod from_device;
mod from_pod;
mod ingress;
mod sock_connect;
mod sock_getpeername;
mod sock_recvmsg;
mod sock_release;
mod sock_sendmsg;
mod to_device;
mod to_pod;
mod xdp_device;

use aya_ebpf::{helpers::bpf_set_retval, programs::SockAddrContext};
use proxy_common::{V4, V6, config::flags, protocol};

use crate::{
    config,
    ctx::SockAddr,
    family::Family,
    metrics,
    outcome::{Outcome, Verdict},
    sock::{self, Forward},
};

/// Counts `outcome` and returns its TC verdict.
#[inline(always)]
fn finish_tc(outcome: Outcome) -> i32 {
    metrics::count(outcome.counter());
    outcome.verdict().tc()
}

/// An outcome, its error included: what a program body (its `Result` for `?`) ends in. The
/// BPF functions return this one byte, never a `Result` whose unused half the verifier would
/// see read uninitialized.
#[inline(always)]
fn either(outcome: Result<Outcome, Outcome>) -> Outcome {
    outcome.unwrap_or_else(|error| error)
}

const ECONNREFUSED: i32 = 111;

/// Counts `outcome` and returns its socket-hook verdict, setting the errno of a refusal.
#[inline(always)]
fn finish_sock(outcome: Outcome) -> i32 {
    metrics::count(outcome.counter());
    let verdict = outcome.verdict();
    if verdict == Verdict::Refuse {
        // SAFETY: connect and sendmsg hooks may set the syscall's return value.
        unsafe { bpf_set_retval(-ECONNREFUSED) };
    }
    verdict.sock()
}

/// Which call a forward hook serves.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SockTarget {
    /// `connect()`, TCP or UDP: one backend for the socket's life.
    Connect,
    /// `sendmsg()` with an address, unconnected UDP: per datagram, sticky per frontend.
    Datagram,
}

/// The socket's protocol, if the socket hooks serve it (TCP, UDP: not SCTP, which the TC path
/// translates, nor ICMP ping sockets), and whether its namespace is served.
#[inline(always)]
fn served(sa: &SockAddr, only: Option<u8>) -> Option<u8> {
    let protocol = sa.protocol() as u8;
    if protocol != protocol::TCP && protocol != protocol::UDP {
        return None;
    }
    if only.is_some_and(|p| p != protocol) {
        return None;
    }
    let config = config::get();
    if config.flags & flags::SOCKET_LB_HOSTNS_ONLY != 0
        && sa.netns_cookie() != config.host_netns_cookie
    {
        return None; // A pod, in host-namespace-only mode: the TC path serves it.
    }
    Some(protocol)
}

#[inline(always)]
fn outcome_of<A>(forward: &Forward<A>, target: SockTarget) -> Outcome {
    match (forward, target) {
        (Forward::Untouched, _) => Outcome::Pass,
        (Forward::Refused, _) => Outcome::SockRefused,
        (Forward::Backend(_, _, true), _) => Outcome::SockMapError,
        (Forward::Backend(..), SockTarget::Connect) => Outcome::SockConnect,
        (Forward::Backend(..), SockTarget::Datagram) => Outcome::SockSendmsg,
    }
}

#[inline(always)]
fn forward<F: Family>(
    sa: &SockAddr,
    target: SockTarget,
    address: F::Addr,
    protocol: u8,
) -> Forward<F::Addr> {
    let sticky = target == SockTarget::Datagram;
    sock::forward::<F>(
        sa.cookie(),
        sa.netns_cookie(),
        address,
        sa.port(),
        protocol,
        sticky,
    )
}

#[inline(always)]
fn translate4(ctx: &SockAddrContext, target: SockTarget) -> Outcome {
    let sa = SockAddr::new(ctx);
    let Some(protocol) = served(&sa, None) else {
        return Outcome::Pass;
    };
    let result = forward::<V4>(&sa, target, sa.ip4(), protocol);
    if let Forward::Backend(address, port, _) = result {
        sa.set_ip4(address);
        sa.set_port(port);
    }
    outcome_of(&result, target)
}

#[inline(always)]
fn translate6(ctx: &SockAddrContext, target: SockTarget) -> Outcome {
    let sa = SockAddr::new(ctx);
    let Some(protocol) = served(&sa, None) else {
        return Outcome::Pass;
    };
    match sa.ip6() {
        Ok(address) => {
            let result = forward::<V6>(&sa, target, address, protocol);
            if let Forward::Backend(address, port, _) = result {
                sa.set_ip6(address);
                sa.set_port(port);
            }
            outcome_of(&result, target)
        }
        Err(mapped) => {
            let result = forward::<V4>(&sa, target, mapped, protocol);
            if let Forward::Backend(address, port, _) = result {
                sa.set_ip6_mapped(address);
                sa.set_port(port);
            }
            outcome_of(&result, target)
        }
    }
}

#[inline(always)]
fn restored<A>(result: Option<Result<(A, u16), ()>>, write: impl FnOnce(A, u16)) -> Outcome {
    match result {
        None => Outcome::Pass,
        Some(Err(())) => Outcome::SockReverseStale,
        Some(Ok((address, port))) => {
            write(address, port);
            Outcome::SockReverse
        }
    }
}

/// recvmsg (`only` UDP) or getpeername (any served protocol), IPv4 sockets.
#[inline(always)]
fn restore4(ctx: &SockAddrContext, only: Option<u8>) -> Outcome {
    let sa = SockAddr::new(ctx);
    let Some(protocol) = served(&sa, only) else {
        return Outcome::Pass;
    };
    let result = sock::reverse::<V4>(sa.cookie(), sa.ip4(), sa.port(), protocol);
    restored(result, |address, port| {
        sa.set_ip4(address);
        sa.set_port(port);
    })
}

#[inline(always)]
fn restore6(ctx: &SockAddrContext, only: Option<u8>) -> Outcome {
    let sa = SockAddr::new(ctx);
    let Some(protocol) = served(&sa, only) else {
        return Outcome::Pass;
    };
    match sa.ip6() {
        Ok(address) => {
            let result = sock::reverse::<V6>(sa.cookie(), address, sa.port(), protocol);
            restored(result, |address, port| {
                sa.set_ip6(address);
                sa.set_port(port);
            })
        }
        Err(mapped) => {
            let result = sock::reverse::<V4>(sa.cookie(), mapped, sa.port(), protocol);
            restored(result, |address, port| {
                sa.set_ip6_mapped(address);
                sa.set_port(port);
            })
        }
    }
}
