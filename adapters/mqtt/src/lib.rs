//! `ferry-mqtt-adapter`: the MQTT 3.1.1 / 5.0 device endpoint.
//!
//! Devices connect with `auth-id@tenant` and a password; their PUBLISHes on Hono's topics become AMQP
//! messages to the router (with the device's registration assertion), and QoS 1 is acknowledged only when
//! the router's outcome is `accepted`. The MQTT session is our own (`session`), on rumqttc's packet codecs
//! (`wire`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ferry_adapter_core::auth::DeviceAuthenticator;
use ferry_adapter_core::downstream::{CommandLink, Downstream};
use ferry_adapter_core::registry::RegistryClient;
use ferry_core::admin::Admin;
use ferry_core::ids::{DeviceId, TenantId};
use ferry_core::shutdown::Shutdown;

pub mod config;
pub mod connack;
pub mod metrics;
pub mod session;
pub mod topic;
pub mod wire;

pub use config::{AdapterSettings, Config};

/// What every session of one adapter shares.
pub struct Shared {
    pub config: Config,
    pub registry: RegistryClient,
    pub auth: DeviceAuthenticator,
    pub downstream: Downstream,
    pub metrics: metrics::Metrics,
    /// Payload bytes per tenant in the current data volume period (this instance's count).
    pub volume: ferry_adapter_core::limits::VolumeMeter,
    /// Open authenticated connections of this instance.
    pub connections: AtomicUsize,
    /// Open sockets of this instance, CONNECT done or not (`max_sockets`).
    sockets: Arc<AtomicUsize>,
    /// Connections that have not finished their CONNECT yet (`max_connecting`).
    connecting: Arc<AtomicUsize>,
    pub shutdown: Shutdown,
    /// This instance's command subscriptions at the router.
    pub command_link: CommandLink,
    /// Which session takes each device's commands (the newest subscription wins).
    routes: Mutex<HashMap<(TenantId, DeviceId), session::CommandTarget>>,
    /// Which session holds each gateway's subscription for all its devices (`c//+/q/#`).
    gateway_routes: Mutex<HashMap<(TenantId, DeviceId), session::CommandTarget>>,
}

