//! Network namespaces we create and remove. Code runs inside one in a thread that joined it
//! (setns is per thread), and processes start inside one without changing their mount
//! namespace, so they still see /sys/fs/bpf (which `ip netns exec` would hide).
use std::{
    fs::File,
    os::{fd::AsRawFd, unix::process::CommandExt},
    process::Command,
};

use crate::run;

pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace with its loopback up.
    pub fn create(name: &str) -> Self {
        run(&["ip", "netns", "add", name]);
        let ns = Self {
            name: name.to_owned(),
        };
        ns.ip(&["link", "set", "lo", "up"]);
        // No duplicate address detection: addresses (link-local ones too) are usable at once,
        // instead of ~1 s after the interface comes up.
        for scope in ["all", "default"] {
            ns.sysctl(&format!("net.ipv6.conf.{scope}.accept_dad"), "0");
        }
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// `ip -n <ns> ARGS…`
    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "-n", &self.name];
        full.extend_from_slice(args);
        run(&full)
    }

    pub fn sysctl(&self, key: &str, value: &str) {
        let setting = format!("{key}={value}");
        run(&["ip", "netns", "exec", &self.name, "sysctl", "-qw", &setting]);
    }

    /// Runs `f` on a thread that has joined this namespace, and returns its result.
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = self.path();
        std::thread::spawn(move || {
            join(&path);
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }

    /// Spawns a thread that lives in this namespace.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = self.path();
        std::thread::spawn(move || {
            join(&path);
            f()
        })
    }

    /// Makes `command` start inside this namespace (network namespace only).
    pub fn command(&self, command: &mut Command) {
        let file = File::open(self.path()).expect("opening the netns");
        // SAFETY: setns is async-signal-safe; `file` outlives the spawn (moved in).
        unsafe {
            command.pre_exec(move || {
                if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

/// Moves the calling thread into the namespace at `path`.
pub fn join(path: &str) {
    let file = File::open(path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
    // SAFETY: a valid fd and flag.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace removes its veths too.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
