//! Backend servers: in a pod's namespace, a TCP and a UDP server (dual-stack sockets) that
//! answer every request with the pod's name. Stopped and joined on drop.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::topology::Pod;

pub struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

const POLL: Duration = Duration::from_millis(5);

impl Servers {
    /// Starts a TCP server on `tcp_port` and a UDP server on `udp_port` in `pod`.
    pub fn start(pod: &Pod, tcp_port: u16, udp_port: u16) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let mut threads = Vec::new();
        {
            let (stop, name, ready) = (stop.clone(), pod.name.clone(), ready_tx.clone());
            threads.push(pod.netns.spawn(move || {
                let listener = TcpListener::bind(("::", tcp_port)).expect("bind TCP");
                listener.set_nonblocking(true).expect("nonblocking");
                ready.send(()).expect("ready");
                // A thread per connection: a long-lived stream must not hold up the others.
                let mut connections = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let (stop, name) = (stop.clone(), name.clone());
                            connections
                                .push(std::thread::spawn(move || serve_tcp(stream, &name, &stop)));
                            connections.retain(|c: &JoinHandle<()>| !c.is_finished());
                        }
                        Err(_) => std::thread::sleep(POLL),
                    }
                }
                for connection in connections {
                    let _ = connection.join();
                }
            }));
        }
        {
            let (stop, name, ready) = (stop.clone(), pod.name.clone(), ready_tx);
            threads.push(pod.netns.spawn(move || {
                let socket = UdpSocket::bind(("::", udp_port)).expect("bind UDP");
                socket
                    .set_read_timeout(Some(Duration::from_millis(20)))
                    .expect("timeout");
                ready.send(()).expect("ready");
                let mut buffer = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, peer)) = socket.recv_from(&mut buffer) {
                        // As long as the request: a large one gets a large (fragmented) reply.
                        let mut answer = reply(&name, peer).into_bytes();
                        if n > answer.len() {
                            answer.resize(n, b' ');
                        }
                        let _ = socket.send_to(&answer, peer);
                    }
                }
            }));
        }
        for _ in 0..2 {
            ready_rx
                .recv_timeout(Duration::from_secs(5))
                .expect("servers did not start");
        }
        Self { stop, threads }
    }
}

/// The reply names the backend and the client address it saw.
fn reply(name: &str, peer: SocketAddr) -> String {
    format!("{name} {}\n", peer.ip().to_canonical())
}

/// One connection: a request line, answered with [`reply`]; or `stream`, answered the same
/// way and then echoed byte for byte until the client closes (or the servers stop).
fn serve_tcp(mut stream: TcpStream, name: &str, stop: &AtomicBool) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let peer = match stream.peer_addr() {
        Ok(p) => p,
        Err(_) => return,
    };
    let mut buffer = [0u8; 1024];
    let deadline = Instant::now() + Duration::from_secs(2);
    // One request, one reply: read until a newline or the peer stops sending.
    let mut got = Vec::new();
    while Instant::now() < deadline && !got.contains(&b'\n') {
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buffer[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => continue,
            Err(_) => break,
        }
    }
    let _ = stream.write_all(reply(name, peer).as_bytes());
    if !got.starts_with(b"stream\n") {
        return;
    }
    // Bounded like every loop of the lab: a stream lives at most a minute.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        match stream.read(&mut buffer) {
            Ok(0) => return,
            Ok(n) => {
                if stream.write_all(&buffer[..n]).is_err() {
                    return;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// What a client saw for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The backend that answered.
    pub backend: String,
    /// The client address as the backend saw it.
    pub client_seen: String,
    /// Where the reply came from, as the client saw it.
    pub reply_from: SocketAddr,
}

fn parse_answer(text: &str, reply_from: SocketAddr) -> Option<Answer> {
    let mut parts = text.split_whitespace();
    Some(Answer {
        backend: parts.next()?.to_owned(),
        client_seen: parts.next()?.to_owned(),
        reply_from,
    })
}

/// One TCP request from the current thread's namespace (connect, request, reply, close).
pub fn tcp_request(target: SocketAddr, timeout: Duration) -> std::io::Result<Answer> {
    let mut stream = TcpStream::connect_timeout(&target, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(b"hello\n")?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    parse_answer(&text, stream.peer_addr()?)
        .ok_or_else(|| std::io::Error::other(format!("unexpected reply {text:?}")))
}

/// One UDP request from the current thread's namespace; the reply's source is recorded.
pub fn udp_request(target: SocketAddr, timeout: Duration) -> std::io::Result<Answer> {
    udp_request_of(target, timeout, 0).map(|(answer, _)| answer)
}

/// One UDP request of at least `size` bytes (padded); the answer and the reply's size (the
/// servers answer as long as they were asked).
pub fn udp_request_of(
    target: SocketAddr,
    timeout: Duration,
    size: usize,
) -> std::io::Result<(Answer, usize)> {
    let bind: SocketAddr = if target.is_ipv4() {
        "0.0.0.0:0".parse().expect("addr")
    } else {
        "[::]:0".parse().expect("addr")
    };
    let socket = UdpSocket::bind(bind)?;
    socket.set_read_timeout(Some(timeout))?;
    let mut request = b"hello\n".to_vec();
    request.resize(size.max(request.len()), b' ');
    socket.send_to(&request, target)?;
    let mut buffer = vec![0u8; 65536];
    let (n, from) = socket.recv_from(&mut buffer)?;
    let answer = parse_answer(&String::from_utf8_lossy(&buffer[..n]), from)
        .ok_or_else(|| std::io::Error::other("unexpected UDP reply"))?;
    Ok((answer, n))
}

impl Servers {
    /// A UDP server on `port` in `pod` that echoes every datagram back with the pod's name
    /// appended (`<request> <name>`), so a client can match each reply to its request (a
    /// sequence number) and tell a lost exchange from a late one.
    pub fn start_udp_echo(pod: &Pod, port: u16) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_flag, name) = (stop.clone(), pod.name.clone());
        let thread = pod.netns.spawn(move || {
            let socket = UdpSocket::bind(("::", port)).expect("bind UDP echo");
            socket
                .set_read_timeout(Some(Duration::from_millis(20)))
                .expect("timeout");
            ready_tx.send(()).expect("ready");
            let mut buffer = vec![0u8; 2048];
            while !stop_flag.load(Ordering::Relaxed) {
                if let Ok((n, peer)) = socket.recv_from(&mut buffer) {
                    let mut answer = buffer[..n].to_vec();
                    answer.push(b' ');
                    answer.extend_from_slice(name.as_bytes());
                    let _ = socket.send_to(&answer, peer);
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("UDP echo server did not start");
        Self {
            stop,
            threads: vec![thread],
        }
    }
}
