//! What a program did with a packet: the counter it bumps and the verdict it returns, decided
//! in one place. Errors are outcomes too, so a full conntrack map is told apart from a failed
//! rewrite, and reject or redirect verdicts have a place when they land.
use proxy_common::counter::Counter;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Not service traffic: untouched.
    Pass,
    DnatNew,
    DnatEstablished,
    ReverseNat,
    /// A service with no usable backend, and a packet a reject cannot answer: untouched.
    NoBackend,
    /// A `Local` policy with no endpoint on this node: dropped.
    DropNoLocalEndpoint,
    /// A client outside the frontend's `loadBalancerSourceRanges`: dropped.
    DropSourceRange,
    /// No usable backend: answered with a reset or a port unreachable.
    Reject,
    /// A helper failed once a reject had begun to rewrite the packet: what is left of it is
    /// neither the packet nor its answer, so it is dropped (counted as a rewrite error).
    RejectError,
    Repick,
    /// An ICMP (ICMPv6) error about a translated flow was translated with it.
    IcmpError,
    /// A new flow was DNATed and masqueraded, and redirected to its backend.
    SnatNew,
    /// A packet of a masqueraded flow was translated and redirected to its backend.
    SnatEstablished,
    /// A reply to a masqueraded flow was translated back and redirected to its client.
    ReverseSnat,
    /// A flow to masquerade had no route or no free port: dropped.
    SnatError,
    /// A later fragment of a translated datagram got its first fragment's address.
    Fragment,
    /// A helper failed mid-rewrite or before it; the packet goes on as it is.
    RewriteError,
    /// No conntrack entry could be made; the packet goes on untranslated.
    ConntrackError,
    /// The XDP path hands the packet on to TC, which serves it whole.
    XdpToTc,
    /// A socket's `connect()` was sent straight to a backend.
    SockConnect,
    /// An unconnected UDP datagram was sent straight to a backend.
    SockSendmsg,
    /// A `connect()` or datagram to a frontend with no usable backend: refused.
    SockRefused,
    /// A reply's source or a peer name was restored to the frontend.
    SockReverse,
    /// A socket's reverse entry was stale (its frontend gone or changed) and was dropped.
    SockReverseStale,
    /// Translated, but a socket map could not be updated.
    SockMapError,
}

/// What the hook is told to do with the packet (or the socket call).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Hand the packet (translated or not) on to the next program or the stack; let the
    /// socket call go on.
    Next,
    /// Fail the socket call with ECONNREFUSED, as kube-proxy's REJECT makes it fail.
    Refuse,
    /// Drop the packet.
    Drop,
    /// The packet was rewritten into an answer and redirected back where it came from.
    Bounce,
    /// The packet was translated and redirected out of the interface of its route.
    Redirect,
}

/// `TC_ACT_UNSPEC`, which TCX reads as `TCX_NEXT`: the next program on the hook, or the stack
/// if there is none, so other programs (a CNI's) keep working beside ours.
const TC_ACT_UNSPEC: i32 = -1;
/// `TC_ACT_SHOT` (`TCX_DROP`).
const TC_ACT_SHOT: i32 = 2;
/// `TC_ACT_REDIRECT` (`TCX_REDIRECT`): the redirect `bpf_redirect` set up.
const TC_ACT_REDIRECT: i32 = 7;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;

impl Outcome {
    #[inline(always)]
    pub(crate) fn counter(self) -> Counter {
        match self {
            Outcome::Pass => Counter::Pass,
            Outcome::DnatNew => Counter::DnatNew,
            Outcome::DnatEstablished => Counter::DnatEstablished,
            Outcome::ReverseNat => Counter::ReverseNat,
            Outcome::NoBackend => Counter::NoBackend,
            Outcome::DropNoLocalEndpoint => Counter::DropNoLocalEndpoint,
            Outcome::DropSourceRange => Counter::DropSourceRange,
            Outcome::Reject => Counter::Reject,
            Outcome::RejectError => Counter::RewriteError,
            Outcome::Repick => Counter::Repick,
            Outcome::IcmpError => Counter::IcmpError,
            Outcome::SnatNew => Counter::SnatNew,
            Outcome::SnatEstablished => Counter::SnatEstablished,
            Outcome::ReverseSnat => Counter::ReverseSnat,
            Outcome::SnatError => Counter::SnatError,
            Outcome::Fragment => Counter::Fragment,
            Outcome::RewriteError => Counter::RewriteError,
            Outcome::ConntrackError => Counter::ConntrackError,
            Outcome::XdpToTc => Counter::XdpToTc,
            Outcome::SockConnect => Counter::SockConnect,
            Outcome::SockSendmsg => Counter::SockSendmsg,
            Outcome::SockRefused => Counter::SockRefused,
            Outcome::SockReverse => Counter::SockReverse,
            Outcome::SockReverseStale => Counter::SockReverseStale,
            Outcome::SockMapError => Counter::SockMapError,
        }
    }

    /// A proxy must never black-hole traffic that is not a service's: every outcome but a
    /// refused socket call, a `Local` policy without local endpoint, a client outside the
    /// source ranges, a reject (and a reject
    /// that broke the packet halfway), errors included, hands the packet (or the call) on.
    #[inline(always)]
    pub(crate) fn verdict(self) -> Verdict {
        match self {
            Outcome::SockRefused => Verdict::Refuse,
            Outcome::DropNoLocalEndpoint
            | Outcome::DropSourceRange
            | Outcome::RejectError
            | Outcome::SnatError => Verdict::Drop,
            Outcome::Reject => Verdict::Bounce,
            Outcome::SnatNew | Outcome::SnatEstablished | Outcome::ReverseSnat => Verdict::Redirect,
            _ => Verdict::Next,
        }
    }
}

impl Verdict {
    #[inline(always)]
    pub(crate) fn tc(self) -> i32 {
        match self {
            // No packet program refuses: a packet's reject is a bounce.
            Verdict::Next | Verdict::Refuse => TC_ACT_UNSPEC,
            Verdict::Drop => TC_ACT_SHOT,
            Verdict::Bounce | Verdict::Redirect => TC_ACT_REDIRECT,
        }
    }

    /// An XDP verdict: a drop or a redirect as at TC; anything else goes on to the kernel
    /// (and the device's TC programs).
    #[inline(always)]
    pub(crate) fn xdp(self) -> u32 {
        match self {
            Verdict::Drop => XDP_DROP,
            Verdict::Redirect => XDP_REDIRECT,
            Verdict::Next | Verdict::Refuse | Verdict::Bounce => XDP_PASS,
        }
    }

    /// A cgroup socket hook's return value: 1 lets the call go on, 0 fails it with the errno
    /// set by `bpf_set_retval`.
    #[inline(always)]
    pub(crate) fn sock(self) -> i32 {
        match self {
            // A socket call is never dropped: a `Local` policy's drop happens to its packets.
            Verdict::Next | Verdict::Drop | Verdict::Bounce | Verdict::Redirect => 1,
            Verdict::Refuse => 0,
        }
    }
}

/// A rewrite helper's error, as an outcome.
#[inline(always)]
pub(crate) fn rewrite_error(_: i64) -> Outcome {
    Outcome::RewriteError
}
