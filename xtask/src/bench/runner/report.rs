//! REPORT.md: the machine, the targets and whether they are met, then one table per section.
use std::{fmt::Write as _, process::Command, time::Duration};

use crate::{
    Plan,
    control_plane::{self, LoadTimes, TwinstackFigures},
    datapath::{self, Case},
    e2e::{self, Entry, Mode, TESTS},
    load::Test,
    stats::{self, number},
};

fn command_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']))
        })
        .unwrap_or("unknown")
        .to_owned()
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "**missed**" }
}

fn family(v6: bool) -> &'static str {
    if v6 { "IPv6" } else { "IPv4" }
}

pub(crate) fn write(
    plan: &Plan,
    datapath: &datapath::Results,
    e2e: &e2e::Results,
    loads: &LoadTimes,
    twinstack: Option<&TwinstackFigures>,
    elapsed: Duration,
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Twinstack benchmarks\n");
    let _ = writeln!(
        s,
        "Written by `cargo xtask bench{}`; every figure is the median of several runs with \
         its spread (min–max); every comparison is a ratio of medians measured in this run.\n",
        match plan.profile {
            "quick" => " --quick",
            "smoke" => " --smoke",
            _ => "",
        }
    );
    let _ = writeln!(s, "| | |\n|---|---|");
    let _ = writeln!(
        s,
        "| date | {} |",
        command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
    );
    let _ = writeln!(
        s,
        "| kernel | {} |",
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    let _ = writeln!(
        s,
        "| CPU | {} × {} |",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model()
    );
    let _ = writeln!(
        s,
        "| netfilter tools | {}; {} |",
        command_line("iptables", &["--version"]),
        command_line("nft", &["--version"])
    );
    let _ = writeln!(
        s,
        "| profile | {} ({} s in all) |\n",
        plan.profile,
        elapsed.as_secs()
    );

    targets(&mut s, datapath, e2e);
    section1(&mut s, datapath);
    section2(&mut s, plan, e2e);
    let _ = writeln!(s, "## 3. Control plane\n");
    s.push_str(&control_plane::section(loads, twinstack));
    s
}

/// Cost at the largest size over cost at 1 Service.
fn growth(row: &datapath::Row) -> f64 {
    match (row.by_size.first(), row.by_size.last()) {
        (Some(first), Some(last)) => stats::ratio(last, first),
        _ => f64::NAN,
    }
}

fn targets(s: &mut String, datapath: &datapath::Results, e2e: &e2e::Results) {
    let _ = writeln!(s, "## Targets\n");
    s.push_str("| target | IPv4 | IPv6 | verdict |\n|---|---:|---:|---|\n");
    let largest = datapath.sizes.last().copied().unwrap_or(0);
    for case in [Case::New, Case::Established, Case::ReverseNat, Case::Miss] {
        let g: Vec<f64> = ["IPv4", "IPv6"]
            .iter()
            .map(|f| datapath.row(f, case).map_or(f64::NAN, growth))
            .collect();
        let _ = writeln!(
            s,
            "| per packet, {}: cost at {} Services ≤ 1.10 × cost at 1 | {:.2}× | {:.2}× | {} |",
            case.label(),
            number(largest as f64, 0),
            g[0],
            g[1],
            verdict(g.iter().all(|x| *x <= 1.10))
        );
    }
    let Some(&largest) = e2e.sizes.last() else {
        return;
    };
    let ratio = |mode: Mode, size: usize, v6: bool, test: Test| -> f64 {
        e2e.cell(mode, size, v6, test)
            .map_or(f64::NAN, e2e::Cell::ratio)
    };
    if largest < 10_000 {
        let _ = writeln!(
            s,
            "| (the end-to-end targets are set at 10,000 Services; this profile stops at {}, \
             so the verdicts below are indicative only: run the full bench) | | | |",
            number(largest as f64, 0)
        );
    }
    // The targets are set for socket-level load balancing (the default); the TC-only mode's
    // figures are reported beside them.
    for mode in Mode::TWINSTACK {
        let name = mode.name();
        let new = |v6| ratio(mode, largest, v6, Test::NewConnections);
        let _ = writeln!(
            s,
            "| {name}: new connections/s at {} Services ≥ 0.95 × direct | {:.2}× | {:.2}× | {} |",
            number(largest as f64, 0),
            new(false),
            new(true),
            verdict(new(false) >= 0.95 && new(true) >= 0.95)
        );
        for other in [Mode::Iptables, Mode::Nftables] {
            // Worst case over the sizes: twinstack's rate over the layout's.
            let worst = |v6: bool, test: Test| {
                e2e.sizes
                    .iter()
                    .map(|&size| {
                        match (
                            e2e.cell(mode, size, v6, test),
                            e2e.cell(other, size, v6, test),
                        ) {
                            (Some(a), Some(b)) => stats::ratio(&a.rate, &b.rate),
                            _ => f64::NAN,
                        }
                    })
                    .fold(f64::INFINITY, f64::min)
            };
            for test in [Test::NewConnections, Test::RequestResponse] {
                let _ = writeln!(
                    s,
                    "| {name}: {} above kube-proxy {} at every size (lowest ratio) | {:.2}× | {:.2}× | {} |",
                    test.label(),
                    other.name(),
                    worst(false, test),
                    worst(true, test),
                    verdict(worst(false, test) > 1.0 && worst(true, test) > 1.0)
                );
            }
        }
        let rr = |v6| ratio(mode, largest, v6, Test::RequestResponse);
        let _ = writeln!(
            s,
            "| {name}: requests/s on persistent connections at {} Services ≥ 0.97 × direct | {:.2}× | {:.2}× | {} |",
            number(largest as f64, 0),
            rr(false),
            rr(true),
            verdict(rr(false) >= 0.97 && rr(true) >= 0.97)
        );
    }
    s.push('\n');
}

pub(crate) fn section1(s: &mut String, results: &datapath::Results) {
    let _ = writeln!(s, "## 1. Per-packet cost (BPF_PROG_TEST_RUN)\n");
    let _ = writeln!(
        s,
        "The real kernel object, its maps sized for the largest case and filled by the agent's \
         own map writer (`Writer::upsert`): N TCP ClusterIP Services × 10 backends per family, \
         every backend a distinct (address, port) in the pod CIDR, Services in the service CIDR \
         (past 65,000 IPv6 Services the port differs, the /112 being full). Packets are \
         Ethernet + IP + TCP with 64 bytes of payload, to Service 0.\n\n\
         A translated packet is rewritten in place and `repeat` would re-run the program on \
         the rewritten bytes (after one round a DNATed packet is addressed to a backend: a \
         miss), so every translating case runs with `repeat = 1` on a fresh copy of the packet, \
         and each figure is the median over {reps} rounds of the median of {runs} runs. **New \
         flow**: each run uses a source (address, port) never used before, so conntrack misses \
         and the program inserts two entries (forward and reverse). We chose fresh tuples over \
         deleting the entry between runs: every run then takes exactly the path of a real new \
         connection (lookup miss, insert into a map with room), and no delete syscall between \
         runs changes which LRU free list the next insert draws from. Conntrack is sized (1M \
         entries per family) so nothing is evicted. **Established**: ACKs of one flow opened once. **Reverse NAT**: the \
         backend's reply through `to_pod`. **Miss**: a packet to a pod address, both with \
         `repeat = 1` (comparable with the others) and with `repeat = {repeat}`; the difference \
         is the fixed cost of one `repeat = 1` call (timer, skb set-up), included in every \
         `repeat = 1` figure. **Miss at `to_pod`**: the same packet at the other pod's \
         interface (no flow to translate back); with the miss, what each packet of a \
         connection the socket path sent straight to a backend pod pays.\n",
        reps = results.reps,
        runs = number(results.runs as f64, 0),
        repeat = number(f64::from(results.miss_repeat), 0),
    );
    s.push_str("| family | case |");
    for size in &results.sizes {
        let _ = write!(s, " {} (ns) |", stats::services(*size));
    }
    s.push_str(" largest / 1 |\n|---|---|");
    for _ in &results.sizes {
        s.push_str("---:|");
    }
    s.push_str("---:|\n");
    for row in &results.rows {
        let _ = write!(s, "| {} | {} |", row.family, row.case.label());
        for summary in &row.by_size {
            let _ = write!(s, " {} |", summary.show(1));
        }
        let _ = writeln!(s, " {:.2}× |", growth(row));
    }
    s.push_str("\nTime the map writer took to add the Services of each step (s):\n\n| family |");
    for size in &results.sizes {
        let _ = write!(s, " → {} |", number(*size as f64, 0));
    }
    s.push_str("\n|---|");
    for _ in &results.sizes {
        s.push_str("---:|");
    }
    s.push('\n');
    for (family, seconds) in &results.fill_seconds {
        let _ = write!(s, "| {family} |");
        for x in seconds {
            let _ = write!(s, " {x:.2} |");
        }
        s.push('\n');
    }
    s.push_str("\n![per-packet cost](per-packet.png)\n\n");
}

pub(crate) fn section2(s: &mut String, plan: &Plan, results: &e2e::Results) {
    let _ = writeln!(s, "## 2. End to end in network namespaces\n");
    let _ = writeln!(
        s,
        "Topology: a node namespace (forwarding, no default route), a client pod and two backend \
         pods, each joined to the node by a veth. A multi-threaded Rust server (`{workers}` \
         accepting threads per pod) answers 64-byte requests with 64 bytes. **New connections**: \
         {threads} client threads each connect, send 64 bytes, read 64, and wait for the \
         server's close (the server closes first, so TIME_WAIT stays on the server). \
         **Requests/s**: {threads} persistent connections, one request in flight each. Every \
         run lasts {duration:?} (bounded by count too); {reps} rounds per cell, the families \
         and tests interleaved in each round, after a {warmup:?} warm-up. Latency is the \
         whole transaction seen by the client (connect to close, or one request/response). \
         The client's threads are pinned to the first CPU and the servers' to the last, so \
         the scheduler does not move them about between rounds.\n\n\
         Modes, one active at a time, on the same topology: **direct** (the client connects to \
         the backend pods' addresses, alternating; no Service) runs on a twin topology that no \
         mode touches, one direct run before every run of every mode: a mode's ratio is to the \
         direct runs made in turns with its own (the direct row pools them all), so the \
         machine's drift over the minutes a size takes (a few percent on a shared VM) cancels \
         out instead of landing in the ratios. **twinstack-bypassed** is the direct path with \
         twinstack's socket-level datapath loaded and the client in its cgroup (its sockets \
         pass the socket hooks and its packets the TC programs, as misses): what a connection \
         no Service translates pays; between direct and twinstack-socket it splits the \
         socket path's gap into the passes every pod packet makes and the Service's own work. \
         Each mode's client ports are a slice of the kernel's default ephemeral range \
         (32768-60999), where real clients' are. **twinstack-socket** and \
         **twinstack-tc** (the real `twinstack run` on a generated manifest directory; it is \
         stopped once the Services are programmed, as `SIGTERM` leaves the pinned datapath \
         serving, so only the datapath is on the CPUs; `twinstack cleanup` removes it. \
         `-socket`: socket-level load balancing, the bench process in the agent's own cgroup \
         while it measures, so every client socket is connected straight to a backend; `-tc`: \
         `--socket-lb false`, the TC programs translate every packet), **iptables** and **nftables** \
         (kube-proxy's layouts generated by `kubeproxy.rs`, loaded with \
         `iptables-restore`/`ip6tables-restore` (the nf_tables-backed iptables here) and `nft \
         -f`, removed with `nft flush ruleset`). The N Services are dual-stack; N-1 have 10 \
         endpoints nobody answers on, the target (last, so the iptables KUBE-SERVICES chain is \
         walked to its end) has the two backend pods.\n",
        workers = plan.server_workers,
        threads = plan.client_threads,
        duration = plan.duration,
        reps = plan.e2e_reps,
        warmup = plan.warmup,
    );
    let _ = writeln!(
        s,
        "**From outside** (the second entry): a client namespace outside the cluster \
         (198.51.100.2, 2001:db8::2) on the node's device `tsx1` connects to the target's \
         NodePort (30080) on the node's address there (198.51.100.1, [2001:db8::1]); every mode \
         masquerades it (`externalTrafficPolicy: Cluster`), so replies come back through the \
         node. **direct**: the client connects to the backend pods through the node (routed, \
         no NAT). **twinstack-xdp**: `--xdp generic` on the device (the XDP program translates \
         the client's packets and redirects them; the backends' replies are translated at the \
         pod interfaces' TC); **twinstack-tc**: `--xdp off`. The kube-proxy layouts add the \
         target's KUBE-NODEPORTS / service-nodeports entry (reached in iptables mode only after \
         the whole KUBE-SERVICES chain).\n"
    );
    for entry in Entry::ALL {
        for test in TESTS {
            for v6 in [false, true] {
                let _ = writeln!(
                    s,
                    "### {}: {}, {}\n",
                    entry.name(),
                    test.label(),
                    family(v6)
                );
                s.push_str("| mode |");
                for size in &results.sizes {
                    let _ = write!(s, " {} | ratio to direct |", stats::services(*size));
                }
                s.push_str("\n|---|");
                for _ in &results.sizes {
                    s.push_str("---:|---:|");
                }
                s.push('\n');
                for &mode in entry.modes() {
                    let _ = write!(s, "| {} |", mode.name());
                    for &size in &results.sizes {
                        match results.cell_of(entry, mode, size, v6, test) {
                            Some(c) => {
                                let _ = write!(s, " {} | {:.2}× |", c.rate.show(0), c.ratio());
                            }
                            None => s.push_str(" – | – |"),
                        }
                    }
                    s.push('\n');
                }
                s.push('\n');
            }
        }
    }
    let _ = writeln!(s, "### Latency, µs: p50 / p99 (medians over the rounds)\n");
    s.push_str("| entry | test | family | mode |");
    for size in &results.sizes {
        let _ = write!(s, " {} |", stats::services(*size));
    }
    s.push_str("\n|---|---|---|---|");
    for _ in &results.sizes {
        s.push_str("---:|");
    }
    s.push('\n');
    for entry in Entry::ALL {
        for test in TESTS {
            for v6 in [false, true] {
                for &mode in entry.modes() {
                    let _ = write!(
                        s,
                        "| {} | {} | {} | {} |",
                        entry.name(),
                        test.label(),
                        family(v6),
                        mode.name()
                    );
                    for &size in &results.sizes {
                        match results.cell_of(entry, mode, size, v6, test) {
                            Some(c) => {
                                let _ = write!(
                                    s,
                                    " {} / {} |",
                                    number(c.p50_us.median, 1),
                                    number(c.p99_us.median, 1)
                                );
                            }
                            None => s.push_str(" – |"),
                        }
                    }
                    s.push('\n');
                }
            }
        }
    }
    let errors: u64 = results.cells.iter().map(|c| c.errors).sum();
    let _ = writeln!(
        s,
        "\nFailed transactions over all runs: {errors}.\n\n\
         ![new connections](new-connections.png)\n\n![requests](request-response.png)\n"
    );
    s.push_str(
        "Per mode: the client's retransmissions while it was active (warm-up and checks \
         included; a proxy that loses or mistranslates packets shows here first), and the \
         share of the CPUs that other processes used while it was measured (anything above a \
         few percent makes that mode's figures noise: re-run on a quiet machine):\n\n\
         | entry | mode | Services | SYN retransmissions | retransmitted segments | other processes' CPU |\n\
         |---|---|---:|---:|---:|---:|\n",
    );
    for (entry, mode, size, syn, segments) in &results.retransmitted {
        let other = results
            .other_load
            .iter()
            .find(|(e, m, n, _)| e == entry && m == mode && n == size)
            .map_or(f64::NAN, |(_, _, _, share)| share * 100.0);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {syn} | {segments} | {other:.1}% |",
            entry.name(),
            mode.name(),
            number(*size as f64, 0)
        );
    }
    s.push('\n');
    if !results.agent_ready.is_empty() {
        s.push_str("Agent start to first full sync (healthz 200), informational, one run each: ");
        let parts: Vec<String> = results
            .agent_ready
            .iter()
            .map(|(size, secs)| format!("{} {secs:.1} s", stats::services(*size)))
            .collect();
        let _ = writeln!(s, "{}.\n", parts.join(", "));
    }
}
