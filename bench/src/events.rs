//! Scenario `events`: durable event appends per second, the router's segment log beside SQLite.
//!
//! The router answers `accepted` to an event's producer only once the event is on disk, so the event
//! store's durable appends per second bound the rate of `event/TENANT`. This scenario measures, in this
//! process, N appenders (tokio tasks, each with one append in flight) against:
//! - `ferry_router::events::SegmentLog`, each append awaited (durable after its batch's `fdatasync`),
//!   with and without an ack after each append;
//! - SQLite (sqlx's sqlite driver, WAL, `synchronous=FULL`) with one INSERT transaction per event over a
//!   small pool of connections: what a straightforward embedded-database store does;
//! - SQLite with the appenders' events committed in batches by one writer task: group commit built on
//!   SQLite, the fair comparison for the engine.
//!
//! Each run starts on an empty store in a fresh directory, warms up, then counts durable appends, durable
//! commits and the process's CPU time over the window ([`stores`]).
//!
//! Layout: this file runs and measures the stores; `disk` probes what the figures depend on (the
//! disk's sync rate, the file system, the drivers' versions); `section` writes the report's section.

mod disk;
mod section;
mod stores;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use bytes::Bytes;
use ferry_core::ids::TenantId;

use crate::cli::{EventsArgs, Store};
use crate::machine::{self, Machine};
use crate::{cpu, report};
use disk::{disk_probe, driver_versions, file_system, DiskProbe};
use section::render;
use stores::{Target, Tuning};

/// The report section this scenario owns.
pub const SECTION: &str = "events";
/// Appenders spread their events over this many tenants (the log is shared by all of them).
const TENANTS: usize = 16;
/// How long the disk's own sync rates are measured (both ways of writing together).
const DISK_PROBE: Duration = Duration::from_secs(4);

/// Counters at one edge of the window.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    events: u64,
    commits: u64,
    cpu: Duration,
    machine: Duration,
}

/// One measured run.
#[derive(Debug, Clone)]
struct Run {
    events: u64,
    commits: u64,
    window: Duration,
    cpu: Duration,
    /// What other processes on the machine used meanwhile: the noise in this run.
    others_cpu: Duration,
    errors: u64,
    first_error: Option<String>,
}

impl Run {
    fn rate(&self) -> f64 {
        self.events as f64 / self.window.as_secs_f64()
    }

    fn commit_rate(&self) -> f64 {
        self.commits as f64 / self.window.as_secs_f64()
    }

    fn events_per_commit(&self) -> f64 {
        self.events as f64 / self.commits.max(1) as f64
    }

    fn us_per_event(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.events.max(1) as f64
    }

    fn cores(&self, cpu: Duration) -> f64 {
        cpu.as_secs_f64() / self.window.as_secs_f64()
    }
}

/// All runs of one (appenders, store).
#[derive(Debug)]
struct Row {
    appenders: usize,
    store: Store,
    runs: Vec<Run>,
}

impl Row {
    /// The run with the median rate (the lower middle one for an even count).
    fn median(&self) -> Option<&Run> {
        let mut by_rate: Vec<&Run> = self.runs.iter().collect();
        by_rate.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
        by_rate.get(by_rate.len().saturating_sub(1) / 2).copied()
    }

    fn rate(&self) -> Option<f64> {
        self.median().map(Run::rate)
    }

    fn errors(&self) -> u64 {
        self.runs.iter().map(|r| r.errors).sum()
    }

    fn first_error(&self) -> Option<&str> {
        self.runs.iter().find_map(|r| r.first_error.as_deref())
    }
}

/// What the appenders share: counts and the first error.
#[derive(Default)]
struct Tally {
    events: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Tally {
    fn error(&self, e: &anyhow::Error) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            *first = Some(format!("{e:#}"));
        }
    }
}

