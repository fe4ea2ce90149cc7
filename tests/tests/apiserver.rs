//! The test API server, driven by the real kube-rs client and watcher through the kubeconfig
//! the server writes: the same code path the agent uses against a real cluster.
use std::{
    collections::BTreeMap,
    future::Future,
    io::{Read as _, Write as _},
    path::{Path, PathBuf},
    pin::Pin,
    time::{Duration, Instant},
};

use futures::{Stream, StreamExt as _};
use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, VersionMatch, WatchEvent, WatchParams},
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{WatchStreamExt as _, watcher},
};
use serde_json::{Value, json};
use twinstack_lab::{
    apiserver::{ApiServer, ApiServerConfig, Kind},
    objects::ServiceBuilder,
};

/// Every wait is bounded by this.
const WAIT: Duration = Duration::from_secs(10);

fn fixture(name: &str) -> Value {
    let path: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/api")
        .join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// A server holding the demo Service, its two EndpointSlices and node-a.
fn demo_server(config: ApiServerConfig) -> ApiServer {
    let server = ApiServer::with_config(config).expect("starting the test API server");
    for name in [
        "service-demo.json",
        "endpointslice-demo-ipv4.json",
        "endpointslice-demo-ipv6.json",
        "node-node-a.json",
    ] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/api")
            .join(name);
        server.apply_file(&path).expect(name);
    }
    server
}

/// A kube-rs client built from the kubeconfig file the server wrote, as the agent builds it.
async fn client(server: &ApiServer) -> Client {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("kubeconfig");
    server.write_kubeconfig(&path).expect("writing kubeconfig");
    let kubeconfig = Kubeconfig::read_from(&path).expect("kube-rs reads the kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kube-rs accepts the kubeconfig");
    assert_eq!(config.cluster_url.scheme_str(), Some("http"));
    Client::try_from(config).expect("kube-rs builds a client for an http:// server")
}

fn service(name: &str, labels: Value) -> Value {
    let labels = labels.as_object().cloned().unwrap_or_default();
    labels
        .iter()
        .fold(ServiceBuilder::new(name), |service, (key, value)| {
            service.label(key, value.as_str().unwrap_or_default())
        })
        .cluster_ips(&["10.96.1.1".parse().expect("IP")])
        .port("http", "TCP", 80, 8080)
        .json()
}

fn names<K: kube::Resource>(items: &[K]) -> Vec<String> {
    items.iter().map(ResourceExt::name_any).collect()
}

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, future)
        .await
        .unwrap_or_else(|_| panic!("timed out after {WAIT:?} waiting for {what}"))
}

type Events<K> = Pin<Box<dyn Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send>>;

/// What a watcher's consumer would hold: the objects by name, rebuilt on every relist.
struct Mirror<K> {
    events: Events<K>,
    objects: BTreeMap<String, K>,
    relisting: Option<BTreeMap<String, K>>,
    log: Vec<String>,
    inits: usize,
    errors: Vec<String>,
}

impl<K: kube::Resource + Clone> Mirror<K> {
    fn new(events: Events<K>) -> Self {
        Self {
            events,
            objects: BTreeMap::new(),
            relisting: None,
            log: Vec::new(),
            inits: 0,
            errors: Vec::new(),
        }
    }

