//! What the adapters' device logins and the registry's application logins share against password
//! guessing: failures counted per key (a name, a source address) in a bounded map, with the lockouts
//! they earn ([`Failures`]); the names that logged in before ([`Proven`]); and verification slots of
//! which half are kept for those names ([`Slots`]), so a flood of unknown names or wrong passwords
//! queues behind itself while known users still get in.
//!
//! Both maps are bounded: when one is full, expired entries go first, then the oldest. That is linear,
//! but only when the map is full, and each new key has cost a password verification.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Debug, Clone, Copy)]
struct Count {
    count: u32,
    since: Instant,
    locked_until: Option<Instant>,
}

/// Failed attempts per key within a window, and the keys locked for having too many.
#[derive(Debug)]
pub struct Failures<K> {
    map: Mutex<HashMap<K, Count>>,
    /// The window that counts failures, and how long a lockout lasts.
    lockout: Duration,
    /// Most keys remembered.
    tracked_max: usize,
}

impl<K: Clone + Eq + Hash> Failures<K> {
    /// Failures counted within `lockout`, for at most `tracked_max` keys.
    pub fn new(lockout: Duration, tracked_max: usize) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            lockout,
            tracked_max,
        }
    }

    /// Whether any of `keys` is locked now; forgets lockouts that have passed.
    pub fn is_locked<Q: std::borrow::Borrow<K>>(&self, keys: impl IntoIterator<Item = Q>) -> bool {
        let now = Instant::now();
        let mut map = lock(&self.map);
        let mut locked = false;
        for key in keys {
            let key = key.borrow();
            match map.get(key).and_then(|f| f.locked_until) {
                Some(until) if until > now => locked = true,
                Some(_) => {
                    map.remove(key);
                }
                None => {}
            }
        }
        locked
    }

    /// One more failure for `key`: locked when it is the `max`th within the window.
    pub fn failed(&self, key: &K, max: u32) {
        let now = Instant::now();
        let lockout = self.lockout;
        let mut map = lock(&self.map);
        if !map.contains_key(key) {
            make_room(&mut map, self.tracked_max, |f: &Count| {
                f.locked_until.unwrap_or(f.since + lockout) <= now
            });
        }
        let fresh = Count {
            count: 0,
            since: now,
            locked_until: None,
        };
        let f = map.entry(key.clone()).or_insert(fresh);
        if now.duration_since(f.since) > lockout {
            *f = fresh;
        }
        f.count = f.count.saturating_add(1);
        if f.count >= max {
            f.locked_until = Some(now + lockout);
        }
    }

    /// Forgets `key`'s failures (its login succeeded).
    pub fn forget(&self, key: &K) {
        lock(&self.map).remove(key);
    }

    /// Keys remembered now.
    pub fn len(&self) -> usize {
        lock(&self.map).len()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Names that have logged in successfully, with the time of the last success.
#[derive(Debug)]
pub struct Proven<N> {
    map: Mutex<HashMap<N, Instant>>,
    tracked_max: usize,
}

impl<N: Clone + Eq + Hash> Proven<N> {
    /// At most `tracked_max` names.
    pub fn new(tracked_max: usize) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            tracked_max,
        }
    }

    /// Whether `name` logged in before.
    pub fn contains(&self, name: &N) -> bool {
        lock(&self.map).contains_key(name)
    }

    /// `name` logged in now.
    pub fn insert(&self, name: N) {
        let mut map = lock(&self.map);
        if !map.contains_key(&name) {
            make_room(&mut map, self.tracked_max, |_: &Instant| false);
        }
        map.insert(name, Instant::now());
    }

    /// Names remembered now.
    pub fn len(&self) -> usize {
        lock(&self.map).len()
    }

    /// Whether no name is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Verification slots: anyone may take a shared one, only proven names one of the reserved half.
#[derive(Debug)]
pub struct Slots {
    shared: Arc<Semaphore>,
    reserved: Arc<Semaphore>,
}

impl Slots {
    /// `slots` verifications at once (at least one), half of them (rounded down) reserved.
    pub fn new(slots: usize) -> Self {
        let slots = slots.max(1);
        let reserved = slots / 2;
        Self {
            shared: Arc::new(Semaphore::new(slots - reserved)),
            reserved: Arc::new(Semaphore::new(reserved)),
        }
    }

    /// Waits for a slot (`None` only if the semaphores were closed, which they never are).
    pub async fn take(&self, proven: bool) -> Option<OwnedSemaphorePermit> {
        let shared = self.shared.clone();
        if !proven {
            return shared.acquire_owned().await.ok();
        }
        let reserved = self.reserved.clone();
        tokio::select! {
            p = reserved.acquire_owned() => p.ok(),
            p = shared.acquire_owned() => p.ok(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Ordering of map entries by age, for eviction when a map is full.
trait Age {
    fn age(&self) -> Instant;
}

impl Age for Count {
    fn age(&self) -> Instant {
        self.since
    }
}

impl Age for Instant {
    fn age(&self) -> Instant {
        *self
    }
}

/// Makes room for one more entry: drops `expired` ones, then (if still full) the oldest.
fn make_room<K: Clone + Eq + Hash, V: Age>(
    map: &mut HashMap<K, V>,
    max: usize,
    expired: impl Fn(&V) -> bool,
) {
    if map.len() < max {
        return;
    }
    map.retain(|_, v| !expired(v));
    if map.len() >= max {
        if let Some(oldest) = map
            .iter()
            .min_by_key(|(_, v)| v.age())
            .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_locks_at_its_maximum_and_only_that_key() {
        let f = Failures::new(Duration::from_secs(60), 100);
        f.failed(&"a", 3);
        f.failed(&"a", 3);
        assert!(!f.is_locked([&"a"]));
        f.failed(&"a", 3);
        assert!(f.is_locked([&"a"]));
        assert!(f.is_locked([&"b", &"a"]));
        assert!(!f.is_locked([&"b"]));
        f.forget(&"a");
        assert!(!f.is_locked([&"a"]));
    }

    #[test]
    fn lockouts_pass_and_full_maps_evict_the_oldest() {
        let f = Failures::new(Duration::from_millis(20), 2);
        f.failed(&1, 1);
        assert!(f.is_locked([&1]));
        std::thread::sleep(Duration::from_millis(30));
        assert!(!f.is_locked([&1]), "the lockout passed");
        f.failed(&2, 1);
        std::thread::sleep(Duration::from_millis(2));
        f.failed(&3, 1);
        f.failed(&4, 1);
        assert!(lock(&f.map).len() <= 2);
        assert!(f.is_locked([&4]), "the newest stays");

        let p = Proven::new(2);
        p.insert("x");
        std::thread::sleep(Duration::from_millis(2));
        p.insert("y");
        p.insert("z");
        assert!(!p.contains(&"x"), "the oldest went");
        assert!(p.contains(&"y") && p.contains(&"z"));
    }

    #[tokio::test]
    async fn proven_names_get_the_reserved_slots_while_others_wait() {
        let slots = Slots::new(2);
        let stranger = slots.take(false).await.expect("the shared slot");
        let waiting = tokio::time::timeout(Duration::from_millis(50), slots.take(false)).await;
        assert!(waiting.is_err(), "a second stranger waits");
        let known = tokio::time::timeout(Duration::from_millis(50), slots.take(true)).await;
        assert!(
            matches!(known, Ok(Some(_))),
            "a proven name gets the reserved slot"
        );
        drop(stranger);
    }
}
