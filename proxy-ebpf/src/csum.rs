//! Internet checksum arithmetic over values on the stack, with `bpf_csum_diff` doing the
//! ones'-complement sums: whole headers for a reply built afresh ([`sum`], [`checksum`]), and
//! the difference a changed field makes ([`diff`]), to update a checksum that covers it.
use aya_ebpf::helpers::bpf_csum_diff;

/// The ones'-complement sum of `value` (a whole number of 32-bit words) added to `seed`, not
/// yet folded.
#[inline(always)]
pub(crate) fn sum<T>(value: &T, seed: u32) -> Result<u32, i64> {
    let size = core::mem::size_of::<T>() as u32;
    // SAFETY: `value` is `size` initialized bytes on our stack; nothing is written.
    let sum = unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            (value as *const T).cast_mut().cast(),
            size,
            seed,
        )
    };
    if sum < 0 { Err(sum) } else { Ok(sum as u32) }
}

/// `seed` plus what replacing `old` by `new` (a whole number of 32-bit words each) adds to a
/// sum that covers it, not yet folded: what `PacketCtx::csum_add` takes.
#[inline(always)]
pub(crate) fn diff<T>(old: &T, new: &T, seed: u32) -> Result<u32, i64> {
    let size = core::mem::size_of::<T>() as u32;
    // SAFETY: both are `size` initialized bytes on our stack; nothing is written.
    let diff = unsafe {
        bpf_csum_diff(
            (old as *const T).cast_mut().cast(),
            size,
            (new as *const T).cast_mut().cast(),
            size,
            seed,
        )
    };
    if diff < 0 { Err(diff) } else { Ok(diff as u32) }
}

/// A 16-bit field (in network order, as read), padded to the 32-bit word [`diff`] needs. The
/// field keeps its place in its 16-bit word, so the sums agree with the packet's.
#[inline(always)]
pub(crate) fn word(field: u16) -> [u8; 4] {
    let [high, low] = field.to_ne_bytes();
    [high, low, 0, 0]
}

/// The Internet checksum of `value` after `seed`, as the two bytes to store.
#[inline(always)]
pub(crate) fn checksum<T>(value: &T, seed: u32) -> Result<[u8; 2], i64> {
    let mut folded = sum(value, seed)?;
    folded = (folded & 0xffff) + (folded >> 16);
    folded = (folded & 0xffff) + (folded >> 16);
    // The sum ran over memory in its own byte order, so its complement goes back the same way.
    Ok((!(folded as u16)).to_ne_bytes())
}
