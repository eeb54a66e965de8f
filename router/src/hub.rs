//! The routing state shared by all connections: who consumes which address, who produces to it, and the
//! event queues.
//!
//! Connections never touch each other directly. A connection that receives a message asks the hub where
//! it goes; the hub picks a consumer and hands the delivery to that consumer's connection task through its
//! channel ([`ConnHandle`]). Settlements travel back the same way, as an [`Origin`] that remembers where a
//! delivery came from. Each address has its own small mutex, held only for the bookkeeping of one
//! decision and never across an await, so connections of different tenants never contend.
//!
//! Credit is the flow-control signal end to end: a telemetry producer is given credit only while the
//! address has a consumer with credit; when the consumers run dry the producer's credit is not renewed, and
//! it is woken with fresh credit when a consumer grants more. Nothing is buffered for telemetry: a message
//! that finds no consumer with credit is released (or dropped, when pre-settled).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use fe2o3_amqp_types::messaging::DeliveryState;
use ferry_core::ids::TenantId;
use tokio::sync::mpsc;

use crate::events::{EventId, EventLimits, EventStore, Limit, NewEvent, ReadBatch};
use crate::metrics::Metrics;

/// A link, unique for the life of the process (handles and channels are reused; this is not).
pub type LinkId = u64;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A fresh process-unique id for a connection or link.
pub fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// What the hub (or another connection) asks a connection task to do.
#[derive(Debug)]
pub enum ToConn {
    /// Send `payload` as a delivery on the outgoing link `link`.
    Deliver {
        link: LinkId,
        payload: Bytes,
        settled: bool,
        origin: Origin,
    },
    /// Settle the incoming delivery `delivery_id` (on session `channel`) with `state`.
    Outcome {
        channel: u16,
        delivery_id: u32,
        state: DeliveryState,
    },
    /// An incoming link may be given credit again (consumers have credit now).
    Wake { link: LinkId },
}

/// The way into a connection task.
#[derive(Debug, Clone)]
pub struct ConnHandle {
    pub id: u64,
    pub tx: mpsc::UnboundedSender<ToConn>,
    /// Bytes of deliveries handed to the connection and not yet written to its socket (each counted with
    /// [`DELIVERY_OVERHEAD`]). Past [`Hub::max_queued_bytes`] its consumers take nothing more, so a peer
    /// that stops reading makes the router hold a bounded amount, whatever credit it granted.
    pub queued_bytes: Arc<AtomicUsize>,
}

/// What a queued delivery costs beside its payload (the request, its origin, the frame header).
pub const DELIVERY_OVERHEAD: usize = 128;

/// Most deliveries a consumer may leave unsettled; past it, it takes nothing more until it settles some.
pub const MAX_UNSETTLED_PER_CONSUMER: i64 = 10_000;

impl ConnHandle {
    pub fn new(tx: mpsc::UnboundedSender<ToConn>) -> Self {
        Self {
            id: next_id(),
            tx,
            queued_bytes: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The connection wrote (or dropped) `bytes` of what it was handed.
    pub fn written(&self, bytes: usize) {
        self.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Sends a request; a connection that has gone ignores it (its cleanup already settled everything).
    pub fn send(&self, msg: ToConn) -> bool {
        self.tx.send(msg).is_ok()
    }
}

/// Where a delivery came from, so that its settlement can be relayed back.
#[derive(Debug, Clone)]
pub enum Origin {
    /// Pre-settled telemetry: nothing to relay.
    None,
    /// Unsettled telemetry (or a command): relay the consumer's outcome to the producer's delivery.
    Producer {
        conn: ConnHandle,
        channel: u16,
        delivery_id: u32,
    },
    /// A stored event: accepted removes it, anything else puts it back in the queue.
    Event { addr: AddressRef, id: EventId },
}

/// What an address is, as attached.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Kind {
    Telemetry,
    Event,
    /// `command/T`: applications send commands here.
    Command,
    /// `command_response/T/REPLY` (applications receive) or `command_response` (adapters send; each
    /// message names its `to`).
    CommandResponse,
    /// `command_internal/INSTANCE`: an adapter instance receives its devices' commands here, and sends
    /// subscription changes to it.
    CommandInternal,
}

impl Kind {
    /// The `type` label of metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Telemetry => "telemetry",
            Self::Event => "event",
            Self::Command => "command",
            Self::CommandResponse => "command_response",
            Self::CommandInternal => "command_subscription",
        }
    }
}

/// A consumer link's registration at an address.
#[derive(Debug)]
pub struct Consumer {
    pub conn: ConnHandle,
    pub link: LinkId,
    /// Deliveries the consumer will still take (its credit, minus what is on the way to it).
    credit: AtomicI64,
    /// Deliveries sent and not yet settled by the consumer: the balancing weight.
    unsettled: AtomicI64,
    /// Deliveries handed to the consumer's connection task and not yet sent by it.
    queued: AtomicI64,
}

impl Consumer {
    /// Deliveries on their way through the connection's channel.
    pub fn queued(&self) -> u32 {
        u32::try_from(self.queued.load(Ordering::Acquire).max(0)).unwrap_or(u32::MAX)
    }

    /// The connection took one delivery off its channel.
    pub fn dequeued(&self) {
        self.queued.fetch_sub(1, Ordering::AcqRel);
    }

    /// Whether the consumer may take more now: its connection is not holding too many bytes for it, and
    /// it has not left too many deliveries unsettled.
    pub fn choked(&self, max_queued_bytes: usize) -> bool {
        self.conn.queued_bytes.load(Ordering::Acquire) > max_queued_bytes
            || self.unsettled.load(Ordering::Relaxed) >= MAX_UNSETTLED_PER_CONSUMER
    }

