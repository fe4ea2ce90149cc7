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
    /// A service with no usable backend: untouched for now (reject comes with its issue).
    NoBackend,
    Repick,
    /// A helper failed mid-rewrite or before it; the packet goes on as it is.
    RewriteError,
    /// No conntrack entry could be made; the packet goes on untranslated.
    ConntrackError,
}

/// What the hook is told to do with the packet.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Hand the packet (translated or not) on to the next program or the stack.
    Next,
}

/// `TC_ACT_UNSPEC`, which TCX reads as `TCX_NEXT`: the next program on the hook, or the stack
/// if there is none, so other programs (a CNI's) keep working beside ours.
const TC_ACT_UNSPEC: i32 = -1;

impl Outcome {
    #[inline(always)]
    pub(crate) fn counter(self) -> Counter {
        match self {
            Outcome::Pass => Counter::Pass,
            Outcome::DnatNew => Counter::DnatNew,
            Outcome::DnatEstablished => Counter::DnatEstablished,
            Outcome::ReverseNat => Counter::ReverseNat,
            Outcome::NoBackend => Counter::NoBackend,
            Outcome::Repick => Counter::Repick,
            Outcome::RewriteError => Counter::RewriteError,
            Outcome::ConntrackError => Counter::ConntrackError,
        }
    }

    /// A proxy must never black-hole traffic that is not a service's: every outcome so far,
    /// errors included, hands the packet on.
    #[inline(always)]
    pub(crate) fn verdict(self) -> Verdict {
        Verdict::Next
    }
}

impl Verdict {
    #[inline(always)]
    pub(crate) fn tc(self) -> i32 {
        match self {
            Verdict::Next => TC_ACT_UNSPEC,
        }
    }
}

/// A rewrite helper's error, as an outcome.
#[inline(always)]
pub(crate) fn rewrite_error(_: i64) -> Outcome {
    Outcome::RewriteError
}
