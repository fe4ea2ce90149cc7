//! `GET /healthz` and `GET /livez` on `--healthz-bind-address`, with kube-proxy's rule (its
//! `ProxyHealthServer`): unhealthy once a change has been queued for longer than the health
//! timeout (2 × `--sync-period`) without a sync programming it. `/healthz` also needs the first
//! sync programmed and the Node not being deleted; `/livez` asks only whether syncs keep up, so
//! a liveness probe never restarts an agent that waits for its first lists or drains a node.
//! A leaf: the agent tells it what happened; the clock is injectable for the state machine's
//! tests.
use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use axum::{
    Router,
    http::{StatusCode, header},
    routing::get,
};

/// The time now (a fake one in tests).
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

#[derive(Clone)]
pub struct Health {
    state: Arc<Mutex<State>>,
    clock: Clock,
    timeout: Duration,
}

#[derive(Debug)]
struct State {
    /// The first sync is programmed and the programs attached.
    synced_once: bool,
    /// The last sync that programmed everything queued.
    last_updated: Option<SystemTime>,
    /// The oldest change queued since then (kube-proxy's `oldestPendingQueued`).
    oldest_queued: Option<SystemTime>,
    node_eligible: bool,
}

/// Which endpoint is asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    Healthz,
    Livez,
}

/// An answer: the status and kube-proxy's JSON body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: StatusCode,
    pub body: serde_json::Value,
}

impl Health {
    /// Unhealthy once a change waits longer than `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Self::with_clock(timeout, Arc::new(SystemTime::now))
    }

    pub fn with_clock(timeout: Duration, clock: Clock) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                synced_once: false,
                last_updated: None,
                oldest_queued: None,
                node_eligible: true,
            })),
            clock,
            timeout,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A change arrived that a sync has to program (the first one since the last sync
    /// starts the clock).
    pub fn queued(&self) {
        let now = (self.clock)();
        self.state().oldest_queued.get_or_insert(now);
    }

    /// The first sync is done and the programs attached: ready, as far as syncing goes.
    pub fn first_sync_done(&self) {
        self.state().synced_once = true;
    }

    /// A sync programmed everything queued.
    pub fn updated(&self) {
        let now = (self.clock)();
        let mut state = self.state();
        state.synced_once = true;
        state.oldest_queued = None;
        state.last_updated = Some(now);
    }

    pub fn set_node_eligible(&self, eligible: bool) {
        self.state().node_eligible = eligible;
    }

    /// The answer to `probe` now.
    pub fn answer(&self, probe: Probe) -> Answer {
        let now = (self.clock)();
        let state = self.state();
        let keeping_up = state
            .oldest_queued
            .is_none_or(|queued| now.duration_since(queued).unwrap_or_default() < self.timeout);
        let healthy = match probe {
            Probe::Livez => keeping_up,
            Probe::Healthz => keeping_up && state.synced_once && state.node_eligible,
        };
        // As kube-proxy's: a healthy answer says "updated now" (older releases said when the
        // sync loop last ran); an unhealthy one, when the maps were last updated.
        let last_updated = if healthy {
            Some(now)
        } else {
            state.last_updated
        };
        let mut body = serde_json::json!({
            "lastUpdated": go_time(last_updated),
            "currentTime": go_time(Some(now)),
            "healthy": healthy,
        });
        if probe == Probe::Healthz {
            body["nodeEligible"] = state.node_eligible.into();
        }
        Answer {
            status: if healthy {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            },
            body,
        }
    }
}

/// A time as Go's `time.Time` marshals to JSON (RFC 3339, nanoseconds without trailing zeros;
/// in UTC), never set as Go's zero time.
fn go_time(time: Option<SystemTime>) -> String {
    let Some(time) = time else {
        return "0001-01-01T00:00:00Z".into();
    };
    let text = humantime::format_rfc3339_nanos(time).to_string();
    let text = text.trim_end_matches('Z');
    let (seconds, fraction) = text.split_once('.').unwrap_or((text, ""));
    let fraction = fraction.trim_end_matches('0');
    if fraction.is_empty() {
        format!("{seconds}Z")
    } else {
        format!("{seconds}.{fraction}Z")
    }
}

/// The listener for `address`. `0.0.0.0` means every address of both families, as it does for
/// kube-proxy (Go listens dual-stack on it): one `[::]` socket with `IPV6_V6ONLY` off (whatever
/// `net.ipv6.bindv6only` says) where the node has IPv6, else IPv4 alone.
fn listen(address: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    if address.ip() != std::net::IpAddr::from(Ipv4Addr::UNSPECIFIED) {
        return std::net::TcpListener::bind(address).and_then(tokio_listener);
    }
    let both = SocketAddr::from((Ipv6Addr::UNSPECIFIED, address.port()));
    match dual_stack(both) {
        Ok(listener) => Ok(listener),
        Err(error) => {
            tracing::debug!(%error, "no IPv6 socket for the health server; IPv4 only");
            std::net::TcpListener::bind(address).and_then(tokio_listener)
        }
    }
}

