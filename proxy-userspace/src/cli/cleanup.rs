//! `twinstack cleanup`.
use std::path::PathBuf;

use clap::Args;

use crate::{loader, maps::pins::PinLayout};

#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// Where the agent pinned its maps and links.
    #[arg(long, value_name = "DIR", default_value = super::DEFAULT_BPF_ROOT)]
    bpf_root: PathBuf,
}

pub(super) fn main(args: CleanupArgs) -> anyhow::Result<()> {
    let removed = loader::cleanup(&PinLayout::new(&args.bpf_root))?;
    println!(
        "removed {} pins under {}",
        removed.len(),
        args.bpf_root.display()
    );
    Ok(())
}
