//! Child cgroups (v2) that tests, the demo and the benchmark make for their own clients: the
//! socket programs are attached there and nowhere else (never to the machine's root cgroup).
//! A process joins before it creates its sockets: a socket belongs to the cgroup its creator
//! was in. Removed on drop.
use std::{
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use crate::unique;

pub struct Cgroup {
    path: PathBuf,
}

/// Where cgroup v2 is mounted (read from /proc/self/mounts; never assumed).
pub fn mount() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("reading /proc/self/mounts");
    mounts
        .lines()
        .find_map(|line| {
            let mut fields = line.split_whitespace();
            let (_, point, kind) = (fields.next()?, fields.next()?, fields.next()?);
            (kind == "cgroup2").then(|| PathBuf::from(point))
        })
        .expect("no cgroup v2 mount: the socket-LB tests need one")
}

impl Cgroup {
    /// A new child of the cgroup v2 root, named uniquely.
    pub fn create(prefix: &str) -> Self {
        crate::require_root();
        let path = mount().join(unique(prefix));
        std::fs::create_dir(&path)
            .unwrap_or_else(|e| panic!("creating cgroup {}: {e}", path.display()));
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes `command`'s process join this cgroup before it runs (and so before its sockets).
    pub fn command(&self, command: &mut Command) {
        let procs = self.path.join("cgroup.procs");
        // SAFETY: open/write/close are async-signal-safe; "0" means the writing process.
        unsafe {
            command.pre_exec(move || std::fs::write(&procs, b"0"));
        }
    }

    /// Moves this (whole) process in, for a benchmark whose load generator runs in threads.
    pub fn join_self(&self) {
        std::fs::write(
            self.path.join("cgroup.procs"),
            std::process::id().to_string(),
        )
        .expect("joining the cgroup");
    }

    /// Moves this process back to the root cgroup.
    pub fn leave_self(&self) {
        std::fs::write(mount().join("cgroup.procs"), std::process::id().to_string())
            .expect("leaving the cgroup");
    }

    /// The processes in the cgroup now.
    pub fn processes(&self) -> Vec<u32> {
        std::fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Our clients have exited by now; a cgroup with processes cannot be removed, so wait
        // (bounded) for the last ones to be reaped.
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::remove_dir(&self.path).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
