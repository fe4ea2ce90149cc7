//! Datapath fuzz (issue 11, fuzzed input): a million seeded random and mutated packets through
//! every TC and XDP program, both families, in a routed namespace (so masquerade, redirects and
//! the XDP fast path run too), against one oracle:
//!
//! - a packet that is not service traffic (by the datapath's own parsing rules, mirrored in
//!   [`Mirror`]) passes untouched, counted `pass`;
//! - a packet to a frontend that the datapath parses is served: translated (to a backend of that
//!   frontend, checksums kept valid), rejected, or dropped with the frontend's counted reason,
//!   never passed as if it were nobody's; one it cannot parse passes untouched;
//! - a drop verdict comes with a drop outcome, every verdict with its outcome's;
//! - each run counts exactly one outcome (the XDP program counts `xdp` besides when it served
//!   the packet itself), so over every batch the counters' deltas add up to the packets run.
//!
//! A failure prints the seed, the program, the packet and what came out, in hex;
//! `TWINSTACK_FUZZ_SEED=<seed>` replays a run (`TWINSTACK_FUZZ_PACKETS=<n>` sets the packets per
//! program and family, 100,000 by default).
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
    ops::Range,
    os::fd::AsFd,
    time::Instant,
};

use aya::maps::MapData;
use proxy_common::{config::DEFAULT_SNAT_PORTS, counter::Counter, map_names, programs};
use proxy_userspace::{
    family::Address,
    maps::{batch, ranges::RangeKey, writer::Writer},
    model::Protocol,
    plan::{Backend, BackendState, Frontend, FrontendKind, ServiceEntry},
};
use twinstack_lab::fixture::{
    DROP, Fixture, NEXT, REDIRECT, XDP_PASS, XDP_REDIRECT, dual_stack_cluster,
    routed_node_with_neighbours, try_inspect, v6,
};

/// `XDP_DROP`.
const XDP_DROP: u32 = 1;
const TCP: u8 = 6;
const UDP: u8 = 17;
const SCTP: u8 = 132;
const ICMP: u8 = 1;
const ICMPV6: u8 = 58;
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const ETH: usize = 14;
/// The farthest offset the XDP program reads at (`proxy-ebpf/src/ctx.rs`, `XDP_MAX_OFFSET`).
const XDP_MAX_OFFSET: usize = 1024;
/// Packets in a batch of one program and family, between two checks of the counter totals.
const BATCH: usize = 1_000;
const DEFAULT_SEED: u64 = 0x7457_5354_4143_4b11;

/// splitmix64: small, fast, and the same sequence for a seed everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }

    fn u16(&mut self) -> u16 {
        self.next() as u16
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Fam {
    V4,
    V6,
}

/// Where a program runs, which decides what it makes of a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hook {
    /// TC ingress of a pod interface (`from_pod`).
    Pod,
    /// TC ingress of a device (`from_device`).
    Device,
    /// XDP on a device (`xdp_device`).
    Xdp,
    /// TC egress (`to_pod`, `to_device`): reverse NAT.
    Egress,
}

const PROGRAMS: [(&str, Hook); 5] = [
    (programs::FROM_POD, Hook::Pod),
    (programs::TO_POD, Hook::Egress),
    (programs::FROM_DEVICE, Hook::Device),
    (programs::TO_DEVICE, Hook::Egress),
    (programs::XDP_DEVICE, Hook::Xdp),
];

/// A frontend as the fuzz programs it, and what the datapath must do with its packets.
#[derive(Clone, Debug)]
struct Front {
    address: IpAddr,
    port: u16,
    protocol: u8,
    kind: FrontendKind,
    backends: Vec<(IpAddr, u16)>,
    local: bool,
    /// `loadBalancerSourceRanges`: one prefix.
    range: Option<(IpAddr, u8)>,
}

/// One family's addresses and frontends.
struct Net {
    vip: IpAddr,
    node: IpAddr,
    backends: [IpAddr; 2],
    /// Pods (inside the cluster CIDR).
    clients: Vec<IpAddr>,
    /// Outside the cluster, routed: the first inside the load balancer's source range.
    outside: Vec<IpAddr>,
    /// Addresses of no frontend and no backend: their traffic is nobody's business.
    strangers: Vec<IpAddr>,
    /// A router on the way, for ICMP errors.
    router: IpAddr,
    fronts: Vec<Front>,
    /// Every address of a frontend or a backend, and the node's, as bytes.
    service_addresses: Vec<Vec<u8>>,
}

fn front(address: IpAddr, port: u16, protocol: u8, backends: &[(IpAddr, u16)]) -> Front {
    Front {
        address,
        port,
        protocol,
        kind: FrontendKind::ClusterIp,
        backends: backends.to_vec(),
        local: false,
        range: None,
    }
}

impl Net {
    #[allow(clippy::too_many_arguments)]
    fn new(
        vip: IpAddr,
        lb: IpAddr,
        node: IpAddr,
        backends: [IpAddr; 2],
        range: (IpAddr, u8),
        clients: Vec<IpAddr>,
        outside: Vec<IpAddr>,
        strangers: Vec<IpAddr>,
        router: IpAddr,
    ) -> Self {
        let [a, b] = backends;
        let mut fronts = vec![
            front(vip, 80, TCP, &[(a, 8080), (b, 8080)]),
            front(vip, 53, UDP, &[(a, 5353), (b, 5353)]),
            front(vip, 9000, SCTP, &[(a, 9000)]),
            // No endpoints: rejected.
            front(vip, 81, TCP, &[]),
            front(vip, 54, UDP, &[]),
            // `internalTrafficPolicy: Local`, no local endpoint: dropped.
            Front {
                local: true,
                ..front(vip, 82, TCP, &[])
            },
            // The cluster IP's unexposed ports, as the agent programs them.
            front(vip, 0, TCP, &[]),
            front(vip, 0, UDP, &[]),
            Front {
                kind: FrontendKind::LoadBalancer,
                range: Some(range),
                ..front(lb, 80, TCP, &[(a, 8080)])
            },
            Front {
                kind: FrontendKind::NodePort,
                ..front(node, 30080, TCP, &[(a, 8080), (b, 8080)])
            },
            Front {
                kind: FrontendKind::NodePort,
                ..front(node, 30053, UDP, &[(a, 5353)])
            },
            Front {
                kind: FrontendKind::NodePort,
                local: true,
                ..front(node, 30081, TCP, &[])
            },
            // `externalTrafficPolicy: Local` with a local endpoint: DNAT without SNAT.
            Front {
                kind: FrontendKind::NodePort,
                local: true,
                ..front(node, 30082, TCP, &[(a, 8080)])
            },
            front(vip, 0, SCTP, &[]),
            // Target ports of their own: the CRC32c moves with the port, and with the
            // masquerade's source port.
            front(vip, 9001, SCTP, &[(a, 9101)]),
            Front {
                kind: FrontendKind::NodePort,
                ..front(node, 30132, SCTP, &[(a, 9101)])
            },
        ];
        fronts.shrink_to_fit();
        let service_addresses = [vip, lb, node, a, b].iter().map(octets).collect();
        Self {
            vip,
            node,
            backends,
            clients,
            outside,
            strangers,
            router,
            fronts,
            service_addresses,
        }
    }

    fn v4() -> Self {
        let ip = |a, b, c, d| IpAddr::from(Ipv4Addr::new(a, b, c, d));
        Self::new(
            ip(10, 96, 0, 10),
            ip(10, 96, 200, 1),
            ip(10, 244, 0, 1),
            [ip(10, 244, 2, 2), ip(10, 244, 3, 2)],
            (ip(192, 0, 2, 0), 25),
            vec![ip(10, 244, 1, 2), ip(10, 244, 1, 3)],
            vec![ip(192, 0, 2, 7), ip(192, 0, 2, 200)],
            vec![ip(10, 244, 9, 9), ip(203, 0, 113, 5), ip(198, 51, 100, 77)],
            ip(10, 244, 0, 254),
        )
    }

    fn v6() -> Self {
        let ip = |s| IpAddr::from(v6(s));
        Self::new(
            ip("fd00:10:96::10"),
            ip("fd00:10:96::200"),
            ip("fd00:10:244::1"),
            [ip("fd00:10:244:2::2"), ip("fd00:10:244:3::2")],
            (ip("2001:db8::"), 48),
            vec![ip("fd00:10:244:1::2"), ip("fd00:10:244:1::3")],
            vec![ip("2001:db8::7"), ip("2001:db8:ffff::9")],
            vec![ip("fd00:10:244:9::9"), ip("2001:db8:99::5"), ip("3fff::5")],
            ip("fd00:10:244::fe"),
        )
    }

    fn front(&self, address: IpAddr, port: u16, protocol: u8) -> Option<&Front> {
        self.fronts
            .iter()
            .find(|f| f.address == address && f.port == port && f.protocol == protocol)
    }

    fn is_backend(&self, address: IpAddr) -> bool {
        self.backends.contains(&address)
    }

