//! The adapter's AMQP 1.0 connection to the router in embedded mode (docs/router.md): device messages
//! out on `telemetry/T` and `event/T`, commands in on `command_internal/INSTANCE` (`commands`, beside
//! this module), responses out on `command_response`.
//!
//! One connection (SASL PLAIN with the adapters' service credential) and one session, reconnected with
//! backoff when it drops. Sender links are attached lazily, one per (kind, tenant), each owned by a task
//! fed through a channel ([`link`]), so [`Downstream::send`](super::Downstream::send) takes `&self`, is
//! called from any number of tasks at once, holds no lock while it waits, and keeps many deliveries in
//! flight. QoS 0 telemetry goes pre-settled on a link whose sender settle mode is `mixed`; QoS 1
//! telemetry (on a link of its own) and every event go unsettled and resolve with the router's outcome.
//! Without a consumer, the router gives the pre-settled link no credit (the message fails after
//! `no_credit_timeout`, Hono's "no consumer" case) and releases unsettled telemetry at once; an
//! unsettled message that finds no credit (consumers attached but busy) waits up to
//! `unsettled_credit_timeout`.

mod coalesce;
pub(super) mod link;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::definitions::SenderSettleMode;
use fe2o3_amqp::types::messaging::Data;
use fe2o3_amqp::{Connection, Sendable, Session};
use ferry_core::ids::TenantId;
use ferry_core::shutdown::Shutdown;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::{
    read, write, CommandResponse, DeviceMessage, DownstreamConfig, DownstreamError,
    DownstreamStats, MessageKind, SendOutcome,
};
use link::{Delivery, Job, LinkSpec};

/// The live session, shared by everything that attaches links; replaced on reconnect.
pub(crate) struct SessionSlot {
    pub(crate) generation: u64,
    pub(crate) handle: tokio::sync::Mutex<SessionHandle<()>>,
}

/// A sender link's job queue, as the link map holds it.
#[derive(Clone)]
struct LinkTx {
    id: u64,
    tx: mpsc::Sender<Job>,
    /// Since when the link's task waits for credit, if it does.
    stall: Arc<link::Stall>,
}

pub(crate) struct Inner {
    pub(crate) config: DownstreamConfig,
    pub(crate) session: watch::Sender<Option<Arc<SessionSlot>>>,
    pub(crate) shutdown: Shutdown,
    telemetry: RwLock<HashMap<TenantId, LinkTx>>,
    telemetry_unsettled: RwLock<HashMap<TenantId, LinkTx>>,
    events: RwLock<HashMap<TenantId, LinkTx>>,
    responses: RwLock<Option<LinkTx>>,
    next_link: AtomicU64,
    connects: AtomicU64,
}

