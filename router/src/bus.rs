//! Cluster mode: the router as a stateless AMQP 1.0 endpoint on NATS with JetStream (docs/cluster.md).
//!
//! Applications attach to a router exactly as in embedded mode, and everything the router does for them
//! goes through its [`Hub`](crate::hub) as before: consumers, credit, balancing, settlement. What changes
//! is where messages come from. The first consumer of an address on this router starts one task that
//! takes the address's messages from NATS and hands them to the hub as if a producer had sent them; the
//! last consumer's detach stops it. Outcomes travel back to that task ([`Origin::Remote`]), which answers
//! the adapter's request or acknowledges the event to JetStream:
//!
//! - `telemetry/T`: a queue subscription on `ferry.telemetry.T` (group `ferry-routers`), so that the
//!   tenant's consumers on all routers compete for its messages. A request (QoS 1) is answered with the
//!   application's outcome; a publish without reply (MQTT QoS 0) goes pre-settled; a request marked
//!   pre-settled (HTTP QoS 0) is answered `accepted` as soon as a consumer took it.
//! - `event/T`: the tenant's durable JetStream consumer shared by all routers, pulled only as far as
//!   this router's consumers have credit; acknowledged when the application accepts (or rejects, as in
//!   embedded mode: an event the application cannot process is not retried), handed back (`nak`) when it
//!   releases or modifies it; an event held by a router that dies comes back after the ack wait.
//! - `command_response/T/R`: a subscription on `ferry.command_response.T.R` while the application's
//!   receiver is attached here.
//! - Commands: the routes adapters keep in the key-value bucket [`ferry_nats::routes::BUCKET`] are
//!   mirrored into the hub's command table (the bucket is read in full at start, so a restarted router
//!   knows every route); each adapter instance named there gets a stand-in consumer on its
//!   `command_internal/INSTANCE` address that forwards commands as NATS requests to the instance and
//!   settles them with its answer. An instance that does not answer ("no responders") is gone: the
//!   command is released at once and the instance's routes are deleted.
//!
//! Every message from the bus passes the same checks as one from an adapter's link
//! ([`check_device_message`]): the registration assertion is verified and stripped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream::{self, kv, AckKind};
use fe2o3_amqp_types::definitions::ErrorCondition;
use fe2o3_amqp_types::messaging::DeliveryState;
use ferry_core::ids::TenantId;
use ferry_nats::outcome::Outcome;
use ferry_nats::{headers, routes, subjects};
use futures_util::StreamExt;
use tokio::sync::{mpsc, Notify};

use crate::connection::check_device_message;
use crate::events::EventStore;
use crate::hub::{self, AddressRef, ConnHandle, Consumer, Kind, Origin, Remote, Routed, ToConn};
use crate::metrics::Outcome as Counted;
use crate::Shared;

/// An adapter instance's command address here, its stand-in consumer, and how to stop its forwarder.
#[derive(Clone)]
struct Instance {
    addr: AddressRef,
    consumer: Arc<Consumer>,
    stop: Arc<Notify>,
}

/// Commands an adapter instance may have in flight from this router.
const COMMAND_CREDIT: u32 = 256;

/// How long a new subscription may take to be in place at the NATS server.
const SUBSCRIBED_WITHIN: Duration = Duration::from_secs(5);

/// How long an adapter instance may take to settle a command (its device may be slow to answer).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Most events one router pulls for a tenant in one request.
const EVENT_BATCH: usize = 256;

/// Most events a router holds unacknowledged for one tenant (all routers together:
/// the consumer's `max_ack_pending`).
const EVENT_MAX_ACK_PENDING: i64 = 10_000;

/// The cluster bus as the router sees it; `None` in [`Shared::bus`] in embedded mode.
pub struct Bus {
    client: async_nats::Client,
    js: jetstream::Context,
    replicas: usize,
    event_ack_wait: Duration,
    /// The takers running for this router's addresses, with the number of consumers each serves.
    takers: Mutex<HashMap<TakerKey, Taker>>,
    /// The command-route bucket, once opened.
    routes: tokio::sync::OnceCell<kv::Store>,
    /// Adapter instances that have a stand-in consumer here (while they hold command routes).
    instances: Mutex<HashMap<String, Instance>>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus").finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum TakerKey {
    Telemetry(TenantId),
    Event(TenantId),
    Response(TenantId, Arc<str>),
}

