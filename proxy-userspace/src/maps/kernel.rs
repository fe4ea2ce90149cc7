//! [`LbMaps`] over the pinned kernel maps. The only code that writes kernel map state.
use std::marker::PhantomData;

use aya::maps::{HashMap, Map, MapData};
use proxy_common::ServiceValue;

use super::{LbMaps, MapError, ReverseNatEntry, ServiceSlot, codec::KernelFamily, pins::PinLayout};
use crate::plan::{Backend, Frontend};

/// Opens a pinned hash (or LRU hash) map with typed keys and values.
pub fn open_hash<K: aya::Pod, V: aya::Pod>(
    pins: &PinLayout,
    name: &'static str,
) -> Result<HashMap<MapData, K, V>, MapError> {
    let kernel = |operation, source| MapError::Kernel {
        map: name,
        operation,
        source,
    };
    let data = MapData::from_pin(pins.map(name)).map_err(|source| kernel("open pin", source))?;
    let map = Map::from_map_data(data).map_err(|source| kernel("open pin", source))?;
    HashMap::try_from(map).map_err(|source| kernel("type check", source))
}

pub struct KernelMaps<A: KernelFamily> {
    services: HashMap<MapData, A::ServiceKey, ServiceValue>,
    backends: HashMap<MapData, u32, A::Backend>,
    reverse_nat: HashMap<MapData, u32, A::ReverseNat>,
    _family: PhantomData<A>,
}

impl<A: KernelFamily> KernelMaps<A> {
    pub fn open(pins: &PinLayout) -> Result<Self, MapError> {
        Ok(Self {
            services: open_hash(pins, A::SERVICES)?,
            backends: open_hash(pins, A::BACKENDS)?,
            reverse_nat: open_hash(pins, A::REVERSE_NAT)?,
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

fn dump<K: aya::Pod, V: aya::Pod>(
    map: &'static str,
    hash: &HashMap<MapData, K, V>,
) -> Result<Vec<(K, V)>, MapError> {
    let mut entries = Vec::new();
    for entry in hash.iter() {
        match entry {
            Ok(kv) => entries.push(kv),
            // Deleted between listing its key and reading it.
            Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) if errno(&e) == Some(libc::ENOENT) => {}
            Err(source) => {
                return Err(MapError::Kernel {
                    map,
                    operation: "dump",
                    source,
                });
            }
        }
    }
    Ok(entries)
}

impl<A: KernelFamily> LbMaps<A> for KernelMaps<A> {
    fn dump_services(&self) -> Result<Vec<ServiceSlot<A>>, MapError> {
        dump(A::SERVICES, &self.services)?
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
        dump(A::BACKENDS, &self.backends)?
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
        Ok(dump(A::REVERSE_NAT, &self.reverse_nat)?
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
            .insert(A::encode_service_key(frontend, slot), value, 0)
            .map_err(|e| write_error(A::SERVICES, "update", e))
    }

    fn delete_service(&mut self, frontend: &Frontend<A>, slot: u16) -> Result<(), MapError> {
        delete_result(
            A::SERVICES,
            self.services.remove(&A::encode_service_key(frontend, slot)),
        )
    }

    fn put_backend(&mut self, id: u32, backend: &Backend<A>) -> Result<(), MapError> {
        self.backends
            .insert(id, A::encode_backend(backend), 0)
            .map_err(|e| write_error(A::BACKENDS, "update", e))
    }

    fn delete_backend(&mut self, id: u32) -> Result<(), MapError> {
        delete_result(A::BACKENDS, self.backends.remove(&id))
    }

    fn put_reverse_nat(&mut self, id: u32, frontend: (A, u16)) -> Result<(), MapError> {
        self.reverse_nat
            .insert(id, A::encode_reverse_nat(frontend.0, frontend.1), 0)
            .map_err(|e| write_error(A::REVERSE_NAT, "update", e))
    }

    fn delete_reverse_nat(&mut self, id: u32) -> Result<(), MapError> {
        delete_result(A::REVERSE_NAT, self.reverse_nat.remove(&id))
    }
}
