//! Drives the router's real connection engine ([`connection::serve`]) with whole connection sequences,
//! for the `amqp_connection` fuzz target (fuzz/) and the stable property tests
//! (tests/process/sequences.rs). Not part of the router's API: nothing in the router calls it.
//!
//! [`Engine`] is a router without sockets: its [`Shared`] state (in-memory event store, optional registry for
//! application logins) serves connections over any `AsyncRead + AsyncWrite`, so a harness can run one over
//! `tokio::io::duplex`. [`Sequence::generate`] builds, from any source of [`Entropy`] (libFuzzer's bytes
//! through `arbitrary`, or a seeded PRNG), the frames two peers send after a valid SASL PLAIN login and AMQP
//! header: open, begin, attach (Hono's addresses and broken ones), flow (huge credit included), transfer
//! (random ids and flags, device messages with a valid assertion, commands, responses, garbage),
//! disposition (ranges that wrap), detach, end and close, with random fields. [`drive`] feeds them, reads
//! and discards what the router sends, and then asks each connection to close: a connection that neither
//! ends nor answers within the bound is stuck, which is a finding like a panic.
//!
//! Layout: this file holds the harness ([`Engine`], [`drive`]); `sequence` what a sequence is and how
//! one is generated; `frames` the random values and frames it is made of, from the [`Entropy`] and
//! [`Vocabulary`] there.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::BytesMut;
use fe2o3_amqp_types::performatives::{Close, Detach, Performative};
use ferry_core::assertion::{Jwks, Verifier, VerifierConfig};
use ferry_core::shutdown::Trigger;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::Notify;

use crate::codec::{self, SaslFrame};
use crate::connection::{self, ConnError};
use crate::events::InMemoryStore;
use crate::{auth, gateways, hub, metrics, registry, EngineConfig, Shared};

mod frames;
mod sequence;

pub use frames::{Entropy, Login, Vocabulary};
pub use sequence::{Sequence, Step};

/// What an [`Engine`] is built from.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The adapters' service credential.
    pub adapter_user: String,
    pub adapter_password: String,
    /// The registry's URL and internal token, for application logins and gateway lookups; without one,
    /// only the adapter credential logs in.
    pub registry: Option<(String, String)>,
    /// The keys assertions are verified with.
    pub jwks: Jwks,
    /// Per tenant; small keeps a long fuzzing run's event store small.
    pub max_events_per_tenant: u64,
}

/// A router's engine without listeners: connections are served over whatever IO the caller has.
#[derive(Debug)]
pub struct Engine {
    shared: Arc<Shared<InMemoryStore>>,
    /// Kept so that the connections' shutdown never fires.
    _trigger: Trigger,
}

