//! The JetStream streams Ferry provisions.
//!
//! Events: one stream per tenant, `FERRY_EVENTS_<tenant token>`, capturing [`subjects::event`]. Per
//! tenant, so that the tenant's limits (events, bytes, age) are the stream's own and one tenant filling
//! its stream refuses only its own devices' events (`discard: new`: the publish is refused and the
//! device hears 503, nothing stored is dropped). Work-queue retention: an event leaves the stream when
//! the one durable consumer that all routers share ([`EVENT_CONSUMER`]) acknowledges it, which a router
//! does only when an application accepted it; an event a router took and did not settle is redelivered
//! after [`EVENT_ACK_WAIT`]. Per-message TTL (`Nats-TTL`) is allowed, capped by the stream's `max_age`.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};

use crate::{subjects, Error};

/// The durable consumer of a tenant's event stream, shared by every router.
pub const EVENT_CONSUMER: &str = "ferry-routers";

/// How long an event taken by a router may go without word from it (an ack, a `nak`, or an
/// in-progress report, which a router sends while an application holds the event) before JetStream
/// hands it to another router: how soon the events of a router that died come back.
pub const EVENT_ACK_WAIT: Duration = Duration::from_secs(4);

/// Limits of one tenant's event stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventLimits {
    /// Most events stored.
    pub max_events: i64,
    /// Most bytes stored.
    pub max_bytes: i64,
    /// Longest an event is kept (and the cap on its `Nats-TTL`).
    pub max_age: Duration,
}

impl Default for EventLimits {
    /// The embedded router's defaults (docs/router.md "Limits").
    fn default() -> Self {
        Self {
            max_events: 100_000,
            max_bytes: 256 << 20,
            max_age: Duration::from_secs(86_400),
        }
    }
}

/// The name of `tenant`'s event stream.
pub fn event_stream_name(tenant: &str) -> String {
    format!("FERRY_EVENTS_{}", subjects::token(tenant))
}

/// Creates `tenant`'s event stream, or brings an existing one to `limits` (a tenant's limits may
/// change); returns it.
pub async fn event_stream(
    js: &jetstream::Context,
    tenant: &str,
    limits: EventLimits,
    replicas: usize,
) -> Result<stream::Stream, Error> {
    let name = event_stream_name(tenant);
    let config = stream::Config {
        name: name.clone(),
        subjects: vec![subjects::event(tenant)],
        retention: stream::RetentionPolicy::WorkQueue,
        discard: stream::DiscardPolicy::New,
        max_messages: limits.max_events,
        max_bytes: limits.max_bytes,
        max_age: limits.max_age,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        duplicate_window: Duration::from_secs(120),
        allow_message_ttl: true,
        ..stream::Config::default()
    };
    let failed = |message: String| Error::Stream {
        stream: name.clone(),
        message,
    };
    js.create_or_update_stream(config)
        .await
        .map_err(|e| failed(e.to_string()))?;
    js.get_stream(&name)
        .await
        .map_err(|e| failed(e.to_string()))
}

/// `tenant`'s event stream as it is, created with the default limits if no adapter has created it yet
/// (a router must not change the limits an adapter set from the tenant's settings).
pub async fn open_event_stream(
    js: &jetstream::Context,
    tenant: &str,
    replicas: usize,
) -> Result<stream::Stream, Error> {
    let name = event_stream_name(tenant);
    if let Ok(s) = js.get_stream(&name).await {
        return Ok(s);
    }
    match event_stream(js, tenant, EventLimits::default(), replicas).await {
        Ok(s) => Ok(s),
        // Created by someone else meanwhile.
        Err(e) => js.get_stream(&name).await.map_err(|_| e),
    }
}

/// The durable pull consumer all routers share on a tenant's event stream. `max_ack_pending` bounds
/// what all routers together hold unacknowledged for the tenant; an event held longer than `ack_wait`
/// ([`EVENT_ACK_WAIT`] in production) is handed out again.
pub async fn event_consumer(
    stream: &stream::Stream,
    max_ack_pending: i64,
    ack_wait: Duration,
) -> Result<consumer::PullConsumer, Error> {
    let config = consumer::pull::Config {
        durable_name: Some(EVENT_CONSUMER.into()),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait,
        max_ack_pending,
        ..consumer::pull::Config::default()
    };
    stream
        .get_or_create_consumer(EVENT_CONSUMER, config)
        .await
        .map_err(|e| Error::Stream {
            stream: stream.cached_info().config.name.clone(),
            message: e.to_string(),
        })
}
