//! Node configuration from flags, validated once: cluster CIDRs per family, interface globs,
//! the cgroup v2 directory socket-level load balancing serves.
use std::{
    fmt,
    path::{Path, PathBuf},
    str::FromStr,
};

use ipnet::IpNet;

use crate::family::Family;

/// `--cluster-cidr`: one CIDR, or two of different families.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterCidrs {
    pub v4: Option<IpNet>,
    pub v6: Option<IpNet>,
}

const CIDR_EXAMPLE: &str = "10.244.0.0/16,fd00:10:244::/56";

impl ClusterCidrs {
    pub fn families(&self) -> Vec<Family> {
        let mut families = Vec::new();
        if self.v4.is_some() {
            families.push(Family::V4);
        }
        if self.v6.is_some() {
            families.push(Family::V6);
        }
        families
    }
}

impl FromStr for ClusterCidrs {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = value.split(',').map(str::trim).collect();
        if parts.is_empty() || parts.len() > 2 || parts.iter().any(|p| p.is_empty()) {
            return Err(format!(
                "expected one CIDR or two of different families separated by a comma, e.g. {CIDR_EXAMPLE}"
            ));
        }
        let mut cidrs = ClusterCidrs { v4: None, v6: None };
        for part in parts {
            let net: IpNet = part
                .parse()
                .map_err(|_| format!("{part:?} is not a CIDR; expected e.g. {CIDR_EXAMPLE}"))?;
            let slot = match net {
                IpNet::V4(_) => &mut cidrs.v4,
                IpNet::V6(_) => &mut cidrs.v6,
            };
            if slot.is_some() {
                return Err(format!(
                    "two CIDRs of one family; a dual-stack cluster takes one IPv4 and one IPv6 CIDR, e.g. {CIDR_EXAMPLE}"
                ));
            }
            *slot = Some(net.trunc());
        }
        Ok(cidrs)
    }
}

impl fmt::Display for ClusterCidrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = [self.v4, self.v6]
            .iter()
            .flatten()
            .map(ToString::to_string)
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// `--pod-interfaces`: comma-separated glob patterns.
#[derive(Clone, Debug)]
pub struct InterfacePatterns(pub Vec<glob::Pattern>);

impl FromStr for InterfacePatterns {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let patterns = value
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| {
                glob::Pattern::new(p).map_err(|e| {
                    format!("{p:?} is not a glob pattern ({e}); expected e.g. veth*,lxc*")
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if patterns.is_empty() {
            return Err("expected at least one glob pattern, e.g. veth*,lxc*".into());
        }
        Ok(Self(patterns))
    }
}

impl InterfacePatterns {
    pub fn matches(&self, name: &str) -> bool {
        self.0.iter().any(|p| p.matches(name))
    }
}

/// `--nodeport-addresses`: which of the node's addresses serve NodePorts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum NodePortAddresses {
    /// Every address of the devices (`--devices`): the default.
    #[default]
    Devices,
    /// The node's addresses inside these CIDRs.
    Cidrs(Vec<ipnet::IpNet>),
    /// `primary`: the Node's primary address of each family.
    Primary,
}

impl FromStr for NodePortAddresses {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let expected = "expected CIDRs, e.g. 198.51.100.0/24,2001:db8::/64, or primary";
        if value.trim() == "primary" {
            return Ok(Self::Primary);
        }
        let cidrs = value
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(|c| {
                c.parse::<ipnet::IpNet>()
                    .map(|n| n.trunc())
                    .map_err(|_| format!("{c:?} is not a CIDR; {expected}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if cidrs.is_empty() {
            return Err(expected.into());
        }
        Ok(Self::Cidrs(cidrs))
    }
}

/// `--xdp`: how the XDP fast path is attached to the devices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpMode {
    /// In the driver (where it supports XDP), falling back to TC only where it does not.
    #[default]
    Native,
    /// In the kernel's generic XDP hook, on any device.
    Generic,
    /// No XDP: the devices' TC programs serve everything.
    Off,
}

/// `statfs(2)`'s `f_type` of a cgroup v2 filesystem.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Whether `path` is a directory of a cgroup v2 filesystem.
pub fn is_cgroup2(path: &Path) -> bool {
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into a zeroed struct we own.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statfs(c_path.as_ptr(), &mut stat) }) == 0
        && stat.f_type as i64 == CGROUP2_SUPER_MAGIC
}

/// Where cgroup v2 is mounted, from `/proc/self/mounts` (`/sys/fs/cgroup` on a pure v2 host,
/// `/sys/fs/cgroup/unified` on a hybrid one).
pub fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_, point, kind) = (fields.next()?, fields.next()?, fields.next()?);
        (kind == "cgroup2").then(|| PathBuf::from(point))
    })
}

/// Every cgroup directory under `root`, `root` first (bounded: a node has a few thousand).
pub fn cgroup_tree(root: &Path) -> Vec<PathBuf> {
    const MAX: usize = 100_000;
    let mut found = Vec::new();
    let mut pending = vec![root.to_owned()];
    while let Some(dir) = pending.pop() {
        if found.len() >= MAX {
            break;
        }
        if let Ok(entries) = std::fs::read_dir(&dir) {
            pending.extend(
                entries
                    .filter_map(Result::ok)
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
        found.push(dir);
    }
    found
}

/// `--cgroup-root`: checked to be a cgroup v2 directory, or found.
pub fn cgroup_root(flag: Option<PathBuf>) -> Result<PathBuf, String> {
    match flag {
        Some(path) if is_cgroup2(&path) => Ok(path),
        Some(path) => Err(format!(
            "--cgroup-root {}: not a cgroup v2 directory; expected the cgroup v2 mount or a \
             directory under it, e.g. /sys/fs/cgroup",
            path.display()
        )),
        None => cgroup2_mount().ok_or_else(|| {
            "no cgroup v2 filesystem is mounted (socket-level load balancing needs one): mount \
             it or pass --socket-lb false"
                .to_owned()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_cidrs_accept_one_or_one_per_family() {
        let one: ClusterCidrs = "10.244.0.0/16".parse().unwrap();
        assert_eq!(one.families(), vec![Family::V4]);
        let two: ClusterCidrs = "fd00:10:244::/56, 10.244.0.0/16".parse().unwrap();
        assert_eq!(two.families(), vec![Family::V4, Family::V6]);
        assert_eq!(two.to_string(), "10.244.0.0/16,fd00:10:244::/56");
    }

    #[test]
    fn cluster_cidrs_reject_bad_input_with_an_example() {
        for bad in [
            "",
            "10.244.0.0/16,10.245.0.0/16",
            "10.244.0.0/33",
            "banana",
            "a,b,c",
        ] {
            let error = bad.parse::<ClusterCidrs>().unwrap_err();
            assert!(error.contains(CIDR_EXAMPLE), "{bad}: {error}");
        }
    }

    #[test]
    fn interface_patterns_match_globs() {
        let p: InterfacePatterns = "veth*,lxc*".parse().unwrap();
        assert!(p.matches("veth1234"));
        assert!(p.matches("lxc_health"));
        assert!(!p.matches("eth0"));
        assert!("".parse::<InterfacePatterns>().is_err());
    }
}
