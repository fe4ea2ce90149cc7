//! The in-memory twin of the kernel maps. It records every operation and checks, after each
//! one, the invariant the datapath relies on: a visible service entry (slot 0) always names
//! `count` present slots, each naming a present backend, and a present reverse-NAT entry.
use std::collections::BTreeMap;

use proxy_common::ServiceValue;

use super::{LbMaps, MapError, ReverseNatEntry, ServiceSlot};
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

#[derive(Debug)]
pub struct MemoryMaps<A> {
    pub services: BTreeMap<(Frontend<A>, u16), ServiceValue>,
    pub backends: BTreeMap<u32, Backend<A>>,
    pub reverse_nat: BTreeMap<u32, (A, u16)>,
    pub ops: Vec<Op<A>>,
    /// Invariant violations seen after any single operation.
    pub violations: Vec<String>,
    /// Fail writes beyond this many service entries (to test a full map).
    pub service_capacity: Option<usize>,
}

impl<A> Default for MemoryMaps<A> {
    fn default() -> Self {
        Self {
            services: BTreeMap::new(),
            backends: BTreeMap::new(),
            reverse_nat: BTreeMap::new(),
            ops: Vec::new(),
            violations: Vec::new(),
            service_capacity: None,
        }
    }
}

impl<A: Address> MemoryMaps<A> {
    fn record(&mut self, op: Op<A>) {
        self.ops.push(op.clone());
        for ((frontend, slot), value) in &self.services {
            if *slot != 0 {
                continue;
            }
            if !self.reverse_nat.contains_key(&value.rev_nat_id) {
                self.violations.push(format!(
                    "after {op:?}: {frontend} names missing reverse NAT {}",
                    value.rev_nat_id
                ));
            }
            for s in 1..=value.count {
                match self.services.get(&(*frontend, s)) {
                    None => self.violations.push(format!(
                        "after {op:?}: {frontend} slot {s} of {} missing",
                        value.count
                    )),
                    Some(v) if !self.backends.contains_key(&v.backend_id) => {
                        self.violations.push(format!(
                            "after {op:?}: {frontend} slot {s} names missing backend {}",
                            v.backend_id
                        ))
                    }
                    Some(_) => {}
                }
            }
        }
    }
}

impl<A: Address> LbMaps<A> for MemoryMaps<A> {
    fn dump_services(&self) -> Result<Vec<ServiceSlot<A>>, MapError> {
        Ok(self
            .services
            .iter()
            .map(|((f, s), v)| (*f, *s, *v))
            .collect())
    }

    fn dump_backends(&self) -> Result<Vec<(u32, Backend<A>)>, MapError> {
        Ok(self.backends.iter().map(|(i, b)| (*i, *b)).collect())
    }

    fn dump_reverse_nat(&self) -> Result<Vec<ReverseNatEntry<A>>, MapError> {
        Ok(self.reverse_nat.iter().map(|(i, f)| (*i, *f)).collect())
    }

    fn put_service(
        &mut self,
        frontend: &Frontend<A>,
        slot: u16,
        value: &ServiceValue,
    ) -> Result<(), MapError> {
        let key = (*frontend, slot);
        if let Some(capacity) = self.service_capacity
            && !self.services.contains_key(&key)
            && self.services.len() >= capacity
        {
            return Err(MapError::Full {
                map: "memory services",
                capacity: capacity as u32,
            });
        }
        self.services.insert(key, *value);
        self.record(Op::PutService(*frontend, slot));
        Ok(())
    }

    fn delete_service(&mut self, frontend: &Frontend<A>, slot: u16) -> Result<(), MapError> {
        self.services.remove(&(*frontend, slot));
        self.record(Op::DeleteService(*frontend, slot));
        Ok(())
    }

    fn put_backend(&mut self, id: u32, backend: &Backend<A>) -> Result<(), MapError> {
        self.backends.insert(id, *backend);
        self.record(Op::PutBackend(id));
        Ok(())
    }

    fn delete_backend(&mut self, id: u32) -> Result<(), MapError> {
        self.backends.remove(&id);
        self.record(Op::DeleteBackend(id));
        Ok(())
    }

    fn put_reverse_nat(&mut self, id: u32, frontend: (A, u16)) -> Result<(), MapError> {
        self.reverse_nat.insert(id, frontend);
        self.record(Op::PutReverseNat(id));
        Ok(())
    }

    fn delete_reverse_nat(&mut self, id: u32) -> Result<(), MapError> {
        self.reverse_nat.remove(&id);
        self.record(Op::DeleteReverseNat(id));
        Ok(())
    }
}

/// A twin shared between the writer that owns it and a test that inspects it.
pub type SharedMemoryMaps<A> = std::sync::Arc<std::sync::Mutex<MemoryMaps<A>>>;
