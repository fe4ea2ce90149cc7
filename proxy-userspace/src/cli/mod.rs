//! The `twinstack` command line. One file per subcommand; each only parses flags and calls the
//! library.
mod bpf;
mod cleanup;
mod run;
mod top;
mod validate;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub const DEFAULT_BPF_ROOT: &str = "/sys/fs/bpf/twinstack";

#[derive(Debug, Parser)]
#[command(
    name = "twinstack",
    version,
    about = "A dual-stack eBPF kube-proxy replacement"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: watch Services and EndpointSlices and program the datapath.
    Run(Box<run::RunArgs>),
    /// Detach the programs and remove every pin under --bpf-root.
    Cleanup(cleanup::CleanupArgs),
    /// Inspect the pinned maps (works without the agent running).
    Bpf(bpf::BpfArgs),
    /// The busiest frontends, refreshed: connections, packets and bytes per second each way.
    Top(top::TopArgs),
    /// Check that dual stack works on this node: the Node, --cluster-cidr, each Service's
    /// cluster IPs and endpoints per family, the maps, and a connection to each cluster IP.
    /// Exits non-zero on any problem.
    Validate(Box<validate::ValidateArgs>),
}

/// Runs the command; `Ok` with the exit status it chose (`validate` fails on a problem found).
pub fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Run(args) => run::main(*args).map(|()| ExitCode::SUCCESS),
        Command::Cleanup(args) => cleanup::main(args).map(|()| ExitCode::SUCCESS),
        Command::Bpf(args) => bpf::main(args).map(|()| ExitCode::SUCCESS),
        Command::Top(args) => top::main(args).map(|()| ExitCode::SUCCESS),
        Command::Validate(args) => validate::main(*args),
    }
}
