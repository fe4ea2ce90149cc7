//! Per-CPU scratch memory: the values too big to build on a BPF stack (512 bytes for a whole
//! call chain) next to the service path's own: a reject's reply and its pseudo header, a
//! masqueraded flow's conntrack entry, a FIB lookup's parameters. A program runs to its end
//! on one CPU without preemption by another program of ours, so one value per CPU is enough;
//! each use writes its part whole before it reads it.
use proxy_common::{ConntrackValue, SCRATCH_SIZE};

use crate::{ctx::FibParams, maps::SCRATCH};

#[repr(C, align(8))]
pub(crate) struct Scratch {
    pub fib: FibParams,
    pub entry: ConntrackValue,
    /// A reject's reply, built whole before it is written into the packet.
    pub reply: [u8; REPLY],
    pub pseudo: [u8; 40],
    /// A conntrack key of either family (8-aligned).
    key: [u8; 40],
}

const REPLY: usize = 112;

const _: () = assert!(core::mem::size_of::<Scratch>() == SCRATCH_SIZE);

/// This CPU's scratch value.
#[inline(always)]
pub(crate) fn get() -> Option<&'static mut Scratch> {
    // SAFETY: a per-CPU map value: nothing else runs on this CPU's copy while we do.
    SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

const _: () = assert!(core::mem::offset_of!(Scratch, key) % 8 == 0);

impl Scratch {
    /// The key buffer as a `K` and the reply buffer as a `V` (plain data; as
    /// [`Self::entry_and_key`] and [`Self::reply_and_pseudo`] check).
    #[inline(always)]
    pub(crate) fn key_and_reply<K, V>(&mut self) -> (&mut K, &mut V) {
        const { assert!(core::mem::size_of::<K>() <= 40 && core::mem::align_of::<K>() <= 8) };
        const { assert!(core::mem::size_of::<V>() <= REPLY && core::mem::align_of::<V>() == 1) };
        // SAFETY: in bounds and aligned (checked above), disjoint; the caller writes both
        // whole before reading them.
        unsafe {
            (
                &mut *self.key.as_mut_ptr().cast::<K>(),
                &mut *self.reply.as_mut_ptr().cast::<V>(),
            )
        }
    }

    /// The conntrack entry, and the key buffer as a `K` (at most 40 bytes, 8-aligned at most).
    #[inline(always)]
    pub(crate) fn entry_and_key<K>(&mut self) -> (&mut ConntrackValue, &mut K) {
        const { assert!(core::mem::size_of::<K>() <= 40 && core::mem::align_of::<K>() <= 8) };
        // SAFETY: in bounds and aligned (checked above), disjoint from `entry`; the caller
        // writes the key whole before reading it.
        (&mut self.entry, unsafe {
            &mut *self.key.as_mut_ptr().cast::<K>()
        })
    }

    /// The reply buffer as an `R` and the pseudo-header buffer as a `P` (byte arrays only: alignment 1, any bytes valid).
    #[inline(always)]
    pub(crate) fn reply_and_pseudo<R: Copy, P: Copy>(&mut self) -> (&mut R, &mut P) {
        const { assert!(core::mem::size_of::<R>() <= REPLY && core::mem::align_of::<R>() == 1) };
        const { assert!(core::mem::size_of::<P>() <= 40 && core::mem::align_of::<P>() == 1) };
        // SAFETY: in bounds and aligned (checked above), disjoint; both are plain bytes.
        unsafe {
            (
                &mut *self.reply.as_mut_ptr().cast::<R>(),
                &mut *self.pseudo.as_mut_ptr().cast::<P>(),
            )
        }
    }
}
