//! Hook contexts. Packet access is behind one trait, so parsing and rewriting are written once
//! for every hook that sees packets: TC ([`TcContext`], with the skb helpers) now, XDP (direct
//! access plus `bpf_csum_diff`) when the device path lands (Cilium's
//! `overloadable_{skb,xdp}.h`). The socket hooks see an address, not a packet: [`SockAddr`].
use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, bpf_sock_addr},
    helpers::{
        bpf_fib_lookup, bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_redirect,
        bpf_redirect_neigh, bpf_skb_change_tail, bpf_skb_load_bytes, bpf_skb_pull_data,
    },
    programs::{SockAddrContext, TcContext, XdpContext},
};

/// How a field change affects an L4 checksum.
#[derive(Clone, Copy)]
pub(crate) struct L4Change {
    /// The field is part of the pseudo header (an IP address), not of the L4 header itself.
    pub pseudo_header: bool,
    /// A zero checksum means "none" and must stay zero (UDP over IPv4).
    pub zero_means_none: bool,
}

/// The size of a replaced field, for the checksum helpers.
#[derive(Clone, Copy)]
pub(crate) enum FieldSize {
    Two = 2,
    Four = 4,
}

pub(crate) trait PacketCtx {
    /// The [`proxy_common::monitor_hook`] of this context's programs.
    const HOOK: u8;
    /// The packet's length in bytes, its link-layer header included.
    fn length(&self) -> u32;
    fn load<T>(&self, offset: usize) -> Result<T, i64>;
    /// Loads `size_of::<T>()` bytes at `offset` into `out` (scratch memory, say).
    fn load_into<T>(&self, offset: usize, out: &mut T) -> Result<(), i64>;
    fn store<T>(&self, offset: usize, value: &T) -> Result<(), i64>;
    /// Reads `size_of::<T>()` bytes at `offset` straight from the packet, without a helper and
    /// so without stack; at TC only from the packet's linear part (its headers, as a rule).
    fn peek<T>(&self, offset: usize) -> Result<T, i64>;
    /// A header: `size_of::<T>()` bytes at `offset`, read straight from the packet (no helper
    /// call: one per header was most of a parse's cost). At TC, bytes beyond the packet's
    /// linear part are pulled into it first. One way through for the verifier, whichever the
    /// packet takes: the read is the same instruction either way.
    fn header<T>(&self, offset: usize) -> Result<T, i64>;
    /// Updates the IPv4 header checksum at `check` for a field that changed from `old` to `new`.
    fn l3_csum_replace(&self, check: usize, old: u32, new: u32, size: FieldSize)
    -> Result<(), i64>;
    /// Updates the L4 checksum at `check` for a field that changed from `old` to `new`.
    fn l4_csum_replace(
        &self,
        check: usize,
        old: u32,
        new: u32,
        size: FieldSize,
        change: L4Change,
    ) -> Result<(), i64>;
    /// Adds a checksum difference (from `bpf_csum_diff`) to the L4 checksum at `check`.
    fn l4_csum_add(&self, check: usize, diff: u32, change: L4Change) -> Result<(), i64>;
    /// Adds a checksum difference (from `csum::diff`) to a checksum at `check` that no skb
    /// state tracks: one inside an ICMP error's quote.
    fn csum_add(&self, check: usize, diff: u32) -> Result<(), i64>;
    /// Makes the packet `len` bytes long, cutting or growing (zeros) its tail.
    fn resize(&self, len: u32) -> Result<(), i64>;
    /// Sends the packet back out of the interface it came in on (the verdict must then be
    /// [`crate::outcome::Verdict::Bounce`]).
    fn bounce(&self) -> Result<(), i64>;
    /// The node's route to `destination` (of `family`, `AF_INET` or `AF_INET6`, the address
    /// in the first bytes): the interface it leaves by, and the source address the node picks
    /// for it (what netfilter's `MASQUERADE` takes).
    /// `source`: with the source address the route picks (`BPF_FIB_LOOKUP_SRC`), which a new
    /// masqueraded flow needs and a packet of a known one does not: for IPv6 the kernel then
    /// runs its source address selection (RFC 6724 rules over every address of the device), the
    /// most expensive part of a lookup.
    fn route(&self, family: u8, destination: [u8; 16], source: bool) -> Option<Route>;
    /// Sends the packet out of `ifindex`, its Ethernet addresses from the neighbour table
    /// (the verdict must then be [`crate::outcome::Verdict::Redirect`]).
    fn redirect(&self, ifindex: u32) -> Result<(), i64>;
}

