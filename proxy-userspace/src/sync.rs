//! The syncer: change tracking and sync, independent of the kernel. It owns the readiness gate
//! (nothing is programmed before the first complete lists of Services and EndpointSlices) and
//! the min-sync timing (changes wait until `min_sync_period` after the last sync, then go
//! together). The agent runs it over the pinned maps, tests over in-memory ones: one sync path.
use std::{
    collections::BTreeSet,
    time::{Duration, Instant, SystemTime},
};

use crate::{
    family::Family,
    maps::writer::WriteError,
    metrics::AgentFigures,
    model::{Built, ServiceError, ServiceName, ServicePort},
    node::NodeInfo,
    proxier::{Departures, MetaProxier, SyncError},
    source::{Kind, Object, SourceEvent},
    tracker::{ChangeCounts, Tracker, object_name},
};

/// kube-proxy's taint of a node the cluster autoscaler is about to delete.
pub const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

/// Services built and written together within one sync.
const SYNC_CHUNK: usize = 1024;

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

pub struct Syncer {
    tracker: Tracker,
    meta: MetaProxier,
    /// Kinds whose first complete list has arrived.
    listed: BTreeSet<Kind>,
    node_name: String,
    node: NodeInfo,
    min_sync_period: Duration,
    last_sync: Option<Instant>,
    pub counters: SyncCounters,
    /// Whether this node may take traffic: not being deleted, not tainted for deletion by the
    /// autoscaler (true until the Node says otherwise, as kube-proxy's).
    node_eligible: bool,
    node_seen: bool,
    /// The trigger times of the slice changes the last syncs programmed, until taken.
    programmed: Vec<SystemTime>,
    /// Whether the last sync, reconcile or repair failed to write the maps.
    failed: bool,
}

impl Syncer {
    pub fn new(meta: MetaProxier, node_name: &str, min_sync_period: Duration) -> Self {
        Self {
            tracker: Tracker::new(SystemTime::now()),
            meta,
            listed: BTreeSet::new(),
            node_name: node_name.to_owned(),
            node: NodeInfo::default(),
            min_sync_period,
            last_sync: None,
            counters: SyncCounters::default(),
            node_eligible: true,
            node_seen: false,
            programmed: Vec::new(),
            failed: false,
        }
    }

    /// Whether the node may take traffic (`/healthz` says 503 when not).
    pub fn node_eligible(&self) -> bool {
        self.node_eligible
    }

    /// Whether the last sync, reconcile or repair wrote everything it had to (a map that
    /// refuses a write fails it; a Service too large for one entry is that Service's error).
    pub fn last_sync_succeeded(&self) -> bool {
        !self.failed
    }

    /// Changes seen and pending, for the metrics.
    pub fn change_counts(&self) -> ChangeCounts {
        self.tracker.change_counts()
    }

    /// The trigger times of the slice changes programmed since the last call.
    pub fn take_programmed_trigger_times(&mut self) -> Vec<SystemTime> {
        std::mem::take(&mut self.programmed)
    }

    /// Nothing is programmed until the first full lists of Services and EndpointSlices.
    pub fn ready(&self) -> bool {
        self.listed.contains(&Kind::Service) && self.listed.contains(&Kind::EndpointSlice)
    }

    pub fn has_changes(&self) -> bool {
        self.tracker.has_changes()
    }

    /// When the changes waiting may be synced: `None` when there are none, or before the first
    /// complete lists; otherwise `min_sync_period` after the last sync (now, if none yet).
    pub fn next_sync(&self) -> Option<Instant> {
        if !self.ready() || !self.has_changes() {
            return None;
        }
        Some(match self.last_sync {
            Some(last) => last + self.min_sync_period,
            None => Instant::now(),
        })
    }

    /// The Services' health checks to serve, by node port.
    pub fn health_checks(&self) -> std::collections::BTreeMap<u16, crate::proxier::HealthCheck> {
        self.meta.health_checks()
    }

    pub fn node(&self) -> &NodeInfo {
        &self.node
    }

