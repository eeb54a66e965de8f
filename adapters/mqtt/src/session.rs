//! One device connection: CONNECT and authentication, then PUBLISHes to the router, keep-alive, and the
//! registry's change stream (a device that is disabled, deleted or whose credentials change is cut off).
//!
//! QoS 1 is Hono's "PUBACK only after the consumer accepted": each PUBLISH is handed to the router (a
//! known device's at once, keeping only a reply channel; one that needs the registry as a future), and
//! the PUBACKs go out in the order the PUBLISHes came in, as their outcomes arrive ([`InOrder`]), so one
//! slow consumer decision never reorders acknowledgements.
//!
//! Command subscriptions also tell applications whether the device can be reached (HONO-CONTRACT §1.2,
//! §1.3): an empty-notification event with `ttd` -1 after SUBSCRIBE, 0 after UNSUBSCRIBE or disconnect;
//! with `connection_events`, a connection event when the device connects and disconnects. Subscription
//! changes form one chain per session and notifications another ([`Step`]), so that the router and the
//! consumers see each in the order the device caused them, while a slow event store delays only the
//! notifications, never a SUBACK.
//!
//! The parts: [`connect`] (CONNECT checks, keep-alive), [`publish`] (PUBLISHes through the shared device
//! pipeline and their answers), [`subscribe`] (SUBSCRIBE/UNSUBSCRIBE and the router registrations),
//! [`commands`] (commands to the device), [`notify`] (events the adapter sends about the device); this file
//! holds the session and its packet loop.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::BytesMut;
use ferry_adapter_core::downstream::Command;
use ferry_adapter_core::limits::TenantVolume;
use ferry_adapter_core::metrics::TenantTally;
use ferry_adapter_core::pipeline::{Outcome, Refused, Waiting};
use ferry_adapter_core::registry::{Assertion, ChangeKind};
use ferry_core::ids::{DeviceId, TenantId};
use ferry_core::net::Stream;
use futures_util::stream::{FuturesOrdered, FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use rustls::pki_types::CertificateDer;
use std::collections::HashMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::connack::{self, Refusal};
use crate::metrics::Status;
use crate::topic::{OnError, Subscription};
use crate::wire::{self, Incoming, Outgoing, Reason, Version};
use crate::Shared;

mod buffers;
mod commands;
mod connect;
mod notify;
mod publish;
mod subscribe;
#[cfg(test)]
mod tests;

pub(crate) use commands::direction as command_direction;
use commands::{CommandSub, Commands};
pub use commands::{CommandTarget, NotTaken, COMMAND_QUEUE};
use connect::{authenticate, keep_alive, refusal_outcome};
use notify::Notification;

/// The adapter type name of HONO-CONTRACT §0.
pub const ADAPTER_TYPE: &str = ferry_core::hono::adapter_type::MQTT;

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
    /// HONO-CONTRACT §2.2: an oversized payload is discarded and the device disconnected.
    #[error("payload too large")]
    TooLarge,
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
    /// The tenant's counters of QoS 0 telemetry (shared by its connections).
    tally: Arc<TenantTally>,
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

/// Answers a session keeps room for once a backlog of them is over.
const ORDER_KEPT: usize = 16;

/// Timers of QoS 1 commands waiting for the device's PUBACK, each yielding its packet id.
type AckTimeouts =
    FuturesUnordered<std::pin::Pin<Box<dyn std::future::Future<Output = u16> + Send>>>;

/// What a PUBLISH turned into, awaiting its outcome.
type Pending = std::pin::Pin<Box<dyn std::future::Future<Output = Done> + Send>>;

/// Work whose answer has no place among the PUBACKs (QoS 0 telemetry, events and command responses):
/// polled by the session's task rather than a task each, and counted in its [`MAX_PENDING`]. Created on
/// first use, as most connections never need it and an idle connection should cost little. What is
/// still under way when the session ends is finished by a task of its own (a device that publishes QoS
/// 0 and disconnects at once, as `mosquitto_pub` does, loses nothing); at most [`MAX_PENDING`] such
/// sends, each bounded by its own timeouts.
#[derive(Default)]
struct Background(Option<Box<FuturesUnordered<Pending>>>);

impl Drop for Background {
    fn drop(&mut self) {
        let Some(work) = self.0.take().filter(|w| !w.is_empty()) else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn((*work).for_each(|_| std::future::ready(())));
        }
    }
}

