//! Zeroing without `memset`: LLVM makes a zeroed value (a struct literal's zero fields, an
//! array of zeros) a call to the `memset` that `compiler_builtins` provides, a loop of one-byte
//! stores, on every packet that builds one.

/// Zeroes `*value` a word at a time: `size_of::<T>() / 4` volatile stores, unrolled (volatile,
/// so LLVM cannot fold them back into a `memset` call).
///
/// # Safety
/// `value` points to writable memory of a `T` that is 4-aligned and a whole number of 4-byte
/// words long; what it holds afterwards must be a valid `T` (all zeros).
#[inline(always)]
pub(crate) unsafe fn zero<T>(value: *mut T) {
    const { assert!(align_of::<T>() >= 4 && size_of::<T>().is_multiple_of(4)) };
    let words = value.cast::<u32>();
    for i in 0..size_of::<T>() / 4 {
        // SAFETY: within `*value` (the caller's word), 4-aligned.
        unsafe { words.add(i).write_volatile(0) };
    }
}
