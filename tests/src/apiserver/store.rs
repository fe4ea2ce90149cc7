//! The object store: one table per kind, the global resourceVersion, and the retained window
//! of events that watches resume from and consistent (paged or exact) lists are rebuilt from.
use std::{
    borrow::Cow,
    collections::{BTreeMap, VecDeque},
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use serde::{Serialize, Serializer};
use serde_json::{Map, Value};

use super::{ApiServerError, Kind};

/// `(namespace, name)`; the namespace is empty for cluster-scoped kinds. The table order is
/// the order of list items.
pub(super) type Key = (String, String);
pub(super) type Table = BTreeMap<Key, Arc<Object>>;

/// One stored object, immutable once stored (an update stores a new one).
#[derive(Debug)]
pub(super) struct Object {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    pub rv: u64,
    pub labels: BTreeMap<String, String>,
    /// The whole object, with `kind`, `apiVersion` and `metadata.resourceVersion`.
    pub value: Value,
    /// The object as a list item, without `kind` and `apiVersion` (as the real server lists).
    pub item_json: Bytes,
}

impl Object {
    fn new(kind: Kind, value: Value) -> Self {
        let meta = &value["metadata"];
        let namespace = meta["namespace"].as_str().unwrap_or_default().to_owned();
        let name = meta["name"].as_str().unwrap_or_default().to_owned();
        let rv = meta["resourceVersion"]
            .as_str()
            .and_then(|rv| rv.parse().ok())
            .unwrap_or_default();
        let labels = meta["labels"]
            .as_object()
            .map(|labels| {
                labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                    .collect()
            })
            .unwrap_or_default();
        let item_json =
            Bytes::from(serde_json::to_vec(&ListItem(&value)).expect("JSON values serialize"));
        Self {
            kind,
            namespace,
            name,
            rv,
            labels,
            value,
            item_json,
        }
    }

    pub(super) fn key(&self) -> Key {
        (self.namespace.clone(), self.name.clone())
    }

    /// Appends the object with its `kind` and `apiVersion`, as a watch event carries it.
    pub(super) fn write_full(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"kind\":\"");
        out.extend_from_slice(self.kind.kind().as_bytes());
        out.extend_from_slice(b"\",\"apiVersion\":\"");
        out.extend_from_slice(self.kind.api_version().as_bytes());
        out.extend_from_slice(b"\"");
        // `item_json` is a non-empty object (it always has metadata): splice after its `{`.
        out.push(b',');
        out.extend_from_slice(&self.item_json[1..]);
    }

    /// The same content at another resourceVersion: what a DELETED event carries.
    pub(super) fn at_rv(&self, rv: u64) -> Self {
        let mut value = self.value.clone();
        value["metadata"]["resourceVersion"] = Value::String(rv.to_string());
        Self::new(self.kind, value)
    }
}

/// An object serialized without its `kind` and `apiVersion`, without copying it.
struct ListItem<'a>(&'a Value);

impl Serialize for ListItem<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let Some(map) = self.0.as_object() else {
            return self.0.serialize(serializer);
        };
        let fields = map
            .iter()
            .filter(|(k, _)| k.as_str() != "kind" && k.as_str() != "apiVersion");
        serializer.collect_map(fields)
    }
}

/// One change. `object` is `None` for a deletion; `prev` is `None` for a creation.
#[derive(Debug)]
pub(super) struct Event {
    pub rv: u64,
    pub kind: Kind,
    pub object: Option<Arc<Object>>,
    pub prev: Option<Arc<Object>>,
}

/// A request for a state the store no longer has.
#[derive(Debug)]
pub(super) struct TooOld {
    pub requested: u64,
    pub oldest: u64,
}

pub(super) struct Store {
    rv: u64,
    /// The oldest resourceVersion a watch or an exact list may start from: `history` holds
    /// every event newer than it.
    compacted: u64,
    /// The newest event ever dropped from `history`: a live watch that has not yet sent
    /// everything up to it has lost events and must end.
    last_dropped: u64,
    window: usize,
    tables: [Table; Kind::ALL.len()],
    history: VecDeque<Event>,
    uids: u64,
}

impl Store {
    pub(super) fn new(window: usize) -> Self {
        Self {
            // Start where a fresh cluster's store roughly is, so no RV is "0" (which means "any").
            rv: 100,
            compacted: 100,
            last_dropped: 0,
            window,
            tables: Default::default(),
            history: VecDeque::new(),
            uids: 0,
        }
    }

