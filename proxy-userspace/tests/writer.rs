//! Layer-1 tests of the map writer over the in-memory twin of the maps: the order of writes,
//! and the invariant the datapath relies on — a packet never sees half a service. The twin
//! checks that invariant after every single map operation and records any violation.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, Ipv6Addr},
    ops::{Deref, DerefMut},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use proxy_common::ServiceValue;
use proxy_userspace::{
    family::Address,
    maps::{
        BoxedTable, LbSnapshot, MapError, SlotKey, Table,
        codec::{self, Head},
        memory::{MemoryMaps, Op, SharedMemoryMaps},
        writer::{WriteError, Writer, WriterStats},
    },
    model::Protocol,
    plan::{Backend, BackendState, Frontend, FrontendKind, ServiceEntry},
};

/// A writer over a twin the test can look into.
struct Twin<A> {
    writer: Writer<A>,
    shared: SharedMemoryMaps<A>,
}

impl<A: Address> Twin<A> {
    fn new() -> Self {
        Self::holding(MemoryMaps::default())
    }

    /// A writer restored from `maps` (as from pins).
    fn holding(maps: MemoryMaps<A>) -> Self {
        let shared = maps.shared();
        let writer = Writer::restore(MemoryMaps::tables(&shared)).expect("restore");
        Self { writer, shared }
    }

    /// The twin's state now: its maps, operation log and violations.
    fn maps(&self) -> MemoryMaps<A> {
        self.shared.lock().expect("maps lock").clone()
    }

    /// What the pinned maps would still hold if the agent stopped now (no history).
    fn pinned(&self) -> MemoryMaps<A> {
        MemoryMaps::holding(self.maps().maps)
    }
}

impl<A> Deref for Twin<A> {
    type Target = Writer<A>;
    fn deref(&self) -> &Writer<A> {
        &self.writer
    }
}

impl<A> DerefMut for Twin<A> {
    fn deref_mut(&mut self) -> &mut Writer<A> {
        &mut self.writer
    }
}

type Twin4 = Twin<Ipv4Addr>;

fn key<A>(frontend: Frontend<A>, slot: u16) -> SlotKey<A> {
    SlotKey::new(frontend, slot)
}

fn frontend4(last: u8, port: u16) -> Frontend<Ipv4Addr> {
    Frontend::new(Ipv4Addr::new(10, 96, 0, last), port, Protocol::Tcp)
}

/// The frontend most tests program: 10.96.0.10:80/TCP.
fn service() -> Frontend<Ipv4Addr> {
    frontend4(10, 80)
}

/// Pod 10.244.1.`last`:8080/TCP.
fn pod4(last: u8) -> Backend<Ipv4Addr> {
    Backend {
        address: Ipv4Addr::new(10, 244, 1, last),
        port: 8080,
        protocol: Protocol::Tcp,
        state: BackendState::Active,
    }
}

fn pod6(last: u8) -> Backend<Ipv6Addr> {
    Backend {
        address: Ipv6Addr::new(0xfd00, 0x10, 0x244, 1, 0, 0, 0, last.into()),
        port: 8080,
        protocol: Protocol::Tcp,
        state: BackendState::Active,
    }
}

fn entry<A>(backends: Vec<Backend<A>>) -> ServiceEntry<A> {
    ServiceEntry::cluster_ip(backends)
}

fn pods4(lasts: &[u8]) -> ServiceEntry<Ipv4Addr> {
    entry(lasts.iter().copied().map(pod4).collect())
}

fn empty_writer4() -> Twin4 {
    Twin::new()
}

/// Runs one writer call and returns the map operations it made, failing the test if any single
/// one of them left half a service visible.
fn step<A: Address, R>(
    writer: &mut Twin<A>,
    what: &str,
    call: impl FnOnce(&mut Twin<A>) -> R,
) -> (R, Vec<Op<A>>) {
    let before = writer.maps().ops.len();
    let result = call(writer);
    let maps = writer.maps();
    assert!(
        maps.violations.is_empty(),
        "{what}: half a service was visible: {:#?}\nops: {:#?}",
        maps.violations,
        &maps.ops[before..]
    );
    (result, maps.ops[before..].to_vec())
}

/// What a packet would see: every visible frontend (slot 0) with the backends its slots name,
/// each slot carrying the frontend's reverse-NAT id, which restores the frontend.
fn served<A: Address>(maps: &LbSnapshot<A>) -> BTreeMap<Frontend<A>, Vec<Backend<A>>> {
    maps.resolve()
        .into_iter()
        .map(|resolved| {
            let frontend = resolved.frontend;
            for slot in 1..=resolved.slots.len() as u16 {
                assert_eq!(
                    maps.services[&key(frontend, slot)].rev_nat_id,
                    resolved.rev_nat_id,
                    "{frontend} slot {slot}"
                );
            }
            assert_eq!(
                resolved.reverse_nat,
                Some((frontend.address, frontend.port)),
                "{frontend}: reverse NAT entry"
            );
            let backends = resolved
                .backends()
                .unwrap_or_else(|| panic!("{frontend}: a slot or backend is missing"));
            (frontend, backends)
        })
        .collect()
}

