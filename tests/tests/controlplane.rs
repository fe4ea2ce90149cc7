//! The control plane against the test API server, through a kubeconfig: the same kube-rs
//! client and watchers as production.
//!
//! In process (the real source, tracker, model, plan and writer over in-memory maps, whose
//! operation log proves what was and was not rewritten): endpoint scaling, port changes,
//! family changes, an API outage with a 410, a malformed Service beside a good one.
//! In namespaces (the real binary, real packets): dual-stack traffic from the API source,
//! /healthz before and after the first list, traffic through an API outage.
use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use proxy_userspace::{
    family::{Address, Family},
    maps::memory::{Op, SharedMemoryMaps},
    proxier::MetaProxier,
    source::{self, SourceEvent},
    sync::Syncer,
};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use twinstack_lab::{
    agent::{Agent, AgentOptions, AgentSource},
    apiserver::{ApiServer, Kind},
    objects::{ServiceBuilder, SliceBuilder},
    require_root,
    servers::{self, Servers},
    topology::Topology,
};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/api")
}

fn load_fixtures(api: &ApiServer) {
    for file in [
        "service-demo.json",
        "endpointslice-demo-ipv4.json",
        "endpointslice-demo-ipv6.json",
        "node-node-a.json",
    ] {
        api.apply_file(fixtures().join(file)).expect("fixture");
    }
}

/// A Service whose ports target their own names (so the slices' port numbers decide).
fn service(name: &str, cluster_ips: &[&str], ports: &[(&str, &str, u16)]) -> Value {
    let ips: Vec<IpAddr> = cluster_ips
        .iter()
        .map(|ip| ip.parse().expect("IP"))
        .collect();
    ports
        .iter()
        .fold(
            ServiceBuilder::new(name)
                .label("app", name)
                .cluster_ips(&ips),
            |service, (port, protocol, number)| service.port(port, protocol, *number, *port),
        )
        .json()
}

fn slice(service: &str, name: &str, addresses: &[IpAddr], ports: &[(&str, &str, u16)]) -> Value {
    ports
        .iter()
        .fold(
            SliceBuilder::new(service, name).ready(addresses),
            |slice, (port, protocol, number)| slice.port(port, protocol, *number),
        )
        .json()
}

fn v4(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 244, n, 2))
}

fn v6(n: u8) -> IpAddr {
    IpAddr::V6(format!("fd00:10:244:{n:x}::2").parse().expect("IPv6"))
}

const DEMO_PORTS: [(&str, &str, u16); 2] = [("http", "TCP", 8080), ("echo", "UDP", 5353)];

/// The agent's pipeline in this process: kube source → Syncer → writers over in-memory maps.
struct Pipeline {
    syncer: Syncer,
    events: mpsc::Receiver<SourceEvent>,
    v4: SharedMemoryMaps<Ipv4Addr>,
    v6: SharedMemoryMaps<Ipv6Addr>,
    _source: tokio::task::JoinHandle<()>,
}

impl Pipeline {
    async fn start(api: &ApiServer, dir: &Path) -> Self {
        let kubeconfig = dir.join("kubeconfig");
        api.write_kubeconfig(&kubeconfig).expect("kubeconfig");
        let client = source::kube::client(Some(&kubeconfig))
            .await
            .expect("client");
        let (sender, events) = mpsc::channel(1024);
        let source = tokio::spawn(source::kube::watch(client, "node-a".into(), sender));
        let (meta, v4, v6) = MetaProxier::in_memory("node-a", vec![Family::V4, Family::V6]);
        Self {
            syncer: Syncer::new(meta, "node-a", Duration::ZERO),
            events,
            v4,
            v6,
            _source: source,
        }
    }

    /// Syncs whatever the syncer says is due (its gate and min-sync timing, as in the agent).
    fn sync_if_due(&mut self) {
        if self
            .syncer
            .next_sync()
            .is_some_and(|at| at <= Instant::now())
        {
            self.syncer.sync();
        }
    }

    /// Handles events and syncs (as the agent does, with no min sync period) until `done`
    /// holds after a sync, or panics after `limit`.
    async fn until(&mut self, limit: Duration, done: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + limit;
        loop {
            if self.syncer.ready() && self.syncer.next_sync().is_none() && done(self) {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "condition not reached within {limit:?}");
            match tokio::time::timeout(left.min(Duration::from_millis(100)), self.events.recv())
                .await
            {
                Ok(Some(event)) => self.syncer.handle(event),
                Ok(None) => panic!("the source stopped"),
                Err(_) => {}
            }
            while let Ok(event) = self.events.try_recv() {
                self.syncer.handle(event);
            }
            self.sync_if_due();
        }
    }

