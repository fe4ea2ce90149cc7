//! `twinstack run`.
use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::{ArgAction, Args};
use proxy_common::conntrack::Timeouts;

use crate::{
    agent::{self, AgentConfig, ConntrackConfig, Masquerade, SocketLb, SourceConfig},
    config::{self, ClusterCidrs, InterfacePatterns, NodePortAddresses, XdpMode},
};

pub(super) fn duration(value: &str) -> Result<Duration, String> {
    if value == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(value).map_err(|e| format!("{e}; expected e.g. 1s, 500ms, 0"))
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Directory of Service, EndpointSlice and Node manifests (YAML or JSON), watched,
    /// instead of the API server.
    #[arg(long, value_name = "DIR", conflicts_with = "kubeconfig")]
    manifests: Option<PathBuf>,
    /// Kubeconfig of the API server to watch (default: the in-cluster service account).
    #[arg(long, value_name = "PATH")]
    kubeconfig: Option<PathBuf>,
    /// This node's name (default: $NODE_NAME, then the hostname).
    #[arg(
        long,
        alias = "hostname-override",
        env = "NODE_NAME",
        value_name = "NAME"
    )]
    node_name: Option<String>,
    /// Pod CIDRs: one, or one IPv4 and one IPv6 (dual stack), e.g. 10.244.0.0/16,fd00:10:244::/56.
    #[arg(long, value_name = "CIDR[,CIDR]")]
    cluster_cidr: ClusterCidrs,
    /// Pod-facing interfaces, as glob patterns, e.g. veth*,lxc*.
    #[arg(long, value_name = "GLOB[,GLOB]")]
    pod_interfaces: InterfacePatterns,
    /// The node's external interfaces, as glob patterns, e.g. eth*,bond0: NodePorts, external
    /// and load balancer IPs are served to clients beyond them (default: the interfaces that
    /// hold the Node's addresses).
    #[arg(long, value_name = "GLOB[,GLOB]")]
    devices: Option<InterfacePatterns>,
    /// Which node addresses serve NodePorts: CIDRs (the node's addresses inside them), or
    /// `primary` (the Node's primary address of each family); default: every address of
    /// --devices.
    #[arg(long, value_name = "CIDR[,CIDR]|primary")]
    nodeport_addresses: Option<NodePortAddresses>,
    /// The XDP fast path on the devices: in the driver (falling back to TC only, with a log
    /// line, where the driver has no XDP), the kernel's generic hook, or off.
    #[arg(long, value_name = "MODE", value_enum, default_value_t = XdpMode::Native)]
    xdp: XdpMode,
    /// Where maps and links are pinned (on a bpffs).
    #[arg(long, value_name = "DIR", default_value = super::DEFAULT_BPF_ROOT)]
    bpf_root: PathBuf,
    /// Address of the /healthz and /livez server (0.0.0.0: both families). Unhealthy once a
    /// change waits more than twice --sync-period to be programmed, as kube-proxy's.
    #[arg(long, value_name = "ADDR:PORT", default_value = "0.0.0.0:10256")]
    healthz_bind_address: SocketAddr,
    /// Address of the /metrics server (Prometheus).
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:10249")]
    metrics_bind_address: SocketAddr,
    /// Shortest time between two syncs of changes (0: sync at once).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = duration)]
    min_sync_period: Duration,
    /// Period of the full pass that programs what is pending and repairs drift between the
    /// maps and the model; twice it is the health timeout.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = duration)]
    sync_period: Duration,
    /// Socket-level load balancing: connections (and unconnected UDP datagrams) of processes
    /// under --cgroup-root go straight to a backend, translated once at connect() instead of
    /// per packet; the node's own processes reach Services through it.
    #[arg(long, value_name = "true|false", default_value_t = true, action = ArgAction::Set)]
    socket_lb: bool,
    /// The cgroup v2 directory whose processes socket-level load balancing serves (default: the
    /// cgroup v2 root, found in /proc/mounts: every process of the node).
    #[arg(long, value_name = "PATH")]
    cgroup_root: Option<PathBuf>,
    /// Socket-level load balancing for the node's own network namespace only (hostNetwork
    /// pods, node agents); pods go through the TC path (for a sidecar proxy or a sandboxed
    /// runtime in them).
    #[arg(long)]
    socket_lb_hostns_only: bool,
    /// Idle timeout of an established TCP flow (kube-proxy's default).
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = duration)]
    conntrack_tcp_timeout_established: Duration,
    /// Idle timeout of a TCP flow one side has closed (FIN), as kube-proxy's CLOSE_WAIT.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = duration)]
    conntrack_tcp_timeout_close_wait: Duration,
    /// Idle timeout of a TCP flow the backend has not answered yet.
    #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = duration)]
    conntrack_tcp_timeout_syn_sent: Duration,
    /// Idle timeout of a UDP flow without replies.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = duration)]
    conntrack_udp_timeout: Duration,
    /// Idle timeout of a UDP flow with replies.
    #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = duration)]
    conntrack_udp_timeout_stream: Duration,
    /// How often expired conntrack entries are deleted.
    #[arg(long, value_name = "DURATION", default_value = "1m", value_parser = duration)]
    conntrack_gc_interval: Duration,
    /// SNAT every flow through a Service to the node, not only hairpins and clients outside
    /// --cluster-cidr (kube-proxy's --masquerade-all).
    #[arg(long)]
    masquerade_all: bool,
    /// Also export each Service's traffic on /metrics (connections, packets and bytes per
    /// frontend, labelled by namespace, service, family and frontend): one series set per
    /// frontend, so off by default (cardinality).
    #[arg(long)]
    service_metrics: bool,
    /// Source ports of masqueraded flows. Keep them out of the node's ephemeral range
    /// (net.ipv4.ip_local_port_range, 32768-60999 by default) and of the cluster's NodePort
    /// range (--service-node-port-range, 30000-32767 by default).
    #[arg(long, value_name = "MIN-MAX", default_value = "1024-29999", value_parser = port_range)]
    masquerade_ports: (u16, u16),
}