impl Background {
    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |w| w.len())
    }

    fn push(&mut self, work: Pending) {
        self.0.get_or_insert_with(Box::default).push(work);
    }

    async fn next(&mut self) -> Option<Done> {
        next_of(&mut self.0).await
    }
}

/// Work whose answers go to the device in the order it asked (PUBACKs, SUBACKs), made on first use like
/// [`Background`]. Boxed, as the other sets are, so that a session without any holds a pointer.
#[derive(Default)]
struct InOrder(Option<Box<Ordered>>);

/// The answers a session owes, in the order of the device's packets. Most are QoS 1 messages handed
/// straight to the router ([`Entry::Ack`]: a reply channel each, polled at the head of the line only,
/// since the router settles a link's deliveries in order); the rest ([`Entry::Work`]: a SUBSCRIBE, a
/// message whose device or tenant the caches do not hold yet) are futures, driven together, whose
/// answers wait in `done` until their turn.
#[derive(Default)]
struct Ordered {
    order: std::collections::VecDeque<Entry>,
    work: FuturesOrdered<Pending>,
    done: std::collections::VecDeque<Done>,
}

enum Entry {
    /// The next answer of `work`.
    Work,
    Ack(Ack),
}

/// A QoS 1 PUBLISH handed to the router ([`ferry_adapter_core::pipeline::Pipeline::forward_now`]).
struct Ack {
    pkid: u16,
    on_error: OnError,
    /// The topic's endpoint level, for an error report.
    endpoint: &'static str,
    waiting: Waiting,
}

impl InOrder {
    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |w| w.order.len())
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether futures are still under way (a handed-over message behind them would overtake them).
    fn has_work(&self) -> bool {
        self.0
            .as_ref()
            .is_some_and(|w| !w.work.is_empty() || !w.done.is_empty())
    }

    fn push_back(&mut self, work: Pending) {
        let ordered = self.0.get_or_insert_with(Box::default);
        ordered.work.push_back(work);
        ordered.order.push_back(Entry::Work);
    }

    fn push_ack(&mut self, ack: Ack) {
        self.0
            .get_or_insert_with(Box::default)
            .order
            .push_back(Entry::Ack(ack));
    }

    async fn next(&mut self) -> Option<Done> {
        let ordered = self.0.as_mut()?;
        std::future::poll_fn(|cx| ordered.poll_next(cx)).await
    }
}

