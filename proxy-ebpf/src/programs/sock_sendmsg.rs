//! `cgroup/sendmsg4`, `cgroup/sendmsg6`: an unconnected UDP datagram to a frontend goes
//! straight to a backend, the same backend for every datagram of the socket to that frontend
//! while the backend lives. (The kernel runs `sendmsg4` for an `AF_INET6` socket sending to an
//! IPv4-mapped address, so `sendmsg6` never sees one; it is handled all the same.)
use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};

use super::{SockTarget, finish_sock, translate4, translate6};

#[cgroup_sock_addr(sendmsg4)]
pub(crate) fn sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    finish_sock(translate4(&ctx, SockTarget::Datagram))
}

#[cgroup_sock_addr(sendmsg6)]
pub(crate) fn sock_sendmsg6(ctx: SockAddrContext) -> i32 {
    finish_sock(translate6(&ctx, SockTarget::Datagram))
}