    /// Handles whatever arrives within `quiet` (for checking that nothing changes).
    async fn idle(&mut self, quiet: Duration) {
        let deadline = Instant::now() + quiet;
        while let Ok(Some(event)) = tokio::time::timeout(
            deadline.saturating_duration_since(Instant::now()),
            self.events.recv(),
        )
        .await
        {
            self.syncer.handle(event);
            self.sync_if_due();
        }
    }
}

/// Frontend → backend addresses served, per family.
fn served<A: Address>(maps: &SharedMemoryMaps<A>) -> Vec<(String, Vec<String>)> {
    let maps = maps.lock().expect("maps");
    maps.served_ports()
        .into_iter()
        .map(|(frontend, backends)| {
            let backends = backends
                .iter()
                .map(|b| format!("{}:{}", b.address, b.port))
                .collect();
            (frontend.to_string(), backends)
        })
        .collect()
}

fn backends_of<A: Address>(maps: &SharedMemoryMaps<A>, frontend: &str) -> Option<usize> {
    served(maps)
        .into_iter()
        .find(|(f, _)| f == frontend)
        .map(|(_, b)| b.len())
}

/// The frontends touched by service-map operations since `mark`.
fn touched<A: Address>(maps: &SharedMemoryMaps<A>, mark: usize) -> BTreeSet<String> {
    let maps = maps.lock().expect("maps");
    maps.ops[mark..]
        .iter()
        .filter_map(|op| match op {
            Op::PutService(f, _) | Op::DeleteService(f, _) => Some(f.to_string()),
            _ => None,
        })
        .collect()
}

fn mark<A: Address>(maps: &SharedMemoryMaps<A>) -> usize {
    maps.lock().expect("maps").ops.len()
}

fn no_violations<A: Address>(maps: &SharedMemoryMaps<A>) {
    let maps = maps.lock().expect("maps");
    assert!(maps.violations.is_empty(), "{:?}", maps.violations);
}

const LIMIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn maps_follow_the_api_server_and_only_changed_service_ports_are_rewritten() {
    let dir = tempfile::tempdir().expect("temp dir");
    let api = ApiServer::new().expect("API server");
    load_fixtures(&api);
    let other_ports = [("web", "TCP", 80)];
    api.apply(service("other", &["10.96.0.20"], &[("web", "TCP", 80)]))
        .unwrap();
    api.apply(slice("other", "other-1", &[v4(4), v4(5)], &other_ports))
        .unwrap();

    let mut p = Pipeline::start(&api, dir.path()).await;
    p.until(LIMIT, |p| {
        backends_of(&p.v4, "10.96.0.10:80/TCP") == Some(2)
            && backends_of(&p.v6, "[fd00:10:96::10]:5353/UDP") == Some(2)
            && backends_of(&p.v4, "10.96.0.20:80/TCP") == Some(2)
            && p.syncer.node().zone.is_some()
    })
    .await;
    assert_eq!(
        p.syncer.node().zone.as_deref(),
        Some("zone-a"),
        "the node is read"
    );

    // Scale up, then down: only the demo IPv4 frontends are rewritten.
    let (m4, m6) = (mark(&p.v4), mark(&p.v6));
    api.apply(slice(
        "demo",
        "demo-ipv4",
        &[v4(2), v4(3), v4(6)],
        &DEMO_PORTS,
    ))
    .unwrap();
    p.until(LIMIT, |p| {
        backends_of(&p.v4, "10.96.0.10:80/TCP") == Some(3)
    })
    .await;
    assert_eq!(
        touched(&p.v4, m4),
        BTreeSet::from([
            "10.96.0.10:80/TCP".to_owned(),
            "10.96.0.10:5353/UDP".to_owned()
        ])
    );
    assert!(
        touched(&p.v6, m6).is_empty(),
        "IPv6 frontends rewritten by an IPv4 change"
    );
    let m4 = mark(&p.v4);
    api.apply(slice("demo", "demo-ipv4", &[v4(2)], &DEMO_PORTS))
        .unwrap();
    p.until(LIMIT, |p| {
        backends_of(&p.v4, "10.96.0.10:5353/UDP") == Some(1)
    })
    .await;
    assert!(
        !touched(&p.v4, m4).contains("10.96.0.20:80/TCP"),
        "an unchanged Service was rewritten"
    );

    // Change one port: the other port's frontends are not rewritten.
    let (m4, m6) = (mark(&p.v4), mark(&p.v6));
    let mut demo = api.get(Kind::Service, "default", "demo").expect("demo");
    demo["spec"]["ports"][0]["port"] = json!(8081);
    api.apply(demo.clone()).unwrap();
    p.until(LIMIT, |p| {
        backends_of(&p.v4, "10.96.0.10:8081/TCP") == Some(1)
            && backends_of(&p.v4, "10.96.0.10:80/TCP").is_none()
            && backends_of(&p.v6, "[fd00:10:96::10]:8081/TCP") == Some(2)
    })
    .await;
    let changed = touched(&p.v4, m4);
    assert!(
        !changed.contains("10.96.0.10:5353/UDP"),
        "unchanged port rewritten: {changed:?}"
    );
    assert!(!touched(&p.v6, m6).contains("[fd00:10:96::10]:5353/UDP"));

    // RequireDualStack → SingleStack: the IPv6 frontends go, IPv4 is not touched; and back.
    let (m4, m6) = (mark(&p.v4), mark(&p.v6));
    demo["spec"]["ipFamilyPolicy"] = json!("SingleStack");
    demo["spec"]["ipFamilies"] = json!(["IPv4"]);
    demo["spec"]["clusterIPs"] = json!(["10.96.0.10"]);
    api.apply(demo.clone()).unwrap();
    p.until(LIMIT, |p| served(&p.v6).is_empty()).await;
    assert!(
        touched(&p.v4, m4).is_empty(),
        "IPv4 rewritten by losing IPv6"
    );
    assert!(!touched(&p.v6, m6).is_empty());
    let m4 = mark(&p.v4);
    demo["spec"]["ipFamilyPolicy"] = json!("RequireDualStack");
    demo["spec"]["ipFamilies"] = json!(["IPv4", "IPv6"]);
    demo["spec"]["clusterIPs"] = json!(["10.96.0.10", "fd00:10:96::10"]);
    api.apply(demo).unwrap();
    p.until(LIMIT, |p| {
        backends_of(&p.v6, "[fd00:10:96::10]:5353/UDP") == Some(2)
    })
    .await;
    assert!(
        touched(&p.v4, m4).is_empty(),
        "IPv4 rewritten by gaining IPv6"
    );

    // A malformed Service beside good ones: reported and skipped, the others untouched.
    let invalid_before = p.syncer.counters.invalid;
    let m4 = mark(&p.v4);
    let mut bad = service("bad", &["10.96.0.30"], &[("web", "TCP", 80)]);
    bad["spec"]["ipFamilies"] = json!(["IPv6"]);
    api.apply(bad).unwrap();
    api.apply(slice("bad", "bad-1", &[v4(7)], &[("web", "TCP", 80)]))
        .unwrap();
    p.until(LIMIT, |p| p.syncer.counters.invalid > invalid_before)
        .await;
    assert!(backends_of(&p.v4, "10.96.0.30:80/TCP").is_none());
    assert!(
        touched(&p.v4, m4).is_empty(),
        "a bad Service disturbed the maps"
    );
    assert_eq!(backends_of(&p.v4, "10.96.0.20:80/TCP"), Some(2));
    no_violations(&p.v4);
    no_violations(&p.v6);
}

#[tokio::test]
async fn an_api_outage_keeps_the_maps_and_a_relist_after_410_converges() {
    let dir = tempfile::tempdir().expect("temp dir");
    let api = ApiServer::new().expect("API server");
    load_fixtures(&api);
    let mut p = Pipeline::start(&api, dir.path()).await;
    p.until(LIMIT, |p| {
        backends_of(&p.v4, "10.96.0.10:80/TCP") == Some(2)
    })
    .await;
    let before = served(&p.v4);
    let lists_before = api.requests(Kind::EndpointSlice).lists;

    // The API server goes away: nothing is flushed.
    api.stop();
    let m4 = mark(&p.v4);
    p.idle(Duration::from_secs(2)).await;
    assert_eq!(
        mark(&p.v4),
        m4,
        "maps written while the API server was away"
    );
    assert_eq!(served(&p.v4), before);

    // It comes back with changes, and the history the watches would resume from is gone.
    api.apply(slice("demo", "demo-ipv4", &[v4(2)], &DEMO_PORTS))
        .unwrap();
    api.delete(Kind::EndpointSlice, "default", "demo-ipv6")
        .unwrap();
    api.compact();
    api.start().expect("restart");
    p.until(Duration::from_secs(30), |p| {
        backends_of(&p.v4, "10.96.0.10:80/TCP") == Some(1)
            && backends_of(&p.v6, "[fd00:10:96::10]:80/TCP") == Some(0)
    })
    .await;
    assert!(
        api.requests(Kind::EndpointSlice).lists > lists_before,
        "the watcher relisted"
    );
    no_violations(&p.v4);
    no_violations(&p.v6);
}

/// An API server inside the node namespace, where the agent can reach its loopback.
fn api_in(node: &twinstack_lab::netns::Netns) -> Arc<ApiServer> {
    Arc::new(node.enter(|| ApiServer::new().expect("API server")))
}

