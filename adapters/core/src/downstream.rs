//! Where an adapter's messages go. [`Downstream`] is one of two implementations, chosen once at start by
//! the `messaging` setting: NATS with JetStream in cluster mode ([`nats`], docs/cluster.md "Adapters on
//! NATS"), or, in embedded mode, the adapter's AMQP 1.0 connection to the router ([`amqp`]).
//!
//! Layout: this file holds the settings, the errors and the [`Downstream`] both answer behind;
//! `message` what travels; `commands` what comes back (commands) and the devices an instance holds,
//! over either bus. The buses know nothing of commands: `commands` uses them, one way.

mod amqp;
mod commands;
mod message;
mod nats;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use ferry_core::ids::TenantId;
use ferry_core::shutdown::Shutdown;
use tokio::sync::mpsc;

pub use commands::{Command, CommandLink};
pub use message::{
    CommandResponse, DeviceMessage, MessageKind, PropertyValue, SendOutcome, RESERVED_PROPERTIES,
};
pub use nats::NatsDownstreamConfig;

use amqp::Amqp;
pub use amqp::Handed;

/// Where the router is and how to talk to it.
#[derive(Debug, Clone)]
pub struct DownstreamConfig {
    /// `host:port` of the router's AMQP listener.
    pub address: String,
    /// The adapters' service credential (the router's `adapter_user` / `adapter_password`).
    pub user: String,
    /// The service credential's password.
    pub password: String,
    /// AMQP container id of this adapter instance.
    pub container_id: String,
    /// How long a pre-settled message (telemetry QoS 0) may wait for link credit before it fails with
    /// [`DownstreamError::NoCredit`]: it is shed rather than queued when consumers cannot keep up.
    pub no_credit_timeout: Duration,
    /// The same for an unsettled message (telemetry QoS 1, events, command responses). The router gives a
    /// telemetry producer credit at once when the address has no consumer (and releases what comes), so
    /// no credit here means consumers are attached but have none to give yet: the message waits, and the
    /// device's PUBACK with it, which slows the device down to what the consumers take instead of failing
    /// it (and disconnecting a QoS 1 device) over a pause of a few hundred milliseconds.
    pub unsettled_credit_timeout: Duration,
    /// How long the router may take to settle an unsettled message.
    pub outcome_timeout: Duration,
    /// Bound on connecting (TCP, SASL, open, begin).
    pub connect_timeout: Duration,
    /// Longest pause between reconnection attempts (the pause doubles from 100 ms up to this).
    pub max_reconnect_delay: Duration,
    /// Messages queued per sender link ahead of its task.
    pub link_queue: usize,
    /// Credit of the command receiver: commands the router may have unsettled at this instance.
    pub command_credit: u32,
    /// TLS to the router (AMQPS); plain AMQP without it.
    pub tls: Option<RouterTls>,
}

/// TLS towards the router: the connector (which CAs are trusted) and the name the router's certificate
/// must carry.
#[derive(Clone)]
pub struct RouterTls {
    /// Trusts the configured CA (or the public web roots).
    pub connector: tokio_rustls::TlsConnector,
    /// The router's host, as its certificate must name it.
    pub server_name: rustls::pki_types::ServerName<'static>,
}

impl std::fmt::Debug for RouterTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouterTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl DownstreamConfig {
    /// Defaults for everything but where the router is and the credential.
    pub fn new(
        address: impl Into<String>,
        user: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        Self {
            address: address.into(),
            user: user.into(),
            password: password.into(),
            container_id: format!("ferry-adapter-{}", std::process::id()),
            no_credit_timeout: Duration::from_millis(200),
            unsettled_credit_timeout: Duration::from_secs(2),
            outcome_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            max_reconnect_delay: Duration::from_secs(5),
            link_queue: 256,
            command_credit: 256,
            tls: None,
        }
    }
}

