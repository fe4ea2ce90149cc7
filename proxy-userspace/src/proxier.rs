//! Sync: one [`Proxier`] per IP family behind a thin dispatcher, the [`MetaProxier`] (as in
//! kube-proxy's metaproxier). A proxier turns a Service's ports into its family's frontend
//! entries (the plan) and hands them to its map writer; nothing in it asks which family it is.
//! The dispatcher owns the one family decision: which families this node serves.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet, hash_map},
    net::{Ipv4Addr, Ipv6Addr},
};

use crate::{
    family::{Address, Family},
    maps::{
        LbMaps,
        memory::{MemoryMaps, SharedMemoryMaps},
        ranges::{self, RangeKey},
        writer::{Departure, WriteError, Writer},
    },
    metrics::FamilyFigures,
    model::{ServiceName, ServicePort},
    node::NodeInfo,
    plan::{self, Frontend, NodeContext, Planned, Scope, ServiceEntry},
};

/// A failure to program one frontend of one Service.
#[derive(Debug)]
pub struct SyncError {
    pub service: Option<ServiceName>,
    pub family: Family,
    pub frontend: Option<String>,
    pub error: WriteError,
}

/// Backends that left frontends, per family.
#[derive(Debug, Default)]
pub struct Departures {
    pub v4: Vec<Departure<Ipv4Addr>>,
    pub v6: Vec<Departure<Ipv6Addr>>,
}

impl Departures {
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }
}

/// One Service's new ports (empty: it is gone, ignored or invalid).
pub type Change = (ServiceName, Vec<ServicePort>);

/// The Services claiming one frontend. Nearly every frontend has one, kept inline: a set per
/// frontend would allocate a B-tree node (~384 bytes) for each of the tens of thousands of
/// frontends a node serves (every cluster IP has its unexposed-port frontends too).
enum Claimants {
    One(ServiceName),
    /// Two or more (a conflict), ordered by name.
    Many(BTreeSet<ServiceName>),
}

impl Claimants {
    /// The one served: the first by (namespace, name).
    fn first(&self) -> Option<&ServiceName> {
        match self {
            Claimants::One(name) => Some(name),
            Claimants::Many(names) => names.first(),
        }
    }

    fn insert(&mut self, name: &ServiceName) {
        match self {
            Claimants::One(one) if one == name => {}
            Claimants::One(one) => {
                *self = Claimants::Many(BTreeSet::from([one.clone(), name.clone()]));
            }
            Claimants::Many(names) => {
                names.insert(name.clone());
            }
        }
    }

    /// Withdraws `name`'s claim; `false` when nobody claims the frontend any more.
    fn remove(&mut self, name: &ServiceName) -> bool {
        match self {
            Claimants::One(one) => one != name,
            Claimants::Many(names) => {
                names.remove(name);
                if names.len() <= 1 {
                    match names.pop_first() {
                        Some(last) => *self = Claimants::One(last),
                        None => return false,
                    }
                }
                true
            }
        }
    }
}

pub struct Proxier<A> {
    writer: Writer<A>,
    /// The frontends (and entries) each Service claims in this family.
    owned: HashMap<ServiceName, Vec<Planned<A>>>,
    /// Every Service claiming each frontend. Two claimants are a conflict in the cluster (an
    /// external IP naming another Service's cluster IP, say): the first by (namespace, name)
    /// is served, whatever the order the Services arrived in, so a fresh agent, a repair and
    /// an incremental sync all agree; when it lets go, the next one is served at once.
    /// (kube-proxy's iptables mode serves whichever rule its unordered Service map wrote
    /// first; the health checks follow the same first-by-name rule.)
    claimants: HashMap<Frontend<A>, Claimants>,
    /// The source-range entries the maps hold (`loadBalancerSourceRanges`).
    ranges: BTreeSet<RangeKey<A>>,
    /// The family's `--cluster-cidr`, watched for frontends inside it.
    cluster: Option<ClusterWatch>,
}

