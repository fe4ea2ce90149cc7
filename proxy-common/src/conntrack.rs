//! Conntrack lifetimes, shared by the datapath (which treats an expired flow as new) and the
//! agent (whose garbage collector deletes expired entries before the LRU would have to evict
//! live ones): a flow's [`State`] comes from its protocol and the flags of its entries, and
//! each state has a timeout ([`Timeouts`], seconds), as netfilter's conntrack has.
use bytemuck::{Pod, Zeroable};

use crate::{ct_flags, protocol};

/// What a tracked flow is doing, as far as its entries tell.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum State {
    /// TCP, no reply from the backend yet.
    SynSent,
    /// TCP, the backend has answered, neither side has closed.
    Established,
    /// TCP, one side has sent a FIN (half-closed; netfilter's CLOSE_WAIT).
    CloseWait,
    /// TCP, both sides have sent a FIN (netfilter's TIME_WAIT).
    TimeWait,
    /// TCP, a reset was seen (netfilter's CLOSE).
    Reset,
    /// UDP, no reply yet.
    Udp,
    /// UDP with replies (netfilter's "stream").
    UdpStream,
    /// Any other protocol (SCTP).
    Other,
}

impl State {
    pub const ALL: [State; 8] = [
        State::SynSent,
        State::Established,
        State::CloseWait,
        State::TimeWait,
        State::Reset,
        State::Udp,
        State::UdpStream,
        State::Other,
    ];

    /// The state of a flow of `protocol` from one entry's flags (`this`) and, when known, its
    /// other direction's (`other`): both FINs are only seen with both entries.
    #[inline(always)]
    pub const fn of(protocol: u8, this: u8, other: Option<u8>) -> State {
        let other_flags = match other {
            Some(flags) => flags,
            None => 0,
        };
        let all = this | other_flags;
        match protocol {
            protocol::TCP => {
                if all & ct_flags::SEEN_RST != 0 {
                    State::Reset
                } else if this & other_flags & ct_flags::SEEN_FIN != 0 {
                    State::TimeWait
                } else if all & ct_flags::SEEN_FIN != 0 {
                    State::CloseWait
                } else if all & ct_flags::SEEN_REPLY != 0 {
                    State::Established
                } else {
                    State::SynSent
                }
            }
            protocol::UDP => {
                if all & ct_flags::SEEN_REPLY != 0 {
                    State::UdpStream
                } else {
                    State::Udp
                }
            }
            _ => State::Other,
        }
    }

    /// The name in `twinstack bpf ct list`.
    pub const fn name(self) -> &'static str {
        match self {
            State::SynSent => "SYN_SENT",
            State::Established => "ESTABLISHED",
            State::CloseWait => "CLOSE_WAIT",
            State::TimeWait => "TIME_WAIT",
            State::Reset => "CLOSE",
            State::Udp => "UDP",
            State::UdpStream => "UDP_STREAM",
            State::Other => "OTHER",
        }
    }
}

/// How long a flow may stay idle in each state, in seconds. Part of the programs' load-time
/// configuration ([`crate::config::DatapathConfig`]); every one is at least 1.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct Timeouts {
    pub syn_sent: u32,
    pub established: u32,
    pub close_wait: u32,
    pub time_wait: u32,
    pub reset: u32,
    pub udp: u32,
    pub udp_stream: u32,
    pub other: u32,
}

impl Timeouts {
    /// kube-proxy's defaults where it sets them (`--conntrack-tcp-timeout-established` 24h,
    /// `--conntrack-tcp-timeout-close-wait` 1h), netfilter's elsewhere (SYN_SENT 120s,
    /// TIME_WAIT 120s, CLOSE 10s, UDP 30s, UDP stream 120s); SCTP and others 60s.
    /// Every timeout zero (an unset configuration).
    pub const ZERO: Timeouts = Timeouts {
        syn_sent: 0,
        established: 0,
        close_wait: 0,
        time_wait: 0,
        reset: 0,
        udp: 0,
        udp_stream: 0,
        other: 0,
    };

    pub const DEFAULT: Timeouts = Timeouts {
        syn_sent: 120,
        established: 86_400,
        close_wait: 3_600,
        time_wait: 120,
        reset: 10,
        udp: 30,
        udp_stream: 120,
        other: 60,
    };

    #[inline(always)]
    pub const fn seconds(&self, state: State) -> u32 {
        match state {
            State::SynSent => self.syn_sent,
            State::Established => self.established,
            State::CloseWait => self.close_wait,
            State::TimeWait => self.time_wait,
            State::Reset => self.reset,
            State::Udp => self.udp,
            State::UdpStream => self.udp_stream,
            State::Other => self.other,
        }
    }

