//! Per-family connection tracking: a forward entry (client → service, keyed as the client sent
//! it) pins a flow to its backend; a reverse entry (backend → client, keyed as the backend sends
//! it) names the frontend to restore on replies. Both live in one LRU map per family.
use aya_ebpf::helpers::bpf_ktime_get_ns;
use proxy_common::{ConntrackValue, ct_flags};

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: no arguments, always safe to call.
    unsafe { bpf_ktime_get_ns() }
}

/// The conntrack flag bits a TCP flags byte contributes.
#[inline(always)]
pub fn flags_of(tcp_flags: u8) -> u8 {
    let mut flags = 0;
    if tcp_flags & TCP_SYN != 0 {
        flags |= ct_flags::SEEN_SYN;
    }
    if tcp_flags & TCP_FIN != 0 {
        flags |= ct_flags::SEEN_FIN;
    }
    if tcp_flags & TCP_RST != 0 {
        flags |= ct_flags::SEEN_RST;
    }
    flags
}

/// A SYN on a tuple whose previous connection closed starts a new connection (port reuse):
/// it is load-balanced afresh instead of following the old entry.
#[inline(always)]
pub fn reopens(entry: &ConntrackValue, tcp_flags: u8) -> bool {
    tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
        && entry.flags & (ct_flags::SEEN_FIN | ct_flags::SEEN_RST) != 0
}

#[inline(always)]
pub fn touch(entry: &mut ConntrackValue, tcp_flags: u8, now: u64) {
    entry.last_seen = now;
    let flags = flags_of(tcp_flags);
    if entry.flags | flags != entry.flags {
        entry.flags |= flags;
    }
}
