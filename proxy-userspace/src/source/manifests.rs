//! The `--manifests DIR` source: every `*.yaml`, `*.yml` and `*.json` file in DIR, read as
//! `kubectl get -o yaml|json` prints objects (multi-document files, `kind: List`), and watched
//! so a file added, changed or removed is reflected within a second.
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use k8s_openapi::api::{core::v1::Node, core::v1::Service, discovery::v1::EndpointSlice};
use serde::Deserialize;
use tokio::sync::mpsc;

use super::{Snapshot, SourceEvent};

const EXTENSIONS: [&str; 3] = ["yaml", "yml", "json"];
/// Changes within this window are read together (an editor writes a file in several steps).
const SETTLE: Duration = Duration::from_millis(50);
/// A rescan even without a notification: a safety net for filesystems without inotify.
const RESCAN: Duration = Duration::from_secs(2);

/// Reads every manifest in `dir`. Unreadable files and malformed objects are reported in
/// `errors` and skipped; everything else is returned.
pub fn read_dir(dir: &Path) -> Result<Snapshot, std::io::Error> {
    let mut snapshot = Snapshot::default();
    for file in manifest_files(dir)? {
        match std::fs::read_to_string(&file) {
            Ok(text) => parse_into(&file.display().to_string(), &text, &mut snapshot),
            Err(e) => snapshot
                .errors
                .push(format!("{}: cannot read: {e}", file.display())),
        }
    }
    Ok(snapshot)
}

/// The manifest files of `dir`, sorted (hidden files and other extensions left out).
fn manifest_files(dir: &Path) -> Result<Vec<PathBuf>, std::io::Error> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && !p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with('.'))
                && p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| EXTENSIONS.contains(&e))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Parses one file's text (YAML, possibly several documents, or JSON) into `snapshot`.
pub fn parse_into(origin: &str, text: &str, snapshot: &mut Snapshot) {
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        match serde_yaml::Value::deserialize(document) {
            Ok(serde_yaml::Value::Null) => {}
            Ok(value) => add_object(&format!("{origin} document {}", index + 1), value, snapshot),
            Err(e) => {
                snapshot
                    .errors
                    .push(format!("{origin}: not valid YAML or JSON: {e}"));
                return; // The rest of the stream cannot be trusted.
            }
        }
    }
}

fn field<'a>(value: &'a serde_yaml::Value, name: &str) -> Option<&'a str> {
    value.get(name).and_then(|v| v.as_str())
}

fn add_object(origin: &str, value: serde_yaml::Value, snapshot: &mut Snapshot) {
    let api_version = field(&value, "apiVersion").unwrap_or_default().to_owned();
    let kind = field(&value, "kind").unwrap_or_default().to_owned();
    let name = value
        .get("metadata")
        .and_then(|m| field(m, "name"))
        .unwrap_or("<unnamed>")
        .to_owned();
    let describe = || format!("{origin}: {kind} {name:?}");
    match (api_version.as_str(), kind.as_str()) {
        (_, "List") | (_, "ServiceList") | (_, "EndpointSliceList") | (_, "NodeList") => {
            if let Some(items) = value.get("items").and_then(|i| i.as_sequence()) {
                for (i, item) in items.iter().enumerate() {
                    add_object(&format!("{origin} item {}", i + 1), item.clone(), snapshot);
                }
            }
        }
        ("v1", "Service") => match serde_yaml::from_value::<Service>(value) {
            Ok(s) => snapshot.services.push(s),
            Err(e) => snapshot.errors.push(format!("{}: {e}", describe())),
        },
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            match serde_yaml::from_value::<EndpointSlice>(value) {
                Ok(s) => snapshot.slices.push(s),
                Err(e) => snapshot.errors.push(format!("{}: {e}", describe())),
            }
        }
        ("v1", "Node") => match serde_yaml::from_value::<Node>(value) {
            Ok(n) => snapshot.nodes.push(n),
            Err(e) => snapshot.errors.push(format!("{}: {e}", describe())),
        },
        // Other kinds (Deployments, Pods...) may share the directory; they are not ours.
        _ => tracing::debug!(origin, kind, "ignoring object"),
    }
}

/// Watches `dir` and sends its complete contents (one full list per kind) whenever its
/// manifests change; the first read is sent at once. Ends when the receiver is dropped.
pub async fn watch(dir: PathBuf, sender: mpsc::Sender<SourceEvent>) -> Result<(), notify::Error> {
    use notify::Watcher as _;

    let (wake_tx, mut wake_rx) = mpsc::channel::<()>(1);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        use notify::event::{AccessKind, AccessMode, EventKind};
        // Our own reads raise access events; only changes (and a writer closing) count.
        let change = event.is_ok_and(|e| match e.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
            EventKind::Access(_) => false,
            _ => true,
        });
        if change {
            let _ = wake_tx.try_send(());
        }
    })?;
    watcher.watch(&dir, notify::RecursiveMode::NonRecursive)?;

    // What the directory looked like at the last read: a rescan that finds the same names,
    // sizes and modification times reads nothing (10,000 Services are ~30 MB of YAML).
    let mut last: Option<Vec<(PathBuf, u64, std::time::SystemTime)>> = None;
    let mut woken = true;
    loop {
        let listing = manifest_files(&dir).ok().map(|files| {
            files
                .into_iter()
                .filter_map(|path| {
                    let meta = std::fs::metadata(&path).ok()?;
                    Some((path, meta.len(), meta.modified().ok()?))
                })
                .collect::<Vec<_>>()
        });
        if woken || listing.is_none() || listing != last {
            let read = tokio::task::spawn_blocking({
                let dir = dir.clone();
                move || read_dir(&dir)
            })
            .await;
            match read {
                Ok(Ok(snapshot)) => {
                    last = listing;
                    tracing::debug!(
                        services = snapshot.services.len(),
                        slices = snapshot.slices.len(),
                        "manifest directory read"
                    );
                    // Unchanged objects cost nothing downstream: the tracker ignores them.
                    for event in snapshot.into_events() {
                        if sender.send(event).await.is_err() {
                            return Ok(());
                        }
                    }
                }
                // An unreadable directory is not an empty one: keep serving what we have.
                Ok(Err(e)) => {
                    tracing::warn!(dir = %dir.display(), %e, "cannot list the manifest directory")
                }
                Err(e) => tracing::error!(%e, "manifest reader failed"),
            }
        }
        woken = tokio::select! {
            _ = wake_rx.recv() => {
                tokio::time::sleep(SETTLE).await;
                true
            }
            _ = tokio::time::sleep(RESCAN) => false,
        };
        while wake_rx.try_recv().is_ok() {}
    }
}
