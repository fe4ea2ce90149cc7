//! The HTTP side: accepting connections, routing the API paths, lists (selectors, chunking,
//! resourceVersion semantics), gets, watches (newline-delimited JSON events, bookmarks,
//! `410 Expired`), and the `Status` bodies errors carry.
use std::{
    collections::VecDeque,
    convert::Infallible,
    ops::Bound,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Frame, Incoming},
    header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{oneshot, watch},
    task::JoinSet,
    time::Instant,
};
use tracing::debug;

use super::{
    Connection, Kind, Shared, Verb,
    selector::{FieldSelector, LabelSelector},
    store::{Event, Object, Table},
};

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Serves `listener` until `stop` fires (or its sender is dropped), then closes every
/// connection it accepted before returning.
pub(super) async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    mut stop: oneshot::Receiver<()>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    debug!(%peer, "apiserver: connection");
                    // Registered here, before the task runs, so `drop_connections` sees it.
                    let registration = Shared::register_connection(&shared);
                    connections.spawn(connection(shared.clone(), stream, registration));
                }
                Err(error) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    debug!(%error, "apiserver: accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    connections.shutdown().await;
}

/// One client connection, dropped (closed mid-request or mid-watch) by `drop_connections`.
async fn connection(shared: Arc<Shared>, stream: TcpStream, mut registration: Connection) {
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |request| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(handle(&shared, request)) }
    });
    let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        result = conn => {
            if let Err(error) = result {
                debug!(%error, "apiserver: connection ended");
            }
        }
        _ = registration.generation.changed() => debug!("apiserver: connection dropped"),
    }
}

fn handle(shared: &Arc<Shared>, request: Request<Incoming>) -> Response<Body> {
    let uri = request.uri();
    debug!(method = %request.method(), %uri, "apiserver: request");
    shared.remember(format!("{} {uri}", request.method()));
    if shared.unavailable.load(Ordering::SeqCst) {
        shared.refused.fetch_add(1, Ordering::SeqCst);
        return status(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "the server is currently unable to handle the request",
        );
    }
    if request.method() != Method::GET {
        return status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            &format!(
                "the server does not allow this method on the requested resource: {}",
                request.method()
            ),
        );
    }
    let query = Query::parse(uri.query().unwrap_or(""));
    let segments: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
    match segments.as_slice() {
        [] => json_response(
            StatusCode::OK,
            &json!({"paths": ["/api", "/api/v1", "/apis", "/apis/discovery.k8s.io",
                "/apis/discovery.k8s.io/v1", "/healthz", "/livez", "/readyz", "/version"]}),
        ),
        ["healthz" | "livez" | "readyz"] => text_response(StatusCode::OK, "ok"),
        ["version"] => json_response(StatusCode::OK, &version()),
        ["api"] => json_response(
            StatusCode::OK,
            &json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}),
        ),
        ["apis"] => json_response(
            StatusCode::OK,
            &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [discovery_group()]}),
        ),
        ["api", "v1"] => json_response(StatusCode::OK, &resource_list("v1")),
        ["apis", "discovery.k8s.io"] => {
            let mut group = discovery_group();
            group["kind"] = json!("APIGroup");
            group["apiVersion"] = json!("v1");
            json_response(StatusCode::OK, &group)
        }
        ["apis", "discovery.k8s.io", "v1"] => {
            json_response(StatusCode::OK, &resource_list("discovery.k8s.io/v1"))
        }
        ["api", "v1", rest @ ..] => resource(shared, "v1", rest, &query),
        ["apis", "discovery.k8s.io", "v1", rest @ ..] => {
            resource(shared, "discovery.k8s.io/v1", rest, &query)
        }
        _ => not_found(),
    }
}

