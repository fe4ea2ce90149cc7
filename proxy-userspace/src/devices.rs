//! The node's devices (`--devices`) and NodePort addresses (`--nodeport-addresses`), from the
//! interfaces and addresses of the agent's network namespace and this node's Node. Read again on
//! every interface pass, so an address or device that comes later is picked up.
use std::{
    collections::BTreeSet,
    ffi::CStr,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use crate::{
    config::{InterfacePatterns, NodePortAddresses},
    family::Family,
    node::NodeInfo,
};

/// An address of an interface of this namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalAddress {
    pub interface: String,
    pub address: IpAddr,
}

/// Every IPv4 and IPv6 address of this namespace's interfaces (`getifaddrs(3)`).
pub fn local_addresses() -> io::Result<Vec<LocalAddress>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list freed below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut found = Vec::new();
    let mut entry = head;
    while !entry.is_null() {
        // SAFETY: a list entry of getifaddrs, valid until freeifaddrs; the address is read as
        // the sockaddr type its family names.
        unsafe {
            let ifa = &*entry;
            if !ifa.ifa_addr.is_null() && !ifa.ifa_name.is_null() {
                let address = match i32::from((*ifa.ifa_addr).sa_family) {
                    libc::AF_INET => {
                        let sin = &*ifa.ifa_addr.cast::<libc::sockaddr_in>();
                        Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                            sin.sin_addr.s_addr,
                        ))))
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*ifa.ifa_addr.cast::<libc::sockaddr_in6>();
                        Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
                    }
                    _ => None,
                };
                if let Some(address) = address {
                    found.push(LocalAddress {
                        interface: CStr::from_ptr(ifa.ifa_name).to_string_lossy().into_owned(),
                        address,
                    });
                }
            }
            entry = ifa.ifa_next;
        }
    }
    // SAFETY: the list getifaddrs returned, freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(found)
}

/// Loopback and link-local addresses: never a device's, never a NodePort's.
fn is_node_scope(address: &IpAddr) -> bool {
    match address {
        IpAddr::V4(a) => !a.is_loopback() && !a.is_link_local() && !a.is_unspecified(),
        IpAddr::V6(a) => !a.is_loopback() && !a.is_unicast_link_local() && !a.is_unspecified(),
    }
}

/// The devices: the interfaces matching `--devices`; by default those holding one of the
/// Node's addresses, or, while none does (no Node yet), every interface with a global address
/// that is not a pod interface.
pub fn devices(
    patterns: Option<&InterfacePatterns>,
    pods: &InterfacePatterns,
    interfaces: &[(u32, String)],
    addresses: &[LocalAddress],
    node: &NodeInfo,
) -> BTreeSet<String> {
    if let Some(patterns) = patterns {
        return interfaces
            .iter()
            .filter(|(_, name)| patterns.matches(name))
            .map(|(_, name)| name.clone())
            .collect();
    }
    let holding_node: BTreeSet<String> = addresses
        .iter()
        .filter(|a| node.addresses.contains(&a.address))
        .map(|a| a.interface.clone())
        .collect();
    if !holding_node.is_empty() {
        return holding_node;
    }
    addresses
        .iter()
        .filter(|a| is_node_scope(&a.address) && !pods.matches(&a.interface))
        .map(|a| a.interface.clone())
        .collect()
}

/// The addresses NodePorts are served on, as kube-proxy's `--nodeport-addresses` picks them:
/// by default every address of the devices; CIDRs: every address of the node inside one;
/// `primary`: the Node's first address of each family.
pub fn nodeport_addresses(
    spec: &NodePortAddresses,
    devices: &BTreeSet<String>,
    addresses: &[LocalAddress],
    node: &NodeInfo,
) -> Vec<IpAddr> {
    let mut chosen: Vec<IpAddr> = match spec {
        NodePortAddresses::Devices => addresses
            .iter()
            .filter(|a| devices.contains(&a.interface) && is_node_scope(&a.address))
            .map(|a| a.address)
            .collect(),
        NodePortAddresses::Cidrs(cidrs) => addresses
            .iter()
            .map(|a| a.address)
            .filter(|a| cidrs.iter().any(|c| c.contains(a)))
            .collect(),
        NodePortAddresses::Primary => Family::ALL
            .iter()
            .filter_map(|f| node.addresses.iter().find(|a| Family::of(a) == *f).copied())
            .collect(),
    };
    chosen.sort();
    chosen.dedup();
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(interface: &str, address: &str) -> LocalAddress {
        LocalAddress {
            interface: interface.into(),
            address: address.parse().unwrap(),
        }
    }

    fn lab() -> (Vec<(u32, String)>, Vec<LocalAddress>) {
        let interfaces = ["lo", "eth0", "eth1", "veth1"]
            .iter()
            .enumerate()
            .map(|(i, n)| (i as u32 + 1, (*n).to_owned()))
            .collect();
        let addresses = vec![
            at("lo", "127.0.0.1"),
            at("lo", "::1"),
            at("eth0", "198.51.100.1"),
            at("eth0", "2001:db8::1"),
            at("eth0", "fe80::1"),
            at("eth1", "10.0.0.1"),
            at("veth1", "10.244.1.1"),
        ];
        (interfaces, addresses)
    }

    fn names(set: &BTreeSet<String>) -> Vec<&str> {
        set.iter().map(String::as_str).collect()
    }

    #[test]
    fn devices_default_to_the_interfaces_of_the_node_addresses() {
        let (interfaces, addresses) = lab();
        let pods: InterfacePatterns = "veth*".parse().unwrap();
        let node = NodeInfo {
            addresses: vec!["198.51.100.1".parse().unwrap()],
            zone: None,
        };
        assert_eq!(
            names(&devices(None, &pods, &interfaces, &addresses, &node)),
            ["eth0"]
        );
        // No Node yet: every interface with a global address but the pods'.
        assert_eq!(
            names(&devices(
                None,
                &pods,
                &interfaces,
                &addresses,
                &NodeInfo::default()
            )),
            ["eth0", "eth1"]
        );
        let flag: InterfacePatterns = "eth*,none".parse().unwrap();
        assert_eq!(
            names(&devices(Some(&flag), &pods, &interfaces, &addresses, &node)),
            ["eth0", "eth1"]
        );
    }

    #[test]
    fn nodeport_addresses_follow_kube_proxy() {
        let (_, addresses) = lab();
        let devices: BTreeSet<String> = ["eth0".to_owned()].into();
        let node = NodeInfo {
            addresses: vec![
                "10.0.0.1".parse().unwrap(),
                "198.51.100.1".parse().unwrap(),
                "2001:db8::1".parse().unwrap(),
            ],
            zone: None,
        };
        let ips = |v: &[&str]| -> Vec<IpAddr> { v.iter().map(|a| a.parse().unwrap()).collect() };
        assert_eq!(
            nodeport_addresses(&NodePortAddresses::Devices, &devices, &addresses, &node),
            ips(&["198.51.100.1", "2001:db8::1"]),
            "every address of the devices, no link-local"
        );
        let cidrs: NodePortAddresses = "10.0.0.0/8,::1/128".parse().unwrap();
        assert_eq!(
            nodeport_addresses(&cidrs, &devices, &addresses, &node),
            ips(&["10.0.0.1", "10.244.1.1", "::1"])
        );
        let primary: NodePortAddresses = "primary".parse().unwrap();
        assert_eq!(
            nodeport_addresses(&primary, &devices, &addresses, &node),
            ips(&["10.0.0.1", "2001:db8::1"])
        );
    }
}
