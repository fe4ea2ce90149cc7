//! The datapath fixture: the real BPF object loaded and pinned under a unique bpffs
//! directory, maps filled by the real map writer, packets run through the real entry points
//! with BPF_PROG_TEST_RUN, and the outcome counters they bumped. Plus the packet builders and
//! the checked reading of a packet that the datapath tests (`tests/datapath.rs`) and the
//! datapath fuzz (`tests/fuzz.rs`) share.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use aya::{
    maps::{Map, MapData, PerCpuArray},
    programs::{ProgramError, TestRun, TestRunOptions},
};
use etherparse::{
    IpNumber, NetHeaders, PacketBuilder, PacketHeaders, PayloadSlice, TransportHeader,
};
use proxy_common::{counter::Counter, map_names, programs, sctp};
use proxy_userspace::{
    family::Address,
    loader::{self, LoadOptions, Programs},
    maps::{kernel, pins::PinLayout, writer::Writer},
    model::Protocol,
    plan::{Backend, BackendState, Frontend, FrontendKind, ServiceEntry},
};

use crate::{ensure_bpffs, netns::Netns, require_root, unique};

/// `TC_ACT_UNSPEC` / `TCX_NEXT`: hand the packet on.
pub const NEXT: u32 = u32::MAX;
/// `TC_ACT_SHOT`: a counted drop (a `Local` policy with no local endpoint, a client outside the
/// source ranges, a flow that cannot be masqueraded).
pub const DROP: u32 = 2;
/// `TC_ACT_REDIRECT`: a reject's answer, sent back; a masqueraded packet, sent on.
pub const REDIRECT: u32 = 7;

/// `XDP_PASS`: on to the kernel (and TC).
pub const XDP_PASS: u32 = 2;
/// `XDP_REDIRECT`: sent out of the interface `bpf_redirect` named.
pub const XDP_REDIRECT: u32 = 4;

pub fn v6(s: &str) -> Ipv6Addr {
    s.parse().expect("IPv6 literal")
}

/// The loaded programs and their maps, removed (pins and all) when dropped.
pub struct Fixture {
    programs: Programs,
    pub pins: PinLayout,
    counters: PerCpuArray<MapData, u64>,
    pub v4: Writer<Ipv4Addr>,
    pub v6: Writer<Ipv6Addr>,
}

/// Packets per outcome, summed over CPUs.
pub type Counts = BTreeMap<Counter, u64>;

