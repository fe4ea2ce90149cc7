//! `cargo xtask demo`: a node, a client pod and two backend pods in network namespaces, the
//! agent on `examples/`, TCP and UDP to both cluster IPs, then the maps as operators see them.
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::bail;
use twinstack_lab::{
    agent::{Agent, AgentOptions, AgentSource},
    servers::{self, Servers},
    topology::Topology,
};

use crate::{root, setup};

const REQUESTS: usize = 10;

pub(crate) fn run() -> anyhow::Result<()> {
    setup::run()?;
    let binary = crate::build(false)?;
    // SAFETY: set before any thread starts; read by the lab when it runs the agent.
    unsafe { std::env::set_var("TWINSTACK_BIN", &binary) };
    twinstack_lab::require_root();
    let started = Instant::now();

    println!(
        "\n== Topology: node, client (10.244.1.2, fd00:10:244:1::2), backend-a (10.244.2.2, fd00:10:244:2::2), backend-b (10.244.3.2, fd00:10:244:3::2)"
    );
    let topology = Topology::new(2);
    let _servers: Vec<Servers> = topology
        .backends
        .iter()
        .map(|pod| Servers::start(pod, 8080, 5353))
        .collect();
    let examples = root().join("examples");
    println!(
        "== Starting `twinstack run --manifests {}` in the node",
        examples.display()
    );
    let agent = Agent::start(
        &topology.node,
        AgentOptions {
            source: AgentSource::Manifests(&examples),
            cluster_cidr: "10.244.0.0/16,fd00:10:244::/56",
            extra: vec![],
        },
    );

    let mut failures = 0;
    for vip in ["10.96.0.10", "fd00:10:96::10"] {
        for (protocol, port) in [("TCP", 80u16), ("UDP", 5353u16)] {
            let target = SocketAddr::new(vip.parse()?, port);
            let udp = protocol == "UDP";
            let answers = topology.client.netns.enter(move || {
                (0..REQUESTS)
                    .map(|_| {
                        let answer = if udp {
                            servers::udp_request(target, Duration::from_secs(2))
                        } else {
                            servers::tcp_request(target, Duration::from_secs(2))
                        };
                        answer.map_err(|e| e.to_string())
                    })
                    .collect::<Vec<_>>()
            });
            let mut tally: BTreeMap<String, usize> = BTreeMap::new();
            for answer in &answers {
                match answer {
                    Ok(a) if a.reply_from == target => {
                        *tally.entry(a.backend.clone()).or_default() += 1
                    }
                    Ok(a) => {
                        failures += 1;
                        println!("   reply from {} instead of {target}", a.reply_from);
                    }
                    Err(e) => {
                        failures += 1;
                        println!("   request failed: {e}");
                    }
                }
            }
            let seen: Vec<String> = tally.iter().map(|(b, n)| format!("{b} ×{n}")).collect();
            println!(
                "{protocol:>4} {target:<24} {REQUESTS} requests answered by: {}",
                seen.join(", ")
            );
        }
    }
    // A process of the node's own namespace (a hostNetwork pod, kubelet), which has no route
    // to a cluster IP: bash's /dev/tcp, started inside the agent's cgroup, is connected straight
    // to a backend by the socket hooks.
    println!(
        "\n== From the node's own namespace, through the socket hooks (cgroup {})",
        agent.cgroup.path().display()
    );
    for vip in ["10.96.0.10", "fd00:10:96::10"] {
        let script = format!(
            "exec 3<>/dev/tcp/{vip}/80 && echo hello >&3 && read -r answer <&3 && echo $answer"
        );
        let mut command = Command::new("bash");
        command.args(["-c", &script]);
        agent.cgroup.command(&mut command);
        topology.node.command(&mut command);
        let output = command.output()?;
        let answer = String::from_utf8_lossy(&output.stdout);
        match answer.split_whitespace().next() {
            Some(backend) if output.status.success() => {
                println!(
                    " TCP {:<24} answered by: {backend}",
                    SocketAddr::new(vip.parse()?, 80)
                )
            }
            _ => {
                failures += 1;
                println!(
                    "   {vip}:80 from the node failed: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
            }
        }
    }
    println!("\n== twinstack bpf link list");
    print!("{}", agent.twinstack(&["bpf", "link", "list"]));
    println!("\n== twinstack bpf service list");
    print!("{}", agent.twinstack(&["bpf", "service", "list"]));
    println!("\n== twinstack bpf ct list (first lines)");
    for line in agent.twinstack(&["bpf", "ct", "list"]).lines().take(9) {
        println!("{line}");
    }
    drop(agent);
    drop(topology);
    println!(
        "\n== Cleaned up (namespaces, pins). Demo took {:.1?}.",
        started.elapsed()
    );
    if failures > 0 {
        bail!("{failures} requests failed");
    }
    Ok(())
}