    /// The longest of the timeouts, in seconds: no flow idle longer is alive in any state.
    #[inline(always)]
    pub const fn longest(&self) -> u32 {
        let mut longest = 0;
        let mut i = 0;
        while i < State::ALL.len() {
            let seconds = self.seconds(State::ALL[i]);
            if seconds > longest {
                longest = seconds;
            }
            i += 1;
        }
        longest
    }

    /// Whether a flow in `state` last seen at `last_seen` has expired at `now` (nanoseconds
    /// of the same clock).
    #[inline(always)]
    pub const fn expired(&self, state: State, last_seen: u64, now: u64) -> bool {
        now.saturating_sub(last_seen) > self.seconds(state) as u64 * 1_000_000_000
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// When translated flows last moved, by their client's address, in
/// [`crate::map_names::CT_RECENT`]: an array of [`recent::SLOTS`] `bpf_ktime_get_ns` times,
/// an address's slot given by [`recent::slot`]. The datapath refreshes a slot whenever it
/// creates a flow of one of its clients or touches one, in either direction (at most every
/// [`recent::REFRESH_NS`]); a packet to an address whose slot has not moved for longer than
/// any flow lives ([`recent::may_live`]) is no reply to a live flow, so the reverse path (TC
/// egress) passes it without the conntrack lookup: the packets of a connection the socket
/// hooks sent straight to a backend, and of pods that never use a Service through TC, cost no
/// lookup. Masqueraded flows are not marked: their replies come to the node, where the ingress
/// path translates them. Slots are shared (a hash): a busy neighbour only costs the lookup.
pub mod recent {
    use super::Timeouts;
    use crate::RawAddress;

    /// A power of two: 128 KiB, room for a node's pods and its clients with few collisions.
    pub const SLOTS: u32 = 16_384;
    const SLOT_BITS: u32 = SLOTS.trailing_zeros();
    /// How often a slot is written at most: a busy flow refreshes it once a second, not on
    /// every packet.
    pub const REFRESH_NS: u64 = 1_000_000_000;

    /// The slot of `address` ([`crate::address_slot`]).
    #[inline(always)]
    pub fn slot<A: RawAddress>(address: A) -> u32 {
        crate::address_slot(address, SLOT_BITS)
    }

    /// Whether a flow of a slot written at `at` may still be alive at `now`: 0 (never written)
    /// says no; else within the longest timeout of `timeouts`, and two refresh intervals more
    /// (a slot lags its flows by up to one, and racing writers may put back a time a moment
    /// older).
    #[inline(always)]
    pub fn may_live(at: u64, now: u64, timeouts: &Timeouts) -> bool {
        at != 0
            && now.saturating_sub(at) <= timeouts.longest() as u64 * 1_000_000_000 + 2 * REFRESH_NS
    }

    /// Whether a slot written at `at` is due a refresh at `now`.
    #[inline(always)]
    pub fn stale(at: u64, now: u64) -> bool {
        now.saturating_sub(at) >= REFRESH_NS
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::{Timeouts, recent};

    #[test]
    fn the_longest_timeout_bounds_every_flow() {
        assert_eq!(Timeouts::DEFAULT.longest(), 86_400);
        let udp_longest = Timeouts {
            udp_stream: 100_000,
            ..Timeouts::DEFAULT
        };
        assert_eq!(udp_longest.longest(), 100_000);
    }

    #[test]
    fn a_slot_says_a_flow_may_live_within_the_longest_timeout_and_two_refreshes() {
        let timeouts = Timeouts {
            established: 10,
            close_wait: 1,
            ..Timeouts::ZERO
        };
        let second = 1_000_000_000;
        let at = 5 * second;
        assert!(!recent::may_live(0, at, &timeouts), "never written");
        assert!(recent::may_live(at, at + 12 * second, &timeouts));
        assert!(!recent::may_live(at, at + 12 * second + 1, &timeouts));
        assert!(
            recent::may_live(at + 1, at, &timeouts),
            "a racing writer's later time"
        );
        assert!(!recent::stale(at, at + second - 1));
        assert!(recent::stale(at, at + second));
    }

    #[test]
    fn neighbouring_pod_addresses_take_different_slots() {
        let mut v4: Vec<u32> = (1..=250u8).map(|i| recent::slot([10, 244, 1, i])).collect();
        let mut v6: Vec<u32> = (1..=250u8)
            .map(|i| {
                let mut address = [0u8; 16];
                address[..4].copy_from_slice(&[0xfd, 0, 0, 0x10]);
                address[15] = i;
                recent::slot(address)
            })
            .collect();
        for slots in [&mut v4, &mut v6] {
            assert!(slots.iter().all(|&s| s < recent::SLOTS));
            slots.sort_unstable();
            slots.dedup();
            assert_eq!(slots.len(), 250, "a node's pods, one slot each");
        }
    }
}
