//! Service lookup and backend selection, at the level of addresses and ports only: no packet
//! context here, so every hook (TC now; XDP and the cgroup socket hooks next) shares them.
use proxy_common::{Backend, ServiceKey, ServiceValue, scope, service_flags};

use crate::family::Family;

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
