//! [`InMemoryStore`]: the event store contract without durability, for unit tests of the router.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Mutex, MutexGuard};

use ferry_core::ids::TenantId;

use super::{EventId, EventStore, NewEvent, StoreError, StoredEvent};

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
    expiry: BTreeSet<(u64, EventId, TenantId)>,
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
        inner
            .tenants
            .entry(tenant.clone())
            .or_default()
            .insert(id, stored);
        std::future::ready(Ok(id))
    }

    fn ack(&self, tenant: &TenantId, id: EventId) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        let Some(events) = inner.tenants.get_mut(tenant) else {
            return Ok(false);
        };
        let Some(ev) = events.remove(&id) else {
            return Ok(false);
        };
        if events.is_empty() {
            inner.tenants.remove(tenant);
        }
        if let Some(at) = ev.expires_at_ms {
            inner.expiry.remove(&(at, id, tenant.clone()));
        }
        Ok(true)
    }

    fn pending(
        &self,
        tenant: &TenantId,
        after: Option<EventId>,
        max: usize,
    ) -> impl Future<Output = Result<Vec<StoredEvent>, StoreError>> + Send + 'static {
        let inner = self.lock();
        let from = after.map_or(0, |a| a.0.saturating_add(1));
        let out = inner
            .tenants
            .get(tenant)
            .map(|events| {
                events
                    .range(EventId(from)..)
                    .take(max)
                    .map(|(_, e)| e.clone())
                    .collect()
            })
            .unwrap_or_default();
        std::future::ready(Ok(out))
    }

    fn depth(&self, tenant: &TenantId) -> u64 {
        self.lock()
            .tenants
            .get(tenant)
            .map_or(0, |e| e.len() as u64)
    }

    fn expire(&self, now_ms: u64) -> Vec<(TenantId, EventId)> {
        let mut inner = self.lock();
        let mut gone = Vec::new();
        while let Some((at, id, tenant)) = inner.expiry.first().cloned() {
            if at > now_ms {
                break;
            }
            inner.expiry.pop_first();
            if let Some(events) = inner.tenants.get_mut(&tenant) {
                events.remove(&id);
                if events.is_empty() {
                    inner.tenants.remove(&tenant);
                }
            }
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
