//! Device presence in cluster mode: one key per device in the key-value bucket `ferry-presence`
//! (`TENANT.DEVICE`, tokens as in [`crate::routes`]), its value a
//! [`PresenceRecord`](ferry_core::console::PresenceRecord) as JSON.
//!
//! The adapters write what they know (connects and disconnects), the routers what passes them (`ttd`,
//! Hono's connection events, last seen), and the registry reads it for the presence API; nothing is held
//! by one process, so a router or registry restart forgets nothing. Writes never wait: an update goes to
//! a bounded queue that one task per process applies (read, apply, write back only if nobody wrote in
//! between, else again), and is dropped and counted when the queue is full.

use async_nats::jetstream::{self, kv, stream::StorageType};
use bytes::Bytes;
use ferry_core::console::{
    unix_now, BoxFuture, Presence, PresenceError, PresenceRecord, PresenceStore, PresenceUpdate,
};
use ferry_core::ids::{DeviceId, TenantId};
use futures_util::StreamExt;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;

use crate::routes::{key_id, key_token};
use crate::Error;

/// The bucket's name.
pub const BUCKET: &str = "ferry-presence";

/// Updates waiting to be written, per process.
const QUEUE: usize = 4096;

/// Times an update is tried when other writers keep changing the same device.
const CONFLICT_RETRIES: usize = 5;

/// Presence kept in NATS.
#[derive(Clone)]
pub struct NatsPresence {
    kv: kv::Store,
    queue: mpsc::Sender<PresenceUpdate>,
    dropped: Counter,
}

impl std::fmt::Debug for NatsPresence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsPresence")
            .field("dropped", &self.dropped())
            .finish_non_exhaustive()
    }
}

/// The key of a device's presence.
pub fn key(tenant: &str, device: &str) -> String {
    format!("{}.{}", key_token(tenant), key_token(device))
}

impl NatsPresence {
    /// Opens (or creates, with `replicas` replicas) the bucket and starts the writer task, which ends
    /// when every clone of the store is dropped.
    pub async fn open(js: &jetstream::Context, replicas: usize) -> Result<Self, Error> {
        let kv = crate::open_bucket(
            js,
            kv::Config {
                bucket: BUCKET.to_owned(),
                description: "Ferry: which devices are connected, since when, through what"
                    .to_owned(),
                history: 1,
                max_value_size: 4096,
                storage: StorageType::File,
                num_replicas: replicas,
                ..kv::Config::default()
            },
        )
        .await?;
        let (queue, updates) = mpsc::channel(QUEUE);
        tokio::spawn(write(kv.clone(), updates));
        Ok(Self {
            kv,
            queue,
            dropped: Counter::default(),
        })
    }

    /// Updates dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.get()
    }

    /// The same count as a metric, for the process's admin server (it stays shared with the store).
    pub fn dropped_counter(&self) -> Counter {
        self.dropped.clone()
    }

    async fn record_of(&self, key: &str) -> Result<Option<PresenceRecord>, PresenceError> {
        let value = self
            .kv
            .get(key)
            .await
            .map_err(|e| PresenceError(e.to_string()))?;
        Ok(value.and_then(|v| serde_json::from_slice(&v).ok()))
    }
}

impl PresenceStore for NatsPresence {
    fn record(&self, update: PresenceUpdate) {
        if self.queue.try_send(update).is_err() {
            self.dropped.inc();
        }
    }

    fn get<'a>(
        &'a self,
        tenant: &'a TenantId,
        device: &'a DeviceId,
    ) -> BoxFuture<'a, Result<Option<Presence>, PresenceError>> {
        Box::pin(async move {
            let record = self
                .record_of(&key(tenant.as_str(), device.as_str()))
                .await?;
            Ok(record.map(|r| r.view(unix_now())))
        })
    }

    /// Walks the tenant's keys: fine for a console, not for a hot path.
    fn connected<'a>(
        &'a self,
        tenant: &'a TenantId,
    ) -> BoxFuture<'a, Result<Vec<DeviceId>, PresenceError>> {
        Box::pin(async move {
            let prefix = format!("{}.", key_token(tenant.as_str()));
            let mut keys = self
                .kv
                .keys()
                .await
                .map_err(|e| PresenceError(e.to_string()))?;
            let now = unix_now();
            let mut list = Vec::new();
            while let Some(k) = keys.next().await {
                let k = k.map_err(|e| PresenceError(e.to_string()))?;
                let Some(token) = k.strip_prefix(&prefix) else {
                    continue;
                };
                let Some(device) = key_id(token).and_then(|d| DeviceId::new(&d).ok()) else {
                    continue;
                };
                if self
                    .record_of(&k)
                    .await?
                    .is_some_and(|r| r.connected_at(now))
                {
                    list.push(device);
                }
            }
            Ok(list)
        })
    }
}

/// Applies queued updates, one at a time, each as a compare-and-set on the device's key.
async fn write(kv: kv::Store, mut updates: mpsc::Receiver<PresenceUpdate>) {
    while let Some(u) = updates.recv().await {
        let key = key(u.tenant.as_str(), u.device.as_str());
        for _ in 0..CONFLICT_RETRIES {
            let entry = match kv.entry(key.as_str()).await {
                Ok(e) => e,
                Err(e) => {
                    tracing::debug!(error = %e, "presence: cannot read");
                    break;
                }
            };
            let (mut record, revision) = match entry {
                Some(e) if e.operation == kv::Operation::Put => (
                    serde_json::from_slice(&e.value).unwrap_or_else(|_| PresenceRecord::new(u.at)),
                    Some(e.revision),
                ),
                Some(e) => (PresenceRecord::new(u.at), Some(e.revision)),
                None => (PresenceRecord::new(u.at), None),
            };
            let before = record.clone();
            record.apply(u.change.clone(), u.at);
            if revision.is_some() && record == before {
                break;
            }
            let Ok(value) = serde_json::to_vec(&record) else {
                break;
            };
            let written = match revision {
                Some(r) => kv.update(key.as_str(), Bytes::from(value), r).await.is_ok(),
                None => kv.create(key.as_str(), Bytes::from(value)).await.is_ok(),
            };
            if written {
                break;
            }
            // Another process wrote the device meanwhile (or NATS failed): read it again.
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_hold_tenant_and_device_as_tokens() {
        assert_eq!(key("t1", "d1"), "t1.d1");
        let k = key("t.1", "urn:dev*1");
        assert_eq!(k.split('.').count(), 2, "{k}");
        let (t, d) = k.split_once('.').expect("two tokens");
        assert_eq!(key_id(t).as_deref(), Some("t.1"));
        assert_eq!(key_id(d).as_deref(), Some("urn:dev*1"));
    }
}
