//! `twinstack run`: the agent. It loads the programs, opens the pinned maps behind the
//! dispatcher, and runs the loop: source events go into the [`Syncer`], which says when its
//! batched changes are due (a partial sync: the changed Services); a periodic full pass
//! (`sync_period`) programs whatever is pending, re-reads the kernel maps and repairs any
//! drift; interfaces are watched for new pods. Each sync is timed and reported to the health
//! server and the metrics as kube-proxy's are (the first sync and the periodic passes are the
//! full ones).
use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use ipnet::IpNet;
use proxy_common::config::DatapathConfig;
use tokio::sync::mpsc;

use crate::{
    config::{ClusterCidrs, InterfacePatterns, NodePortAddresses, XdpMode},
    devices,
    health::{self, Health},
    loader::{LoadOptions, Programs},
    maps::{codec::KernelFamily, kernel, pins::PinLayout},
    metrics::{AgentFigures, ConntrackFigures, SyncHistograms},
    node::NodeInfo,
    proxier::{ClusterWatch, MetaProxier},
    source::{self, SourceEvent},
    sync::Syncer,
};

/// At most this many queued source events are taken in just before a sync.
const MAX_EVENTS_BEFORE_SYNC: usize = 10_000;

/// How often pod interfaces are looked for.
const INTERFACE_POLL: Duration = Duration::from_millis(250);

#[derive(Clone, Debug)]
pub enum SourceConfig {
    /// `--manifests DIR`.
    Manifests(PathBuf),
    /// The API server, through `--kubeconfig` or the in-cluster service account.
    Api { kubeconfig: Option<PathBuf> },
}

/// Socket-level load balancing, when on.
#[derive(Clone, Debug)]
pub struct SocketLb {
    /// The cgroup v2 directory whose processes are served.
    pub cgroup_root: PathBuf,
    /// Only sockets of the agent's (the node's) network namespace.
    pub hostns_only: bool,
}

#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub source: SourceConfig,
    /// `None`: `--socket-lb false`.
    pub socket_lb: Option<SocketLb>,
    pub node_name: String,
    pub cluster_cidrs: ClusterCidrs,
    pub pod_interfaces: InterfacePatterns,
    /// `--devices` (`None`: the interfaces holding the Node's addresses).
    pub devices: Option<InterfacePatterns>,
    pub nodeport_addresses: NodePortAddresses,
    pub xdp: XdpMode,
    pub bpf_root: PathBuf,
    pub healthz_bind_address: SocketAddr,
    pub metrics_bind_address: SocketAddr,
    pub min_sync_period: Duration,
    pub sync_period: Duration,
    pub conntrack: ConntrackConfig,
    pub masquerade: Masquerade,
    /// `--service-metrics`: traffic series per Service on /metrics.
    pub service_metrics: bool,
}

/// Which flows are SNATed to the node, and the source ports they get.
#[derive(Clone, Copy, Debug)]
pub struct Masquerade {
    /// `--masquerade-all`.
    pub all: bool,
    /// `--masquerade-ports`, inclusive.
    pub ports: (u16, u16),
}

impl Default for Masquerade {
    fn default() -> Self {
        Self {
            all: false,
            ports: proxy_common::config::DEFAULT_SNAT_PORTS,
        }
    }
}

/// Conntrack lifetimes and how often expired entries are collected.
#[derive(Clone, Copy, Debug)]
pub struct ConntrackConfig {
    pub timeouts: proxy_common::conntrack::Timeouts,
    pub gc_interval: Duration,
}

/// Opens the dispatcher over the pinned maps of both families, restoring what they hold.
pub fn open_meta_proxier(pins: &PinLayout, config: &AgentConfig) -> anyhow::Result<MetaProxier> {
    let mut meta = MetaProxier::new(
        kernel::open(pins)?,
        kernel::open(pins)?,
        &config.node_name,
        config.cluster_cidrs.families(),
    )?;
    fn watch<A: KernelFamily>(
        pins: &PinLayout,
        network: Option<IpNet>,
    ) -> anyhow::Result<Option<ClusterWatch>> {
        let Some(network) = network else {
            return Ok(None);
        };
        let mut flag = kernel::ClusterClear::open::<A>(pins)?;
        Ok(Some(ClusterWatch::new(
            network,
            Box::new(move |clear| flag.write(clear)),
        )))
    }
    let errors = meta.watch_cluster(
        watch::<std::net::Ipv4Addr>(pins, config.cluster_cidrs.v4)?,
        watch::<std::net::Ipv6Addr>(pins, config.cluster_cidrs.v6)?,
    );
    if let Some(error) = errors.into_iter().next() {
        anyhow::bail!(
            "writing {}: {}",
            proxy_common::map_names::CLUSTER_CLEAR,
            error.error
        );
    }
    Ok(meta)
}