/// Why a message did not reach the router (an outcome from it is a [`SendOutcome`], not an error).
/// Adapters answer all of these with 503 / "server unavailable": none is the device's fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DownstreamError {
    /// The connection to the router is down (being re-established).
    #[error("not connected to the router")]
    NotConnected,
    /// The link got no credit in time: nobody consumes the tenant's telemetry (or the event store is
    /// full).
    #[error("no credit from the router (no consumer)")]
    NoCredit,
    /// No outcome within [`DownstreamConfig::outcome_timeout`]; the message may or may not have
    /// arrived.
    #[error("the router did not settle the message in time")]
    Timeout,
    /// The link or connection failed while the message was on its way.
    #[error("the connection to the router was lost")]
    Disconnected,
    /// The router refused to attach a link (e.g. an address the service credential may not use).
    #[error("the router refused a link to {address}: {reason}")]
    LinkRefused {
        /// The link's address.
        address: String,
        /// What the router or the client library said.
        reason: String,
    },
    /// A control message (command registration) that the router did not accept.
    #[error("the router did not accept the message: {0:?}")]
    NotAccepted(SendOutcome),
}

/// Counters for tests and metrics.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DownstreamStats {
    pub connects: u64,
    pub links_attached: u64,
}

/// Where the adapter's messages go: the router over AMQP 1.0 (embedded mode) or NATS (cluster mode),
/// chosen once, when the adapter starts; cheap to clone. Both answer in the same terms
/// ([`SendOutcome`], [`DownstreamError`]), so the adapters do not know which one they use.
#[derive(Clone)]
pub struct Downstream {
    imp: Imp,
}

#[derive(Clone)]
enum Imp {
    Amqp(Amqp),
    Nats(Arc<nats::Nats>),
}

impl std::fmt::Debug for Downstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Downstream");
        match &self.imp {
            Imp::Amqp(a) => d.field("address", &a.inner.config.address),
            Imp::Nats(n) => d.field("nats", &n.name()),
        };
        d.field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

impl Downstream {
    /// Starts connecting to the router (in the background, reconnecting until `shutdown`). Sends fail
    /// with [`DownstreamError::NotConnected`] until the connection is up; see [`Self::wait_connected`].
    pub fn start(config: DownstreamConfig, shutdown: Shutdown) -> Self {
        Self {
            imp: Imp::Amqp(Amqp::start(config, shutdown)),
        }
    }

    /// Connects to NATS (cluster mode, docs/cluster.md "Adapters on NATS"); the first connection must
    /// succeed within the configured timeout, later ones are re-established in the background until
    /// `shutdown`.
    pub async fn connect_nats(
        config: NatsDownstreamConfig,
        shutdown: Shutdown,
    ) -> Result<Self, ferry_nats::Error> {
        Ok(Self {
            imp: Imp::Nats(nats::Nats::connect(config, shutdown).await?),
        })
    }

    /// Cluster mode: answers the registry's stats requests (`ferry_nats::stats`) with the tenant's lines
    /// of `encode()` (this process's metrics text) until `shutdown`. Embedded mode: nothing (the registry
    /// reads the metrics of the process it shares with the adapters).
    pub fn serve_stats(&self, encode: impl Fn() -> String + Send + 'static, shutdown: &Shutdown) {
        if let Imp::Nats(n) = &self.imp {
            tokio::spawn(ferry_nats::stats::serve(
                n.client.clone(),
                encode,
                shutdown.clone(),
            ));
        }
    }

    /// Whether the connection to the router (or NATS) is up (for readiness).
    pub fn is_connected(&self) -> bool {
        match &self.imp {
            Imp::Amqp(a) => a.is_connected(),
            Imp::Nats(n) => n.is_connected(),
        }
    }

    /// Waits until connected, at most `within`; true if connected.
    pub async fn wait_connected(&self, within: Duration) -> bool {
        match &self.imp {
            Imp::Amqp(a) => a.wait_connected(within).await,
            Imp::Nats(n) => n.wait_connected(within).await,
        }
    }