    async fn next(&mut self) {
        let event = tokio::time::timeout(WAIT, self.events.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "timed out after {WAIT:?} waiting for a watcher event; so far: {:?}",
                    self.log
                )
            })
            .expect("the watcher stream does not end");
        match event {
            Ok(watcher::Event::Init) => {
                self.inits += 1;
                self.relisting = Some(BTreeMap::new());
                self.log.push("Init".into());
            }
            Ok(watcher::Event::InitApply(object)) => {
                self.log.push(format!("InitApply {}", object.name_any()));
                self.relisting
                    .as_mut()
                    .expect("InitApply inside Init")
                    .insert(object.name_any(), object);
            }
            Ok(watcher::Event::InitDone) => {
                self.log.push("InitDone".into());
                self.objects = self.relisting.take().expect("InitDone after Init");
            }
            Ok(watcher::Event::Apply(object)) => {
                self.log.push(format!("Apply {}", object.name_any()));
                self.objects.insert(object.name_any(), object);
            }
            Ok(watcher::Event::Delete(object)) => {
                self.log.push(format!("Delete {}", object.name_any()));
                self.objects.remove(&object.name_any());
            }
            Err(error) => {
                self.log.push(format!("Err {error}"));
                self.errors.push(error.to_string());
            }
        }
    }

    /// Feeds events until `done` holds (bounded by [`WAIT`] overall).
    async fn until(&mut self, what: &str, done: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; events so far: {:?}",
                self.log
            );
            self.next().await;
        }
    }

    fn rv_of(&self, name: &str) -> Option<String> {
        self.objects.get(name).and_then(|o| o.resource_version())
    }
}

fn rv_of(value: &Value) -> String {
    value["metadata"]["resourceVersion"]
        .as_str()
        .expect("stored objects carry a resourceVersion")
        .to_owned()
}

