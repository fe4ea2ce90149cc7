//! Datapath tests: the real BPF object, maps filled by the real map writer, crafted packets run
//! through the real entry points with BPF_PROG_TEST_RUN; we assert the bytes that come out and
//! the outcome counters the programs bumped.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use aya::maps::{Map, MapData};
use etherparse::{NetHeaders, PacketHeaders, TransportHeader};
use proxy_common::{
    cluster_clear, config::DEFAULT_SNAT_PORTS, counter::Counter, map_names, programs,
};
use proxy_userspace::{
    family::Address,
    loader::LoadOptions,
    maps::{codec::KernelFamily, writer::Writer},
    model::Protocol,
    plan::{Backend, BackendState, Frontend, FrontendKind, Scope, ServiceEntry},
};
use twinstack_lab::fixture::{
    DROP, Fixture, NEXT, PAYLOAD, REDIRECT, Seen, XDP_PASS, XDP_REDIRECT, builder, counts,
    dual_stack_cluster, inspect, node_port, routed_node, routed_node_with_neighbours, sctp,
    service, tcp, udp, v6,
};

const CLIENT4: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const VIP4: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const BACKEND4_A: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 2);
const BACKEND4_B: Ipv4Addr = Ipv4Addr::new(10, 244, 3, 2);

/// DNAT of a client's packet, then reverse NAT of the backend's reply, for one family and
/// protocol: addresses, ports, checksums, untouched payload.
fn round_trip<A: Address>(
    program: impl Fn(&mut Fixture, (Frontend<A>, ServiceEntry<A>)),
    client: A,
    vip: A,
    backend: A,
    protocol: Protocol,
) {
    let mut fx = Fixture::new();
    program(&mut fx, service(vip, 80, protocol, &[(backend, 8080)]));
    let (client, vip, backend): (IpAddr, IpAddr, IpAddr) =
        (client.into(), vip.into(), backend.into());
    let build = |s, d| first_packet(protocol, s, d);

    let request = build((client, 40000), (vip, 80));
    let (out, moved) = fx.counting(|fx| fx.ingress(&request));
    assert_eq!(moved, counts(&[(Counter::DnatNew, 1)]), "a new flow");
    assert_eq!(
        inspect(&out),
        Seen {
            source: (client, 40000),
            destination: (backend, 8080),
            payload: PAYLOAD.to_vec()
        },
        "forward packet DNATed to the backend"
    );
    assert_eq!(out.len(), request.len());

    let reply = build((backend, 8080), (client, 40000));
    let (out, moved) = fx.counting(|fx| fx.egress(&reply));
    assert_eq!(moved, counts(&[(Counter::ReverseNat, 1)]), "a reply");
    assert_eq!(
        inspect(&out),
        Seen {
            source: (vip, 80),
            destination: (client, 40000),
            payload: PAYLOAD.to_vec()
        },
        "reply reverse-NATed to the service address"
    );
}

/// A flow's first packet of `protocol` (a TCP SYN) from `source` to `destination`, carrying
/// [`PAYLOAD`].
fn first_packet(protocol: Protocol, source: (IpAddr, u16), destination: (IpAddr, u16)) -> Vec<u8> {
    match protocol {
        Protocol::Tcp => tcp(source, destination, true),
        Protocol::Udp => udp(source, destination),
        Protocol::Sctp => sctp(source, destination),
    }
}

fn program_v4(fx: &mut Fixture, (f, e): (Frontend<Ipv4Addr>, ServiceEntry<Ipv4Addr>)) {
    fx.v4.upsert(&f, &e).expect("programming v4");
}

fn program_v6(fx: &mut Fixture, (f, e): (Frontend<Ipv6Addr>, ServiceEntry<Ipv6Addr>)) {
    fx.v6.upsert(&f, &e).expect("programming v6");
}

#[test]
fn tcp_ipv4_dnat_and_reverse_nat() {
    round_trip(program_v4, CLIENT4, VIP4, BACKEND4_A, Protocol::Tcp);
}

#[test]
fn udp_ipv4_dnat_and_reverse_nat() {
    round_trip(program_v4, CLIENT4, VIP4, BACKEND4_A, Protocol::Udp);
}

/// SCTP: the port changes (80 → 8080), so does the CRC32c, which the datapath moves without
/// reading the packet ([`proxy_common::sctp::port_change`]); `inspect` recomputes it.
#[test]
fn sctp_ipv4_dnat_and_reverse_nat() {
    round_trip(program_v4, CLIENT4, VIP4, BACKEND4_A, Protocol::Sctp);
}

#[test]
fn sctp_ipv6_dnat_and_reverse_nat() {
    round_trip(
        program_v6,
        v6("fd00:10:244:1::2"),
        v6("fd00:10:96::10"),
        v6("fd00:10:244:2::2"),
        Protocol::Sctp,
    );
}

#[test]
fn tcp_ipv6_dnat_and_reverse_nat() {
    round_trip(
        program_v6,
        v6("fd00:10:244:1::2"),
        v6("fd00:10:96::10"),
        v6("fd00:10:244:2::2"),
        Protocol::Tcp,
    );
}

#[test]
fn udp_ipv6_dnat_and_reverse_nat() {
    round_trip(
        program_v6,
        v6("fd00:10:244:1::2"),
        v6("fd00:10:96::10"),
        v6("fd00:10:244:2::2"),
        Protocol::Udp,
    );
}

/// An SCTP Service on `port` of both families' cluster IPs ([`v4_hosts`], [`v6_hosts`]), to
/// their backend on `target`.
fn sctp_services(fx: &mut Fixture, port: u16, target: u16) {
    let (_, vip4, backend4, _) = v4_hosts();
    let (_, vip6, backend6, _) = v6_hosts();
    let (f, e) = service(vip4, port, Protocol::Sctp, &[(backend4, target)]);
    fx.v4.upsert(&f, &e).unwrap();
    let (f, e) = service(vip6, port, Protocol::Sctp, &[(backend6, target)]);
    fx.v6.upsert(&f, &e).unwrap();
}

/// SCTP whose CRC32c the sender left to checksum offload (zero, as Linux's SCTP hands a
/// packet to a device that computes it: a veth): translated, the field left zero for the
/// offload to fill over the new ports. An IPv4 first fragment whose port would change, whose
/// datagram's length (and so the CRC32c's change) it does not tell, is passed untouched and
/// counted (a rewrite error, found before anything changed); with the port kept it is
/// translated. Both families.
#[test]
fn sctp_checksums_left_to_offload_stay_so_and_first_fragments_need_their_port() {
    let mut fx = Fixture::new();
    let (client4, vip4, backend4, _) = v4_hosts();
    let (client6, vip6, backend6, _) = v6_hosts();
    sctp_services(&mut fx, 80, 8080);
    sctp_services(&mut fx, 81, 81);
    let families: [(IpAddr, IpAddr, IpAddr, usize); 2] = [
        (client4.into(), vip4.into(), backend4.into(), 14 + 20),
        (client6.into(), vip6.into(), backend6.into(), 14 + 40),
    ];
    for (client, vip, backend, l4) in families {
        let mut request = sctp((client, 40000), (vip, 80));
        request[l4 + 8..l4 + 12].fill(0);
        let (out, moved) = fx.counting(|fx| fx.ingress(&request));
        assert_eq!(moved, counts(&[(Counter::DnatNew, 1)]));
        assert_eq!(out[l4 + 8..l4 + 12], [0; 4], "{vip}: still left to offload");
        assert_eq!(out[l4..l4 + 4], [[156, 64], 8080u16.to_be_bytes()].concat());
        let mut offloaded = out.clone();
        let crc = proxy_common::sctp::checksum(&out[l4..]);
        offloaded[l4 + 8..l4 + 12].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(inspect(&offloaded).destination, (backend, 8080));

        let (first, _) = fragments_of(&sctp((client, 40001), (vip, 80)), 0x4321);
        let ((verdict, out), moved) = fx.counting(|fx| fx.run(programs::FROM_POD, &first));
        assert_eq!(moved, counts(&[(Counter::RewriteError, 1)]), "{vip}");
        assert_eq!((verdict, out), (NEXT, first), "{vip}: passed untouched");
        let (first, _) = fragments_of(&sctp((client, 40002), (vip, 81)), 0x4322);
        let (out, moved) = fx.counting(|fx| fx.ingress(&first));
        assert_eq!(
            moved,
            counts(&[(Counter::DnatNew, 1)]),
            "{vip}: the port is kept"
        );
        assert_eq!(
            out[l4..l4 + 12],
            first[l4..l4 + 12],
            "{vip}: SCTP header as it was"
        );
        assert_eq!(inspect_destination(&out, l4), backend);
    }
}

/// An SCTP packet whose IP length field tells a length the packet does not hold (more bytes
/// than it has, or, with IPv6 extension headers, a payload length below them that wraps in
/// 16 bits): its CRC32c covers the datagram, whose length is then unknown, so a port rewrite
/// is refused (a rewrite error, the packet passed untouched; the IP layer drops it) and no
/// CRC32c is moved by a wrong length. Found by the fuzz test (`fuzz.rs`), as a wrong CRC32c
/// on a reverse-NATed IPv6 reply whose payload length was mutated to 0. Both families.
#[test]
fn sctp_lengths_the_packet_does_not_hold_refuse_the_port_rewrite() {
    let mut fx = Fixture::new();
    let (client4, vip4, _, _) = v4_hosts();
    let (client6, vip6, _, _) = v6_hosts();
    sctp_services(&mut fx, 80, 8080);
    const L3: usize = 14;
    let claim = |mut packet: Vec<u8>, field: usize, length: u16| {
        packet[L3 + field..L3 + field + 2].copy_from_slice(&length.to_be_bytes());
        if field == 2 {
            // IPv4: the header checksum follows its length.
            let sum = ipv4_checksum(&packet[L3..L3 + 20]);
            packet[L3 + 10..L3 + 12].copy_from_slice(&sum);
        }
        packet
    };
    let length = |packet: &[u8], field: usize| {
        u16::from_be_bytes([packet[L3 + field], packet[L3 + field + 1]])
    };
    let mut cases = Vec::new();
    let request = sctp((client4.into(), 40010), (vip4.into(), 80));
    let held = length(&request, 2);
    cases.push(("IPv4, 4 bytes more than held", claim(request, 2, held + 4)));
    let request = sctp((client6.into(), 40011), (vip6.into(), 80));
    let held = length(&request, 4);
    cases.push(("IPv6, 4 bytes more than held", claim(request, 4, held + 4)));
    let request = with_extension_headers(sctp((client6.into(), 40012), (vip6.into(), 80)));
    cases.push((
        "IPv6, a payload length below its extension headers",
        claim(request, 4, 0),
    ));
    for (what, request) in cases {
        let ((verdict, out), moved) = fx.counting(|fx| fx.run(programs::FROM_POD, &request));
        assert_eq!(moved, counts(&[(Counter::RewriteError, 1)]), "{what}");
        assert_eq!((verdict, out), (NEXT, request), "{what}: passed untouched");
    }
}

/// The destination address of an IP packet with its L4 header at `l4`, unchecked.
fn inspect_destination(packet: &[u8], l4: usize) -> IpAddr {
    if l4 == 14 + 20 {
        IpAddr::from(<[u8; 4]>::try_from(&packet[30..34]).unwrap())
    } else {
        IpAddr::from(<[u8; 16]>::try_from(&packet[38..54]).unwrap())
    }
}

/// Inserts a hop-by-hop and a destination-options header between the IPv6 header and L4.
fn with_extension_headers(mut packet: Vec<u8>) -> Vec<u8> {
    const L3: usize = 14;
    let upper = packet[L3 + 6];
    packet[L3 + 6] = 0; // hop-by-hop
    let hop_by_hop = [60u8, 0, 1, 4, 0, 0, 0, 0]; // next: destination options; PadN
    let destination = [upper, 0, 1, 4, 0, 0, 0, 0]; // next: TCP/UDP; PadN
    let at = L3 + 40;
    packet.splice(at..at, hop_by_hop.iter().chain(&destination).copied());
    let length = u16::from_be_bytes([packet[L3 + 4], packet[L3 + 5]]) + 16;
    packet[L3 + 4..L3 + 6].copy_from_slice(&length.to_be_bytes());
    packet
}

#[test]
fn ipv6_extension_headers_are_skipped() {
    let mut fx = Fixture::new();
    let (client, vip, backend) = (
        v6("fd00:10:244:1::2"),
        v6("fd00:10:96::10"),
        v6("fd00:10:244:2::2"),
    );
    program_v6(&mut fx, service(vip, 80, Protocol::Tcp, &[(backend, 8080)]));
    let request = with_extension_headers(tcp((client.into(), 41000), (vip.into(), 80), true));
    let seen = inspect(&request);
    assert_eq!(
        seen.destination,
        (vip.into(), 80),
        "test packet is well formed"
    );
    let out = fx.ingress(&request);
    assert_eq!(out.len(), request.len());
    assert_eq!(
        inspect(&out),
        Seen {
            source: (client.into(), 41000),
            destination: (backend.into(), 8080),
            payload: PAYLOAD.to_vec()
        }
    );
    // The extension headers themselves are untouched.
    assert_eq!(out[54..70], request[54..70]);
}

#[test]
fn non_service_packets_pass_untouched() {
    let mut fx = Fixture::new();
    program_v4(
        &mut fx,
        service(VIP4, 80, Protocol::Tcp, &[(BACKEND4_A, 8080)]),
    );
    let vip6 = v6("fd00:10:96::10");
    program_v6(
        &mut fx,
        service(vip6, 80, Protocol::Tcp, &[(v6("fd00:10:244:2::2"), 8080)]),
    );
    let client6 = v6("fd00:10:244:1::2");
    let packets = [
        // Straight to a pod.
        tcp((CLIENT4.into(), 40000), (BACKEND4_A.into(), 8080), true),
        // The service address, another port.
        tcp((CLIENT4.into(), 40000), (VIP4.into(), 81), true),
        // The service address and port, another protocol.
        udp((CLIENT4.into(), 40000), (VIP4.into(), 80)),
        tcp((client6.into(), 40000), (vip6.into(), 443), true),
        udp((client6.into(), 40000), (vip6.into(), 80)),
    ];
    let total = packets.len() as u64;
    let ((), moved) = fx.counting(|fx| {
        for packet in packets {
            assert_eq!(
                fx.ingress(&packet),
                packet,
                "from_pod changed {:?}",
                inspect(&packet)
            );
            assert_eq!(
                fx.egress(&packet),
                packet,
                "to_pod changed {:?}",
                inspect(&packet)
            );
        }
        // Not IP at all (ARP).
        let mut arp = vec![0xffu8; 6];
        arp.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x06]);
        arp.extend_from_slice(&[0u8; 28]);
        assert_eq!(fx.ingress(&arp), arp);
    });
    assert_eq!(
        moved,
        counts(&[(Counter::Pass, 2 * total + 1)]),
        "every packet passed, and was counted as such"
    );
}

