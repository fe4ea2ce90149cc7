//! Service and EndpointSlice manifests as `kubectl get -o yaml` prints them, for tests and
//! benchmarks that need other shapes than `examples/`.
use std::{fmt::Write as _, net::IpAddr};

/// One service port: (name, protocol, port, target port).
pub type PortSpec<'a> = (&'a str, &'a str, u16, u16);

/// A ClusterIP Service with one cluster IP per given address (dual stack when two).
pub fn service(name: &str, cluster_ips: &[IpAddr], ports: &[PortSpec<'_>]) -> String {
    let families: Vec<&str> = cluster_ips
        .iter()
        .map(|ip| if ip.is_ipv4() { "IPv4" } else { "IPv6" })
        .collect();
    let policy = if cluster_ips.len() > 1 {
        "RequireDualStack"
    } else {
        "SingleStack"
    };
    let mut y = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  type: ClusterIP\n  ipFamilyPolicy: {policy}\n  clusterIP: {}\n  clusterIPs:\n",
        cluster_ips[0]
    );
    for ip in cluster_ips {
        let _ = writeln!(y, "    - {ip}");
    }
    y.push_str("  ipFamilies:\n");
    for f in families {
        let _ = writeln!(y, "    - {f}");
    }
    y.push_str("  ports:\n");
    for (port_name, protocol, port, target) in ports {
        let _ = write!(
            y,
            "    - name: {port_name}\n      protocol: {protocol}\n      port: {port}\n      targetPort: {target}\n"
        );
    }
    y
}

/// An EndpointSlice of `service` holding `addresses` (one family), all ready.
pub fn endpoint_slice(
    service: &str,
    slice: &str,
    addresses: &[IpAddr],
    ports: &[PortSpec<'_>],
) -> String {
    let family = match addresses.first() {
        Some(IpAddr::V6(_)) => "IPv6",
        _ => "IPv4",
    };
    let mut y = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {slice}\n  namespace: default\n  labels:\n    kubernetes.io/service-name: {service}\naddressType: {family}\nports:\n"
    );
    for (port_name, protocol, _, target) in ports {
        let _ = write!(
            y,
            "  - name: {port_name}\n    protocol: {protocol}\n    port: {target}\n"
        );
    }
    if addresses.is_empty() {
        y.push_str("endpoints: []\n");
    } else {
        y.push_str("endpoints:\n");
    }
    for address in addresses {
        let _ = write!(
            y,
            "  - addresses: [\"{address}\"]\n    conditions: {{ready: true, serving: true, terminating: false}}\n    nodeName: node-a\n"
        );
    }
    y
}
