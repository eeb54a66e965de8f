//! The change stream: every write to tenants, devices, credentials and application users is announced
//! here, and served to adapters and routers as server-sent events so that their caches are purged at once
//! rather than when an entry expires (Hono's stale-cache complaint, HONO-CONTRACT §7 #9).
//!
//! The store announces each write ([`Notice`]). On SQLite (one process) it hands it to this process's
//! subscribers after the commit. On PostgreSQL (any number of replicas) it sends it with `NOTIFY` inside
//! the write's own transaction, so a change is announced exactly when it is committed, whichever replica
//! made it; every replica `LISTEN`s ([`relay_from_postgres`]) and hands what it hears to its subscribers.
//!
//! In-process broadcast: a subscriber that falls behind the channel's capacity, or that a replica could
//! not keep informed (its `LISTEN` connection was lost), is told to `reset` (purge everything) instead of
//! silently missing changes.

use ferry_core::ids::{DeviceId, TenantId};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

/// The wire event (`ferry_registry_model::Change`, what the clients read), under the names the handlers use.
pub use ferry_registry_model::{Change, ChangeKind as Kind, ChangeOp as Op};

/// A change as the store announces it (and, on PostgreSQL, as `NOTIFY` carries it between replicas).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Notice {
    pub kind: Kind,
    pub op: Op,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl Notice {
    pub fn tenant(op: Op, tenant: &str) -> Self {
        Self::new(Kind::Tenant, op, Some(tenant), None, None)
    }

    pub fn device(op: Op, tenant: &str, device: &str) -> Self {
        Self::new(Kind::Device, op, Some(tenant), Some(device), None)
    }

    pub fn credentials(op: Op, tenant: &str, device: &str) -> Self {
        Self::new(Kind::Credentials, op, Some(tenant), Some(device), None)
    }

    pub fn application(op: Op, name: &str) -> Self {
        Self::new(Kind::Application, op, None, None, Some(name))
    }

    fn new(
        kind: Kind,
        op: Op,
        tenant: Option<&str>,
        device: Option<&str>,
        name: Option<&str>,
    ) -> Self {
        Self {
            kind,
            op,
            tenant: tenant.map(str::to_owned),
            device: device.map(str::to_owned),
            name: name.map(str::to_owned),
        }
    }
}

/// What subscribers receive: a change, or "you may have missed changes: purge everything" (the relay
/// from PostgreSQL lost its connection for a while).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Announcement {
    Change(Change),
    Reset,
}

/// The sending side: the store announces its writes here; the SSE handler subscribes.
#[derive(Debug, Clone)]
pub struct Changes {
    tx: broadcast::Sender<Announcement>,
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

    /// Hands a change to every subscriber of this process.
    pub fn publish(&self, notice: Notice) {
        let seq = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        // No subscribers is normal (nobody caches yet), so a send error is not an error.
        // The handlers pass ids they validated; one that would not parse is sent as absent, which makes
        // clients purge more (everything of the kind), never less.
        let _ = self.tx.send(Announcement::Change(Change {
            seq,
            kind: notice.kind,
            op: Some(notice.op),
            tenant: notice.tenant.and_then(|t| TenantId::new(&t).ok()),
            device: notice.device.and_then(|d| DeviceId::new(&d).ok()),
            name: notice.name,
        }));
    }

    /// Tells every subscriber to purge everything.
    pub fn reset(&self) {
        let _ = self.tx.send(Announcement::Reset);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Announcement> {
        self.tx.subscribe()
    }

    /// The sequence number of the last change announced.
    pub fn last_seq(&self) -> u64 {
        self.seq.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The PostgreSQL `NOTIFY` channel the store announces on.
pub const PG_CHANNEL: &str = "ferry_changes";

/// Subscribes to `url`'s change notices (`LISTEN`). Returns once listening, so that a replica does not
/// serve the change stream before it hears the other replicas; the caller runs [`relay`] with it.
pub async fn listen_postgres(url: &str) -> Result<sqlx::postgres::PgListener, sqlx::Error> {
    let mut listener = sqlx::postgres::PgListener::connect(url).await?;
    listener.listen(PG_CHANNEL).await?;
    Ok(listener)
}

/// Hands every notice heard on `listener` to this process's subscribers until `shutdown`. A lost
/// connection is re-established (by sqlx, with its `LISTEN`) and the subscribers are told to `reset`,
/// since notices sent meanwhile are lost; a notice that is not one of ours is logged and skipped.
pub async fn relay(
    mut listener: sqlx::postgres::PgListener,
    changes: Changes,
    shutdown: ferry_core::shutdown::Shutdown,
) {
    let stop = shutdown.wait();
    tokio::pin!(stop);
    loop {
        let next = tokio::select! {
            () = &mut stop => return,
            next = listener.try_recv() => next,
        };
        match next {
            Ok(Some(n)) => match serde_json::from_str::<Notice>(n.payload()) {
                Ok(notice) => changes.publish(notice),
                Err(e) => {
                    tracing::warn!(error = %e, "ignoring a change notice that is not Ferry's")
                }
            },
            // The connection was lost and is re-established on the next call.
            Ok(None) => {
                tracing::warn!("lost the PostgreSQL change listener; subscribers purge everything");
                changes.reset();
            }
            Err(e) => {
                tracing::warn!(error = %e, "PostgreSQL change listener failed; retrying in 1 s");
                changes.reset();
                tokio::select! {
                    () = &mut stop => return,
                    () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn subscribers_see_changes_in_order() {
        let changes = Changes::new(8);
        let mut rx = changes.subscribe();
        changes.publish(Notice::tenant(Op::Created, "t1"));
        changes.publish(Notice::device(Op::Deleted, "t1", "d1"));
        let Ok(Announcement::Change(a)) = rx.recv().await else {
            panic!("first")
        };
        let Ok(Announcement::Change(b)) = rx.recv().await else {
            panic!("second")
        };
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
            changes.publish(Notice::application(Op::Updated, &format!("a{i}")));
        }
        assert!(matches!(
            rx.recv().await,
            Err(broadcast::error::RecvError::Lagged(_))
        ));
    }
}
