//! The adapter's AMQP 1.0 connections to the router in embedded mode (docs/router.md): device messages
//! and command responses out on `telemetry/T`, `event/T` and `command_response` through the adapter's own
//! engine ([`direct`]), commands in on `command_internal/INSTANCE` (`commands`, beside this module)
//! through an fe2o3-amqp connection of their own.
//!
//! Both connections use SASL PLAIN with the adapters' service credential and reconnect with backoff
//! when they drop. QoS 0 telemetry goes pre-settled on a link whose sender settle mode is `mixed`; QoS 1
//! telemetry (on a link of its own) and every event go unsettled and resolve with the router's outcome.
//! Without a consumer, the router gives the pre-settled link no credit (the message fails after
//! `no_credit_timeout`, Hono's "no consumer" case) and releases unsettled telemetry at once; an
//! unsettled message that finds no credit (consumers attached but busy) waits up to
//! `unsettled_credit_timeout`.

mod coalesce;
mod direct;

use std::sync::Arc;
use std::time::Duration;

use fe2o3_amqp::link::delivery::DeliveryFut;
use fe2o3_amqp::link::SendError;
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::messaging::Outcome;
use fe2o3_amqp::{Connection, Session};
use ferry_core::shutdown::Shutdown;
use tokio::sync::watch;

use super::{
    CommandResponse, DeviceMessage, DownstreamConfig, DownstreamError, DownstreamStats,
    MessageKind, SendOutcome,
};
pub use direct::Handed;
use direct::{Direct, LinkKey};

/// What the commands' control link gets back for a message it sent: the future of the router's outcome.
pub(crate) type Delivery = DeliveryFut<Result<Outcome, SendError>>;

/// The live session, shared by everything that attaches links; replaced on reconnect.
pub(crate) struct SessionSlot {
    pub(crate) generation: u64,
    pub(crate) handle: tokio::sync::Mutex<SessionHandle<()>>,
}

pub(crate) struct Inner {
    pub(crate) config: DownstreamConfig,
    /// The commands' connection (fe2o3-amqp).
    pub(crate) session: watch::Sender<Option<Arc<SessionSlot>>>,
    pub(crate) shutdown: Shutdown,
    /// Device messages and command responses.
    direct: Direct,
}

/// The AMQP 1.0 connection to the router (embedded mode).
#[derive(Clone)]
pub(super) struct Amqp {
    pub(super) inner: Arc<Inner>,
}

impl Amqp {
    pub(super) fn start(config: DownstreamConfig, shutdown: Shutdown) -> Self {
        let direct = Direct::start(Arc::new(config.clone()), shutdown.clone());
        let inner = Arc::new(Inner {
            config,
            session: watch::channel(None).0,
            shutdown: shutdown.clone(),
            direct,
        });
        tokio::spawn(supervise(inner.clone(), shutdown));
        Self { inner }
    }

    /// Whether both connections to the router are up (for readiness).
    pub fn is_connected(&self) -> bool {
        self.inner.direct.is_connected() && self.inner.session.borrow().is_some()
    }

    /// Waits until both connections are up, at most `within`; true if connected.
    pub async fn wait_connected(&self, within: Duration) -> bool {
        let mut commands = self.inner.session.subscribe();
        let mut direct = self.inner.direct.connected();
        tokio::time::timeout(within, async {
            let _ = direct.wait_for(|up| *up).await;
            let _ = commands.wait_for(Option::is_some).await;
        })
        .await
        .is_ok()
            && self.is_connected()
    }

    /// See [`super::Downstream::sheds_qos0`].
    pub fn sheds_qos0(&self, tenant: &ferry_core::ids::TenantId) -> bool {
        self.inner.direct.sheds_qos0(tenant)
    }

    /// Sends a device message and, unless it goes pre-settled, waits for the router's outcome.
    pub async fn send(&self, msg: DeviceMessage) -> Result<SendOutcome, DownstreamError> {
        self.hand_over(&msg).await
    }

    /// [`super::Downstream::hand_over`].
    pub fn hand_over(&self, msg: &DeviceMessage) -> Handed {
        let presettled = msg.is_presettled();
        let tenant = msg.tenant.clone();
        let link = match msg.kind {
            MessageKind::Telemetry if presettled => LinkKey::Telemetry(tenant),
            MessageKind::Telemetry => LinkKey::TelemetryUnsettled(tenant),
            MessageKind::Event => LinkKey::Event(tenant),
        };
        let mut message = Vec::new();
        msg.encode(&mut message);
        let wait = if presettled {
            self.inner.config.no_credit_timeout
        } else {
            self.inner.config.unsettled_credit_timeout
        };
        self.inner.direct.hand_over(link, message, wait)
    }

