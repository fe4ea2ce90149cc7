//! kube-proxy's service health server: for each Service with `externalTrafficPolicy: Local`
//! and a `healthCheckNodePort`, an HTTP server on that port of every address of the node (one
//! dual-stack socket: IPv4 and IPv6), which a cloud load balancer polls to learn whether this
//! node has endpoints of the Service. Any path answers, as kube-proxy's does: 200 with
//! `{"service":{"namespace":…,"name":…},"localEndpoints":N,"serviceProxyHealthy":true}` when
//! N > 0, 503 with N = 0 otherwise. A leaf: the agent hands it the checks after each sync.
use std::{
    collections::{BTreeMap, HashMap},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, Mutex},
};

use axum::{
    Json, Router,
    http::{HeaderMap, HeaderValue, StatusCode},
};

use crate::proxier::HealthCheck;

#[derive(Default)]
pub struct HealthCheckServers {
    running: HashMap<u16, Running>,
}

struct Running {
    check: Arc<Mutex<HealthCheck>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Body {
    service: Name,
    local_endpoints: usize,
    service_proxy_healthy: bool,
}

#[derive(serde::Serialize)]
struct Name {
    namespace: String,
    name: String,
}

impl HealthCheckServers {
    /// Serves exactly `wanted`: new ports start listening, gone ones stop, the rest get their
    /// new counts. A port that cannot be bound (in use) is logged and skipped; it is tried
    /// again at the next call.
    pub fn reconcile(&mut self, wanted: BTreeMap<u16, HealthCheck>) {
        self.running.retain(|port, _| wanted.contains_key(port));
        for (port, check) in wanted {
            if let Some(running) = self.running.get(&port) {
                *running.check.lock().expect("health check lock") = check;
                continue;
            }
            match bind(port) {
                Ok(listener) => {
                    let service = check.service.to_string();
                    let shared = Arc::new(Mutex::new(check));
                    let task = tokio::spawn(serve(listener, shared.clone()));
                    tracing::info!(port, %service, "serving a health check node port");
                    self.running.insert(
                        port,
                        Running {
                            check: shared,
                            task,
                        },
                    );
                }
                Err(error) => tracing::warn!(
                    port,
                    service = %check.service,
                    %error,
                    "healthCheckNodePort: cannot listen"
                ),
            }
        }
    }
}

/// One socket for both families where the node has IPv6 (`[::]`, not v6-only, as Linux
/// binds by default), else IPv4 only.
fn bind(port: u16) -> std::io::Result<tokio::net::TcpListener> {
    let listener = std::net::TcpListener::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)))
        .or_else(|_| {
            std::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))
        })?;
    listener.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(listener)
}

async fn serve(listener: tokio::net::TcpListener, check: Arc<Mutex<HealthCheck>>) {
    let app = Router::new().fallback(move || {
        let check = check.lock().expect("health check lock").clone();
        async move { answer(&check) }
    });
    if let Err(error) = axum::serve(listener, app).await {
        tracing::warn!(%error, "a health check node port stopped");
    }
}

fn answer(check: &HealthCheck) -> (StatusCode, HeaderMap, Json<Body>) {
    let status = if check.local_endpoints > 0 {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        "X-Content-Type-Options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        "X-Load-Balancing-Endpoint-Weight",
        HeaderValue::from(check.local_endpoints),
    );
    let body = Body {
        service: Name {
            namespace: check.service.namespace.to_string(),
            name: check.service.name.to_string(),
        },
        local_endpoints: check.local_endpoints,
        service_proxy_healthy: true,
    };
    (status, headers, Json(body))
}