impl Fixture {
    // Loading and pinning the BPF object is no `Default`.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Self::with_options(&LoadOptions::default())
    }

    pub fn with_options(options: &LoadOptions) -> Self {
        require_root();
        ensure_bpffs();
        let pins = PinLayout::new(format!("/sys/fs/bpf/{}", unique("twinstack-dp-")));
        // A failed load may leave maps pinned: removed before the test fails, so a broken
        // build cannot fill the machine's memory with leftover maps.
        let programs = Programs::load(&pins, options).unwrap_or_else(|error| {
            let _ = loader::cleanup(&pins);
            panic!("loading the BPF object: {error:?}")
        });
        let counters = MapData::from_pin(pins.map(map_names::COUNTERS)).expect("counters pin");
        let counters = PerCpuArray::try_from(Map::from_map_data(counters).expect("map"))
            .expect("per-CPU array");
        Self {
            programs,
            counters,
            v4: Writer::restore(kernel::open(&pins).expect("v4 maps")).expect("v4 writer"),
            v6: Writer::restore(kernel::open(&pins).expect("v6 maps")).expect("v6 writer"),
            pins,
        }
    }

    /// Loads the programs again over the same pins (an agent's restart or upgrade): a map whose
    /// pin was removed is made anew, the others are kept with their entries.
    pub fn reload(&mut self, options: &LoadOptions) {
        self.programs = Programs::load(&self.pins, options).expect("loading the BPF object again");
    }

    pub fn run(&mut self, program: &'static str, packet: &[u8]) -> (u32, Vec<u8>) {
        self.try_run(program, packet).expect("BPF_PROG_TEST_RUN")
    }

    /// [`Self::run`], the kernel's refusal (of a packet too short for its family, say) returned.
    pub fn try_run(
        &mut self,
        program: &'static str,
        packet: &[u8],
    ) -> Result<(u32, Vec<u8>), ProgramError> {
        let mut out = vec![0u8; packet.len() + 256];
        let prog = self.programs.classifier(program).expect("program");
        let result = prog.test_run(TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut out),
            ..TestRunOptions::default()
        })?;
        out.truncate(result.data_size_out as usize);
        Ok((result.return_value, out))
    }

    /// Runs the XDP program on `packet` as if it came in on `ifindex`.
    pub fn run_xdp(&mut self, packet: &[u8], ifindex: u32) -> (u32, Vec<u8>) {
        self.try_run_xdp(packet, ifindex)
            .expect("BPF_PROG_TEST_RUN (XDP)")
    }

    /// [`Self::run_xdp`], the kernel's refusal returned.
    pub fn try_run_xdp(
        &mut self,
        packet: &[u8],
        ifindex: u32,
    ) -> Result<(u32, Vec<u8>), ProgramError> {
        let mut out = vec![0u8; packet.len() + 256];
        // `struct xdp_md`: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex.
        let md: [u32; 6] = [0, packet.len() as u32, 0, ifindex, 0, 0];
        let md: Vec<u8> = md.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let prog = self.programs.xdp(programs::XDP_DEVICE).expect("program");
        let result = prog.test_run(TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut out),
            ctx_in: Some(&md),
            ..TestRunOptions::default()
        })?;
        out.truncate(result.data_size_out as usize);
        Ok((result.return_value, out))
    }

    pub fn ingress(&mut self, packet: &[u8]) -> Vec<u8> {
        let (verdict, out) = self.run(programs::FROM_POD, packet);
        assert_eq!(verdict, NEXT, "from_pod must hand every packet on");
        out
    }

    pub fn egress(&mut self, packet: &[u8]) -> Vec<u8> {
        let (verdict, out) = self.run(programs::TO_POD, packet);
        assert_eq!(verdict, NEXT, "to_pod must hand every packet on");
        out
    }

    pub fn counts(&self) -> Counts {
        Counter::ALL
            .iter()
            .map(|c| {
                let per_cpu = self.counters.get(&c.index(), 0).expect("counter");
                (*c, per_cpu.iter().sum())
            })
            .collect()
    }

    /// Runs `f` and returns the counters it moved (only those that changed).
    pub fn counting<R>(&mut self, f: impl FnOnce(&mut Self) -> R) -> (R, Counts) {
        let before = self.counts();
        let result = f(self);
        let after = self.counts();
        let moved = after
            .into_iter()
            .filter_map(|(c, n)| {
                let delta = n - before[&c];
                (delta != 0).then_some((c, delta))
            })
            .collect();
        (result, moved)
    }
}

/// The counters in `moved`, as a map to compare against.
pub fn counts(moved: &[(Counter, u64)]) -> Counts {
    moved.iter().copied().collect()
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = loader::cleanup(&self.pins);
    }
}

pub fn service<A: Address>(
    address: A,
    port: u16,
    protocol: Protocol,
    backends: &[(A, u16)],
) -> (Frontend<A>, ServiceEntry<A>) {
    (
        Frontend::new(address, port, protocol),
        ServiceEntry::cluster_ip(
            backends
                .iter()
                .map(|(address, port)| Backend {
                    address: *address,
                    port: *port,
                    protocol,
                    state: BackendState::Active,
                })
                .collect(),
        ),
    )
}

pub const PAYLOAD: &[u8] = b"twinstack datapath test payload";

pub fn builder(
    source: IpAddr,
    destination: IpAddr,
) -> etherparse::PacketBuilderStep<etherparse::IpHeaders> {
    let eth = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    match (source, destination) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), 64),
        _ => panic!("mixed families"),
    }
}

pub fn tcp(source: (IpAddr, u16), destination: (IpAddr, u16), syn: bool) -> Vec<u8> {
    let b = builder(source.0, destination.0).tcp(source.1, destination.1, 1000, 65535);
    let b = if syn { b.syn() } else { b.ack(1) };
    let mut out = Vec::new();
    b.write(&mut out, PAYLOAD).expect("building TCP");
    out
}

pub fn udp(source: (IpAddr, u16), destination: (IpAddr, u16)) -> Vec<u8> {
    let mut out = Vec::new();
    builder(source.0, destination.0)
        .udp(source.1, destination.1)
        .write(&mut out, PAYLOAD)
        .expect("building UDP");
    out
}

/// The verification tag of [`sctp`]'s packets.
pub const SCTP_TAG: u32 = 0x0102_0304;

