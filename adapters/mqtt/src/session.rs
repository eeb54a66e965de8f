//! One device connection: CONNECT and authentication, then PUBLISHes to the router, keep-alive, and the
//! registry's change stream (a device that is disabled, deleted or whose credentials change is cut off).
//!
//! QoS 1 is Hono's "PUBACK only after the consumer accepted": each PUBLISH becomes a send to the router,
//! and the PUBACKs go out in the order the PUBLISHes came in, as their outcomes arrive
//! (`FuturesOrdered`), so one slow consumer decision never reorders acknowledgements.
//!
//! Command subscriptions also tell applications whether the device can be reached (HONO-CONTRACT §1.2,
//! §1.3): an empty-notification event with `ttd` -1 after SUBSCRIBE, 0 after UNSUBSCRIBE or disconnect;
//! with `connection_events`, a connection event when the device connects and disconnects. Subscription
//! changes form one chain per session and notifications another ([`Step`]), so that the router and the
//! consumers see each in the order the device caused them, while a slow event store delays only the
//! notifications, never a SUBACK.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ferry_adapter_core::auth::AuthError;
use ferry_adapter_core::downstream::{Command, CommandResponse};
use ferry_adapter_core::downstream::{DeviceMessage, MessageKind, PropertyValue, SendOutcome};
use ferry_adapter_core::registry::{Assertion, AssertionOutcome, ChangeKind, TtlLimit};
use ferry_core::hono::content_type;
use ferry_core::ids::{DeviceId, TenantId};
use futures_util::stream::{FuturesOrdered, FuturesUnordered, StreamExt};
use std::collections::HashMap;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::connack::Refusal;
use crate::metrics::{Status, Ttd};
use crate::topic::{self, DeviceFilter, Endpoint, OnError, Subscription, SubscriptionKind};
use crate::wire::{self, Incoming, Outgoing, Version};
use crate::Shared;
use ferry_adapter_core::limits::TenantVolume;
use ferry_adapter_core::registry::TenantInfo;
use rustls::pki_types::CertificateDer;

/// The adapter type name of HONO-CONTRACT §0.
pub const ADAPTER_TYPE: &str = ferry_core::hono::adapter_type::MQTT;

/// Application properties the adapter sets itself; a property bag cannot supply them.
use ferry_adapter_core::downstream::RESERVED_PROPERTIES;

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Wire(#[from] wire::WireError),
    #[error("refused: {0:?}")]
    Refused(Refusal),
    #[error("CONNECT not received in time")]
    ConnectTimeout,
    #[error("keep-alive expired")]
    KeepAlive,
    #[error("{0}")]
    Closed(&'static str),
}

#[derive(Clone)]
struct Authenticated {
    tenant: TenantId,
    device: DeviceId,
    /// The assertion checked at CONNECT: what a notification about the device falls back on when the
    /// registry no longer grants one (the device was just disabled, and applications should still hear
    /// that it is gone).
    assertion: Arc<Assertion>,
    /// The tenant's data volume count on this instance.
    volume: Arc<TenantVolume>,
}

/// Unfinished work (PUBACKs, SUBACKs, error reports) a session holds before it stops reading from the
/// device: a client that pipelines faster than the router settles waits in TCP instead of in memory, and
/// instead of in the downstream link's queue, where a message waits at most the credit timeout (2 s for
/// QoS 1) before the device is told 503 and, by default, disconnected. 128 is a generous in-flight
/// window per device, and keeps an overloaded adapter's backlog short: 100 devices pipelining hold at
/// most 12,800 messages, about a second at the rate this adapter reaches on a small machine, so an
/// overload slows devices down (their PUBACKs come later, their writes block) rather than cutting them
/// off. (At 1,024 the B10 soak beyond the machine's capacity queued 10 s of messages and disconnected
/// devices.)
const MAX_PENDING: usize = 128;

/// What a PUBLISH turned into, awaiting its outcome.
type Pending = std::pin::Pin<Box<dyn std::future::Future<Output = Done> + Send>>;

/// Work whose answer has no place among the PUBACKs (QoS 0 command responses): polled by the
/// session's task rather than a task each, and counted in its [`MAX_PENDING`]. Created on first use,
/// as most connections never need it and an idle connection should cost little.
#[derive(Default)]
struct Background(Option<FuturesUnordered<Pending>>);

impl Background {
    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, FuturesUnordered::len)
    }

    fn push(&mut self, work: Pending) {
        self.0.get_or_insert_with(FuturesUnordered::new).push(work);
    }

    async fn next(&mut self) -> Option<Done> {
        match &mut self.0 {
            Some(work) => work.next().await,
            None => None,
        }
    }
}

/// A finished piece of work whose answer goes to the device in order.
enum Done {
    /// A QoS 1 PUBLISH's outcome (`Err` holds the Hono error code).
    PubAck {
        pkid: u16,
        on_error: OnError,
        result: Result<(), u16>,
        /// Error-topic details: the endpoint level and the correlation id.
        endpoint: &'static str,
        correlation_id: String,
        device_in_topic: Option<String>,
    },
    /// A QoS 0 PUBLISH that failed: only the error topic hears of it.
    Failed {
        code: u16,
        endpoint: &'static str,
        correlation_id: String,
        device_in_topic: Option<String>,
    },
    SubAck {
        pkid: u16,
        granted: Vec<Option<u8>>,
    },
    UnsubAck {
        pkid: u16,
        count: usize,
    },
    /// Done with nothing to tell the device (a QoS 0 message that went well under an error subscription).
    Nothing,
}

/// One link in a chain of a session's subscription changes, or of its notifications. Their futures
/// run concurrently, so each waits for the one before it: a quick SUBSCRIBE–UNSUBSCRIBE must not
/// unregister before it registered, nor announce ttd 0 before ttd -1. Dropping a step (finished or
/// cancelled) lets the next one go.
struct Step {
    previous: Option<oneshot::Receiver<()>>,
    _done: oneshot::Sender<()>,
}

impl Step {
    /// The next step of the chain whose last step `last` holds.
    fn after(last: &mut Option<oneshot::Receiver<()>>) -> Self {
        let (done, next) = oneshot::channel();
        Step {
            previous: last.replace(next),
            _done: done,
        }
    }

    async fn ready(&mut self) {
        if let Some(previous) = self.previous.take() {
            // Err only means the previous step was dropped, which is as good as finished.
            let _ = previous.await;
        }
    }
}

/// An event about a device that the adapter sends on its own (HONO-CONTRACT §1.2).
struct Notification {
    device: DeviceId,
    /// The gateway that subscribed for the device, if it was not the device itself.
    gateway: Option<DeviceId>,
    content_type: &'static str,
    payload: Bytes,
    ttd: Option<i32>,
    /// The subscription's filter for ttd notifications; empty for connection events.
    orig_address: String,
}

impl Notification {
    fn ttd(device: DeviceId, gateway: Option<DeviceId>, ttd: i32, filter: String) -> Self {
        Self {
            device,
            gateway,
            content_type: content_type::EMPTY_NOTIFICATION,
            payload: Bytes::new(),
            ttd: Some(ttd),
            orig_address: filter,
        }
    }

    /// Hono's connection event body: `cause` is `connected` or `disconnected`.
    fn connection(device: DeviceId, cause: &str, remote_id: &str) -> Self {
        let body = serde_json::json!({
            "cause": cause,
            "remote-id": remote_id,
            "source": ADAPTER_TYPE,
            "data": {},
        });
        Self {
            device,
            gateway: None,
            content_type: content_type::CONNECTION_NOTIFICATION,
            payload: Bytes::from(body.to_string()),
            ttd: None,
            orig_address: String::new(),
        }
    }
}

/// Sends `notifications` once `step` may go (in a task of their own: nobody waits for them).
fn spawn_notify(
    shared: &Arc<Shared>,
    who: &Authenticated,
    mut step: Step,
    notifications: Vec<Notification>,
) {
    if notifications.is_empty() {
        return;
    }
    let shared = shared.clone();
    let tenant = who.tenant.clone();
    let fallback = who.assertion.clone();
    tokio::spawn(async move {
        step.ready().await;
        notify(&shared, &tenant, Some(&fallback), notifications).await;
        drop(step);
    });
}

