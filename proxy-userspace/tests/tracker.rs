//! Layer-1 tests of change tracking: which Services a change makes dirty, and that a change
//! undone before the next sync costs no map write. Programming goes through the agent's own
//! sync path (events → `Syncer` → `MetaProxier` → `Proxier` → `Writer`) over the in-memory twin
//! of the maps.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, Ipv6Addr},
    path::Path,
    time::Duration,
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

use proxy_userspace::{
    family::Family,
    maps::{
        SlotKey,
        memory::{Op, SharedMemoryMaps},
    },
    model::{Built, Protocol, SERVICE_NAME_LABEL, ServiceName, SliceEntry},
    plan::{Backend, Frontend},
    proxier::MetaProxier,
    source::{Kind, Object, Snapshot, SourceEvent, manifests},
    sync::Syncer,
    tracker::Tracker,
};

fn load(file: &str) -> Snapshot {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read fixture {}: {e}", path.display()));
    let mut snapshot = Snapshot::default();
    manifests::parse_into(file, &text, &mut snapshot);
    assert!(snapshot.errors.is_empty(), "{file}: {:#?}", snapshot.errors);
    snapshot
}

fn name(namespace: &str, name: &str) -> ServiceName {
    ServiceName {
        namespace: namespace.into(),
        name: name.into(),
    }
}

fn entries(slices: &[EndpointSlice]) -> Vec<SliceEntry> {
    slices.iter().filter_map(SliceEntry::from_slice).collect()
}

/// The agent's sync path (events → Syncer → MetaProxier → Proxier → Writer) over the in-memory
/// twins of a dual-stack node's maps.
struct Harness {
    syncer: Syncer,
    memory4: SharedMemoryMaps<Ipv4Addr>,
    memory6: SharedMemoryMaps<Ipv6Addr>,
}

impl Harness {
    fn new() -> Self {
        let (meta, memory4, memory6) =
            MetaProxier::in_memory("node-a", vec![Family::V4, Family::V6]);
        Self {
            syncer: Syncer::new(meta, "node-a", Duration::ZERO),
            memory4,
            memory6,
        }
    }

    /// Complete lists of Services and EndpointSlices, as a source delivers them.
    fn replace(&mut self, services: Vec<Service>, slices: Vec<EndpointSlice>) {
        self.syncer.handle(SourceEvent::Replace(
            Kind::Service,
            services.into_iter().map(Object::service).collect(),
        ));
        self.syncer.handle(SourceEvent::Replace(
            Kind::EndpointSlice,
            slices
                .into_iter()
                .filter_map(Object::endpoint_slice)
                .collect(),
        ));
    }

    fn apply_service(&mut self, service: Service) {
        self.syncer
            .handle(SourceEvent::Apply(Object::service(service)));
    }

    fn apply_slice(&mut self, slice: EndpointSlice) {
        self.syncer.handle(SourceEvent::Apply(
            Object::endpoint_slice(slice).expect("named"),
        ));
    }

    fn sync(&mut self) -> usize {
        self.syncer.sync()
    }

    /// Map operations so far, per family.
    fn ops(&self) -> (Vec<Op<Ipv4Addr>>, Vec<Op<Ipv6Addr>>) {
        (
            self.memory4.lock().unwrap().ops.clone(),
            self.memory6.lock().unwrap().ops.clone(),
        )
    }
}

/// Slot-0 writes and deletes (Service-port frontends written, removed) among `ops`; the
/// unexposed-port frontends (port 0) are counted apart.
fn heads<A>(ops: &[Op<A>]) -> (usize, usize) {
    let port = |f: &Frontend<A>| f.port != proxy_userspace::plan::UNEXPOSED_PORT;
    let written = ops
        .iter()
        .filter(|op| matches!(op, Op::PutService(f, 0) if port(f)))
        .count();
    let deleted = ops
        .iter()
        .filter(|op| matches!(op, Op::DeleteService(f, 0) if port(f)))
        .count();
    (written, deleted)
}

/// What a packet would see, after checking no operation ever showed half a service.
fn served<A: proxy_userspace::family::Address>(
    maps: &SharedMemoryMaps<A>,
) -> BTreeMap<Frontend<A>, Vec<Backend<A>>> {
    let maps = maps.lock().unwrap();
    assert!(maps.violations.is_empty(), "{:#?}", maps.violations);
    maps.served_ports()
}