#[test]
fn truncated_packets_pass_untouched() {
    let mut fx = Fixture::new();
    program_v4(
        &mut fx,
        service(VIP4, 80, Protocol::Tcp, &[(BACKEND4_A, 8080)]),
    );
    let vip6 = v6("fd00:10:96::10");
    program_v6(
        &mut fx,
        service(vip6, 80, Protocol::Tcp, &[(v6("fd00:10:244:2::2"), 8080)]),
    );
    let whole4 = tcp((CLIENT4.into(), 40000), (VIP4.into(), 80), true);
    let whole6 = tcp(
        (v6("fd00:10:244:1::2").into(), 40000),
        (vip6.into(), 80),
        true,
    );
    // Cut inside the TCP header (ports present, checksum field missing), inside the ports, and
    // right after the IP header. BPF_PROG_TEST_RUN itself refuses a packet shorter than its
    // minimal IP header, so that case cannot be run.
    for (whole, cuts) in [
        (&whole4, [14 + 20 + 10, 14 + 20 + 2, 14 + 20]),
        (&whole6, [14 + 40 + 10, 14 + 40 + 2, 14 + 40]),
    ] {
        for cut in cuts {
            let packet = &whole[..cut];
            let (verdict, out) = fx.run(programs::FROM_POD, packet);
            assert_eq!(verdict, NEXT);
            assert_eq!(out, packet, "truncated at {cut} bytes");
        }
    }
}

#[test]
fn udp_ipv4_without_checksum_keeps_it_zero() {
    let mut fx = Fixture::new();
    program_v4(
        &mut fx,
        service(VIP4, 53, Protocol::Udp, &[(BACKEND4_A, 5353)]),
    );
    let mut packet = udp((CLIENT4.into(), 40000), (VIP4.into(), 53));
    packet[14 + 20 + 6..14 + 20 + 8].copy_from_slice(&[0, 0]);
    let out = fx.ingress(&packet);
    assert_eq!(
        &out[14 + 20 + 6..14 + 20 + 8],
        &[0, 0],
        "no checksum stays no checksum"
    );
    assert_eq!(inspect(&out).destination, (BACKEND4_A.into(), 5353));
}

#[test]
fn flows_stick_to_one_backend_and_spread_over_all() {
    let mut fx = Fixture::new();
    program_v4(
        &mut fx,
        service(
            VIP4,
            80,
            Protocol::Tcp,
            &[(BACKEND4_A, 8080), (BACKEND4_B, 8080)],
        ),
    );
    let mut chosen = std::collections::BTreeSet::new();
    let before = fx.counts();
    for port in 0..64u16 {
        let first = inspect(&fx.ingress(&tcp(
            (CLIENT4.into(), 30000 + port),
            (VIP4.into(), 80),
            true,
        )));
        // Every later packet of the flow goes to the same backend.
        for _ in 0..4 {
            let again = inspect(&fx.ingress(&tcp(
                (CLIENT4.into(), 30000 + port),
                (VIP4.into(), 80),
                false,
            )));
            assert_eq!(again.destination, first.destination, "flow moved backends");
        }
        chosen.insert(first.destination.0);
    }
    // 64 flows on one of two backends by chance: probability 2^-63.
    assert_eq!(chosen.len(), 2, "both backends used: {chosen:?}");
    let after = fx.counts();
    assert_eq!(after[&Counter::DnatNew] - before[&Counter::DnatNew], 64);
    assert_eq!(
        after[&Counter::DnatEstablished] - before[&Counter::DnatEstablished],
        256
    );
}

#[test]
fn a_flow_whose_backend_went_away_is_moved_and_a_deleted_service_stops_translation() {
    let mut fx = Fixture::new();
    let (frontend, both) = service(
        VIP4,
        80,
        Protocol::Udp,
        &[(BACKEND4_A, 8080), (BACKEND4_B, 8080)],
    );
    fx.v4.upsert(&frontend, &both).unwrap();
    let packet = udp((CLIENT4.into(), 40000), (VIP4.into(), 80));
    let first = inspect(&fx.ingress(&packet)).destination.0;
    let survivor = if first == IpAddr::from(BACKEND4_A) {
        BACKEND4_B
    } else {
        BACKEND4_A
    };

    let (_, one) = service(VIP4, 80, Protocol::Udp, &[(survivor, 8080)]);
    fx.v4.upsert(&frontend, &one).unwrap();
    let (out, moved) = fx.counting(|fx| fx.ingress(&packet));
    assert_eq!(
        inspect(&out).destination,
        (survivor.into(), 8080),
        "the same 5-tuple must follow the remaining backend"
    );
    if first == IpAddr::from(survivor) {
        assert_eq!(moved, counts(&[(Counter::DnatEstablished, 1)]));
    } else {
        assert_eq!(
            moved,
            counts(&[(Counter::Repick, 1)]),
            "its backend was gone"
        );
    }

    fx.v4.remove(&frontend).unwrap();
    let (out, moved) = fx.counting(|fx| fx.ingress(&packet));
    assert_eq!(out, packet, "a deleted service is not translated");
    assert_eq!(moved, counts(&[(Counter::Pass, 1)]));
}

#[test]
fn a_tcp_connection_keeps_its_backend_after_the_backend_leaves_the_service() {
    let mut fx = Fixture::new();
    let (frontend, both) = service(
        VIP4,
        80,
        Protocol::Tcp,
        &[(BACKEND4_A, 8080), (BACKEND4_B, 8080)],
    );
    fx.v4.upsert(&frontend, &both).unwrap();
    let client = (IpAddr::from(CLIENT4), 40000);
    let first = inspect(&fx.ingress(&tcp(client, (VIP4.into(), 80), true))).destination;
    let other = if first.0 == IpAddr::from(BACKEND4_A) {
        BACKEND4_B
    } else {
        BACKEND4_A
    };

    // The connection's backend leaves the Service (its pod is terminating).
    let (_, one) = service(VIP4, 80, Protocol::Tcp, &[(other, 8080)]);
    fx.v4.upsert(&frontend, &one).unwrap();
    let (out, moved) = fx.counting(|fx| fx.ingress(&tcp(client, (VIP4.into(), 80), false)));
    assert_eq!(
        inspect(&out).destination,
        first,
        "an established TCP connection stays on its backend, like a netfilter NAT binding"
    );
    assert_eq!(moved, counts(&[(Counter::DnatEstablished, 1)]));
    // A new connection goes to the remaining backend.
    assert_eq!(
        inspect(&fx.ingress(&tcp((CLIENT4.into(), 40001), (VIP4.into(), 80), true))).destination,
        (other.into(), 8080)
    );
}

/// A TCP packet with the given flags (etherparse builder steps).
fn tcp_with(source: (IpAddr, u16), destination: (IpAddr, u16), flags: &[&str]) -> Vec<u8> {
    let mut b = builder(source.0, destination.0).tcp(source.1, destination.1, 1000, 65535);
    for flag in flags {
        b = match *flag {
            "syn" => b.syn(),
            "ack" => b.ack(1),
            "fin" => b.fin(),
            "rst" => b.rst(),
            other => panic!("unknown TCP flag {other}"),
        };
    }
    let mut out = Vec::new();
    b.write(&mut out, PAYLOAD).expect("building TCP");
    out
}

/// The tuple's first connection went to A, which then left the Service for B. Its packets,
/// a retransmitted SYN included, stay on A; once it closed (FIN or RST), a SYN on the same
/// tuple is a new connection and goes to B.
fn port_reuse_after<A: Address + KernelFamily>(
    writer: fn(&mut Fixture) -> &mut Writer<A>,
    (client, vip, a, b): (A, A, A, A),
    close: &str,
) {
    let mut fx = Fixture::new();
    let (frontend, only_a) = service(vip, 80, Protocol::Tcp, &[(a, 8080)]);
    writer(&mut fx).upsert(&frontend, &only_a).unwrap();
    let (client, vip, a, b): (IpAddr, IpAddr, IpAddr, IpAddr) =
        (client.into(), vip.into(), a.into(), b.into());
    let from = (client, 45000);
    let to = (vip, 80);
    let (out, moved) = fx.counting(|fx| fx.ingress(&tcp_with(from, to, &["syn"])));
    assert_eq!(inspect(&out).destination, (a, 8080));
    assert_eq!(moved, counts(&[(Counter::DnatNew, 1)]));

    let (_, only_b) = service(
        A::from_ip(vip).unwrap(),
        80,
        Protocol::Tcp,
        &[(A::from_ip(b).unwrap(), 8080)],
    );
    writer(&mut fx).upsert(&frontend, &only_b).unwrap();
    for flags in [&["ack"][..], &["syn"], &[close, "ack"]] {
        let (out, moved) = fx.counting(|fx| fx.ingress(&tcp_with(from, to, flags)));
        assert_eq!(
            inspect(&out).destination,
            (a, 8080),
            "{flags:?} belongs to the open connection"
        );
        assert_eq!(moved, counts(&[(Counter::DnatEstablished, 1)]), "{flags:?}");
    }
    let (out, moved) = fx.counting(|fx| fx.ingress(&tcp_with(from, to, &["syn"])));
    assert_eq!(
        inspect(&out).destination,
        (b, 8080),
        "a SYN after {close} opens a new connection, balanced afresh"
    );
    assert_eq!(moved, counts(&[(Counter::DnatNew, 1)]));
}

fn v4_hosts() -> (Ipv4Addr, Ipv4Addr, Ipv4Addr, Ipv4Addr) {
    (CLIENT4, VIP4, BACKEND4_A, BACKEND4_B)
}

fn v6_hosts() -> (Ipv6Addr, Ipv6Addr, Ipv6Addr, Ipv6Addr) {
    (
        v6("fd00:10:244:1::2"),
        v6("fd00:10:96::10"),
        v6("fd00:10:244:2::2"),
        v6("fd00:10:244:3::2"),
    )
}

#[test]
fn a_syn_after_fin_reuses_the_port_for_a_new_connection_ipv4() {
    port_reuse_after(|fx| &mut fx.v4, v4_hosts(), "fin");
}

#[test]
fn a_syn_after_rst_reuses_the_port_for_a_new_connection_ipv4() {
    port_reuse_after(|fx| &mut fx.v4, v4_hosts(), "rst");
}

#[test]
fn a_syn_after_fin_reuses_the_port_for_a_new_connection_ipv6() {
    port_reuse_after(|fx| &mut fx.v6, v6_hosts(), "fin");
}

#[test]
fn a_syn_after_rst_reuses_the_port_for_a_new_connection_ipv6() {
    port_reuse_after(|fx| &mut fx.v6, v6_hosts(), "rst");
}

/// What a rejected packet came back as, every checksum checked.
#[derive(Debug, PartialEq, Eq)]
enum Rejection {
    /// A TCP reset: its sequence and acknowledgment numbers, whether ACK is set.
    Reset { seq: u32, ack: Option<u32> },
    /// An ICMP (ICMPv6) port unreachable quoting these bytes.
    PortUnreachable { quote: Vec<u8> },
}

/// Parses `answer`, the reply a reject made of `request`: Ethernet addresses swapped, from the
/// request's destination to its source, exact lengths and checksums.
fn rejection(request: &[u8], answer: &[u8]) -> Rejection {
    use etherparse::{Icmpv4Type, Icmpv6Type, icmpv4::DestUnreachableHeader, icmpv6};
    assert_eq!(answer[0..6], request[6..12], "to the sender's MAC");
    assert_eq!(answer[6..12], request[0..6], "from the MAC it was sent to");
    let asked = inspect_addresses(request);
    let headers = PacketHeaders::from_ethernet_slice(answer).expect("parsable answer");
    let payload = headers.payload.slice();
    match (&headers.net, &headers.transport) {
        (_, Some(TransportHeader::Tcp(t))) => {
            let seen = inspect(answer);
            assert_eq!((seen.source, seen.destination), (asked.1, asked.0));
            assert!(payload.is_empty() && t.rst && !t.syn && !t.fin && t.options.is_empty());
            Rejection::Reset {
                seq: t.sequence_number,
                ack: t.ack.then_some(t.acknowledgment_number),
            }
        }
        (Some(NetHeaders::Ipv4(ip, _)), Some(TransportHeader::Icmpv4(icmp))) => {
            assert_eq!(ip.header_checksum, ip.calc_header_checksum());
            assert_eq!(
                (IpAddr::from(ip.source), IpAddr::from(ip.destination)),
                (asked.1.0, asked.0.0)
            );
            assert_eq!(
                icmp.icmp_type,
                Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Port)
            );
            let mut expected = icmp.clone();
            expected.update_checksum(payload);
            assert_eq!(icmp.checksum, expected.checksum, "ICMP checksum");
            assert_eq!(answer.len(), 14 + 20 + 8 + payload.len());
            Rejection::PortUnreachable {
                quote: payload.to_vec(),
            }
        }
        (Some(NetHeaders::Ipv6(ip, _)), Some(TransportHeader::Icmpv6(icmp))) => {
            assert_eq!(
                (IpAddr::from(ip.source), IpAddr::from(ip.destination)),
                (asked.1.0, asked.0.0)
            );
            assert_eq!(
                icmp.icmp_type,
                Icmpv6Type::DestinationUnreachable(icmpv6::DestUnreachableCode::Port)
            );
            let mut expected = icmp.clone();
            expected
                .update_checksum(ip.source, ip.destination, payload)
                .unwrap();
            assert_eq!(icmp.checksum, expected.checksum, "ICMPv6 checksum");
            assert_eq!(answer.len(), 14 + 40 + 8 + payload.len());
            Rejection::PortUnreachable {
                quote: payload.to_vec(),
            }
        }
        other => panic!("not a rejection: {other:?}"),
    }
}

