//! Section 1: the kernel programs' cost per packet, with BPF_PROG_TEST_RUN, as the number of
//! Services grows. The real object is loaded and its maps filled by the agent's own map writer.
//!
//! A translated packet is rewritten in place, and BPF_PROG_TEST_RUN with `repeat` runs the
//! program again on the rewritten bytes: after the first round a DNATed packet is addressed to
//! a backend, so every later round would measure the miss path. Every translating case is
//! therefore run with `repeat = 1` (a fresh copy of the packet per run) and summarised by the
//! median of many runs; the miss is measured both ways, and the difference is the fixed cost
//! of one `repeat = 1` run (timer and context set-up) that the translating figures include.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use aya::programs::{TestRun, TestRunOptions};
use etherparse::PacketBuilder;
use proxy_common::{maps::MAPS, programs as program_names};
use proxy_userspace::{
    loader::{self, LoadOptions, Programs},
    maps::{codec::KernelFamily, kernel, pins::PinLayout, writer::Writer},
    model::Protocol,
    plan::{Backend, BackendState, Frontend, ServiceEntry},
};

use proxy_common::{LbFamily, V4, V6};

use crate::{Plan, stats::Summary};

pub(crate) const BACKENDS_PER_SERVICE: usize = 10;
const PAYLOAD: [u8; 64] = [b'x'; 64];
/// The service every hit goes to (index 0); the others are filler.
const TARGET: usize = 0;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Case {
    /// A SYN of a flow conntrack has never seen: service lookup, backend pick, two inserts.
    New,
    /// A later packet of a known flow: service lookup, conntrack hit, rewrite.
    Established,
    /// The backend's reply (`to_pod`): reverse conntrack hit, rewrite to the service address.
    ReverseNat,
    /// A packet to a pod address (no service), one run per call like the others.
    Miss,
    /// The same miss with `repeat`: the program's own cost without the per-call fixed cost.
    MissRepeat,
    /// The pod's packet to a pod (no flow) at the other pod's interface (`to_pod`), with
    /// `repeat`: with [`Case::MissRepeat`], what every packet the socket path sent straight to
    /// a backend pays in the TC programs.
    PassRepeat,
}

impl Case {
    pub(crate) const ALL: [Case; 6] = [
        Case::New,
        Case::Established,
        Case::ReverseNat,
        Case::Miss,
        Case::MissRepeat,
        Case::PassRepeat,
    ];

    /// Whether the case runs with `repeat` (no per-call cost in its figure).
    pub(crate) fn repeated(self) -> bool {
        matches!(self, Case::MissRepeat | Case::PassRepeat)
    }

    pub(crate) fn label(self) -> &'static str {
        match self {
            Case::New => "ClusterIP hit, new flow",
            Case::Established => "ClusterIP hit, established flow",
            Case::ReverseNat => "reverse NAT (reply)",
            Case::Miss => "miss (not a service)",
            Case::MissRepeat => "miss, repeat (no per-call cost)",
            Case::PassRepeat => "miss at `to_pod`, repeat (no per-call cost)",
        }
    }
}

pub(crate) struct Row {
    pub family: &'static str,
    pub case: Case,
    /// One summary (ns per packet) per entry of [`Results::sizes`].
    pub by_size: Vec<Summary>,
}

pub(crate) struct Results {
    pub sizes: Vec<usize>,
    pub rows: Vec<Row>,
    /// Seconds the map writer took to go from the previous size to each size, per family.
    pub fill_seconds: Vec<(&'static str, Vec<f64>)>,
    pub reps: usize,
    pub runs: usize,
    pub miss_repeat: u32,
}

impl Results {
    pub(crate) fn row(&self, family: &str, case: Case) -> Option<&Row> {
        self.rows
            .iter()
            .find(|r| r.family == family && r.case == case)
    }
}

/// Addresses of the synthetic cluster, per family.
trait Family: KernelFamily + Into<IpAddr> {
    const NAME: &'static str;
    /// Service `i`'s frontend, inside the service CIDR.
    fn service(i: usize) -> (Self, u16);
    /// Backend `k` (service `k / 10`), inside the pod CIDR; every one distinct.
    fn backend(k: usize) -> (Self, u16);
    /// Client `i` of the client pod subnet.
    fn client(i: usize) -> Self;
    /// A pod address that is no service (the miss).
    fn pod() -> Self;
}

impl Family for Ipv4Addr {
    const NAME: &'static str = "IPv4";
    fn service(i: usize) -> (Self, u16) {
        (
            Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 10)) + i as u32),
            80,
        )
    }
    fn backend(k: usize) -> (Self, u16) {
        // 10.244.16.0–10.244.255.255 holds 61,440 addresses; beyond that the port differs, so
        // every (address, port) stays distinct (1,000,000 backends do not fit a /16).
        const ROOM: usize = 240 * 256;
        let base = u32::from(Ipv4Addr::new(10, 244, 16, 0));
        (
            Ipv4Addr::from(base + (k % ROOM) as u32),
            8080 + (k / ROOM) as u16,
        )
    }
    fn client(i: usize) -> Self {
        Ipv4Addr::new(10, 244, 1, 2 + i as u8)
    }
    fn pod() -> Self {
        Ipv4Addr::new(10, 244, 2, 2)
    }
}

