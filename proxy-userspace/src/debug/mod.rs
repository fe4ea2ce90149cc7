//! `twinstack bpf …`: read the pinned maps like bpftool, without the agent, and render them
//! with human-readable addresses. Logic here; the CLI only parses flags.
mod links;
pub mod monitor;
mod table;
pub mod top;

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use proxy_common::{
    ConntrackKey, ConntrackValue, LbFamily, RawAddress, SockRevKey, SockRevValue, ct_flags,
    direction,
    maps::{MAPS, MapKind},
};
use serde::Serialize;

pub use links::{LinkRow, links, links_table};
pub use table::Table;

use crate::{
    conntrack,
    family::{Family, socket_display},
    maps::{
        MapError, batch,
        codec::{self, KernelFamily},
        kernel::{self, open_hash},
        pins::PinLayout,
    },
    model::Protocol,
    plan::{BackendState, Scope},
};

#[derive(Debug, Serialize)]
pub struct ServiceRow {
    pub family: Family,
    pub rev_nat_id: u32,
    pub address: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub scope: Scope,
    /// The frontend kind and policy flags of slot 0.
    pub kind: Vec<&'static str>,
    pub affinity_timeout: Option<u32>,
    pub backends: Vec<BackendRow>,
    /// Traffic through this frontend (`--stats`; `None` without it, or none counted yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats: Option<Traffic>,
}

/// A frontend's or backend's traffic, summed over CPUs: connections, and packets and bytes
/// towards the backend and back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Traffic {
    pub connections: u64,
    pub packets_to: u64,
    pub bytes_to: u64,
    pub packets_from: u64,
    pub bytes_from: u64,
}

impl Traffic {
    fn add(&mut self, s: &proxy_common::TrafficStats) {
        self.connections += s.connections;
        self.packets_to += s.packets_to;
        self.bytes_to += s.bytes_to;
        self.packets_from += s.packets_from;
        self.bytes_from += s.bytes_from;
    }
}

/// The traffic counters (`lb_stats`), summed over CPUs, by (family, kind, id).
pub fn traffic(pins: &PinLayout) -> Result<BTreeMap<(u8, u8, u32), Traffic>, MapError> {
    use aya::maps::{Map, MapData, PerCpuHashMap};
    use proxy_common::{StatsKey, TrafficStats, map_names::STATS};
    let kernel = |operation: &'static str| {
        move |source| MapError::Kernel {
            map: STATS,
            operation,
            source,
        }
    };
    let data = MapData::from_pin(pins.map(STATS)).map_err(kernel("open pin"))?;
    let map: PerCpuHashMap<_, StatsKey, TrafficStats> =
        PerCpuHashMap::try_from(Map::PerCpuLruHashMap(data)).map_err(kernel("open"))?;
    let mut sums = BTreeMap::new();
    for entry in map.iter() {
        let (key, values) = entry.map_err(kernel("read"))?;
        let sum: &mut Traffic = sums.entry((key.family, key.kind, key.id)).or_default();
        for value in values.iter() {
            sum.add(value);
        }
    }
    Ok(sums)
}

/// Fills each row's and backend's traffic from [`traffic`].
pub fn with_traffic(rows: &mut [ServiceRow], pins: &PinLayout) -> Result<(), MapError> {
    use proxy_common::stats_kind::{BACKEND, FRONTEND};
    let sums = traffic(pins)?;
    for row in rows {
        let family = match row.family {
            Family::V4 => 4,
            Family::V6 => 6,
        };
        row.stats = Some(
            sums.get(&(family, FRONTEND, row.rev_nat_id))
                .copied()
                .unwrap_or_default(),
        );
        for backend in &mut row.backends {
            backend.stats = Some(
                sums.get(&(family, BACKEND, backend.id))
                    .copied()
                    .unwrap_or_default(),
            );
        }
    }
    Ok(())
}

#[derive(Debug, Serialize)]
pub struct BackendRow {
    pub slot: u16,
    pub id: u32,
    /// `None` when the slot names a backend the backends map lacks (a bug worth seeing).
    pub address: Option<IpAddr>,
    pub port: Option<u16>,
    pub state: Option<&'static str>,
    /// Traffic to this backend, every frontend's together (`--stats`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats: Option<Traffic>,
}