/// A packet's (source, destination), without checking it.
fn inspect_addresses(bytes: &[u8]) -> ((IpAddr, u16), (IpAddr, u16)) {
    let seen = inspect(bytes);
    (seen.source, seen.destination)
}

/// No usable endpoint: kube-proxy's REJECT, from the datapath, in both families. A SYN gets a
/// reset acknowledging it, a segment with ACK a reset carrying that acknowledgment as its
/// sequence number, a datagram an ICMP (ICMPv6) port unreachable quoting its IP header and 8
/// bytes; each goes back out of the interface (redirect) and no flow is tracked. A reset is
/// never answered.
#[test]
fn a_service_with_no_backend_rejects_in_both_families() {
    let mut fx = Fixture::new();
    let (client4, vip4, _, _) = v4_hosts();
    let (client6, vip6, _, _) = v6_hosts();
    for (protocol, port) in [
        (Protocol::Tcp, 80),
        (Protocol::Udp, 53),
        (Protocol::Sctp, 9000),
    ] {
        let (f4, e4) = service(vip4, port, protocol, &[]);
        fx.v4.upsert(&f4, &e4).unwrap();
        let (f6, e6) = service(vip6, port, protocol, &[]);
        fx.v6.upsert(&f6, &e6).unwrap();
    }
    let payload = PAYLOAD.len() as u32;
    let families: [(IpAddr, IpAddr, usize); 2] = [
        (client4.into(), vip4.into(), 20),
        (client6.into(), vip6.into(), 40),
    ];
    for (client, vip, ip_header) in families {
        let from = (client, 40000);
        let expected = [
            // A SYN (seq 1000) with a payload: acknowledged whole, SYN included.
            (
                tcp(from, (vip, 80), true),
                Rejection::Reset {
                    seq: 0,
                    ack: Some(1000 + payload + 1),
                },
            ),
            // A segment acknowledging 1: the reset's sequence number.
            (
                tcp(from, (vip, 80), false),
                Rejection::Reset { seq: 1, ack: None },
            ),
        ];
        for (request, expected) in expected {
            let ((verdict, out), moved) = fx.counting(|fx| fx.run(programs::FROM_POD, &request));
            assert_eq!(verdict, REDIRECT, "{vip}: the reset goes back out");
            assert_eq!(moved, counts(&[(Counter::Reject, 1)]));
            assert_eq!(rejection(&request, &out), expected, "{vip}");
            assert_eq!(out.len(), 14 + ip_header + 20);
        }
        let request = udp(from, (vip, 53));
        let ((verdict, out), moved) = fx.counting(|fx| fx.run(programs::FROM_POD, &request));
        assert_eq!(
            verdict, REDIRECT,
            "{vip}: the port unreachable goes back out"
        );
        assert_eq!(moved, counts(&[(Counter::Reject, 1)]));
        assert_eq!(
            rejection(&request, &out),
            Rejection::PortUnreachable {
                quote: request[14..14 + ip_header + 8].to_vec()
            },
            "{vip}: the quote is the datagram's IP header and UDP header"
        );
        let request = sctp(from, (vip, 9000));
        let ((verdict, out), moved) = fx.counting(|fx| fx.run(programs::FROM_POD, &request));
        assert_eq!(verdict, REDIRECT, "{vip}: SCTP gets a port unreachable too");
        assert_eq!(moved, counts(&[(Counter::Reject, 1)]));
        assert_eq!(
            rejection(&request, &out),
            Rejection::PortUnreachable {
                quote: request[14..14 + ip_header + 8].to_vec()
            },
            "{vip}: the quote is the IP header, the SCTP ports and verification tag"
        );

        let reset = tcp_with(from, (vip, 80), &["rst"]);
        let (out, moved) = fx.counting(|fx| fx.ingress(&reset));
        assert_eq!(out, reset, "{vip}: a reset is not answered");
        assert_eq!(moved, counts(&[(Counter::NoBackend, 1)]));
    }
    let conntrack = proxy_userspace::debug::conntrack(&fx.pins).expect("conntrack");
    assert!(conntrack.is_empty(), "no flow was tracked: {conntrack:?}");
}

/// `internalTrafficPolicy: Local` with no endpoint on this node: kube-proxy drops the packets,
/// so does the TC path (no translation, no flow), in both families; an empty Service without
/// the policy is rejected.
#[test]
fn a_local_policy_without_a_local_endpoint_drops() {
    let mut fx = Fixture::new();
    let (client4, vip4, _, _) = v4_hosts();
    let (client6, vip6, _, _) = v6_hosts();
    let (f4, mut e4) = service(vip4, 80, Protocol::Tcp, &[]);
    e4.local = true;
    fx.v4.upsert(&f4, &e4).unwrap();
    let (f6, mut e6) = service(vip6, 53, Protocol::Udp, &[]);
    e6.local = true;
    fx.v6.upsert(&f6, &e6).unwrap();
    let packets = [
        tcp((client4.into(), 40000), (vip4.into(), 80), true),
        udp((client6.into(), 40000), (vip6.into(), 53)),
    ];
    for packet in &packets {
        let ((verdict, _), moved) = fx.counting(|fx| fx.run(programs::FROM_POD, packet));
        assert_eq!(verdict, DROP, "no local endpoint: the packet is dropped");
        assert_eq!(moved, counts(&[(Counter::DropNoLocalEndpoint, 1)]));
    }
    let conntrack = proxy_userspace::debug::conntrack(&fx.pins).expect("conntrack");
    assert!(conntrack.is_empty(), "no flow was tracked: {conntrack:?}");

    e4.local = false;
    fx.v4.upsert(&f4, &e4).unwrap();
    let ((verdict, _), moved) = fx.counting(|fx| fx.run(programs::FROM_POD, &packets[0]));
    assert_eq!(
        (verdict, moved),
        (REDIRECT, counts(&[(Counter::Reject, 1)])),
        "without the policy: rejected"
    );
}

/// A NodePort of an `externalTrafficPolicy: Local` Service: its external entry holds the local
/// backend A, its internal twin every backend (here B). A pod is inside the cluster, so it gets
/// the internal entry; without the two-scopes flag, the external one.
#[test]
fn pod_traffic_to_a_two_scoped_frontend_takes_its_internal_entry() {
    let mut fx = Fixture::new();
    let node = Ipv4Addr::new(10, 244, 0, 1);
    let backend = |address| Backend {
        address,
        port: 8080,
        protocol: Protocol::Tcp,
        state: BackendState::Active,
    };
    let external = Frontend::new(node, 30080, Protocol::Tcp);
    let internal = Frontend {
        scope: Scope::Internal,
        ..external
    };
    let entry = |backends, local, two_scopes| ServiceEntry {
        kind: FrontendKind::NodePort,
        backends,
        local,
        two_scopes,
        affinity_timeout: None,
        source_ranges: Vec::new(),
    };
    fx.v4
        .upsert(&internal, &entry(vec![backend(BACKEND4_B)], false, false))
        .unwrap();
    fx.v4
        .upsert(&external, &entry(vec![backend(BACKEND4_A)], true, true))
        .unwrap();
    let to = (IpAddr::from(node), 30080);
    let out = fx.ingress(&tcp((CLIENT4.into(), 41000), to, true));
    assert_eq!(
        inspect(&out).destination,
        (BACKEND4_B.into(), 8080),
        "pod traffic follows the internal entry"
    );

    fx.v4
        .upsert(&external, &entry(vec![backend(BACKEND4_A)], true, false))
        .unwrap();
    let out = fx.ingress(&tcp((CLIENT4.into(), 41001), to, true));
    assert_eq!(
        inspect(&out).destination,
        (BACKEND4_A.into(), 8080),
        "a one-scoped frontend is its external entry for everyone"
    );
}

/// `sessionAffinity: ClientIP` on the TC path: a client's new connections all go to its
/// backend, other clients spread, and a binding left unused past the timeout is chosen afresh.
#[test]
fn session_affinity_keeps_a_client_on_its_backend_until_the_binding_expires() {
    use proxy_common::{AffinityKey, AffinityValue};
    let mut fx = Fixture::new();
    let (frontend, mut entry) = service(
        VIP4,
        80,
        Protocol::Tcp,
        &[(BACKEND4_A, 8080), (BACKEND4_B, 8080)],
    );
    entry.affinity_timeout = Some(60);
    fx.v4.upsert(&frontend, &entry).unwrap();
    let syn = |client: Ipv4Addr, port: u16| tcp((client.into(), port), (VIP4.into(), 80), true);
    let first = inspect(&fx.ingress(&syn(CLIENT4, 20000))).destination;
    for port in 20001..20021 {
        assert_eq!(
            inspect(&fx.ingress(&syn(CLIENT4, port))).destination,
            first,
            "a new connection of the same client"
        );
    }
    let spread: std::collections::BTreeSet<_> = (10..40)
        .map(|i| inspect(&fx.ingress(&syn(Ipv4Addr::new(10, 244, 1, i), 30000))).destination)
        .collect();
    assert_eq!(spread.len(), 2, "30 clients on one backend: {spread:?}");

    // Age every binding past the timeout before each connection: each is chosen afresh.
    let mut bindings =
        pinned_hash::<AffinityKey, AffinityValue>(&fx, proxy_common::map_names::AFFINITY_V4);
    let mut chosen = std::collections::BTreeSet::new();
    for port in 21000..21040 {
        let keys: Vec<AffinityKey> = bindings.keys().filter_map(Result::ok).collect();
        for key in keys {
            let mut value = bindings.get(&key, 0).unwrap();
            value.last_used = 0;
            bindings.insert(key, value, 0).unwrap();
        }
        chosen.insert(inspect(&fx.ingress(&syn(CLIENT4, port))).destination);
    }
    assert_eq!(chosen.len(), 2, "expired bindings chose afresh: {chosen:?}");
}

/// Moves the last packet of every conntrack entry of family `A` (of one direction, if given)
/// `by` into the past.
fn age_conntrack<A: KernelFamily>(fx: &Fixture, by: std::time::Duration, only: Option<u8>) {
    use proxy_common::{ConntrackKey, ConntrackValue, LbFamily};
    let mut map = proxy_userspace::maps::kernel::open_hash::<ConntrackKey<A::Raw>, ConntrackValue>(
        &fx.pins,
        A::Binding::CONNTRACK,
    )
    .expect("conntrack map");
    let keys: Vec<_> = map.keys().filter_map(Result::ok).collect();
    for key in keys {
        if only.is_some_and(|d| d != key.direction) {
            continue;
        }
        let mut value = map.get(&key, 0).expect("entry");
        value.last_seen = value.last_seen.saturating_sub(by.as_nanos() as u64);
        map.insert(key, value, 0).expect("aged entry");
    }
}

/// The datapath's side of conntrack lifetimes, in one family: a flow idle past its state's
/// timeout (loaded as UDP 3 s, UDP with replies 12 s, established TCP 40 s: aging an entry
/// cannot take it back past the machine's boot) is new again; within it, it is the same flow;
/// and the backend's replies keep a flow alive whose client has been quiet.
fn flows_expire_by_state<A: Address + KernelFamily>(
    program: impl Fn(&mut Fixture, (Frontend<A>, ServiceEntry<A>)),
    (client, vip, backend, _): (A, A, A, A),
) {
    use std::time::Duration;
    let mut options = LoadOptions::default();
    options.config.ct_timeouts.udp = 3;
    options.config.ct_timeouts.udp_stream = 12;
    options.config.ct_timeouts.established = 40;
    let mut fx = Fixture::with_options(&options);
    program(&mut fx, service(vip, 53, Protocol::Udp, &[(backend, 5353)]));
    program(&mut fx, service(vip, 80, Protocol::Tcp, &[(backend, 8080)]));
    let (client, vip, backend): (IpAddr, IpAddr, IpAddr) =
        (client.into(), vip.into(), backend.into());
    let request = udp((client, 40000), (vip, 53));
    let reply = udp((backend, 5353), (client, 40000));
    let send = |fx: &mut Fixture, packet: &[u8]| fx.counting(|fx| fx.ingress(packet)).1;
    let new = counts(&[(Counter::DnatNew, 1)]);
    let known = counts(&[(Counter::DnatEstablished, 1)]);
    let seconds = Duration::from_secs;

    assert_eq!(send(&mut fx, &request), new);
    assert_eq!(send(&mut fx, &request), known);
    age_conntrack::<A>(&fx, seconds(4), None);
    assert_eq!(send(&mut fx, &request), new, "UDP without replies: 3 s");

    fx.egress(&reply);
    age_conntrack::<A>(&fx, seconds(4), None);
    assert_eq!(
        send(&mut fx, &request),
        known,
        "UDP with replies lives 12 s"
    );
    fx.egress(&reply);
    age_conntrack::<A>(&fx, seconds(13), Some(proxy_common::direction::FORWARD));
    assert_eq!(
        send(&mut fx, &request),
        known,
        "the backend's recent reply keeps the flow"
    );
    age_conntrack::<A>(&fx, seconds(13), None);
    assert_eq!(send(&mut fx, &request), new, "UDP with replies: 12 s");

    let from = (client, 41000);
    assert_eq!(send(&mut fx, &tcp_with(from, (vip, 80), &["syn"])), new);
    fx.egress(&tcp_with((backend, 8080), from, &["syn", "ack"]));
    let ack = tcp_with(from, (vip, 80), &["ack"]);
    age_conntrack::<A>(&fx, seconds(30), None);
    assert_eq!(send(&mut fx, &ack), known, "established TCP lives 40 s");
    age_conntrack::<A>(&fx, seconds(41), None);
    assert_eq!(send(&mut fx, &ack), new, "established TCP: 40 s");
}

#[test]
fn flows_expire_by_state_ipv4() {
    flows_expire_by_state(program_v4, v4_hosts());
}