/// The dual-stack `demo` Service, programmed: nothing is pending afterwards.
fn programmed_demo() -> (Snapshot, Harness) {
    let snapshot = load("dual-stack-list.yaml");
    let mut harness = Harness::new();
    harness.replace(snapshot.services.clone(), snapshot.slices.clone());
    assert_eq!(harness.sync(), 1);
    assert!(!harness.syncer.has_changes());
    let (ops4, ops6) = harness.ops();
    assert_eq!(heads(&ops4), (2, 0), "ports http and echo");
    assert_eq!(heads(&ops6), (2, 0), "ports http and echo");
    (snapshot, harness)
}

// ---------------------------------------------------------------------------------------------
// Flaps

#[test]
fn service_changed_and_reverted_before_a_sync_writes_nothing() {
    let (snapshot, mut harness) = programmed_demo();
    let before = harness.ops();

    let original = snapshot.services[0].clone();
    let mut changed = original.clone();
    changed.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].port = 8000;
    harness.apply_service(changed.clone());
    harness.apply_service(original);
    harness.sync();
    assert_eq!(harness.ops(), before, "a flap must not touch the maps");
    assert!(!harness.syncer.has_changes());

    // The change on its own is written (so the comparison above can see a write).
    harness.apply_service(changed);
    assert_eq!(harness.sync(), 1);
    let (ops4, ops6) = harness.ops();
    assert_eq!(heads(&ops4[before.0.len()..]), (1, 1), "port 80 → 8000");
    assert_eq!(heads(&ops6[before.1.len()..]), (1, 1), "port 80 → 8000");
    assert!(
        served(&harness.memory4)
            .keys()
            .any(|f| f.port == 8000 && f.protocol == Protocol::Tcp)
    );
}

#[test]
fn endpoint_slice_changed_and_reverted_before_a_sync_writes_nothing() {
    let (snapshot, mut harness) = programmed_demo();
    let before = harness.ops();

    let original = snapshot
        .slices
        .iter()
        .find(|s| s.address_type == "IPv4")
        .unwrap()
        .clone();
    let mut not_ready = original.clone();
    let conditions = not_ready.endpoints[0].conditions.as_mut().unwrap();
    conditions.ready = Some(false);
    conditions.serving = Some(false);
    harness.apply_slice(not_ready.clone());
    harness.apply_slice(original);
    harness.sync();
    assert_eq!(harness.ops(), before, "a flap must not touch the maps");

    // The change on its own drops the pod from both IPv4 frontends, and touches no IPv6 map.
    harness.apply_slice(not_ready);
    harness.sync();
    let (ops4, ops6) = harness.ops();
    assert_eq!(heads(&ops4[before.0.len()..]), (2, 0));
    assert_eq!(ops6, before.1);
    for backends in served(&harness.memory4).values() {
        assert_eq!(backends.len(), 1, "{backends:?}");
        assert_eq!(backends[0].address, Ipv4Addr::new(10, 244, 3, 2));
    }
}

// ---------------------------------------------------------------------------------------------
// What is dirty

#[test]
fn deleting_an_endpoint_slice_makes_its_service_dirty() {
    let snapshot = load("ipv4-single-stack.yaml");
    let mut tracker = Tracker::default();
    tracker.replace_services(snapshot.services.clone());
    tracker.replace_slice_entries(entries(&snapshot.slices));

    // A slice nobody knows changes nothing.
    tracker.take_changed();
    tracker.delete_slice(&name("shop", "web-unknown"));
    assert!(!tracker.has_changes());

    tracker.delete_slice(&name("shop", "web-7tq9m"));
    assert!(tracker.has_changes());
    let dirty = tracker.take_changed();
    assert_eq!(dirty, [name("shop", "web")]);
    let ports = match tracker.build(&dirty[0]) {
        Some(Ok(Built::Ports { ports, warnings })) if warnings.is_empty() => ports,
        other => panic!("expected the Service rebuilt, got {other:?}"),
    };
    assert_eq!(ports.len(), 2);
    assert!(ports.iter().all(|p| p.endpoints.is_empty()), "{ports:?}");

    // Through the sync path: the frontends stay, with no backend (the datapath rejects, not
    // forwards).
    let mut harness = Harness::new();
    harness.replace(snapshot.services.clone(), snapshot.slices.clone());
    harness.sync();
    assert!(served(&harness.memory4).values().all(|b| b.len() == 2));
    harness.replace(snapshot.services.clone(), Vec::new());
    assert_eq!(harness.sync(), 1);
    let served = served(&harness.memory4);
    assert_eq!(served.len(), 2);
    assert!(served.values().all(Vec::is_empty), "{served:?}");
    assert!(harness.memory4.lock().unwrap().backends.is_empty());
}

