//! Section 3: the control plane. kube-proxy's side (how long `iptables-restore` and `nft -f`
//! take to load the same 10,000 Services) is measured here; twinstack's side (cold programming,
//! update latency, agent RSS, BPF map memory) arrives with the control-plane issue through
//! [`twinstack_figures`] and is reported as not measured until then.
use std::fmt::Write as _;

use twinstack_lab::netns::Netns;

use crate::{
    cluster::Cluster,
    e2e::LoadSample,
    kubeproxy::{self, Layout},
    stats::{Summary, number},
};

/// Twinstack's control-plane figures.
pub(crate) struct TwinstackFigures {
    pub services: usize,
    /// The agent's own work for the cold start: waiting for and reading the first lists, then
    /// programming every Service (from its log).
    pub cold_programming_s: Summary,
    /// Process start to /healthz 200 (adds loading the BPF object and attaching).
    pub cold_start_wall_s: Summary,
    /// Milliseconds from a manifest change to the maps holding it.
    pub update_latency_p50_ms: Summary,
    pub update_latency_p99_ms: Summary,
    /// The agent's resident memory with those Services programmed.
    pub agent_rss_mib: Summary,
    /// Memory the kernel accounts to the agent's BPF maps.
    pub bpf_map_memory_mib: Summary,
}

/// Twinstack's figures: the real agent against the test API server through a kubeconfig
/// (`twinstack_lab::controlplane::measure`), `plan.load_services` dual-stack Services × 10
/// endpoints per family, `plan.load_reps` cold starts, each followed by timed EndpointSlice
/// updates with `--min-sync-period 0` (so the latency is the pipeline's own).
pub(crate) fn twinstack_figures(plan: &crate::Plan) -> Option<TwinstackFigures> {
    use twinstack_lab::controlplane::{ControlPlaneConfig, measure};
    let config = ControlPlaneConfig {
        services: plan.load_services,
        endpoints: 10,
        updates: if plan.profile == "full" { 200 } else { 40 },
        min_sync_period: std::time::Duration::ZERO,
    };
    let mut cold = Vec::new();
    let mut wall = Vec::new();
    let (mut p50, mut p99, mut rss, mut maps) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..plan.load_reps.max(1) {
        let f = measure(&config);
        if let (Some(listed), Some(programmed)) = (f.agent_listed, f.agent_programmed) {
            cold.push((listed + programmed).as_secs_f64());
        }
        wall.push(f.cold_start.as_secs_f64());
        let mut latencies: Vec<f64> = f
            .update_latencies
            .iter()
            .map(|d| d.as_secs_f64() * 1e3)
            .collect();
        latencies.sort_by(f64::total_cmp);
        p50.push(crate::stats::percentile_sorted(&latencies, 50.0));
        p99.push(crate::stats::percentile_sorted(&latencies, 99.0));
        rss.push(f.rss_kib as f64 / 1024.0);
        maps.push(f.map_memory_bytes as f64 / (1024.0 * 1024.0));
    }
    Some(TwinstackFigures {
        services: plan.load_services,
        cold_programming_s: Summary::of(&cold),
        cold_start_wall_s: Summary::of(&wall),
        update_latency_p50_ms: Summary::of(&p50),
        update_latency_p99_ms: Summary::of(&p99),
        agent_rss_mib: Summary::of(&rss),
        bpf_map_memory_mib: Summary::of(&maps),
    })
}

/// What loading kube-proxy's layouts took, seconds per family, several loads each.
pub(crate) struct LoadTimes {
    pub services: usize,
    pub rows: Vec<(Layout, Summary, Summary)>,
}