/// Where the node sends a packet: see [`PacketCtx::route`].
pub(crate) struct Route {
    pub ifindex: u32,
    /// The source address, in the first bytes.
    pub source: [u8; 16],
}

/// `struct bpf_fib_lookup`, its unions as the fields we use.
#[repr(C)]
pub(crate) struct FibParams {
    family: u8,
    l4_protocol: u8,
    sport: u16,
    dport: u16,
    /// Zero: no MTU check.
    tot_len: u16,
    ifindex: u32,
    flowinfo: u32,
    source: [u8; 16],
    destination: [u8; 16],
    tbid: u32,
    macs: [u8; 12],
}

const _: () = assert!(core::mem::size_of::<FibParams>() == 64);

impl FibParams {
    /// Makes `self` the parameters of a forwarding lookup to `destination` for a packet that
    /// came in on `ifindex` (zeroed first without a `memset` call: [`crate::mem::zero`]).
    #[inline(always)]
    fn set_lookup(&mut self, family: u8, ifindex: u32, destination: [u8; 16]) {
        // SAFETY: a `FibParams` (4-aligned, 64 bytes), all of whose fields may be zero.
        unsafe { crate::mem::zero(self) };
        self.family = family;
        self.ifindex = ifindex;
        self.destination = destination;
    }
}

/// `BPF_FIB_LOOKUP_SKIP_NEIGH`: the forwarding lookup of a packet that came in on the skb's
/// device (which must forward, as a node's pod interfaces do), without needing a resolved
/// neighbour (`bpf_redirect_neigh` resolves it).
const FIB_FLAGS: u32 = 1 << 2;
/// `BPF_FIB_LOOKUP_SRC`: the lookup fills in the source address the route picks.
const FIB_LOOKUP_SRC: u32 = 1 << 4;

/// The lookup's flags: `base`, and the source address when asked for.
#[inline(always)]
fn fib_flags(base: u32, source: bool) -> u32 {
    if source { base | FIB_LOOKUP_SRC } else { base }
}

#[inline(always)]
fn l4_flags(change: L4Change) -> u64 {
    let mut flags = 0u64;
    if change.pseudo_header {
        flags |= u64::from(BPF_F_PSEUDO_HDR);
    }
    if change.zero_means_none {
        flags |= u64::from(BPF_F_MARK_MANGLED_0);
    }
    flags
}

impl PacketCtx for TcContext {
    const HOOK: u8 = proxy_common::monitor_hook::TC;
    #[inline(always)]
    fn length(&self) -> u32 {
        self.len()
    }
    #[inline(always)]
    fn load<T>(&self, offset: usize) -> Result<T, i64> {
        TcContext::load(self, offset)
    }

    #[inline(always)]
    fn load_into<T>(&self, offset: usize, out: &mut T) -> Result<(), i64> {
        // SAFETY: `out` is `size_of::<T>()` writable bytes; the helper checks the packet.
        let rc = unsafe {
            bpf_skb_load_bytes(
                self.skb.skb.cast(),
                offset as u32,
                (out as *mut T).cast(),
                core::mem::size_of::<T>() as u32,
            )
        };
        if rc < 0 { Err(rc) } else { Ok(()) }
    }

    #[inline(always)]
    fn store<T>(&self, offset: usize, value: &T) -> Result<(), i64> {
        TcContext::store(self, offset, value, 0)
    }

    #[inline(always)]
    fn peek<T>(&self, offset: usize) -> Result<T, i64> {
        if offset > XDP_MAX_OFFSET {
            return Err(-1);
        }
        // Volatile, as in `xdp_at`: the verifier takes packet pointers only where it sees them
        // read from the context.
        // SAFETY: fields of the context the kernel handed us.
        let (data, end) = unsafe {
            (
                core::ptr::read_volatile(core::ptr::addr_of!((*self.skb.skb).data)) as usize,
                core::ptr::read_volatile(core::ptr::addr_of!((*self.skb.skb).data_end)) as usize,
            )
        };
        let start = data + offset;
        if start + core::mem::size_of::<T>() > end {
            return Err(-1);
        }
        // SAFETY: the bytes at `start` are in the packet's linear part, checked just above.
        Ok(unsafe { core::ptr::read_unaligned(start as *const T) })
    }

