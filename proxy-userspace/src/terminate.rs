//! Closing the connected UDP sockets whose backend left their frontend. The socket hooks
//! connect a UDP socket straight to a backend; kube-proxy users expect UDP to move off a backend
//! at once (kube-proxy clears its conntrack entries), so when a backend leaves, the agent
//! destroys the sockets the hooks sent to it (`SOCK_DESTROY` over `NETLINK_SOCK_DIAG`, in the
//! network namespace of each process under `--cgroup-root`), as Cilium does. The socket is
//! disconnected: the application's next `send` fails (`EDESTADDRREQ`; a pending receive gets
//! `ECONNABORTED`), and a reconnect goes through the hooks to a live backend.
//! TCP connections are left to drain, as with kube-proxy.
use std::{
    collections::{BTreeMap, HashSet},
    fs::File,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::fs::MetadataExt as _,
    },
    path::{Path, PathBuf},
};

use proxy_common::{LbFamily, RawAddress, SockRevKey, SockRevValue};

use crate::{
    maps::{codec::KernelFamily, kernel::open_hash, pins::PinLayout, writer::Departure},
    model::Protocol,
    proxier::Departures,
};

#[derive(Debug, thiserror::Error)]
pub enum TerminateError {
    #[error("reading the socket reverse map: {0}")]
    Map(#[from] crate::maps::MapError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> TerminateError {
    let what = what.into();
    move |source| TerminateError::Io { what, source }
}

/// The cookies of the sockets the hooks connected to a UDP backend that then left its frontend.
fn cookies_of<A: KernelFamily>(
    pins: &PinLayout,
    departures: &[Departure<A>],
    cookies: &mut HashSet<u64>,
) -> Result<(), TerminateError> {
    let gone: HashSet<(u32, A, u16)> = departures
        .iter()
        .filter(|d| d.backend.protocol == Protocol::Udp)
        .map(|d| (d.rev_nat_id, d.backend.address, d.backend.port))
        .collect();
    if gone.is_empty() {
        return Ok(());
    }
    let map = open_hash::<SockRevKey<A::Raw>, SockRevValue<A::Raw>>(pins, A::Binding::SOCK_REV)?;
    for entry in map.iter() {
        let Ok((key, value)) = entry else { continue };
        let backend = (
            value.rev_nat_id,
            key.address.to_ip(),
            u16::from_be(key.port),
        );
        if gone.contains(&backend) {
            cookies.insert(u64::from_ne_bytes(key.cookie));
        }
    }
    Ok(())
}

/// Destroys the connected UDP sockets of processes under `cgroup_root` that the hooks sent to a
/// backend that left its frontend. Returns how many were closed.
pub fn close_departed_udp(
    pins: &PinLayout,
    cgroup_root: &Path,
    departures: &Departures,
) -> Result<usize, TerminateError> {
    let mut cookies = HashSet::new();
    cookies_of(pins, &departures.v4, &mut cookies)?;
    cookies_of(pins, &departures.v6, &mut cookies)?;
    let namespaces = if cookies.is_empty() {
        Vec::new()
    } else {
        namespaces(cgroup_root)
    };
    tracing::debug!(
        departures = departures.v4.len() + departures.v6.len(),
        sockets = cookies.len(),
        namespaces = namespaces.len(),
        "closing the connected UDP sockets of departed backends"
    );
    let mut closed = 0;
    for netns in namespaces {
        let cookies = cookies.clone();
        let path = netns.clone();
        let result = std::thread::spawn(move || -> Result<usize, TerminateError> {
            let file = File::open(&path).map_err(io_error(format!("{}", path.display())))?;
            // SAFETY: a namespace descriptor; only this short-lived thread moves.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io_error(format!("setns {}", path.display()))(
                    io::Error::last_os_error(),
                ));
            }
            destroy_in_this_namespace(&cookies)
        })
        .join()
        .unwrap_or(Ok(0));
        match result {
            Ok(n) => closed += n,
            Err(error) => tracing::warn!(netns = %netns.display(), %error, "closing sockets"),
        }
    }
    Ok(closed)
}

/// One path per network namespace of the processes under `cgroup_root` (recursively).
fn namespaces(cgroup_root: &Path) -> Vec<PathBuf> {
    let mut by_inode: BTreeMap<u64, PathBuf> = BTreeMap::new();
    for dir in crate::config::cgroup_tree(cgroup_root) {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
            let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
            if let Ok(meta) = std::fs::metadata(&path) {
                by_inode.entry(meta.ino()).or_insert(path);
            }
        }
    }
    by_inode.into_values().collect()
}

