//! `twinstack validate`: the Kubernetes docs' "validate IPv4/IPv6 dual-stack" checklist for
//! this node, as one command. From what the API server (or a manifest directory) says and what
//! the pinned maps hold: the Node has pod CIDRs and addresses of both families, inside
//! `--cluster-cidr`; every Service asking for dual stack has a cluster IP of each family and
//! ready endpoints in each; each (cluster IP, port, protocol) is programmed with the backends
//! the API lists; and each TCP one answers a connection from here.
//!
//! Each check is one [`Check`] row; a [`Status::Problem`] makes the command fail. Logic here;
//! the CLI (`cli/validate.rs`) only reads the inputs and prints.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Node, Service};
use serde::Serialize;

use crate::{
    config::ClusterCidrs,
    debug::Table,
    family::{Address, Family, socket_display},
    maps::{MapError, codec::KernelFamily, kernel, pins::PinLayout},
    model::{Built, Protocol, ServicePort, SliceEntry, TrafficPolicy},
    plan::{Backend, Frontend},
    source::Snapshot,
    tracker::{Tracker, object_name},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Dual stack does not work as asked: the command fails.
    Problem,
    /// Worth a look, not a fault of dual stack (a Service with no endpoints at all).
    Warning,
    Ok,
    /// Not tried (a UDP port: nothing to connect to).
    Skipped,
}

impl Status {
    fn name(self) -> &'static str {
        match self {
            Status::Problem => "PROBLEM",
            Status::Warning => "warning",
            Status::Ok => "ok",
            Status::Skipped => "skipped",
        }
    }
}

/// One finding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    pub status: Status,
    /// What was checked: `node`, `cluster-cidr`, `inputs`, `maps`, `dual-stack`, `endpoints`,
    /// `programmed`, `connect`.
    pub check: &'static str,
    /// What it was checked on: the node, a family, a Service, a frontend.
    pub subject: String,
    pub detail: String,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub problems: usize,
    pub warnings: usize,
    /// Problems first, then warnings, then the rest, each in the order found.
    pub checks: Vec<Check>,
}

impl Report {
    fn new(mut checks: Vec<Check>) -> Self {
        checks.sort_by_key(|c| c.status);
        let count = |status| checks.iter().filter(|c| c.status == status).count();
        Self {
            problems: count(Status::Problem),
            warnings: count(Status::Warning),
            checks,
        }
    }

    pub fn table(&self) -> String {
        let mut table = Table::new(["STATUS", "CHECK", "SUBJECT", "DETAIL"]);
        for c in &self.checks {
            table.row([
                c.status.name().to_owned(),
                c.check.to_owned(),
                c.subject.clone(),
                c.detail.clone(),
            ]);
        }
        format!(
            "{table}\n{} problem(s), {} warning(s), {} check(s)\n",
            self.problems,
            self.warnings,
            self.checks.len()
        )
    }
}

/// What `validate` looks at.
pub struct Inputs<'a> {
    pub snapshot: Snapshot,
    pub node_name: &'a str,
    pub cluster_cidr: &'a ClusterCidrs,
    pub pins: &'a PinLayout,
    /// How long a connection to a cluster IP may take; `None`: none is tried.
    pub connect_timeout: Option<Duration>,
}

pub fn validate(inputs: Inputs<'_>) -> Report {
    let mut checks = Vec::new();
    let Snapshot {
        services,
        slices,
        nodes,
        errors,
    } = inputs.snapshot;
    for error in errors {
        checks.push(problem("inputs", "manifests", error));
    }
    let node = nodes
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(inputs.node_name));
    check_node(node, inputs.node_name, inputs.cluster_cidr, &mut checks);

    let programmed = Programmed::read(inputs.pins, &mut checks);
    let mut tracker = Tracker::default();
    tracker.replace_slice_entries(slices.iter().filter_map(SliceEntry::from_slice).collect());
    for service in &services {
        let Some(name) = object_name(&service.metadata) else {
            continue;
        };
        tracker.upsert_service(service.clone());
        let ports = match tracker.build(&name) {
            Some(Ok(Built::Ports { ports, .. })) => ports,
            Some(Ok(Built::Ignored(_))) | None => continue,
            Some(Err(e)) => {
                checks.push(problem("inputs", name.to_string(), e.to_string()));
                continue;
            }
        };
        let subject = name.to_string();
        check_families(service, &ports, &subject, &mut checks);
        for port in &ports {
            check_programmed(port, inputs.node_name, programmed.as_ref(), &mut checks);
            if let Some(timeout) = inputs.connect_timeout {
                check_connect(port, timeout, &mut checks);
            }
        }
    }
    Report::new(checks)
}