impl Ordered {
    fn poll_next(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Option<Done>> {
        while let Poll::Ready(Some(done)) = self.work.poll_next_unpin(cx) {
            self.done.push_back(done);
        }
        let done = match self.order.front_mut() {
            None => return Poll::Ready(None),
            Some(Entry::Work) => match self.done.pop_front() {
                Some(done) => done,
                None => return Poll::Pending,
            },
            Some(Entry::Ack(ack)) => match ack.waiting.poll_unpin(cx) {
                Poll::Ready(outcome) => Done::PubAck {
                    pkid: ack.pkid,
                    on_error: ack.on_error,
                    outcome,
                    report: Report::Plain(ack.endpoint),
                },
                Poll::Pending => return Poll::Pending,
            },
        };
        self.order.pop_front();
        if self.order.is_empty() && self.order.capacity() > 4 * ORDER_KEPT {
            // A backlog is over: a device that pipelined up to `MAX_PENDING` (and a read past it) gave
            // this session room it need not keep (about 5 MB for 100 devices, kept for their lifetime
            // before: B10's RSS steps).
            self.order.shrink_to(ORDER_KEPT);
            self.done.shrink_to(ORDER_KEPT);
        }
        Poll::Ready(Some(done))
    }
}

/// The next item of a set of futures that may not have been made yet.
async fn next_of<S: futures_util::Stream + Unpin>(set: &mut Option<S>) -> Option<S::Item> {
    match set {
        Some(s) => s.next().await,
        None => None,
    }
}

/// A finished piece of work whose answer goes to the device in order.
enum Done {
    /// A QoS 1 PUBLISH's outcome.
    PubAck {
        pkid: u16,
        on_error: OnError,
        outcome: Outcome,
        report: Report,
    },
    /// A QoS 0 PUBLISH that failed: only the error topic hears of it.
    Failed {
        refused: Refused,
        report: ErrorReport,
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

/// What a QoS 1 PUBLISH's error report needs, made only when there is one to send.
enum Report {
    Full(ErrorReport),
    /// A device's own message without a correlation id of its own: the endpoint; the PUBLISH's packet
    /// id is the correlation id.
    Plain(&'static str),
}

impl Report {
    fn resolve(&self, pkid: u16) -> std::borrow::Cow<'_, ErrorReport> {
        match self {
            Report::Full(r) => std::borrow::Cow::Borrowed(r),
            Report::Plain(endpoint) => std::borrow::Cow::Owned(ErrorReport {
                endpoint,
                correlation_id: pkid.to_string(),
                device_in_topic: None,
            }),
        }
    }
}

/// Where an error report about a PUBLISH goes (HONO-CONTRACT §2.2 error topic).
#[derive(Clone)]
struct ErrorReport {
    /// The endpoint level of the topic.
    endpoint: &'static str,
    correlation_id: String,
    /// The device level, when a gateway published for another device.
    device_in_topic: Option<String>,
}

/// Reads what the device sent into `buf`, which holds a buffer only while there are bytes to handle
/// ([`buffers`]): on a plain connection the wait is for the socket to become readable, without one.
async fn receive(io: &mut Stream, buf: &mut BytesMut) -> std::io::Result<usize> {
    match io {
        Stream::Plain(tcp) => std::future::poll_fn(|cx| poll_receive(tcp, buf, cx)).await,
        // rustls may hold decrypted bytes that no readiness of the socket announces: an ordinary read.
        Stream::Tls(_) => {
            buffers::ready_for_read(buf);
            io.read_buf(buf).await
        }
    }
}

fn poll_receive(
    tcp: &tokio::net::TcpStream,
    buf: &mut BytesMut,
    cx: &mut std::task::Context<'_>,
) -> Poll<std::io::Result<usize>> {
    loop {
        if tcp.poll_read_ready(cx)?.is_pending() {
            buffers::release_read(buf);
            return Poll::Pending;
        }
        buffers::ready_for_read(buf);
        match tcp.try_read_buf(buf) {
            // Readiness was stale: `try_read_buf` cleared it, so the next poll waits.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            r => return Poll::Ready(r),
        }
    }
}

/// [`receive`], for the CONNECT: the end of the stream is an error.
async fn fill(io: &mut Stream, buf: &mut BytesMut) -> Result<(), SessionError> {
    if receive(io, buf).await? == 0 {
        return Err(SessionError::Closed("peer closed the connection"));
    }
    Ok(())
}

/// Serves one connection until it ends.
pub async fn serve(
    mut io: Stream,
    peer: SocketAddr,
    client_cert: Option<CertificateDer<'static>>,
    // Held until the connection ends (`max_sockets`).
    socket: crate::Permit,
    connecting: crate::Permit,
    shared: Arc<Shared>,
) -> Result<(), SessionError> {
    // Lent by `receive` while there are bytes to handle.
    let mut buf = BytesMut::new();
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
                code: connack::UNACCEPTABLE_PROTOCOL_LEVEL,
                server_keep_alive: None,
            };
            wire::write(Version::V311, &refusal, &mut out)?;
            io.write_all(&out).await?;
            return Err(wire::WireError::UnsupportedVersion(level).into());
        }
        other => other?,
    };

