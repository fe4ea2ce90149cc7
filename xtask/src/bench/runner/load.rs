//! The load generator: a multi-threaded TCP server for the backend pods and a client for the
//! client pod, both plain blocking sockets, both bounded by count and time.
//!
//! Protocol: the client sends 64 bytes, the server answers 64. A request starting with `C`
//! asks the server to close right after its reply (new-connection test: the server closes
//! first, so TIME_WAIT lands on the server and the client's ports are free at once); `K` keeps
//! the connection for more requests (request/response test).
use std::{
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use twinstack_lab::topology::Pod;

use crate::stats::percentile_sorted;

pub(crate) const MESSAGE: usize = 64;
const IO_TIMEOUT: Duration = Duration::from_secs(2);
const POLL_MS: i32 = 50;

/// The client's threads run on the first CPU, the servers' on the last: on a small machine
/// this keeps the scheduler from moving them about, which otherwise swings the rates by tens
/// of percent from one round to the next. Packet processing runs on the sender's CPU.
pub(crate) fn pin_to_cpu(server: bool) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpu = if server { cpus - 1 } else { 0 };
    // SAFETY: a zeroed cpu_set_t with one bit set, for the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

pub(crate) struct Server {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Server {
    /// Listens on `[::]:port` (both families) in `pod` with `workers` accepting threads.
    pub(crate) fn start(pod: &Pod, port: u16, workers: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let listener = pod
            .netns
            .enter(move || TcpListener::bind(("::", port)))
            .expect("bind the bench server");
        listener.set_nonblocking(true).expect("nonblocking");
        let listener = Arc::new(listener);
        let threads = (0..workers)
            .map(|_| {
                let (stop, listener, connections) =
                    (stop.clone(), listener.clone(), connections.clone());
                // Accepted sockets belong to the listener's namespace whatever thread accepts.
                std::thread::spawn(move || {
                    pin_to_cpu(true);
                    accept_loop(&listener, &stop, &connections)
                })
            })
            .collect();
        Self {
            stop,
            threads,
            connections,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        let connections = std::mem::take(&mut *self.connections.lock().expect("lock"));
        for thread in connections {
            let _ = thread.join();
        }
    }
}

fn wait_readable(fd: i32) -> bool {
    let mut poll = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut poll, 1, POLL_MS) > 0 }
}

fn accept_loop(
    listener: &TcpListener,
    stop: &Arc<AtomicBool>,
    connections: &Mutex<Vec<JoinHandle<()>>>,
) {
    while !stop.load(Ordering::Relaxed) {
        if !wait_readable(listener.as_raw_fd()) {
            continue;
        }
        loop {
            let stream = match listener.accept() {
                Ok((stream, _)) => stream,
                Err(_) => break,
            };
            let _ = stream.set_nonblocking(false);
            let _ = stream.set_nodelay(true);
            let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
            let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
            let mut stream = stream;
            let mut request = [0u8; MESSAGE];
            if stream.read_exact(&mut request).is_err() {
                continue;
            }
            if request[0] == b'K' {
                let stop = stop.clone();
                let handle = std::thread::spawn(move || {
                    pin_to_cpu(true);
                    serve_persistent(stream, request, &stop)
                });
                let mut list = connections.lock().expect("lock");
                list.retain(|h| !h.is_finished());
                list.push(handle);
            } else {
                // Reply, then close first.
                let _ = stream.write_all(&[b'R'; MESSAGE]);
            }
        }
    }
}

fn serve_persistent(mut stream: TcpStream, first: [u8; MESSAGE], stop: &AtomicBool) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut request = first;
    loop {
        if request[0] != b'K' || stream.write_all(&[b'R'; MESSAGE]).is_err() {
            return;
        }
        loop {
            match stream.read_exact(&mut request) {
                Ok(()) => break,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    }
}

/// What one load run achieved.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Outcome {
    /// Completed transactions per second.
    pub rate: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub completed: u64,
    pub errors: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Test {
    /// connect, 64-byte request, 64-byte reply, close.
    NewConnections,
    /// 64-byte request / 64-byte reply on connections opened beforehand.
    RequestResponse,
}

impl Test {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Test::NewConnections => "new connections/s",
            Test::RequestResponse => "requests/s (persistent)",
        }
    }
}

