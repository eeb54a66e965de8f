//! The adapter's bus in cluster mode: NATS with JetStream (docs/cluster.md "Adapters on NATS"), behind
//! the same [`Downstream`](super::Downstream) as the AMQP connection to the router.
//!
//! Every message carries the AMQP 1.0 message the adapter would send to the router in embedded mode
//! (sections concatenated, no transfer frame), with the device id in [`headers::DEVICE`]:
//! * telemetry QoS 0 is a plain publish to `ferry.telemetry.T` that never waits: not connected fails at
//!   once, a full client buffer sheds it (as a link queue without credit does); an adapter that must
//!   still hear "nobody consumes" ([`NatsDownstreamConfig::confirm_qos0`], HTTP) sends a request with
//!   [`headers::PRESETTLED`] instead;
//! * telemetry QoS 1 is a request; the reply is the router's [`Outcome`]; "no responders" (no router
//!   consumes the tenant) is [`DownstreamError::NoCredit`] at once, no reply within the outcome timeout
//!   [`DownstreamError::Timeout`];
//! * events are JetStream publishes to the tenant's stream (created on first use), with a unique
//!   `Nats-Msg-Id` and the message's TTL as `Nats-TTL`, accepted once the stream acknowledged them; a
//!   full stream refuses (`released`);
//! * command responses are requests to `ferry.command_response.T.R`;
//! * commands arrive as requests on `ferry.command.INSTANCE` ([`Nats::commands`]) and are settled by
//!   replying with the device's [`Outcome`]; the routes that bring them here live in the key-value
//!   bucket [`routes::BUCKET`] ([`Routes`]).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::Duration;

use async_nats::client::RequestErrorKind;
use async_nats::connection::State;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::{self, kv};
use async_nats::{HeaderMap, Subject};
use bytes::Bytes;
use fe2o3_amqp::types::messaging::message::__private::{Deserializable, Serializable};
use fe2o3_amqp::types::messaging::{Body, Data, DeliveryState, Message};
use fe2o3_amqp::types::primitives::Value;
use ferry_core::ids::{DeviceId, TenantId};
use ferry_core::shutdown::Shutdown;
use ferry_nats::outcome::Outcome;
use ferry_nats::routes::{self, RouteKind};
use ferry_nats::streams::{self, EventLimits};
use ferry_nats::{headers, subjects, NatsConfig};
use futures_util::{FutureExt, StreamExt};
use tokio::sync::{mpsc, Semaphore};

use super::commands::{parse_message, CommandLink, NatsSettle, Settle};
use super::{
    read, write, Command, CommandResponse, DeviceMessage, DownstreamError, DownstreamStats,
    MessageKind, SendOutcome,
};

/// How to reach NATS and how long to wait for it.
#[derive(Debug, Clone)]
pub struct NatsDownstreamConfig {
    /// The `messaging.nats` section.
    pub nats: NatsConfig,
    /// The connection's name at the server (`ferry-mqtt-<instance id>`).
    pub connection_name: String,
    /// How long a router may take to answer a request (QoS 1 telemetry, command responses) and
    /// JetStream to acknowledge an event.
    pub outcome_timeout: Duration,
    /// Send QoS 0 telemetry as a request with [`headers::PRESETTLED`], so that "nobody consumes" is
    /// still heard (Hono's HTTP adapter answers 503 then). Off: a plain publish that never waits (MQTT).
    pub confirm_qos0: bool,
    /// The limits of the event streams this adapter creates (a tenant's first event). The registry's
    /// tenants carry no event limits of their own (yet), so every tenant gets these.
    pub event_limits: EventLimits,
    /// Most commands this instance holds unsettled; beyond, a command is answered `released` at once.
    pub command_credit: u32,
}

impl NatsDownstreamConfig {
    /// Defaults for everything but where NATS is and the connection's name.
    pub fn new(nats: NatsConfig, connection_name: impl Into<String>) -> Self {
        Self {
            nats,
            connection_name: connection_name.into(),
            outcome_timeout: Duration::from_secs(5),
            confirm_qos0: false,
            event_limits: EventLimits::default(),
            command_credit: 256,
        }
    }
}