/// Tells the datapath whether a family's `--cluster-cidr` holds no frontend (then a packet to
/// a pod address needs no service lookup: [`proxy_common::map_names::CLUSTER_CLEAR`]). No
/// frontend is inside it as a rule (cluster IPs come from the service CIDR); an external IP or
/// a NodePort address inside it (a node's gateway address to its pods, say) keeps the lookup
/// for as long as it is programmed.
pub struct ClusterWatch {
    network: ipnet::IpNet,
    write: Box<dyn FnMut(bool) -> Result<(), crate::maps::MapError> + Send>,
    /// What the datapath was last told.
    written: Option<bool>,
}

impl ClusterWatch {
    pub fn new(
        network: ipnet::IpNet,
        write: Box<dyn FnMut(bool) -> Result<(), crate::maps::MapError> + Send>,
    ) -> Self {
        Self {
            network,
            write,
            written: None,
        }
    }
}

/// The source-range entries of planned frontends.
fn range_keys<'a, A: Copy + Ord + 'a>(
    planned: impl IntoIterator<Item = &'a Planned<A>>,
) -> BTreeSet<RangeKey<A>> {
    planned
        .into_iter()
        .flat_map(|(f, e)| ranges::keys_of(f, e))
        .collect()
}

impl<A: Address> Proxier<A> {
    pub fn new(maps: LbMaps<A>) -> Result<Self, WriteError> {
        let mut writer = Writer::restore(maps)?;
        let ranges = writer
            .source_ranges()
            .dump()
            .map_err(WriteError::from)?
            .into_iter()
            .map(|(k, ())| k)
            .collect();
        Ok(Self {
            writer,
            owned: HashMap::new(),
            claimants: HashMap::new(),
            ranges,
            cluster: None,
        })
    }

    /// Tells the datapath whether the cluster CIDR is clear of frontends, when that changed.
    /// After the frontends are written: a new frontend inside it is served from the moment
    /// this lands (as if it had been programmed a moment later).
    fn publish_cluster_clear(&mut self, errors: &mut Vec<SyncError>) {
        let Some(watch) = &mut self.cluster else {
            return;
        };
        let clear = !self.writer.any_frontend_within(&watch.network);
        if watch.written == Some(clear) {
            return;
        }
        match (watch.write)(clear) {
            Ok(()) => {
                watch.written = Some(clear);
                tracing::debug!(family = %A::FAMILY, clear, "cluster CIDR frontends");
            }
            Err(error) => errors.push(SyncError {
                service: None,
                family: A::FAMILY,
                frontend: None,
                error: error.into(),
            }),
        }
    }

    /// Writes (`add`) or deletes source-range entries, keeping [`Self::ranges`] in step.
    fn write_ranges(
        &mut self,
        keys: BTreeSet<RangeKey<A>>,
        add: bool,
        errors: &mut Vec<SyncError>,
    ) {
        for key in keys {
            let table = self.writer.source_ranges();
            let result = if add {
                table.put(&key, &())
            } else {
                table.delete(&key)
            };
            match result {
                Ok(()) if add => {
                    self.ranges.insert(key);
                }
                Ok(()) => {
                    self.ranges.remove(&key);
                }
                Err(error) => errors.push(SyncError {
                    service: None,
                    family: A::FAMILY,
                    frontend: Some(key.to_string()),
                    error: error.into(),
                }),
            }
        }
    }

    /// The Service a frontend is served for (its first claimant by name), and its entry.
    fn winner(&self, frontend: &Frontend<A>) -> Option<(&ServiceName, &ServiceEntry<A>)> {
        let service = self.claimants.get(frontend)?.first()?;
        let (_, entry) = self
            .owned
            .get(service)?
            .iter()
            .find(|(f, _)| f == frontend)?;
        Some((service, entry))
    }

