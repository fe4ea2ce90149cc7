//! `twinstack top`.
use std::{path::PathBuf, time::Duration};

use clap::{Args, ValueEnum};

use crate::{
    debug::top::{self, Options, SortBy},
    maps::pins::PinLayout,
};

#[derive(Debug, Args)]
pub struct TopArgs {
    /// How often the counters are sampled.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = super::run::duration)]
    interval: Duration,
    /// What the frontends are sorted by, the busiest first.
    #[arg(long, value_enum, default_value = "connections")]
    sort: Sort,
    /// A table per interval, or a JSON object per interval.
    #[arg(short, long, value_enum, default_value = "table")]
    output: Output,
    /// Stop after this many intervals (default: until interrupted).
    #[arg(long, value_name = "N")]
    count: Option<usize>,
    /// Rows of the table.
    #[arg(long, value_name = "N", default_value = "20")]
    limit: usize,
    /// Where the agent pinned its maps.
    #[arg(long, value_name = "DIR", default_value = super::DEFAULT_BPF_ROOT)]
    bpf_root: PathBuf,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Sort {
    Connections,
    Packets,
    Bytes,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

pub(super) fn main(args: TopArgs) -> anyhow::Result<()> {
    if args.interval.is_zero() {
        anyhow::bail!("--interval must be greater than 0, e.g. 1s");
    }
    let options = Options {
        interval: args.interval,
        sort: match args.sort {
            Sort::Connections => SortBy::Connections,
            Sort::Packets => SortBy::Packets,
            Sort::Bytes => SortBy::Bytes,
        },
        json: matches!(args.output, Output::Json),
        count: args.count,
        limit: args.limit,
    };
    top::top(
        &PinLayout::new(&args.bpf_root),
        options,
        &mut std::io::stdout().lock(),
    )
}
