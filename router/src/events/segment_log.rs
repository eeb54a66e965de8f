//! [`SegmentLog`]: the embedded durable event store, an append-only segment log with group commit.
//!
//! Threads and locks: callers push operations onto `queue` and wake the writer; the writer thread (a
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
    closing: bool,
}

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
        let writer = Writer {
            shared: shared.clone(),
            active_seq: recovered.active_seq,
            active: recovered.active,
            active_len: recovered.active_len,
            dirty: false,
            next_id: recovered.next_id,
            buf: Vec::new(),
        };
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
        q.ops.push(op);
        // The writer only sleeps on an empty queue, so only the first op needs to wake it; this keeps
        // a futex syscall off most appends under load.
        if q.ops.len() == 1 {
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

/// An append that is written but not yet durable.
struct Written {
    tenant: TenantId,
    id: EventId,
    start: usize,
    len: usize,
    expires_at_ms: Option<u64>,
    done: oneshot::Sender<Result<EventId, StoreError>>,
}

/// The only thread that writes, syncs, creates and deletes segment files.
struct Writer {
    shared: Arc<Shared>,
    active_seq: u64,
    active: Arc<File>,
    active_len: u64,
    /// Written since the last sync (acks alone do not sync).
    dirty: bool,
    next_id: u64,
    buf: Vec<u8>,
}

impl Writer {
    fn run(mut self) {
        // Recovery may have left dead segments, so look for compaction work before the first wait.
        let mut more_work = true;
        loop {
            let (ops, closing) = {
                let mut q = lock(&self.shared.queue);
                while q.ops.is_empty() && !q.closing && !more_work {
                    q = self.shared.wake.wait(q).unwrap_or_else(|e| e.into_inner());
                }
                (std::mem::take(&mut q.ops), q.closing)
            };
            let syncs = self.process(ops);
            more_work = false;
            if !closing && !self.failed() {
                match self.compact() {
                    Ok(more) => more_work = more,
                    Err(e) => self.fail(&e),
                }
            }
            let outcome = if self.failed() {
                Err(StoreError::Failed)
            } else {
                Ok(())
            };
            for done in syncs {
                let _ = done.send(outcome.clone());
            }
            if closing {
                break;
            }
        }
        if self.dirty && !self.failed() {
            if let Err(e) = self.sync() {
                tracing::error!(error = %e, "event store: final sync at close failed");
            }
        }
    }

    fn failed(&self) -> bool {
        self.shared.failed.load(Ordering::Acquire)
    }

    fn fail(&self, e: &StoreError) {
        if !self.shared.failed.swap(true, Ordering::AcqRel) {
            tracing::error!(error = %e, "event store failed; refusing further appends until restart");
        }
    }

    /// Writes and syncs one batch; returns the sync waiters, to be answered after compaction.
    fn process(&mut self, ops: Vec<Op>) -> Vec<oneshot::Sender<Result<(), StoreError>>> {
        let mut syncs = Vec::new();
        if self.failed() {
            for op in ops {
                match op {
                    Op::Append { done, .. } => {
                        let _ = done.send(Err(StoreError::Failed));
                    }
                    Op::Sync { done } => syncs.push(done),
                    Op::Ack { .. } => {}
                }
            }
            return syncs;
        }
        self.buf.clear();
        let mut written = Vec::new();
        let mut acks: Option<(TenantId, Vec<u64>)> = None;
        for op in ops {
            match op {
                Op::Append {
                    tenant,
                    event,
                    done,
                } => {
                    // Acks before this append in the queue stay before it in the log.
                    self.flush_acks(&mut acks);
                    let start = self.buf.len();
                    let encoded = record::encode_event(
                        &mut self.buf,
                        tenant.as_str(),
                        self.next_id,
                        event.expires_at_ms,
                        &event.device_id,
                        &event.payload,
                    );
                    match encoded {
                        Ok(()) => {
                            written.push(Written {
                                tenant,
                                id: EventId(self.next_id),
                                start,
                                len: self.buf.len() - start,
                                expires_at_ms: event.expires_at_ms,
                                done,
                            });
                            self.next_id += 1;
                        }
                        Err(e) => {
                            let _ = done.send(Err(e));
                        }
                    }
                }
                Op::Ack { tenant, id } => match &mut acks {
                    Some((t, ids)) if *t == tenant && ids.len() < MAX_ACKS_PER_RECORD => {
                        ids.push(id.0)
                    }
                    _ => {
                        self.flush_acks(&mut acks);
                        acks = Some((tenant, vec![id.0]));
                    }
                },
                Op::Sync { done } => syncs.push(done),
            }
        }
        self.flush_acks(&mut acks);
        if self.buf.is_empty() && syncs.is_empty() {
            return syncs;
        }
        // Acks alone are not synced (see "Acks are lazy" in the module docs).
        let must_sync = !written.is_empty() || !syncs.is_empty();
        let result = self.write_buf().and_then(|at| {
            if must_sync && self.dirty {
                self.sync()?;
            }
            Ok(at)
        });
        match result {
            Ok((seg, base)) => {
                {
                    let mut ix = lock(&self.shared.index);
                    let n = self.buf.len() as u64;
                    if let Some(s) = ix.segments.get_mut(&seg) {
                        s.len += n;
                    }
                    ix.disk_bytes += n;
                    for w in &written {
                        let entry = Entry {
                            seg,
                            offset: base + w.start as u64,
                            len: w.len as u32,
                            expires_at_ms: w.expires_at_ms,
                        };
                        ix.insert(w.tenant.clone(), w.id, entry);
                    }
                }
                self.shared
                    .appends
                    .fetch_add(written.len() as u64, Ordering::Relaxed);
                for w in written {
                    let _ = w.done.send(Ok(w.id));
                }
            }
            Err(e) => {
                self.fail(&e);
                for w in written {
                    let _ = w.done.send(Err(e.clone()));
                }
            }
        }
        syncs
    }

    fn flush_acks(&mut self, acks: &mut Option<(TenantId, Vec<u64>)>) {
        if let Some((tenant, ids)) = acks.take() {
            if let Err(e) = record::encode_acks(&mut self.buf, tenant.as_str(), &ids) {
                // Cannot happen for a valid tenant id; losing the tombstone only means a redelivery.
                tracing::error!(error = %e, "event store: ack record not written");
            }
        }
    }

    /// Writes `buf` to the active segment, first starting a new one if it would grow past its size.
    /// Returns the segment and the offset the buffer starts at.
    fn write_buf(&mut self) -> Result<(u64, u64), StoreError> {
        let n = self.buf.len() as u64;
        if self.active_len > SEGMENT_HEADER as u64
            && self.active_len + n > self.shared.config.segment_bytes
        {
            self.roll()?;
        }
        let base = self.active_len;
        if n > 0 {
            (&*self.active).write_all(&self.buf).map_err(|e| {
                StoreError::io(
                    "write to",
                    segment_path(&self.shared.dir, self.active_seq),
                    e,
                )
            })?;
            self.active_len += n;
            self.dirty = true;
            self.shared.batches.fetch_add(1, Ordering::Relaxed);
        }
        Ok((self.active_seq, base))
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        self.active.sync_data().map_err(|e| {
            StoreError::io("sync", segment_path(&self.shared.dir, self.active_seq), e)
        })?;
        self.shared.syncs.fetch_add(1, Ordering::Relaxed);
        self.dirty = false;
        Ok(())
    }

    fn roll(&mut self) -> Result<(), StoreError> {
        // Sync the old segment first, so that only the last segment can ever end in a torn write.
        if self.dirty {
            self.sync()?;
        }
        let seq = self.active_seq + 1;
        let file = create_segment(&self.shared.dir, seq, self.next_id)?;
        let mut ix = lock(&self.shared.index);
        ix.segments.insert(
            seq,
            Segment {
                file: file.clone(),
                len: SEGMENT_HEADER as u64,
                live: BTreeMap::new(),
            },
        );
        ix.disk_bytes += SEGMENT_HEADER as u64;
        drop(ix);
        self.active = file;
        self.active_seq = seq;
        self.active_len = SEGMENT_HEADER as u64;
        Ok(())
    }

    /// One bounded step of compaction; says whether more is to do.
    fn compact(&mut self) -> Result<bool, StoreError> {
        self.delete_dead_head()?;
        self.relocate_head()
    }

    /// Deletes the oldest segments while no live event is in them. Oldest first, and the directory synced
    /// after each unlink, so that a tombstone never disappears while the segment with its event remains.
    fn delete_dead_head(&mut self) -> Result<(), StoreError> {
        let dead: Vec<u64> = {
            let ix = lock(&self.shared.index);
            ix.segments
                .iter()
                .take_while(|(seq, s)| **seq != self.active_seq && s.live.is_empty())
                .map(|(seq, _)| *seq)
                .collect()
        };
        for seq in dead {
            let path = segment_path(&self.shared.dir, seq);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    // Keep it and try again after the next batch; disk use grows, nothing is lost.
                    tracing::warn!(path = %path.display(), error = %e, "event store: cannot delete segment");
                    return Ok(());
                }
            }
            sync_dir(&self.shared.dir)?;
            let mut ix = lock(&self.shared.index);
            if let Some(s) = ix.segments.remove(&seq) {
                ix.disk_bytes -= s.len;
            }
            tracing::debug!(segment = seq, "event store: deleted segment");
        }
        Ok(())
    }

    /// When the oldest segment holds back too much garbage, copies up to one step of its live events to
    /// the end of the log. The copies keep their ids (so append order holds) and are written before any
    /// ack queued after the snapshot, so a later tombstone always follows the copy it kills.
    fn relocate_head(&mut self) -> Result<bool, StoreError> {
        let step = self.shared.config.relocate_step_bytes.max(1);
        let (head, file, moving) = {
            let ix = lock(&self.shared.index);
            let Some((&head, seg)) = ix.segments.first_key_value() else {
                return Ok(false);
            };
            let garbage = ix.disk_bytes.saturating_sub(ix.live_bytes);
            let allowance = ix.live_bytes + 2 * self.shared.config.segment_bytes;
            if head == self.active_seq || seg.live.is_empty() || garbage <= allowance {
                return Ok(false);
            }
            let mut bytes = 0u64;
            let mut moving = Vec::new();
            for (id, tenant) in &seg.live {
                if bytes >= step {
                    break;
                }
                let Some(entry) = ix.tenants.get(tenant).and_then(|e| e.get(id)) else {
                    continue;
                };
                bytes += u64::from(entry.len);
                moving.push((tenant.clone(), *id, *entry));
            }
            if moving.is_empty() {
                // Only possible if the index disagreed with itself; never spin on it.
                return Ok(false);
            }
            (head, seg.file.clone(), moving)
        };
        self.buf.clear();
        let mut copied = Vec::with_capacity(moving.len());
        let mut lost = Vec::new();
        let mut rec = Vec::new();
        for (tenant, id, entry) in moving {
            rec.resize(entry.len as usize, 0);
            file.read_exact_at(&mut rec, entry.offset).map_err(|e| {
                StoreError::io(
                    "read for compaction",
                    segment_path(&self.shared.dir, head),
                    e,
                )
            })?;
            let ok = matches!(record::decode(&rec), Ok(Record::Event(ev)) if ev.id == id.0);
            if ok {
                copied.push((tenant, id, self.buf.len() as u64));
                self.buf.extend_from_slice(&rec);
            } else {
                lost.push((tenant, id, entry.offset));
            }
        }
        let (seg, base) = self.write_buf()?;
        if self.dirty {
            self.sync()?;
        }
        let mut ix = lock(&self.shared.index);
        let n = self.buf.len() as u64;
        if let Some(s) = ix.segments.get_mut(&seg) {
            s.len += n;
        }
        ix.disk_bytes += n;
        for (tenant, id, start) in copied {
            // Acked or expired while being copied: the copy is garbage, and its tombstone (if any) is
            // still queued, so it lands after the copy.
            let Some(entry) = ix.tenants.get_mut(&tenant).and_then(|e| e.get_mut(&id)) else {
                continue;
            };
            if entry.seg != head {
                continue;
            }
            entry.seg = seg;
            entry.offset = base + start;
            if let Some(s) = ix.segments.get_mut(&head) {
                s.live.remove(&id);
            }
            if let Some(s) = ix.segments.get_mut(&seg) {
                s.live.insert(id, tenant);
            }
            self.shared.relocated.fetch_add(1, Ordering::Relaxed);
        }
        for (tenant, id, offset) in lost {
            // The disk changed a synced record; it cannot be delivered, and keeping it would pin the
            // segment forever.
            tracing::error!(segment = head, offset, event = id.0, tenant = %tenant,
                "stored event no longer matches its checksum; dropped");
            ix.remove(&tenant, id);
        }
        Ok(true)
    }
}

