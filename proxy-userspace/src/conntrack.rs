//! Conntrack lifetimes in the agent: each entry's state and last activity seen with its other
//! direction ([`views`], for `twinstack bpf ct list` and the collector), and the garbage
//! collector ([`collect`]) that deletes flows idle past their state's timeout, so the LRU maps
//! never have to evict a live flow to make room. The datapath applies the same timeouts to the
//! forward entry it finds (`proxy_common::conntrack`), so an expired flow is new to both.
use std::{collections::HashMap, os::fd::AsFd as _};

use proxy_common::{
    ConntrackKey, ConntrackValue, LbFamily, RawAddress,
    conntrack::{State, Timeouts},
    ct_flags, direction,
};

use crate::maps::{MapError, batch, codec::KernelFamily, kernel, pins::PinLayout};

/// Nanoseconds of `CLOCK_MONOTONIC`, the clock of `bpf_ktime_get_ns()`.
pub fn monotonic_ns() -> u64 {
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: clock_gettime writes into a struct we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

type Entry<A> = (ConntrackKey<A>, ConntrackValue);

/// The reverse entry's key for a forward entry: the backend sending to the client, or to the
/// node address and port a masqueraded flow leaves from.
fn reverse_key<A: RawAddress>(key: &ConntrackKey<A>, value: &ConntrackValue) -> ConntrackKey<A> {
    let replies_to = if value.flags & ct_flags::SNAT != 0 {
        (A::from_wide(&value.nat_address), value.nat_port)
    } else {
        (key.source, key.source_port)
    };
    ConntrackKey::raw(
        (A::from_wide(&value.backend_address), value.backend_port),
        replies_to,
        key.protocol,
        direction::REVERSE,
    )
}

/// What one entry says once its other direction is taken into account.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct View {
    pub state: State,
    /// The later of the two entries' last packets.
    pub last_seen: u64,
    /// The other direction's entry exists (and names the same backend).
    pub paired: bool,
}

/// Each entry's [`View`], in the order given: a forward entry and the reverse entry of its
/// backend are one flow (both FINs, the latest packet); an entry without its pair stands
/// alone.
pub fn views<A: RawAddress + Eq + std::hash::Hash>(entries: &[Entry<A>]) -> Vec<View> {
    let index: HashMap<ConntrackKey<A>, &ConntrackValue> =
        entries.iter().map(|(k, v)| (*k, v)).collect();
    // The forward entry each reverse entry belongs to.
    let mut partner: HashMap<ConntrackKey<A>, &ConntrackValue> = HashMap::new();
    for (key, value) in entries {
        if key.direction == direction::FORWARD {
            partner.insert(reverse_key(key, value), value);
        }
    }
    entries
        .iter()
        .map(|(key, value)| {
            let other = if key.direction == direction::FORWARD {
                index.get(&reverse_key(key, value)).copied()
            } else {
                partner.get(key).copied()
            }
            .filter(|other| other.backend_id == value.backend_id);
            View {
                state: State::of(key.protocol, value.flags, other.map(|o| o.flags)),
                last_seen: other.map_or(value.last_seen, |o| o.last_seen.max(value.last_seen)),
                paired: other.is_some(),
            }
        })
        .collect()
}

/// What one collection did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Collected {
    pub scanned: usize,
    pub deleted: usize,
}

impl std::ops::AddAssign for Collected {
    fn add_assign(&mut self, other: Self) {
        self.scanned += other.scanned;
        self.deleted += other.deleted;
    }
}

/// Deletes, in both families, every conntrack entry whose flow is past its timeout at `now`
/// (nanoseconds of [`monotonic_ns`]).
pub fn collect(pins: &PinLayout, timeouts: &Timeouts, now: u64) -> Result<Collected, MapError> {
    let mut collected = collect_family::<std::net::Ipv4Addr>(pins, timeouts, now)?;
    collected += collect_family::<std::net::Ipv6Addr>(pins, timeouts, now)?;
    Ok(collected)
}

fn collect_family<A: KernelFamily>(
    pins: &PinLayout,
    timeouts: &Timeouts,
    now: u64,
) -> Result<Collected, MapError>
where
    A::Raw: Eq + std::hash::Hash,
{
    let name = A::Binding::CONNTRACK;
    let kernel::Opened { map, fd, .. } =
        kernel::open_hash_with_fd::<ConntrackKey<A::Raw>, ConntrackValue>(pins, name)?;
    let entries: Vec<Entry<A::Raw>> =
        batch::lookup_all(fd.as_fd()).map_err(|e| kernel::io_error(name, "conntrack dump", e))?;
    let expired: Vec<ConntrackKey<A::Raw>> = entries
        .iter()
        .zip(views(&entries))
        .filter(|(_, view)| timeouts.expired(view.state, view.last_seen, now))
        .map(|((key, value), _)| (*key, *value))
        // A packet may have refreshed the entry since the dump: only an unchanged one goes.
        .filter(|(key, value)| map.get(key, 0).is_ok_and(|current| current == *value))
        .map(|(key, _)| key)
        .collect();
    batch::delete(fd.as_fd(), &expired)
        .map_err(|e| kernel::io_error(name, "conntrack delete", e))?;
    Ok(Collected {
        scanned: entries.len(),
        deleted: expired.len(),
    })
}