impl Shared {
    /// The device-message pipeline on this adapter's registry client, router connection and counters.
    pub fn pipeline(&self) -> ferry_adapter_core::pipeline::Pipeline<'_> {
        ferry_adapter_core::pipeline::Pipeline {
            adapter: session::ADAPTER_TYPE,
            registry: &self.registry,
            downstream: &self.downstream,
            volume: &self.volume,
            metrics: &self.metrics,
            command_link: Some(&self.command_link),
        }
    }

    fn routes(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<(TenantId, DeviceId), session::CommandTarget>> {
        self.routes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends `device`'s commands to this session from now on.
    pub fn route(&self, tenant: &TenantId, device: &DeviceId, target: session::CommandTarget) {
        self.routes()
            .insert((tenant.clone(), device.clone()), target);
    }

    /// Ends the route if it still leads to `session`; true if it did.
    pub fn unroute(&self, tenant: &TenantId, device: &DeviceId, session: u64) -> bool {
        let mut routes = self.routes();
        let key = (tenant.clone(), device.clone());
        if routes.get(&key).is_some_and(|t| t.session == session) {
            routes.remove(&key);
            true
        } else {
            false
        }
    }

    /// Sends the commands that the router addresses to `gateway` (`via`) to this session from now on.
    pub fn route_gateway(
        &self,
        tenant: &TenantId,
        gateway: &DeviceId,
        target: session::CommandTarget,
    ) {
        lock(&self.gateway_routes).insert((tenant.clone(), gateway.clone()), target);
    }

    /// Ends the gateway's route if it still leads to `session`; true if it did.
    pub fn unroute_gateway(&self, tenant: &TenantId, gateway: &DeviceId, session: u64) -> bool {
        let mut routes = lock(&self.gateway_routes);
        let key = (tenant.clone(), gateway.clone());
        if routes.get(&key).is_some_and(|t| t.session == session) {
            routes.remove(&key);
            true
        } else {
            false
        }
    }

    /// Hands a command from the router to the session holding the device (or, for a command the router
    /// sent through a gateway, the gateway's all-devices subscription); releases it when none does.
    fn dispatch(&self, command: ferry_adapter_core::downstream::Command) {
        let key = (command.tenant.clone(), command.device.clone());
        let own = self.routes().get(&key).cloned();
        let target = match (own, &command.via) {
            (Some(t), _) => Some(t),
            (None, Some(gateway)) => lock(&self.gateway_routes)
                .get(&(command.tenant.clone(), gateway.clone()))
                .cloned(),
            (None, None) => None,
        };
        let Some(target) = target else {
            command.release();
            return;
        };
        match target.offer(command) {
            Ok(()) => {}
            Err(session::NotTaken::Gone(c)) => c.release(),
            Err(session::NotTaken::Full(c)) => {
                // The device is not reading its commands: released, so the application may retry.
                tracing::debug!(tenant = %c.tenant, device = %c.device, "session's command queue full");
                self.metrics.command(
                    &c.tenant,
                    session::command_direction(&c),
                    metrics::Status::Undeliverable,
                    c.payload.len(),
                );
                c.release();
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
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
        &self.metrics
    }
    fn dispatch(&self, command: ferry_adapter_core::downstream::Command) {
        Shared::dispatch(self, command);
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
        protocol: "MQTT",
        tls_protocol: "MQTTS",
        bind: config.bind,
        tls_bind: config.tls_bind,
        tls: &config.tls,
        alpn: &[],
        admin_bind: config.admin_bind,
    };
    let p = ferry_adapter_core::start::prepare(
        "mqtt-adapter",
        config.upstream(),
        &listen,
        &admin,
        &shutdown,
    )
    .await?;
    let shared = Arc::new(Shared {
        command_link: p.command_link,
        routes: Mutex::new(HashMap::new()),
        gateway_routes: Mutex::new(HashMap::new()),
        auth: DeviceAuthenticator::with_limits(p.registry.clone(), config.adapter.login.clone()),
        registry: p.registry,
        downstream: p.downstream,
        metrics: hono.component(session::ADAPTER_TYPE),
        volume: ferry_adapter_core::limits::VolumeMeter::new(),
        connections: AtomicUsize::new(0),
        sockets: Arc::new(AtomicUsize::new(0)),
        connecting: Arc::new(AtomicUsize::new(0)),
        shutdown: shutdown.clone(),
        config,
    });
    ferry_adapter_core::start::spawn_commands(shared.clone(), p.commands);
    Ok(Started::serve(
        "MQTT adapter",
        p.listeners,
        &p.readiness,
        shared,
        |listeners, shared| accept_loops(listeners, shared, shutdown),
    ))
}

async fn accept_loops(
    listeners: ferry_core::net::Listeners,
    shared: Arc<Shared>,
    shutdown: Shutdown,
) {
    // `accept`'s future itself, not one wrapping it: each wrapping future keeps its own copy of the
    // arguments for the life of the connection (B6).
    let handler = move |stream: ferry_core::net::Stream, peer: SocketAddr, tls| {
        accept(stream, peer, tls, shared.clone())
    };
    // The TLS handshake is done by `accept` rather than by the accept loop, so that it counts among
    // the connections that have not finished their CONNECT (`max_connecting`).
    let how = ferry_core::net::Accept {
        max_connections: None,
        tls_in_handler: true,
    };
    listeners.serve(how, shutdown, handler).await;
}

/// One accepted connection: within the instance's socket limits, through the TLS handshake (on the TLS
/// listener), then the MQTT session. A connection beyond a limit is closed at once, unread, as
/// Mosquitto does: an MQTT refusal would first need the CONNECT, which is what the limit saves.
///
/// A plain connection's task is the session's future and little more: every async layer around it
/// would keep its own copy of the stream, the address and the limits for the life of the connection
/// (B6). The TLS path, larger anyway, is boxed.
fn accept(
    stream: ferry_core::net::Stream,
    peer: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shared: Arc<Shared>,
) -> impl std::future::Future<Output = ()> + Send {
    use futures_util::future::{Either, FutureExt};
    let Some(socket) = Permit::take(&shared.sockets, shared.config.max_sockets) else {
        tracing::debug!(%peer, "max_sockets reached: connection closed");
        return Either::Left(std::future::ready(()));
    };
    let Some(connecting) = Permit::take(&shared.connecting, shared.config.max_connecting) else {
        tracing::debug!(%peer, "max_connecting reached: connection closed");
        return Either::Left(std::future::ready(()));
    };
    let ended = move |r: Result<(), session::SessionError>| {
        if let Err(e) = r {
            tracing::debug!(%peer, error = %e, "MQTT connection ended");
        }
    };
    let (acceptor, tcp) = match (tls, stream) {
        (Some(acceptor), ferry_core::net::Stream::Plain(tcp)) => (acceptor, tcp),
        (_, stream) => {
            let cert = ferry_adapter_core::tls::peer_certificate(&stream);
            let session = session::serve(stream, peer, cert, socket, connecting, shared);
            return Either::Right(Either::Left(session.map(ended)));
        }
    };
    Either::Right(Either::Right(Box::pin(async move {
        // A client that never finishes its handshake holds a task and a socket: the CONNECT's
        // time bound applies to the TLS handshake too.
        let bound = Duration::from_secs(shared.config.connect_timeout_secs);
        // Boxed: an idle session's task should not keep a handshake's room (B6).
        let stream = match tokio::time::timeout(bound, Box::pin(acceptor.accept(tcp))).await {
            Ok(Ok(s)) => ferry_core::net::Stream::Tls(Box::new(s)),
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                return;
            }
        };
        let cert = ferry_adapter_core::tls::peer_certificate(&stream);
        ended(session::serve(stream, peer, cert, socket, connecting, shared).await);
    })))
}

/// A share of a connection limit, given back when dropped.
#[derive(Debug)]
pub struct Permit(Arc<AtomicUsize>);

impl Permit {
    /// One more of `counter`, unless that would exceed `max` (0: no limit).
    fn take(counter: &Arc<AtomicUsize>, max: usize) -> Option<Self> {
        let now = counter.fetch_add(1, Ordering::AcqRel) + 1;
        if max > 0 && now > max {
            counter.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Self(counter.clone()))
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
