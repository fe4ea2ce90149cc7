//! Layer-1 tests of the model and the plan: real `kubectl get -o yaml|json` manifests (under
//! `tests/fixtures/`) → `source::manifests` → `model::service_ports` → `plan::frontends`.
//! No root, no kernel: the dataplane here is the in-memory twin of the maps.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use proxy_userspace::{
    family::Family,
    model::{
        self, Built, Conditions, Endpoint, Hints, Protocol, SERVICE_NAME_LABEL, ServiceError,
        ServiceName, ServicePort, ServicePortName, TrafficPolicy,
    },
    plan::{self, Backend, BackendState, Frontend, FrontendKind, NodeContext, Scope, ServiceEntry},
    proxier::MetaProxier,
    source::{Snapshot, manifests},
    sync::Syncer,
};

// ---------------------------------------------------------------------------------------------
// Fixtures and expectations

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Parses one fixture file the way the manifest source does; any error fails the test.
fn load(file: &str) -> Snapshot {
    let snapshot = load_allowing_errors(file);
    assert!(
        snapshot.errors.is_empty(),
        "{file}: unexpected errors: {:#?}",
        snapshot.errors
    );
    snapshot
}

fn load_allowing_errors(file: &str) -> Snapshot {
    let path = fixtures().join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read fixture {}: {e}", path.display()));
    let mut snapshot = Snapshot::default();
    manifests::parse_into(&path.display().to_string(), &text, &mut snapshot);
    snapshot
}

fn service<'a>(snapshot: &'a Snapshot, name: &str) -> &'a Service {
    snapshot
        .services
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no Service {name:?} in the snapshot"))
}

/// The EndpointSlices that name `service` in their `kubernetes.io/service-name` label.
fn slices_of<'a>(snapshot: &'a Snapshot, service: &str) -> Vec<&'a EndpointSlice> {
    snapshot
        .slices
        .iter()
        .filter(|s| {
            s.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
                .is_some_and(|n| n == service)
        })
        .collect()
}

fn build(snapshot: &Snapshot, name: &str) -> Result<Built, ServiceError> {
    model::service_ports(service(snapshot, name), &slices_of(snapshot, name))
}

