//! TC ingress on a device of `--devices`: packets from outside the node, to its NodePorts,
//! external IPs and load balancer IPs ([`super::ingress`], as a client outside the node), and
//! backends' replies to flows masqueraded to this node.
use aya_ebpf::{macros::classifier, programs::TcContext};

#[classifier]
pub(crate) fn from_device(ctx: TcContext) -> i32 {
    super::finish_tc(super::ingress::ingress::<true>(&ctx))
}
