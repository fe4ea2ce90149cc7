//! `twinstack bpf monitor`: the datapath's events, read from its ring buffer while we say we
//! listen (the `monitor_until` deadline, refreshed every second and cleared on exit; a reader
//! that dies stops the events within a few seconds). New flows with their backend, packets to
//! a frontend without backend, drops with their reason, reverse-NAT misses.
use std::{
    io::Write,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use aya::maps::{Array, Map, MapData, RingBuf};
use proxy_common::{MonitorEvent, counter::Counter, map_names, monitor_hook, monitor_kind};
use serde::Serialize;

use crate::{
    conntrack::monotonic_ns,
    family::{Family, socket_display},
    maps::{MapError, pins::PinLayout},
    model::Protocol,
};

/// Which events to show; every given criterion must hold.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// The frontend (address, and port if given) the event is about.
    pub frontend: Option<(IpAddr, Option<u16>)>,
    /// An address anywhere in the event: client, frontend or backend.
    pub address: Option<IpAddr>,
    pub family: Option<Family>,
}

/// One event, decoded.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct EventRow {
    /// Seconds since boot (CLOCK_MONOTONIC), as the datapath stamped it.
    pub time: f64,
    /// `new_flow`, `no_backend`, `drop` or `reverse_nat_miss`.
    pub kind: &'static str,
    /// `tc` or `xdp`.
    pub hook: &'static str,
    pub family: Family,
    pub protocol: String,
    /// The packet's outcome (its counter's name): why it was dropped, how it was served.
    pub outcome: &'static str,
    /// The packet as it arrived: the client (a backend's, for a reverse-NAT miss) …
    pub source: String,
    /// … and what it was sent to (the frontend, for all but a reverse-NAT miss).
    pub destination: String,
    /// The frontend (the destination, but for a reverse-NAT miss: the backend's reply to a
    /// frontend that is gone).
    pub frontend: Option<String>,
    /// A new flow's backend.
    pub backend: Option<String>,
    pub rev_nat_id: u32,
    pub backend_id: u32,
    /// The addresses, for filtering.
    #[serde(skip)]
    addresses: Vec<IpAddr>,
    #[serde(skip)]
    frontend_key: Option<(IpAddr, u16)>,
}

fn kind_name(kind: u8) -> &'static str {
    match kind {
        monitor_kind::NEW_FLOW => "new_flow",
        monitor_kind::NO_BACKEND => "no_backend",
        monitor_kind::DROP => "drop",
        monitor_kind::REVERSE_NAT_MISS => "reverse_nat_miss",
        _ => "unknown",
    }
}

fn address_of(family: Family, wide: &[u8; 16]) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::new(wide[0], wide[1], wide[2], wide[3])),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(*wide)),
    }
}

/// Decodes one event (`None`: not one of ours, e.g. a short record).
fn decode(bytes: &[u8]) -> Option<EventRow> {
    let event: MonitorEvent = bytemuck::try_pod_read_unaligned(bytes).ok()?;
    let family = match event.family {
        4 => Family::V4,
        6 => Family::V6,
        _ => return None,
    };
    let source = address_of(family, &event.source);
    let destination = address_of(family, &event.destination);
    let mut addresses = vec![source, destination];
    let backend = (event.backend_id != 0).then(|| {
        let address = address_of(family, &event.backend);
        addresses.push(address);
        socket_display(address, u16::from_be(event.backend_port))
    });
    // Every event but a reverse-NAT miss is about a packet to its frontend.
    let frontend_key = (event.kind != monitor_kind::REVERSE_NAT_MISS)
        .then(|| (destination, u16::from_be(event.destination_port)));
    Some(EventRow {
        time: event.time_ns as f64 / 1e9,
        kind: kind_name(event.kind),
        hook: match event.hook {
            monitor_hook::XDP => "xdp",
            _ => "tc",
        },
        family,
        protocol: Protocol::from_number(event.protocol)
            .map(|p| p.to_string())
            .unwrap_or_else(|| event.protocol.to_string()),
        outcome: Counter::ALL
            .get(usize::from(event.counter))
            .map_or("unknown", |c| c.name()),
        source: socket_display(source, u16::from_be(event.source_port)),
        destination: socket_display(destination, u16::from_be(event.destination_port)),
        frontend: frontend_key.map(|(a, p)| socket_display(a, p)),
        backend,
        rev_nat_id: event.rev_nat_id,
        backend_id: event.backend_id,
        addresses,
        frontend_key,
    })
}

