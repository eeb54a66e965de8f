//! The durable event store behind `event/TENANT`: events are accepted only once they are on disk, kept until
//! a consumer accepts them or their TTL passes, and handed back in append order after a restart.
//!
//! # Split of work with the router
//! The router keeps, per tenant, the queue of undelivered and unsettled events **by id only** and decides
//! about redelivery (a consumer that detaches without settling gives its events back to that queue). The
//! store is the durable log behind the queue and the only place payloads live: [`EventStore::append`]
//! before the router answers `accepted` to the producer, [`EventStore::read`] when the router hands events
//! to a consumer (a batch per dispatch round), [`EventStore::ack`] when a consumer accepts,
//! [`EventStore::expire`] on a timer, and [`EventStore::pending`] at start to rebuild the queues (ids, no
//! payloads). [`EventStore::usage`] and [`EventStore::total`] let the router refuse producer credit once a
//! tenant's backlog or the whole store reaches its limit ([`EventLimits`]), which is what bounds the store.
//!
//! The store is a trait so that a deployment can put events into an external broker instead. The trait
//! returns `impl Future` (no boxing on the hot path); the router is generic over it rather than using `dyn`.
//!
//! # Implementations
//! - [`SegmentLog`]: the embedded default, a segment log with group commit (below).
//! - [`InMemoryStore`]: **not durable**; for unit tests of the router only.
//!
//! # Why a segment log and not an embedded engine
//! Every append must be durable before `accepted`, so the cost that matters is fsyncs per event. One
//! sequential log shared by all tenants, written by one thread that takes every queued append, writes them
//! with one `write_all` and makes them durable with one `fdatasync`, lets concurrent appends share a sync:
//! under load the number of syncs per second stays near the disk's sync rate while events per sync grows.
//! Embedded engines (SQLite, sled, redb, RocksDB) would add a B-tree or LSM write path, per-transaction
//! commit costs and a large dependency for what is a FIFO with deletions. Measured with the ignored test
//! `append_throughput` (64-byte payloads, release build, 2-core VM whose disk does ~5,500 synced writes/s,
//! median of 3): 1 appender 5,550 appends/s (one sync each: the disk's limit, for any engine), 16 appenders
//! 38,000/s (~9 per sync), 256 appenders 350,000/s (~130 per sync); reopening 1.2 M live events (123 MB)
//! takes 2 s. `bench/REPORT.md` has the end-to-end figures.
//!
//! # On-disk format (see `events/record.rs`)
//! A directory of segment files `NNNNNNNNNNNNNNNNNNNN.seg` (20-digit sequence number), each starting with a
//! 32-byte header (magic, version, sequence, id base, CRC) followed by records
//! `[len u32][crc32c u32][kind u8][body]`, little-endian, CRC-32C over kind and body:
//! - event: `[tenant len u8][tenant][event id u64][expires_at_ms u64, MAX = never][device len u16][device][payload]`
//! - ack: `[tenant len u8][tenant][count u32][event id u64 × count]` (the acks of one write batch, grouped)
//!
//! # Rules
//! - **Durability**: `append` resolves after `fdatasync` of the batch that holds the record. A new segment is
//!   synced and its directory entry synced before any record goes into it, and a segment is synced before the
//!   next one is created, so only the last segment can end in a torn write.
//! - **Acks are lazy**: an ack removes the event from the index at once and queues a tombstone, which is
//!   written with the next batch (or after at most 100 ms without one) but synced only with the next
//!   append or [`EventStore::sync`]. A process crash loses the tombstones still queued (at most the
//!   last 100 ms of acks; written ones are in the page cache); an OS crash or power loss can lose recent
//!   written ones too. Those events are delivered once more, which at-least-once allows.
//! - **Expiry** writes nothing: `expires_at_ms` (Unix epoch ms) is in the record, and recovery drops events
//!   whose time has passed by the system clock. A clock set back across a restart can revive an expired
//!   event (delivered late rather than lost).
//! - **Recovery**: segments are read in order, every record's CRC checked. In the last segment the first torn
//!   or corrupt record is the crash point: the file is truncated there (nothing after it was ever reported
//!   durable, except if the disk flipped a bit in a synced record, which cannot be told apart). Corruption in
//!   any earlier segment is not a crash artefact, so opening fails with [`StoreError::Corrupt`] rather than
//!   silently dropping events or reviving acknowledged ones. Live set = appended − acked − expired; event ids
//!   continue above every id seen and above the last segment's id base, so they are never reused.
//! - **Compaction**: segments are deleted only from the oldest end, and only once no live event is in them;
//!   deleting oldest-first means a tombstone is never deleted before the event it kills. When the oldest
//!   segment pins garbage (garbage > live bytes + 2 segments), its live events are copied to the end of the
//!   log (same id, so append order is unchanged; the later copy wins at recovery), a few MiB per step
//!   between write batches, and the segment is then deleted. Disk use is so bounded by about twice the live
//!   bytes plus three segments, with write amplification of at most one copy per unit of garbage reclaimed.
//! - **Memory**: payloads are not kept in memory, neither here nor in the router. Per live event the index
//!   holds roughly 100–200 bytes (position, expiry, per-segment membership) and the router's queue 8 bytes
//!   (the id); [`EventStore::read`] reads payloads back from disk when they are delivered. The router's
//!   limits ([`EventLimits`]: bytes in the whole store, events and bytes per tenant; it refuses producer
//!   credit beyond them) bound the total.
//! - **Failure**: after a failed write or sync the page cache no longer says what is on disk (the
//!   "fsyncgate" lesson), so the store refuses every later operation with [`StoreError::Failed`]; a restart
//!   recovers from what is on disk.
//! - One process per directory: nothing locks the directory (std offers no file lock at this MSRV); the
//!   deployment gives every router replica its own volume.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use ferry_core::ids::TenantId;