// include/uapi/linux/{netlink,sock_diag,inet_diag}.h
const NETLINK_SOCK_DIAG: libc::c_int = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_DUMP: u16 = 0x300;

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct NlMsgHdr {
    len: u32,
    kind: u16,
    flags: u16,
    seq: u32,
    pid: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct InetDiagSockId {
    sport: u16,
    dport: u16,
    src: [u32; 4],
    dst: [u32; 4],
    interface: u32,
    cookie: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct InetDiagReqV2 {
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: InetDiagSockId,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Request {
    header: NlMsgHdr,
    body: InetDiagReqV2,
}

/// `struct inet_diag_msg`'s head: family, state, timer, retrans, then the socket's id.
const MSG_ID_OFFSET: usize = 4;

fn send(socket: &OwnedFd, request: &Request) -> io::Result<()> {
    let bytes = bytemuck::bytes_of(request);
    // SAFETY: a buffer of its own length.
    let sent = unsafe { libc::send(socket.as_raw_fd(), bytes.as_ptr().cast(), bytes.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads netlink messages until `NLMSG_DONE` (a dump) or the first error/ack; hands each
/// message's type and payload to `each`. Returns the errno of an `NLMSG_ERROR` (0: an ack).
fn receive(socket: &OwnedFd, mut each: impl FnMut(u16, &[u8])) -> io::Result<i32> {
    let mut buffer = vec![0u8; 64 * 1024];
    // Bounded: a namespace holds far fewer sockets than this many batches.
    for _ in 0..100_000 {
        // SAFETY: a buffer we own, of its length.
        let n = unsafe {
            libc::recv(
                socket.as_raw_fd(),
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                0,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut at = 0usize;
        let n = n as usize;
        while at + size_of::<NlMsgHdr>() <= n {
            let header: NlMsgHdr =
                bytemuck::pod_read_unaligned(&buffer[at..at + size_of::<NlMsgHdr>()]);
            let len = header.len as usize;
            if len < size_of::<NlMsgHdr>() || at + len > n {
                return Ok(0);
            }
            let payload = &buffer[at + size_of::<NlMsgHdr>()..at + len];
            match header.kind {
                NLMSG_DONE => return Ok(0),
                NLMSG_ERROR => {
                    let errno = payload
                        .get(..4)
                        .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                        .unwrap_or(0);
                    return Ok(-errno);
                }
                kind => each(kind, payload),
            }
            at += len.next_multiple_of(4);
        }
    }
    Ok(0)
}

fn netlink_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket creation; the descriptor is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Dumps this namespace's UDP sockets of both families and destroys those with a cookie in
/// `cookies`.
fn destroy_in_this_namespace(cookies: &HashSet<u64>) -> Result<usize, TerminateError> {
    let socket = netlink_socket().map_err(io_error("a sock_diag netlink socket"))?;
    let mut closed = 0;
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        let dump = Request {
            header: NlMsgHdr {
                len: size_of::<Request>() as u32,
                kind: SOCK_DIAG_BY_FAMILY,
                flags: NLM_F_REQUEST | NLM_F_DUMP,
                seq: 1,
                pid: 0,
            },
            body: InetDiagReqV2 {
                family,
                protocol: libc::IPPROTO_UDP as u8,
                states: u32::MAX,
                ..InetDiagReqV2::default()
            },
        };
        send(&socket, &dump).map_err(io_error("sock_diag dump"))?;
        let mut targets = Vec::new();
        receive(&socket, |kind, payload| {
            if kind != SOCK_DIAG_BY_FAMILY
                || payload.len() < MSG_ID_OFFSET + size_of::<InetDiagSockId>()
            {
                return;
            }
            let id: InetDiagSockId = bytemuck::pod_read_unaligned(
                &payload[MSG_ID_OFFSET..MSG_ID_OFFSET + size_of::<InetDiagSockId>()],
            );
            let cookie = u64::from(id.cookie[0]) | (u64::from(id.cookie[1]) << 32);
            if cookies.contains(&cookie) {
                targets.push(id);
            }
        })
        .map_err(io_error("sock_diag dump"))?;
        for id in targets {
            let destroy = Request {
                header: NlMsgHdr {
                    len: size_of::<Request>() as u32,
                    kind: SOCK_DESTROY,
                    flags: NLM_F_REQUEST | NLM_F_ACK,
                    seq: 2,
                    pid: 0,
                },
                body: InetDiagReqV2 {
                    family,
                    protocol: libc::IPPROTO_UDP as u8,
                    states: u32::MAX,
                    id,
                    ..InetDiagReqV2::default()
                },
            };
            send(&socket, &destroy).map_err(io_error("SOCK_DESTROY"))?;
            match receive(&socket, |_, _| {}).map_err(io_error("SOCK_DESTROY"))? {
                0 => closed += 1,
                errno => tracing::debug!(
                    peer = %peer(family, &id),
                    error = %io::Error::from_raw_os_error(errno),
                    "a socket could not be closed (gone already?)"
                ),
            }
        }
    }
    Ok(closed)
}

fn peer(family: u8, id: &InetDiagSockId) -> String {
    let address: IpAddr = if family == libc::AF_INET as u8 {
        Ipv4Addr::from(id.dst[0].to_ne_bytes()).into()
    } else {
        Ipv6Addr::from(bytemuck::cast::<[u32; 4], [u8; 16]>(id.dst)).into()
    };
    crate::family::socket_display(address, u16::from_be(id.dport))
}
