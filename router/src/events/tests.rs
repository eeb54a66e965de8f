use std::collections::{HashMap, HashSet};
use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_core::ids::TenantId;

use super::record::{self, Record, SegmentHeader};
use super::segment_log::ACK_DELAY;
use super::*;

fn tenant(s: &str) -> TenantId {
    TenantId::new(s).expect("valid tenant id")
}

fn event(payload: &str) -> NewEvent {
    NewEvent {
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        device_id: Arc::from("dev-1"),
        expires_at_ms: None,
    }
}

fn open(dir: &Path) -> SegmentLog {
    SegmentLog::open(dir).expect("open store")
}

fn small(dir: &Path) -> SegmentLog {
    let config = SegmentLogConfig {
        segment_bytes: 4096,
        relocate_step_bytes: 1024,
    };
    SegmentLog::open_with(dir, config).expect("open store")
}

async fn all(store: &impl EventStore, t: &TenantId) -> Vec<StoredEvent> {
    let ids = store.pending(t, None, usize::MAX).await.expect("pending");
    let n = ids.len();
    let batch = store.read(t, ids, usize::MAX).await.expect("read");
    assert_eq!(batch.looked_at, n, "an unlimited read looks at every id");
    batch.events
}

async fn payloads(store: &impl EventStore, t: &TenantId) -> Vec<String> {
    all(store, t)
        .await
        .into_iter()
        .map(|e| String::from_utf8(e.payload.to_vec()).expect("utf-8 payload"))
        .collect()
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .expect("list dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    files.sort();
    files
}

// ---- checksum and record codec ----

#[test]
fn crc32c_matches_the_standard_check_value() {
    assert_eq!(crc32c::checksum(b"123456789"), 0xE306_9283);
    assert_eq!(crc32c::checksum(b""), 0);
    // Slicing-by-8 and the byte loop must agree at every split.
    let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
    for split in [0, 1, 7, 8, 9, 500, 999] {
        let (a, b) = data.split_at(split);
        assert_eq!(
            crc32c::extend(crc32c::extend(0, a), b),
            crc32c::checksum(&data)
        );
    }
}

#[test]
fn records_round_trip() {
    let mut buf = Vec::new();
    record::encode_event(&mut buf, "t1", 42, Some(7), "d:1", b"hello").expect("encode");
    let first = buf.len();
    record::encode_event(&mut buf, "t1", 43, None, "", b"").expect("encode");
    let second = buf.len();
    record::encode_acks(&mut buf, "t2", &[1, 2, 3]).expect("encode");

    match record::decode(&buf[..first]).expect("decode event") {
        Record::Event(ev) => {
            assert_eq!(
                (ev.tenant, ev.id, ev.expires_at_ms, ev.device),
                ("t1", 42, Some(7), "d:1")
            );
            assert_eq!(&buf[ev.payload], b"hello");
        }
        other => panic!("unexpected {other:?}"),
    }
    match record::decode(&buf[first..second]).expect("decode event") {
        Record::Event(ev) => assert_eq!((ev.id, ev.expires_at_ms), (43, None)),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        record::decode(&buf[second..]).expect("decode acks"),
        Record::Acks {
            tenant: "t2",
            ids: vec![1, 2, 3]
        }
    );
}

#[test]
fn decoder_refuses_every_flipped_byte_and_every_truncation() {
    let mut buf = Vec::new();
    record::encode_event(&mut buf, "tenant", 9, Some(1), "device", b"payload bytes")
        .expect("encode");
    for i in 0..buf.len() {
        let mut bad = buf.clone();
        bad[i] ^= 0x40;
        assert!(record::decode(&bad).is_err(), "flip at {i} accepted");
    }
    for n in 0..buf.len() {
        assert!(
            record::decode(&buf[..n]).is_err(),
            "truncation to {n} accepted"
        );
    }
}

#[test]
fn oversized_fields_are_refused_without_touching_the_buffer() {
    let mut buf = Vec::new();
    let long_device = "d".repeat(70_000);
    assert!(matches!(
        record::encode_event(&mut buf, "t", 1, None, &long_device, b"x"),
        Err(StoreError::TooLarge {
            what: "device id",
            ..
        })
    ));
    assert!(buf.is_empty());
}

#[test]
fn segment_header_round_trips_and_detects_damage() {
    let h = SegmentHeader {
        seq: 5,
        base_id: 1234,
    };
    let mut bytes = h.encode();
    assert_eq!(SegmentHeader::decode(&bytes), Ok(h));
    bytes[21] ^= 1;
    assert!(SegmentHeader::decode(&bytes).is_err());
}

// ---- the contract, for both implementations ----

async fn contract(store: &impl EventStore) {
    let a = tenant("a");
    let b = tenant("b");
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            store
                .append(&a, event(&format!("a{i}")))
                .await
                .expect("append"),
        );
        store
            .append(&b, event(&format!("b{i}")))
            .await
            .expect("append");
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids rise: {ids:?}");
    assert_eq!(payloads(store, &a).await, ["a0", "a1", "a2", "a3", "a4"]);
    assert_eq!(store.depth(&a), 5);
    let mut tenants = store.tenants();
    tenants.sort();
    assert_eq!(tenants, [a.clone(), b.clone()]);

    // Paging.
    let page = store.pending(&a, Some(ids[1]), 2).await.expect("pending");
    assert_eq!(page, [ids[2], ids[3]]);

    // Acks: once, only by the owning tenant.
    assert!(
        !store.ack(&b, ids[0]).expect("ack"),
        "another tenant's ack must not count"
    );
    assert!(store.ack(&a, ids[0]).expect("ack"));
    assert!(
        !store.ack(&a, ids[0]).expect("ack"),
        "second ack of the same event"
    );
    assert_eq!(payloads(store, &a).await, ["a1", "a2", "a3", "a4"]);
    assert_eq!(store.depth(&a), 4);
    assert_eq!(store.depth(&b), 5);

    // Expiry.
    let mut e = event("soon");
    e.expires_at_ms = Some(1_000);
    let soon = store.append(&a, e).await.expect("append");
    let mut e = event("later");
    e.expires_at_ms = Some(2_000);
    let later = store.append(&b, e).await.expect("append");
    assert!(store.expire(999).is_empty());
    assert_eq!(store.expire(1_000), [(a.clone(), soon)]);
    assert_eq!(store.depth(&a), 4);
    assert!(
        !store.ack(&a, soon).expect("ack"),
        "an expired event is gone"
    );
    assert!(store.ack(&b, later).expect("ack"));
    assert!(
        store.expire(5_000).is_empty(),
        "an acked event does not expire again"
    );

    for id in &ids[1..] {
        assert!(store.ack(&a, *id).expect("ack"));
    }
    assert_eq!(store.depth(&a), 0);
    assert_eq!(store.tenants(), [b]);
    store.sync().await.expect("sync");
}

