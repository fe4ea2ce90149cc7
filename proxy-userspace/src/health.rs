//! `GET /healthz`: 200 once the first full sync is programmed (and since), 503 before; the
//! body says when the maps were last updated, like kube-proxy's. A leaf: the agent tells it
//! when a sync is done.
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::SystemTime,
};

use axum::{Json, Router, http::StatusCode, routing::get};

#[derive(Clone, Default)]
pub struct Health {
    last_sync: Arc<Mutex<Option<SystemTime>>>,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Body {
    last_updated: Option<String>,
    current_time: String,
}

impl Health {
    pub fn synced(&self) {
        *self.last_sync.lock().expect("health lock") = Some(SystemTime::now());
    }

    fn report(&self) -> (StatusCode, Json<Body>) {
        let last = *self.last_sync.lock().expect("health lock");
        let status = if last.is_some() {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        (
            status,
            Json(Body {
                last_updated: last.map(|t| humantime::format_rfc3339_millis(t).to_string()),
                current_time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            }),
        )
    }
}

/// Binds `address` (the caller reports failures naming the flag) and returns the server task.
/// `0.0.0.0` means every address of both families, as it does for kube-proxy (Go listens
/// dual-stack on it): one `[::]` socket where the node has IPv6, else IPv4 alone.
pub async fn bind(
    address: SocketAddr,
    health: Health,
) -> std::io::Result<impl std::future::Future<Output = std::io::Result<()>>> {
    let listener = if address.ip() == std::net::IpAddr::from(std::net::Ipv4Addr::UNSPECIFIED) {
        let both = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, address.port()));
        match tokio::net::TcpListener::bind(both).await {
            Ok(listener) => listener,
            Err(_) => tokio::net::TcpListener::bind(address).await?,
        }
    } else {
        tokio::net::TcpListener::bind(address).await?
    };
    let app = Router::new().route("/healthz", get(move || async move { health.report() }));
    Ok(async move { axum::serve(listener, app).await })
}