#[test]
fn flows_expire_by_state_ipv6() {
    flows_expire_by_state(program_v6, v6_hosts());
}

/// The agent's collector, both families: seven flows in seven states (as `bpf ct list` names
/// them, each seen with both its entries), collected at later and later times with the default
/// timeouts: each goes, both entries, exactly when its state's timeout has passed.
#[test]
fn the_collector_deletes_each_flow_when_its_state_times_out() {
    use proxy_common::conntrack::Timeouts;
    use proxy_userspace::conntrack;
    let mut fx = Fixture::new();
    let (client4, vip4, backend4, _) = v4_hosts();
    let (client6, vip6, backend6, _) = v6_hosts();
    for (protocol, port, target) in [(Protocol::Udp, 53, 5353), (Protocol::Tcp, 80, 8080)] {
        program_v4(
            &mut fx,
            service(vip4, port, protocol, &[(backend4, target)]),
        );
        program_v6(
            &mut fx,
            service(vip6, port, protocol, &[(backend6, target)]),
        );
    }
    let hosts: [(IpAddr, IpAddr, IpAddr); 2] = [
        (client4.into(), vip4.into(), backend4.into()),
        (client6.into(), vip6.into(), backend6.into()),
    ];
    // (client port, state, what makes it)
    type Step = (bool, &'static [&'static str]);
    let flows: [(u16, &str, &[Step]); 7] = [
        (1001, "UDP", &[]),
        (1002, "UDP_STREAM", &[(false, &[])]),
        (1003, "SYN_SENT", &[]),
        (1004, "ESTABLISHED", &[(false, &["syn", "ack"])]),
        (
            1005,
            "CLOSE_WAIT",
            &[(false, &["syn", "ack"]), (true, &["fin", "ack"])],
        ),
        (
            1006,
            "TIME_WAIT",
            &[
                (false, &["syn", "ack"]),
                (true, &["fin", "ack"]),
                (false, &["fin", "ack"]),
            ],
        ),
        (1007, "CLOSE", &[(false, &["syn", "ack"]), (true, &["rst"])]),
    ];
    for (client, vip, backend) in hosts {
        for (port, _, steps) in flows {
            let udp_flow = port <= 1002;
            let from = (client, port);
            let (to, server) = if udp_flow {
                ((vip, 53), (backend, 5353))
            } else {
                ((vip, 80), (backend, 8080))
            };
            if udp_flow {
                fx.ingress(&udp(from, to));
            } else {
                fx.ingress(&tcp_with(from, to, &["syn"]));
            }
            for (from_client, flags) in steps {
                match (udp_flow, from_client) {
                    (true, _) => fx.egress(&udp(server, from)),
                    (false, true) => fx.ingress(&tcp_with(from, to, flags)),
                    (false, false) => fx.egress(&tcp_with(server, from, flags)),
                };
            }
        }
    }
    let states = |fx: &Fixture| -> BTreeMap<(String, u16), (String, usize)> {
        let mut seen = BTreeMap::new();
        for row in proxy_userspace::debug::conntrack(&fx.pins).expect("conntrack") {
            let client = if row.direction == "forward" {
                &row.source
            } else {
                &row.destination
            };
            let port: u16 = client.rsplit(':').next().unwrap().parse().unwrap();
            let entry = seen
                .entry((row.family.to_string(), port))
                .or_insert((row.state.to_owned(), 0));
            assert_eq!(entry.0, row.state, "both entries of {client} in one state");
            entry.1 += 1;
        }
        seen
    };
    let expected = |gone: usize| -> BTreeMap<(String, u16), (String, usize)> {
        ["IPv4", "IPv6"]
            .iter()
            .flat_map(|family| {
                flows
                    .iter()
                    .filter(move |(port, _, _)| !GONE[..gone].contains(port))
                    .map(move |(port, state, _)| {
                        ((family.to_string(), *port), (state.to_string(), 2))
                    })
            })
            .collect()
    };
    // In the order their timeouts pass: CLOSE 10 s, UDP 30 s, SYN_SENT / TIME_WAIT / UDP_STREAM
    // 120 s, CLOSE_WAIT 1 h, ESTABLISHED 24 h.
    const GONE: [u16; 7] = [1007, 1001, 1002, 1003, 1006, 1005, 1004];
    assert_eq!(
        states(&fx),
        expected(0),
        "every flow in its state, both entries"
    );
    let timeouts = Timeouts::DEFAULT;
    let start = conntrack::monotonic_ns();
    for (after, gone) in [
        (5, 0),
        (11, 1),
        (31, 2),
        (100, 2),
        (121, 5),
        (3601, 6),
        (86_401, 7),
    ] {
        let now = start + after * 1_000_000_000;
        conntrack::collect(&fx.pins, &timeouts, now).expect("collect");
        assert_eq!(states(&fx), expected(gone), "collected {after} s later");
    }
}

/// The ICMP errors the tests send: a path-MTU one or a port unreachable.
#[derive(Clone, Copy, Debug)]
enum IcmpError {
    /// IPv4 fragmentation needed (MTU 1400), IPv6 Packet Too Big (MTU 1280).
    TooBig,
    PortUnreachable,
}

/// An ICMP (ICMPv6) error from `from` to `to` quoting `quote` (the bytes from an IP header on).
fn icmp_error(from: IpAddr, to: IpAddr, kind: IcmpError, quote: &[u8]) -> Vec<u8> {
    use etherparse::{Icmpv4Type, Icmpv6Type, icmpv4::DestUnreachableHeader, icmpv6};
    let b = builder(from, to);
    let mut out = Vec::new();
    let written = match (from, kind) {
        (IpAddr::V4(_), IcmpError::TooBig) => b
            .icmpv4(Icmpv4Type::DestinationUnreachable(
                DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 },
            ))
            .write(&mut out, quote),
        (IpAddr::V4(_), IcmpError::PortUnreachable) => b
            .icmpv4(Icmpv4Type::DestinationUnreachable(
                DestUnreachableHeader::Port,
            ))
            .write(&mut out, quote),
        (IpAddr::V6(_), IcmpError::TooBig) => b
            .icmpv6(Icmpv6Type::PacketTooBig { mtu: 1280 })
            .write(&mut out, quote),
        (IpAddr::V6(_), IcmpError::PortUnreachable) => b
            .icmpv6(Icmpv6Type::DestinationUnreachable(
                icmpv6::DestUnreachableCode::Port,
            ))
            .write(&mut out, quote),
    };
    written.expect("building an ICMP error");
    out
}

/// An ICMP (ICMPv6) error's source, destination and quote, after checking its IPv4 header
/// checksum and its own checksum.
fn read_icmp_error(bytes: &[u8]) -> (IpAddr, IpAddr, Vec<u8>) {
    let headers = PacketHeaders::from_ethernet_slice(bytes).expect("parsable ICMP error");
    let quote = headers.payload.slice().to_vec();
    match (&headers.net, &headers.transport) {
        (Some(NetHeaders::Ipv4(ip, _)), Some(TransportHeader::Icmpv4(icmp))) => {
            assert_eq!(
                ip.header_checksum,
                ip.calc_header_checksum(),
                "IPv4 checksum"
            );
            let mut expected = icmp.clone();
            expected.update_checksum(&quote);
            assert_eq!(icmp.checksum, expected.checksum, "ICMP checksum");
            (ip.source.into(), ip.destination.into(), quote)
        }
        (Some(NetHeaders::Ipv6(ip, _)), Some(TransportHeader::Icmpv6(icmp))) => {
            let mut expected = icmp.clone();
            expected
                .update_checksum(ip.source, ip.destination, &quote)
                .unwrap();
            assert_eq!(icmp.checksum, expected.checksum, "ICMPv6 checksum");
            (ip.source.into(), ip.destination.into(), quote)
        }
        other => panic!("not an ICMP error: {other:?}"),
    }
}

/// ICMP errors about translated flows are translated with them, in one family: the quote
/// becomes, byte for byte (checksums included), the packet as its sender sent it; the error's
/// own address too when the flow's far end sent it. A router's error keeps the router's
/// address. Errors about unknown flows and echo requests to a frontend pass untouched.
fn icmp_errors_are_translated<A: Address + KernelFamily>(
    writer: impl Fn(&mut Fixture) -> &mut Writer<A>,
    (client, vip, backend, router): (A, A, A, A),
) {
    let mut fx = Fixture::new();
    for (protocol, port, target) in [(Protocol::Tcp, 80, 8080), (Protocol::Udp, 53, 5353)] {
        let (f, e) = service(vip, port, protocol, &[(backend, target)]);
        writer(&mut fx).upsert(&f, &e).unwrap();
    }
    let (client, vip, backend, router): (IpAddr, IpAddr, IpAddr, IpAddr) =
        (client.into(), vip.into(), backend.into(), router.into());
    let ip_header = if client.is_ipv4() { 20 } else { 40 };
    let ip = |packet: &[u8]| packet[14..].to_vec();

    // A router on the way to the backend cannot forward the DNATed segment: too big. It
    // quotes the whole segment, or (IPv4's minimum) the IP header and 8 bytes.
    let request = tcp((client, 40000), (vip, 80), true);
    let dnat = fx.ingress(&request);
    for quoted in [ip(&dnat), dnat[14..14 + ip_header + 8].to_vec()] {
        let error = icmp_error(router, client, IcmpError::TooBig, &quoted);
        let (out, moved) = fx.counting(|fx| fx.egress(&error));
        assert_eq!(
            moved,
            counts(&[(Counter::IcmpError, 1)]),
            "{vip}: translated"
        );
        let (source, destination, quote) = read_icmp_error(&out);
        assert_eq!(
            (source, destination),
            (router, client),
            "{vip}: from the router"
        );
        assert_eq!(
            quote,
            request[14..14 + quoted.len()],
            "{vip}: the quote is what the client sent ({} bytes)",
            quoted.len()
        );
    }

    // The backend has nothing on the port: its port unreachable comes from the frontend.
    let request = udp((client, 40001), (vip, 53));
    let dnat = fx.ingress(&request);
    let error = icmp_error(backend, client, IcmpError::PortUnreachable, &ip(&dnat));
    let (out, moved) = fx.counting(|fx| fx.egress(&error));
    assert_eq!(moved, counts(&[(Counter::IcmpError, 1)]));
    let (source, destination, quote) = read_icmp_error(&out);
    assert_eq!(
        (source, destination),
        (vip, client),
        "{vip}: from the frontend"
    );
    assert_eq!(
        quote,
        ip(&request),
        "{vip}: quoting the datagram the client sent"
    );

    // The other way: the client's error about a reply goes to the backend, quoting the reply
    // as the backend sent it.
    let reply = udp((backend, 5353), (client, 40001));
    let reversed = fx.egress(&reply);
    let error = icmp_error(client, vip, IcmpError::PortUnreachable, &ip(&reversed));
    let (out, moved) = fx.counting(|fx| fx.ingress(&error));
    assert_eq!(moved, counts(&[(Counter::IcmpError, 1)]));
    let (source, destination, quote) = read_icmp_error(&out);
    assert_eq!(
        (source, destination),
        (client, backend),
        "{vip}: to the backend"
    );
    assert_eq!(
        quote,
        ip(&reply),
        "{vip}: quoting the reply the backend sent"
    );

    // Not ours: an error about a flow never translated, an echo request to the frontend.
    let stranger = tcp((client, 40002), (backend, 8080), true);
    let error = icmp_error(router, client, IcmpError::TooBig, &ip(&stranger));
    let (out, moved) = fx.counting(|fx| fx.egress(&error));
    assert_eq!((out, moved), (error, counts(&[(Counter::Pass, 1)])));
    let mut echo = Vec::new();
    let b = builder(client, vip);
    match client {
        IpAddr::V4(_) => b.icmpv4_echo_request(1, 1).write(&mut echo, PAYLOAD),
        IpAddr::V6(_) => b.icmpv6_echo_request(1, 1).write(&mut echo, PAYLOAD),
    }
    .unwrap();
    let (out, moved) = fx.counting(|fx| fx.ingress(&echo));
    assert_eq!((out, moved), (echo, counts(&[(Counter::Pass, 1)])));
}

#[test]
fn icmp_errors_are_translated_ipv4() {
    let (client, vip, backend, _) = v4_hosts();
    icmp_errors_are_translated(
        |fx| &mut fx.v4,
        (client, vip, backend, Ipv4Addr::new(10, 244, 0, 1)),
    );
}

#[test]
fn icmp_errors_are_translated_ipv6() {
    let (client, vip, backend, _) = v6_hosts();
    icmp_errors_are_translated(
        |fx| &mut fx.v6,
        (client, vip, backend, v6("fd00:10:244::1")),
    );
}

/// One masqueraded round trip in one family: a new flow from `client` to the frontend is
/// DNATed to `backend` and SNATed to the node (`node`, a port of the range), redirected; the
/// next packet takes the same port; the backend's reply, to that address and port, comes back
/// from the frontend to the client, redirected; every checksum holds.
fn masqueraded_round_trip(
    fx: &mut Fixture,
    hosts: (IpAddr, IpAddr, IpAddr, IpAddr),
    protocol: Protocol,
) {
    masqueraded_round_trip_at(fx, programs::FROM_POD, hosts, protocol, 80);
}

/// [`masqueraded_round_trip`] at the TC ingress program `program`, to frontend port `port`.
fn masqueraded_round_trip_at(
    fx: &mut Fixture,
    program: &'static str,
    (client, vip, backend, node): (IpAddr, IpAddr, IpAddr, IpAddr),
    protocol: Protocol,
    frontend_port: u16,
) {
    let build = |s, d| first_packet(protocol, s, d);
    let request = build((client, 40000), (vip, frontend_port));
    let ((verdict, out), moved) = fx.counting(|fx| fx.run(program, &request));
    assert_eq!(
        verdict, REDIRECT,
        "{client} → {vip}: sent on to the backend"
    );
    assert_eq!(moved, counts(&[(Counter::SnatNew, 1)]));
    let seen = inspect(&out);
    assert_eq!(seen.destination, (backend, 8080));
    assert_eq!(seen.source.0, node, "{client}: SNATed to the node");
    let port = seen.source.1;
    assert!(
        (DEFAULT_SNAT_PORTS.0..=DEFAULT_SNAT_PORTS.1).contains(&port),
        "a port of the range: {port}"
    );
    assert_eq!(seen.payload, PAYLOAD);

    let ((verdict, again), moved) = fx.counting(|fx| fx.run(program, &request));
    assert_eq!(verdict, REDIRECT);
    assert_eq!(moved, counts(&[(Counter::SnatEstablished, 1)]));
    assert_eq!(inspect(&again), seen, "the flow keeps its port");

    let reply = build((backend, 8080), (node, port));
    let ((verdict, out), moved) = fx.counting(|fx| fx.run(program, &reply));
    assert_eq!(verdict, REDIRECT, "the reply goes out to the client");
    assert_eq!(moved, counts(&[(Counter::ReverseSnat, 1)]));
    let back = inspect(&out);
    assert_eq!(
        (back.source, back.destination),
        ((vip, frontend_port), (client, 40000))
    );
    assert_eq!(back.payload, PAYLOAD);
}

