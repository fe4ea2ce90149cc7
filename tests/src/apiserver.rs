//! A test Kubernetes API server: Services, Nodes and EndpointSlices over plain HTTP on
//! 127.0.0.1, reached through a kubeconfig by the same kube-rs client and watcher the agent
//! uses in production. Lists (selectors, chunking, resourceVersion semantics), watches
//! (bookmarks, `410 Expired`), a bounded event window, and failure injection (dropped
//! connections, stop/start on the same port, 503s) for recovery tests and benchmarks.
//!
//! Writes go through the Rust handle ([`ApiServer::apply`], [`ApiServer::delete`]); the
//! HTTP side is read-only (get, list, watch), which is all a proxy agent does.
//!
//! The server runs on its own thread and Tokio runtime, so sync tests and async tests (of any
//! runtime flavour) can use it alike; dropping the handle stops and joins everything.
mod http;
mod selector;
mod store;

use std::{
    collections::{BTreeMap, VecDeque},
    io,
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use tokio::sync::{oneshot, watch};

use store::Store;

// The handle is shared between a test and the tasks it drives.
const _: fn() = || {
    fn shareable<T: Send + Sync>() {}
    shareable::<ApiServer>();
};

/// The kinds the server stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Service,
    EndpointSlice,
    Node,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Service, Kind::EndpointSlice, Kind::Node];

    /// The kind named by an object's `apiVersion` and `kind`.
    pub fn from_type(api_version: &str, kind: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.api_version() == api_version && k.kind() == kind)
    }

    pub fn kind(self) -> &'static str {
        match self {
            Self::Service => "Service",
            Self::EndpointSlice => "EndpointSlice",
            Self::Node => "Node",
        }
    }

    pub fn list_kind(self) -> &'static str {
        match self {
            Self::Service => "ServiceList",
            Self::EndpointSlice => "EndpointSliceList",
            Self::Node => "NodeList",
        }
    }

    pub fn api_version(self) -> &'static str {
        match self {
            Self::Service | Self::Node => "v1",
            Self::EndpointSlice => "discovery.k8s.io/v1",
        }
    }

    /// The API group, empty for the core group.
    pub fn group(self) -> &'static str {
        match self {
            Self::Service | Self::Node => "",
            Self::EndpointSlice => "discovery.k8s.io",
        }
    }

    pub fn plural(self) -> &'static str {
        match self {
            Self::Service => "services",
            Self::EndpointSlice => "endpointslices",
            Self::Node => "nodes",
        }
    }

    pub fn namespaced(self) -> bool {
        !matches!(self, Self::Node)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What went wrong with a write through the handle.
#[derive(Debug, thiserror::Error)]
pub enum ApiServerError {
    #[error(
        "unsupported kind {0} (the server stores v1 Service, v1 Node, discovery.k8s.io/v1 EndpointSlice)"
    )]
    UnsupportedKind(String),
    #[error("invalid object: {0}")]
    Invalid(String),
    #[error("{kind} {namespace}/{name} not found")]
    NotFound {
        kind: &'static str,
        namespace: String,
        name: String,
    },
    #[error("reading {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("parsing {path}: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
}

/// Tunables; [`Default`] suits tests.
#[derive(Clone, Debug)]
pub struct ApiServerConfig {
    /// How many events the server keeps for watches to resume from (the real watch cache
    /// keeps a window too). A watch from an RV older than the window gets `410 Expired`.
    pub event_window: usize,
    /// How often a watch that asked for bookmarks gets one while nothing else happens.
    pub bookmark_interval: Duration,
}

impl Default for ApiServerConfig {
    fn default() -> Self {
        Self {
            event_window: 1000,
            bookmark_interval: Duration::from_secs(5),
        }
    }
}

/// Requests served (not refused with 503) for one kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestCounts {
    pub lists: u64,
    pub watches: u64,
    pub gets: u64,
}

#[derive(Clone, Copy)]
enum Verb {
    List,
    Watch,
    Get,
}

/// How many request lines [`ApiServer::recent_requests`] keeps.
const RECENT_REQUESTS: usize = 512;

