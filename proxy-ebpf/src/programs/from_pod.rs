//! TC ingress on a pod interface: packets a pod sends ([`super::ingress`]).
use aya_ebpf::{macros::classifier, programs::TcContext};

#[classifier]
pub(crate) fn from_pod(ctx: TcContext) -> i32 {
    super::finish_tc(super::ingress::ingress::<false>(&ctx))
}