    // Phases an idle session is past are boxed: a task's future is as large as its largest state,
    // and these (registry lookups) would otherwise be held by every idle connection (B6).
    let authenticated = Box::pin(authenticate(&shared, &connect, client_cert.as_ref(), peer)).await;
    // Authentication is part of connecting: a flood of CONNECTs waiting for the registry counts too.
    drop(connecting);
    // Not kept for the life of the connection: only the client id and keep-alive are needed from here.
    drop(client_cert);
    let wire::Connect {
        client_id,
        keep_alive: requested_keep_alive,
        username,
        password,
    } = connect;
    drop((username, password));
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
            let mut out = BytesMut::new();
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
    let (keep_alive, server_keep_alive) =
        keep_alive(requested_keep_alive, shared.config.max_keep_alive_secs);
    let mut session = Session {
        shared: shared.clone(),
        version,
        who,
        keep_alive: Duration::from_secs(u64::from(keep_alive)),
        server_keep_alive,
        client_id,
        peer,
        out: BytesMut::new(),
        id: NEXT_SESSION.fetch_add(1, Ordering::Relaxed),
        rare: None,
        changes: None,
        notices: None,
        announced: false,
        presence_reported: false,
    };
    let result = session.run(&mut io, &mut buf, max_packet).await;
    // Commands that come from now on are released at once rather than queued for nobody.
    if let Some(rare) = &mut session.rare {
        rare.commands = None;
    }
    Box::pin(session.cleanup()).await;
    gauge.dec();
    shared.connections.fetch_sub(1, Ordering::AcqRel);
    drop(socket);
    result
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
    /// What only devices that take commands, report errors or act as gateways need, made when first
    /// needed.
    rare: Option<Box<Rare>>,
    /// The last [`Step`] of the chain of subscription changes (router registrations).
    changes: Option<oneshot::Receiver<()>>,
    /// The last [`Step`] of the chain of notifications.
    notices: Option<oneshot::Receiver<()>>,
    /// Whether a `connected` connection event went out (so a `disconnected` one follows).
    announced: bool,
    /// The router was told this device connected (and will be told when it goes).
    presence_reported: bool,
}

/// The parts of a session that most devices never use (commands, error reports, gateways): boxed, so
/// that their sessions carry a pointer instead (B6: 250 bytes of every idle connection's task).
#[derive(Default)]
struct Rare {
    /// The queue of commands for this session (almost a KiB), made when the device first subscribes
    /// to commands.
    commands: Option<Commands>,
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
}