/// Masquerade, as kube-proxy decides it: a hairpin (a pod reaching itself through its own
/// Service) and a client outside `--cluster-cidr` are SNATed to the node's address, a client
/// inside is not; a packet to the node on a port of the range that matches no flow passes.
/// The node's address here (the pods' gateway) lies inside the cluster CIDR, which the agent
/// says is clear of frontends (`cluster_clear`, as it would): a reply to it is still no packet
/// to pass on its address alone. Both families, TCP and UDP.
#[test]
fn hairpins_and_clients_outside_the_cluster_cidr_are_masqueraded() {
    let netns = routed_node();
    netns.enter(|| {
        let options = dual_stack_cluster();
        let mut fx = Fixture::with_options(&options);
        let mut clear = pinned_array::<u32>(&fx, map_names::CLUSTER_CLEAR);
        for index in [cluster_clear::V4, cluster_clear::V6] {
            clear.set(index, cluster_clear::CLEAR, 0).unwrap();
        }
        let (client4, vip4, backend4, _) = v4_hosts();
        let (client6, vip6, backend6, _) = v6_hosts();
        let (outside4, outside6) = (Ipv4Addr::new(192, 0, 2, 7), v6("2001:db8::7"));
        for protocol in Protocol::ALL {
            for backends in [[(backend4, 8080)], [(client4, 8080)]] {
                let (f, e) = service(vip4, 80, protocol, &backends);
                fx.v4.upsert(&f, &e).unwrap();
                let backend6_now = if backends[0].0 == client4 {
                    client6
                } else {
                    backend6
                };
                let (f, e) = service(vip6, 80, protocol, &[(backend6_now, 8080)]);
                fx.v6.upsert(&f, &e).unwrap();
                let hairpin = backends[0].0 == client4;
                let node4: IpAddr = Ipv4Addr::new(10, 244, 0, 1).into();
                let node6: IpAddr = v6("fd00:10:244::1").into();
                if hairpin {
                    for (client, vip, node) in [
                        (IpAddr::from(client4), IpAddr::from(vip4), node4),
                        (client6.into(), vip6.into(), node6),
                    ] {
                        masqueraded_round_trip(&mut fx, (client, vip, client, node), protocol);
                    }
                } else {
                    for (client, vip, backend, node) in [
                        (IpAddr::from(outside4), vip4.into(), backend4.into(), node4),
                        (outside6.into(), vip6.into(), backend6.into(), node6),
                    ] {
                        masqueraded_round_trip(&mut fx, (client, vip, backend, node), protocol);
                    }
                    // A client inside the cluster CIDR keeps its address.
                    for (client, vip) in [
                        (IpAddr::from(client4), IpAddr::from(vip4)),
                        (client6.into(), vip6.into()),
                    ] {
                        let request = first_packet(protocol, (client, 40001), (vip, 80));
                        let (out, moved) = fx.counting(|fx| fx.ingress(&request));
                        assert_eq!(moved, counts(&[(Counter::DnatNew, 1)]));
                        assert_eq!(inspect(&out).source, (client, 40001), "not masqueraded");
                    }
                }
            }
        }
        // To the node, on a port of the range, but of no flow: passed untouched.
        let stray = udp(
            (backend4.into(), 8080),
            (Ipv4Addr::new(10, 244, 0, 1).into(), 61234),
        );
        let (out, moved) = fx.counting(|fx| fx.ingress(&stray));
        assert_eq!((out, moved), (stray, counts(&[(Counter::Pass, 1)])));
    });
}

/// A `snat_marks` map new beside the masquerade sources an older agent's programs recorded
/// (an upgrade) marks them at the load, before any program is attached: the replies of flows
/// masqueraded before keep being translated, in both families.
#[test]
fn a_new_snat_marks_beside_older_sources_marks_them() {
    use proxy_common::snat_marks;
    let netns = routed_node();
    netns.enter(|| {
        let options = dual_stack_cluster();
        let mut fx = Fixture::with_options(&options);
        let mut clear = pinned_array::<u32>(&fx, map_names::CLUSTER_CLEAR);
        for index in [cluster_clear::V4, cluster_clear::V6] {
            clear.set(index, cluster_clear::CLEAR, 0).unwrap();
        }
        let marked = |fx: &Fixture| -> Vec<u32> {
            let marks = pinned_array::<u32>(fx, map_names::SNAT_MARKS);
            (0..snat_marks::SLOTS)
                .filter(|s| marks.get(s, 0).unwrap() != 0)
                .collect()
        };
        assert_eq!(marked(&fx), Vec::<u32>::new(), "fresh maps: nothing marked");
        let (_, vip4, backend4, _) = v4_hosts();
        let (_, vip6, backend6, _) = v6_hosts();
        let node4: IpAddr = Ipv4Addr::new(10, 244, 0, 1).into();
        let node6: IpAddr = v6("fd00:10:244::1").into();
        let (f, e) = service(vip4, 80, Protocol::Tcp, &[(backend4, 8080)]);
        fx.v4.upsert(&f, &e).unwrap();
        let (f, e) = service(vip6, 80, Protocol::Tcp, &[(backend6, 8080)]);
        fx.v6.upsert(&f, &e).unwrap();
        let flows = [
            (
                IpAddr::from(Ipv4Addr::new(192, 0, 2, 7)),
                IpAddr::from(vip4),
                IpAddr::from(backend4),
                node4,
            ),
            (
                v6("2001:db8::7").into(),
                vip6.into(),
                backend6.into(),
                node6,
            ),
        ];
        // Flows masqueraded by the programs before the upgrade.
        let ports: Vec<u16> = flows
            .iter()
            .map(|&(client, vip, backend, node)| {
                let request = first_packet(Protocol::Tcp, (client, 40000), (vip, 80));
                let (verdict, out) = fx.run(programs::FROM_POD, &request);
                assert_eq!(verdict, REDIRECT, "{client}: masqueraded");
                let seen = inspect(&out);
                assert_eq!((seen.source.0, seen.destination), (node, (backend, 8080)));
                seen.source.1
            })
            .collect();
        let expected: std::collections::BTreeSet<u32> = [
            snat_marks::slot(Ipv4Addr::new(10, 244, 0, 1).octets()),
            snat_marks::slot(v6("fd00:10:244::1").octets()),
        ]
        .into();
        assert_eq!(
            marked(&fx),
            Vec::from_iter(expected.clone()),
            "each source marked as it masquerades"
        );
        std::fs::remove_file(fx.pins.map(map_names::SNAT_MARKS)).expect("removing the pin");
        fx.reload(&options);
        assert_eq!(
            marked(&fx),
            Vec::from_iter(expected),
            "the older sources marked at the load"
        );
        for (&(client, vip, backend, node), port) in flows.iter().zip(ports) {
            let reply = first_packet(Protocol::Tcp, (backend, 8080), (node, port));
            let ((verdict, out), moved) = fx.counting(|fx| fx.run(programs::FROM_POD, &reply));
            assert_eq!(
                verdict, REDIRECT,
                "{client}: the reply goes out to the client"
            );
            assert_eq!(moved, counts(&[(Counter::ReverseSnat, 1)]));
            let back = inspect(&out);
            assert_eq!(
                (back.source, back.destination),
                ((vip, 80), (client, 40000))
            );
        }
    });
}

/// `--masquerade-all`: a client inside the cluster CIDR is masqueraded too.
#[test]
fn masquerade_all_masquerades_clients_inside_the_cluster_cidr() {
    let netns = routed_node();
    netns.enter(|| {
        let mut options = LoadOptions::default();
        options.config.cluster_v4 = [10, 244, 0, 0];
        options.config.cluster_v4_prefix = 16;
        options.config.flags |= proxy_common::config::flags::MASQUERADE_ALL;
        let mut fx = Fixture::with_options(&options);
        let (client, vip, backend, _) = v4_hosts();
        let (f, e) = service(vip, 80, Protocol::Tcp, &[(backend, 8080)]);
        fx.v4.upsert(&f, &e).unwrap();
        let node = Ipv4Addr::new(10, 244, 0, 1);
        masqueraded_round_trip(
            &mut fx,
            (client.into(), vip.into(), backend.into(), node.into()),
            Protocol::Tcp,
        );
    });
}

/// A port a cluster IP does not expose, as kube-proxy's nftables mode: the cluster IP's
/// unexposed-port frontends (port 0, no backend, as the agent programs them) make a new TCP
/// connection get a reset and a UDP datagram a port unreachable, from that port of the
/// cluster IP, in both families. A segment of no new connection, and any address that is not
/// a cluster IP, pass; the exposed port works as before.
#[test]
fn a_port_the_cluster_ip_does_not_expose_is_rejected() {
    let mut fx = Fixture::new();
    let (client4, vip4, backend4, _) = v4_hosts();
    let (client6, vip6, backend6, _) = v6_hosts();
    for protocol in Protocol::ALL {
        let (f, e) = service(vip4, 0, protocol, &[]);
        fx.v4.upsert(&f, &e).unwrap();
        let (f, e) = service(vip6, 0, protocol, &[]);
        fx.v6.upsert(&f, &e).unwrap();
    }
    let (f, e) = service(vip4, 80, Protocol::Tcp, &[(backend4, 8080)]);
    fx.v4.upsert(&f, &e).unwrap();
    let (f, e) = service(vip6, 80, Protocol::Tcp, &[(backend6, 8080)]);
    fx.v6.upsert(&f, &e).unwrap();
    let families: [(IpAddr, IpAddr, IpAddr); 2] = [
        (client4.into(), vip4.into(), backend4.into()),
        (client6.into(), vip6.into(), backend6.into()),
    ];
    for (client, vip, backend) in families {
        let from = (client, 40000);
        let syn = tcp(from, (vip, 81), true);
        let ((verdict, out), moved) = fx.counting(|fx| fx.run(programs::FROM_POD, &syn));
        assert_eq!(verdict, REDIRECT, "{vip}:81: a reset goes back");
        assert_eq!(moved, counts(&[(Counter::Reject, 1)]));
        assert!(matches!(rejection(&syn, &out), Rejection::Reset { .. }));
        for (packet, what) in [
            (udp(from, (vip, 53)), "53/UDP"),
            (sctp(from, (vip, 9000)), "9000/SCTP"),
        ] {
            let ((verdict, out), moved) = fx.counting(|fx| fx.run(programs::FROM_POD, &packet));
            assert_eq!(
                verdict, REDIRECT,
                "{vip}:{what}: a port unreachable goes back"
            );
            assert_eq!(moved, counts(&[(Counter::Reject, 1)]));
            assert!(matches!(
                rejection(&packet, &out),
                Rejection::PortUnreachable { .. }
            ));
        }
        for passing in [tcp(from, (vip, 81), false), tcp(from, (backend, 81), true)] {
            let (out, moved) = fx.counting(|fx| fx.ingress(&passing));
            assert_eq!((out, moved), (passing, counts(&[(Counter::Pass, 1)])));
        }
        let (out, moved) = fx.counting(|fx| fx.ingress(&tcp(from, (vip, 80), true)));
        assert_eq!(moved, counts(&[(Counter::DnatNew, 1)]));
        assert_eq!(inspect(&out).destination, (backend, 8080));
    }
}

