//! Twinstack's kernel programs. Each entry point is thin: it calls a `try_*` function and maps
//! every outcome, including errors, to "hand the packet on". A proxy must never black-hole
//! traffic that is not a service's.
#![no_std]
#![no_main]

mod conntrack;
mod family;
mod maps;
mod metrics;
mod nat;
mod parse;
mod service;

use aya_ebpf::{macros::classifier, programs::TcContext};
use proxy_common::counter;

/// `TC_ACT_UNSPEC`, which TCX reads as `TCX_NEXT`: hand the packet (translated or not) to the
/// next program on the hook, or to the stack if there is none. Other programs (a CNI's) keep
/// working beside us.
const VERDICT_NEXT: i32 = -1;

/// TC ingress on a pod interface: packets a pod sends. Service traffic is DNATed to a backend.
#[classifier]
pub fn from_pod(ctx: TcContext) -> i32 {
    let outcome = match parse::parse(&ctx) {
        Some(parse::Parsed::V4(packet)) => service::forward::<family::V4>(&ctx, &packet),
        Some(parse::Parsed::V6(packet)) => service::forward::<family::V6>(&ctx, &packet),
        None => Ok(counter::PASS),
    };
    metrics::count(outcome.unwrap_or(counter::REWRITE_ERROR));
    VERDICT_NEXT
}

/// TC egress on a pod interface: packets going to a pod. Replies from backends are translated
/// back so the client sees the service address.
#[classifier]
pub fn to_pod(ctx: TcContext) -> i32 {
    let outcome = match parse::parse(&ctx) {
        Some(parse::Parsed::V4(packet)) => service::reverse::<family::V4>(&ctx, &packet),
        Some(parse::Parsed::V6(packet)) => service::reverse::<family::V6>(&ctx, &packet),
        None => Ok(counter::PASS),
    };
    metrics::count(outcome.unwrap_or(counter::REWRITE_ERROR));
    VERDICT_NEXT
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
