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

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::BytesMut;
use fe2o3_amqp_types::definitions::{
    self, AmqpError, ErrorCondition, Handle, ReceiverSettleMode, Role, SenderSettleMode,
};
use fe2o3_amqp_types::messaging::{
    Accepted, ApplicationProperties, DeliveryState, Modified, Properties, Rejected, Released,
    Source, Target, TargetArchetype,
};
use fe2o3_amqp_types::performatives::{
    Attach, Begin, Close, Detach, Disposition, End, Flow, Open, Performative, Transfer,
};
use fe2o3_amqp_types::primitives::Binary;
use fe2o3_amqp_types::sasl::SaslInit;
use ferry_core::assertion::{Jwks, Verifier, VerifierConfig};
use ferry_core::hono::app_property;
use ferry_core::shutdown::Trigger;
use serde_amqp::primitives::Symbol;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::Notify;

use crate::codec::{self, MessageParts, SaslFrame};
use crate::connection::{self, ConnError};
use crate::events::InMemoryStore;
use crate::{auth, gateways, hub, metrics, registry, EngineConfig, Shared};

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
            via: gateways::ViaLookup::new(registry),
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
            all_closed: Notify::new(),
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

/// Where random choices come from: libFuzzer's input (through `arbitrary::Unstructured`) or a PRNG.
pub trait Entropy {
    /// A number below `n`; 0 when `n` is 0.
    fn below(&mut self, n: u32) -> u32;
    /// Any number.
    fn any_u32(&mut self) -> u32;
    /// Bytes for `buf` (zeros once the input is used up).
    fn fill(&mut self, buf: &mut [u8]);
    /// Whether there is input left for another step.
    fn has_more(&mut self) -> bool;
}

/// Credentials a connection logs in with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    pub user: String,
    pub password: String,
}

/// The values that make sequences reach past the first check: logins that work, and an assertion that
/// verifies (for device `d1` of tenant `t1`).
#[derive(Debug, Clone)]
pub struct Vocabulary {
    pub logins: Vec<Login>,
    /// The adapters' user name: its logins send device messages, the others consume and command.
    pub adapter_user: String,
    pub assertion: String,
}

/// One frame one peer sends.
#[derive(Debug, Clone)]
pub struct Step {
    /// Which of the two connections sends it.
    pub connection: usize,
    pub channel: u16,
    pub performative: Performative,
    pub payload: Vec<u8>,
    /// Give the router [`Pace::pause`] before this frame, so that what earlier frames set off (an event
    /// stored, credit passed to a producer, a delivery to a consumer) happens before it.
    pub pause: bool,
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

/// Two peers' logins and the frames they send, in order.
#[derive(Debug, Clone)]
pub struct Sequence {
    pub logins: [Login; 2],
    pub steps: Vec<Step>,
}

/// Addresses that attach: Hono's (valid ones first), their short forms, and near misses.
const ADDRESSES: &[&str] = &[
    "telemetry/t1",
    "event/t1",
    "command/t1",
    "command_response/t1/x",
    "command_response",
    "command_internal/inst1",
    "t/t1",
    "e/t1",
    "telemetry/t2",
    "event/t2",
    "command/t2",
    "command_response/t2/y",
    "command_response/t1/",
    "telemetry/",
    "telemetry",
    "",
    "command_internal/",
    "telemetry/t1/extra",
    "queue/t1",
    "telemetry/T1!",
];

const LINK_NAMES: &[&str] = &["a", "b", "rcv-telemetry/t1", "snd-telemetry/t1", ""];

fn chance(e: &mut impl Entropy, one_in: u32) -> bool {
    e.below(one_in) == 0
}

fn pick<'a, T>(e: &mut impl Entropy, from: &'a [T]) -> &'a T {
    let n = u32::try_from(from.len()).unwrap_or(u32::MAX);
    &from[usize::try_from(e.below(n)).unwrap_or(0)]
}

/// Mostly small numbers and the edges where arithmetic wraps; sometimes anything.
fn number(e: &mut impl Entropy) -> u32 {
    match e.below(4) {
        0 | 1 => e.below(8),
        2 => *pick(
            e,
            &[
                255,
                256,
                65_535,
                65_536,
                i32::MAX as u32,
                1 << 31,
                u32::MAX - 1,
                u32::MAX,
            ],
        ),
        _ => e.any_u32(),
    }
}

fn bytes(e: &mut impl Entropy, max: u32) -> Vec<u8> {
    let len = e.below(max + 1);
    let mut v = vec![0; usize::try_from(len).unwrap_or(0)];
    e.fill(&mut v);
    v
}

