//! A client process for the socket-LB tests: it is started inside a pod's (or the node's)
//! network namespace and, when a test wants, inside the test cgroup, before it makes any
//! socket, so the socket hooks see its sockets (threads of the test process could not join a
//! cgroup alone). One JSON line per request on stdout.
//!
//! ```text
//! lab-client tcp ADDR COUNT [--mapped]          connect, request, reply, getpeername; close
//! lab-client udp ADDR COUNT [--mapped] [--one]  sendto/recvfrom (unconnected); --one: one socket
//! lab-client udp-connected ADDR COUNT [--mapped] connect, getpeername, send, recvfrom
//! lab-client hold ADDR SECONDS tcp|udp|udp-connected|udp-reconnect
//!                                               one echoed stream (or UDP socket), every 20 ms
//! lab-client upload ADDR BYTES                  one stream: BYTES sent, echoed back whole
//! ```
//! `--mapped`: an `AF_INET6` socket addressing the IPv4 `ADDR` as `::ffff:a.b.c.d`.
use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(2);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| args.iter().any(|a| a == name);
    let (mode, address, amount) = match &args[..] {
        [mode, address, amount, ..] => (mode.as_str(), address, amount),
        _ => usage(),
    };
    let mut target: SocketAddr = address.parse().unwrap_or_else(|_| usage());
    if flag("--mapped")
        && let IpAddr::V4(v4) = target.ip()
    {
        target = SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), target.port());
    }
    let amount: u64 = amount.parse().unwrap_or_else(|_| usage());
    match mode {
        "tcp" => (0..amount).for_each(|_| print(tcp(target))),
        "udp" if flag("--one") => {
            let socket = udp_socket(target).expect("UDP socket");
            (0..amount).for_each(|_| print(udp_unconnected(&socket, target)));
        }
        "udp" => (0..amount)
            .for_each(|_| print(udp_socket(target).and_then(|s| udp_unconnected(&s, target)))),
        "udp-connected" => (0..amount).for_each(|_| print(udp_connected(target))),
        "hold" => print(hold(target, Duration::from_secs(amount), args.get(3))),
        "upload" => print(upload(target, amount)),
        _ => usage(),
    }
}

fn usage() -> ! {
    eprintln!("usage: lab-client tcp|udp|udp-connected|hold|upload ADDR COUNT|SECONDS|BYTES [...]");
    std::process::exit(2)
}

fn print(result: std::io::Result<Value>) {
    let line = result.unwrap_or_else(|e| json!({"error": format!("{:?}", e.kind())}));
    // A test that gave up on us closed the pipe: nothing to report then.
    let _ = writeln!(std::io::stdout(), "{line}");
}

/// The servers answer `<backend> <client address as seen>`.
fn answer(text: &str) -> (String, String) {
    let mut parts = text.split_whitespace();
    let backend = parts.next().unwrap_or_default().to_owned();
    (backend, parts.next().unwrap_or_default().to_owned())
}

fn tcp(target: SocketAddr) -> std::io::Result<Value> {
    let mut stream = TcpStream::connect_timeout(&target, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    let peer = stream.peer_addr()?;
    stream.write_all(b"hello\n")?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let (backend, client_seen) = answer(&text);
    Ok(json!({"backend": backend, "client_seen": client_seen, "peer": peer.to_string()}))
}

fn udp_socket(target: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = UdpSocket::bind(if target.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    })?;
    socket.set_read_timeout(Some(TIMEOUT))?;
    Ok(socket)
}

fn udp_unconnected(socket: &UdpSocket, target: SocketAddr) -> std::io::Result<Value> {
    socket.send_to(b"hello\n", target)?;
    let mut buffer = [0u8; 512];
    let (n, from) = socket.recv_from(&mut buffer)?;
    let (backend, client_seen) = answer(&String::from_utf8_lossy(&buffer[..n]));
    Ok(json!({"backend": backend, "client_seen": client_seen, "reply_from": from.to_string()}))
}

fn udp_connected(target: SocketAddr) -> std::io::Result<Value> {
    let socket = udp_socket(target)?;
    socket.connect(target)?;
    let peer = socket.peer_addr()?;
    socket.send(b"hello\n")?;
    let mut buffer = [0u8; 512];
    let (n, from) = socket.recv_from(&mut buffer)?;
    let (backend, client_seen) = answer(&String::from_utf8_lossy(&buffer[..n]));
    Ok(json!({
        "backend": backend, "client_seen": client_seen,
        "peer": peer.to_string(), "reply_from": from.to_string(),
    }))
}

