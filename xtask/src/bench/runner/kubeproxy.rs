//! kube-proxy's two netfilter layouts for the same Services, written by us from kube-proxy's
//! documented layout (pkg/proxy/iptables and pkg/proxy/nftables), loaded the way kube-proxy
//! loads them: one `iptables-restore` / `ip6tables-restore` per family, one `nft -f`
//! transaction per family.
//!
//! iptables mode: KUBE-SERVICES holds one rule per service port, walked in order for every new
//! connection; each jumps to KUBE-SVC-<hash>, which marks off-cluster sources for masquerade
//! and picks an endpoint with `-m statistic --mode random --probability 1/(n-i)`, then
//! KUBE-SEP-<hash> DNATs. nftables mode: one `service-ips` verdict map lookup, then a
//! `service-<hash>-ns/name/tcp/port` chain with `numgen random mod N vmap` to an
//! `endpoint-<hash>-…` chain that DNATs.
use std::{
    fmt::Write as _,
    io::Write as _,
    net::IpAddr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use sha2::{Digest, Sha256};
use twinstack_lab::netns::Netns;

use crate::cluster::{
    CLUSTER_CIDR_V4, CLUSTER_CIDR_V6, Cluster, NODE_PORT, SERVICE_CIDR_V4, SERVICE_CIDR_V6,
    SERVICE_PORT, Service,
};

const NAMESPACE: &str = "default";
const PORT_NAME: &str = "http";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Layout {
    Iptables,
    Nftables,
}

impl Layout {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Layout::Iptables => "iptables",
            Layout::Nftables => "nftables",
        }
    }
}

/// kube-proxy's chain-name hash: base32(sha256(input)), cut to `length` characters.
fn hash(input: &str, length: usize) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let digest = Sha256::digest(input.as_bytes());
    let mut out = String::with_capacity(length);
    let (mut buffer, mut bits) = (0u32, 0);
    for byte in digest {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 && out.len() < length {
            bits -= 5;
            out.push(ALPHABET[((buffer >> bits) & 31) as usize] as char);
        }
    }
    out
}

/// `ns/name:port`, kube-proxy's ServicePortName string.
fn service_port_name(service: &Service) -> String {
    format!("{NAMESPACE}/{}:{PORT_NAME}", service.name)
}

