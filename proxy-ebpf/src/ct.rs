//! Per-family connection tracking: a forward entry (client → service, keyed as the client sent
//! it) pins a flow to its backend; a reverse entry (backend → client, keyed as the backend sends
//! it) names the frontend to restore on replies. Both live in one LRU map per family. Keys are
//! built from addresses and ports only, so any hook can use them.
use aya_ebpf::helpers::bpf_ktime_get_ns;
use proxy_common::{
    ConntrackKey, ConntrackValue, RawAddress,
    conntrack::{State, recent},
    ct_flags, direction, protocol,
};

use crate::{config, family::Family, lb::Chosen, maps, scratch};

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// A flow as its client sent it: (address, port) pairs, ports in network order.
#[derive(Clone, Copy)]
pub(crate) struct Tuple<A> {
    pub client: (A, u16),
    pub frontend: (A, u16),
    pub protocol: u8,
}

#[inline(always)]
pub(crate) fn now() -> u64 {
    // SAFETY: no arguments, always safe to call.
    unsafe { bpf_ktime_get_ns() }
}

/// The conntrack flag bits a TCP flags byte contributes.
#[inline(always)]
fn flags_of(tcp_flags: u8) -> u8 {
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
pub(crate) fn reopens(entry: &ConntrackValue, tcp_flags: u8) -> bool {
    tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
        && entry.flags & (ct_flags::SEEN_FIN | ct_flags::SEEN_RST) != 0
}

/// A SYN-ACK matching the reverse entry of a connection its backend closed (or either side
/// reset) answers another connection on the same tuple: the client reused its port for one the
/// TC path never translated (through the socket path, straight to the backend). Not this flow's.
#[inline(always)]
pub(crate) fn answers_another(entry: &ConntrackValue, tcp_flags: u8) -> bool {
    tcp_flags & (TCP_SYN | TCP_ACK) == (TCP_SYN | TCP_ACK)
        && entry.flags & (ct_flags::SEEN_FIN | ct_flags::SEEN_RST) != 0
}

/// Drops the reverse entry of a packet from `source` to `destination`: its flow is over and
/// the tuple now carries a connection the TC path never translated (see [`answers_another`]).
/// A backend holds one connection per tuple, so the old flow can send nothing more.
#[inline(always)]
pub(crate) fn forget_reverse<F: Family>(
    source: (F::Addr, u16),
    destination: (F::Addr, u16),
    protocol: u8,
) {
    let key = ConntrackKey::raw(source, destination, protocol, direction::REVERSE);
    let _ = F::conntrack().remove(key);
}

#[inline(always)]
pub(crate) fn touch(entry: &mut ConntrackValue, tcp_flags: u8, now: u64) {
    entry.last_seen = now;
    let flags = flags_of(tcp_flags);
    if entry.flags | flags != entry.flags {
        entry.flags |= flags;
    }
}

/// The forward entry of `tuple`, for update in place.
#[inline(always)]
pub(crate) fn forward<F: Family>(tuple: &Tuple<F::Addr>) -> Option<&'static mut ConntrackValue> {
    let key = ConntrackKey::raw(
        tuple.client,
        tuple.frontend,
        tuple.protocol,
        direction::FORWARD,
    );
    // SAFETY: a map value pointer; concurrent updates are benign (timestamps and flags).
    F::conntrack().get_ptr_mut(key).map(|p| unsafe { &mut *p })
}

/// Records that a flow whose replies go to `address` moved `now` ([`recent`]): before its
/// reverse entry is made or after it is touched, so a reply to it never skips the lookup.
#[inline(always)]
pub(crate) fn moved<A: RawAddress>(address: A, now: u64) {
    if let Some(at) = maps::CT_RECENT.get_ptr_mut(recent::slot(address)) {
        // SAFETY: a map value pointer; a racing writer puts in a time a moment apart.
        unsafe {
            if recent::stale(*at, now) {
                *at = now;
            }
        }
    }
}

/// Whether a packet to `address` may be a reply to a live flow, so that its reverse entry is
/// worth looking up ([`recent`]). Most replies it rules out (to a client that has no flow
/// through the TC path) cost no clock read either.
#[inline(always)]
pub(crate) fn may_answer<A: RawAddress>(address: A) -> bool {
    match maps::CT_RECENT.get(recent::slot(address)) {
        Some(&0) => false,
        Some(&at) => recent::may_live(at, now(), &config::ct_timeouts()),
        None => true,
    }
}

/// The reverse entry of a packet from `source` to `destination`, for update in place.
#[inline(always)]
pub(crate) fn reverse<F: Family>(
    source: (F::Addr, u16),
    destination: (F::Addr, u16),
    protocol: u8,
) -> Option<&'static mut ConntrackValue> {
    let key = ConntrackKey::raw(source, destination, protocol, direction::REVERSE);
    // SAFETY: as in `forward`.
    F::conntrack().get_ptr_mut(key).map(|p| unsafe { &mut *p })
}