/// The service ports of a Service that must be served without warnings.
fn ports(snapshot: &Snapshot, name: &str) -> Vec<ServicePort> {
    match build(snapshot, name) {
        Ok(Built::Ports { ports, warnings }) => {
            assert!(
                warnings.is_empty(),
                "{name}: unexpected warnings {warnings:?}"
            );
            ports
        }
        other => panic!("{name}: expected service ports, got {other:?}"),
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse()
        .unwrap_or_else(|e| panic!("{text:?} is not an address: {e}"))
}

fn v4(text: &str) -> Ipv4Addr {
    text.parse()
        .unwrap_or_else(|e| panic!("{text:?} is not an IPv4 address: {e}"))
}

fn v6(text: &str) -> Ipv6Addr {
    text.parse()
        .unwrap_or_else(|e| panic!("{text:?} is not an IPv6 address: {e}"))
}

const READY: Conditions = Conditions {
    ready: true,
    serving: true,
    terminating: false,
};

fn endpoint(address: &str, port: u16, node: &str) -> Endpoint {
    Endpoint {
        address: ip(address),
        port,
        conditions: READY,
        node_name: Some(node.into()),
        zone: None,
        hints: None,
    }
}

/// A ClusterIP service port of one family with no other frontend, policy or affinity.
fn service_port(
    name: ServicePortName,
    cluster_ip: &str,
    port: u16,
    endpoints: Vec<Endpoint>,
) -> ServicePort {
    let cluster_ip = ip(cluster_ip);
    ServicePort {
        protocol: name.protocol,
        name,
        family: Family::of(&cluster_ip),
        port,
        cluster_ip,
        node_port: None,
        external_ips: Vec::new(),
        load_balancer_ips: Vec::new(),
        source_ranges: Vec::new(),
        external_policy: TrafficPolicy::Cluster,
        internal_policy: TrafficPolicy::Cluster,
        health_check_node_port: None,
        affinity_timeout: None,
        endpoints,
    }
}

/// The node the plans are made for.
fn node() -> NodeContext {
    NodeContext {
        name: "node-a".into(),
        ..NodeContext::default()
    }
}

fn frontends<A: proxy_userspace::family::Address>(
    port: &ServicePort,
) -> Vec<(Frontend<A>, ServiceEntry<A>)> {
    plan::frontends::<A>(port, &node())
}

fn port_name(namespace: &str, service: &str, port: &str, protocol: Protocol) -> ServicePortName {
    ServicePortName {
        service: ServiceName {
            namespace: namespace.into(),
            name: service.into(),
        },
        port: port.into(),
        protocol,
    }
}

fn active<A>(address: A, port: u16, protocol: Protocol) -> Backend<A> {
    Backend {
        address,
        port,
        protocol,
        state: BackendState::Active,
    }
}

fn cluster_ip_entry<A>(backends: Vec<Backend<A>>) -> ServiceEntry<A> {
    ServiceEntry::cluster_ip(backends)
}

// ---------------------------------------------------------------------------------------------
// Single stack, dual stack, named target ports

#[test]
fn ipv4_single_stack_service_builds_exact_service_ports() {
    let snapshot = load("ipv4-single-stack.yaml");
    let mut web_a = endpoint("10.244.1.5", 8080, "node-a");
    web_a.zone = Some("zone-a".into());
    web_a.hints = Some(Arc::new(Hints {
        zones: Box::new(["zone-a".into()]),
        nodes: Box::new([]),
    }));
    let mut web_b = endpoint("10.244.2.7", 8080, "node-b");
    web_b.zone = Some("zone-b".into());
    let dns = |e: &Endpoint| Endpoint {
        port: 5353,
        ..e.clone()
    };

    assert_eq!(
        ports(&snapshot, "web"),
        vec![
            service_port(
                port_name("shop", "web", "http", Protocol::Tcp),
                "10.96.12.34",
                80,
                // Sorted by address, whatever order the slice lists them in.
                vec![web_a.clone(), web_b.clone()],
            ),
            service_port(
                port_name("shop", "web", "dns", Protocol::Udp),
                "10.96.12.34",
                53,
                vec![dns(&web_a), dns(&web_b)],
            ),
        ]
    );
}

#[test]
fn ipv4_single_stack_service_plans_only_ipv4_frontends() {
    let snapshot = load("ipv4-single-stack.yaml");
    let ports = ports(&snapshot, "web");
    let http = frontends::<Ipv4Addr>(&ports[0]);
    assert_eq!(
        http,
        vec![(
            Frontend::new(v4("10.96.12.34"), 80, Protocol::Tcp),
            cluster_ip_entry(vec![
                active(v4("10.244.1.5"), 8080, Protocol::Tcp),
                active(v4("10.244.2.7"), 8080, Protocol::Tcp),
            ]),
        )]
    );
    let dns = frontends::<Ipv4Addr>(&ports[1]);
    assert_eq!(
        dns[0].1.backends,
        vec![
            active(v4("10.244.1.5"), 5353, Protocol::Udp),
            active(v4("10.244.2.7"), 5353, Protocol::Udp),
        ]
    );
    for port in &ports {
        assert!(
            frontends::<Ipv6Addr>(port).is_empty(),
            "{}: an IPv4-only Service has no IPv6 frontend",
            port.name
        );
    }
}

#[test]
fn ipv6_single_stack_service_builds_exact_service_ports_and_plan() {
    let snapshot = load("ipv6-single-stack.yaml");
    let ports = ports(&snapshot, "api");
    assert_eq!(
        ports,
        vec![service_port(
            port_name("default", "api", "https", Protocol::Tcp),
            "fd00:10:96::a1",
            443,
            vec![
                endpoint("fd00:10:244:1::5", 8443, "node-a"),
                endpoint("fd00:10:244:2::7", 8443, "node-b"),
            ],
        )]
    );
    assert_eq!(
        frontends::<Ipv6Addr>(&ports[0]),
        vec![(
            Frontend::new(v6("fd00:10:96::a1"), 443, Protocol::Tcp),
            cluster_ip_entry(vec![
                active(v6("fd00:10:244:1::5"), 8443, Protocol::Tcp),
                active(v6("fd00:10:244:2::7"), 8443, Protocol::Tcp),
            ]),
        )]
    );
    assert!(frontends::<Ipv4Addr>(&ports[0]).is_empty());
}

#[test]
fn dual_stack_service_serves_both_cluster_ips_each_with_its_own_family() {
    let snapshot = load("dual-stack-list.yaml");
    let ports = ports(&snapshot, "demo");
    let http = port_name("default", "demo", "http", Protocol::Tcp);
    let echo = port_name("default", "demo", "echo", Protocol::Udp);
    // One service port per port and family, each with its own family's endpoints only.
    assert_eq!(
        ports,
        vec![
            service_port(
                http.clone(),
                "10.96.0.10",
                80,
                vec![
                    endpoint("10.244.2.2", 8080, "node-a"),
                    endpoint("10.244.3.2", 8080, "node-b"),
                ],
            ),
            service_port(
                http,
                "fd00:10:96::10",
                80,
                vec![
                    endpoint("fd00:10:244:2::2", 8080, "node-a"),
                    endpoint("fd00:10:244:3::2", 8080, "node-b"),
                ],
            ),
            service_port(
                echo.clone(),
                "10.96.0.10",
                5353,
                vec![
                    endpoint("10.244.2.2", 5353, "node-a"),
                    endpoint("10.244.3.2", 5353, "node-b"),
                ],
            ),
            service_port(
                echo,
                "fd00:10:96::10",
                5353,
                vec![
                    endpoint("fd00:10:244:2::2", 5353, "node-a"),
                    endpoint("fd00:10:244:3::2", 5353, "node-b"),
                ],
            ),
        ]
    );
    for port in &ports {
        match port.family {
            Family::V4 => assert!(frontends::<Ipv6Addr>(port).is_empty()),
            Family::V6 => assert!(frontends::<Ipv4Addr>(port).is_empty()),
        }
    }

    // Each family's proxier sees its own cluster IP and only its own family's pods.
    assert_eq!(
        frontends::<Ipv4Addr>(&ports[0]),
        vec![(
            Frontend::new(v4("10.96.0.10"), 80, Protocol::Tcp),
            cluster_ip_entry(vec![
                active(v4("10.244.2.2"), 8080, Protocol::Tcp),
                active(v4("10.244.3.2"), 8080, Protocol::Tcp),
            ]),
        )]
    );
    assert_eq!(
        frontends::<Ipv6Addr>(&ports[3]),
        vec![(
            Frontend::new(v6("fd00:10:96::10"), 5353, Protocol::Udp),
            cluster_ip_entry(vec![
                active(v6("fd00:10:244:2::2"), 5353, Protocol::Udp),
                active(v6("fd00:10:244:3::2"), 5353, Protocol::Udp),
            ]),
        )]
    );
}

#[test]
fn named_target_port_resolves_through_the_endpoint_slice_port_name() {
    let snapshot = load("dual-stack-list.yaml");
    let demo = service(&snapshot, "demo");
    let http = &demo.spec.as_ref().unwrap().ports.as_ref().unwrap()[0];
    assert_eq!(http.name.as_deref(), Some("http"));
    assert_eq!(
        http.target_port,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("http".into())),
        "the fixture must use a named targetPort"
    );

    // Service port "http" 80 → slice port "http" 8080: clients dial 80, pods get 8080.
    let ports = ports(&snapshot, "demo");
    let (frontend, entry) = &frontends::<Ipv4Addr>(&ports[0])[0];
    assert_eq!(frontend.port, 80);
    assert!(
        entry.backends.iter().all(|b| b.port == 8080),
        "{:?}",
        entry.backends
    );

    // The name is what matches: rename the slice ports and the Service finds no endpoints.
    let mut renamed = snapshot.clone();
    for slice in &mut renamed.slices {
        for port in slice.ports.iter_mut().flatten() {
            if port.name.as_deref() == Some("http") {
                port.name = Some("web".into());
            }
        }
    }
    let ports = self::ports(&renamed, "demo");
    assert!(ports[0].endpoints.is_empty(), "{:?}", ports[0].endpoints);
    assert!(ports[1].endpoints.is_empty(), "{:?}", ports[1].endpoints);
    assert_eq!(ports[2].endpoints.len(), 2, "port \"echo\" still matches");
    assert_eq!(ports[3].endpoints.len(), 2, "port \"echo\" still matches");
}