/// What recovery hands to the writer and the index.
struct Recovered {
    index: Index,
    active_seq: u64,
    active: Arc<File>,
    active_len: u64,
    next_id: u64,
}

/// Scans every segment in order and rebuilds the live set (see "Recovery" in the module docs).
fn recover(dir: &Path, now_ms: u64) -> Result<Recovered, StoreError> {
    let mut seqs = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| StoreError::io("list", dir, e))? {
        let entry = entry.map_err(|e| StoreError::io("list", dir, e))?;
        let name = entry.file_name();
        let Some(seq) = name
            .to_str()
            .and_then(|n| n.strip_suffix(SEGMENT_SUFFIX))
            .filter(|n| n.len() == 20)
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        seqs.push(seq);
    }
    seqs.sort_unstable();

    let mut live: HashMap<EventId, (TenantId, Entry)> = HashMap::new();
    let mut tenants: HashMap<String, TenantId> = HashMap::new();
    let mut segments: BTreeMap<u64, Segment> = BTreeMap::new();
    let mut next_id = 1u64;
    let mut truncated = 0u64;
    let last = seqs.last().copied();
    for seq in seqs.iter().copied() {
        let path = segment_path(dir, seq);
        let is_last = Some(seq) == last;
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)
            .map_err(|e| StoreError::io("open", &path, e))?;
        let file_len = file
            .metadata()
            .map_err(|e| StoreError::io("stat", &path, e))?
            .len();
        let mut header = [0u8; SEGMENT_HEADER];
        let header = if file_len >= SEGMENT_HEADER as u64 {
            file.read_exact_at(&mut header, 0)
                .map_err(|e| StoreError::io("read", &path, e))?;
            SegmentHeader::decode(&header)
        } else {
            Err("shorter than a segment header")
        };
        let header = match header {
            Ok(h) if h.seq == seq => h,
            Ok(_) => {
                return Err(StoreError::Corrupt {
                    path,
                    offset: 0,
                    reason: "segment header names another sequence number",
                })
            }
            // A crash while a segment was being created: no record is written into a segment before its
            // header is synced, so a last segment without a valid header and no room for records held
            // nothing anyone was told about.
            Err(_) if is_last && file_len <= SEGMENT_HEADER as u64 => {
                tracing::warn!(path = %path.display(), "event store: removing half-created segment");
                drop(file);
                fs::remove_file(&path).map_err(|e| StoreError::io("remove", &path, e))?;
                sync_dir(dir)?;
                continue;
            }
            Err(reason) => {
                return Err(StoreError::Corrupt {
                    path,
                    offset: 0,
                    reason,
                })
            }
        };
        next_id = next_id.max(header.base_id);

        let (valid_len, bad) = scan_segment(&file, &path, &mut |rec, offset, len| {
            apply(rec, seq, offset, len, &mut live, &mut tenants, &mut next_id)
        })?;
        if let Some(reason) = bad {
            if !is_last {
                return Err(StoreError::Corrupt {
                    path,
                    offset: valid_len,
                    reason,
                });
            }
            // The crash point: nothing from here on was ever reported durable.
            tracing::warn!(path = %path.display(), offset = valid_len, dropped_bytes = file_len - valid_len,
                reason, "event store: truncating torn tail after a crash");
            file.set_len(valid_len)
                .and_then(|()| file.sync_all())
                .map_err(|e| StoreError::io("truncate", &path, e))?;
            truncated = file_len - valid_len;
        }
        segments.insert(
            seq,
            Segment {
                file: Arc::new(file),
                len: valid_len,
                live: BTreeMap::new(),
            },
        );
    }

    let (active_seq, active, active_len) = match segments.last_key_value() {
        Some((&seq, s)) => (seq, s.file.clone(), s.len),
        None => {
            let seq = seqs.last().map_or(1, |s| s + 1);
            let file = create_segment(dir, seq, next_id)?;
            segments.insert(
                seq,
                Segment {
                    file: file.clone(),
                    len: SEGMENT_HEADER as u64,
                    live: BTreeMap::new(),
                },
            );
            (seq, file, SEGMENT_HEADER as u64)
        }
    };

    let mut index = Index {
        disk_bytes: segments.values().map(|s| s.len).sum(),
        segments,
        ..Index::default()
    };
    let mut expired = 0u64;
    for (id, (tenant, entry)) in live {
        if entry.expires_at_ms.is_some_and(|at| at <= now_ms) {
            expired += 1;
            continue;
        }
        index.insert(tenant, id, entry);
    }
    tracing::info!(
        dir = %dir.display(),
        segments = index.segments.len(),
        live_events = index.tenants.values().map(|e| e.len()).sum::<usize>(),
        tenants = index.tenants.len(),
        expired,
        truncated_bytes = truncated,
        "event store recovered"
    );
    Ok(Recovered {
        index,
        active_seq,
        active,
        active_len,
        next_id,
    })
}