impl Engine {
    /// Builds the shared state and starts the once-a-second expiry of events and command responses.
    /// Call within a Tokio runtime.
    pub fn new(setup: Setup) -> Self {
        let (trigger, shutdown) = ferry_core::shutdown::channel();
        let registry = setup.registry.as_ref().map(|(url, token)| {
            // Only a TLS backend that cannot start makes this fail; the fuzz harness needs none.
            registry::RegistryClient::new(url, token, None)
                .expect("the registry's HTTP client builds")
        });
        let metrics = metrics::Metrics::new(&ferry_core::admin::Admin::new());
        // The deployed defaults for every limit, as `start` takes them from the config.
        let defaults = crate::Config::default();
        let shared = Arc::new(Shared {
            hub: hub::Hub::new(
                Arc::new(InMemoryStore::new()),
                metrics,
                setup.max_events_per_tenant,
            )
            .with_max_queued_bytes(defaults.max_queued_bytes_per_connection),
            auth: auth::Authenticator::new(
                setup.adapter_user,
                setup.adapter_password,
                registry.clone(),
            ),
            via: gateways::ViaLookup::new(registry.clone()),
            tenant_limits: crate::tenants::TenantLimits::new(registry),
            config: EngineConfig {
                idle_timeout: Duration::from_secs(30),
                default_event_ttl: Duration::from_secs(60),
                ..EngineConfig::from(&defaults)
            },
            shutdown: shutdown.clone(),
            verifier: RwLock::new(Arc::new(Verifier::new(
                &setup.jwks,
                VerifierConfig::default(),
            ))),
            refresh_keys: Notify::new(),
            bridge: ferry_core::console::RouterBridge::new(Arc::new(
                ferry_core::console::MemoryPresence::default(),
            )),
            seen: crate::console::SeenFilter::default(),
            open_connections: AtomicUsize::new(0),
            per_user: std::sync::Mutex::new(std::collections::HashMap::new()),
            bus: None,
        });
        let expiring = shared.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        let now = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
                        expiring.hub.expire_events(now);
                        expiring.hub.expire_responses(std::time::Instant::now());
                    }
                    () = shutdown.clone().wait() => return,
                }
            }
        });
        Self {
            shared,
            _trigger: trigger,
        }
    }

    /// The engine's shared state (the hub, for assertions about what it holds).
    pub fn shared(&self) -> &Arc<Shared<InMemoryStore>> {
        &self.shared
    }

    /// Serves one connection until it ends, as the router's listener does.
    pub fn serve<IO>(
        &self,
        io: IO,
    ) -> impl std::future::Future<Output = Result<(), ConnError>> + Send + 'static
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let shared = self.shared.clone();
        let peer = SocketAddr::from(([127, 0, 0, 1], 5672));
        async move { connection::serve(io, peer, shared).await }
    }

    /// Runs `sequence` over two in-memory connections. A panic in a connection task is raised again
    /// here; `Err` when a connection is still running `bound` after the sequence asked it to close.
    pub async fn run(&self, sequence: &Sequence, pace: Pace) -> Result<Outcome, Stuck> {
        let bound = pace.bound;
        let mut clients = Vec::new();
        let mut tasks = Vec::new();
        for _ in 0..2 {
            let (client, server) = tokio::io::duplex(64 * 1024);
            clients.push(client);
            tasks.push(tokio::spawn(self.serve(server)));
        }
        let outcome = drive(sequence, clients, pace).await;
        for (i, task) in tasks.into_iter().enumerate() {
            match tokio::time::timeout(bound, task).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Ok(Err(e)) => panic!("connection task {i} failed: {e}"),
                Err(_) => return Err(Stuck { connection: i }),
            }
        }
        outcome
    }
}

/// A connection that did not end within the bound after being asked to close.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("connection {connection} did not end within the bound after its peer's close")]
pub struct Stuck {
    pub connection: usize,
}

/// What became of a sequence's connections.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Per connection, what the router sent.
    pub received: [Received; 2],
}

/// What the router sent on one connection, decoded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Received {
    pub bytes: usize,
    /// The SASL outcome was `ok`.
    pub logged_in: bool,
    /// The router's performatives, by name (`"open"`, `"attach"`, ...), in order; heartbeats left out.
    pub performatives: Vec<&'static str>,
    /// The condition of the router's close, when it closed with an error.
    pub close_error: Option<String>,
    /// The conditions of the router's detaches that carried an error.
    pub detach_errors: Vec<String>,
    /// Bytes from the router that are not a protocol header or a well-formed frame: always a finding.
    pub bad_output: Option<String>,
}

impl Received {
    /// Takes the complete headers and frames at the start of `buf`, leaving an incomplete rest.
    fn take(&mut self, buf: &mut BytesMut) {
        loop {
            if self.bad_output.is_some() {
                buf.clear();
                return;
            }
            if buf.starts_with(b"AMQP") {
                if buf.len() < 8 {
                    return;
                }
                let _ = buf.split_to(8);
                continue;
            }
            let n = match codec::decode_frame(buf, u32::MAX) {
                Ok(None) => return,
                Err(e) => {
                    self.bad_output = Some(format!("{e}: {:02x?}", &buf[..buf.len().min(64)]));
                    continue;
                }
                Ok(Some((codec::Frame::Sasl(SaslFrame::Outcome(o)), n))) => {
                    self.logged_in = o.code == fe2o3_amqp_types::sasl::SaslCode::Ok;
                    n
                }
                Ok(Some((codec::Frame::Sasl(_), n))) => n,
                Ok(Some((codec::Frame::Amqp { performative, .. }, n))) => {
                    if let Some(p) = performative {
                        if let Performative::Detach(Detach { error: Some(e), .. }) = &p {
                            self.detach_errors.push(format!(
                                "{:?}: {}",
                                e.condition,
                                e.description.as_deref().unwrap_or("")
                            ));
                        }
                        if let Performative::Close(Close { error: Some(e) }) = &p {
                            self.close_error = Some(format!(
                                "{:?}: {}",
                                e.condition,
                                e.description.as_deref().unwrap_or("")
                            ));
                        }
                        self.performatives.push(name(&p));
                    }
                    n
                }
            };
            let _ = buf.split_to(n);
        }
    }
}