/// The subjects of one tenant, made once per process (a [`Subject`] clones by reference count).
#[derive(Clone)]
struct TenantSubjects {
    telemetry: Subject,
    event: Subject,
}

pub(crate) struct Nats {
    config: NatsDownstreamConfig,
    client: async_nats::Client,
    js: jetstream::Context,
    /// The bucket of command routes, opened at connect.
    routes_kv: kv::Store,
    /// Device presence, shared with the routers and read by the registry (docs/console.md).
    presence: ferry_nats::presence::NatsPresence,
    subjects: RwLock<HashMap<TenantId, TenantSubjects>>,
    /// Event streams known to exist, with their `max_age` (the cap on an event's TTL).
    streams: RwLock<HashMap<TenantId, Duration>>,
    shutdown: Shutdown,
}

impl Nats {
    pub(super) async fn connect(
        config: NatsDownstreamConfig,
        shutdown: Shutdown,
    ) -> Result<Arc<Self>, ferry_nats::Error> {
        let client = ferry_nats::connect(&config.nats, &config.connection_name).await?;
        let js = jetstream::ContextBuilder::new()
            .timeout(config.outcome_timeout)
            .build(client.clone());
        let routes_kv = routes::bucket(&js, config.nats.replicas).await?;
        let presence = ferry_nats::presence::NatsPresence::open(&js, config.nats.replicas).await?;
        tracing::info!(name = %config.connection_name, urls = ?config.nats.urls, "connected to NATS");
        Ok(Arc::new(Self {
            config,
            client,
            js,
            routes_kv,
            presence,
            subjects: RwLock::default(),
            streams: RwLock::default(),
            shutdown,
        }))
    }

    pub(super) fn name(&self) -> &str {
        &self.config.connection_name
    }

    pub(super) fn is_connected(&self) -> bool {
        self.client.connection_state() == State::Connected
    }

