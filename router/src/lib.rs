//! `ferry-router`: the AMQP 1.0 messaging router between protocol adapters and business applications.
//!
//! Adapters send telemetry and events (each carrying a registration assertion) to `telemetry/TENANT` and
//! `event/TENANT`; applications consume from the same addresses. The router verifies assertions, routes
//! telemetry directly with end-to-end credit, and stores events durably before accepting them. It speaks
//! AMQP through its own server-side engine ([`connection`]) on the fe2o3 family's codec crates
//! ([`codec`]); see docs/router.md for why.

use std::net::SocketAddr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use ferry_core::admin::Admin;
use ferry_core::assertion::{Jwks, Verifier, VerifierConfig};
use ferry_core::shutdown::Shutdown;
use tokio::sync::Notify;

pub mod auth;
pub mod bus;
pub mod codec;
pub mod config;
pub mod connection;
pub mod console;
pub mod events;
#[doc(hidden)]
pub mod fuzzing;
pub mod gateways;
pub mod hub;
pub mod metrics;
pub mod registry;
pub mod tenants;

pub use config::Config;
use events::{EventStore, SegmentLog};

/// What every connection of one router shares.
pub struct Shared<S: EventStore> {
    pub hub: hub::Hub<S>,
    pub auth: auth::Authenticator,
    /// The gateways of devices, for commands that only a gateway's all-devices subscription can take.
    pub via: gateways::ViaLookup,
    pub config: EngineConfig,
    pub shutdown: Shutdown,
    verifier: RwLock<Arc<Verifier>>,
    /// Signalled when a token names a key we do not know: the JWKS is fetched again.
    pub refresh_keys: Notify,
    /// Presence, the tenants' live taps and the console's commands (docs/console.md).
    pub bridge: Arc<ferry_core::console::RouterBridge>,
    /// Devices whose last-seen was reported recently, as hashes of (tenant, device) with the time slot
    /// reported (see [`console::SEEN_SLOT_SECS`]): last-seen costs the presence store one update per
    /// device and slot, not one per message.
    pub seen: console::SeenFilter,
    /// Open connections (for `max_connections`).
    open_connections: std::sync::atomic::AtomicUsize,
    /// Open connections per application user (for `max_connections_per_user`).
    pub per_user: std::sync::Mutex<std::collections::HashMap<String, usize>>,
    /// Cluster mode: the NATS bus ([`bus`]); `None` in embedded mode.
    pub bus: Option<Arc<bus::Bus>>,
    /// Tenants' own limits on stored events (embedded mode; in cluster mode their streams hold them).
    pub tenant_limits: tenants::TenantLimits,
}

impl<S: EventStore> std::fmt::Debug for Shared<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl<S: EventStore> Shared<S> {
    /// The current assertion verifier (replaced when the registry's keys change).
    pub fn verifier(&self) -> Arc<Verifier> {
        self.verifier
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set_keys(&self, jwks: &Jwks) {
        let v = Arc::new(Verifier::new(jwks, VerifierConfig::default()));
        // Said of what the registry sent, not of the empty verifier the router starts with.
        if !v.has_keys() {
            tracing::warn!(
                "the registry's JWKS has no usable Ed25519 key; every registration assertion will be refused"
            );
        }
        *self
            .verifier
            .write()
            .unwrap_or_else(PoisonError::into_inner) = v;
    }
}

/// Engine settings taken from the config.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_user: usize,
    pub max_links_per_connection: usize,
    pub max_consumers_per_address: usize,
    /// Time-to-live of events that carry none (zero: until accepted).
    pub default_event_ttl: Duration,
}

impl From<&Config> for EngineConfig {
    fn from(config: &Config) -> Self {
        Self {
            idle_timeout: Duration::from_secs(config.idle_timeout_secs),
            max_connections: config.max_connections,
            max_connections_per_user: config.max_connections_per_user,
            max_links_per_connection: config.max_links_per_connection,
            max_consumers_per_address: config.max_consumers_per_address,
            default_event_ttl: Duration::from_secs(config.default_event_ttl_secs),
        }
    }
}

/// A router that is up.
#[derive(Debug)]
pub struct Started {
    pub addr: SocketAddr,
    pub tls_addr: Option<SocketAddr>,
    task: tokio::task::JoinHandle<()>,
}

impl Started {
    pub async fn join(self) -> anyhow::Result<()> {
        self.task.await.context("router task failed")
    }
}

/// Runs the router until `shutdown`.
pub async fn run(config: Config, admin: Admin, shutdown: Shutdown) -> anyhow::Result<()> {
    start(config, admin, shutdown).await?.join().await
}