    pub(super) fn rv(&self) -> u64 {
        self.rv
    }

    pub(super) fn compacted(&self) -> u64 {
        self.compacted
    }

    pub(super) fn last_dropped(&self) -> u64 {
        self.last_dropped
    }

    pub(super) fn table(&self, kind: Kind) -> &Table {
        &self.tables[kind.index()]
    }

    pub(super) fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<&Arc<Object>> {
        self.table(kind)
            .get(&(namespace.to_owned(), name.to_owned()))
    }

    /// The events newer than `rv`, oldest first.
    pub(super) fn events_after(&self, rv: u64) -> impl Iterator<Item = &Event> {
        let start = self.history.partition_point(|e| e.rv <= rv);
        self.history.range(start..)
    }

    /// The table of `kind` as it was at `rv` (at most the current RV), rebuilt by undoing the
    /// newer events; `TooOld` once the events needed are gone.
    pub(super) fn table_at(&self, kind: Kind, rv: u64) -> Result<Cow<'_, Table>, TooOld> {
        if rv >= self.rv {
            return Ok(Cow::Borrowed(self.table(kind)));
        }
        if rv < self.compacted {
            return Err(TooOld {
                requested: rv,
                oldest: self.compacted,
            });
        }
        let newer: Vec<&Event> = self.events_after(rv).filter(|e| e.kind == kind).collect();
        if newer.is_empty() {
            return Ok(Cow::Borrowed(self.table(kind)));
        }
        let mut table = self.table(kind).clone();
        for event in newer.into_iter().rev() {
            let key = event
                .object
                .as_ref()
                .or(event.prev.as_ref())
                .expect("an event has an object or a previous one")
                .key();
            match &event.prev {
                Some(prev) => table.insert(key, prev.clone()),
                None => table.remove(&key),
            };
        }
        Ok(Cow::Owned(table))
    }

    /// Checks an object and puts it in the shape the store keeps: a known kind, a name, a
    /// namespace for namespaced kinds (default `default`) and none for the others.
    pub(super) fn prepare(value: Value) -> Result<(Kind, Value), ApiServerError> {
        let Value::Object(mut map) = value else {
            return Err(ApiServerError::Invalid("not a JSON object".into()));
        };
        let api_version = map.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        let kind_name = map.get("kind").and_then(Value::as_str).unwrap_or("");
        let kind = Kind::from_type(api_version, kind_name)
            .ok_or_else(|| ApiServerError::UnsupportedKind(format!("{api_version}/{kind_name}")))?;
        let meta = map
            .entry("metadata")
            .or_insert_with(|| Value::Object(Map::new()))
            .as_object_mut()
            .ok_or_else(|| ApiServerError::Invalid("metadata is not an object".into()))?;
        if meta
            .get("name")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            return Err(ApiServerError::Invalid(format!(
                "{} without metadata.name",
                kind.kind()
            )));
        }
        if kind.namespaced() {
            let has_namespace = meta
                .get("namespace")
                .and_then(Value::as_str)
                .is_some_and(|ns| !ns.is_empty());
            if !has_namespace {
                meta.insert("namespace".into(), Value::String("default".into()));
            }
        } else {
            meta.remove("namespace");
        }
        if let Some(labels) = meta.get("labels") {
            let all_strings = labels
                .as_object()
                .is_some_and(|l| l.values().all(Value::is_string));
            if !all_strings {
                return Err(ApiServerError::Invalid(
                    "metadata.labels is not a map of strings".into(),
                ));
            }
        }
        // The server owns the resourceVersion; there is no optimistic concurrency here.
        meta.remove("resourceVersion");
        Ok((kind, Value::Object(map)))
    }

    /// Creates or replaces an object prepared by [`Store::prepare`]. Keeps the `uid` and
    /// `creationTimestamp` of the object it replaces unless the new one sets them; an update
    /// that changes nothing is a no-op (no new RV, no event), as on the real server.
    pub(super) fn put(&mut self, kind: Kind, mut value: Value) -> Arc<Object> {
        let meta = value["metadata"].as_object_mut().expect("prepared");
        let key = (
            meta.get("namespace")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            meta["name"].as_str().unwrap_or_default().to_owned(),
        );
        let prev = self.tables[kind.index()].get(&key).cloned();
        let inherited = |field: &str| {
            prev.as_ref()
                .and_then(|p| p.value["metadata"].get(field))
                .cloned()
        };
        if !meta.contains_key("uid") {
            let uid = inherited("uid").unwrap_or_else(|| {
                self.uids += 1;
                Value::String(uid(self.uids))
            });
            meta.insert("uid".into(), uid);
        }
        if !meta.contains_key("creationTimestamp") {
            let created = inherited("creationTimestamp")
                .unwrap_or_else(|| Value::String(rfc3339(SystemTime::now())));
            meta.insert("creationTimestamp".into(), created);
        }
        if let Some(prev) = &prev {
            meta.insert("resourceVersion".into(), Value::String(prev.rv.to_string()));
            if value == prev.value {
                return prev.clone();
            }
        }
        self.rv += 1;
        value["metadata"]["resourceVersion"] = Value::String(self.rv.to_string());
        let object = Arc::new(Object::new(kind, value));
        self.tables[kind.index()].insert(key, object.clone());
        self.record(Event {
            rv: self.rv,
            kind,
            object: Some(object.clone()),
            prev,
        });
        object
    }

    pub(super) fn delete(
        &mut self,
        kind: Kind,
        namespace: &str,
        name: &str,
    ) -> Option<Arc<Object>> {
        let namespace = if kind.namespaced() { namespace } else { "" };
        let prev = self.tables[kind.index()].remove(&(namespace.to_owned(), name.to_owned()))?;
        self.rv += 1;
        self.record(Event {
            rv: self.rv,
            kind,
            object: None,
            prev: Some(prev.clone()),
        });
        Some(prev)
    }

    /// Forgets every event and moves the RV on by one (as if another object in the cluster
    /// changed), so every watch or exact list from an earlier RV is answered `410 Expired`
    /// while a client that lists afresh can watch from the list's RV.
    pub(super) fn compact(&mut self) {
        if let Some(newest) = self.history.back() {
            self.last_dropped = newest.rv;
        }
        self.history.clear();
        self.rv += 1;
        self.compacted = self.rv;
    }

    fn record(&mut self, event: Event) {
        self.history.push_back(event);
        while self.history.len() > self.window {
            let dropped = self.history.pop_front().expect("non-empty");
            self.compacted = dropped.rv;
            self.last_dropped = dropped.rv;
        }
    }
}

