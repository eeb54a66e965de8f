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
//!
//! The channel into a connection ([`ConnHandle`]) is unbounded on purpose; what it holds is bounded by
//! accounting instead. Deliveries are counted in bytes per connection (`queued_bytes`): past
//! [`Hub::max_queued_bytes`] its consumers are choked and passed over, and each consumer also stops at its
//! credit and at [`MAX_UNSETTLED_PER_CONSUMER`]. An outcome answers a delivery that connection itself
//! received and has not settled yet (at most one each), and a wake-up goes to a producer that is starved
//! (at most one each, until it asks again). A bounded channel with `try_send` would have no good answer
//! when full: an outcome or a wake-up cannot be dropped (the producer's delivery would stay unsettled, or
//! its link without credit, for good), and releasing a delivery there would settle its origin while the
//! sender holds the address lock the settlement needs (events and held responses are sent under it).
//! Senders never block, so no hub lock waits on a slow connection.
//!
//! Layout: this file holds the address table and the consumers' side; `link` what a link registers and
//! how the hub reaches a connection; `telemetry` the producers' credit and telemetry routing; `commands`
//! command routing, subscriptions and held responses; `events` the event queues and their dispatch.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use fe2o3_amqp_types::messaging::DeliveryState;
use ferry_core::ids::TenantId;

use crate::events::{EventLimits, EventStore};
use crate::metrics::Metrics;

mod commands;
mod events;
mod link;
mod telemetry;
#[cfg(test)]
mod tests;

use commands::{dispatch_waiting, CommandRoutes, GatewayRoutes, LastGateways, WaitingResponse};
pub use commands::{CommandTarget, RESPONSE_CREDIT_WAIT};
use events::EventQueue;
pub use link::{
    next_id, release, ConnHandle, Consumer, LinkId, Origin, Producer, Remote, ToConn,
    DELIVERY_OVERHEAD, MAX_UNSETTLED_PER_CONSUMER,
};
pub use telemetry::NO_CONSUMER_CREDIT;

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

/// Of what an address's consumers grant, the share pre-settled telemetry leaves to unsettled telemetry
/// beside it ([`Address::pick_counting`]): a quarter.
const UNSETTLED_RESERVE_SHARE: i64 = 4;
/// The reserve's cap, in deliveries.
const UNSETTLED_RESERVE_MAX: i64 = 256;

#[derive(Debug, Default)]
struct Address {
    consumers: Vec<Arc<Consumer>>,
    /// Where the next search for a consumer starts, so that equally loaded consumers take turns.
    next: usize,
    /// Producers that ran out of credit while no consumer had any; woken when one does.
    starved: Vec<Arc<Producer>>,
    /// Of `telemetry/T`: attached producers that send unsettled (QoS 1). While there are any,
    /// pre-settled telemetry leaves the consumers a reserve of credit ([`Address::pick_counting`]).
    unsettled_producers: usize,
    /// Events (of `event/T`): ids only; payloads stay in the store until delivered.
    events: EventQueue,
    /// Command responses for an application whose receiver is attached but has no credit yet, oldest
    /// first; delivered when it grants some, released at their deadline or when the receiver leaves.
    waiting: VecDeque<WaitingResponse>,
    /// Signalled when a consumer grants credit: a task that takes messages from the cluster bus for this
    /// address waits on it instead of polling ([`Hub::credit_signal`]).
    credit_signal: Arc<tokio::sync::Notify>,
    /// Of `event/T`: the tenant's own limits on stored events ([`Hub::set_tenant_event_limits`]);
    /// `None` until they are known.
    event_limits: Option<crate::events::TenantEventLimits>,
    /// Of `event/T`: events received and not yet in the store ([`Hub::appending`]), counted against the
    /// tenant's room so that credit given meanwhile does not overshoot its limit.
    appending: u64,
}

impl Address {
    /// The consumer with credit and the fewest unsettled deliveries (ties take turns); its credit is taken.
    /// A choked consumer ([`Consumer::choked`]) is passed over.
    fn pick(&mut self, max_queued_bytes: usize) -> Option<Arc<Consumer>> {
        self.pick_counting(max_queued_bytes, false).0
    }

    /// [`Address::pick`], also answering the usable credit of the consumers not chosen, seen in the same
    /// walk. A pre-settled message (`presettled`) on an address that also has unsettled producers finds
    /// no consumer once the consumers' credit is down to a reserve ([`UNSETTLED_RESERVE_SHARE`] of what
    /// they grant, at most [`UNSETTLED_RESERVE_MAX`]): each producer may hold all the credit the
    /// consumers grant, and without the reserve a QoS 0 flood takes every grant, so that the QoS 1
    /// messages beside it find none and are released (their devices hear 503 and are disconnected).
    /// Pre-settled messages may be dropped; those may not.
    fn pick_counting(
        &mut self,
        max_queued_bytes: usize,
        presettled: bool,
    ) -> (Option<Arc<Consumer>>, i64) {
        let n = self.consumers.len();
        let mut best: Option<(usize, i64)> = None;
        let mut total = 0i64;
        let mut granted = 0i64;
        for k in 0..n {
            let i = (self.next + k) % n;
            let c = &self.consumers[i];
            let usable = c.usable_credit(max_queued_bytes);
            if usable <= 0 {
                continue;
            }
            total += usable;
            granted += c.window.load(Ordering::Relaxed);
            let load = c.unsettled.load(Ordering::Relaxed);
            if best.is_none_or(|(b, _)| load < self.consumers[b].unsettled.load(Ordering::Relaxed))
            {
                best = Some((i, usable));
            }
        }
        let Some((i, usable)) = best else {
            return (None, 0);
        };
        if presettled
            && self.unsettled_producers > 0
            && total <= (granted / UNSETTLED_RESERVE_SHARE).min(UNSETTLED_RESERVE_MAX)
        {
            return (None, total);
        }
        self.next = (i + 1) % n.max(1);
        let chosen = &self.consumers[i];
        let picked = chosen.take_credit().then(|| {
            chosen.unsettled.fetch_add(1, Ordering::Relaxed);
            chosen.queued.fetch_add(1, Ordering::AcqRel);
            chosen.clone()
        });
        (picked, total - usable)
    }
}

