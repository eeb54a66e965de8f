//! Serving an axum router over TCP, plain or with rustls, until shutdown.
//!
//! Our own accept loop instead of `axum::serve` so that HTTP and HTTPS share one path: each connection is
//! optionally wrapped in TLS (handshake bounded by a timeout, so a client that never finishes it holds
//! nothing for long) and handed to hyper; on shutdown the listener closes and open connections drain.
//!
//! What one client can make the server hold is bounded ([`Limits`]): at most `max_connections` are
//! served at once, and the loop stops accepting while they are all taken, so further clients wait in the
//! kernel's listen queue (as with nginx's `worker_connections` or mini-redis) instead of being cut off. The
//! header-read timer closes a connection that does not finish a request header in time, and with it one
//! that idles between requests, so a slot cannot be held by a client that sends nothing. The request
//! timeout (answers 503) is a layer of the API router ([`crate::api::router`]).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use ferry_core::shutdown::Shutdown;

const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const DRAIN_GRACE: Duration = Duration::from_secs(10);

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

/// Serves `app` on `listener` until `shutdown`, then drains open connections for a grace period.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    shutdown: Shutdown,
) {
    let graceful = GracefulShutdown::new();
    // HTTP/1.1 only (TLS offers ALPN `http/1.1` alone). hyper-util's `auto` builder would first wait for
    // the HTTP/2 preface without any timer, so a client sending nothing would hold its slot forever.
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let stop = shutdown.clone().wait();
    tokio::pin!(stop);
    loop {
        // A slot first: while all are taken, nothing is accepted and new clients queue in the kernel.
        let slot = tokio::select! {
            () = &mut stop => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(s) => s,
                Err(_) => break, // the semaphore is never closed
            },
        };
        let (stream, peer) = tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            // Held until the connection ends.
            let _slot = slot;
            match tls {
                None => {
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    let _ = watcher.watch(conn).await;
                }
                Some(acceptor) => {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    {
                        Ok(Ok(tls_stream)) => {
                            let conn = builder.serve_connection(TokioIo::new(tls_stream), service);
                            let _ = watcher.watch(conn).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the grace period; closing them");
    }
}
