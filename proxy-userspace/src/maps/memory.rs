//! The in-memory twin of the kernel maps: one shared state behind a table per map
//! ([`MemoryMaps::tables`]). It records every operation and checks, after each one, the
//! invariant the datapath relies on ([`LbSnapshot::half_written`]), so a writer test sees any
//! single write that would have shown a packet half a service.
use std::{
    collections::BTreeMap,
    ops::{Deref, DerefMut},
    sync::{Arc, Mutex},
};

use proxy_common::{AffinityKey, AffinityValue, ServiceValue};

use super::{FrontendAddress, LbMaps, LbSnapshot, MapError, SlotKey, Table, ranges::RangeKey};
use crate::{
    family::Address,
    plan::{Backend, Frontend},
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op<A> {
    PutService(Frontend<A>, u16),
    DeleteService(Frontend<A>, u16),
    PutBackend(u32),
    DeleteBackend(u32),
    PutReverseNat(u32),
    DeleteReverseNat(u32),
}

#[derive(Clone, Debug)]
pub struct MemoryMaps<A> {
    /// What the maps hold (also reachable through `Deref`).
    pub maps: LbSnapshot<A>,
    pub ops: Vec<Op<A>>,
    /// Invariant violations seen after any single operation.
    pub violations: Vec<String>,
    /// Fail writes beyond this many service entries (to test a full map).
    pub service_capacity: Option<usize>,
    /// Session-affinity bindings (the datapath's in the kernel; tests put them here).
    pub affinity: BTreeMap<AffinityKey, AffinityValue>,
    /// Source-range entries.
    pub source_ranges: std::collections::BTreeSet<RangeKey<A>>,
}

/// A twin shared between the writer that owns its tables and a test that inspects it.
pub type SharedMemoryMaps<A> = Arc<Mutex<MemoryMaps<A>>>;

impl<A> Default for MemoryMaps<A> {
    fn default() -> Self {
        Self {
            maps: LbSnapshot {
                services: BTreeMap::new(),
                backends: BTreeMap::new(),
                reverse_nat: BTreeMap::new(),
            },
            ops: Vec::new(),
            violations: Vec::new(),
            service_capacity: None,
            affinity: BTreeMap::new(),
            source_ranges: std::collections::BTreeSet::new(),
        }
    }
}

impl<A> Deref for MemoryMaps<A> {
    type Target = LbSnapshot<A>;
    fn deref(&self) -> &LbSnapshot<A> {
        &self.maps
    }
}

impl<A> DerefMut for MemoryMaps<A> {
    fn deref_mut(&mut self) -> &mut LbSnapshot<A> {
        &mut self.maps
    }
}

impl<A: Address> MemoryMaps<A> {
    /// A twin holding `maps` (what pinned maps would hold after an agent stopped), no history.
    pub fn holding(maps: LbSnapshot<A>) -> Self {
        Self {
            maps,
            ..Self::default()
        }
    }

    pub fn shared(self) -> SharedMemoryMaps<A> {
        Arc::new(Mutex::new(self))
    }

    /// A fresh shared twin and the tables a writer takes.
    pub fn new_shared() -> (SharedMemoryMaps<A>, LbMaps<A>) {
        let shared = Self::default().shared();
        let tables = Self::tables(&shared);
        (shared, tables)
    }

    /// Tables over `shared`.
    pub fn tables(shared: &SharedMemoryMaps<A>) -> LbMaps<A> {
        LbMaps {
            services: Box::new(Services(shared.clone())),
            backends: Box::new(Backends(shared.clone())),
            reverse_nat: Box::new(ReverseNats(shared.clone())),
            affinity: Box::new(Affinity(shared.clone())),
            source_ranges: Box::new(SourceRanges(shared.clone())),
        }
    }

    fn record(&mut self, op: Op<A>) {
        for problem in self.maps.half_written() {
            self.violations.push(format!("after {op:?}: {problem}"));
        }
        self.ops.push(op);
    }
}

fn lock<A>(shared: &SharedMemoryMaps<A>) -> std::sync::MutexGuard<'_, MemoryMaps<A>> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

struct Services<A>(SharedMemoryMaps<A>);
struct Backends<A>(SharedMemoryMaps<A>);
struct ReverseNats<A>(SharedMemoryMaps<A>);
struct Affinity<A>(SharedMemoryMaps<A>);
struct SourceRanges<A>(SharedMemoryMaps<A>);

impl<A: Address> Table<RangeKey<A>, ()> for SourceRanges<A> {
    fn dump(&self) -> Result<Vec<(RangeKey<A>, ())>, MapError> {
        Ok(lock(&self.0)
            .source_ranges
            .iter()
            .map(|k| (*k, ()))
            .collect())
    }

    fn put(&mut self, key: &RangeKey<A>, _: &()) -> Result<(), MapError> {
        lock(&self.0).source_ranges.insert(*key);
        Ok(())
    }

    fn delete(&mut self, key: &RangeKey<A>) -> Result<(), MapError> {
        lock(&self.0).source_ranges.remove(key);
        Ok(())
    }
}

impl<A: Address> Table<AffinityKey, AffinityValue> for Affinity<A> {
    fn dump(&self) -> Result<Vec<(AffinityKey, AffinityValue)>, MapError> {
        Ok(lock(&self.0)
            .affinity
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect())
    }

    fn put(&mut self, key: &AffinityKey, value: &AffinityValue) -> Result<(), MapError> {
        lock(&self.0).affinity.insert(*key, *value);
        Ok(())
    }

    fn delete(&mut self, key: &AffinityKey) -> Result<(), MapError> {
        lock(&self.0).affinity.remove(key);
        Ok(())
    }
}

impl<A: Address> Table<SlotKey<A>, ServiceValue> for Services<A> {
    fn dump(&self) -> Result<Vec<(SlotKey<A>, ServiceValue)>, MapError> {
        Ok(lock(&self.0)
            .services
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect())
    }

    fn put(&mut self, key: &SlotKey<A>, value: &ServiceValue) -> Result<(), MapError> {
        let mut maps = lock(&self.0);
        if let Some(capacity) = maps.service_capacity
            && !maps.services.contains_key(key)
            && maps.services.len() >= capacity
        {
            return Err(MapError::Full {
                map: "memory services",
                capacity: capacity as u32,
            });
        }
        maps.services.insert(*key, *value);
        maps.record(Op::PutService(key.frontend, key.slot));
        Ok(())
    }

    fn delete(&mut self, key: &SlotKey<A>) -> Result<(), MapError> {
        let mut maps = lock(&self.0);
        maps.services.remove(key);
        maps.record(Op::DeleteService(key.frontend, key.slot));
        Ok(())
    }
}

impl<A: Address> Table<u32, Backend<A>> for Backends<A> {
    fn dump(&self) -> Result<Vec<(u32, Backend<A>)>, MapError> {
        Ok(lock(&self.0)
            .backends
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect())
    }

    fn put(&mut self, id: &u32, backend: &Backend<A>) -> Result<(), MapError> {
        let mut maps = lock(&self.0);
        maps.backends.insert(*id, *backend);
        maps.record(Op::PutBackend(*id));
        Ok(())
    }

    fn delete(&mut self, id: &u32) -> Result<(), MapError> {
        let mut maps = lock(&self.0);
        maps.backends.remove(id);
        maps.record(Op::DeleteBackend(*id));
        Ok(())
    }
}

impl<A: Address> Table<u32, FrontendAddress<A>> for ReverseNats<A> {
    fn dump(&self) -> Result<Vec<(u32, FrontendAddress<A>)>, MapError> {
        Ok(lock(&self.0)
            .reverse_nat
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect())
    }

    fn put(&mut self, id: &u32, frontend: &FrontendAddress<A>) -> Result<(), MapError> {
        let mut maps = lock(&self.0);
        maps.reverse_nat.insert(*id, *frontend);
        maps.record(Op::PutReverseNat(*id));
        Ok(())
    }

    fn delete(&mut self, id: &u32) -> Result<(), MapError> {
        let mut maps = lock(&self.0);
        maps.reverse_nat.remove(id);
        maps.record(Op::DeleteReverseNat(*id));
        Ok(())
    }
}