#[tokio::test]
async fn in_memory_store_keeps_the_contract() {
    contract(&InMemoryStore::new()).await;
}

#[tokio::test]
async fn segment_log_keeps_the_contract() {
    let dir = tempfile::tempdir().expect("tempdir");
    contract(&open(dir.path())).await;
}

// ---- durability across reopen ----

#[tokio::test]
async fn appended_event_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = tenant("t1");
    let mut e = event("payload-1");
    e.device_id = Arc::from("urn:dev=7");
    e.expires_at_ms = Some(u64::MAX - 1);
    let id = {
        let store = open(dir.path());
        store.append(&t, e).await.expect("append")
    };
    let store = open(dir.path());
    let got = all(&store, &t).await;
    assert_eq!(
        got,
        [StoredEvent {
            id,
            device_id: Arc::from("urn:dev=7"),
            payload: Bytes::from_static(b"payload-1"),
            expires_at_ms: Some(u64::MAX - 1),
        }]
    );
    assert_eq!(store.tenants(), [t]);
}

#[tokio::test]
async fn acked_event_is_gone_after_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = tenant("t1");
    {
        let store = open(dir.path());
        let keep = store.append(&t, event("keep")).await.expect("append");
        let gone = store.append(&t, event("gone")).await.expect("append");
        assert!(store.ack(&t, gone).expect("ack"));
        store.sync().await.expect("sync");
        assert_eq!(all(&store, &t).await[0].id, keep);
    }
    let store = open(dir.path());
    assert_eq!(payloads(&store, &t).await, ["keep"]);
}

#[tokio::test]
async fn ack_without_sync_is_written_at_close() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = tenant("t1");
    {
        let store = open(dir.path());
        let id = store.append(&t, event("x")).await.expect("append");
        assert!(store.ack(&t, id).expect("ack"));
    }
    assert_eq!(open(dir.path()).depth(&t), 0);
}