    /// Every claimed frontend with its winner's entry.
    fn winners(&self) -> impl Iterator<Item = Planned<A>> + '_ {
        self.claimants
            .keys()
            .filter_map(|f| self.winner(f).map(|(_, entry)| (*f, entry.clone())))
    }

    /// The source-range entries the winners of a frontend's socket need (both scopes share
    /// them).
    fn socket_ranges(&self, frontend: &Frontend<A>) -> BTreeSet<RangeKey<A>> {
        [Scope::External, Scope::Internal]
            .into_iter()
            .filter_map(|scope| self.winner(&Frontend { scope, ..*frontend }))
            .flat_map(|(_, entry)| ranges::keys_of(frontend, entry))
            .collect()
    }

    /// Programs many Services at once: every frontend they claim or let go of is written
    /// with its winner's entry (new ones in batches), or removed once no Service claims it.
    pub fn apply_all(
        &mut self,
        changes: &[Change],
        node: &NodeContext,
        errors: &mut Vec<SyncError>,
    ) {
        // The frontends the changes touch, in order, and the range entries their sockets'
        // winners needed before.
        let mut touched = Vec::new();
        let (mut seen, mut sockets) = (HashSet::new(), HashSet::new());
        let mut old_ranges = BTreeSet::new();
        // The last Service to let go of each frontend (errors name it).
        let mut let_go = HashMap::new();
        for (service, ports) in changes {
            let mut desired: Vec<_> = ports
                .iter()
                .flat_map(|port| plan::frontends::<A>(port, node))
                .collect();
            desired.extend(plan::unexposed::<A>(ports));
            let old = self
                .owned
                .get(service)
                .map(Vec::as_slice)
                .unwrap_or_default();
            for (frontend, _) in old.iter().chain(&desired) {
                if seen.insert(*frontend) {
                    touched.push(*frontend);
                }
                if sockets.insert((frontend.address, frontend.port, frontend.protocol)) {
                    old_ranges.extend(self.socket_ranges(frontend));
                }
            }
            let keep: HashSet<_> = desired.iter().map(|(f, _)| *f).collect();
            for (frontend, _) in self.owned.remove(service).unwrap_or_default() {
                if keep.contains(&frontend) {
                    continue;
                }
                let_go.insert(frontend, service.clone());
                if let Some(claimants) = self.claimants.get_mut(&frontend)
                    && !claimants.remove(service)
                {
                    self.claimants.remove(&frontend);
                }
            }
            for frontend in &keep {
                match self.claimants.entry(*frontend) {
                    hash_map::Entry::Occupied(mut claimants) => claimants.get_mut().insert(service),
                    hash_map::Entry::Vacant(none) => {
                        none.insert(Claimants::One(service.clone()));
                    }
                }
            }
            if !desired.is_empty() {
                self.owned.insert(service.clone(), desired);
            }
        }
        let mut upserts = Vec::new();
        let mut owner_of = HashMap::new();
        let mut removals = Vec::new();
        let mut new_ranges = BTreeSet::new();
        for frontend in touched {
            new_ranges.extend(self.socket_ranges(&frontend));
            match self.winner(&frontend) {
                Some((service, entry)) => {
                    owner_of.insert(frontend, service.clone());
                    upserts.push((frontend, entry.clone()));
                }
                None => removals.push(frontend),
            }
        }
        // A frontend's ranges are in place before its entry asks for them, and go after it.
        let range_adds = new_ranges.difference(&self.ranges).copied().collect();
        let range_drops = old_ranges.difference(&new_ranges).copied().collect();
        self.write_ranges(range_adds, true, errors);
        for (frontend, error) in self.writer.upsert_many(&upserts) {
            errors.push(SyncError {
                service: owner_of.get(&frontend).cloned(),
                family: A::FAMILY,
                frontend: Some(frontend.to_string()),
                error,
            });
        }
        for frontend in removals {
            if let Err(error) = self.writer.remove(&frontend) {
                errors.push(SyncError {
                    service: let_go.remove(&frontend),
                    family: A::FAMILY,
                    frontend: Some(frontend.to_string()),
                    error,
                });
            }
        }
        self.write_ranges(range_drops, false, errors);
        self.purge_affinities(errors);
    }

    fn purge_affinities(&mut self, errors: &mut Vec<SyncError>) {
        if let Err(error) = self.writer.purge_affinities() {
            errors.push(SyncError {
                service: None,
                family: A::FAMILY,
                frontend: None,
                error,
            });
        }
    }

    /// Withdraws every frontend: the family is no longer served.
    pub fn clear(&mut self, errors: &mut Vec<SyncError>) {
        self.owned.clear();
        self.claimants.clear();
        self.reconcile(errors);
    }

    /// Makes the maps hold exactly the winners' entries: removes whatever else is there
    /// (left by an earlier agent, or drift).
    pub fn reconcile(&mut self, errors: &mut Vec<SyncError>) {
        // In frontend order: deterministic, like the winners.
        let mut desired: Vec<_> = self.winners().collect();
        desired.sort_unstable_by_key(|(f, _)| *f);
        let wanted = range_keys(&desired);
        let missing = wanted.difference(&self.ranges).copied().collect();
        self.write_ranges(missing, true, errors);
        let desired = desired.iter().map(|(f, e)| (f, e));
        for (frontend, error) in self.writer.reconcile(desired) {
            errors.push(SyncError {
                service: None,
                family: A::FAMILY,
                frontend: frontend.map(|f| f.to_string()),
                error,
            });
        }
        let extra = self.ranges.difference(&wanted).copied().collect();
        self.write_ranges(extra, false, errors);
        self.purge_affinities(errors);
    }

    /// Re-reads the kernel maps and writes whatever differs from what the Services own:
    /// the periodic repair of drift.
    pub fn repair(&mut self, errors: &mut Vec<SyncError>) {
        match self.writer.source_ranges().dump() {
            Ok(held) => self.ranges = held.into_iter().map(|(k, ())| k).collect(),
            Err(error) => errors.push(SyncError {
                service: None,
                family: A::FAMILY,
                frontend: None,
                error: error.into(),
            }),
        }
        if let Err(error) = self.writer.refresh() {
            errors.push(SyncError {
                service: None,
                family: A::FAMILY,
                frontend: None,
                error,
            });
            return;
        }
        self.reconcile(errors);
    }

    /// The backends that left a frontend since the last call.
    pub fn take_departures(&mut self) -> Vec<Departure<A>> {
        self.writer.take_departures()
    }

    /// Adds the Service each frontend of this family is served for (a contest's winner).
    fn frontend_services(&self, out: &mut crate::metrics::FrontendServices) {
        for (frontend, names) in &self.claimants {
            if let Some(name) = names.first() {
                out.insert(
                    (frontend.address.into(), frontend.port, frontend.protocol),
                    name.clone(),
                );
            }
        }
    }

    pub fn figures(&self) -> FamilyFigures {
        let stats = self.writer.stats();
        FamilyFigures {
            family: A::FAMILY.kubernetes_name(),
            service_writes: stats.service_writes,
            backend_writes: stats.backend_writes,
            frontends_written: stats.frontends_written,
            frontends: self.writer.frontend_count(),
            backends: self.writer.backend_count(),
        }
    }
}

