//! `cargo xtask test`: every check CI runs. Lint, then unit tests, then the privileged
//! datapath and integration tests (which fail loudly without root; they never skip).
use anyhow::bail;

use crate::{cargo, exec, setup};

pub(crate) fn run_lints() -> anyhow::Result<()> {
    exec(cargo().args(["fmt", "--all", "--", "--check"]))?;
    exec(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    // The kernel programs, for their own target.
    exec(
        std::process::Command::new("rustup")
            .current_dir(crate::root().join("proxy-ebpf"))
            .args([
                "run",
                "nightly",
                "cargo",
                "clippy",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--bins",
                "--",
                "-D",
                "warnings",
            ]),
    )
}

pub(crate) fn run() -> anyhow::Result<()> {
    setup::run()?;
    if !setup::is_root() {
        bail!("the test suite includes BPF and network-namespace tests: run it as root");
    }
    let binary = crate::build(false)?;
    run_lints()?;
    // The default members: every crate but the kernel programs, which only build for BPF.
    // Namespaces and pins are global: privileged tests run one at a time.
    exec(
        cargo()
            .args(["test", "--no-fail-fast", "--", "--test-threads=1"])
            .env("TWINSTACK_BIN", &binary),
    )?;
    // The benchmark is not part of the suite, but a few seconds of it is, so it cannot rot.
    crate::bench::run(false, true)
}
