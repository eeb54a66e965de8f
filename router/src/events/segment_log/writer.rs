//! The store's writer thread: the only one that writes, syncs, creates and deletes segment files. It
//! takes what callers queued, writes it with one `write_all`, syncs once (group commit), updates the
//! index and completes each append; between batches it compacts segments whose events are mostly gone.

use super::*;

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
pub(super) struct Writer {
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
    pub(super) fn new(
        shared: Arc<Shared>,
        active_seq: u64,
        active: Arc<File>,
        active_len: u64,
        next_id: u64,
    ) -> Self {
        Self {
            shared,
            active_seq,
            active,
            active_len,
            dirty: false,
            next_id,
            buf: Vec::new(),
        }
    }

    pub(super) fn run(mut self) {
        // Recovery may have left dead segments, so look for compaction work before the first wait.
        let mut more_work = true;
        loop {
            let (ops, closing) = {
                let mut q = lock(&self.shared.queue);
                while !q.urgent && !q.closing && !more_work {
                    if q.ops.is_empty() {
                        q.asleep = true;
                        q = self.shared.wake.wait(q).unwrap_or_else(|e| e.into_inner());
                        q.asleep = false;
                        continue;
                    }
                    // Only acks wait: take them after ACK_DELAY unless an append comes first.
                    let (next, waited) = self
                        .shared
                        .wake
                        .wait_timeout(q, ACK_DELAY)
                        .unwrap_or_else(|e| e.into_inner());
                    q = next;
                    if waited.timed_out() {
                        break;
                    }
                }
                q.urgent = false;
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