/// Routes `…/{plural}`, `…/{plural}/{name}`, `…/namespaces/{ns}/{plural}[/{name}]`.
fn resource(
    shared: &Arc<Shared>,
    api_version: &str,
    rest: &[&str],
    query: &Query,
) -> Response<Body> {
    let kind_of = |plural: &str| {
        Kind::ALL
            .into_iter()
            .find(|k| k.plural() == plural && k.api_version() == api_version)
    };
    let (kind, namespace, name) = match rest {
        [plural] => match kind_of(plural) {
            Some(kind) => (kind, None, None),
            None => return not_found(),
        },
        [plural, name] => match kind_of(plural) {
            Some(kind) if !kind.namespaced() => (kind, None, Some(*name)),
            _ => return not_found(),
        },
        ["namespaces", namespace, plural, name @ ..] if name.len() <= 1 => match kind_of(plural) {
            Some(kind) if kind.namespaced() => (kind, Some(*namespace), name.first().copied()),
            _ => return not_found(),
        },
        _ => return not_found(),
    };
    if let Some(name) = name {
        shared.count(kind, Verb::Get);
        return get(shared, kind, namespace.unwrap_or(""), name);
    }
    let selection = match Selection::parse(kind, namespace, query) {
        Ok(selection) => selection,
        Err(message) => return bad_request(&message),
    };
    if query.flag("watch") {
        shared.count(kind, Verb::Watch);
        watch(shared, kind, selection, query)
    } else {
        shared.count(kind, Verb::List);
        list(shared, kind, &selection, query)
    }
}

fn get(shared: &Shared, kind: Kind, namespace: &str, name: &str) -> Response<Body> {
    let store = shared.store.lock().expect("store lock");
    match store.get(kind, namespace, name) {
        Some(object) => {
            let mut body = Vec::with_capacity(object.item_json.len() + 64);
            object.write_full(&mut body);
            bytes_response(StatusCode::OK, body.into())
        }
        None => {
            let message = format!("{} \"{name}\" not found", kind.plural());
            let details = json!({"name": name, "group": kind.group(), "kind": kind.plural()});
            json_response(
                StatusCode::NOT_FOUND,
                &status_value(404, "NotFound", &message, Some(details)),
            )
        }
    }
}

/// Which objects a list or watch wants: the path's namespace and the selectors.
struct Selection {
    namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Selection {
    fn parse(kind: Kind, namespace: Option<&str>, query: &Query) -> Result<Self, String> {
        let labels = LabelSelector::parse(query.get("labelSelector").unwrap_or(""))
            .map_err(|e| format!("unable to parse requirement: {e}"))?;
        let fields = FieldSelector::parse(query.get("fieldSelector").unwrap_or(""))
            .map_err(|e| format!("{e} for {}", kind.kind()))?;
        Ok(Self {
            namespace: namespace.map(str::to_owned),
            labels,
            fields,
        })
    }

    fn matches(&self, object: &Object) -> bool {
        self.namespace
            .as_deref()
            .is_none_or(|ns| ns == object.namespace)
            && self.labels.matches(&object.labels)
            && self.fields.matches(object)
    }

    fn unfiltered(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }

    /// The table range this selection can touch, starting after `after` when continuing.
    fn range<'t>(
        &self,
        table: &'t Table,
        after: Option<(String, String)>,
    ) -> impl Iterator<Item = &'t Arc<Object>> + 't {
        let namespace = self.namespace.clone();
        let lower = match (after, &namespace) {
            (Some(key), _) => Bound::Excluded(key),
            (None, Some(ns)) => Bound::Included((ns.clone(), String::new())),
            (None, None) => Bound::Unbounded,
        };
        table
            .range((lower, Bound::Unbounded))
            .take_while(move |((ns, _), _)| namespace.as_ref().is_none_or(|want| want == ns))
            .map(|(_, object)| object)
    }
}

