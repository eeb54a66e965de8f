//! The adapter's own AMQP 1.0 connection for device messages and command responses (embedded mode):
//! bytes in, bytes out.
//!
//! A message is encoded once, in the caller's task, straight into bytes ([`DeviceMessage::encode`]:
//! Hono's properties written without building fe2o3's message types), and queued on one channel to the
//! task that owns the connection. That task takes everything queued at once (after one yield to the
//! runtime, so that the MQTT sessions woken together queue their messages first), prefixes each message
//! with its transfer frame, and hands the batch to the writer as one buffer: one write, and one wake-up
//! of the router, per batch instead of per message. There is no task per link: the connection task keeps
//! every link's credit, queue and unsettled deliveries itself, with no lock. The codec is the router's
//! own (`ferry-amqp`).
//!
//! What the caller gets is what fe2o3's links gave: pre-settled telemetry (QoS 0) is answered once its
//! frame is written, or fails with [`DownstreamError::NoCredit`] when its link has had no credit for
//! [`SHED_AFTER`] (shed at the edge) or for its whole wait; unsettled messages are answered with the
//! router's outcome, or [`DownstreamError::Timeout`] after `outcome_timeout`. A message waits for credit
//! only while its link makes no progress: time spent behind other messages on a busy link does not count.
//!
//! [`DeviceMessage::encode`]: crate::downstream::DeviceMessage

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use fe2o3_amqp::types::definitions::{Fields, Handle, ReceiverSettleMode, Role, SenderSettleMode};
use fe2o3_amqp::types::messaging::{DeliveryState, Source, Target, TargetArchetype};
use fe2o3_amqp::types::performatives::{
    Attach, Begin, Close, Detach, Disposition, Flow, Open, Performative, Transfer,
};
use fe2o3_amqp::types::primitives::{Binary, Symbol};
use fe2o3_amqp::types::sasl::{SaslCode, SaslInit};
use ferry_amqp::{self as codec, Frame, SaslFrame};
use ferry_core::ids::TenantId;
use ferry_core::shutdown::Shutdown;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::time::Instant;

use crate::downstream::{DownstreamConfig, DownstreamError, SendOutcome};
use crate::metrics::{Status, TenantTally};

/// Which sender link a message goes on; links are attached on first use, one per key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum LinkKey {
    /// Pre-settled telemetry (QoS 0), on a link whose sender settle mode is `mixed`.
    Telemetry(TenantId),
    /// Unsettled telemetry (QoS 1), on a link of its own: the router gives it credit when nobody
    /// consumes, so that its messages are released at once rather than waiting for credit.
    TelemetryUnsettled(TenantId),
    /// Events (always unsettled: the router refuses anything else on event links).
    Event(TenantId),
    /// Command responses.
    Responses,
}

impl LinkKey {
    fn address(&self) -> String {
        match self {
            Self::Telemetry(t) | Self::TelemetryUnsettled(t) => format!("telemetry/{t}"),
            Self::Event(t) => format!("event/{t}"),
            Self::Responses => ferry_core::hono::address::COMMAND_RESPONSE.to_owned(),
        }
    }

    fn presettled(&self) -> bool {
        matches!(self, Self::Telemetry(_))
    }
}

/// Who hears what became of a message.
pub(crate) enum Reply {
    /// A caller waiting for the outcome.
    Wait(oneshot::Sender<Result<SendOutcome, DownstreamError>>),
    /// Nobody waits (QoS 0 sent by [`Direct::try_send`]): the outcome is counted for the tenant, with
    /// the payload's size, as the pipeline counts it.
    Count(Arc<TenantTally>, usize),
}

impl Reply {
    fn send(self, outcome: Result<SendOutcome, DownstreamError>) {
        match self {
            Reply::Wait(tx) => {
                let _ = tx.send(outcome);
            }
            Reply::Count(tally, size) => match outcome {
                Ok(o) if o.is_accepted() => tally.add_qos0(Status::Forwarded, size),
                _ => tally.add_qos0(Status::Undeliverable, size),
            },
        }
    }
}

/// A message for the connection task.
struct Job {
    link: LinkKey,
    message: Vec<u8>,
    /// Give up waiting for credit at this moment, unless the link made progress since (see `expired`).
    deadline: Instant,
    /// How long it may wait for credit once its link stops making progress.
    wait: Duration,
    reply: Reply,
}

/// Messages queued for the connection task at most; past it, callers wait for room until their deadline.
const JOB_QUEUE: usize = 4096;
/// Bytes handed to the writer and not yet written, past which the connection task takes no new messages
/// (the router does not read: the callers wait, within their bounds).
const MAX_UNWRITTEN: usize = 4 * 1024 * 1024;
/// How long a link must have waited for credit before pre-settled telemetry that arrives is shed at once.
/// A link that waits less is in a pause (a consumer topping up its credit), not a stall.
pub(crate) const SHED_AFTER: Duration = Duration::from_millis(50);
/// What a link may hold waiting for credit (messages and their bookkeeping, in bytes) past which
/// pre-settled messages are shed even while credit flows. Counted in bytes, not messages: a burst of
/// small messages from a hiccup of a few tens of milliseconds at 200k msg/s (tens of thousands of
/// messages) fits, and a flood of large ones holds no more memory than one of small ones.
pub(crate) const BURST_BYTES: usize = 16 * 1024 * 1024;
/// Slots a link's queue of waiting messages keeps once a burst that grew it past 16 times as many is over.
const PENDING_KEPT: usize = 256;
/// Unwritten-frame capacity the connection keeps between turns; a batch that grew it to more than
/// [`OUT_KEPT`] and four times what the turns write now gives it back.
const OUT_INITIAL: usize = 16 * 1024;
const OUT_KEPT: usize = 256 * 1024;
/// Unsettled-delivery slots kept once a backlog is over (see `Conn::on_tick`).
const UNSETTLED_KEPT: usize = 4096;
/// How often waiting messages and unsettled deliveries are checked against their bounds.
const TICK: Duration = Duration::from_millis(10);
/// Largest frame the router may send us.
const MAX_FRAME_IN: u32 = 64 * 1024;
/// Our session's incoming window: the router sends us only dispositions and flows.
const INCOMING_WINDOW: u32 = 1 << 20;

