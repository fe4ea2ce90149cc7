//! Map I/O. A map is a [`Table`] of model-level keys and values; one family's load-balancing
//! maps are a struct of tables ([`LbMaps`]). Tables have one kernel implementation
//! ([`kernel`], over the pins, encoding through [`codec`]) and one in-memory twin ([`memory`]),
//! so the [`writer`]'s ordering is tested without root. What the maps say as a whole (is any
//! service half-written? what does a packet to a frontend see?) is [`snapshot`], shared by the
//! twin, the tests and `twinstack bpf service list`.
pub mod batch;
pub mod codec;
pub mod kernel;
pub mod memory;
pub mod pins;
pub mod ranges;
pub mod snapshot;
pub mod writer;

use proxy_common::{AffinityKey, AffinityValue, ServiceValue};

pub use snapshot::{LbSnapshot, Resolved};

use crate::plan::{Backend, Frontend};

#[derive(Debug, thiserror::Error)]
pub enum MapError {
    #[error("map {map}: {operation} failed: {source}")]
    Kernel {
        map: &'static str,
        operation: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("map {map}: entry {entry} holds an invalid value: {reason}")]
    Invalid {
        map: &'static str,
        entry: String,
        reason: String,
    },
    #[error("map {map} is full ({capacity} entries)")]
    Full { map: &'static str, capacity: u32 },
}

/// One map, as the agent sees it: typed keys and values, whole-entry writes. Deleting an absent
/// key succeeds (the state we want holds). The `_many` variants write in order and may stop
/// part way on error; the kernel tables do each in one syscall.
pub trait Table<K, V> {
    fn dump(&self) -> Result<Vec<(K, V)>, MapError>;
    fn put(&mut self, key: &K, value: &V) -> Result<(), MapError>;
    fn delete(&mut self, key: &K) -> Result<(), MapError>;

    fn put_many(&mut self, entries: &[(K, V)]) -> Result<(), MapError> {
        entries.iter().try_for_each(|(k, v)| self.put(k, v))
    }
    fn delete_many(&mut self, keys: &[K]) -> Result<(), MapError> {
        keys.iter().try_for_each(|k| self.delete(k))
    }
}

pub type BoxedTable<K, V> = Box<dyn Table<K, V> + Send>;

/// A services-map key: a frontend entry (with its scope) and a slot (0: the entry itself).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlotKey<A> {
    pub frontend: Frontend<A>,
    pub slot: u16,
}

impl<A> SlotKey<A> {
    pub fn new(frontend: Frontend<A>, slot: u16) -> Self {
        Self { frontend, slot }
    }
}

/// What a reverse-NAT entry restores: the frontend's (address, port).
pub type FrontendAddress<A> = (A, u16);

/// One family's load-balancing maps: adding a map is adding a table here.
pub struct LbMaps<A> {
    pub services: BoxedTable<SlotKey<A>, ServiceValue>,
    pub backends: BoxedTable<u32, Backend<A>>,
    pub reverse_nat: BoxedTable<u32, FrontendAddress<A>>,
    /// Written by the datapath; the writer only removes the bindings of departed backends.
    pub affinity: BoxedTable<AffinityKey, AffinityValue>,
    /// `loadBalancerSourceRanges`, written by the proxier beside the writer.
    pub source_ranges: BoxedTable<ranges::RangeKey<A>, ()>,
}

impl<A: Ord + Copy> LbMaps<A> {
    /// Everything the maps hold now.
    pub fn snapshot(&self) -> Result<LbSnapshot<A>, MapError> {
        Ok(LbSnapshot {
            services: self.services.dump()?.into_iter().collect(),
            backends: self.backends.dump()?.into_iter().collect(),
            reverse_nat: self.reverse_nat.dump()?.into_iter().collect(),
        })
    }
}