/// The continue token: the same shape the real server encodes (base64 of JSON naming the
/// list's RV and the key to start after), opaque to clients.
fn encode_continue(rv: u64, last: &Object) -> String {
    let start = if last.kind.namespaced() {
        format!("{}/{}\u{0}", last.namespace, last.name)
    } else {
        format!("{}\u{0}", last.name)
    };
    let token = json!({"v": "meta.k8s.io/v1", "rv": rv, "start": start});
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&token).expect("JSON"))
}

fn decode_continue(kind: Kind, token: &str) -> Option<(u64, (String, String))> {
    let bytes = URL_SAFE_NO_PAD.decode(token.trim_end_matches('=')).ok()?;
    let token: Value = serde_json::from_slice(&bytes).ok()?;
    if token["v"] != "meta.k8s.io/v1" {
        return None;
    }
    let rv = token["rv"].as_u64()?;
    let start = token["start"].as_str()?.strip_suffix('\u{0}')?;
    let key = if kind.namespaced() {
        let (ns, name) = start.split_once('/')?;
        (ns.to_owned(), name.to_owned())
    } else {
        (String::new(), start.to_owned())
    };
    Some((rv, key))
}

fn list(shared: &Shared, kind: Kind, selection: &Selection, query: &Query) -> Response<Body> {
    let limit = match query.get("limit").map(str::parse::<usize>) {
        None => None,
        Some(Ok(0)) => None,
        Some(Ok(limit)) => Some(limit),
        Some(Err(_)) => return bad_request("limit must be a non-negative integer"),
    };
    let rv_param = query.get("resourceVersion").filter(|rv| !rv.is_empty());
    let rv_match = query.get("resourceVersionMatch").filter(|m| !m.is_empty());
    let continue_token = query.get("continue").filter(|c| !c.is_empty());

    let store = shared.store.lock().expect("store lock");
    // Which state to list and whether to page it, per the API's resourceVersion table.
    let (at, limit, after) = if let Some(token) = continue_token {
        if rv_match.is_some() {
            return bad_request("resourceVersionMatch is forbidden when continue is provided");
        }
        if rv_param.is_some_and(|rv| rv != "0") {
            return bad_request("specifying resource version is not allowed when using continue");
        }
        let Some((rv, after)) = decode_continue(kind, token) else {
            return bad_request("continue key is not valid");
        };
        (rv, limit, Some(after))
    } else {
        let rv = match rv_param.map(str::parse::<u64>) {
            None => None,
            Some(Ok(rv)) => Some(rv),
            Some(Err(_)) => return bad_request("invalid resource version"),
        };
        let current = store.rv();
        match (rv_match, rv) {
            // Most recent: a consistent list, paginated.
            (None, None) => (current, limit, None),
            // Any: the real server answers from its watch cache and ignores `limit`.
            (None | Some("NotOlderThan"), Some(0)) => (current, None, None),
            (Some("NotOlderThan"), Some(rv)) | (None, Some(rv))
                if rv_match.is_some() || limit.is_none() =>
            {
                if rv > current {
                    return too_large(rv);
                }
                (current, limit, None)
            }
            (Some("Exact"), Some(0)) => {
                return bad_request(
                    "resourceVersionMatch \"Exact\" is forbidden for resourceVersion \"0\"",
                );
            }
            // Exact, which is also what a non-zero RV with a limit and no match means.
            (Some("Exact") | None, Some(rv)) => {
                if rv > current {
                    return too_large(rv);
                }
                (rv, limit, None)
            }
            (Some("Exact" | "NotOlderThan"), None) => {
                return bad_request(
                    "resourceVersionMatch is forbidden unless resourceVersion is provided",
                );
            }
            (Some(other), _) => {
                return bad_request(&format!("unsupported resourceVersionMatch {other:?}"));
            }
        }
    };
    let table = match store.table_at(kind, at) {
        Ok(table) => table,
        Err(too_old) if continue_token.is_some() => {
            return expired(&format!(
                "The provided continue parameter is too old to display a consistent list \
                 result. You can start a new list without the continue parameter. ({} < {})",
                too_old.requested, too_old.oldest
            ));
        }
        Err(too_old) => {
            return expired(&format!(
                "The resourceVersion for the provided list is too old. ({} < {})",
                too_old.requested, too_old.oldest
            ));
        }
    };
    // Collect under the lock (cheap `Arc` clones); build the body after releasing it.
    let mut items: Vec<Arc<Object>> = Vec::new();
    let mut more = false;
    let mut remaining = 0usize;
    {
        let mut candidates = selection.range(&table, after);
        for object in candidates.by_ref() {
            if !selection.matches(object) {
                continue;
            }
            if limit.is_some_and(|l| items.len() >= l) {
                more = true;
                remaining = 1;
                break;
            }
            items.push(object.clone());
        }
        if more && selection.unfiltered() {
            remaining += candidates.count();
        }
    }
    drop(table);
    drop(store);

    // The body is the stored item JSON spliced together: no per-request serialization.
    let mut meta = json!({"resourceVersion": at.to_string()});
    if more {
        let last = items.last().expect("a full page");
        meta["continue"] = json!(encode_continue(at, last));
        if selection.unfiltered() {
            meta["remainingItemCount"] = json!(remaining);
        }
    }
    let size: usize = items.iter().map(|o| o.item_json.len() + 1).sum();
    let mut body = Vec::with_capacity(size + 256);
    body.extend_from_slice(b"{\"kind\":\"");
    body.extend_from_slice(kind.list_kind().as_bytes());
    body.extend_from_slice(b"\",\"apiVersion\":\"");
    body.extend_from_slice(kind.api_version().as_bytes());
    body.extend_from_slice(b"\",\"metadata\":");
    body.extend_from_slice(&serde_json::to_vec(&meta).expect("JSON"));
    body.extend_from_slice(b",\"items\":[");
    for (i, object) in items.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&object.item_json);
    }
    body.extend_from_slice(b"]}");
    bytes_response(StatusCode::OK, body.into())
}