    pub(super) async fn wait_connected(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self.is_connected() {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(super) fn stats(&self) -> DownstreamStats {
        DownstreamStats {
            connects: self.client.statistics().connects.load(Ordering::Relaxed),
            links_attached: 0,
        }
    }

    fn subjects(&self, tenant: &TenantId) -> TenantSubjects {
        if let Some(s) = read(&self.subjects).get(tenant) {
            return s.clone();
        }
        let made = TenantSubjects {
            telemetry: Subject::from(subjects::telemetry(tenant.as_str())),
            event: Subject::from(subjects::event(tenant.as_str())),
        };
        write(&self.subjects)
            .entry(tenant.clone())
            .or_insert(made)
            .clone()
    }

    pub(super) async fn send(&self, msg: DeviceMessage) -> Result<SendOutcome, DownstreamError> {
        if !self.is_connected() {
            return Err(DownstreamError::NotConnected);
        }
        let subjects = self.subjects(&msg.tenant);
        let mut h = HeaderMap::new();
        h.insert(headers::DEVICE, msg.device_id.as_str());
        match msg.kind {
            MessageKind::Telemetry if msg.is_presettled() && !self.config.confirm_qos0 => {
                let payload = encode(&msg.into_amqp())?;
                publish_now(&self.client, subjects.telemetry, Some(h), payload)
                    .map(|()| SendOutcome::Presettled)
            }
            MessageKind::Telemetry => {
                if msg.is_presettled() {
                    h.insert(headers::PRESETTLED, "true");
                }
                let payload = encode(&msg.into_amqp())?;
                self.request(subjects.telemetry, h, payload).await
            }
            MessageKind::Event => {
                let tenant = msg.tenant.clone();
                let max_age = self.event_stream(&tenant).await?;
                if let Some(ms) = msg.ttl_ms {
                    let mut secs = u64::from(ms).div_ceil(1000).max(1);
                    if !max_age.is_zero() {
                        secs = secs.min(max_age.as_secs().max(1));
                    }
                    h.insert(headers::TTL, headers::ttl(secs).as_str());
                }
                // Unique per message: a publish retried after a lost acknowledgement is stored once.
                h.insert(
                    headers::MSG_ID,
                    format!("{:032x}", rand::random::<u128>()).as_str(),
                );
                let payload = encode(&msg.into_amqp())?;
                // "No stream" also answers while a new stream has no leader yet (a moment after it
                // was made, or after a node went): look it up (or make it again, if it was deleted)
                // and try again, within the outcome bound.
                let deadline = tokio::time::Instant::now() + self.config.outcome_timeout;
                loop {
                    match self
                        .publish_event(subjects.event.clone(), h.clone(), payload.clone())
                        .await
                    {
                        Err(Publish::NoStream) => {
                            if tokio::time::Instant::now() >= deadline {
                                break Err(DownstreamError::NoCredit);
                            }
                            write(&self.streams).remove(&tenant);
                            self.event_stream(&tenant).await?;
                            tokio::time::sleep(STREAM_RETRY).await;
                        }
                        Err(Publish::Failed(e)) => break Err(e),
                        Ok(o) => break Ok(o),
                    }
                }
            }
        }
    }

    pub(super) async fn send_response(
        &self,
        response: CommandResponse,
    ) -> Result<SendOutcome, DownstreamError> {
        if !self.is_connected() {
            return Err(DownstreamError::NotConnected);
        }
        let Some(subject) = response_subject(&response.reply_to) else {
            tracing::debug!(reply_to = %response.reply_to, "command response to a foreign address");
            return Ok(SendOutcome::Released);
        };
        let mut h = HeaderMap::new();
        h.insert(headers::DEVICE, response.device.as_str());
        let payload = encode(&response.into_amqp())?;
        match self.request(Subject::from(subject), h, payload).await {
            // No router holds the reply-to: nobody waits for the response.
            Err(DownstreamError::NoCredit) => Ok(SendOutcome::Released),
            other => other,
        }
    }

    /// A request whose reply is an [`Outcome`].
    async fn request(
        &self,
        subject: Subject,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<SendOutcome, DownstreamError> {
        let within = self.config.outcome_timeout;
        let deadline = tokio::time::Instant::now() + within;
        let ask = |subject: Subject| {
            let request = async_nats::Request::new()
                .headers(headers.clone())
                .payload(payload.clone())
                .timeout(Some(within));
            // The outer bound also covers the wait for room in the client's buffer.
            tokio::time::timeout_at(deadline, self.client.send_request(subject, request))
        };
        let mut reply = ask(subject.clone())
            .await
            .map_err(|_| DownstreamError::Timeout)?;
        // Interest travels between NATS nodes (and reaches a publishing connection) a moment after a
        // router subscribed: "no responders" is asked once more after a short pause before it counts
        // as "nobody consumes", which still answers the device at once.
        if matches!(&reply, Err(e) if e.kind() == RequestErrorKind::NoResponders) {
            tokio::time::sleep(NO_RESPONDERS_RECHECK).await;
            reply = ask(subject).await.map_err(|_| DownstreamError::Timeout)?;
        }
        match reply {
            Ok(m) => Ok(send_outcome(&m.payload)),
            Err(e) => match e.kind() {
                RequestErrorKind::NoResponders => Err(DownstreamError::NoCredit),
                RequestErrorKind::TimedOut => Err(DownstreamError::Timeout),
                RequestErrorKind::MaxPayloadExceeded | RequestErrorKind::InvalidSubject => {
                    Ok(SendOutcome::Rejected {
                        condition: Some("amqp:link:message-size-exceeded".into()),
                        description: Some(e.to_string()),
                    })
                }
                _ => {
                    tracing::debug!(error = %e, "NATS request failed");
                    Err(DownstreamError::Disconnected)
                }
            },
        }
    }

    /// Publishes an event and waits for the stream's acknowledgement (stored on its replicas).
    async fn publish_event(
        &self,
        subject: Subject,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<SendOutcome, Publish> {
        let publish = async {
            let ack = self
                .js
                .publish_with_headers(subject, headers, payload)
                .await?;
            ack.await
        };
        let acked = tokio::time::timeout(self.config.outcome_timeout, publish)
            .await
            .map_err(|_| Publish::Failed(DownstreamError::Timeout))?;
        match acked {
            Ok(_) => Ok(SendOutcome::Accepted),
            Err(e) => match e.kind() {
                PublishErrorKind::StreamNotFound => Err(Publish::NoStream),
                PublishErrorKind::TimedOut => Err(Publish::Failed(DownstreamError::Timeout)),
                PublishErrorKind::MaxAckPending => Err(Publish::Failed(DownstreamError::NoCredit)),
                PublishErrorKind::Other
                    if std::error::Error::source(&e)
                        .is_some_and(|s| s.is::<async_nats::jetstream::Error>()) =>
                {
                    // The stream refused it: full (discard new), or the message is over its limits.
                    // Nothing stored was dropped; the device may try again.
                    tracing::debug!(error = %e, "event refused by its stream");
                    Ok(SendOutcome::Released)
                }
                _ => {
                    tracing::debug!(error = %e, "event publish failed");
                    Err(Publish::Failed(DownstreamError::Disconnected))
                }
            },
        }
    }

    /// The `max_age` of `tenant`'s event stream, creating the stream if it does not exist; asked of
    /// the server once per tenant and process.
    async fn event_stream(&self, tenant: &TenantId) -> Result<Duration, DownstreamError> {
        if let Some(age) = read(&self.streams).get(tenant) {
            return Ok(*age);
        }
        let once = || async {
            let name = streams::event_stream_name(tenant.as_str());
            if let Ok(mut s) = self.js.get_stream(&name).await {
                if let Ok(info) = s.info().await {
                    return Ok(info.config.max_age);
                }
            }
            streams::event_stream(
                &self.js,
                tenant.as_str(),
                self.config.event_limits,
                self.config.nats.replicas,
            )
            .await
            .map(|s| s.cached_info().config.max_age)
        };
        // JetStream refuses to place a replicated stream for a moment while its cluster forms or a
        // node comes back ("insufficient resources", no meta leader): asked again until the bound.
        let find = async {
            loop {
                match once().await {
                    Ok(age) => break age,
                    Err(e) => {
                        tracing::debug!(%tenant, error = %e, "the tenant's event stream is not there yet");
                        tokio::time::sleep(STREAM_RETRY).await;
                    }
                }
            }
        };
        let Ok(age) = tokio::time::timeout(self.config.outcome_timeout, find).await else {
            tracing::warn!(%tenant, "cannot create the tenant's event stream in time");
            return Err(DownstreamError::Timeout);
        };
        write(&self.streams).insert(tenant.clone(), age);
        Ok(age)
    }

    /// Subscribes to this instance's commands and opens its routes (see [`Routes`]).
    pub(super) fn commands(&self, instance_id: &str) -> (CommandLink, mpsc::Receiver<Command>) {
        let credit = usize::try_from(self.config.command_credit.max(1)).unwrap_or(1024);
        let (tx, rx) = mpsc::channel(credit);
        let (updates, updates_rx) = mpsc::channel(LAST_GATEWAY_QUEUE);
        let dropped_settlements = Arc::new(AtomicU64::new(0));
        let routes = Arc::new(Routes {
            instance_id: instance_id.to_owned(),
            value: Bytes::from(instance_id.to_owned()),
            kv: self.routes_kv.clone(),
            presence: self.presence.clone(),
            client: self.client.clone(),
            timeout: self.config.outcome_timeout,
            held: Mutex::new(HashSet::new()),
            last_gateway: Mutex::new(HashMap::new()),
            updates,
            dropped_updates: AtomicU64::new(0),
            dropped_settlements: dropped_settlements.clone(),
        });
        let subscription = Subscription {
            client: self.client.clone(),
            subject: subjects::command(instance_id),
            commands: tx,
            slots: Arc::new(Semaphore::new(credit)),
            dropped_settlements,
        };
        tokio::spawn(subscription.run(self.shutdown.clone()));
        tokio::spawn(write_last_gateways(
            Arc::downgrade(&routes),
            updates_rx,
            self.shutdown.clone(),
        ));
        tokio::spawn(replay_on_reconnect(
            Arc::downgrade(&routes),
            self.client.statistics(),
            self.shutdown.clone(),
        ));
        (CommandLink::nats(routes), rx)
    }
}

/// Why an event publish did not reach a [`SendOutcome`].
enum Publish {
    /// The tenant has no stream (any more).
    NoStream,
    Failed(DownstreamError),
}

/// The AMQP message as the router's codec reads it: its sections, concatenated.
fn encode(message: &Message<Data>) -> Result<Bytes, DownstreamError> {
    serde_amqp::to_vec(&Serializable(message))
        .map(Bytes::from)
        .map_err(|e| {
            DownstreamError::NotAccepted(SendOutcome::Rejected {
                condition: Some("amqp:internal-error".into()),
                description: Some(e.to_string()),
            })
        })
}

/// A reply body as a [`SendOutcome`]; one that is not an [`Outcome`] counts as `released` (not
/// accepted, may be retried).
fn send_outcome(body: &[u8]) -> SendOutcome {
    match Outcome::decode(body) {
        Some(Outcome::Accepted) => SendOutcome::Accepted,
        Some(Outcome::Released) => SendOutcome::Released,
        Some(Outcome::Modified) => SendOutcome::Modified,
        Some(Outcome::Rejected {
            condition,
            description,
        }) => SendOutcome::Rejected {
            condition,
            description,
        },
        None => {
            tracing::debug!("a reply that is no outcome");
            SendOutcome::Released
        }
    }
}

/// `command_response/T/R` → `ferry.command_response.T.R` (`R` is everything after `T/`).
fn response_subject(reply_to: &str) -> Option<String> {
    let rest = reply_to
        .strip_prefix(ferry_core::hono::address::COMMAND_RESPONSE)?
        .strip_prefix('/')?;
    let (tenant, reply_id) = rest.split_once('/')?;
    (!tenant.is_empty() && !reply_id.is_empty())
        .then(|| subjects::command_response(tenant, reply_id))
}

/// Publishes without waiting: fails at once when the client's bounded buffer has no room (the message
/// is shed, [`DownstreamError::NoCredit`]) instead of holding the caller.
fn publish_now(
    client: &async_nats::Client,
    subject: Subject,
    headers: Option<HeaderMap>,
    payload: Bytes,
) -> Result<(), DownstreamError> {
    // `unconstrained`: tokio's cooperative budget must not make a publish that has room look full.
    let sent = match headers {
        Some(h) => tokio::task::unconstrained(client.publish_with_headers(subject, h, payload))
            .now_or_never(),
        None => tokio::task::unconstrained(client.publish(subject, payload)).now_or_never(),
    };
    match sent {
        None => Err(DownstreamError::NoCredit),
        Some(Ok(())) => Ok(()),
        Some(Err(e)) => {
            tracing::debug!(error = %e, "NATS publish failed");
            Err(DownstreamError::Disconnected)
        }
    }
}

/// Replies to a command with the device's outcome; called when the [`Command`] is settled or dropped.
pub(super) fn settle(s: NatsSettle, state: &DeliveryState) {
    let outcome = match state {
        DeliveryState::Accepted(_) => Outcome::Accepted,
        DeliveryState::Modified(_) => Outcome::Modified,
        DeliveryState::Rejected(r) => {
            let (condition, description) = match &r.error {
                Some(e) => (
                    super::message::condition_name(&e.condition),
                    e.description.clone(),
                ),
                None => (None, None),
            };
            Outcome::Rejected {
                condition,
                description,
            }
        }
        _ => Outcome::Released,
    };
    if publish_now(&s.client, s.reply, None, outcome.encode()).is_err() {
        // The router's request times out, which it treats like `released`.
        s.dropped.fetch_add(1, Ordering::Relaxed);
    }
}

/// This instance's command subscription: each request is a command as the router forwards it on
/// `command_internal` in embedded mode.
struct Subscription {
    client: async_nats::Client,
    subject: String,
    commands: mpsc::Sender<Command>,
    /// One per command handed out and not settled yet ([`NatsDownstreamConfig::command_credit`]).
    slots: Arc<Semaphore>,
    dropped_settlements: Arc<AtomicU64>,
}

impl Subscription {
    async fn run(self, shutdown: Shutdown) {
        // Not a queue group: the subject is this instance's alone. The client subscribes again by
        // itself after a reconnect.
        let mut sub = match self.client.subscribe(self.subject.clone()).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(subject = %self.subject, error = %e, "cannot subscribe to commands");
                return;
            }
        };
        let stop = shutdown.wait();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => break,
                () = self.commands.closed() => break,
                m = sub.next() => match m {
                    Some(m) => self.on_command(m),
                    None => break,
                },
            }
        }
        let _ = sub.unsubscribe().await;
    }