/// The handle the adapter sends through; cheap to clone.
#[derive(Clone)]
pub(crate) struct Direct {
    jobs: mpsc::Sender<Job>,
    state: Arc<State>,
}

struct State {
    /// Per tenant, whether its QoS 0 link sheds (has had no credit for [`SHED_AFTER`]): read by the
    /// callers before they encode a message, written by the connection task only when it changes.
    shedding: RwLock<HashMap<TenantId, Arc<AtomicBool>>>,
    connected: watch::Sender<bool>,
    connects: AtomicU64,
    links_attached: AtomicU64,
}

impl Direct {
    /// Starts connecting (and reconnecting, with backoff) until `shutdown`.
    pub(crate) fn start(config: Arc<DownstreamConfig>, shutdown: Shutdown) -> Self {
        let (jobs, rx) = mpsc::channel(JOB_QUEUE);
        let state = Arc::new(State {
            shedding: RwLock::default(),
            connected: watch::channel(false).0,
            connects: AtomicU64::new(0),
            links_attached: AtomicU64::new(0),
        });
        tokio::spawn(supervise(config, rx, state.clone(), shutdown));
        Self { jobs, state }
    }

    pub(crate) fn is_connected(&self) -> bool {
        *self.state.connected.borrow()
    }

    /// Whether `tenant`'s QoS 0 messages are shed now (see [`State::shedding`]).
    pub(crate) fn sheds_qos0(&self, tenant: &TenantId) -> bool {
        self.state
            .shedding
            .read()
            .ok()
            .and_then(|m| m.get(tenant).map(|f| f.load(Ordering::Relaxed)))
            .unwrap_or(false)
    }

    pub(crate) fn connected(&self) -> watch::Receiver<bool> {
        self.state.connected.subscribe()
    }

    pub(crate) fn connects(&self) -> u64 {
        self.state.connects.load(Ordering::Relaxed)
    }

    pub(crate) fn links_attached(&self) -> u64 {
        self.state.links_attached.load(Ordering::Relaxed)
    }

    /// Sends `message` (an encoded AMQP message) on `link`, waiting at most `wait` for credit while the
    /// link makes no progress; answers once written (pre-settled) or with the router's outcome.
    pub(crate) async fn send(
        &self,
        link: LinkKey,
        message: Vec<u8>,
        wait: Duration,
    ) -> Result<SendOutcome, DownstreamError> {
        self.hand_over(link, message, wait).await
    }

    /// Hands `message` to the connection at once, as [`Direct::send`] does, and gives back what waits
    /// for its outcome: a reply channel, small enough to keep per message. Only when the connection's
    /// queue is full does the wait for room become a (boxed) future of its own.
    pub(crate) fn hand_over(&self, link: LinkKey, message: Vec<u8>, wait: Duration) -> Handed {
        if !self.is_connected() {
            return Handed(HandedState::Ready(Some(Err(DownstreamError::NotConnected))));
        }
        let deadline = Instant::now() + wait;
        let (reply, replied) = oneshot::channel();
        let job = Job {
            link,
            message,
            deadline,
            wait,
            reply: Reply::Wait(reply),
        };
        match self.jobs.try_send(job) {
            Ok(()) => Handed(HandedState::Replied(replied)),
            Err(mpsc::error::TrySendError::Full(job)) => {
                let jobs = self.jobs.clone();
                Handed(HandedState::Queueing(Box::pin(async move {
                    match tokio::time::timeout_at(deadline, jobs.send(job)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => return Err(DownstreamError::Disconnected),
                        Err(_) => return Err(DownstreamError::NoCredit),
                    }
                    replied.await.unwrap_or(Err(DownstreamError::Disconnected))
                })))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                Handed(HandedState::Ready(Some(Err(DownstreamError::Disconnected))))
            }
        }
    }
}

/// A message handed to the router's connection, resolving to its outcome ([`Direct::hand_over`]).
pub struct Handed(HandedState);

type Queueing =
    Pin<Box<dyn Future<Output = Result<SendOutcome, DownstreamError>> + Send + 'static>>;

enum HandedState {
    /// In the connection's queue: the outcome comes on the reply channel.
    Replied(oneshot::Receiver<Result<SendOutcome, DownstreamError>>),
    /// Waiting for room in the connection's queue first.
    Queueing(Queueing),
    /// Failed before it was handed over (taken once).
    Ready(Option<Result<SendOutcome, DownstreamError>>),
}

impl Handed {
    /// What waits for an outcome to come on `reply` (for tests of what holds [`Handed`]s).
    #[doc(hidden)]
    pub fn on(reply: oneshot::Receiver<Result<SendOutcome, DownstreamError>>) -> Self {
        Handed(HandedState::Replied(reply))
    }
}

impl std::fmt::Debug for Handed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handed").finish_non_exhaustive()
    }
}

impl Future for Handed {
    type Output = Result<SendOutcome, DownstreamError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            HandedState::Replied(rx) => Pin::new(rx)
                .poll(cx)
                .map(|r| r.unwrap_or(Err(DownstreamError::Disconnected))),
            HandedState::Queueing(f) => f.as_mut().poll(cx),
            HandedState::Ready(r) => {
                Poll::Ready(r.take().unwrap_or(Err(DownstreamError::Disconnected)))
            }
        }
    }
}

impl Direct {
    /// Hands pre-settled telemetry (`message`, of a payload of `size` bytes) to the connection without
    /// waiting: its outcome is counted in `tally`. `false` (nothing counted) when it cannot be taken
    /// now: not connected, or the connection's queue is full (the connection task is behind; the caller
    /// sheds rather than wait).
    pub(crate) fn try_send(
        &self,
        link: LinkKey,
        message: Vec<u8>,
        wait: Duration,
        tally: Arc<TenantTally>,
        size: usize,
    ) -> bool {
        if !self.is_connected() {
            return false;
        }
        let job = Job {
            link,
            message,
            deadline: Instant::now() + wait,
            wait,
            reply: Reply::Count(tally, size),
        };
        self.jobs.try_send(job).is_ok()
    }
}