#[tokio::test]
async fn a_label_selector_filters_out_proxy_name_and_headless_services() {
    let server = demo_server(ApiServerConfig::default());
    server
        .apply(service(
            "other-proxy",
            json!({"service.kubernetes.io/service-proxy-name": "someone-else"}),
        ))
        .unwrap();
    server
        .apply(service(
            "headless",
            json!({"service.kubernetes.io/headless": ""}),
        ))
        .unwrap();
    server
        .apply(service("plain", json!({"app": "plain"})))
        .unwrap();
    let kube = client(&server).await;
    let version = kube.apiserver_version().await.expect("GET /version");
    assert_eq!(
        (version.major.as_str(), version.minor.as_str()),
        ("1", "33")
    );
    let services: Api<Service> = Api::all(kube.clone());

    let everything = services.list(&ListParams::default()).await.expect("list");
    assert_eq!(
        names(&everything.items),
        ["demo", "headless", "other-proxy", "plain"]
    );
    let selected =
        services
            .list(&ListParams::default().labels(
                "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless",
            ))
            .await
            .expect("list with a label selector");
    assert_eq!(names(&selected.items), ["demo", "plain"]);
    assert_eq!(
        selected.metadata.resource_version,
        Some(server.resource_version().to_string())
    );

    // The fixture arrives intact through the typed client.
    let demo = &selected.items[0];
    let spec = demo.spec.as_ref().expect("spec");
    assert_eq!(
        spec.cluster_ips.as_deref(),
        Some(&["10.96.0.10".to_owned(), "fd00:10:96::10".to_owned()][..])
    );
    assert_eq!(spec.ports.as_ref().map(Vec::len), Some(2));
    assert_eq!(demo.metadata.namespace.as_deref(), Some("default"));

    let namespaced: Api<Service> = Api::namespaced(kube, "kube-system");
    assert!(
        namespaced
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert_eq!(server.requests(Kind::Service).lists, 3);
    let bad = services
        .list(&ListParams::default().labels("a=b=c"))
        .await
        .expect_err("an invalid selector is refused");
    assert!(
        matches!(&bad, kube::Error::Api(s) if s.code == 400),
        "{bad:?}"
    );
}

#[tokio::test]
async fn a_chunked_list_returns_everything_across_pages() {
    let server = demo_server(ApiServerConfig::default());
    for i in 0..6 {
        server
            .apply(service(&format!("svc-{i}"), json!({"app": "many"})))
            .unwrap();
    }
    let services: Api<Service> = Api::all(client(&server).await);
    let mut seen = Vec::new();
    let mut pages = 0;
    let mut token: Option<String> = None;
    let mut list_rv = None;
    loop {
        let mut params = ListParams::default().limit(2);
        if let Some(token) = &token {
            params = params.continue_token(token);
        }
        let page = services.list(&params).await.expect("a page");
        pages += 1;
        assert!(page.items.len() <= 2, "a page holds at most `limit` items");
        // Every page is the same consistent snapshot.
        let rv = page.metadata.resource_version.clone();
        assert!(
            list_rv.is_none() || list_rv == rv,
            "pages share the list's RV"
        );
        list_rv = rv;
        seen.extend(names(&page.items));
        if pages == 1 {
            assert_eq!(page.metadata.remaining_item_count, Some(5));
            // A change between pages does not show up in the rest of the list.
            server
                .apply(service("svc-late", json!({"app": "many"})))
                .unwrap();
            server.delete(Kind::Service, "default", "svc-5").unwrap();
        }
        token = page.metadata.continue_.filter(|t| !t.is_empty());
        if token.is_none() {
            break;
        }
        assert!(pages < 10, "pagination ends");
    }
    assert_eq!(pages, 4);
    assert_eq!(
        seen,
        ["demo", "svc-0", "svc-1", "svc-2", "svc-3", "svc-4", "svc-5"]
    );

    // A forged token is refused; a token older than the retained history is expired.
    let forged = services
        .list(&ListParams::default().limit(2).continue_token("not-a-token"))
        .await
        .expect_err("a forged continue token");
    assert!(
        matches!(&forged, kube::Error::Api(s) if s.code == 400),
        "{forged:?}"
    );
    let first = services
        .list(&ListParams::default().limit(2))
        .await
        .unwrap();
    let token = first.metadata.continue_.expect("more pages");
    server
        .apply(service("svc-after", json!({"app": "many"})))
        .unwrap();
    server.compact();
    let expired = services
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .expect_err("an expired continue token");
    assert!(
        matches!(&expired, kube::Error::Api(s) if s.code == 410 && s.reason == "Expired"),
        "{expired:?}"
    );
}

#[tokio::test]
async fn an_exact_list_shows_the_past_until_compaction() {
    let server = demo_server(ApiServerConfig::default());
    let services: Api<Service> = Api::all(client(&server).await);
    let before = server.resource_version().to_string();
    server
        .apply(service("svc-new", json!({"app": "new"})))
        .unwrap();
    let exact = ListParams::default()
        .at(&before)
        .matching(VersionMatch::Exact);
    let past = services.list(&exact).await.expect("an exact list");
    assert_eq!(names(&past.items), ["demo"]);
    assert_eq!(past.metadata.resource_version.as_deref(), Some(&*before));
    let now = services.list(&ListParams::default()).await.unwrap();
    assert_eq!(names(&now.items), ["demo", "svc-new"]);

    server.compact();
    let gone = services.list(&exact).await.expect_err("compacted away");
    assert!(
        matches!(&gone, kube::Error::Api(s) if s.code == 410),
        "{gone:?}"
    );
    // An RV from the future is a 504 with Retry-After (checked raw: kube-rs would retry it).
    let future = server.resource_version() + 100;
    let (code, body) = raw_request(
        &server,
        &format!("/api/v1/services?resourceVersion={future}&resourceVersionMatch=NotOlderThan"),
    );
    assert_eq!(code, 504);
    let status: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status["reason"], "Timeout");
}