/// One long-lived TCP stream (echoed by the servers' `stream` mode: every exchange must come
/// back whole) or one unconnected UDP socket, exchanging every 20 ms for `duration`.
fn hold(target: SocketAddr, duration: Duration, kind: Option<&String>) -> std::io::Result<Value> {
    let deadline = Instant::now() + duration;
    let (mut exchanges, mut errors) = (0u64, 0u64);
    let mut backends = std::collections::BTreeSet::new();
    if kind.map(String::as_str) == Some("udp-reconnect") {
        // Connected UDP as a resolver uses it: when the socket fails, make a new one.
        let (mut kinds, mut order) = (Vec::new(), Vec::<String>::new());
        let mut socket = udp_socket(target)?;
        socket.connect(target)?;
        while Instant::now() < deadline {
            let mut buffer = [0u8; 512];
            let exchange = socket
                .send(b"hello\n")
                .and_then(|_| socket.recv_from(&mut buffer));
            match exchange {
                Ok((n, from)) if from == target => {
                    exchanges += 1;
                    let (backend, _) = answer(&String::from_utf8_lossy(&buffer[..n]));
                    if order.last() != Some(&backend) {
                        order.push(backend);
                    }
                }
                Ok(_) => kinds.push("WrongSource".to_owned()),
                Err(e) => {
                    kinds.push(format!("{:?}/{}", e.kind(), e.raw_os_error().unwrap_or(0)));
                    socket = udp_socket(target)?;
                    socket.connect(target)?;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        return Ok(json!({"exchanges": exchanges, "errors": kinds, "backends": order}));
    }
    if kind.map(String::as_str) == Some("udp-connected") {
        // Connected once: its reverse entry was written at connect() and must outlive restarts.
        let socket = udp_socket(target)?;
        socket.connect(target)?;
        while Instant::now() < deadline {
            let mut buffer = [0u8; 512];
            let exchange = socket
                .send(b"hello\n")
                .and_then(|_| socket.recv_from(&mut buffer));
            match exchange {
                Ok((n, from)) if from == target => {
                    exchanges += 1;
                    let (backend, _) = answer(&String::from_utf8_lossy(&buffer[..n]));
                    backends.insert(backend);
                }
                _ => errors += 1,
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        return Ok(json!({"exchanges": exchanges, "errors": errors, "backends": backends}));
    }
    if kind.map(String::as_str) == Some("udp") {
        let socket = udp_socket(target)?;
        while Instant::now() < deadline {
            match udp_unconnected(&socket, target) {
                Ok(answer) if answer["reply_from"] == target.to_string() => {
                    exchanges += 1;
                    backends.insert(answer["backend"].as_str().unwrap_or("").to_owned());
                }
                _ => errors += 1,
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        return Ok(json!({"exchanges": exchanges, "errors": errors, "backends": backends}));
    }
    let (mut stream, backend) = open_stream(target, TIMEOUT)?;
    let peer = stream.peer_addr()?;
    backends.insert(backend);
    let mut counter = 0u64;
    while Instant::now() < deadline {
        counter += 1;
        let sent = counter.to_be_bytes();
        let mut echoed = [0u8; 8];
        match stream
            .write_all(&sent)
            .and_then(|()| stream.read_exact(&mut echoed))
        {
            Ok(()) if echoed == sent => exchanges += 1,
            _ => {
                errors += 1;
                break; // A broken stream stays broken.
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(json!({
        "exchanges": exchanges, "errors": errors, "peer": peer.to_string(), "backends": backends,
    }))
}

/// A stream in the servers' `stream` mode (reads time out after `timeout`), and the backend
/// its first line names.
fn open_stream(target: SocketAddr, timeout: Duration) -> std::io::Result<(TcpStream, String)> {
    let mut stream = TcpStream::connect_timeout(&target, TIMEOUT)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(b"stream\n")?;
    let mut header = Vec::new();
    let mut byte = [0u8; 1];
    while !header.ends_with(b"\n") && stream.read(&mut byte)? == 1 {
        header.push(byte[0]);
    }
    let (backend, _) = answer(&String::from_utf8_lossy(&header));
    Ok((stream, backend))
}

/// The byte at `offset` of an upload: a pattern that shows a lost, repeated or reordered piece.
fn pattern(offset: u64) -> u8 {
    (offset % 251) as u8
}

/// One stream in the servers' `stream` mode: `bytes` of [`pattern`] written by a thread of
/// its own while this one reads the echo, which must come back whole and in order (bounded:
/// 20 s for all of it, 3 s for any one read).
fn upload(target: SocketAddr, bytes: u64) -> std::io::Result<Value> {
    let started = Instant::now();
    let (mut stream, backend) = open_stream(target, Duration::from_secs(3))?;
    let mut writer = stream.try_clone()?;
    let sender = std::thread::spawn(move || -> std::io::Result<()> {
        let mut chunk = vec![0u8; 16 * 1024];
        let mut offset = 0u64;
        while offset < bytes {
            let n = chunk.len().min((bytes - offset) as usize);
            for (i, b) in chunk[..n].iter_mut().enumerate() {
                *b = pattern(offset + i as u64);
            }
            writer.write_all(&chunk[..n])?;
            offset += n as u64;
        }
        Ok(())
    });
    let deadline = started + Duration::from_secs(20);
    let (mut echoed, mut intact) = (0u64, true);
    let mut buffer = vec![0u8; 64 * 1024];
    let mut failure = None;
    while echoed < bytes && Instant::now() < deadline {
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => {
                intact &= buffer[..n]
                    .iter()
                    .enumerate()
                    .all(|(i, b)| *b == pattern(echoed + i as u64));
                echoed += n as u64;
            }
            Err(e) => {
                failure = Some(format!("{:?}", e.kind()));
                break;
            }
        }
    }
    // Unblocks a sender stuck on a full window, so the thread ends.
    let _ = stream.shutdown(std::net::Shutdown::Both);
    let sent = sender.join().map(|r| r.is_ok()).unwrap_or(false);
    Ok(json!({
        "backend": backend, "sent": sent, "echoed": echoed, "intact": intact,
        "failure": failure, "ms": started.elapsed().as_millis() as u64,
    }))
}