/// An SCTP packet: the common header (tag [`SCTP_TAG`]) and one DATA chunk carrying
/// [`PAYLOAD`], padded to 4 bytes, its CRC32c computed.
pub fn sctp(source: (IpAddr, u16), destination: (IpAddr, u16)) -> Vec<u8> {
    let mut packet = Vec::new();
    packet.extend(source.1.to_be_bytes());
    packet.extend(destination.1.to_be_bytes());
    packet.extend(SCTP_TAG.to_be_bytes());
    packet.extend([0; 4]);
    // DATA, the whole of one message; TSN 1, stream 0, sequence 0, protocol identifier 0.
    packet.extend([0, 3]);
    packet.extend(((16 + PAYLOAD.len()) as u16).to_be_bytes());
    packet.extend(1u32.to_be_bytes());
    packet.extend([0; 8]);
    packet.extend(PAYLOAD);
    packet.resize(packet.len().next_multiple_of(4), 0);
    let crc = sctp::checksum(&packet);
    packet[sctp::CHECKSUM_OFFSET..sctp::HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
    let mut out = Vec::new();
    builder(source.0, destination.0)
        .write(&mut out, IpNumber::SCTP, &packet)
        .expect("building SCTP");
    out
}

/// An SCTP packet's ports and what it carries, after checking its CRC32c: the user data of its
/// first chunk when that is a whole DATA chunk, else every byte after the common header.
fn read_sctp(packet: &[u8]) -> Result<((u16, u16), Vec<u8>), String> {
    if packet.len() < sctp::HEADER_LEN {
        return Err(format!("SCTP packet of {} bytes", packet.len()));
    }
    let mut zeroed = packet.to_vec();
    zeroed[sctp::CHECKSUM_OFFSET..sctp::HEADER_LEN].fill(0);
    let found = u32::from_le_bytes(packet[8..12].try_into().expect("4 bytes"));
    let computed = sctp::checksum(&zeroed);
    if found != computed {
        return Err(format!(
            "SCTP CRC32c: {found:#010x} in the packet, {computed:#010x} computed"
        ));
    }
    let ports = (
        u16::from_be_bytes([packet[0], packet[1]]),
        u16::from_be_bytes([packet[2], packet[3]]),
    );
    let chunks = &packet[sctp::HEADER_LEN..];
    let data = match chunks {
        [0, _, high, low, ..]
            if (16..=chunks.len()).contains(&usize::from(u16::from_be_bytes([*high, *low]))) =>
        {
            &chunks[16..usize::from(u16::from_be_bytes([*high, *low]))]
        }
        _ => chunks,
    };
    Ok((ports, data.to_vec()))
}

/// What a packet says, after checking every checksum in it.
#[derive(Debug, PartialEq, Eq)]
pub struct Seen {
    pub source: (IpAddr, u16),
    pub destination: (IpAddr, u16),
    pub payload: Vec<u8>,
}

pub fn inspect(bytes: &[u8]) -> Seen {
    try_inspect(bytes).unwrap_or_else(|problem| panic!("{problem}"))
}

/// [`inspect`], what is wrong with the packet returned instead of panicking: for packets
/// that may be malformed (the fuzz's).
pub fn try_inspect(bytes: &[u8]) -> Result<Seen, String> {
    fn check<T: PartialEq + std::fmt::Debug>(
        found: T,
        computed: T,
        what: &str,
    ) -> Result<(), String> {
        if found == computed {
            Ok(())
        } else {
            Err(format!(
                "{what}: {found:?} in the packet, {computed:?} computed"
            ))
        }
    }
    let headers = PacketHeaders::from_ethernet_slice(bytes)
        .map_err(|error| format!("parsable packet: {error:?}"))?;
    let mut payload = headers.payload.slice().to_vec();
    let (source, destination) = match &headers.net {
        Some(NetHeaders::Ipv4(ip, _)) => {
            check(
                ip.header_checksum,
                ip.calc_header_checksum(),
                "IPv4 header checksum",
            )?;
            (IpAddr::from(ip.source), IpAddr::from(ip.destination))
        }
        Some(NetHeaders::Ipv6(ip, _)) => (IpAddr::from(ip.source), IpAddr::from(ip.destination)),
        other => return Err(format!("not IP: {other:?}")),
    };
    let (sport, dport) = match (&headers.transport, &headers.net) {
        (Some(TransportHeader::Tcp(t)), Some(NetHeaders::Ipv4(ip, _))) => {
            let computed = t
                .calc_checksum_ipv4(ip, &payload)
                .map_err(|e| format!("{e:?}"))?;
            check(t.checksum, computed, "TCP checksum")?;
            (t.source_port, t.destination_port)
        }
        (Some(TransportHeader::Tcp(t)), Some(NetHeaders::Ipv6(ip, _))) => {
            let computed = t
                .calc_checksum_ipv6(ip, &payload)
                .map_err(|e| format!("{e:?}"))?;
            check(t.checksum, computed, "TCP checksum")?;
            (t.source_port, t.destination_port)
        }
        (Some(TransportHeader::Udp(u)), Some(NetHeaders::Ipv4(ip, _))) => {
            if u.checksum != 0 {
                let computed = u
                    .calc_checksum_ipv4(ip, &payload)
                    .map_err(|e| format!("{e:?}"))?;
                check(u.checksum, computed, "UDP checksum")?;
            }
            (u.source_port, u.destination_port)
        }
        (Some(TransportHeader::Udp(u)), Some(NetHeaders::Ipv6(ip, _))) => {
            let computed = u
                .calc_checksum_ipv6(ip, &payload)
                .map_err(|e| format!("{e:?}"))?;
            check(u.checksum, computed, "UDP checksum")?;
            (u.source_port, u.destination_port)
        }
        (None, _) if matches!(&headers.payload, PayloadSlice::Ip(ip) if ip.ip_number == IpNumber::SCTP) =>
        {
            let (ports, data) = read_sctp(&payload)?;
            payload = data;
            ports
        }
        other => return Err(format!("unexpected transport: {other:?}")),
    };
    Ok(Seen {
        source: (source, sport),
        destination: (destination, dport),
        payload,
    })
}

/// Load options with the lab's `--cluster-cidr` of both families.
pub fn dual_stack_cluster() -> LoadOptions {
    let mut options = LoadOptions::default();
    options.config.cluster_v4 = [10, 244, 0, 0];
    options.config.cluster_v4_prefix = 16;
    options.config.cluster_v6 = v6("fd00:10:244::").octets();
    options.config.cluster_v6_prefix = 56;
    options
}

/// A namespace whose routes the datapath's FIB lookups see: a veth (its peer beside it)
/// holding the node's addresses 10.244.0.1/16 and fd00:10:244::1/56, so every pod address
/// (and the outside clients 192.0.2.0/24, 2001:db8::/32) routes through it with that source. The tests of masquerade run their programs in it.
pub fn routed_node() -> Netns {
    require_root();
    let netns = Netns::create(&unique("tsdp-"));
    netns.ip(&["link", "add", "ts0", "type", "veth", "peer", "name", "ts1"]);
    netns.ip(&["addr", "add", "10.244.0.1/16", "dev", "ts0"]);
    netns.ip(&["addr", "add", "fd00:10:244::1/56", "dev", "ts0", "nodad"]);
    netns.ip(&["link", "set", "ts1", "up"]);
    netns.ip(&["link", "set", "ts0", "up"]);
    // Clients outside the cluster, reachable through the same interface.
    netns.ip(&["route", "add", "192.0.2.0/24", "dev", "ts0"]);
    netns.ip(&["-6", "route", "add", "2001:db8::/32", "dev", "ts0"]);
    // The lookup is a forwarding one, as for a packet from a pod: the node forwards.
    netns.sysctl("net.ipv4.ip_forward", "1");
    netns.sysctl("net.ipv6.conf.all.forwarding", "1");
    netns
}

/// [`routed_node`] with the MAC addresses of backend A (10.244.2.2, fd00:10:244:2::2) and of
/// the outside clients (192.0.2.7, 2001:db8::7) resolved on `ts0`, so the XDP path can send
/// their flows itself; backend B's stay unresolved (handed on to TC).
pub fn routed_node_with_neighbours() -> Netns {
    let netns = routed_node();
    for (address, mac) in [
        ("10.244.2.2", "02:00:00:00:00:22"),
        ("fd00:10:244:2::2", "02:00:00:00:00:22"),
        ("192.0.2.7", "02:00:00:00:00:77"),
        ("2001:db8::7", "02:00:00:00:00:77"),
    ] {
        netns.ip(&[
            "neigh",
            "add",
            address,
            "lladdr",
            mac,
            "dev",
            "ts0",
            "nud",
            "permanent",
        ]);
    }
    netns
}

/// A NodePort entry of `address:port/protocol` for `backends` (port 8080); `local`: the
/// external entry of an `externalTrafficPolicy: Local` Service (its internal twin is left out).
pub fn node_port<A: Address>(
    address: A,
    port: u16,
    protocol: Protocol,
    backends: &[A],
    local: bool,
) -> (Frontend<A>, ServiceEntry<A>) {
    let (frontend, mut entry) = service(
        address,
        port,
        protocol,
        &backends.iter().map(|b| (*b, 8080)).collect::<Vec<_>>(),
    );
    entry.kind = FrontendKind::NodePort;
    entry.local = local;
    (frontend, entry)
}
