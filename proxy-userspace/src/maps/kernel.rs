//! [`Table`]s over the pinned kernel maps: one generic implementation, encoding through
//! [`Encode`]. With the writer above it, the only userspace code that writes kernel map state.
use std::{
    marker::PhantomData,
    os::fd::{AsFd as _, OwnedFd},
};

use aya::maps::{HashMap, Map, MapData};

use super::{
    LbMaps, MapError, Table, batch,
    codec::{Encode, KernelFamily},
    pins::PinLayout,
};
use proxy_common::LbFamily;

/// Opens a pinned hash (or LRU hash) map with typed keys and values.
pub fn open_hash<K: aya::Pod, V: aya::Pod>(
    pins: &PinLayout,
    name: &'static str,
) -> Result<HashMap<MapData, K, V>, MapError> {
    Ok(open_hash_with_fd(pins, name)?.map)
}

/// A hash map opened from its pin, with a second descriptor for batch operations and its
/// capacity.
pub(crate) struct Opened<K, V> {
    pub map: HashMap<MapData, K, V>,
    pub fd: OwnedFd,
    pub capacity: u32,
}

pub(crate) fn open_hash_with_fd<K: aya::Pod, V: aya::Pod>(
    pins: &PinLayout,
    name: &'static str,
) -> Result<Opened<K, V>, MapError> {
    let kernel = |operation, source| MapError::Kernel {
        map: name,
        operation,
        source,
    };
    let data = MapData::from_pin(pins.map(name)).map_err(|source| kernel("open pin", source))?;
    let capacity = data
        .info()
        .map_err(|source| kernel("info", source))?
        .max_entries();
    let fd = data
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| io_error(name, "dup", e))?;
    let map = Map::from_map_data(data).map_err(|source| kernel("open pin", source))?;
    let hash = HashMap::try_from(map).map_err(|source| kernel("type check", source))?;
    Ok(Opened {
        map: hash,
        fd,
        capacity,
    })
}

pub(crate) fn io_error(
    map: &'static str,
    operation: &'static str,
    io_error: std::io::Error,
) -> MapError {
    MapError::Kernel {
        map,
        operation,
        source: aya::maps::MapError::from(aya::sys::SyscallError {
            call: operation,
            io_error,
        }),
    }
}

fn is_full(errno: Option<i32>) -> bool {
    matches!(errno, Some(libc::E2BIG | libc::ENOMEM | libc::ENOSPC))
}

fn errno(error: &aya::maps::MapError) -> Option<i32> {
    match error {
        aya::maps::MapError::SyscallError(e) => e.io_error.raw_os_error(),
        _ => None,
    }
}

/// One pinned hash map as a [`Table`] of `K` → `V`: typed access for single entries, a raw
/// descriptor for batches.
pub struct KernelTable<K: Encode, V: Encode> {
    name: &'static str,
    map: HashMap<MapData, K::Raw, V::Raw>,
    fd: OwnedFd,
    /// `max_entries`, for the error when the map is full.
    capacity: u32,
    _model: PhantomData<fn() -> (K, V)>,
}

impl<K: Encode, V: Encode> KernelTable<K, V> {
    pub fn open(pins: &PinLayout, name: &'static str) -> Result<Self, MapError> {
        let Opened { map, fd, capacity } = open_hash_with_fd(pins, name)?;
        Ok(Self {
            name,
            map,
            fd,
            capacity,
            _model: PhantomData,
        })
    }

    fn invalid(&self, raw: &impl bytemuck::Pod) -> MapError {
        MapError::Invalid {
            map: self.name,
            entry: format!("{:02x?}", bytemuck::bytes_of(raw)),
            reason: "a key or value no agent writes (unknown protocol, scope or state)".into(),
        }
    }
}

impl<K: Encode, V: Encode> Table<K, V> for KernelTable<K, V> {
    fn dump(&self) -> Result<Vec<(K, V)>, MapError> {
        batch::lookup_all::<K::Raw, V::Raw>(self.fd.as_fd())
            .map_err(|e| io_error(self.name, "dump", e))?
            .into_iter()
            .map(|(k, v)| {
                let key = K::decode(&k).ok_or_else(|| self.invalid(&k))?;
                let value = V::decode(&v).ok_or_else(|| self.invalid(&v))?;
                Ok((key, value))
            })
            .collect()
    }

