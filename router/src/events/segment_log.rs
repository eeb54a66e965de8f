//! [`SegmentLog`]: the embedded durable event store, an append-only segment log with group commit.
//!
//! Threads and locks: callers push operations onto `queue` and wake the writer for appends and syncs
//! (acks wait for the next batch, at most [`ACK_DELAY`]); the writer thread (a
//! `std::thread`, because it blocks in `fdatasync`) takes everything queued, writes it with one `write_all`,
//! syncs once, updates `index` and completes each append's oneshot. `index` is the in-memory view of the
//! live events (positions only, no payloads); callers read it for `depth`, `pending`, `ack` and `expire`.
//! The two locks are never held together.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use ferry_core::ids::TenantId;
use tokio::sync::oneshot;

use super::record::{
    self, Record, SegmentHeader, FRAME_HEADER, MAX_ACKS_PER_RECORD, SEGMENT_HEADER,
};
use super::{EventId, EventStore, NewEvent, ReadBatch, StoreError, StoredEvent, Usage};

mod recovery;
mod writer;

use recovery::recover;
use writer::Writer;

const SEGMENT_SUFFIX: &str = ".seg";

/// Tuning of a [`SegmentLog`].
#[derive(Debug, Clone)]
pub struct SegmentLogConfig {
    /// A segment is closed and a new one started once a write would take it past this size. Smaller
    /// segments free disk sooner; larger ones mean fewer files and fewer file creations (each costs syncs).
    pub segment_bytes: u64,
    /// How much live data one compaction step copies out of the oldest segment before the writer serves
    /// queued appends again; bounds the latency compaction adds to an append.
    pub relocate_step_bytes: u64,
}

impl Default for SegmentLogConfig {
    fn default() -> Self {
        Self {
            segment_bytes: 64 << 20,
            relocate_step_bytes: 4 << 20,
        }
    }
}

/// Counters for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentLogStats {
    /// Appends made durable since open.
    pub appends: u64,
    /// Write batches since open (each one `write_all`).
    pub batches: u64,
    /// `fdatasync` calls since open on segment data (appends share them; directory syncs not counted).
    pub syncs: u64,
    /// Segment files on disk.
    pub segments: usize,
    /// Bytes in all segment files.
    pub disk_bytes: u64,
    /// Bytes of the records of live events.
    pub live_bytes: u64,
    /// Live events over all tenants.
    pub live_events: u64,
    /// Live events copied forward by compaction since open.
    pub relocated: u64,
    /// Events whose payloads were read back ([`EventStore::read`]) since open.
    pub read_events: u64,
    /// Bytes of the records read back since open.
    pub read_bytes: u64,
}

/// The durable event store: see the `events` module docs for format, recovery and compaction.
///
/// Needs a tokio runtime only for [`EventStore::read`], which reads payloads on the blocking pool.
/// Dropping it lets the writer finish what is queued and sync the last acks (a short blocking join).
pub struct SegmentLog {
    shared: Arc<Shared>,
    writer: Option<thread::JoinHandle<()>>,
}

impl std::fmt::Debug for SegmentLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentLog")
            .field("dir", &self.shared.dir)
            .finish_non_exhaustive()
    }
}

struct Shared {
    dir: PathBuf,
    config: SegmentLogConfig,
    queue: Mutex<Queue>,
    wake: Condvar,
    index: Mutex<Index>,
    failed: AtomicBool,
    appends: AtomicU64,
    batches: AtomicU64,
    syncs: AtomicU64,
    relocated: AtomicU64,
    read_events: AtomicU64,
    read_bytes: AtomicU64,
}

#[derive(Default)]
struct Queue {
    ops: Vec<Op>,
    /// An append or a sync waits in `ops`: the writer has been woken for it. Acks alone do not wake the
    /// writer (nobody waits for them); it takes them within [`ACK_DELAY`] or with the next batch.
    urgent: bool,
    /// The writer waits without a time limit (it found the queue empty): the next op of any kind wakes it.
    asleep: bool,
    closing: bool,
}

/// How long acks may wait in the queue when no append or sync comes to take them along: their
/// tombstones are written (not synced) this much later, so a consumer's accepts cost the writer one
/// wake-up per batch instead of one per quiet moment.
pub(crate) const ACK_DELAY: std::time::Duration = std::time::Duration::from_millis(100);