    /// Its credit as producers and the picker should see it: none while choked.
    fn usable_credit(&self, max_queued_bytes: usize) -> i64 {
        if self.choked(max_queued_bytes) {
            0
        } else {
            self.credit.load(Ordering::Acquire).max(0)
        }
    }

    fn take_credit(&self) -> bool {
        let mut cur = self.credit.load(Ordering::Acquire);
        while cur > 0 {
            match self.credit.compare_exchange_weak(
                cur,
                cur - 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
        false
    }
}

/// An incoming (producer) link's registration at an address.
#[derive(Debug)]
pub struct Producer {
    pub conn: ConnHandle,
    pub link: LinkId,
    /// Its sender settle mode is `unsettled`: it wants an outcome for every message.
    pub unsettled: bool,
}

#[derive(Debug, Default)]
struct Address {
    consumers: Vec<Arc<Consumer>>,
    /// Where the next search for a consumer starts, so that equally loaded consumers take turns.
    next: usize,
    /// Producers that ran out of credit while no consumer had any; woken when one does.
    starved: Vec<Arc<Producer>>,
    /// Events (of `event/T`): ids only; payloads stay in the store until delivered.
    events: EventQueue,
    /// Command responses for an application whose receiver is attached but has no credit yet, oldest
    /// first; delivered when it grants some, released at their deadline or when the receiver leaves.
    waiting: VecDeque<WaitingResponse>,
}

/// A command response held for an application's credit.
#[derive(Debug)]
struct WaitingResponse {
    payload: Bytes,
    settled: bool,
    origin: Origin,
    deadline: std::time::Instant,
}

/// How long a command response waits for its application to grant credit. Shorter than the adapters'
/// send timeout (5 s by default), so the device learns the outcome from the router, not from a timeout.
pub const RESPONSE_CREDIT_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Most command responses held per reply address; beyond that they are released at once.
const MAX_WAITING_RESPONSES: usize = 1024;

/// A tenant's events as the hub tracks them: ids, 8 bytes an event. Payloads are read from the store
/// when they are delivered, a bounded batch per dispatch round ([`READ_BATCH_EVENTS`],
/// [`READ_BATCH_BYTES`]), so a backlog costs disk, not memory.
#[derive(Debug, Default)]
struct EventQueue {
    /// Stored and not yet delivered, in append (id) order.
    ready: VecDeque<EventId>,
    /// Delivered and not yet settled.
    in_flight: HashSet<EventId>,
    /// A dispatch round is reading payloads: it takes what becomes deliverable meanwhile, so rounds of
    /// one address never overlap (which keeps deliveries in order).
    reading: bool,
}

impl EventQueue {
    /// Puts `id` at its place in append order (at the back, for a new event).
    fn insert(&mut self, id: EventId) {
        if self.ready.back().is_none_or(|last| *last < id) {
            self.ready.push_back(id);
            return;
        }
        let pos = self.ready.partition_point(|q| *q < id);
        if self.ready.get(pos) != Some(&id) {
            self.ready.insert(pos, id);
        }
    }

    fn remove(&mut self, id: EventId) {
        if let Ok(pos) = self.ready.binary_search(&id) {
            self.ready.remove(pos);
        }
    }
}

/// Most events one dispatch round reads from the store.
const READ_BATCH_EVENTS: usize = 64;

/// About the most payload bytes one dispatch round reads (at least one event, up to the router's 1 MiB
/// message limit, always is): what a tenant's dispatch holds in memory between store and connections.
const READ_BATCH_BYTES: usize = 1 << 20;

/// Event ids read per page when the queues are rebuilt at start.
const RESTORE_PAGE: usize = 4096;

impl Address {
    /// The consumer with credit and the fewest unsettled deliveries (ties take turns); its credit is taken.
    /// A choked consumer ([`Consumer::choked`]) is passed over.
    fn pick(&mut self, max_queued_bytes: usize) -> Option<Arc<Consumer>> {
        let n = self.consumers.len();
        let mut best: Option<usize> = None;
        for k in 0..n {
            let i = (self.next + k) % n;
            let c = &self.consumers[i];
            if c.usable_credit(max_queued_bytes) <= 0 {
                continue;
            }
            let load = c.unsettled.load(Ordering::Relaxed);
            if best.is_none_or(|b| load < self.consumers[b].unsettled.load(Ordering::Relaxed)) {
                best = Some(i);
            }
        }
        let i = best?;
        self.next = (i + 1) % n.max(1);
        let chosen = &self.consumers[i];
        chosen.take_credit().then(|| {
            chosen.unsettled.fetch_add(1, Ordering::Relaxed);
            chosen.queued.fetch_add(1, Ordering::AcqRel);
            chosen.clone()
        })
    }
}

/// Default of [`Hub::max_queued_bytes`].
pub const DEFAULT_MAX_QUEUED_BYTES: usize = 8 * 1024 * 1024;

/// Credit of a telemetry producer while its address has no consumer: one message at a time, released on
/// arrival. Small, so that when a consumer attaches, few messages sent on this credit find it still
/// without credit of its own.
pub const NO_CONSUMER_CREDIT: u32 = 1;

/// Most devices whose last-known gateway is remembered; beyond, the table starts over.
const MAX_LAST_GATEWAYS: usize = 1_000_000;

/// The outcome of routing one telemetry message.
#[derive(Debug, PartialEq, Eq)]
pub enum Routed {
    Forwarded,
    /// No consumer with credit: the producer should release (or drop) it.
    NoConsumer,
}

/// Every address by kind, tenant and (for command responses) reply id.
type AddressTable = HashMap<(Kind, TenantId, Option<Arc<str>>), Arc<Mutex<Address>>>;

/// Command subscriptions: (tenant, device) → the command address of the adapter instance holding it.
type CommandRoutes = HashMap<(TenantId, Arc<str>), AddressRef>;

/// Gateways subscribed for all their devices: tenant → gateway → the instance holding the subscription.
type GatewayRoutes = HashMap<TenantId, HashMap<Arc<str>, AddressRef>>;

/// (tenant, device) → the gateway the device last sent a message through.
type LastGateways = HashMap<(TenantId, Arc<str>), Arc<str>>;

/// Where a command goes.
#[derive(Debug)]
pub enum CommandTarget {
    /// The instance holding the device's own (or a gateway's device-specific) subscription.
    Device(AddressRef),
    /// None holds one, but gateways of the tenant subscribed for all their devices: whether one of them
    /// may act for the device depends on its `via` ([`Hub::gateway_for`]).
    Gateways,
    /// Nobody: the command is released.
    Nobody,
}

/// The shared routing state.
pub struct Hub<S: EventStore> {
    addresses: Mutex<AddressTable>,
    commands: Mutex<CommandRoutes>,
    gateways: Mutex<GatewayRoutes>,
    /// The gateway each device last sent a message through (`set-last-gw`), preferred among several.
    last_gateway: Mutex<LastGateways>,
    store: Arc<S>,
    pub metrics: Metrics,
    /// How much the event store may hold before event producers get no more credit.
    event_limits: EventLimits,
    /// An event producer got no credit because the whole store was full: the next event to leave the
    /// store wakes every tenant's starved event producers, not only its own tenant's.
    events_full: AtomicBool,
    /// Most bytes of deliveries a connection may hold unwritten before its consumers take no more.
    pub max_queued_bytes: usize,
}

impl<S: EventStore> std::fmt::Debug for Hub<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A handle on one address, kept by a link so the per-message path skips the address table.
///
/// `tenant` scopes the address. Two kinds are not a tenant's: an adapter instance's command address
/// (`command_internal/INSTANCE`) is scoped by the instance id, and the adapters' shared response sender
/// (`command_response`) by [`internal_scope`]; their kinds keep them apart from any tenant's addresses.
#[derive(Debug, Clone)]
pub struct AddressRef {
    pub kind: Kind,
    pub tenant: TenantId,
    /// The reply id of `command_response/T/REPLY`: such an address lives only while a receiver is
    /// attached (applications make a new one per run, so keeping them would grow without bound).
    sub: Option<Arc<str>>,
    pub counters: Arc<crate::metrics::Outcomes>,
    inner: Arc<Mutex<Address>>,
}

/// The scope of addresses that belong to no tenant.
pub fn internal_scope() -> TenantId {
    TenantId::new("ferry.internal").expect("a valid id")
}

impl<S: EventStore> Hub<S> {
    pub fn new(store: Arc<S>, metrics: Metrics, max_events_per_tenant: u64) -> Self {
        Self {
            addresses: Mutex::new(HashMap::new()),
            commands: Mutex::new(HashMap::new()),
            gateways: Mutex::new(HashMap::new()),
            last_gateway: Mutex::new(HashMap::new()),
            store,
            metrics,
            event_limits: EventLimits {
                max_events_per_tenant,
                ..EventLimits::default()
            },
            events_full: AtomicBool::new(false),
            max_queued_bytes: DEFAULT_MAX_QUEUED_BYTES,
        }
    }

    /// Sets the event store's limits (replacing `new`'s `max_events_per_tenant`).
    pub fn with_event_limits(mut self, limits: EventLimits) -> Self {
        self.event_limits = limits;
        self
    }

    /// Sets [`Hub::max_queued_bytes`].
    pub fn with_max_queued_bytes(mut self, bytes: usize) -> Self {
        self.max_queued_bytes = bytes;
        self
    }

    /// Consumers attached at `addr`.
    pub fn consumers(&self, addr: &AddressRef) -> usize {
        lock(&addr.inner).consumers.len()
    }

    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    /// The address `kind/tenant`, created on first use.
    pub fn address(&self, kind: Kind, tenant: &TenantId) -> AddressRef {
        self.address_with(kind, tenant, None)
    }

    /// The address `kind/tenant/sub` (command responses carry a reply id).
    pub fn address_with(&self, kind: Kind, tenant: &TenantId, sub: Option<&str>) -> AddressRef {
        let sub: Option<Arc<str>> = sub.map(Arc::from);
        let inner = lock(&self.addresses)
            .entry((kind.clone(), tenant.clone(), sub.clone()))
            .or_default()
            .clone();
        AddressRef {
            counters: Arc::new(self.metrics.outcomes(tenant, kind.name())),
            kind,
            tenant: tenant.clone(),
            sub,
            inner,
        }
    }

    /// The table key of an address.
    fn key(addr: &AddressRef) -> (Kind, TenantId, Option<Arc<str>>) {
        (addr.kind.clone(), addr.tenant.clone(), addr.sub.clone())
    }

    /// Command-response addresses in the table (they come and go with their receivers).
    pub fn response_addresses(&self) -> usize {
        lock(&self.addresses)
            .keys()
            .filter(|(kind, _, sub)| *kind == Kind::CommandResponse && sub.is_some())
            .count()
    }

    /// Rebuilds every tenant's event queue from the store's ids (at start; no payload is read).
    pub async fn restore_events(&self) -> Result<(), crate::events::StoreError> {
        for tenant in self.store.tenants() {
            let addr = self.address(Kind::Event, &tenant);
            let mut after = None;
            loop {
                let page = self.store.pending(&tenant, after, RESTORE_PAGE).await?;
                let Some(last) = page.last() else { break };
                after = Some(*last);
                // Pages come in append order, each after the last.
                lock(&addr.inner).events.ready.extend(page);
            }
            self.metrics
                .event_store_depth(&tenant, self.store.depth(&tenant));
        }
        Ok(())
    }

    // ---- consumers ----

    /// Registers a consumer at `addr`. A reply address that its last receiver left meanwhile was taken out
    /// of the table: `addr` is rebound to the one in the table (put back, or made by another receiver).
    pub fn attach_consumer(
        &self,
        addr: &mut AddressRef,
        conn: ConnHandle,
        link: LinkId,
    ) -> Arc<Consumer> {
        let c = Arc::new(Consumer {
            conn,
            link,
            credit: AtomicI64::new(0),
            unsettled: AtomicI64::new(0),
            queued: AtomicI64::new(0),
        });
        if addr.sub.is_some() {
            // Under the table lock, so that a detach cannot take the address out in between.
            let mut table = lock(&self.addresses);
            let inner = table
                .entry(Self::key(addr))
                .or_insert_with(|| addr.inner.clone())
                .clone();
            addr.inner = inner;
            lock(&addr.inner).consumers.push(c.clone());
        } else {
            lock(&addr.inner).consumers.push(c.clone());
        }
        c
    }

    /// The consumer's credit is now `available` (what its flow allows, minus what we sent). Wakes starved
    /// producers (telemetry) or delivers queued events.
    pub fn consumer_credit(&self, addr: &AddressRef, consumer: &Consumer, available: u32) {
        consumer
            .credit
            .store(i64::from(available), Ordering::Release);
        if available == 0 {
            return;
        }
        match addr.kind {
            Kind::Telemetry => {
                let starved = std::mem::take(&mut lock(&addr.inner).starved);
                for p in starved {
                    p.conn.send(ToConn::Wake { link: p.link });
                }
            }
            Kind::Event => self.dispatch_events(addr),
            Kind::CommandResponse => {
                dispatch_waiting(&mut lock(&addr.inner), self.max_queued_bytes)
            }
            Kind::Command | Kind::CommandInternal => {}
        }
    }

    /// A consumer left: what it had not settled is released back to where it came from.
    pub fn detach_consumer(
        &self,
        addr: &AddressRef,
        consumer: &Arc<Consumer>,
        unsettled: Vec<Origin>,
    ) {
        let (stranded, starved): (Vec<WaitingResponse>, Vec<Arc<Producer>>) = {
            // A reply address goes with its last receiver; table before address, as everywhere.
            let mut table = addr.sub.is_some().then(|| lock(&self.addresses));
            let mut a = lock(&addr.inner);
            a.consumers.retain(|c| !Arc::ptr_eq(c, consumer));
            if let Some(table) = table.as_mut() {
                let key = Self::key(addr);
                if a.consumers.is_empty()
                    && table.get(&key).is_some_and(|i| Arc::ptr_eq(i, &addr.inner))
                {
                    table.remove(&key);
                }
            }
            if a.consumers.is_empty() {
                (
                    a.waiting.drain(..).collect(),
                    std::mem::take(&mut a.starved),
                )
            } else {
                (Vec::new(), Vec::new())
            }
        };
        // The last consumer went: producers waiting for credit get some, so that what they send is
        // released at once (no consumer) instead of waiting in the adapter.
        for p in starved {
            p.conn.send(ToConn::Wake { link: p.link });
        }
        for w in stranded {
            self.settle(w.origin, release());
        }
        for origin in unsettled {
            self.settle(origin, release());
        }
        if addr.kind == Kind::Event {
            self.dispatch_events(addr);
        }
    }

    /// The consumer settled a delivery (or the delivery could not be sent to it).
    pub fn consumer_settled(&self, consumer: &Consumer, origin: Origin, state: DeliveryState) {
        consumer.unsettled.fetch_sub(1, Ordering::Relaxed);
        self.settle(origin, state);
    }

    /// Relays a settlement to where the delivery came from.
    pub fn settle(&self, origin: Origin, state: DeliveryState) {
        match origin {
            Origin::None => {}
            Origin::Producer {
                conn,
                channel,
                delivery_id,
            } => {
                conn.send(ToConn::Outcome {
                    channel,
                    delivery_id,
                    state,
                });
            }
            Origin::Event { addr, id } => {
                let tenant = addr.tenant.clone();
                let done = matches!(
                    state,
                    DeliveryState::Accepted(_) | DeliveryState::Rejected(_)
                );
                {
                    let mut a = lock(&addr.inner);
                    if a.events.in_flight.remove(&id) && !done {
                        // Back to its place in append order, so redelivery keeps the order. Expired
                        // meanwhile, it is skipped when the store is asked for its payload.
                        a.events.insert(id);
                    }
                }
                if done {
                    // A rejected event is one the application cannot process: it is dropped, not retried.
                    if let Err(e) = self.store.ack(&tenant, id) {
                        // The event stays stored and is delivered again after a restart: at least once.
                        tracing::warn!(error = %e, "event store ack failed");
                    }
                    self.metrics
                        .event_store_depth(&tenant, self.store.depth(&tenant));
                    self.wake_event_producers(Some(&addr));
                } else {
                    self.dispatch_events(&addr);
                }
            }
        }
    }

    // ---- telemetry ----

    pub fn attach_producer(
        &self,
        conn: ConnHandle,
        link: LinkId,
        unsettled: bool,
    ) -> Arc<Producer> {
        Arc::new(Producer {
            conn,
            link,
            unsettled,
        })
    }

    /// How much credit a producer on `addr` may hold now (0: none; it is then remembered and woken when
    /// consumers grant credit). Telemetry is never buffered, so a telemetry producer may hold no more
    /// than the address's consumers will take: the sum of their credit. Several producers on one
    /// address can still over-commit it between two grants; what finds no consumer is released.
    ///
    /// An address without any consumer gives an `unsettled` producer [`NO_CONSUMER_CREDIT`]: its messages
    /// are released at once, so the adapter can tell "nobody consumes" (an immediate `released`: the
    /// device hears 503 at once) from "consumers are busy" (no credit: the message waits, and the
    /// device's PUBACK with it). Pre-settled (and mixed) producers get no credit then, as before: they
    /// would learn nothing from the drop.
    pub fn producer_credit_limit(&self, addr: &AddressRef, producer: &Arc<Producer>) -> u32 {
        match addr.kind {
            Kind::Telemetry => {
                let mut a = lock(&addr.inner);
                if a.consumers.is_empty() && producer.unsettled {
                    return NO_CONSUMER_CREDIT;
                }
                let available: i64 = a
                    .consumers
                    .iter()
                    .map(|c| c.usable_credit(self.max_queued_bytes))
                    .sum();
                if available > 0 {
                    u32::try_from(available).unwrap_or(u32::MAX)
                } else {
                    if !a.starved.iter().any(|p| Arc::ptr_eq(p, producer)) {
                        a.starved.push(producer.clone());
                    }
                    0
                }
            }
            // Events are stored whether or not anyone consumes; only the store's limits stop them. A
            // refused producer is woken when an event leaves the store (`wake_event_producers`).
            Kind::Event => {
                let mut a = lock(&addr.inner);
                let tenant = self.store.usage(&addr.tenant);
                match self.event_limits.reached(tenant, self.store.total()) {
                    None => u32::MAX,
                    Some(limit) => {
                        if limit == Limit::Store {
                            self.events_full.store(true, Ordering::Release);
                        }
                        if !a.starved.iter().any(|p| Arc::ptr_eq(p, producer)) {
                            a.starved.push(producer.clone());
                        }
                        0
                    }
                }
            }
            // Commands, responses and subscription changes are settled at once when they cannot be
            // delivered; the producer's window bounds what is in flight.
            Kind::Command | Kind::CommandResponse | Kind::CommandInternal => u32::MAX,
        }
    }

    pub fn detach_producer(&self, addr: &AddressRef, producer: &Arc<Producer>) {
        lock(&addr.inner)
            .starved
            .retain(|p| !Arc::ptr_eq(p, producer));
    }

    /// Routes one telemetry message to a consumer with credit.
    pub fn route_telemetry(
        &self,
        addr: &AddressRef,
        payload: Bytes,
        settled: bool,
        origin: Origin,
    ) -> Routed {
        let Some(consumer) = lock(&addr.inner).pick(self.max_queued_bytes) else {
            return Routed::NoConsumer;
        };
        deliver(&consumer, payload, settled, origin);
        Routed::Forwarded
    }

    // ---- commands ----

    /// Routes `(tenant, device)`'s commands to an adapter instance's command address. The newest
    /// subscription wins (a device that reconnects elsewhere takes its commands along).
    pub fn subscribe_commands(&self, tenant: &TenantId, device: &str, instance: &AddressRef) {
        lock(&self.commands).insert((tenant.clone(), Arc::from(device)), instance.clone());
    }

    /// Ends a subscription, if it still points at `instance` (a newer one elsewhere stays).
    pub fn unsubscribe_commands(&self, tenant: &TenantId, device: &str, instance: &AddressRef) {
        let mut routes = lock(&self.commands);
        let key = (tenant.clone(), Arc::from(device));
        if routes
            .get(&key)
            .is_some_and(|a| Arc::ptr_eq(&a.inner, &instance.inner))
        {
            routes.remove(&key);
        }
    }

    /// Routes the commands of every device that lists `gateway` in its `via` (and has no subscription of
    /// its own) to an adapter instance: the gateway subscribed for all its devices. The newest such
    /// subscription of one gateway wins.
    pub fn subscribe_gateway(&self, tenant: &TenantId, gateway: &str, instance: &AddressRef) {
        lock(&self.gateways)
            .entry(tenant.clone())
            .or_default()
            .insert(Arc::from(gateway), instance.clone());
    }

    /// Ends a gateway's all-devices subscription, if it still points at `instance`.
    pub fn unsubscribe_gateway(&self, tenant: &TenantId, gateway: &str, instance: &AddressRef) {
        let mut routes = lock(&self.gateways);
        if let Some(of_tenant) = routes.get_mut(tenant) {
            if of_tenant
                .get(gateway)
                .is_some_and(|a| Arc::ptr_eq(&a.inner, &instance.inner))
            {
                of_tenant.remove(gateway);
            }
            if of_tenant.is_empty() {
                routes.remove(tenant);
            }
        }
    }

    /// Remembers the gateway a device last sent a message through (Hono's `set-last-gw`); among several
    /// gateways subscribed for it, its commands go there.
    pub fn set_last_gateway(&self, tenant: &TenantId, device: &str, gateway: &str) {
        let mut last = lock(&self.last_gateway);
        let key = (tenant.clone(), Arc::<str>::from(device));
        if last.get(&key).is_some_and(|g| &**g == gateway) {
            return;
        }
        if last.len() >= MAX_LAST_GATEWAYS {
            last.clear();
        }
        last.insert(key, Arc::from(gateway));
    }

    /// Forgets every subscription of an adapter instance whose command link is gone.
    pub fn drop_instance(&self, instance: &AddressRef) {
        if lock(&instance.inner).consumers.is_empty() {
            lock(&self.commands).retain(|_, a| !Arc::ptr_eq(&a.inner, &instance.inner));
            let mut gateways = lock(&self.gateways);
            for of_tenant in gateways.values_mut() {
                of_tenant.retain(|_, a| !Arc::ptr_eq(&a.inner, &instance.inner));
            }
            gateways.retain(|_, of_tenant| !of_tenant.is_empty());
        }
    }

    /// Where a command for `(tenant, device)` goes (HONO-CONTRACT §2.2 "Routing precedence"): the newest
    /// device-specific subscription, else possibly a gateway's subscription for all its devices.
    pub fn command_target(&self, tenant: &TenantId, device: &str) -> CommandTarget {
        if let Some(addr) = lock(&self.commands).get(&(tenant.clone(), Arc::from(device))) {
            return CommandTarget::Device(addr.clone());
        }
        if lock(&self.gateways).contains_key(tenant) {
            CommandTarget::Gateways
        } else {
            CommandTarget::Nobody
        }
    }

    /// The gateway (and its instance) that gets a command for `device`, whose gateways are `via`: the
    /// device's last-known gateway if it subscribed for all its devices, else one of the subscribed ones
    /// picked at random; `None` when none of them did.
    pub fn gateway_for(
        &self,
        tenant: &TenantId,
        device: &str,
        via: &[Arc<str>],
    ) -> Option<(Arc<str>, AddressRef)> {
        let last = lock(&self.last_gateway)
            .get(&(tenant.clone(), Arc::from(device)))
            .cloned();
        let gateways = lock(&self.gateways);
        let of_tenant = gateways.get(tenant)?;
        if let Some(last) = last.filter(|g| via.contains(g)) {
            if let Some(addr) = of_tenant.get(&last) {
                return Some((last, addr.clone()));
            }
        }
        let subscribed: Vec<&Arc<str>> =
            via.iter().filter(|g| of_tenant.contains_key(*g)).collect();
        if subscribed.is_empty() {
            return None;
        }
        // Hono picks one at random; the process-wide id counter is random enough and costs no RNG.
        let index = usize::try_from(next_id()).unwrap_or(0) % subscribed.len();
        let gateway = (*subscribed.get(index)?).clone();
        let addr = of_tenant.get(&gateway)?.clone();
        Some((gateway, addr))
    }

    /// Forwards a command to an adapter instance's command address; `NoConsumer` when its link has no
    /// credit: the application gets `released`.
    pub fn route_command(
        &self,
        instance: &AddressRef,
        payload: Bytes,
        settled: bool,
        origin: Origin,
    ) -> Routed {
        self.route_direct(instance, payload, settled, origin)
    }

    /// Forwards a command response to the application receiving on `command_response/T/REPLY`.
    pub fn route_response(
        &self,
        tenant: &TenantId,
        reply: &str,
        payload: Bytes,
        settled: bool,
        origin: Origin,
    ) -> Routed {
        let inner = lock(&self.addresses)
            .get(&(
                Kind::CommandResponse,
                tenant.clone(),
                Some(Arc::from(reply)),
            ))
            .cloned();
        let Some(inner) = inner else {
            return Routed::NoConsumer;
        };
        let mut a = lock(&inner);
        if let Some(consumer) = a.pick(self.max_queued_bytes) {
            drop(a);
            deliver(&consumer, payload, settled, origin);
            return Routed::Forwarded;
        }
        // An application attaches its response receiver before it sends the command, but may grant
        // credit only once the attach is answered; a quick device can answer before that. Hold the
        // response briefly rather than lose it.
        if a.consumers.is_empty() || a.waiting.len() >= MAX_WAITING_RESPONSES {
            return Routed::NoConsumer;
        }
        a.waiting.push_back(WaitingResponse {
            payload,
            settled,
            origin,
            deadline: std::time::Instant::now() + RESPONSE_CREDIT_WAIT,
        });
        Routed::Forwarded
    }

    /// Releases command responses that waited too long for their application's credit.
    pub fn expire_responses(&self, now: std::time::Instant) {
        let addresses: Vec<Arc<Mutex<Address>>> = lock(&self.addresses)
            .iter()
            .filter(|((kind, _, _), _)| *kind == Kind::CommandResponse)
            .map(|(_, a)| a.clone())
            .collect();
        for address in addresses {
            let expired: Vec<WaitingResponse> = {
                let mut a = lock(&address);
                // Deadlines grow with arrival, so the expired responses are at the front.
                let n = a.waiting.iter().take_while(|w| w.deadline <= now).count();
                a.waiting.drain(..n).collect()
            };
            for w in expired {
                self.settle(w.origin, release());
            }
        }
    }

    fn route_direct(
        &self,
        addr: &AddressRef,
        payload: Bytes,
        settled: bool,
        origin: Origin,
    ) -> Routed {
        let Some(consumer) = lock(&addr.inner).pick(self.max_queued_bytes) else {
            return Routed::NoConsumer;
        };
        deliver(&consumer, payload, settled, origin);
        Routed::Forwarded
    }

    // ---- events ----

    /// Stores an event durably; resolves when it is safe to accept it, and queues its id for consumers.
    pub async fn append_event(
        &self,
        addr: &AddressRef,
        event: NewEvent,
    ) -> Result<(), crate::events::StoreError> {
        let payload = event.payload.clone();
        let id = self.store.append(&addr.tenant, event).await?;
        lock(&addr.inner).events.insert(id);
        self.metrics
            .event_store_depth(&addr.tenant, self.store.depth(&addr.tenant));
        self.dispatch(addr, Some((id, payload)));
        Ok(())
    }

    /// Hands queued events to consumers with credit, in order. The payloads are read from the store off
    /// the caller's task, a bounded batch at a time.
    pub fn dispatch_events(&self, addr: &AddressRef) {
        self.dispatch(addr, None);
    }

    /// `known`: an event whose payload is at hand (the one just appended); when the round is just that
    /// event, as it is while consumers keep up, it is delivered without reading it back.
    fn dispatch(&self, addr: &AddressRef, known: Option<(EventId, Bytes)>) {
        let max_queued = self.max_queued_bytes;
        let mut a = lock(&addr.inner);
        let Some(mut ids) = take_batch(&mut a, max_queued, false) else {
            return;
        };
        if let Some((id, payload)) = known {
            if ids == [id] {
                deliver_events(&mut a, addr, max_queued, &ids, vec![(id, payload)], 1);
                match take_batch(&mut a, max_queued, true) {
                    Some(next) => ids = next,
                    None => return,
                }
            }
        }
        drop(a);
        let round = dispatch_rounds(self.store.clone(), addr.clone(), max_queued, ids.clone());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(round);
        } else {
            // Only a caller outside any runtime (none in the router) gets here: leave the events queued.
            tracing::error!("event dispatch called outside a tokio runtime");
            let mut a = lock(&addr.inner);
            for id in ids {
                a.events.insert(id);
            }
            a.events.reading = false;
        }
    }

    /// Undelivered events of `addr` (ids held in memory; their payloads are on disk).
    pub fn queued_events(&self, addr: &AddressRef) -> usize {
        lock(&addr.inner).events.ready.len()
    }

    /// Drops expired events from queues and store.
    pub fn expire_events(&self, now_ms: u64) {
        let mut by_tenant: HashMap<TenantId, Vec<EventId>> = HashMap::new();
        for (tenant, id) in self.store.expire(now_ms) {
            by_tenant.entry(tenant).or_default().push(id);
        }
        for (tenant, ids) in by_tenant {
            let addr = self.address(Kind::Event, &tenant);
            {
                let mut a = lock(&addr.inner);
                for id in ids {
                    // One delivered and unsettled stays in flight; its ack will find it gone.
                    a.events.remove(id);
                }
            }
            self.metrics
                .event_store_depth(&tenant, self.store.depth(&tenant));
            self.wake_event_producers(Some(&addr));
        }
        // A producer refused while the store was full can miss the wake of the event that made room (it
        // was refused on a stale look); this once-a-second call catches it.
        self.wake_event_producers(None);
    }

    /// Event producers refused credit get another look once events left the store: those of `addr`, and
    /// every tenant's when the whole store was full and is no longer.
    fn wake_event_producers(&self, addr: Option<&AddressRef>) {
        if self.store.total().bytes >= self.event_limits.max_bytes {
            return;
        }
        let addresses: Vec<Arc<Mutex<Address>>> = if self.events_full.swap(false, Ordering::AcqRel)
        {
            lock(&self.addresses)
                .iter()
                .filter(|((kind, _, _), _)| *kind == Kind::Event)
                .map(|(_, a)| a.clone())
                .collect()
        } else if let Some(addr) = addr {
            vec![addr.inner.clone()]
        } else {
            return;
        };
        for inner in addresses {
            let starved = std::mem::take(&mut lock(&inner).starved);
            for p in starved {
                p.conn.send(ToConn::Wake { link: p.link });
            }
        }
    }
}

/// Takes the ids of the next dispatch round when consumers have credit for them, and marks the round as
/// reading; `None` when there is nothing to deliver, or (unless `continuing` that round) a round is
/// already reading.
fn take_batch(a: &mut Address, max_queued: usize, continuing: bool) -> Option<Vec<EventId>> {
    if a.events.reading && !continuing {
        return None;
    }
    let credit: i64 = a
        .consumers
        .iter()
        .map(|c| c.usable_credit(max_queued))
        .sum();
    let n = usize::try_from(credit)
        .unwrap_or(0)
        .min(READ_BATCH_EVENTS)
        .min(a.events.ready.len());
    a.events.reading = n > 0;
    (n > 0).then(|| a.events.ready.drain(..n).collect())
}

/// Reads the payloads of a round and delivers them, then the next rounds while there is credit and
/// something to deliver. One task per address at a time (`EventQueue::reading`), so deliveries stay in
/// append order.
async fn dispatch_rounds<S: EventStore>(
    store: Arc<S>,
    addr: AddressRef,
    max_queued: usize,
    mut ids: Vec<EventId>,
) {
    loop {
        let read = store
            .read(&addr.tenant, ids.clone(), READ_BATCH_BYTES)
            .await;
        let mut a = lock(&addr.inner);
        match read {
            Ok(ReadBatch { events, looked_at }) => {
                let events = events.into_iter().map(|e| (e.id, e.payload)).collect();
                deliver_events(&mut a, &addr, max_queued, &ids, events, looked_at);
            }
            Err(e) => {
                // Left queued: the next credit grant, settlement or event tries again.
                tracing::warn!(tenant = %addr.tenant, error = %e, "cannot read events from the store");
                for id in ids {
                    a.events.insert(id);
                }
                a.events.reading = false;
                return;
            }
        }
        match take_batch(&mut a, max_queued, true) {
            Some(next) => ids = next,
            None => return,
        }
    }
}

/// Delivers a round's events in order. Credit can shrink while a round reads: what finds no consumer goes
/// back to the queue, as do the ids the store did not get to (`looked_at`). Ids looked at and not among
/// `events` are no longer stored (expired meanwhile) and are dropped.
fn deliver_events(
    a: &mut Address,
    addr: &AddressRef,
    max_queued: usize,
    ids: &[EventId],
    events: Vec<(EventId, Bytes)>,
    looked_at: usize,
) {
    let mut back: Vec<EventId> = ids.get(looked_at..).unwrap_or_default().to_vec();
    let mut events = events.into_iter();
    while let Some((id, payload)) = events.next() {
        let Some(consumer) = a.pick(max_queued) else {
            back.push(id);
            back.extend(events.map(|(id, _)| id));
            break;
        };
        a.events.in_flight.insert(id);
        let origin = Origin::Event {
            addr: addr.clone(),
            id,
        };
        deliver(&consumer, payload, false, origin);
    }
    for id in back {
        a.events.insert(id);
    }
}

fn deliver(consumer: &Consumer, payload: Bytes, settled: bool, origin: Origin) {
    consumer
        .conn
        .queued_bytes
        .fetch_add(payload.len() + DELIVERY_OVERHEAD, Ordering::AcqRel);
    consumer.conn.send(ToConn::Deliver {
        link: consumer.link,
        payload,
        settled,
        origin,
    });
}

/// Hands held command responses to the application's receiver while it has credit, oldest first.
fn dispatch_waiting(a: &mut Address, max_queued_bytes: usize) {
    while !a.waiting.is_empty() {
        let Some(consumer) = a.pick(max_queued_bytes) else {
            break;
        };
        let Some(w) = a.waiting.pop_front() else {
            break;
        };
        deliver(&consumer, w.payload, w.settled, w.origin);
    }
}

/// The `released` outcome.
pub fn release() -> DeliveryState {
    DeliveryState::Released(fe2o3_amqp_types::messaging::Released {})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::SegmentLog;

    fn hub(dir: &std::path::Path) -> Hub<SegmentLog> {
        let store = SegmentLog::open(dir).expect("open store");
        let metrics = Metrics::new(&ferry_core::admin::Admin::new());
        Hub::new(Arc::new(store), metrics, 100)
    }

    fn conn() -> (ConnHandle, mpsc::UnboundedReceiver<ToConn>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (ConnHandle::new(tx), rx)
    }

    /// An application that attaches a fresh reply address per request and detaches it afterwards used to
    /// leave one table entry per reply id behind, walked every second under the global lock.
    #[test]
    fn reply_address_churn_leaves_nothing_behind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let hub = hub(dir.path());
        let tenant = TenantId::new("t1").expect("tenant");
        let (handle, _rx) = conn();
        for i in 0..1000 {
            let reply = format!("reply-{i}");
            let mut addr = hub.address_with(Kind::CommandResponse, &tenant, Some(&reply));
            let consumer = hub.attach_consumer(&mut addr, handle.clone(), next_id());
            hub.detach_consumer(&addr, &consumer, Vec::new());
        }
        assert_eq!(hub.response_addresses(), 0);
        // And a response to a reply address nobody holds any more is released, not held.
        let routed = hub.route_response(&tenant, "reply-1", Bytes::new(), true, Origin::None);
        assert_eq!(routed, Routed::NoConsumer);
    }