    fn put(&mut self, key: &K, value: &V) -> Result<(), MapError> {
        self.map
            .insert(key.encode(), value.encode(), 0)
            .map_err(|source| {
                if is_full(errno(&source)) {
                    MapError::Full {
                        map: self.name,
                        capacity: self.capacity,
                    }
                } else {
                    MapError::Kernel {
                        map: self.name,
                        operation: "update",
                        source,
                    }
                }
            })
    }

    fn delete(&mut self, key: &K) -> Result<(), MapError> {
        match self.map.remove(&key.encode()) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) if errno(&e) == Some(libc::ENOENT) => Ok(()),
            Err(source) => Err(MapError::Kernel {
                map: self.name,
                operation: "delete",
                source,
            }),
        }
    }

    fn put_many(&mut self, entries: &[(K, V)]) -> Result<(), MapError> {
        let keys: Vec<K::Raw> = entries.iter().map(|(k, _)| k.encode()).collect();
        let values: Vec<V::Raw> = entries.iter().map(|(_, v)| v.encode()).collect();
        batch::update(self.fd.as_fd(), &keys, &values).map_err(|(_, e)| {
            if is_full(e.raw_os_error()) {
                MapError::Full {
                    map: self.name,
                    capacity: self.capacity,
                }
            } else {
                io_error(self.name, "batch update", e)
            }
        })
    }

    fn delete_many(&mut self, keys: &[K]) -> Result<(), MapError> {
        let keys: Vec<K::Raw> = keys.iter().map(Encode::encode).collect();
        batch::delete(self.fd.as_fd(), &keys).map_err(|e| io_error(self.name, "batch delete", e))
    }
}

/// An array map opened from its pin.
pub fn open_array<V: aya::Pod>(
    pins: &PinLayout,
    name: &'static str,
) -> Result<aya::maps::Array<MapData, V>, MapError> {
    let kernel = |operation, source| MapError::Kernel {
        map: name,
        operation,
        source,
    };
    let data = MapData::from_pin(pins.map(name)).map_err(|source| kernel("open pin", source))?;
    let map = Map::from_map_data(data).map_err(|source| kernel("open pin", source))?;
    aya::maps::Array::try_from(map).map_err(|source| kernel("type check", source))
}

/// One family's entry of [`proxy_common::map_names::CLUSTER_CLEAR`]: whether its
/// `--cluster-cidr` holds no frontend.
pub struct ClusterClear {
    map: aya::maps::Array<MapData, u32>,
    index: u32,
}

impl ClusterClear {
    const NAME: &'static str = proxy_common::map_names::CLUSTER_CLEAR;

    pub fn open<A: KernelFamily>(pins: &PinLayout) -> Result<Self, MapError> {
        Ok(Self {
            map: open_array(pins, Self::NAME)?,
            index: A::Binding::CLUSTER_CLEAR,
        })
    }

    pub fn write(&mut self, clear: bool) -> Result<(), MapError> {
        let value = if clear {
            proxy_common::cluster_clear::CLEAR
        } else {
            0
        };
        self.map
            .set(self.index, value, 0)
            .map_err(|source| MapError::Kernel {
                map: Self::NAME,
                operation: "update",
                source,
            })
    }
}

/// One family's load-balancing maps over the pins under `pins`.
pub fn open<A: KernelFamily>(pins: &PinLayout) -> Result<LbMaps<A>, MapError> {
    Ok(LbMaps {
        services: Box::new(KernelTable::open(pins, A::Binding::SERVICES)?),
        backends: Box::new(KernelTable::open(pins, A::Binding::BACKENDS)?),
        reverse_nat: Box::new(KernelTable::open(pins, A::Binding::REVERSE_NAT)?),
        affinity: Box::new(KernelTable::open(pins, A::Binding::AFFINITY)?),
        source_ranges: Box::new(super::ranges::KernelRanges::open(pins)?),
    })
}