/// Whether the flow of `entry`, the forward entry of `tuple`, has been idle past its state's
/// timeout: then its next packet starts a new flow. The forward entry alone sees the client's
/// packets; when it looks expired, the reverse entry (refreshed by the backend's) decides too.
#[inline(always)]
pub(crate) fn expired<F: Family>(entry: &ConntrackValue, tuple: &Tuple<F::Addr>, now: u64) -> bool {
    let timeouts = config::ct_timeouts();
    let state = State::of(tuple.protocol, entry.flags, None);
    if !timeouts.expired(state, entry.last_seen, now) {
        return false;
    }
    let key = ConntrackKey::raw(
        backend_of::<F>(entry),
        reply_destination::<F>(entry, tuple.client),
        tuple.protocol,
        direction::REVERSE,
    );
    // SAFETY: a map value read.
    match unsafe { F::conntrack().get(key) } {
        Some(reverse) if reverse.backend_id == entry.backend_id => {
            let state = State::of(tuple.protocol, entry.flags, Some(reverse.flags));
            let last_seen = if reverse.last_seen > entry.last_seen {
                reverse.last_seen
            } else {
                entry.last_seen
            };
            timeouts.expired(state, last_seen, now)
        }
        _ => true,
    }
}

/// Marks a flow answered, on the backend's first reply: its reverse entry `entry`, and the
/// forward entry of `tuple` (looked up only this once per flow).
#[inline(always)]
pub(crate) fn answered<F: Family>(entry: &mut ConntrackValue, tuple: &Tuple<F::Addr>) {
    if entry.flags & ct_flags::SEEN_REPLY != 0 {
        return;
    }
    entry.flags |= ct_flags::SEEN_REPLY;
    if let Some(forward) = forward::<F>(tuple)
        && forward.backend_id == entry.backend_id
    {
        forward.flags |= ct_flags::SEEN_REPLY;
    }
}

/// Records a new flow of `tuple` to `chosen` for frontend `rev_nat_id`: the reverse entry
/// first, so once the backend can answer, its reply finds the entry.
#[inline(always)]
#[allow(clippy::needless_borrows_for_generic_args)]
pub(crate) fn create<F: Family>(
    tuple: &Tuple<F::Addr>,
    rev_nat_id: u32,
    chosen: &Chosen<F::Addr>,
    tcp_flags: u8,
    now: u64,
) -> Result<(), i64> {
    moved(tuple.client.0, now);
    let (entry, key) = scratch::get()
        .ok_or(-1i64)?
        .entry_and_key::<ConntrackKey<F::Addr>>();
    fill::<F>(entry, rev_nat_id, chosen, flags_of(tcp_flags), now);
    let backend = (chosen.backend.address, chosen.backend.port);
    *key = ConntrackKey::raw(backend, tuple.client, tuple.protocol, direction::REVERSE);
    F::conntrack()
        .insert(&*key, &*entry, 0)
        .map_err(i64::from)?;
    insert_forward::<F>(tuple, entry, key)
}

/// Records a new masqueraded flow, its packets leaving from `node` (address, port): the
/// reverse entry, keyed to `node` and holding the client, only if no flow holds that key yet
/// (so the caller can try another port); then the forward entry, holding `node`. A flow that
/// is over gives its port up: `own` (the client's own port, `snat::allocate`'s first pick) at
/// once to the client that held it (the same address and port: its kernel reused the port),
/// else after [`REUSE_AFTER_NS`].
#[inline(always)]
// By reference: a copy of the entry would put it back on the stack.
#[allow(clippy::needless_borrows_for_generic_args)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn create_masqueraded<F: Family>(
    tuple: &Tuple<F::Addr>,
    rev_nat_id: u32,
    chosen: &Chosen<F::Addr>,
    tcp_flags: u8,
    now: u64,
    node: (F::Addr, u16),
    own: bool,
) -> Result<(), i64> {
    // Built in scratch memory, field by field: this runs deep in the service path's call
    // chain, where the stack is short.
    let (entry, key) = scratch::get()
        .ok_or(-1i64)?
        .entry_and_key::<ConntrackKey<F::Addr>>();
    fill::<F>(
        entry,
        rev_nat_id,
        chosen,
        flags_of(tcp_flags) | ct_flags::SNAT,
        now,
    );
    entry.nat_address = tuple.client.0.to_wide();
    entry.nat_port = tuple.client.1;
    let backend = (chosen.backend.address, chosen.backend.port);
    *key = ConntrackKey::raw(backend, node, tuple.protocol, direction::REVERSE);
    if F::conntrack().insert(&*key, &*entry, BPF_NOEXIST).is_err() {
        // The port is taken; by a flow that is over, it may be taken over: on the client's own
        // port by the client that held it at once, else after a while.
        // SAFETY: a map value read.
        let over = unsafe { F::conntrack().get(&*key) }.is_some_and(|held| {
            let ready = if own {
                held.nat_address == entry.nat_address && held.nat_port == entry.nat_port
            } else {
                now.saturating_sub(held.last_seen) >= REUSE_AFTER_NS
            };
            tuple.protocol == protocol::TCP && closed(held.flags) && ready
        });
        if !over {
            return Err(-17); // EEXIST: the caller tries another port.
        }
        F::conntrack()
            .insert(&*key, &*entry, 0)
            .map_err(i64::from)?;
    }
    entry.nat_address = node.0.to_wide();
    entry.nat_port = node.1;
    *key = ConntrackKey::raw(
        tuple.client,
        tuple.frontend,
        tuple.protocol,
        direction::FORWARD,
    );
    F::conntrack().insert(&*key, &*entry, 0).map_err(i64::from)
}