// ---------------------------------------------------------------------------------------------
// Endpoint conditions

#[test]
fn not_ready_endpoints_stay_in_the_model_but_are_left_out_of_the_plan() {
    let snapshot = load("readiness.yaml");
    let ports = ports(&snapshot, "checkout");
    let not_ready = Endpoint {
        conditions: Conditions {
            ready: false,
            serving: false,
            terminating: false,
        },
        ..endpoint("10.244.2.21", 8080, "node-b")
    };
    // An unnamed port matches the slice port named "".
    assert_eq!(
        ports[0].name,
        port_name("shop", "checkout", "", Protocol::Tcp)
    );
    assert_eq!(
        ports[0].endpoints,
        vec![
            endpoint("10.244.1.20", 8080, "node-a"),
            not_ready,
            endpoint("10.244.3.22", 8080, "node-c"),
        ]
    );
    assert_eq!(
        frontends::<Ipv4Addr>(&ports[0]),
        vec![(
            Frontend::new(v4("10.96.40.5"), 8080, Protocol::Tcp),
            cluster_ip_entry(vec![
                active(v4("10.244.1.20"), 8080, Protocol::Tcp),
                active(v4("10.244.3.22"), 8080, Protocol::Tcp),
            ]),
        )]
    );
}

#[test]
fn terminating_serving_endpoints_are_the_fallback_only_when_none_is_ready() {
    let snapshot = load("terminating.yaml");
    let ports = ports(&snapshot, "cart");
    let terminating = |serving| Conditions {
        ready: false,
        serving,
        terminating: true,
    };
    assert_eq!(
        ports[0]
            .endpoints
            .iter()
            .map(|e| (e.address, e.port, e.conditions))
            .collect::<Vec<_>>(),
        vec![
            (ip("10.244.1.30"), 50051, terminating(true)),
            (ip("10.244.2.31"), 50051, terminating(false)),
            (ip("10.244.3.32"), 50051, terminating(true)),
        ]
    );
    // No endpoint is ready: the serving ones carry traffic, marked terminating; the one that
    // stopped serving does not.
    let fallback = |address: &str| Backend {
        address: v4(address),
        port: 50051,
        protocol: Protocol::Tcp,
        state: BackendState::Terminating,
    };
    assert_eq!(
        frontends::<Ipv4Addr>(&ports[0])[0].1.backends,
        vec![fallback("10.244.1.30"), fallback("10.244.3.32")]
    );

    // As soon as one pod is ready again, only it is used.
    let mut recovered = snapshot.clone();
    let pod = recovered.slices[0]
        .endpoints
        .iter_mut()
        .find(|e| e.addresses == ["10.244.2.31"])
        .expect("fixture endpoint 10.244.2.31");
    let conditions = pod.conditions.as_mut().expect("fixture conditions");
    conditions.ready = Some(true);
    conditions.serving = Some(true);
    conditions.terminating = Some(false);
    let ports = self::ports(&recovered, "cart");
    assert_eq!(
        frontends::<Ipv4Addr>(&ports[0])[0].1.backends,
        vec![active(v4("10.244.2.31"), 50051, Protocol::Tcp)]
    );
}