#[tokio::test]
async fn the_watcher_sees_the_initial_list_then_updates_and_deletes() {
    let server = demo_server(ApiServerConfig::default());
    server
        .apply(service("plain", json!({"app": "plain"})))
        .unwrap();
    let services: Api<Service> = Api::all(client(&server).await);
    let mut mirror = Mirror::new(watcher(services, watcher::Config::default()).boxed());

    mirror
        .until("the initial list", |m| {
            m.log.last().map(String::as_str) == Some("InitDone")
        })
        .await;
    assert_eq!(
        mirror.log,
        ["Init", "InitApply demo", "InitApply plain", "InitDone"]
    );
    // The watcher lists in pages of 500 with no RV (most recent), then watches from the
    // list's RV with bookmarks.
    let requests = server.recent_requests();
    assert!(
        requests
            .iter()
            .any(|r| r.starts_with("GET /api/v1/services?")
                && r.contains("limit=500")
                && !r.contains("resourceVersion")),
        "{requests:?}"
    );

    let mut changed = fixture("service-demo.json");
    changed["spec"]["sessionAffinity"] = json!("ClientIP");
    let stored = server.apply(changed).unwrap();
    mirror.until("the update", |m| m.log.len() > 4).await;
    assert_eq!(mirror.log[4], "Apply demo");
    assert_eq!(mirror.rv_of("demo"), Some(rv_of(&stored)));
    assert_eq!(
        mirror.objects["demo"]
            .spec
            .as_ref()
            .and_then(|s| s.session_affinity.as_deref()),
        Some("ClientIP")
    );

    server.delete(Kind::Service, "default", "plain").unwrap();
    mirror.until("the delete", |m| m.log.len() > 5).await;
    assert_eq!(mirror.log[5], "Delete plain");
    assert_eq!(mirror.objects.keys().collect::<Vec<_>>(), ["demo"]);
    assert_eq!(server.requests(Kind::Service).lists, 1);
    assert_eq!(server.requests(Kind::Service).watches, 1);
    assert!(mirror.errors.is_empty(), "{:?}", mirror.errors);
}

#[tokio::test]
async fn after_compaction_a_broken_watch_relists_and_converges() {
    // No bookmarks during the test: one would carry the post-compaction RV to the watcher.
    let server = demo_server(ApiServerConfig {
        bookmark_interval: Duration::from_secs(3600),
        ..ApiServerConfig::default()
    });
    server
        .apply(service("plain", json!({"app": "plain"})))
        .unwrap();
    let slices: Api<EndpointSlice> = Api::namespaced(client(&server).await, "default");
    let mut mirror = Mirror::new(
        watcher(
            slices,
            watcher::Config::default().labels("kubernetes.io/service-name=demo"),
        )
        .boxed(),
    );
    mirror
        .until("the initial list", |m| {
            m.inits == 1 && m.relisting.is_none()
        })
        .await;
    assert_eq!(
        mirror.objects.keys().collect::<Vec<_>>(),
        ["demo-ipv4", "demo-ipv6"]
    );
    // An event through the watch proves the stream is open when the connections drop.
    let mut scaled = fixture("endpointslice-demo-ipv6.json");
    scaled["endpoints"][1]["conditions"]["ready"] = json!(false);
    let scaled = server.apply(scaled).unwrap();
    mirror
        .until("the watch to deliver", |m| {
            m.rv_of("demo-ipv6") == Some(rv_of(&scaled))
        })
        .await;
    let lists_before = server.requests(Kind::EndpointSlice).lists;

    server.compact();
    server.drop_connections();
    // Changes while the watcher is cut off: it must end up with them all the same.
    let mut moved = fixture("endpointslice-demo-ipv4.json");
    moved["endpoints"][0]["addresses"] = json!(["10.244.2.9"]);
    let moved = server.apply(moved).unwrap();
    server
        .delete(Kind::EndpointSlice, "default", "demo-ipv6")
        .unwrap();

    mirror
        .until("the relist to converge", |m| {
            m.inits == 2
                && m.relisting.is_none()
                && m.objects.len() == 1
                && m.rv_of("demo-ipv4") == Some(rv_of(&moved))
        })
        .await;
    assert!(
        mirror.errors.iter().any(|e| e.contains("Expired")),
        "the resumed watch was told 410 Expired: {:?}",
        mirror.log
    );
    assert!(server.requests(Kind::EndpointSlice).lists > lists_before);
    let endpoints = mirror.objects["demo-ipv4"].endpoints.clone();
    assert_eq!(endpoints[0].addresses, ["10.244.2.9"]);
}