/// Applies one recovered record to the live set.
fn apply(
    rec: Record<'_>,
    seg: u64,
    offset: u64,
    len: u32,
    live: &mut HashMap<EventId, (TenantId, Entry)>,
    tenants: &mut HashMap<String, TenantId>,
    next_id: &mut u64,
) -> Result<(), &'static str> {
    match rec {
        Record::Event(ev) => {
            let tenant = match tenants.get(ev.tenant) {
                Some(t) => t.clone(),
                None => {
                    let t = TenantId::new(ev.tenant)
                        .map_err(|_| "record holds an invalid tenant id")?;
                    tenants.insert(ev.tenant.to_owned(), t.clone());
                    t
                }
            };
            *next_id = (*next_id).max(ev.id.saturating_add(1));
            // A later copy (written by compaction) replaces the earlier one.
            let entry = Entry {
                seg,
                offset,
                len,
                expires_at_ms: ev.expires_at_ms,
            };
            live.insert(EventId(ev.id), (tenant, entry));
        }
        Record::Acks { tenant, ids } => {
            for id in ids {
                *next_id = (*next_id).max(id.saturating_add(1));
                if live
                    .get(&EventId(id))
                    .is_some_and(|(t, _)| t.as_str() == tenant)
                {
                    live.remove(&EventId(id));
                }
            }
        }
    }
    Ok(())
}

