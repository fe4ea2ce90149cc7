//! `twinstack bpf service|ct|map|link|sock list`.
use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

use crate::{debug, maps::pins::PinLayout};

#[derive(Debug, Args)]
pub struct BpfArgs {
    #[command(subcommand)]
    command: BpfCommand,
}

#[derive(Debug, Subcommand)]
enum BpfCommand {
    /// Services (frontends and their backends).
    Service {
        #[command(subcommand)]
        command: ListCommand,
    },
    /// Connection tracking entries.
    Ct {
        #[command(subcommand)]
        command: ListCommand,
    },
    /// The maps themselves: shape, entries, kernel memory.
    Map {
        #[command(subcommand)]
        command: ListCommand,
    },
    /// The pinned links: which program is attached to which interface or cgroup.
    Link {
        #[command(subcommand)]
        command: ListCommand,
    },
    /// Sockets the socket hooks sent to a backend, and the frontend they are shown instead.
    Sock {
        #[command(subcommand)]
        command: ListCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ListCommand {
    List(ListArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Debug, Args)]
struct ListArgs {
    /// Output format.
    #[arg(short, long, value_enum, default_value = "table")]
    output: Output,
    /// Where the agent pinned its maps.
    #[arg(long, value_name = "DIR", default_value = super::DEFAULT_BPF_ROOT)]
    bpf_root: PathBuf,
}

pub(super) fn main(args: BpfArgs) -> anyhow::Result<()> {
    match args.command {
        BpfCommand::Service {
            command: ListCommand::List(list),
        } => {
            let rows = debug::services(&PinLayout::new(&list.bpf_root))?;
            match list.output {
                Output::Table => print!("{}", debug::services_table(&rows)),
                Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
            }
        }
        BpfCommand::Ct {
            command: ListCommand::List(list),
        } => {
            let rows = debug::conntrack(&PinLayout::new(&list.bpf_root))?;
            match list.output {
                Output::Table => print!("{}", debug::conntrack_table(&rows)),
                Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
            }
        }
        BpfCommand::Map {
            command: ListCommand::List(list),
        } => {
            let rows = debug::maps(&PinLayout::new(&list.bpf_root))?;
            match list.output {
                Output::Table => print!("{}", debug::maps_table(&rows)),
                Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
            }
        }
        BpfCommand::Link {
            command: ListCommand::List(list),
        } => {
            let rows = debug::links(&PinLayout::new(&list.bpf_root))?;
            match list.output {
                Output::Table => print!("{}", debug::links_table(&rows)),
                Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
            }
        }
        BpfCommand::Sock {
            command: ListCommand::List(list),
        } => {
            let rows = debug::sockets(&PinLayout::new(&list.bpf_root))?;
            match list.output {
                Output::Table => print!("{}", debug::sockets_table(&rows)),
                Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
            }
        }
    }
    Ok(())
}
