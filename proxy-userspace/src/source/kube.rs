//! The API server source: kube-rs watchers (with backoff) on Services, EndpointSlices and this
//! node's Node, with kube-proxy's label selectors. A watcher's (re)list is buffered and handed
//! on only when complete, so stale objects are dropped only after a successful relist, and a
//! dropped watch or an unreachable API server never flushes the dataplane.
use std::path::Path;

use futures::StreamExt as _;
use k8s_openapi::api::{core::v1::Node, core::v1::Service, discovery::v1::EndpointSlice};
use kube::{
    Api, Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{WatchStreamExt as _, watcher},
};
use tokio::sync::mpsc;

use super::{Kind, Object, SourceEvent};
use crate::model::{HEADLESS_LABEL, SERVICE_PROXY_NAME_LABEL};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("--kubeconfig {path}: {source}")]
    Kubeconfig {
        path: String,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("no --kubeconfig given and not running in a cluster: {0}")]
    InCluster(#[source] kube::config::InClusterError),
    #[error("building the API client: {0}")]
    Client(#[from] kube::Error),
}

/// A client from `kubeconfig`, or from the in-cluster service account when `None`.
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, ClientError> {
    let config = match kubeconfig {
        Some(path) => {
            let error = |source| ClientError::Kubeconfig {
                path: path.display().to_string(),
                source,
            };
            let file = Kubeconfig::read_from(path).map_err(error)?;
            Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(error)?
        }
        None => Config::incluster().map_err(ClientError::InCluster)?,
    };
    Ok(Client::try_from(config)?)
}

/// kube-proxy's selector: Services (and their slices) of other proxies, and headless ones,
/// are not even watched.
pub fn label_selector() -> String {
    format!("!{SERVICE_PROXY_NAME_LABEL},!{HEADLESS_LABEL}")
}

/// Runs the three watchers until `sender` is closed.
pub async fn watch(client: Client, node_name: String, sender: mpsc::Sender<SourceEvent>) {
    let labels = label_selector();
    let services = forward(
        Kind::Service,
        watcher(
            Api::<Service>::all(client.clone()),
            watcher::Config::default().labels(&labels),
        ),
        |s| Some(Object::service(s)),
        sender.clone(),
    );
    let slices = forward(
        Kind::EndpointSlice,
        watcher(
            Api::<EndpointSlice>::all(client.clone()),
            watcher::Config::default().labels(&labels),
        ),
        Object::endpoint_slice,
        sender.clone(),
    );
    let node = forward(
        Kind::Node,
        watcher(
            Api::<Node>::all(client),
            watcher::Config::default().fields(&format!("metadata.name={node_name}")),
        ),
        |n| Some(Object::Node(n)),
        sender,
    );
    tokio::join!(services, slices, node);
}

async fn forward<K, S>(
    kind: Kind,
    stream: S,
    wrap: fn(K) -> Option<Object>,
    sender: mpsc::Sender<SourceEvent>,
) where
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
{
    let mut stream = std::pin::pin!(stream.default_backoff());
    let mut listing: Option<Vec<Object>> = None;
    while let Some(event) = stream.next().await {
        let out = match event {
            Ok(watcher::Event::Init) => {
                listing = Some(Vec::new());
                None
            }
            Ok(watcher::Event::InitApply(object)) => {
                // Converted (slimmed, parsed) as it arrives: the list is buffered compact.
                listing.get_or_insert_with(Vec::new).extend(wrap(object));
                None
            }
            Ok(watcher::Event::InitDone) => Some(SourceEvent::Replace(
                kind,
                listing.take().unwrap_or_default(),
            )),
            Ok(watcher::Event::Apply(object)) => wrap(object).map(SourceEvent::Apply),
            Ok(watcher::Event::Delete(object)) => wrap(object).map(SourceEvent::Delete),
            Err(error) => {
                // The watcher relists after its backoff; until then we serve what we have.
                tracing::warn!(?kind, %error, "watch failed; serving the last known state");
                None
            }
        };
        if let Some(event) = out
            && sender.send(event).await.is_err()
        {
            return;
        }
    }
}