/// The IPv4 header checksum of `header`, computed afresh.
fn ipv4_checksum(header: &[u8]) -> [u8; 2] {
    let mut sum: u32 = header
        .chunks(2)
        .enumerate()
        .filter(|(i, _)| *i != 5)
        .map(|(_, w)| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    (!(sum as u16)).to_be_bytes()
}

/// `packet` (Ethernet, an IP header without options or extension headers, then its L4 bytes)
/// as two fragments of datagram `id`: the first 32 L4 bytes (more to come), then the rest.
fn fragments_of(packet: &[u8], id: u32) -> (Vec<u8>, Vec<u8>) {
    let v4 = packet[12..14] == [0x08, 0x00];
    let header_len = if v4 { 20 } else { 40 };
    let (ip, l4) = packet[14..].split_at(header_len);
    let (head, tail) = l4.split_at(32);
    let piece = |data: &[u8], offset: usize, more: bool| {
        let mut out = packet[..14].to_vec();
        let mut header = ip.to_vec();
        if v4 {
            header[2..4].copy_from_slice(&((20 + data.len()) as u16).to_be_bytes());
            header[4..6].copy_from_slice(&(id as u16).to_be_bytes());
            let flags = (offset / 8) as u16 | if more { 0x2000 } else { 0 };
            header[6..8].copy_from_slice(&flags.to_be_bytes());
            let sum = ipv4_checksum(&header);
            header[10..12].copy_from_slice(&sum);
            out.extend_from_slice(&header);
        } else {
            let protocol = header[6];
            header[4..6].copy_from_slice(&((8 + data.len()) as u16).to_be_bytes());
            header[6] = 44;
            out.extend_from_slice(&header);
            let offset_flags = (offset as u16) | u16::from(more);
            out.extend_from_slice(&[protocol, 0]);
            out.extend_from_slice(&offset_flags.to_be_bytes());
            out.extend_from_slice(&id.to_be_bytes());
        }
        out.extend_from_slice(data);
        out
    };
    (piece(head, 0, true), piece(tail, 32, false))
}

/// The datagram two fragments (as [`fragments_of`] makes them) reassemble to.
fn reassembled(first: &[u8], rest: &[u8]) -> Vec<u8> {
    let v4 = first[12..14] == [0x08, 0x00];
    let (header_len, skip) = if v4 { (20, 20) } else { (40, 48) };
    let data = [&first[14 + skip..], &rest[14 + skip..]].concat();
    let mut header = first[14..14 + header_len].to_vec();
    if v4 {
        header[2..4].copy_from_slice(&((20 + data.len()) as u16).to_be_bytes());
        header[6..8].copy_from_slice(&[0, 0]);
        let sum = ipv4_checksum(&header);
        header[10..12].copy_from_slice(&sum);
    } else {
        header[4..6].copy_from_slice(&(data.len() as u16).to_be_bytes());
        header[6] = first[14 + 40];
    }
    [&first[..14], &header[..], &data[..]].concat()
}

/// Fragments of a translated datagram, one family: the first fragment is translated with its
/// flow, the later one (no ports) gets the same address, and the two reassemble to the
/// translated datagram with every checksum right; a backend's fragmented reply the same way
/// back. A later fragment of an unknown datagram passes untouched.
fn fragments_follow_their_first<A: Address + KernelFamily>(
    writer: fn(&mut Fixture) -> &mut Writer<A>,
    (client, vip, backend, _): (A, A, A, A),
) {
    let mut fx = Fixture::new();
    let (f, e) = service(vip, 53, Protocol::Udp, &[(backend, 5353)]);
    writer(&mut fx).upsert(&f, &e).unwrap();
    let (client, vip, backend): (IpAddr, IpAddr, IpAddr) =
        (client.into(), vip.into(), backend.into());

    let (first, rest) = fragments_of(&udp((client, 40000), (vip, 53)), 0x1234);
    let (first_out, moved) = fx.counting(|fx| fx.ingress(&first));
    assert_eq!(moved, counts(&[(Counter::DnatNew, 1)]), "{vip}");
    let (rest_out, moved) = fx.counting(|fx| fx.ingress(&rest));
    assert_eq!(
        moved,
        counts(&[(Counter::Fragment, 1)]),
        "{vip}: the later fragment"
    );
    assert_eq!(
        inspect(&reassembled(&first_out, &rest_out)),
        Seen {
            source: (client, 40000),
            destination: (backend, 5353),
            payload: PAYLOAD.to_vec()
        },
        "{vip}: the datagram reaches the backend whole"
    );
    if client.is_ipv4() {
        assert_eq!(
            rest_out[24..26],
            ipv4_checksum(&rest_out[14..34]),
            "IPv4 checksum"
        );
    }

    let (first, rest) = fragments_of(&udp((backend, 5353), (client, 40000)), 0x5678);
    let (first_out, moved) = fx.counting(|fx| fx.egress(&first));
    assert_eq!(moved, counts(&[(Counter::ReverseNat, 1)]));
    let (rest_out, moved) = fx.counting(|fx| fx.egress(&rest));
    assert_eq!(moved, counts(&[(Counter::Fragment, 1)]));
    assert_eq!(
        inspect(&reassembled(&first_out, &rest_out)),
        Seen {
            source: (vip, 53),
            destination: (client, 40000),
            payload: PAYLOAD.to_vec()
        },
        "{vip}: the reply reaches the client whole, from the frontend"
    );

    let (_, stranger) = fragments_of(&udp((client, 40000), (vip, 53)), 0x9999);
    let (out, moved) = fx.counting(|fx| fx.ingress(&stranger));
    assert_eq!((out, moved), (stranger, counts(&[(Counter::Pass, 1)])));
}

#[test]
fn fragments_follow_their_first_fragment_ipv4() {
    fragments_follow_their_first(|fx| &mut fx.v4, v4_hosts());
}

#[test]
fn fragments_follow_their_first_fragment_ipv6() {
    fragments_follow_their_first(|fx| &mut fx.v6, v6_hosts());
}

/// A NodePort from outside, at a device (`from_device`): with `externalTrafficPolicy:
/// Cluster` every client is masqueraded (a pod of another node too: its reply must come back
/// through this node), DNAT and SNAT in one pass and redirected; the backend's reply is
/// translated back and redirected to the client. Both families, TCP and UDP.
#[test]
fn a_node_port_from_outside_is_translated_and_masqueraded_at_the_device() {
    let netns = routed_node();
    netns.enter(|| {
        let options = dual_stack_cluster();
        let mut fx = Fixture::with_options(&options);
        let (client4, _, backend4, _) = v4_hosts();
        let (client6, _, backend6, _) = v6_hosts();
        let node4 = Ipv4Addr::new(10, 244, 0, 1);
        let node6 = v6("fd00:10:244::1");
        let (outside4, outside6) = (Ipv4Addr::new(192, 0, 2, 7), v6("2001:db8::7"));
        for protocol in Protocol::ALL {
            let (f, e) = node_port(node4, 30080, protocol, &[backend4], false);
            fx.v4.upsert(&f, &e).unwrap();
            let (f, e) = node_port(node6, 30080, protocol, &[backend6], false);
            fx.v6.upsert(&f, &e).unwrap();
            for (client, node, backend) in [
                (
                    IpAddr::from(outside4),
                    IpAddr::from(node4),
                    IpAddr::from(backend4),
                ),
                (outside6.into(), node6.into(), backend6.into()),
                // Inside the cluster CIDR, beyond the device: masqueraded all the same.
                (client4.into(), node4.into(), backend4.into()),
                (client6.into(), node6.into(), backend6.into()),
            ] {
                masqueraded_round_trip_at(
                    &mut fx,
                    programs::FROM_DEVICE,
                    (client, node, backend, node),
                    protocol,
                    30080,
                );
            }
        }
    });
}

/// `externalTrafficPolicy: Local` from outside: the NodePort's external entry (local backends
/// only) DNATs without SNAT, the client's address kept, and hands the packet on to the node's
/// routing; the local backend's reply is given its frontend back at the device's egress
/// (`to_device`). With no local endpoint the packet is dropped. Both families.
#[test]
fn a_local_policy_from_outside_keeps_the_client_address() {
    let mut fx = Fixture::new();
    let (_, _, backend4, _) = v4_hosts();
    let (_, _, backend6, _) = v6_hosts();
    let node4: IpAddr = Ipv4Addr::new(198, 51, 100, 1).into();
    let node6: IpAddr = v6("2001:db8::1").into();
    let outside4: IpAddr = Ipv4Addr::new(198, 51, 100, 2).into();
    let outside6: IpAddr = v6("2001:db8::2").into();
    let (f, e) = node_port(
        Ipv4Addr::new(198, 51, 100, 1),
        30080,
        Protocol::Tcp,
        &[backend4],
        true,
    );
    fx.v4.upsert(&f, &e).unwrap();
    let (f, e) = node_port(v6("2001:db8::1"), 30080, Protocol::Tcp, &[backend6], true);
    fx.v6.upsert(&f, &e).unwrap();
    for (client, node, backend) in [
        (outside4, node4, IpAddr::from(backend4)),
        (outside6, node6, backend6.into()),
    ] {
        let request = tcp((client, 40000), (node, 30080), true);
        let ((verdict, out), moved) = fx.counting(|fx| fx.run(programs::FROM_DEVICE, &request));
        assert_eq!(verdict, NEXT, "{client}: on to the node's routing");
        assert_eq!(moved, counts(&[(Counter::DnatNew, 1)]));
        let seen = inspect(&out);
        assert_eq!(
            (seen.source, seen.destination),
            ((client, 40000), (backend, 8080)),
            "the client's address is kept"
        );
        let reply = tcp((backend, 8080), (client, 40000), true);
        let ((verdict, out), moved) = fx.counting(|fx| fx.run(programs::TO_DEVICE, &reply));
        assert_eq!(verdict, NEXT);
        assert_eq!(moved, counts(&[(Counter::ReverseNat, 1)]));
        let back = inspect(&out);
        assert_eq!(
            (back.source, back.destination),
            ((node, 30080), (client, 40000)),
            "the reply leaves from the NodePort"
        );
        assert_eq!(back.payload, PAYLOAD);
    }
    // No local endpoint: dropped.
    let (f, e) = node_port(
        Ipv4Addr::new(198, 51, 100, 1),
        30080,
        Protocol::Tcp,
        &[],
        true,
    );
    fx.v4.upsert(&f, &e).unwrap();
    let request = tcp((outside4, 40001), (node4, 30080), true);
    let ((verdict, _), moved) = fx.counting(|fx| fx.run(programs::FROM_DEVICE, &request));
    assert_eq!(
        (verdict, moved),
        (DROP, counts(&[(Counter::DropNoLocalEndpoint, 1)]))
    );
}

/// `loadBalancerSourceRanges`: a load balancer IP serves clients inside a range and drops the
/// others (every packet, counted), at a device and at a pod interface alike; a frontend
/// without ranges serves everyone. Both families.
#[test]
fn a_load_balancer_ip_serves_only_its_source_ranges() {
    use proxy_userspace::maps::ranges::RangeKey;
    let netns = routed_node();
    netns.enter(|| {
        let options = dual_stack_cluster();
        let mut fx = Fixture::with_options(&options);
        let (_, _, backend4, _) = v4_hosts();
        let (_, _, backend6, _) = v6_hosts();
        let lb4 = Ipv4Addr::new(10, 96, 200, 1);
        let lb6 = v6("fd00:10:96::200");
        let (f4, mut e4) = service(lb4, 80, Protocol::Tcp, &[(backend4, 8080)]);
        e4.kind = FrontendKind::LoadBalancer;
        e4.source_ranges = vec![(Ipv4Addr::new(198, 51, 100, 0), 25)];
        let (f6, mut e6) = service(lb6, 80, Protocol::Tcp, &[(backend6, 8080)]);
        e6.kind = FrontendKind::LoadBalancer;
        e6.source_ranges = vec![(v6("2001:db8:1::"), 48)];
        for (client, prefix) in &e4.source_ranges {
            let key = RangeKey {
                frontend: lb4,
                port: 80,
                protocol: Protocol::Tcp,
                client: *client,
                prefix: *prefix,
            };
            fx.v4.source_ranges().put(&key, &()).unwrap();
        }
        for (client, prefix) in &e6.source_ranges {
            let key = RangeKey {
                frontend: lb6,
                port: 80,
                protocol: Protocol::Tcp,
                client: *client,
                prefix: *prefix,
            };
            fx.v6.source_ranges().put(&key, &()).unwrap();
        }
        fx.v4.upsert(&f4, &e4).unwrap();
        fx.v6.upsert(&f6, &e6).unwrap();
        let cases: [(IpAddr, IpAddr, bool); 4] = [
            (Ipv4Addr::new(198, 51, 100, 7).into(), lb4.into(), true),
            (Ipv4Addr::new(198, 51, 100, 200).into(), lb4.into(), false),
            (v6("2001:db8:1:2::7").into(), lb6.into(), true),
            (v6("2001:db8:2::7").into(), lb6.into(), false),
        ];
        for (p, program) in [programs::FROM_DEVICE, programs::FROM_POD]
            .into_iter()
            .enumerate()
        {
            for (i, (client, lb, admitted)) in cases.iter().enumerate() {
                let port = 40000 + (10 * p + i) as u16;
                let request = tcp((*client, port), (*lb, 80), true);
                let ((verdict, out), moved) = fx.counting(|fx| fx.run(program, &request));
                if *admitted {
                    // Outside the cluster CIDR: masqueraded, from a pod interface as from a device.
                    assert_eq!(verdict, REDIRECT, "{program}: {client} is in a range");
                    assert_eq!(moved, counts(&[(Counter::SnatNew, 1)]));
                    assert_eq!(
                        inspect(&out).destination.0,
                        if lb.is_ipv4() {
                            IpAddr::from(backend4)
                        } else {
                            IpAddr::from(backend6)
                        }
                    );
                } else {
                    assert_eq!(verdict, DROP, "{program}: {client} is outside every range");
                    assert_eq!(moved, counts(&[(Counter::DropSourceRange, 1)]));
                }
            }
        }
        // Without ranges, everyone.
        e4.source_ranges.clear();
        fx.v4.upsert(&f4, &e4).unwrap();
        let request = tcp(
            (Ipv4Addr::new(198, 51, 100, 200).into(), 41000),
            (lb4.into(), 80),
            true,
        );
        let ((verdict, _), moved) = fx.counting(|fx| fx.run(programs::FROM_POD, &request));
        assert_eq!(
            (verdict, moved),
            (REDIRECT, counts(&[(Counter::SnatNew, 1)]))
        );
    });
}

/// XDP (`xdp_device`) serves a NodePort from outside as TC's `from_device` does, in one pass
/// at the driver: the new flow is DNATed, masqueraded, given its next hop's MAC addresses and
/// redirected; its next packet follows the same flow; the backend's reply is translated back
/// and redirected to the client. The flow is TC's as well (one conntrack): `from_device`
/// continues it as established. A next hop the kernel has not resolved sends the packet on to
/// TC untouched, and a packet of no frontend passes; SCTP is left to TC. Both families, TCP and
/// UDP.
#[test]
fn xdp_serves_a_node_port_in_one_pass_and_shares_its_flows_with_tc() {
    let netns = routed_node_with_neighbours();
    let link: serde_json::Value =
        serde_json::from_str(&netns.ip(&["-j", "link", "show", "ts0"])).expect("ip -j");
    let mac_of_ts0: Vec<u8> = link[0]["address"]
        .as_str()
        .expect("ts0's MAC")
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).expect("hex"))
        .collect();
    netns.enter(move || {
        let options = dual_stack_cluster();
        let mut fx = Fixture::with_options(&options);
        // SAFETY: a NUL-terminated name.
        let ts0 = unsafe { libc::if_nametoindex(c"ts0".as_ptr()) };
        assert_ne!(ts0, 0, "ts0 exists");

        let (_, _, backend4, backend4_b) = v4_hosts();
        let (_, _, backend6, backend6_b) = v6_hosts();
        let node4 = Ipv4Addr::new(10, 244, 0, 1);
        let node6 = v6("fd00:10:244::1");
        // The outside clients, each with its family's node address and backend.
        let outside: [(IpAddr, IpAddr, IpAddr); 2] = [
            (
                IpAddr::from(Ipv4Addr::new(192, 0, 2, 7)),
                IpAddr::from(node4),
                IpAddr::from(backend4),
            ),
            (v6("2001:db8::7").into(), node6.into(), backend6.into()),
        ];
        let node_ports = |fx: &mut Fixture, port, protocol| {
            let (f, e) = node_port(node4, port, protocol, &[backend4], false);
            fx.v4.upsert(&f, &e).unwrap();
            let (f, e) = node_port(node6, port, protocol, &[backend6], false);
            fx.v6.upsert(&f, &e).unwrap();
        };
        for protocol in [Protocol::Tcp, Protocol::Udp] {
            let build = |s, d| first_packet(protocol, s, d);
            node_ports(&mut fx, 30080, protocol);
            for (client, node, backend) in outside {
                let request = build((client, 40000), (node, 30080));
                let ((verdict, out), moved) = fx.counting(|fx| fx.run_xdp(&request, ts0));
                assert_eq!(verdict, XDP_REDIRECT, "{client}: redirected at XDP");
                assert_eq!(moved, counts(&[(Counter::SnatNew, 1), (Counter::Xdp, 1)]));
                assert_eq!(out[..6], [2, 0, 0, 0, 0, 0x22], "the backend's MAC");
                assert_eq!(out[6..12], mac_of_ts0[..], "from the route's device");
                let seen = inspect(&out);
                assert_eq!(seen.destination, (backend, 8080));
                assert_eq!(seen.source.0, node, "masqueraded to the node");
                let port = seen.source.1;
                assert!(
                    (DEFAULT_SNAT_PORTS.0..=DEFAULT_SNAT_PORTS.1).contains(&port),
                    "{port}"
                );
                assert_eq!(seen.payload, PAYLOAD);

                // The same flow at XDP again, and at TC: one flow.
                let ((verdict, again), moved) = fx.counting(|fx| fx.run_xdp(&request, ts0));
                assert_eq!(verdict, XDP_REDIRECT);
                assert_eq!(
                    moved,
                    counts(&[(Counter::SnatEstablished, 1), (Counter::Xdp, 1)])
                );
                assert_eq!(inspect(&again), seen);
                let ((verdict, at_tc), moved) =
                    fx.counting(|fx| fx.run(programs::FROM_DEVICE, &request));
                assert_eq!(verdict, REDIRECT);
                assert_eq!(moved, counts(&[(Counter::SnatEstablished, 1)]));
                assert_eq!(inspect(&at_tc), seen, "TC continues XDP's flow");

                let reply = build((backend, 8080), (node, port));
                let ((verdict, out), moved) = fx.counting(|fx| fx.run_xdp(&reply, ts0));
                assert_eq!(verdict, XDP_REDIRECT, "the reply goes out to the client");
                assert_eq!(
                    moved,
                    counts(&[(Counter::ReverseSnat, 1), (Counter::Xdp, 1)])
                );
                assert_eq!(out[..6], [2, 0, 0, 0, 0, 0x77], "the client's MAC");
                let back = inspect(&out);
                assert_eq!(
                    (back.source, back.destination),
                    ((node, 30080), (client, 40000))
                );
                assert_eq!(back.payload, PAYLOAD);
            }
        }
        // An unresolved next hop (backend B has no neighbour entry): on to TC, untouched.
        let (f, e) = node_port(node4, 30081, Protocol::Tcp, &[backend4_b], false);
        fx.v4.upsert(&f, &e).unwrap();
        let (f, e) = node_port(node6, 30081, Protocol::Tcp, &[backend6_b], false);
        fx.v6.upsert(&f, &e).unwrap();
        for (client, node) in [
            (
                IpAddr::from(Ipv4Addr::new(192, 0, 2, 7)),
                IpAddr::from(node4),
            ),
            (v6("2001:db8::7").into(), node6.into()),
        ] {
            let request = tcp((client, 40100), (node, 30081), true);
            let ((verdict, out), moved) = fx.counting(|fx| fx.run_xdp(&request, ts0));
            assert_eq!(verdict, XDP_PASS);
            assert_eq!(moved, counts(&[(Counter::XdpToTc, 1)]));
            assert_eq!(out, request, "untouched");
            let ((verdict, _), moved) = fx.counting(|fx| fx.run(programs::FROM_DEVICE, &request));
            assert_eq!(verdict, REDIRECT, "TC serves it");
            assert_eq!(moved, counts(&[(Counter::SnatNew, 1)]));
        }
        // SCTP is TC's: passed untouched at XDP, then served at TC.
        node_ports(&mut fx, 30132, Protocol::Sctp);
        for (client, node, backend) in outside {
            let request = sctp((client, 40300), (node, 30132));
            let ((verdict, out), moved) = fx.counting(|fx| fx.run_xdp(&request, ts0));
            assert_eq!(
                (verdict, out, moved),
                (XDP_PASS, request.clone(), counts(&[(Counter::Pass, 1)])),
                "{client}: SCTP goes on to TC"
            );
            let ((verdict, out), moved) = fx.counting(|fx| fx.run(programs::FROM_DEVICE, &request));
            assert_eq!(verdict, REDIRECT, "TC serves it");
            assert_eq!(moved, counts(&[(Counter::SnatNew, 1)]));
            assert_eq!(inspect(&out).destination, (backend, 8080));
        }
        // Not service traffic: passed.
        let other = tcp(
            (Ipv4Addr::new(192, 0, 2, 7).into(), 40200),
            (node4.into(), 22),
            true,
        );
        let ((verdict, out), moved) = fx.counting(|fx| fx.run_xdp(&other, ts0));
        assert_eq!(
            (verdict, out, moved),
            (XDP_PASS, other, counts(&[(Counter::Pass, 1)]))
        );
    });
}