enum Op {
    Append {
        tenant: TenantId,
        event: NewEvent,
        done: oneshot::Sender<Result<EventId, StoreError>>,
    },
    Ack {
        tenant: TenantId,
        id: EventId,
    },
    Sync {
        done: oneshot::Sender<Result<(), StoreError>>,
    },
}

/// Where a live event's record is.
#[derive(Debug, Clone, Copy)]
struct Entry {
    seg: u64,
    offset: u64,
    len: u32,
    expires_at_ms: Option<u64>,
}

struct Segment {
    file: Arc<File>,
    len: u64,
    /// The live events whose current copy is in this segment: empty means the segment may go.
    live: BTreeMap<EventId, TenantId>,
}

#[derive(Default)]
struct Index {
    tenants: HashMap<TenantId, BTreeMap<EventId, Entry>>,
    /// Bytes of each tenant's live records (the router's per-tenant byte limit reads it).
    tenant_bytes: HashMap<TenantId, u64>,
    live_events: u64,
    expiry: BTreeSet<(u64, EventId, TenantId)>,
    segments: BTreeMap<u64, Segment>,
    live_bytes: u64,
    disk_bytes: u64,
}

impl Index {
    fn insert(&mut self, tenant: TenantId, id: EventId, entry: Entry) {
        if let Some(at) = entry.expires_at_ms {
            self.expiry.insert((at, id, tenant.clone()));
        }
        if let Some(seg) = self.segments.get_mut(&entry.seg) {
            seg.live.insert(id, tenant.clone());
        }
        self.live_bytes += u64::from(entry.len);
        *self.tenant_bytes.entry(tenant.clone()).or_default() += u64::from(entry.len);
        if self
            .tenants
            .entry(tenant)
            .or_default()
            .insert(id, entry)
            .is_none()
        {
            self.live_events += 1;
        }
    }

    fn remove(&mut self, tenant: &TenantId, id: EventId) -> Option<Entry> {
        let events = self.tenants.get_mut(tenant)?;
        let entry = events.remove(&id)?;
        if events.is_empty() {
            self.tenants.remove(tenant);
            self.tenant_bytes.remove(tenant);
        } else if let Some(b) = self.tenant_bytes.get_mut(tenant) {
            *b -= u64::from(entry.len);
        }
        self.live_events -= 1;
        if let Some(at) = entry.expires_at_ms {
            self.expiry.remove(&(at, id, tenant.clone()));
        }
        if let Some(seg) = self.segments.get_mut(&entry.seg) {
            seg.live.remove(&id);
        }
        self.live_bytes -= u64::from(entry.len);
        Some(entry)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock means the writer panicked; it is gone, and every later append fails with `Closed`
    // because its oneshot is dropped. Readers may still look at the index, which the disk can rebuild.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}{SEGMENT_SUFFIX}"))
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io("sync directory", dir, e))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Creates segment `seq` with its header, durably, directory entry included.
fn create_segment(dir: &Path, seq: u64, base_id: u64) -> Result<Arc<File>, StoreError> {
    let path = segment_path(dir, seq);
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| StoreError::io("create segment", &path, e))?;
    file.write_all(&SegmentHeader { seq, base_id }.encode())
        .and_then(|()| file.sync_all())
        .map_err(|e| StoreError::io("write segment header", &path, e))?;
    sync_dir(dir)?;
    Ok(Arc::new(file))
}

