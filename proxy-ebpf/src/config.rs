//! The load-time configuration: the agent sets [`CONFIG`] when it loads the object
//! (`EbpfLoader::set_global`); programs read it through [`get`]. It lives in `.rodata`, so a
//! read costs no map lookup.
use proxy_common::{config::DatapathConfig, conntrack::Timeouts};

/// Zero until the loader sets it. `#[used]` keeps the symbol in the object, so the loader can
/// always find it (it refuses to load an object without it).
#[unsafe(no_mangle)]
#[used]
pub(crate) static CONFIG: DatapathConfig = DatapathConfig::UNSET;

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