/// What the handle and the server's tasks share.
struct Shared {
    config: ApiServerConfig,
    store: Mutex<Store>,
    /// The latest RV, sent after every write: wakes the watches.
    changes: watch::Sender<u64>,
    /// Bumped by `drop_connections`: every connection task closes its connection.
    connections: watch::Sender<u64>,
    /// Open connections per generation, so `drop_connections` can wait for the old ones.
    open: Mutex<BTreeMap<u64, usize>>,
    unavailable: AtomicBool,
    /// Requests answered 503 because of `set_unavailable`.
    refused: AtomicU64,
    counts: [[AtomicU64; 3]; Kind::ALL.len()],
    recent: Mutex<VecDeque<String>>,
}

impl Shared {
    fn count(&self, kind: Kind, verb: Verb) {
        self.counts[kind.index()][verb as usize].fetch_add(1, Ordering::SeqCst);
    }

    fn remember(&self, line: String) {
        let mut recent = self.recent.lock().expect("recent lock");
        if recent.len() == RECENT_REQUESTS {
            recent.pop_front();
        }
        recent.push_back(line);
    }

    fn register_connection(shared: &Arc<Self>) -> Connection {
        let mut generation = shared.connections.subscribe();
        let current = *generation.borrow_and_update();
        *shared
            .open
            .lock()
            .expect("open lock")
            .entry(current)
            .or_default() += 1;
        Connection {
            shared: shared.clone(),
            generation,
            registered: current,
        }
    }

    /// How many connections accepted before generation `generation` are still open.
    fn open_before(&self, generation: u64) -> usize {
        let open = self.open.lock().expect("open lock");
        open.range(..generation).map(|(_, n)| n).sum()
    }

    fn notify(&self) {
        let rv = self.store.lock().expect("store lock").rv();
        self.changes.send_replace(rv);
    }
}

/// An accepted connection's registration: closes when its generation is bumped; counted
/// open until dropped.
struct Connection {
    shared: Arc<Shared>,
    generation: watch::Receiver<u64>,
    registered: u64,
}

impl Drop for Connection {
    fn drop(&mut self) {
        let mut open = self.shared.open.lock().expect("open lock");
        if let Some(n) = open.get_mut(&self.registered) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.registered);
            }
        }
    }
}

/// The serving task of one `start`: stopping it closes the listener and every connection.
struct Serving {
    stop: oneshot::Sender<()>,
    done: mpsc::Receiver<()>,
}

/// The server's own thread and runtime.
struct Runtime {
    handle: tokio::runtime::Handle,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

/// The handle of a running (or stopped) test API server. Every method takes `&self`, so the
/// handle can be shared (`Arc`) between a test and the tasks it drives.
pub struct ApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    runtime: Runtime,
    serving: Mutex<Option<Serving>>,
}

impl ApiServer {
    /// Starts a server with the default configuration on an ephemeral port of 127.0.0.1.
    pub fn new() -> io::Result<Self> {
        Self::with_config(ApiServerConfig::default())
    }

    pub fn with_config(config: ApiServerConfig) -> io::Result<Self> {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::new(config.event_window.max(1))),
            config,
            changes: watch::channel(0).0,
            connections: watch::channel(0).0,
            open: Mutex::new(BTreeMap::new()),
            unavailable: AtomicBool::new(false),
            refused: AtomicU64::new(0),
            counts: Default::default(),
            recent: Mutex::new(VecDeque::new()),
        });
        let server = Self {
            shared,
            addr,
            runtime: Runtime::spawn()?,
            serving: Mutex::new(None),
        };
        server.serve(listener)?;
        Ok(server)
    }

    /// `127.0.0.1:port`; the same across `stop` and `start`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server URL a kubeconfig names: `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig for this server: one cluster, one user with a dummy bearer token (the
    /// server checks no credentials), one context, selected as current.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: twinstack-test
  cluster:
    server: {url}
users:
- name: twinstack-test
  user:
    token: twinstack-test-token