/// Keeps the connection up until `shutdown`; between connections, queued messages fail at once.
async fn supervise(
    config: Arc<DownstreamConfig>,
    mut jobs: mpsc::Receiver<Job>,
    state: Arc<State>,
    shutdown: Shutdown,
) {
    let stop = shutdown.clone().wait();
    tokio::pin!(stop);
    let min_backoff = Duration::from_millis(100);
    let mut backoff = min_backoff;
    let mut failures = 0u32;
    loop {
        let attempt = tokio::select! {
            // The connection, once up, sees the shutdown itself and closes in order.
            biased;
            r = connect(&config, &state, &mut jobs, &shutdown) => r,
            () = &mut stop => break,
        };
        state.connected.send_replace(false);
        match attempt {
            Ok(Ended::Stopped) => break,
            Ok(Ended::Lost(reason)) => {
                failures = 0;
                backoff = min_backoff;
                tracing::warn!(address = %config.address, %reason, "connection to the router lost; reconnecting");
            }
            Err(e) => {
                failures += 1;
                if failures == 1 || failures % 10 == 0 {
                    tracing::warn!(address = %config.address, error = %e, failures, "cannot connect to the router");
                }
            }
        }
        let pause = tokio::time::sleep(backoff);
        tokio::pin!(pause);
        loop {
            tokio::select! {
                () = &mut stop => return,
                () = &mut pause => break,
                job = jobs.recv() => match job {
                    Some(job) => { job.reply.send(Err(DownstreamError::NotConnected)); }
                    None => return,
                },
            }
        }
        backoff = (backoff * 2).min(config.max_reconnect_delay.max(min_backoff));
    }
    state.connected.send_replace(false);
}

/// How a connection that was up ended.
enum Ended {
    Stopped,
    Lost(String),
}

async fn connect(
    config: &DownstreamConfig,
    state: &State,
    jobs: &mut mpsc::Receiver<Job>,
    shutdown: &Shutdown,
) -> Result<Ended, String> {
    let stream = tokio::time::timeout(
        config.connect_timeout,
        tokio::net::TcpStream::connect(&config.address),
    )
    .await
    .map_err(|_| "timed out".to_owned())?
    .map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    match &config.tls {
        None => run(config, state, stream, jobs, shutdown).await,
        Some(tls) => {
            let stream = tokio::time::timeout(
                config.connect_timeout,
                tls.connector.connect(tls.server_name.clone(), stream),
            )
            .await
            .map_err(|_| "TLS: timed out".to_owned())?
            .map_err(|e| format!("TLS: {e}"))?;
            run(config, state, stream, jobs, shutdown).await
        }
    }
}

async fn run<S: AsyncRead + AsyncWrite + Send + Unpin + 'static>(
    config: &DownstreamConfig,
    state: &State,
    mut io: S,
    jobs: &mut mpsc::Receiver<Job>,
    shutdown: &Shutdown,
) -> Result<Ended, String> {
    let stop = shutdown.clone().wait();
    tokio::pin!(stop);
    let mut inbuf = BytesMut::with_capacity(4096);
    let (open, begin) = tokio::time::timeout(
        config.connect_timeout,
        handshake(config, &mut io, &mut inbuf),
    )
    .await
    .map_err(|_| "timed out".to_owned())??;
    let (mut rd, wr) = tokio::io::split(io);
    let unwritten = Arc::new(AtomicUsize::new(0));
    let drained = Arc::new(Notify::new());
    let (chunks, chunks_rx) = mpsc::unbounded_channel();
    let writer = tokio::spawn(write_chunks(
        wr,
        chunks_rx,
        unwritten.clone(),
        drained.clone(),
    ));
    let mut conn = Conn::new(config, state, &open, &begin);
    state.connects.fetch_add(1, Ordering::Relaxed);
    state.connected.send_replace(true);
    tracing::info!(address = %config.address, "connected to the router");

    let heartbeat = open
        .idle_time_out
        .filter(|ms| *ms > 0)
        .map(|ms| Duration::from_millis(u64::from(ms) / 2));
    let mut next_heartbeat = heartbeat.map(|h| Instant::now() + h);
    let mut batch = Vec::with_capacity(256);
    // One timer, moved rather than made anew each turn: every TICK while anything waits for credit or
    // an outcome, else at the next heartbeat.
    let tick = tokio::time::sleep(TICK);
    tokio::pin!(tick);
    let ended = loop {
        let backed_up = unwritten.load(Ordering::Relaxed) > MAX_UNWRITTEN;
        if conn.needs_tick() && tick.deadline() > Instant::now() + TICK {
            tick.as_mut().reset(Instant::now() + TICK);
        }
        tokio::select! {
            biased;
            () = &mut stop => {
                conn.close();
                break Ended::Stopped;
            }
            // Before the messages: under a flood of them, the router's credit must still be read.
            read = rd.read_buf(&mut inbuf) => match read {
                Ok(0) => break Ended::Lost("the router closed the connection".into()),
                Err(e) => break Ended::Lost(e.to_string()),
                Ok(_) => {
                    if let Err(reason) = conn.on_bytes(&mut inbuf) {
                        break Ended::Lost(reason);
                    }
                    if inbuf.capacity() - inbuf.len() < 1024 {
                        inbuf.reserve(4096);
                    }
                }
            },
            () = &mut tick => {
                let now = Instant::now();
                conn.on_tick(now);
                if let (Some(every), Some(at)) = (heartbeat, next_heartbeat) {
                    if now >= at {
                        codec::encode_heartbeat(&mut conn.out);
                        next_heartbeat = Some(now + every);
                    }
                }
                let next = if conn.needs_tick() {
                    now + TICK
                } else {
                    next_heartbeat.unwrap_or_else(far_future)
                };
                tick.as_mut().reset(next);
            }
            n = jobs.recv_many(&mut batch, 256), if !backed_up => {
                if n == 0 {
                    conn.close();
                    break Ended::Stopped;
                }
                // The sessions woken with this one queue their messages first (module doc).
                tokio::task::yield_now().await;
                while batch.len() < 1024 {
                    match jobs.try_recv() {
                        Ok(job) => batch.push(job),
                        Err(_) => break,
                    }
                }
                let now = Instant::now();
                for job in batch.drain(..) {
                    conn.job(job, now);
                }
            }
            () = drained.notified(), if backed_up => {}
        }
        if !conn.out.is_empty() {
            let chunk = take_chunk(&mut conn.out);
            unwritten.fetch_add(chunk.len(), Ordering::Relaxed);
            if chunks.send(chunk).is_err() {
                break Ended::Lost("cannot write to the router".into());
            }
        }
        if writer.is_finished() {
            break Ended::Lost("cannot write to the router".into());
        }
    };
    if !conn.out.is_empty() {
        let chunk = conn.out.split().freeze();
        unwritten.fetch_add(chunk.len(), Ordering::Relaxed);
        let _ = chunks.send(chunk);
    }
    drop(chunks);
    conn.fail_all(DownstreamError::Disconnected);
    let _ = tokio::time::timeout(Duration::from_secs(1), writer).await;
    Ok(ended)
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(3600)
}