fn watch(shared: &Arc<Shared>, kind: Kind, selection: Selection, query: &Query) -> Response<Body> {
    let rv = query.get("resourceVersion").unwrap_or("");
    let start = if rv.is_empty() || rv == "0" {
        None
    } else {
        match rv.parse::<u64>() {
            Ok(rv) => Some(rv),
            Err(_) => return bad_request("invalid resource version"),
        }
    };
    let timeout = match query.get("timeoutSeconds").map(str::parse::<u64>) {
        None => Duration::from_secs(1800),
        Some(Ok(secs)) => Duration::from_secs(secs),
        Some(Err(_)) => return bad_request("timeoutSeconds must be a non-negative integer"),
    };
    let bookmarks = query.flag("allowWatchBookmarks");
    // Without a starting RV the real server first sends the current objects as ADDED.
    let initial_events = query.get("sendInitialEvents").map_or(start.is_none(), |v| {
        matches!(v, "true" | "1" | "t" | "T" | "TRUE" | "True")
    });
    let now = Instant::now();
    let interval = shared.config.bookmark_interval;
    let mut state = WatchState {
        shared: shared.clone(),
        kind,
        selection,
        seen: 0,
        pending: VecDeque::new(),
        changes: shared.changes.subscribe(),
        deadline: now + timeout,
        bookmarks: bookmarks.then(|| (interval, now + interval)),
        finished: false,
    };
    {
        let store = shared.store.lock().expect("store lock");
        match start {
            Some(rv) if rv < store.compacted() => {
                let status = status_value(
                    410,
                    "Expired",
                    &format!("too old resource version: {rv} ({})", store.compacted()),
                    None,
                );
                state.pending.push_back(event_line("ERROR", |out| {
                    out.extend_from_slice(&serde_json::to_vec(&status).expect("JSON"));
                }));
                state.finished = true;
            }
            Some(rv) => state.seen = rv,
            None => {
                state.seen = store.rv();
                if initial_events {
                    for object in state.selection.range(store.table(kind), None) {
                        if state.selection.matches(object) {
                            state
                                .pending
                                .push_back(event_line("ADDED", |out| object.write_full(out)));
                        }
                    }
                }
                if query.get("sendInitialEvents").is_some() && initial_events && bookmarks {
                    state
                        .pending
                        .push_back(bookmark_line(kind, store.rv(), true));
                }
            }
        }
    }
    let stream = futures::stream::unfold(state, |mut state| async move {
        let line = state.next_line().await?;
        Some((Ok::<_, Infallible>(Frame::data(line)), state))
    });
    let mut response = Response::new(UnsyncBoxBody::new(StreamBody::new(stream)));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

struct WatchState {
    shared: Arc<Shared>,
    kind: Kind,
    selection: Selection,
    /// Every event up to this RV has been queued (or did not match).
    seen: u64,
    pending: VecDeque<Bytes>,
    changes: watch::Receiver<u64>,
    deadline: Instant,
    bookmarks: Option<(Duration, Instant)>,
    finished: bool,
}

enum Catchup {
    Ok,
    /// Events this watch had not sent yet were dropped from the window: end the stream, so
    /// the client resumes from its last RV and is told `410 Expired`.
    Lost,
}

impl WatchState {
    async fn next_line(&mut self) -> Option<Bytes> {
        loop {
            if let Some(line) = self.pending.pop_front() {
                return Some(line);
            }
            if self.finished {
                return None;
            }
            if let Catchup::Lost = self.catch_up() {
                debug!(
                    kind = self.kind.kind(),
                    "apiserver: watch fell behind the window"
                );
                return None;
            }
            if !self.pending.is_empty() {
                continue;
            }
            let bookmark_at = self.bookmarks.map(|(_, at)| at);
            tokio::select! {
                changed = self.changes.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                }
                () = tokio::time::sleep_until(self.deadline) => self.finished = true,
                () = sleep_until(bookmark_at) => {
                    self.pending.push_back(bookmark_line(self.kind, self.seen, false));
                    if let Some((interval, at)) = &mut self.bookmarks {
                        *at = Instant::now() + *interval;
                    }
                }
            }
        }
    }

    /// Queues the matching events newer than `seen`.
    fn catch_up(&mut self) -> Catchup {
        let store = self.shared.store.lock().expect("store lock");
        if self.seen >= store.rv() {
            return Catchup::Ok;
        }
        if self.seen < store.last_dropped() {
            return Catchup::Lost;
        }
        for event in store.events_after(self.seen) {
            if event.kind == self.kind
                && let Some(line) = self.event_line(event)
            {
                self.pending.push_back(line);
            }
        }
        self.seen = store.rv();
        Catchup::Ok
    }

    /// As the real watch cache: an object that starts matching is ADDED, one that stops
    /// matching is DELETED (its previous content at the event's RV).
    fn event_line(&self, event: &Event) -> Option<Bytes> {
        let now = event.object.as_ref().filter(|o| self.selection.matches(o));
        let before = event.prev.as_ref().filter(|o| self.selection.matches(o));
        match (now, before) {
            (Some(object), None) => Some(event_line("ADDED", |out| object.write_full(out))),
            (Some(object), Some(_)) => Some(event_line("MODIFIED", |out| object.write_full(out))),
            (None, Some(prev)) => {
                let gone = prev.at_rv(event.rv);
                Some(event_line("DELETED", |out| gone.write_full(out)))
            }
            (None, None) => None,
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn event_line(kind: &str, object: impl FnOnce(&mut Vec<u8>)) -> Bytes {
    let mut line = Vec::with_capacity(256);
    line.extend_from_slice(b"{\"type\":\"");
    line.extend_from_slice(kind.as_bytes());
    line.extend_from_slice(b"\",\"object\":");
    object(&mut line);
    line.extend_from_slice(b"}\n");
    line.into()
}

fn bookmark_line(kind: Kind, rv: u64, initial_events_end: bool) -> Bytes {
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if initial_events_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    let object =
        json!({"kind": kind.kind(), "apiVersion": kind.api_version(), "metadata": metadata});
    event_line("BOOKMARK", |out| {
        out.extend_from_slice(&serde_json::to_vec(&object).expect("JSON"));
    })
}

/// Decoded query parameters (last one wins, like Go's `url.Values.Get` takes the first; no
/// client sends a parameter twice).
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(query: &str) -> Self {
        Self(
            form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, key: &str) -> bool {
        self.get(key)
            .is_some_and(|v| matches!(v, "true" | "1" | "t" | "T" | "TRUE" | "True"))
    }
}

fn version() -> Value {
    json!({
        "major": "1", "minor": "33", "gitVersion": "v1.33.0-twinstack-test",
        "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
        "buildDate": "2025-04-23T00:00:00Z", "goVersion": "go1.24.2", "compiler": "gc",
        "platform": "linux/amd64"
    })
}

fn discovery_group() -> Value {
    let version = json!({"groupVersion": "discovery.k8s.io/v1", "version": "v1"});
    json!({"name": "discovery.k8s.io", "versions": [version.clone()], "preferredVersion": version})
}

fn resource_list(group_version: &str) -> Value {
    let resources: Vec<Value> = Kind::ALL
        .into_iter()
        .filter(|k| k.api_version() == group_version)
        .map(|k| {
            json!({"name": k.plural(), "singularName": k.kind().to_lowercase(),
                "namespaced": k.namespaced(), "kind": k.kind(), "verbs": ["get", "list", "watch"]})
        })
        .collect();
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version,
        "resources": resources})
}

fn status_value(code: u16, reason: &str, message: &str, details: Option<Value>) -> Value {
    let mut status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code});
    if let Some(details) = details {
        status["details"] = details;
    }
    status
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    json_response(code, &status_value(code.as_u16(), reason, message, None))
}