// ---------------------------------------------------------------------------------------------
// Services that are not ours

#[test]
fn headless_external_name_and_other_proxy_services_are_ignored() {
    let snapshot = load("ignored.yaml");
    assert_eq!(snapshot.services.len(), 3);
    assert_eq!(snapshot.slices.len(), 1);
    for (name, why) in [
        ("cassandra", "headless"),
        ("billing-db", "ExternalName"),
        ("mesh-gateway", "service-proxy-name"),
    ] {
        match build(&snapshot, name) {
            Ok(Built::Ignored(reason)) => assert!(
                reason.contains(why),
                "{name}: ignored for {reason:?}, expected a reason naming {why:?}"
            ),
            other => panic!("{name}: expected Built::Ignored, got {other:?}"),
        }
    }

    // It is the label that hands mesh-gateway to another proxy: without it, it is served.
    let mut unlabelled = snapshot.clone();
    let gateway = unlabelled
        .services
        .iter_mut()
        .find(|s| s.metadata.name.as_deref() == Some("mesh-gateway"))
        .unwrap();
    gateway
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .remove(model::SERVICE_PROXY_NAME_LABEL);
    let ports = ports(&unlabelled, "mesh-gateway");
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].cluster_ip, ip("10.96.50.7"));
}

// ---------------------------------------------------------------------------------------------
// File formats

#[test]
fn kind_list_and_multi_document_files_both_parse() {
    let list = load("dual-stack-list.yaml");
    assert_eq!(
        service(&list, "demo").metadata.uid.as_deref(),
        Some("2a3b4c5d-6e7f-4809-9a1b-2c3d4e5f6071")
    );
    let mut names: Vec<_> = list
        .slices
        .iter()
        .map(|s| (s.metadata.name.clone().unwrap(), s.address_type.clone()))
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            ("demo-4xv2q".to_string(), "IPv4".to_string()),
            ("demo-k9p7w".to_string(), "IPv6".to_string()),
        ]
    );
    assert_eq!(list.services.len(), 1);

    let documents = load("ipv4-single-stack.yaml");
    assert_eq!(documents.services.len(), 1);
    assert_eq!(documents.slices.len(), 1);
    assert_eq!(
        documents.slices[0].metadata.resource_version.as_deref(),
        Some("48290")
    );
    assert_eq!(
        documents.services[0].metadata.namespace.as_deref(),
        Some("shop")
    );
}

#[test]
fn json_list_parses_and_keeps_the_cluster_ip_order() {
    let snapshot = load("prefer-dual-stack-list.json");
    assert_eq!(snapshot.services.len(), 1);
    assert_eq!(snapshot.slices.len(), 2);
    let zoned = |address: &str| Endpoint {
        zone: Some("zone-d".into()),
        ..endpoint(address, 9091, "node-d")
    };
    let ports = ports(&snapshot, "prometheus");
    let web = port_name("monitoring", "prometheus", "web", Protocol::Tcp);
    assert_eq!(
        ports,
        vec![
            // spec.clusterIPs order: IPv6 is this Service's primary family.
            service_port(
                web.clone(),
                "fd00:10:96::9090",
                9090,
                vec![zoned("fd00:10:244:4::19")]
            ),
            service_port(web, "10.96.90.90", 9090, vec![zoned("10.244.4.19")]),
        ]
    );
    assert_eq!(
        frontends::<Ipv4Addr>(&ports[1]),
        vec![(
            Frontend::new(v4("10.96.90.90"), 9090, Protocol::Tcp),
            cluster_ip_entry(vec![active(v4("10.244.4.19"), 9091, Protocol::Tcp)]),
        )]
    );
}

