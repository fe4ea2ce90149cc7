//! Traffic per frontend and per backend (`twinstack bpf service list --stats`): connections,
//! and packets and bytes each way, in a per-CPU LRU hash, so the packet path takes no lock and
//! shares no cache line; the reader sums the CPUs. Entries are made on first use; the least
//! recently counted make room when it is full.
use proxy_common::{LbFamily, StatsKey, TrafficStats, stats_kind};

use crate::{ctx::PacketCtx, maps::STATS};

/// A packet towards the backend (client → frontend → backend).
pub(crate) const TO: u32 = 0;
/// A packet back from the backend.
pub(crate) const FROM: u32 = 1;
/// The packet opens a connection (counted besides it).
pub(crate) const NEW: u32 = 2;
/// A connection without a packet (a socket's connect): no packet counted.
pub(crate) const NO_PACKET: u32 = 4;

/// Counts `ctx`'s packet (`what`: [`TO`] or [`FROM`], with [`NEW`]) for the frontend
/// `rev_nat_id` and the backend `backend_id` of family `F`.
#[inline(always)]
pub(crate) fn packet<F: LbFamily, C: PacketCtx>(
    ctx: &C,
    rev_nat_id: u32,
    backend_id: u32,
    what: u32,
) {
    count::<F>(rev_nat_id, backend_id, ctx.length(), what);
}

/// Counts a packet of `length` bytes (or, with [`NO_PACKET`], a connection only) for both
/// the frontend and the backend. Its own BPF function: its entries are off the caller's stack,
/// and its own frame is one key (the zero value it inserts lives in read-only data).
#[inline(never)]
pub(crate) fn count<F: LbFamily>(rev_nat_id: u32, backend_id: u32, length: u32, what: u32) {
    let mut key = StatsKey {
        id: rev_nat_id,
        family: if size_of::<F::Addr>() == 4 { 4 } else { 6 },
        kind: stats_kind::FRONTEND,
        _pad: [0; 2],
    };
    bump(&key, length, what);
    key.id = backend_id;
    key.kind = stats_kind::BACKEND;
    bump(&key, length, what);
}

/// What a new entry starts from (a static: a value on the stack would cost 40 bytes of it).
static ZERO: TrafficStats = TrafficStats {
    connections: 0,
    packets_to: 0,
    bytes_to: 0,
    packets_from: 0,
    bytes_from: 0,
};

#[inline(always)]
fn bump(key: &StatsKey, length: u32, what: u32) {
    let stats = match STATS.get_ptr_mut(key) {
        Some(stats) => stats,
        None => {
            // BPF_NOEXIST: another CPU may have made it meanwhile; each CPU has its own value.
            #[allow(
                clippy::needless_borrows_for_generic_args,
                reason = "by value: on the stack"
            )]
            let _ = STATS.insert(key, &ZERO, 1);
            match STATS.get_ptr_mut(key) {
                Some(stats) => stats,
                None => return,
            }
        }
    };
    let length = u64::from(length);
    // SAFETY: this CPU's value: no other writer while we run.
    unsafe {
        if what & NEW != 0 {
            (*stats).connections += 1;
        }
        if what & NO_PACKET != 0 {
            return;
        }
        if what & FROM != 0 {
            (*stats).packets_from += 1;
            (*stats).bytes_from += length;
        } else {
            (*stats).packets_to += 1;
            (*stats).bytes_to += length;
        }
    }
}
