//! Guards application-user logins (the router's SASL PLAIN, `POST /internal/v1/applications/authenticate`)
//! against password guessing and against floods that would starve real logins.
//!
//! - Every attempt with a well-formed name costs one bcrypt verification, whether the name exists or not:
//!   an unknown name is checked against a dummy hash of the configured cost, so the time of the answer
//!   does not tell which names exist.
//! - After `max_failures` failed attempts within `lockout` for one key (the name, and the source address
//!   when the caller gives one), attempts for that key are refused without a verification until the
//!   lockout has passed. Unknown names are counted like known ones, so a lockout tells nothing either. A
//!   success clears the name's failures.
//! - Verifications run on the blocking pool, a bounded number at a time. Half of the slots (rounded down)
//!   are kept for names that have logged in successfully before, so a flood of unknown names or wrong
//!   passwords queues behind itself while those users still get in.
//!
//! Both maps are bounded (`tracked_max`): when full, expired entries go first, then the oldest.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ferry_registry_model::{ApplicationUser, HashOptions, UserName};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The guard's settings (from the registry's config).
#[derive(Debug, Clone, Copy)]
pub struct LoginLimits {
    /// Failed attempts per key within `lockout` before the key is locked.
    pub max_failures: u32,
    /// The window that counts failures, and how long a lockout lasts.
    pub lockout: Duration,
    /// Most keys remembered (failures and past successes, each).
    pub tracked_max: usize,
    /// Verifications at once.
    pub verify_concurrency: usize,
}

/// Counters the guard keeps (registered as metrics by [`crate::api::Metrics`]).
#[derive(Debug, Clone, Default)]
pub struct LoginCounters {
    /// Passwords checked with bcrypt, against a stored or the dummy hash.
    pub verifications: Counter,
    /// Attempts refused without a check because their name or source was locked.
    pub locked_out: Counter,
}

/// Whose failures are counted.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Name(String),
    Source(IpAddr),
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    since: Instant,
    locked_until: Option<Instant>,
}

/// The login guard; cheap to clone.
#[derive(Clone)]
pub struct LoginGuard {
    inner: Arc<Inner>,
}

struct Inner {
    limits: LoginLimits,
    failures: Mutex<HashMap<Key, Failures>>,
    /// Names that have logged in successfully, with the time of the last success.
    proven: Mutex<HashMap<String, Instant>>,
    /// Slots anyone may take.
    shared: Arc<Semaphore>,
    /// Slots only proven names may take.
    reserved: Arc<Semaphore>,
    /// Verified instead of a stored user when the name is unknown.
    dummy: ApplicationUser,
    counters: LoginCounters,
}

impl std::fmt::Debug for LoginGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginGuard")
            .field("limits", &self.inner.limits)
            .finish_non_exhaustive()
    }
}

/// Why a login did not succeed; both look the same to the caller (403).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Wrong password or unknown name.
    Denied,
    /// Too many recent failures for the name or source: refused without a check.
    LockedOut,
    /// The verification task did not finish (the runtime is shutting down).
    Interrupted,
}

impl LoginGuard {
    /// A guard whose dummy hash has the cost of new hashes (`hash`). Hashing it takes one bcrypt: call
    /// from a blocking context or accept the pause at start-up.
    pub fn new(
        limits: LoginLimits,
        hash: &HashOptions,
        counters: LoginCounters,
    ) -> Result<Self, ferry_registry_model::ValidationError> {
        use base64::Engine as _;
        let secret: [u8; 24] = rand::random();
        let dummy = ferry_registry_model::ApplicationUserInput {
            password: base64::engine::general_purpose::STANDARD_NO_PAD.encode(secret),
            tenants: vec![ferry_registry_model::TenantGrant::Any],
            operations: ferry_registry_model::Operation::ALL.to_vec(),
        }
        .into_stored(hash)?;
        let slots = limits.verify_concurrency.max(1);
        let reserved = slots / 2;
        Ok(Self {
            inner: Arc::new(Inner {
                limits,
                failures: Mutex::new(HashMap::new()),
                proven: Mutex::new(HashMap::new()),
                shared: Arc::new(Semaphore::new(slots - reserved)),
                reserved: Arc::new(Semaphore::new(reserved)),
                dummy,
                counters,
            }),
        })
    }