impl Filter {
    fn admits(&self, row: &EventRow) -> bool {
        if self.family.is_some_and(|f| f != row.family) {
            return false;
        }
        if self.address.is_some_and(|a| !row.addresses.contains(&a)) {
            return false;
        }
        match (self.frontend, row.frontend_key) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some((address, port)), Some((a, p))) => {
                address == a && port.is_none_or(|port| port == p)
            }
        }
    }
}

impl EventRow {
    /// One line: `TIME KIND HOOK PROTOCOL SOURCE -> DESTINATION [-> BACKEND] (OUTCOME)`.
    pub fn line(&self) -> String {
        let mut line = format!(
            "{:.6} {:<16} {:<3} {} {} -> {}",
            self.time, self.kind, self.hook, self.protocol, self.source, self.destination
        );
        if let Some(backend) = &self.backend {
            line.push_str(&format!(" -> {backend}"));
        }
        if self.kind == "reverse_nat_miss" {
            line.push_str(&format!(" (frontend #{} gone)", self.rev_nat_id));
        }
        line.push_str(&format!(" ({})", self.outcome));
        line
    }
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// How long the datapath keeps emitting after the last refresh, and how often we refresh.
const LEASE: Duration = Duration::from_secs(3);
const REFRESH: Duration = Duration::from_secs(1);

/// How a monitor run ends.
#[derive(Clone, Copy, Debug, Default)]
pub struct Limits {
    /// After this many events shown.
    pub count: Option<usize>,
    /// After this long.
    pub duration: Option<Duration>,
}

fn open_error(name: &'static str) -> impl Fn(aya::maps::MapError) -> MapError {
    move |source| MapError::Kernel {
        map: name,
        operation: "open pin",
        source,
    }
}

/// Shows the events that pass `filter` on `out` (`json`: one JSON object per line) until
/// `limits`, SIGINT or SIGTERM; returns how many were shown. Says on stderr when it listens.
pub fn monitor(
    pins: &PinLayout,
    filter: &Filter,
    json: bool,
    limits: Limits,
    out: &mut impl Write,
) -> Result<usize, anyhow::Error> {
    let ring =
        MapData::from_pin(pins.map(map_names::MONITOR)).map_err(open_error(map_names::MONITOR))?;
    let mut ring = RingBuf::try_from(Map::RingBuf(ring))?;
    let until = MapData::from_pin(pins.map(map_names::MONITOR_UNTIL))
        .map_err(open_error(map_names::MONITOR_UNTIL))?;
    let mut until: Array<MapData, u64> = Array::try_from(Map::Array(until))?;
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let started = Instant::now();
    let mut refreshed: Option<Instant> = None;
    let mut shown = 0;
    let result = (|| -> Result<(), anyhow::Error> {
        loop {
            if STOP.load(Ordering::Relaxed)
                || limits.duration.is_some_and(|d| started.elapsed() >= d)
                || limits.count.is_some_and(|c| shown >= c)
            {
                return Ok(());
            }
            if refreshed.is_none_or(|at| at.elapsed() >= REFRESH) {
                until.set(0, monotonic_ns() + LEASE.as_nanos() as u64, 0)?;
                if refreshed.is_none() {
                    eprintln!("listening on {} (Ctrl-C to stop)", pins.root().display());
                }
                refreshed = Some(Instant::now());
            }
            let mut idle = true;
            while let Some(item) = ring.next() {
                idle = false;
                let Some(row) = decode(&item) else {
                    continue;
                };
                if !filter.admits(&row) {
                    continue;
                }
                if json {
                    writeln!(out, "{}", serde_json::to_string(&row)?)?;
                } else {
                    writeln!(out, "{}", row.line())?;
                }
                out.flush()?;
                shown += 1;
                if limits.count.is_some_and(|c| shown >= c) {
                    break;
                }
            }
            if idle {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    })();
    // Nobody listens any more (another reader re-arms it within a second).
    let cleared = until.set(0, 0, 0);
    result?;
    cleared?;
    Ok(shown)
}
