//! `twinstack validate`.
use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use k8s_openapi::api::{core::v1::Node, core::v1::Service, discovery::v1::EndpointSlice};
use kube::{Api, api::ListParams};

use crate::{
    config::ClusterCidrs,
    maps::pins::PinLayout,
    source::{Snapshot, kube as kube_source, manifests},
    validate::{self, Inputs},
};

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Directory of Service, EndpointSlice and Node manifests, instead of the API server.
    #[arg(long, value_name = "DIR", conflicts_with = "kubeconfig")]
    manifests: Option<PathBuf>,
    /// Kubeconfig of the API server (default: the in-cluster service account).
    #[arg(long, value_name = "PATH")]
    kubeconfig: Option<PathBuf>,
    /// This node's name (default: $NODE_NAME, then the hostname).
    #[arg(long, env = "NODE_NAME", value_name = "NAME")]
    node_name: Option<String>,
    /// The agent's --cluster-cidr, e.g. 10.244.0.0/16,fd00:10:244::/56.
    #[arg(long, value_name = "CIDR[,CIDR]")]
    cluster_cidr: ClusterCidrs,
    /// Where the agent pinned its maps.
    #[arg(long, value_name = "DIR", default_value = super::DEFAULT_BPF_ROOT)]
    bpf_root: PathBuf,
    /// How long a connection to a cluster IP may take before it counts as unanswered.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = super::run::duration)]
    connect_timeout: Duration,
    /// Check the API and the maps only: no connection to the cluster IPs.
    #[arg(long)]
    no_connect: bool,
    /// Output format.
    #[arg(short, long, value_enum, default_value = "table")]
    output: Output,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

/// What the API server lists: Services and EndpointSlices (with the agent's selector: other
/// proxies' and headless ones left out) and this node's Node.
async fn from_api(kubeconfig: Option<&std::path::Path>, node: &str) -> anyhow::Result<Snapshot> {
    let client = kube_source::client(kubeconfig).await?;
    let selector = ListParams::default().labels(&kube_source::label_selector());
    let services = Api::<Service>::all(client.clone())
        .list(&selector)
        .await
        .context("listing Services")?;
    let slices = Api::<EndpointSlice>::all(client.clone())
        .list(&selector)
        .await
        .context("listing EndpointSlices")?;
    let nodes = Api::<Node>::all(client)
        .get_opt(node)
        .await
        .with_context(|| format!("getting Node {node}"))?;
    Ok(Snapshot {
        services: services.items,
        slices: slices.items,
        nodes: nodes.into_iter().collect(),
        errors: Vec::new(),
    })
}

pub(super) fn main(args: ValidateArgs) -> anyhow::Result<ExitCode> {
    let node_name = match args.node_name {
        Some(n) if !n.is_empty() => n,
        _ => super::run::hostname()?,
    };
    let snapshot = match &args.manifests {
        Some(dir) => manifests::read_dir(dir)
            .with_context(|| format!("--manifests {}: cannot read", dir.display()))?,
        None => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(from_api(args.kubeconfig.as_deref(), &node_name))?,
    };
    let pins = PinLayout::new(&args.bpf_root);
    let report = validate::validate(Inputs {
        snapshot,
        node_name: &node_name,
        cluster_cidr: &args.cluster_cidr,
        pins: &pins,
        connect_timeout: (!args.no_connect).then_some(args.connect_timeout),
    });
    match args.output {
        Output::Table => print!("{}", report.table()),
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    Ok(if report.problems == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