mod crc32c;
mod disk;
mod memory;
mod record;
mod segment_log;

pub use disk::DiskGuard;
pub use memory::InMemoryStore;
pub use segment_log::{SegmentLog, SegmentLogConfig, SegmentLogStats};

/// The id the store gives an event: unique in the store, increasing in append order, never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(u64);

impl EventId {
    pub fn new(raw: u64) -> Self {
        Self(raw)
    }

    pub fn get(self) -> u64 {
        self.0
    }
}

impl std::fmt::Display for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// An event to append.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// The encoded AMQP message; opaque to the store.
    pub payload: Bytes,
    /// The device that sent it (kept so the router need not decode the payload to report it).
    pub device_id: Arc<str>,
    /// When the event expires, in Unix epoch milliseconds; `None` keeps it until it is acknowledged.
    pub expires_at_ms: Option<u64>,
}

/// A live event read back from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub id: EventId,
    pub device_id: Arc<str>,
    pub payload: Bytes,
    pub expires_at_ms: Option<u64>,
}

/// Payloads read for one dispatch round ([`EventStore::read`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadBatch {
    /// The live events among the ids looked at, in the order asked for.
    pub events: Vec<StoredEvent>,
    /// How many of the ids asked for were looked at (read, or skipped as no longer live); the rest were
    /// left for a later round because the byte budget was used up.
    pub looked_at: usize,
}

/// What a tenant, or the whole store, holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub events: u64,
    /// What the events take in the store (for [`SegmentLog`], their records on disk).
    pub bytes: u64,
}

/// How much the store may hold before the router gives event producers no more credit: the router's
/// configuration, with a tenant's own limits ([`TenantEventLimits`], its `resource-limits`
/// `max-stored-events` and `max-stored-event-bytes`) in place of the per-tenant defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventLimits {
    /// Bytes of live events over all tenants: the bound on the store's disk use (about twice this, see
    /// "Compaction") and on the noise one tenant can make for the others. No tenant's limits go past it.
    pub max_bytes: u64,
    pub max_events_per_tenant: u64,
    pub max_bytes_per_tenant: u64,
}

/// A tenant's own limits on its stored events, from its `resource-limits`.
pub use ferry_registry_model::StoredEventLimits as TenantEventLimits;

impl Default for EventLimits {
    fn default() -> Self {
        Self {
            max_bytes: 1 << 30,
            max_events_per_tenant: 100_000,
            max_bytes_per_tenant: 256 << 20,
        }
    }
}

