//! Steady traffic through a Service while something restarts (the agent, the API server): per
//! family, new TCP connections as fast as a few threads make them, one long-lived echoed
//! stream, and one UDP socket in lock-step exchanges carrying sequence numbers. Every failure is
//! kept with its wall-clock time, so a test can say which restart it fell in. It runs in threads
//! of the calling thread's network namespace; `lab-load` runs it in a process of its own (to
//! place it in a test cgroup, for the socket path).
use std::{
    collections::BTreeSet,
    io::{Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant, SystemTime},
};

use serde::{Deserialize, Serialize};

/// Every connect, read and write, and every UDP exchange, gives up after this long.
pub const TIMEOUT: Duration = Duration::from_secs(2);
/// Failures kept per kind of traffic and family (all of them are counted).
const KEPT_FAILURES: usize = 20;
const STREAM_PAUSE: Duration = Duration::from_millis(5);
const UDP_PAUSE: Duration = Duration::from_millis(2);

/// One family's frontends: TCP on the servers' request/reply and `stream` protocol
/// ([`crate::servers::Servers::start`]), UDP on an echo server
/// ([`crate::servers::Servers::start_udp_echo`]).
#[derive(Clone, Copy, Debug)]
pub struct LoadTarget {
    pub tcp: SocketAddr,
    pub udp: SocketAddr,
}

#[derive(Clone, Debug)]
pub struct LoadConfig {
    pub targets: Vec<LoadTarget>,
    /// Threads making new connections, per family.
    pub connection_threads: usize,
    /// The load stops by itself after this long (the servers end a stream after a minute).
    pub limit: Duration,
    /// And after this many connections per thread.
    pub max_connections: u64,
}

/// Something that went wrong, and when (milliseconds since the Unix epoch).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Failure {
    pub at_ms: u64,
    pub what: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FamilyReport {
    pub tcp: String,
    pub udp: String,
    /// New connections that got their whole reply from the frontend.
    pub connections: u64,
    pub connection_failures: u64,
    /// The backends the connections reached.
    pub backends: BTreeSet<String>,
    pub stream_backend: String,
    /// Request/response rounds on the long-lived stream, each its sequence number echoed.
    pub stream_exchanges: u64,
    /// No error and no gap on the stream, from open to close.
    pub stream_intact: bool,
    pub udp_exchanges: u64,
    /// Requests whose reply did not come within [`TIMEOUT`].
    pub udp_lost: u64,
    /// Replies to an earlier request that came after it was given up.
    pub udp_late: u64,
    pub failures: Vec<Failure>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LoadReport {
    pub started_ms: u64,
    pub elapsed_ms: u64,
    pub families: Vec<FamilyReport>,
}

impl FamilyReport {
    /// Successful new connections per second over the whole run.
    pub fn connection_rate(&self, elapsed_ms: u64) -> f64 {
        self.connections as f64 * 1000.0 / elapsed_ms.max(1) as f64
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

fn failure(what: String) -> Failure {
    Failure {
        at_ms: now_ms(),
        what,
    }
}

/// Runs the load until `stop` is set, or its limits are reached, and reports it.
pub fn run(config: &LoadConfig, stop: &AtomicBool) -> LoadReport {
    let started_ms = now_ms();
    let started = Instant::now();
    let deadline = started + config.limit;
    let families = std::thread::scope(|scope| {
        let families: Vec<_> = config
            .targets
            .iter()
            .map(|target| {
                let connections: Vec<_> = (0..config.connection_threads)
                    .map(|_| {
                        scope.spawn(move || {
                            connections(target.tcp, stop, deadline, config.max_connections)
                        })
                    })
                    .collect();
                let stream = scope.spawn(move || stream(target.tcp, stop, deadline));
                let udp = scope.spawn(move || udp(target.udp, stop, deadline));
                (target, connections, stream, udp)
            })
            .collect();
        families
            .into_iter()
            .map(|(target, connections, stream, udp)| {
                let mut report = FamilyReport {
                    tcp: target.tcp.to_string(),
                    udp: target.udp.to_string(),
                    ..FamilyReport::default()
                };
                for thread in connections {
                    let part = thread.join().expect("connection thread");
                    report.connections += part.connections;
                    report.connection_failures += part.connection_failures;
                    report.backends.extend(part.backends);
                    report.failures.extend(part.failures);
                }
                let part = stream.join().expect("stream thread");
                report.stream_backend = part.stream_backend;
                report.stream_exchanges = part.stream_exchanges;
                report.stream_intact = part.stream_intact;
                report.failures.extend(part.failures);
                let part = udp.join().expect("UDP thread");
                report.udp_exchanges = part.udp_exchanges;
                report.udp_lost = part.udp_lost;
                report.udp_late = part.udp_late;
                report.failures.extend(part.failures);
                report.failures.sort_by_key(|f| f.at_ms);
                report
            })
            .collect()
    });
    LoadReport {
        started_ms,
        elapsed_ms: started.elapsed().as_millis() as u64,
        families,
    }
}

fn running(stop: &AtomicBool, deadline: Instant) -> bool {
    !stop.load(Ordering::Relaxed) && Instant::now() < deadline
}

/// An error as the report shows it: a read timeout says so (Linux reports `EAGAIN`).
fn describe(error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            format!("timed out ({TIMEOUT:?})")
        }
        _ => error.to_string(),
    }
}

fn keep(failures: &mut Vec<Failure>, what: String) {
    if failures.len() < KEPT_FAILURES {
        failures.push(failure(what));
    }
}

fn connections(target: SocketAddr, stop: &AtomicBool, deadline: Instant, max: u64) -> FamilyReport {
    let mut report = FamilyReport::default();
    let mut attempts = 0;
    while running(stop, deadline) && attempts < max {
        attempts += 1;
        match connection(target) {
            Ok(backend) => {
                report.connections += 1;
                report.backends.insert(backend);
            }
            Err(what) => {
                report.connection_failures += 1;
                keep(
                    &mut report.failures,
                    format!("connection to {target}: {what}"),
                );
            }
        }
    }
    report
}

/// Connect, request, the whole reply (`<backend> <client>\n`, then the server closes), close.
fn connection(target: SocketAddr) -> Result<String, String> {
    let mut stream = TcpStream::connect_timeout(&target, TIMEOUT)
        .map_err(|e| format!("connect: {}", describe(&e)))?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(TIMEOUT)))
        .map_err(|e| format!("timeouts: {e}"))?;
    let peer = stream.peer_addr().map_err(|e| format!("peer: {e}"))?;
    if peer != target {
        return Err(format!("peer shown as {peer}"));
    }
    stream
        .write_all(b"hello\n")
        .map_err(|e| format!("write: {}", describe(&e)))?;
    let mut text = String::new();
    stream
        .read_to_string(&mut text)
        .map_err(|e| format!("read: {} (after {text:?})", describe(&e)))?;
    let mut words = text.split_whitespace();
    match (words.next(), words.next(), text.ends_with('\n')) {
        (Some(backend), Some(_), true) => Ok(backend.to_owned()),
        _ => Err(format!("short reply {text:?}")),
    }
}