/// The dispatcher: one proxier per family, and the decision which of them this node serves
/// (the families of `--cluster-cidr` and of the Node's addresses). A change goes to the
/// proxier of every served family; a family that stops being served is withdrawn.
pub struct MetaProxier {
    v4: Proxier<Ipv4Addr>,
    v6: Proxier<Ipv6Addr>,
    cluster_families: Vec<Family>,
    served: BTreeSet<Family>,
    node: NodeContext,
    /// (Service, family) pairs already warned about as not served on this node.
    warned: HashSet<(ServiceName, Family)>,
    /// Each Service's health check (`healthCheckNodePort` of an `externalTrafficPolicy:
    /// Local` Service) and its local endpoints, as the last sync planned it.
    health_checks: BTreeMap<ServiceName, HealthCheck>,
}

/// A Service's health check, as kube-proxy's service health server answers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub service: ServiceName,
    pub port: u16,
    /// Ready endpoints on this node (pods: the larger of the families' counts).
    pub local_endpoints: usize,
}

/// The health check of a Service whose ports are `ports`, on node `node`.
fn health_check(service: &ServiceName, ports: &[ServicePort], node: &str) -> Option<HealthCheck> {
    let port = ports.iter().find_map(|p| {
        (p.external_policy == crate::model::TrafficPolicy::Local)
            .then_some(p.health_check_node_port)
            .flatten()
    })?;
    let mut local: BTreeMap<Family, BTreeSet<std::net::IpAddr>> = BTreeMap::new();
    for port in ports {
        let here = port
            .endpoints
            .iter()
            .filter(|e| e.conditions.ready && e.node_name.as_deref() == Some(node));
        local
            .entry(port.family)
            .or_default()
            .extend(here.map(|e| e.address));
    }
    Some(HealthCheck {
        service: service.clone(),
        port,
        local_endpoints: local.values().map(BTreeSet::len).max().unwrap_or(0),
    })
}

