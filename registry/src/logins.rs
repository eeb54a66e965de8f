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
//! Both maps are bounded (`tracked_max`): when full, expired entries go first, then the oldest. The
//! counting, the maps and the slots are `ferry_core::lockout`'s, shared with the adapters' device logins.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ferry_core::lockout::{Failures, Proven, Slots};

use ferry_registry_model::{ApplicationUser, HashOptions, UserName};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::OwnedSemaphorePermit;

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

/// The login guard; cheap to clone.
#[derive(Clone)]
pub struct LoginGuard {
    inner: Arc<Inner>,
}

struct Inner {
    limits: LoginLimits,
    failures: Failures<Key>,
    /// Names that have logged in successfully.
    proven: Proven<String>,
    slots: Slots,
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
        Ok(Self {
            inner: Arc::new(Inner {
                limits,
                failures: Failures::new(limits.lockout, limits.tracked_max),
                proven: Proven::new(limits.tracked_max),
                slots: Slots::new(limits.verify_concurrency),
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
        let proven = self.inner.proven.contains(&name.as_str().to_owned());
        self.inner.slots.take(proven).await
    }

    /// Whether any of `keys` is locked now; forgets lockouts that have passed.
    fn locked(&self, keys: &[Key]) -> bool {
        let locked = self.inner.failures.is_locked(keys);
        if locked {
            self.inner.counters.locked_out.inc();
        }
        locked
    }

    fn failed(&self, keys: &[Key]) {
        for key in keys {
            self.inner
                .failures
                .failed(key, self.inner.limits.max_failures);
        }
    }

    fn succeeded(&self, name: &UserName, keys: &[Key]) {
        // The name's failures go; a source's stay, it may be guessing other names.
        for key in keys {
            if matches!(key, Key::Name(_)) {
                self.inner.failures.forget(key);
            }
        }
        self.inner.proven.insert(name.as_str().to_owned());
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

#[cfg(test)]
mod tests;
