//! Recovery at open: every segment scanned in order, a torn or corrupt tail cut off, and the live set
//! (appended, not acknowledged, not expired) rebuilt; see "Recovery" in the `events` module docs.

use super::*;

/// What recovery hands to the writer and the index.
pub(super) struct Recovered {
    pub(super) index: Index,
    pub(super) active_seq: u64,
    pub(super) active: Arc<File>,
    pub(super) active_len: u64,
    pub(super) next_id: u64,
}

/// Scans every segment in order and rebuilds the live set (see "Recovery" in the module docs).
pub(super) fn recover(dir: &Path, now_ms: u64) -> Result<Recovered, StoreError> {
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