/// Writes what the connection task hands over, each chunk with as few syscalls as the socket allows.
async fn write_chunks<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut chunks: mpsc::UnboundedReceiver<Bytes>,
    unwritten: Arc<AtomicUsize>,
    drained: Arc<Notify>,
) {
    let wrote = |n: usize| {
        if unwritten.fetch_sub(n, Ordering::Relaxed).saturating_sub(n) <= MAX_UNWRITTEN {
            drained.notify_one();
        }
    };
    while let Some(chunk) = chunks.recv().await {
        if wr.write_all(&chunk).await.is_err() {
            return;
        }
        wrote(chunk.len());
        while let Ok(more) = chunks.try_recv() {
            if wr.write_all(&more).await.is_err() {
                return;
            }
            wrote(more.len());
        }
        // TLS: the records go out here.
        if wr.flush().await.is_err() {
            return;
        }
    }
    let _ = wr.shutdown().await;
}

/// SASL PLAIN, then open and begin; returns the router's open and begin.
async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    config: &DownstreamConfig,
    io: &mut S,
    inbuf: &mut BytesMut,
) -> Result<(Open, Begin), String> {
    let mut out = BytesMut::with_capacity(512);
    out.extend_from_slice(codec::SASL_HEADER);
    let response = format!("\0{}\0{}", config.user, config.password).into_bytes();
    codec::encode_sasl(
        &SaslFrame::Init(SaslInit {
            mechanism: Symbol::from("PLAIN"),
            initial_response: Some(Binary::from(response)),
            hostname: None,
        }),
        &mut out,
    )
    .map_err(|e| e.to_string())?;
    io.write_all(&out).await.map_err(|e| e.to_string())?;
    out.clear();
    expect_header(io, inbuf, codec::SASL_HEADER).await?;
    loop {
        match read_frame(io, inbuf).await? {
            Owned::Sasl(SaslFrame::Mechanisms(_)) => {}
            Owned::Sasl(SaslFrame::Outcome(o)) if o.code == SaslCode::Ok => break,
            Owned::Sasl(SaslFrame::Outcome(o)) => {
                return Err(format!("authentication failed ({:?})", o.code))
            }
            _ => return Err("unexpected frame during SASL".into()),
        }
    }
    out.extend_from_slice(codec::AMQP_HEADER);
    let open = Open {
        container_id: config.container_id.clone(),
        hostname: None,
        max_frame_size: MAX_FRAME_IN.into(),
        channel_max: 0.into(),
        idle_time_out: None,
        outgoing_locales: None,
        incoming_locales: None,
        offered_capabilities: None,
        desired_capabilities: None,
        properties: None,
    };
    let begin = Begin {
        remote_channel: None,
        next_outgoing_id: 0,
        incoming_window: INCOMING_WINDOW,
        outgoing_window: u32::MAX >> 1,
        handle_max: Handle(u32::MAX),
        offered_capabilities: None,
        desired_capabilities: None,
        properties: None,
    };
    for p in [Performative::Open(open), Performative::Begin(begin)] {
        codec::encode_frame(0, &p, &[], &mut out).map_err(|e| e.to_string())?;
    }
    io.write_all(&out).await.map_err(|e| e.to_string())?;
    expect_header(io, inbuf, codec::AMQP_HEADER).await?;
    let open = match read_frame(io, inbuf).await? {
        Owned::Amqp(Some(Performative::Open(open))) => open,
        _ => return Err("expected open".into()),
    };
    loop {
        match read_frame(io, inbuf).await? {
            Owned::Amqp(Some(Performative::Begin(begin))) => return Ok((open, begin)),
            Owned::Amqp(None) => {}
            Owned::Amqp(Some(Performative::Close(c))) => {
                return Err(format!("the router closed the connection: {:?}", c.error))
            }
            _ => return Err("expected begin".into()),
        }
    }
}

async fn expect_header<S: AsyncRead + Unpin>(
    io: &mut S,
    inbuf: &mut BytesMut,
    header: &[u8; 8],
) -> Result<(), String> {
    while inbuf.len() < 8 {
        if io.read_buf(inbuf).await.map_err(|e| e.to_string())? == 0 {
            return Err("the router closed the connection".into());
        }
    }
    if &inbuf[..8] != header {
        return Err("unexpected protocol header".into());
    }
    inbuf.advance(8);
    Ok(())
}

/// A frame of the handshake, owned.
enum Owned {
    Amqp(Option<Performative>),
    Sasl(SaslFrame),
}

async fn read_frame<S: AsyncRead + Unpin>(
    io: &mut S,
    inbuf: &mut BytesMut,
) -> Result<Owned, String> {
    loop {
        let decoded = codec::decode_frame(inbuf, MAX_FRAME_IN).map_err(|e| e.to_string())?;
        if let Some((frame, used)) = decoded {
            let owned = match frame {
                Frame::Amqp { performative, .. } => Owned::Amqp(performative),
                Frame::Sasl(s) => Owned::Sasl(s),
            };
            inbuf.advance(used);
            return Ok(owned);
        }
        if io.read_buf(inbuf).await.map_err(|e| e.to_string())? == 0 {
            return Err("the router closed the connection".into());
        }
    }
}