fn text(e: &mut impl Entropy, max: u32) -> String {
    bytes(e, max)
        .into_iter()
        .map(|b| char::from(b' ' + b % 95))
        .collect()
}

fn address(e: &mut impl Entropy) -> String {
    match e.below(10) {
        0 => text(e, 24),
        1 => format!("command_response/t1/{}", "r".repeat(e.below(400) as usize)),
        _ => (*pick(e, ADDRESSES)).to_owned(),
    }
}

fn error_condition(e: &mut impl Entropy) -> Option<definitions::Error> {
    chance(e, 3).then(|| definitions::Error {
        condition: ErrorCondition::AmqpError(AmqpError::InternalError),
        description: Some("fuzz".into()),
        info: None,
    })
}

fn delivery_state(e: &mut impl Entropy) -> Option<DeliveryState> {
    match e.below(6) {
        0 => None,
        1 | 2 => Some(DeliveryState::Accepted(Accepted {})),
        3 => Some(DeliveryState::Rejected(Rejected { error: None })),
        4 => Some(DeliveryState::Released(Released {})),
        _ => Some(DeliveryState::Modified(Modified {
            delivery_failed: Some(e.below(2) == 0),
            undeliverable_here: Some(e.below(2) == 0),
            message_annotations: None,
        })),
    }
}

/// A transfer's payload: well-formed Hono messages of each kind (mostly the kind the link's `address`
/// takes), or something broken.
fn message(e: &mut impl Entropy, vocabulary: &Vocabulary, link: Option<&str>) -> Vec<u8> {
    let max = if chance(e, 16) { 2000 } else { 64 };
    let data = bytes(e, max);
    let mut props = Properties::builder();
    let mut app = ApplicationProperties::builder();
    let prefix = link.and_then(|a| a.split('/').next()).unwrap_or("");
    let reply = |e: &mut _| {
        if chance(e, 4) {
            address(e)
        } else {
            "command_response/t1/x".to_owned()
        }
    };
    let kind = match prefix {
        _ if chance(e, 4) => e.below(8),
        "telemetry" | "event" | "t" | "e" => e.below(3),
        "command" => 3,
        "command_response" => 4,
        "command_internal" => 5,
        _ => e.below(8),
    };
    match kind {
        // Telemetry or an event from d1, with its assertion.
        0 | 1 => {
            app = app
                .insert(app_property::DEVICE_ID, "d1")
                .insert(app_property::REG_ASSERTION, vocabulary.assertion.as_str());
            props = props.content_type("text/plain");
        }
        // The same, for a device the assertion is not about, or with a broken assertion.
        2 => {
            let device = *pick(e, &["d2", "", "d1"]);
            let token = if chance(e, 2) { "x.y.z" } else { "" };
            app = app
                .insert(app_property::DEVICE_ID, device)
                .insert(app_property::REG_ASSERTION, token);
        }
        // A command from an application.
        3 => {
            props = props
                .to(format!("command/t1/{}", pick(e, &["d1", "d2", "gw", ""])))
                .subject("setBrightness")
                .message_id(format!("m{}", e.below(4)))
                .reply_to(reply(e));
        }
        // A command response from an adapter.
        4 => {
            props = props
                .to(reply(e))
                .correlation_id(format!("m{}", e.below(4)));
            app = app
                .insert(app_property::STATUS, 200)
                .insert(app_property::DEVICE_ID, "d1")
                .insert(app_property::TENANT_ID, "t1")
                .insert(app_property::REG_ASSERTION, vocabulary.assertion.as_str());
        }
        // A command subscription change from an adapter instance.
        5 => {
            props = props.subject(*pick(e, &["register", "unregister", "set-last-gw", "?"]));
            app = app
                .insert(app_property::TENANT_ID, "t1")
                .insert(app_property::DEVICE_ID, *pick(e, &["d1", "gw", ""]))
                .insert(app_property::GATEWAY_ID, "gw")
                .insert("all_devices", e.below(2) == 0);
        }
        // Not a message.
        6 => return bytes(e, 128),
        _ => {}
    }
    let (props, app) = (props.build(), app.build());
    let mut out = Vec::new();
    let parts = MessageParts {
        header: None,
        message_annotations: None,
        properties: Some(&props),
        application_properties: Some(&app),
        data: &data,
    };
    if codec::build_message(&parts, &mut out).is_err() {
        out.clear();
    }
    if chance(e, 8) {
        // Cut short: a message that does not parse, or the first part of a multi-frame one.
        let keep = e.below(u32::try_from(out.len()).unwrap_or(u32::MAX));
        out.truncate(usize::try_from(keep).unwrap_or(0));
    }
    out
}

