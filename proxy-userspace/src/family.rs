//! IP families. Sync logic is written once over [`Address`] and instantiated per family; which
//! families are served, and so which proxier a change reaches, is decided in one place: the
//! dispatcher (`proxier::MetaProxier`).
use std::{
    fmt,
    hash::Hash,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum Family {
    #[serde(rename = "IPv4")]
    V4,
    #[serde(rename = "IPv6")]
    V6,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    pub fn of(address: &IpAddr) -> Family {
        match address {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// The name Kubernetes uses in `spec.ipFamilies` and EndpointSlice `addressType`.
    pub fn kubernetes_name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    pub fn from_kubernetes_name(name: &str) -> Option<Family> {
        match name {
            "IPv4" => Some(Family::V4),
            "IPv6" => Some(Family::V6),
            _ => None,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kubernetes_name())
    }
}

/// An address of one family.
pub trait Address:
    Copy + Ord + Hash + fmt::Debug + fmt::Display + Into<IpAddr> + Send + Sync + 'static
{
    const FAMILY: Family;
    fn from_ip(address: IpAddr) -> Option<Self>;
}

impl Address for Ipv4Addr {
    const FAMILY: Family = Family::V4;
    fn from_ip(address: IpAddr) -> Option<Self> {
        match address {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        }
    }
}

impl Address for Ipv6Addr {
    const FAMILY: Family = Family::V6;
    fn from_ip(address: IpAddr) -> Option<Self> {
        match address {
            IpAddr::V6(a) => Some(a),
            IpAddr::V4(_) => None,
        }
    }
}

/// Formats `address:port` with brackets around IPv6 addresses.
pub fn socket_display(address: IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(address, port).to_string()
}
