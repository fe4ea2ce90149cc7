//! One file per kernel program; each entry point is thin: parse, hand the packet to the
//! family-generic body, count the [`Outcome`] and return its verdict.
mod from_pod;
mod to_pod;

use crate::{metrics, outcome::Outcome};

/// Counts `outcome` (an error is an outcome too) and returns its TC verdict.
#[inline(always)]
fn finish_tc(outcome: Result<Outcome, Outcome>) -> i32 {
    let outcome = outcome.unwrap_or_else(|error| error);
    metrics::count(outcome.counter());
    outcome.verdict().tc()
}