/// What a generator knows of one peer's connection, so that most frames make sense where they are sent
/// (frames that never do are refused at the first check and reach nothing deeper).
#[derive(Debug, Default)]
struct PeerState {
    /// Logged in with the adapters' credential (else as an application user).
    adapter: bool,
    opened: bool,
    begun: bool,
    /// Attached links: handle, whether the peer sends on it, its address.
    links: Vec<(u32, bool, String)>,
    next_handle: u32,
    next_delivery_id: u32,
    next_outgoing_id: u32,
}

/// A sensible value, or (one time in `WILD`) anything.
const WILD: u32 = 40;

fn wild(e: &mut impl Entropy, sensible: u32) -> u32 {
    if chance(e, WILD) {
        number(e)
    } else {
        sensible
    }
}

/// Hono's addresses for a link on which the peer sends (`true`) or receives, mostly ones its principal
/// may attach (an adapter sends device messages and responses, an application consumes them and sends
/// commands).
fn link_address(e: &mut impl Entropy, adapter: bool, peer_sends: bool) -> String {
    if chance(e, 24) {
        return address(e);
    }
    let choices: &[&str] = match (adapter, peer_sends) {
        // Events get credit without a consumer (they are stored); telemetry only while a consumer has
        // credit, and a sender that ignores credit loses its link.
        (true, true) => &[
            "telemetry/t1",
            "event/t1",
            "event/t1",
            "e/t1",
            "command_response",
            "command_internal/inst1",
            "t/t1",
        ],
        (true, false) => &["command_internal/inst1"],
        (false, true) => &["command/t1"],
        (false, false) => &["telemetry/t1", "event/t1", "command_response/t1/x", "e/t1"],
    };
    (*pick(e, choices)).to_owned()
}

fn open(e: &mut impl Entropy, connection: usize) -> Performative {
    Performative::Open(Open {
        container_id: format!("fuzz-{connection}"),
        hostname: chance(e, 4).then(|| text(e, 8)),
        max_frame_size: (if chance(e, 2) {
            65_536
        } else {
            *pick(e, &[512, 4096, 0, 511, u32::MAX])
        })
        .into(),
        channel_max: (if chance(e, 2) { 255 } else { number(e) as u16 }).into(),
        idle_time_out: match e.below(8) {
            0 => Some(1),
            1 => Some(e.below(100)),
            2 => Some(number(e)),
            _ => None,
        },
        outgoing_locales: None,
        incoming_locales: None,
        offered_capabilities: None,
        desired_capabilities: None,
        properties: None,
    })
}

fn attach(e: &mut impl Entropy, state: &mut PeerState) -> Performative {
    let peer_sends = chance(e, 2);
    let addr = link_address(e, state.adapter, peer_sends);
    let handle = if chance(e, WILD) {
        number(e)
    } else {
        state.next_handle
    };
    state.next_handle = state.next_handle.wrapping_add(1);
    state.links.push((handle, peer_sends, addr.clone()));
    // The peer's receiver names its source, its sender its target (mostly).
    let on_source = peer_sends == chance(e, 40);
    Performative::Attach(Attach {
        name: format!("{}{handle}", pick(e, LINK_NAMES)),
        handle: Handle(handle),
        role: if peer_sends {
            Role::Sender
        } else {
            Role::Receiver
        },
        // Hono's addresses refuse some modes (events must be unsettled): mostly the default.
        snd_settle_mode: match e.below(8) {
            0 => SenderSettleMode::Settled,
            1 => SenderSettleMode::Mixed,
            _ => SenderSettleMode::Unsettled,
        },
        rcv_settle_mode: if chance(e, 40) {
            ReceiverSettleMode::Second
        } else {
            ReceiverSettleMode::First
        },
        source: (!chance(e, 40)).then(|| {
            Box::new(Source {
                address: on_source.then(|| addr.clone()),
                ..Source::default()
            })
        }),
        target: (!chance(e, 40)).then(|| {
            Box::new(TargetArchetype::Target(Target {
                address: (!on_source).then(|| addr.clone()),
                ..Target::default()
            }))
        }),
        unsettled: None,
        incomplete_unsettled: chance(e, 16),
        initial_delivery_count: (peer_sends != chance(e, 16)).then(|| wild(e, 0)),
        max_message_size: chance(e, 4).then(|| u64::from(number(e))),
        offered_capabilities: None,
        desired_capabilities: None,
        properties: None,
    })
}