/// Runs the scenario and writes its section of the report.
pub async fn run(args: &EventsArgs) -> anyhow::Result<()> {
    ensure!(!args.appenders.is_empty(), "--appenders lists no count");
    ensure!(
        args.appenders.iter().all(|&n| n > 0),
        "--appenders must be at least 1"
    );
    ensure!(!args.stores.is_empty(), "--stores lists no store");
    ensure!(args.runs > 0, "--runs must be at least 1");
    ensure!(args.duration > 0, "--duration must be at least 1 second");
    ensure!(args.sqlite_pool > 0, "--sqlite-pool must be at least 1");
    ensure!(args.max_batch > 0, "--max-batch must be at least 1");
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
    let date = machine::now();
    let commit = machine::commit();

    let mut notes = vec![file_system(&base)];
    let disk_before = disk_probe(&base, args.payload).await?;
    eprintln!("disk before: {}", disk_before.describe());
    if args
        .stores
        .iter()
        .any(|s| matches!(s, Store::Sqlite | Store::SqliteBatched))
    {
        let dir = tempfile::tempdir_in(&base)?;
        let sqlite = stores::sqlite_version(dir.path()).await?;
        notes.push(format!(
            "SQLite {sqlite} (bundled) through {} (each connection on its own worker thread); \
             `journal_mode=WAL`, `synchronous=FULL`, busy timeout {} s, everything else the driver's defaults.",
            driver_versions(),
            stores::BUSY_TIMEOUT.as_secs()
        ));
    }

    let tuning = Tuning {
        sqlite_pool: args.sqlite_pool,
        max_batch: args.max_batch,
    };
    let payload = Bytes::from(vec![0x5A; args.payload]);
    // Runs are interleaved (run 1 of every row, then run 2 of every row, ...) so that background load on
    // a shared machine, which comes and goes, falls on all stores alike rather than on one row.
    let mut rows: Vec<Row> = args
        .appenders
        .iter()
        .flat_map(|&appenders| {
            args.stores.iter().map(move |&store| Row {
                appenders,
                store,
                runs: Vec::new(),
            })
        })
        .collect();
    for n in 1..=args.runs {
        for row in &mut rows {
            let (appenders, store) = (row.appenders, row.store);
            let run = measure(args, &base, store, tuning, appenders, &payload).await?;
            eprintln!(
                "run {n}/{}, {appenders:>3} appenders, {}: {:.0} events/s, {:.0} commits/s ({:.1} events each), \
                 {:.1} CPU µs/event ({:.0} % core), others {:.0} % core, errors {}",
                args.runs,
                store.label(),
                run.rate(),
                run.commit_rate(),
                run.events_per_commit(),
                run.us_per_event(),
                run.cores(run.cpu) * 100.0,
                run.cores(run.others_cpu) * 100.0,
                run.errors
            );
            row.runs.push(run);
        }
    }

    let disk_after = disk_probe(&base, args.payload).await?;
    eprintln!("disk after: {}", disk_after.describe());
    notes.push(format!(
        "The disk's own limit, synced {}-byte writes/s from one thread (`write` + `fdatasync`, {} s of \
         each kind in alternating slices): before the rows {}; after them {}.",
        args.payload,
        DISK_PROBE.as_secs() / 2,
        disk_before.describe(),
        disk_after.describe()
    ));
    let disk = DiskProbe {
        appending: (disk_before.appending + disk_after.appending) / 2.0,
        overwriting: (disk_before.overwriting + disk_after.overwriting) / 2.0,
    };
    let section = render(
        args,
        &Machine::detect(),
        &commit,
        &date,
        &rows,
        &notes,
        disk,
    );
    println!("{section}");
    if !args.no_report {
        report::update_section(&args.report, SECTION, &section)?;
        eprintln!("updated section `{SECTION}` of {}", args.report.display());
    }
    let errors: u64 = rows.iter().map(Row::errors).sum();
    if errors > 0 {
        let first = rows.iter().find_map(Row::first_error).unwrap_or("?");
        bail!("{errors} appends failed (first: {first}); a rate counts only with zero errors");
    }
    Ok(())
}

/// One run: a fresh store, `appenders` tasks appending until told to stop, a warm-up, then the window.
async fn measure(
    args: &EventsArgs,
    base: &Path,
    store: Store,
    tuning: Tuning,
    appenders: usize,
    payload: &Bytes,
) -> anyhow::Result<Run> {
    let dir = tempfile::tempdir_in(base)
        .with_context(|| format!("creating a store directory in {}", base.display()))?;
    let target = Arc::new(Target::open(store, dir.path(), tuning).await?);
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..appenders)
        .map(|k| {
            let tenant = TenantId::new(&format!("tenant-{}", k % TENANTS));
            let device: Arc<str> = Arc::from(format!("device-{k:04}"));
            let (target, tally, stop, payload) =
                (target.clone(), tally.clone(), stop.clone(), payload.clone());
            tokio::spawn(async move {
                let tenant = match tenant {
                    Ok(t) => t,
                    Err(e) => return tally.error(&e.into()),
                };
                while !stop.load(Ordering::Relaxed) {
                    match target.append(&tenant, &device, &payload).await {
                        Ok(()) => {
                            tally.events.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            // A failed store stays failed: count it once and leave.
                            tally.error(&e);
                            return;
                        }
                    }
                }
            })
        })
        .collect();
    let sample = || -> anyhow::Result<Sample> {
        Ok(Sample {
            at: Instant::now(),
            events: tally.events.load(Ordering::Relaxed),
            commits: target.commits(),
            cpu: cpu::own_cpu()?,
            machine: cpu::machine_busy()?,
        })
    };
    tokio::time::sleep(Duration::from_secs(args.warmup)).await;
    let before = sample()?;
    tokio::time::sleep(Duration::from_secs(args.duration)).await;
    let after = sample()?;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.context("an appender panicked")?;
    }
    let target = Arc::into_inner(target).context("the store is still shared after the run")?;
    target.close().await?;
    // Removing a store of a few hundred MB is blocking file-system work, outside the window.
    tokio::task::spawn_blocking(move || dir.close()).await??;

    let cpu = after.cpu.saturating_sub(before.cpu);
    let first_error = tally
        .first_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Ok(Run {
        events: after.events - before.events,
        commits: after.commits - before.commits,
        window: after.at.duration_since(before.at),
        cpu,
        others_cpu: after
            .machine
            .saturating_sub(before.machine)
            .saturating_sub(cpu),
        errors: tally.errors.load(Ordering::Relaxed),
        first_error,
    })
}

/// `12345.6` → `12,346`.
fn thousands(v: f64) -> String {
    let digits = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests;