/// Loads each layout of `services` Services into a fresh, empty namespace (the rules are
/// removed between loads), as kube-proxy's first full sync does, until there are `reps` loads
/// counting the `earlier` ones the end-to-end runs made of the same size.
pub(crate) fn kube_proxy_load_times(
    services: usize,
    reps: usize,
    earlier: &[LoadSample],
) -> anyhow::Result<LoadTimes> {
    let netns = Netns::create(&twinstack_lab::unique("tsb-load"));
    let cluster = Cluster::new(
        services,
        &["10.244.2.2".parse()?],
        &["fd00:10:244:2::2".parse()?],
    );
    let mut rows = Vec::new();
    for layout in [Layout::Iptables, Layout::Nftables] {
        let (mut v4, mut v6): (Vec<f64>, Vec<f64>) = earlier
            .iter()
            .filter(|s| s.layout == layout && s.services == services)
            .map(|s| (s.times.v4.as_secs_f64(), s.times.v6.as_secs_f64()))
            .unzip();
        while v4.len() < reps {
            let (rules, times) = kubeproxy::program(&netns, layout, &cluster)?;
            eprintln!(
                "  {} load of {services} Services: IPv4 {:.2} s, IPv6 {:.2} s",
                layout.name(),
                times.v4.as_secs_f64(),
                times.v6.as_secs_f64()
            );
            v4.push(times.v4.as_secs_f64());
            v6.push(times.v6.as_secs_f64());
            drop(rules);
        }
        rows.push((layout, Summary::of(&v4), Summary::of(&v6)));
    }
    Ok(LoadTimes { services, rows })
}

/// The section's Markdown.
pub(crate) fn section(loads: &LoadTimes, twinstack: Option<&TwinstackFigures>) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "### kube-proxy: loading {} Services × 10 endpoints\n",
        number(loads.services as f64, 0)
    );
    let _ = writeln!(
        s,
        "One transaction per family into an empty namespace, as kube-proxy's first full sync \
         does (`iptables-restore -w 5` / `ip6tables-restore -w 5` of the filter and nat tables; \
         `nft -f` of the `kube-proxy` table). Seconds, median (min–max) of {} loads.\n",
        loads.rows.first().map(|r| r.1.runs).unwrap_or(0)
    );
    s.push_str("| layout | IPv4 (s) | IPv6 (s) |\n|---|---:|---:|\n");
    for (layout, v4, v6) in &loads.rows {
        let _ = writeln!(s, "| {} | {} | {} |", layout.name(), v4.show(2), v6.show(2));
    }
    s.push_str("\n### twinstack\n\n");
    match twinstack {
        None => s.push_str(
            "**Not measured yet.** Cold programming of 10,000 Services × 10 endpoints × 2 \
             families, update latency p50/p99, agent RSS and BPF map memory come with the \
             control-plane issue (hook: `control_plane::twinstack_figures`). No figure is \
             estimated in their place.\n",
        ),
        Some(f) => {
            let _ = writeln!(
                s,
                "The real agent against the test API server (through a kubeconfig, the same \
                 kube-rs path as in a cluster), {} dual-stack Services × 10 endpoints per \
                 family; median (min–max) of {} cold starts. Update latency: an EndpointSlice \
                 change applied at the API server until the pinned IPv4 service map holds it, \
                 with `--min-sync-period 0` (add the period for the default 1 s batching). \
                 Targets: cold programming under 1 s of agent work, p99 update under 10 ms, \
                 RSS under 100 MiB.\n",
                number(f.services as f64, 0),
                f.cold_programming_s.runs
            );
            s.push_str("| figure | value |\n|---|---:|\n");
            for (name, value, decimals) in [
                (
                    "cold programming: first lists read and every Service programmed, agent's own clock (s)",
                    &f.cold_programming_s,
                    2,
                ),
                (
                    "cold start: process start to /healthz 200 (s)",
                    &f.cold_start_wall_s,
                    2,
                ),
                ("update latency p50 (ms)", &f.update_latency_p50_ms, 1),
                ("update latency p99 (ms)", &f.update_latency_p99_ms, 1),
                ("agent RSS (MiB)", &f.agent_rss_mib, 1),
                ("BPF map memory (MiB)", &f.bpf_map_memory_mib, 1),
            ] {
                let _ = writeln!(s, "| {name} | {} |", value.show(decimals));
            }
        }
    }
    s
}
