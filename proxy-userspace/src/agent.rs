//! `twinstack run`: the agent. Source events go into the [`Syncer`] (change tracking); syncs
//! are batched (at most every `min_sync_period`) and rebuild only changed Services; a periodic
//! full pass (`sync_period`) re-reads the kernel maps and repairs any drift; interfaces are
//! watched for new pods.
use std::{
    collections::{BTreeSet, HashSet},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::sync::mpsc;

use crate::{
    config::{ClusterCidrs, InterfacePatterns},
    family::Family,
    health::{self, Health},
    loader::Datapath,
    maps::{kernel::KernelMaps, pins::PinLayout},
    model::{Built, ServiceName, ServicePort},
    node::NodeInfo,
    proxier::{Dataplane, Proxier, SyncError},
    source::{self, Kind, Object, SourceEvent},
    tracker::{Tracker, object_name},
};

/// Services built and written together within one sync.
const SYNC_CHUNK: usize = 1024;

/// How often pod interfaces are looked for.
const INTERFACE_POLL: Duration = Duration::from_millis(250);

#[derive(Clone, Debug)]
pub enum SourceConfig {
    /// `--manifests DIR`.
    Manifests(PathBuf),
    /// The API server, through `--kubeconfig` or the in-cluster service account.
    Api { kubeconfig: Option<PathBuf> },
}

#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub source: SourceConfig,
    pub node_name: String,
    pub cluster_cidrs: ClusterCidrs,
    pub pod_interfaces: InterfacePatterns,
    pub bpf_root: PathBuf,
    pub healthz_bind_address: SocketAddr,
    pub metrics_bind_address: SocketAddr,
    pub min_sync_period: Duration,
    pub sync_period: Duration,
}

/// Counts of what the syncer saw, for logs and metrics.
#[derive(Clone, Copy, Debug, Default)]
pub struct SyncCounters {
    /// Unreadable objects and invalid Services, skipped.
    pub invalid: u64,
    /// Services rebuilt (changed since the previous sync).
    pub services_synced: u64,
    pub syncs: u64,
    pub repairs: u64,
}

/// Change tracking and sync, independent of the kernel: the agent runs it over the pinned
/// maps, tests over in-memory ones.
pub struct Syncer {
    tracker: Tracker,
    pub dataplane: Dataplane,
    /// Kinds whose first complete list has arrived.
    listed: BTreeSet<Kind>,
    node_name: String,
    node: NodeInfo,
    cluster_families: Vec<Family>,
    /// (Service, family) pairs already warned about as not served on this node.
    warned: HashSet<(ServiceName, Family)>,
    pub counters: SyncCounters,
}

impl Syncer {
    pub fn new(dataplane: Dataplane, node_name: &str, cluster_families: Vec<Family>) -> Self {
        Self {
            tracker: Tracker::default(),
            dataplane,
            listed: BTreeSet::new(),
            node_name: node_name.to_owned(),
            node: NodeInfo::default(),
            cluster_families,
            warned: HashSet::new(),
            counters: SyncCounters::default(),
        }
    }

    /// Nothing is programmed until the first full lists of Services and EndpointSlices.
    pub fn ready(&self) -> bool {
        self.listed.contains(&Kind::Service) && self.listed.contains(&Kind::EndpointSlice)
    }

    pub fn has_changes(&self) -> bool {
        self.tracker.has_changes()
    }

    pub fn node(&self) -> &NodeInfo {
        &self.node
    }

    /// Families served: those of `--cluster-cidr` and those of the node's addresses.
    pub fn served_families(&self) -> Vec<Family> {
        let mut families = self.cluster_families.clone();
        families.extend(self.node.families());
        families.sort();
        families.dedup();
        families
    }