/// The ID the maps hold `backend` under.
fn id_of<A: Address>(maps: &LbSnapshot<A>, backend: &Backend<A>) -> u32 {
    maps.backends
        .iter()
        .find(|(_, b)| b.key() == backend.key())
        .map(|(id, _)| *id)
        .unwrap_or_else(|| panic!("backend {backend:?} is not in the maps"))
}

fn rev_nat_of<A: Address>(maps: &LbSnapshot<A>, frontend: &Frontend<A>) -> u32 {
    maps.services
        .get(&key(*frontend, 0))
        .unwrap_or_else(|| panic!("{frontend} has no slot 0"))
        .rev_nat_id
}

fn delete_backend_ids<A: Address>(ops: &[Op<A>]) -> BTreeSet<u32> {
    ops.iter()
        .map(|op| match op {
            Op::DeleteBackend(id) => *id,
            other => panic!("expected only backend deletes, got {other:?}"),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// A service's life, in both families

/// Create with 3 backends, scale to 5, scale to 1, change the backend, delete: the maps say
/// exactly what was asked after each step, and no single operation showed half a service.
fn lifecycle<A: Address>(frontend: Frontend<A>, pod: impl Fn(u8) -> Backend<A>) {
    let mut writer: Twin<A> = Twin::new();
    let pods = |lasts: &[u8]| -> Vec<Backend<A>> { lasts.iter().copied().map(&pod).collect() };

    for (what, lasts) in [
        ("create with 3 backends", &[1, 2, 3][..]),
        ("scale to 5", &[1, 2, 3, 4, 5]),
        ("scale to 1", &[1]),
        ("change the backend", &[7]),
    ] {
        let (changed, ops) = step(&mut writer, what, |w| {
            w.upsert(&frontend, &entry(pods(lasts)))
        });
        assert!(changed.expect(what), "{what}: upsert reported no change");
        assert!(!ops.is_empty(), "{what}: nothing written");
        let maps = writer.maps();
        assert_eq!(
            served(&maps),
            BTreeMap::from([(frontend, pods(lasts))]),
            "{what}"
        );
        // Nothing else lingers: exactly the used backends and one reverse NAT entry.
        assert_eq!(maps.services.len(), lasts.len() + 1, "{what}: service map");
        assert_eq!(maps.backends.len(), lasts.len(), "{what}: backend map");
        assert_eq!(maps.reverse_nat.len(), 1, "{what}: reverse NAT map");
    }

    let (removed, _) = step(&mut writer, "delete", |w| w.remove(&frontend));
    assert!(removed.expect("delete"));
    let maps = writer.maps();
    assert!(maps.services.is_empty(), "{:?}", maps.services);
    assert!(maps.backends.is_empty(), "{:?}", maps.backends);
    assert!(maps.reverse_nat.is_empty(), "{:?}", maps.reverse_nat);
    assert_eq!(writer.frontend_count(), 0);
    assert_eq!(writer.backend_count(), 0);
}

#[test]
fn ipv4_service_lifecycle_never_shows_half_a_service() {
    lifecycle(service(), pod4);
}

#[test]
fn ipv6_service_lifecycle_never_shows_half_a_service() {
    let frontend = Frontend::new(
        "fd00:10:96::10".parse::<Ipv6Addr>().unwrap(),
        443,
        Protocol::Tcp,
    );
    lifecycle(frontend, pod6);
}

// ---------------------------------------------------------------------------------------------
// The order of writes

#[test]
fn create_writes_backends_then_reverse_nat_then_slots_then_slot_0() {
    let mut writer = empty_writer4();
    let s = service();
    let (changed, ops) = step(&mut writer, "create", |w| w.upsert(&s, &pods4(&[1, 2, 3])));
    assert!(changed.unwrap());
    let maps = writer.maps();
    let [b1, b2, b3] = [1, 2, 3].map(|p| id_of(&maps, &pod4(p)));
    assert_eq!(
        ops,
        vec![
            Op::PutBackend(b1),
            Op::PutBackend(b2),
            Op::PutBackend(b3),
            Op::PutReverseNat(rev_nat_of(&maps, &s)),
            Op::PutService(s, 1),
            Op::PutService(s, 2),
            Op::PutService(s, 3),
            Op::PutService(s, 0),
        ]
    );
    assert_eq!(maps.services[&key(s, 0)].count, 3);
    assert_eq!(
        codec::decode_head(&maps.services[&key(s, 0)]).kind,
        Some(FrontendKind::ClusterIp)
    );
    assert_eq!(maps.services[&key(s, 2)].backend_id, b2);
}

#[test]
fn scale_up_writes_only_the_new_backends_and_slots_then_slot_0() {
    let mut writer = empty_writer4();
    let s = service();
    writer.upsert(&s, &pods4(&[1, 2, 3])).unwrap();
    let (_, ops) = step(&mut writer, "scale to 5", |w| {
        w.upsert(&s, &pods4(&[1, 2, 3, 4, 5])).unwrap()
    });
    let maps = writer.maps();
    assert_eq!(
        ops,
        vec![
            Op::PutBackend(id_of(&maps, &pod4(4))),
            Op::PutBackend(id_of(&maps, &pod4(5))),
            Op::PutService(s, 4),
            Op::PutService(s, 5),
            Op::PutService(s, 0),
        ],
        "slots 1-3 are already right and must not be rewritten"
    );
    assert_eq!(maps.services[&key(s, 0)].count, 5);
}

#[test]
fn scale_down_writes_slot_0_then_trims_stale_slots_then_deletes_unused_backends() {
    let mut writer = empty_writer4();
    let s = service();
    writer.upsert(&s, &pods4(&[1, 2, 3, 4, 5])).unwrap();
    let gone: BTreeSet<u32> = [2, 3, 4, 5].map(|p| id_of(&writer.maps(), &pod4(p))).into();
    let (_, ops) = step(&mut writer, "scale to 1", |w| {
        w.upsert(&s, &pods4(&[1])).unwrap()
    });
    assert_eq!(ops.len(), 9, "{ops:#?}");
    assert_eq!(ops[0], Op::PutService(s, 0), "slot 0 shrinks first");
    let trimmed: BTreeSet<u16> = ops[1..5]
        .iter()
        .map(|op| match op {
            Op::DeleteService(f, slot) if *f == s => *slot,
            other => panic!("expected a stale slot trimmed, got {other:?}"),
        })
        .collect();
    assert_eq!(trimmed, BTreeSet::from([2, 3, 4, 5]));
    assert_eq!(
        delete_backend_ids(&ops[5..]),
        gone,
        "unused backends go last"
    );
    assert_eq!(writer.maps().services[&key(s, 0)].count, 1);
}

#[test]
fn changed_backend_is_written_before_its_slot_and_the_old_one_deleted_last() {
    let mut writer = empty_writer4();
    let s = service();
    writer.upsert(&s, &pods4(&[1, 2, 3])).unwrap();
    let old = id_of(&writer.maps(), &pod4(2));
    let (_, ops) = step(&mut writer, "replace pod 2 by pod 9", |w| {
        w.upsert(&s, &pods4(&[1, 9, 3])).unwrap()
    });
    let new = id_of(&writer.maps(), &pod4(9));
    assert_ne!(old, new);
    assert_eq!(
        ops,
        vec![
            Op::PutBackend(new),
            Op::PutService(s, 2),
            Op::PutService(s, 0),
            Op::DeleteBackend(old),
        ]
    );
    assert_eq!(served(&writer.maps())[&s], vec![pod4(1), pod4(9), pod4(3)]);
}

#[test]
fn delete_removes_slot_0_first_then_slots_then_reverse_nat_then_backends() {
    let mut writer = empty_writer4();
    let s = service();
    writer.upsert(&s, &pods4(&[1, 2, 3])).unwrap();
    let maps = writer.maps();
    let rev_nat = rev_nat_of(&maps, &s);
    let backends: BTreeSet<u32> = [1, 2, 3].map(|p| id_of(&maps, &pod4(p))).into();
    let (removed, ops) = step(&mut writer, "delete", |w| w.remove(&s));
    assert!(removed.unwrap());
    assert_eq!(
        ops[..5],
        [
            Op::DeleteService(s, 0),
            Op::DeleteService(s, 1),
            Op::DeleteService(s, 2),
            Op::DeleteService(s, 3),
            Op::DeleteReverseNat(rev_nat),
        ]
    );
    assert_eq!(delete_backend_ids(&ops[5..]), backends);
    let stats = writer.stats();
    assert_eq!(stats.frontends_deleted, 1);
    assert_eq!(stats.backend_deletes, 3);
}

// ---------------------------------------------------------------------------------------------
// Writing only what changed

#[test]
fn unchanged_upsert_writes_nothing() {
    let mut writer = empty_writer4();
    let s = service();
    assert!(writer.upsert(&s, &pods4(&[1, 2, 3])).unwrap());
    let stats = writer.stats();
    let (changed, ops) = step(&mut writer, "same entry again", |w| {
        w.upsert(&s, &pods4(&[1, 2, 3]))
    });
    assert!(
        !changed.unwrap(),
        "an unchanged upsert must report no change"
    );
    assert_eq!(ops, vec![]);
    assert_eq!(writer.stats(), stats);

    // Removing a frontend that is not programmed is no change either.
    let (removed, ops) = step(&mut writer, "remove unknown", |w| {
        w.remove(&frontend4(99, 80))
    });
    assert!(!removed.unwrap());
    assert_eq!(ops, vec![]);

    // A backend's state is part of the entry: a pod starting to terminate is a change.
    let mut terminating = pods4(&[1, 2, 3]);
    terminating.backends[1].state = BackendState::Terminating;
    let (changed, ops) = step(&mut writer, "pod 2 terminating", |w| {
        w.upsert(&s, &terminating)
    });
    assert!(changed.unwrap());
    let id = id_of(&writer.maps(), &pod4(2));
    assert_eq!(ops[0], Op::PutBackend(id), "{ops:?}");
    assert_eq!(writer.maps().backends[&id].state, BackendState::Terminating);
    assert_eq!(writer.stats().backend_writes, stats.backend_writes + 1);
}

#[test]
fn changing_only_slot_0_attributes_rewrites_slot_0_and_nothing_else() {
    let mut writer = empty_writer4();
    let s = service();
    let base = pods4(&[1, 2, 3]);
    writer.upsert(&s, &base).unwrap();
    let changes: [(&str, ServiceEntry<Ipv4Addr>); 5] = [
        (
            "session affinity on",
            ServiceEntry {
                affinity_timeout: Some(60),
                ..base.clone()
            },
        ),
        (
            "another affinity timeout",
            ServiceEntry {
                affinity_timeout: Some(90),
                ..base.clone()
            },
        ),
        (
            "a Local policy",
            ServiceEntry {
                local: true,
                affinity_timeout: Some(90),
                ..base.clone()
            },
        ),
        (
            "another kind, two scopes",
            ServiceEntry {
                kind: FrontendKind::ExternalIp,
                two_scopes: true,
                local: true,
                affinity_timeout: Some(90),
                ..base.clone()
            },
        ),
        (
            "load balancer source ranges",
            ServiceEntry {
                kind: FrontendKind::LoadBalancer,
                source_ranges: vec![(Ipv4Addr::new(198, 51, 100, 0), 24)],
                ..base.clone()
            },
        ),
    ];
    for (what, changed) in changes {
        let (result, ops) = step(&mut writer, what, |w| w.upsert(&s, &changed));
        assert!(result.unwrap(), "{what}: reported as no change");
        assert_eq!(ops, vec![Op::PutService(s, 0)], "{what}");
        let maps = writer.maps();
        assert_eq!(
            codec::decode_head(&maps.services[&key(s, 0)]),
            Head {
                kind: Some(changed.kind),
                local: changed.local,
                two_scopes: changed.two_scopes,
                source_ranges: !changed.source_ranges.is_empty(),
                affinity_timeout: changed.affinity_timeout,
            },
            "{what}"
        );
        assert_eq!(served(&maps)[&s], base.backends, "{what}");
        // The same entry again is no change.
        let (result, ops) = step(&mut writer, what, |w| w.upsert(&s, &changed));
        assert!(!result.unwrap() && ops.is_empty(), "{what}: {ops:?}");
    }
}

#[test]
fn backend_shared_by_two_frontends_survives_removing_one() {
    let mut writer = empty_writer4();
    let (a, b) = (frontend4(10, 80), frontend4(11, 80));
    writer.upsert(&a, &pods4(&[1, 2])).unwrap();
    let shared: Vec<u32> = [1, 2].map(|p| id_of(&writer.maps(), &pod4(p))).to_vec();
    let (_, ops) = step(&mut writer, "second frontend", |w| {
        w.upsert(&b, &pods4(&[1, 2, 3])).unwrap()
    });
    let puts: Vec<u32> = ops
        .iter()
        .filter_map(|op| match op {
            Op::PutBackend(id) => Some(*id),
            _ => None,
        })
        .collect();
    assert_eq!(
        puts,
        vec![id_of(&writer.maps(), &pod4(3))],
        "shared backends are reused, not rewritten"
    );
    assert_eq!(writer.maps().backends.len(), 3);

    let (_, ops) = step(&mut writer, "remove the first frontend", |w| {
        w.remove(&a).unwrap()
    });
    assert!(
        !ops.iter().any(|op| matches!(op, Op::DeleteBackend(_))),
        "a backend another frontend uses was deleted: {ops:?}"
    );
    let maps = writer.maps();
    assert_eq!(
        served(&maps),
        BTreeMap::from([(b, vec![pod4(1), pod4(2), pod4(3)])])
    );
    for (p, id) in [1, 2].into_iter().zip(shared) {
        assert_eq!(id_of(&maps, &pod4(p)), id);
    }

    let (_, ops) = step(&mut writer, "remove the second frontend", |w| {
        w.remove(&b).unwrap()
    });
    assert_eq!(delete_backend_ids(&ops[ops.len() - 3..]).len(), 3);
    assert!(writer.maps().backends.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Restart: restore from pinned maps

#[test]
fn restore_renumbers_nothing_and_reconciling_the_same_state_writes_nothing() {
    let (a, b) = (frontend4(10, 80), frontend4(12, 53));
    let b = Frontend {
        protocol: Protocol::Udp,
        ..b
    };
    let dns = |last| Backend {
        port: 5353,
        protocol: Protocol::Udp,
        ..pod4(last)
    };
    let desired = [(a, pods4(&[2, 4, 6])), (b, entry(vec![dns(4), dns(8)]))];

    // An earlier agent's history leaves gaps in the IDs.
    let mut earlier = empty_writer4();
    earlier.upsert(&frontend4(11, 80), &pods4(&[1, 3])).unwrap();
    for (frontend, entry) in &desired {
        earlier.upsert(frontend, entry).unwrap();
    }
    earlier.remove(&frontend4(11, 80)).unwrap();
    let before = earlier.pinned();
    assert_eq!(before.backends.len(), 5);
    assert!(!before.backends.contains_key(&1), "test needs ID gaps");

    let mut writer = Twin::holding(earlier.pinned());
    assert_eq!(
        writer.maps().ops,
        vec![],
        "restoring complete services writes nothing"
    );
    assert_eq!(writer.frontend_count(), 2);
    assert_eq!(writer.backend_count(), 5);

    let (errors, ops) = step(&mut writer, "reconcile the same state", |w| {
        w.reconcile(desired.iter().map(|(f, e)| (f, e)))
    });
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(ops, vec![]);
    assert_eq!(writer.stats(), WriterStats::default());
    let maps = writer.maps();
    assert_eq!(maps.services, before.services);
    assert_eq!(maps.backends, before.backends);
    assert_eq!(maps.reverse_nat, before.reverse_nat);

    // New IDs do not collide with restored ones.
    let (_, _) = step(&mut writer, "add a pod and a frontend", |w| {
        w.upsert(&a, &pods4(&[2, 4, 6, 10])).unwrap();
        w.upsert(&frontend4(13, 80), &pods4(&[2])).unwrap();
    });
    let maps = writer.maps();
    let new_backend = id_of(&maps, &pod4(10));
    assert!(!before.backends.contains_key(&new_backend));
    let new_rev_nat = rev_nat_of(&maps, &frontend4(13, 80));
    assert!(!before.reverse_nat.contains_key(&new_rev_nat));
    for (frontend, _) in &desired {
        assert_eq!(rev_nat_of(&maps, frontend), rev_nat_of(&before, frontend));
    }
}

/// Maps an interrupted agent left behind: `half` has slot 0 (count 3) and slots 1-2 but no
/// slot 3; `whole` (10.96.0.20:80, one backend) is complete.
fn interrupted_maps() -> (MemoryMaps<Ipv4Addr>, Frontend<Ipv4Addr>, Frontend<Ipv4Addr>) {
    let (half, whole) = (service(), frontend4(20, 80));
    let mut maps = MemoryMaps::default();
    for id in 1..=3 {
        maps.backends.insert(id, pod4(id as u8));
    }
    maps.reverse_nat.insert(1, (half.address, half.port));
    maps.reverse_nat.insert(2, (whole.address, whole.port));
    let head = |count, rev_nat_id| codec::head(&pods4(&[]), rev_nat_id, count);
    let slot = ServiceValue::slot;
    maps.services.insert(key(half, 0), head(3, 1));
    maps.services.insert(key(half, 1), slot(1, 1));
    maps.services.insert(key(half, 2), slot(2, 1));
    maps.services.insert(key(whole, 0), head(1, 2));
    maps.services.insert(key(whole, 1), slot(3, 2));
    (maps, half, whole)
}

#[test]
fn restore_removes_a_half_written_service_and_reconcile_rewrites_it_whole() {
    let (maps, half, whole) = interrupted_maps();
    let mut writer = Twin::holding(maps);
    let maps = writer.maps();
    assert!(
        !maps.services.keys().any(|k| k.frontend == half),
        "the half-written service must be gone: {:?}",
        maps.services
    );
    assert!(
        maps.ops
            .iter()
            .all(|op| matches!(op, Op::DeleteService(f, _) if *f == half)),
        "restore touched more than the half-written service: {:?}",
        maps.ops
    );
    assert_eq!(served(&maps), BTreeMap::from([(whole, vec![pod4(3)])]));
    assert_eq!(writer.frontend_count(), 1);

    let violations_before = writer.maps().violations.len();
    let ops_before = writer.maps().ops.len();
    let desired = [(half, pods4(&[1, 2, 3])), (whole, pods4(&[3]))];
    let errors = writer.reconcile(desired.iter().map(|(f, e)| (f, e)));
    assert!(errors.is_empty(), "{errors:?}");
    let maps = writer.maps();
    assert_eq!(
        maps.violations[violations_before..],
        [] as [String; 0],
        "the rewrite showed half a service"
    );
    assert_eq!(
        served(&maps),
        BTreeMap::from([
            (half, vec![pod4(1), pod4(2), pod4(3)]),
            (whole, vec![pod4(3)])
        ])
    );
    // The pods kept their IDs; only the stale reverse NAT entry of the broken service went.
    for id in 1..=3 {
        assert_eq!(maps.backends[&id], pod4(id as u8));
    }
    let ops = &maps.ops[ops_before..];
    assert!(
        !ops.iter().any(|op| matches!(op, Op::PutBackend(_))),
        "{ops:?}"
    );
    assert!(ops.contains(&Op::DeleteReverseNat(1)), "{ops:?}");
    assert_eq!(maps.reverse_nat.len(), 2);
    assert!(
        !ops.iter()
            .any(|op| matches!(op, Op::PutService(f, _) | Op::DeleteService(f, _) if *f == whole)),
        "the complete service was rewritten: {ops:?}"
    );
}

#[test]
fn restore_hides_a_half_written_service_before_deleting_its_slots() {
    let (maps, half, _) = interrupted_maps();
    let writer = Twin::holding(maps);
    let maps = writer.maps();
    assert_eq!(
        maps.ops.first(),
        Some(&Op::DeleteService(half, 0)),
        "slot 0 must go first, so the broken service disappears at once: {:?}",
        maps.ops
    );
    assert_eq!(
        maps.ops,
        vec![
            Op::DeleteService(half, 0),
            Op::DeleteService(half, 1),
            Op::DeleteService(half, 2),
        ]
    );
    assert!(
        maps.violations.is_empty(),
        "restore showed half a service: {:#?}",
        maps.violations
    );
}

// ---------------------------------------------------------------------------------------------
// Failed writes

/// The services table of a twin, with a fault a test switches on while a writer owns it:
/// deleting a backend slot (slot > 0) fails.
struct FailingSlotDeletes {
    inner: BoxedTable<SlotKey<Ipv4Addr>, ServiceValue>,
    fail: Arc<AtomicBool>,
}

impl Table<SlotKey<Ipv4Addr>, ServiceValue> for FailingSlotDeletes {
    fn dump(&self) -> Result<Vec<(SlotKey<Ipv4Addr>, ServiceValue)>, MapError> {
        self.inner.dump()
    }
    fn put(&mut self, key: &SlotKey<Ipv4Addr>, value: &ServiceValue) -> Result<(), MapError> {
        self.inner.put(key, value)
    }
    fn delete(&mut self, key: &SlotKey<Ipv4Addr>) -> Result<(), MapError> {
        if key.slot > 0 && self.fail.load(Ordering::Relaxed) {
            return Err(MapError::Full {
                map: "test",
                capacity: 0,
            });
        }
        self.inner.delete(key)
    }
}

/// A writer whose slot deletes fail while the returned switch is on.
fn with_failing_slot_deletes() -> (Twin4, Arc<AtomicBool>) {
    let shared = MemoryMaps::default().shared();
    let fail = Arc::new(AtomicBool::new(false));
    let mut tables = MemoryMaps::tables(&shared);
    tables.services = Box::new(FailingSlotDeletes {
        inner: tables.services,
        fail: fail.clone(),
    });
    let writer = Writer::restore(tables).expect("restore from empty maps");
    (Twin { writer, shared }, fail)
}

fn assert_no_violations(maps: &MemoryMaps<Ipv4Addr>, what: &str) {
    assert!(
        maps.violations.is_empty(),
        "{what}: half a service was visible: {:#?}\nops: {:#?}",
        maps.violations,
        maps.ops
    );
}

#[test]
fn failed_update_into_a_full_map_keeps_the_old_service_whole() {
    let mut writer = empty_writer4();
    let capacity = |writer: &Twin4, capacity| {
        writer.shared.lock().unwrap().service_capacity = capacity;
    };
    let s = service();
    assert!(writer.upsert(&s, &pods4(&[1])).unwrap());
    let b1 = id_of(&writer.maps(), &pod4(1));

    // Slot 0 and slot 1 fill the map: slot 1 can be overwritten, slot 2 cannot be added.
    capacity(&writer, Some(2));
    let result = writer.upsert(&s, &pods4(&[2, 3]));
    assert!(
        matches!(result, Err(WriteError::Map(MapError::Full { .. }))),
        "{result:?}"
    );
    let maps = &writer.maps();
    assert_no_violations(maps, "failed update");
    assert_eq!(served(maps), BTreeMap::from([(s, vec![pod4(1)])]));
    assert_eq!(maps.services[&key(s, 0)].count, 1);
    assert_eq!(
        maps.services[&key(s, 1)].backend_id,
        b1,
        "slot 1 rolled back"
    );
    assert!(maps.backends.contains_key(&b1));
    assert_eq!(maps.services.len(), 2, "{:?}", maps.services);
    assert_eq!(
        maps.backends.keys().copied().collect::<Vec<_>>(),
        vec![b1],
        "the new backends are released again"
    );

    // The writer still knows the old entry: asking for it again is no change, and right.
    let ops = writer.maps().ops.len();
    assert!(!writer.upsert(&s, &pods4(&[1])).unwrap());
    let maps = &writer.maps();
    assert_eq!(maps.ops[ops..], [] as [Op<Ipv4Addr>; 0]);
    assert_eq!(served(maps), BTreeMap::from([(s, vec![pod4(1)])]));
    assert_no_violations(maps, "same entry again");

    // With room, the update goes through whole.
    capacity(&writer, Some(3));
    assert!(writer.upsert(&s, &pods4(&[2, 3])).unwrap());
    let maps = &writer.maps();
    assert_no_violations(maps, "update with room");
    assert_eq!(served(maps), BTreeMap::from([(s, vec![pod4(2), pod4(3)])]));
    assert_eq!(maps.services.len(), 3);
    assert!(!maps.backends.contains_key(&b1), "pod 1 is unused now");
    assert_eq!(maps.backends.len(), 2);
}

#[test]
fn failed_trim_after_slot_0_keeps_the_backends_slot_0_names() {
    let (mut writer, fail_slot_deletes) = with_failing_slot_deletes();
    let s = service();
    assert!(writer.upsert(&s, &pods4(&[1, 2, 3])).unwrap());

    // Slot 0 shrinks to one slot naming pod 4; trimming slots 2 and 3 then fails.
    fail_slot_deletes.store(true, Ordering::Relaxed);
    let result = writer.upsert(&s, &pods4(&[4]));
    assert!(
        matches!(
            result,
            Err(WriteError::Map(MapError::Full { map: "test", .. }))
        ),
        "{result:?}"
    );
    let maps = &writer.maps();
    assert_no_violations(maps, "failed trim");
    let b4 = id_of(maps, &pod4(4));
    assert_eq!(maps.services[&key(s, 0)].count, 1);
    assert_eq!(maps.services[&key(s, 1)].backend_id, b4);
    assert!(maps.backends.contains_key(&b4));
    assert_eq!(served(maps), BTreeMap::from([(s, vec![pod4(4)])]));

    // The committed entry is what the writer knows: asking for it again is no change.
    fail_slot_deletes.store(false, Ordering::Relaxed);
    assert!(!writer.upsert(&s, &pods4(&[4])).unwrap());
    // A restart trims the invisible leftovers and keeps pod 4.
    let restored = Twin::holding(writer.pinned());
    let maps = &restored.maps();
    assert_no_violations(maps, "restore after a failed trim");
    assert_eq!(served(maps), BTreeMap::from([(s, vec![pod4(4)])]));
    assert_eq!(maps.services.len(), 2, "{:?}", maps.services);
}

/// Forty new frontends, sharing some backends, as a cold start programs them.
fn many_frontends() -> Vec<(Frontend<Ipv4Addr>, ServiceEntry<Ipv4Addr>)> {
    (0..40u8)
        .map(|i| {
            (
                frontend4(100 + i, 80),
                pods4(&[i % 7 + 1, i % 5 + 10, 30 + i]),
            )
        })
        .collect()
}

#[test]
fn many_new_frontends_go_in_phases_backends_reverse_nat_slots_then_every_slot_0() {
    let mut writer = empty_writer4();
    let items = many_frontends();
    let errors = writer.upsert_many(&items);
    assert!(errors.is_empty(), "{errors:?}");
    let maps = writer.maps();
    assert!(maps.violations.is_empty(), "{:?}", maps.violations);
    let served = served(&maps);
    for (frontend, entry) in &items {
        assert_eq!(served.get(frontend), Some(&entry.backends), "{frontend}");
    }
    // Phase order across all frontends: no slot before the last backend, no slot 0 before
    // the last backend slot.
    let position = |pred: &dyn Fn(&Op<Ipv4Addr>) -> bool, last: bool| {
        let mut hits = maps
            .ops
            .iter()
            .enumerate()
            .filter(|(_, op)| pred(op))
            .map(|(i, _)| i);
        if last { hits.last() } else { hits.next() }.expect("some op")
    };
    let last_backend = position(&|op| matches!(op, Op::PutBackend(_)), true);
    let last_rev_nat = position(&|op| matches!(op, Op::PutReverseNat(_)), true);
    let first_slot = position(&|op| matches!(op, Op::PutService(_, s) if *s > 0), false);
    let last_slot = position(&|op| matches!(op, Op::PutService(_, s) if *s > 0), true);
    let first_head = position(&|op| matches!(op, Op::PutService(_, 0)), false);
    assert!(last_backend < first_slot && last_rev_nat < first_slot && last_slot < first_head);
    // Shared backends are written once.
    let distinct: BTreeSet<_> = items.iter().flat_map(|(_, e)| e.backends.clone()).collect();
    assert_eq!(writer.stats().backend_writes, distinct.len() as u64);

    // The same again changes nothing; a restart reads back exactly this state.
    let before = writer.stats();
    assert!(writer.upsert_many(&items).is_empty());
    assert_eq!(writer.stats(), before);
    let mut restored = Twin::holding(writer.pinned());
    let writes = restored.stats();
    assert!(
        restored
            .reconcile(items.iter().map(|(f, e)| (f, e)))
            .is_empty()
    );
    assert_eq!(restored.stats(), writes, "a restart rewrote entries");
}

#[test]
fn a_failed_batch_falls_back_to_one_by_one_and_leaves_no_half_service() {
    // Room for 40 slot-0 entries but not for every backend slot: the batch fails part way.
    let maps = MemoryMaps {
        service_capacity: Some(100),
        ..MemoryMaps::default()
    };
    let mut writer = Twin::holding(maps);
    let items = many_frontends();
    let errors = writer.upsert_many(&items);
    let maps = writer.maps();
    assert!(maps.violations.is_empty(), "{:?}", maps.violations);
    // Whatever was written is whole, and every frontend not written is reported.
    let served = served(&maps);
    for (frontend, entry) in &items {
        match served.get(frontend) {
            Some(backends) => assert_eq!(backends, &entry.backends, "{frontend}"),
            None => assert!(
                errors.iter().any(|(f, _)| f == frontend),
                "{frontend} lost silently"
            ),
        }
    }
    assert!(!errors.is_empty() && served.len() < items.len());
    // No backend is left without a slot naming it.
    let named: BTreeSet<u32> = maps
        .services
        .iter()
        .filter(|(key, _)| key.slot > 0)
        .map(|(_, v)| v.backend_id)
        .collect();
    assert!(
        maps.backends.keys().all(|id| named.contains(id)),
        "leaked backends"
    );
}

/// A backend that leaves a frontend takes that frontend's affinity bindings to it along, and
/// only those: the same client keeps its binding elsewhere.
#[test]
fn a_departed_backend_takes_its_affinity_bindings_along() {
    use proxy_common::{AffinityKey, AffinityValue, affinity_by};
    let mut writer = empty_writer4();
    let (s, other) = (service(), frontend4(11, 80));
    writer.upsert(&s, &pods4(&[1, 2])).unwrap();
    writer.upsert(&other, &pods4(&[1])).unwrap();
    let maps = writer.maps();
    let (a, b) = (id_of(&maps, &pod4(1)), id_of(&maps, &pod4(2)));
    let (rev_s, rev_other) = (rev_nat_of(&maps, &s), rev_nat_of(&maps, &other));
    let binding = |client: u8, rev_nat_id, backend_id| {
        let mut address = [0u8; 16];
        address[..4].copy_from_slice(&[10, 244, 1, client]);
        (
            AffinityKey::new(address, affinity_by::ADDRESS, rev_nat_id),
            AffinityValue {
                last_used: 1,
                backend_id,
                _pad: [0; 4],
            },
        )
    };
    let bindings = [
        binding(7, rev_s, a),
        binding(8, rev_s, b),
        binding(7, rev_other, a),
    ];
    writer.shared.lock().unwrap().affinity = bindings.into_iter().collect();

    writer.upsert(&s, &pods4(&[2])).unwrap();
    assert_eq!(writer.purge_affinities().unwrap(), 1);
    assert_eq!(
        writer.maps().affinity,
        BTreeMap::from([bindings[1], bindings[2]]),
        "only the departed backend's binding to this frontend went"
    );
    assert_eq!(
        writer.purge_affinities().unwrap(),
        0,
        "nothing left to purge"
    );

    // Removing a frontend ends its bindings too.
    writer.remove(&other).unwrap();
    assert_eq!(writer.purge_affinities().unwrap(), 1);
    assert_eq!(writer.maps().affinity.len(), 1);
}