/// [`spawn_notify`] for an unauthenticated session, whose subscriptions name their tenants.
fn spawn_notify_each(
    shared: &Arc<Shared>,
    mut step: Step,
    notifications: Vec<(TenantId, Notification)>,
) {
    if notifications.is_empty() {
        return;
    }
    let shared = shared.clone();
    tokio::spawn(async move {
        step.ready().await;
        for (tenant, n) in notifications {
            notify(&shared, &tenant, None, vec![n]).await;
        }
        drop(step);
    });
}

/// A command subscription of a session: whose commands, and how they are delivered.
#[derive(Debug, Clone)]
struct CommandSub {
    tenant: TenantId,
    device: DeviceId,
    /// The filter, parsed (the delivery topic mirrors it) and as the device wrote it.
    sub: Subscription,
    filter: String,
    qos: u8,
}

/// Sends `notifications` as events, in order. A notification that cannot be sent is logged and
/// skipped: it informs applications, and the device's session does not depend on it.
async fn notify(
    shared: &Shared,
    tenant: &TenantId,
    fallback: Option<&Arc<Assertion>>,
    notifications: Vec<Notification>,
) {
    for n in notifications {
        let assertion = match shared
            .registry
            .assertion(tenant, &n.device, n.gateway.as_ref())
            .await
        {
            Ok(AssertionOutcome::Granted(a)) => a,
            _ if n.gateway.is_none() && fallback.is_some_and(|f| f.device_id == n.device) => {
                match fallback {
                    Some(f) => f.clone(),
                    None => continue,
                }
            }
            other => {
                tracing::debug!(%tenant, device = %n.device, ?other, "no assertion for a notification");
                continue;
            }
        };
        let msg = DeviceMessage {
            kind: MessageKind::Event,
            tenant: tenant.clone(),
            device_id: n.device,
            qos: 1,
            content_type: Some(n.content_type.to_owned()),
            payload: n.payload,
            assertion: assertion.token.clone(),
            orig_adapter: ADAPTER_TYPE,
            orig_address: n.orig_address,
            ttl_ms: None,
            ttd: n.ttd,
            extra_properties: Vec::new(),
        };
        match shared.downstream.send(msg).await {
            Ok(SendOutcome::Accepted) => {}
            other => tracing::debug!(%tenant, ?other, "notification not accepted"),
        }
    }
}

/// A session's command subscription for one device.
#[derive(Debug, Clone)]
pub struct CommandTarget {
    pub session: u64,
    /// Boxed, because the channel allocates its first block of slots with the session: a command is
    /// some 300 bytes, and every idle connection would pay for 32 of them.
    pub tx: tokio::sync::mpsc::UnboundedSender<Box<ferry_adapter_core::downstream::Command>>,
}

/// Reads what the device sent. The buffer starts small ([`READ_BUFFER`]) so that idle connections cost
/// little; a read that fills it means more is waiting, and the buffer grows by [`BUSY_READ_BUFFER`] so a
/// busy device is read in few system calls.
async fn fill<IO: AsyncRead + Unpin>(io: &mut IO, buf: &mut BytesMut) -> Result<(), SessionError> {
    let spare = buf.capacity() - buf.len();
    let n = io.read_buf(buf).await?;
    if n == 0 {
        return Err(SessionError::Closed("peer closed the connection"));
    }
    if n >= spare {
        buf.reserve(BUSY_READ_BUFFER);
    }
    Ok(())
}

/// Serves one connection until it ends.
pub async fn serve<IO>(
    mut io: IO,
    peer: SocketAddr,
    client_cert: Option<CertificateDer<'static>>,
    connecting: crate::Permit,
    shared: Arc<Shared>,
) -> Result<(), SessionError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    // Small at first: most devices send small packets, and an idle connection should cost little.
    // `read_buf` grows it as a larger packet needs.
    let mut buf = BytesMut::with_capacity(READ_BUFFER);
    let max_packet = shared.config.max_payload_bytes + 1024;
    let connect_timeout = Duration::from_secs(shared.config.connect_timeout_secs);
    let connected = tokio::time::timeout(connect_timeout, async {
        let version = loop {
            if let Some(v) = wire::connect_version(&buf)? {
                break v;
            }
            fill(&mut io, &mut buf).await?;
        };
        loop {
            if let Some(c) = wire::read_connect(version, &mut buf, max_packet)? {
                return Ok::<_, SessionError>((version, c));
            }
            fill(&mut io, &mut buf).await?;
        }
    })
    .await
    .map_err(|_| SessionError::ConnectTimeout)?;
    let (version, connect) = match connected {
        Err(SessionError::Wire(wire::WireError::UnsupportedVersion(level))) => {
            // MQTT 3.1.1 §3.1.2.2: refuse with 0x01 (unacceptable protocol level) before closing, in
            // the 3.1.1 form that MQTT 3.1 clients read as well.
            let mut out = BytesMut::with_capacity(4);
            let refusal = Outgoing::ConnAck {
                code: 0x01,
                server_keep_alive: None,
            };
            wire::write(Version::V311, &refusal, &mut out)?;
            io.write_all(&out).await?;
            return Err(wire::WireError::UnsupportedVersion(level).into());
        }
        other => other?,
    };

    let mut out = BytesMut::with_capacity(WRITE_BUFFER);
    let authenticated = authenticate(&shared, &connect, client_cert.as_ref(), peer).await;
    // Authentication is part of connecting: a flood of CONNECTs waiting for the registry counts too.
    drop(connecting);
    let who = match authenticated {
        Ok(who) => who,
        Err(refusal) => {
            shared.metrics.attempt(refusal_outcome(refusal));
            let code = match version {
                Version::V311 => refusal.v311_code(),
                Version::V5 => refusal.v5_reason(),
            };
            let connack = Outgoing::ConnAck {
                code,
                server_keep_alive: None,
            };
            wire::write(version, &connack, &mut out)?;
            io.write_all(&out).await?;
            return Err(SessionError::Refused(refusal));
        }
    };
    shared.metrics.attempt("succeeded");
    let gauge = match &who {
        Some(who) => shared.metrics.connected(&who.tenant),
        None => shared.metrics.unauthenticated(),
    };
    gauge.inc();
    let (commands_tx, commands_rx) = tokio::sync::mpsc::unbounded_channel();
    let (keep_alive, server_keep_alive) =
        keep_alive(connect.keep_alive, shared.config.max_keep_alive_secs);
    let mut session = Session {
        shared: shared.clone(),
        version,
        who,
        keep_alive: Duration::from_secs(u64::from(keep_alive)),
        server_keep_alive,
        client_id: connect.client_id,
        peer,
        out,
        id: NEXT_SESSION.fetch_add(1, Ordering::Relaxed),
        commands_tx,
        command_subs: Vec::new(),
        all_devices: None,
        told_last_gateway: HashMap::new(),
        error_sub: None,
        inflight: HashMap::new(),
        next_pkid: 0,
        changes: None,
        notices: None,
        announced: false,
    };
    let result = session
        .run(&mut io, &mut buf, max_packet, commands_rx)
        .await;
    session.cleanup().await;
    gauge.dec();
    shared.connections.fetch_sub(1, Ordering::AcqRel);
    result
}

/// The keep-alive a session uses, and the Server Keep Alive to tell an MQTT 5 client: the client's,
/// unless it asks for none (0) or for more than `max` (0: no maximum); then `max`. An MQTT 3.1.1
/// client cannot be told, and is held to `max` all the same.
fn keep_alive(requested: u16, max: u16) -> (u16, Option<u16>) {
    if max > 0 && (requested == 0 || requested > max) {
        (max, Some(max))
    } else {
        (requested, None)
    }
}

fn refusal_outcome(r: Refusal) -> &'static str {
    match r {
        Refusal::BadCredentials => "unauthorized",
        Refusal::AdapterFull => "adapter-connections-exceeded",
        Refusal::TenantLimit => "tenant-connections-exceeded",
        Refusal::DataVolume => "data-volume-exceeded",
        Refusal::RegistryUnavailable => "unavailable",
        Refusal::NotAuthorized => "adapter-disabled",
        Refusal::Other => "unknown",
    }
}