    fn on_command(&self, m: async_nats::Message) {
        let answer = |outcome: Outcome| {
            if let Some(reply) = &m.reply {
                let _ = publish_now(&self.client, reply.clone(), None, outcome.encode());
            }
        };
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            // As many commands unsettled as the adapter may hold: the application may retry.
            answer(Outcome::Released);
            return;
        };
        let parsed = serde_amqp::from_slice::<Deserializable<Message<Body<Value>>>>(&m.payload)
            .map_err(|_| "not an AMQP message")
            .and_then(|d| parse_message(d.0));
        let mut command = match parsed {
            Ok(c) => c,
            Err(why) => {
                answer(Outcome::Rejected {
                    condition: Some("hono:bad-request".into()),
                    description: Some(why.into()),
                });
                return;
            }
        };
        if let Some(reply) = m.reply {
            command.settle = Some(Settle::Nats(NatsSettle {
                client: self.client.clone(),
                reply,
                dropped: self.dropped_settlements.clone(),
                _slot: slot,
            }));
        }
        // Never full while every queued command holds a slot; full or closed, the command is dropped
        // and so released.
        let _ = self.commands.try_send(command);
    }
}

/// Last-gateway writes waiting for the key-value store. Full: the update is dropped and counted, and
/// written with the device's next message.
const LAST_GATEWAY_QUEUE: usize = 1024;

