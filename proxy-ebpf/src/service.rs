//! Service load balancing: the forward path (DNAT of a pod's packet to a service) and the
//! reverse path (restoring the service address on a backend's reply).
use aya_ebpf::{helpers::bpf_get_prandom_u32, programs::TcContext};
use proxy_common::{ConntrackValue, counter, direction, protocol};

use crate::{conntrack, family::Family, parse::Packet};

/// Translates a packet addressed to a service frontend. Returns the counter to bump.
#[inline(always)]
pub fn forward<F: Family>(ctx: &TcContext, packet: &Packet<F::Addr>) -> Result<u32, i64> {
    // The service entry is looked up first: a deleted service stops translation at once, even
    // for flows that still have conntrack entries.
    let service_key = F::service_key(
        packet.destination,
        packet.destination_port,
        packet.protocol,
        0,
    );
    let Some(service) = (unsafe { F::services().get(&service_key) }) else {
        return Ok(counter::PASS);
    };
    let service = *service;
    let now = conntrack::now();
    let forward_key = F::conntrack_key(
        packet.source,
        packet.destination,
        packet.source_port,
        packet.destination_port,
        packet.protocol,
        direction::FORWARD,
    );

    let mut outcome = counter::DNAT_NEW;
    if let Some(entry) = F::conntrack().get_ptr_mut(&forward_key) {
        // SAFETY: a map value pointer; concurrent updates are benign (timestamps and flags).
        let entry = unsafe { &mut *entry };
        if entry.rev_nat_id == service.rev_nat_id && !conntrack::reopens(entry, packet.tcp_flags) {
            // A TCP connection keeps its backend for life, like a netfilter NAT binding, even
            // once the backend has left the Service. Other flows follow the Service: if their
            // backend is gone they are balanced again (kube-proxy clears their conntrack).
            if packet.protocol == protocol::TCP
                || unsafe { F::backends().get(entry.backend_id) }.is_some()
            {
                conntrack::touch(entry, packet.tcp_flags, now);
                let address = F::from_conntrack(&entry.backend_address);
                F::rewrite(ctx, packet, true, address, entry.backend_port)?;
                return Ok(counter::DNAT_ESTABLISHED);
            }
            outcome = counter::REPICK;
        }
    }

    if service.count == 0 {
        return Ok(counter::NO_BACKEND);
    }
    // SAFETY: no arguments.
    let random = unsafe { bpf_get_prandom_u32() };
    let slot = (random % u32::from(service.count)) as u16 + 1;
    let slot_key = F::service_key(
        packet.destination,
        packet.destination_port,
        packet.protocol,
        slot,
    );
    let Some(slot_entry) = (unsafe { F::services().get(&slot_key) }) else {
        return Ok(counter::NO_BACKEND);
    };
    let backend_id = slot_entry.backend_id;
    let Some(backend) = (unsafe { F::backends().get(backend_id) }) else {
        return Ok(counter::NO_BACKEND);
    };
    let (address, port) = F::backend_address(backend);

    let entry = ConntrackValue {
        last_seen: now,
        backend_id,
        rev_nat_id: service.rev_nat_id,
        backend_address: F::to_conntrack(address),
        backend_port: port,
        flags: conntrack::flags_of(packet.tcp_flags),
        _pad: [0; 5],
    };
    let reverse_key = F::conntrack_key(
        address,
        packet.source,
        port,
        packet.source_port,
        packet.protocol,
        direction::REVERSE,
    );
    // Reverse first: once the backend can answer, its reply must find the entry.
    F::conntrack()
        .insert(&reverse_key, entry, 0)
        .map_err(i64::from)?;
    F::conntrack()
        .insert(&forward_key, entry, 0)
        .map_err(i64::from)?;
    F::rewrite(ctx, packet, true, address, port)?;
    Ok(outcome)
}

/// Restores the service address on a backend's reply to a translated flow.
#[inline(always)]
pub fn reverse<F: Family>(ctx: &TcContext, packet: &Packet<F::Addr>) -> Result<u32, i64> {
    let reverse_key = F::conntrack_key(
        packet.source,
        packet.destination,
        packet.source_port,
        packet.destination_port,
        packet.protocol,
        direction::REVERSE,
    );
    let Some(entry) = F::conntrack().get_ptr_mut(&reverse_key) else {
        return Ok(counter::PASS);
    };
    // SAFETY: a map value pointer; concurrent updates are benign.
    let entry = unsafe { &mut *entry };
    let Some(frontend) = (unsafe { F::reverse_nat().get(entry.rev_nat_id) }) else {
        return Ok(counter::PASS);
    };
    let (address, port) = F::reverse_nat_address(frontend);
    conntrack::touch(entry, packet.tcp_flags, conntrack::now());
    F::rewrite(ctx, packet, false, address, port)?;
    Ok(counter::REVERSE_NAT)
}
