//! A bounded cache whose entries expire: `quick_cache` (sharded, lock-light reads) with a deadline per
//! entry, because the registry says per answer how long it may be kept (`Cache-Control: max-age`).
//!
//! Loads of one key are coalesced (a reconnect storm of one device asks the registry once), and a load that
//! raced with a purge is not stored: the purge counter ([`Epoch`]) is read before the request and compared
//! before the insert, so an answer fetched before a change cannot outlive the change.

use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use quick_cache::sync::{Cache, GuardResult};
use quick_cache::Equivalent;

/// Counts purges; a load that saw another value when it started is not cached.
#[derive(Debug, Default)]
pub(crate) struct Epoch(AtomicU64);

impl Epoch {
    pub(crate) fn current(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    pub(crate) fn advance(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }
}

#[derive(Clone)]
struct Timed<V> {
    value: V,
    until: Instant,
}

/// Keys and values are cloned out of the cache, so both should be cheap to clone (`Arc`s).
pub(crate) struct TtlCache<K, V> {
    inner: Cache<K, Timed<V>>,
}

impl<K, V> TtlCache<K, V>
where
    K: Eq + Hash + Clone,
    V: Clone,
{
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            inner: Cache::new(capacity.max(16)),
        }
    }

    /// The value if present and not expired. `Q` lets callers look up by borrowed parts of a composite
    /// key, so the hot path builds no owned key.
    pub(crate) fn get<Q>(&self, key: &Q) -> Option<V>
    where
        Q: Hash + Equivalent<K> + ?Sized,
    {
        self.get_until(key).map(|(v, _)| v)
    }

    /// [`Self::get`] with the entry's deadline.
    pub(crate) fn get_until<Q>(&self, key: &Q) -> Option<(V, Instant)>
    where
        Q: Hash + Equivalent<K> + ?Sized,
    {
        self.get_at(key, Instant::now())
    }

    /// [`Self::get_until`] as of `now`, for a caller that looks up several entries per message and reads
    /// the clock once.
    pub(crate) fn get_at<Q>(&self, key: &Q, now: Instant) -> Option<(V, Instant)>
    where
        Q: Hash + Equivalent<K> + ?Sized,
    {
        self.inner
            .get(key)
            .filter(|t| t.until > now)
            .map(|t| (t.value, t.until))
    }

    /// The cached value, or `load`'s. `load` yields the value and how long it may be kept (zero: do not
    /// keep). Concurrent callers for one key wait for the first one's load instead of loading again.
    pub(crate) async fn get_or_load<E, F>(&self, key: &K, epoch: &Epoch, load: F) -> Result<V, E>
    where
        F: Future<Output = Result<(V, Duration), E>>,
    {
        Ok(self.get_or_load_until(key, epoch, load).await?.0)
    }

    /// [`Self::get_or_load`] with the deadline of the answer (the moment it stops being trusted).
    pub(crate) async fn get_or_load_until<E, F>(
        &self,
        key: &K,
        epoch: &Epoch,
        load: F,
    ) -> Result<(V, Instant), E>
    where
        F: Future<Output = Result<(V, Duration), E>>,
    {
        if let Some(hit) = self.get_until(key) {
            return Ok(hit);
        }
        let guard = match self.inner.get_value_or_guard_async(key).await {
            Ok(t) if t.until > Instant::now() => return Ok((t.value, t.until)),
            Ok(_) => {
                // Expired: drop it and take the placeholder so that others wait for our load.
                self.inner.remove(key);
                match self.inner.get_value_or_guard(key, Some(Duration::ZERO)) {
                    GuardResult::Guard(g) => Some(g),
                    GuardResult::Value(t) if t.until > Instant::now() => {
                        return Ok((t.value, t.until))
                    }
                    _ => None,
                }
            }
            Err(g) => Some(g),
        };
        let seen = epoch.current();
        let (value, ttl) = load.await?;
        let until = Instant::now() + ttl;
        if let Some(guard) = guard {
            if !ttl.is_zero() && epoch.current() == seen {
                let _ = guard.insert(Timed {
                    value: value.clone(),
                    until,
                });
            }
        }
        Ok((value, until))
    }

    /// Stores a value directly (for results computed outside [`Self::get_or_load`]).
    pub(crate) fn insert(&self, key: K, value: V, until: Instant) {
        self.inner.insert(key, Timed { value, until });
    }

    pub(crate) fn remove<Q>(&self, key: &Q)
    where
        Q: Hash + Equivalent<K> + ?Sized,
    {
        self.inner.remove(key);
    }

    /// Removes every entry for which `purge` is true.
    pub(crate) fn purge_where(&self, purge: impl Fn(&K, &V) -> bool) {
        self.inner.retain(|k, t| !purge(k, &t.value));
    }

    pub(crate) fn clear(&self) {
        self.inner.clear();
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.inner.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    #[tokio::test]
    async fn loads_once_and_expires() {
        let cache: TtlCache<String, u32> = TtlCache::new(100);
        let epoch = Epoch::default();
        let loads = AtomicUsize::new(0);
        let load = || async {
            loads.fetch_add(1, Ordering::Relaxed);
            Ok::<_, ()>((7, Duration::from_millis(50)))
        };
        let key = "a".to_owned();
        assert_eq!(cache.get_or_load(&key, &epoch, load()).await, Ok(7));
        assert_eq!(cache.get_or_load(&key, &epoch, load()).await, Ok(7));
        assert_eq!(loads.load(Ordering::Relaxed), 1);
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(cache.get("a"), None);
        assert_eq!(cache.get_or_load(&key, &epoch, load()).await, Ok(7));
        assert_eq!(loads.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn zero_ttl_and_errors_are_not_kept() {
        let cache: TtlCache<String, u32> = TtlCache::new(100);
        let epoch = Epoch::default();
        let key = "a".to_owned();
        let r = cache
            .get_or_load(&key, &epoch, async { Ok::<_, ()>((1, Duration::ZERO)) })
            .await;
        assert_eq!(r, Ok(1));
        assert_eq!(cache.len(), 0);
        let r = cache
            .get_or_load(&key, &epoch, async { Err::<(u32, Duration), _>("down") })
            .await;
        assert_eq!(r, Err("down"));
        assert_eq!(cache.len(), 0);
    }

    #[tokio::test]
    async fn a_load_that_raced_a_purge_is_not_kept() {
        let cache: TtlCache<String, u32> = TtlCache::new(100);
        let epoch = Epoch::default();
        let key = "a".to_owned();
        let r = cache
            .get_or_load(&key, &epoch, async {
                epoch.advance(); // a change arrives while the request is in flight
                Ok::<_, ()>((1, Duration::from_secs(60)))
            })
            .await;
        assert_eq!(r, Ok(1));
        assert_eq!(cache.get("a"), None);
    }

    #[tokio::test]
    async fn concurrent_loads_of_one_key_are_coalesced() {
        let cache: Arc<TtlCache<String, u32>> = Arc::new(TtlCache::new(100));
        let epoch = Arc::new(Epoch::default());
        let loads = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (cache, epoch, loads) = (cache.clone(), epoch.clone(), loads.clone());
            tasks.push(tokio::spawn(async move {
                cache
                    .get_or_load(&"k".to_owned(), &epoch, async {
                        loads.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(30)).await;
                        Ok::<_, ()>((3, Duration::from_secs(60)))
                    })
                    .await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.expect("join"), Ok(3));
        }
        assert_eq!(loads.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn purge_where_removes_matching_entries() {
        let cache: TtlCache<String, u32> = TtlCache::new(100);
        let until = Instant::now() + Duration::from_secs(60);
        cache.insert("a".into(), 1, until);
        cache.insert("b".into(), 2, until);
        cache.purge_where(|_, v| *v == 1);
        assert_eq!(cache.get("a"), None);
        assert_eq!(cache.get("b"), Some(2));
        cache.clear();
        assert_eq!(cache.get("b"), None);
    }
}