#[tokio::test]
async fn acks_do_not_wake_the_writer_but_are_written_within_the_ack_delay() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = tenant("t1");
    let store = open(dir.path());
    let first = store.append(&t, event("a")).await.expect("append");
    let second = store.append(&t, event("b")).await.expect("append");
    let before = store.stats().batches;
    assert!(store.ack(&t, first).expect("ack"));
    // An append that follows takes the ack along: one batch for both.
    store.append(&t, event("c")).await.expect("append");
    assert_eq!(store.stats().batches, before + 1);
    // An ack alone waits, then is written without anything else coming.
    assert!(store.ack(&t, second).expect("ack"));
    let acked = Instant::now();
    std::thread::sleep(ACK_DELAY / 4);
    assert_eq!(store.stats().batches, before + 1, "an ack woke the writer");
    while store.stats().batches == before + 1 {
        assert!(
            acked.elapsed() < ACK_DELAY * 20,
            "the ack's tombstone was never written"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(acked.elapsed() >= ACK_DELAY / 2);
    // Written, though not synced: a reopen that follows a close sees both acks.
    drop(store);
    let store = open(dir.path());
    assert_eq!(payloads(&store, &t).await, ["c"]);
}

#[tokio::test]
async fn tenant_order_is_kept_across_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tenants = [tenant("a"), tenant("b"), tenant("c")];
    let mut expected: HashMap<TenantId, Vec<String>> = HashMap::new();
    {
        let store = open(dir.path());
        // Appends queued without awaiting in between keep their call order.
        let mut futures = Vec::new();
        for i in 0..300 {
            let t = &tenants[i % 3 * (i % 7) % 3];
            let p = format!("{t}-{i}");
            expected.entry(t.clone()).or_default().push(p.clone());
            futures.push(store.append(t, event(&p)));
        }
        for f in futures {
            f.await.expect("append");
        }
    }
    let store = open(dir.path());
    for t in &tenants {
        assert_eq!(payloads(&store, t).await, expected[t], "order of {t}");
    }
}

#[tokio::test]
async fn expired_events_are_not_recovered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = tenant("t1");
    {
        let store = open(dir.path());
        let mut past = event("past");
        past.expires_at_ms = Some(1);
        store.append(&t, past).await.expect("append");
        let mut future = event("future");
        future.expires_at_ms = Some(u64::MAX - 1);
        store.append(&t, future).await.expect("append");
    }
    let store = open(dir.path());
    assert_eq!(payloads(&store, &t).await, ["future"]);
}

#[tokio::test]
async fn ids_are_never_reused_after_everything_is_deleted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = tenant("t1");
    let mut last = EventId::new(0);
    {
        let store = small(dir.path());
        for i in 0..100 {
            last = store
                .append(&t, event(&format!("{i:0>100}")))
                .await
                .expect("append");
            assert!(store.ack(&t, last).expect("ack"));
        }
        store.sync().await.expect("sync");
    }
    let store = small(dir.path());
    assert_eq!(store.depth(&t), 0);
    let next = store.append(&t, event("next")).await.expect("append");
    assert!(next > last, "{next} after {last}");
}

// ---- torn tails and corruption ----

/// Appends `n` events to a fresh store, closes it, and returns the last segment file.
async fn store_with(dir: &Path, n: usize) -> (PathBuf, Vec<EventId>) {
    let store = open(dir);
    let t = tenant("t1");
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(
            store
                .append(&t, event(&format!("event-{i}")))
                .await
                .expect("append"),
        );
    }
    drop(store);
    let files = segment_files(dir);
    (files.last().expect("a segment").clone(), ids)
}

async fn reopen_expecting(dir: &Path, n: usize) {
    let store = open(dir);
    let t = tenant("t1");
    let expected: Vec<String> = (0..n).map(|i| format!("event-{i}")).collect();
    assert_eq!(payloads(&store, &t).await, expected);
    // The log is usable after recovery, and a second recovery agrees.
    let id = store
        .append(&t, event("after"))
        .await
        .expect("append after recovery");
    drop(store);
    let store = open(dir);
    let got = all(&store, &t).await;
    assert_eq!(got.len(), n + 1);
    assert_eq!(got.last().map(|e| e.id), Some(id));
}

