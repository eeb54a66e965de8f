//! [`InMemoryStore`]: the event store contract without durability, for unit tests of the router.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Mutex, MutexGuard};

use ferry_core::ids::TenantId;

use super::{EventId, EventStore, NewEvent, ReadBatch, StoreError, StoredEvent, Usage};

/// Keeps events in memory only: everything is lost when it is dropped. **Not durable**; use it in tests of
/// the router's queueing, never behind `accepted` in a deployment.
#[derive(Debug, Default)]
pub struct InMemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    tenants: HashMap<TenantId, BTreeMap<EventId, StoredEvent>>,
    bytes: HashMap<TenantId, u64>,
    total: Usage,
    expiry: BTreeSet<(u64, EventId, TenantId)>,
}

fn size(e: &StoredEvent) -> u64 {
    (e.payload.len() + e.device_id.len()) as u64
}

impl Inner {
    fn remove(&mut self, tenant: &TenantId, id: EventId) -> Option<StoredEvent> {
        let events = self.tenants.get_mut(tenant)?;
        let ev = events.remove(&id)?;
        if events.is_empty() {
            self.tenants.remove(tenant);
            self.bytes.remove(tenant);
        } else if let Some(b) = self.bytes.get_mut(tenant) {
            *b -= size(&ev);
        }
        self.total.events -= 1;
        self.total.bytes -= size(&ev);
        if let Some(at) = ev.expires_at_ms {
            self.expiry.remove(&(at, id, tenant.clone()));
        }
        Some(ev)
    }
}

impl InMemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain maps behind, still consistent enough for tests.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl EventStore for InMemoryStore {
    fn append(
        &self,
        tenant: &TenantId,
        event: NewEvent,
    ) -> impl Future<Output = Result<EventId, StoreError>> + Send + 'static {
        let mut inner = self.lock();
        inner.next_id += 1;
        let id = EventId(inner.next_id);
        if let Some(at) = event.expires_at_ms {
            inner.expiry.insert((at, id, tenant.clone()));
        }
        let stored = StoredEvent {
            id,
            device_id: event.device_id,
            payload: event.payload,
            expires_at_ms: event.expires_at_ms,
        };
        *inner.bytes.entry(tenant.clone()).or_default() += size(&stored);
        inner.total.events += 1;
        inner.total.bytes += size(&stored);
        inner
            .tenants
            .entry(tenant.clone())
            .or_default()
            .insert(id, stored);
        std::future::ready(Ok(id))
    }

    fn ack(&self, tenant: &TenantId, id: EventId) -> Result<bool, StoreError> {
        Ok(self.lock().remove(tenant, id).is_some())
    }

    fn pending(
        &self,
        tenant: &TenantId,
        after: Option<EventId>,
        max: usize,
    ) -> impl Future<Output = Result<Vec<EventId>, StoreError>> + Send + 'static {
        let inner = self.lock();
        let from = after.map_or(0, |a| a.0.saturating_add(1));
        let out = inner
            .tenants
            .get(tenant)
            .map(|events| {
                events
                    .range(EventId(from)..)
                    .take(max)
                    .map(|(id, _)| *id)
                    .collect()
            })
            .unwrap_or_default();
        std::future::ready(Ok(out))
    }

    fn read(
        &self,
        tenant: &TenantId,
        ids: Vec<EventId>,
        max_bytes: usize,
    ) -> impl Future<Output = Result<ReadBatch, StoreError>> + Send + 'static {
        let inner = self.lock();
        let mut batch = ReadBatch::default();
        let mut bytes = 0usize;
        for id in &ids {
            if bytes >= max_bytes && !batch.events.is_empty() {
                break;
            }
            batch.looked_at += 1;
            if let Some(e) = inner.tenants.get(tenant).and_then(|t| t.get(id)) {
                bytes += e.payload.len();
                batch.events.push(e.clone());
            }
        }
        std::future::ready(Ok(batch))
    }

    fn usage(&self, tenant: &TenantId) -> Usage {
        let inner = self.lock();
        Usage {
            events: inner.tenants.get(tenant).map_or(0, |e| e.len() as u64),
            bytes: inner.bytes.get(tenant).copied().unwrap_or(0),
        }
    }

    fn total(&self) -> Usage {
        self.lock().total
    }

    fn expire(&self, now_ms: u64) -> Vec<(TenantId, EventId)> {
        let mut inner = self.lock();
        let mut gone = Vec::new();
        while let Some((at, id, tenant)) = inner.expiry.first().cloned() {
            if at > now_ms {
                break;
            }
            inner.expiry.pop_first();
            inner.remove(&tenant, id);
            gone.push((tenant, id));
        }
        gone
    }

    fn tenants(&self) -> Vec<TenantId> {
        self.lock().tenants.keys().cloned().collect()
    }

    fn sync(&self) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        std::future::ready(Ok(()))
    }
}
