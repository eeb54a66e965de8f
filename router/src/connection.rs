//! One AMQP 1.0 connection, server side: protocol header and SASL, then the connection / session / link
//! state machine, on the sans-IO [`codec`](crate::codec).
//!
//! The task owns its socket and all its sessions and links; other connections reach it only through its
//! [`ToConn`] channel (deliveries to send, outcomes to relay, credit wake-ups). Each loop turn reads what
//! arrived, handles every complete frame, handles every queued request, and writes what it produced in
//! one go, so a busy connection batches frames per syscall.
//!
//! Our channel and handle numbers mirror the peer's (the peer's are unique within its own space, so ours
//! are too), which keeps the bookkeeping to one map per session. Link names are not used as keys: links
//! are identified by (channel, handle) and a process-unique [`LinkId`], so a client may attach a sender and
//! a receiver of the same name (Proton names links after their address).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use fe2o3_amqp_types::definitions::{
    AmqpError, ConnectionError, ErrorCondition, Handle, LinkError, ReceiverSettleMode, Role,
    SenderSettleMode,
};
use fe2o3_amqp_types::messaging::{
    Accepted, DeliveryState, Rejected, Source, Target, TargetArchetype,
};
use fe2o3_amqp_types::performatives::{
    Attach, Begin, Close, Detach, Disposition, End, Flow, Open, Performative, Transfer,
};
use fe2o3_amqp_types::primitives::{Binary, Symbol};
use fe2o3_amqp_types::sasl::{SaslCode, SaslMechanisms, SaslOutcome};
use serde_amqp::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::auth::{Address, Direction, Principal};
use crate::codec::{self, Frame, MessageEdit, ProtocolId, SaslFrame};
use crate::events::{EventStore, NewEvent};
use crate::hub::{
    self, AddressRef, CommandTarget, ConnHandle, Consumer, Kind, LinkId, Origin, Producer, Routed,
    ToConn,
};
use crate::metrics::Outcome;
use crate::Shared;
use ferry_core::hono::app_property;
use ferry_core::hono::command_internal::{ALL_DEVICES, REGISTER, SET_LAST_GATEWAY, UNREGISTER};

/// Our largest frame; peers are told in Open.
pub const MAX_FRAME_SIZE: u32 = 64 * 1024;
/// Session windows we advertise, in transfer frames.
const INCOMING_WINDOW: u32 = 8192;
const OUTGOING_WINDOW: u32 = u32::MAX >> 1;
/// Credit a producer link gets at a time.
const PRODUCER_WINDOW: u32 = 256;
/// The most often the router sends heartbeats or checks for idle peers.
const MIN_HEARTBEAT: Duration = Duration::from_millis(500);
/// The highest channel a peer may begin a session on (our open's channel-max).
const CHANNEL_MAX: u16 = 255;
/// The highest link handle a peer may use in a session (our begin's handle-max).
const HANDLE_MAX: u32 = 1023;
/// Largest message accepted, across its transfer frames.
const MAX_MESSAGE_SIZE: usize = 1024 * 1024;
/// Time allowed for the protocol header and SASL exchange.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

type Error = fe2o3_amqp_types::definitions::Error;

fn error(condition: ErrorCondition, description: impl Into<String>) -> Error {
    Error {
        condition,
        description: Some(description.into()),
        info: None,
    }
}

fn custom(symbol: &str, description: impl Into<String>) -> Error {
    error(ErrorCondition::Custom(Symbol::from(symbol)), description)
}

fn rejected(condition: ErrorCondition, description: &str) -> DeliveryState {
    DeliveryState::Rejected(Rejected {
        error: Some(error(condition, description)),
    })
}

/// A command with the router's `via` (the gateway it goes to, HONO-CONTRACT §1.3), replacing any an
/// application set; `None` removes it. `None` back when the message cannot be rewritten.
fn with_via(message: &Bytes, gateway: Option<&str>) -> Option<Bytes> {
    let view = codec::parse_message(message).ok()?;
    let set = gateway.map(|g| [(app_property::VIA, g)]);
    let edit = MessageEdit {
        strip_app_properties: &[app_property::VIA],
        set_app_properties: set.as_ref().map_or(&[][..], |s| &s[..]),
        ..MessageEdit::default()
    };
    let mut out = Vec::with_capacity(message.len() + 32);
    codec::rewrite_message(&view, &edit, &mut out).ok()?;
    Some(Bytes::from(out))
}

fn accepted() -> DeliveryState {
    DeliveryState::Accepted(Accepted {})
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("authentication failed")]
    Auth,
    #[error("handshake timed out")]
    Timeout,
}

struct Link {
    id: LinkId,
    direction: Direction,
    addr: AddressRef,
    /// In: the producer's registration; Out: the consumer's.
    producer: Option<Arc<Producer>>,
    consumer: Option<Arc<Consumer>>,
    // In (we receive):
    credit: u32,
    delivery_count: u32,
    partial: Option<Partial>,
    // Out (we send):
    peer_delivery_count: u32,
    peer_credit: u32,
    sent_count: u32,
    drain: bool,
    settled_mode: bool,
}

/// Where an incoming delivery came from, for its settlement.
#[derive(Debug, Clone, Copy)]
struct Incoming {
    channel: u16,
    delivery_id: u32,
    settled: bool,
    size: usize,
}

struct Partial {
    delivery_id: u32,
    settled: bool,
    buf: BytesMut,
}

struct Session {
    next_outgoing_id: u32,
    next_incoming_id: u32,
    incoming_since_flow: u32,
    remote_incoming_window: u32,
    next_delivery_id: u32,
    links: HashMap<u32, Link>,
    /// Our deliveries the peer has not settled: delivery id → (handle, origin).
    unsettled: HashMap<u32, (u32, Origin)>,
    /// Transfers waiting for the peer's incoming window.
    waiting: VecDeque<(u32, Bytes, bool, Origin)>,
}

struct Conn<S: EventStore> {
    shared: Arc<Shared<S>>,
    handle: ConnHandle,
    principal: Principal,
    out: BytesMut,
    max_frame_out: u32,
    sessions: HashMap<u16, Session>,
    links: HashMap<LinkId, (u16, u32)>,
    closed: bool,
    /// Bytes of deliveries (as counted in `handle.queued_bytes`) encoded into `out` since the last write.
    unwritten: usize,
    /// Some consumer of this connection was choked (too many bytes held or unsettled): once none is, the
    /// hub hears their credit again, which wakes the producers that starved meanwhile.
    choked: bool,
}

/// Serves one connection until it closes.
pub async fn serve<IO, S>(
    mut io: IO,
    peer: SocketAddr,
    shared: Arc<Shared<S>>,
) -> Result<(), ConnError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    S: EventStore,
{
    let mut inbuf = BytesMut::with_capacity(16 * 1024);
    let principal = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        handshake(&mut io, &mut inbuf, &shared, peer),
    )
    .await
    .map_err(|_| ConnError::Timeout)??;
    tracing::debug!(%peer, ?principal, "AMQP connection authenticated");

    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut conn = Conn {
        shared: shared.clone(),
        handle: ConnHandle::new(tx),
        principal,
        out: BytesMut::with_capacity(16 * 1024),
        max_frame_out: 512,
        sessions: HashMap::new(),
        links: HashMap::new(),
        closed: false,
        unwritten: 0,
        choked: false,
    };
    let Some(_user_slot) = UserSlot::take(&shared, &conn.principal) else {
        let err = error(
            ErrorCondition::AmqpError(AmqpError::ResourceLimitExceeded),
            "too many connections for this user",
        );
        return conn.refuse_connection(&mut io, err).await;
    };
    shared.hub.metrics.connections.inc();
    let result = conn.run(&mut io, &mut inbuf, &mut rx).await;
    conn.cleanup();
    shared.hub.metrics.connections.dec();
    result
}

/// An application user's share of `max_connections_per_user`, given back when the connection ends.
struct UserSlot<'a, S: EventStore> {
    shared: &'a Shared<S>,
    user: Option<String>,
}