#[test]
fn malformed_object_is_reported_by_file_and_name_and_its_neighbours_still_load() {
    let snapshot = load_allowing_errors("malformed.yaml");
    assert_eq!(snapshot.errors.len(), 1, "{:#?}", snapshot.errors);
    let error = &snapshot.errors[0];
    for needle in ["malformed.yaml", "Service", "\"legacy\""] {
        assert!(
            error.contains(needle),
            "error {error:?} does not name {needle}"
        );
    }
    // The Service before the broken one and the EndpointSlice after it are both there.
    let names: Vec<_> = snapshot
        .services
        .iter()
        .map(|s| s.metadata.name.as_deref().unwrap())
        .collect();
    assert_eq!(names, ["storefront"]);
    assert_eq!(snapshot.slices.len(), 1);
    assert_eq!(
        ports(&snapshot, "storefront")[0].endpoints,
        vec![endpoint("10.244.1.60", 8080, "node-a")]
    );
}

// ---------------------------------------------------------------------------------------------
// Invalid Services

#[test]
fn invalid_services_are_rejected_with_the_error_naming_their_fault() {
    let snapshot = load("invalid-services.yaml");
    let cases = [
        (
            "bad-cluster-ip",
            ServiceError::InvalidClusterIp("10.96.0.300".into()),
        ),
        (
            "family-mismatch",
            ServiceError::FamilyMismatch {
                ip: ip("10.96.0.21"),
                family: "IPv6".into(),
            },
        ),
        (
            "family-count",
            ServiceError::FamilyCount {
                ips: 2,
                families: 1,
            },
        ),
        (
            "two-ipv4-cluster-ips",
            ServiceError::ClusterIpsPerFamily(vec!["10.96.0.23".into(), "10.96.0.24".into()]),
        ),
        ("unknown-family", ServiceError::UnknownFamily("IPv5".into())),
        (
            "port-too-high",
            ServiceError::PortOutOfRange {
                name: "admin".into(),
                port: 70000,
            },
        ),
        (
            "port-zero",
            ServiceError::PortOutOfRange {
                name: "http".into(),
                port: 0,
            },
        ),
        (
            "unknown-protocol",
            ServiceError::UnknownProtocol {
                name: "http".into(),
                protocol: "HTTP".into(),
            },
        ),
        (
            "duplicate-port",
            ServiceError::DuplicatePort {
                port: 80,
                protocol: Protocol::Tcp,
            },
        ),
    ];
    assert_eq!(snapshot.services.len(), cases.len());
    for (name, expected) in cases {
        assert_eq!(
            build(&snapshot, name),
            Err(expected),
            "Service broken/{name}"
        );
    }
}

#[test]
fn bad_service_beside_a_good_one_does_not_stop_it_being_programmed() {
    let snapshot = manifests::read_dir(&fixtures().join("cluster")).expect("fixture directory");
    // README.txt is not read, the Deployment is not ours: only the two Services and their slices.
    assert!(snapshot.errors.is_empty(), "{:#?}", snapshot.errors);
    let mut names: Vec<_> = snapshot
        .services
        .iter()
        .map(|s| s.metadata.name.as_deref().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["broken", "good"]);
    assert_eq!(snapshot.slices.len(), 3);
    assert!(matches!(
        build(&snapshot, "broken"),
        Err(ServiceError::InvalidClusterIp(_))
    ));

    let (meta, memory4, memory6) = MetaProxier::in_memory("node-a", vec![Family::V4, Family::V6]);
    let mut syncer = Syncer::new(meta, "node-a", Duration::ZERO);
    for event in snapshot.into_events() {
        syncer.handle(event);
    }
    assert!(syncer.ready());
    assert_eq!(syncer.sync(), 2);
    assert_eq!(syncer.counters.invalid, 1, "the broken Service is counted");
    syncer.reconcile();

    let memory4 = memory4.lock().unwrap();
    let memory6 = memory6.lock().unwrap();
    assert_eq!(
        memory4.served_ports(),
        BTreeMap::from([(
            Frontend::new(v4("10.96.70.1"), 80, Protocol::Tcp),
            vec![active(v4("10.244.5.10"), 8080, Protocol::Tcp)],
        )])
    );
    // broken's IPv6 cluster IP is valid on its own, but the Service is skipped as a whole.
    assert_eq!(
        memory6.served_ports(),
        BTreeMap::from([(
            Frontend::new(v6("fd00:10:96::7001"), 80, Protocol::Tcp),
            vec![active(v6("fd00:10:244:5::10"), 8080, Protocol::Tcp)],
        )])
    );
    assert_eq!(memory4.backends.len(), 1);
    assert_eq!(memory6.backends.len(), 1);
    assert!(memory4.violations.is_empty(), "{:#?}", memory4.violations);
    assert!(memory6.violations.is_empty(), "{:#?}", memory6.violations);
}

