//! Socket-level load balancing with the real agent, in network namespaces, in a cgroup of the
//! test's own: clients are `lab-client` processes that join the agent's cgroup before they make
//! a socket (or stay out of it, to show the TC path), in a pod's or the node's namespace.
use std::{
    collections::BTreeSet,
    net::SocketAddr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use twinstack_lab::{
    lab::{DUAL_STACK, ExampleLab},
    netns::Netns,
    objects::ServiceBuilder,
};

const VIP4: &str = "10.96.0.10";
const VIP6: &str = "fd00:10:96::10";

type Lab = ExampleLab;

fn start(extra: &[&str]) -> Lab {
    ExampleLab::start(DUAL_STACK, extra)
}

fn counters(lab: &Lab, outcomes: &[&'static str]) -> Vec<(&'static str, u64)> {
    outcomes.iter().map(|o| (*o, lab.counter(o))).collect()
}

/// Where a client runs.
#[derive(Clone, Copy)]
enum In<'a> {
    /// In this namespace and in the agent's cgroup: the socket hooks see it.
    Cgroup(&'a Netns),
    /// In this namespace, outside every cgroup of ours: only the TC path can serve it.
    Outside(&'a Netns),
}

fn client(lab: &Lab, place: In<'_>, args: &[&str]) -> Vec<Value> {
    let mut command = Command::new(env!("CARGO_BIN_EXE_lab-client"));
    command
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match place {
        In::Cgroup(netns) => {
            lab.agent.cgroup.command(&mut command);
            netns.command(&mut command);
        }
        In::Outside(netns) => netns.command(&mut command),
    }
    let output = command.output().expect("running lab-client");
    assert!(
        output.status.success(),
        "lab-client {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect()
}

/// One `lab-client` run that must fail with ECONNREFUSED within 500 ms (refused, not timed
/// out).
fn refused_at_once(lab: &Lab, place: In<'_>, args: &[&str]) {
    let started = Instant::now();
    let answer = client(lab, place, args);
    assert_eq!(
        answer[0]["error"], "ConnectionRefused",
        "{args:?}: {answer:?}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{args:?} took {:?}: refused at once, not timed out",
        started.elapsed()
    );
}

fn target(vip: &str, port: u16) -> String {
    SocketAddr::new(vip.parse().expect("VIP"), port).to_string()
}

fn backends(answers: &[Value]) -> BTreeSet<String> {
    answers
        .iter()
        .map(|a| {
            a["backend"]
                .as_str()
                .unwrap_or_else(|| panic!("a failed request: {a}"))
                .to_owned()
        })
        .collect()
}

fn both() -> BTreeSet<String> {
    BTreeSet::from(["backend-a".to_owned(), "backend-b".to_owned()])
}

fn all_equal(answers: &[Value], field: &str, expected: &str) {
    for answer in answers {
        assert_eq!(answer[field], expected, "{field} of {answer}");
    }
}

/// The TC path's translation counters do not move while `f` runs; the socket ones do.
fn through_the_socket_hooks(lab: &Lab, f: impl FnOnce()) {
    let tc = ["dnat_new", "dnat_established", "reverse_nat"];
    let before = counters(lab, &tc);
    let sockets = lab.counter("sock_connect") + lab.counter("sock_sendmsg");
    f();
    assert_eq!(
        counters(lab, &tc),
        before,
        "the TC path translated packets the socket hooks had already sent to a backend"
    );
    assert!(
        lab.counter("sock_connect") + lab.counter("sock_sendmsg") > sockets,
        "the socket hooks translated nothing"
    );
}

#[test]
fn pods_in_the_cgroup_reach_both_families_through_the_socket_hooks() {
    let lab = start(&[]);
    let pod = &lab.topology.client;
    through_the_socket_hooks(&lab, || {
        for (vip, address) in [(VIP4, pod.v4.to_string()), (VIP6, pod.v6.to_string())] {
            let (http, echo) = (target(vip, 80), target(vip, 5353));
            let tcp = client(&lab, In::Cgroup(&pod.netns), &["tcp", &http, "30"]);
            assert_eq!(backends(&tcp), both(), "TCP to {http}");
            all_equal(&tcp, "peer", &http);
            all_equal(&tcp, "client_seen", &address);

            let udp = client(&lab, In::Cgroup(&pod.netns), &["udp", &echo, "30"]);
            assert_eq!(backends(&udp), both(), "unconnected UDP to {echo}");
            all_equal(&udp, "reply_from", &echo);
            all_equal(&udp, "client_seen", &address);

            let connected = client(
                &lab,
                In::Cgroup(&pod.netns),
                &["udp-connected", &echo, "30"],
            );
            assert_eq!(backends(&connected), both(), "connected UDP to {echo}");
            all_equal(&connected, "peer", &echo);
            all_equal(&connected, "reply_from", &echo);

            // One unconnected socket keeps its backend, datagram after datagram.
            let one = client(&lab, In::Cgroup(&pod.netns), &["udp", &echo, "20", "--one"]);
            assert_eq!(backends(&one).len(), 1, "one socket, one backend: {one:?}");
        }
    });
    // What the hooks did is visible: attached links and the reverse entries they keep.
    let links: Value =
        serde_json::from_str(&lab.agent.twinstack(&["bpf", "link", "list", "-o", "json"])).unwrap();
    let cgroup = lab.agent.cgroup.path().display().to_string();
    let hooked: BTreeSet<&str> = links
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["kind"] == "cgroup" && l["target"] == cgroup.as_str())
        .filter_map(|l| l["pin"].as_str())
        .collect();
    assert_eq!(hooked.len(), 9, "{links:#}");
    let sockets = lab.agent.twinstack(&["bpf", "sock", "list"]);
    assert!(
        sockets.contains("10.96.0.10:5353") && sockets.contains("[fd00:10:96::10]:5353"),
        "{sockets}"
    );
}

/// hostNetwork pods and node agents: processes of the node's own namespace, which has no route
/// for a cluster IP. In the cgroup they reach the Service; outside it, they cannot.
#[test]
fn the_nodes_own_processes_reach_the_service_through_the_socket_hooks() {
    let lab = start(&[]);
    let node = &lab.topology.node;
    through_the_socket_hooks(&lab, || {
        for vip in [VIP4, VIP6] {
            let (http, echo) = (target(vip, 80), target(vip, 5353));
            assert_eq!(
                backends(&client(&lab, In::Cgroup(node), &["tcp", &http, "20"])),
                both()
            );
            let udp = client(&lab, In::Cgroup(node), &["udp", &echo, "20"]);
            assert_eq!(backends(&udp), both());
            all_equal(&udp, "reply_from", &echo);
        }
    });
    // Each connect counted for its frontend and backend (`--stats`); the socket path sees no
    // packets, and no TC hook translated these.
    let rows: Value = serde_json::from_str(
        &lab.agent
            .twinstack(&["bpf", "service", "list", "--stats", "-o", "json"]),
    )
    .unwrap();
    for vip in [VIP4, VIP6] {
        let row = rows
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["address"] == vip && r["port"] == 80)
            .unwrap_or_else(|| panic!("{vip}:80 in {rows:#}"));
        assert_eq!(row["stats"]["connections"], 20, "{row:#}");
        assert_eq!(row["stats"]["packets_to"], 0, "{row:#}");
        let per_backend: u64 = row["backends"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["stats"]["connections"].as_u64().unwrap())
            .sum();
        assert_eq!(per_backend, 20, "{row:#}");
    }
    let outside = client(&lab, In::Outside(node), &["tcp", &target(VIP4, 80), "1"]);
    assert_eq!(
        outside[0]["error"], "NetworkUnreachable",
        "outside the cgroup the node has no way to the cluster IP: {outside:?}"
    );
}

#[test]
fn an_ipv6_socket_reaches_the_ipv4_cluster_ip_through_its_mapped_address() {
    let lab = start(&[]);
    let pod = &lab.topology.client.netns;
    let (http, echo) = (target(VIP4, 80), target(VIP4, 5353));
    let (mapped_http, mapped_echo) = ("[::ffff:10.96.0.10]:80", "[::ffff:10.96.0.10]:5353");
    through_the_socket_hooks(&lab, || {
        let tcp = client(&lab, In::Cgroup(pod), &["tcp", &http, "20", "--mapped"]);
        assert_eq!(backends(&tcp), both());
        all_equal(&tcp, "peer", mapped_http);
        let udp = client(&lab, In::Cgroup(pod), &["udp", &echo, "20", "--mapped"]);
        assert_eq!(backends(&udp), both());
        all_equal(&udp, "reply_from", mapped_echo);
        let connected = client(
            &lab,
            In::Cgroup(pod),
            &["udp-connected", &echo, "20", "--mapped"],
        );
        assert_eq!(backends(&connected), both());
        all_equal(&connected, "peer", mapped_echo);
        all_equal(&connected, "reply_from", mapped_echo);
    });
}

#[test]
fn a_service_with_no_endpoints_refuses_at_once_on_both_paths_in_both_families() {
    let lab = start(&[]);
    let empty = ServiceBuilder::new("empty")
        .cluster_ips(&[
            "10.96.0.30".parse().unwrap(),
            "fd00:10:96::30".parse().unwrap(),
        ])
        .port("http", "TCP", 80, 8080)
        .port("echo", "UDP", 5353, 5353);
    std::fs::write(lab.manifests.path().join("empty.yaml"), empty.yaml()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !lab
        .agent
        .twinstack(&["bpf", "service", "list"])
        .contains("10.96.0.30:80")
    {
        assert!(
            Instant::now() < deadline,
            "not programmed:\n{}",
            lab.agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let pod = &lab.topology.client.netns;
    let (refused, rejected) = (lab.counter("sock_refused"), lab.counter("reject"));
    for vip in ["10.96.0.30", "fd00:10:96::30"] {
        let (tcp, udp) = (target(vip, 80), target(vip, 5353));
        // The socket path refuses the call; the TC path answers the SYN with a reset and the
        // datagram with a port unreachable, which a connected UDP socket reports as refused
        // (an unconnected one is not told, as with kube-proxy's REJECT).
        for (place, args) in [
            (In::Cgroup(pod), ["tcp", &tcp, "1"]),
            (In::Cgroup(pod), ["udp", &udp, "1"]),
            (In::Cgroup(pod), ["udp-connected", &udp, "1"]),
            (In::Outside(pod), ["tcp", &tcp, "1"]),
            (In::Outside(pod), ["udp-connected", &udp, "1"]),
        ] {
            refused_at_once(&lab, place, &args);
        }
    }
    assert_eq!(lab.counter("sock_refused"), refused + 6);
    assert_eq!(lab.counter("reject"), rejected + 4, "the TC path's resets");
}

#[test]
fn a_client_outside_the_cgroup_is_served_by_the_tc_path() {
    let lab = start(&[]);
    let pod = &lab.topology.client.netns;
    let (new, sockets) = (lab.counter("dnat_new"), lab.counter("sock_connect"));
    for vip in [VIP4, VIP6] {
        let answers = client(&lab, In::Outside(pod), &["tcp", &target(vip, 80), "20"]);
        assert_eq!(backends(&answers), both());
        all_equal(&answers, "peer", &target(vip, 80));
    }
    assert_eq!(
        lab.counter("dnat_new"),
        new + 40,
        "every connection DNATed at TC"
    );
    assert_eq!(lab.counter("sock_connect"), sockets, "no socket hook ran");
}

#[test]
fn with_socket_lb_off_everything_goes_through_the_tc_path() {
    let lab = start(&["--socket-lb", "false"]);
    let pod = &lab.topology.client.netns;
    // Each datagram from a socket of its own, one packet through from_pod each: DNATed as a
    // new flow, or as an established one when the kernel gave a socket the port of an
    // earlier one whose flow still lives (20 random ports of ~28,000: seen 1 run in ~100).
    // First, while no TCP connection's last packets are on their way.
    let datagrams = || lab.counter("dnat_new") + lab.counter("dnat_established");
    let before = datagrams();
    for vip in [VIP4, VIP6] {
        let udp = client(&lab, In::Cgroup(pod), &["udp", &target(vip, 5353), "20"]);
        assert_eq!(backends(&udp), both());
    }
    assert_eq!(datagrams(), before + 40, "every datagram DNATed at TC");
    let new = lab.counter("dnat_new");
    for vip in [VIP4, VIP6] {
        let http = target(vip, 80);
        let answers = client(&lab, In::Cgroup(pod), &["tcp", &http, "20"]);
        assert_eq!(backends(&answers), both());
    }
    assert_eq!(
        lab.counter("dnat_new"),
        new + 40,
        "every TCP connection DNATed at TC"
    );
    assert_eq!(lab.counter("sock_connect") + lab.counter("sock_sendmsg"), 0);
    let links = lab.agent.twinstack(&["bpf", "link", "list"]);
    assert!(
        !links.contains("cgroup"),
        "socket programs attached:\n{links}"
    );
}

/// `--socket-lb-hostns-only`: the node's own processes go through the socket hooks, pods (in
/// the same cgroup) through TC.
#[test]
fn host_namespace_only_mode_serves_the_node_and_leaves_pods_to_tc() {
    let lab = start(&["--socket-lb-hostns-only"]);
    let (pod, node) = (&lab.topology.client.netns, &lab.topology.node);
    let (new, sockets) = (lab.counter("dnat_new"), lab.counter("sock_connect"));
    // 20 connections each: both backends, but for a chance of 2^-19 (10 failed 1 run in ~250).
    for vip in [VIP4, VIP6] {
        let answers = client(&lab, In::Cgroup(pod), &["tcp", &target(vip, 80), "20"]);
        assert_eq!(backends(&answers), both());
    }
    assert_eq!(lab.counter("dnat_new"), new + 40, "pods: DNAT at TC");
    assert_eq!(
        lab.counter("sock_connect"),
        sockets,
        "pods: no socket translation"
    );
    for vip in [VIP4, VIP6] {
        let answers = client(&lab, In::Cgroup(node), &["tcp", &target(vip, 80), "20"]);
        assert_eq!(backends(&answers), both());
    }
    assert_eq!(
        lab.counter("sock_connect"),
        sockets + 40,
        "the node: socket hooks"
    );
}

/// Closed sockets take their reverse entries with them (cgroup/sock_release): 100 short TCP
/// connections leave none behind.
#[test]
fn closed_sockets_leave_no_reverse_entry_behind() {
    let lab = start(&[]);
    let pod = &lab.topology.client.netns;
    for vip in [VIP4, VIP6] {
        let answers = client(&lab, In::Cgroup(pod), &["tcp", &target(vip, 80), "50"]);
        assert_eq!(answers.len(), 50);
    }
    let sockets: Value =
        serde_json::from_str(&lab.agent.twinstack(&["bpf", "sock", "list", "-o", "json"])).unwrap();
    assert_eq!(
        sockets,
        serde_json::json!([]),
        "entries of closed sockets remain"
    );
}

/// A TCP stream and UDP exchanges (unconnected, and connected: its reverse entry is written
/// once, at connect) open through the socket path while the agent restarts twice: no exchange
/// fails, every reply comes from the frontend, and each stays on its backend.
#[test]
fn an_agent_restart_keeps_socket_lb_streams_and_exchanges_working() {
    let mut lab = start(&[]);
    let spawn = |kind: &str, vip: &str, port: u16| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_lab-client"));
        command
            .args(["hold", &target(vip, port), "6", kind])
            .stdout(Stdio::piped());
        lab.agent.cgroup.command(&mut command);
        lab.topology.client.netns.command(&mut command);
        command.spawn().expect("lab-client")
    };
    let holders = [
        spawn("tcp", VIP4, 80),
        spawn("udp", VIP4, 5353),
        spawn("udp-connected", VIP4, 5353),
        spawn("tcp", VIP6, 80),
        spawn("udp", VIP6, 5353),
        spawn("udp-connected", VIP6, 5353),
    ];
    std::thread::sleep(Duration::from_millis(1500));
    let node = &lab.topology.node;
    lab.agent.restart(node);
    std::thread::sleep(Duration::from_millis(500));
    lab.agent.restart(node);
    for holder in holders {
        let output = holder.wait_with_output().expect("lab-client");
        let result: Value =
            serde_json::from_slice(&output.stdout).expect("the holder's JSON summary");
        assert_eq!(result["errors"], 0, "{result}");
        assert!(result["exchanges"].as_u64().unwrap() > 100, "{result}");
        assert_eq!(result["backends"].as_array().unwrap().len(), 1, "{result}");
    }
}

/// A backend leaves the Service: the connected UDP sockets the hooks sent to it are closed (the
/// application's next call fails, it reconnects and lands on the remaining backend), as UDP
/// flows move at once under kube-proxy; a TCP stream to it keeps draining, as under kube-proxy.
#[test]
fn connected_udp_moves_off_a_departed_backend_while_tcp_drains() {
    let lab = start(&[]);
    let spawn = |kind: &str, vip: &str, port: u16| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_lab-client"));
        command
            .args(["hold", &target(vip, port), "8", kind])
            .stdout(Stdio::piped());
        lab.agent.cgroup.command(&mut command);
        lab.topology.client.netns.command(&mut command);
        command.spawn().expect("lab-client")
    };
    let udp = [
        spawn("udp-reconnect", VIP4, 5353),
        spawn("udp-reconnect", VIP6, 5353),
    ];
    let tcp = [spawn("tcp", VIP4, 80), spawn("tcp", VIP6, 80)];
    std::thread::sleep(Duration::from_millis(800));
    // Remove the backend the IPv4 UDP socket is connected to (the socket list says which);
    // keep the other.
    let sockets: Value =
        serde_json::from_str(&lab.agent.twinstack(&["bpf", "sock", "list", "-o", "json"])).unwrap();
    let used = sockets
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["frontend"] == target(VIP4, 5353))
        .and_then(|s| s["backend"].as_str())
        .expect("the UDP socket's reverse entry")
        .to_owned();
    let backends = &lab.topology.backends;
    let (gone, kept) = if used.starts_with(&format!("{}:", backends[0].v4)) {
        (&backends[0], &backends[1])
    } else {
        (&backends[1], &backends[0])
    };
    let ports = [("http", "TCP", 80, 8080), ("echo", "UDP", 5353, 5353)];
    let slice = |name, address: std::net::IpAddr| {
        twinstack_lab::manifests::endpoint_slice("demo", name, &[address], &ports)
    };
    std::fs::write(
        lab.manifests.path().join("endpointslices.yaml"),
        [
            slice("demo-ipv4", kept.v4.into()),
            slice("demo-ipv6", kept.v6.into()),
        ]
        .join("---\n"),
    )
    .unwrap();
    // The agent sees the change, programs it and closes the sockets (bounded wait).
    let deadline = Instant::now() + Duration::from_secs(6);
    while !lab.agent.log().contains("closed connected UDP sockets") {
        assert!(
            Instant::now() < deadline,
            "no socket closed:\n{}",
            lab.agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut moved = 0;
    for holder in udp {
        let result: Value =
            serde_json::from_slice(&holder.wait_with_output().unwrap().stdout).unwrap();
        let order: Vec<&str> = result["backends"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let errors = result["errors"].as_array().unwrap();
        eprintln!("connected UDP holder: {result}");
        assert_eq!(
            order.last(),
            Some(&kept.name.as_str()),
            "{result}\n{}",
            lab.agent.log()
        );
        if order[0] == gone.name {
            moved += 1;
            assert_eq!(order, [gone.name.as_str(), kept.name.as_str()], "{result}");
            assert_eq!(
                errors.len(),
                1,
                "the socket on the departed backend was closed, once: {result}"
            );
        } else {
            assert!(
                errors.is_empty(),
                "a socket on a staying backend was closed: {result}"
            );
        }
    }
    assert!(moved >= 1, "the IPv4 socket was on the removed backend");
    for holder in tcp {
        let result: Value =
            serde_json::from_slice(&holder.wait_with_output().unwrap().stdout).unwrap();
        assert_eq!(
            result["errors"], 0,
            "the TCP stream keeps draining: {result}"
        );
    }
}

/// `sessionAffinity: ClientIP` with a 1 s timeout, both families, on the TC path (the test's
/// own threads, outside the cgroup: keyed by the pod's address) and the socket path (a client
/// in the cgroup: keyed by the pod's network namespace): 20 connections stay on one backend;
/// after the binding has been idle past the timeout, a connection is balanced afresh (each
/// round has one chance in two to move; 14 rounds bound it).
#[test]
fn session_affinity_holds_a_client_and_lets_go_after_the_timeout() {
    let lab = start(&[]);
    let sticky = ServiceBuilder::new("sticky")
        .cluster_ips(&[
            "10.96.0.40".parse().unwrap(),
            "fd00:10:96::40".parse().unwrap(),
        ])
        .port("http", "TCP", 80, 8080)
        .session_affinity(Some(1));
    let (a, b) = (&lab.topology.backends[0], &lab.topology.backends[1]);
    let ports = [("http", "TCP", 80, 8080)];
    let slices = [
        twinstack_lab::manifests::endpoint_slice(
            "sticky",
            "sticky-v4",
            &[a.v4.into(), b.v4.into()],
            &ports,
        ),
        twinstack_lab::manifests::endpoint_slice(
            "sticky",
            "sticky-v6",
            &[a.v6.into(), b.v6.into()],
            &ports,
        ),
    ];
    std::fs::write(
        lab.manifests.path().join("sticky.yaml"),
        [sticky.yaml(), slices[0].clone(), slices[1].clone()].join("---\n"),
    )
    .unwrap();
    lab.until(Duration::from_secs(5), |lab| {
        lab.agent
            .twinstack(&["bpf", "service", "list"])
            .contains("affinity=1s")
    });
    let pod = &lab.topology.client.netns;
    let through_tc = |vip: &str, count| -> BTreeSet<String> {
        lab.requests(target(vip, 80).parse().unwrap(), false, count)
            .into_iter()
            .map(|a| a.backend)
            .collect()
    };
    let through_socket = |vip: &str, count: usize| -> BTreeSet<String> {
        backends(&client(
            &lab,
            In::Cgroup(pod),
            &["tcp", &target(vip, 80), &count.to_string()],
        ))
    };
    let mut first = Vec::new();
    for vip in ["10.96.0.40", "fd00:10:96::40"] {
        for (path, connect) in [
            (
                "tc",
                &through_tc as &dyn Fn(&str, usize) -> BTreeSet<String>,
            ),
            ("socket", &through_socket),
        ] {
            let used = connect(vip, 20);
            assert_eq!(
                used.len(),
                1,
                "{path} {vip}: 20 connections, one backend: {used:?}"
            );
            first.push((path, vip, connect, used.into_iter().next().unwrap()));
        }
    }
    let mut moved = vec![false; first.len()];
    for _ in 0..14 {
        if moved.iter().all(|m| *m) {
            break;
        }
        std::thread::sleep(Duration::from_millis(1100));
        for (i, (_, vip, connect, backend)) in first.iter().enumerate() {
            if !moved[i] && connect(vip, 1).first() != Some(backend) {
                moved[i] = true;
            }
        }
    }
    for ((path, vip, _, _), moved) in first.iter().zip(moved) {
        assert!(
            moved,
            "{path} {vip}: never balanced afresh after the timeout"
        );
    }
}

/// `internalTrafficPolicy: Local`, both families: with one endpoint on this node and one on
/// another, every connection (TC path, socket path, the node's own) goes to the local one.
/// With none left here, a pod's connection is dropped (it times out, as under kube-proxy;
/// counted as `drop_no_local_endpoint`) on either path, and the node's own is refused at once
/// (it has no TC program that could drop it).
#[test]
fn an_internal_local_policy_keeps_to_this_node_and_drops_without_a_local_endpoint() {
    use twinstack_lab::objects::{EndpointBuilder, SliceBuilder};
    let lab = start(&[]);
    let vips = ["10.96.0.50", "fd00:10:96::50"];
    let service = ServiceBuilder::new("local")
        .cluster_ips(&vips.map(|v| v.parse().unwrap()))
        .port("http", "TCP", 80, 8080)
        .internal_traffic_policy("Local");
    let (a, b) = (&lab.topology.backends[0], &lab.topology.backends[1]);
    let write = |a_node: &str| {
        let slice = |name, family, a: std::net::IpAddr, b: std::net::IpAddr| {
            SliceBuilder::new("local", name)
                .address_type(family)
                .port("http", "TCP", 8080)
                .endpoint(EndpointBuilder::ready(a).node(a_node))
                .endpoint(EndpointBuilder::ready(b).node("node-b"))
                .yaml()
        };
        let objects = [
            service.yaml(),
            slice("local-v4", "IPv4", a.v4.into(), b.v4.into()),
            slice("local-v6", "IPv6", a.v6.into(), b.v6.into()),
        ];
        std::fs::write(
            lab.manifests.path().join("local.yaml"),
            objects.join("---\n"),
        )
        .unwrap();
    };
    let programmed = |lab: &Lab, backends: &str| {
        let list = lab.agent.twinstack(&["bpf", "service", "list"]);
        ["10.96.0.50:80", "[fd00:10:96::50]:80"].iter().all(|f| {
            list.lines()
                .any(|l| l.contains(f) && l.contains("Local") && l.contains(backends))
        })
    };
    write("node-a");
    lab.until(Duration::from_secs(5), |lab| {
        programmed(lab, "8080 (active)")
    });
    let (pod, node) = (&lab.topology.client.netns, &lab.topology.node);
    let local = BTreeSet::from(["backend-a".to_owned()]);
    for vip in vips {
        let tcp = target(vip, 80);
        let tc: BTreeSet<String> = lab
            .requests(tcp.parse().unwrap(), false, 20)
            .into_iter()
            .map(|a| a.backend)
            .collect();
        assert_eq!(tc, local, "{vip}: the TC path");
        for (who, place) in [("pod", In::Cgroup(pod)), ("node", In::Cgroup(node))] {
            let used = backends(&client(&lab, place, &["tcp", &tcp, "20"]));
            assert_eq!(used, local, "{vip}: the socket path, {who}");
        }
    }

    write("node-b");
    lab.until(Duration::from_secs(5), |lab| programmed(lab, "(none)"));
    let dropped = lab.counter("drop_no_local_endpoint");
    for (vip, place) in [
        (vips[0], In::Cgroup(pod)),
        (vips[1], In::Cgroup(pod)),
        (vips[0], In::Outside(pod)),
    ] {
        let answer = client(&lab, place, &["tcp", &target(vip, 80), "1"]);
        assert_eq!(answer[0]["error"], "TimedOut", "{vip}: {answer:?}");
    }
    assert!(
        lab.counter("drop_no_local_endpoint") >= dropped + 3,
        "every SYN dropped and counted"
    );
    for vip in vips {
        refused_at_once(&lab, In::Cgroup(node), &["tcp", &target(vip, 80), "1"]);
    }
}

/// Path MTU through a Service. The node's routes to the backends' subnets get a smaller MTU
/// (1400 for IPv4, 1280 for IPv6) than the pods' links, so a full-sized segment to a backend
/// cannot be forwarded: the node answers with fragmentation needed / Packet Too Big, quoting
/// the DNATed segment. On the TC path the datapath translates the error back to the frontend
/// the client's socket talks to, which then sends smaller segments: a 1 MiB upload comes back
/// whole, in both families. On the socket path the client talks to the backend itself and
/// the error needs no translation; it must work there too.
#[test]
fn a_smaller_mtu_on_the_way_to_the_backend_reaches_the_client_and_large_transfers_complete() {
    let lab = start(&[]);
    let node = &lab.topology.node;
    for backend in &lab.topology.backends {
        let [_, _, subnet, _] = backend.v4.octets();
        let host = backend.host_interface.as_str();
        let v4 = format!("10.244.{subnet}.0/24");
        let v6 = format!("fd00:10:244:{subnet:x}::/64");
        node.ip(&["route", "replace", &v4, "dev", host, "mtu", "1400"]);
        node.ip(&["-6", "route", "replace", &v6, "dev", host, "mtu", "1280"]);
    }
    let pod = &lab.topology.client.netns;
    const BYTES: u64 = 1 << 20;
    let translated = lab.counter("icmp_error");
    for (path, place) in [("TC", In::Outside(pod)), ("socket", In::Cgroup(pod))] {
        for vip in [VIP4, VIP6] {
            let answer = client(
                &lab,
                place,
                &["upload", &target(vip, 80), &BYTES.to_string()],
            );
            let answer = &answer[0];
            assert_eq!(answer["echoed"], BYTES, "{path} path, {vip}: {answer}");
            assert_eq!(answer["intact"], true, "{path} path, {vip}: {answer}");
        }
        if path == "TC" {
            assert!(
                lab.counter("icmp_error") >= translated + 2,
                "a translated error in each family"
            );
        }
    }
}

/// A port the cluster IP does not expose (the demo Service has TCP 80 and UDP 5353 only) is
/// refused at once, as kube-proxy's nftables mode rejects it: the socket path fails the call,
/// the TC path answers with a reset or a port unreachable, in both families.
#[test]
fn a_port_the_cluster_ip_does_not_expose_is_refused_at_once_on_both_paths() {
    let lab = start(&[]);
    let pod = &lab.topology.client.netns;
    let (refused, rejected) = (lab.counter("sock_refused"), lab.counter("reject"));
    for vip in [VIP4, VIP6] {
        let (tcp, udp) = (target(vip, 81), target(vip, 53));
        for (place, args) in [
            (In::Cgroup(pod), ["tcp", &tcp, "1"]),
            (In::Cgroup(pod), ["udp-connected", &udp, "1"]),
            (In::Outside(pod), ["tcp", &tcp, "1"]),
            (In::Outside(pod), ["udp-connected", &udp, "1"]),
        ] {
            refused_at_once(&lab, place, &args);
        }
        // The exposed port still works.
        let answers = client(&lab, In::Outside(pod), &["tcp", &target(vip, 80), "4"]);
        assert!(!backends(&answers).is_empty());
    }
    assert_eq!(lab.counter("sock_refused"), refused + 4);
    assert_eq!(lab.counter("reject"), rejected + 4, "the TC path's answers");
}