#[test]
fn replace_with_the_same_objects_leaves_nothing_dirty() {
    let mut snapshot = load("dual-stack-list.yaml");
    let web = load("ipv4-single-stack.yaml");
    snapshot.services.extend(web.services);
    snapshot.slices.extend(web.slices);

    let mut tracker = Tracker::default();
    let replace = |tracker: &mut Tracker, services: Vec<Service>, slices: &[EndpointSlice]| {
        tracker.replace_services(services);
        tracker.replace_slice_entries(entries(slices));
    };
    replace(&mut tracker, snapshot.services.clone(), &snapshot.slices);
    assert_eq!(tracker.take_changed().len(), 2);

    replace(&mut tracker, snapshot.services.clone(), &snapshot.slices);
    assert!(!tracker.has_changes());

    // A relist without one of demo's slices dirties demo, and only demo.
    let without: Vec<_> = snapshot
        .slices
        .iter()
        .filter(|s| s.metadata.name.as_deref() != Some("demo-k9p7w"))
        .cloned()
        .collect();
    replace(&mut tracker, snapshot.services.clone(), &without);
    assert_eq!(tracker.take_changed(), [name("default", "demo")]);

    // A relist without web reports it gone.
    let services: Vec<_> = snapshot
        .services
        .iter()
        .filter(|s| s.metadata.name.as_deref() != Some("web"))
        .cloned()
        .collect();
    replace(&mut tracker, services, &snapshot.slices);
    let dirty = tracker.take_changed();
    let gone: Vec<_> = dirty
        .iter()
        .filter(|n| tracker.build(n).is_none())
        .cloned()
        .collect();
    assert_eq!(gone, [name("shop", "web")], "{dirty:?}");
}

// ---------------------------------------------------------------------------------------------
// Frontends handed between Services

#[test]
fn renamed_service_keeps_its_cluster_ip_served() {
    let snapshot = load("ipv4-single-stack.yaml");
    let mut harness = Harness::new();
    harness.replace(snapshot.services.clone(), snapshot.slices.clone());
    assert_eq!(harness.sync(), 1);
    let memory4 = harness.memory4.clone();
    let frontend = |port, protocol| Frontend::new(Ipv4Addr::new(10, 96, 12, 34), port, protocol);
    let frontends = [frontend(80, Protocol::Tcp), frontend(53, Protocol::Udp)];
    let before = served(&memory4);
    assert_eq!(
        before.keys().copied().collect::<BTreeSet<_>>(),
        BTreeSet::from(frontends)
    );
    assert!(before.values().all(|b| b.len() == 2), "{before:?}");

    // The same Service (cluster IP, ports, endpoints) under another name.
    let mut api = snapshot.services[0].clone();
    assert_eq!(api.metadata.name.as_deref(), Some("web"));
    api.metadata.name = Some("api".into());
    let mut slice = snapshot.slices[0].clone();
    slice
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert(SERVICE_NAME_LABEL.into(), "api".into());
    harness.replace(vec![api], vec![slice]);
    // Both are rebuilt in one sync: `api` (sorted first) claims the frontends, then `web`,
    // gone, must not remove them.
    assert_eq!(harness.sync(), 2);
    assert_eq!(
        served(&memory4),
        before,
        "the renamed Service's frontends must stay served"
    );
    for f in &frontends {
        assert!(
            memory4
                .lock()
                .unwrap()
                .services
                .contains_key(&SlotKey::new(*f, 0)),
            "{f} is gone"
        );
    }

    // The new owner's removal removes them.
    harness.replace(Vec::new(), Vec::new());
    assert_eq!(harness.sync(), 1);
    assert!(served(&memory4).is_empty());
    let memory = memory4.lock().unwrap();
    assert!(memory.backends.is_empty(), "{:?}", memory.backends);
    assert!(memory.reverse_nat.is_empty(), "{:?}", memory.reverse_nat);
}

// ---------------------------------------------------------------------------------------------
// Single-stack nodes

/// A node with `--cluster-cidr` of one family: a dual-stack Service is programmed in that family
/// only, and the other family's maps see no write at all.
fn single_stack_node(family: Family) {
    let snapshot = load("dual-stack-list.yaml");
    let (meta, memory4, memory6) = MetaProxier::in_memory("node-a", vec![family]);
    let mut syncer = Syncer::new(meta, "node-a", Duration::ZERO);
    assert_eq!(syncer.served_families(), [family]);
    for event in snapshot.into_events() {
        syncer.handle(event);
    }
    assert_eq!(syncer.sync(), 1);
    syncer.reconcile();
    let (served4, served6) = (served(&memory4), served(&memory6));
    let (ops4, ops6) = (
        memory4.lock().unwrap().ops.len(),
        memory6.lock().unwrap().ops.len(),
    );
    match family {
        Family::V4 => {
            assert_eq!(served4.len(), 2, "http and echo on 10.96.0.10");
            assert!(served4.values().all(|b| b.len() == 2));
            assert_eq!(ops6, 0, "no IPv6 map was written");
            assert!(served6.is_empty());
        }
        Family::V6 => {
            assert_eq!(served6.len(), 2, "http and echo on fd00:10:96::10");
            assert!(served6.values().all(|b| b.len() == 2));
            assert_eq!(ops4, 0, "no IPv4 map was written");
            assert!(served4.is_empty());
        }
    }
}

