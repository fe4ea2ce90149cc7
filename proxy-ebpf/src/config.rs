//! The load-time configuration: the agent sets [`CONFIG`] when it loads the object
//! (`EbpfLoader::set_global`); programs read it through [`get`]. It lives in `.rodata`, so a
//! read costs no map lookup.
use proxy_common::{config::DatapathConfig, conntrack::Timeouts};

/// Zero until the loader sets it. `#[used]` keeps the symbol in the object, so the loader can
/// always find it (it refuses to load an object without it).
#[unsafe(no_mangle)]
#[used]
pub(crate) static CONFIG: DatapathConfig = DatapathConfig {
    host_netns_cookie: 0,
    cluster_v4: [0; 4],
    cluster_v6: [0; 16],
    cluster_v4_prefix: 0,
    cluster_v6_prefix: 0,
    flags: 0,
    ct_timeouts: Timeouts {
        syn_sent: 0,
        established: 0,
        close_wait: 0,
        time_wait: 0,
        reset: 0,
        udp: 0,
        udp_stream: 0,
        other: 0,
    },
    snat_port_min: 0,
    snat_port_max: 0,
    _pad: [0; 4],
};

/// The configuration the agent loaded the programs with.
#[inline(always)]
pub(crate) fn get() -> DatapathConfig {
    // SAFETY: a volatile read of a static, so the compiler cannot fold the zeros above in.
    unsafe { core::ptr::read_volatile(&CONFIG) }
}

/// The conntrack lifetimes alone (a smaller read than the whole configuration).
#[inline(always)]
pub(crate) fn ct_timeouts() -> Timeouts {
    // SAFETY: as in `get`.
    unsafe { core::ptr::read_volatile(&raw const CONFIG.ct_timeouts) }
}

/// One field of the configuration: a smaller read than the whole (72 bytes of stack).
macro_rules! field {
    ($name:ident) => {
        // SAFETY: as in `get`.
        unsafe { core::ptr::read_volatile(&raw const $crate::config::CONFIG.$name) }
    };
}
pub(crate) use field;
