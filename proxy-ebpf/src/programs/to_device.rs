//! TC egress on a device of `--devices`: a local backend's reply to an outside client that it
//! saw unmasqueraded (`externalTrafficPolicy: Local`) gets its frontend back on the way out
//! ([`super::egress`]).
use aya_ebpf::{macros::classifier, programs::TcContext};

#[classifier]
pub(crate) fn to_device(ctx: TcContext) -> i32 {
    super::finish_tc(super::egress::egress(&ctx))
}
