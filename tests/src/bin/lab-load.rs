//! The restart tests' load ([`twinstack_lab::load`]) in a process of its own, so a test can
//! start it inside its cgroup (the socket hooks see its sockets) and a pod's namespace. It runs
//! until its stdin closes or SECONDS pass, then prints its report as one JSON line.
//!
//! ```text
//! lab-load SECONDS THREADS TCP_ADDR,UDP_ADDR [TCP_ADDR,UDP_ADDR…]   one pair per family
//! ```
use std::{
    io::Read,
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use twinstack_lab::load::{self, LoadConfig, LoadTarget};

fn usage() -> ! {
    eprintln!("usage: lab-load SECONDS THREADS TCP_ADDR,UDP_ADDR [TCP_ADDR,UDP_ADDR...]");
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [seconds, threads, pairs @ ..] = &args[..] else {
        usage()
    };
    let targets = pairs
        .iter()
        .map(|pair| {
            let (tcp, udp) = pair.split_once(',').unwrap_or_else(|| usage());
            LoadTarget {
                tcp: tcp.parse().unwrap_or_else(|_| usage()),
                udp: udp.parse().unwrap_or_else(|_| usage()),
            }
        })
        .collect();
    let config = LoadConfig {
        targets,
        connection_threads: threads.parse().unwrap_or_else(|_| usage()),
        limit: Duration::from_secs(seconds.parse().unwrap_or_else(|_| usage())),
        max_connections: 1_000_000,
    };
    let stop = Arc::new(AtomicBool::new(false));
    {
        // The test closes our stdin to stop us.
        let stop = stop.clone();
        std::thread::spawn(move || {
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        });
    }
    let report = load::run(&config, &stop);
    println!(
        "{}",
        serde_json::to_string(&report).expect("a report renders as JSON")
    );
}
