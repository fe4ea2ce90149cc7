//! TC egress on a pod interface: packets going to a pod ([`super::egress`]: reverse NAT).
use aya_ebpf::{macros::classifier, programs::TcContext};

#[classifier]
pub(crate) fn to_pod(ctx: TcContext) -> i32 {
    super::finish_tc(super::egress::egress(&ctx))
}
