//! Layer-1 tests of the model and the plan: real `kubectl get -o yaml|json` manifests (under
//! `tests/fixtures/`) → `source::manifests` → `model::service_ports` → `plan::frontends`.
//! No root, no kernel: the dataplane here is the in-memory twin of the maps.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use proxy_common::service_flags;
use proxy_userspace::{
    agent,
    family::Address,
    maps::memory::{MemoryMaps, SharedMemoryMaps},
    model::{
        self, Built, Conditions, Endpoint, Protocol, SERVICE_NAME_LABEL, ServiceError, ServiceName,
        ServicePort, ServicePortName,
    },
    plan::{self, Backend, BackendState, Frontend, ServiceEntry},
    proxier::{Dataplane, Proxier},
    source::{Snapshot, manifests},
    tracker::Tracker,
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
        zone_hints: Vec::new(),
    }
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
    ServiceEntry {
        backends,
        flags: service_flags::CLUSTER_IP,
    }
}

// ---------------------------------------------------------------------------------------------
// Single stack, dual stack, named target ports

#[test]
fn ipv4_single_stack_service_builds_exact_service_ports() {
    let snapshot = load("ipv4-single-stack.yaml");
    let mut web_a = endpoint("10.244.1.5", 8080, "node-a");
    web_a.zone = Some("zone-a".into());
    web_a.zone_hints = vec!["zone-a".into()];
    let mut web_b = endpoint("10.244.2.7", 8080, "node-b");
    web_b.zone = Some("zone-b".into());
    let dns = |e: &Endpoint| Endpoint {
        port: 5353,
        ..e.clone()
    };

    assert_eq!(
        ports(&snapshot, "web"),
        vec![
            ServicePort {
                name: port_name("shop", "web", "http", Protocol::Tcp),
                port: 80,
                protocol: Protocol::Tcp,
                cluster_ips: vec![ip("10.96.12.34")],
                // Sorted by address, whatever order the slice lists them in.
                endpoints: vec![web_a.clone(), web_b.clone()],
            },
            ServicePort {
                name: port_name("shop", "web", "dns", Protocol::Udp),
                port: 53,
                protocol: Protocol::Udp,
                cluster_ips: vec![ip("10.96.12.34")],
                endpoints: vec![dns(&web_a), dns(&web_b)],
            },
        ]
    );
}