impl EventLimits {
    /// Whether `tenant`'s usage, with the store's `total`, leaves room for more events: `None` when it
    /// does, else which limit is reached. `own`: the tenant's own limits.
    pub fn reached(&self, tenant: Usage, total: Usage, own: TenantEventLimits) -> Option<Limit> {
        if total.bytes >= self.max_bytes {
            Some(Limit::Store)
        } else if tenant.events >= own.max_events.unwrap_or(self.max_events_per_tenant)
            || tenant.bytes >= own.max_bytes.unwrap_or(self.max_bytes_per_tenant)
        {
            Some(Limit::Tenant)
        } else {
            None
        }
    }

    /// How many more events the tenant may store by its event count limit (its bytes are checked by
    /// [`EventLimits::reached`] per credit decision): a producer is given no more credit than this, so a
    /// small limit holds however large the producer's window.
    pub fn room(&self, tenant: Usage, own: TenantEventLimits) -> u64 {
        own.max_events
            .unwrap_or(self.max_events_per_tenant)
            .saturating_sub(tenant.events)
    }
}

/// Which [`EventLimits`] limit is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// The whole store is full: every tenant's producers wait.
    Store,
    /// This tenant's backlog is full: only its producers wait.
    Tenant,
}

/// Why the store could not do what was asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("event store I/O failed: {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        // Shared because one failed sync fails every append of its batch.
        #[source]
        source: Arc<std::io::Error>,
    },
    #[error("event store file {path} is corrupt at byte {offset}: {reason}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: &'static str,
    },
    #[error("{what} is {len} bytes, more than the {max} the event store accepts")]
    TooLarge {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("event store stopped after an earlier write or sync failure; restart to recover")]
    Failed,
    #[error("event store is closed")]
    Closed,
}

impl StoreError {
    fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source: Arc::new(source),
        }
    }
}

/// The durable log of events behind the router's per-tenant queues.
///
/// The futures own what they need (`'static`), so the router can keep them in a `FuturesUnordered` beside
/// its handle to the store instead of borrowing it.
pub trait EventStore: Send + Sync + 'static {
    /// Stores `event` for `tenant`; resolves once it is durable. The append is queued when this is called,
    /// not when the future is first polled, so appends called one after another keep their order.
    fn append(
        &self,
        tenant: &TenantId,
        event: NewEvent,
    ) -> impl Future<Output = Result<EventId, StoreError>> + Send + 'static;

    /// A consumer accepted the event: it is gone for good. `Ok(false)` when it was not live (already
    /// acknowledged, expired, or another tenant's). Durable lazily: see the module docs.
    fn ack(&self, tenant: &TenantId, id: EventId) -> Result<bool, StoreError>;

    /// The ids of up to `max` live events of `tenant` above `after`, in append order; no payloads. The
    /// router pages through this at start to rebuild its queue.
    fn pending(
        &self,
        tenant: &TenantId,
        after: Option<EventId>,
        max: usize,
    ) -> impl Future<Output = Result<Vec<EventId>, StoreError>> + Send + 'static;

    /// Reads the events `ids` of `tenant`, in the order given, until about `max_bytes` are read (at least
    /// one event always is). Ids no longer live (acknowledged, expired, another tenant's) are skipped. The
    /// events to read are fixed when this is called, so acks and compaction after the call do not change
    /// the answer.
    fn read(
        &self,
        tenant: &TenantId,
        ids: Vec<EventId>,
        max_bytes: usize,
    ) -> impl Future<Output = Result<ReadBatch, StoreError>> + Send + 'static;

    /// How many live events `tenant` has and how many bytes they take.
    fn usage(&self, tenant: &TenantId) -> Usage;

    /// The same over all tenants.
    fn total(&self) -> Usage;

    /// How many live events `tenant` has.
    fn depth(&self, tenant: &TenantId) -> u64 {
        self.usage(tenant).events
    }

    /// Removes every event whose `expires_at_ms <= now_ms` and says which.
    fn expire(&self, now_ms: u64) -> Vec<(TenantId, EventId)>;

    /// The tenants that have live events.
    fn tenants(&self) -> Vec<TenantId>;

    /// Resolves once every ack made before the call is durable (at shutdown, or when a caller needs it).
    fn sync(&self) -> impl Future<Output = Result<(), StoreError>> + Send + 'static;
}

#[cfg(test)]
mod tests;
