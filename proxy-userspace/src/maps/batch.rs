//! Batched map operations (`BPF_MAP_{LOOKUP,UPDATE,DELETE}_BATCH`, Linux 5.6+): one syscall for
//! thousands of entries. A cold start of 10,000 Services writes ~400,000 entries and a restart
//! reads as many; one syscall each would cost seconds. aya 0.14 has no batch API, so this is
//! the one place that calls `bpf(2)` directly.
use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd},
};

use bytemuck::Pod;

// `enum bpf_cmd` (include/uapi/linux/bpf.h).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// Entries per lookup syscall.
const LOOKUP_CHUNK: usize = 4096;

/// `union bpf_attr`, the `batch` member.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Runs one batch command; returns how many elements the kernel processed, and its error.
fn call(command: libc::c_long, attr: &mut BatchAttr) -> (usize, Option<io::Error>) {
    // SAFETY: `attr` is a valid bpf_attr prefix for batch commands; the buffers it points to
    // are sized by the caller for `count` elements and outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            attr as *mut BatchAttr,
            size_of::<BatchAttr>() as libc::c_uint,
        )
    };
    let error = (rc < 0).then(io::Error::last_os_error);
    (attr.count as usize, error)
}

/// Writes every `(key, value)`. On failure, the error and how many were written first.
pub fn update<K: Pod, V: Pod>(
    fd: BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
) -> Result<(), (usize, io::Error)> {
    debug_assert_eq!(keys.len(), values.len());
    if keys.is_empty() {
        return Ok(());
    }
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: keys.len() as u32,
        map_fd: fd.as_raw_fd() as u32,
        ..BatchAttr::default()
    };
    match call(BPF_MAP_UPDATE_BATCH, &mut attr) {
        (_, None) => Ok(()),
        (done, Some(error)) => Err((done, error)),
    }
}

/// Deletes every key; absent keys are skipped (the state we want holds).
pub fn delete<K: Pod>(fd: BorrowedFd<'_>, keys: &[K]) -> io::Result<()> {
    let mut rest = keys;
    while !rest.is_empty() {
        let mut attr = BatchAttr {
            keys: rest.as_ptr() as u64,
            count: rest.len() as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        match call(BPF_MAP_DELETE_BATCH, &mut attr) {
            (_, None) => return Ok(()),
            // The kernel stops at the first absent key: skip it and go on.
            (done, Some(e)) if e.raw_os_error() == Some(libc::ENOENT) => {
                rest = &rest[(done + 1).min(rest.len())..];
            }
            (_, Some(e)) => return Err(e),
        }
    }
    Ok(())
}

/// Reads every entry of a hash map.
pub fn lookup_all<K: Pod, V: Pod>(fd: BorrowedFd<'_>) -> io::Result<Vec<(K, V)>> {
    let mut entries = Vec::new();
    let mut keys = vec![K::zeroed(); LOOKUP_CHUNK];
    let mut values = vec![V::zeroed(); LOOKUP_CHUNK];
    lookup_chunks(
        fd,
        bytemuck::cast_slice_mut(&mut keys),
        bytemuck::cast_slice_mut(&mut values),
        |keys, values, done| {
            let keys: &[K] = bytemuck::cast_slice(keys);
            let values: &[V] = bytemuck::cast_slice(values);
            entries.extend(
                keys[..done]
                    .iter()
                    .copied()
                    .zip(values[..done].iter().copied()),
            );
        },
    )?;
    Ok(entries)
}

/// One lookup of up to `keys.len()` entries from the start of a map, into the caller's buffers
/// (`values` holds as many values per key as the map has: one per possible CPU for a per-CPU
/// map): how many were read. For a map that fits, one call and no allocation (the datapath
/// tests read the per-CPU counters after every packet this way).
pub fn lookup_first<K: Pod, V: Pod>(
    fd: BorrowedFd<'_>,
    keys: &mut [K],
    values: &mut [V],
) -> io::Result<usize> {
    debug_assert!(!keys.is_empty() && values.len().is_multiple_of(keys.len()));
    let mut token = 0u64;
    let mut attr = BatchAttr {
        out_batch: &mut token as *mut u64 as u64,
        keys: keys.as_mut_ptr() as u64,
        values: values.as_mut_ptr() as u64,
        count: keys.len() as u32,
        map_fd: fd.as_raw_fd() as u32,
        ..BatchAttr::default()
    };
    match call(BPF_MAP_LOOKUP_BATCH, &mut attr) {
        // ENOENT: nothing after these (the whole map was read).
        (done, None) => Ok(done),
        (done, Some(e)) if e.raw_os_error() == Some(libc::ENOENT) => Ok(done),
        (_, Some(e)) => Err(e),
    }
}

/// Counts the entries of a hash map whatever its key and value types (sizes in bytes; plain
/// hashes only: a per-CPU value needs room per CPU).
pub fn count(fd: BorrowedFd<'_>, key_size: u32, value_size: u32) -> io::Result<usize> {
    let mut keys = vec![0u8; LOOKUP_CHUNK * key_size as usize];
    let mut values = vec![0u8; LOOKUP_CHUNK * value_size as usize];
    let mut total = 0;
    lookup_chunks(fd, &mut keys, &mut values, |_, _, done| total += done)?;
    Ok(total)
}

/// Runs lookup batches of [`LOOKUP_CHUNK`] entries into `keys`/`values` (room for that many)
/// until the end of the map, handing each batch to `taken` with its count.
fn lookup_chunks(
    fd: BorrowedFd<'_>,
    keys: &mut [u8],
    values: &mut [u8],
    mut taken: impl FnMut(&[u8], &[u8], usize),
) -> io::Result<()> {
    // The batch token is opaque (a bucket index for hash maps); 8 bytes hold it.
    let mut token_in = 0u64;
    let mut token_out = 0u64;
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                &mut token_in as *mut u64 as u64
            },
            out_batch: &mut token_out as *mut u64 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: LOOKUP_CHUNK as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        let (done, error) = call(BPF_MAP_LOOKUP_BATCH, &mut attr);
        taken(keys, values, done);
        match error {
            None => {}
            // The end of the map.
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Some(e) => return Err(e),
        }
        token_in = token_out;
        first = false;
    }
}