struct Taker {
    consumers: usize,
    stop: Arc<Notify>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Bus {
    /// Connects to NATS (the first connection must succeed; later losses are reconnected by the client).
    pub async fn connect(
        config: &ferry_nats::NatsConfig,
        name: &str,
        event_ack_wait: Duration,
    ) -> Result<Self, ferry_nats::Error> {
        let client = ferry_nats::connect(config, name).await?;
        let js = jetstream::new(client.clone());
        Ok(Self {
            client,
            js,
            replicas: config.replicas,
            event_ack_wait,
            takers: Mutex::default(),
            routes: tokio::sync::OnceCell::new(),
            instances: Mutex::default(),
        })
    }

    /// The JetStream context (for the presence bucket).
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// Whether the connection to NATS is up (for readiness).
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    fn key(addr: &AddressRef) -> Option<TakerKey> {
        match addr.kind {
            Kind::Telemetry => Some(TakerKey::Telemetry(addr.tenant.clone())),
            Kind::Event => Some(TakerKey::Event(addr.tenant.clone())),
            Kind::CommandResponse => addr
                .sub()
                .map(|reply| TakerKey::Response(addr.tenant.clone(), reply.clone())),
            Kind::Command | Kind::CommandInternal => None,
        }
    }

    /// An application's consumer attached at `addr` on this router: the first one starts taking the
    /// address's messages from NATS.
    pub fn consumer_attached<S: EventStore>(
        self: &Arc<Self>,
        shared: &Arc<Shared<S>>,
        addr: &AddressRef,
    ) {
        let Some(key) = Self::key(addr) else { return };
        let stop = {
            let mut takers = lock(&self.takers);
            let taker = takers.entry(key.clone()).or_insert_with(|| Taker {
                consumers: 0,
                stop: Arc::new(Notify::new()),
            });
            taker.consumers += 1;
            if taker.consumers > 1 {
                return;
            }
            taker.stop.clone()
        };
        let bus = self.clone();
        let shared = shared.clone();
        let addr = addr.clone();
        tokio::spawn(async move {
            let current = |bus: &Bus| {
                lock(&bus.takers)
                    .get(&key)
                    .is_some_and(|t| Arc::ptr_eq(&t.stop, &stop))
            };
            loop {
                let result = match &key {
                    TakerKey::Telemetry(_) => bus.take_telemetry(&shared, &addr, &stop).await,
                    TakerKey::Event(_) => bus.take_events(&shared, &addr, &stop).await,
                    TakerKey::Response(..) => bus.take_responses(&shared, &addr, &stop).await,
                };
                match result {
                    // Stopped: its last consumer left.
                    Ok(()) => break,
                    // NATS failed under it (a node went, a request timed out): again, for as long
                    // as the address has consumers here.
                    Err(e) => {
                        tracing::warn!(error = %e, address = ?key, "taking messages from NATS failed; retrying");
                        if !current(&bus) {
                            break;
                        }
                        tokio::select! {
                            () = stop.notified() => break,
                            () = tokio::time::sleep(Duration::from_millis(500)) => {}
                        }
                    }
                }
            }
        });
    }

    /// An application's consumer left `addr`: the last one stops the address's taker.
    pub fn consumer_detached(&self, addr: &AddressRef) {
        let Some(key) = Self::key(addr) else { return };
        let mut takers = lock(&self.takers);
        if let Some(taker) = takers.get_mut(&key) {
            taker.consumers = taker.consumers.saturating_sub(1);
            if taker.consumers == 0 {
                taker.stop.notify_one();
                takers.remove(&key);
            }
        }
    }

    async fn reply(&self, to: Option<async_nats::Subject>, outcome: &Outcome) {
        if let Some(to) = to {
            if let Err(e) = self.client.publish(to, outcome.encode()).await {
                tracing::debug!(error = %e, "cannot answer a NATS request");
            }
        }
    }

    /// `telemetry/T`: the tenant's queue subscription, held while this router's consumers have credit.
    ///
    /// When they have none left, the router leaves the queue group (what it had already been handed is
    /// released) and joins again when a consumer grants credit: NATS then hands the tenant's telemetry
    /// to the routers whose consumers can take it, and a device gets "busy" only when none can.
    async fn take_telemetry<S: EventStore>(
        &self,
        shared: &Shared<S>,
        addr: &AddressRef,
        stop: &Notify,
    ) -> anyhow::Result<()> {
        let credit = shared.hub.credit_signal(addr);
        let (tx, mut outcomes) = mpsc::unbounded_channel();
        let mut waiting: HashMap<u64, async_nats::Subject> = HashMap::new();
        let mut next = 0u64;
        let mut sub: Option<async_nats::Subscriber> = None;
        loop {
            let Some(current) = sub.as_mut() else {
                if shared.hub.available_credit(addr) > 0 {
                    let joined = self
                        .client
                        .queue_subscribe(
                            subjects::telemetry(addr.tenant.as_str()),
                            subjects::ROUTERS.to_owned(),
                        )
                        .await?;
                    // In place at the server before anything else: devices sending right after an
                    // application attached are not told "nobody consumes".
                    ferry_nats::round_trip(&self.client, SUBSCRIBED_WITHIN).await?;
                    sub = Some(joined);
                    continue;
                }
                tokio::select! {
                    () = stop.notified() => break,
                    () = credit.notified() => {}
                    Some((id, state)) = outcomes.recv() => {
                        if let Some(to) = waiting.remove(&id) {
                            self.reply(Some(to), &outcome_of(&state)).await;
                        }
                    }
                }
                continue;
            };
            tokio::select! {
                () = stop.notified() => break,
                Some((id, state)) = outcomes.recv() => {
                    if let Some(to) = waiting.remove(&id) {
                        self.reply(Some(to), &outcome_of(&state)).await;
                    }
                }
                msg = current.next() => {
                    let Some(msg) = msg else { break };
                    let starved = self
                        .on_telemetry(shared, addr, msg, &tx, &mut waiting, &mut next)
                        .await;
                    if starved && shared.hub.consumers(addr) > 0 {
                        // Consumers, but no credit: leave the group until they grant some.
                        if let Some(mut gone) = sub.take() {
                            let _ = gone.unsubscribe().await;
                            while let Ok(Some(m)) =
                                tokio::time::timeout(Duration::ZERO, gone.next()).await
                            {
                                let size = m.payload.len();
                                addr.counters.count(Counted::Released, size);
                                self.reply(m.reply, &Outcome::Released).await;
                            }
                        }
                    }
                }
            }
        }
        // What the consumers released on their way out is answered; the rest times out at the adapter.
        while let Ok((id, state)) = outcomes.try_recv() {
            if let Some(to) = waiting.remove(&id) {
                self.reply(Some(to), &outcome_of(&state)).await;
            }
        }
        Ok(())
    }

    /// One telemetry message from NATS, checked and routed; true when the consumers have no credit left.
    async fn on_telemetry<S: EventStore>(
        &self,
        shared: &Shared<S>,
        addr: &AddressRef,
        msg: async_nats::Message,
        tx: &mpsc::UnboundedSender<(u64, DeliveryState)>,
        waiting: &mut HashMap<u64, async_nats::Subject>,
        next: &mut u64,
    ) -> bool {
        let size = msg.payload.len();
        let presettled = msg.reply.is_none()
            || msg
                .headers
                .as_ref()
                .is_some_and(|h| h.get(headers::PRESETTLED).is_some());
        let payload = match check_device_message(shared, addr, &msg.payload) {
            Ok(p) => p,
            Err(state) => {
                addr.counters.count(Counted::Rejected, size);
                self.reply(msg.reply, &outcome_of(&state)).await;
                return false;
            }
        };
        let origin = match (&msg.reply, presettled) {
            (Some(to), false) => {
                *next += 1;
                waiting.insert(*next, to.clone());
                Origin::Remote(Remote {
                    tx: tx.clone(),
                    id: *next,
                })
            }
            _ => Origin::None,
        };
        match shared
            .hub
            .route_telemetry(addr, payload, presettled, origin)
        {
            Routed::Forwarded => {
                addr.counters.count(Counted::Forwarded, size);
                if presettled {
                    self.reply(msg.reply, &Outcome::Accepted).await;
                }
                // That may have been the last credit: leave before NATS hands over one more.
                shared.hub.available_credit(addr) <= 0
            }
            Routed::NoConsumer => {
                addr.counters.count(Counted::Released, size);
                if !presettled {
                    waiting.remove(next);
                }
                self.reply(msg.reply, &Outcome::Released).await;
                true
            }
        }
    }

    /// `command_response/T/R`: the subscription for this reply address.
    async fn take_responses<S: EventStore>(
        &self,
        shared: &Shared<S>,
        addr: &AddressRef,
        stop: &Notify,
    ) -> anyhow::Result<()> {
        let Some(reply_id) = addr.sub().cloned() else {
            return Ok(());
        };
        let mut sub = self
            .client
            .subscribe(subjects::command_response(addr.tenant.as_str(), &reply_id))
            .await?;
        ferry_nats::round_trip(&self.client, SUBSCRIBED_WITHIN).await?;
        let (tx, mut outcomes) = mpsc::unbounded_channel();
        let mut waiting: HashMap<u64, async_nats::Subject> = HashMap::new();
        let mut next = 0u64;
        let counters = shared
            .hub
            .metrics
            .outcomes(&addr.tenant, "command_response");
        loop {
            tokio::select! {
                () = stop.notified() => break,
                Some((id, state)) = outcomes.recv() => {
                    if let Some(to) = waiting.remove(&id) {
                        self.reply(Some(to), &outcome_of(&state)).await;
                    }
                }
                msg = sub.next() => {
                    let Some(msg) = msg else { break };
                    let size = msg.payload.len();
                    if !is_response_to(&msg.payload, &addr.tenant, &reply_id) {
                        let why = Outcome::Rejected {
                            condition: Some("amqp:decode-error".into()),
                            description: Some("to must be command_response/TENANT/REPLY_ID".into()),
                        };
                        self.reply(msg.reply, &why).await;
                        continue;
                    }
                    let settled = msg.reply.is_none();
                    let origin = match &msg.reply {
                        Some(to) => {
                            next += 1;
                            waiting.insert(next, to.clone());
                            Origin::Remote(Remote { tx: tx.clone(), id: next })
                        }
                        None => Origin::None,
                    };
                    let routed = shared.hub.route_response(
                        &addr.tenant,
                        &reply_id,
                        msg.payload.clone(),
                        settled,
                        origin,
                    );
                    match routed {
                        Routed::Forwarded => counters.count(Counted::Forwarded, size),
                        Routed::NoConsumer => {
                            counters.count(Counted::Released, size);
                            if !settled {
                                waiting.remove(&next);
                            }
                            self.reply(msg.reply, &Outcome::Released).await;
                        }
                    }
                }
            }
        }
        while let Ok((id, state)) = outcomes.try_recv() {
            if let Some(to) = waiting.remove(&id) {
                self.reply(Some(to), &outcome_of(&state)).await;
            }
        }
        Ok(())
    }

    /// `event/T`: the tenant's shared durable consumer, pulled as far as this router's consumers of the
    /// tenant have credit.
    async fn take_events<S: EventStore>(
        &self,
        shared: &Shared<S>,
        addr: &AddressRef,
        stop: &Notify,
    ) -> anyhow::Result<()> {
        let stream =
            ferry_nats::streams::open_event_stream(&self.js, addr.tenant.as_str(), self.replicas)
                .await?;
        let consumer = ferry_nats::streams::event_consumer(
            &stream,
            EVENT_MAX_ACK_PENDING,
            self.event_ack_wait,
        )
        .await?;
        let credit = shared.hub.credit_signal(addr);
        let (tx, mut outcomes) = mpsc::unbounded_channel::<(u64, DeliveryState)>();
        let mut held: HashMap<u64, jetstream::Message> = HashMap::new();
        let mut next = 0u64;
        let settle =
            |held: &mut HashMap<u64, jetstream::Message>, id: u64, state: DeliveryState| {
                let msg = held.remove(&id)?;
                let kind = match state {
                    DeliveryState::Accepted(_) | DeliveryState::Rejected(_) => AckKind::Ack,
                    _ => AckKind::Nak(None),
                };
                Some((msg, kind))
            };
        'outer: loop {
            let available = shared.hub.available_credit(addr);
            if available <= 0 || held.len() >= EVENT_BATCH * 4 {
                tokio::select! {
                    () = stop.notified() => break,
                    () = credit.notified() => {}
                    Some((id, state)) = outcomes.recv() => {
                        if let Some((msg, kind)) = settle(&mut held, id, state) {
                            ack(&msg, kind).await;
                        }
                    }
                }
                continue;
            }
            let want = usize::try_from(available)
                .unwrap_or(EVENT_BATCH)
                .min(EVENT_BATCH);
            let mut batch = consumer
                .batch()
                .max_messages(want)
                .expires(Duration::from_secs(2))
                .messages()
                .await?;
            loop {
                tokio::select! {
                    () = stop.notified() => break 'outer,
                    Some((id, state)) = outcomes.recv() => {
                        if let Some((msg, kind)) = settle(&mut held, id, state) {
                            ack(&msg, kind).await;
                        }
                    }
                    item = batch.next() => {
                        let Some(item) = item else { break };
                        let msg = match item {
                            Ok(m) => m,
                            Err(e) => {
                                tracing::debug!(error = %e, "event batch ended");
                                break;
                            }
                        };
                        let size = msg.payload.len();
                        let payload = match check_device_message(shared, addr, &msg.payload) {
                            Ok(p) => p,
                            Err(_) => {
                                // Not a valid device message: it will never be one.
                                addr.counters.count(Counted::Rejected, size);
                                ack(&msg, AckKind::Term).await;
                                continue;
                            }
                        };
                        next += 1;
                        let origin = Origin::Remote(Remote { tx: tx.clone(), id: next });
                        match shared.hub.route_remote(addr, payload, false, origin) {
                            Routed::Forwarded => {
                                addr.counters.count(Counted::Forwarded, size);
                                held.insert(next, msg);
                            }
                            Routed::NoConsumer => ack(&msg, AckKind::Nak(None)).await,
                        }
                    }
                }
            }
        }
        // Outcomes already on their way are passed on; the rest come back after the ack wait.
        while let Ok((id, state)) = outcomes.try_recv() {
            if let Some((msg, kind)) = settle(&mut held, id, state) {
                ack(&msg, kind).await;
            }
        }
        for (_, msg) in held {
            ack(&msg, AckKind::Nak(None)).await;
        }
        Ok(())
    }

