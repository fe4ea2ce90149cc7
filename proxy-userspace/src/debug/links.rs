//! The pinned links: which program is attached where (an interface, a cgroup), read from the
//! kernel. aya 0.14's `LinkInfo` has no attach target, so the link's info is read with one
//! `BPF_OBJ_GET_INFO_BY_FD` call here.
use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use serde::Serialize;

use super::Table;
use crate::maps::pins::PinLayout;

// `enum bpf_cmd` and `enum bpf_link_type` (include/uapi/linux/bpf.h).
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_TYPE_CGROUP: u32 = 3;
const BPF_LINK_TYPE_TCX: u32 = 11;

#[derive(Debug, Serialize)]
pub struct LinkRow {
    /// The pin's file name (`<program>-<ifindex>-<ifname>` or `<program>-cgroup`).
    pub pin: String,
    pub link_id: u32,
    pub program_id: u32,
    pub kind: &'static str,
    /// The interface (TCX) or cgroup (its path under the cgroup v2 mount) attached to.
    pub target: String,
}

#[repr(C)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

fn bpf(command: libc::c_long, attr: *mut libc::c_void, size: usize) -> io::Result<libc::c_long> {
    // SAFETY: `attr` points to a bpf_attr prefix of `size` bytes for `command`.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, command, attr, size as libc::c_uint) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// (type, link id, program id, attach target word) of the link pinned at `path`.
fn link_info(path: &Path) -> io::Result<(u32, u32, u32, u64)> {
    let c_path = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::other("a NUL in the pin path"))?;
    let mut get = ObjGetAttr {
        pathname: c_path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    let fd = bpf(BPF_OBJ_GET, (&raw mut get).cast(), size_of::<ObjGetAttr>())?;
    // SAFETY: BPF_OBJ_GET returned a new descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // struct bpf_link_info: type, id, prog_id, then an 8-aligned union: cgroup_id (u64) for a
    // cgroup link, ifindex (u32) first for a TCX link.
    let mut info = [0u64; 16];
    let mut attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: size_of_val(&info) as u32,
        info: info.as_mut_ptr() as u64,
    };
    bpf(
        BPF_OBJ_GET_INFO_BY_FD,
        (&raw mut attr).cast(),
        size_of::<InfoAttr>(),
    )?;
    let words: [u32; 4] = bytemuck::cast([info[0], info[1]]);
    Ok((words[0], words[1], words[2], info[2]))
}

/// The cgroup v2 directory whose id (its inode) is `id`, searched under the mount.
fn cgroup_path(id: u64) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt as _;
    crate::config::cgroup_tree(&crate::config::cgroup2_mount()?)
        .into_iter()
        .find(|dir| std::fs::metadata(dir).is_ok_and(|m| m.ino() == id))
}

/// The interface a TC link is on: its name as the pin records it (`<program>-<ifindex>-<ifname>`;
/// the interface lives in the agent's namespace, not necessarily this command's) and the index
/// the kernel reports.
fn interface(pin: &str, index: u32) -> String {
    match pin.splitn(3, '-').nth(2) {
        Some(name) => format!("{name} (ifindex {index})"),
        None => format!("ifindex {index}"),
    }
}

/// Every link pinned under `pins`, with what it is attached to.
pub fn links(pins: &PinLayout) -> io::Result<Vec<LinkRow>> {
    let mut rows = Vec::new();
    let Ok(entries) = std::fs::read_dir(pins.links_dir()) else {
        return Ok(rows);
    };
    for entry in entries.filter_map(Result::ok) {
        let pin = entry.file_name().to_string_lossy().into_owned();
        let (kind, link_id, program_id, target) = link_info(&entry.path())?;
        let (kind, target) = match kind {
            BPF_LINK_TYPE_CGROUP => (
                "cgroup",
                cgroup_path(target)
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| format!("cgroup id {target}")),
            ),
            BPF_LINK_TYPE_TCX => ("tcx", interface(&pin, target as u32)),
            _ => ("other", String::new()),
        };
        rows.push(LinkRow {
            pin,
            link_id,
            program_id,
            kind,
            target,
        });
    }
    rows.sort_by(|a, b| a.pin.cmp(&b.pin));
    Ok(rows)
}

pub fn links_table(rows: &[LinkRow]) -> Table {
    let mut table = Table::new(["PIN", "LINK", "PROGRAM", "KIND", "ATTACHED TO"]);
    for row in rows {
        table.row([
            row.pin.clone(),
            row.link_id.to_string(),
            row.program_id.to_string(),
            row.kind.to_owned(),
            row.target.clone(),
        ]);
    }
    table
}
