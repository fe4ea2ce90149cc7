//! [`LbMaps`] over the pinned kernel maps. The only code that writes kernel map state.
use std::{
    marker::PhantomData,
    os::fd::{AsFd as _, OwnedFd},
};

use aya::maps::{HashMap, Map, MapData};
use proxy_common::ServiceValue;

use super::{
    LbMaps, MapError, ReverseNatEntry, ServiceSlot, batch, codec::KernelFamily, pins::PinLayout,
};
use crate::plan::{Backend, Frontend};

/// Opens a pinned hash (or LRU hash) map with typed keys and values.
pub fn open_hash<K: aya::Pod, V: aya::Pod>(
    pins: &PinLayout,
    name: &'static str,
) -> Result<HashMap<MapData, K, V>, MapError> {
    Ok(open_hash_with_fd(pins, name)?.0)
}

/// Like [`open_hash`], plus a second descriptor of the map for batch operations.
fn open_hash_with_fd<K: aya::Pod, V: aya::Pod>(
    pins: &PinLayout,
    name: &'static str,
) -> Result<(HashMap<MapData, K, V>, OwnedFd), MapError> {
    let kernel = |operation, source| MapError::Kernel {
        map: name,
        operation,
        source,
    };
    let data = MapData::from_pin(pins.map(name)).map_err(|source| kernel("open pin", source))?;
    let fd = data.fd().as_fd().try_clone_to_owned().map_err(|e| {
        kernel(
            "dup",
            aya::maps::MapError::from(aya::sys::SyscallError {
                call: "dup",
                io_error: e,
            }),
        )
    })?;
    let map = Map::from_map_data(data).map_err(|source| kernel("open pin", source))?;
    let hash = HashMap::try_from(map).map_err(|source| kernel("type check", source))?;
    Ok((hash, fd))
}

/// One map: typed access for single entries, a raw descriptor for batches.
struct Handle<K, V> {
    map: HashMap<MapData, K, V>,
    fd: OwnedFd,
}

impl<K: aya::Pod + bytemuck::Pod, V: aya::Pod + bytemuck::Pod> Handle<K, V> {
    fn open(pins: &PinLayout, name: &'static str) -> Result<Self, MapError> {
        let (map, fd) = open_hash_with_fd(pins, name)?;
        Ok(Self { map, fd })
    }

    fn dump(&self, name: &'static str) -> Result<Vec<(K, V)>, MapError> {
        batch::lookup_all(self.fd.as_fd()).map_err(|e| io_error(name, "dump", e))
    }

    fn put_batch(&self, name: &'static str, keys: &[K], values: &[V]) -> Result<(), MapError> {
        batch::update(self.fd.as_fd(), keys, values).map_err(|(_, e)| match e.raw_os_error() {
            Some(libc::E2BIG) | Some(libc::ENOMEM) | Some(libc::ENOSPC) => MapError::Full {
                map: name,
                capacity: 0,
            },
            _ => io_error(name, "batch update", e),
        })
    }

    fn delete_batch(&self, name: &'static str, keys: &[K]) -> Result<(), MapError> {
        batch::delete(self.fd.as_fd(), keys).map_err(|e| io_error(name, "batch delete", e))
    }
}

fn io_error(map: &'static str, operation: &'static str, io_error: std::io::Error) -> MapError {
    MapError::Kernel {
        map,
        operation,
        source: aya::maps::MapError::from(aya::sys::SyscallError {
            call: operation,
            io_error,
        }),
    }
}

pub struct KernelMaps<A: KernelFamily> {
    services: Handle<A::ServiceKey, ServiceValue>,
    backends: Handle<u32, A::Backend>,
    reverse_nat: Handle<u32, A::ReverseNat>,
    _family: PhantomData<A>,
}

impl<A: KernelFamily> KernelMaps<A> {
    pub fn open(pins: &PinLayout) -> Result<Self, MapError> {
        Ok(Self {
            services: Handle::open(pins, A::SERVICES)?,
            backends: Handle::open(pins, A::BACKENDS)?,
            reverse_nat: Handle::open(pins, A::REVERSE_NAT)?,
            _family: PhantomData,
        })
    }
}

fn errno(error: &aya::maps::MapError) -> Option<i32> {
    match error {
        aya::maps::MapError::SyscallError(e) => e.io_error.raw_os_error(),
        _ => None,
    }
}

fn write_error(
    map: &'static str,
    operation: &'static str,
    source: aya::maps::MapError,
) -> MapError {
    match errno(&source) {
        Some(libc::E2BIG) | Some(libc::ENOMEM) | Some(libc::ENOSPC) => {
            MapError::Full { map, capacity: 0 }
        }
        _ => MapError::Kernel {
            map,
            operation,
            source,
        },
    }
}