    #[inline(always)]
    fn header<T>(&self, offset: usize) -> Result<T, i64> {
        let need = offset + core::mem::size_of::<T>();
        // SAFETY: fields of the context the kernel handed us.
        let linear = unsafe {
            core::ptr::read_volatile(core::ptr::addr_of!((*self.skb.skb).data_end)) as usize
                - core::ptr::read_volatile(core::ptr::addr_of!((*self.skb.skb).data)) as usize
        };
        if need > linear {
            // SAFETY: the helper checks `need` against the packet; it invalidates packet
            // pointers, and none is held across it (`peek` reads them afresh).
            let rc = unsafe { bpf_skb_pull_data(self.skb.skb.cast(), need as u32) };
            if rc < 0 {
                return Err(rc);
            }
        }
        self.peek(offset)
    }

    #[inline(always)]
    fn l3_csum_replace(
        &self,
        check: usize,
        old: u32,
        new: u32,
        size: FieldSize,
    ) -> Result<(), i64> {
        TcContext::l3_csum_replace(self, check, old.into(), new.into(), size as u64)
    }

    #[inline(always)]
    fn l4_csum_replace(
        &self,
        check: usize,
        old: u32,
        new: u32,
        size: FieldSize,
        change: L4Change,
    ) -> Result<(), i64> {
        let flags = l4_flags(change) | size as u64;
        TcContext::l4_csum_replace(self, check, old.into(), new.into(), flags)
    }

    #[inline(always)]
    fn l4_csum_add(&self, check: usize, diff: u32, change: L4Change) -> Result<(), i64> {
        // Size 0: `to` is a checksum difference, not a value.
        TcContext::l4_csum_replace(self, check, 0, diff.into(), l4_flags(change))
    }

    #[inline(always)]
    fn csum_add(&self, check: usize, diff: u32) -> Result<(), i64> {
        // Size 0: `to` is a difference. The L3 helper only folds it into the field.
        TcContext::l3_csum_replace(self, check, 0, diff.into(), 0)
    }

    #[inline(always)]
    fn resize(&self, len: u32) -> Result<(), i64> {
        // SAFETY: the skb of this program's context.
        let rc = unsafe { bpf_skb_change_tail(self.skb.skb, len, 0) };
        if rc < 0 { Err(rc) } else { Ok(()) }
    }

    #[inline(always)]
    fn bounce(&self) -> Result<(), i64> {
        // SAFETY: the skb of this program's context; `ifindex` is where it came in.
        let ifindex = unsafe { (*self.skb.skb).ifindex };
        // SAFETY: no pointers. Out of the device's egress: back to the pod on its veth.
        let rc = unsafe { bpf_redirect(ifindex, 0) };
        if rc == TC_ACT_REDIRECT {
            Ok(())
        } else {
            Err(rc)
        }
    }

    #[inline(always)]
    fn route(&self, family: u8, destination: [u8; 16], source: bool) -> Option<Route> {
        let params = &mut crate::scratch::get()?.fib;
        // SAFETY: the skb of this program's context.
        params.set_lookup(family, unsafe { (*self.skb.skb).ifindex }, destination);
        // SAFETY: the skb of this program's context, and a parameter block on our stack.
        let rc = unsafe {
            bpf_fib_lookup(
                self.skb.skb.cast(),
                (params as *mut FibParams).cast(),
                core::mem::size_of::<FibParams>() as i32,
                fib_flags(FIB_FLAGS, source),
            )
        };
        (rc == 0).then_some(Route {
            ifindex: params.ifindex,
            source: params.source,
        })
    }

    #[inline(always)]
    fn redirect(&self, ifindex: u32) -> Result<(), i64> {
        // SAFETY: no parameters: the kernel looks the neighbour up itself.
        let rc = unsafe { bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) };
        if rc == TC_ACT_REDIRECT {
            Ok(())
        } else {
            Err(rc)
        }
    }
}