/// One sender link.
struct Link {
    key: LinkKey,
    name: String,
    /// The router's handle, once its attach came.
    remote: Option<u32>,
    address: String,
    /// Until the router's attach arrives: give up at this moment.
    attaching: Option<Instant>,
    /// The router answered the attach without a target: it refuses the link (its detach says why).
    refused: bool,
    credit: u32,
    delivery_count: u32,
    pending: Pending,
    /// Since when the attached link has had no credit.
    no_credit_since: Option<Instant>,
    /// Of a QoS 0 link: the flag the callers read ([`State::shedding`]).
    shedding: Option<Arc<AtomicBool>>,
    /// Of a QoS 0 link: it sheds while its tenant's QoS 1 telemetry waits for credit (both links share
    /// the consumers' credit at the router, and a QoS 0 flood would take all of it).
    yields: bool,
    /// When the link last sent, or got credit (or was attached).
    progress: Instant,
}

/// What the connection has encoded since its last write, as one chunk for the writer. The buffer's
/// allocation is shared with the chunk until it is written; once a backlog made it much larger than
/// what the turns write now, a fresh one is started, so that the large one is freed with its last
/// chunk instead of being kept for the rest of the connection.
fn take_chunk(out: &mut BytesMut) -> Bytes {
    let chunk = out.split().freeze();
    if out.capacity() > OUT_KEPT && out.capacity() > 4 * chunk.len() {
        *out = BytesMut::with_capacity(OUT_INITIAL);
    }
    chunk
}

/// What a collection of unsettled deliveries (or their deadlines) holding `len` in `capacity` slots
/// should shrink to once a backlog is over: only when it is far larger than what it holds, and never
/// below [`UNSETTLED_KEPT`], so that a steady load neither shrinks nor grows it turn after turn.
fn room_to_keep(len: usize, capacity: usize) -> Option<usize> {
    let keep = UNSETTLED_KEPT.max(2 * len);
    (capacity > 8 * keep).then_some(keep)
}

/// A link's messages waiting for credit, and the memory they hold.
#[derive(Default)]
struct Pending {
    jobs: VecDeque<Job>,
    bytes: usize,
}

impl Pending {
    fn len(&self) -> usize {
        self.jobs.len()
    }

    fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    fn front(&self) -> Option<&Job> {
        self.jobs.front()
    }

    fn push_back(&mut self, job: Job) {
        self.bytes += job.held();
        self.jobs.push_back(job);
    }

    fn pop_front(&mut self) -> Option<Job> {
        let job = self.jobs.pop_front()?;
        self.bytes -= job.held();
        if self.jobs.is_empty() && self.jobs.capacity() > PENDING_KEPT * 16 {
            // A burst is over: what it grew goes back to the allocator (a burst bound of 16 MiB
            // is up to ~200,000 small messages, whose slots alone are megabytes), instead of staying
            // with the link for the rest of the connection (B10's RSS steps).
            self.jobs.shrink_to(PENDING_KEPT);
        }
        Some(job)
    }

    fn pop_back(&mut self) -> Option<Job> {
        let job = self.jobs.pop_back()?;
        self.bytes -= job.held();
        Some(job)
    }

    fn drain(&mut self) -> std::collections::vec_deque::Drain<'_, Job> {
        self.bytes = 0;
        self.jobs.drain(..)
    }

    /// Past any burst ([`BURST_BYTES`]): what is pre-settled is shed.
    fn past_burst(&self) -> bool {
        self.bytes >= BURST_BYTES
    }

    /// Back within half a burst: the callers may send again.
    fn within_half_burst(&self) -> bool {
        self.bytes <= BURST_BYTES / 2
    }
}

impl Job {
    /// The memory a waiting message holds.
    fn held(&self) -> usize {
        self.message.capacity() + std::mem::size_of::<Job>()
    }
}

struct Unsettled {
    handle: u32,
    reply: Reply,
}

/// The connection's state, owned by its task.
struct Conn<'c> {
    config: &'c DownstreamConfig,
    state: &'c State,
    out: BytesMut,
    /// Where a transfer's performative is put together.
    scratch: Vec<u8>,
    max_frame_out: u32,
    /// Transfers the router's session takes before its next flow.
    remote_window: u32,
    next_outgoing_id: u32,
    next_delivery_id: u32,
    handle_max: u32,
    links: HashMap<LinkKey, u32>,
    by_handle: HashMap<u32, Link>,
    /// The router's handle of each attached link → ours.
    remote: HashMap<u32, u32>,
    free_handles: Vec<u32>,
    next_handle: u32,
    unsettled: HashMap<u32, Unsettled>,
    /// Unsettled deliveries in the order written, with the moment their outcome is due.
    due: VecDeque<(u32, Instant)>,
    /// Links with messages waiting.
    waiting: usize,
}

impl<'c> Conn<'c> {
    fn new(config: &'c DownstreamConfig, state: &'c State, open: &Open, begin: &Begin) -> Self {
        Self {
            config,
            state,
            out: BytesMut::with_capacity(OUT_INITIAL),
            scratch: Vec::with_capacity(64),
            max_frame_out: open.max_frame_size.0.max(codec::MIN_MAX_FRAME_SIZE),
            remote_window: begin.incoming_window,
            next_outgoing_id: 0,
            next_delivery_id: 0,
            handle_max: begin.handle_max.0,
            links: HashMap::new(),
            by_handle: HashMap::new(),
            remote: HashMap::new(),
            free_handles: Vec::new(),
            next_handle: 0,
            unsettled: HashMap::new(),
            due: VecDeque::new(),
            waiting: 0,
        }
    }

    fn send(&mut self, p: &Performative) {
        if let Err(e) = codec::encode_frame(0, p, &[], &mut self.out) {
            tracing::warn!(error = %e, "cannot encode a frame to the router");
        }
    }

    fn close(&mut self) {
        self.send(&Performative::Close(Close { error: None }));
    }

