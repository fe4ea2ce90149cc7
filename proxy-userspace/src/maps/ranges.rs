//! The source-range tries (`loadBalancerSourceRanges`): one entry per frontend and allowed
//! client prefix, keyed by the frontend so the set is a pure function of the plan (no IDs).
//! The kernel table is an LPM trie; the datapath looks a client up under its frontend.
use std::net::IpAddr;

use aya::maps::{
    Map, MapData,
    lpm_trie::{Key, LpmTrie},
};
use proxy_common::{RawAddress, SourceRange};

use super::{MapError, Table, codec::KernelFamily, pins::PinLayout};
use crate::{
    family::socket_display,
    model::Protocol,
    plan::{Frontend, ServiceEntry},
};

/// One allowed client prefix of one frontend (port in host order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RangeKey<A> {
    pub frontend: A,
    pub port: u16,
    pub protocol: Protocol,
    /// The prefix's network address (host bits zero) and length.
    pub client: A,
    pub prefix: u8,
}

impl<A: crate::family::Address> std::fmt::Display for RangeKey<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let frontend: IpAddr = self.frontend.into();
        write!(
            f,
            "{}/{} from {}/{}",
            socket_display(frontend, self.port),
            self.protocol,
            self.client,
            self.prefix
        )
    }
}

/// The range entries a planned frontend needs (its scope does not matter: both of a two-scoped
/// frontend's entries share them).
pub fn keys_of<A: Copy>(frontend: &Frontend<A>, entry: &ServiceEntry<A>) -> Vec<RangeKey<A>> {
    entry
        .source_ranges
        .iter()
        .map(|(client, prefix)| RangeKey {
            frontend: frontend.address,
            port: frontend.port,
            protocol: frontend.protocol,
            client: *client,
            prefix: *prefix,
        })
        .collect()
}

fn address_bits<R: RawAddress>() -> u32 {
    (size_of::<R>() * 8) as u32
}

fn encode<A: KernelFamily>(key: &RangeKey<A>) -> Key<SourceRange<A::Raw>> {
    Key::new(
        SourceRange::<A::Raw>::FRONTEND_BITS + u32::from(key.prefix),
        SourceRange::new(
            A::Raw::from_ip(key.frontend),
            key.port.to_be(),
            key.protocol.number(),
            A::Raw::from_ip(key.client),
        ),
    )
}

fn decode<A: KernelFamily>(key: &Key<SourceRange<A::Raw>>) -> Option<RangeKey<A>> {
    let data = key.data();
    let prefix = key
        .prefix_len()
        .checked_sub(SourceRange::<A::Raw>::FRONTEND_BITS)
        .filter(|p| *p <= address_bits::<A::Raw>())?;
    Some(RangeKey {
        frontend: data.frontend.to_ip(),
        port: u16::from_be(data.port),
        protocol: Protocol::from_number(data.protocol)?,
        client: data.client.to_ip(),
        prefix: prefix as u8,
    })
}

/// A family's pinned source-range trie as a [`Table`] (the value is unused: 1).
pub struct KernelRanges<A: KernelFamily> {
    name: &'static str,
    trie: LpmTrie<MapData, SourceRange<A::Raw>, u8>,
}

impl<A: KernelFamily> KernelRanges<A> {
    pub fn open(pins: &PinLayout) -> Result<Self, MapError> {
        use proxy_common::LbFamily as _;
        let name = A::Binding::SOURCE_RANGES;
        let kernel = |operation, source| MapError::Kernel {
            map: name,
            operation,
            source,
        };
        let data =
            MapData::from_pin(pins.map(name)).map_err(|source| kernel("open pin", source))?;
        let map = Map::from_map_data(data).map_err(|source| kernel("open pin", source))?;
        let trie = LpmTrie::try_from(map).map_err(|source| kernel("type check", source))?;
        Ok(Self { name, trie })
    }
}

impl<A: KernelFamily> Table<RangeKey<A>, ()> for KernelRanges<A> {
    fn dump(&self) -> Result<Vec<(RangeKey<A>, ())>, MapError> {
        let mut entries = Vec::new();
        for key in self.trie.keys() {
            let key = key.map_err(|source| MapError::Kernel {
                map: self.name,
                operation: "dump",
                source,
            })?;
            let decoded = decode::<A>(&key).ok_or_else(|| MapError::Invalid {
                map: self.name,
                entry: format!("{:02x?}", bytemuck::bytes_of(&key.data())),
                reason: "a key no agent writes".into(),
            })?;
            entries.push((decoded, ()));
        }
        Ok(entries)
    }

    fn put(&mut self, key: &RangeKey<A>, _: &()) -> Result<(), MapError> {
        self.trie
            .insert(&encode(key), 1, 0)
            .map_err(|source| MapError::Kernel {
                map: self.name,
                operation: "update",
                source,
            })
    }

    fn delete(&mut self, key: &RangeKey<A>) -> Result<(), MapError> {
        match self.trie.remove(&encode(key)) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
            {
                Ok(())
            }
            Err(source) => Err(MapError::Kernel {
                map: self.name,
                operation: "delete",
                source,
            }),
        }
    }
}
