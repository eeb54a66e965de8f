//! The stores the `events` scenario drives, behind one `append`: the router's [`SegmentLog`] and two
//! SQLite stores built the way an embedded-database event store would be (sqlx's sqlite driver, WAL,
//! `synchronous=FULL`, one table).
//!
//! Each store counts the durable commits it makes (fdatasyncs for the segment log, SQLite transactions
//! otherwise), sampled at the window's edges like the event count.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use bytes::Bytes;
use ferry_core::ids::TenantId;
use ferry_router::events::{EventStore as _, NewEvent, SegmentLog};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{Connection as _, QueryBuilder, Sqlite};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::cli::Store;

/// The table every SQLite store writes: what an event record holds in the segment log.
const SCHEMA: &str = "CREATE TABLE events (id INTEGER PRIMARY KEY, tenant TEXT NOT NULL, \
                      device TEXT NOT NULL, expires INTEGER, payload BLOB NOT NULL)";
const INSERT_ONE: &str =
    "INSERT INTO events (tenant, device, expires, payload) VALUES (?, ?, ?, ?)";
/// Rows per multi-row INSERT of the batched writer (4 parameters each, far below SQLite's 32,766).
const ROWS_PER_INSERT: usize = 256;
/// Most busy-waiting a SQLite connection does for the write lock before an insert fails.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(60);

/// How the stores are set up.
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    pub sqlite_pool: u32,
    pub max_batch: usize,
}

/// One event of the batched SQLite store, waiting for its transaction.
pub struct Job {
    tenant: TenantId,
    device: Arc<str>,
    expires: Option<i64>,
    payload: Bytes,
    done: oneshot::Sender<Result<i64, Arc<sqlx::Error>>>,
}

/// An open store of one kind.
pub enum Target {
    Log {
        store: Arc<SegmentLog>,
        ack: bool,
    },
    Sqlite {
        pool: SqlitePool,
        commits: AtomicU64,
    },
    Batched {
        jobs: mpsc::Sender<Job>,
        commits: Arc<AtomicU64>,
        writer: JoinHandle<anyhow::Result<()>>,
    },
}

impl Target {
    /// Opens an empty store of kind `store` in the (empty) directory `dir`.
    pub async fn open(store: Store, dir: &Path, tuning: Tuning) -> anyhow::Result<Self> {
        match store {
            Store::SegmentLog | Store::SegmentLogAck => {
                let dir = dir.to_path_buf();
                let log = tokio::task::spawn_blocking(move || SegmentLog::open(dir))
                    .await?
                    .context("opening the segment log")?;
                Ok(Target::Log {
                    store: Arc::new(log),
                    ack: store == Store::SegmentLogAck,
                })
            }
            Store::Sqlite => {
                let options = sqlite_options(dir);
                create_table(&options).await?;
                let pool = SqlitePoolOptions::new()
                    .max_connections(tuning.sqlite_pool)
                    .min_connections(tuning.sqlite_pool)
                    .acquire_timeout(BUSY_TIMEOUT)
                    .connect_with(options)
                    .await
                    .context("opening the SQLite pool")?;
                Ok(Target::Sqlite {
                    pool,
                    commits: AtomicU64::new(0),
                })
            }
            Store::SqliteBatched => {
                let options = sqlite_options(dir);
                create_table(&options).await?;
                let conn = SqliteConnection::connect_with(&options)
                    .await
                    .context("opening the SQLite writer connection")?;
                let (jobs, queue) = mpsc::channel(tuning.max_batch.max(1) * 4);
                let commits = Arc::new(AtomicU64::new(0));
                let writer = tokio::spawn(batch_writer(
                    conn,
                    queue,
                    commits.clone(),
                    tuning.max_batch.max(1),
                ));
                Ok(Target::Batched {
                    jobs,
                    commits,
                    writer,
                })
            }
        }
    }

