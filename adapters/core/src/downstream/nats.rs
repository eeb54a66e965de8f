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
//! * commands arrive as requests on `ferry.command.INSTANCE` and are settled by replying with the
//!   device's [`Outcome`]; the routes that bring them here live in the key-value bucket
//!   [`routes::BUCKET`]. Both are the `commands` module's (its `nats`), which uses this bus: the bus
//!   knows nothing of commands, and hands over what they need ([`Nats`]'s command fields,
//!   [`publish_now`]).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::RwLock;
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::{self, kv};
use async_nats::{HeaderMap, Subject};
use bytes::Bytes;
use ferry_core::ids::TenantId;
use ferry_core::shutdown::Shutdown;
use ferry_nats::outcome::Outcome;
use ferry_nats::requests::{self, Requests, Unanswered};
use ferry_nats::routes;
use ferry_nats::streams::{self, EventLimits};
use ferry_nats::{headers, subjects, NatsConfig};
use ferry_registry_model::StoredEventLimits;
use futures_util::FutureExt;

use super::{
    read, write, CommandResponse, DeviceMessage, DownstreamError, DownstreamStats, MessageKind,
    SendOutcome,
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
    /// The limits of the event streams this adapter creates (a tenant's first event), where the tenant
    /// has none of its own (`resource-limits` `max-stored-events`, `max-stored-event-bytes`).
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
    // The fields the command side (`commands::nats`) opens its subscription and routes with are the
    // downstream module's to read.
    pub(super) config: NatsDownstreamConfig,
    pub(crate) client: async_nats::Client,
    /// Requests to routers, with their progress reports (`ferry_nats::requests`).
    requests: Requests,
    js: jetstream::Context,
    /// The bucket of command routes, opened at connect.
    pub(super) routes_kv: kv::Store,
    /// Device presence, shared with the routers and read by the registry (docs/console.md).
    pub(super) presence: ferry_nats::presence::NatsPresence,
    subjects: RwLock<HashMap<TenantId, TenantSubjects>>,
    /// Event streams known to exist, with their `max_age` (the cap on an event's TTL) and the tenant's
    /// limits this process last gave them (`None`: found as they were).
    streams: RwLock<HashMap<TenantId, (Duration, Option<StoredEventLimits>)>>,
    pub(super) shutdown: Shutdown,
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
        let requests = Requests::open(client.clone()).await?;
        tracing::info!(name = %config.connection_name, urls = ?config.nats.urls, "connected to NATS");
        Ok(Arc::new(Self {
            config,
            client,
            requests,
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
                let payload = encode(|out| msg.encode(out));
                publish_now(&self.client, subjects.telemetry, Some(h), payload)
                    .map(|()| SendOutcome::Presettled)
            }
            MessageKind::Telemetry => {
                if msg.is_presettled() {
                    h.insert(headers::PRESETTLED, "true");
                }
                let payload = encode(|out| msg.encode(out));
                self.request(subjects.telemetry, h, payload, Some(requests::QUIET))
                    .await
            }
            MessageKind::Event => {
                let tenant = msg.tenant.clone();
                let limits = msg.stored_limits;
                let max_age = self.event_stream(&tenant, limits).await?;
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
                let payload = encode(|out| msg.encode(out));
                // "No stream" also answers while a new stream has no leader yet (a moment after it
                // was made, or after a node went): look it up (or make it again, if it was deleted)
                // and try again, within the outcome bound.
                // Everything, the lookups included, within one bound: a stream whose leader went
                // answers "no stream" until a new one is elected (a few seconds), and its lookup
                // fails meanwhile too; the publish is tried again until then, not given up on the
                // lookup's failure.
                let deadline = tokio::time::Instant::now() + self.config.outcome_timeout;
                let left = || deadline.saturating_duration_since(tokio::time::Instant::now());
                loop {
                    match self
                        .publish_event(subjects.event.clone(), h.clone(), payload.clone(), left())
                        .await
                    {
                        Err(Publish::NoStream) => {
                            if left().is_zero() {
                                break Err(DownstreamError::NoCredit);
                            }
                            write(&self.streams).remove(&tenant);
                            let _ =
                                tokio::time::timeout(left(), self.event_stream(&tenant, limits))
                                    .await;
                            tokio::time::sleep(STREAM_RETRY.min(left())).await;
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
        let payload = encode(|out| response.encode(out));
        match self.request(Subject::from(subject), h, payload, None).await {
            // No router holds the reply-to: nobody waits for the response.
            Err(DownstreamError::NoCredit) => Ok(SendOutcome::Released),
            other => other,
        }
    }

    /// A request whose reply is an [`Outcome`].
    /// A request to a router, answered with its outcome. `quiet`: a request that hears nothing (no
    /// answer, no progress report) for that long is sent again, to another router if its own died
    /// (`ferry_nats::requests`); `None` for what must not be sent twice.
    async fn request(
        &self,
        subject: Subject,
        headers: HeaderMap,
        payload: Bytes,
        quiet: Option<Duration>,
    ) -> Result<SendOutcome, DownstreamError> {
        let within = self.config.outcome_timeout;
        let deadline = tokio::time::Instant::now() + within;
        let ask = |subject: Subject| {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            self.requests
                .ask(subject, headers.clone(), payload.clone(), quiet, left)
        };
        let mut reply = ask(subject.clone()).await;
        // Interest travels between NATS nodes (and reaches a publishing connection) a moment after a
        // router subscribed: "no responders" is asked once more after a short pause before it counts
        // as "nobody consumes", which still answers the device at once.
        if matches!(reply, Err(Unanswered::NoResponders)) {
            tokio::time::sleep(NO_RESPONDERS_RECHECK).await;
            reply = ask(subject).await;
        }
        match reply {
            Ok(m) => Ok(send_outcome(&m.payload)),
            Err(Unanswered::NoResponders) => Err(DownstreamError::NoCredit),
            Err(Unanswered::TimedOut) => Err(DownstreamError::Timeout),
            Err(Unanswered::Refused(e)) => Ok(SendOutcome::Rejected {
                condition: Some("amqp:link:message-size-exceeded".into()),
                description: Some(e),
            }),
            Err(Unanswered::Failed(e)) => {
                tracing::debug!(error = %e, "NATS request failed");
                Err(DownstreamError::Disconnected)
            }
        }
    }

    /// Publishes an event and waits for the stream's acknowledgement (stored on its replicas).
    async fn publish_event(
        &self,
        subject: Subject,
        headers: HeaderMap,
        payload: Bytes,
        within: Duration,
    ) -> Result<SendOutcome, Publish> {
        let publish = async {
            let ack = self
                .js
                .publish_with_headers(subject, headers, payload)
                .await?;
            ack.await
        };
        let acked = tokio::time::timeout(within, publish)
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
    /// the server once per tenant and process, and again when the tenant's limits on stored events
    /// (`wanted`, from its configuration; `None`: not known) differ from what this process gave the
    /// stream last: the stream is then brought to them.
    async fn event_stream(
        &self,
        tenant: &TenantId,
        wanted: Option<StoredEventLimits>,
    ) -> Result<Duration, DownstreamError> {
        if let Some((age, applied)) = read(&self.streams).get(tenant) {
            if wanted.is_none() || wanted == *applied {
                return Ok(*age);
            }
        }
        let desired = self.stream_limits(wanted.unwrap_or_default());
        let once = || async {
            let name = streams::event_stream_name(tenant.as_str());
            if let Ok(mut s) = self.js.get_stream(&name).await {
                if let Ok(info) = s.info().await {
                    let c = &info.config;
                    let current =
                        c.max_messages == desired.max_events && c.max_bytes == desired.max_bytes;
                    if wanted.is_none() || current {
                        return Ok((c.max_age, wanted));
                    }
                    // The tenant's limits changed (or a router made the stream with the defaults):
                    // brought to them. Should that fail, the stream serves as it is; the limits are
                    // tried again when the tenant's limits next change.
                    // An update is answered by the stream's leader: a stream made a moment ago (by a
                    // router) may have none yet, and the request would wait out the whole bound. The
                    // stream serves as it is meanwhile (the publish waits for its leader within the
                    // bound); the limits are brought at a later event (nothing is remembered as given).
                    if info.cluster.as_ref().is_some_and(|c| c.leader.is_none()) {
                        return Ok((c.max_age, None));
                    }
                    tracing::debug!(%tenant, ?desired, "bringing the tenant's event stream to its limits");
                    return match streams::event_stream(
                        &self.js,
                        tenant.as_str(),
                        desired,
                        self.config.nats.replicas,
                    )
                    .await
                    {
                        Ok(s) => Ok((s.cached_info().config.max_age, wanted)),
                        Err(e) => {
                            tracing::warn!(%tenant, error = %e, "cannot bring the tenant's event stream to its limits");
                            Ok((c.max_age, wanted))
                        }
                    };
                }
            }
            streams::event_stream(
                &self.js,
                tenant.as_str(),
                desired,
                self.config.nats.replicas,
            )
            .await
            .map(|s| (s.cached_info().config.max_age, wanted))
        };
        // JetStream refuses to place a replicated stream for a moment while its cluster forms or a
        // node comes back ("insufficient resources", no meta leader): asked again until the bound.
        let find = async {
            loop {
                match once().await {
                    Ok(found) => break found,
                    Err(e) => {
                        tracing::debug!(%tenant, error = %e, "the tenant's event stream is not there yet");
                        tokio::time::sleep(STREAM_RETRY).await;
                    }
                }
            }
        };
        let Ok((age, given)) = tokio::time::timeout(self.config.outcome_timeout, find).await else {
            tracing::warn!(%tenant, "cannot create the tenant's event stream in time");
            return Err(DownstreamError::Timeout);
        };
        write(&self.streams).insert(tenant.clone(), (age, given));
        Ok(age)
    }

    /// A tenant's stream limits: its own, else this adapter's defaults ([`NatsDownstreamConfig::event_limits`]).
    fn stream_limits(&self, own: StoredEventLimits) -> EventLimits {
        let defaults = self.config.event_limits;
        let count = |v: Option<u64>, default: i64| {
            v.map_or(default, |v| i64::try_from(v).unwrap_or(i64::MAX))
        };
        EventLimits {
            max_events: count(own.max_events, defaults.max_events),
            max_bytes: count(own.max_bytes, defaults.max_bytes),
            ..defaults
        }
    }
}

/// Why an event publish did not reach a [`SendOutcome`].
enum Publish {
    /// The tenant has no stream (any more).
    NoStream,
    Failed(DownstreamError),
}

/// The AMQP message as the router's codec reads it: its sections, concatenated.
/// A message's AMQP bytes, as the router on the other side of NATS reads them.
fn encode(write: impl FnOnce(&mut Vec<u8>)) -> Bytes {
    let mut out = Vec::new();
    write(&mut out);
    Bytes::from(out)
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
pub(super) fn publish_now(
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

/// Pause before "no responders" is asked again (see `Nats::request`).
const NO_RESPONDERS_RECHECK: Duration = Duration::from_millis(50);

/// Pause before a tenant's event stream is looked up or created again (see `Nats::event_stream`).
const STREAM_RETRY: Duration = Duration::from_millis(200);

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