/// This instance's command routes in the key-value bucket [`routes::BUCKET`].
pub(crate) struct Routes {
    instance_id: String,
    /// The value of this instance's routes (its id).
    value: Bytes,
    kv: kv::Store,
    client: async_nats::Client,
    timeout: Duration,
    /// Keys of the device and gateway routes this instance holds, put again after a reconnect.
    held: Mutex<HashSet<String>>,
    /// The last gateway written per tenant and device, so that it is written when it changes only.
    last_gateway: Mutex<HashMap<TenantId, HashMap<DeviceId, DeviceId>>>,
    updates: mpsc::Sender<(TenantId, DeviceId, DeviceId)>,
    dropped_updates: AtomicU64,
    dropped_settlements: Arc<AtomicU64>,
    presence: ferry_nats::presence::NatsPresence,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Routes {
    /// `device` connected to this instance (or went): written to the presence bucket, not waited for.
    pub(super) fn report_presence(
        &self,
        tenant: &TenantId,
        device: &DeviceId,
        adapter: &'static str,
        remote_id: &str,
        session: u64,
        connected: bool,
    ) {
        use ferry_core::console::{PresenceChange, PresenceStore as _, PresenceUpdate};
        let connection = Some(format!("{}/{session}", self.instance_id));
        let change = if connected {
            PresenceChange::Connected {
                adapter: adapter.to_owned(),
                gateway: None,
                remote_id: Some(remote_id.chars().take(256).collect()),
                until: None,
                connection,
            }
        } else {
            PresenceChange::Disconnected { connection }
        };
        self.presence.record(PresenceUpdate {
            tenant: tenant.clone(),
            device: device.clone(),
            change,
            at: ferry_core::console::unix_now(),
        });
    }

    pub(super) fn instance_id(&self) -> &str {
        &self.instance_id
    }

    pub(super) async fn register(
        &self,
        tenant: &TenantId,
        device: &DeviceId,
    ) -> Result<(), DownstreamError> {
        self.put(RouteKind::Device, tenant, device).await
    }

    pub(super) async fn unregister(
        &self,
        tenant: &TenantId,
        device: &DeviceId,
    ) -> Result<(), DownstreamError> {
        self.delete(RouteKind::Device, tenant, device).await
    }

    pub(super) async fn register_gateway(
        &self,
        tenant: &TenantId,
        gateway: &DeviceId,
    ) -> Result<(), DownstreamError> {
        self.put(RouteKind::Gateway, tenant, gateway).await
    }

    pub(super) async fn unregister_gateway(
        &self,
        tenant: &TenantId,
        gateway: &DeviceId,
    ) -> Result<(), DownstreamError> {
        self.delete(RouteKind::Gateway, tenant, gateway).await
    }

    pub(super) fn set_last_gateway(
        &self,
        tenant: &TenantId,
        device: &DeviceId,
        gateway: &DeviceId,
    ) {
        {
            let mut known = lock(&self.last_gateway);
            if known.get(tenant).and_then(|d| d.get(device)) == Some(gateway) {
                return;
            }
            known
                .entry(tenant.clone())
                .or_default()
                .insert(device.clone(), gateway.clone());
        }
        if self
            .updates
            .try_send((tenant.clone(), device.clone(), gateway.clone()))
            .is_err()
        {
            self.dropped_updates.fetch_add(1, Ordering::Relaxed);
            self.forget_last_gateway(tenant, device, gateway);
        }
    }

    /// Forgets that `gateway` was written for `device` (it was not), so the next message writes it.
    fn forget_last_gateway(&self, tenant: &TenantId, device: &DeviceId, gateway: &DeviceId) {
        let mut known = lock(&self.last_gateway);
        if let Some(devices) = known.get_mut(tenant) {
            if devices.get(device) == Some(gateway) {
                devices.remove(device);
            }
            if devices.is_empty() {
                known.remove(tenant);
            }
        }
    }

    pub(super) fn dropped_updates(&self) -> u64 {
        self.dropped_updates.load(Ordering::Relaxed)
    }

    pub(super) fn dropped_settlements(&self) -> u64 {
        self.dropped_settlements.load(Ordering::Relaxed)
    }

    pub(super) fn registered(&self) -> usize {
        lock(&self.held).len()
    }

    /// Writes the route and remembers it (also when writing fails while disconnected: it is put again
    /// when the connection is back).
    async fn put(
        &self,
        kind: RouteKind,
        tenant: &TenantId,
        id: &DeviceId,
    ) -> Result<(), DownstreamError> {
        let key = routes::key(kind, tenant.as_str(), id.as_str());
        lock(&self.held).insert(key.clone());
        if self.client.connection_state() != State::Connected {
            return Err(DownstreamError::NotConnected);
        }
        self.put_key(key).await
    }

    async fn put_key(&self, key: String) -> Result<(), DownstreamError> {
        match tokio::time::timeout(self.timeout, self.kv.put(key, self.value.clone())).await {
            Err(_) => Err(DownstreamError::Timeout),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "cannot write a command route");
                Err(DownstreamError::Disconnected)
            }
            Ok(Ok(_)) => Ok(()),
        }
    }

    /// Deletes the route while it still names this instance: a newer route of another instance stays.
    async fn delete(
        &self,
        kind: RouteKind,
        tenant: &TenantId,
        id: &DeviceId,
    ) -> Result<(), DownstreamError> {
        let key = routes::key(kind, tenant.as_str(), id.as_str());
        lock(&self.held).remove(&key);
        if self.client.connection_state() != State::Connected {
            return Err(DownstreamError::NotConnected);
        }
        match tokio::time::timeout(self.timeout, routes::delete_if(&self.kv, &key, &self.value))
            .await
        {
            Err(_) => Err(DownstreamError::Timeout),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "cannot delete a command route");
                Err(DownstreamError::Disconnected)
            }
            Ok(Ok(_)) => Ok(()),
        }
    }

    /// Puts every route this instance holds again; false if one failed.
    async fn replay(&self) -> bool {
        let keys: Vec<String> = lock(&self.held).iter().cloned().collect();
        let failed = futures_util::stream::iter(keys)
            .map(|k| self.put_key(k))
            .buffer_unordered(32)
            .filter(|r| std::future::ready(r.is_err()))
            .count()
            .await;
        failed == 0
    }
}