// ---------------------------------------------------------------------------------------------
// Every frontend kind, policies, topology

fn net(text: &str) -> ipnet::IpNet {
    text.parse().expect("CIDR literal")
}

#[test]
fn every_frontend_kind_is_read_per_family_skipping_wrong_family_and_bad_addresses() {
    let snapshot = load("every-frontend.yaml");
    let Ok(Built::Ports { ports, warnings }) = build(&snapshot, "shop") else {
        panic!("shop must build");
    };
    let http = port_name("web", "shop", "http", Protocol::Tcp);
    let shared = |cluster_ip: &str, endpoints| ServicePort {
        node_port: Some(30080),
        external_policy: TrafficPolicy::Local,
        health_check_node_port: Some(32000),
        affinity_timeout: Some(600),
        ..service_port(http.clone(), cluster_ip, 80, endpoints)
    };
    assert_eq!(
        ports,
        vec![
            ServicePort {
                external_ips: vec![ip("192.0.2.10")],
                // ipMode: Proxy and a hostname-only ingress are not VIPs we serve.
                load_balancer_ips: vec![ip("203.0.113.5")],
                source_ranges: vec![net("198.51.100.0/24")],
                ..shared(
                    "10.96.7.7",
                    vec![
                        endpoint("10.244.1.5", 8080, "node-a"),
                        endpoint("10.244.2.5", 8080, "node-b"),
                    ],
                )
            },
            ServicePort {
                external_ips: vec![ip("2001:db8::10")],
                load_balancer_ips: vec![ip("2001:db8::5")],
                source_ranges: vec![net("2001:db8:1::/48")],
                ..shared(
                    "fd00:10:96::707",
                    vec![endpoint("fd00:10:244:2::5", 8080, "node-b")],
                )
            },
        ]
    );
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings[0].contains("not-an-ip"), "{warnings:?}");
    assert!(warnings[1].contains("10.0.0.0/33"), "{warnings:?}");
}

#[test]
fn a_wrong_family_external_ip_is_skipped_with_a_warning_and_the_rest_is_served() {
    let mut snapshot = load("ipv4-single-stack.yaml");
    let spec = snapshot.services[0].spec.as_mut().unwrap();
    spec.external_ips = Some(vec!["192.0.2.1".into(), "2001:db8::1".into()]);
    let Ok(Built::Ports { ports, warnings }) = build(&snapshot, "web") else {
        panic!("web must build");
    };
    assert_eq!(ports.len(), 2, "both ports, IPv4 only");
    assert!(ports.iter().all(|p| p.external_ips == [ip("192.0.2.1")]));
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("2001:db8::1") && warnings[0].contains("no IPv6 cluster IP"),
        "{warnings:?}"
    );
}

/// With `externalTrafficPolicy: Local`, each external frontend gets an external entry of this
/// node's endpoints (none: dropped) and an internal twin of all of them for in-cluster clients;
/// the cluster IP follows the internal policy alone.
#[test]
fn the_plan_gives_every_external_frontend_a_local_entry_and_an_internal_twin() {
    let snapshot = load("every-frontend.yaml");
    let ports = ports_allowing_warnings(&snapshot, "shop");
    let node = NodeContext {
        name: "node-a".into(),
        zone: None,
        addresses: vec![ip("192.168.1.10"), ip("fd00:1::10")],
        nodeport_addresses: vec![ip("192.168.1.10"), ip("fd00:1::10")],
    };
    let pod = |a: &str| active(v4(a), 8080, Protocol::Tcp);
    let entry = |kind, backends, local, two_scopes| ServiceEntry {
        kind,
        backends,
        local,
        two_scopes,
        affinity_timeout: Some(600),
        source_ranges: Vec::new(),
    };
    let all = || vec![pod("10.244.1.5"), pod("10.244.2.5")];
    let local = || vec![pod("10.244.1.5")];
    let mut expected = vec![(
        Frontend::new(v4("10.96.7.7"), 80, Protocol::Tcp),
        entry(FrontendKind::ClusterIp, all(), false, false),
    )];
    for (kind, address, port) in [
        (FrontendKind::NodePort, "192.168.1.10", 30080),
        (FrontendKind::ExternalIp, "192.0.2.10", 80),
        (FrontendKind::LoadBalancer, "203.0.113.5", 80),
    ] {
        let frontend = Frontend::new(v4(address), port, Protocol::Tcp);
        // The load balancer IP's entries, and only those, carry its source ranges.
        let ranged = |mut e: ServiceEntry<Ipv4Addr>| {
            if kind == FrontendKind::LoadBalancer {
                e.source_ranges = vec![(v4("198.51.100.0"), 24)];
            }
            e
        };
        expected.push((frontend, ranged(entry(kind, local(), true, true))));
        expected.push((
            Frontend {
                scope: Scope::Internal,
                ..frontend
            },
            ranged(entry(kind, all(), false, false)),
        ));
    }
    assert_eq!(plan::frontends::<Ipv4Addr>(&ports[0], &node), expected);

    // IPv6: node-a has no IPv6 endpoint, so the external entries are empty (drop) while
    // pods still reach the remote one through the internal twins.
    let v6_plan = plan::frontends::<Ipv6Addr>(&ports[1], &node);
    assert_eq!(v6_plan.len(), 7);
    for (frontend, entry) in &v6_plan {
        match (entry.kind, frontend.scope) {
            (FrontendKind::ClusterIp, _) | (_, Scope::Internal) => assert_eq!(
                entry.backends,
                vec![active(v6("fd00:10:244:2::5"), 8080, Protocol::Tcp)],
                "{frontend}"
            ),
            (_, Scope::External) => {
                assert!(entry.backends.is_empty() && entry.local, "{frontend}")
            }
        }
    }
}