/// `SO_NETNS_COOKIE` of the network namespace the agent runs in: the node's.
fn own_netns_cookie() -> std::io::Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let mut cookie = 0u64;
    let mut length = size_of::<u64>() as libc::socklen_t;
    // SAFETY: a valid socket and an 8-byte buffer with its length.
    let rc = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut length,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cookie)
}

/// The devices (`--devices`) and NodePort addresses (`--nodeport-addresses`) now.
fn node_devices(config: &AgentConfig, node: &NodeInfo) -> (BTreeSet<String>, Vec<IpAddr>) {
    let interfaces = crate::loader::interfaces().unwrap_or_else(|error| {
        tracing::warn!(%error, "listing interfaces");
        Vec::new()
    });
    let addresses = devices::local_addresses().unwrap_or_else(|error| {
        tracing::warn!(%error, "listing the node's addresses");
        Vec::new()
    });
    let chosen = devices::devices(
        config.devices.as_ref(),
        &config.pod_interfaces,
        &interfaces,
        &addresses,
        node,
    );
    let nodeport =
        devices::nodeport_addresses(&config.nodeport_addresses, &chosen, &addresses, node);
    (chosen, nodeport)
}

/// The programs' load-time configuration, from the flags.
fn datapath_config(config: &AgentConfig) -> anyhow::Result<DatapathConfig> {
    let mut datapath = DatapathConfig {
        ct_timeouts: config.conntrack.timeouts,
        snat_port_min: config.masquerade.ports.0,
        snat_port_max: config.masquerade.ports.1,
        ..DatapathConfig::default()
    };
    if config.masquerade.all {
        datapath.flags |= proxy_common::config::flags::MASQUERADE_ALL;
    }
    warn_on_ephemeral_overlap(config.masquerade.ports);
    if let Some(socket_lb) = &config.socket_lb {
        // The socket hooks tell the node's own processes from pods by it.
        datapath.host_netns_cookie = own_netns_cookie()
            .context("socket-level LB: reading this network namespace's cookie")?;
        if socket_lb.hostns_only {
            datapath.flags |= proxy_common::config::flags::SOCKET_LB_HOSTNS_ONLY;
        }
    }
    for net in [config.cluster_cidrs.v4, config.cluster_cidrs.v6]
        .into_iter()
        .flatten()
    {
        match net {
            IpNet::V4(net) => {
                datapath.cluster_v4 = net.addr().octets();
                datapath.cluster_v4_prefix = net.prefix_len();
            }
            IpNet::V6(net) => {
                datapath.cluster_v6 = net.addr().octets();
                datapath.cluster_v6_prefix = net.prefix_len();
            }
        }
    }
    Ok(datapath)
}