fn tokio_listener(listener: std::net::TcpListener) -> std::io::Result<tokio::net::TcpListener> {
    listener.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(listener)
}

/// A listening `[::]:port` socket that takes IPv4 too.
fn dual_stack(address: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    use std::os::fd::AsRawFd as _;
    let socket = tokio::net::TcpSocket::new_v6()?;
    let off: libc::c_int = 0;
    // SAFETY: a valid socket and an int option with its length.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            (&raw const off).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(1024)
}

/// Binds `address` (the caller reports failures naming the flag) and returns the server task.
pub async fn bind(
    address: SocketAddr,
    health: Health,
) -> std::io::Result<impl std::future::Future<Output = std::io::Result<()>>> {
    let listener = listen(address)?;
    let route = |probe: Probe| {
        let health = health.clone();
        get(move || async move {
            let answer = health.answer(probe);
            (
                answer.status,
                [
                    (header::CONTENT_TYPE, "application/json"),
                    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                ],
                answer.body.to_string(),
            )
        })
    };
    let app = Router::new()
        .route("/healthz", route(Probe::Healthz))
        .route("/livez", route(Probe::Livez));
    Ok(async move { axum::serve(listener, app).await })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A clock the test moves by hand.
    fn fake_clock() -> (Clock, Arc<Mutex<SystemTime>>) {
        let now = Arc::new(Mutex::new(
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        ));
        let read = now.clone();
        (Arc::new(move || *read.lock().unwrap()), now)
    }

    fn statuses(health: &Health) -> (u16, u16) {
        (
            health.answer(Probe::Healthz).status.as_u16(),
            health.answer(Probe::Livez).status.as_u16(),
        )
    }

    #[test]
    fn a_queued_change_not_programmed_within_the_timeout_is_unhealthy() {
        let (clock, now) = fake_clock();
        let advance = |by: Duration| *now.lock().unwrap() += by;
        let health = Health::with_clock(Duration::from_secs(60), clock);

        // Before the first sync: not ready, but alive (no change is late).
        assert_eq!(statuses(&health), (503, 200));
        health.updated();
        assert_eq!(statuses(&health), (200, 200));

        // Idle for a long time: nothing queued, nothing late.
        advance(Duration::from_secs(3600));
        assert_eq!(statuses(&health), (200, 200));

        // A change waits: healthy until the timeout, then not, on both probes.
        health.queued();
        advance(Duration::from_secs(59));
        health.queued(); // A later change does not restart the clock.
        assert_eq!(statuses(&health), (200, 200));
        advance(Duration::from_secs(1));
        assert_eq!(statuses(&health), (503, 503));

        // The sync that programs it makes it healthy again.
        health.updated();
        assert_eq!(statuses(&health), (200, 200));
    }

    #[test]
    fn a_node_being_deleted_fails_healthz_only() {
        let (clock, _) = fake_clock();
        let health = Health::with_clock(Duration::from_secs(60), clock);
        health.updated();
        health.set_node_eligible(false);
        assert_eq!(statuses(&health), (503, 200));
        assert_eq!(health.answer(Probe::Healthz).body["nodeEligible"], false);
        assert!(
            health
                .answer(Probe::Livez)
                .body
                .get("nodeEligible")
                .is_none()
        );
        health.set_node_eligible(true);
        assert_eq!(statuses(&health), (200, 200));
    }

    #[test]
    fn the_body_is_kube_proxys() {
        let (clock, now) = fake_clock();
        let health = Health::with_clock(Duration::from_secs(60), clock);
        let body = health.answer(Probe::Healthz).body;
        assert_eq!(body["lastUpdated"], "0001-01-01T00:00:00Z");
        assert_eq!(body["currentTime"], "2023-11-14T22:13:20Z");
        assert_eq!(body["healthy"], false);

        health.updated();
        health.queued();
        *now.lock().unwrap() += Duration::from_millis(61_250);
        let body = health.answer(Probe::Livez).body;
        // Unhealthy: when the maps were last updated; healthy: now.
        assert_eq!(body["lastUpdated"], "2023-11-14T22:13:20Z");
        assert_eq!(body["currentTime"], "2023-11-14T22:14:21.25Z");
        health.updated();
        let body = health.answer(Probe::Livez).body;
        assert_eq!(body["lastUpdated"], body["currentTime"]);
        assert_eq!(body["healthy"], true);
    }
}