    /// [`super::Downstream::try_send_qos0`].
    pub fn try_send_qos0(
        &self,
        msg: &DeviceMessage,
        tally: &Arc<crate::metrics::TenantTally>,
    ) -> bool {
        let mut message = Vec::new();
        msg.encode(&mut message);
        self.inner.direct.try_send(
            LinkKey::Telemetry(msg.tenant.clone()),
            message,
            self.inner.config.no_credit_timeout,
            tally.clone(),
            msg.payload.len(),
        )
    }

    /// Sends a command response to `command_response` (`to` = the command's reply-to) and waits for the
    /// router's outcome (`released` when no application waits for it).
    pub async fn send_response(
        &self,
        response: CommandResponse,
    ) -> Result<SendOutcome, DownstreamError> {
        let mut message = Vec::new();
        response.encode(&mut message);
        let wait = self.inner.config.unsettled_credit_timeout;
        self.inner
            .direct
            .send(LinkKey::Responses, message, wait)
            .await
    }

    #[doc(hidden)]
    pub fn stats(&self) -> DownstreamStats {
        DownstreamStats {
            connects: self.inner.direct.connects(),
            links_attached: self.inner.direct.links_attached(),
        }
    }
}

/// Waits for the router's outcome of an unsettled delivery.
pub(crate) async fn outcome_of(
    delivery: Delivery,
    within: Duration,
) -> Result<SendOutcome, DownstreamError> {
    match tokio::time::timeout(within, delivery).await {
        Err(_) => Err(DownstreamError::Timeout),
        Ok(Ok(outcome)) => Ok(SendOutcome::from_amqp(outcome)),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "delivery failed");
            Err(DownstreamError::Disconnected)
        }
    }
}

/// Keeps the connection up until `shutdown`: connect, publish the session, wait for the connection to
/// end, tear down the links, back off, again.
async fn supervise(inner: Arc<Inner>, shutdown: Shutdown) {
    let stop = shutdown.wait();
    tokio::pin!(stop);
    let min_backoff = Duration::from_millis(100);
    let mut backoff = min_backoff;
    let mut generation = 0;
    let mut failures = 0u32;
    loop {
        let attempt = tokio::select! {
            () = &mut stop => break,
            r = connect(&inner.config) => r,
        };
        match attempt {
            Ok((mut conn, session)) => {
                generation += 1;
                failures = 0;
                backoff = min_backoff;
                tracing::info!(address = %inner.config.address, "commands connection to the router up");
                let slot = Arc::new(SessionSlot {
                    generation,
                    handle: tokio::sync::Mutex::new(session),
                });
                inner.session.send_replace(Some(slot.clone()));
                let stopping = tokio::select! {
                    () = &mut stop => true,
                    _ = conn.on_close() => false,
                };
                inner.session.send_replace(None);
                if stopping {
                    let bound = Duration::from_secs(1);
                    if let Ok(mut session) = tokio::time::timeout(bound, slot.handle.lock()).await {
                        let _ = tokio::time::timeout(bound, session.end()).await;
                    }
                    let _ = tokio::time::timeout(bound, conn.close()).await;
                    break;
                }
                tracing::warn!(address = %inner.config.address, "connection to the router lost; reconnecting");
            }
            Err(e) => {
                failures += 1;
                // Once, then every tenth attempt: a router that is down for a while should not flood
                // the log.
                if failures == 1 || failures % 10 == 0 {
                    tracing::warn!(address = %inner.config.address, error = %e, failures, "cannot connect to the router");
                }
            }
        }
        tokio::select! {
            () = &mut stop => break,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(inner.config.max_reconnect_delay.max(min_backoff));
    }
    inner.session.send_replace(None);
}

type Opened = (
    fe2o3_amqp::connection::ConnectionHandle<()>,
    SessionHandle<()>,
);

async fn connect(config: &DownstreamConfig) -> Result<Opened, String> {
    async fn open<Io>(config: &DownstreamConfig, stream: Io) -> Result<Opened, String>
    where
        Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + std::fmt::Debug + Send + Unpin + 'static,
    {
        let mut conn = Connection::builder()
            .container_id(config.container_id.clone())
            .sasl_profile(SaslProfile::Plain {
                username: config.user.clone(),
                password: config.password.clone(),
            })
            .open_with_stream(coalesce::Coalesce::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        let session = Session::begin(&mut conn).await.map_err(|e| e.to_string())?;
        Ok((conn, session))
    }
    let open = async {
        let stream = tokio::net::TcpStream::connect(&config.address)
            .await
            .map_err(|e| e.to_string())?;
        // fe2o3's own `open(url)` leaves Nagle on, which stalls pre-settled sends (FE2O3-NOTES.md).
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        match &config.tls {
            None => open(config, stream).await,
            Some(tls) => {
                let stream = tls
                    .connector
                    .connect(tls.server_name.clone(), stream)
                    .await
                    .map_err(|e| format!("TLS: {e}"))?;
                open(config, stream).await
            }
        }
    };
    tokio::time::timeout(config.connect_timeout, open)
        .await
        .map_err(|_| "timed out".to_owned())?
}
