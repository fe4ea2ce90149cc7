//! Per-CPU packet outcome counters (`twinstack bpf counters`, metrics).
use crate::maps::COUNTERS;

#[inline(always)]
pub fn count(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *slot += 1 };
    }
}
