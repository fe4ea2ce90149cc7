//! The test lab: network namespaces joined by veths, backend servers, and the real `twinstack`
//! binary, each behind an RAII guard that removes what it made. Used by the integration tests
//! and by `cargo xtask demo`.
//!
//! Safety rails: every namespace is created by us with a unique name; the "node" has no
//! default route, so a mistake cannot send test traffic off the machine; every wait is bounded.
pub mod agent;
pub mod apiserver;
pub mod cgroup;
pub mod controlplane;
#[cfg(feature = "datapath")]
pub mod fixture;
pub mod lab;
pub mod load;
pub mod manifests;
pub mod netns;
pub mod objects;
pub mod servers;
pub mod topology;

use std::sync::atomic::{AtomicU32, Ordering};

/// A short name unique to this process and call: namespaces, pins and temp dirs carry it.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}-{n}", std::process::id())
}

/// Privileged tests need root: fail loudly (never skip) when we are not.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    assert_eq!(
        uid, 0,
        "this test needs root (BPF, network namespaces); run it through `cargo xtask test` as root"
    );
}

/// Mounts a bpffs at /sys/fs/bpf if none is there (idempotent).
pub fn ensure_bpffs() {
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("reading /proc/self/mounts");
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.contains(" bpf "))
    {
        return;
    }
    run(&["mount", "-t", "bpf", "bpf", "/sys/fs/bpf"]);
}

/// Runs a command, panicking with its output if it fails.
pub fn run(args: &[&str]) -> String {
    let output = std::process::Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        output.status.success(),
        "{args:?} failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The `twinstack` binary under test: `$TWINSTACK_BIN`, else the workspace's debug build.
pub fn twinstack_binary() -> std::path::PathBuf {
    if let Some(path) = std::env::var_os("TWINSTACK_BIN") {
        return path.into();
    }
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/twinstack");
    assert!(
        path.exists(),
        "{} is missing: build it first (`cargo xtask test` does) or set TWINSTACK_BIN",
        path.display()
    );
    path
}