impl MetaProxier {
    /// Takes over both families' maps; the node is `node_name`, its address not known yet.
    pub fn new(
        v4: LbMaps<Ipv4Addr>,
        v6: LbMaps<Ipv6Addr>,
        node_name: &str,
        cluster_families: Vec<Family>,
    ) -> Result<Self, WriteError> {
        let mut meta = Self {
            v4: Proxier::new(v4)?,
            v6: Proxier::new(v6)?,
            served: BTreeSet::new(),
            cluster_families,
            node: NodeContext {
                name: node_name.to_owned(),
                ..NodeContext::default()
            },
            warned: HashSet::new(),
            health_checks: BTreeMap::new(),
        };
        meta.served = meta.decide_served(&NodeInfo::default());
        Ok(meta)
    }

    /// A dispatcher over in-memory twins of the maps (for tests and the bench), and the twins.
    pub fn in_memory(
        node_name: &str,
        cluster_families: Vec<Family>,
    ) -> (Self, SharedMemoryMaps<Ipv4Addr>, SharedMemoryMaps<Ipv6Addr>) {
        let (v4, tables4) = MemoryMaps::new_shared();
        let (v6, tables6) = MemoryMaps::new_shared();
        let meta = Self::new(tables4, tables6, node_name, cluster_families)
            .expect("empty maps always restore");
        (meta, v4, v6)
    }

    fn decide_served(&self, node: &NodeInfo) -> BTreeSet<Family> {
        self.cluster_families
            .iter()
            .copied()
            .chain(node.families())
            .collect()
    }

    /// The families served, in order.
    pub fn served(&self) -> Vec<Family> {
        self.served.iter().copied().collect()
    }

    /// Takes this node's Node: its addresses decide the families served (with
    /// `--cluster-cidr`) and, like its zone, what the plan needs. Returns whether every Service
    /// must be planned again; a family no longer served is withdrawn at once.
    pub fn set_node(&mut self, node: &NodeInfo) -> (bool, Vec<SyncError>) {
        let context = NodeContext {
            name: self.node.name.clone(),
            zone: node.zone.clone(),
            addresses: node.addresses.clone(),
            // From the devices, not the Node ([`Self::set_nodeport_addresses`]).
            nodeport_addresses: self.node.nodeport_addresses.clone(),
        };
        let served = self.decide_served(node);
        let mut errors = Vec::new();
        for family in self.served.difference(&served) {
            tracing::warn!(%family, "family no longer served on this node: its frontends are withdrawn");
            match family {
                Family::V4 => self.v4.clear(&mut errors),
                Family::V6 => self.v6.clear(&mut errors),
            }
        }
        let changed = context != self.node || served != self.served;
        if served != self.served {
            self.warned.clear();
        }
        self.node = context;
        self.served = served;
        (changed, errors)
    }

