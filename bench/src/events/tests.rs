use super::disk::{driver_versions, locked_version, DiskProbe};
use super::section::reading;
use super::*;

fn run(events: u64, commits: u64) -> Run {
    Run {
        events,
        commits,
        window: Duration::from_secs(1),
        cpu: Duration::from_millis(500),
        others_cpu: Duration::ZERO,
        errors: 0,
        first_error: None,
    }
}

#[test]
fn the_row_is_the_median_run() {
    let row = Row {
        appenders: 16,
        store: Store::SegmentLog,
        runs: vec![run(300, 3), run(100, 1), run(200, 2)],
    };
    assert_eq!(row.median().map(|r| r.events), Some(200));
    let m = row.median().expect("median");
    assert_eq!(m.events_per_commit(), 100.0);
    assert_eq!(m.us_per_event(), 2500.0);
}

#[test]
fn lock_file_versions_are_found() {
    let lock = "[[package]]\nname = \"sqlx\"\nversion = \"0.8.6\"\n\n[[package]]\n\
                name = \"sqlx-sqlite\"\nversion = \"0.8.6\"\nsource = \"x\"\n";
    assert_eq!(locked_version(lock, "sqlx-sqlite"), Some("0.8.6"));
    assert_eq!(locked_version(lock, "sqlx-core"), None);
    assert!(driver_versions().contains("sqlx-sqlite 0.8."));
}

#[test]
fn the_reading_follows_the_figures() {
    let row = |appenders, store, events, commits| Row {
        appenders,
        store,
        runs: vec![run(events, commits)],
    };
    let rows = vec![
        row(1, Store::SegmentLog, 5_000, 5_000),
        row(1, Store::Sqlite, 4_000, 4_000),
        row(256, Store::SegmentLog, 300_000, 2_000),
        row(256, Store::Sqlite, 5_000, 5_000),
        row(256, Store::SqliteBatched, 100_000, 1_000),
    ];
    let disk = DiskProbe {
        appending: 5_500.0,
        overwriting: 9_000.0,
    };
    let text = reading(&rows, disk).expect("a reading");
    assert!(text.contains("300,000 events/s"), "{text}");
    assert!(text.contains("60× fewer"), "{text}");
    assert!(text.contains("3.0× its rate"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_store_appends_durably() {
    let base = tempfile::tempdir().expect("temp dir");
    let tuning = Tuning {
        sqlite_pool: 2,
        max_batch: 8,
    };
    let tenant = TenantId::new("tenant-0").expect("tenant");
    let device: Arc<str> = Arc::from("device-0");
    let payload = Bytes::from_static(&[1; 64]);
    for store in [
        Store::SegmentLog,
        Store::SegmentLogAck,
        Store::Sqlite,
        Store::SqliteBatched,
    ] {
        let dir = tempfile::tempdir_in(base.path()).expect("store dir");
        let target = Arc::new(Target::open(store, dir.path(), tuning).await.expect("open"));
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let (target, tenant, device, payload) = (
                    target.clone(),
                    tenant.clone(),
                    device.clone(),
                    payload.clone(),
                );
                tokio::spawn(async move {
                    for _ in 0..10 {
                        target
                            .append(&tenant, &device, &payload)
                            .await
                            .expect("append");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("appender");
        }
        let commits = target.commits();
        assert!(
            (1..=40).contains(&commits),
            "{}: {commits} commits",
            store.label()
        );
        Arc::into_inner(target)
            .expect("sole owner")
            .close()
            .await
            .expect("close");
    }
}