contexts:
- name: twinstack-test
  context:
    cluster: twinstack-test
    user: twinstack-test
    namespace: default
current-context: twinstack-test
preferences: {{}}
",
            url = self.url()
        )
    }

    /// Writes [`ApiServer::kubeconfig`] to `path`.
    pub fn write_kubeconfig(&self, path: impl AsRef<Path>) -> io::Result<()> {
        std::fs::write(path, self.kubeconfig())
    }

    /// Creates or replaces one object (a v1 Service or Node, a discovery.k8s.io/v1
    /// EndpointSlice, as `kubectl get -o json` prints it) and returns it as stored, with its
    /// new `metadata.resourceVersion`. A namespaced object without a namespace goes to
    /// `default`; an update that changes nothing makes no event, as on the real server.
    pub fn apply(&self, object: Value) -> Result<Value, ApiServerError> {
        let (kind, value) = Store::prepare(object)?;
        let stored = self
            .shared
            .store
            .lock()
            .expect("store lock")
            .put(kind, value);
        self.shared.notify();
        Ok(stored.value.clone())
    }

    /// Applies many objects under one lock and one wake-up of the watches (fast enough for
    /// tens of thousands). All are checked before any is stored. Returns the RV after the
    /// last one.
    pub fn apply_all(
        &self,
        objects: impl IntoIterator<Item = Value>,
    ) -> Result<u64, ApiServerError> {
        let prepared = objects
            .into_iter()
            .map(Store::prepare)
            .collect::<Result<Vec<_>, _>>()?;
        let rv = {
            let mut store = self.shared.store.lock().expect("store lock");
            for (kind, value) in prepared {
                store.put(kind, value);
            }
            store.rv()
        };
        self.shared.notify();
        Ok(rv)
    }

    /// Applies a JSON file holding one object or a `List` of them (`kubectl get -o json`).
    pub fn apply_file(&self, path: impl AsRef<Path>) -> Result<u64, ApiServerError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ApiServerError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let value: Value = serde_json::from_str(&text).map_err(|source| ApiServerError::Parse {
            path: path.display().to_string(),
            source,
        })?;
        match value {
            Value::Object(mut map) if map.get("kind").and_then(Value::as_str) == Some("List") => {
                let items = match map.remove("items") {
                    Some(Value::Array(items)) => items,
                    _ => Vec::new(),
                };
                self.apply_all(items)
            }
            object => self.apply_all([object]),
        }
    }

    /// Deletes an object (`namespace` is ignored for Nodes) and returns its last state.
    pub fn delete(&self, kind: Kind, namespace: &str, name: &str) -> Result<Value, ApiServerError> {
        let deleted = self
            .shared
            .store
            .lock()
            .expect("store lock")
            .delete(kind, namespace, name);
        self.shared.notify();
        deleted
            .map(|object| object.value.clone())
            .ok_or_else(|| ApiServerError::NotFound {
                kind: kind.kind(),
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            })
    }

    /// The stored object, if any (`namespace` is ignored for Nodes).
    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<Value> {
        let namespace = if kind.namespaced() { namespace } else { "" };
        let store = self.shared.store.lock().expect("store lock");
        store.get(kind, namespace, name).map(|o| o.value.clone())
    }

    /// Every stored object of `kind`, in list order.
    pub fn objects(&self, kind: Kind) -> Vec<Value> {
        let store = self.shared.store.lock().expect("store lock");
        store
            .table(kind)
            .values()
            .map(|o| o.value.clone())
            .collect()
    }

    /// The current (global) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.store.lock().expect("store lock").rv()
    }

    /// Drops the whole event history (and moves the RV on by one), like an etcd compaction
    /// past every client: a watch or exact list from any earlier RV is answered `410
    /// Expired`, so a client whose watch breaks must relist. Open watches go on.
    pub fn compact(&self) {
        self.shared.store.lock().expect("store lock").compact();
        self.shared.notify();
    }

    /// Closes every open connection: watch streams end mid-stream, in-flight requests get no
    /// answer. Returns once they are closed (bounded wait), so no change made after this call
    /// reaches a client over an old connection. The server keeps listening.
    pub fn drop_connections(&self) {
        let mut generation = 0;
        self.shared.connections.send_modify(|g| {
            *g += 1;
            generation = *g;
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.shared.open_before(generation) > 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(1));
        }
    }

    /// Stops listening and closes every connection; returns once the port is released. The
    /// store is kept; [`ApiServer::start`] serves it again on the same port.
    pub fn stop(&self) {
        let serving = self.serving.lock().expect("serving lock").take();
        if let Some(serving) = serving {
            let _ = serving.stop.send(());
            // Bounded: the serving task only has to abort its connection tasks.
            let _ = serving.done.recv_timeout(Duration::from_secs(5));
        }
    }

    /// Listens again on the same port after [`ApiServer::stop`] (a no-op while running), so a
    /// kubeconfig written earlier stays valid.
    pub fn start(&self) -> io::Result<()> {
        if self.is_running() {
            return Ok(());
        }
        // std sets SO_REUSEADDR, so connections of the last run in TIME_WAIT do not block this.
        self.serve(std::net::TcpListener::bind(self.addr)?)
    }

    pub fn is_running(&self) -> bool {
        self.serving.lock().expect("serving lock").is_some()
    }

    /// While set, every request is answered `503 ServiceUnavailable` (without `Retry-After`).
    /// Note that kube-rs clients retry 503s by default (exponential backoff, 15 tries), so a
    /// request made while unavailable may still succeed once this is cleared.
    pub fn set_unavailable(&self, unavailable: bool) {
        self.shared.unavailable.store(unavailable, Ordering::SeqCst);
    }

    /// How many requests were answered 503 because of [`ApiServer::set_unavailable`].
    pub fn refused_requests(&self) -> u64 {
        self.shared.refused.load(Ordering::SeqCst)
    }

    /// The list, watch and get requests served so far for `kind`.
    pub fn requests(&self, kind: Kind) -> RequestCounts {
        let counts = &self.shared.counts[kind.index()];
        let read = |verb: Verb| counts[verb as usize].load(Ordering::SeqCst);
        RequestCounts {
            lists: read(Verb::List),
            watches: read(Verb::Watch),
            gets: read(Verb::Get),
        }
    }

    /// The last requests received (`"GET /api/v1/services?limit=500"`), oldest first.
    pub fn recent_requests(&self) -> Vec<String> {
        let recent = self.shared.recent.lock().expect("recent lock");
        recent.iter().cloned().collect()
    }

    fn serve(&self, listener: std::net::TcpListener) -> io::Result<()> {
        listener.set_nonblocking(true)?;
        let listener = {
            let _runtime = self.runtime.handle.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        let (stop, stop_rx) = oneshot::channel();
        let (done_tx, done) = mpsc::channel();
        let shared = self.shared.clone();
        self.runtime.handle.spawn(async move {
            http::serve(shared, listener, stop_rx).await;
            let _ = done_tx.send(());
        });
        *self.serving.lock().expect("serving lock") = Some(Serving { stop, done });
        Ok(())
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop();
        self.runtime.stop();
    }
}

impl Runtime {
    fn spawn() -> io::Result<Self> {
        let (handle_tx, handle_rx) = mpsc::channel();
        let (shutdown, shutdown_rx) = oneshot::channel::<()>();
        let thread = thread::Builder::new()
            .name("apiserver".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("apiserver-worker")
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        let _ = handle_tx.send(Err(error));
                        return;
                    }
                };
                let _ = handle_tx.send(Ok(runtime.handle().clone()));
                runtime.block_on(async {
                    let _ = shutdown_rx.await;
                });
                // Outside any async context: waits (bounded) for the workers, dropping every
                // task still on the runtime.
                runtime.shutdown_timeout(Duration::from_secs(5));
            })?;
        let handle = handle_rx
            .recv()
            .map_err(|_| io::Error::other("the apiserver thread died while starting"))??;
        Ok(Self {
            handle,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    fn stop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