fn problem(check: &'static str, subject: impl Into<String>, detail: impl Into<String>) -> Check {
    finding(Status::Problem, check, subject, detail)
}

fn finding(
    status: Status,
    check: &'static str,
    subject: impl Into<String>,
    detail: impl Into<String>,
) -> Check {
    Check {
        status,
        check,
        subject: subject.into(),
        detail: detail.into(),
    }
}

fn cidr_of(cluster: &ClusterCidrs, family: Family) -> Option<IpNet> {
    match family {
        Family::V4 => cluster.v4,
        Family::V6 => cluster.v6,
    }
}

/// The Node: pod CIDRs and an InternalIP of each family, the pod CIDRs inside
/// `--cluster-cidr`, and `--cluster-cidr` itself of both families.
fn check_node(node: Option<&Node>, name: &str, cluster: &ClusterCidrs, checks: &mut Vec<Check>) {
    for family in Family::ALL {
        match cidr_of(cluster, family) {
            Some(cidr) => checks.push(finding(
                Status::Ok,
                "cluster-cidr",
                family.to_string(),
                format!("--cluster-cidr has {cidr}"),
            )),
            None => checks.push(problem(
                "cluster-cidr",
                family.to_string(),
                format!("--cluster-cidr has no {family} CIDR: {family} pods are not known"),
            )),
        }
    }
    let Some(node) = node else {
        checks.push(problem(
            "node",
            name,
            "no Node of this name (--node-name): its pod CIDRs and addresses are unknown",
        ));
        return;
    };
    let spec = node.spec.as_ref();
    let mut pod_cidrs: Vec<String> = spec.and_then(|s| s.pod_cidrs.clone()).unwrap_or_default();
    if pod_cidrs.is_empty()
        && let Some(one) = spec.and_then(|s| s.pod_cidr.clone())
    {
        pod_cidrs.push(one);
    }
    let addresses: Vec<(String, IpAddr)> = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
        .filter_map(|a| Some((a.type_.clone(), a.address.parse().ok()?)))
        .collect();
    for family in Family::ALL {
        let subject = format!("{name} {family}");
        let cidrs: Vec<IpNet> = pod_cidrs
            .iter()
            .filter_map(|c| c.parse::<IpNet>().ok())
            .filter(|c| Family::of(&c.addr()) == family)
            .collect();
        if cidrs.is_empty() {
            checks.push(problem(
                "node",
                &subject,
                format!("no {family} pod CIDR in spec.podCIDRs ({pod_cidrs:?})"),
            ));
        }
        for cidr in cidrs {
            match cidr_of(cluster, family) {
                Some(cluster) if cluster.contains(&cidr) => checks.push(finding(
                    Status::Ok,
                    "node",
                    &subject,
                    format!("pod CIDR {cidr} is inside --cluster-cidr {cluster}"),
                )),
                Some(cluster) => checks.push(problem(
                    "node",
                    &subject,
                    format!(
                        "pod CIDR {cidr} is outside --cluster-cidr {cluster}: its pods' traffic \
                         is taken for outside traffic (masqueraded)"
                    ),
                )),
                None => {}
            }
        }
        let mine: Vec<String> = addresses
            .iter()
            .filter(|(_, a)| Family::of(a) == family)
            .map(|(kind, a)| format!("{kind} {a}"))
            .collect();
        if mine.iter().any(|a| a.starts_with("InternalIP")) {
            checks.push(finding(
                Status::Ok,
                "node",
                &subject,
                format!("addresses {}", mine.join(", ")),
            ));
        } else {
            checks.push(problem(
                "node",
                &subject,
                format!("no {family} InternalIP in status.addresses"),
            ));
        }
    }
}