#[tokio::test]
async fn torn_last_record_is_cut_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (file, _) = store_with(dir.path(), 10).await;
    let len = fs::metadata(&file).expect("stat").len();
    // Cut inside the last record (each is well over 5 bytes).
    OpenOptions::new()
        .write(true)
        .open(&file)
        .and_then(|f| f.set_len(len - 5))
        .expect("truncate");
    reopen_expecting(dir.path(), 9).await;
}

#[tokio::test]
async fn torn_frame_header_is_cut_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (file, _) = store_with(dir.path(), 3).await;
    let mut f = OpenOptions::new().append(true).open(&file).expect("open");
    f.write_all(&[7, 0, 0]).expect("write");
    drop(f);
    reopen_expecting(dir.path(), 3).await;
}

#[tokio::test]
async fn garbage_after_the_last_record_is_cut_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (file, _) = store_with(dir.path(), 10).await;
    let mut f = OpenOptions::new().append(true).open(&file).expect("open");
    // A plausible length with a wrong checksum, then noise; and, separately, zeros as a
    // preallocated tail would have.
    f.write_all(&[20, 0, 0, 0, 1, 2, 3, 4]).expect("write");
    f.write_all(&[0xAB; 40]).expect("write");
    drop(f);
    reopen_expecting(dir.path(), 10).await;

    let dir = tempfile::tempdir().expect("tempdir");
    let (file, _) = store_with(dir.path(), 4).await;
    let mut f = OpenOptions::new().append(true).open(&file).expect("open");
    f.write_all(&[0; 4096]).expect("write");
    drop(f);
    reopen_expecting(dir.path(), 4).await;
}

#[tokio::test]
async fn flipped_byte_in_the_last_record_loses_only_that_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (file, _) = store_with(dir.path(), 10).await;
    let mut bytes = fs::read(&file).expect("read");
    let at = bytes.len() - 3; // inside the last payload
    bytes[at] ^= 0x01;
    fs::write(&file, &bytes).expect("write");
    reopen_expecting(dir.path(), 9).await;
}

#[tokio::test]
async fn half_created_last_segment_is_discarded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (file, _) = store_with(dir.path(), 2).await;
    let name = file.file_name().and_then(|n| n.to_str()).expect("name");
    let seq: u64 = name.trim_end_matches(".seg").parse().expect("seq");
    fs::write(
        dir.path().join(format!("{:020}.seg", seq + 1)),
        [b'F', b'E', b'R'],
    )
    .expect("write");
    reopen_expecting(dir.path(), 2).await;
}

#[tokio::test]
async fn corruption_before_the_last_segment_refuses_to_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = small(dir.path());
        let t = tenant("t1");
        for i in 0..100 {
            store
                .append(&t, event(&format!("{i:0>100}")))
                .await
                .expect("append");
        }
    }
    let files = segment_files(dir.path());
    assert!(files.len() > 2, "rolled over: {files:?}");
    let mut bytes = fs::read(&files[0]).expect("read");
    bytes[100] ^= 0xFF;
    fs::write(&files[0], &bytes).expect("write");
    match SegmentLog::open(dir.path()) {
        Err(StoreError::Corrupt { path, .. }) => assert_eq!(path, files[0]),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

// ---- segments and compaction ----

#[tokio::test]
async fn segments_roll_over_and_fully_acked_ones_are_deleted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = tenant("t1");
    let store = small(dir.path());
    let mut ids = Vec::new();
    for i in 0..200 {
        ids.push(
            store
                .append(&t, event(&format!("{i:0>100}")))
                .await
                .expect("append"),
        );
    }
    let rolled = segment_files(dir.path()).len();
    assert!(
        rolled >= 5,
        "200 records of ~130 bytes in 4 KiB segments: {rolled} files"
    );

    // Acking the first half frees the segments that hold only those.
    for id in &ids[..100] {
        assert!(store.ack(&t, *id).expect("ack"));
    }
    store.sync().await.expect("sync");
    let half = segment_files(dir.path()).len();
    assert!(half < rolled && half > 1, "{rolled} -> {half}");

    for id in &ids[100..] {
        assert!(store.ack(&t, *id).expect("ack"));
    }
    store.sync().await.expect("sync");
    // One more batch so the writer rolls past the segment holding the last acks.
    let last = store
        .append(&t, event(&"z".repeat(4000)))
        .await
        .expect("append");
    assert!(store.ack(&t, last).expect("ack"));
    store
        .append(&t, event(&"z".repeat(4000)))
        .await
        .expect("append");
    store.sync().await.expect("sync");
    let files = segment_files(dir.path());
    assert!(
        files.len() <= 2,
        "fully acked segments are deleted: {files:?}"
    );
    assert_eq!(store.stats().segments, files.len());
    drop(store);
    assert_eq!(small(dir.path()).depth(&t), 1);
}

