//! `twinstack bpf monitor` with the real agent: a reader started in the host namespace (where
//! the pins are) sees the events of traffic from the client pod: a new flow with the backend
//! it was given, and a packet to a Service without endpoints, in both families; `--service`
//! keeps only one frontend's events.
use std::{
    io::{BufRead, BufReader},
    net::{SocketAddr, TcpStream},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use serde_json::Value;
use twinstack_lab::{
    lab::{DUAL_STACK, ExampleLab},
    manifests,
    objects::ServiceBuilder,
    twinstack_binary,
};

const TIMEOUT: Duration = Duration::from_secs(2);

/// A monitor reading `lab`'s pins with `args`, once it says it listens.
fn monitor(lab: &ExampleLab, args: &[&str]) -> Child {
    let mut child = Command::new(twinstack_binary())
        .args(["bpf", "monitor", "-o", "json", "--duration", "20s"])
        .args(args)
        .arg("--bpf-root")
        .arg(&lab.agent.bpf_root)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting twinstack bpf monitor");
    let stderr = child.stderr.take().expect("stderr");
    let (sender, listening) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.starts_with("listening") {
                let _ = sender.send(());
            }
        }
    });
    listening
        .recv_timeout(Duration::from_secs(10))
        .expect("the monitor says it listens");
    child
}

/// The events a monitor printed before it stopped (bounded by its own --count/--duration).
fn events(child: Child) -> Vec<Value> {
    let output = child.wait_with_output().expect("the monitor ends");
    assert!(output.status.success(), "monitor failed: {output:?}");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON event"))
        .collect()
}

/// A TCP connection from the client pod to `target` that must be refused (the reject).
fn refused(lab: &ExampleLab, target: SocketAddr) {
    let error = lab
        .topology
        .client
        .netns
        .enter(move || TcpStream::connect_timeout(&target, TIMEOUT))
        .expect_err("no endpoint: refused");
    assert_eq!(
        error.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "{target}: {error}"
    );
}

fn find<'a>(events: &'a [Value], kind: &str, destination: &str) -> &'a Value {
    events
        .iter()
        .find(|e| e["kind"] == kind && e["destination"] == destination)
        .unwrap_or_else(|| panic!("no {kind} event to {destination}: {events:#?}"))
}

#[test]
fn the_monitor_sees_new_flows_and_packets_without_backend_in_both_families() {
    let lab = ExampleLab::start(DUAL_STACK, &[]);
    let empty = ServiceBuilder::new("empty")
        .cluster_ips(&[
            "10.96.0.30".parse().unwrap(),
            "fd00:10:96::30".parse().unwrap(),
        ])
        .port("http", "TCP", 80, 8080);
    manifests::write_atomically(lab.manifests.path(), "empty.yaml", &empty.yaml());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lab
        .agent
        .twinstack(&["bpf", "service", "list"])
        .contains("[fd00:10:96::30]:80/TCP")
    {
        assert!(
            Instant::now() < deadline,
            "the empty Service is never programmed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let all = monitor(&lab, &["--count", "4"]);
    lab.requests("10.96.0.10:80".parse().unwrap(), false, 1);
    lab.requests("[fd00:10:96::10]:80".parse().unwrap(), false, 1);
    refused(&lab, "10.96.0.30:80".parse().unwrap());
    refused(&lab, "[fd00:10:96::30]:80".parse().unwrap());
    let seen = events(all);
    assert_eq!(seen.len(), 4, "{seen:#?}");

    let backends = [
        ["10.244.2.2:8080", "10.244.3.2:8080"],
        ["[fd00:10:244:2::2]:8080", "[fd00:10:244:3::2]:8080"],
    ];
    for (family, frontend, client, backends) in [
        ("IPv4", "10.96.0.10:80", "10.244.1.2:", &backends[0]),
        (
            "IPv6",
            "[fd00:10:96::10]:80",
            "[fd00:10:244:1::2]:",
            &backends[1],
        ),
    ] {
        let flow = find(&seen, "new_flow", frontend);
        assert_eq!(flow["family"], family, "{flow}");
        assert_eq!(flow["protocol"], "TCP", "{flow}");
        assert_eq!(flow["outcome"], "dnat_new", "{flow}");
        assert_eq!(flow["hook"], "tc", "{flow}");
        assert!(
            flow["source"].as_str().unwrap().starts_with(client),
            "{flow}"
        );
        let backend = flow["backend"].as_str().expect("a backend");
        assert!(backends.contains(&backend), "{flow}");
        assert_ne!(flow["backend_id"], 0, "{flow}");
    }
    for (family, frontend) in [("IPv4", "10.96.0.30:80"), ("IPv6", "[fd00:10:96::30]:80")] {
        let rejected = find(&seen, "no_backend", frontend);
        assert_eq!(rejected["family"], family, "{rejected}");
        assert_eq!(rejected["outcome"], "reject", "{rejected}");
        assert!(rejected["backend"].is_null(), "{rejected}");
    }

    // One frontend's events only: the new flows and the IPv4 reject are left out.
    let one = monitor(&lab, &["--count", "1", "--service", "[fd00:10:96::30]:80"]);
    lab.requests("10.96.0.10:80".parse().unwrap(), false, 1);
    refused(&lab, "10.96.0.30:80".parse().unwrap());
    lab.requests("[fd00:10:96::10]:80".parse().unwrap(), false, 1);
    refused(&lab, "[fd00:10:96::30]:80".parse().unwrap());
    let seen = events(one);
    assert_eq!(seen.len(), 1, "{seen:#?}");
    assert_eq!(seen[0]["destination"], "[fd00:10:96::30]:80", "{seen:#?}");
}