fn socket(address: IpAddr, port: u16) -> String {
    match address {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

/// `iptables-restore` input (filter and nat tables) for one family.
pub(crate) fn iptables_rules(cluster: &Cluster, v6: bool) -> String {
    let (cluster_cidr, host_bits) = if v6 {
        (CLUSTER_CIDR_V6, 128)
    } else {
        (CLUSTER_CIDR_V4, 32)
    };
    let filter = String::from(
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
:KUBE-EXTERNAL-SERVICES - [0:0]\n:KUBE-FORWARD - [0:0]\n:KUBE-NODEPORTS - [0:0]\n\
:KUBE-PROXY-FIREWALL - [0:0]\n:KUBE-SERVICES - [0:0]\n:KUBE-PROXY-CANARY - [0:0]\n\
-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n\
-A INPUT -m comment --comment \"kubernetes health check service ports\" -j KUBE-NODEPORTS\n\
-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES\n\
-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n\
-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n\
-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES\n\
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n\
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n\
-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT\n\
-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
COMMIT\n",
    );
    let mut chains = String::from(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n\
:KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n",
    );
    let rules = String::from(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n\
-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n\
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n",
    );
    let mut services = String::new();
    let mut per_service = String::new();
    for service in &cluster.services {
        let name = service_port_name(service);
        let svc_chain = format!("KUBE-SVC-{}", hash(&format!("{name}tcp"), 16));
        let vip = service.cluster_ip(v6);
        let _ = writeln!(chains, ":{svc_chain} - [0:0]");
        let _ = writeln!(
            services,
            "-A KUBE-SERVICES -m comment --comment \"{name} cluster IP\" -m tcp -p tcp -d {vip}/{host_bits} --dport {SERVICE_PORT} -j {svc_chain}"
        );
        let _ = writeln!(
            per_service,
            "-A {svc_chain} -m comment --comment \"{name} cluster IP\" -m tcp -p tcp -d {vip}/{host_bits} --dport {SERVICE_PORT} ! -s {cluster_cidr} -j KUBE-MARK-MASQ"
        );
        if service.name == cluster.target().name {
            // The target is a NodePort Service (externalTrafficPolicy: Cluster): its
            // KUBE-EXT chain masquerades, then balances as the cluster IP does.
            let ext_chain = format!("KUBE-EXT-{}", hash(&format!("{name}tcp"), 16));
            let _ = writeln!(chains, ":{ext_chain} - [0:0]");
            let _ = writeln!(
                per_service,
                "-A KUBE-NODEPORTS -m comment --comment {name} -m tcp -p tcp --dport {NODE_PORT} -j {ext_chain}\n\
-A {ext_chain} -m comment --comment \"masquerade traffic for {name} external destinations\" -j KUBE-MARK-MASQ\n\
-A {ext_chain} -j {svc_chain}"
            );
        }
        let endpoints = service.endpoints(v6);
        let n = endpoints.len();
        for (i, endpoint) in endpoints.iter().enumerate() {
            let target = socket(*endpoint, service.target_port);
            let sep_chain = format!("KUBE-SEP-{}", hash(&format!("{name}tcp{target}"), 16));
            let _ = writeln!(chains, ":{sep_chain} - [0:0]");
            if i + 1 < n {
                let _ = writeln!(
                    per_service,
                    "-A {svc_chain} -m comment --comment \"{name} -> {target}\" -m statistic --mode random --probability {:.10} -j {sep_chain}",
                    1.0 / (n - i) as f64
                );
            } else {
                let _ = writeln!(
                    per_service,
                    "-A {svc_chain} -m comment --comment \"{name} -> {target}\" -j {sep_chain}"
                );
            }
            let _ = writeln!(
                per_service,
                "-A {sep_chain} -m comment --comment {name} -s {endpoint}/{host_bits} -j KUBE-MARK-MASQ\n\
-A {sep_chain} -m comment --comment {name} -m tcp -p tcp -j DNAT --to-destination {target}"
            );
        }
    }
    services.push_str(
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n",
    );
    format!("{filter}{chains}{rules}{services}{per_service}COMMIT\n")
}

/// `nft -f` input (one `kube-proxy` table) for one family.
pub(crate) fn nftables_script(cluster: &Cluster, v6: bool) -> String {
    let (family, ip, addr_type, cluster_cidr, service_cidr, loopback) = if v6 {
        (
            "ip6",
            "ip6",
            "ipv6_addr",
            CLUSTER_CIDR_V6,
            SERVICE_CIDR_V6,
            "::1",
        )
    } else {
        (
            "ip",
            "ip",
            "ipv4_addr",
            CLUSTER_CIDR_V4,
            SERVICE_CIDR_V4,
            "127.0.0.0/8",
        )
    };
    let table = format!("{family} kube-proxy");
    let mut s = String::new();
    // Create-then-delete makes the load idempotent (kube-proxy flushes its table the same way).
    let _ = writeln!(
        s,
        "add table {table} {{ comment \"rules for kube-proxy\" ; }}"
    );
    let _ = writeln!(s, "delete table {table}");
    let _ = writeln!(
        s,
        "add table {table} {{ comment \"rules for kube-proxy\" ; }}"
    );
    for (chain, spec) in [
        // kube-proxy's priorities (dstnat - 10, filter - 10, dstnat + 10, dstnat, srcnat),
        // numeric because nft 1.0 only accepts the names on some hooks.
        (
            "filter-prerouting",
            "type filter hook prerouting priority -110 ;",
        ),
        ("filter-input", "type filter hook input priority -10 ;"),
        ("filter-forward", "type filter hook forward priority -10 ;"),
        ("filter-output", "type filter hook output priority -10 ;"),
        (
            "filter-output-post-dnat",
            "type filter hook output priority -90 ;",
        ),
        ("nat-prerouting", "type nat hook prerouting priority -100 ;"),
        ("nat-output", "type nat hook output priority -100 ;"),
        (
            "nat-postrouting",
            "type nat hook postrouting priority 100 ;",
        ),
        ("mark-for-masquerade", ""),
        ("masquerading", ""),
        ("services", ""),
        ("service-endpoints-check", ""),
        ("nodeport-endpoints-check", ""),
        ("firewall-check", ""),
        ("cluster-ips-check", ""),
        ("reject-chain", ""),
    ] {
        if spec.is_empty() {
            let _ = writeln!(s, "add chain {table} {chain}");
        } else {
            let _ = writeln!(s, "add chain {table} {chain} {{ {spec} }}");
        }
    }
    for (set, comment) in [
        ("cluster-ips", "Active ClusterIPs"),
        ("nodeport-ips", "IPs that accept NodePort traffic"),
    ] {
        let _ = writeln!(
            s,
            "add set {table} {set} {{ type {addr_type} ; comment \"{comment}\" ; }}"
        );
    }
    for (map, key) in [
        (
            "no-endpoint-services",
            format!("{addr_type} . inet_proto . inet_service"),
        ),
        ("no-endpoint-nodeports", "inet_proto . inet_service".into()),
        (
            "firewall-ips",
            format!("{addr_type} . inet_proto . inet_service"),
        ),
        (
            "service-ips",
            format!("{addr_type} . inet_proto . inet_service"),
        ),
        ("service-nodeports", "inet_proto . inet_service".into()),
    ] {
        let _ = writeln!(s, "add map {table} {map} {{ type {key} : verdict ; }}");
    }
    for (chain, rule) in [
        (
            "filter-prerouting",
            "ct state new jump firewall-check".to_owned(),
        ),
        (
            "filter-input",
            "ct state new jump nodeport-endpoints-check".to_owned(),
        ),
        (
            "filter-input",
            "ct state new jump service-endpoints-check".to_owned(),
        ),
        (
            "filter-forward",
            "ct state new jump service-endpoints-check".to_owned(),
        ),
        (
            "filter-forward",
            "ct state new jump cluster-ips-check".to_owned(),
        ),
        (
            "filter-output",
            "ct state new jump service-endpoints-check".to_owned(),
        ),
        (
            "filter-output",
            "ct state new jump firewall-check".to_owned(),
        ),
        (
            "filter-output-post-dnat",
            "ct state new jump cluster-ips-check".to_owned(),
        ),
        ("nat-prerouting", "jump services".to_owned()),
        ("nat-output", "jump services".to_owned()),
        ("nat-postrouting", "jump masquerading".to_owned()),
        (
            "mark-for-masquerade",
            "meta mark set meta mark | 0x4000".to_owned(),
        ),
        ("masquerading", "meta mark & 0x4000 == 0 return".to_owned()),
        (
            "masquerading",
            "meta mark set meta mark ^ 0x4000".to_owned(),
        ),
        ("masquerading", "masquerade fully-random".to_owned()),
        (
            "services",
            format!("{ip} daddr . meta l4proto . th dport vmap @service-ips"),
        ),
        (
            "services",
            format!(
                "fib daddr type local {ip} daddr != {loopback} meta l4proto . th dport vmap @service-nodeports"
            ),
        ),
        (
            "service-endpoints-check",
            format!("{ip} daddr . meta l4proto . th dport vmap @no-endpoint-services"),
        ),
        (
            "nodeport-endpoints-check",
            format!("{ip} daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports"),
        ),
        (
            "firewall-check",
            format!("{ip} daddr . meta l4proto . th dport vmap @firewall-ips"),
        ),
        (
            "cluster-ips-check",
            format!("{ip} daddr @cluster-ips reject"),
        ),
        (
            "cluster-ips-check",
            format!("{ip} daddr {{ {service_cidr} }} drop"),
        ),
        ("reject-chain", "reject".to_owned()),
    ] {
        let _ = writeln!(s, "add rule {table} {chain} {rule}");
    }
    for service in &cluster.services {
        let base = format!("{NAMESPACE}/{}/tcp/{PORT_NAME}", service.name);
        let svc_chain = format!("service-{}-{base}", hash(&base, 8));
        let vip = service.cluster_ip(v6);
        let _ = writeln!(s, "add chain {table} {svc_chain}");
        let _ = writeln!(
            s,
            "add rule {table} {svc_chain} {ip} daddr {vip} tcp dport {SERVICE_PORT} {ip} saddr != {cluster_cidr} jump mark-for-masquerade"
        );
        let mut vmap = Vec::new();
        for (i, endpoint) in service.endpoints(v6).iter().enumerate() {
            let ep_name = format!(
                "{base}__{}/{}",
                endpoint.to_string().replace(':', "."),
                service.target_port
            );
            let ep_chain = format!("endpoint-{}-{ep_name}", hash(&ep_name, 8));
            let _ = writeln!(s, "add chain {table} {ep_chain}");
            let _ = writeln!(
                s,
                "add rule {table} {ep_chain} {ip} saddr {endpoint} jump mark-for-masquerade"
            );
            let _ = writeln!(
                s,
                "add rule {table} {ep_chain} meta l4proto tcp dnat to {}",
                socket(*endpoint, service.target_port)
            );
            vmap.push(format!("{i} : goto {ep_chain}"));
        }
        let _ = writeln!(
            s,
            "add rule {table} {svc_chain} numgen random mod {} vmap {{ {} }}",
            vmap.len(),
            vmap.join(" , ")
        );
        if service.name == cluster.target().name {
            let ext_chain = format!("external-{}-{base}", hash(&base, 8));
            let _ = writeln!(s, "add chain {table} {ext_chain}");
            let _ = writeln!(s, "add rule {table} {ext_chain} jump mark-for-masquerade");
            let _ = writeln!(s, "add rule {table} {ext_chain} goto {svc_chain}");
            let _ = writeln!(
                s,
                "add element {table} service-nodeports {{ tcp . {NODE_PORT} : goto {ext_chain} }}"
            );
        }
        let _ = writeln!(s, "add element {table} cluster-ips {{ {vip} }}");
        let _ = writeln!(
            s,
            "add element {table} service-ips {{ {vip} . tcp . {SERVICE_PORT} : goto {svc_chain} }}"
        );
    }
    s
}

/// Feeds `input` to `program args…` in `netns`; returns how long the program took.
fn load(netns: &Netns, program: &str, args: &[&str], input: &str) -> anyhow::Result<Duration> {
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    netns.command(&mut command);
    let started = Instant::now();
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let written = stdin.write_all(input.as_bytes());
    drop(stdin);
    let output = child.wait_with_output()?;
    let elapsed = started.elapsed();
    if !output.status.success() || written.is_err() {
        bail!(
            "{program} {args:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
                .lines()
                .take(5)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    Ok(elapsed)
}

/// What loading one layout took, per family.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct LoadTimes {
    pub v4: Duration,
    pub v6: Duration,
}

/// Programs `layout` for `cluster` in `netns` (both families), returning the load times. The
/// returned guard removes every table when dropped.
pub(crate) fn program<'a>(
    netns: &'a Netns,
    layout: Layout,
    cluster: &Cluster,
) -> anyhow::Result<(Rules<'a>, LoadTimes)> {
    let guard = Rules { netns };
    let mut times = LoadTimes::default();
    for v6 in [false, true] {
        let elapsed = match layout {
            Layout::Iptables => {
                let program = if v6 {
                    "ip6tables-restore"
                } else {
                    "iptables-restore"
                };
                load(netns, program, &["-w", "5"], &iptables_rules(cluster, v6))?
            }
            Layout::Nftables => load(netns, "nft", &["-f", "-"], &nftables_script(cluster, v6))?,
        };
        if v6 {
            times.v6 = elapsed;
        } else {
            times.v4 = elapsed;
        }
    }
    Ok((guard, times))
}

/// The node's whole netfilter ruleset: iptables-nft and nft tables alike.
pub(crate) fn ruleset(netns: &Netns) -> String {
    let mut command = Command::new("nft");
    command.args(["list", "ruleset"]);
    netns.command(&mut command);
    command
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Removes every netfilter table of the node namespace (ours are the only ones there).
pub(crate) struct Rules<'a> {
    netns: &'a Netns,
}

impl Drop for Rules<'_> {
    fn drop(&mut self) {
        let mut command = Command::new("nft");
        command.args(["flush", "ruleset"]);
        self.netns.command(&mut command);
        let _ = command.output();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_hash_matches_kube_proxy() {
        // base32(sha256("")) starts with 4OYMIQUY7QOBJGX3 (RFC 4648 alphabet).
        assert_eq!(hash("", 16), "4OYMIQUY7QOBJGX3");
    }

    #[test]
    fn layouts_put_the_target_last_and_pick_with_the_right_probabilities() {
        let cluster = Cluster::new(3, &["10.244.2.2".parse().unwrap()], &[]);
        let rules = iptables_rules(&cluster, false);
        let services: Vec<&str> = rules
            .lines()
            .filter(|l| l.starts_with("-A KUBE-SERVICES"))
            .collect();
        assert!(services[2].contains("10.96.0.10/32"), "{services:?}");
        assert!(services[3].contains("KUBE-NODEPORTS"));
        assert!(rules.contains("--probability 0.1000000000"));
        assert!(rules.contains("--probability 0.5000000000"));
        assert!(rules.contains("-j DNAT --to-destination 10.244.2.2:8080"));
        let script = nftables_script(&cluster, false);
        assert!(script.contains("numgen random mod 10 vmap"));
        assert!(script.contains("10.96.0.10 . tcp . 80 : goto service-"));
        // The target's NodePort, masqueraded, then balanced.
        assert!(rules.contains("--dport 30080 -j KUBE-EXT-"));
        assert!(script.contains("service-nodeports { tcp . 30080 : goto external-"));
    }
}
