//! `cgroup/recvmsg4`, `cgroup/recvmsg6`: a UDP reply from a backend shows the frontend the
//! socket addressed as its source (the application would drop a reply from an address it did
//! not send to). Runs when the caller asks for the source address, connected or not.
use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use proxy_common::protocol;

use super::{finish_sock, restore4, restore6};

#[cgroup_sock_addr(recvmsg4)]
pub(crate) fn sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    finish_sock(restore4(&ctx, Some(protocol::UDP)))
}

#[cgroup_sock_addr(recvmsg6)]
pub(crate) fn sock_recvmsg6(ctx: SockAddrContext) -> i32 {
    finish_sock(restore6(&ctx, Some(protocol::UDP)))
}
