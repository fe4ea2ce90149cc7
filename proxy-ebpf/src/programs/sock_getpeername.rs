//! `cgroup/getpeername4`, `cgroup/getpeername6`: a socket connected to a backend through a
//! frontend is told it is connected to the frontend (proxies and NFS tools check).
use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};

use super::{finish_sock, restore4, restore6};

#[cgroup_sock_addr(getpeername4)]
pub(crate) fn sock_getpeername4(ctx: SockAddrContext) -> i32 {
    finish_sock(restore4(&ctx, None))
}

#[cgroup_sock_addr(getpeername6)]
pub(crate) fn sock_getpeername6(ctx: SockAddrContext) -> i32 {
    finish_sock(restore6(&ctx, None))
}
