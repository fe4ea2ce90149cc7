//! Host-side stub: the kernel programs live in `main.rs` and build for `bpfel-unknown-none`.
//! This library only exists so `proxy-userspace` can name the crate as a build dependency.
#![no_std]