/// Reads the records of one segment in order, calling `each` for every valid one. Returns the length of
/// the valid prefix and, if the segment does not end cleanly there, why.
fn scan_segment(
    file: &File,
    path: &Path,
    each: &mut dyn FnMut(Record<'_>, u64, u32) -> Result<(), &'static str>,
) -> Result<(u64, Option<&'static str>), StoreError> {
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut skip = [0u8; SEGMENT_HEADER];
    reader
        .read_exact(&mut skip)
        .map_err(|e| StoreError::io("read", path, e))?;
    let mut offset = SEGMENT_HEADER as u64;
    let mut rec: Vec<u8> = Vec::new();
    loop {
        let mut header = [0u8; FRAME_HEADER];
        match read_full(&mut reader, &mut header).map_err(|e| StoreError::io("read", path, e))? {
            0 => return Ok((offset, None)),
            n if n < FRAME_HEADER => return Ok((offset, Some("torn record header"))),
            _ => {}
        }
        let len = match record::frame_len(&header) {
            Ok(len) => len,
            Err(reason) => return Ok((offset, Some(reason))),
        };
        rec.clear();
        rec.extend_from_slice(&header);
        rec.resize(FRAME_HEADER + len, 0);
        let got = read_full(&mut reader, &mut rec[FRAME_HEADER..])
            .map_err(|e| StoreError::io("read", path, e))?;
        if got < len {
            return Ok((offset, Some("torn record body")));
        }
        let decoded = match record::decode(&rec) {
            Ok(r) => r,
            Err(reason) => return Ok((offset, Some(reason))),
        };
        let total = (FRAME_HEADER + len) as u32;
        if let Err(reason) = each(decoded, offset, total) {
            return Err(StoreError::Corrupt {
                path: path.to_owned(),
                offset,
                reason,
            });
        }
        offset += u64::from(total);
    }
}

/// Reads until `buf` is full or the end of the file; returns how much was read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}