/// Writes last-gateway updates one after the other, off the message path.
async fn write_last_gateways(
    routes: Weak<Routes>,
    mut updates: mpsc::Receiver<(TenantId, DeviceId, DeviceId)>,
    shutdown: Shutdown,
) {
    let stop = shutdown.wait();
    tokio::pin!(stop);
    loop {
        let (tenant, device, gateway) = tokio::select! {
            () = &mut stop => return,
            u = updates.recv() => match u {
                Some(u) => u,
                None => return,
            },
        };
        let Some(routes) = routes.upgrade() else {
            return;
        };
        let key = routes::key(RouteKind::LastGateway, tenant.as_str(), device.as_str());
        let value = Bytes::copy_from_slice(gateway.as_str().as_bytes());
        let written = tokio::time::timeout(routes.timeout, routes.kv.put(key, value)).await;
        if !matches!(written, Ok(Ok(_))) {
            routes.forget_last_gateway(&tenant, &device, &gateway);
        }
    }
}

/// How often the connection's reconnect count is looked at.
const RECONNECT_POLL: Duration = Duration::from_millis(200);

/// Pause before "no responders" is asked again (see `Nats::request`).
const NO_RESPONDERS_RECHECK: Duration = Duration::from_millis(50);

/// Pause before a tenant's event stream is looked up or created again (see `Nats::event_stream`).
const STREAM_RETRY: Duration = Duration::from_millis(200);