fn port_range(value: &str) -> Result<(u16, u16), String> {
    let expected = "expected MIN-MAX with 1 <= MIN <= MAX <= 65535, e.g. 1024-29999";
    let (min, max) = value.split_once('-').ok_or(expected)?;
    let (min, max): (u16, u16) = match (min.trim().parse(), max.trim().parse()) {
        (Ok(min), Ok(max)) => (min, max),
        _ => return Err(expected.to_owned()),
    };
    if min == 0 || min > max {
        return Err(expected.to_owned());
    }
    Ok((min, max))
}

/// A conntrack timeout flag's value in whole seconds (rounded up), at least 1.
fn timeout_seconds(flag: &str, value: Duration) -> anyhow::Result<u32> {
    let seconds = value.as_secs() + u64::from(value.subsec_nanos() > 0);
    if seconds == 0 {
        anyhow::bail!("--{flag} must be at least 1s, e.g. 30s");
    }
    u32::try_from(seconds).map_err(|_| anyhow::anyhow!("--{flag} is too long: at most 136y"))
}

fn conntrack(args: &RunArgs) -> anyhow::Result<ConntrackConfig> {
    if args.conntrack_gc_interval.is_zero() {
        anyhow::bail!("--conntrack-gc-interval must be greater than 0, e.g. 1m");
    }
    let mut timeouts = Timeouts::DEFAULT;
    timeouts.established = timeout_seconds(
        "conntrack-tcp-timeout-established",
        args.conntrack_tcp_timeout_established,
    )?;
    timeouts.close_wait = timeout_seconds(
        "conntrack-tcp-timeout-close-wait",
        args.conntrack_tcp_timeout_close_wait,
    )?;
    timeouts.syn_sent = timeout_seconds(
        "conntrack-tcp-timeout-syn-sent",
        args.conntrack_tcp_timeout_syn_sent,
    )?;
    timeouts.udp = timeout_seconds("conntrack-udp-timeout", args.conntrack_udp_timeout)?;
    timeouts.udp_stream = timeout_seconds(
        "conntrack-udp-timeout-stream",
        args.conntrack_udp_timeout_stream,
    )?;
    Ok(ConntrackConfig {
        timeouts,
        gc_interval: args.conntrack_gc_interval,
    })
}

pub(super) fn hostname() -> anyhow::Result<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .context("--node-name not given, NODE_NAME unset, and the hostname unreadable")?;
    Ok(name.trim().to_owned())
}

pub(super) fn main(args: RunArgs) -> anyhow::Result<()> {
    if args.sync_period.is_zero() {
        anyhow::bail!("--sync-period must be greater than 0, e.g. 30s");
    }
    let conntrack = conntrack(&args)?;
    let node_name = match args.node_name {
        Some(n) if !n.is_empty() => n,
        _ => hostname()?,
    };
    let source = match args.manifests {
        Some(dir) => {
            if !dir.is_dir() {
                anyhow::bail!("--manifests {}: not a directory", dir.display());
            }
            SourceConfig::Manifests(dir)
        }
        None => {
            if let Some(path) = &args.kubeconfig
                && !path.is_file()
            {
                anyhow::bail!("--kubeconfig {}: no such file", path.display());
            }
            SourceConfig::Api {
                kubeconfig: args.kubeconfig,
            }
        }
    };
    let socket_lb = if args.socket_lb {
        Some(SocketLb {
            cgroup_root: config::cgroup_root(args.cgroup_root).map_err(anyhow::Error::msg)?,
            hostns_only: args.socket_lb_hostns_only,
        })
    } else {
        None
    };
    let config = AgentConfig {
        socket_lb,
        source,
        node_name,
        cluster_cidrs: args.cluster_cidr,
        pod_interfaces: args.pod_interfaces,
        devices: args.devices,
        nodeport_addresses: args.nodeport_addresses.unwrap_or_default(),
        xdp: args.xdp,
        bpf_root: args.bpf_root,
        healthz_bind_address: args.healthz_bind_address,
        metrics_bind_address: args.metrics_bind_address,
        min_sync_period: args.min_sync_period,
        sync_period: args.sync_period,
        conntrack,
        masquerade: Masquerade {
            all: args.masquerade_all,
            ports: args.masquerade_ports,
        },
        service_metrics: args.service_metrics,
    };
    // One thread: syncs are sequential anyway, and one allocator arena keeps the agent small.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(agent::run(config))
}
