//! `cargo xtask bench`: sets up, builds the agent and the benchmark runner, and runs it. The
//! runner (`runner/`) is its own binary behind the `bench` feature because it links the agent
//! library and its kernel programs, which only build once `setup` has installed the toolchain.
use std::path::PathBuf;

use anyhow::bail;

use crate::{cargo, exec, root, setup};

pub(crate) fn run(quick: bool, smoke: bool) -> anyhow::Result<()> {
    setup::run()?;
    if !setup::is_root() {
        bail!("the bench loads BPF programs and builds network namespaces: run it as root");
    }
    // The smoke run (part of `cargo xtask test`) shares the test build; real numbers come from
    // release builds of both the agent and the load generator.
    let release = !smoke;
    let agent = crate::build(release)?;
    let out: PathBuf = if smoke {
        root().join("target/bench-smoke")
    } else {
        root().join("bench/results")
    };
    if smoke {
        // The runner is behind a feature the workspace's lint and test runs leave off.
        exec(cargo().args([
            "clippy",
            "--package",
            "xtask",
            "--features",
            "bench",
            "--all-targets",
            "--no-deps",
            "--",
            "-D",
            "warnings",
        ]))?;
        exec(cargo().args([
            "test",
            "--package",
            "xtask",
            "--features",
            "bench",
            "--bin",
            "bench-runner",
        ]))?;
    }
    let mut command = cargo();
    command.args([
        "run",
        "--quiet",
        "--package",
        "xtask",
        "--features",
        "bench",
    ]);
    command.args(["--bin", "bench-runner"]);
    if release {
        command.arg("--release");
    }
    command.arg("--").arg("--out").arg(&out);
    command.arg("--twinstack-bin").arg(&agent);
    if quick {
        command.arg("--quick");
    }
    if smoke {
        command.arg("--smoke");
    }
    exec(&mut command)?;
    println!("report: {}", out.join("REPORT.md").display());
    Ok(())
}
