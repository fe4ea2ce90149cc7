//! Layer-1 tests of change tracking: which Services a change makes dirty, and that a change
//! undone before the next sync costs no map write. Programming goes through the real sync path
//! (`agent::sync` → `Dataplane` → `Proxier` → `Writer`) over the in-memory twin of the maps.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, Ipv6Addr},
    path::Path,
    sync::{Arc, Mutex},
};

use proxy_userspace::{
    agent,
    family::Address,
    maps::{memory::MemoryMaps, writer::WriterStats},
    model::{Built, Protocol, SERVICE_NAME_LABEL, ServiceName},
    plan::{Backend, Frontend},
    proxier::{Dataplane, Proxier},
    source::{Snapshot, manifests},
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

type Shared<A> = Arc<Mutex<MemoryMaps<A>>>;

/// A dual-stack dataplane over empty in-memory maps, and handles to look into them.
fn dataplane() -> (Dataplane, Shared<Ipv4Addr>, Shared<Ipv6Addr>) {
    let memory4: Shared<Ipv4Addr> = Arc::default();
    let memory6: Shared<Ipv6Addr> = Arc::default();
    let dataplane = Dataplane {
        v4: Some(Proxier::new(Box::new(memory4.clone())).expect("IPv4 maps")),
        v6: Some(Proxier::new(Box::new(memory6.clone())).expect("IPv6 maps")),
    };
    (dataplane, memory4, memory6)
}

fn stats(dataplane: &Dataplane) -> [WriterStats; 2] {
    [
        dataplane.v4.as_ref().unwrap().stats(),
        dataplane.v6.as_ref().unwrap().stats(),
    ]
}

fn op_counts(memory4: &Shared<Ipv4Addr>, memory6: &Shared<Ipv6Addr>) -> [usize; 2] {
    [
        memory4.lock().unwrap().ops.len(),
        memory6.lock().unwrap().ops.len(),
    ]
}

/// What a packet would see: every visible frontend (slot 0) with the backends its slots name.
fn served<A: Address>(maps: &Shared<A>) -> BTreeMap<Frontend<A>, Vec<Backend<A>>> {
    let maps = maps.lock().unwrap();
    assert!(maps.violations.is_empty(), "{:#?}", maps.violations);
    maps.services
        .iter()
        .filter(|((_, slot), _)| *slot == 0)
        .map(|((frontend, _), head)| {
            let backends = (1..=head.count)
                .map(|s| maps.backends[&maps.services[&(*frontend, s)].backend_id])
                .collect();
            (*frontend, backends)
        })
        .collect()
}

/// The dual-stack `demo` Service, programmed: the tracker is clean afterwards.
fn programmed_demo() -> (
    Snapshot,
    Tracker,
    Dataplane,
    Shared<Ipv4Addr>,
    Shared<Ipv6Addr>,
) {
    let snapshot = load("dual-stack-list.yaml");
    let mut tracker = Tracker::default();
    tracker.replace(snapshot.services.clone(), snapshot.slices.clone());
    let (mut dataplane, memory4, memory6) = dataplane();
    assert_eq!(agent::sync(&mut tracker, &mut dataplane), 1);
    assert!(!tracker.has_changes());
    for s in stats(&dataplane) {
        assert_eq!(s.frontends_written, 2, "ports http and echo: {s:?}");
    }
    (snapshot, tracker, dataplane, memory4, memory6)
}

// ---------------------------------------------------------------------------------------------
// Flaps

#[test]
fn service_changed_and_reverted_before_a_sync_writes_nothing() {
    let (snapshot, mut tracker, mut dataplane, memory4, memory6) = programmed_demo();
    let before = stats(&dataplane);
    let ops = op_counts(&memory4, &memory6);

    let original = snapshot.services[0].clone();
    let mut changed = original.clone();
    changed.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].port = 8000;
    tracker.upsert_service(changed.clone());
    tracker.upsert_service(original);
    agent::sync(&mut tracker, &mut dataplane);
    assert_eq!(stats(&dataplane), before, "a flap must not touch the maps");
    assert_eq!(op_counts(&memory4, &memory6), ops);
    assert!(!tracker.has_changes());

    // The change on its own is written (so the comparison above can see a write).
    tracker.upsert_service(changed);
    assert_eq!(agent::sync(&mut tracker, &mut dataplane), 1);
    for (after, before) in stats(&dataplane).into_iter().zip(before) {
        assert_eq!(after.frontends_written, before.frontends_written + 1);
        assert_eq!(after.frontends_deleted, before.frontends_deleted + 1);
    }
    assert!(
        served(&memory4)
            .keys()
            .any(|f| f.port == 8000 && f.protocol == Protocol::Tcp)
    );
}