impl<'a, S: EventStore> UserSlot<'a, S> {
    /// `None` when the user already has as many connections as allowed. Adapters are not counted.
    fn take(shared: &'a Shared<S>, principal: &Principal) -> Option<Self> {
        let Principal::Application(app) = principal else {
            return Some(Self { shared, user: None });
        };
        let mut per_user = shared
            .per_user
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let open = per_user.entry(app.name.clone()).or_insert(0);
        if *open >= shared.config.max_connections_per_user {
            return None;
        }
        *open += 1;
        Some(Self {
            shared,
            user: Some(app.name.clone()),
        })
    }
}

impl<S: EventStore> Drop for UserSlot<'_, S> {
    fn drop(&mut self) {
        let Some(user) = self.user.take() else {
            return;
        };
        let mut per_user = self
            .shared
            .per_user
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(open) = per_user.get_mut(&user) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                per_user.remove(&user);
            }
        }
    }
}

async fn read_more<IO: AsyncRead + Unpin>(
    io: &mut IO,
    buf: &mut BytesMut,
) -> Result<(), ConnError> {
    if io.read_buf(buf).await? == 0 {
        return Err(ConnError::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    Ok(())
}

async fn read_header<IO: AsyncRead + Unpin>(
    io: &mut IO,
    buf: &mut BytesMut,
) -> Result<ProtocolId, ConnError> {
    loop {
        match codec::parse_protocol_header(buf) {
            Ok(Some(id)) => {
                let _ = buf.split_to(8);
                return Ok(id);
            }
            Ok(None) => read_more(io, buf).await?,
            Err(e) => return Err(ConnError::Protocol(e.to_string())),
        }
    }
}

/// Protocol header, SASL PLAIN, AMQP header. Returns who the peer is.
async fn handshake<IO, S>(
    io: &mut IO,
    buf: &mut BytesMut,
    shared: &Shared<S>,
    peer: SocketAddr,
) -> Result<Principal, ConnError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    S: EventStore,
{
    match read_header(io, buf).await? {
        ProtocolId::Sasl => {}
        _ => {
            // We require SASL: answer with the header we speak and close (AMQP 1.0 §2.2).
            io.write_all(codec::SASL_HEADER).await?;
            return Err(ConnError::Protocol("client did not start SASL".into()));
        }
    }
    let mut out = BytesMut::new();
    out.extend_from_slice(codec::SASL_HEADER);
    codec::encode_sasl(
        &SaslFrame::Mechanisms(SaslMechanisms {
            sasl_server_mechanisms: vec![Symbol::from("PLAIN")].into(),
        }),
        &mut out,
    )
    .map_err(|e| ConnError::Protocol(e.to_string()))?;
    io.write_all(&out).await?;
    let init = loop {
        match codec::decode_frame(buf, 8192) {
            Ok(Some((Frame::Sasl(SaslFrame::Init(init)), n))) => {
                let _ = buf.split_to(n);
                break init;
            }
            Ok(Some(_)) => return Err(ConnError::Protocol("expected sasl-init".into())),
            Ok(None) => read_more(io, buf).await?,
            Err(e) => return Err(ConnError::Protocol(e.to_string())),
        }
    };
    let principal = if init.mechanism.as_str() == "PLAIN" {
        let response = init
            .initial_response
            .map(|b| b.into_vec())
            .unwrap_or_default();
        let mut parts = response.split(|b| *b == 0);
        let (_authzid, user, pass) = (parts.next(), parts.next(), parts.next());
        match (user.map(std::str::from_utf8), pass.map(std::str::from_utf8)) {
            (Some(Ok(u)), Some(Ok(p))) => shared.auth.authenticate(u, p, Some(peer.ip())).await,
            _ => None,
        }
    } else {
        None
    };
    let mut out = BytesMut::new();
    let code = if principal.is_some() {
        SaslCode::Ok
    } else {
        SaslCode::Auth
    };
    codec::encode_sasl(
        &SaslFrame::Outcome(SaslOutcome {
            code,
            additional_data: None,
        }),
        &mut out,
    )
    .map_err(|e| ConnError::Protocol(e.to_string()))?;
    io.write_all(&out).await?;
    let principal = principal.ok_or(ConnError::Auth)?;
    match read_header(io, buf).await? {
        ProtocolId::Amqp => {}
        _ => {
            return Err(ConnError::Protocol(
                "expected the AMQP header after SASL".into(),
            ))
        }
    }
    io.write_all(codec::AMQP_HEADER).await?;
    Ok(principal)
}

impl<S: EventStore> Conn<S> {
    async fn run<IO: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut IO,
        inbuf: &mut BytesMut,
        rx: &mut mpsc::UnboundedReceiver<ToConn>,
    ) -> Result<(), ConnError> {
        // Open first, within the handshake time; anything else is answered with open + close (AMQP 1.0
        // §2.4.3: a close may only follow an open) so the peer learns why.
        let first = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
            loop {
                match codec::decode_frame(inbuf, MAX_FRAME_SIZE) {
                    Ok(Some((
                        Frame::Amqp {
                            performative: Some(Performative::Open(open)),
                            ..
                        },
                        n,
                    ))) => {
                        let _ = inbuf.split_to(n);
                        return Ok(open);
                    }
                    Ok(Some(_)) => {
                        return Err(error(
                            ErrorCondition::AmqpError(AmqpError::IllegalState),
                            "expected open",
                        ))
                    }
                    Ok(None) => {
                        if read_more(io, inbuf).await.is_err() {
                            return Err(error(
                                ErrorCondition::AmqpError(AmqpError::IllegalState),
                                "closed before open",
                            ));
                        }
                    }
                    Err(e) => return Err(error(e.condition(), e.to_string())),
                }
            }
        })
        .await;
        let open = match first {
            Ok(Ok(open)) => open,
            Ok(Err(err)) => return self.refuse_connection(io, err).await,
            Err(_) => {
                let err = error(
                    ErrorCondition::AmqpError(AmqpError::ResourceLimitExceeded),
                    "no open in time",
                );
                return self.refuse_connection(io, err).await;
            }
        };
        self.max_frame_out = open.max_frame_size.0.clamp(512, MAX_FRAME_SIZE);
        let peer_idle = open
            .idle_time_out
            .filter(|t| *t > 0)
            .map(|t| Duration::from_millis(u64::from(t)));
        let our_idle = self.shared.config.idle_timeout;
        self.send(
            0,
            Performative::Open(Open {
                container_id: "ferry-router".into(),
                hostname: None,
                max_frame_size: MAX_FRAME_SIZE.into(),
                channel_max: CHANNEL_MAX.into(),
                idle_time_out: u32::try_from(our_idle.as_millis()).ok(),
                outgoing_locales: None,
                incoming_locales: None,
                offered_capabilities: None,
                desired_capabilities: None,
                properties: None,
            }),
        );
        // Clients pipeline begin and attach behind their open: handle what has already arrived.
        self.handle_input(inbuf);
        io.write_all(&self.out).await?;
        self.out.clear();

        // Heartbeats at half the peer's idle-time-out, but never more often than MIN_HEARTBEAT (a peer asking
        // for 1 ms would otherwise get 2,000 frames a second); our own idle check runs at half of ours,
        // whether or not the peer asked for heartbeats.
        let heartbeat_every = peer_idle.map(|d| (d / 2).max(MIN_HEARTBEAT));
        let idle_check = (!our_idle.is_zero()).then_some(our_idle / 2);
        let tick_every = match (heartbeat_every, idle_check) {
            (Some(h), Some(c)) => h.min(c),
            (Some(t), None) | (None, Some(t)) => t,
            (None, None) => Duration::from_secs(3600),
        }
        .max(MIN_HEARTBEAT);
        let mut heartbeat = tokio::time::interval(tick_every);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_read = Instant::now();
        let mut last_write = Instant::now();
        let stop = self.shared.shutdown.clone().wait();
        tokio::pin!(stop);

        while !self.closed {
            tokio::select! {
                r = io.read_buf(inbuf) => {
                    if r? == 0 {
                        return Ok(());
                    }
                    last_read = Instant::now();
                    self.handle_input(inbuf);
                }
                Some(msg) = rx.recv() => {
                    self.handle_request(msg);
                    // Take what else is queued, so that a burst goes out in one write.
                    for _ in 0..1024 {
                        match rx.try_recv() {
                            Ok(m) => self.handle_request(m),
                            Err(_) => break,
                        }
                    }
                }
                _ = heartbeat.tick() => {
                    if !our_idle.is_zero() && last_read.elapsed() > our_idle * 2 {
                        self.close(Some(error(
                            ErrorCondition::AmqpError(AmqpError::ResourceLimitExceeded),
                            "idle timeout",
                        )));
                    } else if heartbeat_every
                        .is_some_and(|h| last_write.elapsed() + tick_every > h)
                        && self.out.is_empty()
                    {
                        codec::encode_heartbeat(&mut self.out);
                    }
                }
                () = &mut stop => {
                    self.close(Some(error(
                        ErrorCondition::ConnectionError(ConnectionError::ConnectionForced),
                        "router shutting down",
                    )));
                }
            }
            if !self.out.is_empty() {
                io.write_all(&self.out).await?;
                self.out.clear();
                self.handle.written(std::mem::take(&mut self.unwritten));
                last_write = Instant::now();
            }
            if self.choked {
                self.unchoke();
            }
        }
        io.flush().await?;
        Ok(())
    }

    /// Answers a peer that did not open properly: our open, then a close with the reason.
    async fn refuse_connection<IO: AsyncWrite + Unpin>(
        &mut self,
        io: &mut IO,
        err: Error,
    ) -> Result<(), ConnError> {
        let description = err.description.clone().unwrap_or_default();
        self.send(
            0,
            Performative::Open(Open {
                container_id: "ferry-router".into(),
                hostname: None,
                max_frame_size: MAX_FRAME_SIZE.into(),
                channel_max: CHANNEL_MAX.into(),
                idle_time_out: None,
                outgoing_locales: None,
                incoming_locales: None,
                offered_capabilities: None,
                desired_capabilities: None,
                properties: None,
            }),
        );
        self.close(Some(err));
        let _ = io.write_all(&self.out).await;
        let _ = io.flush().await;
        Err(ConnError::Protocol(description))
    }

    fn close(&mut self, err: Option<Error>) {
        if !self.closed {
            if let Err(e) = codec::encode_frame(
                0,
                &Performative::Close(Close { error: err }),
                &[],
                &mut self.out,
            ) {
                tracing::warn!(error = %e, "cannot encode close");
            }
            self.closed = true;
        }
    }

    fn send(&mut self, channel: u16, p: Performative) {
        if let Err(e) = codec::encode_frame(channel, &p, &[], &mut self.out) {
            // Our own performatives always encode; if one does not, the connection cannot go on.
            tracing::warn!(error = %e, "cannot encode a performative");
            self.close(Some(error(
                ErrorCondition::AmqpError(AmqpError::InternalError),
                "encoding failed",
            )));
        }
    }

    fn handle_input(&mut self, inbuf: &mut BytesMut) {
        while !self.closed {
            match codec::decode_frame(inbuf, MAX_FRAME_SIZE) {
                Ok(Some((frame, n))) => {
                    // The payload borrows the buffer; copy the little we keep before consuming it.
                    match frame {
                        Frame::Amqp {
                            channel,
                            performative: Some(p),
                            payload,
                        } => {
                            let payload = Bytes::copy_from_slice(payload);
                            let _ = inbuf.split_to(n);
                            self.handle_frame(channel, p, payload);
                        }
                        Frame::Amqp {
                            performative: None, ..
                        } => {
                            let _ = inbuf.split_to(n);
                        }
                        Frame::Sasl(_) => {
                            let _ = inbuf.split_to(n);
                            self.close(Some(error(
                                ErrorCondition::ConnectionError(ConnectionError::FramingError),
                                "SASL frame after the SASL exchange",
                            )));
                        }
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    self.close(Some(error(e.condition(), e.to_string())));
                    return;
                }
            }
        }
    }

    fn handle_frame(&mut self, channel: u16, p: Performative, payload: Bytes) {
        match p {
            Performative::Open(_) => self.close(Some(error(
                ErrorCondition::AmqpError(AmqpError::IllegalState),
                "open received twice",
            ))),
            Performative::Begin(begin) => self.on_begin(channel, begin),
            Performative::Attach(attach) => self.on_attach(channel, attach),
            Performative::Flow(flow) => self.on_flow(channel, flow),
            Performative::Transfer(transfer) => self.on_transfer(channel, transfer, payload),
            Performative::Disposition(d) => self.on_disposition(channel, d),
            Performative::Detach(detach) => self.on_detach(channel, detach),
            Performative::End(_) => {
                self.end_session(channel);
                self.send(channel, Performative::End(End { error: None }));
            }
            Performative::Close(_) => {
                self.close(None);
            }
        }
    }

    fn session_error(&mut self, description: &str) {
        self.close(Some(error(
            ErrorCondition::AmqpError(AmqpError::IllegalState),
            description,
        )));
    }

    fn on_begin(&mut self, channel: u16, begin: Begin) {
        if self.sessions.contains_key(&channel) {
            return self.session_error("channel already in use");
        }
        if channel > CHANNEL_MAX {
            // Our open said channel-max 255: a begin above it is a connection error (AMQP 1.0 §2.7.1).
            return self.close(Some(error(
                ErrorCondition::ConnectionError(ConnectionError::FramingError),
                "channel above channel-max",
            )));
        }
        self.sessions.insert(
            channel,
            Session {
                next_outgoing_id: 0,
                next_incoming_id: begin.next_outgoing_id,
                incoming_since_flow: 0,
                remote_incoming_window: begin.incoming_window,
                next_delivery_id: 0,
                links: HashMap::new(),
                unsettled: HashMap::new(),
                waiting: VecDeque::new(),
            },
        );
        self.send(
            channel,
            Performative::Begin(Begin {
                remote_channel: Some(channel),
                next_outgoing_id: 0,
                incoming_window: INCOMING_WINDOW,
                outgoing_window: OUTGOING_WINDOW,
                handle_max: Handle(HANDLE_MAX),
                offered_capabilities: None,
                desired_capabilities: None,
                properties: None,
            }),
        );
    }

    /// Answers an attach we refuse: a mirror attach without terminus, then a closing detach with the reason.
    fn refuse_attach(&mut self, channel: u16, attach: &Attach, err: Error) {
        let we_send = matches!(attach.role, Role::Receiver);
        let role = if we_send {
            Role::Sender
        } else {
            Role::Receiver
        };
        self.send(
            channel,
            Performative::Attach(Attach {
                name: attach.name.clone(),
                handle: attach.handle.clone(),
                role,
                snd_settle_mode: attach.snd_settle_mode.clone(),
                rcv_settle_mode: attach.rcv_settle_mode.clone(),
                source: None,
                target: None,
                unsettled: None,
                incomplete_unsettled: false,
                initial_delivery_count: we_send.then_some(0),
                max_message_size: None,
                offered_capabilities: None,
                desired_capabilities: None,
                properties: None,
            }),
        );
        self.send(
            channel,
            Performative::Detach(Detach {
                handle: attach.handle.clone(),
                closed: true,
                error: Some(err),
            }),
        );
    }

    fn on_attach(&mut self, channel: u16, attach: Attach) {
        if !self.sessions.contains_key(&channel) {
            return self.session_error("attach on an unknown session");
        }
        let handle = attach.handle.0;
        if self
            .sessions
            .get(&channel)
            .is_some_and(|s| s.links.contains_key(&handle))
        {
            return self.session_error("handle already in use");
        }
        if handle > HANDLE_MAX {
            // Our begin said handle-max: beyond it is an error of the session (AMQP 1.0 §2.7.2).
            return self.close(Some(error(
                ErrorCondition::ConnectionError(ConnectionError::FramingError),
                "handle above handle-max",
            )));
        }
        if self.links.len() >= self.shared.config.max_links_per_connection {
            return self.refuse_attach(
                channel,
                &attach,
                error(
                    ErrorCondition::AmqpError(AmqpError::ResourceLimitExceeded),
                    "too many links on this connection",
                ),
            );
        }
        // The peer's role tells the direction: a sending peer sends to us.
        let (direction, address) = match attach.role {
            Role::Sender => (
                Direction::In,
                attach.target.as_deref().and_then(|t| match t {
                    TargetArchetype::Target(t) => t.address.clone(),
                    #[allow(unreachable_patterns)]
                    _ => None,
                }),
            ),
            Role::Receiver => (
                Direction::Out,
                attach.source.as_deref().and_then(|s| s.address.clone()),
            ),
        };
        let Some(address) = address.as_deref().and_then(Address::parse) else {
            return self.refuse_attach(
                channel,
                &attach,
                error(
                    ErrorCondition::AmqpError(AmqpError::NotFound),
                    "no such address",
                ),
            );
        };
        if !self.principal.may_attach(&address, direction) {
            return self.refuse_attach(
                channel,
                &attach,
                error(
                    ErrorCondition::AmqpError(AmqpError::UnauthorizedAccess),
                    "not authorized for this address",
                ),
            );
        }
        let hub = &self.shared.hub;
        let addr = match &address {
            Address::Telemetry(t) => hub.address(Kind::Telemetry, t),
            Address::Event(t) => hub.address(Kind::Event, t),
            Address::Command(t) => hub.address(Kind::Command, t),
            Address::CommandResponse(t, reply) => {
                hub.address_with(Kind::CommandResponse, t, Some(reply))
            }
            Address::CommandResponses => hub.address(Kind::CommandResponse, &hub::internal_scope()),
            Address::CommandInternal(instance) => hub.address(Kind::CommandInternal, instance),
        };
        let kind = addr.kind.clone();
        if direction == Direction::Out
            && hub.consumers(&addr) >= self.shared.config.max_consumers_per_address
        {
            return self.refuse_attach(
                channel,
                &attach,
                error(
                    ErrorCondition::AmqpError(AmqpError::ResourceLimitExceeded),
                    "too many consumers on this address",
                ),
            );
        }
        // Settle modes of HONO-CONTRACT §1.1 / §1.2; anything else closes the link.
        let rcv_first = matches!(attach.rcv_settle_mode, ReceiverSettleMode::First);
        let snd_settled = matches!(attach.snd_settle_mode, SenderSettleMode::Settled);
        let supported = rcv_first && (kind != Kind::Event || !snd_settled);
        if !supported {
            return self.refuse_attach(
                channel,
                &attach,
                custom(
                    ferry_core::hono::condition::UNSUPPORTED_DELIVERY_MODE,
                    "unsupported settle modes for this address",
                ),
            );
        }

        let id = hub::next_id();
        let mut link = Link {
            id,
            direction,
            addr: addr.clone(),
            producer: None,
            consumer: None,
            credit: 0,
            delivery_count: attach.initial_delivery_count.unwrap_or(0),
            partial: None,
            peer_delivery_count: 0,
            peer_credit: 0,
            sent_count: 0,
            drain: false,
            settled_mode: snd_settled,
        };
        match direction {
            Direction::In => {
                let unsettled = matches!(attach.snd_settle_mode, SenderSettleMode::Unsettled);
                link.producer = Some(self.shared.hub.attach_producer(
                    self.handle.clone(),
                    id,
                    unsettled,
                ))
            }
            Direction::Out => {
                link.consumer = Some(self.shared.hub.attach_consumer(
                    &mut link.addr,
                    self.handle.clone(),
                    id,
                ));
            }
        }
        let we_send = matches!(attach.role, Role::Receiver);
        let role = if we_send {
            Role::Sender
        } else {
            Role::Receiver
        };
        self.send(
            channel,
            Performative::Attach(Attach {
                name: attach.name.clone(),
                handle: attach.handle.clone(),
                role,
                snd_settle_mode: attach.snd_settle_mode.clone(),
                rcv_settle_mode: ReceiverSettleMode::First,
                source: attach
                    .source
                    .clone()
                    .or_else(|| Some(Box::new(Source::default()))),
                target: attach
                    .target
                    .clone()
                    .or_else(|| Some(Box::new(TargetArchetype::Target(Target::default())))),
                unsettled: None,
                incomplete_unsettled: false,
                initial_delivery_count: we_send.then_some(0),
                max_message_size: Some(MAX_MESSAGE_SIZE as u64),
                offered_capabilities: None,
                desired_capabilities: None,
                properties: None,
            }),
        );
        self.links.insert(id, (channel, handle));
        self.shared.hub.metrics.links.inc();
        if let Some(session) = self.sessions.get_mut(&channel) {
            session.links.insert(handle, link);
        }
        if direction == Direction::In {
            self.top_up_credit(channel, handle);
        }
    }

    /// Gives a producer link credit up to its window, if its address may take more now.
    fn top_up_credit(&mut self, channel: u16, handle: u32) {
        let Some(session) = self.sessions.get_mut(&channel) else {
            return;
        };
        let Some(link) = session.links.get_mut(&handle) else {
            return;
        };
        let Some(producer) = &link.producer else {
            return;
        };
        if link.credit > PRODUCER_WINDOW / 2 {
            return;
        }
        let credit =
            PRODUCER_WINDOW.min(self.shared.hub.producer_credit_limit(&link.addr, producer));
        if credit <= link.credit {
            return;
        }
        link.credit = credit;
        let flow = Flow {
            next_incoming_id: Some(session.next_incoming_id),
            incoming_window: INCOMING_WINDOW,
            next_outgoing_id: session.next_outgoing_id,
            outgoing_window: OUTGOING_WINDOW,
            handle: Some(Handle(handle)),
            delivery_count: Some(link.delivery_count),
            link_credit: Some(link.credit),
            available: None,
            drain: false,
            echo: false,
            properties: None,
        };
        session.incoming_since_flow = 0;
        self.send(channel, Performative::Flow(flow));
    }

    fn on_flow(&mut self, channel: u16, flow: Flow) {
        let Some(session) = self.sessions.get_mut(&channel) else {
            return self.session_error("flow on an unknown session");
        };
        session.remote_incoming_window = flow
            .next_incoming_id
            .unwrap_or(0)
            .wrapping_add(flow.incoming_window)
            .wrapping_sub(session.next_outgoing_id);
        let Some(handle) = flow.handle.map(|h| h.0) else {
            self.flush_waiting(channel);
            if flow.echo {
                self.session_flow(channel);
            }
            return;
        };
        let Some(link) = session.links.get_mut(&handle) else {
            return;
        };
        if link.direction == Direction::Out {
            link.peer_delivery_count = flow.delivery_count.unwrap_or(link.sent_count);
            link.peer_credit = flow.link_credit.unwrap_or(0);
            link.drain = flow.drain;
            self.update_consumer_credit(channel, handle);
            self.flush_waiting(channel);
            if flow.drain {
                self.finish_drain(channel, handle);
            }
        } else if flow.echo {
            self.top_up_credit(channel, handle);
        }
    }

    /// The credit the consumer link has left, as the hub should see it.
    fn update_consumer_credit(&mut self, channel: u16, handle: u32) {
        let Some(link) = self
            .sessions
            .get(&channel)
            .and_then(|s| s.links.get(&handle))
        else {
            return;
        };
        let Some(consumer) = &link.consumer else {
            return;
        };
        let available = link
            .peer_delivery_count
            .wrapping_add(link.peer_credit)
            .wrapping_sub(link.sent_count);
        let available = if available > i32::MAX as u32 {
            0
        } else {
            available
        };
        let queued = consumer.queued();
        let free = available.saturating_sub(queued);
        let (addr, consumer) = (link.addr.clone(), consumer.clone());
        self.shared.hub.consumer_credit(&addr, &consumer, free);
    }

    /// A drain request: what could be sent has been queued by now; give back the rest of the credit.
    fn finish_drain(&mut self, channel: u16, handle: u32) {
        let Some(session) = self.sessions.get_mut(&channel) else {
            return;
        };
        let Some(link) = session.links.get_mut(&handle) else {
            return;
        };
        let Some(consumer) = link.consumer.clone() else {
            return;
        };
        if consumer.queued() > 0 {
            // Deliveries are on their way through our channel; the drain completes after them.
            return;
        }
        let left = link
            .peer_delivery_count
            .wrapping_add(link.peer_credit)
            .wrapping_sub(link.sent_count);
        link.sent_count = link.sent_count.wrapping_add(left);
        link.peer_delivery_count = link.sent_count;
        link.peer_credit = 0;
        link.drain = false;
        let addr = link.addr.clone();
        let flow = Flow {
            next_incoming_id: Some(session.next_incoming_id),
            incoming_window: INCOMING_WINDOW,
            next_outgoing_id: session.next_outgoing_id,
            outgoing_window: OUTGOING_WINDOW,
            handle: Some(Handle(handle)),
            delivery_count: Some(link.sent_count),
            link_credit: Some(0),
            available: Some(0),
            drain: true,
            echo: false,
            properties: None,
        };
        self.shared.hub.consumer_credit(&addr, &consumer, 0);
        self.send(channel, Performative::Flow(flow));
    }

    fn session_flow(&mut self, channel: u16) {
        let Some(session) = self.sessions.get_mut(&channel) else {
            return;
        };
        session.incoming_since_flow = 0;
        let flow = Flow {
            next_incoming_id: Some(session.next_incoming_id),
            incoming_window: INCOMING_WINDOW,
            next_outgoing_id: session.next_outgoing_id,
            outgoing_window: OUTGOING_WINDOW,
            handle: None,
            delivery_count: None,
            link_credit: None,
            available: None,
            drain: false,
            echo: false,
            properties: None,
        };
        self.send(channel, Performative::Flow(flow));
    }

    fn on_transfer(&mut self, channel: u16, transfer: Transfer, payload: Bytes) {
        let Some(session) = self.sessions.get_mut(&channel) else {
            return self.session_error("transfer on an unknown session");
        };
        session.next_incoming_id = session.next_incoming_id.wrapping_add(1);
        session.incoming_since_flow += 1;
        let window_low = session.incoming_since_flow > INCOMING_WINDOW / 2;
        let handle = transfer.handle.0;
        let Some(link) = session.links.get_mut(&handle) else {
            return self.session_error("transfer on an unknown link");
        };
        if link.direction != Direction::In {
            return self.session_error("transfer on a link we send on");
        }
        if transfer.aborted {
            link.partial = None;
            return;
        }
        if link.partial.is_none() && link.credit == 0 {
            // A new delivery without credit: the peer ignores flow control. Credit is how the router
            // bounds what a producer makes it hold, so the link goes (what it had in flight is released).
            return self.detach_with_error(
                channel,
                handle,
                error(
                    ErrorCondition::LinkError(LinkError::TransferLimitExceeded),
                    "transfer without link credit",
                ),
            );
        }
        // Reassemble multi-frame deliveries.
        let (delivery_id, settled, message) = match (link.partial.take(), transfer.more) {
            (None, false) => {
                let Some(id) = transfer.delivery_id else {
                    return self.session_error("transfer without delivery-id");
                };
                (id, transfer.settled.unwrap_or(false), payload)
            }
            (None, true) => {
                let Some(id) = transfer.delivery_id else {
                    return self.session_error("transfer without delivery-id");
                };
                let mut buf = BytesMut::with_capacity(payload.len() * 2);
                buf.extend_from_slice(&payload);
                link.partial = Some(Partial {
                    delivery_id: id,
                    settled: transfer.settled.unwrap_or(false),
                    buf,
                });
                return;
            }
            (Some(mut p), more) => {
                if p.buf.len() + payload.len() > MAX_MESSAGE_SIZE {
                    link.partial = None;
                    return self.close(Some(error(
                        ErrorCondition::AmqpError(AmqpError::ResourceLimitExceeded),
                        "message too large",
                    )));
                }
                p.buf.extend_from_slice(&payload);
                if more {
                    link.partial = Some(p);
                    return;
                }
                (
                    p.delivery_id,
                    p.settled || transfer.settled.unwrap_or(false),
                    p.buf.freeze(),
                )
            }
        };
        link.credit = link.credit.saturating_sub(1);
        link.delivery_count = link.delivery_count.wrapping_add(1);
        let (addr, producer) = (link.addr.clone(), link.producer.clone());
        if let Some(producer) = producer {
            self.route(channel, &addr, &producer, delivery_id, settled, message);
        }
        if window_low {
            self.session_flow(channel);
        }
        self.top_up_credit(channel, handle);
    }

    /// Verifies, rewrites and routes one message from a producer.
    fn route(
        &mut self,
        channel: u16,
        addr: &AddressRef,
        _producer: &Producer,
        delivery_id: u32,
        settled: bool,
        message: Bytes,
    ) {
        let size = message.len();
        match addr.kind {
            Kind::Telemetry | Kind::Event => {}
            Kind::Command => {
                return self.route_command(channel, addr, delivery_id, settled, message)
            }
            Kind::CommandResponse => {
                return self.route_response(channel, delivery_id, settled, message)
            }
            Kind::CommandInternal => {
                return self.subscription(channel, addr, delivery_id, settled, &message)
            }
        }
        let payload = match self.check_and_rewrite(addr, &message) {
            Ok(p) => p,
            Err(state) => {
                addr.counters.count(Outcome::Rejected, size);
                if !settled {
                    self.disposition(channel, delivery_id, state);
                }
                return;
            }
        };
        match addr.kind {
            Kind::Telemetry => {
                let origin = self.origin(channel, delivery_id, settled);
                let routed = self
                    .shared
                    .hub
                    .route_telemetry(addr, payload, settled, origin);
                self.routed(
                    Incoming {
                        channel,
                        delivery_id,
                        settled,
                        size,
                    },
                    &addr.counters,
                    routed,
                );
            }
            Kind::Event => {
                let shared = self.shared.clone();
                let addr = addr.clone();
                let conn = self.handle.clone();
                let event = NewEvent {
                    payload,
                    device_id: Arc::from(""),
                    expires_at_ms: self.event_expiry(&message),
                };
                tokio::spawn(async move {
                    let state = match shared.hub.append_event(&addr, event).await {
                        Ok(()) => {
                            addr.counters.count(Outcome::Stored, size);
                            accepted()
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "event store append failed");
                            hub::release()
                        }
                    };
                    conn.send(ToConn::Outcome {
                        channel,
                        delivery_id,
                        state,
                    });
                });
            }
            // Handled above, before the assertion check that only device messages need.
            Kind::Command | Kind::CommandResponse | Kind::CommandInternal => {}
        }
    }

    /// The outcome of a message that went (or did not go) somewhere: metrics, and `released` to an
    /// unsettled producer when nobody could take it.
    fn routed(&mut self, at: Incoming, counters: &crate::metrics::Outcomes, routed: Routed) {
        match routed {
            Routed::Forwarded => counters.count(Outcome::Forwarded, at.size),
            Routed::NoConsumer => {
                counters.count(Outcome::Released, at.size);
                if !at.settled {
                    self.disposition(at.channel, at.delivery_id, hub::release());
                }
            }
        }
    }

    fn origin(&self, channel: u16, delivery_id: u32, settled: bool) -> Origin {
        if settled {
            Origin::None
        } else {
            Origin::Producer {
                conn: self.handle.clone(),
                channel,
                delivery_id,
            }
        }
    }

    /// HONO-CONTRACT §1.3: an application's command on `command/T`, with `to` = `command/T/DEVICE`, a
    /// `subject` and a message or correlation id, goes to the adapter instance holding the device;
    /// `released` when none does.
    fn route_command(
        &mut self,
        channel: u16,
        addr: &AddressRef,
        delivery_id: u32,
        settled: bool,
        message: Bytes,
    ) {
        let reject = |why: &str| rejected(ErrorCondition::AmqpError(AmqpError::DecodeError), why);
        // The device, and whether the application set a `via` of its own (which only the router may).
        let check = || -> Result<(String, bool), DeliveryState> {
            let view = codec::parse_message(&message).map_err(|_| reject("malformed message"))?;
            let props = view
                .properties()
                .map_err(|_| reject("malformed properties"))?
                .ok_or_else(|| reject("a command needs properties"))?;
            let to = props.to.as_deref().ok_or_else(|| reject("to is missing"))?;
            let device = to
                .strip_prefix("command/")
                .and_then(|r| r.split_once('/'))
                .filter(|(t, _)| *t == addr.tenant.as_str())
                .map(|(_, d)| d)
                .ok_or_else(|| reject("to must be command/TENANT/DEVICE of this link's tenant"))?;
            let device = ferry_core::ids::DeviceId::new(device)
                .map_err(|_| reject("invalid device id in to"))?;
            if props.subject.is_none() {
                return Err(reject("subject (the command name) is missing"));
            }
            if props.message_id.is_none() && props.correlation_id.is_none() {
                return Err(reject("message-id or correlation-id is required"));
            }
            let has_via = view.app_property_raw(app_property::VIA).is_some();
            Ok((device.to_string(), has_via))
        };
        let size = message.len();
        let at = Incoming {
            channel,
            delivery_id,
            settled,
            size,
        };
        let (device, has_via) = match check() {
            Ok(checked) => checked,
            Err(state) => {
                addr.counters.count(Outcome::Rejected, size);
                if !settled {
                    self.disposition(channel, delivery_id, state);
                }
                return;
            }
        };
        let origin = self.origin(channel, delivery_id, settled);
        match self.shared.hub.command_target(&addr.tenant, &device) {
            CommandTarget::Device(instance) => {
                let payload = if has_via {
                    with_via(&message, None).unwrap_or(message)
                } else {
                    message
                };
                let routed = self
                    .shared
                    .hub
                    .route_command(&instance, payload, settled, origin);
                self.routed(at, &addr.counters.clone(), routed);
            }
            CommandTarget::Nobody => self.routed(at, &addr.counters.clone(), Routed::NoConsumer),
            CommandTarget::Gateways => {
                // The device's gateways come from the registry (cached): off the connection's task.
                let shared = self.shared.clone();
                let addr = addr.clone();
                let conn = self.handle.clone();
                tokio::spawn(async move {
                    let via = shared.via.via(&addr.tenant, &device).await;
                    let routed = match shared.hub.gateway_for(&addr.tenant, &device, &via) {
                        Some((gateway, instance)) => match with_via(&message, Some(&gateway)) {
                            Some(payload) => shared
                                .hub
                                .route_command(&instance, payload, settled, origin),
                            None => Routed::NoConsumer,
                        },
                        None => Routed::NoConsumer,
                    };
                    match routed {
                        Routed::Forwarded => addr.counters.count(Outcome::Forwarded, size),
                        Routed::NoConsumer => {
                            addr.counters.count(Outcome::Released, size);
                            if !settled {
                                conn.send(ToConn::Outcome {
                                    channel,
                                    delivery_id,
                                    state: hub::release(),
                                });
                            }
                        }
                    }
                });
            }
        }
    }

    /// A command response from an adapter: `to` names `command_response/T/REPLY`, where an application
    /// waits; `released` when none does.
    fn route_response(&mut self, channel: u16, delivery_id: u32, settled: bool, message: Bytes) {
        let target = codec::parse_message(&message)
            .ok()
            .and_then(|v| v.properties().ok().flatten())
            .and_then(|p| p.to)
            .and_then(|to| match Address::parse(&to) {
                Some(Address::CommandResponse(t, reply)) => Some((t, reply)),
                _ => None,
            });
        let size = message.len();
        match target {
            Some((tenant, reply)) => {
                let origin = self.origin(channel, delivery_id, settled);
                let routed = self
                    .shared
                    .hub
                    .route_response(&tenant, &reply, message, settled, origin);
                self.routed(
                    Incoming {
                        channel,
                        delivery_id,
                        settled,
                        size,
                    },
                    &self
                        .shared
                        .hub
                        .metrics
                        .outcomes(&tenant, "command_response"),
                    routed,
                );
            }
            None => {
                if !settled {
                    self.disposition(
                        channel,
                        delivery_id,
                        rejected(
                            ErrorCondition::AmqpError(AmqpError::DecodeError),
                            "to must be command_response/TENANT/REPLY_ID",
                        ),
                    );
                }
            }
        }
    }

    /// A subscription change from an adapter instance on `command_internal/INSTANCE`: subject `register`
    /// or `unregister`, with application properties `tenant_id` and `device_id` (and `all_devices` =
    /// true for a gateway's subscription for all its devices), or a JSON body
    /// `[{"tenant_id": .., "device_id": .., "all_devices": ..}, ...]` to change many at once (after a
    /// reconnect); or subject `set-last-gw` with `tenant_id`, `device_id` and `gateway_id`.
    fn subscription(
        &mut self,
        channel: u16,
        addr: &AddressRef,
        delivery_id: u32,
        settled: bool,
        message: &Bytes,
    ) {
        let result = (|| -> Result<(), &'static str> {
            let view = codec::parse_message(message).map_err(|_| "malformed message")?;
            let props = view.properties().map_err(|_| "malformed properties")?;
            let register = match props.as_ref().and_then(|p| p.subject.as_deref()) {
                Some(REGISTER) => true,
                Some(UNREGISTER) => false,
                Some(SET_LAST_GATEWAY) => {
                    let field = |key: &str| view.app_property_str(key);
                    let (Some(t), Some(d), Some(g)) = (
                        field(app_property::TENANT_ID),
                        field(app_property::DEVICE_ID),
                        field(app_property::GATEWAY_ID),
                    ) else {
                        return Err("set-last-gw needs tenant_id, device_id and gateway_id");
                    };
                    let tenant =
                        ferry_core::ids::TenantId::new(t).map_err(|_| "invalid tenant_id")?;
                    let device =
                        ferry_core::ids::DeviceId::new(d).map_err(|_| "invalid device_id")?;
                    let gateway =
                        ferry_core::ids::DeviceId::new(g).map_err(|_| "invalid gateway_id")?;
                    self.shared
                        .hub
                        .set_last_gateway(&tenant, device.as_str(), gateway.as_str());
                    return Ok(());
                }
                _ => return Err("subject must be register, unregister or set-last-gw"),
            };
            let mut entries: Vec<(String, String, bool)> = Vec::new();
            if let (Some(t), Some(d)) = (
                view.app_property_str(app_property::TENANT_ID),
                view.app_property_str(app_property::DEVICE_ID),
            ) {
                let all = matches!(
                    view.app_property(ALL_DEVICES),
                    Ok(Some(fe2o3_amqp_types::primitives::SimpleValue::Bool(true)))
                );
                entries.push((t.to_owned(), d.to_owned(), all));
            } else if let Some(body) = view.single_data().filter(|b| !b.is_empty()) {
                #[derive(serde::Deserialize)]
                struct Entry {
                    tenant_id: String,
                    device_id: String,
                    #[serde(default)]
                    all_devices: bool,
                }
                let list: Vec<Entry> = serde_json::from_slice(body)
                    .map_err(|_| "body must be a JSON list of tenant_id/device_id")?;
                entries.extend(
                    list.into_iter()
                        .map(|e| (e.tenant_id, e.device_id, e.all_devices)),
                );
            } else {
                return Err("tenant_id and device_id are missing");
            }
            for (t, d, all) in entries {
                let tenant = ferry_core::ids::TenantId::new(&t).map_err(|_| "invalid tenant_id")?;
                let device = ferry_core::ids::DeviceId::new(&d).map_err(|_| "invalid device_id")?;
                let hub = &self.shared.hub;
                match (register, all) {
                    (true, false) => hub.subscribe_commands(&tenant, device.as_str(), addr),
                    (false, false) => hub.unsubscribe_commands(&tenant, device.as_str(), addr),
                    (true, true) => hub.subscribe_gateway(&tenant, device.as_str(), addr),
                    (false, true) => hub.unsubscribe_gateway(&tenant, device.as_str(), addr),
                }
            }
            Ok(())
        })();
        if !settled {
            let state = match result {
                Ok(()) => accepted(),
                Err(why) => rejected(ErrorCondition::AmqpError(AmqpError::DecodeError), why),
            };
            self.disposition(channel, delivery_id, state);
        }
    }

    /// When an event expires: its header `ttl`, else the configured default; `None` keeps it until accepted.
    fn event_expiry(&self, message: &Bytes) -> Option<u64> {
        let ttl_ms = codec::parse_message(message)
            .ok()
            .and_then(|v| v.ttl_ms())
            .map(u64::from)
            .or_else(|| {
                let d = self.shared.config.default_event_ttl;
                (!d.is_zero()).then(|| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            })?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Some(now.saturating_add(ttl_ms))
    }

    /// HONO-CONTRACT §4: the registration assertion must be there and valid for this tenant and device;
    /// it is stripped and the `resource` annotation added.
    fn check_and_rewrite(
        &self,
        addr: &AddressRef,
        message: &Bytes,
    ) -> Result<Bytes, DeliveryState> {
        let decode = |why: &str| rejected(ErrorCondition::AmqpError(AmqpError::DecodeError), why);
        let precondition = |why: &str| {
            rejected(
                ErrorCondition::AmqpError(AmqpError::PreconditionFailed),
                why,
            )
        };
        let view = codec::parse_message(message).map_err(|_| decode("malformed message"))?;
        let properties = view
            .properties()
            .map_err(|_| decode("malformed properties"))?;
        if properties
            .as_ref()
            .and_then(|p| p.content_type.as_ref())
            .is_none()
        {
            return Err(decode("content-type is missing"));
        }
        if view.single_data().is_none() {
            return Err(decode("the body must be one Data section"));
        }
        let device = view
            .app_property_str(ferry_core::hono::app_property::DEVICE_ID)
            .ok_or_else(|| decode("device_id is missing"))?;
        let device =
            ferry_core::ids::DeviceId::new(device).map_err(|_| decode("device_id is invalid"))?;
        let token = view
            .app_property_str(ferry_core::hono::app_property::REG_ASSERTION)
            .ok_or_else(|| decode("reg_assertion is missing"))?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let verifier = self.shared.verifier();
        if let Err(e) = verifier.check(token, &addr.tenant, &device, now) {
            if e.is_decode_error() {
                return Err(decode("reg_assertion is malformed"));
            }
            if let ferry_core::assertion::VerifyError::UnknownKey { .. } = e {
                self.shared.refresh_keys.notify_one();
            }
            return Err(precondition("device non-existent/disabled"));
        }
        let resource = format!("{}/{}/{}", addr.kind.name(), addr.tenant, device);
        let mut out = Vec::with_capacity(message.len() + resource.len() + 16);
        codec::rewrite_message(
            &view,
            &MessageEdit {
                strip_app_properties: &[ferry_core::hono::app_property::REG_ASSERTION],
                add_message_annotations: &[(
                    ferry_core::hono::annotation::RESOURCE,
                    Value::String(resource),
                )],
                ..MessageEdit::default()
            },
            &mut out,
        )
        .map_err(|_| decode("message cannot be rewritten"))?;
        Ok(Bytes::from(out))
    }

    fn disposition(&mut self, channel: u16, delivery_id: u32, state: DeliveryState) {
        self.send(
            channel,
            Performative::Disposition(Disposition {
                role: Role::Receiver,
                first: delivery_id,
                last: None,
                settled: true,
                state: Some(state),
                batchable: false,
            }),
        );
    }

    fn on_disposition(&mut self, channel: u16, d: Disposition) {
        if d.role != Role::Receiver {
            // The peer settling deliveries it sent: we settle first, so there is nothing to do.
            return;
        }
        let Some(session) = self.sessions.get_mut(&channel) else {
            return;
        };
        let last = d.last.unwrap_or(d.first);
        let state = d.state.clone().unwrap_or_else(hub::release);
        let settled = take_settled_range(&mut session.unsettled, d.first, last);
        for (handle, origin) in settled {
            let consumer = session.links.get(&handle).and_then(|l| l.consumer.clone());
            match consumer {
                Some(c) => self.shared.hub.consumer_settled(&c, origin, state.clone()),
                None => self.shared.hub.settle(origin, state.clone()),
            }
        }
        if !d.settled {
            // The peer wants us to settle: we do, with its outcome.
            self.send(
                channel,
                Performative::Disposition(Disposition {
                    role: Role::Sender,
                    first: d.first,
                    last: d.last,
                    settled: true,
                    state: d.state,
                    batchable: false,
                }),
            );
        }
    }

    fn on_detach(&mut self, channel: u16, detach: Detach) {
        let handle = detach.handle.0;
        if !self.remove_link(channel, handle) {
            // The answer to a detach of ours (a refused attach): nothing left to close.
            return;
        }
        self.send(
            channel,
            Performative::Detach(Detach {
                handle: Handle(handle),
                closed: true,
                error: None,
            }),
        );
    }

    /// Ends a link on the router's initiative (the peer broke its rules), releasing what it had in flight.
    fn detach_with_error(&mut self, channel: u16, handle: u32, err: Error) {
        if self.remove_link(channel, handle) {
            self.send(
                channel,
                Performative::Detach(Detach {
                    handle: Handle(handle),
                    closed: true,
                    error: Some(err),
                }),
            );
        }
    }

    /// Forgets a link, releasing what it had in flight; false when there was no such link.
    fn remove_link(&mut self, channel: u16, handle: u32) -> bool {
        let Some(session) = self.sessions.get_mut(&channel) else {
            return false;
        };
        let Some(link) = session.links.remove(&handle) else {
            return false;
        };
        self.links.remove(&link.id);
        self.shared.hub.metrics.links.dec();
        if let Some(consumer) = &link.consumer {
            let ids: Vec<u32> = session
                .unsettled
                .iter()
                .filter(|(_, (h, _))| *h == handle)
                .map(|(id, _)| *id)
                .collect();
            let mut origins: Vec<Origin> = ids
                .into_iter()
                .filter_map(|id| session.unsettled.remove(&id).map(|(_, o)| o))
                .collect();
            let waiting = std::mem::take(&mut session.waiting);
            for w in waiting {
                if w.0 == handle {
                    self.handle.written(w.1.len() + hub::DELIVERY_OVERHEAD);
                    origins.push(w.3);
                } else {
                    session.waiting.push_back(w);
                }
            }
            self.shared
                .hub
                .detach_consumer(&link.addr, consumer, origins);
        }
        if let Some(producer) = &link.producer {
            self.shared.hub.detach_producer(&link.addr, producer);
        }
        true
    }

    fn end_session(&mut self, channel: u16) {
        let handles: Vec<u32> = self
            .sessions
            .get(&channel)
            .map(|s| s.links.keys().copied().collect())
            .unwrap_or_default();
        for h in handles {
            self.remove_link(channel, h);
        }
        self.sessions.remove(&channel);
    }

    fn cleanup(&mut self) {
        let channels: Vec<u16> = self.sessions.keys().copied().collect();
        for c in channels {
            self.end_session(c);
        }
    }

    /// Once no consumer of this connection is choked any more, tells the hub their credit again (which
    /// wakes starved producers and dispatches held events and responses).
    fn unchoke(&mut self) {
        let max = self.shared.hub.max_queued_bytes;
        let consumers: Vec<(u16, u32)> = self
            .sessions
            .iter()
            .flat_map(|(channel, s)| {
                s.links
                    .iter()
                    .filter(|(_, l)| l.consumer.is_some())
                    .map(move |(handle, _)| (*channel, *handle))
            })
            .collect();
        let still = consumers.iter().any(|(channel, handle)| {
            self.sessions
                .get(channel)
                .and_then(|s| s.links.get(handle))
                .and_then(|l| l.consumer.as_ref())
                .is_some_and(|c| c.choked(max))
        });
        if still {
            return;
        }
        self.choked = false;
        for (channel, handle) in consumers {
            self.update_consumer_credit(channel, handle);
        }
    }

    fn handle_request(&mut self, msg: ToConn) {
        match msg {
            ToConn::Deliver {
                link,
                payload,
                settled,
                origin,
            } => self.deliver(link, payload, settled, origin),
            ToConn::Outcome {
                channel,
                delivery_id,
                state,
            } => {
                if self.sessions.contains_key(&channel) {
                    self.disposition(channel, delivery_id, state);
                }
            }
            ToConn::Wake { link } => {
                if let Some((channel, handle)) = self.links.get(&link).copied() {
                    self.top_up_credit(channel, handle);
                }
            }
        }
    }

    fn deliver(&mut self, link_id: LinkId, payload: Bytes, settled: bool, origin: Origin) {
        let cost = payload.len() + hub::DELIVERY_OVERHEAD;
        let Some((channel, handle)) = self.links.get(&link_id).copied() else {
            // The link left before the delivery reached it; its detach released its credit.
            self.handle.written(cost);
            return self.shared.hub.settle(origin, hub::release());
        };
        let Some(session) = self.sessions.get_mut(&channel) else {
            self.handle.written(cost);
            return;
        };
        let Some(link) = session.links.get_mut(&handle) else {
            self.handle.written(cost);
            return;
        };
        let Some(consumer) = link.consumer.clone() else {
            self.handle.written(cost);
            return;
        };
        consumer.dequeued();
        let available = link
            .peer_delivery_count
            .wrapping_add(link.peer_credit)
            .wrapping_sub(link.sent_count);
        if available == 0 || available > i32::MAX as u32 {
            // Raced with a credit change: hand it back rather than send without credit.
            self.handle.written(cost);
            self.shared
                .hub
                .consumer_settled(&consumer, origin, hub::release());
            return;
        }
        if consumer.choked(self.shared.hub.max_queued_bytes) {
            self.choked = true;
        }
        link.sent_count = link.sent_count.wrapping_add(1);
        let drain_pending = link.drain;
        let settled = settled || link.settled_mode;
        if session.remote_incoming_window == 0 {
            session
                .waiting
                .push_back((handle, payload, settled, origin));
            return;
        }
        self.send_transfer(channel, handle, payload, settled, origin, &consumer);
        if drain_pending {
            self.finish_drain(channel, handle);
        }
    }

    fn send_transfer(
        &mut self,
        channel: u16,
        handle: u32,
        payload: Bytes,
        settled: bool,
        origin: Origin,
        consumer: &Arc<Consumer>,
    ) {
        self.unwritten += payload.len() + hub::DELIVERY_OVERHEAD;
        let Some(session) = self.sessions.get_mut(&channel) else {
            return;
        };
        let delivery_id = session.next_delivery_id;
        session.next_delivery_id = delivery_id.wrapping_add(1);
        let transfer = Transfer {
            handle: Handle(handle),
            delivery_id: Some(delivery_id),
            delivery_tag: Some(Binary::from(delivery_id.to_be_bytes().to_vec())),
            message_format: Some(0),
            settled: Some(settled),
            more: false,
            rcv_settle_mode: None,
            state: None,
            resume: false,
            aborted: false,
            batchable: false,
        };
        let start = self.out.len();
        if let Err(e) = codec::encode_transfer(
            channel,
            &transfer,
            &payload,
            self.max_frame_out,
            &mut self.out,
        ) {
            tracing::warn!(error = %e, "cannot encode a transfer");
            self.out.truncate(start);
            self.shared
                .hub
                .consumer_settled(consumer, origin, hub::release());
            return;
        }
        let frames = count_frames(&self.out[start..]);
        session.next_outgoing_id = session.next_outgoing_id.wrapping_add(frames);
        session.remote_incoming_window = session.remote_incoming_window.saturating_sub(frames);
        if settled {
            self.shared
                .hub
                .consumer_settled(consumer, origin, accepted());
        } else {
            session.unsettled.insert(delivery_id, (handle, origin));
        }
    }

    fn flush_waiting(&mut self, channel: u16) {
        loop {
            let Some(session) = self.sessions.get_mut(&channel) else {
                return;
            };
            if session.remote_incoming_window == 0 {
                return;
            }
            let Some((handle, payload, settled, origin)) = session.waiting.pop_front() else {
                return;
            };
            let Some(consumer) = session.links.get(&handle).and_then(|l| l.consumer.clone()) else {
                self.handle.written(payload.len() + hub::DELIVERY_OVERHEAD);
                self.shared.hub.settle(origin, hub::release());
                continue;
            };
            self.send_transfer(channel, handle, payload, settled, origin, &consumer);
        }
    }
}