#[tokio::test]
async fn old_live_event_is_moved_so_its_segment_can_go() {
    let dir = tempfile::tempdir().expect("tempdir");
    let slow = tenant("slow");
    let fast = tenant("fast");
    let store = small(dir.path());
    let old = store
        .append(&slow, event("the-oldest"))
        .await
        .expect("append");
    for i in 0..2_000 {
        let id = store
            .append(&fast, event(&format!("{i:0>100}")))
            .await
            .expect("append");
        assert!(store.ack(&fast, id).expect("ack"));
    }
    store.sync().await.expect("sync");
    let stats = store.stats();
    // ~300 KB went through 4 KiB segments; garbage may not exceed live + 2 segments by much.
    assert!(stats.segments <= 6, "segments kept bounded: {stats:?}");
    assert!(stats.relocated > 0, "{stats:?}");
    assert!(stats.disk_bytes <= 6 * 4096 + 4096, "{stats:?}");
    let newer = store.append(&slow, event("newer")).await.expect("append");
    let got = all(&store, &slow).await;
    assert_eq!(got.iter().map(|e| e.id).collect::<Vec<_>>(), [old, newer]);
    drop(store);
    let store = small(dir.path());
    assert_eq!(payloads(&store, &slow).await, ["the-oldest", "newer"]);
    assert_eq!(store.depth(&fast), 0);
    // And the moved copy can be acked for good.
    assert!(store.ack(&slow, old).expect("ack"));
    store.sync().await.expect("sync");
    drop(store);
    assert_eq!(payloads(&small(dir.path()), &slow).await, ["newer"]);
}

#[tokio::test]
async fn read_gets_an_event_whose_segment_was_compacted_meanwhile() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = tenant("t1");
    let store = small(dir.path());
    let mut ids = Vec::new();
    for i in 0..100 {
        ids.push(
            store
                .append(&t, event(&format!("{i:0>100}")))
                .await
                .expect("append"),
        );
    }
    let pending = store.pending(&t, None, 5).await.expect("pending");
    let read = store.read(&t, pending, usize::MAX);
    for id in &ids[..50] {
        store.ack(&t, *id).expect("ack");
    }
    store.sync().await.expect("sync");
    // The events were chosen before the acks; their data is still readable through the open handles.
    assert_eq!(read.await.expect("read").events.len(), 5);
}

#[tokio::test]
async fn random_appends_acks_and_reopens_match_a_model() {
    // A fixed-seed generator keeps failures reproducible without a dependency.
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let tenants = [tenant("slow"), tenant("mid"), tenant("fast")];
    let mut model: HashMap<TenantId, Vec<(EventId, String)>> = HashMap::new();
    let config = SegmentLogConfig {
        segment_bytes: 8 << 10,
        relocate_step_bytes: 2 << 10,
    };
    let reopen = |dir: &Path| SegmentLog::open_with(dir, config.clone()).expect("open store");
    let mut store = reopen(dir.path());
    let mut relocated = 0;
    for step in 0..2_000u64 {
        // Appends and acks per tenant balance out, so backlogs wander: "fast" (75 %) is consumed in
        // order as a keeping-up consumer would, "mid" (20 %) and "slow" (5 %) at random, so old segments
        // stay pinned by a few events while newer ones, holding their tombstones, die.
        let pick = |r: u64| match r {
            0 => 0,
            1..=4 => 1,
            _ => 2,
        };
        match next(100) {
            0..=48 => {
                let t = &tenants[pick(next(20))];
                let p = format!("{step}-{}", "x".repeat(next(600) as usize));
                let id = store.append(t, event(&p)).await.expect("append");
                model.entry(t.clone()).or_default().push((id, p));
            }
            49..=97 => {
                let which = pick(next(20));
                let t = &tenants[which];
                let live = model.entry(t.clone()).or_default();
                if !live.is_empty() {
                    let at = if which == 2 {
                        0
                    } else {
                        next(live.len() as u64) as usize
                    };
                    let (id, _) = live.remove(at);
                    assert!(store.ack(t, id).expect("ack"));
                }
            }
            _ => {
                let before = store.stats();
                relocated += before.relocated;
                drop(store);
                store = reopen(dir.path());
                assert_eq!(store.stats().live_bytes, before.live_bytes, "step {step}");
                for t in &tenants {
                    let want = model.get(t).cloned().unwrap_or_default();
                    let got: Vec<(EventId, String)> = all(&store, t)
                        .await
                        .into_iter()
                        .map(|e| (e.id, String::from_utf8(e.payload.to_vec()).expect("utf-8")))
                        .collect();
                    assert_eq!(got, want, "tenant {t} after reopen at step {step}");
                }
            }
        }
    }
    let stats = store.stats();
    assert!(
        relocated + stats.relocated > 0,
        "compaction moved live events"
    );
    assert!(
        stats.disk_bytes <= 2 * stats.live_bytes + 4 * (8 << 10),
        "disk use bounded by live data: {stats:?}"
    );
}

