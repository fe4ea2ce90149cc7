//! IP fragments of translated flows. Only a datagram's first fragment carries the ports a
//! flow is found by; the rest carry the datagram's identity only. When a first fragment is
//! translated, what its datagram's later fragments get (the same address, on the same side)
//! is remembered under that identity, as they arrive untranslated; they then follow it, so a
//! fragmented datagram (a large UDP answer, say) reaches its backend or its client whole, in
//! both families, as netfilter's reassembly before NAT makes it work for kube-proxy.
//!
//! Not handled (passed, counted `pass`): a later fragment that arrives before its first
//! fragment, a fragmented datagram of a masqueraded flow, an IPv6 fragment header behind
//! other extension headers.
use proxy_common::{FragmentKey, FragmentValue, fragment_side};

use crate::{
    ct,
    ctx::PacketCtx,
    family::Family,
    outcome::{Outcome, rewrite_error},
    parse::{Packet, Parse},
    scratch,
};

/// For a first fragment just translated: its datagram's later fragments get `address` on
/// `side` ([`fragment_side`]), built in scratch memory: it runs deep in the service path.
#[inline(always)]
// By reference: copies would put the entry back on the stack.
#[allow(clippy::needless_borrows_for_generic_args)]
pub(crate) fn remember<F: Family, C: PacketCtx>(
    ctx: &C,
    packet: &Packet<F::Addr>,
    side: u8,
    address: &F::Addr,
) {
    let Some(id) = id_of::<F, C>(ctx, packet) else {
        return;
    };
    let Some(scratch) = scratch::get() else {
        return;
    };
    let (key, value) = scratch.key_and_reply::<FragmentKey<F::Addr>, FragmentValue<F::Addr>>();
    *key = FragmentKey::new(packet.source, packet.destination, id, packet.protocol);
    *value = FragmentValue {
        address: *address,
        side,
        _pad: [0; 3],
    };
    // A full map loses the oldest datagram's entry: its fragments then pass untranslated.
    let _ = F::fragments().insert(&*key, &*value, 0);
}

/// The datagram identification of a first fragment, `None` for a packet that is none.
#[inline(always)]
fn id_of<F: Family, C: PacketCtx>(ctx: &C, packet: &Packet<F::Addr>) -> Option<u32> {
    if packet.fragment_id_at == 0 {
        return None;
    }
    let at = packet.l3_offset + usize::from(packet.fragment_id_at);
    if F::AF == AF_INET {
        let id: [u8; 2] = ctx.load(at).ok()?;
        Some(u32::from(u16::from_be_bytes(id)))
    } else {
        let id: [u8; 4] = ctx.load(at).ok()?;
        Some(u32::from_be_bytes(id))
    }
}

const AF_INET: u8 = 2;

/// [`remember`] for a first fragment just DNATed to `backend`, as a BPF function of its own.
#[inline(never)]
pub(crate) fn remember_backend<F: Family, C: PacketCtx>(
    ctx: &C,
    packet: &Packet<F::Addr>,
    backend: &F::Addr,
) {
    remember::<F, C>(ctx, packet, fragment_side::DESTINATION, backend);
}

/// For a first fragment of a known flow just DNATed: its datagram's later fragments get the
/// flow's backend (from its forward entry).
#[inline(never)]
pub(crate) fn remember_flow<F: Family, C: PacketCtx>(ctx: &C, packet: &Packet<F::Addr>) {
    let tuple = ct::Tuple {
        client: packet.source(),
        frontend: packet.destination(),
        protocol: packet.protocol,
    };
    if let Some(entry) = ct::forward::<F>(&tuple) {
        let (backend, _) = ct::backend_of::<F>(entry);
        remember::<F, C>(ctx, packet, fragment_side::DESTINATION, &backend);
    }
}

/// A fragment after the first of a datagram whose first fragment was translated gets the
/// same address (its IPv4 header checksum fixed; no L4 header to fix). `None` if the packet
/// is no fragment after the first.
#[inline(never)]
pub(crate) fn translate<F: Family + Parse, C: PacketCtx>(ctx: &C) -> Option<Outcome> {
    let fragment = F::fragment(ctx)?;
    let key = FragmentKey::new(
        fragment.source,
        fragment.destination,
        fragment.id,
        fragment.protocol,
    );
    // SAFETY: a map value read.
    let Some(value) = (unsafe { F::fragments().get(key) }).copied() else {
        return Some(Outcome::Pass);
    };
    let (old, at) = if value.side == fragment_side::SOURCE {
        (fragment.source, F::SOURCE_OFFSET)
    } else {
        (fragment.destination, F::DESTINATION_OFFSET)
    };
    let l3 = fragment.l3_offset;
    Some(
        match F::rewrite_address(ctx, l3, l3 + at, old, value.address, None) {
            Ok(()) => Outcome::Fragment,
            Err(error) => rewrite_error(error),
        },
    )
}
