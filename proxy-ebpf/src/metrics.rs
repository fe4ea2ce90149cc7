//! Per-CPU packet outcome counters (`/metrics`, the datapath tests).
use proxy_common::counter::Counter;

use crate::maps::COUNTERS;

#[inline(always)]
pub(crate) fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter.index()) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *slot += 1 };
    }
}
