//! One AMQP 1.0 connection, server side: protocol header and SASL, then the connection / session / link
//! state machine, on the sans-IO [`codec`](crate::codec).
//!
//! The task owns its socket and all its sessions and links; other connections reach it only through its
//! [`ToConn`] channel (deliveries to send, outcomes to relay, credit wake-ups). Each loop turn reads what
//! arrived, handles every complete frame, handles every queued request, and writes what it produced in
//! one go, so a busy connection batches frames per syscall.
//!
//! Three layers, one job each:
//! - [`handshake`]: the protocol header, SASL PLAIN and the open exchange.
//! - The link and credit engine, plain AMQP with no Hono in it: [`session`] (sessions, attach and
//!   detach), [`credit`] (flow, link credit, session windows, drain) and [`transfer`] (incoming
//!   transfers and their reassembly, outgoing transfers, dispositions and settlement).
//! - Hono routing, the only layer that talks to the [`hub`](crate::hub): [`routing`] (which addresses a
//!   principal may attach, telemetry and events, deliveries from the hub) and [`commands`] (commands,
//!   command responses and subscription changes).
//!
//! This file holds the connection's state and its loop.
//!
//! Our channel and handle numbers mirror the peer's (the peer's are unique within its own space, so ours
//! are too), which keeps the bookkeeping to one map per session. Link names are not used as keys: links
//! are identified by (channel, handle) and a process-unique [`LinkId`], so a client may attach a sender and
//! a receiver of the same name (Proton names links after their address).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf as _, Bytes, BytesMut};
use fe2o3_amqp_types::definitions::{AmqpError, ConnectionError, ErrorCondition};
use fe2o3_amqp_types::messaging::{Accepted, DeliveryState, Rejected};
use fe2o3_amqp_types::performatives::{Close, End, Performative};
use fe2o3_amqp_types::primitives::Symbol;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt as _, StreamExt as _};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::auth::Principal;
use crate::codec::{self, Frame};
use crate::events::EventStore;
use crate::hub::{ConnHandle, LinkId, ToConn};
use crate::Shared;

mod commands;
mod credit;
mod handshake;
mod routing;
pub(crate) use routing::check_device_message;
mod session;
mod transfer;

use handshake::{handshake, UserSlot};
use session::Session;

/// Our largest frame; peers are told in Open.
pub const MAX_FRAME_SIZE: u32 = 64 * 1024;
/// Session windows we advertise, in transfer frames.
const INCOMING_WINDOW: u32 = 8192;
const OUTGOING_WINDOW: u32 = u32::MAX >> 1;
/// Credit a producer link holds at most (as far as its address may take more).
const PRODUCER_WINDOW: u32 = 256;
/// A telemetry producer's window: several of the adapter's batches, so that it keeps writing while the
/// router reads and a flow is always on its way (see `Conn::top_up_credit`).
const TELEMETRY_WINDOW: u32 = 1024;
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

struct Conn<S: EventStore> {
    shared: Arc<Shared<S>>,
    handle: ConnHandle,
    principal: Principal,
    out: BytesMut,
    /// Where a transfer's performative is put together ([`codec::encode_single_transfer`]).
    head: Vec<u8>,
    max_frame_out: u32,
    sessions: HashMap<u16, Session>,
    links: HashMap<LinkId, (u16, u32)>,
    closed: bool,
    /// Bytes of deliveries (as counted in `handle.queued_bytes`) encoded into `out` since the last write.
    unwritten: usize,
    /// Some consumer of this connection was choked (too many bytes held or unsettled): once none is, the
    /// hub hears their credit again, which wakes the producers that starved meanwhile.
    choked: bool,
    /// Outcomes of consecutive deliveries of one session, all alike, not yet encoded: one disposition
    /// frame settles the run ([`Conn::disposition`]).
    settling: Option<Settling>,
    /// Events of this connection's producers on their way into the store. Whatever is still here when
    /// the connection ends is finished by a task of its own (the hub's side of an append must happen).
    appends: FuturesUnordered<Append>,
}

/// An event's append: the store's answer for the producer's delivery.
type Append = std::pin::Pin<Box<dyn std::future::Future<Output = Appended> + Send>>;

/// The outcome of an event append for the producer.
struct Appended {
    channel: u16,
    delivery_id: u32,
    state: DeliveryState,
}

/// A run of deliveries `first..=last` on `channel`, settled with `state`.
struct Settling {
    channel: u16,
    first: u32,
    last: u32,
    state: DeliveryState,
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
        head: Vec::with_capacity(64),
        max_frame_out: 512,
        sessions: HashMap::new(),
        links: HashMap::new(),
        closed: false,
        unwritten: 0,
        choked: false,
        settling: None,
        appends: FuturesUnordered::new(),
    };
    let Some(_user_slot) = UserSlot::take(&shared, &conn.principal) else {
        let err = error(
            ErrorCondition::AmqpError(AmqpError::ResourceLimitExceeded),
            "too many connections for this user",
        );
        return Err(conn.refuse_connection(&mut io, err).await);
    };
    shared.hub.metrics.connections.inc();
    let result = conn.run(&mut io, &mut inbuf, &mut rx).await;
    conn.cleanup();
    let mut appends = std::mem::take(&mut conn.appends);
    if !appends.is_empty() {
        tokio::spawn(async move { while appends.next().await.is_some() {} });
    }
    shared.hub.metrics.connections.dec();
    result
}

impl<S: EventStore> Conn<S> {
    async fn run<IO: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut IO,
        inbuf: &mut BytesMut,
        rx: &mut mpsc::UnboundedReceiver<ToConn>,
    ) -> Result<(), ConnError> {
        let open = self.await_open(io, inbuf).await?;
        let peer_idle = self.answer_open(&open);
        let our_idle = self.shared.config.idle_timeout;
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
                Some(done) = self.appends.next(), if !self.appends.is_empty() => {
                    self.appended(done);
                    // Take every append of the batch that completed, for one disposition frame.
                    while let Some(Some(done)) = self.appends.next().now_or_never() {
                        self.appended(done);
                    }
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
            self.flush_settling();
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

    fn appended(&mut self, done: Appended) {
        if self.sessions.contains_key(&done.channel) {
            self.disposition(done.channel, done.delivery_id, done.state);
        }
    }

    fn close(&mut self, err: Option<Error>) {
        self.flush_settling();
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
        // Frames leave in the order they were made: a pending run of outcomes goes first.
        self.flush_settling();
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
                Ok(Some((frame, n))) => match frame {
                    Frame::Amqp {
                        channel,
                        performative: Some(p),
                        payload,
                    } => {
                        // The payload borrows the buffer and is the frame's tail: split the frame off
                        // and keep a slice of it, sharing the read buffer instead of copying.
                        let payload = if payload.is_empty() {
                            inbuf.advance(n);
                            Bytes::new()
                        } else {
                            let start = n - payload.len();
                            inbuf.split_to(n).freeze().slice(start..)
                        };
                        self.handle_frame(channel, p, payload);
                    }
                    Frame::Amqp {
                        performative: None, ..
                    } => inbuf.advance(n),
                    Frame::Sasl(_) => {
                        inbuf.advance(n);
                        self.close(Some(error(
                            ErrorCondition::ConnectionError(ConnectionError::FramingError),
                            "SASL frame after the SASL exchange",
                        )));
                    }
                },
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
}