    /// The families this node serves (the dispatcher decides).
    pub fn served_families(&self) -> Vec<Family> {
        self.meta.served()
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
        // A Node never seen is not a deleted one (a manifest directory may hold none).
        self.node_seen |= node.is_some();
        let eligible = match node {
            None => !self.node_seen,
            Some(n) => {
                n.metadata.deletion_timestamp.is_none()
                    && !n
                        .spec
                        .as_ref()
                        .and_then(|s| s.taints.as_ref())
                        .is_some_and(|t| t.iter().any(|t| t.key == TO_BE_DELETED_TAINT))
            }
        };
        if eligible != self.node_eligible {
            tracing::info!(eligible, "node eligibility");
            self.node_eligible = eligible;
        }
        let info = node.map(NodeInfo::from_node).unwrap_or_default();
        if info == self.node {
            return;
        }
        tracing::info!(addresses = ?info.addresses, zone = ?info.zone, "node updated");
        let (replan, errors) = self.meta.set_node(&info);
        report(errors);
        self.node = info;
        if replan {
            // A family gained or lost, or node addresses or zone changed: every Service may
            // gain or lose frontends or endpoints.
            self.tracker.mark_all_dirty();
        }
    }

    /// Takes the addresses NodePorts are served on; when they change, every Service is
    /// planned again at the next sync.
    pub fn set_nodeport_addresses(&mut self, addresses: Vec<std::net::IpAddr>) {
        let shown = format!("{addresses:?}");
        if self.meta.set_nodeport_addresses(addresses) {
            tracing::info!(addresses = shown, "NodePort addresses");
            self.tracker.mark_all_dirty();
        }
    }

    /// Builds and programs every changed Service. Returns how many were rebuilt.
    pub fn sync(&mut self) -> usize {
        let started = Instant::now();
        let changed = self.tracker.take_changed();
        let count = changed.len();
        let trigger_times = self.tracker.take_trigger_times(&changed);
        let mut failed = false;
        // In chunks: a cold start of thousands of Services never holds all their plans at once.
        for chunk in changed.chunks(SYNC_CHUNK) {
            let mut changes = Vec::with_capacity(chunk.len());
            for name in chunk {
                let ports = match service_ports(name, self.tracker.build(name)) {
                    Ok(ports) => ports,
                    Err(()) => {
                        self.counters.invalid += 1;
                        Vec::new()
                    }
                };
                changes.push((name.clone(), ports));
            }
            failed |= report(self.meta.apply_all(&changes));
        }
        self.failed = failed;
        if !failed {
            self.programmed.extend(trigger_times);
        }
        self.counters.services_synced += count as u64;
        self.counters.syncs += 1;
        self.last_sync = Some(Instant::now());
        tracing::debug!(
            services = count,
            elapsed_us = started.elapsed().as_micros() as u64,
            "sync"
        );
        count
    }

    /// Makes the maps hold exactly what the Services own (after the first sync: whatever an
    /// earlier agent left that no Service owns now goes).
    pub fn reconcile(&mut self) {
        self.failed |= report(self.meta.reconcile());
    }

    /// The periodic full pass: re-read the kernel maps and repair any drift.
    pub fn repair(&mut self) {
        self.counters.repairs += 1;
        self.failed = report(self.meta.repair());
    }

    /// The backends that left a frontend since the last call (for closing the connected UDP
    /// sockets the socket hooks sent to them).
    pub fn take_departures(&mut self) -> Departures {
        self.meta.take_departures()
    }

    /// The Service each frontend is served for (both families).
    pub fn frontend_services(&self) -> crate::metrics::FrontendServices {
        self.meta.frontend_services()
    }

    /// What the metrics report.
    pub fn figures(&self) -> AgentFigures {
        AgentFigures {
            syncs: self.counters.syncs,
            services_synced: self.counters.services_synced,
            invalid: self.counters.invalid,
            repairs: self.counters.repairs,
            families: self.meta.figures(),
            changes: self.tracker.change_counts(),
            ..AgentFigures::default()
        }
    }
}

/// The ports to program for one changed Service (none when it is gone, ignored or invalid;
/// `Err` when invalid, after logging why).
fn service_ports(
    name: &ServiceName,
    built: Option<Result<Built, ServiceError>>,
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

/// Logs each error; true when one is a failure to write the maps.
fn report(errors: Vec<SyncError>) -> bool {
    let failed = errors
        .iter()
        .any(|e| !matches!(e.error, WriteError::TooManyBackends { .. }));
    for e in errors {
        tracing::error!(
            service = e.service.map(|s| s.to_string()).unwrap_or_default(),
            family = %e.family,
            frontend = e.frontend.unwrap_or_default(),
            error = %e.error,
            "could not program frontend"
        );
    }
    failed
}
