//! `cgroup/connect4`, `cgroup/connect6`: a TCP or UDP socket connecting to a frontend is
//! connected straight to a backend, so its packets need no per-packet NAT. An `AF_INET6` socket
//! connecting to an IPv4-mapped frontend is served from the IPv4 maps.
use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};

use super::{SockTarget, finish_sock, translate4, translate6};

#[cgroup_sock_addr(connect4)]
pub(crate) fn sock_connect4(ctx: SockAddrContext) -> i32 {
    finish_sock(translate4(&ctx, SockTarget::Connect))
}

#[cgroup_sock_addr(connect6)]
pub(crate) fn sock_connect6(ctx: SockAddrContext) -> i32 {
    finish_sock(translate6(&ctx, SockTarget::Connect))
}
