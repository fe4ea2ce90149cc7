//! Service lookup and backend selection, at the level of addresses and ports only: no packet
//! context here, so every hook (TC now; XDP and the cgroup socket hooks next) shares them.
use aya_ebpf::maps::lpm_trie::Key;
use proxy_common::{
    AffinityKey, AffinityValue, Backend, RawAddress, ServiceKey, ServiceValue, SourceRange,
    affinity_by, scope, service_flags,
};

use crate::{family::Family, maps};

/// A frontend's entry, as found for one client: the key of the scope it was found in (the
/// backend slots live under the same key) and its slot 0.
#[derive(Clone, Copy)]
pub(crate) struct Service<A> {
    pub key: ServiceKey<A>,
    pub entry: ServiceValue,
}

/// Looks up the frontend `address:port/protocol` (port in network order), as Cilium's
/// `lb4_lookup_service`: the external entry first, then, for a client inside the cluster
/// (`from_cluster`), the internal one when the frontend is two-scoped: in-cluster traffic
/// to an external frontend of a `Local` Service uses every endpoint, other traffic only the
/// local ones.
#[inline(always)]
pub(crate) fn lookup<F: Family>(
    address: F::Addr,
    port: u16,
    protocol: u8,
    from_cluster: bool,
) -> Option<Service<F::Addr>> {
    let key = ServiceKey::raw(address, port, protocol, scope::EXTERNAL, 0);
    // SAFETY: a map value read; the writer only ever replaces values whole.
    let entry = *unsafe { F::services().get(key) }?;
    if from_cluster && entry.flags & service_flags::TWO_SCOPES != 0 {
        let internal = ServiceKey {
            scope: scope::INTERNAL,
            ..key
        };
        if let Some(entry) = unsafe { F::services().get(internal) } {
            return Some(Service {
                key: internal,
                entry: *entry,
            });
        }
    }
    Some(Service { key, entry })
}

/// Whether the agent said no frontend of this family lies inside its `--cluster-cidr`
/// ([`maps::CLUSTER_CLEAR`]).
#[inline(always)]
pub(crate) fn cluster_clear<F: Family>() -> bool {
    maps::CLUSTER_CLEAR
        .get(F::CLUSTER_CLEAR)
        .is_some_and(|v| *v == proxy_common::cluster_clear::CLEAR)
}

/// Whether `client` may use `service`: any client, unless the frontend has
/// `loadBalancerSourceRanges`; then only one inside a range (the agent writes each range of
/// the frontend into the family's source-range trie).
#[inline(always)]
pub(crate) fn admits<F: Family>(service: &Service<F::Addr>, client: F::Addr) -> bool {
    if service.entry.flags & service_flags::SOURCE_RANGES == 0 {
        return true;
    }
    let bits = SourceRange::<F::Addr>::FRONTEND_BITS + address_bits::<F::Addr>();
    let key = Key::new(
        bits,
        SourceRange::new(
            service.key.address,
            service.key.port,
            service.key.protocol,
            client,
        ),
    );
    F::source_ranges().get(&key).is_some()
}

#[inline(always)]
fn address_bits<A: RawAddress>() -> u32 {
    (core::mem::size_of::<A>() * 8) as u32
}

/// The frontend of `address`'s unexposed ports (port 0, no backend) for `protocol`, if
/// `address` is a cluster IP: a packet or a call to a port the Service does not expose meets
/// it and is rejected, as kube-proxy's nftables mode rejects it.
#[inline(always)]
pub(crate) fn unexposed<F: Family>(address: F::Addr, protocol: u8) -> Option<Service<F::Addr>> {
    lookup::<F>(address, UNEXPOSED_PORT, protocol, false)
}

/// The agent's port for a cluster IP's unexposed ports: no Service port is 0.
const UNEXPOSED_PORT: u16 = 0;

/// A backend, with the id its slot names.
#[derive(Clone, Copy)]
pub(crate) struct Chosen<A> {
    pub id: u32,
    pub backend: Backend<A>,
}