    // ---- commands ----

    /// Mirrors the command-route bucket into the hub until `shutdown`; re-reads it in full after an
    /// error. Runs for the router's lifetime.
    pub async fn follow_routes<S: EventStore>(
        self: Arc<Self>,
        shared: Arc<Shared<S>>,
        shutdown: ferry_core::shutdown::Shutdown,
    ) {
        let stop = shutdown.wait();
        tokio::pin!(stop);
        loop {
            let result = tokio::select! {
                () = &mut stop => return,
                r = self.mirror_routes(&shared) => r,
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, "following the command routes failed; retrying");
            }
            tokio::select! {
                () = &mut stop => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    async fn routes(&self) -> Result<&kv::Store, ferry_nats::Error> {
        self.routes
            .get_or_try_init(|| routes::bucket(&self.js, self.replicas))
            .await
    }

    async fn mirror_routes<S: EventStore>(
        self: &Arc<Self>,
        shared: &Arc<Shared<S>>,
    ) -> anyhow::Result<()> {
        let store = self.routes().await?;
        let mut watch = store.watch_all().await?;
        // What each key holds now, to undo a route when its key is deleted.
        let mut known: HashMap<String, String> = HashMap::new();
        // Device and gateway routes per adapter instance: at none, the instance's stand-in goes.
        let mut held: HashMap<String, usize> = HashMap::new();
        while let Some(entry) = watch.next().await {
            let entry = entry?;
            let Some((kind, tenant, id)) = routes::parse_key(&entry.key) else {
                continue;
            };
            let (Ok(tenant), Ok(id)) =
                (TenantId::new(&tenant), ferry_core::ids::DeviceId::new(&id))
            else {
                continue;
            };
            let hub = &shared.hub;
            let previous = known.remove(&entry.key);
            if let Some(prev) = previous {
                match kind {
                    routes::RouteKind::Device => {
                        if let Some(a) = self.instance(shared, &prev) {
                            hub.unsubscribe_commands(&tenant, id.as_str(), &a);
                        }
                    }
                    routes::RouteKind::Gateway => {
                        if let Some(a) = self.instance(shared, &prev) {
                            hub.unsubscribe_gateway(&tenant, id.as_str(), &a);
                        }
                    }
                    routes::RouteKind::LastGateway => {}
                }
                if kind != routes::RouteKind::LastGateway {
                    if let Some(n) = held.get_mut(&prev) {
                        *n = n.saturating_sub(1);
                        if *n == 0 {
                            held.remove(&prev);
                            self.drop_instance(shared, &prev);
                        }
                    }
                }
            }
            if entry.operation != kv::Operation::Put {
                continue;
            }
            let Ok(value) = std::str::from_utf8(&entry.value) else {
                continue;
            };
            match kind {
                routes::RouteKind::Device => {
                    if let Some(a) = self.instance(shared, value) {
                        hub.subscribe_commands(&tenant, id.as_str(), &a);
                        *held.entry(value.to_owned()).or_default() += 1;
                    }
                }
                routes::RouteKind::Gateway => {
                    if let Some(a) = self.instance(shared, value) {
                        hub.subscribe_gateway(&tenant, id.as_str(), &a);
                        *held.entry(value.to_owned()).or_default() += 1;
                    }
                }
                routes::RouteKind::LastGateway => {
                    if let Ok(g) = ferry_core::ids::DeviceId::new(value) {
                        hub.set_last_gateway(&tenant, id.as_str(), g.as_str());
                    }
                }
            }
            known.insert(entry.key.clone(), value.to_owned());
        }
        anyhow::bail!("the route watch ended")
    }

    /// The command address of adapter instance `id`, with its stand-in consumer (made on first use).
    fn instance<S: EventStore>(
        self: &Arc<Self>,
        shared: &Arc<Shared<S>>,
        id: &str,
    ) -> Option<AddressRef> {
        if let Some(i) = lock(&self.instances).get(id) {
            return Some(i.addr.clone());
        }
        let scope = TenantId::new(id).ok()?;
        let mut addr = shared.hub.address(Kind::CommandInternal, &scope);
        let (tx, rx) = mpsc::unbounded_channel();
        let conn = ConnHandle::new(tx);
        let consumer = shared
            .hub
            .attach_consumer(&mut addr, conn.clone(), hub::next_id());
        shared.hub.consumer_credit(&addr, &consumer, COMMAND_CREDIT);
        let held = Instance {
            addr: addr.clone(),
            consumer,
            stop: Arc::new(Notify::new()),
        };
        lock(&self.instances).insert(id.to_owned(), held.clone());
        shared.hub.metrics.command_instances.inc();
        tokio::spawn(
            self.clone()
                .forward_commands(shared.clone(), id.to_owned(), held, conn, rx),
        );
        Some(addr)
    }

    /// Adapter instance `id` holds no command route any more (it went, or its devices moved): its
    /// stand-in consumer and forwarder go, so instances that come and go do not pile up.
    fn drop_instance<S: EventStore>(&self, shared: &Shared<S>, id: &str) {
        let Some(gone) = lock(&self.instances).remove(id) else {
            return;
        };
        shared
            .hub
            .detach_consumer(&gone.addr, &gone.consumer, Vec::new());
        gone.stop.notify_one();
        shared.hub.metrics.command_instances.dec();
    }

    /// The stand-in consumer of an adapter instance: each command the hub hands it goes to the instance
    /// as a NATS request, and is settled with the answer.
    async fn forward_commands<S: EventStore>(
        self: Arc<Self>,
        shared: Arc<Shared<S>>,
        instance: String,
        held: Instance,
        conn: ConnHandle,
        mut rx: mpsc::UnboundedReceiver<ToConn>,
    ) {
        let Instance {
            addr,
            consumer,
            stop,
        } = held;
        let subject = subjects::command(&instance);
        let in_flight = Arc::new(std::sync::atomic::AtomicU32::new(0));
        loop {
            let request = tokio::select! {
                () = stop.notified() => break,
                r = rx.recv() => match r {
                    Some(r) => r,
                    None => break,
                },
            };
            let ToConn::Deliver {
                payload, origin, ..
            } = request
            else {
                continue;
            };
            conn.written(payload.len() + hub::DELIVERY_OVERHEAD);
            consumer.dequeued();
            in_flight.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            let bus = self.clone();
            let shared = shared.clone();
            let subject = subject.clone();
            let addr = addr.clone();
            let consumer = consumer.clone();
            let in_flight = in_flight.clone();
            let instance = instance.clone();
            tokio::spawn(async move {
                let request = async_nats::Request::new()
                    .payload(payload)
                    .timeout(Some(COMMAND_TIMEOUT));
                let state = match bus.client.send_request(subject, request).await {
                    Ok(answer) => match Outcome::decode(&answer.payload) {
                        Some(o) => delivery_state(o),
                        None => hub::release(),
                    },
                    Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                        bus.forget_instance(&instance).await;
                        hub::release()
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, %instance, "command not settled by the adapter");
                        hub::release()
                    }
                };
                shared.hub.consumer_settled(&consumer, origin, state);
                let now = in_flight.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) - 1;
                shared
                    .hub
                    .consumer_credit(&addr, &consumer, COMMAND_CREDIT.saturating_sub(now));
            });
        }
    }

    /// An adapter instance did not answer: it is gone. Its routes are deleted (unless a newer route of
    /// another instance replaced them meanwhile), so later commands for its devices are released at once
    /// without a request, until the devices subscribe elsewhere.
    async fn forget_instance(&self, instance: &str) {
        let Ok(store) = self.routes().await else {
            return;
        };
        let Ok(mut keys) = store.keys().await else {
            return;
        };
        let mut stale = Vec::new();
        while let Some(Ok(key)) = keys.next().await {
            if matches!(
                routes::parse_key(&key),
                Some((routes::RouteKind::Device | routes::RouteKind::Gateway, _, _))
            ) {
                stale.push(key);
            }
        }
        let mut deleted = 0;
        for key in stale {
            if let Ok(true) = routes::delete_if(store, &key, instance.as_bytes()).await {
                deleted += 1;
            }
        }
        if deleted > 0 {
            tracing::info!(%instance, deleted, "adapter instance does not answer; its command routes were deleted");
        }
    }
}