/// CONNECT checks of HONO-CONTRACT §2.2: credentials (a client certificate first, then user name and
/// password), tenant and adapter enabled, device registered and enabled, connection limits. `None`: an
/// unauthenticated device, allowed only when the adapter does not require authentication; its tenants
/// are checked per message.
async fn authenticate(
    shared: &Shared,
    connect: &wire::Connect,
    client_cert: Option<&CertificateDer<'static>>,
    peer: SocketAddr,
) -> Result<Option<Authenticated>, Refusal> {
    let login = match (client_cert, &connect.username, &connect.password) {
        // Hono's order: a client certificate decides; a user name sent with it is not looked at.
        (Some(cert), ..) => shared.auth.authenticate_certificate(cert.as_ref()).await,
        (None, Some(user), Some(password)) => {
            shared
                .auth
                .authenticate_password(user, password, Some(peer.ip()))
                .await
        }
        (None, None, None) if !shared.config.authentication_required => {
            count_connection(shared)?;
            return Ok(None);
        }
        _ => return Err(Refusal::BadCredentials),
    };
    let device = match login {
        Ok(d) => d,
        Err(AuthError::BadCredentials | AuthError::UnknownTenant) => {
            return Err(Refusal::BadCredentials)
        }
        Err(AuthError::TenantDisabled) => return Err(Refusal::NotAuthorized),
        Err(AuthError::Unavailable(_)) => return Err(Refusal::RegistryUnavailable),
    };
    let tenant = match shared.registry.tenant(&device.tenant).await {
        Ok(Some(t)) => t,
        Ok(None) => return Err(Refusal::BadCredentials),
        Err(_) => return Err(Refusal::RegistryUnavailable),
    };
    if !tenant.is_enabled() || !tenant.is_adapter_enabled(ADAPTER_TYPE) {
        return Err(Refusal::NotAuthorized);
    }
    let assertion = match shared
        .registry
        .assertion(&device.tenant, &device.device_id, None)
        .await
    {
        Ok(AssertionOutcome::Granted(a)) => a,
        Ok(_) => return Err(Refusal::NotAuthorized),
        Err(_) => return Err(Refusal::RegistryUnavailable),
    };
    let volume = shared.volume.tenant(&device.tenant);
    if volume.is_exhausted(&tenant, chrono::Utc::now()) {
        return Err(Refusal::DataVolume);
    }
    count_connection(shared)?;
    if let Some(limit) = tenant.max_connections() {
        if shared.metrics.connected(&device.tenant).get()
            >= i64::try_from(limit).unwrap_or(i64::MAX)
        {
            shared.connections.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::TenantLimit);
        }
    }
    Ok(Some(Authenticated {
        tenant: device.tenant,
        device: device.device_id,
        assertion,
        volume,
    }))
}

/// Counts a connection of this instance, unless the instance is full.
fn count_connection(shared: &Shared) -> Result<(), Refusal> {
    let max = shared.config.max_connections;
    let now = shared.connections.fetch_add(1, Ordering::AcqRel) + 1;
    if max > 0 && now > max {
        shared.connections.fetch_sub(1, Ordering::AcqRel);
        return Err(Refusal::AdapterFull);
    }
    Ok(())
}

/// An unauthenticated device's message for `tenant`: the tenant must exist and be enabled, use this
/// adapter, and not require authentication for it (HONO-CONTRACT §5 `device-authentication-required`).
async fn unauthenticated_tenant(
    shared: &Shared,
    tenant: &TenantId,
) -> Result<Arc<TenantInfo>, u16> {
    match shared.registry.tenant(tenant).await {
        Ok(Some(t)) if !t.is_enabled() || !t.is_adapter_enabled(ADAPTER_TYPE) => Err(403),
        Ok(Some(t)) if t.is_device_authentication_required(ADAPTER_TYPE) => Err(401),
        Ok(Some(t)) => Ok(t),
        // An unknown tenant looks like one that wants credentials: tenants cannot be probed.
        Ok(None) => Err(401),
        Err(_) => Err(503),
    }
}

struct Session {
    shared: Arc<Shared>,
    version: Version,
    /// `None`: an unauthenticated device (its topics name tenant and device).
    who: Option<Authenticated>,
    keep_alive: Duration,
    /// A keep-alive other than the client asked for, told in the CONNACK (MQTT 5 only).
    server_keep_alive: Option<u16>,
    client_id: String,
    peer: SocketAddr,
    out: BytesMut,
    id: u64,
    commands_tx: tokio::sync::mpsc::UnboundedSender<Box<Command>>,
    /// Command subscriptions: the device whose commands come, the filter they mirror (parsed and as the
    /// device wrote it), the QoS granted.
    command_subs: Vec<CommandSub>,
    /// A gateway's subscription for all its devices (`c//+/q/#`): the commands the router sends through
    /// this gateway (`via`) for devices without a subscription here are published on it.
    all_devices: Option<CommandSub>,
    /// When this gateway last told the router it sends for a device (`set-last-gw`).
    told_last_gateway: HashMap<DeviceId, std::time::Instant>,
    error_sub: Option<Subscription>,
    /// QoS 1 commands waiting for the device's PUBACK.
    inflight: HashMap<u16, Command>,
    next_pkid: u16,
    /// The last [`Step`] of the chain of subscription changes (router registrations).
    changes: Option<oneshot::Receiver<()>>,
    /// The last [`Step`] of the chain of notifications.
    notices: Option<oneshot::Receiver<()>>,
    /// Whether a `connected` connection event went out (so a `disconnected` one follows).
    announced: bool,
}

/// Initial capacity of a session's read and write buffers.
const READ_BUFFER: usize = 1024;
/// What a read buffer grows by once a read filled it.
const BUSY_READ_BUFFER: usize = 8192;
const WRITE_BUFFER: usize = 256;

/// How often a gateway sending for a device tells the router again that it is the device's last-known
/// gateway.
const LAST_GATEWAY_EVERY: Duration = Duration::from_secs(10);
/// Most devices a session remembers having told the router about.
const MAX_TOLD_LAST_GATEWAY: usize = 10_000;