#[tokio::test]
async fn the_watcher_recovers_from_a_server_stop_and_start_on_the_same_port() {
    let server = demo_server(ApiServerConfig::default());
    let addr = server.addr();
    let services: Api<Service> = Api::all(client(&server).await);
    let mut mirror = Mirror::new(
        watcher(services, watcher::Config::default())
            .default_backoff()
            .boxed(),
    );
    mirror
        .until("the initial list", |m| {
            m.inits == 1 && m.relisting.is_none()
        })
        .await;

    // An event through the watch proves the stream is open before the server goes away.
    let updated = server
        .apply(service("before-stop", json!({"app": "early"})))
        .unwrap();
    mirror
        .until("the watch to deliver", |m| {
            m.rv_of("before-stop") == Some(rv_of(&updated))
        })
        .await;
    assert_eq!(server.requests(Kind::Service).watches, 1);

    server.stop();
    assert!(!server.is_running());
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "a stopped server refuses connections"
    );
    let added = server
        .apply(service("while-down", json!({"app": "late"})))
        .unwrap();
    // The watch stream ended and reconnecting fails: the watcher reports an error.
    mirror
        .until("the watcher to notice", |m| !m.errors.is_empty())
        .await;
    server.start().expect("listening again on the same port");
    assert_eq!(server.addr(), addr);

    mirror
        .until("the object added while the server was down", |m| {
            m.rv_of("while-down") == Some(rv_of(&added))
        })
        .await;
    assert!(
        server.requests(Kind::Service).watches >= 2,
        "the watcher watched again"
    );
    assert_eq!(
        mirror.objects.keys().collect::<Vec<_>>(),
        ["before-stop", "demo", "while-down"]
    );
}

#[tokio::test]
async fn a_field_selector_picks_one_node() {
    let server = demo_server(ApiServerConfig::default());
    let mut other = fixture("node-node-a.json");
    other["metadata"]["name"] = json!("node-b");
    other["metadata"]["uid"] = json!("5e0a3c7b-8f4d-4b1e-9c2a-6d8f0b3e5a96");
    other["metadata"]["labels"]["kubernetes.io/hostname"] = json!("node-b");
    other["metadata"]["labels"]["topology.kubernetes.io/zone"] = json!("zone-b");
    server.apply(other).unwrap();
    let nodes: Api<Node> = Api::all(client(&server).await);

    assert_eq!(
        names(&nodes.list(&ListParams::default()).await.unwrap().items),
        ["node-a", "node-b"]
    );
    let picked = nodes
        .list(&ListParams::default().fields("metadata.name=node-a"))
        .await
        .expect("list with a field selector");
    assert_eq!(names(&picked.items), ["node-a"]);
    let node = &picked.items[0];
    assert_eq!(
        node.labels()
            .get("topology.kubernetes.io/zone")
            .map(String::as_str),
        Some("zone-a")
    );
    let internal: Vec<&str> = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .expect("addresses")
        .iter()
        .filter(|a| a.type_ == "InternalIP")
        .map(|a| a.address.as_str())
        .collect();
    assert_eq!(internal, ["10.0.0.1", "fd00::1"]);

    let got = nodes.get("node-b").await.expect("get one node");
    assert_eq!(got.name_any(), "node-b");
    let missing = nodes.get("node-z").await.expect_err("no such node");
    assert!(
        matches!(&missing, kube::Error::Api(s) if s.code == 404),
        "{missing:?}"
    );
    let unsupported = nodes
        .list(&ListParams::default().fields("spec.unknown=x"))
        .await
        .expect_err("an unsupported field");
    assert!(matches!(&unsupported, kube::Error::Api(s) if s.code == 400));
}