/// Whether `payload` is an AMQP message whose `to` is `command_response/tenant/reply`.
fn is_response_to(payload: &[u8], tenant: &TenantId, reply: &str) -> bool {
    crate::codec::parse_message(payload)
        .ok()
        .and_then(|v| v.properties().ok().flatten())
        .and_then(|p| p.to)
        .and_then(|to| match crate::auth::Address::parse(&to) {
            Some(crate::auth::Address::CommandResponse(t, r)) => Some(t == *tenant && *r == *reply),
            _ => None,
        })
        .unwrap_or(false)
}

async fn ack(msg: &jetstream::Message, kind: AckKind) {
    if let Err(e) = msg.ack_with(kind).await {
        // The event comes back after the ack wait: at least once.
        tracing::debug!(error = %e, "cannot acknowledge an event");
    }
}

/// An AMQP outcome as a NATS answer.
fn outcome_of(state: &DeliveryState) -> Outcome {
    match state {
        DeliveryState::Accepted(_) => Outcome::Accepted,
        DeliveryState::Rejected(r) => {
            let (condition, description) = match &r.error {
                Some(e) => (condition_name(&e.condition), e.description.clone()),
                None => (None, None),
            };
            Outcome::Rejected {
                condition,
                description,
            }
        }
        DeliveryState::Modified(_) => Outcome::Modified,
        _ => Outcome::Released,
    }
}