    /// A message from a caller: sent at once when its link has credit, else queued or shed.
    fn job(&mut self, job: Job, now: Instant) {
        let handle = match self.links.get(&job.link) {
            Some(h) => *h,
            None => match self.attach(&job.link, now) {
                Some(h) => h,
                None => {
                    job.reply.send(Err(DownstreamError::LinkRefused {
                        address: job.link.address(),
                        reason: "too many links".into(),
                    }));
                    return;
                }
            },
        };
        let window = self.remote_window;
        let queue = self.config.link_queue.max(1);
        let Some(link) = self.by_handle.get_mut(&handle) else {
            return;
        };
        if link.attaching.is_none() && link.pending.is_empty() && link.credit > 0 && window > 0 {
            return self.transfer(handle, job, now);
        }
        // A queue that grows while the link sends is a burst (each session bounds what it has in
        // flight), not a stall: QoS 0 past the link's queue is shed only once the link has waited for
        // credit for a while, or when the queue is far past any burst.
        if link.key.presettled()
            && (link.pending.past_burst() || (link.pending.len() >= queue && stalled(link, now)))
        {
            // Past any burst: the callers shed at the edge until the queue has gone down by half
            // (`on_flow`), instead of reading, checking and encoding what would be shed here.
            if let Some(flag) = &link.shedding {
                flag.store(true, Ordering::Relaxed);
            }
            job.reply.send(Err(DownstreamError::NoCredit));
            return;
        }
        if link.pending.is_empty() {
            self.waiting += 1;
        }
        link.pending.push_back(job);
    }

    fn attach(&mut self, key: &LinkKey, now: Instant) -> Option<u32> {
        let handle = match self.free_handles.pop() {
            Some(h) => h,
            None if self.next_handle <= self.handle_max => {
                self.next_handle += 1;
                self.next_handle - 1
            }
            None => return None,
        };
        let address = key.address();
        let id = self.state.links_attached.fetch_add(1, Ordering::Relaxed) + 1;
        let settle_mode = if key.presettled() {
            SenderSettleMode::Mixed
        } else {
            SenderSettleMode::Unsettled
        };
        let name = format!("{address}#{id}");
        self.send(&Performative::Attach(Attach {
            name: name.clone(),
            handle: Handle(handle),
            role: Role::Sender,
            snd_settle_mode: settle_mode,
            rcv_settle_mode: ReceiverSettleMode::First,
            source: Some(Box::new(Source::default())),
            target: Some(Box::new(TargetArchetype::Target(Target {
                address: Some(address.clone()),
                ..Target::default()
            }))),
            unsettled: None,
            incomplete_unsettled: false,
            initial_delivery_count: Some(0),
            max_message_size: None,
            offered_capabilities: None,
            desired_capabilities: None,
            properties: None::<Fields>,
        }));
        self.links.insert(key.clone(), handle);
        self.by_handle.insert(
            handle,
            Link {
                key: key.clone(),
                name,
                remote: None,
                address,
                attaching: Some(now + self.config.connect_timeout),
                refused: false,
                credit: 0,
                delivery_count: 0,
                pending: Pending::default(),
                no_credit_since: None,
                shedding: match key {
                    LinkKey::Telemetry(tenant) => {
                        let flag = Arc::new(AtomicBool::new(false));
                        if let Ok(mut map) = self.state.shedding.write() {
                            map.insert(tenant.clone(), flag.clone());
                        }
                        Some(flag)
                    }
                    _ => None,
                },
                yields: false,
                // The first messages waited for the attach, not for credit.
                progress: now + self.config.no_credit_timeout,
            },
        );
        Some(handle)
    }

    /// Writes `job`'s transfer; the link has credit and the session room.
    fn transfer(&mut self, handle: u32, job: Job, now: Instant) {
        let Some(link) = self.by_handle.get_mut(&handle) else {
            return;
        };
        let settled = link.key.presettled();
        let delivery_id = self.next_delivery_id;
        let start = self.out.len();
        let fits = codec::encode_single_transfer(
            0,
            handle,
            delivery_id,
            settled,
            &job.message,
            self.max_frame_out,
            &mut self.scratch,
            &mut self.out,
        );
        let written = if fits {
            Ok(())
        } else {
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
            codec::encode_transfer(
                0,
                &transfer,
                &job.message,
                self.max_frame_out,
                &mut self.out,
            )
        };
        if let Err(e) = written {
            tracing::warn!(error = %e, "cannot encode a transfer");
            self.out.truncate(start);
            job.reply.send(Err(DownstreamError::Disconnected));
            return;
        }
        let frames = if fits {
            1
        } else {
            codec::count_frames(&self.out[start..]).max(1)
        };
        self.next_delivery_id = self.next_delivery_id.wrapping_add(1);
        self.next_outgoing_id = self.next_outgoing_id.wrapping_add(frames);
        self.remote_window = self.remote_window.saturating_sub(frames);
        link.credit -= 1;
        link.delivery_count = link.delivery_count.wrapping_add(1);
        link.progress = now;
        if link.credit == 0 {
            link.no_credit_since = Some(now);
        }
        if settled {
            job.reply.send(Ok(SendOutcome::Presettled));
        } else {
            self.unsettled.insert(
                delivery_id,
                Unsettled {
                    handle,
                    reply: job.reply,
                },
            );
            self.due
                .push_back((delivery_id, now + self.config.outcome_timeout));
        }
    }

    /// Sends what waits on `handle` while it has credit and the session room.
    fn send_waiting(&mut self, handle: u32, now: Instant) {
        loop {
            let window = self.remote_window;
            let Some(link) = self.by_handle.get_mut(&handle) else {
                return;
            };
            if link.attaching.is_some() || link.credit == 0 || window == 0 {
                return;
            }
            let Some(job) = link.pending.pop_front() else {
                return;
            };
            if link.pending.is_empty() {
                self.waiting -= 1;
            }
            self.transfer(handle, job, now);
        }
    }

    /// Frames from the router.
    fn on_bytes(&mut self, inbuf: &mut BytesMut) -> Result<(), String> {
        let now = Instant::now();
        loop {
            let decoded = codec::decode_frame(inbuf, MAX_FRAME_IN).map_err(|e| e.to_string())?;
            let Some((frame, used)) = decoded else {
                return Ok(());
            };
            let performative = match frame {
                Frame::Amqp { performative, .. } => performative,
                Frame::Sasl(_) => return Err("SASL frame after the handshake".into()),
            };
            inbuf.advance(used);
            match performative {
                None => {}
                Some(Performative::Flow(flow)) => self.on_flow(&flow, now),
                Some(Performative::Disposition(d)) => self.on_disposition(d),
                Some(Performative::Attach(a)) => self.on_attach(&a, now),
                Some(Performative::Detach(d)) => self.on_detach(d),
                Some(Performative::Close(c)) => {
                    self.close();
                    return Err(format!("the router closed the connection: {:?}", c.error));
                }
                Some(Performative::End(e)) => {
                    return Err(format!("the router ended the session: {:?}", e.error))
                }
                Some(other) => tracing::debug!(?other, "unexpected frame from the router"),
            }
        }
    }

