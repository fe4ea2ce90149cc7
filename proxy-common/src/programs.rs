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
}

/// Where the agent attaches a program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AttachPoint {
    /// Every interface matching `--pod-interfaces`.
    PodInterfaces,
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
];