// ---- group commit ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_fsyncs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(open(dir.path()));
    let tasks: Vec<_> = (0..64)
        .map(|task| {
            let store = store.clone();
            tokio::spawn(async move {
                let t = tenant(&format!("t{}", task % 8));
                let mut ids = Vec::new();
                for i in 0..50 {
                    let id = store
                        .append(&t, event(&format!("{task}-{i}")))
                        .await
                        .expect("append");
                    ids.push(id);
                }
                ids
            })
        })
        .collect();
    let mut seen = HashSet::new();
    for task in tasks {
        for id in task.await.expect("task") {
            assert!(seen.insert(id), "duplicate id {id}");
        }
    }
    let stats = store.stats();
    assert_eq!(stats.appends, 64 * 50);
    assert!(
        stats.syncs * 4 < stats.appends,
        "group commit: {} syncs for {} appends",
        stats.syncs,
        stats.appends
    );
}

// ---- crash ----

const CRASH_CHILD_DIR: &str = "FERRY_EVENTS_CRASH_CHILD_DIR";

/// Not a test on its own: the body of the child process that `killed_process_loses_no_acknowledged_append`
/// starts (the test binary runs itself with only this test selected).
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CRASH_CHILD_DIR) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let store = Arc::new(open(Path::new(&dir)));
        let tasks: Vec<_> = (0..16)
            .map(|task| {
                let store = store.clone();
                tokio::spawn(async move {
                    let t = tenant(&format!("t{}", task % 4));
                    for i in 0u64.. {
                        let payload = format!("{task}-{i}");
                        let id = store.append(&t, event(&payload)).await.expect("append");
                        // Printed only once durable; the parent holds us to every line.
                        println!("ACK {t} {id} {payload} END");
                        if i % 3 == 0 {
                            store.ack(&t, id).expect("ack");
                            println!("ACKED {t} {id} END");
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            let _ = t.await;
        }
    });
}

#[test]
fn killed_process_loses_no_acknowledged_append() {
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("test binary path");
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "events::tests::crash_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CRASH_CHILD_DIR, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("child stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(30));
    if first.is_err() {
        let _ = child.kill();
        panic!("child printed nothing");
    }
    std::thread::sleep(Duration::from_millis(300));
    child.kill().expect("kill -9 the child");
    child.wait().expect("reap child");
    reader.join().expect("reader thread");
    let lines: Vec<String> = first.into_iter().chain(rx.try_iter()).collect();

    let mut acked_appends: HashMap<(String, u64), String> = HashMap::new();
    for line in &lines {
        let f: Vec<&str> = line.split(' ').collect();
        // A line cut by the kill has no END and proves nothing.
        if let ["ACK", t, id, payload, "END"] = f[..] {
            let id = id.parse().expect("id");
            acked_appends.insert((t.to_owned(), id), payload.to_owned());
        }
    }
    assert!(
        acked_appends.len() > 100,
        "child made too little progress to prove anything: {} appends",
        acked_appends.len()
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let store = open(dir.path());
        let mut found: HashMap<(String, u64), String> = HashMap::new();
        for t in store.tenants() {
            for e in all(&store, &t).await {
                let payload = String::from_utf8(e.payload.to_vec()).expect("utf-8");
                found.insert((t.to_string(), e.id.get()), payload);
            }
        }
        // Events the child acked may or may not be back (its tombstones were not synced, and the
        // kill may have come before the ack was queued): at-least-once. Every other one must be.
        let acked: HashSet<(String, u64)> = lines
            .iter()
            .filter_map(|l| match l.split(' ').collect::<Vec<_>>()[..] {
                ["ACKED", t, id, "END"] => Some((t.to_owned(), id.parse().expect("id"))),
                _ => None,
            })
            .collect();
        let mut checked = 0;
        for (key, payload) in &acked_appends {
            if acked.contains(key) {
                continue;
            }
            assert_eq!(found.get(key), Some(payload), "acknowledged append {key:?} lost");
            checked += 1;
        }
        println!(
            "crash: {} appends reported durable, {checked} not acked and all found, {} live after reopen",
            acked_appends.len(),
            found.len()
        );
        assert!(checked > 50, "{checked} appends checked");
        // The store keeps working after the crash.
        let t = tenant("t0");
        store.append(&t, event("after-crash")).await.expect("append");
    });
}

