//! Serving an axum router over TCP, plain or with rustls, until shutdown.
//!
//! The accept loop every component shares ([`ferry_core::net::Listeners`]) instead of `axum::serve`, so
//! that HTTP and HTTPS share one path: each connection is optionally wrapped in TLS (handshake bounded by
//! a timeout, so a client that never finishes it holds nothing for long) and handed to hyper; on
//! shutdown the listener closes and open connections drain.
//!
//! What one client can make the server hold is bounded ([`Limits`]): at most `max_connections` are
//! served at once, and the loop stops accepting while they are all taken, so further clients wait in the
//! kernel's listen queue (as with nginx's `worker_connections` or mini-redis) instead of being cut off. The
//! header-read timer closes a connection that does not finish a request header in time, and with it one
//! that idles between requests, so a slot cannot be held by a client that sends nothing. The request
//! timeout (answers 503) is a layer of the API router ([`crate::api::router`]).

use std::path::Path;
use std::time::Duration;

use axum::Router;
use ferry_core::net::{Accept, Listeners, Stream};
use hyper_util::service::TowerToHyperService;
use tokio_rustls::TlsAcceptor;

use ferry_core::shutdown::Shutdown;

/// Loads a PEM certificate chain and private key into a TLS acceptor speaking HTTP/1.1.
pub fn tls_acceptor(cert_path: &Path, key_path: &Path) -> anyhow::Result<TlsAcceptor> {
    Ok(ferry_core::tls::acceptor(
        cert_path,
        key_path,
        &[b"http/1.1"],
    )?)
}

/// What the server lets its clients hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; more wait to be accepted.
    pub max_connections: usize,
    /// Time to send a complete request header (and the longest idle time between requests).
    pub header_read_timeout: Duration,
}

/// Serves `app` on `listeners` until `shutdown`, then drains open connections for
/// [`ferry_core::net::DRAIN_GRACE`].
pub async fn serve(listeners: Listeners, app: Router, limits: Limits, shutdown: Shutdown) {
    let accept = Accept {
        max_connections: Some(limits.max_connections),
        tls_in_handler: false,
    };
    let stop = shutdown.clone();
    let handler = move |stream: Stream, _peer, _tls| {
        let service = TowerToHyperService::new(app.clone());
        ferry_core::net::serve_http1(stream, service, limits.header_read_timeout, stop.clone())
    };
    listeners.serve(accept, shutdown, handler).await;
}