#[test]
fn ipv4_single_stack_service_plans_only_ipv4_frontends() {
    let snapshot = load("ipv4-single-stack.yaml");
    let ports = ports(&snapshot, "web");
    let http = plan::frontends::<Ipv4Addr>(&ports[0]);
    assert_eq!(
        http,
        vec![(
            Frontend {
                address: v4("10.96.12.34"),
                port: 80,
                protocol: Protocol::Tcp,
            },
            cluster_ip_entry(vec![
                active(v4("10.244.1.5"), 8080, Protocol::Tcp),
                active(v4("10.244.2.7"), 8080, Protocol::Tcp),
            ]),
        )]
    );
    let dns = plan::frontends::<Ipv4Addr>(&ports[1]);
    assert_eq!(
        dns[0].1.backends,
        vec![
            active(v4("10.244.1.5"), 5353, Protocol::Udp),
            active(v4("10.244.2.7"), 5353, Protocol::Udp),
        ]
    );
    for port in &ports {
        assert!(
            plan::frontends::<Ipv6Addr>(port).is_empty(),
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
        vec![ServicePort {
            name: port_name("default", "api", "https", Protocol::Tcp),
            port: 443,
            protocol: Protocol::Tcp,
            cluster_ips: vec![ip("fd00:10:96::a1")],
            endpoints: vec![
                endpoint("fd00:10:244:1::5", 8443, "node-a"),
                endpoint("fd00:10:244:2::7", 8443, "node-b"),
            ],
        }]
    );
    assert_eq!(
        plan::frontends::<Ipv6Addr>(&ports[0]),
        vec![(
            Frontend {
                address: v6("fd00:10:96::a1"),
                port: 443,
                protocol: Protocol::Tcp,
            },
            cluster_ip_entry(vec![
                active(v6("fd00:10:244:1::5"), 8443, Protocol::Tcp),
                active(v6("fd00:10:244:2::7"), 8443, Protocol::Tcp),
            ]),
        )]
    );
    assert!(plan::frontends::<Ipv4Addr>(&ports[0]).is_empty());
}

#[test]
fn dual_stack_service_serves_both_cluster_ips_each_with_its_own_family() {
    let snapshot = load("dual-stack-list.yaml");
    let ports = ports(&snapshot, "demo");
    let both = vec![ip("10.96.0.10"), ip("fd00:10:96::10")];
    assert_eq!(
        ports,
        vec![
            ServicePort {
                name: port_name("default", "demo", "http", Protocol::Tcp),
                port: 80,
                protocol: Protocol::Tcp,
                cluster_ips: both.clone(),
                endpoints: vec![
                    endpoint("10.244.2.2", 8080, "node-a"),
                    endpoint("10.244.3.2", 8080, "node-b"),
                    endpoint("fd00:10:244:2::2", 8080, "node-a"),
                    endpoint("fd00:10:244:3::2", 8080, "node-b"),
                ],
            },
            ServicePort {
                name: port_name("default", "demo", "echo", Protocol::Udp),
                port: 5353,
                protocol: Protocol::Udp,
                cluster_ips: both,
                endpoints: vec![
                    endpoint("10.244.2.2", 5353, "node-a"),
                    endpoint("10.244.3.2", 5353, "node-b"),
                    endpoint("fd00:10:244:2::2", 5353, "node-a"),
                    endpoint("fd00:10:244:3::2", 5353, "node-b"),
                ],
            },
        ]
    );

    // Each family's proxier sees its own cluster IP and only its own family's pods.
    assert_eq!(
        plan::frontends::<Ipv4Addr>(&ports[0]),
        vec![(
            Frontend {
                address: v4("10.96.0.10"),
                port: 80,
                protocol: Protocol::Tcp,
            },
            cluster_ip_entry(vec![
                active(v4("10.244.2.2"), 8080, Protocol::Tcp),
                active(v4("10.244.3.2"), 8080, Protocol::Tcp),
            ]),
        )]
    );
    assert_eq!(
        plan::frontends::<Ipv6Addr>(&ports[1]),
        vec![(
            Frontend {
                address: v6("fd00:10:96::10"),
                port: 5353,
                protocol: Protocol::Udp,
            },
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
    let (frontend, entry) = &plan::frontends::<Ipv4Addr>(&ports[0])[0];
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
    assert_eq!(ports[1].endpoints.len(), 4, "port \"echo\" still matches");
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
        plan::frontends::<Ipv4Addr>(&ports[0]),
        vec![(
            Frontend {
                address: v4("10.96.40.5"),
                port: 8080,
                protocol: Protocol::Tcp,
            },
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
        plan::frontends::<Ipv4Addr>(&ports[0])[0].1.backends,
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
        plan::frontends::<Ipv4Addr>(&ports[0])[0].1.backends,
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
    assert_eq!(ports[0].cluster_ips, vec![ip("10.96.50.7")]);
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
    assert_eq!(
        ports,
        vec![ServicePort {
            name: port_name("monitoring", "prometheus", "web", Protocol::Tcp),
            port: 9090,
            protocol: Protocol::Tcp,
            // spec.clusterIPs order: IPv6 is this Service's primary family.
            cluster_ips: vec![ip("fd00:10:96::9090"), ip("10.96.90.90")],
            endpoints: vec![zoned("10.244.4.19"), zoned("fd00:10:244:4::19")],
        }]
    );
    assert_eq!(
        plan::frontends::<Ipv4Addr>(&ports[0]),
        vec![(
            Frontend {
                address: v4("10.96.90.90"),
                port: 9090,
                protocol: Protocol::Tcp,
            },
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

/// What a packet would see: every visible frontend (slot 0) with the backends its slots name.
fn served<A: Address>(maps: &MemoryMaps<A>) -> BTreeMap<Frontend<A>, Vec<Backend<A>>> {
    maps.services
        .iter()
        .filter(|((_, slot), _)| *slot == 0)
        .map(|((frontend, _), head)| {
            let backends = (1..=head.count)
                .map(|s| {
                    let slot = maps.services[&(*frontend, s)];
                    maps.backends[&slot.backend_id]
                })
                .collect();
            (*frontend, backends)
        })
        .collect()
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

    let memory4: SharedMemoryMaps<Ipv4Addr> = Arc::new(Mutex::new(MemoryMaps::default()));
    let maps4 = memory4.clone();
    let memory6: SharedMemoryMaps<Ipv6Addr> = Arc::new(Mutex::new(MemoryMaps::default()));
    let maps6 = memory6.clone();
    let mut dataplane = Dataplane {
        v4: Some(Proxier::new(Box::new(maps4)).expect("empty IPv4 maps")),
        v6: Some(Proxier::new(Box::new(maps6)).expect("empty IPv6 maps")),
    };
    let mut tracker = Tracker::default();
    tracker.replace(snapshot.services, snapshot.slices);
    assert_eq!(agent::sync(&mut tracker, &mut dataplane), 2);
    assert!(dataplane.reconcile().is_empty());

    let memory4 = memory4.lock().unwrap();
    let memory6 = memory6.lock().unwrap();
    assert_eq!(
        served(&memory4),
        BTreeMap::from([(
            Frontend {
                address: v4("10.96.70.1"),
                port: 80,
                protocol: Protocol::Tcp,
            },
            vec![active(v4("10.244.5.10"), 8080, Protocol::Tcp)],
        )])
    );
    // broken's IPv6 cluster IP is valid on its own, but the Service is skipped as a whole.
    assert_eq!(
        served(&memory6),
        BTreeMap::from([(
            Frontend {
                address: v6("fd00:10:96::7001"),
                port: 80,
                protocol: Protocol::Tcp,
            },
            vec![active(v6("fd00:10:244:5::10"), 8080, Protocol::Tcp)],
        )])
    );
    assert_eq!(memory4.backends.len(), 1);
    assert_eq!(memory6.backends.len(), 1);
    assert!(memory4.violations.is_empty(), "{:#?}", memory4.violations);
    assert!(memory6.violations.is_empty(), "{:#?}", memory6.violations);
}
