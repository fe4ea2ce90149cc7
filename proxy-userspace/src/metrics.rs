//! `GET /metrics` (Prometheus text format) on `--metrics-bind-address`: what the agent did
//! (syncs, invalid objects skipped, map writes per family), what the datapath did (packets
//! per outcome, summed over CPUs from the per-CPU `counters` map at scrape time), and
//! kube-proxy's own series under its names, types and buckets (`kubeproxy_*`, from
//! kubernetes' `pkg/proxy/metrics`), so dashboards and alerts made for kube-proxy keep
//! working. A leaf: it is fed plain figures and observations and knows nothing of the syncer
//! or the writer.
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{Router, http::header, routing::get};
use aya::maps::{Map, MapData, PerCpuArray};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{
        counter::ConstCounter,
        gauge::ConstGauge,
        histogram::{Histogram, exponential_buckets, linear_buckets},
    },
    registry::Registry,
};
use proxy_common::{counter::Counter, map_names};

use crate::maps::pins::PinLayout;

/// One family's map-writer figures.
#[derive(Clone, Copy, Debug, Default)]
pub struct FamilyFigures {
    /// `IPv4` / `IPv6` (the `family` label).
    pub family: &'static str,
    pub service_writes: u64,
    pub backend_writes: u64,
    pub frontends_written: u64,
    pub frontends: usize,
    pub backends: usize,
}

/// The agent's figures, refreshed after every sync.
#[derive(Clone, Debug, Default)]
pub struct AgentFigures {
    pub syncs: u64,
    pub services_synced: u64,
    pub invalid: u64,
    pub repairs: u64,
    pub families: Vec<FamilyFigures>,
    pub conntrack: ConntrackFigures,
    pub changes: crate::tracker::ChangeCounts,
    /// When the maps were last synced successfully, and when a change was last queued
    /// (seconds since the epoch).
    pub last_synced: Option<f64>,
    pub last_queued: Option<f64>,
    /// With `--service-metrics`: the Service of each frontend, for the per-Service series.
    pub frontend_services: Option<Arc<FrontendServices>>,
}

/// The Service each frontend (address, port, protocol) is served for.
pub type FrontendServices = std::collections::BTreeMap<
    (std::net::IpAddr, u16, crate::model::Protocol),
    crate::model::ServiceName,
>;

/// kube-proxy's histograms, observed by the agent after each sync.
#[derive(Clone, Debug)]
pub struct SyncHistograms {
    /// Every sync (`kubeproxy_sync_proxy_rules_duration_seconds`).
    pub all: Histogram,
    /// Full passes: the first sync, and each `--sync-period` pass.
    pub full: Histogram,
    /// Min-sync batches of changed Services.
    pub partial: Histogram,
    /// From a slice's `last-change-trigger-time` to its change written to the maps.
    pub network_programming: Histogram,
}

impl Default for SyncHistograms {
    fn default() -> Self {
        // kube-proxy's buckets: 1 ms doubling 15 times for syncs; for network programming a
        // 0 bucket, then 0.25 s and 0.5 s, each second to 59 s, every 5 s to 115 s, every 30 s
        // to 5 min.
        let sync = || Histogram::new(exponential_buckets(0.001, 2.0, 15));
        let programming = std::iter::once(0.0)
            .chain(linear_buckets(0.25, 0.25, 2))
            .chain(linear_buckets(1.0, 1.0, 59))
            .chain(linear_buckets(60.0, 5.0, 12))
            .chain(linear_buckets(120.0, 30.0, 7));
        Self {
            all: sync(),
            full: sync(),
            partial: sync(),
            network_programming: Histogram::new(programming),
        }
    }
}

impl SyncHistograms {
    /// A sync that took `elapsed`; `full` for a full pass.
    pub fn observe_sync(&self, elapsed: std::time::Duration, full: bool) {
        let seconds = elapsed.as_secs_f64();
        self.all.observe(seconds);
        if full {
            self.full.observe(seconds)
        } else {
            self.partial.observe(seconds)
        }
    }

    /// Changes triggered at `trigger_times` are in the maps now.
    pub fn observe_programmed(&self, trigger_times: &[std::time::SystemTime]) {
        let now = std::time::SystemTime::now();
        for time in trigger_times {
            // A trigger time ahead of this node's clock (skew) counts as no latency.
            let latency = now.duration_since(*time).unwrap_or_default();
            self.network_programming.observe(latency.as_secs_f64());
        }
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds",
            self.all.clone(),
        );
        registry.register(
            "kubeproxy_sync_full_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for full resyncs",
            self.full.clone(),
        );
        registry.register(
            "kubeproxy_sync_partial_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for partial resyncs",
            self.partial.clone(),
        );
        registry.register(
            "kubeproxy_network_programming_duration_seconds",
            "In Cluster Network Programming Latency in seconds",
            self.network_programming.clone(),
        );
    }
}

/// The conntrack collector's figures, refreshed after every collection.
#[derive(Clone, Copy, Debug, Default)]
pub struct ConntrackFigures {
    pub collections: u64,
    pub deleted: u64,
    /// Entries (both families, both directions) at the last collection.
    pub entries: usize,
}