/// Opens the event store (embedded mode) or connects to NATS (cluster mode), binds the listeners and
/// starts serving. Presence is kept in memory (embedded) or in NATS's presence bucket (cluster mode),
/// where the registry reads it.
pub async fn start(config: Config, admin: Admin, shutdown: Shutdown) -> anyhow::Result<Started> {
    match config.messaging.mode {
        ferry_nats::MessagingMode::Embedded => {
            let bridge = ferry_core::console::RouterBridge::new(Arc::new(
                ferry_core::console::MemoryPresence::default(),
            ));
            start_with_bridge(config, admin, shutdown, bridge).await
        }
        ferry_nats::MessagingMode::Nats => {
            let bus = connect_bus(&config).await?;
            let presence = ferry_nats::presence::NatsPresence::open(
                bus.jetstream(),
                config.messaging.nats.replicas,
            )
            .await
            .context("opening the presence bucket (messaging.nats)")?;
            admin.register(
                "ferry_router_presence_updates_dropped",
                "Presence updates dropped because the writer to NATS fell behind (cluster mode)",
                presence.dropped_counter(),
            );
            let bridge = ferry_core::console::RouterBridge::new(Arc::new(presence));
            serve_on_bus(config, admin, shutdown, bus, bridge).await
        }
    }
}

/// [`start`], recording presence into `bridge`, publishing device messages to its taps and serving its
/// commands: `ferry up` hands the same bridge to the registry, which serves the presence API and the
/// console from it.
pub async fn start_with_bridge(
    config: Config,
    admin: Admin,
    shutdown: Shutdown,
    bridge: Arc<ferry_core::console::RouterBridge>,
) -> anyhow::Result<Started> {
    match config.messaging.mode {
        ferry_nats::MessagingMode::Embedded => {
            let store_dir = config.data_dir.join("events");
            let store = tokio::task::spawn_blocking(move || SegmentLog::open(&store_dir))
                .await
                .context("opening the event store")??;
            serve(config, admin, shutdown, store, None, bridge).await
        }
        ferry_nats::MessagingMode::Nats => {
            let bus = connect_bus(&config).await?;
            serve_on_bus(config, admin, shutdown, bus, bridge).await
        }
    }
}

async fn connect_bus(config: &Config) -> anyhow::Result<bus::Bus> {
    let name = format!("ferry-router-{}", std::process::id());
    bus::Bus::connect(
        &config.messaging.nats,
        &name,
        Duration::from_secs(config.event_redelivery_secs),
    )
    .await
    .context("connecting to NATS (messaging.nats)")
}

async fn serve_on_bus(
    config: Config,
    admin: Admin,
    shutdown: Shutdown,
    bus: bus::Bus,
    bridge: Arc<ferry_core::console::RouterBridge>,
) -> anyhow::Result<Started> {
    // Events live in JetStream; this store stays empty (producer links are refused).
    serve(
        config,
        admin,
        shutdown,
        events::InMemoryStore::default(),
        Some(Arc::new(bus)),
        bridge,
    )
    .await
}