fn not_found() -> Response<Body> {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        "the server could not find the requested resource",
    )
}

fn bad_request(message: &str) -> Response<Body> {
    status(StatusCode::BAD_REQUEST, "BadRequest", message)
}

fn expired(message: &str) -> Response<Body> {
    status(StatusCode::GONE, "Expired", message)
}

/// Like the real server: a `Timeout` with a `Retry-After`, which kube-rs clients honour.
fn too_large(rv: u64) -> Response<Body> {
    let body = status_value(
        504,
        "Timeout",
        &format!("Too large resource version: {rv}"),
        Some(json!({"causes": [{"reason": "ResourceVersionTooLarge",
            "message": "Too large resource version"}], "retryAfterSeconds": 1})),
    );
    let mut response = json_response(StatusCode::GATEWAY_TIMEOUT, &body);
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

fn full(bytes: Bytes) -> Body {
    Full::new(bytes).boxed_unsync()
}

fn bytes_response(code: StatusCode, body: Bytes) -> Response<Body> {
    let mut response = Response::new(full(body));
    *response.status_mut() = code;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn json_response(code: StatusCode, value: &Value) -> Response<Body> {
    bytes_response(code, serde_json::to_vec(value).expect("JSON").into())
}

fn text_response(code: StatusCode, text: &'static str) -> Response<Body> {
    let mut response = Response::new(full(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = code;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

#[cfg(test)]
mod tests {
    use super::{super::store::Store, *};

    #[test]
    fn continue_tokens_round_trip() {
        let mut store = Store::new(10);
        let (kind, value) = Store::prepare(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "a", "namespace": "ns"}}))
        .unwrap();
        let object = store.put(kind, value);
        let token = encode_continue(7, &object);
        assert_eq!(
            decode_continue(Kind::Service, &token),
            Some((7, ("ns".to_owned(), "a".to_owned())))
        );
        assert_eq!(decode_continue(Kind::Service, "garbage"), None);
    }
}