/// A client that reuses the port of a TC-translated connection that closed for a connection
/// straight to the same backend (the socket path: no translation): the backend's SYN-ACK meets
/// the old flow's reverse entry and must not be given the frontend as its source, or the
/// client's socket never sees it, nor the data after it (the old flow's reverse entry is
/// dropped). Passed untouched; a SYN-ACK of a flow still open is translated. Both families.
#[test]
fn a_syn_ack_on_a_closed_flows_tuple_is_not_reverse_translated() {
    let mut fx = Fixture::new();
    let (client4, vip4, backend4, _) = v4_hosts();
    let (client6, vip6, backend6, _) = v6_hosts();
    let (f, e) = service(vip4, 80, Protocol::Tcp, &[(backend4, 8080)]);
    fx.v4.upsert(&f, &e).unwrap();
    let (f, e) = service(vip6, 80, Protocol::Tcp, &[(backend6, 8080)]);
    fx.v6.upsert(&f, &e).unwrap();
    let families: [(IpAddr, IpAddr, IpAddr); 2] = [
        (client4.into(), vip4.into(), backend4.into()),
        (client6.into(), vip6.into(), backend6.into()),
    ];
    for (client, vip, backend) in families {
        let (_, moved) =
            fx.counting(|fx| fx.ingress(&tcp_with((client, 42000), (vip, 80), &["syn"])));
        assert_eq!(moved, counts(&[(Counter::DnatNew, 1)]));
        let syn_ack = tcp_with((backend, 8080), (client, 42000), &["syn", "ack"]);
        let (out, moved) = fx.counting(|fx| fx.egress(&syn_ack));
        assert_eq!(
            moved,
            counts(&[(Counter::ReverseNat, 1)]),
            "{vip}: open: translated"
        );
        assert_eq!(inspect(&out).source, (vip, 80));
        let fin = tcp_with((backend, 8080), (client, 42000), &["fin", "ack"]);
        let (_, moved) = fx.counting(|fx| fx.egress(&fin));
        assert_eq!(moved, counts(&[(Counter::ReverseNat, 1)]));
        let (out, moved) = fx.counting(|fx| fx.egress(&syn_ack));
        assert_eq!(
            (out, moved),
            (syn_ack.clone(), counts(&[(Counter::Pass, 1)])),
            "{vip}: another connection's SYN-ACK passes untouched"
        );
        // The new connection's data: the old flow's reverse entry is gone, nothing is translated.
        let data = tcp_with((backend, 8080), (client, 42000), &["ack"]);
        let (out, moved) = fx.counting(|fx| fx.egress(&data));
        assert_eq!(
            (out, moved),
            (data.clone(), counts(&[(Counter::Pass, 1)])),
            "{vip}: the new connection's reply passes untouched"
        );
    }
}

/// A client that opens a new connection from the port of its flow that just closed (its
/// kernel reused the port: the server closed first, the client keeps no TIME_WAIT) gets that
/// flow's masquerade port back at once: its first pick is its own port folded into the range,
/// and a closed flow of the same client gives it up without the second's wait. Another client
/// still waits. With a range of one port, both families.
#[test]
fn a_client_reusing_its_port_gets_its_masquerade_port_back_at_once() {
    let netns = routed_node();
    netns.enter(|| {
        let mut options = dual_stack_cluster();
        options.config.snat_port_min = 61000;
        options.config.snat_port_max = 61000;
        let mut fx = Fixture::with_options(&options);
        let (_, vip4, backend4, _) = v4_hosts();
        let (_, vip6, backend6, _) = v6_hosts();
        let (f, e) = service(vip4, 80, Protocol::Tcp, &[(backend4, 8080)]);
        fx.v4.upsert(&f, &e).unwrap();
        let (f, e) = service(vip6, 80, Protocol::Tcp, &[(backend6, 8080)]);
        fx.v6.upsert(&f, &e).unwrap();
        let hosts: [(IpAddr, IpAddr, IpAddr, IpAddr, IpAddr); 2] = [
            (
                Ipv4Addr::new(192, 0, 2, 7).into(),
                Ipv4Addr::new(192, 0, 2, 8).into(),
                vip4.into(),
                backend4.into(),
                Ipv4Addr::new(10, 244, 0, 1).into(),
            ),
            (
                v6("2001:db8::7").into(),
                v6("2001:db8::8").into(),
                vip6.into(),
                backend6.into(),
                v6("fd00:10:244::1").into(),
            ),
        ];
        for (client, other, vip, backend, node) in hosts {
            let syn = tcp_with((client, 41000), (vip, 80), &["syn"]);
            let ((verdict, out), moved) = fx.counting(|fx| fx.run(programs::FROM_POD, &syn));
            assert_eq!(
                (verdict, moved),
                (REDIRECT, counts(&[(Counter::SnatNew, 1)]))
            );
            assert_eq!(inspect(&out).source, (node, 61000));
            let fin = tcp_with((client, 41000), (vip, 80), &["fin", "ack"]);
            let (_, moved) = fx.counting(|fx| fx.run(programs::FROM_POD, &fin));
            assert_eq!(moved, counts(&[(Counter::SnatEstablished, 1)]));
            let fin = tcp_with((backend, 8080), (node, 61000), &["fin", "ack"]);
            let (_, moved) = fx.counting(|fx| fx.run(programs::FROM_POD, &fin));
            assert_eq!(moved, counts(&[(Counter::ReverseSnat, 1)]));

            let stranger = tcp_with((other, 41000), (vip, 80), &["syn"]);
            let ((verdict, _), moved) = fx.counting(|fx| fx.run(programs::FROM_POD, &stranger));
            assert_eq!(
                (verdict, moved),
                (DROP, counts(&[(Counter::SnatError, 1)])),
                "{other}: another client's flow closed just now: not yet"
            );
            let ((verdict, out), moved) = fx.counting(|fx| fx.run(programs::FROM_POD, &syn));
            assert_eq!(
                (verdict, moved),
                (REDIRECT, counts(&[(Counter::SnatNew, 1)])),
                "{client}: its own port, at once"
            );
            assert_eq!(inspect(&out).source, (node, 61000));
            // Give the port back for the other family's round.
            let rst = tcp_with((client, 41000), (vip, 80), &["rst", "ack"]);
            fx.run(programs::FROM_POD, &rst);
        }
    });
}

