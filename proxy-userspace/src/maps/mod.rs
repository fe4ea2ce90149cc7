//! Map I/O. [`LbMaps`] is the one interface to a family's load-balancing maps; the kernel
//! implementation ([`kernel`]) and the in-memory twin ([`memory`]) both sit behind it, so the
//! [`writer`]'s ordering is tested without root.
pub mod batch;
pub mod codec;
pub mod kernel;
pub mod memory;
pub mod pins;
pub mod writer;

use proxy_common::ServiceValue;

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
    #[error("map {map} is missing from the loaded object or pins")]
    Missing { map: &'static str },
    #[error("map {map} is full ({capacity} entries)")]
    Full { map: &'static str, capacity: u32 },
}

/// A service map entry as read back: frontend, slot, value.
pub type ServiceSlot<A> = (Frontend<A>, u16, ServiceValue);
/// A reverse-NAT entry as read back: ID, (address, port).
pub type ReverseNatEntry<A> = (u32, (A, u16));

/// One family's service, backend and reverse-NAT maps.
pub trait LbMaps<A: Copy> {
    fn dump_services(&self) -> Result<Vec<ServiceSlot<A>>, MapError>;
    fn dump_backends(&self) -> Result<Vec<(u32, Backend<A>)>, MapError>;
    fn dump_reverse_nat(&self) -> Result<Vec<ReverseNatEntry<A>>, MapError>;

    fn put_service(
        &mut self,
        frontend: &Frontend<A>,
        slot: u16,
        value: &ServiceValue,
    ) -> Result<(), MapError>;
    fn delete_service(&mut self, frontend: &Frontend<A>, slot: u16) -> Result<(), MapError>;
    fn put_backend(&mut self, id: u32, backend: &Backend<A>) -> Result<(), MapError>;
    fn delete_backend(&mut self, id: u32) -> Result<(), MapError>;
    fn put_reverse_nat(&mut self, id: u32, frontend: (A, u16)) -> Result<(), MapError>;
    fn delete_reverse_nat(&mut self, id: u32) -> Result<(), MapError>;

    // Many entries at once, in order. The kernel maps do each in one syscall; the defaults
    // go one by one. On error some entries may have been written.
    fn put_services(&mut self, entries: &[ServiceSlot<A>]) -> Result<(), MapError> {
        entries
            .iter()
            .try_for_each(|(f, slot, value)| self.put_service(f, *slot, value))
    }
    fn delete_services(&mut self, keys: &[(Frontend<A>, u16)]) -> Result<(), MapError> {
        keys.iter()
            .try_for_each(|(f, slot)| self.delete_service(f, *slot))
    }
    fn put_backends(&mut self, entries: &[(u32, Backend<A>)]) -> Result<(), MapError> {
        entries
            .iter()
            .try_for_each(|(id, backend)| self.put_backend(*id, backend))
    }
    fn put_reverse_nats(&mut self, entries: &[ReverseNatEntry<A>]) -> Result<(), MapError> {
        entries
            .iter()
            .try_for_each(|(id, frontend)| self.put_reverse_nat(*id, *frontend))
    }
    fn delete_reverse_nats(&mut self, ids: &[u32]) -> Result<(), MapError> {
        ids.iter().try_for_each(|id| self.delete_reverse_nat(*id))
    }
}

/// Implements [`LbMaps`] for a wrapper by forwarding every call to what `$inner` reaches.
macro_rules! forward_lb_maps {
    ([$($generics:tt)*] $target:ty, |$this:ident| $inner:expr) => {
impl<$($generics)*> LbMaps<A> for $target {
    fn dump_services(&self) -> Result<Vec<ServiceSlot<A>>, MapError> {
        let $this = self;
        $inner.dump_services()
    }
    fn dump_backends(&self) -> Result<Vec<(u32, Backend<A>)>, MapError> {
        let $this = self;
        $inner.dump_backends()
    }
    fn dump_reverse_nat(&self) -> Result<Vec<ReverseNatEntry<A>>, MapError> {
        let $this = self;
        $inner.dump_reverse_nat()
    }
    fn put_service(
        &mut self,
        frontend: &Frontend<A>,
        slot: u16,
        value: &ServiceValue,
    ) -> Result<(), MapError> {
        let $this = self;
        $inner.put_service(frontend, slot, value)
    }
    fn delete_service(&mut self, frontend: &Frontend<A>, slot: u16) -> Result<(), MapError> {
        let $this = self;
        $inner.delete_service(frontend, slot)
    }
    fn put_backend(&mut self, id: u32, backend: &Backend<A>) -> Result<(), MapError> {
        let $this = self;
        $inner.put_backend(id, backend)
    }
    fn delete_backend(&mut self, id: u32) -> Result<(), MapError> {
        let $this = self;
        $inner.delete_backend(id)
    }
    fn put_reverse_nat(&mut self, id: u32, frontend: (A, u16)) -> Result<(), MapError> {
        let $this = self;
        $inner.put_reverse_nat(id, frontend)
    }
    fn delete_reverse_nat(&mut self, id: u32) -> Result<(), MapError> {
        let $this = self;
        $inner.delete_reverse_nat(id)
    }
    fn put_services(&mut self, entries: &[ServiceSlot<A>]) -> Result<(), MapError> {
        let $this = self;
        $inner.put_services(entries)
    }
    fn delete_services(&mut self, keys: &[(Frontend<A>, u16)]) -> Result<(), MapError> {
        let $this = self;
        $inner.delete_services(keys)
    }
    fn put_backends(&mut self, entries: &[(u32, Backend<A>)]) -> Result<(), MapError> {
        let $this = self;
        $inner.put_backends(entries)
    }
    fn put_reverse_nats(&mut self, entries: &[ReverseNatEntry<A>]) -> Result<(), MapError> {
        let $this = self;
        $inner.put_reverse_nats(entries)
    }
    fn delete_reverse_nats(&mut self, ids: &[u32]) -> Result<(), MapError> {
        let $this = self;
        $inner.delete_reverse_nats(ids)
    }
}
    };
}

// A boxed twin or kernel maps, a borrowed one (the writer re-reads state through it), and a
// twin shared between the writer that owns it and a test that inspects it.
forward_lb_maps!([A: Copy, T: LbMaps<A> + ?Sized] Box<T>, |this| **this);
forward_lb_maps!([A: Copy, T: LbMaps<A> + ?Sized] &mut T, |this| **this);
forward_lb_maps!(
    [A: crate::family::Address] memory::SharedMemoryMaps<A>,
    |this| this.lock().expect("maps lock")
);