/// A performative's name in the spec.
pub fn name(p: &Performative) -> &'static str {
    match p {
        Performative::Open(_) => "open",
        Performative::Begin(_) => "begin",
        Performative::Attach(_) => "attach",
        Performative::Flow(_) => "flow",
        Performative::Transfer(_) => "transfer",
        Performative::Disposition(_) => "disposition",
        Performative::Detach(_) => "detach",
        Performative::End(_) => "end",
        Performative::Close(_) => "close",
    }
}

/// How [`drive`] paces a sequence. Without pauses the whole sequence, final close included, arrives
/// before the router has finished anything that goes through another task or connection.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// How long a step's pause lasts.
    pub pause: Duration,
    /// After the last step: wait until the router has been silent this long (at most [`Pace::settle_max`]).
    pub quiet: Duration,
    pub settle_max: Duration,
    /// Time a connection has to take the sequence and to end after its peer's close.
    pub bound: Duration,
}

/// Feeds `sequence` to the router over `clients` (one per connection, already connected), reading and
/// discarding what comes back, then sends each connection a close and waits (within `bound`) for the
/// router to end it.
pub async fn drive<C>(sequence: &Sequence, clients: Vec<C>, pace: Pace) -> Result<Outcome, Stuck>
where
    C: AsyncRead + AsyncWrite + Send + 'static,
{
    let bound = pace.bound;
    let mut writers = Vec::new();
    let mut readers = Vec::new();
    // Bytes from the router on all connections, to tell when it has gone quiet.
    let heard = Arc::new(AtomicUsize::new(0));
    for client in clients {
        let (mut r, w) = tokio::io::split(client);
        writers.push(Some(w));
        let heard = heard.clone();
        readers.push(tokio::spawn(async move {
            let mut buf = BytesMut::with_capacity(16 * 1024);
            let mut received = Received::default();
            loop {
                match r.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => return received,
                    Ok(n) => {
                        received.bytes += n;
                        heard.fetch_add(n, Ordering::Relaxed);
                    }
                }
                received.take(&mut buf);
            }
        }));
    }
    let mut outcome = Outcome::default();
    let feed = async {
        for (i, login) in sequence.logins.iter().enumerate() {
            write(&mut writers, i, &Sequence::login_bytes(login)).await;
        }
        for step in &sequence.steps {
            if step.pause {
                tokio::time::sleep(pace.pause).await;
            }
            write(&mut writers, step.connection, &Sequence::step_bytes(step)).await;
            tokio::task::yield_now().await;
        }
        let settled = tokio::time::Instant::now() + pace.settle_max;
        loop {
            let before = heard.load(Ordering::Relaxed);
            tokio::time::sleep(pace.quiet).await;
            if heard.load(Ordering::Relaxed) == before || tokio::time::Instant::now() >= settled {
                break;
            }
        }
        for i in 0..writers.len() {
            let close = Step {
                connection: i,
                channel: 0,
                performative: Performative::Close(Close { error: None }),
                payload: Vec::new(),
                pause: false,
            };
            write(&mut writers, i, &Sequence::step_bytes(&close)).await;
        }
    };
    // Writes block only while the router does not read; that too must end within the bound.
    let allowed = bound + pace.settle_max + pace.pause * 64;
    if tokio::time::timeout(allowed, feed).await.is_err() {
        let connection = readers.iter().position(|r| !r.is_finished()).unwrap_or(0);
        return Err(Stuck { connection });
    }
    for (i, reader) in readers.into_iter().enumerate() {
        match tokio::time::timeout(bound, reader).await {
            Ok(Ok(received)) => {
                if let Some(slot) = outcome.received.get_mut(i) {
                    *slot = received;
                }
            }
            Ok(Err(e)) => panic!("reader {i} failed: {e}"),
            Err(_) => return Err(Stuck { connection: i }),
        }
    }
    drop(writers);
    Ok(outcome)
}

/// Writes to connection `i` unless the router has already closed it.
async fn write<W: AsyncWrite + Unpin>(writers: &mut [Option<W>], i: usize, bytes: &[u8]) {
    if let Some(w) = writers.get_mut(i) {
        if let Some(stream) = w {
            if stream.write_all(bytes).await.is_err() || stream.flush().await.is_err() {
                *w = None;
            }
        }
    }
}
