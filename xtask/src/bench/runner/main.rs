//! The benchmark runner behind `cargo xtask bench`: per-packet cost of the kernel programs
//! (section 1), end to end against kube-proxy's layouts and the direct path (section 2), and
//! the control plane (section 3). Writes REPORT.md and PNG charts into `--out`.
//!
//! Needs root (BPF, network namespaces). Everything it creates (namespaces, pins, rules, the
//! agent, temporary manifests) sits behind a guard that removes it, on error and panic too.
mod charts;
mod cluster;
mod control_plane;
mod datapath;
mod e2e;
mod kubeproxy;
mod load;
mod report;
mod stats;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use clap::Parser;

#[derive(Parser)]
struct Cli {
    /// Where REPORT.md and the charts go.
    #[arg(long)]
    out: PathBuf,
    /// The `twinstack` binary the end-to-end runs start.
    #[arg(long)]
    twinstack_bin: PathBuf,
    #[arg(long)]
    quick: bool,
    #[arg(long)]
    smoke: bool,
}

/// A section a narrowed run may be limited to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Datapath,
    EndToEnd,
}

/// How much of everything to run.
pub struct Plan {
    pub profile: &'static str,
    pub datapath_sizes: Vec<usize>,
    pub datapath_reps: usize,
    pub datapath_runs: usize,
    pub miss_repeat: u32,
    pub e2e_sizes: Vec<usize>,
    pub e2e_reps: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub client_threads: usize,
    pub server_workers: usize,
    pub load_services: usize,
    pub load_reps: usize,
    /// The sections to run when not all three (`TWINSTACK_BENCH_SECTIONS`): their tables go
    /// to stderr and no report is written.
    pub only: Option<Vec<Section>>,
}

impl Plan {
    fn new(quick: bool, smoke: bool) -> Self {
        let full = Self {
            profile: "full",
            datapath_sizes: vec![1, 1_000, 10_000, 100_000],
            datapath_reps: 7,
            datapath_runs: 2_000,
            miss_repeat: 100_000,
            e2e_sizes: vec![1, 1_000, 10_000],
            e2e_reps: 5,
            // Every run of a mode comes with a direct run beside it (`e2e`): 1 s each.
            duration: Duration::from_millis(1_000),
            warmup: Duration::from_millis(500),
            client_threads: 4,
            server_workers: 2,
            load_services: 10_000,
            load_reps: 3,
            only: None,
        };
        if smoke {
            Self {
                profile: "smoke",
                datapath_sizes: vec![1, 100],
                datapath_reps: 2,
                datapath_runs: 100,
                miss_repeat: 1_000,
                e2e_sizes: vec![10],
                e2e_reps: 1,
                duration: Duration::from_millis(300),
                warmup: Duration::from_millis(100),
                load_services: 100,
                load_reps: 1,
                ..full
            }
        } else if quick {
            Self {
                profile: "quick",
                datapath_reps: 5,
                datapath_runs: 1_000,
                miss_repeat: 50_000,
                // nft 1.0.6 takes minutes to load 10,000 Services (section 3 of a full run):
                // the quick run stops at 1,000.
                e2e_sizes: vec![1, 1_000],
                e2e_reps: 3,
                duration: Duration::from_secs(1),
                warmup: Duration::from_millis(300),
                load_services: 1_000,
                load_reps: 3,
                ..full
            }
        } else {
            full
        }
    }

    /// A plan narrowed for a look at one part (the figures of a narrowed run are not a report
    /// to keep): `TWINSTACK_BENCH_SIZES=10000` measures the end-to-end section at those sizes
    /// only (and `TWINSTACK_BENCH_MODES=twinstack-bypassed,twinstack-socket` those modes only, in
    /// `e2e`; the direct runs always come along); `TWINSTACK_BENCH_SECTIONS=datapath,e2e`
    /// runs those sections alone and prints their tables instead of writing a report.
    fn narrowed(mut self) -> anyhow::Result<Self> {
        if let Ok(sizes) = std::env::var("TWINSTACK_BENCH_SIZES") {
            self.e2e_sizes = sizes
                .split(',')
                .map(|s| s.trim().parse::<usize>())
                .collect::<Result<_, _>>()
                .with_context(|| {
                    format!("TWINSTACK_BENCH_SIZES={sizes}: expected sizes such as 1,10000")
                })?;
        }
        if let Ok(sections) = std::env::var("TWINSTACK_BENCH_SECTIONS") {
            let only = sections
                .split(',')
                .map(|s| match s.trim() {
                    "datapath" => Ok(Section::Datapath),
                    "e2e" => Ok(Section::EndToEnd),
                    other => Err(anyhow::anyhow!(
                        "TWINSTACK_BENCH_SECTIONS={sections}: `{other}` is no section; expected \
                         a list of `datapath` (1) and `e2e` (2)"
                    )),
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            self.only = Some(only);
        }
        Ok(self)
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    twinstack_lab::require_root();
    // SAFETY: set before any thread starts; the lab reads it to start the agent.
    unsafe { std::env::set_var("TWINSTACK_BIN", &cli.twinstack_bin) };
    let plan = Plan::new(cli.quick, cli.smoke).narrowed()?;
    let started = Instant::now();
    std::fs::create_dir_all(&cli.out).with_context(|| format!("creating {}", cli.out.display()))?;
    charts::register_font()?;

    if let Some(only) = &plan.only {
        // A look at some sections: their tables on stderr, no report written.
        let mut tables = String::new();
        if only.contains(&Section::Datapath) {
            eprintln!("== 1. per-packet cost (BPF_PROG_TEST_RUN)");
            report::section1(&mut tables, &datapath::run(&plan)?);
        }
        if only.contains(&Section::EndToEnd) {
            eprintln!("== 2. end to end in network namespaces");
            report::section2(&mut tables, &plan, &e2e::run(&plan)?);
        }
        eprintln!("{tables}\n== done in {:.0?}", started.elapsed());
        return Ok(());
    }
    eprintln!("== 1. per-packet cost (BPF_PROG_TEST_RUN)");
    let datapath = datapath::run(&plan)?;
    eprintln!("   ({:.0?} so far)", started.elapsed());
    eprintln!("== 2. end to end in network namespaces");
    let e2e = e2e::run(&plan)?;
    eprintln!("   ({:.0?} so far)", started.elapsed());
    eprintln!("== 3. control plane: kube-proxy load times");
    let loads =
        control_plane::kube_proxy_load_times(plan.load_services, plan.load_reps, &e2e.loads)?;
    let twinstack = control_plane::twinstack_figures(&plan);

    charts::per_packet(&datapath, &cli.out.join("per-packet.png"))?;
    charts::rates(
        &e2e,
        load::Test::NewConnections,
        &cli.out.join("new-connections.png"),
    )?;
    charts::rates(
        &e2e,
        load::Test::RequestResponse,
        &cli.out.join("request-response.png"),
    )?;
    let report = report::write(
        &plan,
        &datapath,
        &e2e,
        &loads,
        twinstack.as_ref(),
        started.elapsed(),
    );
    let path = cli.out.join("REPORT.md");
    std::fs::write(&path, report).with_context(|| format!("writing {}", path.display()))?;
    eprintln!(
        "== done in {:.0?}: {}",
        started.elapsed(),
        cli.out.display()
    );
    Ok(())
}
