//! `cargo xtask setup`: make a fresh machine ready. Checks first, installs only what is missing.
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::exec;

const BPF_LINKER_VERSION: &str = "0.10.0";
/// Commands the tests, demo and benchmarks use, and the Debian package providing each.
const PACKAGES: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("sysctl", "procps"),
    ("mount", "mount"),
    ("iptables-restore", "iptables"),
    ("ip6tables-restore", "iptables"),
    ("nft", "nftables"),
    // The bench charts' font (`command -v` accepts a path: it checks the file is there).
    (
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "fonts-dejavu-core",
    ),
];

fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

fn output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

pub(crate) fn run() -> anyhow::Result<()> {
    nightly()?;
    bpf_linker()?;
    packages()?;
    bpffs()?;
    Ok(())
}

fn nightly() -> anyhow::Result<()> {
    let installed = output(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    );
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    exec(Command::new("rustup").args([
        "toolchain",
        "install",
        "nightly",
        "--profile",
        "minimal",
        "--component",
        "rust-src",
    ]))
    .context("installing the nightly toolchain with rust-src (for the eBPF build)")
}

fn bpf_linker() -> anyhow::Result<()> {
    if output("bpf-linker", &["--version"]).contains(BPF_LINKER_VERSION) {
        return Ok(());
    }
    exec(crate::cargo().args([
        "install",
        "bpf-linker",
        "--version",
        BPF_LINKER_VERSION,
        "--locked",
        "--force",
    ]))
    .context("installing bpf-linker (0.11+ needs LLVM 23, which rustc here does not ship)")
}

pub(crate) fn is_root() -> bool {
    output("id", &["-u"]).trim() == "0"
}

fn packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(program, _)| !succeeds("sh", &["-c", &format!("command -v {program}")]))
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!("missing Debian packages {missing:?}; run `cargo xtask setup` as root");
    }
    exec(Command::new("apt-get").arg("update").arg("-q"))?;
    exec(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn bpffs() -> anyhow::Result<()> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.contains(" bpf "))
    {
        return Ok(());
    }
    if !is_root() {
        eprintln!("note: /sys/fs/bpf is not a bpffs; as root, setup mounts one");
        return Ok(());
    }
    exec(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}