/// Default of [`Hub::max_queued_bytes`].
pub const DEFAULT_MAX_QUEUED_BYTES: usize = 8 * 1024 * 1024;

/// The outcome of routing one telemetry message.
#[derive(Debug, PartialEq, Eq)]
pub enum Routed {
    Forwarded,
    /// No consumer with credit: the producer should release (or drop) it.
    NoConsumer,
}

/// Every address by kind, tenant and (for command responses) reply id.
type AddressTable = HashMap<(Kind, TenantId, Option<Arc<str>>), Arc<Mutex<Address>>>;

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
    /// The event store's free-disk check (embedded mode).
    disk: Option<crate::events::DiskGuard>,
    /// Most bytes of deliveries a connection may hold unwritten before its consumers take no more.
    pub max_queued_bytes: usize,
    /// See [`Hub::with_tenant_limits_awaited`]; otherwise a tenant's limits are the defaults until set.
    await_tenant_limits: bool,
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

impl AddressRef {
    /// The reply id of a `command_response/T/REPLY` address.
    pub fn sub(&self) -> Option<&Arc<str>> {
        self.sub.as_ref()
    }
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
            disk: None,
            max_queued_bytes: DEFAULT_MAX_QUEUED_BYTES,
            await_tenant_limits: false,
        }
    }

    /// Sets the event store's limits (replacing `new`'s `max_events_per_tenant`).
    pub fn with_event_limits(mut self, limits: EventLimits) -> Self {
        self.event_limits = limits;
        self
    }

    /// Refuses event producers credit while `guard` finds too little free disk.
    pub fn with_disk_guard(mut self, guard: crate::events::DiskGuard) -> Self {
        self.metrics.event_store_free_disk(guard.free());
        self.disk = Some(guard);
        self
    }

    /// Sets [`Hub::max_queued_bytes`].
    pub fn with_max_queued_bytes(mut self, bytes: usize) -> Self {
        self.max_queued_bytes = bytes;
        self
    }

    /// Sets `tenant`'s own limits on stored events (from its `resource-limits`); event producers it
    /// refused credit get another look when they changed.
    pub fn set_tenant_event_limits(
        &self,
        tenant: &TenantId,
        limits: crate::events::TenantEventLimits,
    ) {
        let addr = self.address(Kind::Event, tenant);
        let old = lock(&addr.inner).event_limits.replace(limits);
        if old != Some(limits) {
            tracing::debug!(%tenant, ?limits, "the tenant's limits on stored events");
            self.wake_event_producers(Some(&addr));
        }
    }

    /// `tenant`'s own limits on stored events, `None` while they are not known.
    pub fn tenant_event_limits(
        &self,
        tenant: &TenantId,
    ) -> Option<crate::events::TenantEventLimits> {
        lock(&self.address(Kind::Event, tenant).inner).event_limits
    }

    /// Event producers get no credit until their tenant's own limits are known
    /// ([`Hub::set_tenant_event_limits`]), so that a tenant's small limit holds from its first event.
    pub fn with_tenant_limits_awaited(mut self) -> Self {
        self.await_tenant_limits = true;
        self
    }

    /// Consumers attached at `addr`.
    pub fn consumers(&self, addr: &AddressRef) -> usize {
        lock(&addr.inner).consumers.len()
    }

    /// What `addr`'s consumers will take now: the sum of their usable credit.
    pub fn available_credit(&self, addr: &AddressRef) -> i64 {
        lock(&addr.inner)
            .consumers
            .iter()
            .map(|c| c.usable_credit(self.max_queued_bytes))
            .sum()
    }

    /// Signalled whenever a consumer of `addr` grants credit.
    pub fn credit_signal(&self, addr: &AddressRef) -> Arc<tokio::sync::Notify> {
        lock(&addr.inner).credit_signal.clone()
    }

    /// Hands a message taken from the cluster bus to a consumer of `addr` with credit (an event from
    /// the tenant's JetStream consumer, unsettled); nothing is buffered.
    pub fn route_remote(
        &self,
        addr: &AddressRef,
        payload: bytes::Bytes,
        settled: bool,
        origin: Origin,
    ) -> Routed {
        self.route_direct(addr, payload, settled, origin)
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
            window: AtomicI64::new(0),
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
        consumer
            .window
            .fetch_max(i64::from(available), Ordering::Relaxed);
        if available == 0 {
            return;
        }
        lock(&addr.inner).credit_signal.notify_one();
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
            Origin::Remote(remote) => {
                // The task has gone (its address has no consumer left): the bus redelivers.
                let _ = remote.tx.send((remote.id, state));
            }
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
                    addr.counters.event_store_depth(self.store.depth(&tenant));
                    self.wake_event_producers(Some(&addr));
                } else {
                    self.dispatch_events(&addr);
                }
            }
        }
    }
}