    /// Whether a QoS 0 message of `tenant` would be shed now: its link to the router has had no credit
    /// for a while. The caller then drops the message before encoding it, so that a flood past what the
    /// consumers take costs the adapter as little as possible (embedded mode; NATS never says so).
    pub fn sheds_qos0(&self, tenant: &TenantId) -> bool {
        match &self.imp {
            Imp::Amqp(a) => a.sheds_qos0(tenant),
            Imp::Nats(_) => false,
        }
    }

    /// Sends a device message and, unless it goes pre-settled, waits for the router's outcome.
    pub async fn send(&self, msg: DeviceMessage) -> Result<SendOutcome, DownstreamError> {
        match &self.imp {
            Imp::Amqp(a) => a.send(msg).await,
            // Boxed: the NATS path's future is large, and the caller's future (moved into a box per
            // message by the MQTT session) would be as large as the larger of the two.
            Imp::Nats(n) => Box::pin(n.send(msg)).await,
        }
    }

    /// Hands a message to the router's link at once and gives back what resolves to its outcome, as
    /// [`Downstream::send`] would answer: small enough to keep per message (an MQTT session holds one per
    /// unanswered QoS 1 PUBLISH instead of a future of the whole send). `None` for the NATS bus (use
    /// [`Downstream::send`]).
    pub fn hand_over(&self, msg: &DeviceMessage) -> Option<Handed> {
        match &self.imp {
            Imp::Amqp(a) => Some(a.hand_over(msg)),
            Imp::Nats(_) => None,
        }
    }

    /// Hands QoS 0 telemetry to the router's link without waiting for anything: its outcome (written,
    /// or shed) is counted in `tally`, which must be the message's tenant's. `None` when this downstream
    /// cannot (the NATS bus: use [`Downstream::send`]); `Some(false)` when the message was not taken
    /// (not connected, or the connection's queue is full) and nothing was counted.
    pub fn try_send_qos0(
        &self,
        msg: &DeviceMessage,
        tally: &Arc<crate::metrics::TenantTally>,
    ) -> Option<bool> {
        match &self.imp {
            Imp::Amqp(a) => Some(a.try_send_qos0(msg, tally)),
            Imp::Nats(_) => None,
        }
    }

    /// Whether [`Downstream::try_send_qos0`] can take messages (the router's AMQP link, not NATS).
    pub fn sends_without_waiting(&self) -> bool {
        matches!(self.imp, Imp::Amqp(_))
    }

    /// Sends a command response to `command_response` (`to` = the command's reply-to) and waits for the
    /// router's outcome (`released` when no application waits for it).
    pub async fn send_response(
        &self,
        response: CommandResponse,
    ) -> Result<SendOutcome, DownstreamError> {
        match &self.imp {
            Imp::Amqp(a) => a.send_response(response).await,
            Imp::Nats(n) => n.send_response(response).await,
        }
    }

    /// Opens this instance's command subscription: the returned [`CommandLink`] registers devices, the
    /// receiver yields their commands. Call once per instance; registrations follow reconnects. Dropping
    /// both ends ends the subscription.
    pub fn commands(&self, instance_id: &str) -> (CommandLink, mpsc::Receiver<Command>) {
        match &self.imp {
            Imp::Amqp(a) => CommandLink::open_amqp(&a.inner, instance_id),
            Imp::Nats(n) => CommandLink::open_nats(n, instance_id),
        }
    }

    #[doc(hidden)]
    pub fn stats(&self) -> DownstreamStats {
        match &self.imp {
            Imp::Amqp(a) => a.stats(),
            Imp::Nats(n) => n.stats(),
        }
    }
}

// A panic while a link map was locked leaves the map itself intact (inserts and removes are single
// calls), so poisoning is ignored rather than spread to every sender.
fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