fn ports_allowing_warnings(snapshot: &Snapshot, name: &str) -> Vec<ServicePort> {
    match build(snapshot, name) {
        Ok(Built::Ports { ports, .. }) => ports,
        other => panic!("{name}: expected service ports, got {other:?}"),
    }
}

#[test]
fn internal_traffic_policy_local_uses_this_nodes_endpoints_only() {
    let mut snapshot = load("ipv4-single-stack.yaml");
    let spec = snapshot.services[0].spec.as_mut().unwrap();
    spec.internal_traffic_policy = Some("Local".into());
    let ports = ports(&snapshot, "web");
    assert_eq!(ports[0].internal_policy, TrafficPolicy::Local);
    let entries = frontends::<Ipv4Addr>(&ports[0]);
    assert_eq!(entries.len(), 1);
    let (_, entry) = &entries[0];
    assert!(entry.local);
    assert_eq!(
        entry.backends,
        vec![active(v4("10.244.1.5"), 8080, Protocol::Tcp)],
        "node-a's endpoint only"
    );
    // On a node with none of them, the entry is empty and local: traffic is dropped.
    let elsewhere = NodeContext {
        name: "node-z".into(),
        ..NodeContext::default()
    };
    let entries = plan::frontends::<Ipv4Addr>(&ports[0], &elsewhere);
    assert!(entries[0].1.backends.is_empty() && entries[0].1.local);
}

#[test]
fn topology_hints_narrow_the_cluster_endpoints_as_kube_proxy_does() {
    let snapshot = load("topology.yaml");
    let ports = ports(&snapshot, "catalog");
    let port = &ports[0];
    let at = |name: &str, zone: Option<&str>| NodeContext {
        name: name.into(),
        zone: zone.map(Into::into),
        ..NodeContext::default()
    };
    let addresses = |node: &NodeContext| -> Vec<String> {
        plan::categorize(port, node)
            .cluster
            .iter()
            .map(|e| e.address.to_string())
            .collect()
    };
    // Every ready endpoint has node hints and one names node-a: same node.
    assert_eq!(addresses(&at("node-a", Some("zone-a"))), ["10.244.1.8"]);
    // No node hint names node-d: its zone's hints apply.
    assert_eq!(
        addresses(&at("node-d", Some("zone-a"))),
        ["10.244.1.8", "10.244.2.8"]
    );
    // No hint names the zone (or the node has none): every ready endpoint.
    let all = ["10.244.1.8", "10.244.2.8", "10.244.3.8"];
    assert_eq!(addresses(&at("node-e", Some("zone-c"))), all);
    assert_eq!(addresses(&at("node-e", None)), all);

    // One ready endpoint without hints: hints are ignored altogether.
    let mut unhinted = snapshot.clone();
    unhinted.slices[0].endpoints[2].hints = None;
    let ports = self::ports(&unhinted, "catalog");
    let categorized = plan::categorize(&ports[0], &at("node-a", Some("zone-a")));
    assert_eq!(categorized.cluster.len(), 3);
    // The local set is independent of hints: node-a's ready endpoint.
    assert_eq!(categorized.local.len(), 1);

    // Nothing ready: the serving-and-terminating fallback ignores topology.
    let mut draining = snapshot.clone();
    for endpoint in &mut draining.slices[0].endpoints[..3] {
        let conditions = endpoint.conditions.as_mut().unwrap();
        conditions.ready = Some(false);
        conditions.serving = Some(false);
    }
    let ports = self::ports(&draining, "catalog");
    let categorized = plan::categorize(&ports[0], &at("node-c", Some("zone-b")));
    let fallback: Vec<String> = categorized
        .cluster
        .iter()
        .map(|e| e.address.to_string())
        .collect();
    assert_eq!(fallback, ["10.244.4.8"]);
    assert!(
        categorized.local.is_empty(),
        "node-c has no serving endpoint"
    );
}