static NEXT_SESSION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Session {
    /// The rarely used parts, made on first use.
    fn rare(&mut self) -> &mut Rare {
        self.rare.get_or_insert_with(Box::default)
    }
    fn error_sub(&self) -> Option<&Subscription> {
        self.rare.as_ref()?.error_sub.as_ref()
    }
    /// The QoS 1 command that packet id `pkid` carried, no longer waiting for the device.
    fn acknowledged(&mut self, pkid: u16) -> Option<Command> {
        self.rare.as_mut()?.inflight.remove(&pkid)
    }
    fn write(&mut self, packet: &Outgoing<'_>) -> Result<(), SessionError> {
        buffers::ready_for_write(&mut self.out);
        wire::write(self.version, packet, &mut self.out)?;
        Ok(())
    }
    /// Writes what [`Self::write`] gathered, and lends the buffer on.
    async fn flush(&mut self, io: &mut Stream) -> std::io::Result<()> {
        io.write_all(&self.out).await?;
        buffers::release_write(&mut self.out);
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
    async fn run(
        &mut self,
        io: &mut Stream,
        buf: &mut BytesMut,
        max_packet: usize,
    ) -> Result<(), SessionError> {
        // Made on first use, as `pending` and `background` are: each set of futures allocates.
        let mut ack_timeouts: Option<Box<AckTimeouts>> = None;
        self.write(&Outgoing::ConnAck {
            code: connack::ACCEPTED,
            server_keep_alive: self.server_keep_alive,
        })?;
        self.flush(io).await?;
        match &self.who {
            Some(who) => {
                tracing::debug!(peer = %self.peer, client = %self.client_id, tenant = %who.tenant, device = %who.device, "device connected");
            }
            None => {
                tracing::debug!(peer = %self.peer, client = %self.client_id, "unauthenticated device connected");
            }
        }
        // Presence (docs/console.md): the router hears of every authenticated connection, whether
        // or not applications get connection events.
        if let Some(who) = &self.who {
            self.shared.command_link.report_presence(
                &who.tenant,
                &who.device,
                ferry_core::hono::adapter_type::MQTT,
                &self.remote_id(),
                self.id,
                true,
            );
            self.presence_reported = true;
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
        let mut pending = InOrder::default();
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
                        closing = Some(SessionError::TooLarge);
                    }
                    Err(e) => closing = Some(e.into()),
                }
            }
            if !self.out.is_empty() {
                self.flush(io).await?;
            }
            if let Some(e) = closing {
                if self.version == Version::V5 {
                    let reason = match e {
                        SessionError::TooLarge => Reason::PacketTooLarge,
                        SessionError::KeepAlive => Reason::KeepAliveTimeout,
                        _ => Reason::UnspecifiedError,
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
                buffers::release_read(buf);
            }
            tokio::select! {
                r = receive(io, buf), if reading => match r {
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
                    // Every answer that is ready goes out in the same write (the router settles
                    // deliveries in batches).
                    while closing.is_none() {
                        let Some(Some(done)) = pending.next().now_or_never() else {
                            break;
                        };
                        if let Err(e) = self.on_done(done) {
                            closing = Some(e);
                        }
                    }
                }
                Some(done) = background.next(), if background.len() > 0 => {
                    if let Err(e) = self.on_done(done) {
                        closing = Some(e);
                    }
                }
                Some(command) = commands::next(&mut self.rare) => {
                    if let Some(pkid) = self.deliver_command(*command) {
                        let wait = Duration::from_millis(self.shared.config.command_ack_timeout_ms);
                        ack_timeouts.get_or_insert_with(Box::default).push(Box::pin(async move {
                            tokio::time::sleep(wait).await;
                            pkid
                        }));
                    }
                }
                Some(pkid) = next_of(&mut ack_timeouts), if ack_timeouts.as_ref().is_some_and(|a| !a.is_empty()) => {
                    // No PUBACK in time: the application may retry (HONO-CONTRACT §2.2).
                    if let Some(c) = self.acknowledged(pkid) {
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
                    } else if relevant && !Box::pin(self.still_allowed()).await {
                        closing = Some(SessionError::Closed("device no longer allowed by the registry"));
                    }
                }
                () = &mut stop => closing = Some(SessionError::Closed("adapter shutting down")),
            }
        }
    }
    fn on_packet(
        &mut self,
        packet: Incoming,
        pending: &mut InOrder,
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
                if let Some(c) = self.acknowledged(pkid) {
                    self.count_command(&c, Status::Forwarded);
                    c.accept();
                }
                Ok(())
            }
            Incoming::Other => Ok(()),
        }
    }
    fn on_done(&mut self, done: Done) -> Result<(), SessionError> {
        match done {
            Done::PubAck {
                pkid,
                on_error,
                outcome,
                report,
            } => self.answer(pkid, on_error, outcome, &report),
            Done::Failed { refused, report } => {
                self.report_error(refused, &report);
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
}
