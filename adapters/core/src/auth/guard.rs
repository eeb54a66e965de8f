//! Guards device password logins against guessing and against floods that would starve real logins
//! (issue 15, item 6). The semantics are those of the registry's guard for application users
//! (`registry/src/logins.rs`), for `auth-id@tenant` and the peer's address:
//!
//! - Every attempt with a well-formed login costs one password verification, whether the tenant, the
//!   auth id or a usable password credential exists or not: when there is none, a dummy bcrypt hash is
//!   checked instead, so the time of the answer does not tell which auth ids exist.
//! - After `max_failures` failed attempts within `lockout_secs` for one `(tenant, auth id)`, or
//!   `source_max_failures` for one source address, attempts for that key are refused without a
//!   verification (and without a registry lookup) until the lockout has passed. Unknown names are
//!   counted like known ones, so a lockout tells nothing either. A success clears the name's failures;
//!   the source's stay (it may be guessing other names).
//! - Verifications run on the blocking pool, `verify_concurrency` at a time. Half of the slots (rounded
//!   down) are kept for names that have logged in successfully before, so a flood of unknown names or
//!   wrong passwords queues behind itself while those devices still get in.
//!
//! Both maps are bounded (`tracked_max`): when full, expired entries go first, then the oldest.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ferry_core::config::ConfigError;
use ferry_core::ids::{AuthId, TenantId};
use ferry_core::lockout::{Failures, Proven, Slots};
use ferry_registry_model::{Credential, HashFunction, PasswordData};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::OwnedSemaphorePermit;

/// Limits on device password logins; a section of an adapter's `Config` (e.g. `login`, so
/// `FERRY_MQTT_LOGIN__MAX_FAILURES`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoginLimits {
    /// Failed attempts per `auth-id@tenant` within `lockout_secs` after which further attempts are
    /// refused without a check ("bad user name or password" / 401, like a wrong password).
    pub max_failures: u32,
    /// Failed attempts per source address (IPv6: per /64) within `lockout_secs` after which attempts
    /// from it are refused the same way; 0 = not limited per source. Higher than `max_failures`
    /// because many devices may share an address (NAT); 0 when the adapter sees one address for all
    /// peers (a load balancer that does not keep the client address).
    pub source_max_failures: u32,
    /// The window that counts failures, and how long a lockout lasts.
    pub lockout_secs: u64,
    /// Most names and sources whose failures are remembered, and most names remembered as having
    /// logged in (each).
    pub tracked_max: usize,
    /// Password verifications at once; default: one per core. Half of them (rounded down) are kept for
    /// names that have logged in before.
    pub verify_concurrency: Option<usize>,
}

impl Default for LoginLimits {
    fn default() -> Self {
        Self {
            max_failures: 5,
            source_max_failures: 50,
            lockout_secs: 60,
            tracked_max: 10_000,
            verify_concurrency: None,
        }
    }
}

impl LoginLimits {
    /// Refuses values that would disable the guard by accident; the error names the field within this
    /// section.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let field = ConfigError::invalid;
        if self.max_failures == 0 {
            return Err(field("max_failures", "must be at least 1"));
        }
        if self.lockout_secs == 0 {
            return Err(field("lockout_secs", "must be at least 1"));
        }
        if self.tracked_max == 0 {
            return Err(field("tracked_max", "must be at least 1"));
        }
        if self.verify_concurrency == Some(0) {
            return Err(field("verify_concurrency", "must be at least 1"));
        }
        Ok(())
    }

    fn lockout(&self) -> Duration {
        Duration::from_secs(self.lockout_secs)
    }
}

/// The cost of the dummy hash until a stored bcrypt hash has been seen: the registry's default
/// `bcrypt_cost` and `max_bcrypt_cost`.
const INITIAL_DUMMY_COST: u32 = 10;
const BCRYPT_MIN_COST: u32 = 4;
const BCRYPT_MAX_COST: u32 = 31;

/// `(tenant, auth id)` as a salted digest: fixed size, no allocation per login, no names in memory.
type NameKey = [u8; 16];

/// Whose failures are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    Name(NameKey),
    Source(IpAddr),
}