/// A delete of an absent key is not an error: the state we want holds.
fn delete_result(
    map: &'static str,
    result: Result<(), aya::maps::MapError>,
) -> Result<(), MapError> {
    match result {
        Ok(()) => Ok(()),
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(e) if errno(&e) == Some(libc::ENOENT) => Ok(()),
        Err(source) => Err(MapError::Kernel {
            map,
            operation: "delete",
            source,
        }),
    }
}

impl<A: KernelFamily> LbMaps<A> for KernelMaps<A> {
    fn dump_services(&self) -> Result<Vec<ServiceSlot<A>>, MapError> {
        self.services
            .dump(A::SERVICES)?
            .into_iter()
            .map(|(key, value)| {
                let (frontend, slot) =
                    A::decode_service_key(&key).ok_or_else(|| MapError::Invalid {
                        map: A::SERVICES,
                        entry: format!("{:?}", bytemuck::bytes_of(&key)),
                        reason: "unknown protocol".into(),
                    })?;
                Ok((frontend, slot, value))
            })
            .collect()
    }

    fn dump_backends(&self) -> Result<Vec<(u32, Backend<A>)>, MapError> {
        self.backends
            .dump(A::BACKENDS)?
            .into_iter()
            .map(|(id, raw)| {
                let backend = A::decode_backend(&raw).ok_or_else(|| MapError::Invalid {
                    map: A::BACKENDS,
                    entry: id.to_string(),
                    reason: "unknown protocol or state".into(),
                })?;
                Ok((id, backend))
            })
            .collect()
    }

    fn dump_reverse_nat(&self) -> Result<Vec<ReverseNatEntry<A>>, MapError> {
        Ok(self
            .reverse_nat
            .dump(A::REVERSE_NAT)?
            .into_iter()
            .map(|(id, raw)| (id, A::decode_reverse_nat(&raw)))
            .collect())
    }

    fn put_service(
        &mut self,
        frontend: &Frontend<A>,
        slot: u16,
        value: &ServiceValue,
    ) -> Result<(), MapError> {
        self.services
            .map
            .insert(A::encode_service_key(frontend, slot), value, 0)
            .map_err(|e| write_error(A::SERVICES, "update", e))
    }

    fn delete_service(&mut self, frontend: &Frontend<A>, slot: u16) -> Result<(), MapError> {
        delete_result(
            A::SERVICES,
            self.services
                .map
                .remove(&A::encode_service_key(frontend, slot)),
        )
    }

    fn put_backend(&mut self, id: u32, backend: &Backend<A>) -> Result<(), MapError> {
        self.backends
            .map
            .insert(id, A::encode_backend(backend), 0)
            .map_err(|e| write_error(A::BACKENDS, "update", e))
    }

    fn delete_backend(&mut self, id: u32) -> Result<(), MapError> {
        delete_result(A::BACKENDS, self.backends.map.remove(&id))
    }

    fn put_reverse_nat(&mut self, id: u32, frontend: (A, u16)) -> Result<(), MapError> {
        self.reverse_nat
            .map
            .insert(id, A::encode_reverse_nat(frontend.0, frontend.1), 0)
            .map_err(|e| write_error(A::REVERSE_NAT, "update", e))
    }

    fn delete_reverse_nat(&mut self, id: u32) -> Result<(), MapError> {
        delete_result(A::REVERSE_NAT, self.reverse_nat.map.remove(&id))
    }

    fn put_services(&mut self, entries: &[ServiceSlot<A>]) -> Result<(), MapError> {
        let keys: Vec<_> = entries
            .iter()
            .map(|(f, slot, _)| A::encode_service_key(f, *slot))
            .collect();
        let values: Vec<_> = entries.iter().map(|(_, _, v)| *v).collect();
        self.services.put_batch(A::SERVICES, &keys, &values)
    }

    fn delete_services(&mut self, keys: &[(Frontend<A>, u16)]) -> Result<(), MapError> {
        let keys: Vec<_> = keys
            .iter()
            .map(|(f, slot)| A::encode_service_key(f, *slot))
            .collect();
        self.services.delete_batch(A::SERVICES, &keys)
    }

    fn put_backends(&mut self, entries: &[(u32, Backend<A>)]) -> Result<(), MapError> {
        let keys: Vec<u32> = entries.iter().map(|(id, _)| *id).collect();
        let values: Vec<_> = entries.iter().map(|(_, b)| A::encode_backend(b)).collect();
        self.backends.put_batch(A::BACKENDS, &keys, &values)
    }

    fn put_reverse_nats(&mut self, entries: &[ReverseNatEntry<A>]) -> Result<(), MapError> {
        let keys: Vec<u32> = entries.iter().map(|(id, _)| *id).collect();
        let values: Vec<_> = entries
            .iter()
            .map(|(_, (a, p))| A::encode_reverse_nat(*a, *p))
            .collect();
        self.reverse_nat.put_batch(A::REVERSE_NAT, &keys, &values)
    }

    fn delete_reverse_nats(&mut self, ids: &[u32]) -> Result<(), MapError> {
        self.reverse_nat.delete_batch(A::REVERSE_NAT, ids)
    }
}