struct AgentCollector {
    figures: Arc<Mutex<AgentFigures>>,
    packets: Mutex<PerCpuArray<MapData, u64>>,
    /// Where the traffic counters are read from (`--service-metrics`).
    pins: PinLayout,
}

/// The per-Service traffic series (`--service-metrics`): each frontend's counters, labelled
/// by its Service.
fn service_series(
    encoder: &mut DescriptorEncoder,
    pins: &PinLayout,
    names: &FrontendServices,
) -> Result<(), std::fmt::Error> {
    let mut rows = match crate::debug::services(pins) {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!(%e, "per-Service series: cannot read the service maps");
            return Ok(());
        }
    };
    if let Err(e) = crate::debug::with_traffic(&mut rows, pins) {
        tracing::warn!(%e, "per-Service series: cannot read the traffic counters");
        return Ok(());
    }
    let mut labelled = Vec::new();
    for row in &rows {
        let Some(name) = names.get(&(row.address, row.port, row.protocol)) else {
            continue;
        };
        let frontend = format!(
            "{}/{}",
            crate::family::socket_display(row.address, row.port),
            row.protocol
        );
        let labels = [
            ("namespace", name.namespace.to_string()),
            ("service", name.name.to_string()),
            ("family", row.family.kubernetes_name().to_owned()),
            ("frontend", frontend),
        ];
        labelled.push((labels, row.stats.unwrap_or_default()));
    }
    type Pick = fn(&crate::debug::Traffic) -> u64;
    let series: [(&str, &str, Option<&str>, Pick); 5] = [
        (
            "twinstack_service_connections",
            "Connections through a Service's frontend.",
            None,
            |t| t.connections,
        ),
        (
            "twinstack_service_packets",
            "Packets through a Service's frontend, by direction.",
            Some("to"),
            |t| t.packets_to,
        ),
        ("twinstack_service_packets", "", Some("from"), |t| {
            t.packets_from
        }),
        (
            "twinstack_service_bytes",
            "Bytes through a Service's frontend, by direction.",
            Some("to"),
            |t| t.bytes_to,
        ),
        ("twinstack_service_bytes", "", Some("from"), |t| {
            t.bytes_from
        }),
    ];
    // One family per name: both directions of packets (bytes) together.
    for (name, help, directions) in [
        ("twinstack_service_connections", series[0].1, &series[0..1]),
        ("twinstack_service_packets", series[1].1, &series[1..3]),
        ("twinstack_service_bytes", series[3].1, &series[3..5]),
    ] {
        let metric = ConstCounter::new(0u64);
        let mut family = encoder.encode_descriptor(name, help, None, metric.metric_type())?;
        for (labels, traffic) in &labelled {
            for (_, _, direction, pick) in directions {
                let mut all: Vec<(&str, &str)> =
                    labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
                if let Some(direction) = direction {
                    all.push(("direction", direction));
                }
                ConstCounter::new(pick(traffic)).encode(family.encode_family(&all)?)?;
            }
        }
    }
    Ok(())
}