/// Runs `test` against `targets` (round robin) from `threads` threads, for `duration` or
/// `max_count` transactions, whichever comes first. Call it inside the client namespace.
pub(crate) fn run(
    test: Test,
    targets: &[SocketAddr],
    threads: usize,
    duration: Duration,
    max_count: u64,
) -> Outcome {
    let count = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let handles: Vec<JoinHandle<Vec<u32>>> = (0..threads)
        .map(|i| {
            let (count, errors) = (count.clone(), errors.clone());
            let targets = targets.to_vec();
            std::thread::spawn(move || {
                pin_to_cpu(false);
                match test {
                    Test::NewConnections => {
                        new_connections(i, &targets, deadline, max_count, &count, &errors)
                    }
                    Test::RequestResponse => {
                        request_response(i, &targets, deadline, max_count, &count, &errors)
                    }
                }
            })
        })
        .collect();
    let mut latencies: Vec<u32> = Vec::new();
    for handle in handles {
        latencies.extend(handle.join().unwrap_or_default());
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut sorted: Vec<f64> = latencies.iter().map(|&ns| f64::from(ns) / 1e3).collect();
    sorted.sort_by(f64::total_cmp);
    Outcome {
        rate: latencies.len() as f64 / elapsed,
        p50_us: percentile_sorted(&sorted, 50.0),
        p99_us: percentile_sorted(&sorted, 99.0),
        completed: latencies.len() as u64,
        errors: errors.load(Ordering::Relaxed),
    }
}

fn nanos(since: Instant) -> u32 {
    since.elapsed().as_nanos().min(u128::from(u32::MAX)) as u32
}

fn new_connections(
    thread: usize,
    targets: &[SocketAddr],
    deadline: Instant,
    max_count: u64,
    count: &AtomicU64,
    errors: &AtomicU64,
) -> Vec<u32> {
    let mut latencies = Vec::new();
    let mut i = thread;
    while Instant::now() < deadline && count.fetch_add(1, Ordering::Relaxed) < max_count {
        let target = targets[i % targets.len()];
        i += 1;
        let started = Instant::now();
        match transaction(target) {
            Ok(()) => latencies.push(nanos(started)),
            Err(_) => {
                errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    latencies
}

fn connect(target: SocketAddr) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&target, IO_TIMEOUT)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(stream)
}

fn transaction(target: SocketAddr) -> std::io::Result<()> {
    let mut stream = connect(target)?;
    stream.write_all(&[b'C'; MESSAGE])?;
    let mut reply = [0u8; MESSAGE];
    stream.read_exact(&mut reply)?;
    // Wait for the server's FIN: it closes first.
    let mut rest = [0u8; 16];
    match stream.read(&mut rest)? {
        0 => Ok(()),
        _ => Err(ErrorKind::InvalidData.into()),
    }
}

fn request_response(
    thread: usize,
    targets: &[SocketAddr],
    deadline: Instant,
    max_count: u64,
    count: &AtomicU64,
    errors: &AtomicU64,
) -> Vec<u32> {
    let mut latencies = Vec::new();
    let target = targets[thread % targets.len()];
    let Ok(mut stream) = connect(target) else {
        errors.fetch_add(1, Ordering::Relaxed);
        return latencies;
    };
    let mut reply = [0u8; MESSAGE];
    while Instant::now() < deadline && count.fetch_add(1, Ordering::Relaxed) < max_count {
        let started = Instant::now();
        let result = stream
            .write_all(&[b'K'; MESSAGE])
            .and_then(|()| stream.read_exact(&mut reply));
        match result {
            Ok(()) => latencies.push(nanos(started)),
            Err(_) => {
                errors.fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
    }
    latencies
}