/// How long a masquerade port of a flow that is over stays unused before another client's new
/// flow takes it: the backend may still hold the old connection in TIME_WAIT, and accepts a
/// new SYN on that tuple only with a newer TCP timestamp (millisecond ticks: the same
/// millisecond is refused; another client's clock may be behind).
const REUSE_AFTER_NS: u64 = 1_000_000_000;

/// Whether a masqueraded flow's reverse entry (`flags`) belongs to a flow that is over: both
/// sides sent a FIN (the backend's in `SEEN_FIN`, the client's in `PEER_FIN`), or either reset.
#[inline(always)]
fn closed(flags: u8) -> bool {
    let backend_fin = flags & ct_flags::SEEN_FIN != 0;
    let client_fin = flags & ct_flags::PEER_FIN != 0;
    flags & (ct_flags::SEEN_RST | ct_flags::PEER_RST) != 0 || (backend_fin && client_fin)
}

/// Records in a masqueraded flow's reverse entry (keyed to the backend and the node address
/// and port) that its client sent a FIN or a reset: see [`closed`].
#[inline(always)]
pub(crate) fn client_closing<F: Family>(
    backend: (F::Addr, u16),
    node: (F::Addr, u16),
    protocol: u8,
    tcp_flags: u8,
) {
    let mut peer = 0;
    if tcp_flags & TCP_FIN != 0 {
        peer |= ct_flags::PEER_FIN;
    }
    if tcp_flags & TCP_RST != 0 {
        peer |= ct_flags::PEER_RST;
    }
    if peer == 0 || protocol != protocol::TCP {
        return;
    }
    let key = ConntrackKey::raw(backend, node, protocol, direction::REVERSE);
    // SAFETY: a map value pointer; a racing update only adds flag bits.
    if let Some(entry) = F::conntrack().get_ptr_mut(key).map(|p| unsafe { &mut *p })
        && entry.flags & peer != peer
    {
        entry.flags |= peer;
    }
}

/// `BPF_NOEXIST`: insert only if the key is free.
const BPF_NOEXIST: u64 = 1;

/// Writes a new flow's entry, field by field (in scratch memory: no copy on the stack), with
/// no NAT (zeroed first without a `memset` call: [`crate::mem::zero`]).
#[inline(always)]
fn fill<F: Family>(
    entry: &mut ConntrackValue,
    rev_nat_id: u32,
    chosen: &Chosen<F::Addr>,
    flags: u8,
    now: u64,
) {
    // SAFETY: a conntrack value (8-aligned, 64 bytes), all of whose fields may be zero.
    unsafe { crate::mem::zero(entry) };
    entry.last_seen = now;
    entry.backend_id = chosen.id;
    entry.rev_nat_id = rev_nat_id;
    entry.backend_address = chosen.backend.address.to_wide();
    entry.backend_port = chosen.backend.port;
    entry.flags = flags;
    entry.created = (now / 1_000_000_000) as u32;
}

/// Inserts `entry` as the forward entry of `tuple`, `key` the scratch key buffer.
#[inline(always)]
// By reference: a copy would put the entry back on the stack.
#[allow(clippy::needless_borrows_for_generic_args)]
fn insert_forward<F: Family>(
    tuple: &Tuple<F::Addr>,
    entry: &ConntrackValue,
    key: &mut ConntrackKey<F::Addr>,
) -> Result<(), i64> {
    *key = ConntrackKey::raw(
        tuple.client,
        tuple.frontend,
        tuple.protocol,
        direction::FORWARD,
    );
    F::conntrack().insert(&*key, entry, 0).map_err(i64::from)
}

/// Where a flow's replies go, as its reverse entry is keyed: the client, or the node address
/// and port a masqueraded flow (`entry` its forward entry) leaves from.
#[inline(always)]
pub(crate) fn reply_destination<F: Family>(
    entry: &ConntrackValue,
    client: (F::Addr, u16),
) -> (F::Addr, u16) {
    if entry.flags & ct_flags::SNAT != 0 {
        nat_of::<F>(entry)
    } else {
        client
    }
}

/// The NAT (address, port) of a masqueraded flow's entry: see `ConntrackValue::nat_address`.
#[inline(always)]
pub(crate) fn nat_of<F: Family>(entry: &ConntrackValue) -> (F::Addr, u16) {
    (F::Addr::from_wide(&entry.nat_address), entry.nat_port)
}

/// The backend (address, port) a conntrack entry pins its flow to.
#[inline(always)]
pub(crate) fn backend_of<F: Family>(entry: &ConntrackValue) -> (F::Addr, u16) {
    (
        F::Addr::from_wide(&entry.backend_address),
        entry.backend_port,
    )
}