    /// Takes the addresses NodePorts are served on (`--nodeport-addresses` over the devices).
    /// Returns whether they changed: every NodePort must be planned again.
    pub fn set_nodeport_addresses(&mut self, addresses: Vec<std::net::IpAddr>) -> bool {
        if addresses == self.node.nodeport_addresses {
            return false;
        }
        self.node.nodeport_addresses = addresses;
        true
    }

    pub fn apply_all(&mut self, changes: &[Change]) -> Vec<SyncError> {
        let mut errors = Vec::new();
        for (service, ports) in changes {
            match health_check(service, ports, &self.node.name) {
                Some(check) => self.health_checks.insert(service.clone(), check),
                None => self.health_checks.remove(service),
            };
            for port in ports {
                if !self.served.contains(&port.family)
                    && self.warned.insert((service.clone(), port.family))
                {
                    tracing::warn!(
                        %service,
                        family = %port.family,
                        "family not served on this node (no --cluster-cidr or node address of it)"
                    );
                }
            }
        }
        if self.served.contains(&Family::V4) {
            self.v4.apply_all(changes, &self.node, &mut errors);
        }
        if self.served.contains(&Family::V6) {
            self.v6.apply_all(changes, &self.node, &mut errors);
        }
        self.publish_cluster_clear(&mut errors);
        errors
    }

    /// Watches each family's `--cluster-cidr` for frontends ([`ClusterWatch`]), telling the
    /// datapath at once and after every write.
    pub fn watch_cluster(
        &mut self,
        v4: Option<ClusterWatch>,
        v6: Option<ClusterWatch>,
    ) -> Vec<SyncError> {
        self.v4.cluster = v4;
        self.v6.cluster = v6;
        let mut errors = Vec::new();
        self.publish_cluster_clear(&mut errors);
        errors
    }

    fn publish_cluster_clear(&mut self, errors: &mut Vec<SyncError>) {
        self.v4.publish_cluster_clear(errors);
        self.v6.publish_cluster_clear(errors);
    }

    /// The health checks to serve, by node port. Two Services claiming one port (a conflict
    /// in the cluster): the first by name is served.
    pub fn health_checks(&self) -> BTreeMap<u16, HealthCheck> {
        let mut by_port = BTreeMap::new();
        for check in self.health_checks.values() {
            by_port.entry(check.port).or_insert_with(|| check.clone());
        }
        by_port
    }

    pub fn reconcile(&mut self) -> Vec<SyncError> {
        let mut errors = Vec::new();
        self.v4.reconcile(&mut errors);
        self.v6.reconcile(&mut errors);
        self.publish_cluster_clear(&mut errors);
        errors
    }

    /// The periodic repair; the cluster CIDR flag is written again too (a drifted map).
    pub fn repair(&mut self) -> Vec<SyncError> {
        let mut errors = Vec::new();
        self.v4.repair(&mut errors);
        self.v6.repair(&mut errors);
        for watch in [&mut self.v4.cluster, &mut self.v6.cluster]
            .into_iter()
            .flatten()
        {
            watch.written = None;
        }
        self.publish_cluster_clear(&mut errors);
        errors
    }

    pub fn figures(&self) -> Vec<FamilyFigures> {
        vec![self.v4.figures(), self.v6.figures()]
    }

    /// The Service each frontend is served for, both families.
    pub fn frontend_services(&self) -> crate::metrics::FrontendServices {
        let mut out = crate::metrics::FrontendServices::new();
        self.v4.frontend_services(&mut out);
        self.v6.frontend_services(&mut out);
        out
    }

    /// The backends that left a frontend since the last call, both families.
    pub fn take_departures(&mut self) -> Departures {
        Departures {
            v4: self.v4.take_departures(),
            v6: self.v6.take_departures(),
        }
    }
}
