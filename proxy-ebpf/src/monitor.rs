//! Datapath events for `twinstack bpf monitor`: a new flow and its backend, a packet to a
//! frontend without backend, a drop and its reason, a reverse-NAT miss. Written to a ring
//! buffer only while a reader says it listens (`monitor_until`, a deadline it refreshes), so
//! with nobody listening an event costs one array read and a clock read, and only on these
//! rare paths, never on an established flow's packets.
use aya_ebpf::helpers::bpf_ktime_get_ns;
use proxy_common::{MonitorEvent, RawAddress};

use crate::{
    lb::Chosen,
    maps::{MONITOR, MONITOR_UNTIL},
    outcome::Outcome,
    parse::Packet,
};

/// What an event is: its [`monitor_kind`](proxy_common::monitor_kind), the packet's outcome
/// and the program that saw it, packed in one register (a BPF function takes five).
#[inline(always)]
pub(crate) fn what(kind: u8, outcome: Outcome, hook: u8) -> u32 {
    u32::from(kind) | (outcome.counter().index() << 8) | (u32::from(hook) << 16)
}

/// Emits an event ([`what`]) about `packet` if somebody listens: its frontend's reverse-NAT id
/// and, for a new flow, the backend chosen. Its own BPF function: the event is written into
/// the ring buffer, not built on the caller's stack.
#[inline(never)]
pub(crate) fn emit<A: RawAddress>(
    packet: &Packet<A>,
    what: u32,
    rev_nat_id: u32,
    chosen: Option<&Chosen<A>>,
) {
    // SAFETY: no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if MONITOR_UNTIL.get(0).is_none_or(|until| now >= *until) {
        return;
    }
    let Some(mut entry) = MONITOR.reserve::<MonitorEvent>(0) else {
        return; // Full: the reader is behind.
    };
    // Field by field into the ring buffer: a whole event built first would sit on the stack.
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points at a reserved, writable `MonitorEvent`; every field is written
    // before it is submitted (plain data, any bytes valid).
    unsafe {
        (*event).time_ns = now;
        (*event).kind = what as u8;
        (*event).family = if size_of::<A>() == 4 { 4 } else { 6 };
        (*event).protocol = packet.protocol;
        (*event).counter = (what >> 8) as u8;
        (*event).hook = (what >> 16) as u8;
        (*event)._pad = [0; 3];
        (*event).source = packet.source.to_wide();
        (*event).destination = packet.destination.to_wide();
        (*event).source_port = packet.source_port;
        (*event).destination_port = packet.destination_port;
        (*event)._pad2 = 0;
        (*event).rev_nat_id = rev_nat_id;
        match chosen {
            Some(chosen) => {
                (*event).backend = chosen.backend.address.to_wide();
                (*event).backend_port = chosen.backend.port;
                (*event).backend_id = chosen.id;
            }
            None => {
                (*event).backend = [0; 16];
                (*event).backend_port = 0;
                (*event).backend_id = 0;
            }
        }
    }
    entry.submit(0);
}