/// The keys of one attempt.
#[derive(Debug, Clone, Copy)]
pub(super) struct Keys {
    name: NameKey,
    source: Option<IpAddr>,
}

impl Keys {
    fn iter(&self) -> impl Iterator<Item = Key> {
        std::iter::once(Key::Name(self.name)).chain(self.source.map(Key::Source))
    }
}

/// Counters for [`super::AuthStats`].
#[derive(Default)]
pub(super) struct Counters {
    pub(super) verifications: AtomicU64,
    pub(super) locked_out: AtomicU64,
    pub(super) waiting: AtomicU64,
}

pub(super) struct Guard {
    limits: LoginLimits,
    salt: [u8; 16],
    failures: Failures<Key>,
    /// Names that have logged in successfully.
    proven: Proven<NameKey>,
    slots: Slots,
    dummies: Arc<Dummies>,
    pub(super) counters: Counters,
}

impl Guard {
    pub(super) fn new(limits: LoginLimits, salt: [u8; 16]) -> Self {
        let slots = limits
            .verify_concurrency
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, usize::from))
            .max(1);
        Self {
            failures: Failures::new(limits.lockout(), limits.tracked_max),
            proven: Proven::new(limits.tracked_max),
            slots: Slots::new(slots),
            limits,
            salt,
            dummies: Arc::new(Dummies::new()),
            counters: Counters::default(),
        }
    }

    pub(super) fn keys(&self, tenant: &TenantId, auth_id: &AuthId, source: Option<IpAddr>) -> Keys {
        let mut h = Sha256::new();
        h.update(self.salt);
        h.update(tenant.as_str());
        // Neither id contains a NUL, so the pair is unambiguous.
        h.update([0]);
        h.update(auth_id.as_str());
        let digest: [u8; 32] = h.finalize().into();
        let mut name = [0; 16];
        name.copy_from_slice(&digest[..16]);
        let source = source
            .filter(|_| self.limits.source_max_failures > 0)
            .map(source_key);
        Keys { name, source }
    }

    /// Whether any of `keys` is locked now (counted); forgets lockouts that have passed.
    pub(super) fn is_locked(&self, keys: &Keys) -> bool {
        let locked = self.failures.is_locked(keys.iter());
        if locked {
            self.counters.locked_out.fetch_add(1, Ordering::Relaxed);
        }
        locked
    }

    /// Checks `password` against `credential`, or against the dummy hash when there is none; counts the
    /// outcome for `keys`. True only when `credential` is given and the password matches one of its
    /// usable secrets. Refused without a check when the keys got locked while this attempt waited.
    pub(super) async fn verify(
        &self,
        keys: &Keys,
        credential: Option<Credential>,
        password: String,
    ) -> bool {
        let slot = self.slot(keys).await;
        // Checked again: attempts that queued behind the ones that locked the key need no check either.
        if self.is_locked(keys) {
            return false;
        }
        self.counters.verifications.fetch_add(1, Ordering::Relaxed);
        let dummies = self.dummies.clone();
        let verified = tokio::task::spawn_blocking(move || {
            // The slot is held by the work, not by the login: a connection that times out while bcrypt
            // runs does not free the slot early.
            let _slot = slot;
            let now = chrono::Utc::now();
            match credential {
                Some(credential) => {
                    dummies.observe(&credential, now);
                    credential.verify_password(&password, now)
                }
                None => {
                    // Same cost as a real check; the outcome does not matter.
                    let _ = dummies.get().verify(&password);
                    false
                }
            }
        })
        .await;
        match verified {
            Ok(true) => {
                self.succeeded(keys);
                true
            }
            Ok(false) => {
                self.failed(keys);
                false
            }
            // A panicking hash implementation (or a runtime shutting down) refuses the login rather
            // than failing the adapter, and counts against no one.
            Err(_) => false,
        }
    }

    /// A verification slot: proven names may take a reserved one, others only a shared one.
    async fn slot(&self, keys: &Keys) -> Option<OwnedSemaphorePermit> {
        let _waiting = Waiting::new(&self.counters.waiting);
        self.slots.take(self.proven.contains(&keys.name)).await
    }

    fn failed(&self, keys: &Keys) {
        for key in keys.iter() {
            let max = match key {
                Key::Name(_) => self.limits.max_failures,
                Key::Source(_) => self.limits.source_max_failures,
            };
            self.failures.failed(&key, max);
        }
    }

    /// A successful login (verified or from the verify cache).
    pub(super) fn succeeded(&self, keys: &Keys) {
        // The name's failures go; a source's stay, it may be guessing other names.
        self.failures.forget(&Key::Name(keys.name));
        self.proven.insert(keys.name);
    }
}