impl SegmentLog {
    /// Opens (or creates) the store in `dir` with the default configuration; see [`Self::open_with`].
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(dir, SegmentLogConfig::default())
    }

    /// Opens (or creates) the store in `dir`, recovering from a crash if there was one, and starts its
    /// writer thread. Blocking file I/O: call it before serving, or from `spawn_blocking`.
    pub fn open_with(dir: impl AsRef<Path>, config: SegmentLogConfig) -> Result<Self, StoreError> {
        let dir = dir.as_ref().to_path_buf();
        let existed = dir.is_dir();
        fs::create_dir_all(&dir).map_err(|e| StoreError::io("create directory", &dir, e))?;
        if !existed {
            // The first synced append must not vanish with a directory entry that was never synced.
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent)?;
            }
        }
        let recovered = recover(&dir, now_ms())?;
        let shared = Arc::new(Shared {
            dir: dir.clone(),
            config,
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            index: Mutex::new(recovered.index),
            failed: AtomicBool::new(false),
            appends: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            relocated: AtomicU64::new(0),
            read_events: AtomicU64::new(0),
            read_bytes: AtomicU64::new(0),
        });
        let writer = Writer::new(
            shared.clone(),
            recovered.active_seq,
            recovered.active,
            recovered.active_len,
            recovered.next_id,
        );
        let handle = thread::Builder::new()
            .name("ferry-events-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| StoreError::io("start writer thread for", &dir, e))?;
        Ok(Self {
            shared,
            writer: Some(handle),
        })
    }

    pub fn stats(&self) -> SegmentLogStats {
        let ix = lock(&self.shared.index);
        SegmentLogStats {
            appends: self.shared.appends.load(Ordering::Relaxed),
            batches: self.shared.batches.load(Ordering::Relaxed),
            syncs: self.shared.syncs.load(Ordering::Relaxed),
            segments: ix.segments.len(),
            disk_bytes: ix.disk_bytes,
            live_bytes: ix.live_bytes,
            live_events: ix.live_events,
            relocated: self.shared.relocated.load(Ordering::Relaxed),
            read_events: self.shared.read_events.load(Ordering::Relaxed),
            read_bytes: self.shared.read_bytes.load(Ordering::Relaxed),
        }
    }

    fn push(&self, op: Op) {
        let mut q = lock(&self.shared.queue);
        let urgent = !matches!(op, Op::Ack { .. });
        q.ops.push(op);
        // Only the first append or sync since the writer took the queue wakes it, and an ack only a writer
        // that sleeps without a time limit; this keeps a futex syscall off most appends under load, and
        // off nearly every ack.
        if (urgent && !q.urgent) || q.asleep {
            q.urgent |= urgent;
            q.asleep = false;
            self.shared.wake.notify_one();
        }
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.shared.failed.load(Ordering::Acquire) {
            return Err(StoreError::Failed);
        }
        Ok(())
    }

    fn enqueue_append(
        &self,
        tenant: &TenantId,
        event: NewEvent,
    ) -> Result<oneshot::Receiver<Result<EventId, StoreError>>, StoreError> {
        self.check()?;
        // Refuse what the writer could not encode here, so the writer never fails a batch for one event.
        if event.device_id.len() > usize::from(u16::MAX) {
            return Err(StoreError::TooLarge {
                what: "device id",
                len: event.device_id.len(),
                max: usize::from(u16::MAX),
            });
        }
        let max = record::MAX_BODY - 64 - usize::from(u8::MAX) - event.device_id.len();
        if event.payload.len() > max {
            return Err(StoreError::TooLarge {
                what: "event payload",
                len: event.payload.len(),
                max,
            });
        }
        let (done, rx) = oneshot::channel();
        self.push(Op::Append {
            tenant: tenant.clone(),
            event,
            done,
        });
        Ok(rx)
    }
}

impl Drop for SegmentLog {
    fn drop(&mut self) {
        lock(&self.shared.queue).closing = true;
        self.shared.wake.notify_one();
        if let Some(handle) = self.writer.take() {
            // Joining lets the writer finish queued work and sync the last acks before the files close.
            if handle.join().is_err() {
                tracing::error!(dir = %self.shared.dir.display(), "event store writer thread panicked");
            }
        }
    }
}