    /// Whether the packet (after its Ethernet header) holds a frontend's, a backend's or the
    /// node's address anywhere: only then can a packet without ports (an ICMP error, a later
    /// fragment) be about a flow of ours.
    fn mentions_service(&self, packet: &[u8]) -> bool {
        let body = packet.get(ETH..).unwrap_or_default();
        self.service_addresses
            .iter()
            .any(|a| body.windows(a.len()).any(|w| w == &a[..]))
    }
}

fn octets(address: &IpAddr) -> Vec<u8> {
    match address {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn address_of(fam: Fam, bytes: &[u8]) -> IpAddr {
    match fam {
        Fam::V4 => IpAddr::from(<[u8; 4]>::try_from(bytes).expect("4 bytes")),
        Fam::V6 => IpAddr::from(<[u8; 16]>::try_from(bytes).expect("16 bytes")),
    }
}

fn within(address: IpAddr, (network, prefix): (IpAddr, u8)) -> bool {
    let (a, n) = (octets(&address), octets(&network));
    (0..usize::from(prefix)).all(|bit| (a[bit / 8] ^ n[bit / 8]) & (0x80 >> (bit % 8)) == 0)
}

fn protocol_of(protocol: u8) -> Protocol {
    match protocol {
        TCP => Protocol::Tcp,
        UDP => Protocol::Udp,
        _ => Protocol::Sctp,
    }
}

fn upsert<A: Address>(writer: &mut Writer<A>, front: &Front) {
    let a = |ip: IpAddr| A::from_ip(ip).expect("the writer's family");
    let protocol = protocol_of(front.protocol);
    let frontend = Frontend::new(a(front.address), front.port, protocol);
    let entry = ServiceEntry {
        kind: front.kind,
        backends: front
            .backends
            .iter()
            .map(|(address, port)| Backend {
                address: a(*address),
                port: *port,
                protocol,
                state: BackendState::Active,
            })
            .collect(),
        local: front.local,
        two_scopes: false,
        affinity_timeout: None,
        source_ranges: front.range.map(|(c, p)| (a(c), p)).into_iter().collect(),
    };
    for (client, prefix) in &entry.source_ranges {
        let key = RangeKey {
            frontend: frontend.address,
            port: front.port,
            protocol,
            client: *client,
            prefix: *prefix,
        };
        writer.source_ranges().put(&key, &()).expect("source range");
    }
    writer
        .upsert(&frontend, &entry)
        .expect("programming a frontend");
}

/// What the fuzz builds a packet from. Every field is plain data, so a generator sets what
/// it wants and [`build`] makes the bytes, lengths and checksums right.
#[derive(Clone, Debug)]
struct Spec {
    source: IpAddr,
    destination: IpAddr,
    protocol: u8,
    source_port: u16,
    destination_port: u16,
    tcp_flags: u8,
    /// TCP options, in 4-byte words (0..=10).
    tcp_options: usize,
    payload: Vec<u8>,
    /// IPv4 options, in 4-byte words (0..=10).
    ip_options: usize,
    /// IPv6 extension headers before the upper layer (0, 43, 60, 51; 44 is [`Spec::fragment`]).
    extensions: Vec<u8>,
    fragment: Option<Fragment>,
    /// ICMP (ICMPv6) error type and code; the payload is its quote.
    icmp: Option<(u8, u8)>,
    vlan: bool,
}

#[derive(Clone, Copy, Debug)]
struct Fragment {
    /// In 8-byte units.
    offset: u16,
    more: bool,
    id: u32,
}

impl Spec {
    fn new(source: (IpAddr, u16), destination: (IpAddr, u16), protocol: u8) -> Self {
        Self {
            source: source.0,
            destination: destination.0,
            protocol,
            source_port: source.1,
            destination_port: destination.1,
            tcp_flags: SYN,
            tcp_options: 0,
            payload: b"twinstack fuzz".to_vec(),
            ip_options: 0,
            extensions: Vec::new(),
            fragment: None,
            icmp: None,
            vlan: false,
        }
    }

    fn fam(&self) -> Fam {
        if self.source.is_ipv4() {
            Fam::V4
        } else {
            Fam::V6
        }
    }
}

/// A built packet and where its headers are.
struct Built {
    bytes: Vec<u8>,
    l3: usize,
    l4: usize,
}

fn checksum(chunks: &[&[u8]]) -> u16 {
    let mut sum: u64 = 0;
    for chunk in chunks {
        for word in chunk.chunks(2) {
            let hi = u64::from(word[0]) << 8;
            let lo = word.get(1).copied().map_or(0, u64::from);
            sum += hi | lo;
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn pseudo_header(spec: &Spec, protocol: u8, length: usize) -> Vec<u8> {
    let mut p = octets(&spec.source);
    p.extend(octets(&spec.destination));
    match spec.fam() {
        Fam::V4 => p.extend([0, protocol, (length >> 8) as u8, length as u8]),
        Fam::V6 => {
            p.extend((length as u32).to_be_bytes());
            p.extend([0, 0, 0, protocol]);
        }
    }
    p
}

fn build(spec: &Spec) -> Built {
    let later_fragment = spec.fragment.is_some_and(|f| f.offset != 0);
    let mut l4 = Vec::new();
    if later_fragment {
        l4.extend_from_slice(&spec.payload);
    } else {
        let ports = |l4: &mut Vec<u8>| {
            l4.extend(spec.source_port.to_be_bytes());
            l4.extend(spec.destination_port.to_be_bytes());
        };
        let checksum_at = match spec.protocol {
            TCP => {
                ports(&mut l4);
                l4.extend(1000u32.to_be_bytes());
                l4.extend(1u32.to_be_bytes());
                l4.push(((5 + spec.tcp_options) as u8) << 4);
                l4.push(spec.tcp_flags);
                l4.extend([0xff, 0xff, 0, 0, 0, 0]);
                l4.extend(std::iter::repeat_n(1u8, spec.tcp_options * 4)); // NOPs
                Some(16)
            }
            UDP => {
                ports(&mut l4);
                l4.extend(((8 + spec.payload.len()) as u16).to_be_bytes());
                l4.extend([0, 0]);
                Some(6)
            }
            SCTP => {
                ports(&mut l4);
                l4.extend([0x11, 0x22, 0x33, 0x44, 0, 0, 0, 0]);
                None
            }
            ICMP | ICMPV6 => {
                let (kind, code) = spec.icmp.unwrap_or((3, 3));
                l4.extend([kind, code, 0, 0, 0, 0, 0x05, 0x00]);
                Some(2)
            }
            _ => None,
        };
        l4.extend_from_slice(&spec.payload);
        if spec.protocol == SCTP && spec.payload.len().is_multiple_of(2) {
            // Half carry their CRC32c; the others leave it to checksum offload (zero).
            let crc = proxy_common::sctp::checksum(&l4);
            l4[8..12].copy_from_slice(&crc.to_le_bytes());
        }
        if let Some(at) = checksum_at {
            let sum = match (spec.protocol, spec.fam()) {
                (ICMP, _) => checksum(&[&l4]),
                (protocol, _) => checksum(&[&pseudo_header(spec, protocol, l4.len()), &l4]),
            };
            let sum = if sum == 0 && spec.protocol == UDP {
                0xffff
            } else {
                sum
            };
            l4[at..at + 2].copy_from_slice(&sum.to_be_bytes());
        }
    }
    let mut bytes = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1];
    if spec.vlan {
        bytes.extend([0x81, 0x00, 0x00, 0x07]);
    }
    let l3 = bytes.len() + 2;
    let (ether_type, mut ip) = match spec.fam() {
        Fam::V4 => {
            let header_len = 20 + 4 * spec.ip_options;
            let mut h = vec![0x40 | (header_len / 4) as u8, 0];
            h.extend(((header_len + l4.len()) as u16).to_be_bytes());
            let (id, flags) = spec.fragment.map_or((0x1234, 0u16), |f| {
                (
                    f.id as u16,
                    (f.offset & 0x1fff) | if f.more { 0x2000 } else { 0 },
                )
            });
            h.extend(id.to_be_bytes());
            h.extend(flags.to_be_bytes());
            h.extend([64, spec.protocol, 0, 0]);
            h.extend(octets(&spec.source));
            h.extend(octets(&spec.destination));
            h.extend(std::iter::repeat_n(1u8, 4 * spec.ip_options)); // NOPs
            let sum = checksum(&[&h]);
            h[10..12].copy_from_slice(&sum.to_be_bytes());
            (0x0800u16, h)
        }
        Fam::V6 => {
            let mut chain = spec.extensions.clone();
            if spec.fragment.is_some() {
                chain.push(44);
            }
            let mut extensions = Vec::new();
            for (i, kind) in chain.iter().enumerate() {
                let next = chain.get(i + 1).copied().unwrap_or(spec.protocol);
                match *kind {
                    44 => {
                        let f = spec.fragment.expect("a fragment");
                        let offset_flags = (f.offset << 3) | u16::from(f.more);
                        extensions.extend([next, 0]);
                        extensions.extend(offset_flags.to_be_bytes());
                        extensions.extend(f.id.to_be_bytes());
                    }
                    51 => {
                        // Authentication header: 24 bytes (its length field counts 4-byte
                        // words, minus 2).
                        extensions.extend([next, 4, 0, 0]);
                        extensions.extend([0u8; 20]);
                    }
                    43 => {
                        // A routing header of an unassigned type, no segment left.
                        extensions.extend([next, 0, 253, 0, 0, 0, 0, 0]);
                    }
                    _ => {
                        // Hop-by-hop or destination options: 8 bytes, a PadN.
                        extensions.extend([next, 0, 1, 4, 0, 0, 0, 0]);
                    }
                }
            }
            let first = chain.first().copied().unwrap_or(spec.protocol);
            let mut h = vec![0x60, 0, 0, 0];
            h.extend(((extensions.len() + l4.len()) as u16).to_be_bytes());
            h.extend([first, 64]);
            h.extend(octets(&spec.source));
            h.extend(octets(&spec.destination));
            h.extend(extensions);
            (0x86ddu16, h)
        }
    };
    bytes.extend(ether_type.to_be_bytes());
    let l4_at = l3 + ip.len();
    ip.extend(l4);
    bytes.extend(ip);
    Built {
        bytes,
        l3,
        l4: l4_at,
    }
}

/// The datapath's parser (`proxy-ebpf/src/parse.rs`), mirrored: what a program makes of a
/// packet decides what the oracle expects of it.
struct Mirror;

/// A packet the datapath reads ports from.
#[derive(Clone, Debug)]
struct Parsed {
    fam: Fam,
    l4: usize,
    source: IpAddr,
    destination: IpAddr,
    source_port: u16,
    destination_port: u16,
    protocol: u8,
    tcp_flags: u8,
    /// The first fragment of several.
    first_fragment: bool,
}

impl Mirror {
    fn load(packet: &[u8], at: usize, len: usize, xdp: bool) -> Option<&[u8]> {
        if xdp && at > XDP_MAX_OFFSET {
            return None;
        }
        packet.get(at..at.checked_add(len)?)
    }

    fn fam(packet: &[u8]) -> Option<Fam> {
        match packet.get(12..14)? {
            [0x08, 0x00] => Some(Fam::V4),
            [0x86, 0xdd] => Some(Fam::V6),
            _ => None,
        }
    }

    fn parse(packet: &[u8], xdp: bool) -> Option<Parsed> {
        match Self::fam(packet)? {
            Fam::V4 => Self::parse_v4(packet, xdp),
            Fam::V6 => Self::parse_v6(packet, xdp),
        }
    }

    fn parse_v4(packet: &[u8], xdp: bool) -> Option<Parsed> {
        let h = Self::load(packet, ETH, 20, xdp)?;
        let header_len = usize::from(h[0] & 0x0f) * 4;
        if h[0] >> 4 != 4 || header_len < 20 {
            return None;
        }
        let flags_offset = u16::from_be_bytes([h[6], h[7]]);
        if flags_offset & 0x1fff != 0 {
            return None;
        }
        Self::ports(
            packet,
            xdp,
            Parsed {
                fam: Fam::V4,
                l4: ETH + header_len,
                source: address_of(Fam::V4, &h[12..16]),
                destination: address_of(Fam::V4, &h[16..20]),
                source_port: 0,
                destination_port: 0,
                protocol: h[9],
                tcp_flags: 0,
                first_fragment: flags_offset & 0x2000 != 0,
            },
        )
    }

    fn parse_v6(packet: &[u8], xdp: bool) -> Option<Parsed> {
        let h = Self::load(packet, ETH, 40, xdp)?;
        if h[0] >> 4 != 6 {
            return None;
        }
        let mut next = h[6];
        let mut offset = ETH + 40;
        let mut found = false;
        let mut first_fragment = false;
        for _ in 0..8 {
            match next {
                TCP | UDP | SCTP => {
                    found = true;
                    break;
                }
                0 | 43 | 60 => {
                    let e = Self::load(packet, offset, 2, xdp)?;
                    next = e[0];
                    offset += (usize::from(e[1]) + 1) * 8;
                }
                44 => {
                    let e = Self::load(packet, offset, 8, xdp)?;
                    let offset_flags = u16::from_be_bytes([e[2], e[3]]);
                    if offset_flags & 0xfff8 != 0 {
                        return None;
                    }
                    first_fragment |= offset_flags & 1 != 0;
                    next = e[0];
                    offset += 8;
                }
                51 => {
                    let e = Self::load(packet, offset, 2, xdp)?;
                    next = e[0];
                    offset += (usize::from(e[1]) + 2) * 4;
                }
                _ => return None,
            }
        }
        if !found {
            return None;
        }
        Self::ports(
            packet,
            xdp,
            Parsed {
                fam: Fam::V6,
                l4: offset,
                source: address_of(Fam::V6, &h[8..24]),
                destination: address_of(Fam::V6, &h[24..40]),
                source_port: 0,
                destination_port: 0,
                protocol: next,
                tcp_flags: 0,
                first_fragment,
            },
        )
    }

    fn ports(packet: &[u8], xdp: bool, mut parsed: Parsed) -> Option<Parsed> {
        let len = match parsed.protocol {
            TCP => 20,
            UDP => 8,
            SCTP => 12,
            _ => return None,
        };
        let l4 = Self::load(packet, parsed.l4, len, xdp)?;
        parsed.source_port = u16::from_be_bytes([l4[0], l4[1]]);
        parsed.destination_port = u16::from_be_bytes([l4[2], l4[3]]);
        if parsed.protocol == TCP {
            parsed.tcp_flags = l4[13];
        }
        Some(parsed)
    }

    /// Whether the TC path may take a packet without ports for a later fragment
    /// (`parse.rs` `fragment_v4/6`) or an ICMP error (`icmp.rs`): only those it may translate.
    fn fragment_or_icmp(packet: &[u8], fam: Fam) -> bool {
        match fam {
            Fam::V4 => packet.get(ETH..ETH + 20).is_some_and(|h| {
                h[0] >> 4 == 4 && (u16::from_be_bytes([h[6], h[7]]) & 0x1fff != 0 || h[9] == ICMP)
            }),
            Fam::V6 => packet
                .get(ETH..ETH + 8)
                .is_some_and(|h| h[0] >> 4 == 6 && (h[6] == 44 || h[6] == ICMPV6)),
        }
    }
}

/// What the oracle allows a program to make of a packet.
#[derive(Clone, Debug)]
struct Expect {
    /// The outcomes allowed (`[Pass]` alone: not service traffic, so untouched).
    outcomes: &'static [Counter],
    why: &'static str,
    /// The frontend the packet is addressed to.
    front: Option<Front>,
}

const UNTOUCHED: &[Counter] = &[Counter::Pass];
const TC_SERVED: &[Counter] = &[
    Counter::DnatNew,
    Counter::DnatEstablished,
    Counter::SnatNew,
    Counter::SnatEstablished,
    Counter::SnatError,
    Counter::ConntrackError,
];
/// Whether the SCTP packet `p` (per its IP header) is a whole number of 32-bit words, as every
/// valid one is, and the packet holds them all (an IP length field can lie: one the packet
/// does not hold, or one that wraps below the headers, tells no length to move the CRC32c by).
fn whole_words(packet: &[u8], p: &Parsed) -> bool {
    let field = |at: usize| u16::from_be_bytes([packet[at], packet[at + 1]]);
    // In 16 bits, wrapping as the datapath reads the field.
    let len = usize::from(match p.fam {
        Fam::V4 => field(ETH + 2).wrapping_sub((p.l4 - ETH) as u16),
        Fam::V6 => field(ETH + 4).wrapping_sub((p.l4 - ETH - 40) as u16),
    });
    len.is_multiple_of(4) && len >= 12 && p.l4 + len <= packet.len()
}

/// The CRC32c covers the whole datagram, whose length a first fragment does not tell, and is
/// only defined over whole words the packet holds: where a port would change, the rewrite is
/// refused (`nat.rs`).
const TC_SERVED_SCTP_UNKNOWN_LENGTH: &[Counter] = &[
    Counter::DnatNew,
    Counter::DnatEstablished,
    Counter::SnatNew,
    Counter::SnatEstablished,
    Counter::SnatError,
    Counter::ConntrackError,
    Counter::RewriteError,
];
const XDP_SERVED: &[Counter] = &[
    Counter::DnatNew,
    Counter::DnatEstablished,
    Counter::SnatNew,
    Counter::SnatEstablished,
    Counter::XdpToTc,
];
const TC_REJECTED: &[Counter] = &[Counter::Reject, Counter::NoBackend, Counter::RewriteError];
const TC_MASQUERADE_REPLY: &[Counter] = &[
    Counter::ReverseSnat,
    Counter::Pass,
    Counter::SnatError,
    Counter::RewriteError,
];
const XDP_MASQUERADE_REPLY: &[Counter] = &[Counter::ReverseSnat, Counter::Pass, Counter::XdpToTc];
const REPLY: &[Counter] = &[Counter::ReverseNat, Counter::Pass, Counter::RewriteError];
const PORTLESS: &[Counter] = &[
    Counter::Pass,
    Counter::Fragment,
    Counter::IcmpError,
    Counter::RewriteError,
];

fn expect(outcomes: &'static [Counter], why: &'static str) -> Expect {
    Expect {
        outcomes,
        why,
        front: None,
    }
}

/// The oracle: what `hook` may do with `packet`, from its bytes alone (no conntrack state:
/// where a flow may or may not be known, both outcomes are allowed).
fn oracle(nets: &[Net; 2], hook: Hook, packet: &[u8]) -> Expect {
    let Some(fam) = Mirror::fam(packet) else {
        return expect(UNTOUCHED, "not IP (an ARP, a VLAN tag, garbage)");
    };
    let net = &nets[fam as usize];
    let xdp = hook == Hook::Xdp;
    let Some(p) = Mirror::parse(packet, xdp) else {
        if xdp {
            return expect(UNTOUCHED, "XDP: no ports");
        }
        if !Mirror::fragment_or_icmp(packet, fam) {
            return expect(UNTOUCHED, "no ports, no later fragment, no ICMP error");
        }
        if !net.mentions_service(packet) {
            return expect(
                UNTOUCHED,
                "a fragment or ICMP error naming no service address",
            );
        }
        return expect(
            PORTLESS,
            "a fragment or ICMP error that may be about a flow",
        );
    };
    if hook == Hook::Egress {
        if !net.is_backend(p.source) {
            return expect(UNTOUCHED, "egress: not from a backend");
        }
        return expect(REPLY, "egress: from a backend, maybe a reply");
    }
    if xdp && p.first_fragment {
        return expect(UNTOUCHED, "XDP: a first fragment is TC's");
    }
    if xdp && p.protocol == SCTP {
        return expect(UNTOUCHED, "XDP: SCTP is TC's");
    }
    let Some(front) = net.front(p.destination, p.destination_port, p.protocol) else {
        let new_flow = match p.protocol {
            TCP => p.tcp_flags & (SYN | ACK) == SYN,
            UDP | SCTP => true,
            _ => false,
        };
        if p.destination == net.vip && new_flow {
            return if xdp {
                expect(UNTOUCHED, "XDP: an unexposed port (TC rejects)")
            } else {
                expect(
                    TC_REJECTED,
                    "a new flow to a port the cluster IP does not expose",
                )
            };
        }
        let (low, high) = DEFAULT_SNAT_PORTS;
        if p.destination == net.node && (low..=high).contains(&p.destination_port) {
            return if xdp {
                expect(XDP_MASQUERADE_REPLY, "to the node on a masquerade port")
            } else {
                expect(TC_MASQUERADE_REPLY, "to the node on a masquerade port")
            };
        }
        return expect(UNTOUCHED, "ingress: to no frontend");
    };
    let mut e = if front.range.is_some_and(|r| !within(p.source, r)) {
        expect(&[Counter::DropSourceRange], "outside the source ranges")
    } else if front.backends.is_empty() && front.local {
        expect(&[Counter::DropNoLocalEndpoint], "Local, no local endpoint")
    } else if front.backends.is_empty() {
        if xdp {
            expect(UNTOUCHED, "XDP: no endpoint (TC rejects)")
        } else {
            expect(TC_REJECTED, "no endpoint")
        }
    } else if xdp {
        expect(XDP_SERVED, "XDP: to a frontend with endpoints")
    } else if p.protocol == SCTP && (p.first_fragment || !whole_words(packet, &p)) {
        expect(
            TC_SERVED_SCTP_UNKNOWN_LENGTH,
            "an SCTP first fragment, or a length of no whole words: refused where a port would change",
        )
    } else {
        expect(TC_SERVED, "to a frontend with endpoints")
    };
    e.front = Some(front.clone());
    e
}

/// The verdicts a TC program may return with `outcome` (`proxy-ebpf/src/outcome.rs`).
fn tc_verdicts(outcome: Counter) -> &'static [u32] {
    match outcome {
        Counter::DropNoLocalEndpoint | Counter::DropSourceRange | Counter::SnatError => &[DROP],
        Counter::Reject | Counter::SnatNew | Counter::SnatEstablished | Counter::ReverseSnat => {
            &[REDIRECT]
        }
        // A rewrite that failed halfway through a reject leaves neither packet: dropped.
        Counter::RewriteError => &[NEXT, DROP],
        _ => &[NEXT],
    }
}

fn xdp_verdicts(outcome: Counter) -> &'static [u32] {
    match outcome {
        Counter::DropNoLocalEndpoint | Counter::DropSourceRange => &[XDP_DROP],
        Counter::SnatNew | Counter::SnatEstablished | Counter::ReverseSnat => &[XDP_REDIRECT],
        _ => &[XDP_PASS],
    }
}

/// Outcomes that leave the packet as it came.
fn untouched(outcome: Counter) -> bool {
    matches!(
        outcome,
        Counter::Pass | Counter::NoBackend | Counter::ConntrackError | Counter::XdpToTc
    )
}

/// Reads every outcome counter in one `BPF_MAP_LOOKUP_BATCH` (25 lookups a packet would cost
/// more than the run).
struct CounterReader {
    map: MapData,
    cpus: usize,
    keys: Vec<u32>,
    values: Vec<u64>,
}

impl CounterReader {
    fn new(fx: &Fixture) -> Self {
        let map = MapData::from_pin(fx.pins.map(map_names::COUNTERS)).expect("counters pin");
        let cpus = aya::util::nr_cpus().expect("possible CPUs");
        let n = Counter::COUNT as usize;
        Self {
            map,
            cpus,
            keys: vec![0; n],
            values: vec![0; n * cpus],
        }
    }

    fn read(&mut self) -> Vec<u64> {
        let read = batch::lookup_first(self.map.fd().as_fd(), &mut self.keys, &mut self.values)
            .expect("BPF_MAP_LOOKUP_BATCH on the counters");
        assert_eq!(read, Counter::COUNT as usize, "every counter read");
        let mut totals = vec![0u64; Counter::COUNT as usize];
        for (i, key) in self.keys.iter().enumerate() {
            let per_cpu = &self.values[i * self.cpus..(i + 1) * self.cpus];
            totals[*key as usize] = per_cpu.iter().sum();
        }
        totals
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A translated flow, as the programs' output showed it: what replies and ICMP errors are
/// made of.
#[derive(Clone, Copy, Debug)]
struct Flow {
    client: (IpAddr, u16),
    frontend: (IpAddr, u16),
    backend: (IpAddr, u16),
    /// The node's address and port a masqueraded flow left with.
    masquerade: Option<(IpAddr, u16)>,
    protocol: u8,
}

/// Tallies for the report.
#[derive(Default)]
struct Tally {
    runs: u64,
    refused: u64,
    untouched_by_oracle: u64,
    outcomes: BTreeMap<&'static str, u64>,
}

struct Fuzzer {
    fx: Fixture,
    counters: CounterReader,
    nets: [Net; 2],
    ifindex: u32,
    seed: u64,
    rng: Rng,
    flows: [Vec<Flow>; 2],
    /// The last counter totals read.
    totals: Vec<u64>,
    tallies: BTreeMap<(&'static str, Fam), Tally>,
}

/// What a run did, as the oracle judges it.
struct Run<'a> {
    program: &'static str,
    hook: Hook,
    scenario: &'a str,
    input: &'a [u8],
}

impl Fuzzer {
    /// Loads the datapath (in the routed namespace the caller entered), programs both
    /// families' frontends.
    fn new(seed: u64, ifindex: u32) -> Self {
        let mut fx = Fixture::with_options(&dual_stack_cluster());
        let nets = [Net::v4(), Net::v6()];
        for front in &nets[0].fronts {
            upsert(&mut fx.v4, front);
        }
        for front in &nets[1].fronts {
            upsert(&mut fx.v6, front);
        }
        let mut counters = CounterReader::new(&fx);
        let totals = counters.read();
        Self {
            fx,
            counters,
            nets,
            ifindex,
            seed,
            rng: Rng(seed),
            flows: [Vec::new(), Vec::new()],
            totals,
            tallies: BTreeMap::new(),
        }
    }

    fn fail(&self, run: &Run, problem: &str, verdict: Option<u32>, out: &[u8], moved: &str) -> ! {
        panic!(
            "datapath fuzz failure (seed {:#x}): {problem}\n  program {} ({:?}), scenario {}\n  \
             oracle: {:?}\n  verdict {verdict:?}, counters moved: {moved}\n  in  ({} bytes) {}\n  \
             out ({} bytes) {}\nreplay: TWINSTACK_FUZZ_SEED={:#x}",
            self.seed,
            run.program,
            run.hook,
            run.scenario,
            oracle(&self.nets, run.hook, run.input),
            run.input.len(),
            hex(run.input),
            out.len(),
            hex(out),
            self.seed,
        )
    }

    /// Runs one packet through `program` and checks it against the oracle.
    /// Tallied under `fam`, the family it was made for (a non-IP frame has none of its own).
    fn run(&mut self, program: &'static str, hook: Hook, fam: Fam, scenario: &str, input: &[u8]) {
        let run = Run {
            program,
            hook,
            scenario,
            input,
        };
        let result = if hook == Hook::Xdp {
            self.fx.try_run_xdp(input, self.ifindex)
        } else {
            self.fx.try_run(program, input)
        };
        let totals = self.counters.read();
        let moved: Vec<(Counter, u64)> = Counter::ALL
            .iter()
            .map(|c| {
                (
                    *c,
                    totals[c.index() as usize] - self.totals[c.index() as usize],
                )
            })
            .filter(|(_, d)| *d != 0)
            .collect();
        self.totals = totals;
        let moved_text = format!("{moved:?}");
        let tally = self.tallies.entry((program, fam)).or_default();
        tally.runs += 1;
        let (verdict, out) = match result {
            Ok(result) => result,
            Err(error) => {
                // The kernel refuses a frame shorter than an Ethernet header, or (TC) than the
                // minimal header of the IP family its EtherType names: nothing ran.
                let minimum = match (Mirror::fam(input), hook) {
                    (_, Hook::Xdp) | (None, _) => ETH,
                    (Some(Fam::V4), _) => ETH + 20,
                    (Some(Fam::V6), _) => ETH + 40,
                };
                if input.len() >= minimum || !moved.is_empty() {
                    let problem = format!("BPF_PROG_TEST_RUN failed: {error}");
                    self.fail(&run, &problem, None, &[], &moved_text);
                }
                tally.refused += 1;
                return;
            }
        };
        // Exactly one outcome, and XDP's own count when it served the packet.
        let outcomes: Vec<Counter> = moved
            .iter()
            .map(|(c, _)| *c)
            .filter(|c| *c != Counter::Xdp)
            .collect();
        let xdp_counted = moved.iter().any(|(c, _)| *c == Counter::Xdp);
        if outcomes.len() != 1 || moved.iter().any(|(_, d)| *d != 1) {
            self.fail(
                &run,
                "not exactly one outcome counted",
                Some(verdict),
                &out,
                &moved_text,
            );
        }
        let outcome = outcomes[0];
        *tally.outcomes.entry(outcome.name()).or_default() += 1;
        let expected = oracle(&self.nets, hook, input);
        if expected.outcomes == UNTOUCHED {
            tally.untouched_by_oracle += 1;
        }
        if hook == Hook::Xdp {
            let served = !matches!(outcome, Counter::Pass | Counter::XdpToTc);
            if xdp_counted != served {
                self.fail(
                    &run,
                    "`xdp` counted iff XDP served it",
                    Some(verdict),
                    &out,
                    &moved_text,
                );
            }
        } else if xdp_counted {
            self.fail(
                &run,
                "`xdp` counted by a TC program",
                Some(verdict),
                &out,
                &moved_text,
            );
        }
        let verdicts = if hook == Hook::Xdp {
            xdp_verdicts(outcome)
        } else {
            tc_verdicts(outcome)
        };
        if !verdicts.contains(&verdict) {
            let problem = format!("verdict {verdict} does not go with outcome {outcome:?}");
            self.fail(&run, &problem, Some(verdict), &out, &moved_text);
        }
        if !expected.outcomes.contains(&outcome) {
            let problem = format!(
                "outcome {outcome:?} where the oracle allows {:?} ({})",
                expected.outcomes, expected.why
            );
            self.fail(&run, &problem, Some(verdict), &out, &moved_text);
        }
        if let Err(problem) = self.check_bytes(hook, outcome, &expected, input, &out) {
            self.fail(&run, &problem, Some(verdict), &out, &moved_text);
        }
        self.remember(hook, outcome, input, &out);
    }

    /// The bytes an outcome may change, and what it must have changed them to.
    fn check_bytes(
        &self,
        hook: Hook,
        outcome: Counter,
        expected: &Expect,
        input: &[u8],
        out: &[u8],
    ) -> Result<(), String> {
        if untouched(outcome) {
            return if out == input {
                Ok(())
            } else {
                Err(format!("{outcome:?} changed the packet"))
            };
        }
        match outcome {
            // Dropped: nothing goes on.
            Counter::DropNoLocalEndpoint
            | Counter::DropSourceRange
            | Counter::SnatError
            | Counter::RewriteError => return Ok(()),
            Counter::Reject => {
                let swapped =
                    out.len() >= ETH && out[0..6] == input[6..12] && out[6..12] == input[0..6];
                return if swapped {
                    Ok(())
                } else {
                    Err("a reject's answer goes back to the sender's MAC".into())
                };
            }
            Counter::IcmpError => {
                return if out.len() == input.len() && out[..ETH] == input[..ETH] {
                    Ok(())
                } else {
                    Err("an ICMP error is translated in place".into())
                };
            }
            _ => {}
        }
        if out.len() != input.len() {
            return Err(format!("{outcome:?} changed the length"));
        }
        let fam = Mirror::fam(input).expect("an IP packet was translated");
        let (source, destination) = match fam {
            Fam::V4 => (ETH + 12..ETH + 16, ETH + 16..ETH + 20),
            Fam::V6 => (ETH + 8..ETH + 24, ETH + 24..ETH + 40),
        };
        let ip_checksum = ETH + 10..ETH + 12;
        if outcome == Counter::Fragment {
            let mut allowed = vec![source, destination];
            if fam == Fam::V4 {
                allowed.push(ip_checksum);
            }
            return only_changed(input, out, &allowed);
        }
        let p = Mirror::parse(input, hook == Hook::Xdp).ok_or("translated, yet unparsed")?;
        let l4_checksum = match p.protocol {
            TCP => p.l4 + 16..p.l4 + 18,
            UDP => p.l4 + 6..p.l4 + 8,
            // The CRC32c moves with a port; one left to offload (zero) stays zero.
            SCTP if input[p.l4 + 8..p.l4 + 12] != [0; 4] => p.l4 + 8..p.l4 + 12,
            _ => 0..0,
        };
        let sport = p.l4..p.l4 + 2;
        let dport = p.l4 + 2..p.l4 + 4;
        let (rewrites_source, rewrites_destination) = match outcome {
            Counter::DnatNew | Counter::DnatEstablished | Counter::Repick => (false, true),
            Counter::SnatNew | Counter::SnatEstablished | Counter::ReverseSnat => (true, true),
            Counter::ReverseNat => (true, false),
            other => return Err(format!("no byte rule for {other:?}")),
        };
        let mut allowed = vec![l4_checksum];
        if fam == Fam::V4 {
            allowed.push(ip_checksum);
        }
        if rewrites_source {
            allowed.extend([source.clone(), sport.clone()]);
        }
        if rewrites_destination {
            allowed.extend([destination.clone(), dport.clone()]);
        }
        if hook == Hook::Xdp
            && matches!(
                outcome,
                Counter::SnatNew | Counter::SnatEstablished | Counter::ReverseSnat
            )
        {
            allowed.push(0..12); // The next hop's MAC addresses.
        }
        only_changed(input, out, &allowed)?;
        let field = |r: &Range<usize>| out[r.clone()].to_vec();
        let port = |r: &Range<usize>| u16::from_be_bytes([out[r.start], out[r.start + 1]]);
        let now_source = (address_of(fam, &field(&source)), port(&sport));
        let now_destination = (address_of(fam, &field(&destination)), port(&dport));
        let net = &self.nets[fam as usize];
        match outcome {
            Counter::DnatNew
            | Counter::DnatEstablished
            | Counter::SnatNew
            | Counter::SnatEstablished => {
                let front = expected.front.as_ref().ok_or("translated to no frontend")?;
                if !front.backends.contains(&now_destination) {
                    return Err(format!(
                        "DNATed to {now_destination:?}, not a backend of {front:?}"
                    ));
                }
                if matches!(outcome, Counter::SnatNew | Counter::SnatEstablished) {
                    let (low, high) = DEFAULT_SNAT_PORTS;
                    if now_source.0 != net.node || !(low..=high).contains(&now_source.1) {
                        return Err(format!("masqueraded to {now_source:?}"));
                    }
                }
            }
            _ => {
                if !net
                    .fronts
                    .iter()
                    .any(|f| (f.address, f.port) == now_source && !f.backends.is_empty())
                {
                    return Err(format!("a reply from {now_source:?}, no frontend"));
                }
            }
        }
        // Checksums: a translation keeps a right one right.
        if ipv4_header_ok(input) && !ipv4_header_ok(out) {
            return Err("the IPv4 header checksum went wrong".into());
        }
        if let Ok(before) = try_inspect(input) {
            match try_inspect(out) {
                Ok(after) if after.payload == before.payload => {}
                Ok(_) => return Err("the payload changed".into()),
                Err(problem) => return Err(format!("a valid packet came out broken: {problem}")),
            }
        }
        Ok(())
    }

    /// Remembers translated flows, for replies and ICMP errors to be made of.
    fn remember(&mut self, hook: Hook, outcome: Counter, input: &[u8], out: &[u8]) {
        if !matches!(outcome, Counter::DnatNew | Counter::SnatNew) {
            return;
        }
        let (Some(before), Some(after)) = (
            Mirror::parse(input, hook == Hook::Xdp),
            Mirror::parse(out, hook == Hook::Xdp),
        ) else {
            return;
        };
        let flow = Flow {
            client: (before.source, before.source_port),
            frontend: (before.destination, before.destination_port),
            backend: (after.destination, after.destination_port),
            masquerade: (outcome == Counter::SnatNew).then_some((after.source, after.source_port)),
            protocol: before.protocol,
        };
        let flows = &mut self.flows[before.fam as usize];
        if flows.len() < 512 {
            flows.push(flow);
        } else {
            let i = self.rng.below(flows.len());
            flows[i] = flow;
        }
    }
}

fn only_changed(input: &[u8], out: &[u8], allowed: &[Range<usize>]) -> Result<(), String> {
    match (0..input.len()).find(|i| input[*i] != out[*i] && !allowed.iter().any(|r| r.contains(i)))
    {
        None => Ok(()),
        Some(i) => Err(format!(
            "byte {i} changed, outside the fields the translation owns"
        )),
    }
}

/// Whether the packet is IPv4 with a whole header whose checksum is right.
fn ipv4_header_ok(packet: &[u8]) -> bool {
    if Mirror::fam(packet) != Some(Fam::V4) {
        return false;
    }
    let Some(&first) = packet.get(ETH) else {
        return false;
    };
    let len = usize::from(first & 0x0f) * 4;
    len >= 20
        && packet
            .get(ETH..ETH + len)
            .is_some_and(|h| checksum(&[h]) == 0)
}

/// The generators: valid service packets (to be mutated or not), near misses, replies,
/// strangers' traffic, ICMP errors, non-IP frames and garbage.
impl Fuzzer {
    fn generate(&mut self, hook: Hook, fam: Fam) -> (String, Vec<u8>) {
        let roll = self.rng.below(100);
        let (scenario, spec) = if roll < 45 {
            if hook == Hook::Egress {
                ("reply", self.reply(fam))
            } else {
                ("request", self.request(hook, fam))
            }
        } else if roll < 55 {
            if hook == Hook::Egress {
                ("from a backend", self.backend_sends(fam))
            } else {
                ("near miss", self.near_miss(fam))
            }
        } else if roll < 63 {
            if hook == Hook::Egress {
                ("request at egress", self.request(Hook::Pod, fam))
            } else {
                ("masquerade reply", self.masquerade_reply(fam))
            }
        } else if roll < 78 {
            ("stranger", self.stranger(fam))
        } else if roll < 90 {
            ("icmp error", self.icmp_error(hook, fam))
        } else if roll < 95 {
            return ("not ip".into(), self.not_ip(hook, fam));
        } else {
            return ("garbage".into(), self.garbage(fam));
        };
        let mut built = build(&spec);
        if self.rng.chance(50) {
            let what = self.mutate(&mut built, fam);
            (format!("{scenario}, mutated: {what}"), built.bytes)
        } else {
            (scenario.into(), built.bytes)
        }
    }

    /// Random flags, options, payload, extension headers and fragments on `spec`.
    fn shape(&mut self, mut spec: Spec) -> Spec {
        const FLAGS: [u8; 9] = [
            SYN,
            SYN | ACK,
            ACK,
            ACK | 0x08,
            0x01 | ACK,
            0x04,
            0x04 | ACK,
            0,
            0xff,
        ];
        let rng = &mut self.rng;
        spec.tcp_flags = if rng.chance(10) {
            rng.byte()
        } else {
            *rng.pick(&FLAGS)
        };
        if rng.chance(20) {
            spec.tcp_options = 1 + rng.below(10);
        }
        let len = if rng.chance(10) {
            200 + rng.below(400)
        } else {
            rng.below(81)
        };
        spec.payload = rng.bytes(len);
        match spec.fam() {
            Fam::V4 if rng.chance(10) => spec.ip_options = 1 + rng.below(10),
            Fam::V6 if rng.chance(20) => {
                let n = if rng.chance(25) {
                    6 + rng.below(5)
                } else {
                    1 + rng.below(3)
                };
                spec.extensions = (0..n).map(|_| *rng.pick(&[0u8, 43, 60, 51])).collect();
            }
            _ => {}
        }
        if rng.chance(10) {
            let id = 0x100 + rng.below(8) as u32;
            spec.fragment = Some(match rng.below(3) {
                0 => Fragment {
                    offset: 0,
                    more: true,
                    id,
                },
                1 => Fragment {
                    offset: 1 + rng.below(100) as u16,
                    more: true,
                    id,
                },
                _ => Fragment {
                    offset: 1 + rng.below(100) as u16,
                    more: false,
                    id,
                },
            });
        }
        spec
    }

    fn client_port(&mut self) -> u16 {
        if self.rng.chance(70) {
            40000 + self.rng.below(64) as u16
        } else {
            self.rng.u16()
        }
    }

    fn request(&mut self, hook: Hook, fam: Fam) -> Spec {
        let net = &self.nets[fam as usize];
        let front = self.rng.pick(&net.fronts).clone();
        let roll = self.rng.below(100);
        let source = match hook {
            Hook::Pod if roll < 80 => *self.rng.pick(&net.clients),
            Hook::Pod if roll < 90 => *self.rng.pick(&net.backends),
            Hook::Pod => *self.rng.pick(&net.outside),
            _ if roll < 60 => *self.rng.pick(&net.outside),
            _ if roll < 90 => *self.rng.pick(&net.clients),
            _ => *self.rng.pick(&net.strangers),
        };
        let port = self.client_port();
        let spec = Spec::new((source, port), (front.address, front.port), front.protocol);
        self.shape(spec)
    }

    /// Close to a frontend, but none: another port or protocol of a frontend's address, a pod
    /// straight to a backend, the node on a port of no NodePort.
    fn near_miss(&mut self, fam: Fam) -> Spec {
        let port = self.client_port();
        let net = &self.nets[fam as usize];
        let client = *self.rng.pick(&net.clients);
        let address = *self
            .rng
            .pick(&[net.vip, net.node, net.fronts[8].address, net.backends[0]]);
        let destination_port = if self.rng.chance(50) {
            *self
                .rng
                .pick(&[80, 53, 8080, 5353, 443, 30080, 40000, 61000, 9001, 30132])
        } else {
            self.rng.u16()
        };
        let protocol = *self.rng.pick(&[TCP, UDP, SCTP]);
        self.shape(Spec::new(
            (client, port),
            (address, destination_port),
            protocol,
        ))
    }

    fn flow(&mut self, fam: Fam, masqueraded: bool) -> Option<Flow> {
        let flows: Vec<Flow> = self.flows[fam as usize]
            .iter()
            .filter(|f| f.masquerade.is_some() == masqueraded)
            .copied()
            .collect();
        (!flows.is_empty()).then(|| *self.rng.pick(&flows))
    }

    fn reply(&mut self, fam: Fam) -> Spec {
        let masqueraded = self.rng.chance(10);
        match self.flow(fam, masqueraded) {
            Some(flow) => {
                let to = flow.masquerade.unwrap_or(flow.client);
                self.shape(Spec::new(flow.backend, to, flow.protocol))
            }
            None => self.backend_sends(fam),
        }
    }

    fn backend_sends(&mut self, fam: Fam) -> Spec {
        let net = &self.nets[fam as usize];
        let backend = *self.rng.pick(&net.backends);
        let to = *self
            .rng
            .pick(&[net.clients[0], net.outside[0], net.strangers[0], net.node]);
        let protocol = *self.rng.pick(&[TCP, UDP, SCTP]);
        let (from_port, to_port) = (
            *self.rng.pick(&[8080, 5353, 9000, 9101]),
            self.client_port(),
        );
        self.shape(Spec::new((backend, from_port), (to, to_port), protocol))
    }

    fn masquerade_reply(&mut self, fam: Fam) -> Spec {
        match self.flow(fam, true) {
            Some(flow) => {
                let to = flow.masquerade.expect("masqueraded");
                self.shape(Spec::new(flow.backend, to, flow.protocol))
            }
            None => {
                let net = &self.nets[fam as usize];
                let (backend, node) = (net.backends[0], net.node);
                let port = DEFAULT_SNAT_PORTS.0 + self.rng.below(100) as u16;
                self.shape(Spec::new((backend, 8080), (node, port), TCP))
            }
        }
    }

    /// Traffic between addresses of no frontend and no backend, of any protocol.
    fn stranger(&mut self, fam: Fam) -> Spec {
        let net = &self.nets[fam as usize];
        let source = *self.rng.pick(&net.strangers);
        let destination = *self
            .rng
            .pick(&[net.strangers[1], net.clients[1], net.outside[1]]);
        let icmp = if fam == Fam::V4 { ICMP } else { ICMPV6 };
        let any = self.rng.byte();
        let protocol = *self.rng.pick(&[TCP, UDP, SCTP, icmp, 47, 0, 255, any]);
        let (sport, dport) = (self.rng.u16(), *self.rng.pick(&[80, 53, 8080, 30080, 9000]));
        let mut spec = self.shape(Spec::new((source, sport), (destination, dport), protocol));
        if protocol == icmp {
            spec.icmp = Some(if fam == Fam::V4 { (8, 0) } else { (128, 0) });
        }
        spec
    }

    /// An ICMP (ICMPv6) error quoting a packet of a known flow (as the far end got it) or a
    /// random one.
    fn icmp_error(&mut self, hook: Hook, fam: Fam) -> Spec {
        let flow = self.flow(fam, false);
        let net = &self.nets[fam as usize];
        let (router, client, vip) = (net.router, net.clients[0], net.vip);
        let stranger = (net.strangers[1], 1234);
        let icmp = if fam == Fam::V4 { ICMP } else { ICMPV6 };
        let kinds: &[(u8, u8)] = if fam == Fam::V4 {
            &[(3, 4), (3, 3), (3, 1), (11, 0), (12, 0), (0, 0), (8, 0)]
        } else {
            &[(2, 0), (1, 4), (1, 0), (3, 0), (4, 0), (128, 0), (129, 0)]
        };
        let kind = *self.rng.pick(kinds);
        let (outer, quoted) = match flow {
            // Toward the client: about the DNATed packet, from a router or the backend.
            Some(flow) if hook == Hook::Egress && self.rng.chance(75) => {
                let from = if self.rng.chance(50) {
                    router
                } else {
                    flow.backend.0
                };
                (
                    (from, flow.client.0),
                    Spec::new(flow.client, flow.backend, flow.protocol),
                )
            }
            // Toward the backend: the client's error about a reply it got from the frontend.
            Some(flow) if hook != Hook::Egress && self.rng.chance(75) => (
                (flow.client.0, flow.frontend.0),
                Spec::new(flow.frontend, flow.client, flow.protocol),
            ),
            _ => {
                let protocol = *self.rng.pick(&[TCP, UDP, SCTP, icmp]);
                let ends = if self.rng.chance(50) {
                    ((client, 40000), (vip, 80))
                } else {
                    (stranger, (net.strangers[2], 80))
                };
                ((router, client), Spec::new(ends.0, ends.1, protocol))
            }
        };
        let quoted = self.shape(quoted);
        let inner = build(&quoted).bytes[ETH..].to_vec();
        let minimum = if fam == Fam::V4 { 28 } else { 48 };
        let cut = if self.rng.chance(50) {
            inner.len()
        } else {
            minimum.min(inner.len()) + self.rng.below(inner.len() - minimum.min(inner.len()) + 1)
        };
        let mut spec = Spec::new((outer.0, 0), (outer.1, 0), icmp);
        spec.icmp = Some(kind);
        spec.payload = inner[..cut].to_vec();
        spec
    }

    fn not_ip(&mut self, hook: Hook, fam: Fam) -> Vec<u8> {
        match self.rng.below(3) {
            0 => {
                let mut arp = vec![0xff; 6];
                arp.extend([2, 0, 0, 0, 0, 1, 0x08, 0x06]);
                arp.extend(self.rng.bytes(28));
                arp
            }
            1 => {
                let mut frame = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1];
                let ether_type = loop {
                    let t = self.rng.u16();
                    if t != 0x0800 && t != 0x86dd {
                        break t;
                    }
                };
                frame.extend(ether_type.to_be_bytes());
                let len = self.rng.below(100);
                frame.extend(self.rng.bytes(len));
                frame
            }
            _ => {
                // A service packet behind an 802.1Q tag: the datapath reads no VLAN.
                let hook = if hook == Hook::Egress {
                    Hook::Pod
                } else {
                    hook
                };
                let mut spec = self.request(hook, fam);
                spec.vlan = true;
                build(&spec).bytes
            }
        }
    }

    fn garbage(&mut self, fam: Fam) -> Vec<u8> {
        let mut frame = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1];
        let (ether_type, version) = match fam {
            Fam::V4 => (0x0800u16, 0x45),
            Fam::V6 => (0x86dd, 0x60),
        };
        frame.extend(ether_type.to_be_bytes());
        let len = self.rng.below(120);
        frame.extend(self.rng.bytes(len));
        if len > 0 && self.rng.chance(50) {
            frame[ETH] = version;
        }
        frame
    }

    /// One to three mutations of `built`, named.
    fn mutate(&mut self, built: &mut Built, fam: Fam) -> String {
        let mut names = Vec::new();
        let (l3, l4) = (built.l3, built.l4);
        for _ in 0..1 + self.rng.below(3) {
            let rng = &mut self.rng;
            let bytes = &mut built.bytes;
            let len = bytes.len();
            let name = match rng.below(11) {
                0 if len > ETH => {
                    bytes.truncate(ETH + rng.below(len - ETH));
                    "truncated"
                }
                1 if len > ETH => {
                    let at = ETH + rng.below((len - ETH).min(80));
                    bytes[at] ^= 1 + rng.below(255) as u8;
                    "header byte"
                }
                2 => {
                    let at = rng.below(len);
                    bytes[at] ^= 1 + rng.below(255) as u8;
                    "any byte"
                }
                3 => {
                    let at = if fam == Fam::V4 { l3 + 2 } else { l3 + 4 };
                    if at + 2 <= len {
                        let value = if rng.chance(50) {
                            rng.u16()
                        } else {
                            rng.below(64) as u16
                        };
                        bytes[at..at + 2].copy_from_slice(&value.to_be_bytes());
                    }
                    "IP length"
                }
                4 if fam == Fam::V4 && l3 < len => {
                    bytes[l3] = 0x40 | rng.below(16) as u8;
                    "IHL"
                }
                5 if l4 + 13 <= len => {
                    bytes[l4 + 12] = (rng.below(16) as u8) << 4;
                    "TCP data offset"
                }
                6 if l4 + 6 <= len => {
                    let value = if rng.chance(50) {
                        rng.u16()
                    } else {
                        rng.below(16) as u16
                    };
                    bytes[l4 + 4..l4 + 6].copy_from_slice(&value.to_be_bytes());
                    "UDP length"
                }
                7 => {
                    let at = if fam == Fam::V4 { l3 + 9 } else { l3 + 6 };
                    if at < len {
                        let any = rng.byte();
                        bytes[at] =
                            *rng.pick(&[0, 6, 17, 132, 1, 58, 43, 44, 60, 51, 59, 255, any]);
                    }
                    "protocol"
                }
                8 if fam == Fam::V4 && l3 + 8 <= len => {
                    let value = rng.u16();
                    bytes[l3 + 6..l3 + 8].copy_from_slice(&value.to_be_bytes());
                    "fragment bits"
                }
                9 => {
                    let n = 1 + rng.below(64);
                    bytes.extend(rng.bytes(n));
                    "trailing bytes"
                }
                10 if l3 < len => {
                    bytes[l3] ^= (1 + rng.below(15) as u8) << 4;
                    "IP version"
                }
                _ => "nothing",
            };
            names.push(name);
        }
        // Half of them get a right IPv4 header checksum again: the datapath checks none, the
        // stack would.
        if fam == Fam::V4 && self.rng.chance(50) {
            let bytes = &mut built.bytes;
            let header_len = bytes.get(l3).map_or(0, |b| usize::from(b & 0x0f) * 4);
            if header_len >= 20 && l3 + header_len <= bytes.len() {
                bytes[l3 + 10..l3 + 12].fill(0);
                let sum = checksum(&[&bytes[l3..l3 + header_len]]);
                bytes[l3 + 10..l3 + 12].copy_from_slice(&sum.to_be_bytes());
            }
        }
        names.join(", ")
    }
}

/// Reporting and the checks that the fuzz reached what it is about.
impl Fuzzer {
    /// Counter totals and the runs behind them, for [`Self::check_totals`].
    fn snapshot(&self) -> (Vec<u64>, u64, u64) {
        (self.totals.clone(), self.runs(), self.served_by_xdp())
    }

    fn runs(&self) -> u64 {
        self.tallies.values().map(|t| t.runs - t.refused).sum()
    }

    fn served_by_xdp(&self) -> u64 {
        self.tallies
            .iter()
            .filter(|((program, _), _)| *program == programs::XDP_DEVICE)
            .flat_map(|(_, t)| t.outcomes.iter())
            .filter(|(name, _)| !matches!(**name, "pass" | "xdp_to_tc"))
            .map(|(_, n)| n)
            .sum()
    }

    /// The counters' deltas since `snapshot` add up to the runs since, plus XDP's own count of
    /// the packets it served.
    fn check_totals(&self, (start, runs, served): (Vec<u64>, u64, u64), what: &str) {
        let delta: u64 = self.totals.iter().zip(&start).map(|(a, b)| a - b).sum();
        let (runs, served) = (self.runs() - runs, self.served_by_xdp() - served);
        assert_eq!(
            delta,
            runs + served,
            "seed {:#x}, {what}: the counters moved by {delta} over {runs} runs ({served} \
             counted `xdp` besides)",
            self.seed
        );
    }

    fn report(&self, started: Instant) {
        println!(
            "datapath fuzz, seed {:#x}: {} runs in {:.1?}",
            self.seed,
            self.runs(),
            started.elapsed()
        );
        for ((program, fam), t) in &self.tallies {
            println!(
                "  {program:<12} {fam:?}: {} packets ({} refused by the kernel as too short, \
                 {} not service traffic by the oracle): {:?}",
                t.runs, t.refused, t.untouched_by_oracle, t.outcomes
            );
        }
    }

    fn count(&self, fam: Fam, programs: &[&str], outcome: Counter) -> u64 {
        self.tallies
            .iter()
            .filter(|((p, f), _)| *f == fam && programs.contains(p))
            .map(|(_, t)| t.outcomes.get(outcome.name()).copied().unwrap_or(0))
            .sum()
    }

    /// The fuzz reached every path it is about: a run that translated nothing would pass the
    /// oracle trivially.
    fn assert_coverage(&self) {
        use programs::{FROM_DEVICE, FROM_POD, TO_DEVICE, TO_POD, XDP_DEVICE};
        let tc_ingress = [FROM_POD, FROM_DEVICE];
        let every = [FROM_POD, TO_POD, FROM_DEVICE, TO_DEVICE, XDP_DEVICE];
        for fam in [Fam::V4, Fam::V6] {
            for (programs, outcome) in [
                (&[FROM_POD][..], Counter::DnatNew),
                (&[FROM_POD], Counter::DnatEstablished),
                (&[FROM_DEVICE], Counter::SnatNew),
                (&tc_ingress, Counter::Reject),
                (&tc_ingress, Counter::DropNoLocalEndpoint),
                (&tc_ingress, Counter::DropSourceRange),
                (&tc_ingress, Counter::ReverseSnat),
                (&[TO_POD], Counter::ReverseNat),
                (&[TO_DEVICE], Counter::ReverseNat),
                (&every, Counter::Fragment),
                (&every, Counter::IcmpError),
                (&[XDP_DEVICE], Counter::SnatNew),
                (&[XDP_DEVICE], Counter::XdpToTc),
                (&every, Counter::Pass),
            ] {
                assert!(
                    self.count(fam, programs, outcome) > 0,
                    "seed {:#x}: no {outcome:?} at {programs:?} for {fam:?}: the fuzz misses a path",
                    self.seed
                );
            }
        }
    }
}

fn seed() -> u64 {
    match std::env::var("TWINSTACK_FUZZ_SEED") {
        Ok(s) => {
            let s = s.trim();
            let parsed = match s.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => s.parse(),
            };
            parsed.unwrap_or_else(|e| panic!("TWINSTACK_FUZZ_SEED={s}: {e}"))
        }
        Err(_) => DEFAULT_SEED,
    }
}

fn packets_per_program_and_family() -> usize {
    std::env::var("TWINSTACK_FUZZ_PACKETS").map_or(100_000, |s| {
        s.parse()
            .unwrap_or_else(|e| panic!("TWINSTACK_FUZZ_PACKETS={s}: {e}"))
    })
}

/// Runs `f` in a routed node namespace (see [`routed_node_with_neighbours`]) with the neighbours of backend A
/// and of the outside clients resolved (so XDP serves their flows itself; backend B's go on to
/// TC), given the index of its device `ts0`.
fn in_routed_node<T: Send + 'static>(f: impl FnOnce(u32) -> T + Send + 'static) -> T {
    let netns = routed_node_with_neighbours();
    netns.enter(move || {
        // SAFETY: a NUL-terminated name.
        let ts0 = unsafe { libc::if_nametoindex(c"ts0".as_ptr()) };
        assert_ne!(ts0, 0, "ts0 exists");
        f(ts0)
    })
}

