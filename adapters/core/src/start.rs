//! How both adapters start, up to their own state: readiness registered, the registry and the downstream
//! connected ([`crate::upstream`]), the device listeners bound ([`crate::listen`]), the command link
//! opened; then, once the adapter has built its state, commands admitted against the tenant's data volume
//! and handed to the adapter ([`spawn_commands`]), and the running adapter held as a [`Started`].

use std::net::SocketAddr;
use std::sync::Arc;

use ferry_core::admin::{Admin, Readiness};
use ferry_core::net::Listeners;
use ferry_core::shutdown::Shutdown;
use tokio::sync::mpsc;

use crate::downstream::{Command, CommandLink, Downstream};
use crate::limits::VolumeMeter;
use crate::listen::{Listen, ListenError};
use crate::metrics::{AdapterMetrics, Status};
use crate::registry::RegistryClient;
use crate::upstream::{Upstream, UpstreamError};

/// Why an adapter could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The registry or the downstream could not be reached or set up.
    #[error("connecting upstream: {0}")]
    Upstream(#[from] UpstreamError),
    /// A listener could not be opened.
    #[error(transparent)]
    Listen(#[from] ListenError),
}

/// What an adapter has once it is connected and listening, before it serves anyone.
#[derive(Debug)]
pub struct Prepared {
    /// Set when the adapter is ready to serve (after its own state is built).
    pub readiness: Readiness,
    /// The registry client (following the change stream).
    pub registry: RegistryClient,
    /// Where device messages go (the router or NATS).
    pub downstream: Downstream,
    /// The device listeners, bound.
    pub listeners: Listeners,
    /// This instance's command address, and the commands that arrive on it.
    pub command_link: CommandLink,
    /// The commands arriving for this instance.
    pub commands: mpsc::Receiver<Command>,
}

/// Registers the adapter's readiness (`component`, not ready yet), connects upstream, binds the listeners
/// and opens the command link of `upstream`'s instance.
pub async fn prepare(
    component: &str,
    upstream: Upstream<'_>,
    listen: &Listen<'_>,
    admin: &Admin,
    shutdown: &Shutdown,
) -> Result<Prepared, StartError> {
    let readiness = admin.readiness(component);
    let (registry, downstream) = crate::upstream::connect(upstream, shutdown).await?;
    // Cluster mode: the console's charts ask every component for a tenant's figures.
    let metrics = admin.clone();
    downstream.serve_stats(move || metrics.encode_metrics(), shutdown);
    let listeners = crate::listen::listen(listen, admin, shutdown).await?;
    let (command_link, commands) = downstream.commands(&upstream.settings.instance_id);
    Ok(Prepared {
        readiness,
        registry,
        downstream,
        listeners,
        command_link,
        commands,
    })
}

/// An adapter's state as the command loop needs it.
pub trait CommandTarget: Send + Sync + 'static {
    /// The registry client (a command's tenant is looked up there).
    fn registry(&self) -> &RegistryClient;
    /// The tenants' data volume meter of this instance.
    fn volume(&self) -> &VolumeMeter;
    /// Hono's metrics of this adapter (a refused command is counted there).
    fn hono_metrics(&self) -> &AdapterMetrics;
    /// Hands an admitted command to the device's connection or waiting request.
    fn dispatch(&self, command: Command);
}

/// Admits each command of `commands` against its tenant's data volume (HONO-CONTRACT §5) and hands it to
/// `target`; one over the volume is counted as unprocessable and rejected with
/// `amqp:resource-limit-exceeded`. Runs until the command link closes.
pub fn spawn_commands<T: CommandTarget>(target: Arc<T>, mut commands: mpsc::Receiver<Command>) {
    tokio::spawn(async move {
        while let Some(command) = commands.recv().await {
            if crate::limits::admit_command(target.registry(), target.volume(), &command).await {
                target.dispatch(command);
                continue;
            }
            let direction = if command.reply_to.is_some() {
                "request"
            } else {
                "one-way"
            };
            target.hono_metrics().command(
                &command.tenant,
                direction,
                Status::Unprocessable,
                command.payload.len(),
            );
            command.reject(
                crate::limits::RESOURCE_LIMIT_EXCEEDED,
                "the tenant's data volume is used up",
            );
        }
    });
}

/// An adapter that is up: its addresses, its state (for embedding and tests) and its accept loop.
pub struct Started<S> {
    /// The plain listener's address.
    pub addr: SocketAddr,
    /// The TLS listener's address, when one is open.
    pub tls_addr: Option<SocketAddr>,
    /// The running adapter's state.
    pub shared: Arc<S>,
    name: &'static str,
    task: tokio::task::JoinHandle<()>,
}

impl<S> std::fmt::Debug for Started<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Started")
            .field("name", &self.name)
            .field("addr", &self.addr)
            .field("tls_addr", &self.tls_addr)
            .finish_non_exhaustive()
    }
}

/// The accept loop ended abnormally (it panicked or was cancelled).
#[derive(Debug, thiserror::Error)]
#[error("{name} task failed: {source}")]
pub struct JoinError {
    name: &'static str,
    source: tokio::task::JoinError,
}

impl<S: Send + Sync + 'static> Started<S> {
    /// Marks `readiness` ready, spawns `serve` on the listeners (the accept loop) and logs where `name`
    /// listens.
    pub fn serve<F, Fut>(
        name: &'static str,
        listeners: Listeners,
        readiness: &Readiness,
        shared: Arc<S>,
        serve: F,
    ) -> Self
    where
        F: FnOnce(Listeners, Arc<S>) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let (addr, tls_addr) = (listeners.addr(), listeners.tls_addr());
        readiness.set(true);
        let task = tokio::spawn(serve(listeners, shared.clone()));
        tracing::info!(%addr, ?tls_addr, "{name} listening");
        Self {
            addr,
            tls_addr,
            shared,
            name,
            task,
        }
    }

    /// Waits until the adapter has stopped (after shutdown and the drain).
    pub async fn join(self) -> Result<(), JoinError> {
        let name = self.name;
        self.task.await.map_err(|source| JoinError { name, source })
    }
}
