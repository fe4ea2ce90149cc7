//! Measures the control plane as an operator sees it: the real agent against the test API
//! server holding N dual-stack Services with E endpoints per family. Cold start (spawn to
//! healthy, and the agent's own list/program times), memory (RSS, BPF maps), and the latency
//! from an EndpointSlice change at the API server to the kernel map holding it.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
    time::{Duration, Instant},
};

use aya::maps::{HashMap, Map, MapData};
use proxy_common::{ServiceKeyV4, ServiceValue, map_names, protocol, scope};
use serde_json::Value;

use crate::{
    agent::{Agent, AgentOptions, AgentSource},
    apiserver::ApiServer,
    netns::Netns,
    objects::{ServiceBuilder, SliceBuilder},
    unique,
};

#[derive(Clone, Debug)]
pub struct ControlPlaneConfig {
    pub services: usize,
    /// Endpoints per Service and family.
    pub endpoints: usize,
    /// EndpointSlice updates timed after the cold start.
    pub updates: usize,
    /// The agent's `--min-sync-period` during the update measurement.
    pub min_sync_period: Duration,
}

#[derive(Clone, Debug)]
pub struct ControlPlaneFigures {
    pub services: usize,
    pub endpoints: usize,
    /// Process start to /healthz 200 (BPF load, lists, programming, attach).
    pub cold_start: Duration,
    /// The agent's own figures from its log: waiting for the first lists, then programming.
    pub agent_listed: Option<Duration>,
    pub agent_programmed: Option<Duration>,
    pub rss_kib: u64,
    pub peak_rss_kib: u64,
    /// Kernel memory of every map (fdinfo memlock), from `twinstack bpf map list`.
    pub map_memory_bytes: u64,
    /// Change at the API server → map updated, one per update.
    pub update_latencies: Vec<Duration>,
}

fn service_ip4(i: usize) -> Ipv4Addr {
    // 10.96.0.0/12: index → 10.96.0.1 upwards, skipping nothing that matters for tests.
    let n = 0x0a60_0000u32 + 1 + i as u32;
    Ipv4Addr::from(n)
}

fn service_ip6(i: usize) -> Ipv6Addr {
    Ipv6Addr::from(u128::from("fd00:10:96::".parse::<Ipv6Addr>().expect("v6")) + 1 + i as u128)
}

fn endpoint4(i: usize, j: usize, endpoints: usize) -> Ipv4Addr {
    // 10.244.0.0/16 holds 65,534 pods; larger benchmarks share pods between Services.
    let n = (i * endpoints + j) % 65_000;
    Ipv4Addr::from(0x0af4_0000u32 + 2 + n as u32)
}

fn endpoint6(i: usize, j: usize, endpoints: usize) -> Ipv6Addr {
    Ipv6Addr::from(
        u128::from("fd00:10:244::".parse::<Ipv6Addr>().expect("v6"))
            + 2
            + (i * endpoints + j) as u128,
    )
}

fn service(i: usize) -> Value {
    ServiceBuilder::new(&format!("svc-{i}"))
        .namespace("bench")
        .cluster_ips(&[service_ip4(i).into(), service_ip6(i).into()])
        .port("http", "TCP", 80, 8080)
        .json()
}

fn slice(i: usize, v6: bool, addresses: &[IpAddr]) -> Value {
    let name = format!("svc-{i}-{}", if v6 { "ipv6" } else { "ipv4" });
    SliceBuilder::new(&format!("svc-{i}"), &name)
        .namespace("bench")
        .address_type(if v6 { "IPv6" } else { "IPv4" })
        .port("http", "TCP", 8080)
        .ready(addresses)
        .json()
}

fn slice4(i: usize, endpoints: usize, count: usize) -> Value {
    let addresses: Vec<IpAddr> = (0..count)
        .map(|j| endpoint4(i, j, endpoints).into())
        .collect();
    slice(i, false, &addresses)
}

fn slice6(i: usize, endpoints: usize) -> Value {
    let addresses: Vec<IpAddr> = (0..endpoints)
        .map(|j| endpoint6(i, j, endpoints).into())
        .collect();
    slice(i, true, &addresses)
}

