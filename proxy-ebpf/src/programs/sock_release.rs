//! `cgroup/sock_release`: a socket is closed for good; the reverse entry of the backend it was
//! connected to goes with it, so closed sockets do not fill the map. (Unconnected UDP sockets
//! name no peer here: their entries age out of the LRU map, least recently used first.) A
//! socket whose slot counts no entry ([`proxy_common::sock_slots`]) connected to no frontend,
//! and is spared the removal.
use aya_ebpf::{helpers::bpf_get_socket_cookie, macros::cgroup_sock, programs::SockContext};
use proxy_common::{V4, V6};

use crate::sock;

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

#[cgroup_sock(sock_release)]
pub(crate) fn sock_release(ctx: SockContext) -> i32 {
    let sk = ctx.sock;
    // SAFETY: fields of the socket the kernel hands the hook; 4-byte reads.
    let read = |field: *const u32| unsafe { core::ptr::read_volatile(field) };
    let family = read(unsafe { core::ptr::addr_of!((*sk).family) });
    // The peer port: network order, in the low half of its 32-bit word.
    let port = unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*sk).dst_port)) };
    if port == 0 {
        return 1; // Never connected.
    }
    // SAFETY: the helper takes the hook's context.
    let cookie = unsafe { bpf_get_socket_cookie(sk.cast()) };
    if !sock::may_hold_entry(cookie) {
        return 1; // Connected to no frontend: no entry to remove.
    }
    match family {
        AF_INET => {
            let address = read(unsafe { core::ptr::addr_of!((*sk).dst_ip4) }).to_ne_bytes();
            sock::release::<V4>(cookie, address, port);
        }
        AF_INET6 => {
            let words = unsafe { core::ptr::addr_of!((*sk).dst_ip6) }.cast::<u32>();
            let words = [0, 1, 2, 3].map(|i| read(unsafe { words.add(i) }));
            let address: [u8; 16] = bytemuck::cast(words);
            if address[..12] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff] {
                let v4 = [address[12], address[13], address[14], address[15]];
                sock::release::<V4>(cookie, v4, port);
            } else {
                sock::release::<V6>(cookie, address, port);
            }
        }
        _ => {}
    }
    1
}