    pub fn handle(&mut self, event: SourceEvent) {
        match event {
            SourceEvent::Replace(kind, objects) => {
                self.listed.insert(kind);
                let mut services = Vec::new();
                let mut slices = Vec::new();
                let mut nodes = Vec::new();
                for object in objects {
                    match object {
                        Object::Service(s) => services.push(s),
                        Object::EndpointSlice(s) => slices.push(s),
                        Object::Node(n) => nodes.push(n),
                    }
                }
                match kind {
                    Kind::Service => self.tracker.replace_services(services),
                    Kind::EndpointSlice => self.tracker.replace_slice_entries(slices),
                    Kind::Node => self.set_node(nodes.iter().find(|n| self.is_ours(n))),
                }
            }
            SourceEvent::Apply(Object::Service(s)) => self.tracker.upsert_service(s),
            SourceEvent::Apply(Object::EndpointSlice(s)) => self.tracker.upsert_slice_entry(s),
            SourceEvent::Apply(Object::Node(n)) => {
                if self.is_ours(&n) {
                    self.set_node(Some(&n));
                }
            }
            SourceEvent::Delete(Object::Service(s)) => {
                if let Some(name) = object_name(&s.metadata) {
                    self.tracker.delete_service(&name);
                }
            }
            SourceEvent::Delete(Object::EndpointSlice(s)) => self.tracker.delete_slice(&s.name),
            SourceEvent::Delete(Object::Node(n)) => {
                if self.is_ours(&n) {
                    self.set_node(None);
                }
            }
            SourceEvent::Invalid(error) => {
                self.counters.invalid += 1;
                tracing::error!("{error}");
            }
        }
    }

    fn is_ours(&self, node: &k8s_openapi::api::core::v1::Node) -> bool {
        node.metadata.name.as_deref() == Some(self.node_name.as_str())
    }

    fn set_node(&mut self, node: Option<&k8s_openapi::api::core::v1::Node>) {
        let info = node.map(NodeInfo::from_node).unwrap_or_default();
        if info == self.node {
            return;
        }
        let before = self.served_families();
        self.node = info;
        tracing::info!(addresses = ?self.node.addresses, zone = ?self.node.zone, "node updated");
        if self.served_families() != before {
            // A family gained or lost: every Service may gain or lose frontends.
            self.tracker.mark_all_dirty();
        }
    }

    /// Builds and programs every changed Service. Returns how many were rebuilt.
    pub fn sync(&mut self) -> usize {
        let started = Instant::now();
        let changed = self.tracker.take_changed();
        let count = changed.len();
        let served = self.served_families();
        // In chunks: a cold start of thousands of Services never holds all their plans at once.
        for chunk in changed.chunks(SYNC_CHUNK) {
            let mut changes = Vec::with_capacity(chunk.len());
            for name in chunk {
                let ports = match service_ports(name, self.tracker.build(name)) {
                    Ok(ports) => self.served_ports(name, ports, &served),
                    Err(()) => {
                        self.counters.invalid += 1;
                        Vec::new()
                    }
                };
                changes.push((name.clone(), ports));
            }
            report(self.dataplane.apply_all(&changes));
        }
        self.counters.services_synced += count as u64;
        self.counters.syncs += 1;
        tracing::debug!(
            services = count,
            elapsed_us = started.elapsed().as_micros() as u64,
            "sync"
        );
        count
    }

    /// Drops the cluster IPs of families this node does not serve, warning once per Service.
    fn served_ports(
        &mut self,
        name: &ServiceName,
        mut ports: Vec<ServicePort>,
        served: &[Family],
    ) -> Vec<ServicePort> {
        for port in &mut ports {
            port.cluster_ips.retain(|ip| {
                let family = Family::of(ip);
                let ok = served.contains(&family);
                if !ok && self.warned.insert((name.clone(), family)) {
                    tracing::warn!(
                        service = %name,
                        %family,
                        "family not served on this node (no --cluster-cidr or node address of it)"
                    );
                }
                ok
            });
        }
        ports
    }

    /// What the metrics report.
    pub fn figures(&self) -> crate::metrics::AgentFigures {
        crate::metrics::AgentFigures {
            counters: self.counters,
            families: self.dataplane.figures(),
        }
    }

    /// The periodic full pass: re-read the kernel maps and repair any drift.
    pub fn repair(&mut self) {
        self.counters.repairs += 1;
        report(self.dataplane.repair());
    }
}

/// The ports to program for one changed Service (none when it is gone, ignored or invalid;
/// `Err` when invalid, after logging why).
fn service_ports(
    name: &ServiceName,
    built: Option<Result<Built, crate::model::ServiceError>>,
) -> Result<Vec<ServicePort>, ()> {
    match built {
        None => Ok(Vec::new()),
        Some(Ok(Built::Ports { ports, warnings })) => {
            for warning in warnings {
                tracing::warn!(service = %name, "{warning}");
            }
            Ok(ports)
        }
        Some(Ok(Built::Ignored(reason))) => {
            tracing::debug!(service = %name, reason, "not served");
            Ok(Vec::new())
        }
        Some(Err(error)) => {
            // Skipped, never blocking the others; whatever it had is withdrawn.
            tracing::error!(service = %name, %error, "invalid Service skipped");
            Err(())
        }
    }
}