/// A million packets (100,000 per program and family by default), in rounds of one batch per
/// program and family, so every program sees the flows the others made.
#[test]
fn random_and_mutated_packets_through_every_program() {
    let (seed, per) = (seed(), packets_per_program_and_family());
    in_routed_node(move |ifindex| {
        let started = Instant::now();
        let mut fuzz = Fuzzer::new(seed, ifindex);
        for round in 0..per.div_ceil(BATCH) {
            let n = BATCH.min(per - round * BATCH);
            for (program, hook) in PROGRAMS {
                for fam in [Fam::V4, Fam::V6] {
                    let before = fuzz.snapshot();
                    for _ in 0..n {
                        let (scenario, packet) = fuzz.generate(hook, fam);
                        fuzz.run(program, hook, fam, &scenario, &packet);
                    }
                    fuzz.check_totals(before, &format!("{program} {fam:?}, round {round}"));
                }
            }
        }
        fuzz.report(started);
        fuzz.assert_coverage();
    });
}

/// Valid packets of every kind the datapath serves, cut at every length from the Ethernet
/// header on, through every program: a cut packet passes untouched unless what is left still
/// parses (then the oracle holds as for any packet).
#[test]
fn every_cut_of_every_kind_of_packet() {
    let seed = seed();
    in_routed_node(move |ifindex| {
        let started = Instant::now();
        let mut fuzz = Fuzzer::new(seed, ifindex);
        let before = fuzz.snapshot();
        for fam in [Fam::V4, Fam::V6] {
            for template in fuzz.templates(fam) {
                for cut in ETH..=template.len() {
                    for (program, hook) in PROGRAMS {
                        let scenario = format!("template cut at {cut} of {}", template.len());
                        fuzz.run(program, hook, fam, &scenario, &template[..cut]);
                    }
                }
            }
        }
        fuzz.check_totals(before, "every cut");
        fuzz.report(started);
    });
}