fn head_names(head: &codec::Head) -> Vec<&'static str> {
    let mut names: Vec<&'static str> = head.kind.map(|k| k.name()).into_iter().collect();
    if head.local {
        names.push("Local");
    }
    if head.two_scopes {
        names.push("TwoScopes");
    }
    if head.source_ranges {
        names.push("SourceRanges");
    }
    names
}

fn state_name(state: BackendState) -> &'static str {
    match state {
        BackendState::Active => "active",
        BackendState::Terminating => "terminating",
    }
}

fn services_of<A: KernelFamily>(pins: &PinLayout) -> Result<Vec<ServiceRow>, MapError> {
    let snapshot = kernel::open::<A>(pins)?.snapshot()?;
    Ok(snapshot
        .resolve()
        .into_iter()
        .map(|resolved| ServiceRow {
            family: A::FAMILY,
            rev_nat_id: resolved.rev_nat_id,
            address: resolved.frontend.address.into(),
            port: resolved.frontend.port,
            protocol: resolved.frontend.protocol,
            scope: resolved.frontend.scope,
            kind: head_names(&resolved.head),
            affinity_timeout: resolved.head.affinity_timeout,
            stats: None,
            backends: resolved
                .slots
                .iter()
                .zip(1..)
                .map(|((id, backend), slot)| BackendRow {
                    slot,
                    id: *id,
                    address: backend.map(|b| b.address.into()),
                    port: backend.map(|b| b.port),
                    state: backend.map(|b| state_name(b.state)),
                    stats: None,
                })
                .collect(),
        })
        .collect())
}

/// Every service of both families, sorted by family, address, port, protocol.
pub fn services(pins: &PinLayout) -> Result<Vec<ServiceRow>, MapError> {
    let mut rows = services_of::<Ipv4Addr>(pins)?;
    rows.extend(services_of::<Ipv6Addr>(pins)?);
    Ok(rows)
}

