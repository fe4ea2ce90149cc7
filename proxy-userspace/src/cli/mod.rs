//! The `twinstack` command line. One file per subcommand; each only parses flags and calls the
//! library.
mod bpf;
mod cleanup;
mod run;

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
}

pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Run(args) => run::main(*args),
        Command::Cleanup(args) => cleanup::main(args),
        Command::Bpf(args) => bpf::main(args),
    }
}