impl Fuzzer {
    /// One valid packet of each kind for `fam`: requests to each kind of frontend, with IPv4
    /// options or IPv6 extension headers, a first and a later fragment, a reply and ICMP
    /// errors about a flow (made first, whole, through `from_pod`).
    fn templates(&mut self, fam: Fam) -> Vec<Vec<u8>> {
        let net = &self.nets[fam as usize];
        let (client, vip, node, outside) = (net.clients[0], net.vip, net.node, net.outside[0]);
        let mut specs = vec![
            Spec::new((client, 41000), (vip, 80), TCP),
            Spec::new((client, 41001), (vip, 53), UDP),
            Spec::new((client, 41002), (vip, 9000), SCTP),
            Spec::new((client, 41003), (vip, 81), TCP),
            Spec::new((client, 41004), (vip, 54), UDP),
            Spec::new((outside, 41005), (node, 30080), TCP),
            Spec::new((outside, 41006), (net.fronts[8].address, 80), TCP),
        ];
        let mut with_options = Spec::new((client, 41007), (vip, 80), TCP);
        with_options.tcp_options = 3;
        match fam {
            Fam::V4 => with_options.ip_options = 2,
            Fam::V6 => with_options.extensions = vec![0, 60, 43, 51],
        }
        specs.push(with_options);
        let mut first = Spec::new((client, 41008), (vip, 53), UDP);
        first.fragment = Some(Fragment {
            offset: 0,
            more: true,
            id: 0x77,
        });
        let mut later = first.clone();
        later.fragment = Some(Fragment {
            offset: 4,
            more: false,
            id: 0x77,
        });
        specs.extend([first, later]);
        let flow_request = build(&Spec::new((client, 41009), (vip, 53), UDP)).bytes;
        self.run(
            programs::FROM_POD,
            Hook::Pod,
            fam,
            "template flow",
            &flow_request,
        );
        let flow = *self.flows[fam as usize].last().expect("the template flow");
        specs.push(Spec::new(flow.backend, flow.client, UDP));
        let icmp = if fam == Fam::V4 { ICMP } else { ICMPV6 };
        for (from, to, quoted) in [
            (
                flow.backend.0,
                flow.client.0,
                Spec::new(flow.client, flow.backend, UDP),
            ),
            (
                flow.client.0,
                flow.frontend.0,
                Spec::new(flow.frontend, flow.client, UDP),
            ),
        ] {
            let mut error = Spec::new((from, 0), (to, 0), icmp);
            error.icmp = Some(if fam == Fam::V4 { (3, 3) } else { (1, 4) });
            error.payload = build(&quoted).bytes[ETH..].to_vec();
            specs.push(error);
        }
        specs.iter().map(|s| build(s).bytes).collect()
    }
}