/// A UUID-shaped uid, unique within the process.
fn uid(n: u64) -> String {
    let pid = u64::from(std::process::id());
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        pid & 0xffff_ffff,
        (n >> 48) & 0xffff,
        (n >> 36) & 0xfff,
        (n >> 24) & 0xfff,
        n & 0xff_ffff_ffff
    )
}

/// `2006-01-02T15:04:05Z`, as Kubernetes prints timestamps.
pub(super) fn rfc3339(time: SystemTime) -> String {
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;

    fn service(name: &str, label: &str) -> (Kind, Value) {
        Store::prepare(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "labels": {"l": label}},
            "spec": {"clusterIP": "10.96.0.1"}
        }))
        .unwrap()
    }

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_709_210_096);
        assert_eq!(rfc3339(t), "2024-02-29T12:34:56Z");
    }

    #[test]
    fn updates_keep_identity_and_noops_are_free() {
        let mut store = Store::new(10);
        let (k, v) = service("a", "x");
        let first = store.put(k, v.clone());
        assert_eq!(first.namespace, "default");
        let again = store.put(k, v);
        assert_eq!(again.rv, first.rv, "a no-op update makes no new RV");
        let (k, v) = service("a", "y");
        let second = store.put(k, v);
        assert_eq!(second.rv, first.rv + 1);
        assert_eq!(
            second.value["metadata"]["uid"],
            first.value["metadata"]["uid"]
        );
        assert_eq!(&second.item_json[..1], b"{");
        assert!(!String::from_utf8_lossy(&second.item_json).contains("\"kind\""));
    }

    #[test]
    fn past_tables_are_rebuilt_until_compaction() {
        let mut store = Store::new(2);
        let (k, v) = service("a", "x");
        let a1 = store.put(k, v).rv;
        let (k, v) = service("b", "x");
        store.put(k, v);
        store.delete(Kind::Service, "default", "a");
        let at_a1 = store.table_at(Kind::Service, a1);
        // The window of 2 dropped the creation of `a`; its RV is now the oldest usable one.
        let at_a1 = at_a1.expect("a1 is the compaction point");
        assert_eq!(at_a1.len(), 1);
        assert!(store.table_at(Kind::Service, a1 - 1).is_err());
        assert_eq!(store.table_at(Kind::Service, store.rv()).unwrap().len(), 1);
        store.compact();
        assert!(store.table_at(Kind::Service, store.rv() - 1).is_err());
    }
}