#[test]
fn an_ipv4_only_node_programs_only_ipv4() {
    single_stack_node(Family::V4);
}

#[test]
fn an_ipv6_only_node_programs_only_ipv6() {
    single_stack_node(Family::V6);
}

fn node(addresses: &[&str]) -> k8s_openapi::api::core::v1::Node {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "node-a"},
        "status": {"addresses": addresses.iter()
            .map(|a| serde_json::json!({"type": "InternalIP", "address": a}))
            .collect::<Vec<_>>()},
    }))
    .expect("a Node")
}

/// An IPv4 `--cluster-cidr`, and a Node that gains, then loses, an IPv6 address: the IPv6
/// frontends appear with it and are withdrawn with it.
#[test]
fn a_family_comes_and_goes_with_the_nodes_addresses() {
    let snapshot = load("dual-stack-list.yaml");
    let (meta, memory4, memory6) = MetaProxier::in_memory("node-a", vec![Family::V4]);
    let mut syncer = Syncer::new(meta, "node-a", Duration::ZERO);
    for event in snapshot.into_events() {
        syncer.handle(event);
    }
    syncer.sync();
    assert!(served(&memory6).is_empty());

    syncer.handle(SourceEvent::Apply(Object::Node(node(&[
        "192.168.1.10",
        "fd00:1::10",
    ]))));
    assert_eq!(syncer.served_families(), [Family::V4, Family::V6]);
    assert!(syncer.has_changes(), "a new family replans every Service");
    syncer.sync();
    assert_eq!(served(&memory6).len(), 2);
    let ipv4_ops = memory4.lock().unwrap().ops.len();

    syncer.handle(SourceEvent::Apply(Object::Node(node(&["192.168.1.10"]))));
    assert_eq!(syncer.served_families(), [Family::V4]);
    assert!(served(&memory6).is_empty(), "withdrawn at once");
    syncer.sync();
    assert!(served(&memory6).is_empty());
    assert_eq!(served(&memory4).len(), 2);
    assert_eq!(
        memory4.lock().unwrap().ops.len(),
        ipv4_ops,
        "the IPv4 frontends were rewritten for nothing"
    );
}

/// Each cluster IP gets one unexposed-port frontend per protocol (TCP, UDP, SCTP: port 0, no
/// backend), whatever its Service's ports, so the datapath rejects a port the Service does not
/// expose; they go when the Service goes.
#[test]
fn cluster_ips_get_unexposed_port_frontends_that_go_with_their_service() {
    let (_, mut harness) = programmed_demo();
    let unexposed = |harness: &Harness| {
        let v4: BTreeMap<_, _> = harness.memory4.lock().unwrap().served();
        let v6: BTreeMap<_, _> = harness.memory6.lock().unwrap().served();
        let v4: Vec<_> = v4.into_iter().filter(|(f, _)| f.port == 0).collect();
        let v6: Vec<_> = v6.into_iter().filter(|(f, _)| f.port == 0).collect();
        (v4, v6)
    };
    let (v4, v6) = unexposed(&harness);
    let vip4 = Ipv4Addr::new(10, 96, 0, 10);
    let vip6: Ipv6Addr = "fd00:10:96::10".parse().unwrap();
    assert_eq!(
        v4,
        [
            (Frontend::new(vip4, 0, Protocol::Tcp), vec![]),
            (Frontend::new(vip4, 0, Protocol::Udp), vec![]),
            (Frontend::new(vip4, 0, Protocol::Sctp), vec![])
        ]
    );
    assert_eq!(
        v6,
        [
            (Frontend::new(vip6, 0, Protocol::Tcp), vec![]),
            (Frontend::new(vip6, 0, Protocol::Udp), vec![]),
            (Frontend::new(vip6, 0, Protocol::Sctp), vec![])
        ]
    );
    harness.replace(Vec::new(), Vec::new());
    harness.sync();
    assert_eq!(
        unexposed(&harness),
        (vec![], vec![]),
        "gone with the Service"
    );
}
