//! Service and EndpointSlice manifests for a manifest directory, in the two shapes the
//! integration tests and the benchmark use most; both go through [`crate::objects`].
use std::{net::IpAddr, path::Path};

use crate::objects::{ServiceBuilder, SliceBuilder};

/// One service port: (name, protocol, port, target port).
pub type PortSpec<'a> = (&'a str, &'a str, u16, u16);

/// A ClusterIP Service with one cluster IP per given address (dual stack when two).
pub fn service(name: &str, cluster_ips: &[IpAddr], ports: &[PortSpec<'_>]) -> String {
    ports
        .iter()
        .fold(
            ServiceBuilder::new(name).cluster_ips(cluster_ips),
            |service, (port_name, protocol, port, target)| {
                service.port(port_name, protocol, *port, *target)
            },
        )
        .yaml()
}

/// An EndpointSlice of `service` holding `addresses` (one family), all ready, on `node-a`.
pub fn endpoint_slice(
    service: &str,
    slice: &str,
    addresses: &[IpAddr],
    ports: &[PortSpec<'_>],
) -> String {
    ports
        .iter()
        .fold(
            SliceBuilder::new(service, slice).ready(addresses),
            |slice, (port_name, protocol, _, target)| slice.port(port_name, protocol, *target),
        )
        .yaml()
}

/// Writes `name` in the manifest directory `dir` whole at once (a hidden partial file,
/// renamed): the agent's watch never reads half a file, nor a Service without its slices.
pub fn write_atomically(dir: &Path, name: &str, text: &str) {
    let partial = dir.join(format!(".{name}.partial"));
    std::fs::write(&partial, text).expect("writing a manifest");
    std::fs::rename(&partial, dir.join(name)).expect("renaming a manifest");
}
