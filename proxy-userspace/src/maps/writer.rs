//! The map writer: turns desired service entries into ordered map writes for one family.
//!
//! Order (as in Cilium): backends → reverse NAT → backend slots → slot 0 → trim stale slots →
//! release unused backends. A delete goes the other way. A packet therefore never sees half a
//! service. IDs are restored from the pinned maps at start, so a restart renumbers nothing and
//! rewrites nothing that is already right.
use std::collections::{BTreeMap, HashMap, HashSet};

use proxy_common::ServiceValue;

use super::{FrontendAddress, LbMaps, MapError, SlotKey, codec};
use crate::{
    family::Address,
    model::Protocol,
    plan::{Backend, BackendState, Frontend, ServiceEntry},
};

/// What the writer did, for tests, benchmarks and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Frontends whose entries were (re)written.
    pub frontends_written: u64,
    pub frontends_deleted: u64,
    /// Individual service-map writes (slot 0 and backend slots).
    pub service_writes: u64,
    pub service_deletes: u64,
    pub backend_writes: u64,
    pub backend_deletes: u64,
    pub reverse_nat_writes: u64,
    pub reverse_nat_deletes: u64,
}

/// A failed frontend write, and whether its new entry had become visible (slot 0 written).
struct Failure {
    error: WriteError,
    committed: bool,
}