/// One stream in the servers' `stream` mode: 8-byte sequence numbers, each echoed back before
/// the next is sent. The first error or gap ends it.
fn stream(target: SocketAddr, stop: &AtomicBool, deadline: Instant) -> FamilyReport {
    let mut report = FamilyReport::default();
    let opened = (|| -> std::io::Result<(TcpStream, String)> {
        let mut stream = TcpStream::connect_timeout(&target, TIMEOUT)?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        stream.set_write_timeout(Some(TIMEOUT))?;
        stream.write_all(b"stream\n")?;
        let (mut header, mut byte) = (Vec::new(), [0u8; 1]);
        while !header.ends_with(b"\n") && stream.read(&mut byte)? == 1 {
            header.push(byte[0]);
        }
        let text = String::from_utf8_lossy(&header);
        Ok((stream, text.split_whitespace().next().unwrap_or("").into()))
    })();
    let mut stream = match opened {
        Ok((stream, backend)) if !backend.is_empty() => {
            report.stream_backend = backend;
            stream
        }
        Ok(_) => {
            keep(
                &mut report.failures,
                format!("stream to {target}: no header"),
            );
            return report;
        }
        Err(e) => {
            keep(
                &mut report.failures,
                format!("stream to {target}: open: {}", describe(&e)),
            );
            return report;
        }
    };
    report.stream_intact = true;
    let mut sequence = 0u64;
    while running(stop, deadline) {
        sequence += 1;
        let sent = sequence.to_be_bytes();
        let mut echoed = [0u8; 8];
        let exchanged = stream
            .write_all(&sent)
            .and_then(|()| stream.read_exact(&mut echoed));
        let what = match exchanged {
            Ok(()) if echoed == sent => {
                report.stream_exchanges += 1;
                std::thread::sleep(STREAM_PAUSE);
                continue;
            }
            Ok(()) => format!("gap: sent {sequence}, got {}", u64::from_be_bytes(echoed)),
            Err(e) => format!("exchange {sequence}: {}", describe(&e)),
        };
        report.stream_intact = false;
        keep(&mut report.failures, format!("stream to {target}: {what}"));
        break; // A broken stream stays broken.
    }
    report
}

/// One unconnected UDP socket (a fixed 5-tuple): `seq N` sent, its echo awaited (bounded), the
/// next sent. A reply must come from the frontend; one for an earlier request is late.
fn udp(target: SocketAddr, stop: &AtomicBool, deadline: Instant) -> FamilyReport {
    let mut report = FamilyReport::default();
    let bind = if target.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let socket = match UdpSocket::bind(bind) {
        Ok(socket) => socket,
        Err(e) => {
            keep(&mut report.failures, format!("UDP to {target}: bind: {e}"));
            return report;
        }
    };
    let mut buffer = [0u8; 512];
    let mut sequence = 0u64;
    while running(stop, deadline) {
        sequence += 1;
        if let Err(e) = socket.send_to(format!("seq {sequence}").as_bytes(), target) {
            report.udp_lost += 1;
            keep(
                &mut report.failures,
                format!("UDP to {target}: send {sequence}: {e}"),
            );
            continue;
        }
        let given_up = Instant::now() + TIMEOUT;
        let answered = loop {
            let left = given_up.saturating_duration_since(Instant::now());
            if left.is_zero() || socket.set_read_timeout(Some(left)).is_err() {
                break Err("no reply".to_owned());
            }
            match socket.recv_from(&mut buffer) {
                Ok((n, from)) => {
                    let text = String::from_utf8_lossy(&buffer[..n]);
                    let number = text
                        .strip_prefix("seq ")
                        .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok());
                    match number {
                        _ if from != target => break Err(format!("reply from {from}")),
                        Some(n) if n == sequence => break Ok(()),
                        Some(n) if n < sequence => report.udp_late += 1,
                        _ => break Err(format!("unexpected reply {text:?}")),
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break Err("no reply".to_owned());
                }
                Err(e) => break Err(format!("receive: {e}")),
            }
        };
        match answered {
            Ok(()) => report.udp_exchanges += 1,
            Err(what) => {
                report.udp_lost += 1;
                keep(
                    &mut report.failures,
                    format!("UDP to {target}: {sequence}: {what}"),
                );
            }
        }
        std::thread::sleep(UDP_PAUSE);
    }
    report
}