/// After every reconnect, puts this instance's routes again (a router may have deleted them as dead
/// while this instance was away).
async fn replay_on_reconnect(
    routes: Weak<Routes>,
    stats: Arc<async_nats::Statistics>,
    shutdown: Shutdown,
) {
    let stop = shutdown.wait();
    tokio::pin!(stop);
    let mut seen = stats.connects.load(Ordering::Relaxed);
    loop {
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(RECONNECT_POLL) => {}
        }
        let Some(routes) = routes.upgrade() else {
            return;
        };
        let now = stats.connects.load(Ordering::Relaxed);
        if now != seen
            && routes.client.connection_state() == State::Connected
            && routes.replay().await
        {
            seen = now;
            tracing::info!(
                routes = routes.registered(),
                "command routes put again after a reconnect"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_subjects_keep_the_whole_reply_id() {
        assert_eq!(
            response_subject("command_response/t1/r9").as_deref(),
            Some("ferry.command_response.t1.r9")
        );
        assert_eq!(
            response_subject("command_response/t1/app/r9"),
            Some(subjects::command_response("t1", "app/r9"))
        );
        for bad in [
            "command_response/t1",
            "command/t1/r",
            "command_response//r",
            "",
        ] {
            assert_eq!(response_subject(bad), None, "{bad}");
        }
    }

    #[test]
    fn replies_map_to_outcomes() {
        assert_eq!(send_outcome(b"accepted"), SendOutcome::Accepted);
        assert_eq!(send_outcome(b"released"), SendOutcome::Released);
        assert_eq!(
            send_outcome(b"rejected\namqp:precondition-failed\nno"),
            SendOutcome::Rejected {
                condition: Some("amqp:precondition-failed".into()),
                description: Some("no".into())
            }
        );
        assert_eq!(send_outcome(b"garbage"), SendOutcome::Released);
    }
}