/// Which link a message travels on.
#[derive(Clone, Copy)]
enum Route<'a> {
    /// Pre-settled telemetry (QoS 0).
    Telemetry(&'a TenantId),
    /// Unsettled telemetry (QoS 1), on a link of its own: the router gives it credit when nobody
    /// consumes, so that its messages are released at once rather than waiting for credit.
    TelemetryUnsettled(&'a TenantId),
    Event(&'a TenantId),
    Responses,
}

impl Route<'_> {
    fn address(self) -> String {
        match self {
            Self::Telemetry(t) | Self::TelemetryUnsettled(t) => format!("telemetry/{t}"),
            Self::Event(t) => format!("event/{t}"),
            Self::Responses => ferry_core::hono::address::COMMAND_RESPONSE.to_owned(),
        }
    }

    fn settle_mode(self) -> SenderSettleMode {
        match self {
            Self::Telemetry(_) => SenderSettleMode::Mixed,
            // The router refuses anything but unsettled on event links (at-least-once only).
            Self::TelemetryUnsettled(_) | Self::Event(_) | Self::Responses => {
                SenderSettleMode::Unsettled
            }
        }
    }
}

/// The AMQP 1.0 connection to the router (embedded mode).
#[derive(Clone)]
pub(super) struct Amqp {
    pub(super) inner: Arc<Inner>,
}

impl Amqp {
    pub(super) fn start(config: DownstreamConfig, shutdown: Shutdown) -> Self {
        let inner = Arc::new(Inner {
            config,
            session: watch::channel(None).0,
            shutdown: shutdown.clone(),
            telemetry: RwLock::default(),
            telemetry_unsettled: RwLock::default(),
            events: RwLock::default(),
            responses: RwLock::default(),
            next_link: AtomicU64::new(1),
            connects: AtomicU64::new(0),
        });
        tokio::spawn(supervise(inner.clone(), shutdown));
        Self { inner }
    }

    /// Whether the connection to the router is up (for readiness).
    pub fn is_connected(&self) -> bool {
        self.inner.session.borrow().is_some()
    }

    /// Waits until connected, at most `within`; true if connected.
    pub async fn wait_connected(&self, within: Duration) -> bool {
        let mut rx = self.inner.session.subscribe();
        tokio::time::timeout(within, rx.wait_for(Option::is_some))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Sends a device message and, unless it goes pre-settled, waits for the router's outcome.
    pub async fn send(&self, msg: DeviceMessage) -> Result<SendOutcome, DownstreamError> {
        let presettled = msg.is_presettled();
        let kind = msg.kind;
        let tenant = msg.tenant.clone();
        let route = match kind {
            MessageKind::Telemetry if presettled => Route::Telemetry(&tenant),
            MessageKind::Telemetry => Route::TelemetryUnsettled(&tenant),
            MessageKind::Event => Route::Event(&tenant),
        };
        let sendable = Sendable {
            message: msg.into_amqp(),
            message_format: 0,
            settled: presettled.then_some(true),
        };
        let wait = if presettled {
            self.inner.config.no_credit_timeout
        } else {
            self.inner.config.unsettled_credit_timeout
        };
        let shed = if presettled {
            Shed::WhenFull
        } else {
            Shed::Never
        };
        let delivery = self.submit(route, sendable, wait, shed).await?;
        if presettled {
            return Ok(SendOutcome::Presettled);
        }
        outcome_of(delivery, self.inner.config.outcome_timeout).await
    }

    /// Sends a command response to `command_response` (`to` = the command's reply-to) and waits for the
    /// router's outcome (`released` when no application waits for it).
    pub async fn send_response(
        &self,
        response: CommandResponse,
    ) -> Result<SendOutcome, DownstreamError> {
        let sendable = Sendable {
            message: response.into_amqp(),
            message_format: 0,
            settled: None,
        };
        let wait = self.inner.config.unsettled_credit_timeout;
        let delivery = self
            .submit(Route::Responses, sendable, wait, Shed::Never)
            .await?;
        outcome_of(delivery, self.inner.config.outcome_timeout).await
    }

    #[doc(hidden)]
    pub fn stats(&self) -> DownstreamStats {
        DownstreamStats {
            connects: self.inner.connects.load(Ordering::Relaxed),
            links_attached: self.inner.next_link.load(Ordering::Relaxed) - 1,
        }
    }

    /// Queues `sendable` on its route's link (attaching the link first if need be) and returns the
    /// delivery once written; it may wait `wait` for credit. With [`Shed::WhenFull`], a full link queue
    /// fails it at once instead of waiting for room.
    async fn submit(
        &self,
        route: Route<'_>,
        sendable: Sendable<Data>,
        wait: Duration,
        shed: Shed,
    ) -> Result<Delivery, DownstreamError> {
        let deadline = Instant::now() + wait;
        let (reply, replied) = oneshot::channel();
        let job = Job {
            sendable,
            deadline,
            wait,
            reply,
        };
        let queue_behind = match self.try_push(route, job) {
            Push::Done => None,
            // Pre-settled telemetry (QoS 0) is shed at the edge when its link has had no credit for a
            // while: a message waiting for room would be one more held per publish, as many as devices
            // send (a flood held hundreds of MiB).
            Push::Full(_, _, stall) if shed == Shed::WhenFull && stall.longer_than(SHED_AFTER) => {
                return Err(DownstreamError::NoCredit)
            }
            // A full queue behind a link that sends (a burst its task is working through): the message
            // waits for room, at most until its deadline.
            Push::Full(tx, job, stall) => Some((tx, job, Some(stall))),
            Push::NoLink(job) => Some((self.open_link(route)?, job, None)),
        };
        if let Some((tx, job, stall)) = queue_behind {
            loop {
                // Looked at again every SHED_AFTER: a link that stalls meanwhile sheds the waiting
                // pre-settled messages too.
                let until = deadline.min(Instant::now() + SHED_AFTER);
                match tokio::time::timeout_at(until, tx.reserve()).await {
                    Ok(Ok(permit)) => {
                        permit.send(job);
                        break;
                    }
                    Ok(Err(_)) => return Err(DownstreamError::Disconnected),
                    Err(_) => {
                        let stalled = shed == Shed::WhenFull
                            && stall.as_ref().is_some_and(|s| s.longer_than(SHED_AFTER));
                        if stalled || Instant::now() >= deadline {
                            return Err(DownstreamError::NoCredit);
                        }
                    }
                }
            }
        }
        replied.await.unwrap_or(Err(DownstreamError::Disconnected))
    }

    /// The common case: a read lock and a non-blocking push, nothing else.
    fn try_push(&self, route: Route<'_>, job: Job) -> Push {
        let push = |link: Option<&LinkTx>, job: Job| match link {
            None => Push::NoLink(job),
            Some(l) => match l.tx.try_send(job) {
                Ok(()) => Push::Done,
                Err(mpsc::error::TrySendError::Full(j)) => {
                    Push::Full(l.tx.clone(), j, l.stall.clone())
                }
                Err(mpsc::error::TrySendError::Closed(j)) => Push::NoLink(j),
            },
        };
        match route {
            Route::Telemetry(t) => push(read(&self.inner.telemetry).get(t), job),
            Route::TelemetryUnsettled(t) => push(read(&self.inner.telemetry_unsettled).get(t), job),
            Route::Event(t) => push(read(&self.inner.events).get(t), job),
            Route::Responses => push(read(&self.inner.responses).as_ref(), job),
        }
    }

    /// Creates the route's link (its queue at once; its task attaches it) unless another caller just
    /// did.
    fn open_link(&self, route: Route<'_>) -> Result<mpsc::Sender<Job>, DownstreamError> {
        let session = self
            .inner
            .session
            .borrow()
            .clone()
            .ok_or(DownstreamError::NotConnected)?;
        let id = self.inner.next_link.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.inner.config.link_queue.max(1));
        let stall = Arc::new(link::Stall::default());
        let fresh = LinkTx {
            id,
            tx: tx.clone(),
            stall: stall.clone(),
        };
        let existing = match route {
            Route::Telemetry(t) => install(&mut write(&self.inner.telemetry), t, fresh),
            Route::TelemetryUnsettled(t) => {
                install(&mut write(&self.inner.telemetry_unsettled), t, fresh)
            }
            Route::Event(t) => install(&mut write(&self.inner.events), t, fresh),
            Route::Responses => {
                let mut slot = write(&self.inner.responses);
                match slot.as_ref() {
                    Some(l) if !l.tx.is_closed() => Some(l.tx.clone()),
                    _ => {
                        *slot = Some(fresh);
                        None
                    }
                }
            }
        };
        if let Some(tx) = existing {
            return Ok(tx);
        }
        let address = route.address();
        let spec = LinkSpec {
            name: format!("{address}#{id}"),
            address,
            settle_mode: route.settle_mode(),
            grace: self.inner.config.no_credit_timeout,
            attach_timeout: self.inner.config.connect_timeout,
        };
        let inner = self.inner.clone();
        let key = RouteKey::from(route);
        tokio::spawn(link::run(session, spec, rx, stall, move || {
            inner.remove_link(&key, id);
        }));
        Ok(tx)
    }
}

/// What to do with a message when its link's queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shed {
    /// Fail it at once with [`DownstreamError::NoCredit`] (pre-settled telemetry).
    WhenFull,
    /// Wait for room until the message's deadline (QoS 1, events, responses: the device waits too).
    Never,
}