#[test]
fn endpoint_slice_changed_and_reverted_before_a_sync_writes_nothing() {
    let (snapshot, mut tracker, mut dataplane, memory4, memory6) = programmed_demo();
    let before = stats(&dataplane);
    let ops = op_counts(&memory4, &memory6);

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
    tracker.upsert_slice(not_ready.clone());
    tracker.upsert_slice(original);
    agent::sync(&mut tracker, &mut dataplane);
    assert_eq!(stats(&dataplane), before, "a flap must not touch the maps");
    assert_eq!(op_counts(&memory4, &memory6), ops);

    // The change on its own drops the pod from both IPv4 frontends, and touches no IPv6 map.
    tracker.upsert_slice(not_ready);
    agent::sync(&mut tracker, &mut dataplane);
    let [v4, v6] = stats(&dataplane);
    assert_eq!(v4.frontends_written, before[0].frontends_written + 2);
    assert_eq!(v6, before[1]);
    for backends in served(&memory4).values() {
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
    tracker.replace(snapshot.services.clone(), snapshot.slices.clone());
    let (mut dataplane, memory4, _) = dataplane();
    agent::sync(&mut tracker, &mut dataplane);
    assert!(!tracker.has_changes());
    assert!(served(&memory4).values().all(|b| b.len() == 2));

    // A slice nobody knows changes nothing.
    tracker.delete_slice(&name("shop", "web-unknown"));
    assert!(!tracker.has_changes());

    tracker.delete_slice(&name("shop", "web-7tq9m"));
    assert!(tracker.has_changes());
    let updates = tracker.drain();
    assert_eq!(updates.len(), 1, "{updates:?}");
    let (service, built) = &updates[0];
    assert_eq!(*service, name("shop", "web"));
    let ports = match built {
        Some(Ok(Built::Ports { ports, warnings })) if warnings.is_empty() => ports,
        other => panic!("expected the Service rebuilt, got {other:?}"),
    };
    assert_eq!(ports.len(), 2);
    assert!(ports.iter().all(|p| p.endpoints.is_empty()), "{ports:?}");

    // Programmed, the frontends stay with no backend (the datapath rejects, not forwards).
    assert!(dataplane.apply(service, ports).is_empty());
    let served = served(&memory4);
    assert_eq!(served.len(), 2);
    assert!(served.values().all(Vec::is_empty), "{served:?}");
    assert!(memory4.lock().unwrap().backends.is_empty());
}

#[test]
fn replace_with_the_same_objects_leaves_nothing_dirty() {
    let mut snapshot = load("dual-stack-list.yaml");
    let web = load("ipv4-single-stack.yaml");
    snapshot.services.extend(web.services);
    snapshot.slices.extend(web.slices);

    let mut tracker = Tracker::default();
    tracker.replace(snapshot.services.clone(), snapshot.slices.clone());
    assert_eq!(tracker.service_count(), 2);
    assert_eq!(tracker.drain().len(), 2);

    tracker.replace(snapshot.services.clone(), snapshot.slices.clone());
    assert!(!tracker.has_changes());
    assert!(tracker.drain().is_empty());

    // A relist without one of demo's slices dirties demo, and only demo.
    let without: Vec<_> = snapshot
        .slices
        .iter()
        .filter(|s| s.metadata.name.as_deref() != Some("demo-k9p7w"))
        .cloned()
        .collect();
    tracker.replace(snapshot.services.clone(), without);
    let dirty: Vec<_> = tracker.drain().into_iter().map(|(n, _)| n).collect();
    assert_eq!(dirty, [name("default", "demo")]);

    // A relist without web reports it gone.
    let services: Vec<_> = snapshot
        .services
        .iter()
        .filter(|s| s.metadata.name.as_deref() != Some("web"))
        .cloned()
        .collect();
    tracker.replace(services, snapshot.slices.clone());
    let updates = tracker.drain();
    let gone: Vec<_> = updates
        .iter()
        .filter(|(_, built)| built.is_none())
        .map(|(n, _)| n.clone())
        .collect();
    assert_eq!(gone, [name("shop", "web")], "{updates:?}");
}

// ---------------------------------------------------------------------------------------------
// Frontends handed between Services

#[test]
fn renamed_service_keeps_its_cluster_ip_served() {
    let snapshot = load("ipv4-single-stack.yaml");
    let mut tracker = Tracker::default();
    tracker.replace(snapshot.services.clone(), snapshot.slices.clone());
    let (mut dataplane, memory4, _) = dataplane();
    assert_eq!(agent::sync(&mut tracker, &mut dataplane), 1);
    let frontend = |port, protocol| Frontend {
        address: Ipv4Addr::new(10, 96, 12, 34),
        port,
        protocol,
    };
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
    tracker.replace(vec![api], vec![slice]);
    // Both are rebuilt in one sync: `api` (sorted first) claims the frontends, then `web`,
    // gone, must not remove them.
    assert_eq!(agent::sync(&mut tracker, &mut dataplane), 2);
    assert_eq!(
        served(&memory4),
        before,
        "the renamed Service's frontends must stay served"
    );
    for f in &frontends {
        assert!(
            memory4.lock().unwrap().services.contains_key(&(*f, 0)),
            "{f} is gone"
        );
    }

    // The new owner's removal removes them.
    tracker.replace(Vec::new(), Vec::new());
    assert_eq!(agent::sync(&mut tracker, &mut dataplane), 1);
    assert!(served(&memory4).is_empty());
    let memory = memory4.lock().unwrap();
    assert!(memory.backends.is_empty(), "{:?}", memory.backends);
    assert!(memory.reverse_nat.is_empty(), "{:?}", memory.reverse_nat);
}