async fn serve<S: EventStore>(
    config: Config,
    admin: Admin,
    shutdown: Shutdown,
    store: S,
    bus: Option<Arc<bus::Bus>>,
    bridge: Arc<ferry_core::console::RouterBridge>,
) -> anyhow::Result<Started> {
    let readiness = admin.readiness("router");
    let metrics = metrics::Metrics::new(&admin);
    let registry = registry::RegistryClient::new(
        &config.registry_url,
        &config.registry_token,
        config.registry_ca_file.as_deref(),
    )
    .context("building the registry client")?;
    let mut hub = hub::Hub::new(Arc::new(store), metrics, config.max_events_per_tenant)
        .with_max_queued_bytes(config.max_queued_bytes_per_connection)
        .with_event_limits(config.event_limits());
    // Embedded mode keeps the events on this disk; in cluster mode JetStream does.
    if bus.is_none() {
        hub = hub.with_tenant_limits_awaited();
    }
    if bus.is_none() && config.min_free_disk_bytes > 0 {
        let dir = config.data_dir.join("events");
        hub = hub.with_disk_guard(events::DiskGuard::new(dir, config.min_free_disk_bytes));
    }
    let shared = Arc::new(Shared {
        hub,
        auth: auth::Authenticator::new(
            config.adapter_user.clone(),
            config.adapter_password.clone(),
            Some(registry.clone()),
        ),
        via: gateways::ViaLookup::new(Some(registry.clone())),
        config: EngineConfig::from(&config),
        shutdown: shutdown.clone(),
        verifier: RwLock::new(Arc::new(Verifier::new(
            &Jwks { keys: vec![] },
            VerifierConfig::default(),
        ))),
        refresh_keys: Notify::new(),
        bridge: bridge.clone(),
        seen: console::SeenFilter::default(),
        open_connections: std::sync::atomic::AtomicUsize::new(0),
        per_user: std::sync::Mutex::new(std::collections::HashMap::new()),
        tenant_limits: tenants::TenantLimits::new(bus.is_none().then(|| registry.clone())),
        bus: bus.clone(),
    });
    if let Some(bus) = &bus {
        tokio::spawn(bus.clone().follow_routes(shared.clone(), shutdown.clone()));
        // The console's live views: which tenants' telemetry to copy for them.
        tokio::spawn(bus::watched::follow(
            bus.client().clone(),
            bus.watched.clone(),
            shutdown.clone(),
        ));
        // The console's charts ask every router for a tenant's figures.
        let metrics = admin.clone();
        tokio::spawn(ferry_nats::stats::serve(
            bus.client().clone(),
            move || metrics.encode_metrics(),
            shutdown.clone(),
        ));
        let ready = admin.readiness("nats");
        let bus = bus.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tokio::select! {
                    _ = tick.tick() => ready.set(bus.is_connected()),
                    () = shutdown.clone().wait() => return,
                }
            }
        });
    }
    shared
        .hub
        .restore_events()
        .await
        .context("reading the event store")?;

    let tls = match (&config.tls.cert_path, &config.tls.key_path) {
        (Some(cert), Some(key)) => Some(("AMQPS", config.tls_bind, tls_acceptor(cert, key)?)),
        _ => None,
    };
    let listeners = ferry_core::net::Listeners::bind("AMQP", config.bind, tls).await?;
    let (addr, tls_addr) = (listeners.addr(), listeners.tls_addr());
    ferry_core::admin::serve_admin(config.admin_bind, &admin, &shutdown).await?;

    // Keys: fetched now (retried until the registry answers) and again on an unknown key id.
    {
        let shared = shared.clone();
        let registry = registry.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            loop {
                match registry.jwks().await {
                    Ok(jwks) => {
                        shared.set_keys(&jwks);
                        readiness.set(true);
                        tokio::select! {
                            () = shared.refresh_keys.notified() => {}
                            () = shutdown.clone().wait() => return,
                        }
                        // At most one refresh a second, however many tokens name unknown keys.
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot fetch the registry's keys; retrying");
                        tokio::select! {
                            () = tokio::time::sleep(Duration::from_millis(500)) => {}
                            () = shutdown.clone().wait() => return,
                        }
                    }
                }
            }
        });
    }
    // Application users and devices' gateways: purged from their caches as the registry announces changes;
    // tenants' event limits fetched again.
    {
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let s = shared.clone();
            registry
                .follow_changes(shutdown, move |change| {
                    s.via.purge(change.as_ref());
                    tenants::on_change(&s, change.as_ref());
                    match change {
                        Some(c) if c.kind == registry::ChangeKind::Application => {
                            s.auth.purge(c.name.as_deref());
                        }
                        Some(_) => {}
                        None => s.auth.purge(None),
                    }
                })
                .await;
        });
    }
    // Expired events leave the store once a second; command responses that waited too long for their
    // application's credit are released.
    {
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        let now = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
                        shared.hub.expire_events(now);
                        shared.hub.expire_responses(std::time::Instant::now());
                    }
                    () = shutdown.clone().wait() => return,
                }
            }
        });
    }

    if let Some(commands) = bridge.take_commands() {
        tokio::spawn(console::serve_commands(
            shared.clone(),
            commands,
            shutdown.clone(),
        ));
    }
    let task = tokio::spawn(accept_loops(listeners, shared, shutdown));
    tracing::info!(%addr, ?tls_addr, "router listening");
    Ok(Started {
        addr,
        tls_addr,
        task,
    })
}

async fn accept_loops<S: EventStore>(
    listeners: ferry_core::net::Listeners,
    shared: Arc<Shared<S>>,
    shutdown: Shutdown,
) {
    use std::sync::atomic::Ordering;
    let handler = move |stream: ferry_core::net::Stream, peer: SocketAddr, _tls| {
        let shared = shared.clone();
        async move {
            if shared.open_connections.fetch_add(1, Ordering::AcqRel)
                >= shared.config.max_connections
            {
                // Over the process's cap: closed before a byte is read, as a full listen queue would.
                tracing::debug!(%peer, "too many AMQP connections; closing a new one");
                drop(stream);
            } else if let Err(e) = connection::serve(stream, peer, shared.clone()).await {
                tracing::debug!(%peer, error = %e, "AMQP connection ended");
            }
            shared.open_connections.fetch_sub(1, Ordering::AcqRel);
        }
    };
    // Shutdown: every connection sends its close (they watch the same shutdown); the loop waits for
    // that, up to the drain grace.
    listeners
        .serve(ferry_core::net::Accept::default(), shutdown, handler)
        .await;
}

fn tls_acceptor(
    cert_path: &std::path::Path,
    key_path: &std::path::Path,
) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    Ok(ferry_core::tls::acceptor(cert_path, key_path, &[])?)
}
