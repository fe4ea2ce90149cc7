//! Layer-1 test of the agent's word to the datapath that a family's `--cluster-cidr` holds no
//! frontend (`cluster_clear`): said at once, withdrawn while a frontend inside it (an external
//! IP there) is programmed, said again once it is gone, and written only when it changes.
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use proxy_userspace::{
    family::Family,
    proxier::{ClusterWatch, MetaProxier},
    source::{Kind, Object, SourceEvent},
    sync::Syncer,
};
use serde_json::json;

/// `web` at 10.96.0.5:80, with `external_ips`.
fn service(external_ips: &[&str]) -> Object {
    Object::service(
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.5", "clusterIPs": ["10.96.0.5"], "ipFamilies": ["IPv4"],
                     "externalIPs": external_ips,
                     "ports": [{"name": "http", "protocol": "TCP", "port": 80}]},
        }))
        .unwrap(),
    )
}

#[test]
fn the_cluster_cidr_is_said_clear_unless_a_frontend_lies_inside_it() {
    let (mut meta, _, _) = MetaProxier::in_memory("node-a", vec![Family::V4]);
    let written = Arc::new(Mutex::new(Vec::new()));
    let record = written.clone();
    let watch = ClusterWatch::new(
        "10.244.0.0/16".parse().unwrap(),
        Box::new(move |clear| {
            record.lock().unwrap().push(clear);
            Ok(())
        }),
    );
    assert!(meta.watch_cluster(Some(watch), None).is_empty());
    let said = || written.lock().unwrap().clone();
    assert_eq!(said(), [true], "empty maps: clear at once");

    let mut syncer = Syncer::new(meta, "node-a", Duration::ZERO);
    syncer.handle(SourceEvent::Replace(
        Kind::Service,
        vec![service(&["192.0.2.10"])],
    ));
    syncer.handle(SourceEvent::Replace(Kind::EndpointSlice, vec![]));
    syncer.sync();
    assert!(syncer.last_sync_succeeded());
    assert_eq!(
        said(),
        [true],
        "frontends outside the cluster CIDR: nothing new to say"
    );

    syncer.handle(SourceEvent::Apply(service(&["192.0.2.10", "10.244.200.1"])));
    syncer.sync();
    assert_eq!(
        said(),
        [true, false],
        "an external IP inside it: the lookup stays"
    );

    syncer.handle(SourceEvent::Apply(service(&["192.0.2.10"])));
    syncer.sync();
    assert_eq!(said(), [true, false, true], "gone again: clear");
    syncer.repair();
    assert_eq!(said(), [true, false, true, true], "a repair says it again");
}