static NEXT_SESSION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Session {
    fn write(&mut self, packet: &Outgoing<'_>) -> Result<(), SessionError> {
        wire::write(self.version, packet, &mut self.out)?;
        Ok(())
    }

    /// Who the device is in connection events: its client id, or its address when it sent none.
    fn remote_id(&self) -> String {
        if self.client_id.is_empty() {
            self.peer.to_string()
        } else {
            self.client_id.clone()
        }
    }

    /// Sends `notifications` after the ones chained before them, without holding up the session.
    fn notify_later(&mut self, notifications: Vec<Notification>) {
        if notifications.is_empty() {
            return;
        }
        let Some(who) = &self.who else {
            return;
        };
        let step = Step::after(&mut self.notices);
        spawn_notify(&self.shared, who, step, notifications);
    }

    async fn run<IO: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut IO,
        buf: &mut BytesMut,
        max_packet: usize,
        mut commands: tokio::sync::mpsc::UnboundedReceiver<Box<Command>>,
    ) -> Result<(), SessionError> {
        let mut ack_timeouts: FuturesUnordered<
            std::pin::Pin<Box<dyn std::future::Future<Output = u16> + Send>>,
        > = FuturesUnordered::new();
        self.write(&Outgoing::ConnAck {
            code: 0,
            server_keep_alive: self.server_keep_alive,
        })?;
        io.write_all(&self.out).await?;
        self.out.clear();
        match &self.who {
            Some(who) => {
                tracing::debug!(peer = %self.peer, client = %self.client_id, tenant = %who.tenant, device = %who.device, "device connected");
            }
            None => {
                tracing::debug!(peer = %self.peer, client = %self.client_id, "unauthenticated device connected");
            }
        }
        // Connection events are for authenticated devices only (HONO-CONTRACT §1.2).
        if let (true, Some(who)) = (self.shared.config.connection_events, &self.who) {
            self.announced = true;
            let remote_id = self.remote_id();
            let device = who.device.clone();
            self.notify_later(vec![Notification::connection(
                device,
                "connected",
                &remote_id,
            )]);
        }

        let mut changes = self.shared.registry.subscribe();
        let mut pending: FuturesOrdered<Pending> = FuturesOrdered::new();
        let mut background = Background::default();
        // MQTT: the server closes a connection silent for one and a half keep-alive periods (0: never,
        // only when `max_keep_alive_secs` is 0 too).
        // Measured from the last bytes the device sent, not from whatever else woke the session.
        let idle = self.keep_alive * 3 / 2;
        let mut last_heard = Instant::now();
        let keep_alive = tokio::time::sleep(idle);
        tokio::pin!(keep_alive);
        let stop = self.shared.shutdown.clone().wait();
        tokio::pin!(stop);
        let mut closing: Option<SessionError> = None;
        loop {
            // Handle every complete packet already buffered.
            while closing.is_none() {
                match wire::read(self.version, buf, max_packet) {
                    Ok(Some(p)) => {
                        if let Err(e) = self.on_packet(p, &mut pending, &mut background) {
                            closing = Some(e);
                        }
                    }
                    Ok(None) => break,
                    Err(wire::WireError::TooLarge(_)) => {
                        // HONO-CONTRACT §2.2: oversized payload: discard and disconnect.
                        closing = Some(SessionError::Closed("payload too large"));
                    }
                    Err(e) => closing = Some(e.into()),
                }
            }
            if !self.out.is_empty() {
                io.write_all(&self.out).await?;
                self.out.clear();
            }
            if let Some(e) = closing {
                if self.version == Version::V5 {
                    let reason = match e {
                        SessionError::Closed("payload too large") => 0x95,
                        SessionError::KeepAlive => 0x8D,
                        _ => 0x80,
                    };
                    self.out.clear();
                    if wire::write(
                        self.version,
                        &Outgoing::Disconnect { reason },
                        &mut self.out,
                    )
                    .is_ok()
                    {
                        let _ = io.write_all(&self.out).await;
                    }
                }
                return match e {
                    SessionError::Closed("client disconnected") => Ok(()),
                    e => Err(e),
                };
            }
            let reading = pending.len() + background.len() < MAX_PENDING;
            if !reading {
                // The device is not silent, the adapter is not listening: no keep-alive meanwhile.
                last_heard = Instant::now();
            }
            tokio::select! {
                r = io.read_buf(buf), if reading => match r {
                    Ok(0) => return Ok(()),
                    Ok(_) => last_heard = Instant::now(),
                    Err(e) => return Err(e.into()),
                },
                () = &mut keep_alive, if !idle.is_zero() => {
                    // The timer is re-armed lazily here rather than on every read.
                    let deadline = last_heard + idle;
                    if Instant::now() >= deadline {
                        closing = Some(SessionError::KeepAlive);
                    } else {
                        keep_alive.as_mut().reset(deadline);
                    }
                }
                Some(done) = pending.next(), if !pending.is_empty() => {
                    if let Err(e) = self.on_done(done) {
                        closing = Some(e);
                    }
                }
                Some(done) = background.next(), if background.len() > 0 => {
                    if let Err(e) = self.on_done(done) {
                        closing = Some(e);
                    }
                }
                Some(command) = commands.recv() => {
                    if let Some(pkid) = self.deliver_command(*command) {
                        let wait = Duration::from_millis(self.shared.config.command_ack_timeout_ms);
                        ack_timeouts.push(Box::pin(async move {
                            tokio::time::sleep(wait).await;
                            pkid
                        }));
                    }
                }
                Some(pkid) = ack_timeouts.next(), if !ack_timeouts.is_empty() => {
                    // No PUBACK in time: the application may retry (HONO-CONTRACT §2.2).
                    if let Some(c) = self.inflight.remove(&pkid) {
                        self.count_command(&c, Status::Undeliverable);
                        c.release();
                    }
                }
                change = changes.recv() => {
                    // An unauthenticated session's messages are checked one by one instead.
                    let relevant = match (&change, &self.who) {
                        (_, None) => false,
                        (Ok(c), Some(who)) => c.affects(&who.tenant, &who.device),
                        (Err(_), Some(_)) => true,
                    };
                    // New, removed or replaced secrets end the session: the device must prove
                    // itself again against what the registry holds now (a device whose secret still
                    // matches simply reconnects).
                    let credentials_changed = relevant
                        && matches!(&change, Ok(c) if c.kind == ChangeKind::Credentials);
                    if credentials_changed {
                        closing = Some(SessionError::Closed("device credentials changed in the registry"));
                    } else if relevant && !self.still_allowed().await {
                        closing = Some(SessionError::Closed("device no longer allowed by the registry"));
                    }
                }
                () = &mut stop => closing = Some(SessionError::Closed("adapter shutting down")),
            }
        }
    }

    /// After a registry change: is the device still enabled, its tenant and this adapter still enabled?
    async fn still_allowed(&self) -> bool {
        let Some(who) = &self.who else {
            return true;
        };
        let tenant_ok = matches!(
            self.shared.registry.tenant(&who.tenant).await,
            Ok(Some(t)) if t.is_enabled() && t.is_adapter_enabled(ADAPTER_TYPE)
        );
        tenant_ok
            && matches!(
                self.shared
                    .registry
                    .assertion(&who.tenant, &who.device, None)
                    .await,
                Ok(AssertionOutcome::Granted(_))
            )
    }

    fn on_packet(
        &mut self,
        packet: Incoming,
        pending: &mut FuturesOrdered<Pending>,
        background: &mut Background,
    ) -> Result<(), SessionError> {
        match packet {
            Incoming::Publish {
                topic,
                qos,
                pkid,
                payload,
                content_type,
                ..
            } => self.on_publish(
                &topic,
                qos,
                pkid,
                payload,
                content_type,
                pending,
                background,
            ),
            Incoming::Subscribe { pkid, filters } => {
                self.on_subscribe(pkid, filters, pending);
                Ok(())
            }
            Incoming::Unsubscribe { pkid, filters } => {
                self.on_unsubscribe(pkid, filters, pending);
                Ok(())
            }
            Incoming::PingReq => self.write(&Outgoing::PingResp),
            Incoming::Disconnect => Err(SessionError::Closed("client disconnected")),
            Incoming::PubAck { pkid } => {
                if let Some(c) = self.inflight.remove(&pkid) {
                    self.count_command(&c, Status::Forwarded);
                    c.accept();
                }
                Ok(())
            }
            Incoming::Other => Ok(()),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_publish(
        &mut self,
        topic_bytes: &[u8],
        qos: u8,
        pkid: u16,
        payload: Bytes,
        content_type: Option<String>,
        pending: &mut FuturesOrdered<Pending>,
        background: &mut Background,
    ) -> Result<(), SessionError> {
        // HONO-CONTRACT §2.2: an oversized payload is discarded and the device disconnected, whatever
        // the endpoint (command responses included).
        if payload.len() > self.shared.config.max_payload_bytes {
            return Err(SessionError::Closed("payload too large"));
        }
        let topic_str = std::str::from_utf8(topic_bytes)
            .map_err(|_| SessionError::Closed("topic is not UTF-8"))?;
        let parsed = topic::parse_publish(topic_str)
            .map_err(|_| SessionError::Closed("not a Hono topic"))?;
        if qos > 1 {
            return Err(SessionError::Closed("QoS 2 is not supported"));
        }
        let kind = match parsed.endpoint {
            Endpoint::Telemetry => MessageKind::Telemetry,
            Endpoint::Event if qos == 1 => MessageKind::Event,
            Endpoint::Event => return Err(SessionError::Closed("events need QoS 1")),
            Endpoint::CommandResponse { request_id, status } => {
                return self.on_response(
                    &parsed,
                    request_id,
                    status,
                    qos,
                    pkid,
                    payload,
                    content_type,
                    pending,
                    background,
                )
            }
        };
        let (tenant, device, gateway) = self.subject(&parsed)?;
        let tell_last_gateway = gateway.is_some() && self.tell_last_gateway(&device);
        let content_type = parsed
            .bag
            .content_type
            .as_deref()
            .map(str::to_owned)
            .or(content_type);
        let ttl_secs = parsed.bag.ttl_secs;
        let on_error = parsed.bag.on_error;
        let extra_properties: Vec<(String, PropertyValue)> = parsed
            .bag
            .extra
            .iter()
            // A bag entry never overrides what the adapter itself asserts about the message.
            .filter(|(k, _)| !RESERVED_PROPERTIES.contains(&k.as_ref()))
            .map(|(k, v)| (k.to_string(), PropertyValue::String(v.to_string())))
            .collect();
        let known = self
            .who
            .as_ref()
            .map(|w| (w.volume.clone(), w.tenant == tenant));
        let shared = self.shared.clone();
        let orig_address = topic_str.to_owned();
        let size = payload.len();
        let send = async move {
            let info = match known {
                Some(_) => match shared.registry.tenant(&tenant).await {
                    Ok(Some(t)) => t,
                    Ok(None) => return Err(404),
                    Err(_) => return Err(503),
                },
                None => unauthenticated_tenant(&shared, &tenant).await?,
            };
            let assertion = match shared
                .registry
                .assertion(&tenant, &device, gateway.as_ref())
                .await
            {
                Ok(AssertionOutcome::Granted(a)) => a,
                Ok(AssertionOutcome::NotFound) => return Err(404),
                Ok(AssertionOutcome::Forbidden) => return Err(403),
                Err(_) => return Err(503),
            };
            if let Some(gateway) = gateway.as_ref().filter(|_| tell_last_gateway) {
                shared
                    .command_link
                    .set_last_gateway(&tenant, &device, gateway);
            }
            // The tenant's data volume (HONO-CONTRACT §5): counted by this instance, no registry call.
            let volume = match known {
                Some((volume, true)) => volume,
                _ => shared.volume.tenant(&tenant),
            };
            if !volume.admit(&info, size, chrono::Utc::now()) {
                shared.metrics.telemetry(
                    &tenant,
                    kind,
                    qos,
                    Status::Unprocessable,
                    Ttd::None,
                    size,
                );
                return Err(429);
            }
            let mut msg = DeviceMessage {
                kind,
                tenant: tenant.clone(),
                device_id: device,
                qos,
                content_type,
                payload,
                assertion: assertion.token.clone(),
                orig_adapter: ADAPTER_TYPE,
                orig_address,
                ttl_ms: None,
                ttd: None,
                extra_properties,
            };
            msg.apply_defaults(&info, &assertion.defaults, ttl_secs);
            let result = match shared.downstream.send(msg).await {
                // QoS 0 goes pre-settled: written to the router is all there is to know.
                Ok(SendOutcome::Accepted | SendOutcome::Presettled) => Ok(()),
                other => {
                    tracing::debug!(%tenant, ?other, "message not accepted downstream");
                    Err(503)
                }
            };
            let status = if result.is_ok() {
                Status::Forwarded
            } else {
                Status::Undeliverable
            };
            shared
                .metrics
                .telemetry(&tenant, kind, qos, status, Ttd::None, size);
            result
        };
        let endpoint = parsed.error_endpoint();
        let correlation_id = parsed.bag.correlation_id.as_deref().map_or_else(
            || {
                if qos == 1 {
                    pkid.to_string()
                } else {
                    String::new()
                }
            },
            str::to_owned,
        );
        let device_in_topic = parsed
            .device
            .filter(|d| self.who.as_ref().is_none_or(|w| *d != w.device.as_str()))
            .map(str::to_owned);
        if qos == 0 {
            // Fire and forget: the device hears of a failure only on its error topic.
            if self.error_sub.is_some() {
                pending.push_back(Box::pin(async move {
                    match send.await {
                        Ok(()) => Done::Nothing,
                        Err(code) => Done::Failed {
                            code,
                            endpoint,
                            correlation_id,
                            device_in_topic,
                        },
                    }
                }));
            } else {
                tokio::spawn(send);
            }
            return Ok(());
        }
        pending.push_back(Box::pin(async move {
            Done::PubAck {
                pkid,
                on_error,
                result: send.await,
                endpoint,
                correlation_id,
                device_in_topic,
            }
        }));
        Ok(())
    }

    /// Whether the router should hear (again) that this gateway sends for `device`: the first time in
    /// this session, then at most every [`LAST_GATEWAY_EVERY`], in case another gateway took over.
    fn tell_last_gateway(&mut self, device: &DeviceId) -> bool {
        let now = std::time::Instant::now();
        match self.told_last_gateway.get_mut(device) {
            Some(at) if now.duration_since(*at) < LAST_GATEWAY_EVERY => false,
            Some(at) => {
                *at = now;
                true
            }
            None => {
                if self.told_last_gateway.len() >= MAX_TOLD_LAST_GATEWAY {
                    self.told_last_gateway.clear();
                }
                self.told_last_gateway.insert(device.clone(), now);
                true
            }
        }
    }

    /// The tenant, device and (when the device acts for another one) gateway of a topic. Authenticated
    /// devices may leave tenant and device out; another tenant's topic is refused. Unauthenticated
    /// devices must name both.
    fn subject(
        &self,
        parsed: &topic::PublishTopic<'_>,
    ) -> Result<(TenantId, DeviceId, Option<DeviceId>), SessionError> {
        let Some(who) = &self.who else {
            let (Some(t), Some(d)) = (parsed.tenant, parsed.device) else {
                return Err(SessionError::Closed(
                    "an unauthenticated device must name tenant and device in the topic",
                ));
            };
            let tenant = TenantId::new(t).map_err(|_| SessionError::Closed("invalid tenant id"))?;
            let device = DeviceId::new(d).map_err(|_| SessionError::Closed("invalid device id"))?;
            return Ok((tenant, device, None));
        };
        if parsed.tenant.is_some_and(|t| t != who.tenant.as_str()) {
            return Err(SessionError::Closed("another tenant's topic"));
        }
        // A gateway publishing for a device names it; the registry decides whether it may.
        let device = match parsed.device {
            Some(d) if d != who.device.as_str() => {
                DeviceId::new(d).map_err(|_| SessionError::Closed("invalid device id"))?
            }
            _ => who.device.clone(),
        };
        let gateway = (device != who.device).then(|| who.device.clone());
        Ok((who.tenant.clone(), device, gateway))
    }

    fn on_done(&mut self, done: Done) -> Result<(), SessionError> {
        match done {
            Done::PubAck {
                pkid,
                on_error,
                result,
                endpoint,
                correlation_id,
                device_in_topic,
            } => {
                if let Err(code) = result {
                    if self.report_error(
                        code,
                        endpoint,
                        &correlation_id,
                        device_in_topic.as_deref(),
                    ) && on_error == OnError::Default
                    {
                        // With an error subscription the default is to report and go on (§2.2).
                        let reason = if code == 429 { 0x97 } else { 0x80 };
                        return self.write(&Outgoing::PubAck { pkid, reason });
                    }
                }
                self.on_outcome(pkid, on_error, result)
            }
            Done::Failed {
                code,
                endpoint,
                correlation_id,
                device_in_topic,
            } => {
                self.report_error(code, endpoint, &correlation_id, device_in_topic.as_deref());
                Ok(())
            }
            Done::SubAck { pkid, granted } => self.write(&Outgoing::SubAck {
                pkid,
                granted: &granted,
            }),
            Done::Nothing => Ok(()),
            Done::UnsubAck { pkid, count } => self.write(&Outgoing::UnsubAck { pkid, count }),
        }
    }

    /// Publishes an error report when the device subscribed to its error topic; says whether it did.
    fn report_error(
        &mut self,
        code: u16,
        endpoint: &str,
        correlation_id: &str,
        device: Option<&str>,
    ) -> bool {
        let Some(sub) = self.error_sub.clone() else {
            return false;
        };
        let topic = topic::error_topic(&sub, device, endpoint, Some(correlation_id), code);
        let message = match code {
            400 => "malformed message",
            403 => "not allowed to publish for this device",
            401 => "the tenant requires devices to authenticate",
            404 => "device unknown or disabled",
            413 => "payload too large",
            429 => "the tenant's data volume is used up",
            _ => "no consumer accepted the message",
        };
        let timestamp = now_iso8601();
        let payload = topic::error_payload(code, message, correlation_id, &timestamp);
        self.write(&Outgoing::Publish {
            topic: &topic,
            qos: 0,
            pkid: 0,
            payload: Bytes::from(payload),
        })
        .is_ok()
    }

    /// A QoS 1 PUBLISH's outcome: PUBACK when accepted; otherwise HONO-CONTRACT §2.2's `on-error`.
    fn on_outcome(
        &mut self,
        pkid: u16,
        on_error: OnError,
        result: Result<(), u16>,
    ) -> Result<(), SessionError> {
        match (result, on_error) {
            (Ok(()), _) | (Err(_), OnError::Ignore) => {
                self.write(&Outgoing::PubAck { pkid, reason: 0 })
            }
            (Err(_), OnError::SkipAck) => Ok(()),
            (Err(401 | 404 | 403), _) => Err(SessionError::Closed("device not allowed to publish")),
            // The tenant's data volume is used up: the message is discarded and the connection stays
            // (HONO-CONTRACT §5, "MQTT drop"). MQTT 5 says why in the PUBACK (0x97 quota exceeded);
            // MQTT 3.1.1 has no negative PUBACK, so the message stays unacknowledged.
            (Err(429), OnError::Default) => match self.version {
                Version::V5 => self.write(&Outgoing::PubAck { pkid, reason: 0x97 }),
                Version::V311 => Ok(()),
            },
            (Err(_), OnError::Default | OnError::Disconnect) => {
                Err(SessionError::Closed("message not accepted downstream"))
            }
        }
    }

    /// SUBSCRIBE: command filters register the device(s) with the router; error filters switch on error
    /// reports. The SUBACK follows once the router knows, in order with the PUBACKs; then applications
    /// hear that each subscribed device can be reached (ttd -1).
    fn on_subscribe(
        &mut self,
        pkid: u16,
        filters: Vec<(String, u8)>,
        pending: &mut FuturesOrdered<Pending>,
    ) {
        let Some(who) = self.who.clone() else {
            self.on_subscribe_unauthenticated(pkid, filters, pending);
            return;
        };
        let mut granted = Vec::with_capacity(filters.len());
        // Command subscriptions to set up: where in `granted`, for which device, the filter, and
        // whether it is the gateway's subscription for all its devices.
        let mut wanted: Vec<(usize, DeviceId, String, bool)> = Vec::new();
        for (filter, qos) in filters {
            let sub = match topic::parse_subscription(&filter) {
                Ok(s) if qos <= 1 && s.tenant.as_ref().is_none_or(|t| *t == who.tenant) => s,
                _ => {
                    granted.push(None);
                    continue;
                }
            };
            let device = match (sub.kind, &sub.device) {
                (SubscriptionKind::Error, _) => {
                    self.error_sub = Some(sub);
                    granted.push(Some(0));
                    continue;
                }
                (SubscriptionKind::Command, DeviceFilter::Own | DeviceFilter::All) => {
                    who.device.clone()
                }
                (SubscriptionKind::Command, DeviceFilter::One(d)) => d.clone(),
            };
            let all = sub.device == DeviceFilter::All;
            let command_sub = CommandSub {
                tenant: who.tenant.clone(),
                device: device.clone(),
                sub,
                filter: filter.clone(),
                qos,
            };
            if all {
                // All its devices, and itself: its own commands come on this filter too.
                self.all_devices = Some(command_sub.clone());
            }
            self.command_subs.retain(|c| c.device != device);
            self.command_subs.push(command_sub);
            wanted.push((granted.len(), device, filter, all));
            granted.push(Some(qos));
        }
        if wanted.is_empty() {
            // Nothing for the router: the SUBACK only keeps its place among the PUBACKs.
            pending.push_back(Box::pin(async move { Done::SubAck { pkid, granted } }));
            return;
        }
        let mut change = Step::after(&mut self.changes);
        let notice = Step::after(&mut self.notices);
        let shared = self.shared.clone();
        let gateway = who.device.clone();
        let tenant = who.tenant.clone();
        let target = CommandTarget {
            session: self.id,
            tx: self.commands_tx.clone(),
        };
        pending.push_back(Box::pin(async move {
            change.ready().await;
            let mut notifications = Vec::with_capacity(wanted.len());
            for (index, device, filter, all) in wanted {
                let for_gateway = (device != gateway).then(|| gateway.clone());
                // A gateway for one of its devices: the registry decides. The route waits for its
                // answer, as it replaces the device's own and would hand its commands to any gateway.
                let allowed = for_gateway.is_none()
                    || matches!(
                        shared
                            .registry
                            .assertion(&tenant, &device, for_gateway.as_ref())
                            .await,
                        Ok(AssertionOutcome::Granted(_))
                    );
                let registered = allowed && {
                    shared.route(&tenant, &device, target.clone());
                    let mut ok = shared.command_link.register(&tenant, &device).await.is_ok();
                    if ok && all {
                        shared.route_gateway(&tenant, &device, target.clone());
                        ok = shared
                            .command_link
                            .register_gateway(&tenant, &device)
                            .await
                            .is_ok();
                        if !ok {
                            shared.unroute_gateway(&tenant, &device, target.session);
                        }
                    }
                    if !ok {
                        shared.unroute(&tenant, &device, target.session);
                    }
                    ok
                };
                if registered {
                    notifications.push(Notification::ttd(device, for_gateway, -1, filter));
                } else if let Some(g) = granted.get_mut(index) {
                    // Not allowed, or transient: the device should subscribe again (§2.2: 0x80).
                    *g = None;
                }
            }
            drop(change);
            spawn_notify(&shared, &who, notice, notifications);
            Done::SubAck { pkid, granted }
        }));
    }

    /// SUBSCRIBE of an unauthenticated device: only command filters naming tenant and device
    /// (`c/TENANT/DEVICE/q/#`), for tenants that let `hono-mqtt` devices go unauthenticated and devices
    /// that are registered and enabled; anything else gets SUBACK 0x80.
    fn on_subscribe_unauthenticated(
        &mut self,
        pkid: u16,
        filters: Vec<(String, u8)>,
        pending: &mut FuturesOrdered<Pending>,
    ) {
        let mut granted = Vec::with_capacity(filters.len());
        let mut wanted: Vec<(usize, CommandSub)> = Vec::new();
        for (filter, qos) in filters {
            match topic::parse_subscription(&filter) {
                Ok(Subscription {
                    kind: SubscriptionKind::Command,
                    tenant: Some(tenant),
                    device: DeviceFilter::One(device),
                    long_form,
                }) if qos <= 1 => {
                    let sub = Subscription {
                        kind: SubscriptionKind::Command,
                        tenant: Some(tenant.clone()),
                        device: DeviceFilter::One(device.clone()),
                        long_form,
                    };
                    wanted.push((
                        granted.len(),
                        CommandSub {
                            tenant,
                            device,
                            sub,
                            filter,
                            qos,
                        },
                    ));
                    granted.push(Some(qos));
                }
                _ => granted.push(None),
            }
        }
        if wanted.is_empty() {
            pending.push_back(Box::pin(async move { Done::SubAck { pkid, granted } }));
            return;
        }
        // Recorded at once, so that a command arriving before the SUBACK finds its topic; a refused
        // one never gets a route, so it never receives commands.
        for (_, c) in &wanted {
            self.command_subs
                .retain(|o| !(o.tenant == c.tenant && o.device == c.device));
            self.command_subs.push(c.clone());
        }
        let mut change = Step::after(&mut self.changes);
        let notice = Step::after(&mut self.notices);
        let shared = self.shared.clone();
        let target = CommandTarget {
            session: self.id,
            tx: self.commands_tx.clone(),
        };
        pending.push_back(Box::pin(async move {
            change.ready().await;
            let mut notifications = Vec::with_capacity(wanted.len());
            for (index, c) in wanted {
                let allowed = unauthenticated_tenant(&shared, &c.tenant).await.is_ok()
                    && matches!(
                        shared.registry.assertion(&c.tenant, &c.device, None).await,
                        Ok(AssertionOutcome::Granted(_))
                    );
                let registered = allowed && {
                    shared.route(&c.tenant, &c.device, target.clone());
                    let ok = shared
                        .command_link
                        .register(&c.tenant, &c.device)
                        .await
                        .is_ok();
                    if !ok {
                        shared.unroute(&c.tenant, &c.device, target.session);
                    }
                    ok
                };
                if registered {
                    notifications.push((c.tenant, Notification::ttd(c.device, None, -1, c.filter)));
                } else if let Some(g) = granted.get_mut(index) {
                    *g = None;
                }
            }
            drop(change);
            spawn_notify_each(&shared, notice, notifications);
            Done::SubAck { pkid, granted }
        }));
    }

    /// UNSUBSCRIBE of an unauthenticated device: the named devices' subscriptions end (ttd 0).
    fn on_unsubscribe_unauthenticated(
        &mut self,
        pkid: u16,
        filters: Vec<String>,
        pending: &mut FuturesOrdered<Pending>,
    ) {
        let count = filters.len();
        let mut gone: Vec<CommandSub> = Vec::new();
        for filter in filters {
            let Ok(Subscription {
                kind: SubscriptionKind::Command,
                tenant: Some(tenant),
                device: DeviceFilter::One(device),
                ..
            }) = topic::parse_subscription(&filter)
            else {
                continue;
            };
            if let Some(i) = self
                .command_subs
                .iter()
                .position(|c| c.tenant == tenant && c.device == device)
            {
                gone.push(self.command_subs.swap_remove(i));
            }
        }
        let mut change = Step::after(&mut self.changes);
        let notice = Step::after(&mut self.notices);
        let shared = self.shared.clone();
        let session = self.id;
        pending.push_back(Box::pin(async move {
            change.ready().await;
            let mut notifications = Vec::with_capacity(gone.len());
            for c in gone {
                if shared.unroute(&c.tenant, &c.device, session) {
                    let _ = shared.command_link.unregister(&c.tenant, &c.device).await;
                    notifications.push((c.tenant, Notification::ttd(c.device, None, 0, c.filter)));
                }
            }
            drop(change);
            spawn_notify_each(&shared, notice, notifications);
            Done::UnsubAck { pkid, count }
        }));
    }

    /// UNSUBSCRIBE: the router forgets the device(s); then applications hear they are gone (ttd 0).
    fn on_unsubscribe(
        &mut self,
        pkid: u16,
        filters: Vec<String>,
        pending: &mut FuturesOrdered<Pending>,
    ) {
        let count = filters.len();
        let Some(who) = self.who.clone() else {
            self.on_unsubscribe_unauthenticated(pkid, filters, pending);
            return;
        };
        let mut gone: Vec<(DeviceId, String)> = Vec::new();
        // The gateway's subscription for all its devices ends.
        let mut all_gone = false;
        for filter in filters {
            let Ok(sub) = topic::parse_subscription(&filter) else {
                continue;
            };
            let device = match (sub.kind, sub.device) {
                (SubscriptionKind::Error, _) => {
                    self.error_sub = None;
                    continue;
                }
                (SubscriptionKind::Command, DeviceFilter::Own) => who.device.clone(),
                (SubscriptionKind::Command, DeviceFilter::One(d)) => d,
                (SubscriptionKind::Command, DeviceFilter::All) => {
                    if self.all_devices.take().is_none() {
                        continue;
                    }
                    all_gone = true;
                    // Its own commands stay if a newer filter of its own took them over.
                    let own_on_all = self
                        .command_subs
                        .iter()
                        .any(|c| c.device == who.device && c.sub.device == DeviceFilter::All);
                    if !own_on_all {
                        continue;
                    }
                    who.device.clone()
                }
            };
            gone.push((device, filter));
        }
        self.command_subs
            .retain(|c| !gone.iter().any(|(g, _)| *g == c.device));
        if all_gone
            && self
                .shared
                .unroute_gateway(&who.tenant, &who.device, self.id)
        {
            // In the chain of subscription changes, so that a SUBSCRIBE right after cannot be undone.
            let link = self.shared.command_link.clone();
            let (tenant, gateway) = (who.tenant.clone(), who.device.clone());
            let mut change = Step::after(&mut self.changes);
            tokio::spawn(async move {
                change.ready().await;
                let _ = link.unregister_gateway(&tenant, &gateway).await;
            });
        }
        if gone.is_empty() {
            pending.push_back(Box::pin(async move { Done::UnsubAck { pkid, count } }));
            return;
        }
        let mut change = Step::after(&mut self.changes);
        let notice = Step::after(&mut self.notices);
        let shared = self.shared.clone();
        let tenant = who.tenant.clone();
        let own = who.device.clone();
        let session = self.id;
        pending.push_back(Box::pin(async move {
            change.ready().await;
            let mut notifications = Vec::with_capacity(gone.len());
            for (device, filter) in gone {
                // Only when the device's commands still came here: a newer session may hold them.
                if shared.unroute(&tenant, &device, session) {
                    let _ = shared.command_link.unregister(&tenant, &device).await;
                    let gateway = (device != own).then(|| own.clone());
                    notifications.push(Notification::ttd(device, gateway, 0, filter));
                }
            }
            drop(change);
            spawn_notify(&shared, &who, notice, notifications);
            Done::UnsubAck { pkid, count }
        }));
    }

    /// Hono's command metrics for a command handed (or not) to the device.
    fn count_command(&self, command: &Command, status: Status) {
        let direction = if command.reply_to.is_some() {
            "request"
        } else {
            "one-way"
        };
        self.shared
            .metrics
            .command(&command.tenant, direction, status, command.payload.len());
    }

    /// Publishes a command to the device on the topic its subscription mirrors; returns the packet id
    /// when the device must PUBACK it (QoS 1).
    fn deliver_command(&mut self, command: Command) -> Option<u16> {
        let own = self
            .command_subs
            .iter()
            .find(|c| c.device == command.device && c.tenant == command.tenant);
        // Without a subscription for the device, the router sent it through this gateway (`via`).
        let through_gateway = || {
            self.all_devices
                .as_ref()
                .filter(|a| a.tenant == command.tenant && command.via.as_ref() == Some(&a.device))
        };
        let Some((sub, qos)) = own.or_else(through_gateway).map(|c| (c.sub.clone(), c.qos)) else {
            command.release();
            return None;
        };
        if command.name.is_empty()
            || command
                .name
                .chars()
                .any(|c| matches!(c, '/' | '+' | '#' | '\0'))
        {
            command.reject(
                "hono:bad-request",
                "the command name cannot be a topic level",
            );
            return None;
        }
        let request_id = match (&command.reply_to, command.response_correlation_id()) {
            (None, _) => None,
            (Some(reply_to), Some(correlation)) => {
                let prefix = format!("command_response/{}/", command.tenant);
                let reply = reply_to.strip_prefix(&prefix).unwrap_or(reply_to);
                match topic::request_id(correlation, reply, false) {
                    Some(id) => Some(id),
                    None => {
                        command.reject(
                            "hono:bad-request",
                            "correlation or reply id unusable in a topic",
                        );
                        return None;
                    }
                }
            }
            (Some(_), None) => {
                command.reject(
                    "hono:bad-request",
                    "a request needs a message-id or correlation-id",
                );
                return None;
            }
        };
        // A gateway receives commands for its devices with the device level; a device (authenticated,
        // or unauthenticated with the device in its filter) its own as the filter has it.
        let device_in_topic = self
            .who
            .as_ref()
            .is_some_and(|w| command.device != w.device)
            .then(|| command.device.to_string());
        let topic = topic::command_topic(
            &sub,
            device_in_topic.as_deref(),
            request_id.as_deref(),
            &command.name,
        );
        let pkid = if qos == 1 {
            match next_packet_id(self.next_pkid, &self.inflight) {
                Some(id) => {
                    self.next_pkid = id;
                    id
                }
                None => {
                    // Every packet id waits for a PUBACK: the device is not keeping up.
                    command.release();
                    return None;
                }
            }
        } else {
            0
        };
        let written = self
            .write(&Outgoing::Publish {
                topic: &topic,
                qos,
                pkid,
                payload: command.payload.clone(),
            })
            .is_ok();
        match (written, qos) {
            (false, _) => {
                self.count_command(&command, Status::Undeliverable);
                command.release();
                None
            }
            (true, 0) => {
                self.count_command(&command, Status::Forwarded);
                command.accept();
                None
            }
            (true, _) => {
                self.inflight.insert(pkid, command);
                Some(pkid)
            }
        }
    }

    /// A command response from the device: back to the application waiting on the command's reply-to.
    /// Like a message, only from the device itself or from a gateway the registry lets act for it (the
    /// HTTP adapter's check): the registry's assertion decides, so a device cannot answer another
    /// device's commands.
    #[allow(clippy::too_many_arguments)]
    fn on_response(
        &mut self,
        parsed: &topic::PublishTopic<'_>,
        request_id: &str,
        status: u16,
        qos: u8,
        pkid: u16,
        payload: Bytes,
        content_type: Option<String>,
        pending: &mut FuturesOrdered<Pending>,
        background: &mut Background,
    ) -> Result<(), SessionError> {
        let (tenant, device, gateway) = self.subject(parsed)?;
        let Some((correlation, reply, _)) = topic::parse_request_id(request_id) else {
            return Err(SessionError::Closed("unknown request id"));
        };
        let mut response = CommandResponse {
            tenant: tenant.clone(),
            device,
            reply_to: format!("command_response/{tenant}/{reply}"),
            correlation_id: correlation.to_owned(),
            status,
            content_type: parsed
                .bag
                .content_type
                .as_deref()
                .map(str::to_owned)
                .or(content_type),
            payload,
            ttl_ms: None,
        };
        let shared = self.shared.clone();
        let on_error = parsed.bag.on_error;
        let endpoint = parsed.error_endpoint();
        let correlation_id = correlation.to_owned();
        let authenticated = self.who.is_some();
        let send = async move {
            let info = if authenticated {
                match shared.registry.tenant(&tenant).await {
                    Ok(Some(t)) => t,
                    Ok(None) => return Err(404),
                    Err(_) => return Err(503),
                }
            } else {
                unauthenticated_tenant(&shared, &tenant).await?
            };
            match shared
                .registry
                .assertion(&tenant, &response.device, gateway.as_ref())
                .await
            {
                Ok(AssertionOutcome::Granted(_)) => {}
                Ok(AssertionOutcome::NotFound) => return Err(404),
                Ok(AssertionOutcome::Forbidden) => return Err(403),
                Err(_) => return Err(503),
            }
            response.ttl_ms = info
                .max_ttl_secs(TtlLimit::CommandResponse)
                .map(|s| u32::try_from(s.saturating_mul(1000)).unwrap_or(u32::MAX));
            let size = response.payload.len();
            let result = match shared.downstream.send_response(response).await {
                Ok(SendOutcome::Accepted) => Ok(()),
                _ => Err(503),
            };
            let status = if result.is_ok() {
                Status::Forwarded
            } else {
                Status::Undeliverable
            };
            shared.metrics.command(&tenant, "response", status, size);
            result
        };
        if qos == 0 {
            // Fire and forget: a failure goes to the error topic, if the device subscribed to it.
            background.push(Box::pin(async move {
                match send.await {
                    Ok(()) => Done::Nothing,
                    Err(code) => Done::Failed {
                        code,
                        endpoint,
                        correlation_id,
                        device_in_topic: None,
                    },
                }
            }));
            return Ok(());
        }
        pending.push_back(Box::pin(async move {
            Done::PubAck {
                pkid,
                on_error,
                result: send.await,
                endpoint,
                correlation_id,
                device_in_topic: None,
            }
        }));
        Ok(())
    }

    /// The device is gone: its commands go back, its subscriptions end (ttd 0), and with connection
    /// events on, applications hear that it disconnected.
    async fn cleanup(&mut self) {
        for (_, c) in self.inflight.drain() {
            c.release();
        }
        let Some(who) = self.who.clone() else {
            let mut notifications = Vec::new();
            for c in std::mem::take(&mut self.command_subs) {
                if self.shared.unroute(&c.tenant, &c.device, self.id) {
                    let _ = self
                        .shared
                        .command_link
                        .unregister(&c.tenant, &c.device)
                        .await;
                    notifications.push((c.tenant, Notification::ttd(c.device, None, 0, c.filter)));
                }
            }
            let step = Step::after(&mut self.notices);
            spawn_notify_each(&self.shared, step, notifications);
            return;
        };
        if self.all_devices.take().is_some()
            && self
                .shared
                .unroute_gateway(&who.tenant, &who.device, self.id)
        {
            let _ = self
                .shared
                .command_link
                .unregister_gateway(&who.tenant, &who.device)
                .await;
        }
        let mut notifications = Vec::new();
        for CommandSub { device, filter, .. } in std::mem::take(&mut self.command_subs) {
            if self.shared.unroute(&who.tenant, &device, self.id) {
                let _ = self
                    .shared
                    .command_link
                    .unregister(&who.tenant, &device)
                    .await;
                let gateway = (device != who.device).then(|| who.device.clone());
                notifications.push(Notification::ttd(device, gateway, 0, filter));
            }
        }
        if self.announced {
            let remote_id = self.remote_id();
            notifications.push(Notification::connection(
                who.device.clone(),
                "disconnected",
                &remote_id,
            ));
        }
        self.notify_later(notifications);
    }
}

/// The packet id after `last` that no unacknowledged command holds; `None` when all 65,535 are held.
fn next_packet_id<T>(last: u16, inflight: &HashMap<u16, T>) -> Option<u16> {
    let mut id = last;
    for _ in 0..u16::MAX {
        id = id.wrapping_add(1);
        if id == 0 {
            id = 1;
        }
        if !inflight.contains_key(&id) {
            return Some(id);
        }
    }
    None
}

fn now_iso8601() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Civil date from days since the epoch (Howard Hinnant's algorithm), to avoid a date crate here.
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_ids_skip_zero_and_those_in_flight() {
        let mut inflight: HashMap<u16, ()> = HashMap::new();
        assert_eq!(next_packet_id(0, &inflight), Some(1));
        inflight.insert(1, ());
        inflight.insert(2, ());
        assert_eq!(next_packet_id(0, &inflight), Some(3));
        assert_eq!(next_packet_id(u16::MAX, &inflight), Some(3));
    }

    #[test]
    fn packet_ids_run_out_instead_of_spinning() {
        // A device that never PUBACKs its commands once made this loop forever.
        let inflight: HashMap<u16, ()> = (1..=u16::MAX).map(|id| (id, ())).collect();
        assert_eq!(next_packet_id(17, &inflight), None);
        let mut one_free = inflight;
        one_free.remove(&9);
        assert_eq!(next_packet_id(17, &one_free), Some(9));
    }

    #[test]
    fn keep_alive_0_or_above_the_maximum_gets_the_maximum() {
        assert_eq!(keep_alive(0, 1200), (1200, Some(1200)));
        assert_eq!(keep_alive(3600, 1200), (1200, Some(1200)));
        assert_eq!(keep_alive(60, 1200), (60, None));
        assert_eq!(keep_alive(1200, 1200), (1200, None));
        // No maximum: what the client asked for, 0 included.
        assert_eq!(keep_alive(0, 0), (0, None));
        assert_eq!(keep_alive(u16::MAX, 0), (u16::MAX, None));
    }

    #[test]
    fn connection_events_carry_hono_s_body() {
        let device = DeviceId::new("d1").expect("id");
        let n = Notification::connection(device, "connected", "client-7");
        assert_eq!(n.content_type, content_type::CONNECTION_NOTIFICATION);
        let body: serde_json::Value = serde_json::from_slice(&n.payload).expect("json");
        assert_eq!(
            body,
            serde_json::json!({"cause": "connected", "remote-id": "client-7", "source": "hono-mqtt", "data": {}})
        );
        let t = Notification::ttd(DeviceId::new("d1").expect("id"), None, -1, "c///q/#".into());
        assert_eq!(t.content_type, content_type::EMPTY_NOTIFICATION);
        assert!(t.payload.is_empty());
        assert_eq!(t.ttd, Some(-1));
    }
}