/// `key=value` (digits) after `field=` in a log line.
fn logged_ms(log: &str, field: &str) -> Option<Duration> {
    let line = log.lines().find(|l| l.contains("first sync programmed"))?;
    let value = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{field}=")))?;
    Some(Duration::from_millis(value.trim().parse().ok()?))
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The slot-0 backend count of a Service's IPv4 frontend, read straight from the pinned map.
struct ServiceProbe {
    map: HashMap<MapData, ServiceKeyV4, ServiceValue>,
}

impl ServiceProbe {
    fn open(agent: &Agent) -> Self {
        let path = agent
            .bpf_root
            .join(format!("v{}", proxy_common::LAYOUT_VERSION))
            .join("maps")
            .join(map_names::SERVICES_V4);
        let data = MapData::from_pin(&path).expect("services map pin");
        let map = HashMap::try_from(Map::from_map_data(data).expect("map")).expect("hash map");
        Self { map }
    }

    fn count(&self, i: usize) -> Option<u16> {
        let key = ServiceKeyV4::new(service_ip4(i), 80, protocol::TCP, scope::EXTERNAL, 0);
        self.map.get(&key, 0).ok().map(|v| v.count)
    }
}

/// Runs the measurement in a namespace of its own (no pods: nothing but the control plane).
pub fn measure(config: &ControlPlaneConfig) -> ControlPlaneFigures {
    crate::require_root();
    let node = Netns::create(&unique("tscp"));
    let api = Arc::new(node.enter(|| ApiServer::new().expect("API server")));
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig).expect("kubeconfig");
    let mut objects = Vec::with_capacity(config.services * 3);
    for i in 0..config.services {
        objects.push(service(i));
        objects.push(slice4(i, config.endpoints, config.endpoints));
        objects.push(slice6(i, config.endpoints));
    }
    api.apply_all(objects).expect("loading the API server");

    let launched = Instant::now();
    let mut agent = Agent::launch(
        &node,
        AgentOptions {
            source: AgentSource::Kubeconfig(&kubeconfig),
            cluster_cidr: "10.244.0.0/16,fd00:10:244::/56",
            // The namespace has no pods: the control plane alone is measured.
            extra: vec![
                "--min-sync-period".into(),
                humantime_ms(config.min_sync_period),
            ],
        },
    );
    let deadline = launched + Duration::from_secs(120);
    while agent.healthz() != Some(200) {
        assert!(
            Instant::now() < deadline && agent.running(),
            "agent not healthy:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let cold_start = launched.elapsed();
    let log = agent.log();
    let pid = agent.pid().expect("agent running");
    let probe = ServiceProbe::open(&agent);
    assert_eq!(
        probe.count(config.services - 1),
        Some(config.endpoints as u16),
        "the last Service is programmed"
    );

    // Updates: one Service at a time loses, then regains, an endpoint.
    let mut update_latencies = Vec::with_capacity(config.updates);
    for k in 0..config.updates {
        let i = (k * 7919) % config.services;
        let before = probe.count(i).expect("programmed");
        let want = if before as usize == config.endpoints {
            config.endpoints - 1
        } else {
            config.endpoints
        };
        let start = Instant::now();
        api.apply(slice4(i, config.endpoints, want))
            .expect("update");
        let limit = start + Duration::from_secs(10) + config.min_sync_period;
        while probe.count(i) != Some(want as u16) {
            assert!(
                Instant::now() < limit,
                "update {k} not programmed:\n{}",
                agent.log()
            );
            std::hint::spin_loop();
        }
        update_latencies.push(start.elapsed());
        // Space updates past the min sync period so each one is timed on its own.
        std::thread::sleep(config.min_sync_period + Duration::from_millis(2));
    }

    let maps: Value = serde_json::from_str(&agent.twinstack(&["bpf", "map", "list", "-o", "json"]))
        .expect("map list JSON");
    let map_memory_bytes = maps
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["memory_bytes"].as_u64())
        .sum();
    ControlPlaneFigures {
        services: config.services,
        endpoints: config.endpoints,
        cold_start,
        agent_listed: logged_ms(&log, "listed_ms"),
        agent_programmed: logged_ms(&log, "programmed_ms"),
        rss_kib: status_kib(pid, "VmRSS:"),
        peak_rss_kib: status_kib(pid, "VmHWM:"),
        map_memory_bytes,
        update_latencies,
    }
}

fn humantime_ms(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}