// ---- measurement ----

/// Appends per second with 1, 16 and 256 concurrent appenders, 64-byte payloads. Run with
/// `cargo test --release -p ferry-router events::tests::append_throughput -- --ignored --nocapture`.
#[test]
#[ignore = "measurement, not a check"]
fn append_throughput() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let base = std::env::var_os("FERRY_EVENTS_BENCH_DIR").map(PathBuf::from);
    for with_ack in [false, true] {
        for appenders in [1usize, 16, 256] {
            let dir = match &base {
                Some(b) => tempfile::tempdir_in(b),
                None => tempfile::tempdir(),
            }
            .expect("tempdir");
            let (n, secs, stats) = rt.block_on(async {
                let store = Arc::new(open(dir.path()));
                let payload = Bytes::from(vec![0x5A; 64]);
                let deadline = Instant::now() + Duration::from_secs(3);
                let started = Instant::now();
                let tasks: Vec<_> = (0..appenders)
                    .map(|task| {
                        let store = store.clone();
                        let payload = payload.clone();
                        tokio::spawn(async move {
                            let t = tenant(&format!("t{}", task % 16));
                            let mut n = 0u64;
                            while Instant::now() < deadline {
                                let e = NewEvent {
                                    payload: payload.clone(),
                                    device_id: Arc::from("device-0001"),
                                    expires_at_ms: None,
                                };
                                let id = store.append(&t, e).await.expect("append");
                                if with_ack {
                                    store.ack(&t, id).expect("ack");
                                }
                                n += 1;
                            }
                            n
                        })
                    })
                    .collect();
                let mut n = 0;
                for t in tasks {
                    n += t.await.expect("task");
                }
                (n, started.elapsed().as_secs_f64(), store.stats())
            });
            let reopened = Instant::now();
            let live = open(dir.path()).stats();
            let recovery = reopened.elapsed();
            println!(
                "appenders={appenders:>3} ack={with_ack:<5} appends/s={:>8.0} fsyncs/s={:>6.0} appends/fsync={:>6.1}",
                n as f64 / secs,
                stats.syncs as f64 / secs,
                stats.appends as f64 / stats.syncs.max(1) as f64
            );
            println!(
                "    reopen: {:.0} ms for {} MB on disk, {} live events",
                recovery.as_secs_f64() * 1e3,
                live.disk_bytes / 1_000_000,
                live.live_events
            );
        }
    }
}

// ---- the router's queues over the store ----

/// A router used to read every stored payload back into memory at start (and keep it there): a large
/// backlog cost its size in RAM before a single consumer asked for it. Now the queues hold ids, and
/// payloads are read a bounded batch at a time when consumers take them.
#[tokio::test]
async fn restart_with_a_large_backlog_reads_no_payloads() {
    use crate::hub::{ConnHandle, Hub, Kind, ToConn};
    let dir = tempfile::tempdir().expect("tempdir");
    let t = tenant("t1");
    {
        let store = open(dir.path());
        // Queued at the call, so they keep their order and share fsyncs.
        let appends: Vec<_> = (0..2000u32)
            .map(|i| {
                let mut e = event("");
                e.payload = Bytes::from(format!("{i:0>1024}"));
                store.append(&t, e)
            })
            .collect();
        for append in appends {
            append.await.expect("append");
        }
    }
    let store = Arc::new(open(dir.path()));
    let metrics = crate::metrics::Metrics::new(&ferry_core::admin::Admin::new());
    let hub = Hub::new(store.clone(), metrics, 100_000);
    hub.restore_events().await.expect("restore");
    let addr = hub.address(Kind::Event, &t);
    assert_eq!(hub.queued_events(&addr), 2000);
    assert_eq!(
        store.stats().read_bytes,
        0,
        "restoring 2 MB of events read their payloads"
    );

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut consumer_addr = addr.clone();
    let consumer = hub.attach_consumer(&mut consumer_addr, ConnHandle::new(tx), 1);
    hub.consumer_credit(&addr, &consumer, 10);
    for i in 0..10u32 {
        let msg = tokio::time::timeout(Duration::from_secs(2), rx.recv())
            .await
            .expect("an event within 2 s")
            .expect("channel open");
        let ToConn::Deliver { payload, .. } = msg else {
            panic!("expected a delivery, got {msg:?}");
        };
        assert_eq!(payload, format!("{i:0>1024}").as_bytes(), "in order");
    }
    assert_eq!(
        store.stats().read_events,
        10,
        "only what the consumer took is read"
    );
    assert_eq!(hub.queued_events(&addr), 1990);
}