/// What `bpf_redirect` returns when it took the packet.
const TC_ACT_REDIRECT: i64 = 7;

/// No flag: the XDP path's lookup needs the neighbour resolved (its MAC addresses are written
/// into the frame; an unresolved one sends the packet on to TC).
const XDP_FIB_FLAGS: u32 = 0;
/// What `bpf_redirect` returns at XDP when it took the frame.
const XDP_REDIRECT: i64 = 4;
/// The farthest offset a direct read or write (XDP, [`PacketCtx::peek`]) starts at: far past
/// any header chain we parse, and a bound the verifier needs for packet pointers with a
/// variable offset.
const XDP_MAX_OFFSET: usize = 1024;

/// A one's-complement sum of 16-bit words, folded (RFC 1071).
#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The checksum `check` after a field changed from `old` to `new` (RFC 1624: HC' = ~(~HC +
/// ~m + m')), all in memory order: the arithmetic is byte-order independent.
#[inline(always)]
fn csum_replaced(check: u16, old: u32, new: u32, size: FieldSize) -> u16 {
    let mut sum = u32::from(!check);
    match size {
        FieldSize::Two => {
            sum += u32::from(!(old as u16)) + u32::from(new as u16);
        }
        FieldSize::Four => {
            sum += u32::from(!(old as u16)) + u32::from(!((old >> 16) as u16));
            sum += u32::from(new as u16) + u32::from((new >> 16) as u16);
        }
    }
    !fold(sum)
}

/// The checksum `check` with a difference (a `bpf_csum_diff` result) added.
#[inline(always)]
fn csum_added(check: u16, diff: u32) -> u16 {
    let sum = u32::from(!check) + u32::from(fold(diff));
    !fold(sum)
}

/// XDP: direct packet access, checksums updated by hand (no skb, so no checksum state: the
/// device must deliver complete checksums, as a NIC's receive path does). What only an skb
/// can do (resize, bounce) fails here: the XDP path hands those packets on to TC.
impl PacketCtx for XdpContext {
    const HOOK: u8 = proxy_common::monitor_hook::XDP;
    #[inline(always)]
    fn length(&self) -> u32 {
        // SAFETY: fields of the context the kernel handed us.
        let (data, end) = unsafe { ((*self.ctx).data, (*self.ctx).data_end) };
        end.saturating_sub(data)
    }
    #[inline(always)]
    fn load<T>(&self, offset: usize) -> Result<T, i64> {
        let at = xdp_at::<T>(self, offset)?;
        // SAFETY: `xdp_at` checked `size_of::<T>()` bytes at `at` are in the frame.
        Ok(unsafe { core::ptr::read_unaligned(at as *const T) })
    }

    #[inline(always)]
    fn load_into<T>(&self, offset: usize, out: &mut T) -> Result<(), i64> {
        *out = self.load(offset)?;
        Ok(())
    }

    #[inline(always)]
    fn peek<T>(&self, offset: usize) -> Result<T, i64> {
        self.load(offset)
    }

    #[inline(always)]
    fn header<T>(&self, offset: usize) -> Result<T, i64> {
        self.load(offset)
    }

    #[inline(always)]
    fn store<T>(&self, offset: usize, value: &T) -> Result<(), i64> {
        let at = xdp_at::<T>(self, offset)?;
        // SAFETY: as in `load`; XDP frames are writable.
        unsafe {
            core::ptr::copy_nonoverlapping(
                value as *const T as *const u8,
                at as *mut u8,
                core::mem::size_of::<T>(),
            )
        };
        Ok(())
    }

    #[inline(always)]
    fn l3_csum_replace(
        &self,
        check: usize,
        old: u32,
        new: u32,
        size: FieldSize,
    ) -> Result<(), i64> {
        let current: u16 = self.load(check)?;
        self.store(check, &csum_replaced(current, old, new, size))
    }

    #[inline(always)]
    fn l4_csum_replace(
        &self,
        check: usize,
        old: u32,
        new: u32,
        size: FieldSize,
        change: L4Change,
    ) -> Result<(), i64> {
        let current: u16 = self.load(check)?;
        if change.zero_means_none && current == 0 {
            return Ok(());
        }
        store_l4(self, check, csum_replaced(current, old, new, size), change)
    }