impl EventStore for SegmentLog {
    fn append(
        &self,
        tenant: &TenantId,
        event: NewEvent,
    ) -> impl Future<Output = Result<EventId, StoreError>> + Send + 'static {
        let rx = self.enqueue_append(tenant, event);
        async move { rx?.await.unwrap_or(Err(StoreError::Closed)) }
    }

    fn ack(&self, tenant: &TenantId, id: EventId) -> Result<bool, StoreError> {
        self.check()?;
        let removed = lock(&self.shared.index).remove(tenant, id).is_some();
        if removed {
            self.push(Op::Ack {
                tenant: tenant.clone(),
                id,
            });
        }
        Ok(removed)
    }

    fn pending(
        &self,
        tenant: &TenantId,
        after: Option<EventId>,
        max: usize,
    ) -> impl Future<Output = Result<Vec<EventId>, StoreError>> + Send + 'static {
        let from = EventId(after.map_or(0, |a| a.0.saturating_add(1)));
        let ids = lock(&self.shared.index)
            .tenants
            .get(tenant)
            .map(|events| events.range(from..).take(max).map(|(id, _)| *id).collect())
            .unwrap_or_default();
        std::future::ready(Ok(ids))
    }

    fn read(
        &self,
        tenant: &TenantId,
        ids: Vec<EventId>,
        max_bytes: usize,
    ) -> impl Future<Output = Result<ReadBatch, StoreError>> + Send + 'static {
        // Chosen under the index lock, before any I/O, so the answer is fixed at the call.
        let (wanted, looked_at) = {
            let ix = lock(&self.shared.index);
            let mut wanted: Vec<(EventId, u64, Arc<File>, Entry)> = Vec::new();
            let mut bytes = 0usize;
            let mut looked_at = 0;
            if let Some(events) = ix.tenants.get(tenant) {
                for id in &ids {
                    if bytes >= max_bytes && !wanted.is_empty() {
                        break;
                    }
                    looked_at += 1;
                    let Some(e) = events.get(id) else { continue };
                    // An open handle keeps the data readable even if compaction deletes the file.
                    let Some(seg) = ix.segments.get(&e.seg) else {
                        continue;
                    };
                    bytes += e.len as usize;
                    wanted.push((*id, e.seg, seg.file.clone(), *e));
                }
            } else {
                looked_at = ids.len();
            }
            (wanted, looked_at)
        };
        let dir = self.shared.dir.clone();
        let shared = self.shared.clone();
        async move {
            if wanted.is_empty() {
                return Ok(ReadBatch {
                    events: Vec::new(),
                    looked_at,
                });
            }
            let bytes: u64 = wanted.iter().map(|w| u64::from(w.3.len)).sum();
            shared
                .read_events
                .fetch_add(wanted.len() as u64, Ordering::Relaxed);
            shared.read_bytes.fetch_add(bytes, Ordering::Relaxed);
            let events = tokio::task::spawn_blocking(move || read_events(&dir, wanted))
                .await
                .map_err(|_| StoreError::Closed)??;
            Ok(ReadBatch { events, looked_at })
        }
    }

    fn usage(&self, tenant: &TenantId) -> Usage {
        let ix = lock(&self.shared.index);
        Usage {
            events: ix.tenants.get(tenant).map_or(0, |e| e.len() as u64),
            bytes: ix.tenant_bytes.get(tenant).copied().unwrap_or(0),
        }
    }

    fn total(&self) -> Usage {
        let ix = lock(&self.shared.index);
        Usage {
            events: ix.live_events,
            bytes: ix.live_bytes,
        }
    }

    fn expire(&self, now_ms: u64) -> Vec<(TenantId, EventId)> {
        let mut ix = lock(&self.shared.index);
        let mut gone = Vec::new();
        while let Some((at, id, tenant)) = ix.expiry.first().cloned() {
            if at > now_ms {
                break;
            }
            ix.remove(&tenant, id);
            gone.push((tenant, id));
        }
        gone
    }

    fn tenants(&self) -> Vec<TenantId> {
        lock(&self.shared.index).tenants.keys().cloned().collect()
    }

    fn sync(&self) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let rx = self.check().map(|()| {
            let (done, rx) = oneshot::channel();
            self.push(Op::Sync { done });
            rx
        });
        async move { rx?.await.unwrap_or(Err(StoreError::Closed)) }
    }
}

/// Reads live events back (blocking; called on a blocking thread). A record that no longer checks out
/// (the disk changed it after it was synced) is logged and skipped rather than failing the whole backlog.
fn read_events(
    dir: &Path,
    wanted: Vec<(EventId, u64, Arc<File>, Entry)>,
) -> Result<Vec<StoredEvent>, StoreError> {
    let mut out = Vec::with_capacity(wanted.len());
    for (id, seg, file, entry) in wanted {
        let mut buf = vec![0u8; entry.len as usize];
        file.read_exact_at(&mut buf, entry.offset)
            .map_err(|e| StoreError::io("read event from", segment_path(dir, seg), e))?;
        let (device, payload) = match record::decode(&buf) {
            Ok(Record::Event(ev)) if ev.id == id.0 => (Arc::<str>::from(ev.device), ev.payload),
            Ok(_) | Err(_) => {
                tracing::error!(
                    path = %segment_path(dir, seg).display(),
                    offset = entry.offset,
                    event = id.0,
                    "stored event no longer matches its checksum; skipped"
                );
                continue;
            }
        };
        out.push(StoredEvent {
            id,
            device_id: device,
            payload: Bytes::from(buf).slice(payload),
            expires_at_ms: entry.expires_at_ms,
        });
    }
    Ok(out)
}