pub fn services_table(rows: &[ServiceRow]) -> Table {
    let mut table = Table::new(["ID", "FRONTEND", "TYPE", "BACKENDS"]);
    for row in rows {
        let mut kind = row.kind.join(",");
        if row.scope == Scope::Internal {
            kind.push_str(",internal");
        }
        if let Some(timeout) = row.affinity_timeout {
            kind.push_str(&format!(",affinity={timeout}s"));
        }
        let unexposed = row.port == crate::plan::UNEXPOSED_PORT;
        let backends = if unexposed {
            "(other ports: rejected)".to_owned()
        } else if row.backends.is_empty() {
            "(none)".to_owned()
        } else {
            row.backends
                .iter()
                .map(|b| match (b.address, b.port, b.state) {
                    (Some(a), Some(p), Some(s)) => format!("{} ({s})", socket_display(a, p)),
                    _ => format!("#{} (missing)", b.id),
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        table.row([
            row.rev_nat_id.to_string(),
            if unexposed {
                format!(
                    "{}/{}",
                    socket_display(row.address, 0).replace(":0", ":*"),
                    row.protocol
                )
            } else {
                format!("{}/{}", socket_display(row.address, row.port), row.protocol)
            },
            kind,
            backends,
        ]);
    }
    table
}

/// The frontends with their traffic (rows filled by [`with_traffic`]): connections, packets
/// and bytes to the backends and back, and each backend's connections and packets.
pub fn services_stats_table(rows: &[ServiceRow]) -> Table {
    let mut table = Table::new([
        "ID",
        "FRONTEND",
        "CONNS",
        "PKTS TO/FROM",
        "BYTES TO/FROM",
        "BACKENDS (CONNS, PKTS TO/FROM)",
    ]);
    for row in rows
        .iter()
        .filter(|r| r.port != crate::plan::UNEXPOSED_PORT)
    {
        let t = row.stats.unwrap_or_default();
        let backends = row
            .backends
            .iter()
            .map(|b| {
                let s = b.stats.unwrap_or_default();
                let at = match (b.address, b.port) {
                    (Some(a), Some(p)) => socket_display(a, p),
                    _ => format!("#{}", b.id),
                };
                format!(
                    "{at} ({}, {}/{})",
                    s.connections, s.packets_to, s.packets_from
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        table.row([
            row.rev_nat_id.to_string(),
            format!("{}/{}", socket_display(row.address, row.port), row.protocol),
            t.connections.to_string(),
            format!("{}/{}", t.packets_to, t.packets_from),
            format!("{}/{}", t.bytes_to, t.bytes_from),
            if backends.is_empty() {
                "(none)".to_owned()
            } else {
                backends
            },
        ]);
    }
    table
}

#[derive(Debug, Serialize)]
pub struct ConntrackRow {
    pub family: Family,
    pub direction: &'static str,
    pub protocol: String,
    pub source: String,
    pub destination: String,
    pub backend_id: u32,
    pub backend: String,
    pub rev_nat_id: u32,
    /// The flow's state, seen with its other direction's entry.
    pub state: &'static str,
    /// Seconds since the flow was created (`None`: not recorded, an older agent made it).
    pub age_seconds: Option<f64>,
    /// Seconds since the flow's last packet, in either direction.
    pub idle_seconds: f64,
    /// This entry's own flags (its direction's TCP flags; REPLY in both; SNAT).
    pub flags: Vec<&'static str>,
    /// A masqueraded flow's NAT: in its forward entry the node address and port it leaves
    /// from, in its reverse entry the client restored on replies.
    pub nat: Option<String>,
}

fn conntrack_of<A: KernelFamily>(pins: &PinLayout) -> Result<Vec<ConntrackRow>, MapError>
where
    A::Raw: Eq + std::hash::Hash,
{
    let map = open_hash::<ConntrackKey<A::Raw>, ConntrackValue>(pins, A::Binding::CONNTRACK)?;
    let now = conntrack::monotonic_ns();
    let entries: Vec<_> = map.iter().filter_map(Result::ok).collect();
    let views = conntrack::views(&entries);
    let mut rows = Vec::new();
    for ((key, value), view) in entries.iter().zip(views) {
        let tuple = codec::decode_conntrack_key::<A>(key);
        let mut flags = Vec::new();
        for (bit, name) in [
            (ct_flags::SEEN_SYN, "SYN"),
            (ct_flags::SEEN_FIN, "FIN"),
            (ct_flags::SEEN_RST, "RST"),
            (ct_flags::SEEN_REPLY, "REPLY"),
            (ct_flags::PEER_FIN, "PEER_FIN"),
            (ct_flags::PEER_RST, "PEER_RST"),
            (ct_flags::SNAT, "SNAT"),
        ] {
            if value.flags & bit != 0 {
                flags.push(name);
            }
        }
        let seconds = |ns: u64| ns as f64 / 1e9;
        rows.push(ConntrackRow {
            family: A::FAMILY,
            direction: if tuple.direction == direction::FORWARD {
                "forward"
            } else {
                "reverse"
            },
            protocol: Protocol::from_number(tuple.protocol)
                .map(|p| p.to_string())
                .unwrap_or_else(|| tuple.protocol.to_string()),
            source: socket_display(tuple.source.into(), tuple.source_port),
            destination: socket_display(tuple.destination.into(), tuple.destination_port),
            backend_id: value.backend_id,
            backend: socket_display(
                codec::decode_conntrack_address::<A>(&value.backend_address).into(),
                u16::from_be(value.backend_port),
            ),
            rev_nat_id: value.rev_nat_id,
            state: view.state.name(),
            age_seconds: (value.created != 0)
                .then(|| seconds(now.saturating_sub(u64::from(value.created) * 1_000_000_000))),
            idle_seconds: seconds(now.saturating_sub(view.last_seen)),
            flags,
            nat: (value.flags & ct_flags::SNAT != 0).then(|| {
                socket_display(
                    codec::decode_conntrack_address::<A>(&value.nat_address).into(),
                    u16::from_be(value.nat_port),
                )
            }),
        });
    }
    rows.sort_by(|a, b| {
        (a.family, &a.source, &a.destination, a.direction).cmp(&(
            b.family,
            &b.source,
            &b.destination,
            b.direction,
        ))
    });
    Ok(rows)
}

pub fn conntrack(pins: &PinLayout) -> Result<Vec<ConntrackRow>, MapError> {
    let mut rows = conntrack_of::<Ipv4Addr>(pins)?;
    rows.extend(conntrack_of::<Ipv6Addr>(pins)?);
    Ok(rows)
}

pub fn conntrack_table(rows: &[ConntrackRow]) -> Table {
    let mut table = Table::new([
        "DIR",
        "PROTO",
        "SOURCE",
        "DESTINATION",
        "BACKEND",
        "ID",
        "REVNAT",
        "STATE",
        "AGE",
        "IDLE",
        "FLAGS",
        "NAT",
    ]);
    for row in rows {
        table.row([
            row.direction.to_owned(),
            row.protocol.clone(),
            row.source.clone(),
            row.destination.clone(),
            row.backend.clone(),
            row.backend_id.to_string(),
            row.rev_nat_id.to_string(),
            row.state.to_owned(),
            row.age_seconds
                .map_or_else(|| "-".to_owned(), |age| format!("{age:.1}s")),
            format!("{:.1}s", row.idle_seconds),
            row.flags.join(","),
            row.nat.clone().unwrap_or_else(|| "-".to_owned()),
        ]);
    }
    table
}

/// A socket the socket hooks translated: what it is shown instead of its backend.
#[derive(Debug, Serialize)]
pub struct SockRow {
    pub family: Family,
    pub cookie: u64,
    pub backend: String,
    pub frontend: String,
    pub rev_nat_id: u32,
}

fn sockets_of<A: KernelFamily>(pins: &PinLayout) -> Result<Vec<SockRow>, MapError> {
    let map = open_hash::<SockRevKey<A::Raw>, SockRevValue<A::Raw>>(pins, A::Binding::SOCK_REV)?;
    let mut rows = Vec::new();
    for entry in map.iter() {
        let Ok((key, value)) = entry else { continue };
        rows.push(SockRow {
            family: A::FAMILY,
            cookie: u64::from_ne_bytes(key.cookie),
            backend: socket_display(key.address.to_ip().into(), u16::from_be(key.port)),
            frontend: socket_display(value.address.to_ip().into(), u16::from_be(value.port)),
            rev_nat_id: value.rev_nat_id,
        });
    }
    Ok(rows)
}

/// The socket hooks' reverse entries of both families.
pub fn sockets(pins: &PinLayout) -> Result<Vec<SockRow>, MapError> {
    let mut rows = sockets_of::<Ipv4Addr>(pins)?;
    rows.extend(sockets_of::<Ipv6Addr>(pins)?);
    rows.sort_by(|a, b| (a.family, a.cookie, &a.backend).cmp(&(b.family, b.cookie, &b.backend)));
    Ok(rows)
}

pub fn sockets_table(rows: &[SockRow]) -> Table {
    let mut table = Table::new(["COOKIE", "BACKEND", "SHOWN AS", "REVNAT"]);
    for row in rows {
        table.row([
            row.cookie.to_string(),
            row.backend.clone(),
            row.frontend.clone(),
            row.rev_nat_id.to_string(),
        ]);
    }
    table
}

#[derive(Debug, Serialize)]
pub struct MapRow {
    pub name: &'static str,
    pub kind: String,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    /// Entries present (`None` for per-CPU arrays, which are always full).
    pub entries: Option<usize>,
    /// Kernel memory charged to the map (`memlock` in its fdinfo), in bytes.
    pub memory_bytes: Option<u64>,
}

fn memlock(fd: std::os::fd::BorrowedFd<'_>) -> Option<u64> {
    use std::os::fd::AsRawFd as _;
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Every pinned map of the map list: shape, fill and kernel memory (like `bpftool map show`).
pub fn maps(pins: &PinLayout) -> Result<Vec<MapRow>, MapError> {
    let mut rows = Vec::new();
    for spec in MAPS {
        let name = spec.name;
        let info =
            aya::maps::MapInfo::from_pin(pins.map(name)).map_err(|source| MapError::Kernel {
                map: name,
                operation: "open pin",
                source,
            })?;
        let fd = info.fd().ok();
        let memory_bytes = fd.as_ref().and_then(|fd| {
            use std::os::fd::AsFd as _;
            memlock(fd.as_fd())
        });
        let entries = match spec.kind {
            MapKind::Hash | MapKind::LruHash => fd.as_ref().and_then(|fd| {
                use std::os::fd::AsFd as _;
                batch::count(fd.as_fd(), info.key_size(), info.value_size()).ok()
            }),
            // A trie has no batch lookup: its entries are walked.
            MapKind::LpmTrie => range_count(pins, spec.family),
            MapKind::PerCpuArray | MapKind::Array | MapKind::RingBuf | MapKind::LruPerCpuHash => {
                None
            }
        };
        rows.push(MapRow {
            name,
            kind: info
                .map_type()
                .map(|t| format!("{t:?}"))
                .unwrap_or_else(|_| "unknown".into()),
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
            entries,
            memory_bytes,
        });
    }
    Ok(rows)
}

/// How many entries a family's source-range trie holds.
fn range_count(pins: &PinLayout, family: Option<proxy_common::maps::MapFamily>) -> Option<usize> {
    use crate::maps::{Table as _, ranges::KernelRanges};
    use proxy_common::maps::MapFamily;
    match family? {
        MapFamily::V4 => KernelRanges::<std::net::Ipv4Addr>::open(pins)
            .ok()?
            .dump()
            .ok()
            .map(|e| e.len()),
        MapFamily::V6 => KernelRanges::<std::net::Ipv6Addr>::open(pins)
            .ok()?
            .dump()
            .ok()
            .map(|e| e.len()),
    }
}

pub fn maps_table(rows: &[MapRow]) -> Table {
    let mut table = Table::new(["NAME", "TYPE", "KEY", "VALUE", "MAX", "ENTRIES", "MEMORY"]);
    for row in rows {
        table.row([
            row.name.to_owned(),
            row.kind.clone(),
            row.key_size.to_string(),
            row.value_size.to_string(),
            row.max_entries.to_string(),
            row.entries
                .map(|e| e.to_string())
                .unwrap_or_else(|| "-".into()),
            row.memory_bytes
                .map(|b| format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0)))
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    table
}

/// One datapath outcome counter, summed over CPUs since the datapath was loaded.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct CounterRow {
    pub name: &'static str,
    pub packets: u64,
}

/// Every datapath outcome counter (`proxy_common::counter::Counter`), in declaration order:
/// what `/metrics` serves as `twinstack_datapath_packets_total`, read from the pins, so it works
/// while the agent is down (a restart, a crash loop) too.
pub fn counters(pins: &PinLayout) -> Result<Vec<CounterRow>, MapError> {
    use proxy_common::{counter::Counter, map_names::COUNTERS};
    let kernel = |operation, source| MapError::Kernel {
        map: COUNTERS,
        operation,
        source,
    };
    let data =
        aya::maps::MapData::from_pin(pins.map(COUNTERS)).map_err(|e| kernel("open pin", e))?;
    let array: aya::maps::PerCpuArray<_, u64> = aya::maps::PerCpuArray::try_from(
        aya::maps::Map::from_map_data(data).map_err(|e| kernel("open", e))?,
    )
    .map_err(|e| kernel("open", e))?;
    Counter::ALL
        .iter()
        .map(|counter| {
            let per_cpu = array
                .get(&counter.index(), 0)
                .map_err(|e| kernel("lookup", e))?;
            Ok(CounterRow {
                name: counter.name(),
                packets: per_cpu.iter().sum(),
            })
        })
        .collect()
}

/// The counters as a table; `all`: the zero ones too.
pub fn counters_table(rows: &[CounterRow], all: bool) -> Table {
    let mut table = Table::new(["OUTCOME", "PACKETS"]);
    for row in rows.iter().filter(|row| all || row.packets != 0) {
        table.row([row.name.to_owned(), row.packets.to_string()]);
    }
    table
}