impl Failure {
    fn before_commit(error: WriteError) -> Self {
        Self {
            error,
            committed: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Map(#[from] MapError),
    #[error("{frontend} has {count} backends; a service holds at most {max}")]
    TooManyBackends {
        frontend: String,
        count: usize,
        max: usize,
    },
    #[error("no free {what} ID")]
    IdsExhausted { what: &'static str },
}

/// What the maps hold for one frontend: slot 0 whole, and the backends its slots name.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Programmed {
    head: ServiceValue,
    backend_ids: Vec<u32>,
}

#[derive(Clone, Copy, Debug)]
struct BackendRecord {
    id: u32,
    state: BackendState,
    /// Number of slots (across frontends) naming this backend.
    refs: u32,
}

type BackendKey<A> = (A, u16, Protocol);

/// Hands out IDs from 1, moving forward and wrapping, so a just-freed ID is not reused at once
/// (a conntrack entry naming it would otherwise follow a different backend).
#[derive(Debug, Default)]
struct Ids {
    used: HashSet<u32>,
    next: u32,
}

impl Ids {
    fn allocate(&mut self) -> Option<u32> {
        if self.used.len() >= (u32::MAX - 1) as usize {
            return None;
        }
        loop {
            self.next = self.next.checked_add(1).unwrap_or(1);
            if !self.used.contains(&self.next) {
                self.used.insert(self.next);
                return Some(self.next);
            }
        }
    }

    fn restore(&mut self, id: u32) {
        self.used.insert(id);
        self.next = self.next.max(id);
    }

    fn release(&mut self, id: u32) {
        self.used.remove(&id);
    }
}

pub struct Writer<A> {
    maps: LbMaps<A>,
    state: State<A>,
    /// Backends that left a frontend since the last [`Writer::take_departures`].
    departures: Vec<Departure<A>>,
    /// (frontend reverse-NAT id, backend id) whose affinity bindings are still to go.
    affinity_purge: HashSet<(u32, u32)>,
    stats: WriterStats,
}

/// A backend that left a frontend (the frontend's reverse-NAT id names it): sockets the socket
/// hooks connected to it through that frontend are the ones to close.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Departure<A> {
    pub rev_nat_id: u32,
    pub backend_id: u32,
    pub backend: Backend<A>,
}

const MAX_BACKENDS: usize = u16::MAX as usize;
/// Fewer new frontends than this are written one by one.
const BATCH_MIN: usize = 16;

/// What the writer knows the maps hold (learned from them at start and on refresh, then kept
/// up to date by every write).
struct State<A> {
    frontends: HashMap<Frontend<A>, Programmed>,
    backends: HashMap<BackendKey<A>, BackendRecord>,
    backend_keys: HashMap<u32, BackendKey<A>>,
    /// Backends whose last reference went away: deleted by the next garbage collection.
    unreferenced: Vec<u32>,
    backend_ids: Ids,
    rev_nat_ids: Ids,
    /// Reverse-NAT IDs found in the maps at start that no frontend uses.
    orphan_rev_nat: Vec<u32>,
}

impl<A: Address> Writer<A> {
    /// Takes over `maps`, learning what they already hold.
    pub fn restore(mut maps: LbMaps<A>) -> Result<Self, WriteError> {
        let state = Self::learn(&mut maps)?;
        Ok(Self {
            maps,
            state,
            departures: Vec::new(),
            affinity_purge: HashSet::new(),
            stats: WriterStats::default(),
        })
    }

    /// Reads what `maps` hold, repairing what an interrupted writer left half-written.
    fn learn(maps: &mut LbMaps<A>) -> Result<State<A>, WriteError> {
        let mut backend_ids = Ids::default();
        let mut backends = HashMap::new();
        let mut backend_by_id = HashMap::new();
        for (id, backend) in maps.backends.dump()? {
            backend_ids.restore(id);
            backend_by_id.insert(id, backend.key());
            backends.insert(
                backend.key(),
                BackendRecord {
                    id,
                    state: backend.state,
                    refs: 0,
                },
            );
        }
        let mut rev_nat_ids = Ids::default();
        let reverse_nat: HashMap<u32, FrontendAddress<A>> =
            maps.reverse_nat.dump()?.into_iter().collect();
        for id in reverse_nat.keys() {
            rev_nat_ids.restore(*id);
        }

        let mut slots: BTreeMap<Frontend<A>, BTreeMap<u16, ServiceValue>> = BTreeMap::new();
        for (key, value) in maps.services.dump()? {
            slots
                .entry(key.frontend)
                .or_default()
                .insert(key.slot, value);
        }
        let mut frontends = HashMap::new();
        let mut used_rev_nat = HashSet::new();
        for (frontend, slots) in slots {
            let complete = slots.get(&0).and_then(|head| {
                let ids: Option<Vec<u32>> = (1..=head.count)
                    .map(|s| {
                        slots
                            .get(&s)
                            .map(|v| v.backend_id)
                            .filter(|id| backend_by_id.contains_key(id))
                    })
                    .collect();
                Some(Programmed {
                    head: *head,
                    backend_ids: ids?,
                })
                .filter(|p| reverse_nat.contains_key(&p.head.rev_nat_id))
            });
            match complete {
                Some(programmed) => {
                    for id in &programmed.backend_ids {
                        if let Some(record) =
                            backend_by_id.get(id).and_then(|key| backends.get_mut(key))
                        {
                            record.refs += 1;
                        }
                    }
                    used_rev_nat.insert(programmed.head.rev_nat_id);
                    // Trim slots beyond the count left by an interrupted write.
                    for slot in slots
                        .keys()
                        .filter(|s| **s > programmed.backend_ids.len() as u16)
                    {
                        maps.services.delete(&SlotKey::new(frontend, *slot))?;
                    }
                    frontends.insert(frontend, programmed);
                }
                None => {
                    // Half-written by an interrupted agent: remove it, slot 0 first so it
                    // disappears at once; the sync rewrites it whole.
                    for slot in slots.keys() {
                        maps.services.delete(&SlotKey::new(frontend, *slot))?;
                    }
                }
            }
        }
        let orphan_rev_nat = reverse_nat
            .keys()
            .filter(|id| !used_rev_nat.contains(id))
            .copied()
            .collect();
        let unreferenced = backends
            .values()
            .filter(|r| r.refs == 0)
            .map(|r| r.id)
            .collect();
        Ok(State {
            frontends,
            backends,
            backend_keys: backend_by_id,
            unreferenced,
            backend_ids,
            rev_nat_ids,
            orphan_rev_nat,
        })
    }

    /// Re-reads what the maps really hold (someone may have changed them behind our back),
    /// repairing half-written entries like a restart would. A following `reconcile` then
    /// writes exactly the difference to the desired state.
    pub fn refresh(&mut self) -> Result<(), WriteError> {
        let mut state = Self::learn(&mut self.maps)?;
        // Keep moving forward from the IDs handed out so far.
        state.backend_ids.next = state.backend_ids.next.max(self.state.backend_ids.next);
        state.rev_nat_ids.next = state.rev_nat_ids.next.max(self.state.rev_nat_ids.next);
        self.state = state;
        Ok(())
    }

    /// The backends that left a frontend since the last call.
    pub fn take_departures(&mut self) -> Vec<Departure<A>> {
        std::mem::take(&mut self.departures)
    }

    /// Ends the session-affinity bindings of backends that left their frontend (a binding
    /// to a backend that is gone altogether is ignored by the datapath anyway). One pass over
    /// the affinity map, so a sync calls it once.
    pub fn purge_affinities(&mut self) -> Result<usize, WriteError> {
        if self.affinity_purge.is_empty() {
            return Ok(0);
        }
        let purge = std::mem::take(&mut self.affinity_purge);
        let stale: Vec<_> = self
            .maps
            .affinity
            .dump()?
            .into_iter()
            .filter(|(key, value)| purge.contains(&(key.rev_nat_id, value.backend_id)))
            .map(|(key, _)| key)
            .collect();
        self.maps.affinity.delete_many(&stale)?;
        Ok(stale.len())
    }

    /// Records that the backends of `old` not in `new` left the frontend `rev_nat_id`.
    fn record_departures(&mut self, rev_nat_id: u32, old: &[u32], new: &[u32]) {
        for id in old.iter().filter(|id| !new.contains(id)) {
            if let Some(key) = self.state.backend_keys.get(id) {
                let (address, port, protocol) = *key;
                let state = self.state.backends.get(key).map(|r| r.state);
                self.affinity_purge.insert((rev_nat_id, *id));
                self.departures.push(Departure {
                    rev_nat_id,
                    backend_id: *id,
                    backend: Backend {
                        address,
                        port,
                        protocol,
                        state: state.unwrap_or(BackendState::Active),
                    },
                });
            }
        }
    }

    pub fn stats(&self) -> WriterStats {
        self.stats
    }

    /// The source-range table: the proxier keeps it beside the frontends it guards (its
    /// entries are keyed by frontend, not by anything the writer allocates).
    pub fn source_ranges(&mut self) -> &mut super::BoxedTable<super::ranges::RangeKey<A>, ()> {
        &mut self.maps.source_ranges
    }

    pub fn maps(&self) -> &LbMaps<A> {
        &self.maps
    }

    /// Whether any frontend's address lies inside `network`.
    pub fn any_frontend_within(&self, network: &ipnet::IpNet) -> bool {
        self.state
            .frontends
            .keys()
            .any(|f| network.contains(&f.address.into()))
    }

    pub fn frontend_count(&self) -> usize {
        self.state.frontends.len()
    }

    pub fn backend_count(&self) -> usize {
        self.state.backends.len()
    }

    /// Makes the maps hold exactly `desired`: upserts every entry, removes every other
    /// frontend, then drops unused backends and reverse-NAT entries. Returns the errors of
    /// entries that could not be written (the others are written regardless).
    pub fn reconcile<'a>(
        &mut self,
        desired: impl IntoIterator<Item = (&'a Frontend<A>, &'a ServiceEntry<A>)>,
    ) -> Vec<(Option<Frontend<A>>, WriteError)> {
        let mut errors = Vec::new();
        let mut keep = HashSet::new();
        for (frontend, entry) in desired {
            keep.insert(*frontend);
            if let Err(e) = self.upsert(frontend, entry) {
                errors.push((Some(*frontend), e));
            }
        }
        let stale: Vec<_> = self
            .state
            .frontends
            .keys()
            .filter(|f| !keep.contains(*f))
            .copied()
            .collect();
        for frontend in stale {
            if let Err(e) = self.remove(&frontend) {
                errors.push((Some(frontend), e));
            }
        }
        if let Err(e) = self.collect_garbage() {
            errors.push((None, e));
        }
        errors
    }

    /// Writes many frontends. New frontends go in batches, phase by phase across all of them
    /// (backends, reverse NAT, slots, then every slot 0), so a cold start of thousands of
    /// Services costs a handful of syscalls and each Service still appears whole. Changes to
    /// existing frontends, and any batch that fails, go one by one through [`Self::upsert`].
    /// Returns the frontends that could not be written.
    pub fn upsert_many(
        &mut self,
        items: &[(Frontend<A>, ServiceEntry<A>)],
    ) -> Vec<(Frontend<A>, WriteError)> {
        let (fresh, rest): (Vec<_>, Vec<_>) = items.iter().partition(|(f, e)| {
            !self.state.frontends.contains_key(f)
                && e.backends.len() <= MAX_BACKENDS
                && e.backends.iter().all(|b| {
                    // A state change of a shared backend takes the careful path.
                    self.state
                        .backends
                        .get(&b.key())
                        .is_none_or(|r| r.state == b.state)
                })
        });
        let mut one_by_one = rest;
        if fresh.len() >= BATCH_MIN {
            if let Err(error) = self.insert_batch(&fresh) {
                tracing::debug!(%error, frontends = fresh.len(), "batch failed; writing one by one");
                one_by_one.extend(fresh);
            }
        } else {
            one_by_one.extend(fresh);
        }
        one_by_one
            .into_iter()
            .filter_map(|(f, e)| self.upsert(f, e).err().map(|error| (*f, error)))
            .collect()
    }

    /// Writes new frontends in four batches. On error nothing of them is visible and the
    /// writer's state is as before.
    fn insert_batch(
        &mut self,
        fresh: &[&(Frontend<A>, ServiceEntry<A>)],
    ) -> Result<(), WriteError> {
        let started = std::time::Instant::now();
        // 1. Backends.
        let mut created = Vec::new();
        let mut new_backends = Vec::new();
        let mut ids_per_frontend = Vec::with_capacity(fresh.len());
        for (_, entry) in fresh {
            let mut ids = Vec::with_capacity(entry.backends.len());
            for backend in &entry.backends {
                if let Some(record) = self.state.backends.get_mut(&backend.key()) {
                    record.refs += 1;
                    ids.push(record.id);
                    continue;
                }
                let Some(id) = self.state.backend_ids.allocate() else {
                    self.undo_batch(&ids_per_frontend, &ids, &created, &[], &[]);
                    return Err(WriteError::IdsExhausted { what: "backend" });
                };
                self.record_backend(id, backend);
                created.push(id);
                new_backends.push((id, *backend));
                ids.push(id);
            }
            ids_per_frontend.push(ids);
        }
        let prepared = started.elapsed();
        if let Err(e) = self.maps.backends.put_many(&new_backends) {
            self.undo_batch(&ids_per_frontend, &[], &created, &[], &[]);
            return Err(e.into());
        }
        let backends_written = started.elapsed();
        // 2. Reverse NAT.
        let mut reverse_nat = Vec::with_capacity(fresh.len());
        for (frontend, _) in fresh {
            let Some(id) = self.state.rev_nat_ids.allocate() else {
                self.undo_batch(&ids_per_frontend, &[], &created, &reverse_nat, &[]);
                return Err(WriteError::IdsExhausted {
                    what: "reverse NAT",
                });
            };
            reverse_nat.push((id, (frontend.address, frontend.port)));
        }
        if let Err(e) = self.maps.reverse_nat.put_many(&reverse_nat) {
            self.undo_batch(&ids_per_frontend, &[], &created, &reverse_nat, &[]);
            return Err(e.into());
        }
        // 3. Backend slots of every frontend, then 4. every slot 0.
        let mut slots = Vec::new();
        let mut heads = Vec::with_capacity(fresh.len());
        for (((frontend, entry), ids), (rev_nat_id, _)) in
            fresh.iter().zip(&ids_per_frontend).zip(&reverse_nat)
        {
            for (index, id) in ids.iter().enumerate() {
                slots.push((
                    SlotKey::new(*frontend, index as u16 + 1),
                    ServiceValue::slot(*id, *rev_nat_id),
                ));
            }
            let head = codec::head(entry, *rev_nat_id, ids.len() as u16);
            heads.push((SlotKey::new(*frontend, 0), head));
        }
        for batch in [&slots, &heads] {
            if let Err(e) = self.maps.services.put_many(batch) {
                let written: Vec<_> = heads.iter().chain(&slots).map(|(key, _)| *key).collect();
                self.undo_batch(&ids_per_frontend, &[], &created, &reverse_nat, &written);
                return Err(e.into());
            }
        }
        tracing::debug!(
            frontends = fresh.len(),
            backends = new_backends.len(),
            prepare = ?prepared,
            backends_written = ?backends_written,
            total = ?started.elapsed(),
            "new frontends written in batches"
        );
        self.stats.backend_writes += new_backends.len() as u64;
        self.stats.reverse_nat_writes += reverse_nat.len() as u64;
        self.stats.service_writes += (slots.len() + heads.len()) as u64;
        self.stats.frontends_written += fresh.len() as u64;
        for (((frontend, _), ids), (_, head)) in fresh.iter().zip(ids_per_frontend).zip(heads) {
            self.state.frontends.insert(
                *frontend,
                Programmed {
                    head,
                    backend_ids: ids,
                },
            );
        }
        Ok(())
    }

    /// Undoes a failed [`Self::insert_batch`]: service entries first (slot 0 at the head of
    /// `written`), then reverse NAT, then the backends it created; references and IDs go
    /// back. Best effort on the kernel side: this runs after a map error.
    fn undo_batch(
        &mut self,
        ids_per_frontend: &[Vec<u32>],
        partial: &[u32],
        created: &[u32],
        reverse_nat: &[(u32, FrontendAddress<A>)],
        written: &[SlotKey<A>],
    ) {
        let _ = self.maps.services.delete_many(written);
        let rev_ids: Vec<u32> = reverse_nat.iter().map(|(id, _)| *id).collect();
        let _ = self.maps.reverse_nat.delete_many(&rev_ids);
        for id in rev_ids {
            self.state.rev_nat_ids.release(id);
        }
        for id in ids_per_frontend.iter().flatten().chain(partial) {
            if let Some(record) = self
                .state
                .backend_keys
                .get(id)
                .and_then(|key| self.state.backends.get_mut(key))
            {
                record.refs = record.refs.saturating_sub(1);
            }
        }
        for id in created {
            let _ = self.maps.backends.delete(id);
            if let Some(key) = self.state.backend_keys.remove(id) {
                self.state.backends.remove(&key);
            }
            self.state.backend_ids.release(*id);
        }
    }

    /// Writes one frontend. Returns whether anything changed.
    pub fn upsert(
        &mut self,
        frontend: &Frontend<A>,
        entry: &ServiceEntry<A>,
    ) -> Result<bool, WriteError> {
        if entry.backends.len() > MAX_BACKENDS {
            return Err(WriteError::TooManyBackends {
                frontend: frontend.to_string(),
                count: entry.backends.len(),
                max: MAX_BACKENDS,
            });
        }
        if self.is_programmed(frontend, entry) {
            return Ok(false);
        }

        // 1. Backends.
        let mut ids = Vec::with_capacity(entry.backends.len());
        for backend in &entry.backends {
            match self.acquire_backend(backend) {
                Ok(id) => ids.push(id),
                Err(e) => {
                    self.release_backends(&ids);
                    self.collect_garbage()?;
                    return Err(e);
                }
            }
        }
        let result = self.write_slots(frontend, entry, &ids);
        if let Err(Failure {
            committed: false, ..
        }) = &result
        {
            // Nothing of the new entry is visible: drop the references we took.
            self.release_backends(&ids);
        }
        self.collect_garbage()?;
        result.map(|()| true).map_err(|f| f.error)
    }

    fn is_programmed(&self, frontend: &Frontend<A>, entry: &ServiceEntry<A>) -> bool {
        let Some(programmed) = self.state.frontends.get(frontend) else {
            return false;
        };
        let head = codec::head(
            entry,
            programmed.head.rev_nat_id,
            entry.backends.len() as u16,
        );
        programmed.head == head
            && programmed.backend_ids.len() == entry.backends.len()
            && programmed
                .backend_ids
                .iter()
                .zip(&entry.backends)
                .all(|(id, backend)| {
                    self.state
                        .backends
                        .get(&backend.key())
                        .is_some_and(|r| r.id == *id && r.state == backend.state)
                })
    }

    /// Steps 2–5: reverse NAT, slots, slot 0, trim. Before slot 0 is written a failure is
    /// rolled back (the old entry stays whole and visible); once it is written the new entry
    /// is committed, and the old slots' backend references are released.
    fn write_slots(
        &mut self,
        frontend: &Frontend<A>,
        entry: &ServiceEntry<A>,
        ids: &[u32],
    ) -> Result<(), Failure> {
        let old = self.state.frontends.get(frontend).cloned();
        let rev_nat_id = match &old {
            Some(p) => p.head.rev_nat_id,
            None => {
                let id = self
                    .state
                    .rev_nat_ids
                    .allocate()
                    .ok_or(WriteError::IdsExhausted {
                        what: "reverse NAT",
                    })
                    .map_err(Failure::before_commit)?;
                if let Err(e) = self
                    .maps
                    .reverse_nat
                    .put(&id, &(frontend.address, frontend.port))
                {
                    self.state.rev_nat_ids.release(id);
                    return Err(Failure::before_commit(e.into()));
                }
                self.stats.reverse_nat_writes += 1;
                id
            }
        };
        let old_ids = old
            .as_ref()
            .map(|p| p.backend_ids.clone())
            .unwrap_or_default();
        let mut written = Vec::new();
        let mut result = Ok(());
        for (index, id) in ids.iter().enumerate() {
            if old_ids.get(index) == Some(id) {
                continue;
            }
            let slot = index as u16 + 1;
            let key = SlotKey::new(*frontend, slot);
            if let Err(e) = self
                .maps
                .services
                .put(&key, &ServiceValue::slot(*id, rev_nat_id))
            {
                result = Err(e);
                break;
            }
            written.push(slot);
            self.stats.service_writes += 1;
        }
        let head = codec::head(entry, rev_nat_id, ids.len() as u16);
        if let Err(e) =
            result.and_then(|()| self.maps.services.put(&SlotKey::new(*frontend, 0), &head))
        {
            self.roll_back(frontend, old.is_none(), rev_nat_id, &written, &old_ids);
            return Err(Failure::before_commit(e.into()));
        }
        self.stats.service_writes += 1;
        self.stats.frontends_written += 1;
        self.state.frontends.insert(
            *frontend,
            Programmed {
                head,
                backend_ids: ids.to_vec(),
            },
        );
        self.record_departures(rev_nat_id, &old_ids, ids);
        self.release_backends(&old_ids);
        // Stale slots beyond the new count are invisible now; trim them.
        for slot in ids.len() + 1..=old_ids.len() {
            if let Err(e) = self
                .maps
                .services
                .delete(&SlotKey::new(*frontend, slot as u16))
            {
                // Invisible leftovers: the next write of this frontend overwrites them and a
                // restart trims them.
                return Err(Failure {
                    error: e.into(),
                    committed: true,
                });
            }
            self.stats.service_deletes += 1;
        }
        Ok(())
    }

    /// Undoes the slot writes of a failed update: slots that held another backend get it back,
    /// slots that were new are deleted; a frontend that never became visible loses its reverse
    /// NAT entry too. Best effort: this runs after a map error.
    fn roll_back(
        &mut self,
        frontend: &Frontend<A>,
        new: bool,
        rev_nat_id: u32,
        written: &[u16],
        old_ids: &[u32],
    ) {
        for slot in written {
            let key = SlotKey::new(*frontend, *slot);
            match old_ids.get(usize::from(*slot) - 1) {
                Some(id) => {
                    let _ = self
                        .maps
                        .services
                        .put(&key, &ServiceValue::slot(*id, rev_nat_id));
                }
                None => {
                    let _ = self.maps.services.delete(&key);
                }
            }
        }
        if new {
            let _ = self.maps.reverse_nat.delete(&rev_nat_id);
            self.state.rev_nat_ids.release(rev_nat_id);
        }
    }

    /// Removes one frontend: slot 0 first (the service disappears at once), then its slots,
    /// its reverse NAT entry and the backends nothing else uses.
    pub fn remove(&mut self, frontend: &Frontend<A>) -> Result<bool, WriteError> {
        let Some(programmed) = self.state.frontends.get(frontend).cloned() else {
            return Ok(false);
        };
        self.maps.services.delete(&SlotKey::new(*frontend, 0))?;
        self.stats.service_deletes += 1;
        self.state.frontends.remove(frontend);
        self.stats.frontends_deleted += 1;
        self.record_departures(programmed.head.rev_nat_id, &programmed.backend_ids, &[]);
        self.release_backends(&programmed.backend_ids);
        for slot in 1..=programmed.backend_ids.len() as u16 {
            self.maps.services.delete(&SlotKey::new(*frontend, slot))?;
            self.stats.service_deletes += 1;
        }
        let rev_nat_id = programmed.head.rev_nat_id;
        self.maps.reverse_nat.delete(&rev_nat_id)?;
        self.stats.reverse_nat_deletes += 1;
        self.state.rev_nat_ids.release(rev_nat_id);
        self.collect_garbage()?;
        Ok(true)
    }

    /// Returns the backend's ID, writing the backend first if it is new or its state changed.
    fn acquire_backend(&mut self, backend: &Backend<A>) -> Result<u32, WriteError> {
        if let Some(record) = self.state.backends.get_mut(&backend.key()) {
            if record.state != backend.state {
                self.maps.backends.put(&record.id, backend)?;
                self.stats.backend_writes += 1;
                record.state = backend.state;
            }
            record.refs += 1;
            return Ok(record.id);
        }
        let id = self
            .state
            .backend_ids
            .allocate()
            .ok_or(WriteError::IdsExhausted { what: "backend" })?;
        if let Err(e) = self.maps.backends.put(&id, backend) {
            self.state.backend_ids.release(id);
            return Err(e.into());
        }
        self.stats.backend_writes += 1;
        self.record_backend(id, backend);
        Ok(id)
    }

    /// Remembers a new backend, referenced once.
    fn record_backend(&mut self, id: u32, backend: &Backend<A>) {
        self.state.backend_keys.insert(id, backend.key());
        self.state.backends.insert(
            backend.key(),
            BackendRecord {
                id,
                state: backend.state,
                refs: 1,
            },
        );
    }

    fn release_backends(&mut self, ids: &[u32]) {
        for id in ids {
            let Some(record) = self
                .state
                .backend_keys
                .get(id)
                .and_then(|key| self.state.backends.get_mut(key))
            else {
                continue;
            };
            record.refs = record.refs.saturating_sub(1);
            if record.refs == 0 {
                self.state.unreferenced.push(*id);
            }
        }
    }

    /// Deletes backends no slot names and reverse-NAT entries no frontend uses.
    fn collect_garbage(&mut self) -> Result<(), WriteError> {
        while let Some(id) = self.state.unreferenced.pop() {
            let Some(key) = self.state.backend_keys.get(&id).copied() else {
                continue;
            };
            if self.state.backends.get(&key).is_some_and(|r| r.refs > 0) {
                continue; // Referenced again since.
            }
            if let Err(e) = self.maps.backends.delete(&id) {
                self.state.unreferenced.push(id);
                return Err(e.into());
            }
            self.stats.backend_deletes += 1;
            self.state.backends.remove(&key);
            self.state.backend_keys.remove(&id);
            self.state.backend_ids.release(id);
        }
        for id in std::mem::take(&mut self.state.orphan_rev_nat) {
            self.maps.reverse_nat.delete(&id)?;
            self.stats.reverse_nat_deletes += 1;
            self.state.rev_nat_ids.release(id);
        }
        Ok(())
    }
}
