//! `cargo xtask …`: the project's commands. Each one sets up what it needs first, and every
//! step is idempotent.
mod bench;
mod demo;
mod setup;
mod test;

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what a fresh machine lacks: nightly rust-src, bpf-linker 0.10.0, Debian
    /// packages, a bpffs mount.
    Setup,
    /// Build the agent (and its kernel programs).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Show dual stack working: a node, a client and two backends in network namespaces.
    Demo,
    /// Run every test: lint, unit, datapath (BPF_PROG_TEST_RUN) and integration (namespaces).
    Test,
    /// Benchmarks against kube-proxy's iptables and nftables layouts and the direct path;
    /// writes bench/results/REPORT.md and its charts.
    Bench {
        /// Fewer sizes, runs and seconds (under 5 minutes).
        #[arg(long)]
        quick: bool,
        /// A few seconds on one size, to check the bench still works (results go to target/).
        #[arg(long)]
        smoke: bool,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Task::Setup => setup::run(),
        Task::Build { release } => {
            setup::run()?;
            build(release).map(|path| println!("{}", path.display()))
        }
        Task::Demo => demo::run(),
        Task::Test => test::run(),
        Task::Bench { quick, smoke } => bench::run(quick, smoke),
    }
}

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}

pub fn cargo() -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.current_dir(root());
    command
}

/// Runs `command`, failing with its description if it fails.
pub fn exec(command: &mut Command) -> anyhow::Result<()> {
    let description = format!("{command:?}");
    eprintln!("+ {description}");
    let status = command
        .status()
        .with_context(|| format!("cannot start {description}"))?;
    if !status.success() {
        bail!("{description} failed: {status}");
    }
    Ok(())
}

/// Builds the `twinstack` binary and returns its path.
pub fn build(release: bool) -> anyhow::Result<PathBuf> {
    let mut command = cargo();
    command.args(["build", "--package", "proxy-userspace", "--bins"]);
    if release {
        command.arg("--release");
    }
    exec(&mut command)?;
    Ok(root()
        .join("target")
        .join(if release { "release" } else { "debug" })
        .join("twinstack"))
}