/// A link of the peer's (one it sends on when `sending`), or a handle nobody attached. Telemetry links
/// less often: the router gives them credit only while a consumer has some, and detaches a sender that
/// goes on without.
fn link_handle(e: &mut impl Entropy, state: &PeerState, sending: Option<bool>) -> u32 {
    let telemetry_too = chance(e, 3);
    let fitting: Vec<u32> = state
        .links
        .iter()
        .filter(|(_, sends, _)| sending.is_none_or(|s| s == *sends))
        .filter(|(_, sends, a)| telemetry_too || !*sends || !a.starts_with('t'))
        .map(|(h, _, _)| *h)
        .collect();
    if fitting.is_empty() || chance(e, WILD) {
        number(e)
    } else {
        *pick(e, &fitting)
    }
}

fn flow(e: &mut impl Entropy, state: &PeerState) -> Performative {
    let link = !chance(e, 5);
    // Credit matters on the links the router sends on (the peer's receivers).
    let receivers = if chance(e, 4) { None } else { Some(false) };
    let handle = link.then(|| Handle(link_handle(e, state, receivers)));
    Performative::Flow(Flow {
        next_incoming_id: (!chance(e, 8)).then(|| wild(e, 0)),
        incoming_window: wild(e, 2048),
        next_outgoing_id: wild(e, state.next_outgoing_id),
        outgoing_window: wild(e, 2048),
        delivery_count: (link && !chance(e, 4)).then(|| wild(e, 0)),
        link_credit: link.then(|| match e.below(6) {
            0 => number(e),
            1 => *pick(e, &[i32::MAX as u32, u32::MAX, 1 << 31]),
            _ => e.below(100),
        }),
        handle,
        available: chance(e, 4).then(|| number(e)),
        drain: chance(e, 6),
        echo: chance(e, 6),
        properties: None,
    })
}

fn transfer(e: &mut impl Entropy, state: &mut PeerState, handle: u32) -> Performative {
    let delivery_id = if chance(e, 40) {
        None
    } else if chance(e, WILD) {
        Some(number(e))
    } else {
        Some(state.next_delivery_id)
    };
    state.next_delivery_id = state.next_delivery_id.wrapping_add(1);
    state.next_outgoing_id = state.next_outgoing_id.wrapping_add(1);
    Performative::Transfer(Transfer {
        handle: Handle(handle),
        delivery_id,
        delivery_tag: (!chance(e, 16)).then(|| Binary::from(bytes(e, 8))),
        message_format: (!chance(e, 4)).then(|| wild(e, 0)),
        settled: match e.below(3) {
            0 => None,
            1 => Some(true),
            _ => Some(false),
        },
        more: chance(e, 8),
        rcv_settle_mode: chance(e, 8).then_some(ReceiverSettleMode::Second),
        state: chance(e, 8).then(|| delivery_state(e)).flatten(),
        resume: chance(e, 16),
        aborted: chance(e, 12),
        batchable: chance(e, 4),
    })
}

fn disposition(e: &mut impl Entropy) -> Performative {
    let first = if chance(e, 4) { number(e) } else { e.below(16) };
    Performative::Disposition(Disposition {
        role: if chance(e, 6) {
            Role::Sender
        } else {
            Role::Receiver
        },
        first,
        last: match e.below(5) {
            0 => None,
            // Wraps around all 2^32 ids.
            1 => Some(first.wrapping_sub(1)),
            2 => Some(number(e)),
            _ => Some(first.wrapping_add(e.below(16))),
        },
        settled: !chance(e, 4),
        state: delivery_state(e),
        batchable: chance(e, 4),
    })
}