/// Backends' replies to masqueraded flows are looked for only on the node addresses those
/// flows left from (`snat{4,6}_sources`), which the datapath records as it masquerades. A
/// datapath of an older layout recorded none: every local address is recorded at start, so the
/// replies of the flows it masqueraded keep coming back. (Any masquerade source is one of
/// them: the node's route picks it.) Logged, not fatal: new flows record their own.
fn remember_local_addresses(pins: &PinLayout) {
    use proxy_common::{
        map_names::{SNAT_MARKS, SNAT_SOURCES_V4, SNAT_SOURCES_V6},
        snat_marks,
    };
    let addresses = match devices::local_addresses() {
        Ok(addresses) => addresses,
        Err(e) => {
            tracing::warn!(%e, "cannot list the node's addresses for the masquerade sources");
            return;
        }
    };
    let result = (|| -> Result<(), anyhow::Error> {
        let mut v4 = kernel::open_hash::<[u8; 4], u8>(pins, SNAT_SOURCES_V4)?;
        let mut v6 = kernel::open_hash::<[u8; 16], u8>(pins, SNAT_SOURCES_V6)?;
        let mut marks = kernel::open_array::<u32>(pins, SNAT_MARKS)?;
        // Each address's mark first: the datapath looks for an entry only where one is.
        for local in addresses {
            match local.address {
                IpAddr::V4(a) => {
                    marks.set(snat_marks::slot(a.octets()), snat_marks::MARKED, 0)?;
                    v4.insert(a.octets(), 1, 0)?;
                }
                IpAddr::V6(a) => {
                    marks.set(snat_marks::slot(a.octets()), snat_marks::MARKED, 0)?;
                    v6.insert(a.octets(), 1, 0)?;
                }
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        tracing::warn!(e = %format!("{e:#}"), "cannot record the node's addresses as masquerade sources");
    }
}

/// Masqueraded flows take their source ports from `--masquerade-ports`; a range that overlaps
/// the node's ephemeral ports could meet a node connection's tuple. Said once, at start.
fn warn_on_ephemeral_overlap((min, max): (u16, u16)) {
    let Ok(text) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range") else {
        return;
    };
    let mut bounds = text
        .split_whitespace()
        .filter_map(|n| n.parse::<u16>().ok());
    if let (Some(low), Some(high)) = (bounds.next(), bounds.next())
        && min <= high
        && low <= max
    {
        tracing::warn!(
            masquerade_ports = %format!("{min}-{max}"),
            ephemeral = %format!("{low}-{high}"),
            "--masquerade-ports overlaps net.ipv4.ip_local_port_range: a masqueraded flow may \
             take a port the node's own connections use"
        );
    }
}

/// Closes the connected UDP sockets the socket hooks sent to a backend that has left its
/// frontend since the last call (`terminate`); without socket-level load balancing there are
/// none to close (the departures are dropped).
fn close_departed_udp(pins: &PinLayout, socket_lb: Option<&SocketLb>, syncer: &mut Syncer) {
    let departures = syncer.take_departures();
    let Some(socket_lb) = socket_lb else { return };
    if departures.is_empty() {
        return;
    }
    match crate::terminate::close_departed_udp(pins, &socket_lb.cgroup_root, &departures) {
        Ok(0) => {}
        Ok(closed) => tracing::info!(closed, "closed connected UDP sockets of departed backends"),
        Err(error) => tracing::warn!(%error, "closing connected UDP sockets of departed backends"),
    }
}

/// Seconds since the epoch, for the timestamp gauges.
fn epoch_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// When the maps were last synced successfully and a change last queued (the metrics').
#[derive(Clone, Copy, Debug, Default)]
struct Stamps {
    last_synced: Option<f64>,
    last_queued: Option<f64>,
}

/// Runs `change` on the syncer; when it queued something to program, the health server's
/// clock starts (if it is not running already) and the last-queued time moves.
fn queue(
    syncer: &mut Syncer,
    health: &Health,
    stamps: &mut Stamps,
    change: impl FnOnce(&mut Syncer),
) {
    let (counts, pending) = (syncer.change_counts(), syncer.has_changes());
    change(syncer);
    health.set_node_eligible(syncer.node_eligible());
    let counted = syncer.change_counts();
    let changed = counted.service_changes != counts.service_changes
        || counted.endpoint_changes != counts.endpoint_changes;
    if syncer.ready() && (changed || (!pending && syncer.has_changes())) {
        health.queued();
        stamps.last_queued = Some(epoch_seconds());
    }
}

/// After a sync (`full`: a full pass) that took `elapsed`: its duration and the
/// changes it programmed go to the metrics; a sync that wrote everything makes the agent
/// healthy (one that failed keeps the health clock running: it is retried at the next pass).
fn synced(
    syncer: &mut Syncer,
    health: &Health,
    histograms: &SyncHistograms,
    stamps: &mut Stamps,
    elapsed: Duration,
    succeeded: bool,
    full: bool,
) {
    histograms.observe_sync(elapsed, full);
    histograms.observe_programmed(&syncer.take_programmed_trigger_times());
    if succeeded {
        health.updated();
        stamps.last_synced = Some(epoch_seconds());
    } else {
        health.queued();
    }
}

/// Starts the configured source; its events arrive on the returned channel.
async fn start_source(config: &AgentConfig) -> anyhow::Result<mpsc::Receiver<SourceEvent>> {
    let (sender, receiver) = mpsc::channel(1024);
    match &config.source {
        SourceConfig::Manifests(dir) => {
            let dir = dir.clone();
            tokio::spawn(async move {
                if let Err(e) = source::manifests::watch(dir.clone(), sender).await {
                    tracing::error!(dir = %dir.display(), %e, "cannot watch the manifest directory");
                }
            });
        }
        SourceConfig::Api { kubeconfig } => {
            let client = source::kube::client(kubeconfig.as_deref()).await?;
            let node_name = config.node_name.clone();
            tokio::spawn(source::kube::watch(client, node_name, sender));
        }
    }
    Ok(receiver)
}

/// What the source has already sent goes into the coming sync: a manifest directory read (or a
/// relist) comes as one event per kind, and a Service must not be programmed between its list
/// and its slices' (bounded, so a flood of events cannot hold the sync back).
fn take_queued(
    events: &mut mpsc::Receiver<SourceEvent>,
    syncer: &mut Syncer,
    health: &Health,
    stamps: &mut Stamps,
) {
    for _ in 0..MAX_EVENTS_BEFORE_SYNC {
        match events.try_recv() {
            Ok(event) => queue(syncer, health, stamps, |s| s.handle(event)),
            Err(_) => break,
        }
    }
}

pub async fn run(config: AgentConfig) -> anyhow::Result<()> {
    let pins = PinLayout::new(&config.bpf_root);
    tracing::info!(
        node = %config.node_name,
        cluster_cidr = %config.cluster_cidrs,
        bpf_root = %config.bpf_root.display(),
        "starting"
    );
    let options = LoadOptions {
        config: datapath_config(&config)?,
        ..LoadOptions::default()
    };
    if let Some(mounted) = crate::loader::mount_bpffs_if_needed(&config.bpf_root)
        .with_context(|| format!("--bpf-root {}", config.bpf_root.display()))?
    {
        tracing::info!(
            at = %mounted.display(),
            "no BPF filesystem under --bpf-root: mounted one (its pins live as long as this mount namespace)"
        );
    }
    let mut programs = Programs::load(&pins, &options).context("loading the datapath")?;
    remember_local_addresses(&pins);
    let meta = open_meta_proxier(&pins, &config).context("opening the pinned maps")?;
    let mut syncer = Syncer::new(meta, &config.node_name, config.min_sync_period);

    // kube-proxy's health timeout: twice the sync period.
    let health = Health::new(2 * config.sync_period);
    let server = health::bind(config.healthz_bind_address, health.clone())
        .await
        .with_context(|| {
            format!(
                "--healthz-bind-address {}: cannot listen",
                config.healthz_bind_address
            )
        })?;
    tokio::spawn(async move {
        if let Err(e) = server.await {
            tracing::error!(%e, "health server stopped");
        }
    });

    let figures = std::sync::Arc::new(std::sync::Mutex::new(syncer.figures()));
    let histograms = SyncHistograms::default();
    let registry = crate::metrics::registry(&pins, figures.clone(), &histograms)
        .context("opening the datapath counters")?;
    let metrics = crate::metrics::bind(config.metrics_bind_address, registry)
        .await
        .with_context(|| {
            format!(
                "--metrics-bind-address {}: cannot listen",
                config.metrics_bind_address
            )
        })?;
    tokio::spawn(async move {
        if let Err(e) = metrics.await {
            tracing::error!(%e, "metrics server stopped");
        }
    });
    let mut conntrack_figures = ConntrackFigures::default();
    // As kube-proxy's: "queued" from the start.
    let mut stamps = Stamps {
        last_queued: Some(epoch_seconds()),
        ..Stamps::default()
    };
    let publish = |syncer: &Syncer, conntrack: ConntrackFigures, stamps: Stamps| {
        if let Ok(mut f) = figures.lock() {
            *f = AgentFigures {
                conntrack,
                last_synced: stamps.last_synced,
                last_queued: stamps.last_queued,
                frontend_services: config
                    .service_metrics
                    .then(|| std::sync::Arc::new(syncer.frontend_services())),
                ..syncer.figures()
            };
        }
    };

    let mut events = start_source(&config).await?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;

    // Nothing is programmed until the first full lists have arrived.
    let started = Instant::now();
    while !syncer.ready() {
        tokio::select! {
            event = events.recv() => match event {
                Some(event) => {
                    syncer.handle(event);
                    health.set_node_eligible(syncer.node_eligible());
                }
                None => anyhow::bail!("the source stopped before its first full list"),
            },
            _ = terminate.recv() => return Ok(()),
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
    // Take whatever else is already queued (the node, more changes) into the first sync.
    while let Ok(event) = events.try_recv() {
        syncer.handle(event);
    }
    health.set_node_eligible(syncer.node_eligible());
    let listed = started.elapsed();
    let first_sync = Instant::now();
    let mut devices = node_devices(&config, syncer.node());
    syncer.set_nodeport_addresses(devices.1.clone());
    let rebuilt = syncer.sync();
    let mut first_succeeded = syncer.last_sync_succeeded();
    // Whatever an earlier agent left that no Service owns now goes (and sockets the hooks had
    // connected to backends that left while no agent ran are closed).
    syncer.reconcile();
    first_succeeded &= syncer.last_sync_succeeded();
    let first_elapsed = first_sync.elapsed();
    close_departed_udp(&pins, config.socket_lb.as_ref(), &mut syncer);

    let report_interfaces = |programs: &mut Programs, devices: &BTreeSet<String>| {
        let r = programs.sync_interfaces(&config.pod_interfaces, devices, config.xdp);
        for name in r.attached {
            tracing::info!(interface = name, "attached");
        }
        for name in r.detached {
            tracing::info!(interface = name, "detached");
        }
        for error in r.errors {
            tracing::warn!("{error}");
        }
    };
    // Maps first, then the programs that read them; healthy once both are in place.
    report_interfaces(&mut programs, &devices.0);
    match &config.socket_lb {
        Some(socket_lb) => {
            programs
                .attach_cgroup(&socket_lb.cgroup_root)
                .with_context(|| {
                    format!(
                        "--cgroup-root {}: attaching the socket programs",
                        socket_lb.cgroup_root.display()
                    )
                })?;
            tracing::info!(
                cgroup = %socket_lb.cgroup_root.display(),
                hostns_only = socket_lb.hostns_only,
                "socket-level load balancing attached"
            );
        }
        None => {
            if programs.detach_cgroup()? > 0 {
                tracing::info!("socket-level load balancing detached (--socket-lb false)");
            }
        }
    }
    // Ready (/healthz) once the first sync is programmed and attached, even one that failed
    // to write a map: that is the health clock's business, like any failed sync.
    health.first_sync_done();
    synced(
        &mut syncer,
        &health,
        &histograms,
        &mut stamps,
        first_elapsed,
        first_succeeded,
        true,
    );
    let mut health_checks = crate::healthcheck::HealthCheckServers::default();
    health_checks.reconcile(syncer.health_checks());
    publish(&syncer, conntrack_figures, stamps);
    // The first lists and sync are the agent's biggest transient allocations; hand the freed
    // memory back instead of keeping it as allocator slack for the agent's lifetime.
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe { libc::malloc_trim(0) };
    tracing::info!(
        services = rebuilt,
        families = ?syncer.served_families(),
        listed_ms = listed.as_millis() as u64,
        programmed_ms = (started.elapsed() - listed).as_millis() as u64,
        "first sync programmed"
    );

    let mut interfaces = tokio::time::interval(INTERFACE_POLL);
    let mut full_pass = tokio::time::interval(config.sync_period);
    full_pass.tick().await;
    let mut collect_conntrack = tokio::time::interval(config.conntrack.gc_interval);
    collect_conntrack.tick().await;
    // One collection at a time, off the sync loop (it reads and deletes only conntrack).
    let mut collecting: Option<tokio::task::JoinHandle<_>> = None;
    loop {
        // Changes wait for the min sync period since the last sync, then go together.
        let due = syncer.next_sync();
        let sync_at = tokio::time::Instant::from_std(due.unwrap_or_else(Instant::now));
        tokio::select! {
            event = events.recv() => match event {
                Some(event) => {
                    queue(&mut syncer, &health, &mut stamps, |s| s.handle(event));
                    publish(&syncer, conntrack_figures, stamps);
                }
                None => {
                    tracing::error!("the source stopped; serving the last known state");
                    tokio::select! {
                        _ = terminate.recv() => {}
                        _ = tokio::signal::ctrl_c() => {}
                    }
                    break;
                }
            },
            _ = tokio::time::sleep_until(sync_at), if due.is_some() => {
                take_queued(&mut events, &mut syncer, &health, &mut stamps);
                let started = Instant::now();
                let rebuilt = syncer.sync();
                let (elapsed, succeeded) = (started.elapsed(), syncer.last_sync_succeeded());
                close_departed_udp(&pins, config.socket_lb.as_ref(), &mut syncer);
                synced(&mut syncer, &health, &histograms, &mut stamps, elapsed, succeeded, false);
                health_checks.reconcile(syncer.health_checks());
                publish(&syncer, conntrack_figures, stamps);
                tracing::debug!(
                    services = rebuilt,
                    elapsed_us = started.elapsed().as_micros() as u64,
                    "synced"
                );
            }
            _ = full_pass.tick() => {
                let started = Instant::now();
                // A full pass programs what is pending too (as kube-proxy's periodic sync):
                // the health server is told the maps are current only when they are.
                let mut succeeded = true;
                if syncer.ready() {
                    take_queued(&mut events, &mut syncer, &health, &mut stamps);
                    if syncer.has_changes() {
                        syncer.sync();
                        succeeded = syncer.last_sync_succeeded();
                    }
                }
                syncer.repair();
                succeeded &= syncer.last_sync_succeeded();
                let elapsed = started.elapsed();
                close_departed_udp(&pins, config.socket_lb.as_ref(), &mut syncer);
                synced(&mut syncer, &health, &histograms, &mut stamps, elapsed, succeeded, true);
                // Ports that could not be bound are tried again.
                health_checks.reconcile(syncer.health_checks());
                publish(&syncer, conntrack_figures, stamps);
                tracing::debug!(elapsed_ms = started.elapsed().as_millis() as u64, "maps re-read and repaired");
            }
            _ = collect_conntrack.tick(), if collecting.is_none() => {
                let (pins, timeouts) = (pins.clone(), config.conntrack.timeouts);
                collecting = Some(tokio::task::spawn_blocking(move || {
                    crate::conntrack::collect(&pins, &timeouts, crate::conntrack::monotonic_ns())
                }));
            }
            done = async { collecting.as_mut().expect("guarded").await }, if collecting.is_some() => {
                collecting = None;
                match done {
                    Ok(Ok(collected)) => {
                        conntrack_figures.collections += 1;
                        conntrack_figures.deleted += collected.deleted as u64;
                        conntrack_figures.entries = collected.scanned - collected.deleted;
                        publish(&syncer, conntrack_figures, stamps);
                        tracing::debug!(scanned = collected.scanned, deleted = collected.deleted, "conntrack collected");
                    }
                    Ok(Err(error)) => tracing::warn!(%error, "collecting expired conntrack entries"),
                    Err(error) => tracing::warn!(%error, "the conntrack collector stopped"),
                }
            }
            _ = interfaces.tick() => {
                let now = node_devices(&config, syncer.node());
                if now.0 != devices.0 {
                    tracing::info!(devices = ?now.0, "devices");
                }
                queue(&mut syncer, &health, &mut stamps, |s| {
                    s.set_nodeport_addresses(now.1.clone())
                });
                devices = now;
                report_interfaces(&mut programs, &devices.0);
            }
            _ = terminate.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    // Maps and links stay pinned: the datapath keeps serving until the next agent takes over
    // (or `twinstack cleanup` removes it).
    tracing::info!("stopping; the datapath stays in place");
    Ok(())
}