/// The backend of `service`'s slot `slot` (1-based), if the slot and the backend exist.
#[inline(always)]
fn backend_in_slot<F: Family>(service: &Service<F::Addr>, slot: u16) -> Option<Chosen<F::Addr>> {
    // SAFETY: map value reads.
    let slot_entry = unsafe { F::services().get(service.key.with_slot(slot)) }?;
    let id = slot_entry.backend_id;
    let backend = *unsafe { F::backends().get(id) }?;
    Some(Chosen { id, backend })
}

/// Picks a backend of `service` from `random`; `None` when it has none.
#[inline(always)]
pub(crate) fn select<F: Family>(
    service: &Service<F::Addr>,
    random: u32,
) -> Option<Chosen<F::Addr>> {
    let count = u32::from(service.entry.count);
    if count == 0 {
        return None;
    }
    backend_in_slot::<F>(service, (random % count) as u16 + 1)
}

/// Backend `id`, while it exists (it leaves the map when no Service names it).
#[inline(always)]
pub(crate) fn backend<F: Family>(id: u32) -> Option<Chosen<F::Addr>> {
    // SAFETY: a map value read.
    let backend = *unsafe { F::backends().get(id) }?;
    Some(Chosen { id, backend })
}

/// Who a new connection comes from, for session affinity.
#[derive(Clone, Copy)]
pub(crate) enum Client {
    /// Its address, IPv4 in the first 4 bytes (the TC path).
    Address([u8; 16]),
    /// Its network namespace's cookie (the socket path).
    Netns(u64),
}

/// Picks the backend of a new connection: for a Service with `sessionAffinity: ClientIP`, the
/// client's backend while the binding has been used within the timeout and the backend exists
/// (the agent removes the bindings of a backend that leaves the Service); otherwise a random
/// one, which becomes the client's binding.
#[inline(always)]
pub(crate) fn select_for<F: Family>(
    service: &Service<F::Addr>,
    client: Client,
    random: u32,
    now: u64,
) -> Option<Chosen<F::Addr>> {
    let timeout = service.entry.affinity_timeout;
    if timeout == 0 {
        return select::<F>(service, random);
    }
    let (bytes, by) = match client {
        Client::Address(address) => (address, affinity_by::ADDRESS),
        Client::Netns(cookie) => {
            let mut bytes = [0u8; 16];
            bytes[..8].copy_from_slice(&cookie.to_ne_bytes());
            (bytes, affinity_by::NETNS)
        }
    };
    let key = AffinityKey::new(bytes, by, service.entry.rev_nat_id);
    if let Some(binding) = F::affinity().get_ptr_mut(key) {
        // SAFETY: a map value pointer; a racing update only moves the timestamp.
        let binding = unsafe { &mut *binding };
        if now.saturating_sub(binding.last_used) < u64::from(timeout) * 1_000_000_000
            && let Some(chosen) = backend::<F>(binding.backend_id)
        {
            binding.last_used = now;
            return Some(chosen);
        }
    }
    let chosen = select::<F>(service, random)?;
    let binding = AffinityValue {
        last_used: now,
        backend_id: chosen.id,
        _pad: [0; 4],
    };
    // A full map evicts the least recently used binding; a failed insert only loses affinity.
    let _ = F::affinity().insert(key, binding, 0);
    Some(chosen)
}

/// Whether backend `id` still exists.
#[inline(always)]
pub(crate) fn backend_exists<F: Family>(id: u32) -> bool {
    backend::<F>(id).is_some()
}

/// The frontend (address, port) a reverse-NAT id restores.
#[inline(always)]
pub(crate) fn frontend_of<F: Family>(rev_nat_id: u32) -> Option<(F::Addr, u16)> {
    // SAFETY: a map value read.
    let entry = unsafe { F::reverse_nat().get(rev_nat_id) }?;
    Some((entry.address, entry.port))
}