#[test]
fn a_status_only_change_is_a_change_and_an_annotation_only_change_is_not() {
    let snapshot = load("every-frontend.yaml");
    let mut tracker = proxy_userspace::tracker::Tracker::default();
    tracker.upsert_service(snapshot.services[0].clone());
    tracker.take_changed();

    let mut annotated = snapshot.services[0].clone();
    annotated
        .metadata
        .annotations
        .get_or_insert_default()
        .insert("example.com/owner".into(), "team-a".into());
    tracker.upsert_service(annotated);
    assert!(!tracker.has_changes(), "annotations do not change the plan");

    let mut moved = snapshot.services[0].clone();
    let ingress = moved
        .status
        .as_mut()
        .unwrap()
        .load_balancer
        .as_mut()
        .unwrap();
    ingress.ingress.as_mut().unwrap()[0].ip = Some("203.0.113.99".into());
    tracker.upsert_service(moved);
    assert!(tracker.has_changes(), "a new load balancer IP is a change");
}

/// The source ranges of a load balancer IP reach the family's source-range table with it, one
/// entry per (frontend, range) and family, before the frontend asks for them; a Service that
/// drops its ranges takes them away, and entries no Service owns go at the periodic repair.
#[test]
fn source_ranges_are_written_and_removed_with_their_frontends() {
    use proxy_userspace::maps::ranges::RangeKey;
    let mut snapshot = load_allowing_errors("every-frontend.yaml");
    let mut service = snapshot.services[0].clone();
    let (meta, memory4, memory6) = MetaProxier::in_memory("node-a", vec![Family::V4, Family::V6]);
    // An entry no Service owns (drift, found by the periodic repair's re-read).
    let stale = RangeKey {
        frontend: v4("192.0.2.99"),
        port: 80,
        protocol: Protocol::Tcp,
        client: v4("192.0.2.0"),
        prefix: 24,
    };
    memory4.lock().unwrap().source_ranges.insert(stale);
    let mut syncer = Syncer::new(meta, "node-a", Duration::ZERO);
    for event in std::mem::take(&mut snapshot).into_events() {
        syncer.handle(event);
    }
    syncer.sync();
    syncer.repair();
    let key4 = RangeKey {
        frontend: v4("203.0.113.5"),
        port: 80,
        protocol: Protocol::Tcp,
        client: v4("198.51.100.0"),
        prefix: 24,
    };
    let key6 = RangeKey {
        frontend: v6("2001:db8::5"),
        port: 80,
        protocol: Protocol::Tcp,
        client: v6("2001:db8:1::"),
        prefix: 48,
    };
    assert_eq!(
        memory4
            .lock()
            .unwrap()
            .source_ranges
            .iter()
            .collect::<Vec<_>>(),
        [&key4],
        "the IPv4 range of the IPv4 load balancer IP; the stale entry gone"
    );
    assert_eq!(
        memory6
            .lock()
            .unwrap()
            .source_ranges
            .iter()
            .collect::<Vec<_>>(),
        [&key6]
    );

    service.spec.as_mut().unwrap().load_balancer_source_ranges = None;
    syncer.handle(proxy_userspace::source::SourceEvent::Apply(
        proxy_userspace::source::Object::service(service),
    ));
    syncer.sync();
    assert!(memory4.lock().unwrap().source_ranges.is_empty());
    assert!(memory6.lock().unwrap().source_ranges.is_empty());
}

// ---------------------------------------------------------------------------------------------
// SCTP

/// An SCTP Service port is served like TCP and UDP ones (the datapath moves its CRC32c): both
/// cluster IPs, the target port from the slices, and its NodePort, without a warning.
#[test]
fn an_sctp_port_is_served_in_both_families_with_its_node_port() {
    let snapshot = load("sctp.yaml");
    let built = ports(&snapshot, "diameter");
    assert_eq!(built.len(), 2, "{built:?}");
    for (port, cluster_ip, backend) in [
        (&built[0], "10.96.38.68", "10.244.1.9"),
        (&built[1], "fd00:10:96::3868", "fd00:10:244:1::9"),
    ] {
        assert_eq!(port.protocol, Protocol::Sctp);
        assert_eq!((port.cluster_ip, port.port), (ip(cluster_ip), 3868));
        assert_eq!(port.node_port, Some(30868));
        assert_eq!(port.endpoints, vec![endpoint(backend, 3869, "node-a")]);
    }
    let planned = frontends::<Ipv4Addr>(&built[0]);
    assert_eq!(
        planned[0],
        (
            Frontend::new(v4("10.96.38.68"), 3868, Protocol::Sctp),
            cluster_ip_entry(vec![active(v4("10.244.1.9"), 3869, Protocol::Sctp)])
        )
    );
}
