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

/// Twinstack's control-plane figures, as the control-plane issue will measure them.
pub struct TwinstackFigures {
    /// Seconds from agent start to 10,000 Services × 10 endpoints × 2 families programmed.
    pub cold_programming_s: Summary,
    /// Milliseconds from a manifest change to the maps holding it.
    pub update_latency_p50_ms: Summary,
    pub update_latency_p99_ms: Summary,
    /// The agent's resident memory with those Services programmed.
    pub agent_rss_mib: Summary,
    /// Memory the kernel accounts to the agent's BPF maps.
    pub bpf_map_memory_mib: Summary,
}

/// HOOK for the control-plane issue: measure twinstack's figures and return them here. Until
/// then there are none, and the report says so; nothing is estimated in their place.
pub fn twinstack_figures(_plan: &crate::Plan) -> Option<TwinstackFigures> {
    None
}

/// What loading kube-proxy's layouts took, seconds per family, several loads each.
pub struct LoadTimes {
    pub services: usize,
    pub rows: Vec<(Layout, Summary, Summary)>,
}

/// Loads each layout of `services` Services into a fresh, empty namespace (the rules are
/// removed between loads), as kube-proxy's first full sync does, until there are `reps` loads
/// counting the `earlier` ones the end-to-end runs made of the same size.
pub fn kube_proxy_load_times(
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
pub fn section(loads: &LoadTimes, twinstack: Option<&TwinstackFigures>) -> String {
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
            s.push_str("| figure | value |\n|---|---:|\n");
            for (name, value, decimals) in [
                (
                    "cold programming, 10,000 Services × 10 endpoints × 2 families (s)",
                    &f.cold_programming_s,
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
