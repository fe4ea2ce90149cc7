//! `twinstack run`: the agent's main loop. Source events go into the tracker; syncs are batched
//! (at most every `min_sync_period`) and only changed Services are rebuilt and rewritten; a
//! periodic full reconcile repairs drift; interfaces are watched for new pods.
use std::{
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
    model::Built,
    proxier::{Dataplane, Proxier, SyncError},
    source::{Snapshot, manifests},
    tracker::Tracker,
};

/// How often pod interfaces are looked for.
const INTERFACE_POLL: Duration = Duration::from_millis(250);

#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub manifests: PathBuf,
    pub node_name: String,
    pub cluster_cidrs: ClusterCidrs,
    pub pod_interfaces: InterfacePatterns,
    pub bpf_root: PathBuf,
    pub healthz_bind_address: SocketAddr,
    pub min_sync_period: Duration,
    pub sync_period: Duration,
}

/// Opens one proxier per family the node serves, restoring what the pinned maps hold.
pub fn open_dataplane(pins: &PinLayout, families: &[Family]) -> anyhow::Result<Dataplane> {
    let mut dataplane = Dataplane { v4: None, v6: None };
    for family in families {
        match family {
            Family::V4 => {
                let maps = KernelMaps::<Ipv4Addr>::open(pins)?;
                dataplane.v4 = Some(Proxier::new(Box::new(maps))?);
            }
            Family::V6 => {
                let maps = KernelMaps::<Ipv6Addr>::open(pins)?;
                dataplane.v6 = Some(Proxier::new(Box::new(maps))?);
            }
        }
    }
    Ok(dataplane)
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

/// Builds and programs every changed Service. Returns how many were rebuilt.
pub fn sync(tracker: &mut Tracker, dataplane: &mut Dataplane) -> usize {
    let updates = tracker.drain();
    let count = updates.len();
    for (name, built) in updates {
        let ports = match built {
            None => Vec::new(),
            Some(Ok(Built::Ports { ports, warnings })) => {
                for warning in warnings {
                    tracing::warn!(service = %name, "{warning}");
                }
                ports
            }
            Some(Ok(Built::Ignored(reason))) => {
                tracing::debug!(service = %name, reason, "not served");
                Vec::new()
            }
            Some(Err(error)) => {
                // Skipped, never blocking the others; whatever it had is withdrawn.
                tracing::error!(service = %name, %error, "invalid Service skipped");
                Vec::new()
            }
        };
        report(dataplane.apply(&name, &ports));
    }
    count
}

fn absorb(tracker: &mut Tracker, snapshot: Snapshot) {
    for error in &snapshot.errors {
        tracing::error!("{error}");
    }
    tracker.replace(snapshot.services, snapshot.slices);
}

pub async fn run(config: AgentConfig) -> anyhow::Result<()> {
    let pins = PinLayout::new(&config.bpf_root);
    let families = config.cluster_cidrs.families();
    tracing::info!(
        node = %config.node_name,
        cluster_cidr = %config.cluster_cidrs,
        bpf_root = %config.bpf_root.display(),
        "starting"
    );
    let mut datapath = Datapath::load(&pins, &[]).context("loading the datapath")?;
    let mut dataplane = open_dataplane(&pins, &families).context("opening the pinned maps")?;

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

    let (sender, mut snapshots) = mpsc::channel(8);
    let dir = config.manifests.clone();
    let watcher = tokio::spawn(async move {
        if let Err(e) = manifests::watch(dir.clone(), sender).await {
            tracing::error!(dir = %dir.display(), %e, "cannot watch the manifest directory");
        }
    });

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut tracker = Tracker::default();

    // Nothing is programmed until the first full list has arrived.
    let first = tokio::select! {
        s = snapshots.recv() => s.context("the manifest source stopped before its first list")?,
        _ = terminate.recv() => return Ok(()),
        _ = tokio::signal::ctrl_c() => return Ok(()),
    };
    absorb(&mut tracker, first);
    let started = Instant::now();
    let rebuilt = sync(&mut tracker, &mut dataplane);
    report(dataplane.reconcile());

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
    tracing::info!(
        services = rebuilt,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "first sync programmed"
    );

    let mut interfaces = tokio::time::interval(INTERFACE_POLL);
    let mut full_resync = tokio::time::interval(config.sync_period);
    full_resync.tick().await;
    let mut last_sync = Instant::now();
    loop {
        // Changes wait for the min sync period since the last sync, then go together.
        let sync_at = tokio::time::Instant::from_std(last_sync + config.min_sync_period);
        let pending = tracker.has_changes();
        tokio::select! {
            s = snapshots.recv() => match s {
                Some(s) => absorb(&mut tracker, s),
                None => {
                    tracing::error!("the manifest source stopped; serving the last known state");
                    watcher.abort();
                    terminate.recv().await;
                    break;
                }
            },
            _ = tokio::time::sleep_until(sync_at), if pending => {
                let started = Instant::now();
                let rebuilt = sync(&mut tracker, &mut dataplane);
                last_sync = Instant::now();
                health.synced();
                tracing::debug!(services = rebuilt, elapsed_us = started.elapsed().as_micros() as u64, "synced");
            }
            _ = full_resync.tick() => {
                tracker.mark_all_dirty();
                sync(&mut tracker, &mut dataplane);
                report(dataplane.reconcile());
                last_sync = Instant::now();
                health.synced();
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