#[tokio::test]
async fn a_watch_with_a_label_selector_sees_objects_leave_and_rejoin_it() {
    let server = demo_server(ApiServerConfig::default());
    let services: Api<Service> = Api::all(client(&server).await);
    let from = server.resource_version().to_string();
    let mut stream = services
        .watch(&WatchParams::default().labels("app=demo").timeout(5), &from)
        .await
        .expect("a watch")
        .boxed();

    let mut relabelled = fixture("service-demo.json");
    relabelled["metadata"]["labels"] = json!({"app": "other"});
    let left = server.apply(relabelled).unwrap();
    server
        .apply(service("unrelated", json!({"app": "other"})))
        .unwrap();
    let rejoined = server.apply(fixture("service-demo.json")).unwrap();

    let mut seen = Vec::new();
    while seen.len() < 2 {
        match within("a watch event", stream.next()).await {
            Some(Ok(WatchEvent::Deleted(s))) => seen.push(("DELETED", s.resource_version())),
            Some(Ok(WatchEvent::Added(s))) => seen.push(("ADDED", s.resource_version())),
            Some(Ok(WatchEvent::Bookmark(_))) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    // Leaving the selection is a DELETED at the change's RV; the unrelated Service is not sent.
    assert_eq!(
        seen,
        [
            ("DELETED", Some(rv_of(&left))),
            ("ADDED", Some(rv_of(&rejoined)))
        ]
    );
}

#[tokio::test]
async fn watches_get_bookmarks_time_out_and_expire() {
    let server = demo_server(ApiServerConfig {
        bookmark_interval: Duration::from_millis(200),
        ..ApiServerConfig::default()
    });
    let services: Api<Service> = Api::all(client(&server).await);
    let now = server.resource_version().to_string();

    let started = Instant::now();
    let mut stream = services
        .watch(&WatchParams::default().timeout(1), &now)
        .await
        .expect("a watch")
        .boxed();
    let mut bookmarks = 0;
    while let Some(event) = within("the watch to end", stream.next()).await {
        match event.expect("a watch event") {
            WatchEvent::Bookmark(b) => {
                assert_eq!(b.metadata.resource_version, now);
                bookmarks += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(bookmarks >= 2, "bookmarks every 200ms, got {bookmarks}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "timeoutSeconds=1 ends the stream after about a second, took {took:?}"
    );

    server.compact();
    let mut stream = services
        .watch(&WatchParams::default(), &now)
        .await
        .expect("a watch from a compacted RV still answers 200")
        .boxed();
    match within("the expiry", stream.next()).await {
        Some(Ok(WatchEvent::Error(status))) => {
            assert_eq!(status.code, 410);
            assert_eq!(status.reason, "Expired");
        }
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
    assert!(within("the end", stream.next()).await.is_none());

    // A watch with no RV starts with the current objects as ADDED.
    let mut stream = services
        .watch(&WatchParams::default().timeout(1), "0")
        .await
        .unwrap()
        .boxed();
    match within("the initial event", stream.next()).await {
        Some(Ok(WatchEvent::Added(s))) => assert_eq!(s.name_any(), "demo"),
        other => panic!("expected ADDED demo, got {other:?}"),
    }
}

#[tokio::test]
async fn a_streaming_list_watcher_gets_initial_events_and_their_end_bookmark() {
    let server = demo_server(ApiServerConfig::default());
    let slices: Api<EndpointSlice> = Api::all(client(&server).await);
    let mut mirror =
        Mirror::new(watcher(slices, watcher::Config::default().streaming_lists()).boxed());
    mirror
        .until("the initial events", |m| {
            m.inits == 1 && m.relisting.is_none()
        })
        .await;
    assert_eq!(
        mirror.objects.keys().collect::<Vec<_>>(),
        ["demo-ipv4", "demo-ipv6"]
    );
    assert_eq!(server.requests(Kind::EndpointSlice).lists, 0);
}

#[tokio::test]
async fn an_unavailable_server_answers_503_until_cleared() {
    let server = demo_server(ApiServerConfig::default());
    let services: Api<Service> = Api::all(client(&server).await);
    server.set_unavailable(true);
    let (code, body) = raw_request(&server, "/api/v1/services");
    assert_eq!(code, 503);
    let status: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status["reason"], "ServiceUnavailable");

    // kube-rs retries a 503 by itself (exponential backoff): the list goes through once the
    // server is available again.
    let pending = tokio::spawn(async move { services.list(&ListParams::default()).await });
    within("kube-rs to retry", async {
        while server.refused_requests() < 3 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(
        server.requests(Kind::Service).lists,
        0,
        "a 503 is not counted as served"
    );
    server.set_unavailable(false);
    let list = within("the retried list", pending)
        .await
        .expect("the list task")
        .expect("the list succeeds after the 503s");
    assert_eq!(names(&list.items), ["demo"]);
    assert_eq!(server.requests(Kind::Service).lists, 1);
}

#[test]
fn twenty_thousand_slices_load_and_list_well_under_a_second() {
    let server = ApiServer::new().expect("server");
    let objects = (0..10_000u32).flat_map(|i| {
        let name = format!("svc-{i:05}");
        let (a, b) = (i / 250, i % 250);
        let svc = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "bench", "labels": {"app": name}},
            "spec": {"type": "ClusterIP", "clusterIP": format!("10.97.{a}.{b}"),
                "clusterIPs": [format!("10.97.{a}.{b}"), format!("fd00:10:96::1:{i:x}")],
                "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "RequireDualStack",
                "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}});
        let slice = |family: &str, address: String| {
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": format!("{name}-{}", family.to_lowercase()),
                    "namespace": "bench", "labels": {"kubernetes.io/service-name": name}},
                "addressType": family,
                "endpoints": [{"addresses": [address], "conditions": {"ready": true}}],
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]})
        };
        [
            svc,
            slice("IPv4", format!("10.244.{a}.{b}")),
            slice("IPv6", format!("fd00:10:244::{i:x}")),
        ]
    });
    let objects: Vec<Value> = objects.collect();
    let started = Instant::now();
    server.apply_all(objects).expect("bulk load");
    let loaded = started.elapsed();
    assert_eq!(server.objects(Kind::EndpointSlice).len(), 20_000);

    let started = Instant::now();
    let body = raw_get(&server, "/apis/discovery.k8s.io/v1/endpointslices");
    let listed = started.elapsed();
    let list: Value = serde_json::from_slice(&body).expect("a JSON list");
    assert_eq!(list["kind"], "EndpointSliceList");
    assert_eq!(list["items"].as_array().map(Vec::len), Some(20_000));
    assert!(
        list["items"][0].get("kind").is_none(),
        "list items carry no kind"
    );
    eprintln!("bulk load of 30000 objects: {loaded:?}; list of 20000 slices: {listed:?}");
    assert!(
        listed < Duration::from_millis(500),
        "listing took {listed:?}"
    );
    // Generous for unoptimised test builds; release builds load in a fraction of this.
    assert!(loaded < Duration::from_secs(20), "loading took {loaded:?}");
}

/// A plain HTTP/1.1 GET, so the timing is the server's alone; it must answer 200.
fn raw_get(server: &ApiServer, path: &str) -> Vec<u8> {
    let (code, body) = raw_request(server, path);
    assert_eq!(code, 200, "GET {path}: {}", String::from_utf8_lossy(&body));
    body
}

/// A plain HTTP/1.1 GET: the status code and the (de-chunked) body.
fn raw_request(server: &ApiServer, path: &str) -> (u16, Vec<u8>) {
    let mut stream = std::net::TcpStream::connect(server.addr()).expect("connect");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\nConnection: close\r\n\r\n",
        server.addr()
    )
    .unwrap();
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .expect("read the response");
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("headers end");
    let head = String::from_utf8_lossy(&response[..split]).to_string();
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("a status line: {head}"));
    let body = response.split_off(split + 4);
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        (code, dechunk(&body))
    } else {
        (code, body)
    }
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size");
        let size =
            usize::from_str_radix(std::str::from_utf8(&body[..line_end]).unwrap().trim(), 16)
                .expect("hex chunk size");
        body = &body[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

#[test]
fn dropping_the_handle_stops_the_server() {
    let server = ApiServer::new().expect("server");
    let addr = server.addr();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    server.write_kubeconfig(&path).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(&format!("server: http://{addr}")), "{text}");
    assert!(!raw_get(&server, "/version").is_empty());
    drop(server);
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "nothing listens once the handle is gone"
    );
}