impl Family for Ipv6Addr {
    const NAME: &'static str = "IPv6";
    fn service(i: usize) -> (Self, u16) {
        // fd00:10:96::/112 holds 65,536 addresses: past 65,000 Services the port differs.
        const ROOM: usize = 65_000;
        let base = u128::from("fd00:10:96::a".parse::<Ipv6Addr>().expect("IPv6"));
        (
            Ipv6Addr::from(base + (i % ROOM) as u128),
            80 + (i / ROOM) as u16,
        )
    }
    fn backend(k: usize) -> (Self, u16) {
        let base = u128::from("fd00:10:244:ff::".parse::<Ipv6Addr>().expect("IPv6"));
        (Ipv6Addr::from(base + 1 + k as u128), 8080)
    }
    fn client(i: usize) -> Self {
        let base = u128::from("fd00:10:244:1::2".parse::<Ipv6Addr>().expect("IPv6"));
        Ipv6Addr::from(base + i as u128)
    }
    fn pod() -> Self {
        "fd00:10:244:2::2".parse().expect("IPv6")
    }
}

/// Removes the pins (and so the maps) however the bench ends.
struct Pins(PinLayout);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = loader::cleanup(&self.0);
    }
}

pub(crate) fn run(plan: &Plan) -> anyhow::Result<Results> {
    twinstack_lab::ensure_bpffs();
    let largest = plan.datapath_sizes.iter().copied().max().unwrap_or(1);
    let pins = Pins(PinLayout::new(format!(
        "/sys/fs/bpf/{}",
        twinstack_lab::unique("twinstack-bench-")
    )));
    // Room for the largest size; the same maps serve every size, so only their contents differ.
    let needed = |name: &str| -> Option<u32> {
        let is = |v4: &str, v6: &str| name == v4 || name == v6;
        Some(if is(V4::SERVICES, V6::SERVICES) {
            (largest * (BACKENDS_PER_SERVICE + 1) + 1024) as u32
        } else if is(V4::BACKENDS, V6::BACKENDS) {
            (largest * BACKENDS_PER_SERVICE + 1024) as u32
        } else if is(V4::REVERSE_NAT, V6::REVERSE_NAT) {
            (largest + 1024) as u32
        } else if is(V4::CONNTRACK, V6::CONNTRACK) {
            1 << 20
        } else {
            return None;
        })
    };
    let mut options = LoadOptions {
        max_entries: MAPS
            .iter()
            .filter_map(|spec| Some((spec.name, needed(spec.name)?.max(spec.capacity))))
            .collect(),
        ..LoadOptions::default()
    };
    // The synthetic cluster's pod ranges, as the agent's `--cluster-cidr` sets them: clients,
    // backends and the miss's pod are inside, the Services outside.
    options.config.cluster_v4 = [10, 244, 0, 0];
    options.config.cluster_v4_prefix = 16;
    options.config.cluster_v6 = "fd00:10:244::".parse::<Ipv6Addr>().expect("IPv6").octets();
    options.config.cluster_v6_prefix = 56;
    let datapath = Programs::load(&pins.0, &options).context("loading the BPF object")?;
    let mut bench = Bench {
        datapath,
        next_flow: 0,
    };
    let mut v4: Writer<Ipv4Addr> = Writer::restore(kernel::open(&pins.0)?)?;
    let mut v6: Writer<Ipv6Addr> = Writer::restore(kernel::open(&pins.0)?)?;

    let mut rows: Vec<Row> = Vec::new();
    for family in [Ipv4Addr::NAME, Ipv6Addr::NAME] {
        for case in Case::ALL {
            rows.push(Row {
                family,
                case,
                by_size: Vec::new(),
            });
        }
    }
    let mut fill_seconds = vec![(Ipv4Addr::NAME, Vec::new()), (Ipv6Addr::NAME, Vec::new())];
    let mut filled = 0;
    let mut flows_v4 = None;
    let mut flows_v6 = None;
    for &size in &plan.datapath_sizes {
        ensure!(size > filled, "sizes must grow: {:?}", plan.datapath_sizes);
        eprintln!("  datapath: filling to {size} Services × {BACKENDS_PER_SERVICE} backends");
        fill_seconds[0].1.push(fill(&mut v4, filled..size)?);
        fill_seconds[1].1.push(fill(&mut v6, filled..size)?);
        filled = size;
        let flow = match flows_v4 {
            Some(f) => f,
            None => *flows_v4.insert(bench.establish::<Ipv4Addr>()?),
        };
        for (case, summary) in bench.measure_all::<Ipv4Addr>(plan, flow)? {
            push(&mut rows, Ipv4Addr::NAME, case, summary);
        }
        let flow = match flows_v6 {
            Some(f) => f,
            None => *flows_v6.insert(bench.establish::<Ipv6Addr>()?),
        };
        for (case, summary) in bench.measure_all::<Ipv6Addr>(plan, flow)? {
            push(&mut rows, Ipv6Addr::NAME, case, summary);
        }
    }
    drop(bench);
    drop(pins);
    Ok(Results {
        sizes: plan.datapath_sizes.clone(),
        rows,
        fill_seconds,
        reps: plan.datapath_reps,
        runs: plan.datapath_runs,
        miss_repeat: plan.miss_repeat,
    })
}