/// Where [`Amqp::try_push`] left the job.
enum Push {
    Done,
    Full(mpsc::Sender<Job>, Job, Arc<link::Stall>),
    NoLink(Job),
}

/// How long a link must have waited for credit before pre-settled telemetry that finds its queue full is
/// shed at once. A queue that is full while the link sends is a burst, not a stall: those messages wait
/// for room (at most until their deadline; the MQTT session bounds how many it holds).
const SHED_AFTER: Duration = Duration::from_millis(50);

/// An owned [`Route`], for a link task to find its own entry.
enum RouteKey {
    Telemetry(TenantId),
    TelemetryUnsettled(TenantId),
    Event(TenantId),
    Responses,
}

impl From<Route<'_>> for RouteKey {
    fn from(r: Route<'_>) -> Self {
        match r {
            Route::Telemetry(t) => Self::Telemetry(t.clone()),
            Route::TelemetryUnsettled(t) => Self::TelemetryUnsettled(t.clone()),
            Route::Event(t) => Self::Event(t.clone()),
            Route::Responses => Self::Responses,
        }
    }
}

fn install(
    map: &mut HashMap<TenantId, LinkTx>,
    tenant: &TenantId,
    fresh: LinkTx,
) -> Option<mpsc::Sender<Job>> {
    match map.get(tenant) {
        Some(l) if !l.tx.is_closed() => Some(l.tx.clone()),
        _ => {
            map.insert(tenant.clone(), fresh);
            None
        }
    }
}

impl Inner {
    /// Forgets link `id` of `key` (if it is still the current one).
    fn remove_link(&self, key: &RouteKey, id: u64) {
        match key {
            RouteKey::Telemetry(t) => remove_if(&mut write(&self.telemetry), t, id),
            RouteKey::TelemetryUnsettled(t) => {
                remove_if(&mut write(&self.telemetry_unsettled), t, id)
            }
            RouteKey::Event(t) => remove_if(&mut write(&self.events), t, id),
            RouteKey::Responses => {
                let mut slot = write(&self.responses);
                if slot.as_ref().is_some_and(|l| l.id == id) {
                    *slot = None;
                }
            }
        }
    }

    /// Drops every link queue: their tasks end, and the next message attaches on the new session.
    fn clear_links(&self) {
        write(&self.telemetry).clear();
        write(&self.telemetry_unsettled).clear();
        write(&self.events).clear();
        *write(&self.responses) = None;
    }
}

fn remove_if(map: &mut HashMap<TenantId, LinkTx>, tenant: &TenantId, id: u64) {
    if map.get(tenant).is_some_and(|l| l.id == id) {
        map.remove(tenant);
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
                inner.connects.fetch_add(1, Ordering::Relaxed);
                tracing::info!(address = %inner.config.address, "connected to the router");
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
                inner.clear_links();
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
    inner.clear_links();
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