    /// Checks `password` for `name`: `user` is the stored user, `None` when the name is unknown. Answers
    /// the user when the password is right.
    pub async fn login(
        &self,
        name: &UserName,
        source: Option<IpAddr>,
        user: Option<ApplicationUser>,
        password: String,
    ) -> Result<ApplicationUser, Refusal> {
        let keys = keys(name, source);
        if self.locked(&keys) {
            return Err(Refusal::LockedOut);
        }
        let slot = self.slot(name).await;
        // Checked again: attempts that queued behind the ones that locked the key need no bcrypt either.
        if self.locked(&keys) {
            return Err(Refusal::LockedOut);
        }
        self.inner.counters.verifications.inc();
        let inner = self.inner.clone();
        let verified = tokio::task::spawn_blocking(move || {
            // The slot is held by the work, not by the request: a request that times out while bcrypt
            // runs does not free the slot early.
            let _slot = slot;
            match user {
                Some(user) => user.verify(&password).then_some(user),
                None => {
                    // Same cost as a real check; the outcome does not matter.
                    let _ = inner.dummy.verify(&password);
                    None
                }
            }
        })
        .await
        .map_err(|_| Refusal::Interrupted)?;
        match verified {
            Some(user) => {
                self.succeeded(name, &keys);
                Ok(user)
            }
            None => {
                self.failed(&keys);
                Err(Refusal::Denied)
            }
        }
    }

    /// A verification slot: proven names may take a reserved one, others only a shared one. Waiting is
    /// bounded by the request timeout.
    async fn slot(&self, name: &UserName) -> Option<OwnedSemaphorePermit> {
        let shared = self.inner.shared.clone();
        let proven = lock(&self.inner.proven).contains_key(name.as_str());
        if !proven {
            return shared.acquire_owned().await.ok();
        }
        let reserved = self.inner.reserved.clone();
        tokio::select! {
            p = reserved.acquire_owned() => p.ok(),
            p = shared.acquire_owned() => p.ok(),
        }
    }

    /// Whether any of `keys` is locked now; forgets lockouts that have passed.
    fn locked(&self, keys: &[Key]) -> bool {
        let now = Instant::now();
        let mut failures = lock(&self.inner.failures);
        let mut locked = false;
        for key in keys {
            match failures.get(key).and_then(|f| f.locked_until) {
                Some(until) if until > now => locked = true,
                Some(_) => {
                    failures.remove(key);
                }
                None => {}
            }
        }
        if locked {
            self.inner.counters.locked_out.inc();
        }
        locked
    }

    fn failed(&self, keys: &[Key]) {
        let now = Instant::now();
        let limits = self.inner.limits;
        let mut failures = lock(&self.inner.failures);
        for key in keys {
            if !failures.contains_key(key) {
                make_room(&mut failures, limits.tracked_max, |f| {
                    f.locked_until.unwrap_or(f.since + limits.lockout) <= now
                });
            }
            let f = failures.entry(key.clone()).or_insert(Failures {
                count: 0,
                since: now,
                locked_until: None,
            });
            if now.duration_since(f.since) > limits.lockout {
                *f = Failures {
                    count: 0,
                    since: now,
                    locked_until: None,
                };
            }
            f.count = f.count.saturating_add(1);
            if f.count >= limits.max_failures {
                f.locked_until = Some(now + limits.lockout);
            }
        }
    }

    fn succeeded(&self, name: &UserName, keys: &[Key]) {
        {
            let mut failures = lock(&self.inner.failures);
            // The name's failures go; a source's stay, it may be guessing other names.
            for key in keys {
                if matches!(key, Key::Name(_)) {
                    failures.remove(key);
                }
            }
        }
        let mut proven = lock(&self.inner.proven);
        if !proven.contains_key(name.as_str()) {
            make_room(&mut proven, self.inner.limits.tracked_max, |_| false);
        }
        proven.insert(name.as_str().to_owned(), Instant::now());
    }

    /// The counters (for tests).
    #[doc(hidden)]
    pub fn counters(&self) -> &LoginCounters {
        &self.inner.counters
    }
}

fn keys(name: &UserName, source: Option<IpAddr>) -> Vec<Key> {
    let mut keys = vec![Key::Name(name.as_str().to_owned())];
    keys.extend(source.map(Key::Source));
    keys
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Ordering of map entries by age, for eviction when a map is full.
trait Age {
    fn age(&self) -> Instant;
}

impl Age for Failures {
    fn age(&self) -> Instant {
        self.since
    }
}

impl Age for Instant {
    fn age(&self) -> Instant {
        *self
    }
}

/// Makes room for one more entry: drops `expired` ones, then (if still full) the oldest. Linear, but only
/// when the map is full, and each new key has cost a bcrypt.
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
mod tests;