/// A masquerade port is taken over by a new flow a second after the flow holding it is over
/// (both sides sent a FIN, or either a reset), as a TCP TIME_WAIT tuple may be reused, not only
/// once its conntrack entries expire; a flow still open, or over just now, keeps its port. With a range of one port:
/// the second flow finds none while the first is open, then gets it. Both families.
#[test]
fn a_masquerade_port_is_reused_once_its_flow_is_over() {
    let netns = routed_node();
    netns.enter(|| {
        let mut options = dual_stack_cluster();
        options.config.snat_port_min = 61000;
        options.config.snat_port_max = 61000;
        let mut fx = Fixture::with_options(&options);
        // Two seconds pass for every flow (entries aged: the clock cannot be moved).
        let age = |fx: &mut Fixture, client: IpAddr| {
            let by = std::time::Duration::from_secs(2);
            if client.is_ipv4() {
                age_conntrack::<Ipv4Addr>(fx, by, None);
            } else {
                age_conntrack::<Ipv6Addr>(fx, by, None);
            }
        };
        let (_, vip4, backend4, _) = v4_hosts();
        let (_, vip6, backend6, _) = v6_hosts();
        let (f, e) = service(vip4, 80, Protocol::Tcp, &[(backend4, 8080)]);
        fx.v4.upsert(&f, &e).unwrap();
        let (f, e) = service(vip6, 80, Protocol::Tcp, &[(backend6, 8080)]);
        fx.v6.upsert(&f, &e).unwrap();
        let hosts: [(IpAddr, IpAddr, IpAddr, IpAddr); 2] = [
            (
                Ipv4Addr::new(192, 0, 2, 7).into(),
                vip4.into(),
                backend4.into(),
                Ipv4Addr::new(10, 244, 0, 1).into(),
            ),
            (
                v6("2001:db8::7").into(),
                vip6.into(),
                backend6.into(),
                v6("fd00:10:244::1").into(),
            ),
        ];
        for (client, vip, backend, node) in hosts {
            for close in [["fin", "fin"], ["rst", ""], ["", "rst"]] {
                let first = tcp_with((client, 41000), (vip, 80), &["syn"]);
                let (_, moved) = fx.counting(|fx| fx.run(programs::FROM_POD, &first));
                assert_eq!(moved, counts(&[(Counter::SnatNew, 1)]), "{client}");
                let second = tcp_with((client, 41001), (vip, 80), &["syn"]);
                let ((verdict, _), moved) = fx.counting(|fx| fx.run(programs::FROM_POD, &second));
                assert_eq!(
                    (verdict, moved),
                    (DROP, counts(&[(Counter::SnatError, 1)])),
                    "{client}: the only port is the open flow's"
                );
                // The client's close (FIN or RST), then the backend's.
                let (client_close, backend_close) = (close[0], close[1]);
                if !client_close.is_empty() {
                    let packet = tcp_with((client, 41000), (vip, 80), &[client_close, "ack"]);
                    let (_, moved) = fx.counting(|fx| fx.run(programs::FROM_POD, &packet));
                    assert_eq!(moved, counts(&[(Counter::SnatEstablished, 1)]));
                }
                if close == ["fin", "fin"] {
                    // Half closed: still open, the port still its.
                    let (_, moved) = fx.counting(|fx| fx.run(programs::FROM_POD, &second));
                    assert_eq!(moved, counts(&[(Counter::SnatError, 1)]), "half closed");
                }
                if !backend_close.is_empty() {
                    let packet = tcp_with((backend, 8080), (node, 61000), &[backend_close, "ack"]);
                    let (_, moved) = fx.counting(|fx| fx.run(programs::FROM_POD, &packet));
                    assert_eq!(moved, counts(&[(Counter::ReverseSnat, 1)]));
                }
                // Over, but just now: the backend's TIME_WAIT may not take a new SYN yet.
                let (_, moved) = fx.counting(|fx| fx.run(programs::FROM_POD, &second));
                assert_eq!(moved, counts(&[(Counter::SnatError, 1)]), "just closed");
                age(&mut fx, client);
                let ((verdict, out), moved) = fx.counting(|fx| fx.run(programs::FROM_POD, &second));
                assert_eq!(
                    (verdict, moved),
                    (REDIRECT, counts(&[(Counter::SnatNew, 1)])),
                    "{client}, closed by {close:?} a while ago: the port is free again"
                );
                assert_eq!(inspect(&out).source, (node, 61000));
                // The second flow gives its port back the same way, for the next round.
                let packet = tcp_with((client, 41001), (vip, 80), &["rst", "ack"]);
                fx.run(programs::FROM_POD, &packet);
                age(&mut fx, client);
            }
        }
    });
}

/// The agent's word that no frontend lies inside `--cluster-cidr` (`cluster_clear`, per
/// family) lets a pod's packet to a pod address pass without a service lookup. Without it, a
/// frontend inside the cluster CIDR (an external IP there, say) is served like any other; with
/// it, the same packet passes untouched, while a cluster IP is still served. Both families.
#[test]
fn the_cluster_clear_flag_passes_pod_addresses_without_a_lookup() {
    let mut fx = Fixture::with_options(&dual_stack_cluster());
    let mut clear = pinned_array::<u32>(&fx, map_names::CLUSTER_CLEAR);
    let (client4, vip4, backend4, _) = v4_hosts();
    let (client6, vip6, backend6, _) = v6_hosts();
    let inside4 = Ipv4Addr::new(10, 244, 200, 1);
    let inside6 = v6("fd00:10:244:c8::1");
    for address in [vip4, inside4] {
        let (f, e) = service(address, 80, Protocol::Tcp, &[(backend4, 8080)]);
        fx.v4.upsert(&f, &e).unwrap();
    }
    for address in [vip6, inside6] {
        let (f, e) = service(address, 80, Protocol::Tcp, &[(backend6, 8080)]);
        fx.v6.upsert(&f, &e).unwrap();
    }
    let families: [(u32, IpAddr, IpAddr, IpAddr); 2] = [
        (
            cluster_clear::V4,
            client4.into(),
            vip4.into(),
            inside4.into(),
        ),
        (
            cluster_clear::V6,
            client6.into(),
            vip6.into(),
            inside6.into(),
        ),
    ];
    for (index, client, vip, inside) in families {
        let syn = |port, to| tcp((client, port), (to, 80), true);
        let (_, moved) = fx.counting(|fx| fx.ingress(&syn(43000, inside)));
        assert_eq!(
            moved,
            counts(&[(Counter::DnatNew, 1)]),
            "{inside}: no word from the agent: served"
        );
        clear.set(index, cluster_clear::CLEAR, 0).unwrap();
        let request = syn(43001, inside);
        let (out, moved) = fx.counting(|fx| fx.ingress(&request));
        assert_eq!(
            (out, moved),
            (request, counts(&[(Counter::Pass, 1)])),
            "{inside}: the cluster CIDR said clear: a pod address, passed"
        );
        let (_, moved) = fx.counting(|fx| fx.ingress(&syn(43002, vip)));
        assert_eq!(
            moved,
            counts(&[(Counter::DnatNew, 1)]),
            "{vip}: a cluster IP is served still"
        );
        clear.set(index, 0, 0).unwrap();
    }
}

/// The array map `name`, opened from its pin.
fn pinned_array<V: aya::Pod>(fx: &Fixture, name: &str) -> aya::maps::Array<MapData, V> {
    let map = MapData::from_pin(fx.pins.map(name)).unwrap_or_else(|e| panic!("{name} pin: {e}"));
    aya::maps::Array::try_from(Map::from_map_data(map).expect("map")).expect("an array")
}

/// The hash map `name`, opened from its pin.
fn pinned_hash<K: aya::Pod, V: aya::Pod>(
    fx: &Fixture,
    name: &str,
) -> aya::maps::HashMap<MapData, K, V> {
    let map = MapData::from_pin(fx.pins.map(name)).unwrap_or_else(|e| panic!("{name} pin: {e}"));
    aya::maps::HashMap::try_from(Map::from_map_data(map).expect("map")).expect("a hash")
}

/// `ct_recent`, the time each client slot last had a translated flow move, opened from its pin.
fn recent_slots(fx: &Fixture) -> aya::maps::Array<MapData, u64> {
    pinned_array(fx, map_names::CT_RECENT)
}

/// The reverse path looks a reply's conntrack entry up only while its client's `ct_recent`
/// slot says a flow of it may live: made by the flow's first packet, refreshed by the client's
/// packets and by the replies. A slot never written, or older than the longest timeout (all 5 s
/// here, so the clock allows aging), passes the reply untranslated though an entry is there (a
/// state the datapath never makes itself: the slot moves whenever its flows do). Both families.
#[test]
fn a_reply_is_looked_up_only_while_its_clients_flows_may_live() {
    use proxy_common::conntrack::{Timeouts, recent};
    let mut options = LoadOptions::default();
    options.config.ct_timeouts = Timeouts {
        syn_sent: 5,
        established: 5,
        close_wait: 5,
        time_wait: 5,
        reset: 5,
        udp: 5,
        udp_stream: 5,
        other: 5,
    };
    let mut fx = Fixture::with_options(&options);
    let mut slots = recent_slots(&fx);
    let (client4, vip4, backend4, _) = v4_hosts();
    let (client6, vip6, backend6, _) = v6_hosts();
    program_v4(
        &mut fx,
        service(vip4, 80, Protocol::Tcp, &[(backend4, 8080)]),
    );
    program_v6(
        &mut fx,
        service(vip6, 80, Protocol::Tcp, &[(backend6, 8080)]),
    );
    let families: [(IpAddr, IpAddr, IpAddr, u32); 2] = [
        (
            client4.into(),
            vip4.into(),
            backend4.into(),
            recent::slot(client4.octets()),
        ),
        (
            client6.into(),
            vip6.into(),
            backend6.into(),
            recent::slot(client6.octets()),
        ),
    ];
    let now = proxy_userspace::conntrack::monotonic_ns;
    let second = 1_000_000_000u64;
    for (client, vip, backend, slot) in families {
        let from = (client, 44000);
        assert_eq!(slots.get(&slot, 0).unwrap(), 0, "{client}: no flow yet");
        let (_, moved) = fx.counting(|fx| fx.ingress(&tcp_with(from, (vip, 80), &["syn"])));
        assert_eq!(
            moved,
            counts(&[(Counter::DnatNew, 1)]),
            "{client}: a new flow"
        );
        assert!(
            slots.get(&slot, 0).unwrap() > 0,
            "{client}: the new flow marks its slot"
        );
        let reply = tcp_with((backend, 8080), from, &["ack"]);
        let reverse_nat = counts(&[(Counter::ReverseNat, 1)]);
        let passed = counts(&[(Counter::Pass, 1)]);
        assert_eq!(
            fx.counting(|fx| fx.egress(&reply)).1,
            reverse_nat,
            "{client}: replied"
        );

        slots.set(slot, 0, 0).unwrap();
        let (out, moved) = fx.counting(|fx| fx.egress(&reply));
        assert_eq!(
            (out, moved),
            (reply.clone(), passed.clone()),
            "{client}: slot never written"
        );
        slots.set(slot, now() - 8 * second, 0).unwrap();
        let (out, moved) = fx.counting(|fx| fx.egress(&reply));
        assert_eq!(
            (out, moved),
            (reply.clone(), passed),
            "{client}: slot past every timeout"
        );

        let ack = tcp_with(from, (vip, 80), &["ack"]);
        let (_, moved) = fx.counting(|fx| fx.ingress(&ack));
        assert_eq!(
            moved,
            counts(&[(Counter::DnatEstablished, 1)]),
            "{client}: still its flow"
        );
        let refreshed = slots.get(&slot, 0).unwrap();
        assert!(
            now() - refreshed < second,
            "{client}: the client's packet refreshes the slot"
        );
        assert_eq!(
            fx.counting(|fx| fx.egress(&reply)).1,
            reverse_nat,
            "{client}: found again"
        );

        let earlier = now() - 3 * second;
        slots.set(slot, earlier, 0).unwrap();
        assert_eq!(
            fx.counting(|fx| fx.egress(&reply)).1,
            reverse_nat,
            "{client}: within 5 s"
        );
        assert!(
            slots.get(&slot, 0).unwrap() > earlier,
            "{client}: the reply refreshes it"
        );
    }
}

/// A `ct_recent` map new beside conntrack maps an older agent's programs filled (an upgrade)
/// is marked moved in every slot before any program is attached, so no reply of those flows
/// is passed untranslated; beside new conntrack maps it starts empty.
#[test]
fn a_new_ct_recent_beside_older_conntrack_marks_every_slot() {
    use proxy_common::conntrack::recent;
    use proxy_userspace::loader::Programs;
    let fx = Fixture::new();
    let slots = recent_slots(&fx);
    let written = (0..recent::SLOTS)
        .filter(|s| slots.get(s, 0).unwrap() != 0)
        .count();
    assert_eq!(written, 0, "fresh maps: no slot written");
    std::fs::remove_file(fx.pins.map(map_names::CT_RECENT)).expect("removing the ct_recent pin");
    let before = proxy_userspace::conntrack::monotonic_ns();
    let upgraded = Programs::load(&fx.pins, &LoadOptions::default()).expect("second load");
    let after = proxy_userspace::conntrack::monotonic_ns();
    let slots = recent_slots(&fx);
    let seeded = (0..recent::SLOTS)
        .filter(|s| (before..=after).contains(&slots.get(s, 0).unwrap()))
        .count();
    assert_eq!(
        seeded,
        recent::SLOTS as usize,
        "every slot marked at the upgrade"
    );
    drop(upgraded);
}

/// A `sock_slots` map new beside socket reverse maps an older agent's programs filled (an
/// upgrade) counts their entries, each in its socket's slot, before any program is attached:
/// the close of each of those sockets still removes its entry. Beside new maps it starts empty.
#[test]
fn a_new_sock_slots_beside_older_socket_entries_counts_them() {
    use proxy_common::{SockRevKey, SockRevValue, sock_slots};
    use proxy_userspace::loader::Programs;
    let fx = Fixture::new();
    let open_slots = || pinned_array::<u64>(&fx, map_names::SOCK_SLOTS);
    let slots = open_slots();
    let counted = (0..sock_slots::SLOTS)
        .filter(|s| slots.get(s, 0).unwrap() != 0)
        .count();
    assert_eq!(counted, 0, "fresh maps: no slot counts an entry");
    drop(slots);
    let (cookie4, cookie6) = (0x1234_5678_9abc_u64, 0x1234_5678_9abd_u64);
    let mut rev4 =
        pinned_hash::<SockRevKey<[u8; 4]>, SockRevValue<[u8; 4]>>(&fx, map_names::SOCK_REV_V4);
    let value4 = SockRevValue {
        address: [10, 96, 0, 10],
        port: 80u16.to_be(),
        _pad: [0; 2],
        rev_nat_id: 1,
    };
    rev4.insert(
        SockRevKey::new(cookie4, [10, 244, 2, 2], 8080u16.to_be()),
        value4,
        0,
    )
    .unwrap();
    let mut rev6 =
        pinned_hash::<SockRevKey<[u8; 16]>, SockRevValue<[u8; 16]>>(&fx, map_names::SOCK_REV_V6);
    let value6 = SockRevValue {
        address: v6("fd00:10:96::10").octets(),
        port: 80u16.to_be(),
        _pad: [0; 2],
        rev_nat_id: 2,
    };
    let backend6 = v6("fd00:10:244:2::2").octets();
    rev6.insert(
        SockRevKey::new(cookie6, backend6, 8080u16.to_be()),
        value6,
        0,
    )
    .unwrap();
    std::fs::remove_file(fx.pins.map(map_names::SOCK_SLOTS)).expect("removing the pin");
    let upgraded = Programs::load(&fx.pins, &LoadOptions::default()).expect("second load");
    let slots = open_slots();
    for cookie in [cookie4, cookie6] {
        assert_eq!(
            slots.get(&sock_slots::slot(cookie), 0).unwrap(),
            1,
            "socket {cookie:#x}: its entry counted at the upgrade"
        );
    }
    let counted: u64 = (0..sock_slots::SLOTS)
        .map(|s| slots.get(&s, 0).unwrap())
        .sum();
    assert_eq!(counted, 2, "no other slot counts an entry");
    drop(upgraded);
}
