//! The synthetic cluster every end-to-end mode programs: N dual-stack ClusterIP Services, the
//! first N-1 with 10 endpoints each (pod addresses nobody answers on), the last one, the
//! target, backed by the real backend pods. The target comes last so that a layout walked in
//! order (kube-proxy's iptables KUBE-SERVICES chain) walks all the others first.
use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use twinstack_lab::{manifests, objects::ServiceBuilder};

pub(crate) const SERVICE_PORT: u16 = 80;
pub(crate) const BACKEND_PORT: u16 = 8080;
/// The target Service's NodePort (it is a NodePort Service; the others are ClusterIP ones).
pub(crate) const NODE_PORT: u16 = 30080;
pub(crate) const FILLER_ENDPOINTS: usize = 10;
pub(crate) const CLUSTER_CIDR_V4: &str = "10.244.0.0/16";
pub(crate) const CLUSTER_CIDR_V6: &str = "fd00:10:244::/56";
pub(crate) const SERVICE_CIDR_V4: &str = "10.96.0.0/12";
pub(crate) const SERVICE_CIDR_V6: &str = "fd00:10:96::/112";

pub(crate) struct Service {
    pub name: String,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    /// The endpoints' port (the Service's targetPort).
    pub target_port: u16,
    pub endpoints_v4: Vec<Ipv4Addr>,
    pub endpoints_v6: Vec<Ipv6Addr>,
}

impl Service {
    pub(crate) fn cluster_ip(&self, v6: bool) -> IpAddr {
        if v6 { self.v6.into() } else { self.v4.into() }
    }

    pub(crate) fn endpoints(&self, v6: bool) -> Vec<IpAddr> {
        if v6 {
            self.endpoints_v6.iter().map(|&a| a.into()).collect()
        } else {
            self.endpoints_v4.iter().map(|&a| a.into()).collect()
        }
    }
}

pub(crate) struct Cluster {
    pub services: Vec<Service>,
}

impl Cluster {
    /// `count` Services; the last one's endpoints are `target_v4` / `target_v6`.
    pub(crate) fn new(count: usize, target_v4: &[Ipv4Addr], target_v6: &[Ipv6Addr]) -> Self {
        // 10.244.16.0–10.244.255.255 has 61,440 addresses, a multiple of 10: Services whose
        // endpoints wrap around use the next port, so every (address, port) stays distinct.
        const ROOM: usize = 240 * 256;
        let base4 = u32::from(Ipv4Addr::new(10, 244, 16, 0));
        let base6 = u128::from("fd00:10:244:ff::".parse::<Ipv6Addr>().expect("IPv6"));
        let vip4 = u32::from(Ipv4Addr::new(10, 96, 0, 10));
        let vip6 = u128::from("fd00:10:96::a".parse::<Ipv6Addr>().expect("IPv6"));
        assert!(
            count <= 65_000,
            "the IPv6 service CIDR holds 65,536 addresses"
        );
        let services = (0..count)
            .map(|i| {
                let target = i + 1 == count;
                let first = i * FILLER_ENDPOINTS;
                // The target keeps the first address at every size: a client's TCP sequence
                // numbers and timestamps derive from the address it connects to, and the
                // backends' TIME_WAIT from the previous size would refuse SYNs whose numbers
                // came from another address.
                let address = if target { 0 } else { i + 1 };
                Service {
                    name: format!("svc-{i:05}"),
                    v4: Ipv4Addr::from(vip4 + address as u32),
                    v6: Ipv6Addr::from(vip6 + address as u128),
                    target_port: if target {
                        BACKEND_PORT
                    } else {
                        BACKEND_PORT + 1 + (first / ROOM) as u16
                    },
                    endpoints_v4: if target {
                        target_v4.to_vec()
                    } else {
                        (first..first + FILLER_ENDPOINTS)
                            .map(|k| Ipv4Addr::from(base4 + (k % ROOM) as u32))
                            .collect()
                    },
                    endpoints_v6: if target {
                        target_v6.to_vec()
                    } else {
                        (first..first + FILLER_ENDPOINTS)
                            .map(|k| Ipv6Addr::from(base6 + 1 + k as u128))
                            .collect()
                    },
                }
            })
            .collect();
        Self { services }
    }

    pub(crate) fn target(&self) -> &Service {
        self.services.last().expect("at least one Service")
    }

    /// Writes the Services and their EndpointSlices (one per family) as one multi-document
    /// YAML file in a new directory, removed when the guard drops.
    pub(crate) fn write_manifests(&self) -> std::io::Result<ManifestDir> {
        let dir = std::env::temp_dir().join(twinstack_lab::unique("twinstack-bench-manifests-"));
        std::fs::create_dir_all(&dir)?;
        let guard = ManifestDir(dir);
        let mut yaml = String::new();
        let target = self.target().name.clone();
        for s in &self.services {
            let ports = [("http", "TCP", SERVICE_PORT, s.target_port)];
            let mut service = ServiceBuilder::new(&s.name)
                .cluster_ips(&[s.v4.into(), s.v6.into()])
                .port("http", "TCP", SERVICE_PORT, s.target_port);
            if s.name == target {
                service = service.type_("NodePort").node_port("http", NODE_PORT);
            }
            let _ = writeln!(
                yaml,
                "---\n{}---\n{}---\n{}",
                service.yaml(),
                manifests::endpoint_slice(
                    &s.name,
                    &format!("{}-v4", s.name),
                    &s.endpoints(false),
                    &ports
                ),
                manifests::endpoint_slice(
                    &s.name,
                    &format!("{}-v6", s.name),
                    &s.endpoints(true),
                    &ports
                ),
            );
        }
        std::fs::write(guard.0.join("services.yaml"), yaml)?;
        Ok(guard)
    }
}

pub(crate) struct ManifestDir(PathBuf);

impl ManifestDir {
    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ManifestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