fn push(rows: &mut [Row], family: &str, case: Case, summary: Summary) {
    if let Some(row) = rows
        .iter_mut()
        .find(|r| r.family == family && r.case == case)
    {
        row.by_size.push(summary);
    }
}

/// Writes Services `range` (each with its 10 backends) as the agent would; returns seconds.
fn fill<A: Family>(writer: &mut Writer<A>, range: std::ops::Range<usize>) -> anyhow::Result<f64> {
    let started = Instant::now();
    for i in range {
        let (address, port) = A::service(i);
        let frontend = Frontend::new(address, port, Protocol::Tcp);
        let backends = (0..BACKENDS_PER_SERVICE)
            .map(|j| {
                let (address, port) = A::backend(i * BACKENDS_PER_SERVICE + j);
                Backend {
                    address,
                    port,
                    protocol: Protocol::Tcp,
                    state: BackendState::Active,
                }
            })
            .collect();
        writer
            .upsert(&frontend, &ServiceEntry::cluster_ip(backends))
            .with_context(|| format!("writing {frontend}"))?;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// The established flow every size reuses: its client tuple and the backend it was pinned to.
#[derive(Clone, Copy)]
struct Flow {
    client: (IpAddr, u16),
    backend: (IpAddr, u16),
}

struct Bench {
    datapath: Programs,
    /// Source tuples handed out so far for new flows (each is used once).
    next_flow: usize,
}

impl Bench {
    /// Runs `packet` through `program`; returns the kernel's time per run and the output.
    fn run(
        &mut self,
        program: &'static str,
        packet: &[u8],
        repeat: u32,
        keep_output: bool,
    ) -> anyhow::Result<(Duration, Vec<u8>)> {
        let prog = self.datapath.classifier(program)?;
        let mut out = vec![0u8; if keep_output { packet.len() + 256 } else { 0 }];
        let result = prog
            .test_run(TestRunOptions {
                data_in: Some(packet),
                data_out: keep_output.then_some(&mut out[..]),
                repeat,
                ..TestRunOptions::default()
            })
            .context("BPF_PROG_TEST_RUN")?;
        // TCX_NEXT: the only verdict the programs give.
        ensure!(
            result.return_value == u32::MAX,
            "{program} returned {}",
            result.return_value
        );
        out.truncate(result.data_size_out as usize);
        Ok((result.duration, out))
    }

    /// A fresh client tuple: 60,000 ports per client address.
    fn fresh_client<A: Family>(&mut self) -> (IpAddr, u16) {
        let n = self.next_flow;
        self.next_flow += 1;
        (A::client(1 + n / 60_000).into(), 1024 + (n % 60_000) as u16)
    }

    fn establish<A: Family>(&mut self) -> anyhow::Result<Flow> {
        let client = (A::client(0).into(), 999);
        let vip = service_socket::<A>(TARGET);
        let (_, out) = self.run(program_names::FROM_POD, &tcp(client, vip, true), 1, true)?;
        let (source, destination) = endpoints(&out)?;
        ensure!(source == client, "the client tuple changed: {source:?}");
        ensure!(
            is_backend_of::<A>(TARGET, destination),
            "a SYN to {vip:?} went to {destination:?}, not one of its backends"
        );
        Ok(Flow {
            client,
            backend: destination,
        })
    }

    fn measure_all<A: Family>(
        &mut self,
        plan: &Plan,
        flow: Flow,
    ) -> anyhow::Result<Vec<(Case, Summary)>> {
        let vip = service_socket::<A>(TARGET);
        let established = tcp(flow.client, vip, false);
        let reply = tcp(flow.backend, flow.client, false);
        let miss = tcp(flow.client, (A::pod().into(), 8080), true);

        // Check each case does what it is named after before timing it.
        let (_, out) = self.run(program_names::FROM_POD, &established, 1, true)?;
        ensure!(
            endpoints(&out)?.1 == flow.backend,
            "established flow not sent to its backend"
        );
        let (_, out) = self.run(program_names::TO_POD, &reply, 1, true)?;
        ensure!(endpoints(&out)?.0 == vip, "reply not reverse-NATed");
        let (_, out) = self.run(program_names::FROM_POD, &miss, 1, true)?;
        ensure!(out == miss, "a non-service packet was changed");
        let (_, out) = self.run(program_names::TO_POD, &miss, 1, true)?;
        ensure!(out == miss, "a packet of no flow was changed at to_pod");
        let client = self.fresh_client::<A>();
        let (_, out) = self.run(program_names::FROM_POD, &tcp(client, vip, true), 1, true)?;
        ensure!(
            is_backend_of::<A>(TARGET, endpoints(&out)?.1),
            "new flow not DNATed to a backend"
        );

        let mut results = Vec::new();
        for case in Case::ALL {
            let mut medians = Vec::with_capacity(plan.datapath_reps);
            for _ in 0..plan.datapath_reps {
                if case.repeated() {
                    let program = match case {
                        Case::PassRepeat => program_names::TO_POD,
                        _ => program_names::FROM_POD,
                    };
                    let (d, _) = self.run(program, &miss, plan.miss_repeat, false)?;
                    medians.push(d.as_nanos() as f64);
                    continue;
                }
                let mut samples = Vec::with_capacity(plan.datapath_runs);
                for _ in 0..plan.datapath_runs {
                    let (d, _) = match case {
                        Case::New => {
                            let client = self.fresh_client::<A>();
                            self.run(program_names::FROM_POD, &tcp(client, vip, true), 1, false)?
                        }
                        Case::Established => {
                            self.run(program_names::FROM_POD, &established, 1, false)?
                        }
                        Case::ReverseNat => self.run(program_names::TO_POD, &reply, 1, false)?,
                        Case::Miss => self.run(program_names::FROM_POD, &miss, 1, false)?,
                        Case::MissRepeat | Case::PassRepeat => unreachable!(),
                    };
                    samples.push(d.as_nanos() as f64);
                }
                medians.push(crate::stats::median(&samples));
            }
            results.push((case, Summary::of(&medians)));
        }
        Ok(results)
    }
}

fn service_socket<A: Family>(i: usize) -> (IpAddr, u16) {
    let (address, port) = A::service(i);
    (address.into(), port)
}

fn is_backend_of<A: Family>(service: usize, socket: (IpAddr, u16)) -> bool {
    (0..BACKENDS_PER_SERVICE).any(|j| {
        let (address, port) = A::backend(service * BACKENDS_PER_SERVICE + j);
        (address.into(), port) == socket
    })
}

/// A TCP packet with a 64-byte payload: a SYN, or an ACK of an open connection.
fn tcp(source: (IpAddr, u16), destination: (IpAddr, u16), syn: bool) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    let ip = match (source.0, destination.0) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), 64),
        _ => unreachable!("one family per packet"),
    };
    let builder = ip.tcp(source.1, destination.1, 1000, 65535);
    let builder = if syn { builder.syn() } else { builder.ack(1) };
    let mut out = Vec::with_capacity(128);
    builder
        .write(&mut out, &PAYLOAD)
        .expect("writing to a Vec cannot fail");
    out
}

/// (source, destination) of an Ethernet + IPv4/IPv6 + TCP packet.
fn endpoints(packet: &[u8]) -> anyhow::Result<((IpAddr, u16), (IpAddr, u16))> {
    let port = |at: usize| u16::from_be_bytes([packet[at], packet[at + 1]]);
    match packet.get(12..14) {
        Some([0x08, 0x00]) if packet.len() >= 14 + 20 + 4 => {
            let l4 = 14 + usize::from(packet[14] & 0x0f) * 4;
            let s: [u8; 4] = packet[26..30].try_into()?;
            let d: [u8; 4] = packet[30..34].try_into()?;
            Ok(((s.into(), port(l4)), (d.into(), port(l4 + 2))))
        }
        Some([0x86, 0xdd]) if packet.len() >= 14 + 40 + 4 => {
            let s: [u8; 16] = packet[22..38].try_into()?;
            let d: [u8; 16] = packet[38..54].try_into()?;
            Ok(((s.into(), port(54)), (d.into(), port(56))))
        }
        _ => bail!("not an IPv4 or IPv6 packet of ours"),
    }
}