fn condition_name(c: &ErrorCondition) -> Option<String> {
    match serde_amqp::to_value(c).ok()? {
        serde_amqp::Value::Symbol(s) => Some(s.0),
        _ => None,
    }
}

/// A NATS answer as an AMQP outcome.
fn delivery_state(o: Outcome) -> DeliveryState {
    use fe2o3_amqp_types::messaging::{Accepted, Modified, Rejected};
    match o {
        Outcome::Accepted => DeliveryState::Accepted(Accepted {}),
        Outcome::Released => hub::release(),
        Outcome::Modified => DeliveryState::Modified(Modified {
            delivery_failed: None,
            undeliverable_here: None,
            message_annotations: None,
        }),
        Outcome::Rejected {
            condition,
            description,
        } => DeliveryState::Rejected(Rejected {
            error: Some(fe2o3_amqp_types::definitions::Error::new(
                ErrorCondition::Custom(fe2o3_amqp_types::primitives::Symbol::from(
                    condition.unwrap_or_else(|| "amqp:internal-error".to_owned()),
                )),
                description,
                None,
            )),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_survive_the_trip_through_nats() {
        for o in [
            Outcome::Accepted,
            Outcome::Released,
            Outcome::Modified,
            Outcome::Rejected {
                condition: Some("amqp:precondition-failed".into()),
                description: Some("device disabled".into()),
            },
        ] {
            assert_eq!(outcome_of(&delivery_state(o.clone())), o);
        }
    }
}