    fn on_flow(&mut self, flow: &Flow, now: Instant) {
        self.remote_window = flow
            .next_incoming_id
            .unwrap_or(0)
            .wrapping_add(flow.incoming_window)
            .wrapping_sub(self.next_outgoing_id);
        if flow.echo {
            self.session_flow(None);
        }
        let handle = match &flow.handle {
            Some(h) => match self.remote.get(&h.0) {
                Some(ours) => Some(*ours),
                None => return,
            },
            None => None,
        };
        let Some(handle) = handle else {
            let waiting: Vec<u32> = self
                .by_handle
                .iter()
                .filter(|(_, l)| !l.pending.is_empty())
                .map(|(h, _)| *h)
                .collect();
            for h in waiting {
                self.send_waiting(h, now);
            }
            return;
        };
        let Some(link) = self.by_handle.get_mut(&handle) else {
            return;
        };
        link.credit = flow
            .delivery_count
            .unwrap_or(0)
            .wrapping_add(flow.link_credit.unwrap_or(0))
            .wrapping_sub(link.delivery_count);
        if link.credit > i32::MAX as u32 {
            link.credit = 0;
        }
        if link.credit > 0 {
            link.progress = now;
            link.no_credit_since = None;
        } else if link.no_credit_since.is_none() && link.attaching.is_none() {
            link.no_credit_since = Some(now);
        }
        self.send_waiting(handle, now);
        let Some(link) = self.by_handle.get_mut(&handle) else {
            return;
        };
        // Credit came, and what waits is back within a burst: the callers send again.
        if link.credit > 0 && link.pending.within_half_burst() && !link.yields {
            if let Some(flag) = &link.shedding {
                flag.store(false, Ordering::Relaxed);
            }
        }
        if flow.drain && link.pending.is_empty() && link.credit > 0 {
            link.delivery_count = link.delivery_count.wrapping_add(link.credit);
            link.credit = 0;
            let (delivery_count, h) = (link.delivery_count, handle);
            self.session_flow(Some((h, delivery_count)));
        }
    }

    /// A session flow, or a link's (handle, delivery count) answering a drain.
    fn session_flow(&mut self, link: Option<(u32, u32)>) {
        self.send(&Performative::Flow(Flow {
            next_incoming_id: None,
            incoming_window: INCOMING_WINDOW,
            next_outgoing_id: self.next_outgoing_id,
            outgoing_window: u32::MAX >> 1,
            handle: link.map(|(h, _)| Handle(h)),
            delivery_count: link.map(|(_, c)| c),
            link_credit: link.map(|_| 0),
            available: None,
            drain: link.is_some(),
            echo: false,
            properties: None,
        }));
    }

    fn on_disposition(&mut self, d: Disposition) {
        if d.role != Role::Receiver {
            return;
        }
        let last = d.last.unwrap_or(d.first);
        let span = u64::from(last.wrapping_sub(d.first)) + 1;
        let outcome = match &d.state {
            Some(state) => outcome(state),
            None => SendOutcome::Released,
        };
        let settle = |id: u32, this: &mut Self| {
            if let Some(u) = this.unsettled.remove(&id) {
                u.reply.send(Ok(outcome.clone()));
            }
        };
        if span <= self.unsettled.len() as u64 {
            for i in 0..span {
                settle(d.first.wrapping_add(i as u32), self);
            }
        } else {
            let ids: Vec<u32> = self
                .unsettled
                .keys()
                .copied()
                .filter(|id| u64::from(id.wrapping_sub(d.first)) < span)
                .collect();
            for id in ids {
                settle(id, self);
            }
        }
        if !d.settled {
            self.send(&Performative::Disposition(Disposition {
                role: Role::Sender,
                first: d.first,
                last: d.last,
                settled: true,
                state: d.state,
                batchable: false,
            }));
        }
    }

    fn on_attach(&mut self, a: &Attach, now: Instant) {
        let Some((&handle, link)) = self
            .by_handle
            .iter_mut()
            .find(|(_, l)| l.remote.is_none() && l.name == a.name)
        else {
            return;
        };
        link.remote = Some(a.handle.0);
        self.remote.insert(a.handle.0, handle);
        link.attaching = None;
        if a.target.is_none() {
            // Refused: the detach that follows says why.
            link.refused = true;
            return;
        }
        link.progress = link.progress.max(now);
        if link.credit == 0 {
            // Waiting from now on for credit, no longer for the attach.
            link.no_credit_since = Some(now);
        }
        self.send_waiting(handle, now);
    }

    fn on_detach(&mut self, d: Detach) {
        let Some(handle) = self.remote.get(&d.handle.0).copied() else {
            return;
        };
        let reason = d
            .error
            .as_ref()
            .map(|e| {
                e.description
                    .clone()
                    .unwrap_or_else(|| format!("{:?}", e.condition))
            })
            .unwrap_or_else(|| "detached".into());
        self.send(&Performative::Detach(Detach {
            handle: Handle(handle),
            closed: true,
            error: None,
        }));
        self.forget(handle, &reason);
    }

