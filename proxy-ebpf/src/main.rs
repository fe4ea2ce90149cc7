//! Twinstack's kernel programs. One module per concern, as DESIGN.md lays out: packet access
//! ([`ctx`]) and parsing ([`parse`]); service lookup and backend selection ([`lb`]), conntrack
//! ([`ct`]) and rewrites ([`nat`]), the first two free of any packet context so every hook
//! shares them; socket-level load balancing over the same lookup ([`sock`]); the typed
//! [`outcome`] of a packet or socket call; and one file per program under [`programs`].
#![no_std]
#![no_main]

mod config;
mod csum;
mod ct;
mod ctx;
mod family;
mod frag;
mod icmp;
mod lb;
mod maps;
mod mem;
mod metrics;
mod monitor;
mod nat;
mod outcome;
mod parse;
mod programs;
mod reject;
mod scratch;
mod snat;
mod sock;
mod stats;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