/// `max_events_per_tenant` used to be the only bound, and per tenant: many tenants (or a few with big
/// events) could fill any disk. Each limit now refuses on its own, the store-wide one first.
#[test]
fn each_event_limit_refuses_on_its_own() {
    let limits = EventLimits {
        max_bytes: 1000,
        max_events_per_tenant: 10,
        max_bytes_per_tenant: 500,
    };
    let usage = |events, bytes| Usage { events, bytes };
    let dflt = TenantEventLimits::default();
    assert_eq!(limits.reached(usage(9, 499), usage(9, 999), dflt), None);
    assert_eq!(
        limits.reached(usage(0, 0), usage(50, 1000), dflt),
        Some(Limit::Store),
        "a tenant with nothing stored waits once the store is full"
    );
    assert_eq!(
        limits.reached(usage(10, 10), usage(10, 10), dflt),
        Some(Limit::Tenant)
    );
    assert_eq!(
        limits.reached(usage(1, 500), usage(1, 500), dflt),
        Some(Limit::Tenant)
    );
}

/// A tenant's own limits (its `resource-limits`) replace the per-tenant defaults, lower or higher, but
/// never the store-wide one; the room left bounds a producer's credit.
#[test]
fn a_tenants_own_limits_replace_the_defaults_but_not_the_stores() {
    let limits = EventLimits {
        max_bytes: 1000,
        max_events_per_tenant: 10,
        max_bytes_per_tenant: 500,
    };
    let usage = |events, bytes| Usage { events, bytes };
    let small = TenantEventLimits {
        max_events: Some(3),
        max_bytes: Some(100),
    };
    assert_eq!(
        limits.reached(usage(3, 3), usage(3, 3), small),
        Some(Limit::Tenant)
    );
    assert_eq!(
        limits.reached(usage(1, 100), usage(1, 100), small),
        Some(Limit::Tenant)
    );
    assert_eq!(limits.reached(usage(2, 99), usage(2, 99), small), None);
    assert_eq!(limits.room(usage(2, 99), small), 1);
    assert_eq!(
        limits.room(usage(5, 0), small),
        0,
        "no underflow past the limit"
    );
    let big = TenantEventLimits {
        max_events: Some(50),
        max_bytes: None,
    };
    assert_eq!(limits.reached(usage(20, 20), usage(20, 20), big), None);
    assert_eq!(limits.room(usage(20, 20), big), 30);
    assert_eq!(
        limits.reached(usage(20, 20), usage(20, 1000), big),
        Some(Limit::Store)
    );
    assert_eq!(limits.room(usage(4, 0), TenantEventLimits::default()), 6);
}

/// Reads stop at their byte budget (one event always gets through) and say how far they got.
#[tokio::test]
async fn read_stops_at_its_byte_budget() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = tenant("t1");
    let store = open(dir.path());
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(
            store
                .append(&t, event(&format!("{i:0>100}")))
                .await
                .expect("append"),
        );
    }
    assert!(store.ack(&t, ids[1]).expect("ack"));
    let batch = store.read(&t, ids.clone(), 1).await.expect("read");
    assert_eq!((batch.events.len(), batch.looked_at), (1, 1));
    let batch = store.read(&t, ids.clone(), 250).await.expect("read");
    let read: Vec<EventId> = batch.events.iter().map(|e| e.id).collect();
    assert_eq!(read, [ids[0], ids[2]], "the acked one is skipped");
    assert_eq!(batch.looked_at, 3);
    assert_eq!(store.usage(&t).events, 9);
    assert_eq!(store.total(), store.usage(&t));
}