impl std::fmt::Debug for AgentCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentCollector").finish_non_exhaustive()
    }
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: &[(&[(&str, &str)], u64)],
) -> Result<(), std::fmt::Error> {
    let metric = ConstCounter::new(0u64);
    let mut family = encoder.encode_descriptor(name, help, None, metric.metric_type())?;
    for (labels, value) in values {
        let labels: Vec<(&str, &str)> = labels.to_vec();
        ConstCounter::new(*value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: &[(&[(&str, &str)], i64)],
) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(0i64);
    let mut family = encoder.encode_descriptor(name, help, None, metric.metric_type())?;
    for (labels, value) in values {
        let labels: Vec<(&str, &str)> = labels.to_vec();
        ConstGauge::new(*value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn float_gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: f64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

impl Collector for AgentCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let figures = self.figures.lock().map(|f| f.clone()).unwrap_or_default();
        let c = &figures;
        counter(
            &mut encoder,
            "twinstack_syncs",
            "Syncs of changed Services.",
            &[(&[], c.syncs)],
        )?;
        counter(
            &mut encoder,
            "twinstack_services_synced",
            "Services rebuilt by syncs.",
            &[(&[], c.services_synced)],
        )?;
        counter(
            &mut encoder,
            "twinstack_invalid_objects",
            "Objects or Services skipped as invalid (each is logged by name).",
            &[(&[], c.invalid)],
        )?;
        counter(
            &mut encoder,
            "twinstack_repairs",
            "Periodic passes re-reading the maps and repairing drift.",
            &[(&[], c.repairs)],
        )?;
        let labels: Vec<[(&str, &str); 1]> = figures
            .families
            .iter()
            .map(|f| [("family", f.family)])
            .collect();
        let per_family = |pick: &dyn Fn(&FamilyFigures) -> u64| -> Vec<(&[(&str, &str)], u64)> {
            figures
                .families
                .iter()
                .zip(&labels)
                .map(|(f, l)| (&l[..], pick(f)))
                .collect()
        };
        counter(
            &mut encoder,
            "twinstack_service_map_writes",
            "Service map entries written (slot 0 and backend slots).",
            &per_family(&|f| f.service_writes),
        )?;
        counter(
            &mut encoder,
            "twinstack_backend_map_writes",
            "Backend map entries written.",
            &per_family(&|f| f.backend_writes),
        )?;
        counter(
            &mut encoder,
            "twinstack_frontends_written",
            "Frontends (re)written.",
            &per_family(&|f| f.frontends_written),
        )?;
        let gauges = |pick: &dyn Fn(&FamilyFigures) -> usize| -> Vec<(&[(&str, &str)], i64)> {
            figures
                .families
                .iter()
                .zip(&labels)
                .map(|(f, l)| (&l[..], pick(f) as i64))
                .collect()
        };
        gauge(
            &mut encoder,
            "twinstack_frontends",
            "Frontends programmed.",
            &gauges(&|f| f.frontends),
        )?;
        gauge(
            &mut encoder,
            "twinstack_backends",
            "Backends programmed.",
            &gauges(&|f| f.backends),
        )?;

        counter(
            &mut encoder,
            "twinstack_conntrack_collections",
            "Conntrack garbage collections run.",
            &[(&[], c.conntrack.collections)],
        )?;
        counter(
            &mut encoder,
            "twinstack_conntrack_expired",
            "Conntrack entries deleted as expired by the collector.",
            &[(&[], c.conntrack.deleted)],
        )?;
        gauge(
            &mut encoder,
            "twinstack_conntrack_entries",
            "Conntrack entries (both families, both directions) at the last collection.",
            &[(&[], c.conntrack.entries as i64)],
        )?;

        // kube-proxy's counters and gauges (a counter's `_total` is added by the encoder).
        let k = &figures.changes;
        counter(
            &mut encoder,
            "kubeproxy_sync_proxy_rules_endpoint_changes",
            "Cumulative proxy rules Endpoint changes",
            &[(&[], k.endpoint_changes)],
        )?;
        gauge(
            &mut encoder,
            "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
            "Pending proxy rules Endpoint changes",
            &[(&[], k.endpoint_changes_pending as i64)],
        )?;
        counter(
            &mut encoder,
            "kubeproxy_sync_proxy_rules_service_changes",
            "Cumulative proxy rules Service changes",
            &[(&[], k.service_changes)],
        )?;
        gauge(
            &mut encoder,
            "kubeproxy_sync_proxy_rules_service_changes_pending",
            "Pending proxy rules Service changes",
            &[(&[], k.service_changes_pending as i64)],
        )?;
        // Go's zero (0) until it happened, as kube-proxy's unset gauges.
        float_gauge(
            &mut encoder,
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "The last time proxy rules were successfully synced",
            figures.last_synced.unwrap_or(0.0),
        )?;
        float_gauge(
            &mut encoder,
            "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
            "The last time a sync of proxy rules was queued",
            figures.last_queued.unwrap_or(0.0),
        )?;

        if let Some(names) = &figures.frontend_services {
            service_series(&mut encoder, &self.pins, names)?;
        }
        if let Ok(packets) = self.packets.lock() {
            let values: Vec<(&str, u64)> = Counter::ALL
                .iter()
                .map(|c| {
                    let sum = packets
                        .get(&c.index(), 0)
                        .map(|per_cpu| per_cpu.iter().sum())
                        .unwrap_or(0);
                    (c.name(), sum)
                })
                .collect();
            let outcome_labels: Vec<[(&str, &str); 1]> =
                values.iter().map(|(n, _)| [("outcome", *n)]).collect();
            let rows: Vec<(&[(&str, &str)], u64)> = outcome_labels
                .iter()
                .zip(&values)
                .map(|(l, (_, v))| (&l[..], *v))
                .collect();
            counter(
                &mut encoder,
                "twinstack_datapath_packets",
                "Packets seen by the datapath, by outcome.",
                &rows,
            )?;
        }
        Ok(())
    }
}

/// The registry, with the datapath counters read from the pins under `pins` (which the loader
/// has checked are all there).
pub fn registry(
    pins: &PinLayout,
    figures: Arc<Mutex<AgentFigures>>,
    histograms: &SyncHistograms,
) -> Result<Registry, aya::maps::MapError> {
    let map = Map::from_map_data(MapData::from_pin(pins.map(map_names::COUNTERS))?)?;
    let packets = Mutex::new(PerCpuArray::try_from(map)?);
    let mut registry = Registry::default();
    histograms.register(&mut registry);
    registry.register_collector(Box::new(AgentCollector {
        figures,
        packets,
        pins: pins.clone(),
    }));
    Ok(registry)
}

/// Binds `address` and returns the server task.
pub async fn bind(
    address: SocketAddr,
    registry: Registry,
) -> std::io::Result<impl std::future::Future<Output = std::io::Result<()>>> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    let registry = Arc::new(registry);
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let registry = registry.clone();
            async move {
                let mut body = String::new();
                let _ = prometheus_client::encoding::text::encode(&mut body, &registry);
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    body,
                )
            }
        }),
    );
    Ok(async move { axum::serve(listener, app).await })
}
