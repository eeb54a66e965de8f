//! The change stream: every write to tenants, devices, credentials and application users is announced
//! here, and served to adapters and routers as server-sent events so that their caches are purged at once
//! rather than when an entry expires (Hono's stale-cache complaint, HONO-CONTRACT §7 #9).
//!
//! In-process broadcast: a subscriber that falls behind the channel's capacity is told to `reset` (purge
//! everything) instead of silently missing changes.

use ferry_core::ids::{DeviceId, TenantId};
use tokio::sync::broadcast;

/// The event type is the one the clients read (`ferry_registry_model::Change`), under the names the
/// handlers use.
pub use ferry_registry_model::{Change, ChangeKind as Kind, ChangeOp as Op};

/// The sending side, shared by the API handlers.
#[derive(Debug, Clone)]
pub struct Changes {
    tx: broadcast::Sender<Change>,
    seq: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Default for Changes {
    fn default() -> Self {
        Self::new(4096)
    }
}

impl Changes {
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity);
        Self {
            tx,
            seq: std::sync::Arc::default(),
        }
    }

    fn publish(
        &self,
        kind: Kind,
        op: Op,
        tenant: Option<&str>,
        device: Option<&str>,
        name: Option<&str>,
    ) {
        let seq = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        // No subscribers is normal (nobody caches yet), so a send error is not an error.
        // The handlers pass ids they validated; one that would not parse is sent as absent, which makes
        // clients purge more (everything of the kind), never less.
        let _ = self.tx.send(Change {
            seq,
            kind,
            op: Some(op),
            tenant: tenant.and_then(|t| TenantId::new(t).ok()),
            device: device.and_then(|d| DeviceId::new(d).ok()),
            name: name.map(str::to_owned),
        });
    }

    pub fn tenant(&self, op: Op, tenant: &str) {
        self.publish(Kind::Tenant, op, Some(tenant), None, None);
    }

    pub fn device(&self, op: Op, tenant: &str, device: &str) {
        self.publish(Kind::Device, op, Some(tenant), Some(device), None);
    }

    pub fn credentials(&self, op: Op, tenant: &str, device: &str) {
        self.publish(Kind::Credentials, op, Some(tenant), Some(device), None);
    }

    pub fn application(&self, op: Op, name: &str) {
        self.publish(Kind::Application, op, None, None, Some(name));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.tx.subscribe()
    }

    /// The sequence number of the last change announced.
    pub fn last_seq(&self) -> u64 {
        self.seq.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn subscribers_see_changes_in_order() {
        let changes = Changes::new(8);
        let mut rx = changes.subscribe();
        changes.tenant(Op::Created, "t1");
        changes.device(Op::Deleted, "t1", "d1");
        let a = rx.recv().await.expect("first");
        let b = rx.recv().await.expect("second");
        assert_eq!((a.seq, a.kind, a.op), (1, Kind::Tenant, Some(Op::Created)));
        assert_eq!(
            (b.seq, b.kind, b.device.as_ref().map(DeviceId::as_str)),
            (2, Kind::Device, Some("d1"))
        );
    }

    #[tokio::test]
    async fn slow_subscriber_learns_it_lagged() {
        let changes = Changes::new(2);
        let mut rx = changes.subscribe();
        for i in 0..5 {
            changes.application(Op::Updated, &format!("a{i}"));
        }
        assert!(matches!(
            rx.recv().await,
            Err(broadcast::error::RecvError::Lagged(_))
        ));
    }
}
