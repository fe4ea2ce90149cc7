//! `twinstack bpf service|ct|map|link|sock|counters list` and `twinstack bpf monitor`.
use std::{net::IpAddr, path::PathBuf};

use clap::{Args, Subcommand, ValueEnum};

use crate::{debug, family::Family, maps::pins::PinLayout};

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
        command: ServiceCommand,
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
    /// The datapath's outcome counters: what every TC, XDP and socket program did with its
    /// packets (or calls) since it was loaded, drops and errors by reason.
    Counters {
        #[command(subcommand)]
        command: CountersCommand,
    },
    /// Datapath events as they happen: new flows and their backend, packets to a frontend
    /// without backend, drops and their reason, reverse-NAT misses.
    Monitor(MonitorArgs),
}

#[derive(Debug, Args)]
struct MonitorArgs {
    /// Only events about this frontend: ADDRESS or ADDRESS:PORT ([ADDRESS]:PORT for IPv6).
    #[arg(long, value_name = "FRONTEND", value_parser = frontend)]
    service: Option<(IpAddr, Option<u16>)>,
    /// Only events with this address anywhere: client, frontend or backend.
    #[arg(long, value_name = "ADDRESS")]
    address: Option<IpAddr>,
    /// Only events of this family.
    #[arg(long, value_enum)]
    family: Option<FamilyArg>,
    /// Output format: a line per event, or a JSON object per line.
    #[arg(short, long, value_enum, default_value = "table")]
    output: Output,
    /// Stop after this many events.
    #[arg(long, value_name = "N")]
    count: Option<usize>,
    /// Stop after this long, e.g. 30s.
    #[arg(long, value_name = "DURATION", value_parser = super::run::duration)]
    duration: Option<std::time::Duration>,
    /// Where the agent pinned its maps.
    #[arg(long, value_name = "DIR", default_value = super::DEFAULT_BPF_ROOT)]
    bpf_root: PathBuf,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum FamilyArg {
    Ipv4,
    Ipv6,
}

fn frontend(value: &str) -> Result<(IpAddr, Option<u16>), String> {
    if let Ok(address) = value.parse::<IpAddr>() {
        return Ok((address, None));
    }
    value
        .parse::<std::net::SocketAddr>()
        .map(|s| (s.ip(), Some(s.port())))
        .map_err(|_| "expected ADDRESS or ADDRESS:PORT, e.g. 10.96.0.10:80 or [fd00::10]:80".into())
}

#[derive(Debug, Subcommand)]
enum ListCommand {
    List(ListArgs),
}

#[derive(Debug, Subcommand)]
enum CountersCommand {
    List {
        #[command(flatten)]
        list: ListArgs,
        /// The counters that are still zero too (the table leaves them out; JSON has all).
        #[arg(long)]
        all: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ServiceCommand {
    List {
        #[command(flatten)]
        list: ListArgs,
        /// With each frontend's and backend's traffic: connections, packets and bytes to the
        /// backends and back (the datapath's per-CPU counters, summed).
        #[arg(long)]
        stats: bool,
    },
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
            command: ServiceCommand::List { list, stats },
        } => {
            let pins = PinLayout::new(&list.bpf_root);
            let mut rows = debug::services(&pins)?;
            if stats {
                debug::with_traffic(&mut rows, &pins)?;
            }
            match list.output {
                Output::Table if stats => print!("{}", debug::services_stats_table(&rows)),
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
        BpfCommand::Monitor(args) => {
            let filter = debug::monitor::Filter {
                frontend: args.service,
                address: args.address,
                family: args.family.map(|f| match f {
                    FamilyArg::Ipv4 => Family::V4,
                    FamilyArg::Ipv6 => Family::V6,
                }),
            };
            let limits = debug::monitor::Limits {
                count: args.count,
                duration: args.duration,
            };
            debug::monitor::monitor(
                &PinLayout::new(&args.bpf_root),
                &filter,
                matches!(args.output, Output::Json),
                limits,
                &mut std::io::stdout().lock(),
            )?;
        }
        BpfCommand::Counters {
            command: CountersCommand::List { list, all },
        } => {
            let rows = debug::counters(&PinLayout::new(&list.bpf_root))?;
            match list.output {
                Output::Table => print!("{}", debug::counters_table(&rows, all)),
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