/// How many frames an encoded stretch holds (a split transfer is several), for the session's counters.
fn count_frames(mut buf: &[u8]) -> u32 {
    let mut n = 0;
    while buf.len() >= 4 {
        let size = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if size < 8 || size > buf.len() {
            break;
        }
        buf = &buf[size..];
        n += 1;
    }
    n
}

/// Removes the deliveries in the (wrapping, RFC 1982) range `first..=last` from `unsettled`.
///
/// The cost is bounded by what is unsettled, not by the width of the range: a peer may name any range
/// (`first=1, last=0` spans all 2^32 ids), and walking it id by id would hold a runtime thread for
/// minutes. A range wider than the map is answered by one pass over the map instead.
fn take_settled_range<V>(unsettled: &mut HashMap<u32, V>, first: u32, last: u32) -> Vec<V> {
    let span = u64::from(last.wrapping_sub(first)) + 1;
    if span <= unsettled.len() as u64 {
        (0..span)
            .filter_map(|i| unsettled.remove(&first.wrapping_add(i as u32)))
            .collect()
    } else {
        let mut in_range: Vec<u32> = unsettled
            .keys()
            .copied()
            .filter(|id| u64::from(id.wrapping_sub(first)) < span)
            .collect();
        // Settle in delivery order, as the narrow branch does.
        in_range.sort_unstable_by_key(|id| id.wrapping_sub(first));
        in_range
            .into_iter()
            .filter_map(|id| unsettled.remove(&id))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unsettled(ids: &[u32]) -> HashMap<u32, u32> {
        ids.iter().map(|&id| (id, id)).collect()
    }

    #[test]
    fn a_disposition_range_settles_only_the_ids_inside_it() {
        let mut map = unsettled(&[1, 2, 3, 10]);
        assert_eq!(take_settled_range(&mut map, 2, 3), vec![2, 3]);
        assert_eq!(map.len(), 2);
        // Wider than the map: one pass over the map, in delivery order.
        assert_eq!(take_settled_range(&mut map, 0, 1000), vec![1, 10]);
        assert!(map.is_empty());
    }

    #[test]
    fn a_wrapping_range_covers_the_ids_across_zero() {
        let mut map = unsettled(&[u32::MAX - 1, u32::MAX, 0, 1, 5]);
        assert_eq!(
            take_settled_range(&mut map, u32::MAX - 1, 1),
            vec![u32::MAX - 1, u32::MAX, 0, 1]
        );
        assert_eq!(map.keys().copied().collect::<Vec<_>>(), vec![5]);
    }

    #[test]
    fn a_range_of_all_ids_costs_what_is_unsettled() {
        // first=1, last=0 spans 2^32 ids; walking them one by one takes minutes (the test would time out).
        let mut map = unsettled(&[7, 0, 3]);
        assert_eq!(take_settled_range(&mut map, 1, 0), vec![3, 7, 0]);
    }
}