    /// Appends one event and returns once it is durable (and, for `segment log + ack`, acknowledged).
    pub async fn append(
        &self,
        tenant: &TenantId,
        device: &Arc<str>,
        payload: &Bytes,
    ) -> anyhow::Result<()> {
        match self {
            Target::Log { store, ack } => {
                let event = NewEvent {
                    payload: payload.clone(),
                    device_id: device.clone(),
                    expires_at_ms: None,
                };
                let id = store.append(tenant, event).await?;
                if *ack {
                    anyhow::ensure!(store.ack(tenant, id)?, "event {id} was not live at its ack");
                }
            }
            Target::Sqlite { pool, commits } => {
                // Autocommit: the INSERT is its own transaction, durable when it returns.
                sqlx::query(INSERT_ONE)
                    .bind(tenant.as_str())
                    .bind(&**device)
                    .bind(None::<i64>)
                    .bind(payload.as_ref())
                    .execute(pool)
                    .await?;
                commits.fetch_add(1, Ordering::Relaxed);
            }
            Target::Batched { jobs, .. } => {
                let (done, answer) = oneshot::channel();
                let job = Job {
                    tenant: tenant.clone(),
                    device: device.clone(),
                    expires: None,
                    payload: payload.clone(),
                    done,
                };
                jobs.send(job)
                    .await
                    .map_err(|_| anyhow!("the SQLite writer stopped"))?;
                answer
                    .await
                    .map_err(|_| anyhow!("the SQLite writer dropped an event"))?
                    .map_err(|e| anyhow!("SQLite batch: {e}"))?;
            }
        }
        Ok(())
    }

    /// Durable commits so far: fdatasyncs of segment data, or committed SQLite transactions.
    pub fn commits(&self) -> u64 {
        match self {
            Target::Log { store, .. } => store.stats().syncs,
            Target::Sqlite { commits, .. } => commits.load(Ordering::Relaxed),
            Target::Batched { commits, .. } => commits.load(Ordering::Relaxed),
        }
    }

    /// Closes the store (the appenders must be done).
    pub async fn close(self) -> anyhow::Result<()> {
        match self {
            Target::Log { store, .. } => {
                // Dropping the last handle joins the writer thread: blocking.
                tokio::task::spawn_blocking(move || drop(store)).await?;
            }
            Target::Sqlite { pool, .. } => pool.close().await,
            Target::Batched { jobs, writer, .. } => {
                drop(jobs);
                writer.await??;
            }
        }
        Ok(())
    }
}

fn sqlite_options(dir: &Path) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(dir.join("events.db"))
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(BUSY_TIMEOUT)
}

async fn create_table(options: &SqliteConnectOptions) -> anyhow::Result<()> {
    let mut conn = SqliteConnection::connect_with(options)
        .await
        .context("creating the SQLite database")?;
    sqlx::query(SCHEMA)
        .execute(&mut conn)
        .await
        .context("creating table events")?;
    conn.close().await?;
    Ok(())
}

/// The SQLite version the driver runs (bundled with `libsqlite3-sys`).
pub async fn sqlite_version(dir: &Path) -> anyhow::Result<String> {
    let mut conn = SqliteConnection::connect_with(&sqlite_options(dir)).await?;
    let (version,): (String,) = sqlx::query_as("SELECT sqlite_version()")
        .fetch_one(&mut conn)
        .await?;
    conn.close().await?;
    Ok(version)
}

/// Group commit on SQLite: takes every queued event (up to `max_batch`), inserts them with multi-row
/// INSERTs in one transaction, commits (one WAL sync), then answers each appender with its row id.
async fn batch_writer(
    mut conn: SqliteConnection,
    mut queue: mpsc::Receiver<Job>,
    commits: Arc<AtomicU64>,
    max_batch: usize,
) -> anyhow::Result<()> {
    let mut batch = Vec::with_capacity(max_batch);
    while queue.recv_many(&mut batch, max_batch).await > 0 {
        let result = write_batch(&mut conn, &batch).await;
        match result {
            Ok(last_id) => {
                commits.fetch_add(1, Ordering::Relaxed);
                // One writer, rows inserted in order with `INTEGER PRIMARY KEY`: the ids are consecutive.
                let first = last_id - batch.len() as i64 + 1;
                for (k, job) in batch.drain(..).enumerate() {
                    let _ = job.done.send(Ok(first + k as i64));
                }
            }
            Err(e) => {
                let e = Arc::new(e);
                for job in batch.drain(..) {
                    let _ = job.done.send(Err(e.clone()));
                }
            }
        }
    }
    conn.close().await?;
    Ok(())
}

async fn write_batch(conn: &mut SqliteConnection, batch: &[Job]) -> Result<i64, sqlx::Error> {
    let mut tx = conn.begin().await?;
    let mut last_id = 0;
    for chunk in batch.chunks(ROWS_PER_INSERT) {
        let mut insert: QueryBuilder<'_, Sqlite> =
            QueryBuilder::new("INSERT INTO events (tenant, device, expires, payload) ");
        insert.push_values(chunk, |mut row, job| {
            row.push_bind(job.tenant.as_str())
                .push_bind(&*job.device)
                .push_bind(job.expires)
                .push_bind(job.payload.as_ref());
        });
        last_id = insert.build().execute(&mut *tx).await?.last_insert_rowid();
    }
    tx.commit().await?;
    Ok(last_id)
}