/// The key of a source address: IPv4 (also when mapped into IPv6) as is, IPv6 by its /64, since one
/// host usually holds a whole /64.
fn source_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(prefix.into())
        }
        v4 => v4,
    }
}

/// Counts a login waiting for a verification slot while it waits (also when it is given up).
struct Waiting<'a>(&'a AtomicU64);

impl<'a> Waiting<'a> {
    fn new(gauge: &'a AtomicU64) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        Self(gauge)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Dummy bcrypt hashes, one per cost, made when first needed (making one costs a bcrypt).
struct Dummies {
    /// The cost of the stored bcrypt hash verified last: the dummy's cost.
    cost: AtomicU32,
    by_cost: [OnceLock<PasswordData>; (BCRYPT_MAX_COST - BCRYPT_MIN_COST + 1) as usize],
}

impl Dummies {
    fn new() -> Self {
        Self {
            cost: AtomicU32::new(INITIAL_DUMMY_COST),
            by_cost: std::array::from_fn(|_| OnceLock::new()),
        }
    }

    /// Remembers the cost of `credential`'s first usable bcrypt secret.
    fn observe(&self, credential: &Credential, now: chrono::DateTime<chrono::Utc>) {
        let Credential::HashedPassword(c) = credential else {
            return;
        };
        let cost = c
            .active_secrets(now)
            .filter(|s| s.data.hash_function() == HashFunction::Bcrypt)
            .find_map(|s| s.data.pwd_hash.as_deref().and_then(bcrypt_cost));
        if let Some(cost) = cost {
            self.cost.store(cost, Ordering::Relaxed);
        }
    }

    /// The dummy of the current cost; blocks for one bcrypt when it is made. Never verifies a password.
    fn get(&self) -> &PasswordData {
        let cost = self
            .cost
            .load(Ordering::Relaxed)
            .clamp(BCRYPT_MIN_COST, BCRYPT_MAX_COST);
        let index = usize::try_from(cost - BCRYPT_MIN_COST).unwrap_or(0);
        self.by_cost[index].get_or_init(|| dummy(cost))
    }
}

/// A bcrypt hash of a random password nobody knows. Should hashing fail (it does not for a cost in
/// range), the dummy has no hash: it still refuses every password, only faster.
fn dummy(cost: u32) -> PasswordData {
    use base64::Engine as _;
    let secret: [u8; 24] = rand::random();
    let secret = base64::engine::general_purpose::STANDARD_NO_PAD.encode(secret);
    PasswordData {
        hash_function: Some(HashFunction::Bcrypt),
        pwd_hash: bcrypt::hash_with_result(secret, cost)
            .ok()
            .map(|parts| parts.format_for_version(bcrypt::Version::TwoA)),
        ..PasswordData::default()
    }
}

/// The cost of a `$2a$`/`$2b$`/`$2y$` bcrypt string.
fn bcrypt_cost(hash: &str) -> Option<u32> {
    let mut parts = hash.split('$');
    let (Some(""), Some("2a" | "2b" | "2y"), Some(cost)) =
        (parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let cost: u32 = cost.parse().ok()?;
    (BCRYPT_MIN_COST..=BCRYPT_MAX_COST)
        .contains(&cost)
        .then_some(cost)
}

/// Whether `credential` has a password secret usable at `now`; without one, a login is checked against
/// the dummy, since checking the credential would cost nothing and so tell that it exists.
pub(super) fn has_usable_password(
    credential: &Credential,
    now: chrono::DateTime<chrono::Utc>,
) -> bool {
    match credential {
        Credential::HashedPassword(c) => c.active_secrets(now).next().is_some(),
        _ => false,
    }
}

#[cfg(test)]
mod tests;
