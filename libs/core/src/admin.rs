//! The admin server every Ferry binary runs: `/live`, `/ready` and `/metrics` (Prometheus text).
//!
//! [`Admin`] is shared by the components of one process: each registers its metrics and a [`Readiness`]
//! flag; `/ready` answers 200 only when every registered component is ready, 503 naming those that are not.
//! `ferry up` therefore serves one admin endpoint for all the components it composes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::text::encode;
use prometheus_client::registry::{Metric, Registry};

use crate::net::BindError;
use crate::shutdown::Shutdown;

/// Time a client of the admin server (a kubelet probe, Prometheus) has to send a request header.
pub const ADMIN_HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Admin connections served at once; more wait in the listen queue.
pub const ADMIN_MAX_CONNECTIONS: usize = 64;

/// Metrics and readiness of the components in this process.
#[derive(Clone, Default)]
pub struct Admin {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    metrics: Mutex<Registry>,
    checks: Mutex<Vec<(String, Readiness)>>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin").finish_non_exhaustive()
    }
}

/// One component's readiness flag; starts not ready.
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

impl Admin {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a metric under its full Prometheus name (without the `_total` suffix for counters,
    /// which the encoder adds).
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.inner
            .metrics
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .register(name, help, metric);
    }

    /// A readiness flag for `component`, reported by `/ready`.
    pub fn readiness(&self, component: &str) -> Readiness {
        let r = Readiness::default();
        self.inner
            .checks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((component.to_owned(), r.clone()));
        r
    }

    /// The names of the components that are not ready.
    pub fn not_ready(&self) -> Vec<String> {
        self.inner
            .checks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(_, r)| !r.is_ready())
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// The metrics in Prometheus text format.
    pub fn encode_metrics(&self) -> String {
        let mut out = String::new();
        let registry = self
            .inner
            .metrics
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if encode(&mut out, &registry).is_err() {
            out.clear();
        }
        out
    }

    /// The admin routes, to serve on their own port or to merge into a component's router.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/live", get(|| async { "ok\n" }))
            .route("/ready", get(ready))
            .route("/metrics", get(metrics))
            .with_state(self.clone())
    }

    /// Serves the admin routes on `listener` until `shutdown`, through the same accept loop as every
    /// other listener (a client that sends no request header within [`ADMIN_HEADER_TIMEOUT`] is cut
    /// off).
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: Shutdown,
    ) -> std::io::Result<()> {
        let app = self.router();
        let stop = shutdown.clone();
        let handler = move |stream: crate::net::Stream, _peer, _tls| {
            let service = hyper_util::service::TowerToHyperService::new(app.clone());
            crate::net::serve_http1(stream, service, ADMIN_HEADER_TIMEOUT, stop.clone())
        };
        let accept = crate::net::Accept {
            max_connections: Some(ADMIN_MAX_CONNECTIONS),
            tls_in_handler: false,
        };
        crate::net::Listeners::plain(listener)?
            .serve(accept, shutdown, handler)
            .await;
        Ok(())
    }
}

async fn ready(State(admin): State<Admin>) -> impl IntoResponse {
    let pending = admin.not_ready();
    if pending.is_empty() {
        (StatusCode::OK, "ready\n".to_owned())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", pending.join(", ")),
        )
    }
}

async fn metrics(State(admin): State<Admin>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        admin.encode_metrics(),
    )
}

/// Binds the admin listener when `bind` is set and serves `/live`, `/ready` and `/metrics` on it until
/// `shutdown`; answers where it listens.
pub async fn serve_admin(
    bind: Option<std::net::SocketAddr>,
    admin: &Admin,
    shutdown: &Shutdown,
) -> Result<Option<std::net::SocketAddr>, BindError> {
    let Some(addr) = bind else {
        return Ok(None);
    };
    let listener = crate::net::bind("admin", addr).await?;
    let local = crate::net::local_addr("admin", addr, &listener)?;
    tokio::spawn(admin.clone().serve(listener, shutdown.clone()));
    Ok(Some(local))
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;

    use super::*;

    #[tokio::test]
    async fn live_ready_and_metrics_over_http() {
        let admin = Admin::new();
        let counter: Counter = Counter::default();
        admin.register("ferry_test_things", "Things seen", counter.clone());
        counter.inc_by(3);
        let readiness = admin.readiness("widget");

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (trigger, shutdown) = crate::shutdown::channel();
        let server = tokio::spawn(admin.clone().serve(listener, shutdown));
        let base = format!("http://{addr}");
        let client = reqwest::Client::new();

        let live = client
            .get(format!("{base}/live"))
            .send()
            .await
            .expect("live");
        assert_eq!(live.status(), 200);

        let r = client
            .get(format!("{base}/ready"))
            .send()
            .await
            .expect("ready");
        assert_eq!(r.status(), 503);
        assert!(r.text().await.expect("body").contains("widget"));
        readiness.set(true);
        let r = client
            .get(format!("{base}/ready"))
            .send()
            .await
            .expect("ready");
        assert_eq!(r.status(), 200);

        let m = client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .expect("metrics");
        let text = m.text().await.expect("body");
        assert!(text.contains("ferry_test_things_total 3"), "{text}");

        trigger.trigger();
        server.await.expect("join").expect("serve");
    }
}