    /// Fails what waits on `handle` and frees it.
    fn forget(&mut self, handle: u32, reason: &str) {
        let Some(mut link) = self.by_handle.remove(&handle) else {
            return;
        };
        if self.links.get(&link.key) == Some(&handle) {
            self.links.remove(&link.key);
        }
        if let Some(remote) = link.remote {
            self.remote.remove(&remote);
        }
        self.stop_shedding(&link);
        self.free_handles.push(handle);
        if !link.pending.is_empty() {
            self.waiting -= 1;
        }
        let refused = link.refused || link.attaching.is_some();
        for job in link.pending.drain() {
            let e = if refused {
                DownstreamError::LinkRefused {
                    address: link.address.clone(),
                    reason: reason.to_owned(),
                }
            } else {
                DownstreamError::Disconnected
            };
            job.reply.send(Err(e));
        }
        let ids: Vec<u32> = self
            .unsettled
            .iter()
            .filter(|(_, u)| u.handle == handle)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some(u) = self.unsettled.remove(&id) {
                u.reply.send(Err(DownstreamError::Disconnected));
            }
        }
        tracing::debug!(address = %link.address, %reason, "sender link to the router ended");
    }

    /// Whether messages wait for credit or outcomes, whose bounds are checked every [`TICK`].
    fn needs_tick(&self) -> bool {
        self.waiting > 0
            || !self.due.is_empty()
            // A link that sheds may stop shedding with nothing waiting (`on_tick`).
            || self.by_handle.values().any(|l| {
                l.shedding
                    .as_ref()
                    .is_some_and(|f| f.load(Ordering::Relaxed))
            })
    }

    /// Fails the messages that waited too long for credit or for their outcome, and links whose attach
    /// went unanswered.
    fn on_tick(&mut self, now: Instant) {
        while let Some(&(id, at)) = self.due.front() {
            if at > now {
                break;
            }
            self.due.pop_front();
            if let Some(u) = self.unsettled.remove(&id) {
                u.reply.send(Err(DownstreamError::Timeout));
            }
        }
        if self.due.len() > 2 * self.unsettled.len() + 1024 {
            let unsettled = &self.unsettled;
            self.due.retain(|(id, _)| unsettled.contains_key(id));
        }
        // After a backlog, the room it took goes back to the allocator (checked here, as the tick runs
        // until the last deadline has passed).
        if let Some(keep) = room_to_keep(self.unsettled.len(), self.unsettled.capacity()) {
            self.unsettled.shrink_to(keep);
        }
        if let Some(keep) = room_to_keep(self.due.len(), self.due.capacity()) {
            self.due.shrink_to(keep);
        }
        // QoS 0 yields to its tenant's QoS 1 telemetry once that has waited for credit for a while:
        // the router gives both links credit from the same consumers, and a device waiting for its
        // PUBACK must not be cut off (503) because a QoS 0 flood beside it took every grant.
        let waiting_qos1: Vec<TenantId> = self
            .by_handle
            .values()
            .filter(|l| !l.pending.is_empty() && stalled(l, now))
            .filter_map(|l| match &l.key {
                LinkKey::TelemetryUnsettled(t) => Some(t.clone()),
                _ => None,
            })
            .collect();
        // A link shed at the edge for its queue (not for a stall) may have credit and nothing more to
        // wait for: no flow need come to end the shedding, so the tick does.
        for link in self.by_handle.values_mut() {
            let (LinkKey::Telemetry(tenant), Some(flag)) = (&link.key, &link.shedding) else {
                continue;
            };
            link.yields = waiting_qos1.contains(tenant);
            if link.yields {
                flag.store(true, Ordering::Relaxed);
            } else if link.credit > 0
                && link.pending.within_half_burst()
                && flag.load(Ordering::Relaxed)
            {
                flag.store(false, Ordering::Relaxed);
            }
        }
        if self.waiting == 0 {
            return;
        }
        let mut unanswered = Vec::new();
        for (handle, link) in &mut self.by_handle {
            if let (Some(flag), Some(since)) = (&link.shedding, link.no_credit_since) {
                if now.duration_since(since) > SHED_AFTER {
                    flag.store(true, Ordering::Relaxed);
                }
            }
            if link.attaching.is_some_and(|until| now >= until) {
                unanswered.push(*handle);
                continue;
            }
            let had = !link.pending.is_empty();
            if link.key.presettled() && stalled(link, now) {
                // What waits past the queue is shed once the link stalls; the queue waits its bound.
                while link.pending.len() > self.config.link_queue.max(1) {
                    if let Some(job) = link.pending.pop_back() {
                        job.reply.send(Err(DownstreamError::NoCredit));
                    }
                }
            }
            while let Some(job) = link.pending.front() {
                let until = job.deadline.max(link.progress + job.wait);
                if now < until {
                    break;
                }
                if let Some(job) = link.pending.pop_front() {
                    job.reply.send(Err(DownstreamError::NoCredit));
                }
            }
            if had && link.pending.is_empty() {
                self.waiting -= 1;
            }
        }
        for handle in unanswered {
            self.send(&Performative::Detach(Detach {
                handle: Handle(handle),
                closed: true,
                error: None,
            }));
            self.forget(handle, "attach timed out");
        }
    }

    /// Forgets the shed flag of a QoS 0 link that goes.
    fn stop_shedding(&self, link: &Link) {
        if let (LinkKey::Telemetry(tenant), Some(flag)) = (&link.key, &link.shedding) {
            if let Ok(mut map) = self.state.shedding.write() {
                if map.get(tenant).is_some_and(|f| Arc::ptr_eq(f, flag)) {
                    map.remove(tenant);
                }
            }
        }
    }

    /// The connection ended: everything waiting or unsettled fails.
    fn fail_all(&mut self, e: DownstreamError) {
        if let Ok(mut map) = self.state.shedding.write() {
            map.clear();
        }
        for (_, mut link) in self.by_handle.drain() {
            for job in link.pending.drain() {
                job.reply.send(Err(e.clone()));
            }
        }
        for (_, u) in self.unsettled.drain() {
            u.reply.send(Err(e.clone()));
        }
        self.links.clear();
        self.waiting = 0;
    }
}

/// Whether `link` has had no credit for longer than [`SHED_AFTER`].
fn stalled(link: &Link, now: Instant) -> bool {
    link.no_credit_since
        .is_some_and(|s| now.duration_since(s) > SHED_AFTER)
}

/// The router's outcome as a [`SendOutcome`].
fn outcome(state: &DeliveryState) -> SendOutcome {
    match state {
        DeliveryState::Accepted(_) => SendOutcome::Accepted,
        DeliveryState::Rejected(r) => {
            let (condition, description) = match &r.error {
                Some(e) => (
                    super::super::message::condition_name(&e.condition),
                    e.description.clone(),
                ),
                None => (None, None),
            };
            SendOutcome::Rejected {
                condition,
                description,
            }
        }
        DeliveryState::Modified(_) => SendOutcome::Modified,
        _ => SendOutcome::Released,
    }
}

#[cfg(test)]
mod tests;
