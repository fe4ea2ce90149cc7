//! Layer-1 tests of what the syncer reports for kube-proxy's metrics: changes counted (an
//! unchanged object sent again is none), pending until the sync that takes them, and the
//! slices' trigger times measured once programmed, never from before the agent started nor
//! for a deleted slice.
use std::time::{Duration, SystemTime};

use k8s_openapi::{api::discovery::v1::EndpointSlice, jiff::Timestamp};
use proxy_userspace::{
    family::Family,
    model::LAST_CHANGE_TRIGGER_TIME,
    proxier::MetaProxier,
    source::{Kind, Object, SourceEvent},
    sync::Syncer,
    tracker::ChangeCounts,
};
use serde_json::json;

fn service() -> Object {
    Object::service(
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.5", "clusterIPs": ["10.96.0.5"], "ipFamilies": ["IPv4"],
                     "ports": [{"name": "http", "protocol": "TCP", "port": 80}]},
        }))
        .unwrap(),
    )
}

/// Slice `web-1` of `web` with one endpoint at `10.244.1.<host>`, triggered at `trigger`.
fn slice(host: u8, trigger: Option<SystemTime>) -> Object {
    let mut value = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-1", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
        "endpoints": [{"addresses": [format!("10.244.1.{host}")], "conditions": {"ready": true}}],
    });
    if let Some(time) = trigger {
        let text = Timestamp::try_from(time).unwrap().to_string();
        value["metadata"]["annotations"] = json!({ LAST_CHANGE_TRIGGER_TIME: text });
    }
    let slice: EndpointSlice = serde_json::from_value(value).unwrap();
    Object::endpoint_slice(slice).unwrap()
}

fn counts(
    services: u64,
    endpoints: u64,
    services_pending: u64,
    endpoints_pending: u64,
) -> ChangeCounts {
    ChangeCounts {
        service_changes: services,
        endpoint_changes: endpoints,
        service_changes_pending: services_pending,
        endpoint_changes_pending: endpoints_pending,
    }
}

#[test]
fn changes_are_counted_and_trigger_times_measured_once_programmed() {
    let long_ago = SystemTime::now() - Duration::from_secs(3600);
    let (meta, _, _) = MetaProxier::in_memory("node-a", vec![Family::V4]);
    let mut syncer = Syncer::new(meta, "node-a", Duration::ZERO);

    // The first lists: a slice last changed before the agent started is not measured.
    syncer.handle(SourceEvent::Replace(Kind::Service, vec![service()]));
    syncer.handle(SourceEvent::Replace(
        Kind::EndpointSlice,
        vec![slice(1, Some(long_ago))],
    ));
    assert_eq!(syncer.change_counts(), counts(1, 1, 1, 1));
    syncer.sync();
    assert!(syncer.last_sync_succeeded());
    assert_eq!(syncer.change_counts(), counts(1, 1, 0, 0));
    assert!(syncer.take_programmed_trigger_times().is_empty());

    // The same objects again (a relist, a manifest re-read): no change.
    syncer.handle(SourceEvent::Replace(Kind::Service, vec![service()]));
    syncer.handle(SourceEvent::Apply(slice(1, Some(long_ago))));
    assert_eq!(syncer.change_counts(), counts(1, 1, 0, 0));

    // A new endpoint, triggered now: pending until the sync, then measured once.
    let now = SystemTime::now();
    syncer.handle(SourceEvent::Apply(slice(2, Some(now))));
    assert_eq!(syncer.change_counts(), counts(1, 2, 0, 1));
    assert!(
        syncer.take_programmed_trigger_times().is_empty(),
        "not programmed yet"
    );
    syncer.sync();
    let measured = syncer.take_programmed_trigger_times();
    assert_eq!(measured.len(), 1);
    assert!(measured[0].duration_since(now).unwrap_or_default() < Duration::from_millis(1));
    assert!(syncer.take_programmed_trigger_times().is_empty());

    // Without the annotation: counted, not measured.
    syncer.handle(SourceEvent::Apply(slice(3, None)));
    syncer.sync();
    assert_eq!(syncer.change_counts(), counts(1, 3, 0, 0));
    assert!(syncer.take_programmed_trigger_times().is_empty());

    // Deleted: its annotation is the time of its last update, not of the deletion.
    syncer.handle(SourceEvent::Apply(slice(4, Some(SystemTime::now()))));
    syncer.handle(SourceEvent::Replace(Kind::EndpointSlice, vec![]));
    assert_eq!(syncer.change_counts(), counts(1, 5, 0, 2));
    syncer.sync();
    assert!(syncer.take_programmed_trigger_times().is_empty());
}
