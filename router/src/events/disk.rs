//! The event store's free-disk check: below a floor of free space on the store's filesystem, event
//! producers get no credit, as when the store is full, so that a disk filled by anything (the store's
//! compaction, logs, another volume user) stops events with a clean "no credit" instead of failed writes.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Free space of the store's filesystem against a floor; looked at once a second (the event sweep).
#[derive(Debug)]
pub struct DiskGuard {
    dir: PathBuf,
    min_free: u64,
    low: AtomicBool,
    free: AtomicU64,
}

impl DiskGuard {
    /// Guards `dir`'s filesystem with a floor of `min_free` bytes, and looks at once.
    pub fn new(dir: PathBuf, min_free: u64) -> Self {
        let guard = Self {
            dir,
            min_free,
            low: AtomicBool::new(false),
            free: AtomicU64::new(u64::MAX),
        };
        guard.check();
        guard
    }

    /// Looks at the free space again; answers whether it is below the floor. A filesystem that cannot be
    /// asked counts as having room (the writes themselves then report what is wrong).
    pub fn check(&self) -> bool {
        let free = match rustix::fs::statvfs(&self.dir) {
            Ok(s) => s.f_bavail.saturating_mul(s.f_frsize),
            Err(e) => {
                tracing::debug!(dir = %self.dir.display(), error = %e, "cannot ask the event store's filesystem for its free space");
                u64::MAX
            }
        };
        self.free.store(free, Ordering::Relaxed);
        let low = free < self.min_free;
        let was = self.low.swap(low, Ordering::AcqRel);
        if low && !was {
            tracing::warn!(dir = %self.dir.display(), free, min_free = self.min_free, "the event store's disk is nearly full: event producers get no credit until it has room");
        } else if was && !low {
            tracing::info!(dir = %self.dir.display(), free, "the event store's disk has room again");
        }
        low
    }

    /// Whether the last look found less than the floor.
    pub fn low(&self) -> bool {
        self.low.load(Ordering::Acquire)
    }

    /// Free bytes at the last look (`u64::MAX` when unknown).
    pub fn free(&self) -> u64 {
        self.free.load(Ordering::Relaxed)
    }
}