fn request(topology: &Topology, target: SocketAddr, udp: bool) -> std::io::Result<String> {
    topology.client.netns.enter(move || {
        let timeout = Duration::from_secs(1);
        let answer = if udp {
            servers::udp_request(target, timeout)
        } else {
            servers::tcp_request(target, timeout)
        }?;
        assert_eq!(
            answer.reply_from, target,
            "the client must see the cluster IP"
        );
        Ok(answer.backend)
    })
}

fn backends_answering(topology: &Topology, target: SocketAddr, udp: bool) -> BTreeSet<String> {
    (0..30)
        .map(|i| {
            request(topology, target, udp)
                .unwrap_or_else(|e| panic!("request {i} to {target}: {e}"))
        })
        .collect()
}

#[test]
fn the_agent_serves_from_the_api_server_and_rides_out_an_outage() {
    require_root();
    let topology = Topology::new(2);
    let _servers: Vec<Servers> = topology
        .backends
        .iter()
        .map(|pod| Servers::start(pod, 8080, 5353))
        .collect();
    let api = api_in(&topology.node);
    api.set_unavailable(true);
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig).expect("kubeconfig");
    load_fixtures(&api);

    let agent = Agent::launch(
        &topology.node,
        AgentOptions {
            source: AgentSource::Kubeconfig(&kubeconfig),
            cluster_cidr: "10.244.0.0/16,fd00:10:244::/56",
            extra: vec!["--min-sync-period".into(), "100ms".into()],
        },
    );
    // Not healthy before the first full lists.
    let deadline = Instant::now() + Duration::from_secs(10);
    while agent.healthz() != Some(503) {
        assert!(
            Instant::now() < deadline,
            "no 503 before the first list:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(agent.healthz(), Some(503), "healthy without any list");
    api.set_unavailable(false);
    agent.wait_healthy(Duration::from_secs(20));

    let http4 = SocketAddr::new("10.96.0.10".parse().unwrap(), 80);
    let http6 = SocketAddr::new("fd00:10:96::10".parse().unwrap(), 80);
    let echo6 = SocketAddr::new("fd00:10:96::10".parse().unwrap(), 5353);
    let both = BTreeSet::from(["backend-a".to_owned(), "backend-b".to_owned()]);
    assert_eq!(backends_answering(&topology, http4, false), both);
    assert_eq!(backends_answering(&topology, http6, false), both);
    assert_eq!(backends_answering(&topology, echo6, true), both);

    // A malformed Service beside the good one is counted (and logged by name), nothing else.
    let mut bad = service("bad", &["10.96.0.30"], &[("web", "TCP", 80)]);
    bad["spec"]["ipFamilies"] = json!(["IPv6"]);
    api.apply(bad).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while agent.metric("twinstack_invalid_objects_total") < Some(1.0) {
        assert!(
            Instant::now() < deadline,
            "not counted:\n{}",
            agent.metrics()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        agent.log().contains("default/bad"),
        "the bad Service is named in the log"
    );
    assert_eq!(backends_answering(&topology, http4, false), both);

    // Kill the API server: traffic keeps flowing.
    api.stop();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(backends_answering(&topology, http4, false), both);
    assert_eq!(backends_answering(&topology, echo6, true), both);

    // It comes back with backend-b gone from both families, and its history compacted.
    api.apply(slice("demo", "demo-ipv4", &[v4(2)], &DEMO_PORTS))
        .unwrap();
    api.apply(slice("demo", "demo-ipv6", &[v6(2)], &DEMO_PORTS))
        .unwrap();
    api.compact();
    let api2 = api.clone();
    topology.node.enter(move || api2.start()).expect("restart");
    let only_a = BTreeSet::from(["backend-a".to_owned()]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while backends_answering(&topology, http4, false) != only_a
        || backends_answering(&topology, http6, false) != only_a
    {
        assert!(Instant::now() < deadline, "not converged:\n{}", agent.log());
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_control_plane_measurement_programs_everything_and_times_every_update() {
    use twinstack_lab::controlplane::{ControlPlaneConfig, measure};
    let services = std::env::var("TWINSTACK_CP_SERVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let figures = measure(&ControlPlaneConfig {
        services,
        endpoints: 10,
        updates: 20,
        min_sync_period: Duration::ZERO,
    });
    eprintln!("{figures:#?}");
    assert_eq!(figures.update_latencies.len(), 20);
    assert!(
        figures.agent_programmed.is_some(),
        "the agent logs its programming time"
    );
    assert!(figures.rss_kib > 0 && figures.map_memory_bytes > 0);
}