    /// Two receivers on one reply address: the address lives until the last one leaves, and a receiver
    /// attaching after the address was dropped gets a working one back.
    #[test]
    fn a_reply_address_lives_while_a_receiver_holds_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let hub = hub(dir.path());
        let tenant = TenantId::new("t1").expect("tenant");
        let (handle, mut rx) = conn();
        let mut a = hub.address_with(Kind::CommandResponse, &tenant, Some("r"));
        let mut b = hub.address_with(Kind::CommandResponse, &tenant, Some("r"));
        let ca = hub.attach_consumer(&mut a, handle.clone(), next_id());
        let cb = hub.attach_consumer(&mut b, handle.clone(), next_id());
        hub.detach_consumer(&a, &ca, Vec::new());
        assert_eq!(hub.response_addresses(), 1);
        hub.detach_consumer(&b, &cb, Vec::new());
        assert_eq!(hub.response_addresses(), 0);

        // `stale` was looked up before the address went; attaching rebinds it to the table's.
        let mut stale = b.clone();
        let c = hub.attach_consumer(&mut stale, handle.clone(), next_id());
        hub.consumer_credit(&stale, &c, 1);
        let routed = hub.route_response(&tenant, "r", Bytes::from_static(b"x"), true, Origin::None);
        assert_eq!(routed, Routed::Forwarded);
        assert!(matches!(rx.try_recv(), Ok(ToConn::Deliver { .. })));
    }
}
