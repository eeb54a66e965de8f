//! `ferry-http-adapter`: the HTTP device endpoint (HONO-CONTRACT §2.3), with long-poll command delivery.
//!
//! Devices `POST /telemetry` and `/event` (gateways `PUT /telemetry/TENANT/DEVICE`) with HTTP Basic
//! `auth-id@tenant`; each request becomes an AMQP message to the router carrying the device's registration
//! assertion, and the status code tells the device what became of it (202 once queued or accepted, 503
//! when no consumer took it). A request with `hono-ttd` then waits for a command for the device, which
//! comes back in the response; the device answers it with `POST /command/res/REQ_ID`.
//!
//! HTTP/1.1 on hyper, one task per connection; the request path is in `service`, the waits for commands
//! in `commands`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ferry_adapter_core::auth::DeviceAuthenticator;
use ferry_adapter_core::downstream::Downstream;
use ferry_adapter_core::registry::RegistryClient;
use ferry_core::admin::Admin;
use ferry_core::shutdown::Shutdown;
use tokio::io::{AsyncRead, AsyncWrite};

pub mod body;
pub mod commands;
pub mod config;
#[doc(hidden)]
pub mod fuzzing;
pub mod metrics;
pub mod request;
pub mod request_id;
pub mod service;

pub use config::{AdapterSettings, Config};

/// What every request of one adapter shares.
pub struct Shared {
    pub config: Config,
    pub registry: RegistryClient,
    pub auth: DeviceAuthenticator,
    pub downstream: Downstream,
    pub metrics: metrics::Metrics,
    /// Payload bytes per tenant in the current data volume period (this instance's count).
    pub volume: ferry_adapter_core::limits::VolumeMeter,
    /// Requests waiting for commands (`hono-ttd`).
    pub commands: Arc<commands::Waiters>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

/// An adapter that is up.
pub type Started = ferry_adapter_core::start::Started<Shared>;

impl ferry_adapter_core::start::CommandTarget for Shared {
    fn registry(&self) -> &RegistryClient {
        &self.registry
    }
    fn volume(&self) -> &ferry_adapter_core::limits::VolumeMeter {
        &self.volume
    }
    fn hono_metrics(&self) -> &ferry_adapter_core::metrics::AdapterMetrics {
        self.metrics.hono()
    }
    fn dispatch(&self, command: ferry_adapter_core::downstream::Command) {
        self.commands.dispatch(command);
    }
}

/// Runs the adapter until `shutdown`.
pub async fn run(config: Config, admin: Admin, shutdown: Shutdown) -> anyhow::Result<()> {
    Ok(start(config, admin, shutdown).await?.join().await?)
}

/// Connects to the registry and the router, binds the listeners and starts serving; Hono's metrics are
/// registered with `admin` (use [`start_with_metrics`] when another adapter shares the `admin`).
pub async fn start(config: Config, admin: Admin, shutdown: Shutdown) -> anyhow::Result<Started> {
    let hono = metrics::HonoMetrics::new(&admin);
    start_with_metrics(config, admin, &hono, shutdown).await
}

/// [`start`], reporting into metric families that other adapters of the process share.
pub async fn start_with_metrics(
    config: Config,
    admin: Admin,
    hono: &metrics::HonoMetrics,
    shutdown: Shutdown,
) -> anyhow::Result<Started> {
    let listen = ferry_adapter_core::listen::Listen {
        protocol: "HTTP",
        tls_protocol: "HTTPS",
        bind: config.bind,
        tls_bind: config.tls_bind,
        tls: &config.tls,
        alpn: &[b"http/1.1"],
        admin_bind: config.admin_bind,
    };
    let p = ferry_adapter_core::start::prepare(
        "http-adapter",
        config.upstream(),
        &listen,
        &admin,
        &shutdown,
    )
    .await?;
    let shared = Arc::new(Shared {
        auth: DeviceAuthenticator::with_limits(p.registry.clone(), config.adapter.login.clone()),
        registry: p.registry,
        downstream: p.downstream,
        metrics: metrics::Metrics::new(&admin, hono),
        volume: ferry_adapter_core::limits::VolumeMeter::new(),
        commands: commands::Waiters::new(p.command_link, shutdown.clone()),
        config,
    });
    ferry_adapter_core::start::spawn_commands(shared.clone(), p.commands);
    Ok(Started::serve(
        "HTTP adapter",
        p.listeners,
        &p.readiness,
        shared,
        |listeners, shared| accept_loops(listeners, shared, shutdown),
    ))
}

/// Serves both listeners until shutdown, then gives open connections the drain grace to finish.
async fn accept_loops(
    listeners: ferry_core::net::Listeners,
    shared: Arc<Shared>,
    shutdown: Shutdown,
) {
    let stop = shutdown.clone();
    let handler = move |stream: ferry_core::net::Stream, peer: SocketAddr, _tls| {
        let (shared, shutdown) = (shared.clone(), stop.clone());
        async move {
            let cert = ferry_adapter_core::tls::peer_certificate(&stream).map(Arc::new);
            serve_connection(stream, peer, cert, shared, shutdown).await;
        }
    };
    listeners
        .serve(ferry_core::net::Accept::default(), shutdown, handler)
        .await;
}

/// HTTP/1.1 with keep-alive on one connection until the client closes it, it idles past
/// `idle_timeout_secs`, or shutdown (which lets the request in progress finish).
async fn serve_connection<IO>(
    io: IO,
    peer: SocketAddr,
    cert: Option<Arc<rustls::pki_types::CertificateDer<'static>>>,
    shared: Arc<Shared>,
    shutdown: Shutdown,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let idle = Duration::from_secs(shared.config.idle_timeout_secs);
    let service = hyper::service::service_fn(move |mut req: hyper::Request<_>| {
        // The peer's address, for counting failed logins per source (`service::authenticate`).
        req.extensions_mut().insert(peer);
        let (shared, cert) = (shared.clone(), cert.clone());
        async move { Ok::<_, Infallible>(service::handle(shared, cert.as_deref(), req).await) }
    });
    // Hyper's header read timeout also runs while a keep-alive connection waits for its next request,
    // so it is the idle timeout as well.
    ferry_core::net::serve_http1(io, service, idle, shutdown).await;
}
