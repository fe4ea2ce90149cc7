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
