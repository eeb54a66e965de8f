//! What the figures depend on besides the stores: the disk's own sync rate, the file system, and the
//! versions of the drivers measured.

use std::path::Path;
use std::time::{Duration, Instant};

use super::{thousands, DISK_PROBE};

/// What one thread gets from the file system in `base` when every write waits for its `fdatasync`: the
/// ceiling for any store whose events each wait for their own sync.
#[derive(Debug, Clone, Copy)]
pub(super) struct DiskProbe {
    /// Appending to a growing file (as the segment log does): each sync also commits the new file size.
    pub(super) appending: f64,
    /// Overwriting blocks of a file written out beforehand (as SQLite's WAL does once it wraps): the
    /// data alone is synced.
    pub(super) overwriting: f64,
}

impl DiskProbe {
    pub(super) fn describe(&self) -> String {
        format!(
            "{} appending to a growing file, {} overwriting a written-out one",
            thousands(self.appending),
            thousands(self.overwriting),
        )
    }
}

/// Measures both ways of writing in alternating slices, so that a change in the (shared) disk's speed
/// falls on both alike.
pub(super) async fn disk_probe(base: &Path, payload: usize) -> anyhow::Result<DiskProbe> {
    use std::io::Write as _;
    use std::os::unix::fs::FileExt as _;
    const SLICE: Duration = Duration::from_millis(100);
    const REGION: u64 = 1 << 20;
    let base = base.to_path_buf();
    tokio::task::spawn_blocking(move || -> anyhow::Result<DiskProbe> {
        let dir = tempfile::tempdir_in(&base)?;
        let mut growing = std::fs::File::create(dir.path().join("growing"))?;
        let fixed = std::fs::File::create(dir.path().join("fixed"))?;
        fixed.write_all_at(&vec![0; REGION as usize], 0)?;
        fixed.sync_all()?;
        let record = vec![0x5A; payload.max(1)];
        let (mut appends, mut overwrites, mut offset) = (0u64, 0u64, 0u64);
        let (mut appending, mut overwriting) = (Duration::ZERO, Duration::ZERO);
        while appending + overwriting < DISK_PROBE {
            let slice = Instant::now();
            while slice.elapsed() < SLICE {
                growing.write_all(&record)?;
                growing.sync_data()?;
                appends += 1;
            }
            appending += slice.elapsed();
            let slice = Instant::now();
            while slice.elapsed() < SLICE {
                if offset + record.len() as u64 > REGION {
                    offset = 0;
                }
                fixed.write_all_at(&record, offset)?;
                fixed.sync_data()?;
                offset += record.len() as u64;
                overwrites += 1;
            }
            overwriting += slice.elapsed();
        }
        Ok(DiskProbe {
            appending: appends as f64 / appending.as_secs_f64(),
            overwriting: overwrites as f64 / overwriting.as_secs_f64(),
        })
    })
    .await?
}

/// `sqlx-sqlite 0.8.6, libsqlite3-sys 0.30.1`, from the workspace's lock file as it was at build time.
pub(super) fn driver_versions() -> String {
    const LOCK: &str = include_str!("../../../Cargo.lock");
    ["sqlx-sqlite", "libsqlite3-sys"]
        .iter()
        .map(|name| format!("{name} {}", locked_version(LOCK, name).unwrap_or("?")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The version of package `name` in a `Cargo.lock`.
pub(super) fn locked_version<'a>(lock: &'a str, name: &str) -> Option<&'a str> {
    let wanted = format!("name = \"{name}\"");
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line.trim() == wanted {
            return lines
                .next()?
                .trim()
                .strip_prefix("version = \"")?
                .strip_suffix('"');
        }
    }
    None
}

/// Which file system the stores are on (from `/proc/self/mounts`: the longest mount point above `dir`).
pub(super) fn file_system(dir: &Path) -> String {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let found = mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (device, point, kind) = (f.next()?, f.next()?, f.next()?);
            dir.starts_with(point)
                .then_some((point.len(), device, kind))
        })
        .max_by_key(|&(len, ..)| len);
    match found {
        Some((_, device, kind)) => format!(
            "Stores in {} ({kind} on {device}), a fresh directory per run, removed after it.",
            dir.display()
        ),
        None => format!(
            "Stores in {}, a fresh directory per run, removed after it.",
            dir.display()
        ),
    }
}