    #[inline(always)]
    fn l4_csum_add(&self, check: usize, diff: u32, change: L4Change) -> Result<(), i64> {
        let current: u16 = self.load(check)?;
        if change.zero_means_none && current == 0 {
            return Ok(());
        }
        store_l4(self, check, csum_added(current, diff), change)
    }

    #[inline(always)]
    fn csum_add(&self, check: usize, diff: u32) -> Result<(), i64> {
        let current: u16 = self.load(check)?;
        self.store(check, &csum_added(current, diff))
    }

    #[inline(always)]
    fn resize(&self, _len: u32) -> Result<(), i64> {
        Err(-1)
    }

    #[inline(always)]
    fn bounce(&self) -> Result<(), i64> {
        Err(-1)
    }

    #[inline(always)]
    fn route(&self, family: u8, destination: [u8; 16], source: bool) -> Option<Route> {
        let params = &mut crate::scratch::get()?.fib;
        params.set_lookup(family, self.ingress_ifindex() as u32, destination);
        // SAFETY: this program's context, and a parameter block in scratch memory.
        let rc = unsafe {
            bpf_fib_lookup(
                self.ctx.cast(),
                (params as *mut FibParams).cast(),
                core::mem::size_of::<FibParams>() as i32,
                fib_flags(XDP_FIB_FLAGS, source),
            )
        };
        (rc == 0).then_some(Route {
            ifindex: params.ifindex,
            source: params.source,
        })
    }

    /// Writes the MAC addresses of the last [`Self::route`] (this program run's, in scratch)
    /// into the frame and sends it out of `ifindex`.
    #[inline(always)]
    fn redirect(&self, ifindex: u32) -> Result<(), i64> {
        let macs = crate::scratch::get().ok_or(-1i64)?.fib.macs;
        // `struct bpf_fib_lookup` holds smac then dmac; a frame starts dmac, smac.
        let mut header = [0u8; 12];
        header[..6].copy_from_slice(&macs[6..]);
        header[6..].copy_from_slice(&macs[..6]);
        self.store(0, &header)?;
        // SAFETY: no pointers.
        let rc = unsafe { bpf_redirect(ifindex, 0) };
        if rc == XDP_REDIRECT { Ok(()) } else { Err(rc) }
    }
}

/// The frame address of `size_of::<T>()` bytes at `offset`, if they are all in the frame.
#[inline(always)]
fn xdp_at<T>(ctx: &XdpContext, offset: usize) -> Result<usize, i64> {
    if offset > XDP_MAX_OFFSET {
        return Err(-1);
    }
    // Volatile reads of the context, where the access happens: LLVM would otherwise hoist
    // them into a caller and pass the frame's bounds in as plain integers, which the verifier
    // no longer takes for packet pointers.
    // SAFETY: fields of the context the kernel handed us.
    let (data, end) = unsafe {
        (
            core::ptr::read_volatile(core::ptr::addr_of!((*ctx.ctx).data)) as usize,
            core::ptr::read_volatile(core::ptr::addr_of!((*ctx.ctx).data_end)) as usize,
        )
    };
    let start = data + offset;
    if start + core::mem::size_of::<T>() > end {
        return Err(-1);
    }
    Ok(start)
}

/// Stores an L4 checksum; a computed zero is sent as all ones where zero means "none" (UDP).
#[inline(always)]
fn store_l4(ctx: &XdpContext, check: usize, value: u16, change: L4Change) -> Result<(), i64> {
    let value = if change.zero_means_none && value == 0 {
        0xffff
    } else {
        value
    };
    ctx.store(check, &value)
}

/// A cgroup socket-address hook's context (`struct bpf_sock_addr`): the address the caller
/// passed (connect, sendmsg) or is about to receive (recvmsg, getpeername), read and written
/// with the 4-byte accesses the verifier requires (a narrower or merged access is refused).
pub(crate) struct SockAddr {
    raw: *mut bpf_sock_addr,
}

/// `::ffff:0:0/96`, as the first three 32-bit words of an address in network order.
const V4_MAPPED: [u32; 3] = [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff])];