/// A Service asking for dual stack (`ipFamilyPolicy` `PreferDualStack` or
/// `RequireDualStack`) has a cluster IP of each family and ready endpoints in each. Any Service
/// without a ready endpoint in a family of its own: a warning.
fn check_families(
    service: &Service,
    ports: &[ServicePort],
    subject: &str,
    checks: &mut Vec<Check>,
) {
    let spec = service.spec.as_ref();
    let policy = spec
        .and_then(|s| s.ip_family_policy.as_deref())
        .unwrap_or("SingleStack");
    let dual = policy == "PreferDualStack" || policy == "RequireDualStack";
    let cluster_ips: Vec<IpAddr> = spec
        .and_then(|s| {
            s.cluster_ips
                .clone()
                .or_else(|| s.cluster_ip.clone().map(|ip| vec![ip]))
        })
        .unwrap_or_default()
        .iter()
        .filter_map(|ip| ip.parse().ok())
        .collect();
    let families: BTreeSet<Family> = cluster_ips.iter().map(Family::of).collect();
    if dual {
        for family in Family::ALL {
            if !families.contains(&family) {
                checks.push(problem(
                    "dual-stack",
                    subject,
                    format!("asks for dual stack ({policy}) but has no {family} cluster IP"),
                ));
            }
        }
        if families.len() == 2 {
            checks.push(finding(
                Status::Ok,
                "dual-stack",
                subject,
                format!(
                    "{policy}: cluster IPs {}",
                    cluster_ips
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    }
    for family in families {
        let ready: BTreeSet<IpAddr> = ports
            .iter()
            .filter(|p| p.family == family)
            .flat_map(|p| p.endpoints.iter().filter(|e| e.conditions.ready))
            .map(|e| e.address)
            .collect();
        let status = match (ready.is_empty(), dual) {
            (false, _) => Status::Ok,
            (true, true) => Status::Problem,
            (true, false) => Status::Warning,
        };
        checks.push(finding(
            status,
            "endpoints",
            format!("{subject} {family}"),
            if ready.is_empty() {
                format!("no ready {family} endpoint (EndpointSlices of addressType {family})")
            } else {
                format!("{} ready {family} endpoint(s)", ready.len())
            },
        ));
    }
}

/// The backends a cluster IP port should reach on node `node`, as the API lists them: the
/// ready endpoints, else the serving terminating ones (kube-proxy's fallback); with
/// `internalTrafficPolicy: Local`, this node's only. `exact`: false when topology hints may
/// narrow the set (the programmed set must then be a part of it).
fn expected(port: &ServicePort, node: &str) -> (BTreeSet<(IpAddr, u16)>, bool) {
    let local = port.internal_policy == TrafficPolicy::Local;
    let usable: Vec<_> = port
        .endpoints
        .iter()
        .filter(|e| !local || e.node_name.as_deref() == Some(node))
        .collect();
    let ready: Vec<_> = usable.iter().filter(|e| e.conditions.ready).collect();
    let chosen: Vec<_> = if ready.is_empty() {
        usable
            .iter()
            .filter(|e| e.conditions.serving && e.conditions.terminating)
            .collect()
    } else {
        ready
    };
    let hinted = chosen.iter().any(|e| e.hints.is_some());
    (
        chosen.iter().map(|e| (e.address, e.port)).collect(),
        !hinted,
    )
}

/// Backends by (address, port, protocol) of their frontend.
type Served = BTreeMap<(IpAddr, u16, Protocol), BTreeSet<(IpAddr, u16)>>;

/// What the pinned maps serve, both families.
struct Programmed(Served);

impl Programmed {
    fn read(pins: &PinLayout, checks: &mut Vec<Check>) -> Option<Self> {
        let mut served = BTreeMap::new();
        let read = Self::family::<Ipv4Addr>(pins, &mut served)
            .and_then(|()| Self::family::<Ipv6Addr>(pins, &mut served));
        match read {
            Ok(()) => Some(Self(served)),
            Err(e) => {
                checks.push(problem(
                    "maps",
                    pins.root().display().to_string(),
                    format!("cannot read the pinned maps (is the agent running with this --bpf-root?): {e}"),
                ));
                None
            }
        }
    }

    fn family<A: KernelFamily + Address>(
        pins: &PinLayout,
        served: &mut Served,
    ) -> Result<(), MapError> {
        let snapshot = kernel::open::<A>(pins)?.snapshot()?;
        for (frontend, backends) in snapshot.served_ports() {
            let Frontend {
                address,
                port,
                protocol,
                ..
            } = frontend;
            served
                .entry((address.into(), port, protocol))
                .or_default()
                .extend(
                    backends
                        .iter()
                        .map(|b: &Backend<A>| (b.address.into(), b.port)),
                );
        }
        Ok(())
    }
}

fn list(set: &BTreeSet<(IpAddr, u16)>) -> String {
    if set.is_empty() {
        return "none".to_owned();
    }
    set.iter()
        .map(|(a, p)| socket_display(*a, *p))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The cluster IP port is in the maps with the backends the API lists.
fn check_programmed(
    port: &ServicePort,
    node: &str,
    programmed: Option<&Programmed>,
    checks: &mut Vec<Check>,
) {
    let Some(programmed) = programmed else {
        return;
    };
    let subject = format!(
        "{} {}/{}",
        port.name.service,
        socket_display(port.cluster_ip, port.port),
        port.protocol
    );
    let (want, exact) = expected(port, node);
    let Some(have) = programmed
        .0
        .get(&(port.cluster_ip, port.port, port.protocol))
    else {
        checks.push(problem(
            "programmed",
            subject,
            format!(
                "not in the maps (the API lists backends {}): the agent has not programmed it",
                list(&want)
            ),
        ));
        return;
    };
    let agrees = if exact {
        *have == want
    } else {
        have.is_subset(&want) && (have.is_empty() == want.is_empty())
    };
    if agrees {
        checks.push(finding(
            Status::Ok,
            "programmed",
            subject,
            format!("backends {}", list(have)),
        ));
    } else {
        let missing: BTreeSet<_> = want.difference(have).copied().collect();
        let extra: BTreeSet<_> = have.difference(&want).copied().collect();
        checks.push(problem(
            "programmed",
            subject,
            format!(
                "the maps send to {} but the API lists {} (missing: {}; not listed: {})",
                list(have),
                list(&want),
                list(&missing),
                list(&extra)
            ),
        ));
    }
}

/// A TCP connection from here to the cluster IP port answers, where the API lists a ready
/// endpoint; UDP and SCTP ports are not tried.
fn check_connect(port: &ServicePort, timeout: Duration, checks: &mut Vec<Check>) {
    let target = SocketAddr::new(port.cluster_ip, port.port);
    let subject = format!(
        "{} {}/{}",
        port.name.service,
        socket_display(port.cluster_ip, port.port),
        port.protocol
    );
    if port.protocol != Protocol::Tcp {
        checks.push(finding(
            Status::Skipped,
            "connect",
            subject,
            format!("not tried: only TCP is probed ({})", port.protocol),
        ));
        return;
    }
    if !port.endpoints.iter().any(|e| e.conditions.ready) {
        return; // Nothing should answer; `endpoints` says so already.
    }
    let started = Instant::now();
    match TcpStream::connect_timeout(&target, timeout) {
        Ok(_) => checks.push(finding(
            Status::Ok,
            "connect",
            subject,
            format!(
                "answered in {:.1} ms",
                started.elapsed().as_secs_f64() * 1e3
            ),
        )),
        Err(e) => checks.push(problem(
            "connect",
            subject,
            format!(
                "no connection from this node within {} ms: {e}",
                timeout.as_millis()
            ),
        )),
    }
}
