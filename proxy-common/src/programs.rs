//! The program table, declared once: each kernel program's name (its entry point in the object
//! and part of its link pins), the hook it runs on and where the agent attaches it. The loader
//! loads and attaches from this table; a new hook is one row here and one file under
//! `proxy-ebpf/src/programs/`.

/// The kernel hook a program runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hook {
    /// TC (TCX) ingress: packets the interface receives (from a pod, on its host-side veth).
    TcIngress,
    /// TC (TCX) egress: packets the interface sends (to a pod).
    TcEgress,
    /// XDP on a device (`--xdp native|generic`), before the kernel allocates an skb.
    Xdp,
    /// A cgroup socket-address hook (`cgroup/<name>`).
    SockAddr(SockAddrHook),
    /// `cgroup/sock_release`: a socket of the cgroup is closed for good.
    SockRelease,
}

/// The cgroup socket-address hooks socket-level load balancing uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SockAddrHook {
    Connect4,
    Connect6,
    SendMsg4,
    SendMsg6,
    RecvMsg4,
    RecvMsg6,
    GetPeerName4,
    GetPeerName6,
}

/// Where the agent attaches a program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AttachPoint {
    /// Every interface matching `--pod-interfaces`.
    PodInterfaces,
    /// Every device of `--devices`: the node's external interfaces.
    Devices,
    /// The cgroup v2 directory `--cgroup-root` (with `--socket-lb true`).
    Cgroup,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProgramSpec {
    pub name: &'static str,
    pub hook: Hook,
    pub on: AttachPoint,
}

/// TC ingress on a pod interface: packets a pod sends (service DNAT).
pub const FROM_POD: &str = "from_pod";
/// TC egress on a pod interface: packets going to a pod (reverse NAT).
pub const TO_POD: &str = "to_pod";
/// TC ingress on a device: packets from outside the node (NodePort, external and load
/// balancer IPs: DNAT, and SNAT unless the policy is `Local`) and backends' replies to flows
/// masqueraded to this node.
pub const FROM_DEVICE: &str = "from_device";
/// TC egress on a device: a local backend's reply to an outside client whose address it saw
/// (reverse NAT).
pub const TO_DEVICE: &str = "to_device";
/// XDP on a device (with `--xdp native|generic`): the fast path of [`FROM_DEVICE`] for
/// NodePort, external and load balancer IP traffic and its masqueraded replies; whatever else
/// it hands on to TC.
pub const XDP_DEVICE: &str = "xdp_device";

const fn sock(name: &'static str, hook: SockAddrHook) -> ProgramSpec {
    ProgramSpec {
        name,
        hook: Hook::SockAddr(hook),
        on: AttachPoint::Cgroup,
    }
}

pub const PROGRAMS: &[ProgramSpec] = &[
    ProgramSpec {
        name: FROM_POD,
        hook: Hook::TcIngress,
        on: AttachPoint::PodInterfaces,
    },
    ProgramSpec {
        name: TO_POD,
        hook: Hook::TcEgress,
        on: AttachPoint::PodInterfaces,
    },
    ProgramSpec {
        name: FROM_DEVICE,
        hook: Hook::TcIngress,
        on: AttachPoint::Devices,
    },
    ProgramSpec {
        name: TO_DEVICE,
        hook: Hook::TcEgress,
        on: AttachPoint::Devices,
    },
    ProgramSpec {
        name: XDP_DEVICE,
        hook: Hook::Xdp,
        on: AttachPoint::Devices,
    },
    // Socket-level load balancing: translate once per connection (per datagram for
    // unconnected UDP), restore the frontend in replies and peer names.
    sock("sock_connect4", SockAddrHook::Connect4),
    sock("sock_connect6", SockAddrHook::Connect6),
    sock("sock_sendmsg4", SockAddrHook::SendMsg4),
    sock("sock_sendmsg6", SockAddrHook::SendMsg6),
    sock("sock_recvmsg4", SockAddrHook::RecvMsg4),
    sock("sock_recvmsg6", SockAddrHook::RecvMsg6),
    sock("sock_getpeername4", SockAddrHook::GetPeerName4),
    sock("sock_getpeername6", SockAddrHook::GetPeerName6),
    ProgramSpec {
        name: "sock_release",
        hook: Hook::SockRelease,
        on: AttachPoint::Cgroup,
    },
];
