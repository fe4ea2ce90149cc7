//! The datapath's per-CPU outcome counters: one enum, so an index and its name cannot drift
//! apart. The kernel programs count a [`Counter`]; the agent's metrics and tests read them by
//! [`Counter::name`].

macro_rules! counters {
    ($($(#[doc = $doc:literal])* $variant:ident => $name:literal,)*) => {
        /// Index of each counter in the per-CPU `counters` array.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Counter {
            $($(#[doc = $doc])* $variant,)*
        }

        impl Counter {
            pub const ALL: &'static [Counter] = &[$(Counter::$variant,)*];
            pub const COUNT: u32 = Self::ALL.len() as u32;

            /// The name in metrics (`outcome` label) and in the CLI.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Counter::$variant => $name,)*
                }
            }

            #[inline(always)]
            pub const fn index(self) -> u32 {
                self as u32
            }
        }
    };
}

counters! {
    /// A packet that is not service traffic (or not parseable) passed untouched.
    Pass => "pass",
    /// A new flow was load-balanced to a backend.
    DnatNew => "dnat_new",
    /// A packet of a known flow was translated to its backend.
    DnatEstablished => "dnat_established",
    /// A reply was translated back to the service address.
    ReverseNat => "reverse_nat",
    /// A packet to a service with no usable backend that could not be rejected (a reset, an
    /// IPv4 header with options, an IPv6 one with extension headers, SCTP): passed untouched.
    NoBackend => "no_backend",
    /// A packet to a frontend whose `Local` traffic policy has no endpoint on this node:
    /// dropped, as kube-proxy drops it.
    DropNoLocalEndpoint => "drop_no_local_endpoint",
    /// A packet to a service with no usable backend, answered as kube-proxy's `REJECT` does:
    /// a TCP reset or an ICMP (ICMPv6) port unreachable, sent back to the client.
    Reject => "reject",
    /// A packet to a load balancer IP from a client outside its `loadBalancerSourceRanges`:
    /// dropped, as kube-proxy's firewall chain drops it.
    DropSourceRange => "drop_source_range",
    /// A known flow's backend had gone and a new one was picked.
    Repick => "repick",
    /// A new flow was load-balanced and masqueraded (SNATed to the node: a hairpin, a source
    /// outside `--cluster-cidr`, or `--masquerade-all`), then sent on to its backend.
    SnatNew => "snat_new",
    /// A packet of a known masqueraded flow was translated and sent on to its backend.
    SnatEstablished => "snat_established",
    /// A reply to a masqueraded flow was translated back (frontend and client) and sent on to
    /// the client.
    ReverseSnat => "reverse_snat",
    /// A fragment after the first of a translated flow's datagram got its first fragment's
    /// address (fragments of no known datagram pass untouched, counted `pass`).
    Fragment => "fragment",
    /// A flow that must be masqueraded could not be: no route to the backend, or no free
    /// port in `--masquerade-ports`. Dropped, as netfilter drops a flow it cannot NAT.
    SnatError => "snat_error",
    /// An ICMP or ICMPv6 error about a translated flow (unreachable, fragmentation needed,
    /// Packet Too Big, time exceeded, parameter problem) was translated with it: its quote
    /// and, when the backend sent it, its source.
    IcmpError => "icmp_error",
    /// A packet the XDP path served itself (translated and redirected, translated and passed,
    /// or dropped), counted besides its outcome: how much of the devices' traffic XDP takes.
    Xdp => "xdp",
    /// The XDP path handed a packet it had begun to serve on to TC, which serves it whole: a
    /// flow to masquerade whose next hop's MAC address is not resolved yet, a rewrite or
    /// conntrack failure there.
    XdpToTc => "xdp_to_tc",
    /// A rewrite helper failed; the packet passed untouched.
    RewriteError => "rewrite_error",
    /// A conntrack entry could not be created (map full or out of memory); the packet passed
    /// untouched.
    ConntrackError => "conntrack_error",
    /// A `connect()` (TCP or UDP) to a frontend was sent straight to a backend.
    SockConnect => "sock_connect",
    /// An unconnected UDP datagram to a frontend was sent straight to a backend.
    SockSendmsg => "sock_sendmsg",
    /// A `connect()` or datagram to a frontend with no usable backend was refused
    /// (ECONNREFUSED).
    SockRefused => "sock_refused",
    /// A reply's source (`recvmsg`) or a peer name (`getpeername`) was restored to the frontend.
    SockReverse => "sock_reverse",
    /// A socket's reverse entry named a frontend that is gone or changed; it was dropped and
    /// the backend's address shown.
    SockReverseStale => "sock_reverse_stale",
    /// A socket reverse or stickiness entry could not be written; the socket was translated
    /// all the same.
    SockMapError => "sock_map_error",
}