impl Sequence {
    /// Up to `max_steps` frames of two peers, interleaved. Each peer mostly follows the protocol's order
    /// (open, begin, then links, credit, deliveries and settlements on them, and at times detach, end or
    /// close); one field in about [`WILD`] is anything, and one frame in a while comes out of order.
    pub fn generate(e: &mut impl Entropy, vocabulary: &Vocabulary, max_steps: usize) -> Self {
        // Mostly an adapter and an application, so that messages have somewhere to go.
        let mut login = |adapter: bool| {
            let any = chance(e, 8);
            let fitting: Vec<&Login> = vocabulary
                .logins
                .iter()
                .filter(|l| any || (l.user == vocabulary.adapter_user) == adapter)
                .collect();
            if fitting.is_empty() {
                pick(e, &vocabulary.logins).clone()
            } else {
                (*pick(e, &fitting)).clone()
            }
        };
        let logins = [login(true), login(false)];
        let mut steps = Vec::new();
        let mut peers = logins.clone().map(|login| PeerState {
            adapter: login.user == vocabulary.adapter_user,
            ..PeerState::default()
        });
        while steps.len() < max_steps && e.has_more() {
            let connection = usize::from(chance(e, 2));
            let state = &mut peers[connection];
            let channel = if chance(e, 64) {
                u16::try_from(e.any_u32() & 0xffff).unwrap_or(0)
            } else {
                0
            };
            let mut payload = Vec::new();
            let mut second_session = false;
            let performative = if !state.opened {
                state.opened = true;
                open(e, connection)
            } else if !state.begun && !chance(e, 40) {
                state.begun = true;
                Performative::Begin(Begin {
                    remote_channel: chance(e, 40).then(|| e.below(3) as u16),
                    next_outgoing_id: wild(e, 0),
                    incoming_window: wild(e, 2048),
                    outgoing_window: wild(e, 2048),
                    handle_max: wild(e, 255).into(),
                    offered_capabilities: None,
                    desired_capabilities: None,
                    properties: None,
                })
            } else {
                match e.below(40) {
                    0..=7 if state.links.len() < 6 => attach(e, state),
                    8..=27 if state.links.iter().any(|(_, sends, _)| *sends) => {
                        let handle = link_handle(e, state, Some(true));
                        let address = state
                            .links
                            .iter()
                            .find(|(h, _, _)| *h == handle)
                            .map(|(_, _, a)| a.clone());
                        payload = message(e, vocabulary, address.as_deref());
                        transfer(e, state, handle)
                    }
                    0..=27 => flow(e, state),
                    28..=34 => disposition(e),
                    35 | 36 => {
                        let handle = link_handle(e, state, None);
                        state.links.retain(|(h, _, _)| *h != handle);
                        Performative::Detach(Detach {
                            handle: Handle(handle),
                            closed: !chance(e, 4),
                            error: error_condition(e),
                        })
                    }
                    37 => {
                        state.begun = false;
                        state.links.clear();
                        Performative::End(End {
                            error: error_condition(e),
                        })
                    }
                    38 if chance(e, 3) => Performative::Close(Close {
                        error: error_condition(e),
                    }),
                    38 if chance(e, 8) => open(e, connection),
                    38 => flow(e, state),
                    // A second session (on a channel that is in use, at times).
                    _ => {
                        second_session = !chance(e, 8);
                        Performative::Begin(Begin {
                            remote_channel: chance(e, 8).then(|| e.below(3) as u16),
                            next_outgoing_id: wild(e, 0),
                            incoming_window: wild(e, 2048),
                            outgoing_window: wild(e, 2048),
                            handle_max: wild(e, 255).into(),
                            offered_capabilities: None,
                            desired_capabilities: None,
                            properties: None,
                        })
                    }
                }
            };
            let channel = match performative {
                Performative::Open(_) => 0,
                Performative::Begin(_) if second_session => 1,
                _ => channel,
            };
            steps.push(Step {
                connection,
                channel,
                performative,
                payload,
                pause: chance(e, 8),
            });
        }
        Self { logins, steps }
    }

    /// What each connection sends, in order, after its login: one chunk per step.
    fn login_bytes(login: &Login) -> Vec<u8> {
        let mut out = BytesMut::new();
        out.extend_from_slice(codec::SASL_HEADER);
        let response = format!("\0{}\0{}", login.user, login.password).into_bytes();
        // Encoding a sasl-init of two short strings cannot fail; an empty login would only be refused.
        let _ = codec::encode_sasl(
            &SaslFrame::Init(SaslInit {
                mechanism: Symbol::from("PLAIN"),
                initial_response: Some(Binary::from(response)),
                hostname: None,
            }),
            &mut out,
        );
        out.extend_from_slice(codec::AMQP_HEADER);
        out.to_vec()
    }

    fn step_bytes(step: &Step) -> Vec<u8> {
        let mut out = BytesMut::new();
        // A performative the codec refuses to encode (none should be) is left out rather than sent broken.
        let _ = codec::encode_frame(step.channel, &step.performative, &step.payload, &mut out);
        out.to_vec()
    }
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
