//! Loads the kernel programs of the program table (`proxy_common::programs::PROGRAMS`), checks
//! the object's maps against the map list, pins them, and attaches each program where the
//! table says (TCX links on the pod interfaces, pinned). Pinned links keep the datapath running
//! while the agent restarts; a new agent swaps its programs into the same links atomically, so
//! no packet goes untranslated. Load-time configuration reaches the programs as one value
//! ([`LoadOptions::config`]).
use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::CStr,
    io,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    programs::{
        CgroupAttachMode, CgroupSock, CgroupSockAddr, LinkOrder, SchedClassifier, TcAttachType,
        Xdp,
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
        xdp::XdpLink,
    },
};
use proxy_common::{
    LbFamily, V4,
    config::{self, DatapathConfig},
    map_names,
    maps::MAPS,
    programs::{self as program_names, AttachPoint, Hook, PROGRAMS, ProgramSpec},
};

use crate::{
    config::{InterfacePatterns, XdpMode},
    maps::pins::PinLayout,
};

/// The kernel programs, built by `build.rs`.
pub static BPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/twinstack-bpf"));

const BPF_FS_MAGIC: i64 = 0xcafe4a11;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "this binary was built without its kernel programs (AYA_BUILD_SKIP was set); rebuild with `cargo xtask build`"
    )]
    NoObject,
    #[error("{0} is not on a BPF filesystem; mount one first: mount -t bpf bpf /sys/fs/bpf")]
    NotBpffs(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("loading the kernel object: {0}")]
    Ebpf(#[from] aya::EbpfError),
    #[error("the kernel object has no map {0} (the object and proxy-common disagree)")]
    MapMissing(&'static str),
    #[error("map {name} does not have the declared shape: {detail}")]
    MapShape { name: &'static str, detail: String },
    #[error("map {name}: writing its first entries: {detail}")]
    MapSeed { name: &'static str, detail: String },
    #[error("program {name}: link: {detail}")]
    Link { name: &'static str, detail: String },
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> LoadError + '_ {
    move |source| LoadError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Fails unless `path` (or its nearest existing ancestor) is on a bpffs.
pub fn check_bpffs(path: &Path) -> Result<(), LoadError> {
    let existing = path
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    let c_path = std::ffi::CString::new(existing.as_os_str().as_encoded_bytes())
        .map_err(|_| LoadError::NotBpffs(path.to_owned()))?;
    // SAFETY: statfs writes into a zeroed struct we own.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(io_error(existing)(io::Error::last_os_error()));
    }
    if stat.f_type as i64 != BPF_FS_MAGIC {
        return Err(LoadError::NotBpffs(existing.to_owned()));
    }
    Ok(())
}

/// Mounts a bpffs at the parent of `bpf_root` when `bpf_root` is not on one and that parent
/// is an empty directory (as Cilium and Calico do: `ip netns exec` remounts /sys, hiding the
/// host's bpffs); otherwise the error says to mount one. Returns where it mounted, if it did. A bpffs mounted so lives as long as its mount namespace: the host's
/// is the one that keeps the datapath across restarts.
pub fn mount_bpffs_if_needed(bpf_root: &Path) -> Result<Option<PathBuf>, LoadError> {
    if check_bpffs(bpf_root).is_ok() {
        return Ok(None);
    }
    let parent = bpf_root.parent().unwrap_or(Path::new("/"));
    // Only over an empty directory (as /sys/fs/bpf is in the fresh sysfs of `ip netns
    // exec`): never over one that holds anything.
    let empty = match std::fs::read_dir(parent) {
        Ok(mut entries) => entries.next().is_none(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => true,
        Err(e) => return Err(io_error(parent)(e)),
    };
    if !empty {
        return check_bpffs(bpf_root).map(|()| None);
    }
    std::fs::create_dir_all(parent).map_err(io_error(parent))?;
    let target = std::ffi::CString::new(parent.as_os_str().as_encoded_bytes())
        .map_err(|_| LoadError::NotBpffs(parent.to_owned()))?;
    // SAFETY: NUL-terminated strings that outlive the call; no data argument.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io_error(parent)(io::Error::last_os_error()));
    }
    check_bpffs(bpf_root)?;
    Ok(Some(parent.to_owned()))
}

/// Interfaces of the current network namespace: (index, name).
pub fn interfaces() -> io::Result<Vec<(u32, String)>> {
    // SAFETY: if_nameindex returns an array terminated by a zero entry, freed below.
    unsafe {
        let head = libc::if_nameindex();
        if head.is_null() {
            return Err(io::Error::last_os_error());
        }
        let mut result = Vec::new();
        let mut entry = head;
        while (*entry).if_index != 0 && !(*entry).if_name.is_null() {
            let name = CStr::from_ptr((*entry).if_name)
                .to_string_lossy()
                .into_owned();
            result.push(((*entry).if_index, name));
            entry = entry.add(1);
        }
        libc::if_freenameindex(head);
        Ok(result)
    }
}

/// Options for [`Programs::load`].
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// `max_entries` overrides, by map name.
    pub max_entries: Vec<(&'static str, u32)>,
    /// The programs' load-time configuration.
    pub config: DatapathConfig,
}

fn tc_attach_type(hook: Hook) -> Option<TcAttachType> {
    match hook {
        Hook::TcIngress => Some(TcAttachType::Ingress),
        Hook::TcEgress => Some(TcAttachType::Egress),
        Hook::SockAddr(_) | Hook::SockRelease | Hook::Xdp => None,
    }
}

/// A TC link pin's file name: `<program>-<ifindex>-<ifname>`.
fn link_pin_name(program: &str, ifindex: u32, ifname: &str) -> String {
    format!("{program}-{ifindex}-{ifname}")
}

/// A cgroup link pin's file name: `<program>-cgroup`.
fn cgroup_pin_name(program: &str) -> String {
    format!("{program}-cgroup")
}

/// The name the first layout gave a TC link pin: `<ifindex>-<ingress|egress>-<ifname>`.
fn legacy_link_pin_name(spec: &ProgramSpec, ifindex: u32, ifname: &str) -> Option<String> {
    let direction = match spec.hook {
        Hook::TcIngress => "ingress",
        Hook::TcEgress => "egress",
        Hook::SockAddr(_) | Hook::SockRelease | Hook::Xdp => return None,
    };
    Some(format!("{ifindex}-{direction}-{ifname}"))
}

/// What a link pin under the links directory is.
#[derive(Debug, PartialEq, Eq)]
enum LinkPin {
    /// A TC program on an interface: (program, interface index, interface name), in either
    /// naming.
    Interface(&'static str, u32, String),
    /// A program on `--cgroup-root`.
    Cgroup(&'static str),
}

/// The driver of interface `name` (`ETHTOOL_GDRVINFO`), in the agent's network namespace.
fn driver(name: &str) -> Option<String> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_GDRVINFO: u32 = 3;
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        rest: [u8; 164],
    }
    let mut info = DrvInfo {
        cmd: ETHTOOL_GDRVINFO,
        driver: [0; 32],
        rest: [0; 164],
    };
    // SAFETY: a zeroed ifreq, its name copied in bounds (at most IFNAMSIZ - 1 bytes), its
    // data pointing at `info`, which outlives the ioctl; the socket is closed below.
    unsafe {
        let mut request: libc::ifreq = std::mem::zeroed();
        let bytes = name.as_bytes();
        if bytes.len() >= request.ifr_name.len() {
            return None;
        }
        for (slot, byte) in request.ifr_name.iter_mut().zip(bytes) {
            *slot = *byte as libc::c_char;
        }
        request.ifr_ifru.ifru_data = (&raw mut info).cast();
        let socket = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if socket < 0 {
            return None;
        }
        let rc = libc::ioctl(socket, SIOCETHTOOL, &mut request);
        libc::close(socket);
        if rc != 0 {
            return None;
        }
    }
    let end = info.driver.iter().position(|b| *b == 0).unwrap_or(32);
    Some(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

/// An error's causes, innermost last.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut causes = Vec::new();
    let mut source = error.source();
    while let Some(cause) = source {
        causes.push(cause.to_string());
        source = cause.source();
    }
    causes.join(": ")
}

/// Where the program named `program` is attached (the table says).
fn attach_point(program: &str) -> AttachPoint {
    PROGRAMS
        .iter()
        .find(|p| p.name == program)
        .map_or(AttachPoint::PodInterfaces, |p| p.on)
}

fn parse_link_pin_name(name: &str) -> Option<LinkPin> {
    if let Some(program) = name.strip_suffix("-cgroup") {
        let spec = PROGRAMS.iter().find(|p| p.name == program)?;
        return Some(LinkPin::Cgroup(spec.name));
    }
    let mut parts = name.splitn(3, '-');
    let (first, second, rest) = (parts.next()?, parts.next()?, parts.next()?.to_owned());
    if let Some(spec) = PROGRAMS.iter().find(|p| p.name == first) {
        return Some(LinkPin::Interface(spec.name, second.parse().ok()?, rest));
    }
    let program = match second {
        "ingress" => program_names::FROM_POD,
        "egress" => program_names::TO_POD,
        _ => return None,
    };
    Some(LinkPin::Interface(program, first.parse().ok()?, rest))
}

/// What one interface pass did.
#[derive(Debug, Default)]
pub struct InterfaceReport {
    pub attached: Vec<String>,
    pub detached: Vec<String>,
    pub errors: Vec<String>,
}

/// The loaded kernel programs (of [`PROGRAMS`]) and where they are attached.
pub struct Programs {
    ebpf: Ebpf,
    pins: PinLayout,
    /// Interfaces we have attached to, as pod interfaces or devices (→ name).
    attached: BTreeMap<(AttachPoint, u32), String>,
}

impl Programs {
    /// Loads every program of [`PROGRAMS`], opening (or creating) the pinned maps under `pins`
    /// and checking they are the maps of [`MAPS`].
    pub fn load(pins: &PinLayout, options: &LoadOptions) -> Result<Self, LoadError> {
        if BPF_OBJECT.is_empty() {
            return Err(LoadError::NoObject);
        }
        check_bpffs(pins.root())?;
        for dir in [pins.maps_dir(), pins.links_dir()] {
            std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        }
        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(pins.maps_dir());
        for (name, entries) in &options.max_entries {
            loader.map_max_entries(name, *entries);
        }
        loader.override_global(config::SYMBOL, &options.config, true);
        let upgrade = !pins.map(map_names::CT_RECENT).exists()
            && pins.map(<V4 as LbFamily>::CONNTRACK).exists();
        let sockets_upgrade = !pins.map(map_names::SOCK_SLOTS).exists()
            && pins.map(<V4 as LbFamily>::SOCK_REV).exists();
        let mut ebpf = loader.load(BPF_OBJECT)?;
        check_maps(&ebpf, pins)?;
        if upgrade {
            seed_recent(&mut ebpf)?;
        }
        if sockets_upgrade {
            seed_sock_slots(&mut ebpf)?;
        }
        mark_snat_sources(&mut ebpf)?;
        for spec in PROGRAMS {
            let program = ebpf.program_mut(spec.name).ok_or(LoadError::Program {
                name: spec.name,
                source: aya::programs::ProgramError::UnexpectedProgramType,
            })?;
            let loaded = match spec.hook {
                Hook::TcIngress | Hook::TcEgress => {
                    <&mut SchedClassifier>::try_from(program).and_then(|p| p.load())
                }
                Hook::SockAddr(_) => {
                    <&mut CgroupSockAddr>::try_from(program).and_then(|p| p.load())
                }
                Hook::SockRelease => <&mut CgroupSock>::try_from(program).and_then(|p| p.load()),
                Hook::Xdp => <&mut Xdp>::try_from(program).and_then(|p| p.load()),
            };
            loaded.map_err(|source| LoadError::Program {
                name: spec.name,
                source,
            })?;
        }
        Ok(Self {
            ebpf,
            pins: pins.clone(),
            attached: BTreeMap::new(),
        })
    }

    fn classifier_of<'a>(
        ebpf: &'a mut Ebpf,
        name: &'static str,
    ) -> Result<&'a mut SchedClassifier, LoadError> {
        let program = ebpf.program_mut(name).ok_or(LoadError::Program {
            name,
            source: aya::programs::ProgramError::UnexpectedProgramType,
        })?;
        program
            .try_into()
            .map_err(|source| LoadError::Program { name, source })
    }

    /// A loaded TC program by name (for `BPF_PROG_TEST_RUN` in the datapath tests and
    /// benchmarks).
    pub fn classifier(&mut self, name: &'static str) -> Result<&mut SchedClassifier, LoadError> {
        Self::classifier_of(&mut self.ebpf, name)
    }

    /// The loaded XDP program (for `BPF_PROG_TEST_RUN`).
    pub fn xdp(&mut self, name: &'static str) -> Result<&mut Xdp, LoadError> {
        let program = self.ebpf.program_mut(name).ok_or(LoadError::Program {
            name,
            source: aya::programs::ProgramError::UnexpectedProgramType,
        })?;
        program
            .try_into()
            .map_err(|source| LoadError::Program { name, source })
    }

    /// Attaches the pod-interface programs to every present interface matching `pods`, and the
    /// device programs to every present interface named in `devices`, where we are not
    /// attached yet; forgets (unpins) links of interfaces that are gone or no longer wanted.
    /// Links pinned by an earlier agent are taken over in place.
    pub fn sync_interfaces(
        &mut self,
        pods: &InterfacePatterns,
        devices: &BTreeSet<String>,
        xdp: XdpMode,
    ) -> InterfaceReport {
        let mut report = InterfaceReport::default();
        let present = match interfaces() {
            Ok(list) => list,
            Err(e) => {
                report.errors.push(format!("listing interfaces: {e}"));
                return report;
            }
        };
        let wanted: BTreeMap<(AttachPoint, u32), String> = present
            .into_iter()
            .flat_map(|(index, name)| {
                let pod = pods
                    .matches(&name)
                    .then(|| ((AttachPoint::PodInterfaces, index), name.clone()));
                let device = devices
                    .contains(&name)
                    .then(|| ((AttachPoint::Devices, index), name.clone()));
                pod.into_iter().chain(device)
            })
            .collect();

        // Pins of interfaces that are gone (or renamed, or no longer wanted).
        let links_dir = self.pins.links_dir();
        if let Ok(entries) = std::fs::read_dir(&links_dir) {
            for entry in entries.filter_map(Result::ok) {
                let file = entry.file_name().to_string_lossy().into_owned();
                let parsed = parse_link_pin_name(&file);
                let keep = match &parsed {
                    // `--xdp off`: an earlier agent's XDP link goes.
                    Some(LinkPin::Interface(program, _, _))
                        if *program == program_names::XDP_DEVICE && xdp == XdpMode::Off =>
                    {
                        false
                    }
                    Some(LinkPin::Interface(program, index, name)) => {
                        wanted.get(&(attach_point(program), *index)) == Some(name)
                    }
                    // Not an interface's: `attach_cgroup`/`detach_cgroup` own these.
                    Some(LinkPin::Cgroup(_)) => true,
                    None => false,
                };
                if !keep {
                    if let Err(e) = std::fs::remove_file(entry.path()) {
                        report.errors.push(format!("{file}: removing pin: {e}"));
                    }
                    if let Some(LinkPin::Interface(program, index, name)) = parsed
                        && self
                            .attached
                            .remove(&(attach_point(program), index))
                            .is_some()
                    {
                        report.detached.push(name);
                    }
                }
            }
        }
        self.attached
            .retain(|key, name| wanted.get(key) == Some(name));

        for ((on, index), name) in wanted {
            if self.attached.contains_key(&(on, index)) {
                continue;
            }
            let mut ok = true;
            for spec in PROGRAMS.iter().filter(|p| p.on == on) {
                if spec.hook == Hook::Xdp {
                    // Beside the TC programs: where it cannot attach, TC serves alone.
                    match self.attach_xdp(spec, index, &name, xdp) {
                        Ok(Some(mode)) => report.attached.push(format!("{name} (XDP {mode})")),
                        Ok(None) => {}
                        Err(e) => report.errors.push(format!(
                            "{name}: XDP ({xdp:?}) not attached, TC serves this device alone: {e}"
                        )),
                    }
                    continue;
                }
                if let Err(e) = self.attach_tc(spec, index, &name) {
                    report
                        .errors
                        .push(format!("{name}: attaching {}: {e}", spec.name));
                    ok = false;
                }
            }
            if ok {
                self.attached.insert((on, index), name.clone());
                report.attached.push(match on {
                    AttachPoint::Devices => format!("{name} (device)"),
                    _ => name,
                });
            }
        }
        report
    }

    fn attach_tc(&mut self, spec: &ProgramSpec, ifindex: u32, ifname: &str) -> Result<(), String> {
        let links = self.pins.links_dir();
        let pin = links.join(link_pin_name(spec.name, ifindex, ifname));
        let earlier = std::iter::once(pin.clone())
            .chain(legacy_link_pin_name(spec, ifindex, ifname).map(|n| links.join(n)))
            .find_map(|path| PinnedLink::from_pin(&path).ok());
        let program = Self::classifier_of(&mut self.ebpf, spec.name).map_err(|e| e.to_string())?;
        let attach_type = tc_attach_type(spec.hook).ok_or("not a TC program")?;
        let link_id = match earlier {
            // An earlier agent's link: swap our program in atomically.
            Some(old) => {
                let fd_link = old
                    .unpin()
                    .map_err(|e| format!("unpinning old link: {e}"))?;
                let link = SchedClassifierLink::try_from(fd_link).map_err(|e| e.to_string())?;
                program.attach_to_link(link).map_err(|e| e.to_string())?
            }
            None => program
                .attach_with_options(
                    ifname,
                    attach_type,
                    TcAttachOptions::TcxOrder(LinkOrder::default()),
                )
                .map_err(|e| e.to_string())?,
        };
        let link = program.take_link(link_id).map_err(|e| e.to_string())?;
        let fd_link = FdLink::try_from(link).map_err(|e| e.to_string())?;
        fd_link
            .pin(&pin)
            .map_err(|e| format!("pinning link at {}: {e}", pin.display()))?;
        Ok(())
    }

    /// Attaches the XDP program to a device in `mode` (taking over an earlier agent's link,
    /// whatever its mode) and pins the link; `None` for `--xdp off`.
    fn attach_xdp(
        &mut self,
        spec: &ProgramSpec,
        ifindex: u32,
        ifname: &str,
        mode: XdpMode,
    ) -> Result<Option<&'static str>, String> {
        let (flags, shown) = match mode {
            XdpMode::Off => return Ok(None),
            XdpMode::Native => (aya::programs::XdpMode::Driver, "native"),
            XdpMode::Generic => (aya::programs::XdpMode::Skb, "generic"),
        };
        if mode == XdpMode::Native && driver(ifname).as_deref() == Some("veth") {
            // A veth takes native XDP, but a frame it redirects to another veth is dropped
            // unless that one's peer runs XDP too (a pod's never does).
            return Err(
                "native XDP on a veth cannot redirect to pods (their veths run no XDP); use \
                 --xdp generic for XDP on veth devices"
                    .into(),
            );
        }
        let pin = self
            .pins
            .links_dir()
            .join(link_pin_name(spec.name, ifindex, ifname));
        let earlier = PinnedLink::from_pin(&pin).ok();
        let program = self
            .ebpf
            .program_mut(spec.name)
            .ok_or("not in the object")?;
        let program = <&mut Xdp>::try_from(program).map_err(|e| e.to_string())?;
        let link_id = match earlier {
            Some(old) => {
                let fd_link = old
                    .unpin()
                    .map_err(|e| format!("unpinning old link: {e}"))?;
                let link = XdpLink::try_from(fd_link).map_err(|e| e.to_string())?;
                program.attach_to_link(link).map_err(|e| e.to_string())?
            }
            None => program
                .attach(ifname, flags)
                .map_err(|e| format!("{e} ({})", error_chain(&e)))?,
        };
        let link = program.take_link(link_id).map_err(|e| e.to_string())?;
        let fd_link = FdLink::try_from(link).map_err(|e| e.to_string())?;
        fd_link
            .pin(&pin)
            .map_err(|e| format!("pinning link at {}: {e}", pin.display()))?;
        Ok(Some(shown))
    }

    pub fn attached(&self) -> impl Iterator<Item = &str> {
        self.attached.values().map(String::as_str)
    }

    /// The devices (of `--devices`) the device programs are attached to.
    pub fn devices(&self) -> impl Iterator<Item = &str> {
        self.attached
            .iter()
            .filter(|((on, _), _)| *on == AttachPoint::Devices)
            .map(|(_, name)| name.as_str())
    }

    /// Attaches the socket programs to the cgroup v2 directory `cgroup` (every socket its
    /// processes create from now on is served) and pins their links as `<program>-cgroup`. An
    /// earlier agent's links (to this cgroup or another) are replaced: ours are attached first,
    /// then theirs removed, so no socket call goes unserved (a second translation of one call
    /// is a miss: its destination is a backend by then).
    pub fn attach_cgroup(&mut self, cgroup: &Path) -> Result<(), LoadError> {
        let directory = std::fs::File::open(cgroup).map_err(io_error(cgroup))?;
        for spec in PROGRAMS.iter().filter(|p| p.on == AttachPoint::Cgroup) {
            let program = self.ebpf.program_mut(spec.name).ok_or(LoadError::Program {
                name: spec.name,
                source: aya::programs::ProgramError::UnexpectedProgramType,
            })?;
            let error = |source| LoadError::Program {
                name: spec.name,
                source,
            };
            // `Single`: aya passes the mode as link flags, which cgroup links refuse; a link
            // is multi-attach anyway.
            let link: FdLink = match spec.hook {
                // The attach type comes from the program's section (`cgroup/connect4`, ...).
                Hook::SockAddr(_) => {
                    let program = <&mut CgroupSockAddr>::try_from(program).map_err(error)?;
                    let id = program
                        .attach(&directory, CgroupAttachMode::Single)
                        .map_err(error)?;
                    FdLink::try_from(program.take_link(id).map_err(error)?).map_err(|e| {
                        LoadError::Link {
                            name: spec.name,
                            detail: e.to_string(),
                        }
                    })?
                }
                Hook::SockRelease => {
                    let program = <&mut CgroupSock>::try_from(program).map_err(error)?;
                    let id = program
                        .attach(&directory, CgroupAttachMode::Single)
                        .map_err(error)?;
                    FdLink::try_from(program.take_link(id).map_err(error)?).map_err(|e| {
                        LoadError::Link {
                            name: spec.name,
                            detail: e.to_string(),
                        }
                    })?
                }
                Hook::TcIngress | Hook::TcEgress | Hook::Xdp => continue,
            };
            let pin = self.pins.links_dir().join(cgroup_pin_name(spec.name));
            if let Ok(old) = PinnedLink::from_pin(&pin) {
                // Dropping the unpinned link detaches it.
                drop(old.unpin());
            }
            link.pin(&pin).map_err(|e| LoadError::Link {
                name: spec.name,
                detail: format!("pinning at {}: {e}", pin.display()),
            })?;
        }
        Ok(())
    }

    /// Detaches the socket programs (`--socket-lb false`): removes their link pins.
    pub fn detach_cgroup(&self) -> Result<usize, LoadError> {
        let links = self.pins.links_dir();
        let mut removed = 0;
        for spec in PROGRAMS.iter().filter(|p| p.on == AttachPoint::Cgroup) {
            let pin = links.join(cgroup_pin_name(spec.name));
            if pin.exists() {
                std::fs::remove_file(&pin).map_err(io_error(&pin))?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// Marks every slot of a new [`map_names::CT_RECENT`] as moved now, when it joins conntrack
/// maps an older agent's programs filled without it (an upgrade): their flows' replies keep
/// their lookup for as long as any of those flows can live, not one is passed untranslated.
/// Runs before any program of this object is attached.
fn seed_recent(ebpf: &mut Ebpf) -> Result<(), LoadError> {
    let name = map_names::CT_RECENT;
    let error = |detail: String| LoadError::MapSeed { name, detail };
    let map = ebpf.map_mut(name).ok_or(LoadError::MapMissing(name))?;
    let mut slots = aya::maps::Array::<_, u64>::try_from(map).map_err(|e| error(e.to_string()))?;
    let now = crate::conntrack::monotonic_ns();
    for slot in 0..proxy_common::conntrack::recent::SLOTS {
        slots.set(slot, now, 0).map_err(|e| error(e.to_string()))?;
    }
    Ok(())
}

/// Counts, in a new [`map_names::SOCK_SLOTS`], the socket reverse entries an older agent's
/// programs made without it (an upgrade), so the close of each of those sockets still removes
/// its entry. Runs before any program of this object is attached.
fn seed_sock_slots(ebpf: &mut Ebpf) -> Result<(), LoadError> {
    use proxy_common::{SockRevKey, SockRevValue, V6, sock_slots};
    fn cookies<A>(ebpf: &Ebpf, name: &'static str) -> Result<Vec<u64>, LoadError>
    where
        SockRevKey<A>: aya::Pod,
        SockRevValue<A>: aya::Pod,
    {
        let error = |detail: String| LoadError::MapSeed { name, detail };
        let map = ebpf.map(name).ok_or(LoadError::MapMissing(name))?;
        let entries = aya::maps::HashMap::<_, SockRevKey<A>, SockRevValue<A>>::try_from(map)
            .map_err(|e| error(e.to_string()))?;
        entries
            .keys()
            .map(|key| {
                key.map(|key| u64::from_ne_bytes(key.cookie))
                    .map_err(|e| error(e.to_string()))
            })
            .collect()
    }
    let mut counts = std::collections::BTreeMap::<u32, u64>::new();
    let found = [
        cookies::<[u8; 4]>(ebpf, <V4 as LbFamily>::SOCK_REV)?,
        cookies::<[u8; 16]>(ebpf, <V6 as LbFamily>::SOCK_REV)?,
    ];
    for cookie in found.into_iter().flatten() {
        *counts.entry(sock_slots::slot(cookie)).or_default() += 1;
    }
    let name = map_names::SOCK_SLOTS;
    let error = |detail: String| LoadError::MapSeed { name, detail };
    let map = ebpf.map_mut(name).ok_or(LoadError::MapMissing(name))?;
    let mut slots = aya::maps::Array::<_, u64>::try_from(map).map_err(|e| error(e.to_string()))?;
    for (slot, count) in counts {
        slots
            .set(slot, count, 0)
            .map_err(|e| error(e.to_string()))?;
    }
    Ok(())
}

/// Marks, in [`map_names::SNAT_MARKS`], every masquerade source an agent's programs recorded,
/// before any program of this object is attached: a new marks map beside an older agent's
/// sources (an upgrade) then misses none of their flows' replies. Marks are only ever set,
/// so doing it at every load is harmless, and spares telling an upgrade apart.
fn mark_snat_sources(ebpf: &mut Ebpf) -> Result<(), LoadError> {
    use proxy_common::{map_names::SNAT_SOURCES_V4, map_names::SNAT_SOURCES_V6, snat_marks};
    fn slots<A: proxy_common::RawAddress + aya::Pod>(
        ebpf: &Ebpf,
        name: &'static str,
    ) -> Result<Vec<u32>, LoadError> {
        let error = |detail: String| LoadError::MapSeed { name, detail };
        let map = ebpf.map(name).ok_or(LoadError::MapMissing(name))?;
        let sources =
            aya::maps::HashMap::<_, A, u8>::try_from(map).map_err(|e| error(e.to_string()))?;
        sources
            .keys()
            .map(|key| key.map(snat_marks::slot).map_err(|e| error(e.to_string())))
            .collect()
    }
    let found = [
        slots::<[u8; 4]>(ebpf, SNAT_SOURCES_V4)?,
        slots::<[u8; 16]>(ebpf, SNAT_SOURCES_V6)?,
    ];
    let name = map_names::SNAT_MARKS;
    let error = |detail: String| LoadError::MapSeed { name, detail };
    let map = ebpf.map_mut(name).ok_or(LoadError::MapMissing(name))?;
    let mut marks = aya::maps::Array::<_, u32>::try_from(map).map_err(|e| error(e.to_string()))?;
    for slot in found.into_iter().flatten() {
        marks
            .set(slot, snat_marks::MARKED, 0)
            .map_err(|e| error(e.to_string()))?;
    }
    Ok(())
}

/// Fails unless the object holds every map of [`MAPS`], each of the declared shape.
fn check_maps(ebpf: &Ebpf, pins: &PinLayout) -> Result<(), LoadError> {
    for spec in MAPS {
        if ebpf.map(spec.name).is_none() {
            return Err(LoadError::MapMissing(spec.name));
        }
        let info = aya::maps::MapInfo::from_pin(pins.map(spec.name)).map_err(|source| {
            LoadError::MapShape {
                name: spec.name,
                detail: format!("cannot read its pin: {source}"),
            }
        })?;
        if (info.key_size(), info.value_size()) != (spec.key_size, spec.value_size) {
            return Err(LoadError::MapShape {
                name: spec.name,
                detail: format!(
                    "key/value sizes {}/{}, expected {}/{}",
                    info.key_size(),
                    info.value_size(),
                    spec.key_size,
                    spec.value_size
                ),
            });
        }
    }
    Ok(())
}

/// Detaches every program (by removing the link pins) and removes the map pins under `pins`.
/// Returns what it removed.
pub fn cleanup(pins: &PinLayout) -> Result<Vec<PathBuf>, LoadError> {
    let mut removed = Vec::new();
    let root = pins.root();
    if !root.exists() {
        return Ok(removed);
    }
    // Links first: traffic stops being translated before its maps go.
    let mut dirs = Vec::new();
    for version in std::fs::read_dir(root)
        .map_err(io_error(root))?
        .filter_map(Result::ok)
    {
        let version = version.path();
        if !version.is_dir() {
            continue;
        }
        for kind in ["links", "maps"] {
            dirs.push(version.join(kind));
        }
    }
    dirs.sort_by_key(|d| !d.ends_with("links"));
    for dir in &dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            std::fs::remove_file(&path).map_err(io_error(&path))?;
            removed.push(path);
        }
        std::fs::remove_dir(dir).map_err(io_error(dir))?;
    }
    for version in std::fs::read_dir(root)
        .map_err(io_error(root))?
        .filter_map(Result::ok)
    {
        let _ = std::fs::remove_dir(version.path());
    }
    let _ = std::fs::remove_dir(root);
    Ok(removed)
}