impl SockAddr {
    #[inline(always)]
    pub(crate) fn new(ctx: &SockAddrContext) -> Self {
        Self { raw: ctx.sock_addr }
    }

    #[inline(always)]
    fn read(field: *const u32) -> u32 {
        // SAFETY: a field of the context the kernel handed us.
        unsafe { core::ptr::read_volatile(field) }
    }

    #[inline(always)]
    fn write(field: *mut u32, value: u32) {
        // SAFETY: a writable field of the context the kernel handed us.
        unsafe { core::ptr::write_volatile(field, value) }
    }

    /// The socket's protocol (`IPPROTO_*`).
    #[inline(always)]
    pub(crate) fn protocol(&self) -> u32 {
        Self::read(unsafe { core::ptr::addr_of!((*self.raw).protocol) })
    }

    /// `user_port`'s low 16 bits: the port in network order.
    #[inline(always)]
    pub(crate) fn port(&self) -> u16 {
        Self::read(unsafe { core::ptr::addr_of!((*self.raw).user_port) }) as u16
    }

    #[inline(always)]
    pub(crate) fn set_port(&self, port: u16) {
        Self::write(
            unsafe { core::ptr::addr_of_mut!((*self.raw).user_port) },
            u32::from(port),
        );
    }

    #[inline(always)]
    pub(crate) fn ip4(&self) -> [u8; 4] {
        Self::read(unsafe { core::ptr::addr_of!((*self.raw).user_ip4) }).to_ne_bytes()
    }

    #[inline(always)]
    pub(crate) fn set_ip4(&self, address: [u8; 4]) {
        Self::write(
            unsafe { core::ptr::addr_of_mut!((*self.raw).user_ip4) },
            u32::from_ne_bytes(address),
        );
    }

    /// The IPv6 address as four network-order words.
    #[inline(always)]
    fn ip6_words(&self) -> [u32; 4] {
        let words = unsafe { core::ptr::addr_of!((*self.raw).user_ip6) }.cast::<u32>();
        // SAFETY: four consecutive u32 fields of the context.
        [0, 1, 2, 3].map(|i| Self::read(unsafe { words.add(i) }))
    }

    #[inline(always)]
    fn set_ip6_words(&self, address: [u32; 4]) {
        let words = unsafe { core::ptr::addr_of_mut!((*self.raw).user_ip6) }.cast::<u32>();
        for (i, word) in address.into_iter().enumerate() {
            // SAFETY: as in `ip6_words`; one 4-byte store each (volatile: never merged).
            Self::write(unsafe { words.add(i) }, word);
        }
    }

    /// The IPv6 address, or `Err` with the IPv4 address it maps (`::ffff:a.b.c.d`): an
    /// `AF_INET6` socket talking to an IPv4 peer, served from the IPv4 maps.
    #[inline(always)]
    pub(crate) fn ip6(&self) -> Result<[u8; 16], [u8; 4]> {
        let words = self.ip6_words();
        if words[..3] == V4_MAPPED {
            return Err(words[3].to_ne_bytes());
        }
        // Each word holds its four bytes in network order: together, the address.
        Ok(bytemuck::cast(words))
    }

    #[inline(always)]
    pub(crate) fn set_ip6(&self, address: [u8; 16]) {
        self.set_ip6_words(bytemuck::cast(address));
    }

    /// Writes `::ffff:<address>`.
    #[inline(always)]
    pub(crate) fn set_ip6_mapped(&self, address: [u8; 4]) {
        self.set_ip6_words([
            V4_MAPPED[0],
            V4_MAPPED[1],
            V4_MAPPED[2],
            u32::from_ne_bytes(address),
        ]);
    }

    /// The socket's cookie (unique for the kernel's uptime).
    #[inline(always)]
    pub(crate) fn cookie(&self) -> u64 {
        // SAFETY: the helper takes the hook's context.
        unsafe { bpf_get_socket_cookie(self.raw.cast()) }
    }

    /// The cookie of the socket's network namespace.
    #[inline(always)]
    pub(crate) fn netns_cookie(&self) -> u64 {
        // SAFETY: the helper takes the hook's context.
        unsafe { bpf_get_netns_cookie(self.raw.cast()) }
    }
}
