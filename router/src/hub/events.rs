//! Event queues: each tenant's undelivered event ids in append order (payloads stay in the store), their
//! dispatch to consumers a bounded batch at a time, settlement back to the store, expiry, and waking
//! event producers when the store has room again.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use ferry_core::ids::TenantId;

use super::link::{deliver, Origin, ToConn};
use super::{lock, Address, AddressRef, Hub, Kind};
use crate::events::{EventId, EventStore, NewEvent, ReadBatch};

/// A tenant's events as the hub tracks them: ids, 8 bytes an event. Payloads are read from the store
/// when they are delivered, a bounded batch per dispatch round ([`READ_BATCH_EVENTS`],
/// [`READ_BATCH_BYTES`]), so a backlog costs disk, not memory.
#[derive(Debug, Default)]
pub(super) struct EventQueue {
    /// Stored and not yet delivered, in append (id) order.
    pub(super) ready: VecDeque<EventId>,
    /// Delivered and not yet settled.
    pub(super) in_flight: HashSet<EventId>,
    /// A dispatch round is reading payloads: it takes what becomes deliverable meanwhile, so rounds of
    /// one address never overlap (which keeps deliveries in order).
    pub(super) reading: bool,
}

impl EventQueue {
    /// Puts `id` at its place in append order (at the back, for a new event).
    pub(super) fn insert(&mut self, id: EventId) {
        if self.ready.back().is_none_or(|last| *last < id) {
            self.ready.push_back(id);
            return;
        }
        let pos = self.ready.partition_point(|q| *q < id);
        if self.ready.get(pos) != Some(&id) {
            self.ready.insert(pos, id);
        }
    }

    pub(super) fn remove(&mut self, id: EventId) {
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

impl<S: EventStore> Hub<S> {
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

    /// Counts an event of `addr` as on its way into the store until the guard is dropped (after
    /// [`Hub::append_event`]): taken when its transfer arrives, before the append runs.
    pub fn appending(&self, addr: &AddressRef) -> Appending {
        lock(&addr.inner).appending += 1;
        Appending {
            inner: addr.inner.clone(),
        }
    }

    /// Stores an event durably; resolves when it is safe to accept it, and queues its id for consumers.
    pub async fn append_event(
        &self,
        addr: &AddressRef,
        event: NewEvent,
    ) -> Result<(), crate::events::StoreError> {
        let payload = event.payload.clone();
        let id = self.store.append(&addr.tenant, event).await?;
        lock(&addr.inner).events.insert(id);
        addr.counters
            .event_store_depth(self.store.depth(&addr.tenant));
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
        if let Some(disk) = &self.disk {
            disk.check();
            self.metrics.event_store_free_disk(disk.free());
        }
        self.metrics.event_store_bytes(self.store.total().bytes);
        // A producer refused while the store was full can miss the wake of the event that made room (it
        // was refused on a stale look); this once-a-second call catches it.
        self.wake_event_producers(None);
    }

    /// Event producers refused credit get another look once events left the store: those of `addr`, and
    /// every tenant's when the whole store was full and is no longer.
    pub(super) fn wake_event_producers(&self, addr: Option<&AddressRef>) {
        if self.store.total().bytes >= self.event_limits.max_bytes
            || self
                .disk
                .as_ref()
                .is_some_and(crate::events::DiskGuard::low)
        {
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

/// An event between its transfer and its place in the store ([`Hub::appending`]).
#[derive(Debug)]
pub struct Appending {
    inner: Arc<Mutex<Address>>,
}

impl Drop for Appending {
    fn drop(&mut self) {
        let mut a = lock(&self.inner);
        a.appending = a.appending.saturating_sub(1);
    }
}