/// Builds and programs every changed Service in every family the dataplane has. Returns how
/// many were rebuilt. (The agent goes through [`Syncer`], which also knows the node.)
pub fn sync(tracker: &mut Tracker, dataplane: &mut Dataplane) -> usize {
    let changes: Vec<_> = tracker
        .drain()
        .into_iter()
        .map(|(name, built)| {
            let ports = service_ports(&name, built).unwrap_or_default();
            (name, ports)
        })
        .collect();
    report(dataplane.apply_all(&changes));
    changes.len()
}

/// Opens one proxier per family over the pinned maps, restoring what they hold.
pub fn open_dataplane(pins: &PinLayout) -> anyhow::Result<Dataplane> {
    Ok(Dataplane {
        v4: Some(Proxier::new(Box::new(KernelMaps::<Ipv4Addr>::open(pins)?))?),
        v6: Some(Proxier::new(Box::new(KernelMaps::<Ipv6Addr>::open(pins)?))?),
    })
}

fn report(errors: Vec<SyncError>) {
    for e in errors {
        tracing::error!(
            service = e.service.map(|s| s.to_string()).unwrap_or_default(),
            family = %e.family,
            frontend = e.frontend.unwrap_or_default(),
            error = %e.error,
            "could not program frontend"
        );
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

pub async fn run(config: AgentConfig) -> anyhow::Result<()> {
    let pins = PinLayout::new(&config.bpf_root);
    tracing::info!(
        node = %config.node_name,
        cluster_cidr = %config.cluster_cidrs,
        bpf_root = %config.bpf_root.display(),
        "starting"
    );
    let mut datapath = Datapath::load(&pins, &[]).context("loading the datapath")?;
    let dataplane = open_dataplane(&pins).context("opening the pinned maps")?;
    let mut syncer = Syncer::new(
        dataplane,
        &config.node_name,
        config.cluster_cidrs.families(),
    );

    let health = Health::default();
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
    let metrics = crate::metrics::bind(
        config.metrics_bind_address,
        crate::metrics::registry(&pins, figures.clone()),
    )
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
    let publish = |syncer: &Syncer| {
        if let Ok(mut f) = figures.lock() {
            *f = syncer.figures();
        }
    };

    let mut events = start_source(&config).await?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;

    // Nothing is programmed until the first full lists have arrived.
    let started = Instant::now();
    while !syncer.ready() {
        tokio::select! {
            event = events.recv() => match event {
                Some(event) => syncer.handle(event),
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
    let listed = started.elapsed();
    let rebuilt = syncer.sync();
    // Whatever an earlier agent left that no Service owns now goes.
    report(syncer.dataplane.reconcile());

    let report_interfaces = |datapath: &mut Datapath| {
        let r = datapath.sync_interfaces(&config.pod_interfaces);
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
    report_interfaces(&mut datapath);
    health.synced();
    publish(&syncer);
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
    let mut last_sync = Instant::now();
    loop {
        // Changes wait for the min sync period since the last sync, then go together.
        let sync_at = tokio::time::Instant::from_std(last_sync + config.min_sync_period);
        let pending = syncer.has_changes();
        tokio::select! {
            event = events.recv() => match event {
                Some(event) => syncer.handle(event),
                None => {
                    tracing::error!("the source stopped; serving the last known state");
                    tokio::select! {
                        _ = terminate.recv() => {}
                        _ = tokio::signal::ctrl_c() => {}
                    }
                    break;
                }
            },
            _ = tokio::time::sleep_until(sync_at), if pending => {
                let started = Instant::now();
                let rebuilt = syncer.sync();
                last_sync = Instant::now();
                health.synced();
                publish(&syncer);
                tracing::debug!(
                    services = rebuilt,
                    elapsed_us = started.elapsed().as_micros() as u64,
                    "synced"
                );
            }
            _ = full_pass.tick() => {
                let started = Instant::now();
                syncer.repair();
                health.synced();
                publish(&syncer);
                tracing::debug!(elapsed_ms = started.elapsed().as_millis() as u64, "maps re-read and repaired");
            }
            _ = interfaces.tick() => report_interfaces(&mut datapath),
            _ = terminate.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    // Maps and links stay pinned: the datapath keeps serving until the next agent takes over
    // (or `twinstack cleanup` removes it).
    tracing::info!("stopping; the datapath stays in place");
    Ok(())
}
